"""What a session holds, read from its committed manifest: inputs, config, rng, labels, model.

Helpers shared by the steps (:mod:`activeseg.loop.steps`), the outputs and the status:
opening the session and checking its inputs against their fingerprints, the stack /
truth / depth, the config, the random generator, the labels (append-only files minus the
tombstones of ``revert``), the current model (the latest network, or the Random Forest
before any network exists: the RF is refit deterministically from the stored labels and
seed, never pickled). See docs/architecture.md §5.
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
from activeseg.bootstrap import fit_rf
from activeseg.config import SessionConfig
from activeseg.errors import SessionError
from activeseg.session import Session, file_fingerprint, sha256_file, stat_key

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
    """The ground-truth labels (lazy) or None."""
    t = session.manifest.get("truth")
    if not t:
        return None
    return io.open_stack(t["path"], crop=session.manifest["stack"].get("crop"))


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
    current = stat_key(path)
    if current["size"] == entry.get("size") and current["mtime_ns"] == entry.get("mtime_ns"):
        return None
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        how = (" Restore the original file, or, if the pixels are the same (e.g. re-saved), run the command "
               "again with --relink PATH" if relinkable else " Restore the original file.")
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
        fp = file_fingerprint(new_path)
        if fp["sha256"] != st["sha256"]:
            log.warning("relinked to %s: same shape and dtype but different bytes (re-saved or re-compressed?)", new_path)
        m["stack"] = {**st, **fp}
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


LABEL_KINDS = ("full", "partial", "pseudo")
"""Kinds of label files: corrected/true whole slices, scribbles, confident pseudo-labels."""


def reverted_pairs(m: dict) -> set[tuple[int, int]]:
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


_RF_CACHE: dict = {}


def fit_session_rf(session: Session, image, *, progress: Progress = no_progress, manifest: dict | None = None):
    """The RF on all committed labels (or those of ``manifest``, before it is committed),
    refit deterministically (cached per process)."""
    m = session.manifest if manifest is None else manifest
    key = (str(session.root.resolve()), labels_version(m))
    if key in _RF_CACHE:
        return _RF_CACHE[key]
    cfg = session_config(session)
    labels = labels_dict(session, manifest=m)
    if not labels:
        raise SessionError(
            f"session {session.root} has no labels yet; run `activeseg bootstrap {shell_quote(session.root)}` first"
        )
    seed = int(m["bootstrap"]["rf_seed"])
    progress("fit RF", 0, 1)
    rf = fit_rf(image, labels, rng=np.random.default_rng(seed), geometry=cfg.geometry, n_classes=cfg.n_classes, **cfg.rf)
    progress("fit RF", 1, 1)
    _RF_CACHE.clear()
    _RF_CACHE[key] = rf
    return rf


def current_model(session: Session, image, *, progress: Progress = no_progress):
    """``(kind, version, model)``: the latest network, or the RF before any network."""
    m = session.manifest
    if m.get("model"):
        from activeseg.network import load_model  # torch: only once a network exists

        net = load_model(session.path(m["model"]["path"]), device=m["model"].get("device", "auto"))
        return "resunet", m["model"]["version"], net
    return "rf", "rf-" + labels_version(m), fit_session_rf(session, image, progress=progress)


def last_round(m: dict) -> dict | None:
    return m["rounds"][-1] if m["rounds"] else None


def pending_slices(rnd: dict) -> list[int]:
    done = set(rnd.get("imported", [])) | set(rnd.get("skipped", [])) | set(rnd.get("carried_out", {}).get("slices", []))
    return [z for z in rnd.get("queried", []) if z not in done]


def reverted_in(m: dict, rnd: dict) -> set[int]:
    gone = reverted_pairs(m)
    return {z for (r, z) in gone if r == rnd["index"]}


def shell_quote(path) -> str:
    """A path as a shell word (quoted when it holds spaces or special characters)."""
    return shlex.quote(str(path))


def prefill_masks(session: Session, idx: int) -> dict[int, np.ndarray]:
    data = session.load_npz(f"rounds/r{idx:03d}/prefill.npz")
    return {int(z): mk for z, mk in zip(data["slices"], data["masks"])}


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
