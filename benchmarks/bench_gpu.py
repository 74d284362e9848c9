"""Benchmark: the network on one CUDA GPU — training steps and whole-stack inference to OME-Zarr.

One prepared run for a fresh GPU machine (a few minutes; nothing is downloaded):

1. **Training it/s**: :func:`activeseg.train.train_model` on a hard synthetic volume
   (``activeseg.synth``, 5 fully labelled slices), the default network, a fixed number of
   steps (``--steps``, default 50) after ``--warmup`` steps (default 10), no validation,
   each step timed by the training callback (which reads the loss: the GPU is in sync at
   every step). Two settings in the same run: **bf16 autocast + channels_last** (what
   ``autocast="auto"`` and ``channels_last=None`` give on CUDA) and **fp32** (autocast
   off, contiguous memory format; convolutions may still use TF32 as torch allows by
   default — printed). Two batch shapes: the default 8 x 128^2 patches and 16 x 256^2.
2. **Inference**: :func:`activeseg.infer.predict_stack` of a 600 x 1024 x 1024 uint8 stack
   in memory (the synthetic volume tiled 2 x 2 and mirrored in z), batch 16, after a
   32-slice warm-up on the same stack. Timed separately:
   - *compute*: the pore probability into a float32 array in RAM (reading the 2.5D input,
     transfer, network, softmax, copy back), bf16 (the default) and fp32;
   - *zarr writing*: those probabilities written into an OME-Zarr store
     (:func:`activeseg.io.create_output`, one slice per chunk), and its commit (the two
     pyramid levels + rename); the same for uint8 labels;
   - *end to end*: the labels export as ``activeseg export`` runs it in one process
     (``create_output`` + :func:`activeseg.loop.blocks.predict_blocks` + commit).
   Target: 600 x 1024^2 in <= 5 s of compute on one H100-class GPU.

It prints one Markdown table for BENCHMARKS.md with the GPU model, torch and CUDA versions.
Without a CUDA device it prints ``no CUDA device: skipped`` and exits 0. ``--quick --cpu``
runs every code path on the CPU at tiny sizes (a smoke test, not a measurement).

Usage::

    python benchmarks/bench_gpu.py                  # on a CUDA machine (about 2-4 minutes)
    python benchmarks/bench_gpu.py --quick --cpu    # smoke test anywhere
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VOXEL = (10.0, 10.0, 10.0)


def labelled_ids(z: int, n: int) -> list[int]:
    """``n`` evenly spaced slices, centred in ``n`` equal parts of the stack."""
    return sorted({int((i + 0.5) * z / n) for i in range(n)})


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- training -----------------------------------------------------------------------------------


def train_speed(image: np.ndarray, labels: dict[int, np.ndarray], *, device: str, bf16: bool, batch: int,
                patch: int, warmup: int, steps: int, seed: int):
    """(it/s over ``steps`` timed steps after ``warmup``, the trained SegModel)."""
    from activeseg.train import TrainConfig, train_model

    cfg = TrainConfig(steps=warmup + steps, batch_size=batch, patch_size=patch, val_fraction=0.0, patience=None,
                      device=device, autocast="bf16" if bf16 else "off", channels_last=bf16)
    stamps: dict[int, float] = {}

    def cb(step: int, total: int, info: dict) -> None:  # info["loss"] is a float: the step has finished
        stamps[step] = time.perf_counter()

    model, hist = train_model(image, labels, config=cfg, rng=np.random.default_rng(seed), callback=cb)
    if hist["steps_run"] != warmup + steps:
        raise SystemExit(f"training stopped after {hist['steps_run']} of {warmup + steps} steps")
    return steps / (stamps[warmup + steps] - stamps[warmup]), model


# --- inference ----------------------------------------------------------------------------------


def big_stack(base: np.ndarray, n: int, size: int) -> np.ndarray:
    """``n`` slices of ``size``^2: ``base`` tiled in y and x, mirrored back and forth in z."""
    reps = (-(-size // base.shape[1]), -(-size // base.shape[2]))
    out = np.empty((n, size, size), dtype=np.uint8)
    period = max(1, 2 * (base.shape[0] - 1))
    for z in range(n):
        k = z % period
        src = k if k < base.shape[0] else period - k
        out[z] = np.tile(base[src], reps)[:size, :size]
    return out


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def write_zarr(path: Path, data: np.ndarray, kind: str) -> tuple[float, float]:
    """(seconds writing ``data`` into a new OME-Zarr store block by block, seconds committing it)."""
    from activeseg import io

    writer = io.create_output(path, data.shape, data.dtype, voxel_size=VOXEL, kind=kind)
    t0 = time.perf_counter()
    for z0 in range(0, data.shape[0], 16):
        writer.array[z0 : z0 + 16] = data[z0 : z0 + 16]
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.commit()
    return write_s, time.perf_counter() - t0


def export_labels(model, image: np.ndarray, path: Path) -> tuple[float, float]:
    """(seconds of predict_blocks into a new OME-Zarr labels store, seconds committing it)."""
    from activeseg import io
    from activeseg.loop.blocks import predict_blocks

    writer = io.create_output(path, image.shape, np.uint8, voxel_size=VOXEL, kind="labels")
    t0 = time.perf_counter()
    predict_blocks(model, image, writer.array, mode="labels", values=(0, 1), scheduler="inline",
                   worker_target=writer.worker_target)
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.commit()
    return predict_s, time.perf_counter() - t0


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- main ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (with --cpu: a smoke test of every code path)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (only with --quick: CPU figures mean nothing here)")
    ap.add_argument("--slices", type=int, default=600, help="inference stack depth")
    ap.add_argument("--size", type=int, default=1024, help="inference slice side")
    ap.add_argument("--steps", type=int, default=50, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=10, help="training steps before timing")
    ap.add_argument("--batch", type=int, default=16, help="inference batch (slices per forward pass)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the zarr outputs go (default a temporary folder)")
    args = ap.parse_args(argv)
    if args.cpu and not args.quick:
        ap.error("--cpu is for the smoke test: give --quick too")

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    device = "cpu" if args.cpu else "cuda"

    # ome-zarr (with scikit-image and dask) is imported by the first commit: import it now, untimed
    import ome_zarr.writer  # noqa: F401

    from activeseg import infer, synth
    from activeseg.infer import InferenceOptions
    from activeseg.loop.blocks import block_size

    t_all = time.perf_counter()
    if args.quick:
        vol_shape, n, size, steps, warmup = (12, 96, 96), 8, 128, 2, 1
        shapes = [(2, 64), (2, 96)]
    else:
        vol_shape, n, size, steps, warmup = (32, 512, 512), args.slices, args.size, args.steps, args.warmup
        shapes = [(8, 128), (16, 256)]
    batch = 2 if args.quick else args.batch
    vol = synth.synthesize(vol_shape, structure="blobs", porosity=0.8, difficulty="hard",
                           rng=np.random.default_rng(args.seed))
    labels = {z: vol.truth[z] for z in labelled_ids(vol_shape[0], 5)}
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores, smoke test)"
    print(f"device {gpu}; synthetic volume {vol_shape} in {time.perf_counter() - t_all:.1f} s", flush=True)

    rows: list[tuple[str, str, str, str]] = []
    model = None
    for b, p in shapes:
        rate = {}
        for bf16 in (False, True):
            rate[bf16], m = train_speed(vol.image, labels, device=device, bf16=bf16, batch=b, patch=p,
                                        warmup=warmup, steps=steps, seed=args.seed)
            if bf16:
                model = m
        print(f"training {b} x {p}^2: fp32 {rate[False]:.2f} it/s, bf16 + channels_last {rate[True]:.2f} it/s",
              flush=True)
        rows.append((f"training, {b} x {p}² patches, {steps} steps", "fp32", f"{rate[False]:.2f} it/s", "1.00×"))
        rows.append(("", "bf16 autocast + channels_last", f"{rate[True]:.2f} it/s",
                     f"**{rate[True] / rate[False]:.2f}×**"))
    assert model is not None

    image = big_stack(vol.image, n, size)
    # fp32 first: the bf16 probabilities (the default) stay in the sink for the zarr writing
    opts = {"fp32": InferenceOptions(device=device, batch_size=batch, autocast="off"),
            "bf16": InferenceOptions(device=device, batch_size=batch, autocast="bf16")}
    sink = np.empty((n, size, size), dtype=np.float32)
    compute = {}
    for name, o in opts.items():
        infer.predict_stack(model, image, slices=range(min(32, n)), options=o)  # warm-up, and the stack's range
        compute[name] = timed(lambda o=o: infer.predict_stack(model, image, out=sink, options=o), device)
        print(f"inference compute {name}: {compute[name]:.2f} s ({n / compute[name]:.1f} slices/s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_", dir=args.workdir) as tmp:
        work = Path(tmp)
        prob_w, prob_c = write_zarr(work / "prob.zarr", sink, "probabilities")
        prob_mb = store_bytes(work / "prob.zarr") / 1e6
        shutil.rmtree(work / "prob.zarr")
        lab = (sink >= 0.5).astype(np.uint8)
        lab_w, lab_c = write_zarr(work / "labels.zarr", lab, "labels")
        lab_mb = store_bytes(work / "labels.zarr") / 1e6
        del lab
        e2e_p, e2e_c = export_labels(model, image, work / "export.zarr")
    print(f"zarr: probabilities write {prob_w:.2f} s + commit {prob_c:.2f} s; labels write {lab_w:.2f} s + commit "
          f"{lab_c:.2f} s; export end to end {e2e_p:.2f} s + commit {e2e_c:.2f} s", flush=True)

    gb = n * size * size * 4 / 1e9
    target = "≤ 5 s" if (n, size) == (600, 1024) else "—"
    rows += [
        (f"inference compute, {n} × {size}², batch {batch}", "bf16 (default)",
         f"**{compute['bf16']:.2f} s** ({n / compute['bf16']:.0f} slices/s)", target),
        ("", "fp32", f"{compute['fp32']:.2f} s ({n / compute['fp32']:.0f} slices/s)",
         f"bf16 {compute['fp32'] / compute['bf16']:.2f}× faster"),
        ("zarr writing, float32 probabilities", f"{gb:.2f} GB → {prob_mb:.0f} MB on disk",
         f"{prob_w:.2f} s write + {prob_c:.2f} s commit", f"{gb * 1e3 / prob_w:.0f} MB/s"),
        ("zarr writing, uint8 labels", f"{gb / 4:.2f} GB → {lab_mb:.0f} MB on disk",
         f"{lab_w:.2f} s write + {lab_c:.2f} s commit", f"{gb / 4 * 1e3 / lab_w:.0f} MB/s"),
        ("labels export end to end (predict_blocks inline → OME-Zarr)",
         f"default options (bf16 on CUDA), blocks of {block_size(image.shape, 2)} slices",
         f"{e2e_p:.2f} s + {e2e_c:.2f} s commit", f"{n / (e2e_p + e2e_c):.0f} slices/s"),
    ]
    cuda = torch.version.cuda or "none"
    tf32 = torch.backends.cudnn.allow_tf32
    print()
    print(f"GPU benchmark, {time.strftime('%Y-%m-%d')}, {gpu}, torch {torch.__version__} (CUDA {cuda}), "
          f"{platform.node()} ({os.cpu_count()} CPUs), python {platform.python_version()}; default network "
          f"({model.config.encoder}, depth {model.config.encoder_depth}, {len(model.config.offsets)} context slices); "
          f"fp32 convolutions may use TF32: {tf32}; whole run {time.perf_counter() - t_all:.0f} s")
    print()
    print("| measurement | setting | result | vs / target |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
