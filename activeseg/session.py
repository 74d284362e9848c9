"""The session directory: manifest, append-only label files, atomic writes, one writer.

A session is everything one labelling campaign on one stack produces ::

    mysession/
      activeseg.json        manifest (the commit point; written last, atomically)
      labels/r000_i00.npz   append-only label files: slice ids, masks, provenance, cost
      rounds/r001/          files to correct, the round's model, scores, metrics
      rf/rf-KEY.npz         the fitted Random Forest of the current labels (no pickle)
      lock                  who writes now (PID, host, command)

Every write goes to a temporary file, is fsynced and moved into place with
``os.replace``; the manifest is written last. A crash at any moment leaves the previous
committed state readable, and files the manifest does not reference are ignored.

The manifest carries ``schema_version``; a session of an older version is migrated in
memory on open (:data:`MIGRATIONS`, written back by the next commit), one of a newer
version is refused.

The lock is an ``fcntl.flock`` on ``lock``: the kernel releases it when the holder dies,
so a lock left by a killed process is taken over safely, and the file records the PID so
a live holder can be named in the error. The next holder removes what a killed step left
(``tmp/`` scratch, temporary files). Sessions are written on POSIX systems (Linux, macOS);
on Windows every writing command refuses with one line (reading works).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from activeseg.errors import SessionError, SessionLockedError
from activeseg.io import slice_files
from activeseg.io.zarr_store import looks_like_zarr, store_content_sha256, store_files, store_fingerprint

try:
    import fcntl
except ImportError:  # Windows: sessions are read-only there (see _Lock.acquire)
    fcntl = None  # type: ignore[assignment]
from activeseg.safety import atomic_save_npz, atomic_write_bytes, atomic_write_json

__all__ = [
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "MANIFEST",
    "Session",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npz",
    "file_fingerprint",
    "is_store_entry",
    "sha256_file",
]

SCHEMA_VERSION = 2
MANIFEST = "activeseg.json"
LOCK = "lock"
log = logging.getLogger("activeseg")


# Atomic writes live in activeseg.safety (one helper for the whole project); the
# session's own names stay importable from here.


# --- schema migrations -------------------------------------------------------------------


def _v1_to_v2(m: dict) -> dict:
    """Version 2 keeps the fitted Random Forest in the session and gates new networks.

    ``rf``: ``{"path": "rf/rf-KEY.npz", "key": KEY}``, the stored forest of the current
    labels and RF settings, or None: no forest stored (a version-1 session refit it in
    every command; the next step that fits it stores it).
    ``current``: the model that pre-fills and exports, ``{"kind": "rf"}`` or
    ``{"kind": "resunet", "path", "version", "round"}``, as the gate decided. A version-1
    session's current model was its latest network, or the RF before any: that is what
    ``current`` becomes. ``model`` keeps its meaning for such a session (the latest
    network); from version 2 on it is the best network so far (warm starts, network-only
    scores).
    """
    m.setdefault("rf", None)
    if "current" not in m:
        m["current"] = {"kind": "resunet", **m["model"]} if m.get("model") else {"kind": "rf"}
    return m


MIGRATIONS = {1: _v1_to_v2}
"""``{version: f}``: ``f`` turns a manifest of ``version`` into one of ``version + 1``
(in memory; it is written back by the next commit). Add a field to a migration by giving
it the value that means what an older session did."""


def migrate_manifest(manifest: dict, *, where: str = "the session") -> dict:
    """Bring a manifest of an older schema version up to :data:`SCHEMA_VERSION` (in place)."""
    version = int(manifest["schema_version"])
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise SessionError(
                f"{where} has schema version {version}, which this activeseg cannot read (it reads versions "
                f"{min(MIGRATIONS, default=SCHEMA_VERSION)} to {SCHEMA_VERSION}); open it with the activeseg that wrote it"
            )
        manifest = step(manifest)
        version += 1
        manifest["schema_version"] = version
    return manifest


# --- fingerprints of input files --------------------------------------------------------


def _input_files(path: Path) -> list[Path]:
    """The file itself, a folder's slice images or a zarr store's metadata and chunk files
    (exactly what :mod:`activeseg.io` reads, so a ``Thumbs.db`` or ``.DS_Store`` does not
    count as a change)."""
    if not path.is_dir():
        return [path]
    if looks_like_zarr(path):
        return [path / rel for rel, _, _ in store_files(path)]
    return slice_files(path)


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, of a folder's slice images in sorted order, or of a zarr store's
    metadata and chunk files (names and bytes, sorted)."""
    path = Path(path)
    if looks_like_zarr(path):
        return store_content_sha256(path, chunk=chunk)
    h = hashlib.sha256()
    files = _input_files(path)
    for f in files:
        if path.is_dir():
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def stat_key(path: Path) -> dict:
    """Total size and newest modification time of what :func:`_input_files` lists."""
    files = _input_files(Path(path))
    return {
        "size": int(sum(f.stat().st_size for f in files)),
        "mtime_ns": int(max((f.stat().st_mtime_ns for f in files), default=0)),
    }


def is_store_entry(entry: dict) -> bool:
    """Whether a manifest's input entry fingerprints a zarr store (it has ``listing``)."""
    return entry.get("listing") is not None


def file_fingerprint(path: Path, *, verify: bool = False) -> dict:
    """Absolute path, SHA-256, size and modification time of an input file or folder.

    A zarr store (docs/architecture.md §5) is fingerprinted by its listing instead:
    ``listing`` hashes the level-0 array's shape, dtype and chunks, the metadata files'
    text and every chunk file's name, size and mtime; ``sha256`` (every chunk's bytes) is
    computed only with ``verify=True`` and is None otherwise. ``verify`` does not change
    the fingerprint of a file or a folder of slices, whose SHA-256 is always taken.
    """
    path = Path(path).resolve()
    if looks_like_zarr(path):
        return {"path": str(path), **store_fingerprint(path, content=verify)}
    return {"path": str(path), "sha256": sha256_file(path), **stat_key(path)}


# --- the lock -------------------------------------------------------------------------------


class _Lock:
    """An exclusive advisory lock on ``session/lock`` naming its holder."""

    def __init__(self, path: Path, command: str):
        self.path = Path(path)
        self.command = command
        self._fh: TextIO | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise SessionError(
                "activeseg writes sessions on Linux and macOS only: it needs POSIX file locks to keep two "
                "processes from writing one session; on Windows run it under WSL"
            )
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()  # "read-only file system", "permission denied"
            raise SessionError(
                f"session {self.path.parent} cannot be written ({why}: {self.path.name}); to change it, make the "
                "folder writable, or copy the session folder to a writable place and use the copy (reading "
                "commands such as `activeseg status` work as it is)"
            ) from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            h = self._holder()
            raise SessionLockedError(
                f"session {self.path.parent} is in use by process {h.get('pid', '?')} "
                f"({h.get('command', 'another activeseg command')}, since {h.get('since', '?')}); "
                "wait for it to finish, or stop it, then run this command again"
            ) from None
        previous = self._holder()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log.warning(
                "took over a stale session lock left by process %s (%s), which is no longer running; "
                "its uncommitted work is discarded, committed work is kept",
                previous.get("pid"),
                previous.get("command", "?"),
            )
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": self.command,
                    "since": _dt.datetime.now().isoformat(timespec="seconds"),
                }
            )
        )
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()
        finally:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


# --- the session ----------------------------------------------------------------------------


class Session:
    """A session directory on disk (the one class in activeseg that owns state).

    Open with :meth:`create` or :meth:`open`. Read the committed state from
    :attr:`manifest`; change it with :meth:`commit` inside :meth:`writing` (which holds the
    lock). Nothing changes on disk until :meth:`commit` writes the manifest.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self._manifest = manifest
        self._lock: _Lock | None = None
        self._owner: int | None = None  # the thread holding the lock

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, manifest: dict) -> Session:
        """Create a new session directory with an initial manifest (refuses to overwrite)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise SessionError(f"{root} is a file; give a new or empty folder for the session")
        if (root / MANIFEST).exists():
            raise SessionError(
                f"{root} already holds a session; choose another directory or continue it "
                f"(activeseg status {root})"
            )
        # a killed `init` leaves only the lock (and maybe a temp file): that folder counts as empty
        if root.exists() and any(p.name != LOCK and not p.name.endswith(".tmp") for p in root.iterdir()):
            raise SessionError(f"{root} exists and is not empty; give a new or empty directory for the session")
        root.mkdir(parents=True, exist_ok=True)
        m = {"schema_version": SCHEMA_VERSION, "created": _now(), **manifest}
        m.setdefault("rounds", [])
        s = cls(root, m)
        with s.writing("init"):
            s.commit()
        return s

    @classmethod
    def open(cls, root: Path) -> Session:
        """Open an existing session and check its schema version."""
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            hint = " (it is a file; give the session directory)" if root.is_file() else ""
            raise SessionError(
                f"no session at {root}{hint}: {MANIFEST} not found; create one with "
                f"`activeseg init {root} --image STACK`"
            )
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise SessionError(f"session manifest {path} is not valid JSON ({exc}); restore it from a backup") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise SessionError(f"{path} has no schema_version; it was not written by activeseg")
        if version > SCHEMA_VERSION:
            raise SessionError(
                f"session {root} was written by a newer activeseg (schema {version}; this version "
                f"reads up to {SCHEMA_VERSION}); upgrade activeseg to continue it"
            )
        if version < SCHEMA_VERSION:
            manifest = migrate_manifest(manifest, where=f"session {root}")
            log.debug("session %s: manifest migrated from schema %d to %d in memory", root, version, SCHEMA_VERSION)
        return cls(root, manifest)

    # -- state ------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        """The committed manifest (a deep copy: edit it, then :meth:`commit`)."""
        return copy.deepcopy(self._manifest)

    @property
    def rounds(self) -> list[dict]:
        return copy.deepcopy(self._manifest.get("rounds", []))

    @property
    def is_writing(self) -> bool:
        """Whether this object holds the session lock now (inside :meth:`writing`), so
        that it may write files and :meth:`commit`."""
        return self._lock is not None and self._owner == threading.get_ident()

    def path(self, *parts: str) -> Path:
        """A path inside the session directory."""
        return self.root.joinpath(*parts)

    def reload(self) -> None:
        """Re-read the manifest from disk."""
        self._manifest = Session.open(self.root)._manifest

    # -- writing ----------------------------------------------------------------------------
    @contextmanager
    def writing(self, command: str) -> Iterator[Session]:
        """Hold the session lock for the duration of a step; reloads the manifest first."""
        if self._lock is not None and self._owner == threading.get_ident():  # re-entrant within one thread
            yield self
            return
        # another thread of this process (a GUI's worker and its viewer sharing this object)
        # takes the file lock like another process would, and is refused while it is held
        lock = _Lock(self.path(LOCK), command)
        lock.acquire()
        self._lock = lock
        self._owner = threading.get_ident()
        try:
            self._sweep()
            if self.path(MANIFEST).exists():
                self.reload()
            yield self
        finally:
            self._lock = None
            self._owner = None
            lock.release()

    def _sweep(self) -> None:
        """Remove what a killed or failed step left behind: the ``tmp/`` scratch folder and
        temporary files of interrupted atomic writes (only the lock holder may do this)."""
        shutil.rmtree(self.path("tmp"), ignore_errors=True)
        for folder, dirs, files in os.walk(self.root):
            if Path(folder) == self.root:  # exports/ belongs to exports that run without the lock
                dirs[:] = [d for d in dirs if d != "exports"]
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    def _require_lock(self) -> None:
        if not self.is_writing:
            raise SessionError("internal: session writes need `with session.writing(...)`")

    def commit(self, manifest: dict | None = None) -> None:
        """Write the manifest atomically: the commit point of every step."""
        self._require_lock()
        m = self._manifest if manifest is None else manifest
        m["schema_version"] = SCHEMA_VERSION
        m["updated"] = _now()
        atomic_write_json(self.path(MANIFEST), m)
        self._manifest = json.loads(self.path(MANIFEST).read_text())

    def write_json(self, rel: str, obj) -> str:
        """Write a JSON file inside the session atomically; returns its relative path."""
        self._require_lock()
        atomic_write_json(self.path(rel), obj)
        return rel

    def save_npz(self, rel: str, **arrays) -> str:
        """Write an ``.npz`` inside the session atomically; returns its relative path."""
        self._require_lock()
        atomic_save_npz(self.path(rel), **arrays)
        return rel

    def load_npz(self, rel: str) -> dict[str, np.ndarray]:
        """Read a committed ``.npz`` (never with pickle)."""
        path = self.path(rel)
        if not path.exists():
            raise SessionError(f"session file {path} is missing; the session directory was changed by hand")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")
