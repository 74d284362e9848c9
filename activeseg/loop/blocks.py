"""Whole-stack work in z-blocks, in this process or on the workers of a Dask cluster.

A whole-stack prediction (``export``, ``predict``, ``train``'s evaluation) and the
per-slice scores of ``query`` are cut into blocks of consecutive slices. Each block is one
task: it reads its slices and the context planes around them (the network's 2.5D input,
the forest's z-context features: the halo each model needs, read straight from the
stack), predicts, turns probabilities into the requested output and either writes its
region of the output itself (an OME-Zarr store: every chunk holds one slice, so no two
tasks share a chunk) or returns it to the process that owns the output (a TIFF, a scratch
array). Inline, the same block function runs in this process with the model in memory and
Dask is never imported; on a cluster (:mod:`activeseg.cluster`) the model travels as its
files' bytes — the network's safetensors and ``model.json``, the forest's pickle-free
``.npz`` — loaded once per worker process, and the stack travels as its path (a
:class:`activeseg.io.Stack` reopens itself on the worker). See docs/architecture.md §11.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg import uncertainty
from activeseg.bootstrap import load_rf, save_rf
from activeseg.cluster import Scheduler, has_gpu_workers, open_client, parse_scheduler, run_tasks
from activeseg.errors import ConfigError
from activeseg.io import open_output_block
from activeseg.safety import release_pages
from activeseg.tiles import TileGrid

MAX_BLOCK = 16
"""At most this many slices per block (task)."""
MAX_BLOCK_BYTES = 256 << 20
"""At most this many bytes of float32 class probabilities per block: fewer slices per
block on large slices, at least one."""

MODES = ("raw", "probabilities", "labels")


def block_size(shape: Sequence[int], n_classes: int, *, max_block: int = MAX_BLOCK,
               max_bytes: int = MAX_BLOCK_BYTES) -> int:
    """Slices per block for a stack of ``shape`` (Z, Y, X) and a model of C classes."""
    per_slice = int(n_classes) * int(shape[1]) * int(shape[2]) * 4
    return int(max(1, min(int(max_block), int(max_bytes) // max(per_slice, 1), int(shape[0]))))


def plan_blocks(n_slices: int, size: int) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]`` covering ``0..n_slices`` in blocks of ``size`` (the last shorter)."""
    size = max(1, int(size))
    return [(z0, min(z0 + size, int(n_slices))) for z0 in range(0, int(n_slices), size)]


# --- models that travel ----------------------------------------------------------------------


def _is_network(model) -> bool:
    return hasattr(model, "net")


def model_payload(model) -> dict:
    """The bytes a worker rebuilds ``model`` from: ``{"kind", "files": {name: bytes}, "digest"}``.

    A network is its ``model.safetensors`` and ``model.json`` (:func:`activeseg.network.save_model`),
    a Random Forest its ``rf.npz`` (:func:`activeseg.bootstrap.save_rf`): no pickled code.
    """
    with tempfile.TemporaryDirectory(prefix="activeseg-model-") as tmp:
        if _is_network(model):
            from activeseg.network import save_model  # torch: a network is being shipped

            save_model(model, tmp)
            kind = "network"
        else:
            save_rf(model, Path(tmp) / "rf.npz")
            kind = "rf"
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    h = hashlib.sha256(kind.encode())
    for name, data in files.items():
        h.update(name.encode())
        h.update(data)
    return {"kind": kind, "files": files, "digest": h.hexdigest()}


_LOADED: dict[str, Any] = {}
"""Models rebuilt in this (worker) process, by payload digest (the last two kept)."""
_LOADED_LOCK = threading.Lock()


def model_from_payload(payload: Mapping[str, Any], *, threads: int | None = None):
    """The model of :func:`model_payload`'s bytes, loaded once per process and kept."""
    digest = str(payload["digest"])
    with _LOADED_LOCK:  # tasks running side by side in one worker load a model once
        return _load_payload(payload, digest, threads)


def _load_payload(payload: Mapping[str, Any], digest: str, threads: int | None):
    model: Any = _LOADED.get(digest)
    if model is None:
        with tempfile.TemporaryDirectory(prefix="activeseg-model-") as tmp:
            for name, data in payload["files"].items():
                Path(tmp, os.path.basename(name)).write_bytes(data)
            if payload["kind"] == "network":
                from activeseg.network import load_model  # torch: a network was shipped

                model = load_model(tmp)
            else:
                model = load_rf(Path(tmp) / "rf.npz")
        while len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[digest] = model
    if threads and not _is_network(model):
        model.n_jobs = int(threads)
    return model


def _set_threads(threads: int | None, payload: Mapping[str, Any]) -> None:
    """Torch threads of this worker process for a network's task (each task uses its worker's
    share of the cores); a forest's task never loads torch (it sets its own ``n_jobs``)."""
    if not threads or payload.get("kind") != "network":
        return
    import torch  # heavy: only on a worker that runs a network

    if torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


# --- one block -----------------------------------------------------------------------------------


def block_probabilities(model, image, z0: int, z1: int, *, callback: Callable[[int, int], None] | None = None
                        ) -> np.ndarray:
    """float32 ``(z1 - z0, C, Y, X)`` class probabilities of slices ``z0..z1`` (any model)."""
    slices = list(range(int(z0), int(z1)))
    if _is_network(model):
        from activeseg.infer import predict_stack  # torch: a network is being run

        return predict_stack(model, image, slices=slices, callback=callback)
    probs = model.predict_proba(image, slices)
    if callback is not None:
        callback(len(slices), len(slices))
    return probs


def finish_block(probs: np.ndarray, z0: int, *, mode: str, n_classes: int, values: Sequence[int] | None = None,
                 fixed: Mapping[int, np.ndarray] | None = None, all_classes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(data, fractions)`` of a block's probabilities ``(n, C, Y, X)`` starting at slice ``z0``.

    ``mode``: "raw" (the probabilities as a whole-stack prediction stores them: the pore
    probability ``(n, Y, X)`` for C = 2, else ``(n, C, Y, X)``), "probabilities" (the
    same with the slices in ``fixed`` (z -> class-id mask) taken from their labels) or
    "labels" (uint8 ``values[k]`` where class k wins: pore where its probability is at
    least 0.5 for C = 2, the most probable class otherwise; ``fixed`` slices from their
    labels). ``all_classes``: probabilities keep the class axis for C = 2 too.
    ``fractions`` is float64 ``(n, C)``: each slice's fraction of pixels per class.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    fixed = {} if mode == "raw" or fixed is None else fixed
    n = probs.shape[0]
    binary = n_classes == 2
    if binary:
        lab = (probs[:, 1] >= 0.5).astype(np.uint8)
    else:
        lab = np.argmax(probs, axis=1).astype(np.uint8)
    for i in range(n):
        mk = fixed.get(z0 + i)
        if mk is not None:
            lab[i] = mk
    fractions = np.stack([np.bincount(lab[i].ravel(), minlength=n_classes)[:n_classes] / lab[i].size
                          for i in range(n)]).astype(np.float64)
    if mode == "labels":
        lut = np.asarray(values if values is not None else range(n_classes), dtype=np.uint8)
        return lut[lab], fractions
    pore_only = binary and not all_classes
    data = probs[:, 1] if pore_only else probs
    for i in range(n):
        mk = fixed.get(z0 + i)
        if mk is not None:
            data[i] = mk.astype(np.float32) if pore_only else (
                np.arange(n_classes, dtype=np.uint8)[:, None, None] == mk[None]).astype(np.float32)
    return np.ascontiguousarray(data, dtype=np.float32), fractions


def run_block(task: Mapping[str, Any]) -> dict:
    """One block on a worker: rebuild the model, predict, finish, write or return.

    ``task``: ``image`` (a :class:`activeseg.io.Stack` or array), ``model`` (a
    :func:`model_payload`), ``z0``, ``z1``, ``mode``, ``n_classes``, ``values``, ``fixed``
    (the block's labelled slices), ``target`` (an OME-Zarr output's
    ``worker_target``, written here; None: the data are returned) and ``threads``.
    Returns ``{"z0", "z1", "fractions", "data"}`` (``data`` None when written here).
    """
    _set_threads(task.get("threads"), task["model"])
    model = model_from_payload(task["model"], threads=task.get("threads"))
    z0, z1 = int(task["z0"]), int(task["z1"])
    probs = block_probabilities(model, task["image"], z0, z1)
    data: np.ndarray | None
    data, fractions = finish_block(probs, z0, mode=task["mode"], n_classes=int(task["n_classes"]),
                                   values=task.get("values"), fixed=task.get("fixed"),
                                   all_classes=bool(task.get("all_classes")))
    target = task.get("target")
    if target is not None:
        open_output_block(target)[z0:z1] = data
        data = None
    return {"z0": z0, "z1": z1, "fractions": fractions, "data": data}


# --- whole stacks ---------------------------------------------------------------------------------


def _task_threads(sched: Scheduler) -> int:
    """Threads of one task: a local worker runs one task at a time with this machine's cores
    shared out; a remote worker runs one task per thread it has, each with one thread."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, sched.workers)) if sched.kind == "local" else 1


def predict_blocks(
    model,
    image,
    out,
    *,
    mode: str = "raw",
    values: Sequence[int] | None = None,
    fixed: Mapping[int, np.ndarray] | None = None,
    scheduler: Scheduler | str | None = None,
    worker_target: dict | None = None,
    block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict every slice of ``image`` block by block into ``out``; returns the fractions per slice.

    Parameters
    ----------
    model : the RF or a network (C classes: ``model.n_classes``).
    image : (Z, Y, X) stack (a lazy :class:`activeseg.io.Stack` on a cluster: it travels
        as its path).
    out : writable array indexed by z: ``(Z, Y, X)`` (pore probability or labels) or
        ``(Z, C, Y, X)``; a memmap, a zarr array or an ndarray.
    mode, values, fixed : see :func:`finish_block`.
    scheduler : "inline" (default), "local:N" or a Dask scheduler address.
    worker_target : an OME-Zarr output's target: the workers write their blocks into it
        themselves (``out`` is then that store's array, written by nobody else).
    block : slices per block (default :func:`block_size`).
    progress : ``progress(done, total)`` in slices.

    Returns
    -------
    float64 ``(Z, C)``: the fraction of each slice's pixels per class.
    """
    sched = parse_scheduler(scheduler)
    n_classes = int(getattr(model, "n_classes", 2))
    nz = int(image.shape[0])
    size = int(block) if block else block_size(image.shape, n_classes)
    blocks = plan_blocks(nz, size)
    fractions = np.zeros((nz, n_classes), dtype=np.float64)
    fixed = dict(fixed or {})
    all_classes = len(tuple(out.shape)) == 4

    def store(z0: int, z1: int, data: np.ndarray | None, fr: np.ndarray) -> None:
        if data is not None:
            out[z0:z1] = data
            release_pages(out, z0, z1)
        fractions[z0:z1] = fr

    if sched.inline:
        done = 0
        for z0, z1 in blocks:
            base = done
            cb = (lambda d, t, b=base: progress(b + d, nz)) if progress else None  # noqa: E731
            probs = block_probabilities(model, image, z0, z1, callback=cb)
            data, fr = finish_block(probs, z0, mode=mode, n_classes=n_classes, values=values, fixed=fixed,
                                    all_classes=all_classes)
            store(z0, z1, data, fr)
            done += z1 - z0
            if progress:
                progress(done, nz)
    else:
        with open_client(sched, threads_per_worker=1) as client:
            threads = _task_threads(sched)
            if _is_network(model):
                from activeseg.model import NORM_FIXED, NORM_STACK  # torch: a network is being shipped

                if model.norm_mode == NORM_STACK:
                    # the stack's range once here, not once per task (each task reopens the stack)
                    model = dataclasses.replace(model, norm=model.stack_norm(image), norm_mode=NORM_FIXED)
            payload = client.scatter(model_payload(model), broadcast=True)
            resources = {"GPU": 1} if _is_network(model) and has_gpu_workers(client) else None
            tasks = [{"image": image, "model": payload, "z0": z0, "z1": z1, "mode": mode, "n_classes": n_classes,
                      "values": None if values is None else [int(v) for v in values],
                      "fixed": {z: fixed[z] for z in range(z0, z1) if z in fixed}, "target": worker_target,
                      "threads": threads, "all_classes": all_classes} for z0, z1 in blocks]
            slices_done = 0
            for i, res in run_tasks(client, run_block, tasks, resources=resources, key="activeseg-block"):
                z0, z1 = blocks[i]
                store(z0, z1, res["data"], res["fractions"])
                slices_done += z1 - z0
                if progress:
                    progress(slices_done, nz)
    flush = getattr(out, "flush", None)
    if callable(flush):
        flush()
    return fractions


# --- per-slice scores -----------------------------------------------------------------------------


def score_block(task: Mapping[str, Any]) -> dict:
    """Per-slice scores of one block of slices on a worker (see :func:`score_blocks`)."""
    _set_threads(task.get("threads"), task["model"])
    model = model_from_payload(task["model"], threads=task.get("threads"))
    ref = task.get("reference")
    reference = None if ref is None else model_from_payload(ref, threads=task.get("threads"))
    rng = np.random.default_rng(task["seed"])
    grid = task.get("tiles")
    got = uncertainty.score_slices(model, task["image"], task["names"], slices=task["slices"], reference=reference,
                                   n_samples=int(task["n_samples"]), rng=rng, reduction=task["reduction"],
                                   tiles=None if grid is None else TileGrid(*grid))
    return {k: np.asarray(v, np.float32) for k, v in got.items()}


def score_blocks(model, image, names: Sequence[str], *, slices: np.ndarray, scheduler: Scheduler | str | None,
                 reference=None, n_samples: int = 8, rng: np.random.Generator, reduction: str = "mean",
                 block: int | None = None, progress: Callable[[int, int], None] | None = None,
                 tiles: TileGrid | None = None) -> dict[str, np.ndarray]:
    """Per-slice scores ``name -> float32 (Z,)`` (NaN off ``slices``) on a Dask cluster
    (per-tile scores ``tile:NAME -> float32 (Z, n_tiles)`` with ``tiles``, the session's grid).

    Each block of ``slices`` is one task. Scorers without sampling (entropy, margin,
    porosity, RF disagreement) give exactly the inline values; sampling scorers (BALD, TTA)
    draw each block's samples from its own generator, spawned from ``rng``.
    """
    sched = parse_scheduler(scheduler)
    slices = np.asarray(slices, dtype=np.int64)
    nz = int(image.shape[0])
    n_classes = int(getattr(model, "n_classes", 2))
    size = int(block) if block else block_size(image.shape, n_classes)
    chunks = [slices[i : i + size] for i in range(0, len(slices), size)]
    # the session's generator is drawn from only when a scorer samples (BALD): then once, and
    # each block's generator derives from that draw; otherwise the generator is left as inline
    # scoring leaves it, so the strategy and the audit draw the same slices either way
    sampling = any("samples" in uncertainty.score_needs(n) for n in names)
    base = int(rng.integers(0, 2**63 - 1)) if sampling else 0
    seeds = [[base, i] for i in range(len(chunks))]
    out: dict[str, np.ndarray] = {}
    with open_client(sched, threads_per_worker=1) as client:
        threads = _task_threads(sched)
        payload = client.scatter(model_payload(model), broadcast=True)
        ref = None if reference is None else client.scatter(model_payload(reference), broadcast=True)
        resources = {"GPU": 1} if _is_network(model) and has_gpu_workers(client) else None
        tasks = [{"image": image, "model": payload, "reference": ref, "names": list(names), "slices": c.tolist(),
                  "n_samples": int(n_samples), "seed": s, "reduction": reduction, "threads": threads,
                  "tiles": None if tiles is None else (tiles.ny, tiles.nx, tiles.tile)}
                 for c, s in zip(chunks, seeds)]
        done = 0
        for i, got in run_tasks(client, score_block, tasks, resources=resources, key="activeseg-scores"):
            for name, vals in got.items():
                arr = out.setdefault(name, np.full((nz, *vals.shape[1:]), np.nan, dtype=np.float32))
                arr[chunks[i]] = vals[chunks[i]] if vals.shape[0] == nz else vals
            done += len(chunks[i])
            if progress:
                progress(done, len(slices))
    return out
