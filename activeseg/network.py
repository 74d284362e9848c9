"""The trained network as one object, :class:`SegModel`, and its saving and loading.

:class:`SegModel` holds a network (:func:`activeseg.model.build_model`), its
:class:`~activeseg.model.ModelConfig` and the intensity normalisation of the stack it
was trained on, and applies itself through :mod:`activeseg.infer` (whole stacks, MC
dropout, test-time augmentation, embeddings). Layering: model <- infer <- network <-
train; :mod:`activeseg.infer` works on any object with the attributes it needs
(:class:`activeseg.infer.InferenceModel`) and never imports this module.

A trained model is saved as ``model.json`` (config, intensity normalisation, metadata)
plus ``model.safetensors`` (weights); no pickle is involved (docs/architecture.md §5).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from activeseg.errors import ModelError
from activeseg.infer import (
    InferenceOptions,
    encoder_embeddings,
    mc_dropout_proba,
    predict_stack,
    tta_proba,
    weights_fingerprint,
)
from activeseg.model import ModelConfig, build_model, make_input, network_multiple
from activeseg.safety import atomic_write_bytes

__all__ = ["SegModel", "save_model", "load_model", "MODEL_FORMAT"]

MODEL_FORMAT = "activeseg.segmodel"
_FORMAT_VERSION = 1
_WEIGHTS_FILE = "model.safetensors"
_CONFIG_FILE = "model.json"


# ----------------------------------------------------------------------------- SegModel


@dataclass(eq=False)
class SegModel:
    """A trained (or initialised) network with everything needed to apply it.

    Satisfies :class:`activeseg.uncertainty.ProbabilityModel`,
    :class:`~activeseg.uncertainty.EnsembleModel` (MC dropout) and
    :class:`activeseg.infer.InferenceModel`.

    Attributes
    ----------
    net : the torch module (kept on the CPU between uses).
    config : the :class:`~activeseg.model.ModelConfig` it was built from.
    norm : (lo, hi) raw intensities mapped to -1 / +1 (from the training stack).
    metadata : JSON-serialisable training metadata (steps, labelled slices, ...).
    device : where inference runs by default ("auto": CUDA -> MPS -> CPU).
    """

    net: nn.Module
    config: ModelConfig
    norm: tuple[float, float]
    metadata: dict = field(default_factory=dict)
    device: str = "auto"

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.norm)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ModelError(f"norm must be finite (lo, hi) with hi > lo, got {self.norm!r}")
        self.norm = (lo, hi)

    def weights_fingerprint(self) -> tuple:
        """Changes whenever ``net`` is replaced or any parameter/buffer is modified in place
        (see :func:`activeseg.infer.weights_fingerprint`)."""
        return weights_fingerprint(self.net)

    @property
    def n_classes(self) -> int:
        """Number of classes C."""
        return self.config.n_classes

    @property
    def offsets(self) -> tuple[int, ...]:
        """z offsets of the context slices."""
        return self.config.offsets

    @property
    def multiple(self) -> int:
        """Input height and width are padded to a multiple of this."""
        return network_multiple(self.net, self.config)

    def make_input(self, image: Any, slices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Normalised 2.5D input float32 (n, K, Y, X) (see :func:`activeseg.model.make_input`)."""
        return make_input(image, slices, self.config.offsets, self.norm)

    def predict_proba(self, image: Any, slices: Sequence[int] | None = None) -> np.ndarray:
        """Class probabilities float32 (n, C, Y, X) for global slice ids (all when None)."""
        return predict_stack(self, image, slices=slices, options=InferenceOptions(device=self.device))

    def sample_proba(
        self, image: Any, slices: Sequence[int] | None, *, n_samples: int, rng: np.random.Generator
    ) -> np.ndarray:
        """MC-dropout samples float32 (T, n, C, Y, X) (dropout on, batch norm in eval mode)."""
        return mc_dropout_proba(self, image, slices=slices, n_samples=n_samples, rng=rng,
                                options=InferenceOptions(device=self.device))

    def tta_proba(self, image: Any, slices: Sequence[int] | None = None) -> np.ndarray:
        """Test-time-augmentation predictions float32 (T, n, C, Y, X) (x-flip, intensity)."""
        return tta_proba(self, image, slices=slices, options=InferenceOptions(device=self.device))

    def embeddings(self, image: Any, slices: Sequence[int] | None = None) -> np.ndarray:
        """Per-slice encoder embeddings float32 (n, D) (see :func:`activeseg.infer.encoder_embeddings`)."""
        return encoder_embeddings(self, image, slices=slices, options=InferenceOptions(device=self.device))


# ----------------------------------------------------------------------------- save / load


def save_model(model: SegModel, directory: str | os.PathLike) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    Each file is written atomically (:func:`activeseg.safety.atomic_write_bytes`: a
    temporary name, fsynced and renamed), the JSON last.

    Parameters
    ----------
    model : the :class:`SegModel` to save.
    directory : folder to write into.

    Returns
    -------
    The directory path.

    Raises
    ------
    ModelError
        ``model`` is not a SegModel, or its metadata is not JSON-serialisable.
    OutputError
        A write that fails (disk full, read-only).
    """
    if not isinstance(model, SegModel):
        raise ModelError(f"save_model expects a SegModel, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.net.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "version": _FORMAT_VERSION,
        "config": model.config.to_dict(),
        "norm": [model.norm[0], model.norm[1]],
        "metadata": model.metadata,
        "torch_version": torch.__version__,
    }
    try:
        text = json.dumps(meta, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model metadata is not JSON-serialisable: {exc}") from exc
    atomic_write_bytes(d / _WEIGHTS_FILE, st_save(state, metadata={"format": "pt"}))
    atomic_write_bytes(d / _CONFIG_FILE, text.encode("utf-8"))
    return d


def load_model(directory: str | os.PathLike, *, device: str = "auto") -> SegModel:
    """Load a model written by :func:`save_model` (weights via safetensors, no pickle).

    Parameters
    ----------
    directory : the folder :func:`save_model` wrote.
    device : the loaded model's default inference device.

    Returns
    -------
    SegModel, its network in eval mode on the CPU.

    Raises
    ------
    ModelError
        Missing or unreadable files, another format or a newer format version, or
        weights that do not match the stored config.
    """
    d = Path(directory)
    cfg_path, w_path = d / _CONFIG_FILE, d / _WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ModelError(
            f"{d} is not a saved model: expected {_CONFIG_FILE} and {_WEIGHTS_FILE} in it "
            "(written by activeseg.network.save_model)"
        )
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {cfg_path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{cfg_path} is not an activeseg model file (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > _FORMAT_VERSION:
        raise ModelError(
            f"{cfg_path} has model format version {meta['version']}, newer than this activeseg "
            f"supports ({_FORMAT_VERSION}); upgrade activeseg"
        )
    config = ModelConfig.from_dict(meta["config"])
    net = build_model(config)
    try:
        state = load_file(str(w_path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read weights {w_path}: {exc}") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {w_path} do not match the model config in {cfg_path}: {exc}") from exc
    net.eval()
    return SegModel(net=net, config=config, norm=tuple(meta["norm"]), metadata=meta.get("metadata", {}), device=device)
