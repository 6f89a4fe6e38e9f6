"""The integer engine against a slow, independent int64 reference written from docs/arithmetic.md.

The reference below uses plain numpy integer arithmetic (no torch, no floating point except the
float32 input division the spec prescribes) and reads only graph.json-level facts: node ops,
attributes, tensor specs and the stored integer parameters.
"""

import numpy as np
import pytest
import torch

from bitsmith.quant import lower
from bitsmith.models import MODEL_NAMES, build_model
from bitsmith.quant import QuantConfig, quantize
from bitsmith.integer import engine

# -- the reference, straight from docs/arithmetic.md ----------------------------------------


def ref_quantize_input(x, spec):
    q = np.rint(x.astype(np.float32) / np.float32(spec.scale)).astype(np.int64)  # rint: half to even
    return np.clip(q + spec.zero_point, spec.qmin, spec.qmax)


def ref_conv(v, w, b, stride, padding, dilation, groups):
    n, c, h, wd = v.shape
    o, cg, kh, kw = w.shape
    v = np.pad(v, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))  # zero = real 0 after centring
    oh = (v.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (v.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    og = o // groups
    for g in range(groups):
        xs = v[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dilation[1]: j * dilation[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, g * og:(g + 1) * og] += np.tensordot(patch, ws[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def ref_requant(v, m, s, zp, lo, hi):
    if m.size > 1:
        m = m.reshape((1, -1) + (1,) * (v.ndim - 2))
        s = s.reshape((1, -1) + (1,) * (v.ndim - 2))
    rounding = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.clip(zp + np.right_shift(v * m + rounding, s), lo, hi)


def ref_windows(v, k, stride):
    n, c, h, w = v.shape
    oh, ow = (h - k[0]) // stride[0] + 1, (w - k[1]) // stride[1] + 1
    win = np.empty((n, c, oh, ow, k[0] * k[1]), dtype=np.int64)
    for i in range(k[0]):
        for j in range(k[1]):
            win[..., i * k[1] + j] = v[:, :, i: i + stride[0] * (oh - 1) + 1: stride[0], j: j + stride[1] * (ow - 1) + 1: stride[1]]
    return win


def ref_reorg(v, r):
    n, c, h, w = v.shape
    out = np.empty((n, c * r * r, h // r, w // r), dtype=np.int64)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, ch * r * r + i * r + j] = v[:, ch, i::r, j::r]
    return out


def reference_run(g, x):
    """Every tensor of the graph, computed the slow way."""
    vals = {g.inputs[0]: x.numpy()}
    P = {k: t.numpy().astype(np.int64) for k, t in g.params.items()}
    for node in g.nodes:
        a = node.attrs
        ins = [vals[i] for i in node.inputs]
        in_specs = [g.tensors[i] for i in node.inputs]
        out = g.tensors[node.output]
        centred = ins[0] - in_specs[0].zero_point if in_specs[0].dtype == "int" else None
        if node.op == "QuantizeInput":
            y = ref_quantize_input(ins[0], out)
        elif node.op == "Conv2d":
            b = P[node.params["bias"]] if "bias" in node.params else None
            y = ref_conv(centred, g.weight_codes(node).numpy().astype(np.int64), b, a["stride"], a["padding"], a["dilation"], a["groups"])
        elif node.op == "Linear":
            y = centred @ g.weight_codes(node).numpy().astype(np.int64).T
            if "bias" in node.params:
                y = y + P[node.params["bias"]]
        elif node.op == "Requant":
            y = ref_requant(centred, P[node.params["multiplier"]], P[node.params["shift"]], out.zero_point,
                            a["clamp_min"], a["clamp_max"])
        elif node.op == "MaxPool2d":
            y = ref_windows(ins[0], a["kernel"], a["stride"]).max(axis=-1)
        elif node.op == "AvgPool2d":
            y = ref_windows(centred, a["kernel"], a["stride"]).sum(axis=-1)
        elif node.op == "Flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif node.op == "Reorg":
            y = ref_reorg(ins[0], a["stride"])
        elif node.op == "Concat":
            y = np.concatenate(ins, axis=1)
        else:
            raise AssertionError(f"reference has no rule for {node.op}")
        vals[node.output] = y
    return vals


# -- the comparison -------------------------------------------------------------------------


def randomised(model):
    """Random BN statistics so that folding is exercised with non-trivial values."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
    return model.eval()


def quantized_graph(name, config=QuantConfig(), **kwargs):
    torch.manual_seed(0)
    model = randomised(build_model(name, **kwargs))
    shape = model.input_shape
    calib = [torch.randn(4, *shape) for _ in range(2)]
    return lower(quantize(model, calib, config)), shape


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
