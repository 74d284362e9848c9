import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from activeseg import study
from activeseg.cli import app
from activeseg.errors import ConfigError, SessionError

runner = CliRunner()
STUDY_CONFIG = {"session": {"score_max_slices": 6, "export_radius": 3}, "train": {"steps": 2}}



def test_run_spec_rounds_and_grid():
    assert study.RunSpec("a", "random", 5).rounds == [5]
    assert study.RunSpec("a", "random", 7, "iterative", k0=3, k=2).rounds == [3, 2, 2]
    runs = study.plan_grid(["initial", "distributed"], [5, 20], [0, 1], ("one-shot", "iterative"))
    oneshot = [r for r in runs if r.schedule == "one-shot"]
    iterative = [r for r in runs if r.schedule == "iterative"]
    assert len(oneshot) == 2 * 2 * 2
    assert len(iterative) == 2 * 2 and all(r.budget == 20 for r in iterative)  # passes through 5 on the way
    assert len({r.name for r in runs}) == len(runs)
    with pytest.raises(ConfigError, match="schedule"):
        study.RunSpec("a", "random", 5, "sometimes")
    eff = study.efficiency_preset([0, 1], steps_per_round=30)
    curves = [r for r in eff if r.strategy != study.CEILING]
    assert len(curves) == 6 * 2 and all(r.rounds == [2, 2, 2, 2, 2, 2] for r in curves)
    (ceiling,) = [r for r in eff if r.strategy == study.CEILING]
    assert ceiling.train_steps == 30 * 6  # as much training as a whole learning curve
    paper = study.paper_preset()
    labels = [r.trial for r in paper if r.schedule == "one-shot"]
    assert {"5 initial", "5 distributed", "20 initial", "20 distributed"} <= set(labels)


def test_demo_quick_runs_end_to_end(tmp_path):
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "Otsu" in res.output and "report:" in res.output
    rows = list(csv.DictReader(open(tmp_path / "demo" / "study" / "results.csv")))
    assert {r["strategy"] for r in rows} == {"distributed", "spaced_entropy"}
    assert sorted({int(r["n_labelled"]) for r in rows}) == [1, 2]
    report = (tmp_path / "demo" / "study" / "report.md").read_text()
    assert "learning_curves.png" in report
    assert (tmp_path / "demo" / "study" / "plots" / "learning_curves.png").stat().st_size > 5000


def test_two_run_study_with_paper_table_resumes(tmp_path, tiny_config):
    tiny_config(tmp_path / "tiny.toml", **STUDY_CONFIG)
    args = ["study", str(tmp_path / "st"), "--strategies", "initial,distributed", "--budgets", "2",
            "--shape", "12", "48", "48", "--config", str(tmp_path / "tiny.toml")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Index-" in res.output
    assert "Index-1 is a labelled slice in 2 initial" in res.output
    rows = list(csv.DictReader(open(tmp_path / "st" / "results.csv")))
    assert len(rows) == 2
    assert {r["strategy"] for r in rows} == {"initial", "distributed"}
    initial = next(r for r in rows if r["strategy"] == "initial")
    assert initial["labelled"] == "0;1"  # top of the stack
    table = (tmp_path / "st" / "paper_table.md").read_text()
    assert "Loss" in table and "Accuracy" in table
    # Index-1 of 12 is the second training slice of "initial": the table says so
    assert "Index-1 is a labelled slice in 2 initial." in table
    manifest = (tmp_path / "st" / "runs" / rows[0]["run"] / "activeseg.json").read_bytes()
    res = runner.invoke(app, args)  # nothing left to do: finished runs are not redone
    assert res.exit_code == 0, res.output
    assert (tmp_path / "st" / "runs" / rows[0]["run"] / "activeseg.json").read_bytes() == manifest


def test_study_with_ceiling_gives_label_efficiency(tmp_path, tiny_config):
    import numpy as np

    from activeseg import synth

    vol = synth.synthesize((10, 48, 48), rng=np.random.default_rng(3))
    synth.save_synth(tmp_path / "data", vol)
    from activeseg.loop import load_config

    tiny_config(tmp_path / "tiny.toml", **STUDY_CONFIG)
    cfg = load_config(tmp_path / "tiny.toml")
    runs = [study.RunSpec("distributed-it", "distributed", 2, "iterative", 0, k0=1, k=1),
            study.RunSpec(study.CEILING, study.CEILING, 0)]
    res = study.run_study(tmp_path / "st", runs, image=tmp_path / "data" / "image.tif",
                          truth=tmp_path / "data" / "truth.tif", depth=tmp_path / "data" / "depth.tif", config=cfg)
    assert all(r["status"] == "done" for r in res), res
    out = study.summarise(tmp_path / "st")
    assert out["ceiling_iou_solid"] is not None
    assert set(out["label_efficiency"]) == {"distributed"}
    data = json.loads((tmp_path / "st" / "results.json").read_text())
    assert len([r for r in data["rows"] if r["run"] == "distributed-it"]) == 2
    with pytest.raises(Exception, match="other inputs or settings"):
        study.run_study(tmp_path / "st", runs, image=tmp_path / "data" / "image.tif",
                        truth=tmp_path / "data" / "truth.tif", config={"seed": 5})


def test_trials_are_averaged_over_seeds_and_changed_runs_are_refused(tmp_path, tiny_config):
    from activeseg import synth
    from activeseg.loop import load_config

    synth.save_synth(tmp_path / "data", synth.synthesize((12, 48, 48), seed=3))
    tiny_config(tmp_path / "tiny.toml", **STUDY_CONFIG)
    cfg = load_config(tmp_path / "tiny.toml")
    runs = study.plan_grid(["distributed"], [2], [0, 1])
    kw = dict(image=tmp_path / "data" / "image.tif", truth=tmp_path / "data" / "truth.tif", config=cfg)
    assert all(r["status"] == "done" for r in study.run_study(tmp_path / "st", runs, **kw))
    out = study.summarise(tmp_path / "st")
    def current_metrics(run_dir):  # the file of the model the round made current (the gate may keep the RF)
        m = json.loads((run_dir / "activeseg.json").read_text())
        return json.loads((run_dir / m["rounds"][1]["metrics_file"]).read_text())

    per_seed = [current_metrics(tmp_path / "st" / "runs" / r.name) for r in runs]
    z = out["paper_indices"][1]
    row = next(r for r in out["paper_table"] if r["Predicted image"] == f"Index-{z}, Accuracy")
    assert row["2 distributed"] == pytest.approx(np.mean([p["per_slice"]["accuracy"][z] for p in per_seed]))
    changed = [study.RunSpec(r.name, r.strategy, r.budget, "iterative", r.seed, k0=1, k=1) for r in runs]
    with pytest.raises(SessionError, match="other settings"):
        study.run_study(tmp_path / "st", changed, **kw)


def test_demo_refuses_a_folder_holding_another_demo(tmp_path):
    from activeseg import synth

    synth.save_synth(tmp_path / "demo" / "data", synth.synthesize((8, 32, 32), seed=0))
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 1
    assert "already holds a synthetic volume" in res.output
