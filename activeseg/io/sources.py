"""Where a stack's slices come from: files and folders on disk, opened and checked.

Format sniffing; TIFF files (series classification: slices, channels read as z, RGB,
palette, axis order; truncation checks) read through a memmap or page by page;
folders of single-slice TIFF/PNG/BMP/JPEG files in natural sort order
(:func:`slice_files`, :func:`natural_sort_key`); PNG, BMP and JPEG are decoded by
Pillow (8/16-bit grey; RGB/RGBA whose channels are equal is read as grey).
:func:`open_file` and :func:`open_folder` return the raw source that
:class:`activeseg.io.stack.Stack` wraps.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile
from PIL import Image, UnidentifiedImageError

from activeseg.errors import StackError
from activeseg.io.errors import READ_ERRORS, Single2DError, shape_text
from activeseg.io.metadata import PartialVoxelSize, file_metadata

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

_TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG"
_BMP_MAGIC = b"BM"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PILLOW_KINDS = ("png", "bmp", "jpeg")
"""Formats decoded by Pillow (one 2D image per file)."""


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


# -------------------------------------------------------------------------- backends


class _MemmapSource:
    """Slices from a read-only memmap of contiguous, uncompressed image data.

    ``mm`` is a (Z, Y, X) view of a read-only ``np.memmap``.
    """

    memmapped = True

    def __init__(self, mm: np.ndarray) -> None:
        self._mm: np.ndarray | None = mm

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
        arr = read_slice_file(self._files[z], self._purpose)
        if arr.shape != self._yx:
            raise StackError(
                f"slice file {self._files[z].name} has shape {shape_text(arr.shape)} but the "
                f"folder's slices are {shape_text(self._yx)}; did the folder change since it "
                "was opened?"
            )
        return arr[ys, xs]

    def describe(self, z: int) -> str:
        return f"slice {z} (file {self._files[z].name})"

    def close(self) -> None:
        pass


SliceSource = _MemmapSource | _PageSource | _FolderSource
"""What :class:`activeseg.io.stack.Stack` reads slices from (``read``, ``describe``, ``close``)."""


def _sniff(path: Path) -> str:
    """'tiff', 'png', 'bmp', 'jpeg', 'empty' or 'other' from the first bytes of a file."""
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
    if head[:3] == _JPEG_MAGIC:
        return "jpeg"
    if head[:2] == _BMP_MAGIC:
        return "bmp"
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
        raise StackError(f"{where} has an unsupported layout (axes {axes!r}, shape {shape_text(shape)})")
    ny, nx = shape[axes.index("Y")], shape[axes.index("X")]
    samples = dict(dims).get("S", 1)
    if samples > 1:
        what = "looks like RGB" if (samples in (3, 4) or photometric == 2) else f"has {samples} samples per pixel"
        raise StackError(
            f"{where} has shape {shape_text(shape)} (axes {axes}): it {what}; activeseg needs "
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
                f"{where} has {len(others)} axes besides Y and X ({desc}; shape {shape_text(shape)}, "
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
                f"{where} has {channels} channels (shape {shape_text(shape)}, axes {axes}): it is "
                "multichannel; activeseg needs one grayscale channel: split the channels (Fiji: "
                f"Image > Color > Split Channels) and give one of them{hint}"
            )
    if palette:
        raise StackError(
            f"{where} is a palette (indexed colour) image; convert to grayscale (Fiji: Image > "
            "Type > 8-bit) and save again"
        )
    if not others:
        raise Single2DError(
            f"{where}: got a single 2D image of shape ({ny}, {nx}) = (Y, X); give a stack of "
            "slices (a multipage TIFF) or a folder of slice images"
        )
    if len(others) > 1:
        raise StackError(
            f"{where} is {len(others) + 2}D (shape {shape_text(shape)}, axes {axes}: {desc}); "
            "activeseg needs one 3D (Z, Y, X) stack: save a single time point / position"
        )
    # slices are read as (Z, Y, X) blocks of the stored data: Y and X must come last
    order = "".join(a for a, n in dims if a in "YX" or (n > 1 and a != "S"))
    if not order.endswith("YX"):
        raise StackError(
            f"{where} stores its data in axis order {axes} (shape {shape_text(shape)}); activeseg "
            "reads stacks stored slice after slice, (Z, Y, X): re-save it in that order (numpy: "
            "numpy.moveaxis; Fiji: Image > Stacks > Reslice)"
        )
    return (int(others[0][1]), int(ny), int(nx)), channels_as_z


def open_file(path: Path, purpose: str, axes: str | None = None):
    """(backend tuple, channels_as_z) for one file; see :func:`_open_tiff`."""
    kind = _sniff(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffixes else ""
    if kind == "empty":
        raise StackError(f"{path} is empty (0 bytes); the copy or export failed, write it again")
    if kind in _PILLOW_KINDS:
        shape, _, _ = _slice_header(path, purpose)
        raise Single2DError(
            f"{path}: got a single 2D image of shape {shape_text(shape)} = (Y, X); give a "
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
            f"folder of .tif/.png/.bmp/.jpg slices, got a {suffix or 'extension-less'} file"
        )
    file_size = path.stat().st_size
    try:
        tif = tifffile.TiffFile(path)
    except READ_ERRORS as exc:
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
    except READ_ERRORS as exc:
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
        raise StackError(f"{path} holds an empty image of shape {shape_text(shape)}")
    if len(series_list) > 1 and "Y" in axes and not any(a not in "YXS" and n > 1 for a, n in zip(axes, shape)):
        shapes = sorted({shape_text(s.shape) for s in series_list})
        raise StackError(
            f"{path} holds {len(tif.pages)} pages of different shapes ({', '.join(shapes[:4])}); "
            "activeseg needs slices of one shape: crop or pad them to a common size"
        )
    (nz, ny, nx), channels_as_z = _classify_series(axes, shape, photometric, where, purpose, override)
    if len(series_list) > 1:
        logger.warning(
            "%s holds %d image series; reading the first, %s, and ignoring the others",
            path, len(series_list), shape_text(shape),
        )
    fmt = "ome" if tif.is_ome else "imagej" if tif.is_imagej else "tiff"
    meta_sources, fei = file_metadata(tif, nz)
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
        mm: np.ndarray = np.memmap(path, dtype=native, mode="r", offset=int(dataoffset), shape=shape, order="C")
        mm = mm.reshape(nz, ny, nx)
        tif.close()
        source: _MemmapSource | _PageSource = _MemmapSource(mm)
    else:
        try:
            pages = series.pages
            n_series_pages = len(pages)
            last = pages[n_series_pages - 1] if n_series_pages else None
            ends = [int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts)] if last is not None else []
        except READ_ERRORS as exc:
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
    except READ_ERRORS:
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
    except READ_ERRORS:
        return None
    return None


def _slice_header(path: Path, purpose: str) -> tuple[tuple[int, ...], np.dtype, str]:
    """(shape, dtype, kind) of one slice file without reading its pixels."""
    kind = _sniff(path)
    if kind in _PILLOW_KINDS:
        with _open_pillow(path, kind) as im:
            dtype, _ = _pillow_plan(im, path, kind, purpose)
            w, h = im.size
        return (h, w), dtype, kind
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes, tuple(int(s) for s in series.shape)
                photometric = int(series.keyframe.photometric)
                dtype = series.dtype
        except READ_ERRORS as exc:
            raise StackError(
                f"slice file {path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); "
                "export it again"
            ) from exc
        dims = dict(zip(axes, shape))
        if dims.get("S", 1) > 1 or dims.get("C", 1) > 1 or (photometric == 3 and purpose != "labels"):
            raise StackError(
                f"slice file {path} has shape {shape_text(shape)} (axes {axes}): it looks like RGB "
                "or multichannel; convert to grayscale and save again"
            )
        extra = [(a, n) for a, n in zip(axes, shape) if a not in "YXSC" and n > 1]
        if extra:
            raise StackError(
                f"slice file {path} is itself a stack of shape {shape_text(shape)}; a folder must "
                "hold one 2D slice per file (open the file directly instead)"
            )
        if dtype is None:
            raise StackError(f"slice file {path} uses a pixel format activeseg cannot decode")
        return (dims["Y"], dims["X"]), np.dtype(dtype), "tiff"
    if kind == "empty":
        raise StackError(f"slice file {path} is empty (0 bytes); export it again")
    raise StackError(
        f"slice file {path} is not a TIFF, PNG, BMP or JPEG image (bad header); remove it or export it again"
    )


_PIL_GREY_MODES: dict[str, npt.DTypeLike] = {
    "L": np.uint8,
    "1": np.bool_,
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I": np.int32,
    "F": np.float32,
}
"""Pillow modes of one grey channel, and the dtype they are read as."""
_PIL_COLOUR_MODES = {"RGB": 3, "RGBA": 4, "LA": 2}
"""Pillow modes with several channels, read as grey when their colour channels are equal."""
_JPEG_GREY_TOLERANCE = 2
"""Largest difference between the R, G and B of a JPEG pixel that still counts as grey
(lossy chroma coding leaves a grey image's channels a level or two apart)."""
_PIL_NAMES = {"png": "PNG", "bmp": "BMP", "jpeg": "JPEG"}


def _open_pillow(path: Path, kind: str) -> Image.Image:
    """``Image.open(path)`` with Pillow's errors turned into a StackError naming the file."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise StackError(
            f"slice file {path} is larger than Pillow's safety limit ({exc}); save the slices as TIFF instead"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StackError(f"slice file {path} is not a readable {_PIL_NAMES[kind]} ({exc}); export it again") from exc


def _png_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _colour_message(path: Path, shape: tuple[int, ...], mode: str, why: str) -> str:
    return (
        f"slice file {path} has shape {shape_text(shape)} (mode {mode}): it looks like RGB ({why}); "
        "activeseg needs grayscale slices: convert to grayscale (Fiji: Image > Type > 8-bit) and save again"
    )


def _pillow_plan(im: Image.Image, path: Path, kind: str, purpose: str) -> tuple[np.dtype, str]:
    """(dtype, how) for an open Pillow image; ``how`` is "grey" (read as it is),
    "int16" (a 16-bit PNG that Pillow opens as 32-bit), "palette" (grey palette, read
    through it) or "colour" (equal channels checked when read)."""
    mode, (w, h) = im.mode, im.size
    if w == 0 or h == 0:
        raise StackError(f"slice file {path} holds an empty image of shape ({h}, {w})")
    if kind == "png":
        depth = _png_depth(path)
        if depth is not None and depth[0] == 16 and depth[1] in (2, 4, 6):
            raise StackError(
                f"slice file {path} is a 16-bit colour PNG of shape {shape_text((h, w))}; Pillow reads such files "
                "as 8-bit colour, which would lose the low bits: save the slices as 16-bit grayscale PNG or TIFF"
            )
        if mode == "I" and depth is not None and depth[0] == 16:
            return np.dtype(np.uint16), "int16"
    if mode in _PIL_GREY_MODES:
        return np.dtype(_PIL_GREY_MODES[mode]), "grey"
    if mode == "P":
        if purpose == "labels":
            return np.dtype(np.uint8), "grey"  # label values are the palette indices
        palette = np.asarray(im.getpalette() or [], np.int64)
        rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3)
        if rgb.size and (rgb == rgb[:, :1]).all():
            return np.dtype(np.uint8), "palette"
        raise StackError(
            f"slice file {path} is a palette (indexed colour) {_PIL_NAMES[kind]} of shape {shape_text((h, w))}; "
            "convert to grayscale (Fiji: Image > Type > 8-bit) and save again"
        )
    if mode in _PIL_COLOUR_MODES:
        return np.dtype(np.uint8), "colour"
    raise StackError(
        f"slice file {path} is a {_PIL_NAMES[kind]} in mode {mode} of shape {shape_text((h, w))}, which activeseg "
        "does not read: convert to grayscale (8 or 16 bit) and save again"
    )


def _read_pillow(path: Path, kind: str, purpose: str) -> np.ndarray:
    """Pixels of a PNG, BMP or JPEG file as one 2D grey array (see :func:`_pillow_plan`)."""
    with _open_pillow(path, kind) as im:
        dtype, how = _pillow_plan(im, path, kind, purpose)
        try:
            if how == "palette":
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im)
        except (OSError, ValueError) as exc:  # a truncated or corrupt file fails when decoded
            raise StackError(f"slice file {path} is a truncated or corrupt {_PIL_NAMES[kind]} ({exc}); export it again") from exc
        if how == "colour":
            mode = im.mode
            n = _PIL_COLOUR_MODES[mode]
            if mode in ("RGBA", "LA") and (arr[..., -1] != 255).any():
                raise StackError(
                    f"slice file {path} (mode {mode}) is partly transparent (its alpha channel is not 255 "
                    "everywhere); save the slices as grayscale without transparency"
                )
            if n >= 3:
                rgb = arr[..., :3].astype(np.int16)
                spread = int((rgb.max(axis=-1) - rgb.min(axis=-1)).max())
                tolerance = _JPEG_GREY_TOLERANCE if kind == "jpeg" else 0
                if spread > tolerance:
                    raise StackError(_colour_message(path, arr.shape, mode, f"its R, G and B differ by up to {spread}"))
                arr = np.asarray(im.convert("L")) if spread else arr[..., 0]
            else:
                arr = arr[..., 0]
    if how == "int16":
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise StackError(f"slice file {path} is a 16-bit PNG holding values outside 0..65535; export it again")
        return arr.astype(np.uint16)
    arr = np.asarray(arr, dtype=dtype) if arr.dtype != dtype else arr
    return np.array(arr, copy=True) if not arr.flags.writeable else arr


def read_slice_file(path: Path, purpose: str) -> np.ndarray:
    """Pixels of one 2D slice file (TIFF page 0, PNG, BMP or JPEG) as a 2D array."""
    kind = _sniff(path)
    if kind in _PILLOW_KINDS:
        return _read_pillow(path, kind, purpose)
    if kind == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                arr = tif.pages.first.asarray()
        except READ_ERRORS as exc:
            raise StackError(
                f"{path} is a corrupt or truncated TIFF ({type(exc).__name__}: {exc}); export it again"
            ) from exc
        if arr.ndim == 3 and 1 in arr.shape:
            arr = arr.reshape([n for n in arr.shape if n != 1][-2:])
        if arr.ndim != 2:
            raise StackError(f"{path} holds an image of shape {shape_text(arr.shape)}, expected one 2D slice")
        return arr
    if kind == "empty":
        raise StackError(f"{path} is empty (0 bytes); export it again")
    raise StackError(f"{path} is not a TIFF, PNG, BMP or JPEG image (bad header)")


def slice_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The slice images of a folder, as :func:`open_stack` reads them: ``.tif``,
    ``.tiff``, ``.png``, ``.bmp``, ``.jpg`` and ``.jpeg`` files, hidden files skipped, in
    natural order."""
    entries = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in entries if p.suffix.lower() in SLICE_SUFFIXES), key=natural_sort_key)


def open_folder(path: Path, purpose: str):
    files = slice_files(path)
    if not files:
        entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        others = sorted(p.name for p in entries)[:5]
        found = f"; it holds {len(entries)} other file(s), e.g. {', '.join(others)}" if others else " (it is empty)"
        raise StackError(
            f"folder {path} holds no slice images: expected .tif, .tiff, .png, .bmp or .jpg files, "
            f"one 2D slice each{found}"
        )
    shape0, dtype0, _ = _slice_header(files[0], purpose)
    if _sniff(files[0]) in _PILLOW_KINDS:
        read_slice_file(files[0], purpose)  # colour files show whether they are grey only when decoded
    for f in files[1:]:
        shape, dtype, _ = _slice_header(f, purpose)
        if shape != shape0:
            raise StackError(
                f"folder {path} mixes slice shapes: {f.name} is {shape_text(shape)} but "
                f"{files[0].name} (the first slice) is {shape_text(shape0)}; all slices must have "
                "the same (Y, X) shape: crop or pad them, or remove the odd file"
            )
        if dtype != dtype0:
            raise StackError(
                f"folder {path} mixes dtypes: {f.name} is {dtype} but {files[0].name} (the first slice) is "
                f"{dtype0}; save all slices with the same bit depth, or remove the odd file"
            )
    meta_sources: list[tuple[str, PartialVoxelSize]] = []
    fei = None
    if _sniff(files[0]) == "tiff":
        try:
            with tifffile.TiffFile(files[0]) as tif:
                meta_sources, fei = file_metadata(tif, 1)
        except READ_ERRORS as exc:
            raise StackError(f"slice file {files[0]} is a corrupt TIFF ({exc}); export it again") from exc
    file_size = sum(f.stat().st_size for f in files)
    source = _FolderSource(files, (int(shape0[0]), int(shape0[1])), purpose)
    return source, (len(files), int(shape0[0]), int(shape0[1])), dtype0, "folder", meta_sources, fei, file_size
