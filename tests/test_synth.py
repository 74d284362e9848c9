"""The simulator produces the pore-back artifact, not a blob picture (docs/architecture.md §7)."""

import json
import math

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from activeseg import synth
from activeseg.errors import ConfigError


def _otsu(image):
    """Pore = darker than Otsu's threshold (the naive segmentation pore-back defeats)."""
    img = image.astype(np.float32)
    return (img < threshold_otsu(img)).astype(np.uint8)


def _grey_pores(vol, max_depth=5):
    return (vol.truth == 1) & (vol.depth > 0) & (vol.depth <= max_depth)


@pytest.fixture(scope="module")
def hard():
    return synth.synthesize((48, 128, 128), porosity=0.8, difficulty="hard", seed=0)


@pytest.mark.parametrize("structure", synth.STRUCTURES)
@pytest.mark.parametrize("porosity", [0.5, 0.8])
def test_truth_porosity_is_the_requested_one(structure, porosity):
    vol = synth.synthesize((16, 64, 64), structure=structure, porosity=porosity, seed=2)
    assert abs(vol.truth.mean() - porosity) <= 0.01
    assert vol.image.shape == vol.truth.shape == vol.depth.shape == (16, 64, 64)
    assert vol.image.dtype == np.uint8 and vol.truth.dtype == np.uint8 and vol.depth.dtype == np.float32
    assert set(np.unique(vol.truth)) <= {0, 1}


def test_depth_map_follows_the_convention(hard):
    assert np.all(hard.depth[hard.truth == 0] == 0)
    pore_depth = hard.depth[hard.truth == 1]
    assert np.all((pore_depth == -1) | (pore_depth >= 1))
    assert np.all(pore_depth == np.round(pore_depth))
    assert (pore_depth >= 1).mean() > 0.5  # most pores see a back wall at 80 % porosity


def test_otsu_fails_on_the_hard_volume_and_fails_on_grey_pores(hard):
    pred = _otsu(hard.image)
    accuracy = (pred == hard.truth).mean()
    assert accuracy <= 0.90
    assert hard.truth.mean() - pred.mean() >= 0.05  # grey pores read as solid
    errors = pred != hard.truth
    assert (errors & _grey_pores(hard)).sum() / errors.sum() > 0.5


def test_difficulty_orders_the_threshold_error():
    acc = {}
    for difficulty in synth.DIFFICULTIES:
        vol = synth.synthesize((24, 96, 96), porosity=0.8, difficulty=difficulty, seed=4)
        acc[difficulty] = (_otsu(vol.image) == vol.truth).mean()
    assert acc["easy"] > acc["medium"] > acc["hard"]
    assert acc["easy"] > 0.97  # the artifact, not the noise, is what makes "hard" hard


def test_ghosts_move_by_dz_cot_alpha_per_slice_in_the_beam_direction(hard):
    expected = math.cos(math.radians(52)) / math.sin(math.radians(52))  # dz = dy here
    shift = synth.measure_ghost_shift(hard.image, _grey_pores(hard))
    assert shift == pytest.approx(expected, abs=0.2)
    flipped = synth.synthesize((48, 128, 128), porosity=0.8, difficulty="hard", seed=0, beam_sign=-1)
    assert synth.measure_ghost_shift(flipped.image, _grey_pores(flipped)) == pytest.approx(-expected, abs=0.2)


def test_parallax_grows_with_a_shallower_beam():
    shifts = []
    for alpha in (40, 64):
        vol = synth.synthesize((48, 128, 128), porosity=0.8, difficulty="hard", seed=0, alpha_deg=alpha)
        shifts.append(synth.measure_ghost_shift(vol.image, _grey_pores(vol)))
    assert shifts[0] > 2 * shifts[1] > 0  # cot 40° / cot 64° = 2.4


def test_seeded_and_recorded(tmp_path):
    a = synth.synthesize((16, 64, 64), seed=5)
    b = synth.synthesize((16, 64, 64), seed=5)
    c = synth.synthesize((16, 64, 64), seed=6)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.image, c.image)
    paths = synth.save_synth(tmp_path / "v", a)
    params = json.loads(paths["params"].read_text())
    assert params["alpha_deg"] == 52.0 and params["beam_sign"] == 1 and params["voxel_size"] == [10.0, 10.0, 10.0]
    back = synth.load_synth(tmp_path / "v")
    assert np.array_equal(back.image, a.image) and np.array_equal(back.depth, a.depth)


def test_bad_knobs_are_refused_with_the_valid_names():
    with pytest.raises(ConfigError, match="difficulty"):
        synth.synthesize((8, 32, 32), difficulty="brutal")
    with pytest.raises(ConfigError, match="corr_length"):
        synth.synthesize((8, 32, 32), corr_lenght=3)
    with pytest.raises(ConfigError):
        synth.synthesize((8, 32), seed=0)


@pytest.mark.parametrize("gradient", [0.3, -0.3])
def test_porosity_gradient_ramps_along_z_around_the_exact_mean(gradient):
    vol = synth.synthesize((32, 96, 96), porosity=0.7, porosity_gradient=gradient, seed=4)
    pz = (vol.truth == 1).mean(axis=(1, 2))
    target = 0.7 + gradient * (np.arange(32) / 31 - 0.5)
    assert abs(vol.truth.mean() - 0.7) <= 0.01
    assert np.abs(pz - target).max() <= 0.015
    # without a gradient the same seed has no such trend
    flat = (synth.synthesize((32, 96, 96), porosity=0.7, seed=4).truth == 1).mean(axis=(1, 2))
    assert abs(np.polyfit(np.arange(32), flat, 1)[0] * 31) < abs(gradient) / 3
    assert synth.SynthParams.from_dict(vol.params).porosity_gradient == gradient


def test_porosity_gradient_is_checked():
    with pytest.raises(ConfigError, match="both ends"):
        synth.synthesize((8, 32, 32), porosity=0.8, porosity_gradient=0.4)
    with pytest.raises(ConfigError, match="blobs"):
        synth.synthesize((8, 32, 32), structure="spheres", porosity_gradient=0.2)
    with pytest.raises(ConfigError, match="2 slices"):
        synth.synthesize((1, 32, 32), porosity_gradient=0.2)
    synth.make_params(porosity=0.9, porosity_gradient=0.1)  # ends 0.85 and 0.95 (float round-off) are allowed


def test_porosity_ramp_continues_into_the_ray_march_margin():
    p = synth.make_params(porosity=0.7, porosity_gradient=0.3)
    block = synth.make_structure((16, 64, 64), "blobs", 0.7, np.random.default_rng(2), params=p)
    mz, yb, _ = synth.structure_margin(p)
    margin = 1 - block[16:, yb:yb + 64].mean(axis=(1, 2))
    assert mz > 0 and np.abs(margin - 0.85).max() < 0.03
