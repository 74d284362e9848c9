"""The plugin's own tests: activeseg's public contract battery plus its behaviour."""

import numpy as np

from activeseg.registry import run_strategy
from activeseg.testing import check_strategy, random_context
from activeseg_zstratified import best_tile_per_slice, z_stratified


def test_contract():
    check_strategy(z_stratified)
    check_strategy(z_stratified, params={"score": "margin", "strata": 3})


def test_one_pick_per_stratum():
    ctx = random_context(40, seed=2, labelled=0.1)
    ids = np.sort(run_strategy(z_stratified, ctx, 4))
    assert [int(z) // 10 for z in ids] == [0, 1, 2, 3]


def test_tile_contract():
    check_strategy(best_tile_per_slice)  # the battery follows unit="tiles"
    check_strategy(best_tile_per_slice, params={"score": "margin"})


def test_one_tile_per_slice():
    ctx = random_context(20, seed=3, labelled=0.2, tiles=(2, 3, 64), tile_labelled=0.3)
    rows = run_strategy(best_tile_per_slice, ctx, 5)
    assert rows.shape == (5, 2) and len(set(rows[:, 0].tolist())) == 5
    assert not ctx.tile_labelled[rows[:, 0], rows[:, 1]].any()
