"""What a session holds, read from its committed manifest: inputs, config, rng, labels, model.

Helpers shared by the steps (:mod:`activeseg.loop.steps`), the outputs and the status:
opening the session and checking its inputs against their fingerprints, the stack /
truth / depth, the config, the random generator, the labels (append-only files minus the
tombstones of ``revert``), the current model (the network the gate accepted last, or the
Random Forest; :func:`current_entry`) and the best network so far (:func:`best_network`).
The Random Forest is fitted without the held-out blocks of :mod:`activeseg.holdout`.
The fitted RF is kept in the session as ``rf/rf-KEY.npz`` (its trees' arrays, no pickle;
:func:`activeseg.bootstrap.save_rf`), named in the
manifest as ``rf = {"path", "key"}``; the key hashes what the forest is fitted from
(:func:`rf_key`: labels, RF settings, seed, stack, :data:`RF_FIT_RULE`). A command loads
it instead of refitting; a forest whose key no longer matches, or whose file is missing
or damaged, is fitted again deterministically from the labels and seed (and stored by a
writing step). See docs/architecture.md §5.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from activeseg import io
from activeseg.bootstrap import fit_rf, load_rf, save_rf
from activeseg.config import SessionConfig, rf_kwargs
from activeseg.errors import ModelError, SessionError
from activeseg.holdout import session_rule, without_held_out
from activeseg.oracle import confusion
from activeseg.session import Session, file_fingerprint, is_store_entry, sha256_file, stat_key
from activeseg.tiles import DEFAULT_TILE, TileGrid, region_name

log = logging.getLogger("activeseg")


Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stage is e.g. "features", "train", "inference"."""


def no_progress(stage: str, done: int, total: int) -> None:
    return None


def open_image(session: Session):

    m = session.manifest
    st = m["stack"]
    return io.open_stack(st["path"], crop=st.get("crop"), voxel_size=st.get("voxel_size_arg"), axes=st.get("axes"))


def open_truth(session: Session):
    """The ground-truth labels (lazy) or None.

    A truth given as a binary 0/255 mask (``pore_value`` 0 or 255 in the manifest's
    truth entry; absent = labels as they are) is decoded to 0/1 slice by slice.
    """
    t = session.manifest.get("truth")
    if not t:
        return None
    stack = io.open_stack(t["path"], crop=session.manifest["stack"].get("crop"))
    if t.get("pore_value") is None:
        return stack
    return io.PoreMaskStack(stack, t["pore_value"])


def open_depth(session: Session):

    d = session.manifest.get("depth")
    if not d:
        return None
    return io.open_stack(d["path"], crop=session.manifest["stack"].get("crop"))


def session_config(session: Session) -> SessionConfig:
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
    how = (" Restore the original file, or, if the pixels are the same (e.g. re-saved), run the command "
           "again with --relink PATH" if relinkable else " Restore the original file.")
    if is_store_entry(entry):  # a zarr store: its chunk listing, and the content hash when `init --verify` took one
        fp = file_fingerprint(path)
        if fp["listing"] == entry["listing"]:
            return None
        changed = f"chunk listing {fp['listing'][:12]} != {entry['listing'][:12]}"
        if entry.get("sha256"):
            digest = sha256_file(path)
            if digest == entry["sha256"]:
                return {**entry, **{k: fp[k] for k in ("listing", "size", "mtime_ns")}}
            changed = f"sha256 {digest[:12]} != {entry['sha256'][:12]}"
        raise SessionError(
            f"the {what} {path} changed on disk since the session was created ({changed}); labels no longer "
            f"match it.{how}"
        )
    current = stat_key(path)
    if current["size"] == entry.get("size") and current["mtime_ns"] == entry.get("mtime_ns"):
        return None
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise SessionError(
            f"the {what} {path} changed on disk since the session was created (sha256 {digest[:12]} != "
            f"{entry['sha256'][:12]}); labels no longer match it.{how}"
        )
    return {**entry, **current}


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
        fp = file_fingerprint(new_path, verify=bool(st.get("sha256")))  # a verified store stays verified
        if fp["sha256"] != st["sha256"]:
            log.warning("relinked to %s: same shape and dtype but different bytes (re-saved or re-compressed?)", new_path)
        m["stack"] = {**{k: v for k, v in st.items() if k != "listing"}, **fp}  # a TIFF after a store has no listing
        m.setdefault("history", []).append({"event": "relink", "from": st["path"], "to": str(new_path)})
        session.commit(m)


def session_rng(session_manifest: dict) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = session_manifest["rng_state"]
    return g


def store_rng(m: dict, rng: np.random.Generator) -> None:
    m["rng_state"] = rng.bit_generator.state


def label_files(m: dict) -> list[str]:
    return [f for r in m["rounds"] for f in r.get("label_files", [])]


LABEL_KINDS = ("full", "partial", "pseudo", "region")
"""Kinds of label files: corrected/true whole slices, scribbles, confident pseudo-labels,
corrected regions (tiles of slices; per slice a whole-slice mask, 255 outside its tiles)."""

HUMAN_KINDS = ("full", "partial", "region")
"""The labels a person (or the ground-truth oracle) gave: what the RF fit, training's
held-out blocks and the gate take (pseudo-labels are not human labels)."""


def reverted_pairs(m: dict) -> set[tuple[int, int]]:
    """``(round, z)`` pairs whose labels a tombstone withdrew (:func:`revert`)."""
    return {(int(t["round"]), int(z)) for t in m.get("tombstones", []) for z in t["slices"]}


def labels_dict(session: Session, *, kinds: Sequence[str] = LABEL_KINDS, manifest: dict | None = None) -> dict[int, np.ndarray]:
    """Committed labels of the given kinds as ``{z: uint8 (Y, X)}`` (255 = unlabelled).

    A whole-slice label replaces what was there; partial labels (scribbles,
    pseudo-labels, corrected regions) only fill their drawn pixels. Labels withdrawn by :func:`revert`
    are left out. ``manifest``: read the label files of this (not yet committed)
    manifest instead of the committed one.
    """
    m = session.manifest if manifest is None else manifest
    gone = reverted_pairs(m)
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


def labelled_slices(m: dict) -> list[int]:
    """The labelled slices: whole slices corrected by a person or taken from ground truth
    (the one definition used by ``status``, ``run``, studies and the strategies)."""
    gone = reverted_pairs(m)
    zs = []
    for r in m["rounds"]:
        zs += [z for z in r.get("full_slices", []) if (int(r["index"]), int(z)) not in gone]
    return sorted(set(zs))


def labels_version(m: dict) -> str:
    gone = ",".join(f"{r}:{z}" for r, z in sorted(reverted_pairs(m)))
    return hashlib.sha256(("|".join(label_files(m)) + ("#" + gone if gone else "")).encode()).hexdigest()[:12]


def write_labels(session: Session, m: dict, rnd: dict, corrections, *, kind: str) -> str:
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


def session_grid(m: dict) -> TileGrid:
    """The session's tile grid: ``[session] tile`` (128 in a session made before the key) over its slices."""
    shape = m["stack"]["shape"]
    return TileGrid(int(shape[1]), int(shape[2]), int((m.get("config") or {}).get("tile", DEFAULT_TILE)))


def write_region_labels(session: Session, m: dict, rnd: dict, regions: dict[tuple[int, int], np.ndarray],
                        prefill: dict[tuple[int, int], np.ndarray], *, source: str) -> str:
    """Record corrected regions as one label file of kind "region".

    ``regions``: ``(z, t) -> uint8 (h, w)`` the corrected tile; ``prefill``: the tiles as
    pre-filled. Per slice one whole-slice mask holds its tiles and 255 elsewhere; the
    file also keeps the ``regions`` (k, 2) it holds. The pixels changed per region go to
    ``rnd["region_cost"]`` (keyed ``zNNNN_tTTT``).
    """
    grid = session_grid(m)
    by_z: dict[int, np.ndarray] = {}
    changed: dict[int, int] = {}
    costs = rnd.setdefault("region_cost", {})
    for (z, t), tile in sorted(regions.items()):
        y0, y1, x0, x1 = grid.bounds(t)
        full = by_z.setdefault(int(z), np.full((grid.ny, grid.nx), 255, np.uint8))
        full[y0:y1, x0:x1] = tile
        n = int(np.count_nonzero(np.asarray(tile) != np.asarray(prefill[(z, t)])))
        changed[int(z)] = changed.get(int(z), 0) + n
        costs[region_name(z, t)] = n
    k = len(rnd.get("label_files", []))
    rel = f"labels/r{rnd['index']:03d}_i{k:02d}.npz"
    zs = sorted(by_z)
    session.save_npz(
        rel,
        slices=np.array(zs, dtype=np.int64),
        masks=np.stack([by_z[z] for z in zs]).astype(np.uint8),
        source=np.array([source] * len(zs)),
        cost=np.array([changed[z] for z in zs], dtype=np.int64),
        kind=np.array("region"),
        regions=np.array(sorted(regions), dtype=np.int64).reshape(-1, 2),
    )
    rnd.setdefault("label_files", []).append(rel)
    return rel


def tile_labelled(session: Session, m: dict, grid: TileGrid | None = None) -> np.ndarray:
    """bool ``(Z, n_tiles)``: every pixel of the tile is labelled, by any kind of label
    (a whole labelled slice labels all its tiles)."""
    grid = session_grid(m) if grid is None else grid
    nz = int(m["stack"]["shape"][0])
    out = np.zeros((nz, grid.n_tiles), dtype=bool)
    for z, mask in labels_dict(session, manifest=m).items():
        out[z] = grid.reduce(mask == 255, how="max") == 0
    out[labelled_slices(m)] = True
    return out


def add_cost(rnd: dict, units, *, n_classes: int, grid: TileGrid) -> None:
    """Add corrected units to the round's cost (docs/architecture.md §5).

    ``units``: ``(z, t, prefill, corrected, audit)`` per imported unit, ``t`` None for
    a whole slice; ``prefill`` and ``corrected`` the unit's masks (the slice, or the
    tile). ``rnd["cost"]`` sums ``reviewed_px`` (the unit's pixels, context excluded),
    ``changed_px`` (pixels whose class differs from the pre-fill) and ``units``; audit
    units are also summed in ``cost["audit"]`` (with the C x C ``confusion``, rows =
    corrected class, columns = pre-filled class) and listed in ``cost["audit_units"]``
    (``{"z", "t", "confusion"}``; a whole slice also with ``"tiles"``, the confusion of
    each tile of the grid, so an estimate can bootstrap over tiles).
    """
    cost = rnd.setdefault("cost", {"reviewed_px": 0, "changed_px": 0, "units": 0})
    for z, t, prefill, corrected, audit in units:
        prefill, corrected = np.asarray(prefill), np.asarray(corrected)
        px, changed = int(prefill.size), int(np.count_nonzero(prefill != corrected))
        cost["reviewed_px"] += px
        cost["changed_px"] += changed
        cost["units"] += 1
        if not audit:
            continue
        conf = confusion(corrected, prefill, n_classes)
        a = cost.setdefault("audit", {"reviewed_px": 0, "changed_px": 0, "units": 0,
                                      "confusion": np.zeros((n_classes, n_classes), np.int64).tolist()})
        a["reviewed_px"] += px
        a["changed_px"] += changed
        a["units"] += 1
        a["confusion"] = (np.asarray(a["confusion"], np.int64) + conf).tolist()
        entry: dict = {"z": int(z), "t": None if t is None else int(t), "confusion": conf.tolist()}
        if t is None:
            tiles = []
            for k in range(grid.n_tiles):
                y0, y1, x0, x1 = grid.bounds(k)
                tiles.append(confusion(corrected[y0:y1, x0:x1], prefill[y0:y1, x0:x1], n_classes).tolist())
            entry["tiles"] = tiles
        cost.setdefault("audit_units", []).append(entry)


RF_FIT_RULE = 2
"""The rule by which a session fits its Random Forest from its labels (features, pixel
sample, beam-sign estimation, the held-out blocks left out, ...). Bump it when that rule
changes: the forests stored under the old rule then no longer match their key and are
fitted again. 2: the held-out blocks of :mod:`activeseg.holdout` are left out of the fit."""

RF_DIR = "rf"
"""Session folder of the stored forest (``rf/rf-KEY.npz``, :func:`activeseg.bootstrap.save_rf`)."""

_RF_CACHE: dict = {}


def rf_key(session: Session, m: dict) -> str:
    """What a session's forest is fitted from, hashed: the labels (:func:`labels_version`
    and the label files' bytes), the RF settings, geometry and classes of the config, the
    RF seed, the stack's SHA-256 and :data:`RF_FIT_RULE`. ``n_jobs`` does not count (it
    changes speed, not the forest)."""
    cfg = session_config(session)
    h = hashlib.sha256()
    for rel in label_files(m):  # a retried step may write other masks under a file name an uncommitted try used
        p = session.path(rel)
        if p.exists():
            h.update(rel.encode() + sha256_file(p).encode())
    settings = {k: v for k, v in cfg.to_dict().items() if k in ("geometry", "n_classes", "sections")}
    what = {
        "rule": RF_FIT_RULE,
        "labels": labels_version(m),
        "label_bytes": h.hexdigest(),
        "rf": {k: v for k, v in cfg.rf.items() if k != "n_jobs"},
        **settings,
        "seed": int(m["bootstrap"]["rf_seed"]),
        "stack": m["stack"].get("sha256") or m["stack"].get("listing"),  # a zarr store without --verify: its listing
        "held_out": session_rule(cfg.train, cfg.seed),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_stored_rf(session: Session, m: dict, key: str, n_jobs: int):
    """The forest stored under ``key``: the file the manifest names, or ``rf/rf-KEY.npz``
    left by a step that fitted it but did not commit (its key and digest are checked on
    load); None (with a warning when a named file cannot be used) otherwise."""
    entry: dict = m["rf"] if isinstance(m.get("rf"), dict) else {}
    named = entry.get("key") == key and isinstance(entry.get("path"), str)
    path = session.path(str(entry["path"]) if named else f"{RF_DIR}/rf-{key}.npz")
    if not named and not path.exists():
        return None
    try:
        rf = load_rf(path, key=key, n_jobs=n_jobs)
    except ModelError as exc:
        log.warning("%s: fitting it again now", exc)
        return None
    log.debug("loaded the stored Random Forest %s", path)
    return rf


def _store_rf(session: Session, m: dict, rf, key: str) -> None:
    """Write ``rf/rf-KEY.npz`` and name it in ``m`` (committed by the caller); remove the
    files of other keys except the one the committed manifest names."""
    rel = f"{RF_DIR}/rf-{key}.npz"
    save_rf(rf, session.path(rel), key=key)
    m["rf"] = {"path": rel, "key": key}
    committed = (session.manifest.get("rf") or {}).get("path")
    for old in session.path(RF_DIR).glob("rf-*.npz"):
        if f"{RF_DIR}/{old.name}" not in (rel, committed):
            with contextlib.suppress(OSError):
                old.unlink()


def fit_session_rf(session: Session, image, *, progress: Progress = no_progress, manifest: dict | None = None):
    """The RF on all committed labels (or those of ``manifest``, before it is committed).

    Found in this order: the in-process cache; the file ``rf/rf-KEY.npz`` that the
    manifest names (``m["rf"] = {"path", "key"}``) when its key is :func:`rf_key` of the
    manifest; else fitted deterministically from the labels and the stored seed. A named
    file that is missing or cannot be loaded is fitted again with a warning. Inside a
    writing step (``session.is_writing``) with a ``manifest`` the step will commit, a
    forest not stored yet under that key is saved and named in ``manifest["rf"]``;
    read-only callers (``export``, ``status``) never write.
    """
    m = session.manifest if manifest is None else manifest
    if not m.get("bootstrap") or not label_files(m):
        raise SessionError(
            f"session {session.root} has no labels yet; run `activeseg bootstrap {shell_quote(session.root)}` first"
        )
    cfg = session_config(session)
    key = rf_key(session, m)
    cache_key = (str(session.root.resolve()), key)
    n_jobs = int(cfg.rf.get("n_jobs", -1))
    named = (m.get("rf") or {}).get("key") == key
    rf = _RF_CACHE.get(cache_key)
    orphan = False  # loaded from rf/rf-KEY.npz that no manifest names yet (a step that fitted it did not commit)
    if rf is None:
        rf = _load_stored_rf(session, m, key, n_jobs)
        named, orphan = named and rf is not None, not named and rf is not None
    if rf is None:
        labels = labels_dict(session, manifest=m)
        if not labels:
            raise SessionError(
                f"session {session.root} has no labels yet; run `activeseg bootstrap {shell_quote(session.root)}` first"
            )
        seed = int(m["bootstrap"]["rf_seed"])
        # the held-out blocks stay out of the RF too: the gate compares models on pixels neither saw
        fit_labels = without_held_out(labels, **session_rule(cfg.train, cfg.seed))
        progress("fit RF", 0, 1)
        rf = fit_rf(image, fit_labels, rng=np.random.default_rng(seed), geometry=cfg.geometry, n_classes=cfg.n_classes,
                    **rf_kwargs(cfg))
        progress("fit RF", 1, 1)
    _RF_CACHE.clear()
    _RF_CACHE[cache_key] = rf
    if not named and manifest is not None and session.is_writing:
        if orphan:
            manifest["rf"] = {"path": f"{RF_DIR}/rf-{key}.npz", "key": key}
        else:
            _store_rf(session, manifest, rf, key)
    return rf


def current_entry(m: dict) -> dict:
    """The current model's manifest entry: ``{"kind": "rf"}`` or ``{"kind": "resunet", "path", "version", ...}``.

    ``m["current"]`` is what the gate decided (:mod:`activeseg.loop.gate`); a session
    from before the gate has none, and its current model is its latest network, or the
    RF before any.
    """
    cur = m.get("current")
    if cur is not None:
        return cur
    return {"kind": "resunet", **m["model"]} if m.get("model") else {"kind": "rf"}


def current_model(session: Session, image, *, progress: Progress = no_progress, manifest: dict | None = None):
    """``(kind, version, model)`` of the current model: the network the gate accepted
    last, or the Random Forest while none was accepted.

    ``manifest``: the manifest a writing step will commit (a Random Forest fitted here
    is then stored with it; :func:`fit_session_rf`)."""
    m = session.manifest if manifest is None else manifest
    cur = current_entry(m)
    if cur["kind"] == "resunet":
        from activeseg.network import load_model  # torch: only once a network exists

        net = load_model(session.path(cur["path"]), device=cur.get("device", "auto"))
        return "resunet", cur["version"], net
    return "rf", "rf-" + labels_version(m), fit_session_rf(session, image, progress=progress, manifest=manifest)


def best_network(session: Session, m: dict | None = None):
    """``(version, network)`` of the best network so far (``m["model"]``), or ``(None, None)``.

    The current network when the gate accepted one; while the RF is current, the best
    candidate the gate turned down. Warm starts and the network-only scores (MC-dropout
    BALD, TTA variance, RF disagreement) come from it.
    """
    m = session.manifest if m is None else m
    entry = m.get("model")
    if not entry:
        return None, None
    from activeseg.network import load_model  # torch: only once a network exists

    return entry["version"], load_model(session.path(entry["path"]), device=entry.get("device", "auto"))


def last_round(m: dict) -> dict | None:
    return m["rounds"][-1] if m["rounds"] else None


def pending_slices(rnd: dict) -> list[int]:
    """The slices of a round still waiting for corrections (``revert --round`` closes them)."""
    done = set(rnd.get("imported", [])) | set(rnd.get("skipped", [])) | set(rnd.get("carried_out", {}).get("slices", []))
    done |= {int(z) for z in rnd.get("reverted_pending", [])}
    return [z for z in rnd.get("queried", []) if z not in done]


def pending_regions(rnd: dict) -> list[tuple[int, int]]:
    """The regions ``(z, t)`` of a round still waiting for corrections (none in a slice round)."""
    done = {(int(z), int(t)) for key in ("imported_regions", "skipped_regions")
            for z, t in rnd.get(key, [])}
    done |= {(int(z), int(t)) for key in ("regions",) for z, t in rnd.get("carried_out", {}).get(key, [])}
    done |= {(int(z), int(t)) for z, t in rnd.get("reverted_pending_regions", [])}
    return [(int(z), int(t)) for z, t in rnd.get("regions", []) if (int(z), int(t)) not in done]


def is_tile_round(rnd: dict | None) -> bool:
    """True for a round of regions (``"unit": "tiles"``); a round without ``unit`` is one of slices."""
    return bool(rnd) and (rnd or {}).get("unit", "slices") == "tiles"


def waiting(rnd: dict) -> bool:
    """True while a round has slices or regions pending."""
    return bool(pending_slices(rnd) or pending_regions(rnd))


def reverted_in(m: dict, rnd: dict) -> set[int]:
    gone = reverted_pairs(m)
    return {z for (r, z) in gone if r == rnd["index"]}


def shell_quote(path) -> str:
    """A path as a shell word (quoted when it holds spaces or special characters)."""
    return shlex.quote(str(path))


def prefill_masks(session: Session, idx: int) -> dict[int, np.ndarray]:
    data = session.load_npz(f"rounds/r{idx:03d}/prefill.npz")
    return {int(z): mk for z, mk in zip(data["slices"], data["masks"])}


def prefill_regions(session: Session, idx: int) -> dict[tuple[int, int], np.ndarray]:
    """The pre-filled tiles ``(z, t) -> uint8 (h, w)`` of a round of regions (``rounds/rNNN/prefill.npz``
    holds ``regions`` (k, 2) and ``tiles``, each tile padded to the full tile size with 255)."""
    data = session.load_npz(f"rounds/r{idx:03d}/prefill.npz")
    if "regions" not in data:
        return {}
    grid = session_grid(session.manifest)
    out = {}
    for (z, t), tile in zip(data["regions"], data["tiles"]):
        y0, y1, x0, x1 = grid.bounds(int(t))
        out[(int(z), int(t))] = np.asarray(tile)[: y1 - y0, : x1 - x0]
    return out


def now() -> str:

    return _dt.datetime.now().isoformat(timespec="seconds")


def committed_value(session: Session, get, unreadable=None):
    """``get(manifest)`` of the manifest on disk (``unreadable`` when it cannot be read)."""
    try:
        return get(json.loads(session.path("activeseg.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return unreadable


def discard_uncommitted(session: Session, rels) -> None:
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


def session_inputs(session: Session) -> list[tuple[str, str | None]]:
    """``(what, path)`` of every file a session reads: stack, truth, depth, the bootstrap
    labels or scribbles, and folders corrections were imported from."""
    m = session.manifest
    out = [(what, (m.get(key) or {}).get("path")) for key, what in
           (("stack", "session's image stack"), ("truth", "session's ground truth"), ("depth", "session's depth map"))]
    out.append(("session's bootstrap labels", (m.get("bootstrap") or {}).get("path")))
    out += [("folder of corrections imported into the session", d) for r in m["rounds"] for d in r.get("import_dirs", [])]
    return out
