"""Acquisition geometry of a FIB-SEM stack (DESIGN.md §3, §7).

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

from activeseg.errors import ConfigError

__all__ = ["Geometry", "VoxelSize"]

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
