"""The napari reader of activeseg: session folders and the outputs activeseg writes.

napari calls :func:`get_reader` with a path; it returns a function that reads the path
into layer data tuples, or None when the path is not activeseg's, so that napari's own
reader (or another plugin) takes it. What is claimed (docs/architecture.md §3, §5):

- a session folder (it holds ``activeseg.json``): the session's image stack, lazily (a
  dask array over :func:`activeseg.io.open_stack`, one slice per chunk), and the labels
  committed so far as a Labels layer in ilastik's convention (class c shown as c + 1,
  0 = unlabelled; scribbles and whole slices, reverted labels left out), both scaled by
  the session's voxel size in nm;
- a TIFF written by activeseg's writers (``export``, ``predict``, the masks of a round):
  uint8 labels carrying activeseg's lookup table (black 0, white 1, grey 255) open as a
  Labels layer; float32 probabilities (ImageJ display range 0..1, unit nm) as an Image
  layer with the "magma" colour map and contrast 0..1, one layer per class for a
  ``(Z, C, Y, X)`` hyperstack; the ImageJ ``spacing`` and resolution give the scale;
- an OME-Zarr written by activeseg (:mod:`activeseg.io.zarr_store`: NGFF ``multiscales``
  with axes z, y, x, or c, z, y, x for class probabilities, in nanometres, and an
  ``activeseg`` attribute naming the kind): the pyramid levels as napari multiscale data
  with the scale of level 0; labels keep the store's ``image-label`` colours.

Anything else (a TIFF from another program, a text file, a folder that is no session)
gives None. The TIFF and Zarr metadata are sniffed with tifffile and zarr here; the
session's stack is read through :mod:`activeseg.io`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from activeseg.errors import ActiveSegError
from activeseg.loop.state import labels_dict, open_image, session_config
from activeseg.session import Session

log = logging.getLogger("activeseg")

LayerData = tuple[Any, dict[str, Any], str]
"""``(data, layer keyword arguments, layer type)``, what a napari reader returns."""

ReaderFunction = Callable[[Any], list[LayerData]]

MANIFEST = "activeseg.json"

# what activeseg's label lookup table holds (activeseg.io.writers): 0 solid black, 1 pore white,
# 2 the first further phase, 255 unlabelled grey
_LUT_SIGNATURE = {0: (0, 0, 0), 1: (255, 255, 255), 2: (230, 25, 75), 255: (128, 128, 128)}

# class colours of the session's Labels layer (value c + 1 for class c): solid, pore, further phases
_CLASS_COLOURS = ("#f58231", "#42d4f4", "#e6194b", "#3cb44b", "#4363d8", "#911eb4", "#f032e6", "#bfef45")

_NM_UNITS = ("nm", "nanometer", "nanometre")


def get_reader(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> ReaderFunction | None:
    """napari's reader hook: a function reading ``path``, or None when it is not activeseg's.

    Parameters
    ----------
    path : one path (or a list holding one path; several paths are never claimed).

    Returns
    -------
    A function ``path -> [(data, kwargs, layer_type), ...]``, or None.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        return None
    try:
        if p.is_dir() and (p / MANIFEST).is_file():
            return read_session
        if p.suffix.lower() == ".zarr" and p.is_dir():
            return read_output if _zarr_kind(p) is not None else None
        if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
            return read_output if _tiff_kind(p) is not None else None
    except (OSError, ValueError) as exc:  # unreadable: not ours to claim
        log.debug("activeseg reader: %s not claimed (%s)", p, exc)
    return None


# --- session folders ------------------------------------------------------------------------


def _session_scale(session: Session) -> tuple[float, float, float]:
    vs = session_config(session).geometry.voxel_size
    return (1.0, 1.0, 1.0) if vs is None else (float(vs[0]), float(vs[1]), float(vs[2]))


def labels_volume(session: Session, shape: Sequence[int]) -> da.Array:
    """The session's committed labels as a lazy ``(Z, Y, X)`` uint8 volume, class c as c + 1.

    Whole slices and scribbles count (pseudo-labels do not; they are the network's, not a
    person's); labels withdrawn by ``revert`` are left out. 0 = unlabelled. Slices without
    labels are zeros that take no memory until shown.
    """
    nz, ny, nx = (int(s) for s in shape)
    labelled = labels_dict(session, kinds=("full", "partial", "region"))
    blocks = []
    for z in range(nz):
        mask = labelled.get(z)
        if mask is None:
            blocks.append(da.zeros((1, ny, nx), dtype=np.uint8, chunks=(1, ny, nx)))
        else:
            shown = np.where(mask == 255, 0, mask.astype(np.uint16) + 1).astype(np.uint8)
            blocks.append(da.from_array(shown[None], chunks=(1, ny, nx)))
    return da.concatenate(blocks, axis=0)


def class_colours(n_classes: int) -> dict[int | None, str]:
    """A napari Labels colour map (``{value: colour}``) for class c shown as value c + 1."""
    colours: dict[int | None, str] = {None: "transparent", 0: "transparent"}
    for c in range(n_classes):
        colours[c + 1] = _CLASS_COLOURS[c % len(_CLASS_COLOURS)]
    return colours


def read_session(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[LayerData]:
    """The layers of a session folder: its image (lazy) and the labels committed so far.

    Returns
    -------
    ``[(image, kwargs, "image"), (labels, kwargs, "labels")]``; ``scale`` is the session's
    voxel size (z, y, x) in nm (1, 1, 1 when unknown). The session's exports are not opened.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    root = Path(os.fspath(path))  # type: ignore[arg-type]
    session = Session.open(root)
    scale = _session_scale(session)
    stack = open_image(session)
    shape = tuple(int(s) for s in stack.shape)
    image = da.from_array(stack, chunks=(1, shape[1], shape[2]), lock=threading.Lock(), asarray=True)
    name = root.name or str(root)
    meta = {"activeseg_session": str(root.resolve())}
    cfg = session_config(session)
    common = {"scale": scale, "metadata": meta, **_units(cfg.geometry.voxel_size is not None)}
    return [
        (image, {"name": f"{name}: image", **common}, "image"),
        (labels_volume(session, shape),
         {"name": f"{name}: labels", **common, "colormap": class_colours(cfg.n_classes), "opacity": 0.5}, "labels"),
    ]


# --- outputs (TIFF, OME-Zarr) ---------------------------------------------------------------


def _has_activeseg_lut(ij: dict) -> bool:
    luts = ij.get("LUTs")
    if luts is None:
        return False
    lut = np.asarray(luts)  # tifffile reads one channel's table back as (3, 256), several as (C, 3, 256)
    if lut.ndim == 3 and lut.shape[0] == 1:
        lut = lut[0]
    if lut.shape != (3, 256):
        return False
    return all(tuple(int(v) for v in lut[:, i]) == rgb for i, rgb in _LUT_SIGNATURE.items())


def _tiff_kind(path: Path) -> str | None:
    """"labels" or "probabilities" for a TIFF written by activeseg, else None."""
    if path.stat().st_size < 8:
        return None
    with open(path, "rb") as fh:
        if fh.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return None
    with tifffile.TiffFile(path) as tf:
        ij = tf.imagej_metadata
        if not ij or not tf.series:
            return None
        series = tf.series[0]
        axes, dtype = series.axes, np.dtype(series.dtype)
        if dtype == np.uint8 and axes in ("ZYX", "YX") and _has_activeseg_lut(ij):
            return "labels"
        if (dtype == np.float32 and axes in ("ZYX", "ZCYX", "YX") and str(ij.get("unit", "")).lower() in _NM_UNITS
                and ij.get("min") == 0.0 and ij.get("max") == 1.0):
            return "probabilities"
    return None


def _tiff_scale(tf: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """(z, y, x) in nm from the ImageJ ``spacing`` and resolution, or None without a scale in nm."""
    ij = tf.imagej_metadata or {}
    if str(ij.get("unit", "")).lower() not in _NM_UNITS:
        return None
    page = tf.pages.first
    tags = page.tags if isinstance(page, tifffile.TiffPage) else page.keyframe.tags

    def res(name: str) -> float:
        tag = tags.get(name)
        if tag is None:
            return 1.0
        num, den = tag.value
        return float(den) / float(num) if num else 1.0

    return (float(ij.get("spacing", 1.0)), res("YResolution"), res("XResolution"))


def _tiff_data(path: Path) -> Any:
    """The pixels of an activeseg TIFF: a read-only memory map when the file allows it,
    else a lazy dask array over tifffile's Zarr store."""
    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, OSError):
        store = tifffile.imread(path, aszarr=True)
        return da.from_zarr(zarr.open_array(store, mode="r"))


def _ngff_attrs(path: Path) -> dict:
    """The NGFF attributes of a zarr group: under ``ome`` (OME-Zarr 0.5, zarr v3) or at the top (0.4)."""
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _ngff_multiscales(attrs: dict) -> dict | None:
    ms = attrs.get("multiscales")
    return ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else None


def _axis_names(ms: dict) -> list[str]:
    return [str(a.get("name")) if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]


def _zarr_kind(path: Path) -> str | None:
    """"labels" or "probabilities" for an OME-Zarr written by activeseg, else None.

    activeseg's stores (:mod:`activeseg.io.zarr_store`) carry ``{"activeseg": {"kind": ...}}``
    beside the multiscales, axes z, y, x (``c`` first for several classes) in nanometres
    (no unit when the voxel size is unknown)."""
    if not any((path / f).is_file() for f in ("zarr.json", ".zattrs", ".zgroup")):
        return None
    attrs = _ngff_attrs(path)
    ms = _ngff_multiscales(attrs)
    mark = attrs.get("activeseg")
    if ms is None or not isinstance(mark, dict) or not ms.get("datasets"):
        return None
    names = _axis_names(ms)
    if names not in (["z", "y", "x"], ["c", "z", "y", "x"], ["z", "c", "y", "x"]):
        return None
    units = {str(a.get("unit")).lower() for a in ms["axes"] if isinstance(a, dict) and a.get("unit") is not None}
    if not units <= set(_NM_UNITS):
        return None
    kind = mark.get("kind")
    if kind == "labels" and names == ["z", "y", "x"]:
        return "labels"
    if kind == "probabilities":
        return "probabilities"
    return None


def _zarr_levels(path: Path) -> tuple[list[Any], tuple[float, ...], list[str], dict]:
    """The multiscale levels (dask arrays, full resolution first), level 0's scale, the
    axis names and the NGFF attributes of an activeseg OME-Zarr."""
    group = zarr.open_group(str(path), mode="r")
    attrs = _ngff_attrs(path)
    ms = _ngff_multiscales(attrs)
    if ms is None:
        raise ActiveSegError(f"{path} has no OME-Zarr multiscales metadata; open it with napari's own reader")
    levels, scale = [], None
    for ds in ms["datasets"]:
        levels.append(da.from_zarr(group[ds["path"]]))
        if scale is None:
            for t in ds.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = tuple(float(v) for v in t["scale"])
    names = _axis_names(ms)
    return levels, scale or tuple(1.0 for _ in names), names, attrs


def _label_colours(attrs: dict) -> dict[int | None, Any] | None:
    """A napari colour map from the NGFF ``image-label`` colours (0..255 RGBA), or None."""
    colours = (attrs.get("image-label") or {}).get("colors")
    if not isinstance(colours, list) or not colours:
        return None
    out: dict[int | None, Any] = {None: "transparent"}
    for c in colours:
        if isinstance(c, dict) and "label-value" in c and len(c.get("rgba", [])) == 4:
            out[int(c["label-value"])] = tuple(float(v) / 255.0 for v in c["rgba"])
    return out


def _probability_layers(data: Any, scale: tuple[float, ...], name: str, channel_axis: int | None,
                        in_nm: bool) -> list[LayerData]:
    kwargs: dict[str, Any] = {"name": name, "colormap": "magma", "contrast_limits": (0.0, 1.0), **_units(in_nm)}
    if channel_axis is None:
        return [(data, {**kwargs, "scale": scale}, "image")]
    n = (data[0] if isinstance(data, list) else data).shape[channel_axis]
    spatial = tuple(v for i, v in enumerate(scale) if i != channel_axis)
    return [(data, {**kwargs, "scale": spatial, "channel_axis": channel_axis,
                    "name": [f"{name} c{k}" for k in range(n)], "colormap": ["magma"] * n,
                    "contrast_limits": [(0.0, 1.0)] * n}, "image")]


def read_output(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[LayerData]:
    """The layer of an activeseg output (TIFF or OME-Zarr): labels or probabilities, scaled in nm.

    Raises
    ------
    ActiveSegError : the file is not an activeseg output.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(os.fspath(path))  # type: ignore[arg-type]
    name = p.name
    if p.suffix.lower() == ".zarr":
        kind = _zarr_kind(p)
        if kind is None:
            raise ActiveSegError(f"{p} is not an OME-Zarr written by activeseg; open it with napari's own reader")
        levels, scale, names, attrs = _zarr_levels(p)
        in_nm = any(isinstance(a, dict) and a.get("unit") for a in (_ngff_multiscales(attrs) or {}).get("axes", []))
        data: Any = levels if len(levels) > 1 else levels[0]
        if kind == "labels":
            kwargs: dict[str, Any] = {"name": name, "scale": scale, "multiscale": len(levels) > 1, **_units(in_nm)}
            colours = _label_colours(attrs)
            if colours is not None:
                kwargs["colormap"] = colours
            return [(data, kwargs, "labels")]
        return _probability_layers(data, scale, name, names.index("c") if "c" in names else None, in_nm)
    kind = _tiff_kind(p)
    if kind is None:
        raise ActiveSegError(f"{p} is not a TIFF written by activeseg; open it with napari's own reader")
    with tifffile.TiffFile(p) as tf:
        found = _tiff_scale(tf)
        axes = tf.series[0].axes
    scale3 = found or (1.0, 1.0, 1.0)
    arr = _tiff_data(p)
    if arr.ndim == 2:
        arr = arr[None]
    if kind == "labels":
        return [(arr, {"name": name, "scale": scale3, **_units(found is not None)}, "labels")]
    if axes == "ZCYX":
        return _probability_layers(arr, (scale3[0], 1.0, scale3[1], scale3[2]), name, 1, found is not None)
    return _probability_layers(arr, scale3, name, None, found is not None)


def _units(in_nm: bool) -> dict[str, str]:
    """The layer's ``units`` keyword: nanometres when the scale is in nm, else napari's default."""
    return {"units": "nm"} if in_nm else {}


def session_of_layer(layer: Any) -> str | None:
    """The session folder a layer read by :func:`read_session` came from, or None."""
    meta = getattr(layer, "metadata", None) or {}
    value = meta.get("activeseg_session")
    return str(value) if value else None


__all__ = ["get_reader", "read_session", "read_output", "labels_volume", "class_colours", "session_of_layer"]
