"""Tables people can read (Markdown, CSV) and the numbers behind them.

Pure Python/numpy (no matplotlib): the paper's Table 1 layout (:func:`paper_table`), the
label-efficiency summary (:func:`label_efficiency`), generic Markdown and CSV tables, and
the row helpers :mod:`activeseg.plots` shares (value coercion, row checks, learning curves
over seeds, metric names). Everything is a pure function of plain data handed over by the
study runner:

- ``rows``: a list of mappings, one per (run, round) evaluation, with at least the keys
  ``run`` (str), ``strategy`` (str), ``schedule`` ("one-shot" | "iterative"), ``seed``
  (int), ``round`` (int), ``n_labelled`` (int, fully labelled slices so far), the metric
  columns (``accuracy``, ``iou_solid``, ``bce``, ``porosity_error``, ``grey_pore_error``,
  ``boundary_f1``: float, None or NaN), ``correction_cost`` (int pixels changed in this
  round, or None) and ``labelled`` (list of global z). Rows read back from a CSV written
  by :func:`table_csv` (all values strings) are accepted as well.
- per-slice metrics: ``{trial label: {metric: float (Z,) array}}`` indexed by global z
  (or an :class:`activeseg.metrics.Evaluation`), and ``{trial label: list of labelled
  global z}``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.errors import ConfigError
from activeseg.safety import atomic_path

__all__ = [
    "paper_table",
    "paper_table_markdown",
    "markdown_table",
    "table_csv",
    "index_proximity",
    "label_efficiency",
    "label_efficiency_markdown",
    "cost_curves",
    "cost_efficiency",
    "cost_efficiency_markdown",
    "stopping_summary",
    "stopping_markdown",
    # row helpers shared with activeseg.plots
    "METRIC_LABELS",
    "LOWER_IS_BETTER",
    "ZERO_IS_BEST",
    "metric_label",
    "better_hint",
    "class_ious",
    "class_iou_text",
    "to_float",
    "to_int",
    "json_float",
    "check_rows",
    "seed_curves",
    "seed_stats",
]


# ---------------------------------------------------------------------------------------
# metric names
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

# metrics whose best value is not the highest (see better_hint)
LOWER_IS_BETTER = frozenset({"bce", "grey_pore_error", "correction_cost"})
ZERO_IS_BEST = frozenset({"porosity_error"})
# the per-class fraction errors (fraction_error_c0, ...) are 0-is-best too (see better_hint)


_CLASS_METRIC = re.compile(r"^(iou|dice|fraction_pred|fraction_true|fraction_error)_c(\d+)$")
_CLASS_LABELS = {
    "iou": "IoU of class {k} (0-1)",
    "dice": "Dice of class {k} (0-1)",
    "fraction_pred": "predicted fraction of class {k}",
    "fraction_true": "true fraction of class {k}",
    "fraction_error": "class {k} fraction error (predicted - true)",
}


def metric_label(metric: str) -> str:
    """Axis label of a metric: :data:`METRIC_LABELS`, the per-class metrics of sessions
    with C >= 3 classes (``iou_c2`` -> "IoU of class 2 (0-1)"), else the name with spaces."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    hit = _CLASS_METRIC.match(metric)
    if hit:
        return _CLASS_LABELS[hit.group(1)].format(k=int(hit.group(2)))
    return metric.replace("_", " ")


def class_ious(metrics: Mapping[str, Any] | None) -> list[float]:
    """The per-class IoU ``iou_c0, iou_c1, ...`` of a metrics dict, in class order (empty for
    a binary evaluation, which reports ``iou_solid`` / ``iou_pore`` only)."""
    if not metrics:
        return []
    out = []
    k = 0
    while f"iou_c{k}" in metrics:
        out.append(to_float(metrics[f"iou_c{k}"], f"iou_c{k}"))
        k += 1
    return out


def class_iou_text(metrics: Mapping[str, Any] | None, *, digits: int = 2) -> str:
    """Per-class IoU as one short cell, class 0 first (``"0.91/0.95/0.88"``; ``n/a`` for
    a missing value), or "-" when the metrics have none (binary sessions)."""
    vals = class_ious(metrics)
    if not vals:
        return "-"
    return "/".join(f"{v:.{digits}f}" if math.isfinite(v) else "n/a" for v in vals)


def better_hint(metric: str) -> str:
    """Which way is better for a metric: "higher is better", "lower is better" or "0 is best"."""
    if metric in LOWER_IS_BETTER:
        return "lower is better"
    if metric in ZERO_IS_BEST or metric.startswith("fraction_error_c"):
        return "0 is best"
    return "higher is better"


# ---------------------------------------------------------------------------------------
# input coercion and aggregation
# ---------------------------------------------------------------------------------------


def to_float(v: Any, what: str = "value") -> float:
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


def to_int(v: Any, what: str) -> int:
    """An int from an integral number or CSV string (:func:`to_float` rules); ``what`` names it in errors."""
    x = to_float(v, what)
    if not math.isfinite(x) or x != int(x):
        raise ConfigError(f"{what} must be an integer, got {v!r}")
    return int(x)


def check_rows(rows: Any, needed: Sequence[str]) -> list[Mapping]:
    """``rows`` as a list, checked to be a non-empty list of dicts that all hold ``needed``."""
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


def seed_curves(rows: Sequence[Mapping], metric: str, x: str = "n_labelled") -> dict[str, dict]:
    """Per group: sorted x, seeds and a (n_seeds, n_x) float64 matrix of values.

    Several rows of one seed at the same x (e.g. two runs) are averaged; NaN/None values
    are ignored; a missing (seed, x) is NaN.
    """
    rows = check_rows(rows, ("strategy", "seed", x, metric))
    acc: dict[str, dict[int, dict[int, list[float]]]] = {}
    for g, r in zip(_group_names(rows), rows):
        xv = to_int(r[x], x)
        seed = to_int(r["seed"], "seed")
        acc.setdefault(g, {}).setdefault(xv, {}).setdefault(seed, []).append(to_float(r[metric], metric))
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


def seed_stats(vals: np.ndarray) -> dict[str, np.ndarray]:
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


def json_float(x: Any) -> float | None:
    """A float, or None for None/NaN/inf (JSON-safe); CSV strings as in :func:`to_float`."""
    x = to_float(x)
    return float(x) if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------
# paper table
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
    indices : global z of the rows, e.g. :func:`activeseg.metrics.paper_indices`
        ``(n_slices)``; named ``Index-z``; or a dict row name -> z.
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
        named = [(str(k), to_int(v, f"indices[{k!r}]")) for k, v in indices.items()]
    else:
        named = [(f"Index-{to_int(z, 'index')}", to_int(z, "index")) for z in indices]
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
                row[trial] = json_float(v)
            table.append(row)
    return table


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


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
        named = [(str(k), to_int(v, f"indices[{k!r}]")) for k, v in indices.items()]
    else:
        named = [(f"Index-{to_int(z, 'index')}", to_int(z, "index")) for z in indices]
    within = to_int(within, "within")
    out = []
    for name, z in named:
        near: dict[tuple[int, int], list[str]] = {}  # (distance, labelled z) -> trials
        for trial, zs in labelled.items():
            zarr = np.asarray([to_int(v, f"labelled[{trial!r}]") for v in zs], dtype=np.int64)
            if zarr.size == 0:
                continue
            nearest = int(zarr[np.argmin(np.abs(zarr - z))])
            if abs(nearest - z) <= within:
                near.setdefault((abs(nearest - z), nearest), []).append(str(trial))
        for (dist, lz), trials in sorted(near.items()):
            where = "is a labelled slice" if dist == 0 else f"is {dist} slice{'s' if dist > 1 else ''} from labelled slice {lz}"
            out.append(f"{name} {where} in {', '.join(trials)}.")
    return out


# ---------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------


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
    if better_hint(metric) != "higher is better":
        raise ConfigError(
            f"label efficiency needs a higher-is-better metric (iou_solid, accuracy, boundary_f1, ...); "
            f"{metric!r} is {better_hint(metric)}"
        )
    c = to_float(ceiling, "ceiling")
    if not math.isfinite(c) or c <= 0:
        raise ConfigError(
            f"ceiling must be a positive finite {metric} (of a model trained on all slices), got {ceiling!r}"
        )
    fr = [float(f) for f in fractions]
    if not fr or any(not (0 < f) for f in fr):
        raise ConfigError(f"fractions must be positive numbers such as (0.95, 0.99), got {tuple(fractions)!r}")
    out: dict[str, dict] = {}
    for g, cur in seed_curves(rows, metric).items():
        st = seed_stats(cur["values"])
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
            "mean": [json_float(v) for v in st["mean"]],
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
    name = metric_label(metric).split(" (")[0]
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
# cost: learning curves by reviewed / changed pixels, reviewed area to the ceiling
# ---------------------------------------------------------------------------------------


def cost_curves(rows: Sequence[Mapping], metric: str = "iou_solid", x: str = "reviewed_cum") -> dict[str, dict]:
    """Learning curves against a cost (``x``: cumulative reviewed or changed pixels), per group.

    Seeds of one strategy review different amounts (tiles differ in what they change, a
    clipped edge tile is smaller), so the curves are aligned by round, not by x: per round,
    the mean over seeds of the metric and of the cost.

    Parameters
    ----------
    rows : dicts with ``strategy``, ``seed``, ``round``, ``x`` and ``metric`` (None/NaN skipped).

    Returns
    -------
    dict group -> ``{"round": int array, "x": mean cost per round, "mean", "std", "min",
    "max", "n": seeds per round, "per_seed": {seed: (x array, metric array)}}`` (float64,
    rounds sorted).
    """
    rows = check_rows(rows, ("strategy", "seed", "round", x, metric))
    acc: dict[str, dict[int, dict[int, tuple[float, float]]]] = {}
    for g, r in zip(_group_names(rows), rows):
        xv, yv = to_float(r[x], x), to_float(r[metric], metric)
        if not (math.isfinite(xv) and math.isfinite(yv)):
            continue
        acc.setdefault(g, {}).setdefault(to_int(r["round"], "round"), {})[to_int(r["seed"], "seed")] = (xv, yv)
    out: dict[str, dict] = {}
    for g, by_round in acc.items():
        rounds = sorted(by_round)
        seeds = sorted({s for d in by_round.values() for s in d})
        xs = np.full((len(seeds), len(rounds)), np.nan)
        ys = np.full_like(xs, np.nan)
        for j, rd in enumerate(rounds):
            for s, (xv, yv) in by_round[rd].items():
                xs[seeds.index(s), j], ys[seeds.index(s), j] = xv, yv
        st = seed_stats(ys)
        out[g] = {"round": np.asarray(rounds, np.int64), "x": seed_stats(xs)["mean"], **{k: st[k] for k in
                  ("mean", "std", "min", "max", "n")},
                  "per_seed": {s: (xs[i], ys[i]) for i, s in enumerate(seeds)}}
    return out


def cost_efficiency(
    rows: Sequence[Mapping],
    ceiling: float,
    *,
    x: str = "reviewed_cum",
    metric: str = "iou_solid",
    fractions: Sequence[float] = (0.95, 0.99),
) -> dict[str, dict]:
    """The cost (``x``: cumulative reviewed pixels by default) each strategy spends to reach
    ``fraction * ceiling``: the reviewed-area version of :func:`label_efficiency`.

    The mean curve is :func:`cost_curves` (per round, mean over seeds of the metric and of
    the cost); the answer is the mean cost of the first round whose mean metric reaches
    the target, or None. Each seed alone gives its own first cost; their median counts
    "never" as infinite (None when half the seeds never get there).

    Returns
    -------
    dict group -> ``{f: float | None, "round": {f: int | None}, "target": {f: float},
    "seed_median": {f: float | None}, "per_seed": {f: {seed: float | None}},
    "max_x": the largest mean cost reached, "best": best mean metric}``.
    """
    c = to_float(ceiling, "ceiling")
    if not math.isfinite(c) or c <= 0:
        raise ConfigError(f"ceiling must be a positive finite {metric} (of a model trained on all slices), got {ceiling!r}")
    fr = [float(f) for f in fractions]
    out: dict[str, dict] = {}
    for g, cur in cost_curves(rows, metric, x).items():
        entry: dict[Any, Any] = {"target": {}, "round": {}, "seed_median": {}, "per_seed": {}}
        for f in fr:
            t = f * c
            entry["target"][f] = t
            hit = np.isfinite(cur["mean"]) & (cur["mean"] >= t - 1e-12)
            j = int(np.argmax(hit)) if hit.any() else None
            entry[f] = None if j is None else float(cur["x"][j])
            entry["round"][f] = None if j is None else int(cur["round"][j])
            per = {}
            for s, (xs, ys) in cur["per_seed"].items():
                ok = np.isfinite(ys) & (ys >= t - 1e-12)
                per[s] = float(xs[int(np.argmax(ok))]) if ok.any() else None
            entry["per_seed"][f] = per
            med = float(np.median([math.inf if v is None else v for v in per.values()])) if per else math.inf
            entry["seed_median"][f] = med if math.isfinite(med) else None
        entry["max_x"] = float(np.nanmax(cur["x"])) if np.isfinite(cur["x"]).any() else None
        entry["best"] = float(np.nanmax(cur["mean"])) if np.isfinite(cur["mean"]).any() else None
        entry["seeds"] = len(cur["per_seed"])
        out[g] = entry
    return out


def _slices_text(px: float | None, slice_px: int, *, never: str = "not reached") -> str:
    return never if px is None else f"{px / slice_px:.2f} ({int(round(px)):,} px)".replace(",", " ")


def cost_efficiency_markdown(
    efficiency: Mapping[str, Mapping],
    *,
    slice_px: int,
    reference: str = "distributed",
    ceiling: float | None = None,
    digits: int = 3,
) -> str:
    """Render :func:`cost_efficiency` of reviewed pixels as Markdown.

    The reviewed area is given in slice-equivalents (pixels / the pixels of one slice,
    ``slice_px``) with the pixels in brackets, to 95 % and 99 % of the ceiling, the seed
    medians, the best mean figure, and at each fraction the ratio to ``reference``
    (evenly distributed whole slices) where both reach it.
    """
    if not efficiency:
        raise ConfigError("efficiency is empty: nothing to render")
    ref = efficiency.get(reference)
    table = []
    for g, e in efficiency.items():
        fr = [k for k in e if isinstance(k, float)]
        row: dict[str, Any] = {"strategy": g}
        for f in fr:
            tgt = e["target"][f]
            row[f"reviewed to {f:.0%} (IoU >= {tgt:.{digits}f}), slices"] = _slices_text(
                e[f], slice_px, never=f"not reached (max {(e['max_x'] or 0) / slice_px:.2f})")
            med = e["seed_median"][f]
            row[f"seed median, {f:.0%}"] = "not reached" if med is None else f"{med / slice_px:.2f}"
            if ref is not None and g != reference:
                row[f"vs {reference}, {f:.0%}"] = (
                    f"{e[f] / ref[f]:.2f}" if e[f] is not None and ref.get(f) else "-")
        row["best mean IoU"] = e["best"]
        row["seeds"] = e["seeds"]
        table.append(row)
    cols = list(dict.fromkeys(k for r in table for k in r))
    lines = []
    if ceiling is not None:
        lines.append(f"Ceiling (model trained on all slices): solid IoU = {float(ceiling):.{digits}f}. Reviewed area in "
                     f"slice-equivalents (pixels / {slice_px} pixels of one slice), audits included.\n")
    lines.append(markdown_table([{c: r.get(c, "-") for c in cols} for r in table], digits=digits, columns=cols))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the stopping rule against the true learning curve
# ---------------------------------------------------------------------------------------


def stopping_summary(rows: Sequence[Mapping], ceiling: float | None, *, within: float = 0.01) -> dict:
    """Where the stopping rule said stop against the truth, per run, and a fixed-N baseline.

    Parameters
    ----------
    rows : the study's rows: ``run``, ``strategy``, ``seed``, ``round``, ``iou_solid`` (the
        model trained in the round), ``stop`` (the rule's decision once the round was
        corrected: True, False, or None without audit data), ``est_lo``/``est_hi`` (its
        interval) and ``prefill_iou`` (the true figure of the model the estimate is about:
        the one that pre-filled the round).
    ceiling : the all-slices figure (None: no target rounds, coverage only).
    within : the target is the first round whose figure is within this fraction of the
        ceiling (``iou_solid >= (1 - within) * ceiling``).

    Returns
    -------
    ``{"runs": [per run {"run", "strategy", "seed", "rounds", "audited", "stop_round",
    "target_round", "error" (stop - target), "covered", "coverage"}], "fixed_n": N,
    "rule": {...}, "fixed": {...}, "coverage": pooled fraction}``. ``fixed_n`` is the best
    single "stop after N rounds" in hindsight (the median target round over the runs), a
    baseline that needs the truth; "rule"/"fixed" count runs within ±1 round, more than 2
    rounds early, and the mean absolute error in rounds over runs with both rounds known.
    """
    rows = check_rows(rows, ("run", "round", "iou_solid"))
    runs: dict[str, list[Mapping]] = {}
    for r in rows:
        runs.setdefault(str(r["run"]), []).append(r)
    per_run: list[dict[str, Any]] = []
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: to_int(r["round"], "round"))
        audited = [r for r in rs if r.get("stop") is not None and r.get("est_lo") is not None]
        if not audited:
            continue
        stop = next((to_int(r["round"], "round") for r in audited if r.get("stop") in (True, "True", "true")), None)
        target = None
        if ceiling is not None:
            target = next((to_int(r["round"], "round") for r in rs
                           if math.isfinite(to_float(r["iou_solid"])) and to_float(r["iou_solid"]) >= (1 - within) * ceiling),
                          None)
        known = [r for r in audited if r.get("prefill_iou") is not None and math.isfinite(to_float(r["prefill_iou"]))]
        covered = sum(to_float(r["est_lo"]) - 1e-12 <= to_float(r["prefill_iou"]) <= to_float(r["est_hi"]) + 1e-12
                      for r in known)
        per_run.append({"run": name, "strategy": str(rs[0].get("strategy")), "seed": rs[0].get("seed"),
                        "rounds": to_int(rs[-1]["round"], "round"), "audited": len(audited), "stop_round": stop,
                        "target_round": target, "error": None if stop is None or target is None else stop - target,
                        "covered": int(covered), "checked": len(known),
                        "coverage": covered / len(known) if known else None})
    targets = [p["target_round"] for p in per_run if p["target_round"] is not None]
    fixed_n = int(np.median(targets)) if targets else None

    def score(errors: list[int]) -> dict:
        return {"runs": len(errors), "within_1": sum(abs(e) <= 1 for e in errors),
                "early_over_2": sum(e < -2 for e in errors),
                "mean_abs": float(np.mean(np.abs(errors))) if errors else None}

    for p in per_run:
        p["fixed_error"] = None if fixed_n is None or p["target_round"] is None else fixed_n - p["target_round"]
    checked = sum(p["checked"] for p in per_run)
    return {
        "runs": per_run,
        "within": within,
        "fixed_n": fixed_n,
        "rule": {**score([p["error"] for p in per_run if p["error"] is not None]),
                 "never_stopped": sum(p["stop_round"] is None for p in per_run),
                 "target_not_reached": sum(p["target_round"] is None for p in per_run)},
        "fixed": score([p["fixed_error"] for p in per_run if p["fixed_error"] is not None]),
        "coverage": (sum(p["covered"] for p in per_run) / checked) if checked else None,
    }


def stopping_markdown(summary: Mapping) -> str:
    """Render :func:`stopping_summary` as Markdown: one row per run and a summary line."""
    if not summary.get("runs"):
        return "No run has audited rounds (runs with `audit`): the stopping rule cannot be evaluated.\n"
    table = []
    for p in summary["runs"]:
        table.append({
            "run": p["run"], "strategy": p["strategy"], "seed": p["seed"], "rounds": p["rounds"],
            "audited": p["audited"],
            "rule stops at": "never" if p["stop_round"] is None else p["stop_round"],
            f"first within {summary['within']:.0%} of ceiling": "never" if p["target_round"] is None else p["target_round"],
            "rule - target": "-" if p["error"] is None else f"{p['error']:+d}",
            f"fixed N={summary['fixed_n'] if summary['fixed_n'] is not None else '-'} - target":
                "-" if p["fixed_error"] is None else f"{p['fixed_error']:+d}",
            "interval covers truth": "-" if p["coverage"] is None else f"{p['covered']}/{p['checked']}",
        })
    rule, fixed = summary["rule"], summary["fixed"]

    def line(name: str, s: Mapping) -> str:
        if not s["runs"]:
            return f"{name}: no run with both rounds known"
        return (f"{name}: within ±1 round in {s['within_1']} of {s['runs']} runs, more than 2 rounds early in "
                f"{s['early_over_2']}, mean |error| {s['mean_abs']:.2f} rounds")

    cov = summary.get("coverage")
    lines = [markdown_table(table), "",
             line("Stopping rule", rule) + (f"; never said stop in {rule['never_stopped']}" if rule["never_stopped"] else "")
             + (f"; target not reached in {rule['target_not_reached']}" if rule["target_not_reached"] else "") + ".",
             (line(f"Fixed 'stop after {summary['fixed_n']} rounds' (the best single N in hindsight)", fixed) + "."
              if summary["fixed_n"] is not None else "Fixed 'stop after N rounds': no run reached the target."),
             "90 % interval contains the true IoU of the model it estimates in "
             + ("-" if cov is None else f"{100 * cov:.0f} %") + " of audited rounds."]
    return "\n".join(lines) + "\n"
