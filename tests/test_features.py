"""Tests of activeseg.features: filter bank, z-context / parallax, beam sign, embeddings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from activeseg.errors import ConfigError, StackError
from activeseg.features import (
    FeatureConfig,
    compute_features,
    estimate_beam_sign,
    feature_embeddings,
    feature_names,
    iter_feature_blocks,
    resolve_geometry,
)
from activeseg.geometry import Geometry, shift_rows

SMALL = FeatureConfig(
    scales=(0.7, 1.6, 3.5), gradient=True, log=True, hessian=True, z_offsets=(-1, 1), parallax_offsets=(1, 2)
)


def pore_back_stack(shape=(16, 64, 64), *, sign=1, alpha=52.0, porosity=0.8, seed=0):
    """A tiny pore-back volume: pore pixels show the first wall hit along the beam.

    A pore pixel at (k, y, x) shows the wall at (k + t, y + sign * t * cot(alpha), x) for
    the smallest t hitting solid, dimmed with depth (docs/architecture.md §7, isotropic voxels).
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    depth = 16
    field = ndimage.gaussian_filter(rng.standard_normal((z + depth, y, x)), 2.5)
    solid = field > np.quantile(field, porosity)
    cot = 1.0 / math.tan(math.radians(alpha))
    rows = np.arange(y)
    img = np.empty(shape, dtype=np.float32)
    for k in range(z):
        seen = solid[k].copy()
        val = np.where(seen, 1.0, 0.05)
        for t in range(1, depth):
            ys = np.clip(np.round(rows + sign * t * cot).astype(int), 0, y - 1)
            hit = solid[k + t][ys] & ~seen
            val[hit] = 0.05 + 0.9 * math.exp(-t / 8.0)
            seen |= hit
        img[k] = val
    img = ndimage.gaussian_filter(img, (0, 0.7, 0.7)) + 0.03 * rng.standard_normal(shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), (~solid[:z]).astype(np.uint8)


class RecordingStack:
    """Wraps an array and records which slices were read."""

    def __init__(self, arr):
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.read: set[int] = set()

    def __getitem__(self, key):
        zs = np.arange(self.shape[0])[key]
        self.read.update(int(z) for z in np.atleast_1d(zs))
        return self.arr[key]


@pytest.fixture(scope="module")
def stack():
    img, _ = pore_back_stack((10, 40, 48), seed=1)
    return img


def test_shapes_dtype_names(stack):
    geo = Geometry(beam_sign=1)
    f = compute_features(stack, [0, 4, 9], config=SMALL, geometry=geo)
    names = feature_names(SMALL)
    assert f.shape == (3, len(names), 40, 48)
    assert f.dtype == np.float32
    assert np.isfinite(f).all()
    assert SMALL.n_features == len(names) == len(set(names))
    families = {n.split("_")[0] for n in names}
    assert {"gauss", "gradmag", "log", "dog", "hess", "zdiff", "parallax"} <= families
    st = FeatureConfig(scales=(1.0, 2.0), hessian=True, structure_tensor=True, z_offsets=(), parallax_offsets=())
    g = compute_features(stack, [2], config=st)
    assert g.shape == (1, st.n_features, 40, 48) and "st_l1_s2" in feature_names(st)
    # eigenvalues are ordered (larger first)
    names_st = feature_names(st)
    assert np.all(g[0, names_st.index("st_l1_s1")] >= g[0, names_st.index("st_l2_s1")] - 1e-6)
    assert np.all(g[0, names_st.index("hess_l1_s2")] >= g[0, names_st.index("hess_l2_s2")] - 1e-6)


def test_order_duplicates_and_blocks_agree(stack):
    geo = Geometry(beam_sign=1)
    full = compute_features(stack, range(10), config=SMALL, geometry=geo, block=4)
    picked = compute_features(stack, [7, 2, 7], config=SMALL, geometry=geo, block=1)
    np.testing.assert_array_equal(picked[0], full[7])
    np.testing.assert_array_equal(picked[1], full[2])
    np.testing.assert_array_equal(picked[2], full[7])
    streamed = np.concatenate([f.copy() for _, f in iter_feature_blocks(stack, None, config=SMALL, geometry=geo, block=3)])
    np.testing.assert_array_equal(streamed, full)


def test_reads_only_the_requested_slices_and_their_context(stack):
    rec = RecordingStack(stack)
    compute_features(rec, [5], config=SMALL, geometry=Geometry(beam_sign=1))
    assert rec.read == {4, 5, 6, 7}  # z offsets -1, +1 and parallax +1, +2
    rec2 = RecordingStack(stack)
    compute_features(rec2, [5], config=SMALL.two_d())
    assert rec2.read == {5}


def test_z_context_depends_on_neighbours_two_d_does_not(stack):
    other = stack.copy()
    other[6] = 255 - other[6]
    geo = Geometry(beam_sign=1)
    a2, b2 = (compute_features(s, [5], config=SMALL.two_d()) for s in (stack, other))
    np.testing.assert_array_equal(a2, b2)
    a3, b3 = (compute_features(s, [5], config=SMALL, geometry=geo) for s in (stack, other))
    assert not np.allclose(a3, b3)


def test_parallax_feature_matches_shifted_ghosts():
    # ghosts moving exactly +1 px in y per slice: slice k+j is slice k moved down by j rows
    rng = np.random.default_rng(3)
    base = ndimage.gaussian_filter(rng.random((64, 64)), 2.0, mode="wrap")
    img = np.stack([np.roll(base, k, axis=0) for k in range(6)]).astype(np.float32)
    cfg = FeatureConfig(scales=(1.0,), gradient=False, log=False, hessian=False, z_offsets=(), parallax_offsets=(1, 2))
    names = feature_names(cfg)
    inner = (slice(8, -8), slice(8, -8))
    right = compute_features(img, [1], config=cfg, geometry=Geometry(alpha_deg=45.0, beam_sign=1))[0]
    wrong = compute_features(img, [1], config=cfg, geometry=Geometry(alpha_deg=45.0, beam_sign=-1))[0]
    for j in (1, 2):
        k = names.index(f"parallax_j+{j}")
        scale = np.abs(wrong[k][inner]).mean()
        assert scale > 0.01
        assert np.abs(right[k][inner]).max() < 0.05 * scale


@pytest.mark.parametrize("sign", [1, -1])
def test_estimate_beam_sign_recovers_sign(sign):
    img, _ = pore_back_stack((16, 64, 64), sign=sign, seed=2)
    est, evidence = estimate_beam_sign(img, geometry=Geometry(), return_evidence=True)
    assert est == sign
    assert evidence > 0.02
    geo = resolve_geometry(img, Geometry(), SMALL)
    assert geo.beam_sign == sign
    # a given sign is kept, and 2D features need none
    assert resolve_geometry(img, Geometry(beam_sign=-sign), SMALL).beam_sign == -sign
    assert resolve_geometry(img, Geometry(), SMALL.two_d()).beam_sign is None


@pytest.mark.parametrize("sign", [1, -1])
def test_estimate_beam_sign_on_synth(sign):
    synth = pytest.importorskip("activeseg.synth")
    vol = synth.synthesize(
        (16, 64, 64), structure="blobs", porosity=0.8, difficulty="hard", rng=np.random.default_rng(5), beam_sign=sign,
        connected=False,
    )
    assert vol.geometry.beam_sign == sign
    assert estimate_beam_sign(vol.image, geometry=vol.geometry) == sign


def test_estimate_beam_sign_needs_two_slices(stack):
    with pytest.raises(StackError, match="beam sign"):
        estimate_beam_sign(stack[:1])


def _nn_same_group(emb, groups):
    """Fraction of slices whose nearest neighbour (standardised embeddings) is in their group."""
    e = (emb - emb.mean(0)) / (emb.std(0) + 1e-9)
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(groups[d.argmin(1)] == groups))


def _synth_halves(a: dict, b: dict, seed: int):
    synth = pytest.importorskip("activeseg.synth")
    vols = [
        synth.synthesize((8, 64, 64), difficulty="hard", rng=np.random.default_rng(seed), connected=False, **kw)
        for kw in (a, b)
    ]
    return np.concatenate([v.image for v in vols]), vols[0].geometry


@pytest.mark.parametrize("seed", [0, 1])
def test_embeddings_separate_structures(seed):
    img, geo = _synth_halves({"structure": "spheres", "porosity": 0.8}, {"structure": "fibres", "porosity": 0.8}, seed)
    groups = np.repeat([0, 1], 8)
    emb = feature_embeddings(img, range(16), config=SMALL, geometry=geo, downsample=1)
    assert emb.shape == (16, 5 * SMALL.n_features) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert _nn_same_group(emb, groups) == 1.0
    # a shuffled group assignment is not separated (the assertion above can fail)
    assert _nn_same_group(emb, np.tile([0, 1], 8)) < 1.0
    # rows follow the requested order
    emb2 = feature_embeddings(img, [12, 3], config=SMALL, geometry=geo, downsample=1)
    np.testing.assert_allclose(emb2, emb[[12, 3]], rtol=1e-5)


def test_embeddings_separate_porosity():
    img, geo = _synth_halves({"structure": "blobs", "porosity": 0.6}, {"structure": "blobs", "porosity": 0.85}, 2)
    emb = feature_embeddings(img, None, config=SMALL.two_d(), downsample=2)
    assert emb.shape[0] == 16
    assert _nn_same_group(emb, np.repeat([0, 1], 8)) == 1.0


def test_config_round_trip_and_validation():
    cfg = FeatureConfig(scales=(3.5, 0.7), hessian=(0.7, 1.0), z_offsets=(1, -1), parallax_offsets=(2,))
    assert cfg.scales == (0.7, 3.5) and cfg.z_offsets == (-1, 1)
    assert "hess_l1_s1" in feature_names(cfg) and "dog_s0.7-1" in feature_names(cfg)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FeatureConfig.from_dict(d) == cfg
    assert cfg.halo == (1, 2)
    assert cfg.two_d().halo == (0, 0) and not cfg.two_d().needs_beam_sign
    with pytest.raises(ConfigError):
        FeatureConfig(scales=(0.0,))
    with pytest.raises(ConfigError):
        FeatureConfig(z_offsets=(0,))
    with pytest.raises(ConfigError):
        FeatureConfig(hessian=(-1.0,))
    with pytest.raises(ConfigError):
        FeatureConfig(normalise="zscore")
    with pytest.raises(ConfigError, match="unknown"):
        FeatureConfig.from_dict({"scale": [1.0]})


def test_input_validation(stack):
    with pytest.raises(StackError, match="RGB"):
        compute_features(np.zeros((2, 8, 8, 3), np.uint8), [0], config=SMALL.two_d())
    with pytest.raises(StackError):
        compute_features(np.zeros((8, 8), np.uint8), [0])
    with pytest.raises(ConfigError, match="slice ids"):
        compute_features(stack, [10], config=SMALL.two_d())
    with pytest.raises(ConfigError, match="slice ids"):
        compute_features(stack, [-1], config=SMALL.two_d())


def test_shift_rows_interpolates_and_fills_edges():
    img = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # row y holds y
    np.testing.assert_allclose(shift_rows(img, 0.25)[:, 0], [0.25, 1.25, 2.25, 3.25, 4.0])
    np.testing.assert_allclose(shift_rows(img, -1.5)[:, 0], [0.0, 0.0, 0.5, 1.5, 2.5])
    np.testing.assert_array_equal(shift_rows(img, 2)[:, 0], [2, 3, 4, 4, 4])
    # "copy": the edge row is copied exactly; interior the same interpolation
    np.testing.assert_allclose(shift_rows(img, 0.25, edges="copy")[:, 0], [0.25, 1.25, 2.25, 3.25, 4.0])
    np.testing.assert_allclose(shift_rows(img, -0.5, edges="copy")[:, 0], [0.0, 0.5, 1.5, 2.5, 3.5])
    stack = np.stack([img, 2 * img])  # leading axes are kept
    np.testing.assert_allclose(shift_rows(stack, 0.5, edges="copy")[1, :, 0], [1, 3, 5, 7, 8])
    out = shift_rows(img, 0.0)
    assert out is not img and out.dtype == np.float32
    with pytest.raises(ConfigError, match="edges"):
        shift_rows(img, 0.5, edges="wrap")
