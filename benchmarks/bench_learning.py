"""Benchmark: the network against its Random Forest bootstrap on few labelled slices, with
and without pseudo-labels, and what the model gate makes of it.

Protocol: a hard synthetic volume (blobs, porosity 0.80; or ``--phases 3`` for pore plus
two solids) per seed; a session is initialised with the ground truth and bootstrapped
from ``k`` fully labelled, evenly spaced slices (the centres of ``k`` equal bins of z);
one training of the default network (``--steps`` steps) with pseudo-labels (the RF's
confident predictions of 8 unlabelled slices at ``--pseudo-weight``, default 0.7) and one without, from the
same bootstrap. Figures are over the UNLABELLED slices only (held out of every fit):
solid-phase IoU (for 3 phases, the mean IoU of the two solids and each phase's IoU) for
the RF, for each candidate network as trained (without the gate: the gate is not what
makes these figures), and for the model the gate made current. ``--sections`` replaces
the volume by a stack of unrelated 2D sections (one slice of each of Z different
volumes) declared as ``sections``: the situation of manually labelled sections of a real
sample.

Usage::

    python benchmarks/bench_learning.py --seeds 0 1 2 --budgets 1 2 5
    python benchmarks/bench_learning.py --sections --shape 12 160 160 --budgets 1
    python benchmarks/bench_learning.py --phases 3 --budgets 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _volume(shape, seed, phases, sections):
    from activeseg.synth import synthesize

    kw = {"phases": phases} if phases > 2 else {}
    if not sections:
        v = synthesize(tuple(shape), structure="blobs", porosity=0.8, difficulty="hard", seed=seed, **kw)
        return v.image, v.truth
    nz, ny, nx = shape
    imgs, truths = [], []
    for i in range(nz):  # one slice from each of nz unrelated volumes
        v = synthesize((8, ny, nx), structure="blobs", porosity=0.8, difficulty="hard", seed=1000 * seed + i, **kw)
        imgs.append(v.image[4])
        truths.append(v.truth[4])
    return np.stack(imgs), np.stack(truths)


def _scores(model, image, truth, zs, n_classes):
    """Headline IoU and per-class IoU of ``model`` over the slices ``zs``."""
    inter = np.zeros(n_classes)
    union = np.zeros(n_classes)
    for i in range(0, len(zs), 8):
        part = zs[i : i + 8]
        pred = np.argmax(model.predict_proba(image, part), axis=1)
        t = np.asarray(truth[part])
        for c in range(n_classes):
            inter[c] += np.count_nonzero((pred == c) & (t == c))
            union[c] += np.count_nonzero((pred == c) | (t == c))
    iou = inter / np.maximum(union, 1)
    solids = [0] if n_classes == 2 else [c for c in range(n_classes) if c != 1]
    return float(np.mean(iou[solids])), [round(float(v), 4) for v in iou]


def run_one(args, seed, k, pseudo, image_path, truth_path, image, truth, workdir):
    from activeseg import loop
    from activeseg.loop.state import fit_session_rf, open_image
    from activeseg.network import load_model

    nz = image.shape[0]
    cfg = {"seed": seed, "n_classes": args.phases, "sections": args.sections, "pseudo_train": "on" if pseudo else "off",
           "train": {"pseudo_weight": args.pseudo_weight}}
    root = workdir / f"s{seed}-k{k}-{'p' if pseudo else 'n'}"
    session = loop.init_session(root, image_path, truth=truth_path, config=cfg)
    zs = [int((i + 0.5) * nz / k) for i in range(k)]
    loop.bootstrap(session, slices=zs)
    t = time.perf_counter()
    res = loop.train(session, steps=args.steps, evaluate=False)
    seconds = time.perf_counter() - t
    m = session.manifest
    rnd = m["rounds"][-1]
    with open_image(session) as img:
        rest = [z for z in range(nz) if z not in zs]
        rf = fit_session_rf(session, img)
        rf_iou, rf_cls = _scores(rf, img, truth, rest, args.phases)
        net = load_model(session.path(rnd["candidate_model"]))
        net_iou, net_cls = _scores(net, img, truth, rest, args.phases)
    gate = rnd["gate"]
    return {"seed": seed, "k": k, "pseudo": pseudo, "rf_iou": rf_iou, "rf_classes": rf_cls, "net_iou": net_iou,
            "net_classes": net_cls, "accepted": gate["accepted"], "gate_candidate": gate["candidate"],
            "gate_incumbent": gate["incumbent"], "current_iou": net_iou if gate["accepted"] else rf_iou,
            "train_s": round(seconds, 1), "pseudo_px": (res["history"]["pseudo"] or {}).get("pixels", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 160, 160))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--phases", type=int, default=2)
    ap.add_argument("--sections", action="store_true")
    ap.add_argument("--no-pseudo-compare", action="store_true", help="only the default (pseudo-labels on)")
    ap.add_argument("--pseudo-weight", type=float, default=0.7, help="[train] pseudo_weight (default 0.7)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    from activeseg import io

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            image, truth = _volume(args.shape, seed, args.phases, args.sections)
            ip, tp = work / f"image{seed}.tif", work / f"truth{seed}.tif"
            io.write_stack(ip, image)
            io.write_stack(tp, truth, kind="labels")
            for k in args.budgets:
                for pseudo in ((True,) if args.no_pseudo_compare else (True, False)):
                    row = run_one(args, seed, k, pseudo, ip, tp, image, truth, work)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    kind = "sections" if args.sections else "volume"
    print(f"{kind} {tuple(args.shape)}, {args.phases} phases, {args.steps} steps; mean (min-max) over seeds {args.seeds}, "
          "unlabelled slices only")
    print("| labelled slices | pseudo-labels | RF | network (no gate) | network - RF | gate accepted | current model |")
    print("|---:|---|---:|---:|---:|---:|---:|")

    def fmt(v):
        return f"{np.mean(v):.3f} ({np.min(v):.3f}-{np.max(v):.3f})"

    for k in args.budgets:
        for pseudo in (True, False):
            sel = [r for r in rows if r["k"] == k and r["pseudo"] == pseudo]
            if not sel:
                continue
            rf = [r["rf_iou"] for r in sel]
            net = [r["net_iou"] for r in sel]
            cur = [r["current_iou"] for r in sel]
            print(f"| {k} | {'on' if pseudo else 'off'} | {fmt(rf)} | {fmt(net)} | {np.mean(net) - np.mean(rf):+.3f} | "
                  f"{sum(r['accepted'] for r in sel)}/{len(sel)} | {fmt(cur)} |")
    if args.phases > 2:
        print("\nper-class IoU (pore = class 1), mean over seeds:")
        for k in args.budgets:
            for pseudo in (True, False):
                sel = [r for r in rows if r["k"] == k and r["pseudo"] == pseudo]
                if sel:
                    print(f"k={k} pseudo={'on' if pseudo else 'off'}: RF {np.mean([r['rf_classes'] for r in sel], 0).round(3)}"
                          f" network {np.mean([r['net_classes'] for r in sel], 0).round(3)}")


if __name__ == "__main__":
    main()
