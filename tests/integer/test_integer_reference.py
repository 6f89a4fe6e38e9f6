"""The integer engine against the slow, independent int64 oracle written from docs/arithmetic.md
(tests/oracle.py): on every zoo model lowered fresh, at other widths, and on every golden graph
(codebooks, zero points, per-channel scales, Reorg and Concat, refused-by-hardware shapes)."""

import numpy as np
import pytest
import torch

from bitsmith.integer import engine
from bitsmith.models import MODEL_NAMES
from bitsmith.quant import QuantConfig
from tests.helpers import GOLDEN, golden
from tests.oracle import reference_run
from tests.quantized import quantized_graph


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_engine_equals_int64_reference_w8a8(name):
    g, shape = quantized_graph(name)
    x = torch.randn(2, *shape) * 1.3  # some inputs beyond the calibrated range: saturation is exercised
    got = engine.run(g, x, return_all=True)
    want = reference_run(g, x)
    assert set(got) == set(want)
    for tensor, value in want.items():
        if g.tensors[tensor].dtype == "float32":
            continue
        np.testing.assert_array_equal(got[tensor].numpy(), value, err_msg=f"{name}: tensor {tensor}")
    # The check must be able to fail: the output is not constant.
    assert len(np.unique(want[g.outputs[0]])) > 1


@pytest.mark.parametrize("config", [
    QuantConfig(weight_bits=4, act_bits=4, per_channel=True),
    QuantConfig(weight_bits=12, act_bits=10, multiplier_bits=16, requantize_output=True),  # float64 path
])
def test_engine_equals_reference_other_widths(config):
    g, shape = quantized_graph("lenet5", config, bias=True)
    x = torch.randn(3, *shape)
    got = engine.run(g, x, return_all=True)
    want = reference_run(g, x)
    for tensor, value in want.items():
        if g.tensors[tensor].dtype == "int":
            np.testing.assert_array_equal(got[tensor].numpy(), value, err_msg=f"tensor {tensor}")


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_engine_equals_int64_reference_on_golden_graphs(name):
    g = golden(name)
    x = torch.randn((3, *g.input_spec.shape), generator=torch.Generator().manual_seed(5)) * 1.5
    got, want = engine.run(g, x, return_all=True), reference_run(g, x)
    assert set(got) == set(want)
    for tensor, value in want.items():
        if g.tensors[tensor].dtype == "int":
            np.testing.assert_array_equal(got[tensor].numpy(), value, err_msg=f"{name}: tensor {tensor}")
    assert torch.equal(engine.run(g, x), got[g.outputs[0]])  # and the fast path
    assert len(np.unique(want[g.outputs[0]])) > 1
