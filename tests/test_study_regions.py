"""Region studies: cost columns, curves by reviewed pixels, the reviewed-area table and the stopping rule."""

import csv
import json

import pytest

from activeseg import study

STUDY_CONFIG = {"session": {"score_max_slices": 8, "export_radius": 1, "tile": 24}, "train": {"steps": 2}}


def test_regions_preset_sizes_tile_rounds_by_reviewed_area():
    runs = study.regions_preset([0, 1], slice_shape=(192, 192), tile=64, steps_per_round=10)
    tiles = [r for r in runs if r.strategy.startswith("tile_")]
    slices = [r for r in runs if r.strategy in ("distributed", "spaced_entropy")]
    assert {r.strategy for r in tiles} == {"tile_entropy", "tile_boundary", "tile_random"} and len(tiles) == 6
    assert len(slices) == 4 and all(r.rounds == [2] * 6 for r in slices)
    # 2 slices of 192² = 18 tiles of 64²: a tile round is a quarter of that (4.5 -> 4 tiles)
    assert all(r.rounds == [4] * 12 for r in tiles)
    assert all(r.audit and r.config == {"tile": 64} for r in tiles + slices)
    (ceiling,) = [r for r in runs if r.strategy == study.CEILING]
    assert ceiling.train_steps == 10 * 12
    assert study.run_effort(tiles[0], 64) == round(study.REGION_EFFORT * 64 * 64)
    assert study.run_effort(slices[0], 64) is None  # whole slices: the perfect oracle
    assert study.run_effort(study.RunSpec("t", "tile_random", 4, human="perfect"), 64) is None
    assert study.run_effort(study.RunSpec("t", "tile_random", 4, effort=50), 64) == 50


def test_tiny_region_study_has_cost_curves_reviewed_area_and_stopping(tmp_path, tiny_config):
    from activeseg import synth
    from activeseg.loop import load_config

    synth.save_synth(tmp_path / "data", synth.synthesize((6, 48, 48), seed=2))
    tiny_config(tmp_path / "tiny.toml", **STUDY_CONFIG)
    cfg = load_config(tmp_path / "tiny.toml")
    runs = [study.RunSpec("distributed-it", "distributed", 2, "iterative", 0, k0=1, k=1, audit=True),
            study.RunSpec("tile_random-it", "tile_random", 4, "iterative", 0, k0=2, k=2, audit=True),
            study.RunSpec(study.CEILING, study.CEILING, 0)]
    res = study.run_study(tmp_path / "st", runs, image=tmp_path / "data" / "image.tif",
                          truth=tmp_path / "data" / "truth.tif", config=cfg, bootstrap_slices=2)
    assert all(r["status"] == "done" for r in res), res
    out = study.summarise(tmp_path / "st")
    data = json.loads((tmp_path / "st" / "results.json").read_text())
    by_run = {}
    for r in data["rows"]:
        by_run.setdefault(r["run"], []).append(r)
    tile_rows = sorted(by_run["tile_random-it"], key=lambda r: r["round"])
    slice_rows = sorted(by_run["distributed-it"], key=lambda r: r["round"])
    assert [r["unit"] for r in tile_rows] == ["tiles", "tiles"]
    # a slice round reviews its slice and the audit slice; a tile round its 2 tiles and the audit tiles (24² each)
    assert slice_rows[0]["reviewed_px"] == 2 * 48 * 48
    assert tile_rows[0]["reviewed_px"] % (24 * 24) == 0 and tile_rows[0]["reviewed_px"] >= 3 * 24 * 24
    assert tile_rows[1]["reviewed_cum"] == tile_rows[0]["reviewed_px"] + tile_rows[1]["reviewed_px"]
    assert tile_rows[1]["reviewed_slices"] == pytest.approx(tile_rows[1]["reviewed_cum"] / (48 * 48))
    assert all(0 <= r["changed_px"] <= r["reviewed_px"] for r in tile_rows + slice_rows)
    # the stopping rule replayed: an estimate of the pre-filling model with its interval, not stopping yet
    for r in tile_rows + slice_rows:
        assert r["est_lo"] <= r["est_iou"] <= r["est_hi"] and r["stop"] is False
    assert tile_rows[1]["prefill_iou"] == tile_rows[0]["iou_solid"]  # round 2 was pre-filled by round 1's model
    with open(tmp_path / "st" / "results.csv") as f:
        header = next(csv.reader(f))
    assert {"reviewed_cum", "changed_cum", "reviewed_slices", "est_iou", "stop"} <= set(header)
    # the summary: the reviewed-area table for every strategy, the stopping table, the cost curves
    assert set(out["reviewed_area"]) == {"distributed", "tile_random"}
    assert "slice-equivalents" in (tmp_path / "st" / "reviewed_area.md").read_text()
    assert {p["run"] for p in out["stopping"]["runs"]} == {"distributed-it", "tile_random-it"}
    assert all(p["stop_round"] is None and p["audited"] == 2 for p in out["stopping"]["runs"])
    assert "rule stops at" in (tmp_path / "st" / "stopping.md").read_text()
    assert (tmp_path / "st" / "plots" / "learning_curves_reviewed.png").stat().st_size > 5000
    report = (tmp_path / "st" / "report.md").read_text()
    assert "learning_curves_reviewed.png" in report and "learning_curves_changed.png" in report
    assert set(out["label_efficiency"]) == {"distributed"}  # slices to the ceiling: whole-slice runs only
