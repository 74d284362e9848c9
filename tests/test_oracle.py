import numpy as np
import pytest

from activeseg import io
from activeseg.errors import LabelError
from activeseg.oracle import (
    export_for_correction,
    find_mask_files,
    pseudo_labels,
    read_corrections,
    truth_correction,
)


def _truth_and_prefill():
    truth = np.ones((40, 40), np.uint8)
    truth[5:15, 5:15] = 0  # solid square A (100 px)
    truth[25:28, 25:28] = 0  # solid square B (9 px)
    truth[30, 2] = 0  # a single solid pixel
    prefill = np.ones_like(truth)  # the model saw no solid at all
    prefill[35:39, 30:35] = 0  # and hallucinated a 20 px solid region
    return truth, prefill


def test_perfect_oracle_returns_truth_and_counts_changed_pixels():
    truth, prefill = _truth_and_prefill()
    c = truth_correction(7, truth, prefill)
    assert np.array_equal(c.mask, truth)
    assert c.cost == 100 + 9 + 1 + 20
    assert c.source == "oracle" and c.z == 7


def test_imperfect_oracle_fixes_largest_regions_first_within_budget():
    truth, prefill = _truth_and_prefill()
    c = truth_correction(0, truth, prefill, effort=125)
    # largest first: A (100), then the 20 px false solid; B (9) no longer fits and is left,
    # the single pixel still fits and is fixed
    assert c.cost == 121
    assert np.all(c.mask[5:15, 5:15] == 0)
    assert np.all(c.mask[35:39, 30:35] == 1)
    assert np.all(c.mask[25:28, 25:28] == 1)  # B left wrong
    assert c.mask[30, 2] == truth[30, 2]
    # a first region larger than the whole budget does not stop the smaller ones
    c = truth_correction(0, truth, prefill, effort=50)
    assert np.all(c.mask[5:15, 5:15] == prefill[5:15, 5:15])  # A (100) too large: left
    assert c.cost == 20 + 9 + 1
    # and never random flips: everything it changed is now correct
    changed = c.mask != prefill
    assert np.all(c.mask[changed] == truth[changed])


def test_imperfect_oracle_ignores_regions_below_min_size():
    truth, prefill = _truth_and_prefill()
    c = truth_correction(0, truth, prefill, effort=10_000, min_region=5)
    assert c.mask[30, 2] == 1  # the single pixel was never noticed
    assert c.cost == 129


def test_pseudo_labels_keep_only_confident_pixels():
    p = np.zeros((2, 2, 3), np.float32)
    p[1] = [[0.95, 0.6, 0.05], [0.5, 0.99, 0.2]]
    p[0] = 1 - p[1]
    c = pseudo_labels(3, p, threshold=0.9)
    assert c.mask.tolist() == [[1, 255, 0], [255, 1, 255]]
    assert c.source == "rf" and c.cost == 0
    with pytest.raises(LabelError, match="threshold"):
        pseudo_labels(3, p, threshold=0.2)


def test_export_then_read_back_with_edits(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (10, 24, 32), dtype=np.uint8)
    prefill = {0: np.zeros((24, 32), np.uint8), 6: np.ones((24, 32), np.uint8)}
    files = export_for_correction(tmp_path, image, [0, 6], prefill, radius=2, voxel_size=(5.0, 5.0, 5.0))
    ctx = io.read_stack(files[6]["image"])
    assert ctx.shape == (5, 24, 32)
    assert np.array_equal(ctx[2], image[6])  # the slice to correct is the middle plane
    edge = io.read_stack(files[0]["image"])
    assert np.array_equal(edge[2], image[0]) and np.array_equal(edge[0], image[0])  # clamped at the top
    assert files[0]["preview"].stat().st_size > 1000
    assert (tmp_path / "INSTRUCTIONS.txt").exists()
    found = find_mask_files(tmp_path)
    assert sorted(found) == [0, 6]
    edited = prefill[6].copy()
    edited[:4] = 0
    io.write_stack(found[6], edited[None], kind="labels")
    masks = read_corrections(found, (24, 32))
    assert np.array_equal(masks[6], edited)
    assert np.array_equal(masks[0], prefill[0])


def test_read_corrections_accepts_fiji_0_255_and_rejects_bad_values(tmp_path, caplog):
    m = np.zeros((8, 8), np.uint8)
    m[2:5] = 255
    io.write_stack(tmp_path / "z0003_mask.tif", m[None], kind="image")
    with caplog.at_level("WARNING", logger="activeseg"):
        out = read_corrections({3: tmp_path / "z0003_mask.tif"}, (8, 8))
    assert out[3].max() == 1 and out[3].sum() == 24
    bad = np.full((8, 8), 1, np.uint8)
    bad[0, 0] = 7
    io.write_stack(tmp_path / "z0004_mask.tif", bad[None], kind="image")
    with pytest.raises(LabelError, match="slice 4.*7"):
        read_corrections({4: tmp_path / "z0004_mask.tif"}, (8, 8))
    with pytest.raises(LabelError, match="slice 3"):
        read_corrections({3: tmp_path / "z0003_mask.tif"}, (8, 9))


def test_two_masks_for_one_slice_are_refused(tmp_path):
    for name in ("z0005_mask.tif", "fixed_z0005.tif"):
        io.write_stack(tmp_path / name, np.zeros((1, 4, 4), np.uint8), kind="labels")
    with pytest.raises(LabelError, match="two mask files for slice 5"):
        find_mask_files(tmp_path)
