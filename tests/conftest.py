"""Shared fixtures: every backend-dependent test runs once per available backend."""

from __future__ import annotations

import numpy as np
import pytest

from mbpo_fast import _backend


def _has_cuda_device() -> bool:
    try:
        import torch
    except ImportError:
        return False
    import mbpo_fast

    return mbpo_fast.has_cuda() and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda_device():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_backend.available())
def backend(request):
    """Runs the test under each available backend ("native", "numba"); yields the ops module."""
    with _backend.use(request.param) as ops:
        yield ops


@pytest.fixture
def rng():
    """A fresh numpy Generator; seeded per test so failures reproduce."""
    return np.random.default_rng(12345)
