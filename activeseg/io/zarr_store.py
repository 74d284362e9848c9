"""Zarr and OME-Zarr stores: stacks read lazily from them, outputs written as OME-Zarr.

Reading (:func:`open_zarr`, used by :func:`activeseg.io.stack.open_path`): an OME-Zarr
image group (its first multiscale's first dataset, the full resolution), an OME-Zarr
label group, a plain zarr array, or a group holding exactly one array; zarr v2 and v3;
local folders and ``scheme://`` URLs (through fsspec, when the scheme's package is
installed). Only the chunks a slice needs are read. Singleton ``t``/``c`` axes are
dropped; a ``c`` axis of several channels and a 2D array are refused as for TIFF. The
voxel size comes from the first dataset's ``coordinateTransformations`` scale and the
axes' units (converted to nm; an unknown unit leaves it unknown, with a warning).

Writing (:func:`create_store`, :func:`finish_store`, :func:`open_output_block`, used by
:mod:`activeseg.io.outputs`): the level-0 array goes to ``NAME.zarr.partial`` (zarr v3,
OME-NGFF 0.5, one slice per chunk), which :func:`finish_store` completes (two pyramid
levels, downsampled by 2 in y and x; the multiscales metadata through
:mod:`ome_zarr.writer`) and renames to ``NAME.zarr``: a half-written store never looks
finished.

Sessions fingerprint a store by :func:`store_fingerprint` (the level-0 array's shape,
dtype and chunks, the metadata files' text and the chunk files' names, sizes and
modification times), with the SHA-256 of every chunk's bytes only on request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from activeseg import safety
from activeseg.errors import ConfigError, OutputError, StackError
from activeseg.io.errors import READ_ERRORS, Single2DError, shape_text
from activeseg.io.metadata import PartialVoxelSize, unit_scale_nm

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

ZARR_SUFFIX = ".zarr"
PARTIAL_SUFFIX = ".partial"
METADATA_FILES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
"""File names that hold zarr metadata (v3 and v2)."""
_CHUNK_NAME = re.compile(r"\d+(\.\d+)*")
"""The last component of a chunk key: ``0``, ``12`` (nested / v3 ``c/0/0/0``) or ``0.0.0`` (v2)."""
PYRAMID_LEVELS = 2
"""Extra resolution levels written below level 0, each halving y and x (z is kept)."""
DEFAULT_CHUNK_YX = 512


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """True when the name ends in ``.zarr`` (``.ome.zarr`` included), a trailing slash allowed."""
    text = os.fspath(path).rstrip("/\\")
    return text.lower().endswith(ZARR_SUFFIX)


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` locations (read through fsspec)."""
    return isinstance(path, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", path) is not None


def looks_like_zarr(path: Path) -> bool:
    """True for a folder whose name ends in ``.zarr`` or that holds zarr metadata."""
    if not path.is_dir():
        return False
    return is_zarr_path(path) or any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"))


# ----------------------------------------------------------------------------- reading


class _ZarrSource:
    """Slices of a (possibly higher-dimensional) zarr array: ``index`` is the selection
    template with ``None`` where z goes; y and x are the last two axes."""

    memmapped = False

    def __init__(self, arr: zarr.Array, index: tuple[Any, ...], where: str) -> None:
        self._arr: zarr.Array | None = arr
        self._index = index
        self._where = where

    def read(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        if self._arr is None:
            raise StackError("the stack is closed; open it again with open_stack(path)")
        ny, nx = self._arr.shape[-2:]
        (ylo, yhi, ysub), (xlo, xhi, xsub) = _span(ys, ny), _span(xs, nx)
        key = tuple(z if k is None else k for k in self._index) + (slice(ylo, yhi), slice(xlo, xhi))
        block = np.asarray(self._arr[key])
        return block[ysub, xsub]

    def describe(self, z: int) -> str:
        return f"slice {z} (zarr array {self._where})"

    def close(self) -> None:
        self._arr = None


def _span(s: slice, n: int) -> tuple[int, int, slice]:
    """(lo, hi, local slice): the contiguous range covering ``s`` and how to take ``s`` from
    it (zarr reads positive-step ranges; a negative step is applied in memory)."""
    r = range(n)[s]
    if len(r) == 0:
        return 0, 0, slice(0, 0)
    lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
    start = r[0] - lo
    stop = r[-1] - lo + (1 if r.step > 0 else -1)
    return lo, hi, slice(start, None if stop < 0 else stop, r.step)


def _open_node(location: str, where: str) -> Any:
    try:
        return zarr.open(location, mode="r")
    except (FileNotFoundError, KeyError) as exc:
        raise StackError(
            f"{where} is not a zarr store (no zarr.json, .zarray or .zgroup found: {type(exc).__name__}: {exc}); "
            "give the folder of a zarr array or OME-Zarr image"
        ) from exc
    except ImportError as exc:
        raise StackError(
            f"{where} cannot be read: the package for its URL scheme is not installed ({exc}); install it "
            "(e.g. pip install s3fs, gcsfs or aiohttp) or copy the store to a local folder"
        ) from exc
    except READ_ERRORS as exc:
        raise StackError(
            f"{where} could not be opened as zarr ({type(exc).__name__}: {exc}); the store is incomplete or "
            "corrupt: copy or write it again"
        ) from exc


def _ome_attrs(group: Any) -> dict:
    """The OME-NGFF attributes of a group (v3: under ``ome``; v2: at the top)."""
    attrs = dict(group.attrs.asdict())
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _resolve(node: Any, where: str) -> tuple[Any, str, dict | None, str]:
    """(level-0 array, its name inside the store, the multiscale entry or None, format)."""
    if isinstance(node, zarr.Array):
        return node, "", None, "zarr"
    ome = _ome_attrs(node)
    multiscales = ome.get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        ms = multiscales[0]
        datasets = ms.get("datasets") if isinstance(ms, dict) else None
        if not datasets or not isinstance(datasets[0], dict) or "path" not in datasets[0]:
            raise StackError(f"{where} has OME-Zarr multiscales metadata without datasets; write the store again")
        name = str(datasets[0]["path"])
        try:
            arr = node[name]
        except KeyError as exc:
            raise StackError(
                f"{where}: its OME-Zarr metadata name the dataset {name!r}, which is missing; the store is "
                "incomplete: copy or write it again"
            ) from exc
        return arr, name, ms, "ome-zarr"
    labels = ome.get("labels")
    if isinstance(labels, list) and len(labels) == 1 and not list(node.array_keys()):
        arr, name, ms, _ = _resolve(node[str(labels[0])], f"{where}/{labels[0]}")
        return arr, f"{labels[0]}/{name}", ms, "ome-zarr"
    arrays = sorted(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]], arrays[0], None, "zarr"
    if not arrays:
        groups = sorted(node.group_keys())
        inside = f" (it holds the groups {', '.join(groups[:6])}: give one of them, e.g. {where}/{groups[0]})" if groups else ""
        raise StackError(f"{where} is a zarr group without OME-Zarr multiscales metadata and without arrays{inside}")
    raise StackError(
        f"{where} is a zarr group holding {len(arrays)} arrays ({', '.join(arrays[:6])}) and no OME-Zarr "
        f"multiscales metadata saying which is the image; give the array itself, e.g. {where}/{arrays[0]}"
    )


def _axes(arr: Any, ms: dict | None, where: str) -> tuple[list[str], list[Any]]:
    """Axis names (lower case) and units of the level-0 array."""
    ndim = len(arr.shape)
    if ms is not None and isinstance(ms.get("axes"), list) and len(ms["axes"]) == ndim:
        names, units = [], []
        for a in ms["axes"]:
            if isinstance(a, dict):
                names.append(str(a.get("name", "")).lower())
                units.append(a.get("unit"))
            else:  # NGFF 0.3: plain names
                names.append(str(a).lower())
                units.append(None)
        return names, units
    dims = getattr(arr.metadata, "dimension_names", None)
    if dims and len(dims) == ndim and all(d for d in dims):
        return [str(d).lower() for d in dims], [None] * ndim
    if ms is not None and ndim == 5:  # NGFF 0.1/0.2: always t, c, z, y, x
        return ["t", "c", "z", "y", "x"], [None] * 5
    names = [f"dim_{i}" for i in range(ndim)]
    if ndim >= 2:
        names[-2:] = ["y", "x"]
    if ndim >= 3:
        names[-3] = "z"
    return names, [None] * ndim


def _plan(names: list[str], shape: tuple[int, ...], where: str) -> tuple[tuple[Any, ...], int]:
    """The selection template (``None`` at the z axis) and the number of slices."""
    desc = ", ".join(f"{n}={s}" for n, s in zip(names, shape))
    if len(shape) < 2 or names[-2:] != ["y", "x"]:
        raise StackError(
            f"{where} stores its data with axes ({desc}); activeseg reads arrays whose last two axes are y "
            "and x, (Z, Y, X): write it in that order (numpy: numpy.moveaxis)"
        )
    others = [(i, n, int(s)) for i, (n, s) in enumerate(zip(names[:-2], shape[:-2]))]
    for i, n, s in others:
        if n == "c" and s > 1:
            raise StackError(
                f"{where} has {s} channels (axes {desc}): it is multichannel; activeseg needs one grayscale "
                f"channel: save the one you want as its own array, e.g. in Python "
                f"zarr.save_array('channel0.zarr', arr.take(0, axis={i})) with arr the level-0 array"
            )
        if n == "t" and s > 1:
            raise StackError(
                f"{where} has {s} time points (axes {desc}); activeseg needs one 3D (Z, Y, X) stack: save a "
                f"single time point as its own array, e.g. zarr.save_array('t0.zarr', arr.take(0, axis={i}))"
            )
    big = [(i, n, s) for i, n, s in others if s > 1]
    if not big:
        raise Single2DError(
            f"{where}: got a single 2D image of shape ({shape[-2]}, {shape[-1]}) = (Y, X); give a stack of "
            "slices (a zarr array (Z, Y, X))"
        )
    if len(big) > 1:
        raise StackError(
            f"{where} is {len(big) + 2}D (axes {desc}); activeseg needs one 3D (Z, Y, X) stack: save a single "
            "time point / position / channel as its own array"
        )
    z_axis, _, nz = big[0]
    index = tuple(None if i == z_axis else 0 for i, _, _ in others)
    return index, nz


def _voxel_size(ms: dict | None, names: list[str], units: list[Any], where: str) -> PartialVoxelSize:
    """(z, y, x) in nm from the first dataset's scale (and a multiscale-wide scale) and units."""
    if ms is None:
        return (None, None, None)
    scale = [1.0] * len(names)
    found = False
    transforms = list(ms["datasets"][0].get("coordinateTransformations") or [])
    transforms += list(ms.get("coordinateTransformations") or [])  # NGFF 0.4: applies after the dataset's
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
            if len(t["scale"]) != len(names):
                logger.warning("%s: a scale of %d entries for %d axes is ignored", where, len(t["scale"]), len(names))
                continue
            try:
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
            except (TypeError, ValueError):
                logger.warning("%s: a scale that is not numbers (%r) is ignored", where, t["scale"])
                continue
            found = True
    out: list[float | None] = []
    for axis in "zyx":
        if axis not in names or not found:
            out.append(None)
            continue
        i = names.index(axis)
        unit = units[i]
        if unit is None:
            out.append(None)
            continue
        per = unit_scale_nm(unit)
        if per is None:
            logger.warning("%s: axis %s has the unit %r, which activeseg does not know; its voxel size is unknown "
                           "(give it with voxel_size / --voxel-size)", where, axis, unit)
            out.append(None)
            continue
        value = scale[i] * per
        out.append(value if np.isfinite(value) and value > 0 else None)
    return (out[0], out[1], out[2])


def open_zarr(location: str | Path, purpose: str):
    """The backend tuple :func:`activeseg.io.stack.open_path` wraps, for a zarr store.

    Returns
    -------
    ``(source, (Z, Y, X), raw dtype, format, voxel-size sources, None, bytes on disk)``;
    format is ``"ome-zarr"`` or ``"zarr"``; the bytes on disk are a function, called (a
    walk over the chunk files) only when :attr:`Stack.file_size` is read.
    """
    where = str(location)
    node = _open_node(where, where)
    arr, _name, ms, fmt = _resolve(node, where)
    shape = tuple(int(s) for s in arr.shape)
    if 0 in shape:
        raise StackError(f"{where} holds an empty array of shape {shape_text(shape)}")
    names, units = _axes(arr, ms, where)
    index, nz = _plan(names, shape, where)
    raw = np.dtype(arr.dtype)
    vs = _voxel_size(ms, names, units, where)
    source = _ZarrSource(arr, index, where)
    size = (lambda: 0) if is_url(where) else partial(_store_size, Path(where))  # walked only when asked for
    return source, (nz, shape[-2], shape[-1]), raw, fmt, [("ome-zarr", vs)], None, size


def _store_size(root: Path) -> int:
    return sum(s for _, s, _ in store_files(root))


# ------------------------------------------------------------------------ fingerprints


def store_files(root: Path) -> list[tuple[str, int, int]]:
    """``(relative name, size, mtime_ns)`` of a store's metadata and chunk files, sorted
    (other files, such as ``.DS_Store``, do not count)."""
    root = Path(root)
    out: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name not in METADATA_FILES and not _CHUNK_NAME.fullmatch(name):
                continue
            p = Path(folder, name)
            st = p.stat()
            out.append((p.relative_to(root).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    return sorted(out)


def store_content_sha256(root: Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 over every metadata and chunk file's name and bytes, in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for rel, _, _ in store_files(root):
        h.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def store_fingerprint(root: Path, *, content: bool = False) -> dict:
    """What a session remembers of a store: ``listing`` (the level-0 array's shape, dtype
    and chunks, the metadata files' text and every chunk's name, size and mtime, hashed),
    ``size`` (bytes), ``mtime_ns`` (the newest file) and ``sha256`` (the content hash of
    :func:`store_content_sha256` with ``content=True``, else None)."""
    root = Path(root)
    files = store_files(root)
    h = hashlib.sha256()
    try:
        arr, name, _ms, _fmt = _resolve(_open_node(str(root), str(root)), str(root))
        h.update(json.dumps({"array": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                             "chunks": list(arr.chunks)}, sort_keys=True).encode())
    except StackError:  # not readable as a stack: the listing alone says whether it changed
        pass
    for rel, size, mtime in files:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
        if Path(rel).name in METADATA_FILES:
            h.update((root / rel).read_bytes())
    return {
        "sha256": store_content_sha256(root) if content else None,
        "listing": h.hexdigest(),
        "size": int(sum(s for _, s, _ in files)),
        "mtime_ns": int(max((m for _, _, m in files), default=0)),
    }


# ----------------------------------------------------------------------------- writing


def partial_path(path: Path) -> Path:
    """Where the store for ``path`` is written until it is complete."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def is_ome_store(path: Path) -> bool:
    """True for a folder holding an OME-Zarr image (a store activeseg or ome-zarr wrote)."""
    if not path.is_dir():
        return False
    for meta in ("zarr.json", ".zattrs"):
        f = path / meta
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except (OSError, ValueError):
                return False
            if meta == "zarr.json":
                attrs = attrs.get("attributes", {}) if isinstance(attrs, dict) else {}
                attrs = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
            if isinstance(attrs, dict) and "multiscales" in attrs:
                return True
    return False


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    y, x = min(DEFAULT_CHUNK_YX, shape[-2]), min(DEFAULT_CHUNK_YX, shape[-1])
    return (1, y, x) if len(shape) == 3 else (1, shape[1], y, x)


def _disk_order(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(Z, C, Y, X) is stored (C, Z, Y, X): NGFF puts the channel axis before space axes."""
    return shape if len(shape) == 3 else (shape[1], shape[0], shape[2], shape[3])


def _level_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    out = [shape]
    for _ in range(PYRAMID_LEVELS):
        prev = out[-1]
        out.append((*prev[:-2], (prev[-2] + 1) // 2, (prev[-1] + 1) // 2))
    return out


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_target(path: Path) -> None:
    """Refuse a ``.zarr`` target that exists and is not an OME-Zarr store (e.g. a folder of
    TIFF slices or a file): only such a store is ever replaced."""
    if (path.exists() or path.is_symlink()) and not is_ome_store(path):
        what = "a file" if path.is_file() else "a folder that is not an OME-Zarr store"
        raise OutputError(
            f"cannot write {path}: it exists and is {what}; activeseg replaces only an OME-Zarr store it "
            "(or ome-zarr) wrote: give another output name or move it away"
        )


def create_store(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, *, chunks: Sequence[int] | None = None
) -> dict:
    """Create ``NAME.zarr.partial`` with an empty level-0 array; returns the worker target.

    ``shape`` is (Z, Y, X) or (Z, C, Y, X); ``chunks`` is in the same order (default one
    slice, up to 512 x 512 pixels, every channel). A partial store left by a killed writer
    is removed first.
    """
    check_target(path)
    part = partial_path(path)
    if part.exists() or part.is_symlink():
        if part.is_dir() and (looks_like_zarr(part) or not any(part.iterdir())):
            logger.info("removing %s, left by an interrupted write", part)
            _remove_tree(part)
        else:
            raise OutputError(
                f"cannot write {path}: {part} exists and is not a store activeseg left; move it away"
            )
    ch = _default_chunks(shape) if chunks is None else tuple(int(c) for c in chunks)
    if len(ch) != len(shape) or any(c < 1 for c in ch):
        raise ConfigError(f"chunks must be {len(shape)} positive integers (one per axis of {shape_text(shape)}), got {chunks!r}")
    ch = tuple(min(c, s) for c, s in zip(ch, shape))
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(part), mode="w", zarr_format=3)
        root.create_array(
            "0", shape=_disk_order(shape), dtype=dtype, chunks=_disk_order(ch), fill_value=0,
            dimension_names=["z", "y", "x"] if len(shape) == 3 else ["c", "z", "y", "x"],
        )
    except OSError as exc:
        _remove_tree(part)
        raise OutputError(safety.os_error_message(exc, part)) from exc
    return {"store": os.path.abspath(part), "array": "0", "shape": list(shape)}  # absolute: workers run elsewhere


class ZCYXView:
    """A (Z, C, Y, X) view of a (C, Z, Y, X) zarr array, for writing slices in activeseg's
    order: ``view[z] = (C, Y, X)``, ``view[z0:z1] = (n, C, Y, X)``."""

    def __init__(self, arr: Any) -> None:
        self._arr = arr
        c, z, y, x = (int(s) for s in arr.shape)
        self.shape = (z, c, y, x)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = 4

    def _key(self, key: Any) -> tuple[tuple[Any, ...], bool]:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        kz, kc = key[0], key[1]
        swap = not isinstance(kz, (int, np.integer)) and not isinstance(kc, (int, np.integer))
        return (kc, kz, *key[2:]), swap

    def __setitem__(self, key: Any, value: Any) -> None:
        disk, swap = self._key(key)
        value = np.asarray(value)
        if swap and value.ndim == 4:
            value = value.swapaxes(0, 1)
        self._arr[disk] = value

    def __getitem__(self, key: Any) -> np.ndarray:
        disk, swap = self._key(key)
        out = np.asarray(self._arr[disk])
        return out.swapaxes(0, 1) if swap and out.ndim == 4 else out


def open_output_block(target: dict) -> Any:
    """The writable level-0 array of a partial store (on a Dask worker): ``(Z, Y, X)`` or a
    :class:`ZCYXView` ``(Z, C, Y, X)``; write whole chunks (your own z-range) only."""
    try:
        store, name = str(target["store"]), str(target["array"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"an output target is a dict with 'store' and 'array', got {target!r}") from exc
    if not store.lower().endswith(ZARR_SUFFIX + PARTIAL_SUFFIX) or not Path(store).is_dir():
        raise OutputError(
            f"the output store {store} is not an unfinished store (it was committed, aborted or never created); "
            "write blocks before the output is committed"
        )
    arr = zarr.open_array(store, path=name, mode="r+")
    return ZCYXView(arr) if len(arr.shape) == 4 else arr


def _down(block: np.ndarray, mean: bool) -> np.ndarray:
    """Halve the last two axes: every other pixel (labels) or the 2 x 2 mean (edges repeated)."""
    if not mean:
        return block[..., ::2, ::2]
    y, x = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, y % 2), (0, x % 2)]
    a = np.pad(block, pad, mode="edge") if (y % 2 or x % 2) else block
    a = a.astype(np.float32, copy=False)
    out = (a[..., 0::2, 0::2] + a[..., 1::2, 0::2] + a[..., 0::2, 1::2] + a[..., 1::2, 1::2]) * np.float32(0.25)
    if block.dtype.kind in "ui":
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(block.dtype)
    return out.astype(block.dtype, copy=False)


_LABEL_COLOURS = [(230, 200, 60, 255), (60, 120, 230, 255), (220, 60, 60, 255), (60, 200, 90, 255)]


def finish_store(path: Path, *, voxel_size: tuple[float, float, float] | None, kind: str) -> Path:
    """Write the pyramid and the NGFF metadata of ``NAME.zarr.partial``, then rename it to
    ``NAME.zarr`` (an OME-Zarr store already there is replaced only now)."""
    # ome-zarr imports scikit-image and dask (seconds): only when an output is finished
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    part = partial_path(path)
    root = zarr.open_group(str(part), mode="r+")
    level0 = zarr.open_array(str(part), path="0", mode="r+")
    disk_shape = tuple(int(s) for s in level0.shape)
    multi = len(disk_shape) == 4
    mean = kind != "labels"
    zax = 1 if multi else 0
    shapes = _level_shapes(disk_shape)
    levels: list[Any] = [level0]
    for k, shp in enumerate(shapes[1:], start=1):
        ch = tuple(min(c, s) for c, s in zip(level0.chunks, shp))
        levels.append(root.create_array(str(k), shape=shp, dtype=level0.dtype, chunks=ch, fill_value=0,
                                        dimension_names=["c", "z", "y", "x"] if multi else ["z", "y", "x"]))
    per_slice = int(np.prod(disk_shape, dtype=np.int64)) // disk_shape[zax] * level0.dtype.itemsize
    step = max(int(level0.chunks[zax]), (64 << 20) // max(per_slice, 1) // int(level0.chunks[zax]) * int(level0.chunks[zax]))
    nz = disk_shape[zax]
    for z0 in range(0, nz, step):
        sel: tuple[slice, ...] = (slice(None), slice(z0, z0 + step)) if multi else (slice(z0, z0 + step),)
        block = np.asarray(level0[sel])
        for arr in levels[1:]:
            block = _down(block, mean)
            arr[sel] = block
    vs = voxel_size or (1.0, 1.0, 1.0)
    datasets = []
    for k in range(len(levels)):
        f = float(2 ** k)
        scale = [vs[0], vs[1] * f, vs[2] * f]
        transforms: list[dict] = [{"type": "scale", "scale": ([1.0] if multi else []) + scale}]
        if mean and k:
            shift = [0.0, vs[1] * (f - 1) / 2, vs[2] * (f - 1) / 2]
            transforms.append({"type": "translation", "translation": ([0.0] if multi else []) + shift})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    space = [{"name": a, "type": "space", **({"unit": "nanometer"} if voxel_size is not None else {})} for a in "zyx"]
    axes = ([{"name": "c", "type": "channel"}] if multi else []) + space
    write_multiscales_metadata(root, datasets, axes=axes, name=kind)
    if kind == "labels":
        colours = [{"label-value": i, "rgba": list(c)} for i, c in enumerate(_LABEL_COLOURS)]
        colours.append({"label-value": 255, "rgba": [0, 0, 0, 0]})
        add_metadata(root, {"image-label": {"version": "0.5", "colors": colours}})
    add_metadata(root, {"activeseg": {"kind": kind}})
    _swap_in(part, path)
    return path


def _swap_in(part: Path, path: Path) -> None:
    """Rename the finished ``part`` to ``path``; an OME-Zarr store at ``path`` is moved aside
    first and removed after the rename."""
    check_target(path)
    old: Path | None = None
    try:
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            _remove_tree(old)
            os.replace(path, old)
        os.replace(part, path)
    except OSError as exc:
        if old is not None and not path.exists():
            os.replace(old, path)
        raise OutputError(safety.os_error_message(exc, path)) from exc
    if old is not None:
        _remove_tree(old)
    # a previous output set aside by a writer killed between the two renames: the new one replaces it
    for stale in path.parent.glob(f".{path.name}.old-*"):
        _remove_tree(stale)
    safety.fsync_dir(path.parent)


def remove_partial(path: Path) -> None:
    """Remove the unfinished store of ``path`` (an aborted write)."""
    _remove_tree(partial_path(path))


