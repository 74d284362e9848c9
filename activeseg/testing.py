"""Public contract battery for query strategies (docs/architecture.md §4).

Plugin authors run it in their own test suite::

    from activeseg.testing import check_strategy
    from my_plugin import my_strategy

    def test_contract():
        check_strategy(my_strategy)

A failure raises :class:`StrategyContractError` (an ``AssertionError``) whose message
names the strategy, the case and the fault. This module imports only numpy and the
registry (never torch).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from activeseg.errors import ActiveSegError, StrategyError
from activeseg.registry import (
    EMBEDDINGS,
    QueryContext,
    get_strategy,
    required_scores,
    strategy_parameters,
    validate_output,
    validate_params,
)

__all__ = ["StrategyContractError", "CheckReport", "random_context", "check_strategy", "CONTEXT_SCORES"]

CONTEXT_SCORES: tuple[str, ...] = ("entropy", "margin", "bald", "rf_disagreement", "porosity")
"""Scores :func:`random_context` fills by default (every strategy's own ``requires`` is
added by :func:`check_strategy`). A fixed list, not the live scorer registry
(:data:`activeseg.registry.KNOWN_SCORES`): the random content drawn for a seed must not
change when a scorer is registered."""


class StrategyContractError(AssertionError):
    """A strategy broke the contract of docs/architecture.md §4."""


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check_strategy` verified.

    Attributes
    ----------
    name : strategy name.
    cases : names of the contexts it was run on.
    import_without_torch : True if importing its module with torch blocked was checked
        and passed; None when it could not be checked (function not importable by name).
    runs_without_torch : True/False as observed in that isolated run; None if not checked.
    """

    name: str
    cases: tuple[str, ...]
    import_without_torch: bool | None
    runs_without_torch: bool | None


def random_context(
    n_slices: int = 40,
    *,
    seed: int = 0,
    labelled: float | np.ndarray = 0.0,
    nan_fraction: float = 0.0,
    embedding_dim: int | None = 4,
    score_names: tuple[str, ...] | None = None,
    round_index: int = 0,
) -> QueryContext:
    """A :class:`QueryContext` with random scores and embeddings, for tests.

    Parameters
    ----------
    n_slices : Z.
    seed : seeds both the content and ``ctx.rng`` (equal seeds give equal contexts).
    labelled : fraction of slices labelled at random, or a bool (Z,) mask.
    nan_fraction : fraction of each score set to NaN (not scored), at random.
    embedding_dim : D of random embeddings, or None for no embeddings.
    score_names : scores to fill (default: :data:`CONTEXT_SCORES`).
    """
    content = np.random.default_rng([seed, 12345])
    if isinstance(labelled, np.ndarray):
        mask = labelled.astype(bool)
    else:
        mask = content.random(n_slices) < float(labelled)
    names = CONTEXT_SCORES if score_names is None else tuple(score_names)
    scores = {}
    for name in names:
        s = content.random(n_slices).astype(np.float32)
        s[content.random(n_slices) < nan_fraction] = np.nan
        scores[name] = s
    emb = None
    if embedding_dim is not None:
        emb = content.normal(size=(n_slices, embedding_dim)).astype(np.float32)
    return QueryContext(
        n_slices=n_slices,
        labelled=mask,
        rng=np.random.default_rng(seed),
        scores=scores,
        embeddings=emb,
        round_index=round_index,
    )


def _fail(name: str, case: str, msg: str) -> StrategyContractError:
    return StrategyContractError(f"strategy {name!r}, case {case!r}: {msg}")


def _snapshot(ctx: QueryContext) -> dict[str, Any]:
    snap = {"labelled": np.array(ctx.labelled, copy=True), "keys": tuple(ctx.scores)}
    for k, v in ctx.scores.items():
        snap["score:" + k] = np.array(v, copy=True)
    snap["embeddings"] = None if ctx.embeddings is None else np.array(ctx.embeddings, copy=True)
    snap["meta"] = (ctx.n_slices, ctx.round_index)
    return snap


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


_ISOLATED = r"""
import importlib, importlib.abc, json, sys


class _BlockTorch(importlib.abc.MetaPathFinder):
    # behave as if torch were not installed: `import torch` raises ModuleNotFoundError
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by check_strategy)", name=name)
        return None


sys.meta_path.insert(0, _BlockTorch())
spec = json.loads(sys.argv[1])
out = {"import": None, "run": None, "error": None}
try:
    obj = importlib.import_module(spec["module"])
    for part in spec["qualname"].split("."):
        obj = getattr(obj, part)
    out["import"] = True
except ImportError as exc:
    out["import"] = False
    out["error"] = f"{type(exc).__name__}: {exc}"
if out["import"]:
    from activeseg.testing import random_context
    ctx = random_context(24, seed=0, labelled=0.25, nan_fraction=0.1, score_names=spec["scores"])
    from activeseg.errors import StrategyError
    try:
        obj(ctx, 3, **spec["params"])
        out["run"] = True
    except ImportError as exc:
        out["run"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"
    except StrategyError:  # a refusal (see check_strategy): it ran, without torch
        out["run"] = True
print("RESULT" + json.dumps(out))
"""


def _isolated_torch_check(fn: Callable, params: Mapping[str, Any], scores: tuple[str, ...]) -> dict | None:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if obj is not fn and getattr(obj, "__wrapped__", None) is not fn:
        return None
    spec = json.dumps({"module": module, "qualname": qualname, "params": dict(params), "scores": list(scores)})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", _ISOLATED, spec], capture_output=True, text=True, env=env, timeout=120
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise StrategyContractError(
        f"isolated torch check of {module}:{qualname} crashed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


def check_strategy(
    fn: Callable | str,
    *,
    params: Mapping[str, Any] | None = None,
    n_slices: int = 40,
    seed: int = 0,
    isolated: bool = True,
    allow_torch_at_runtime: bool = False,
) -> CheckReport:
    """Run the strategy contract battery and raise on the first violation.

    Checks, on contexts with every known score filled with random values (and NaNs):

    - the signature is ``fn(ctx, n, /, *, key=default)`` with JSON defaults, and
      ``params`` are valid; the declared required scores are enough (one case gives
      the strategy only those);
    - it returns a 1-D integer ``ndarray`` of at most ``n`` unique ids, all in range
      and unlabelled;
    - equal seeds give equal results;
    - n = 0, n > number of unlabelled slices, everything labelled (must return an empty
      array, not raise), NaN scores (some and all), no embeddings, a 1-slice stack;
    - refusals: a strategy whose own parameters rule out every unlabelled slice (e.g.
      ``spaced_entropy``'s ``min_gap`` when every unlabelled slice is that close to a
      labelled one) may raise :class:`~activeseg.errors.StrategyError` instead of
      returning an empty array, which the query step would report as "every slice is
      labelled". This is accepted only when ``n`` > 0 and the context has both labelled
      and unlabelled slices (never on a fresh stack, for n = 0 or when all is labelled),
      only if the message names one of the strategy's parameters (so the user knows
      what to change), and it must be deterministic (the same message for equal seeds);
      any other exception fails the battery;
    - it does not modify ``ctx``;
    - torch: with ``isolated`` (default), a subprocess with torch blocked imports the
      strategy's module (must work) and runs it once (must work unless
      ``allow_torch_at_runtime``: a strategy that imports modAL inside the function
      needs torch when it runs). Skipped for functions not importable by name (defined
      in ``__main__`` or inside a function). In-process, a strategy that newly imports
      torch while running fails unless ``allow_torch_at_runtime``.

    Parameters
    ----------
    fn : strategy function or registered name.
    params : keyword parameters to run with (default: the strategy's defaults).
    n_slices : Z of the main test contexts.
    seed : base seed of the test contexts.
    isolated : run the torch-blocked subprocess check.
    allow_torch_at_runtime : accept a strategy that needs torch when it runs.

    Returns
    -------
    CheckReport

    Raises
    ------
    StrategyContractError (an AssertionError) on the first violation.
    """
    if isinstance(fn, str):
        name = fn
        fn = get_strategy(fn)
    else:
        name = getattr(fn, "__name__", repr(fn))
    try:
        strategy_parameters(fn)
        full = validate_params(fn, params)
        required = tuple(r for r in required_scores(fn, full) if r != EMBEDDINGS)
    except ActiveSegError as exc:
        raise _fail(name, "signature", str(exc)) from exc
    all_scores = tuple(dict.fromkeys(CONTEXT_SCORES + required))
    z = n_slices
    lab_mask_all = np.ones(z, dtype=bool)

    cases: list[tuple[str, Callable[[int], QueryContext], int]] = [
        ("fresh stack", lambda s: random_context(z, seed=s, score_names=all_scores), 5),
        ("partly labelled, some NaN",
         lambda s: random_context(z, seed=s, labelled=0.3, nan_fraction=0.2, score_names=all_scores), 7),
        ("no embeddings",
         lambda s: random_context(z, seed=s, labelled=0.3, nan_fraction=0.2, embedding_dim=None, score_names=all_scores), 6),
        ("all scores NaN", lambda s: random_context(z, seed=s, labelled=0.2, nan_fraction=1.0, score_names=all_scores), 5),
        ("NaN embeddings rows",
         lambda s: _nan_rows(random_context(z, seed=s, labelled=0.2, nan_fraction=0.3, score_names=all_scores)), 5),
        ("only the declared scores",
         lambda s: random_context(z, seed=s, labelled=0.3, nan_fraction=0.1, score_names=required), 6),
        ("n = 0", lambda s: random_context(z, seed=s, labelled=0.3, score_names=all_scores), 0),
        ("n > unlabelled", lambda s: random_context(z, seed=s, labelled=0.8, nan_fraction=0.2, score_names=all_scores), z),
        ("all labelled", lambda s: random_context(z, seed=s, labelled=lab_mask_all, score_names=all_scores), 4),
        ("one slice", lambda s: random_context(1, seed=s, score_names=all_scores), 3),
        ("two slices, one labelled",
         lambda s: random_context(2, seed=s, labelled=np.array([True, False]), score_names=all_scores), 1),
    ]
    torch_before = "torch" in sys.modules
    ran: list[str] = []
    for case, make, n in cases:
        outs: list[np.ndarray | str] = []  # per repeat: the ids returned, or the refusal's message
        for _rep in range(2):
            ctx = make(seed)
            snap = _snapshot(ctx)
            try:
                out = fn(ctx, n, **full)
            except StrategyError as exc:
                _check_refusal(name, case, exc, ctx, n, full)
                outs.append(str(exc))
                continue
            except Exception as exc:
                raise _fail(name, case, f"raised {type(exc).__name__}: {exc} (n={n})") from exc
            if not isinstance(out, np.ndarray):
                raise _fail(name, case, f"returned {type(out).__name__}; return np.asarray(ids, dtype=np.intp)")
            if out.size and (out.dtype.kind not in "iu" or out.dtype.itemsize < np.dtype(np.intp).itemsize):
                raise _fail(name, case, f"returned dtype {out.dtype}; expected np.intp slice ids "
                            "(narrower integers overflow on deep stacks): np.asarray(ids, dtype=np.intp)")
            try:
                ids = validate_output(name, out, ctx, n)
            except ActiveSegError as exc:
                raise _fail(name, case, str(exc)) from exc
            after = _snapshot(ctx)
            for key in snap:
                if not _same(snap[key], after[key]):
                    raise _fail(name, case, f"modified the query context ({key})")
            if case == "all labelled" and ids.size:
                raise _fail(name, case, f"returned {ids.tolist()} although every slice is labelled")
            if case == "fresh stack" and ids.size == 0:
                raise _fail(name, case, f"returned no slice for n={n} on a stack with nothing labelled")
            outs.append(ids)
        if not _same_outcome(outs[0], outs[1]):
            raise _fail(name, case, f"not deterministic for equal seeds: {_outcome(outs[0])} vs {_outcome(outs[1])}")
        ran.append(case)
    # Different seeds must still give valid results (random strategies use ctx.rng).
    for s in (seed + 1, seed + 2):
        ctx = random_context(z, seed=s, labelled=0.3, nan_fraction=0.2, score_names=all_scores)
        try:
            validate_output(name, fn(ctx, 5, **full), ctx, 5)
        except StrategyError as exc:
            _check_refusal(name, f"seed {s}", exc, ctx, 5, full)
        except Exception as exc:
            raise _fail(name, f"seed {s}", f"{type(exc).__name__}: {exc}") from exc

    if not torch_before and "torch" in sys.modules and not allow_torch_at_runtime:
        raise _fail(
            name, "torch", "importing or running it imported torch; strategies must not need torch "
            "(import heavy optional dependencies inside the function and pass allow_torch_at_runtime=True "
            "if that is intended)"
        )

    import_ok = runs_ok = None
    if isolated:
        result = _isolated_torch_check(fn, full, all_scores)
        if result is not None:
            import_ok = bool(result["import"])
            if not import_ok:
                raise _fail(name, "torch blocked", f"importing its module needs torch: {result['error']}")
            runs_ok = bool(result["run"])
            if not runs_ok and not allow_torch_at_runtime:
                raise _fail(name, "torch blocked", f"running it needs torch: {result['error']}")
    return CheckReport(name, tuple(ran), import_ok, runs_ok)


def _check_refusal(name: str, case: str, exc: StrategyError, ctx: QueryContext, n: int,
                   params: Mapping[str, Any]) -> None:
    """Accept a StrategyError as a legitimate refusal (see :func:`check_strategy`) or fail."""
    labelled = np.asarray(ctx.labelled, dtype=bool)
    if n <= 0 or not labelled.any() or labelled.all():
        why = "n = 0" if n <= 0 else ("nothing is labelled" if not labelled.any() else "every slice is labelled")
        raise _fail(name, case, f"raised StrategyError: {exc} (n={n}); a strategy may refuse only when its "
                    f"parameters rule out every unlabelled slice, not when {why}") from exc
    msg = str(exc)
    if not any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", msg) for k in params):
        raise _fail(name, case, f"raised StrategyError: {exc} (n={n}); a refusal must name the parameter "
                    f"to change (one of: {', '.join(params) or 'none: a strategy without parameters may not refuse'})") from exc


def _outcome(out: np.ndarray | str) -> str:
    return f"refused ({out})" if isinstance(out, str) else str(out.tolist())


def _same_outcome(a: np.ndarray | str, b: np.ndarray | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return np.array_equal(a, b)


def _nan_rows(ctx: QueryContext) -> QueryContext:
    emb = np.array(ctx.embeddings, copy=True)
    emb[np.random.default_rng(ctx.n_slices).random(ctx.n_slices) < 0.3] = np.nan
    return dataclasses.replace(ctx, embeddings=emb)
