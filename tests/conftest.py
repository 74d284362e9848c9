"""Shared test fixtures."""

import pytest

# A session config small enough for tests of the whole loop on tiny volumes (seconds on
# a CPU): few trees, a shallow network, a few training steps.
TINY_TABLES = {
    "session": {"score_max_slices": 8, "export_radius": 1},
    "rf": {"n_estimators": 4, "max_depth": 6},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]},
    "train": {"steps": 3, "patch_size": 32, "batch_size": 2, "eval_every": 2},
}


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


@pytest.fixture(scope="session")
def tiny_config():
    """``write(path, **tables)``: the tiny session config as a TOML file, with the given
    tables' keys replacing the defaults (``session={"export_radius": 3}``); returns the path."""

    def write(path, **tables):
        merged = {t: {**kv, **tables.get(t, {})} for t, kv in TINY_TABLES.items()}
        text = "\n".join(f"[{t}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in kv.items()) for t, kv in merged.items())
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="module")
def one_torch_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription.

    Modules that train or run networks use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config, items):
    """GUI tests (marked ``gui``) need a display: under ``xvfb-run`` on a headless machine.

    Without one they are skipped with the command to run them, except in CI (``CI`` set),
    where a missing display is an error: there they must never be skipped silently.
    """
    import os

    gui = [it for it in items if it.get_closest_marker("gui")]
    if not gui or _has_display():
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(
            f"{len(gui)} GUI tests need a display and CI is set: run the tests under Xvfb "
            "(xvfb-run -a python -m pytest; .ci/run installs it)"
        )
    skip = pytest.mark.skip(reason="no display: run the GUI tests under Xvfb (xvfb-run -a python -m pytest)")
    for it in gui:
        it.add_marker(skip)
