"""The in-plane grid of tiles that region queries pick from (docs/architecture.md §3).

A session cuts every slice into square tiles of ``[session] tile`` pixels (default 128),
fixed at ``init``: row by row from the top-left corner, the last row and column clipped
at the slice's edge. A region is one tile of one slice, ``(z, t)``, with the tile index
``t = row * n_cols + col``. Files of a region carry both in their names
(:func:`region_name`: ``z0120_t017``).

This module imports numpy and :mod:`activeseg.errors` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from activeseg.errors import ConfigError

__all__ = ["TileGrid", "region_name", "parse_region", "DEFAULT_TILE", "MIN_TILE"]

DEFAULT_TILE = 128
"""Tile side in pixels of a session whose config has no ``tile`` key (every session made before)."""

MIN_TILE = 16
"""The smallest tile side ``[session] tile`` accepts."""

_REGION = re.compile(r"(?<![0-9A-Za-z])z(\d{1,6})_t(\d{1,6})(?![0-9])")


@dataclass(frozen=True)
class TileGrid:
    """The grid of ``tile`` x ``tile`` squares over slices of ``ny`` x ``nx`` pixels.

    Attributes
    ----------
    ny, nx : slice height and width in pixels.
    tile : tile side in pixels; edge tiles are clipped to the slice.
    """

    ny: int
    nx: int
    tile: int

    def __post_init__(self) -> None:
        for name in ("ny", "nx", "tile"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
                raise ConfigError(f"TileGrid.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))

    @property
    def n_rows(self) -> int:
        """Tiles along y: ``ceil(ny / tile)``."""
        return -(-self.ny // self.tile)

    @property
    def n_cols(self) -> int:
        """Tiles along x: ``ceil(nx / tile)``."""
        return -(-self.nx // self.tile)

    @property
    def n_tiles(self) -> int:
        """Tiles per slice: ``n_rows * n_cols``."""
        return self.n_rows * self.n_cols

    def _check(self, t) -> int:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < self.n_tiles:
            raise ConfigError(
                f"tile index {t!r} is outside the grid of {self.n_rows} x {self.n_cols} tiles "
                f"(0..{self.n_tiles - 1}) of {self.tile}-pixel tiles over {self.ny} x {self.nx} slices"
            )
        return int(t)

    def bounds(self, t) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``t`` (half-open, clipped at the slice's edge)."""
        t = self._check(t)
        row, col = divmod(t, self.n_cols)
        y0, x0 = row * self.tile, col * self.tile
        return y0, min(y0 + self.tile, self.ny), x0, min(x0 + self.tile, self.nx)

    def pixels(self) -> np.ndarray:
        """int64 ``(n_tiles,)``: the pixels of every tile (fewer at the clipped edges)."""
        h = np.minimum(self.tile, self.ny - self.tile * np.arange(self.n_rows))
        w = np.minimum(self.tile, self.nx - self.tile * np.arange(self.n_cols))
        return np.outer(h, w).astype(np.int64).ravel()

    def reduce(self, maps, how: str = "mean") -> np.ndarray:
        """Per-tile reduction of per-pixel maps.

        Parameters
        ----------
        maps : float (n, Y, X) (or one (Y, X) map) of slices of this grid's size.
        how : "mean" or "max" over each tile's pixels.

        Returns
        -------
        float32 (n, n_tiles) (``(n_tiles,)`` for one map).
        """
        arr = np.asarray(maps)
        one = arr.ndim == 2
        if one:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (self.ny, self.nx):
            raise ConfigError(f"tile reduction needs maps of shape (n, {self.ny}, {self.nx}), got {np.shape(maps)}")
        if how not in ("mean", "max"):
            raise ConfigError(f"unknown tile reduction {how!r}; choose mean or max")
        n = arr.shape[0]
        ph, pw = self.n_rows * self.tile, self.n_cols * self.tile
        fill = 0.0 if how == "mean" else -np.inf
        pad = np.full((n, ph, pw), fill, dtype=np.float64)
        pad[:, : self.ny, : self.nx] = arr
        blocks = pad.reshape(n, self.n_rows, self.tile, self.n_cols, self.tile)
        if how == "mean":
            out = blocks.sum(axis=(2, 4)).reshape(n, -1) / self.pixels()[None]
        else:
            out = blocks.max(axis=(2, 4)).reshape(n, -1)
        out = out.astype(np.float32)
        return out[0] if one else out

    def tile_of(self, y, x) -> int:
        """The index of the tile holding pixel ``(y, x)``."""
        if not (0 <= int(y) < self.ny and 0 <= int(x) < self.nx):
            raise ConfigError(f"pixel ({y}, {x}) is outside the {self.ny} x {self.nx} slice")
        return (int(y) // self.tile) * self.n_cols + int(x) // self.tile


def region_name(z: int, t: int) -> str:
    """The name stem of region ``(z, t)``'s files: ``z0120_t017``."""
    return f"z{int(z):04d}_t{int(t):03d}"


def parse_region(name: str) -> tuple[int, int] | None:
    """``(z, t)`` from a region file's name (``z0120_t017_mask.tif`` ...), None if not a region's."""
    found = _REGION.search(str(name))
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2))
