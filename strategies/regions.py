"""Region (tile) query strategies: uncertain tiles of many slices instead of whole slices.

A person correcting a pre-filled mask spends time on the area reviewed, and once the
model is decent most of a slice is right: the errors sit in grey pores and thin walls.
These strategies query tiles of the session's grid (``ctx.tile_grid``; unit "tiles",
docs/architecture.md §4) and return int64 ``(k, 2)`` rows ``(z, t)``, most wanted first.

The NaN rule of :mod:`activeseg.strategies.common` holds per tile: a tile of a slice that
was not scored (a NaN row) is "unknown", never picked ahead of a scored tile; when the
scored tiles run out, the rest of the budget is drawn uniformly (with ``ctx.rng``) from
the unscored unlabelled tiles, under the same spacing rule.
"""

from __future__ import annotations

import numbers

import numpy as np

from activeseg.errors import ConfigError, StrategyError
from activeseg.registry import QueryContext, strategy

__all__ = ["tile_entropy", "tile_boundary", "tile_random", "MIXED_POROSITY"]

MIXED_POROSITY: tuple[float, float] = (0.02, 0.98)
"""A tile "holds both phases" when its predicted pore fraction lies strictly between these."""


def _empty() -> np.ndarray:
    return np.empty((0, 2), dtype=np.int64)


def _check_gap(strategy_name: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        unit = "slices" if name == "min_gap_z" else "tiles (Chebyshev distance in grid rows/cols)"
        raise ConfigError(
            f"{strategy_name}: {name} must be an integer >= 0 (minimum distance in {unit} between picked "
            f"tiles; 0 or 1 = no constraint), got {value!r}"
        )
    return int(value)


def _grid(ctx: QueryContext) -> tuple[int, int, int]:
    if ctx.tile_grid is None:
        raise StrategyError("this strategy queries tiles; the query context has no tile grid (tile_grid is None)")
    return ctx.tile_grid


def _check_fraction(strategy_name: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{strategy_name}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _free(ctx: QueryContext) -> np.ndarray:
    """bool (Z, n_tiles): the tiles that may be picked (the context already marks the tiles
    of labelled slices as labelled)."""
    _grid(ctx)
    return ~np.asarray(ctx.tile_labelled, dtype=bool)


def _spaced(
    ctx: QueryContext,
    order: np.ndarray,
    n: int,
    min_gap_z: int,
    min_gap_xy: int,
    picked: list[tuple[int, int]],
    blocked: np.ndarray,
) -> None:
    """Walk ``order`` (flat indices ``z * n_tiles + t``), appending to ``picked`` every tile
    not ``blocked`` until ``n`` are picked; each pick blocks the tiles fewer than
    ``min_gap_z`` slices AND fewer than ``min_gap_xy`` tiles (Chebyshev distance in grid
    rows/cols) from it. ``blocked`` is bool (Z, n_rows, n_cols), updated in place."""
    n_rows, n_cols, _ = _grid(ctx)
    n_tiles = n_rows * n_cols
    gz, gxy = max(min_gap_z, 1), max(min_gap_xy, 1)
    for flat in order:
        if len(picked) >= n:
            return
        z, t = divmod(int(flat), n_tiles)
        r, c = divmod(t, n_cols)
        if blocked[z, r, c]:
            continue
        picked.append((z, t))
        blocked[max(0, z - gz + 1): z + gz, max(0, r - gxy + 1): r + gxy, max(0, c - gxy + 1): c + gxy] = True


def _ranked_with_spacing(
    ctx: QueryContext, value: np.ndarray, n: int, min_gap_z: int, min_gap_xy: int
) -> np.ndarray:
    """The top tiles by ``value`` (float (Z, n_tiles); NaN = not scored) with the spacing
    rule, then unscored tiles drawn at random under the same rule. Ties: lower (z, t) first."""
    free = _free(ctx)
    if n <= 0 or not free.any():
        return _empty()
    n_rows, n_cols, _ = _grid(ctx)
    flat_value = np.asarray(value, dtype=np.float64).reshape(-1)
    flat_free = free.reshape(-1)
    scored = np.flatnonzero(flat_free & np.isfinite(flat_value))
    order = scored[np.lexsort((scored, -flat_value[scored]))]
    picked: list[tuple[int, int]] = []
    blocked = np.zeros((ctx.n_slices, n_rows, n_cols), dtype=bool)
    _spaced(ctx, order, n, min_gap_z, min_gap_xy, picked, blocked)
    if len(picked) < n:
        unscored = np.flatnonzero(flat_free & ~np.isfinite(flat_value))
        if unscored.size:
            _spaced(ctx, ctx.rng.permutation(unscored), n, min_gap_z, min_gap_xy, picked, blocked)
    return np.asarray(picked, dtype=np.int64).reshape(-1, 2)


def _score_requires(*, score: str = "entropy", **_) -> tuple[str, ...]:
    return ("tile:" + score,)


@strategy(
    requires=_score_requires,
    unit="tiles",
    description="tiles with the highest mean uncertainty, spaced in z and in-plane",
)
def tile_entropy(
    ctx: QueryContext, n: int, /, *, min_gap_z: int = 2, min_gap_xy: int = 1, score: str = "entropy"
) -> np.ndarray:
    """The ``n`` unlabelled tiles with the highest mean uncertainty, best first.

    Tiles are ranked by ``ctx.tile_scores[score]`` (the mean of the per-pixel scorer
    ``score`` over the tile; required as ``tile:<score>``) and taken greedily, skipping a
    tile that lies fewer than ``min_gap_z`` slices AND fewer than ``min_gap_xy`` tiles
    (Chebyshev distance in grid rows and columns) from one already picked: with the
    defaults (2, 1) the same tile position in the adjacent slice, a near duplicate, is
    skipped. 0 or 1 for either means no constraint in that direction. Tiles of unscored
    slices come last, drawn at random under the same rule. The result can be shorter
    than ``n`` when the spacing leaves no room.
    """
    min_gap_z = _check_gap("tile_entropy", "min_gap_z", min_gap_z)
    min_gap_xy = _check_gap("tile_entropy", "min_gap_xy", min_gap_xy)
    if n <= 0:
        return _empty()
    return _ranked_with_spacing(ctx, ctx.tile_score(score), n, min_gap_z, min_gap_xy)


@strategy(
    requires=("tile:entropy", "tile:edge"),
    unit="tiles",
    description="uncertain tiles weighted up where the predicted interface is dense (grey pores, thin walls)",
)
def tile_boundary(
    ctx: QueryContext, n: int, /, *, min_gap_z: int = 2, min_gap_xy: int = 1, weight: float = 1.0
) -> np.ndarray:
    """Boundary-aware tile entropy: the errors sit at grey pores and thin walls.

    Each tile is ranked by::

        priority = entropy * (1 + weight * edge / mean_edge)

    where ``entropy`` is the tile's mean predictive entropy (``tile:entropy``), ``edge``
    the fraction of its pixels within 2 px of a predicted phase interface
    (``tile:edge``) and ``mean_edge`` the mean ``edge`` of the scored unlabelled tiles
    (the factor is 1 when it is 0: no interface anywhere). ``weight = 0`` is
    :func:`tile_entropy`; at equal entropy a tile with a denser interface comes first.
    Picks follow the spacing rule of :func:`tile_entropy` (``min_gap_z``,
    ``min_gap_xy``); tiles of unscored slices (NaN in either score) come last.
    """
    min_gap_z = _check_gap("tile_boundary", "min_gap_z", min_gap_z)
    min_gap_xy = _check_gap("tile_boundary", "min_gap_xy", min_gap_xy)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
        raise ConfigError(f"tile_boundary: weight must be a finite number >= 0, got {weight!r}")
    if n <= 0:
        return _empty()
    ent = np.asarray(ctx.tile_score("entropy"), dtype=np.float64)
    edge = np.asarray(ctx.tile_score("edge"), dtype=np.float64)
    ok = _free(ctx) & np.isfinite(ent) & np.isfinite(edge)
    mean_edge = float(edge[ok].mean()) if ok.any() else 0.0
    factor = 1.0 + float(weight) * edge / mean_edge if mean_edge > 0 else np.ones_like(edge)
    priority = np.where(np.isfinite(ent) & np.isfinite(edge), ent * factor, np.nan)
    return _ranked_with_spacing(ctx, priority, n, min_gap_z, min_gap_xy)


@strategy(
    requires=("tile:porosity",),
    unit="tiles",
    description="random tiles, a foreground fraction of them among tiles holding both phases (nnActive baseline)",
)
def tile_random(ctx: QueryContext, n: int, /, *, foreground: float = 0.5) -> np.ndarray:
    """The foreground-aware random baseline of region queries (nnActive).

    ``round(foreground * n)`` picks (half up) are drawn uniformly among the unlabelled
    tiles that hold both phases: predicted pore fraction (``tile:porosity``) strictly
    between 0.02 and 0.98 (:data:`MIXED_POROSITY`). The rest, and any share the mixed
    tiles cannot fill, are drawn uniformly among all remaining unlabelled tiles
    (unscored ones included). Foreground picks come first.
    """
    foreground = _check_fraction("tile_random", "foreground", foreground)
    if n <= 0:
        return _empty()
    free = _free(ctx)
    if not free.any():
        return _empty()
    por = np.asarray(ctx.tile_score("porosity"), dtype=np.float64)
    lo, hi = MIXED_POROSITY
    with np.errstate(invalid="ignore"):
        mixed = free & np.isfinite(por) & (por > lo) & (por < hi)
    flat_mixed = np.flatnonzero(mixed.reshape(-1))
    n_fg = min(int(np.floor(foreground * n + 0.5)), flat_mixed.size)
    first = ctx.rng.choice(flat_mixed, size=n_fg, replace=False) if n_fg else np.empty(0, np.int64)
    rest_pool = np.flatnonzero(free.reshape(-1))
    rest_pool = rest_pool[~np.isin(rest_pool, first)]
    n_rest = min(n - n_fg, rest_pool.size)
    rest = ctx.rng.choice(rest_pool, size=n_rest, replace=False) if n_rest else np.empty(0, np.int64)
    flat = np.concatenate([first, rest]).astype(np.int64)
    return np.stack(np.divmod(flat, ctx.n_tiles), axis=1).astype(np.int64).reshape(-1, 2)
