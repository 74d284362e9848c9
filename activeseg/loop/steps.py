"""The round steps of the active-learning loop, each a function over a session.

A round moves ``queried -> labelled -> trained``. Every step takes the session lock,
reads the committed state, does one thing and commits it (the manifest is written last),
so a person can stop for days between steps and a killed process loses nothing
committed::

    init_session -> bootstrap -> query -> (export files | oracle) -> import -> train -> query ...

Round 0 holds the bootstrap labels (scribbles, labelled slices, or slices from ground
truth). Rounds 1, 2, ... hold queried slices and their corrections; ``revert`` takes
labels back with a tombstone. See docs/architecture.md §1 and §5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from activeseg import io, registry, uncertainty
from activeseg.cluster import parse_scheduler
from activeseg.config import SessionConfig, load_config, model_kwargs, validate_config
from activeseg.errors import ConfigError, LabelError, SessionError
from activeseg.features import adjacent_correlation, feature_embeddings
from activeseg.holdout import held_out_labels
from activeseg.loop.blocks import score_blocks
from activeseg.loop.evaluate import evaluate_model
from activeseg.loop.gate import judge
from activeseg.loop.state import (
    HUMAN_KINDS,
    LABEL_KINDS,
    Progress,
    add_cost,
    best_network,
    committed_value,
    current_model,
    discard_uncommitted,
    fit_session_rf,
    is_tile_round,
    labelled_slices,
    labels_dict,
    labels_version,
    last_round,
    log,
    no_progress,
    now,
    open_image,
    open_truth,
    pending_regions,
    pending_slices,
    prefill_masks,
    prefill_regions,
    reverted_in,
    reverted_pairs,
    session_config,
    session_grid,
    session_rng,
    shell_quote,
    store_rng,
    tile_labelled,
    waiting,
    write_labels,
    write_region_labels,
)
from activeseg.loop.status import next_step
from activeseg.oracle import (
    Correction,
    export_for_correction,
    export_regions_for_correction,
    find_mask_files,
    find_region_files,
    mask_name,
    pseudo_labels,
    read_corrections,
    read_region_corrections,
    region_file,
    truth_correction,
)
from activeseg.scribbles import simulate_scribbles as draw_scribbles
from activeseg.session import Session, file_fingerprint
from activeseg.tiles import TileGrid, parse_region, region_name


def init_session(
    root: Path,
    image: Path,
    *,
    truth: Path | None = None,
    depth: Path | None = None,
    config: dict | SessionConfig | Path | None = None,
    voxel_size: Sequence[float] | None = None,
    crop: str | None = None,
    seed: int | None = None,
    axes: str | None = None,
    sections: bool = False,
    pore_value: int | None = None,
    verify: bool = False,
) -> Session:
    """Create a session for one stack.

    The truth and depth of a ``synth`` output are found beside its image when not
    given, and the acquisition geometry is read from ``synth.json`` there, else from the
    stack's metadata, else from the config.

    ``n_classes`` follows the labels: a truth holding exactly the values ``0..C-1`` with
    ``C >= 3`` (0 = first solid, 1 = pore, 2.. further solid phases) makes a session of
    C classes unless the config sets ``n_classes`` (a :class:`SessionConfig` always does).

    ``sections=True`` (or ``[session] sections = true`` in the config) declares the stack
    a set of unrelated 2D sections: nothing reads a slice's neighbours (2D RF features,
    single-slice network input, no beam sign, the slice alone in the files to correct;
    :class:`~activeseg.config.SessionConfig`). Without it, the correlation of a few
    adjacent slice pairs is measured, and a warning names the flag when they hardly
    correlate (median Pearson r below ``SECTIONS_R``).

    ``pore_value`` (0 or 255) says the truth is a binary 0/255 mask and which value is
    pore; it is stored in the manifest's truth entry and the truth is decoded wherever it
    is read (:func:`activeseg.loop.state.open_truth`). A 0/255 truth without it is refused.

    Inputs that are zarr stores are fingerprinted by their chunk listing;
    ``verify=True`` also stores the SHA-256 of every chunk's bytes
    (:func:`activeseg.session.file_fingerprint`; docs/architecture.md §5).
    """
    image = Path(image)
    pore_value = io.check_pore_value(pore_value)
    if isinstance(config, (str, Path)):
        config = load_config(Path(config))
    cfg_dict = config.to_dict() if isinstance(config, SessionConfig) else dict(config or {})
    if seed is not None:
        cfg_dict["seed"] = int(seed)
    if sections:
        cfg_dict["sections"] = True
        if isinstance(config, SessionConfig):  # its export_radius is a default, not a choice: sections sets 0
            cfg_dict.pop("export_radius", None)
    beside = image.parent if image.is_file() else None
    synth_meta = None
    if beside is not None and (beside / "synth.json").exists() and image.name == "image.tif":
        synth_meta = json.loads((beside / "synth.json").read_text())
        truth = truth or (beside / "truth.tif")
        depth = depth or (beside / "depth.tif" if (beside / "depth.tif").exists() else None)
    with io.open_stack(image, crop=crop, voxel_size=voxel_size, axes=axes) as img:
        shape, dtype, vs = tuple(img.shape), str(img.dtype), img.voxel_size
        flat = io.intensity_warning(img)  # also reads sample slices: NaN/inf fail here, before anything is written
        if flat:
            log.warning("%s", flat)
        # said once the inputs are known to be usable (an error comes alone)
        uncorrelated = _sections_warning(img, image) if not flat and cfg_dict.get("sections") is not True else None
    geo = dict(cfg_dict.get("geometry") or {})
    if synth_meta and "geometry" in synth_meta:
        for k, v in synth_meta["geometry"].items():
            geo.setdefault(k, v)
    if vs is not None:
        geo["voxel_size"] = list(vs)
    cfg_dict["geometry"] = geo
    cfg = validate_config(SessionConfig.from_dict(cfg_dict))
    if truth is not None and pore_value is None and "n_classes" not in cfg_dict:
        found = _truth_classes(Path(truth), crop)  # n_classes follows the labels (docs/architecture.md §3)
        if found is not None and found > cfg.n_classes:
            log.info("truth %s holds classes 0..%d: the session uses n_classes = %d", truth, found - 1, found)
            cfg = SessionConfig.from_dict({**cfg.to_dict(), "n_classes": found})
    manifest: dict[str, Any] = {
        "stack": {
            **file_fingerprint(image, verify=verify),
            "shape": list(shape),
            "dtype": dtype,
            "crop": crop,
            "voxel_size_arg": None if voxel_size is None else list(voxel_size),
            "axes": axes,
        },
        "truth": None,
        "depth": None,
        "config": cfg.to_dict(),
        "rng_state": np.random.default_rng(cfg.seed).bit_generator.state,
        "rounds": [],
        "model": None,
        "rf": None,  # the stored Random Forest, once one is fitted (loop.state.fit_session_rf)
        "current": {"kind": "rf"},  # the model that pre-fills and exports (the gate: loop.gate)
    }
    for key, path in (("truth", truth), ("depth", depth)):
        if path is None:
            continue
        with io.open_stack(path, crop=crop) as t:
            if tuple(t.shape) != shape:
                raise LabelError(f"{key} {path} has shape {tuple(t.shape)} but the image has {shape}; they must match")
            if key == "truth":
                _check_truth_values(t, Path(path), cfg.n_classes, pore_value)
        manifest[key] = file_fingerprint(Path(path), verify=verify)
        if key == "truth" and pore_value is not None:
            manifest["truth"]["pore_value"] = pore_value
    if pore_value is not None and manifest["truth"] is None:
        raise ConfigError(
            f"pore_value={pore_value} (--pore-value) says how to read a 0/255 ground truth, but no truth was given; "
            "give --truth FILE or leave --pore-value out"
        )
    if uncorrelated:
        log.warning("%s", uncorrelated)
    if truth is not None and manifest["truth"] is not None:
        with io.open_stack(image, crop=crop, voxel_size=voxel_size, axes=axes) as img, \
                io.open_stack(truth, crop=crop) as t:
            flipped = _polarity_warning(img, io.PoreMaskStack(t, pore_value) if pore_value is not None else t,
                                        cfg.n_classes, f"the truth {truth}")
        if flipped:
            log.warning("%s", flipped)
    return Session.create(Path(root), manifest)


def _truth_classes(path: Path, crop: str | None) -> int | None:
    """C when the truth holds exactly the values ``0..C-1`` with ``3 <= C <= 32`` (up to 64
    evenly spaced slices read, one at a time), else None (two classes, a 0/255 mask, gaps:
    left to the checks)."""
    seen = np.zeros(256, dtype=bool)
    with io.open_stack(path, crop=crop) as t:
        if np.dtype(t.dtype).kind not in "ui":
            return None
        nz = int(t.shape[0])
        for z in np.unique(np.linspace(0, nz - 1, min(nz, 64)).round().astype(int)):
            v = np.asarray(t[int(z)])
            if v.min(initial=0) < 0 or v.max(initial=0) > 32:  # not class ids of a multi-phase truth
                return None
            seen |= np.bincount(v.ravel().astype(np.int64), minlength=256).astype(bool)
    n = int(np.flatnonzero(seen).max(initial=0)) + 1
    return n if 3 <= n <= 32 and seen[:n].all() else None


def _check_truth_values(t, path: Path, n_classes: int, pore_value: int | None) -> None:
    """A few evenly spaced truth slices hold classes 0..C-1, or, with ``pore_value``, a
    binary 0/255 mask; a 0/255 mask without ``pore_value`` is refused naming the option."""
    nz = int(t.shape[0])
    zs = [int(z) for z in np.linspace(0, nz - 1, min(nz, 8)).astype(int)]
    values: set[int] = set()
    for z in zs:
        v = np.asarray(t[z])
        vals = np.flatnonzero(np.bincount(v.ravel(), minlength=256)) if v.dtype == np.uint8 else np.unique(v)
        values |= {int(x) for x in vals}
        if pore_value is None and v.max() >= n_classes:
            seen = io.mask_255_values(sorted(values)) if n_classes == 2 else None
            if seen is not None:
                raise LabelError(
                    f"truth {path} is a binary 0/255 mask (slice {z} holds {io.describe_255_values(seen)}), which "
                    "does not say which value is pore: give --pore-value 255 (255 = pore) or --pore-value 0 "
                    "(0 = pore)"
                )
            raise LabelError(
                f"truth {path} slice {z} holds value {v.max()}, outside 0..{n_classes - 1} "
                "(0 = solid, 1 = pore)"
            )
    if pore_value is None:
        return
    if n_classes != 2:
        raise ConfigError(f"--pore-value reads a two-class 0/255 mask, but the session has n_classes={n_classes}")
    if max(values, default=0) < 128 and not (pore_value == 0 and values <= {0, 1}):  # 0/1 with 0 = pore: flipped
        raise LabelError(
            f"truth {path} holds values {', '.join(map(str, sorted(values)[:8]))} (sampled slices {zs[0]}..{zs[-1]}), "
            "none of 128 or more, so it is not a 0/255 mask; as a 0/1 mask it is read with 1 = pore: leave "
            "--pore-value out for that, or give --pore-value 0 if its 0 marks pore"
        )


SECTIONS_R = 0.3
"""Median Pearson r of adjacent slices below which ``init`` suggests ``--sections``.

Adjacent slices of synthetic hard pore-back stacks (every shipped structure, and a real
segmented cathode rendered by the simulator) correlate at r = 0.84-0.96, unrelated
synthetic sections at |r| < 0.1 (``adjacent_correlation``)."""


def _polarity_warning(image, labels, n_classes: int, what: str, *, max_slices: int = 8) -> str | None:
    """A warning when the pixels labelled pore are brighter on average than those labelled
    solid: in FIB-SEM images pores are the darker phase (even grey pore-back pores are
    darker than cut faces), so such labels are most likely read the wrong way round.

    ``labels``: ``{z: uint8 (Y, X)}`` or a lazy (Z, Y, X) label stack (up to ``max_slices``
    evenly spaced slices are read). Two-class sessions only.
    """
    if n_classes != 2:
        return None
    zs = sorted(labels) if isinstance(labels, dict) else range(int(labels.shape[0]))
    zs = [zs[i] for i in np.unique(np.linspace(0, len(zs) - 1, min(len(zs), max_slices)).astype(int))] if zs else []
    total = np.zeros(2)
    count = np.zeros(2)
    for z in zs:
        lab = np.asarray(labels[z])
        img = np.asarray(image[int(z)], dtype=np.float64)
        for c in (0, 1):
            sel = lab == c
            total[c] += img[sel].sum()
            count[c] += np.count_nonzero(sel)
    if count.min() < 100:
        return None
    solid, pore = total / count
    if pore <= solid:
        return None
    return (f"in {what}, the pixels labelled pore (1) are brighter on average ({pore:.0f}) than those labelled solid "
            f"(0: {solid:.0f}); in FIB-SEM images pores are the darker phase, so the labels are probably read the wrong "
            "way round: if the file marks pore with 0 (or a 0/255 mask with the other value), start again with "
            "--pore-value 0 (or the other --pore-value)")


def _sections_warning(img, path: Path) -> str | None:
    """The warning when adjacent slices hardly correlate (likely independent 2D sections), or None."""
    r = adjacent_correlation(img, n_pairs=8)
    if r.size and float(np.median(r)) < SECTIONS_R:
        return (f"adjacent slices of {path} hardly correlate (median r = {float(np.median(r)):.2f} over {r.size} pairs): "
                "if these are independent 2D sections, not a z-stack, remove the new session folder and run init "
                "again with --sections")
    return None


def _check_two_classes(corr, n_classes: int, path: Path | None) -> None:
    """Bootstrap labels must show at least two classes, or no classifier can be fitted."""
    present = set()
    for c in corr:
        present |= {int(v) for v in np.unique(c.mask) if v != 255}
    if len(present) >= 2:
        return
    hint = ""
    if path is not None:
        seen = " (it holds values 0 and 255 only)" if present == {0} else ""
        hint = (f"; if {path} is a binary 0/255 mask (Fiji's default){seen}, 255 reads as 'unlabelled' here: "
                "say which value is pore with --pore-value 255 (255 = pore) or --pore-value 0 (0 = pore), "
                "or save pore as 1 (Fiji: Process > Math > Divide... by 255)")
    raise LabelError(
        f"the bootstrap labels hold only class {sorted(present) or 'none'} of 0..{n_classes - 1}; "
        f"label pixels of every class (solid = 0, pore = 1) on at least one slice{hint}"
    )


def bootstrap(
    session: Session,
    *,
    scribbles: Path | None = None,
    labels: Path | None = None,
    slices: Sequence[int] | None = None,
    simulate_scribbles: bool = False,
    scribble_budget: int | None = None,
    progress: Progress = no_progress,
    pore_value: int | None = None,
) -> dict:
    """Round 0: the first labels, and an RF fitted on them.

    Exactly one source: ``scribbles`` (ilastik convention file), ``labels`` (fully
    labelled slices drawn in Fiji/napari; 255 or absent = unlabelled), or ``slices``
    (global z taken from the session's ground truth; with ``simulate_scribbles``,
    simulated strokes drawn from the truth of those slices instead). ``pore_value``
    (0 or 255) reads ``labels`` as a binary 0/255 mask whose value ``pore_value`` is
    pore (:func:`activeseg.io.read_labels`); slices of one value only count as not drawn.
    """
    given = [x is not None for x in (scribbles, labels, slices)]
    if sum(given) != 1:
        raise ConfigError("bootstrap needs exactly one of --scribbles FILE, --labels FILE or --slices Z,Z,...")
    pore_value = io.check_pore_value(pore_value)
    if pore_value is not None and labels is None:
        raise ConfigError(
            "--pore-value says how to read a 0/255 mask given with --labels; the truth's polarity was set at "
            "init and scribbles follow ilastik's convention: leave --pore-value out"
        )
    with session.writing("bootstrap"):
        m = session.manifest
        if m["rounds"]:
            raise SessionError(
                f"session {session.root} is already bootstrapped (round 0 exists); "
                f"next: {next_step(session)}"
            )
        cfg = session_config(session)
        shape = tuple(m["stack"]["shape"])
        rng = session_rng(m)
        rnd = {"index": 0, "strategy": "bootstrap", "params": {}, "queried": [], "status": "labelled"}
        if slices is not None:
            truth = open_truth(session)
            if truth is None:
                raise SessionError(
                    "--slices takes whole slices from ground truth, and this session has none; "
                    "give --scribbles FILE (ilastik convention) or --labels FILE instead"
                )
            zs = sorted({int(z) for z in slices})
            if not zs:
                raise ConfigError("bootstrap got no slices; give at least one, e.g. --slices 0,120,240")
            bad = [z for z in zs if not 0 <= z < shape[0]]
            if bad:
                raise ConfigError(f"--slices {bad} outside the stack (0..{shape[0] - 1})")
            for z in zs:  # init checked a sample of the truth's slices; these are the ones taken
                top = int(np.asarray(truth[z]).max(initial=0))
                if top >= cfg.n_classes:
                    raise LabelError(
                        f"truth {m['truth']['path']} slice {z} holds value {top}, outside 0..{cfg.n_classes - 1} "
                        "(0 = solid, 1 = pore)"
                    )
            if simulate_scribbles:

                kw = {} if scribble_budget is None else {"budget": scribble_budget}
                part = [Correction(z, draw_scribbles(np.asarray(truth[z]), rng=rng, **kw), 0, "scribble") for z in zs]
                full, source = [], "scribble"
            else:
                full = [Correction(z, np.asarray(truth[z]).astype(np.uint8), int(np.prod(shape[1:])), "oracle") for z in zs]
                part, source = [], "oracle"
        else:
            given_path = scribbles or labels
            assert given_path is not None  # exactly one source was given (checked above)
            path = Path(given_path)
            found = io.read_labels(path, shape=shape, n_classes=cfg.n_classes, kind="scribble" if scribbles else "partial",
                                   pore_value=pore_value)
            if not found:
                raise LabelError(f"{path} holds no labelled pixels; draw some labels first")
            source = "scribble" if scribbles else "corrected"
            # a slice from --labels counts as fully labelled only when it has no unlabelled pixel
            full, part = [], []
            for z, mask in sorted(found.items()):
                drawn = int(np.count_nonzero(mask != 255))
                if scribbles or drawn < mask.size:
                    part.append(Correction(z, mask, drawn, "scribble"))
                else:
                    full.append(Correction(z, mask, drawn, "corrected"))
        _check_two_classes(full + part, cfg.n_classes, labels)
        if labels and part:  # said only for labels that are taken
            log.info("%d slice(s) of %s are only partly labelled; they train as scribbles", len(part), labels)
        if part:
            write_labels(session, m, rnd, part, kind="partial")
        if full:
            write_labels(session, m, rnd, full, kind="full")
        rnd["scribble_pixels"] = int(sum(np.count_nonzero(c.mask != 255) for c in part))
        rnd["source"] = source
        m["bootstrap"] = {"source": source, "rf_seed": int(rng.integers(2**31 - 1))}
        label_file = scribbles or labels
        if label_file is not None:  # an input of the session from now on: outputs never overwrite it
            m["bootstrap"]["path"] = str(Path(label_file).resolve())
        if pore_value is not None:
            m["bootstrap"]["pore_value"] = pore_value
        m["rounds"].append(rnd)
        store_rng(m, rng)
        # fit before the commit: labels the RF cannot learn from leave the session as it was
        with open_image(session) as img:
            rf = fit_session_rf(session, img, progress=progress, manifest=m)
            flipped = _polarity_warning(img, {c.z: c.mask for c in full + part}, cfg.n_classes,
                                        "the bootstrap labels" if slices is None else "the ground truth")
        if flipped:
            log.warning("%s", flipped)
        session.commit(m)
    return {"round": 0, "slices": sorted(int(c.z) for c in full + part), "kind": "full" if full else "partial", "rf": repr(rf)}


def _score_slices_for(session: Session, n_slices: int) -> np.ndarray:
    cfg = session_config(session)
    every = max(1, math.ceil(n_slices / cfg.score_max_slices))
    return np.arange(0, n_slices, every)


_NETWORK_PASSES = frozenset({"samples", "tta", "reference"})
"""Passes of the network-only scores: while the RF is the current model (the gate turned
the networks down), a scorer needing one of them uses the best network so far."""


def _needs_of(name: str) -> tuple[str, ...]:
    """The model passes a score name needs (per slice or ``tile:``); none for names that are not scores (embeddings)."""
    try:
        return uncertainty.score_needs(name)
    except ConfigError:
        return ()


def _score_version(session: Session, kind: str, version: str, needs: Sequence[str]) -> tuple[str, tuple | None]:
    """The score cache's version, and ``(version, network)`` of the best network when the
    RF is current, a network exists and ``needs`` holds a network-only score (cached with it)."""
    if kind != "rf" or not any(set(_needs_of(n)) & _NETWORK_PASSES for n in needs):
        return version, None
    net_version, net = best_network(session)
    if net is None:
        return version, None
    return f"{version}+{net_version}", (net_version, net)


def _compute_scores(session: Session, image, names: Sequence[str], kind: str, version: str, model, rng, progress,
                    *, save: bool = True, network: tuple | None = None, manifest: dict | None = None,
                    scheduler=None) -> dict:
    """Scores (and embeddings) for the current model, cached per model version
    (``save=False``: the caller writes ``scores/VERSION.npz`` with what it commits).
    Per-tile scores (``tile:entropy``: float32 (Z, n_tiles) over the session's grid) come
    from the same pass and are cached under their full names.
    ``network``: ``(version, model)`` of the best network, for the network-only scores
    while the RF is current (see :func:`_score_version`). ``manifest``: the manifest the
    caller commits (a Random Forest fitted for ``rf_disagreement`` is stored with it).
    ``scheduler``: where the scores are computed (:mod:`activeseg.cluster`; inline by default)."""
    cfg = session_config(session)
    rel = f"scores/{version}.npz"
    cached = session.load_npz(rel) if session.path(rel).exists() else {}
    names = list(dict.fromkeys(names))
    want = [n for n in names if n not in cached and n != "embeddings"]
    nz = int(image.shape[0])
    zs = _score_slices_for(session, nz)
    net_only = [n for n in want if network is not None and set(_needs_of(n)) & _NETWORK_PASSES]
    grid = session_grid(session.manifest) if any(uncertainty.is_tile_score(n) for n in want) else None
    groups = [([n for n in want if n not in net_only], model)]
    if network is not None and net_only:
        groups.append((net_only, network[1]))
    for group, scorer_model in groups:
        if not group:
            continue
        reference = None
        if any("reference" in _needs_of(n) for n in group):  # rf_disagreement (or tile:rf_disagreement)
            if kind == "rf" and network is None:
                raise ConfigError("rf_disagreement needs a trained network; train one first (activeseg train)")
            reference = model if kind == "rf" else fit_session_rf(session, image, progress=progress, manifest=manifest)
        if parse_scheduler(scheduler).inline:
            got = uncertainty.score_slices(
                scorer_model, image, group, slices=zs, reference=reference, n_samples=cfg.bald_samples, rng=rng,
                reduction=cfg.score_reduction, callback=lambda d, t: progress("scoring", d, t), tiles=grid,
            )
        else:
            got = score_blocks(scorer_model, image, group, slices=zs, scheduler=scheduler, reference=reference,
                               n_samples=cfg.bald_samples, rng=rng, reduction=cfg.score_reduction,
                               progress=lambda d, t: progress("scoring", d, t), tiles=grid)
        cached.update({k: np.asarray(v, np.float32) for k, v in got.items()})
    if "embeddings" in names and "embeddings" not in cached:
        emb = np.full((nz, 0), np.nan, np.float32)
        progress("embeddings", 0, 1)
        if kind == "rf":

            e = feature_embeddings(image, zs, config=model.features, geometry=model.geometry)
        else:
            e = model.embeddings(image, zs)
        emb = np.full((nz, e.shape[1]), np.nan, np.float32)
        emb[zs] = e
        cached["embeddings"] = emb
        progress("embeddings", 1, 1)
    if save:
        session.save_npz(rel, **cached)
    return cached


def query(
    session: Session,
    n: int,
    *,
    strategy: str = "distributed",
    params: dict | None = None,
    audit: bool = False,
    export: bool = True,
    progress: Progress = no_progress,
    scheduler=None,
) -> dict:
    """Open a new round: the strategy picks up to ``n`` slices (or ``n`` regions) to correct.

    Computes exactly the scores the strategy declares from the current model (cached
    per model version), runs it, records the round, and (``export``) writes the files
    a person corrects. ``audit`` adds one uniformly random unlabelled slice whose
    correction cost estimates the current error honestly; for a strategy of regions
    (``unit="tiles"``) it adds ``[session] audit_tiles`` random unlabelled tiles, each
    from a different slice. A strategy of regions picks tiles of the session's grid
    (:mod:`activeseg.tiles`): the round records ``"unit": "tiles"``, ``"tile"`` and the
    ``"regions"`` ``[[z, t], ...]``, and the files to correct are the tiles
    (:func:`activeseg.oracle.export_regions_for_correction`). ``scheduler``: where the
    scores are computed (``"inline"``, ``"local:N"``, ``"tcp://..."``; see
    :mod:`activeseg.cluster`).
    """
    if n < 1:
        raise ConfigError(f"-n must be at least 1, got {n}")
    prepared = registry.prepare_query(strategy, params or {})
    fn, strategy, full_params = prepared.fn, prepared.name, prepared.params
    needs = prepared.requires
    tiles_unit = prepared.unit == "tiles"
    with session.writing("query"):
        m = session.manifest
        last = last_round(m)
        if last is None:
            raise SessionError(f"session {session.root} is not bootstrapped; run `activeseg bootstrap {session.root} ...` first")
        carried = pending_slices(last) if last["index"] > 0 else []
        carried_regions = pending_regions(last) if last["index"] > 0 else []
        root = shell_quote(session.root)
        if last["index"] > 0 and last.get("status") != "trained" and _imported_unreverted(m, last):
            waits = ([f"slices {carried}"] if carried else []) + (
                [f"regions {', '.join(region_name(*r) for r in carried_regions)}"] if carried_regions else [])
            raise SessionError(
                f"round {last['index']}'s corrections are not in a model yet; "
                f"run `activeseg train {root}` first"
                + (f" ({' and '.join(waits)} still pending are carried over into the next round)" if waits else "")
            )
        if carried and tiles_unit:
            raise SessionError(
                f"round {last['index']} still waits for slices {carried}, and {strategy} picks regions: finish that round "
                f"first (activeseg import {root}, or --skip {','.join(map(str, carried))}), or query with a strategy of slices"
            )
        if carried_regions and not tiles_unit:
            raise SessionError(
                f"round {last['index']} still waits for regions {', '.join(region_name(*r) for r in carried_regions)}, "
                f"and {strategy} picks whole slices: finish that round first (activeseg import {root}, or "
                "--skip-regions), or query with a strategy of regions"
            )
        cfg = session_config(session)
        rng = session_rng(m)
        with open_image(session) as image:
            nz = int(image.shape[0])
            kind, version, model = current_model(session, image, progress=progress, manifest=m)  # RF: stored with the round
            score_version, network = _score_version(session, kind, version, needs)
            # the score cache is written with the round: a refused or failed query leaves no file
            scores_rel = f"scores/{score_version}.npz"
            scores_before = _npz_keys(session.path(scores_rel))
            scores = _compute_scores(session, image, [*needs, "porosity"], kind, score_version, model, rng, progress,
                                     save=False, network=network, manifest=m, scheduler=scheduler)
            labelled = np.zeros(nz, bool)
            labelled[labelled_slices(m)] = True
            for r in m["rounds"]:  # slices skipped by the user are not asked again
                labelled[r.get("skipped", [])] = True
            labelled[carried] = True  # asked already: they move into this round as they are
            idx = len(m["rounds"])
            rnd: dict[str, Any] = {"index": idx, "strategy": strategy, "params": full_params}
            if tiles_unit:
                grid = session_grid(m)
                taken = tile_labelled(session, m, grid)
                for r in m["rounds"]:  # regions skipped by the user are not asked again
                    for z, t in r.get("skipped_regions", []):
                        taken[int(z), int(t)] = True
                for z, t in carried_regions:
                    taken[z, t] = True
                per_slice, per_tile = registry.split_scores(scores)
                ctx = registry.QueryContext(
                    n_slices=nz,
                    labelled=labelled,
                    rng=rng,
                    scores=per_slice,
                    embeddings=scores.get("embeddings"),
                    round_index=idx,
                    tile_scores=per_tile,
                    tile_labelled=taken,
                    tile_grid=(grid.n_rows, grid.n_cols, grid.tile),
                    tile_pixels=grid.pixels(),
                )
                out_ids = np.asarray(registry.run_strategy(fn, ctx, int(n), full_params), dtype=np.int64).reshape(-1, 2)
                picked_regions = [(int(z), int(t)) for z, t in out_ids]
                audit_regions = _audit_tiles(rng, taken | labelled[:, None], picked_regions, cfg.audit_tiles) if audit else []
                regions = sorted(set(picked_regions) | set(audit_regions) | set(carried_regions))
                if not regions:
                    raise SessionError(
                        f"the strategy picked no regions: every tile is labelled or skipped; export the segmentation "
                        f"(activeseg export {root} OUT.tif)"
                    )
                if len(picked_regions) < n:
                    log.info("strategy %s picked %d of %d regions (spacing or pool size)", strategy, len(picked_regions), n)
                rnd.update({"unit": "tiles", "tile": grid.tile, "regions": [[z, t] for z, t in regions], "queried": [],
                            "audit": None, "audit_regions": [[z, t] for z, t in sorted(audit_regions)],
                            "imported": [], "skipped": [], "imported_regions": [], "skipped_regions": []})
                queried: list[int] = []
            else:
                ctx = registry.QueryContext(
                    n_slices=nz,
                    labelled=labelled,
                    rng=rng,
                    scores=registry.split_scores(scores)[0],
                    embeddings=scores.get("embeddings"),
                    round_index=idx,
                )
                picked = [int(z) for z in registry.run_strategy(fn, ctx, int(n), full_params)]
                audit_z = None
                if audit:
                    pool = np.flatnonzero(~labelled)
                    pool = pool[~np.isin(pool, picked)]
                    if pool.size:
                        audit_z = int(rng.choice(pool))
                queried = picked + ([audit_z] if audit_z is not None else []) + carried
                if not queried:
                    raise SessionError(
                        f"the strategy picked no slices: all {nz} slices are labelled or skipped "
                        f"({int(labelled.sum())} of {nz}); export the segmentation "
                        f"(activeseg export {root} OUT.tif)"
                    )
                if len(picked) < n:
                    log.info("strategy %s picked %d of %d slices (spacing or pool size)", strategy, len(picked), n)
                rnd.update({"queried": queried, "audit": audit_z, "imported": [], "skipped": []})
            rnd.update({"status": "queried", "model_version": version, "model_kind": kind, "scores_file": scores_rel})
            # a killed or failed earlier try of this round left files that no manifest names: start clean
            out = session.path(f"rounds/r{idx:03d}")
            if out.exists():
                shutil.rmtree(out)
            # pre-filled masks: the current model's prediction of the queried slices (of the regions' slices)
            zs = queried if not tiles_unit else sorted({z for z, _ in regions})
            probs = model.predict_proba(image, zs)
            prefill = {z: np.argmax(p, axis=0).astype(np.uint8) for z, p in zip(zs, probs)}
            if tiles_unit:
                region_prefill = {(z, t): _tile_of(prefill[z], grid, t) for z, t in regions}
                edited_regions = _edited_region_masks(session, last, carried_regions)
                if carried_regions:  # a tile someone started correcting keeps its starting point
                    old = prefill_regions(session, last["index"])
                    region_prefill.update({zt: old[zt] for zt in edited_regions})
                    rnd["carried"] = {"from_round": last["index"], "slices": [],
                                      "regions": [[z, t] for z, t in carried_regions],
                                      "edited_regions": [[z, t] for z, t in sorted(edited_regions)]}
                    last["carried_out"] = {"to_round": idx, "slices": [], "regions": [[z, t] for z, t in carried_regions]}
            else:
                edited = _edited_masks(session, last, carried)
                if carried:  # a mask someone started correcting keeps its starting point, so its cost stays honest
                    old_prefill = prefill_masks(session, last["index"])
                    prefill.update({z: old_prefill[z] for z in edited})
                    rnd["carried"] = {"from_round": last["index"], "slices": carried, "edited": sorted(edited)}
                    last["carried_out"] = {"to_round": idx, "slices": carried}
            if carried or carried_regions:
                last["status"] = "trained" if last.get("status") == "trained" else "skipped"
                m["rounds"][-1] = last
            try:
                if tiles_unit:
                    padded = np.full((len(regions), grid.tile, grid.tile), 255, np.uint8)
                    for i, zt in enumerate(regions):
                        h, w = region_prefill[zt].shape
                        padded[i, :h, :w] = region_prefill[zt]
                    session.save_npz(f"rounds/r{idx:03d}/prefill.npz", slices=np.zeros(0, np.int64),
                                     masks=np.zeros((0, grid.ny, grid.nx), np.uint8),
                                     regions=np.array(regions, np.int64).reshape(-1, 2), tiles=padded)
                else:
                    session.save_npz(f"rounds/r{idx:03d}/prefill.npz", slices=np.array(queried),
                                     masks=np.stack([prefill[z] for z in queried]))
                if export and tiles_unit:
                    maps = _overlay_maps(session, image, zs, probs, kind, m, progress)
                    export_regions_for_correction(out, image, regions, region_prefill, grid, radius=cfg.export_radius,
                                                  margin=cfg.export_margin, voxel_size=cfg.geometry.voxel_size,
                                                  n_classes=cfg.n_classes,
                                                  overlays={(z, t): {k: _tile_of(v, grid, t) for k, v in maps[z].items()}
                                                            for z, t in regions})
                    for zt, src in edited_regions.items():  # the person's work so far, in the new folder
                        shutil.copyfile(src, out / region_file(*zt))
                    rnd["exported"] = {region_name(*zt): (None if zt in edited_regions
                                                          else os.stat(out / region_file(*zt)).st_mtime_ns)
                                       for zt in regions}
                elif export:
                    export_for_correction(out, image, queried, prefill, radius=cfg.export_radius,
                                          voxel_size=cfg.geometry.voxel_size, n_classes=cfg.n_classes,
                                          overlays=_overlay_maps(session, image, queried, probs, kind, m, progress))
                    for z, src in edited.items():  # the person's work so far, in the new folder
                        shutil.copyfile(src, out / mask_name(z))
                    rnd["exported"] = {str(z): (None if z in edited else os.stat(out / mask_name(z)).st_mtime_ns)
                                       for z in queried}
                if scores_before is None or set(scores) - scores_before:
                    session.save_npz(scores_rel, **scores)
                m["rounds"].append(rnd)
                store_rng(m, rng)
                session.commit(m)
            except BaseException:
                # nothing of an uncommitted round stays (a disk that filled mid-export, ...)
                if not committed_value(session, lambda d: len(d["rounds"]) > idx, unreadable=True):
                    discard_uncommitted(session, [f"rounds/r{idx:03d}", None if scores_before is not None else scores_rel])
                raise
    return rnd


def _imported_unreverted(m: dict, rnd: dict) -> bool:
    """True when a round holds imported slices or regions that no tombstone withdrew."""
    gone = reverted_in(m, rnd)
    return bool(set(rnd.get("imported", [])) - gone or {int(z) for z, _ in rnd.get("imported_regions", [])} - gone)


def _tile_of(plane: np.ndarray, grid: TileGrid, t: int) -> np.ndarray:
    """Tile ``t`` of a (Y, X) plane."""
    y0, y1, x0, x1 = grid.bounds(t)
    return np.asarray(plane)[y0:y1, x0:x1]


def _audit_tiles(rng: np.random.Generator, taken: np.ndarray, picked: Sequence[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """``k`` uniformly random free tiles for the audit, each from a different slice (fewer
    when fewer slices have a free tile); ``taken``: bool (Z, n_tiles) labelled or asked."""
    free = ~np.asarray(taken, bool).copy()
    for z, t in picked:
        free[z, t] = False
    rows = np.flatnonzero(free.any(axis=1))
    if rows.size == 0:
        return []
    chosen = np.sort(rng.choice(rows, size=min(int(k), rows.size), replace=False))
    return [(int(z), int(rng.choice(np.flatnonzero(free[z])))) for z in chosen]


def _overlay_maps(session: Session, image, queried: Sequence[int], probs: np.ndarray, kind: str, m: dict,
                  progress: Progress) -> dict[int, dict[str, np.ndarray]]:
    """The per-pixel maps shown beside each slice to correct (``activeseg correct``).

    ``uncertainty``: the normalised entropy of ``probs``, the current model's class
    probabilities of the queried slices (those the pre-fill came from). ``disagreement``,
    when a Random Forest and a network both exist: the total-variation distance between
    them, the other model predicting the queried slices only (the session's RF when a
    network is current, stored with the round when it had to be fitted; the best network
    so far while the RF is current).
    """
    maps = {int(z): {"uncertainty": u} for z, u in zip(queried, uncertainty.entropy(probs))}
    other = None
    if kind != "rf":
        other = fit_session_rf(session, image, progress=progress, manifest=m)
    elif m.get("model"):
        other = best_network(session, m)[1]
    if other is not None:
        for z, d in zip(queried, uncertainty.disagreement(probs, other.predict_proba(image, queried))):
            maps[int(z)]["disagreement"] = d
    return maps


def _edited_masks(session: Session, rnd: dict, slices: Sequence[int]) -> dict[int, Path]:
    """Mask files of ``rnd`` that were edited since export (a person started correcting them)."""
    if not slices or not rnd.get("exported"):
        return {}

    folder = session.path(f"rounds/r{rnd['index']:03d}")
    out = {}
    for z in slices:
        p = folder / mask_name(z)
        if p.exists() and os.stat(p).st_mtime_ns != rnd["exported"].get(str(z)):
            out[int(z)] = p
    return out


def _edited_region_masks(session: Session, rnd: dict, regions: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Path]:
    """Region mask files of ``rnd`` that were edited since export (a person started correcting them)."""
    if not regions or not rnd.get("exported"):
        return {}
    folder = session.path(f"rounds/r{rnd['index']:03d}")
    out = {}
    for z, t in regions:
        p = folder / region_file(z, t)
        if p.exists() and os.stat(p).st_mtime_ns != rnd["exported"].get(region_name(z, t)):
            out[(int(z), int(t))] = p
    return out


def _set_status(rnd: dict) -> None:
    """A round with nothing pending is labelled (or skipped when nothing was imported)."""
    done = rnd.get("imported") or rnd.get("imported_regions")
    rnd["status"] = "queried" if waiting(rnd) else ("labelled" if done else "skipped")


def _record_slices(session: Session, m: dict, rnd: dict, masks: dict[int, np.ndarray], prefill: dict[int, np.ndarray],
                   *, source: str, cfg: SessionConfig) -> list[Correction]:
    """Commit-ready record of corrected whole slices (import, the oracle, napari): label
    file, imported slices, and the round's cost (an audit slice also in its audit)."""
    corr = [Correction(z, mk, int(np.count_nonzero(mk != prefill[z])), source) for z, mk in sorted(masks.items())]
    if corr:
        write_labels(session, m, rnd, corr, kind="full")
        add_cost(rnd, [(c.z, None, prefill[c.z], c.mask, c.z == rnd.get("audit")) for c in corr],
                 n_classes=cfg.n_classes, grid=session_grid(m))
    rnd["imported"] = sorted(set(rnd.get("imported", [])) | set(masks))
    return corr


def _record_regions(session: Session, m: dict, rnd: dict, masks: dict[tuple[int, int], np.ndarray],
                    prefill: dict[tuple[int, int], np.ndarray], *, source: str, cfg: SessionConfig) -> dict[str, int]:
    """Commit-ready record of corrected regions: a label file of kind "region", the
    imported regions, and the round's cost (audit regions also in its audit). Returns
    the pixels changed per region (``zNNNN_tTTT -> n``)."""
    if not masks:
        return {}
    grid = session_grid(m)
    write_region_labels(session, m, rnd, masks, prefill, source=source)
    audit = {(int(z), int(t)) for z, t in rnd.get("audit_regions", [])}
    add_cost(rnd, [(z, t, prefill[(z, t)], mk, (z, t) in audit) for (z, t), mk in sorted(masks.items())],
             n_classes=cfg.n_classes, grid=grid)
    done = {(int(z), int(t)) for z, t in rnd.get("imported_regions", [])} | set(masks)
    rnd["imported_regions"] = [[z, t] for z, t in sorted(done)]
    return {region_name(z, t): int(np.count_nonzero(mk != prefill[(z, t)])) for (z, t), mk in sorted(masks.items())}


def _as_regions(items, what: str) -> list[tuple[int, int]]:
    """``(z, t)`` pairs from pairs or region names (``z0012_t003``)."""
    out = []
    for it in items:
        zt = parse_region(it) if isinstance(it, str) else tuple(it)
        if zt is None or len(zt) != 2:
            raise ConfigError(f"{what}: {it!r} is not a region; give it as zNNNN_tTTT (e.g. z0012_t003) or a (z, t) pair")
        out.append((int(zt[0]), int(zt[1])))
    return sorted(set(out))


def _import_regions(session: Session, m: dict, rnd: dict, directory: Path | None, regions, skip_regions) -> dict:
    """The region half of :func:`import_corrections` (inside its lock; the caller commits)."""
    idx = rnd["index"]
    pending = pending_regions(rnd)
    if not pending:
        raise SessionError(f"round {idx} has nothing left to import; next: {next_step(session)}")
    asked = {(int(z), int(t)) for z, t in rnd.get("regions", [])}
    names = ", ".join(region_name(*r) for r in sorted(asked))
    skip_r = _as_regions(skip_regions or (), "skip_regions")
    wanted = None if regions is None else _as_regions(regions, "regions")
    both = sorted(set(skip_r) & set(wanted or ()))
    if both:
        raise ConfigError(f"region(s) {', '.join(region_name(*r) for r in both)} are given to both --regions and "
                          "--skip-regions; import or skip each region, not both")
    for zt in skip_r:
        if zt not in asked:
            raise LabelError(f"cannot skip region {region_name(*zt)}: it was not queried in round {idx} (queried: {names})")
        if zt not in pending:
            raise LabelError(f"cannot skip region {region_name(*zt)}: it was already imported or skipped in round {idx}")
    export_dir = session.path(f"rounds/r{idx:03d}")
    src = Path(directory) if directory is not None else export_dir
    files = find_region_files(src)
    if wanted is not None:
        for zt in wanted:
            if zt not in asked:
                raise LabelError(f"region {region_name(*zt)} was not queried in round {idx} (queried: {names})")
            if zt not in pending:
                raise LabelError(f"region {region_name(*zt)} was already imported in round {idx}; a region is imported once")
            if zt not in files:
                raise LabelError(f"no mask file for region {region_name(*zt)} in {src} (expected {region_file(*zt)})")
        chosen = {zt: files[zt] for zt in wanted}
    else:
        for zt, p in files.items():
            if zt not in asked:
                raise LabelError(f"{p.name} is for region {region_name(*zt)}, which was not queried in round {idx} "
                                 f"(queried: {names}); remove it from {src}")
        chosen = {zt: p for zt, p in files.items() if zt in pending and zt not in skip_r}
        if directory is None:
            exported = rnd.get("exported", {})
            untouched = [zt for zt, p in chosen.items() if os.stat(p).st_mtime_ns == exported.get(region_name(*zt))]
            chosen = {zt: p for zt, p in chosen.items() if zt not in untouched}
            if untouched and not chosen and not skip_r:
                listed = ",".join(region_name(*zt) for zt in untouched)
                raise LabelError(
                    f"no region mask was edited since export (untouched: {listed}); edit the masks in {src}, or, if a "
                    f"pre-filled mask is already right, import it with --regions {listed}"
                )
            if untouched:
                log.info("not imported (unchanged since export): %s", ", ".join(region_name(*zt) for zt in untouched))
    if not chosen and not skip_r:
        raise LabelError(f"no corrected masks for the pending regions "
                         f"{', '.join(region_name(*r) for r in pending)} in {src}")
    cfg = session_config(session)
    grid = session_grid(m)
    prefill = prefill_regions(session, idx)
    try:
        masks = read_region_corrections(chosen, grid, n_classes=cfg.n_classes, prefill=prefill)
    except LabelError as exc:
        if len(chosen) < 2:
            raise
        raise LabelError(f"{exc} — nothing was imported: fix that file, or import the others and leave it for "
                         "later with --regions (or drop it for good with --skip-regions)") from None
    changed = _record_regions(session, m, rnd, masks, prefill, source="corrected", cfg=cfg)
    done = {(int(z), int(t)) for z, t in rnd.get("skipped_regions", [])} | set(skip_r)
    rnd["skipped_regions"] = [[z, t] for z, t in sorted(done)]
    if directory is not None and masks:  # the person's corrections: an input, never an output's target
        rnd["import_dirs"] = sorted(set(rnd.get("import_dirs", [])) | {str(Path(directory).resolve())})
    _set_status(rnd)
    return {"round": idx, "imported": [], "skipped": [], "pending": [],
            "imported_regions": [[z, t] for z, t in sorted(masks)], "skipped_regions": [[z, t] for z, t in skip_r],
            "pending_regions": [[z, t] for z, t in pending_regions(rnd)], "cost": {}, "region_cost": changed}


def import_corrections(
    session: Session,
    directory: Path | None = None,
    *,
    slices: Sequence[int] | None = None,
    skip: Sequence[int] = (),
    regions: Sequence | None = None,
    skip_regions: Sequence | None = None,
) -> dict:
    """Import corrected masks of the open round (a subset now and the rest later is fine).

    Without ``directory``, masks are read from the round's export folder, and only
    those edited since export (or named in ``slices``) are imported. With a
    ``directory``, every mask file found there for a pending slice is imported.
    Everything is validated before anything is committed.

    A round of regions (``"unit": "tiles"``) takes ``regions`` and ``skip_regions``
    instead of ``slices`` and ``skip``: ``(z, t)`` pairs or names ``zNNNN_tTTT`` (None:
    every region file present that is pending, edited since export when read from the
    export folder). A region's mask must be its tile's size and complete
    (:func:`activeseg.oracle.read_region_corrections`); it is recorded as labels of kind
    "region" (the pixels outside the tile stay unlabelled). The round's ``cost`` counts
    the pixels reviewed and changed (docs/architecture.md §5).
    """
    with session.writing("import"):
        m = session.manifest
        rnd = last_round(m)
        if rnd is None or rnd["index"] == 0:
            raise SessionError("nothing to import: no round has been queried yet (activeseg query SESSION)")
        if is_tile_round(rnd):
            if slices is not None or skip:
                raise ConfigError(f"round {rnd['index']} is a round of regions: name them with --regions zNNNN_tTTT "
                                  "(skip with --skip-regions), not --slices / --skip")
            res = _import_regions(session, m, rnd, directory, regions, skip_regions)
            m["rounds"][-1] = rnd
            session.commit(m)
            return res
        if regions is not None or skip_regions:
            raise ConfigError(f"round {rnd['index']} is a round of whole slices: name them with --slices "
                              "(skip with --skip); --regions and --skip-regions are for rounds of regions")
        pending = pending_slices(rnd)
        if not pending:
            raise SessionError(f"round {rnd['index']} has nothing left to import; next: {next_step(session)}")
        shape = tuple(m["stack"]["shape"])
        skip = sorted({int(z) for z in skip})
        both = sorted(set(skip) & {int(z) for z in slices or ()})
        if both:
            raise ConfigError(f"slice(s) {both} are given to both --slices and --skip; import or skip each slice, not both")
        for z in skip:
            if z not in rnd["queried"]:
                raise LabelError(f"cannot skip slice {z}: it was not queried in round {rnd['index']} (queried: {rnd['queried']})")
            if z not in pending:
                raise LabelError(f"cannot skip slice {z}: it was already imported or skipped in round {rnd['index']}")
        export_dir = session.path(f"rounds/r{rnd['index']:03d}")
        src = Path(directory) if directory is not None else export_dir
        files = find_mask_files(src)
        if slices is not None:
            wanted = sorted({int(z) for z in slices})
            for z in wanted:
                if z not in rnd["queried"]:
                    raise LabelError(f"slice {z} was not queried in round {rnd['index']} (queried: {rnd['queried']})")
                if z not in pending:
                    raise LabelError(f"slice {z} was already imported in round {rnd['index']}; a slice is imported once")
                if z not in files:
                    raise LabelError(f"no mask file for slice {z} in {src} (expected a name like z{z:04d}_mask.tif)")
            chosen = {z: files[z] for z in wanted}
        else:
            for z in files:
                if z not in rnd["queried"]:
                    raise LabelError(
                        f"{files[z].name} is for slice {z}, which was not queried in round {rnd['index']} "
                        f"(queried: {rnd['queried']}); remove it from {src}"
                    )
            chosen = {z: p for z, p in files.items() if z in pending and z not in skip}
            if directory is None:
                exported = rnd.get("exported", {})
                untouched = [z for z, p in chosen.items() if os.stat(p).st_mtime_ns == exported.get(str(z))]
                chosen = {z: p for z, p in chosen.items() if z not in untouched}
                if untouched and not chosen and not skip:
                    raise LabelError(
                        f"no mask was edited since export (untouched: {untouched}); edit the masks in {src}, or, "
                        f"if a pre-filled mask is already right, import it with --slices {','.join(map(str, untouched))}"
                    )
                if untouched:
                    log.info("not imported (unchanged since export): %s", untouched)
        if not chosen and not skip:
            raise LabelError(f"no corrected masks for the pending slices {pending} in {src}")
        cfg = session_config(session)
        prefill = prefill_masks(session, rnd["index"])
        try:
            masks = read_corrections(chosen, shape[1:], n_classes=cfg.n_classes, n_slices=shape[0],
                                     radius=cfg.export_radius, prefill=prefill)
        except LabelError as exc:
            if len(chosen) < 2:
                raise
            raise LabelError(f"{exc} — nothing was imported: fix that file, or import the others and leave it for "
                             "later with --slices (or drop it for good with --skip)") from None
        corr = _record_slices(session, m, rnd, masks, prefill, source="corrected", cfg=cfg)
        rnd["skipped"] = sorted(set(rnd["skipped"]) | set(skip))
        if directory is not None and masks:  # the person's corrections: an input, never an output's target
            rnd["import_dirs"] = sorted(set(rnd.get("import_dirs", [])) | {str(Path(directory).resolve())})
        _set_status(rnd)
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "imported": sorted(masks), "skipped": skip, "pending": pending_slices(rnd),
            "cost": {z: c.cost for z, c in ((c.z, c) for c in corr)}}


def revert(session: Session, *, slices: Sequence[int] | None = None, round_index: int | None = None,
           reason: str | None = None) -> dict:
    """Take labels back: append a tombstone, so the next ``train`` (and the RF) no longer use them.

    ``slices``: the labels of these slices, whichever round gave them; ``round_index``:
    every label of that round (a round still waiting for corrections is closed: its
    pending slices can be queried again). Nothing is deleted: label files stay, the
    tombstone in the manifest says which ``(round, slice)`` labels no longer count, and
    a slice reverted can be queried and labelled again later.
    """
    if (slices is None) == (round_index is None):
        raise ConfigError("revert needs exactly one of --slice Z[,Z...] or --round N")
    with session.writing("revert"):
        m = session.manifest
        rounds = m["rounds"]
        gone = reverted_pairs(m)
        hits: dict[int, list[int]] = {}
        if round_index is not None:
            r = next((r for r in rounds if r["index"] == int(round_index)), None)
            if r is None:
                raise ConfigError(f"session {session.root} has no round {round_index} (rounds: 0..{len(rounds) - 1})")
            labelled = sorted({int(z) for rel in r.get("label_files", []) for z in session.load_npz(rel)["slices"]})
            todo = [z for z in labelled if (r["index"], z) not in gone]
            if not todo and not waiting(r):
                raise SessionError(f"round {round_index} has no labels left to revert")
            if todo:
                hits[r["index"]] = todo
            if pending_slices(r):  # an open round is closed: its slices are free to be queried again
                r["reverted_pending"] = pending_slices(r)
                r["status"] = "skipped" if not r.get("imported") else r.get("status")
            if pending_regions(r):  # likewise its regions: closed (not pending), free to be queried again
                r["reverted_pending_regions"] = [[z, t] for z, t in pending_regions(r)]
                r["status"] = "skipped" if not r.get("imported_regions") else r.get("status")
        else:
            assert slices is not None  # exactly one of slices and round_index (checked above)
            zs = sorted({int(z) for z in slices})
            if not zs:
                raise ConfigError("--slice needs at least one slice number, e.g. --slice 40")
            for r in rounds:
                for rel in r.get("label_files", []):
                    for z in session.load_npz(rel)["slices"]:
                        if int(z) in zs and (r["index"], int(z)) not in gone:
                            hits.setdefault(r["index"], [])
                            if int(z) not in hits[r["index"]]:
                                hits[r["index"]].append(int(z))
            found = sorted({z for v in hits.values() for z in v})
            missing = [z for z in zs if z not in found]
            if missing:
                raise LabelError(
                    f"slice(s) {missing} have no labels to revert (labelled slices: {labelled_slices(m) or 'none'}); "
                    "see activeseg status"
                )
        tomb = m.setdefault("tombstones", [])
        for r_idx, zs_r in sorted(hits.items()):
            tomb.append({"round": r_idx, "slices": sorted(zs_r), "at": now(), "reason": reason,
                         "by": "round" if round_index is not None else "slice"})
        if not labels_dict(session, manifest=m):
            log.warning("no labels are left after this revert; bootstrap labels are needed before the next train")
        session.commit(m)
    return {"reverted": {int(k): v for k, v in hits.items()}, "labelled_slices": labelled_slices(session.manifest)}


def _npz_keys(path: Path) -> set[str] | None:
    """The array names of an ``.npz`` (without reading the arrays), or None when it does not exist."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return set(data.files)


def _waiting_round(m: dict, what: str) -> dict:
    """The open round whose queried slices wait for ``what``, or a SessionError."""
    rnd = last_round(m)
    if rnd is None or rnd["index"] == 0 or not waiting(rnd):
        raise SessionError(f"no queried slices or regions are waiting for {what}; run a query first")
    return rnd


def oracle_correct(session: Session, *, effort: int | None = None) -> dict:
    """Simulation: ground truth corrects every pending slice and region of the open round.

    ``effort``: the pixel budget per unit (slice or region) of an imperfect corrector
    (:func:`activeseg.oracle.truth_correction`: the largest wrong regions first), None
    for a perfect one. Audit units (the audit slice, the audit regions) are always
    corrected perfectly, whatever ``effort``: their cost estimates the error unbiased.
    The round's ``cost`` is recorded as for :func:`import_corrections`.
    """
    with session.writing("oracle"):
        m = session.manifest
        rnd = _waiting_round(m, "corrections")
        truth = open_truth(session)
        if truth is None:
            raise SessionError("the ground-truth oracle needs a session with --truth")
        cfg = session_config(session)
        cost: dict = {}
        region_cost: dict[str, int] = {}
        with truth:
            if pending_slices(rnd):
                prefill = prefill_masks(session, rnd["index"])
                masks = {z: truth_correction(z, np.asarray(truth[z]), prefill[z],
                                             effort=None if z == rnd.get("audit") else effort).mask
                         for z in pending_slices(rnd)}
                corr = _record_slices(session, m, rnd, masks, prefill, source="oracle", cfg=cfg)
                cost = {c.z: c.cost for c in corr}
            if pending_regions(rnd):
                grid = session_grid(m)
                prefill_r = prefill_regions(session, rnd["index"])
                audit = {(int(z), int(t)) for z, t in rnd.get("audit_regions", [])}
                masks_r = {}
                for z, t in pending_regions(rnd):
                    y0, y1, x0, x1 = grid.bounds(t)
                    true_tile = np.asarray(truth[z])[y0:y1, x0:x1]
                    masks_r[(z, t)] = truth_correction(z, true_tile, prefill_r[(z, t)],
                                                       effort=None if (z, t) in audit else effort).mask
                region_cost = _record_regions(session, m, rnd, masks_r, prefill_r, source="oracle", cfg=cfg)
        _set_status(rnd)
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "imported": sorted(cost), "cost": cost, "region_cost": region_cost}


def pseudo_label(session: Session, *, threshold: float | None = None, progress: Progress = no_progress) -> dict:
    """No human: the current model's confident predictions label the pending slices.

    Recorded with source "rf" (before any network) or "pseudo" and kind "pseudo": the
    unconfident pixels stay unlabelled, and the slices do not count as corrected. In a
    round of regions only the pending tiles are pseudo-labelled, and they count as skipped.
    """
    with session.writing("pseudo-label"):
        m = session.manifest
        rnd = _waiting_round(m, "labels")
        cfg = session_config(session)
        thr = cfg.pseudo_threshold if threshold is None else threshold
        regions = pending_regions(rnd)
        with open_image(session) as image:
            kind, _, model = current_model(session, image, progress=progress)
            zs = pending_slices(rnd) or sorted({z for z, _ in regions})
            probs = model.predict_proba(image, zs)
        corr = [pseudo_labels(z, p, threshold=thr, source="rf" if kind == "rf" else "pseudo") for z, p in zip(zs, probs)]
        if regions:  # only the tiles asked for
            grid = session_grid(m)
            inside = {z: np.zeros((grid.ny, grid.nx), bool) for z in zs}
            for z, t in regions:
                y0, y1, x0, x1 = grid.bounds(t)
                inside[z][y0:y1, x0:x1] = True
            corr = [dataclasses.replace(c, mask=np.where(inside[c.z], c.mask, 255).astype(np.uint8)) for c in corr]
            done = {(int(z), int(t)) for z, t in rnd.get("skipped_regions", [])} | set(regions)
            rnd["skipped_regions"] = [[z, t] for z, t in sorted(done)]
        write_labels(session, m, rnd, corr, kind="pseudo")
        if not regions:
            rnd["skipped"] = sorted(set(rnd["skipped"]) | set(zs))  # labelled, but not as corrected slices
        rnd["pseudo"] = zs
        rnd["status"] = "labelled"
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "pseudo_labelled": zs}


def _pseudo_for_training(cfg: SessionConfig, m: dict, labelled: set[int], image, model, kind: str,
                         version: str, threshold: float) -> tuple[dict[int, np.ndarray], dict | None]:
    """Pseudo-labels of unlabelled slices for this training, and their provenance.

    While few whole slices are labelled (``pseudo_train = "auto"``: fewer than
    ``pseudo_below``), the current model's confident predictions (class probability >=
    ``pseudo_threshold``) of ``pseudo_slices`` evenly spread unlabelled slices join the
    training set at ``[train] pseudo_weight`` (the recipe of the study the project starts
    from: RF segmentations are the network's training set). Nothing is stored as labels.
    """
    # labelled area in slice-equivalents: whole slices, plus the reviewed regions' pixels (so a
    # session labelling regions stops using pseudo-labels after as much area as one of slices)
    slice_px = float(image.shape[1]) * float(image.shape[2])
    region_px = sum(int((r.get("cost") or {}).get("reviewed_px", 0)) for r in m["rounds"] if is_tile_round(r))
    n_full = len(labelled_slices(m)) + region_px / slice_px
    on = cfg.pseudo_train == "on" or (cfg.pseudo_train == "auto" and n_full < cfg.pseudo_below)
    if not on:
        return {}, None
    nz = int(image.shape[0])
    pool = np.setdiff1d(np.arange(nz), np.fromiter(labelled, dtype=np.int64, count=len(labelled)))
    if pool.size == 0:
        return {}, None
    k = min(cfg.pseudo_slices, pool.size)
    zs = [int(pool[i]) for i in np.unique(((np.arange(k) + 0.5) * pool.size / k).astype(np.int64))]
    probs = model.predict_proba(image, zs)
    pseudo = {z: pseudo_labels(z, p, threshold=threshold, source=kind).mask for z, p in zip(zs, probs)}
    px = int(sum(int(np.count_nonzero(v != 255)) for v in pseudo.values()))
    return pseudo, {"source": kind, "model_version": version, "slices": zs, "threshold": threshold, "pixels": px}


def _metrics_of(m: dict, version: str) -> dict | None:
    """The whole-stack metrics recorded for model ``version`` by an earlier round, if any."""
    for r in reversed(m["rounds"]):
        if r.get("current_version") == version and r.get("metrics"):
            return {"metrics": r["metrics"], "metrics_unlabelled": r.get("metrics_unlabelled"),
                    "metrics_named": r.get("metrics_named"), "metrics_file": r.get("metrics_file")}
    return None


def train(
    session: Session,
    *,
    steps: int | None = None,
    device: str | None = None,
    warm_start: bool = True,
    evaluate: bool = True,
    gate: bool = True,
    progress: Progress = no_progress,
    scheduler=None,
) -> dict:
    """Train a candidate network on every committed label and let the gate decide.

    The candidate warm-starts from the best network so far. It becomes the current model
    (pre-fill, export, pseudo-labels) only when it beats the model it would replace on
    held-out blocks of the human labels (:mod:`activeseg.loop.gate`; ``gate=False``
    accepts it unconditionally). While few slices are labelled, the current model's
    confident pseudo-labels of unlabelled slices join the training set at a lower weight.
    With ground truth, the candidate and the current model are evaluated on the whole
    stack; a round whose current-model figures fall is flagged (``metrics_fell``).
    ``scheduler``: where that whole-stack evaluation runs (:mod:`activeseg.cluster`;
    training itself runs in this process).
    """
    # torch: imported by the one step that trains a network
    from activeseg.model import ModelConfig
    from activeseg.network import save_model
    from activeseg.train import TrainConfig, train_model

    with session.writing("train"):
        m = session.manifest
        rnd = last_round(m)
        if rnd is None:
            raise SessionError(
                f"session {session.root} has no labels; run `activeseg bootstrap {shell_quote(session.root)}` first"
            )
        cfg = session_config(session)
        labels = labels_dict(session, kinds=LABEL_KINDS if cfg.train_on_scribbles else ("full", "pseudo", "region"))
        if not labels:
            raise SessionError(
                "no fully labelled slices to train on (this session trains on corrected slices only: "
                "train_on_scribbles = false); query and correct some slices first"
            )
        if rnd.get("status") == "skipped":
            raise SessionError(
                f"round {rnd['index']} was skipped entirely (no slice imported), so there is nothing new to "
                f"train on; query other slices: activeseg query {shell_quote(session.root)}"
            )
        pending_r = ", ".join(region_name(z, t) for z, t in pending_regions(rnd))
        if rnd["index"] > 0 and not rnd.get("imported") and not rnd.get("imported_regions") and not rnd.get("pseudo"):
            raise SessionError(
                f"round {rnd['index']} has no imported corrections yet (pending: {pending_r or pending_slices(rnd)}); "
                f"import them first (activeseg import {shell_quote(session.root)})"
            )
        if pending_slices(rnd):
            log.warning("round %d still waits for slices %s; training on what is imported so far",
                        rnd["index"], pending_slices(rnd))
        if pending_r:
            log.warning("round %d still waits for regions %s; training on what is imported so far", rnd["index"], pending_r)
        tkw = dict(cfg.train)
        tkw.setdefault("val_seed", int(cfg.seed))  # the same held-out pixels in every round
        if steps is not None:
            tkw["steps"] = int(steps)
            tkw.pop("epochs", None)
        if device is not None:
            tkw["device"] = device
        tcfg = TrainConfig(**tkw)
        rng = session_rng(m)
        seed = int(rng.integers(2**31 - 1))
        with open_image(session) as image:
            inc_kind, inc_version, incumbent = current_model(session, image, progress=progress, manifest=m)
            if inc_kind == "resunet" and inc_version == (m.get("model") or {}).get("version"):
                net_version, best_net = inc_version, incumbent  # the current network is the best one: loaded once
            else:
                net_version, best_net = best_network(session)
            init = best_net if warm_start else None
            human = labels_dict(session, kinds=HUMAN_KINDS)  # scribbles and regions too, even when not trained on
            pseudo, pseudo_info = _pseudo_for_training(cfg, m, set(labels) | set(human), image, incumbent, inc_kind,
                                                       inc_version, cfg.pseudo_threshold)
            model, history = train_model(
                image, labels, config=tcfg, model_config=None if init is not None else ModelConfig(**model_kwargs(cfg)),
                rng=np.random.default_rng(seed), init=init, pseudo=pseudo,
                callback=lambda s, t, info: progress("train", s, t),
            )
            rdir = f"rounds/r{rnd['index']:03d}"
            # the seed makes a retrained round's model a new directory: the committed one stays intact
            version = f"r{rnd['index']:03d}-{labels_version(m)}-{seed:08x}"
            model_rel = f"{rdir}/model-{version}"
            entry = {"path": model_rel, "version": version, "round": rnd["index"]}
            # the gate: held-out blocks of the human labels, left out of the network's and the RF's fits
            held = held_out_labels(human, fraction=tcfg.val_fraction, block=tcfg.val_block, seed=tcfg.val_seed)
            # (the same blocks as the RF's fit leaves out: holdout.session_rule of this session)
            progress("gate", 0, 1)
            verdict = judge(model, incumbent, image, held, cfg.n_classes, incumbent_kind=inc_kind,
                            incumbent_version=inc_version)
            if not gate and not verdict.accepted:
                verdict = dataclasses.replace(verdict, accepted=True, forced=True)
            best = entry if verdict.accepted else m.get("model")
            if not verdict.accepted and inc_kind == "rf":
                # no network is current yet: the better of this candidate and the best one turned down so far
                if best_net is None or judge(model, best_net, image, held, cfg.n_classes, incumbent_kind="resunet",
                                             incumbent_version=str(net_version), candidate_score=verdict.candidate).accepted:
                    best = entry
            progress("gate", 1, 1)
            metrics_rel = inc_metrics_rel = None
            try:
                save_model(model, session.path(model_rel))
                if evaluate and m.get("truth"):
                    seen = sorted(set(labels) | set(pseudo))  # every slice a fit saw
                    ev = evaluate_model(session, model, image, labelled=seen, progress=progress, scheduler=scheduler)
                    metrics_rel = session.write_json(f"{rdir}/metrics-{version}.json", ev)
                    rnd["candidate_metrics"] = ev["overall"]
                    rnd["candidate_metrics_unlabelled"] = ev.get("unlabelled")
                    found = None if verdict.accepted else _metrics_of(m, inc_version)
                    if verdict.accepted:
                        current = {"metrics": ev["overall"], "metrics_unlabelled": ev.get("unlabelled"),
                                   "metrics_named": ev["named_indices"], "metrics_file": metrics_rel}
                    elif found is not None:
                        current = found
                    else:
                        inc_metrics_rel = f"{rdir}/metrics-{inc_version}.json"  # written by this try: removed if it fails
                        current = _evaluate_current(session, incumbent, image, inc_metrics_rel, seen, progress, scheduler)
                    before = _previous_headline(m, rnd)
                    rnd.update(current)
                    now_h = _headline(rnd["metrics"])
                    if before is not None and now_h is not None and now_h < before - 1e-4:
                        rnd["metrics_fell"] = {"metric": verdict.metric, "before": before, "after": now_h}
                        log.warning("round %d: the current model's whole-stack %s fell from %.4f to %.4f",
                                    rnd["index"], verdict.metric, before, now_h)
                    else:
                        rnd.pop("metrics_fell", None)
            except BaseException:  # a full disk, ...: the uncommitted network and its folders go
                discard_uncommitted(session, [model_rel, f"{rdir}/metrics-{version}.json", inc_metrics_rel])
                raise
        rnd["status"] = "trained"
        rnd["train"] = {
            "seed": seed,
            "steps_run": history.get("steps_run"),
            "seconds": history.get("seconds"),
            "best_val_loss": history.get("best_val_loss"),
            "warm_start": init is not None,
            "warm_start_from": net_version if init is not None else None,
            "kept_previous": bool(history.get("kept_init")),
            "labelled_slices": sorted(int(z) for z in labels),
            "pseudo": pseudo_info,
            "device": history.get("device"),
        }
        rnd["gate"] = {**verdict.to_dict(), "candidate_version": version, "gated": bool(gate)}
        rnd["candidate_model"] = model_rel
        if verdict.accepted:
            m["current"] = {"kind": "resunet", **entry}
        rnd["current_version"] = version if verdict.accepted else inc_version
        m["model"] = best
        m["rounds"][-1] = rnd
        store_rng(m, rng)
        try:
            session.commit(m)
        except BaseException:
            # the candidate's files go unless the commit landed (the candidate is named whether or not it won)
            if committed_value(session, lambda d: d["rounds"][-1].get("candidate_model"), unreadable=model_rel) != model_rel:
                discard_uncommitted(session, [model_rel, metrics_rel, inc_metrics_rel])
            raise
    return {"round": rnd["index"], "model": model_rel, "history": rnd["train"], "metrics": rnd.get("metrics"),
            "metrics_unlabelled": rnd.get("metrics_unlabelled"), "candidate_metrics": rnd.get("candidate_metrics"),
            "candidate_metrics_unlabelled": rnd.get("candidate_metrics_unlabelled"), "gate": rnd["gate"],
            "gate_sentence": verdict.sentence(), "metrics_fell": rnd.get("metrics_fell"), "n_labelled": len(labelled_slices(m))}


def _headline(mt: dict | None) -> float | None:
    if not mt:
        return None
    v = mt.get("mean_solid_iou", mt.get("iou_solid"))
    return None if v is None else float(v)


def _previous_headline(m: dict, rnd: dict) -> float | None:
    """The headline whole-stack figure of the last trained round before ``rnd``."""
    for r in reversed(m["rounds"]):
        if r is rnd or r["index"] >= rnd["index"]:
            continue
        if r.get("status") == "trained" and r.get("metrics"):
            return _headline(r["metrics"])
    return None


def _evaluate_current(session: Session, model, image, rel: str, labelled, progress: Progress, scheduler=None) -> dict:
    ev = evaluate_model(session, model, image, labelled=labelled, progress=progress, scheduler=scheduler)
    return {"metrics": ev["overall"], "metrics_unlabelled": ev.get("unlabelled"), "metrics_named": ev["named_indices"],
            "metrics_file": session.write_json(rel, ev)}
