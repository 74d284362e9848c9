"""Benchmark: open a 2 GB FIB-SEM stack and read one slice (activeseg.io vs tifffile).

Target: a 2000 x 1024 x 1024 uint8 TIFF (2 GB) opens and yields a slice in under a
second with RSS under 300 MB.

The script writes the test files streaming (never a 2 GB array in memory), then for
each file and reader starts a FRESH Python process that imports the reader, opens the
file and reads one slice, and reports wall time and peak RSS (``ru_maxrss``). The
file's pages are evicted from the OS page cache before every measurement
(``posix_fadvise(DONTNEED)``, no root needed), so reads hit the disk as on a first
open. Peers, in the same run and on the same files:

- ``tifffile.imread(path, key=i)`` (reads page i only),
- ``tifffile.memmap(path, mode="r")[i]`` (uncompressed contiguous files only).

Files:

- ``imagej``: ImageJ hyperstack written with ``activeseg.io.create_stack`` (what
  activeseg writes; Fiji's format), uncompressed and contiguous -> memmap;
- ``multipage``: one IFD per slice, no metadata (instrument-style), uncompressed ->
  page by page (the IFDs sit between the slices, so the data are not contiguous);
- ``zlib``: a smaller zlib-compressed multipage file -> page by page decoding.

Usage::

    python benchmarks/bench_io.py                    # full size, temp dir, files deleted
    python benchmarks/bench_io.py --shape 64 256 256 --repeats 1   # quick smoke run
    python benchmarks/bench_io.py --dir /scratch --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------- measurement child

CHILD = r"""
import json, os, resource, sys, time
reader, path, index, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def peak_rss_mb():
    # VmHWM is this process's own high-water mark (ru_maxrss can carry the parent's
    # RSS across fork + exec)
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


t0 = time.perf_counter()
if reader == "activeseg":
    from activeseg.io import open_stack
else:
    import numpy as np, tifffile
t_import = time.perf_counter() - t0
rss_base = peak_rss_mb()
t1 = time.perf_counter()
extra = {}
if reader == "activeseg":
    stack = open_stack(path)
    a = stack[index]
    t_first = time.perf_counter() - t1
    extra = {"memmapped": stack.memmapped, "shape": list(stack.shape)}
    t2 = time.perf_counter()
    for z in range(5):
        b = stack[(index + 37 * (z + 1)) % n]
    t_next = (time.perf_counter() - t2) / 5
elif reader == "tifffile.imread":
    a = tifffile.imread(path, key=index)
    t_first = time.perf_counter() - t1
    t2 = time.perf_counter()
    for z in range(5):
        b = tifffile.imread(path, key=(index + 37 * (z + 1)) % n)
    t_next = (time.perf_counter() - t2) / 5
elif reader == "tifffile.memmap":
    mm = tifffile.memmap(path, mode="r")
    a = np.array(mm[index])
    t_first = time.perf_counter() - t1
    t2 = time.perf_counter()
    for z in range(5):
        b = np.array(mm[(index + 37 * (z + 1)) % n])
    t_next = (time.perf_counter() - t2) / 5
else:
    raise SystemExit(f"unknown reader {reader}")
peak = peak_rss_mb()
print(json.dumps({"reader": reader, "import_s": t_import, "open_slice_s": t_first,
                  "next_slice_s": t_next, "rss_base_mb": rss_base, "rss_peak_mb": peak,
                  "checksum": int(a.astype("int64").sum()), **extra}))
"""


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache so the next read goes to disk."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(reader: str, path: Path, index: int, n: int) -> dict:
    evict(path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, reader, str(path), str(index), str(n)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"reader": reader, "error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ generation


def slice_pattern(shape_yx: tuple[int, int], smooth: bool, rng: np.random.Generator) -> np.ndarray:
    y, x = shape_yx
    if smooth:  # compressible: smooth field + mild noise
        yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
        base = 100 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
        return (base + rng.normal(0, 6, size=(y, x))).clip(0, 255).astype(np.uint8)
    return rng.integers(0, 256, size=(y, x), dtype=np.uint8)


def write_imagej(path: Path, shape: tuple[int, int, int], rng: np.random.Generator) -> float:
    from activeseg.io import create_stack

    t0 = time.perf_counter()
    mm = create_stack(path, shape, np.uint8, voxel_size=(10.0, 5.0, 5.0))
    base = slice_pattern(shape[1:], False, rng)
    block = 64
    for z0 in range(0, shape[0], block):
        z1 = min(shape[0], z0 + block)
        for z in range(z0, z1):
            mm[z] = base + np.uint8(z % 256)
        mm.flush()
    del mm
    return time.perf_counter() - t0


def write_multipage(
    path: Path, shape: tuple[int, int, int], rng: np.random.Generator, compression: str | None
) -> float:
    import tifffile

    t0 = time.perf_counter()
    base = slice_pattern(shape[1:], compression is not None, rng)
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for z in range(shape[0]):
            tw.write(base + np.uint8(z % 7), photometric="minisblack", compression=compression, metadata=None)
    return time.perf_counter() - t0


def generate(variant: str, path: Path, shape: tuple[int, int, int]) -> float:
    rng = np.random.default_rng(0)
    if variant == "imagej":
        return write_imagej(path, shape, rng)
    return write_multipage(path, shape, rng, None if variant == "multipage" else "zlib")


def generate_in_child(variant: str, path: Path, shape: tuple[int, int, int]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--generate", variant, str(path), *map(str, shape)],
        capture_output=True, text=True, env=env, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="folder for the test files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--shape", type=int, nargs=3, default=(2000, 1024, 1024), metavar=("Z", "Y", "X"))
    ap.add_argument("--zlib-slices", type=int, default=200, help="slices of the compressed variant")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per reader (median reported)")
    ap.add_argument("--variants", default="imagej,multipage,zlib")
    ap.add_argument("--generate", nargs=5, metavar=("VARIANT", "PATH", "Z", "Y", "X"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate:
        v, p, *dims = args.generate
        print(generate(v, Path(p), tuple(int(d) for d in dims)))
        return 0

    shape = tuple(args.shape)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    root = Path(tempfile.mkdtemp(prefix="bench_io_", dir=args.dir))
    files: dict[str, Path] = {}
    try:
        print(f"writing test files to {root} ...", flush=True)
        for v in variants:
            if v not in ("imagej", "multipage", "zlib"):
                raise SystemExit(f"unknown variant {v!r}")
            p = root / f"{v}.tif"
            s = shape if v != "zlib" else (min(args.zlib_slices, shape[0]), shape[1], shape[2])
            # write in a child process: this process must stay small (its RSS would
            # otherwise be inherited by the measuring children's ru_maxrss)
            t = generate_in_child(v, p, s)
            size = p.stat().st_size
            rate = size / 2**20 / t
            print(f"  {v:10s} {s} {size / 2**30:.2f} GiB written in {t:.1f} s ({rate:.0f} MiB/s)", flush=True)
            files[v] = p

        rows = []
        for v, p in files.items():
            readers = ["activeseg", "tifffile.imread"] + (["tifffile.memmap"] if v == "imagej" else [])
            n = {"imagej": shape[0], "multipage": shape[0], "zlib": min(args.zlib_slices, shape[0])}[v]
            index = n // 2 + 1
            results: dict[str, list[dict]] = {r: [] for r in readers}
            for _ in range(args.repeats):  # interleave readers to share the noise
                for r in readers:
                    results[r].append(measure(r, p, index, n))
            for r in readers:
                ok = [x for x in results[r] if "error" not in x]
                if not ok:
                    rows.append((v, r, None, results[r][0]["error"]))
                    continue
                keys = ("open_slice_s", "next_slice_s", "rss_peak_mb", "rss_base_mb", "import_s")
                med = {k: statistics.median(x[k] for x in ok) for k in keys}
                med["memmapped"] = ok[0].get("memmapped")
                med["checksum"] = ok[0]["checksum"]
                rows.append((v, r, med, None))

        print()
        print(
            f"stack {shape[0]}x{shape[1]}x{shape[2]} uint8; median of {args.repeats} fresh processes; "
            "page cache evicted before each"
        )
        hdr = (
            f"{'file':10s} {'reader':16s} {'open+1 slice':>12s} {'next slice':>10s} {'peak RSS':>9s} "
            f"{'RSS-import':>10s} {'import':>7s} {'memmap':>6s} {'x peer':>7s}"
        )
        print(hdr)
        print("-" * len(hdr))
        peers = {(v, r): m for v, r, m, e in rows if m is not None}
        checks = {}
        for v, r, m, err in rows:
            if m is None:
                print(f"{v:10s} {r:16s} failed: {err}")
                continue
            checks.setdefault(v, set()).add(m["checksum"])
            peer = peers.get((v, "tifffile.imread"))
            ratio = f"{m['open_slice_s'] / peer['open_slice_s']:.2f}" if peer and r != "tifffile.imread" else ""
            mm = "" if m["memmapped"] is None else ("yes" if m["memmapped"] else "no")
            print(
                f"{v:10s} {r:16s} {m['open_slice_s'] * 1e3:10.1f}ms {m['next_slice_s'] * 1e3:8.1f}ms "
                f"{m['rss_peak_mb']:7.1f}MB {m['rss_peak_mb'] - m['rss_base_mb']:8.1f}MB "
                f"{m['import_s'] * 1e3:5.0f}ms {mm:>6s} {ratio:>7s}"
            )
        print()
        for v, sums in checks.items():
            print(f"{v}: readers agree on slice content: {len(sums) == 1}")
        ours = peers.get(("imagej", "activeseg")) or peers.get(("multipage", "activeseg"))
        if ours:
            for v in ("imagej", "multipage"):
                m = peers.get((v, "activeseg"))
                if m:
                    ok = m["open_slice_s"] < 1.0 and m["rss_peak_mb"] < 300
                    print(
                        f"target ({v}): open + 1 slice {m['open_slice_s']:.3f} s (< 1 s), peak RSS "
                        f"{m['rss_peak_mb']:.0f} MB (< 300 MB): {'PASS' if ok else 'FAIL'}"
                    )
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"deleted {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
