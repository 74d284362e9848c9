"""The activeseg session dock widget for napari.

A session is opened once (:func:`activeseg.loop.open_session`, inputs checked against
their fingerprints) and the one :class:`~activeseg.session.Session` object is kept and
reloaded after every step. The widget shows what ``activeseg status`` shows, from the
same library function (:func:`activeseg.loop.status`): the rounds (index, strategy,
slices, status, correction cost per slice), the current model and the gate's last
decision, and the uncertainty along z with the labelled slices marked (a click on the
plot moves the viewer to that slice). Query, Train and Export run the library's steps in
a worker thread (each step holds the session lock for its duration, ``Session.writing``)
and report their ``progress(stage, done, total)`` calls to a progress bar through a Qt
signal, so the viewer stays responsive; a library error (:class:`ActiveSegError`) is
shown as a napari notification with the library's message, never raised. "Correct
pending slices" hands the same session object to :mod:`activeseg.napari.correct` (its
correction window, in this viewer); "Refresh" re-reads the session after an import there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from activeseg import loop, registry
from activeseg.errors import ActiveSegError
from activeseg.loop.state import session_config
from activeseg.napari.correct import open_correction
from activeseg.napari.reader import labels_volume, read_output, read_session, session_of_layer
from activeseg.session import Session

log = logging.getLogger("activeseg")

ROUND_COLUMNS = ("round", "strategy", "slices", "status", "cost/slice")
"""The columns of the rounds table."""

Step = Callable[[loop.Progress], Any]
"""A step run in the worker: called with the progress callback, returns what to report."""


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued Qt signal)."""

    progressed = Signal(str, int, int)


def round_rows(st: dict) -> list[tuple[str, ...]]:
    """The rows of the rounds table from :func:`activeseg.loop.status`: one per round,
    as text in the order of :data:`ROUND_COLUMNS`."""
    rows: list[tuple[str, ...]] = []
    for r in st["rounds"]:
        slices = ",".join(str(z) for z in (r["full_slices"] or r["queried"]))
        if r["scribble_pixels"]:
            slices += f" (+{r['scribble_pixels']} px scribbles)"
        if r["pending"]:
            slices += f" (waiting: {','.join(str(z) for z in r['pending'])})"
        if r.get("reverted"):
            slices += f" (reverted: {','.join(str(z) for z in r['reverted'])})"
        cost = "-" if r["correction_cost_frac"] is None else f"{100 * r['correction_cost_frac']:.1f} %"
        rows.append((str(r["index"]), str(r["strategy"]), slices, str(r["status"]), cost))
    return rows


def current_model_text(st: dict) -> str:
    """One line: which model pre-fills and exports now, and the gate's last decision."""
    cur = st["current_model"]
    what = "Random Forest" if cur["kind"] == "rf" else f"network {cur['version']}"
    return f"current model: {what}; {cur['why']}"


class SessionWidget(QWidget):
    """The dock widget: open a session, see its status, run query / train / export.

    Parameters
    ----------
    napari_viewer : the viewer the widget docks into (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.status: dict | None = None
        self.worker: Any = None
        self.correction: Any = None  # the correction window's controller (activeseg.napari.correct), while open
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._scale_z = 1.0

        # the session chooser
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("session folder (holds activeseg.json)")
        self.browse_button = QPushButton("Browse...")
        self.open_button = QPushButton("Open")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("re-read the session from disk (after an import in the correction window)")
        self.refresh_button.clicked.connect(self.refresh)
        self.browse_button.clicked.connect(self._browse_session)
        self.open_button.clicked.connect(lambda: self.open_session(self.path_edit.text()))
        self.path_edit.returnPressed.connect(lambda: self.open_session(self.path_edit.text()))
        chooser = QHBoxLayout()
        chooser.addWidget(self.path_edit, 1)
        chooser.addWidget(self.browse_button)
        chooser.addWidget(self.open_button)
        chooser.addWidget(self.refresh_button)

        # the status panel
        self.summary_label = QLabel("no session open")
        self.summary_label.setWordWrap(True)
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.next_label = QLabel("")
        self.next_label.setWordWrap(True)
        self.next_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the command can be copied
        self.table = QTableWidget(0, len(ROUND_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(ROUND_COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        if vertical is not None:
            vertical.setVisible(False)
        if horizontal is not None:
            horizontal.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            horizontal.setStretchLastSection(True)

        # the uncertainty along z
        self.figure = Figure(figsize=(4, 1.8), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(140)
        self.axes = self.figure.add_subplot(111)
        self.labelled_marks: Any = None
        self.pending_marks: Any = None
        self.canvas.mpl_connect("button_press_event", self._on_plot_click)

        # the steps
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 1000)
        self.n_spin.setValue(5)
        self.strategy_combo = QComboBox()
        names = [i.name for i in registry.describe_strategies() if i.error is None]
        self.strategy_combo.addItems(names)
        if "distributed" in names:
            self.strategy_combo.setCurrentText("distributed")
        self.query_button = QPushButton("Query")
        self.query_button.clicked.connect(lambda: self.run_query(self.n_spin.value(), self.strategy_combo.currentText()))
        query_row = QHBoxLayout()
        query_row.addWidget(QLabel("n"))
        query_row.addWidget(self.n_spin)
        query_row.addWidget(self.strategy_combo, 1)
        query_row.addWidget(self.query_button)

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setSpecialValueText("config")
        self.steps_spin.setToolTip("training steps; 'config' = the session's [train] steps")
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.run_train(self.steps_spin.value() or None))
        train_row = QHBoxLayout()
        train_row.addWidget(QLabel("steps"))
        train_row.addWidget(self.steps_spin, 1)
        train_row.addWidget(self.train_button)

        self.export_edit = QLineEdit()
        self.export_edit.setPlaceholderText("output .tif (default: SESSION/exports/segmentation.tif)")
        self.export_browse = QPushButton("...")
        self.export_browse.clicked.connect(self._browse_export)
        self.probabilities_check = QCheckBox("probabilities")
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(
            lambda: self.run_export(self.export_edit.text() or None, probabilities=self.probabilities_check.isChecked()))
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_edit, 1)
        export_row.addWidget(self.export_browse)
        export_row.addWidget(self.probabilities_check)
        export_row.addWidget(self.export_button)

        self.correct_button = QPushButton("Correct pending slices")
        self.correct_button.clicked.connect(self.correct_pending)

        self.stage_label = QLabel("")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

        steps = QGroupBox("steps")
        form = QFormLayout(steps)
        form.addRow("query", _row(query_row))
        form.addRow("train", _row(train_row))
        form.addRow("export", _row(export_row))
        form.addRow(self.correct_button)

        layout = QVBoxLayout(self)
        layout.addLayout(chooser)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.model_label)
        layout.addWidget(self.canvas)
        layout.addWidget(steps)
        layout.addWidget(self.stage_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.next_label)
        self.step_buttons = (self.query_button, self.train_button, self.export_button, self.correct_button)
        self._set_busy(False)

    # -- opening -------------------------------------------------------------------------

    def open_session(self, path: str | Path, *, show_layers: bool = True) -> None:
        """Open the session at ``path`` in a worker (its inputs are checked against their
        fingerprints, which may hash the stack), then show its status and, with
        ``show_layers``, its image and labels in the viewer."""
        text = str(path).strip()
        if not text:
            show_error("give the session folder (the one holding activeseg.json), or pick it with Browse")
            return
        root = Path(text).expanduser()
        self.path_edit.setText(str(root))
        self._start("opening session", lambda progress: loop.open_session(root),
                    lambda sess: self._opened(sess, show_layers))

    def _opened(self, session: Session, show_layers: bool) -> None:
        self.session = session
        cfg = session_config(session)
        self._scale_z = 1.0 if cfg.geometry.voxel_size is None else float(cfg.geometry.voxel_size[0])
        if not self.export_edit.text():
            self.export_edit.setPlaceholderText(str(session.path("exports", "segmentation.tif")))
        self.refresh()
        if show_layers and not self._session_layers():
            for data, kwargs, kind in read_session(session.root):
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)

    def _session_layers(self) -> list:
        if self.session is None:
            return []
        root = str(self.session.root.resolve())
        return [layer for layer in self.viewer.layers if session_of_layer(layer) == root]

    def refresh(self) -> None:
        """Reload the session from disk and show its status (and its labels, in the viewer)."""
        if self.session is None:
            return
        self.session.reload()
        st = loop.status(self.session)
        self.status = st
        self.summary_label.setText(
            f"{st['stack']['path']} ({' x '.join(map(str, st['stack']['shape']))}); "
            f"{st['n_labelled']} of {st['n_slices']} slices labelled"
            + ("; independent 2D sections" if st.get("sections") else ""))
        rows = round_rows(st)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.model_label.setText(current_model_text(st))
        self.next_label.setText(f"next: {st['next_step']}")
        self._draw_uncertainty(st)
        for layer in self._session_layers():
            if layer.__class__.__name__ == "Labels":
                layer.data = labels_volume(self.session, st["stack"]["shape"])

    def _draw_uncertainty(self, st: dict) -> None:
        ax = self.axes
        ax.clear()
        nz = int(st["n_slices"])
        unc = st.get("uncertainty")
        low = 0.0
        if unc:
            values = np.array([np.nan if v is None else v for v in unc["values"]], dtype=float)
            z = np.arange(values.size)
            ax.plot(z, values, color="#4363d8", lw=1)
            ax.set_ylabel(unc["name"], fontsize=8)
            if np.isfinite(values).any():
                low = float(np.nanmin(values))
        else:
            ax.text(0.5, 0.5, "no scores yet (they come with the first query)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        labelled = np.asarray(st["labelled_slices"], dtype=float)
        pending = np.asarray(sorted({z for r in st["rounds"] for z in r["pending"]}), dtype=float)
        self.labelled_marks = ax.scatter(labelled, np.full(labelled.size, low), marker="^", color="#3cb44b",
                                         zorder=3, label="labelled" if labelled.size else "_nolegend_")
        self.pending_marks = ax.scatter(pending, np.full(pending.size, low), marker="v", color="#f58231",
                                        zorder=3, label="waiting" if pending.size else "_nolegend_")
        ax.set_xlim(-0.5, nz - 0.5)
        ax.set_xlabel("z (slice; top of the stack on the left)", fontsize=8)
        ax.tick_params(labelsize=7)
        if labelled.size or pending.size:
            ax.legend(fontsize=7, loc="upper right")
        self.canvas.draw_idle()

    def _on_plot_click(self, event: Any) -> None:
        if event.inaxes is not self.axes or event.xdata is None or self.status is None:
            return
        z = int(np.clip(round(event.xdata), 0, int(self.status["n_slices"]) - 1))
        self.viewer.dims.set_point(0, z * self._scale_z)

    # -- the steps ---------------------------------------------------------------------------

    def run_query(self, n: int, strategy: str) -> None:
        """Open a new round: ``strategy`` picks up to ``n`` slices (in the worker)."""
        session = self._need_session()
        if session is None:
            return
        self._start(f"query ({strategy}, n={n})",
                    lambda progress: loop.query(session, n, strategy=strategy, progress=progress),
                    lambda rnd: show_info(f"round {rnd['index']}: correct slices {', '.join(map(str, rnd['queried']))}"))

    def run_train(self, steps: int | None = None) -> None:
        """Train a candidate network on every committed label (in the worker); the gate decides."""
        session = self._need_session()
        if session is None:
            return
        self._start("train", lambda progress: loop.train(session, steps=steps, progress=progress),
                    lambda _res: show_info(current_model_text(self.status) if self.status else "trained"))

    def run_export(self, out: str | Path | None = None, *, probabilities: bool = False) -> None:
        """Export the whole-stack segmentation (default ``SESSION/exports/segmentation.tif``)
        in the worker, then open it in the viewer."""
        session = self._need_session()
        if session is None:
            return
        target = session.path("exports", "segmentation.tif") if not out else Path(out).expanduser()

        def export(progress: loop.Progress) -> dict:
            return loop.export_segmentation(session, target, probabilities=probabilities, progress=progress)

        def show(res: dict) -> None:
            for data, kwargs, kind in read_output(res["out"]):
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            show_info(f"exported {res['out']} (mean porosity {res['porosity']:.3f})")

        self._start("export", export, show)

    def correct_pending(self) -> None:
        """Open the slices waiting for correction in napari (:mod:`activeseg.napari.correct`)."""
        session = self._need_session()
        if session is None:
            return
        try:
            self.correction = open_correction(session, viewer=self.viewer)
        except ActiveSegError as exc:
            show_error(str(exc))

    # -- the worker ------------------------------------------------------------------------

    def _need_session(self) -> Session | None:
        if self.session is None:
            show_error("open a session first: give its folder above and press Open")
            return None
        if self.busy:
            show_error("a step is still running; wait for it to finish")
            return None
        return self.session

    @property
    def busy(self) -> bool:
        """True while a step runs in the worker."""
        return self.worker is not None

    def _progress(self, stage: str, done: int, total: int) -> None:
        # called in the worker thread: the signal is queued to the widget's (main) thread
        self._relay.progressed.emit(str(stage), int(done), int(total))

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.stage_label.setText(f"{stage} {done}/{total}" if total else stage)
        self.progress_bar.setRange(0, max(int(total), 0))
        self.progress_bar.setValue(min(int(done), int(total)) if total else 0)

    def _start(self, what: str, step: Step, then: Callable[[Any], None]) -> None:
        if self.worker is not None:
            show_error("a step is still running; wait for it to finish")
            return

        def call() -> tuple[bool, Any]:
            try:
                return True, step(self._progress)
            except ActiveSegError as exc:  # the library's message is for the person: a notification
                return False, str(exc)

        def returned(result: tuple[bool, Any]) -> None:
            ok, value = result
            if not ok:
                show_error(value)
                return
            if self.session is not None:
                self.refresh()
            then(value)

        self._set_busy(True)
        self.stage_label.setText(what)
        self.progress_bar.setRange(0, 0)  # busy until the first progress call
        self.worker = create_worker(call, _connect={"returned": returned, "errored": self._errored,
                                                    "finished": self._finished})

    def _errored(self, exc: BaseException) -> None:
        # not an ActiveSegError: a bug; napari's worker shows it with its traceback too
        log.error("activeseg step failed: %r", exc)

    def _finished(self) -> None:
        self.worker = None
        self._set_busy(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if self.session is not None else 0)

    def _set_busy(self, busy: bool) -> None:
        for b in self.step_buttons:
            b.setEnabled(not busy and self.session is not None)
        self.open_button.setEnabled(not busy)
        self.refresh_button.setEnabled(not busy and self.session is not None)
        self.browse_button.setEnabled(not busy)
        if not busy:
            self.stage_label.setText("")

    # -- file dialogs ----------------------------------------------------------------------

    def _browse_session(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "activeseg session folder", self.path_edit.text())
        if folder:
            self.open_session(folder)

    def _browse_export(self) -> None:
        start = self.export_edit.text() or self.export_edit.placeholderText()
        path, _ = QFileDialog.getSaveFileName(self, "export segmentation", start, "TIFF (*.tif *.tiff)")
        if path:
            self.export_edit.setText(path)


def session_widget(viewer: napari.viewer.Viewer) -> SessionWidget:
    """The activeseg session dock widget for ``viewer``: ``viewer.window.add_dock_widget(session_widget(viewer))``."""
    return SessionWidget(viewer)


def _row(layout: QHBoxLayout) -> QWidget:
    w = QWidget()
    layout.setContentsMargins(0, 0, 0, 0)
    w.setLayout(layout)
    return w
