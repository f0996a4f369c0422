"""Shared fixtures: tiny generated images and a seed fixture in scikit-learn's style."""

import os

import pytest
import torch
from _helpers import make_tiny_images

torch.set_num_threads(min(2, torch.get_num_threads()))


def _seeds():
    # SKAD_TESTS_GLOBAL_RANDOM_SEED: "all" -> 0..99, "a-b" -> a..b, "n" -> n; default 0-2.
    spec = os.environ.get("SKAD_TESTS_GLOBAL_RANDOM_SEED", "0-2")
    if spec == "all":
        return list(range(100))
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(spec)]


@pytest.fixture(params=_seeds())
def global_random_seed(request):
    """Runs a test once per seed, so that no test leans on one lucky seed."""
    return request.param


@pytest.fixture
def tiny_images():
    return make_tiny_images()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
