"""Uncertainty measures, the scorer registry and score_slices (activeseg.uncertainty)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from activeseg.errors import ConfigError
from activeseg.uncertainty import (
    SCORERS,
    Scorer,
    available_scorers,
    bald,
    disagreement,
    entropy,
    get_scorer,
    margin,
    porosity,
    reduce_slices,
    register_scorer,
    score_slices,
    tta_samples,
    tta_variance,
    variance,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _binary(p1) -> np.ndarray:
    """(n, 2, Y, X) from pore probabilities (n, Y, X)."""
    p1 = np.asarray(p1, dtype=np.float32)
    return np.stack([1 - p1, p1], axis=-3)


# ----------------------------------------------------------------------------- pixel measures


def test_module_imports_without_torch():
    code = "import sys, activeseg.uncertainty; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_entropy_and_margin_known_values():
    p = _binary([[[0.5, 1.0, 0.9]]])
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)  # entropy in bits of (0.1, 0.9)
    np.testing.assert_allclose(entropy(p)[0, 0], [1.0, 0.0, h09], atol=1e-6)
    np.testing.assert_allclose(margin(p)[0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_bald_known_values():
    # two confident samples that disagree: mean is uniform (H = log 2), each H = 0 -> MI = 1 normalised
    s = np.stack([_binary([[[1.0]]]), _binary([[[0.0]]])])
    assert s.shape == (2, 1, 2, 1, 1)
    np.testing.assert_allclose(bald(s), [[[1.0]]], atol=1e-6)
    np.testing.assert_allclose(bald(s, normalise=False), [[[math.log(2)]]], atol=1e-6)
    # identical samples: no disagreement; also T = 1
    same = np.stack([_binary([[[0.3, 0.8]]])] * 3)
    np.testing.assert_allclose(bald(same), 0.0, atol=1e-6)
    np.testing.assert_allclose(bald(same[:1]), 0.0, atol=1e-6)
    # hand-computed: samples p = 0.2 and 0.6 -> mean 0.4
    s = np.stack([_binary([[[0.2]]]), _binary([[[0.6]]])])

    def h(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    expect = (h(0.4) - 0.5 * (h(0.2) + h(0.6))) / math.log(2)
    np.testing.assert_allclose(bald(s)[0, 0, 0], expect, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"\(T, n, C, Y, X\)"):
        bald(_binary([[[0.5]]]))


def test_variance_known_values():
    s = np.stack([_binary([[[0.2, 0.5]]]), _binary([[[0.6, 0.5]]])])
    np.testing.assert_allclose(variance(s)[0, 0], [0.04, 0.0], atol=1e-7)
    assert tta_variance is variance


def test_disagreement_known_values():
    a = _binary([[[0.7, 0.5]]])
    b = _binary([[[0.4, 0.5]]])
    np.testing.assert_allclose(disagreement(a, b)[0, 0], [0.3, 0.0], atol=1e-6)
    skl = 0.5 * ((0.3 - 0.6) * (math.log(0.3) - math.log(0.6)) + (0.7 - 0.4) * (math.log(0.7) - math.log(0.4)))
    np.testing.assert_allclose(disagreement(a, b, how="skl")[0, 0], [skl, 0.0], atol=1e-6)
    np.testing.assert_array_equal(disagreement(a, b, how="skl"), disagreement(b, a, how="skl"))
    with pytest.raises(ConfigError, match="same shape"):
        disagreement(a, b[..., :0])
    with pytest.raises(ConfigError, match="unknown disagreement"):
        disagreement(a, b, how="l2")


def test_porosity_known_values():
    p = _binary([[[0.9, 0.8], [0.1, 0.2]], [[0.9, 0.9], [0.9, 0.4]]])
    np.testing.assert_allclose(porosity(p), [0.5, 0.75])


# ----------------------------------------------------------------------------- registry


def test_registry_contents_and_errors():
    assert {"entropy", "margin", "bald", "tta_variance", "rf_disagreement", "porosity"} <= set(available_scorers())
    with pytest.raises(ConfigError) as e:
        get_scorer("nope")
    assert "entropy" in str(e.value) and "bald" in str(e.value)
    with pytest.raises(ConfigError, match="already registered"):
        register_scorer(Scorer("entropy", ("proba",), pixel=lambda p: entropy(p["proba"])))
    with pytest.raises(ConfigError, match="unknown passes"):
        Scorer("x", ("magic",), pixel=lambda p: p)


def test_custom_scorer_is_used():
    name = "test_max_pore_prob"
    register_scorer(Scorer(name, ("proba",), pixel=lambda p: p["proba"][:, 1]), replace=True)
    try:
        model = _FakeModel()
        img = _fake_stack()
        out = score_slices(model, img, [name])
        np.testing.assert_allclose(out[name], img.mean(axis=(1, 2)) / 255.0, rtol=1e-5)
    finally:
        SCORERS.pop(name)


# ----------------------------------------------------------------------------- score_slices


class _FakeModel:
    """A numpy ProbabilityModel: pore probability = intensity / 255. Counts calls."""

    n_classes = 2

    def __init__(self):
        self.calls: list[list[int]] = []

    def predict_proba(self, image, slices):
        self.calls.append(list(slices))
        p1 = np.asarray(image[list(slices)], dtype=np.float32) / 255.0
        return _binary(p1)


class _FakeEnsemble(_FakeModel):
    def __init__(self):
        super().__init__()
        self.sample_calls: list[list[int]] = []

    def sample_proba(self, image, slices, *, n_samples, rng):
        self.sample_calls.append(list(slices))
        base = np.asarray(image[list(slices)], dtype=np.float32) / 255.0
        noise = rng.uniform(-0.1, 0.1, (n_samples,) + base.shape).astype(np.float32)
        return _binary(np.clip(base[None] + noise, 0, 1))


def _fake_stack(z=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (z, 6, 7), dtype=np.uint8)


def test_score_slices_shared_pass_and_nan_for_unscored():
    img = _fake_stack()
    model = _FakeModel()
    out = score_slices(model, img, ["entropy", "margin", "porosity"], every=3, block=2)
    scored = [0, 3, 6, 9]
    for name in ("entropy", "margin", "porosity"):
        assert out[name].shape == (10,) and out[name].dtype == np.float32
        assert np.flatnonzero(np.isfinite(out[name])).tolist() == scored
    # one pass per block, shared by the three scorers
    assert model.calls == [[0, 3], [6, 9]]
    p = _binary(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(out["entropy"][scored], entropy(p[scored]).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(out["porosity"][scored], (img[scored] > 127.5).mean(axis=(1, 2)), rtol=1e-6)


def test_score_slices_subsets():
    img = _fake_stack(20)
    model = _FakeModel()
    out = score_slices(model, img, "margin", slices=[19, 4, 7, 4])
    assert np.flatnonzero(np.isfinite(out["margin"])).tolist() == [4, 7, 19]
    out = score_slices(model, img, "margin", sample=5, rng=np.random.default_rng(0))
    assert np.isfinite(out["margin"]).sum() == 5
    with pytest.raises(ConfigError, match="rng"):
        score_slices(model, img, "margin", sample=5)
    with pytest.raises(ConfigError, match="outside"):
        score_slices(model, img, "margin", slices=[20])
    with pytest.raises(ConfigError, match="every"):
        score_slices(model, img, "margin", every=0)


def test_score_slices_errors():
    img = _fake_stack()
    with pytest.raises(ConfigError) as e:
        score_slices(_FakeModel(), img, ["entropy", "wobble"])
    assert "wobble" in str(e.value) and "porosity" in str(e.value)
    with pytest.raises(ConfigError, match="sample_proba"):
        score_slices(_FakeModel(), img, ["bald"], rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rng"):
        score_slices(_FakeEnsemble(), img, ["bald"])
    with pytest.raises(ConfigError, match="reference"):
        score_slices(_FakeModel(), img, ["rf_disagreement"])
    with pytest.raises(ConfigError, match="reduction"):
        score_slices(_FakeModel(), img, ["entropy"], reduction="median")


def test_score_slices_bald_streams_blocks():
    img = _fake_stack(9)
    model = _FakeEnsemble()
    out = score_slices(model, img, ["bald", "entropy"], n_samples=4, rng=np.random.default_rng(0), block=4)
    assert model.sample_calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert np.all(out["bald"] > 0) and np.all(np.isfinite(out["entropy"]))
    again = score_slices(_FakeEnsemble(), img, ["bald"], n_samples=4, rng=np.random.default_rng(0), block=4)
    np.testing.assert_array_equal(out["bald"], again["bald"])


def test_score_slices_reference_and_tta_for_any_model():
    img = _fake_stack()

    class Shifted(_FakeModel):
        def predict_proba(self, image, slices):
            p = super().predict_proba(image, slices)
            return _binary(np.clip(p[:, 1] + 0.1, 0, 1))

    out = score_slices(_FakeModel(), img, ["rf_disagreement", "tta_variance"], reference=Shifted())
    p1 = img.astype(np.float32) / 255.0
    np.testing.assert_allclose(out["rf_disagreement"], (np.clip(p1 + 0.1, 0, 1) - p1).mean(axis=(1, 2)), atol=1e-5)
    # generic TTA: flip is undone exactly, the gains 1.05 / 0.95 move p by 5 %
    s = tta_samples(_FakeModel(), img, [2])
    assert s.shape == (4, 1, 2, 6, 7)
    np.testing.assert_allclose(s[1], s[0], atol=1e-6)
    np.testing.assert_allclose(s[2][:, 1], 1.05 * s[0][:, 1], rtol=1e-5)
    assert np.all(out["tta_variance"] > 0)


def test_score_slices_reductions():
    img = _fake_stack()
    model = _FakeModel()
    mean = score_slices(model, img, ["entropy"])["entropy"]
    q = score_slices(model, img, ["entropy"], reduction="quantile", q=1.0)["entropy"]
    b = score_slices(model, img, ["entropy", "porosity"], reduction="boundary")
    assert np.all(q >= mean - 1e-6)
    p = _binary(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(q, entropy(p).max(axis=(1, 2)), rtol=1e-5)
    assert np.all(np.isfinite(b["entropy"]))
    # porosity is a fraction whatever the reduction
    np.testing.assert_allclose(b["porosity"], (img > 127.5).mean(axis=(1, 2)), rtol=1e-6)


# ----------------------------------------------------------------------------- with the network


@pytest.fixture(scope="module")
def trained():
    from scipy import ndimage

    from activeseg.model import ModelConfig
    from activeseg.train import IGNORE_INDEX, TrainConfig, train_model

    rng = np.random.default_rng(0)
    truth = (ndimage.gaussian_filter(rng.random((10, 48, 48)), (2, 3, 3)) > 0.5).astype(np.uint8)
    img = (truth * 120.0 + 60 + rng.normal(0, 25, truth.shape)).clip(0, 255).astype(np.uint8)
    labels = np.full(truth.shape, IGNORE_INDEX, np.uint8)
    labels[[2, 7]] = truth[[2, 7]]
    cfg = TrainConfig(steps=12, patch_size=48, batch_size=4, eval_every=6, device="cpu")
    model, _ = train_model(img, labels, config=cfg, model_config=ModelConfig(encoder_depth=3, decoder_channels=(32, 16, 8)),
                           rng=np.random.default_rng(1))
    model.device = "cpu"
    return model, img


def test_mc_dropout_bald_on_trained_network(trained):
    model, img = trained
    s1 = model.sample_proba(img, [0, 5], n_samples=1, rng=np.random.default_rng(0))
    s4 = model.sample_proba(img, [0, 5], n_samples=4, rng=np.random.default_rng(0))
    assert s1.shape == (1, 2, 2, 48, 48) and s4.shape == (4, 2, 2, 48, 48)
    np.testing.assert_allclose(bald(s1), 0.0, atol=1e-6)
    b = bald(s4)
    assert b.shape == (2, 48, 48) and b.max() > 0
    out = score_slices(model, img, ["bald", "entropy", "margin", "porosity", "tta_variance"],
                       every=2, n_samples=3, rng=np.random.default_rng(0), block=3)
    assert np.all(out["bald"][::2] > 0)
    assert np.all(np.isnan(out["bald"][1::2]))
    for name in ("entropy", "margin", "porosity", "tta_variance"):
        assert np.all(np.isfinite(out[name][::2])) and np.all(np.isnan(out[name][1::2]))


def test_network_vs_reference_disagreement(trained):
    model, img = trained
    out = score_slices(model, img, ["rf_disagreement"], reference=_FakeModel(), slices=[3])
    assert 0 < out["rf_disagreement"][3] <= 1


def test_variance_equals_numpy_on_random_samples():
    rng = np.random.default_rng(0)
    p = rng.random((5, 3, 1, 4, 6)).astype(np.float32)
    s = np.concatenate([p, 1 - p], axis=2)
    np.testing.assert_allclose(variance(s), s.var(axis=0).mean(axis=1), atol=1e-6)


def test_boundary_reduction_is_a_plain_mean_without_a_pore_edge():
    rng = np.random.default_rng(1)
    pixel = rng.random((2, 6, 6)).astype(np.float32)
    solid = np.zeros((2, 6, 6), np.float32)  # predicted all solid: no pore boundary anywhere
    np.testing.assert_allclose(reduce_slices(pixel, "boundary", pore_prob=solid), pixel.mean(axis=(1, 2)), rtol=1e-6)
    edge = np.zeros((1, 6, 6), np.float32)
    edge[0, :, 3:] = 1.0
    near = np.zeros((1, 6, 6), np.float32)
    near[0, :, 2:4] = 1.0  # uncertainty on the boundary scores higher than the same amount far from it
    far = np.zeros((1, 6, 6), np.float32)
    far[0, :, [0, 5]] = 1.0
    assert reduce_slices(near, "boundary", pore_prob=edge)[0] > reduce_slices(far, "boundary", pore_prob=edge)[0]


def test_score_blocks_shrink_for_large_slices():
    seen = []

    class Model:
        n_classes = 2

        def predict_proba(self, image, slices):
            seen.append(len(slices))
            return np.full((len(slices), 2, *image.shape[1:]), 0.5, np.float32)

    image = np.zeros((10, 64, 64), np.uint8)
    score_slices(Model(), image, "entropy", block=8, max_block_bytes=3 * 4 * 2 * 64 * 64)
    assert max(seen) == 3 and sum(seen) == 10
