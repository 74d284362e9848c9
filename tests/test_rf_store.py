"""The fitted Random Forest on disk (save_rf / load_rf), kept in the session (rf/rf-KEY.npz),
and the migration of version-1 session manifests (tiny data, CPU)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from cli_run import fails, ok
from scipy import ndimage

from activeseg import bootstrap as bs
from activeseg.bootstrap import fit_rf, load_rf, save_rf
from activeseg.errors import ModelError, SessionError
from activeseg.features import FeatureConfig
from activeseg.geometry import Geometry
from activeseg.loop import export_segmentation, open_session, state
from activeseg.session import MIGRATIONS, SCHEMA_VERSION, Session

FEATS = FeatureConfig(scales=(0.7, 1.6), z_offsets=(-1, 1), parallax_offsets=(-1, 1))


# --- save_rf / load_rf ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((8, 64, 64)), (1.5, 2.5, 2.5))
    truth = (field < np.quantile(field, 0.7)).astype(np.uint8)
    img = np.clip(np.where(truth == 1, 60.0, 170.0) + rng.normal(0, 25, truth.shape), 0, 255).astype(np.uint8)
    rf = fit_rf(img, {2: truth[2], 5: truth[5]}, rng=np.random.default_rng(1), geometry=Geometry(beam_sign=1),
                features=FEATS, n_estimators=4, max_depth=6, n_jobs=1)
    return img, rf


def test_loaded_rf_is_bit_identical(fitted, tmp_path):
    img, rf = fitted
    path = save_rf(rf, tmp_path / "rf.npz", key="k1")
    with np.load(path, allow_pickle=False) as data:  # readable without pickle
        assert data["nodes"].dtype.names is not None
    back = load_rf(path, key="k1", n_jobs=1)
    zs = list(range(8))
    assert np.array_equal(rf.predict_proba(img, zs), back.predict_proba(img, zs))
    a = rf.sample_proba(img, [1, 6], n_samples=2, rng=np.random.default_rng(3))
    b = back.sample_proba(img, [1, 6], n_samples=2, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert back.spec() == rf.spec()
    assert back.geometry == rf.geometry and back.features == rf.features
    x = np.random.default_rng(2).random((50, FEATS.n_features)).astype(np.float32)
    assert np.array_equal(rf.forest.predict_proba(x), back.forest.predict_proba(x))


def _rewrite(src, dst, change, *, fix_digest: bool):
    """Copy the arrays of ``src`` to ``dst`` with ``change(arrays, meta)`` applied."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"][()]))
    change(arrays, meta)
    text = json.dumps(meta, sort_keys=True)
    arrays["meta"] = np.array(text)
    if fix_digest:
        arrays["digest"] = np.array(bs._rf_digest(text, arrays))
    np.savez_compressed(dst, **arrays)
    return dst


def test_damaged_or_foreign_files_are_refused(fitted, tmp_path):
    _, rf = fitted
    good = save_rf(rf, tmp_path / "rf.npz", key="k1")

    raw = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="cannot be read"):
        load_rf(tmp_path / "cut.npz")
    with pytest.raises(ModelError, match="is missing"):
        load_rf(tmp_path / "nothing.npz")

    def bump_value(arrays, meta):
        v = arrays["values"].copy()
        v[0, 0, 0] += 0.25
        arrays["values"] = v

    with pytest.raises(ModelError, match="digest"):
        load_rf(_rewrite(good, tmp_path / "tampered.npz", bump_value, fix_digest=False))

    def newer(arrays, meta):
        meta["version"] = bs.RF_FILE_VERSION + 1

    with pytest.raises(ModelError, match="newer activeseg"):
        load_rf(_rewrite(good, tmp_path / "newer.npz", newer, fix_digest=True))

    def other_sklearn(arrays, meta):
        meta["sklearn"] = "0.1"

    with pytest.raises(ModelError, match="scikit-learn 0.1"):
        load_rf(_rewrite(good, tmp_path / "old.npz", other_sklearn, fix_digest=True))

    def forged_child(arrays, meta):  # a consistent digest, but a child index out of the tree
        nodes = arrays["nodes"].copy()
        inner = np.flatnonzero(nodes["left_child"] != -1)[0]
        nodes["left_child"][inner] = 10**6
        arrays["nodes"] = nodes

    with pytest.raises(ModelError, match="malformed tree"):
        load_rf(_rewrite(good, tmp_path / "forged.npz", forged_child, fix_digest=True))

    with pytest.raises(ModelError, match="key"):
        load_rf(good, key="another")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ModelError, match="lacks the arrays"):
        load_rf(tmp_path / "plain.npz")
    assert load_rf(good, key="k1").n_classes == rf.n_classes  # the original still loads


# --- in the session -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("synth")
    ok(["synth", d / "vol", "--shape", 8, 48, 48, "--seed", 2])
    tiny_config(d / "tiny.toml")
    return d


@pytest.fixture
def booted(data, tmp_path):
    s = tmp_path / "s"
    ok(["init", s, "--image", data / "vol" / "image.tif", "--config", data / "tiny.toml"])
    ok(["bootstrap", s, "--slices", "1,6"])
    return s


def _manifest(s):
    return json.loads((s / "activeseg.json").read_text())


def _truth_into_masks(s, data, idx):
    from activeseg import io

    truth = io.read_stack(data / "vol" / "truth.tif")
    for p in sorted((s / "rounds" / f"r{idx:03d}").glob("z*_mask.tif")):
        io.write_stack(p, truth[int(p.name[1:5])][None], kind="labels")


def test_bootstrap_stores_the_rf_and_query_loads_it(booted, monkeypatch):
    m = _manifest(booted)
    assert m["schema_version"] == SCHEMA_VERSION == 2
    entry = m["rf"]
    path = booted / entry["path"]
    assert path.exists() and entry["path"] == f"rf/rf-{entry['key']}.npz"
    session = Session.open(booted)
    assert state.rf_key(session, session.manifest) == entry["key"]

    def no_fit(*a, **k):
        raise AssertionError("the stored forest should have been loaded, not refit")

    state._RF_CACHE.clear()  # as in a fresh process
    monkeypatch.setattr(state, "fit_rf", no_fit)
    ok(["query", booted, "-n", 2, "--strategy", "entropy"])
    assert _manifest(booted)["rf"] == entry  # the same labels: the same forest, nothing rewritten

    with session.writing("test"):  # the sweep of the next writer keeps the stored forest
        pass
    assert path.exists()


def test_damaged_file_is_refit_with_a_warning_and_read_only_never_writes(booted, tmp_path, caplog):
    m = _manifest(booted)
    path = booted / m["rf"]["path"]
    path.write_bytes(path.read_bytes()[:100])  # truncated
    damaged = path.read_bytes()
    state._RF_CACHE.clear()
    with caplog.at_level(logging.WARNING, logger="activeseg"):
        export_segmentation(open_session(booted), tmp_path / "seg.tif")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and "\n" not in warned[0]
    assert path.read_bytes() == damaged and _manifest(booted)["rf"] == m["rf"]  # export wrote nothing in the session

    state._RF_CACHE.clear()
    ok(["query", booted, "-n", 1])  # a writing step stores it again
    assert _manifest(booted)["rf"] == m["rf"]
    assert load_rf(path, key=m["rf"]["key"]).n_classes == 2


def test_labels_change_stores_a_new_forest_and_prunes_old_ones(booted, data):
    first = _manifest(booted)["rf"]
    ok(["query", booted, "-n", 2, "--strategy", "distributed"])
    _truth_into_masks(booted, data, 1)
    ok(["import", booted])
    assert _manifest(booted)["rf"] == first  # an import only records labels: the forest is fitted when needed
    ok(["train", booted, "--steps", 1])  # the gate compares with the RF of the new labels: fitted and stored
    second = _manifest(booted)["rf"]
    assert second["key"] != first["key"] and (booted / second["path"]).exists()
    ok(["revert", booted, "--round", "1"])
    ok(["query", booted, "-n", 1, "--strategy", "distributed"])
    third = _manifest(booted)["rf"]
    assert third["key"] not in (first["key"], second["key"])  # a tombstone changes the labels' version
    files = sorted(p.name for p in (booted / "rf").glob("rf-*.npz"))
    # the new forest and the one committed before it stay; older ones go
    assert files == sorted([f"rf-{third['key']}.npz", f"rf-{second['key']}.npz"])


def _as_version_1(s):
    """What a session written by the version-1 code looks like: no ``rf`` key, no rf/ folder."""
    m = _manifest(s)
    m["schema_version"] = 1
    m.pop("rf", None)
    (s / "activeseg.json").write_text(json.dumps(m))
    shutil.rmtree(s / "rf", ignore_errors=True)
    return m


def test_version_1_session_is_migrated_and_continues(booted, data, tmp_path):
    assert 1 in MIGRATIONS
    _as_version_1(booted)
    session = Session.open(booted)
    assert session.manifest["schema_version"] == SCHEMA_VERSION and session.manifest["rf"] is None
    assert _manifest(booted)["schema_version"] == 1  # migrated in memory only
    ok(["status", booted])
    assert _manifest(booted)["schema_version"] == 1  # a read-only command writes nothing

    state._RF_CACHE.clear()
    ok(["query", booted, "-n", 2])
    m = _manifest(booted)
    assert m["schema_version"] == SCHEMA_VERSION and (booted / m["rf"]["path"]).exists()
    _truth_into_masks(booted, data, 1)
    ok(["import", booted])
    ok(["train", booted, "--steps", 2])
    ok(["export", booted, tmp_path / "seg.tif"])
    assert (tmp_path / "seg.tif").exists()


def test_newer_or_unknown_schema_is_refused(booted):
    m = _manifest(booted)
    m["schema_version"] = SCHEMA_VERSION + 1
    (booted / "activeseg.json").write_text(json.dumps(m))
    with pytest.raises(SessionError, match="newer activeseg"):
        Session.open(booted)
    assert "newer activeseg" in fails(["status", booted])
    m["schema_version"] = 0
    (booted / "activeseg.json").write_text(json.dumps(m))
    with pytest.raises(SessionError, match="schema version 0"):
        Session.open(booted)
