"""Benchmark: whole-stack inference, activeseg.infer.predict_stack vs a plain smp loop.

Compares, in one run and on the same network (default ModelConfig unless overridden,
batch-norm statistics randomised so folding them is exercised) and the same normalised
2.5D input:

- ``activeseg``: :func:`activeseg.infer.predict_stack` (inference_mode, batch norm
  folded into the convolutions, channels_last on CPU, background slice reading);
- ``plain``: ``model.net.eval()`` under ``torch.no_grad()``, fp32, same batch size, the
  input built with the same :func:`activeseg.model.make_input`, softmax;
- ``naive``: the plain loop with one slice per forward pass;
- optional ablations (``--ablations``): folding only, channels_last only.

Reports slices/s (best of ``--repeats`` interleaved rounds, since the CPU may be shared),
the ratio to the plain loop, the max abs difference of the probabilities to the plain
loop, and the peak anonymous memory (RssAnon, sampled; file-backed memmap pages are
excluded because the kernel can drop them) of each method in a fresh subprocess.
``--depth-check`` streams stacks of two depths into an on-disk ``out`` and compares
peak memory: it should not grow with depth.

On CUDA (``--device cuda``) it also times 600 slices of 1024^2 in bf16 and reports
compute and writing-to-disk time separately.

Usage::

    python benchmarks/bench_infer.py                      # 512^2 and 1024^2
    python benchmarks/bench_infer.py --sizes 512 --slices 8 --repeats 2 --threads 1
    python benchmarks/bench_infer.py --depth-check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_anon_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """Sample RssAnon every few milliseconds in a thread; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kib())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = rss_anon_kib()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_anon_kib())
        self.peak_mib = self.peak / 1024
        self.delta_mib = (self.peak - self.base) / 1024


def make_model(args):
    import torch

    from activeseg.model import ModelConfig, build_model
    from activeseg.network import SegModel

    kw = {}
    if args.encoder:
        kw["encoder"] = args.encoder
    if args.depth:
        kw["encoder_depth"] = args.depth
    cfg = ModelConfig(**kw)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model(cfg)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return SegModel(net=net.eval(), config=cfg, norm=(0.0, 255.0), device=args.device)


def make_stack(path: Path, n: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    base = rng.integers(0, 256, (size, size), dtype=np.uint8)
    for z in range(n):
        arr[z] = np.roll(base, 3 * z, axis=0) // 2 + rng.integers(0, 128, (size, size), dtype=np.uint8)
    arr.flush()
    del arr
    return np.load(path, mmap_mode="r")


def run_plain(model, image, batch: int) -> np.ndarray:
    import torch

    from activeseg.infer import pad_to_multiple

    net = model.net.eval()
    n = image.shape[0]
    out = np.empty((n, model.n_classes) + image.shape[1:], dtype=np.float32)
    h, w = image.shape[1:]
    with torch.no_grad():
        for s in range(0, n, batch):
            x = torch.from_numpy(model.make_input(image, range(s, min(n, s + batch))))
            y = torch.softmax(net(pad_to_multiple(x, model.multiple)), dim=1)[..., :h, :w]
            out[s : s + batch] = y.numpy()
    return out


def run_method(name: str, model, image, batch: int) -> np.ndarray:
    from activeseg import infer
    from activeseg.infer import InferenceOptions

    if name == "activeseg":
        return infer.predict_stack(model, image, options=InferenceOptions(device=model.device, batch_size=batch))
    if name == "plain":
        return run_plain(model, image, batch)
    if name == "naive":
        return run_plain(model, image, 1)
    if name == "fold_only":
        return infer.predict_stack(model, image, options=InferenceOptions(device=model.device, batch_size=batch,
                                                                          channels_last=False))
    if name == "channels_last_only":
        return infer.predict_stack(model, image, options=InferenceOptions(device=model.device, batch_size=batch,
                                                                          channels_last=True, fuse=False))
    raise ValueError(name)


def child(args) -> None:
    """Run one method once in this fresh process; print JSON with peak memory."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args)
    image = np.load(args.stack, mmap_mode="r")
    if args.child == "stream":
        from activeseg import infer
        from activeseg.infer import InferenceOptions

        out = np.lib.format.open_memmap(args.out, mode="w+", dtype=np.float32, shape=image.shape)
        with PeakSampler() as ps:
            t = time.perf_counter()
            options = InferenceOptions(device=model.device, batch_size=args.batch)
            infer.predict_stack(model, image, out=out, options=options)
            dt = time.perf_counter() - t
    else:
        with PeakSampler() as ps:
            t = time.perf_counter()
            run_method(args.child, model, image, args.batch)
            dt = time.perf_counter() - t
    print(json.dumps({"peak_mib": ps.peak_mib, "delta_mib": ps.delta_mib, "seconds": dt}))


def spawn(args, method: str, stack: Path, out: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--stack", str(stack), "--batch", str(args.batch),
           "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.encoder:
        cmd += ["--encoder", args.encoder]
    if args.depth:
        cmd += ["--depth", str(args.depth)]
    if out is not None:
        cmd += ["--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def speed(args, work: Path) -> list[dict]:
    import torch

    model = make_model(args)
    methods = ["activeseg", "plain", "naive"]
    if args.ablations:
        methods += ["fold_only", "channels_last_only"]
    rows = []
    for size in args.sizes:
        n = args.slices or (16 if size <= 512 else 8)
        stack = make_stack(work / f"stack_{size}.npy", n, size)
        run_method("plain", model, stack[:2].copy(), args.batch)  # warm-up
        best = {m: float("inf") for m in methods}
        outs = {}
        for r in range(args.repeats):
            order = methods if r % 2 == 0 else methods[::-1]
            for m in order:
                t = time.perf_counter()
                outs[m] = run_method(m, model, stack, args.batch)
                best[m] = min(best[m], time.perf_counter() - t)
        mem = {m: spawn(args, m, work / f"stack_{size}.npy") for m in methods} if not args.no_memory else {}
        for m in methods:
            rows.append({
                "size": size, "slices": n, "method": m, "slices_per_s": n / best[m],
                "ratio_vs_plain": best["plain"] / best[m],
                "max_abs_diff": float(np.abs(outs[m] - outs["plain"]).max()),
                "peak_mib": mem.get(m, {}).get("delta_mib", float("nan")),
            })
        del outs
    print(f"\ntorch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, device {args.device}, "
          f"model {model.config.encoder} depth {model.config.encoder_depth} decoder {model.config.resolved_decoder_channels()}, "
          f"batch {args.batch}, best of {args.repeats}")
    print("| size | slices | method | slices/s | vs plain | max abs diff | peak RssAnon MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['slices']} | {r['method']} | {r['slices_per_s']:.2f} | {r['ratio_vs_plain']:.2f}x | "
              f"{r['max_abs_diff']:.1e} | {r['peak_mib']:.0f} |")
    return rows


def depth_check(args, work: Path) -> None:
    size = args.depth_size
    res = []
    for n in args.depths:
        make_stack(work / f"deep_{n}.npy", n, size)
        r = spawn(args, "stream", work / f"deep_{n}.npy", out=work / f"out_{n}.npy")
        res.append((n, r))
        (work / f"out_{n}.npy").unlink()
    print(f"\nstreaming to an on-disk out, {size}² slices, batch {args.batch}:")
    print("| slices | seconds | peak RssAnon MiB (process) | growth during inference MiB |")
    print("|---|---|---|---|")
    for n, r in res:
        print(f"| {n} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['delta_mib']:.0f} |")


def gpu(args, work: Path) -> None:
    """600 slices of 1024^2 in bf16 on CUDA: compute only, and streaming to disk."""
    import torch

    from activeseg import infer
    from activeseg.infer import InferenceOptions

    model = make_model(args)
    n, size = args.gpu_slices, 1024
    image = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
    options = InferenceOptions(device="cuda", batch_size=args.gpu_batch)
    infer.predict_stack(model, image[:32], options=options)  # warm-up
    torch.cuda.synchronize()
    sink = np.empty((n, size, size), dtype=np.float32)
    t = time.perf_counter()
    infer.predict_stack(model, image, out=sink, options=options)
    torch.cuda.synchronize()
    compute = time.perf_counter() - t
    out = np.lib.format.open_memmap(work / "gpu_out.npy", mode="w+", dtype=np.float32, shape=(n, size, size))
    t = time.perf_counter()
    infer.predict_stack(model, image, out=out, options=options)
    total = time.perf_counter() - t
    print(f"\nGPU {torch.cuda.get_device_name()}: {n} slices of {size}², bf16, batch {args.gpu_batch}")
    print(f"compute (into RAM): {compute:.2f} s ({n / compute:.0f} slices/s); with writing to disk: {total:.2f} s "
          f"(writing adds {total - compute:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--slices", type=int, default=0, help="slices per size (default 16 at 512², 8 at 1024²)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--encoder", default="")
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--depth-check", action="store_true")
    ap.add_argument("--depths", type=int, nargs=2, default=[16, 64])
    ap.add_argument("--depth-size", type=int, default=512)
    ap.add_argument("--gpu-slices", type=int, default=600)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--child", default="")
    ap.add_argument("--stack", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        work = Path(tmp)
        if not args.no_speed:
            speed(args, work)
        if args.depth_check:
            depth_check(args, work)
        if args.device.startswith("cuda"):
            gpu(args, work)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
