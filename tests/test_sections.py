"""Independent 2D sections (``init --sections``): nothing reads a slice's neighbours (tiny data, CPU)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_run import ok
from typer.testing import CliRunner

from activeseg import features, io, loop
from activeseg.cli import app
from activeseg.config import SessionConfig, load_config, model_kwargs, rf_kwargs
from activeseg.errors import ConfigError
from activeseg.loop.state import current_model, open_image
from activeseg.loop.steps import SECTIONS_R
from activeseg.synth import STRUCTURES, render_volume, synthesize

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    """Six unrelated 64 x 64 sections (two non-adjacent slices of three synthetic volumes), a synth z-stack."""
    d = tmp_path_factory.mktemp("sections")
    vols = [synthesize((12, 64, 64), structure=s, difficulty="hard", seed=i)
            for i, s in enumerate(("blobs", "spheres", "fibres"))]
    picks = [(0, 0), (1, 5), (2, 10), (0, 11), (1, 2), (2, 6)]
    io.write_stack(d / "sections.tif", np.stack([vols[v].image[z] for v, z in picks]))
    io.write_stack(d / "truth.tif", np.stack([vols[v].truth[z] for v, z in picks]), kind="labels")
    io.write_stack(d / "zstack.tif", vols[0].image)
    tiny_config(d / "tiny.toml", session={"export_radius": 0})
    tiny_config(d / "tiny_r1.toml")  # export_radius = 1
    return d


def _init(data, s, *extra):
    return ok(["init", s, "--image", data / "sections.tif", "--truth", data / "truth.tif",
               "--config", data / "tiny.toml", *extra])


def test_init_sections_records_the_flag_and_status_says_so(data, tmp_path):
    out = _init(data, tmp_path / "s", "--sections")
    assert "independent 2D sections" in out and "beam sign not used" in out
    cfg = json.loads((tmp_path / "s" / "activeseg.json").read_text())["config"]
    assert cfg["sections"] is True and cfg["export_radius"] == 0
    assert json.loads(ok(["status", tmp_path / "s", "--json"]))["sections"] is True
    assert "sections: independent 2D sections" in ok(["status", tmp_path / "s"])
    # without the flag: a z-stack, and status says nothing about sections
    _init(data, tmp_path / "z")
    assert json.loads((tmp_path / "z" / "activeseg.json").read_text())["config"]["sections"] is False
    assert "sections:" not in ok(["status", tmp_path / "z"])


def test_settings_that_read_neighbours_are_refused_with_sections(data, tmp_path, tiny_config):
    res = runner.invoke(app, ["init", str(tmp_path / "s"), "--image", str(data / "sections.tif"),
                              "--config", str(data / "tiny_r1.toml"), "--sections"])
    assert res.exit_code != 0 and "export_radius" in res.output and "sections" in res.output
    assert not (tmp_path / "s" / "activeseg.json").exists()
    cfg = tiny_config(tmp_path / "c.toml", session={"export_radius": 0, "sections": True},
                      model={"offsets": [-1, 0, 1]})
    with pytest.raises(ConfigError, match=r"\[model\] offsets"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"\[rf.features\] parallax_offsets"):
        loop.validate_config(SessionConfig(sections=True, rf={"features": {"parallax_offsets": [1]}}))
    # a config file may declare sections itself
    cfg = tiny_config(tmp_path / "d.toml", session={"export_radius": 0, "sections": True})
    assert SessionConfig.from_dict(load_config(cfg)).sections is True


def test_sections_config_gives_2d_rf_features_and_a_single_slice_network():
    cfg = SessionConfig(sections=True, rf={"features": {"scales": [1.0, 2.0]}})
    feats = rf_kwargs(cfg)["features"]
    names = features.feature_names(feats)
    assert names and not any(n.startswith(("zdiff", "parallax")) for n in names)
    assert feats.halo == (0, 0) and not feats.needs_beam_sign and feats.scales == (1.0, 2.0)
    assert model_kwargs(cfg)["offsets"] == (0,)
    z_stack = SessionConfig()
    assert any(n.startswith("parallax") for n in features.feature_names(rf_kwargs(z_stack).get("features",
                                                                                     features.FeatureConfig())))
    assert "offsets" not in model_kwargs(z_stack)
    from activeseg.model import ModelConfig

    assert ModelConfig(**model_kwargs(cfg)).in_channels == 1


def _rf_of(session_dir):
    sess = loop.open_session(session_dir)
    with open_image(sess) as img:
        image = np.asarray(img[:])
        _, _, rf = current_model(sess, img)
    return rf, image


def test_rf_of_a_sections_session_reads_only_its_slice_and_estimates_no_beam_sign(data, tmp_path, caplog, monkeypatch):
    calls = []
    real = features.estimate_beam_sign
    monkeypatch.setattr(features, "estimate_beam_sign", lambda *a, **k: calls.append(1) or real(*a, **k))
    _init(data, tmp_path / "s", "--sections")
    with caplog.at_level(logging.DEBUG, logger="activeseg"):
        ok(["bootstrap", tmp_path / "s", "--slices", "0"])
    assert not calls and not [r for r in caplog.records if "beam sign" in r.getMessage()]
    rf, image = _rf_of(tmp_path / "s")
    assert not any(n.startswith(("zdiff", "parallax")) for n in rf.feature_names)
    changed = image.copy()
    changed[[1, 3]] = np.random.default_rng(5).integers(0, 256, changed[[1, 3]].shape).astype(image.dtype)
    assert np.array_equal(rf.predict_proba(image, [2]), rf.predict_proba(changed, [2]))
    # the same on a z-stack session: its RF reads the neighbours (so the check above can fail)
    _init(data, tmp_path / "z")
    ok(["bootstrap", tmp_path / "z", "--slices", "0"])
    assert calls  # the beam sign was estimated for the parallax features
    rf_z, _ = _rf_of(tmp_path / "z")
    assert not np.array_equal(rf_z.predict_proba(image, [2]), rf_z.predict_proba(changed, [2]))


def _correlation_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "hardly correlate" in r.getMessage()]


def test_init_warns_when_adjacent_slices_do_not_correlate(data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        loop.init_session(tmp_path / "a", data / "sections.tif")
    msgs = _correlation_warnings(caplog)
    assert len(msgs) == 1 and "--sections" in msgs[0] and "sections.tif" in msgs[0] and "over 5 pairs" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        loop.init_session(tmp_path / "b", data / "zstack.tif")
        loop.init_session(tmp_path / "c", data / "sections.tif", sections=True)  # declared: nothing to say
    assert not _correlation_warnings(caplog)
    r_sections = features.adjacent_correlation(io.read_stack(data / "sections.tif"))
    r_stack = features.adjacent_correlation(io.read_stack(data / "zstack.tif"))
    assert np.median(r_sections) < SECTIONS_R < np.median(r_stack)


SOFC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "structures" / "sofc_lsm_cathode.tif"


@pytest.mark.parametrize("structure", [*STRUCTURES, "sofc_lsm_cathode"])
def test_the_correlation_threshold_passes_hard_synthetic_z_stacks(structure):
    if structure in STRUCTURES:
        image = synthesize((10, 64, 64), structure=structure, difficulty="hard", seed=3).image
    else:  # a real segmented microstructure, rendered by the simulator
        if not SOFC.exists():
            pytest.skip(f"{SOFC} not here")
        image = render_volume(io.read_stack(SOFC)[:10, :64, :64], seed=3).image
    assert np.median(features.adjacent_correlation(image)) > SECTIONS_R


def test_a_sections_session_runs_the_whole_loop(data, tmp_path):
    s = tmp_path / "s"
    _init(data, s, "--sections")
    ok(["bootstrap", s, "--slices", "0"])
    ok(["query", s, "-n", 2, "--strategy", "entropy"])
    folder = s / "rounds" / "r001"
    images = sorted(folder.glob("z*_image.tif"))
    assert len(images) == 2
    sess = loop.open_session(s)
    for p in images:  # the slice alone, no neighbours
        z = int(p.name[1:5])
        got = np.asarray(tifffile.imread(p))
        assert got.shape == (64, 64) and np.array_equal(got, io.read_stack(data / "sections.tif")[z])
    assert "MIDDLE" not in (folder / "INSTRUCTIONS.txt").read_text()
    loop.oracle_correct(sess)
    ok(["train", s, "--steps", 2])
    m = json.loads((s / "activeseg.json").read_text())
    model_json = json.loads((s / m["model"]["path"] / "model.json").read_text())
    assert model_json["config"]["offsets"] == [0]
    ok(["query", s, "-n", 1, "--strategy", "entropy"])  # network scores on a single-slice model
    ok(["export", s, tmp_path / "seg.tif"])
    assert io.read_stack(tmp_path / "seg.tif").shape == (6, 64, 64)
