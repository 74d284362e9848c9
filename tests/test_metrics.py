import numpy as np
import pytest

from activeseg import metrics
from activeseg.errors import ActiveSegError, ConfigError


def _pair():
    truth = np.ones((2, 4, 4), np.uint8)
    truth[:, 1:3, 1:3] = 0  # a 2x2 solid square per slice
    pred = truth.copy()
    pred[0, 1, 1] = 1  # one solid pixel missed in slice 0
    pred[1, 0, 0] = 0  # one pore pixel called solid in slice 1
    return pred, truth


def test_accuracy_iou_dice_by_hand():
    pred, truth = _pair()
    assert metrics.accuracy(pred, truth) == pytest.approx(30 / 32)
    # solid: truth 8 px, pred 8 px, intersection 7 -> IoU 7/9, Dice 14/16
    assert metrics.iou(pred, truth, 0) == pytest.approx(7 / 9)
    assert metrics.dice(pred, truth, 0) == pytest.approx(14 / 16)
    assert metrics.iou(pred, truth, 1) == pytest.approx(23 / 25)
    assert metrics.porosity(truth) == pytest.approx(24 / 32)
    assert metrics.porosity_error(pred, truth) == pytest.approx(0.0)


def test_evaluate_per_slice_and_overall_agree_with_helpers():
    pred, truth = _pair()
    ev = metrics.evaluate(pred, truth)
    assert ev.per_slice["accuracy"] == pytest.approx([15 / 16, 15 / 16])
    assert ev.per_slice["iou_solid"] == pytest.approx([3 / 4, 4 / 5])
    assert ev.overall["iou_solid"] == pytest.approx(metrics.iou(pred, truth, 0))
    assert ev.per_slice["porosity_error"] == pytest.approx([1 / 16, -1 / 16])
    assert ev.at(1)["accuracy"] == pytest.approx(15 / 16)
    with pytest.raises(ConfigError, match="not evaluated"):
        metrics.evaluate(pred, truth, slices=[0]).at(1)


def test_bce_matches_formula_and_clips():
    truth = np.array([[[1, 0]]], np.uint8)
    prob = np.array([[[0.8, 0.3]]], np.float32)
    expected = -(np.log(0.8) + np.log(0.7)) / 2
    assert metrics.bce(prob, truth) == pytest.approx(expected, rel=1e-6)
    # certain and wrong is large but finite (clipped at 1e-7)
    worst = metrics.bce(np.array([[[0.0, 1.0]]]), truth)
    assert worst == pytest.approx(-np.log(1e-7), rel=1e-6)
    ev = metrics.evaluate(truth, truth, prob=prob)
    assert ev.overall["bce"] == pytest.approx(expected, rel=1e-6)


def test_one_class_slices_are_well_defined():
    truth = np.ones((1, 8, 8), np.uint8)  # all pore, no solid anywhere
    ev = metrics.evaluate(truth.copy(), truth)
    assert ev.overall["iou_solid"] == 1.0  # nothing to find, nothing found
    assert ev.overall["boundary_f1"] == 1.0
    wrong = truth.copy()
    wrong[0, 0, 0] = 0
    ev = metrics.evaluate(wrong, truth)
    assert ev.overall["iou_solid"] == 0.0
    assert np.isfinite(ev.overall["iou_pore"])
    assert ev.overall["boundary_f1"] == 0.0


def test_boundary_f1_tolerance():
    truth = np.ones((1, 20, 20), np.uint8)
    truth[0, 5:15, 5:15] = 0
    shifted = np.roll(truth, 1, axis=2)
    assert metrics.boundary_f1(truth, truth) == 1.0
    assert metrics.boundary_f1(shifted, truth, tolerance=1.5) == 1.0
    assert metrics.boundary_f1(shifted, truth, tolerance=0.0) < 0.8


def test_grey_pore_error_counts_only_near_back_walls():
    truth = np.array([[[1, 1, 1, 0]]], np.uint8)
    depth = np.array([[[2.0, 9.0, -1.0, 0.0]]], np.float32)
    pred = np.array([[[0, 0, 1, 0]]], np.uint8)  # both "grey-looking" pores called solid
    # only the first pore is grey (depth 2 <= 5); the deep one (9) and the no-hit one are not
    assert metrics.grey_pore_error(pred, truth, depth, max_depth=5) == 1.0
    assert metrics.grey_pore_error(pred, truth, depth, max_depth=10) == 1.0
    pred[0, 0, 0] = 1
    assert metrics.grey_pore_error(pred, truth, depth, max_depth=10) == 0.5
    assert np.isnan(metrics.grey_pore_error(pred, truth, np.zeros_like(depth)))
    ev = metrics.evaluate(pred, truth, depth=depth, grey_depth=10)
    assert ev.overall["grey_pore_error"] == 0.5


def test_evaluate_streams_from_memmap(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.random((5, 16, 16)) < 0.8).astype(np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "t.npy", mode="w+", dtype=np.uint8, shape=truth.shape)
    mm[:] = truth
    ev = metrics.evaluate(mm, truth, slices=[1, 3])
    assert list(ev.slices) == [1, 3]
    assert ev.overall["accuracy"] == 1.0


def test_bad_inputs_are_clear():
    with pytest.raises(ConfigError, match="does not match"):
        metrics.accuracy(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ActiveSegError, match="255 = unlabelled"):
        metrics.evaluate(np.full((1, 2, 2), 255, np.uint8), np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ConfigError, match="prob shape"):
        metrics.evaluate(np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8), prob=np.zeros((1, 2, 3)))


def test_paper_indices_keep_relative_positions():
    assert metrics.paper_indices(600) == [47, 434, 598]
    assert metrics.paper_indices(160) == [13, 116, 159]
    assert all(0 <= z < 8 for z in metrics.paper_indices(8))
    with pytest.raises(ConfigError):
        metrics.paper_indices(0)
