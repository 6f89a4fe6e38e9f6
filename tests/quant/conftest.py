"""Fixtures shared by the QAT method tests (test_oaq.py, test_qil.py)."""

import pytest

from bitsmith.runs import load_run
from tests.quantized import tiny_float_run


@pytest.fixture(scope="module")
def fp_model(tmp_path_factory):
    """LeNet-5 after TINY_RUN's one epoch on synthetic images (one per test module)."""
    return load_run(tiny_float_run(tmp_path_factory.mktemp("fp") / "fp")).model
