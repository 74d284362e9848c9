"""Benchmark: RF bootstrap (activeseg) against the scikit-image trainable-segmentation recipe.

Protocol: a hard synthetic volume (default 200 x 512 x 512 from
``activeseg.synth.synthesize``), 5 evenly spaced fully labelled slices, both sides with
``n_jobs=-1`` and the same cap of 100 000 training pixels.

(a) recipe: ``skimage.feature.multiscale_basic_features`` with its defaults +
    ``RandomForestClassifier(n_estimators=100)``; fit on a uniform random sample of the
    labelled pixels, then features + ``predict_proba`` slice by slice over the stack;
(b) activeseg: ``fit_rf`` + ``RFModel.predict_stack`` (streamed), defaults, beam sign
    estimated from the stack;
(c) activeseg with 2D features only (no z-context / parallax), for the z-context target.

Targets: (b) at least 10x the recipe's throughput, accuracy no more than 0.5 points and
solid IoU no more than 1 point below it; (b) at least 1 point more accurate than (c);
the large part's peak RSS under 2 GB.

Wall clock includes feature extraction for training and fitting. Both sides read the
image from the same ``.npy`` memmap and write the pore probability to a ``.npy`` memmap.
Each side runs in its own subprocess, so its peak RSS (``VmHWM``) is its own.
Accuracy and solid-phase IoU (``activeseg.metrics.evaluate``) are measured on the
unlabelled slices at p >= 0.5.

A second part streams a large stack (default 200 x 1024 x 1024, the synthetic volume
tiled 2 x 2) from an ImageJ TIFF on disk (``activeseg.io.open_stack``) through
``fit_rf`` + ``predict_stack`` into ``activeseg.io.create_stack`` and reports its peak RSS.

Usage::

    python benchmarks/bench_rf.py                 # full protocol (tens of minutes on 2 cores)
    python benchmarks/bench_rf.py --quick         # 40 x 256 x 256, large part 40 x 512 x 512
    python benchmarks/bench_rf.py --shape 60,256,256 --sides activeseg,activeseg2d --no-large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDES = ("recipe", "activeseg", "activeseg2d")


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (``ru_maxrss`` carries the parent's peak across
    fork + exec, which would hide the child's figure behind the parent's volume)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def labelled_ids(z: int, n: int) -> list[int]:
    """``n`` evenly spaced slices, centred in ``n`` equal parts of the stack."""
    return sorted({int((i + 0.5) * z / n) for i in range(n)})


# --- children (one side per process) --------------------------------------------------------


def run_recipe(work: Path, cfg: dict) -> dict:
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    image = np.load(work / "image.npy", mmap_mode="r")
    truth = np.load(work / "truth.npy", mmap_mode="r")
    z, y, x = image.shape
    out = np.lib.format.open_memmap(work / "recipe_prob.npy", mode="w+", dtype=np.float32, shape=(z, y, x))
    rng = np.random.default_rng(cfg["seed"])
    t0 = time.perf_counter()
    feats, labels = [], []
    for k in cfg["labelled"]:
        f = multiscale_basic_features(np.asarray(image[k]))
        feats.append(f.reshape(-1, f.shape[-1]))
        labels.append(np.asarray(truth[k]).ravel())
    xs, ys = np.concatenate(feats), np.concatenate(labels)
    if xs.shape[0] > cfg["max_pixels"]:
        pick = rng.choice(xs.shape[0], size=cfg["max_pixels"], replace=False)
        xs, ys = xs[pick], ys[pick]
    del feats
    clf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=cfg["seed"])
    clf.fit(xs, ys)
    t_fit = time.perf_counter() - t0
    for k in range(z):
        f = multiscale_basic_features(np.asarray(image[k]))
        out[k] = clf.predict_proba(f.reshape(-1, f.shape[-1]))[:, 1].reshape(y, x)
    out.flush()
    total = time.perf_counter() - t0
    return {"fit_s": t_fit, "total_s": total, "n_features": int(xs.shape[1])}


def run_activeseg(work: Path, cfg: dict, two_d: bool) -> dict:
    from activeseg.bootstrap import fit_rf
    from activeseg.features import FeatureConfig
    from activeseg.geometry import Geometry

    image = np.load(work / "image.npy", mmap_mode="r")
    labels = np.load(work / "labels.npy", mmap_mode="r")
    z, y, x = image.shape
    out = np.lib.format.open_memmap(
        work / f"{'activeseg2d' if two_d else 'activeseg'}_prob.npy", mode="w+", dtype=np.float32, shape=(z, y, x)
    )
    features = FeatureConfig(**cfg.get("features", {}))
    if two_d:
        features = features.two_d()
    geo = Geometry.from_dict({**cfg["geometry"], "beam_sign": None})  # the sign is estimated
    t0 = time.perf_counter()
    model = fit_rf(
        image, labels, rng=np.random.default_rng(cfg["seed"]), geometry=geo, features=features,
        max_pixels=cfg["max_pixels"], n_jobs=-1, **cfg.get("rf", {}),
    )
    t_fit = time.perf_counter() - t0
    model.predict_stack(image, out)
    total = time.perf_counter() - t0
    return {
        "fit_s": t_fit, "total_s": total, "n_features": len(model.feature_names),
        "beam_sign": model.geometry.beam_sign, "spec": model.spec(),
    }


def run_large(work: Path, cfg: dict) -> dict:
    from activeseg import io
    from activeseg.bootstrap import fit_rf
    from activeseg.geometry import Geometry

    base = peak_rss_mb()
    stack = io.open_stack(work / "large.tif")
    lab = np.load(work / "large_labels.npz")
    labels = {int(k[1:]): lab[k] for k in lab.files}
    geo = Geometry.from_dict(cfg["geometry"])
    t0 = time.perf_counter()
    model = fit_rf(stack, labels, rng=np.random.default_rng(cfg["seed"]), geometry=geo,
                   max_pixels=cfg["max_pixels"], **cfg.get("rf", {}))
    t_fit = time.perf_counter() - t0
    out = io.create_stack(work / "large_prob.tif", stack.shape, np.float32, kind="probabilities")
    model.predict_stack(stack, out)
    out.flush()
    total = time.perf_counter() - t0
    return {"fit_s": t_fit, "total_s": total, "rss_after_imports_mb": base, "memmapped_input": stack.memmapped}


def child(side: str, work: Path) -> None:
    cfg = json.loads((work / "config.json").read_text())
    if side == "recipe":
        res = run_recipe(work, cfg)
    elif side in ("activeseg", "activeseg2d"):
        res = run_activeseg(work, cfg, two_d=side == "activeseg2d")
    elif side == "large":
        res = run_large(work, cfg)
    else:
        raise SystemExit(f"unknown side {side}")
    res["peak_rss_mb"] = peak_rss_mb()
    (work / f"{side}.json").write_text(json.dumps(res))


# --- parent -----------------------------------------------------------------------------------


class _Thresholded:
    """Lazy ``prob >= 0.5`` as uint8 labels, for metrics.evaluate."""

    def __init__(self, prob):
        self.prob, self.shape = prob, prob.shape

    def __getitem__(self, z):
        return (np.asarray(self.prob[z]) >= 0.5).astype(np.uint8)


def spawn(side: str, work: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--workdir", str(work)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    res = json.loads((work / f"{side}.json").read_text())
    res["process_s"] = time.perf_counter() - t0
    return res


def make_large(work: Path, image: np.ndarray, truth: np.ndarray, shape: tuple[int, int, int], ids: list[int]) -> None:
    from activeseg import io

    z, y, x = shape
    reps = (-(-y // image.shape[1]), -(-x // image.shape[2]))
    mm = io.create_stack(work / "large.tif", shape, np.uint8, kind="image")
    for k in range(z):
        mm[k] = np.tile(image[k % image.shape[0]], reps)[:y, :x]
    mm.flush()
    del mm
    labels = {f"z{k}": np.tile(truth[k % truth.shape[0]], reps)[:y, :x] for k in ids}
    np.savez(work / "large_labels.npz", **labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="200,512,512", help="Z,Y,X of the synthetic volume")
    ap.add_argument("--large-shape", default="200,1024,1024", help="Z,Y,X of the streamed TIFF stack")
    ap.add_argument("--quick", action="store_true", help="40,256,256 and a 40,512,512 large stack")
    ap.add_argument("--no-large", action="store_true", help="skip the large-stack RSS part")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma list of {SIDES}")
    ap.add_argument("--structure", default="blobs")
    ap.add_argument("--porosity", type=float, default=0.8)
    ap.add_argument("--difficulty", default="hard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-labelled", type=int, default=5)
    ap.add_argument("--max-pixels", type=int, default=100_000)
    ap.add_argument("--synth", default="{}", help="JSON dict of synth overrides, e.g. '{\"connected\": false}'")
    ap.add_argument("--rf", default="{}", help="JSON dict of fit_rf overrides, e.g. '{\"n_estimators\": 24}'")
    ap.add_argument("--features", default="{}", help="JSON dict of FeatureConfig overrides")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temporary folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        child(args.child, Path(args.workdir))
        return 0

    from activeseg import metrics, synth
    from activeseg.geometry import Geometry

    shape = (40, 256, 256) if args.quick else tuple(int(v) for v in args.shape.split(","))
    large_shape = (40, 512, 512) if args.quick else tuple(int(v) for v in args.large_shape.split(","))
    sides = [s for s in args.sides.split(",") if s]
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_rf_")
        work = Path(tmp.name)

    synth_key = {"shape": shape, "structure": args.structure, "porosity": args.porosity,
                 "difficulty": args.difficulty, "seed": args.seed, "overrides": json.loads(args.synth)}
    key_file = work / "synth.json"
    if key_file.exists() and json.loads(key_file.read_text())["key"] == json.loads(json.dumps(synth_key)):
        # same volume as last time in this workdir: reuse it
        image, truth_arr = np.load(work / "image.npy"), np.load(work / "truth.npy")
        geometry = Geometry.from_dict(json.loads(key_file.read_text())["geometry"])
        print(f"reusing the synthetic volume in {work}", flush=True)
    else:
        t0 = time.perf_counter()
        vol = synth.synthesize(shape, structure=args.structure, porosity=args.porosity, difficulty=args.difficulty,
                               rng=np.random.default_rng(args.seed), **synth_key["overrides"])
        print(f"synthesized {shape} {args.structure} porosity {args.porosity} {args.difficulty} "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        image, truth_arr, geometry = vol.image, vol.truth, vol.geometry
        np.save(work / "image.npy", image)
        np.save(work / "truth.npy", truth_arr)
        key_file.write_text(json.dumps({"key": synth_key, "geometry": geometry.to_dict()}))
        del vol
    print(f"geometry {geometry}", flush=True)
    ids = labelled_ids(shape[0], args.n_labelled)
    labels = np.full(shape, 255, dtype=np.uint8)
    labels[ids] = truth_arr[ids]
    np.save(work / "labels.npy", labels)
    del labels
    cfg = {
        "seed": args.seed, "labelled": ids, "max_pixels": args.max_pixels,
        "geometry": geometry.to_dict(), "rf": json.loads(args.rf), "features": json.loads(args.features),
    }
    (work / "config.json").write_text(json.dumps(cfg))
    unlabelled = [k for k in range(shape[0]) if k not in ids]
    truth = np.load(work / "truth.npy", mmap_mode="r")

    results = {}
    for side in sides:
        print(f"running {side} ...", flush=True)
        res = spawn(side, work)
        prob = np.load(work / f"{side}_prob.npy", mmap_mode="r")
        ev = metrics.evaluate(_Thresholded(prob), truth, slices=unlabelled, boundary=False)
        res["accuracy"] = ev.overall["accuracy"]
        res["iou_solid"] = ev.overall["iou_solid"]
        res["mvox_s"] = np.prod(shape) / 1e6 / res["total_s"]
        results[side] = res
        print(f"  {side}: {res['total_s']:.1f} s, acc {res['accuracy']:.4f}, solid IoU {res['iou_solid']:.4f}", flush=True)

    large = None
    if not args.no_large:
        print(f"building the large stack {large_shape} (TIFF) ...", flush=True)
        make_large(work, image, truth_arr, large_shape, labelled_ids(large_shape[0], args.n_labelled))
        print("running large ...", flush=True)
        large = spawn("large", work)
        large["mvox_s"] = np.prod(large_shape) / 1e6 / large["total_s"]

    # --- report
    ref = results.get("recipe")
    lines = [
        f"RF bootstrap benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), python {platform.python_version()}",
        f"volume {'x'.join(map(str, shape))} synth {args.structure} porosity {args.porosity} {args.difficulty} "
        f"seed {args.seed}; labelled slices {ids}; training-pixel cap {args.max_pixels}; n_jobs=-1",
        "",
        "| side | features | fit + train features (s) | total (s) | Mvox/s | ratio | accuracy | solid IoU | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for side, r in results.items():
        ratio = r["mvox_s"] / ref["mvox_s"] if ref else float("nan")
        lines.append(
            f"| {side} | {r['n_features']} | {r['fit_s']:.1f} | {r['total_s']:.1f} | {r['mvox_s']:.3f} | "
            f"{ratio:.1f}x | {r['accuracy']:.4f} | {r['iou_solid']:.4f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    if ref and "activeseg" in results:
        a = results["activeseg"]
        lines.append(
            f"activeseg vs recipe: throughput {a['mvox_s'] / ref['mvox_s']:.1f}x (target >= 10x), "
            f"accuracy {100 * (a['accuracy'] - ref['accuracy']):+.2f} pt (target >= -0.5), "
            f"solid IoU {100 * (a['iou_solid'] - ref['iou_solid']):+.2f} pt (target >= -1)"
        )
    if "activeseg" in results and "activeseg2d" in results:
        a, b = results["activeseg"], results["activeseg2d"]
        lines.append(
            f"z-context vs 2D only: accuracy {100 * (a['accuracy'] - b['accuracy']):+.2f} pt (target >= +1), "
            f"solid IoU {100 * (a['iou_solid'] - b['iou_solid']):+.2f} pt"
        )
    if "activeseg" in results:
        lines.append(f"estimated beam sign {results['activeseg']['beam_sign']:+d} (true {geometry.beam_sign:+d})")
    if large:
        lines.append(
            f"large stack {'x'.join(map(str, large_shape))} streamed from TIFF (memmapped input: "
            f"{large['memmapped_input']}): fit {large['fit_s']:.1f} s, total {large['total_s']:.1f} s, "
            f"{large['mvox_s']:.2f} Mvox/s, peak RSS {large['peak_rss_mb']:.0f} MB "
            f"(after imports {large['rss_after_imports_mb']:.0f} MB; target < 2048 MB)"
        )
    print("\n".join(lines))
    (work / "results.json").write_text(json.dumps({"results": results, "large": large}, default=str))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
