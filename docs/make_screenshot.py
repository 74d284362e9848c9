"""Make ``docs/correct.png``: the correction viewer (``activeseg correct``) on a tiny session.

Builds a small synthetic pore-back stack and a session in a temporary folder (init,
bootstrap from two truth slices, query three slices), opens the correction viewer on it,
and saves a screenshot of the whole window. Needs the napari extra and a display; on a
machine without one::

    xvfb-run -a python docs/make_screenshot.py            # writes docs/correct.png
    xvfb-run -a python docs/make_screenshot.py OUT.png
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from activeseg.cli import app
from activeseg.safety import atomic_write_bytes

HERE = Path(__file__).resolve().parent


def _cli(*args) -> None:
    app([str(a) for a in args], standalone_mode=False)


def build_session(folder: Path) -> Path:
    """A queried session on a hard synthetic volume (seconds on a CPU)."""
    _cli("synth", folder / "vol", "--shape", 16, 160, 160, "--difficulty", "hard", "--seed", 4)
    (folder / "config.toml").write_text("[session]\nexport_radius = 2\n[rf]\nn_estimators = 20\n")
    session = folder / "session"
    _cli("init", session, "--image", folder / "vol" / "image.tif", "--config", folder / "config.toml")
    _cli("bootstrap", session, "--slices", "3,12")
    _cli("query", session, "-n", 3, "--strategy", "entropy")
    return session


def screenshot(session: Path, out: Path, *, size: tuple[int, int] = (1280, 720)) -> Path:
    """Open the correction viewer on ``session`` and save the window as a PNG (256 colours)."""
    import napari  # the napari extra
    from qtpy.QtWidgets import QApplication

    from activeseg.napari.correct import open_correction

    viewer = napari.Viewer(title="activeseg correct", show=True)
    try:
        ctl = open_correction(session, viewer, ask=lambda _question: "discard")
        viewer.window.resize(*size)
        viewer.reset_view()
        # a stroke as a person would paint it: a strip of the pre-fill turned to solid (layer value 1)
        data = np.array(ctl.mask_layer.data)
        data[96:104, 20:90] = 1
        ctl.mask_layer.data = data
        ctl.mask_layer.selected_label = 1
        ctl.notify("Ctrl-S saves and imports this slice; N / Shift-N next / previous, K skips")
        QApplication.processEvents()  # lay out the dock before the grab
        shot = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    finally:
        viewer.close()
    buf = io.BytesIO()
    Image.fromarray(shot.astype(np.uint8)).quantize(colors=256).save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(out, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE / "correct.png", help="PNG to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = screenshot(build_session(Path(tmp)), args.out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
