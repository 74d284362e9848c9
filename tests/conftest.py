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
