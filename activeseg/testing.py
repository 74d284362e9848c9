"""Public contract battery for query strategies (docs/architecture.md §4).

Plugin authors run it in their own test suite::

    from activeseg.testing import check_strategy
    from my_plugin import my_strategy

    def test_contract():
        check_strategy(my_strategy)

A failure raises :class:`StrategyContractError` (an ``AssertionError``) whose message
names the strategy, the case and the fault. The battery follows the strategy's unit: a
tile strategy (``@strategy(..., unit="tiles")``) is run on contexts with a tile grid,
per-tile scores and labelled tiles, and must return ``(k, 2)`` rows ``(z, t)``. This
module imports only numpy and the registry (never torch).
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
    TILE_PREFIX,
    QueryContext,
    get_strategy,
    required_scores,
    strategy_parameters,
    strategy_unit,
    validate_output,
    validate_params,
)

__all__ = [
    "StrategyContractError", "CheckReport", "random_context", "check_strategy", "CONTEXT_SCORES",
    "CONTEXT_TILE_SCORES", "TEST_GRID",
]

CONTEXT_SCORES: tuple[str, ...] = ("entropy", "margin", "bald", "rf_disagreement", "porosity")
"""Scores :func:`random_context` fills by default (every strategy's own ``requires`` is
added by :func:`check_strategy`). A fixed list, not the live scorer registry
(:data:`activeseg.registry.KNOWN_SCORES`): the random content drawn for a seed must not
change when a scorer is registered."""

CONTEXT_TILE_SCORES: tuple[str, ...] = ("entropy", "margin", "bald", "rf_disagreement", "porosity", "edge")
"""Per-tile scores (names without the ``tile:`` prefix) :func:`random_context` fills when
it is given a tile grid."""

TEST_GRID: tuple[int, int, int] = (3, 4, 32)
"""The tile grid ``(n_rows, n_cols, tile)`` of :func:`check_strategy`'s tile contexts."""


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
    tiles: tuple[int, int, int] | None = None,
    tile_labelled: float | np.ndarray = 0.0,
    tile_score_names: tuple[str, ...] | None = None,
) -> QueryContext:
    """A :class:`QueryContext` with random scores and embeddings, for tests.

    Parameters
    ----------
    n_slices : Z.
    seed : seeds both the content and ``ctx.rng`` (equal seeds give equal contexts).
    labelled : fraction of slices labelled at random, or a bool (Z,) mask.
    nan_fraction : fraction of each score set to NaN (not scored), at random; for the
        per-tile scores, the fraction of slices whose row is NaN.
    embedding_dim : D of random embeddings, or None for no embeddings.
    score_names : scores to fill (default: :data:`CONTEXT_SCORES`).
    tiles : ``(n_rows, n_cols, tile)``: give the context a tile grid, per-tile scores
        (uniform in [0, 1)), labelled tiles and ``tile_pixels`` (the last row and
        column of tiles are clipped to half a tile, as at an image's edge). None = no
        tile fields (the content of the other fields does not depend on it).
    tile_labelled : fraction of tiles labelled at random, or a bool (Z, n_tiles) mask
        (the tiles of labelled slices are labelled in any case).
    tile_score_names : per-tile scores to fill, with or without the ``tile:`` prefix
        (default: :data:`CONTEXT_TILE_SCORES`).
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
    tile_fields: dict[str, Any] = {}
    if tiles is not None:
        tile_fields = _random_tiles(n_slices, seed, tuple(tiles), tile_labelled, nan_fraction, tile_score_names)
    return QueryContext(
        n_slices=n_slices,
        labelled=mask,
        rng=np.random.default_rng(seed),
        scores=scores,
        embeddings=emb,
        round_index=round_index,
        **tile_fields,
    )


def _random_tiles(n_slices: int, seed: int, grid: tuple, tile_labelled: float | np.ndarray, nan_fraction: float,
                  names: tuple[str, ...] | None) -> dict[str, Any]:
    """The tile fields of :func:`random_context`, drawn from their own generator."""
    if len(grid) != 3:
        raise ValueError(f"tiles must be (n_rows, n_cols, tile), got {grid!r}")
    n_rows, n_cols, tile = (int(v) for v in grid)
    n_tiles = n_rows * n_cols
    content = np.random.default_rng([seed, 12345, 1])
    if isinstance(tile_labelled, np.ndarray):
        tl = tile_labelled.astype(bool)
    else:
        tl = content.random((n_slices, n_tiles)) < float(tile_labelled)
    names = CONTEXT_TILE_SCORES if names is None else tuple(names)
    tile_scores = {}
    for name in names:
        key = name[len(TILE_PREFIX):] if name.startswith(TILE_PREFIX) else name
        v = content.random((n_slices, n_tiles)).astype(np.float32)
        v[content.random(n_slices) < nan_fraction] = np.nan
        tile_scores[key] = v
    heights = np.full(n_rows, tile, np.int64)
    widths = np.full(n_cols, tile, np.int64)
    if n_rows > 1:
        heights[-1] = max(tile // 2, 1)
    if n_cols > 1:
        widths[-1] = max(tile // 2, 1)
    return {
        "tile_grid": (n_rows, n_cols, tile),
        "tile_scores": tile_scores,
        "tile_labelled": tl,
        "tile_pixels": np.outer(heights, widths).reshape(-1),
    }


def _fail(name: str, case: str, msg: str) -> StrategyContractError:
    return StrategyContractError(f"strategy {name!r}, case {case!r}: {msg}")


def _snapshot(ctx: QueryContext) -> dict[str, Any]:
    snap = {"labelled": np.array(ctx.labelled, copy=True), "keys": tuple(ctx.scores)}
    for k, v in ctx.scores.items():
        snap["score:" + k] = np.array(v, copy=True)
    snap["embeddings"] = None if ctx.embeddings is None else np.array(ctx.embeddings, copy=True)
    snap["meta"] = (ctx.n_slices, ctx.round_index, ctx.tile_grid)
    snap["tile_keys"] = tuple(ctx.tile_scores)
    for k, v in ctx.tile_scores.items():
        snap["tile_score:" + k] = np.array(v, copy=True)
    for k in ("tile_labelled", "tile_pixels"):
        v = getattr(ctx, k)
        snap[k] = None if v is None else np.array(v, copy=True)
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
    tiles = spec.get("tiles")
    ctx = random_context(24, seed=0, labelled=0.25, nan_fraction=0.1, score_names=spec["scores"],
                         tiles=None if tiles is None else tuple(tiles), tile_labelled=0.25 if tiles else 0.0,
                         tile_score_names=spec.get("tile_scores"))
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


def _isolated_torch_check(fn: Callable, params: Mapping[str, Any], scores: tuple[str, ...],
                          tiles: tuple[int, int, int] | None = None,
                          tile_scores: tuple[str, ...] | None = None) -> dict | None:
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
    spec = json.dumps({"module": module, "qualname": qualname, "params": dict(params), "scores": list(scores),
                       "tiles": None if tiles is None else list(tiles),
                       "tile_scores": None if tile_scores is None else list(tile_scores)})
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

    A tile strategy (``unit="tiles"``) runs the same battery on contexts with the tile
    grid :data:`TEST_GRID`, every per-tile score of :data:`CONTEXT_TILE_SCORES` (plus its
    own) with NaN rows, and labelled slices *and* labelled tiles: it must return an
    integer ``ndarray`` of shape ``(k, 2)`` (rows ``(z, t)``, k <= n, the budget counting
    tiles), unique rows, never a labelled tile nor a tile of a labelled slice. Its cases:
    n = 0, n > number of unlabelled tiles, every slice labelled and every tile labelled
    (an empty array, or a refusal naming a parameter), one unlabelled tile left, NaN
    rows (some and all), only the declared scores, a 1-slice 1-tile stack, and two
    slices with one labelled. A refusal is accepted only when ``n`` > 0 and some tile
    is labelled, under the same rules as above.

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
        unit = strategy_unit(fn)
        declared = tuple(r for r in required_scores(fn, full) if r != EMBEDDINGS)
    except ActiveSegError as exc:
        raise _fail(name, "signature", str(exc)) from exc
    required = tuple(r for r in declared if not r.startswith(TILE_PREFIX))
    required_tiles = tuple(r[len(TILE_PREFIX):] for r in declared if r.startswith(TILE_PREFIX))
    all_scores = tuple(dict.fromkeys(CONTEXT_SCORES + required))
    z = n_slices
    if unit == "tiles":
        cases = _tile_cases(z, all_scores, required, required_tiles)
    else:
        cases = _slice_cases(z, all_scores, required, required_tiles)
    torch_before = "torch" in sys.modules
    ran: list[str] = []
    for case, make, n in cases:
        outs: list[np.ndarray | str] = []  # per repeat: what it returned, or the refusal's message
        for _rep in range(2):
            ctx = make(seed)
            snap = _snapshot(ctx)
            try:
                out = fn(ctx, n, **full)
            except StrategyError as exc:
                _check_refusal(name, case, exc, ctx, n, full, unit=unit)
                outs.append(str(exc))
                continue
            except Exception as exc:
                raise _fail(name, case, f"raised {type(exc).__name__}: {exc} (n={n})") from exc
            ids = _check_output(name, case, out, ctx, n, unit)
            after = _snapshot(ctx)
            for key in snap:
                if not _same(snap[key], after[key]):
                    raise _fail(name, case, f"modified the query context ({key})")
            what = "tile" if unit == "tiles" else "slice"
            if case.startswith("all ") and case.endswith(" labelled") and ids.size:
                raise _fail(name, case, f"returned {ids.tolist()} although every {what} is labelled")
            if case == "fresh stack" and ids.size == 0:
                raise _fail(name, case, f"returned no {what} for n={n} on a stack with nothing labelled")
            outs.append(ids)
        if not _same_outcome(outs[0], outs[1]):
            raise _fail(name, case, f"not deterministic for equal seeds: {_outcome(outs[0])} vs {_outcome(outs[1])}")
        ran.append(case)
    # Different seeds must still give valid results (random strategies use ctx.rng).
    grid = TEST_GRID if (unit == "tiles" or required_tiles) else None
    tile_names = tuple(dict.fromkeys(CONTEXT_TILE_SCORES + required_tiles))
    for s in (seed + 1, seed + 2):
        ctx = random_context(z, seed=s, labelled=0.3, nan_fraction=0.2, score_names=all_scores,
                             tiles=grid, tile_labelled=0.3 if grid else 0.0, tile_score_names=tile_names)
        try:
            _check_output(name, f"seed {s}", fn(ctx, 5, **full), ctx, 5, unit)
        except StrategyError as exc:
            _check_refusal(name, f"seed {s}", exc, ctx, 5, full, unit=unit)
        except StrategyContractError:
            raise
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
        result = _isolated_torch_check(fn, full, all_scores, grid, tile_names if grid else None)
        if result is not None:
            import_ok = bool(result["import"])
            if not import_ok:
                raise _fail(name, "torch blocked", f"importing its module needs torch: {result['error']}")
            runs_ok = bool(result["run"])
            if not runs_ok and not allow_torch_at_runtime:
                raise _fail(name, "torch blocked", f"running it needs torch: {result['error']}")
    return CheckReport(name, tuple(ran), import_ok, runs_ok)


_Case = tuple[str, Callable[[int], QueryContext], int]


def _slice_cases(z: int, all_scores: tuple[str, ...], required: tuple[str, ...],
                 required_tiles: tuple[str, ...]) -> list[_Case]:
    """The contexts of the slice battery (with a tile grid only if the strategy reads tile scores)."""
    grid = TEST_GRID if required_tiles else None
    tile_names = tuple(dict.fromkeys(CONTEXT_TILE_SCORES + required_tiles)) if grid else None

    def ctx(n_slices: int, s: int, *, names: tuple[str, ...] = all_scores, tnames: tuple[str, ...] | None = tile_names,
            **kw) -> QueryContext:
        return random_context(n_slices, seed=s, score_names=names, tiles=grid, tile_score_names=tnames, **kw)

    lab_mask_all = np.ones(z, dtype=bool)
    return [
        ("fresh stack", lambda s: ctx(z, s), 5),
        ("partly labelled, some NaN", lambda s: ctx(z, s, labelled=0.3, nan_fraction=0.2), 7),
        ("no embeddings", lambda s: ctx(z, s, labelled=0.3, nan_fraction=0.2, embedding_dim=None), 6),
        ("all scores NaN", lambda s: ctx(z, s, labelled=0.2, nan_fraction=1.0), 5),
        ("NaN embeddings rows", lambda s: _nan_rows(ctx(z, s, labelled=0.2, nan_fraction=0.3)), 5),
        ("only the declared scores",
         lambda s: ctx(z, s, names=required, tnames=required_tiles, labelled=0.3, nan_fraction=0.1), 6),
        ("n = 0", lambda s: ctx(z, s, labelled=0.3), 0),
        ("n > unlabelled", lambda s: ctx(z, s, labelled=0.8, nan_fraction=0.2), z),
        ("all labelled", lambda s: ctx(z, s, labelled=lab_mask_all), 4),
        ("one slice", lambda s: ctx(1, s), 3),
        ("two slices, one labelled", lambda s: ctx(2, s, labelled=np.array([True, False])), 1),
    ]


def _tile_cases(z: int, all_scores: tuple[str, ...], required: tuple[str, ...],
                required_tiles: tuple[str, ...]) -> list[_Case]:
    """The contexts of the tile battery: a tile grid, per-tile scores, labelled tiles."""
    grid = TEST_GRID
    n_tiles = grid[0] * grid[1]
    tile_names = tuple(dict.fromkeys(CONTEXT_TILE_SCORES + required_tiles))

    def ctx(n_slices: int, s: int, *, names: tuple[str, ...] = all_scores, tnames: tuple[str, ...] = tile_names,
            tiles: tuple[int, int, int] = grid, **kw) -> QueryContext:
        return random_context(n_slices, seed=s, score_names=names, tiles=tiles, tile_score_names=tnames, **kw)

    one_left = np.ones((z, n_tiles), dtype=bool)
    one_left[z // 2, n_tiles // 2] = False
    return [
        ("fresh stack", lambda s: ctx(z, s), 5),
        ("partly labelled slices and tiles, some NaN",
         lambda s: ctx(z, s, labelled=0.3, tile_labelled=0.3, nan_fraction=0.2), 7),
        ("no embeddings",
         lambda s: ctx(z, s, labelled=0.3, tile_labelled=0.3, nan_fraction=0.2, embedding_dim=None), 6),
        ("all scores NaN", lambda s: ctx(z, s, labelled=0.2, tile_labelled=0.2, nan_fraction=1.0), 5),
        ("NaN embeddings rows",
         lambda s: _nan_rows(ctx(z, s, labelled=0.2, tile_labelled=0.2, nan_fraction=0.3)), 5),
        ("only the declared scores",
         lambda s: ctx(z, s, names=required, tnames=required_tiles, labelled=0.3, tile_labelled=0.3, nan_fraction=0.1), 6),
        ("n = 0", lambda s: ctx(z, s, labelled=0.3, tile_labelled=0.3), 0),
        ("n > unlabelled tiles", lambda s: ctx(z, s, labelled=0.6, tile_labelled=0.5, nan_fraction=0.2), z * n_tiles),
        ("most tiles labelled", lambda s: ctx(z, s, labelled=0.2, tile_labelled=0.97), 8),
        ("one unlabelled tile left", lambda s: ctx(z, s, tile_labelled=one_left), 3),
        ("all slices labelled", lambda s: ctx(z, s, labelled=np.ones(z, dtype=bool)), 4),
        ("all tiles labelled", lambda s: ctx(z, s, tile_labelled=np.ones((z, n_tiles), dtype=bool)), 4),
        ("one slice, one tile", lambda s: ctx(1, s, tiles=(1, 1, 16)), 3),
        ("two slices, one labelled", lambda s: ctx(2, s, labelled=np.array([True, False])), 2),
    ]


def _check_output(name: str, case: str, out: Any, ctx: QueryContext, n: int, unit: str) -> np.ndarray:
    """Type, dtype and :func:`~activeseg.registry.validate_output` checks of one result."""
    if unit == "tiles":
        if not isinstance(out, np.ndarray):
            raise _fail(name, case, f"returned {type(out).__name__}; return np.asarray(rows, dtype=np.int64).reshape(-1, 2)")
        if out.size and (out.dtype.kind not in "iu" or out.dtype.itemsize < 8):
            raise _fail(name, case, f"returned dtype {out.dtype}; expected int64 (z, t) rows: "
                        "np.asarray(rows, dtype=np.int64)")
        if out.size == 0 and out.shape not in ((0, 2), (0,)):
            raise _fail(name, case, f"returned an empty array of shape {out.shape}; expected shape (0, 2)")
    else:
        if not isinstance(out, np.ndarray):
            raise _fail(name, case, f"returned {type(out).__name__}; return np.asarray(ids, dtype=np.intp)")
        if out.size and (out.dtype.kind not in "iu" or out.dtype.itemsize < np.dtype(np.intp).itemsize):
            raise _fail(name, case, f"returned dtype {out.dtype}; expected np.intp slice ids "
                        "(narrower integers overflow on deep stacks): np.asarray(ids, dtype=np.intp)")
    try:
        return validate_output(name, out, ctx, n, unit=unit)
    except ActiveSegError as exc:
        raise _fail(name, case, str(exc)) from exc


def _check_refusal(name: str, case: str, exc: StrategyError, ctx: QueryContext, n: int,
                   params: Mapping[str, Any], *, unit: str = "slices") -> None:
    """Accept a StrategyError as a legitimate refusal (see :func:`check_strategy`) or fail."""
    if unit == "tiles":
        tl = np.asarray(ctx.tile_labelled, dtype=bool)
        if n <= 0 or not tl.any():
            why = "n = 0" if n <= 0 else "nothing is labelled"
            raise _fail(name, case, f"raised StrategyError: {exc} (n={n}); a tile strategy may refuse only when "
                        f"its parameters rule out every unlabelled tile, not when {why}") from exc
    else:
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
