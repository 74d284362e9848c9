"""The model gate: a new network replaces the current model only when it is not worse.

When ``train`` finishes, the candidate network is compared with the model it would
replace (the current network, or the Random Forest while no network was accepted) on the
held-out blocks of the human labels (:mod:`activeseg.holdout`), pixels that neither the
candidate nor the incumbent was fitted on: the network's training and the session's RF
both leave them out. The figure is the headline of the project: the IoU of the solid
phase (for three or more classes, the mean IoU of the non-pore phases). The candidate
becomes the current model only when it scores higher (a tie keeps the incumbent); with no
held-out pixel it is accepted and marked unverified. See docs/architecture.md §6.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from activeseg.holdout import UNLABELLED

PORE = 1
"""Class id of the pore phase (docs/architecture.md §3)."""


@dataclass(frozen=True)
class Verdict:
    """What the gate decided, with both figures (JSON-ready via :meth:`to_dict`).

    accepted : the candidate becomes the current model.
    verified : the decision rests on held-out pixels (False: none existed; accepted).
    metric : "solid_iou" (two classes) or "mean_solid_iou" (three or more).
    candidate, incumbent : the held-out figures (None when unverified).
    incumbent_kind : "rf" or "resunet"; incumbent_version : its version string.
    n_pixels, n_slices : held-out pixels and the slices they lie on.
    forced : accepted by ``train --no-gate`` although it did not score higher.
    """

    accepted: bool
    verified: bool
    metric: str
    candidate: float | None
    incumbent: float | None
    incumbent_kind: str
    incumbent_version: str
    n_pixels: int
    n_slices: int
    forced: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """One line for people: what is current now, and why."""
        inc = "the Random Forest" if self.incumbent_kind == "rf" else f"network {self.incumbent_version}"
        name = "solid IoU" if self.metric == "solid_iou" else "mean solid-phase IoU"
        if not self.verified:
            return (f"the new network is the current model, unverified: no held-out labelled pixels to compare it "
                    f"with {inc} (every labelled slice fits in one [train] val_block square, or val_fraction is 0)")
        figs = (f"held-out {name} {self.candidate:.4f} vs {self.incumbent:.4f} for {inc} "
                f"({self.n_pixels} px on {self.n_slices} slices)")
        if self.forced:
            return f"the new network is the current model (--no-gate), although it did not score higher: {figs}"
        if self.accepted:
            return f"the new network is the current model: {figs}"
        return f"kept {inc} as the current model, the new network is not better: {figs}"


def headline_iou(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float | None:
    """Solid IoU (C = 2) or the mean IoU of the non-pore phases (C >= 3).

    ``pred`` and ``truth`` are integer arrays of the same shape (only labelled pixels).
    A phase absent from both is predicted perfectly (IoU 1), as in
    :func:`activeseg.metrics.evaluate`; None only when there is no pixel at all.
    """
    if pred.size == 0:
        return None
    solids = [c for c in range(n_classes) if c != PORE] if n_classes >= 3 else [0]
    ious = []
    for c in solids:
        p, t = pred == c, truth == c
        union = int(np.count_nonzero(p | t))
        ious.append(int(np.count_nonzero(p & t)) / union if union else 1.0)
    return float(np.mean(ious))


def metric_name(n_classes: int) -> str:
    return "solid_iou" if n_classes < 3 else "mean_solid_iou"


def held_out_score(model, image, held: Mapping[int, np.ndarray], n_classes: int, *, block: int = 8) -> float | None:
    """The headline IoU of ``model`` pooled over the held-out pixels ``held`` ({z: uint8, 255 elsewhere})."""
    zs = sorted(held)
    preds, truths = [], []
    for i in range(0, len(zs), block):
        part = zs[i : i + block]
        probs = model.predict_proba(image, part)
        for z, p in zip(part, probs):
            sel = held[z] != UNLABELLED
            preds.append(np.argmax(p, axis=0)[sel])
            truths.append(held[z][sel])
    if not preds:
        return None
    return headline_iou(np.concatenate(preds), np.concatenate(truths), n_classes)


def judge(candidate, incumbent, image, held: Mapping[int, np.ndarray], n_classes: int, *,
          incumbent_kind: str, incumbent_version: str, candidate_score: float | None = None) -> Verdict:
    """Compare ``candidate`` with ``incumbent`` on the held-out pixels ``held``
    (``candidate_score``: the candidate's figure on them, when already known)."""
    n_px = int(sum(int(np.count_nonzero(v != UNLABELLED)) for v in held.values()))
    metric = metric_name(n_classes)
    if n_px == 0:
        return Verdict(True, False, metric, None, None, incumbent_kind, incumbent_version, 0, 0)
    c = candidate_score if candidate_score is not None else held_out_score(candidate, image, held, n_classes)
    inc = held_out_score(incumbent, image, held, n_classes)
    assert c is not None and inc is not None  # held pixels exist, so both figures do
    return Verdict(bool(c > inc), True, metric, float(c), float(inc), incumbent_kind, incumbent_version, n_px, len(held))
