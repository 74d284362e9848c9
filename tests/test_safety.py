"""Writing files safely: atomic writes, output guards, free space, reserved scratch."""

import errno
import os
from collections import namedtuple

import numpy as np
import pytest

from activeseg import safety
from activeseg.errors import OutputError


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    safety.atomic_write_json(p, {"x": float("nan"), "y": np.float32(2.5), "z": np.arange(3), "p": tmp_path})
    assert p.read_text().replace(" ", "").replace("\n", "") == f'{{"x":null,"y":2.5,"z":[0,1,2],"p":"{tmp_path}"}}'
    safety.atomic_write_text(p, "new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_what_it_made(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with safety.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old" and sorted(q.name for q in tmp_path.iterdir()) == ["keep.txt"]
    deep = tmp_path / "new" / "deeper" / "x.txt"
    with pytest.raises(OutputError) as err:
        with safety.atomic_path(deep) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "the disk is full" in str(err.value) and str(deep) in str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert not (tmp_path / "new").exists()  # the folders it made are gone again


@pytest.mark.parametrize("code, says", [
    (errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
    (errno.EISDIR, "it is a folder"), (errno.EFBIG, "file-size limit"),
])
def test_os_error_messages_name_the_fix(code, says):
    assert says in safety.os_error_message(OSError(code, os.strerror(code)), "/x/y.tif")


def test_check_output_refuses_inputs_by_any_name(tmp_path):
    stack = tmp_path / "stack.tif"
    stack.write_bytes(b"data")
    (tmp_path / "link.tif").symlink_to(stack)
    os.link(stack, tmp_path / "hard.tif")
    for out in (stack, tmp_path / "link.tif", tmp_path / "hard.tif", tmp_path / "." / "stack.tif"):
        with pytest.raises(OutputError, match="never writes over its inputs"):
            safety.check_output(out, inputs=[("stack", stack)])
    assert safety.check_output(tmp_path / "seg.tif", inputs=[("stack", stack)]) == (tmp_path / "seg.tif").resolve()


def test_check_output_refuses_folders_sessions_and_input_folders(tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        safety.check_output(tmp_path, inputs=[])
    with pytest.raises(OutputError, match="inside the stack folder"):
        safety.check_output(slices / "seg.tif", inputs=[("stack", slices)])
    session = tmp_path / "s"
    session.mkdir()
    with pytest.raises(OutputError, match="inside the session folder"):
        safety.check_output(session / "labels" / "x.tif", sessions=[session])
    assert safety.check_output(session / "exports" / "x.tif", sessions=[session])
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        safety.check_output(tmp_path / "file" / "x.tif")


def test_check_free_space_says_the_numbers(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(safety.shutil, "disk_usage", lambda p: usage(10 << 30, 0, 400 << 20))
    safety.check_free_space(tmp_path, 100 << 20)  # fits
    with pytest.raises(OutputError) as err:
        safety.check_free_space(tmp_path / "not" / "yet", 2 << 30, what="writing seg.tif")
    assert "writing seg.tif needs 2.0 GB on" in str(err.value) and "only 400.0 MB is free" in str(err.value)


def test_reserve_allocates_real_blocks(tmp_path):
    p = tmp_path / "scratch.bin"
    with open(p, "wb") as fh:
        fh.truncate(8 << 20)  # sparse, as a fresh memory map is
    sparse = os.stat(p).st_blocks
    safety.reserve(p, 8 << 20)
    assert os.stat(p).st_blocks * 512 >= 8 << 20 > sparse * 512
    assert os.path.getsize(p) == 8 << 20


def test_reserve_on_a_full_disk_raises_an_output_error(tmp_path, monkeypatch):
    p = tmp_path / "scratch.bin"
    p.write_bytes(b"")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safety.os, "posix_fallocate", full, raising=False)
    with pytest.raises(OutputError, match="the disk is full"):
        safety.reserve(p, 1 << 20)


def test_human_bytes():
    assert [safety.human_bytes(n) for n in (5, 2048, 3 << 20, 5 << 30)] == ["5 B", "2.0 KB", "3.0 MB", "5.0 GB"]


def test_npz_refuses_pickled_objects_and_keeps_the_old_file(tmp_path):
    p = tmp_path / "labels.npz"
    safety.atomic_save_npz(p, slices=np.arange(3), kind=np.array("full"))
    before = p.read_bytes()
    with pytest.raises(ValueError):
        safety.atomic_save_npz(p, bad=np.array([{"a": 1}], dtype=object))
    assert p.read_bytes() == before and sorted(q.name for q in tmp_path.iterdir()) == ["labels.npz"]
    with np.load(p, allow_pickle=False) as data:
        assert str(data["kind"]) == "full" and data["slices"].tolist() == [0, 1, 2]
