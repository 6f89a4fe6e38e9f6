"""The integer engine: the golden model every back end is compared with.

Values travel between nodes as int64 tensors. Convolutions and matrix products run in float32
when the layer's worst-case partial sum is below 2^24 (every integer of that size, and every sum
of them in any order, is exact in float32), in float64 below 2^53, and in int64 otherwise. The
bound is computed from the declared input width and the actual weight codes (see
docs/arithmetic.md, "Exact evaluation"). Accumulators are checked against their declared width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bitsmith.errors import AccumulatorOverflowError, GraphError
from bitsmith.integer.arithmetic import int_range, quantize_input, requantize
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53


def partial_sum_bound(weight: torch.Tensor, x_spec: TensorSpec) -> int:
    """Largest |partial sum| a Conv/Linear output can reach: max over outputs of Σ|w|·max|x − zp|.

    The bias is added afterwards in int64, so it does not enter the bound.
    """
    x_max = max(x_spec.qmax - x_spec.zero_point, x_spec.zero_point - x_spec.qmin)
    per_output = weight.to(torch.int64).abs().reshape(weight.shape[0], -1).sum(dim=1)
    return int(per_output.max()) * x_max if per_output.numel() else 0


def compute_dtype(bound: int) -> torch.dtype:
    if bound < FLOAT32_EXACT:
        return torch.float32
    if bound < FLOAT64_EXACT:
        return torch.float64
    return torch.int64


def run_graph(g: IntegerGraph, x, *, return_all: bool = False, check_overflow: bool = True):
    x = _as_input(g, x)
    values: dict[str, torch.Tensor] = {g.inputs[0]: x}
    for node in g.nodes:
        ins = [values[i] for i in node.inputs]
        out_spec = g.tensors[node.output]
        y = _EXECUTE[node.op](g, node, ins)
        if check_overflow and out_spec.bits < 64 and node.op in ("Conv2d", "Linear", "AvgPool2d"):
            _check_width(y, out_spec, node)
        values[node.output] = y
    return values if return_all else values[g.outputs[0]]


def _as_input(g: IntegerGraph, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise GraphError(f"graph input must be a tensor or numpy array, got {type(x).__name__}")
    shape = tuple(g.input_spec.shape)
    if x.dim() == len(shape):
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != shape:
        raise GraphError(f"input of shape {list(x.shape)} does not fit the graph input [N, {', '.join(map(str, shape))}]")
    if not x.is_floating_point():
        raise GraphError(f"graph input must be float images (what the float model takes), got {x.dtype}")
    if not torch.isfinite(x).all():
        raise GraphError("graph input contains NaN or infinity")
    return x


def _check_width(y: torch.Tensor, spec: TensorSpec, node: Node) -> None:
    lo, hi = int_range(spec.bits, spec.signed)
    if y.numel() == 0:
        return
    ymin, ymax = int(y.min()), int(y.max())
    if ymin < lo or ymax > hi:
        bad = ymax if ymax > hi else ymin
        raise AccumulatorOverflowError(
            f"layer {node.name!r} ({node.op}): value {bad} does not fit its declared {spec.bits}-bit "
            f"accumulator [{lo}, {hi}]; use fewer weight/activation bits, a wider accumulator, or smaller inputs"
        )


# -- ops ----------------------------------------------------------------------------------

def _quantize_input(g: IntegerGraph, node: Node, ins):
    s = g.tensors[node.output]
    return quantize_input(ins[0], float(s.scale), s.zero_point, s.qmin, s.qmax)


def _centered(g: IntegerGraph, node: Node, x: torch.Tensor) -> torch.Tensor:
    zp = g.tensors[node.inputs[0]].zero_point
    return x - zp if zp else x


def _conv2d(g: IntegerGraph, node: Node, ins):
    a = node.attrs
    w = g.params[node.params["weight"]]
    x = _centered(g, node, ins[0])
    dtype = _compute_dtype(g, node)
    if dtype == torch.int64:
        acc = _conv2d_int64(x, w.to(torch.int64), a)
    else:
        acc = F.conv2d(x.to(dtype), w.to(dtype), None, a["stride"], a["padding"], a["dilation"], a["groups"])
        acc = acc.to(torch.int64)
    if "bias" in node.params:
        acc += g.params[node.params["bias"]].to(torch.int64).reshape(1, -1, 1, 1)
    return acc


def _compute_dtype(g: IntegerGraph, node: Node) -> torch.dtype:
    # Cached on the graph: the bound depends only on the weights and the declared input width.
    cache = g.__dict__.setdefault("_compute_dtypes", {})
    if node.name not in cache:
        w = g.params[node.params["weight"]]
        cache[node.name] = compute_dtype(partial_sum_bound(w, g.tensors[node.inputs[0]]))
    return cache[node.name]


def _conv2d_int64(x: torch.Tensor, w: torch.Tensor, a: dict) -> torch.Tensor:
    """Direct int64 convolution for layers too wide for exact float arithmetic (slow, rare)."""
    sh, sw = _pair(a["stride"])
    ph, pw = _pair(a["padding"])
    dh, dw = _pair(a["dilation"])
    groups = a["groups"]
    x = F.pad(x, (pw, pw, ph, ph))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    out = torch.zeros((n, o, oh, ow), dtype=torch.int64)
    og = o // groups
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            for gi in range(groups):
                xs = patch[:, gi * cg : (gi + 1) * cg]
                ws = w[gi * og : (gi + 1) * og, :, i, j]
                out[:, gi * og : (gi + 1) * og] += torch.einsum("nchw,oc->nohw", xs, ws)
    return out


def _linear(g: IntegerGraph, node: Node, ins):
    w = g.params[node.params["weight"]]
    x = _centered(g, node, ins[0])
    dtype = _compute_dtype(g, node)
    acc = (x.to(dtype) @ w.to(dtype).t()).to(torch.int64)
    if "bias" in node.params:
        acc += g.params[node.params["bias"]].to(torch.int64)
    return acc


def _requant(g: IntegerGraph, node: Node, ins):
    out = g.tensors[node.output]
    acc = _centered(g, node, ins[0])
    m = g.params[node.params["multiplier"]].to(torch.int64)
    s = g.params[node.params["shift"]].to(torch.int64)
    return requantize(acc, m, s, out.zero_point, node.attrs["clamp_min"], node.attrs["clamp_max"])


def _maxpool(g: IntegerGraph, node: Node, ins):
    # Codes below 2^24 are exact in float32, where max-pooling is fast; wider ones stay in float64.
    x = ins[0]
    dtype = torch.float32 if g.tensors[node.inputs[0]].bits <= 24 else torch.float64
    return F.max_pool2d(x.to(dtype), node.attrs["kernel"], node.attrs["stride"]).to(torch.int64)


def _avgpool(g: IntegerGraph, node: Node, ins):
    """The window *sum* of (code − zero_point); the 1/N lives in the following Requant."""
    x = _centered(g, node, ins[0])
    kh, kw = _pair(node.attrs["kernel"])
    bits = g.tensors[node.inputs[0]].bits + math.ceil(math.log2(kh * kw))
    dtype = torch.float32 if bits < 24 else torch.float64
    s = F.avg_pool2d(x.to(dtype), (kh, kw), node.attrs["stride"], divisor_override=1)
    return s.to(torch.int64)


def _flatten(g, node, ins):
    return ins[0].flatten(1)


def _reorg(g, node, ins):
    return F.pixel_unshuffle(ins[0], node.attrs["stride"])


def _concat(g, node, ins):
    return torch.cat(ins, dim=1)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


_EXECUTE = {
    "QuantizeInput": _quantize_input,
    "Conv2d": _conv2d,
    "Linear": _linear,
    "Requant": _requant,
    "MaxPool2d": _maxpool,
    "AvgPool2d": _avgpool,
    "Flatten": _flatten,
    "Reorg": _reorg,
    "Concat": _concat,
}
