"""Region (tile) query strategies and the tile form of the strategy contract."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg import registry
from activeseg.errors import ConfigError, StrategyError
from activeseg.registry import QueryContext, run_strategy, strategy
from activeseg.strategies.regions import tile_boundary, tile_entropy, tile_random
from activeseg.testing import StrategyContractError, check_strategy, random_context

GRID = (2, 2, 16)


def _ctx(z: int = 6, *, grid=GRID, labelled=None, tile_labelled=None, **tile_scores) -> QueryContext:
    """A hand-made tile context: scores given as (Z, n_tiles) arrays."""
    return QueryContext(
        n_slices=z,
        labelled=np.zeros(z, bool) if labelled is None else labelled,
        rng=np.random.default_rng(0),
        tile_grid=grid,
        tile_scores=tile_scores,
        tile_labelled=tile_labelled,
    )


# ------------------------------------------------------------------------ the battery


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("tile_entropy", None),
        ("tile_entropy", {"score": "margin", "min_gap_z": 4, "min_gap_xy": 2}),
        ("tile_boundary", None),
        ("tile_boundary", {"weight": 3.0, "min_gap_z": 0}),
        ("tile_random", None),
        ("tile_random", {"foreground": 1.0}),
    ],
)
def test_region_strategies_pass_the_battery(name, params):
    report = check_strategy(name, params=params, isolated=params is None)
    assert "all tiles labelled" in report.cases and "one unlabelled tile left" in report.cases
    if params is None:
        assert report.import_without_torch and report.runs_without_torch


def test_registered_as_tile_strategies():
    infos = registry.available_strategies()
    for name in ("tile_entropy", "tile_boundary", "tile_random"):
        assert infos[name].ok, infos[name].error
        assert infos[name].unit == "tiles"
        assert infos[name].source == "activeseg"
    assert infos["spaced_entropy"].unit == "slices"
    assert infos["tile_boundary"].requires == ("tile:entropy", "tile:edge")
    assert registry.required_scores("tile_entropy", {"score": "bald"}) == ("tile:bald",)


def test_slice_strategies_still_pass():
    report = check_strategy("spaced_entropy", isolated=False)
    assert "all labelled" in report.cases and "all tiles labelled" not in report.cases


@strategy(unit="tiles")
def _labelled_tile(ctx, n, /):
    rows = np.argwhere(ctx.tile_labelled)[:1]
    if n == 0 or rows.size == 0:
        return ctx.unlabelled_tiles[:n]
    return rows.astype(np.int64)


@strategy(unit="tiles")
def _duplicate(ctx, n, /):
    rows = ctx.unlabelled_tiles[:1]
    return np.concatenate([rows, rows]) if n >= 2 and rows.size else rows[:n]


@strategy(unit="tiles")
def _flat(ctx, n, /):
    return ctx.unlabelled_tiles[:n, 0].copy()  # slice ids only: 1-D


@strategy(unit="tiles")
def _over_budget(ctx, n, /):
    return ctx.unlabelled_tiles[: n + 1]


@strategy(unit="tiles")
def _narrow(ctx, n, /):
    return ctx.unlabelled_tiles[:n].astype(np.int32)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_labelled_tile,
         r"row 0 = \[\d+, \d+\], a tile (of slice \d+, which is already labelled as a whole|that is already labelled)"),
        (_duplicate, r"the same tile \(z=\d+, t=\d+\) in rows \[0, 1\]"),
        (_flat, r"shape \(\d+,\); expected shape \(k, 2\)"),
        (_over_budget, r"returned \d+ tiles for a budget of n=\d+"),
        (_narrow, r"dtype int32; expected int64"),
    ],
)
def test_battery_catches_broken_tile_strategies(fn, message):
    with pytest.raises(StrategyContractError, match=message):
        check_strategy(fn, isolated=False)


def test_battery_refuses_a_refusal_without_a_parameter():
    @strategy(unit="tiles")
    def shy(ctx, n, /):
        if ctx.tile_labelled.any():
            raise StrategyError("cannot pick")
        return ctx.unlabelled_tiles[:n]

    with pytest.raises(StrategyContractError, match="must name the parameter"):
        check_strategy(shy, isolated=False)


def test_battery_catches_nondeterminism():
    @strategy(unit="tiles")
    def unseeded(ctx, n, /):
        rows = ctx.unlabelled_tiles
        pick = np.random.default_rng().permutation(len(rows))[:n]  # not ctx.rng
        return rows[pick]

    with pytest.raises(StrategyContractError, match="not deterministic"):
        check_strategy(unseeded, isolated=False)


# ------------------------------------------------------------------- run / validate


def test_validate_output_names_the_rule_and_the_row():
    lab = np.zeros(6, bool)
    lab[4] = True
    tl = np.zeros((6, 4), bool)
    tl[1, 2] = True
    ctx = _ctx(labelled=lab, tile_labelled=tl, entropy=np.ones((6, 4), np.float32))
    v = registry.validate_output
    ok = v("s", np.array([[0, 0], [2, 3]]), ctx, 2, unit="tiles")
    assert ok.dtype == np.int64 and ok.shape == (2, 2)
    assert v("s", [], ctx, 2, unit="tiles").shape == (0, 2)
    with pytest.raises(StrategyError, match=r"row 1 = \[1, 2\], a tile that is already labelled"):
        v("s", np.array([[0, 0], [1, 2]]), ctx, 3, unit="tiles")
    with pytest.raises(StrategyError, match=r"row 0 = \[4, 1\], a tile of slice 4, which is already labelled"):
        v("s", np.array([[4, 1]]), ctx, 3, unit="tiles")
    with pytest.raises(StrategyError, match=r"row 1 = \[0, 4\]: tile 4 is outside 0..3"):
        v("s", np.array([[0, 0], [0, 4]]), ctx, 3, unit="tiles")
    with pytest.raises(StrategyError, match=r"row 0 = \[6, 0\]: slice 6 is outside 0..5"):
        v("s", np.array([[6, 0]]), ctx, 3, unit="tiles")
    with pytest.raises(StrategyError, match=r"rows \[0, 2\]"):
        v("s", np.array([[0, 1], [2, 2], [0, 1]]), ctx, 3, unit="tiles")
    with pytest.raises(StrategyError, match="3 tiles for a budget of n=2"):
        v("s", np.array([[0, 1], [2, 2], [3, 1]]), ctx, 2, unit="tiles")
    with pytest.raises(StrategyError, match="expected integer"):
        v("s", np.array([[0.0, 1.0]]), ctx, 2, unit="tiles")
    # the slice form is untouched
    assert v("s", np.array([0, 2]), ctx, 2).tolist() == [0, 2]


def test_run_strategy_needs_a_grid_and_the_tile_scores():
    plain = random_context(10, seed=0)
    with pytest.raises(StrategyError, match="no tile grid"):
        run_strategy("tile_entropy", plain, 3)
    ctx = random_context(10, seed=0, tiles=GRID, tile_score_names=("margin",))
    with pytest.raises(StrategyError, match=r"needs scores \['tile:entropy'\]"):
        run_strategy("tile_entropy", ctx, 3)
    rows = run_strategy("tile_entropy", ctx, 3, {"score": "margin"})
    assert rows.shape == (3, 2) and rows.dtype == np.int64


def test_prepare_query_knows_tile_scores():
    p = registry.prepare_query("tile_boundary")
    assert p.unit == "tiles" and p.needs_tiles
    assert p.tile_scores == ("tile:entropy", "tile:edge") and p.slice_scores == ()
    assert registry.prepare_query("entropy").unit == "slices"
    assert not registry.prepare_query("entropy").needs_tiles
    with pytest.raises(StrategyError, match="needs score 'tile:nope'"):
        registry.prepare_query("tile_entropy", {"score": "nope"})
    with pytest.raises(StrategyError, match="rejects parameters"):
        registry.prepare_query("tile_random", {"foreground": 1.5})
    with pytest.raises(StrategyError, match="rejects parameters"):
        registry.prepare_query("tile_entropy", {"min_gap_z": -1})
    assert "tile:edge" in registry.KNOWN_TILE_SCORES and "tile:entropy" in registry.KNOWN_TILE_SCORES
    assert "edge" not in registry.KNOWN_SCORES


def test_strategy_unit_is_checked():
    with pytest.raises(StrategyError, match="unit"):
        strategy(unit="regions")
    assert registry.strategy_unit(_flat) == "tiles"
    assert registry.strategy_unit(lambda ctx, n, /: ctx.unlabelled_ids[:n]) == "slices"


def test_split_scores():
    s, t = registry.split_scores({"entropy": 1, "tile:entropy": 2, "tile:edge": 3, "embeddings": 4})
    assert s == {"entropy": 1} and t == {"entropy": 2, "edge": 3}


# --------------------------------------------------------------------- the context


def test_context_checks_the_tile_fields():
    z, ok = 5, np.zeros((5, 4), np.float32)
    with pytest.raises(ConfigError, match=r"tile score 'entropy' must have shape \(5, 4\)"):
        _ctx(z, entropy=np.zeros((5, 3), np.float32))
    with pytest.raises(ConfigError, match=r"tile_labelled must have shape \(5, 4\)"):
        _ctx(z, tile_labelled=np.zeros((5, 5), bool), entropy=ok)
    with pytest.raises(ConfigError, match="tile_labelled must be a bool array"):
        _ctx(z, tile_labelled=np.zeros((5, 4), np.uint8), entropy=ok)
    with pytest.raises(ConfigError, match="infinite"):
        _ctx(z, entropy=np.full((5, 4), np.inf, np.float32))
    with pytest.raises(ConfigError, match="tile_grid must be"):
        _ctx(z, grid=(2, 0, 16))
    with pytest.raises(ConfigError, match="but no tile_grid"):
        QueryContext(n_slices=z, labelled=np.zeros(z, bool), rng=np.random.default_rng(0), tile_scores={"entropy": ok})
    with pytest.raises(ConfigError, match=r"tile_pixels must have shape \(4,\)"):
        QueryContext(n_slices=z, labelled=np.zeros(z, bool), rng=np.random.default_rng(0), tile_grid=GRID,
                     tile_pixels=np.full(3, 16, np.int64))
    with pytest.raises(ConfigError, match="per-tile score 'tile:entropy'"):
        QueryContext(n_slices=z, labelled=np.zeros(z, bool), rng=np.random.default_rng(0),
                     scores={"tile:entropy": np.zeros(z, np.float32)})
    with pytest.raises(ConfigError, match="twice"):
        _ctx(z, **{"entropy": ok, "tile:entropy": ok})


def test_context_tile_fields_are_read_only_and_include_labelled_slices():
    lab = np.array([False, True, False])
    tl = np.zeros((3, 4), bool)
    tl[0, 1] = True
    src = np.arange(12, dtype=np.float64).reshape(3, 4)
    ctx = _ctx(3, labelled=lab, tile_labelled=tl, **{"tile:entropy": src})
    assert ctx.tile_labelled[1].all() and ctx.tile_labelled[0, 1] and ctx.tile_labelled.sum() == 5
    assert not tl[1].any()  # the caller's array is not changed
    assert ctx.tile_scores["entropy"].dtype == np.float32
    with pytest.raises(ValueError):
        ctx.tile_scores["entropy"][0, 0] = 1.0
    with pytest.raises(ValueError):
        ctx.tile_labelled[0, 0] = True
    with pytest.raises(TypeError):
        ctx.tile_scores["x"] = src  # type: ignore[index]
    assert ctx.n_tiles == 4
    assert ctx.unlabelled_tiles.tolist() == [[0, 0], [0, 2], [0, 3], [2, 0], [2, 1], [2, 2], [2, 3]]
    rows, cols = ctx.tile_position([0, 1, 2, 3])
    assert rows.tolist() == [0, 0, 1, 1] and cols.tolist() == [0, 1, 0, 1]
    # no grid: the tile fields stay empty, as for plugins written before them
    plain = random_context(5, seed=0)
    assert plain.tile_grid is None and plain.n_tiles == 0 and dict(plain.tile_scores) == {}


def test_random_context_tiles_leave_the_slice_content_unchanged():
    a = random_context(12, seed=4, labelled=0.3, nan_fraction=0.2)
    b = random_context(12, seed=4, labelled=0.3, nan_fraction=0.2, tiles=(3, 4, 32), tile_labelled=0.5)
    assert np.array_equal(a.labelled, b.labelled)
    assert all(np.array_equal(a.scores[k], b.scores[k], equal_nan=True) for k in a.scores)
    assert b.tile_scores["edge"].shape == (12, 12) and b.tile_pixels.tolist()[-1] == 16 * 16
    nan_rows = np.isnan(b.tile_scores["entropy"]).all(axis=1)
    assert np.array_equal(nan_rows, np.isnan(b.tile_scores["entropy"]).any(axis=1))  # whole rows


# ----------------------------------------------------------------- the strategies


def test_tile_entropy_ranks_and_keeps_the_spacing():
    ent = np.zeros((6, 4), np.float32)
    ent[2, 0], ent[3, 0], ent[3, 1], ent[5, 3] = 0.9, 0.8, 0.7, 0.6  # grid 2 x 2: t=1 is next to t=0
    ctx = _ctx(entropy=ent)
    rows = tile_entropy(ctx, 3)
    assert rows.tolist() == [[2, 0], [3, 1], [5, 3]]  # (3, 0): same place, adjacent slice
    rows = tile_entropy(ctx, 3, min_gap_xy=2)
    assert rows.tolist() == [[2, 0], [5, 3], [0, 0]]  # (3, 1) is now in-plane close too; then ties by (z, t)
    rows = tile_entropy(ctx, 3, min_gap_z=0)
    assert rows.tolist() == [[2, 0], [3, 0], [3, 1]]  # no constraint


@pytest.mark.parametrize(("gz", "gxy"), [(2, 1), (3, 2), (5, 1), (1, 2)])
def test_tile_entropy_spacing_rule_on_random_contexts(gz, gxy):
    ctx = random_context(30, seed=gz * 10 + gxy, labelled=0.2, nan_fraction=0.2, tiles=(4, 4, 32), tile_labelled=0.2)
    rows = run_strategy("tile_entropy", ctx, 25, {"min_gap_z": gz, "min_gap_xy": gxy})
    assert len(rows) == 25
    r, c = ctx.tile_position(rows[:, 1])
    for i in range(len(rows)):
        for j in range(i):
            close_z = abs(int(rows[i, 0]) - int(rows[j, 0])) < gz
            close_xy = max(abs(int(r[i]) - int(r[j])), abs(int(c[i]) - int(c[j]))) < gxy
            assert not (close_z and close_xy), (rows[i].tolist(), rows[j].tolist())
    # scored tiles come before tiles of unscored slices
    scored = np.isfinite(ctx.tile_scores["entropy"][rows[:, 0], rows[:, 1]])
    assert not np.any(~scored[:-1] & scored[1:])


def test_tile_entropy_fills_from_unscored_slices_at_random():
    ent = np.full((6, 4), np.nan, np.float32)
    ent[1] = [0.1, 0.2, 0.3, 0.4]
    rows = tile_entropy(_ctx(entropy=ent), 6)
    assert rows[:4].tolist() == [[1, 3], [1, 2], [1, 1], [1, 0]]
    assert set(rows[4:, 0].tolist()) <= {0, 2, 3, 4, 5} and len(rows) == 6


def test_tile_boundary_prefers_edge_dense_tiles_at_equal_entropy():
    ent = np.full((4, 4), 0.5, np.float32)
    edge = np.array([[0.1, 0.4, 0.0, 0.2]] * 4, np.float32)
    edge[2, 2] = 0.9
    ctx = _ctx(4, entropy=ent, edge=edge)
    rows = tile_boundary(ctx, 3, min_gap_z=0)
    assert rows[0].tolist() == [2, 2]
    assert {tuple(r) for r in rows[1:].tolist()} <= {(z, 1) for z in range(4)}
    # weight 0 is tile_entropy: all equal, so (z, t) order
    assert tile_boundary(ctx, 2, weight=0.0, min_gap_z=0).tolist() == [[0, 0], [0, 1]]
    # a clearly more uncertain tile still wins over a dense interface
    ent2 = ent.copy()
    ent2[0, 0] = 2.0
    assert tile_boundary(_ctx(4, entropy=ent2, edge=edge), 1).tolist() == [[0, 0]]


def test_tile_boundary_follows_its_formula():
    ctx = random_context(20, seed=7, labelled=0.2, tiles=(3, 3, 32), tile_labelled=0.1)
    w = 2.0
    rows = run_strategy("tile_boundary", ctx, 10, {"weight": w, "min_gap_z": 0})
    ent, edge = (np.asarray(ctx.tile_scores[k], np.float64) for k in ("entropy", "edge"))
    free = ~ctx.tile_labelled
    prio = ent * (1 + w * edge / edge[free].mean())
    prio[~free] = -np.inf
    expect = np.argsort(-prio.ravel(), kind="stable")[:10]
    assert (rows[:, 0] * 9 + rows[:, 1]).tolist() == expect.tolist()


def test_tile_random_draws_the_foreground_share_from_mixed_tiles():
    z, n_tiles = 40, 16
    por = np.where(np.random.default_rng(1).random((z, n_tiles)) < 0.5, 0.0, 1.0).astype(np.float32)
    mixed = np.zeros((z, n_tiles), bool)
    mixed[np.arange(0, z, 4), 3] = True  # 10 tiles hold both phases
    por[mixed] = 0.5
    por[0, 5] = 0.99  # outside (0.02, 0.98): counts as one phase
    ctx = _ctx(z, grid=(4, 4, 32), porosity=por)
    rows = tile_random(ctx, 10, foreground=0.5)
    is_mixed = mixed[rows[:, 0], rows[:, 1]]
    assert len(rows) == 10 and is_mixed[:5].all()
    assert is_mixed.sum() < 10  # the rest is uniform over 640 tiles
    rows = tile_random(ctx, 8, foreground=1.0)
    assert mixed[rows[:, 0], rows[:, 1]].all()
    rows = tile_random(ctx, 14, foreground=1.0)  # only 10 mixed tiles: the rest from all tiles
    assert mixed[rows[:, 0], rows[:, 1]].sum() == 10 and len(rows) == 14
    # over many draws the remainder is uniform: the mixed share stays near foreground
    shares = []
    for seed in range(20):
        c = QueryContext(n_slices=z, labelled=np.zeros(z, bool), rng=np.random.default_rng(seed),
                         tile_grid=(4, 4, 32), tile_scores={"porosity": por})
        r = tile_random(c, 4, foreground=0.5)
        shares.append(mixed[r[:, 0], r[:, 1]].mean())
    assert np.mean(shares) == pytest.approx(0.5, abs=0.05)


def test_tile_random_never_returns_labelled_tiles_and_is_deterministic():
    a = random_context(20, seed=3, labelled=0.3, tiles=(3, 3, 32), tile_labelled=0.6)
    b = random_context(20, seed=3, labelled=0.3, tiles=(3, 3, 32), tile_labelled=0.6)
    ra, rb = tile_random(a, 30), tile_random(b, 30)
    assert np.array_equal(ra, rb)
    assert not a.tile_labelled[ra[:, 0], ra[:, 1]].any()
    with pytest.raises(ConfigError, match="foreground must be a number in"):
        tile_random(a, 3, foreground=-0.1)
