"""Benchmark: region queries against whole slices by reviewed area, and the stopping rule.

Protocol: three hard synthetic volumes (``--shape``, default 96 x 192 x 192): stationary
(blobs, porosity 0.80), graded (porosity 0.75 with a gradient of 0.3 along z) and a
layered asymmetric membrane (a dense skin over a porous support, ``structure="membrane"``).
On each, the ``regions`` study preset (:func:`activeseg.study.regions_preset`) through
:func:`activeseg.study.run_study`: ``distributed`` and ``spaced_entropy`` add 2 whole
slices per round, ``tile_entropy``, ``tile_boundary`` and ``tile_random`` add tiles of
``--tile`` pixels (a quarter of a slice round's area per round), every query with its
audit (one random slice, or ``[session] audit_tiles`` = 4 random tiles; corrected
perfectly), the tile runs corrected by the effort-limited oracle
(``activeseg.study.REGION_EFFORT``), and one all-slices ceiling per volume. Seeds: 3 on
the stationary volume, 1 on the others (``--seeds``, ``--other-seeds``).

Printed as one Markdown block (for BENCHMARKS.md): per volume and strategy the reviewed
area (slice-equivalents, audits included) to reach 95 % and 99 % of the ceiling, the
ratio of the best region strategy to distributed whole slices, and the stopping rule per
run (the round where it says stop vs the first round within 1 % of the ceiling, interval
coverage of the true IoU of the model it estimates) beside the best fixed "stop after N
rounds" in hindsight.

Usage::

    python benchmarks/bench_regions.py --jobs 2             # full size (<= 60 min on 2 cores)
    python benchmarks/bench_regions.py --quick --jobs 2     # small (<= 5 min)
    python benchmarks/bench_regions.py --out /tmp/regions   # keep the studies (re-running resumes them)
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

VOLUMES = ("stationary", "graded", "membrane")
LIGHT_MODEL = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}


def _volume(kind: str, shape, seed: int):
    from activeseg import synth

    if kind == "stationary":
        return synth.synthesize(tuple(shape), structure="blobs", porosity=0.8, difficulty="hard", seed=seed)
    if kind == "graded":
        return synth.synthesize(tuple(shape), structure="blobs", porosity=0.75, porosity_gradient=0.3,
                                difficulty="hard", seed=seed)
    if kind == "membrane":
        return synth.synthesize(tuple(shape), structure="membrane", porosity=0.8, difficulty="hard", seed=seed)
    raise SystemExit(f"unknown volume {kind!r}; choose from {', '.join(VOLUMES)}")


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_volume(kind: str, args, root: Path) -> dict:
    from activeseg import study, synth

    seeds = args.seeds if kind == "stationary" else args.other_seeds
    data = root / kind / "data"
    if not (data / "synth.json").exists():
        synth.save_synth(data, _volume(kind, args.shape, args.volume_seed))
    config = {"model": dict(LIGHT_MODEL), "rf": {},
              "train": {"steps": args.steps, "patch_size": args.patch, "batch_size": 4, "eval_every": max(1, args.steps // 2)}}
    runs = study.regions_preset(seeds, slice_shape=args.shape[1:], tile=args.tile, slice_rounds=args.slice_rounds,
                                tile_rounds=args.tile_rounds, steps_per_round=args.steps)
    if args.quick:  # a short stack: spaced_entropy's default gap of 5 slices runs out of room
        runs = [dataclasses.replace(r, params={"min_gap": 1}) if r.strategy == "spaced_entropy" else r for r in runs]
    t0, c0 = time.time(), _cpu_seconds()
    res = study.run_study(root / kind / "study", runs, image=data / "image.tif", truth=data / "truth.tif",
                          depth=data / "depth.tif", config=config, jobs=args.jobs, scheduler=args.scheduler)
    failed = [r for r in res if r["status"] == "failed"]
    out = study.summarise(root / kind / "study", title=f"regions benchmark: {kind}", preset="regions")
    return {"kind": kind, "seeds": seeds, "out": out, "failed": failed, "wall": time.time() - t0,
            "cpu": _cpu_seconds() - c0, "runs": len(runs)}


def _fmt(v, digits=2):
    return "not reached" if v is None else f"{v:.{digits}f}"


def report(results: list[dict], args, wall: float, cpu: float) -> str:
    lines = [f"## Region queries and the stopping rule — `python benchmarks/bench_regions.py{' --quick' if args.quick else ''}"
             f" --jobs {args.jobs}`", "",
             f"{date.today().isoformat()}, {platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} cores); "
             f"volumes {'x'.join(map(str, args.shape))}, tile {args.tile}, {args.steps} training steps per round, "
             f"{args.slice_rounds} slice rounds of 2 slices, {args.tile_rounds} tile rounds; every query audited. "
             f"**Wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min** "
             f"(this process and its workers).", ""]
    for r in results:
        out = r["out"]
        ceiling = out.get("ceiling_iou_solid")
        lines.append(f"### {r['kind']} (seeds {', '.join(map(str, r['seeds']))}; {r['runs']} runs, "
                     f"{r['wall'] / 60:.1f} min wall)")
        lines.append("")
        if r["failed"]:
            lines.append("Failed runs: " + ", ".join(f"{f['name']} ({f['error']})" for f in r["failed"]))
            lines.append("")
        if ceiling is None:
            lines.append("No ceiling: the all-slices run did not finish.")
            continue
        area = out["reviewed_area"]
        lines.append(f"Ceiling (all slices): solid IoU {ceiling:.3f}. Reviewed area in slice-equivalents (audits "
                     "included); in brackets the seed median.")
        lines.append("")
        lines.append("| strategy | to 95 % | to 99 % | reviewed in all | best mean IoU |")
        lines.append("|---|---:|---:|---:|---:|")
        px = None
        for g, e in area.items():
            if e["max_px"] and e["max_slices"]:
                px = e["max_px"] / e["max_slices"]
            med = {f: (None if e["seed_median_px"][f] is None or not px else e["seed_median_px"][f] / px)
                   for f in ("0.95", "0.99")}
            cells = [f"{_fmt(e['slices'][f])}" + (f" ({_fmt(med[f])})" if len(r["seeds"]) > 1 else "")
                     for f in ("0.95", "0.99")]
            lines.append(f"| {g} | {cells[0]} | {cells[1]} | {_fmt(e['max_slices'])} | {_fmt(e['best'], 3)} |")
        lines.append("")
        dist = area.get("distributed", {}).get("slices", {})
        for f in ("0.95", "0.99"):
            regions = {g: e["slices"][f] for g, e in area.items() if g.startswith("tile_") and e["slices"][f] is not None}
            if not regions:
                lines.append(f"- {float(f):.0%}: no region strategy reached it within its rounds.")
            elif dist.get(f) is None:
                best = min(regions, key=lambda g: regions[g])
                lines.append(f"- {float(f):.0%}: best region strategy {best} ({regions[best]:.2f}); distributed did not "
                             "reach it.")
            else:
                best = min(regions, key=lambda g: regions[g])
                ratio = regions[best] / dist[f]
                verdict = "meets" if ratio <= 0.5 else "misses"
                goal = f" ({verdict} the goal of <= 0.5)" if f == "0.99" else ""
                lines.append(f"- {float(f):.0%}: best region strategy {best} {regions[best]:.2f} vs distributed "
                             f"{dist[f]:.2f}: ratio **{ratio:.2f}**{goal}")
        lines.append("")
        if out.get("stopping_text"):
            lines.append("Stopping rule (stop round vs the first round within 1 % of the ceiling; rounds count from 1):")
            lines.append("")
            lines.append(out["stopping_text"].strip())
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small volumes and few rounds (<= 5 min on 2 cores)")
    ap.add_argument("--volumes", default=",".join(VOLUMES), help="comma-separated: " + ", ".join(VOLUMES))
    ap.add_argument("--shape", type=int, nargs=3, default=None, help="volume shape (default 96 192 192; quick 16 64 64)")
    ap.add_argument("--tile", type=int, default=None, help="tile side (default 64; quick 32)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="stationary volume (default 0 1 2; quick 0)")
    ap.add_argument("--other-seeds", type=int, nargs="+", default=[0], help="graded and membrane volumes (default 0)")
    ap.add_argument("--volume-seed", type=int, default=0, help="seed of the synthetic volumes")
    ap.add_argument("--steps", type=int, default=None, help="training steps per round (default 40; quick 2)")
    ap.add_argument("--patch", type=int, default=None, help="training patch size (default 96; quick 64)")
    ap.add_argument("--slice-rounds", type=int, default=None, help="rounds of 2 whole slices (default 5; quick 3)")
    ap.add_argument("--tile-rounds", type=int, default=None, help="rounds of tiles (default 10; quick 3)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (local Dask workers; 1 = inline)")
    ap.add_argument("--scheduler", default=None, help="or a Dask scheduler (local:N, tcp://HOST:PORT)")
    ap.add_argument("--out", type=Path, default=None, help="keep the studies here (default: a temporary folder)")
    args = ap.parse_args()
    full = {"shape": [96, 192, 192], "tile": 64, "seeds": [0, 1, 2], "steps": 40, "patch": 96, "slice_rounds": 5,
            "tile_rounds": 10}
    quick = {"shape": [16, 64, 64], "tile": 32, "seeds": [0], "steps": 2, "patch": 64, "slice_rounds": 3,
             "tile_rounds": 3}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.scheduler is not None:
        args.jobs = 1
    kinds = [v.strip() for v in args.volumes.split(",") if v.strip()]
    t0, c0 = time.time(), _cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        results = []
        for kind in kinds:
            res = run_volume(kind, args, root)
            results.append(res)
            print(f"{kind}: {res['runs']} runs in {res['wall'] / 60:.1f} min", flush=True)
        print()
        print(report(results, args, time.time() - t0, _cpu_seconds() - c0))


if __name__ == "__main__":
    main()
