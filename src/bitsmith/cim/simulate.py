"""The crossbar simulator: a graph run node by node, its mapped Conv2d / Linear layers computed
the crossbar way, every other node by the IR's reference interpreter.

A mapped layer (docs/cim.md): the input codes are shifted to unsigned u = x − q_min and fed one
bit per step, LSB first; every sub-array's columns sum (input bit × conductance) over its rows; an
ADC per column converts each sum (or column − reference); the integer codes are shifted and added
over slices, sub-arrays and input bits in int64; the digital correction (q_min − z_x)·Σw and the
bias complete the IR's accumulator Σ (x − z_x)·w + b. With ideal devices and an ideal ADC every
step is exact, so the result equals the integer engine element by element.

Vectorised (issue 15, point 4): the rows of all sub-arrays are one batched matmul per input bit
and chunk of pixels, the weight slices and the reference columns are extra columns of that
matmul, so nothing is masked and the reference term costs one column per slice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
import torch.nn.functional as F

from bitsmith.cim import kernels
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
        return_all: bool = False, check_overflow: bool = True, recorders: dict | None = None):
    """Run `graph` on float images `x` with its mapped layers on crossbars: the output codes
    (int64), or with `return_all` every tensor. `layers` (from `map_graph(graph, config)`) may be
    passed to reuse one programming of the devices across calls; by default it is made here.

    Accumulators of unmapped layers are width-checked as by the reference interpreter; those of
    mapped layers only when `config.exact` (a noisy crossbar may leave the declared width, and the
    following Requant saturates as the hardware would). `recorders` ({layer name: recorder}) is
    `calibrate`'s hook."""
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
                y = crossbar_layer(graph, layers[node.name], ins[0], config, noise,
                                   (recorders or {}).get(node.name))
                checked = config.exact
            else:
                y = REFERENCE.lookup(node)(graph, node, ins, ieee)
                checked = node.op in ACCUMULATING_OPS
            if check_overflow and checked:
                check_width(y, graph.tensors[node.output], node)
            values[node.output] = y
    return values if return_all else values[graph.outputs[0]]


def calibrate(graph: IntegerGraph, batches, config: CIMConfig, layers: dict[str, MappedLayer]) -> None:
    """Static ADC ranges for `config.adc_range == "calibrated"`, stored in each mapped layer: the
    min / max of every conversion (per layer, input bit, sub-array, slice; column and reference
    apart for dummy="separate") over the calibration `batches` of float images, each batch run
    with per-call ranges — what a chip would measure on its own devices with training images."""
    if config.adc_bits is None:
        raise ConfigError("an ideal ADC (adc_bits None) has no range to calibrate")
    per_call = replace(config, adc_range="per-call")
    found: dict[str, list] = {name: [] for name in layers}
    recorders = {name: (lambda bit, r, name=name: record(found[name], bit, r)) for name in layers}
    seen = 0
    for x in batches:
        seen += len(x)
        run(graph, x, per_call, layers=layers, recorders=recorders, check_overflow=False)
    if not seen:
        raise ConfigError("calibrate needs at least one image")
    for name, layer in layers.items():
        layer.adc_ranges = torch.stack(found[name])
        layer.calibrated_with = calibration_key(config)


def record(ranges: list, bit: int, new: torch.Tensor) -> None:
    """Widen the stored [parts, K, S, 2] range of input bit `bit` by a batch's."""
    if bit == len(ranges):
        ranges.append(new.clone())
        return
    ranges[bit][..., 0] = torch.minimum(ranges[bit][..., 0], new[..., 0])
    ranges[bit][..., 1] = torch.maximum(ranges[bit][..., 1], new[..., 1])


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


#: Elements of one chunk of column sums (4 MB of float32): the matmul's output for a chunk of pixels
#: is converted while it is still in the core's cache when the ADC range is known beforehand.
CHUNK_ELEMENTS = 2**20
#: …but never fewer pixels than this: the kernels' loops run along a column's pixels, and shorter
#: runs cost more in loop overhead than the cache saves (a wide layer's matmul is then long anyway).
MIN_CHUNK_PIXELS = 256


def crossbar_layer(graph: IntegerGraph, layer: MappedLayer, x: torch.Tensor, config: CIMConfig,
                   noise: torch.Generator, recorder=None) -> torch.Tensor:
    """The accumulator of one mapped Conv2d / Linear (int64, the IR's shape). `recorder(bit, ranges)`
    (from `calibrate`) receives each input bit's per-call ADC ranges [parts, K, S, 2]."""
    node = layer.node
    qmin, zx, input_bits = input_feed(graph, node)
    k, r, s, columns = layer.conductance.shape
    o = layer.outputs
    if config.dummy == "subtract":
        # column − reference is linear in the inputs: one matmul with the conductance differences
        # (read noise of the two columns is independent: the variances add)
        main, reference = layer.conductance[..., :o], layer.conductance[..., o:]
        g, g_squared, width = main - reference, main * main + reference * reference, o
        parts = [(slice(0, o), -1)]  # (columns, low end of the full-scale range in full-scale units)
    else:
        g, g_squared, width = layer.conductance, layer.conductance ** 2, columns
        parts = [(slice(0, o), 0), (slice(o, columns), 0)]
    # [K, S·C, R]: the matmul's output is then [K, S, C, pixels]
    g = g.permute(0, 2, 3, 1).reshape(k, s * width, r).contiguous()
    g_squared = g_squared.permute(0, 2, 3, 1).reshape(k, s * width, r).contiguous() if config.read_noise else None
    calibrated = calibrated_ranges(layer, config, input_bits)
    full = layer.full_scale.to(torch.float32).reshape(k, 1).expand(k, s)
    groups = layer.plan.groups
    powers = 2 ** (config.cell_bits * torch.arange(s, dtype=torch.int64))
    # the kernel sums a group's codes·2^(c·s) in float64: exact while below 2^53
    largest = max(layer.column_bound, float(layer.full_scale.max()) if layer.full_scale.numel() else 0.0) + 1
    if not config.read_noise and largest * (k // groups) * float(powers.sum()) >= 2**53:
        raise ConfigError(f"layer {node.name!r}: its crossbar sums could exceed 2^53, beyond exact float64 "
                          "shift-and-add")
    rows, out_shape = input_rows(graph, layer, x - qmin, zx - qmin)  # [K, pixels, R] integers
    pixels = rows.shape[1]
    step = max(MIN_CHUNK_PIXELS, CHUNK_ELEMENTS // max(1, k * s * width))
    chunks = [(p, min(pixels, p + step)) for p in range(0, pixels, step)]
    acc = torch.zeros((groups * o, pixels), dtype=torch.int64)
    # read noise: one generator per (bit, chunk), so the draws do not depend on the threads' order
    noise_seed = int(torch.randint(2**62, (1,), generator=noise)) if config.read_noise else 0

    def column_sums(index: int, bit: int) -> torch.Tensor:
        p0, p1 = chunks[index]
        plane = bit_plane(rows[:, p0:p1], bit).transpose(1, 2)  # [K, R, chunk]
        y = torch.bmm(g, plane)  # [K, S·C, chunk]
        if g_squared is not None:
            # Σ_i x_i·G_i·(1 + σ·ε_i) is Gaussian with variance σ²·Σ_i x_i·G_i² (x_i ∈ {0, 1})
            draws = torch.Generator().manual_seed(noise_seed + bit * len(chunks) + index)
            spread = torch.bmm(g_squared, plane).clamp_(min=0).sqrt_()
            y += config.read_noise * spread * torch.randn(y.shape, generator=draws)
        return y.reshape(k, s, width, -1)

    def convert(sums: torch.Tensor, settings: tuple, index: int, bit: int) -> None:
        # the ADC and the shift-and-add in one pass; chunks write disjoint pixels of acc
        kernels.convert_and_add(sums, settings, o, powers, groups, bit, acc, chunks[index][0])

    if config.adc_bits is not None and calibrated is None and config.adc_range == "per-call":
        # a per-call range is the min / max over the whole bit's sums: all chunks first, then convert
        columns_of = [columns_ for columns_, _ in parts]
        for bit in range(input_bits):
            def sums_and_range(index: int, bit=bit):
                y = column_sums(index, bit)
                return y, kernels.column_ranges(y, columns_of)
            done = in_threads(sums_and_range, range(len(chunks)))
            found = torch.stack([r for _, r in done])
            ranges = torch.stack([found[..., 0].amin(dim=0), found[..., 1].amax(dim=0)], dim=-1)
            if recorder is not None:
                recorder(bit, ranges)
            settings = kernels.adc_settings(ranges, config, k, s)
            in_threads(lambda index, bit=bit: convert(done[index][0], settings, index, bit), range(len(chunks)))
    else:
        # the range is known beforehand: each chunk is converted as soon as it is summed
        if config.adc_bits is None:
            fixed = [None] * input_bits
        elif calibrated is not None:
            fixed = [calibrated[bit] for bit in range(input_bits)]
        else:  # full scale: [−full, full] for column − reference, [0, full] for each apart
            fixed = [torch.stack([torch.stack([low * full, full], dim=-1) for _, low in parts])] * input_bits
        settings = [kernels.adc_settings(ranges, config, k, s) for ranges in fixed]

        def chunk(index: int) -> None:
            for bit in range(input_bits):
                convert(column_sums(index, bit), settings[bit], index, bit)
        in_threads(chunk, range(len(chunks)))
    acc = acc.t()  # [pixels, O]
    acc += (qmin - zx) * layer.weight_sum.reshape(1, -1)
    if "bias" in node.params:
        acc += graph.params[node.params["bias"]].to(torch.int64).reshape(1, -1)
    n = x.shape[0]
    if node.op == "Conv2d":
        return acc.reshape(n, -1, groups * o).permute(0, 2, 1).reshape(n, groups * o, *out_shape)
    return acc


def input_feed(graph: IntegerGraph, node) -> tuple[int, int, int]:
    """How a mapped layer's input is fed: (q_min, its zero point, the input bits B): the crossbar
    sees u = x − q_min, one bit per step over B = bit length of q_max − q_min steps."""
    spec = graph.tensors[node.inputs[0]]
    return spec.qmin, spec.zero_point, max(1, (spec.qmax - spec.qmin).bit_length())


def bit_plane(rows: torch.Tensor, bit: int) -> torch.Tensor:
    """Bit `bit` of integer rows, as float32 0 / 1. uint8 rows whose length is a multiple of 4 are
    read four at a time as int32 (one shift and mask for four bytes: the bits do not cross bytes)."""
    if rows.dtype == torch.uint8 and rows.shape[-1] % 4 == 0 and rows.stride(-1) == 1:
        return ((rows.view(torch.int32) >> bit) & 0x01010101).view(torch.uint8).to(torch.float32)
    return ((rows >> bit) & 1).to(torch.float32)


def in_threads(work, items) -> list:
    """`work` over `items` in torch's intra-op thread count of Python threads, each op running on
    one thread: many small chunks then keep every core busy without an OpenMP barrier per
    operation (which costs milliseconds a call on a loaded machine)."""
    items = list(items)
    threads = torch.get_num_threads()
    workers = min(threads, len(items))
    if workers <= 1:
        return [work(i) for i in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(work, items))
    finally:
        torch.set_num_threads(threads)  # the caller's count, not the (possibly fewer) workers


def input_rows(graph: IntegerGraph, layer: MappedLayer, u: torch.Tensor, pad_value: int):
    """The unsigned input u as the crossbar's rows: [K, N·L, R] uint8 (or int16 / int32 for wider
    inputs; L output pixels, rows in the mapping's tap-major order, zero beyond the last real row)
    and the output's spatial shape. Padding holds u = z_x − q_min, the real value 0, as the IR pads
    the centred input with zeros. Each tap's window is a strided view of the padded input (channels
    last, so the window's channels are contiguous), copied once into its rows."""
    node = layer.node
    k, r = layer.conductance.shape[:2]
    largest = max(int(u.max()) if u.numel() else 0, pad_value)
    kind = torch.uint8 if largest < 2**8 else torch.int16 if largest < 2**15 else torch.int32
    if node.op == "Linear":
        rows = torch.zeros((u.shape[0], k * r), dtype=kind)
        rows[:, :u.shape[1]] = u
        return rows.reshape(-1, k, r).permute(1, 0, 2).contiguous(), ()
    a = node.attrs
    kh, kw = graph.weight_codes(node).shape[2:]
    top, left, bottom, right = as_pads(a["padding"])
    u = F.pad(u.to(kind), (left, right, top, bottom), value=pad_value).permute(0, 2, 3, 1).contiguous()
    (sh, sw), (dh, dw) = as_pair(a["stride"]), as_pair(a["dilation"])
    n, height, width, channels = u.shape
    oh = (height - dh * (kh - 1) - 1) // sh + 1
    ow = (width - dw * (kw - 1) - 1) // sw + 1
    groups = layer.plan.groups
    c, per_group = channels // groups, k // groups  # a group's channels and sub-arrays
    rows = torch.zeros((k, n, oh, ow, r), dtype=kind)
    for tap in range(kh * kw):
        i, j = divmod(tap, kw)
        window = u[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]  # [N, OH, OW, C]
        for group in range(groups):
            start, end = tap * c, (tap + 1) * c  # the tap's rows, cut at sub-array boundaries
            while start < end:
                sub, offset = divmod(start, r)
                stop = min(end, (sub + 1) * r)
                first = group * c + start - tap * c
                rows[group * per_group + sub, ..., offset: offset + stop - start] = window[..., first: first + stop - start]
                start = stop
    return rows.reshape(k, n * oh * ow, r), (oh, ow)


def adc(v: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None, config: CIMConfig) -> torch.Tensor:
    """Column sums [K, S, C, pixels] (float32, units; overwritten) → integer counts of units (as
    float32 integers), with the range [low, high] ([K, S, 1, 1] or broadcastable) of 2^b levels.

    Ideal (adc_bits None, no range): the nearest integer. Otherwise step = (high − low)/(2^b − 1);
    the level index (v − low)/step is rounded or floored and clamped to [0, 2^b − 1], and its value
    low + index·step rounded to the nearest integer count, the ADC's digital output. A step below 1
    resolves every integer, so 16 bits on a 128-row 1-bit sub-array is still exact. Floor adds
    10^-3 of a step first, so that a sum lying exactly on a level is not floored to the one below
    by float rounding. Every operation is a correctly rounded IEEE one, so a value's code depends
    only on it and its range, not on the tensor's layout or chunking."""
    if config.adc_bits is None:
        return v.round_()
    levels = 2**config.adc_bits - 1
    step = (high - low) / levels
    v.sub_(low).div_(torch.where(step > 0, step, torch.ones_like(step)))
    if config.adc_rounding == "round":
        v.round_()
    else:
        v.add_(1e-3).floor_()
    if config.adc_range != "per-call":  # per call every index is in [0, levels] by construction
        v.clamp_(0, levels)
    return v.mul_(step).add_(low).round_()


def conversion_range(chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """min / max of one conversion call — over columns and pixels, per sub-array and slice — of a
    tensor given as chunks [K, S, C, pixels] along the pixels: each ([K, S, 1, 1])."""
    low = torch.stack([c.amin(dim=(2, 3), keepdim=True) for c in chunks]).amin(dim=0)
    high = torch.stack([c.amax(dim=(2, 3), keepdim=True) for c in chunks]).amax(dim=0)
    return low, high


def calibrated_ranges(layer: MappedLayer, config: CIMConfig, input_bits: int) -> torch.Tensor | None:
    """The layer's static ADC ranges [input bits, parts, K, S, 2] when `config` asks for them."""
    if config.adc_range != "calibrated" or config.adc_bits is None:
        return None
    if layer.adc_ranges is None:
        raise ConfigError(f"layer {layer.node.name!r} has no calibrated ADC ranges: calibrate(graph, images, "
                          "config, layers) first (bitsmith.cim.calibrate)")
    if layer.calibrated_with != calibration_key(config):
        raise ConfigError(f"layer {layer.node.name!r} was calibrated with other ADC settings; calibrate again")
    if layer.adc_ranges.shape[0] != input_bits:
        raise ConfigError(f"layer {layer.node.name!r}: its calibration has {layer.adc_ranges.shape[0]} input bits, "
                          f"the graph {input_bits}")
    return layer.adc_ranges


#: The CIMConfig fields a calibration depends on besides the programmed devices.
CALIBRATION_FIELDS = ("adc_bits", "adc_rounding", "dummy", "read_noise")


def calibration_key(config: CIMConfig) -> tuple:
    return tuple(getattr(config, f) for f in CALIBRATION_FIELDS)
