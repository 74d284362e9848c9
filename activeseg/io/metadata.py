"""Voxel size and instrument metadata of stacks (see the ``Voxel size`` section of
:mod:`activeseg.io`).

Units to nanometres; the ``voxel_size=`` argument's checks; ImageJ, OME, FEI/Thermo
and Zeiss voxel-size parsers and their merge in priority order
(:func:`file_metadata`, :func:`merge_voxel_sizes`); the FEI/Thermo information bar
(:func:`detect_infobar`).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import tifffile

from activeseg.errors import ConfigError
from activeseg.io.errors import READ_ERRORS

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

VoxelSizeArg = Sequence[float | None] | None
PartialVoxelSize = tuple[float | None, float | None, float | None]


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


def unit_scale_nm(unit: Any) -> float | None:
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


def check_voxel_size_arg(voxel_size: VoxelSizeArg) -> PartialVoxelSize:
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


def validate_full_voxel_size(voxel_size: VoxelSizeArg) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    vs = check_voxel_size_arg(voxel_size)
    if any(v is None for v in vs):
        raise ConfigError(
            f"to write a voxel size all of (z, y, x) must be known, got {tuple(voxel_size)!r}; "
            "pass voxel_size=None to write no scale"
        )
    return (float(vs[0]), float(vs[1]), float(vs[2]))  # type: ignore[arg-type]


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
            scale = unit_scale_nm(unit)
            if value is not None and scale is not None:
                return value * scale
    return None


def _imagej_voxel_size(tif: tifffile.TiffFile, n_slices: int) -> PartialVoxelSize:
    meta = tif.imagej_metadata or {}
    scale = unit_scale_nm(meta.get("unit"))
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
        scale = unit_scale_nm(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        out.append(value * scale if value is not None and scale is not None else None)
    return (out[0], out[1], out[2])


def merge_voxel_sizes(
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


def file_metadata(tif: tifffile.TiffFile, n_slices: int) -> tuple[list[tuple[str, PartialVoxelSize]], dict | None]:
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
    except READ_ERRORS as exc:  # metadata is optional; the pixels may still be fine
        logger.warning("could not parse metadata of %s (%s); voxel size unknown", tif.filename, exc)
    return sources, fei
