"""Simulated scribbles and ilastik label-file conversion (docs/architecture.md §1, §3).

A simulated study can start from "a person scribbled on 3 slices" instead of perfect
full slices: :func:`simulate_scribbles` draws short strokes along the medial ridge
(skeleton) of each class, well inside it (never on or next to a boundary), within a
pixel budget, like a person marking "this is solid", "this is pore" in a viewer.

Conventions: scribbles in memory follow the label convention (class ``c`` where drawn,
255 = unlabelled); scribble *files* follow ilastik (0 = unlabelled, class ``c`` stored
as ``c + 1``). :func:`scribbles_to_ilastik` and :func:`ilastik_to_labels` convert.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from activeseg.errors import ConfigError, LabelError

__all__ = ["simulate_scribbles", "scribbles_to_ilastik", "ilastik_to_labels", "UNLABELLED"]

log = logging.getLogger(__name__)

UNLABELLED = 255

# 8-neighbour steps (dy, dx)
_STEPS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], dtype=np.int64)


def _walk(ridge: np.ndarray, used: np.ndarray, start: tuple[int, int], length: int, rng: np.random.Generator) -> list:
    """Follow ``ridge`` pixels from ``start`` for up to ``length`` steps, keeping direction."""
    ny, nx = ridge.shape
    path = [start]
    used[start] = True
    direction = _STEPS[rng.integers(len(_STEPS))].astype(float)
    y, x = start
    for _ in range(length - 1):
        cand = _STEPS + (y, x)
        ok = (cand[:, 0] >= 0) & (cand[:, 0] < ny) & (cand[:, 1] >= 0) & (cand[:, 1] < nx)
        cand, steps = cand[ok], _STEPS[ok]
        free = ridge[cand[:, 0], cand[:, 1]] & ~used[cand[:, 0], cand[:, 1]]
        if not free.any():
            break
        cand, steps = cand[free], steps[free].astype(float)
        # prefer continuing straight on: cosine with the current direction
        score = steps @ direction / (np.linalg.norm(steps, axis=1) * max(np.linalg.norm(direction), 1e-9))
        j = int(np.argmax(score + 1e-6 * rng.random(score.size)))
        y, x = int(cand[j, 0]), int(cand[j, 1])
        direction = 0.6 * direction + 0.4 * steps[j]
        used[y, x] = True
        path.append((y, x))
    return path


def _raster(path: list, shape: tuple[int, int], r: int, disk) -> np.ndarray:
    stroke = np.zeros(shape, dtype=bool)
    py, px = np.array(path).T
    stroke[py, px] = True
    if r:
        stroke = ndimage.binary_dilation(stroke, disk, iterations=r)
    return stroke


def simulate_scribbles(
    truth_slice,
    *,
    rng: np.random.Generator,
    budget: int | None = None,
    n_strokes: int = 4,
    margin: int = 2,
    width: int = 1,
    classes=None,
    min_stroke: int = 5,
) -> np.ndarray:
    """Draw realistic sparse scribbles on one ground-truth slice.

    For each class, strokes follow the skeleton of the class's interior (the pixels
    more than ``margin + width // 2`` pixels away from any other class), so scribbles
    run along the middle of pores and walls and never touch a boundary: every drawn
    pixel of class ``c`` has at least ``margin`` pixels of class ``c`` between it and
    the nearest pixel of another class (Euclidean distance > ``margin``; the image
    border is not a boundary). Thin structures with no such interior get no strokes.

    Parameters
    ----------
    truth_slice : integer (Y, X) ground truth (0 = solid, 1 = pore, ...; 255 = unknown,
        never scribbled and treated as "other class").
    rng : numpy Generator (start points and tie-breaks).
    budget : total scribbled pixels for the slice, split evenly over the classes
        (default 0.5 % of the slice, at least 40).
    n_strokes : strokes per class (each gets an equal share of the class budget).
    margin : minimum clearance from the class boundary, pixels.
    width : stroke width in pixels (odd; 1 = one-pixel lines).
    classes : which classes to scribble (default: every class present).
    min_stroke : strokes shorter than this many pixels (short ridge branches) are
        dropped and another start point is tried.

    Returns
    -------
    uint8 (Y, X): class ``c`` where drawn, 255 elsewhere.
    """
    truth = np.asarray(truth_slice)
    if truth.ndim != 2:
        raise ConfigError(f"truth_slice must be one 2D slice (Y, X), got shape {truth.shape}")
    if truth.dtype.kind not in "uib":
        raise LabelError(f"truth_slice must be integer labels, got dtype {truth.dtype}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if int(n_strokes) < 1 or int(margin) < 0 or int(width) < 1 or int(width) % 2 == 0:
        raise ConfigError(
            f"need n_strokes >= 1, margin >= 0 and an odd width >= 1; got {n_strokes}, {margin}, {width}"
        )
    truth = truth.astype(np.int64)
    present = [int(c) for c in np.unique(truth) if c != UNLABELLED]
    classes = present if classes is None else [int(c) for c in classes]
    if budget is None:
        budget = max(40, int(0.005 * truth.size))
    if int(budget) < 1:
        raise ConfigError(f"budget must be >= 1 pixel, got {budget}")
    out = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    if not classes:
        return out
    r = int(width) // 2
    per_class = int(budget) // len(classes)
    disk = ndimage.generate_binary_structure(2, 1) if r else None
    from skimage.morphology import skeletonize  # heavy (about 0.5 s): only when scribbles are simulated

    for c in classes:
        if not 0 <= c < UNLABELLED:
            raise LabelError(f"class {c} cannot be scribbled (values 0..254; 255 = unlabelled)")
        mask = truth == c
        if not mask.any() or per_class < 1:
            continue
        clearance = ndimage.distance_transform_edt(mask)
        drawable = clearance > margin
        centres = clearance > margin + r
        if not centres.any():
            log.info("class %d has no interior %d px from its boundary: no scribbles", c, margin + r)
            continue
        ridge = skeletonize(centres)
        if not ridge.any():
            ridge = centres
        pts = np.argwhere(ridge)
        order = rng.permutation(len(pts))
        used = np.zeros(truth.shape, dtype=bool)
        drawn = 0
        stroke_len = max(min_stroke, per_class // (int(n_strokes) * int(width)))
        for i in order:
            if drawn >= per_class:
                break
            y0, x0 = (int(v) for v in pts[i])
            if used[y0, x0]:
                continue
            path = _walk(ridge, used, (y0, x0), stroke_len, rng)
            if len(path) < min(min_stroke, stroke_len):
                continue
            remaining = per_class - drawn
            path = path[: max(1, remaining // int(width))]
            stroke = _raster(path, truth.shape, r, disk) & drawable & (out == UNLABELLED)
            while np.count_nonzero(stroke) > remaining and len(path) > 1:
                path = path[:-1]
                stroke = _raster(path, truth.shape, r, disk) & drawable & (out == UNLABELLED)
            n_new = int(np.count_nonzero(stroke))
            if n_new > remaining:
                break
            drawn += n_new
            out[stroke] = c
    return out


def scribbles_to_ilastik(scribbles) -> np.ndarray:
    """In-memory scribbles (255 = unlabelled, class c) -> ilastik file convention (0, c + 1).

    Works on a slice or a stack; returns uint8 of the same shape.
    """
    s = np.asarray(scribbles)
    if s.dtype.kind not in "ui":
        raise LabelError(f"scribbles must be integer labels, got dtype {s.dtype}")
    drawn = s != UNLABELLED
    if drawn.any() and (s[drawn].min() < 0 or s[drawn].max() > 253):
        raise LabelError(
            f"scribble values must be classes 0..253 or 255 (unlabelled), got {int(s[drawn].min())}..{int(s[drawn].max())}"
        )
    out = np.zeros(s.shape, dtype=np.uint8)
    out[drawn] = s[drawn] + 1
    return out


def ilastik_to_labels(a) -> np.ndarray:
    """ilastik scribble convention (0 = unlabelled, class c stored c + 1) -> labels (c, 255).

    Works on a slice or a stack (napari/ilastik int32 arrays accepted when in range);
    returns uint8 of the same shape.
    """
    arr = np.asarray(a)
    if arr.dtype.kind not in "uib":
        raise LabelError(f"ilastik labels must be integers, got dtype {arr.dtype}")
    drawn = arr != 0
    if drawn.any():
        lo, hi = int(arr[drawn].min()), int(arr[drawn].max())
        if lo < 1 or hi > 254:
            hint = "; a 0/255 binary mask is a full mask, not an ilastik scribble file" if hi == 255 else ""
            raise LabelError(
                f"ilastik label values must be 0 (unlabelled) or 1..254 (class + 1), got {lo}..{hi}{hint}"
            )
    out = np.full(arr.shape, UNLABELLED, dtype=np.uint8)
    out[drawn] = (arr[drawn] - 1).astype(np.uint8)
    return out
