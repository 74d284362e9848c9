"""Multi-phase materials (C >= 3 classes: 0 = first solid, 1 = pore, 2 = second solid) end to end."""

import csv
import json

import numpy as np
import pytest
import tifffile
from cli_run import fails, ok

from activeseg import io, metrics, synth, tables
from activeseg.errors import ConfigError
from activeseg.loop import check_output_values
from activeseg.oracle import truth_correction

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def vol3(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("three")
    out = ok(["synth", d / "vol", "--shape", 12, 64, 64, "--porosity", 0.5, "--difficulty", "medium",
              "--phases", 3, "--seed", 2])
    assert "phase fractions" in out
    tiny_config(d / "tiny.toml")
    return d


# --- the simulator ----------------------------------------------------------------------------


def test_synth_renders_three_phases_with_pore_back():
    v = synth.synthesize((12, 64, 64), porosity=0.5, difficulty="medium", seed=3, phases=3, phase_fraction=0.4)
    t, im = v.truth, v.image.astype(np.float64)
    assert set(np.unique(t)) == {0, 1, 2}
    assert abs(np.mean(t == 1) - 0.5) < 0.01  # the porosity of the structure is kept
    assert abs(np.mean(t == 2) / np.mean(t != 1) - 0.4) < 0.02  # 40 % of the solid is the second phase
    mean = {k: im[t == k].mean() for k in (0, 1, 2)}
    assert mean[0] > mean[2] > mean[1]  # the second solid is darker (0.6x yield), pores darkest
    pore = t == 1
    grey = pore & (v.depth > 0) & (v.depth <= 2)  # a back wall right behind the pore
    empty = pore & ((v.depth < 0) | (v.depth > 8))
    assert grey.any() and empty.any()
    assert im[grey].mean() > im[empty].mean() + 20  # pore-back: near walls shine through
    assert v.params["phases"] == 3 and len(v.params["phase_fractions_achieved"]) == 3
    # the same seed without phases=3 is today's two-phase volume: the solid there is 0 or 2 here
    b = synth.synthesize((12, 64, 64), porosity=0.5, difficulty="medium", seed=3)
    assert set(np.unique(b.truth)) == {0, 1}
    assert np.array_equal(b.truth == 1, t == 1)


def test_back_walls_of_the_second_phase_are_darker():
    solid = np.zeros((10, 32, 32), bool)
    solid[6:] = True  # a wall 6 slices deep behind every pixel of the first slices
    phase = np.zeros_like(solid)
    phase[:, :, 16:] = True  # its right half is the second phase
    p = synth.make_params(difficulty="easy", depth_length=20.0, dose=0.0, read_noise=0.0, curtain_amp=0.0,
                          charging_amp=0.0, drift_gain=0.0, drift_offset=0.0, texture=0.0, face_texture=0.0,
                          phases=3, phase_yield=0.5)
    image, depth = synth.render(solid, p, np.random.default_rng(0), phase=phase)
    hit = depth[1] > 0  # rays that leave the volume at its y edge hit nothing
    cols = np.arange(32)
    left = image[1][hit & (cols < 12)[None, :] & (cols >= 2)[None, :]].astype(float)
    right = image[1][hit & (cols >= 20)[None, :] & (cols < 30)[None, :]].astype(float)
    assert left.size > 50 and right.size > 50
    assert right.mean() < left.mean() - 10


def test_synth_refuses_unknown_phase_counts(tmp_path):
    with pytest.raises(ConfigError, match="phases must be 2"):
        synth.synthesize((4, 32, 32), seed=0, phases=4)
    assert "phases must be 2" in fails(["synth", tmp_path / "v", "--shape", 4, 32, 32, "--phases", 5])


# --- metrics ----------------------------------------------------------------------------------


def test_per_class_iou_and_phase_fractions_on_hand_made_arrays():
    truth = np.array([[[0, 0, 1, 1], [2, 2, 1, 1]]], np.uint8)  # 1 x 2 x 4
    pred = np.array([[[0, 2, 1, 1], [2, 2, 1, 0]]], np.uint8)
    iou = metrics.per_class_iou(pred, truth, 3)
    # class 0: inter 1, union 3; class 1: inter 3, union 4; class 2: inter 2, union 3
    assert np.allclose(iou, [1 / 3, 3 / 4, 2 / 3])
    assert np.allclose(metrics.phase_fractions(truth, 3), [2 / 8, 4 / 8, 2 / 8])
    assert np.allclose(metrics.phase_fractions(np.array([0, 2, 255, 255]), 3), [0.5, 0.0, 0.5])  # 255 not counted
    ev = metrics.evaluate(pred, truth, n_classes=3)
    o = ev.overall
    assert np.isclose(o["iou_c0"], 1 / 3) and np.isclose(o["iou_c2"], 2 / 3) and np.isclose(o["iou_pore"], 3 / 4)
    assert np.isclose(o["iou_solid"], (1 / 3 + 2 / 3) / 2)  # headline: mean over the solid phases
    assert np.isclose(o["fraction_true_c2"], 0.25) and np.isclose(o["fraction_pred_c2"], 3 / 8)
    assert np.isclose(o["fraction_error_c0"], 2 / 8 - 2 / 8)
    assert np.isclose(o["porosity_error"], 3 / 8 - 4 / 8) and np.isclose(o["accuracy"], 6 / 8)
    assert set(ev.per_slice) >= {"iou_c0", "iou_c1", "iou_c2", "fraction_pred_c0", "boundary_f1"}
    with pytest.raises(ConfigError, match="n_classes=2"):
        metrics.evaluate(pred, truth)  # a third class needs n_classes=3


def test_binary_evaluation_keeps_its_figures_and_no_class_keys():
    rng = np.random.default_rng(0)
    truth = (rng.random((3, 16, 16)) < 0.6).astype(np.uint8)
    pred = truth.copy()
    pred[0, :4] = 1 - pred[0, :4]
    o = metrics.evaluate(pred, truth).overall
    assert not any(k.startswith(("iou_c", "fraction_")) for k in o)
    assert np.isclose(o["iou_solid"], metrics.iou(pred, truth, 0))


def test_multi_phase_boundaries_count_solid_solid_interfaces():
    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, :, 4:] = 2  # two solids meeting, no pore at all
    assert metrics.evaluate(truth, truth, n_classes=3).overall["boundary_f1"] == 1.0
    wrong = np.zeros_like(truth)  # the solid/solid interface missed entirely
    assert metrics.evaluate(wrong, truth, n_classes=3).overall["boundary_f1"] == 0.0


def test_oracle_corrects_every_class():
    truth = np.array([[0, 1, 2], [2, 2, 1]], np.uint8)
    prefill = np.array([[0, 1, 0], [0, 2, 1]], np.uint8)
    c = truth_correction(5, truth, prefill)
    assert np.array_equal(c.mask, truth) and c.cost == 2
    part = truth_correction(5, truth, prefill, effort=1)  # one wrong region of class 2 fixed, not both pixels
    assert part.cost <= 1 and set(np.unique(part.mask)) <= {0, 1, 2}


def test_output_values_one_per_class():
    assert check_output_values(None, 3) == (0, 1, 2)
    assert check_output_values(None) == (0, 1)
    assert check_output_values(["0", "128", "255"], 3) == (0, 128, 255)
    with pytest.raises(ConfigError, match="3 different numbers"):
        check_output_values([0, 255], 3)
    with pytest.raises(ConfigError, match="two different numbers"):
        check_output_values([0, 1, 2], 2)


def test_tables_name_and_render_class_metrics():
    assert tables.metric_label("iou_c2") == "IoU of class 2 (0-1)"
    assert tables.better_hint("fraction_error_c0") == "0 is best"
    assert tables.class_iou_text({"iou_c0": 0.9, "iou_c1": 0.95, "iou_c2": None}) == "0.90/0.95/n/a"
    assert tables.class_iou_text({"iou_solid": 0.9}) == "-"


# --- a three-phase session through the CLI ------------------------------------------------------


def test_three_phase_session_through_the_cli(vol3, tmp_path):
    s = tmp_path / "s"
    ok(["init", s, "--image", vol3 / "vol" / "image.tif", "--config", vol3 / "tiny.toml"])
    m = json.loads((s / "activeseg.json").read_text())
    assert m["config"]["n_classes"] == 3  # n_classes follows the truth's labels
    ok(["bootstrap", s, "--slices", "2,9"])
    ok(["query", s, "-n", 2, "--strategy", "distributed"])
    truth = io.read_stack(vol3 / "vol" / "truth.tif")
    folder = s / "rounds" / "r001"
    assert "2 = the second solid phase" in (folder / "INSTRUCTIONS.txt").read_text()
    zs = []
    for p in sorted(folder.glob("z*_mask.tif")):
        z = int(p.name[1:5])
        assert set(np.unique(tifffile.imread(p))) <= {0, 1, 2}  # pre-filled with class ids
        io.write_stack(p, truth[z][None], kind="labels")  # "corrected": values 0/1/2
        zs.append(z)
    ok(["import", s])
    out = ok(["train", s, "--steps", 2])
    assert "solid IoU" in out
    seg_path = tmp_path / "seg.tif"
    assert "3 different numbers" in fails(["export", s, seg_path, "--values", "0,255"])
    ok(["export", s, seg_path, "--values", "0,128,255"])
    seg = io.read_stack(seg_path)
    assert seg.shape == (12, 64, 64) and set(np.unique(seg)) <= {0, 128, 255}
    lut = np.array([0, 128, 255], np.uint8)
    assert np.array_equal(seg[2], lut[truth[2]])  # labelled slices from their labels, every class mapped
    with open(tmp_path / "seg.porosity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["z", "porosity", "fraction_c0", "fraction_c1", "fraction_c2", "labelled"]
    r2 = rows[2]
    assert np.isclose(float(r2["fraction_c2"]), np.mean(truth[2] == 2), atol=1e-6)
    assert np.isclose(sum(float(r2[f"fraction_c{k}"]) for k in range(3)), 1.0, atol=1e-5)
    ok(["export", s, tmp_path / "prob.tif", "--probabilities"])
    prob = tifffile.imread(tmp_path / "prob.tif")  # ZCYX: activeseg reads single-channel stacks only
    assert prob.shape == (12, 3, 64, 64)  # one channel per class (an ImageJ hyperstack)
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-4)
    ok(["predict", s, vol3 / "vol" / "image.tif", tmp_path / "pred.tif"])  # the network: class ids by default
    assert set(np.unique(tifffile.imread(tmp_path / "pred.tif"))) <= {0, 1, 2}
    assert "3 different numbers" in fails(["predict", s, vol3 / "vol" / "image.tif", tmp_path / "p2.tif", "--values", "0,1"])
    st = json.loads(ok(["status", s, "--json"]))
    assert st["n_classes"] == 3
    last = st["rounds"][-1]
    assert len(last["class_iou"]) == 3 and all(0.0 <= v <= 1.0 for v in last["class_iou"])
    mt = last["metrics"]
    assert {"iou_c0", "iou_c1", "iou_c2", "fraction_true_c2", "fraction_pred_c2"} <= set(mt)
    assert np.isclose(mt["iou_solid"], (mt["iou_c0"] + mt["iou_c2"]) / 2)
    text = ok(["status", s])
    assert "mean over the solid phases" in text
    assert "/".join(f"{v:.2f}" for v in last["class_iou"]) in text  # the per-class IoU column


def test_a_configured_two_class_session_refuses_a_three_phase_truth(vol3, tmp_path):
    cfg = tmp_path / "two.toml"
    cfg.write_text((vol3 / "tiny.toml").read_text().replace("[session]\n", "[session]\nn_classes = 2\n"))
    out = fails(["init", tmp_path / "s", "--image", vol3 / "vol" / "image.tif", "--config", cfg])
    assert "holds value 2, outside 0..1" in out


def test_classes_of_a_truth_slice_are_checked_where_they_are_taken(vol3, tmp_path):
    # value 2 only on slice 2, which init's sample of truth slices (0, 1, 3, 4, ...) does not read
    truth = (io.read_stack(vol3 / "vol" / "truth.tif") == 1).astype(np.uint8)
    truth[2, :8, :8] = 2
    io.write_stack(tmp_path / "truth.tif", truth, kind="labels")
    image = vol3 / "vol" / "image.tif"
    ok(["init", tmp_path / "inferred", "--image", image, "--truth", tmp_path / "truth.tif", "--config", vol3 / "tiny.toml"])
    assert json.loads((tmp_path / "inferred" / "activeseg.json").read_text())["config"]["n_classes"] == 3  # every slice read
    cfg = tmp_path / "two.toml"
    cfg.write_text((vol3 / "tiny.toml").read_text().replace("[session]\n", "[session]\nn_classes = 2\n"))
    ok(["init", tmp_path / "two", "--image", image, "--truth", tmp_path / "truth.tif", "--config", cfg])
    assert "slice 2 holds value 2, outside 0..1" in fails(["bootstrap", tmp_path / "two", "--slices", "2,9"])
    ok(["bootstrap", tmp_path / "two", "--slices", "3,9"])  # slices within the session's classes are fine
