"""Acquisition geometry of a FIB-SEM stack (docs/architecture.md §3, §7).

Frame: z = milling direction (slice 0 milled first), y = image vertical (in-face
direction along the ion beam), x = image horizontal. The electron beam makes angle
``alpha`` with the cut face, direction ``b = (sin a, s cos a, 0)`` with beam sign
``s = +1 / -1``. A pore pixel shows the first solid hit along ``b``; a back wall at depth
``d`` behind the face appears shifted in y by ``s * d * cot(alpha)``, so in aligned slices
ghosts move by ``s * dz * cot(alpha)`` per slice while cut faces stay put.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from activeseg.errors import ConfigError

__all__ = ["Geometry", "VoxelSize", "shift_rows"]

VoxelSize = tuple[float, float, float]
"""Voxel size ``(z, y, x)`` in nanometres."""


@dataclass(frozen=True)
class Geometry:
    """Voxel size, beam angle and beam sign of one acquisition.

    Parameters
    ----------
    voxel_size : (z, y, x) floats in nanometres, or None when unknown (then the
        voxels are taken as isotropic for parallax computations).
    alpha_deg : angle between the electron beam and the cut face, degrees
        (52 on FEI/Thermo instruments, 54 on Zeiss).
    beam_sign : +1 or -1, the sign ``s`` of the beam's y component; None when not
        known yet (estimate it from the stack).
    """

    voxel_size: VoxelSize | None = None
    alpha_deg: float = 52.0
    beam_sign: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < float(self.alpha_deg) < 90.0:
            raise ConfigError(
                f"beam angle alpha must be between 0 and 90 degrees, got {self.alpha_deg}; "
                "use 52 for FEI/Thermo and 54 for Zeiss instruments"
            )
        if self.beam_sign not in (None, 1, -1):
            raise ConfigError(f"beam_sign must be +1, -1 or None (unknown), got {self.beam_sign!r}")
        if self.voxel_size is not None:
            vs = tuple(float(v) for v in self.voxel_size)
            if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
                raise ConfigError(
                    f"voxel_size must be three positive numbers (z, y, x) in nm, got {self.voxel_size!r}"
                )
            object.__setattr__(self, "voxel_size", vs)

    @property
    def z_over_y(self) -> float:
        """Slice thickness in units of the y pixel size (1.0 when the voxel size is unknown)."""
        if self.voxel_size is None:
            return 1.0
        return self.voxel_size[0] / self.voxel_size[1]

    @property
    def shift_per_slice(self) -> float:
        """Ghost shift in y pixels per slice of depth: ``s * (dz / dy) * cot(alpha)``.

        Uses ``s = +1`` when the beam sign is unknown; multiply by the estimated sign.
        """
        sign = 1 if self.beam_sign is None else self.beam_sign
        return sign * self.z_over_y / math.tan(math.radians(self.alpha_deg))

    def with_sign(self, beam_sign: int) -> Geometry:
        """Return a copy with the beam sign set."""
        return replace(self, beam_sign=beam_sign)

    def to_dict(self) -> dict:
        """JSON-serialisable form (for session manifests and synth.json)."""
        return {
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "alpha_deg": float(self.alpha_deg),
            "beam_sign": self.beam_sign,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        vs = d.get("voxel_size")
        return cls(
            voxel_size=None if vs is None else tuple(vs),
            alpha_deg=float(d.get("alpha_deg", 52.0)),
            beam_sign=d.get("beam_sign"),
        )


def shift_rows(img: np.ndarray, t: float, *, edges: Literal["clamp", "copy"] = "clamp") -> np.ndarray:
    """Shift along y (axis -2) by ``t`` rows: ``out[..., y, :] = img(y + t)``, linear interpolation.

    This is the parallax shift: a back wall seen as a ghost moves by
    ``Geometry.shift_per_slice`` rows per slice of depth (§7), so the RF's parallax
    features compare slice ``k`` with slice ``k + j`` shifted by ``j * shift_per_slice``,
    and the simulator moves ghost signal by its sub-pixel shear residual.

    Parameters
    ----------
    img : float32 ``(..., Y, X)``; not modified.
    t : shift in rows (any real for ``edges="clamp"``; meant for ``|t| <= 1`` with
        ``edges="copy"``, beyond which it extrapolates).
    edges : how rows whose source lies beyond the first / last row are filled.

        - "clamp": source rows are clamped to ``[0, Y - 1]``, so such a row interpolates
          between copies of the edge row. Weights come from the fractional part
          ``t - floor(t)`` (the RF's parallax features).
        - "copy": for ``0 < |t|``, the one row whose neighbour lies outside is a copy of
          the edge row. Weights are ``1 - |t|`` on the row itself and ``|t|`` on its
          neighbour towards ``sign(t)`` (the simulator).

        The two agree up to float32 rounding in the interior; each reproduces its
        caller's numbers bit for bit.

    Returns
    -------
    A new array, same shape and dtype as ``img``.
    """
    n = img.shape[-2]
    rows = np.arange(n)
    if edges == "clamp":
        base = math.floor(t)
        w_far = np.float32(t - base)
        w_near = np.float32(1.0) - w_far
        near, far = rows + base, rows + base + 1
    elif edges == "copy":
        w_far = np.float32(abs(t))
        w_near = np.float32(1.0 - abs(t))
        near, far = rows, rows + (1 if t >= 0 else -1)
    else:
        raise ConfigError(f"edges must be 'clamp' or 'copy', got {edges!r}")
    near = np.clip(near, 0, n - 1)
    out = img[..., near, :]
    if w_far == 0:
        return out
    out *= w_near
    out += w_far * img[..., np.clip(far, 0, n - 1), :]
    if edges == "copy":
        outside = (far < 0) | (far >= n)
        out[..., outside, :] = img[..., near[outside], :]
    return out
