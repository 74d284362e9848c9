"""Oracles: who corrects the queried slices.

- :func:`truth_correction` — simulation: ground truth answers, optionally like a person
  with limited effort (the largest wrong regions are fixed first until an effort budget
  in pixels is spent). The cost is the number of pixels changed from the pre-filled mask.
- :func:`pseudo_labels` — no human: a model's confident predictions stand in for
  corrections (recorded as such), the rest stays unlabelled.
- :func:`export_for_correction` / :func:`read_corrections` — people: for each queried
  slice, a small image stack with neighbouring slices, a pre-filled 0/1 mask to edit in
  Fiji or napari, and a PNG preview; then validated import of the edited masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from activeseg import figures, io
from activeseg.errors import LabelError
from activeseg.safety import atomic_write_text
from activeseg.tiles import TileGrid, parse_region, region_name

__all__ = [
    "Correction",
    "truth_correction",
    "pseudo_labels",
    "export_for_correction",
    "find_mask_files",
    "read_corrections",
    "mask_name",
    "overlay_name",
    "OVERLAYS",
    "slice_from_name",
    "region_file",
    "region_crop",
    "export_regions_for_correction",
    "find_region_files",
    "read_region_corrections",
    "confusion",
]

log = logging.getLogger("activeseg")
UNLABELLED = 255


@dataclass(frozen=True)
class Correction:
    """A corrected slice: the mask (uint8 (Y, X), 0..C-1 or 255 unlabelled) and its cost."""
    z: int
    mask: np.ndarray
    cost: int
    source: str


# --- simulation ---------------------------------------------------------------------------


def truth_correction(z: int, truth_slice, prefill, *, effort: int | None = None, min_region: int = 1) -> Correction:
    """Correct a pre-filled slice with ground truth.

    Parameters
    ----------
    z : global slice index.
    truth_slice : uint8 (Y, X) true labels.
    prefill : uint8 (Y, X) the pre-filled mask shown to the corrector.
    effort : pixel budget of an imperfect corrector, or None for a perfect one. The
        wrong connected regions (8-connected, per wrong value) are fixed largest first;
        a region is fixed whole or not at all, and one that no longer fits the remaining
        budget is left as it is while smaller ones that fit are still fixed, like a person
        working down from the most visible mistakes who has no time for one too large.
    min_region : regions smaller than this are never noticed (imperfect mode only).

    Returns
    -------
    Correction with ``cost`` = pixels changed from ``prefill``.
    """
    truth_slice = np.asarray(truth_slice)
    prefill = np.asarray(prefill)
    if truth_slice.shape != prefill.shape:
        raise LabelError(f"slice {z}: pre-filled mask shape {prefill.shape} differs from truth {truth_slice.shape}")
    wrong = prefill != truth_slice
    if effort is None:
        return Correction(z, truth_slice.astype(np.uint8, copy=True), int(np.count_nonzero(wrong)), "oracle")
    out = prefill.astype(np.uint8, copy=True)
    regions = []
    for value in np.unique(truth_slice[wrong]):
        lab, n = ndimage.label(wrong & (truth_slice == value), structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel())[1:]
        regions += [(int(s), int(value), lab, i + 1) for i, s in enumerate(sizes)]
    regions.sort(key=lambda r: -r[0])
    spent = 0
    for size, value, lab, idx in regions:
        if size < min_region:  # sorted: every region after it is smaller still
            break
        if spent + size > effort:
            continue
        out[lab == idx] = value
        spent += size
    return Correction(z, out, spent, "oracle")


def pseudo_labels(z: int, probs, *, threshold: float = 0.9, source: str = "rf") -> Correction:
    """Confident predictions as labels: class where ``max prob >= threshold``, else 255.

    Parameters
    ----------
    probs : float (C, Y, X) class probabilities of one slice.
    source : provenance recorded with the labels ("rf" for the Random Forest, "pseudo"
        for a network).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise LabelError(f"pseudo_labels needs (C, Y, X) probabilities of one slice, got shape {probs.shape}")
    if not 0.5 <= threshold <= 1.0:
        raise LabelError(f"pseudo-label threshold must be in [0.5, 1], got {threshold}")
    mask = np.argmax(probs, axis=0).astype(np.uint8)
    mask[probs.max(axis=0) < threshold] = UNLABELLED
    return Correction(z, mask, 0, source)


# --- files for people ------------------------------------------------------------------------


def mask_name(z: int) -> str:
    """File name of the editable mask of slice ``z`` (the index is in the name)."""
    return f"z{z:04d}_mask.tif"


OVERLAYS = ("uncertainty", "disagreement")
"""Per-pixel maps written beside a slice to correct (float32 (Y, X) in [0, 1]): the current
model's normalised entropy, and the RF-vs-network total-variation distance when both exist."""


def overlay_name(z: int, what: str) -> str:
    """File name of an overlay of slice ``z`` (``z0120_uncertainty.tif``); ``what`` is one of :data:`OVERLAYS`."""
    return f"z{z:04d}_{what}.tif"


def slice_from_name(name: str) -> int | None:
    """Global slice index carried by a file name such as ``z0120_mask.tif`` (None if absent)."""
    return io.slice_index_from_name(name)


def _context(z: int, n_slices: int, radius: int) -> list[int]:
    return [min(max(z + d, 0), n_slices - 1) for d in range(-radius, radius + 1)]


def further_phases(n_classes: int) -> str:
    """``"2 = the second solid phase"`` or ``"2..4 = the further solid phases"``, for instructions."""
    return "2 = the second solid phase" if n_classes == 3 else f"2..{n_classes - 1} = the further solid phases"


def export_for_correction(
    out_dir: Path,
    image,
    slices,
    prefill: dict,
    *,
    radius: int = 3,
    voxel_size=None,
    preview: bool = True,
    n_classes: int = 2,
    overlays: dict[int, dict[str, np.ndarray]] | None = None,
) -> dict[int, dict[str, Path]]:
    """Write what a person needs to correct each queried slice.

    For slice z: ``z0120_image.tif`` (slices z-radius..z+radius, clamped at the stack
    edges, so the slice to correct is always the middle plane — a ghost can only be told
    from a cut face by looking along z; ``radius = 0``, as a session of independent 2D
    sections uses, writes the slice alone), ``z0120_mask.tif`` (the pre-filled 0/1 mask to
    edit; ImageJ TIFF with a LUT), and ``z0120_preview.png`` (image with the mask outline).
    An ``INSTRUCTIONS.txt`` says what to do.

    Parameters
    ----------
    image : (Z, Y, X) array-like (a lazy stack is fine).
    slices : global z of the queried slices.
    prefill : z -> uint8 (Y, X) pre-filled mask (the current best prediction: the
        most probable class id of every pixel, 0..C-1).
    n_classes : C; with C >= 3 the instructions and the preview name every phase
        (0 = first solid, 1 = pore, 2.. further solid phases).
    overlays : z -> {name: float (Y, X) in [0, 1]}, names from :data:`OVERLAYS`: written
        as ``z0120_uncertainty.tif`` (and ``z0120_disagreement.tif``), one float32 plane
        each, for the correction viewer (``activeseg correct``); import ignores them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = int(image.shape[0])
    written = {}
    for z in slices:
        z = int(z)
        ctx = _context(z, nz, radius)
        stackp = io.write_stack(out_dir / f"z{z:04d}_image.tif", np.asarray(image[ctx]), voxel_size=voxel_size)
        maskp = io.write_stack(out_dir / mask_name(z), np.asarray(prefill[z], np.uint8)[None], voxel_size=voxel_size,
                               kind="labels")
        files = {"image": stackp, "mask": maskp}
        for what, arr in (overlays or {}).get(z, {}).items():
            plane = np.clip(np.nan_to_num(np.asarray(arr, np.float32)), 0.0, 1.0)[None]
            files[what] = io.write_stack(out_dir / overlay_name(z, what), plane, voxel_size=voxel_size,
                                         kind="probabilities")
        if preview:
            files["preview"] = _overlay_png(out_dir / f"z{z:04d}_preview.png", np.asarray(image[z]), prefill[z], z,
                                            n_classes=n_classes)
        written[z] = files
    if radius > 0:
        image_note = (
            "  zNNNN_image.tif  the slice to correct is the MIDDLE plane of this small stack;\n"
            f"                   the other planes are its neighbours (+-{radius} slices) - a ghost\n"
            "                   (back wall seen through a pore) drifts between planes, a cut face stays put\n"
        )
    else:  # independent 2D sections (or no context asked for): the slice alone
        image_note = "  zNNNN_image.tif  the slice to correct (one plane)\n"
    atomic_write_text(
        out_dir / "INSTRUCTIONS.txt",
        "Correct the pre-filled masks, one per queried slice:\n\n"
        + (
            "  zNNNN_mask.tif   edit this: 0 = solid, 1 = pore (a 0/255 mask is fine too, either way round)\n"
            if n_classes == 2 else
            f"  zNNNN_mask.tif   edit this: 0 = first solid, 1 = pore, {further_phases(n_classes)}\n"
        )
        + image_note +
        "  zNNNN_preview.png a quick look: the image with the current mask outline\n"
        + ("  zNNNN_uncertainty.tif where the current model is unsure (0..1; zNNNN_disagreement.tif:\n"
           "                   where the Random Forest and the network disagree), a hint where to look\n"
           if overlays else "")
        + "\nOpen both TIFFs in Fiji or napari, fix the mask, save it under the same name,\n"
        "then run `activeseg import SESSION`. Import a few now and the rest later if you like;\n"
        "skip a slice with `activeseg import SESSION --skip NNNN`.\n",
    )
    return written


def _overlay_png(path: Path, image_slice, mask, z: int, *, n_classes: int = 2) -> Path:
    plt = figures.pyplot()
    mask = np.asarray(mask)
    lo, hi = np.percentile(image_slice, [0.5, 99.5])
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(image_slice, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
    axes[0].set_title(f"slice z={z}", fontsize=9)
    axes[1].imshow(image_slice, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
    axes[1].contour(mask == 1, levels=[0.5], colors=["tab:orange"], linewidths=0.6)
    if n_classes == 2:
        axes[1].set_title("pre-filled mask outline (inside = pore)", fontsize=9)
    else:  # every further solid phase outlined as well
        colours = ["tab:cyan", "tab:green", "tab:purple", "tab:red"]
        for k in range(2, n_classes):
            if np.any(mask == k):
                axes[1].contour(mask == k, levels=[0.5], colors=[colours[(k - 2) % len(colours)]], linewidths=0.6)
        axes[1].set_title("pre-filled outlines: orange = pore, cyan = phase 2"
                          + (", ..." if n_classes > 3 else ""), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    try:
        return figures.savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


def find_mask_files(directory: Path) -> dict[int, Path]:
    """Mask files in ``directory`` by the slice index in their names (``z0120`` ...).

    The files of regions (``z0120_t017_mask.tif``, :func:`find_region_files`) are not slices' masks and are left out.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LabelError(f"{directory} is not a directory of corrected masks")
    found: dict[int, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() not in (".tif", ".tiff", ".png") or any(f"_{w}" in p.stem for w in ("image", "preview", *OVERLAYS)):
            continue
        z = slice_from_name(p.name)
        if z is None or parse_region(p.name) is not None:  # a region's mask (find_region_files), not a slice's
            continue
        if z in found:
            raise LabelError(
                f"two mask files for slice {z} in {directory}: {found[z].name} and {p.name}; keep one"
            )
        found[z] = p
    return found


# --- regions: one tile of one slice -------------------------------------------------------------


def region_file(z: int, t: int, what: str = "mask") -> str:
    """File name of a region's file: ``z0120_t017_mask.tif`` (``what``: mask, image,
    uncertainty, disagreement; ``preview`` gives the ``.png``)."""
    return f"{region_name(z, t)}_{what}.{'png' if what == 'preview' else 'tif'}"


def region_crop(grid: TileGrid, t: int, margin: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where a region's image is cut from its slice, and where its tile lies inside that image.

    Returns
    -------
    ``((cy0, cy1, cx0, cx1), (ty0, ty1, tx0, tx1))``: the image's in-plane window (the
    tile plus ``margin`` pixels on each side, clipped to the slice) in slice coordinates,
    and the tile's rows and columns in the image's coordinates (half-open).
    """
    y0, y1, x0, x1 = grid.bounds(t)
    margin = max(0, int(margin))
    cy0, cy1 = max(0, y0 - margin), min(grid.ny, y1 + margin)
    cx0, cx1 = max(0, x0 - margin), min(grid.nx, x1 + margin)
    return (cy0, cy1, cx0, cx1), (y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0)


def export_regions_for_correction(
    out_dir: Path,
    image,
    regions,
    prefill: dict,
    grid: TileGrid,
    *,
    radius: int = 3,
    margin: int = 32,
    voxel_size=None,
    preview: bool = True,
    n_classes: int = 2,
    overlays: dict | None = None,
) -> dict[tuple[int, int], dict[str, Path]]:
    """Write what a person needs to correct each queried region (one tile of one slice).

    For region ``(z, t)``: ``zNNNN_tTTT_image.tif`` (planes z-radius..z+radius, clamped at
    the stack's edges, cut to the tile plus ``margin`` pixels of context on each side,
    clipped to the slice: :func:`region_crop`), ``zNNNN_tTTT_mask.tif`` (the tile's
    pre-filled class ids, tile-sized: it never holds "unlabelled"), the overlays
    ``zNNNN_tTTT_uncertainty.tif`` / ``_disagreement.tif`` cropped to the tile, and
    ``zNNNN_tTTT_preview.png``. ``INSTRUCTIONS.txt`` says where each tile lies inside its
    image.

    Parameters
    ----------
    image : (Z, Y, X) array-like (a lazy stack is fine).
    regions : ``(z, t)`` pairs.
    prefill : ``(z, t) -> uint8 (h, w)`` the tile's pre-filled mask (0..C-1).
    grid : the session's tile grid.
    overlays : ``(z, t) -> {name: float (h, w) in [0, 1]}``, names from :data:`OVERLAYS`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = int(image.shape[0])
    written: dict[tuple[int, int], dict[str, Path]] = {}
    where = []
    for z, t in regions:
        z, t = int(z), int(t)
        (cy0, cy1, cx0, cx1), (ty0, ty1, tx0, tx1) = region_crop(grid, t, margin)
        planes = np.stack([np.asarray(image[c])[cy0:cy1, cx0:cx1] for c in _context(z, nz, radius)])
        tile_mask = np.asarray(prefill[(z, t)], np.uint8)
        files = {
            "image": io.write_stack(out_dir / region_file(z, t, "image"), planes, voxel_size=voxel_size),
            "mask": io.write_stack(out_dir / region_file(z, t, "mask"), tile_mask[None], voxel_size=voxel_size, kind="labels"),
        }
        for what, arr in (overlays or {}).get((z, t), {}).items():
            plane = np.clip(np.nan_to_num(np.asarray(arr, np.float32)), 0.0, 1.0)[None]
            files[what] = io.write_stack(out_dir / region_file(z, t, what), plane, voxel_size=voxel_size,
                                         kind="probabilities")
        if preview:
            files["preview"] = _region_png(out_dir / region_file(z, t, "preview"), planes[len(planes) // 2], tile_mask,
                                           (ty0, ty1, tx0, tx1), z, t, n_classes=n_classes)
        written[(z, t)] = files
        y0, y1, x0, x1 = grid.bounds(t)
        where.append(f"  {region_name(z, t)}: slice {z}, rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}; in its image "
                     f"rows {ty0}..{ty1 - 1}, columns {tx0}..{tx1 - 1}\n")
    classes = ("0 = solid, 1 = pore (a 0/255 mask is fine too, either way round)" if n_classes == 2
               else f"0 = first solid, 1 = pore, {further_phases(n_classes)}")
    atomic_write_text(
        out_dir / "INSTRUCTIONS.txt",
        "Correct the pre-filled masks, one per queried region (a tile of one slice):\n\n"
        f"  zNNNN_tTTT_mask.tif   edit this: {classes}; it covers the tile only\n"
        f"  zNNNN_tTTT_image.tif  the tile with {margin} pixels of context around it"
        + (f", planes +-{radius} slices (the slice to correct is the MIDDLE plane)" if radius > 0 else "")
        + "\n  zNNNN_tTTT_preview.png a quick look: the image with the tile's frame and the current mask outline\n"
        + ("  zNNNN_tTTT_uncertainty.tif where the current model is unsure in the tile (0..1)\n" if overlays else "")
        + "\nWhere each tile lies (its slice, and inside its image):\n" + "".join(where)
        + "\nFix the mask (every pixel: a corrected tile is complete), save it under the same name (same size),\n"
        "then run `activeseg import SESSION`. Import a few now and the rest later if you like;\n"
        "skip a region with `activeseg import SESSION --skip-regions zNNNN_tTTT`.\n",
    )
    return written


def _region_png(path: Path, plane, tile_mask, inside: tuple[int, int, int, int], z: int, t: int, *,
                n_classes: int = 2) -> Path:
    plt = figures.pyplot()
    ty0, ty1, tx0, tx1 = inside
    full = np.full(np.shape(plane), -1, np.int16)
    full[ty0:ty1, tx0:tx1] = tile_mask
    lo, hi = np.percentile(plane, [0.5, 99.5])
    fig, ax = plt.subplots(1, 1, figsize=(4.2, 4.2))
    ax.imshow(plane, cmap="gray", vmin=lo, vmax=max(hi, lo + 1))
    ax.contour(full == 1, levels=[0.5], colors=["tab:orange"], linewidths=0.6)
    for k in range(2, n_classes):
        if np.any(full == k):
            ax.contour(full == k, levels=[0.5], colors=["tab:cyan"], linewidths=0.6)
    ax.plot([tx0 - 0.5, tx1 - 0.5, tx1 - 0.5, tx0 - 0.5, tx0 - 0.5], [ty0 - 0.5, ty0 - 0.5, ty1 - 0.5, ty1 - 0.5, ty0 - 0.5],
            color="yellow", linewidth=0.8)
    ax.set_title(f"{region_name(z, t)}: tile (yellow) with the pre-filled outline", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    try:
        return figures.savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


def find_region_files(directory: Path) -> dict[tuple[int, int], Path]:
    """Regions' mask files in ``directory`` by ``(z, t)`` from their names (``z0120_t017_mask.tif``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LabelError(f"{directory} is not a directory of corrected masks")
    found: dict[tuple[int, int], Path] = {}
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() not in (".tif", ".tiff", ".png") or any(f"_{w}" in p.stem for w in ("image", "preview", *OVERLAYS)):
            continue
        zt = parse_region(p.name)
        if zt is None:
            continue
        if zt in found:
            raise LabelError(
                f"two mask files for region {region_name(*zt)} in {directory}: {found[zt].name} and {p.name}; keep one"
            )
        found[zt] = p
    return found


def read_region_corrections(files: dict[tuple[int, int], Path], grid: TileGrid, *, n_classes: int = 2,
                            prefill: dict[tuple[int, int], np.ndarray] | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Read and validate edited region masks ``{(z, t): file}`` -> ``{(z, t): uint8 (h, w)}``.

    A region's mask is one plane of exactly its tile's size (the exported
    ``zNNNN_tTTT_mask.tif``), complete: class ids 0..C-1, or a 0/255 mask read in the
    polarity that agrees more with the tile's pre-fill (as for slices,
    :func:`read_corrections`). A pixel left 255 in a 0/1 mask, a wrong size or more
    planes is refused with :class:`LabelError` naming the file and region; nothing is
    returned unless all files are valid.
    """
    out = {}
    for (z, t), path in sorted(files.items()):
        name, what = Path(path).name, f"region {region_name(z, t)}"
        y0, y1, x0, x1 = grid.bounds(t)
        try:
            found = io.read_label_planes(path)
        except (OSError, ValueError) as exc:
            raise LabelError(f"{what}: corrected mask {name}: {exc}") from None
        if len(found) != 1:
            raise LabelError(f"{what}: {name} holds {len(found)} planes; save only the corrected tile (one plane)")
        raw = next(iter(found.values()))
        if raw.shape != (y1 - y0, x1 - x0):
            raise LabelError(
                f"{what}: {name} is {raw.shape[0]} x {raw.shape[1]} pixels, but the tile is {y1 - y0} x {x1 - x0} "
                "(the exported zNNNN_tTTT_mask.tif, not the larger image with its context); save the corrected tile "
                "at its own size"
            )
        out[(int(z), int(t))] = _complete_mask(raw, z=int(z), what=what, name=name, n_classes=n_classes,
                                               prefill=None if prefill is None else prefill.get((z, t)), unit="region")
    return out


def confusion(corrected, prefill, n_classes: int) -> np.ndarray:
    """int64 (C, C) counts: rows = corrected (true) class, columns = pre-filled class."""
    a = np.asarray(corrected, np.int64).ravel()
    b = np.asarray(prefill, np.int64).ravel()
    return np.bincount(a * n_classes + b, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def read_corrections(files: dict[int, Path], shape: tuple[int, int], *, n_classes: int = 2,
                     n_slices: int | None = None, radius: int | None = None,
                     prefill: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Read and validate edited masks ``{z: file}``.

    Accepts 0..C-1 masks, a binary 0/255 mask (anti-aliased edges 252..254 included,
    split at 128), and napari's int32 labels when in range (see
    :func:`activeseg.io.read_labels`). A 0/255 mask does not say which value is pore: it
    is decoded both ways and the reading that agrees more with the slice's pre-filled
    mask ``prefill[z]`` is kept (:func:`activeseg.io.pick_pore_value`), which is logged
    with the agreement; without a pre-fill 255 is pore. A file of one plane is that
    slice's mask; a file of ``2 * radius + 1`` planes (a labels layer painted on the
    exported ``zNNNN_image.tif`` context stack) gives its middle plane, the slice that
    was queried; a file of ``n_slices`` planes (a labels layer over the whole stack)
    gives plane ``z``. Any other number of planes is refused. Every problem raises
    :class:`LabelError` naming the file and slice; nothing is returned unless all files
    are valid.
    """
    out = {}
    for z, path in sorted(files.items()):
        name = Path(path).name
        try:
            found = io.read_label_planes(path, shape=tuple(shape))
        except (OSError, ValueError) as exc:  # LabelError and StackError are ValueErrors; add the slice
            raise LabelError(f"slice {z}: corrected mask {name}: {exc}") from None
        planes = sorted(found)
        stacked = planes == list(range(len(planes)))
        if len(planes) == 1:
            raw = found[planes[0]]
        elif stacked and radius is not None and len(planes) == 2 * radius + 1:
            raw = found[planes[radius]]
            log.info("slice %d: %s has %d planes (the exported context); took the middle one", z, name, len(planes))
        elif stacked and n_slices is not None and len(planes) == n_slices:
            raw = found[z]
            log.info("slice %d: %s covers the whole stack; took its plane %d", z, name, z)
        else:
            raise LabelError(
                f"slice {z}: {name} holds {len(planes)} planes; save only the corrected mask of slice {z} "
                "(one plane, the zNNNN_mask.tif that was exported)"
            )
        out[z] = _complete_mask(raw, z=z, what=f"slice {z}", name=name, n_classes=n_classes,
                                prefill=None if prefill is None else prefill.get(z))
    return out


def _complete_mask(raw: np.ndarray, *, z: int, what: str, name: str, n_classes: int,
                   prefill: np.ndarray | None, unit: str = "slice") -> np.ndarray:
    """One corrected plane as class ids 0..C-1 (a 0/255 mask in the polarity agreeing with
    ``prefill``); refused when it leaves a pixel unlabelled. ``what``: "slice 12" or
    "region z0012_t003", for messages."""
    seen = io.mask_255_values(_values(raw)) if n_classes == 2 and raw.dtype.kind in "iu" else None
    if seen is not None and 255 in seen:
        return _decode_correction(z, raw, seen, prefill)
    try:
        mask = io.normalize_labels(raw, n_classes=n_classes, kind="mask")
    except LabelError as exc:
        if n_classes == 2 and _is_01_with_255(raw):
            raise LabelError(
                f"{what}: corrected mask {name} mixes pore = 1 with 255 (Fiji's default foreground "
                "colour); paint pore with value 1, or save a pure 0/255 mask (255 or 0 = pore everywhere)"
            ) from None
        raise LabelError(f"{what}: corrected mask {name}: {exc}") from None
    if np.any(mask == UNLABELLED):
        raise LabelError(
            f"{what}: corrected mask {name} leaves pixels unlabelled (255); a corrected {unit} "
            "must be complete (0 = solid, 1 = pore everywhere)"
        )
    return mask


def _values(arr: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if arr.dtype == np.uint8 else np.unique(arr)


def _decode_correction(z: int, raw: np.ndarray, seen: list[int], prefill: np.ndarray | None) -> np.ndarray:
    """A 0/255 correction as 0/1, in the polarity that agrees more with the pre-fill."""
    what = io.describe_255_values(seen)
    if prefill is None or np.shape(prefill) != raw.shape:
        log.info("z%04d: 0/255 mask (%s), 255 read as pore (no pre-filled mask to compare with)", z, what)
        return io.decode_pore_mask(raw, 255)
    pore_value, agree = io.pick_pore_value(raw, prefill)
    log_at = log.info if agree >= 0.75 else log.warning
    log_at(
        "z%04d: 0/255 mask, %d read as pore (agrees %.0f %% with the pre-fill)%s", z, pore_value, 100 * agree,
        "" if agree >= 0.75 else "; neither reading agrees well: check that the mask is of this slice",
    )
    return io.decode_pore_mask(raw, pore_value)


def _is_01_with_255(raw: np.ndarray) -> bool:
    """True when a plane holds 0/1 mask values with some 255 pixels (pore painted as 255)."""
    vals = {int(v) for v in _values(raw)} if raw.dtype.kind in "iu" else set()
    return 1 in vals and 255 in vals and vals <= {0, 1, 255}
