"""Time every registered strategy on realistic stack sizes, relative to `random`.

Also prints two quality figures for each pick set (lower is better):
- z-radius: largest distance (in slices) from any slice to the nearest labelled/picked one;
- emb-radius: the same in embedding space (the k-center objective coreset minimises).

Usage: python benchmarks/bench_strategies.py [--z 2000] [--dim 256] [--n 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from activeseg.registry import QueryContext, available_strategies, run_strategy


def make_context(z: int, dim: int, seed: int) -> QueryContext:
    rng = np.random.default_rng(seed)
    # smooth per-slice structure along z (adjacent slices are near duplicates)
    walk = np.cumsum(rng.normal(size=(z, dim)), axis=0) / np.sqrt(z)
    emb = (walk + 0.05 * rng.normal(size=(z, dim))).astype(np.float32)
    base = np.convolve(rng.random(z), np.ones(25) / 25, mode="same")
    scores = {
        name: (base + 0.05 * rng.random(z)).astype(np.float32)
        for name in ("entropy", "margin", "bald", "rf_disagreement")
    }
    scores["porosity"] = (0.8 + 0.05 * rng.standard_normal(z)).astype(np.float32)
    for s in scores.values():
        s[rng.random(z) < 0.1] = np.nan
    labelled = np.zeros(z, dtype=bool)
    labelled[np.linspace(0, z - 1, 10).astype(int)] = True
    return QueryContext(n_slices=z, labelled=labelled, rng=np.random.default_rng(seed), scores=scores, embeddings=emb)


def radius_z(z: int, chosen: np.ndarray) -> int:
    chosen = np.sort(chosen)
    idx = np.arange(z)
    j = np.clip(np.searchsorted(chosen, idx), 1, chosen.size - 1)
    return int(np.minimum(np.abs(idx - chosen[j - 1]), np.abs(chosen[j] - idx)).max())


def radius_emb(emb: np.ndarray, chosen: np.ndarray) -> float:
    x = emb.astype(np.float64)
    c = x[chosen]
    d = (x * x).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * x @ c.T
    return float(np.sqrt(np.maximum(d, 0).min(axis=1).max()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--z", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ctx = make_context(args.z, args.dim, 0)
    names = [n for n, i in available_strategies().items() if i.ok]
    for name in names:  # warm-up (imports modAL for ranked_batch)
        run_strategy(name, ctx, args.n)
    rows = []
    for name in names:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ids = run_strategy(name, ctx, args.n)
            times.append(time.perf_counter() - t)
        chosen = np.r_[np.flatnonzero(ctx.labelled), ids]
        rows.append((name, min(times), ids.size, radius_z(args.z, chosen), radius_emb(ctx.embeddings, chosen)))
    t_random = dict((r[0], r[1]) for r in rows)["random"]
    print(f"Z={args.z} D={args.dim} n={args.n} (10 labelled, 10% NaN scores); best of {args.repeat}")
    print(f"{'strategy':16s} {'time ms':>9s} {'x random':>9s} {'picked':>6s} {'z-radius':>8s} {'emb-radius':>10s}")
    for name, t, k, rz, re in sorted(rows, key=lambda r: r[1]):
        print(f"{name:16s} {1e3 * t:9.2f} {t / t_random:9.1f} {k:6d} {rz:8d} {re:10.3f}")


if __name__ == "__main__":
    main()
