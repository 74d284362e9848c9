"""What ``activeseg info`` reports about a stack (and a label file): a JSON-ready summary."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import numpy as np

from activeseg.io.labels import read_labels
from activeseg.io.stack import Stack


def stack_summary(stack: Stack, *, n_sample: int = 16) -> dict:
    """Shape, dtype, voxel size and its source, size on disk, memory-mapped or not, and
    intensity percentiles from up to ``n_sample`` evenly spaced slices (every 7th pixel)."""
    nz = stack.shape[0]
    sample = sorted(set(np.linspace(0, nz - 1, min(nz, n_sample)).round().astype(int).tolist()))
    values = np.concatenate([np.asarray(stack[z], dtype=np.float32).ravel()[::7] for z in sample])
    pct = np.percentile(values, [0.1, 1, 50, 99, 99.9])
    return {
        "path": str(stack.path),
        "format": stack.format,
        "shape": list(stack.shape),
        "dtype": str(stack.dtype),
        "voxel_size_nm": None if stack.voxel_size is None else list(stack.voxel_size),
        "voxel_size_partial_nm": list(stack.voxel_size_partial),
        "voxel_size_source": stack.voxel_size_source,
        "size_on_disk_bytes": int(stack.file_size),
        "memmapped": bool(stack.memmapped),
        "infobar_rows_cropped": int(stack.infobar_rows),
        "intensity_percentiles": {
            "p0.1": float(pct[0]), "p1": float(pct[1]), "p50": float(pct[2]), "p99": float(pct[3]), "p99.9": float(pct[4]),
        },
        "intensity_sample_slices": len(sample),
    }


def label_summary(
    path: str | Path, shape: tuple[int, int, int], *, kind: str = "partial", pore_value: int | None = None
) -> dict:
    """Labelled slices and pixels, class fractions and porosity of a label file or folder.

    ``pore_value`` (0 or 255) reads the file as a binary 0/255 mask of that polarity
    (:func:`activeseg.io.read_labels`). Without it, a file that reads as class 0 and
    unlabelled (255) only, the way a 0/255 mask reads as partial labels, gets a one-line
    ``"warning"`` naming ``--pore-value``.
    """
    # kind is text from the command line; read_labels checks it against its choices
    found = read_labels(
        path, shape=shape, kind=cast(Literal["mask", "partial", "scribble"], kind), pore_value=pore_value
    )
    counts = np.zeros(256, np.int64)
    for mask in found.values():
        counts += np.bincount(mask.ravel(), minlength=256)
    labelled = counts[:255].sum()
    out = {
        "path": str(path),
        "labelled_slices": len(found),
        "labelled_pixels": int(labelled),
        "class_fractions": {str(c): float(counts[c] / labelled) for c in range(255) if counts[c]} if labelled else {},
        "porosity": float(counts[1] / labelled) if labelled else None,
    }
    total = int(counts.sum())
    if pore_value is None and kind == "partial" and labelled and counts[255] and labelled == counts[0]:
        out["warning"] = (
            f"{path} reads as class 0 (solid) and {100 * counts[255] / total:.0f} % unlabelled (255) pixels only, "
            "the way a binary 0/255 mask reads as partial labels; if it is such a mask, give --pore-value 255 "
            "(255 = pore) or --pore-value 0 (0 = pore)"
        )
    return out
