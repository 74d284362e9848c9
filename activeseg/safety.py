"""Writing files safely: the one atomic-write helper, output guards, disk space, scratch.

Every file activeseg writes goes through :func:`atomic_path` (or the small wrappers
around it): the data go to a temporary file in the target's folder, which is fsynced and
moved over the target with ``os.replace``, then the folder is fsynced. A failure or a
kill at any moment leaves the target as it was, and the temporary file is removed on any
error (a kill -9 can leave a ``.NAME.*.tmp`` beside the target, which is ignored and
overwritten by the next write).

Before a command writes an output that a user named, :func:`check_output` refuses a path
that is (or resolves to, through symlinks or hard links) one of the command's inputs,
that lies inside a session folder, or that is a folder; :func:`check_free_space` refuses
a write that cannot fit, with the numbers. Large scratch arrays are reserved on disk
(:func:`reserve`) before they are memory-mapped, so a full disk raises an error instead
of killing the process with SIGBUS.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from activeseg.errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npz",
    "jsonable",
    "check_output",
    "check_free_space",
    "reserve",
    "os_error_message",
    "human_bytes",
]


def human_bytes(n: float) -> str:
    """``1.9 GB`` style sizes (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def os_error_message(exc: OSError, path: str | os.PathLike | None = None, *, action: str = "write") -> str:
    """One line for an ``OSError``: what failed, on which path, and what to do."""
    where = path if path is not None else (exc.filename or "a file")
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        fix = "the disk is full: free some space (or write somewhere else) and run the command again"
    elif code == errno.EROFS:
        fix = "the file system is read-only: choose a writable place"
    elif code in (errno.EACCES, errno.EPERM):
        fix = "permission denied: choose a place you may write to, or fix the permissions"
    elif code == errno.EISDIR:
        fix = "it is a folder: give a file name"
    elif code == errno.ENOENT:
        fix = "the path does not exist: check it"
    elif code == errno.ENOTDIR:
        fix = "a part of the path is a file, not a folder: check it"
    elif code == errno.EFBIG:
        fix = "the file is larger than this system allows (a file-size limit): raise the limit or write a smaller output"
    else:
        fix = exc.strerror or str(exc)
    return f"cannot {action} {where}: {fix}"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_output_error(exc: OSError, path: Path) -> OutputError:
    err = OutputError(os_error_message(exc, path))
    err.errno = exc.errno  # (no filename: OSError would then print "[Errno N] None: path" instead of the message)
    return err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and move it into place.

    The caller writes the temporary file (any library that takes a path will do). On
    any exception the temporary file is removed and ``path`` is untouched; an
    ``OSError`` (disk full, read-only, no permission) becomes an :class:`OutputError`
    whose message names ``path`` and the fix.
    """
    path = Path(path)
    tmp: Path | None = None
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # folders this write creates
    done = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs follow the umask like any other
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        done = True
        fsync_dir(path.parent)
    except OutputError:
        raise
    except OSError as exc:
        raise _as_output_error(exc, path) from exc
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        if not done:  # a failed write leaves no folder behind either (only empty ones it made go)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    break


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj):
    """``obj`` with numpy scalars/arrays and paths turned into JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> Path:
    """Write JSON atomically (NaN and inf become null)."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False, sort_keys=sort_keys)
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | os.PathLike, **arrays) -> Path:
    """Save arrays to a compressed ``.npz`` atomically (no pickled objects allowed)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            # no pickle: an object array fails here, before anything replaces the target (the
            # loaders read with allow_pickle=False and could not read it back)
            np.savez_compressed(fh, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


# --- guards -----------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_output(
    out: str | os.PathLike,
    *,
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    sessions: Iterable[str | os.PathLike] = (),
    allowed_in_session: tuple[str, ...] = ("exports",),
    option: str = "the output",
) -> Path:
    """Refuse an output path that would destroy an input or a session; returns it resolved.

    Parameters
    ----------
    out : the path a user asked the command to write.
    inputs : ``(what, path)`` pairs of everything the command or its session reads
        (stack, truth, depth, labels, scribbles, a model); None paths are skipped. A
        folder input (a folder of slices) also protects every file inside it.
    sessions : session folders; an output inside one is refused unless it lies in one
        of ``allowed_in_session`` (the folder where a session keeps exports).
    option : how to name the output in messages ("OUT", "--preview", ...).

    Raises
    ------
    OutputError : the output is an input (also through a symlink or hard link), lies
        inside an input folder or a session, is a folder (other than a ``.zarr`` store), or
        its folder is a file.
    """
    raw = Path(os.path.expanduser(os.fspath(out)))
    target = raw.resolve()
    # an OME-Zarr output is a folder (a store): one there is replaced only if it is a store
    # (activeseg.io.create_output checks that)
    if (raw.is_dir() or target.is_dir()) and not target.name.lower().endswith(".zarr"):
        raise OutputError(f"{option} {raw} is a folder; give a file name inside it, e.g. {raw / 'segmentation.tif'}")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {raw}: {parent} is a file, not a folder")
            break
    for what, p in inputs:
        if p is None:
            continue
        src = Path(os.path.expanduser(os.fspath(p)))
        if not src.exists():
            continue
        src_r = src.resolve()
        if target == src_r or (target.exists() and _same_file(target, src_r)):
            raise OutputError(
                f"{option} {raw} is the {what} ({src}); activeseg never writes over its inputs: "
                "give another output file name"
            )
        if src_r.is_dir() and _inside(target, src_r):
            raise OutputError(
                f"{option} {raw} lies inside the {what} folder {src}; writing there would change that "
                "input: give an output outside it"
            )
        if _inside(src_r, target):  # a store output replaces its whole folder, inputs inside it too
            raise OutputError(
                f"{option} {raw} holds the {what} ({src}); writing it would replace that input: give another "
                "output name"
            )
    for s in sessions:
        root = Path(s).resolve()
        if _inside(root, target):
            raise OutputError(f"{option} {raw} holds the session {s}; writing it would replace the session: give "
                              "another output name")
        if _inside(target, root) and not any(_inside(target, root / a) for a in allowed_in_session):
            allowed = ", ".join(str(Path(s) / a) for a in allowed_in_session)
            raise OutputError(
                f"{option} {raw} lies inside the session folder {s}, whose files only activeseg writes; "
                f"give a path outside it{' or inside ' + allowed if allowed else ''}"
            )
    return target


def check_free_space(folder: str | os.PathLike, needed: int, *, what: str = "the output") -> None:
    """Refuse a write of ``needed`` bytes into ``folder`` that cannot fit (with the numbers).

    A 2 % margin (at least 1 MB) is kept for metadata and the file system.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:  # cannot tell (e.g. a special file system): let the write itself decide
        return
    need = int(needed * 1.02) + (1 << 20)
    if need > free:
        raise OutputError(
            f"{what} needs {human_bytes(need)} on {probe} and only {human_bytes(free)} is free; "
            "free some space or write somewhere else"
        )


def reserve(path: str | os.PathLike, nbytes: int) -> None:
    """Allocate ``nbytes`` of real disk blocks for the file ``path`` (which must exist).

    Memory-mapped files are sparse: writing into one on a full disk kills the process
    with SIGBUS. With the blocks reserved first, a full disk raises here instead
    (``os.posix_fallocate``; where the system lacks it, the file is written with zeros).
    """
    path = Path(path)
    try:
        with open(path, "rb+") as fh:
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fh.fileno(), 0, int(nbytes))
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                        raise
            size = os.fstat(fh.fileno()).st_size
            fh.seek(0, os.SEEK_END)
            block = b"\0" * (1 << 20)
            # only the sparse tail needs writing; existing bytes (headers) are kept
            remaining = int(nbytes) - size
            while remaining > 0:
                fh.write(block[: min(len(block), remaining)])
                remaining -= len(block)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _as_output_error(exc, path) from exc


def release_pages(out, z0: int, z1: int) -> None:
    """Drop the pages of ``out[z0:z1]`` from the resident set when ``out`` is a shared file memmap.

    For a shared mapping the written data stay in the page cache and reach the file;
    only this process's page-table entries go, so RSS stays bounded on huge outputs.
    Best effort: anything unexpected (not a memmap, private mapping, no madvise) is a
    no-op.
    """
    mm = getattr(out, "_mmap", None)
    if not isinstance(out, np.memmap) or mm is None or getattr(out, "mode", "") not in ("r+", "w+"):
        return
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        start_addr = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        rows = out[int(z0) : int(z1)]
        lo = rows.ctypes.data - start_addr
        hi = lo + rows.nbytes
        page = mmap.PAGESIZE
        lo = (lo // page) * page
        hi = min(-(-hi // page) * page, len(mm))
        if 0 <= lo < hi:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, TypeError, BufferError):
        return
