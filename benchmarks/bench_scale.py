"""Benchmark: whole-stack RF export to OME-Zarr, inline vs on a local Dask cluster.

Protocol (one run): a uint8 OME-Zarr stack (default 200 x 1024 x 1024; a hard synthetic
volume of at most 64 x 512 x 512 from ``activeseg.synth``, tiled in y and x and mirrored
back and forth in z, so the RF's feature cost is that of a real stack), a Random Forest
fitted with the session defaults (``activeseg.bootstrap.fit_rf``) on 2 evenly spaced
labelled slices and stored with ``save_rf``, then the labels export of the whole stack
into an OME-Zarr labels store, exactly as ``activeseg export`` does it
(``io.create_output`` + ``loop.blocks.predict_blocks`` + ``commit``):

(a) ``inline-1``: in this process's child, the forest with ``n_jobs=1`` (one tree thread);
(b) ``inline-2``: the same with ``n_jobs=2`` (equal cores with (c));
(c) ``local:2``: a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)`` started
    here and handed to ``predict_blocks`` by its ``tcp://`` address, so each worker runs
    one block at a time with a one-thread forest and writes its own z-range of the store
    (``--scheduler local:2`` would give each worker ``cores // 2`` threads: the same on a
    2-core machine). Cluster start is timed on its own and not included in "predict".
(d) peak RSS per worker (``VmHWM``, measured in the workers after the job) of a fresh
    ``local:2`` cluster on a ``--depth``-slice stack (default 64) and on the full stack:
    it should not grow with depth.

Targets: (a)/(c) predict time >= 1.7x (scaling); (c)/(b) - 1 <= 10 % (overhead at equal
cores). "predict" is ``predict_blocks`` (for (c) including the client's connection and
shipping the forest); "commit" (the two pyramid levels and the rename, in the creating
process) is the same serial work in every run and reported apart. The inline runs each
run in a fresh subprocess, so their ``VmHWM`` is their own. "CPU s" is user + system time
during predict (the workers' plus the client's for (c)); CPU s / predict s is the number of
cores a run kept busy. Every output is compared voxel by voxel with (a).

On a loaded machine the ratios carry the load: the machine line gives the CPU count, RAM
and the load average at start and end.

Usage::

    python benchmarks/bench_scale.py                       # 200 x 1024^2, depth check at 64
    python benchmarks/bench_scale.py --quick               # 40 x 512^2, depth check at 32
    python benchmarks/bench_scale.py --slices 100 --size 768 --work /tmp/scale   # keep and reuse the stack
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VOXEL = (10.0, 10.0, 10.0)


# --- measurements inside a process (this one, a child or a Dask worker) ---------------------------


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmHWM: peak RSS, VmRSS: now); 0 where absent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``; ``ru_maxrss`` would carry a forking parent's peak)."""
    kib = _status_kib("VmHWM")
    return (kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker_state() -> dict:
    """Run in a Dask worker: its CPU time, RSS now and at peak, and whether torch is loaded."""
    return {"cpu_s": cpu_seconds(), "rss_mb": _status_kib("VmRSS") / 1024.0, "peak_rss_mb": peak_rss_mb(),
            "torch": "torch" in sys.modules}


def machine_line() -> str:
    mem_gb = float("nan")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return (f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
            f"{mem_gb:.0f} GB RAM), python {platform.python_version()}")


def load_text() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# --- the stack ----------------------------------------------------------------------------------


def labelled_ids(z: int, n: int) -> list[int]:
    """``n`` evenly spaced slices, centred in ``n`` equal parts of the stack."""
    return sorted({int((i + 0.5) * z / n) for i in range(n)})


def _source_z(z: int, n: int) -> int:
    """Slice of an n-slice base volume shown at depth z: back and forth (0..n-1, n-2..1, ...)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    k = z % period
    return k if k < n else period - k


def make_stack(work: Path, slices: int, size: int, depth: int, n_labelled: int, seed: int) -> dict:
    """Write (or reuse) the full and the shallow OME-Zarr stacks and the labels; returns their paths."""
    from activeseg import io, synth

    key = {"slices": slices, "size": size, "depth": depth, "n_labelled": n_labelled, "seed": seed, "v": 1}
    key_file = work / "stacks.json"
    full, shallow, labels = work / f"stack_{slices}.zarr", work / f"stack_{depth}.zarr", work / "labels.npz"
    if key_file.exists() and json.loads(key_file.read_text()) == key and full.is_dir() and shallow.is_dir() \
            and labels.is_file():
        print(f"reusing the stacks in {work}", flush=True)
        geometry = json.loads((work / "geometry.json").read_text())
        return {"full": full, "shallow": shallow, "labels": labels, "geometry": geometry, "made_s": 0.0}
    t0 = time.perf_counter()
    base_shape = (min(slices, 64), min(size, 512), min(size, 512))
    vol = synth.synthesize(base_shape, structure="blobs", porosity=0.8, difficulty="hard",
                           rng=np.random.default_rng(seed))
    reps = (-(-size // base_shape[1]), -(-size // base_shape[2]))

    def plane(arr: np.ndarray, z: int) -> np.ndarray:
        return np.tile(arr[_source_z(z, base_shape[0])], reps)[:size, :size]

    for path, nz in ((full, slices), (shallow, depth)):
        with io.create_output(path, (nz, size, size), np.uint8, voxel_size=VOXEL, kind="image") as writer:
            for z0 in range(0, nz, 16):
                z1 = min(nz, z0 + 16)
                writer.array[z0:z1] = np.stack([plane(vol.image, z) for z in range(z0, z1)])
    # np.savez writes a plain .npz (no pickled objects); read back with allow_pickle=False
    arrays: dict[str, Any] = {f"z{z}": plane(vol.truth, z) for z in labelled_ids(slices, n_labelled)}
    np.savez(labels, **arrays)
    (work / "geometry.json").write_text(json.dumps(vol.geometry.to_dict()))
    key_file.write_text(json.dumps(key))
    made = time.perf_counter() - t0
    print(f"wrote {full.name} ({slices}x{size}x{size}) and {shallow.name} ({depth}x{size}x{size}) "
          f"in {made:.1f} s", flush=True)
    return {"full": full, "shallow": shallow, "labels": labels, "geometry": vol.geometry.to_dict(), "made_s": made}


def read_labels(path: Path) -> dict[int, np.ndarray]:
    with np.load(path, allow_pickle=False) as lab:
        return {int(k[1:]): lab[k] for k in lab.files}


# --- one export ---------------------------------------------------------------------------------


def export(model, stack_path: Path, out: Path, scheduler) -> dict:
    """The labels export of ``activeseg export`` (create_output, predict_blocks, commit), timed."""
    from activeseg import io
    from activeseg.loop.blocks import predict_blocks

    stack = io.open_stack(stack_path)
    writer = io.create_output(out, stack.shape, np.uint8, voxel_size=VOXEL, kind="labels")
    c0, t0 = cpu_seconds(), time.perf_counter()
    fractions = predict_blocks(model, stack, writer.array, mode="labels", values=(0, 1), scheduler=scheduler,
                               worker_target=writer.worker_target)
    predict_s, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    t1 = time.perf_counter()
    writer.commit()
    return {"predict_s": predict_s, "commit_s": time.perf_counter() - t1, "client_cpu_s": cpu_s,
            "porosity": float(fractions[:, 1].mean())}


def run_child(args) -> None:
    """``--child inline``: one inline export with ``--threads`` tree threads; JSON on stdout."""
    from activeseg.bootstrap import load_rf

    model = load_rf(Path(args.rf), n_jobs=int(args.threads))
    res = export(model, Path(args.stack), Path(args.out), None)
    res["cpu_s"] = res.pop("client_cpu_s")
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


KERNEL_SLICES = 8


def run_kernel(args) -> None:
    """``--child kernel``: the forest (one thread) on the first slices of the stack, in memory
    (no zarr, no Dask), started at ``--start-at`` (so that concurrent children overlap); JSON."""
    from activeseg import io
    from activeseg.bootstrap import load_rf

    model = load_rf(Path(args.rf), n_jobs=1)
    stack = io.open_stack(Path(args.stack))
    k = min(KERNEL_SLICES, stack.shape[0])
    arr = np.stack([np.asarray(stack[z]) for z in range(k)])
    late = time.time() - float(args.start_at)
    if late < 0:
        time.sleep(-late)
    t0 = time.perf_counter()
    model.predict_proba(arr, list(range(k)))
    print(json.dumps({"seconds": time.perf_counter() - t0, "late_s": max(0.0, late)}))


def ceiling(rf: Path, stack: Path) -> dict:
    """The machine's own 2-process speed-up now: one kernel child alone, then two at once."""
    def together(n: int) -> list[dict]:
        start = time.time() + 8.0  # after the children's imports
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "kernel", "--rf", str(rf), "--stack", str(stack),
               "--start-at", repr(start)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [p.communicate() for p in procs]
        for p, (_, err) in zip(procs, outs):
            if p.returncode != 0:
                raise SystemExit(f"the kernel child failed:\n{err[-4000:]}")
        return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]

    alone = together(1)[0]["seconds"]
    pair = together(2)
    pair_s = max(r["seconds"] for r in pair)
    return {"alone_s": alone, "pair_s": pair_s, "speedup": 2 * alone / pair_s,
            "late_s": max(r["late_s"] for r in pair)}


def inline(work: Path, rf: Path, stack: Path, threads: int, name: str) -> dict:
    out = work / f"{name}.zarr"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "inline", "--rf", str(rf), "--stack", str(stack),
           "--out", str(out), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the inline child failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(name=name, out=str(out), start_s=None, threads=f"{threads} (1 process)")
    return res


def _import_torch() -> float:
    """Run in a Dask worker: import torch; the seconds it took."""
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the warm-up being measured)

    return time.perf_counter() - t0


def distributed(work: Path, rf: Path, stack: Path, name: str, workers: int = 2, warm: bool = False) -> dict:
    """A fresh LocalCluster of ``workers`` x 1 thread; the export through its tcp:// address.

    ``warm``: torch is imported in every worker first (timed apart), as a worker that ran
    a task before holds it (``loop.blocks.run_block`` imports it for any model).
    """
    from distributed import Client, LocalCluster

    from activeseg.bootstrap import load_rf

    model = load_rf(rf, n_jobs=1)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.wait_for_workers(workers)
    start_s = time.perf_counter() - t0
    try:
        warm_s = max(client.run(_import_torch).values()) if warm else None
        before = client.run(worker_state)
        res = export(model, stack, work / f"{name}.zarr", cluster.scheduler_address)
        after = client.run(worker_state)
    finally:
        client.close()
        cluster.close()
    res.update(
        name=name, out=str(work / f"{name}.zarr"), start_s=start_s, threads=f"{workers} workers x 1",
        warm_s=warm_s,
        cpu_s=sum(after[w]["cpu_s"] - before[w]["cpu_s"] for w in after) + res["client_cpu_s"],
        worker_rss_before_mb=[before[w]["rss_mb"] for w in sorted(before)],
        worker_peak_rss_mb=[after[w]["peak_rss_mb"] for w in sorted(after)],
        worker_torch=any(after[w]["torch"] for w in after),
    )
    return res


def differing_voxels(a: Path, b: Path) -> int:
    """Voxels where two label stores differ (read slice by slice)."""
    from activeseg import io

    sa, sb = io.open_stack(a), io.open_stack(b)
    if sa.shape != sb.shape:
        return -1
    return int(sum(np.count_nonzero(np.asarray(sa[z]) != np.asarray(sb[z])) for z in range(sa.shape[0])))


# --- main ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=200, help="depth of the full stack")
    ap.add_argument("--size", type=int, default=1024, help="Y = X of every slice")
    ap.add_argument("--depth", type=int, default=64, help="depth of the shallow stack of the RSS check")
    ap.add_argument("--quick", action="store_true", help="40 x 512 x 512, depth check at 32 (a smoke run)")
    ap.add_argument("--warm-workers", action="store_true",
                    help="import torch in the workers before timing (what a worker that already ran a task holds)")
    ap.add_argument("--n-labelled", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder, kept (stacks reused); default a temporary one")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rf", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stack", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "kernel":
        run_kernel(args)
        return 0
    if args.child:
        run_child(args)
        return 0
    if args.quick:
        args.slices, args.size, args.depth = 40, 512, 32
    if not 1 <= args.depth <= args.slices:
        ap.error(f"--depth must be in 1..--slices ({args.slices}), got {args.depth}")

    from activeseg import io
    from activeseg.bootstrap import fit_rf, save_rf
    from activeseg.geometry import Geometry
    from activeseg.loop.blocks import block_size, plan_blocks

    load_start = load_text()
    t_all = time.perf_counter()
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_scale_")
        work = Path(tmp.name)
    for old in work.glob("out_*.zarr*"):  # outputs of an earlier run: never reused
        shutil.rmtree(old, ignore_errors=True)
    paths = make_stack(work, args.slices, args.size, args.depth, args.n_labelled, args.seed)
    stack = io.open_stack(paths["full"])
    t0 = time.perf_counter()
    model = fit_rf(stack, read_labels(paths["labels"]), rng=np.random.default_rng(args.seed),
                   geometry=Geometry.from_dict(paths["geometry"]))
    fit_s = time.perf_counter() - t0
    rf = save_rf(model, work / "rf.npz")
    print(f"fitted {model} in {fit_s:.1f} s", flush=True)

    print(f"machine ceiling: the forest on {KERNEL_SLICES} slices in memory, 1 process, then 2 at once ...",
          flush=True)
    ceil_start = ceiling(rf, paths["full"])
    print(f"  2 processes give {ceil_start['speedup']:.2f}x one (alone {ceil_start['alone_s']:.1f} s, "
          f"pair {ceil_start['pair_s']:.1f} s)", flush=True)
    runs = []
    for label, fn in (
        ("inline-1", lambda: inline(work, rf, paths["full"], 1, "out_inline1")),
        ("local:2", lambda: distributed(work, rf, paths["full"], "out_local2", warm=args.warm_workers)),
        ("inline-2", lambda: inline(work, rf, paths["full"], 2, "out_inline2")),
    ):
        print(f"running {label} on {args.slices} slices (load {load_text()}) ...", flush=True)
        r = fn()
        r["label"], r["slices"] = label, args.slices
        runs.append(r)
        print(f"  {label}: predict {r['predict_s']:.1f} s, commit {r['commit_s']:.1f} s, "
              f"CPU {r['cpu_s']:.1f} s", flush=True)
    print(f"running local:2 on {args.depth} slices (RSS check, load {load_text()}) ...", flush=True)
    shallow = distributed(work, rf, paths["shallow"], "out_local2_shallow", warm=args.warm_workers)
    shallow["label"], shallow["slices"] = f"local:2, {args.depth} slices", args.depth
    ceil_end = ceiling(rf, paths["full"])
    by = {r["label"]: r for r in runs}
    for r in runs[1:]:
        r["differ"] = differing_voxels(Path(by["inline-1"]["out"]), Path(r["out"]))
    load_end = load_text()

    vox = args.slices * args.size * args.size
    i1, l2, i2 = by["inline-1"], by["local:2"], by["inline-2"]
    scaling = i1["predict_s"] / l2["predict_s"]
    overhead = l2["predict_s"] / i2["predict_s"] - 1
    scaling_total = (i1["predict_s"] + i1["commit_s"]) / (l2["start_s"] + l2["predict_s"] + l2["commit_s"])
    lines = [
        f"Scale-out benchmark, {time.strftime('%Y-%m-%d')}, {machine_line()}",
        f"load average (1/5/15 min) at start {load_start}, at end {load_end}; whole run "
        f"{time.perf_counter() - t_all:.0f} s",
        f"stack {args.slices}x{args.size}x{args.size} uint8 OME-Zarr (synthetic, hard, tiled); RF {model} fitted "
        f"in {fit_s:.1f} s on slices {model.training['slices']}; labels export to OME-Zarr, "
        f"{len(plan_blocks(args.slices, block_size(stack.shape, 2)))} blocks of "
        f"{block_size(stack.shape, 2)} slices (one task each); workers "
        + (f"warmed (torch imported first, {l2['warm_s']:.1f} s, not in predict)" if args.warm_workers else "cold"),
        "",
        "| run | threads | cluster start (s) | predict (s) | commit (s) | Mvox/s (predict) | CPU s (cores busy) "
        "| peak RSS (MB) | voxels differing from inline-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (*runs, shallow):
        rss = (" / ".join(f"{v:.0f}" for v in r["worker_peak_rss_mb"]) + " per worker"
               if "worker_peak_rss_mb" in r else f"{r['peak_rss_mb']:.0f}")
        start = "—" if r["start_s"] is None else f"{r['start_s']:.1f}"
        mvox = r["slices"] * args.size * args.size / 1e6 / r["predict_s"]
        differ = r.get("differ", "—" if r is i1 else "n/a")
        lines.append(f"| {r['label']} | {r['threads']} | {start} | {r['predict_s']:.1f} | {r['commit_s']:.1f} | "
                     f"{mvox:.2f} | {r['cpu_s']:.0f} ({r['cpu_s'] / r['predict_s']:.2f}) | {rss} | {differ} |")
    deep_peak, shallow_peak = max(l2["worker_peak_rss_mb"]), max(shallow["worker_peak_rss_mb"])
    lines += [
        "",
        f"- scaling, inline-1 / local:2 predict time: **{scaling:.2f}x** (target >= 1.7x); with cluster start and "
        f"commit: {scaling_total:.2f}x",
        f"- machine ceiling (the same forest, one thread, on {KERNEL_SLICES} slices in memory: two processes at once "
        f"vs one alone): {ceil_start['speedup']:.2f}x at the start, {ceil_end['speedup']:.2f}x at the end "
        f"(2x on an idle machine with 2 free cores); scaling / ceiling: "
        f"{scaling / (0.5 * (ceil_start['speedup'] + ceil_end['speedup'])):.2f}",
        f"- overhead at equal cores, local:2 / inline-2 - 1: **{100 * overhead:+.1f} %** (target <= +10 %)",
        f"- peak RSS per worker: {shallow_peak:.0f} MB at {args.depth} slices, {deep_peak:.0f} MB at {args.slices} "
        f"slices ({deep_peak / shallow_peak:.2f}x; workers held "
        f"{' / '.join(f'{v:.0f}' for v in l2['worker_rss_before_mb'])} MB before the job; torch loaded in a "
        f"worker: {l2['worker_torch']})",
        "- outputs equal to inline-1: "
        + ", ".join(f"{r['label']} " + ("yes" if r["differ"] == 0 else f"NO ({r['differ']} voxels)") for r in runs[1:])
        + f"; porosity {i1['porosity']:.3f}; {vox / 1e6:.0f} Mvox",
    ]
    print("\n".join(lines))
    (work / "results.json").write_text(json.dumps({"runs": runs, "shallow": shallow, "fit_s": fit_s,
                                                   "ceiling": [ceil_start, ceil_end],
                                                   "load_start": load_start, "load_end": load_end}, default=str))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
