"""The round steps of the active-learning loop, each a function over a session.

A round moves ``queried -> labelled -> trained``. Every step reads the session from
disk, does one thing and commits it (the manifest is written last), so a person can
stop for days between steps and a killed process loses nothing committed::

    init_session -> bootstrap -> query -> (export files | oracle) -> import -> train -> query ...

Round 0 holds the bootstrap labels (scribbles, labelled slices, or slices from ground
truth). Rounds 1, 2, ... hold queried slices and their corrections. The current model
is the latest trained network, or the Random Forest fitted on all labels before any
network exists (the RF is never pickled: it is refit deterministically from the stored
labels and seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from activeseg.config import SessionConfig, load_config, model_kwargs, validate_config
from activeseg.errors import ConfigError, LabelError, OutputError, SessionError
from activeseg.safety import atomic_write_bytes, check_free_space, check_output, os_error_message, reserve
from activeseg.geometry import Geometry
from activeseg.session import Session, _stat_key, file_fingerprint, sha256_file

__all__ = [
    "SessionConfig",
    "load_config",
    "init_session",
    "open_session",
    "relink",
    "bootstrap",
    "query",
    "import_corrections",
    "oracle_correct",
    "pseudo_label",
    "train",
    "status",
    "next_step",
    "export_segmentation",
    "predict_to_file",
    "run",
    "current_model",
    "labels_dict",
]

log = logging.getLogger("activeseg")
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stage is e.g. "features", "train", "inference"."""

def _noop(stage: str, done: int, total: int) -> None:
    return None


# --- opening inputs ------------------------------------------------------------------------


def _image(session: Session):
    from activeseg import io

    m = session.manifest
    st = m["stack"]
    return io.open_stack(st["path"], crop=st.get("crop"), voxel_size=st.get("voxel_size_arg"), axes=st.get("axes"))


def _truth(session: Session):
    """The ground-truth labels (lazy) or None."""
    from activeseg import io

    t = session.manifest.get("truth")
    if not t:
        return None
    return io.open_stack(t["path"], crop=session.manifest["stack"].get("crop"))


def _depth(session: Session):
    from activeseg import io

    d = session.manifest.get("depth")
    if not d:
        return None
    return io.open_stack(d["path"], crop=session.manifest["stack"].get("crop"))


def _config(session: Session) -> SessionConfig:
    return SessionConfig.from_dict(session.manifest["config"])


def _verify_file(entry: dict, what: str, session_root: Path, *, relinkable: bool) -> dict | None:
    """Check an input file against its fingerprint. Returns an updated entry when only
    the modification time changed (same content), else None. ``--relink`` is offered
    for the stack only (it re-points the stack, never the truth)."""
    path = Path(entry["path"])
    if not path.exists():
        how = ("if you moved it, run the command again with --relink NEW_PATH" if relinkable
               else "put it back at that path (the session compares every model against it)")
        raise SessionError(f"the {what} of session {session_root} is missing: {path}; {how}")
    now = _stat_key(path)
    if now["size"] == entry.get("size") and now["mtime_ns"] == entry.get("mtime_ns"):
        return None
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        how = (" Restore the original file, or, if the pixels are the same (e.g. re-saved), run the command "
               "again with --relink PATH" if relinkable else " Restore the original file.")
        raise SessionError(
            f"the {what} {path} changed on disk since the session was created (sha256 {digest[:12]} != "
            f"{entry['sha256'][:12]}); labels no longer match it.{how}"
        )
    return {**entry, **now}


def open_session(root: Path, *, relink_to: Path | None = None, check_inputs: bool = True) -> Session:
    """Open a session and check that its stack (and truth) are the ones it was made with."""
    session = Session.open(root)
    if relink_to is not None:
        relink(session, relink_to)
    if check_inputs:
        updates = {}
        for key, what in (("stack", "image stack"), ("truth", "ground truth"), ("depth", "depth map")):
            entry = session.manifest.get(key)
            if entry:
                new = _verify_file(entry, what, session.root, relinkable=key == "stack")
                if new is not None:
                    updates[key] = new
        if updates:
            with session.writing("refresh-fingerprint"):
                m = session.manifest
                m.update(updates)
                session.commit(m)
    return session


def relink(session: Session, new_path: Path) -> None:
    """Point the session at a moved or re-saved stack with the same shape and dtype."""
    from activeseg import io

    new_path = Path(new_path).resolve()
    with session.writing("relink"):
        m = session.manifest
        st = m["stack"]
        with io.open_stack(new_path, crop=st.get("crop"), voxel_size=st.get("voxel_size_arg"), axes=st.get("axes")) as img:
            if list(img.shape) != st["shape"] or str(img.dtype) != st["dtype"]:
                raise SessionError(
                    f"cannot relink to {new_path}: shape {tuple(img.shape)} / {img.dtype} differs from the "
                    f"session's stack {tuple(st['shape'])} / {st['dtype']}"
                )
        fp = file_fingerprint(new_path)
        if fp["sha256"] != st["sha256"]:
            log.warning("relinked to %s: same shape and dtype but different bytes (re-saved or re-compressed?)", new_path)
        m["stack"] = {**st, **fp}
        m.setdefault("history", []).append({"event": "relink", "from": st["path"], "to": str(new_path)})
        session.commit(m)


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
) -> Session:
    """Create a session for one stack.

    The truth and depth of a ``synth`` output are found beside its image when not
    given, and the acquisition geometry is read from ``synth.json`` there, else from the
    stack's metadata, else from the config.
    """
    from activeseg import io

    image = Path(image)
    if isinstance(config, (str, Path)):
        config = load_config(Path(config))
    cfg_dict = config.to_dict() if isinstance(config, SessionConfig) else dict(config or {})
    if seed is not None:
        cfg_dict["seed"] = int(seed)
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
    geo = dict(cfg_dict.get("geometry") or {})
    if synth_meta and "geometry" in synth_meta:
        for k, v in synth_meta["geometry"].items():
            geo.setdefault(k, v)
    if vs is not None:
        geo["voxel_size"] = list(vs)
    cfg_dict["geometry"] = geo
    cfg = validate_config(SessionConfig.from_dict(cfg_dict))
    manifest = {
        "stack": {
            **file_fingerprint(image),
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
    }
    for key, path in (("truth", truth), ("depth", depth)):
        if path is None:
            continue
        with io.open_stack(path, crop=crop) as t:
            if tuple(t.shape) != shape:
                raise LabelError(f"{key} {path} has shape {tuple(t.shape)} but the image has {shape}; they must match")
            if key == "truth":
                for z in np.linspace(0, shape[0] - 1, min(shape[0], 8)).astype(int):
                    v = np.asarray(t[int(z)])
                    if v.max() >= cfg.n_classes:
                        raise LabelError(
                            f"truth {path} slice {z} holds value {v.max()}, outside 0..{cfg.n_classes - 1} "
                            "(0 = solid, 1 = pore)"
                        )
        manifest[key] = file_fingerprint(Path(path))
    return Session.create(Path(root), manifest)


# --- rng, labels, model versions -------------------------------------------------------------


def _rng(session_manifest: dict) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = session_manifest["rng_state"]
    return g


def _store_rng(m: dict, rng: np.random.Generator) -> None:
    m["rng_state"] = rng.bit_generator.state


def _label_files(m: dict) -> list[str]:
    return [f for r in m["rounds"] for f in r.get("label_files", [])]


LABEL_KINDS = ("full", "partial", "pseudo")
"""Kinds of label files: corrected/true whole slices, scribbles, confident pseudo-labels."""


def _reverted(m: dict) -> set[tuple[int, int]]:
    """``(round, z)`` pairs whose labels a tombstone withdrew (:func:`revert`)."""
    return {(int(t["round"]), int(z)) for t in m.get("tombstones", []) for z in t["slices"]}


def labels_dict(session: Session, *, kinds: Sequence[str] = LABEL_KINDS, manifest: dict | None = None) -> dict[int, np.ndarray]:
    """Committed labels of the given kinds as ``{z: uint8 (Y, X)}`` (255 = unlabelled).

    A whole-slice label replaces what was there; partial labels (scribbles,
    pseudo-labels) only fill their drawn pixels. Labels withdrawn by :func:`revert`
    are left out. ``manifest``: read the label files of this (not yet committed)
    manifest instead of the committed one.
    """
    m = session.manifest if manifest is None else manifest
    gone = _reverted(m)
    out: dict[int, np.ndarray] = {}
    for r in m["rounds"]:
        for rel in r.get("label_files", []):
            data = session.load_npz(rel)
            if str(data["kind"]) not in kinds:
                continue
            for z, mask in zip(data["slices"], data["masks"]):
                z = int(z)
                if (int(r["index"]), z) in gone:
                    continue
                if z in out and str(data["kind"]) != "full":
                    merged = out[z].copy()
                    keep = mask != 255
                    merged[keep] = mask[keep]
                    out[z] = merged
                else:
                    out[z] = mask
    return out


def _full_slices(m: dict) -> list[int]:
    """The labelled slices: whole slices corrected by a person or taken from ground truth
    (the one definition used by ``status``, ``run``, studies and the strategies)."""
    gone = _reverted(m)
    zs = []
    for r in m["rounds"]:
        zs += [z for z in r.get("full_slices", []) if (int(r["index"]), int(z)) not in gone]
    return sorted(set(zs))


def _labels_version(m: dict) -> str:
    gone = ",".join(f"{r}:{z}" for r, z in sorted(_reverted(m)))
    return hashlib.sha256(("|".join(_label_files(m)) + ("#" + gone if gone else "")).encode()).hexdigest()[:12]


def _write_labels(session: Session, m: dict, rnd: dict, corrections, *, kind: str) -> str:
    rnd_idx = rnd["index"]
    k = len(rnd.get("label_files", []))
    rel = f"labels/r{rnd_idx:03d}_i{k:02d}.npz"
    session.save_npz(
        rel,
        slices=np.array([c.z for c in corrections], dtype=np.int64),
        masks=np.stack([c.mask for c in corrections]).astype(np.uint8),
        source=np.array([c.source for c in corrections]),
        cost=np.array([c.cost for c in corrections], dtype=np.int64),
        kind=np.array(kind),
    )
    rnd.setdefault("label_files", []).append(rel)
    if kind == "full":
        rnd.setdefault("full_slices", []).extend(int(c.z) for c in corrections)
    costs = rnd.setdefault("correction_cost", {})
    for c in corrections:
        costs[str(int(c.z))] = int(c.cost)
    return rel


_RF_CACHE: dict = {}


def _fit_rf(session: Session, image, *, progress: Progress = _noop, manifest: dict | None = None):
    """The RF on all committed labels (or those of ``manifest``, before it is committed),
    refit deterministically (cached per process)."""
    from activeseg.bootstrap import fit_rf

    m = session.manifest if manifest is None else manifest
    key = (str(session.root.resolve()), _labels_version(m))
    if key in _RF_CACHE:
        return _RF_CACHE[key]
    cfg = _config(session)
    labels = labels_dict(session, manifest=m)
    if not labels:
        raise SessionError(f"session {session.root} has no labels yet; run `activeseg bootstrap {_q(session.root)}` first")
    seed = int(m["bootstrap"]["rf_seed"])
    progress("fit RF", 0, 1)
    rf = fit_rf(image, labels, rng=np.random.default_rng(seed), geometry=cfg.geometry, n_classes=cfg.n_classes, **cfg.rf)
    progress("fit RF", 1, 1)
    _RF_CACHE.clear()
    _RF_CACHE[key] = rf
    return rf


def current_model(session: Session, image, *, progress: Progress = _noop):
    """``(kind, version, model)``: the latest network, or the RF before any network."""
    m = session.manifest
    if m.get("model"):
        from activeseg.model import load_model

        return "resunet", m["model"]["version"], load_model(session.path(m["model"]["path"]), device=m["model"].get("device", "auto"))
    return "rf", "rf-" + _labels_version(m), _fit_rf(session, image, progress=progress)


# --- steps -----------------------------------------------------------------------------------------


def _last_round(m: dict) -> dict | None:
    return m["rounds"][-1] if m["rounds"] else None


def _pending(rnd: dict) -> list[int]:
    done = set(rnd.get("imported", [])) | set(rnd.get("skipped", [])) | set(rnd.get("carried_out", {}).get("slices", []))
    return [z for z in rnd.get("queried", []) if z not in done]


def _check_two_classes(corr, n_classes: int, path: Path | None) -> None:
    """Bootstrap labels must show at least two classes, or no classifier can be fitted."""
    present = set()
    for c in corr:
        present |= {int(v) for v in np.unique(c.mask) if v != 255}
    if len(present) >= 2:
        return
    hint = ""
    if path is not None:
        hint = (f"; if {path} is a binary 0/255 mask (Fiji's default), 255 reads as 'unlabelled' here: "
                "save pore as 1 (Fiji: Process > Math > Divide... by 255)")
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
    progress: Progress = _noop,
) -> dict:
    """Round 0: the first labels, and an RF fitted on them.

    Exactly one source: ``scribbles`` (ilastik convention file), ``labels`` (fully
    labelled slices drawn in Fiji/napari; 255 or absent = unlabelled), or ``slices``
    (global z taken from the session's ground truth; with ``simulate_scribbles``,
    simulated strokes drawn from the truth of those slices instead).
    """
    from activeseg import io
    from activeseg.oracle import Correction

    given = [x is not None for x in (scribbles, labels, slices)]
    if sum(given) != 1:
        raise ConfigError("bootstrap needs exactly one of --scribbles FILE, --labels FILE or --slices Z,Z,...")
    with session.writing("bootstrap"):
        m = session.manifest
        if m["rounds"]:
            raise SessionError(
                f"session {session.root} is already bootstrapped (round 0 exists); "
                f"next: {next_step(session)}"
            )
        cfg = _config(session)
        shape = tuple(m["stack"]["shape"])
        rng = _rng(m)
        rnd = {"index": 0, "strategy": "bootstrap", "params": {}, "queried": [], "status": "labelled"}
        if slices is not None:
            truth = _truth(session)
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
            if simulate_scribbles:
                from activeseg.scribbles import simulate_scribbles as draw

                kw = {} if scribble_budget is None else {"budget": scribble_budget}
                part = [Correction(z, draw(np.asarray(truth[z]), rng=rng, **kw), 0, "scribble") for z in zs]
                full, source = [], "scribble"
            else:
                full = [Correction(z, np.asarray(truth[z]).astype(np.uint8), int(np.prod(shape[1:])), "oracle") for z in zs]
                part, source = [], "oracle"
        else:
            path = Path(scribbles or labels)
            found = io.read_labels(path, shape=shape, n_classes=cfg.n_classes, kind="scribble" if scribbles else "partial")
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
            _write_labels(session, m, rnd, part, kind="partial")
        if full:
            _write_labels(session, m, rnd, full, kind="full")
        rnd["scribble_pixels"] = int(sum(np.count_nonzero(c.mask != 255) for c in part))
        rnd["source"] = source
        m["bootstrap"] = {"source": source, "rf_seed": int(rng.integers(2**31 - 1))}
        m["rounds"].append(rnd)
        _store_rng(m, rng)
        # fit before the commit: labels the RF cannot learn from leave the session as it was
        with _image(session) as img:
            rf = _fit_rf(session, img, progress=progress, manifest=m)
        session.commit(m)
    return {"round": 0, "slices": sorted(int(c.z) for c in full + part), "kind": "full" if full else "partial", "rf": repr(rf)}


def _score_slices_for(session: Session, n_slices: int) -> np.ndarray:
    cfg = _config(session)
    every = max(1, math.ceil(n_slices / cfg.score_max_slices))
    return np.arange(0, n_slices, every)


def _compute_scores(session: Session, image, names: Sequence[str], kind: str, version: str, model, rng, progress,
                    *, save: bool = True) -> dict:
    """Scores (and embeddings) for the current model, cached per model version
    (``save=False``: the caller writes ``scores/VERSION.npz`` with what it commits)."""
    from activeseg import uncertainty

    cfg = _config(session)
    rel = f"scores/{version}.npz"
    cached = session.load_npz(rel) if session.path(rel).exists() else {}
    names = list(dict.fromkeys(names))
    want = [n for n in names if n not in cached and n != "embeddings"]
    nz = int(image.shape[0])
    zs = _score_slices_for(session, nz)
    if want:
        reference = None
        if "rf_disagreement" in want:
            if kind == "rf":
                raise ConfigError("rf_disagreement needs a trained network; train one first (activeseg train)")
            reference = _fit_rf(session, image, progress=progress)
        got = uncertainty.score_slices(
            model, image, want, slices=zs, reference=reference, n_samples=cfg.bald_samples, rng=rng,
            reduction=cfg.score_reduction, callback=lambda d, t: progress("scoring", d, t),
        )
        cached.update({k: np.asarray(v, np.float32) for k, v in got.items()})
    if "embeddings" in names and "embeddings" not in cached:
        emb = np.full((nz, 0), np.nan, np.float32)
        progress("embeddings", 0, 1)
        if kind == "rf":
            from activeseg.features import feature_embeddings

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
    progress: Progress = _noop,
) -> dict:
    """Open a new round: the strategy picks up to ``n`` slices to correct.

    Computes exactly the scores the strategy declares from the current model (cached
    per model version), runs it, records the round, and (``export``) writes the files
    a person corrects. ``audit`` adds one uniformly random unlabelled slice whose
    correction cost estimates the current error honestly.
    """
    from activeseg import registry

    if n < 1:
        raise ConfigError(f"-n must be at least 1, got {n}")
    prepared = registry.prepare_query(strategy, params or {})
    fn, strategy, full_params = prepared.fn, prepared.name, prepared.params
    needs = prepared.requires
    with session.writing("query"):
        m = session.manifest
        last = _last_round(m)
        if last is None:
            raise SessionError(f"session {session.root} is not bootstrapped; run `activeseg bootstrap {session.root} ...` first")
        carried = _pending(last) if last["index"] > 0 else []
        if last["index"] > 0 and last.get("status") != "trained" and set(last.get("imported", [])) - _reverted_in(m, last):
            raise SessionError(
                f"round {last['index']}'s corrections are not in a model yet; run `activeseg train {_q(session.root)}` first"
                + (f" (slices {carried} still pending are carried over into the next round)" if carried else "")
            )
        cfg = _config(session)
        rng = _rng(m)
        with _image(session) as image:
            nz = int(image.shape[0])
            kind, version, model = current_model(session, image, progress=progress)
            # the score cache is written with the round: a refused or failed query leaves no file
            scores_rel = f"scores/{version}.npz"
            scores_before = set(session.load_npz(scores_rel)) if session.path(scores_rel).exists() else None
            scores = _compute_scores(session, image, [*needs, "porosity"], kind, version, model, rng, progress, save=False)
            labelled = np.zeros(nz, bool)
            labelled[_full_slices(m)] = True
            for r in m["rounds"]:  # slices skipped by the user are not asked again
                labelled[r.get("skipped", [])] = True
            labelled[carried] = True  # asked already: they move into this round as they are
            ctx = registry.QueryContext(
                n_slices=nz,
                labelled=labelled,
                rng=rng,
                scores={k: v for k, v in scores.items() if k != "embeddings"},
                embeddings=scores.get("embeddings"),
                round_index=len(m["rounds"]),
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
                    f"({int(labelled.sum())} of {nz}); export the segmentation (activeseg export {_q(session.root)} OUT.tif)"
                )
            idx = len(m["rounds"])
            rnd = {
                "index": idx,
                "strategy": strategy,
                "params": full_params,
                "queried": queried,
                "audit": audit_z,
                "imported": [],
                "skipped": [],
                "status": "queried",
                "model_version": version,
                "model_kind": kind,
                "scores_file": scores_rel,
            }
            if len(picked) < n:
                log.info("strategy %s picked %d of %d slices (spacing or pool size)", strategy, len(picked), n)
            # a killed or failed earlier try of this round left files that no manifest names: start clean
            out = session.path(f"rounds/r{idx:03d}")
            if out.exists():
                shutil.rmtree(out)
            # pre-filled masks: the current model's prediction of the queried slices
            probs = model.predict_proba(image, queried)
            prefill = {z: np.argmax(p, axis=0).astype(np.uint8) for z, p in zip(queried, probs)}
            edited = _edited_masks(session, last, carried)
            if carried:  # a mask someone started correcting keeps its starting point, so its cost stays honest
                old_prefill = _prefill(session, last["index"])
                prefill.update({z: old_prefill[z] for z in edited})
                rnd["carried"] = {"from_round": last["index"], "slices": carried, "edited": sorted(edited)}
                last["carried_out"] = {"to_round": idx, "slices": carried}
                last["status"] = "trained" if last.get("status") == "trained" else "skipped"
                m["rounds"][-1] = last
            try:
                session.save_npz(f"rounds/r{idx:03d}/prefill.npz", slices=np.array(queried),
                                 masks=np.stack([prefill[z] for z in queried]))
                if export:
                    from activeseg.oracle import export_for_correction, mask_name

                    export_for_correction(out, image, queried, prefill, radius=cfg.export_radius,
                                          voxel_size=cfg.geometry.voxel_size)
                    for z, src in edited.items():  # the person's work so far, in the new folder
                        shutil.copyfile(src, out / mask_name(z))
                    rnd["exported"] = {str(z): (None if z in edited else os.stat(out / mask_name(z)).st_mtime_ns)
                                       for z in queried}
                if scores_before is None or set(scores) - scores_before:
                    session.save_npz(scores_rel, **scores)
                m["rounds"].append(rnd)
                _store_rng(m, rng)
                session.commit(m)
            except BaseException:
                # nothing of an uncommitted round stays (a disk that filled mid-export, ...)
                if not _on_disk(session, lambda d: len(d["rounds"]) > idx, unreadable=True):
                    _discard(session, [f"rounds/r{idx:03d}", None if scores_before is not None else scores_rel])
                raise
    return rnd


def _on_disk(session: Session, get, unreadable=None):
    """``get(manifest)`` of the manifest on disk (``unreadable`` when it cannot be read)."""
    try:
        return get(json.loads(session.path("activeseg.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return unreadable


def _discard(session: Session, rels) -> None:
    """Remove files or folders of an uncommitted step (and ``rounds/rNNN``, ``rounds/`` left empty)."""
    for rel in rels:
        if rel is None:
            continue
        p = session.path(rel)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        for folder in (p.parent, p.parent.parent):
            if folder != session.root and session.root in folder.parents:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty


def _edited_masks(session: Session, rnd: dict, slices: Sequence[int]) -> dict[int, Path]:
    """Mask files of ``rnd`` that were edited since export (a person started correcting them)."""
    if not slices or not rnd.get("exported"):
        return {}
    from activeseg.oracle import mask_name

    folder = session.path(f"rounds/r{rnd['index']:03d}")
    out = {}
    for z in slices:
        p = folder / mask_name(z)
        if p.exists() and os.stat(p).st_mtime_ns != rnd["exported"].get(str(z)):
            out[int(z)] = p
    return out


def _reverted_in(m: dict, rnd: dict) -> set[int]:
    gone = _reverted(m)
    return {z for (r, z) in gone if r == rnd["index"]}


def _q(path) -> str:
    """A path as a shell word (quoted when it holds spaces or special characters)."""
    return shlex.quote(str(path))


def _prefill(session: Session, idx: int) -> dict[int, np.ndarray]:
    data = session.load_npz(f"rounds/r{idx:03d}/prefill.npz")
    return {int(z): mk for z, mk in zip(data["slices"], data["masks"])}


def import_corrections(
    session: Session,
    directory: Path | None = None,
    *,
    slices: Sequence[int] | None = None,
    skip: Sequence[int] = (),
) -> dict:
    """Import corrected masks of the open round (a subset now and the rest later is fine).

    Without ``directory``, masks are read from the round's export folder, and only
    those edited since export (or named in ``slices``) are imported. With a
    ``directory``, every mask file found there for a pending slice is imported.
    Everything is validated before anything is committed.
    """
    from activeseg.oracle import Correction, find_mask_files, read_corrections

    with session.writing("import"):
        m = session.manifest
        rnd = _last_round(m)
        if rnd is None or rnd["index"] == 0:
            raise SessionError("nothing to import: no round has been queried yet (activeseg query SESSION)")
        pending = _pending(rnd)
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
        cfg = _config(session)
        masks = read_corrections(chosen, shape[1:], n_classes=cfg.n_classes, n_slices=shape[0], radius=cfg.export_radius)
        prefill = _prefill(session, rnd["index"])
        corr = [Correction(z, mk, int(np.count_nonzero(mk != prefill[z])), "corrected") for z, mk in sorted(masks.items())]
        if corr:
            _write_labels(session, m, rnd, corr, kind="full")
        rnd["imported"] = sorted(set(rnd["imported"]) | set(masks))
        rnd["skipped"] = sorted(set(rnd["skipped"]) | set(skip))
        rnd["status"] = "queried" if _pending(rnd) else ("labelled" if rnd["imported"] else "skipped")
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "imported": sorted(masks), "skipped": skip, "pending": _pending(rnd),
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
        gone = _reverted(m)
        hits: dict[int, list[int]] = {}
        if round_index is not None:
            r = next((r for r in rounds if r["index"] == int(round_index)), None)
            if r is None:
                raise ConfigError(f"session {session.root} has no round {round_index} (rounds: 0..{len(rounds) - 1})")
            labelled = sorted({int(z) for rel in r.get("label_files", []) for z in session.load_npz(rel)["slices"]})
            todo = [z for z in labelled if (r["index"], z) not in gone]
            if not todo and not _pending(r):
                raise SessionError(f"round {round_index} has no labels left to revert")
            if todo:
                hits[r["index"]] = todo
            if _pending(r):  # an open round is closed: its slices are free to be queried again
                r["reverted_pending"] = _pending(r)
                r["status"] = "skipped" if not r.get("imported") else r.get("status")
        else:
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
                    f"slice(s) {missing} have no labels to revert (labelled slices: {_full_slices(m) or 'none'}); "
                    "see activeseg status"
                )
        tomb = m.setdefault("tombstones", [])
        for r_idx, zs_r in sorted(hits.items()):
            tomb.append({"round": r_idx, "slices": sorted(zs_r), "at": _now(), "reason": reason,
                         "by": "round" if round_index is not None else "slice"})
        if not labels_dict(session, manifest=m):
            log.warning("no labels are left after this revert; bootstrap labels are needed before the next train")
        session.commit(m)
    return {"reverted": {int(k): v for k, v in hits.items()}, "labelled_slices": _full_slices(session.manifest)}


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now().isoformat(timespec="seconds")


def oracle_correct(session: Session, *, effort: int | None = None) -> dict:
    """Simulation: ground truth corrects every pending slice of the open round."""
    from activeseg.oracle import truth_correction

    with session.writing("oracle"):
        m = session.manifest
        rnd = _last_round(m)
        if rnd is None or rnd["index"] == 0 or not _pending(rnd):
            raise SessionError("no queried slices are waiting for corrections; run a query first")
        truth = _truth(session)
        if truth is None:
            raise SessionError("the ground-truth oracle needs a session with --truth")
        prefill = _prefill(session, rnd["index"])
        with truth:
            corr = [truth_correction(z, np.asarray(truth[z]), prefill[z], effort=effort) for z in _pending(rnd)]
        _write_labels(session, m, rnd, corr, kind="full")
        rnd["imported"] = sorted(set(rnd["imported"]) | {c.z for c in corr})
        rnd["status"] = "labelled"
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "imported": [c.z for c in corr], "cost": {c.z: c.cost for c in corr}}


def pseudo_label(session: Session, *, threshold: float | None = None, progress: Progress = _noop) -> dict:
    """No human: the current model's confident predictions label the pending slices.

    Recorded with source "rf" (before any network) or "pseudo" and kind "partial": the
    unconfident pixels stay unlabelled, and the slices do not count as corrected.
    """
    from activeseg.oracle import pseudo_labels

    with session.writing("pseudo-label"):
        m = session.manifest
        rnd = _last_round(m)
        if rnd is None or rnd["index"] == 0 or not _pending(rnd):
            raise SessionError("no queried slices are waiting for labels; run a query first")
        cfg = _config(session)
        thr = cfg.pseudo_threshold if threshold is None else threshold
        with _image(session) as image:
            kind, _, model = current_model(session, image, progress=progress)
            zs = _pending(rnd)
            probs = model.predict_proba(image, zs)
        corr = [pseudo_labels(z, p, threshold=thr, source="rf" if kind == "rf" else "pseudo") for z, p in zip(zs, probs)]
        _write_labels(session, m, rnd, corr, kind="pseudo")
        rnd["skipped"] = sorted(set(rnd["skipped"]) | set(zs))  # labelled, but not as corrected slices
        rnd["pseudo"] = zs
        rnd["status"] = "labelled"
        m["rounds"][-1] = rnd
        session.commit(m)
    return {"round": rnd["index"], "pseudo_labelled": zs}


def evaluate_model(session: Session, model, image, *, progress: Progress = _noop) -> dict:
    """Predict the whole stack and compare with the session's truth (streamed to disk)."""
    from activeseg import metrics

    truth = _truth(session)
    if truth is None:
        return {}
    depth = _depth(session)
    nz, ny, nx = (int(s) for s in image.shape)
    # scratch space of the session: the caller holds the lock, so leftovers of a killed
    # process can go before new files are made
    scratch = session.path("tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        check_free_space(scratch, nz * ny * nx * 5, what="the whole-stack evaluation's scratch arrays")
        prob = _scratch_array(scratch / "prob.npy", np.float32, (nz, ny, nx))
        _predict_pore_prob(model, image, prob, progress=progress)
        pred = _scratch_array(scratch / "pred.npy", np.uint8, (nz, ny, nx))
        for z0 in range(0, nz, 16):
            pred[z0 : z0 + 16] = prob[z0 : z0 + 16] >= 0.5
        with truth:
            ev = metrics.evaluate(pred, truth, prob=prob, depth=depth)
        if depth is not None:
            depth.close()
        del prob, pred
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    d = ev.to_dict()
    from activeseg.report import paper_indices

    d["named_indices"] = {str(z): ev.at(z) for z in sorted(set(paper_indices(nz)))}
    return d


def _scratch_array(path: Path, dtype, shape) -> np.memmap:
    """A memory-mapped ``.npy`` whose disk blocks are reserved (a full disk raises, no SIGBUS)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve(path, os.path.getsize(path))
    return arr


def _predict_pore_prob(model, image, out, *, progress: Progress = _noop) -> None:
    """Write the pore probability (Z, Y, X) of any model (RF or network) into ``out``."""
    callback = lambda d, t: progress("inference", d, t)  # noqa: E731
    if hasattr(model, "predict_stack") and not hasattr(model, "net"):  # the RF streams itself
        model.predict_stack(image, out=out, callback=callback)
        return
    from activeseg.infer import predict_stack

    predict_stack(model, image, out=out, callback=callback)
    if hasattr(out, "flush"):
        out.flush()


def train(
    session: Session,
    *,
    steps: int | None = None,
    device: str | None = None,
    warm_start: bool = True,
    evaluate: bool = True,
    progress: Progress = _noop,
) -> dict:
    """Train the network on every committed label (warm start from the current network).

    When the session has ground truth, the new model is evaluated on the whole stack and
    the metrics are stored with the round.
    """
    from activeseg.model import ModelConfig, save_model
    from activeseg.train import TrainConfig, train_model

    with session.writing("train"):
        m = session.manifest
        rnd = _last_round(m)
        if rnd is None:
            raise SessionError(f"session {session.root} has no labels; run `activeseg bootstrap {_q(session.root)}` first")
        cfg = _config(session)
        labels = labels_dict(session, kinds=LABEL_KINDS if cfg.train_on_scribbles else ("full", "pseudo"))
        if not labels:
            raise SessionError(
                "no fully labelled slices to train on (this session trains on corrected slices only: "
                "train_on_scribbles = false); query and correct some slices first"
            )
        if rnd.get("status") == "skipped":
            raise SessionError(
                f"round {rnd['index']} was skipped entirely (no slice imported), so there is nothing new to "
                f"train on; query other slices: activeseg query {_q(session.root)}"
            )
        if rnd["index"] > 0 and not rnd.get("imported") and not rnd.get("pseudo"):
            raise SessionError(
                f"round {rnd['index']} has no imported corrections yet (pending: {_pending(rnd)}); "
                f"import them first (activeseg import {_q(session.root)})"
            )
        if _pending(rnd):
            log.warning("round %d still waits for slices %s; training on what is imported so far", rnd["index"], _pending(rnd))
        tkw = dict(cfg.train)
        tkw.setdefault("val_seed", int(cfg.seed))  # the same held-out pixels in every round
        if steps is not None:
            tkw["steps"] = int(steps)
            tkw.pop("epochs", None)
        if device is not None:
            tkw["device"] = device
        tcfg = TrainConfig(**tkw)
        rng = _rng(m)
        seed = int(rng.integers(2**31 - 1))
        with _image(session) as image:
            init = None
            if warm_start and m.get("model"):
                from activeseg.model import load_model

                init = load_model(session.path(m["model"]["path"]))
            model, history = train_model(
                image, labels, config=tcfg, model_config=None if init is not None else ModelConfig(**model_kwargs(cfg)),
                rng=np.random.default_rng(seed), init=init,
                callback=lambda s, t, info: progress("train", s, t),
            )
            rdir = f"rounds/r{rnd['index']:03d}"
            # the seed makes a retrained round's model a new directory: the committed one stays intact
            version = f"r{rnd['index']:03d}-{_labels_version(m)}-{seed:08x}"
            model_rel = f"{rdir}/model-{version}"
            metrics_rel = None
            try:
                save_model(model, session.path(model_rel))
                if evaluate and m.get("truth"):
                    ev = evaluate_model(session, model, image, progress=progress)
                    metrics_rel = session.write_json(f"{rdir}/metrics-{version}.json", ev)
                    rnd["metrics"] = ev["overall"]
                    rnd["metrics_named"] = ev["named_indices"]
            except BaseException:  # a full disk, ...: the uncommitted network and its folders go
                _discard(session, [model_rel, f"{rdir}/metrics-{version}.json"])
                raise
        rnd["status"] = "trained"
        rnd["train"] = {
            "seed": seed,
            "steps_run": history.get("steps_run"),
            "seconds": history.get("seconds"),
            "best_val_loss": history.get("best_val_loss"),
            "warm_start": init is not None,
            "kept_previous": bool(history.get("kept_init")),
            "labelled_slices": sorted(int(z) for z in labels),
            "device": history.get("device"),
        }
        rnd["metrics_file"] = metrics_rel
        m["rounds"][-1] = rnd
        m["model"] = {"path": model_rel, "version": version, "round": rnd["index"]}
        _store_rng(m, rng)
        try:
            session.commit(m)
        except BaseException:
            if _on_disk(session, lambda d: (d.get("model") or {}).get("path"), unreadable=model_rel) != model_rel:
                _discard(session, [model_rel, metrics_rel])
            raise
    return {"round": rnd["index"], "model": model_rel, "history": rnd["train"], "metrics": rnd.get("metrics"),
            "n_labelled": len(_full_slices(m))}


# --- reading the state ------------------------------------------------------------------------


def next_step(session: Session) -> str:
    """What to do next, as a command line (paths shell-quoted, ready to paste)."""
    m = session.manifest
    root = _q(session.root)
    last = _last_round(m)
    if last is None:
        nz = int(m["stack"]["shape"][0])
        spread = ",".join(str(int((i + 0.5) * nz / 3)) for i in range(3))
        how = f"--slices {spread}" if m.get("truth") else "--scribbles FILE | --labels FILE"
        return f"activeseg bootstrap {root} {how}"
    if _pending(last):
        folder = _q(session.path(f"rounds/r{last['index']:03d}"))
        return f"correct the masks in {folder}, then: activeseg import {root}"
    if last["index"] > 0 and last.get("status") not in ("trained", "skipped"):
        return f"activeseg train {root}"
    if last["index"] == 0 and not m.get("model"):
        return f"activeseg query {root} -n 5 --strategy distributed   (or train a first network: activeseg train {root})"
    return f"activeseg query {root} -n 5 --strategy spaced_entropy"


def status(session: Session) -> dict:
    """A JSON-serialisable summary: rounds, labels, metrics, costs, stopping signals."""
    m = session.manifest
    nz = int(m["stack"]["shape"][0])
    rounds = []
    prev_por = None
    for r in m["rounds"]:
        costs = r.get("correction_cost", {})
        full = r.get("full_slices", [])
        px = int(np.prod(m["stack"]["shape"][1:]))
        row = {
            "index": r["index"],
            "strategy": r.get("strategy"),
            "status": r.get("status"),
            "queried": r.get("queried", []),
            "imported": r.get("imported", []),
            "pending": _pending(r),
            "full_slices": [z for z in full if (r["index"], z) not in _reverted(m)],
            "scribble_pixels": r.get("scribble_pixels", 0),
            "correction_cost_px": int(sum(costs.get(str(z), 0) for z in full)) if r["index"] > 0 else None,
            "correction_cost_frac": (float(np.mean([costs[str(z)] / px for z in full if str(z) in costs])) if r["index"] > 0 and full else None),
            "metrics": r.get("metrics"),
            "reverted": sorted(_reverted_in(m, r)),
        }
        if r.get("audit") is not None and str(r["audit"]) in costs:
            row["audit_error"] = costs[str(r["audit"])] / px
        sf = r.get("scores_file")
        if sf and session.path(sf).exists():
            por = session.load_npz(sf).get("porosity")
            if por is not None and np.isfinite(por).any():
                mean_por = float(np.nanmean(por))
                row["predicted_porosity"] = mean_por
                if prev_por is not None:
                    row["porosity_change"] = mean_por - prev_por
                prev_por = mean_por
        rounds.append(row)
    uncertainty = None
    last_scores = next((r.get("scores_file") for r in reversed(m["rounds"]) if r.get("scores_file")), None)
    if last_scores and session.path(last_scores).exists():
        sc = session.load_npz(last_scores)
        for name in ("entropy", "margin", "bald", "rf_disagreement"):
            if name in sc:
                uncertainty = {"name": name, "values": [None if not np.isfinite(v) else float(v) for v in sc[name]]}
                break
    return {
        "session": str(session.root),
        "stack": {"path": m["stack"]["path"], "shape": m["stack"]["shape"]},
        "has_truth": bool(m.get("truth")),
        "rounds": rounds,
        "labelled_slices": _full_slices(m),
        "n_labelled": len(_full_slices(m)),
        "n_slices": nz,
        "model": m.get("model"),
        "tombstones": m.get("tombstones", []),
        "uncertainty": uncertainty,
        "next_step": next_step(session),
    }


# --- outputs ---------------------------------------------------------------------------------------


def check_output_values(values: Sequence[int]) -> tuple[int, int]:
    """The two uint8 values written for solid and pore (``--values``)."""
    try:
        vals = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 2 or not all(0 <= v <= 255 for v in vals) or vals[0] == vals[1]:
        raise ConfigError(
            f"--values takes two different numbers from 0 to 255 for solid,pore (e.g. 0,1 or 0,255 for Fiji); "
            f"got {','.join(map(str, values)) if values else 'nothing'}"
        )
    return vals


def _segment_to_file(model, image, out: Path, *, voxel_size, probabilities: bool, values: tuple[int, int],
                     fixed: dict[int, np.ndarray] | None = None, progress: Progress = _noop,
                     before_replace: Callable[[list[float]], None] | None = None) -> list[float]:
    """Segment every slice of ``image`` into the TIFF ``out``; returns the porosity per slice.

    ``values`` must already be checked (:func:`check_output_values`).

    Writes the float32 pore probability (``probabilities``) or uint8 ``values`` for
    solid/pore; slices in ``fixed`` (z -> 0/1 mask) are taken from their labels. The
    stacks are written beside ``out`` under temporary names and moved into place at the
    end; a failure or a kill leaves ``out`` as it was and removes the temporary files
    (and the folders made for ``out``). ``before_replace(porosity)`` writes what goes with
    ``out`` (its porosity table) before it is moved into place, so that a failure there
    also leaves ``out`` as it was.
    """
    from activeseg import io

    lo, hi = values
    fixed = fixed or {}
    nz, ny, nx = (int(s) for s in image.shape)
    n_vox = nz * ny * nx
    check_free_space(out.parent, n_vox * (4 if probabilities else 5), what=f"writing {out}")
    tmp_prob = out.with_name(f".{out.name}.prob.tmp")
    tmp_seg = out.with_name(f".{out.name}.tmp")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    porosity: list[float] = []
    done = False
    try:
        prob = io.create_stack(tmp_prob, (nz, ny, nx), np.float32, voxel_size=voxel_size, kind="probabilities")
        _predict_pore_prob(model, image, prob, progress=progress)
        if probabilities:
            for z, mk in fixed.items():
                prob[z] = mk.astype(np.float32)
            porosity = [float(np.mean(np.asarray(prob[z]) >= 0.5)) for z in range(nz)]
            prob.flush()
            del prob
            if before_replace is not None:
                before_replace(porosity)
            _replace(tmp_prob, out)
        else:
            seg = io.create_stack(tmp_seg, (nz, ny, nx), np.uint8, voxel_size=voxel_size, kind="labels")
            for z in range(nz):
                lab = fixed[z] if z in fixed else (np.asarray(prob[z]) >= 0.5).astype(np.uint8)
                porosity.append(float(np.mean(lab == 1)))
                seg[z] = np.where(lab == 1, hi, lo).astype(np.uint8)
            seg.flush()
            del seg, prob
            if before_replace is not None:
                before_replace(porosity)
            _replace(tmp_seg, out)
        done = True
    except OutputError as exc:  # name the output the user gave, not our hidden temporary file
        msg = str(exc)
        for tmp in (tmp_prob, tmp_seg):
            msg = msg.replace(str(tmp), str(out))
        raise OutputError(msg) from exc
    finally:
        for tmp in (tmp_prob, tmp_seg):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # e.g. EROFS: nothing was made there; never hide the real error
                pass
        if not done:
            for folder in made:  # only empty folders go
                try:
                    folder.rmdir()
                except OSError:
                    break
    return porosity


def _replace(tmp: Path, out: Path) -> None:
    """Move a finished temporary output into place (an OSError becomes one clear line)."""
    try:
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(os_error_message(exc, out)) from exc


def session_inputs(session: Session) -> list[tuple[str, str | None]]:
    """``(what, path)`` of every file a session reads: stack, truth, depth."""
    m = session.manifest
    return [(what, (m.get(key) or {}).get("path")) for key, what in
            (("stack", "session's image stack"), ("truth", "session's ground truth"), ("depth", "session's depth map"))]


def export_segmentation(
    session: Session,
    out: Path,
    *,
    probabilities: bool = False,
    values: tuple[int, int] = (0, 1),
    progress: Progress = _noop,
) -> dict:
    """Whole-stack segmentation from the latest model, with labelled slices taken from
    their labels; plus porosity per slice as CSV beside it (``OUT.porosity.csv``)."""
    out = Path(out)
    values = check_output_values(values)
    csv = out.with_suffix(".porosity.csv")
    for path, option in ((out, "OUT"), (csv, "the porosity table")):
        check_output(path, inputs=session_inputs(session), sessions=[session.root], option=option)
    cfg = _config(session)
    full = labels_dict(session, kinds=("full",))

    def write_table(porosity: list[float]) -> None:
        atomic_write_bytes(csv, ("z,porosity,labelled\n" + "".join(
            f"{z},{p:.6f},{int(z in full)}\n" for z, p in enumerate(porosity))).encode())

    with _image(session) as image:
        kind, version, model = current_model(session, image, progress=progress)
        porosity = _segment_to_file(model, image, out, voxel_size=cfg.geometry.voxel_size, probabilities=probabilities,
                                    values=values, fixed=full, progress=progress, before_replace=write_table)
    return {"out": str(out), "porosity_csv": str(csv), "model": version, "kind": kind, "porosity": float(np.mean(porosity))}


def predict_to_file(model_path: Path, stack: Path, out: Path, *, values: tuple[int, int] = (0, 1), probabilities: bool = False, progress: Progress = _noop) -> dict:
    """Apply a trained network (a session's latest, or a model directory) to another stack."""
    from activeseg import io
    from activeseg.model import load_model

    values = check_output_values(values)
    model_path = Path(model_path)
    inputs: list[tuple[str, str | None]] = [("stack to segment", str(stack))]
    sessions = []
    if (model_path / "activeseg.json").exists():
        s = Session.open(model_path)
        if not s.manifest.get("model"):
            raise SessionError(f"session {model_path} has no trained network yet; run `activeseg train {_q(model_path)}`")
        model_dir = s.path(s.manifest["model"]["path"])
        inputs += [("session's network", str(model_dir)), *session_inputs(s)]
        sessions.append(s.root)  # named as a session (OUT may go to its exports/ folder)
    else:
        model_dir = model_path
        inputs.append(("model", str(model_path)))  # nothing is written into a model folder
    check_output(out, inputs=inputs, sessions=sessions, option="OUT")
    model = load_model(model_dir)
    with io.open_stack(stack) as image:
        _segment_to_file(model, image, Path(out), voxel_size=image.voxel_size, probabilities=probabilities,
                         values=values, progress=progress)
    return {"out": str(out), "model": str(model_dir)}


def run(
    session: Session,
    *,
    strategy: str,
    n: int,
    rounds: int,
    first_strategy: str | None = None,
    params: dict | None = None,
    bootstrap_slices: int = 3,
    effort: int | None = None,
    steps: int | None = None,
    progress: Progress = _noop,
) -> list[dict]:
    """Simulation: ``rounds`` rounds of query -> ground-truth oracle -> train.

    Bootstraps first (RF on simulated scribbles of ``bootstrap_slices`` evenly spaced
    slices) if the session is not bootstrapped yet. Resumes a half-finished round.
    """
    m = session.manifest
    if not m.get("truth"):
        raise SessionError("`run` needs ground truth (init the session with --truth, or from a synth folder)")
    if not m["rounds"]:
        nz = int(m["stack"]["shape"][0])
        zs = [int(round((i + 0.5) * nz / bootstrap_slices)) for i in range(bootstrap_slices)]
        bootstrap(session, slices=zs, simulate_scribbles=True, progress=progress)
    done = []
    # finish a half-done round first (e.g. after a kill)
    last = _last_round(session.manifest)
    if last["index"] > 0 and _pending(last):
        oracle_correct(session, effort=effort)
    last = _last_round(session.manifest)
    if last["index"] > 0 and last.get("status") not in ("trained", "skipped"):
        done.append(train(session, steps=steps, progress=progress))
    n_done = sum(1 for r in session.manifest["rounds"] if r["index"] > 0)
    for i in range(n_done, rounds):
        name = first_strategy if (i == 0 and first_strategy) else strategy
        query(session, n, strategy=name, params=params if name == strategy else None, export=False, progress=progress)
        oracle_correct(session, effort=effort)
        done.append(train(session, steps=steps, progress=progress))
    return done
