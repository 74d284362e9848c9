"""The held-out blocks of labelled slices: one rule shared by training, the RF fit and the model gate.

A slice's held-out squares depend on ``(seed, z)`` only, never on its labels, so a slice
whose labels change between rounds (scribbles, then a full correction) keeps the same
held-out squares and no pixel moves from training to validation (except where the
fallback of :func:`split_validation` holds nothing out of a sparsely labelled slice: once
the slice is fully labelled, its squares are held out and an earlier network has seen them). The network's early
stopping, the session's Random Forest and the gate that compares a new network with the
model it would replace all leave these pixels out of their fits, so the gate's figures
are held out of both models (docs/architecture.md §6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

UNLABELLED = 255

VAL_FRACTION = 0.1
"""Default share of the labelled blocks held out (``[train] val_fraction``)."""
VAL_BLOCK = 32
"""Default side of a held-out block in pixels (``[train] val_block``)."""


def session_rule(train: dict, seed: int) -> dict:
    """``fraction``, ``block``, ``seed`` of a session's held-out blocks from its ``[train]``
    table (the training's ``val_*`` keys; the seed defaults to the session's)."""
    return {"fraction": float(train.get("val_fraction", VAL_FRACTION)), "block": int(train.get("val_block", VAL_BLOCK)),
            "seed": int(train.get("val_seed", seed))}


def split_validation(mask: np.ndarray, fraction: float, block: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (Y, X) of held-out pixels: ``block``-sized squares of labelled pixels.

    ``mask`` is the bool (Y, X) of labelled pixels. Each square is held out with
    probability ``fraction`` (drawn from ``rng`` alone; when the draw picks none, the
    square with the smallest draw, so small slices still hold one out). Nothing is held out when that
    would take more than half of the slice's labelled pixels, or when fewer than two
    squares hold labels.
    """
    ny, nx = mask.shape
    held = np.zeros_like(mask, dtype=bool)
    if fraction <= 0:
        return held
    by, bx = math.ceil(ny / block), math.ceil(nx / block)
    draw = rng.random((by, bx))
    chosen = draw < fraction
    if not chosen.any():  # small slices: at least one square (still chosen by the draw alone)
        chosen.flat[int(np.argmin(draw))] = True
    cells = np.kron(chosen, np.ones((block, block), dtype=bool))[:ny, :nx]
    labelled_cells = np.add.reduceat(np.add.reduceat(mask.astype(np.int64), np.arange(0, ny, block), axis=0),
                                     np.arange(0, nx, block), axis=1) > 0
    held = cells & mask
    total = int(np.count_nonzero(mask))
    if labelled_cells.sum() < 2 or total == 0 or np.count_nonzero(held) > 0.5 * total:
        return np.zeros_like(mask, dtype=bool)
    return held


def held_out(z: int, labels: np.ndarray, *, fraction: float, block: int, seed: int) -> np.ndarray:
    """Held-out pixels of slice ``z`` (uint8 labels, 255 = unlabelled) under the session's rule."""
    return split_validation(labels != UNLABELLED, fraction, block, np.random.default_rng([int(seed), int(z)]))


def held_masks(labels: Mapping[int, np.ndarray], *, fraction: float, block: int, seed: int) -> dict[int, np.ndarray]:
    """Held-out pixels ``{z: bool (Y, X)}`` of a label set, as fits and the gate use them.

    Per slice :func:`held_out`, except that a class whose every labelled pixel would be
    held out keeps its pixels in the fit (a Random Forest needs every class it is to
    predict): such squares are neither left out of the fits nor judged on.
    """
    held = {int(z): held_out(z, lab, fraction=fraction, block=block, seed=seed) for z, lab in labels.items()}
    classes = set()
    for lab in labels.values():
        classes |= {int(v) for v in np.unique(lab) if v != UNLABELLED}
    for c in classes:
        if any(np.any((lab == c) & ~held[int(z)]) for z, lab in labels.items()):
            continue
        for z, lab in labels.items():
            held[int(z)] &= lab != c
    return held


def without_held_out(labels: Mapping[int, np.ndarray], *, fraction: float, block: int, seed: int) -> dict[int, np.ndarray]:
    """``labels`` with every held-out pixel (:func:`held_masks`) set to 255: what a fit may see."""
    out = {}
    for (z, lab), held in zip(labels.items(), held_masks(labels, fraction=fraction, block=block, seed=seed).values()):
        if held.any():
            lab = lab.copy()
            lab[held] = UNLABELLED
        out[int(z)] = lab
    return out


def held_out_labels(labels: Mapping[int, np.ndarray], *, fraction: float, block: int, seed: int) -> dict[int, np.ndarray]:
    """Only the held-out pixels (:func:`held_masks`) of ``labels`` (255 elsewhere); slices without any are left out."""
    out = {}
    for (z, lab), held in zip(labels.items(), held_masks(labels, fraction=fraction, block=block, seed=seed).values()):
        if held.any():
            v = np.full_like(lab, UNLABELLED)
            v[held] = lab[held]
            out[int(z)] = v
    return out
