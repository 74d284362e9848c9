"""Pictures people can look at: PNG figures drawn with matplotlib.

matplotlib is a heavy optional import: it is imported inside the functions (with the
non-interactive Agg backend, :func:`pyplot`), so importing this module is cheap.

Every plot is a pure function of plain data handed over by the study runner: ``rows``
(one dict per (run, round) evaluation, described in :mod:`activeseg.tables`, which also
checks and aggregates them), and per-slice arrays ``{trial label: float (Z,) array}``
indexed by global z with ``{trial label: list of labelled global z}``.

Plot functions write one PNG and return its :class:`~pathlib.Path`. Colours are stable
per strategy across all figures (:func:`color_for`, :func:`line_styles`): a trial label
such as ``"20 distributed"`` takes the colour of the strategy it names, and labels that
share a colour in one figure are told apart by line style. Pass ``colors=`` (name ->
matplotlib colour) to any plot to override.

Figures have a fixed pixel size (``figsize * dpi``, constrained layout, legends outside
the data area), so they tile predictably in a report.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg import metrics
from activeseg.errors import ConfigError
from activeseg.figures import pyplot, savefig
from activeseg.tables import (
    better_hint,
    check_rows,
    cost_curves,
    metric_label,
    seed_curves,
    seed_stats,
    to_float,
    to_int,
)

__all__ = [
    "pyplot",
    "savefig",
    "preview_png",
    "STRATEGY_COLORS",
    "color_for",
    "line_styles",
    "plot_learning_curves",
    "plot_slice_metric",
    "plot_porosity_profile",
    "plot_correction_cost",
    "plot_cost_curves",
    "plot_prediction_panel",
]


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
    plt = pyplot()
    nz, ny, nx = (int(s) for s in image.shape)
    z = nz // 2 if z is None else int(z)
    x = nx // 2 if x is None else int(x)
    z0 = max(0, min(z - max_reslice_depth // 2, nz - max_reslice_depth))
    z1 = min(nz, z0 + max_reslice_depth)
    sl = np.asarray(image[z])
    reslice = np.asarray(image[z0:z1])[:, :, x]
    lo, hi = _display_range(sl)
    panels = [(f"image z={z:d}", sl, "gray", (lo, hi))]
    if truth is not None:
        t = np.asarray(truth[z]).astype(np.float32)
        t[t == 255] = np.nan
        panels.append((f"truth z={z:d} (white = pore)", t, "gray", (0, 1)))
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
        path = savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# names, colours, styles
# ---------------------------------------------------------------------------------------


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
    "tile_entropy": "#006d2c",  # dark green: the tile form of entropy
    "tile_boundary": "#a50f15",  # dark red
    "tile_random": "#404040",  # dark grey: the random-tile baseline
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


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------


def _band_kind(n_seeds: int) -> str | None:
    return "std" if n_seeds >= 3 else ("minmax" if n_seeds == 2 else None)


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
        z = np.unique(np.asarray([to_int(v, f"labelled[{k!r}] slice id") for v in zs], dtype=np.int64))
        if z.size and (z[0] < 0 or z[-1] >= nz):
            raise ConfigError(f"labelled[{k!r}] holds slice ids {z[0]}..{z[-1]} outside the stack 0..{nz - 1}")
        out[str(k)] = z
    return out


def _marks_list(marks: Any) -> list[tuple[str, int]]:
    if marks is None:
        return []
    if isinstance(marks, Mapping):
        return [(str(k), to_int(v, f"marks[{k!r}]")) for k, v in marks.items()]
    if isinstance(marks, (Sequence, np.ndarray)) and not isinstance(marks, str):
        zs = [to_int(v, "marks entry") for v in marks]
        return [(f"Index-{z}", z) for z in zs]
    raise ConfigError(f"marks must be a dict name -> z or a list of z, got {type(marks).__name__}")


# ---------------------------------------------------------------------------------------
# figure helpers
# ---------------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float], dpi: float):
    plt = pyplot()
    fig = plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    return plt, fig


def _save(fig, path: str | Path, dpi: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return savefig(fig, path, dpi=dpi)


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
        st = seed_stats(c["values"])
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
    from matplotlib.ticker import MaxNLocator  # heavy optional, as in pyplot()

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


def _ceiling_lines(ax, ceiling: float | None, fractions: Sequence[float]) -> None:
    """The all-slices ceiling as a dashed line and ``fractions`` of it as dotted ones."""
    c = None if ceiling is None else to_float(ceiling, "ceiling")
    if c is None or not math.isfinite(c):
        return
    ax.axhline(c, color="black", ls="--", lw=1.1, label=f"all slices (ceiling) = {c:.3f}")
    for i, f in enumerate(fractions):
        ax.axhline(f * c, color="0.45", ls=(":", "-.", (0, (1, 1)))[i % 3], lw=0.9,
                   label=f"{f:.0%} of ceiling = {f * c:.3f}")


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
    curves = seed_curves(rows, metric)
    styles = line_styles(list(curves), colors)
    plt, fig = _figure(figsize, dpi)
    try:
        ax = fig.add_subplot()
        drawn = _draw_curves(ax, curves, styles)
        if not drawn:
            _no_data(ax, f"no finite values of '{metric}' to plot")
        _ceiling_lines(ax, ceiling, fractions)
        ax.set_xlabel("labelled slices (fully corrected)")
        ax.set_ylabel(metric_label(metric))
        _integer_x(ax)
        ax.grid(alpha=0.3)
        ax.set_title(
            title
            or f"{metric_label(metric).split(' (')[0]} vs labelled slices (mean over seeds; {better_hint(metric)})",
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
    metric : the metric's name, for the axis label (see :data:`activeseg.tables.METRIC_LABELS`).
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
        ax.set_ylabel(metric_label(metric))
        ax.set_xlim(-0.5, nz - 0.5)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"{metric_label(metric).split(' (')[0]} per slice along the stack ({better_hint(metric)})",
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
    rows = check_rows(rows, ("strategy", "seed", "round", "n_labelled", "correction_cost"))
    runs: dict[Any, list[Mapping]] = {}
    for r in rows:
        key = r["run"] if "run" in r else (r["strategy"], r.get("schedule", ""), to_int(r["seed"], "seed"))
        runs.setdefault(key, []).append(r)
    derived = []
    for run_rows in runs.values():
        run_rows = sorted(run_rows, key=lambda r: to_int(r["round"], "round"))
        costs = np.array([to_float(r["correction_cost"], "correction_cost") for r in run_rows])
        seen = np.cumsum(np.isfinite(costs)) > 0
        cum = np.where(seen, np.cumsum(np.where(np.isfinite(costs), costs, 0.0)), np.nan)
        for r, cst, cu in zip(run_rows, costs, cum):
            d = dict(r)
            d["_cost"], d["_cumulative"] = cst, cu
            derived.append(d)
    per_round = seed_curves(derived, "_cost", x)
    cumulative = seed_curves(derived, "_cumulative", x)
    styles = line_styles(list(per_round), colors)
    from matplotlib.ticker import EngFormatter  # heavy optional, as in pyplot()

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


COST_AXES = {
    "reviewed_slices": "reviewed area (slice-equivalents: pixels the person verified / pixels of one slice)",
    "reviewed_cum": "pixels reviewed (cumulative)",
    "changed_cum": "pixels changed from the pre-fill (cumulative)",
}
"""x-axes of :func:`plot_cost_curves` (row keys written by the study)."""


def plot_cost_curves(
    rows: Sequence[Mapping],
    path: str | Path,
    *,
    x: str = "reviewed_slices",
    metric: str = "iou_solid",
    ceiling: float | None = None,
    fractions: Sequence[float] = (),
    colors: Mapping[str, Any] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (8.0, 4.5),
    dpi: float = 110,
) -> Path:
    """Metric against a cost (reviewed area, pixels changed), one line per strategy.

    Each line is the mean over seeds per round (x and y both means: seeds of one strategy
    review different amounts), drawn over each seed's own curve (thin). With ``ceiling``
    the all-slices figure is a dashed line and ``fractions`` of it dotted ones, as in
    :func:`plot_learning_curves`.

    Parameters
    ----------
    rows : dicts with ``strategy``, ``seed``, ``round``, ``x`` and ``metric``.
    x : a row key, e.g. ``"reviewed_slices"``, ``"reviewed_cum"`` or ``"changed_cum"``
        (:data:`COST_AXES` names their axis labels).

    Returns
    -------
    Path of the written PNG.
    """
    curves = cost_curves(rows, metric, x)
    styles = line_styles(list(curves), colors)
    from matplotlib.ticker import EngFormatter  # heavy optional, as in pyplot()

    plt, fig = _figure(figsize, dpi)
    try:
        ax = fig.add_subplot()
        for g, c in curves.items():
            for xs, ys in c["per_seed"].values():
                ok = np.isfinite(xs) & np.isfinite(ys)
                if len(c["per_seed"]) > 1 and ok.any():
                    ax.plot(xs[ok], ys[ok], lw=0.6, alpha=0.35, color=styles[g]["color"])
            ok = np.isfinite(c["x"]) & np.isfinite(c["mean"])
            n = len(c["per_seed"])
            ax.plot(c["x"][ok], c["mean"][ok], marker="o", ms=3.5, lw=1.6,
                    label=f"{g} [{n} seed{'s' if n != 1 else ''}]", **styles[g])
        if not curves:
            _no_data(ax, f"no finite values of '{metric}' against '{x}'")
        _ceiling_lines(ax, ceiling, fractions)
        ax.set_xlabel(COST_AXES.get(x, x))
        ax.set_ylabel(metric_label(metric))
        if x != "reviewed_slices":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"{metric_label(metric).split(' (')[0]} vs {COST_AXES.get(x, x).split(' (')[0]} "
                     "(mean over seeds per round; thin: each seed)", fontsize=10)
        _legend_outside(fig, [ax])
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
        # heavy optional, as in pyplot()
        from matplotlib.colors import ListedColormap, to_rgba
        from matplotlib.patches import Patch  # heavy optional, as in pyplot()

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
