"""Label files people drew or corrected, into the in-memory convention.

The file conventions (:data:`LABEL_KINDS`, docs/architecture.md §3), one slice
(:func:`normalize_labels`), label stacks, single 2D files and folders of per-slice
files whose names carry the slice index (:func:`read_labels`,
:func:`slice_index_from_name`). See the ``Labels`` section of :mod:`activeseg.io`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from activeseg.errors import ConfigError, LabelError, StackError
from activeseg.io.errors import Single2DError, shape_text
from activeseg.io.sources import SLICE_SUFFIXES, natural_sort_key, read_slice_file
from activeseg.io.stack import Stack, open_path

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
    for suffix in (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    found = _Z_INDEX.findall(stem)
    return int(found[-1]) if found else None


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
        0..C-1; a 0/255 binary mask is read as 0/1 with a warning; napari int32 labels
        in range are fine), "partial" (0..C-1 plus 255 = unlabelled), "scribble"
        (ilastik: 0 = unlabelled, class c stored as c + 1).
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
    if path.is_dir():
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
    n_binary = 0
    result: dict[int, np.ndarray] = {}
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
                out, b = _convert_labels(stack[z], n, kind, f"label stack {path.name}, slice z={z}")
                n_binary += b
                if kind == "mask" or (out != 255).any():
                    result[z] = out
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
