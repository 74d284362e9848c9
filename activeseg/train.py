"""Training the segmentation network on the labelled slices of a stack (docs/architecture.md §6).

``train_model(image, labels, config=..., rng=...)`` trains a :class:`~activeseg.network.SegModel`
on random patches of the labelled slices with 2.5D context (the same
:func:`~activeseg.model.make_input` as inference), augmentations valid for FIB-SEM,
cross-entropy + Dice loss with ignore index 255, AdamW with a OneCycle or cosine
schedule, and early stopping on held-out labelled pixels. Deterministic on the CPU for
a given ``rng``; the global torch RNG is left untouched.

Labels are uint8 ``(Z, Y, X)`` with 255 = unlabelled (an array or memmap), or a dict
``{z: (Y, X) mask}``. Only slices holding labels are used, and partially labelled
(scribbled) slices are fine: unlabelled pixels never enter the loss.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from activeseg.errors import ConfigError, LabelError, ModelError
from activeseg.holdout import VAL_BLOCK, VAL_FRACTION, held_out
from activeseg.infer import resolve_autocast
from activeseg.model import (
    ModelConfig,
    build_model,
    context_indices,
    network_multiple,
    normalise,
    resolve_device,
)
from activeseg.network import SegModel, training_normalisation
from activeseg.validation import check_stack

__all__ = ["TrainConfig", "train_model", "segmentation_loss", "IGNORE_INDEX", "collect_labels"]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Label value of unlabelled pixels; they never enter the loss."""

TrainCallback = Callable[[int, int, dict], None]

_SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Parameters
    ----------
    steps : optimiser steps (ignored when ``epochs`` is set).
    epochs : alternative to ``steps``: passes over the training pixels, i.e.
        ``steps = ceil(epochs * n_train_pixels / (batch_size * patch_size**2))``.
    patch_size : square patch side in pixels (clipped to the slice size).
    batch_size : patches per step.
    lr : peak learning rate (AdamW).
    weight_decay : AdamW weight decay.
    schedule : "onecycle" (warm-up then cosine annealing), "cosine" (linear warm-up,
        cosine decay) or "constant".
    warmup : fraction of the steps spent warming up (onecycle / cosine).
    val_fraction : fraction of the labelled pixels held out (in square blocks of
        ``val_block`` pixels, so they are not trivially correlated with training pixels)
        for early stopping; 0 disables validation and early stopping.
    val_block : side of the held-out blocks.
    val_seed : seed of the held-out blocks; each slice's blocks depend on it and the
        slice index only, so warm-started rounds never validate on pixels an earlier round
        trained on.
    eval_every : steps between validations.
    patience : stop after this many steps without a better validation loss (counted
        from the end of the warm-up) and keep the best weights; None = train all steps
        (still keeping the best weights).
    flip_x : random x-flips (valid for FIB-SEM).
    flip_y : random y-flips; off by default because a y-flip reverses the direction in
        which pore-back ghosts shift (the beam sign); only turn it on for data acquired
        with both beam signs.
    intensity : amplitude of the per-patch contrast/brightness jitter (0 = off).
    gamma : amplitude of the per-patch gamma drift: the normalised intensities are raised
        to a power in ``[exp(-gamma), exp(gamma)]`` (0 = off). Like gain and noise it moves
        no pixel, so the pore-back parallax along y is untouched.
    noise : maximum std of added Gaussian noise in normalised units (0 = off).
    blur : probability of a slight Gaussian blur (sigma 0.7 px) per patch (0 = off).
    dice_weight : weight of the soft Dice term next to cross-entropy.
    pseudo_weight : loss weight of a patch from a pseudo-labelled slice (the ``pseudo``
        argument of :func:`train_model`) relative to a patch of human labels (1); 0.7 by
        measurement (BENCHMARKS.md: with 1-2 labelled slices 0.7 and 1.0 beat 0.3).
    device : "auto" (CUDA -> MPS -> CPU), "cpu", "cuda", "mps".
    autocast : "auto" (bf16 on CUDA), "bf16" (also on CPU), "off".
    channels_last : None = on CUDA and CPU (1.2-1.3x faster training steps on CPU with
        oneDNN, see BENCHMARKS.md), off on MPS.
    deterministic : None = deterministic algorithms on CPU only; True / False to force.
    num_threads : torch intra-op threads while training (None = leave as is).
    """

    steps: int = 200
    epochs: float | None = None
    patch_size: int = 128
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    warmup: float = 0.15
    val_fraction: float = VAL_FRACTION
    val_block: int = VAL_BLOCK
    val_seed: int = 0
    eval_every: int = 20
    patience: int | None = 80
    flip_x: bool = True
    flip_y: bool = False
    intensity: float = 0.1
    gamma: float = 0.15
    noise: float = 0.05
    blur: float = 0.2
    dice_weight: float = 1.0
    pseudo_weight: float = 0.7
    device: str = "auto"
    autocast: str = "auto"
    channels_last: bool | None = None
    deterministic: bool | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        def pos_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {v!r}")

        for name in ("steps", "patch_size", "batch_size", "val_block", "eval_every"):
            pos_int(name)
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ConfigError(f"TrainConfig.epochs must be None or > 0, got {self.epochs!r}")
        if self.patch_size < 16:
            raise ConfigError(f"TrainConfig.patch_size must be at least 16 pixels, got {self.patch_size}")
        for name in ("lr", "weight_decay", "intensity", "gamma", "noise", "dice_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        for name in ("warmup", "blur", "pseudo_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1], got {v!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 0.5:
            raise ConfigError(f"TrainConfig.val_fraction must be in [0, 0.5), got {self.val_fraction!r}")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer)) or self.patience < 1):
            raise ConfigError(f"TrainConfig.patience must be None or a positive integer, got {self.patience!r}")
        if self.schedule not in _SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(_SCHEDULES)}")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ConfigError(f"TrainConfig.autocast must be 'auto', 'bf16' or 'off', got {self.autocast!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ConfigError(f"TrainConfig.num_threads must be None or a positive integer, got {self.num_threads!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


# ----------------------------------------------------------------------------- loss


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy + soft Dice over labelled pixels only.

    Parameters
    ----------
    logits : float (B, C, H, W).
    target : int64 (B, H, W) class ids, ``ignore_index`` = unlabelled.
    dice_weight : weight of the Dice term (mean over classes of ``1 - Dice``, computed
        over the batch's labelled pixels).
    weight : optional float (B,) weight of each patch (pseudo-labelled patches count less);
        None = all 1.

    Returns
    -------
    Scalar tensor (float32). Pixels labelled ``ignore_index`` contribute nothing, and
    neither do their logits' gradients. With no labelled pixel at all the loss is 0.
    """
    logits = logits.float()
    valid = target != ignore_index
    n_valid = valid.sum()
    if int(n_valid) == 0:
        return logits.sum() * 0.0
    vmask = valid.to(logits.dtype)
    # per-pixel weight: 1 for human labels, a patch's weight for pseudo-labels; both terms are
    # normalised by the labelled pixel count, so a batch of pseudo patches weighs less
    w = vmask if weight is None else weight.to(logits.dtype).view(-1, 1, 1) * vmask
    if weight is None:
        ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / n_valid
    else:
        per_px = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
        ce = (per_px * w).sum() / n_valid
    if dice_weight == 0:
        return ce
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    wp = w.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (wp * probs * onehot).sum(dims)
    denom = (wp * probs).sum(dims) + (wp * onehot).sum(dims)
    dice = (2.0 * inter + 1.0) / (denom + 1.0)
    share = 1.0 if weight is None else w.sum() / n_valid  # the batch's mean weight
    return ce + dice_weight * share * (1.0 - dice.mean())


# ----------------------------------------------------------------------------- labels


def collect_labels(labels: Any, shape: tuple[int, int, int], n_classes: int) -> dict[int, np.ndarray]:
    """Labelled slices as ``{z: uint8 (Y, X)}`` (slices without any label are dropped).

    Accepts a ``(Z, Y, X)`` array / memmap (read in blocks) or a ``{z: mask}`` dict.
    Raises :class:`LabelError` for shape mismatches or values other than
    ``0 .. n_classes - 1`` and 255.
    """
    nz, ny, nx = shape
    out: dict[int, np.ndarray] = {}

    def check(z: int, m: np.ndarray) -> None:
        """Check one slice in its own dtype (before any cast could wrap 257 to 1 or -1 to 255)."""
        if m.shape != (ny, nx):
            raise LabelError(f"labels of slice {z} have shape {m.shape}, expected {(ny, nx)} like the image")
        vals = np.unique(m).astype(np.int64)
        bad = vals[(vals < 0) | ((vals >= n_classes) & (vals != IGNORE_INDEX))]
        if bad.size:
            raise LabelError(
                f"labels of slice {z} hold values {bad.tolist()}; expected 0..{n_classes - 1} and "
                f"{IGNORE_INDEX} (unlabelled); ilastik-style scribbles (0 = unlabelled, class c = c + 1) "
                "must be converted first"
            )

    if isinstance(labels, Mapping):
        for z, m in labels.items():
            if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < nz:
                raise LabelError(f"label slice id {z!r} is not a global slice index in [0, {nz - 1}]")
            m = np.asarray(m)
            if m.dtype.kind not in "ui":
                raise LabelError(f"labels of slice {z} must be integers (uint8), got dtype {m.dtype}")
            check(int(z), m)
            m = m.astype(np.uint8, copy=False)
            if np.any(m != IGNORE_INDEX):
                out[int(z)] = np.array(m, dtype=np.uint8)
        return dict(sorted(out.items()))
    lshape = tuple(getattr(labels, "shape", ()))
    if lshape != (nz, ny, nx):
        raise LabelError(f"labels have shape {lshape}, expected {(nz, ny, nx)} like the image (255 = unlabelled)")
    dtype = np.dtype(getattr(labels, "dtype", np.uint8))
    if dtype.kind not in "ui":
        raise LabelError(f"labels must be integers (uint8, 255 = unlabelled), got dtype {dtype}")
    block = max(1, (64 << 20) // max(1, ny * nx))
    for z0 in range(0, nz, block):
        chunk = np.asarray(labels[z0 : z0 + block])
        has = np.any(chunk != IGNORE_INDEX, axis=(1, 2))
        for i in np.flatnonzero(has):
            check(z0 + int(i), chunk[i])
            out[z0 + int(i)] = np.array(chunk[i], dtype=np.uint8)
    return out


# ----------------------------------------------------------------------------- data


@dataclass
class _Data:
    zs: list[int]  # labelled slice ids
    train: list[np.ndarray]  # uint8 (Y, X) labels with validation pixels set to 255
    val: list[np.ndarray]  # uint8 (Y, X) validation labels (255 elsewhere)
    raw: dict[int, np.ndarray]  # z -> raw slice (every context slice needed)
    ctx: list[np.ndarray]  # per labelled slice: K context z ids
    coords: list[np.ndarray]  # per labelled slice: flat indices of (a subsample of) training pixels
    weights: np.ndarray  # probability of drawing each labelled slice
    loss_weights: np.ndarray  # loss weight of a patch of each slice (1 = human labels)


def _prepare_data(image: Any, labelled: dict[int, np.ndarray], offsets, cfg: TrainConfig, rng: np.random.Generator,
                  pseudo: dict[int, np.ndarray] | None = None) -> _Data:
    nz = int(image.shape[0])
    pseudo = {z: p for z, p in (pseudo or {}).items() if z not in labelled}
    zs = sorted(labelled) + sorted(pseudo)
    train, val, ctx, coords, npix = [], [], [], [], []
    cap = 1 << 16
    for z in zs:
        lab = labelled[z] if z in labelled else pseudo[z]
        # the held-out blocks of a slice depend on (val_seed, z) only, so they stay held out
        # when later rounds warm-start from this model; pseudo-labels are never held out
        # (they are not what a model is judged by)
        held = (held_out(z, lab, fraction=cfg.val_fraction, block=cfg.val_block, seed=cfg.val_seed) if z in labelled
                else np.zeros(lab.shape, bool))
        tr = lab.copy()
        tr[held] = IGNORE_INDEX
        va = np.full_like(lab, IGNORE_INDEX)
        va[held] = lab[held]
        idx = np.flatnonzero(tr != IGNORE_INDEX)
        npix.append(idx.size)
        if idx.size > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        train.append(tr)
        val.append(va)
        coords.append(idx)
        ctx.append(context_indices(z, offsets, nz))
    need = sorted({int(c) for cz in ctx for c in cz})
    raw = dict(zip(need, np.asarray(image[need])))
    npix_arr = np.asarray(npix, dtype=np.float64)
    if npix_arr.sum() == 0:
        raise LabelError("no labelled pixels left for training after holding out validation pixels")
    # draw slices in proportion to the square root of their labelled pixels, so a fully
    # labelled slice does not drown scribbled ones
    w = np.sqrt(npix_arr)
    is_pseudo = np.array([z not in labelled for z in zs])
    human_mass, pseudo_mass = w[~is_pseudo].sum(), w[is_pseudo].sum()
    if pseudo_mass > human_mass > 0:  # pseudo-labelled slices get at most half of the patches drawn
        w[is_pseudo] *= human_mass / pseudo_mass
    loss_w = np.where(is_pseudo, np.float32(cfg.pseudo_weight), np.float32(1.0)).astype(np.float32)
    return _Data(zs, train, val, raw, ctx, coords, w / w.sum(), loss_w)


def _crop(data: _Data, i: int, y0: int, x0: int, ph: int, pw: int, norm, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.stack([data.raw[int(c)][y0 : y0 + ph, x0 : x0 + pw] for c in data.ctx[i]])
    return normalise(img, norm), labels[y0 : y0 + ph, x0 : x0 + pw]


def _pad_patch(img: np.ndarray, lab: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    ph, pw = lab.shape
    py, px = (-ph) % multiple, (-pw) % multiple
    if py or px:
        mode: Literal["reflect", "edge"] = "reflect" if (py < ph and px < pw) else "edge"
        img = np.pad(img, ((0, 0), (0, py), (0, px)), mode=mode)
        lab = np.pad(lab, ((0, py), (0, px)), constant_values=IGNORE_INDEX)
    return img, lab


def _sample_batch(data: _Data, cfg: TrainConfig, norm, ps: tuple[int, int], multiple: int, rng: np.random.Generator):
    ph, pw = ps
    ny, nx = data.train[0].shape
    imgs, labs, wts = [], [], []
    usable = [i for i, c in enumerate(data.coords) if c.size]
    w = data.weights[usable] / data.weights[usable].sum()
    for _ in range(cfg.batch_size):
        i = usable[int(rng.choice(len(usable), p=w))]
        flat = int(data.coords[i][rng.integers(data.coords[i].size)])
        cy, cx = divmod(flat, nx)
        y0 = int(np.clip(cy - ph // 2 + rng.integers(-ph // 4, ph // 4 + 1), 0, ny - ph))
        x0 = int(np.clip(cx - pw // 2 + rng.integers(-pw // 4, pw // 4 + 1), 0, nx - pw))
        img, lab = _crop(data, i, y0, x0, ph, pw, norm, data.train[i])
        img, lab = _pad_patch(img, lab, multiple)
        imgs.append(img)
        labs.append(lab)
        wts.append(data.loss_weights[i])
    return np.stack(imgs), np.stack(labs), np.asarray(wts, np.float32)


def _val_batches(
    data: _Data, norm, ps: tuple[int, int], multiple: int, block: int, rng: np.random.Generator, max_patches: int = 16
):
    """Fixed validation patches covering (up to ``max_patches``) held-out blocks."""
    ph, pw = ps
    ny, nx = data.train[0].shape
    cands = []
    for i, va in enumerate(data.val):
        ys, xs = np.nonzero(va != IGNORE_INDEX)
        if ys.size == 0:
            continue
        # one candidate centre per held-out block
        keys = np.unique((ys // block) * 100000 + xs // block)
        for k in keys:
            cands.append((i, int(k // 100000) * block + block // 2, int(k % 100000) * block + block // 2))
    if not cands:
        return []
    pick = rng.permutation(len(cands))[:max_patches]
    seen = set()
    out_img, out_lab = [], []
    for j in sorted(pick):
        i, cy, cx = cands[j]
        y0 = int(np.clip(cy - ph // 2, 0, ny - ph))
        x0 = int(np.clip(cx - pw // 2, 0, nx - pw))
        if (i, y0, x0) in seen:
            continue
        seen.add((i, y0, x0))
        img, lab = _crop(data, i, y0, x0, ph, pw, norm, data.val[i])
        img, lab = _pad_patch(img, lab, multiple)
        out_img.append(img)
        out_lab.append(lab)
    return [(np.stack(out_img[k : k + 8]), np.stack(out_lab[k : k + 8])) for k in range(0, len(out_img), 8)]


# ----------------------------------------------------------------------------- augmentation


def _blur_kernel(channels: int) -> torch.Tensor:
    x = torch.arange(-1, 2, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * 0.7**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]
    return k.repeat(channels, 1, 1, 1)


def _augment(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a CPU batch x float32 (B, K, H, W), y int64 (B, H, W)."""
    b = x.shape[0]

    def u(*shape):
        return torch.rand(*shape, generator=gen)

    if cfg.flip_x:
        f = u(b) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
        y = torch.where(f[:, None, None], y.flip(-1), y)
    if cfg.flip_y:
        f = u(b) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-2), x)
        y = torch.where(f[:, None, None], y.flip(-2), y)
    if cfg.blur > 0:
        sel = u(b) < cfg.blur
        if bool(sel.any()):
            k = _blur_kernel(x.shape[1])
            xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
            x = torch.where(sel[:, None, None, None], xb, x)
    if cfg.gamma > 0:
        # gamma on the [0, 1] view of the normalised range (-1 .. 1), the sign kept outside it
        g = torch.exp(cfg.gamma * (2 * u(b, 1, 1, 1) - 1))
        t = (x + 1) / 2
        x = torch.sign(t) * t.abs().pow(g) * 2 - 1
    if cfg.intensity > 0:
        a = cfg.intensity
        gain = 1.0 + a * (2 * u(b, 1, 1, 1) - 1)
        off = a * (2 * u(b, 1, 1, 1) - 1)
        x = x * gain + off
    if cfg.noise > 0:
        std = cfg.noise * u(b, 1, 1, 1)
        x = x + std * torch.randn(x.shape, generator=gen)
    return x, y


# ----------------------------------------------------------------------------- training


@contextmanager
def _torch_state(seed: int, device: torch.device, deterministic: bool, num_threads: int | None):
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            if num_threads is not None:
                torch.set_num_threads(prev_threads)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(total, 2), pct_start=max(cfg.warmup, 1e-3),
            anneal_strategy="cos", div_factor=10.0, final_div_factor=100.0, cycle_momentum=False,
        )
    warm = int(round(cfg.warmup * total))
    if cfg.schedule == "cosine":
        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            t = (step - warm) / max(1, total - warm)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    else:
        def f(step: int) -> float:
            return (step + 1) / (warm + 1) if step < warm else 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def train_model(
    image: Any,
    labels: Any,
    *,
    config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    rng: np.random.Generator,
    init: SegModel | None = None,
    callback: TrainCallback | None = None,
    norm: tuple[float, float] | None = None,
    pseudo: Mapping[int, np.ndarray] | None = None,
) -> tuple[SegModel, dict]:
    """Train a segmentation network on the labelled slices of ``image``.

    Parameters
    ----------
    image : (Z, Y, X) stack (ndarray, memmap or lazy :class:`activeseg.io.Stack`).
    labels : uint8 (Z, Y, X) with 255 = unlabelled, or ``{z: uint8 (Y, X)}``; values
        0 .. C-1 are classes (0 solid, 1 pore). Slices without labels are skipped.
    config : :class:`TrainConfig` (defaults when None).
    model_config : :class:`~activeseg.model.ModelConfig`; defaults to ``init.config``
        when warm-starting, else ``ModelConfig()``.
    rng : numpy Generator; the only source of randomness (patches, validation split,
        augmentation, weight init, dropout).
    init : a previous :class:`SegModel` to start from (warm start; its intensity
        normalisation mode is kept, :func:`~activeseg.network.training_normalisation`).
        It is validated before the first step, so when no step of this training beats it
        on the held-out pixels its weights are kept (``best_step`` 0, ``kept_init`` True).
    callback : ``callback(step, total, info)`` after every step; ``info`` holds
        "loss", "lr" and, after a validation, "val_loss".
    norm : (lo, hi) raw intensities mapped to -1 / +1 on every stack (mode "fixed"); default:
        each stack's own 0.5 / 99.5 percentiles (mode "stack_percentiles",
        :func:`~activeseg.model.intensity_range`), or ``init``'s mode.
    pseudo : optional ``{z: uint8 (Y, X)}`` pseudo-labels (a model's confident predictions
        of slices no person labelled; 255 = not confident). Their patches weigh
        ``config.pseudo_weight`` in the loss, they are never held out, and slices that also
        have human labels ignore them.

    Returns
    -------
    (SegModel, history) where history is a JSON-serialisable dict: per-step "step",
    "loss", "lr"; "val_step", "val_loss"; "best_step", "best_val_loss", "steps_run",
    "stopped_early", "kept_init", "seconds", "labelled_slices", "n_train_pixels",
    "n_val_pixels", "pseudo_slices", "n_pseudo_pixels", "device".
    """
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}; use np.random.default_rng(seed)")
    if init is not None and not isinstance(init, SegModel):
        raise ModelError(f"init must be a SegModel to warm-start from, got {type(init).__name__}")
    if model_config is None:
        model_config = init.config if init is not None else ModelConfig()
    if init is not None and init.config != model_config:
        raise ModelError(
            f"cannot warm-start: init was built with {init.config}, but model_config is {model_config}; "
            "leave model_config None to reuse init's"
        )
    shape = check_stack(image)
    nz, ny, nx = shape
    labelled = collect_labels(labels, shape, model_config.n_classes)
    if not labelled:
        raise LabelError("labels hold no labelled pixel (everything is 255); label at least one slice")
    # per-stack percentiles, or a given fixed range; a warm start keeps its init's mode (docs/architecture.md §6)
    norm, norm_kw = training_normalisation(image, init=init, norm=norm)

    device = resolve_device(cfg.device)
    deterministic = cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"
    seed = int(rng.integers(0, 2**63 - 1))
    np_rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed % (2**62))
    t_start = time.perf_counter()

    with _torch_state(seed % (2**62), device, deterministic, cfg.num_threads):
        if init is not None:
            net = copy.deepcopy(init.net)
        else:
            net = build_model(model_config)
        multiple = network_multiple(net, model_config)
        pseudo_lab = collect_labels(dict(pseudo), shape, model_config.n_classes) if pseudo else {}
        data = _prepare_data(image, labelled, model_config.offsets, cfg, np_rng, pseudo_lab)
        ps = (min(cfg.patch_size, ny), min(cfg.patch_size, nx))
        n_human = len(labelled)
        n_train = int(sum(int(np.count_nonzero(t != IGNORE_INDEX)) for t in data.train[:n_human]))
        n_pseudo = int(sum(int(np.count_nonzero(t != IGNORE_INDEX)) for t in data.train[n_human:]))
        n_val = int(sum(int(np.count_nonzero(v != IGNORE_INDEX)) for v in data.val))
        val = _val_batches(data, norm, ps, multiple, cfg.val_block, np_rng) if n_val else []
        total = cfg.steps
        if cfg.epochs is not None:
            total = max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * ps[0] * ps[1])))

        channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cuda", "cpu")
        net = net.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        amp_dtype = resolve_autocast(cfg.autocast, device)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = _scheduler(opt, cfg, total)

        def to_dev(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device, non_blocking=True)
            return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x

        def autocast():
            if amp_dtype is None:
                return torch.autocast(device.type, enabled=False)
            return torch.autocast(device.type, dtype=amp_dtype)

        def validate() -> float:
            net.eval()
            tot, cnt = 0.0, 0
            with torch.inference_mode():
                for xb, yb in val:
                    y = torch.from_numpy(yb.astype(np.int64))
                    with autocast():
                        logits = net(to_dev(torch.from_numpy(xb)))
                    k = int((y != IGNORE_INDEX).sum())
                    tot += float(segmentation_loss(logits, to_dev(y), dice_weight=cfg.dice_weight)) * k
                    cnt += k
            net.train()
            return tot / max(cnt, 1)

        hist: dict[str, Any] = {"step": [], "loss": [], "lr": [], "val_step": [], "val_loss": []}
        best_loss, best_step, best_state = math.inf, 0, None
        if val and init is not None:
            # a warm start competes with its own training: if no step beats the previous
            # model on the held-out pixels, the previous weights are kept
            best_loss = validate()
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            hist["val_step"].append(0)
            hist["val_loss"].append(best_loss)
        # patience counts from the end of the warm-up: a warm start's loss rises while the
        # learning rate climbs, and stopping there would keep the previous model by default
        warm_steps = int(round(cfg.warmup * total))
        stopped = False
        step = 0
        net.train()
        for step in range(1, total + 1):
            xb, yb, wb = _sample_batch(data, cfg, norm, ps, multiple, np_rng)
            x, y = _augment(torch.from_numpy(xb), torch.from_numpy(yb.astype(np.int64)), cfg, gen)
            with autocast():
                logits = net(to_dev(x))
            loss = segmentation_loss(logits, to_dev(y), dice_weight=cfg.dice_weight,
                                     weight=None if n_pseudo == 0 else to_dev(torch.from_numpy(wb)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = float(opt.param_groups[0]["lr"])
            if step < total:
                sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise ModelError(
                    f"training diverged at step {step} (loss {lv}); lower TrainConfig.lr (now {cfg.lr})"
                )
            hist["step"].append(step)
            hist["loss"].append(lv)
            hist["lr"].append(lr)
            info: dict[str, float] = {"loss": lv, "lr": lr}
            if val and (step % cfg.eval_every == 0 or step == total):
                vl = validate()
                hist["val_step"].append(step)
                hist["val_loss"].append(vl)
                info["val_loss"] = vl
                if vl < best_loss:
                    best_loss, best_step = vl, step
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                elif cfg.patience is not None and step - max(best_step, warm_steps) >= cfg.patience:
                    stopped = True
            if callback is not None:
                callback(step, total, info)
            if stopped:
                log.info("early stop at step %d (best %d, val loss %.4f)", step, best_step, best_loss)
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net = net.to("cpu").to(memory_format=torch.contiguous_format)
        net.eval()

    seconds = time.perf_counter() - t_start
    hist.update(
        best_step=int(best_step if best_state is not None else step),
        best_val_loss=None if best_state is None else float(best_loss),
        steps_run=int(step),
        total_steps=int(total),
        stopped_early=bool(stopped),
        kept_init=bool(init is not None and best_state is not None and best_step == 0),
        seconds=float(seconds),
        labelled_slices=[int(z) for z in data.zs[:n_human]],
        pseudo_slices=[int(z) for z in data.zs[n_human:]],
        n_train_pixels=n_train,
        n_pseudo_pixels=n_pseudo,
        n_val_pixels=n_val,
        device=str(device),
    )
    meta = dict(init.metadata) if init is not None else {}
    meta["training"] = {
        "config": cfg.to_dict(),
        "labelled_slices": hist["labelled_slices"],
        "pseudo_slices": hist["pseudo_slices"],
        "steps_run": hist["steps_run"],
        "best_step": hist["best_step"],
        "best_val_loss": hist["best_val_loss"],
        "seconds": round(seconds, 3),
        "warm_start": init is not None,
        "kept_init": hist["kept_init"],
        "device": str(device),
    }
    rounds = int(meta.get("trainings", 0)) + 1
    meta["trainings"] = rounds
    return SegModel(net=net, config=model_config, metadata=meta, device=cfg.device, **norm_kw), hist
