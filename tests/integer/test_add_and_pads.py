"""The residual Add op and four-sided Conv2d padding (docs/arithmetic.md §3, §5): the fast engine,
the reference interpreter and the independent int64 oracle agree element by element on random
graphs that mix them with every other op; bad Add nodes and paddings are named by the validator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitsmith.errors import GraphError
from bitsmith.integer import engine, load
from bitsmith.integer.bounds import check_int64, layer_bounds
from bitsmith.integer.ops import as_pads, symmetric_padding
from tests.oracle import reference_run
from tests.random_graphs import GraphMaker, random_graph


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_fast_reference_and_oracle_agree(seed):
    g = random_graph(seed)
    x = torch.randn(3, *g.input_spec.shape)
    every = engine.run(g, x, return_all=True)
    assert torch.equal(engine.run(g, x), every[g.outputs[0]])
    oracle = reference_run(g, x)
    for name, value in oracle.items():
        if name != "input":
            assert np.array_equal(every[name].numpy(), value), name


def _residual(clamp="relu", k_scale=1.0):
    gm = GraphMaker(3)
    x = gm.input((4, 6, 6))
    y = gm.conv(x, 4, 3, clamp="relu")
    return gm, x, y


def test_add_is_the_two_scaled_differences_exactly():
    gm, x, y = _residual()
    out = gm.add(y, x, clamp="none")
    g = gm.graph(out)
    add = next(n for n in g.nodes if n.op == "Add")
    images = torch.randn(2, 4, 6, 6)
    v = engine.run(g, images, return_all=True)
    a, b = (v[i] for i in add.inputs)
    m = g.params[add.params["multiplier"]].tolist()
    za, zb = (g.tensors[i].zero_point for i in add.inputs)
    assert torch.equal(v[add.output], (a - za) * m[0] + (b - zb) * m[1])


def test_a_saved_graph_with_add_and_asymmetric_padding_loads_back(tmp_path):
    gm = GraphMaker(5)
    x = gm.input((2, 7, 7))
    y = gm.conv(x, 2, 2, pads=[0, 0, 1, 1])
    g = gm.graph(gm.add(y, x))
    g.save(tmp_path / "g")
    back = load(tmp_path / "g")
    images = torch.randn(3, 2, 7, 7)
    assert torch.equal(engine.run(g, images), engine.run(back, images))
    conv = next(n for n in back.nodes if n.op == "Conv2d")
    assert conv.attrs["padding"] == [0, 0, 1, 1]


def test_padding_forms():
    assert as_pads(1) == (1, 1, 1, 1)
    assert as_pads([1, 2]) == (1, 2, 1, 2)
    assert as_pads([0, 1, 2, 3]) == (0, 1, 2, 3)
    assert symmetric_padding([1, 2, 1, 2]) == [1, 2]
    assert symmetric_padding([0, 0, 1, 1]) is None


def test_asymmetric_padding_is_padding_with_real_zeros():
    """A 2x2 'same' conv pads one row and column after: equal to padding the centred input by hand."""
    gm = GraphMaker(9)
    x = gm.input((1, 5, 5))
    acc = gm.conv(x, 1, 2, pads=[0, 0, 1, 1], requant=False, bias=False)
    g = gm.graph(acc)
    assert g.tensors[acc.name].shape == (1, 5, 5)
    images = torch.randn(1, 1, 5, 5)
    v = engine.run(g, images, return_all=True)
    codes = v["codes"] - g.tensors["codes"].zero_point
    padded = torch.nn.functional.pad(codes, (0, 1, 0, 1))
    w = g.weight_codes(g.nodes[1]).to(torch.int64)
    expected = sum(padded[:, :, i:i + 5, j:j + 5] * w[0, 0, i, j] for i in range(2) for j in range(2))
    assert torch.equal(v[acc.name], expected)


def _bad(change, *fragments):
    gm, x, y = _residual()
    out = gm.add(y, x)
    g = gm.graph(out)
    change(g, next(n for n in g.nodes if n.op == "Add"))
    with pytest.raises(GraphError) as e:
        g.validate()
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_add_inputs_of_different_shapes_are_named():
    gm, x, y = _residual()
    z = gm.conv(x, 3, 3)
    g = gm.graph(gm.add(y, x))
    next(n for n in g.nodes if n.op == "Add").inputs[1] = z.name
    with pytest.raises(GraphError, match=r"Add inputs have shapes \[4, 6, 6\] and \[3, 6, 6\]"):
        g.validate()


def test_add_multiplier_must_be_two_non_negative_values():
    def three(g, add):
        g.params[add.params["multiplier"]] = torch.tensor([1, 2, 3])
    _bad(three, "one value per input")

    def negative(g, add):
        g.params[add.params["multiplier"]] = torch.tensor([-1, 2])
    _bad(negative, "multiplier")


def test_add_needs_per_tensor_inputs():
    def per_channel(g, add):
        spec = g.tensors[add.inputs[0]]
        g.tensors[add.inputs[0]] = type(spec)(**{**spec.__dict__, "scale": [spec.scale] * spec.shape[0]})
    _bad(per_channel, "per-tensor")


def test_the_int64_proof_bounds_add():
    gm, x, y = _residual()
    g = gm.graph(gm.add(y, x))
    add = next(n for n in g.nodes if n.op == "Add")
    bound = next(b for b in layer_bounds(g) if b.node == add.name)
    m = g.params[add.params["multiplier"]].tolist()
    spans = [max(g.tensors[i].qmax - g.tensors[i].zero_point, g.tensors[i].zero_point - g.tensors[i].qmin)
             for i in add.inputs]
    assert bound.bound == spans[0] * m[0] + spans[1] * m[1]
    g.params[add.params["multiplier"]] = torch.tensor([(1 << 31) - 1] * 2)
    check_int64(g)  # still far below 2^63
