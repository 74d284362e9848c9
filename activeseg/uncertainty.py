"""Per-pixel uncertainty and its reduction to per-slice scores (docs/architecture.md §3).

This module imports numpy and scipy only, never torch: the strategies (through the
registry) and the RF stage use it without importing torch. Probabilities are float32 ``(n, C, Y, X)`` for ``n`` slices;
per-pixel maps are float32 ``(n, Y, X)``; per-slice scores are float32 ``(n,)``,
higher = more informative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from activeseg.errors import ConfigError
from activeseg.tiles import TileGrid
from activeseg.validation import check_slices, check_stack

__all__ = [
    "ProbabilityModel",
    "EnsembleModel",
    "entropy",
    "margin",
    "reduce_slices",
    "REDUCTIONS",
    "bald",
    "variance",
    "tta_variance",
    "disagreement",
    "DISAGREEMENTS",
    "porosity",
    "tta_samples",
    "GENERIC_TTA",
    "Scorer",
    "SCORERS",
    "PASSES",
    "register_scorer",
    "available_scorers",
    "get_scorer",
    "score_slices",
    "TILE_PREFIX",
    "TILE_DESCRIPTORS",
    "is_tile_score",
    "base_scorer",
    "score_needs",
    "tile_edge",
]

_EPS = 1e-12


@runtime_checkable
class ProbabilityModel(Protocol):
    """Anything that gives class probabilities for chosen slices of a stack.

    Both the Random Forest (:mod:`activeseg.bootstrap`) and the network wrapper
    (:mod:`activeseg.infer`) satisfy it, so scoring works before and after the
    first network exists.
    """

    n_classes: int

    def predict_proba(self, image, slices: Sequence[int]) -> np.ndarray:
        """Return float32 ``(len(slices), C, Y, X)`` probabilities for global slice ids."""
        ...


@runtime_checkable
class EnsembleModel(ProbabilityModel, Protocol):
    """A model that can also draw ``T`` stochastic predictions (MC dropout, tree groups)."""

    def sample_proba(self, image, slices: Sequence[int], *, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Return float32 ``(T, len(slices), C, Y, X)`` probability samples."""
        ...


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise ConfigError(f"probabilities must be (n, C, Y, X), got shape {probs.shape}")
    if probs.shape[1] < 2:
        raise ConfigError(
            f"probabilities need at least 2 classes on axis 1, got shape {probs.shape}; "
            "for a binary pore probability p use np.stack([1 - p, p], axis=1)"
        )
    return probs


def entropy(probs: np.ndarray, *, normalise: bool = True) -> np.ndarray:
    """Shannon entropy of class probabilities per pixel.

    Parameters
    ----------
    probs : float (n, C, Y, X), summing to 1 over C.
    normalise : divide by log(C) so the result lies in [0, 1].

    Returns
    -------
    float32 (n, Y, X); 0 = certain, 1 = uniform (when normalised).
    """
    probs = _check_probs(probs).astype(np.float32, copy=False)
    h = -np.sum(probs * np.log(np.clip(probs, _EPS, 1.0)), axis=1)
    if normalise:
        h /= np.float32(np.log(probs.shape[1]))
    return np.clip(h, 0.0, None).astype(np.float32, copy=False)


def margin(probs: np.ndarray) -> np.ndarray:
    """Margin uncertainty ``1 - (p1 - p2)`` of the two most likely classes, per pixel.

    Returns float32 (n, Y, X) in [0, 1]; higher = more informative (docs/architecture.md §3).
    """
    probs = _check_probs(probs)
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return (1.0 - (top2[:, 1] - top2[:, 0])).astype(np.float32, copy=False)


def _boundary_weights(pore_prob: np.ndarray, width: float) -> np.ndarray:
    mask = pore_prob >= 0.5
    w = np.empty(mask.shape, dtype=np.float32)
    for i in range(mask.shape[0]):
        if mask[i].all() or not mask[i].any():  # no pore boundary on this slice: a plain mean
            w[i] = 1.0
            continue
        inside = ndimage.distance_transform_edt(mask[i])
        outside = ndimage.distance_transform_edt(~mask[i])
        dist = np.where(mask[i], inside, outside)
        w[i] = np.exp(-dist / width)
    return w


def reduce_slices(
    pixel_map: np.ndarray,
    how: str = "mean",
    *,
    q: float = 0.9,
    pore_prob: np.ndarray | None = None,
    boundary_width: float = 3.0,
) -> np.ndarray:
    """Reduce a per-pixel map ``(n, Y, X)`` to per-slice scores ``(n,)``.

    Parameters
    ----------
    pixel_map : float (n, Y, X), e.g. from :func:`entropy`.
    how : "mean"; "quantile" (the top-``q`` quantile of each slice, robust to a
        few very uncertain pixels); or "boundary" (mean weighted by
        ``exp(-distance to the predicted pore boundary / boundary_width)``, which
        needs ``pore_prob``, float (n, Y, X)).
    """
    pixel_map = np.asarray(pixel_map, dtype=np.float32)
    if pixel_map.ndim != 3:
        raise ConfigError(f"pixel map must be (n, Y, X), got shape {pixel_map.shape}")
    flat = pixel_map.reshape(pixel_map.shape[0], -1)
    if how == "mean":
        return flat.mean(axis=1, dtype=np.float64).astype(np.float32)
    if how == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"quantile q must be in [0, 1], got {q}")
        return np.quantile(flat, q, axis=1).astype(np.float32)
    if how == "boundary":
        if pore_prob is None:
            raise ConfigError("reduction 'boundary' needs pore_prob (n, Y, X)")
        w = _boundary_weights(np.asarray(pore_prob), boundary_width).reshape(flat.shape)
        return (np.sum(flat * w, axis=1) / np.maximum(w.sum(axis=1), _EPS)).astype(np.float32)
    raise ConfigError(f"unknown reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")


REDUCTIONS = ("mean", "quantile", "boundary")


# ============================================================================ ensembles
# (the functions below extend the numpy core above; still no torch at import time)


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 5:
        raise ConfigError(
            f"probability samples must be (T, n, C, Y, X), got shape {samples.shape}; "
            "for a single pass add a leading axis: probs[None]"
        )
    if samples.shape[2] < 2:
        raise ConfigError(f"samples need at least 2 classes on axis 2, got shape {samples.shape}")
    return samples.astype(np.float32, copy=False)


def bald(samples: np.ndarray, *, normalise: bool = True) -> np.ndarray:
    """BALD score (mutual information between prediction and model) per pixel.

    ``I = H[mean_t p_t] - mean_t H[p_t]`` over ``T`` stochastic predictions (MC-dropout
    passes, tree groups of a forest). Zero when all samples agree; for ``T = 1`` it is
    identically zero.

    Parameters
    ----------
    samples : float (T, n, C, Y, X), each summing to 1 over C.
    normalise : divide by log(C) (like :func:`entropy`), so the result lies in [0, 1].

    Returns
    -------
    float32 (n, Y, X), >= 0.
    """
    samples = _check_samples(samples)
    c = samples.shape[2]
    mean = samples.mean(axis=0)
    h_mean = -np.sum(mean * np.log(np.clip(mean, _EPS, 1.0)), axis=1)
    h_each = np.zeros(h_mean.shape, dtype=np.float64)
    for s in samples:  # one sample at a time: no (T, n, C, Y, X) temporaries
        h_each += -np.sum(s * np.log(np.clip(s, _EPS, 1.0)), axis=1)
    mi = h_mean - h_each / samples.shape[0]
    if normalise:
        mi /= np.log(c)
    return np.clip(mi, 0.0, None).astype(np.float32)


def variance(samples: np.ndarray) -> np.ndarray:
    """Per-pixel variance over ``T`` samples of the class probabilities, mean over classes.

    For a binary model this is the variance of the pore probability (at most 0.25).

    Parameters
    ----------
    samples : float (T, n, C, Y, X).

    Returns
    -------
    float32 (n, Y, X), >= 0.
    """
    samples = _check_samples(samples)
    # running sums over T: no float64 copy of all T samples
    total = np.zeros(samples.shape[1:], np.float64)
    squares = np.zeros(samples.shape[1:], np.float64)
    for t in range(samples.shape[0]):
        total += samples[t]
        squares += np.square(samples[t], dtype=np.float64)
    n = samples.shape[0]
    var = np.clip(squares / n - np.square(total / n), 0.0, None)
    return var.mean(axis=1).astype(np.float32)


tta_variance = variance
"""TTA variance: :func:`variance` of predictions under test-time augmentations."""


DISAGREEMENTS = ("abs", "skl")


def disagreement(p_a: np.ndarray, p_b: np.ndarray, *, how: str = "abs") -> np.ndarray:
    """Per-pixel disagreement between two probability maps (e.g. RF vs ResUNet).

    Parameters
    ----------
    p_a, p_b : float (n, C, Y, X), same shape.
    how : "abs" -- half the L1 distance between the class distributions (total
        variation), ``0.5 * sum_c |p_a - p_b|`` in [0, 1]; for a binary model it is the
        absolute difference of the pore probabilities. "skl" -- symmetric KL divergence
        ``0.5 * (KL(a||b) + KL(b||a))`` in nats (probabilities clipped to 1e-6), unbounded.

    Returns
    -------
    float32 (n, Y, X), >= 0, symmetric in its arguments.
    """
    p_a = _check_probs(p_a).astype(np.float32, copy=False)
    p_b = _check_probs(p_b).astype(np.float32, copy=False)
    if p_a.shape != p_b.shape:
        raise ConfigError(f"disagreement needs two maps of the same shape, got {p_a.shape} and {p_b.shape}")
    if how == "abs":
        return (0.5 * np.abs(p_a - p_b).sum(axis=1)).astype(np.float32)
    if how == "skl":
        a = np.clip(p_a, 1e-6, 1.0)
        b = np.clip(p_b, 1e-6, 1.0)
        return (0.5 * np.sum((a - b) * (np.log(a) - np.log(b)), axis=1)).clip(0.0, None).astype(np.float32)
    raise ConfigError(f"unknown disagreement {how!r}; choose one of {', '.join(DISAGREEMENTS)}")


def porosity(probs: np.ndarray, *, pore_class: int = 1) -> np.ndarray:
    """Predicted pore fraction per slice: share of pixels whose most likely class is pore.

    Parameters
    ----------
    probs : float (n, C, Y, X).

    Returns
    -------
    float32 (n,) in [0, 1].
    """
    probs = _check_probs(probs)
    hard = probs.argmax(axis=1) == pore_class
    return hard.reshape(hard.shape[0], -1).mean(axis=1).astype(np.float32)


# ============================================================================ TTA for any model


class _TransformedStack:
    """A lazy view of a (Z, Y, X) stack with an x-flip and/or an intensity gain applied."""

    def __init__(self, image, *, flip_x: bool = False, gain: float = 1.0) -> None:
        self._image = image
        self._flip = flip_x
        self._gain = float(gain)
        self.shape = tuple(image.shape)
        self.dtype = np.dtype(np.float32) if self._gain != 1.0 else np.dtype(getattr(image, "dtype", np.float32))
        self.ndim = 3

    def __getattr__(self, name):  # voxel_size and the like
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._image, name)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        a = np.asarray(self._image[key])
        if self._flip:
            a = a[..., ::-1]
        if self._gain != 1.0:
            a = a.astype(np.float32) * np.float32(self._gain)
        return np.ascontiguousarray(a)

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a.astype(dtype) if dtype is not None else a


GENERIC_TTA = ((False, 1.0), (True, 1.0), (False, 1.05), (True, 0.95))
"""(x-flip, intensity gain) pairs used by :func:`tta_samples` for models without ``tta_proba``."""


def tta_samples(model: ProbabilityModel, image, slices: Sequence[int]) -> np.ndarray:
    """Predictions under test-time augmentations, mapped back: float32 (T, n, C, Y, X).

    Uses ``model.tta_proba(image, slices)`` when the model has it (the network does it
    on tensors); otherwise applies :data:`GENERIC_TTA` to a lazy view of the stack, so
    it works for any :class:`ProbabilityModel` (the RF too).
    """
    own = getattr(model, "tta_proba", None)
    if callable(own):
        return np.asarray(own(image, slices), dtype=np.float32)
    out = []
    for flip, gain in GENERIC_TTA:
        view = _TransformedStack(image, flip_x=flip, gain=gain) if (flip or gain != 1.0) else image
        p = np.asarray(model.predict_proba(view, slices), dtype=np.float32)
        out.append(p[..., ::-1] if flip else p)
    return np.ascontiguousarray(np.stack(out))


# ============================================================================ scorer registry


PASSES = ("proba", "samples", "tta", "reference")
"""Model passes a scorer can need: one deterministic prediction ("proba"), stochastic
samples ("samples": MC dropout / tree groups), test-time augmentations ("tta"), or the
prediction of a second, reference model ("reference", with "proba")."""


@dataclass(frozen=True)
class Scorer:
    """A named per-slice score.

    Attributes
    ----------
    name : registry key (also the key in the scores dict, docs/architecture.md §4).
    needs : the passes it consumes (subset of :data:`PASSES`).
    pixel : ``pixel(passes) -> float32 (n, Y, X)`` per-pixel map from a dict holding the
        needed passes (arrays ``(n, C, Y, X)`` / ``(T, n, C, Y, X)``), reduced per slice
        with the requested reduction; or None when ``per_slice`` is given.
    per_slice : ``per_slice(passes) -> float32 (n,)`` for scores that are not a reduced
        pixel map (porosity).
    description : one line for listings.
    """

    name: str
    needs: tuple[str, ...]
    pixel: Callable[[dict], np.ndarray] | None = None
    per_slice: Callable[[dict], np.ndarray] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(PASSES)
        if unknown or not self.needs:
            raise ConfigError(f"scorer {self.name!r} needs unknown passes {sorted(unknown)}; choose from {PASSES}")
        if (self.pixel is None) == (self.per_slice is None):
            raise ConfigError(f"scorer {self.name!r} needs exactly one of pixel= or per_slice=")


SCORERS: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer, *, replace: bool = False) -> Scorer:
    """Add a scorer to the registry (an existing name needs ``replace=True``)."""
    if not isinstance(scorer, Scorer):
        raise ConfigError(f"register_scorer expects a Scorer, got {type(scorer).__name__}")
    if scorer.name in SCORERS and not replace:
        raise ConfigError(f"a scorer named {scorer.name!r} is already registered; pass replace=True")
    SCORERS[scorer.name] = scorer
    return scorer


def available_scorers() -> tuple[str, ...]:
    """Names of the registered scorers, sorted."""
    return tuple(sorted(SCORERS))


def get_scorer(name: str) -> Scorer:
    """Look a scorer up by name; unknown names raise :class:`ConfigError` listing the choices."""
    try:
        return SCORERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown scorer {name!r}; available: {', '.join(available_scorers())}") from None


for _s in (
    Scorer("entropy", ("proba",), pixel=lambda p: entropy(p["proba"]),
           description="normalised Shannon entropy of one pass (0 certain .. 1 uniform)"),
    Scorer("margin", ("proba",), pixel=lambda p: margin(p["proba"]), description="1 - (p1 - p2) of one pass"),
    Scorer("bald", ("samples",), pixel=lambda p: bald(p["samples"]),
           description="mutual information over MC-dropout / tree-group samples"),
    Scorer("tta_variance", ("tta",), pixel=lambda p: tta_variance(p["tta"]),
           description="variance of predictions under x-flip / intensity test-time augmentation"),
    Scorer("rf_disagreement", ("proba", "reference"), pixel=lambda p: disagreement(p["proba"], p["reference"]),
           description="total-variation distance between the network's and the Random Forest's class "
                       "probabilities (binary: |p_net - p_rf|; 0 agree .. 1 opposite)"),
    Scorer("porosity", ("proba",), per_slice=lambda p: porosity(p["proba"]),
           description="predicted pore fraction of the slice (not an uncertainty)"),
):
    register_scorer(_s)
del _s


TILE_PREFIX = "tile:"
"""Prefix of per-tile score names: ``tile:entropy`` is the mean of the entropy map over
each tile of the session's grid (:class:`activeseg.tiles.TileGrid`)."""

TILE_DESCRIPTORS = {
    "porosity": "predicted pore fraction of the tile",
    "edge": "fraction of the tile's pixels within 2 px of a predicted phase interface",
}
"""Per-tile scores that are not a per-pixel scorer's mean: ``tile:porosity``, ``tile:edge``."""


def is_tile_score(name: str) -> bool:
    """True for a per-tile score name (``tile:entropy``, ``tile:edge``)."""
    return isinstance(name, str) and name.startswith(TILE_PREFIX)


def base_scorer(name: str) -> Scorer | None:
    """The per-pixel scorer behind a score name (``tile:bald`` -> ``bald``), None for a tile descriptor.

    Raises :class:`ConfigError` for an unknown name, or a ``tile:`` name of a scorer that
    has no per-pixel map (``tile:porosity`` is a descriptor, not the per-slice scorer).
    """
    if not is_tile_score(name):
        return get_scorer(name)
    base = name[len(TILE_PREFIX):]
    if base in TILE_DESCRIPTORS:
        return None
    scorer = get_scorer(base) if base in SCORERS else None
    if scorer is None or scorer.pixel is None:
        pixel = [n for n, s in sorted(SCORERS.items()) if s.pixel is not None]
        raise ConfigError(
            f"unknown per-tile score {name!r}; per-tile scores are {TILE_PREFIX}<a per-pixel scorer> "
            f"({', '.join(TILE_PREFIX + n for n in pixel)}) or {', '.join(TILE_PREFIX + d for d in TILE_DESCRIPTORS)}"
        )
    return scorer


def score_needs(name: str) -> tuple[str, ...]:
    """The model passes a (per-slice or per-tile) score name needs (subset of :data:`PASSES`)."""
    scorer = base_scorer(name)
    return ("proba",) if scorer is None else scorer.needs


def tile_edge(labels: np.ndarray, *, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` px (city-block) of an interface between two predicted phases.

    Parameters
    ----------
    labels : int (n, Y, X) predicted class ids.

    Returns
    -------
    bool (n, Y, X).
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    dy = labels[:, 1:, :] != labels[:, :-1, :]
    dx = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    if width > 1 and edge.any():
        cross = ndimage.generate_binary_structure(2, 1)[None]
        edge = ndimage.binary_dilation(edge, structure=cross, iterations=width - 1)
    return edge


def _needing(pass_: str, scorers: Sequence[Scorer]) -> str:
    """The quoted names of the scorers that need a pass, for messages: 'bald' or 'bald', 'mine'."""
    return ", ".join(repr(s.name) for s in scorers if pass_ in s.needs)


def _pixel_map(scorer: Scorer, passes: dict, maps: dict[str, np.ndarray]) -> np.ndarray:
    """A scorer's per-pixel map of one block, computed once (kept in ``maps``)."""
    if scorer.name not in maps:
        assert scorer.pixel is not None  # a Scorer has exactly one of pixel and per_slice
        maps[scorer.name] = scorer.pixel(passes)
    return maps[scorer.name]


def _select_slices(n_slices: int, slices, every: int, sample, rng) -> np.ndarray:
    ids = np.unique(check_slices(slices, n_slices))
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ConfigError(f"every must be a positive integer (score every k-th slice), got {every!r}")
    ids = ids[::every]
    if sample is not None:
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise ConfigError(f"sample must be None or a positive number of slices, got {sample!r}")
        if rng is None:
            raise ConfigError("sample= draws slices at random and needs rng (np.random.default_rng(seed))")
        if sample < ids.size:
            ids = np.sort(rng.choice(ids, int(sample), replace=False))
    return ids


def score_slices(
    model: ProbabilityModel,
    image,
    names: Sequence[str] | str,
    *,
    slices: Sequence[int] | np.ndarray | None = None,
    every: int = 1,
    sample: int | None = None,
    reference: ProbabilityModel | None = None,
    n_samples: int = 8,
    rng: np.random.Generator | None = None,
    reduction: str = "mean",
    q: float = 0.9,
    block: int = 8,
    max_block_bytes: int = 1 << 30,
    callback: Callable[[int, int], None] | None = None,
    tiles: TileGrid | None = None,
) -> dict[str, np.ndarray]:
    """Per-slice scores of a stack for the named scorers, for any :class:`ProbabilityModel`.

    Slices are processed in blocks of ``block``: every model pass a scorer needs is
    computed once per block and shared (entropy, margin, porosity and rf_disagreement
    use the same single pass), and no more than one block of ``T`` samples is held in
    memory.

    Parameters
    ----------
    model : the current model (the RF or the network).
    image : (Z, Y, X) stack.
    names : scorer names (see :func:`available_scorers`); one name may be a string.
    slices : global slice ids to consider (None = all), then thinned by ``every`` (keep
        every k-th) and ``sample`` (keep a random subset of that many; needs ``rng``).
    reference : second model for "rf_disagreement".
    n_samples : T for "bald" (needs an :class:`EnsembleModel` and ``rng``).
    reduction : "mean" | "quantile" | "boundary" (see :func:`reduce_slices`; the
        boundary weights come from the predicted pore probability). Porosity is always
        the fraction of pore pixels.
    q : quantile for ``reduction="quantile"``.
    block : at most this many slices per block; fewer when the block's largest pass
        (``T`` samples of ``C`` float32 maps) would exceed ``max_block_bytes`` (so large
        slices never multiply memory by ``T``), but at least one.
    callback : ``callback(done, total)`` after each block (in slices).
    tiles : the session's grid; needed by per-tile names (prefix :data:`TILE_PREFIX`):
        ``tile:<scorer>`` is the mean of a per-pixel scorer's map over each tile (whatever
        ``reduction``), ``tile:porosity`` the predicted pore fraction of each tile,
        ``tile:edge`` the fraction of its pixels within 2 px of a predicted phase interface
        (:func:`tile_edge`). They come from the same model passes as the per-slice scores.

    Returns
    -------
    dict name -> float32 (Z,), NaN for slices not scored; a per-tile name -> float32
    (Z, n_tiles), rows of NaN for slices not scored.
    """
    if isinstance(names, str):
        names = (names,)
    names = tuple(dict.fromkeys(names))
    tile_names = [n for n in names if is_tile_score(n)]
    for n in tile_names:
        base_scorer(n)  # an unknown per-tile name fails here
    if tile_names and tiles is None:
        raise ConfigError(f"per-tile scores {tile_names} need tiles= (the session's TileGrid)")
    names = tuple(n for n in names if not is_tile_score(n))
    tile_bases = {n: base_scorer(n) for n in tile_names}
    scorers = [get_scorer(n) for n in names]
    pixel_scorers = list({s.name: s for s in [*scorers, *(b for b in tile_bases.values() if b is not None)]}.values())
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if not isinstance(model, ProbabilityModel):
        raise ConfigError(f"model must provide n_classes and predict_proba(image, slices); got {type(model).__name__}")
    shape = check_stack(image)
    n_slices = shape[0]
    if tiles is not None and tile_names and (tiles.ny, tiles.nx) != tuple(shape[1:]):
        raise ConfigError(f"the tile grid is for {tiles.ny} x {tiles.nx} slices, the stack's are {shape[1]} x {shape[2]}")
    needs = {p for s in pixel_scorers for p in s.needs} | ({"proba"} if any(b is None for b in tile_bases.values()) else set())
    if "reference" in needs and reference is None:
        raise ConfigError(
            f"scorer {_needing('reference', pixel_scorers)} needs reference= (the second model to compare with)"
        )
    if reference is not None and "reference" in needs and not isinstance(reference, ProbabilityModel):
        raise ConfigError(f"reference must be a ProbabilityModel, got {type(reference).__name__}")
    if "samples" in needs:
        if not isinstance(model, EnsembleModel):
            raise ConfigError(
                f"scorer {_needing('samples', pixel_scorers)} needs stochastic samples, but {type(model).__name__} "
                "has no sample_proba"
            )
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
        if rng is None:
            raise ConfigError(
                f"scorer {_needing('samples', pixel_scorers)} draws random samples and needs rng "
                "(np.random.default_rng(seed))"
            )
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ConfigError(f"block must be a positive integer, got {block!r}")
    ids = _select_slices(n_slices, slices, every, sample, rng)
    copies = (("proba" in needs) + ("reference" in needs) + (int(n_samples) if "samples" in needs else 0)
              + (len(GENERIC_TTA) if "tta" in needs else 0))  # the passes of one block held at once
    per_slice_bytes = 4 * copies * int(model.n_classes) * int(shape[1]) * int(shape[2])
    block = max(1, min(int(block), int(max_block_bytes) // max(1, per_slice_bytes)))
    out = {n: np.full(n_slices, np.nan, dtype=np.float32) for n in names}
    for n in tile_names:
        assert tiles is not None  # checked above
        out[n] = np.full((n_slices, tiles.n_tiles), np.nan, dtype=np.float32)
    for b0 in range(0, ids.size, block):
        blk = ids[b0 : b0 + block]
        sl = blk.tolist()
        passes: dict[str, np.ndarray] = {}
        if "proba" in needs:
            passes["proba"] = np.asarray(model.predict_proba(image, sl), dtype=np.float32)
        if "reference" in needs:
            assert reference is not None  # checked above: a scorer that needs it has it
            passes["reference"] = np.asarray(reference.predict_proba(image, sl), dtype=np.float32)
        if "samples" in needs:
            # checked above: a scorer that needs samples has an EnsembleModel and an rng
            assert isinstance(model, EnsembleModel) and rng is not None
            samples = model.sample_proba(image, sl, n_samples=int(n_samples), rng=rng)
            passes["samples"] = np.asarray(samples, dtype=np.float32)
        if "tta" in needs:
            passes["tta"] = tta_samples(model, image, sl)
        pore = None
        if reduction == "boundary":
            if "proba" in passes:
                pore = passes["proba"][:, 1]
            else:
                src = passes["samples"] if "samples" in passes else passes["tta"]
                pore = src[:, :, 1].mean(axis=0)
        maps: dict[str, np.ndarray] = {}  # per-pixel maps, computed once for the slice and tile scores
        for s in scorers:
            if s.per_slice is not None:
                vals = s.per_slice(passes)
            else:
                vals = reduce_slices(_pixel_map(s, passes, maps), reduction, q=q, pore_prob=pore)
            out[s.name][blk] = vals
        for n, b in tile_bases.items():
            assert tiles is not None  # checked above
            if b is not None:
                out[n][blk] = tiles.reduce(_pixel_map(b, passes, maps))
                continue
            hard = passes["proba"].argmax(axis=1)
            what = n[len(TILE_PREFIX):]
            out[n][blk] = tiles.reduce((hard == 1) if what == "porosity" else tile_edge(hard))
        del passes, maps
        if callback is not None:
            callback(min(b0 + block, ids.size), int(ids.size))
    return out
