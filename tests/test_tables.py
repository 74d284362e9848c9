"""Tables, the label-efficiency summary (activeseg.tables) and the report page (activeseg.report)."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from study_rows import row, study_rows

from activeseg import metrics, plots, report, tables
from activeseg.errors import ConfigError

DPI = 60


def test_importing_tables_and_report_does_not_import_matplotlib():
    code = "import sys, activeseg.tables, activeseg.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- paper table --------------------------------------------------------------------


def _results(nz=10):
    z = np.arange(nz, dtype=float)
    return {
        "20 Initial": {"bce": 0.1 + z / 100, "accuracy": 0.9 - z / 100},
        "20 Distributed": {"bce": 0.2 + z / 100, "accuracy": np.where(z == 5, np.nan, 0.95 - z / 100)},
        "5 Initial": {"accuracy": 0.8 + 0 * z},  # no probabilities: no loss
    }


def test_paper_table_layout_and_values():
    rows = tables.paper_table(_results(), [1, 5])
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

    named = tables.paper_table(_results(), {"Index-47 (z=1)": 1})
    assert named[0]["Predicted image"] == "Index-47 (z=1), Loss"
    with pytest.raises(ConfigError, match="outside"):
        tables.paper_table(_results(), [10])


def test_paper_table_reads_evaluations_over_a_subset_of_slices():
    rng = np.random.default_rng(2)
    truth = (rng.random((6, 8, 8)) > 0.3).astype(np.uint8)
    prob = np.clip(truth * 0.8 + rng.random(truth.shape) * 0.3, 0, 1).astype(np.float32)
    ev = metrics.evaluate((prob > 0.5).astype(np.uint8), truth, prob=prob, slices=[1, 4], boundary=False)
    rows = tables.paper_table({"ev": ev, "dict": ev.to_dict()}, [4, 1])
    assert rows[0]["ev"] == pytest.approx(ev.at(4)["bce"])
    assert rows[1]["dict"] == pytest.approx(ev.at(4)["accuracy"])
    assert rows[3]["ev"] == pytest.approx(ev.at(1)["accuracy"])
    with pytest.raises(ConfigError, match="not evaluated"):
        tables.paper_table({"ev": ev}, [2])


def test_paper_table_markdown_format():
    md = tables.paper_table_markdown(tables.paper_table(_results(), [1, 5]))
    lines = md.strip().splitlines()
    assert lines[0] == "| Predicted image | 20 Initial | 20 Distributed | 5 Initial |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| Index-1, Loss | 0.110 | 0.210 | n/a |"
    assert lines[5] == "| Index-5, Accuracy | 0.850 | n/a | 0.800 |"
    assert len(lines) == 6


# --- CSV ----------------------------------------------------------------------------


def test_index_proximity_names_indices_next_to_training_slices():
    labelled = {"20 distributed": [15, 45, 435], "20 initial": list(range(20)), "none": []}
    near = tables.index_proximity(labelled, [47, 434, 598], within=2)
    assert near == ["Index-47 is 2 slices from labelled slice 45 in 20 distributed.",
                    "Index-434 is 1 slice from labelled slice 435 in 20 distributed."]
    assert tables.index_proximity(labelled, [47, 434, 598], within=1) == [near[1]]
    assert tables.index_proximity({"a": [3], "b": [3]}, {"Index-3 (z=3)": 3}) == ["Index-3 (z=3) is a labelled slice in a, b."]
    assert tables.index_proximity(labelled, [300]) == []


def test_table_csv_round_trip(tmp_path):
    rows = [
        row("distributed", 0, 4, 0.123456789012345, cost=1234),
        row("random", 1, 6, None, cost=None, note="a, quoted \"text\"", flag=True),
    ]
    rows[0]["bce"] = float("nan")
    path = tables.table_csv(rows, tmp_path / "sub" / "rows.csv")
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
    eff = tables.label_efficiency(back, 0.5, fractions=(0.2,))
    assert eff["distributed"][0.2] == 4


# --- label efficiency ---------------------------------------------------------------


def test_label_efficiency_hand_computed():
    rows = [
        # A: seed means at 2, 4, 6 = 0.85, 0.93, 0.98
        row("A", 0, 2, 0.80), row("A", 0, 4, 0.90), row("A", 0, 6, 0.96),
        row("A", 1, 2, 0.90), row("A", 1, 4, 0.96), row("A", 1, 6, 1.00),
        # B: at 2 only seed 0 is finite (0.96); at 4 the mean is exactly 0.99
        row("B", 0, 2, 0.96), row("B", 1, 2, float("nan")), row("B", 2, 2, None),
        row("B", 0, 4, 0.99), row("B", 1, 4, 0.98), row("B", 2, 4, 1.00),
        # C never gets there
        row("C", 0, 2, 0.5), row("C", 0, 4, 0.6),
    ]  # fmt: skip
    eff = tables.label_efficiency(rows, 1.0)
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
    rows = [row("A", 0, 2, 0.4), row("A", 0, 2, 0.6), row("A", 0, 4, 0.7)]
    eff = tables.label_efficiency(rows, 0.6, fractions=(0.8, 1.0, 1.2))
    assert eff["A"]["curve"]["mean"] == pytest.approx([0.5, 0.7])
    assert eff["A"][0.8] == 2  # 0.5 >= 0.48
    assert eff["A"][1.0] == 4
    assert eff["A"][1.2] is None  # 0.72 never reached


def test_label_efficiency_splits_schedules_and_rejects_bad_input():
    rows = [row("A", 0, 2, 0.9, schedule="one-shot"), row("A", 0, 2, 0.5, schedule="iterative")]
    eff = tables.label_efficiency(rows, 1.0, fractions=(0.85,))
    assert eff["A (one-shot)"][0.85] == 2 and eff["A (iterative)"][0.85] is None
    with pytest.raises(ConfigError, match="ceiling"):
        tables.label_efficiency(rows, float("nan"))
    with pytest.raises(ConfigError, match="higher-is-better"):
        tables.label_efficiency(rows, 1.0, metric="bce")


def test_label_efficiency_markdown():
    rows = [row("A", 0, 2, 0.96), row("A", 0, 4, 0.99), row("C", 0, 2, 0.5), row("C", 0, 4, 0.6)]
    md = tables.label_efficiency_markdown(tables.label_efficiency(rows, 1.0))
    assert "solid-phase IoU = 1.000" in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].startswith("| strategy | slices to 95% (solid-phase IoU >= 0.950) |")
    assert table[2].startswith("| A | 2 | 2 | 4 | 4 | 0.990 | 4 | 1 |")
    assert "| C | not reached (max 4) | not reached |" in table[3]


# --- report page (activeseg.report) -------------------------------------------------


def test_write_report_md_links_relative_images_and_embeds_tables(tmp_path):
    png = plots.plot_learning_curves(study_rows(), tmp_path / "plots" / "lc.png", dpi=DPI, figsize=(4, 3))
    table = tables.paper_table_markdown(tables.paper_table(_results(), [1]))
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
    assert tables.json_float(float("nan")) is None
    assert tables.json_float(np.float32(0.5)) == 0.5
    assert math.isnan(tables.to_float("None"))
