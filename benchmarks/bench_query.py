"""Benchmark: `activeseg query` (and `export`) with the Random Forest refit vs loaded from the session.

Protocol: a hard synthetic stack (default 60 x 128 x 128, ``activeseg synth
--difficulty hard``), a session bootstrapped from 3 whole slices of its truth
(``activeseg bootstrap --slices``), default config. Each timed run is the CLI in a fresh
process, as a user runs it, on a fresh copy of that bootstrapped session:

- ``refit``: the copy's stored forest is taken away (``rf`` = None in the manifest, no
  ``rf/`` folder: what a session of schema 1 looked like), so the command fits the RF
  from the labels and seed, as every command did before the forest was stored;
- ``stored``: the copy as bootstrap left it (``rf/rf-KEY.npz`` named in the manifest),
  so the command loads the forest.

Runs of the two sides are interleaved (the CPU may be shared); the table gives the
median of ``--repeats`` runs of each and the ratio refit / stored. Each run's log is
checked: a ``refit`` run must say "fitted RF", a ``stored`` run must not.

Usage::

    python benchmarks/bench_query.py                        # 60 x 128 x 128, 3 runs each
    python benchmarks/bench_query.py --shape 30,96,96 --repeats 1 --commands query
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from activeseg.safety import atomic_write_json

CLI = [sys.executable, "-c", "from activeseg.cli import main; main()"]


def run_cli(args: list[str], *, check: bool = True) -> tuple[float, str]:
    """Run ``activeseg ARGS`` in a fresh process; returns (wall seconds, stdout + stderr)."""
    t0 = time.perf_counter()
    res = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    out = res.stdout + res.stderr
    if check and res.returncode != 0:
        raise SystemExit(f"activeseg {' '.join(map(str, args))} failed ({res.returncode}):\n{out}")
    return dt, out


def drop_stored_rf(session: Path) -> None:
    """Make ``session`` look like a session without a stored forest (schema 1)."""
    m = json.loads((session / "activeseg.json").read_text())
    m["rf"] = None
    atomic_write_json(session / "activeseg.json", m)
    shutil.rmtree(session / "rf", ignore_errors=True)


def command_args(command: str, session: Path, work: Path, n: int, strategy: str) -> list[str]:
    if command == "query":
        return ["query", session, "-n", n, "--strategy", strategy]
    if command == "export":
        return ["export", session, work / f"seg-{session.name}.tif"]
    raise SystemExit(f"unknown command {command!r}; use query and/or export")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="60,128,128", help="Z,Y,X of the synthetic stack (default 60,128,128)")
    ap.add_argument("--slices", default=None, help="bootstrap slices (default 3 evenly spaced)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")
    ap.add_argument("--commands", default="query,export", help="commands to time (default query,export)")
    ap.add_argument("-n", type=int, default=4, help="slices each query picks (default 4)")
    ap.add_argument("--strategy", default="entropy", help="query strategy (default entropy: it needs the RF's scores)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the data (default a temporary folder)")
    args = ap.parse_args()

    shape = [int(v) for v in args.shape.split(",")]
    slices = args.slices or ",".join(str(int(round(shape[0] * f))) for f in (1 / 6, 1 / 2, 5 / 6))
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_query_"))
    work.mkdir(parents=True, exist_ok=True)
    data, pristine = work / "data", work / "pristine"
    for p in (data, pristine):
        shutil.rmtree(p, ignore_errors=True)

    print(f"# bench_query: {shape[0]}x{shape[1]}x{shape[2]} hard synthetic, bootstrap slices {slices}, "
          f"{args.repeats} runs per side")
    cpu = platform.processor() or platform.machine()
    print(f"# {_dt.datetime.now().isoformat(timespec='seconds')}, {platform.node()}, {cpu}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    run_cli(["synth", data, "--shape", *shape, "--difficulty", "hard", "--seed", 0])
    run_cli(["init", pristine, "--image", data / "image.tif"])
    t_boot, _ = run_cli(["bootstrap", pristine, "--slices", slices])
    print(f"bootstrap (fits and stores the RF): {t_boot:.1f} s")
    if not json.loads((pristine / "activeseg.json").read_text()).get("rf"):
        raise SystemExit("bootstrap stored no Random Forest in the session; nothing to compare")

    times: dict[tuple[str, str], list[float]] = {(c, side): [] for c in commands for side in ("refit", "stored")}
    for rep in range(args.repeats):
        for command in commands:
            for side in ("refit", "stored") if rep % 2 == 0 else ("stored", "refit"):
                copy = work / f"run-{command}-{side}-{rep}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(pristine, copy)
                if side == "refit":
                    drop_stored_rf(copy)
                dt, out = run_cli(command_args(command, copy, work, args.n, args.strategy))
                fitted = "fitted RF" in out
                if fitted != (side == "refit"):
                    raise SystemExit(f"{command} ({side}) {'fitted' if fitted else 'did not fit'} the RF:\n{out}")
                times[(command, side)].append(dt)
                print(f"  {command:6s} {side:6s} run {rep + 1}: {dt:6.2f} s")
                shutil.rmtree(copy, ignore_errors=True)

    print()
    print("| command | refit (median s) | stored RF (median s) | ratio refit / stored |")
    print("|---|---|---|---|")
    for command in commands:
        a = statistics.median(times[(command, "refit")])
        b = statistics.median(times[(command, "stored")])
        print(f"| `activeseg {command}` | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
