"""Whole-stack inference with a trained network (docs/architecture.md §3, §6).

The functions work on any :class:`InferenceModel`: an object with ``net``, ``config``,
``norm``, ``device`` and ``make_input`` (:class:`activeseg.network.SegModel` is one).
They share one :class:`InferenceOptions` (device, batch size, tiling, autocast, memory
format, batch-norm folding).

- :func:`predict_stack` gives float32 ``(n, C, Y, X)`` class probabilities for chosen
  slices, or streams the pore probability into a ``(Z, Y, X)`` ``out`` array (e.g. a
  memmap from :func:`activeseg.io.create_stack`) block by block, so stacks larger than
  RAM work: only the context slices of the current block are read, and peak memory
  does not depend on the stack depth.
- Any ``Y, X``: inputs are padded by reflection to the network's multiple. Slices larger
  than ``tile`` are cut into overlapping tiles whose predictions are blended with a
  smooth (sine-squared) window.
- Slices (or tiles) are batched; the network runs under ``torch.inference_mode`` on a
  copy with batch norm folded into the convolutions, channels_last memory format, and
  bf16 autocast on CUDA.
- :func:`mc_dropout_proba` draws ``T`` MC-dropout samples (dropout on, batch norm in
  eval mode); the encoder has no dropout, so it runs once per batch and only the
  decoder and head run ``T`` times.
- :func:`tta_proba` gives predictions under x-flips and small intensity changes.
- :func:`encoder_embeddings` gives per-slice global-average-pooled deepest encoder
  features, the slice embedding the diversity strategies use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable
from weakref import WeakKeyDictionary

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from activeseg.errors import ConfigError, ModelError
from activeseg.model import ModelConfig, network_multiple, resolve_device
from activeseg.prefetch import prefetch
from activeseg.validation import check_slices, check_stack

__all__ = [
    "InferenceModel",
    "InferenceOptions",
    "predict_stack",
    "mc_dropout_proba",
    "tta_proba",
    "encoder_embeddings",
    "TTATransform",
    "DEFAULT_TTA",
    "fuse_batchnorm",
    "tile_plan",
    "pad_to_multiple",
    "resolve_autocast",
    "weights_fingerprint",
]

CPU_CHANNELS_LAST = True
"""channels_last on CPU by default (benchmarks/bench_infer.py: faster with oneDNN convolutions)."""

DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64

ProgressCallback = Callable[[int, int], None]

_AUTOCAST = ("auto", "bf16", "off", "none", None)


@runtime_checkable
class InferenceModel(Protocol):
    """What inference needs of a model (:class:`activeseg.network.SegModel` has it).

    Attributes
    ----------
    net : the torch module (smp-style: ``encoder``, ``decoder``, ``segmentation_head``
        for MC dropout and embeddings); never modified, inference runs on a prepared copy.
    config : the :class:`~activeseg.model.ModelConfig` it was built from (classes,
        context offsets, encoder depth).
    norm : (lo, hi) raw intensities of the training stack mapped to -1 / +1; the input
        itself comes from ``make_input``, which may normalise each stack by its own range
        (:meth:`activeseg.network.SegModel.stack_norm`).
    device : the model's default device (the functions here use ``options.device``).
    """

    net: nn.Module
    config: ModelConfig
    norm: tuple[float, float]
    device: str

    def make_input(self, image: Any, slices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Normalised 2.5D input float32 ``(n, K, Y, X)`` of global slice ids."""
        ...


@dataclass(frozen=True)
class InferenceOptions:
    """How the network is run; shared by :func:`predict_stack`, :func:`mc_dropout_proba`,
    :func:`tta_proba` and :func:`encoder_embeddings`.

    None of these changes what is computed, only how (results agree to float rounding;
    bf16 autocast to bf16 rounding).

    Parameters
    ----------
    device : "auto" (CUDA -> MPS -> CPU), "cpu", "cuda", "cuda:N", "mps" or a
        ``torch.device``.
    batch_size : slices (or tiles) per forward pass; None = 4 on CPU, 16 on CUDA.
    tile, overlap : slices larger than ``tile`` pixels in y or x are predicted in tiles
        of ``tile`` pixels overlapping by at least ``overlap``, blended with a smooth
        window; ``tile >= 16``, ``0 <= overlap <= tile / 2`` (checked by the functions
        that blend tiles: the default overlap needs ``tile >= 128``).
    autocast : "auto" (bf16 on a CUDA GPU with native bf16), "bf16" (also on CPU), "off".
    channels_last : None = on CUDA and on CPU (faster there, see BENCHMARKS.md).
    fuse : fold batch norm into the preceding convolutions of the prepared copy
        (:func:`fuse_batchnorm`); False runs the layers as built (for ablations).

    Raises
    ------
    ConfigError
        A value of the wrong type or out of range.
    """

    device: str | torch.device = "auto"
    batch_size: int | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    autocast: str = "auto"
    channels_last: bool | None = None
    fuse: bool = True

    def __post_init__(self) -> None:
        b, tile, overlap = self.batch_size, self.tile, self.overlap
        if b is not None and (not isinstance(b, (int, np.integer)) or b < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {b!r}")
        if not isinstance(tile, (int, np.integer)) or tile < 16:
            raise ConfigError(f"tile must be an integer >= 16 pixels, got {tile!r}")
        if not isinstance(overlap, (int, np.integer)) or overlap < 0:
            raise ConfigError(f"overlap must be an integer in [0, tile/2], got {overlap!r} for tile {tile}")
        if self.autocast not in _AUTOCAST:
            raise ConfigError(f"autocast must be 'auto', 'bf16' or 'off', got {self.autocast!r}")
        if self.channels_last not in (None, True, False):
            raise ConfigError(f"channels_last must be None, True or False, got {self.channels_last!r}")
        if self.fuse not in (True, False):
            raise ConfigError(f"fuse must be True or False, got {self.fuse!r}")


def _options(options: InferenceOptions | None, *, tiles_overlap: bool = True) -> InferenceOptions:
    """The options to use (None = defaults); with ``tiles_overlap``, check ``overlap <= tile / 2``
    (only where overlapping tiles are blended, so embeddings accept any ``tile >= 16``)."""
    if options is None:
        options = InferenceOptions()
    elif not isinstance(options, InferenceOptions):
        raise ConfigError(f"options must be an InferenceOptions, got {type(options).__name__}")
    if tiles_overlap and not options.overlap < options.tile // 2 + 1:
        raise ConfigError(f"overlap must be an integer in [0, tile/2], got {options.overlap!r} for tile {options.tile}")
    return options


@dataclass(frozen=True)
class TTATransform:
    """One test-time augmentation: optional x-flip, then ``x * gain + offset`` on the
    normalised input (raw ``lo..hi`` maps to ``-1..1``, so ``offset=0.05`` is a 2.5 %
    brightness change)."""

    flip_x: bool = False
    gain: float = 1.0
    offset: float = 0.0


DEFAULT_TTA: tuple[TTATransform, ...] = (
    TTATransform(),
    TTATransform(flip_x=True),
    TTATransform(gain=1.1, offset=0.05),
    TTATransform(flip_x=True, gain=0.9, offset=-0.05),
)
"""Identity, x-flip, and two small contrast/brightness changes (one flipped)."""


# ----------------------------------------------------------------------------- helpers


def _fuse_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    return fuse_conv_bn_eval(conv, bn)


def fuse_batchnorm(net: nn.Module) -> int:
    """Fold eval-mode BatchNorm2d layers into the preceding Conv2d, in place.

    Only pairs whose execution order is certain are fused: consecutive children of a
    plain ``nn.Sequential`` (smp's decoder blocks and heads, ResNet downsample paths)
    and ``convN``/``bnN`` of torchvision ResNet stems and blocks. Call on a copy in
    eval mode. Returns the number of fused pairs.
    """
    # torchvision: heavy (about 2 s); smp has imported it anyway once a network exists
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    fused = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            names = list(module._modules)
            for a, b in zip(names[:-1], names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    module._modules[a] = _fuse_pair(conv, bn)
                    module._modules[b] = nn.Identity()
                    fused += 1
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            for i in ("1", "2", "3"):
                conv_i, bn_i = getattr(module, "conv" + i, None), getattr(module, "bn" + i, None)
                if type(conv_i) is nn.Conv2d and type(bn_i) is nn.BatchNorm2d and bn_i.track_running_stats:
                    setattr(module, "conv" + i, _fuse_pair(conv_i, bn_i))
                    setattr(module, "bn" + i, nn.Identity())
                    fused += 1
    return fused


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad a (B, K, H, W) tensor at the bottom/right to multiples of ``multiple``
    (reflection; edge replication where the tensor is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [int(s) for s in np.round(np.linspace(0, length - tile, n)).astype(np.int64)]


def _window_1d(start: int, size: int, length: int, ramp: int) -> np.ndarray:
    w = np.ones(size, dtype=np.float32)
    r = min(ramp, size // 2)
    if r > 0:
        up = np.sin(0.5 * np.pi * (np.arange(r, dtype=np.float32) + 0.5) / r) ** 2
        if start > 0:
            w[:r] = up
        if start + size < length:
            w[size - r :] = np.minimum(w[size - r :], up[::-1])
    return w


def tile_plan(ny: int, nx: int, tile: int, overlap: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Tiles ``(y0, y1, x0, x1, window)`` covering a ``(ny, nx)`` slice.

    Tiles are ``tile`` pixels wide (or the whole axis when it is not longer), spread
    evenly so neighbours overlap by at least ``overlap``. ``window`` is float32
    ``(y1 - y0, x1 - x0)``: 1 inside, a sine-squared ramp over ``overlap`` pixels at
    edges shared with another tile, positive everywhere.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ConfigError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    plan = []
    ys, xs = _starts(ny, tile, overlap), _starts(nx, tile, overlap)
    hy, hx = min(tile, ny), min(tile, nx)
    for y0 in ys:
        wy = _window_1d(y0, hy, ny, overlap)
        for x0 in xs:
            wx = _window_1d(x0, hx, nx, overlap)
            plan.append((y0, y0 + hy, x0, x0 + hx, np.outer(wy, wx)))
    return plan


@dataclass
class _Runner:
    """A prepared inference copy of a model's network."""

    net: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    multiple: int
    n_classes: int

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        t = pad_to_multiple(t, self.multiple)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t


def resolve_autocast(autocast: str, device: torch.device) -> torch.dtype | None:
    """"auto" -> bf16 on a CUDA GPU with native bf16 (Ampere or newer), none elsewhere
    (older GPUs only emulate it: slow); "bf16" -> bf16 anywhere; "off" -> none."""
    if autocast == "auto":
        if device.type != "cuda":
            return None
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation
            native = torch.cuda.is_bf16_supported()
        return torch.bfloat16 if native else None
    if autocast == "bf16":
        return torch.bfloat16
    if autocast in ("off", "none", None):
        return None
    raise ConfigError(f"autocast must be 'auto', 'bf16' or 'off', got {autocast!r}")


def weights_fingerprint(net: nn.Module) -> tuple:
    """Changes whenever ``net`` is replaced or any parameter/buffer is modified in place
    (keys the cache of prepared inference copies)."""
    return (id(net),) + tuple((id(t), t._version) for t in net.state_dict(keep_vars=True).values())


_PREPARED: WeakKeyDictionary = WeakKeyDictionary()
"""net -> {(device, channels_last, mc_dropout, fuse): (fingerprint, prepared copy)}; an
entry goes with its network."""


def _prepare(model: InferenceModel, options: InferenceOptions, *, mc_dropout: bool = False) -> _Runner:
    if not isinstance(model, InferenceModel):
        raise ModelError(
            f"expected a model with net, config, norm, device and make_input (a SegModel), got {type(model).__name__}"
        )
    dev = resolve_device(options.device)
    channels_last, fuse = options.channels_last, options.fuse
    if channels_last is None:
        channels_last = dev.type == "cuda" or (dev.type == "cpu" and CPU_CHANNELS_LAST)
    # a prepared (copied, folded, moved) network is cached for the model's network until its weights change
    key = (str(dev), bool(channels_last), bool(mc_dropout), bool(fuse))
    fp = weights_fingerprint(model.net)
    cache = _PREPARED.setdefault(model.net, {})
    hit = cache.get(key)
    if hit is not None and hit[0] == fp:
        net = hit[1]
    else:
        net = _prepared_net(model, dev, bool(channels_last), mc_dropout, fuse)
        if len(cache) >= 3:
            cache.clear()
        cache[key] = (fp, net)
    return _Runner(
        net=net,
        device=dev,
        amp_dtype=resolve_autocast(options.autocast, dev),
        channels_last=bool(channels_last),
        multiple=network_multiple(model.net, model.config),
        n_classes=model.config.n_classes,
    )


def _prepared_net(model: InferenceModel, dev: torch.device, channels_last: bool, mc_dropout: bool, fuse: bool) -> nn.Module:
    net = copy.deepcopy(model.net).to("cpu")
    net.eval()
    if fuse:
        fuse_batchnorm(net)
    if mc_dropout:
        n_drop = 0
        for m in net.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
                n_drop += 1
        if n_drop == 0:
            raise ModelError(
                "MC dropout needs dropout layers, but this model has none (ModelConfig.dropout=0); "
                "build the model with dropout > 0"
            )
    net = net.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _decode(net: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
    # smp submodules: torch types Module.__getattr__ as Tensor | Module
    return net.segmentation_head(net.decoder(features))  # type: ignore[operator]


def _forward(runner: _Runner, x: np.ndarray, mode: str, n_samples: int, transforms: Sequence[TTATransform]) -> np.ndarray:
    """Run one batch ``x`` float32 (B, K, h, w); return probabilities (T, B, C, h, w)."""
    h, w = x.shape[-2:]
    t = runner.to_tensor(x)
    net = runner.net
    outs: list[tuple[bool, torch.Tensor]] = []  # (flipped back needed, logits)
    with runner.autocast():
        if mode == "single":
            outs.append((False, net(t)))
        elif mode == "mc":
            feats = net.encoder(t)  # type: ignore[operator]  # smp submodule (Module.__getattr__ is typed Tensor | Module)
            for _ in range(n_samples):
                outs.append((False, _decode(net, feats)))
        elif mode == "tta":
            for tr in transforms:
                # flip the unpadded input, then pad bottom/right: the valid output region
                # is [:h, :w] in the flipped frame; crop there, then flip back
                ti = runner.to_tensor(np.ascontiguousarray(x[..., ::-1])) if tr.flip_x else t
                if tr.gain != 1.0 or tr.offset != 0.0:
                    ti = ti * tr.gain + tr.offset
                outs.append((tr.flip_x, net(ti)))
        else:  # pragma: no cover - internal
            raise ValueError(mode)
    res = []
    for flip, logits in outs:
        p = torch.softmax(logits.float(), dim=1)[..., :h, :w]
        res.append(p.flip(-1) if flip else p)
    return torch.stack(res).to("cpu").numpy()


def _run_blocks(
    runner: _Runner,
    model: InferenceModel,
    image: Any,
    slices: np.ndarray,
    *,
    mode: str,
    n_samples: int,
    transforms: Sequence[TTATransform],
    batch_size: int,
    tile: int,
    overlap: int,
    callback: ProgressCallback | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions into slices, probabilities (T, b, C, Y, X))`` block by block."""
    nz, ny, nx = check_stack(image)
    plan = tile_plan(ny, nx, tile, overlap)
    n = len(slices)
    tiled = len(plan) > 1
    per_chunk = batch_size if not tiled else max(1, batch_size // len(plan))
    starts = list(range(0, n, per_chunk))
    T = n_samples if mode == "mc" else (len(transforms) if mode == "tta" else 1)
    C = runner.n_classes
    if tiled:
        wsum = np.zeros((ny, nx), dtype=np.float32)
        for y0, y1, x0, x1, win in plan:
            wsum[y0:y1, x0:x1] += win

    def load(s0: int) -> tuple[int, np.ndarray]:
        return s0, model.make_input(image, slices[s0 : s0 + per_chunk])

    # read the next block's context slices while the current one is computed
    blocks = prefetch(starts, load, depth=1, name="activeseg-infer-read")
    with closing(blocks):  # an early exit joins the reader thread now, not at garbage collection
        for s0, x in blocks:
            b = x.shape[0]
            if not tiled:
                probs = np.concatenate(
                    [_forward(runner, x[i : i + batch_size], mode, n_samples, transforms) for i in range(0, b, batch_size)],
                    axis=1,
                )
            else:
                probs = np.zeros((T, b, C, ny, nx), dtype=np.float32)
                jobs = [(i, tl) for i in range(b) for tl in plan]
                for j0 in range(0, len(jobs), batch_size):
                    group = jobs[j0 : j0 + batch_size]
                    xb = np.stack([x[i, :, y0:y1, x0:x1] for i, (y0, y1, x0, x1, _) in group])
                    pb = _forward(runner, xb, mode, n_samples, transforms)
                    for g, (i, (y0, y1, x0, x1, win)) in enumerate(group):
                        probs[:, i, :, y0:y1, x0:x1] += pb[:, g] * win
                probs /= wsum
            yield np.arange(s0, s0 + b), probs
            if callback is not None:
                callback(s0 + b, n)


def _default_batch(batch_size: int | None, device: torch.device) -> int:
    if batch_size is not None:
        return batch_size
    return 16 if device.type == "cuda" else 4


# ----------------------------------------------------------------------------- public


def predict_stack(
    model: InferenceModel,
    image: Any,
    *,
    slices: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    options: InferenceOptions | None = None,
    callback: ProgressCallback | None = None,
) -> np.ndarray:
    """Class probabilities of the requested slices.

    Parameters
    ----------
    model : an :class:`InferenceModel` (e.g. :class:`activeseg.network.SegModel`).
    image : (Z, Y, X) stack (ndarray, memmap, or lazy :class:`activeseg.io.Stack`); any
        Y, X. Only the context slices of the current block are read.
    slices : global slice ids (None = all).
    out : None to return the probabilities, or an array to write into: ``(Z, Y, X)``
        (binary models: the pore probability, class 1) or ``(Z, C, Y, X)``; rows not in
        ``slices`` are left untouched; ``out.flush()`` is called at the end if present.
    options : device, batch size, tiling, autocast, memory format, batch-norm folding
        (:class:`InferenceOptions`; None = the defaults).
    callback : ``callback(done, total)`` after each block of slices.

    Returns
    -------
    float32 (n, C, Y, X) when ``out`` is None, else ``out``.
    """
    opts = _options(options)
    nz, ny, nx = check_stack(image)
    ids = check_slices(slices, nz)
    runner = _prepare(model, opts)
    batch_size = _default_batch(opts.batch_size, runner.device)
    C = model.config.n_classes
    if out is not None:
        shape = tuple(out.shape)
        if shape == (nz, ny, nx):
            if C != 2:
                raise ConfigError(
                    f"a (Z, Y, X) out holds one probability per voxel, which needs a binary model; "
                    f"this model has {C} classes: pass out of shape {(nz, C, ny, nx)}"
                )
        elif shape != (nz, C, ny, nx):
            raise ConfigError(
                f"out has shape {shape}; expected {(nz, ny, nx)} (pore probability) or {(nz, C, ny, nx)}"
            )
        result = None
    else:
        result = np.empty((len(ids), C, ny, nx), dtype=np.float32)
    with torch.inference_mode():
        for pos, probs in _run_blocks(
            runner, model, image, ids, mode="single", n_samples=1, transforms=(),
            batch_size=batch_size, tile=opts.tile, overlap=opts.overlap, callback=callback,
        ):
            p = probs[0]
            if result is not None:
                result[pos] = p
            else:
                assert out is not None  # result is None only when out was given
                for i, z in zip(range(len(pos)), ids[pos]):
                    out[int(z)] = p[i, 1] if out.ndim == 3 else p[i]
    if result is not None:
        return result
    assert out is not None  # result is None only when out was given
    flush = getattr(out, "flush", None)
    if callable(flush):
        flush()
    return out


def _seed_from(rng: np.random.Generator) -> int:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}; use np.random.default_rng(seed)")
    return int(rng.integers(0, 2**63 - 1))


def _fork_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def mc_dropout_proba(
    model: InferenceModel,
    image: Any,
    *,
    slices: Sequence[int] | None = None,
    n_samples: int = 8,
    rng: np.random.Generator,
    options: InferenceOptions | None = None,
    callback: ProgressCallback | None = None,
) -> np.ndarray:
    """MC-dropout samples: ``T`` stochastic passes with dropout on and batch norm in eval mode.

    The encoder (which has no dropout) runs once per batch; the decoder and head run
    ``n_samples`` times. Deterministic for a given ``rng``; the global torch RNG is
    left untouched.

    Parameters
    ----------
    model, image, slices, options, callback : as for :func:`predict_stack`.
    n_samples : T, the number of stochastic passes.
    rng : seeds the dropout masks.

    Returns
    -------
    float32 (T, n, C, Y, X). Callers scoring large stacks should pass slice blocks
    (as :func:`activeseg.uncertainty.score_slices` does) rather than the whole stack.
    """
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    return _samples(model, image, slices, mode="mc", n_samples=int(n_samples), transforms=(), seed=_seed_from(rng),
                    options=_options(options), callback=callback)


def _samples(model: InferenceModel, image: Any, slices, *, mode: str, n_samples: int, transforms: Sequence[TTATransform],
             seed: int | None, options: InferenceOptions, callback: ProgressCallback | None) -> np.ndarray:
    """``(T, n, C, Y, X)`` probabilities of T stochastic ("mc", seeded) or augmented ("tta") passes."""
    nz, ny, nx = check_stack(image)
    ids = check_slices(slices, nz)
    runner = _prepare(model, options, mc_dropout=mode == "mc")
    batch_size = _default_batch(options.batch_size, runner.device)
    n_out = n_samples if mode == "mc" else len(transforms)
    result = np.empty((n_out, len(ids), model.config.n_classes, ny, nx), dtype=np.float32)
    rng_scope = _fork_rng(runner.device) if seed is not None else nullcontext()
    with rng_scope, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        for pos, probs in _run_blocks(
            runner, model, image, ids, mode=mode, n_samples=n_samples, transforms=transforms,
            batch_size=batch_size, tile=options.tile, overlap=options.overlap, callback=callback,
        ):
            result[:, pos] = probs
    return result


def tta_proba(
    model: InferenceModel,
    image: Any,
    *,
    slices: Sequence[int] | None = None,
    transforms: Sequence[TTATransform] = DEFAULT_TTA,
    options: InferenceOptions | None = None,
    callback: ProgressCallback | None = None,
) -> np.ndarray:
    """Predictions under test-time augmentations valid for FIB-SEM (x-flip, small
    contrast/brightness changes; see :data:`DEFAULT_TTA`), mapped back to the original frame.

    Parameters
    ----------
    model, image, slices, options, callback : as for :func:`predict_stack`.
    transforms : the augmentations, one prediction each.

    Returns
    -------
    float32 (T, n, C, Y, X) with T = len(transforms).
    """
    transforms = tuple(transforms)
    if not transforms or not all(isinstance(t, TTATransform) for t in transforms):
        raise ConfigError("transforms must be a non-empty sequence of TTATransform")
    return _samples(model, image, slices, mode="tta", n_samples=1, transforms=transforms, seed=None,
                    options=_options(options), callback=callback)


def encoder_embeddings(
    model: InferenceModel,
    image: Any,
    *,
    slices: Sequence[int] | None = None,
    options: InferenceOptions | None = None,
    callback: ProgressCallback | None = None,
) -> np.ndarray:
    """Per-slice embedding: global-average-pooled deepest encoder features.

    Slices larger than ``options.tile`` are cut into tiles (no overlap needed) whose
    pooled features are averaged, weighted by tile area.

    Parameters
    ----------
    model, image, slices, callback : as for :func:`predict_stack`.
    options : as for :func:`predict_stack`, except that ``overlap`` is not used (tiles
        do not overlap) and the encoder always runs in float32 (``autocast`` is not used).

    Returns
    -------
    float32 (n, D), D = channels of the deepest encoder stage (256 for resnet18 at depth 4, 512 at depth 5).
    """
    opts = replace(_options(options, tiles_overlap=False), autocast="off", overlap=0)
    nz, ny, nx = check_stack(image)
    ids = check_slices(slices, nz)
    runner = _prepare(model, opts)
    batch_size = _default_batch(opts.batch_size, runner.device)
    plan = tile_plan(ny, nx, opts.tile, 0)
    total_area = float(sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1, _ in plan))
    per_chunk = max(1, batch_size // len(plan))
    # smp encoder attributes: torch types Module.__getattr__ as Tensor | Module
    dim = int(runner.net.encoder.out_channels[-1])  # type: ignore[union-attr, index]
    out = np.empty((len(ids), dim), dtype=np.float32)
    with torch.inference_mode():
        for s0 in range(0, len(ids), per_chunk):
            x = model.make_input(image, ids[s0 : s0 + per_chunk])
            b = x.shape[0]
            acc = np.zeros((b, dim), dtype=np.float64)
            jobs = [(i, tl) for i in range(b) for tl in plan]
            for j0 in range(0, len(jobs), batch_size):
                group = jobs[j0 : j0 + batch_size]
                xb = np.stack([x[i, :, y0:y1, x0:x1] for i, (y0, y1, x0, x1, _) in group])
                feats = runner.net.encoder(runner.to_tensor(xb))[-1]  # type: ignore[operator]  # smp submodule, as above
                pooled = feats.float().mean(dim=(-2, -1)).to("cpu").numpy()
                for g, (i, (y0, y1, x0, x1, _)) in enumerate(group):
                    acc[i] += pooled[g] * ((y1 - y0) * (x1 - x0) / total_area)
            out[s0 : s0 + b] = acc
            if callback is not None:
                callback(s0 + b, len(ids))
    return out
