"""Random baselines: uniform, and weighted toward slices with unusual predicted porosity."""

from __future__ import annotations

import numbers

import numpy as np

from activeseg.errors import ConfigError
from activeseg.registry import QueryContext, strategy
from activeseg.strategies.common import fill_spread

__all__ = ["random", "porosity_random"]


@strategy(description="n unlabelled slices uniformly at random (baseline)")
def random(ctx: QueryContext, n: int, /) -> np.ndarray:
    """``n`` distinct unlabelled slices drawn uniformly with ``ctx.rng``."""
    cands = ctx.unlabelled_ids
    k = min(max(n, 0), cands.size)
    if k == 0:
        return np.empty(0, dtype=np.intp)
    return ctx.rng.choice(cands, size=k, replace=False).astype(np.intp)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ConfigError(f"porosity_random: {name} must be a number > 0, got {value!r}")
    return float(value)


@strategy(
    requires=("porosity",),
    description="random, weighted toward slices whose predicted porosity differs from the stack median",
)
def porosity_random(ctx: QueryContext, n: int, /, *, floor: float = 0.01, power: float = 1.0) -> np.ndarray:
    """Random slices, favouring those whose predicted pore fraction is unusual.

    A foreground-aware random baseline (cf. nnActive): slice ``z`` is drawn (without
    replacement) with weight ``floor + (d_z / max d) ** power``, where ``d_z`` is the
    distance of its predicted porosity (score ``"porosity"``) from the median over all
    scored slices of the stack. ``floor`` > 0 keeps every scored slice possible.

    Unscored (NaN) slices are drawn only when the scored ones run out, spread evenly
    (the NaN rule of :mod:`activeseg.strategies.common`).
    """
    floor = _positive("floor", floor)
    power = _positive("power", power)
    porosity = ctx.score("porosity")
    cands = ctx.unlabelled_ids
    if n <= 0 or cands.size == 0:
        return np.empty(0, dtype=np.intp)
    finite = np.isfinite(porosity)
    scored = cands[finite[cands]]
    picks = np.empty(0, dtype=np.intp)
    if scored.size:
        dev = np.abs(porosity[scored].astype(np.float64) - np.median(porosity[finite]))
        top = dev.max()
        weight = floor + ((dev / top) ** power if top > 0 else np.zeros_like(dev))
        k = min(n, scored.size)
        picks = ctx.rng.choice(scored, size=k, replace=False, p=weight / weight.sum()).astype(np.intp)
    if picks.size < n:
        taken = np.array(ctx.labelled)
        taken[picks] = True
        more = fill_spread(taken, ~finite, n - picks.size)
        picks = np.concatenate([picks, more]).astype(np.intp)
    return picks
