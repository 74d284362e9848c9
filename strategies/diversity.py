"""Diversity strategies over per-slice embeddings: greedy k-center (core-set) and
Cardoso et al.'s ranked batch mode (through :func:`modAL.batch.ranked_batch`).

Embeddings come from the core in ``ctx.embeddings`` (pooled encoder features of the
current network, or pooled RF feature statistics before one exists). When a context
has none, both strategies use the **z position as a 1-D embedding**, so diversity
becomes spacing along the stack. Rows of NaN (slices that were not embedded) are used
only after every embedded slice: the rest of the budget is spread evenly over the
stack, like unscored slices (NaN rule of :mod:`activeseg.strategies.common`).

modAL imports torch (through skorch), so it is imported inside :func:`ranked_batch`,
when it runs; importing this module needs only numpy.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from activeseg.errors import ConfigError
from activeseg.registry import EMBEDDINGS, QueryContext, strategy
from activeseg.strategies.common import as_ids, embedding_matrix, fill_spread

__all__ = ["coreset", "ranked_batch", "ranked_batch_pool", "RANKED_BATCH_METRICS"]

RANKED_BATCH_METRICS = ("euclidean", "cosine", "manhattan", "cityblock", "l1", "l2")


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), float64, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _min_sq_dist(x: np.ndarray, centres: np.ndarray, chunk: int = 1024) -> np.ndarray:
    out = np.full(x.shape[0], np.inf)
    if centres.shape[0] == 0:
        return out
    for i in range(0, x.shape[0], chunk):
        out[i : i + chunk] = _sq_dist(x[i : i + chunk], centres).min(axis=1)
    return out


def _fill_unembedded(ctx: QueryContext, picks: list[int] | np.ndarray, embedded: np.ndarray, n: int) -> np.ndarray:
    ids = as_ids(picks)
    if ids.size >= n:
        return ids
    taken = np.array(ctx.labelled)
    taken[ids] = True
    more = fill_spread(taken, ~embedded, n - ids.size)
    return np.concatenate([ids, more]).astype(np.intp)


@strategy(requires=(EMBEDDINGS,),
          description="greedy k-center (core-set) on slice embeddings: most different from all labelled slices")
def coreset(ctx: QueryContext, n: int, /, *, standardise: bool = True) -> np.ndarray:
    """Greedy k-center selection (Sener & Savarese 2018) on ``ctx.embeddings``.

    Each pick is the unlabelled slice whose embedding is farthest (Euclidean) from its
    nearest labelled-or-already-picked slice, which greedily minimises the largest
    distance from any slice to the chosen set (a 2-approximation of the optimum). With
    nothing labelled the first pick is the slice nearest the mean embedding. Ties go to
    the lower slice id. ``standardise`` scales each embedding dimension to unit variance
    first. Without embeddings the z position is used (see module docstring).
    Deterministic (does not use ``ctx.rng``). Returned in pick order.
    """
    x, embedded, _ = embedding_matrix(ctx, standardise=bool(standardise))
    if n <= 0:
        return np.empty(0, dtype=np.intp)
    cand = np.flatnonzero(~ctx.labelled & embedded)
    centres = np.flatnonzero(ctx.labelled & embedded)
    picks: list[int] = []
    if cand.size:
        xc = x[cand]
        norms = (xc * xc).sum(1)
        mind = _min_sq_dist(xc, x[centres])
        alive = np.ones(cand.size, dtype=bool)

        def take(i: int) -> None:
            picks.append(int(cand[i]))
            alive[i] = False
            np.minimum(mind, np.maximum(norms + norms[i] - 2.0 * (xc @ xc[i]), 0.0), out=mind)

        if centres.size == 0:
            mean = x[embedded].mean(axis=0)
            take(int(np.argmin(((xc - mean) ** 2).sum(1))))
        while len(picks) < n and alive.any():
            take(int(np.argmax(np.where(alive, mind, -1.0))))
    return _fill_unembedded(ctx, picks, embedded, n)


def ranked_batch_pool(
    pool: np.ndarray,
    uncertainty: np.ndarray,
    labelled: np.ndarray | None,
    n: int,
    *,
    metric: str = "euclidean",
) -> np.ndarray:
    """Adapter around :func:`modAL.batch.ranked_batch` for precomputed features.

    Handles modAL's quirks: it wants a learner object, so a stand-in with
    ``on_transformed=False`` and ``X_training`` is passed (``None``, not an empty
    array, when nothing is labelled: an empty array crashes it); it returns a tuple
    (indices, scores) with indices into ``pool``; NaN uncertainty would win its argmax;
    with ``X_training=None`` and ``n=0`` it still returns one instance; it fails on an
    empty pool.

    Parameters
    ----------
    pool : float (m, D) features of the candidates.
    uncertainty : float (m,) finite, in [0, 1].
    labelled : float (l, D) features of labelled slices, or None / empty.
    n : number to pick.

    Returns
    -------
    intp (min(n, m),): indices into ``pool``, in rank order.
    """
    pool = np.asarray(pool, dtype=np.float64)
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if not np.isfinite(uncertainty).all():
        raise ConfigError("ranked_batch_pool: uncertainty must be finite (replace NaN before calling)")
    if n <= 0 or pool.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    from modAL.batch import ranked_batch as _modal_ranked_batch  # imports torch via skorch

    x_training = None if labelled is None or len(labelled) == 0 else np.asarray(labelled, dtype=np.float64)
    learner = SimpleNamespace(on_transformed=False, X_training=x_training)
    idx, _ = _modal_ranked_batch(
        learner, unlabeled=pool, uncertainty_scores=uncertainty, n_instances=int(n), metric=metric, n_jobs=None
    )
    return np.asarray(idx, dtype=np.intp).reshape(-1)[:n]


def _ranked_batch_requires(*, score: str = "entropy", **_) -> tuple[str, ...]:
    return (score, EMBEDDINGS)


@strategy(
    requires=_ranked_batch_requires,
    description="ranked batch (Cardoso et al., via modAL): uncertainty x dissimilarity to labelled slices",
)
def ranked_batch(
    ctx: QueryContext,
    n: int,
    /,
    *,
    score: str = "entropy",
    metric: str = "euclidean",
    standardise: bool = True,
) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al. 2017) with ``modAL.batch.ranked_batch``.

    Each pick maximises ``alpha * (1 - 1 / (1 + d)) + (1 - alpha) * u`` where ``d`` is
    the ``metric`` distance of its embedding to the nearest labelled-or-picked slice,
    ``u`` its uncertainty (score ``score``, min-max scaled to [0, 1] over the pool, so
    the balance does not depend on the score's units) and ``alpha = |unlabelled| / (|unlabelled| + |labelled|)``.
    With nothing labelled, the first pick is the most central slice.

    NaN rule: scored slices are ranked first; unscored ones only when those run out,
    ranked by dissimilarity alone (``u = 0``); slices without an embedding last, spread
    evenly. Without embeddings the z position is the embedding and ``metric`` is
    ignored (Euclidean). Needs modAL (which imports torch) when it runs, not when it is
    imported or listed. Deterministic. Returned in rank order.
    """
    if metric not in RANKED_BATCH_METRICS:
        raise ConfigError(f"ranked_batch: metric must be one of {', '.join(RANKED_BATCH_METRICS)}, got {metric!r}")
    values = ctx.score(score).astype(np.float64)
    if n <= 0:
        return np.empty(0, dtype=np.intp)
    x, embedded, from_z = embedding_matrix(ctx, standardise=bool(standardise))
    if from_z:
        metric = "euclidean"
    scored = np.isfinite(values)
    unl = ~ctx.labelled & embedded
    lab = np.flatnonzero(ctx.labelled & embedded)

    picks: list[int] = []
    # 1) scored, embedded slices: uncertainty x dissimilarity.
    pool = np.flatnonzero(unl & scored)
    if pool.size:
        u = values[pool]
        lo, hi = float(u.min()), float(u.max())
        u = (u - lo) / (hi - lo) if hi > lo else np.zeros_like(u)  # the same ranking whatever the score's scale
        idx = ranked_batch_pool(x[pool], u, x[lab], n, metric=metric)
        picks.extend(pool[idx].tolist())
    # 2) unscored, embedded slices: dissimilarity only.
    if len(picks) < n:
        pool = np.flatnonzero(unl & ~scored)
        if pool.size:
            known = np.concatenate([lab, np.asarray(picks, dtype=np.intp)])
            idx = ranked_batch_pool(x[pool], np.zeros(pool.size), x[known], n - len(picks), metric=metric)
            picks.extend(pool[idx].tolist())
    # 3) slices without an embedding: spread evenly.
    return _fill_unembedded(ctx, picks, embedded, n)
