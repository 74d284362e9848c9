"""The whole terminal workflow through the CLI, kill/resume, and bad input (tiny data, CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from activeseg import io
from activeseg.cli import app

runner = CliRunner()



def ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return res.output


def fails(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code != 0, f"{args} should fail\n{res.output}"
    assert "Traceback" not in res.output
    assert "error:" in res.output
    return res.output


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("synth")
    ok(["synth", d / "vol", "--shape", 12, 48, 48, "--seed", 1])
    tiny_config(d / "tiny.toml")
    return d


@pytest.fixture
def session(data, tmp_path):
    s = tmp_path / "s"
    ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / "tiny.toml"])
    return s


def _write_truth_into_masks(session, data, round_index):
    truth = io.read_stack(data / "vol" / "truth.tif")
    folder = session / "rounds" / f"r{round_index:03d}"
    zs = []
    for p in sorted(folder.glob("z*_mask.tif")):
        z = int(p.name[1:5])
        io.write_stack(p, truth[z][None], kind="labels")
        zs.append(z)
    return zs


def _manifest(session):
    return (session / "activeseg.json").read_bytes()


def test_whole_cli_session(data, session, tmp_path):
    out = ok(["bootstrap", session, "--slices", "2,9"])
    assert "next:" in out and "query" in out
    out = ok(["query", session, "-n", 2, "--strategy", "distributed"])
    assert "round 1" in out
    zs = _write_truth_into_masks(session, data, 1)
    assert len(zs) == 2 and (session / "rounds" / "r001" / f"z{zs[0]:04d}_preview.png").exists()
    out = ok(["import", session])
    assert "pixels corrected" in out
    out = ok(["train", session, "--steps", 2])
    assert "solid IoU" in out  # evaluated against the truth found beside the image
    out = ok(["query", session, "-n", 2, "--strategy", "entropy", "--audit"])
    st = json.loads(ok(["status", session, "--json"]))
    assert st["labelled_slices"] == sorted([2, 9, *zs])
    assert "import" in st["next_step"]
    assert len(st["rounds"][-1]["queried"]) == 3  # 2 + the audit slice
    text = ok(["status", session])
    assert "▲" in text
    ok(["export", session, tmp_path / "seg.tif", "--values", "0,255"])
    seg = io.read_stack(tmp_path / "seg.tif")
    assert seg.shape == (12, 48, 48) and set(np.unique(seg)) <= {0, 255}
    truth = io.read_stack(data / "vol" / "truth.tif")
    assert np.array_equal(seg[2] == 255, truth[2] == 1)  # labelled slices come from their labels
    assert (tmp_path / "seg.porosity.csv").read_text().startswith("z,porosity,labelled")
    ok(["predict", session, data / "vol" / "image.tif", tmp_path / "pred.tif"])
    assert io.read_stack(tmp_path / "pred.tif").shape == (12, 48, 48)


def test_run_drives_rounds_with_the_truth_oracle(data, session):
    out = ok(["run", session, "--strategy", "random", "-n", 1, "--rounds", 2, "--first-strategy", "distributed"])
    assert out.count("solid IoU") == 2
    st = json.loads(ok(["status", session, "--json"]))
    assert st["n_labelled"] == 2
    assert [r["strategy"] for r in st["rounds"]] == ["bootstrap", "distributed", "random"]
    assert st["rounds"][0]["scribble_pixels"] > 0  # bootstrapped from simulated scribbles
    # re-running to the same total does nothing more; a larger total continues
    ok(["run", session, "--strategy", "random", "-n", 1, "--rounds", 2])
    assert json.loads(ok(["status", session, "--json"]))["n_labelled"] == 2


def _crash_during(session, step_args, target):
    """Run a CLI step in a subprocess that SIGKILLs itself at ``target`` (module.function)."""
    module, func = target.rsplit(".", 1)
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        import {module} as mod
        real = mod.{func}
        def boom(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        mod.{func} = boom
        from activeseg.cli import app
        app({[str(a) for a in step_args]!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_during_import_and_train_loses_nothing(data, session):
    ok(["bootstrap", session, "--slices", "3"])
    ok(["query", session, "-n", 2, "--strategy", "distributed"])
    zs = _write_truth_into_masks(session, data, 1)
    before = _manifest(session)
    # killed after the label file is written, before the manifest commit
    _crash_during(session, ["import", session], "activeseg.session.atomic_save_npz")
    assert _manifest(session) == before
    assert json.loads(ok(["status", session, "--json"]))["rounds"][-1]["pending"] == zs
    ok(["import", session])  # the stale lock is taken over, the step re-runs
    st = json.loads(ok(["status", session, "--json"]))
    assert st["labelled_slices"] == sorted([3, *zs])
    before = _manifest(session)
    _crash_during(session, ["train", session], "activeseg.network.save_model")
    assert _manifest(session) == before
    ok(["train", session])
    assert json.loads(ok(["status", session, "--json"]))["rounds"][-1]["status"] == "trained"


def test_sigkill_in_the_middle_of_training(data, session):
    ok(["bootstrap", session, "--slices", "3,8"])
    before = _manifest(session)
    proc = subprocess.Popen(
        [sys.executable, "-m", "activeseg.cli", "train", str(session), "--steps", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # piped stderr gets plain progress lines: wait for one that says a training step is done
    stepped = False
    for line in proc.stderr:
        if line.startswith("train: ") and int(line.split()[1].split("/")[0]) >= 1:
            stepped = True
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stepped, "training never reported a finished step"
    assert _manifest(session) == before
    ok(["train", session, "--steps", 2])
    assert json.loads(ok(["status", session, "--json"]))["model"] is not None


def _leftovers(session):
    return [p for p in session.rglob("*") if p.name.endswith(".tmp")] + ([session / "tmp"] if (session / "tmp").exists() else [])


def test_query_killed_mid_export_then_another_strategy(data, session):
    ok(["bootstrap", session, "--slices", "3"])
    before = _manifest(session)
    _crash_during(session, ["query", session, "-n", 3, "--strategy", "distributed"], "activeseg.io.write_stack")
    assert _manifest(session) == before
    half = sorted(p.name for p in (session / "rounds" / "r001").iterdir())
    assert any(n.endswith("_image.tif") for n in half)  # the kill came mid-export
    ok(["query", session, "-n", 2, "--strategy", "random"])
    rnd = json.loads(ok(["status", session, "--json"]))["rounds"][-1]
    masks = sorted(int(p.name[1:5]) for p in (session / "rounds" / "r001").glob("z*_mask.tif"))
    images = sorted(int(p.name[1:5]) for p in (session / "rounds" / "r001").glob("z*_image.tif"))
    assert masks == images == sorted(rnd["queried"])  # only the new round's files, nothing of the killed try
    zs = _write_truth_into_masks(session, data, 1)
    ok(["import", session])
    assert json.loads(ok(["status", session, "--json"]))["labelled_slices"] == sorted([3, *zs])


def test_train_killed_during_the_whole_stack_evaluation(data, session):
    ok(["bootstrap", session, "--slices", "3,8"])
    before = _manifest(session)
    # the evaluation against the truth streams the prediction into session/tmp; die right after it
    _crash_during(session, ["train", session, "--steps", 2], "activeseg.loop.evaluate.predict_pore_prob")
    assert _manifest(session) == before
    assert (session / "tmp" / "prob.npy").exists()  # the scratch the kill left
    ok(["train", session, "--steps", 2])
    assert _leftovers(session) == []  # the next command cleared it
    assert json.loads(ok(["status", session, "--json"]))["model"] is not None


def test_bootstrap_killed_after_its_label_file(data, session):
    before = _manifest(session)
    _crash_during(session, ["bootstrap", session, "--slices", "3,8"], "activeseg.session.atomic_save_npz")
    assert _manifest(session) == before
    assert (session / "labels").exists() and any((session / "labels").iterdir())  # written, never committed
    assert json.loads(ok(["status", session, "--json"]))["rounds"] == []
    ok(["bootstrap", session, "--slices", "2,9"])
    st = json.loads(ok(["status", session, "--json"]))
    assert st["labelled_slices"] == [2, 9] and _leftovers(session) == []


def test_query_carries_pending_slices_over_and_revert_takes_labels_back(data, session):
    ok(["bootstrap", session, "--slices", "3,8"])
    ok(["query", session, "-n", 2, "--strategy", "distributed"])
    folder = session / "rounds" / "r001"
    first = sorted(int(p.name[1:5]) for p in folder.glob("z*_mask.tif"))
    truth = io.read_stack(data / "vol" / "truth.tif")
    io.write_stack(folder / f"z{first[0]:04d}_mask.tif", truth[first[0]][None], kind="labels")
    ok(["import", session, "--slices", first[0]])
    ok(["train", session, "--steps", 2])
    # the README's order: import a few, train, query: the rest comes along
    io.write_stack(folder / f"z{first[1]:04d}_mask.tif", truth[first[1]][None], kind="labels")  # started correcting it
    out = ok(["query", session, "-n", 1, "--strategy", "random"])
    assert "carried over" in out
    st = json.loads(ok(["status", session, "--json"]))
    assert first[1] in st["rounds"][-1]["queried"] and st["rounds"][1]["pending"] == []
    carried = session / "rounds" / "r002" / f"z{first[1]:04d}_mask.tif"
    import tifffile

    assert np.array_equal(np.squeeze(tifffile.imread(carried)), truth[first[1]])  # the edits came along
    zs = _write_truth_into_masks(session, data, 2)
    ok(["import", session])
    assert set(json.loads(ok(["status", session, "--json"]))["labelled_slices"]) == {3, 8, first[0], *zs}
    # take one slice back: a tombstone, the label file stays, the slice is no longer labelled
    files = sorted(p.name for p in (session / "labels").iterdir())
    out = ok(["revert", session, "--slice", first[0]])
    assert "reverted" in out
    st = json.loads(ok(["status", session, "--json"]))
    assert first[0] not in st["labelled_slices"] and st["tombstones"][0]["slices"] == [first[0]]
    assert sorted(p.name for p in (session / "labels").iterdir()) == files
    from activeseg import loop

    assert first[0] not in loop.labels_dict(loop.open_session(session))
    ok(["revert", session, "--round", 2])
    st = json.loads(ok(["status", session, "--json"]))
    assert set(st["labelled_slices"]) == {3, 8}
    ok(["train", session, "--steps", 2])  # trains on what is left


def test_bad_imports_are_refused_and_change_nothing(data, session, tmp_path):
    ok(["bootstrap", session, "--slices", "3"])
    ok(["query", session, "-n", 2, "--strategy", "distributed"])
    zs = _write_truth_into_masks(session, data, 1)
    before = _manifest(session)
    bad = tmp_path / "bad"
    bad.mkdir()
    io.write_stack(bad / f"z{zs[0]:04d}_mask.tif", np.zeros((1, 40, 48), np.uint8), kind="labels")
    assert "shape" in fails(["import", session, bad])
    io.write_stack(bad / f"z{zs[0]:04d}_mask.tif", np.full((1, 48, 48), 3, np.uint8), kind="image")
    assert "3" in fails(["import", session, bad])
    other = tmp_path / "other"
    other.mkdir()
    io.write_stack(other / "z0007_mask.tif", np.zeros((1, 48, 48), np.uint8), kind="labels")
    assert "not queried" in fails(["import", session, other])
    assert "no mask file for slice" in fails(["import", session, "--slices", str(zs[0]), tmp_path / "bad" / ".." / "other"])
    assert _manifest(session) == before
    ok(["import", session, "--slices", str(zs[0])])
    assert "already imported" in fails(["import", session, "--slices", str(zs[0])])
    assert "not queried" in fails(["import", session, "--skip", "7"])


def test_newer_schema_changed_stack_and_concurrent_writer(data, session, tmp_path):
    m = json.loads((session / "activeseg.json").read_text())
    m["schema_version"] = 99
    (session / "activeseg.json").write_text(json.dumps(m))
    assert "newer activeseg" in fails(["status", session])
    m["schema_version"] = 1
    (session / "activeseg.json").write_text(json.dumps(m))

    # a changed stack is refused; --relink to an identical copy works
    img = io.read_stack(data / "vol" / "image.tif")
    copy = tmp_path / "copy.tif"
    io.write_stack(copy, img)
    m["stack"]["path"] = str(copy)
    m["stack"]["mtime_ns"] = 0
    (session / "activeseg.json").write_text(json.dumps(m))
    changed = img.copy()
    changed[0, 0, 0] ^= 1
    io.write_stack(copy, changed)
    assert "changed on disk" in fails(["bootstrap", session, "--slices", "3"])
    moved = tmp_path / "moved.tif"
    io.write_stack(moved, img)
    ok(["bootstrap", session, "--slices", "3", "--relink", moved])

    code = textwrap.dedent(
        f"""
        import time
        from activeseg.session import Session
        s = Session.open({str(session)!r})
        with s.writing("someone else"):
            print("LOCKED", flush=True)
            time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        before = _manifest(session)
        out = fails(["query", session, "-n", 1])
        assert f"process {holder.pid}" in out
        assert _manifest(session) == before
    finally:
        holder.kill()
        holder.wait()


def test_slices_need_truth_and_bootstrap_runs_once(data, tmp_path):
    img = io.read_stack(data / "vol" / "image.tif")
    io.write_stack(tmp_path / "plain.tif", img)
    s = tmp_path / "s"
    ok(["init", s, "--image", tmp_path / "plain.tif", "--config", data / "tiny.toml"])
    assert "--scribbles" in fails(["bootstrap", s, "--slices", "1,2"])
    truth = io.read_stack(data / "vol" / "truth.tif")
    scrib = np.zeros_like(truth)
    scrib[4, 5:9, 5:40] = truth[4, 5:9, 5:40] + 1  # ilastik convention: class c drawn as c + 1
    scrib[4, 30:34, 5:40] = truth[4, 30:34, 5:40] + 1
    io.write_stack(tmp_path / "scribbles.tif", scrib, kind="labels")
    ok(["bootstrap", s, "--scribbles", tmp_path / "scribbles.tif"])
    assert "already bootstrapped" in fails(["bootstrap", s, "--scribbles", tmp_path / "scribbles.tif"])
    st = json.loads(ok(["status", s, "--json"]))
    assert st["labelled_slices"] == []  # scribbles do not count as labelled slices
    assert st["rounds"][0]["scribble_pixels"] > 0


def test_bootstrap_that_cannot_fit_leaves_the_session_unbootstrapped(data, session, tmp_path):
    before = _manifest(session)
    assert "no slices" in fails(["bootstrap", session, "--slices", ","])
    one_class = np.full((12, 48, 48), 255, np.uint8)
    one_class[4] = 0  # a Fiji 0/255 mask read as 0/1/255 labels: only "solid" is left
    one_class[4, :10] = 255
    io.write_stack(tmp_path / "labels.tif", one_class, kind="labels")
    out = fails(["bootstrap", session, "--labels", tmp_path / "labels.tif"])
    assert "only class [0]" in out and "0/255" in out
    assert _manifest(session) == before
    ok(["bootstrap", session, "--slices", "3"])  # the session is still usable


def test_corrections_painted_on_the_context_stack_or_with_255(data, session, tmp_path):
    ok(["bootstrap", session, "--slices", "3"])
    ok(["query", session, "-n", 1, "--strategy", "distributed"])
    rnd = json.loads((session / "activeseg.json").read_text())["rounds"][-1]
    z = rnd["queried"][0]
    truth = io.read_stack(data / "vol" / "truth.tif")
    painted = tmp_path / "painted"
    painted.mkdir()
    mixed = truth[z].copy()
    mixed[:4][mixed[:4] == 1] = 255  # part of the pores painted with Fiji's default 255
    io.write_stack(painted / f"z{z:04d}_mask.tif", mixed[None], kind="image")
    assert "paint pore with value 1" in fails(["import", session, painted])
    # a labels layer painted over the exported 3-plane context stack: the middle plane counts
    ctx = np.stack([np.zeros_like(truth[z]), truth[z], np.ones_like(truth[z])])
    io.write_stack(painted / f"z{z:04d}_mask.tif", ctx, kind="labels")
    ok(["import", session, painted])
    labels = np.load(session / "labels" / "r001_i00.npz")
    assert np.array_equal(labels["masks"][0], truth[z])


def test_a_whole_stack_labels_layer_gives_the_queried_plane(data, session, tmp_path):
    ok(["bootstrap", session, "--slices", "3"])
    ok(["query", session, "-n", 1, "--strategy", "distributed"])
    z = json.loads((session / "activeseg.json").read_text())["rounds"][-1]["queried"][0]
    truth = io.read_stack(data / "vol" / "truth.tif")
    layer = tmp_path / "layer"
    layer.mkdir()
    io.write_stack(layer / f"z{z:04d}_mask.tif", truth, kind="labels")  # all 12 planes
    ok(["import", session, layer])
    assert np.array_equal(np.load(session / "labels" / "r001_i00.npz")["masks"][0], truth[z])
    five = tmp_path / "five"
    five.mkdir()
    io.write_stack(five / "z0001_mask.tif", truth[:5], kind="labels")  # neither one slice, the context, nor the stack
    from activeseg.errors import LabelError
    from activeseg.oracle import read_corrections

    with pytest.raises(LabelError, match="holds 5 planes"):
        read_corrections({1: five / "z0001_mask.tif"}, truth.shape[1:], n_slices=12, radius=1)


def test_skipping_every_queried_slice_moves_on_to_the_next_query(data, session):
    ok(["bootstrap", session, "--slices", "3"])
    ok(["query", session, "-n", 2, "--strategy", "distributed"])
    zs = json.loads((session / "activeseg.json").read_text())["rounds"][-1]["queried"]
    assert "both --slices and --skip" in fails(["import", session, "--slices", str(zs[0]), "--skip", str(zs[0])])
    ok(["import", session, "--skip", ",".join(map(str, zs))])
    st = json.loads(ok(["status", session, "--json"]))
    assert "query" in st["next_step"]
    assert "skipped entirely" in fails(["train", session])
    assert "nothing left to import" in fails(["import", session])
    out = ok(["query", session, "-n", 2, "--strategy", "distributed"])
    assert "round 2" in out


def test_output_values_are_checked_before_any_work(data, session, tmp_path):
    ok(["bootstrap", session, "--slices", "3,8"])
    for bad in ("255", "0,256", "7,7", "a,b"):
        assert "--values" in fails(["export", session, tmp_path / "seg.tif", "--values", bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the session; no output, no temporary file


def test_retraining_a_round_keeps_the_committed_model(data, session):
    ok(["bootstrap", session, "--slices", "3,8"])
    ok(["train", session])
    first = json.loads((session / "activeseg.json").read_text())["model"]["path"]
    weights = (session / first / "model.safetensors").read_bytes()
    ok(["train", session])
    second = json.loads((session / "activeseg.json").read_text())["rounds"][-1]["candidate_model"]
    assert second != first and (session / second / "model.safetensors").exists()
    assert (session / first / "model.safetensors").read_bytes() == weights


def test_a_warm_start_kept_over_its_training_is_recorded_and_said(data, session, monkeypatch):
    from activeseg import train as train_mod

    real = train_mod.train_model

    def no_better(*args, init=None, **kw):  # as if no training step beat the warm start
        model, hist = real(*args, init=init, **kw)
        if init is not None:
            model, hist = init, {**hist, "kept_init": True, "best_step": 0}
        return model, hist

    ok(["bootstrap", session, "--slices", "3,8"])
    ok(["train", session])
    monkeypatch.setattr(train_mod, "train_model", no_better)
    out = ok(["train", session])
    assert "no training step beat the network it started from" in out
    m = json.loads((session / "activeseg.json").read_text())
    assert m["rounds"][-1]["train"]["kept_previous"] is True and m["rounds"][-1]["train"]["warm_start"] is True


def test_session_files_follow_the_umask(session):
    old = os.umask(0o022)
    os.umask(old)
    mode = (session / "activeseg.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~old


def test_changed_truth_is_not_offered_relink(data, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    for name in ("image.tif", "truth.tif", "depth.tif", "synth.json"):
        (vol / name).write_bytes((data / "vol" / name).read_bytes())
    s = tmp_path / "s"
    ok(["init", s, "--image", vol / "image.tif", "--config", data / "tiny.toml"])
    truth = io.read_stack(vol / "truth.tif")
    truth[0, 0, 0] ^= 1
    io.write_stack(vol / "truth.tif", truth, kind="labels")
    out = fails(["bootstrap", s, "--slices", "3"])
    assert "ground truth" in out and "Restore the original file" in out and "--relink" not in out
