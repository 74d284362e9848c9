"""Where a session stands: rounds, labels, costs, metrics, and the next command to run."""

from __future__ import annotations

import numpy as np

from activeseg.loop import stopping
from activeseg.loop.gate import Verdict
from activeseg.loop.state import (
    current_entry,
    is_tile_round,
    labelled_slices,
    last_round,
    pending_regions,
    pending_slices,
    reverted_in,
    reverted_pairs,
    shell_quote,
)
from activeseg.session import Session


def next_step(session: Session) -> str:
    """What to do next, as a command line (paths shell-quoted, ready to paste)."""
    m = session.manifest
    root = shell_quote(session.root)
    last = last_round(m)
    if last is None:
        nz = int(m["stack"]["shape"][0])
        spread = ",".join(str(int((i + 0.5) * nz / 3)) for i in range(3))
        how = f"--slices {spread}" if m.get("truth") else "--scribbles FILE | --labels FILE"
        return f"activeseg bootstrap {root} {how}"
    if pending_slices(last):
        folder = shell_quote(session.path(f"rounds/r{last['index']:03d}"))
        return f"correct the masks in {folder}, then: activeseg import {root}"
    if pending_regions(last):
        folder = shell_quote(session.path(f"rounds/r{last['index']:03d}"))
        return f"correct the region masks (zNNNN_tTTT_mask.tif) in {folder}, then: activeseg import {root}"
    if last["index"] > 0 and last.get("status") not in ("trained", "skipped"):
        return f"activeseg train {root}"
    if len(labelled_slices(m)) >= int(m["stack"]["shape"][0]):  # nothing left to ask
        return f"activeseg export {root} OUT.tif   (every slice is labelled)"
    if last["index"] == 0 and not m.get("model"):
        return f"activeseg query {root} -n 5 --strategy distributed   (or train a first network: activeseg train {root})"
    if is_tile_round(last):  # go on with regions
        return f"activeseg query {root} -n 16 --strategy tile_entropy"
    return f"activeseg query {root} -n 5 --strategy spaced_entropy"


def status(session: Session) -> dict:
    """A JSON-serialisable summary: rounds, labels, metrics, costs, stopping signals."""
    m = session.manifest
    nz = int(m["stack"]["shape"][0])
    rounds = []
    prev_por = None
    for r in m["rounds"]:
        costs = r.get("correction_cost", {})
        full = r.get("full_slices", [])
        px = int(np.prod(m["stack"]["shape"][1:]))
        row = {
            "index": r["index"],
            "strategy": r.get("strategy"),
            "status": r.get("status"),
            "queried": r.get("queried", []),
            "imported": r.get("imported", []),
            "pending": pending_slices(r),
            "full_slices": [z for z in full if (r["index"], z) not in reverted_pairs(m)],
            "scribble_pixels": r.get("scribble_pixels", 0),
            "correction_cost_px": int(sum(costs.get(str(z), 0) for z in full)) if r["index"] > 0 else None,
            "correction_cost_frac": (
                float(np.mean([costs[str(z)] / px for z in full if str(z) in costs])) if r["index"] > 0 and full else None
            ),
            "metrics": r.get("metrics"),
            "class_iou": _class_iou(r.get("metrics")),
            "metrics_unlabelled": r.get("metrics_unlabelled"),
            "candidate_metrics": r.get("candidate_metrics"),
            "gate": r.get("gate"),
            "metrics_fell": r.get("metrics_fell"),
            "reverted": sorted(reverted_in(m, r)),
        }
        if r.get("audit") is not None and str(r["audit"]) in costs:
            row["audit_error"] = costs[str(r["audit"])] / px
        audit = (r.get("cost") or {}).get("audit")
        if audit and audit.get("reviewed_px"):  # a round of regions: its audit tiles together
            row["audit_error"] = audit["changed_px"] / audit["reviewed_px"]
        row.update(round_cost(r, px))
        sf = r.get("scores_file")
        if sf and session.path(sf).exists():
            por = session.load_npz(sf).get("porosity")
            if por is not None and np.isfinite(por).any():
                mean_por = float(np.nanmean(por))
                row["predicted_porosity"] = mean_por
                if prev_por is not None:
                    row["porosity_change"] = mean_por - prev_por
                prev_por = mean_por
        rounds.append(row)
    uncertainty = None
    last_scores = next((r.get("scores_file") for r in reversed(m["rounds"]) if r.get("scores_file")), None)
    if last_scores and session.path(last_scores).exists():
        sc = session.load_npz(last_scores)
        for name in ("entropy", "margin", "bald", "rf_disagreement"):
            if name in sc:
                uncertainty = {"name": name, "values": [None if not np.isfinite(v) else float(v) for v in sc[name]]}
                break
    return {
        "session": str(session.root),
        "stack": {"path": m["stack"]["path"], "shape": m["stack"]["shape"]},
        "has_truth": bool(m.get("truth")),
        "n_classes": int((m.get("config") or {}).get("n_classes", 2)),
        "sections": bool((m.get("config") or {}).get("sections", False)),  # absent in older sessions: a z-stack
        "rounds": rounds,
        "cost_total": {k: int(sum(r[k] for r in rounds)) for k in ("reviewed_px", "changed_px")},
        "labelled_slices": labelled_slices(m),
        "n_labelled": len(labelled_slices(m)),
        "n_slices": nz,
        "model": m.get("model"),  # the best network so far (warm starts); what exports is "current_model"
        "best_network": m.get("model"),
        "current_model": current_summary(m),
        "tombstones": m.get("tombstones", []),
        "uncertainty": uncertainty,
        "next_step": next_step(session),
        "stopping": stopping.estimate(m, int((m.get("config") or {}).get("n_classes", 2)),
                                      stop_gain=float((m.get("config") or {}).get("stop_gain", 0.005))),
    }


def round_cost(r: dict, px: int) -> dict:
    """A round's cost fields for ``status``: ``unit`` ("slices" or "tiles"), ``regions``
    (``[[z, t], ...]``), ``reviewed_px`` and ``changed_px`` (docs/architecture.md §5).

    A round recorded before ``cost`` existed (whole slices only) is derived from its
    ``correction_cost`` and the slice size ``px``: each corrected slice reviewed whole.
    Round 0 (bootstrap) reviews nothing.
    """
    out = {"unit": "tiles" if is_tile_round(r) else "slices", "regions": [list(x) for x in r.get("regions", [])]}
    cost = r.get("cost")
    if cost is not None:
        return {**out, "reviewed_px": int(cost.get("reviewed_px", 0)), "changed_px": int(cost.get("changed_px", 0))}
    if r["index"] == 0:
        return {**out, "reviewed_px": 0, "changed_px": 0}
    costs = r.get("correction_cost", {})
    zs = [z for z in r.get("full_slices", []) if str(z) in costs]
    return {**out, "reviewed_px": len(zs) * int(px), "changed_px": int(sum(int(costs[str(z)]) for z in zs))}


def current_summary(m: dict) -> dict:
    """Which model pre-fills and exports now, and why (the last gate's decision, with both figures)."""
    cur = current_entry(m)
    gate = next((r["gate"] for r in reversed(m["rounds"]) if r.get("gate")), None)
    if gate is None:
        why = ("no network trained yet" if cur["kind"] == "rf" else "the latest network (trained before the gate existed)")
    else:
        fields = Verdict.__dataclass_fields__
        why = Verdict(**{k: v for k, v in gate.items() if k in fields}).sentence()
        if not gate.get("gated", True):
            why += " (accepted with --no-gate)"
    return {"kind": cur["kind"], "version": cur.get("version"), "path": cur.get("path"), "why": why}


def _class_iou(metrics: dict | None) -> list | None:
    """Per-class IoU ``[iou_c0, iou_c1, ...]`` of a round's metrics (sessions of C >= 3
    classes; None for binary ones, whose metrics hold ``iou_solid`` / ``iou_pore``)."""
    if not metrics or "iou_c0" not in metrics:
        return None
    out, k = [], 0
    while f"iou_c{k}" in metrics:
        out.append(metrics[f"iou_c{k}"])
        k += 1
    return out
