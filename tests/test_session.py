import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from activeseg.errors import SessionError, SessionLockedError
from activeseg.session import MANIFEST, SCHEMA_VERSION, Session, atomic_write_json


def _holder(root):
    """A child process that takes the session lock and waits until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from activeseg.session import Session
        s = Session.open({str(root)!r})
        with s.writing("holder"):
            print("LOCKED", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "LOCKED"
    return proc


def test_create_open_commit_roundtrip(tmp_path):
    s = Session.create(tmp_path / "s", {"stack": {"path": "x.tif"}})
    assert (tmp_path / "s" / MANIFEST).exists()
    with s.writing("test"):
        m = s.manifest
        m["rounds"].append({"index": 1, "status": "queried", "queried": [3, 7]})
        s.commit(m)
    again = Session.open(tmp_path / "s")
    assert again.rounds == [{"index": 1, "status": "queried", "queried": [3, 7]}]
    assert again.manifest["schema_version"] == SCHEMA_VERSION


def test_uncommitted_changes_do_not_reach_disk(tmp_path):
    s = Session.create(tmp_path / "s", {})
    with s.writing("test"):
        m = s.manifest
        m["rounds"].append({"index": 1})
        s.save_npz("labels/r001_i00.npz", slices=np.array([1]))
        # killed here: no commit
    assert Session.open(tmp_path / "s").rounds == []


def test_refuses_newer_schema_and_missing_session(tmp_path):
    s = Session.create(tmp_path / "s", {})
    m = json.loads((s.root / MANIFEST).read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    (s.root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SessionError, match="newer activeseg"):
        Session.open(s.root)
    with pytest.raises(SessionError, match="activeseg init"):
        Session.open(tmp_path / "nothing")


def test_create_refuses_to_overwrite(tmp_path):
    Session.create(tmp_path / "s", {})
    with pytest.raises(SessionError, match="already holds a session"):
        Session.create(tmp_path / "s", {})


def test_second_writer_gets_clear_error_naming_the_holder(tmp_path):
    s = Session.create(tmp_path / "s", {})
    proc = _holder(s.root)
    try:
        with pytest.raises(SessionLockedError, match=f"process {proc.pid} \\(holder"):
            with s.writing("second"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_killed_process_is_taken_over(tmp_path, caplog):
    s = Session.create(tmp_path / "s", {})
    proc = _holder(s.root)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert str(proc.pid) in (s.root / "lock").read_text()  # the dead holder's record is still there
    with caplog.at_level("WARNING", logger="activeseg"):
        with s.writing("after-kill"):
            m = s.manifest
            m["note"] = "ok"
            s.commit(m)
    assert "stale session lock" in caplog.text
    assert Session.open(s.root).manifest["note"] == "ok"


def test_atomic_write_leaves_no_temp_files_and_handles_nan(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(2.5), "z": np.arange(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 2.5, "z": [0, 1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_another_thread_sharing_the_session_object_is_refused(tmp_path):
    """A GUI's worker thread and its viewer may share one Session: only the holder's thread re-enters."""
    import threading

    s = Session.create(tmp_path / "s", {})
    entered, release, seen = threading.Event(), threading.Event(), {}

    def worker():
        with s.writing("train"):
            entered.set()
            release.wait(10)
            seen["writing_in_worker"] = s.is_writing

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert entered.wait(10)
        assert not s.is_writing  # this thread does not hold the lock
        with pytest.raises(SessionLockedError):
            with s.writing("correct (save)"):
                pass
        with pytest.raises(SessionError):
            s.commit(s.manifest)  # no commit without the lock in this thread
    finally:
        release.set()
        t.join(10)
    assert seen["writing_in_worker"]
    with s.writing("after"):  # free again once the worker is done
        with s.writing("nested"):  # and re-entrant in the holder's own thread
            assert s.is_writing
