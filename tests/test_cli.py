import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from activeseg import __version__, io
from activeseg.cli import app

runner = CliRunner()


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert __version__ in res.output


@pytest.mark.parametrize("cmd", ["--help", "info --help", "synth --help", "demo --help"])
def test_every_help_has_an_example(cmd):
    res = runner.invoke(app, cmd.split())
    assert res.exit_code == 0
    if cmd != "--help":
        assert "Example: activeseg" in res.output


def _write_stack(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (6, 32, 40), dtype=np.uint8)
    path = tmp_path / "stack.tif"
    io.write_stack(path, data, voxel_size=(10.0, 5.0, 5.0))
    return path, data


def test_help_and_info_do_not_import_torch(tmp_path):
    path, _ = _write_stack(tmp_path)
    code = (
        "import sys\n"
        "from activeseg.cli import app\n"
        "for args in (['--help'], ['info', sys.argv[1], '--json']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
        "print('MODAL' if 'modAL' in sys.modules else 'NO_MODAL')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert "NO_TORCH" in out and "NO_MODAL" in out


def test_info_reports_shape_voxel_size_and_labels(tmp_path):
    path, data = _write_stack(tmp_path)
    labels = np.full(data.shape, 255, np.uint8)
    labels[2] = 1
    labels[2, :8] = 0  # 8 of 32 rows solid -> porosity 0.75 of labelled pixels
    io.write_stack(tmp_path / "labels.tif", labels, kind="labels")
    res = runner.invoke(app, ["info", str(path), "--labels", str(tmp_path / "labels.tif"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["shape"] == [6, 32, 40]
    assert info["dtype"] == "uint8"
    assert info["voxel_size_nm"] == pytest.approx([10.0, 5.0, 5.0])
    assert info["labels"]["labelled_slices"] == 1
    assert info["labels"]["porosity"] == pytest.approx(0.75)
    res = runner.invoke(app, ["info", str(path), "--preview", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_errors_are_one_red_line_and_exit_1(tmp_path):
    res = runner.invoke(app, ["info", str(tmp_path / "missing.tif")])
    assert res.exit_code == 1
    assert "error:" in res.output
    assert "Traceback" not in res.output
    bad = tmp_path / "rgb.tif"
    io_tifffile = pytest.importorskip("tifffile")
    io_tifffile.imwrite(bad, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    res = runner.invoke(app, ["info", str(bad)])
    assert res.exit_code == 1
    assert "RGB" in res.output


def test_debug_shows_the_traceback(tmp_path):
    res = runner.invoke(app, ["--debug", "info", str(tmp_path / "missing.tif")])
    assert res.exit_code != 0
    assert res.exception is not None  # re-raised for the traceback


def test_synth_writes_files_and_reports_otsu_failure(tmp_path):
    out = tmp_path / "vol"
    res = runner.invoke(
        app,
        ["synth", str(out), "--shape", "12", "48", "48", "--seed", "3", "--preview", str(out / "look.png")],
    )
    assert res.exit_code == 0, res.output
    for name in ("image.tif", "truth.tif", "depth.tif", "synth.json", "look.png"):
        assert (out / name).exists(), name
    assert "Otsu" in res.output
    meta = json.loads((out / "synth.json").read_text())
    assert meta["geometry"]["alpha_deg"] == 52.0
    img = io.open_stack(out / "image.tif")
    assert img.shape == (12, 48, 48)


def test_synth_graded_volume(tmp_path):
    out = tmp_path / "graded"
    res = runner.invoke(app, ["synth", str(out), "--shape", "16", "64", "64", "--porosity", "0.7",
                              "--porosity-gradient", "0.3", "--seed", "1"])
    assert res.exit_code == 0, res.output
    truth = io.open_stack(out / "truth.tif")
    pz = (np.asarray(truth[:]) == 1).mean(axis=(1, 2))
    assert pz[-1] - pz[0] > 0.25
    assert f"{pz[0]:.3f} / {pz[-1]:.3f}" in res.output
    assert json.loads((out / "synth.json").read_text())["porosity_gradient"] == 0.3
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--porosity", "0.9", "--porosity-gradient", "0.3"])
    assert res.exit_code == 1 and "both ends" in res.output


def test_synth_rejects_bad_choices(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "--structure", "cubes"])
    assert res.exit_code == 1
    assert "blobs, spheres, fibres" in res.output


def test_strategies_lists_builtins_and_survives_markup_in_plugin_text(monkeypatch):
    from activeseg import registry
    from activeseg.registry import strategy

    @strategy(description="top-n [experimental] by entropy [/tmp/x.so]")
    def odd_text(ctx, n, /, *, level: int = 1):
        return ctx.unlabelled_ids[:n]

    registry.register_strategy(odd_text)
    try:
        res = runner.invoke(app, ["strategies"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        for name in ("initial", "distributed", "spaced_entropy", "ranked_batch", "hybrid", "odd_text"):
            assert name in res.output
        assert "[experimental]" in res.output
        res = runner.invoke(app, ["strategies", "--json"])
        listed = {i["name"]: i for i in json.loads(res.output)}
        assert listed["hybrid"]["params"]["fraction"] == 0.5
        assert listed["odd_text"]["params"] == {"level": 1}
    finally:
        registry.unregister_strategy("odd_text")
