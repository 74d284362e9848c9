"""Models that travel: per-stack intensity normalisation, the training profile, the drift warning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from activeseg import model as model_mod
from activeseg.bootstrap import fit_rf
from activeseg.cli import app
from activeseg.geometry import Geometry
from activeseg.infer import InferenceOptions, predict_stack
from activeseg.model import (
    DRIFT_THRESHOLD,
    NORM_FIXED,
    NORM_STACK,
    ModelConfig,
    intensity_range,
    make_input,
    stack_intensity,
)
from activeseg.network import load_model, save_model
from activeseg.synth import synthesize
from activeseg.train import IGNORE_INDEX, TrainConfig, train_model

TINY = ModelConfig(encoder_depth=3, decoder_channels=(32, 16, 8))
CPU = InferenceOptions(device="cpu")
FAST = TrainConfig(steps=30, patch_size=64, batch_size=4, eval_every=10, device="cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vol():
    return synthesize((16, 64, 64), seed=0, difficulty="hard")


@pytest.fixture(scope="module")
def trained(vol):
    labels = np.full(vol.truth.shape, IGNORE_INDEX, np.uint8)
    labels[[2, 7, 12]] = vol.truth[[2, 7, 12]]
    model, _ = train_model(vol.image, labels, config=FAST, model_config=TINY, rng=np.random.default_rng(0))
    model.device = "cpu"
    return model, labels


def _copies(img: np.ndarray) -> dict[str, np.ndarray]:
    f = img.astype(np.float64)
    return {
        "uint16 x200": img.astype(np.uint16) * np.uint16(200),
        "float32 [0, 1]": ((f - f.min()) / (f.max() - f.min())).astype(np.float32),
        "gain and offset": (f * 3.7 - 100.0).astype(np.float32),
    }


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def test_new_model_normalises_by_its_stack(trained, vol):
    model, _ = trained
    assert model.norm_mode == NORM_STACK and model.profile is not None
    assert model.norm == intensity_range(vol.image)
    # on its training stack the input is exactly the one of the training range (in-session results unchanged)
    np.testing.assert_array_equal(model.make_input(vol.image, [0, 5, 15]),
                                  make_input(vol.image, [0, 5, 15], TINY.offsets, model.norm))
    big = vol.image.astype(np.uint16) * np.uint16(200)
    assert model.stack_norm(big) == pytest.approx((200 * model.norm[0], 200 * model.norm[1]))


def test_prediction_travels_to_copies(trained, vol, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", device="cpu")
    ref = predict_stack(model, vol.image, options=CPU)
    assert np.mean(ref.argmax(1) == vol.truth) > 0.7  # it learned something, so agreement means something
    for name, copy in _copies(vol.image).items():
        for m in (model, loaded):
            agree = _agreement(ref, predict_stack(m, copy, options=CPU))
            assert agree >= 0.99, (name, agree)
    # what the fixed training range did to the 16-bit copy (the behaviour this replaces)
    fixed = dataclasses.replace(model, norm_mode=NORM_FIXED)
    assert _agreement(ref, predict_stack(fixed, _copies(vol.image)["uint16 x200"], options=CPU)) < 0.99


def test_drift_warns_for_inverted_and_gamma_not_for_copies(trained, vol):
    model, _ = trained
    same = model.intensity_drift(vol.image)
    assert same is not None and same.distance == pytest.approx(0.0, abs=1e-9) and same.message is None
    for name, copy in _copies(vol.image).items():
        d = model.intensity_drift(copy)
        assert d is not None and d.distance < DRIFT_THRESHOLD / 4 and d.message is None, (name, d)
    u = vol.image.astype(np.float64) / 255.0
    for name, odd in (("inverted", 255 - vol.image), ("gamma 2", (u**2).astype(np.float32))):
        d = model.intensity_drift(odd)
        assert d is not None and d.exceeded, (name, d)
        assert f"histogram distance {d.distance:.2f}" in d.message and "above 0.20" in d.message


def test_model_json_records_the_normalisation(trained, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["norm_mode"] == "stack_percentiles" and meta["norm_percentiles"] == [0.5, 99.5]
    assert meta["norm"] == list(model.norm)
    prof = meta["intensity_profile"]
    assert len(prof["histogram"]) == 32 and prof["limits"] == [-1.5, 1.5]
    assert sum(prof["histogram"]) == pytest.approx(1.0, abs=1e-4)
    assert prof["quantiles"] == sorted(prof["quantiles"]) and len(prof["quantiles"]) == len(prof["quantile_levels"])
    assert meta["version"] == 2  # older activeseg refuses it instead of applying the training range elsewhere


def test_old_model_json_keeps_the_fixed_range(trained, vol, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "old")
    path = tmp_path / "old" / "model.json"
    meta = json.loads(path.read_text())
    for key in ("norm_mode", "norm_percentiles", "intensity_profile"):
        del meta[key]
    meta["version"] = 1
    path.write_text(json.dumps(meta))
    old = load_model(tmp_path / "old", device="cpu")
    assert old.norm_mode == NORM_FIXED and old.norm == model.norm and old.profile is None
    assert old.intensity_drift(vol.image) is None  # nothing to compare with
    big = _copies(vol.image)["uint16 x200"]
    # as before: the stored range, whatever the stack
    np.testing.assert_array_equal(old.make_input(big, [3]), make_input(big, [3], TINY.offsets, model.norm))
    np.testing.assert_array_equal(predict_stack(old, vol.image, options=CPU), predict_stack(model, vol.image, options=CPU))
    save_model(old, tmp_path / "resaved")  # a fixed model stays readable by older activeseg
    assert json.loads((tmp_path / "resaved" / "model.json").read_text())["version"] == 1


def test_warm_start_keeps_the_mode(trained, vol, tmp_path):
    model, labels = trained
    short = dataclasses.replace(FAST, steps=2, eval_every=1)
    big = _copies(vol.image)["uint16 x200"]
    warm, _ = train_model(big, labels, config=short, rng=np.random.default_rng(1), init=model)
    assert warm.norm_mode == NORM_STACK and warm.norm == intensity_range(big)
    old = dataclasses.replace(model, norm_mode=NORM_FIXED, profile=None)
    warm_old, _ = train_model(vol.image, labels, config=short, rng=np.random.default_rng(1), init=old)
    assert warm_old.norm_mode == NORM_FIXED and warm_old.norm == model.norm
    given, _ = train_model(vol.image, labels, config=short, model_config=TINY, rng=np.random.default_rng(1),
                           norm=(0.0, 255.0))
    assert given.norm_mode == NORM_FIXED and given.norm == (0.0, 255.0)


def test_stack_range_is_computed_once_per_stack(trained, vol, monkeypatch):
    model, _ = trained
    calls = []
    sample = model_mod._sample_values
    monkeypatch.setattr(model_mod, "_sample_values", lambda *a: calls.append(1) or sample(*a))
    img = vol.image.copy()  # a new object: not cached yet
    predict_stack(model, img, options=dataclasses.replace(CPU, batch_size=1))  # 16 blocks
    assert len(calls) == 1
    model.intensity_drift(img)
    predict_stack(model, img, slices=[1, 2], options=CPU)
    assert len(calls) == 1
    predict_stack(model, img.copy(), slices=[1], options=CPU)  # another stack
    assert len(calls) == 2
    assert stack_intensity(img)[0] == intensity_range(img)


def test_rf_travels(vol):
    # the RF's features map each slice's 1..99 percentiles to 0..1 (FeatureConfig.normalise="slice")
    labels = {z: vol.truth[z] for z in (3, 11)}
    rf = fit_rf(vol.image, labels, rng=np.random.default_rng(0), geometry=Geometry(beam_sign=1),
                n_estimators=8, n_jobs=1)
    slices = [0, 6, 9, 15]
    ref = rf.predict_proba(vol.image, slices)
    for name, copy in _copies(vol.image).items():
        agree = _agreement(ref, rf.predict_proba(copy, slices))
        assert agree >= 0.99, (name, agree)


def test_predict_cli_prints_the_warning(trained, vol, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "m")
    runner = CliRunner()
    tifffile.imwrite(tmp_path / "big.tif", _copies(vol.image)["uint16 x200"])
    tifffile.imwrite(tmp_path / "inv.tif", 255 - vol.image)
    res = runner.invoke(app, ["predict", str(tmp_path / "m"), str(tmp_path / "big.tif"), str(tmp_path / "big_seg.tif")])
    assert res.exit_code == 0, res.output
    assert "histogram distance" not in res.output
    seg = tifffile.imread(tmp_path / "big_seg.tif")
    ref = predict_stack(model, vol.image, options=CPU).argmax(1)
    assert np.mean(seg == ref) >= 0.99
    res = runner.invoke(app, ["predict", str(tmp_path / "m"), str(tmp_path / "inv.tif"), str(tmp_path / "inv_seg.tif")])
    assert res.exit_code == 0, res.output
    assert "histogram distance" in " ".join(res.output.split())


def test_segmodel_rejects_bad_mode(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="norm_mode"):
        dataclasses.replace(model, norm_mode="per_slice")
    with pytest.raises(ValueError, match="norm_percentiles"):
        dataclasses.replace(model, norm_percentiles=(99.5, 0.5))
