"""Example activeseg plugin: ``z_stratified``, the most uncertain slice in each z-stratum,
and ``best_tile_per_slice``, a tile strategy (``unit="tiles"``).

Registered through the entry points in this package's ``pyproject.toml``; nothing in
activeseg refers to it.
"""

from __future__ import annotations

import numpy as np

from activeseg.errors import ConfigError
from activeseg.registry import QueryContext, strategy

__all__ = ["z_stratified", "best_tile_per_slice"]
__version__ = "0.1.0"


def _requires(*, score: str = "entropy", **_) -> tuple[str, ...]:
    # the score this strategy reads depends on its parameter `score`
    return (score,)


@strategy(requires=_requires, description="most uncertain slice in each of n equal z-strata")
def z_stratified(ctx: QueryContext, n: int, /, *, score: str = "entropy", strata: int = 0) -> np.ndarray:
    """Split the stack into equal z-strata and take the top-scored unlabelled slice of each.

    Coverage of the whole stack (like "distributed") with the choice inside each stratum
    made by uncertainty (like "entropy").

    Parameters
    ----------
    ctx : the query context (read-only).
    n : budget.
    score : name of the per-slice score to rank by (higher = more informative).
    strata : number of strata; 0 = ``n``. The ``n`` picks go to the strata in order of
        their best score.

    Returns
    -------
    intp (k,), k <= n: global slice ids. A stratum whose slices are all unscored (NaN)
    contributes its unlabelled slice nearest the stratum centre, after all scored
    candidates; a fully labelled stratum contributes nothing, and the budget it frees
    goes to the next-best scored slices anywhere.
    """
    if isinstance(strata, bool) or not isinstance(strata, int) or strata < 0:
        raise ConfigError(f"z_stratified: strata must be an integer >= 0, got {strata!r}")
    values = ctx.score(score)
    free = ~ctx.labelled
    if n <= 0 or not free.any():
        return np.empty(0, dtype=np.intp)
    k = strata or n
    edges = np.linspace(0, ctx.n_slices, k + 1).round().astype(int)
    best_scored, best_unscored = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        ids = lo + np.flatnonzero(free[lo:hi])
        if ids.size == 0:
            continue
        s = values[ids]
        ok = np.isfinite(s)
        if ok.any():
            i = ids[ok][np.argmax(s[ok])]  # argmax: ties go to the lower slice id
            best_scored.append((-float(values[i]), int(i)))
        else:
            centre = (lo + hi - 1) / 2.0
            best_unscored.append(int(ids[np.argmin(np.abs(ids - centre))]))
    picks = [i for _, i in sorted(best_scored)][:n]
    if len(picks) < n:  # strata without candidates: next-best scored slices anywhere
        rest = np.flatnonzero(free & np.isfinite(values))
        rest = rest[~np.isin(rest, picks)]
        order = rest[np.lexsort((rest, -values[rest]))]
        picks += [int(i) for i in order[: n - len(picks)]]
    picks += best_unscored[: n - len(picks)]
    return np.asarray(picks[:n], dtype=np.intp)


def _tile_requires(*, score: str = "entropy", **_) -> tuple[str, ...]:
    # per-tile scores are asked for with the prefix "tile:" and read without it
    return ("tile:" + score,)


@strategy(requires=_tile_requires, unit="tiles", description="the most uncertain tile of each of the n most uncertain slices")
def best_tile_per_slice(ctx: QueryContext, n: int, /, *, score: str = "entropy") -> np.ndarray:
    """One tile per slice: each slice's most uncertain unlabelled tile, slices ranked by it.

    A tile strategy returns rows ``(z, t)`` (slice, tile index ``t = row * n_cols + col``
    of ``ctx.tile_grid``) as an int64 array of shape (k, 2), k <= n, never a tile marked
    in ``ctx.tile_labelled`` (which also marks every tile of a labelled slice). Tiles of
    unscored slices (a NaN row) are not picked.
    """
    if n <= 0:
        return np.empty((0, 2), dtype=np.int64)
    values = np.where(ctx.tile_labelled, np.nan, ctx.tile_scores[score])  # (Z, n_tiles)
    has = np.isfinite(values).any(axis=1)
    zs = np.flatnonzero(has)
    best_t = np.nanargmax(values[zs], axis=1)  # ties go to the lower tile index
    best = values[zs, best_t]
    order = np.lexsort((zs, -best))[:n]  # best slice first, ties to the lower z
    return np.stack([zs[order], best_t[order]], axis=1).astype(np.int64)
