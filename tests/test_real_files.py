"""Real users' files: BMP/PNG/JPEG slice folders, and 0/255 masks of either polarity
(truth, bootstrap labels, corrections, ``info --labels``)."""

import json
import logging

import numpy as np
import pytest
from cli_run import ok
from PIL import Image
from typer.testing import CliRunner

from activeseg import io
from activeseg.cli import app
from activeseg.errors import LabelError, StackError
from activeseg.io.errors import Single2DError
from activeseg.loop.state import open_truth
from activeseg.oracle import read_corrections
from activeseg.session import Session

runner = CliRunner()


def ok_json(args):
    res = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return json.loads(res.stdout)  # log lines go to stderr


def fails(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code != 0, f"{args} should fail\n{res.output}"
    assert "Traceback" not in res.output and "error:" in res.output
    return " ".join(res.output.split())  # rich may wrap a long line


def _save_folder(folder, vol, ext, **kw):
    folder.mkdir()
    for z, sl in enumerate(vol):
        Image.fromarray(sl).save(folder / f"slice_{z}.{ext}", **kw)
    return folder


def _smooth(shape, seed=0):
    """A smooth uint8 volume (JPEG keeps it within a few levels)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.05, 0.2, 2)
    return (127 + 60 * np.sin(a * y + z) + 40 * np.cos(b * x - z)).astype(np.uint8)


# ----------------------------------------------------------------------- reading slices


def test_bmp_folder_reads_like_tiff_slices(tmp_path):
    vol = np.random.default_rng(1).integers(0, 256, (3, 16, 24)).astype(np.uint8)
    with io.open_stack(_save_folder(tmp_path / "bmp", vol, "bmp")) as st:
        assert st.shape == (3, 16, 24) and st.dtype == np.uint8 and st.voxel_size is None
        np.testing.assert_array_equal(st[:], vol)
        np.testing.assert_array_equal(st[[2, 0]], vol[[2, 0]])
    # RGB files whose channels are equal are grey
    folder = tmp_path / "rgb_bmp"
    folder.mkdir()
    for z, sl in enumerate(vol):
        Image.fromarray(np.repeat(sl[..., None], 3, axis=-1)).save(folder / f"s{z}.bmp")
    np.testing.assert_array_equal(io.read_stack(folder), vol)
    with io.open_stack(folder, voxel_size=(10, 5, 5)) as st:
        assert st.voxel_size == (10.0, 5.0, 5.0)


def test_jpeg_folder_reads_within_tolerance(tmp_path):
    vol = _smooth((4, 32, 40))
    got = io.read_stack(_save_folder(tmp_path / "jpg", vol, "jpg", quality=95))
    assert got.shape == vol.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - vol).max() <= 8
    assert np.abs(got.astype(int) - vol).mean() < 2
    # a grey picture saved as colour JPEG is still grey
    folder = tmp_path / "rgb_jpg"
    folder.mkdir()
    for z, sl in enumerate(vol):
        Image.fromarray(sl).convert("RGB").save(folder / f"s{z}.jpeg", quality=95)
    got = io.read_stack(folder)
    assert got.shape == vol.shape and np.abs(got.astype(int) - vol).max() <= 8


def test_16bit_png_folders_one_and_several_files(tmp_path):
    rng = np.random.default_rng(2)
    one = rng.integers(0, 65536, (1, 20, 30)).astype(np.uint16)
    with io.open_stack(_save_folder(tmp_path / "one", one, "png")) as st:
        assert st.shape == (1, 20, 30) and st.dtype == np.uint16
        np.testing.assert_array_equal(st[:], one)
    many = rng.integers(0, 65536, (5, 20, 30)).astype(np.uint16)
    with io.open_stack(_save_folder(tmp_path / "many", many, "png")) as st:
        assert st.shape == (5, 20, 30) and st.dtype == np.uint16
        np.testing.assert_array_equal(st[1:4], many[1:4])


def test_single_images_colour_and_mixed_folders_are_refused(tmp_path):
    vol = np.random.default_rng(3).integers(0, 256, (2, 8, 8)).astype(np.uint8)
    folder = _save_folder(tmp_path / "f", vol, "bmp")
    # one 2D image is not a stack, as for a single-page TIFF
    with pytest.raises(Single2DError, match=r"single 2D image of shape \(8, 8\)"):
        io.open_stack(folder / "slice_0.bmp")
    io.write_stack(tmp_path / "one.tif", vol[:1])
    with pytest.raises(Single2DError, match="single 2D image"):
        io.open_stack(tmp_path / "one.tif")
    colour = tmp_path / "colour"
    colour.mkdir()
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(colour / "s0.png")
    with pytest.raises(StackError, match=r"s0\.png.*looks like RGB.*grayscale"):
        io.open_stack(colour)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(vol[0]).save(mixed / "s0.png")
    Image.fromarray(vol[1]).save(mixed / "s1.bmp")
    Image.fromarray(vol[1].astype(np.uint16) * 200).save(mixed / "s2.png")
    Image.fromarray(vol[1]).save(mixed / "s3.png")
    with pytest.raises(StackError, match=r"mixes dtypes: s2\.png is uint16"):
        io.open_stack(mixed)
    (mixed / "s2.png").unlink()
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(mixed / "s2.jpg")
    with pytest.raises(StackError, match=r"mixes slice shapes: s2\.jpg"):
        io.open_stack(mixed)


# ------------------------------------------------------------------------ 0/255 masks


def _as_255(mask01, pore_value):
    """A 0/1 mask as a 0/255 file of the given polarity, anti-aliased (252-254) at the edges."""
    high = mask01 == 1 if pore_value == 255 else mask01 == 0
    out = np.where(high, 255, 0).astype(np.uint8)
    edge = high & ~np.roll(high, 1, axis=-1)  # the first high pixel of each run along x
    out[edge] = np.where(np.arange(edge.sum()) % 2, 253, 252)
    return out


def test_decode_and_pick_polarity():
    truth = (np.random.default_rng(4).random((16, 16)) < 0.7).astype(np.uint8)
    for pv in (0, 255):
        raw = _as_255(truth, pv)
        assert set(np.unique(raw)) >= {252, 253}
        np.testing.assert_array_equal(io.decode_pore_mask(raw, pv), truth)
        prefill = truth.copy()
        prefill[:3] = 1 - prefill[:3]  # a pre-fill that is wrong on some rows
        got, agree = io.pick_pore_value(raw, prefill)
        assert got == pv and 0.75 < agree < 1
    with pytest.raises(ValueError, match="0 or 255"):
        io.decode_pore_mask(truth, 1)


def test_read_corrections_takes_the_polarity_the_prefill_agrees_with(tmp_path, caplog):
    truth = (np.random.default_rng(5).random((12, 16)) < 0.6).astype(np.uint8)
    prefill = truth.copy()
    prefill[:2] = 1 - prefill[:2]
    for pv in (0, 255):
        path = tmp_path / f"z0007_mask_{pv}.tif"
        io.write_stack(path, _as_255(truth, pv)[None], kind="image")
        with caplog.at_level(logging.INFO, logger="activeseg"):
            caplog.clear()
            got = read_corrections({7: path}, truth.shape, prefill={7: prefill})
        np.testing.assert_array_equal(got[7], truth)
        assert f"z0007: 0/255 mask, {pv} read as pore (agrees" in caplog.text
    # without a pre-fill 255 is pore, as before; a 0/1 mask is untouched
    got = read_corrections({7: tmp_path / "z0007_mask_255.tif"}, truth.shape)
    np.testing.assert_array_equal(got[7], truth)
    io.write_stack(tmp_path / "z0007_mask.tif", truth[None], kind="labels")
    np.testing.assert_array_equal(read_corrections({7: tmp_path / "z0007_mask.tif"}, truth.shape, prefill={7: 1 - truth})[7],
                                  truth)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("real")
    ok(["synth", d / "vol", "--shape", 12, 48, 48, "--seed", 3])
    tiny_config(d / "tiny.toml")
    truth = io.read_stack(d / "vol" / "truth.tif")
    assert set(np.unique(truth)) == {0, 1}
    for pv in (0, 255):
        io.write_stack(d / f"truth_{pv}.tif", _as_255(truth, pv), kind="image")
        drawn = np.full_like(truth, 0 if pv == 255 else 255)  # undrawn slices: all background
        drawn[[2, 9]] = _as_255(truth[[2, 9]], pv)
        io.write_stack(d / f"labels_{pv}.tif", drawn, kind="image")
    return d, truth


@pytest.mark.parametrize("pv", [0, 255])
def test_init_with_a_0_255_truth_of_either_polarity(data, tmp_path, pv):
    d, truth = data
    s = tmp_path / "s"
    out = fails(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml", "--truth", d / f"truth_{pv}.tif"])
    assert "--pore-value" in out and "values 0 and 255" in out and "252-253" in out
    assert not s.exists()
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml", "--truth", d / f"truth_{pv}.tif",
        "--pore-value", pv])
    sess = Session.open(s)
    assert sess.manifest["truth"]["pore_value"] == pv
    t = open_truth(sess)
    with t:
        assert t.shape == truth.shape
        np.testing.assert_array_equal(t[4], truth[4])
        np.testing.assert_array_equal(t[[1, 7]], truth[[1, 7]])
        np.testing.assert_array_equal(t[:], truth)


def test_pore_value_on_a_0_1_truth_or_a_bad_value_is_refused(data, tmp_path):
    d, _ = data
    out = fails(["init", tmp_path / "s", "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml",
                 "--truth", d / "vol" / "truth.tif", "--pore-value", 255])
    assert "not a 0/255 mask" in out and "leave --pore-value out" in out
    out = fails(["init", tmp_path / "s", "--image", d / "vol" / "image.tif", "--truth", d / "truth_0.tif", "--pore-value", 1])
    assert "0 or 255" in out
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("pv", [0, 255])
def test_bootstrap_labels_as_a_0_255_mask(data, tmp_path, pv):
    d, truth = data
    s = tmp_path / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    before = (s / "activeseg.json").read_bytes()
    out = fails(["bootstrap", s, "--labels", d / f"labels_{pv}.tif"])
    assert "--pore-value" in out and "252-253" in out
    assert (s / "activeseg.json").read_bytes() == before
    out = ok(["bootstrap", s, "--labels", d / f"labels_{pv}.tif", "--pore-value", pv])
    assert "[2, 9]" in out
    files = sorted((s / "labels").glob("r000_*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as lab:
        assert lab["slices"].tolist() == [2, 9]
        np.testing.assert_array_equal(lab["masks"], truth[[2, 9]])


def test_bootstrap_labels_0_255_without_edges_names_the_option(data, tmp_path):
    d, truth = data
    s = tmp_path / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    plain = np.where(truth == 1, 255, 0).astype(np.uint8)
    io.write_stack(tmp_path / "plain.tif", plain, kind="image")
    out = fails(["bootstrap", s, "--labels", tmp_path / "plain.tif"])
    assert "--pore-value" in out and "values 0 and 255" in out


@pytest.mark.parametrize("pv", [0, 255])
def test_import_a_0_255_correction_of_either_polarity(data, tmp_path, pv):
    d, truth = data
    s = tmp_path / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "3,8"])
    ok(["query", s, "-n", 1, "--strategy", "distributed"])
    z = json.loads((s / "activeseg.json").read_text())["rounds"][-1]["queried"][0]
    folder = tmp_path / "fixed"
    folder.mkdir()
    io.write_stack(folder / f"z{z:04d}_mask.tif", _as_255(truth[z], pv)[None], kind="image")
    out = ok(["import", s, folder])
    assert f"{pv} read as pore" in " ".join(out.split())
    with np.load(s / "labels" / "r001_i00.npz", allow_pickle=False) as lab:
        np.testing.assert_array_equal(lab["masks"][0], truth[z])


def test_info_warns_about_a_0_255_mask_and_reads_it_with_pore_value(data):
    d, truth = data
    image, labels = d / "vol" / "image.tif", d / "labels_255.tif"
    plain = d / "plain_255.tif"
    io.write_stack(plain, np.where(truth == 1, 255, 0).astype(np.uint8), kind="image")
    out = " ".join(ok(["info", image, "--labels", plain]).split())
    assert "warning:" in out and "--pore-value" in out
    res = ok_json(["info", image, "--labels", plain])
    assert "--pore-value" in res["labels"]["warning"]
    # anti-aliased values cannot be partial labels: refused, naming the option
    assert "--pore-value" in fails(["info", image, "--labels", labels])
    res = ok_json(["info", image, "--labels", labels, "--pore-value", 255])["labels"]
    assert "warning" not in res and res["labelled_slices"] == 2
    assert res["porosity"] == pytest.approx(truth[[2, 9]].mean())
    # a 0/1/255 partial label file reads as before, without a warning
    partial = np.full_like(truth, 255)
    partial[5] = truth[5]
    io.write_stack(d / "partial.tif", partial, kind="labels")
    res = ok_json(["info", image, "--labels", d / "partial.tif"])["labels"]
    assert "warning" not in res and res["porosity"] == pytest.approx(truth[5].mean())
    with pytest.raises(LabelError, match="0, 1 and 255"):
        io.read_labels(d / "partial.tif", kind="partial", pore_value=255)


def test_a_0_1_truth_whose_1_is_solid_warns_and_pore_value_0_flips_it(data, tmp_path):
    d, truth = data
    io.write_stack(tmp_path / "solid1.tif", (1 - truth).astype(np.uint8), kind="labels")  # 1 = solid (the cathode file's way)
    out = " ".join(ok(["init", tmp_path / "a", "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml",
                       "--truth", tmp_path / "solid1.tif"]).split())
    assert "brighter on average" in out and "--pore-value 0" in out
    out = " ".join(ok(["init", tmp_path / "b", "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml",
                       "--truth", tmp_path / "solid1.tif", "--pore-value", 0]).split())
    assert "brighter on average" not in out
    with open_truth(Session.open(tmp_path / "b")) as t:
        np.testing.assert_array_equal(t[:], truth)


def test_a_wrongly_declared_polarity_is_warned_about(data, tmp_path):
    d, _ = data
    out = " ".join(ok(["init", tmp_path / "s", "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml",
                       "--truth", d / "truth_0.tif", "--pore-value", 255]).split())  # the file's pore is 0
    assert "probably read the wrong way round" in out
    s = tmp_path / "t"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    out = " ".join(ok(["bootstrap", s, "--labels", d / "labels_0.tif", "--pore-value", 255]).split())
    assert "in the bootstrap labels" in out and "probably read the wrong way round" in out
    out = " ".join(ok(["bootstrap", tmp_path / "s", "--slices", "2,9"]).split())
    assert "wrong way round" in out  # the truth was declared the wrong way: its slices say so too


def test_one_bad_mask_among_several_says_nothing_was_imported_and_how_to_go_on(data, tmp_path):
    d, truth = data
    s = tmp_path / "s"
    ok(["init", s, "--image", d / "vol" / "image.tif", "--config", d / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "3,8"])
    ok(["query", s, "-n", 2, "--strategy", "distributed"])
    zs = json.loads((s / "activeseg.json").read_text())["rounds"][-1]["queried"]
    folder = s / "rounds" / "r001"
    io.write_stack(folder / f"z{zs[0]:04d}_mask.tif", truth[zs[0]][None], kind="labels")
    io.write_stack(folder / f"z{zs[1]:04d}_mask.tif", truth[zs[1]][None, :40, :40], kind="labels")  # wrong size
    out = " ".join(fails(["import", s]).split())
    assert "nothing was imported" in out and "--skip" in out and "--slices" in out
    assert json.loads((s / "activeseg.json").read_text())["rounds"][-1]["imported"] == []
