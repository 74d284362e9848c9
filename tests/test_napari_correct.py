"""`activeseg correct`: the correction viewer in napari (headless under Xvfb; tiny sessions).

Run with ``xvfb-run -a python -m pytest tests/test_napari_correct.py``.
"""

import builtins
import json
import shutil

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from activeseg import io, loop, uncertainty
from activeseg.cli import app
from activeseg.oracle import find_mask_files, mask_name, overlay_name
from activeseg.session import Session

napari = pytest.importorskip("napari")
correct = pytest.importorskip("activeseg.napari.correct")
Qt = pytest.importorskip("qtpy.QtCore").Qt

pytestmark = pytest.mark.gui
runner = CliRunner()


def ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return res.output


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_config):
    """A session with round 1 queried (2 slices, the RF current): copied by each test."""
    d = tmp_path_factory.mktemp("correct")
    ok(["synth", d / "vol", "--shape", 12, 48, 48, "--seed", 3])
    tiny_config(d / "tiny.toml")
    s = d / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "2,9"])
    ok(["query", s, "-n", 2, "--strategy", "distributed"])
    return s


@pytest.fixture
def session(template, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(template, s)
    return s


def _manifest(s):
    return (s / "activeseg.json").read_bytes()


def _open(make_napari_viewer, s, answers=None, **kw):
    viewer = make_napari_viewer(show=True)
    asked = []

    def ask(question):
        asked.append(question)
        return answers.pop(0) if answers else "discard"

    ctl = correct.open_correction(s, viewer, ask=ask, **kw)
    return ctl, viewer, asked


def _flip(ctl, rows, cols):
    """Paint a rectangle of the shown mask to the other class (layer values 1 <-> 2)."""
    data = ctl.mask_layer.data
    data[rows, cols] = 3 - data[rows, cols]
    ctl.mask_layer.refresh()
    return int(np.asarray(data[rows, cols]).size)


def test_save_imports_the_slice_with_its_correction_cost(make_napari_viewer, session):
    ctl, viewer, _ = _open(make_napari_viewer, session)
    queried = json.loads(_manifest(session))["rounds"][1]["queried"]
    z = ctl.z
    assert z == queried[0] and ctl.slices == queried
    assert ctl.mask_layer.ndim == 2 and ctl.image_layer.data.shape == (3, 48, 48)  # export_radius 1: z-1, z, z+1
    assert int(viewer.dims.current_step[0]) == 1 and "the slice to correct" in ctl.text_overlay.text
    prefill = loop.state.prefill_masks(Session.open(session), 1)[z]
    assert np.array_equal(ctl.mask_layer.data, prefill + 1)  # class c shown as c + 1
    changed = _flip(ctl, slice(5, 15), slice(10, 25))
    assert ctl.dirty and ctl.pixels_changed() == changed == 150
    assert ctl.save()
    m = json.loads(_manifest(session))
    rnd = m["rounds"][1]
    assert rnd["imported"] == [z] and rnd["correction_cost"] == {str(z): changed}
    labels = np.load(session / rnd["label_files"][-1], allow_pickle=False)
    assert labels["slices"].tolist() == [z] and str(labels["kind"]) == "full"
    assert labels["source"].tolist() == ["corrected"] and labels["cost"].tolist() == [changed]
    expected = prefill.copy()
    expected[5:15, 10:25] = 1 - expected[5:15, 10:25]
    assert np.array_equal(labels["masks"][0], expected)
    assert np.array_equal(tifffile.imread(session / "rounds" / "r001" / mask_name(z)), expected)  # the round's file
    assert ctl.z == queried[1] and not ctl.dirty  # on to the next slice
    assert ctl.status_of(z) == "imported" and ctl.saved_cost() == changed
    # an erased pixel (label 0 = unlabelled) is refused: a corrected slice is complete
    ctl.mask_layer.data[0, 0] = 0
    before = _manifest(session)
    assert not ctl.save()
    assert "unlabelled" in ctl.messages[-1] and _manifest(session) == before
    ctl.mask_layer.data[0, 0] = 1
    assert ctl.skip()
    assert json.loads(_manifest(session))["rounds"][1]["skipped"] == [queried[1]]
    assert "next:" in ctl.messages[-1] and not ctl.dirty


def test_moving_between_slices_keeps_edits_and_starts_at_the_asked_slice(make_napari_viewer, session, qtbot):
    queried = json.loads(_manifest(session))["rounds"][1]["queried"]
    ctl, viewer, _ = _open(make_napari_viewer, session, z=queried[1])
    assert ctl.z == queried[1]
    changed = _flip(ctl, slice(0, 4), slice(0, 4))
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key_N)  # next
    assert ctl.z == queried[0] and ctl.unsaved() == [queried[1]]
    qtbot.keyClick(canvas, Qt.Key_N, Qt.ShiftModifier)  # previous
    assert ctl.z == queried[1] and ctl.pixels_changed() == changed
    ctl.next()
    ctl.previous()
    assert ctl.z == queried[1] and ctl.pixels_changed() == changed
    with pytest.raises(Exception, match="not waiting"):
        correct.open_correction(session, viewer, z=5 if 5 not in queried else 6)


def test_quitting_with_unsaved_edits_asks(make_napari_viewer, session):
    before = _manifest(session)
    ctl, viewer, asked = _open(make_napari_viewer, session, answers=["cancel", "discard"])
    window = viewer.window._qt_window
    assert window.close()  # nothing edited: closes without asking ...
    assert not asked
    window.show()
    _flip(ctl, slice(0, 8), slice(0, 8))
    assert not window.close()  # ... edited: asked, "cancel" keeps the viewer open
    assert len(asked) == 1 and window.isVisible() and ctl.dirty
    assert window.close()  # "discard": closes, commits nothing
    assert len(asked) == 2 and not window.isVisible()
    assert _manifest(session) == before


def test_quitting_and_saving(make_napari_viewer, session):
    ctl, _, asked = _open(make_napari_viewer, session, answers=["save"])
    z = ctl.z
    changed = _flip(ctl, slice(0, 3), slice(0, 5))
    assert ctl.close_requested() and asked
    assert json.loads(_manifest(session))["rounds"][1]["correction_cost"] == {str(z): changed}


def test_screenshot_shows_the_image_and_the_mask(make_napari_viewer, session):
    ctl, viewer, _ = _open(make_napari_viewer, session)
    prefill = ctl.mask_layer.data - 1
    assert 0.05 < prefill.mean() < 0.95  # both classes in the mask
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    r, b = shot[..., 0], shot[..., 2]
    drawn = shot.sum(axis=-1) > 0  # the canvas around the image is black
    solid = (b - r > 40)[drawn].mean()  # blue over grey
    pore = (r - b > 40)[drawn].mean()  # orange over grey
    assert solid > 0.01 and pore > 0.01, (solid, pore)
    np.testing.assert_allclose([solid, pore], [np.mean(prefill == 0), np.mean(prefill == 1)], atol=0.1)
    ctl.mask_layer.visible = False
    plain = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    grey = np.abs(plain[..., 0] - plain[..., 2]) < 3
    assert grey.all() and plain.std() > 10  # the image alone: grey, not blank


def test_query_writes_the_uncertainty_overlays_and_the_viewer_shows_them(make_napari_viewer, session):
    s = Session.open(session)
    rnd = s.manifest["rounds"][1]
    folder = session / "rounds" / "r001"
    assert sorted(find_mask_files(folder)) == sorted(rnd["queried"])  # the overlays are no masks
    with loop.state.open_image(s) as image:
        _, _, rf = loop.current_model(s, image)
        expected = uncertainty.entropy(rf.predict_proba(image, rnd["queried"]))
    for z, want in zip(rnd["queried"], expected):
        u = tifffile.imread(folder / overlay_name(z, "uncertainty"))
        assert u.shape == (48, 48)
        assert u.dtype == np.float32 and 0 <= u.min() and u.max() <= 1 and u.max() > u.min()
        np.testing.assert_allclose(u, np.clip(want, 0, 1), atol=1e-5)
        assert not (folder / overlay_name(z, "disagreement")).exists()  # no network yet
    ctl, viewer, _ = _open(make_napari_viewer, session)
    layer = viewer.layers["uncertainty"]
    assert not layer.visible and layer.data.shape == (48, 48)
    assert "disagreement" not in viewer.layers
    names = [la.name for la in viewer.layers]
    assert names.index("uncertainty") < names.index("mask")  # the mask stays on top
    # an old round without overlay files: the layer is simply absent
    for z in rnd["queried"]:
        (folder / overlay_name(z, "uncertainty")).unlink()
    ctl.next()
    assert "uncertainty" not in viewer.layers


def test_disagreement_overlay_once_a_network_exists(session, one_torch_thread):
    s = Session.open(session)
    loop.oracle_correct(s)
    loop.train(s, steps=2)
    rnd = loop.query(s, 1, strategy="distributed")
    folder = session / "rounds" / f"r{rnd['index']:03d}"
    for z in rnd["queried"]:
        d = tifffile.imread(folder / overlay_name(z, "disagreement"))
        assert d.dtype == np.float32 and 0 <= d.min() and d.max() <= 1 and d.max() > 0
        assert (folder / overlay_name(z, "uncertainty")).exists()


def test_a_session_changed_underneath_is_reloaded_and_nothing_is_lost(make_napari_viewer, session):
    queried = json.loads(_manifest(session))["rounds"][1]["queried"]
    ctl, _, _ = _open(make_napari_viewer, session)
    z0, z1 = queried
    # another process imports z1 while the viewer is open
    other = Session.open(session)
    io.write_stack(session / "rounds" / "r001" / mask_name(z1), loop.state.prefill_masks(other, 1)[z1][None], kind="labels")
    loop.import_corrections(other, slices=[z1])
    changed = _flip(ctl, slice(0, 6), slice(0, 6))
    assert ctl.save()
    assert any("changed on disk" in t for t in ctl.messages)
    rnd = json.loads(_manifest(session))["rounds"][1]
    assert rnd["imported"] == sorted([z0, z1]) and rnd["correction_cost"] == {str(z1): 0, str(z0): changed}
    assert ctl.status_of(z1) == "imported"


def test_a_slice_imported_underneath_is_not_saved_again(make_napari_viewer, session):
    queried = json.loads(_manifest(session))["rounds"][1]["queried"]
    ctl, _, _ = _open(make_napari_viewer, session)
    z0 = queried[0]
    other = Session.open(session)
    loop.import_corrections(other, slices=[z0])  # the pre-filled mask as it was exported
    before = _manifest(session)
    _flip(ctl, slice(0, 6), slice(0, 6))
    edited = np.array(ctl.mask_layer.data, copy=True)
    assert not ctl.save()
    assert "no longer waits" in ctl.messages[-1] and _manifest(session) == before
    assert np.array_equal(ctl.mask_layer.data, edited)  # the edits stay in the viewer
    assert ctl.status_of(z0) == "imported"


def test_correct_without_napari_says_how_to_install_it(monkeypatch, session):
    real = builtins.__import__

    def no_napari(name, *args, **kw):
        if name.startswith("activeseg.napari"):
            raise ModuleNotFoundError("No module named 'napari'", name="napari")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_napari)
    res = runner.invoke(app, ["correct", str(session)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ['napari is not installed: pip install "activeseg[napari]"']


def test_correct_refuses_a_slice_that_does_not_wait(session, qapp):
    queried = json.loads(_manifest(session))["rounds"][1]["queried"]
    z = next(z for z in range(12) if z not in queried)
    res = runner.invoke(app, ["correct", str(session), "--slice", str(z)])
    assert res.exit_code == 1 and "error:" in res.output and "not waiting" in res.output
    assert "Traceback" not in res.output


# --- rounds of regions (tiles of slices) ------------------------------------------------------

TILE, MARGIN = 32, 8  # 64 x 64 slices: 2 x 2 tiles; a region's image is its tile plus 8 px of context


@pytest.fixture(scope="module")
def tile_template(tmp_path_factory, tiny_config):
    """A session with round 1 of three regions queried by the random tile baseline: copied by each test."""
    from activeseg import registry
    from activeseg.strategies.regions import tile_random

    registry.register_strategy(tile_random, "napari_tiles", replace=True)  # the installed entry point may be older
    d = tmp_path_factory.mktemp("correct_tiles")
    ok(["synth", d / "vol", "--shape", 12, 64, 64, "--seed", 3])
    tiny_config(d / "tiny.toml", session={"tile": TILE, "export_margin": MARGIN})
    s = d / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "2,9"])
    rnd = loop.query(Session.open(s), 3, strategy="napari_tiles")
    assert rnd["unit"] == "tiles" and len(rnd["regions"]) == 3
    return s


@pytest.fixture
def tile_session(tile_template, tmp_path):
    s = tmp_path / "s"
    shutil.copytree(tile_template, s)
    return s


def _regions(s, key="regions"):
    return [tuple(r) for r in json.loads(_manifest(s))["rounds"][1][key]]


def _window(t):
    """The tile (y0, y1, x0, x1) of tile t and the image cut around it (tile + margin, clipped to 64 x 64)."""
    row, col = divmod(t, 64 // TILE)
    y0, x0 = row * TILE, col * TILE
    return (y0, y0 + TILE, x0, x0 + TILE), (max(0, y0 - MARGIN), min(64, y0 + TILE + MARGIN),
                                            max(0, x0 - MARGIN), min(64, x0 + TILE + MARGIN))


def test_a_region_shows_its_tile_in_context_and_saves_a_region_label(make_napari_viewer, tile_session):
    s = tile_session
    regions = _regions(s)
    ctl, viewer, _ = _open(make_napari_viewer, s)
    assert ctl.tiles and ctl.units == regions and ctl.unit == regions[0]
    z, t = regions[0]
    (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = _window(t)
    with loop.state.open_image(Session.open(s)) as image:
        planes = np.asarray(image[[max(z - 1, 0), z, min(z + 1, 11)]], np.float32)
    # the image: the tile with its context, z-1..z+1; the mask: the tile only, placed at its offset
    assert np.array_equal(ctl.image_layer.data, planes[:, cy0:cy1, cx0:cx1])
    assert ctl.mask_layer.data.shape == (TILE, TILE)
    assert tuple(ctl.mask_layer.translate) == (y0 - cy0, x0 - cx0)
    prefill = loop.state.prefill_regions(Session.open(s), 1)[(z, t)]
    assert np.array_equal(ctl.mask_layer.data, prefill + 1)
    frame = viewer.layers["tile"]
    np.testing.assert_allclose(frame.data[0].min(axis=0), [y0 - cy0 - 0.5, x0 - cx0 - 0.5])
    np.testing.assert_allclose(frame.data[0].max(axis=0), [y1 - cy0 - 0.5, x1 - cx0 - 0.5])
    assert f"region 1 of 3 (z={z}, tile {t})" in ctl._widgets["where"].text()
    assert f"tile {t}" in ctl.text_overlay.text
    changed = _flip(ctl, slice(2, 12), slice(20, 30))
    assert ctl.dirty and ctl.pixels_changed() == changed == 100
    assert ctl.save()
    rnd = json.loads(_manifest(s))["rounds"][1]
    assert rnd["imported_regions"] == [[z, t]] and rnd["region_cost"] == {f"z{z:04d}_t{t:03d}": changed}
    assert rnd["cost"]["reviewed_px"] == TILE * TILE and rnd["cost"]["changed_px"] == changed
    labels = np.load(s / rnd["label_files"][-1], allow_pickle=False)
    assert str(labels["kind"]) == "region" and labels["slices"].tolist() == [z] and labels["cost"].tolist() == [changed]
    expected = prefill.copy()
    expected[2:12, 20:30] = 1 - expected[2:12, 20:30]
    full = labels["masks"][0]
    assert np.array_equal(full[y0:y1, x0:x1], expected)
    outside = np.ones(full.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert (full[outside] == 255).all()  # the rest of the slice stays unlabelled
    assert np.array_equal(tifffile.imread(s / "rounds" / "r001" / f"z{z:04d}_t{t:03d}_mask.tif"), expected)
    assert ctl.unit == regions[1] and not ctl.dirty and ctl.saved_cost() == changed
    assert ctl.status_of((z, t)) == "imported" and ctl.pixels_changed((z, t)) == changed
    # skip the next one: not asked again, nothing recorded for it
    assert ctl.skip()
    rnd = json.loads(_manifest(s))["rounds"][1]
    assert rnd["skipped_regions"] == [list(regions[1])] and len(rnd["label_files"]) == 1
    assert ctl.unit == regions[2] and ctl.status_of(regions[1]) == "skipped"
    # an erased pixel is refused: a corrected region is complete
    ctl.mask_layer.data[0, 0] = 0
    before = _manifest(s)
    assert not ctl.save()
    assert "unlabelled" in ctl.messages[-1] and _manifest(s) == before


def test_regions_start_at_the_asked_slice_keep_edits_and_follow_changes_underneath(make_napari_viewer, tile_session):
    s = tile_session
    regions = _regions(s)
    ctl, viewer, asked = _open(make_napari_viewer, s, z=regions[1][0], answers=["cancel"])
    assert ctl.unit == next(r for r in regions if r[0] == regions[1][0])  # the first region of that slice
    first = ctl.unit
    changed = _flip(ctl, slice(0, 5), slice(0, 4))
    ctl.next()
    (y0, _, x0, _), (cy0, _, cx0, _) = _window(ctl.unit[1])
    assert ctl.unsaved() == [first] and tuple(ctl.mask_layer.translate) == (y0 - cy0, x0 - cx0)
    ctl.show(first)
    assert ctl.pixels_changed() == changed
    assert not ctl.close_requested() and "region(s)" in asked[-1] and f"tile {first[1]}" in asked[-1]
    # another process imports a region meanwhile: the viewer reloads and saves its own
    other = Session.open(s)
    done = next(r for r in regions if r != first)
    loop.import_corrections(other, regions=[done])  # the pre-filled tile as exported
    assert ctl.save()
    assert any("changed on disk" in m for m in ctl.messages)
    assert sorted(_regions(s, "imported_regions")) == sorted([first, done]) and ctl.status_of(done) == "imported"
    free = sorted({(z, t) for z in range(12) for t in range(4)} - set(regions))[0]
    with pytest.raises(Exception, match="no region"):
        correct.open_correction(s, viewer, z=next(z for z in range(12) if z not in {r[0] for r in regions}))
    with pytest.raises(Exception, match="no region"):
        correct.open_correction(s, viewer, z=free[0], t=free[1])


def test_a_region_mask_edited_in_fiji_is_what_the_viewer_shows(make_napari_viewer, tile_session):
    s = tile_session
    z, t = _regions(s)[0]
    path = s / "rounds" / "r001" / f"z{z:04d}_t{t:03d}_mask.tif"
    edited = tifffile.imread(path).copy()
    edited[:4, :4] = 1 - edited[:4, :4]
    io.write_stack(path, edited[None], kind="labels")
    ctl, _, _ = _open(make_napari_viewer, s)
    assert np.array_equal(ctl.mask_layer.data, edited + 1) and ctl.pixels_changed() == 16
    # a new query carries the pending regions over; the one started keeps the person's edits
    ctl._released = True  # no question when the window goes
    loop.query(Session.open(s), 1, strategy="napari_tiles")
    ctl2, _, _ = _open(make_napari_viewer, s, z=z, t=t)
    assert ctl2.round["index"] == 2 and (z, t) in ctl2.units and ctl2.unit == (z, t)
    assert np.array_equal(ctl2.mask_layer.data, edited + 1) and ctl2.pixels_changed() == 16


def test_screenshot_shows_the_tile_mask_over_its_context(make_napari_viewer, tile_session):
    s = tile_session
    ctl, viewer, _ = _open(make_napari_viewer, s)
    prefill = ctl.mask_layer.data - 1
    assert 0.05 < prefill.mean() < 0.95  # both classes in the tile
    viewer.layers["tile"].visible = False
    ctl.text_overlay.visible = False  # the text (bottom left) covers part of the image
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    drawn = shot.sum(axis=-1) > 0  # the canvas around the image is black
    rows, cols = np.flatnonzero(drawn.mean(axis=1) > 0.5), np.flatnonzero(drawn.mean(axis=0) > 0.5)
    image = shot[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    r, b = image[..., 0], image[..., 2]
    coloured = np.abs(r - b) > 40  # blue (solid) or orange (pore) over grey
    (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = _window(ctl.unit[1])
    h, w = cy1 - cy0, cx1 - cx0
    assert coloured.mean() == pytest.approx(TILE * TILE / (h * w), abs=0.06)  # the tile only, not its context
    # where: the coloured rows and columns are the tile's, inside the image of tile + context
    ys, xs = np.flatnonzero(coloured.mean(axis=1) > 0.2), np.flatnonzero(coloured.mean(axis=0) > 0.2)
    got = np.array([ys[0], ys[-1] + 1]) / image.shape[0], np.array([xs[0], xs[-1] + 1]) / image.shape[1]
    np.testing.assert_allclose(got[0], [(y0 - cy0) / h, (y1 - cy0) / h], atol=0.04)
    np.testing.assert_allclose(got[1], [(x0 - cx0) / w, (x1 - cx0) / w], atol=0.04)
    np.testing.assert_allclose((b - r > 40).sum() / coloured.sum(), np.mean(prefill == 0), atol=0.1)  # blue: solid

    def yellow(img):
        return (img[..., 0] > 200) & (img[..., 1] > 200) & (img[..., 2] < 80)

    assert not yellow(shot).any()
    viewer.layers["tile"].visible = True
    framed = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert yellow(framed).sum() > 4 * 0.5 * TILE / h * image.shape[0]  # the frame: four sides of the tile


def test_correct_refuses_a_slice_without_a_waiting_region(tile_session, qapp):
    regions = _regions(tile_session)
    z = next(z for z in range(12) if z not in {r[0] for r in regions})
    res = runner.invoke(app, ["correct", str(tile_session), "--slice", str(z)])
    assert res.exit_code == 1 and "error:" in res.output and "no region of slice" in res.output, res.output
    assert "Traceback" not in res.output
    z, t = regions[0]
    free = next(u for u in range(4) if (z, u) not in regions)
    res = runner.invoke(app, ["correct", str(tile_session), "--slice", str(z), "--tile", str(free)])
    assert res.exit_code == 1 and f"no region of slice {z} and tile {free}" in res.output
