"""Volumes where adaptivity should matter: a layered membrane and an imaging change along z
(docs/architecture.md §7)."""

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu
from typer.testing import CliRunner

from activeseg import synth
from activeseg.cli import app
from activeseg.errors import ConfigError

SHAPE = (16, 64, 64)
runner = CliRunner()


def _otsu(image):
    """Pore = darker than Otsu's threshold (the criterion of tests/test_synth.py)."""
    img = image.astype(np.float32)
    return (img < threshold_otsu(img)).astype(np.uint8)


def _layers(truth, axis, skin_fraction=0.25, transition_fraction=0.1):
    """Index expressions of the skin and the support along the layer axis, from the fractions."""
    n = truth.shape[1] if axis == "y" else truth.shape[0]
    skin = slice(0, int(skin_fraction * n))
    support = slice(int((skin_fraction + transition_fraction) * n) + 1, n)
    if axis == "y":
        return (slice(None), skin), (slice(None), support)
    return (skin,), (support,)


def _pore_chord(pore):
    """Mean length of the pore runs along x (px)."""
    starts = np.count_nonzero(np.diff(pore.astype(np.int8), axis=-1) == 1) + np.count_nonzero(pore[..., 0])
    return pore.sum() / max(starts, 1)


@pytest.fixture(scope="module")
def membrane():
    return synth.synthesize(SHAPE, structure="membrane", porosity=0.8, difficulty="hard", seed=0)


@pytest.mark.parametrize("axis", synth.LAYER_AXES)
def test_membrane_skin_is_dense_with_small_pores_over_the_support(axis):
    vol = synth.synthesize(SHAPE, structure="membrane", porosity=0.8, skin_porosity=0.25, layer_axis=axis, seed=1)
    skin, support = _layers(vol.truth, axis)
    pore = vol.truth == 1
    assert abs(pore[skin].mean() - 0.25) <= 0.1
    assert abs(pore[support].mean() - 0.8) <= 0.1
    assert _pore_chord(pore[skin]) < 0.5 * _pore_chord(pore[support])  # skin_scale 0.4: smaller pores
    # every slice holds both layers when they lie along y; along z the first slices are skin
    pz = pore.mean(axis=(1, 2))
    if axis == "y":
        assert np.ptp(pz) < 0.1
    else:
        assert pz[: SHAPE[0] // 4].max() < 0.45 < pz[-SHAPE[0] // 2:].min()
    mem = vol.params["membrane"]
    assert mem["layer_axis"] == axis and mem["skin"][0] == 0
    assert mem["porosity_skin"] == pytest.approx(pore[(slice(None),) * (axis == "y") + (slice(*mem["skin"]),)].mean())
    assert vol.params["skin_porosity"] == 0.25 and vol.params["skin_fraction"] == 0.25
    assert vol.params["skin_scale"] == 0.4


def test_otsu_fails_on_the_membrane_mostly_on_grey_pores_of_the_skin(membrane):
    pred = _otsu(membrane.image)
    accuracy = (pred == membrane.truth).mean()
    assert accuracy <= 0.90
    assert membrane.truth.mean() - pred.mean() >= 0.05  # grey pores read as solid
    errors = pred != membrane.truth
    grey = (membrane.truth == 1) & (membrane.depth > 0) & (membrane.depth <= 5)
    assert (errors & grey).sum() / errors.sum() > 0.5
    skin, support = _layers(membrane.truth, "y")
    assert errors[skin].mean() > errors[support].mean()  # the skin's small pores show walls close behind


def _wall_face_ratio(vol):
    """Per slice: median of near back walls (depth 1..3) over the median of the cut faces."""
    img = vol.image.astype(np.float64)
    face = vol.truth == 0
    wall = (vol.truth == 1) & (vol.depth >= 1) & (vol.depth <= 3)
    return np.array([np.median(img[k][wall[k]]) / np.median(img[k][face[k]]) for k in range(img.shape[0])])


def _stripe_power(vol):
    """Per slice: variance of the high-passed column means of the cut face (curtain stripes run along y)."""
    img = vol.image.astype(np.float64)
    out = []
    for k in range(img.shape[0]):
        face = vol.truth[k] == 0
        n = face.sum(axis=0)
        col = np.where(n > 3, (img[k] * face).sum(axis=0) / np.maximum(n, 1), np.nan)
        col = np.where(np.isnan(col), 1.0, col / np.nanmedian(col))
        out.append(np.var(col - ndimage.gaussian_filter1d(col, 4, mode="wrap")))
    return np.array(out)


def _thirds(v):
    n = len(v) // 3
    return v[:n].mean(), v[n:-n].mean(), v[-n:].mean()


def test_contrast_drift_brightens_back_walls_against_cut_faces_with_depth():
    plain = synth.synthesize(SHAPE, porosity=0.6, seed=1)
    drift = synth.synthesize(SHAPE, porosity=0.6, seed=1, drift="contrast")
    assert np.array_equal(plain.truth, drift.truth) and np.array_equal(plain.depth, drift.depth)
    rel = _wall_face_ratio(drift) / _wall_face_ratio(plain)
    top, mid, bottom = _thirds(rel)
    assert top < mid < bottom and bottom - top > 0.2
    first, _, last = _thirds(_wall_face_ratio(drift))
    assert last > first
    # the gain falls with depth: cut faces get darker relative to the same volume without drift
    face = [np.median(drift.image[k][drift.truth[k] == 0]) / np.median(plain.image[k][plain.truth[k] == 0])
            for k in range(SHAPE[0])]
    top, mid, bottom = _thirds(np.array(face))
    assert top > mid > bottom
    fac = drift.params["drift_factors"]
    assert len(fac["wall"]) == SHAPE[0] and np.all(np.diff(fac["wall"]) > 0) and np.all(np.diff(fac["gain"]) < 0)
    assert fac["curtain"] == [1.0] * SHAPE[0]
    assert "drift_factors" not in plain.params and plain.params["drift"] == "none"


def test_curtaining_drift_grows_the_stripes_with_depth():
    plain = synth.synthesize(SHAPE, porosity=0.5, seed=1)
    drift = synth.synthesize(SHAPE, porosity=0.5, seed=1, drift="curtaining")
    assert np.array_equal(plain.truth, drift.truth)
    p_top, _, p_bottom = _thirds(_stripe_power(plain))
    d_top, d_mid, d_bottom = _thirds(_stripe_power(drift))
    assert d_top < d_mid < d_bottom
    assert d_bottom / d_top > 2 * (p_bottom / p_top)
    fac = drift.params["drift_factors"]
    assert np.all(np.diff(fac["curtain"]) > 0) and fac["wall"] == [1.0] * SHAPE[0]


def test_stronger_drift_changes_more_and_zero_strength_changes_nothing():
    plain = synth.synthesize(SHAPE, porosity=0.6, seed=2)
    none = synth.synthesize(SHAPE, porosity=0.6, seed=2, drift="both", drift_strength=0.0)
    assert np.array_equal(plain.image, none.image)
    spans = []
    for strength in (0.5, 2.0):
        vol = synth.synthesize(SHAPE, porosity=0.6, seed=2, drift="both", drift_strength=strength)
        top, _, bottom = _thirds(_wall_face_ratio(vol) / _wall_face_ratio(plain))
        spans.append(bottom - top)
    assert 0 < spans[0] < spans[1]


def test_membrane_and_drift_are_seeded_and_recorded(tmp_path):
    kw = dict(structure="membrane", porosity=0.75, skin_porosity=0.2, layer_axis="z", drift="both")
    a = synth.synthesize(SHAPE, seed=3, **kw)
    b = synth.synthesize(SHAPE, seed=3, **kw)
    c = synth.synthesize(SHAPE, seed=4, **kw)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.truth, c.truth)
    synth.save_synth(tmp_path / "v", a)
    meta = json.loads((tmp_path / "v" / "synth.json").read_text())
    assert meta["structure"] == "membrane" and meta["layer_axis"] == "z" and meta["drift"] == "both"
    assert meta["membrane"] == a.params["membrane"] and meta["drift_factors"] == a.params["drift_factors"]
    p = synth.SynthParams.from_dict(meta)
    assert (p.skin_porosity, p.layer_axis, p.drift) == (0.2, "z", "both")
    # a synth.json written before these knobs reads as a stationary volume without drift
    old = {k: v for k, v in meta.items() if k not in ("skin_fraction", "skin_porosity", "skin_scale",
                                                      "transition_fraction", "layer_axis", "drift", "drift_strength")}
    old["structure"] = "blobs"
    q = synth.SynthParams.from_dict(old)
    assert q.drift == "none" and q.structure == "blobs"


@pytest.mark.parametrize("kw, match", [
    (dict(structure="membrane", skin_fraction=0.0), "skin_fraction"),
    (dict(structure="membrane", skin_fraction=0.95), "skin_fraction"),
    (dict(structure="membrane", skin_porosity=0.99), "skin_porosity"),
    (dict(structure="membrane", skin_scale=0.0), "skin_scale"),
    (dict(structure="membrane", skin_scale=1.5), "skin_scale"),
    (dict(structure="membrane", skin_scale=0.1), "corr_length"),
    (dict(structure="membrane", layer_axis="x"), "layer_axis"),
    (dict(structure="membrane", skin_fraction=0.6, transition_fraction=0.4), "support"),
    (dict(structure="membrane", porosity_gradient=0.2), "blobs"),
    (dict(skin_porosity=0.3), "membrane"),
    (dict(drift="sideways"), "drift"),
    (dict(drift="contrast", drift_strength=4.0), "drift_strength"),
    (dict(drift="contrast", drift_strength=-1.0), "drift_strength"),
])
def test_bad_membrane_and_drift_values_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        synth.synthesize((8, 32, 32), seed=0, **kw)


def test_a_membrane_too_thin_for_its_layers_is_refused():
    with pytest.raises(ConfigError, match="larger"):
        synth.synthesize((8, 2, 32), structure="membrane", seed=0)


def test_cli_makes_a_membrane_with_drift_and_documents_both(tmp_path):
    res = runner.invoke(app, ["synth", "--help"])
    assert res.exit_code == 0
    for word in ("--structure", "membrane", "--skin-fraction", "--skin-porosity", "--skin-scale", "--layer-axis",
                 "--drift", "--drift-strength", "activeseg synth data/membrane"):
        assert word in res.output, word
    out = tmp_path / "m"
    res = runner.invoke(app, ["synth", str(out), "--shape", *map(str, SHAPE), "--structure", "membrane",
                              "--skin-porosity", "0.3", "--drift", "contrast", "--seed", "2",
                              "--preview", str(out / "look.png")])
    assert res.exit_code == 0, res.output
    assert (out / "look.png").exists()
    meta = json.loads((out / "synth.json").read_text())
    assert meta["skin_porosity"] == 0.3 and meta["drift"] == "contrast"
    assert "membrane layers" in res.output and "back wall" in res.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--drift", "sideways"])
    assert bad.exit_code == 1 and "none, contrast, curtaining, both" in bad.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "y"), "--skin-porosity", "0.3"])
    assert bad.exit_code == 1 and "--structure membrane" in bad.output
