"""Correct the queried slices or regions of a session in napari (``activeseg correct SESSION``).

One window replaces the file round trip (open ``zNNNN_image.tif`` and ``zNNNN_mask.tif``
in Fiji, paint, save, ``activeseg import``) without changing what it records. The
viewer goes through the pending *units* of the open round: whole slices, or regions (one
tile of one slice) in a round of regions (``"unit": "tiles"``, docs/architecture.md §5):

- an image layer of the slice with its ±N context planes (``[session] export_radius``);
  the slice to correct is the plane shown first, and the text overlay says which plane
  is shown (the slice itself or a neighbour). For a region the image is cut to the tile
  plus ``[session] export_margin`` pixels of context on each side (clipped to the slice,
  as in ``zNNNN_tTTT_image.tif``), and a yellow frame (a Shapes layer "tile") marks the
  tile;
- the pre-filled mask as an editable Labels layer over every plane (one mask: the
  slice's, or the tile's, placed at the tile's offset inside the cut-out with the
  layer's ``translate``, so the context is seen but only the tile is edited). napari
  treats label 0 as background (its eraser), so the layer shows class c as c + 1 and
  0 = unlabelled, the scribble convention; saving maps it back;
- the uncertainty and RF-vs-network disagreement maps ``query`` wrote beside the slice
  or region (``zNNNN_uncertainty.tif``, ``zNNNN_tTTT_uncertainty.tif``, ...), hidden
  overlays to toggle;
- a dock: which slice or region of how many, pixels changed, Save / Skip / Previous / Next.

Saving writes the round's ``zNNNN_mask.tif`` (``zNNNN_tTTT_mask.tif`` for a region, the
tile only) exactly as a person's saved mask would be and imports it with
:func:`activeseg.loop.import_corrections` (validation, provenance, correction cost,
commit: the path ``activeseg import`` takes). The session lock is held around that
commit only, never while a person edits; inside it the manifest is read again, and when
another command committed in between the viewer says so and reloads its state before
saving (docs/architecture.md §5).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
import tifffile
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QPushButton, QVBoxLayout, QWidget

from activeseg import io
from activeseg.errors import ActiveSegError, LabelError, SessionError
from activeseg.loop import import_corrections, next_step, open_session, pending_slices
from activeseg.loop.state import (
    is_tile_round,
    last_round,
    open_image,
    pending_regions,
    prefill_masks,
    prefill_regions,
    session_config,
    session_grid,
)
from activeseg.oracle import (
    OVERLAYS,
    mask_name,
    overlay_name,
    read_corrections,
    read_region_corrections,
    region_crop,
    region_file,
)
from activeseg.session import Session
from activeseg.tiles import region_name

__all__ = ["CLASS_COLOURS", "KEYS", "CorrectionController", "first_unit", "open_correction", "run_correction",
           "layer_colormap", "unit_label"]

log = logging.getLogger("activeseg")

CLASS_COLOURS = (
    (0.25, 0.55, 1.0),   # class 0, the (first) solid: blue
    (1.0, 0.55, 0.1),    # class 1, pore: orange
    (0.2, 0.85, 0.3),    # class 2, the second solid: green
    (0.85, 0.3, 0.9),    # class 3: magenta
    (1.0, 0.95, 0.2),    # class 4: yellow
    (0.3, 0.9, 0.95),    # class 5: cyan
)
"""RGB of each class id in the Labels layer (layer value = class + 1); further classes cycle."""

FRAME_COLOUR = "yellow"
"""Colour of the frame (the Shapes layer "tile") around the tile of a region."""

KEYS = {"save": "Control-S", "skip": "K", "next": "N", "previous": "Shift-N"}
"""Key bindings of the correction viewer (napari's own keys for painting stay as they are)."""

Answer = str  # "save", "discard" or "cancel"

Unit = int | tuple[int, int]
"""What is corrected at once: a slice ``z`` or a region ``(z, t)`` (tile ``t`` of slice ``z``)."""


def unit_label(unit: Unit) -> str:
    """``"z=12"`` for a slice, ``"z=12, tile 3"`` for a region."""
    return f"z={unit[0]}, tile {unit[1]}" if isinstance(unit, tuple) else f"z={unit}"


def _unit_z(unit: Unit) -> int:
    return int(unit[0]) if isinstance(unit, tuple) else int(unit)


def _regions(rnd: dict, key: str) -> list[tuple[int, int]]:
    return [(int(z), int(t)) for z, t in rnd.get(key, [])]


def layer_colormap(n_classes: int) -> DirectLabelColormap:
    """Colours of the correction Labels layer: 0 (unlabelled) transparent, class c at
    value c + 1 in :data:`CLASS_COLOURS`, any other value bright red (refused on save)."""
    colours: dict[int | None, Any] = {None: (1.0, 0.0, 0.0, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for c in range(n_classes):
        colours[c + 1] = (*CLASS_COLOURS[c % len(CLASS_COLOURS)], 1.0)
    return DirectLabelColormap(color_dict=colours)


def _ask_qt(question: str) -> Answer:
    """Save / Discard / Cancel in a Qt message box."""
    box = QMessageBox()
    box.setWindowTitle("activeseg correct")
    box.setText(question)
    box.setStandardButtons(QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel)
    box.setDefaultButton(QMessageBox.Save)
    got = box.exec_()
    return {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(got, "cancel")


def _fingerprint(session: Session) -> str:
    return json.dumps(session.manifest, sort_keys=True)


def first_unit(session: Session, *, z: int | None = None, t: int | None = None) -> Unit:
    """The slice or region the correction viewer shows first (checked before a window opens).

    Parameters
    ----------
    z, t : as :class:`CorrectionController` takes them; both None: the first unit waiting.

    Raises
    ------
    SessionError : nothing waits for correction (no query yet, or the open round is done).
    LabelError : ``z`` / ``t`` name no slice or region waiting in the open round.
    """
    rnd = last_round(session.manifest)
    if rnd is None or rnd["index"] == 0:
        raise SessionError(f"session {session.root} has no queried slices to correct; run `activeseg query` first")
    idx = rnd["index"]
    if not is_tile_round(rnd):
        slices = pending_slices(rnd)
        if not slices:
            raise SessionError(f"no slices of session {session.root} wait for correction; next: {next_step(session)}")
        if z is None and t is None:
            return int(slices[0])
        if t is not None or z is None:
            raise LabelError(f"round {idx} queried whole slices, not regions; leave out the tile")
        if int(z) not in slices:
            raise LabelError(
                f"slice {z} is not waiting for correction in round {idx} "
                f"(waiting: {', '.join(map(str, slices))}); give one of those with --slice, or leave it out"
            )
        return int(z)
    regions = pending_regions(rnd)
    if not regions:
        raise SessionError(f"no regions of session {session.root} wait for correction; next: {next_step(session)}")
    hits = [u for u in regions if (z is None or u[0] == int(z)) and (t is None or u[1] == int(t))]
    if not hits:
        asked = " and ".join(s for s in (f"slice {z}" if z is not None else "", f"tile {t}" if t is not None else "") if s)
        raise LabelError(
            f"no region of {asked} is waiting for correction in round {idx} (regions waiting: "
            f"{'; '.join(unit_label(u) for u in regions)}); give one of those slices with --slice, or leave it out"
        )
    return hits[0]


class _CloseGuard(QObject):
    """Asks the controller before napari's main window closes (close button, Ctrl-W, quit)."""

    def __init__(self, controller: CorrectionController) -> None:
        super().__init__()
        self._controller = controller

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close and not self._controller.close_requested():
            event.ignore()
            return True
        return False


class CorrectionController:
    """The state of one correction window: the open round, which slice or region, its
    layers, unsaved edits and the cost so far. Made by :func:`open_correction`.

    Parameters
    ----------
    session : the session (its object is shared: the dock's own steps reuse it).
    viewer : the napari viewer to fill.
    z : the slice to start with (a pending slice of the open round; in a round of
        regions, its first pending region); None: the first.
    t : in a round of regions, the tile to start with (with ``z``: that region; alone:
        the first pending region of that tile); None: as ``z`` says.
    ask : ``ask(question) -> "save" | "discard" | "cancel"`` when closing with unsaved
        edits (default: a Qt message box); tests pass a function.
    """

    def __init__(self, session: Session, viewer: napari.Viewer, *, z: int | None = None, t: int | None = None,
                 ask: Callable[[str], Answer] | None = None) -> None:
        self.session = session
        self.viewer = viewer
        self.ask = ask or _ask_qt
        self.messages: list[str] = []
        self._edits: dict[Unit, np.ndarray] = {}  # unsaved layer data of units left for another one
        self._baseline: np.ndarray | None = None  # the layer data the current unit was shown with
        self._released = False
        self._widgets: dict[str, QLabel] = {}
        cfg = session_config(session)
        self.n_classes = int(cfg.n_classes)
        self.radius = int(cfg.export_radius)
        self.margin = int(getattr(cfg, "export_margin", 32))
        self.voxel_size = cfg.geometry.voxel_size
        self.units: list[Unit] = []
        self.prefill: dict[Unit, np.ndarray] = {}
        start = first_unit(session, z=z, t=t)
        self._read_state()
        self.index = self.units.index(start)
        self._add_layers()
        self._add_dock()
        self._bind_keys()
        self._guard = _CloseGuard(self)
        qt_window = getattr(viewer.window, "_qt_window", None)  # napari's QMainWindow: no public close hook
        if qt_window is not None:
            qt_window.installEventFilter(self._guard)
        viewer.dims.events.current_step.connect(self._update_text)
        self.show(self.unit)

    # -- state of the session ---------------------------------------------------------------
    def _read_state(self) -> None:
        """The open round and its pending units, from the session's committed manifest."""
        m = self.session.manifest
        rnd = last_round(m)
        if rnd is None or rnd["index"] == 0:
            raise SessionError(
                f"session {self.session.root} has no queried slices to correct; run `activeseg query` first"
            )
        # the units shown: those waiting, and those done in this viewer while the round stays open
        kept = self.units if getattr(self, "round", {}).get("index") == rnd["index"] else []
        self.round = rnd
        self.grid = session_grid(m)
        order: list[Unit]
        prefill: dict[Unit, np.ndarray]
        if is_tile_round(rnd):
            waiting: set[Unit] = set(pending_regions(rnd))
            order = list(_regions(rnd, "regions"))
            prefill = {u: mk for u, mk in prefill_regions(self.session, rnd["index"]).items()}
        else:
            waiting = set(pending_slices(rnd))
            order = [int(z) for z in rnd["queried"]]
            prefill = {z: mk for z, mk in prefill_masks(self.session, rnd["index"]).items()}
        self.units = [u for u in order if u in waiting or u in kept]
        self.prefill = {**self.prefill, **prefill}  # a unit of an earlier round stays shown with its pre-fill
        self._seen = _fingerprint(self.session)

    @property
    def tiles(self) -> bool:
        """Whether the open round is one of regions (tiles of slices) rather than whole slices."""
        return is_tile_round(self.round)

    @property
    def slices(self) -> list[Unit]:
        """The units of the open round shown: slice ids, or ``(z, t)`` in a round of regions (= :attr:`units`)."""
        return self.units

    @property
    def unit(self) -> Unit:
        """The unit shown now: a slice ``z`` or a region ``(z, t)``."""
        return self.units[self.index]

    @property
    def z(self) -> int:
        """The slice shown now (global z; a region's slice)."""
        return _unit_z(self.unit)

    @property
    def folder(self) -> Path:
        """The open round's folder (``rounds/rNNN``), where its masks and overlays are."""
        return self.session.path(f"rounds/r{self.round['index']:03d}")

    def _in_round(self, unit: Unit) -> bool:
        if isinstance(unit, tuple):
            return unit in _regions(self.round, "regions")
        return unit in self.round.get("queried", [])

    def status_of(self, unit: Unit) -> str:
        """``"pending"``, ``"imported"`` or ``"skipped"``: slice ``z`` or region ``(z, t)`` in the open round."""
        if isinstance(unit, tuple):
            unit = (int(unit[0]), int(unit[1]))
            if unit in _regions(self.round, "imported_regions"):
                return "imported"
            return "pending" if unit in pending_regions(self.round) else "skipped"
        if unit in self.round.get("imported", []):
            return "imported"
        return "pending" if unit in pending_slices(self.round) else "skipped"

    def _recorded_cost(self, unit: Unit) -> int:
        """The pixels changed recorded by the import of ``unit`` (0 when none)."""
        if isinstance(unit, tuple):
            return int(self.round.get("region_cost", {}).get(region_name(*unit), 0))
        return int(self.round.get("correction_cost", {}).get(str(unit), 0))

    def pixels_changed(self, unit: Unit | None = None) -> int:
        """Pixels of slice or region ``unit`` (default: the one shown) whose class differs from the pre-fill."""
        unit = self.unit if unit is None else unit
        if unit == self.unit:
            data = np.asarray(self.mask_layer.data)
        elif unit in self._edits:
            data = self._edits[unit]
        else:
            return self._recorded_cost(unit)
        return int(np.count_nonzero(data != self.prefill[unit].astype(np.int64) + 1))

    def saved_cost(self) -> int:
        """Pixels corrected in the slices and regions of the open round saved so far (their correction cost)."""
        return int(sum(self.round.get("correction_cost", {}).values()) + sum(self.round.get("region_cost", {}).values()))

    def unsaved(self) -> list[Unit]:
        """Pending slices (or regions) whose edits are not saved yet."""
        out = [u for u in self._edits if self.status_of(u) == "pending"]
        if self._baseline is not None and self.unit not in out and self.status_of(self.unit) == "pending" \
                and not np.array_equal(np.asarray(self.mask_layer.data), self._baseline):
            out.append(self.unit)
        return sorted(out, key=lambda u: (_unit_z(u), u[1] if isinstance(u, tuple) else -1))

    @property
    def dirty(self) -> bool:
        """Whether any pending slice or region has edits that are not saved."""
        return bool(self.unsaved())

    # -- layers -------------------------------------------------------------------------------
    def _add_layers(self) -> None:
        shape = tuple(self.session.manifest["stack"]["shape"])[1:]
        self.image_layer = self.viewer.add_image(np.zeros((2 * self.radius + 1, *shape), np.float32), name="image",
                                                 colormap="gray")
        self.mask_layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name="mask", opacity=0.4)
        self.mask_layer.colormap = layer_colormap(self.n_classes)
        self.mask_layer.selected_label = 2  # pore
        self.mask_layer.events.paint.connect(self._refresh_dock)
        self.mask_layer.events.data.connect(self._refresh_dock)

    def _overlay(self, what: str, plane: np.ndarray | None, translate: tuple[int, int] = (0, 0)) -> None:
        """Show ``plane`` as the overlay ``what`` (hidden until toggled) at ``translate``; None removes it."""
        have = what in self.viewer.layers
        if plane is None:
            if have:
                self.viewer.layers.remove(self.viewer.layers[what])
            return
        if have:
            layer = self.viewer.layers[what]
            layer.data = plane
            layer.translate = translate
            return
        layer = self.viewer.add_image(plane, name=what, colormap="magma" if what == "uncertainty" else "viridis",
                                      contrast_limits=(0.0, 1.0), opacity=0.6, blending="additive", visible=False,
                                      translate=translate)
        # below the mask, so the mask stays on top
        self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(self.mask_layer))

    def _frame(self, box: tuple[int, int, int, int] | None) -> None:
        """Frame the tile ``(y0, y1, x0, x1)`` (cut-out coordinates) with the Shapes layer "tile"; None removes it."""
        if "tile" in self.viewer.layers:
            self.viewer.layers.remove(self.viewer.layers["tile"])
        if box is None:
            return
        y0, y1, x0, x1 = box  # pixel i covers [i - 0.5, i + 0.5]: the frame runs along the tile's outer edges
        corners = np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]], np.float64)
        layer = self.viewer.add_shapes([corners], shape_type="rectangle", name="tile", edge_color=FRAME_COLOUR,
                                       face_color="transparent", edge_width=max(0.5, (y1 - y0) / 128))
        layer.editable = False

    def _context(self, z: int) -> list[int]:
        nz = int(self.session.manifest["stack"]["shape"][0])
        return [min(max(z + d, 0), nz - 1) for d in range(-self.radius, self.radius + 1)]

    def _mask_path(self, unit: Unit) -> Path:
        return self.folder / (region_file(*unit, "mask") if isinstance(unit, tuple) else mask_name(unit))

    def _edited_since_export(self, unit: Unit, path: Path) -> bool:
        """Whether ``unit``'s mask file was changed after ``query`` wrote it (an exported time of None:
        a mask a person had started editing, carried over from the round before)."""
        key = region_name(*unit) if isinstance(unit, tuple) else str(unit)
        exported = self.round.get("exported", {})
        return path.exists() and key in exported and os.stat(path).st_mtime_ns != exported[key]

    def _starting_mask(self, unit: Unit) -> np.ndarray:
        """Layer data (class + 1) of ``unit``: a mask edited in Fiji since export, else the pre-fill."""
        path = self._mask_path(unit)
        if self._edited_since_export(unit, path):
            shape = tuple(self.session.manifest["stack"]["shape"])
            try:
                if isinstance(unit, tuple):
                    got: dict = read_region_corrections({unit: path}, self.grid, n_classes=self.n_classes,
                                                        prefill={unit: self.prefill[unit]})
                else:
                    got = read_corrections({unit: path}, shape[1:], n_classes=self.n_classes, n_slices=shape[0],
                                           radius=self.radius, prefill={unit: self.prefill[unit]})
                return got[unit].astype(np.uint8) + 1
            except LabelError as exc:
                self.notify(f"{path.name} was edited but cannot be read ({exc}); showing the pre-filled mask")
        return self.prefill[unit].astype(np.uint8) + 1

    def show(self, unit: Unit) -> None:
        """Show slice or region ``unit`` (one of :attr:`units`); edits of the unit left are kept in memory."""
        unit = (int(unit[0]), int(unit[1])) if isinstance(unit, tuple) else int(unit)
        self._keep_edits()
        self.index = self.units.index(unit)
        z = _unit_z(unit)
        with open_image(self.session) as image:
            planes = np.asarray(image[self._context(z)], np.float32)
        offset, box = (0, 0), None
        if isinstance(unit, tuple):
            (cy0, cy1, cx0, cx1), box = region_crop(self.grid, unit[1], self.margin)
            planes = np.ascontiguousarray(planes[:, cy0:cy1, cx0:cx1])
            offset = (box[0], box[2])
        lo, hi = np.percentile(planes[self.radius], [0.5, 99.5])
        resized = self.image_layer.data.shape != planes.shape
        self.image_layer.data = planes
        self.image_layer.contrast_limits = (float(lo), float(max(hi, lo + 1e-6)))
        self._baseline = self._starting_mask(unit)
        for what in OVERLAYS:
            p = self.folder / (region_file(*unit, what) if isinstance(unit, tuple) else overlay_name(unit, what))
            self._overlay(what, np.asarray(tifffile.imread(p), np.float32).reshape(self._baseline.shape)
                          if p.exists() else None, offset)
        self.mask_layer.data = self._edits.pop(unit) if unit in self._edits else self._baseline.copy()
        self.mask_layer.translate = offset
        self.mask_layer.editable = self.status_of(unit) == "pending"
        self._frame(box)
        self.viewer.dims.axis_labels = ("z", "y", "x")
        self.viewer.dims.set_current_step(0, self.radius)  # the slice itself first
        if resized:
            self.viewer.reset_view()
        self.viewer.layers.selection.active = self.mask_layer  # ready to paint
        self.viewer.title = f"activeseg correct: {self.session.root.name}, round {self.round['index']}, {unit_label(unit)}"
        self._update_text()
        self._refresh_dock()

    @property
    def text_overlay(self):
        """napari's canvas text overlay, which names the plane shown."""
        return self.viewer.canvas.overlays["text"]

    def _update_text(self, event=None) -> None:
        plane = int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim == 3 else self.radius
        shown = self._context(self.z)[min(max(plane, 0), len(self._context(self.z)) - 1)]
        d = plane - self.radius
        overlay = self.text_overlay
        overlay.visible = True
        unit = self.unit
        if isinstance(unit, tuple):
            overlay.text = (
                f"z={self.z}, tile {unit[1]}: the region to correct is inside the {FRAME_COLOUR} frame" if d == 0 else
                f"z={shown}: neighbour {d:+d} of z={self.z} (look only; the mask is z={self.z}'s, tile {unit[1]})"
            )
            return
        overlay.text = (
            f"z={self.z}: the slice to correct" if d == 0 else
            f"z={shown}: neighbour {d:+d} of z={self.z} (look only; the mask is z={self.z}'s)"
        )

    # -- the dock and the keys ------------------------------------------------------------------
    def _add_dock(self) -> None:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        for key in ("where", "cost", "message"):
            label = QLabel("")
            label.setWordWrap(True)
            layout.addWidget(label)
            self._widgets[key] = label
        row = QHBoxLayout()
        for text, fn, key in (("Previous", self.previous, "previous"), ("Next", self.next, "next"),
                              ("Skip", self.skip, "skip"), ("Save", self.save, "save")):
            button = QPushButton(f"{text} ({KEYS[key].replace('Control', 'Ctrl')})")
            button.clicked.connect(lambda _checked=False, fn=fn: fn())
            row.addWidget(button)
        layout.addLayout(row)
        layout.addStretch(1)
        self.dock = panel
        self.viewer.window.add_dock_widget(panel, area="right", name="activeseg correct")

    def _bind_keys(self) -> None:
        for key, fn in ((KEYS["save"], self.save), (KEYS["skip"], self.skip), (KEYS["next"], self.next),
                        (KEYS["previous"], self.previous)):
            self.viewer.bind_key(key, lambda _viewer, fn=fn: fn(), overwrite=True)

    def _refresh_dock(self, event=None) -> None:
        if not self._widgets:
            return
        unit, state = self.unit, self.status_of(self.unit)
        what, where = ("region", f"z={unit[0]}, tile {unit[1]}") if isinstance(unit, tuple) else ("slice", f"z={unit}")
        self._widgets["where"].setText(
            f"round {self.round['index']}: {what} {self.index + 1} of {len(self.units)} ({where}), {state}"
        )
        self._widgets["cost"].setText(
            f"pixels changed from the pre-fill: {self.pixels_changed()} on this {what}; "
            f"{self.saved_cost()} in the {what}s saved this round"
        )

    def notify(self, text: str) -> None:
        """Say ``text`` in the viewer (status bar, notification, dock) and the log."""
        self.messages.append(text)
        log.info("%s", text)
        if self._widgets:
            self._widgets["message"].setText(text)
        self.viewer.status = text
        show_info(text)

    # -- the steps ------------------------------------------------------------------------------
    def _layer_classes(self) -> np.ndarray | None:
        """The shown mask as class ids (uint8, the slice's or the tile's shape), or None after saying what is wrong."""
        data = np.asarray(self.mask_layer.data)
        what = "region" if isinstance(self.unit, tuple) else "slice"
        unlabelled = int(np.count_nonzero(data == 0))
        if unlabelled:
            self.notify(f"not saved: {unlabelled} pixels of {unit_label(self.unit)} are unlabelled (erased); a corrected "
                        f"{what} is complete: paint them solid or pore first")
            return None
        bad = int(np.count_nonzero(data > self.n_classes))
        if bad:
            self.notify(f"not saved: {bad} pixels of {unit_label(self.unit)} hold a label above {self.n_classes} "
                        f"(shown red); labels are 1..{self.n_classes} (class + 1): paint them again")
            return None
        return (data - 1).astype(np.uint8)

    def _check_underneath(self) -> bool:
        """Inside the lock: whether the unit shown can still be committed. When another
        command committed since the viewer read the session, say so and reload the state
        (edits kept); False when the unit no longer waits for correction."""
        if _fingerprint(self.session) == self._seen:
            return True
        unit = self.unit
        self._keep_edits()
        self._read_state()
        waiting = "; ".join(unit_label(u) for u in self.units)
        if self.status_of(unit) == "pending":
            self.index = self.units.index(unit)
            self.notify(f"the session changed on disk since the viewer read it (another command committed); "
                        f"reloaded: round {self.round['index']}, waiting {waiting}")
            return True
        self.notify(f"the session changed on disk since the viewer read it (another command committed): "
                    f"{unit_label(unit)} no longer waits for correction (round {self.round['index']}: "
                    f"{self.status_of(unit) if self._in_round(unit) else 'not queried'}); "
                    "nothing was saved, your edits stay in the viewer")
        if unit not in self.units:
            self.units.append(unit)  # still shown, with its edits; saving it is refused
        self.index = self.units.index(unit)
        self._refresh_dock()
        return False

    def _keep_edits(self) -> None:
        """Keep the shown unit's edits in memory (before showing another one or reloading)."""
        if self._baseline is not None and not np.array_equal(np.asarray(self.mask_layer.data), self._baseline):
            self._edits[self.unit] = np.array(self.mask_layer.data, copy=True)

    def _commit(self, what: str, write: Callable[[], dict]) -> dict | None:
        """Run ``write`` under the session lock after the check for changes underneath;
        None (after saying why) when nothing was committed."""
        try:
            with self.session.writing(f"correct ({what})"):
                if not self._check_underneath():
                    return None
                res = write()
                self._read_state()
        except ActiveSegError as exc:
            self.notify(f"not saved: {exc}")
            self._refresh_dock()
            return None
        return res

    def save(self, *, advance: bool = True) -> bool:
        """Save the shown slice or region: write its mask file (``zNNNN_mask.tif``, or the
        tile's ``zNNNN_tTTT_mask.tif``) and import it (one commit).

        Returns True when it was committed; otherwise the viewer says why and the edits stay.
        """
        unit = self.unit
        if self.status_of(unit) != "pending":
            self.notify(f"{unit_label(unit)} was {self.status_of(unit)} already; a "
                        f"{'region' if isinstance(unit, tuple) else 'slice'} is imported once "
                        "(activeseg revert to redo it)")
            return False
        classes = self._layer_classes()
        if classes is None:
            return False
        def write() -> dict:
            # the path is taken here, under the lock and after the check for changes: a query
            # made meanwhile may have carried this unit into a new round's folder
            io.write_stack(self._mask_path(unit), classes[None], voxel_size=self.voxel_size, kind="labels")
            if isinstance(unit, tuple):
                return import_corrections(self.session, regions=[unit])
            return import_corrections(self.session, slices=[unit])

        res = self._commit("save", write)
        if res is None:
            return False
        self._edits.pop(unit, None)
        self._baseline = np.asarray(self.mask_layer.data).copy()
        cost = self._recorded_cost(unit) if isinstance(unit, tuple) else res["cost"].get(unit, 0)
        self.notify(f"{unit_label(unit)} saved and imported: {cost} pixels corrected")
        self._after_step(advance)
        return True

    def skip(self) -> bool:
        """Skip the shown slice or region (it is not asked again), as ``activeseg import --skip Z``."""
        unit = self.unit
        if self.status_of(unit) != "pending":
            self.notify(f"{unit_label(unit)} was {self.status_of(unit)} already")
            return False
        if isinstance(unit, tuple):
            res = self._commit("skip", lambda: import_corrections(self.session, regions=[], skip_regions=[unit]))
        else:
            res = self._commit("skip", lambda: import_corrections(self.session, slices=[], skip=[unit]))
        if res is None:
            return False
        self._edits.pop(unit, None)
        self.notify(f"{unit_label(unit)} skipped")
        self._after_step(True)
        return True

    def _after_step(self, advance: bool) -> None:
        waiting = [u for u in self.units if self.status_of(u) == "pending"]
        if not waiting:
            self.notify(f"round {self.round['index']} is done; next: {next_step(self.session)}")
            self.show(self.unit)
            return
        if advance:
            after = [u for u in self.units[self.index + 1:] + self.units[:self.index] if u in waiting]
            self.show(after[0])
        else:
            self.show(self.unit)

    def next(self) -> None:
        """Show the next slice or region of the round (wrapping round)."""
        self.show(self.units[(self.index + 1) % len(self.units)])

    def previous(self) -> None:
        """Show the previous slice or region of the round (wrapping round)."""
        self.show(self.units[(self.index - 1) % len(self.units)])

    def close_requested(self) -> bool:
        """Whether the window may close: with unsaved edits, ask to save, discard or cancel."""
        if self._released:
            return True
        unsaved = self.unsaved()
        if not unsaved:
            return True
        if any(isinstance(u, tuple) for u in unsaved):
            named = f"region(s) {'; '.join(unit_label(u) for u in unsaved)}"
        else:
            named = f"slice(s) {', '.join(map(str, unsaved))}"
        answer = self.ask(f"Unsaved corrections of {named}. Save them before closing?")
        if answer == "cancel":
            return False
        if answer == "save":
            for u in unsaved:
                if u in self.units:
                    self.show(u)
                if not self.save(advance=False):
                    return False
        self._released = True
        return True


def open_correction(session_path: str | os.PathLike[str] | Session, viewer: napari.Viewer | None = None, *,
                    z: int | None = None, t: int | None = None,
                    ask: Callable[[str], Answer] | None = None) -> CorrectionController:
    """Open the pending slices (or regions) of a session's open round in a napari viewer.

    Parameters
    ----------
    session_path : the session folder (or an open :class:`~activeseg.session.Session`).
    viewer : the viewer to fill (default: a new ``napari.Viewer()``).
    z : the slice to start with (in a round of regions: its first pending region); None: the first pending one.
    t : in a round of regions, the tile to start with (see :class:`CorrectionController`).
    ask : see :class:`CorrectionController`.

    Raises
    ------
    SessionError : nothing waits for correction (no query yet, or the round is done).
    LabelError : ``z`` (``t``) names no pending slice or region of the open round.
    """
    session = session_path if isinstance(session_path, Session) else open_session(Path(session_path))
    viewer = napari.Viewer(title="activeseg correct") if viewer is None else viewer
    return CorrectionController(session, viewer, z=z, t=t, ask=ask)


def run_correction(session_path: str | os.PathLike[str] | Session, *, z: int | None = None,
                   t: int | None = None) -> None:
    """``activeseg correct``: open the viewer and run napari's event loop until it closes."""
    session = session_path if isinstance(session_path, Session) else open_session(Path(session_path))
    first_unit(session, z=z, t=t)  # nothing to correct, or a unit that does not wait: refused before a window opens
    viewer = napari.Viewer(title="activeseg correct")
    try:
        controller = CorrectionController(session, viewer, z=z, t=t)
    except BaseException:  # nothing to correct, or a slice that does not wait: no window stays open
        viewer.close()
        raise
    napari.run()  # until the window closes (the controller asks first when edits are unsaved)
    log.debug("correction viewer closed (%d slices or regions waited)", len(controller.units))
