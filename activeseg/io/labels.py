"""Label files people drew or corrected, into the in-memory convention.

The file conventions (:data:`LABEL_KINDS`, docs/architecture.md §3), one slice
(:func:`normalize_labels`), label stacks, single 2D files and folders of per-slice
files whose names carry the slice index (:func:`read_labels`, :func:`read_label_planes`,
:func:`slice_index_from_name`), and binary 0/255 masks of either polarity
(:func:`mask_255_values`, :func:`decode_pore_mask`, :func:`pick_pore_value`,
:class:`PoreMaskStack`). See the ``Labels`` section of :mod:`activeseg.io`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from activeseg.errors import ConfigError, LabelError, StackError
from activeseg.io.errors import Single2DError, shape_text
from activeseg.io.sources import SLICE_SUFFIXES, natural_sort_key, read_slice_file
from activeseg.io.stack import Stack, open_path
from activeseg.io.zarr_store import looks_like_zarr

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

LABEL_KINDS = ("mask", "partial", "scribble")
"""Label file conventions understood by :func:`read_labels`."""


_Z_INDEX = re.compile(r"(?<![A-Za-z])[zZ](\d+)")


def slice_index_from_name(name: str | os.PathLike[str]) -> int | None:
    """Global slice index carried by a label file name (``mask_z0120.tif`` -> 120).

    The index is the number after a ``z`` that is not preceded by a letter; when
    several appear, the last one counts. Returns None when the name carries none.
    """
    stem = Path(name).name
    for suffix in (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    found = _Z_INDEX.findall(stem)
    return int(found[-1]) if found else None


_KIND_TEXT = {
    "mask": "complete masks with values 0..{m} (0 = solid, 1 = pore{more}){also255}",
    "partial": "partial labels with values 0..{m} (0 = solid, 1 = pore{more}) and 255 = unlabelled",
    "scribble": "ilastik-style scribbles: 0 = unlabelled, 1..{c} = classes 0..{m} (class c stored as c + 1)",
}
_KIND_FIX = {
    "mask": "save every pixel as its class id 0..{m}{or255} (a mask to correct has no unlabelled pixel); strokes on "
            "a blank image belong in `bootstrap --scribbles` (library: kind='partial' or 'scribble')",
    "partial": "save classes as 0..{m} and unlabelled pixels as 255; if 0 marks unlabelled pixels (ilastik), give the "
               "file as `bootstrap --scribbles` (library: kind='scribble'); check [session] n_classes",
    "scribble": "if 0 is a class (complete masks), give the file as `bootstrap --labels` (library: kind='mask' or "
                "'partial'); check [session] n_classes",
}


PORE_VALUES = (0, 255)
"""The values a binary mask may mark pore with (``pore_value``, ``--pore-value``)."""
_EDGE_VALUES = frozenset({252, 253, 254})
_MASK_255_VALUES = frozenset({0, 255}) | _EDGE_VALUES
_MASK_255_THRESHOLD = 128


def check_pore_value(pore_value: Any) -> int | None:
    """``pore_value`` checked: None, 0 or 255; ConfigError otherwise."""
    if pore_value is None:
        return None
    if isinstance(pore_value, (int, np.integer)) and not isinstance(pore_value, bool) and int(pore_value) in PORE_VALUES:
        return int(pore_value)
    raise ConfigError(
        f"pore_value must be 0 or 255 (the value that marks pore in a binary 0/255 mask; command line "
        f"--pore-value 0 or --pore-value 255), got {pore_value!r}"
    )


def mask_255_values(values: Any) -> list[int] | None:
    """The sorted values when they are those of a binary 0/255 mask, else None.

    A 0/255 mask holds 0 and 255 only, or also the anti-aliased edge values 252..254;
    at least one of 252..255 must be present (a file of zeros is not one).
    """
    vset = {int(v) for v in np.asarray(values).ravel()}
    if vset and vset <= _MASK_255_VALUES and vset - {0}:
        return sorted(vset)
    return None


def describe_255_values(values: Sequence[int]) -> str:
    """``"values 0 and 255 (and 252-254)"`` for the values of a 0/255 mask, in messages."""
    vset = {int(v) for v in values}
    main = [v for v in (0, 255) if v in vset]
    text = ("values " + " and ".join(map(str, main))) if len(main) > 1 else f"value {main[0]}" if main else "values"
    edge = sorted(vset & _EDGE_VALUES)
    if edge:
        text += f" (and {'-'.join(map(str, (edge[0], edge[-1]))) if len(edge) > 1 else edge[0]}, anti-aliased edges)"
    return text


def decode_pore_mask(values: Any, pore_value: int) -> np.ndarray:
    """A binary 0/255 mask as 0 = solid, 1 = pore: values >= 128 are pore when
    ``pore_value`` is 255 and solid when it is 0; values below 128 the other class.
    An array holding only 0 and 1 is a 0/1 mask: with ``pore_value`` 0 its 0 is pore
    (a file whose 1 marks solid), with 255 its 1.

    Parameters
    ----------
    values : integer array of any shape (anti-aliased edges 252..254 split with the rest).
    pore_value : 0 or 255.

    Returns
    -------
    uint8 array of the same shape, 0/1.
    """
    pv = check_pore_value(pore_value)
    arr = np.asarray(values)
    high = arr >= (_MASK_255_THRESHOLD if arr.size and arr.max() >= 2 else 1)
    return (high if pv == 255 else ~high).astype(np.uint8)


def pick_pore_value(values: Any, reference: Any) -> tuple[int, float]:
    """The polarity of a 0/255 mask that agrees more with ``reference`` (0/1).

    Decodes ``values`` both ways (:func:`decode_pore_mask`) and keeps the reading whose
    pixels match ``reference`` more often; a tie reads 255 as pore (Fiji's default).

    Returns
    -------
    (pore_value, agreement) : 0 or 255, and the fraction of pixels (0..1) on which that
    reading equals ``reference``.
    """
    ref = np.asarray(reference)
    as255 = decode_pore_mask(values, 255)
    if as255.shape != ref.shape:
        raise LabelError(f"mask of shape {shape_text(as255.shape)} cannot be compared with {shape_text(ref.shape)}")
    agree = float(np.count_nonzero(as255 == ref)) / max(1, ref.size)
    other = float(np.count_nonzero((1 - as255) == ref)) / max(1, ref.size)
    return (255, agree) if agree >= other else (0, other)


class PoreMaskStack:
    """A lazy label stack read through :func:`decode_pore_mask` (a 0/255 truth file).

    Indexing reads the slices asked for from the wrapped :class:`Stack` and decodes them;
    ``shape``, ``path``, ``len``, ``close`` and the context manager are the stack's.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, stack: Stack, pore_value: int) -> None:
        pv = check_pore_value(pore_value)
        if pv is None:
            raise ConfigError("PoreMaskStack needs pore_value 0 or 255")
        self.stack = stack
        self.pore_value = pv

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.stack.shape

    @property
    def path(self) -> Path:
        return self.stack.path

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, key: Any) -> np.ndarray:
        return decode_pore_mask(self.stack[key], self.pore_value)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return decode_pore_mask(self.stack.read(z0, z1), self.pore_value)

    def __iter__(self) -> Iterator[np.ndarray]:
        for z in range(len(self)):
            yield self[z]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def close(self) -> None:
        self.stack.close()

    @property
    def closed(self) -> bool:
        return self.stack.closed

    def __enter__(self) -> PoreMaskStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PoreMaskStack({self.stack!r}, pore_value={self.pore_value})"


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
    expected = _KIND_TEXT[kind].format(m=m, c=n_classes, more="" if n_classes == 2 else ", ...",
                                       also255="; a binary 0/255 mask is also accepted" if n_classes == 2 else "")
    binary255 = False
    if kind == "scribble":
        allowed = set(range(n_classes + 1))
    elif kind == "partial":
        allowed = set(range(n_classes)) | {255}
    else:
        allowed = set(range(n_classes))
        vset = {int(v) for v in values}
        if n_classes == 2 and 255 in vset and vset <= _MASK_255_VALUES:
            binary255 = True
            allowed = set(_MASK_255_VALUES)
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        given = ", ".join(str(int(v)) for v in values[:12]) + (" ..." if len(values) > 12 else "")
        seen = mask_255_values(values) if n_classes == 2 and kind != "scribble" else None
        hint = (
            f"; it looks like a binary 0/255 mask ({describe_255_values(seen)}): say which value is pore with "
            "pore_value=0 or pore_value=255 (command line --pore-value 0 or --pore-value 255)"
            if seen is not None
            else ""
        )
        raise LabelError(
            f"{where} holds label values {shown} outside the declared classes: expected {expected} "
            f"(n_classes={n_classes}, kind={kind!r}); values present: {given}. Fix: "
            f"{_KIND_FIX[kind].format(m=m, or255=' (or a 0/255 mask)' if n_classes == 2 else '')}{hint}"
        )
    a = arr if arr.dtype == np.uint8 else arr.astype(np.int64)
    if kind == "scribble":
        out = np.where(a == 0, 255, a - 1).astype(np.uint8)
    elif binary255:
        out = decode_pore_mask(a, 255)
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
    kind : "mask" (0..C-1; binary 0/255, anti-aliased 252..254 included, read as 0/1
        with 255 = pore and a warning), "partial"
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
        raise LabelError(f"a label slice must be 2D (Y, X), got shape {shape_text(arr.shape)}")
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
    pore_value: int | None = None,
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
    kind : file convention (docs/architecture.md §3): "mask" (complete masks
        0..C-1; a 0/255 binary mask, anti-aliased edges 252..254 included, is read as
        0/1 with 255 = pore and a warning; napari int32 labels in range are fine),
        "partial" (0..C-1 plus 255 = unlabelled), "scribble" (ilastik: 0 = unlabelled,
        class c stored as c + 1).
    slices : read only these global slice indices (e.g. the queried ones); None = all.
    pore_value : None (values as the convention says) or 0 / 255: the file is a binary
        0/255 mask (:func:`decode_pore_mask`, split at 128) whose value ``pore_value``
        marks pore; every pixel of a decoded slice is labelled. With "partial", a slice
        of one value only (an undrawn slice of a mask stack) holds no labels. Only for
        two classes and "mask"/"partial".

    Returns
    -------
    dict mapping global z to uint8 (Y, X) arrays with 0..C-1 and 255 = unlabelled,
    only for slices holding at least one label (every slice of a "mask" file).

    Raises
    ------
    LabelError : values outside the declared classes (naming values, slice and the
        convention expected), shape mismatch, files without a slice index,
        duplicate indices, ``pore_value`` given for a file that is not a 0/255 mask.
    ConfigError : bad ``n_classes``, ``kind``, ``shape`` or ``pore_value``.
    """
    n = _check_label_args(n_classes, kind)
    pv = check_pore_value(pore_value)
    if pv is not None and (n != 2 or kind == "scribble"):
        raise ConfigError(
            f"pore_value applies to two-class 'mask' or 'partial' labels (a binary 0/255 mask), got "
            f"n_classes={n}, kind={kind!r}; leave pore_value out"
        )
    path = Path(os.path.expanduser(os.fspath(path)))
    n_binary = 0
    n_blank = 0
    raw_values: set[int] = set()  # with pore_value: every value of the file
    result: dict[int, np.ndarray] = {}
    with contextlib.closing(_label_planes(path, shape, slices)) as planes:
        for z, arr, where in planes:
            if pv is not None:
                values = _label_values(arr) if arr.dtype.kind in "biuf" else np.empty(0)
                vset = {int(v) for v in values}
                raw_values |= vset
                if 1 in raw_values and 255 in raw_values and raw_values <= {0, 1, 255}:
                    raise LabelError(
                        f"{path} holds values 0, 1 and 255 (0/1 labels with 255 = unlabelled; seen up to {where}), "
                        "not a binary 0/255 mask; leave pore_value out (command line: drop --pore-value)"
                    )
                if kind == "partial" and len(vset) <= 1:
                    n_blank += 1
                    continue
                arr = decode_pore_mask(arr, pv)
            out, b = _convert_labels(arr, n, kind, where)
            n_binary += b
            if kind == "mask" or (out != 255).any():
                result[z] = out
    if pv is not None and (result or n_blank) and not any(v >= _MASK_255_THRESHOLD for v in raw_values):
        if not (pv == 0 and raw_values <= {0, 1}):  # a 0/1 file whose 0 is pore is read flipped
            raise LabelError(
                f"{path} holds no value of 128 or more, so it is not a binary 0/255 mask; as a 0/1 mask it is read "
                "with 1 = pore: drop --pore-value for that, or give --pore-value 0 if its 0 marks pore"
            )
    if n_blank:
        logger.info("%s: %d slice(s) of one value only were taken as not drawn", path, n_blank)
    if pv is not None and result:
        logger.info("%s: read as a binary 0/255 mask with %d = pore (%d slice(s))", path, pv, len(result))
    if n_binary:
        logger.warning(
            "%s: read %d binary 0/255 mask slice(s) as 0/1 (255 -> pore = 1)", path, n_binary
        )
    return dict(sorted(result.items()))


def read_label_planes(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int] | None = None,
    slices: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """The planes of a label file as stored, ``{global z: (Y, X) array}``, unconverted.

    Reads what :func:`read_labels` reads (a stack, a folder of per-slice files, or one
    2D file named with its slice), with the same shape checks, but keeps the file's own
    values and dtype: for callers that decide the convention from the values (e.g. the
    polarity of a 0/255 mask, :func:`pick_pore_value`).

    Raises
    ------
    LabelError : unreadable file, shape mismatch, files without a slice index,
        duplicate indices.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    with contextlib.closing(_label_planes(path, shape, slices)) as planes:
        return {z: arr for z, arr, _ in sorted(planes, key=lambda t: t[0])}


def _label_planes(
    path: Path, shape: Sequence[int] | None, slices: Sequence[int] | None
) -> Generator[tuple[int, np.ndarray, str], None, None]:
    """``(z, raw 2D plane, where)`` for each wanted plane of a label file, checked
    against ``shape``; a label stack stays open only while planes are taken."""
    grid: tuple[int | None, ...] | None = None  # (Z, Y, X); Z is None when only (Y, X) was given
    if shape is not None:
        try:
            grid = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"shape must be (Z, Y, X) or (Y, X) integers, got {shape!r}") from exc
        if len(grid) == 2:
            grid = (None, *grid)
        elif len(grid) != 3:
            raise ConfigError(f"shape must be (Z, Y, X) or (Y, X), got {grid!r}")
    wanted = None if slices is None else {int(z) for z in slices}
    if not path.exists():
        raise LabelError(f"no such label file or folder: {path}")
    items: list[tuple[int, Callable[[], np.ndarray], str]] = []
    stack: Stack | None = None
    if path.is_dir() and not looks_like_zarr(path):  # a zarr store is a stack, not a folder of label files
        items = _label_folder_items(path, wanted)
        if not items and wanted is None:
            raise LabelError(
                f"label folder {path} holds no label files named with a slice index "
                "(expected e.g. mask_z0120.tif or z0120.png)"
            )
    else:
        try:
            stack = open_path(path, crop=None, voxel_size=None, purpose="labels")
        except Single2DError as exc:
            z = slice_index_from_name(path)
            if z is None:
                raise LabelError(
                    f"{path} is a single 2D label image without a slice index in its name; "
                    "name it with the slice it labels (e.g. mask_z0120.tif) or give a (Z, Y, X) "
                    "label stack"
                ) from exc
            if wanted is None or z in wanted:
                items = [(z, partial(read_slice_file, path, "labels"), f"label file {path.name} (slice z={z})")]
        except StackError as exc:
            raise LabelError(f"cannot read labels from {path}: {exc}") from exc
    try:
        if stack is not None:
            if grid is not None and (stack.shape[1:] != grid[1:] or grid[0] not in (None, stack.shape[0])):
                raise LabelError(
                    f"label stack {path} has shape {shape_text(stack.shape)} but the image is "
                    f"{shape_text(grid)}; labels must cover the same (Z, Y, X) grid as the stack "
                    "they label"
                )
            zs = range(stack.shape[0]) if wanted is None else sorted(wanted)
            for z in zs:
                if not 0 <= z < stack.shape[0]:
                    raise LabelError(f"slice {z} requested but label stack {path} has {stack.shape[0]} slices")
                yield z, stack[z], f"label stack {path.name}, slice z={z}"
        else:
            for z, load, where in items:
                if grid is not None and grid[0] is not None and not 0 <= z < grid[0]:
                    raise LabelError(f"{where}: slice index {z} is outside the stack's 0..{grid[0] - 1}")
                try:
                    arr = load()
                except StackError as exc:
                    raise LabelError(f"{where} could not be read: {exc}") from exc
                if arr.ndim != 2:
                    raise LabelError(f"{where} has shape {shape_text(arr.shape)}, expected one 2D (Y, X) slice")
                if grid is not None and arr.shape != grid[1:]:
                    raise LabelError(
                        f"{where} has shape {shape_text(arr.shape)} but the stack's slices are "
                        f"{shape_text(grid[1:])}; labels must match the (cropped) image slices"
                    )
                yield z, arr, where
    finally:
        if stack is not None:
            stack.close()


def _label_folder_items(path: Path, wanted: set[int] | None) -> list[tuple[int, Callable[[], np.ndarray], str]]:
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=natural_sort_key,
    )
    files = [p for p in files if p.suffix.lower() in SLICE_SUFFIXES]
    seen: dict[int, str] = {}
    items: list[tuple[int, Callable[[], np.ndarray], str]] = []
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
        items.append((z, partial(read_slice_file, f, "labels"), f"label file {f.name} (slice z={z})"))
    return items
