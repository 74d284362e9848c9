"""The stopping rule: is another round worth it? Answered from the audits, without ground truth.

An audit (``query --audit``) adds units picked uniformly at random among the unlabelled
ones — one whole slice in a slice round, ``[session] audit_tiles`` tiles in a region
round — and they are always corrected completely (in a simulation by the perfect
oracle). Their corrections are therefore an unbiased sample of the errors of the model
that pre-filled the round: per round the manifest keeps each audit unit's confusion
matrix (rows: corrected class, columns: pre-filled class; a whole-slice unit also per
tile of the session's grid). From them (docs/architecture.md §8):

- **The estimate** of round r: the headline IoU of the model that pre-filled round r
  (the solid IoU for C = 2, the mean IoU of the non-pore phases for C >= 3) from the
  summed confusion of the round's audit units, with a 90 % interval: the estimate ± the
  Student t quantile with n - 1 degrees of freedom times the bootstrap standard error over
  the n units (2000 resamples, a fixed seed: the same manifest gives the same interval;
  the t quantile and the n / (n - 1) correction widen the interval where a percentile
  bootstrap over a handful of units is too narrow). The tiles of a whole-slice audit are
  its units. With a single unit the spread is unknown and the interval is [0, 1].
- **The expected gain** of another round, from the last audited rounds (up to
  :data:`TREND_ROUNDS`):

  - from the estimates: ``g_est = max(0, slope)``, the least-squares slope of the
    estimates against the round index (a fitted trend: one noisy audit moves it less
    than a difference of two rounds would);
  - from the correction cost of the queried (non-audit) units: with the correction rate
    ``q = changed / reviewed`` pixels of a round, its relative fall per round
    ``rho = max(0, 1 - (q[-1] / q[-3]) ** (1 / (r[-1] - r[-3])))``, and
    ``g_cost = (1 - e[-1]) * rho``: the gain if the error shrinks next round by the same
    fraction as the correction rate did;
  - ``expected_gain = max(g_est, g_cost)``: the rule says stop only when both trends are
    flat. With two audited rounds the same formulas use the last two.

- **The decision**: "stop" when at least :data:`MIN_ROUNDS` rounds carry audits and
  ``expected_gain < stop_gain`` (``[session] stop_gain``, default 0.005) both now and at
  the previous audited round (one flat reading of noisy audits is not enough), else
  "continue".

Everything here is a pure function of the manifest dict (no session, no files), so the
rule can be replayed round by round on a finished simulation (:func:`history`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["estimate", "history", "audit_units", "headline_iou", "MIN_ROUNDS", "BOOTSTRAP", "LEVEL"]

MIN_ROUNDS = 3
"""Rounds with audits needed before the rule may say stop."""
TREND_ROUNDS = 3
"""The expected gain is fitted over at most this many of the last audited rounds."""
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697, 60: 1.671}
"""One-sided 95 % quantiles of Student's t by degrees of freedom (1.645 beyond 60)."""
BOOTSTRAP = 2000
"""Bootstrap resamples of the audit units per round."""
LEVEL = 0.90
"""Coverage of the interval (a central 90 % percentile interval)."""


def headline_iou(conf: np.ndarray) -> np.ndarray:
    """The headline IoU of summed confusion matrices.

    Parameters
    ----------
    conf : (..., C, C) counts, rows = true (corrected) class, columns = predicted
        (pre-filled) class.

    Returns
    -------
    float64 (...): the solid IoU (class 0) for C = 2, the mean IoU of the classes other
    than the pore (1) for C >= 3, over the classes present (true or predicted); NaN where
    none is.
    """
    conf = np.asarray(conf, dtype=np.float64)
    c = conf.shape[-1]
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    solids = [0] if c == 2 else [k for k in range(c) if k != 1]
    sel = iou[..., solids]
    n = np.isfinite(sel).sum(axis=-1)
    total = np.where(np.isfinite(sel), sel, 0.0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def audit_units(rnd: Mapping[str, Any], n_classes: int) -> list[np.ndarray]:
    """The confusion matrices of a round's audit units, the units of the bootstrap.

    A unit of ``audit_units`` (in the round, or in its ``cost``) is one tile or one whole
    slice ``{"z", "t", "confusion"}``; a whole slice with ``"tiles"`` (its confusion per
    tile of the grid) counts as its tiles. A round without them (no audit, or recorded
    before audits kept their confusion) has none.
    """
    units = rnd.get("audit_units")
    if units is None:
        units = (rnd.get("cost") or {}).get("audit_units")
    out: list[np.ndarray] = []
    for u in units or []:
        parts = u.get("tiles") or [u.get("confusion")]
        for conf in parts:
            if conf is None:
                continue
            a = np.asarray(conf, dtype=np.float64)
            if a.shape != (n_classes, n_classes):
                continue  # a unit of another class count cannot be summed with these
            out.append(a)
    return out


def _round_costs(rnd: Mapping[str, Any], px: int) -> tuple[float, float] | None:
    """(changed, reviewed) pixels of the queried units of a round, its audit units left out."""
    cost = rnd.get("cost")
    if cost and cost.get("reviewed_px"):
        audit = next((a for a in (cost.get("audit"), rnd.get("audit")) if isinstance(a, Mapping)), {})
        reviewed = float(cost["reviewed_px"]) - float(audit.get("reviewed_px", 0) or 0)
        changed = float(cost.get("changed_px", 0) or 0) - float(audit.get("changed_px", 0) or 0)
    else:  # a round recorded before "cost": whole slices, their changed pixels per slice
        costs = rnd.get("correction_cost") or {}
        zs = [z for z in rnd.get("full_slices", []) if str(z) in costs and z != rnd.get("audit")]
        reviewed = float(len(zs) * px)
        changed = float(sum(costs[str(z)] for z in zs))
    if reviewed <= 0:
        return None
    return changed, reviewed


def _interval(units: list[np.ndarray], seed: int, index: int) -> tuple[float, float]:
    """90 % percentile-bootstrap interval of the headline IoU over the units."""
    n = len(units)
    if n < 2:
        return 0.0, 1.0  # one unit: its spread is unknown
    stack = np.stack(units).reshape(n, -1)
    rng = np.random.default_rng([int(seed), int(index)])
    draws = rng.integers(0, n, size=(BOOTSTRAP, n))
    counts = np.zeros((BOOTSTRAP, n))
    np.add.at(counts, (np.repeat(np.arange(BOOTSTRAP), n), draws.ravel()), 1.0)
    c = units[0].shape[0]
    ious = headline_iou((counts @ stack).reshape(BOOTSTRAP, c, c))
    ious = ious[np.isfinite(ious)]
    if ious.size < 2:
        return 0.0, 1.0
    centre = float(headline_iou(np.sum(units, axis=0)))
    se = float(np.std(ious)) * math.sqrt(n / (n - 1))
    half = _t95(n - 1) * se
    return max(0.0, centre - half), min(1.0, centre + half)


def _t95(df: int) -> float:
    """The one-sided 95 % quantile of Student's t with ``df`` degrees of freedom (interpolated)."""
    keys = sorted(_T95)
    if df >= keys[-1]:
        return 1.645
    below = max(k for k in keys if k <= df)
    above = min(k for k in keys if k >= df)
    if below == above:
        return _T95[below]
    w = (df - below) / (above - below)
    return (1 - w) * _T95[below] + w * _T95[above]


def _gains(per_round: list[dict]) -> tuple[float | None, float | None]:
    """(gain from the estimates, gain from the correction cost) over the last audited rounds."""
    if len(per_round) < 2:
        return None, None
    recent = per_round[-TREND_ROUNDS:]
    r = np.array([p["round"] for p in recent], dtype=np.float64)
    e = np.array([p["iou"] for p in recent], dtype=np.float64)
    slope = float(np.polyfit(r, e, 1)[0]) if len(recent) >= 2 and np.ptp(r) > 0 else 0.0
    g_est = max(0.0, slope)
    g_cost = None
    first, last = per_round[-min(MIN_ROUNDS, len(per_round))], per_round[-1]
    span = max(1, last["round"] - first["round"])
    q0, q1 = first["correction_rate"], last["correction_rate"]
    if q0 is not None and q1 is not None and q0 > 0:
        rho = max(0.0, 1.0 - (q1 / q0) ** (1.0 / span)) if q1 > 0 else 1.0
        g_cost = (1.0 - last["iou"]) * rho
    return g_est, g_cost


def _metric_name(n_classes: int) -> str:
    return "solid IoU" if n_classes == 2 else "mean solid-phase IoU"


def estimate(
    m: Mapping[str, Any],
    n_classes: int,
    *,
    stop_gain: float = 0.005,
    rng_seed: int = 0,
) -> dict | None:
    """The stopping rule on a session's manifest (see the module docstring for the formulas).

    Parameters
    ----------
    m : the manifest (``rounds`` with their audit units and costs; ``stack.shape``).
    n_classes : C of the session.
    stop_gain : the expected gain of another round below which to stop (``[session] stop_gain``).
    rng_seed : seed of the bootstrap (each round draws from ``(rng_seed, round)``).

    Returns
    -------
    None when no round has audit units; else a JSON-serialisable dict:
    ``rounds`` (per audited round ``{"round", "iou", "lo", "hi", "n_units",
    "correction_rate"}``: the estimate of the model that pre-filled the round, its 90 %
    interval, the units, changed/reviewed pixels of its queried units or None), ``round``,
    ``iou``, ``lo``, ``hi``, ``half_width`` (the latest estimate), ``expected_gain``
    (None with one audited round), ``gain_from_estimates``, ``gain_from_cost``,
    ``stop_gain``, ``n_audited``, ``min_rounds``, ``metric``, ``decision`` ("continue" or
    "stop") and ``sentence`` (what ``status`` prints).
    """
    c = int(n_classes)
    shape = (m.get("stack") or {}).get("shape") or [1, 1, 1]
    px = int(np.prod(shape[1:]))
    per_round: list[dict] = []
    for rnd in m.get("rounds", []):
        if int(rnd.get("index", 0)) == 0:
            continue
        units = audit_units(rnd, c)
        if not units:
            continue
        iou = float(headline_iou(np.sum(units, axis=0)))
        if not math.isfinite(iou):
            continue  # no solid in the audit and none predicted: nothing to estimate
        lo, hi = _interval(units, rng_seed, int(rnd["index"]))
        rc = _round_costs(rnd, px)
        per_round.append({"round": int(rnd["index"]), "iou": iou, "lo": min(lo, iou), "hi": max(hi, iou),
                          "n_units": len(units), "correction_rate": None if rc is None else rc[0] / rc[1]})
    if not per_round:
        return None
    last = per_round[-1]
    g_est, g_cost = _gains(per_round)
    gains = [g for g in (g_est, g_cost) if g is not None]
    gain = max(gains) if gains else None
    before = [g for g in _gains(per_round[:-1]) if g is not None]
    flat_before = len(per_round) - 1 >= MIN_ROUNDS and bool(before) and max(before) < float(stop_gain)
    n_audited = len(per_round)
    stop = n_audited > MIN_ROUNDS and gain is not None and gain < float(stop_gain) and flat_before
    half = (last["hi"] - last["lo"]) / 2.0
    name = _metric_name(c)
    head = f"estimated {name} {last['iou']:.3f} ± {half:.3f}"
    if stop:
        sentence = f"stop: {head}, expected gain of another round below {float(stop_gain):g}"
    elif n_audited < MIN_ROUNDS:
        sentence = (f"continue: {head}; {n_audited} of the {MIN_ROUNDS} audited rounds the rule needs before it can "
                    "say stop (query --audit)")
    else:
        sentence = f"continue: {head}, expected gain of another round {gain:.3f} (stop below {float(stop_gain):g})"
    return {
        "rounds": per_round,
        "round": last["round"],
        "iou": last["iou"],
        "lo": last["lo"],
        "hi": last["hi"],
        "half_width": half,
        "expected_gain": gain,
        "gain_from_estimates": g_est,
        "gain_from_cost": g_cost,
        "stop_gain": float(stop_gain),
        "n_audited": n_audited,
        "min_rounds": MIN_ROUNDS,
        "metric": name,
        "decision": "stop" if stop else "continue",
        "sentence": sentence,
    }


def history(
    m: Mapping[str, Any],
    n_classes: int,
    *,
    stop_gain: float = 0.005,
    rng_seed: int = 0,
    rounds: Sequence[int] | None = None,
) -> dict[int, dict | None]:
    """The rule replayed: for each round index, what :func:`estimate` said once that round
    was corrected (the manifest cut after it). ``rounds``: which (default every round > 0)."""
    all_rounds = list(m.get("rounds", []))
    wanted = [int(r["index"]) for r in all_rounds if int(r["index"]) > 0] if rounds is None else [int(i) for i in rounds]
    out: dict[int, dict | None] = {}
    for i in wanted:
        cut = {**m, "rounds": [r for r in all_rounds if int(r["index"]) <= i]}
        out[i] = estimate(cut, n_classes, stop_gain=stop_gain, rng_seed=rng_seed)
    return out
