"""Segmentation network: configuration, model factory, devices and the 2.5D input.

The default "resunet" is segmentation-models-pytorch's ``Unet`` with a ResNet encoder
(residual units in the encoder, skip connections to the decoder; docs/architecture.md §6), with
``encoder_weights=None`` so nothing is downloaded. Any smp architecture and encoder can be
chosen by name.

2.5D input: the network sees slice ``z`` together with its neighbours at the configured
``offsets`` (default ``(-2, -1, 0, 1, 2)``) as input channels; indices beyond the stack are
clamped to the first / last slice. :func:`make_input` builds that input and is the one
helper used by training and inference alike.

smp's ``Unet`` has no dropout; :func:`build_model` adds ``Dropout2d`` before the
segmentation head and (for ``Unet``) after each decoder block, so MC-dropout
uncertainty (:func:`activeseg.infer.mc_dropout_proba`) has something to sample. The
dropout is active during training as well.

Intensity normalisation travels with the stack (docs/architecture.md §6): a model maps
the 0.5 / 99.5 percentiles of the stack it is applied to onto -1 / +1
(:func:`stack_intensity`, computed once per stack), so a 16-bit copy, another gain or a
float copy of a stack is segmented alike; :class:`IntensityProfile` and
:func:`profile_distance` tell how far a stack's normalised intensities are from the
training stack's.

The network together with its normalisation, :class:`activeseg.network.SegModel`, and
its saving and loading live in :mod:`activeseg.network`; this module never imports
:mod:`activeseg.infer` (the layering is model <- infer <- network <- train).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from activeseg.errors import ConfigError, ModelError, StackError
from activeseg.validation import check_slices, check_stack

__all__ = [
    "ModelConfig",
    "build_model",
    "available_architectures",
    "available_encoders",
    "context_indices",
    "network_multiple",
    "make_input",
    "intensity_range",
    "intensity_profile",
    "stack_intensity",
    "profile_distance",
    "IntensityProfile",
    "IntensityDrift",
    "NORM_STACK",
    "NORM_FIXED",
    "NORM_MODES",
    "DEFAULT_PERCENTILES",
    "DRIFT_THRESHOLD",
    "normalise",
    "resolve_device",
]

log = logging.getLogger(__name__)


# Decoder widths for the Unet family, deepest block first; sliced to the encoder depth.
_UNET_DECODER = (128, 64, 32, 16, 16)
# Architectures whose ``decoder_channels`` is a per-block sequence.
_SEQUENCE_DECODERS = ("unet", "unetplusplus", "manet")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the segmentation network.

    Parameters
    ----------
    arch : smp architecture name, case-insensitive ("Unet", "UnetPlusPlus", "FPN", ...).
        "resunet" is accepted as an alias of "Unet" (with a ResNet encoder that is the
        residual U-Net of the paper).
    encoder : smp encoder name ("resnet18", "resnet34", "efficientnet-b0", "tu-<timm>").
    encoder_depth : number of encoder stages (1-5); inputs are padded to ``2**depth``.
        4 by default (BENCHMARKS.md, "ResUNet training"); FPN-like architectures whose
        head upsamples by 4 need 5.
    decoder_channels : decoder widths, deepest first, one per encoder stage, for the
        Unet family (Unet, UnetPlusPlus, MAnet); None = activeseg's default for those
        and smp's default for other architectures.
    dropout : Dropout2d probability before the segmentation head and, for Unet, after
        every decoder block. Must be > 0 for MC-dropout uncertainty (BALD).
    offsets : z offsets of the context slices fed as channels; ``in_channels =
        len(offsets)``. ``(0,)`` is single-slice input.
    n_classes : number of classes (2 = solid / pore).
    encoder_weights : None (random init, offline) or a pretrained-weights name such as
        "imagenet" (downloads; only on explicit request).
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = 4  # chosen by benchmarks/bench_train.py: as accurate as 5 and 1.3-1.5x faster on CPU
    decoder_channels: tuple[int, ...] | None = None
    dropout: float = 0.1
    offsets: tuple[int, ...] = (-2, -1, 0, 1, 2)
    n_classes: int = 2
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ModelError(f"arch must be a non-empty string, got {self.arch!r}")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ModelError(f"encoder must be a non-empty string, got {self.encoder!r}")
        if not isinstance(self.encoder_depth, (int, np.integer)) or not 1 <= int(self.encoder_depth) <= 5:
            raise ModelError(
                f"encoder_depth must be an integer from 1 to 5, got {self.encoder_depth!r}; "
                "5 is smp's default, 3-4 give lighter CPU models"
            )
        object.__setattr__(self, "encoder_depth", int(self.encoder_depth))
        if self.decoder_channels is not None:
            try:
                dec = tuple(int(c) for c in self.decoder_channels)
            except (TypeError, ValueError):
                raise ModelError(
                    f"decoder_channels must be a sequence of positive integers, got {self.decoder_channels!r}"
                ) from None
            if len(dec) != self.encoder_depth or any(c <= 0 for c in dec):
                raise ModelError(
                    f"decoder_channels needs {self.encoder_depth} positive widths (one per encoder "
                    f"stage, deepest first), got {self.decoder_channels!r}"
                )
            object.__setattr__(self, "decoder_channels", dec)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= float(self.dropout) < 1.0):
            raise ModelError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        try:
            offs = tuple(int(o) for o in self.offsets)
        except (TypeError, ValueError):
            raise ModelError(f"offsets must be a sequence of integers, got {self.offsets!r}") from None
        if not offs or len(set(offs)) != len(offs):
            raise ModelError(
                f"offsets must be a non-empty sequence of distinct integers, got {self.offsets!r}; "
                "e.g. (-2, -1, 0, 1, 2) for 5 slices of context or (0,) for single-slice input"
            )
        object.__setattr__(self, "offsets", offs)
        if not isinstance(self.n_classes, (int, np.integer)) or int(self.n_classes) < 2:
            raise ModelError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        object.__setattr__(self, "n_classes", int(self.n_classes))
        if self.encoder_weights is not None and not isinstance(self.encoder_weights, str):
            raise ModelError(
                f"encoder_weights must be None (offline, random init) or a weights name such as "
                f"'imagenet', got {self.encoder_weights!r}"
            )

    @property
    def in_channels(self) -> int:
        """Number of input channels (= number of context slices)."""
        return len(self.offsets)

    @property
    def arch_key(self) -> str:
        """Lower-case smp architecture key ("resunet" maps to "unet")."""
        key = self.arch.lower()
        return "unet" if key == "resunet" else key

    def resolved_decoder_channels(self) -> tuple[int, ...] | None:
        """Decoder widths actually used (None: the architecture's own default)."""
        if self.decoder_channels is not None:
            return self.decoder_channels
        if self.arch_key in _SEQUENCE_DECODERS:
            return _UNET_DECODER[5 - self.encoder_depth :] if self.encoder_depth < 5 else _UNET_DECODER
        return None

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["offsets"] = list(self.offsets)
        d["decoder_channels"] = None if self.decoder_channels is None else list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ModelError(
                f"unknown model config keys {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        kw = dict(d)
        if kw.get("offsets") is not None:
            kw["offsets"] = tuple(kw["offsets"])
        if kw.get("decoder_channels") is not None:
            kw["decoder_channels"] = tuple(kw["decoder_channels"])
        return cls(**kw)


# ----------------------------------------------------------------------------- factory


def available_architectures() -> tuple[str, ...]:
    """smp architecture names accepted by :class:`ModelConfig` (plus the alias "resunet")."""
    import segmentation_models_pytorch as smp  # heavy (imports timm, torchvision): only when a network is named

    return tuple(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def available_encoders() -> tuple[str, ...]:
    """smp's own encoder names; any timm model is also accepted as ``"tu-<name>"``."""
    import segmentation_models_pytorch as smp  # heavy (imports timm, torchvision): only when a network is named

    return tuple(smp.encoders.get_encoder_names())


class _DropoutAfter(nn.Module):
    """Apply ``Dropout2d`` to the output of a wrapped (decoder) block."""

    def __init__(self, block: nn.Module, p: float) -> None:
        super().__init__()
        self.block = block
        self.drop = nn.Dropout2d(p)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.drop(self.block(*args, **kwargs))


def build_model(config: ModelConfig) -> nn.Module:
    """Build the smp network for ``config`` (random initial weights unless requested).

    Raises
    ------
    ModelError
        For an unknown architecture or encoder (the message lists the valid names) or
        an incompatible combination.
    """
    import segmentation_models_pytorch as smp  # heavy (imports timm, torchvision): only when a network is built

    mapping = smp.MODEL_ARCHITECTURES_MAPPING
    if config.arch_key not in mapping:
        raise ModelError(
            f"unknown architecture {config.arch!r}; choose one of "
            f"{', '.join(available_architectures())} (or 'resunet' = Unet with a ResNet encoder)"
        )
    encoders = available_encoders()
    if config.encoder.startswith("tu-"):
        import timm  # heavy: only for "tu-" encoders

        if not timm.is_model(config.encoder[3:]):
            raise ModelError(
                f"unknown timm encoder {config.encoder!r}: timm has no model "
                f"{config.encoder[3:]!r}; see timm.list_models() for names"
            )
    elif config.encoder not in encoders:
        raise ModelError(
            f"unknown encoder {config.encoder!r}; choose one of {', '.join(encoders)} "
            "or 'tu-<timm model name>'"
        )
    dec = config.resolved_decoder_channels()
    if config.decoder_channels is not None and config.arch_key not in _SEQUENCE_DECODERS:
        raise ModelError(
            f"decoder_channels applies to the Unet family ({', '.join(_SEQUENCE_DECODERS)}), "
            f"not to {config.arch!r}; leave it None"
        )
    kwargs: dict[str, Any] = {"encoder_depth": config.encoder_depth}
    if dec is not None:
        kwargs["decoder_channels"] = dec
    if config.encoder_weights is not None:
        log.info("loading pretrained encoder weights %r (may download)", config.encoder_weights)
    try:
        net = smp.create_model(
            config.arch_key,
            encoder_name=config.encoder,
            encoder_weights=config.encoder_weights,
            in_channels=config.in_channels,
            classes=config.n_classes,
            **kwargs,
        )
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise ModelError(
            f"cannot build {config.arch} with encoder {config.encoder!r} "
            f"(depth {config.encoder_depth}, decoder {dec}, weights {config.encoder_weights!r}): {exc}"
        ) from exc
    _check_output_shape(net, config)
    if config.dropout > 0:
        head = getattr(net, "segmentation_head", None)
        if head is None:
            raise ModelError(f"architecture {config.arch!r} has no segmentation_head to put dropout before")
        net.segmentation_head = nn.Sequential(nn.Dropout2d(config.dropout), head)
        blocks = getattr(getattr(net, "decoder", None), "blocks", None)
        if config.arch_key == "unet" and isinstance(blocks, nn.ModuleList):
            for i in range(len(blocks) - 1):  # the last block feeds the head's dropout
                blocks[i] = _DropoutAfter(blocks[i], config.dropout)
    return net


def _check_output_shape(net: nn.Module, config: ModelConfig) -> None:
    """One tiny forward pass: the output must have the input's height and width."""
    m = network_multiple(net, config)
    side = 2 * m
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, config.in_channels, side, side))
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{config.arch} with encoder {config.encoder!r} fails on a {side}x{side} input: {exc}") from exc
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, config.n_classes, side, side):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{config.arch} with encoder_depth={config.encoder_depth} maps a (1, {config.in_channels}, {side}, {side}) "
            f"input to {got}, not to per-pixel class scores of the input size; use encoder_depth=5 or "
            "another architecture"
        )


def network_multiple(net: nn.Module, config: ModelConfig) -> int:
    """Spatial multiple the network's input must have (the encoder's output stride)."""
    stride = getattr(getattr(net, "encoder", None), "output_stride", None)
    m = 2**config.encoder_depth
    if isinstance(stride, int) and stride > 0:
        m = max(m, stride)
    return int(m)


# ----------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map "auto" | "cpu" | "cuda" | "cuda:N" | "mps" to a torch device.

    "auto" picks CUDA, then MPS, then CPU. Asking for an unavailable device is a
    :class:`ConfigError`.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {device!r}")
    name = device.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise ConfigError(f"unknown device {device!r}; choose 'auto', 'cpu', 'cuda' or 'mps'")


# ----------------------------------------------------------------------------- 2.5D input


def context_indices(z: int | Sequence[int] | np.ndarray, offsets: Sequence[int], n_slices: int) -> np.ndarray:
    """Global slice indices of the context of slice(s) ``z``, clamped to the stack.

    Parameters
    ----------
    z : one slice index, or a sequence of ``n`` indices.
    offsets : K integer offsets, e.g. ``(-2, -1, 0, 1, 2)``.
    n_slices : stack depth Z.

    Returns
    -------
    int64 ``(K,)`` for a scalar ``z``, else ``(n, K)``; values in ``[0, n_slices - 1]``.
    """
    if n_slices < 1:
        raise StackError(f"stack has no slices (n_slices={n_slices})")
    zz = np.asarray(z, dtype=np.int64)
    if np.any(zz < 0) or np.any(zz >= n_slices):
        raise StackError(f"slice index out of range [0, {n_slices - 1}]: {z!r}")
    offs = np.asarray(offsets, dtype=np.int64)
    return np.clip(zz[..., None] + offs, 0, n_slices - 1)


def normalise(raw: np.ndarray, norm: tuple[float, float]) -> np.ndarray:
    """Map raw intensities to the network's range: ``lo -> -1``, ``hi -> +1`` (float32, not clipped)."""
    lo, hi = float(norm[0]), float(norm[1])
    scale = np.float32(2.0 / (hi - lo))
    out = np.asarray(raw, dtype=np.float32) - np.float32(lo)
    out *= scale
    out -= np.float32(1.0)
    return out


def make_input(
    image: Any,
    slices: Sequence[int] | np.ndarray,
    offsets: Sequence[int],
    norm: tuple[float, float],
) -> np.ndarray:
    """Build the normalised 2.5D network input for the given slices.

    Reads only the context slices those slices need (once each, in increasing z
    order), so it works on lazy stacks and memmaps.

    Parameters
    ----------
    image : (Z, Y, X) array-like supporting ``image[list_of_z]``.
    slices : n global slice ids.
    offsets : K context offsets.
    norm : (lo, hi) raw intensities mapped to -1 and +1.

    Returns
    -------
    float32 (n, K, Y, X).
    """
    nz, ny, nx = check_stack(image)
    slices = check_slices(slices, nz)
    ctx = context_indices(slices, offsets, nz)  # (n, K)
    need, inverse = np.unique(ctx, return_inverse=True)
    raw = np.asarray(image[need.tolist()])
    if raw.shape != (len(need), ny, nx):
        raise StackError(f"reading slices {need.tolist()} gave shape {raw.shape}, expected {(len(need), ny, nx)}")
    block = normalise(raw, norm)
    return block[inverse.reshape(ctx.shape)]


# ----------------------------------------------------------------------------- normalisation

NORM_STACK = "stack_percentiles"
"""Normalisation mode: every stack is normalised by its own robust percentiles."""
NORM_FIXED = "fixed"
"""Normalisation mode: one fixed ``(lo, hi)`` range for every stack (models saved before
normalisation travelled with the stack, and ranges given explicitly)."""
NORM_MODES = (NORM_STACK, NORM_FIXED)
DEFAULT_PERCENTILES = (0.5, 99.5)
"""Low and high percentiles mapped to -1 / +1."""

PROFILE_BINS = 32
PROFILE_LIMIT = 1.5
"""The intensity profile's histogram has ``PROFILE_BINS`` bins over
``[-PROFILE_LIMIT, PROFILE_LIMIT]`` of normalised intensity (values outside count in the
edge bins)."""
PROFILE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DRIFT_THRESHOLD = 0.2
"""Histogram distance (1-D Wasserstein, in normalised intensity units, where -1..1 spans
the 0.5..99.5 percentiles) above which a stack is said to differ from the training
stack. Measured on synthetic pore-back stacks (16x64x64, hard): a 16-bit x200 copy, a
float copy and a gain change give 0.00-0.01, another volume of the same material
0.03, another difficulty or porosity 0.14-0.40, gamma 2 or 0.5 about 0.3, inverted
contrast 0.65."""


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ModelError(f"percentiles must be two numbers (low, high), got {percentiles!r}; e.g. (0.5, 99.5)") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ModelError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}; e.g. (0.5, 99.5)")
    return lo, hi


def _sample_values(image: Any, max_slices: int, max_pixels: int) -> np.ndarray:
    """Finite float64 values of at most ``max_slices`` evenly spaced slices, each subsampled
    on a regular grid to about ``max_pixels / max_slices`` pixels (deterministic)."""
    nz, ny, nx = check_stack(image)
    k = min(nz, max_slices)
    zs = np.unique(np.linspace(0, nz - 1, k).round().astype(np.int64))
    per = max(1, max_pixels // len(zs))
    step = max(1, int(math.sqrt(ny * nx / per)))
    vals = [np.asarray(image[int(z)])[::step, ::step].ravel() for z in zs]
    v = np.concatenate(vals).astype(np.float64)
    if not np.all(np.isfinite(v)):
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise StackError("image holds no finite values")
    return v


def _range_of(v: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    lo, hi = np.percentile(v, percentiles)
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def intensity_range(
    image: Any,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_slices: int = 16,
    max_pixels: int = 1 << 18,
) -> tuple[float, float]:
    """Robust intensity range of a stack: low and high percentiles of sampled voxels.

    Reads at most ``max_slices`` evenly spaced slices and subsamples each to about
    ``max_pixels / max_slices`` pixels (deterministic; no randomness). Not cached: see
    :func:`stack_intensity` for the cached range a model applies to a stack.

    Returns
    -------
    (lo, hi) floats with ``hi > lo``.
    """
    return _range_of(_sample_values(image, max_slices, max_pixels), _check_percentiles(percentiles))


@dataclass(frozen=True)
class IntensityProfile:
    """Summary of a stack's normalised intensities (what a model remembers of its training stack).

    Attributes
    ----------
    histogram : ``PROFILE_BINS`` fractions (summing to 1) over ``[-PROFILE_LIMIT,
        PROFILE_LIMIT]``; values outside count in the edge bins.
    quantiles : the normalised intensities at ``PROFILE_QUANTILES``.
    """

    histogram: tuple[float, ...]
    quantiles: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            h = tuple(float(v) for v in self.histogram)
            q = tuple(float(v) for v in self.quantiles)
        except (TypeError, ValueError):
            raise ModelError("an intensity profile holds a histogram and quantiles as lists of numbers") from None
        if len(h) != PROFILE_BINS or not all(math.isfinite(v) and v >= 0 for v in h) or not 0.99 < sum(h) < 1.01:
            raise ModelError(
                f"an intensity profile's histogram must hold {PROFILE_BINS} non-negative fractions summing to 1, "
                f"got {len(h)} values summing to {sum(h):.3g}; re-save the model with this activeseg"
            )
        if len(q) != len(PROFILE_QUANTILES) or not all(math.isfinite(v) for v in q):
            raise ModelError(
                f"an intensity profile must hold {len(PROFILE_QUANTILES)} finite quantiles, got {len(q)}"
            )
        object.__setattr__(self, "histogram", h)
        object.__setattr__(self, "quantiles", q)

    def to_dict(self) -> dict:
        """JSON-serialisable form (``model.json``'s ``intensity_profile``)."""
        return {
            "bins": PROFILE_BINS,
            "limits": [-PROFILE_LIMIT, PROFILE_LIMIT],
            "histogram": [round(v, 6) for v in self.histogram],
            "quantile_levels": list(PROFILE_QUANTILES),
            "quantiles": [round(v, 6) for v in self.quantiles],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntensityProfile:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping) or "histogram" not in d or "quantiles" not in d:
            raise ModelError(f"an intensity profile is a mapping with 'histogram' and 'quantiles', got {d!r}")
        if int(d.get("bins", PROFILE_BINS)) != PROFILE_BINS or [float(v) for v in d.get("limits", [])] not in (
            [], [-PROFILE_LIMIT, PROFILE_LIMIT]
        ):
            raise ModelError(
                f"an intensity profile with {d.get('bins')} bins over {d.get('limits')} is not the "
                f"{PROFILE_BINS} bins over [-{PROFILE_LIMIT}, {PROFILE_LIMIT}] this activeseg compares"
            )
        return cls(histogram=tuple(d["histogram"]), quantiles=tuple(d["quantiles"]))


def _profile_of(v: np.ndarray, norm: tuple[float, float]) -> IntensityProfile:
    lo, hi = float(norm[0]), float(norm[1])
    n = (v - lo) * (2.0 / (hi - lo)) - 1.0  # float64, as normalise() but without rounding to float32
    edges = np.linspace(-PROFILE_LIMIT, PROFILE_LIMIT, PROFILE_BINS + 1)
    counts, _ = np.histogram(np.clip(n, -PROFILE_LIMIT, PROFILE_LIMIT), edges)
    hist = counts / max(1, int(counts.sum()))
    q = np.quantile(n, PROFILE_QUANTILES)
    return IntensityProfile(histogram=tuple(float(x) for x in hist), quantiles=tuple(float(x) for x in q))


def intensity_profile(
    image: Any, norm: tuple[float, float], *, max_slices: int = 16, max_pixels: int = 1 << 18
) -> IntensityProfile:
    """Histogram and quantiles of a stack's intensities normalised by ``norm`` (the voxels
    :func:`intensity_range` samples; not cached)."""
    return _profile_of(_sample_values(image, max_slices, max_pixels), norm)


def profile_distance(a: IntensityProfile, b: IntensityProfile) -> float:
    """1-D Wasserstein (earth mover's) distance between two profiles' histograms.

    In normalised intensity units: 0 for the same distribution, 0.2 when on average the
    intensities moved by a tenth of the -1..1 span; at most ``2 * PROFILE_LIMIT``.
    """
    width = 2.0 * PROFILE_LIMIT / PROFILE_BINS
    cdf = np.cumsum(np.asarray(a.histogram) - np.asarray(b.histogram))
    return float(np.abs(cdf).sum() * width)


@dataclass(frozen=True)
class IntensityDrift:
    """How far a stack's normalised intensities are from a model's training stack.

    Attributes
    ----------
    distance : :func:`profile_distance` of the two profiles.
    threshold : above it, :attr:`message` warns.
    """

    distance: float
    threshold: float = DRIFT_THRESHOLD

    @property
    def exceeded(self) -> bool:
        """True when the distance is above the threshold."""
        return self.distance > self.threshold

    @property
    def message(self) -> str | None:
        """The warning to show, or None when the stack is close enough."""
        if not self.exceeded:
            return None
        return (
            f"the stack's normalised intensities differ from the training stack's (histogram distance "
            f"{self.distance:.2f}; above {self.threshold:.2f} predictions may be unreliable): check that it shows "
            "the same material with the same contrast (not inverted, no gamma change), or label a few of its "
            "slices and train on them"
        )


# stack object -> {percentiles: ((lo, hi), profile)}, one entry per live stack object
_STACK_INTENSITY: dict[int, tuple[weakref.ref, dict]] = {}
_STACK_LOCK = threading.Lock()


def _forget(key: int, ref: weakref.ref) -> None:
    with _STACK_LOCK:
        entry = _STACK_INTENSITY.get(key)
        if entry is not None and entry[0] is ref:
            del _STACK_INTENSITY[key]


def stack_intensity(
    image: Any, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[tuple[float, float], IntensityProfile]:
    """The robust range of a stack and the profile of its intensities normalised by it.

    The range is :func:`intensity_range` (the same numbers), so a model trained on a
    stack normalises that stack exactly as in training. The result is computed once per
    stack object (and percentiles) per process and cached while the object lives
    (keyed by its identity, checked with a weak reference), so block-wise inference
    reads the sample slices once, not once per block. A stack changed in place after
    its first use keeps its first range; objects that cannot be weakly referenced are
    not cached.

    Returns
    -------
    ((lo, hi), IntensityProfile)
    """
    pct = _check_percentiles(percentiles)
    key = id(image)
    with _STACK_LOCK:
        entry = _STACK_INTENSITY.get(key)
        if entry is not None and entry[0]() is image and pct in entry[1]:
            return entry[1][pct]
    v = _sample_values(image, 16, 1 << 18)
    rng = _range_of(v, pct)
    result = (rng, _profile_of(v, rng))
    try:
        ref = weakref.ref(image, functools.partial(_forget, key))
    except TypeError:
        log.debug("stack of type %s cannot be weakly referenced: its intensity range is not cached", type(image).__name__)
        return result
    with _STACK_LOCK:
        entry = _STACK_INTENSITY.get(key)
        if entry is None or entry[0]() is not image:
            entry = (ref, {})
            _STACK_INTENSITY[key] = entry
        entry[1][pct] = result
    return result
