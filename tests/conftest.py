"""Fixtures shared by the whole suite. Helpers that are plain functions live in tests/helpers.py
(golden graphs, skip markers), the int64 oracle in tests/oracle.py, and graphs quantized fresh (for
front-end tests only) in tests/quantized.py."""

from __future__ import annotations

import pytest
import torch

from tests import helpers


@pytest.fixture(scope="session")
def golden():
    """`golden(name)`: a private copy of the golden graph tests/golden/<name> (loaded once per session)."""
    return helpers.golden



@pytest.fixture
def one_thread():
    """One torch thread: the suite already runs on both cores (-n 2), and small tensors are faster
    so (no thread barriers on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
