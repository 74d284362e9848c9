"""Strategy registry, QueryContext, entry-point discovery and the contract battery."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from activeseg import registry
from activeseg.errors import ConfigError, StrategyError
from activeseg.registry import (
    QueryContext,
    available_strategies,
    describe_strategies,
    get_strategy,
    register_strategy,
    required_scores,
    run_strategy,
    strategy,
    unregister_strategy,
    validate_params,
)
from activeseg.testing import check_strategy, random_context

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "examples" / "plugin_strategy" / "src"

BUILTINS = {
    "initial", "distributed", "random", "porosity_random", "entropy", "margin", "bald",
    "spaced_entropy", "ranked_batch", "coreset", "disagreement", "hybrid",
}


@pytest.fixture
def fake_plugins(monkeypatch):
    """Add fake entry points (as if other distributions were installed) to discovery."""
    real = list(registry._iter_entry_points())

    def install(*eps: tuple[str, str, str]):
        extra = [(md.EntryPoint(name, value, registry.ENTRY_POINT_GROUP), dist, "9.9") for name, value, dist in eps]
        monkeypatch.setattr(registry, "_iter_entry_points", lambda: iter(real + extra))
        registry.refresh_strategies()

    yield install
    monkeypatch.undo()
    registry.refresh_strategies()


def _ctx(z=20, labelled=(), **kw):
    lab = np.zeros(z, dtype=bool)
    lab[list(labelled)] = True
    return QueryContext(n_slices=z, labelled=lab, rng=np.random.default_rng(0), **kw)


# ------------------------------------------------------------------ QueryContext


def test_context_arrays_are_read_only_and_callers_arrays_untouched():
    lab = np.zeros(10, dtype=bool)
    ent = np.linspace(0, 1, 10, dtype=np.float32)
    emb = np.ones((10, 3), dtype=np.float32)
    ctx = QueryContext(n_slices=10, labelled=lab, rng=np.random.default_rng(0), scores={"entropy": ent}, embeddings=emb)
    with pytest.raises(ValueError):
        ctx.labelled[0] = True
    with pytest.raises(ValueError):
        ctx.scores["entropy"][0] = 5
    with pytest.raises(ValueError):
        ctx.embeddings[0, 0] = 5
    with pytest.raises(TypeError):
        ctx.scores["bald"] = ent  # the mapping itself is read-only
    with pytest.raises(AttributeError):
        ctx.n_slices = 3  # frozen
    lab[0] = True  # the caller still owns writeable arrays
    ent[0] = 9
    assert ctx.labelled[0] and ctx.scores["entropy"][0] == 9  # views, not copies


def test_context_converts_scores_to_float32():
    ctx = _ctx(5, scores={"entropy": np.arange(5, dtype=np.float64), "porosity": [0, 1, 0, 1, 0]})
    assert ctx.scores["entropy"].dtype == np.float32
    assert ctx.scores["porosity"].dtype == np.float32
    np.testing.assert_array_equal(ctx.unlabelled_ids, np.arange(5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_slices=0), "positive integer"),
        (dict(labelled=np.zeros(10, dtype=np.uint8)), "bool array"),
        (dict(labelled=np.zeros(9, dtype=bool)), r"shape \(10,\)"),
        (dict(rng=np.random.RandomState(0)), "numpy.random.Generator"),
        (dict(scores={"entropy": np.zeros(9)}), r"'entropy' must have shape \(10,\)"),
        (dict(scores={"entropy": np.full(10, np.inf)}), "infinite"),
        (dict(scores={"entropy": np.array(["a"] * 10)}), "real-valued"),
        (dict(embeddings=np.zeros((10,))), r"\(10, D\)"),
        (dict(embeddings=np.zeros((9, 4))), r"\(10, D\)"),
        (dict(round_index=-1), "round_index"),
    ],
)
def test_context_validation_messages(kwargs, match):
    base = dict(n_slices=10, labelled=np.zeros(10, dtype=bool), rng=np.random.default_rng(0))
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        QueryContext(**base)


def test_context_score_lookup_error_names_what_exists():
    ctx = _ctx(5, scores={"margin": np.zeros(5)})
    with pytest.raises(StrategyError, match="'entropy' is not in this query context.*margin"):
        ctx.score("entropy")


# ----------------------------------------------------------------- decorator & params


def test_decorator_only_sets_attributes_and_does_not_register():
    @strategy(requires=("entropy",), description="mine")
    def my_unlisted(ctx, n, /, *, k: int = 3):
        return np.empty(0, dtype=np.intp)

    assert my_unlisted.__strategy_requires__ == ("entropy",)
    assert my_unlisted.__strategy_description__ == "mine"
    assert "my_unlisted" not in available_strategies()
    with pytest.raises(StrategyError, match="unknown strategy 'my_unlisted'"):
        get_strategy("my_unlisted")


def test_decorator_bare_and_string_requires():
    @strategy
    def a(ctx, n, /):
        """First line.

        More."""
        return np.empty(0, dtype=np.intp)

    @strategy(requires="bald")
    def b(ctx, n, /):
        return np.empty(0, dtype=np.intp)

    assert required_scores(a) == () and required_scores(b) == ("bald",)
    register_strategy(a, "tmp_bare")
    try:
        assert available_strategies()["tmp_bare"].description == "First line."
    finally:
        unregister_strategy("tmp_bare")


@pytest.mark.parametrize(
    "src, match",
    [
        ("def f(ctx): pass", "fn\\(ctx, n"),
        ("def f(ctx, n, *, k): pass", "needs a default"),
        ("def f(ctx, n, **kw): pass", "must not take \\*\\*kw"),
        ("def f(ctx, n, *args): pass", "must not take \\*args"),
        ("def f(ctx, n, *, k=object()): pass", "not JSON-serialisable"),
        ("def f(ctx, n, extra): pass", "extra positional"),
    ],
)
def test_decorator_rejects_bad_signatures(src, match):
    ns: dict = {}
    exec(src, ns)
    with pytest.raises(StrategyError, match=match):
        strategy(ns["f"])


def test_requires_can_depend_on_parameters():
    assert required_scores("hybrid") == ("entropy",)
    assert required_scores("hybrid", {"score": "bald"}) == ("bald",)
    assert required_scores("ranked_batch", {"score": "margin"}) == ("margin", "embeddings")
    assert required_scores("coreset") == ("embeddings",)
    assert required_scores("spaced_entropy") == ("entropy",)
    assert required_scores("distributed") == ()


def test_validate_params_fills_defaults_and_rejects_bad_ones():
    assert validate_params("hybrid", {"fraction": 0.25}) == {"fraction": 0.25, "score": "entropy", "min_gap": 5}
    assert validate_params("hybrid", {"fraction": 1})["fraction"] == 1  # int is fine for a float
    with pytest.raises(StrategyError, match=r"no parameter 'min_gapp'; did you mean 'min_gap'\?.*fraction=0.5"):
        validate_params("hybrid", {"min_gapp": 3})
    with pytest.raises(StrategyError, match="not JSON-serialisable.*int\\(x\\)"):
        validate_params("entropy", {"min_gap": np.int64(3)})
    with pytest.raises(StrategyError, match="expects int"):
        validate_params("entropy", {"min_gap": 2.5})
    with pytest.raises(StrategyError, match="expects int"):
        validate_params("entropy", {"min_gap": True})
    with pytest.raises(StrategyError, match="has no parameter 'k'.*valid parameters \\(with defaults\\): none"):
        validate_params("initial", {"k": 1})


# ------------------------------------------------------------------------ discovery


def test_builtins_are_discovered_through_entry_points():
    infos = available_strategies()
    assert BUILTINS <= set(infos)
    for name in BUILTINS:
        info = infos[name]
        assert info.ok, f"{name}: {info.error}"
        assert info.source == "activeseg"
        assert info.target.startswith("activeseg.strategies."), info.target
        assert info.description and "\n" not in info.description
    assert infos["hybrid"].requires == ("entropy",) and infos["hybrid"].requires_depends_on_params
    assert dict(infos["spaced_entropy"].params) == {"min_gap": 5}
    # the same entry points are what importlib.metadata reports for the installed package
    eps = {ep.name: ep.value for ep in md.entry_points(group="activeseg.strategies")}
    assert {n: infos[n].target for n in BUILTINS} == {n: eps[n] for n in BUILTINS}


def test_describe_strategies_lists_builtins_first():
    infos = describe_strategies()
    sources = [i.source for i in infos]
    assert sources[: len(BUILTINS)] == ["activeseg"] * len(BUILTINS)
    assert {i.name for i in infos[: len(BUILTINS)]} == BUILTINS


def test_unknown_strategy_lists_available_and_suggests():
    with pytest.raises(StrategyError, match=r"unknown strategy 'entrpy'\. Did you mean 'entropy'\?.*coreset.*distributed"):
        get_strategy("entrpy")
    with pytest.raises(StrategyError, match=r"unknown strategy 'zzz'\. Available: bald"):
        run_strategy("zzz", _ctx(), 1)


def test_names_are_matched_case_and_dash_insensitively():
    assert get_strategy("Spaced-Entropy") is get_strategy("spaced_entropy")


def test_broken_plugin_is_reported_and_does_not_break_others(fake_plugins):
    fake_plugins(
        ("broken", "activeseg_no_such_module_xyz:strategy", "broken-plugin"),
        ("not_callable", "activeseg.registry:ENTRY_POINT_GROUP", "odd-plugin"),
        ("bad_signature", "json:dumps", "odd-plugin"),
    )
    infos = available_strategies()
    assert "ModuleNotFoundError" in infos["broken"].error and infos["broken"].source == "broken-plugin"
    assert "not a function" in infos["not_callable"].error
    assert "must not take **kw" in infos["bad_signature"].error
    assert all(infos[n].ok for n in BUILTINS)
    with pytest.raises(StrategyError, match="'broken' from broken-plugin .* cannot be used: ModuleNotFoundError"):
        get_strategy("broken")
    assert get_strategy("entropy").__name__ == "entropy"


def test_name_clash_keeps_builtin_and_reports_the_loser(fake_plugins):
    fake_plugins(("entropy", "activeseg.strategies.positional:initial", "squatter"))
    info = available_strategies()["entropy"]
    assert info.source == "activeseg" and info.target == "activeseg.strategies.scored:entropy"
    assert info.shadowed == ("squatter (activeseg.strategies.positional:initial)",)


def test_duplicate_copies_of_one_distribution_are_merged(fake_plugins):
    # a stale activeseg.egg-info next to the installed dist-info lists the same entries again
    fake_plugins(("entropy", "activeseg.strategies.scored:entropy", "activeseg"))
    info = available_strategies()["entropy"]
    assert info.ok and info.shadowed == ()


def test_example_plugin_through_a_fake_entry_point(fake_plugins, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    fake_plugins(("z_stratified", "activeseg_zstratified:z_stratified", "activeseg-zstratified"))
    info = available_strategies()["z_stratified"]
    assert info.ok, info.error
    assert info.source == "activeseg-zstratified" and info.requires == ("entropy",)
    assert dict(info.params) == {"score": "entropy", "strata": 0}
    report = check_strategy("z_stratified", isolated=False)
    assert "all labelled" in report.cases
    # and it is usable by name, with validated parameters
    ctx = random_context(30, seed=3, labelled=0.2)
    ids = run_strategy("z_stratified", ctx, 3, {"score": "bald"})
    assert ids.size == 3
    # one pick per stratum of 10 slices, each the best bald score of its stratum
    for lo, z in zip((0, 10, 20), sorted(ids)):
        free = [i for i in range(lo, lo + 10) if not ctx.labelled[i]]
        assert z == max(free, key=lambda i: ctx.scores["bald"][i])
    with pytest.raises(StrategyError, match="no parameter 'strta'; did you mean 'strata'"):
        run_strategy("z_stratified", ctx, 3, {"strta": 2})


def test_example_plugin_through_register_strategy(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    from activeseg_zstratified import z_stratified

    register_strategy(z_stratified, "zs_notebook")
    try:
        assert available_strategies()["zs_notebook"].source == "registered"
        check_strategy("zs_notebook", params={"strata": 4}, isolated=False)
    finally:
        unregister_strategy("zs_notebook")
    assert "zs_notebook" not in available_strategies()


def test_register_strategy_rules():
    def mine(ctx, n, /, *, k: int = 1):
        return ctx.unlabelled_ids[:n]

    with pytest.raises(StrategyError, match="already provided by activeseg"):
        register_strategy(mine, "entropy")
    with pytest.raises(StrategyError, match="not valid"):
        register_strategy(mine, "has space")
    register_strategy(mine)  # name defaults to the function name
    try:
        register_strategy(mine)  # re-running a notebook cell replaces silently
        np.testing.assert_array_equal(run_strategy("mine", _ctx(10, labelled=[0]), 2), [1, 2])
        register_strategy(mine, "entropy", replace=True)
        assert get_strategy("entropy") is mine
        assert available_strategies()["entropy"].shadowed == ("activeseg (activeseg.strategies.scored:entropy)",)
    finally:
        unregister_strategy("mine")
        unregister_strategy("entropy")
    assert get_strategy("entropy").__module__ == "activeseg.strategies.scored"
    with pytest.raises(StrategyError, match="was not added with register_strategy"):
        unregister_strategy("entropy")


# ------------------------------------------------------------------- run_strategy


def _returning(value):
    def bad(ctx, n, /):
        return value

    return bad


@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([1, 1]), "duplicate slice ids: \\[1\\]"),
        (np.array([1, 2, 4]), "returned 3 slice ids for a budget of n=2"),
        (np.array([25]), "outside 0..19"),
        (np.array([-1]), "outside 0..19"),
        (np.array([0]), "already labelled slices: \\[0\\]"),
        (np.array([1.0]), "dtype float64"),
        (np.array([[1]]), "shape \\(1, 1\\)"),
        ((np.array([1]), np.array([0.5])), "tuple of 2 arrays"),
    ],
)
def test_run_strategy_rejects_invalid_output(value, match):
    with pytest.raises(StrategyError, match="strategy 'bad' .*" + match):
        run_strategy(_returning(value), _ctx(20, labelled=[0]), 2)


def test_run_strategy_accepts_lists_and_returns_intp():
    ids = run_strategy(_returning([3, 5]), _ctx(), 2)
    assert ids.dtype == np.intp and ids.tolist() == [3, 5]
    assert run_strategy(_returning([]), _ctx(), 2).dtype == np.intp


def test_run_strategy_checks_inputs_and_wraps_plugin_errors():
    def crashes(ctx, n, /):
        raise KeyError("oops")

    with pytest.raises(StrategyError, match="strategy 'crashes' failed: KeyError"):
        run_strategy(crashes, _ctx(), 1)
    with pytest.raises(StrategyError, match=r"needs scores \['entropy'\] that the query context lacks \(has: margin\)"):
        run_strategy("entropy", _ctx(scores={"margin": np.zeros(20)}), 2)
    with pytest.raises(ConfigError, match="budget n"):
        run_strategy("initial", _ctx(), -1)
    with pytest.raises(StrategyError, match="needs a QueryContext"):
        run_strategy("initial", {"labelled": []}, 1)


# ------------------------------------------------------------- the battery itself


def test_battery_catches_contract_violations():
    def returns_labelled(ctx, n, /):
        return np.arange(min(n, ctx.n_slices), dtype=np.intp)

    def global_random(ctx, n, /):  # ignores ctx.rng
        ids = ctx.unlabelled_ids
        return np.random.default_rng().permutation(ids)[:n].astype(np.intp)

    def crashes_when_all_labelled(ctx, n, /):
        return np.array([np.flatnonzero(~ctx.labelled)[0]][:n], dtype=np.intp)

    @strategy(requires=())
    def undeclared_score(ctx, n, /):
        ids = ctx.unlabelled_ids
        return ids[np.argsort(-np.nan_to_num(ctx.scores["entropy"][ids], nan=-1.0))][:n]

    def returns_list(ctx, n, /):
        return ctx.unlabelled_ids[:n].tolist()

    def returns_nothing(ctx, n, /):
        return np.empty(0, dtype=np.intp)

    def returns_int8(ctx, n, /):
        return ctx.unlabelled_ids[:n].astype(np.int8)

    cases = [
        (returns_nothing, "fresh stack.*returned no slice"),
        (returns_int8, "dtype int8"),
        (returns_labelled, "already labelled"),
        (global_random, "not deterministic"),
        (crashes_when_all_labelled, "raised IndexError"),
        (undeclared_score, "only the declared scores.*KeyError"),
        (returns_list, "returned list"),
    ]
    for fn, match in cases:
        with pytest.raises(AssertionError, match=match):
            check_strategy(fn, isolated=False)


def test_battery_accepts_a_parameter_refusal_but_not_other_strategy_errors():
    # a refusal (StrategyError naming the parameter) is fine where labelled slices rule
    # out every unlabelled one; it must not stand in for "nothing to pick" elsewhere
    def refuses_near_labelled(ctx, n, /, *, reach: int = 3):
        lab = np.flatnonzero(ctx.labelled)
        free = ctx.unlabelled_ids
        if lab.size:
            free = free[np.abs(free[:, None] - lab[None, :]).min(axis=1) >= reach]
        if n > 0 and free.size == 0 and ctx.unlabelled_ids.size:
            raise StrategyError(f"reach={reach} rules out every unlabelled slice")
        return free[:n].astype(np.intp)

    report = check_strategy(refuses_near_labelled, params={"reach": 30}, isolated=False)
    assert "two slices, one labelled" in report.cases

    def refuses_on_a_fresh_stack(ctx, n, /, *, k: int = 1):
        if n > 0:
            raise StrategyError(f"k={k} is never enough")
        return np.empty(0, dtype=np.intp)

    def refuses_without_saying_why(ctx, n, /):
        if n > 0 and ctx.labelled.any() and not ctx.labelled.all():
            raise StrategyError("cannot pick")
        return ctx.unlabelled_ids[:n]

    def refuses_naming_no_parameter(ctx, n, /, *, gap: int = 1):
        if n > 0 and ctx.labelled.any() and not ctx.labelled.all():
            raise StrategyError("too many gaps")  # "gaps" is not the parameter "gap"
        return ctx.unlabelled_ids[:n]

    def refuses_when_all_labelled(ctx, n, /, *, k: int = 1):
        if n > 0 and ctx.labelled.all():
            raise StrategyError(f"k={k}: nothing left")
        return ctx.unlabelled_ids[:n]

    def refuses_at_random(ctx, n, /, *, k: int = 1):
        if n > 0 and ctx.labelled.any() and not ctx.labelled.all():
            raise StrategyError(f"k={k}, draw {np.random.default_rng().integers(1 << 30)}")
        return ctx.unlabelled_ids[:n]

    cases = [
        (refuses_on_a_fresh_stack, "fresh stack.*may refuse only when.*not when nothing is labelled"),
        (refuses_without_saying_why, "must name the parameter.*may not refuse"),
        (refuses_naming_no_parameter, "must name the parameter to change \\(one of: gap\\)"),
        (refuses_when_all_labelled, "all labelled.*not when every slice is labelled"),
        (refuses_at_random, "not deterministic.*refused"),
    ]
    for fn, match in cases:
        with pytest.raises(AssertionError, match=match):
            check_strategy(fn, isolated=False)


def test_battery_detects_torch_needed_at_import(tmp_path, monkeypatch):
    pkg = tmp_path / "needs_torch_plugin.py"
    pkg.write_text(textwrap.dedent(
        """
        import numpy as np
        import torch  # a strategy module must not do this

        def grabs_torch(ctx, n, /):
            return ctx.unlabelled_ids[:n]
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    pytest.importorskip("torch")
    import needs_torch_plugin

    with pytest.raises(AssertionError, match="importing its module needs torch"):
        check_strategy(needs_torch_plugin.grabs_torch)


# ------------------------------------------------------------------ torch blocked


_BLOCKED = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "modAL", "sklearn"):
            raise ModuleNotFoundError(f"blocked {name}", name=name)

sys.meta_path.insert(0, Block())
from activeseg.registry import available_strategies, get_strategy
get_strategy("initial")
lazy = sorted(m for m in sys.modules if m.startswith("activeseg.strategies."))
infos = available_strategies()
print(json.dumps({
    "lazy": lazy,
    "errors": {k: v.error for k, v in infos.items() if v.error},
    "names": sorted(infos),
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "modAL", "sklearn", "skorch")),
}))
"""


def test_listing_and_importing_strategies_needs_no_torch():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # get_strategy imported only the module of the strategy asked for
    assert out["lazy"] == ["activeseg.strategies.common", "activeseg.strategies.positional"]
    assert BUILTINS <= set(out["names"])
    assert not {k: v for k, v in out["errors"].items() if k in BUILTINS}
    assert out["heavy"] == []


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("hybrid", {"fraction": 1.5}, "rejects parameters.*fraction"),
        ("spaced_entropy", {"min_gap": -1}, "rejects parameters"),
        ("ranked_batch", {"metric": "cosin"}, "rejects parameters.*metric"),
        ("hybrid", {"score": "entrpy"}, "cannot compute; did you mean 'entropy'"),
        ("no_such_thing", {}, "unknown strategy"),
    ],
)
def test_prepare_query_fails_before_scoring(name, params, match):
    with pytest.raises(StrategyError, match=match):
        registry.prepare_query(name, params)


def test_prepare_query_gives_the_canonical_name_and_what_to_compute():
    q = registry.prepare_query("Ranked-Batch", {"score": "margin"})
    assert q.name == "ranked_batch"
    assert q.scores == ("margin",) and q.wants_embeddings
    assert q.params["metric"] == "euclidean"


def test_plugin_exceptions_at_import_never_stop_the_listing(fake_plugins, tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_plugins(("exits", "exits_on_import:fn", "rude-plugin"))
    infos = available_strategies()
    assert "SystemExit" in infos["exits"].error
    assert all(infos[n].ok for n in BUILTINS)


# ------------------------------------------------------------------ scores a strategy may require


def test_known_scores_follow_the_scorer_registry():
    from activeseg.uncertainty import SCORERS, available_scorers

    assert set(registry.KNOWN_SCORES) == set(available_scorers())
    assert registry.KNOWN_SCORES["tta_variance"] == SCORERS["tta_variance"].description
    assert "total-variation" in registry.KNOWN_SCORES["rf_disagreement"]
    assert "fraction of pixels" not in registry.KNOWN_SCORES["rf_disagreement"]


def test_tta_variance_can_be_required():
    @strategy(requires=("tta_variance",))
    def by_tta(ctx, n, /):
        return np.argsort(-np.nan_to_num(ctx.score("tta_variance"), nan=-1.0))[:n].astype(np.intp)

    register_strategy(by_tta, "tmp_by_tta")
    try:
        q = registry.prepare_query("tmp_by_tta")
        assert q.scores == ("tta_variance",)
    finally:
        unregister_strategy("tmp_by_tta")


def test_a_registered_scorer_can_be_required_by_a_strategy():
    from activeseg.uncertainty import SCORERS, Scorer, register_scorer, score_slices

    @strategy(requires=("tmp_pore_edge",))
    def by_plugin_score(ctx, n, /):
        s = np.nan_to_num(ctx.score("tmp_pore_edge"), nan=-1.0)
        ids = ctx.unlabelled_ids
        return ids[np.argsort(-s[ids], kind="stable")][:n].astype(np.intp)

    with pytest.raises(StrategyError, match="cannot compute.*register_scorer"):
        registry.prepare_query(by_plugin_score)
    register_scorer(Scorer("tmp_pore_edge", ("proba",), pixel=lambda p: 1.0 - np.abs(2 * p["proba"][:, 1] - 1),
                           description="closeness of the pore probability to 0.5"))
    try:
        assert registry.KNOWN_SCORES["tmp_pore_edge"] == "closeness of the pore probability to 0.5"
        q = registry.prepare_query(by_plugin_score)
        assert q.scores == ("tmp_pore_edge",)

        class Half:  # a ProbabilityModel whose pore probability is the slice index / 10
            n_classes = 2

            def predict_proba(self, image, slices):
                p = np.broadcast_to(np.asarray(slices, np.float32)[:, None, None] / 10, (len(slices), 4, 4))
                return np.stack([1 - p, p], axis=1)

        scores = score_slices(Half(), np.zeros((10, 4, 4), np.uint8), q.scores)
        ctx = QueryContext(n_slices=10, labelled=np.zeros(10, bool), rng=np.random.default_rng(0), scores=scores)
        assert run_strategy(q.fn, ctx, 1).tolist() == [5]  # p = 0.5
    finally:
        SCORERS.pop("tmp_pore_edge")
