"""How the io package recognises a broken file and words its errors.

:data:`READ_ERRORS` lists what tifffile and its codecs raise on corrupt or truncated
files (each reader turns them into a :class:`~activeseg.errors.StackError` naming the
file); :class:`Single2DError` marks one 2D image where a stack was expected (which
:func:`activeseg.io.read_labels` accepts); :func:`shape_text` writes shapes in messages.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import tifffile

from activeseg.errors import StackError

# Errors tifffile / its codecs raise on corrupt or truncated files.
READ_ERRORS: tuple[type[BaseException], ...] = (
    tifffile.TiffFileError,
    ValueError,
    OSError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,  # imagecodecs' DeflateError, ZlibError, ... derive from it
    MemoryError,  # a corrupt header can claim absurd sizes
)


class Single2DError(StackError):
    """A path holds one 2D image where a stack was expected (read_labels accepts it)."""


def shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if s is None else str(int(s)) for s in shape) + ")"
