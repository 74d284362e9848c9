"""matplotlib set-up and atomic figure files: what every module that draws a figure shares.

Kept apart from :mod:`activeseg.plots` (the study and report figures) so that the core
(the correction previews of :mod:`activeseg.oracle`) can save a figure without depending
on presentation code. matplotlib itself is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

from activeseg.safety import atomic_path

__all__ = ["pyplot", "savefig"]


def pyplot():
    """``matplotlib.pyplot``, on the non-interactive Agg backend unless one was chosen already."""
    import matplotlib  # heavy optional: imported only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after choosing the backend

    return plt


def savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)``, written atomically (:func:`activeseg.safety.atomic_path`).

    matplotlib picks the format from the file suffix, and the temporary file is named
    ``.NAME.*.tmp``, so the format is passed explicitly: the suffix of ``path``, or, for a
    name without one, matplotlib's default (``savefig.format``), whose suffix is then
    appended to the name exactly as ``fig.savefig`` would. Returns the path written.
    """
    import matplotlib  # heavy optional: the caller has drawn a figure, so it is loaded already

    path = Path(path)
    fmt = kwargs.pop("format", None)
    if fmt is None:
        fmt = path.suffix[1:]
        if not fmt:
            fmt = matplotlib.rcParams["savefig.format"]
            path = path.with_name(path.name.rstrip(".") + "." + fmt)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt.lower(), **kwargs)
    return path
