"""Plots, tables and the label-efficiency summary of activeseg.report."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from activeseg import metrics, report
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


def _row(strategy, seed, n, value, *, rnd=None, cost=None, schedule="iterative", **extra):
    r = {
        "run": f"{strategy}-{schedule}-s{seed}",
        "strategy": strategy,
        "schedule": schedule,
        "seed": seed,
        "round": n // 2 - 1 if rnd is None else rnd,
        "n_labelled": n,
        "accuracy": None if value is None else 0.8 + 0.1 * value,
        "iou_solid": value,
        "bce": 0.5,
        "porosity_error": 0.01,
        "grey_pore_error": None,
        "boundary_f1": float("nan"),
        "correction_cost": cost,
        "labelled": list(range(0, 4 * n, 4)),
    }
    r.update(extra)
    return r


def _study_rows():
    rows = []
    for s, strategy in enumerate(["distributed", "spaced_entropy"]):
        for seed in range(3):
            for k, n in enumerate((2, 4, 6, 8)):
                value = 0.5 + 0.05 * n + 0.1 * s + 0.01 * seed
                rows.append(_row(strategy, seed, n, value, rnd=k, cost=None if k == 0 else 1000 * (4 - k) + seed))
    return rows


# --- colours ------------------------------------------------------------------------


def test_colours_are_stable_per_strategy_and_trial_labels_inherit_them():
    assert report.color_for("distributed") == report.STRATEGY_COLORS["distributed"]
    assert report.color_for("20 distributed") == report.STRATEGY_COLORS["distributed"]
    assert report.color_for("entropy (iterative)") == report.STRATEGY_COLORS["entropy"]
    assert report.color_for("spaced_entropy k=2") == report.STRATEGY_COLORS["spaced_entropy"]
    assert report.color_for("my_plugin") == report.color_for("my_plugin")  # hash, not order
    assert len(set(report.STRATEGY_COLORS.values())) == len(report.STRATEGY_COLORS)

    st = report.line_styles(["20 initial", "5 initial", "20 distributed"])
    assert st["20 initial"]["color"] == st["5 initial"]["color"]
    assert st["20 initial"]["linestyle"] != st["5 initial"]["linestyle"]
    assert st["20 distributed"]["linestyle"] == "-"
    assert report.line_styles(["a"], {"a": "#000000"})["a"]["color"] == "#000000"


def test_paper_indices_keep_relative_positions():
    assert report.paper_indices(600) == [47, 434, 598]
    assert report.paper_indices(160) == [13, 116, 159]
    assert all(0 <= z < 8 for z in report.paper_indices(8))
    with pytest.raises(ConfigError):
        report.paper_indices(0)


def test_importing_report_does_not_import_matplotlib():
    code = "import sys, activeseg.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- plots --------------------------------------------------------------------------


def test_learning_curves_png_has_fixed_size_and_one_line_per_strategy(tmp_path):
    rows = _study_rows()
    # a third strategy whose metric is missing everywhere: not drawn, no crash
    rows += [_row("hybrid", seed, n, None) for seed in range(2) for n in (2, 4)]
    out = report.plot_learning_curves(rows, tmp_path / "lc.png", ceiling=0.95, fractions=(0.95,), figsize=(6, 3.5), dpi=DPI)
    assert out == tmp_path / "lc.png"
    img = _read_png(out)
    assert img.shape[:2] == (210, 360)
    assert _count_color(img, report.STRATEGY_COLORS["distributed"]) > 20
    assert _count_color(img, report.STRATEGY_COLORS["spaced_entropy"]) > 20
    assert _count_color(img, report.STRATEGY_COLORS["hybrid"]) == 0


def test_learning_curves_survive_nan_none_and_csv_strings(tmp_path):
    rows = _study_rows()
    rows[0]["iou_solid"] = float("nan")
    rows[1]["iou_solid"] = None
    rows[2]["iou_solid"] = "nan"
    rows[3]["iou_solid"] = ""
    report.plot_learning_curves(rows, tmp_path / "a.png", dpi=DPI, figsize=(5, 3))
    # every value missing: still a readable (empty) figure
    report.plot_learning_curves(rows, tmp_path / "b.png", metric="grey_pore_error", dpi=DPI, figsize=(5, 3))
    # two seeds (min-max band) and one seed (no band) also work
    report.plot_learning_curves([r for r in rows if r["seed"] < 2], tmp_path / "c.png", dpi=DPI, figsize=(5, 3))
    report.plot_learning_curves([r for r in rows if r["seed"] == 0], tmp_path / "d.png", dpi=DPI, figsize=(5, 3))
    for name in "abcd":
        _read_png(tmp_path / f"{name}.png")


def test_learning_curves_reject_bad_rows_with_a_useful_message(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        report.plot_learning_curves([], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="n_labelled"):
        report.plot_learning_curves([{"strategy": "a", "seed": 0, "iou_solid": 0.5}], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="must be a number"):
        report.plot_learning_curves([_row("a", 0, 2, 0.5, iou_solid="high")], tmp_path / "x.png")


def test_slice_metric_marks_labelled_slices_in_trial_colours(tmp_path):
    z = np.arange(40)
    per = {
        "20 initial": 0.9 + 0.02 * np.sin(z / 5),
        "20 distributed": np.where(z % 7 == 0, np.nan, 0.92 + 0.01 * np.cos(z / 4)),
    }
    labelled = {"20 initial": range(10), "20 distributed": range(0, 40, 4)}
    out = report.plot_slice_metric(
        per, tmp_path / "s.png", labelled=labelled, marks={"Index-3": 3, "Index-29": 29}, figsize=(7, 4), dpi=DPI
    )
    img = _read_png(out)
    assert img.shape[:2] == (240, 420)
    assert _count_color(img, report.STRATEGY_COLORS["initial"]) > 20
    assert _count_color(img, report.STRATEGY_COLORS["distributed"]) > 20
    # without labelled or marks, and with a list of z as marks
    report.plot_slice_metric({"x": [None] * 5}, tmp_path / "t.png", marks=[1, 3], dpi=DPI, figsize=(5, 3))
    _read_png(tmp_path / "t.png")


def test_slice_metric_validates_arrays(tmp_path):
    with pytest.raises(ConfigError, match="same stack"):
        report.plot_slice_metric({"a": np.zeros(5), "b": np.zeros(6)}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="outside the stack"):
        report.plot_slice_metric({"a": np.zeros(5)}, tmp_path / "x.png", labelled={"a": [7]})
    with pytest.raises(ConfigError, match=r"\(Z,\)"):
        report.plot_slice_metric({"a": np.zeros((5, 2))}, tmp_path / "x.png")


def test_porosity_profile_draws_truth_and_trials(tmp_path):
    z = np.arange(30)
    truth = 0.8 + 0.02 * np.sin(z / 4)
    per = {"5 initial": truth + 0.01, "5 distributed": np.where(z > 25, np.nan, truth - 0.02)}
    out = report.plot_porosity_profile(
        truth, per, tmp_path / "p.png", labelled={"5 initial": [0, 1, 2, 3, 4]}, marks=[2, 23], figsize=(7, 5), dpi=DPI
    )
    img = _read_png(out)
    assert img.shape[:2] == (300, 420)
    assert _count_color(img, "#000000", tol=0.05) > 50  # the truth line (thick, black)
    assert _count_color(img, report.STRATEGY_COLORS["distributed"]) > 20
    with pytest.raises(ConfigError, match="slices"):
        report.plot_porosity_profile(truth, {"a": truth[:10]}, tmp_path / "q.png")


def test_correction_cost_per_round_and_cumulative(tmp_path):
    rows = _study_rows()
    out = report.plot_correction_cost(rows, tmp_path / "c.png", figsize=(8, 3.5), dpi=DPI)
    img = _read_png(out)
    assert img.shape[:2] == (210, 480)
    assert _count_color(img, report.STRATEGY_COLORS["spaced_entropy"]) > 20
    report.plot_correction_cost(rows, tmp_path / "r.png", x="round", dpi=DPI, figsize=(6, 3))
    for r in rows:
        r["correction_cost"] = None
    report.plot_correction_cost(rows, tmp_path / "none.png", dpi=DPI, figsize=(6, 3))
    _read_png(tmp_path / "none.png")
    with pytest.raises(ConfigError, match="x must be"):
        report.plot_correction_cost(rows, tmp_path / "x.png", x="seed")


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
    bad = report.plot_prediction_panel(image, truth, preds_bad, tmp_path / "bad.png", z=7, panel_size=2.0, dpi=DPI)
    good = report.plot_prediction_panel(image, truth, preds_good, tmp_path / "good.png", z=7, panel_size=2.0, dpi=DPI)
    img_bad, img_good = _read_png(bad), _read_png(good)
    assert abs(img_bad.shape[1] - 5 * 2.0 * DPI) <= 1  # (a), (b) and three predictions
    orange = report._ERR_PORE_AS_SOLID
    assert _count_color(img_bad, orange) > _count_color(img_good, orange) + 200

    one_row = report.plot_prediction_panel(
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
    report.plot_prediction_panel(image, truth, {"a": np.ones_like(truth)}, tmp_path / "u.png", z=0, dpi=DPI)
    _read_png(tmp_path / "u.png")
    with pytest.raises(ConfigError, match="RGB"):
        report.plot_prediction_panel(np.zeros((8, 8, 3)), truth, {"a": truth}, tmp_path / "x.png", z=0)
    with pytest.raises(ConfigError, match="shape"):
        report.plot_prediction_panel(image, truth, {"a": truth[:5]}, tmp_path / "x.png", z=0)
    with pytest.raises(ConfigError, match="probability"):
        report.plot_prediction_panel(image, truth, {"a": np.full(truth.shape, 3.0)}, tmp_path / "x.png", z=0)


# --- paper table --------------------------------------------------------------------


def _results(nz=10):
    z = np.arange(nz, dtype=float)
    return {
        "20 Initial": {"bce": 0.1 + z / 100, "accuracy": 0.9 - z / 100},
        "20 Distributed": {"bce": 0.2 + z / 100, "accuracy": np.where(z == 5, np.nan, 0.95 - z / 100)},
        "5 Initial": {"accuracy": 0.8 + 0 * z},  # no probabilities: no loss
    }


def test_paper_table_layout_and_values():
    rows = report.paper_table(_results(), [1, 5])
    assert [r["Predicted image"] for r in rows] == [
        "Index-1, Loss",
        "Index-1, Accuracy",
        "Index-5, Loss",
        "Index-5, Accuracy",
    ]
    assert list(rows[0]) == ["Predicted image", "20 Initial", "20 Distributed", "5 Initial"]
    assert rows[0]["20 Initial"] == pytest.approx(0.11)
    assert rows[1]["20 Distributed"] == pytest.approx(0.94)
    assert rows[2]["20 Distributed"] == pytest.approx(0.25)
    assert rows[3]["20 Distributed"] is None  # NaN -> None
    assert rows[0]["5 Initial"] is None  # metric missing -> None
    assert rows[3]["5 Initial"] == pytest.approx(0.8)
    json.dumps(rows, allow_nan=False)  # JSON-safe

    named = report.paper_table(_results(), {"Index-47 (z=1)": 1})
    assert named[0]["Predicted image"] == "Index-47 (z=1), Loss"
    with pytest.raises(ConfigError, match="outside"):
        report.paper_table(_results(), [10])


def test_paper_table_reads_evaluations_over_a_subset_of_slices():
    rng = np.random.default_rng(2)
    truth = (rng.random((6, 8, 8)) > 0.3).astype(np.uint8)
    prob = np.clip(truth * 0.8 + rng.random(truth.shape) * 0.3, 0, 1).astype(np.float32)
    ev = metrics.evaluate((prob > 0.5).astype(np.uint8), truth, prob=prob, slices=[1, 4], boundary=False)
    rows = report.paper_table({"ev": ev, "dict": ev.to_dict()}, [4, 1])
    assert rows[0]["ev"] == pytest.approx(ev.at(4)["bce"])
    assert rows[1]["dict"] == pytest.approx(ev.at(4)["accuracy"])
    assert rows[3]["ev"] == pytest.approx(ev.at(1)["accuracy"])
    with pytest.raises(ConfigError, match="not evaluated"):
        report.paper_table({"ev": ev}, [2])


def test_paper_table_markdown_format():
    md = report.paper_table_markdown(report.paper_table(_results(), [1, 5]))
    lines = md.strip().splitlines()
    assert lines[0] == "| Predicted image | 20 Initial | 20 Distributed | 5 Initial |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| Index-1, Loss | 0.110 | 0.210 | n/a |"
    assert lines[5] == "| Index-5, Accuracy | 0.850 | n/a | 0.800 |"
    assert len(lines) == 6


# --- CSV ----------------------------------------------------------------------------


def test_index_proximity_names_indices_next_to_training_slices():
    labelled = {"20 distributed": [15, 45, 435], "20 initial": list(range(20)), "none": []}
    near = report.index_proximity(labelled, [47, 434, 598], within=2)
    assert near == ["Index-47 is 2 slices from labelled slice 45 in 20 distributed.",
                    "Index-434 is 1 slice from labelled slice 435 in 20 distributed."]
    assert report.index_proximity(labelled, [47, 434, 598], within=1) == [near[1]]
    assert report.index_proximity({"a": [3], "b": [3]}, {"Index-3 (z=3)": 3}) == ["Index-3 (z=3) is a labelled slice in a, b."]
    assert report.index_proximity(labelled, [300]) == []


def test_table_csv_round_trip(tmp_path):
    rows = [
        _row("distributed", 0, 4, 0.123456789012345, cost=1234),
        _row("random", 1, 6, None, cost=None, note="a, quoted \"text\"", flag=True),
    ]
    rows[0]["bce"] = float("nan")
    path = report.table_csv(rows, tmp_path / "sub" / "rows.csv")
    with open(path, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(rows[0]) + ["note", "flag"]
    assert float(back[0]["iou_solid"]) == rows[0]["iou_solid"]  # full precision
    assert back[0]["bce"] == "" and back[1]["iou_solid"] == ""
    assert back[0]["correction_cost"] == "1234" and back[1]["correction_cost"] == ""
    assert back[0]["labelled"] == "0;4;8;12"
    assert [int(v) for v in back[1]["labelled"].split(";")] == rows[1]["labelled"]
    assert back[1]["note"] == 'a, quoted "text"' and back[1]["flag"] == "true"
    assert back[0]["note"] == ""
    assert not (tmp_path / "sub" / "rows.csv.tmp").exists()
    # rows read back from CSV (all strings) feed the summaries unchanged
    eff = report.label_efficiency(back, 0.5, fractions=(0.2,))
    assert eff["distributed"][0.2] == 4


# --- label efficiency ---------------------------------------------------------------


def test_label_efficiency_hand_computed():
    rows = [
        # A: seed means at 2, 4, 6 = 0.85, 0.93, 0.98
        _row("A", 0, 2, 0.80), _row("A", 0, 4, 0.90), _row("A", 0, 6, 0.96),
        _row("A", 1, 2, 0.90), _row("A", 1, 4, 0.96), _row("A", 1, 6, 1.00),
        # B: at 2 only seed 0 is finite (0.96); at 4 the mean is exactly 0.99
        _row("B", 0, 2, 0.96), _row("B", 1, 2, float("nan")), _row("B", 2, 2, None),
        _row("B", 0, 4, 0.99), _row("B", 1, 4, 0.98), _row("B", 2, 4, 1.00),
        # C never gets there
        _row("C", 0, 2, 0.5), _row("C", 0, 4, 0.6),
    ]  # fmt: skip
    eff = report.label_efficiency(rows, 1.0)
    assert list(eff) == ["A", "B", "C"]
    a, b, c = eff["A"], eff["B"], eff["C"]
    assert a[0.95] == 6 and a[0.99] is None
    assert a["per_seed"][0.95] == {0: 6, 1: 4}
    assert a["seed_median"][0.95] == 5.0
    assert a["per_seed"][0.99] == {0: None, 1: 6}
    assert a["seed_median"][0.99] is None  # half the seeds never reach it
    assert a["curve"]["n_labelled"] == [2, 4, 6]
    assert a["curve"]["mean"] == pytest.approx([0.85, 0.93, 0.98])
    assert b[0.95] == 2 and b[0.99] == 4
    assert b["curve"]["n_seeds"] == [1, 3]
    assert b["seed_median"][0.99] == 4.0  # seeds reach 0.99 at 4, never, 4 -> median 4
    assert c[0.95] is None and c[0.99] is None
    assert c["target"][0.95] == pytest.approx(0.95)
    json.dumps({k: {str(f): v for f, v in e.items()} for k, e in eff.items()}, allow_nan=False)


def test_label_efficiency_scales_with_ceiling_and_averages_duplicates():
    rows = [_row("A", 0, 2, 0.4), _row("A", 0, 2, 0.6), _row("A", 0, 4, 0.7)]
    eff = report.label_efficiency(rows, 0.6, fractions=(0.8, 1.0, 1.2))
    assert eff["A"]["curve"]["mean"] == pytest.approx([0.5, 0.7])
    assert eff["A"][0.8] == 2  # 0.5 >= 0.48
    assert eff["A"][1.0] == 4
    assert eff["A"][1.2] is None  # 0.72 never reached


def test_label_efficiency_splits_schedules_and_rejects_bad_input():
    rows = [_row("A", 0, 2, 0.9, schedule="one-shot"), _row("A", 0, 2, 0.5, schedule="iterative")]
    eff = report.label_efficiency(rows, 1.0, fractions=(0.85,))
    assert eff["A (one-shot)"][0.85] == 2 and eff["A (iterative)"][0.85] is None
    with pytest.raises(ConfigError, match="ceiling"):
        report.label_efficiency(rows, float("nan"))
    with pytest.raises(ConfigError, match="higher-is-better"):
        report.label_efficiency(rows, 1.0, metric="bce")


def test_label_efficiency_markdown():
    rows = [_row("A", 0, 2, 0.96), _row("A", 0, 4, 0.99), _row("C", 0, 2, 0.5), _row("C", 0, 4, 0.6)]
    md = report.label_efficiency_markdown(report.label_efficiency(rows, 1.0))
    assert "solid-phase IoU = 1.000" in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| strategy | slices to 95% (solid-phase IoU >= 0.950) |")
    assert table[2].startswith("| A | 2 | 2 | 4 | 4 | 0.990 | 4 | 1 |")
    assert "| C | not reached (max 4) | not reached |" in table[3]


# --- report page --------------------------------------------------------------------


def test_write_report_md_links_relative_images_and_embeds_tables(tmp_path):
    png = report.plot_learning_curves(_study_rows(), tmp_path / "plots" / "lc.png", dpi=DPI, figsize=(4, 3))
    table = report.paper_table_markdown(report.paper_table(_results(), [1]))
    out = report.write_report_md(
        tmp_path / "report.md",
        title="Study on a hard synthetic volume",
        intro="Three seeds.",
        sections=[
            ("Learning curves", png, "solid-phase IoU vs labelled slices"),
            ("Table 1", table),
            ("By name", str(png)),
        ],
    )
    text = out.read_text()
    assert text.startswith("# Study on a hard synthetic volume\n")
    assert "![solid-phase IoU vs labelled slices](plots/lc.png)" in text
    assert "*solid-phase IoU vs labelled slices*" in text
    assert "![By name](plots/lc.png)" in text
    assert "| Index-1, Loss | 0.110 | 0.210 | n/a |" in text
    assert text.index("## Learning curves") < text.index("## Table 1")
    with pytest.raises(ConfigError, match="sections"):
        report.write_report_md(tmp_path / "r.md", title="x", sections=[("only heading",)])


def test_nan_helpers_are_json_safe():
    assert report._json_float(float("nan")) is None
    assert report._json_float(np.float32(0.5)) == 0.5
    assert math.isnan(report._num("None"))
