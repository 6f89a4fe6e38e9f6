"""The reference interpreter: the IntegerGraph's semantics, one function per op, read top to bottom.

Every tensor of the graph is materialised as int64, op by op, as docs/arithmetic.md writes it. A
Conv2d / Linear runs in float32 when its worst-case partial sum is below 2^24, in float64 below
2^53, and in int64 otherwise (docs/arithmetic.md §7, `bitsmith.integer.exactness`): every one of
those is exact, so this is the integer formula, only faster. This is the golden model each back
end is compared with (`run(graph, x, return_all=True)` calls it); the fast path in
`bitsmith.integer.engine` must return the same integers and is tested against it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bitsmith.errors import AccumulatorOverflowError, GraphError
from bitsmith.integer.arithmetic import int_range, partial_sum_bound, quantize_input, requantize
from bitsmith.integer.bounds import check_int64
from bitsmith.integer.exactness import compute_dtype, float32_gemm_is_ieee, gemm_dtype
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import ACCUMULATING_OPS, Emitters, as_pads, as_pair, symmetric_padding

REFERENCE = Emitters("reference interpreter")


def run_reference(g, x, *, check_overflow: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of `g` (int64; the float input as given) for float images `x`.

    Refuses (GraphError naming the layer) a graph some intermediate of which could leave int64
    (`bitsmith.integer.bounds`), before computing anything. An empty batch gives every tensor
    with 0 images."""
    check_int64(g, check_overflow)
    values: dict[str, torch.Tensor] = {g.inputs[0]: as_input(g, x)}
    if values[g.inputs[0]].shape[0] == 0:
        return values | {n.output: torch.empty((0, *g.tensors[n.output].shape), dtype=torch.int64) for n in g.nodes}
    ieee = float32_gemm_is_ieee()
    with torch.no_grad():
        for node in g.nodes:
            y = REFERENCE.lookup(node)(g, node, [values[i] for i in node.inputs], ieee)
            if check_overflow and node.op in ACCUMULATING_OPS:
                check_width(y, g.tensors[node.output], node)
            values[node.output] = y
    return values


def as_input(g: IntegerGraph, x, check_finite: bool = True) -> torch.Tensor:
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
    if check_finite:
        require_finite(x)
    return x


def require_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise GraphError("graph input contains NaN or infinity")


def check_width(y: torch.Tensor, spec: TensorSpec, node: Node) -> None:
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


@REFERENCE.register("QuantizeInput")
def _quantize_input(g, node, ins, ieee):
    s = g.tensors[node.output]
    return quantize_input(ins[0], float(s.scale), s.zero_point, s.qmin, s.qmax)


def _centered(g, node, x: torch.Tensor) -> torch.Tensor:
    zp = g.tensors[node.inputs[0]].zero_point
    return x - zp if zp else x


@REFERENCE.register("Conv2d")
def _conv2d(g, node, ins, ieee):
    a = node.attrs
    w = g.weight_codes(node)
    x = _centered(g, node, ins[0])
    dtype = gemm_dtype(partial_sum_bound(w, g.tensors[node.inputs[0]]), ieee)
    x, padding = explicit_padding(x, a["padding"])
    if dtype == torch.int64:
        acc = conv2d_int64(x, w.to(torch.int64), {**a, "padding": padding})
    else:
        acc = F.conv2d(x.to(dtype), w.to(dtype), None, a["stride"], padding, a["dilation"], a["groups"])
        acc = acc.to(torch.int64)
    if "bias" in node.params:
        acc += g.params[node.params["bias"]].to(torch.int64).reshape(1, -1, 1, 1)
    return acc


def explicit_padding(x: torch.Tensor, padding) -> tuple[torch.Tensor, list[int]]:
    """(x, the padding to pass to conv2d): asymmetric padding is applied here, as zeros of the
    centred input x − z_in (the real value 0), and conv2d then pads nothing."""
    symmetric = symmetric_padding(padding)
    if symmetric is not None:
        return x, symmetric
    top, left, bottom, right = as_pads(padding)
    return F.pad(x, (left, right, top, bottom)), [0, 0]


def conv2d_int64(x: torch.Tensor, w: torch.Tensor, a: dict) -> torch.Tensor:
    """Direct int64 convolution for layers too wide for exact float arithmetic (slow, rare)."""
    x = x.to(torch.int64)
    sh, sw = as_pair(a["stride"])
    ph, pw = as_pair(a["padding"])
    dh, dw = as_pair(a["dilation"])
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


def window_sum_int64(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Window sums in int64 for sums too wide for float64 (never in practice)."""
    return window_reduce_int64(x, kernel, stride, torch.add)


def window_reduce_int64(x: torch.Tensor, kernel, stride, combine) -> torch.Tensor:
    """`combine` (add, maximum) over every window (no padding), in int64: exact at any magnitude."""
    (kh, kw), (sh, sw) = as_pair(kernel), as_pair(stride)
    x = x.to(torch.int64)
    oh = (x.shape[-2] - kh) // sh + 1
    ow = (x.shape[-1] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = x[..., i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw]
            out = window.clone() if out is None else combine(out, window)
    return out


@REFERENCE.register("Linear")
def _linear(g, node, ins, ieee):
    w = g.weight_codes(node)
    x = _centered(g, node, ins[0])
    dtype = gemm_dtype(partial_sum_bound(w, g.tensors[node.inputs[0]]), ieee)
    acc = (x.to(dtype) @ w.to(dtype).t()).to(torch.int64)
    if "bias" in node.params:
        acc += g.params[node.params["bias"]].to(torch.int64)
    return acc


@REFERENCE.register("Requant")
def _requant(g, node, ins, ieee):
    out = g.tensors[node.output]
    acc = _centered(g, node, ins[0])
    m = g.params[node.params["multiplier"]].to(torch.int64)
    s = g.params[node.params["shift"]].to(torch.int64)
    return requantize(acc, m, s, out.zero_point, node.attrs["clamp_min"], node.attrs["clamp_max"])


def _magnitude(x: torch.Tensor) -> int:
    return int(x.abs().max()) if x.numel() else 0


@REFERENCE.register("MaxPool2d")
def _maxpool(g, node, ins, ieee):
    # Integers below 2^24 (2^53) are exact in float32 (float64), where max-pooling is fast; wider
    # values (an unchecked accumulator) take the window maximum in int64.
    x = ins[0]
    dtype = compute_dtype(_magnitude(x) + 1)
    if dtype == torch.int64:
        return window_reduce_int64(x, node.attrs["kernel"], node.attrs["stride"], torch.maximum)
    return F.max_pool2d(x.to(dtype), node.attrs["kernel"], node.attrs["stride"]).to(torch.int64)


@REFERENCE.register("AvgPool2d")
def _avgpool(g, node, ins, ieee):
    """The window *sum* of (code − zero_point); the 1/N lives in the following Requant."""
    x = _centered(g, node, ins[0])
    kh, kw = as_pair(node.attrs["kernel"])
    dtype = compute_dtype(kh * kw * _magnitude(x) + 1)  # every partial sum is exact in it
    if dtype == torch.int64:
        return window_sum_int64(x, (kh, kw), node.attrs["stride"])
    s = F.avg_pool2d(x.to(dtype), (kh, kw), node.attrs["stride"], divisor_override=1)
    return s.to(torch.int64)


@REFERENCE.register("Flatten")
def _flatten(g, node, ins, ieee):
    return ins[0].flatten(1)


@REFERENCE.register("Reorg")
def _reorg(g, node, ins, ieee):
    return F.pixel_unshuffle(ins[0], node.attrs["stride"])


@REFERENCE.register("Concat")
def _concat(g, node, ins, ieee):
    return torch.cat(ins, dim=1)


@REFERENCE.register("Add")
def _add(g, node, ins, ieee):
    """(a − z_a)·m[0] + (b − z_b)·m[1] in int64 (the int64 proof bounds it); a Requant follows."""
    m = g.params[node.params["multiplier"]].to(torch.int64).tolist()
    terms = [(x - g.tensors[name].zero_point) * mi for x, name, mi in zip(ins, node.inputs, m)]
    return terms[0] + terms[1]
