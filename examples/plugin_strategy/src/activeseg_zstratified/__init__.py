"""Example activeseg plugin: ``z_stratified``, the most uncertain slice in each z-stratum.

Registered through the entry point in this package's ``pyproject.toml``; nothing in
activeseg refers to it.
"""

from __future__ import annotations

import numpy as np

from activeseg.errors import ConfigError
from activeseg.registry import QueryContext, strategy

__all__ = ["z_stratified"]
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
