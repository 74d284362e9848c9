"""The napari plugin: the npe2 manifest, the reader, the session dock widget (headless, Xvfb)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

from napari.utils.notifications import notification_manager  # noqa: E402

from activeseg import io, loop, synth  # noqa: E402
from activeseg.io.outputs import create_output  # noqa: E402
from activeseg.napari import plugin  # noqa: E402
from activeseg.napari.plugin import ROUND_COLUMNS, SessionWidget  # noqa: E402
from activeseg.napari.reader import get_reader  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]

MANIFEST = Path(__file__).resolve().parents[1] / "activeseg" / "napari" / "napari.yaml"
VOXEL = (30.0, 5.0, 4.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("napari")
    synth.save_synth(d / "vol", synth.synthesize((10, 48, 48), seed=3))
    tiny_config(d / "tiny.toml", train={"steps": 2})
    return d


@pytest.fixture(scope="module")
def booted(data):
    """A bootstrapped session (slices 2 and 7 from the truth) in a module folder: read-only for the tests."""
    s = data / "booted"
    sess = loop.init_session(s, data / "vol" / "image.tif", config=data / "tiny.toml", voxel_size=VOXEL)
    loop.bootstrap(sess, slices=[2, 7])
    return s


@pytest.fixture
def errors():
    """The error notifications napari shows during a test."""
    seen = []

    def keep(event):
        n = getattr(event, "notification", event)
        if str(getattr(n, "severity", "")).lower().endswith("error"):
            seen.append(str(n.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _widget(make_napari_viewer, qtbot, session_path=None):
    viewer = make_napari_viewer()
    w = SessionWidget(viewer)
    viewer.window.add_dock_widget(w)
    if session_path is not None:
        w.open_session(session_path)
        qtbot.waitUntil(lambda: w.session is not None and not w.busy, timeout=30_000)
    return viewer, w


def _table(w):
    return [[w.table.item(i, j).text() for j in range(w.table.columnCount())] for i in range(w.table.rowCount())]


def test_manifest_validates():
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "activeseg"
    assert {c.id for c in pm.contributions.commands} == {"activeseg.get_reader", "activeseg.session_widget"}
    reader = pm.contributions.readers[0]
    assert reader.accepts_directories and {"*.tif", "*.tiff", "*.zarr"} <= set(reader.filename_patterns)
    assert pm.contributions.widgets[0].display_name == "activeseg session"
    pm.validate_imports()  # every python_name resolves


def test_reader_leaves_foreign_files_alone(tmp_path):
    tifffile.imwrite(tmp_path / "other.tif", np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "fiji.tif", np.zeros((4, 16, 16), np.uint8), imagej=True,
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "nm"})
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.tif").write_text("not a tiff either")
    (tmp_path / "folder").mkdir()
    for name in ("other.tif", "fiji.tif", "notes.txt", "fake.tif", "folder", "missing.tif"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "other.tif"), str(tmp_path / "fiji.tif")]) is None


def test_reader_opens_a_session_with_scale_and_labels(booted, data):
    reader = get_reader(str(booted))
    assert reader is not None
    layers = reader(str(booted))
    kinds = [k for _d, _kw, k in layers]
    assert kinds == ["image", "labels"]
    (img, img_kw, _), (lab, lab_kw, _) = layers
    assert tuple(img_kw["scale"]) == VOXEL and tuple(lab_kw["scale"]) == VOXEL
    truth = io.read_stack(data / "vol" / "truth.tif")
    assert np.array_equal(np.asarray(img[4]), io.read_stack(data / "vol" / "image.tif")[4])
    lab = np.asarray(lab)
    assert lab.shape == truth.shape and lab.dtype == np.uint8
    for z in range(truth.shape[0]):
        if z in (2, 7):
            assert np.array_equal(lab[z], truth[z] + 1), z  # class c shown as c + 1
        else:
            assert not lab[z].any(), z  # 0 = unlabelled


def test_reader_opens_an_export_as_labels_with_scale(booted, tmp_path):
    out = tmp_path / "seg.tif"
    loop.export_segmentation(loop.open_session(booted), out, values=[0, 255])
    reader = get_reader(str(out))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(out))
    assert kind == "labels" and np.allclose(kwargs["scale"], VOXEL)
    assert np.array_equal(np.asarray(data), io.read_stack(out))
    probs = tmp_path / "prob.tif"
    io.write_stack(probs, np.full((3, 8, 8), 0.25, np.float32), voxel_size=VOXEL, kind="probabilities")
    [(pdata, pkw, pkind)] = get_reader(str(probs))(str(probs))
    assert pkind == "image" and pkw["colormap"] == "magma" and tuple(pkw["contrast_limits"]) == (0.0, 1.0)
    assert np.allclose(pkw["scale"], VOXEL) and np.allclose(np.asarray(pdata), 0.25)
    multi = tmp_path / "prob3.tif"
    io.write_stack(multi, np.full((3, 3, 8, 8), 1 / 3, np.float32), voxel_size=VOXEL, kind="probabilities")
    [(_m, mkw, _k)] = get_reader(str(multi))(str(multi))
    assert mkw["channel_axis"] == 1 and len(mkw["name"]) == 3 and np.allclose(mkw["scale"], VOXEL)


def test_widget_shows_the_rounds_and_runs_train_in_a_worker(make_napari_viewer, qtbot, booted, data, tmp_path, errors,
                                                            monkeypatch):

    s = tmp_path / "s"
    shutil.copytree(booted, s)
    viewer, w = _widget(make_napari_viewer, qtbot, s)
    assert w.table.columnCount() == len(ROUND_COLUMNS)
    rows = _table(w)
    assert len(rows) == 1 and rows[0][0] == "0" and rows[0][2] == "2,7"
    assert list(w.labelled_marks.get_offsets()[:, 0]) == [2, 7]
    assert [layer.name for layer in viewer.layers] == ["s: image", "s: labels"]
    seen = []
    w._relay.progressed.connect(lambda stage, done, total: seen.append(stage))
    w.run_train(2)
    assert w.busy  # the step runs in the worker; the event loop goes on
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert not errors
    rows = _table(w)
    assert len(rows) == 1 and rows[0][3] == "trained"
    assert "train" in seen  # the library's progress reached the widget through the signal
    assert w.session.manifest["rounds"][0]["status"] == "trained"  # the same Session object, reloaded
    w.n_spin.setValue(2)
    w.strategy_combo.setCurrentText("distributed")
    w.query_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert not errors
    rows = _table(w)
    assert len(rows) == 2 and rows[1][1] == "distributed" and "waiting" in rows[1][2]
    waiting = w.session.manifest["rounds"][1]["queried"]
    assert len(waiting) == 2 and sorted(w.pending_marks.get_offsets()[:, 0]) == sorted(waiting)
    calls = []  # the correction window itself is activeseg.napari.correct's (tests/test_napari_correct.py)
    monkeypatch.setattr(plugin, "open_correction", lambda session, viewer: calls.append((session, viewer)) or "window")
    w.correct_button.click()
    assert calls == [(w.session, viewer)] and w.correction == "window" and not errors


def test_widget_errors_become_notifications(make_napari_viewer, qtbot, booted, tmp_path, errors):
    s = tmp_path / "s"
    shutil.copytree(booted, s)
    _viewer, w = _widget(make_napari_viewer, qtbot, s)
    before = (s / "activeseg.json").read_bytes()
    w.run_query(0, "distributed")
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert any("-n must be at least 1" in e for e in errors)
    w.run_query(2, "no_such_strategy")
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert any("no_such_strategy" in e for e in errors)
    assert (s / "activeseg.json").read_bytes() == before
    n = len(errors)
    w.correct_button.click()  # nothing was queried: nothing waits, activeseg.napari.correct says so
    assert len(errors) == n + 1 and str(s) in errors[-1]
    w.open_session(tmp_path / "nowhere")
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert any("no session at" in e for e in errors)


def test_napari_uses_the_plugin(make_napari_viewer, npe2pm, booted, tmp_path):
    """Through napari itself: the manifest's reader and widget, the layers' keywords accepted."""
    npe2pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    layers = viewer.open(str(booted), plugin="activeseg")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert all(np.allclose(layer.scale, VOXEL) for layer in layers)
    multi = tmp_path / "prob3.tif"
    io.write_stack(multi, np.full((3, 3, 8, 8), 1 / 3, np.float32), voxel_size=VOXEL, kind="probabilities")
    probs = viewer.open(str(multi), plugin="activeseg")
    assert len(probs) == 3 and all(p.colormap.name == "magma" and np.allclose(p.scale, VOXEL) for p in probs)
    _dock, widget = viewer.window.add_plugin_dock_widget("activeseg", "activeseg session")
    assert isinstance(widget, SessionWidget) and widget.viewer is not None


def test_reader_opens_activeseg_ome_zarr_outputs(make_napari_viewer, npe2pm, tmp_path):
    truth = (np.arange(4 * 16 * 16).reshape(4, 16, 16) % 3 == 0).astype(np.uint8)
    with create_output(tmp_path / "seg.zarr", truth.shape, np.uint8, voxel_size=VOXEL, kind="labels") as w:
        w.array[:] = truth
    probs = np.full((4, 3, 16, 16), 1 / 3, np.float32)
    with create_output(tmp_path / "p.zarr", probs.shape, np.float32, voxel_size=VOXEL, kind="probabilities") as w:
        w.array[:] = probs
    with create_output(tmp_path / "img.zarr", truth.shape, np.uint8, voxel_size=VOXEL, kind="image") as w:
        w.array[:] = truth
    assert get_reader(str(tmp_path / "img.zarr")) is None  # an image store: napari's own readers take it
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "seg.zarr"))(str(tmp_path / "seg.zarr"))
    assert kind == "labels" and np.allclose(kwargs["scale"], VOXEL) and kwargs["multiscale"]
    assert np.array_equal(np.asarray(data[0]), truth) and data[1].shape == (4, 8, 8)  # the pyramid
    npe2pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    [labels] = viewer.open(str(tmp_path / "seg.zarr"), plugin="activeseg")
    assert type(labels).__name__ == "Labels" and labels.multiscale and np.allclose(labels.scale, VOXEL)
    layers = viewer.open(str(tmp_path / "p.zarr"), plugin="activeseg")
    assert len(layers) == 3 and all(np.allclose(layer.scale, VOXEL) and layer.colormap.name == "magma" for layer in layers)
    assert np.allclose(np.asarray(layers[1].data[0]), 1 / 3)
