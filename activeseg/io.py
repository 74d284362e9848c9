"""Read and write FIB-SEM image stacks, label files and probability volumes.

This is the only module of activeseg that talks to :mod:`tifffile`.

Reading
-------
:func:`open_stack` returns a lazy :class:`Stack` of shape ``(Z, Y, X)``. Indexing it
with numpy semantics reads only the slices asked for:

- uncompressed, contiguous TIFF (what ImageJ/Fiji, tifffile and most instruments
  write): a read-only ``numpy.memmap`` over the image data; one slice costs one slice
  of I/O and RSS, however large the file (``Stack.memmapped`` is True);
- compressed or non-contiguous TIFF: page by page (``TiffFile.pages[i].asarray()``),
  the file stays open between reads;
- a folder of single-slice TIFF/PNG files in natural sort order (``slice_2`` before
  ``slice_10``): the files of the slices asked for.

Supported sources: multipage TIFF, ImageJ hyperstack (singleton C/T axes are
squeezed; a real channel axis is an error), OME-TIFF, and folders of slices.

Axes: the file's one axis besides Y and X holds the slices, whatever tifffile calls it
(Z, or Q/I/T for files without axis metadata). A file whose only such axis is C with
more than 4 channels, grayscale, is read as a z-stack with a warning: that is what
``tifffile.imwrite(path, zyx, imagej=True)`` without ``metadata={'axes': 'ZYX'}``
writes. 2 to 4 channels are refused as multichannel unless
``open_stack(..., axes="ZYX")`` (command line ``--axes ZYX``) says the single non-YX
axis is z; the override never merges two axes (a Z x C file stays refused).

Dtypes: uint8, uint16 and float32 are read as they are. Other dtypes are converted
when the conversion is exact or harmless: bool -> uint8; int8, int16, float16 and
float64 -> float32 (float64 loses precision beyond 7 significant digits, never
relevant for image intensities). Anything else (int32, uint32, 64-bit integers,
complex) raises :class:`~activeseg.errors.StackError`. Float data are checked for NaN
and +-inf on every read (the error names the slice and counts the values);
``open_stack(..., validate=True)`` scans the whole stack once at open.
:func:`intensity_warning` tells when a stack is constant or nearly so (a wrong file
or channel exported), from a sample of its slices.

Voxel size
----------
``Stack.voxel_size`` is ``(z, y, x)`` in nanometres when all three are known, else
None; ``Stack.voxel_size_partial`` keeps whatever is known (None per unknown axis) and
``Stack.voxel_size_source`` says where each entry came from. Sources, per axis in this
order: the ``voxel_size=`` argument (a 3-tuple; None entries mean "keep what the file
says"), OME ``PhysicalSize{X,Y,Z}`` (+ unit, default micrometre), ImageJ
(1 / ``XResolution``, 1 / ``YResolution``, ``spacing`` with ``unit``; ImageJ omits
``spacing`` when it is 1, so a calibrated ImageJ stack without ``spacing`` has z = 1
unit), FEI/Thermo tags (``[Scan] PixelWidth/PixelHeight`` in metres; z is never in
FEI tags) and Zeiss SEM tags (``ap_image_pixel_size``, x = y; no z). A partially
known voxel size (FEI/Zeiss: y and x only) keeps the known entries; supply z with
``voxel_size=(z, None, None)``. Plain TIFF resolution tags (often a meaningless
72 dpi) are not trusted.

FEI/Thermo instruments store an information bar under the scan. When FEI metadata
show the stored image is taller than the scan (``[Image] ResolutionY``, or
``[PrivateFei] DatabarHeight``) the bar is cropped automatically and recorded in
``Stack.infobar_rows``; the user ``crop`` then applies to the image without the bar.
A Zeiss "data zone" is not described by its metadata and is not detected: remove it
with ``crop``.

Writing
-------
:func:`write_stack` writes an ImageJ-compatible TIFF (axes ZYX, ``spacing`` and
resolution with unit ``nm``) so Fiji and napari open it with the right scale; labels
carry a small lookup table so classes 0/1 (and 255 = unlabelled) are visible in Fiji.
The write is atomic, through :func:`activeseg.safety.atomic_path` (temporary file in
the same folder, fsync, ``os.replace``; on any error the target is left as it was and
the temporary file removed, and an ``OSError`` such as a full disk becomes an
:class:`~activeseg.errors.OutputError` naming the file and the fix); an uncompressed
write that cannot fit on the disk is refused before it starts
(:func:`activeseg.safety.check_free_space`).
:func:`create_stack` returns a writable memmap backed by a new ImageJ TIFF for
streaming outputs larger than RAM. Free space is checked first and the file's disk
blocks are reserved right after it is created (:func:`activeseg.safety.reserve`), so
a full disk raises an error at creation instead of killing the process with SIGBUS
while slices are written. It is *not* atomic (the file exists, zero-filled, from the
start): write it under a temporary name and ``os.replace`` it after ``flush()`` when a
crash must not leave a half-filled file behind.

Labels
------
:func:`read_labels` reads labels people drew or corrected (DESIGN.md §3) into the
in-memory convention (uint8, 0..C-1, 255 = unlabelled), one (Y, X) array per global
slice index.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from activeseg import safety
from activeseg.errors import ConfigError, LabelError, OutputError, StackError

__all__ = [
    "Crop",
    "Stack",
    "open_stack",
    "read_stack",
    "write_stack",
    "create_stack",
    "read_labels",
    "normalize_labels",
    "detect_infobar",
    "intensity_warning",
    "natural_sort_key",
    "slice_index_from_name",
    "LABEL_KINDS",
]

logger = logging.getLogger(__name__)

VoxelSizeArg = Sequence[float | None] | None
PartialVoxelSize = tuple[float | None, float | None, float | None]

LABEL_KINDS = ("mask", "partial", "scribble")
"""Label file conventions understood by :func:`read_labels`."""

_TIFF_SUFFIXES = (".tif", ".tiff")
_SLICE_SUFFIXES = (".tif", ".tiff", ".png")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG"
# Errors tifffile / its codecs raise on corrupt or truncated files.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tifffile.TiffFileError,
    ValueError,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,  # imagecodecs' DeflateError, ZlibError, ... derive from it
    MemoryError,  # a corrupt header can claim absurd sizes
)
_IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_CONVERT_DTYPES = {
    np.dtype(bool): np.dtype(np.uint8),
    np.dtype(np.int8): np.dtype(np.float32),
    np.dtype(np.int16): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float32),
}
_HOW_TO_CONVERT = (
    "convert it to uint8, uint16 or float32 first (e.g. in Fiji: Image > Type, or "
    "numpy: array.astype(np.float32))"
)

_UNIT_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "inch": 2.54e7, "in": 2.54e7,
}

# Lookup table for label stacks (ImageJ 'LUTs'): class colours, 255 = unlabelled grey.
_LABEL_COLOURS = (
    (0, 0, 0),  # 0 solid: black
    (255, 255, 255),  # 1 pore: white
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)
_UNLABELLED_COLOUR = (128, 128, 128)

# Above this size a classic (32-bit) TIFF cannot hold the data and its IFDs.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25


# --------------------------------------------------------------------------- helpers


class _Single2DError(StackError):
    """A path holds one 2D image where a stack was expected (read_labels accepts it)."""


def natural_sort_key(name: str | os.PathLike[str]) -> tuple:
    """Sort key that orders embedded numbers numerically (``slice_2`` < ``slice_10``).

    Parameters
    ----------
    name : file name or path (only the final component is used).

    Returns
    -------
    tuple usable as ``sorted(..., key=natural_sort_key)``.
    """
    text = Path(name).name
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts)


_Z_INDEX = re.compile(r"(?<![A-Za-z])[zZ](\d+)")


def slice_index_from_name(name: str | os.PathLike[str]) -> int | None:
    """Global slice index carried by a label file name (``mask_z0120.tif`` -> 120).

    The index is the number after a ``z`` that is not preceded by a letter; when
    several appear, the last one counts. Returns None when the name carries none.
    """
    stem = Path(name).name
    for suffix in (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    found = _Z_INDEX.findall(stem)
    return int(found[-1]) if found else None


def _unit_scale_nm(unit: Any) -> float | None:
    """Nanometres per ``unit`` or None when the unit is unknown/uncalibrated."""
    if unit is None:
        return None
    text = str(unit).strip()
    if "\\u" in text:  # ImageJ escapes non-ASCII units: "\\u00B5m"
        try:
            text = text.encode("ascii", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            return None
    return _UNIT_NM.get(text.lower().replace("\u00b5", "µ"))


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _check_voxel_size_arg(voxel_size: VoxelSizeArg) -> PartialVoxelSize:
    if voxel_size is None:
        return (None, None, None)
    if isinstance(voxel_size, (str, bytes)) or not hasattr(voxel_size, "__len__"):
        raise ConfigError(
            f"voxel_size must be three numbers (z, y, x) in nm, got {voxel_size!r}; "
            "e.g. voxel_size=(10, 5, 5), or (10, None, None) to give only z"
        )
    if len(voxel_size) != 3:
        raise ConfigError(
            f"voxel_size must have three entries (z, y, x) in nm, got {len(voxel_size)}: "
            f"{tuple(voxel_size)!r}; use None for entries the file should provide"
        )
    out: list[float | None] = []
    for axis, v in zip("zyx", voxel_size):
        if v is None:
            out.append(None)
            continue
        pv = _positive(v)
        if pv is None:
            raise ConfigError(
                f"voxel size {axis} must be a positive number of nanometres, got {v!r}"
            )
        out.append(pv)
    return (out[0], out[1], out[2])


def _validate_full_voxel_size(voxel_size: VoxelSizeArg) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    vs = _check_voxel_size_arg(voxel_size)
    if any(v is None for v in vs):
        raise ConfigError(
            f"to write a voxel size all of (z, y, x) must be known, got {tuple(voxel_size)!r}; "
            "pass voxel_size=None to write no scale"
        )
    return (float(vs[0]), float(vs[1]), float(vs[2]))  # type: ignore[arg-type]


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join("?" if s is None else str(int(s)) for s in shape) + ")"


# ------------------------------------------------------------------------------ Crop


@dataclass(frozen=True)
class Crop:
    """Half-open z/y/x ranges to keep, in pixels of the stack (after the info bar).

    Each range is ``(start, stop)``; None means "from the beginning" / "to the end".
    ``Crop.parse("0:100,:,200:712")`` keeps slices 0..99, all rows and columns
    200..711.
    """

    z: tuple[int | None, int | None] = (None, None)
    y: tuple[int | None, int | None] = (None, None)
    x: tuple[int | None, int | None] = (None, None)

    def __post_init__(self) -> None:
        for axis in "zyx":
            rng = getattr(self, axis)
            if not isinstance(rng, tuple) or len(rng) != 2:
                raise ConfigError(
                    f"crop {axis} must be a (start, stop) pair, got {rng!r}; "
                    "e.g. Crop(z=(0, 100)) or Crop.parse('0:100,:,:')"
                )
            vals = []
            for v in rng:
                if v is None:
                    vals.append(None)
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise ConfigError(f"crop {axis} bounds must be integers or None, got {rng!r}")
                if v < 0:
                    raise ConfigError(
                        f"crop {axis} bounds must be >= 0 (pixel indices), got {rng!r}; "
                        "negative indices are not supported in crops"
                    )
                vals.append(int(v))
            if vals[0] is not None and vals[1] is not None and vals[0] >= vals[1]:
                raise ConfigError(
                    f"crop {axis} range {vals[0]}:{vals[1]} is empty; start must be below stop"
                )
            object.__setattr__(self, axis, (vals[0], vals[1]))

    @classmethod
    def parse(cls, text: str) -> Crop:
        """Parse ``"z0:z1,y0:y1,x0:x1"``; an empty side or ``:`` means the full range.

        Examples: ``"0:100,:,200:712"``, ``"100:,:,:"`` (slices 100 to the end).
        Negative indices are not accepted.
        """
        if not isinstance(text, str):
            raise ConfigError(f"crop must be text like '0:100,:,200:712', got {text!r}")
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise ConfigError(
                f"crop {text!r} must have three comma-separated ranges z,y,x, got {len(parts)}; "
                "e.g. '0:100,:,200:712' (':' keeps the whole axis)"
            )
        ranges = []
        for axis, part in zip("zyx", parts):
            if part in ("", ":"):
                ranges.append((None, None))
                continue
            m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", part)
            if m is None:
                raise ConfigError(
                    f"crop {axis} range {part!r} in {text!r} is not 'start:stop' with "
                    "non-negative integers; e.g. '0:100' or ':' for all"
                )
            a, b = m.group(1), m.group(2)
            ranges.append((int(a) if a else None, int(b) if b else None))
        return cls(z=ranges[0], y=ranges[1], x=ranges[2])

    def resolve(self, shape: Sequence[int]) -> tuple[range, range, range]:
        """Concrete index ranges for a ``(Z, Y, X)`` shape; raises ConfigError if outside."""
        out = []
        names = {"z": "slices", "y": "rows (height)", "x": "columns (width)"}
        for axis, n in zip("zyx", shape):
            start, stop = getattr(self, axis)
            start = 0 if start is None else start
            stop = n if stop is None else stop
            if stop > n or start >= stop:
                raise ConfigError(
                    f"crop {axis} {start}:{stop} does not fit the stack: it has {n} "
                    f"{names[axis]} (valid range 0:{n}); stack shape {_shape_text(shape)}"
                )
            out.append(range(start, stop))
        return (out[0], out[1], out[2])

    def __str__(self) -> str:
        def fmt(r: tuple[int | None, int | None]) -> str:
            return f"{'' if r[0] is None else r[0]}:{'' if r[1] is None else r[1]}"

        return ",".join(fmt(getattr(self, a)) for a in "zyx")


# ------------------------------------------------------------------------- metadata


def detect_infobar(fei_metadata: dict[str, Any] | None, height: int) -> int:
    """Rows of an FEI/Thermo information bar at the bottom of a stored image.

    Parameters
    ----------
    fei_metadata : the dict :attr:`tifffile.TiffFile.fei_metadata` returns (sections
        of the FEI INI text, e.g. ``{"Image": {"ResolutionY": 884}, ...}``), or None.
    height : stored image height in pixels.

    Returns
    -------
    int, rows to drop at the bottom (0 when there is no bar). The scan height
    ``[Image] ResolutionY`` decides when present (bar = height - ResolutionY; 0 when
    equal, i.e. the image was exported without its bar); else
    ``[PrivateFei] DatabarHeight`` when it is smaller than the image.
    """
    if not fei_metadata:
        return 0
    image = fei_metadata.get("Image") or {}
    res_y = image.get("ResolutionY") if isinstance(image, dict) else None
    try:
        res_y = int(res_y) if res_y is not None else None
    except (TypeError, ValueError):
        res_y = None
    if res_y is not None and res_y > 0:
        if res_y < height:
            return int(height - res_y)
        if res_y == height:
            return 0
        logger.debug("FEI ResolutionY %s exceeds the stored height %s; ignoring", res_y, height)
    private = fei_metadata.get("PrivateFei") or {}
    bar = private.get("DatabarHeight") if isinstance(private, dict) else None
    try:
        bar = int(bar) if bar is not None else 0
    except (TypeError, ValueError):
        bar = 0
    return bar if 0 < bar < height else 0


def _fei_pixel_size(fei: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(y, x) pixel size in nm from FEI/Thermo metadata (metres in the tags)."""
    if not fei:
        return (None, None)
    for section in ("Scan", "EScan", "IScan"):
        sec = fei.get(section)
        if not isinstance(sec, dict):
            continue
        x = _positive(sec.get("PixelWidth"))
        y = _positive(sec.get("PixelHeight"))
        if x is not None or y is not None:
            y = y if y is not None else x
            x = x if x is not None else y
            return (y * 1e9 if y else None, x * 1e9 if x else None)
    return (None, None)


def _zeiss_pixel_size(sem: dict[str, Any] | None) -> float | None:
    """Pixel size in nm from Zeiss SmartSEM metadata (``ap_image_pixel_size``)."""
    if not sem:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        item = sem.get(key)
        if isinstance(item, tuple) and len(item) >= 2:
            value = _positive(item[1])
            unit = item[2] if len(item) >= 3 else "nm"
            scale = _unit_scale_nm(unit)
            if value is not None and scale is not None:
                return value * scale
    return None


def _imagej_voxel_size(tif: tifffile.TiffFile, n_slices: int) -> PartialVoxelSize:
    meta = tif.imagej_metadata or {}
    scale = _unit_scale_nm(meta.get("unit"))
    if scale is None:
        return (None, None, None)
    page = tif.pages.first
    size = []
    for code in (283, 282):  # YResolution, XResolution: pixels per unit
        try:
            num, den = page.tags.valueof(code, default=(1, 1))
            size.append(_positive(den / num) if num else None)
        except (TypeError, ValueError, ZeroDivisionError):
            size.append(None)
    spacing = meta.get("spacing")
    if spacing is None and n_slices > 1:
        spacing = 1.0  # ImageJ omits spacing when it equals 1 unit
    z = _positive(spacing)
    return (
        z * scale if z else None,
        size[0] * scale if size[0] else None,
        size[1] * scale if size[1] else None,
    )


def _ome_voxel_size(xml: str | None) -> PartialVoxelSize:
    if not xml:
        return (None, None, None)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        logger.warning("OME-XML metadata could not be parsed; voxel size not read from it")
        return (None, None, None)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return (None, None, None)
    out = []
    for axis in "ZYX":
        value = _positive(pixels.get(f"PhysicalSize{axis}"))
        scale = _unit_scale_nm(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        out.append(value * scale if value is not None and scale is not None else None)
    return (out[0], out[1], out[2])


def _merge_voxel_sizes(
    sources: Sequence[tuple[str, PartialVoxelSize]],
) -> tuple[PartialVoxelSize, tuple[str | None, str | None, str | None]]:
    values: list[float | None] = [None, None, None]
    origin: list[str | None] = [None, None, None]
    for name, vs in sources:
        for i in range(3):
            if values[i] is None and vs[i] is not None:
                values[i] = float(vs[i])  # type: ignore[arg-type]
                origin[i] = name
    return (values[0], values[1], values[2]), (origin[0], origin[1], origin[2])


def _file_metadata(tif: tifffile.TiffFile, n_slices: int) -> tuple[list[tuple[str, PartialVoxelSize]], dict | None]:
    """Voxel-size candidates (priority order) and FEI metadata of an open TIFF."""
    sources: list[tuple[str, PartialVoxelSize]] = []
    fei = None
    try:
        if tif.is_ome:
            sources.append(("ome", _ome_voxel_size(tif.ome_metadata)))
        if tif.is_imagej:
            sources.append(("imagej", _imagej_voxel_size(tif, n_slices)))
        if tif.is_fei:
            fei = tif.fei_metadata
            y, x = _fei_pixel_size(fei)
            sources.append(("fei", (None, y, x)))
        if tif.is_sem:
            p = _zeiss_pixel_size(tif.sem_metadata)
            sources.append(("zeiss", (None, p, p)))
    except _READ_ERRORS as exc:  # metadata is optional; the pixels may still be fine
        logger.warning("could not parse metadata of %s (%s); voxel size unknown", tif.filename, exc)
    return sources, fei


# -------------------------------------------------------------------------- backends


class _MemmapSource:
    """Slices from a read-only memmap of contiguous, uncompressed image data."""

    memmapped = True

    def __init__(self, mm: np.memmap) -> None:
        self._mm: np.memmap | None = mm

    def read(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        if self._mm is None:
            raise StackError("the stack is closed; open it again with open_stack(path)")
        return self._mm[z, ys, xs]

    def describe(self, z: int) -> str:
        return f"slice {z}"

    def close(self) -> None:
        self._mm = None


class _PageSource:
    """Slices decoded page by page from an open TiffFile (compressed or scattered)."""

    memmapped = False

    def __init__(self, tif: tifffile.TiffFile, pages: Sequence[Any], yx: tuple[int, int]) -> None:
        self._tif: tifffile.TiffFile | None = tif
        self._pages = pages
        self._yx = yx

    def read(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        if self._tif is None:
            raise StackError("the stack is closed; open it again with open_stack(path)")
        arr = self._pages[z].asarray()
        return arr.reshape(self._yx)[ys, xs]

    def describe(self, z: int) -> str:
        return f"slice {z} (TIFF page {getattr(self._pages[z], 'index', z)})"

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None


class _FolderSource:
    """Slices read from one file per slice."""

    memmapped = False

    def __init__(self, files: Sequence[Path], yx: tuple[int, int], purpose: str) -> None:
        self._files = list(files)
        self._yx = yx
        self._purpose = purpose

    def read(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        arr = _read_slice_file(self._files[z], self._purpose)
        if arr.shape != self._yx:
            raise StackError(
                f"slice file {self._files[z].name} has shape {_shape_text(arr.shape)} but the "
                f"folder's slices are {_shape_text(self._yx)}; did the folder change since it "
                "was opened?"
            )
        return arr[ys, xs]

    def describe(self, z: int) -> str:
        return f"slice {z} (file {self._files[z].name})"

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ Stack


class Stack:
    """A lazily read 3D grayscale image stack ``(Z, Y, X)``; create with :func:`open_stack`.

    Indexing follows numpy semantics; the first index selects slices (int, slice,
    list/array of ints or a boolean mask) and only those slices are read. Results are
    fresh in-memory arrays of dtype :attr:`dtype`, never views of the file.

    Attributes
    ----------
    path : Path of the file or folder.
    shape : (Z, Y, X) after the info bar and the user crop.
    dtype : numpy dtype of the returned arrays (uint8, uint16 or float32).
    voxel_size : (z, y, x) in nm, or None unless all three are known.
    voxel_size_partial : (z, y, x) with None for each unknown entry.
    voxel_size_source : per axis, where the entry came from ("argument", "ome",
        "imagej", "fei", "zeiss") or None.
    memmapped : True when slices come from a memory map of the file.
    format : "tiff", "imagej", "ome" or "folder".
    infobar_rows : rows of an instrument information bar that were cropped (0 if none).
    crop : the user :class:`Crop` applied (None if none).
    axes_override : the ``axes`` given to :func:`open_stack` (None or "ZYX").
    source_shape : (Z, Y, X) of the stored data before any cropping.
    nbytes : bytes of the whole (cropped) stack in memory.
    file_size : bytes on disk (sum of the files for a folder).
    """

    ndim = 3

    def __init__(
        self,
        *,
        path: Path,
        source: _MemmapSource | _PageSource | _FolderSource,
        source_shape: tuple[int, int, int],
        raw_dtype: np.dtype,
        dtype: np.dtype,
        fmt: str,
        region: tuple[range, range, range],
        infobar_rows: int,
        crop: Crop | None,
        voxel_size_partial: PartialVoxelSize,
        voxel_size_source: tuple[str | None, str | None, str | None],
        file_size: int,
        voxel_size_arg: VoxelSizeArg,
        purpose: str,
        axes_override: str | None = None,
        reopen_axes: str | None = None,
    ) -> None:
        self.path = path
        self._source = source
        self.source_shape = source_shape
        self._raw_dtype = raw_dtype
        self.dtype = dtype
        self.format = fmt
        self._region = region
        self.infobar_rows = int(infobar_rows)
        self.crop = crop
        self.voxel_size_partial = voxel_size_partial
        self.voxel_size_source = voxel_size_source
        self.file_size = int(file_size)
        self._voxel_size_arg = voxel_size_arg
        self._purpose = purpose
        self.axes_override = axes_override
        # what a pickled copy reopens with: the same as axes_override, or "ZYX" when the
        # file's channels were read as z automatically (same slices, no repeated warning)
        self._reopen_axes = reopen_axes if reopen_axes is not None else axes_override
        self._check_finite = dtype.kind == "f"
        self._closed = False

    # -- properties ------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) after the info bar and the user crop."""
        return (len(self._region[0]), len(self._region[1]), len(self._region[2]))

    @property
    def voxel_size(self) -> tuple[float, float, float] | None:
        """(z, y, x) in nanometres, or None unless all three are known."""
        vs = self.voxel_size_partial
        if any(v is None for v in vs):
            return None
        return (float(vs[0]), float(vs[1]), float(vs[2]))  # type: ignore[arg-type]

    @property
    def memmapped(self) -> bool:
        """True when slices are read from a memory map of the file."""
        return bool(self._source.memmapped)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole (cropped) stack in memory."""
        z, y, x = self.shape
        return int(z) * int(y) * int(x) * self.dtype.itemsize

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        vs = "unknown" if self.voxel_size is None else "x".join(f"{v:g}" for v in self.voxel_size) + " nm"
        return (
            f"Stack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, format={self.format!r}, "
            f"memmapped={self.memmapped}, voxel_size={vs}"
            + (f", infobar_rows={self.infobar_rows}" if self.infobar_rows else "")
            + ("" if self.crop is None else f", crop='{self.crop}'")
            + (", closed" if self._closed else "")
            + ")"
        )

    # -- reading ---------------------------------------------------------------
    def _read_slices(self, zs: Sequence[int], ys: range, xs: range) -> np.ndarray:
        """Read stack slices ``zs`` (indices into this stack) restricted to raw ranges."""
        if self._closed:
            raise StackError(f"stack {self.path} is closed; open it again with open_stack(path)")
        ysl, xsl = _range_to_slice(ys), _range_to_slice(xs)
        out = np.empty((len(zs), len(ys), len(xs)), dtype=self.dtype)
        z_raw = self._region[0]
        for i, z in enumerate(zs):
            rz = z_raw[int(z)]
            try:
                out[i] = self._source.read(rz, ysl, xsl)
            except StackError:
                raise
            except _READ_ERRORS as exc:
                raise StackError(
                    f"{self._source.describe(rz)} of {self.path} could not be read: the file is "
                    f"truncated or corrupt ({type(exc).__name__}: {exc}); re-export or re-copy it"
                ) from exc
            if self._check_finite:
                self._check_finite_slice(out[i], int(z))
        return out

    def _check_finite_slice(self, arr: np.ndarray, z: int) -> None:
        """StackError naming slice ``z`` when ``arr`` holds NaN or +-inf."""
        finite = np.isfinite(arr)
        if finite.all():
            return
        n_bad = int(finite.size - np.count_nonzero(finite))
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_pos = int(np.count_nonzero(np.isposinf(arr)))
        n_neg = n_bad - n_nan - n_pos
        parts = [f"{n} {name}" for n, name in ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf")) if n]
        fixes = []
        if n_nan:
            fixes.append("NaN: Fiji Process > Math > Remove NaNs")
        if n_pos or n_neg:
            fixes.append("infinities: Fiji Process > Math > Min... / Max... with the image's real range")
        raise StackError(
            f"slice {z} of {self.path} contains {n_bad} non-finite value(s) ({', '.join(parts)}); "
            "float images must be finite: replace them with real intensities (numpy: "
            "numpy.nan_to_num(a, nan=..., posinf=..., neginf=...) with values from the image's "
            f"range; {'; '.join(fixes)}) and save the stack again"
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, self.ndim)
        kz, rest = key[0], key[1:]
        nz = self.shape[0]
        # which slices, and how to index the block of slices we read
        if _is_int(kz):
            z = int(kz)
            if not -nz <= z < nz:
                raise IndexError(f"slice index {z} is out of range for a stack of {nz} slices")
            zs: list[int] | np.ndarray = [z % nz]
            bz: Any = 0
        elif isinstance(kz, slice):
            zs = list(range(nz))[kz]
            bz = slice(None)
        else:
            arr = np.asarray(kz)
            if arr.dtype == bool:
                if arr.shape != (nz,):
                    raise IndexError(
                        f"boolean slice mask has shape {arr.shape}, expected ({nz},) for {nz} slices"
                    )
                arr = np.flatnonzero(arr)
            elif arr.size == 0:
                arr = arr.astype(np.intp)
            elif arr.dtype.kind not in "iu":
                raise IndexError(
                    f"slices must be selected by int, slice, list of ints or boolean mask, got {kz!r}"
                )
            if arr.size and (arr.min() < -nz or arr.max() >= nz):
                raise IndexError(f"slice indices {kz!r} are out of range for a stack of {nz} slices")
            arr = arr % nz if arr.size else arr
            zs, inv = np.unique(arr, return_inverse=True)
            bz = inv.reshape(arr.shape)
        ys, xs = self._region[1], self._region[2]
        basic = all(isinstance(k, slice) or _is_int(k) for k in rest)
        if basic:
            post = []
            ranges = [ys, xs]
            for i, k in enumerate(rest):
                n = len(ranges[i])
                if isinstance(k, slice):
                    ranges[i] = ranges[i][k]
                    post.append(slice(None))
                else:
                    j = int(k)
                    if not -n <= j < n:
                        raise IndexError(f"index {j} is out of range for axis {i + 1} with size {n}")
                    ranges[i] = ranges[i][j % n : j % n + 1]
                    post.append(0)
            block = self._read_slices(zs, ranges[0], ranges[1])
            return block[(bz, *post)]
        block = self._read_slices(zs, ys, xs)
        return block[(bz, *rest)]

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as a ``(z1 - z0, Y, X)`` array of :attr:`dtype`."""
        nz = self.shape[0]
        if not (0 <= int(z0) <= int(z1) <= nz):
            raise IndexError(f"read({z0}, {z1}) is outside 0..{nz} for a stack of {nz} slices")
        return self[int(z0) : int(z1)]

    def __iter__(self) -> Iterator[np.ndarray]:
        for z in range(self.shape[0]):
            yield self[z]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def validate(self, callback: Callable[[int, int], None] | None = None) -> None:
        """Read every slice once: raises StackError on NaN, +-inf or undecodable data.

        Parameters
        ----------
        callback : optional ``callback(done, total)`` progress function.
        """
        n = self.shape[0]
        for z in range(n):
            self._read_slices([z], self._region[1], self._region[2])
            if callback is not None:
                callback(z + 1, n)

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Release file handles and memory maps (idempotent)."""
        if not self._closed:
            self._source.close()
            self._closed = True

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        # lets multiprocessing workers (e.g. torch DataLoader) reopen the stack
        return (_reopen, (str(self.path), self.crop, self._voxel_size_arg, self._purpose, self._reopen_axes))


def _reopen(
    path: str, crop: Crop | None, voxel_size: VoxelSizeArg, purpose: str, axes: str | None = None
) -> Stack:
    return _open(Path(path), crop=crop, voxel_size=voxel_size, purpose=purpose, axes=axes)


def _expand_key(key: Any, ndim: int) -> tuple:
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise IndexError("np.newaxis/None is not supported when indexing a Stack; index the result")
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ell == 1:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a 3D stack: got {len(key)}")
    return tuple(key) + (slice(None),) * (ndim - len(key))


def _is_int(k: Any) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _range_to_slice(r: range) -> slice:
    stop: int | None = r.stop
    if r.step < 0 and r.stop < 0:
        stop = None
    return slice(r.start, stop, r.step)


# ---------------------------------------------------------------------------- opening


def open_stack(
    path: str | os.PathLike[str],
    *,
    crop: Crop | str | None = None,
    voxel_size: VoxelSizeArg = None,
    validate: bool = False,
    axes: str | None = None,
) -> Stack:
    """Open a 3D grayscale stack lazily.

    Parameters
    ----------
    path : a multipage TIFF / ImageJ hyperstack / OME-TIFF file, or a folder of
        single-slice ``.tif``/``.tiff``/``.png`` files (natural sort order).
    crop : :class:`Crop` or text ``"z0:z1,y0:y1,x0:x1"``, applied after an FEI
        information bar was removed.
    voxel_size : (z, y, x) in nm overriding the file's metadata; None entries keep
        what the file says (e.g. ``(10, None, None)`` to supply only z).
    validate : read every slice once now (NaN/inf and decode check) instead of lazily.
    axes : None (automatic) or "ZYX": the file's one axis besides Y and X holds the
        z-slices, whatever its metadata call it (C, Q, I, T, Z). Use it for a z-stack
        saved as 2 to 4 "channels" (refused as multichannel otherwise), or to silence
        the warning when more than 4 channels are read as slices. A file with two
        non-YX axes (e.g. Z and C) is still refused. Accepted and ignored for folders
        of slices. The command line option is ``--axes ZYX``.

    Returns
    -------
    Stack, lazy ``(Z, Y, X)`` of dtype uint8, uint16 or float32. Use it as a context
    manager or call ``close()``.

    Raises
    ------
    StackError : missing path, not an image, 2D image, RGB/multichannel, 4D+, empty,
        truncated/corrupt file, unsupported dtype, NaN/inf (with ``validate=True``),
        folder of mixed slice shapes, axes stored in an order other than (.., Y, X).
    ConfigError : invalid ``crop``, ``voxel_size`` or ``axes``.
    """
    if isinstance(crop, str):
        crop = Crop.parse(crop)
    elif crop is not None and not isinstance(crop, Crop):
        raise ConfigError(f"crop must be a Crop, text like '0:100,:,:' or None, got {crop!r}")
    stack = _open(
        Path(os.path.expanduser(os.fspath(path))), crop=crop, voxel_size=voxel_size, purpose="image", axes=axes
    )
    if validate:
        try:
            stack.validate()
        except BaseException:
            stack.close()
            raise
    return stack


def read_stack(path: str | os.PathLike[str], **kwargs: Any) -> np.ndarray:
    """Read a whole (small) stack into memory: ``open_stack(path, **kwargs)[:]``.

    Returns
    -------
    ndarray (Z, Y, X) of dtype uint8, uint16 or float32.
    """
    with open_stack(path, **kwargs) as stack:
        return stack[:]


def _format_value(v: float, integer: bool) -> str:
    return str(int(round(v))) if integer else f"{v:.6g}"


def intensity_warning(stack: Stack | np.ndarray, *, n_sample: int = 16) -> str | None:
    """A one-line warning when a stack is constant or nearly so, else None.

    Up to ``n_sample`` evenly spaced slices are read (each subsampled to about 512 x
    512 pixels). The stack is *constant* when every sampled pixel has the same value,
    and *nearly constant* when the robust range (0.1th to 99.9th percentile) of the
    sampled pixels is below 2 grey levels (integer dtypes) or below a millionth of
    the values' magnitude (float dtypes, i.e. a few float32 steps). Either usually
    means the wrong file or channel was exported (an empty channel, a mask, a
    saturated or blank acquisition).

    Parameters
    ----------
    stack : a :class:`Stack` or a (Z, Y, X) array.
    n_sample : number of slices to sample (at least 1).

    Returns
    -------
    str or None : the warning text (one line, naming the stack) for the caller to log.

    Raises
    ------
    ConfigError : ``n_sample`` is not a positive integer or ``stack`` is not 3D.
    StackError : a sampled slice cannot be read (corrupt, NaN/inf).
    """
    if isinstance(n_sample, bool) or not isinstance(n_sample, (int, np.integer)) or n_sample < 1:
        raise ConfigError(f"n_sample must be a positive integer (slices to sample), got {n_sample!r}")
    shape = tuple(int(n) for n in stack.shape)
    if len(shape) != 3 or 0 in shape:
        raise ConfigError(f"intensity_warning needs a non-empty (Z, Y, X) stack, got shape {_shape_text(shape)}")
    name = str(stack.path) if isinstance(stack, Stack) else "(in-memory array)"
    nz, ny, nx = shape
    zs = np.unique(np.linspace(0, nz - 1, min(int(n_sample), nz)).round().astype(np.intp))
    step_y = max(1, ny // 512)
    step_x = max(1, nx // 512)
    sample = [np.asarray(stack[int(z), ::step_y, ::step_x]).ravel() for z in zs]
    values = np.concatenate(sample)
    integer = values.dtype.kind in "biu"
    if not integer:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return (
                f"stack {name} holds no finite values in {len(zs)} sampled slice(s): no classifier can "
                "learn from it; check that the right file/channel was exported"
            )
    values = values.astype(np.float64, copy=False)
    lo, hi = float(values.min()), float(values.max())
    fix = "no classifier can learn from it; check that the right file/channel was exported"
    if lo == hi:
        return (
            f"stack {name} is constant (every sampled pixel is {_format_value(lo, integer)}, "
            f"{len(zs)} slice(s) sampled): {fix}"
        )
    p_lo, p_hi = (float(v) for v in np.percentile(values, [0.1, 99.9]))
    spread = p_hi - p_lo
    if integer:
        flat = spread < 2
        unit = " grey level(s)"
    else:
        flat = spread <= 1e-6 * max(abs(p_lo), abs(p_hi))
        unit = ""
    if not flat:
        return None
    if spread == 0:
        where = f"at least 99.8 % of the sampled pixels are {_format_value(p_lo, integer)}"
    else:
        where = (
            f"99.8 % of the sampled pixels lie in {_format_value(p_lo, integer)}.."
            f"{_format_value(p_hi, integer)}, a range of {_format_value(spread, integer)}{unit}"
        )
    return (
        f"stack {name} is nearly constant ({where}; all values in {_format_value(lo, integer)}.."
        f"{_format_value(hi, integer)}; {len(zs)} slice(s) sampled): {fix}"
    )


def _check_axes_arg(axes: Any) -> str | None:
    """The ``axes`` argument normalised to None or "ZYX"; ConfigError for anything else."""
    if axes is None:
        return None
    if isinstance(axes, str) and axes.strip().upper() == "ZYX":
        return "ZYX"
    raise ConfigError(
        f"axes must be None (use the file's own axes) or 'ZYX' (the file's one axis besides Y "
        f"and X holds the z-slices, whatever its metadata call it: C, Q, I, T or Z), got {axes!r}; "
        "other axis orders are not supported: re-save the stack as (Z, Y, X) slices"
    )


def _open(
    path: Path, *, crop: Crop | None, voxel_size: VoxelSizeArg, purpose: str, axes: str | None = None
) -> Stack:
    axes = _check_axes_arg(axes)
    user_vs = _check_voxel_size_arg(voxel_size)
    if not path.exists():
        hint = ""
        parent = path.parent
        if parent.is_dir():
            near = sorted(p.name for p in parent.iterdir() if p.name.lower().startswith(path.name[:3].lower()))[:5]
            if near:
                hint = f"; similar names there: {', '.join(near)}"
        raise StackError(f"no such file or folder: {path}{hint}")
    channels_as_z = False
    if path.is_dir():
        opened = _open_folder(path, purpose)  # one slice per file: "ZYX" is what it is anyway
    else:
        opened, channels_as_z = _open_file(path, purpose, axes)
    source, (nz, ny, nx), raw_dtype, fmt, meta_sources, fei, file_size = opened
    try:
        dtype = _target_dtype(raw_dtype, path, purpose)
        bar = detect_infobar(fei, ny)
        if bar:
            logger.info("%s: cropping a %d-row FEI information bar (scan height %d)", path, bar, ny - bar)
        effective = (nz, ny - bar, nx)
        region = (crop or Crop()).resolve(effective)
        merged, origin = _merge_voxel_sizes([("argument", user_vs), *meta_sources])
        if purpose == "image" and any(v is not None for v in merged) and any(v is None for v in merged):
            missing = ",".join(a for a, v in zip("zyx", merged) if v is None)
            logger.warning(
                "%s: voxel size known only partly (%s unknown); pass voxel_size=(z, y, x) "
                "with the missing entries", path, missing,
            )
    except BaseException:
        source.close()
        raise
    return Stack(
        path=path,
        source=source,
        source_shape=(nz, ny, nx),
        raw_dtype=raw_dtype,
        dtype=dtype,
        fmt=fmt,
        region=region,
        infobar_rows=bar,
        crop=crop,
        voxel_size_partial=merged,
        voxel_size_source=origin,
        file_size=file_size,
        voxel_size_arg=voxel_size,
        purpose=purpose,
        axes_override=axes,
        reopen_axes="ZYX" if channels_as_z else axes,
    )


def _target_dtype(raw: np.dtype, path: Path, purpose: str) -> np.dtype:
    raw = np.dtype(raw).newbyteorder("=") if np.dtype(raw).byteorder not in ("=", "|") else np.dtype(raw)
    if purpose == "labels":
        if raw.kind in "biuf":
            return raw
        raise LabelError(f"label file {path} has dtype {raw}; expected an integer label image")
    if raw in _IMAGE_DTYPES:
        return raw
    if raw in _CONVERT_DTYPES:
        target = _CONVERT_DTYPES[raw]
        logger.info("%s: converting %s data to %s", path, raw, target)
        return target
    raise StackError(
        f"{path} has dtype {raw}, which activeseg does not read: expected uint8, uint16 or "
        f"float32 (bool, int8, int16, float16 and float64 are converted); {_HOW_TO_CONVERT}"
    )


def _sniff(path: Path) -> str:
    """'tiff', 'png', 'empty' or 'other' from the first bytes of a file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc}") from exc
    if not head:
        return "empty"
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[:4] == _PNG_MAGIC:
        return "png"
    return "other"


_MAX_CHANNELS = 4
"""More channels than this, with nothing else besides Y and X, are read as z-slices."""


def _classify_series(
    axes: str,
    shape: tuple[int, ...],
    photometric: int | None,
    where: str,
    purpose: str,
    override: str | None = None,
) -> tuple[tuple[int, int, int], bool]:
    """((Z, Y, X), channels_as_z) of a tifffile series, or a clear StackError.

    ``override`` is None (automatic) or "ZYX" (the one non-YX axis of size > 1 is z,
    whatever its name). ``channels_as_z`` is True when a C axis was read as z
    automatically (more than :data:`_MAX_CHANNELS` grayscale channels and nothing else).
    """
    dims = list(zip(axes, shape))
    if "Y" not in axes or "X" not in axes:
        raise StackError(f"{where} has an unsupported layout (axes {axes!r}, shape {_shape_text(shape)})")
    ny, nx = shape[axes.index("Y")], shape[axes.index("X")]
    samples = dict(dims).get("S", 1)
    if samples > 1:
        what = "looks like RGB" if (samples in (3, 4) or photometric == 2) else f"has {samples} samples per pixel"
        raise StackError(
            f"{where} has shape {_shape_text(shape)} (axes {axes}): it {what}; activeseg needs "
            "grayscale slices: convert to grayscale (Fiji: Image > Type > 8-bit) and save again "
            "(if these really are grayscale slices, the file was saved as colour samples: re-save "
            "it as a grayscale stack, e.g. tifffile.imwrite(..., photometric='minisblack'))"
        )
    others = [(a, n) for a, n in dims if a not in "YXS" and n > 1]
    desc = ", ".join(f"{a}={n}" for a, n in others)
    channels = dict(dims).get("C", 1)
    palette = photometric == 3 and purpose != "labels"
    channels_as_z = False
    if override == "ZYX":
        if len(others) > 1:
            raise StackError(
                f"{where} has {len(others)} axes besides Y and X ({desc}; shape {_shape_text(shape)}, "
                f"axes {axes}), so axes='ZYX' (--axes ZYX) cannot read it: it takes exactly one such "
                "axis as the slices. Save one 3D (Z, Y, X) stack: one channel (Fiji: Image > Color > "
                "Split Channels) or one time point / position"
            )
    elif channels > 1:
        lone = len(others) == 1
        if lone and channels > _MAX_CHANNELS and photometric not in (2, 3):
            channels_as_z = True
            logger.warning(
                "%s: the file's metadata say %d channels (axes %s) and no z-slices; activeseg reads "
                "them as %d z-slices (a z-stack saved without axis metadata, e.g. by "
                "tifffile.imwrite(..., imagej=True), looks like this). If they really are channels, "
                "split them (Fiji: Image > Color > Split Channels) and give one; pass axes='ZYX' "
                "(command line --axes ZYX) to read the file as a z-stack without this warning",
                where, channels, axes, channels,
            )
        else:
            hint = (
                "; if these 'channels' really are z-slices (a stack saved without axis metadata), "
                "open it with axes='ZYX' (command line --axes ZYX)"
                if lone
                else ""
            )
            raise StackError(
                f"{where} has {channels} channels (shape {_shape_text(shape)}, axes {axes}): it is "
                "multichannel; activeseg needs one grayscale channel: split the channels (Fiji: "
                f"Image > Color > Split Channels) and give one of them{hint}"
            )
    if palette:
        raise StackError(
            f"{where} is a palette (indexed colour) image; convert to grayscale (Fiji: Image > "
            "Type > 8-bit) and save again"
        )
    if not others:
        raise _Single2DError(
            f"{where}: got a single 2D image of shape ({ny}, {nx}) = (Y, X); give a stack of "
            "slices (a multipage TIFF) or a folder of slice images"
        )
    if len(others) > 1:
        raise StackError(
            f"{where} is {len(others) + 2}D (shape {_shape_text(shape)}, axes {axes}: {desc}); "
            "activeseg needs one 3D (Z, Y, X) stack: save a single time point / position"
        )
    # slices are read as (Z, Y, X) blocks of the stored data: Y and X must come last
    order = "".join(a for a, n in dims if a in "YX" or (n > 1 and a != "S"))
    if not order.endswith("YX"):
        raise StackError(
            f"{where} stores its data in axis order {axes} (shape {_shape_text(shape)}); activeseg "
            "reads stacks stored slice after slice, (Z, Y, X): re-save it in that order (numpy: "
            "numpy.moveaxis; Fiji: Image > Stacks > Reslice)"
        )
    return (int(others[0][1]), int(ny), int(nx)), channels_as_z


def _open_file(path: Path, purpose: str, axes: str | None = None):
    """(backend tuple, channels_as_z) for one file; see :func:`_open_tiff`."""
    kind = _sniff(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffixes else ""
    if kind == "empty":
        raise StackError(f"{path} is empty (0 bytes); the copy or export failed, write it again")
    if kind == "png":
        arr = _read_slice_file(path, purpose)
        raise _Single2DError(
            f"{path}: got a single 2D image of shape {_shape_text(arr.shape)} = (Y, X); give a "
            f"stack of slices or a folder of slice images (e.g. the folder {path.parent})"
        )
    if kind != "tiff":
        if path.suffix.lower() in _TIFF_SUFFIXES:
            raise StackError(
                f"{path} is not a valid TIFF file (its header is not a TIFF header): the file is "
                "corrupt or mislabelled; export the stack again as TIFF"
            )
        raise StackError(
            f"{path} is not an image stack: expected a TIFF file (.tif, .tiff, .ome.tif) or a "
            f"folder of .tif/.png slices, got a {suffix or 'extension-less'} file"
        )
    file_size = path.stat().st_size
    try:
        tif = tifffile.TiffFile(path)
    except _READ_ERRORS as exc:
        raise StackError(
            f"{path} could not be opened as TIFF ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt: copy or export it again"
        ) from exc
    try:
        return _open_tiff(tif, path, purpose, file_size, axes)
    except BaseException:
        tif.close()
        raise


def _open_tiff(tif: tifffile.TiffFile, path: Path, purpose: str, file_size: int, override: str | None = None):
    where = str(path)
    try:
        series_list = tif.series
        if not series_list:
            raise StackError(
                f"{path} holds no readable images: the TIFF is empty, truncated or corrupt; "
                "export or copy the stack again"
            )
        series = series_list[0]
        axes, shape = series.axes, tuple(int(s) for s in series.shape)
        keyframe = series.keyframe
        photometric = int(keyframe.photometric) if keyframe is not None else None
        raw_dtype = series.dtype
        dataoffset = series.dataoffset
    except StackError:
        raise
    except _READ_ERRORS as exc:
        raise StackError(
            f"{path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); copy or "
            "export it again"
        ) from exc
    announced = _announced_size(tif)
    if announced is not None:
        what, expected = announced
        counted = [n for a, n in zip(axes, shape) if a not in "YXS"] if what == "planes" else shape
        found = int(np.prod(counted, dtype=np.int64))
        if found < expected:
            raise StackError(
                f"{path} is truncated or corrupt: its metadata describe {expected} "
                f"{'slices' if what == 'planes' else 'pixels'} but only {found} could be found "
                f"(file size {file_size} bytes); the copy or acquisition was interrupted: copy it again"
            )
    elif _ifd_chain_broken(tif):
        raise StackError(
            f"{path} is truncated: after {len(tif.pages)} slices its last page points to more data "
            f"beyond the end of the file ({file_size} bytes); the copy or acquisition was "
            "interrupted: copy it again"
        )
    if raw_dtype is None:
        raise StackError(f"{path} uses a pixel format activeseg cannot decode; save it as 8/16-bit or 32-bit float")
    if 0 in shape:
        raise StackError(f"{path} holds an empty image of shape {_shape_text(shape)}")
    if len(series_list) > 1 and "Y" in axes and not any(a not in "YXS" and n > 1 for a, n in zip(axes, shape)):
        shapes = sorted({_shape_text(s.shape) for s in series_list})
        raise StackError(
            f"{path} holds {len(tif.pages)} pages of different shapes ({', '.join(shapes[:4])}); "
            "activeseg needs slices of one shape: crop or pad them to a common size"
        )
    (nz, ny, nx), channels_as_z = _classify_series(axes, shape, photometric, where, purpose, override)
    if len(series_list) > 1:
        logger.warning(
            "%s holds %d image series; reading the first, %s, and ignoring the others",
            path, len(series_list), _shape_text(shape),
        )
    fmt = "ome" if tif.is_ome else "imagej" if tif.is_imagej else "tiff"
    meta_sources, fei = _file_metadata(tif, nz)
    native = np.dtype(tif.byteorder + np.dtype(raw_dtype).char)
    if dataoffset is not None:
        needed = int(dataoffset) + int(np.prod(shape)) * native.itemsize
        if needed > file_size:
            complete = max(0, (file_size - int(dataoffset)) // (ny * nx * native.itemsize))
            raise StackError(
                f"{path} is truncated: its metadata describe {nz} slices ({needed} bytes) but the "
                f"file has {file_size} bytes (about {complete} complete slices); the copy or "
                "acquisition was interrupted: copy it again"
            )
        mm = np.memmap(path, dtype=native, mode="r", offset=int(dataoffset), shape=shape, order="C")
        mm = mm.reshape(nz, ny, nx)
        tif.close()
        source: _MemmapSource | _PageSource = _MemmapSource(mm)
    else:
        try:
            pages = series.pages
            n_series_pages = len(pages)
            last = pages[n_series_pages - 1] if n_series_pages else None
            ends = [int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts)] if last is not None else []
        except _READ_ERRORS as exc:
            raise StackError(
                f"{path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); copy or "
                "export it again"
            ) from exc
        if n_series_pages != nz or any(p is None for p in (pages[0], last)):
            raise StackError(
                f"{path}: its metadata describe {nz} slices but only {n_series_pages} pages could be "
                "found; the file is truncated or uses an unsupported layout: copy it again or "
                "re-save it as an uncompressed multipage TIFF"
            )
        if ends and max(ends) > file_size:
            raise StackError(
                f"{path} is truncated: the last slice's data end at byte {max(ends)} but the file "
                f"has {file_size} bytes; the copy or acquisition was interrupted: copy it again"
            )
        source = _PageSource(tif, pages, (ny, nx))
    return (source, (nz, ny, nx), np.dtype(raw_dtype), fmt, meta_sources, fei, file_size), channels_as_z


def _ifd_chain_broken(tif: tifffile.TiffFile) -> bool:
    """True when the last IFD points to a next IFD beyond the end of the file."""
    try:
        pos = tif.pages.next_page_offset
        if pos is None:
            return False
        fh = tif.filehandle
        fh.seek(pos)
        data = fh.read(tif.tiff.offsetsize)
        if len(data) < tif.tiff.offsetsize:
            return True
        return struct.unpack(tif.tiff.offsetformat, data)[0] != 0
    except _READ_ERRORS:
        return False


def _announced_size(tif: tifffile.TiffFile) -> tuple[str, int] | None:
    """What the file's own metadata announce: ("planes", ImageJ images) or
    ("elements", product of the tifffile 'shape'); None when nothing is announced."""
    try:
        if tif.is_imagej:
            images = (tif.imagej_metadata or {}).get("images")
            return ("planes", int(images)) if images else None
        if tif.is_shaped:
            meta = tif.shaped_metadata
            if meta and isinstance(meta[0], dict) and "shape" in meta[0]:
                return ("elements", int(np.prod([int(n) for n in meta[0]["shape"]], dtype=np.int64)))
    except _READ_ERRORS:
        return None
    return None


def _slice_header(path: Path, purpose: str) -> tuple[tuple[int, ...], np.dtype, str]:
    """(shape, dtype, kind) of one slice file without reading its pixels."""
    kind = _sniff(path)
    if kind == "png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise StackError(f"slice file {path} is not a readable PNG ({exc}); export it again") from exc
        dtype = _PNG_MODES.get(mode)
        if dtype is None or (mode == "P" and purpose != "labels"):
            shape = (h, w) if mode in ("P", "1", "L") else (h, w, len(mode))
            what = "palette (indexed colour)" if mode == "P" else f"{mode}"
            raise StackError(
                f"slice file {path} is a {what} PNG of shape {_shape_text(shape)}: it looks like RGB "
                "or colour, not grayscale; convert to grayscale (8 or 16 bit) and save again"
            )
        return (h, w), np.dtype(dtype), "png"
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes, tuple(int(s) for s in series.shape)
                photometric = int(series.keyframe.photometric)
                dtype = series.dtype
        except _READ_ERRORS as exc:
            raise StackError(
                f"slice file {path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); "
                "export it again"
            ) from exc
        dims = dict(zip(axes, shape))
        if dims.get("S", 1) > 1 or dims.get("C", 1) > 1 or (photometric == 3 and purpose != "labels"):
            raise StackError(
                f"slice file {path} has shape {_shape_text(shape)} (axes {axes}): it looks like RGB "
                "or multichannel; convert to grayscale and save again"
            )
        extra = [(a, n) for a, n in zip(axes, shape) if a not in "YXSC" and n > 1]
        if extra:
            raise StackError(
                f"slice file {path} is itself a stack of shape {_shape_text(shape)}; a folder must "
                "hold one 2D slice per file (open the file directly instead)"
            )
        if dtype is None:
            raise StackError(f"slice file {path} uses a pixel format activeseg cannot decode")
        return (dims["Y"], dims["X"]), np.dtype(dtype), "tiff"
    if kind == "empty":
        raise StackError(f"slice file {path} is empty (0 bytes); export it again")
    raise StackError(f"slice file {path} is not a TIFF or PNG image (bad header); remove it or export it again")


_PNG_MODES = {
    "L": np.uint8,
    "1": np.bool_,
    "P": np.uint8,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I": np.int32,
    "F": np.float32,
}


def _read_slice_file(path: Path, purpose: str) -> np.ndarray:
    """Pixels of one 2D slice file (TIFF page 0 or PNG) as a 2D array."""
    kind = _sniff(path)
    if kind == "png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode not in _PNG_MODES or (im.mode == "P" and purpose != "labels"):
                    raise StackError(
                        f"{path} is a {im.mode} PNG of size {im.size[0]}x{im.size[1]}: it looks like "
                        "RGB or colour, not grayscale; convert to grayscale and save again"
                    )
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise StackError(f"{path} is not a readable PNG ({exc}); export it again") from exc
        return np.array(arr, copy=True) if not arr.flags.writeable else arr
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                arr = tif.pages.first.asarray()
        except _READ_ERRORS as exc:
            raise StackError(
                f"{path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); export it again"
            ) from exc
        if arr.ndim == 3 and 1 in arr.shape:
            arr = arr.reshape([n for n in arr.shape if n != 1][-2:])
        if arr.ndim != 2:
            raise StackError(f"{path} holds an image of shape {_shape_text(arr.shape)}, expected one 2D slice")
        return arr
    if kind == "empty":
        raise StackError(f"{path} is empty (0 bytes); export it again")
    raise StackError(f"{path} is not a TIFF or PNG image (bad header)")


def slice_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The slice images of a folder, as :func:`open_stack` reads them: ``.tif``,
    ``.tiff`` and ``.png`` files, hidden files skipped, in natural order."""
    entries = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in entries if p.suffix.lower() in _SLICE_SUFFIXES), key=natural_sort_key)


def _open_folder(path: Path, purpose: str):
    files = slice_files(path)
    if not files:
        entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        others = sorted(p.name for p in entries)[:5]
        found = f"; it holds {len(entries)} other file(s), e.g. {', '.join(others)}" if others else " (it is empty)"
        raise StackError(
            f"folder {path} holds no slice images: expected .tif, .tiff or .png files, one 2D "
            f"slice each{found}"
        )
    shape0, dtype0, _ = _slice_header(files[0], purpose)
    for f in files[1:]:
        shape, dtype, _ = _slice_header(f, purpose)
        if shape != shape0:
            raise StackError(
                f"folder {path} mixes slice shapes: {f.name} is {_shape_text(shape)} but "
                f"{files[0].name} (the first slice) is {_shape_text(shape0)}; all slices must have "
                "the same (Y, X) shape: crop or pad them, or remove the odd file"
            )
        if dtype != dtype0:
            raise StackError(
                f"folder {path} mixes dtypes: {f.name} is {dtype} but {files[0].name} is {dtype0}; "
                "save all slices with the same bit depth"
            )
    meta_sources: list[tuple[str, PartialVoxelSize]] = []
    fei = None
    if _sniff(files[0]) == "tiff":
        try:
            with tifffile.TiffFile(files[0]) as tif:
                meta_sources, fei = _file_metadata(tif, 1)
        except _READ_ERRORS as exc:
            raise StackError(f"slice file {files[0]} is a corrupt TIFF ({exc}); export it again") from exc
    file_size = sum(f.stat().st_size for f in files)
    source = _FolderSource(files, (int(shape0[0]), int(shape0[1])), purpose)
    return source, (len(files), int(shape0[0]), int(shape0[1])), dtype0, "folder", meta_sources, fei, file_size


# ---------------------------------------------------------------------------- writing

_KINDS = ("image", "labels", "probabilities")
_KIND_DTYPES = {
    "image": _IMAGE_DTYPES,
    "labels": (np.dtype(np.uint8),),
    "probabilities": (np.dtype(np.float32),),
}
_COMPRESSIONS = (None, "zlib")


def _label_lut() -> np.ndarray:
    lut = np.zeros((3, 256), dtype=np.uint8)
    for i, rgb in enumerate(_LABEL_COLOURS):
        lut[:, i] = rgb
    lut[:, len(_LABEL_COLOURS) : 255] = np.array(_LABEL_COLOURS[-1], dtype=np.uint8)[:, None]
    lut[:, 255] = _UNLABELLED_COLOUR
    return lut


def _check_kind_dtype(kind: str, dtype: np.dtype, what: str) -> None:
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    allowed = _KIND_DTYPES[kind]
    if np.dtype(dtype) not in allowed:
        names = ", ".join(str(d) for d in allowed)
        fix = {
            "image": _HOW_TO_CONVERT,
            "labels": "labels are uint8 (0..C-1, 255 = unlabelled): use array.astype(np.uint8)",
            "probabilities": "probabilities are float32 in [0, 1]: use array.astype(np.float32)",
        }[kind]
        raise StackError(f"{what} of kind {kind!r} must have dtype {names}, got {np.dtype(dtype)}; {fix}")


def _imagej_kwargs(kind: str, voxel_size: tuple[float, float, float] | None, ndim: int = 3) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": "ZYX" if ndim == 3 else "ZCYX"}
    kwargs: dict[str, Any] = {"imagej": True, "metadata": metadata}
    if voxel_size is not None:
        z, y, x = voxel_size
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        metadata["spacing"] = float(z)
        metadata["unit"] = "nm"
    if kind == "labels":
        metadata["LUTs"] = [_label_lut()]
        metadata["min"] = 0
        metadata["max"] = 255
    elif kind == "probabilities":
        metadata["min"] = 0.0
        metadata["max"] = 1.0
    return kwargs


def _ome_kwargs(voxel_size: tuple[float, float, float] | None, ndim: int = 3) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": "ZYX" if ndim == 3 else "ZCYX"}
    if voxel_size is not None:
        z, y, x = voxel_size
        metadata.update(
            PhysicalSizeZ=z, PhysicalSizeZUnit="nm", PhysicalSizeY=y, PhysicalSizeYUnit="nm",
            PhysicalSizeX=x, PhysicalSizeXUnit="nm",
        )
    return {"ome": True, "bigtiff": True, "metadata": metadata}


def _check_values(data: np.ndarray, kind: str, block: int = 64) -> None:
    """NaN/range checks slice block by slice block (no whole-volume temporaries)."""
    if data.dtype.kind != "f":
        return
    for z0 in range(0, data.shape[0], block):
        chunk = np.asarray(data[z0 : z0 + block])
        finite = np.isfinite(chunk)
        if not finite.all():
            z = z0 + int(np.flatnonzero(~finite.reshape(chunk.shape[0], -1).all(axis=1))[0])
            raise StackError(
                f"{kind} data hold NaN or infinite values (first in slice {z}); write finite values only"
            )
        if kind == "probabilities" and chunk.size and (chunk.min() < 0.0 or chunk.max() > 1.0):
            raise StackError(
                f"probabilities must lie in [0, 1], got values in [{float(chunk.min()):g}, "
                f"{float(chunk.max()):g}] in slices {z0}..{z0 + chunk.shape[0] - 1}"
            )


def write_stack(
    path: str | os.PathLike[str],
    data: Any,
    *,
    voxel_size: VoxelSizeArg = None,
    kind: Literal["image", "labels", "probabilities"] = "image",
    compression: str | None = None,
) -> Path:
    """Write a ``(Z, Y, X)`` array as an ImageJ-compatible TIFF, atomically.

    Parameters
    ----------
    path : output file (``.tif``); parent folders are created.
    data : array-like (Z, Y, X): images uint8/uint16/float32, labels uint8
        (0..C-1, 255 = unlabelled), probabilities float32 in [0, 1] (also
        (Z, C, Y, X) for multi-class probabilities, an ImageJ ZCYX hyperstack that
        :func:`open_stack` refuses as multichannel by design).
    voxel_size : (z, y, x) in nm written as ImageJ ``spacing``/resolution with unit
        "nm" (None: no scale).
    kind : "image", "labels" (adds a lookup table so 0/1/255 are visible in Fiji) or
        "probabilities" (display range 0..1).
    compression : None or "zlib" (Fiji and napari read both).

    Returns
    -------
    Path of the written file.

    Raises
    ------
    OutputError : the data do not fit on the disk (checked before writing when
        uncompressed), or the write failed (disk full, read-only, no permission); the
        previous ``path`` is then unchanged and no temporary file is left.

    Notes
    -----
    The file is written through :func:`activeseg.safety.atomic_path`. Data beyond
    4 GB are written as ImageJ does (only the first IFD; Fiji, napari and
    :func:`open_stack` read them) when uncompressed, and as a BigTIFF OME-TIFF with
    the voxel size in OME metadata when compressed.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    vs = _validate_full_voxel_size(voxel_size)
    if compression not in _COMPRESSIONS:
        raise ConfigError(f"compression must be None or 'zlib', got {compression!r}")
    if isinstance(data, Stack):
        data = data[:]
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    _check_kind_dtype(kind, arr.dtype, "data")
    if arr.ndim != 3 and not (kind == "probabilities" and arr.ndim == 4):
        hint = "add a slice axis: array[np.newaxis]" if arr.ndim == 2 else "give one (Z, Y, X) volume"
        raise StackError(f"write_stack needs a 3D (Z, Y, X) array, got shape {_shape_text(arr.shape)}; {hint}")
    if 0 in arr.shape:
        raise StackError(f"write_stack got an empty array of shape {_shape_text(arr.shape)}")
    _check_values(arr, kind)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if compression is None and arr.nbytes > _CLASSIC_TIFF_LIMIT:
        kwargs = _imagej_kwargs(kind, vs, arr.ndim)
        kwargs["truncate"] = True
    elif arr.nbytes > _CLASSIC_TIFF_LIMIT:
        kwargs = _ome_kwargs(vs, arr.ndim)
    else:
        kwargs = _imagej_kwargs(kind, vs, arr.ndim)
    if compression is not None:
        kwargs["compression"] = compression
    else:  # a compressed file's size is unknown in advance: the write itself decides
        safety.check_free_space(path.parent, arr.nbytes, what=f"writing {path}")
    with safety.atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, photometric="minisblack", **kwargs)
    return path


def create_stack(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    *,
    voxel_size: VoxelSizeArg = None,
    kind: Literal["image", "labels", "probabilities"] = "image",
) -> np.memmap:
    """Create an ImageJ TIFF on disk and return a writable memmap over its pixels.

    For whole-stack outputs larger than RAM (predictions, probabilities): fill slices,
    then call ``flush()`` and drop the memmap. The file is zero-filled from the start
    and is *not* written atomically; create it under a temporary name and
    ``os.replace`` it after ``flush()`` when needed. Its disk blocks are reserved at
    creation (:func:`activeseg.safety.reserve`), so a full disk raises here rather
    than killing the process with SIGBUS while slices are written. Files beyond 4 GB
    use ImageJ's own large-file layout (first IFD only).

    Parameters
    ----------
    path : output file; parent folders are created; an existing file is replaced.
    shape : (Z, Y, X); (Z, C, Y, X) allowed for multi-class probabilities.
    dtype : per ``kind``: image uint8/uint16/float32, labels uint8, probabilities float32.
    voxel_size : (z, y, x) nm, written as in :func:`write_stack`.
    kind : "image", "labels" or "probabilities".

    Returns
    -------
    numpy.memmap (Z, Y, X) of ``dtype``, mode "r+".

    Raises
    ------
    OutputError : not enough free space for the data, or the file could not be
        created or its blocks reserved (a half-made file is removed).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    vs = _validate_full_voxel_size(voxel_size)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"shape must be three integers (Z, Y, X), got {shape!r}") from exc
    if len(shape) not in (3, 4) or min(shape) <= 0 or (len(shape) == 4 and kind != "probabilities"):
        raise ConfigError(
            f"shape must be three positive integers (Z, Y, X) (or (Z, C, Y, X) for multi-class "
            f"probabilities), got {shape!r}"
        )
    dt = np.dtype(dtype)
    _check_kind_dtype(kind, dt, "create_stack dtype")
    kwargs = _imagej_kwargs(kind, vs, len(shape))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if nbytes > _CLASSIC_TIFF_LIMIT:
        kwargs["truncate"] = True
    safety.check_free_space(path.parent, nbytes, what=f"creating {path}")
    mm: np.memmap | None = None
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = tifffile.memmap(path, shape=shape, dtype=dt, photometric="minisblack", **kwargs)
        # a memmap over a sparse file dies with SIGBUS when the disk fills: claim the blocks now
        safety.reserve(path, os.path.getsize(path))
        return mm
    except BaseException as exc:
        made = mm is not None or not existed  # never remove a file this call did not touch
        mm = None  # drop the map before removing the file (Windows cannot remove a mapped file)
        if made:
            try:
                path.unlink()
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(safety.os_error_message(exc, path)) from exc
        raise


# ----------------------------------------------------------------------------- labels

_KIND_TEXT = {
    "mask": "complete masks with values 0..{m} (0 = solid, 1 = pore{more}); a binary 0/255 mask is also accepted",
    "partial": "partial labels with values 0..{m} (0 = solid, 1 = pore{more}) and 255 = unlabelled",
    "scribble": "ilastik-style scribbles: 0 = unlabelled, 1..{c} = classes 0..{m} (class c stored as c + 1)",
}
_KIND_FIX = {
    "mask": "if 255 marks unlabelled pixels use kind='partial'; if 0 marks unlabelled (ilastik) use kind='scribble'",
    "partial": "if 0 marks unlabelled pixels (ilastik) use kind='scribble'; check n_classes",
    "scribble": "if 0 is a class (complete masks) use kind='mask' or 'partial'; check n_classes",
}


def _check_label_args(n_classes: Any, kind: Any) -> int:
    if kind not in LABEL_KINDS:
        raise ConfigError(f"label kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 2 <= int(n_classes) <= 254:
        raise ConfigError(f"n_classes must be an integer from 2 to 254, got {n_classes!r}")
    return int(n_classes)


def _label_values(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        counts = np.bincount(arr.ravel(), minlength=256)
        return np.flatnonzero(counts)
    return np.unique(arr)


def _convert_labels(arr: np.ndarray, n_classes: int, kind: str, where: str) -> tuple[np.ndarray, bool]:
    """Internal uint8 labels from one 2D slice in convention ``kind``; (labels, was_0_255)."""
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.equal(np.mod(arr, 1), 0).all():
            raise LabelError(
                f"{where} holds non-integer values (float labels {arr.dtype}); labels must be whole "
                "numbers: save the label image as 8-bit (Fiji: Image > Type > 8-bit)"
            )
    elif arr.dtype.kind not in "iu":
        raise LabelError(f"{where} has dtype {arr.dtype}; expected an integer label image")
    values = _label_values(arr)
    m = n_classes - 1
    expected = _KIND_TEXT[kind].format(m=m, c=n_classes, more="" if n_classes == 2 else ", ...")
    binary255 = False
    if kind == "scribble":
        allowed = set(range(n_classes + 1))
    elif kind == "partial":
        allowed = set(range(n_classes)) | {255}
    else:
        allowed = set(range(n_classes))
        vset = {int(v) for v in values}
        if n_classes == 2 and 255 in vset and vset <= {0, 255}:
            binary255 = True
            allowed = {0, 255}
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        given = ", ".join(str(int(v)) for v in values[:12]) + (" ..." if len(values) > 12 else "")
        raise LabelError(
            f"{where} holds label values {shown} outside the declared classes: expected {expected} "
            f"(n_classes={n_classes}, kind={kind!r}); values present: {given}. Fix: {_KIND_FIX[kind]}"
        )
    a = arr if arr.dtype == np.uint8 else arr.astype(np.int64)
    if kind == "scribble":
        out = np.where(a == 0, 255, a - 1).astype(np.uint8)
    elif binary255:
        out = (a == 255).astype(np.uint8)
    else:
        out = a.astype(np.uint8)
    return out, binary255


def normalize_labels(
    values: np.ndarray,
    *,
    n_classes: int = 2,
    kind: Literal["mask", "partial", "scribble"] = "mask",
) -> np.ndarray:
    """Convert one label slice from a file convention to the in-memory one.

    Parameters
    ----------
    values : (Y, X) integer (or bool / integral float) array, e.g. a napari int32
        labels layer or a Fiji 0/255 mask.
    n_classes : number of classes C (2: solid/pore).
    kind : "mask" (0..C-1; binary 0/255 read as 0/1 with a warning), "partial"
        (0..C-1 plus 255 = unlabelled) or "scribble" (ilastik: 0 = unlabelled, class c
        stored as c + 1).

    Returns
    -------
    ndarray (Y, X) uint8, 0..C-1 and 255 = unlabelled.

    Raises
    ------
    LabelError : values outside the declared classes (named in the message).
    """
    n = _check_label_args(n_classes, kind)
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise LabelError(f"a label slice must be 2D (Y, X), got shape {_shape_text(arr.shape)}")
    out, b255 = _convert_labels(arr, n, kind, "label slice")
    if b255:
        logger.warning("read a binary 0/255 mask as 0/1 (255 -> pore = 1)")
    return out


def read_labels(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int] | None = None,
    n_classes: int = 2,
    kind: Literal["mask", "partial", "scribble"] = "mask",
    slices: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """Read a label file into ``{global z: (Y, X) uint8}`` in the in-memory convention.

    Parameters
    ----------
    path : a (Z, Y, X) label stack (memmapped when possible; only slices holding labels
        are kept in memory), a folder of per-slice files whose names carry the slice
        index (``mask_z0120.tif``, ``z12.png``), or one such 2D file.
    shape : (Z, Y, X) of the image the labels belong to, or only the slice shape
        (Y, X); checked when given.
    n_classes : number of classes C.
    kind : file convention (DESIGN.md §3): "mask" (complete masks 0..C-1; a 0/255
        binary mask is read as 0/1 with a warning; napari int32 labels in range are
        fine), "partial" (0..C-1 plus 255 = unlabelled), "scribble" (ilastik: 0 =
        unlabelled, class c stored as c + 1).
    slices : read only these global slice indices (e.g. the queried ones); None = all.

    Returns
    -------
    dict mapping global z to uint8 (Y, X) arrays with 0..C-1 and 255 = unlabelled,
    only for slices holding at least one label (every slice of a "mask" file).

    Raises
    ------
    LabelError : values outside the declared classes (naming values, slice and the
        convention expected), shape mismatch, files without a slice index,
        duplicate indices.
    """
    n = _check_label_args(n_classes, kind)
    path = Path(os.path.expanduser(os.fspath(path)))
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"shape must be (Z, Y, X) or (Y, X) integers, got {shape!r}") from exc
        if len(shape) == 2:
            shape = (None, *shape)
        elif len(shape) != 3:
            raise ConfigError(f"shape must be (Z, Y, X) or (Y, X), got {shape!r}")
    wanted = None if slices is None else {int(z) for z in slices}
    if not path.exists():
        raise LabelError(f"no such label file or folder: {path}")
    items: list[tuple[int, Callable[[], np.ndarray], str]] = []
    stack: Stack | None = None
    if path.is_dir():
        items = _label_folder_items(path, wanted)
        if not items and wanted is None:
            raise LabelError(
                f"label folder {path} holds no label files named with a slice index "
                "(expected e.g. mask_z0120.tif or z0120.png)"
            )
    else:
        try:
            stack = _open(path, crop=None, voxel_size=None, purpose="labels")
        except _Single2DError as exc:
            z = slice_index_from_name(path)
            if z is None:
                raise LabelError(
                    f"{path} is a single 2D label image without a slice index in its name; "
                    "name it with the slice it labels (e.g. mask_z0120.tif) or give a (Z, Y, X) "
                    "label stack"
                ) from exc
            if wanted is None or z in wanted:
                items = [(z, lambda p=path: _read_slice_file(p, "labels"), f"label file {path.name} (slice z={z})")]
        except StackError as exc:
            raise LabelError(f"cannot read labels from {path}: {exc}") from exc
    n_binary = 0
    result: dict[int, np.ndarray] = {}
    try:
        if stack is not None:
            if shape is not None and (stack.shape[1:] != shape[1:] or shape[0] not in (None, stack.shape[0])):
                raise LabelError(
                    f"label stack {path} has shape {_shape_text(stack.shape)} but the image is "
                    f"{_shape_text(shape)}; labels must cover the same (Z, Y, X) grid as the stack "
                    "they label"
                )
            zs = range(stack.shape[0]) if wanted is None else sorted(wanted)
            for z in zs:
                if not 0 <= z < stack.shape[0]:
                    raise LabelError(f"slice {z} requested but label stack {path} has {stack.shape[0]} slices")
                out, b = _convert_labels(stack[z], n, kind, f"label stack {path.name}, slice z={z}")
                n_binary += b
                if kind == "mask" or (out != 255).any():
                    result[z] = out
        else:
            for z, load, where in items:
                if shape is not None and shape[0] is not None and not 0 <= z < shape[0]:
                    raise LabelError(f"{where}: slice index {z} is outside the stack's 0..{shape[0] - 1}")
                try:
                    arr = load()
                except StackError as exc:
                    raise LabelError(f"{where} could not be read: {exc}") from exc
                if arr.ndim != 2:
                    raise LabelError(f"{where} has shape {_shape_text(arr.shape)}, expected one 2D (Y, X) slice")
                if shape is not None and arr.shape != shape[1:]:
                    raise LabelError(
                        f"{where} has shape {_shape_text(arr.shape)} but the stack's slices are "
                        f"{_shape_text(shape[1:])}; labels must match the (cropped) image slices"
                    )
                out, b = _convert_labels(arr, n, kind, where)
                n_binary += b
                if kind == "mask" or (out != 255).any():
                    result[z] = out
    finally:
        if stack is not None:
            stack.close()
    if n_binary:
        logger.warning(
            "%s: read %d binary 0/255 mask slice(s) as 0/1 (255 -> pore = 1)", path, n_binary
        )
    return dict(sorted(result.items()))


def _label_folder_items(path: Path, wanted: set[int] | None) -> list[tuple[int, Callable[[], np.ndarray], str]]:
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=natural_sort_key,
    )
    files = [p for p in files if p.suffix.lower() in _SLICE_SUFFIXES]
    seen: dict[int, str] = {}
    items = []
    no_index = [f.name for f in files if slice_index_from_name(f) is None]
    if no_index:
        raise LabelError(
            f"label folder {path}: file(s) {', '.join(no_index[:5])} carry no slice index in their "
            "name; name each file with the global slice it labels, e.g. mask_z0120.tif"
        )
    for f in files:
        z = int(slice_index_from_name(f) or 0)  # every name carries an index (checked above)
        if z in seen:
            raise LabelError(
                f"label folder {path}: {f.name} and {seen[z]} both claim slice z={z}; keep one"
            )
        seen[z] = f.name
        if wanted is not None and z not in wanted:
            continue
        items.append((z, lambda p=f: _read_slice_file(p, "labels"), f"label file {f.name} (slice z={z})"))
    return items
