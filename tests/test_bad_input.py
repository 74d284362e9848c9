"""A battery of user mistakes driven through the CLI (tiny data, CPU).

Every case runs one command the way a user would and checks, through :func:`cli`:
the exit code, the case's own message (what was wrong and the fix), no traceback
(no exception escaped the command), one "error:" line, and that nothing changed on
disk: the sha256 of every file under the watched folders (stack, truth, config, the
session with its activeseg.json and labels, existing outputs) and their listing are
the same after the command, except what the command is documented to create.

Faults (full disk, read-only place, file-size limit, a kill) are injected by
monkeypatching a write, by RLIMIT_FSIZE in a subprocess, and on real tmpfs mounts
when running as root (skipped only when not root; a root without mount rights fails).
Each disk-full and kill case then retries and must succeed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from activeseg import io
from activeseg.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


SHAPE = (12, 48, 48)


# --- the one helper: run, then check rc, message, no traceback, nothing changed -----------------


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link->" + os.readlink(path)
    if path.is_dir():
        return "dir"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256 | "dir" | "link->target"}`` of every entry under ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        out[str(root)] = _digest(root)
        if root.is_dir() and not root.is_symlink():
            for folder, dirs, files in os.walk(root):
                for name in dirs + files:
                    p = Path(folder) / name
                    out[str(p)] = _digest(p)
    return out


def _changes(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _under(key: str, allowed) -> bool:
    return any(key == str(a) or key.startswith(str(a) + os.sep) for a in allowed)


def flat(text: str) -> str:
    """Output with whitespace runs collapsed (log lines wrap)."""
    return " ".join(text.split())


def check_output_text(out: str, *, rc: int, fails: bool, says, one_line: bool, what) -> str:
    assert "Traceback" not in out, f"{what}\n{out}"
    assert "MarkupError" not in out, f"{what}\n{out}"
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if fails:
        assert rc not in (0, None), f"{what} should fail\n{out}"
        assert len(errors) == 1, f"{what}: expected one error line\n{out}"
        if one_line:
            lines = [ln for ln in out.splitlines() if ln.strip()]
            assert lines == errors, f"{what}: expected nothing but the error line\n{out}"
    else:
        assert rc == 0, f"{what} should succeed\n{out}"
        assert not errors, f"{what}\n{out}"
    text = flat(out)
    for s in says:
        assert flat(s) in text, f"{what}: {s!r} not in the output\n{out}"
    return text


def cli(args, *, fails: bool = True, says=(), watch=(), new=(), one_line: bool = True) -> str:
    """Run ``activeseg ARGS`` in-process and check it (see the module docstring).

    ``watch``: folders/files that must be unchanged afterwards, except entries under
    ``new`` (what the command is documented to create). Returns the output with
    whitespace collapsed.
    """
    args = [str(a) for a in args]
    before = snapshot(*watch)
    res = runner.invoke(app, args)
    exc = res.exception
    assert exc is None or isinstance(exc, SystemExit), f"{args}: uncaught {exc!r}\n{res.output}"
    text = check_output_text(res.output, rc=res.exit_code, fails=fails, says=says, one_line=one_line, what=args)
    changed = [k for k in _changes(before, snapshot(*watch)) if not _under(k, new)]
    assert not changed, f"{args} changed or left behind: {changed}\n{res.output}"
    return text


def cli_proc(args, *, fails: bool = True, says=(), watch=(), new=(), one_line: bool = True, preexec_fn=None,
             env=None) -> subprocess.CompletedProcess:
    """:func:`cli` for the real console script in a subprocess (what a terminal shows)."""
    args = [str(a) for a in args]
    before = snapshot(*watch)
    proc = subprocess.run([sys.executable, "-m", "activeseg.cli", *args], capture_output=True, text=True,
                          preexec_fn=preexec_fn, env={**os.environ, "COLUMNS": "400", **(env or {})})
    check_output_text(proc.stdout + proc.stderr, rc=proc.returncode, fails=fails, says=says, one_line=one_line,
                      what=args)
    changed = [k for k in _changes(before, snapshot(*watch)) if not _under(k, new)]
    assert not changed, f"{args} changed or left behind: {changed}\n{proc.stderr}"
    return proc


def ok(args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return res.output


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich reads it live: messages are not wrapped mid-path


# --- tiny data and sessions, built once per module, copied per case -------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("data")
    ok(["synth", d / "vol", "--shape", *SHAPE, "--seed", 1])
    tiny_config(d / "tiny.toml", rf={"n_estimators": 8}, train={"steps": 2})
    return d


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    """Sessions in every state, made lazily: fresh (init), boot (RF on slices 2, 9),
    queried (round 1 open, masks exported), trained (a network)."""
    base = tmp_path_factory.mktemp("sessions")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in made:
            return made[name]
        s = base / name
        if name == "fresh":
            ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / "tiny.toml"])
        elif name == "boot":
            shutil.copytree(get("fresh"), s, symlinks=True)
            ok(["bootstrap", s, "--slices", "2,9"])
        elif name == "queried":
            shutil.copytree(get("boot"), s, symlinks=True)
            ok(["query", s, "-n", 2, "--strategy", "distributed"])
        elif name == "trained":
            shutil.copytree(get("boot"), s, symlinks=True)
            ok(["train", s, "--steps", 2])
        made[name] = s
        return s

    return get


@pytest.fixture
def case(data, built, tmp_path):
    """Per case: ``case.session(state)`` copies a built session into the case folder;
    ``case.watch`` is what must stay unchanged (the case folder and the shared data)."""

    class Case:
        dir = tmp_path
        stack = data / "vol" / "image.tif"
        truth = data / "vol" / "truth.tif"
        config = data / "tiny.toml"
        watch = (tmp_path, data)

        @staticmethod
        def session(state: str = "boot", name: str = "s") -> Path:
            dst = tmp_path / name
            shutil.copytree(built(state), dst, symlinks=True)
            return dst

    return Case


def manifest(session: Path) -> dict:
    return json.loads((session / "activeseg.json").read_text())


def queried_slices(session: Path) -> list[int]:
    return manifest(session)["rounds"][-1]["queried"]


def truth_mask(data, z: int) -> np.ndarray:
    return io.read_stack(data / "vol" / "truth.tif")[z]


# --- real tmpfs mounts ---------------------------------------------------------------------------


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (root only; a root that cannot mount fails the test)."""
    if os.geteuid() != 0:
        assert os.environ.get("CI") != "true", "CI runs these tests as root: mounting a tmpfs must be possible"
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    assert r.returncode == 0, f"running as root but `mount -t tmpfs -o {options}` failed: {r.stderr.strip()}"
    try:
        yield path
    finally:
        if _run(["umount", str(path)]).returncode != 0:
            _run(["umount", "-l", str(path)])


def _raise_on(errno_code: int, what: str):
    def fail(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code), str(args[0]) if args else what)

    return fail


# ==================================================================================================
# export: OUT must never be an input or a session file, and a failed write leaves nothing
# ==================================================================================================


def test_export_out_is_the_stack(case):
    s = case.session()
    cli(["export", s, case.stack], says=["is the session's image stack", "never writes over its inputs",
                                          "give another output file name"], watch=case.watch)


def test_export_out_is_a_symlink_to_the_stack(case):
    s = case.session()
    link = case.dir / "seg.tif"
    link.symlink_to(case.stack)
    cli(["export", s, link], says=[f"OUT {link} is the session's image stack"], watch=case.watch)


def test_export_out_is_a_hard_link_to_the_stack(case):
    s = case.session()
    stack = case.dir / "mine.tif"
    shutil.copyfile(case.stack, stack)
    # a session on a stack of its own, so a hard link in the case folder is possible on any file system
    m = manifest(s)
    m["stack"]["path"] = str(stack)
    m["stack"]["mtime_ns"] = stack.stat().st_mtime_ns
    (s / "activeseg.json").write_text(json.dumps(m))
    hard = case.dir / "seg.tif"
    os.link(stack, hard)
    cli(["export", s, hard], says=[f"OUT {hard} is the session's image stack"], watch=case.watch)


def test_export_out_is_the_truth(case):
    s = case.session()
    cli(["export", s, case.truth], says=["is the session's ground truth", "give another output file name"],
        watch=case.watch)


@pytest.mark.parametrize("inside", ["activeseg.json", "labels/x.tif", "rounds/seg.tif"])
def test_export_out_inside_the_session(case, inside):
    s = case.session()
    cli(["export", s, s / inside], says=["lies inside the session folder", "give a path outside it or inside",
                                         str(s / "exports")], watch=case.watch)


def test_export_out_is_an_existing_folder(case):
    s = case.session()
    (case.dir / "results").mkdir()
    cli(["export", s, case.dir / "results"],
        says=["is a folder; give a file name inside it", str(case.dir / "results" / "segmentation.tif")],
        watch=case.watch)


def test_export_out_below_a_file(case):
    s = case.session()
    (case.dir / "notes.txt").write_text("x")
    cli(["export", s, case.dir / "notes.txt" / "seg.tif"], says=["is a file, not a folder"], watch=case.watch)


def _retry_export_succeeds(s: Path, out: Path, watch) -> None:
    """The export to ``out`` now works, and leaves exactly OUT and its table (and OUT's folders)."""
    csv = out.with_suffix(".porosity.csv")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    cli(["export", s, out], fails=False, says=[f"wrote {out}"], watch=watch, new=[out, csv, *made], one_line=False)
    assert io.read_stack(out).shape == SHAPE
    top = made[-1] if made else out.parent
    assert set(snapshot(top)) == {str(top), *map(str, made), str(out), str(csv)}


@pytest.fixture
def scratch_tmp(tmp_path):
    """Python's temporary folder redirected into the (watched) case folder: a scratch
    file left anywhere by the command shows up as a change."""
    t = tmp_path / "systmp"
    t.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(t))
        mp.setenv("TMPDIR", str(t))
        yield t


def test_export_on_a_full_disk_injected(case, monkeypatch, scratch_tmp):
    s = case.session()
    out_dir = case.dir / "out"
    out_dir.mkdir()
    # the disk fills when the scratch/output blocks are claimed
    monkeypatch.setattr(os, "posix_fallocate", _raise_on(errno.ENOSPC, "fallocate"))
    text = cli(["export", s, out_dir / "seg.tif"], says=["the disk is full", "free some space"],
               watch=case.watch, one_line=False)
    assert f"cannot write {out_dir / 'seg.tif'}" in text  # the user's name, not a hidden temporary one
    monkeypatch.undo()
    # too little free space is refused before any work, with the numbers
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 30, (1 << 30) - 50_000, 50_000))
    cli(["export", s, out_dir / "seg.tif"], says=["needs 1.0 MB on", "only 48.8 KB is free",
                                                   "free some space or write somewhere else"],
        watch=case.watch, one_line=False)
    monkeypatch.undo()
    _retry_export_succeeds(s, out_dir / "seg.tif", case.watch)


def test_export_on_a_full_disk_real_tmpfs(case, monkeypatch, scratch_tmp):
    s = case.session()
    with tmpfs(case.dir / "small", "size=64k") as small:
        # refused up front with the numbers (the free-space check keeps a margin of 1 MB)
        cli(["export", s, small / "seg.tif"], says=["needs 1.0 MB on", "and only 64.0 KB is free"],
            watch=case.watch, one_line=False)
        # and if the check is passed (free space changes under us), the write itself fails cleanly
        from activeseg import safety

        monkeypatch.setattr(safety, "check_free_space", lambda *a, **k: None)
        # (the 110 KB of probabilities do not fit in 64 KB)
        text = cli(["export", s, small / "seg.tif", "--probabilities"], says=["the disk is full"], watch=case.watch,
                   one_line=False)
        assert f"cannot write {small / 'seg.tif'}" in text
        assert list(small.iterdir()) == []
    monkeypatch.undo()
    (case.dir / "good").mkdir()
    _retry_export_succeeds(s, case.dir / "good" / "seg.tif", case.watch)


def test_export_into_a_new_folder_on_a_full_disk(case, monkeypatch, scratch_tmp):
    s = case.session()
    out = case.dir / "results" / "run1" / "seg.tif"  # folders the export would make
    monkeypatch.setattr(os, "posix_fallocate", _raise_on(errno.ENOSPC, "fallocate"))
    cli(["export", s, out], says=[f"cannot write {out}: the disk is full"], watch=case.watch, one_line=False)
    assert not (case.dir / "results").exists()
    monkeypatch.undo()
    _retry_export_succeeds(s, out, case.watch)


def test_export_whose_porosity_table_cannot_be_written(case, monkeypatch, scratch_tmp):
    s = case.session()
    out = case.dir / "seg.tif"
    out.write_bytes(b"an earlier export")
    real_mkstemp = tempfile.mkstemp

    def table_fills_the_disk(*a, prefix="", **k):
        if ".porosity.csv" in prefix:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(tempfile, "mkstemp", table_fills_the_disk)
    cli(["export", s, out], says=[f"cannot write {case.dir / 'seg.porosity.csv'}: the disk is full"], watch=case.watch,
        one_line=False)
    assert out.read_bytes() == b"an earlier export"  # not replaced by a segmentation without its table
    monkeypatch.undo()
    cli(["export", s, out], fails=False, says=[f"replaced {out}"], watch=case.watch, one_line=False,
        new=[out, case.dir / "seg.porosity.csv"])


def test_export_to_a_read_only_place_injected(case, monkeypatch):
    s = case.session()
    out = case.dir / "seg.tif"
    out.write_bytes(b"an earlier export")  # an existing output must survive a failed replace
    monkeypatch.setattr(tifffile, "memmap", _raise_on(errno.EROFS, "memmap"))
    cli(["export", s, out], says=[f"cannot write {out}", "the file system is read-only: choose a writable place"],
        watch=case.watch, one_line=False)
    monkeypatch.undo()
    # the last steps (moving the finished table and segmentation into place) fail
    monkeypatch.setattr(os, "replace", _raise_on(errno.EROFS, "replace"))
    cli(["export", s, out], says=[f"cannot write {case.dir / 'seg.porosity.csv'}: the file system is read-only"],
        watch=case.watch, one_line=False)
    assert out.read_bytes() == b"an earlier export"


def test_export_to_a_read_only_tmpfs(case):
    s = case.session()
    with tmpfs(case.dir / "ro", "ro") as ro:
        cli(["export", s, ro / "seg.tif"], says=[f"cannot write {ro / 'seg.tif'}", "the file system is read-only"],
            watch=case.watch, one_line=False)
        cli(["export", s, ro / "new" / "seg.tif"], says=["read-only"], watch=case.watch, one_line=False)


def test_export_past_the_file_size_limit(case, scratch_tmp):
    s = case.session()
    out = case.dir / "out" / "seg.tif"
    out.parent.mkdir()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))  # the 27.6 KB segmentation does not fit

    cli_proc(["export", s, out], preexec_fn=limit, watch=case.watch, one_line=False, env={"TMPDIR": str(scratch_tmp)},
             says=[f"cannot write {out}", "file-size limit", "raise the limit or write a smaller output"])
    _retry_export_succeeds(s, out, case.watch)


def test_export_killed_then_run_again(case, scratch_tmp):
    s = case.session()
    out = case.dir / "out" / "seg.tif"
    out.parent.mkdir()
    code = textwrap.dedent(f"""
        import os, signal
        from activeseg.loop import export as loop_export
        real = loop_export.predict_blocks
        def then_die(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        loop_export.predict_blocks = then_die
        from activeseg.cli import app
        app(["export", {str(s)!r}, {str(out)!r}])
    """)
    before = snapshot(s, case.stack, case.truth, scratch_tmp)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(scratch_tmp)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    # export never writes into the session; a kill -9 may leave only its hidden scratch beside OUT
    assert snapshot(s, case.stack, case.truth, scratch_tmp) == before
    assert [p.name for p in out.parent.iterdir()] == [".seg.tif.tmp"]
    # the next run overwrites and removes what the killed one left beside OUT
    _retry_export_succeeds(s, out, [s, case.stack, case.truth, scratch_tmp])


def test_export_before_bootstrap(case):
    s = case.session("fresh")
    cli(["export", s, case.dir / "seg.tif"], says=["has no labels yet", "activeseg bootstrap"], watch=case.watch,
        one_line=False)


@pytest.mark.parametrize("values", ["0,0", "a,b", "0,300", "1"])
def test_export_bad_values(case, values):
    s = case.session()
    moved = case.dir / "moved.tif"
    shutil.copyfile(case.stack, moved)
    for extra in ([], ["--relink", moved]):  # refused before --relink re-points the session
        text = cli(["export", s, case.dir / "seg.tif", "--values", values, *extra], watch=case.watch)
        assert "--values takes two different numbers from 0 to 255 for solid,pore (e.g. 0,1 or 0,255 for Fiji)" in text
        assert "slice numbers" not in text


# ==================================================================================================
# predict
# ==================================================================================================


def test_predict_out_is_the_stack_being_segmented(case):
    s = case.session("trained")
    other = case.dir / "next.tif"
    shutil.copyfile(case.stack, other)
    cli(["predict", s, other, other], says=[f"OUT {other} is the stack to segment", "give another output file name"],
        watch=case.watch)


def test_predict_out_is_the_sessions_own_stack(case):
    s = case.session("trained")
    other = case.dir / "next.tif"
    shutil.copyfile(case.stack, other)
    cli(["predict", s, other, case.stack], says=["is the session's image stack"], watch=case.watch)


def test_predict_out_inside_the_session_or_model(case):
    s = case.session("trained")
    other = case.dir / "next.tif"
    shutil.copyfile(case.stack, other)
    cli(["predict", s, other, s / "seg.tif"], says=["lies inside the session folder"], watch=case.watch)
    model_dir = s / manifest(s)["model"]["path"]
    cli(["predict", model_dir, other, model_dir / "seg.tif"], says=["lies inside the model folder", "outside it"],
        watch=case.watch)


def test_predict_with_a_session_without_network(case):
    s = case.session("boot")
    cli(["predict", s, case.stack, case.dir / "seg.tif"], says=["has no trained network yet", "activeseg train"],
        watch=case.watch)


# ==================================================================================================
# init: the config is checked in full, the stack is read once, nothing is created on refusal
# ==================================================================================================


CONFIGS = {
    "export_radius_text": ('[session]\nexport_radius = "two"\n', ["[session] export_radius", "expected an integer", "'two'"]),
    "misspelt_key": ("[geometry]\nvoxel_sise = [10, 5, 5]\n",
                     ["[geometry] has unknown key(s) voxel_sise", "valid keys: alpha_deg, beam_sign, voxel_size"]),
    "unknown_encoder": ('[model]\nencoder = "resnet1800"\n', ["[model] encoder", "'resnet1800'", "segmentation-models-pytorch"]),
    "unknown_table": ("[trian]\nsteps = 5\n", ["unknown table(s)", "trian", "[train]"]),
    "invalid_toml": ("[train\nsteps = 5\n", ["not valid TOML"]),
    "negative_steps": ("[train]\nsteps = -5\n", ["[train]", "steps", "-5"]),
    "rf_text": ('[rf]\nn_estimators = "many"\n', ["[rf] n_estimators", "expected an integer", "'many'"]),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_init_refuses_a_bad_config(case, name):
    text, says = CONFIGS[name]
    cfg = case.dir / "bad.toml"
    cfg.write_text(text)
    cli(["init", case.dir / "s", "--image", case.stack, "--config", cfg], says=[f"config file {cfg}", *says],
        watch=case.watch)
    assert not (case.dir / "s").exists()


def test_init_config_missing_or_a_folder(case):
    cli(["init", case.dir / "s", "--image", case.stack, "--config", case.dir / "nope.toml"],
        says=[f"config file {case.dir / 'nope.toml'} not found"], watch=case.watch)
    cli(["init", case.dir / "s", "--image", case.stack, "--config", case.dir],
        says=["not found (it is a folder)"], watch=case.watch)


def test_init_help_shows_table_names_literally(case):
    text = cli(["init", "--help"], fails=False, watch=case.watch)
    assert "[geometry] [session] [rf] [model] [train]" in text


def test_a_path_with_markup_is_printed_literally(case):
    odd = case.dir / "runs[" / "b]"  # ".../runs[/b]"
    shutil.copytree(case.session(), odd)
    shutil.rmtree(case.dir / "s")
    assert "[/b]" in str(odd)
    cli(["export", odd, odd / "seg.tif"], says=[f"OUT {odd / 'seg.tif'} lies inside the session folder {odd}"],
        watch=case.watch)
    cli(["init", case.dir / "t[/b]", "--image", case.dir / "img[/b].tif"],
        says=[f"no such file or folder: {case.dir / 'img[/b].tif'}"], watch=case.watch)


def _write(path: Path, arr: np.ndarray, **kw) -> Path:
    if not kw.get("imagej"):
        kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, arr, **kw)
    return path


def _noise(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 255, shape).astype(dtype)


def test_init_float_stack_with_inf(case):
    a = _noise((6, 32, 32), np.float32)
    a[3, 5, 5] = np.inf
    p = _write(case.dir / "inf.tif", a)
    cli(["init", case.dir / "s", "--image", p], says=["slice 3 of", "1 non-finite value(s) (1 +inf)", "numpy.nan_to_num"],
        watch=case.watch)


def test_init_constant_stack_warns_and_proceeds(case):
    p = _write(case.dir / "flat.tif", np.full((6, 32, 32), 7, np.uint8))
    cli(["init", case.dir / "s", "--image", p], fails=False, watch=case.watch, new=[case.dir / "s"], one_line=False,
        says=["is constant (every sampled pixel is 7", "check that the right file/channel was exported",
              "created session"])
    assert manifest(case.dir / "s")["stack"]["shape"] == [6, 32, 32]


def test_init_session_path_is_a_file(case):
    (case.dir / "s").write_text("not a folder")
    cli(["init", case.dir / "s", "--image", case.stack], says=["is a file; give a new or empty folder for the session"],
        watch=case.watch)


def test_init_into_an_existing_session_or_busy_folder(case):
    s = case.session("fresh")
    cli(["init", s, "--image", case.stack], says=["already holds a session", f"activeseg status {s}"], watch=case.watch)
    (case.dir / "busy").mkdir()
    (case.dir / "busy" / "notes.txt").write_text("mine")
    cli(["init", case.dir / "busy", "--image", case.stack], says=["exists and is not empty"], watch=case.watch)


def test_init_imagej_channels_are_read_as_z_with_a_warning(case):
    p = _write(case.dir / "ij.tif", _noise((6, 32, 32)), imagej=True)  # tifffile calls this CYX
    cli(["init", case.dir / "s", "--image", p], fails=False, watch=case.watch, new=[case.dir / "s"], one_line=False,
        says=["metadata say 6 channels (axes CYX)", "reads them as 6 z-slices", "--axes ZYX"])
    assert manifest(case.dir / "s")["stack"]["shape"] == [6, 32, 32]


def test_init_three_channels_need_axes_zyx(case):
    p = _write(case.dir / "ij3.tif", _noise((3, 32, 32)), imagej=True)
    cli(["init", case.dir / "s", "--image", p], says=["has 3 channels", "split the channels",
                                                     "open it with axes='ZYX' (command line --axes ZYX)"],
        watch=case.watch)
    text = cli(["init", case.dir / "s", "--image", p, "--axes", "ZYX"], fails=False, watch=case.watch,
               new=[case.dir / "s"], one_line=False)
    # noise slices do not correlate: the only warning is the one naming --sections
    assert "metadata say" not in text
    assert all("hardly correlate" in line for line in text.splitlines() if "WARNING" in line)
    assert manifest(case.dir / "s")["stack"]["shape"] == [3, 32, 32]


def test_init_rgb_stack(case):
    p = _write(case.dir / "rgb.tif", _noise((6, 32, 32, 3)), photometric="rgb")
    cli(["init", case.dir / "s", "--image", p], says=["looks like RGB", "convert to grayscale"], watch=case.watch)


def test_init_truncated_tiff(case):
    full = _write(case.dir / "full.tif", _noise((6, 32, 32)))
    cut = case.dir / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    # the real console script: a terminal must show nothing but the one error line
    cli_proc(["init", case.dir / "s", "--image", cut], says=[f"{cut} is truncated", "copy it again"], watch=case.watch)


def test_init_non_tiff_named_tif(case):
    p = case.dir / "fake.tif"
    p.write_text("hello, I am a text file")
    cli(["init", case.dir / "s", "--image", p], says=["is not a valid TIFF file", "export the stack again as TIFF"],
        watch=case.watch)


def test_init_2d_image_as_stack(case):
    p = _write(case.dir / "one.tif", _noise((32, 32)))
    cli(["init", case.dir / "s", "--image", p], says=["got a single 2D image of shape (32, 32)", "give a stack of slices"],
        watch=case.watch)


def test_init_stack_missing_names_similar_files(case):
    _write(case.dir / "image_01.tif", _noise((4, 16, 16)))
    cli(["init", case.dir / "s", "--image", case.dir / "image.tif"],
        says=[f"no such file or folder: {case.dir / 'image.tif'}", "similar names there: image_01.tif"], watch=case.watch)


def test_init_truth_of_another_shape(case):
    p = _write(case.dir / "img.tif", _noise((6, 32, 32)))
    t = _write(case.dir / "truth.tif", np.zeros((6, 32, 30), np.uint8))
    cli(["init", case.dir / "s", "--image", p, "--truth", t],
        says=["has shape (6, 32, 30) but the image has (6, 32, 32); they must match"], watch=case.watch)


@pytest.mark.parametrize("crop, says", [("5:2,:,:", "crop z range 5:2 is empty; start must be below stop"),
                                         ("0:4,:", "must have three comma-separated ranges z,y,x, got 2")])
def test_init_bad_crop(case, crop, says):
    cli(["init", case.dir / "s", "--image", case.stack, "--crop", crop], says=[says], watch=case.watch)


def test_init_bad_voxel_size(case):
    cli(["init", case.dir / "s", "--image", case.stack, "--voxel-size", "0", "5", "5"],
        says=["voxel size z must be a positive number of nanometres, got 0.0"], watch=case.watch)


# ==================================================================================================
# bootstrap
# ==================================================================================================


def test_bootstrap_labels_out_of_range(case):
    s = case.session("fresh")
    lab = np.full(SHAPE, 255, np.uint8)
    lab[4, :10] = 0
    lab[4, 10:20] = 7
    p = _write(case.dir / "labels.tif", lab)
    cli(["bootstrap", s, "--labels", p], says=["label values 7 outside the declared classes", "255 = unlabelled"],
        watch=case.watch)


def test_bootstrap_labels_given_as_a_0_255_mask(case):
    s = case.session("fresh")
    lab = np.full(SHAPE, 255, np.uint8)
    lab[4, :20] = 0  # a Fiji binary mask: 0 solid, 255 pore ... but 255 means unlabelled here
    p = _write(case.dir / "mask.tif", lab)
    cli(["bootstrap", s, "--labels", p], says=["only class [0]", "255 reads as 'unlabelled'", "Divide... by 255"],
        watch=case.watch)


def test_bootstrap_slices_outside_the_stack(case):
    s = case.session("fresh")
    cli(["bootstrap", s, "--slices", "2,40"], says=["--slices [40] outside the stack (0..11)"], watch=case.watch)


def test_bootstrap_twice(case):
    s = case.session("boot")
    cli(["bootstrap", s, "--slices", "3"], says=["is already bootstrapped", "next: activeseg query"], watch=case.watch)


def test_bootstrap_needs_exactly_one_source(case):
    s = case.session("fresh")
    cli(["bootstrap", s], says=["needs exactly one of --scribbles FILE, --labels FILE or --slices"], watch=case.watch)
    cli(["bootstrap", s, "--slices", "2", "--labels", case.truth], says=["exactly one of"], watch=case.watch)


# ==================================================================================================
# query
# ==================================================================================================


def test_query_n_zero(case):
    s = case.session()
    cli(["query", s, "-n", 0], says=["-n must be at least 1, got 0"], watch=case.watch)


def test_query_unknown_strategy(case):
    s = case.session()
    cli(["query", s, "--strategy", "entropie"], says=["unknown strategy 'entropie'", "Available:", "entropy"],
        watch=case.watch)


@pytest.mark.parametrize("param, says", [("min_gap", "--param takes key=value"), ("bogus=3", "has no parameter 'bogus'")])
def test_query_bad_param(case, param, says):
    s = case.session()
    cli(["query", s, "--strategy", "distributed", "--param", param], says=[says], watch=case.watch)


def test_query_spaced_entropy_with_a_huge_min_gap(case):
    s = case.session()
    cli(["query", s, "-n", 1, "--strategy", "spaced_entropy", "--param", "min_gap=1000"],
        says=["min_gap=1000 leaves no unlabelled slice", "lower it, e.g. --param min_gap="], watch=case.watch,
        one_line=False)


def test_query_before_bootstrap(case):
    s = case.session("fresh")
    cli(["query", s, "-n", 1], says=["is not bootstrapped", "activeseg bootstrap"], watch=case.watch)


def test_query_disk_full_mid_export_then_retry_with_another_strategy(case, monkeypatch, scratch_tmp):
    s = case.session()
    real = tifffile.imwrite
    masks = []

    def second_mask_fills_the_disk(path, *a, **k):
        if "_mask.tif" in Path(path).name:
            masks.append(path)
            if len(masks) == 2:
                Path(path).write_bytes(b"II*\0partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", second_mask_fills_the_disk)
    cli(["query", s, "-n", 2, "--strategy", "distributed"], says=["_mask.tif: the disk is full"], watch=case.watch,
        one_line=False)
    assert len(masks) == 2
    monkeypatch.undo()
    out = cli(["query", s, "-n", 2, "--strategy", "random"], fails=False, watch=case.watch, one_line=False,
              new=[s / "rounds", s / "scores", s / "activeseg.json"])
    assert "round 1: random picked" in out
    zs = queried_slices(s)
    expected = {"INSTRUCTIONS.txt", "prefill.npz"} | {
        f"z{z:04d}_{k}" for z in zs for k in ("image.tif", "mask.tif", "preview.png", "uncertainty.tif")
    }
    assert {p.name for p in (s / "rounds" / "r001").iterdir()} == expected


# ==================================================================================================
# import and revert
# ==================================================================================================


def _masks_dir(case, data, zs, *, shape=None) -> Path:
    d = case.dir / "corrected"
    d.mkdir(exist_ok=True)
    for z in zs:
        m = truth_mask(data, z) if shape is None else np.zeros(shape, np.uint8)
        io.write_stack(d / f"z{z:04d}_mask.tif", m[None], kind="labels")
    return d


def test_import_a_slice_twice(case, data):
    s = case.session("queried")
    z = queried_slices(s)[0]
    d = _masks_dir(case, data, [z])
    ok(["import", s, d])
    cli(["import", s, d, "--slices", z], says=[f"slice {z} was already imported in round 1; a slice is imported once"],
        watch=case.watch)


def test_import_a_mask_of_the_wrong_shape(case, data):
    s = case.session("queried")
    z = queried_slices(s)[0]
    d = _masks_dir(case, data, [z], shape=(40, 48))
    cli(["import", s, d], says=["(40, 48)", "(48, 48)"], watch=case.watch)


def test_import_a_mask_for_a_slice_not_queried(case, data):
    s = case.session("queried")
    z = next(z for z in range(SHAPE[0]) if z not in queried_slices(s) and z not in (2, 9))
    d = _masks_dir(case, data, [z])
    cli(["import", s, d], says=[f"is for slice {z}, which was not queried in round 1", f"remove it from {d}"],
        watch=case.watch)


def test_import_before_any_query(case):
    s = case.session("boot")
    cli(["import", s], says=["nothing to import: no round has been queried yet"], watch=case.watch)


def test_import_slice_both_imported_and_skipped(case):
    s = case.session("queried")
    z = queried_slices(s)[0]
    cli(["import", s, "--slices", z, "--skip", z], says=["given to both --slices and --skip"], watch=case.watch)


def test_revert_a_slice_that_has_no_labels(case):
    s = case.session("boot")
    cli(["revert", s, "--slice", 5], says=["slice(s) [5] have no labels to revert", "labelled slices: [2, 9]"],
        watch=case.watch)


# ==================================================================================================
# the session: lock, manifest, inputs, read-only places, platforms
# ==================================================================================================


def test_two_processes_on_one_session(case):
    s = case.session()
    code = textwrap.dedent(f"""
        import time
        from activeseg.session import Session
        with Session.open({str(s)!r}).writing("train"):
            print("LOCKED", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        before = snapshot(*case.watch)
        cli(["query", s, "-n", 1], says=[f"is in use by process {holder.pid} (train, since", "wait for it to finish"],
            watch=case.watch)
        assert snapshot(*case.watch) == before
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_manifest(case):
    s = case.session()
    (s / "activeseg.json").write_text('{"schema_version": 1, "rounds": [')
    cli(["query", s, "-n", 1], says=["is not valid JSON", "restore it from a backup"], watch=case.watch)
    cli(["status", s], says=["is not valid JSON"], watch=case.watch)


def test_session_path_is_not_a_session(case):
    cli(["status", case.stack], says=["no session at", "(it is a file; give the session directory)"], watch=case.watch)
    cli(["query", case.dir / "nowhere"], says=["activeseg.json not found", "activeseg init"], watch=case.watch)


def _own_stack(case, s: Path) -> Path:
    """Point the session at a private copy of its stack (so the test can change or move it)."""
    stack = case.dir / "mine.tif"
    shutil.copyfile(case.stack, stack)
    m = manifest(s)
    m["stack"].update(path=str(stack), mtime_ns=stack.stat().st_mtime_ns)
    (s / "activeseg.json").write_text(json.dumps(m))
    return stack


def test_stack_changed_on_disk_since_init(case):
    s = case.session()
    stack = _own_stack(case, s)
    img = io.read_stack(stack)
    img[0, 0, 0] ^= 1
    io.write_stack(stack, img)
    cli(["export", s, case.dir / "seg.tif"], says=["changed on disk since the session was created",
                                                   "run the command again with --relink PATH"], watch=case.watch)


def test_stack_missing(case):
    s = case.session()
    stack = _own_stack(case, s)
    stack.rename(case.dir / "moved.tif")
    cli(["query", s, "-n", 1], says=[f"the image stack of session {s} is missing: {stack}", "--relink NEW_PATH"],
        watch=case.watch)


def test_read_only_session_injected(case, monkeypatch):
    s = case.session("fresh")
    import activeseg.session as session_mod

    real_open = open

    def ro_open(path, mode="r", *a, **k):
        if any(c in mode for c in "wa+x"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(session_mod, "open", ro_open, raising=False)
    cli(["bootstrap", s, "--slices", "2,9"], says=[f"session {s} cannot be written", "read-only",
                                                   "copy the session folder to a writable place"], watch=case.watch)
    monkeypatch.undo()
    # the lock could be taken, but the label/manifest writes fail: the session stays as it was
    real_mkstemp = tempfile.mkstemp

    def ro_inside_session(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve().is_relative_to(s.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", ro_inside_session)
    cli(["bootstrap", s, "--slices", "2,9"], says=[f"cannot write {s / 'labels'}", "the file system is read-only"],
        watch=case.watch, one_line=False)


def test_read_only_session_on_a_read_only_tmpfs(case):
    with tmpfs(case.dir / "media", "size=16m") as media:
        s = media / "s"
        shutil.copytree(case.session("fresh", name="orig"), s)
        r = _run(["mount", "-o", "remount,ro", str(media)])
        assert r.returncode == 0, r.stderr
        cli(["bootstrap", s, "--slices", "2,9"], says=[f"session {s} cannot be written", "read-only"],
            watch=case.watch)
        cli(["status", s], fails=False, watch=case.watch)  # reading still works


def test_no_fcntl_says_which_systems(case, monkeypatch):
    s = case.session("fresh")
    from activeseg import session as session_mod

    monkeypatch.setattr(session_mod, "fcntl", None)  # as on Windows, where `import fcntl` fails
    cli(["bootstrap", s, "--slices", "2,9"], says=["Linux and macOS", "WSL"], watch=case.watch)


# ==================================================================================================
# other commands
# ==================================================================================================


def test_synth_into_a_folder_that_holds_a_stack(case):
    d = case.dir / "vol"
    d.mkdir()
    _write(d / "image.tif", _noise((4, 16, 16)))
    cli(["synth", d, "--shape", 4, 16, 16], says=[f"{d} already holds image.tif", "give a new folder"],
        watch=case.watch)


def test_info_preview_is_the_stack(case):
    cli(["info", case.stack, "--preview", case.stack], says=[f"--preview {case.stack} is the stack",
                                                             "never writes over its inputs"], watch=case.watch)


def test_train_on_a_full_disk_then_retry(case, monkeypatch, scratch_tmp):
    s = case.session()
    # the whole-stack evaluation claims its scratch blocks on a full disk (after the network was saved)
    monkeypatch.setattr(os, "posix_fallocate", _raise_on(errno.ENOSPC, "fallocate"))
    cli(["train", s, "--steps", 1], says=[f"cannot write {s / 'tmp'}", "the disk is full"], watch=case.watch,
        one_line=False)
    monkeypatch.undo()
    cli(["train", s, "--steps", 1], fails=False, says=["round 0: trained 1 steps"], watch=case.watch, one_line=False,
        new=[s / "rounds", s / "activeseg.json"])
    assert manifest(s)["model"]["round"] == 0


@pytest.mark.parametrize("step", [["query", "-n", 1], ["train", "--steps", 1]])
def test_the_commit_itself_hits_a_full_disk(case, monkeypatch, scratch_tmp, step):
    s = case.session()
    real_mkstemp = tempfile.mkstemp

    def manifest_fills_the_disk(*a, prefix="", **k):
        if prefix.startswith(".activeseg.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(tempfile, "mkstemp", manifest_fills_the_disk)
    cli([step[0], s, *step[1:]], says=[f"cannot write {s / 'activeseg.json'}: the disk is full"], watch=case.watch,
        one_line=False)  # everything the step wrote before its commit is gone again
    monkeypatch.undo()
    cli([step[0], s, *step[1:]], fails=False, says=["round"], watch=case.watch, one_line=False,
        new=[s / "rounds", s / "scores", s / "activeseg.json"])


def test_train_unknown_device(case):
    s = case.session()
    cli(["train", s, "--device", "tpu"], says=["'tpu'", "auto", "cpu", "cuda"], watch=case.watch, one_line=False)


def test_export_to_a_name_that_is_not_a_tiff(case):
    s = case.session()
    cli(["export", s, case.dir / "seg.png"], says=["ends in neither .tif/.tiff", "nor .zarr", "give e.g. seg.tif or seg.zarr"],
        watch=case.watch)


def test_export_onto_the_bootstrap_labels_or_a_corrections_folder(case):
    s = case.session("fresh")
    truth = io.read_stack(case.truth)
    lab = np.full(SHAPE, 255, np.uint8)
    lab[[2, 9]] = truth[[2, 9]]
    labels = _write(case.dir / "labels.tif", lab)
    ok(["bootstrap", s, "--labels", labels])
    cli(["export", s, labels], says=["is the session's bootstrap labels", "never writes over its inputs"],
        watch=case.watch)
    ok(["query", s, "-n", 1, "--strategy", "distributed"])
    z = json.loads(ok(["status", s, "--json"]))["rounds"][-1]["queried"][0]
    fixes = case.dir / "fixes"
    fixes.mkdir()
    io.write_stack(fixes / f"z{z:04d}_mask.tif", truth[z][None], kind="labels")
    ok(["import", s, fixes])
    cli(["export", s, fixes / "seg.tif"], says=["inside the folder of corrections imported into the session"],
        watch=case.watch)
