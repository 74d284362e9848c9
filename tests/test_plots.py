"""Figures of activeseg.plots: pixel sizes, stable colours, NaN handling, input checks."""

import subprocess
import sys

import numpy as np
import pytest
from study_rows import row, study_rows

from activeseg import plots
from activeseg.errors import ConfigError

DPI = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 4000, f"{path.name} is only {len(data)} bytes"
    return imread(path)


def _count_color(img, color, tol=0.06):
    """Pixels within ``tol`` of a colour (a drawn line/marker/rug in that colour)."""
    from matplotlib.colors import to_rgb

    rgb = np.asarray(to_rgb(color))
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).sum())


# --- colours ------------------------------------------------------------------------


def test_colours_are_stable_per_strategy_and_trial_labels_inherit_them():
    assert plots.color_for("distributed") == plots.STRATEGY_COLORS["distributed"]
    assert plots.color_for("20 distributed") == plots.STRATEGY_COLORS["distributed"]
    assert plots.color_for("entropy (iterative)") == plots.STRATEGY_COLORS["entropy"]
    assert plots.color_for("spaced_entropy k=2") == plots.STRATEGY_COLORS["spaced_entropy"]
    assert plots.color_for("my_plugin") == plots.color_for("my_plugin")  # hash, not order
    assert len(set(plots.STRATEGY_COLORS.values())) == len(plots.STRATEGY_COLORS)

    st = plots.line_styles(["20 initial", "5 initial", "20 distributed"])
    assert st["20 initial"]["color"] == st["5 initial"]["color"]
    assert st["20 initial"]["linestyle"] != st["5 initial"]["linestyle"]
    assert st["20 distributed"]["linestyle"] == "-"
    assert plots.line_styles(["a"], {"a": "#000000"})["a"]["color"] == "#000000"


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, activeseg.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- plots --------------------------------------------------------------------------


def test_learning_curves_png_has_fixed_size_and_one_line_per_strategy(tmp_path):
    rows = study_rows()
    # a third strategy whose metric is missing everywhere: not drawn, no crash
    rows += [row("hybrid", seed, n, None) for seed in range(2) for n in (2, 4)]
    out = plots.plot_learning_curves(rows, tmp_path / "lc.png", ceiling=0.95, fractions=(0.95,), figsize=(6, 3.5), dpi=DPI)
    assert out == tmp_path / "lc.png"
    img = _read_png(out)
    assert img.shape[:2] == (210, 360)
    assert _count_color(img, plots.STRATEGY_COLORS["distributed"]) > 20
    assert _count_color(img, plots.STRATEGY_COLORS["spaced_entropy"]) > 20
    assert _count_color(img, plots.STRATEGY_COLORS["hybrid"]) == 0


def test_learning_curves_survive_nan_none_and_csv_strings(tmp_path):
    rows = study_rows()
    rows[0]["iou_solid"] = float("nan")
    rows[1]["iou_solid"] = None
    rows[2]["iou_solid"] = "nan"
    rows[3]["iou_solid"] = ""
    plots.plot_learning_curves(rows, tmp_path / "a.png", dpi=DPI, figsize=(5, 3))
    # every value missing: still a readable (empty) figure
    plots.plot_learning_curves(rows, tmp_path / "b.png", metric="grey_pore_error", dpi=DPI, figsize=(5, 3))
    # two seeds (min-max band) and one seed (no band) also work
    plots.plot_learning_curves([r for r in rows if r["seed"] < 2], tmp_path / "c.png", dpi=DPI, figsize=(5, 3))
    plots.plot_learning_curves([r for r in rows if r["seed"] == 0], tmp_path / "d.png", dpi=DPI, figsize=(5, 3))
    for name in "abcd":
        _read_png(tmp_path / f"{name}.png")


def test_learning_curves_reject_bad_rows_with_a_useful_message(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        plots.plot_learning_curves([], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="n_labelled"):
        plots.plot_learning_curves([{"strategy": "a", "seed": 0, "iou_solid": 0.5}], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="must be a number"):
        plots.plot_learning_curves([row("a", 0, 2, 0.5, iou_solid="high")], tmp_path / "x.png")


def test_slice_metric_marks_labelled_slices_in_trial_colours(tmp_path):
    z = np.arange(40)
    per = {
        "20 initial": 0.9 + 0.02 * np.sin(z / 5),
        "20 distributed": np.where(z % 7 == 0, np.nan, 0.92 + 0.01 * np.cos(z / 4)),
    }
    labelled = {"20 initial": range(10), "20 distributed": range(0, 40, 4)}
    out = plots.plot_slice_metric(
        per, tmp_path / "s.png", labelled=labelled, marks={"Index-3": 3, "Index-29": 29}, figsize=(7, 4), dpi=DPI
    )
    img = _read_png(out)
    assert img.shape[:2] == (240, 420)
    assert _count_color(img, plots.STRATEGY_COLORS["initial"]) > 20
    assert _count_color(img, plots.STRATEGY_COLORS["distributed"]) > 20
    # without labelled or marks, and with a list of z as marks
    plots.plot_slice_metric({"x": [None] * 5}, tmp_path / "t.png", marks=[1, 3], dpi=DPI, figsize=(5, 3))
    _read_png(tmp_path / "t.png")


def test_slice_metric_validates_arrays(tmp_path):
    with pytest.raises(ConfigError, match="same stack"):
        plots.plot_slice_metric({"a": np.zeros(5), "b": np.zeros(6)}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="outside the stack"):
        plots.plot_slice_metric({"a": np.zeros(5)}, tmp_path / "x.png", labelled={"a": [7]})
    with pytest.raises(ConfigError, match=r"\(Z,\)"):
        plots.plot_slice_metric({"a": np.zeros((5, 2))}, tmp_path / "x.png")


def test_porosity_profile_draws_truth_and_trials(tmp_path):
    z = np.arange(30)
    truth = 0.8 + 0.02 * np.sin(z / 4)
    per = {"5 initial": truth + 0.01, "5 distributed": np.where(z > 25, np.nan, truth - 0.02)}
    out = plots.plot_porosity_profile(
        truth, per, tmp_path / "p.png", labelled={"5 initial": [0, 1, 2, 3, 4]}, marks=[2, 23], figsize=(7, 5), dpi=DPI
    )
    img = _read_png(out)
    assert img.shape[:2] == (300, 420)
    assert _count_color(img, "#000000", tol=0.05) > 50  # the truth line (thick, black)
    assert _count_color(img, plots.STRATEGY_COLORS["distributed"]) > 20
    with pytest.raises(ConfigError, match="slices"):
        plots.plot_porosity_profile(truth, {"a": truth[:10]}, tmp_path / "q.png")


def test_correction_cost_per_round_and_cumulative(tmp_path):
    rows = study_rows()
    out = plots.plot_correction_cost(rows, tmp_path / "c.png", figsize=(8, 3.5), dpi=DPI)
    img = _read_png(out)
    assert img.shape[:2] == (210, 480)
    assert _count_color(img, plots.STRATEGY_COLORS["spaced_entropy"]) > 20
    plots.plot_correction_cost(rows, tmp_path / "r.png", x="round", dpi=DPI, figsize=(6, 3))
    for r in rows:
        r["correction_cost"] = None
    plots.plot_correction_cost(rows, tmp_path / "none.png", dpi=DPI, figsize=(6, 3))
    _read_png(tmp_path / "none.png")
    with pytest.raises(ConfigError, match="x must be"):
        plots.plot_correction_cost(rows, tmp_path / "x.png", x="seed")


def _slice_pair(rng, shape=(24, 32)):
    truth = (rng.random(shape) > 0.25).astype(np.uint8)
    image = (truth * 150 + rng.normal(40, 10, shape)).astype(np.float32)
    return image, truth


def test_prediction_panel_layout_and_error_maps(tmp_path):
    rng = np.random.default_rng(0)
    image, truth = _slice_pair(rng)
    missed = truth.copy()
    missed[truth == 1] = 0  # every pore called solid: maximal pore-back error
    preds_bad = {"20 initial": missed, "20 distributed": truth.copy(), "5 initial": rng.random(truth.shape)}
    preds_good = {"20 initial": truth.copy(), "20 distributed": truth.copy(), "5 initial": truth.astype(np.float32)}
    bad = plots.plot_prediction_panel(image, truth, preds_bad, tmp_path / "bad.png", z=7, panel_size=2.0, dpi=DPI)
    good = plots.plot_prediction_panel(image, truth, preds_good, tmp_path / "good.png", z=7, panel_size=2.0, dpi=DPI)
    img_bad, img_good = _read_png(bad), _read_png(good)
    assert abs(img_bad.shape[1] - 5 * 2.0 * DPI) <= 1  # (a), (b) and three predictions
    orange = plots._ERR_PORE_AS_SOLID
    assert _count_color(img_bad, orange) > _count_color(img_good, orange) + 200

    one_row = plots.plot_prediction_panel(
        image, truth, {"only": truth}, tmp_path / "one.png", z=7, errors=False, panel_size=2.0, dpi=DPI
    )
    img_one = _read_png(one_row)
    assert abs(img_one.shape[1] - 3 * 2.0 * DPI) <= 1
    assert img_one.shape[0] < img_good.shape[0]  # no error row


def test_prediction_panel_ignores_unlabelled_truth_and_validates(tmp_path):
    rng = np.random.default_rng(1)
    image, truth = _slice_pair(rng)
    truth = truth.copy()
    truth[:4] = 255
    plots.plot_prediction_panel(image, truth, {"a": np.ones_like(truth)}, tmp_path / "u.png", z=0, dpi=DPI)
    _read_png(tmp_path / "u.png")
    with pytest.raises(ConfigError, match="RGB"):
        plots.plot_prediction_panel(np.zeros((8, 8, 3)), truth, {"a": truth}, tmp_path / "x.png", z=0)
    with pytest.raises(ConfigError, match="shape"):
        plots.plot_prediction_panel(image, truth, {"a": truth[:5]}, tmp_path / "x.png", z=0)
    with pytest.raises(ConfigError, match="probability"):
        plots.plot_prediction_panel(image, truth, {"a": np.full(truth.shape, 3.0)}, tmp_path / "x.png", z=0)
