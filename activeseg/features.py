"""Pixel features for the Random Forest bootstrap stage (docs/architecture.md §1, §7).

An ilastik-style bank of 2D multi-scale filters per slice (Gaussian smoothing, gradient
magnitude, Laplacian of Gaussian, difference of Gaussians, Hessian and structure-tensor
eigenvalues) plus **z-context** features for pore-back: differences to smoothed
neighbouring slices, and **parallax** features that compare slice ``k`` with slice
``k + j`` shifted in y by ``j * shift_per_slice`` (a back wall seen as a ghost in slice
``k`` is cut ``j`` slices later, displaced by ``s * j * dz * cot(alpha)``; docs/architecture.md §7).

Features are float32 and computed per block of slices: only the requested slices and
their z-context neighbours are read, so memory does not grow with the stack depth.
Everything is vectorised with :mod:`scipy.ndimage` and numpy (no loops over pixels).

Shapes: images are ``(Z, Y, X)`` array-likes (numpy arrays, memmaps or lazy stacks from
:func:`activeseg.io.open_stack`); features are float32 ``(n, F, Y, X)`` for ``n``
requested slices, in the order requested. Slice ids are global z indices.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from activeseg.errors import ConfigError, StackError
from activeseg.geometry import Geometry, shift_rows
from activeseg.validation import check_slices, check_stack

__all__ = [
    "FeatureConfig",
    "compute_features",
    "iter_feature_blocks",
    "feature_names",
    "estimate_beam_sign",
    "adjacent_correlation",
    "resolve_geometry",
    "family_scales",
    "all_scales",
    "FAMILIES",
    "feature_embeddings",
]

log = logging.getLogger(__name__)

_NORMALISE = ("slice", "none")
FAMILIES = ("intensity", "gradient", "log", "dog", "hessian", "structure_tensor")
"""The 2D filter families of :class:`FeatureConfig`, in feature order within a scale."""


@dataclass(frozen=True)
class FeatureConfig:
    """Which pixel features to compute (JSON-able; stored with the RF spec).

    Parameters
    ----------
    scales : Gaussian scales in pixels of the 2D filter bank (ilastik uses 0.3..10):
        the scales of every family set to True.
    intensity, gradient, log, dog, hessian, structure_tensor : the filter families;
        each is True (at every scale of ``scales``), False, or a tuple of scales to
        compute it at exactly those (any positive scales):

        - intensity: Gaussian-smoothed intensity;
        - gradient: gradient magnitude of the smoothed image;
        - log: Laplacian of Gaussian;
        - dog: difference of Gaussians between a scale and the next larger scale used
          by any family (none for the largest);
        - hessian: the two Hessian eigenvalues;
        - structure_tensor: the two structure-tensor eigenvalues (gradient at half the
          smallest scale, integrated over the scale).
    z_offsets : neighbouring slices (relative z) whose smoothed intensity minus that of
        the slice itself is a feature (cut faces stay put between slices, ghosts move).
    z_sigma : in-plane Gaussian scale of the z-context and parallax images.
    parallax_offsets : offsets ``j`` of the parallax features ``G(k)(y) - G(k+j)(y +
        j * shift_per_slice)``: small where slice ``k`` shows, as a ghost, a wall that is
        cut ``j`` slices later (``j > 0``), or where a wall cut on slice ``k`` was seen as
        a ghost ``|j|`` slices earlier (``j < 0``). Needs the beam sign (estimated when
        not given).
    parallax_min : add ``min_j |parallax_j|`` (best depth match) as one more feature.
    normalise : "slice" maps each slice's 1st..99th intensity percentiles to 0..1
        (robust to per-slice gain/offset drift); "none" uses raw values as float32.
    truncate : Gaussian kernel radius in standard deviations.

    Notes
    -----
    The defaults (29 features) were chosen with ``benchmarks/bench_rf.py`` on hard
    synthetic pore-back volumes (BENCHMARKS.md, "RF bootstrap"): the parallax features,
    in both directions, carry most of the gain over 2D features; a 10 px scale, more
    z-difference offsets, the structure tensor and gradient / Hessian at every scale
    added no accuracy there but cost time. Add them back for other data if they help.
    """

    scales: tuple[float, ...] = (0.7, 1.6, 3.5, 5.0)
    intensity: bool | tuple[float, ...] = True
    gradient: bool | tuple[float, ...] = (0.7, 1.6)
    log: bool | tuple[float, ...] = (1.6, 3.5, 5.0)
    dog: bool | tuple[float, ...] = True
    hessian: bool | tuple[float, ...] = (1.6, 3.5, 5.0)
    structure_tensor: bool | tuple[float, ...] = False
    z_offsets: tuple[int, ...] = (-1, 1)
    z_sigma: float = 1.0
    parallax_offsets: tuple[int, ...] = (-3, -2, -1, 1, 2, 3, 4, 6, 8)
    parallax_min: bool = False
    normalise: str = "slice"
    truncate: float = 3.0

    def __post_init__(self) -> None:
        def floats(name, v):
            try:
                t = tuple(float(s) for s in v)
            except TypeError:
                raise ConfigError(f"FeatureConfig.{name} must be a sequence of numbers, got {v!r}") from None
            if any(not math.isfinite(s) or s <= 0 for s in t):
                raise ConfigError(f"FeatureConfig.{name} must hold positive scales in pixels, got {v!r}")
            return tuple(sorted(set(t)))

        def ints(name, v):
            try:
                t = tuple(int(s) for s in v)
            except TypeError:
                raise ConfigError(f"FeatureConfig.{name} must be a sequence of integers, got {v!r}") from None
            if any(s != float(s0) for s, s0 in zip(t, v)):
                raise ConfigError(f"FeatureConfig.{name} must hold integers (slice offsets), got {v!r}")
            if 0 in t:
                raise ConfigError(f"FeatureConfig.{name} must not contain 0 (the slice itself), got {v!r}")
            return tuple(sorted(set(t)))

        object.__setattr__(self, "scales", floats("scales", self.scales))
        for name in FAMILIES:
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)):
                object.__setattr__(self, name, bool(v))
                continue
            object.__setattr__(self, name, floats(name, v))
        object.__setattr__(self, "z_offsets", ints("z_offsets", self.z_offsets))
        object.__setattr__(self, "parallax_offsets", ints("parallax_offsets", self.parallax_offsets))
        if self.normalise not in _NORMALISE:
            raise ConfigError(f"FeatureConfig.normalise must be one of {_NORMALISE}, got {self.normalise!r}")
        if not (float(self.z_sigma) >= 0 and float(self.truncate) > 0):
            raise ConfigError(f"z_sigma must be >= 0 and truncate > 0, got {self.z_sigma}, {self.truncate}")
        if self.parallax_min and not self.parallax_offsets:
            object.__setattr__(self, "parallax_min", False)
        if not feature_names(self):
            raise ConfigError("FeatureConfig selects no features; enable at least one filter family")

    @property
    def n_features(self) -> int:
        """Number of feature channels ``F``."""
        return len(feature_names(self))

    @property
    def needs_beam_sign(self) -> bool:
        """True when the parallax features (which need the beam sign) are enabled."""
        return bool(self.parallax_offsets)

    @property
    def halo(self) -> tuple[int, int]:
        """How many slices before / after a slice its features read."""
        offs = self.z_offsets + self.parallax_offsets
        return (max([0] + [-o for o in offs]), max([0] + list(offs)))

    def two_d(self) -> FeatureConfig:
        """The same config without z-context or parallax features (2D only)."""
        return FeatureConfig(**{**self.to_dict(), "z_offsets": (), "parallax_offsets": (), "parallax_min": False})

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown feature config keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kwargs)


def _fmt(s: float) -> str:
    return f"{s:g}"


def family_scales(config: FeatureConfig, family: str) -> tuple[float, ...]:
    """Scales at which a filter family is computed (empty when it is off)."""
    v = getattr(config, family)
    if v is True:
        return config.scales
    if v is False:
        return ()
    return tuple(v)


def all_scales(config: FeatureConfig) -> tuple[float, ...]:
    """Every Gaussian scale the 2D bank uses, ascending."""
    used: set[float] = set()
    for name in FAMILIES:
        used.update(family_scales(config, name))
    return tuple(sorted(used))


def _bank_plan(config: FeatureConfig) -> list[tuple[float, float | None, set[str]]]:
    """(scale, next larger scale, families at that scale) for every scale in use."""
    scales = all_scales(config)
    fam = {name: set(family_scales(config, name)) for name in FAMILIES}
    plan = []
    for i, s in enumerate(scales):
        nxt = scales[i + 1] if i + 1 < len(scales) else None
        here = {name for name in FAMILIES if s in fam[name]}
        if nxt is None:
            here.discard("dog")
        if here:
            plan.append((s, nxt, here))
    return plan


def feature_names(config: FeatureConfig) -> list[str]:
    """Names of the ``F`` feature channels, in the order of :func:`compute_features`."""
    names: list[str] = []
    for s, nxt, here in _bank_plan(config):
        if "intensity" in here:
            names.append(f"gauss_s{_fmt(s)}")
        if "gradient" in here:
            names.append(f"gradmag_s{_fmt(s)}")
        if "log" in here:
            names.append(f"log_s{_fmt(s)}")
        if "dog" in here:
            assert nxt is not None  # _bank_plan drops "dog" at the largest scale
            names.append(f"dog_s{_fmt(s)}-{_fmt(nxt)}")
        if "hessian" in here:
            names += [f"hess_l1_s{_fmt(s)}", f"hess_l2_s{_fmt(s)}"]
        if "structure_tensor" in here:
            names += [f"st_l1_s{_fmt(s)}", f"st_l2_s{_fmt(s)}"]
    names += [f"zdiff_o{o:+d}" for o in config.z_offsets]
    names += [f"parallax_j{j:+d}" for j in config.parallax_offsets]
    if config.parallax_min:
        names.append("parallax_min")
    return names


# --- low-level filters ------------------------------------------------------------------


def _read(image, ids: Sequence[int], downsample: int = 1) -> np.ndarray:
    """Read slices ``ids`` (sorted unique) as float32 (n, Y', X')."""
    ids = [int(i) for i in ids]
    if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)):
        raw = np.asarray(image[ids[0] : ids[-1] + 1])
    else:
        raw = np.asarray(image[ids])
    raw = raw.astype(np.float32, copy=False)
    if downsample > 1:
        d = downsample
        n, y, x = raw.shape
        yy, xx = (y // d) * d, (x // d) * d
        if yy == 0 or xx == 0:
            raise ConfigError(f"downsample factor {d} is larger than the slice size {(y, x)}")
        raw = raw[:, :yy, :xx].reshape(n, yy // d, d, xx // d, d).mean(axis=(2, 4), dtype=np.float32)
    return raw


def _normalise(img: np.ndarray, how: str) -> np.ndarray:
    """Map the 1st..99th percentile of one slice to 0..1 (float32, new array)."""
    img = np.array(img, dtype=np.float32, copy=True)
    if how == "none":
        return img
    step = max(1, int(math.sqrt(img.size / 40_000)))
    lo, hi = np.percentile(img[::step, ::step], (1.0, 99.0))
    if not hi > lo:
        hi = lo + 1.0
    img -= np.float32(lo)
    img *= np.float32(1.0 / (hi - lo))
    return img


def _gauss(img: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=truncate, output=np.float32)


def _d_y(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Central difference along axis 0 (one-sided at the edges) into ``out``."""
    if a.shape[0] < 2:
        out[...] = 0
        return out
    np.subtract(a[2:], a[:-2], out=out[1:-1])
    out[1:-1] *= np.float32(0.5)
    np.subtract(a[1], a[0], out=out[0])
    np.subtract(a[-1], a[-2], out=out[-1])
    return out


def _d_x(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Central difference along axis 1 (one-sided at the edges) into ``out``."""
    if a.shape[1] < 2:
        out[...] = 0
        return out
    np.subtract(a[:, 2:], a[:, :-2], out=out[:, 1:-1])
    out[:, 1:-1] *= np.float32(0.5)
    np.subtract(a[:, 1], a[:, 0], out=out[:, 0])
    np.subtract(a[:, -1], a[:, -2], out=out[:, -1])
    return out


def _d2(a: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Second difference along ``axis`` (edges replicated) into ``out``."""
    if a.shape[axis] < 3:
        out[...] = 0
        return out
    b = a if axis == 0 else a.T
    o = out if axis == 0 else out.T
    np.add(b[2:], b[:-2], out=o[1:-1])
    o[1:-1] -= b[1:-1]
    o[1:-1] -= b[1:-1]
    np.subtract(b[1], b[0], out=o[0])
    np.subtract(b[-2], b[-1], out=o[-1])
    return out


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray, out1: np.ndarray, out2: np.ndarray, tmp: np.ndarray) -> None:
    """Eigenvalues (larger, smaller) of the symmetric 2x2 field [[a, b], [b, c]].

    ``out1``, ``out2`` and ``tmp`` must not alias the inputs.
    """
    np.subtract(a, c, out=out2)
    out2 *= np.float32(0.5)
    np.multiply(out2, out2, out=out2)
    np.multiply(b, b, out=tmp)
    out2 += tmp
    np.sqrt(out2, out=out2)  # root
    np.add(a, c, out=out1)
    out1 *= np.float32(0.5)  # half trace
    np.subtract(out1, out2, out=tmp)
    out1 += out2
    out2[...] = tmp


def _bank_2d(img: np.ndarray, config: FeatureConfig, out: np.ndarray) -> int:
    """Write the 2D filter bank of one normalised slice into ``out[0:]``; returns the count."""
    plan = _bank_plan(config)
    if not plan:
        return 0
    k = 0
    tr = config.truncate
    gy, gx, hyy, hxx, tmp = (np.empty_like(img) for _ in range(5))
    if any("structure_tensor" in here for _, _, here in plan):
        g0 = _gauss(img, plan[0][0] * 0.5, tr)
        _d_y(g0, gy)
        _d_x(g0, gx)
        jyy, jxx, jxy = gy * gy, gx * gx, gy * gx
    smoothed: dict[float, np.ndarray] = {}

    def g_at(s: float) -> np.ndarray:
        if s not in smoothed:
            smoothed[s] = _gauss(img, s, tr)
        return smoothed[s]

    for s, nxt, here in plan:
        for done in [q for q in smoothed if q < s]:
            del smoothed[done]
        g = g_at(s)
        if "intensity" in here:
            out[k] = g
            k += 1
        if "gradient" in here or "hessian" in here:
            _d_y(g, gy)
        if "gradient" in here:
            _d_x(g, gx)
            np.hypot(gy, gx, out=out[k])
            out[k] *= np.float32(s)  # scale-normalised derivatives (comparable over scales)
            k += 1
        if "log" in here or "hessian" in here:
            _d2(g, 0, hyy)
            _d2(g, 1, hxx)
        if "log" in here:
            np.add(hyy, hxx, out=out[k])
            out[k] *= np.float32(s * s)
            k += 1
        if "dog" in here:
            assert nxt is not None  # _bank_plan drops "dog" at the largest scale
            np.subtract(g, g_at(nxt), out=out[k])
            k += 1
        if "hessian" in here:
            hxy = _d_x(gy, gx)
            _eig2(hyy, hxy, hxx, out[k], out[k + 1], tmp)
            out[k : k + 2] *= np.float32(s * s)
            k += 2
        if "structure_tensor" in here:
            _eig2(_gauss(jyy, s, tr), _gauss(jxy, s, tr), _gauss(jxx, s, tr), out[k], out[k + 1], tmp)
            out[k : k + 2] *= np.float32((plan[0][0] * 0.5) ** 2)
            k += 2
    return k


# --- geometry: beam sign ------------------------------------------------------------------


def _parallax_step(geometry: Geometry) -> float:
    """Unsigned ghost shift in y pixels per slice."""
    return abs(geometry.shift_per_slice)


def estimate_beam_sign(
    image,
    *,
    geometry: Geometry | None = None,
    n_pairs: int = 32,
    sigma: float | None = None,
    return_evidence: bool = False,
):
    """Estimate the beam sign ``s`` from the stack: the direction ghosts move between slices.

    Cut faces stay put between aligned slices while ghosts (back walls seen through
    pores) move by ``s * dz * cot(alpha)`` pixels in y per slice, so slice ``k + 1``
    is slice ``k`` partly shifted towards ``s * y``. For ``n_pairs`` evenly spaced pairs
    of consecutive slices this fits one global y-flow by least squares (Lucas-Kanade:
    ``t = sum((G_k - G_k+1) * dG_k+1/dy) / sum((dG_k+1/dy)^2)`` on Gaussian-smoothed,
    per-slice normalised slices, so ``G_k(y) ~ G_k+1(y + t)``) and returns its sign.
    Static cut faces, curtains (constant along y) and gain drift contribute no net flow;
    every moving ghost pulls ``t`` towards ``s * |shift|``. This is the same convention
    as the parallax features (:func:`iter_feature_blocks`).

    Parameters
    ----------
    image : (Z, Y, X) array-like with at least 2 slices.
    geometry : voxel size and beam angle (the sign in it is ignored); default isotropic, 52°.
    n_pairs : pairs of consecutive slices used (evenly spaced over the stack).
    sigma : smoothing scale in pixels (default ``max(1, 1.5 |shift|)``, so the
        linearisation holds).
    return_evidence : also return the evidence: the z-score ``|mean| / standard error``
        of the per-pair flows (below about 2 the sign is not reliable: few or faint
        ghosts, e.g. when ghosts fade within a slice; a warning is logged then).

    Returns
    -------
    int, +1 or -1 (and the evidence, a float, when ``return_evidence``).
    """
    z, y, _ = check_stack(image)
    if z < 2:
        raise StackError(
            f"cannot estimate the beam sign from {z} slice(s); give geometry.beam_sign (+1 or -1) "
            "or turn off parallax features (FeatureConfig(parallax_offsets=()))"
        )
    geometry = geometry or Geometry()
    step = _parallax_step(geometry)
    sigma = max(1.0, 1.5 * step) if sigma is None else float(sigma)
    ks = np.unique(np.linspace(0, z - 2, num=min(n_pairs, z - 1)).round().astype(int))
    nums, dens = [], []
    for k in ks:
        a, b = (_gauss(_normalise(sl, "slice"), sigma, 3.0) for sl in _read(image, [int(k), int(k) + 1]))
        by = _d_y(b, np.empty_like(b))
        m = int(math.ceil(3 * sigma)) + 1  # rows touched by the reflecting border
        if y <= 2 * m + 2:
            m = 1
        diff, grad = (a - b)[m:-m], by[m:-m]
        nums.append(float(np.sum(diff * grad, dtype=np.float64)))
        dens.append(float(np.sum(grad * grad, dtype=np.float64)))
    nums_a, dens_a = np.array(nums), np.array(dens)
    t = float(nums_a.sum() / dens_a.sum()) if dens_a.sum() > 0 else 0.0
    sign = +1 if t >= 0 else -1
    # consistency over pairs: z-score of the mean per-pair flow
    per_pair = nums_a / np.where(dens_a > 0, dens_a, 1.0)
    if per_pair.size > 1 and per_pair.std() > 0:
        evidence = float(abs(per_pair.mean()) / (per_pair.std(ddof=1) / math.sqrt(per_pair.size)))
    else:
        evidence = float("inf") if t != 0 else 0.0
    log.debug("beam sign: y-flow %.4f px per slice (|shift| %.3f, z %.1f) -> %+d", t, step, evidence, sign)
    if evidence < 2.0:
        log.warning(
            "beam sign estimate %+d is uncertain (ghost motion z-score %.1f over %d slice pairs); "
            "set geometry.beam_sign if it is known", sign, evidence, per_pair.size,
        )
    return (sign, evidence) if return_evidence else sign


def adjacent_correlation(image, *, n_pairs: int = 8, max_side: int = 256, sigma: float = 1.0) -> np.ndarray:
    """Pearson r of pairs of adjacent slices: how much a stack looks like a z-stack.

    Neighbouring slices of a FIB-SEM z-stack (a few nm apart) show nearly the same cut
    faces, so their correlation is high; unrelated 2D sections stacked into one file
    barely correlate. For ``n_pairs`` evenly spaced pairs ``(k, k + 1)`` each slice is
    block-averaged to at most ``max_side`` pixels a side, smoothed (Gaussian ``sigma``
    px, against noise), and its slow background (Gaussian of an eighth of the image
    side, shading and charging that unrelated sections may share) subtracted before
    the correlation. Cheap: ``2 * n_pairs`` slices are read.

    Parameters
    ----------
    image : (Z, Y, X) array-like.
    n_pairs : at most this many pairs (fewer when the stack has fewer slices).
    max_side : downsampling target in pixels (the larger side).
    sigma : smoothing scale in pixels, after downsampling.

    Returns
    -------
    float64 ``(n,)`` correlations, one per pair (empty for a single slice; 0 for a pair
    where either slice is constant).
    """
    z, y, x = check_stack(image)
    if z < 2:
        return np.zeros(0, dtype=np.float64)
    if n_pairs < 1 or max_side < 8:
        raise ConfigError(f"n_pairs must be >= 1 and max_side >= 8, got {n_pairs} and {max_side}")
    d = max(1, math.ceil(max(y, x) / max_side))
    ks = np.unique(np.linspace(0, z - 2, num=min(n_pairs, z - 1)).round().astype(int))
    background = max(y, x) / d / 8.0
    out = []
    for k in ks:
        a, b = (_gauss(sl, sigma, 3.0) - _gauss(sl, background, 3.0) for sl in _read(image, [int(k), int(k) + 1], d))
        a = a.ravel().astype(np.float64)
        b = b.ravel().astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        den = math.sqrt(float(a @ a) * float(b @ b))
        out.append(float(a @ b) / den if den > 0 else 0.0)
    return np.array(out, dtype=np.float64)


def resolve_geometry(image, geometry: Geometry | None, config: FeatureConfig | None = None) -> Geometry:
    """Return ``geometry`` with the beam sign set, estimating it from ``image`` when needed.

    The sign is only needed (and only estimated) when ``config`` has parallax features.
    Call this once per stack and keep the result (the session stores it), rather than
    letting every :func:`compute_features` call estimate it again.
    """
    geometry = geometry or Geometry()
    if geometry.beam_sign is None and (config is None or config.needs_beam_sign):
        if check_stack(image)[0] < 2:
            return geometry.with_sign(1)
        sign = estimate_beam_sign(image, geometry=geometry)
        log.info("estimated beam sign %+d", sign)
        geometry = geometry.with_sign(sign)
    return geometry


# --- the feature stream -------------------------------------------------------------------


def iter_feature_blocks(
    image,
    slices: Sequence[int] | np.ndarray | None = None,
    *,
    config: FeatureConfig = FeatureConfig(),
    geometry: Geometry | None = None,
    block: int = 4,
    downsample: int = 1,
    buffers: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream features of ``slices`` in blocks, reading only what they need.

    Parameters
    ----------
    image : (Z, Y, X) array-like.
    slices : global slice ids (any order, duplicates ignored); default all.
    config : which features.
    geometry : voxel size, beam angle and sign; a missing sign is estimated once here
        (see :func:`resolve_geometry`).
    block : slices per yielded block (memory: ``block * F * Y * X * 4`` bytes).
    downsample : block-average each slice by this factor in y and x first (for cheap
        embeddings); the parallax shift is scaled accordingly.
    buffers : 0 = every block is a fresh array; ``n >= 1`` = blocks are written into
        ``n`` preallocated buffers in turn (saves allocating and page-faulting
        ``block * F * Y * X * 4`` bytes per block), so a yielded array is only valid
        until ``n`` more blocks have been produced.

    Yields
    ------
    (ids, feats): int64 (b,) sorted slice ids and float32 (b, F, Y', X') features.
    """
    z, _, _ = check_stack(image)
    ids = np.unique(check_slices(slices, z))
    if block < 1:
        raise ConfigError(f"block must be >= 1, got {block}")
    if config.needs_beam_sign:
        geometry = resolve_geometry(image, geometry, config)
    geometry = geometry or Geometry()
    step = geometry.shift_per_slice / downsample
    ctx_offsets = sorted(set(config.z_offsets) | set(config.parallax_offsets))
    n_feat = config.n_features
    n_pz = len(config.parallax_offsets)
    if buffers < 0:
        raise ConfigError(f"buffers must be >= 0, got {buffers}")
    ring: list[np.ndarray] = []
    n_blocks = 0
    # per-slice cache of normalised (and z-smoothed) images, reused across blocks
    cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
    keep = config.halo[0] + config.halo[1] + block  # the z window of one block

    def get(zs: list[int]) -> None:
        missing = [q for q in zs if q not in cache]
        if missing:
            # read contiguous runs together
            runs, run = [], [missing[0]]
            for q in missing[1:]:
                if q == run[-1] + 1:
                    run.append(q)
                else:
                    runs.append(run)
                    run = [q]
            runs.append(run)
            for r in runs:
                raw = _read(image, r, downsample)
                for q, sl in zip(r, raw):
                    norm = _normalise(sl, config.normalise)
                    ctx = _gauss(norm, config.z_sigma, config.truncate) if ctx_offsets else norm
                    cache[q] = (norm, ctx)
        for q in zs:
            cache.move_to_end(q)
        while len(cache) > max(keep, len(zs)):
            cache.popitem(last=False)

    for b0 in range(0, ids.size, block):
        chunk = ids[b0 : b0 + block]
        need = sorted({int(k) for k in chunk} | {min(max(int(k) + o, 0), z - 1) for k in chunk for o in ctx_offsets})
        get(need)
        ny, nx = cache[int(chunk[0])][0].shape
        if buffers:
            slot = n_blocks % buffers
            if slot >= len(ring):
                ring.append(np.empty((block, n_feat, ny, nx), dtype=np.float32))
            feats = ring[slot][: chunk.size]
            n_blocks += 1
        else:
            feats = np.empty((chunk.size, n_feat, ny, nx), dtype=np.float32)
        for i, k in enumerate(chunk):
            k = int(k)
            norm, ctx = cache[k]
            f = _bank_2d(norm, config, feats[i])
            for o in config.z_offsets:
                other = cache[min(max(k + o, 0), z - 1)][1]
                np.subtract(other, ctx, out=feats[i, f])
                f += 1
            p0 = f
            for j in config.parallax_offsets:
                other = cache[min(max(k + j, 0), z - 1)][1]
                np.subtract(ctx, shift_rows(other, j * step), out=feats[i, f])
                f += 1
            if config.parallax_min:
                np.min(np.abs(feats[i, p0 : p0 + n_pz]), axis=0, out=feats[i, f])
                f += 1
            if f != n_feat:  # pragma: no cover - internal consistency
                raise RuntimeError(f"feature count mismatch: wrote {f}, expected {n_feat}")
        yield chunk, feats


def compute_features(
    image,
    slices: Sequence[int] | np.ndarray | None = None,
    *,
    config: FeatureConfig = FeatureConfig(),
    geometry: Geometry | None = None,
    block: int = 4,
) -> np.ndarray:
    """Features of the requested slices, float32 ``(n, F, Y, X)`` in the order given.

    Computed block by block (see :func:`iter_feature_blocks`); the result itself is
    ``n * F * Y * X * 4`` bytes, so ask for a few slices at a time on big stacks. When
    ``geometry.beam_sign`` is None and parallax features are on, the sign is estimated
    from the stack on every call; resolve it once with :func:`resolve_geometry` instead.
    """
    z, y, x = check_stack(image)
    req = check_slices(slices, z)
    out = np.empty((req.size, config.n_features, y, x), dtype=np.float32)
    if req.size == 0:
        return out
    where: dict[int, list[int]] = {}
    for i, k in enumerate(req):
        where.setdefault(int(k), []).append(i)
    for ids, feats in iter_feature_blocks(image, req, config=config, geometry=geometry, block=block):
        for k, f in zip(ids, feats):
            out[where[int(k)]] = f
    return out


def feature_embeddings(
    image,
    slices: Sequence[int] | np.ndarray | None = None,
    *,
    config: FeatureConfig = FeatureConfig(),
    geometry: Geometry | None = None,
    downsample: int = 2,
    block: int = 8,
) -> np.ndarray:
    """Per-slice embeddings from pooled feature statistics, float32 ``(n, D)``.

    For each feature channel: its mean, its standard deviation, and the 10/50/90th
    percentiles (``D = 5 F``), computed on slices block-averaged by ``downsample``
    (cheap, and structure statistics barely change). The query strategies use these
    for diversity before any network exists. Rows follow ``slices`` order. Columns have
    different units; standardise them across the pool before using Euclidean distances.
    """
    z, _, _ = check_stack(image)
    req = check_slices(slices, z)
    if downsample < 1:
        raise ConfigError(f"downsample must be >= 1, got {downsample}")
    n_feat = config.n_features
    emb = np.empty((req.size, 5 * n_feat), dtype=np.float32)
    if req.size == 0:
        return emb
    where: dict[int, list[int]] = {}
    for i, k in enumerate(req):
        where.setdefault(int(k), []).append(i)
    for ids, feats in iter_feature_blocks(
        image, req, config=config, geometry=geometry, block=block, downsample=downsample
    ):
        flat = feats.reshape(feats.shape[0], n_feat, -1)
        stats = [
            flat.mean(axis=2, dtype=np.float64),
            flat.std(axis=2, dtype=np.float64),
            *np.percentile(flat, (10, 50, 90), axis=2),
        ]
        e = np.concatenate(stats, axis=1).astype(np.float32)
        for k, row in zip(ids, e):
            emb[where[int(k)]] = row
    return emb
