"""Segmentation quality metrics (docs/architecture.md §8).

Everything is computed from per-slice counts, so a whole stack is evaluated block by
block (memmaps welcome) and the same counts give per-slice, per-index and whole-stack
figures. Labels are integer arrays with 0 = solid, 1 = pore; with C >= 3 classes 0 is
the first solid phase, 1 the pore and 2.. further solid phases (docs/architecture.md §3).
Probabilities are the predicted pore probability, float in [0, 1].

With C >= 3 the headline ``iou_solid`` is the mean IoU of the solid (non-pore) phases,
and per-class IoU / Dice and phase fractions (``iou_c0``, ``fraction_true_c2``, ...)
are added; porosity, BCE and the grey-pore error are pore-vs-rest figures.

Conventions for degenerate slices (one class present):

- IoU / Dice of a class absent from both prediction and truth is 1.0 (nothing to find,
  nothing found); absent from truth but predicted it is 0.0.
- Boundary F1 of a slice without boundaries in both is 1.0; with boundaries in only one
  of them it is 0.0.
- Grey-pore error of a slice with no grey pores is NaN (undefined), and slices without
  grey pores do not enter the whole-stack figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from activeseg.errors import ConfigError

__all__ = [
    "BCE_EPS",
    "accuracy",
    "bce",
    "iou",
    "dice",
    "porosity",
    "porosity_error",
    "per_class_iou",
    "phase_fractions",
    "boundary_f1",
    "grey_pore_error",
    "Evaluation",
    "evaluate",
]

BCE_EPS = 1e-7
"""Probabilities are clipped to ``[BCE_EPS, 1 - BCE_EPS]`` before the log (docs/architecture.md §8)."""

PORE = 1


def _as_volume(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ConfigError(f"{name} must be a 2D slice (Y, X) or a volume (Z, Y, X), got shape {a.shape}")
    return a


def _check_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_volume(pred, "prediction")
    truth = _as_volume(truth, "truth")
    if pred.shape != truth.shape:
        raise ConfigError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    return pred, truth


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a 2D boolean mask (pixels of the mask with a 4-neighbour outside)."""
    if not mask.any() or mask.all():
        return np.zeros_like(mask)
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def _phase_boundary(labels: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """Pixels on a phase interface of a 2D label image (both sides): the pore/solid
    interface for two classes, every interface between two different classes for more."""
    pore = labels == PORE
    if n_classes == 2:
        return _boundary(pore) | _boundary(~pore)
    out = _boundary(pore)
    for k in range(n_classes):
        if k != PORE:
            out |= _boundary(labels == k)
    return out


@dataclass
class _Counts:
    """Per-slice sufficient statistics; metrics are ratios of sums of these."""

    n_classes: int
    n: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    inter: list = field(default_factory=list)  # (C,) per slice
    n_pred: list = field(default_factory=list)
    n_truth: list = field(default_factory=list)
    bce_sum: list = field(default_factory=list)
    grey_n: list = field(default_factory=list)
    grey_wrong: list = field(default_factory=list)
    bf_tp_pred: list = field(default_factory=list)
    bf_n_pred: list = field(default_factory=list)
    bf_tp_truth: list = field(default_factory=list)
    bf_n_truth: list = field(default_factory=list)

    def add_slice(self, p, t, prob, depth, grey_depth, tolerance, with_boundary) -> None:
        c = self.n_classes
        self.n.append(t.size)
        self.correct.append(int(np.count_nonzero(p == t)))
        idx = t.astype(np.int64).ravel() * c + p.astype(np.int64).ravel()
        conf = np.bincount(idx, minlength=c * c)[: c * c].reshape(c, c)
        self.inter.append(np.diag(conf).copy())
        self.n_truth.append(conf.sum(axis=1))
        self.n_pred.append(conf.sum(axis=0))
        if prob is not None:
            q = np.clip(prob.astype(np.float64), BCE_EPS, 1.0 - BCE_EPS)
            pore = t == PORE
            self.bce_sum.append(float(-(np.log(q[pore]).sum() + np.log1p(-q[~pore]).sum())))
        if depth is not None:
            grey = (t == PORE) & (depth > 0) & (depth <= grey_depth)
            self.grey_n.append(int(np.count_nonzero(grey)))
            self.grey_wrong.append(int(np.count_nonzero(grey & (p != PORE))))
        if with_boundary:
            bp, bt = _phase_boundary(p, c), _phase_boundary(t, c)
            # distance from every pixel to the nearest boundary pixel of the other map
            dt = ndimage.distance_transform_edt(~bt) if bt.any() else np.full(bt.shape, np.inf)
            dp = ndimage.distance_transform_edt(~bp) if bp.any() else np.full(bp.shape, np.inf)
            self.bf_tp_pred.append(int(np.count_nonzero(bp & (dt <= tolerance))))
            self.bf_n_pred.append(int(np.count_nonzero(bp)))
            self.bf_tp_truth.append(int(np.count_nonzero(bt & (dp <= tolerance))))
            self.bf_n_truth.append(int(np.count_nonzero(bt)))


def _iou_from(inter, n_pred, n_truth):
    inter, union = np.asarray(inter, float), np.asarray(n_pred, float) + np.asarray(n_truth, float) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def _dice_from(inter, n_pred, n_truth):
    inter, tot = np.asarray(inter, float), np.asarray(n_pred, float) + np.asarray(n_truth, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, 2 * inter / np.where(tot > 0, tot, 1), 1.0)


def _f1_from(tp_pred, n_pred, tp_truth, n_truth):
    tp_pred, n_pred = np.asarray(tp_pred, float), np.asarray(n_pred, float)
    tp_truth, n_truth = np.asarray(tp_truth, float), np.asarray(n_truth, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp_pred / np.where(n_pred > 0, n_pred, 1), 0.0)
        recall = np.where(n_truth > 0, tp_truth / np.where(n_truth > 0, n_truth, 1), 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.where(precision + recall > 0, precision + recall, 1), 0.0)
    return np.where((n_pred == 0) & (n_truth == 0), 1.0, f1)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a prediction against truth, per slice and over the evaluated slices.

    Attributes
    ----------
    slices : int (n,), the global z of each evaluated slice.
    per_slice : name -> float64 (n,) arrays.
    overall : name -> float over all evaluated pixels (not a mean of slice figures).
    """

    slices: np.ndarray
    per_slice: dict
    overall: dict

    def at(self, z: int) -> dict:
        """Metrics of global slice ``z`` (which must have been evaluated)."""
        hits = np.flatnonzero(self.slices == z)
        if hits.size == 0:
            raise ConfigError(f"slice {z} was not evaluated; evaluated slices: {self.slices.min()}..{self.slices.max()}")
        i = int(hits[0])
        return {k: float(v[i]) for k, v in self.per_slice.items()}

    def to_dict(self) -> dict:
        """JSON-serialisable form (NaN kept as None)."""

        def clean(x):
            return None if x is None or not np.isfinite(x) else float(x)

        return {
            "slices": [int(z) for z in self.slices],
            "per_slice": {k: [clean(x) for x in v] for k, v in self.per_slice.items()},
            "overall": {k: clean(v) for k, v in self.overall.items()},
        }


def evaluate(
    pred,
    truth,
    *,
    prob=None,
    depth=None,
    slices: Sequence[int] | None = None,
    n_classes: int = 2,
    grey_depth: float = 5.0,
    tolerance: float = 1.0,
    boundary: bool = True,
) -> Evaluation:
    """Evaluate a segmentation slice by slice (streams: reads one slice at a time).

    Parameters
    ----------
    pred, truth : integer (Z, Y, X) array-likes (memmaps and lazy stacks work), values
        in ``0..n_classes-1`` (0 = solid, 1 = pore; 2.. further solid phases).
    prob : optional float (Z, Y, X) pore probability, for ``bce`` (pore vs the rest when
        ``n_classes >= 3``).
    depth : optional float32 (Z, Y, X) back-wall depth map of the simulator (docs/architecture.md
        §8), for ``grey_pore_error``.
    slices : global z indices to evaluate (default: all).
    n_classes : C, the number of classes (2 = solid / pore).
    grey_depth : pore pixels with ``0 < depth <= grey_depth`` count as grey pores.
    tolerance : boundary F1 match distance in pixels.
    boundary : compute boundary F1 (the slowest metric; off for quick scoring).

    Returns
    -------
    Evaluation with per-slice and overall ``accuracy``, ``iou_solid``, ``iou_pore``,
    ``dice_solid``, ``dice_pore``, ``porosity_pred``, ``porosity_true``, ``porosity_error``
    (predicted minus true; negative = underestimate), and, when their inputs are given,
    ``bce``, ``grey_pore_error``, ``boundary_f1``. With ``n_classes >= 3``:
    ``iou_solid`` / ``dice_solid`` are the means over the solid phases (every class but
    1 = pore), and per class ``k`` there are ``iou_c{k}``, ``dice_c{k}``,
    ``fraction_pred_c{k}``, ``fraction_true_c{k}`` (volume fraction of the class) and
    ``fraction_error_c{k}`` (predicted minus true).
    """
    if getattr(pred, "shape", None) != getattr(truth, "shape", None):
        raise ConfigError(
            f"prediction shape {getattr(pred, 'shape', None)} does not match truth shape {getattr(truth, 'shape', None)}"
        )
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 2 <= n_classes <= 254:
        raise ConfigError(f"n_classes must be an integer from 2 to 254, got {n_classes!r}")
    n_classes = int(n_classes)
    if len(pred.shape) != 3:
        raise ConfigError(f"evaluate expects (Z, Y, X) volumes, got shape {pred.shape}; use accuracy()/iou() for single slices")
    for name, extra in (("prob", prob), ("depth", depth)):
        if extra is not None and tuple(extra.shape) != tuple(truth.shape):
            raise ConfigError(f"{name} shape {tuple(extra.shape)} does not match truth shape {tuple(truth.shape)}")
    zs = np.arange(pred.shape[0]) if slices is None else np.asarray(list(slices), dtype=np.intp)
    if zs.size and (zs.min() < 0 or zs.max() >= pred.shape[0]):
        raise ConfigError(f"slices must lie in 0..{pred.shape[0] - 1}, got {zs.min()}..{zs.max()}")
    counts = _Counts(n_classes)
    for z in zs:
        t = np.asarray(truth[int(z)])
        p = np.asarray(pred[int(z)])
        if t.max(initial=0) >= n_classes or p.max(initial=0) >= n_classes:
            raise ConfigError(
                f"slice {int(z)}: label values must be < n_classes={n_classes}; "
                f"got max truth {t.max()}, max prediction {p.max()} (255 = unlabelled is not allowed here)"
            )
        counts.add_slice(
            p,
            t,
            None if prob is None else np.asarray(prob[int(z)]),
            None if depth is None else np.asarray(depth[int(z)]),
            grey_depth,
            tolerance,
            boundary,
        )
    return _summarise(zs, counts, prob is not None, depth is not None, boundary)


def _summarise(zs, c: _Counts, with_bce: bool, with_depth: bool, with_boundary: bool) -> Evaluation:
    n = np.asarray(c.n, float)
    inter = np.asarray(c.inter, float).reshape(len(zs), c.n_classes)
    n_pred = np.asarray(c.n_pred, float).reshape(len(zs), c.n_classes)
    n_truth = np.asarray(c.n_truth, float).reshape(len(zs), c.n_classes)
    per, tot = {}, {}
    per["accuracy"] = np.asarray(c.correct, float) / n
    tot["accuracy"] = float(np.sum(c.correct) / n.sum())
    if c.n_classes == 2:
        for k, name in ((0, "solid"), (PORE, "pore")):
            per[f"iou_{name}"] = _iou_from(inter[:, k], n_pred[:, k], n_truth[:, k])
            tot[f"iou_{name}"] = float(_iou_from(inter[:, k].sum(), n_pred[:, k].sum(), n_truth[:, k].sum()))
            per[f"dice_{name}"] = _dice_from(inter[:, k], n_pred[:, k], n_truth[:, k])
            tot[f"dice_{name}"] = float(_dice_from(inter[:, k].sum(), n_pred[:, k].sum(), n_truth[:, k].sum()))
    else:
        _summarise_classes(per, tot, inter, n_pred, n_truth, n)
    per["porosity_pred"] = n_pred[:, PORE] / n
    per["porosity_true"] = n_truth[:, PORE] / n
    per["porosity_error"] = per["porosity_pred"] - per["porosity_true"]
    tot["porosity_pred"] = float(n_pred[:, PORE].sum() / n.sum())
    tot["porosity_true"] = float(n_truth[:, PORE].sum() / n.sum())
    tot["porosity_error"] = tot["porosity_pred"] - tot["porosity_true"]
    if with_bce:
        per["bce"] = np.asarray(c.bce_sum) / n
        tot["bce"] = float(np.sum(c.bce_sum) / n.sum())
    if with_depth:
        g, w = np.asarray(c.grey_n, float), np.asarray(c.grey_wrong, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            per["grey_pore_error"] = np.where(g > 0, w / np.where(g > 0, g, 1), np.nan)
        tot["grey_pore_error"] = float(w.sum() / g.sum()) if g.sum() > 0 else float("nan")
    if with_boundary:
        per["boundary_f1"] = _f1_from(c.bf_tp_pred, c.bf_n_pred, c.bf_tp_truth, c.bf_n_truth)
        tot["boundary_f1"] = float(
            _f1_from(sum(c.bf_tp_pred), sum(c.bf_n_pred), sum(c.bf_tp_truth), sum(c.bf_n_truth))
        )
    return Evaluation(slices=np.asarray(zs), per_slice=per, overall=tot)


def _summarise_classes(per: dict, tot: dict, inter, n_pred, n_truth, n) -> None:
    """C >= 3: per-class IoU / Dice / phase fractions, and the solid figures as means
    over the solid phases (every class but the pore)."""
    n_classes = inter.shape[1]
    solids = [k for k in range(n_classes) if k != PORE]
    s_inter, s_pred, s_truth = inter.sum(axis=0), n_pred.sum(axis=0), n_truth.sum(axis=0)
    for k in range(n_classes):
        per[f"iou_c{k}"] = _iou_from(inter[:, k], n_pred[:, k], n_truth[:, k])
        tot[f"iou_c{k}"] = float(_iou_from(s_inter[k], s_pred[k], s_truth[k]))
        per[f"dice_c{k}"] = _dice_from(inter[:, k], n_pred[:, k], n_truth[:, k])
        tot[f"dice_c{k}"] = float(_dice_from(s_inter[k], s_pred[k], s_truth[k]))
    for name in ("iou", "dice"):
        per[f"{name}_solid"] = np.mean([per[f"{name}_c{k}"] for k in solids], axis=0)
        tot[f"{name}_solid"] = float(np.mean([tot[f"{name}_c{k}"] for k in solids]))
        per[f"{name}_pore"] = per[f"{name}_c{PORE}"]
        tot[f"{name}_pore"] = tot[f"{name}_c{PORE}"]
    for k in range(n_classes):
        per[f"fraction_pred_c{k}"] = n_pred[:, k] / n
        per[f"fraction_true_c{k}"] = n_truth[:, k] / n
        per[f"fraction_error_c{k}"] = per[f"fraction_pred_c{k}"] - per[f"fraction_true_c{k}"]
        tot[f"fraction_pred_c{k}"] = float(s_pred[k] / n.sum())
        tot[f"fraction_true_c{k}"] = float(s_truth[k] / n.sum())
        tot[f"fraction_error_c{k}"] = tot[f"fraction_pred_c{k}"] - tot[f"fraction_true_c{k}"]


# --- single-call helpers over whole arrays (slices or small volumes) -----------------


def accuracy(pred, truth) -> float:
    """Fraction of pixels where ``pred == truth``."""
    pred, truth = _check_pair(pred, truth)
    return float(np.count_nonzero(pred == truth) / truth.size)


def bce(prob, truth) -> float:
    """Mean binary cross-entropy of the pore probability against truth (the paper's "loss").

    Probabilities are clipped to ``[1e-7, 1 - 1e-7]``.
    """
    prob, truth = _check_pair(prob, truth)
    q = np.clip(prob.astype(np.float64), BCE_EPS, 1.0 - BCE_EPS)
    pore = truth == PORE
    return float(-(np.log(q[pore]).sum() + np.log1p(-q[~pore]).sum()) / truth.size)


def iou(pred, truth, cls: int = 0) -> float:
    """Intersection over union of class ``cls`` (default 0 = solid, the headline figure)."""
    pred, truth = _check_pair(pred, truth)
    p, t = pred == cls, truth == cls
    return float(_iou_from(np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)))


def dice(pred, truth, cls: int = 0) -> float:
    """Dice coefficient of class ``cls``."""
    pred, truth = _check_pair(pred, truth)
    p, t = pred == cls, truth == cls
    return float(_dice_from(np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)))


def porosity(labels, pore_class: int = PORE) -> float:
    """Fraction of pixels labelled ``pore_class``."""
    labels = np.asarray(labels)
    return float(np.count_nonzero(labels == pore_class) / labels.size)


def per_class_iou(pred, truth, n_classes: int) -> np.ndarray:
    """IoU of every class ``0..n_classes-1``: float64 ``(C,)`` (a class absent from both is 1.0)."""
    pred, truth = _check_pair(pred, truth)
    return np.array([iou(pred, truth, k) for k in range(int(n_classes))], dtype=np.float64)


def phase_fractions(labels, n_classes: int) -> np.ndarray:
    """Volume fraction of every class ``0..n_classes-1``: float64 ``(C,)``, summing to 1
    over labelled pixels (values outside ``0..C-1``, e.g. 255 = unlabelled, are not counted)."""
    labels = np.asarray(labels).ravel()
    n_classes = int(n_classes)
    labels = labels[(labels >= 0) & (labels < n_classes)].astype(np.int64)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full(n_classes, np.nan)


def porosity_error(pred, truth) -> float:
    """Predicted minus true porosity (negative = porosity underestimated)."""
    pred, truth = _check_pair(pred, truth)
    return porosity(pred) - porosity(truth)


def boundary_f1(pred, truth, *, tolerance: float = 1.0) -> float:
    """Boundary F1 of the pore/solid interface, matched within ``tolerance`` pixels in 2D."""
    pred, truth = _check_pair(pred, truth)
    return evaluate(pred, truth, tolerance=tolerance).overall["boundary_f1"]


def grey_pore_error(pred, truth, depth, *, max_depth: float = 5.0) -> float:
    """Error rate on grey pores: true pore pixels whose back wall lies within ``max_depth`` slices.

    These are the pixels the pore-back artifact makes look like solid. NaN when there are
    none.
    """
    pred, truth = _check_pair(pred, truth)
    depth = _as_volume(depth, "depth")
    if depth.shape != truth.shape:
        raise ConfigError(f"depth shape {depth.shape} does not match truth shape {truth.shape}")
    grey = (truth == PORE) & (depth > 0) & (depth <= max_depth)
    n = np.count_nonzero(grey)
    return float(np.count_nonzero(grey & (pred != PORE)) / n) if n else float("nan")


__all__.append("paper_indices")


def paper_indices(n_slices: int, positions: Sequence[int] = (47, 434, 598), of: int = 600) -> list[int]:
    """Global z of the paper's Index-47/434/598 at the same relative positions in a stack.

    ``z = round(p * n_slices / of)``, clipped to ``0..n_slices-1`` (600 slices give
    exactly 47, 434, 598; 160 slices give 13, 116, 159).
    """
    n_slices = int(n_slices)
    if n_slices < 1:
        raise ConfigError(f"n_slices must be >= 1, got {n_slices}")
    # round half up (x // 1 is floor(x)), not Python's round-half-even
    return [int(min(n_slices - 1, max(0, (p * n_slices / of + 0.5) // 1))) for p in positions]


def otsu_baseline(image, truth, *, depth=None) -> dict:
    """How a global Otsu threshold does on a stack with ground truth (the pore-back
    artifact in numbers: on hard volumes grey pores fool it). Returns the stack-wide
    figures of :func:`evaluate` (accuracy, porosity, solid IoU, ...). A truth with
    several solid phases is compared as pore vs the rest (a threshold has two sides)."""
    from skimage.filters import threshold_otsu  # skimage: heavy, needed only here

    image = np.asarray(image)
    pred = (image < threshold_otsu(image)).astype(np.uint8)
    truth = np.asarray(truth)
    if truth.max(initial=0) > PORE:  # several solid phases: a threshold separates pore from the rest only
        truth = (truth == PORE).astype(np.uint8)
    return evaluate(pred, truth, depth=depth, boundary=False).overall
