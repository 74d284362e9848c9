"""The report page: one Markdown file linking the figures and embedding the tables.

The figures come from :mod:`activeseg.plots`, the tables from :mod:`activeseg.tables`;
:func:`write_report_md` only lays them out (headings, relative image links, captions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from activeseg.errors import ConfigError
from activeseg.safety import atomic_write_text

__all__ = ["write_report_md"]


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def _is_image(content: Any) -> bool:
    if isinstance(content, os.PathLike):
        return True
    return (
        isinstance(content, str)
        and "\n" not in content
        and content.strip().lower().endswith(_IMAGE_SUFFIXES)
    )


def write_report_md(
    path: str | Path,
    *,
    title: str,
    sections: Sequence[tuple],
    intro: str | None = None,
) -> Path:
    """Write a one-page Markdown report: headings, images (relative links), tables, captions.

    Parameters
    ----------
    path : output ``.md`` file (written atomically).
    title : page title (``# title``).
    sections : list of ``(heading, content)`` or ``(heading, content, caption)``.
        ``content`` is an image (a :class:`~pathlib.Path`, or a one-line string ending in
        .png/.jpg/.svg/...), linked relative to the report's folder, or Markdown text
        (e.g. :func:`activeseg.tables.paper_table_markdown` output) embedded as is. ``caption`` (optional)
        is written in italics under it.
    intro : optional Markdown paragraph under the title.

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    parts = [f"# {title}\n"]
    if intro:
        parts.append(intro.strip() + "\n")
    for i, sec in enumerate(sections):
        if not isinstance(sec, (tuple, list)) or len(sec) not in (2, 3):
            raise ConfigError(
                f"sections[{i}] must be (heading, content) or (heading, content, caption), got {sec!r:.80}"
            )
        heading, content = sec[0], sec[1]
        caption = sec[2] if len(sec) == 3 else None
        parts.append(f"## {heading}\n")
        if _is_image(content):
            target = Path(content)
            if not target.is_absolute():
                target = Path.cwd() / target
            rel = Path(os.path.relpath(target.resolve(), path.parent.resolve())).as_posix()
            alt = str(caption or heading).replace("]", ")").replace("[", "(").replace("\n", " ")
            parts.append(f"![{alt}]({rel})\n")
        else:
            parts.append(str(content).rstrip() + "\n")
        if caption:
            parts.append(f"*{str(caption).strip()}*\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path
