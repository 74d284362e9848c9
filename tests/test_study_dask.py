"""Studies on Dask: the same results inline and on a local cluster, and a run whose worker
is killed mid-run is retried and resumes from its session."""

import json
import os
import signal
import threading
import time

import pytest

from activeseg import study
from activeseg.errors import ConfigError

# 2 runs x 3 rounds of 1 slice on a tiny volume, one thread per run (equal floats inline and on workers)
CONFIG = {"score_max_slices": 6, "export_radius": 1,
          "rf": {"n_estimators": 4, "max_depth": 6},
          "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]},
          "train": {"steps": 5, "patch_size": 32, "batch_size": 2, "eval_every": 5}}
RUNS = [study.RunSpec(f"{s}-it", s, 3, "iterative", 0, k0=1, k=1) for s in ("distributed", "random")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from activeseg import synth

    d = tmp_path_factory.mktemp("data")
    synth.save_synth(d, synth.synthesize((16, 48, 48), seed=4))
    return d


def _study(folder, data, **kw):
    res = study.run_study(folder, RUNS, image=data / "image.tif", truth=data / "truth.tif", depth=data / "depth.tif",
                          config=CONFIG, threads=1, **kw)
    assert all(r["status"] == "done" for r in res), res
    study.summarise(folder)
    return res


@pytest.fixture(scope="module")
def inline_study(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inline") / "st"
    res = _study(folder, data)
    return folder, res


def test_scheduler_choice():
    assert str(study.study_scheduler(None, 1, 4)) == "inline"
    assert str(study.study_scheduler(None, 3, 4)) == "local:3"
    assert str(study.study_scheduler(None, 3, 1)) == "inline"  # one run left: no cluster for it
    assert str(study.study_scheduler("local:4", 1, 2)) == "local:2"  # no more workers than runs
    assert str(study.study_scheduler("local:2", 2, 5)) == "local:2"  # --jobs 2 is local:2
    with pytest.raises(ConfigError, match="give only one"):
        study.study_scheduler("tcp://10.0.0.5:8786", 2, 5)
    with pytest.raises(ConfigError, match="local:N"):
        study.study_scheduler("local", 1, 5)


def test_cli_refuses_jobs_and_a_different_scheduler(tmp_path):
    from typer.testing import CliRunner

    from activeseg.cli import app

    res = CliRunner().invoke(app, ["study", str(tmp_path / "st"), "--jobs", "2", "--scheduler", "tcp://10.0.0.5:8786"])
    assert res.exit_code == 1
    assert "give only one" in res.output and "local:2" in res.output
    assert not (tmp_path / "st").exists()


def test_lost_tasks_are_submitted_again_then_recorded_as_failed(data, tmp_path, monkeypatch):
    from activeseg import cluster

    calls = []

    def lossy(client, fn, items, **kw):  # distributed-it is lost every time, random-it once
        calls.append([a[1]["name"] for a in items])
        assert kw.get("return_exceptions")
        for i, a in enumerate(items):
            lost = a[1]["name"] == "distributed-it" or len(calls) == 1
            yield i, (RuntimeError("worker lost") if lost else {"name": a[1]["name"], "status": "done", "attempts": 1})

    monkeypatch.setattr(cluster, "run_tasks", lossy)
    res = study.run_study(tmp_path / "st", RUNS, image=data / "image.tif", truth=data / "truth.tif", config=CONFIG)
    assert calls == [["distributed-it", "random-it"], ["distributed-it", "random-it"], ["distributed-it"]]
    by_name = {r["name"]: r for r in res}
    assert by_name["random-it"]["status"] == "done"
    assert by_name["distributed-it"]["status"] == "failed"
    assert "worker lost" in by_name["distributed-it"]["error"] and "run the study again" in by_name["distributed-it"]["error"]


def test_local_cluster_gives_the_inline_results(inline_study, data, tmp_path):
    ref, res_inline = inline_study
    assert [r["attempts"] for r in res_inline] == [1, 1]
    res = _study(tmp_path / "st", data, scheduler="local:2")
    assert sorted(r["attempts"] for r in res) == [1, 1]
    pids = {study.read_attempts(tmp_path / "st" / "runs" / r.name)[0]["pid"] for r in RUNS}
    assert os.getpid() not in pids  # the runs ran in worker processes
    assert (tmp_path / "st" / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    rows = json.loads((ref / "results.json").read_text())["rows"]
    assert len(rows) == 2 * 3 and "train_seconds" not in rows[0]  # timings only in results.csv
    assert "train_seconds" in (ref / "results.csv").read_text().splitlines()[0]


def _kill_mid_run(folder, killed, stop):
    """Kill the worker of the first run seen with a trained round > 0 but not its last."""
    while not stop.is_set():
        for r in RUNS:
            run_dir = folder / "runs" / r.name
            try:
                m = json.loads((run_dir / "activeseg.json").read_text())
                attempts = study.read_attempts(run_dir)
            except (OSError, ValueError):
                continue
            trained = [x["index"] for x in m["rounds"] if x.get("status") == "trained" and x["index"] > 0]
            if trained and len(trained) < len(r.rounds) and len(attempts) == 1 and attempts[0]["pid"] != os.getpid():
                os.kill(attempts[0]["pid"], signal.SIGKILL)
                killed.append((r.name, attempts[0]["pid"], max(trained)))
                return
        time.sleep(0.05)


@pytest.mark.slow  # a local cluster of 2 workers (each imports torch) and a run done twice: about a minute
def test_killed_worker_run_resumes_from_its_session(inline_study, data, tmp_path):
    ref, _ = inline_study
    folder = tmp_path / "st"
    killed: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_mid_run, args=(folder, killed, stop), daemon=True)
    watcher.start()
    try:
        res = _study(folder, data, scheduler="local:2")
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher never saw a run between two rounds"
    name, pid, committed = killed[0]
    attempts = study.read_attempts(folder / "runs" / name)
    assert len(attempts) == 2
    assert attempts[0]["pid"] == pid and attempts[1]["pid"] != pid
    assert attempts[1]["resumed_from_round"] >= committed >= 1  # went on from the session, not from scratch
    assert next(r for r in res if r["name"] == name)["attempts"] == 2
    assert json.loads((folder / "attempts.json").read_text())["runs"][name][1]["attempt"] == 2
    assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
