"""Every pruning test on one torch thread (the suite runs on both cores already: tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
