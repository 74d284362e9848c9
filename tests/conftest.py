"""Shared test fixtures."""

import pytest


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
