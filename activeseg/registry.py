"""Query-strategy contract, registration and entry-point discovery (docs/architecture.md §4).

A query strategy is a plain function::

    @strategy(requires=("entropy",), description="top-n slices by entropy")
    def entropy(ctx: QueryContext, n: int, /, *, min_gap: int = 0) -> np.ndarray:
        ...

It receives a read-only :class:`QueryContext` and a budget ``n`` and returns at most
``n`` unique, currently unlabelled, global slice ids (``np.intp``). Its keyword-only
parameters have JSON-serialisable defaults (they are stored in the round record).

A *tile strategy* (``@strategy(..., unit="tiles")``) queries regions instead: tiles of
the session's grid (``ctx.tile_grid``), and returns an int64 ``(k, 2)`` array of rows
``(z, t)`` (slice, tile index ``t = row * n_cols + col``), k <= n, unique, never a tile
already labelled. It reads per-tile scores declared with the prefix ``tile:``
(``requires=("tile:entropy",)``) from ``ctx.tile_scores`` (without the prefix).

Strategies are found through the entry-point group ``activeseg.strategies``; each entry
names the strategy function itself (``name = "package.module:function"``). The built-ins
in ``activeseg.strategies`` are registered exactly that way, in activeseg's own
``pyproject.toml``. :func:`register_strategy` adds one for the current process (notebooks).

Discovery is lazy and failure-tolerant:

- :func:`get_strategy` imports only the module of the strategy asked for;
- :func:`available_strategies` / :func:`describe_strategies` import every strategy module
  and report a plugin that fails to import (or is not a valid strategy) with its error,
  without affecting the others.

This module imports only the standard library, numpy and :mod:`activeseg.uncertainty`
(numpy and scipy; its scorer registry names the scores a strategy may require):
importing it, listing strategies, or importing a built-in never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as _md
import inspect
import json
import logging
import numbers
import re
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from activeseg.errors import ActiveSegError, ConfigError, StrategyError
from activeseg.uncertainty import SCORERS

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_SCORES",
    "KNOWN_TILE_SCORES",
    "TILE_PREFIX",
    "TILE_DESCRIPTORS",
    "UNITS",
    "EMBEDDINGS",
    "QueryContext",
    "PreparedQuery",
    "prepare_query",
    "StrategyInfo",
    "strategy",
    "get_strategy",
    "available_strategies",
    "describe_strategies",
    "register_strategy",
    "unregister_strategy",
    "refresh_strategies",
    "required_scores",
    "split_scores",
    "strategy_parameters",
    "strategy_unit",
    "validate_params",
    "validate_output",
    "run_strategy",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "activeseg.strategies"
"""Entry-point group in which strategies are declared."""

class _ScoreDescriptions(Mapping[str, str]):
    """Read-only, live view of the scorer registry of :mod:`activeseg.uncertainty`:
    name -> one-line description, in registration order (built-ins first)."""

    def __getitem__(self, name: str) -> str:
        return SCORERS[name].description

    def __iter__(self):
        return iter(tuple(SCORERS))

    def __len__(self) -> int:
        return len(SCORERS)

    def __repr__(self) -> str:
        return f"KNOWN_SCORES({dict(self)!r})"


KNOWN_SCORES: Mapping[str, str] = _ScoreDescriptions()
"""Per-slice score names the query step knows how to compute, with their meaning.

The scorer registry of :mod:`activeseg.uncertainty` is the one source: every scorer
there, built in (entropy, margin, bald, tta_variance, rf_disagreement, porosity) or
added with :func:`activeseg.uncertainty.register_scorer`, is listed here as soon as it
is registered, and a strategy may require it.

Besides these, a strategy may list :data:`EMBEDDINGS` in ``requires`` to ask the query
step to fill ``ctx.embeddings``; it is not a score, and a strategy that asks for it must
still work without it (the embeddings can be missing, e.g. when computing them failed).

All are float32 ``(Z,)``; NaN = not scored. Except for ``porosity``, higher = more
informative.
"""

EMBEDDINGS = "embeddings"
"""Requirement name meaning "compute per-slice embeddings into ``ctx.embeddings``"."""

UNITS: tuple[str, ...] = ("slices", "tiles")
"""What a strategy queries: whole slices (the default) or tiles of the session's grid."""

TILE_PREFIX = "tile:"
"""Prefix of per-tile score names in ``requires`` (``"tile:entropy"``); the values appear
in ``ctx.tile_scores`` without it (``ctx.tile_scores["entropy"]``)."""

TILE_DESCRIPTORS: Mapping[str, str] = types.MappingProxyType({
    "porosity": "predicted pore fraction of the tile",
    "edge": "fraction of the tile's pixels within 2 px of a predicted phase interface",
})
"""Per-tile descriptors that are not means of a per-pixel scorer (name without prefix)."""


class _TileScoreDescriptions(Mapping[str, str]):
    """Read-only, live view of the per-tile score names: ``tile:`` + every registered
    scorer (the mean of its per-pixel map over the tile) plus :data:`TILE_DESCRIPTORS`."""

    def _names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*SCORERS, *TILE_DESCRIPTORS]))

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str) or not name.startswith(TILE_PREFIX):
            raise KeyError(name)
        base = name[len(TILE_PREFIX):]
        if base in TILE_DESCRIPTORS:
            return TILE_DESCRIPTORS[base]
        if base in SCORERS:
            return f"mean over the tile of: {SCORERS[base].description}"
        raise KeyError(name)

    def __iter__(self):
        return iter(TILE_PREFIX + n for n in self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"KNOWN_TILE_SCORES({dict(self)!r})"


KNOWN_TILE_SCORES: Mapping[str, str] = _TileScoreDescriptions()
"""Per-tile score names (with the ``tile:`` prefix) the query step can compute: the mean
over each tile of any registered per-pixel scorer (``tile:entropy``, ``tile:margin``,
``tile:bald``, ...), ``tile:porosity`` and ``tile:edge`` (:data:`TILE_DESCRIPTORS`).
All are float32 ``(Z, n_tiles)``; a row of NaN = slice not scored."""


def split_scores(scores: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split a dict of computed scores into per-slice and per-tile ones.

    Parameters
    ----------
    scores : mapping name -> array, as the scoring step returns it: per-slice scores
        under their names, per-tile scores under ``tile:NAME``; ``"embeddings"`` is left out.

    Returns
    -------
    (slice_scores, tile_scores) : the per-slice scores, and the per-tile ones keyed by
        their name *without* the prefix, ready for ``QueryContext(scores=..., tile_scores=...)``.
    """
    per_slice: dict[str, np.ndarray] = {}
    per_tile: dict[str, np.ndarray] = {}
    for name, values in scores.items():
        if name == EMBEDDINGS:
            continue
        if isinstance(name, str) and name.startswith(TILE_PREFIX):
            per_tile[name[len(TILE_PREFIX):]] = values
        else:
            per_slice[name] = values
    return per_slice, per_tile

# Attribute names set by the decorator (public so plugin code can introspect them).
_REQUIRES_ATTR = "__strategy_requires__"
_DESCRIPTION_ATTR = "__strategy_description__"
_UNIT_ATTR = "__strategy_unit__"
_MARK_ATTR = "__activeseg_strategy__"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------- context


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class QueryContext:
    """Everything a strategy may look at, read-only.

    Parameters
    ----------
    n_slices : int
        Number of slices ``Z`` in the stack.
    labelled : bool (Z,)
        True for slices that are already labelled (fully corrected).
    rng : numpy.random.Generator
        The only source of randomness a strategy may use.
    scores : mapping str -> float32 (Z,), optional
        Per-slice scores (see :data:`KNOWN_SCORES`); higher = more informative,
        NaN = not scored (scoring may cover only some slices).
    embeddings : float (Z, D), optional
        Per-slice feature vectors for diversity strategies (pooled encoder features
        of the current network, or pooled RF feature statistics before one exists).
        A row of NaN means "this slice was not embedded".
    round_index : int, optional
        Index of the round being queried (0 = first query).
    tile_grid : (n_rows, n_cols, tile), optional
        The session's tile grid: ``n_rows`` x ``n_cols`` tiles of ``tile`` x ``tile``
        pixels (edge tiles clipped), tile index ``t = row * n_cols + col``. None = the
        context has no tiles (then the other tile fields must be left out).
    tile_scores : mapping str -> float32 (Z, n_tiles), optional
        Per-tile scores (see :data:`KNOWN_TILE_SCORES`), keyed *without* the ``tile:``
        prefix (a key given with it is stripped); a row of NaN = slice not scored.
    tile_labelled : bool (Z, n_tiles), optional
        True for tiles whose every pixel is labelled. Every tile of a labelled slice is
        marked here too (the context ORs ``labelled`` in), so ``~tile_labelled`` is
        exactly what a tile strategy may pick. None with a grid = derived from ``labelled``.
    tile_pixels : int64 (n_tiles,), optional
        Pixels per tile (edge tiles are smaller); None = unknown.

    Notes
    -----
    Arrays are stored as read-only views (converted to float32 / float64 copies when
    given in another dtype) and ``scores`` is a read-only mapping, so a strategy cannot
    modify the caller's data. Fields added in later versions always get defaults, so
    plugins written against this version keep working.
    """

    n_slices: int
    labelled: np.ndarray
    rng: np.random.Generator
    scores: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    embeddings: np.ndarray | None = None
    round_index: int = 0
    tile_scores: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    tile_labelled: np.ndarray | None = None
    tile_grid: tuple[int, int, int] | None = None
    tile_pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        n_slices = self.n_slices
        if isinstance(n_slices, bool) or not isinstance(n_slices, numbers.Integral) or n_slices < 1:
            raise ConfigError(f"QueryContext.n_slices must be a positive integer, got {n_slices!r}")
        n_slices = int(n_slices)
        set_(self, "n_slices", n_slices)

        labelled = np.asarray(self.labelled)
        if labelled.dtype != np.bool_:
            raise ConfigError(
                f"QueryContext.labelled must be a bool array of shape ({n_slices},), got dtype "
                f"{labelled.dtype}; convert a 0/1 array with mask.astype(bool)"
            )
        if labelled.shape != (n_slices,):
            raise ConfigError(
                f"QueryContext.labelled must have shape ({n_slices},) (one flag per slice), "
                f"got shape {labelled.shape}"
            )
        set_(self, "labelled", _readonly(labelled))

        if not isinstance(self.rng, np.random.Generator):
            raise ConfigError(
                f"QueryContext.rng must be a numpy.random.Generator, got {type(self.rng).__name__}; "
                "use np.random.default_rng(seed)"
            )

        if not isinstance(self.scores, Mapping):
            raise ConfigError(
                f"QueryContext.scores must be a mapping name -> float32 ({n_slices},) array, "
                f"got {type(self.scores).__name__}"
            )
        scores: dict[str, np.ndarray] = {}
        for name, values in self.scores.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"QueryContext.scores keys must be non-empty strings, got {name!r}")
            if name.startswith(TILE_PREFIX):
                raise ConfigError(
                    f"QueryContext.scores holds the per-tile score {name!r}; per-tile scores go in "
                    "tile_scores (without the prefix): registry.split_scores(scores) splits them"
                )
            arr = np.asarray(values)
            if arr.dtype.kind not in "biuf":
                raise ConfigError(f"score {name!r} must be a real-valued array, got dtype {arr.dtype}")
            if arr.shape != (n_slices,):
                raise ConfigError(
                    f"score {name!r} must have shape ({n_slices},) (one value per slice, NaN = not "
                    f"scored), got shape {arr.shape}"
                )
            arr = arr.astype(np.float32, copy=False)
            if np.isinf(arr).any():
                raise ConfigError(
                    f"score {name!r} holds infinite values at slices "
                    f"{np.flatnonzero(np.isinf(arr))[:5].tolist()}; use NaN for 'not scored'"
                )
            scores[name] = _readonly(arr)
        set_(self, "scores", types.MappingProxyType(scores))

        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
            if emb.dtype.kind not in "biuf":
                raise ConfigError(f"QueryContext.embeddings must be real-valued, got dtype {emb.dtype}")
            if emb.ndim != 2 or emb.shape[0] != n_slices or emb.shape[1] < 1:
                raise ConfigError(
                    f"QueryContext.embeddings must have shape ({n_slices}, D) with D >= 1 (one "
                    f"feature vector per slice), got shape {emb.shape}"
                )
            if emb.dtype.kind != "f":
                emb = emb.astype(np.float64)
            if np.isinf(emb).any():
                raise ConfigError(
                    "QueryContext.embeddings holds infinite values; use a row of NaN for a slice "
                    "that was not embedded"
                )
            set_(self, "embeddings", _readonly(emb))

        r = self.round_index
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 0:
            raise ConfigError(f"QueryContext.round_index must be an integer >= 0, got {r!r}")
        set_(self, "round_index", int(r))
        self._check_tiles()

    def _check_tiles(self) -> None:
        set_ = object.__setattr__
        z = self.n_slices
        if not isinstance(self.tile_scores, Mapping):
            raise ConfigError(
                f"QueryContext.tile_scores must be a mapping name -> float32 (Z, n_tiles) array, "
                f"got {type(self.tile_scores).__name__}"
            )
        grid = self.tile_grid
        if grid is None:
            given = [f for f in ("tile_scores", "tile_labelled", "tile_pixels")
                     if (len(self.tile_scores) if f == "tile_scores" else getattr(self, f) is not None)]
            if given:
                raise ConfigError(
                    f"QueryContext got {', '.join(given)} but no tile_grid; pass tile_grid=(n_rows, n_cols, tile) "
                    "so the tile fields can be checked"
                )
            set_(self, "tile_scores", types.MappingProxyType({}))
            return
        try:
            parts = tuple(grid)
        except TypeError:
            parts = ()
        if len(parts) != 3 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in parts):
            raise ConfigError(
                f"QueryContext.tile_grid must be (n_rows, n_cols, tile), three integers >= 1, got {grid!r}"
            )
        n_rows, n_cols, tile = (int(v) for v in parts)
        set_(self, "tile_grid", (n_rows, n_cols, tile))
        n_tiles = n_rows * n_cols

        if self.tile_labelled is None:
            tl = np.repeat(self.labelled[:, None], n_tiles, axis=1)
        else:
            tl = np.asarray(self.tile_labelled)
            if tl.dtype != np.bool_:
                raise ConfigError(
                    f"QueryContext.tile_labelled must be a bool array of shape ({z}, {n_tiles}), got dtype "
                    f"{tl.dtype}; convert a 0/1 array with mask.astype(bool)"
                )
            if tl.shape != (z, n_tiles):
                raise ConfigError(
                    f"QueryContext.tile_labelled must have shape ({z}, {n_tiles}) (one flag per slice and "
                    f"tile of the {n_rows} x {n_cols} grid), got shape {tl.shape}"
                )
            tl = tl | self.labelled[:, None]  # a new array: the tiles of labelled slices are labelled
        set_(self, "tile_labelled", _readonly(tl))

        if self.tile_pixels is not None:
            px = np.asarray(self.tile_pixels)
            if px.dtype.kind not in "iu":
                raise ConfigError(f"QueryContext.tile_pixels must be an integer array, got dtype {px.dtype}")
            if px.shape != (n_tiles,):
                raise ConfigError(
                    f"QueryContext.tile_pixels must have shape ({n_tiles},) (pixels of each tile), got shape {px.shape}"
                )
            if px.size and (px.min() < 1 or px.max() > tile * tile):
                raise ConfigError(
                    f"QueryContext.tile_pixels must lie in 1..{tile * tile} (a tile of {tile} x {tile} pixels, "
                    f"smaller at the edges), got {int(px.min())}..{int(px.max())}"
                )
            set_(self, "tile_pixels", _readonly(px.astype(np.int64, copy=False)))

        tscores: dict[str, np.ndarray] = {}
        for key, values in self.tile_scores.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"QueryContext.tile_scores keys must be non-empty strings, got {key!r}")
            name = key[len(TILE_PREFIX):] if key.startswith(TILE_PREFIX) else key
            if not name:
                raise ConfigError(f"QueryContext.tile_scores key {key!r} names no score")
            if name in tscores:
                raise ConfigError(f"QueryContext.tile_scores holds {name!r} twice (with and without the {TILE_PREFIX!r} prefix)")
            arr = np.asarray(values)
            if arr.dtype.kind not in "biuf":
                raise ConfigError(f"tile score {name!r} must be a real-valued array, got dtype {arr.dtype}")
            if arr.shape != (z, n_tiles):
                raise ConfigError(
                    f"tile score {name!r} must have shape ({z}, {n_tiles}) (one value per slice and tile of "
                    f"the {n_rows} x {n_cols} grid, a row of NaN = slice not scored), got shape {arr.shape}"
                )
            arr = arr.astype(np.float32, copy=False)
            if np.isinf(arr).any():
                rows = np.flatnonzero(np.isinf(arr).any(axis=1))
                raise ConfigError(
                    f"tile score {name!r} holds infinite values in slices {rows[:5].tolist()}; use NaN for "
                    "'not scored'"
                )
            tscores[name] = _readonly(arr)
        set_(self, "tile_scores", types.MappingProxyType(tscores))

    # Convenience for strategy authors (all cheap, all return new arrays).
    @property
    def unlabelled_ids(self) -> np.ndarray:
        """Global ids of the unlabelled slices, ascending, intp ``(m,)``."""
        return np.flatnonzero(~self.labelled).astype(np.intp, copy=False)

    @property
    def n_tiles(self) -> int:
        """Tiles per slice (``n_rows * n_cols``); 0 when the context has no tile grid."""
        if self.tile_grid is None:
            return 0
        return self.tile_grid[0] * self.tile_grid[1]

    @property
    def unlabelled_tiles(self) -> np.ndarray:
        """Rows ``(z, t)`` of the tiles a tile strategy may pick, int64 ``(m, 2)``,
        sorted by z then t (empty without a tile grid)."""
        if self.tile_labelled is None:
            return np.empty((0, 2), dtype=np.int64)
        return np.argwhere(~self.tile_labelled).astype(np.int64, copy=False)

    def tile_position(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Grid row and column of tile index(es) ``t`` (``t = row * n_cols + col``)."""
        if self.tile_grid is None:
            raise StrategyError("this query context has no tile grid (tile_grid is None)")
        rows, cols = np.divmod(np.asarray(t, dtype=np.int64), self.tile_grid[1])
        return rows, cols

    def tile_score(self, name: str) -> np.ndarray:
        """The per-tile score ``name`` (without the ``tile:`` prefix; float32 (Z, n_tiles),
        read-only); StrategyError if absent."""
        if name.startswith(TILE_PREFIX):
            name = name[len(TILE_PREFIX):]
        try:
            return self.tile_scores[name]
        except KeyError:
            have = ", ".join(sorted(self.tile_scores)) or "none"
            raise StrategyError(
                f"tile score {name!r} is not in this query context (have: {have}); declare it with "
                f"@strategy(requires=({TILE_PREFIX + name!r},)) so the query step computes it"
            ) from None

    def score(self, name: str) -> np.ndarray:
        """The per-slice score ``name`` (float32 (Z,), read-only); StrategyError if absent."""
        try:
            return self.scores[name]
        except KeyError:
            have = ", ".join(sorted(self.scores)) or "none"
            raise StrategyError(
                f"score {name!r} is not in this query context (have: {have}); declare it with "
                f"@strategy(requires=({name!r},)) so the query step computes it"
            ) from None


# ------------------------------------------------------------------------- decorator


def strategy(
    fn: Callable | None = None,
    /,
    *,
    requires: Iterable[str] | str | Callable[..., Iterable[str]] = (),
    description: str | None = None,
    unit: str = "slices",
):
    """Mark a function as a query strategy and declare what it needs. Does not register.

    Parameters
    ----------
    requires : tuple of str, or callable
        Names of the per-slice scores the strategy reads from ``ctx.scores``, and of
        per-tile scores (prefix ``tile:``, read from ``ctx.tile_scores`` without it), or
        a function called with the strategy's keyword parameters (defaults filled in)
        that returns them, e.g. ``requires=lambda score="entropy", **_: (score,)``.
    description : str, optional
        One line shown by ``activeseg strategies``; defaults to the docstring's
        first line.
    unit : "slices" or "tiles"
        What the strategy returns: global slice ids ``(k,)`` (default), or rows
        ``(z, t)`` of tiles, int64 ``(k, 2)`` (docs/architecture.md §4).

    Examples
    --------
    >>> @strategy(requires=("entropy",), description="top-n by entropy")
    ... def my_entropy(ctx, n, /, *, min_gap: int = 0):
    ...     ...
    >>> @strategy(requires=("tile:entropy",), unit="tiles")
    ... def my_tiles(ctx, n, /):
    ...     ...
    """
    if unit not in UNITS:
        raise StrategyError(f"@strategy(unit=...) must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")

    def mark(f: Callable) -> Callable:
        if not callable(f):
            raise StrategyError(f"@strategy must decorate a function, got {type(f).__name__}")
        req: Any
        if callable(requires):
            req = requires
        elif isinstance(requires, str):
            req = (requires,)
        else:
            try:
                req = tuple(requires)
            except TypeError:
                raise StrategyError(
                    f"@strategy(requires=...) on {getattr(f, '__name__', f)!r} must be a tuple of "
                    f"score names or a function of the parameters, got {requires!r}"
                ) from None
            bad = [r for r in req if not isinstance(r, str) or not r]
            if bad:
                raise StrategyError(f"@strategy(requires=...) holds non-string score names {bad!r}")
        _check_signature(f, getattr(f, "__name__", repr(f)))
        setattr(f, _REQUIRES_ATTR, req)
        setattr(f, _DESCRIPTION_ATTR, description)
        setattr(f, _UNIT_ATTR, unit)
        setattr(f, _MARK_ATTR, True)
        return f

    if fn is not None:
        return mark(fn)
    return mark


# ---------------------------------------------------------------- signature & params


def _check_signature(fn: Callable, name: str) -> inspect.Signature:
    """Raise StrategyError unless ``fn(ctx, n, /, *, key=default, ...)`` is its shape."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {name!r}: cannot read its signature ({exc})") from None
    positional = []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p)
        elif p.kind is p.VAR_POSITIONAL:
            raise StrategyError(f"strategy {name!r} must not take *{p.name}; use keyword-only parameters")
        elif p.kind is p.VAR_KEYWORD:
            raise StrategyError(
                f"strategy {name!r} must not take **{p.name}: parameters must be declared one by one "
                "(keyword-only, with JSON defaults) so they can be validated and recorded"
            )
        elif p.default is p.empty:
            raise StrategyError(
                f"strategy {name!r}: keyword parameter {p.name!r} needs a default value "
                "(the query step calls strategies with defaults unless told otherwise)"
            )
        else:
            try:
                json.dumps(p.default, allow_nan=False)
            except (TypeError, ValueError):
                raise StrategyError(
                    f"strategy {name!r}: default of {p.name!r} is {p.default!r}, which is not "
                    "JSON-serialisable (use int, float, str, bool, None, list or dict)"
                ) from None
    if len(positional) < 2 or any(p.default is not p.empty for p in positional[:2]):
        raise StrategyError(
            f"strategy {name!r} must be callable as fn(ctx, n, /, *, param=default, ...); got "
            f"signature {sig}"
        )
    extra = [p.name for p in positional[2:] if p.default is p.empty]
    if extra:
        raise StrategyError(
            f"strategy {name!r} has extra positional parameters without defaults {extra}; "
            "make them keyword-only with defaults: fn(ctx, n, /, *, param=default)"
        )
    return sig


def strategy_parameters(fn_or_name: Callable | str) -> dict[str, Any]:
    """Keyword parameters of a strategy and their defaults, in declaration order."""
    fn, name = _resolve(fn_or_name)
    sig = _check_signature(fn, name)
    params = list(sig.parameters.values())
    out: dict[str, Any] = {}
    for p in params[2:]:
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            out[p.name] = p.default
    return out


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def validate_params(fn_or_name: Callable | str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check strategy parameters before a round starts; return them with defaults filled in.

    Raises
    ------
    StrategyError
        Unknown strategy name (listing what is available), unknown parameter names
        (listing the valid ones, with a close-match suggestion), values that are not
        JSON-serialisable, or values of the wrong type for the parameter's default.
    """
    fn, name = _resolve(fn_or_name)
    defaults = strategy_parameters(fn)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise StrategyError(f"parameters of strategy {name!r} must be a mapping, got {type(params).__name__}")
    valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
    out = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StrategyError(
                f"strategy {name!r} has no parameter {key!r}{hint}; valid parameters (with defaults): {valid}"
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise StrategyError(
                f"strategy {name!r}: parameter {key}={value!r} ({type(value).__name__}) is not "
                "JSON-serialisable; use plain int, float, str, bool, None, list or dict "
                "(e.g. int(x) instead of a numpy integer)"
            ) from None
        if not _type_ok(value, defaults[key]):
            raise StrategyError(
                f"strategy {name!r}: parameter {key!r} expects {type(defaults[key]).__name__} like its "
                f"default {defaults[key]!r}, got {value!r} ({type(value).__name__})"
            )
        out[key] = value
    return out


def required_scores(fn_or_name: Callable | str, params: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Names of the per-slice scores a strategy needs for the given parameters.

    ``params`` are validated and completed with defaults before a callable
    ``requires`` is evaluated.
    """
    fn, name = _resolve(fn_or_name)
    full = validate_params(fn, params)
    req = getattr(fn, _REQUIRES_ATTR, ())
    if callable(req):
        try:
            req = req(**full)
        except Exception as exc:  # a plugin's requires function is foreign code
            raise StrategyError(
                f"strategy {name!r}: its requires function failed for parameters {full}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if isinstance(req, str):
        req = (req,)
    try:
        req = tuple(req)
    except TypeError:
        raise StrategyError(f"strategy {name!r}: requires gave {req!r}, expected a tuple of score names") from None
    bad = [r for r in req if not isinstance(r, str) or not r]
    if bad:
        raise StrategyError(f"strategy {name!r}: requires holds non-string score names {bad!r}")
    return tuple(dict.fromkeys(req))


def strategy_unit(fn_or_name: Callable | str) -> str:
    """What a strategy queries: ``"slices"`` (the default, also for undecorated functions)
    or ``"tiles"`` (declared with ``@strategy(..., unit="tiles")``)."""
    fn, name = _resolve(fn_or_name)
    unit = getattr(fn, _UNIT_ATTR, "slices")
    if unit not in UNITS:
        raise StrategyError(f"strategy {name!r} declares unit {unit!r}; expected one of {', '.join(map(repr, UNITS))}")
    return str(unit)


def _description(fn: Callable) -> str:
    desc = getattr(fn, _DESCRIPTION_ATTR, None)
    if desc:
        return str(desc).strip().splitlines()[0]
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# -------------------------------------------------------------------------- discovery


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """What ``activeseg strategies`` shows about one strategy.

    Attributes
    ----------
    name : the name used in configs and on the command line.
    source : distribution that provides it ("activeseg" for built-ins), or
        "registered" for :func:`register_strategy`.
    version : version of that distribution ("" when unknown).
    target : "module:function" the entry point names (or the function's qualified name).
    description : one line.
    requires : scores needed with the default parameters.
    requires_depends_on_params : True when ``requires`` is a function of the parameters.
    params : keyword parameters with their defaults.
    error : None, or why the strategy cannot be used (import error, invalid signature).
    shadowed : "source (target)" of other entries with the same name that lost.
    unit : "slices" (returns slice ids) or "tiles" (returns (z, t) rows of tiles).
    """

    name: str
    source: str
    version: str = ""
    target: str = ""
    description: str = ""
    requires: tuple[str, ...] = ()
    requires_depends_on_params: bool = False
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    shadowed: tuple[str, ...] = ()
    unit: str = "slices"

    @property
    def ok(self) -> bool:
        """True when the strategy loaded and can be used."""
        return self.error is None


@dataclasses.dataclass
class _Entry:
    name: str
    source: str
    version: str
    target: str
    entry_point: Any = None  # importlib.metadata.EntryPoint (or anything with .load())
    fn: Callable | None = None
    error: str | None = None
    loaded: bool = False
    registered: bool = False
    shadowed: list[str] = dataclasses.field(default_factory=list)


_lock = threading.RLock()
_entries: dict[str, _Entry] | None = None
_registered: dict[str, _Entry] = {}

_OWN_DIST = "activeseg"


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _dist_name(dist: Any) -> str:
    try:
        return str(dist.metadata["Name"] or "") if dist is not None else ""
    except Exception:  # broken metadata must not break discovery
        return ""


def _iter_entry_points() -> Iterable[tuple[Any, str, str]]:
    """Yield (entry point, distribution name, version) for every entry in the group.

    Walks every distribution on ``sys.path`` (not ``importlib.metadata.entry_points()``,
    which keeps only the first copy of each distribution name: a stale
    ``activeseg.egg-info`` in the working directory would hide the installed entry points).
    """
    for dist in _md.distributions():
        try:
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception as exc:  # unreadable entry_points.txt of some unrelated package
            log.debug("skipping distribution with unreadable entry points: %s", exc)
            continue
        if not eps:
            continue
        dname = _dist_name(dist)
        try:
            version = str(dist.version or "")
        except Exception:
            version = ""
        for ep in eps:
            yield ep, dname, version


def _collect(items: Iterable[tuple[Any, str, str]]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    seen: set[tuple[str, str]] = set()
    # activeseg's own entries win name clashes; otherwise order of sys.path.
    items = sorted(items, key=lambda t: 0 if _norm(t[1]) == _OWN_DIST else 1)
    for ep, dname, version in items:
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        if ep.name in entries:
            entries[ep.name].shadowed.append(f"{dname or 'unknown'} ({ep.value})")
            log.info(
                "strategy %r from %s (%s) is shadowed by %s (%s)",
                ep.name, dname, ep.value, entries[ep.name].source, entries[ep.name].target,
            )
            continue
        entries[ep.name] = _Entry(ep.name, dname or "unknown", version, ep.value, entry_point=ep)
    return entries


def _discovered() -> dict[str, _Entry]:
    global _entries
    with _lock:
        if _entries is None:
            _entries = _collect(_iter_entry_points())
        return _entries


def refresh_strategies() -> None:
    """Forget discovered entry points (e.g. after ``pip install`` of a plugin in this process).

    Strategies added with :func:`register_strategy` are kept.
    """
    global _entries
    with _lock:
        _entries = None


def _load(entry: _Entry) -> _Entry:
    with _lock:
        if entry.loaded:
            return entry
        try:
            obj = entry.entry_point.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must never break the others
            entry.error = f"{type(exc).__name__}: {exc}"
            # reported through StrategyInfo.error; INFO keeps the library quiet
            log.info("strategy %r (%s) failed to load: %s", entry.name, entry.target, entry.error)
        else:
            try:
                if not callable(obj):
                    raise StrategyError(f"entry point names a {type(obj).__name__}, not a function")
                _check_signature(obj, entry.name)
                strategy_unit(obj)
                if callable(getattr(obj, _REQUIRES_ATTR, ())):
                    required_scores(obj)  # a requires function must work with the defaults
            except StrategyError as exc:
                entry.error = str(exc)
            else:
                entry.fn = obj
        entry.loaded = True
        return entry


def _all_entries() -> dict[str, _Entry]:
    with _lock:
        merged = dict(_discovered())
        for name, entry in _registered.items():
            if name in merged:
                entry.shadowed = [f"{merged[name].source} ({merged[name].target})"]
            merged[name] = entry
        return merged


def _unknown(name: str, entries: Mapping[str, _Entry]) -> StrategyError:
    names = sorted(entries)
    close = difflib.get_close_matches(_norm(str(name)), names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(names) if names else "none (is activeseg installed? run `pip install -e .`)"
    return StrategyError(f"unknown strategy {name!r}.{hint} Available: {listing}")


def get_strategy(name: str) -> Callable:
    """Return the strategy function registered under ``name``, importing only its module.

    Raises
    ------
    StrategyError
        Unknown name (listing what is available, with a close-match suggestion), or
        a plugin that failed to load (with its error).
    """
    if not isinstance(name, str):
        raise StrategyError(f"strategy name must be a string, got {type(name).__name__}")
    entries = _all_entries()
    entry = entries.get(name)
    if entry is None:
        matches = [e for k, e in entries.items() if _norm(k) == _norm(name)]
        if len(matches) != 1:
            raise _unknown(name, entries)
        entry = matches[0]
    _load(entry)
    if entry.fn is None:
        raise StrategyError(
            f"strategy {entry.name!r} from {entry.source} ({entry.target}) cannot be used: {entry.error}"
        )
    return entry.fn


def _name_of(fn: Callable) -> str:
    with _lock:
        for entries in (_registered, _entries or {}):
            for name, entry in entries.items():
                if entry.fn is fn:
                    return name
    return getattr(fn, "__name__", repr(fn))


def _resolve(fn_or_name: Callable | str) -> tuple[Callable, str]:
    if isinstance(fn_or_name, str):
        return get_strategy(fn_or_name), fn_or_name
    if not callable(fn_or_name):
        raise StrategyError(f"expected a strategy function or name, got {type(fn_or_name).__name__}")
    return fn_or_name, _name_of(fn_or_name)


def _info(entry: _Entry) -> StrategyInfo:
    _load(entry)
    if entry.fn is None:
        return StrategyInfo(
            entry.name, entry.source, entry.version, entry.target,
            error=entry.error, shadowed=tuple(entry.shadowed),
        )
    fn = entry.fn
    try:
        params = strategy_parameters(fn)
        requires = required_scores(fn)
        unit = strategy_unit(fn)
    except StrategyError as exc:
        return StrategyInfo(
            entry.name, entry.source, entry.version, entry.target,
            error=str(exc), shadowed=tuple(entry.shadowed),
        )
    return StrategyInfo(
        name=entry.name,
        source=entry.source,
        version=entry.version,
        target=entry.target,
        description=_description(fn),
        requires=requires,
        requires_depends_on_params=callable(getattr(fn, _REQUIRES_ATTR, ())),
        params=types.MappingProxyType(params),
        error=None,
        shadowed=tuple(entry.shadowed),
        unit=unit,
    )


def available_strategies() -> dict[str, StrategyInfo]:
    """Every known strategy by name, with its source, parameters, needs, or load error.

    Imports each strategy's module (never torch for the built-ins); a plugin that fails
    is reported with ``error`` set and does not affect the others.
    """
    return {name: _info(entry) for name, entry in sorted(_all_entries().items())}


def describe_strategies() -> list[StrategyInfo]:
    """:func:`available_strategies` as a list for display: built-ins first, then by source and name."""
    infos = available_strategies().values()
    return sorted(infos, key=lambda i: (i.source != _OWN_DIST, i.source == "registered", i.source, i.name))


def register_strategy(fn: Callable, name: str | None = None, *, replace: bool = False) -> Callable:
    """Register ``fn`` under ``name`` for this process (notebooks, quick experiments).

    Installed packages should declare an entry point instead. Registering the same name
    again replaces a previously *registered* function; shadowing an installed strategy
    needs ``replace=True``. Returns ``fn``, so it also works as a decorator.
    """
    if not callable(fn):
        raise StrategyError(f"register_strategy needs a function, got {type(fn).__name__}")
    name = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StrategyError(
            f"strategy name {name!r} is not valid: use letters, digits, '_', '-' or '.', starting "
            "with a letter or '_'"
        )
    _check_signature(fn, name)
    strategy_unit(fn)
    if callable(getattr(fn, _REQUIRES_ATTR, ())):
        required_scores(fn)
    with _lock:
        if not replace and name in _discovered():
            e = _discovered()[name]
            raise StrategyError(
                f"strategy {name!r} is already provided by {e.source} ({e.target}); pick another "
                "name or pass replace=True to shadow it in this process"
            )
        target = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', name)}"
        _registered[name] = _Entry(name, "registered", "", target, fn=fn, loaded=True, registered=True)
    return fn


def unregister_strategy(name: str) -> None:
    """Remove a strategy added with :func:`register_strategy` (entry points stay)."""
    with _lock:
        if name not in _registered:
            raise StrategyError(
                f"strategy {name!r} was not added with register_strategy; registered: "
                f"{', '.join(sorted(_registered)) or 'none'}"
            )
        del _registered[name]


# ---------------------------------------------------------------------------- running


@dataclasses.dataclass(frozen=True)
class PreparedQuery:
    """A strategy checked before a round starts: what the query step needs to run it."""

    fn: Callable
    name: str
    params: dict
    requires: tuple[str, ...]
    unit: str = "slices"

    @property
    def scores(self) -> tuple[str, ...]:
        """The scores to compute (``requires`` without :data:`EMBEDDINGS`): per-slice
        names and per-tile ``tile:`` names, as the scoring step takes them."""
        return tuple(r for r in self.requires if r != EMBEDDINGS)

    @property
    def slice_scores(self) -> tuple[str, ...]:
        """The per-slice scores among :attr:`scores` (no ``tile:`` prefix)."""
        return tuple(r for r in self.scores if not r.startswith(TILE_PREFIX))

    @property
    def tile_scores(self) -> tuple[str, ...]:
        """The per-tile scores among :attr:`scores`, with their ``tile:`` prefix."""
        return tuple(r for r in self.scores if r.startswith(TILE_PREFIX))

    @property
    def needs_tiles(self) -> bool:
        """True when the context must carry the tile grid: a tile strategy, or one
        that reads per-tile scores."""
        return self.unit == "tiles" or bool(self.tile_scores)

    @property
    def wants_embeddings(self) -> bool:
        return EMBEDDINGS in self.requires


def prepare_query(fn_or_name: Callable | str, params: Mapping[str, Any] | None = None) -> PreparedQuery:
    """Check a strategy and its parameters completely before any scoring starts.

    Resolves the name (case and ``-``/``_`` insensitive; the canonical name is
    returned), validates parameter names and types, checks that every required score
    is one the query step can compute, and runs the strategy once with ``n = 0`` on a
    small context of NaN scores so that bad parameter *values* (``fraction=1.5``) fail
    now rather than after minutes of scoring.

    Raises
    ------
    StrategyError
        With the strategy's name, what was wrong and what is valid.
    """
    fn, _ = _resolve(fn_or_name)
    name = _name_of(fn)  # the canonical name, whatever case or dashes were typed
    full = validate_params(fn, params)
    requires = required_scores(fn, full)
    unit = strategy_unit(fn)
    computable = (*KNOWN_SCORES, *KNOWN_TILE_SCORES, EMBEDDINGS)
    for r in requires:
        if r not in computable:
            close = difflib.get_close_matches(r, computable, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StrategyError(
                f"strategy {name!r} with parameters {full} needs score {r!r}, which the query step cannot "
                f"compute{hint} Known scores: {', '.join(KNOWN_SCORES)}; per tile: {', '.join(KNOWN_TILE_SCORES)} "
                "(add one with activeseg.uncertainty.register_scorer)"
            )
    prepared = PreparedQuery(fn, name, full, requires, unit)
    z = 8
    tiles: dict[str, Any] = {}
    if prepared.needs_tiles:
        tiles = {"tile_grid": (2, 3, 16),
                 "tile_scores": {s[len(TILE_PREFIX):]: np.full((z, 6), np.nan, np.float32) for s in prepared.tile_scores}}
    dry = QueryContext(
        n_slices=z,
        labelled=np.zeros(z, bool),
        scores={s: np.full(z, np.nan, np.float32) for s in prepared.slice_scores},
        rng=np.random.default_rng(0),
        **tiles,
    )
    try:
        fn(dry, 0, **full)
    except Exception as exc:  # ActiveSegError or foreign plugin code alike: report before scoring
        raise StrategyError(f"strategy {name!r} rejects parameters {full}: {exc}") from exc
    return prepared


def validate_output(name: str, out: Any, ctx: QueryContext, n: int, *, unit: str = "slices") -> np.ndarray:
    """Check what strategy ``name`` returned for budget ``n``.

    Parameters
    ----------
    unit : "slices" (the result must be slice ids) or "tiles" (rows ``(z, t)``).

    Returns
    -------
    intp ``(k,)`` slice ids, or for ``unit="tiles"`` int64 ``(k, 2)`` rows ``(z, t)``.

    Raises
    ------
    StrategyError
        A modAL-style tuple, not 1-D integer ids, more than ``n`` ids, ids out of range,
        duplicates, or already labelled slices (the message names the strategy and the
        fault); for tiles the same rules per row (shape ``(k, 2)``, slice and tile in
        range, unique rows, no labelled tile, no tile of a labelled slice), naming the row.
    """
    if unit not in UNITS:
        raise StrategyError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
    if unit == "tiles":
        return _validate_tiles(name, out, ctx, n)
    if isinstance(out, tuple) and len(out) == 2 and not np.isscalar(out[0]):
        raise StrategyError(
            f"strategy {name!r} returned a tuple of 2 arrays (modAL style); return only the "
            "slice ids as a 1-D integer array"
        )
    try:
        arr = np.asarray(out)
    except Exception as exc:
        raise StrategyError(f"strategy {name!r} returned {type(out).__name__}, not an array of slice ids") from exc
    if arr.size == 0:
        return np.empty(0, dtype=np.intp)
    if arr.ndim != 1:
        hint = " (a strategy that returns (z, t) rows of tiles must be declared @strategy(..., unit=\"tiles\"))" \
            if arr.ndim == 2 and arr.shape[1] == 2 else ""
        raise StrategyError(f"strategy {name!r} returned an array of shape {arr.shape}; expected 1-D slice ids{hint}")
    if arr.dtype.kind not in "iu":
        raise StrategyError(
            f"strategy {name!r} returned dtype {arr.dtype}; expected integer slice ids "
            "(np.asarray(ids, dtype=np.intp))"
        )
    if arr.size > n:
        raise StrategyError(f"strategy {name!r} returned {arr.size} slice ids for a budget of n={n}")
    bad = arr[(arr < 0) | (arr >= ctx.n_slices)]
    if bad.size:
        raise StrategyError(
            f"strategy {name!r} returned slice ids outside 0..{ctx.n_slices - 1}: {bad[:10].tolist()}"
        )
    arr = arr.astype(np.intp)
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        raise StrategyError(f"strategy {name!r} returned duplicate slice ids: {uniq[counts > 1][:10].tolist()}")
    lab = arr[ctx.labelled[arr]]
    if lab.size:
        raise StrategyError(f"strategy {name!r} returned already labelled slices: {lab[:10].tolist()}")
    return arr


def _validate_tiles(name: str, out: Any, ctx: QueryContext, n: int) -> np.ndarray:
    """:func:`validate_output` for a tile strategy: int64 ``(k, 2)`` rows ``(z, t)``."""
    if ctx.tile_grid is None or ctx.tile_labelled is None:
        raise StrategyError(
            f"strategy {name!r} queries tiles, but the query context has no tile grid; build it with "
            "tile_grid=(n_rows, n_cols, tile) (and tile_scores / tile_labelled)"
        )
    if isinstance(out, tuple):
        raise StrategyError(
            f"strategy {name!r} returned a tuple; a tile strategy returns one int64 array of shape (k, 2), "
            "rows (z, t): np.asarray(rows, dtype=np.int64).reshape(-1, 2)"
        )
    try:
        arr = np.asarray(out)
    except Exception as exc:
        raise StrategyError(f"strategy {name!r} returned {type(out).__name__}, not an array of (z, t) rows") from exc
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise StrategyError(
            f"strategy {name!r} is a tile strategy and returned an array of shape {arr.shape}; expected "
            "shape (k, 2), one row (z, t) per tile (slice z, tile index t = row * n_cols + col)"
        )
    if arr.dtype.kind not in "iu":
        raise StrategyError(
            f"strategy {name!r} returned dtype {arr.dtype}; expected integer (z, t) rows "
            "(np.asarray(rows, dtype=np.int64))"
        )
    k = arr.shape[0]
    if k > n:
        raise StrategyError(f"strategy {name!r} returned {k} tiles for a budget of n={n} (the budget counts tiles)")
    arr = arr.astype(np.int64)
    z, t = arr[:, 0], arr[:, 1]
    n_rows, n_cols, _ = ctx.tile_grid
    bad = np.flatnonzero((z < 0) | (z >= ctx.n_slices))
    if bad.size:
        i = int(bad[0])
        raise StrategyError(
            f"strategy {name!r} returned row {i} = {arr[i].tolist()}: slice {int(z[i])} is outside "
            f"0..{ctx.n_slices - 1} ({bad.size} such row{'s' if bad.size != 1 else ''})"
        )
    bad = np.flatnonzero((t < 0) | (t >= ctx.n_tiles))
    if bad.size:
        i = int(bad[0])
        raise StrategyError(
            f"strategy {name!r} returned row {i} = {arr[i].tolist()}: tile {int(t[i])} is outside "
            f"0..{ctx.n_tiles - 1} (a {n_rows} x {n_cols} grid; {bad.size} such row{'s' if bad.size != 1 else ''})"
        )
    key = z * ctx.n_tiles + t
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = int(key[first[np.flatnonzero(counts > 1)[0]]])
        rows = np.flatnonzero(key == dup)
        raise StrategyError(
            f"strategy {name!r} returned the same tile (z={dup // ctx.n_tiles}, t={dup % ctx.n_tiles}) in rows "
            f"{rows.tolist()}; every (z, t) row must be unique"
        )
    bad = np.flatnonzero(ctx.labelled[z])
    if bad.size:
        i = int(bad[0])
        raise StrategyError(
            f"strategy {name!r} returned row {i} = {arr[i].tolist()}, a tile of slice {int(z[i])}, which is "
            f"already labelled as a whole ({bad.size} such row{'s' if bad.size != 1 else ''}); pick only where "
            "~ctx.tile_labelled"
        )
    bad = np.flatnonzero(ctx.tile_labelled[z, t])
    if bad.size:
        i = int(bad[0])
        raise StrategyError(
            f"strategy {name!r} returned row {i} = {arr[i].tolist()}, a tile that is already labelled "
            f"({bad.size} such row{'s' if bad.size != 1 else ''}); pick only where ~ctx.tile_labelled"
        )
    return arr


def run_strategy(
    fn_or_name: Callable | str,
    ctx: QueryContext,
    n: int,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Run a strategy and check what it returns.

    Parameters
    ----------
    fn_or_name : strategy function or registered name.
    ctx : the query context.
    n : budget (number of slices to query), >= 0.
    params : keyword parameters (validated; defaults filled in).

    Returns
    -------
    intp (k,) with k <= n: unique, in-range, unlabelled global slice ids, in the
    strategy's order (most wanted first where the strategy ranks). For a tile strategy
    (:func:`strategy_unit` ``"tiles"``): int64 (k, 2) rows ``(z, t)``, k <= n, unique,
    unlabelled tiles, in the strategy's order.

    Raises
    ------
    StrategyError
        Unknown strategy or parameters, a required score missing from ``ctx``, the
        strategy raising a non-activeseg exception, or an invalid result (the message
        names the strategy and the fault).
    """
    fn, name = _resolve(fn_or_name)
    if not isinstance(ctx, QueryContext):
        raise StrategyError(f"strategy {name!r} needs a QueryContext, got {type(ctx).__name__}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ConfigError(f"query budget n must be an integer >= 0, got {n!r}")
    n = int(n)
    full = validate_params(fn, params)
    unit = strategy_unit(fn)
    if unit == "tiles" and ctx.tile_grid is None:
        raise StrategyError(
            f"strategy {name!r} queries tiles, but the query context has no tile grid; build it with "
            "tile_grid=(n_rows, n_cols, tile) (and tile_scores / tile_labelled)"
        )
    missing = [
        s for s in required_scores(fn, full) if s != EMBEDDINGS and (
            s[len(TILE_PREFIX):] not in ctx.tile_scores if s.startswith(TILE_PREFIX) else s not in ctx.scores)
    ]
    if missing:
        have = [*sorted(ctx.scores), *(TILE_PREFIX + k for k in sorted(ctx.tile_scores))]
        raise StrategyError(
            f"strategy {name!r} needs scores {missing} that the query context lacks "
            f"(has: {', '.join(have) or 'none'})"
        )
    try:
        out = fn(ctx, n, **full)
    except ActiveSegError:
        raise
    except Exception as exc:  # foreign plugin code: report it as a strategy fault
        raise StrategyError(f"strategy {name!r} failed: {type(exc).__name__}: {exc}") from exc
    ids = validate_output(name, out, ctx, n, unit=unit)
    log.debug("strategy %s picked %d of %d %s: %s", name, len(ids), n, unit, ids.tolist())
    return ids
