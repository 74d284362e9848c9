"""Benchmark: ResUNet training speed of candidate encoders, and the accuracy target.

``--speed``: training iterations/s (batches of 8 x 128² patches, 5 context slices) and
inference slices/s at 512² for candidate encoders / depths / decoder widths, in one
run, so the CPU default can be chosen by measurement; plus CPU ablations of the default
(channels_last, bf16 autocast) for training.

``--accuracy``: the accuracy target run. A hard synthetic volume (porosity 0.80,
120x192x192 by default, :func:`activeseg.synth.synthesize` with ``difficulty="hard"``),
5 evenly spaced fully labelled slices (the centres of 5 equal bins of z), the default
TrainConfig; accuracy, solid-phase IoU and porosity error on the unlabelled slices, for
5-slice context (the default) and single-slice input with the same training, plus the
training wall time. Targets: stack accuracy at least 0.95 with 2.5D input, at least 1
point above single-slice input, in at most 3 minutes of training on 2 CPU cores.

Usage::

    python benchmarks/bench_train.py --speed
    python benchmarks/bench_train.py --accuracy --seeds 0 1
    python benchmarks/bench_train.py --accuracy --threads 2 --configs default single resnet34
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CANDIDATES = {
    # name: ModelConfig overrides
    "r18-d5-128": {"encoder": "resnet18", "encoder_depth": 5, "decoder_channels": (128, 64, 32, 16, 16)},
    "r18-d5-256": {"encoder": "resnet18", "encoder_depth": 5, "decoder_channels": (256, 128, 64, 32, 16)},
    "r18-d4-64": {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": (64, 32, 16, 16)},
    "r34-d5-128": {"encoder": "resnet34", "encoder_depth": 5, "decoder_channels": (128, 64, 32, 16, 16)},
    "r34-d5-256": {"encoder": "resnet34", "encoder_depth": 5, "decoder_channels": (256, 128, 64, 32, 16)},
    "r34-d4-64": {"encoder": "resnet34", "encoder_depth": 4, "decoder_channels": (64, 32, 16, 16)},
}

ACCURACY_CONFIGS = {
    "default": {},
    "single": {"offsets": (0,)},
    "resnet34": {"encoder": "resnet34"},
    "r18-d5": {"encoder_depth": 5},
    "r18-d5-256": {"decoder_channels": (256, 128, 64, 32, 16)},
    "no-dropout": {"dropout": 0.0},
}


def _volume(shape, seed):
    from activeseg.synth import synthesize

    t = time.perf_counter()
    vol = synthesize(tuple(shape), structure="blobs", porosity=0.8, difficulty="hard", rng=np.random.default_rng(seed))
    return vol, time.perf_counter() - t


def speed(args) -> None:
    import torch

    from activeseg.infer import InferenceOptions, predict_stack
    from activeseg.model import ModelConfig
    from activeseg.train import TrainConfig, train_model

    vol, _ = _volume((24, 256, 256), 0)
    labels = np.full(vol.truth.shape, 255, np.uint8)
    labels[[6, 12, 18]] = vol.truth[[6, 12, 18]]
    rng = np.random.default_rng(0)
    image512 = rng.integers(0, 256, (args.infer_slices, 512, 512), dtype=np.uint8)
    rows = []
    names = args.candidates or list(CANDIDATES)
    runs = [(n, CANDIDATES[n], {}) for n in names]
    if not args.no_ablations:
        # the default (r18-d4-64) already uses channels_last on CPU: the ablation turns it off
        runs += [("r18-d4-64 channels_last off", CANDIDATES["r18-d4-64"], {"channels_last": False}),
                 ("r18-d4-64 +bf16 autocast", CANDIDATES["r18-d4-64"], {"autocast": "bf16"})]
    best_it = {r[0]: 0.0 for r in runs}
    best_sl = {r[0]: 0.0 for r in runs}
    n_par = {}
    # interleaved rounds, best of each: the CPU may be shared with other jobs
    for rnd in range(args.rounds):
        for name, over, tover in (runs if rnd % 2 == 0 else runs[::-1]):
            mc = ModelConfig(**over)
            stamps = {}
            cfg = TrainConfig(steps=args.steps, batch_size=8, patch_size=128, val_fraction=0.0, device="cpu", **tover)
            model, _ = train_model(vol.image, labels, config=cfg, model_config=mc, rng=np.random.default_rng(0),
                                   callback=lambda s, t, i, stamps=stamps: stamps.__setitem__(s, time.perf_counter()))
            best_it[name] = max(best_it[name], (args.steps - 2) / (stamps[args.steps] - stamps[2]))
            predict_stack(model, image512[:1], options=InferenceOptions(device="cpu"))
            t = time.perf_counter()
            predict_stack(model, image512, options=InferenceOptions(device="cpu", batch_size=4))
            best_sl[name] = max(best_sl[name], len(image512) / (time.perf_counter() - t))
            n_par[name] = sum(p.numel() for p in model.net.parameters()) / 1e6
            print(f"  round {rnd}: {name}: {best_it[name]:.2f} it/s, {best_sl[name]:.2f} slices/s", flush=True)
    rows = [(name, n_par[name], best_it[name], best_sl[name]) for name, _, _ in runs]
    base = rows[0]
    print(f"\ntorch threads {torch.get_num_threads()}; training: batches of 8 x 128² x 5 slices (fwd+bwd+AdamW); "
          f"inference: predict_stack at 512², batch 4; best of {args.rounds} interleaved rounds")
    print("| model | params (M) | train it/s | vs first | infer slices/s (512²) | vs first |")
    print("|---|---|---|---|---|---|")
    for name, n_par, it_s, sl_s in rows:
        print(f"| {name} | {n_par:.1f} | {it_s:.2f} | {it_s / base[2]:.2f}x | {sl_s:.2f} | {sl_s / base[3]:.2f}x |")


def accuracy(args) -> None:
    import torch

    from activeseg import metrics
    from activeseg.infer import InferenceOptions, predict_stack
    from activeseg.model import ModelConfig
    from activeseg.train import TrainConfig, train_model

    rows = []
    for vseed in args.volume_seeds:
        vol, synth_s = _volume(args.shape, vseed)
        z = vol.image.shape[0]
        zs = ((np.arange(5) + 0.5) * z / 5).astype(int)
        labels = np.full(vol.truth.shape, 255, np.uint8)
        labels[zs] = vol.truth[zs]
        unl = np.setdiff1d(np.arange(z), zs)
        print(f"volume seed {vseed}: {vol.image.shape} porosity {vol.truth.mean():.3f} (synth {synth_s:.1f} s), "
              f"labelled slices {zs.tolist()}", flush=True)
        for seed in args.seeds:
            for name in args.configs:
                mc = ModelConfig(**ACCURACY_CONFIGS[name])
                cfg = TrainConfig(device="cpu", **({"steps": args.steps} if args.steps else {}))
                t = time.perf_counter()
                model, hist = train_model(vol.image, labels, config=cfg, model_config=mc, rng=np.random.default_rng(seed))
                train_s = time.perf_counter() - t
                t = time.perf_counter()
                prob = predict_stack(model, vol.image, slices=unl, options=InferenceOptions(device="cpu"))
                pred_s = time.perf_counter() - t
                pred = prob.argmax(1).astype(np.uint8)
                truth = vol.truth[unl]
                row = dict(
                    volume=vseed, seed=seed, config=name, offsets=len(mc.offsets), train_s=train_s,
                    steps=hist["steps_run"], best=hist["best_step"], pred_s=pred_s,
                    acc=metrics.accuracy(pred, truth), iou_solid=metrics.iou(pred, truth, 0),
                    por_err=metrics.porosity_error(pred, truth),
                    bce=metrics.bce(prob[:, 1], truth),
                )
                rows.append(row)
                print(f"  {name} seed {seed}: acc {row['acc']:.4f} solid IoU {row['iou_solid']:.4f} "
                      f"train {train_s:.0f} s ({row['steps']} steps, best {row['best']})", flush=True)
    print(f"\ntorch threads {torch.get_num_threads()}; hard synthetic volume {tuple(args.shape)}, porosity 0.80, "
          "5 evenly spaced labelled slices; metrics over the unlabelled slices")
    print("| volume | seed | config | context slices | accuracy | solid IoU | porosity error | BCE | train s | steps (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['seed']} | {r['config']} | {r['offsets']} | {r['acc']:.4f} | {r['iou_solid']:.4f} | "
              f"{r['por_err']:+.4f} | {r['bce']:.3f} | {r['train_s']:.0f} | {r['steps']} ({r['best']}) |")
    by = {}
    for r in rows:
        by.setdefault(r["config"], []).append(r)
    print("\n| config | mean accuracy | mean solid IoU | mean train s |")
    print("|---|---|---|---|")
    for name, rs in by.items():
        print(f"| {name} | {np.mean([r['acc'] for r in rs]):.4f} | {np.mean([r['iou_solid'] for r in rs]):.4f} | "
              f"{np.mean([r['train_s'] for r in rs]):.0f} |")
    if "default" in by and "single" in by:
        d = np.mean([r["acc"] for r in by["default"]]) - np.mean([r["acc"] for r in by["single"]])
        print(f"\n2.5D minus single-slice accuracy: {100 * d:+.2f} points (target >= +1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0,
                    help="speed: steps per candidate and round (default 8); accuracy: override TrainConfig.steps")
    ap.add_argument("--candidates", nargs="*", default=None, choices=list(CANDIDATES))
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--infer-slices", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[120, 192, 192])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--volume-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--configs", nargs="+", default=["default", "single"], choices=list(ACCURACY_CONFIGS))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.speed or args.accuracy):
        ap.error("choose --speed and/or --accuracy")
    if args.speed:
        if not args.steps:
            args.steps = 8
        speed(args)
        args.steps = 0
    if args.accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
