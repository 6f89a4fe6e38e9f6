"""The crossbar simulator: a graph run node by node, its mapped Conv2d / Linear layers computed
the crossbar way, every other node by the IR's reference interpreter.

A mapped layer (docs/cim.md): the input codes are shifted to unsigned u = x − q_min and fed one
bit per step, LSB first; every sub-array's columns sum (input bit × conductance) over its rows; an
ADC per column converts each sum (or column − reference); the integer codes are shifted and added
over slices, sub-arrays and input bits in int64; the digital correction (q_min − z_x)·Σw and the
bias complete the IR's accumulator Σ (x − z_x)·w + b. With ideal devices and an ideal ADC every
step is exact, so the result equals the integer engine element by element.

Vectorised (issue 15, point 4): the rows of all sub-arrays are one batched matmul per input bit,
the weight slices and the reference columns are extra columns of that matmul, so nothing is
masked and the reference term costs one column per slice."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsmith.cim.config import CIMConfig
from bitsmith.cim.mapping import PROGRAMMING_FIELDS, MappedLayer, map_graph, programming_key
from bitsmith.errors import ConfigError
from bitsmith.integer.bounds import check_int64
from bitsmith.integer.exactness import float32_gemm_is_ieee
from bitsmith.integer.graph import IntegerGraph
from bitsmith.integer.ops import ACCUMULATING_OPS, as_pads, as_pair
from bitsmith.integer.reference import REFERENCE, as_input, check_width

#: Offset of the read-noise generator's seed from the device generators' (docs/cim.md).
READ_NOISE_STREAM = 999_983


def run(graph: IntegerGraph, x, config: CIMConfig, *, layers: dict[str, MappedLayer] | None = None,
        return_all: bool = False, check_overflow: bool = True):
    """Run `graph` on float images `x` with its mapped layers on crossbars: the output codes
    (int64), or with `return_all` every tensor. `layers` (from `map_graph(graph, config)`) may be
    passed to reuse one programming of the devices across calls; by default it is made here.

    Accumulators of unmapped layers are width-checked as by the reference interpreter; those of
    mapped layers only when `config.exact` (a noisy crossbar may leave the declared width, and the
    following Requant saturates as the hardware would)."""
    if layers is None:
        layers = map_graph(graph, config)
    check_layers(graph, layers, config)
    check_int64(graph, check_overflow)
    values: dict[str, torch.Tensor] = {graph.inputs[0]: as_input(graph, x)}
    if values[graph.inputs[0]].shape[0] == 0:
        empty = {n.output: torch.empty((0, *graph.tensors[n.output].shape), dtype=torch.int64) for n in graph.nodes}
        values |= empty
        return values if return_all else values[graph.outputs[0]]
    ieee = float32_gemm_is_ieee()
    noise = torch.Generator().manual_seed(config.seed * 1_000_003 + READ_NOISE_STREAM)
    with torch.no_grad():
        for node in graph.nodes:
            ins = [values[i] for i in node.inputs]
            if node.name in layers:
                y = crossbar_layer(graph, layers[node.name], ins[0], config, noise)
                checked = config.exact
            else:
                y = REFERENCE.lookup(node)(graph, node, ins, ieee)
                checked = node.op in ACCUMULATING_OPS
            if check_overflow and checked:
                check_width(y, graph.tensors[node.output], node)
            values[node.output] = y
    return values if return_all else values[graph.outputs[0]]


def check_layers(graph: IntegerGraph, layers: dict[str, MappedLayer], config: CIMConfig) -> None:
    """Refuse layers programmed for another graph or with other device settings than `config`."""
    nodes = {n.name: n for n in graph.nodes}
    for name, layer in layers.items():
        if nodes.get(name) != layer.node:
            raise ConfigError(f"mapped layer {name!r} is not a node of this graph (map_graph it for this graph)")
        if layer.programmed != programming_key(config):
            changed = [f for f, a, b in zip(PROGRAMMING_FIELDS, layer.programmed, programming_key(config)) if a != b]
            raise ConfigError(f"mapped layer {name!r} was programmed with other {', '.join(changed)} than this "
                              "CIMConfig; map_graph(graph, config) again")


def crossbar_layer(graph: IntegerGraph, layer: MappedLayer, x: torch.Tensor, config: CIMConfig,
                   noise: torch.Generator) -> torch.Tensor:
    """The accumulator of one mapped Conv2d / Linear (int64, the IR's shape)."""
    node = layer.node
    spec = graph.tensors[node.inputs[0]]
    qmin, zx = spec.qmin, spec.zero_point
    input_bits = max(1, (spec.qmax - qmin).bit_length())
    rows_in, out_shape = input_rows(graph, layer, x - qmin, zx - qmin)  # [K, N·L, R] int16 / int32
    k, r, s, columns = layer.conductance.shape
    o = layer.outputs
    if config.dummy == "subtract":
        # column − reference is linear in the inputs: one matmul with the conductance differences
        # (read noise of the two columns is independent: the variances add)
        main, reference = layer.conductance[..., :o], layer.conductance[..., o:]
        g, g_squared, width = main - reference, main * main + reference * reference, o
    else:
        g, g_squared, width = layer.conductance, layer.conductance ** 2, columns
    g = g.reshape(k, r, s * width)
    g_squared = g_squared.reshape(k, r, s * width) if config.read_noise else None
    shifts = 2.0 ** (config.cell_bits * torch.arange(s)).reshape(1, 1, s, 1)
    full = (layer.active_rows * (2**config.cell_bits - 1)).to(torch.float32).reshape(k, 1, 1, 1)
    acc = torch.zeros((rows_in.shape[1], o), dtype=torch.int64)
    for bit in range(input_bits):
        plane = ((rows_in >> bit) & 1).to(torch.float32)
        y = torch.bmm(plane, g)
        if g_squared is not None:
            # Σ_i x_i·G_i·(1 + σ·ε_i) is Gaussian with variance σ²·Σ_i x_i·G_i² (x_i ∈ {0, 1})
            spread = torch.bmm(plane, g_squared).clamp_(min=0).sqrt_()
            y += config.read_noise * spread * torch.randn(y.shape, generator=noise)
        y = y.reshape(k, -1, s, width)
        if config.dummy == "subtract":
            codes = adc(y, -full, full, config)
        else:  # the two conversions overwrite disjoint columns of y
            codes = adc(y[..., :o], 0 * full, full, config) - adc(y[..., o:], 0 * full, full, config)
        acc += shift_add(codes, shifts) << bit
    acc += (qmin - zx) * layer.weight_sum.reshape(1, -1)
    if "bias" in node.params:
        acc += graph.params[node.params["bias"]].to(torch.int64).reshape(1, -1)
    n = x.shape[0]
    if node.op == "Conv2d":
        return acc.reshape(n, -1, layer.outputs).permute(0, 2, 1).reshape(n, layer.outputs, *out_shape)
    return acc


def input_rows(graph: IntegerGraph, layer: MappedLayer, u: torch.Tensor, pad_value: int):
    """The unsigned input u as the crossbar's rows: [K, N·L, R] int16 or int32 (L output pixels,
    rows in the mapping's tap-major order, zero beyond the last real row) and the output's spatial
    shape. Padding holds u = z_x − q_min, the real value 0, as the IR pads the centred input with
    zeros. Each tap's window is a strided view of the padded input, copied once into its rows."""
    node = layer.node
    k, r = layer.conductance.shape[:2]
    kind = torch.int16 if max(int(u.max()) if u.numel() else 0, pad_value) < 2**15 else torch.int32
    if node.op == "Linear":
        rows = torch.zeros((u.shape[0], k * r), dtype=kind)
        rows[:, :u.shape[1]] = u
        return rows.reshape(-1, k, r).permute(1, 0, 2).contiguous(), ()
    a = node.attrs
    kh, kw = graph.weight_codes(node).shape[2:]
    top, left, bottom, right = as_pads(a["padding"])
    u = F.pad(u.to(kind), (left, right, top, bottom), value=pad_value)
    (sh, sw), (dh, dw) = as_pair(a["stride"]), as_pair(a["dilation"])
    n, c = u.shape[:2]
    oh = (u.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (u.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = torch.zeros((k, n, oh, ow, r), dtype=kind)
    for tap in range(kh * kw):
        i, j = divmod(tap, kw)
        window = u[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
        window = window.permute(0, 2, 3, 1)  # [N, OH, OW, C]
        start, end = tap * c, (tap + 1) * c  # the tap's rows, cut at sub-array boundaries
        while start < end:
            sub, offset = divmod(start, r)
            stop = min(end, (sub + 1) * r)
            rows[sub, ..., offset: offset + stop - start] = window[..., start - tap * c: stop - tap * c]
            start = stop
    return rows.reshape(k, n * oh * ow, r), (oh, ow)


def shift_add(codes: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Σ over sub-arrays and slices of code·2^(c·s): integer-valued float32 codes [K, N·L, S, O] →
    int64 [N·L, O]. Summed in float32 when the largest possible sum stays below 2^24 (exact),
    else in float64 (exact below 2^53, far beyond any crossbar's sums)."""
    if not codes.numel():
        return torch.zeros(codes.shape[1], codes.shape[3], dtype=torch.int64)
    smallest, largest = torch.aminmax(codes)
    bound = max(-float(smallest), float(largest)) * codes.shape[0] * float(shifts.sum())
    if bound >= 2**24:
        codes, shifts = codes.to(torch.float64), shifts.to(torch.float64)
    per_slice = codes.sum(dim=0)  # [N·L, S, O]: contiguous adds over the sub-arrays
    return torch.einsum("nso,s->no", per_slice, shifts.reshape(-1)).to(torch.int64)


def adc(v: torch.Tensor, low: torch.Tensor, high: torch.Tensor, config: CIMConfig) -> torch.Tensor:
    """Column sums [K, N·L, S, C] (float32, level units; overwritten) → integer level counts (as
    float32 integers: every count is below 2^24).

    Ideal (adc_bits None): the nearest integer. Otherwise 2^b levels spread over the range — per
    call: the tensor's min/max per sub-array and slice; full-scale: [low, high] — the level index
    is rounded or floored and clamped, and its value lo + k·step rounded to the nearest integer
    count, the ADC's digital output. A step below 1 resolves every integer, so 16 bits on a
    128-row 1-bit sub-array is still exact. Floor adds 10^-3 of a step first, so that a sum lying
    exactly on a level is not floored to the one below by float rounding."""
    if config.adc_bits is None:
        return v.round_()
    if config.adc_range == "per-call":
        low = v.amin(dim=(1, 3), keepdim=True)
        high = v.amax(dim=(1, 3), keepdim=True)
    levels = 2**config.adc_bits - 1
    step = (high - low) / levels
    v.sub_(low).div_(torch.where(step > 0, step, torch.ones_like(step)))
    if config.adc_rounding == "round":
        v.round_()
    else:
        v.add_(1e-3).floor_()
    return v.clamp_(0, levels).mul_(step).add_(low).round_()
