"""Pictures and tables people can look at (PNG via matplotlib, Markdown, CSV).

matplotlib is imported inside the functions (with the non-interactive Agg backend), so
importing this module is cheap.

Everything here is a pure function of plain data handed over by the study runner:

- ``rows``: a list of mappings, one per (run, round) evaluation, with at least the keys
  ``run`` (str), ``strategy`` (str), ``schedule`` ("one-shot" | "iterative"), ``seed``
  (int), ``round`` (int), ``n_labelled`` (int, fully labelled slices so far), the metric
  columns (``accuracy``, ``iou_solid``, ``bce``, ``porosity_error``, ``grey_pore_error``,
  ``boundary_f1``: float, None or NaN), ``correction_cost`` (int pixels changed in this
  round, or None) and ``labelled`` (list of global z). Rows read back from a CSV written
  by :func:`table_csv` (all values strings) are accepted as well.
- per-slice arrays: ``{trial label: float (Z,) array}`` indexed by global z, and
  ``{trial label: list of labelled global z}``.

Plot functions write one PNG and return its :class:`~pathlib.Path`. Colours are stable
per strategy across all figures (:func:`color_for`, :func:`line_styles`): a trial label
such as ``"20 distributed"`` takes the colour of the strategy it names, and labels that
share a colour in one figure are told apart by line style. Pass ``colors=`` (name ->
matplotlib colour) to any plot to override.

Figures have a fixed pixel size (``figsize * dpi``, constrained layout, legends outside
the data area), so they tile predictably in a report.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.errors import ConfigError
from activeseg.safety import atomic_path, atomic_write_text

__all__ = [
    "preview_png",
    "METRIC_LABELS",
    "STRATEGY_COLORS",
    "color_for",
    "line_styles",
    "paper_indices",
    "plot_learning_curves",
    "plot_slice_metric",
    "plot_porosity_profile",
    "plot_correction_cost",
    "plot_prediction_panel",
    "paper_table",
    "paper_table_markdown",
    "markdown_table",
    "table_csv",
    "label_efficiency",
    "label_efficiency_markdown",
    "write_report_md",
]


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)``, written atomically (:func:`activeseg.safety.atomic_path`).

    matplotlib picks the format from the file suffix, and the temporary file is named
    ``.NAME.*.tmp``, so the format is passed explicitly: the suffix of ``path``, or, for a
    name without one, matplotlib's default (``savefig.format``), whose suffix is then
    appended to the name exactly as ``fig.savefig`` would. Returns the path written.
    """
    import matplotlib

    path = Path(path)
    fmt = kwargs.pop("format", None)
    if fmt is None:
        fmt = path.suffix[1:]
        if not fmt:
            fmt = matplotlib.rcParams["savefig.format"]
            path = path.with_name(path.name.rstrip(".") + "." + fmt)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt.lower(), **kwargs)
    return path


def _display_range(a: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(a, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def preview_png(
    path: str | Path,
    image,
    *,
    truth=None,
    z: int | None = None,
    x: int | None = None,
    max_reslice_depth: int = 256,
    title: str | None = None,
) -> Path:
    """Write a quick-look PNG: slice ``z``, its truth/labels, and a y-z reslice at column ``x``.

    The y-z reslice (z down, y across) is where pore-back shows: cut faces run straight
    down through consecutive slices, while ghosts of back walls drift sideways by about
    ``dz * cot(alpha)`` per slice.

    Parameters
    ----------
    path : output PNG file.
    image : (Z, Y, X) array-like (a lazy :class:`activeseg.io.Stack` is fine: only the
        slices shown are read; the reslice reads at most ``max_reslice_depth`` slices
        around ``z``).
    truth : optional (Z, Y, X) labels (0 solid, 1 pore, 255 unlabelled).
    z, x : slice and column to show (default: the middle).
    """
    plt = _mpl()
    nz, ny, nx = (int(s) for s in image.shape)
    z = nz // 2 if z is None else int(z)
    x = nx // 2 if x is None else int(x)
    z0 = max(0, min(z - max_reslice_depth // 2, nz - max_reslice_depth))
    z1 = min(nz, z0 + max_reslice_depth)
    sl = np.asarray(image[z])
    reslice = np.asarray(image[z0:z1])[:, :, x]
    lo, hi = _display_range(sl)
    panels = [("image z=%d" % z, sl, "gray", (lo, hi))]
    if truth is not None:
        t = np.asarray(truth[z]).astype(np.float32)
        t[t == 255] = np.nan
        panels.append(("truth z=%d (white = pore)" % z, t, "gray", (0, 1)))
    panels.append((f"y-z reslice at x={x} (z {z0}..{z1 - 1} down)", reslice, "gray", (lo, hi)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (name, data, cmap, (vmin, vmax)) in zip(axes[0], panels):
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].axvline(x, color="tab:orange", lw=0.8, alpha=0.7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = _savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# names, colours, styles
# ---------------------------------------------------------------------------------------

METRIC_LABELS: dict[str, str] = {
    "iou_solid": "solid-phase IoU (0-1)",
    "iou_pore": "pore-phase IoU (0-1)",
    "dice_solid": "solid-phase Dice (0-1)",
    "dice_pore": "pore-phase Dice (0-1)",
    "accuracy": "pixel accuracy (fraction correct)",
    "bce": "loss (binary cross-entropy, nats/pixel)",
    "porosity_error": "porosity error (predicted - true, pore fraction)",
    "porosity_pred": "predicted porosity (pore fraction)",
    "porosity_true": "true porosity (pore fraction)",
    "grey_pore_error": "grey-pore error (fraction of grey-pore pixels wrong)",
    "boundary_f1": "boundary F1 (0-1)",
    "correction_cost": "correction cost (pixels changed)",
}
"""Axis labels (with units) for the metric names of :func:`activeseg.metrics.evaluate`."""

_LOWER_IS_BETTER = frozenset({"bce", "grey_pore_error", "correction_cost"})
_ZERO_IS_BEST = frozenset({"porosity_error"})

STRATEGY_COLORS: dict[str, str] = {
    "initial": "#1f77b4",  # tab:blue
    "distributed": "#ff7f0e",  # tab:orange
    "entropy": "#2ca02c",  # tab:green
    "spaced_entropy": "#d62728",  # tab:red
    "hybrid": "#9467bd",  # tab:purple
    "ranked_batch": "#8c564b",  # tab:brown
    "margin": "#e377c2",  # tab:pink
    "random": "#7f7f7f",  # tab:gray
    "bald": "#bcbd22",  # tab:olive
    "coreset": "#17becf",  # tab:cyan
    "disagreement": "#393b79",  # tab20b dark blue
    "porosity_random": "#7b4173",  # tab20b dark magenta
}
"""Fixed colours (tab10 first) of the built-in strategies; black is kept for truth/ceilings."""

_FALLBACK_COLORS = ("#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#e7ba52", "#3182bd")
_LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
_ERR_PORE_AS_SOLID = "#E69F00"  # Okabe-Ito orange: pore called solid (typical pore-back error)
_ERR_SOLID_AS_PORE = "#0072B2"  # Okabe-Ito blue: solid called pore


def _base_strategy(name: str) -> str | None:
    """The built-in strategy a label names (``"20 distributed"`` -> ``"distributed"``)."""
    if name in STRATEGY_COLORS:
        return name
    known = [t for t in re.findall(r"[a-z_]+", name.lower()) if t in STRATEGY_COLORS]
    return max(known, key=len) if known else None


def color_for(name: str) -> str:
    """Stable colour of a strategy or trial label, the same in every figure.

    A built-in strategy name, or a label containing one as a word (``"20 distributed"``,
    ``"entropy (iterative)"``), gets that strategy's colour from :data:`STRATEGY_COLORS`;
    any other name gets a colour from a fallback palette chosen by a hash of the name
    (stable across runs and machines).

    Returns
    -------
    str, a ``#rrggbb`` colour.
    """
    base = _base_strategy(str(name))
    if base is not None:
        return STRATEGY_COLORS[base]
    return _FALLBACK_COLORS[zlib.crc32(str(name).encode()) % len(_FALLBACK_COLORS)]


def line_styles(names: Sequence[str], colors: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Colour and line style per name for one figure.

    Colours come from ``colors`` (when it holds the name) or :func:`color_for`; names
    that end up with the same colour (``"5 initial"`` and ``"20 initial"``) get different
    line styles, in the order given.

    Returns
    -------
    dict name -> ``{"color": ..., "linestyle": ...}`` (keyword arguments for ``plot``).
    """
    out: dict[str, dict] = {}
    used: dict[str, int] = {}
    for name in names:
        if name in out:
            continue
        c = colors[name] if colors is not None and name in colors else color_for(name)
        k = used.get(str(c), 0)
        used[str(c)] = k + 1
        out[name] = {"color": c, "linestyle": _LINESTYLES[k % len(_LINESTYLES)]}
    return out


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def _better_hint(metric: str) -> str:
    if metric in _LOWER_IS_BETTER:
        return "lower is better"
    if metric in _ZERO_IS_BEST:
        return "0 is best"
    return "higher is better"


def paper_indices(n_slices: int, positions: Sequence[int] = (47, 434, 598), of: int = 600) -> list[int]:
    """Global z of the paper's Index-47/434/598 at the same relative positions in a stack.

    ``z = round(p * n_slices / of)``, clipped to ``0..n_slices-1`` (600 slices give
    exactly 47, 434, 598; 160 slices give 13, 116, 159).
    """
    n_slices = int(n_slices)
    if n_slices < 1:
        raise ConfigError(f"n_slices must be >= 1, got {n_slices}")
    return [int(min(n_slices - 1, max(0, math.floor(p * n_slices / of + 0.5)))) for p in positions]


# ---------------------------------------------------------------------------------------
# input coercion and aggregation
# ---------------------------------------------------------------------------------------


def _num(v: Any, what: str = "value") -> float:
    """A float from a number, None, NaN or a CSV string ('' / 'None' / 'nan' -> NaN)."""
    if v is None:
        return math.nan
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in ("", "none", "nan", "null", "n/a"):
            return math.nan
        v = s
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, None or NaN; got {v!r}") from None


def _int(v: Any, what: str) -> int:
    x = _num(v, what)
    if not math.isfinite(x) or x != int(x):
        raise ConfigError(f"{what} must be an integer, got {v!r}")
    return int(x)


def _check_rows(rows: Any, needed: Sequence[str]) -> list[Mapping]:
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise ConfigError(
            f"rows must be a list of dicts (one per run and round), got {type(rows).__name__}; "
            "pass e.g. the study's results list or csv.DictReader rows as a list"
        )
    if not rows:
        raise ConfigError("rows is empty: nothing to plot or summarise (did the study record any evaluation?)")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ConfigError(f"rows[{i}] must be a dict, got {type(r).__name__}")
        missing = [k for k in needed if k not in r]
        if missing:
            raise ConfigError(
                f"rows[{i}] lacks the key(s) {missing}; it has {sorted(r)}; "
                f"every row needs {list(needed)}"
            )
    return list(rows)


def _group_names(rows: Sequence[Mapping]) -> list[str]:
    """Group label per row: the strategy, plus the schedule when rows mix schedules."""
    multi = len({str(r.get("schedule", "")) for r in rows}) > 1
    return [f"{r['strategy']} ({r.get('schedule', '')})" if multi else str(r["strategy"]) for r in rows]


def _curves(rows: Sequence[Mapping], metric: str, x: str = "n_labelled") -> dict[str, dict]:
    """Per group: sorted x, seeds and a (n_seeds, n_x) float64 matrix of values.

    Several rows of one seed at the same x (e.g. two runs) are averaged; NaN/None values
    are ignored; a missing (seed, x) is NaN.
    """
    rows = _check_rows(rows, ("strategy", "seed", x, metric))
    acc: dict[str, dict[int, dict[int, list[float]]]] = {}
    for g, r in zip(_group_names(rows), rows):
        xv = _int(r[x], x)
        seed = _int(r["seed"], "seed")
        acc.setdefault(g, {}).setdefault(xv, {}).setdefault(seed, []).append(_num(r[metric], metric))
    out: dict[str, dict] = {}
    for g, by_x in acc.items():
        xs = sorted(by_x)
        seeds = sorted({s for d in by_x.values() for s in d})
        vals = np.full((len(seeds), len(xs)), np.nan)
        for j, xv in enumerate(xs):
            for s, vs in by_x[xv].items():
                finite = [v for v in vs if math.isfinite(v)]
                if finite:
                    vals[seeds.index(s), j] = float(np.mean(finite))
        out[g] = {"x": np.asarray(xs, dtype=np.int64), "seeds": seeds, "values": vals}
    return out


def _stats(vals: np.ndarray) -> dict[str, np.ndarray]:
    """Column statistics over seeds ignoring NaN, without warnings for empty columns."""
    finite = np.isfinite(vals)
    n = finite.sum(axis=0)
    safe_n = np.maximum(n, 1)
    mean = np.where(n > 0, np.where(finite, vals, 0.0).sum(axis=0) / safe_n, np.nan)
    dev = np.where(finite, vals - mean, 0.0)
    std = np.where(n > 1, np.sqrt((dev**2).sum(axis=0) / np.maximum(n - 1, 1)), np.nan)
    lo = np.where(n > 0, np.where(finite, vals, np.inf).min(axis=0), np.nan)
    hi = np.where(n > 0, np.where(finite, vals, -np.inf).max(axis=0), np.nan)
    return {"n": n, "mean": mean, "std": std, "min": lo, "max": hi}


def _band_kind(n_seeds: int) -> str | None:
    return "std" if n_seeds >= 3 else ("minmax" if n_seeds == 2 else None)


def _json_float(x: Any) -> float | None:
    x = _num(x)
    return float(x) if math.isfinite(x) else None


def _per_slice_arrays(per_slice: Any, what: str) -> dict[str, np.ndarray]:
    if not isinstance(per_slice, Mapping) or not per_slice:
        raise ConfigError(
            f"{what} must be a non-empty dict trial label -> float (Z,) array, got {type(per_slice).__name__}"
            + (" (empty)" if isinstance(per_slice, Mapping) else "")
        )
    out: dict[str, np.ndarray] = {}
    nz = None
    for k, v in per_slice.items():
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}[{k!r}] must be numbers (None/NaN allowed), got {type(v).__name__}") from None
        if a.ndim != 1:
            raise ConfigError(f"{what}[{k!r}] must be a 1D (Z,) array over global z, got shape {a.shape}")
        if nz is None:
            nz = a.size
        elif a.size != nz:
            raise ConfigError(
                f"{what}[{k!r}] has {a.size} slices but the first trial has {nz}; all arrays must cover the same stack"
            )
        out[str(k)] = a
    return out


def _labelled_map(labelled: Any, nz: int) -> dict[str, np.ndarray]:
    if labelled is None:
        return {}
    if isinstance(labelled, Mapping):
        items = list(labelled.items())
    elif isinstance(labelled, (Sequence, np.ndarray)) and not isinstance(labelled, str):
        items = [("labelled", labelled)]
    else:
        raise ConfigError(f"labelled must be a dict trial -> list of z (or one list of z), got {type(labelled).__name__}")
    out = {}
    for k, zs in items:
        z = np.unique(np.asarray([_int(v, f"labelled[{k!r}] slice id") for v in zs], dtype=np.int64))
        if z.size and (z[0] < 0 or z[-1] >= nz):
            raise ConfigError(f"labelled[{k!r}] holds slice ids {z[0]}..{z[-1]} outside the stack 0..{nz - 1}")
        out[str(k)] = z
    return out


def _marks_list(marks: Any) -> list[tuple[str, int]]:
    if marks is None:
        return []
    if isinstance(marks, Mapping):
        return [(str(k), _int(v, f"marks[{k!r}]")) for k, v in marks.items()]
    if isinstance(marks, (Sequence, np.ndarray)) and not isinstance(marks, str):
        zs = [_int(v, "marks entry") for v in marks]
        return [(f"Index-{z}", z) for z in zs]
    raise ConfigError(f"marks must be a dict name -> z or a list of z, got {type(marks).__name__}")


# ---------------------------------------------------------------------------------------
# figure helpers
# ---------------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float], dpi: float):
    plt = _mpl()
    fig = plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    return plt, fig


def _save(fig, path: str | Path, dpi: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _savefig(fig, path, dpi=dpi)


def _legend_outside(fig, axes, loc: str = "outside right upper") -> None:
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc=loc, fontsize=8, frameon=False)


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.4")


def _draw_curves(ax, curves: dict[str, dict], styles: dict[str, dict], *, seeds_in_label: bool = True) -> int:
    """Mean line + band per group; returns how many groups had finite data."""
    drawn = 0
    for g, c in curves.items():
        st = _stats(c["values"])
        x, mean = c["x"], st["mean"]
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        drawn += 1
        n_seeds = len(c["seeds"])
        kind = _band_kind(n_seeds)
        label = g
        if seeds_in_label:
            band = {"std": ", band ±1 s.d.", "minmax": ", band min-max", None: ""}[kind]
            label = f"{g} [{n_seeds} seed{'s' if n_seeds != 1 else ''}{band}]"
        ax.plot(x[ok], mean[ok], marker="o", ms=3.5, lw=1.6, label=label, **styles[g])
        if kind is not None:
            lo, hi = (mean - st["std"], mean + st["std"]) if kind == "std" else (st["min"], st["max"])
            band_ok = ok & np.isfinite(lo) & np.isfinite(hi)
            if band_ok.any():
                ax.fill_between(x[band_ok], lo[band_ok], hi[band_ok], color=styles[g]["color"], alpha=0.18, lw=0)
    return drawn


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_marks(axes, marks: list[tuple[str, int]], top_ax) -> None:
    for name, z in marks:
        for ax in axes:
            ax.axvline(z, color="0.35", ls=":", lw=0.9, zorder=0)
        top_ax.annotate(
            name,
            xy=(z, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.25",
            annotation_clip=False,
        )


def _draw_rug(ax, labelled: dict[str, np.ndarray], styles: dict[str, dict], nz: int) -> None:
    names = list(labelled)
    for i, name in enumerate(names):
        zs = labelled[name]
        color = styles[name]["color"] if name in styles else "black"
        if zs.size:
            ax.vlines(zs, i - 0.38, i + 0.38, color=color, lw=1.4)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(-0.5, nz - 0.5)
    ax.tick_params(axis="y", length=0)
    ax.set_title("labelled slices (training set)", fontsize=8, loc="left")


def _z_axes(fig, n_main: int, n_rug: int):
    ratios = [4.0] * n_main + ([max(0.7, 0.28 * n_rug)] if n_rug else [])
    gs = fig.add_gridspec(len(ratios), 1, height_ratios=ratios)
    axes = [fig.add_subplot(gs[0])]
    for i in range(1, len(ratios)):
        axes.append(fig.add_subplot(gs[i], sharex=axes[0]))
    main, rug = axes[:n_main], (axes[n_main] if n_rug else None)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("slice index z (global; 0 = top of the stack, milled first)")
    return main, rug


# ---------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------


def plot_learning_curves(
    rows: Sequence[Mapping],
    path: str | Path,
    *,
    metric: str = "iou_solid",
    ceiling: float | None = None,
    fractions: Sequence[float] = (),
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 4.5),
    dpi: float = 110,
) -> Path:
    """Metric vs labelled slices, one line per strategy (mean over seeds) with a band.

    The band is ±1 sample standard deviation over seeds for strategies with >= 3 seeds
    and the min..max range with 2 seeds (none with 1); each legend entry says which.
    When ``rows`` mix schedules, each (strategy, schedule) gets its own line, same colour,
    different style.

    Parameters
    ----------
    rows : list of dicts with ``strategy``, ``seed``, ``n_labelled`` and ``metric`` (see the
        module docstring); None/NaN values are skipped.
    path : output PNG.
    metric : row key to plot (``"iou_solid"``, ``"accuracy"``, ``"bce"``, ...).
    ceiling : optional value of a model trained on all slices, drawn as a dashed line.
    fractions : with ``ceiling``, also draw dotted lines at ``f * ceiling`` (e.g. 0.95).
    colors : optional name -> colour overrides (see :func:`line_styles`).
    figsize, dpi : figure size in inches and resolution; the PNG is ``figsize * dpi`` pixels.

    Returns
    -------
    Path of the written PNG.
    """
    curves = _curves(rows, metric)
    styles = line_styles(list(curves), colors)
    plt, fig = _figure(figsize, dpi)
    try:
        ax = fig.add_subplot()
        drawn = _draw_curves(ax, curves, styles)
        if not drawn:
            _no_data(ax, f"no finite values of '{metric}' to plot")
        c = None if ceiling is None else _num(ceiling, "ceiling")
        if c is not None and math.isfinite(c):
            ax.axhline(c, color="black", ls="--", lw=1.1, label=f"all slices (ceiling) = {c:.3f}")
            for i, f in enumerate(fractions):
                ax.axhline(f * c, color="0.45", ls=(":", "-.", (0, (1, 1)))[i % 3], lw=0.9,
                           label=f"{f:.0%} of ceiling = {f * c:.3f}")
        ax.set_xlabel("labelled slices (fully corrected)")
        ax.set_ylabel(_metric_label(metric))
        _integer_x(ax)
        ax.grid(alpha=0.3)
        ax.set_title(
            title
            or f"{_metric_label(metric).split(' (')[0]} vs labelled slices (mean over seeds; {_better_hint(metric)})",
            fontsize=10,
        )
        _legend_outside(fig, [ax])
        return _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_slice_metric(
    per_slice: Mapping[str, Any],
    path: str | Path,
    *,
    labelled: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
    metric: str = "accuracy",
    marks: Mapping[str, int] | Sequence[int] | None = None,
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 4.8),
    dpi: float = 110,
) -> Path:
    """A per-slice metric along z, one line per trial, training slices marked below.

    Parameters
    ----------
    per_slice : dict trial label -> float (Z,) array indexed by global z (NaN = not
        evaluated; None entries allowed).
    path : output PNG.
    labelled : dict trial label -> list of labelled global z, drawn as a rug of ticks in
        the trial's colour, one row per trial under the plot (or one list for all).
    metric : the metric's name, for the axis label (see :data:`METRIC_LABELS`).
    marks : named slices to mark with vertical dotted lines, e.g. the paper's indices
        ``{"Index-47": 47, "Index-434": 434, "Index-598": 598}`` (a list of z is named
        ``Index-z``).
    colors, title, figsize, dpi : as in :func:`plot_learning_curves`.

    Returns
    -------
    Path of the written PNG.
    """
    arrays = _per_slice_arrays(per_slice, "per_slice")
    nz = next(iter(arrays.values())).size
    lab = _labelled_map(labelled, nz)
    marks_l = _marks_list(marks)
    styles = line_styles(list(arrays) + [k for k in lab if k not in arrays], colors)
    plt, fig = _figure(figsize, dpi)
    try:
        (ax,), rug = _z_axes(fig, 1, len(lab))
        z = np.arange(nz)
        any_data = False
        for name, a in arrays.items():
            ok = np.isfinite(a)
            summary = f"mean {a[ok].mean():.3f}" if ok.any() else "no data"
            any_data |= bool(ok.any())
            ax.plot(z, a, lw=1.3, label=f"{name} ({summary})", **styles[name])
        if not any_data:
            _no_data(ax, f"no finite values of '{metric}'")
        ax.set_ylabel(_metric_label(metric))
        ax.set_xlim(-0.5, nz - 0.5)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"{_metric_label(metric).split(' (')[0]} per slice along the stack ({_better_hint(metric)})",
                     fontsize=10, pad=12 if marks_l else 6)
        if rug is not None:
            _draw_rug(rug, lab, styles, nz)
        _draw_marks([ax] + ([rug] if rug is not None else []), marks_l, ax)
        _legend_outside(fig, [ax])
        return _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_porosity_profile(
    true_porosity: Any,
    per_slice_porosity: Mapping[str, Any],
    path: str | Path,
    *,
    labelled: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
    marks: Mapping[str, int] | Sequence[int] | None = None,
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 6.0),
    dpi: float = 110,
) -> Path:
    """Porosity of each slice, predicted by each trial vs the truth, and the difference.

    Parameters
    ----------
    true_porosity : float (Z,) pore fraction per slice of the ground truth.
    per_slice_porosity : dict trial label -> float (Z,) predicted pore fraction per slice.
    path : output PNG.
    labelled, marks, colors, title, figsize, dpi : as in :func:`plot_slice_metric`.

    Returns
    -------
    Path of the written PNG (top: porosity; middle: predicted - true; bottom: rug of
    labelled slices when given). Legend entries give each trial's mean absolute error.
    """
    truth = _per_slice_arrays({"truth": true_porosity}, "true_porosity")["truth"]
    arrays = _per_slice_arrays(per_slice_porosity, "per_slice_porosity")
    nz = truth.size
    if next(iter(arrays.values())).size != nz:
        raise ConfigError(
            f"per_slice_porosity arrays have {next(iter(arrays.values())).size} slices, true_porosity has {nz}"
        )
    lab = _labelled_map(labelled, nz)
    marks_l = _marks_list(marks)
    styles = line_styles(list(arrays) + [k for k in lab if k not in arrays], colors)
    plt, fig = _figure(figsize, dpi)
    try:
        (ax, ax_err), rug = _z_axes(fig, 2, len(lab))
        z = np.arange(nz)
        ok_t = np.isfinite(truth)
        ax.plot(z, truth, color="black", lw=2.0,
                label=f"ground truth (mean {truth[ok_t].mean():.3f})" if ok_t.any() else "ground truth (no data)")
        for name, a in arrays.items():
            err = a - truth
            ok = np.isfinite(err)
            summary = f"mean |error| {np.abs(err[ok]).mean():.3f}" if ok.any() else "no data"
            ax.plot(z, a, lw=1.3, label=f"{name} ({summary})", **styles[name])
            ax_err.plot(z, err, lw=1.2, **styles[name])
        ax_err.axhline(0.0, color="black", lw=0.8)
        ax.set_ylabel("porosity (pore fraction)")
        ax_err.set_ylabel("predicted - true")
        ax.set_xlim(-0.5, nz - 0.5)
        for a_ in (ax, ax_err):
            a_.grid(alpha=0.3)
        ax.set_title(title or "porosity per slice: prediction vs ground truth", fontsize=10, pad=12 if marks_l else 6)
        if rug is not None:
            _draw_rug(rug, lab, styles, nz)
        _draw_marks([ax, ax_err] + ([rug] if rug is not None else []), marks_l, ax)
        _legend_outside(fig, [ax])
        return _save(fig, path, dpi)
    finally:
        plt.close(fig)


def plot_correction_cost(
    rows: Sequence[Mapping],
    path: str | Path,
    *,
    x: str = "n_labelled",
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (10.0, 4.2),
    dpi: float = 110,
) -> Path:
    """Correction cost (pixels a human had to change) per round and cumulative, per strategy.

    Left: pixels changed in the round; right: cumulative pixels changed over the run's
    rounds so far. Lines are means over seeds at each ``x`` with the same bands as
    :func:`plot_learning_curves`. A round without a recorded cost (None) adds nothing to
    the cumulative; a run without any recorded cost is left out.

    Parameters
    ----------
    rows : list of dicts with ``strategy``, ``seed``, ``round``, ``n_labelled``,
        ``correction_cost`` (int pixels or None) and ideally ``run`` (rows are grouped into
        runs by ``run``, else by strategy, schedule and seed).
    x : ``"n_labelled"`` (labelled slices after the round; works for one-shot and
        iterative runs alike) or ``"round"``.
    colors, title, figsize, dpi : as in :func:`plot_learning_curves`.

    Returns
    -------
    Path of the written PNG.
    """
    if x not in ("n_labelled", "round"):
        raise ConfigError(f"x must be 'n_labelled' or 'round', got {x!r}")
    rows = _check_rows(rows, ("strategy", "seed", "round", "n_labelled", "correction_cost"))
    runs: dict[Any, list[Mapping]] = {}
    for r in rows:
        key = r["run"] if "run" in r else (r["strategy"], r.get("schedule", ""), _int(r["seed"], "seed"))
        runs.setdefault(key, []).append(r)
    derived = []
    for run_rows in runs.values():
        run_rows = sorted(run_rows, key=lambda r: _int(r["round"], "round"))
        costs = np.array([_num(r["correction_cost"], "correction_cost") for r in run_rows])
        seen = np.cumsum(np.isfinite(costs)) > 0
        cum = np.where(seen, np.cumsum(np.where(np.isfinite(costs), costs, 0.0)), np.nan)
        for r, cst, cu in zip(run_rows, costs, cum):
            d = dict(r)
            d["_cost"], d["_cumulative"] = cst, cu
            derived.append(d)
    per_round = _curves(derived, "_cost", x)
    cumulative = _curves(derived, "_cumulative", x)
    styles = line_styles(list(per_round), colors)
    from matplotlib.ticker import EngFormatter

    plt, fig = _figure(figsize, dpi)
    try:
        ax1, ax2 = fig.subplots(1, 2)
        n1 = _draw_curves(ax1, per_round, styles)
        _draw_curves(ax2, cumulative, styles, seeds_in_label=True)
        if not n1:
            for a_ in (ax1, ax2):
                _no_data(a_, "no correction cost recorded")
        xl = "labelled slices after the round" if x == "n_labelled" else "round"
        for a_, yl, t in (
            (ax1, "pixels changed in the round", "per round"),
            (ax2, "pixels changed, cumulative", "cumulative"),
        ):
            a_.set_xlabel(xl)
            a_.set_ylabel(yl)
            a_.set_title(t, fontsize=9)
            a_.yaxis.set_major_formatter(EngFormatter(sep=""))
            a_.set_ylim(bottom=0)
            _integer_x(a_)
            a_.grid(alpha=0.3)
        fig.suptitle(title or "correction cost: pixels a human had to change (mean over seeds; lower is cheaper)",
                     fontsize=10)
        _legend_outside(fig, [ax1], loc="outside right center")
        return _save(fig, path, dpi)
    finally:
        plt.close(fig)


def _as_labels(a: np.ndarray, name: str) -> np.ndarray:
    """uint8 labels from integer/bool labels or a pore probability in [0, 1] (>= 0.5 = pore)."""
    if a.dtype.kind in "biu":
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ConfigError(
                f"{name}: float values must be a pore probability in [0, 1] (thresholded at 0.5), "
                f"got range {finite.min():g}..{finite.max():g}; pass integer labels (0 solid, 1 pore) instead"
            )
        return (np.nan_to_num(a, nan=0.0) >= 0.5).astype(np.uint8)
    raise ConfigError(f"{name} must be integer labels (0 solid, 1 pore) or a pore probability, got dtype {a.dtype}")


def plot_prediction_panel(
    image_slice: Any,
    truth_slice: Any,
    predictions: Mapping[str, Any],
    path: str | Path,
    *,
    z: int,
    title: str | None = None,
    errors: bool = True,
    colors: Mapping[str, Any] | None = None,
    panel_size: float = 2.4,
    dpi: float = 110,
) -> Path:
    """Figure-2-style panel: (a) image, (b) truth, then each trial's prediction at slice ``z``.

    Each prediction panel is titled with its accuracy and solid-phase IoU against the
    truth (:func:`activeseg.metrics.accuracy` / :func:`activeseg.metrics.iou`, over the
    labelled pixels of the truth; 255 = unlabelled is left out) and framed in the trial's
    colour. With ``errors``, a second row shows the wrong pixels over the dimmed image:
    orange = pore predicted as solid (the pore-back error), blue = solid predicted as pore.

    Parameters
    ----------
    image_slice : (Y, X) grey image of the slice (any real dtype).
    truth_slice : uint8 (Y, X) labels, 0 solid, 1 pore, 255 unlabelled.
    predictions : dict trial label -> (Y, X) labels (0/1), or float pore probability in
        [0, 1] (thresholded at 0.5). Order is kept: (c), (d), ...
    path : output PNG.
    z : global index of the slice (for the titles).
    errors : add the row of error maps.
    panel_size : width of one panel in inches; the PNG is ``(2 + n) * panel_size * dpi``
        pixels wide.

    Returns
    -------
    Path of the written PNG.
    """
    from activeseg import metrics

    img = np.asarray(image_slice)
    if img.ndim != 2:
        hint = "; looks like RGB: convert to grayscale" if img.ndim == 3 and img.shape[-1] in (3, 4) else ""
        raise ConfigError(f"image_slice must be one (Y, X) slice, got shape {img.shape}{hint}")
    truth = np.asarray(truth_slice)
    if truth.shape != img.shape:
        raise ConfigError(f"truth_slice shape {truth.shape} does not match image_slice shape {img.shape}")
    truth = _as_labels(truth, "truth_slice") if truth.dtype.kind == "f" else truth.astype(np.uint8)
    if not isinstance(predictions, Mapping) or not predictions:
        raise ConfigError("predictions must be a non-empty dict trial label -> (Y, X) prediction")
    preds: dict[str, np.ndarray] = {}
    for k, v in predictions.items():
        a = np.asarray(v)
        if a.shape != img.shape:
            raise ConfigError(f"predictions[{k!r}] has shape {a.shape}, expected the slice shape {img.shape}")
        preds[str(k)] = _as_labels(a, f"predictions[{k!r}]")
    valid = truth != 255
    styles = line_styles(list(preds), colors)
    ny, nx = img.shape
    ncols, nrows = 2 + len(preds), 2 if errors else 1
    row_h = panel_size * ny / nx + 0.55
    plt, fig = _figure((ncols * panel_size, nrows * row_h + 0.35), dpi)
    try:
        from matplotlib.colors import ListedColormap, to_rgba
        from matplotlib.patches import Patch

        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        lo, hi = _display_range(img[np.isfinite(img)] if img.dtype.kind == "f" else img)
        tshow = np.where(valid, truth, np.nan).astype(np.float32)
        label_cmap = ListedColormap(["#000000", "#ffffff"]).with_extremes(bad="#9e9e9e")
        axes[0, 0].imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        axes[0, 0].set_title(f"(a) FIB-SEM image, z={int(z)}", fontsize=8)
        axes[0, 1].imshow(tshow, cmap=label_cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[0, 1].set_title("(b) ground truth\n(white = pore, black = solid)", fontsize=8)
        t_v = truth[valid].reshape(1, -1)
        for j, (name, p) in enumerate(preds.items()):
            col = 2 + j
            letter = chr(ord("a") + col) if col < 26 else str(col)
            if t_v.size:
                p_v = p[valid].reshape(1, -1)
                acc = metrics.accuracy(p_v, t_v)
                iou_s = metrics.iou(p_v, t_v, 0)
                scores = f"accuracy {acc:.3f}, solid IoU {iou_s:.3f}"
            else:
                scores = "no labelled truth pixels"
            ax = axes[0, col]
            ax.imshow(p, cmap=label_cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"({letter}) {name}\n{scores}", fontsize=8)
            for sp in ax.spines.values():
                sp.set_edgecolor(styles[name]["color"])
                sp.set_linewidth(2.5)
            if errors:
                ax_e = axes[1, col]
                overlay = np.zeros((ny, nx, 4), np.float32)
                pore_as_solid = valid & (truth == 1) & (p != 1)
                solid_as_pore = valid & (truth != 1) & (p == 1)
                overlay[pore_as_solid] = to_rgba(_ERR_PORE_AS_SOLID)
                overlay[solid_as_pore] = to_rgba(_ERR_SOLID_AS_PORE)
                ax_e.imshow(img, cmap="gray", vmin=lo, vmax=hi, alpha=0.45, interpolation="nearest")
                ax_e.imshow(overlay, interpolation="nearest")
                n_valid = max(int(valid.sum()), 1)
                ax_e.set_title(
                    f"errors of ({letter}): {100 * (pore_as_solid.sum() + solid_as_pore.sum()) / n_valid:.1f} % of pixels",
                    fontsize=8,
                )
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        if errors:
            axes[1, 0].set_axis_off()
            axes[1, 1].set_axis_off()
            axes[1, 0].legend(
                handles=[
                    Patch(color=_ERR_PORE_AS_SOLID, label="pore predicted as solid\n(pore-back / grey pore)"),
                    Patch(color=_ERR_SOLID_AS_PORE, label="solid predicted as pore"),
                ],
                loc="center left",
                fontsize=7,
                frameon=False,
                title="error maps (row 2)",
                title_fontsize=8,
            )
        fig.suptitle(title or f"Predictions by each trial at slice z={int(z)}", fontsize=10)
        return _save(fig, path, dpi)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------


def _per_slice_source(res: Any, trial: str) -> tuple[Mapping, np.ndarray | None]:
    """(metric -> per-slice values, slices or None) from the accepted result forms."""
    if hasattr(res, "per_slice") and hasattr(res, "slices"):  # activeseg.metrics.Evaluation
        return res.per_slice, np.asarray(res.slices)
    if isinstance(res, Mapping):
        if "per_slice" in res:  # Evaluation.to_dict()
            zs = res.get("slices")
            return res["per_slice"], None if zs is None else np.asarray(zs)
        zs = res.get("slices")
        return res, None if zs is None else np.asarray(zs)
    raise ConfigError(
        f"results[{trial!r}] must be a dict metric -> (Z,) per-slice array or an Evaluation, got {type(res).__name__}"
    )


def paper_table(
    results: Mapping[str, Any],
    indices: Sequence[int] | Mapping[str, int],
    *,
    metrics: Sequence[tuple[str, str]] = (("bce", "Loss"), ("accuracy", "Accuracy")),
    corner: str = "Predicted image",
) -> list[dict]:
    """Table 1 of the paper: rows index x metric, columns the trials.

    Parameters
    ----------
    results : dict trial label -> per-slice metrics of that trial, in one of the forms
        ``{"bce": (Z,) array, "accuracy": (Z,) array}`` (indexed by global z),
        the same with a ``"slices"`` entry (global z of each array element), an
        :class:`activeseg.metrics.Evaluation`, or ``Evaluation.to_dict()``.
        Column order follows this dict.
    indices : global z of the rows, e.g. :func:`paper_indices` ``(n_slices)``; named
        ``Index-z``; or a dict row name -> z.
    metrics : (metric key, row label) pairs per index, default loss (``bce``) then
        accuracy as in the paper.
    corner : header of the row-label column (the paper's "Predicted image").

    Returns
    -------
    list of dicts, one per row: ``{corner: "Index-47, Loss", trial: float | None, ...}``.
    Values are floats, or None where the trial has no such metric or it is NaN (JSON-safe).
    """
    if not isinstance(results, Mapping) or not results:
        raise ConfigError("results must be a non-empty dict trial label -> per-slice metrics")
    if isinstance(indices, Mapping):
        named = [(str(k), _int(v, f"indices[{k!r}]")) for k, v in indices.items()]
    else:
        named = [(f"Index-{_int(z, 'index')}", _int(z, "index")) for z in indices]
    if not named:
        raise ConfigError("indices is empty: give the global z of at least one slice (see paper_indices)")
    sources = {str(t): _per_slice_source(r, str(t)) for t, r in results.items()}
    table = []
    for name, z in named:
        for key, label in metrics:
            row: dict[str, Any] = {corner: f"{name}, {label}"}
            for trial, (per, zs) in sources.items():
                if key not in per:
                    row[trial] = None
                    continue
                vals = np.asarray(per[key], dtype=np.float64)
                if zs is None:
                    if not 0 <= z < vals.size:
                        raise ConfigError(
                            f"index {z} is outside trial {trial!r}'s per-slice {key!r} (slices 0..{vals.size - 1})"
                        )
                    v = vals[z]
                else:
                    hits = np.flatnonzero(zs == z)
                    if hits.size == 0:
                        raise ConfigError(
                            f"slice {z} was not evaluated for trial {trial!r}; evaluate it (or every slice) first"
                        )
                    v = vals[int(hits[0])]
                row[trial] = _json_float(v)
            table.append(row)
    return table


def _columns(rows: Sequence[Mapping]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _md_cell(v: Any, digits: int) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}" if math.isfinite(v) else "n/a"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(_md_cell(x, digits) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping], *, digits: int = 3, columns: Sequence[str] | None = None) -> str:
    """Render dict rows as a GitHub Markdown table.

    Floats get ``digits`` decimals, None/NaN show as ``n/a``, lists are joined with
    commas. Columns are the keys in order of first appearance (or ``columns``); columns
    holding only numbers are right-aligned.
    """
    if not rows:
        raise ConfigError("no rows to render as a table")
    cols = list(columns) if columns is not None else _columns(rows)

    def numeric(c):
        vals = [r.get(c) for r in rows]
        return all(v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
                   for v in vals) and any(v is not None for v in vals)

    header = "| " + " | ".join(_md_cell(c, digits) for c in cols) + " |"
    sep = "|" + "|".join("---:" if numeric(c) else "---" for c in cols) + "|"
    body = ["| " + " | ".join(_md_cell(r.get(c), digits) for c in cols) + " |" for r in rows]
    return "\n".join([header, sep, *body]) + "\n"


def paper_table_markdown(rows: Sequence[Mapping], *, digits: int = 3) -> str:
    """The rows of :func:`paper_table` as a Markdown table (``digits`` decimals, as in the paper)."""
    return markdown_table(rows, digits=digits)


def index_proximity(
    labelled: Mapping[str, Sequence[int]], indices: Sequence[int] | Mapping[str, int], *, within: int = 2
) -> list[str]:
    """Sentences naming the table indices that are, or lie next to, a trial's labelled slice.

    A model sees ``within`` slices either side as 2.5D context (the default ResUNet: 2),
    so an index within that distance of a training slice is not a held-out measurement
    in the paper's sense. Returns one sentence per such index, e.g. ``"Index-434 is 1
    slice from labelled slice 435 in 20 distributed."``; empty when none is.
    """
    if isinstance(indices, Mapping):
        named = [(str(k), _int(v, f"indices[{k!r}]")) for k, v in indices.items()]
    else:
        named = [(f"Index-{_int(z, 'index')}", _int(z, "index")) for z in indices]
    within = _int(within, "within")
    out = []
    for name, z in named:
        near: dict[tuple[int, int], list[str]] = {}  # (distance, labelled z) -> trials
        for trial, zs in labelled.items():
            zs = np.asarray([_int(v, f"labelled[{trial!r}]") for v in zs], dtype=np.int64)
            if zs.size == 0:
                continue
            nearest = int(zs[np.argmin(np.abs(zs - z))])
            if abs(nearest - z) <= within:
                near.setdefault((abs(nearest - z), nearest), []).append(str(trial))
        for (dist, lz), trials in sorted(near.items()):
            where = "is a labelled slice" if dist == 0 else f"is {dist} slice{'s' if dist > 1 else ''} from labelled slice {lz}"
            out.append(f"{name} {where} in {', '.join(trials)}.")
    return out


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else ("" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple, set, np.ndarray)):
        return ";".join(_csv_value(x) for x in (sorted(v) if isinstance(v, set) else v))
    if isinstance(v, Mapping):
        return json.dumps({str(k): (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in v.items()},
                          default=str)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def table_csv(rows: Sequence[Mapping], path: str | Path, *, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as a plain CSV (UTF-8, header row), atomically.

    Columns are the keys in order of first appearance (or ``columns``). None and NaN
    become empty cells, floats are written at full precision (``repr``), booleans as
    ``true``/``false``, lists as ``;``-joined values (``labelled`` z: ``"3;12;40"``),
    dicts as JSON. Read back with ``csv.DictReader`` (every value a string); the plot and
    summary functions here accept such rows directly.

    Returns
    -------
    Path of the written file.
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise ConfigError(f"rows must be a list of dicts, got {type(rows).__name__}")
    cols = list(columns) if columns is not None else _columns(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({c: _csv_value(r.get(c)) for c in cols})
    return path


# ---------------------------------------------------------------------------------------
# label efficiency
# ---------------------------------------------------------------------------------------


def _first_reach(x: np.ndarray, y: np.ndarray, target: float) -> int | None:
    hit = np.isfinite(y) & (y >= target - 1e-12 * max(1.0, abs(target)))
    return int(x[np.argmax(hit)]) if hit.any() else None


def label_efficiency(
    rows: Sequence[Mapping],
    ceiling: float,
    *,
    metric: str = "iou_solid",
    fractions: Sequence[float] = (0.95, 0.99),
) -> dict[str, dict]:
    """Labelled slices each strategy needs to reach ``fraction * ceiling`` of a metric.

    The learning curve of a strategy is the mean over seeds at each ``n_labelled``
    (seeds with None/NaN at a budget are left out of that mean); the answer is the first
    budget at which that mean reaches the target (it need not stay above it), or None if
    it never does within the budgets run. The same is done for each seed alone; the
    median over seeds counts "never" as infinitely many slices (so it is None when at
    least half the seeds never get there).

    Parameters
    ----------
    rows : list of dicts with ``strategy``, ``seed``, ``n_labelled`` and ``metric``; rows
        mixing schedules are summarised per (strategy, schedule): ``"entropy (iterative)"``.
    ceiling : the metric of a model trained on every slice (> 0).
    metric : a higher-is-better metric (``iou_solid``, ``accuracy``, ``boundary_f1``, ...).
    fractions : fractions of the ceiling to reach.

    Returns
    -------
    dict strategy -> ``{f: int | None for f in fractions,
    "target": {f: f * ceiling}, "seed_median": {f: float | None},
    "per_seed": {f: {seed: int | None}},
    "curve": {"n_labelled": [int], "mean": [float | None], "n_seeds": [int]}}``.
    """
    if metric in _LOWER_IS_BETTER or metric in _ZERO_IS_BEST:
        raise ConfigError(
            f"label efficiency needs a higher-is-better metric (iou_solid, accuracy, boundary_f1, ...); "
            f"{metric!r} is {_better_hint(metric)}"
        )
    c = _num(ceiling, "ceiling")
    if not math.isfinite(c) or c <= 0:
        raise ConfigError(
            f"ceiling must be a positive finite {metric} (of a model trained on all slices), got {ceiling!r}"
        )
    fr = [float(f) for f in fractions]
    if not fr or any(not (0 < f) for f in fr):
        raise ConfigError(f"fractions must be positive numbers such as (0.95, 0.99), got {tuple(fractions)!r}")
    out: dict[str, dict] = {}
    for g, cur in _curves(rows, metric).items():
        st = _stats(cur["values"])
        x = cur["x"]
        entry: dict[Any, Any] = {}
        entry["target"] = {f: f * c for f in fr}
        entry["per_seed"] = {}
        entry["seed_median"] = {}
        for f in fr:
            entry[f] = _first_reach(x, st["mean"], f * c)
            per = {s: _first_reach(x, cur["values"][i], f * c) for i, s in enumerate(cur["seeds"])}
            entry["per_seed"][f] = per
            med = float(np.median([math.inf if v is None else v for v in per.values()]))
            entry["seed_median"][f] = med if math.isfinite(med) else None
        entry["curve"] = {
            "n_labelled": [int(v) for v in x],
            "mean": [_json_float(v) for v in st["mean"]],
            "n_seeds": [int(v) for v in st["n"]],
        }
        out[g] = entry
    return out


def label_efficiency_markdown(
    efficiency: Mapping[str, Mapping],
    *,
    metric: str = "iou_solid",
    ceiling: float | None = None,
    digits: int = 3,
) -> str:
    """Render :func:`label_efficiency` as Markdown: a line stating the ceiling and a table.

    Columns per fraction: slices for the mean curve ("not reached (max n)" when None) and
    the median over seeds; then the best mean value on the curve and where it was reached.
    """
    if not efficiency:
        raise ConfigError("efficiency is empty: nothing to render")
    first = next(iter(efficiency.values()))
    fr = [k for k in first if isinstance(k, float)]
    if ceiling is None and fr:
        ceiling = first["target"][fr[0]] / fr[0]
    name = _metric_label(metric).split(" (")[0]
    table = []
    for g, e in efficiency.items():
        xs = e["curve"]["n_labelled"]
        mean = np.array([math.nan if v is None else v for v in e["curve"]["mean"]], dtype=float)
        row: dict[str, Any] = {"strategy": g}
        for f in fr:
            tgt = e["target"][f]
            head = f"slices to {f:.0%} ({name} >= {tgt:.{digits}f})"
            row[head] = e[f] if e[f] is not None else f"not reached (max {max(xs) if xs else 0})"
            med = e["seed_median"][f]
            row[f"seed median, {f:.0%}"] = (
                (int(med) if float(med).is_integer() else med) if med is not None else "not reached"
            )
        if np.isfinite(mean).any():
            i = int(np.nanargmax(mean))
            row[f"best mean {name}"] = float(mean[i])
            row["at slices"] = int(xs[i])
        else:
            row[f"best mean {name}"] = None
            row["at slices"] = None
        row["seeds"] = max(e["curve"]["n_seeds"]) if e["curve"]["n_seeds"] else 0
        table.append(row)
    lines = []
    if ceiling is not None:
        lines.append(f"Ceiling (model trained on all slices): {name} = {float(ceiling):.{digits}f}.\n")
    lines.append(markdown_table(table, digits=digits))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# report page
# ---------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def _is_image(content: Any) -> bool:
    if isinstance(content, os.PathLike):
        return True
    return (
        isinstance(content, str)
        and "\n" not in content
        and content.strip().lower().endswith(_IMAGE_SUFFIXES)
    )


def write_report_md(
    path: str | Path,
    *,
    title: str,
    sections: Sequence[tuple],
    intro: str | None = None,
) -> Path:
    """Write a one-page Markdown report: headings, images (relative links), tables, captions.

    Parameters
    ----------
    path : output ``.md`` file (written atomically).
    title : page title (``# title``).
    sections : list of ``(heading, content)`` or ``(heading, content, caption)``.
        ``content`` is an image (a :class:`~pathlib.Path`, or a one-line string ending in
        .png/.jpg/.svg/...), linked relative to the report's folder, or Markdown text
        (e.g. :func:`paper_table_markdown` output) embedded as is. ``caption`` (optional)
        is written in italics under it.
    intro : optional Markdown paragraph under the title.

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    parts = [f"# {title}\n"]
    if intro:
        parts.append(intro.strip() + "\n")
    for i, sec in enumerate(sections):
        if not isinstance(sec, (tuple, list)) or len(sec) not in (2, 3):
            raise ConfigError(
                f"sections[{i}] must be (heading, content) or (heading, content, caption), got {sec!r:.80}"
            )
        heading, content = sec[0], sec[1]
        caption = sec[2] if len(sec) == 3 else None
        parts.append(f"## {heading}\n")
        if _is_image(content):
            target = Path(content)
            if not target.is_absolute():
                target = Path.cwd() / target
            rel = Path(os.path.relpath(target.resolve(), path.parent.resolve())).as_posix()
            alt = str(caption or heading).replace("]", ")").replace("[", "(").replace("\n", " ")
            parts.append(f"![{alt}]({rel})\n")
        else:
            parts.append(str(content).rstrip() + "\n")
        if caption:
            parts.append(f"*{str(caption).strip()}*\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path
