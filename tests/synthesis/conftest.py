"""Fixtures shared by the synthesis tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # The inputs here are tiny; intra-op threads only add scheduling stalls
    # on a shared machine. Restored afterwards for the rest of the session.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
