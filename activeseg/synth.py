"""Synthetic FIB-SEM volumes with pore-back (shine-through) artifacts and ground truth.

The simulator follows the physics of docs/architecture.md §7. The frame is ``z`` = milling direction
(slice 0 milled first), ``y`` = image vertical, ``x`` = image horizontal; the electron
beam makes angle ``alpha`` with the cut face, direction ``b = (sin a, s cos a, 0)``.

Pipeline
--------
1. **Structure** (:func:`make_structure`): a boolean solid mask over an *extended block*
   ``(Z + M, Y + pad, X)``: ``M`` = march limit (slices of material behind the last
   slice that the last slices can see) and ``pad = ceil(M |c|) + 1`` rows on the side
   the beam travels to, with ``c`` = :attr:`Geometry.shift_per_slice`, so a ray from
   the truth window never leaves the generated block. The truth is the ``(Z, Y, X)``
   window; its porosity is exact (quantile threshold on the window, +-0.002).
   ``blobs`` = thresholded Gaussian random field, ``spheres`` = polydisperse sintered
   particles (spheres joined by necks along a minimum spanning tree), ``fibres`` =
   random straight cylinders (optionally lying mostly in x-z planes, as in a membrane).
   With ``connected=True`` (default) solid not attached to the largest component is
   removed and the threshold re-tuned, so there are no floating islands. With
   ``phases=3`` a second random field splits the solid into two phases
   (:func:`split_solid`, ``phase_fraction`` of the solid is the second one); the truth
   is then 0 = first solid, 1 = pore, 2 = second solid.
   ``membrane`` = a layered, asymmetric membrane (:func:`membrane_layers`): a dense skin
   (``skin_porosity``, pores ``skin_scale`` times smaller) from row 0 (``layer_axis``
   "y") or slice 0 ("z") over a support of the requested porosity, with a graded layer
   between; two random fields mixed along that axis, thresholded row by row (slice by
   slice) to the layer's porosity.
2. **Ray march** (:func:`march`): the first solid voxel along the beam behind every
   pixel. In the sheared frame ``u = y - round(z c)`` every ray is a straight column
   along ``z``, so one reverse scan over the slices ("next solid slice in this column")
   answers all rays at once: O(volume), independent of the march limit.
3. **Signal** (:func:`render`), in full-scale units (1.0 = brightest digital value):

   - cut face (solid on slice k): ``Y (1 + eps * rim) (1 + curtain)`` (``Y`` times
     ``phase_yield`` on the second solid phase, here and on the back walls it forms); ``rim`` is the
     local pore fraction within ``edge_width`` px (Gaussian window) on the slice, which
     brightens pore edges and more so convex corners (more free surface nearby);
   - pore with a back wall at depth ``d`` slices: ``I_floor + Y * Phi * A(d)``, depth law
     ``A = exp(-d / l)`` or ``l^2 / (l^2 + d^2)`` (``l`` = ``depth_length`` in slices of
     depth; path length ``t* = d dz / sin a``). ``Phi = 1 - shading + shading * cos(theta)
     / sin(a)`` with ``theta`` the incidence angle on the visible back wall. The normal
     comes from the (smoothed) back-wall depth map ``D(y, x)``: the visible surface is
     ``P = (k + D, y + c D, x)``, and ``cos(theta) / sin(a) = 1 / sqrt((1 + s cot(a) r D_y)^2
     + (r D_y)^2 + (q D_x)^2)`` with ``r = dz/dy``, ``q = dz/dx``. A wall parallel to the
     face gives ``Phi = 1``; grazing walls and occlusion edges are darker.
   - pore without a hit within the march limit: ``I_floor``.
   - deeper ghosts are blurrier: Gaussian of ``ghost_blur * sqrt(d)`` px (interpolated
     between a few blurred copies); ghosts are rendered at the exact sub-pixel parallax,
     so between consecutive slices they move by ``c`` px in y while cut faces stay.

4. **Instrument**: PSF blur (``psf_sigma``), curtaining (multiplicative stripes on the
   cut face, a profile along x constant along y, drifting over ~24 slices), charging
   (smooth low-frequency additive field), shot noise (``dose`` electrons per pixel at full
   scale; exact Poisson below 20 counts, Gaussian with the Poisson variance above),
   per-slice gain/offset drift (random walks), Gaussian read noise, then quantisation:
   ``value = round(clip(I, 0, 1) * (2**bit_depth - 1))``. An imaging change along z
   (``drift``, :func:`drift_factors`) scales the back walls' signal relative to the cut
   face and the detector gain ("contrast"), or the curtain amplitude ("curtaining"), by
   deterministic per-slice factors; the random draws stay those of the same seed without it.

The depth map (docs/architecture.md §8) holds 0 on solid, the back-wall depth in slices on pores
(integer, ``1 .. march_limit``), and -1 where no wall was hit within the march limit (or
the ray left the volume, for user volumes rendered without margins).

All lengths of the structure knobs are in in-plane pixels (``dy``); the structures are
isotropic in physical space, so along z they are scaled by ``dy / dz``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import Delaunay, QhullError, cKDTree

from activeseg.errors import ConfigError
from activeseg.geometry import Geometry, shift_rows
from activeseg.io import read_stack, write_stack
from activeseg.safety import atomic_write_text

__all__ = [
    "STRUCTURES",
    "ALL_STRUCTURES",
    "LAYER_AXES",
    "DRIFTS",
    "DIFFICULTIES",
    "DEPTH_LAWS",
    "SynthParams",
    "SynthVolume",
    "difficulty_params",
    "make_params",
    "structure_margin",
    "make_structure",
    "membrane_layers",
    "split_solid",
    "drift_factors",
    "march",
    "render",
    "render_volume",
    "synthesize",
    "save_synth",
    "load_synth",
    "measure_ghost_shift",
]

logger = logging.getLogger(__name__)

STRUCTURES: tuple[str, ...] = ("blobs", "spheres", "fibres")  # stationary: the window's porosity is exact
# a layered, asymmetric membrane: a dense skin with small pores over a porous support
ALL_STRUCTURES: tuple[str, ...] = (*STRUCTURES, "membrane")
LAYER_AXES: tuple[str, ...] = ("y", "z")
DRIFTS: tuple[str, ...] = ("none", "contrast", "curtaining", "both")
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
DEPTH_LAWS: tuple[str, ...] = ("exp", "lorentz")

SCHEMA_VERSION = 1
_NORMAL_SIGMA = 1.0  # px, smoothing of the back-wall depth map before taking its gradient
_CURTAIN_PERIOD = 24  # slices between independent curtain profiles (linearly interpolated)
_CURTAIN_WIDTH = 1.2  # px, Gaussian correlation of the curtain profile along x
_CHARGING_CELLS = 3.0  # charging: about this many bright/dark patches across the image
_CHARGING_PERIOD = 32  # slices over which the charging pattern changes
_SLAB = 16  # slices rendered at once (keeps memory bounded; fixed for determinism)
_EXACT_POISSON_BELOW = 20.0  # counts
# imaging drift along z (drift_factors), per unit drift_strength, over the stack (t = 0 top .. 1 bottom)
_DRIFT_WALL = 0.6  # back-wall signal relative to the cut face: 1 + 0.6 s (t - 1/2)
_DRIFT_GAIN = 0.3  # detector gain: 1 - 0.3 s (t - 1/2) (the signal falls as the trench deepens)
_DRIFT_CURTAIN = 3.0  # curtaining amplitude: 1 + 3 s t (the milled trench grows deeper)


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the simulator (a frozen value; JSON via :meth:`to_dict`).

    Defaults are the "medium" imaging preset; :func:`difficulty_params` gives the
    others. Lengths are in in-plane pixels unless stated; intensities in full-scale
    units (1.0 = brightest digital value).

    Parameters
    ----------
    structure : "blobs" | "spheres" | "fibres" | "membrane".
    porosity : requested pore fraction of the truth window, in (0, 1); for "membrane"
        the porosity of the support (the skin has ``skin_porosity``).
    porosity_gradient : blobs: porosity of the last slice minus that of the first; the
        porosity ramps linearly along z around ``porosity`` (which stays the window's
        exact mean), so the material itself changes with depth, like a graded or
        asymmetric membrane. 0 = statistically the same material everywhere.
    corr_length : blobs: standard deviation (px) of the Gaussian that correlates the
        random field; pores and walls are a few times this wide.
    particle_radius : spheres: mean particle radius (px).
    fibre_radius : fibres: mean cylinder radius (px).
    radius_spread : relative standard deviation of particle / fibre radii (lognormal).
    neck_ratio : spheres: radius of the sinter necks joining particles along a minimum
        spanning tree, relative to the smaller particle (0 = no necks).
    fibre_inplane : fibres: 0 = isotropic orientations, 1 = all fibres lie in x-z
        planes (normal along y, like a layered membrane seen in cross-section).
    connected : remove solid that is not attached to the largest solid component (and
        re-tune the threshold so the porosity stays exact).
    alpha_deg : angle between electron beam and cut face (52 FEI/Thermo, 54 Zeiss).
    beam_sign : +1 or -1, sign of the beam's y component.
    voxel_size : (z, y, x) voxel size in nm.
    march_limit : how many slices deep a ray may look for a back wall (M).
    depth_law : "exp" (``A = exp(-d/l)``) or "lorentz" (``A = l^2/(l^2+d^2)``, flat top:
        near walls at ``A ~ 1``, i.e. as bright as the cut face).
    depth_length : ``l`` of the depth law, in slices of depth.
    face_yield : signal of a flat cut face (``Y``).
    pore_floor : signal of a pore without visible back wall (``I_floor``).
    edge_eps, edge_width : edge brightening of the cut face next to pores (relative
        amplitude and width in px).
    shading : weight of the incidence-angle term ``Phi`` on back walls (0 = flat).
    texture : relative amplitude of the contrast of back walls (roughness of the
        natural pore surfaces): a random field attached to the solid, so it travels
        with the wall's parallax.
    face_texture : relative amplitude of the same field on the (ion-polished) cut face,
        static between slices.
    texture_length : correlation length of that texture (px).
    ghost_blur : blur of a ghost at depth d is ``ghost_blur * sqrt(d)`` px.
    psf_sigma : Gaussian beam spot (px).
    curtain_amp : relative amplitude of curtaining stripes on the cut face.
    charging_amp : amplitude of the low-frequency charging field.
    drift_gain, drift_offset : per-slice random-walk steps of detector gain (relative)
        and offset (full-scale units).
    dose : electrons per pixel at full-scale signal (shot noise); 0 = no shot noise.
    read_noise : standard deviation of the Gaussian read noise.
    bit_depth : 8 or 16.
    phases : 2 (solid / pore) or 3: the solid is split into two phases by a second
        random field (blobs, ``corr_length``): label 0 = first solid, 1 = pore, 2 =
        second solid (docs/architecture.md §3).
    phase_fraction : phases = 3: fraction of the solid that is the second solid phase.
    phase_yield : phases = 3: secondary-electron yield of the second solid relative to
        the first (its cut faces and the back walls it forms are this much as bright).
    skin_fraction : membrane: the skin's share of the volume along ``layer_axis``
        (from row / slice 0).
    skin_porosity : membrane: porosity of the skin.
    skin_scale : membrane: pore size of the skin relative to the support's (its random
        field is correlated over ``corr_length * skin_scale``).
    transition_fraction : membrane: share of the graded layer between skin and support
        (porosity and pore size ramp linearly across it).
    layer_axis : membrane: "y" (default; the skin is a band of image rows from row 0,
        so every slice holds skin and support, as when the block face cuts across the
        membrane) or "z" (the skin is the first slices milled).
    drift : imaging change along z: "none", "contrast" (the back walls' signal relative
        to the cut face grows with depth and the detector gain falls), "curtaining"
        (the curtain stripes' amplitude grows with depth) or "both"
        (:func:`drift_factors`). The truth is unchanged.
    drift_strength : scale of that change, in [0, 3] (1 = the default strength).
    """

    structure: str = "blobs"
    porosity: float = 0.8
    porosity_gradient: float = 0.0
    corr_length: float = 4.0
    particle_radius: float = 6.0
    fibre_radius: float = 2.5
    radius_spread: float = 0.25
    neck_ratio: float = 0.45
    fibre_inplane: float = 0.0
    connected: bool = True
    alpha_deg: float = 52.0
    beam_sign: int = 1
    voxel_size: tuple[float, float, float] = (10.0, 10.0, 10.0)
    march_limit: int = 32
    depth_law: str = "exp"
    depth_length: float = 2.5
    face_yield: float = 0.55
    pore_floor: float = 0.10
    edge_eps: float = 0.2
    edge_width: float = 1.5
    shading: float = 0.5
    texture: float = 0.25
    face_texture: float = 0.08
    texture_length: float = 1.5
    ghost_blur: float = 0.4
    psf_sigma: float = 0.8
    curtain_amp: float = 0.04
    charging_amp: float = 0.03
    drift_gain: float = 0.004
    drift_offset: float = 0.002
    dose: float = 200.0
    read_noise: float = 0.02
    bit_depth: int = 8
    phases: int = 2
    phase_fraction: float = 0.4
    phase_yield: float = 0.6
    skin_fraction: float = 0.25
    skin_porosity: float = 0.25
    skin_scale: float = 0.4
    transition_fraction: float = 0.1
    layer_axis: str = "y"
    drift: str = "none"
    drift_strength: float = 1.0

    def __post_init__(self) -> None:
        _validate_params(self)

    @property
    def geometry(self) -> Geometry:
        """The acquisition geometry (voxel size, beam angle, beam sign)."""
        return Geometry(voxel_size=self.voxel_size, alpha_deg=self.alpha_deg, beam_sign=self.beam_sign)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all knobs (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["voxel_size"] = list(self.voxel_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynthParams:
        """Inverse of :meth:`to_dict`; keys that are not knobs are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "voxel_size" in kw and kw["voxel_size"] is not None:
            kw["voxel_size"] = tuple(float(v) for v in kw["voxel_size"])
        return cls(**kw)


def _knob_names() -> list[str]:
    return [f.name for f in fields(SynthParams)]


def _num(p: SynthParams, name: str, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False, hint: str = "") -> None:
    v = getattr(p, name)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}{hint}")
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ConfigError(f"{name} must be in {rng}, got {v!r}{hint}")


def _validate_params(p: SynthParams) -> None:
    if p.structure not in ALL_STRUCTURES:
        raise ConfigError(f"structure must be one of {', '.join(ALL_STRUCTURES)}; got {p.structure!r}")
    _num(p, "porosity", 0.0, 1.0, lo_open=True, hi_open=True,
         hint="; porosity is the pore fraction, e.g. 0.8 for 80 % pores")
    _num(p, "porosity_gradient", -0.9, 0.9)
    if p.porosity_gradient != 0:
        if p.structure != "blobs":
            raise ConfigError(f"porosity_gradient is available for structure 'blobs' only, got {p.structure!r}")
        ends = (p.porosity - p.porosity_gradient / 2, p.porosity + p.porosity_gradient / 2)
        if not (0.05 - 1e-9 <= min(ends) and max(ends) <= 0.95 + 1e-9):
            raise ConfigError(
                f"porosity {p.porosity} with porosity_gradient {p.porosity_gradient} ramps from {ends[0]:.3f} to "
                f"{ends[1]:.3f}; both ends must lie in [0.05, 0.95]: use a smaller gradient"
            )
    _num(p, "corr_length", 0.5, 1000)
    _num(p, "particle_radius", 1.0, 1000)
    _num(p, "fibre_radius", 0.5, 1000)
    _num(p, "radius_spread", 0.0, 2.0)
    _num(p, "neck_ratio", 0.0, 1.0)
    _num(p, "fibre_inplane", 0.0, 1.0)
    if not isinstance(p.connected, (bool, np.bool_)):
        raise ConfigError(f"connected must be True or False, got {p.connected!r}")
    if p.beam_sign not in (1, -1) or isinstance(p.beam_sign, bool):
        raise ConfigError(f"beam_sign must be +1 or -1 for a simulation, got {p.beam_sign!r}")
    try:
        Geometry(voxel_size=p.voxel_size, alpha_deg=p.alpha_deg, beam_sign=p.beam_sign)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    object.__setattr__(p, "voxel_size", tuple(float(v) for v in p.voxel_size))
    if isinstance(p.march_limit, bool) or not isinstance(p.march_limit, (int, np.integer)) or not 1 <= p.march_limit <= 4096:
        raise ConfigError(f"march_limit must be an integer number of slices in [1, 4096], got {p.march_limit!r}")
    object.__setattr__(p, "march_limit", int(p.march_limit))
    if p.depth_law not in DEPTH_LAWS:
        raise ConfigError(f"depth_law must be one of {', '.join(DEPTH_LAWS)}; got {p.depth_law!r}")
    _num(p, "depth_length", 0.0, None, lo_open=True, hint=" (slices of depth)")
    _num(p, "face_yield", 0.0, 1.0, lo_open=True)
    _num(p, "pore_floor", 0.0, 1.0)
    _num(p, "edge_eps", 0.0, 10.0)
    _num(p, "edge_width", 0.0, 100.0, lo_open=True)
    _num(p, "shading", 0.0, 1.0)
    _num(p, "texture", 0.0, 1.0)
    _num(p, "face_texture", 0.0, 1.0)
    _num(p, "texture_length", 0.3, 50.0)
    _num(p, "ghost_blur", 0.0, 20.0)
    _num(p, "psf_sigma", 0.0, 20.0)
    _num(p, "curtain_amp", 0.0, 1.0)
    _num(p, "charging_amp", 0.0, 1.0)
    _num(p, "drift_gain", 0.0, 1.0)
    _num(p, "drift_offset", 0.0, 1.0)
    _num(p, "dose", 0.0, None, hint="; 0 disables shot noise")
    _num(p, "read_noise", 0.0, 1.0)
    if p.bit_depth not in (8, 16) or isinstance(p.bit_depth, bool):
        raise ConfigError(f"bit_depth must be 8 or 16, got {p.bit_depth!r}")
    if p.phases not in (2, 3) or isinstance(p.phases, bool):
        raise ConfigError(f"phases must be 2 (solid, pore) or 3 (two solid phases and pore), got {p.phases!r}")
    _num(p, "phase_fraction", 0.0, 1.0, lo_open=True, hi_open=True,
         hint="; the fraction of the solid that is the second solid phase, e.g. 0.4")
    _num(p, "phase_yield", 0.0, 3.0, lo_open=True, hint="; the second solid's brightness relative to the first, e.g. 0.6")
    _validate_membrane(p)
    if p.drift not in DRIFTS:
        raise ConfigError(f"drift must be one of {', '.join(DRIFTS)}; got {p.drift!r}")
    _num(p, "drift_strength", 0.0, 3.0, hint="; 1 is the default change of contrast / curtaining over the stack")
    for name in ("porosity", "porosity_gradient", "corr_length", "particle_radius", "fibre_radius", "radius_spread", "neck_ratio",
                 "fibre_inplane", "alpha_deg", "depth_length", "face_yield", "pore_floor", "edge_eps",
                 "edge_width", "shading", "texture", "face_texture", "texture_length", "ghost_blur", "psf_sigma", "curtain_amp",
                 "charging_amp",
                 "drift_gain", "drift_offset", "dose", "read_noise", "phase_fraction", "phase_yield",
                 "skin_fraction", "skin_porosity", "skin_scale", "transition_fraction", "drift_strength"):
        object.__setattr__(p, name, float(getattr(p, name)))
    object.__setattr__(p, "beam_sign", int(p.beam_sign))
    object.__setattr__(p, "bit_depth", int(p.bit_depth))
    object.__setattr__(p, "phases", int(p.phases))
    object.__setattr__(p, "connected", bool(p.connected))


_MEMBRANE_KNOBS = ("skin_fraction", "skin_porosity", "skin_scale", "transition_fraction", "layer_axis")


def _validate_membrane(p: SynthParams) -> None:
    _num(p, "skin_fraction", 0.0, 0.9, lo_open=True, hint="; the skin's share of the volume, e.g. 0.25")
    _num(p, "skin_porosity", 0.05, 0.95, hint="; the dense skin's pore fraction, e.g. 0.25")
    _num(p, "skin_scale", 0.0, 1.0, lo_open=True, hint="; the skin's pore size relative to the support's, e.g. 0.4")
    _num(p, "transition_fraction", 0.0, 0.5, hint="; the graded layer's share of the volume, e.g. 0.1")
    if p.layer_axis not in LAYER_AXES:
        raise ConfigError(f"layer_axis must be 'y' (a band of image rows) or 'z' (the first slices); got {p.layer_axis!r}")
    if p.structure != "membrane":
        default = SynthParams.__dataclass_fields__
        changed = [k for k in _MEMBRANE_KNOBS if getattr(p, k) != default[k].default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} only apply to structure 'membrane' (its layers); got structure "
                              f"{p.structure!r}: use structure='membrane' (--structure membrane) or leave them out")
        return
    if p.skin_fraction + p.transition_fraction > 0.9 + 1e-9:
        raise ConfigError(
            f"skin_fraction {p.skin_fraction} plus transition_fraction {p.transition_fraction} leave no room for the "
            "support; keep their sum at most 0.9"
        )
    if p.corr_length * p.skin_scale < 0.5:
        raise ConfigError(
            f"the skin's pores would be correlated over corr_length * skin_scale = {p.corr_length * p.skin_scale:.3g} px; "
            "at least 0.5 px is needed: raise skin_scale or corr_length"
        )


_PRESETS: dict[str, dict[str, Any]] = {
    # Ghosts fade within about a slice; clean instrument.
    "easy": dict(depth_law="exp", depth_length=0.8, face_yield=0.55, pore_floor=0.08, edge_eps=0.1,
                 edge_width=1.5, shading=0.3, ghost_blur=0.4, psf_sigma=0.6, curtain_amp=0.01,
                 charging_amp=0.01, drift_gain=0.002, drift_offset=0.001, dose=400.0, read_noise=0.01),
    "medium": dict(depth_law="exp", depth_length=2.5, face_yield=0.55, pore_floor=0.10, edge_eps=0.2,
                   edge_width=1.5, shading=0.5, ghost_blur=0.4, psf_sigma=0.8, curtain_amp=0.04,
                   charging_amp=0.03, drift_gain=0.004, drift_offset=0.002, dose=200.0, read_noise=0.02),
    # Flat-topped depth law: back walls within a few slices are as bright as the cut face.
    "hard": dict(depth_law="lorentz", depth_length=5.0, face_yield=0.55, pore_floor=0.12, edge_eps=0.3,
                 edge_width=1.5, shading=0.4, ghost_blur=0.5, psf_sigma=1.0, curtain_amp=0.06,
                 charging_amp=0.05, drift_gain=0.006, drift_offset=0.003, dose=100.0, read_noise=0.03),
}


def difficulty_params(difficulty: str) -> dict[str, Any]:
    """Imaging knobs of a difficulty preset.

    Parameters
    ----------
    difficulty : "easy" | "medium" | "hard". Hard uses the flat-topped Lorentz depth
        law with ``A ~ 1`` for back walls within a few slices (as bright as the cut face).

    Returns
    -------
    dict
        Knob name -> value (a fresh copy; structure knobs are not included).
    """
    if difficulty not in _PRESETS:
        raise ConfigError(f"difficulty must be one of {', '.join(DIFFICULTIES)}; got {difficulty!r}")
    return dict(_PRESETS[difficulty])


def make_params(*, structure: str = "blobs", porosity: float = 0.8, difficulty: str = "hard",
                **overrides: Any) -> SynthParams:
    """Build :class:`SynthParams` from a difficulty preset plus overrides.

    Raises
    ------
    ConfigError
        On an unknown knob name (the message lists the valid ones) or an invalid value.
    """
    names = _knob_names()
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown synth parameter(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(names)}"
        )
    for k in ("structure", "porosity"):
        if k in overrides:
            raise ConfigError(f"give {k} as its own argument, not as an override")
    kw = difficulty_params(difficulty)
    kw.update(structure=structure, porosity=porosity)
    kw.update(overrides)
    if "voxel_size" in kw and kw["voxel_size"] is not None:
        try:
            kw["voxel_size"] = tuple(kw["voxel_size"])
        except TypeError:
            raise ConfigError(f"voxel_size must be three positive numbers (z, y, x) in nm, got {kw['voxel_size']!r}") from None
    return SynthParams(**kw)


def _check_shape(shape: Any) -> tuple[int, int, int]:
    try:
        t = tuple(shape)
    except TypeError:
        t = None
    if (
        t is None
        or len(t) != 3
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in t)
        or not all(v > 0 for v in t)
    ):
        raise ConfigError(f"shape must be three positive integers (Z, Y, X), got {shape!r}; e.g. (64, 128, 128)")
    return tuple(int(v) for v in t)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- volume value


@dataclass(frozen=True, eq=False)
class SynthVolume:
    """A synthetic volume and its ground truth.

    Attributes
    ----------
    image : uint8 (or uint16) array (Z, Y, X), the simulated SEM stack.
    truth : uint8 array (Z, Y, X), 0 = solid, 1 = pore (state on the cut plane); with
        three phases 0 = first solid, 1 = pore, 2 = second solid.
    depth : float32 array (Z, Y, X), 0 on solid, back-wall depth in slices on pores,
        -1 where no wall was hit within the march limit.
    params : JSON-serialisable dict: all knobs, ``geometry`` (Geometry.to_dict()),
        ``structure``, ``porosity_requested``, ``porosity_achieved``, ``difficulty``,
        ``shape``, ``seed`` or ``rng_state`` when known.
    """

    image: np.ndarray
    truth: np.ndarray
    depth: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        """Acquisition geometry of the simulated stack."""
        return Geometry.from_dict(self.params["geometry"])

    @property
    def porosity(self) -> float:
        """Pore fraction of the truth."""
        return float(np.mean(self.truth == 1))


# ----------------------------------------------------------------------------- structures


def structure_margin(params: SynthParams) -> tuple[int, int, int]:
    """Extra material the ray march needs around a ``(Z, Y, X)`` truth window.

    Returns
    -------
    (mz, y_before, y_after)
        ``mz`` slices after the last one (= march limit), and rows of padding before
        / after the window in y (on the side the beam travels to).
    """
    c = params.geometry.shift_per_slice
    pad = int(math.ceil(params.march_limit * abs(c))) + 1
    return params.march_limit, (pad if c < 0 else 0), (pad if c > 0 else 0)


def _block_and_window(shape: tuple[int, int, int], params: SynthParams) -> tuple[tuple[int, int, int], tuple[slice, ...]]:
    mz, yb, ya = structure_margin(params)
    z, y, x = shape
    block = (z + mz, y + yb + ya, x)
    return block, (slice(0, z), slice(yb, yb + y), slice(0, x))


def _scales(params: SynthParams) -> np.ndarray:
    """Physical size of a voxel along (z, y, x) in units of the y pixel."""
    dz, dy, dx = params.voxel_size
    return np.array([dz / dy, 1.0, dx / dy])


def _blobs_field(block: tuple[int, int, int], params: SynthParams, rng: np.random.Generator,
                 corr_length: float | None = None) -> np.ndarray:
    """Gaussian random field (Gaussian covariance) by FFT filtering of white noise
    (correlated over ``corr_length``, default ``params.corr_length``)."""
    sig = (params.corr_length if corr_length is None else corr_length) / _scales(params)  # in voxels per axis
    fshape = tuple(sfft.next_fast_len(int(n + math.ceil(3 * s)), real=True) for n, s in zip(block, sig))
    noise = rng.standard_normal(fshape, dtype=np.float32)
    spec = sfft.rfftn(noise, workers=-1)
    del noise
    freqs = (sfft.fftfreq(fshape[0]), sfft.fftfreq(fshape[1]), sfft.rfftfreq(fshape[2]))
    for ax, (f, s) in enumerate(zip(freqs, sig)):
        h = np.exp(-2.0 * math.pi**2 * (s * f) ** 2).astype(np.float32)
        shp = [1, 1, 1]
        shp[ax] = h.size
        spec *= h.reshape(shp)
    out = sfft.irfftn(spec, s=fshape, workers=-1)
    del spec
    return np.ascontiguousarray(out[: block[0], : block[1], : block[2]], dtype=np.float32)


def _lognormal(rng: np.random.Generator, mean: float, spread: float, n: int) -> np.ndarray:
    if spread <= 0:
        return np.full(n, mean)
    s2 = math.log1p(spread**2)
    return rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)


_BG = -1e4  # field value far from any particle / fibre


def _paint_capsules(fld: np.ndarray, p0: np.ndarray, p1: np.ndarray, r: np.ndarray, scales: np.ndarray,
                    margin: float) -> None:
    """fld = max(fld, r - dist(x, segment p0-p1)) near each capsule (physical px units).

    Capsules are processed in batches of similar bounding boxes; coordinates are
    broadcast per axis, so the work is proportional to the boxes' volume.
    """
    if len(r) == 0:
        return
    shape = np.array(fld.shape)
    flat = fld.reshape(-1)
    sc = scales.astype(np.float32)
    lo_p = np.minimum(p0, p1) - (r + margin)[:, None]
    hi_p = np.maximum(p0, p1) + (r + margin)[:, None]
    lo = np.maximum(np.floor(lo_p / scales).astype(np.int64), 0)
    hi = np.minimum(np.ceil(hi_p / scales).astype(np.int64) + 1, shape)
    dims = hi - lo
    ok = np.all(dims > 0, axis=1)
    idx_all = np.nonzero(ok)[0]
    order = idx_all[np.lexsort((dims[idx_all, 2], dims[idx_all, 1], dims[idx_all, 0]))]
    is_sphere = np.all(p0 == p1, axis=1)
    n = len(order)
    i = 0
    while i < n:
        box = dims[order[i]].copy()
        j = i + 1
        while j < n:
            cand = np.maximum(box, dims[order[j]])
            if (j - i + 1) * int(cand.prod()) > 400_000 or int(cand.prod()) > 1.3 * int(np.prod(dims[order[j]])) + 64:
                break
            box = cand
            j += 1
        idx = order[i:j]
        i = j
        nb = len(idx)
        g = [lo[idx, ax][:, None] + np.arange(box[ax])[None, :] for ax in range(3)]  # (nb, b_ax)
        inb = [(gi < shape[ax]) for ax, gi in enumerate(g)]
        pos = [gi.astype(np.float32) * sc[ax] for ax, gi in enumerate(g)]
        shp = [(nb, -1, 1, 1), (nb, 1, -1, 1), (nb, 1, 1, -1)]
        rel = [(pos[ax] - p0[idx, ax, None].astype(np.float32)).reshape(shp[ax]) for ax in range(3)]
        if np.all(is_sphere[idx]):
            d2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
        else:
            ab = (p1[idx] - p0[idx]).astype(np.float32)
            den = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
            ab_ = [ab[:, ax].reshape(nb, 1, 1, 1) for ax in range(3)]
            t = (rel[0] * ab_[0] + rel[1] * ab_[1] + rel[2] * ab_[2]) / den.reshape(nb, 1, 1, 1)
            np.clip(t, 0.0, 1.0, out=t)
            d2 = (rel[0] - t * ab_[0]) ** 2 + (rel[1] - t * ab_[1]) ** 2 + (rel[2] - t * ab_[2]) ** 2
        val = r[idx].astype(np.float32).reshape(nb, 1, 1, 1) - np.sqrt(d2)
        sel = val > -margin
        sel &= inb[0].reshape(shp[0]) & inb[1].reshape(shp[1]) & inb[2].reshape(shp[2])
        lin = (g[0].reshape(shp[0]) * shape[1] + g[1].reshape(shp[1])) * shape[2] + g[2].reshape(shp[2])
        lin = np.broadcast_to(lin, sel.shape)[sel]
        np.maximum.at(flat, lin, val[sel])


def _neck_edges(centres: np.ndarray, radii: np.ndarray, ext: np.ndarray, contact: float = 1.15
                ) -> tuple[np.ndarray, np.ndarray]:
    """Edges (i, j) of a Euclidean minimum spanning tree of the centres inside the block
    (from the Delaunay graph, so it is connected), necks between touching particles
    (Delaunay neighbours closer than ``contact * (r_i + r_j)``), and, for each centre outside the
    block, an edge to its nearest inside centre. All in-block paths stay in the block."""
    inside = np.nonzero(np.all((centres >= 0) & (centres < ext), axis=1))[0]
    outside = np.nonzero(~np.all((centres >= 0) & (centres < ext), axis=1))[0]
    ni = len(inside)
    if ni == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pts = centres[inside]
    pairs: np.ndarray
    try:
        if ni < 5:
            raise QhullError("too few points")
        simp = Delaunay(pts).simplices
        pairs = np.concatenate([simp[:, [i, j]] for i in range(4) for j in range(i + 1, 4)])
    except QhullError:
        ii, jj = np.triu_indices(ni, 1)
        pairs = np.stack([ii, jj], axis=1)
    if len(pairs):
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
        w = np.maximum(np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1), 1e-6)
        mst = minimum_spanning_tree(coo_matrix((w, (pairs[:, 0], pairs[:, 1])), shape=(ni, ni))).tocoo()
        # plus sinter necks between touching particles (gives loops, like a real network)
        touch = w < contact * (radii[inside][pairs[:, 0]] + radii[inside][pairs[:, 1]])
        a = np.concatenate([inside[mst.row], inside[pairs[touch, 0]]])
        b = np.concatenate([inside[mst.col], inside[pairs[touch, 1]]])
    else:
        a = b = np.zeros(0, np.int64)
    if len(outside):
        _, near = cKDTree(pts).query(centres[outside])
        a = np.concatenate([a, outside])
        b = np.concatenate([b, inside[near]])
    return a.astype(np.int64), b.astype(np.int64)


def _spheres_field(block: tuple[int, int, int], params: SynthParams, rng: np.random.Generator) -> np.ndarray:
    """Sintered particles: polydisperse spheres joined by necks along a spanning tree."""
    sc = _scales(params)
    ext = np.array(block) * sc
    rm = params.particle_radius
    s2 = math.log1p(params.radius_spread**2)
    mean_r3 = math.exp(3 * (math.log(rm) - s2 / 2) + 4.5 * s2)
    # Boolean-model density for ~85 % of the solid; the necks and the threshold do the rest
    f0 = 0.85 * (1.0 - params.porosity)
    dens = -math.log1p(-f0) / (4.0 / 3.0 * math.pi * mean_r3)
    m = 1.5 * rm
    vol = float(np.prod(ext + 2 * m))
    n = max(int(rng.poisson(dens * vol)), 2)
    centres = rng.random((n, 3)) * (ext + 2 * m) - m
    radii = _lognormal(rng, rm, params.radius_spread, n)
    fld = np.full(block, _BG, dtype=np.float32)
    margin = 2.0
    if params.neck_ratio > 0 and n > 1:
        a, b = _neck_edges(centres, radii, ext)
        rn = params.neck_ratio * np.minimum(radii[a], radii[b])
        _paint_capsules(fld, centres[a], centres[b], rn, sc, margin)
    _paint_capsules(fld, centres, centres, radii, sc, margin)
    return fld


def _clip_line(p: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """Parameter range [t0, t1] of the line p + t d inside the box [lo, hi] (empty: t0 > t1)."""
    t0, t1 = -np.inf, np.inf
    for ax in range(3):
        if abs(d[ax]) < 1e-12:
            if not lo[ax] <= p[ax] <= hi[ax]:
                return 1.0, 0.0
            continue
        a = (lo[ax] - p[ax]) / d[ax]
        b = (hi[ax] - p[ax]) / d[ax]
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0, t1


def _fibres_field(block: tuple[int, int, int], params: SynthParams, rng: np.random.Generator) -> np.ndarray:
    """Random straight cylinders (isotropic uniform random lines hitting the block)."""
    sc = _scales(params)
    shape = np.array(block)
    ext = shape * sc
    fld = np.full(block, _BG, dtype=np.float32)
    flat = fld.reshape(-1)
    margin = 2.0
    rm = params.fibre_radius
    # Poisson line process: solid fraction 1 - exp(-L_V pi E[r^2]); target 95 % of the solid
    need = -math.log1p(-0.95 * (1.0 - params.porosity)) * float(np.prod(ext))  # sum of pi r^2 L
    centre = ext / 2
    rad = float(np.linalg.norm(ext)) / 2 + rm + margin
    total = 0.0
    n_fib = 0
    while total < need and n_fib < 1_000_000:
        d = rng.standard_normal(3)
        d[1] *= 1.0 - params.fibre_inplane
        nd = np.linalg.norm(d)
        if nd < 1e-9:
            continue
        d /= nd
        # uniform point on the disk of radius rad perpendicular to d through the centre
        e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        rho, phi = rad * math.sqrt(rng.random()), 2 * math.pi * rng.random()
        p = centre + rho * (math.cos(phi) * e1 + math.sin(phi) * e2)
        r = float(_lognormal(rng, rm, params.radius_spread, 1)[0])
        t0, t1 = _clip_line(p, d, np.zeros(3), ext)
        if t1 > t0:
            total += math.pi * r * r * (t1 - t0)
        e0, e1_ = _clip_line(p, d, -(r + margin) * np.ones(3), ext + (r + margin))
        if e1_ <= e0:
            continue
        n_fib += 1
        # paint: iterate over the voxel axis along which the line advances fastest
        dv = d / sc
        a = int(np.argmax(np.abs(dv)))
        others = [ax for ax in range(3) if ax != a]
        ia0 = max(0, int(math.floor(min(p[a] + e0 * d[a], p[a] + e1_ * d[a]) / sc[a])))
        ia1 = min(int(shape[a]), int(math.ceil(max(p[a] + e0 * d[a], p[a] + e1_ * d[a]) / sc[a])) + 1)
        if ia1 <= ia0:
            continue
        ia = np.arange(ia0, ia1)
        tt = (ia * sc[a] - p[a]) / d[a]
        q = p[None, :] + tt[:, None] * d[None, :]  # axis point in each plane, physical
        h = [int(math.ceil((r + margin) / (abs(d[a]) * sc[b]))) + 1 for b in others]
        ob = np.arange(-h[0], h[0] + 1)
        oc = np.arange(-h[1], h[1] + 1)
        vb = np.rint(q[:, others[0]] / sc[others[0]]).astype(np.int64)[:, None, None] + ob[None, :, None]
        vc = np.rint(q[:, others[1]] / sc[others[1]]).astype(np.int64)[:, None, None] + oc[None, None, :]
        va = np.broadcast_to(ia[:, None, None], (len(ia), len(ob), len(oc)))
        vb = np.broadcast_to(vb, va.shape)
        vc = np.broadcast_to(vc, va.shape)
        by_axis = {a: va, others[0]: vb, others[1]: vc}
        vox = [by_axis[ax] for ax in range(3)]
        rel = np.stack([vox[ax] * sc[ax] - p[ax] for ax in range(3)], axis=-1)
        along = rel @ d
        dist = np.sqrt(np.maximum(np.sum(rel * rel, axis=-1) - along * along, 0.0))
        val = r - dist
        sel = (val > -margin)
        for ax in others:
            sel &= (vox[ax] >= 0) & (vox[ax] < shape[ax])
        lin = np.ravel_multi_index(tuple(v[sel] for v in vox), block)
        np.maximum.at(flat, lin, val[sel].astype(np.float32))
    return fld


_FIELDS: dict[str, Callable[[tuple[int, int, int], SynthParams, np.random.Generator], np.ndarray]] = {
    "blobs": _blobs_field,
    "spheres": _spheres_field,
    "fibres": _fibres_field,
}


def _quantile(a: np.ndarray, q: float) -> float:
    """Quantile of a large array from a deterministic subsample of at most ~4M values."""
    flat = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    step = max(1, flat.size // 4_000_000)
    sub = flat[::step]
    return float(np.quantile(sub, q))


def _largest_component(solid: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(solid)
    if n <= 1:
        return solid
    counts = np.bincount(lab.reshape(-1))
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _threshold(fld: np.ndarray, window: tuple[slice, ...], porosity: float, connected: bool) -> np.ndarray:
    """Solid = field > t with t chosen by quantile so the window's porosity is exact.

    With ``connected``, only the largest solid component is kept, then it is grown back
    to the target: surface candidates (6-neighbours of the solid) are added in order of
    decreasing field value (those that a lower threshold would add first), one layer at
    a time. The result is one connected solid with the exact porosity (within 0.0005).
    """
    win = fld[window]
    n = win.size
    target = int(round((1.0 - porosity) * n))
    solid = fld > _quantile(win, porosity)
    if not connected:
        return solid
    solid = _largest_component(solid)
    tol = max(1, int(0.0005 * n))
    st = ndimage.generate_binary_structure(3, 1)
    for _ in range(100):
        deficit = target - int(np.count_nonzero(solid[window]))
        if deficit <= tol:
            break
        cand = ndimage.binary_dilation(solid, st)
        cand &= ~solid
        cw = cand[window]
        vals = win[cw]
        if vals.size == 0:
            break
        if vals.size <= deficit:
            solid |= cand
            continue
        # exactly `deficit` window voxels, the highest field values first
        flat_idx = np.flatnonzero(cw)
        top = np.argpartition(vals, vals.size - deficit)[vals.size - deficit:]
        tc = float(vals[top].min())
        win_solid = solid[window].copy()
        win_solid.reshape(-1)[flat_idx[top]] = True
        solid[window] = win_solid
        # outside the window (margins) the same rule by value; ties do not matter there
        outside = cand & (fld > tc)
        outside[window] = False
        solid |= outside
    got = float(np.mean(solid[window]))
    logger.debug("threshold: solid fraction %.4f (target %.4f)", got, 1.0 - porosity)
    if abs(got - (1.0 - porosity)) > 0.01:  # pragma: no cover - defensive
        raise ConfigError(
            f"could not reach porosity {porosity:.3f} with a connected solid (solid fraction {got:.3f}); "
            "use a larger volume, smaller structure sizes, or connected=False"
        )
    return solid


def make_structure(shape: Sequence[int], structure: str = "blobs", porosity: float = 0.8,
                   rng: np.random.Generator | None = None, *, params: SynthParams | None = None,
                   margin: bool = True, **overrides: Any) -> np.ndarray:
    """Generate a solid mask with an exact porosity on its truth window.

    Parameters
    ----------
    shape : (Z, Y, X) of the truth window.
    structure, porosity : see :class:`SynthParams`.
    rng : random generator (a fresh unseeded one when None).
    params : knobs to use (structure and porosity arguments replace its fields); default
        :class:`SynthParams` defaults.
    margin : when True (default) return the extended block
        ``(Z + M, Y + pad, X)`` the ray march needs (:func:`structure_margin`); the
        truth window is ``[:Z, y_before:y_before + Y, :]``. When False, just (Z, Y, X).
    **overrides : other :class:`SynthParams` knobs, e.g. ``corr_length=6``.

    Returns
    -------
    numpy.ndarray of bool
        True = solid.
    """
    shape = _check_shape(shape)
    base = (params or SynthParams()).to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f"unknown synth parameter(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(_knob_names())}")
    base.update(overrides, structure=structure, porosity=porosity)
    p = SynthParams.from_dict(base)
    rng = np.random.default_rng() if rng is None else rng
    if margin:
        block, window = _block_and_window(shape, p)
    else:
        block, window = shape, (slice(None),) * 3
    if p.structure == "membrane":
        return _membrane_structure(block, window, p, rng)
    fld = _FIELDS[p.structure](block, p, rng)
    if p.porosity_gradient:
        return _ramped_threshold(fld, window, p)
    return _threshold(fld, window, p.porosity, p.connected)


def _ramped_threshold(fld: np.ndarray, window: tuple[slice, ...], p: SynthParams, rounds: int = 4) -> np.ndarray:
    """Threshold a field so that the porosity ramps along z as ``p`` asks.

    Each slice is offset by its own quantile at the slice's target porosity; the global
    threshold that follows keeps the window's mean exact. Removing floating solid (the
    ``connected`` rule) raises porosity where the solid is sparse, so the slice targets
    are corrected from the result (damped) a few times until every slice is within 0.01.
    Slices past the truth window (the ray-march margin) aim at the last slice's porosity.
    Where the sparse end is above about 0.85 the connected solid cannot follow exactly;
    the closest result is kept, with a warning when it misses by more than 0.02.
    """
    nz = len(range(*window[0].indices(fld.shape[0])))
    if nz < 2:
        raise ConfigError(f"porosity_gradient needs at least 2 slices to ramp over, got {nz}")
    frac = np.clip(np.arange(fld.shape[0]) / (nz - 1), 0.0, 1.0)
    target = p.porosity + p.porosity_gradient * (frac - 0.5)
    aim = target.copy()
    best, best_err = None, math.inf
    for _ in range(rounds):
        q = np.array([_quantile(fld[z][window[1:]], float(aim[z])) for z in range(fld.shape[0])], np.float32)
        solid = _threshold(fld - q[:, None, None], window, p.porosity, p.connected)
        err = 1.0 - solid[(slice(None), *window[1:])].mean(axis=(1, 2)) - target  # margin slices included
        worst = float(np.abs(err).max())
        logger.debug("porosity ramp: largest slice error %.4f", worst)
        if worst < best_err:
            best, best_err = solid, worst
        if worst < 0.01:
            break
        aim = np.clip(aim - 0.5 * err, 0.01, 0.99)  # damped: connectivity reacts non-linearly
    if best_err > 0.02:
        logger.warning("porosity ramp followed within %.3f per slice (aimed at 0.01): the connected solid cannot be "
                       "that sparse; use a smaller --porosity-gradient or a lower --porosity", best_err)
    assert best is not None  # rounds >= 1, and the first round's error is finite
    return best


def membrane_layers(n: int, params: SynthParams) -> dict[str, Any]:
    """The layers of a membrane along its layer axis (``n`` rows or slices of the truth).

    Parameters
    ----------
    n : length of the truth along ``params.layer_axis``.
    params : knobs (``skin_fraction``, ``transition_fraction``, ``skin_porosity``,
        ``porosity``).

    Returns
    -------
    dict
        ``skin``, ``transition``, ``support``: half-open index ranges ``[start, end)``
        along the axis (skin from index 0); ``weight``: float64 ``(n,)``, 0 in the skin, 1
        in the support, linear across the transition (it mixes the pore size);
        ``porosity``: the target porosity of each index.

    Raises
    ------
    ConfigError
        When the axis is too short to hold at least one index of skin and of support.
    """
    s_end = int(round(params.skin_fraction * n))
    t_end = max(s_end, int(round((params.skin_fraction + params.transition_fraction) * n)))
    if s_end < 1 or t_end >= n:
        raise ConfigError(
            f"a membrane {n} {'rows' if params.layer_axis == 'y' else 'slices'} deep along {params.layer_axis} with "
            f"skin_fraction {params.skin_fraction} and transition_fraction {params.transition_fraction} has "
            f"{s_end} of skin and {max(n - t_end, 0)} of support; both need at least one: make the volume larger "
            "along that axis or change the fractions"
        )
    i = np.arange(n, dtype=np.float64)
    w = np.clip((i - s_end + 0.5) / max(t_end - s_end, 1), 0.0, 1.0)
    w[:s_end] = 0.0
    w[t_end:] = 1.0
    por = params.skin_porosity + w * (params.porosity - params.skin_porosity)
    return {"skin": [0, s_end], "transition": [s_end, t_end], "support": [t_end, n], "weight": w, "porosity": por}


def _membrane_structure(block: tuple[int, int, int], window: tuple[slice, ...], p: SynthParams,
                        rng: np.random.Generator) -> np.ndarray:
    """A dense skin with small pores over a porous support, graded in between.

    Two Gaussian random fields (correlated over ``corr_length * skin_scale`` and
    ``corr_length``, each scaled to unit variance) are mixed along the layer axis by the
    layer weight, and the mixture is thresholded so that every row (or slice) along the
    axis has its layer's porosity (:func:`_profile_threshold`). Indices of the block
    outside the truth window (the ray-march margins) continue the nearest layer.
    """
    ax = 1 if p.layer_axis == "y" else 0
    start, stop, _ = window[ax].indices(block[ax])
    layers = membrane_layers(stop - start, p)
    idx = np.clip(np.arange(block[ax]) - start, 0, stop - start - 1)
    w = layers["weight"][idx]
    target = layers["porosity"][idx]
    skin = _blobs_field(block, p, rng, corr_length=p.corr_length * p.skin_scale)
    skin /= max(float(skin[window].std()), 1e-12)
    fld = _blobs_field(block, p, rng)
    fld /= max(float(fld[window].std()), 1e-12)
    shp = [1, 1, 1]
    shp[ax] = block[ax]
    wa = w.reshape(shp).astype(np.float32)
    fld *= wa
    fld += (1.0 - wa) * skin
    del skin
    fld /= np.sqrt((1.0 - wa) ** 2 + wa**2)
    return _profile_threshold(fld, window, target, ax, p.connected)


def _profile_threshold(fld: np.ndarray, window: tuple[slice, ...], target: np.ndarray, ax: int, connected: bool,
                       rounds: int = 5) -> np.ndarray:
    """Threshold a field so that each index along axis ``ax`` has its ``target`` porosity.

    As :func:`_ramped_threshold` (which does this along z for a linear ramp): each
    index is offset by its own quantile at its target, one global threshold at the
    window's mean target follows, and the targets are corrected from the result (damped)
    where the ``connected`` rule moved them. Each cross-section is split into the part
    inside the truth window and the margins the rays look into, each with its own
    quantile and correction, so both follow the layers; the result is judged on the
    window (its mean is exact).
    """
    others = tuple(a for a in range(3) if a != ax)
    inside = np.zeros(tuple(fld.shape[a] for a in others), dtype=bool)
    inside[tuple(window[a] for a in others)] = True
    has_margin = not bool(inside.all())
    mean_target = float(np.mean(target[window[ax]]))
    aim_in, aim_out = target.copy(), target.copy()
    n = fld.shape[ax]
    best, best_err = None, math.inf
    for _ in range(rounds):
        off = np.empty((n, *inside.shape), dtype=np.float32)  # the offset of every voxel, axis ax first
        for i in range(n):
            sec = np.take(fld, i, axis=ax)
            off[i] = _quantile(sec[inside], float(aim_in[i]))
            if has_margin:
                off[i][~inside] = _quantile(sec[~inside], float(aim_out[i]))
        solid = _threshold(fld - np.moveaxis(off, 0, ax), window, mean_target, connected)
        del off
        sol = np.moveaxis(solid, ax, 0)
        err_in = 1.0 - sol[:, inside].mean(axis=1) - target
        worst = float(np.abs(err_in[window[ax]]).max())
        logger.debug("porosity profile: largest error %.4f", worst)
        if worst < best_err:
            best, best_err = solid, worst
        if worst < 0.01:
            break
        aim_in = np.clip(aim_in - 0.5 * err_in, 0.01, 0.99)
        if has_margin:
            aim_out = np.clip(aim_out - 0.5 * (1.0 - sol[:, ~inside].mean(axis=1) - target), 0.01, 0.99)
    if best_err > 0.03:
        logger.warning("the layers' porosity is followed within %.3f per %s (aimed at 0.01): the connected solid "
                       "cannot be that sparse; use a lower porosity", best_err, "slice" if ax == 0 else "row")
    assert best is not None  # rounds >= 1
    return best


def split_solid(solid: np.ndarray, params: SynthParams, rng: np.random.Generator, *,
                window: tuple[slice, ...] | None = None) -> np.ndarray:
    """The second solid phase of a three-phase material: True where solid belongs to it.

    A Gaussian random field (the blobs field, ``corr_length``) over the same block is
    thresholded inside the solid, so that ``params.phase_fraction`` of the solid in
    ``window`` (the truth window; default the whole block) is the second phase (exact
    to the quantile's resolution).

    Parameters
    ----------
    solid : bool (Z, Y, X) block, True = solid (from :func:`make_structure`).
    params : knobs (``corr_length``, ``phase_fraction``, voxel size).
    rng : random generator.
    window : the truth window inside the block.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``solid``.
    """
    solid = np.asarray(solid, dtype=bool)
    window = (slice(None),) * 3 if window is None else window
    fld = _blobs_field(solid.shape, params, rng)
    inside = fld[window][solid[window]]
    if inside.size == 0:
        return np.zeros_like(solid)
    return solid & (fld > _quantile(inside, 1.0 - params.phase_fraction))


# ----------------------------------------------------------------------------- ray march


def _shear(n: int, c: float) -> np.ndarray:
    """Integer y offset of slice z in the sheared frame: round(z c) (half away from zero)."""
    z = np.arange(n, dtype=np.float64) * c
    return (np.sign(z) * np.floor(np.abs(z) + 0.5)).astype(np.int64)


def march(solid: np.ndarray, params: SynthParams, *, out_shape: Sequence[int] | None = None) -> np.ndarray:
    """First back wall behind every pixel of the truth window (ghost depth).

    Parameters
    ----------
    solid : bool array (Zb, Yb, X), True = solid. Either an extended block from
        :func:`make_structure` (then pass ``out_shape``) or any volume (then the window
        is the whole volume and rays that leave it hit nothing).
    params : knobs (march limit and geometry are used).
    out_shape : (Z, Y, X) of the truth window inside an extended block.

    Returns
    -------
    numpy.ndarray of int16, (Z, Y, X)
        For every pixel the depth ``j >= 1`` (slices) of the first solid voxel strictly
        behind the slice along the beam, 0 where none within the march limit. (For solid
        pixels this is the wall behind the cut face, used for rendering only.)
    """
    solid = np.asarray(solid)
    if solid.ndim != 3 or solid.dtype != bool:
        raise ConfigError(f"solid must be a 3D bool array (Z, Y, X), got {solid.dtype} with shape {solid.shape}")
    if out_shape is None:
        win_shape, y0 = solid.shape, 0
    else:
        win_shape, y0 = _check_out_shape(solid.shape, out_shape, params)
    return _march_core(solid, params, win_shape, y0)[0]


def _march_core(solid: np.ndarray, params: SynthParams, win_shape: tuple[int, int, int], y0: int,
                rng: np.random.Generator | None = None, phase: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Reverse scan over the slices in the sheared frame (see module docstring).

    With ``rng`` (and ``params.texture > 0``) it also samples a solid-attached material
    texture ``T`` (unit variance, Gaussian in-plane correlation ``texture_length``,
    AR(1) along z with the same physical length) at the cut face and at the back-wall
    hit of every pixel; back-wall texture then travels with the wall (parallax).

    With ``phase`` (bool, the shape of ``solid``: the second solid phase) it also
    records which phase every back wall belongs to.

    Returns
    -------
    ghost : int16 (Z, Y, X) depth of the first solid strictly behind, 0 = none.
    face_tex, hit_tex : float16 (Z, Y, X) texture at the face / at the hit, or None.
    hit_phase : bool (Z, Y, X), True where the back wall is the second phase, or None.
    """
    zb, yb, xb = solid.shape
    z, y, x = win_shape
    m = params.march_limit
    c = params.geometry.shift_per_slice
    rsh = _shear(zb, c)
    u_off = int(rsh.max())
    nu = yb + u_off - int(rsh.min())
    big = np.iinfo(np.int32).max // 2
    nxt = np.full((nu, xb), big, dtype=np.int32)
    out = np.zeros((z, y, x), dtype=np.int16)
    textured = rng is not None and (params.texture > 0 or params.face_texture > 0)
    face_tex = hit_tex = None
    hit_phase = nphase = None
    if phase is not None:
        nphase = np.zeros((nu, xb), dtype=bool)
        hit_phase = np.zeros((z, y, x), dtype=bool)
    if textured:
        sig = params.texture_length
        ell_z = params.texture_length * params.voxel_size[1] / params.voxel_size[0]  # slices
        rho = math.exp(-1.0 / max(ell_z, 1e-6))
        norm = 2.0 * math.sqrt(math.pi) * sig  # 1 / std of 2D Gaussian-filtered white noise
        tex = np.zeros((yb, xb), dtype=np.float32)
        tnext = np.zeros((nu, xb), dtype=np.float32)
        face_tex = np.zeros((z, y, x), dtype=np.float16)
        hit_tex = np.zeros((z, y, x), dtype=np.float16)
        first = True
    for k in range(min(zb, z + m) - 1, -1, -1):
        u0 = u_off - int(rsh[k])
        if k < z:
            d = nxt[u0 + y0: u0 + y0 + y] - k
            out[k] = np.where(d <= m, d, 0)
            if hit_phase is not None:
                assert nphase is not None  # set up with hit_phase
                hit_phase[k] = nphase[u0 + y0: u0 + y0 + y]
            if hit_tex is not None:  # textured
                hit_tex[k] = tnext[u0 + y0: u0 + y0 + y]
        if textured:
            assert rng is not None and face_tex is not None  # set up above when textured
            w = ndimage.gaussian_filter(rng.standard_normal((yb, xb), dtype=np.float32), sig, mode="wrap",
                                        truncate=3.0) * np.float32(norm)
            if first:
                tex = w
                first = False
            else:
                tex *= np.float32(rho)
                tex += np.float32(math.sqrt(1.0 - rho * rho)) * w
            np.copyto(tnext[u0: u0 + yb], tex, where=solid[k])
            if k < z:
                face_tex[k] = tex[y0: y0 + y]
        np.copyto(nxt[u0: u0 + yb], k, where=solid[k])
        if nphase is not None:
            assert phase is not None  # nphase exists only with a phase volume
            np.copyto(nphase[u0: u0 + yb], phase[k], where=solid[k])
    return out, face_tex, hit_tex, hit_phase


def _check_out_shape(block_shape, out_shape, params) -> tuple[tuple[int, int, int], int]:
    out_shape = _check_shape(out_shape)
    expect, window = _block_and_window(out_shape, params)
    if tuple(block_shape) != expect:
        raise ConfigError(
            f"solid has shape {tuple(block_shape)} but a truth window of {out_shape} with march_limit "
            f"{params.march_limit} and this geometry needs an extended block of {expect}; make it with "
            "make_structure(..., params=params) or pass out_shape=None to render the whole volume"
        )
    return out_shape, window[1].start


# ----------------------------------------------------------------------------- rendering


def _smooth_over_z(n: int, period: float) -> np.ndarray:
    """(n, K) linear interpolation weights from K knots spaced `period` slices apart."""
    k = int(math.ceil(n / period)) + 2
    pos = np.arange(n) / period + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(k)[None, :]))
    return w / w.sum(axis=1, keepdims=True)


def _gauss_basis(n: int, cells: float) -> np.ndarray:
    """(n, K) smooth interpolation weights (Gaussian bumps) with about `cells` features."""
    k = int(math.ceil(cells)) + 3
    centres = np.linspace(-1, cells + 1, k) * (n / max(cells, 1e-9))
    sigma = n / max(cells, 1e-9) * 0.6
    w = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / sigma) ** 2)
    return w / np.sqrt(np.sum(w**2, axis=1, keepdims=True))


def drift_factors(params: SynthParams, n_slices: int) -> dict[str, np.ndarray]:
    """Per-slice factors of the imaging change along z (``params.drift``).

    With ``t`` = 0 on the first slice and 1 on the last and ``s`` = ``drift_strength``:

    - ``wall``: the back walls' signal relative to the cut face, ``1 + 0.6 s (t - 1/2)``
      ("contrast", "both"): near back walls go from darker than the cut face at the top
      to brighter at the bottom, so the top and the bottom need different decisions;
    - ``gain``: the detector gain, ``1 - 0.3 s (t - 1/2)`` ("contrast", "both"), on top
      of the random gain walk;
    - ``curtain``: the curtaining amplitude, ``1 + 3 s t`` ("curtaining", "both").

    Factors a drift does not change are 1.

    Returns
    -------
    dict
        "wall", "gain", "curtain" -> float64 ``(n_slices,)``.
    """
    n = int(n_slices)
    t = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    st = params.drift_strength
    one = np.ones(n)
    contrast = params.drift in ("contrast", "both")
    curtaining = params.drift in ("curtaining", "both")
    return {
        "wall": 1.0 + _DRIFT_WALL * st * (t - 0.5) if contrast else one,
        "gain": 1.0 - _DRIFT_GAIN * st * (t - 0.5) if contrast else one.copy(),
        "curtain": 1.0 + _DRIFT_CURTAIN * st * t if curtaining else one.copy(),
    }


def _depth_law(d: np.ndarray, params: SynthParams) -> np.ndarray:
    lam = params.depth_length
    if params.depth_law == "exp":
        return np.exp(-d / lam)
    return lam * lam / (lam * lam + d * d)


def _blur2d(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    return ndimage.gaussian_filter(a, (0, sigma, sigma), mode="nearest", truncate=3.0)


def _render_signal(solid_win: np.ndarray, ghost: np.ndarray, params: SynthParams,
                   rng: np.random.Generator, *, z_offsets: np.ndarray, face_tex: np.ndarray | None = None,
                   hit_tex: np.ndarray | None = None, phase_win: np.ndarray | None = None,
                   hit_phase: np.ndarray | None = None) -> np.ndarray:
    """Image (Z, Y, X) uint8/uint16 from the truth-window solid mask and ghost depths.

    ``phase_win`` / ``hit_phase`` (bool (Z, Y, X)): the second solid phase on the cut
    face / at the back wall; its yield is ``phase_yield`` times the first solid's."""
    z, y, x = solid_win.shape
    p = params
    g = p.geometry
    dz, dy, dx = p.voxel_size
    cot = 1.0 / math.tan(math.radians(p.alpha_deg))
    r_ = dz / dy
    q_ = dz / dx
    s = p.beam_sign
    c = g.shift_per_slice
    delta = (z_offsets - np.arange(z) * c).astype(np.float64)  # sub-pixel parallax correction
    m = p.march_limit
    full = float(2**p.bit_depth - 1)
    out_dtype = np.uint8 if p.bit_depth == 8 else np.uint16

    # per-volume random processes, drawn first (fixed order => deterministic)
    wz = _smooth_over_z(z, _CURTAIN_PERIOD)
    knots = rng.standard_normal((wz.shape[1], x))
    knots = ndimage.gaussian_filter1d(knots, _CURTAIN_WIDTH, axis=1, mode="wrap")
    knots /= max(float(knots.std()), 1e-12)
    curtain = (wz @ knots).astype(np.float32) * p.curtain_amp  # (Z, X)
    cz = _smooth_over_z(z, _CHARGING_PERIOD)
    cy = _gauss_basis(y, _CHARGING_CELLS)
    cx = _gauss_basis(x, _CHARGING_CELLS)
    cknots = rng.standard_normal((cz.shape[1], cy.shape[1], cx.shape[1]))
    charging_knots = np.einsum("zk,kab->zab", cz, cknots)  # (Z, Ky, Kx)
    log_gain = np.cumsum(rng.normal(0.0, p.drift_gain, z)) if p.drift_gain > 0 else np.zeros(z)
    gain = np.exp(log_gain - log_gain.mean())
    offset = np.cumsum(rng.normal(0.0, p.drift_offset, z)) if p.drift_offset > 0 else np.zeros(z)
    offset -= offset.mean()
    drifting = p.drift != "none"  # deterministic factors, no random draws: the rest stays as without drift
    wall_drift = None
    if drifting:
        fac = drift_factors(p, z)
        curtain = curtain * fac["curtain"][:, None].astype(np.float32)
        gain = gain * fac["gain"]
        wall_drift = fac["wall"].astype(np.float32)

    # blur levels for depth-dependent ghost blur
    b = p.ghost_blur
    levels = [0.0, b, 2 * b, 4 * b] if b > 0 else [0.0]
    img = np.empty((z, y, x), dtype=out_dtype)
    for k0 in range(0, z, _SLAB):
        k1 = min(z, k0 + _SLAB)
        sol = solid_win[k0:k1]
        pore = ~sol
        gd = ghost[k0:k1].astype(np.float32)
        hit = gd > 0
        # cut face
        rim = _blur2d(pore.astype(np.float32), p.edge_width)
        face = p.face_yield * (1.0 + p.edge_eps * np.minimum(2.0 * rim, 1.0))
        if face_tex is not None:
            face *= np.maximum(1.0 + p.face_texture * face_tex[k0:k1].astype(np.float32), 0.0)
        if drifting:  # a strong curtain cannot make the face negative
            face *= np.maximum(1.0 + curtain[k0:k1, None, :], 0.0)
        else:
            face *= 1.0 + curtain[k0:k1, None, :]
        if phase_win is not None:
            face *= np.where(phase_win[k0:k1], np.float32(p.phase_yield), np.float32(1.0))
        # back walls: incidence from the gradient of the smoothed depth map
        dmap = np.where(hit, gd, np.float32(m + 1))
        dmap = _blur2d(dmap, _NORMAL_SIGMA)
        d_y = np.gradient(dmap, axis=1)
        d_x = np.gradient(dmap, axis=2)
        cos_ratio = 1.0 / np.sqrt((1.0 + s * cot * r_ * d_y) ** 2 + (r_ * d_y) ** 2 + (q_ * d_x) ** 2)
        del dmap, d_y, d_x
        phi = (1.0 - p.shading) + p.shading * cos_ratio
        if hit_tex is not None:
            phi *= np.maximum(1.0 + p.texture * hit_tex[k0:k1].astype(np.float32), 0.0)
        wall_yield: Any = p.face_yield
        if hit_phase is not None:
            wall_yield = np.where(hit_phase[k0:k1], np.float32(p.face_yield * p.phase_yield), np.float32(p.face_yield))
        ghost_sig = np.where(hit, wall_yield * phi * _depth_law(gd, p), 0.0).astype(np.float32)
        if wall_drift is not None:
            ghost_sig *= wall_drift[k0:k1, None, None]
        ghost_sig += p.pore_floor
        del phi, cos_ratio
        if len(levels) > 1:
            sig = b * np.sqrt(np.where(hit, gd, 0.0))
            pos = np.interp(sig, levels, np.arange(len(levels))).astype(np.float32)
            blurred = np.zeros_like(ghost_sig)
            for i, lv in enumerate(levels):
                w = np.maximum(0.0, 1.0 - np.abs(pos - i))
                if np.any(w > 0):
                    blurred += w * _blur2d(ghost_sig, lv)
            ghost_sig = blurred
        for i in range(k1 - k0):
            ghost_sig[i] = shift_rows(ghost_sig[i], float(delta[k0 + i]), edges="copy")
        sig_img: np.ndarray = np.where(sol, face, ghost_sig).astype(np.float32)  # float32 throughout
        del face, ghost_sig, rim
        # instrument
        sig_img = _blur2d(sig_img, p.psf_sigma)
        if p.charging_amp > 0:
            sig_img += p.charging_amp * np.einsum("ya,zab,xb->zyx", cy, charging_knots[k0:k1], cx).astype(np.float32)
        if p.dose > 0:
            lam = np.maximum(sig_img, 0.0) * np.float32(p.dose)
            noisy = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
            low = lam < _EXACT_POISSON_BELOW
            if np.any(low):
                noisy[low] = rng.poisson(lam[low])
            sig_img = noisy / np.float32(p.dose)
            del lam, noisy, low
        sig_img = sig_img * gain[k0:k1, None, None].astype(np.float32) + offset[k0:k1, None, None].astype(np.float32)
        if p.read_noise > 0:
            sig_img += np.float32(p.read_noise) * rng.standard_normal(sig_img.shape, dtype=np.float32)
        img[k0:k1] = np.rint(np.clip(sig_img, 0.0, 1.0) * full).astype(out_dtype)
    return img


def _coerce_params(params: SynthParams | dict[str, Any] | None) -> SynthParams:
    if params is None:
        return SynthParams()
    if isinstance(params, SynthParams):
        return params
    if isinstance(params, dict):
        return SynthParams.from_dict(params)
    raise ConfigError(f"params must be SynthParams or a dict of knobs, got {type(params).__name__}")


def render(solid: np.ndarray, params: SynthParams | dict[str, Any], rng: np.random.Generator | None = None, *,
           out_shape: Sequence[int] | None = None, phase: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Image a solid structure with the pore-back physics and the instrument model.

    Parameters
    ----------
    solid : bool array, True = solid. An extended block from :func:`make_structure`
        (pass ``out_shape``), or any segmented volume (Z, Y, X) (``out_shape=None``:
        the whole volume is imaged; rays leaving it hit nothing).
    params : :class:`SynthParams` (or a dict of knobs).
    rng : random generator (noise, curtains, charging, drift).
    out_shape : (Z, Y, X) truth window inside the extended block.
    phase : optional bool array the shape of ``solid``: the second solid phase (three
        phases, :func:`split_solid`); its cut faces and back walls have ``phase_yield``
        times the first solid's yield.

    Returns
    -------
    image : uint8 (uint16 for bit_depth 16) array (Z, Y, X).
    depth : float32 array (Z, Y, X): 0 on solid, back-wall depth in slices on pores,
        -1 where no wall within the march limit.
    """
    p = _coerce_params(params)
    rng = np.random.default_rng() if rng is None else rng
    solid = np.asarray(solid)
    if solid.ndim != 3:
        raise ConfigError(f"solid must be a 3D array (Z, Y, X), got shape {solid.shape}")
    if solid.dtype != bool:
        solid = solid.astype(bool)
    if out_shape is None:
        win_shape, y0 = solid.shape, 0
    else:
        win_shape, y0 = _check_out_shape(solid.shape, out_shape, p)
    if phase is not None:
        phase = np.asarray(phase, dtype=bool)
        if phase.shape != solid.shape:
            raise ConfigError(f"phase must have the shape of solid {solid.shape}, got {phase.shape}")
    ghost, face_tex, hit_tex, hit_phase = _march_core(solid, p, win_shape, y0, rng, phase)
    z, y, x = ghost.shape
    win = solid[:z, y0:y0 + y]
    rsh = _shear(z, p.geometry.shift_per_slice)
    phase_win = None if phase is None else phase[:z, y0:y0 + y] & win
    image = _render_signal(win, ghost, p, rng, z_offsets=rsh, face_tex=face_tex, hit_tex=hit_tex,
                           phase_win=phase_win, hit_phase=hit_phase)
    depth = np.where(win, np.float32(0), np.where(ghost > 0, ghost.astype(np.float32), np.float32(-1)))
    return image, depth.astype(np.float32)


# ----------------------------------------------------------------------------- public entry


def _rng_and_seed(rng: Any, seed: int | None) -> tuple[np.random.Generator, dict[str, Any]]:
    info: dict[str, Any] = {}
    if seed is not None:
        if rng is not None:
            raise ConfigError("give either rng or seed, not both")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        info["seed"] = int(seed)
        return np.random.default_rng(int(seed)), info
    if rng is None:
        rng = np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    info["rng_state"] = _jsonable(rng.bit_generator.state)
    return rng, info


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


def synthesize(shape: Sequence[int], *, structure: str = "blobs", porosity: float = 0.8,
               difficulty: str = "hard", rng: np.random.Generator | None = None, seed: int | None = None,
               progress: Callable[[int, int], None] | None = None, **overrides: Any) -> SynthVolume:
    """Simulate a FIB-SEM stack of a porous structure with pore-back artifacts.

    Parameters
    ----------
    shape : (Z, Y, X) in voxels.
    structure : "blobs" | "spheres" | "fibres" | "membrane" (a dense skin over a porous
        support; ``skin_fraction``, ``skin_porosity``, ``skin_scale``,
        ``transition_fraction``, ``layer_axis``; ``params["membrane"]`` records the layers
        and the porosity each reached).
    porosity : pore fraction of the truth, in (0, 1); achieved within 0.01 (in practice
        0.002). For "membrane" the support's porosity (each row or slice of a layer is
        within about 0.02 of its target).
    difficulty : imaging preset "easy" | "medium" | "hard" (:func:`difficulty_params`).
    rng : random generator; its starting state is recorded in ``params["rng_state"]``.
    seed : alternatively an integer seed (recorded as ``params["seed"]``).
    progress : optional ``callback(done, total)`` over the three stages.
    **overrides : any :class:`SynthParams` knob (e.g. ``beam_sign=-1``,
        ``voxel_size=(20, 10, 10)``, ``depth_length=8``; ``phases=3`` for two solid
        phases and pore, ``phase_fraction``, ``phase_yield``; ``drift="contrast"`` for an
        imaging change along z, ``drift_strength``; ``params["drift_factors"]`` records
        the per-slice factors).

    Returns
    -------
    SynthVolume

    Raises
    ------
    ConfigError
        Unknown knob (lists the valid names), invalid value, bad shape.
    """
    shape = _check_shape(shape)
    if difficulty not in DIFFICULTIES:
        raise ConfigError(f"difficulty must be one of {', '.join(DIFFICULTIES)}; got {difficulty!r}")
    params = make_params(structure=structure, porosity=porosity, difficulty=difficulty, **overrides)
    rng, rng_info = _rng_and_seed(rng, seed)
    t0 = time.perf_counter()
    block = make_structure(shape, params.structure, params.porosity, rng, params=params)
    _, window = _block_and_window(shape, params)
    phase = split_solid(block, params, rng, window=window) if params.phases == 3 else None
    if progress is not None:
        progress(1, 3)
    t1 = time.perf_counter()
    image, depth = render(block, params, rng, out_shape=shape, phase=phase)
    if progress is not None:
        progress(3, 3)
    t2 = time.perf_counter()
    truth = (~block[window]).astype(np.uint8)
    if phase is not None:
        truth[phase[window]] = 2
    logger.debug("synthesize %s: structure %.2fs, render %.2fs", shape, t1 - t0, t2 - t1)
    meta = _meta(params, shape, truth, difficulty=difficulty, rng_info=rng_info)
    return SynthVolume(image=image, truth=truth, depth=depth, params=meta)


def _meta(params: SynthParams, shape, truth, *, difficulty: str | None, rng_info: dict[str, Any],
          structure_name: str | None = None) -> dict[str, Any]:
    d = params.to_dict()
    meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "generator": "activeseg.synth"}
    meta.update(d)
    meta["structure"] = structure_name or params.structure
    meta["shape"] = [int(v) for v in shape]
    meta["difficulty"] = difficulty
    meta["porosity_requested"] = None if structure_name else float(params.porosity)
    meta["porosity_achieved"] = float(np.mean(truth == 1))
    if params.phases > 2:
        meta["phase_fractions_achieved"] = [float(np.mean(truth == k)) for k in range(params.phases)]
    if params.structure == "membrane" and structure_name is None:
        meta["membrane"] = _membrane_meta(params, truth)
    if params.drift != "none":
        meta["drift_factors"] = {k: [round(float(v), 6) for v in f] for k, f in drift_factors(params, shape[0]).items()}
    meta["geometry"] = params.geometry.to_dict()
    meta["intensity_scale"] = (
        f"value = round(clip(I, 0, 1) * {2**params.bit_depth - 1}); cut face ~ face_yield, empty pore ~ pore_floor"
    )
    meta.update(rng_info)
    return _jsonable(meta)


def _membrane_meta(params: SynthParams, truth: np.ndarray) -> dict[str, Any]:
    """Where the layers lie and the porosity each reached (measured on the truth)."""
    ax = 1 if params.layer_axis == "y" else 0
    layers = membrane_layers(truth.shape[ax], params)
    other = tuple(a for a in range(3) if a != ax)
    prof = np.mean(truth == 1, axis=other)
    out: dict[str, Any] = {"layer_axis": params.layer_axis}
    for name in ("skin", "transition", "support"):
        a, b = layers[name]
        out[name] = [a, b]
        out[f"porosity_{name}"] = float(prof[a:b].mean()) if b > a else None
    return out


def render_volume(solid_zyx: np.ndarray, params: SynthParams | dict[str, Any] | None = None,
                  rng: np.random.Generator | None = None, *, difficulty: str = "hard", seed: int | None = None,
                  name: str = "user", **overrides: Any) -> SynthVolume:
    """Render a segmented volume someone already has (1 / True = solid).

    Parameters
    ----------
    solid_zyx : integer or bool array (Z, Y, X), nonzero = solid (e.g.
        ``sofc_lsm_cathode.tif``). z must be the milling direction.
    params : knobs; default: the ``difficulty`` preset plus ``overrides``.
    rng, seed : randomness (as in :func:`synthesize`).
    name : structure name recorded in ``params``.

    Returns
    -------
    SynthVolume
        Rays that leave the volume (through its back or its y edges) hit nothing
        (depth -1), so the last slices show fewer ghosts.
    """
    a = np.asarray(solid_zyx)
    if a.ndim != 3 or 0 in a.shape:
        raise ConfigError(f"solid volume must be 3D (Z, Y, X) and non-empty, got shape {a.shape}")
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.integer)):
            raise ConfigError(f"solid volume must be bool or integer labels (nonzero = solid), got {a.dtype}")
        a = a != 0
    if params is None:
        p = make_params(structure="blobs", porosity=max(min(1.0 - float(a.mean()), 0.999), 0.001),
                        difficulty=difficulty, **overrides)
    else:
        if overrides:
            base = _coerce_params(params).to_dict()
            unknown = sorted(set(overrides) - set(base))
            if unknown:
                raise ConfigError(
                    f"unknown synth parameter(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(_knob_names())}"
                )
            base.update(overrides)
            p = SynthParams.from_dict(base)
        else:
            p = _coerce_params(params)
        difficulty = None  # type: ignore[assignment]
    if p.phases != 2:
        raise ConfigError(
            f"render_volume images a two-phase volume (nonzero = solid), got phases={p.phases}; "
            "for a three-phase volume use synthesize(..., phases=3) or render(solid, params, phase=second_phase)"
        )
    rng, info = _rng_and_seed(rng, seed)
    image, depth = render(a, p, rng)
    truth = (~a).astype(np.uint8)
    meta = _meta(p, a.shape, truth, difficulty=difficulty, rng_info=info, structure_name=name)
    return SynthVolume(image=image, truth=truth, depth=depth, params=meta)


# ----------------------------------------------------------------------------- files


def save_synth(out_dir: str | Path, vol: SynthVolume) -> dict[str, Path]:
    """Write ``image.tif``, ``truth.tif`` (labels), ``depth.tif`` (float32), ``synth.json``.

    Returns
    -------
    dict
        Name ("image", "truth", "depth", "params") -> path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vs = vol.geometry.voxel_size
    paths = {
        "image": out / "image.tif",
        "truth": out / "truth.tif",
        "depth": out / "depth.tif",
        "params": out / "synth.json",
    }
    write_stack(paths["image"], vol.image, voxel_size=vs, kind="image")
    write_stack(paths["truth"], vol.truth, voxel_size=vs, kind="labels")
    write_stack(paths["depth"], vol.depth.astype(np.float32), voxel_size=vs, kind="image")
    # not atomic_write_json: its jsonable() turns NaN/inf into null; synth.json keeps exactly
    # json.dumps's text, byte for byte what earlier versions wrote
    atomic_write_text(paths["params"], json.dumps(vol.params, indent=2, sort_keys=True))
    return paths


def load_synth(out_dir: str | Path) -> SynthVolume:
    """Read a volume written by :func:`save_synth`."""
    d = Path(out_dir)
    missing = [n for n in ("image.tif", "truth.tif", "depth.tif", "synth.json") if not (d / n).exists()]
    if missing:
        raise ConfigError(
            f"{d} is not a synth directory: missing {', '.join(missing)}; write one with save_synth or `activeseg synth`"
        )
    params = json.loads((d / "synth.json").read_text())
    image = np.asarray(read_stack(d / "image.tif"))
    truth = np.asarray(read_stack(d / "truth.tif")).astype(np.uint8)
    depth = np.asarray(read_stack(d / "depth.tif")).astype(np.float32)
    return SynthVolume(image=image, truth=truth, depth=depth, params=params)


# ----------------------------------------------------------------------------- analysis


def measure_ghost_shift(image: np.ndarray, mask: np.ndarray, *, max_shift: float = 2.0, step: float = 0.02,
                        min_pixels: int = 100, per_pair: bool = False) -> float | np.ndarray:
    """Sub-pixel y shift that best maps slice k onto slice k+1 inside a mask.

    For each pair of consecutive slices, slice k is shifted along y by ``s`` (Fourier
    shift, which keeps the noise variance independent of ``s``, unlike linear
    interpolation that smooths noise at fractional shifts and pulls estimates to half
    pixels) and compared with slice k+1 by the mean squared difference over the pixels
    where ``mask`` holds on slice k+1 and, on slice k, on the whole y range sampled
    (so nothing outside the mask is compared). Both slices are standardised by their
    unshifted mean and standard deviation in the region (gain / offset drift). The
    score curves are averaged over the pairs and the minimum is refined by a parabola.
    With ``mask`` = pores with a back wall (grey pores) the result is the ghost
    parallax, ``s dz cot(alpha)`` px per slice; with ``mask`` = cut face it is ~0.

    Parameters
    ----------
    image : (Z, Y, X) array.
    mask : bool (Z, Y, X).
    max_shift, step : search range and grid (y pixels).
    min_pixels : pairs with fewer qualifying pixels are skipped.
    per_pair : return the minimum of each pair's curve instead (NaN where skipped).

    Returns
    -------
    float, or numpy.ndarray (Z - 1,) with ``per_pair``
        Shift in y pixels per slice (positive = towards larger y); NaN if no pair
        qualifies.
    """
    img = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if img.ndim != 3 or img.shape != mask.shape:
        raise ConfigError(f"image and mask must be 3D of the same shape, got {img.shape} and {mask.shape}")
    z, y, x = img.shape
    ey = int(math.ceil(max_shift)) + 1
    shifts = np.arange(-max_shift, max_shift + step / 2, step)
    ramp = np.exp(-2j * np.pi * np.fft.fftfreq(y)[None, :] * shifts[:, None])  # (S, Y)
    foot_k = np.ones((2 * ey + 1, 3), dtype=bool)
    foot_k1 = np.ones((3, 3), dtype=bool)
    curves = []
    per = np.full(max(z - 1, 0), np.nan)
    for k in range(z - 1):
        m = ndimage.binary_erosion(mask[k], foot_k) & ndimage.binary_erosion(mask[k + 1], foot_k1)
        m[: ey + 1] = False
        m[y - ey - 1:] = False
        ys, xs = np.nonzero(m)
        if ys.size < min_pixels:
            continue
        b = img[k + 1][ys, xs]
        sb = b.std()
        a0 = img[k][ys, xs]
        sa = a0.std()
        if sa == 0 or sb == 0:
            continue
        b = (b - b.mean()) / sb
        cols, ci = np.unique(xs, return_inverse=True)
        spec = np.fft.fft(img[k][:, cols], axis=0)  # (Y, ncols)
        shifted = np.fft.ifft(spec[None, :, :] * ramp[:, :, None], axis=1).real  # (S, Y, ncols)
        av = shifted[:, ys, ci]
        av = (av - av.mean(axis=1, keepdims=True)) / sa
        score = np.mean((av - b[None, :]) ** 2, axis=1)
        curves.append(score)
        per[k] = shifts[int(np.argmin(score))]
    if per_pair:
        return per
    if not curves:
        return float("nan")
    mc = np.mean(curves, axis=0)
    i = int(np.argmin(mc))
    s = float(shifts[i])
    if 0 < i < len(shifts) - 1:
        c0, c1, c2 = mc[i - 1], mc[i], mc[i + 1]
        den = c0 - 2 * c1 + c2
        if den > 0:
            s -= 0.5 * (c2 - c0) / den * step
    return s
