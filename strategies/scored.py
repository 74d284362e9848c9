"""Uncertainty strategies: top-n by a per-slice score, optionally with z spacing.

All follow the NaN rule of :mod:`activeseg.strategies.common`: unscored slices are
"unknown", never picked ahead of scored ones; when the scored slices run out (or none
are scored) the rest of the budget is spread evenly over the stack.
"""

from __future__ import annotations

import numbers

import numpy as np

from activeseg.errors import ConfigError
from activeseg.registry import QueryContext, strategy
from activeseg.strategies.common import check_min_gap, gap_refusal, select_by_score, spread

__all__ = ["entropy", "margin", "bald", "disagreement", "spaced_entropy", "hybrid"]


@strategy(requires=("entropy",), description="top-n slices by mean predictive entropy")
def entropy(ctx: QueryContext, n: int, /, *, min_gap: int = 0) -> np.ndarray:
    """The ``n`` unlabelled slices with the highest ``"entropy"`` score, best first.

    ``min_gap`` > 1 keeps chosen slices at least that many slices from each other and
    from labelled slices.
    """
    return select_by_score(ctx, "entropy", n, min_gap=min_gap)


@strategy(requires=("margin",), description="top-n slices by margin uncertainty 1 - (p1 - p2)")
def margin(ctx: QueryContext, n: int, /, *, min_gap: int = 0) -> np.ndarray:
    """The ``n`` unlabelled slices with the highest ``"margin"`` score (smallest margin), best first."""
    return select_by_score(ctx, "margin", n, min_gap=min_gap)


@strategy(requires=("bald",), description="top-n slices by BALD mutual information (MC dropout / tree groups)")
def bald(ctx: QueryContext, n: int, /, *, min_gap: int = 0) -> np.ndarray:
    """The ``n`` unlabelled slices with the highest ``"bald"`` score, best first."""
    return select_by_score(ctx, "bald", n, min_gap=min_gap)


@strategy(requires=("rf_disagreement",), description="top-n slices where the Random Forest and the network disagree most")
def disagreement(ctx: QueryContext, n: int, /, *, min_gap: int = 0) -> np.ndarray:
    """The ``n`` unlabelled slices with the highest ``"rf_disagreement"`` score, best first."""
    return select_by_score(ctx, "rf_disagreement", n, min_gap=min_gap)


@strategy(requires=("entropy",), description="top-n entropy, at least min_gap slices from each other and from labelled slices")
def spaced_entropy(ctx: QueryContext, n: int, /, *, min_gap: int = 5) -> np.ndarray:
    """Top-``n`` entropy with a minimum z distance.

    Adjacent FIB-SEM slices are near duplicates, so plain top-n spends the budget on
    one uncertain region. No two chosen slices, and no chosen and labelled slice, are
    closer than ``min_gap`` slices. When the gap leaves room for fewer than ``n`` the
    result is shorter (logged at INFO level) rather than breaking the rule.

    Raises
    ------
    StrategyError
        When ``n`` > 0 and unlabelled slices remain but ``min_gap`` excludes every one
        of them (each lies closer than ``min_gap`` to a labelled slice); the message
        says how far the farthest one is, i.e. the ``min_gap`` to use instead.
    """
    min_gap = check_min_gap(min_gap)
    picks = select_by_score(ctx, "entropy", n, min_gap=min_gap)
    if n > 0 and picks.size == 0:
        refusal = gap_refusal("spaced_entropy", ctx.labelled, min_gap)
        if refusal is not None:
            raise refusal
    return picks


def _hybrid_requires(*, score: str = "entropy", **_) -> tuple[str, ...]:
    return (score,)


@strategy(
    requires=_hybrid_requires,
    description="a fraction of the budget evenly spaced, the rest by an uncertainty score with spacing",
)
def hybrid(
    ctx: QueryContext, n: int, /, *, fraction: float = 0.5, score: str = "entropy", min_gap: int = 5
) -> np.ndarray:
    """Coverage plus uncertainty.

    ``round(fraction * n)`` slices (half up) are placed like ``distributed`` (largest gaps
    first); the rest are the top slices by ``score`` kept ``min_gap`` slices from each
    other, from labelled slices and from the evenly spaced picks. Returned in that order.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"hybrid: fraction must be a number in [0, 1], got {fraction!r}")
    min_gap = check_min_gap(min_gap)
    if n <= 0:
        return np.empty(0, dtype=np.intp)
    n_even = int(np.floor(fraction * n + 0.5))
    even = spread(ctx.labelled, n_even)
    rest = select_by_score(ctx, score, n - even.size, min_gap=min_gap, exclude=even)
    return np.concatenate([even, rest]).astype(np.intp)
