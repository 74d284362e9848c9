"""Behaviour of each built-in strategy, and the contract battery over all of them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from activeseg.errors import StrategyError
from activeseg.registry import QueryContext, available_strategies, run_strategy
from activeseg.strategies.common import spread
from activeseg.testing import check_strategy, random_context

BUILTINS = sorted(
    name for name, info in available_strategies().items() if info.source == "activeseg"
)


def ctx_of(z, labelled=(), *, seed=0, embeddings=None, **scores):
    lab = np.zeros(z, dtype=bool)
    lab[list(labelled)] = True
    return QueryContext(
        n_slices=z, labelled=lab, rng=np.random.default_rng(seed), scores=scores, embeddings=embeddings
    )


def coverage_radius(z, chosen):
    """Largest distance from any slice to its nearest chosen slice."""
    chosen = np.asarray(sorted(chosen))
    return int(np.abs(np.arange(z)[:, None] - chosen[None, :]).min(axis=1).max())


def test_all_fifteen_builtins_are_registered():
    assert set(BUILTINS) == {
        "initial", "distributed", "random", "porosity_random", "entropy", "margin", "bald",
        "spaced_entropy", "ranked_batch", "coreset", "disagreement", "hybrid",
        "tile_entropy", "tile_boundary", "tile_random",  # region strategies (unit "tiles")
    }


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_passes_the_contract_battery(name):
    # modAL imports torch when it is installed (optional import in modAL.utils.data), so
    # ranked_batch may load torch when it runs in-process; the isolated run with torch
    # blocked still checks that importing and running it needs no torch.
    report = check_strategy(name, allow_torch_at_runtime=name == "ranked_batch")
    assert report.import_without_torch is True
    assert report.runs_without_torch is True


# --------------------------------------------------------------------- positional


def test_initial_takes_the_top_of_the_stack():
    np.testing.assert_array_equal(run_strategy("initial", ctx_of(600), 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(run_strategy("initial", ctx_of(600, [0, 1, 3]), 3), [2, 4, 5])


def test_distributed_matches_the_paper_spacing():
    five = run_strategy("distributed", ctx_of(600), 5)
    twenty = run_strategy("distributed", ctx_of(600), 20)
    np.testing.assert_array_equal(np.diff(five), [120] * 4)
    np.testing.assert_array_equal(np.diff(twenty), [30] * 19)
    # centred: the same margin above the first and below the last pick
    assert five[0] == 600 - 1 - five[-1] + 1 == 60
    assert twenty[0] == 15


def test_distributed_later_rounds_fill_the_largest_gaps():
    first = run_strategy("distributed", ctx_of(600), 5)
    nxt = run_strategy("distributed", ctx_of(600, first), 4)
    np.testing.assert_array_equal(nxt, [120, 240, 360, 480])  # the four 120-slice gaps, halved
    # one big gap and small ones: the whole budget goes to the big one, evenly
    ids = run_strategy("distributed", ctx_of(100, [0, 10, 20, 99]), 3)
    assert all(20 < i < 99 for i in ids)
    gaps = np.diff(np.r_[20, np.sort(ids), 99])
    assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("seed", range(12))
def test_distributed_coverage_is_near_optimal(seed):
    rng = np.random.default_rng(seed)
    z = int(rng.integers(8, 18))
    labelled = rng.choice(z, size=int(rng.integers(0, 4)), replace=False)
    n = int(rng.integers(1, 4))
    ids = run_strategy("distributed", ctx_of(z, labelled), n)
    free = [i for i in range(z) if i not in set(labelled)]
    best = min(coverage_radius(z, list(labelled) + list(c)) for c in itertools.combinations(free, n))
    assert coverage_radius(z, list(labelled) + ids.tolist()) <= best + 1


# ----------------------------------------------------------------------- random


def test_random_is_uniform_over_unlabelled_slices():
    counts = np.zeros(20)
    for seed in range(400):
        ids = run_strategy("random", ctx_of(20, [0, 1], seed=seed), 3)
        counts[ids] += 1
    assert counts[:2].sum() == 0
    expected = 400 * 3 / 18
    assert np.all(np.abs(counts[2:] - expected) < 0.5 * expected)


def test_porosity_random_favours_outlier_slices():
    z = 200
    outliers = np.arange(5, 200, 20)  # 10 slices with very different porosity
    hits = base = total = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        porosity = (0.8 + 0.01 * rng.standard_normal(z)).astype(np.float32)
        porosity[outliers] = 0.4
        ids = run_strategy("porosity_random", ctx_of(z, seed=seed, porosity=porosity), 5)
        hits += np.isin(ids, outliers).sum()
        base += np.isin(run_strategy("random", ctx_of(z, seed=seed), 5), outliers).sum()
        total += ids.size
    assert base / total < 0.1  # uniform: 10 / 200 = 0.05
    assert hits / total > 0.3


def test_porosity_random_leaves_unscored_slices_for_last():
    porosity = np.full(30, np.nan, dtype=np.float32)
    porosity[10:16] = [0.1, 0.8, 0.8, 0.8, 0.8, 0.9]
    ids = run_strategy("porosity_random", ctx_of(30, porosity=porosity), 9)
    assert set(ids[:6]) == set(range(10, 16))
    assert not set(ids[6:]) & set(range(10, 16))


# ----------------------------------------------------------------------- scored


@pytest.mark.parametrize(
    "name, score", [("entropy", "entropy"), ("margin", "margin"), ("bald", "bald"), ("disagreement", "rf_disagreement")]
)
def test_top_n_by_the_named_score(name, score):
    ctx = random_context(50, seed=4, labelled=0.3)
    ids = run_strategy(name, ctx, 6)
    free = ctx.unlabelled_ids
    expected = free[np.argsort(-ctx.scores[score][free], kind="stable")][:6]
    np.testing.assert_array_equal(ids, expected)


def test_nan_scores_come_after_scored_and_all_nan_falls_back_to_even_spacing():
    ent = np.full(40, np.nan, dtype=np.float32)
    ent[[3, 4, 30]] = [0.9, 0.2, 0.5]
    ids = run_strategy("entropy", ctx_of(40, entropy=ent), 6)
    np.testing.assert_array_equal(ids[:3], [3, 30, 4])
    assert np.isnan(ent[ids[3:]]).all()
    all_nan = np.full(40, np.nan, dtype=np.float32)
    for name in ("entropy", "margin", "bald", "disagreement"):
        score = {"disagreement": "rf_disagreement"}.get(name, name)
        got = run_strategy(name, ctx_of(40, [5], **{score: all_nan}), 4)
        np.testing.assert_array_equal(np.sort(got), run_strategy("distributed", ctx_of(40, [5]), 4))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("min_gap", [2, 5, 9])
def test_spaced_entropy_never_picks_within_the_gap(seed, min_gap):
    ctx = random_context(120, seed=seed, labelled=0.05, nan_fraction=0.2)
    ids = run_strategy("spaced_entropy", ctx, 10, {"min_gap": min_gap})
    assert ids.size > 0
    others = np.r_[ids, np.flatnonzero(ctx.labelled)]
    for i in ids:
        d = np.abs(others - i)
        assert d[d > 0].min() >= min_gap or others.size == 1
    # greedy: the first pick is the best-scored slice that respects the gap to labelled ones
    lab = np.flatnonzero(ctx.labelled)
    ok = [i for i in ctx.unlabelled_ids if np.isfinite(ctx.scores["entropy"][i])
          and (lab.size == 0 or np.abs(lab - i).min() >= min_gap)]
    assert ids[0] == max(ok, key=lambda i: (ctx.scores["entropy"][i], -i))


def test_spaced_entropy_beats_plain_top_n_on_a_clustered_peak():
    ent = np.exp(-0.5 * ((np.arange(100) - 70) / 4.0) ** 2).astype(np.float32)  # one uncertain region
    plain = run_strategy("entropy", ctx_of(100, entropy=ent), 5)
    spaced = run_strategy("spaced_entropy", ctx_of(100, entropy=ent), 5, {"min_gap": 5})
    assert np.ptp(plain) == 4  # five adjacent near-duplicate slices
    assert np.diff(np.sort(spaced)).min() >= 5


def test_spaced_entropy_returns_fewer_rather_than_break_the_gap():
    ids = run_strategy("spaced_entropy", ctx_of(10, [0, 9], entropy=np.ones(10)), 5, {"min_gap": 4})
    np.testing.assert_array_equal(ids, [4])  # 4 and 5 are >= 4 from 0 and 9, but 1 apart


def test_spaced_entropy_refuses_when_the_gap_rules_out_every_unlabelled_slice():
    # labelled every 6th slice: no unlabelled slice is 10 away from all of them; the
    # farthest (29, after the last labelled 24) is 5 away, so min_gap=5 is suggested
    ctx = ctx_of(30, range(0, 30, 6), entropy=np.ones(30, dtype=np.float32))
    with pytest.raises(StrategyError) as err:
        run_strategy("spaced_entropy", ctx, 3, {"min_gap": 10})
    assert str(err.value) == (
        "spaced_entropy: min_gap=10 leaves no unlabelled slice at least 10 slices from every labelled one "
        "(25 unlabelled slices remain, the farthest 5 slices away); lower it, e.g. --param min_gap=5"
    )
    np.testing.assert_array_equal(run_strategy("spaced_entropy", ctx, 3, {"min_gap": 5}), [29])
    # n = 0 (the dry run of prepare_query) and nothing left to label are no refusal
    assert run_strategy("spaced_entropy", ctx, 0, {"min_gap": 10}).size == 0
    assert run_strategy("spaced_entropy", ctx_of(4, range(4), entropy=np.ones(4)), 2, {"min_gap": 10}).size == 0
    # unscored slices count too: all-NaN entropy is ruled out the same way
    one_left = ctx_of(3, [0, 2], entropy=np.full(3, np.nan, dtype=np.float32))
    with pytest.raises(StrategyError, match=r"\(1 unlabelled slice remains, the farthest 1 slice away\).*min_gap=1$"):
        run_strategy("spaced_entropy", one_left, 1)


def test_hybrid_splits_the_budget():
    ctx = random_context(200, seed=1, labelled=np.zeros(200, dtype=bool))
    ids = run_strategy("hybrid", ctx, 10, {"fraction": 0.3, "min_gap": 3})
    even = run_strategy("distributed", ctx, 3)
    np.testing.assert_array_equal(ids[:3], even)
    rest = ids[3:]
    assert rest.size == 7
    # the rest are the greedy top-entropy slices kept 3 slices from the even ones and each other
    ent = ctx.scores["entropy"]
    chosen = list(even)
    expected = []
    for i in np.argsort(-ent, kind="stable"):
        if len(expected) == 7:
            break
        if min(abs(i - c) for c in chosen) >= 3:
            expected.append(i)
            chosen.append(i)
    np.testing.assert_array_equal(rest, expected)
    np.testing.assert_array_equal(run_strategy("hybrid", ctx, 4, {"fraction": 1.0}), run_strategy("distributed", ctx, 4))
    # the score is a parameter, and so is what the strategy requires
    with pytest.raises(StrategyError, match="needs scores \\['bald'\\]"):
        run_strategy("hybrid", ctx_of(20, entropy=np.ones(20)), 4, {"score": "bald"})


@pytest.mark.parametrize("bad", [{"fraction": 1.5}, {"min_gap": -1}])
def test_hybrid_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        run_strategy("hybrid", random_context(20), 4, bad)


# --------------------------------------------------------------------- diversity


def kcenter_radius(x, centres):
    d = np.linalg.norm(x[:, None, :] - x[None, centres, :], axis=2)
    return d.min(axis=1).max()


@pytest.mark.parametrize("seed", range(6))
def test_coreset_is_greedy_k_center(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(10, 2))
    labelled = [int(rng.integers(10))]
    ids = run_strategy("coreset", ctx_of(10, labelled, embeddings=emb), 3, {"standardise": False})
    # each pick is the slice farthest from its nearest labelled-or-picked slice
    chosen = list(labelled)
    for i in ids:
        d = np.linalg.norm(emb[:, None] - emb[None, chosen], axis=2).min(axis=1)
        assert np.isclose(d[i], d.max())
        chosen.append(int(i))
    # and the k-center objective is within the factor-2 guarantee of the brute-force optimum
    free = [i for i in range(10) if i not in labelled]
    best = min(kcenter_radius(emb, labelled + list(c)) for c in itertools.combinations(free, 3))
    got = kcenter_radius(emb, chosen)
    assert got <= 2 * best + 1e-9


def test_coreset_takes_one_from_each_unlabelled_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    cluster = np.repeat(np.arange(4), 6)
    emb = centres[cluster] + 0.1 * rng.normal(size=(24, 2))
    ids = run_strategy("coreset", ctx_of(24, [0], embeddings=emb), 3)
    assert sorted(cluster[ids]) == [1, 2, 3]


def test_coreset_without_embeddings_spaces_along_z():
    ids = run_strategy("coreset", ctx_of(101, [50]), 2)
    assert sorted(ids) == [0, 100]


def test_coreset_uses_unembedded_slices_last():
    emb = np.random.default_rng(0).normal(size=(30, 3))
    emb[20:] = np.nan
    ids = run_strategy("coreset", ctx_of(30, embeddings=emb), 24)
    assert set(ids[:20]) == set(range(20)) and set(ids[20:]) <= set(range(20, 30))


def test_ranked_batch_returns_global_ids_and_ranks_uncertain_dissimilar_first():
    z = 40
    rng = np.random.default_rng(0)
    emb = rng.normal(scale=0.1, size=(z, 3))
    emb[33] += 50.0  # far from everything labelled
    ent = np.full(z, 0.1, dtype=np.float32)
    ent[33] = 1.0
    lab = range(20)  # pool = slices 20..39; pool index of 33 is 13
    ids = run_strategy("ranked_batch", ctx_of(z, lab, embeddings=emb, entropy=ent), 4)
    assert ids[0] == 33
    assert all(20 <= i < z for i in ids)


@pytest.mark.parametrize("seed", range(6))
def test_ranked_batch_matches_modal_on_a_plain_pool(seed):
    from types import SimpleNamespace

    from modAL.batch import ranked_batch as modal_ranked_batch

    ctx = random_context(30, seed=seed, labelled=0.3, embedding_dim=3)
    ids = run_strategy("ranked_batch", ctx, 5, {"standardise": False})
    pool = ctx.unlabelled_ids
    u = ctx.scores["entropy"][pool].astype(float)
    u = (u - u.min()) / (u.max() - u.min())  # the adapter scales the pool's scores to [0, 1]
    learner = SimpleNamespace(on_transformed=False, X_training=np.asarray(ctx.embeddings[ctx.labelled], dtype=float))
    ref, _ = modal_ranked_batch(
        learner, unlabeled=np.asarray(ctx.embeddings[pool], dtype=float),
        uncertainty_scores=u, n_instances=5, metric="euclidean", n_jobs=None,
    )
    np.testing.assert_array_equal(ids, pool[ref])


def test_ranked_batch_nan_scores_do_not_win():
    z = 30
    emb = np.random.default_rng(1).normal(size=(z, 2))
    emb[[7, 8]] += 100.0  # unscored slices that are very dissimilar
    ent = np.random.default_rng(2).random(z).astype(np.float32)
    ent[[7, 8]] = np.nan
    ids = run_strategy("ranked_batch", ctx_of(z, [0, 1], embeddings=emb, entropy=ent), 5)
    assert not {7, 8} & set(ids.tolist())
    # once the scored slices run out the unscored ones are ranked by dissimilarity
    ids = run_strategy("ranked_batch", ctx_of(z, [0, 1], embeddings=emb, entropy=ent), 28)
    np.testing.assert_array_equal(np.sort(ids[-2:]), [7, 8])


def test_ranked_batch_cold_start_empty_pool_and_zero_budget():
    ctx = random_context(20, seed=0)  # nothing labelled: modAL's cold start
    assert run_strategy("ranked_batch", ctx, 3).size == 3
    assert run_strategy("ranked_batch", ctx, 0).size == 0  # modAL alone would return 1
    full = random_context(20, seed=0, labelled=np.ones(20, dtype=bool))
    assert run_strategy("ranked_batch", full, 3).size == 0
    all_nan = random_context(20, seed=0, nan_fraction=1.0)
    assert run_strategy("ranked_batch", all_nan, 3).size == 3


def test_ranked_batch_ranking_does_not_depend_on_the_score_scale():
    # scores are min-max scaled over the pool, so multiplying them by 50 or by 0.3 ranks
    # like the min-max scaled values themselves
    ctx = random_context(30, seed=2, labelled=0.2)
    pool = ctx.unlabelled_ids
    bald = ctx.scores["bald"].astype(np.float64)
    lo, hi = bald[pool].min(), bald[pool].max()

    def with_bald(values):
        scores = dict(ctx.scores, bald=values)
        return QueryContext(n_slices=30, labelled=ctx.labelled, rng=ctx.rng, scores=scores, embeddings=ctx.embeddings)

    big = run_strategy("ranked_batch", with_bald(bald * 50), 5, {"score": "bald"})
    small = run_strategy("ranked_batch", with_bald(bald * 0.3), 5, {"score": "bald"})
    unit = run_strategy("ranked_batch", with_bald((bald - lo) / (hi - lo)), 5, {"score": "bald"})
    np.testing.assert_array_equal(big, unit)
    np.testing.assert_array_equal(small, unit)


def test_spread_helper_on_a_fresh_stack_is_bin_centres():
    for z, n in [(600, 5), (600, 20), (37, 4), (10, 10), (7, 3)]:
        ids = spread(np.zeros(z, dtype=bool), n)
        np.testing.assert_array_equal(ids, np.floor((np.arange(n) + 0.5) * z / n).astype(int))
