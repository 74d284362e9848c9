"""Whole-stack outputs whose format follows the path: ``.tif``/``.tiff`` or ``.zarr``.

:func:`create_output` returns an :class:`OutputWriter`: fill ``writer.array`` slice by
slice (or block by block), then ``writer.commit()``; ``writer.abort()`` on failure.
Nothing appears under the final name before the commit:

- TIFF: an ImageJ TIFF memmap (:func:`activeseg.io.create_stack`) under a hidden
  temporary name beside the target (``.NAME.tif.tmp``); the commit flushes it and
  moves it into place with ``os.replace``. Only the creating process writes it
  (``worker_target`` is None).
- OME-Zarr: ``NAME.zarr.partial`` (zarr v3, OME-NGFF 0.5, one slice per chunk); workers
  of a cluster write their own z-ranges through :func:`open_output_block` and
  ``worker_target``; the commit writes two pyramid levels (y and x halved each time;
  labels by taking every other pixel, probabilities and images by the 2 x 2 mean) and
  the multiscales metadata (axes z, y, x, with c first for multi-class probabilities;
  unit nanometer; the voxel size as scale), then renames the store to ``NAME.zarr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from activeseg import safety
from activeseg.errors import ConfigError, OutputError
from activeseg.io import zarr_store
from activeseg.io.errors import shape_text
from activeseg.io.metadata import VoxelSizeArg, validate_full_voxel_size
from activeseg.io.writers import check_kind_dtype, check_output_shape, create_stack

logger = logging.getLogger("activeseg.io")  # one logger for the whole package (records named "activeseg.io")

_Kind = Literal["image", "labels", "probabilities"]
TIFF_SUFFIXES = (".tif", ".tiff")
ACCEPTED = "'.tif'/'.tiff' (an ImageJ TIFF) or '.zarr' (an OME-Zarr store)"

is_zarr_path = zarr_store.is_zarr_path
open_output_block = zarr_store.open_output_block


class OutputWriter:
    """An output being written; see :func:`create_output`.

    Attributes
    ----------
    path : the final path (nothing is there until :meth:`commit`).
    array : writable ``(Z, Y, X)`` (or ``(Z, C, Y, X)`` for multi-class probabilities):
        ``array[z] = plane``, ``array[z0:z1] = block``.
    worker_target : a small JSON-able dict a Dask worker passes to
        :func:`open_output_block` to write its own z-range of a zarr output; None for a
        TIFF, which only the creating process writes.
    format : "tiff" or "ome-zarr".
    """

    def __init__(
        self,
        path: Path,
        array: Any,
        *,
        fmt: str,
        kind: str,
        voxel_size: tuple[float, float, float] | None,
        tmp: Path | None = None,
        worker_target: dict | None = None,
    ) -> None:
        self.path = path
        self.array = array
        self.format = fmt
        self.kind = kind
        self.voxel_size = voxel_size
        self.worker_target = worker_target
        self._tmp = tmp
        self._done = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def _check_open(self) -> None:
        if self._done:
            raise OutputError(f"the output {self.path} was already committed or aborted; create it again")

    def commit(self) -> Path:
        """Finish the output and move it to :attr:`path` (replacing one there); returns it."""
        self._check_open()
        try:
            if self.format == "tiff" and self._tmp is not None:
                self.array.flush()
                self.array = None  # drop the map before the move
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(self._tmp, self.path)
                safety.fsync_dir(self.path.parent)
            else:
                self.array = None
                zarr_store.finish_store(self.path, voxel_size=self.voxel_size, kind=self.kind)
        except OSError as exc:
            self.abort()
            if isinstance(exc, OutputError):
                raise
            raise OutputError(safety.os_error_message(exc, self.path)) from exc
        except BaseException:
            self.abort()
            raise
        self._done = True
        logger.info("wrote %s", self.path)
        return self.path

    def abort(self) -> None:
        """Remove what was written (the temporary file or the partial store); idempotent."""
        if self._done:
            return
        self._done = True
        self.array = None
        if self.format == "tiff":
            if self._tmp is not None:
                try:
                    self._tmp.unlink()
                except OSError:
                    pass
        else:
            zarr_store.remove_partial(self.path)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        """Commit when the block ends normally, abort when it raises."""
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return f"OutputWriter({str(self.path)!r}, format={self.format!r}, kind={self.kind!r}, {state})"


def create_output(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    *,
    voxel_size: VoxelSizeArg,
    kind: _Kind | str,
    chunks: Sequence[int] | None = None,
) -> OutputWriter:
    """Start writing a whole-stack output whose format follows the suffix of ``path``.

    Parameters
    ----------
    path : the final output, ``.tif``/``.tiff`` or ``.zarr`` (``.ome.zarr``).
    shape : (Z, Y, X); (Z, C, Y, X) for multi-class probabilities.
    dtype : per ``kind`` as in :func:`activeseg.io.create_stack`: image uint8/uint16/float32,
        labels uint8, probabilities float32.
    voxel_size : (z, y, x) in nm, or None (no scale: unit-less scale 1 in a zarr store).
    kind : "image", "labels" or "probabilities".
    chunks : zarr only, in the order of ``shape``; default ``(1, 512, 512)`` clipped to the
        shape (``(1, C, 512, 512)`` with classes): one slice per chunk, so writers of
        different slices never share a chunk.

    Returns
    -------
    OutputWriter (see its attributes); a context manager that commits on success and
    aborts on an exception.

    Raises
    ------
    OutputError : another suffix, not enough free space, a ``.zarr`` target that exists
        and is not an OME-Zarr store (e.g. a folder of slices), or the output could not be
        created.
    ConfigError : a bad shape, chunks or voxel size; StackError : a dtype the kind does not take.
    """
    target = Path(os.path.expanduser(os.fspath(path)))
    vs = validate_full_voxel_size(voxel_size)
    shp = check_output_shape(shape, kind)
    dt = np.dtype(dtype)
    check_kind_dtype(kind, dt, "create_output dtype")
    name = target.name.lower().rstrip("/")
    if zarr_store.is_zarr_path(target):
        nbytes = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        # level 0 plus the pyramid (1/4 + 1/16), uncompressed: the most it can take
        safety.check_free_space(target.parent, int(nbytes * 1.32), what=f"writing {target}")
        worker = zarr_store.create_store(target, shp, dt, chunks=chunks)
        array = zarr_store.open_output_block(worker)
        logger.info("writing %s %s as OME-Zarr into %s", kind, shape_text(shp), zarr_store.partial_path(target))
        return OutputWriter(target, array, fmt="ome-zarr", kind=kind, voxel_size=vs, worker_target=worker)
    if name.endswith(TIFF_SUFFIXES):
        if chunks is not None:
            raise ConfigError(f"chunks apply to a .zarr output, not to the TIFF {target}; leave chunks out")
        if target.is_dir():
            raise OutputError(f"cannot write {target}: it is a folder; give a file name, e.g. {target / 'out.tif'}")
        # one fixed hidden name beside the target: what a killed export left there is
        # replaced (and so cleared) by the next export to the same name
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            mm = create_stack(tmp, shp, dt, voxel_size=vs, kind=cast(_Kind, kind))  # checked above
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
        return OutputWriter(target, mm, fmt="tiff", kind=kind, voxel_size=vs, tmp=tmp)
    raise OutputError(
        f"cannot write {target}: the output format follows the suffix, and {target.suffix or 'no suffix'!r} is "
        f"neither {ACCEPTED}; name it e.g. {target.with_suffix('.tif').name} or {target.with_suffix('.zarr').name}"
    )
