"""Correct the queried slices of a session in napari (``activeseg correct SESSION``).

One window replaces the file round trip (open ``zNNNN_image.tif`` and ``zNNNN_mask.tif``
in Fiji, paint, save, ``activeseg import``) without changing what it records:

- an image layer of the slice with its ±N context planes (``[session] export_radius``);
  the slice to correct is the plane shown first, and the text overlay says which plane
  is shown (the slice itself or a neighbour);
- the pre-filled mask as an editable Labels layer over every plane (one mask: the
  slice's). napari treats label 0 as background (its eraser), so the layer shows class
  c as c + 1 and 0 = unlabelled, the scribble convention; saving maps it back;
- the uncertainty and RF-vs-network disagreement maps ``query`` wrote beside the slice
  (``zNNNN_uncertainty.tif``, ``zNNNN_disagreement.tif``), hidden overlays to toggle;
- a dock: which slice of how many, pixels changed, Save / Skip / Previous / Next.

Saving writes the round's ``zNNNN_mask.tif`` exactly as a person's saved mask would be
and imports it with :func:`activeseg.loop.import_corrections` (validation, provenance,
correction cost, commit: the path ``activeseg import`` takes). The session lock is held
around that commit only, never while a person edits; inside it the manifest is read
again, and when another command committed in between the viewer says so and reloads
its state before saving (docs/architecture.md §5).
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
from activeseg.loop.state import last_round, open_image, prefill_masks, session_config
from activeseg.oracle import OVERLAYS, mask_name, overlay_name, read_corrections
from activeseg.session import Session

__all__ = ["CLASS_COLOURS", "KEYS", "CorrectionController", "open_correction", "run_correction", "layer_colormap"]

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

KEYS = {"save": "Control-S", "skip": "K", "next": "N", "previous": "Shift-N"}
"""Key bindings of the correction viewer (napari's own keys for painting stay as they are)."""

Answer = str  # "save", "discard" or "cancel"


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
    """The state of one correction window: the open round, which slice, its layers,
    unsaved edits and the cost so far. Made by :func:`open_correction`.

    Parameters
    ----------
    session : the session (its object is shared: the dock's own steps reuse it).
    viewer : the napari viewer to fill.
    z : the slice to start with (a pending slice of the open round); None: the first.
    ask : ``ask(question) -> "save" | "discard" | "cancel"`` when closing with unsaved
        edits (default: a Qt message box); tests pass a function.
    """

    def __init__(self, session: Session, viewer: napari.Viewer, *, z: int | None = None,
                 ask: Callable[[str], Answer] | None = None) -> None:
        self.session = session
        self.viewer = viewer
        self.ask = ask or _ask_qt
        self.messages: list[str] = []
        self._edits: dict[int, np.ndarray] = {}  # unsaved layer data of slices left for another one
        self._baseline: np.ndarray | None = None  # the layer data the current slice was shown with
        self._released = False
        self._widgets: dict[str, QLabel] = {}
        cfg = session_config(session)
        self.n_classes = int(cfg.n_classes)
        self.radius = int(cfg.export_radius)
        self.voxel_size = cfg.geometry.voxel_size
        self.slices: list[int] = []
        self._read_state()
        if not self.slices:
            raise SessionError(
                f"no slices of session {session.root} wait for correction; next: {next_step(session)}"
            )
        if z is not None and int(z) not in pending_slices(self.round):
            raise LabelError(
                f"slice {z} is not waiting for correction in round {self.round['index']} "
                f"(waiting: {', '.join(map(str, self.slices))}); give one of those with --slice, or leave it out"
            )
        self.index = self.slices.index(int(z)) if z is not None else 0
        self._add_layers()
        self._add_dock()
        self._bind_keys()
        self._guard = _CloseGuard(self)
        qt_window = getattr(viewer.window, "_qt_window", None)  # napari's QMainWindow: no public close hook
        if qt_window is not None:
            qt_window.installEventFilter(self._guard)
        viewer.dims.events.current_step.connect(self._update_text)
        self.show(self.z)

    # -- state of the session ---------------------------------------------------------------
    def _read_state(self) -> None:
        """The open round and its pending slices, from the session's committed manifest."""
        m = self.session.manifest
        rnd = last_round(m)
        if rnd is None or rnd["index"] == 0:
            raise SessionError(
                f"session {self.session.root} has no queried slices to correct; run `activeseg query` first"
            )
        # the slices shown: those waiting, and those done in this viewer while the round stays open
        kept = self.slices if getattr(self, "round", {}).get("index") == rnd["index"] else []
        self.round = rnd
        waiting = pending_slices(rnd)
        self.slices = [int(z) for z in rnd["queried"] if z in waiting or z in kept]
        self.prefill = prefill_masks(self.session, rnd["index"])
        self._seen = _fingerprint(self.session)

    @property
    def z(self) -> int:
        """The slice shown now (global z)."""
        return self.slices[self.index]

    @property
    def folder(self) -> Path:
        """The open round's folder (``rounds/rNNN``), where its masks and overlays are."""
        return self.session.path(f"rounds/r{self.round['index']:03d}")

    def status_of(self, z: int) -> str:
        """``"pending"``, ``"imported"`` or ``"skipped"``: slice ``z`` in the open round."""
        if z in self.round.get("imported", []):
            return "imported"
        return "pending" if z in pending_slices(self.round) else "skipped"

    def pixels_changed(self, z: int | None = None) -> int:
        """Pixels of slice ``z`` (default: the one shown) whose class differs from the pre-fill."""
        z = self.z if z is None else int(z)
        if z == self.z:
            data = np.asarray(self.mask_layer.data)
        elif z in self._edits:
            data = self._edits[z]
        else:
            return int(self.round.get("correction_cost", {}).get(str(z), 0))
        return int(np.count_nonzero(data != self.prefill[z].astype(np.int64) + 1))

    def saved_cost(self) -> int:
        """Pixels corrected in the slices of the open round saved so far (their correction cost)."""
        return int(sum(self.round.get("correction_cost", {}).values()))

    def unsaved(self) -> list[int]:
        """Pending slices whose edits are not saved yet."""
        out = [z for z in self._edits if self.status_of(z) == "pending"]
        if self._baseline is not None and self.z not in out and self.status_of(self.z) == "pending" \
                and not np.array_equal(np.asarray(self.mask_layer.data), self._baseline):
            out.append(self.z)
        return sorted(out)

    @property
    def dirty(self) -> bool:
        """Whether any pending slice has edits that are not saved."""
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

    def _overlay(self, what: str, plane: np.ndarray | None) -> None:
        """Show ``plane`` as the overlay ``what`` (hidden until toggled); None removes it."""
        have = what in self.viewer.layers
        if plane is None:
            if have:
                self.viewer.layers.remove(self.viewer.layers[what])
            return
        if have:
            self.viewer.layers[what].data = plane
            return
        layer = self.viewer.add_image(plane, name=what, colormap="magma" if what == "uncertainty" else "viridis",
                                      contrast_limits=(0.0, 1.0), opacity=0.6, blending="additive", visible=False)
        # below the mask, so the mask stays on top
        self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(self.mask_layer))

    def _context(self, z: int) -> list[int]:
        nz = int(self.session.manifest["stack"]["shape"][0])
        return [min(max(z + d, 0), nz - 1) for d in range(-self.radius, self.radius + 1)]

    def _starting_mask(self, z: int) -> np.ndarray:
        """Layer data (class + 1) of slice ``z``: a mask edited in Fiji since export, else the pre-fill."""
        path = self.folder / mask_name(z)
        exported = self.round.get("exported", {})
        if path.exists() and str(z) in exported and os.stat(path).st_mtime_ns != exported[str(z)]:
            shape = tuple(self.session.manifest["stack"]["shape"])
            try:
                got = read_corrections({z: path}, shape[1:], n_classes=self.n_classes, n_slices=shape[0],
                                       radius=self.radius, prefill=self.prefill)
                return got[z].astype(np.uint8) + 1
            except LabelError as exc:
                self.notify(f"{path.name} was edited but cannot be read ({exc}); showing the pre-filled mask")
        return self.prefill[z].astype(np.uint8) + 1

    def show(self, z: int) -> None:
        """Show slice ``z`` (a slice of :attr:`slices`); edits of the slice left are kept in memory."""
        z = int(z)
        self._keep_edits()
        self.index = self.slices.index(z)
        with open_image(self.session) as image:
            planes = np.asarray(image[self._context(z)], np.float32)
        lo, hi = np.percentile(planes[self.radius], [0.5, 99.5])
        self.image_layer.data = planes
        self.image_layer.contrast_limits = (float(lo), float(max(hi, lo + 1e-6)))
        for what in OVERLAYS:
            p = self.folder / overlay_name(z, what)
            self._overlay(what, np.asarray(tifffile.imread(p), np.float32).reshape(planes.shape[1:]) if p.exists() else None)
        self._baseline = self._starting_mask(z)
        self.mask_layer.data = self._edits.pop(z) if z in self._edits else self._baseline.copy()
        self.mask_layer.editable = self.status_of(z) == "pending"
        self.viewer.dims.axis_labels = ("z", "y", "x")
        self.viewer.dims.set_current_step(0, self.radius)  # the slice itself first
        self.viewer.layers.selection.active = self.mask_layer  # ready to paint
        self.viewer.title = f"activeseg correct: {self.session.root.name}, round {self.round['index']}, z={z}"
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
        z, state = self.z, self.status_of(self.z)
        self._widgets["where"].setText(
            f"round {self.round['index']}: slice {self.index + 1} of {len(self.slices)} (z={z}), {state}"
        )
        self._widgets["cost"].setText(
            f"pixels changed from the pre-fill: {self.pixels_changed()} on this slice; "
            f"{self.saved_cost()} in the slices saved this round"
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
        """The shown mask as class ids (uint8 (Y, X)), or None after saying what is wrong."""
        data = np.asarray(self.mask_layer.data)
        unlabelled = int(np.count_nonzero(data == 0))
        if unlabelled:
            self.notify(f"not saved: {unlabelled} pixels of z={self.z} are unlabelled (erased); a corrected slice "
                        "is complete: paint them solid or pore first")
            return None
        bad = int(np.count_nonzero(data > self.n_classes))
        if bad:
            self.notify(f"not saved: {bad} pixels of z={self.z} hold a label above {self.n_classes} (shown red); "
                        f"labels are 1..{self.n_classes} (class + 1): paint them again")
            return None
        return (data - 1).astype(np.uint8)

    def _check_underneath(self) -> bool:
        """Inside the lock: whether slice :attr:`z` can still be committed. When another
        command committed since the viewer read the session, say so and reload the state
        (edits kept); False when the slice no longer waits for correction."""
        if _fingerprint(self.session) == self._seen:
            return True
        z = self.z
        self._keep_edits()
        self._read_state()
        if self.status_of(z) == "pending":
            self.index = self.slices.index(z)
            self.notify(f"the session changed on disk since the viewer read it (another command committed); "
                        f"reloaded: round {self.round['index']}, waiting {self.slices}")
            return True
        self.notify(f"the session changed on disk since the viewer read it (another command committed): "
                    f"z={z} no longer waits for correction (round {self.round['index']}: "
                    f"{self.status_of(z) if z in self.round.get('queried', []) else 'not queried'}); "
                    "nothing was saved, your edits stay in the viewer")
        if z not in self.slices:
            self.slices.append(z)  # still shown, with its edits; saving it is refused
        self.index = self.slices.index(z)
        self._refresh_dock()
        return False

    def _keep_edits(self) -> None:
        """Keep the shown slice's edits in memory (before showing another slice or reloading)."""
        if self._baseline is not None and not np.array_equal(np.asarray(self.mask_layer.data), self._baseline):
            self._edits[self.z] = np.array(self.mask_layer.data, copy=True)

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
        """Save the shown slice: write ``zNNNN_mask.tif`` and import it (one commit).

        Returns True when it was committed; otherwise the viewer says why and the edits stay.
        """
        z = self.z
        if self.status_of(z) != "pending":
            self.notify(f"z={z} was {self.status_of(z)} already; a slice is imported once (activeseg revert to redo it)")
            return False
        classes = self._layer_classes()
        if classes is None:
            return False

        def write() -> dict:
            io.write_stack(self.folder / mask_name(z), classes[None], voxel_size=self.voxel_size, kind="labels")
            return import_corrections(self.session, slices=[z])

        res = self._commit("save", write)
        if res is None:
            return False
        self._edits.pop(z, None)
        self._baseline = np.asarray(self.mask_layer.data).copy()
        self.notify(f"z={z} saved and imported: {res['cost'].get(z, 0)} pixels corrected")
        self._after_step(advance)
        return True

    def skip(self) -> bool:
        """Skip the shown slice (it is not asked again), as ``activeseg import --skip Z``."""
        z = self.z
        if self.status_of(z) != "pending":
            self.notify(f"z={z} was {self.status_of(z)} already")
            return False
        res = self._commit("skip", lambda: import_corrections(self.session, slices=[], skip=[z]))
        if res is None:
            return False
        self._edits.pop(z, None)
        self.notify(f"z={z} skipped")
        self._after_step(True)
        return True

    def _after_step(self, advance: bool) -> None:
        waiting = [s for s in self.slices if self.status_of(s) == "pending"]
        if not waiting:
            self.notify(f"round {self.round['index']} is done; next: {next_step(self.session)}")
            self.show(self.z)
            return
        if advance:
            after = [s for s in self.slices[self.index + 1:] + self.slices[:self.index] if s in waiting]
            self.show(after[0])
        else:
            self.show(self.z)

    def next(self) -> None:
        """Show the next slice of the round (wrapping round)."""
        self.show(self.slices[(self.index + 1) % len(self.slices)])

    def previous(self) -> None:
        """Show the previous slice of the round (wrapping round)."""
        self.show(self.slices[(self.index - 1) % len(self.slices)])

    def close_requested(self) -> bool:
        """Whether the window may close: with unsaved edits, ask to save, discard or cancel."""
        if self._released:
            return True
        unsaved = self.unsaved()
        if not unsaved:
            return True
        answer = self.ask(f"Unsaved corrections of slice(s) {', '.join(map(str, unsaved))}. Save them before closing?")
        if answer == "cancel":
            return False
        if answer == "save":
            for z in unsaved:
                if z in self.slices:
                    self.show(z)
                if not self.save(advance=False):
                    return False
        self._released = True
        return True


def open_correction(session_path: str | os.PathLike[str] | Session, viewer: napari.Viewer | None = None, *,
                    z: int | None = None, ask: Callable[[str], Answer] | None = None) -> CorrectionController:
    """Open the pending slices of a session's open round in a napari viewer.

    Parameters
    ----------
    session_path : the session folder (or an open :class:`~activeseg.session.Session`).
    viewer : the viewer to fill (default: a new ``napari.Viewer()``).
    z : the slice to start with; None: the first pending one.
    ask : see :class:`CorrectionController`.

    Raises
    ------
    SessionError : nothing waits for correction (no query yet, or the round is done).
    LabelError : ``z`` is not a pending slice of the open round.
    """
    session = session_path if isinstance(session_path, Session) else open_session(Path(session_path))
    viewer = napari.Viewer(title="activeseg correct") if viewer is None else viewer
    return CorrectionController(session, viewer, z=z, ask=ask)


def run_correction(session_path: str | os.PathLike[str] | Session, *, z: int | None = None) -> None:
    """``activeseg correct``: open the viewer and run napari's event loop until it closes."""
    session = session_path if isinstance(session_path, Session) else open_session(Path(session_path))
    viewer = napari.Viewer(title="activeseg correct")
    try:
        controller = CorrectionController(session, viewer, z=z)
    except BaseException:  # nothing to correct, or a slice that does not wait: no window stays open
        viewer.close()
        raise
    napari.run()  # until the window closes (the controller asks first when edits are unsaved)
    log.debug("correction viewer closed (%d slices waited)", len(controller.slices))
