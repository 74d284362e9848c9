"""The plugin's own tests: activeseg's public contract battery plus its behaviour."""

import numpy as np

from activeseg.registry import run_strategy
from activeseg.testing import check_strategy, random_context
from activeseg_zstratified import z_stratified


def test_contract():
    check_strategy(z_stratified)
    check_strategy(z_stratified, params={"score": "margin", "strata": 3})


def test_one_pick_per_stratum():
    ctx = random_context(40, seed=2, labelled=0.1)
    ids = np.sort(run_strategy(z_stratified, ctx, 4))
    assert [int(z) // 10 for z in ids] == [0, 1, 2, 3]
