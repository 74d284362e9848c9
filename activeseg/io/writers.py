"""Writing stacks: :func:`write_stack` (atomic) and :func:`create_stack` (memmap).

ImageJ-compatible TIFFs (OME BigTIFF for compressed data beyond 4 GB), the label
lookup table, per-kind dtype and value checks. See the ``Writing`` section of
:mod:`activeseg.io`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from activeseg import safety
from activeseg.errors import ConfigError, OutputError, StackError
from activeseg.io.errors import shape_text
from activeseg.io.metadata import VoxelSizeArg, validate_full_voxel_size
from activeseg.io.stack import HOW_TO_CONVERT, IMAGE_DTYPES, Stack

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


_KINDS = ("image", "labels", "probabilities")
_KIND_DTYPES = {
    "image": IMAGE_DTYPES,
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


def check_output_shape(shape: Any, kind: str) -> tuple[int, ...]:
    """The shape of a whole-stack output as ints: (Z, Y, X), or (Z, C, Y, X) for probabilities."""
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"shape must be three integers (Z, Y, X), got {shape!r}") from exc
    if len(shp) not in (3, 4) or min(shp) <= 0 or (len(shp) == 4 and kind != "probabilities"):
        raise ConfigError(
            f"shape must be three positive integers (Z, Y, X) (or (Z, C, Y, X) for multi-class "
            f"probabilities), got {shape!r}"
        )
    return shp


def check_kind_dtype(kind: str, dtype: np.dtype, what: str) -> None:
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    allowed = _KIND_DTYPES[kind]
    if np.dtype(dtype) not in allowed:
        names = ", ".join(str(d) for d in allowed)
        fix = {
            "image": HOW_TO_CONVERT,
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
    vs = validate_full_voxel_size(voxel_size)
    if compression not in _COMPRESSIONS:
        raise ConfigError(f"compression must be None or 'zlib', got {compression!r}")
    if isinstance(data, Stack):
        data = data[:]
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    check_kind_dtype(kind, arr.dtype, "data")
    if arr.ndim != 3 and not (kind == "probabilities" and arr.ndim == 4):
        hint = "add a slice axis: array[np.newaxis]" if arr.ndim == 2 else "give one (Z, Y, X) volume"
        raise StackError(f"write_stack needs a 3D (Z, Y, X) array, got shape {shape_text(arr.shape)}; {hint}")
    if 0 in arr.shape:
        raise StackError(f"write_stack got an empty array of shape {shape_text(arr.shape)}")
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
    vs = validate_full_voxel_size(voxel_size)
    shape = check_output_shape(shape, kind)
    dt = np.dtype(dtype)
    check_kind_dtype(kind, dt, "create_stack dtype")
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
