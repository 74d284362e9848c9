"""The trained network as one object, :class:`SegModel`, and its saving and loading.

:class:`SegModel` holds a network (:func:`activeseg.model.build_model`), its
:class:`~activeseg.model.ModelConfig` and the intensity normalisation of the stack it
was trained on, and applies itself through :mod:`activeseg.infer` (whole stacks, MC
dropout, test-time augmentation, embeddings). Layering: model <- infer <- network <-
train; :mod:`activeseg.infer` works on any object with the attributes it needs
(:class:`activeseg.infer.InferenceModel`) and never imports this module.

A trained model is saved as ``model.json`` (config, intensity normalisation, metadata)
plus ``model.safetensors`` (weights); no pickle is involved (docs/architecture.md §5).

Normalisation travels with the stack (docs/architecture.md §6): a model in mode
``"stack_percentiles"`` (every model trained since) maps the robust percentiles of the
stack it is applied to onto -1 / +1, so another bit depth, gain or a float copy of a
stack gives the same segmentation, and on its training stack the range is the one it
was trained with. ``model.json`` records ``norm_mode``, ``norm_percentiles``, ``norm``
(the training stack's range) and ``intensity_profile`` (histogram and quantiles of the
training stack's normalised intensities), which :meth:`SegModel.intensity_drift`
compares with a new stack's. A ``model.json`` without ``norm_mode`` (saved before this
existed) loads in mode ``"fixed"``: its stored range is applied to every stack, exactly
as before, so old sessions predict what they predicted.
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

from activeseg.errors import ConfigError, ModelError
from activeseg.infer import (
    InferenceOptions,
    encoder_embeddings,
    mc_dropout_proba,
    predict_stack,
    tta_proba,
    weights_fingerprint,
)
from activeseg.model import (
    DEFAULT_PERCENTILES,
    NORM_FIXED,
    NORM_MODES,
    NORM_STACK,
    IntensityDrift,
    IntensityProfile,
    ModelConfig,
    build_model,
    intensity_profile,
    make_input,
    network_multiple,
    profile_distance,
    stack_intensity,
)
from activeseg.safety import atomic_write_bytes

__all__ = ["SegModel", "save_model", "load_model", "training_normalisation", "MODEL_FORMAT"]

MODEL_FORMAT = "activeseg.segmodel"
_FORMAT_VERSION = 2
"""2: per-stack normalisation (``norm_mode``). A model in mode "fixed" is still written as
version 1, which older activeseg reads alike; one in mode "stack_percentiles" as 2, which
older activeseg refuses instead of applying the training stack's range to another stack."""
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
    norm : (lo, hi) raw intensities of the training stack mapped to -1 / +1 (in mode
        "fixed", of every stack).
    metadata : JSON-serialisable training metadata (steps, labelled slices, ...).
    device : where inference runs by default ("auto": CUDA -> MPS -> CPU).
    norm_mode : "stack_percentiles" (each stack is normalised by its own
        ``norm_percentiles``; what :func:`activeseg.train.train_model` gives) or "fixed"
        (``norm`` for every stack; models saved before modes existed, and the default
        here, so a model built with an explicit ``norm`` behaves as before).
    norm_percentiles : the low and high percentiles of mode "stack_percentiles".
    profile : the training stack's :class:`~activeseg.model.IntensityProfile` (its
        intensities normalised by ``norm``), or None (older models: nothing to compare).
    """

    net: nn.Module
    config: ModelConfig
    norm: tuple[float, float]
    metadata: dict = field(default_factory=dict)
    device: str = "auto"
    norm_mode: str = NORM_FIXED
    norm_percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    profile: IntensityProfile | None = None

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.norm)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ModelError(f"norm must be finite (lo, hi) with hi > lo, got {self.norm!r}")
        self.norm = (lo, hi)
        if self.norm_mode not in NORM_MODES:
            raise ModelError(f"norm_mode must be one of {', '.join(NORM_MODES)}, got {self.norm_mode!r}")
        p_lo, p_hi = (float(v) for v in self.norm_percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ModelError(f"norm_percentiles must satisfy 0 <= low < high <= 100, got {self.norm_percentiles!r}")
        self.norm_percentiles = (p_lo, p_hi)
        if self.profile is not None and not isinstance(self.profile, IntensityProfile):
            raise ModelError(f"profile must be an IntensityProfile or None, got {type(self.profile).__name__}")

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

    def stack_norm(self, image: Any) -> tuple[float, float]:
        """The (lo, hi) raw intensities of ``image`` mapped to -1 / +1.

        Mode "stack_percentiles": the stack's own ``norm_percentiles``
        (:func:`activeseg.model.stack_intensity`, computed once per stack object), which
        on the training stack is ``norm``; mode "fixed": ``norm``.
        """
        if self.norm_mode == NORM_STACK:
            return stack_intensity(image, self.norm_percentiles)[0]
        return self.norm

    def intensity_drift(self, image: Any) -> IntensityDrift | None:
        """How far ``image``'s normalised intensities are from the training stack's.

        Returns
        -------
        :class:`~activeseg.model.IntensityDrift` (its ``message`` is the warning to show,
        or None when the stack is close enough), or None when the model holds no
        training profile (saved before profiles existed).
        """
        if self.profile is None:
            return None
        if self.norm_mode == NORM_STACK:
            profile = stack_intensity(image, self.norm_percentiles)[1]
        else:
            profile = intensity_profile(image, self.norm)
        return IntensityDrift(distance=profile_distance(self.profile, profile))

    def make_input(self, image: Any, slices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Normalised 2.5D input float32 (n, K, Y, X) (see :func:`activeseg.model.make_input`),
        normalised by :meth:`stack_norm`."""
        return make_input(image, slices, self.config.offsets, self.stack_norm(image))

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


def training_normalisation(
    image: Any, *, init: SegModel | None = None, norm: tuple[float, float] | None = None
) -> tuple[tuple[float, float], dict[str, Any]]:
    """The normalisation a training on ``image`` uses and the model it makes records.

    - ``norm`` given: mode "fixed" with that range (for every stack).
    - else a warm start keeps its ``init``'s mode: "stack_percentiles" takes ``image``'s
      own percentiles (on the stack ``init`` was trained on, its ``norm``); "fixed" (an
      older model) keeps ``init.norm``.
    - else mode "stack_percentiles": ``image``'s 0.5 / 99.5 percentiles
      (:func:`~activeseg.model.intensity_range`).

    Returns
    -------
    ``((lo, hi), kwargs)``: the range to normalise the training stack with, and the
    :class:`SegModel` keyword arguments ``norm``, ``norm_mode``, ``norm_percentiles``
    and ``profile`` (the training stack's intensities normalised by the range).
    """
    if init is not None and not isinstance(init, SegModel):
        raise ModelError(f"init must be a SegModel to warm-start from, got {type(init).__name__}")
    pct = DEFAULT_PERCENTILES
    if norm is not None:
        mode, rng = NORM_FIXED, (float(norm[0]), float(norm[1]))
    elif init is not None and init.norm_mode == NORM_FIXED:
        mode, rng = NORM_FIXED, init.norm
    else:
        mode = NORM_STACK
        pct = init.norm_percentiles if init is not None else DEFAULT_PERCENTILES
        rng, profile = stack_intensity(image, pct)  # one cached read: inference on this stack reuses it
    if not (math.isfinite(rng[0]) and math.isfinite(rng[1]) and rng[1] > rng[0]):
        raise ConfigError(f"norm must be (lo, hi) with hi > lo, got {rng}; leave it None to use the stack's percentiles")
    if mode == NORM_FIXED:
        profile = intensity_profile(image, rng)
    kwargs = {"norm": rng, "norm_mode": mode, "norm_percentiles": pct, "profile": profile}
    return rng, kwargs


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
        "version": _FORMAT_VERSION if model.norm_mode != NORM_FIXED else 1,
        "config": model.config.to_dict(),
        "norm": [model.norm[0], model.norm[1]],
        "norm_mode": model.norm_mode,
        "norm_percentiles": list(model.norm_percentiles),
        "intensity_profile": None if model.profile is None else model.profile.to_dict(),
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
    # no "norm_mode": saved before normalisation travelled with the stack; the stored range
    # applies to every stack, as it did then
    mode = meta.get("norm_mode", NORM_FIXED)
    prof = meta.get("intensity_profile")
    try:
        return SegModel(
            net=net, config=config, norm=tuple(meta["norm"]), metadata=meta.get("metadata", {}), device=device,
            norm_mode=mode, norm_percentiles=tuple(meta.get("norm_percentiles", DEFAULT_PERCENTILES)),
            profile=None if prof is None else IntensityProfile.from_dict(prof),
        )
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{cfg_path} holds an invalid intensity normalisation: {exc}") from exc
