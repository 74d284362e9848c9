"""Tests of activeseg.bootstrap (RF fit / predict / persistence) and activeseg.scribbles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from activeseg import bootstrap
from activeseg import features as features_mod
from activeseg.bootstrap import RFModel, fit_rf, labelled_slices, refit_rf
from activeseg.errors import ConfigError, LabelError, ModelError
from activeseg.features import FeatureConfig
from activeseg.geometry import Geometry
from activeseg.scribbles import ilastik_to_labels, scribbles_to_ilastik, simulate_scribbles
from activeseg.uncertainty import EnsembleModel, ProbabilityModel, entropy, margin

FEATS = FeatureConfig(scales=(0.7, 1.6, 3.5), z_offsets=(-1, 1), parallax_offsets=(-1, 1, 2))
GEO = Geometry(beam_sign=1)
Z, Y, X = 12, 40, 48
LABELLED = (2, 6, 10)


def make_volume(seed=0, shape=(Z, Y, X)):
    """Smooth random two-phase structure (1 = pore, ~70 %) and a noisy image of it."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (1.5, 2.5, 2.5))
    truth = (field < np.quantile(field, 0.7)).astype(np.uint8)
    img = np.where(truth == 1, 60.0, 170.0) + rng.normal(0, 25, shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


@pytest.fixture(scope="module")
def vol():
    return make_volume()


@pytest.fixture(scope="module")
def labels(vol):
    _, truth = vol
    lab = np.full(truth.shape, 255, np.uint8)
    lab[list(LABELLED)] = truth[list(LABELLED)]
    return lab


@pytest.fixture(scope="module")
def model(vol, labels):
    img, _ = vol
    return fit_rf(img, labels, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, n_jobs=2)


class RecordingStack:
    """Wraps an array and records which slices were read."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype
        self.read: set[int] = set()

    def __getitem__(self, key):
        self.read.update(int(z) for z in np.atleast_1d(np.arange(self.shape[0])[key]))
        return self.arr[key]


def test_fit_predict_shapes_dtypes_and_sums(vol, model):
    img, truth = vol
    assert isinstance(model, RFModel)
    assert isinstance(model, ProbabilityModel) and isinstance(model, EnsembleModel)
    assert model.n_classes == 2
    assert model.training["slices"] == list(LABELLED)
    assert model.training["class_weight"] is None  # fully labelled slices: "auto" keeps the prior
    p = model.predict_proba(img, [5, 0, 11])
    assert p.shape == (3, 2, Y, X) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # it learnt something: unlabelled slices are mostly right
    pred = p.argmax(axis=1)
    assert np.mean(pred == truth[[5, 0, 11]]) > 0.85


def test_predict_is_lazy(vol, model, monkeypatch):
    img, _ = vol
    calls = []
    real = features_mod._bank_2d
    monkeypatch.setattr(features_mod, "_bank_2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    rec = RecordingStack(img)
    p = model.predict_proba(rec, [7])
    assert p.shape == (1, 2, Y, X)
    assert len(calls) == 1  # the 2D bank ran for slice 7 only
    assert rec.read == {6, 7, 8, 9}  # slice 7 and its z-context (offsets -1, +1, +2)


def test_fit_reads_only_labelled_slices_features(vol, labels, monkeypatch):
    img, _ = vol
    calls = []
    real = features_mod._bank_2d
    monkeypatch.setattr(features_mod, "_bank_2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    fit_rf(img, labels, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, n_estimators=2)
    assert len(calls) == len(LABELLED)


def test_deterministic_refit_from_json_spec(vol, labels, model):
    img, _ = vol
    spec = json.loads(json.dumps(model.spec()))
    assert spec["seed"] == model.seed and spec["geometry"]["beam_sign"] == 1
    # the same worker count as the fixture: each worker sums its share of the trees in
    # float32, so the rounding of the forest mean depends on the count (n_jobs=-1 = the
    # machine's cores); with equal counts the refit must predict bit for bit the same
    again = refit_rf(img, labels, spec, n_jobs=model.n_jobs)
    zs = [0, 4, 11]
    np.testing.assert_array_equal(again.predict_proba(img, zs), model.predict_proba(img, zs))
    # the same rng state gives the same model; another seed a different one
    same = fit_rf(img, labels, rng=np.random.default_rng(0), geometry=GEO, features=FEATS)
    assert same.seed == model.seed
    other = fit_rf(img, labels, rng=np.random.default_rng(1), geometry=GEO, features=FEATS)
    assert not np.array_equal(other.predict_proba(img, zs), model.predict_proba(img, zs))
    with pytest.raises(ModelError):
        refit_rf(img, labels, {"kind": "something else"})


def test_spec_records_estimated_beam_sign(vol, labels):
    img, _ = vol
    m = fit_rf(img, labels, rng=np.random.default_rng(0), geometry=Geometry(), features=FEATS, n_estimators=2)
    assert m.geometry.beam_sign in (1, -1)
    assert m.spec()["geometry"]["beam_sign"] == m.geometry.beam_sign
    m2 = fit_rf(img, labels, rng=np.random.default_rng(0), geometry=None, features=FEATS.two_d(), n_estimators=2)
    assert m2.geometry.beam_sign is None  # 2D features need no sign


def test_dict_labels_equal_array_labels(vol, labels, model):
    img, truth = vol
    as_dict = {z: truth[z] for z in LABELLED}
    m = fit_rf(img, as_dict, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, n_jobs=2)
    np.testing.assert_array_equal(m.predict_proba(img, [3]), model.predict_proba(img, [3]))
    np.testing.assert_array_equal(labelled_slices(labels), LABELLED)
    np.testing.assert_array_equal(labelled_slices(as_dict), LABELLED)


def test_streamed_prediction_equals_in_memory(vol, model, tmp_path):
    img, _ = vol
    full = model.predict_proba(img, range(Z))[:, 1]
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(Z, Y, X))
    progress = []
    res = model.predict_stack(img, out, callback=lambda done, total: progress.append((done, total)))
    assert res is out
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), full)
    assert progress[-1] == (Z, Z) and len(progress) == Z
    # a subset leaves the other slices alone (NaN when allocated here)
    part = model.predict_stack(img, slices=[3, 8])
    np.testing.assert_array_equal(part[[3, 8]], full[[3, 8]])
    assert np.isnan(part[[0, 5, 11]]).all()
    with pytest.raises(ConfigError, match="shape"):
        model.predict_stack(img, np.zeros((Z, Y, X + 1), np.float32))


def test_streamed_prediction_into_tiff(vol, model, tmp_path):
    io = pytest.importorskip("activeseg.io")
    img, _ = vol
    io.write_stack(tmp_path / "img.tif", img)
    stack = io.open_stack(tmp_path / "img.tif")
    out = io.create_stack(tmp_path / "prob.tif", (Z, Y, X), np.float32, kind="probabilities")
    model.predict_stack(stack, out)
    out.flush()
    del out
    np.testing.assert_allclose(io.read_stack(tmp_path / "prob.tif"), model.predict_proba(img, range(Z))[:, 1])


def test_sample_proba_groups_of_trees(vol, model):
    img, _ = vol
    s = model.sample_proba(img, [4, 9], n_samples=4, rng=np.random.default_rng(0))
    assert s.shape == (4, 2, 2, Y, X) and s.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=2), 1.0, atol=1e-5)
    # equal-size groups: their mean is the forest's prediction; the samples disagree somewhere
    np.testing.assert_allclose(s.mean(axis=0), model.predict_proba(img, [4, 9]), atol=1e-5)
    assert np.abs(s[0] - s[1]).max() > 0.05
    with pytest.raises(ConfigError):
        model.sample_proba(img, [4], n_samples=model.params.n_estimators + 1, rng=np.random.default_rng(0))


def test_slice_scores(vol, model):
    img, _ = vol
    zs = [1, 6, 10]
    sc = model.slice_scores(img, zs)
    assert set(sc) == {"entropy", "margin", "porosity"}
    p = model.predict_proba(img, zs)
    for name, fn in (("entropy", entropy), ("margin", margin)):
        assert sc[name].shape == (3,) and sc[name].dtype == np.float32
        np.testing.assert_allclose(sc[name], fn(p).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(sc["porosity"], (p.argmax(axis=1) == 1).mean(axis=(1, 2)), rtol=1e-6)
    q = model.slice_scores(img, zs, how="quantile", q=0.99)
    np.testing.assert_allclose(q["entropy"], np.quantile(entropy(p).reshape(3, -1), 0.99, axis=1), rtol=1e-5)
    assert np.all(q["entropy"] > sc["entropy"])  # the top tail of a slice is above its mean


def test_label_errors(vol, labels):
    img, truth = vol
    rng = np.random.default_rng(0)
    one_class = np.full(truth.shape, 255, np.uint8)
    one_class[3] = 1
    with pytest.raises(LabelError, match="only class 1"):
        fit_rf(img, one_class, rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="shape"):
        fit_rf(img, labels[:, :-1], rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="shape"):
        fit_rf(img, {3: truth[3, :-1]}, rng=rng, features=FEATS, geometry=GEO)
    bad = labels.copy()
    bad[2, 0, 0] = 200
    with pytest.raises(LabelError, match="value 200"):
        fit_rf(img, bad, rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="n_classes=2"):
        fit_rf(img, {2: np.where(truth[2] == 1, 2, 0).astype(np.uint8)}, rng=rng, n_classes=2, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="no labelled"):
        fit_rf(img, np.full(truth.shape, 255, np.uint8), rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="integer"):
        fit_rf(img, labels.astype(np.float32), rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(LabelError, match="outside"):
        fit_rf(img, {Z: truth[0]}, rng=rng, features=FEATS, geometry=GEO)
    with pytest.raises(ConfigError, match="Generator"):
        fit_rf(img, labels, rng=0, features=FEATS, geometry=GEO)


def test_pixel_cap_is_stratified(vol, labels):
    img, truth = vol
    m = fit_rf(img, labels, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, max_pixels=900, n_estimators=2)
    assert m.training["n_pixels"] == 900
    # proportional allocation: per-(slice, class) quotas follow the labelled counts
    sizes = np.array([[np.sum(truth[z] == c) for c in (0, 1)] for z in LABELLED]).ravel()
    quota = bootstrap._allocate(sizes, 900)
    assert quota.sum() == 900
    assert np.all(np.abs(quota - sizes * 900 / sizes.sum()) <= 1)
    # under the cap everything is used
    m2 = fit_rf(img, {2: labels[2]}, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, n_estimators=2)
    assert m2.training["n_pixels"] == Y * X


def test_multiclass(vol):
    img, truth = vol
    three = truth.copy()
    three[:, :, : X // 3] = np.where(truth[:, :, : X // 3] == 1, 2, 0)
    lab = {z: three[z] for z in LABELLED}
    m = fit_rf(img, lab, rng=np.random.default_rng(0), geometry=GEO, features=FEATS, n_estimators=4)
    assert m.n_classes == 3
    p = m.predict_proba(img, [0, 1])
    assert p.shape == (2, 3, Y, X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    out = m.predict_stack(img, slices=[0, 1])
    assert out.shape == (Z, 3, Y, X)
    np.testing.assert_array_equal(out[[0, 1]], p)


def test_fit_on_scribbles(vol):
    img, truth = vol
    rng = np.random.default_rng(0)
    lab = {z: simulate_scribbles(truth[z], rng=rng, budget=200, margin=1) for z in LABELLED}
    m = fit_rf(img, lab, rng=np.random.default_rng(0), geometry=GEO, features=FEATS)
    assert m.training["n_pixels"] == sum(int(np.sum(v != 255)) for v in lab.values())
    assert m.training["class_weight"] == "balanced"  # sparse labels: "auto" balances
    pred = m.predict_proba(img, [0, 5])
    assert np.mean(pred.argmax(axis=1) == truth[[0, 5]]) > 0.8


# --- scribbles -----------------------------------------------------------------------------


@pytest.mark.parametrize("margin,width", [(2, 1), (1, 3)])
def test_scribbles_stay_inside_class_interiors(vol, margin, width):
    _, truth = vol
    sl = np.concatenate([truth[0], truth[1]], axis=1)
    s = simulate_scribbles(sl, rng=np.random.default_rng(3), budget=300, margin=margin, width=width)
    assert s.dtype == np.uint8 and s.shape == sl.shape
    assert set(np.unique(s)) <= {0, 1, 255}
    assert np.count_nonzero(s != 255) <= 300
    for c in (0, 1):
        drawn = s == c
        assert drawn.any(), f"class {c} got no scribbles"
        assert np.all(sl[drawn] == c)
        clearance = ndimage.distance_transform_edt(sl == c)
        assert clearance[drawn].min() > margin  # never on or next to a boundary
    # strokes are lines, not scattered pixels: few connected pieces
    n_pieces = ndimage.label(s != 255, structure=np.ones((3, 3)))[1]
    assert n_pieces <= 2 * 4 * 2  # classes x strokes x some fragmentation


def test_scribbles_seeded_and_budgeted(vol):
    _, truth = vol
    a = simulate_scribbles(truth[4], rng=np.random.default_rng(7), budget=120)
    b = simulate_scribbles(truth[4], rng=np.random.default_rng(7), budget=120)
    c = simulate_scribbles(truth[4], rng=np.random.default_rng(8), budget=120)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0 < np.count_nonzero(a != 255) <= 120
    # a class without interior gets nothing
    thin = np.zeros((20, 20), np.uint8)
    thin[:, 10] = 1
    s = simulate_scribbles(thin, rng=np.random.default_rng(0), margin=2)
    assert not np.any(s == 1) and np.any(s == 0)
    with pytest.raises(ConfigError):
        simulate_scribbles(truth[:2], rng=np.random.default_rng(0))


def test_ilastik_conversion_round_trip(vol):
    _, truth = vol
    s = simulate_scribbles(truth[0], rng=np.random.default_rng(0), budget=100)
    il = scribbles_to_ilastik(s)
    assert il.dtype == np.uint8
    assert set(np.unique(il)) <= {0, 1, 2}
    np.testing.assert_array_equal(il == 0, s == 255)
    np.testing.assert_array_equal(il[s == 1], 2)
    np.testing.assert_array_equal(ilastik_to_labels(il), s)
    np.testing.assert_array_equal(ilastik_to_labels(il.astype(np.int32)), s)
    with pytest.raises(LabelError, match="0/255"):
        ilastik_to_labels(np.array([[0, 255]], np.uint8))
    with pytest.raises(LabelError):
        ilastik_to_labels(np.array([[0.0, 1.0]]))
