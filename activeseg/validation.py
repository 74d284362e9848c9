"""Validation of image stacks and slice ids at public boundaries (docs/architecture.md §3, §9).

The one implementation of the checks that features, the RF, the network, inference
and scoring apply to their inputs. numpy only: importing it never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from activeseg.errors import ConfigError, StackError

__all__ = ["check_stack", "check_slices"]


def check_stack(image: Any) -> tuple[int, int, int]:
    """Validate a ``(Z, Y, X)`` stack-like and return its shape.

    Parameters
    ----------
    image : anything with a 3D ``shape`` (ndarray, memmap, lazy
        :class:`activeseg.io.Stack`) and an integer, float or bool ``dtype`` (an object
        without ``dtype`` is taken as float32).

    Returns
    -------
    (Z, Y, X) : tuple of int.

    Raises
    ------
    StackError
        No ``shape``; RGB(A) shape ``(Z, Y, X, 3|4)``; a single 2D slice or any other
        number of axes; an empty axis; a dtype that is not integer, float or bool.
    """
    shape = getattr(image, "shape", None)
    if shape is None:
        raise StackError(f"image must be a (Z, Y, X) array or stack, got {type(image).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[-1] in (3, 4):
        raise StackError(f"image has shape {shape}: looks like RGB(A); convert it to grayscale (Z, Y, X)")
    if len(shape) != 3:
        hint = "; a single slice needs a leading axis: image[None]" if len(shape) == 2 else ""
        raise StackError(f"image must be a (Z, Y, X) stack, got shape {shape}{hint}")
    if min(shape) < 1:
        raise StackError(f"image is empty, shape {shape}")
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise StackError(f"image dtype must be integer or float, got {dtype}")
    return shape


def check_slices(slices: Any, n_slices: int) -> np.ndarray:
    """Validate global slice ids against a stack of ``n_slices`` slices.

    Parameters
    ----------
    slices : None (all slices), one integer, or a 1D sequence of integers; order and
        duplicates are kept.
    n_slices : stack depth Z.

    Returns
    -------
    int64 ``(n,)``.

    Raises
    ------
    ConfigError
        Not a 1D sequence of integers, or ids outside ``[0, n_slices - 1]`` (negative
        indices are not allowed: slice ids are global z indices).
    """
    if slices is None:
        return np.arange(n_slices, dtype=np.int64)
    arr = np.asarray(slices)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ConfigError(f"slices must be a 1D sequence of integer slice ids, got {slices!r}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_slices)]
    if bad.size:
        raise ConfigError(
            f"slice ids {bad[:5].tolist()} are outside the stack [0, {n_slices - 1}]; slice ids are global z indices"
        )
    return arr
