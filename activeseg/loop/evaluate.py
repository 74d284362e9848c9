"""Whole-stack prediction of any model (RF or network), and its evaluation against the truth.

The prediction streams into a memory-mapped array whose disk blocks are reserved first
(a full disk raises instead of killing the process); the scratch lives in the session's
``tmp/``, which the lock holder owns and the next step clears after a kill.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from activeseg import metrics
from activeseg.loop.blocks import predict_blocks
from activeseg.loop.state import Progress, no_progress, open_depth, open_truth
from activeseg.metrics import PORE, paper_indices
from activeseg.safety import check_free_space, reserve
from activeseg.session import Session


def evaluate_model(session: Session, model, image, *, labelled=(), progress: Progress = no_progress,
                   scheduler=None) -> dict:
    """Predict the whole stack and compare with the session's truth (streamed to disk).

    ``overall`` is over the whole stack, the labelled slices included; with ``labelled``
    (the slices a fit saw), ``unlabelled`` holds the same figures over the other slices
    only (no boundary F1), the honest estimate of how well the model generalises, and
    ``labelled_slices`` names what ``overall`` includes.
    """
    truth = open_truth(session)
    if truth is None:
        return {}
    depth = open_depth(session)
    nz, ny, nx = (int(s) for s in image.shape)
    n_classes = model_classes(model)
    # scratch space of the session: the caller holds the lock, so leftovers of a killed
    # process can go before new files are made
    scratch = session.path("tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        prob: np.ndarray
        if n_classes == 2:
            check_free_space(scratch, nz * ny * nx * 5, what="the whole-stack evaluation's scratch arrays")
            prob = scratch_array(scratch / "prob.npy", np.float32, (nz, ny, nx))
            predict_pore_prob(model, image, prob, progress=progress, scheduler=scheduler)
            pred = scratch_array(scratch / "pred.npy", np.uint8, (nz, ny, nx))
            for z0 in range(0, nz, 16):
                pred[z0 : z0 + 16] = prob[z0 : z0 + 16] >= 0.5
        else:  # class probabilities (Z, C, Y, X) on disk; labels = argmax; BCE on the pore channel
            check_free_space(scratch, nz * ny * nx * (4 * n_classes + 1), what="the whole-stack evaluation's scratch arrays")
            probs = scratch_array(scratch / "prob.npy", np.float32, (nz, n_classes, ny, nx))
            predict_class_prob(model, image, probs, progress=progress, scheduler=scheduler)
            pred = scratch_array(scratch / "pred.npy", np.uint8, (nz, ny, nx))
            for z0 in range(0, nz, 4):
                pred[z0 : z0 + 4] = np.argmax(probs[z0 : z0 + 4], axis=1)
            prob = np.asarray(probs)[:, PORE]  # a strided view of the memmap (no copy): read slice by slice
        rest = sorted(set(range(nz)) - {int(z) for z in labelled})
        with truth:
            ev = metrics.evaluate(pred, truth, prob=prob, depth=depth, n_classes=n_classes)
            unl = (metrics.evaluate(pred, truth, prob=prob, depth=depth, n_classes=n_classes, slices=rest, boundary=False)
                   if labelled and rest else None)
        if depth is not None:
            depth.close()
        del prob, pred
        if n_classes != 2:
            del probs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    d = ev.to_dict()
    d["labelled_slices"] = sorted(int(z) for z in labelled)
    if unl is not None:
        d["unlabelled"] = {**unl.to_dict()["overall"], "n_slices": len(rest)}

    d["named_indices"] = {str(z): ev.at(z) for z in sorted(set(paper_indices(nz)))}
    return d


def scratch_array(path: Path, dtype, shape) -> np.memmap:
    """A memory-mapped ``.npy`` whose disk blocks are reserved (a full disk raises, no SIGBUS)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve(path, os.path.getsize(path))
    return arr


def model_classes(model) -> int:
    """The number of classes C of a model (RF or network; 2 when it does not say)."""
    return int(getattr(model, "n_classes", 2))


def predict_pore_prob(model, image, out, *, progress: Progress = no_progress, scheduler=None) -> None:
    """Write the pore probability (Z, Y, X) of a binary model (RF or network) into ``out``."""
    _stream_probabilities(model, image, out, progress, scheduler)


def predict_class_prob(model, image, out, *, progress: Progress = no_progress, scheduler=None) -> None:
    """Write the class probabilities (Z, C, Y, X) of any model (RF or network) into ``out``
    (a memmap: streamed block by block, never the whole float volume in memory)."""
    _stream_probabilities(model, image, out, progress, scheduler)


def _stream_probabilities(model, image, out, progress: Progress, scheduler) -> None:
    """Block by block (:mod:`activeseg.loop.blocks`), in this process or on ``scheduler``'s workers."""
    predict_blocks(model, image, out, mode="raw", scheduler=scheduler, progress=lambda d, t: progress("inference", d, t))
