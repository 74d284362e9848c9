"""The lazy ``(Z, Y, X)`` :class:`Stack`, :class:`Crop`, and opening stacks.

:func:`open_stack` (and :func:`open_path`, shared with label reading) picks the source
(:mod:`activeseg.io.sources`), the dtype, the FEI information bar, the user crop and the
voxel size (:mod:`activeseg.io.metadata`); :func:`read_stack` reads a whole small
stack; :func:`intensity_warning` flags constant stacks. See the ``Reading`` section of
:mod:`activeseg.io`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.errors import ConfigError, LabelError, StackError
from activeseg.io.errors import READ_ERRORS, shape_text
from activeseg.io.metadata import (
    PartialVoxelSize,
    VoxelSizeArg,
    check_voxel_size_arg,
    detect_infobar,
    merge_voxel_sizes,
)
from activeseg.io.sources import SliceSource, open_file, open_folder
from activeseg.io.zarr_store import is_url, looks_like_zarr, open_zarr

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_CONVERT_DTYPES: dict[np.dtype, np.dtype] = {
    np.dtype(bool): np.dtype(np.uint8),
    np.dtype(np.int8): np.dtype(np.float32),
    np.dtype(np.int16): np.dtype(np.float32),
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float32),
}
HOW_TO_CONVERT = (
    "convert it to uint8, uint16 or float32 first (e.g. in Fiji: Image > Type, or "
    "numpy: array.astype(np.float32))"
)


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
            vals: list[int | None] = []
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
        ranges: list[tuple[int | None, int | None]] = []
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
                    f"{names[axis]} (valid range 0:{n}); stack shape {shape_text(shape)}"
                )
            out.append(range(start, stop))
        return (out[0], out[1], out[2])

    def __str__(self) -> str:
        def fmt(r: tuple[int | None, int | None]) -> str:
            return f"{'' if r[0] is None else r[0]}:{'' if r[1] is None else r[1]}"

        return ",".join(fmt(getattr(self, a)) for a in "zyx")


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
        "imagej", "fei", "zeiss", "ome-zarr") or None.
    location : where the stack is read from as text: ``str(path)``, or the URL of a remote
        zarr store (``path`` of a URL is only for display).
    memmapped : True when slices come from a memory map of the file.
    format : "tiff", "imagej", "ome", "folder", "zarr" or "ome-zarr".
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
        source: SliceSource,
        source_shape: tuple[int, int, int],
        raw_dtype: np.dtype,
        dtype: np.dtype,
        fmt: str,
        region: tuple[range, range, range],
        infobar_rows: int,
        crop: Crop | None,
        voxel_size_partial: PartialVoxelSize,
        voxel_size_source: tuple[str | None, str | None, str | None],
        file_size: int | Callable[[], int],
        voxel_size_arg: VoxelSizeArg,
        purpose: str,
        axes_override: str | None = None,
        reopen_axes: str | None = None,
        location: str | None = None,
    ) -> None:
        self.path = path
        self.location = location if location is not None else str(path)
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
        self._file_size = file_size  # a zarr store's size is summed over its chunks when first asked for
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
    def file_size(self) -> int:
        """Bytes on disk (sum of the files for a folder or a zarr store; 0 for a URL)."""
        if callable(self._file_size):
            self._file_size = int(self._file_size())
        return int(self._file_size)

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
    def _read_slices(self, zs: Sequence[int] | np.ndarray, ys: range, xs: range) -> np.ndarray:
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
            except READ_ERRORS as exc:
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
            post: list[slice | int] = []
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
        # lets multiprocessing workers (e.g. torch DataLoader, Dask workers) reopen the stack
        return (_reopen, (self.location, self.crop, self._voxel_size_arg, self._purpose, self._reopen_axes))


def _reopen(
    path: str, crop: Crop | None, voxel_size: VoxelSizeArg, purpose: str, axes: str | None = None
) -> Stack:
    return open_path(path if is_url(path) else Path(path), crop=crop, voxel_size=voxel_size, purpose=purpose, axes=axes)


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
    path : a multipage TIFF / ImageJ hyperstack / OME-TIFF file, a folder of
        single-slice ``.tif``/``.tiff``/``.png`` files (natural sort order), or a zarr
        store: an OME-Zarr image or label group, a zarr array (v2 or v3) or a group
        holding one (a ``.zarr`` folder, any folder holding zarr metadata, or a
        ``scheme://`` URL read through fsspec); see :mod:`activeseg.io.zarr_store`.
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
    where = path if isinstance(path, str) and is_url(path) else Path(os.path.expanduser(os.fspath(path)))
    stack = open_path(where, crop=crop, voxel_size=voxel_size, purpose="image", axes=axes)
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
        raise ConfigError(f"intensity_warning needs a non-empty (Z, Y, X) stack, got shape {shape_text(shape)}")
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


def open_path(
    path: Path | str, *, crop: Crop | None, voxel_size: VoxelSizeArg, purpose: str, axes: str | None = None
) -> Stack:
    """Open ``path`` (already expanded; a ``scheme://`` URL as text) as a :class:`Stack` for
    ``purpose`` ("image" or "labels"); what :func:`open_stack`, pickled stacks and label
    reading share."""
    axes = _check_axes_arg(axes)
    user_vs = check_voxel_size_arg(voxel_size)
    location = str(path)
    if isinstance(path, str):
        if not is_url(path):
            path = Path(path)
        else:
            return _wrap(Path(path), open_zarr(path, purpose), crop=crop, user_vs=user_vs, voxel_size=voxel_size,
                         purpose=purpose, axes=axes, channels_as_z=False, location=location)
    if not path.exists():
        hint = ""
        parent = path.parent
        if parent.is_dir():
            near = sorted(p.name for p in parent.iterdir() if p.name.lower().startswith(path.name[:3].lower()))[:5]
            if near:
                hint = f"; similar names there: {', '.join(near)}"
        raise StackError(f"no such file or folder: {path}{hint}")
    channels_as_z = False
    if looks_like_zarr(path):
        opened = open_zarr(path, purpose)  # its axes metadata say which axis is z
    elif path.is_dir():
        opened = open_folder(path, purpose)  # one slice per file: "ZYX" is what it is anyway
    else:
        opened, channels_as_z = open_file(path, purpose, axes)
    return _wrap(path, opened, crop=crop, user_vs=user_vs, voxel_size=voxel_size, purpose=purpose, axes=axes,
                 channels_as_z=channels_as_z, location=location)


def _wrap(
    path: Path,
    opened: tuple,
    *,
    crop: Crop | None,
    user_vs: PartialVoxelSize,
    voxel_size: VoxelSizeArg,
    purpose: str,
    axes: str | None,
    channels_as_z: bool,
    location: str,
) -> Stack:
    """The :class:`Stack` over an opened source: dtype, information bar, crop, voxel size."""
    source, (nz, ny, nx), raw_dtype, fmt, meta_sources, fei, file_size = opened
    try:
        dtype = _target_dtype(raw_dtype, path, purpose)
        bar = detect_infobar(fei, ny)
        if bar:
            logger.info("%s: cropping a %d-row FEI information bar (scan height %d)", path, bar, ny - bar)
        effective = (nz, ny - bar, nx)
        region = (crop or Crop()).resolve(effective)
        merged, origin = merge_voxel_sizes([("argument", user_vs), *meta_sources])
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
        location=location,
    )


def _target_dtype(raw: np.dtype, path: Path, purpose: str) -> np.dtype:
    raw = np.dtype(raw).newbyteorder("=") if np.dtype(raw).byteorder not in ("=", "|") else np.dtype(raw)
    if purpose == "labels":
        if raw.kind in "biuf":
            return raw
        raise LabelError(f"label file {path} has dtype {raw}; expected an integer label image")
    if raw in IMAGE_DTYPES:
        return raw
    if raw in _CONVERT_DTYPES:
        target = _CONVERT_DTYPES[raw]
        logger.info("%s: converting %s data to %s", path, raw, target)
        return target
    raise StackError(
        f"{path} has dtype {raw}, which activeseg does not read: expected uint8, uint16 or "
        f"float32 (bool, int8, int16, float16 and float64 are converted); {HOW_TO_CONVERT}"
    )
