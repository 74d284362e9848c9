"""Positional strategies from the seed paper: "initial" and "distributed".

Neither reads a score, so both work before any model exists.
"""

from __future__ import annotations

import numpy as np

from activeseg.registry import QueryContext, strategy
from activeseg.strategies.common import spread

__all__ = ["initial", "distributed"]


@strategy(description="first n unlabelled slices from the top of the stack (paper's 'initial')")
def initial(ctx: QueryContext, n: int, /) -> np.ndarray:
    """The first ``n`` unlabelled slices counting from slice 0 (the top of the stack).

    On a fresh stack this is ``0, 1, ..., n - 1``, the paper's "initial" training set;
    later rounds continue downwards from the first unlabelled slice.
    """
    return ctx.unlabelled_ids[: max(n, 0)].astype(np.intp)


@strategy(description="n slices evenly spaced over the stack, filling the largest gaps (paper's 'distributed')")
def distributed(ctx: QueryContext, n: int, /) -> np.ndarray:
    """``n`` slices spread evenly over the whole stack.

    On a fresh stack the picks are the centres of ``n`` equal bins (5 of 600: slices
    60, 180, ..., 540, every 120th slice as in the paper). In later rounds the budget
    goes to the largest gaps between labelled slices (and the stack's ends), so the
    labelled set stays as evenly spread as possible; see
    :func:`activeseg.strategies.common.spread`. Deterministic (does not use ``ctx.rng``).
    """
    return spread(ctx.labelled, n)
