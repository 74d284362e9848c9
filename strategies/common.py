"""Building blocks shared by the built-in strategies; usable by plugins too (numpy only).

The rule for unscored slices (NaN scores), applied by every built-in that reads a
score: **NaN means "unknown", never "very informative"**. Scored unlabelled slices are
ranked first; only when they run out is the rest of the budget filled from unscored
slices, spread evenly over the stack by :func:`spread` (filling the largest gaps
between labelled and already chosen slices). If nothing is scored the whole budget is
spread evenly, which is the paper's "distributed" choice.
"""

from __future__ import annotations

import heapq
import logging
import numbers

import numpy as np

from activeseg.errors import ConfigError, StrategyError

__all__ = [
    "as_ids",
    "check_min_gap",
    "gap_refusal",
    "spread",
    "fill_spread",
    "top_by_score",
    "select_by_score",
    "embedding_matrix",
]

log = logging.getLogger("activeseg.strategies")


def as_ids(ids) -> np.ndarray:
    """Return ``ids`` as a fresh 1-D ``np.intp`` array (an empty one for no ids)."""
    return np.asarray(ids, dtype=np.intp).reshape(-1).copy()


def check_min_gap(min_gap) -> int:
    """Validate a ``min_gap`` parameter (int >= 0) and return it as int."""
    if isinstance(min_gap, bool) or not isinstance(min_gap, numbers.Integral) or min_gap < 0:
        raise ConfigError(
            f"min_gap must be an integer >= 0 (minimum z distance, in slices, between chosen and "
            f"labelled slices), got {min_gap!r}"
        )
    return int(min_gap)


def gap_refusal(name: str, labelled, min_gap: int) -> StrategyError | None:
    """The error for a ``min_gap`` that rules out every unlabelled slice, or None.

    A strategy that keeps ``min_gap`` slices from labelled ones and so picks nothing
    while unlabelled slices remain raises this instead of returning an empty array (an
    empty result reads as "everything is labelled"). The message names the strategy,
    the gap, how many slices remain and the largest ``min_gap`` that would leave one.

    Returns None when there is no such refusal to make: ``min_gap`` <= 1 (no
    constraint), no slice unlabelled, or some unlabelled slice at least ``min_gap``
    from every labelled one (then the empty result has another cause).
    """
    occupied = np.asarray(labelled, dtype=bool)
    free = np.flatnonzero(~occupied)
    if min_gap <= 1 or free.size == 0 or not occupied.any():
        return None
    dist = _distance_to(np.flatnonzero(occupied), free)
    farthest = int(dist.max())
    if farthest >= min_gap:
        return None
    remain = f"{free.size} unlabelled slice{'s' if free.size != 1 else ''} remain{'s' if free.size == 1 else ''}"
    return StrategyError(
        f"{name}: min_gap={min_gap} leaves no unlabelled slice at least {min_gap} slices from every "
        f"labelled one ({remain}, the farthest {farthest} slice{'s' if farthest != 1 else ''} away); "
        f"lower it, e.g. --param min_gap={farthest}"
    )


# ----------------------------------------------------------------------------- spread


def _gaps(occupied: np.ndarray) -> list[tuple[str, int, int, int, int]]:
    """Maximal runs of non-occupied slices as (kind, lo, hi, a, b).

    kind: "whole" (nothing occupied), "top" (0..b-1, occupied b), "bottom"
    (a+1..Z-1, occupied a) or "inner" (a+1..b-1, occupied a and b).
    """
    z = occupied.size
    occ = np.flatnonzero(occupied)
    if occ.size == 0:
        return [("whole", 0, z - 1, -1, z)]
    gaps = []
    if occ[0] > 0:
        gaps.append(("top", 0, int(occ[0]) - 1, -1, int(occ[0])))
    for a, b in zip(occ[:-1], occ[1:]):
        if b - a > 1:
            gaps.append(("inner", int(a) + 1, int(b) - 1, int(a), int(b)))
    if occ[-1] < z - 1:
        gaps.append(("bottom", int(occ[-1]) + 1, z - 1, int(occ[-1]), z))
    return gaps


def _radius(kind: str, a: int, b: int, z: int, k: int) -> float:
    """Largest distance from a slice of the gap to its nearest chosen/occupied slice,
    with ``k`` slices placed optimally in it (continuous approximation)."""
    if kind == "whole":
        return np.inf if k == 0 else z / (2.0 * k)
    if kind == "top":
        return b / (2.0 * k + 1.0)
    if kind == "bottom":
        return (z - 1 - a) / (2.0 * k + 1.0)
    return (b - a) / (2.0 * (k + 1.0))


def _ideal(kind: str, a: int, b: int, z: int, k: int) -> np.ndarray:
    j = np.arange(k, dtype=np.float64)
    if kind == "whole":
        return (j + 0.5) * z / k - 0.5
    if kind == "top":
        return (2.0 * j + 1.0) * b / (2.0 * k + 1.0)
    if kind == "bottom":
        return (z - 1) - (2.0 * j[::-1] + 1.0) * (z - 1 - a) / (2.0 * k + 1.0)
    return a + (b - a) * (j + 1.0) / (k + 1.0)


def _snap(ideal: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Assign sorted ideal positions to distinct sorted candidates, each as near as possible
    while keeping order (candidate j is at least the previous one + 1, and leaves room for
    the rest). Ties go to the higher candidate (round half up)."""
    k, m = ideal.size, cands.size
    out = np.empty(k, dtype=np.intp)
    prev = -1
    for j, x in enumerate(ideal):
        i = int(np.searchsorted(cands, x))
        if i >= m or (i > 0 and x - cands[i - 1] < cands[i] - x):
            i -= 1
        i = min(max(i, prev + 1), m - (k - j))
        out[j] = cands[i]
        prev = i
    return out


def spread(occupied: np.ndarray, n: int, *, allowed: np.ndarray | None = None) -> np.ndarray:
    """Choose ``n`` slices evenly over the stack, filling the largest gaps first.

    The budget is shared out between the runs of unoccupied slices so that the largest
    distance from any slice to its nearest occupied-or-chosen slice is as small as
    possible (one slice at a time to the run where that distance is largest; ties go to
    the longer run, then the higher one), then placed evenly inside each run.
    On a fresh stack of ``Z`` slices the picks are the bin centres
    ``floor((j + 0.5) * Z / n)``: 60, 180, ..., 540 for 5 of 600 (every 120th slice, as
    in the paper's "distributed" set), 15, 45, ..., 585 for 20 of 600 (every 30th).

    Parameters
    ----------
    occupied : bool (Z,)
        Slices already taken (labelled, or chosen earlier in this query).
    n : int
        Number of slices wanted.
    allowed : bool (Z,), optional
        Slices that may be chosen (default: every unoccupied slice). Picks are snapped to
        the nearest allowed slice of their run.

    Returns
    -------
    intp (k,), ascending, k = min(n, number of allowed unoccupied slices).
    """
    occupied = np.asarray(occupied, dtype=bool)
    z = occupied.size
    allowed = ~occupied if allowed is None else (np.asarray(allowed, dtype=bool) & ~occupied)
    total = int(allowed.sum())
    if n <= 0 or total == 0:
        return np.empty(0, dtype=np.intp)
    if n >= total:
        return np.flatnonzero(allowed).astype(np.intp)
    gaps = []
    for kind, lo, hi, a, b in _gaps(occupied):
        cands = lo + np.flatnonzero(allowed[lo : hi + 1])
        if cands.size:
            gaps.append((kind, a, b, cands, hi - lo + 1))
    counts = [0] * len(gaps)
    heap = [(-_radius(kind, a, b, z, 0), -span, i) for i, (kind, a, b, _, span) in enumerate(gaps)]
    heapq.heapify(heap)
    for _ in range(n):
        _, negspan, i = heapq.heappop(heap)
        counts[i] += 1
        kind, a, b, cands, _ = gaps[i]
        if counts[i] < cands.size:
            heapq.heappush(heap, (-_radius(kind, a, b, z, counts[i]), negspan, i))
    picks = [
        _snap(_ideal(kind, a, b, z, k), cands)
        for (kind, a, b, cands, _), k in zip(gaps, counts)
        if k > 0
    ]
    return np.sort(np.concatenate(picks)).astype(np.intp)


def _distance_to(pos: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Distance from each of ``idx`` to the nearest of the sorted positions ``pos``
    (a large number when ``pos`` is empty)."""
    big = np.iinfo(np.intp).max
    if pos.size == 0:
        return np.full(idx.shape, big, dtype=np.intp)
    j = np.searchsorted(pos, idx)
    left = np.where(j > 0, idx - pos[np.maximum(j - 1, 0)], big)
    right = np.where(j < pos.size, pos[np.minimum(j, pos.size - 1)] - idx, big)
    return np.minimum(left, right)


def _blocked(occupied: np.ndarray, min_gap: int) -> np.ndarray:
    """Slices closer than ``min_gap`` to an occupied slice (occupied ones included)."""
    blocked = occupied.copy()
    if min_gap > 1 and occupied.any():
        dist = _distance_to(np.flatnonzero(occupied), np.arange(occupied.size))
        blocked |= dist < min_gap
    return blocked


def _block(blocked: np.ndarray, z: int, min_gap: int) -> None:
    g = max(min_gap, 1)
    blocked[max(0, z - g + 1) : z + g] = True


def fill_spread(occupied: np.ndarray, allowed: np.ndarray, n: int, *, min_gap: int = 0) -> np.ndarray:
    """:func:`spread` that also keeps ``min_gap`` from occupied slices and between picks.

    May return fewer than ``n`` slices when the gap leaves no room.
    """
    occupied = np.asarray(occupied, dtype=bool)
    allowed = np.asarray(allowed, dtype=bool) & ~occupied
    if n <= 0 or not allowed.any():
        return np.empty(0, dtype=np.intp)
    if min_gap <= 1:
        return spread(occupied, n, allowed=allowed)
    blocked = _blocked(occupied, min_gap)
    taken = occupied.copy()
    picks: list[int] = []
    for z in spread(occupied, n, allowed=allowed & ~blocked):
        if not blocked[z]:
            picks.append(int(z))
            taken[z] = True
            _block(blocked, int(z), min_gap)
    while len(picks) < n:
        free = np.flatnonzero(allowed & ~blocked)
        if free.size == 0:
            break
        pos = np.flatnonzero(taken)
        if pos.size == 0:
            z = int(free[free.size // 2])
        else:
            z = int(free[np.argmax(_distance_to(pos, free))])
        picks.append(z)
        taken[z] = True
        _block(blocked, z, min_gap)
    return as_ids(picks)


# ------------------------------------------------------------------------ by score


def top_by_score(
    score: np.ndarray,
    candidates: np.ndarray,
    n: int,
    *,
    min_gap: int = 0,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """Highest-scoring candidates, keeping ``min_gap`` from ``occupied`` and each other.

    NaN-scored candidates are never chosen here (see :func:`select_by_score`). Ties go
    to the lower slice id. Returns intp ids, best first.
    """
    score = np.asarray(score)
    cand = np.flatnonzero(np.asarray(candidates, dtype=bool) & np.isfinite(score))
    if n <= 0 or cand.size == 0:
        return np.empty(0, dtype=np.intp)
    order = cand[np.lexsort((cand, -score[cand].astype(np.float64)))]
    if min_gap <= 1:
        return order[:n].astype(np.intp)
    occ = np.zeros(score.size, dtype=bool) if occupied is None else np.asarray(occupied, dtype=bool)
    blocked = _blocked(occ, min_gap)
    picks: list[int] = []
    for z in order:
        if not blocked[z]:
            picks.append(int(z))
            if len(picks) == n:
                break
            _block(blocked, int(z), min_gap)
    return as_ids(picks)


def select_by_score(
    ctx,
    score: str | np.ndarray,
    n: int,
    *,
    min_gap: int = 0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Top-``n`` unlabelled slices by a score, with the NaN rule of this module.

    Parameters
    ----------
    ctx : QueryContext
    score : name of a score in ``ctx.scores``, or a float (Z,) array.
    n : budget.
    min_gap : minimum z distance between any two chosen slices and between a chosen
        and a labelled (or excluded) slice; 0 or 1 = no constraint.
    exclude : intp ids already chosen by the caller (treated like labelled slices).

    Returns
    -------
    intp (k,), k <= n: scored slices best first, then unscored ones spread evenly. With
    ``min_gap`` the result can be shorter than ``n`` (logged at INFO level).
    """
    min_gap = check_min_gap(min_gap)
    values = ctx.score(score) if isinstance(score, str) else np.asarray(score)
    occupied = np.array(ctx.labelled, dtype=bool)
    if exclude is not None and len(exclude):
        occupied[np.asarray(exclude, dtype=np.intp)] = True
    candidates = ~occupied
    if n <= 0 or not candidates.any():
        return np.empty(0, dtype=np.intp)
    picks = top_by_score(values, candidates, n, min_gap=min_gap, occupied=occupied)
    if picks.size < n:
        taken = occupied.copy()
        taken[picks] = True
        unscored = candidates & ~np.isfinite(values)
        more = fill_spread(taken, unscored, n - picks.size, min_gap=min_gap)
        picks = np.concatenate([picks, more]).astype(np.intp)
    if min_gap > 1 and picks.size < min(n, int(candidates.sum())):
        log.info("min_gap=%d leaves room for only %d of %d requested slices", min_gap, picks.size, n)
    return picks


# ----------------------------------------------------------------------- embeddings


def embedding_matrix(ctx, *, standardise: bool = True) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-slice feature vectors for diversity strategies.

    Returns
    -------
    X : float64 (Z, D)
        ``ctx.embeddings`` (standardised per dimension over the embedded slices when
        ``standardise``), or, when the context has no embeddings, the z position as a
        1-D embedding (so diversity becomes spacing along the stack).
    embedded : bool (Z,)
        Rows that hold an embedding (rows with any NaN count as not embedded).
    from_z : bool
        True when the z fallback was used.
    """
    if ctx.embeddings is None:
        x = np.arange(ctx.n_slices, dtype=np.float64)[:, None]
        if standardise and ctx.n_slices > 1:
            x = (x - x.mean()) / x.std()
        return x, np.ones(ctx.n_slices, dtype=bool), True
    x = np.array(ctx.embeddings, dtype=np.float64)
    embedded = np.isfinite(x).all(axis=1)
    if standardise and embedded.any():
        mean = x[embedded].mean(axis=0)
        std = x[embedded].std(axis=0)
        std[std == 0] = 1.0
        x = (x - mean) / std
    return x, embedded, False
