"""IntegerGraph → accelerator layer program (docs/hardware.md §2, §4, §6).

`compile_graph` walks the graph as steps (`chain.layer_steps`: each Conv2d / Linear / AvgPool2d /
Add fused with its Requant; MaxPool2d, Reorg, Concat and a lone Requant of codes steps of their own;
Flatten free; QuantizeInput on the host), turns each step into a descriptor (`Layer`) and allocates
every map a region of the one activation memory (`allocate`): a map lives from the layer that
writes it to the last layer that reads it. A Concat costs nothing when allocation can place its
inputs side by side in its output region (their producers then write straight into it; CHW order
makes a channel concatenation contiguous); otherwise it is a copy layer. Everything the hardware
cannot do, and every memory that is too small, is an `AcceleratorError` naming the graph node and
the limit, so a design-space sweep can report *why* a configuration does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bitsmith.errors import AcceleratorError
from bitsmith.integer.arithmetic import int_range
from bitsmith.integer.chain import ChainStep, layer_steps
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import Emitters, as_pads, as_pair, weight_format, weight_storage

from .config import (
    ACC_BITS,
    ACC_MAX,
    ACC_MIN,
    CODEBOOK_INDEX_BITS,
    CODEBOOK_SIZE,
    CODEBOOK_VALUE_BITS,
    DESCRIPTOR_FIELD_MAX,
    LANE_MULTIPLIER_BITS,
    LANE_MULTIPLIER_MAX,
    MAX_ACT_BITS,
    MAX_SHIFT,
    MAX_WEIGHT_BITS,
    MULTIPLIER_BITS,
    MULTIPLIER_MAX,
    AccelConfig,
)
from .program import Layer, Program

MIN_WEIGHT_BITS = 2
CODEBOOK_MIN, CODEBOOK_MAX = -(1 << (CODEBOOK_VALUE_BITS - 1)), (1 << (CODEBOOK_VALUE_BITS - 1)) - 1


def compile_graph(graph: IntegerGraph, config: AccelConfig) -> Program:
    """The layer program for `graph` on `config`; raises AcceleratorError if it cannot run there."""
    input_name, steps = layer_steps(graph, EMIT)  # names every unsupported op before any other work
    _check_codes(graph.tensors[input_name], graph.nodes[0].name, "input")
    free = _free_concats(graph, steps)
    layers: list[Layer] = []
    sources: list[list[tuple[str, int, int]]] = []   # per layer: (tensor, first row, end row) its map adds
    reads: list[tuple[str, ...]] = []
    nodes: list[str] = []
    for step in steps:
        if step.node.name in free.concats:
            continue
        emitted = EMIT.lookup(step.node)(graph, step, len(layers))
        if emitted.layer.kind == "conv":
            choose_packing(emitted.layer, d_range(emitted.layer), config)
        _check_limits(emitted.layer, step.node.name, config)
        layers.append(emitted.layer)
        sources.append(emitted.map_sources)
        reads.append(step.inputs)
        nodes.append(step.node.name)
    if layers[-1].name != _unflatten(graph, graph.outputs[0]):
        raise AcceleratorError(f"graph output {graph.outputs[0]!r} is not written by the last layer "
                               f"({nodes[-1]}); the accelerator ends with the layer that writes the output")
    alloc = allocate(graph, input_name, layers, reads, nodes, free, config)
    for layer, read, src in zip(layers, reads, sources):
        layer.in_base = alloc.address[read[0]]
        layer.in2_base = alloc.address[read[1]] if layer.kind == "add" else 0
        layer.out_base = 0 if layer.raw_output else alloc.address[layer.name]
        if layer.channel_map is not None:
            for tensor, first, end in src:
                layer.channel_map[first:end] += alloc.address[tensor]
    # The engine's shape of each layer's tensor (a Linear's is 1-D), so back ends can compare.
    shapes = {layer.name: list(graph.tensors[layer.name].shape) for layer in layers}
    program = Program(config=config, layers=layers, input_name=input_name,
                      metadata={"graph_output": graph.outputs[0], "tensor_shapes": shapes,
                                "activation_memory": alloc.to_json()})
    fit_weight_ring(program)
    return program


# -- one layer per step ---------------------------------------------------------------------

@dataclass
class Emitted:
    layer: Layer
    # A channel map is written relative to its sources: rows [first, end) add the address of `tensor`
    # once the allocation is known.
    map_sources: list[tuple[str, int, int]] = field(default_factory=list)


#: The ops the accelerator computes; QuantizeInput (host), a fused Requant and Flatten (free) are the
#: walk's (chain.STRUCTURAL_OPS). "Requant" here is a lone Requant of codes.
EMIT = Emitters("accelerator compiler")


@EMIT.register("Conv2d", "Linear")
def _emit_conv(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return _conv_layer(graph, step.node, step.requant, index)


@EMIT.register("AvgPool2d")
def _emit_avgpool(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return Emitted(_avgpool_layer(graph, step.node, step.requant, index))


@EMIT.register("MaxPool2d")
def _emit_maxpool(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return Emitted(_maxpool_layer(graph, step.node, index))


@EMIT.register("Add")
def _emit_add(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return Emitted(_add_layer(graph, step.node, step.requant, index))


@EMIT.register("Reorg")
def _emit_reorg(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return _reorg_layer(graph, step, index)


@EMIT.register("Concat")
def _emit_concat(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return _concat_layer(graph, step, index)


@EMIT.register("Requant")
def _emit_requant(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    return Emitted(_lone_requant_layer(graph, step.node, index))


def _chw(spec: TensorSpec) -> tuple[int, int, int]:
    """A tensor shape as (channels, height, width); a feature vector is F×1×1 (CHW = Flatten order)."""
    s = tuple(spec.shape)
    return (s[0], 1, 1) if len(s) == 1 else (s[0], s[1], s[2])


def _io_fields(graph: IntegerGraph, name: str, x: TensorSpec, y: TensorSpec) -> dict:
    _check_codes(x, name, "input")
    (ci, hi, wi), (co, ho, wo) = _chw(x), _chw(y)
    return dict(in_ch=ci, in_h=hi, in_w=wi, out_ch=co, out_h=ho, out_w=wo,
                in_bits=x.bits, in_signed=x.signed, z_in=x.zero_point)


def _requant_fields(graph: IntegerGraph, requant: Node, out_ch: int) -> dict:
    y = graph.tensors[requant.output]
    _check_codes(y, requant.name, "output")
    m = graph.params[requant.params["multiplier"]].to(torch.int64).reshape(-1)
    s = graph.params[requant.params["shift"]].to(torch.int64).reshape(-1)
    if m.numel() and (int(m.min()) < 0 or int(m.max()) > MULTIPLIER_MAX):
        raise AcceleratorError(f"layer {requant.name}: multiplier {int(m.max())} does not fit the "
                               f"{MULTIPLIER_BITS}-bit signed multiplier (max {MULTIPLIER_MAX})")
    if s.numel() and (int(s.min()) < 0 or int(s.max()) > MAX_SHIFT):
        raise AcceleratorError(f"layer {requant.name}: shift {int(s.max())} outside 0..{MAX_SHIFT} "
                               "(the IR's limit, integer.arithmetic.MAX_SHIFT)")
    return dict(name=requant.output, out_bits=y.bits, out_signed=y.signed, z_out=y.zero_point,
                clamp_lo=int(requant.attrs["clamp_min"]), clamp_hi=int(requant.attrs["clamp_max"]),
                multiplier=m.expand(out_ch).numpy().astype(np.int64).copy(),
                shift=s.expand(out_ch).numpy().astype(np.int64).copy())


def _raw_fields(node: Node, out_ch: int) -> dict:
    # No requant: the 32-bit accumulator goes out; the param table still holds an identity (m=1, s=0).
    return dict(name=node.output, raw_output=True, out_bits=ACC_BITS, out_signed=True, z_out=0,
                clamp_lo=ACC_MIN, clamp_hi=ACC_MAX,
                multiplier=np.ones(out_ch, dtype=np.int64), shift=np.zeros(out_ch, dtype=np.int64))


def _same_grid_fields(y: TensorSpec) -> dict:
    """Output fields of a layer that moves codes without changing them (max kinds)."""
    return dict(name=y.name, out_bits=y.bits, out_signed=y.signed, z_out=y.zero_point,
                clamp_lo=y.qmin, clamp_hi=y.qmax)


def _field(node: Node, what: str, value: int) -> None:
    if value > DESCRIPTOR_FIELD_MAX:
        raise AcceleratorError(f"layer {node.name}: {what} {value} exceeds the descriptor field (max {DESCRIPTOR_FIELD_MAX})")


def _conv_layer(graph: IntegerGraph, node: Node, requant: Node | None, index: int) -> Emitted:
    x, acc = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, acc)
    groups = 1
    if node.op == "Conv2d":
        (kh, kw), (sh, sw) = _kernel(graph, node), as_pair(node.attrs["stride"])
        (top, left, bottom, right), (dh, dw) = as_pads(node.attrs["padding"]), as_pair(node.attrs["dilation"])
        groups = int(node.attrs["groups"])
        if (dh, dw) != (1, 1):
            raise AcceleratorError(f"layer {node.name}: dilated convolution (dilation={[dh, dw]}); "
                                   "the accelerator runs dilation=1 only")
        for what, value in (("stride", max(sh, sw)), ("padding", max(top, left, bottom, right))):
            _field(node, what, value)
        # Bottom / right padding is implied: out_h, out_w say how far the window runs, and positions
        # past the map read d = 0 (§4).
        geometry = dict(kh=kh, kw=kw, sh=sh, sw=sw, ph=top, pw=left, groups=groups)
    else:
        geometry = {}
    out_ch = fields["out_ch"]
    wbits = int(node.attrs["weight_bits"])
    if wbits > MAX_WEIGHT_BITS or wbits < MIN_WEIGHT_BITS:
        raise AcceleratorError(f"layer {node.name}: {wbits}-bit weights; the accelerator takes signed weights "
                               f"of {MIN_WEIGHT_BITS} to {MAX_WEIGHT_BITS} bits")
    if weight_format(node) == "codebook":
        weights, codebook = _codebook(graph, node)
        codes = codebook[weights]
    else:
        weights = graph.params[node.params["weight"]].to(torch.int64).reshape(out_ch, -1).numpy().copy()
        codebook, codes = None, weights
    if "bias" in node.params:
        bias = graph.params[node.params["bias"]].to(torch.int64).reshape(-1).numpy().copy()
    else:
        bias = np.zeros(out_ch, dtype=np.int64)
    out = _requant_fields(graph, requant, out_ch) if requant is not None else _raw_fields(node, out_ch)
    channel_map, sources = None, []
    if groups > 1:
        # Row o reads the in_ch/groups input channels of its group: its input starts at channel
        # (o // (out_ch/groups))·(in_ch/groups) of the input map.
        per_out, per_in = out_ch // groups, fields["in_ch"] // groups
        hw = fields["in_h"] * fields["in_w"]
        channel_map = (np.arange(out_ch, dtype=np.int64) // per_out) * per_in * hw
        sources = [(node.inputs[0], 0, out_ch)]
    storage, storage_fields = weight_storage(node)
    layer = Layer(index=index, kind="conv", weight_bits=wbits, codebook=codebook, weights=weights, bias=bias,
                  channel_map=channel_map, weight_storage=storage, storage_fields=storage_fields,
                  **fields, **geometry, **out)
    # §2: K·max|w|·max|x − z_in| + max|bias| ≤ 2^31 − 1, so the 32-bit accumulator cannot wrap.
    bound = layer.terms * int(np.abs(codes).max(initial=0)) * _max_centered(x) + int(np.abs(bias).max(initial=0))
    if bound > ACC_MAX:
        raise AcceleratorError(f"layer {node.name}: accumulator bound K·max|w|·max|x−z|+max|bias| = "
                               f"{layer.terms}·{int(np.abs(codes).max(initial=0))}·{_max_centered(x)}"
                               f"+{int(np.abs(bias).max(initial=0))} = {bound} exceeds the 32-bit accumulator "
                               f"(max {ACC_MAX})")
    return Emitted(layer, sources)


def _kernel(graph: IntegerGraph, node: Node) -> list[int]:
    role = "weight_index" if weight_format(node) == "codebook" else "weight"
    shape = graph.params[node.params[role]].shape
    return [int(shape[2]), int(shape[3])]


def _codebook(graph: IntegerGraph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(indices [out_ch, K] in 0..3, codebook [4]) of a 2-bit codebook layer, padded with zeros."""
    ibits = node.attrs["index_bits"]
    table = graph.params[node.params["codebook"]].to(torch.int64).numpy()
    if ibits != CODEBOOK_INDEX_BITS or table.size > CODEBOOK_SIZE:
        raise AcceleratorError(f"layer {node.name}: {ibits}-bit codebook with {table.size} entries; the "
                               f"decoder takes {CODEBOOK_INDEX_BITS}-bit indices into {CODEBOOK_SIZE} values")
    if table.size and (table.min() < CODEBOOK_MIN or table.max() > CODEBOOK_MAX):
        raise AcceleratorError(f"layer {node.name}: codebook values {table.tolist()} do not fit the "
                               f"{CODEBOOK_VALUE_BITS}-bit signed codebook registers")
    codebook = np.zeros(CODEBOOK_SIZE, dtype=np.int64)
    codebook[: table.size] = table
    index = graph.params[node.params["weight_index"]].to(torch.int64)
    return index.reshape(index.shape[0], -1).numpy().copy(), codebook


def _avgpool_layer(graph: IntegerGraph, node: Node, requant: Node, index: int) -> Layer:
    x, acc = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, acc)
    (kh, kw), (sh, sw) = as_pair(node.attrs["kernel"]), as_pair(node.attrs["stride"])
    _field(node, "stride", max(sh, sw))
    out = _requant_fields(graph, requant, fields["out_ch"])
    layer = Layer(index=index, kind="avgpool", kh=kh, kw=kw, sh=sh, sw=sw, lane_multipliers=(1, 0),
                  bias=np.zeros(fields["out_ch"], dtype=np.int64), **fields, **out)
    bound = kh * kw * _max_centered(x)
    if bound > ACC_MAX:
        raise AcceleratorError(f"layer {node.name}: window sum bound {kh}·{kw}·{_max_centered(x)} = {bound} "
                               f"exceeds the 32-bit accumulator (max {ACC_MAX})")
    return layer


def _maxpool_layer(graph: IntegerGraph, node: Node, index: int) -> Layer:
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, y)
    (kh, kw), (sh, sw) = as_pair(node.attrs["kernel"]), as_pair(node.attrs["stride"])
    _field(node, "stride", max(sh, sw))
    return Layer(index=index, kind="maxpool", kh=kh, kw=kw, sh=sh, sw=sw, **fields, **_same_grid_fields(y))


def _add_layer(graph: IntegerGraph, node: Node, requant: Node, index: int) -> Layer:
    """(a − z_a)·m_a + (b − z_b)·m_b on the pool lanes (a 1×2 window: element 0 from a, element 1
    from b, each times its lane multiplier), then the requant unit."""
    a, b, acc = graph.tensors[node.inputs[0]], graph.tensors[node.inputs[1]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, a, acc)
    _check_codes(b, node.name, "input")
    m = [int(v) for v in graph.params[node.params["multiplier"]].to(torch.int64).reshape(-1).tolist()]
    for which, value in zip("ab", m):
        if not 0 <= value <= LANE_MULTIPLIER_MAX:
            raise AcceleratorError(f"layer {node.name}: Add multiplier m_{which} = {value} does not fit the "
                                   f"{LANE_MULTIPLIER_BITS}-bit signed lane multiplier register "
                                   f"(0..{LANE_MULTIPLIER_MAX}; lowering chooses at most 2^15 − 1)")
    bound = _max_centered(a) * m[0] + _max_centered(b) * m[1]
    if bound > ACC_MAX:
        raise AcceleratorError(f"layer {node.name}: Add bound {_max_centered(a)}·{m[0]} + {_max_centered(b)}·{m[1]} "
                               f"= {bound} exceeds the 32-bit accumulator (max {ACC_MAX})")
    out = _requant_fields(graph, requant, fields["out_ch"])
    return Layer(index=index, kind="add", kh=1, kw=2, lane_multipliers=(m[0], m[1]),
                 in2_bits=b.bits, in2_signed=b.signed, z_in2=b.zero_point,
                 bias=np.zeros(fields["out_ch"], dtype=np.int64), **fields, **out)


def _reorg_layer(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    """Space to depth as a copy on the pool lanes: a 1×1 window with stride r, and row o = c·r² + i·r + j
    reading channel c from (i, j): out[o, y, x] = in[c, y·r + i, x·r + j]."""
    node = step.node
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, y)
    r = int(node.attrs["stride"])
    _field(node, "stride", r)
    o = np.arange(fields["out_ch"], dtype=np.int64)
    c, i, j = o // (r * r), (o // r) % r, o % r
    channel_map = c * fields["in_h"] * fields["in_w"] + i * fields["in_w"] + j
    layer = Layer(index=index, kind="reorg", sh=r, sw=r, channel_map=channel_map, **fields, **_same_grid_fields(y))
    return Emitted(layer, [(step.inputs[0], 0, fields["out_ch"])])


def _concat_layer(graph: IntegerGraph, step: ChainStep, index: int) -> Emitted:
    """A Concat allocation could not make free (an input used twice, or the graph output): a copy
    on the pool lanes, row o reading channel o − offset of its input part."""
    node = step.node
    y = graph.tensors[node.output]
    parts = [graph.tensors[name] for name in step.inputs]
    fields = _io_fields(graph, node.name, parts[0], y)
    for p in parts[1:]:
        _check_codes(p, node.name, "input")
    channel_map = np.zeros(fields["out_ch"], dtype=np.int64)
    sources, first = [], 0
    for name, p in zip(step.inputs, parts):
        c, h, w = _chw(p)
        channel_map[first : first + c] = np.arange(c, dtype=np.int64) * h * w
        sources.append((name, first, first + c))
        first += c
    layer = Layer(index=index, kind="concat", channel_map=channel_map, **fields, **_same_grid_fields(y))
    return Emitted(layer, sources)


def _lone_requant_layer(graph: IntegerGraph, node: Node, index: int) -> Layer:
    """A Requant of codes (e.g. a Concat input moved onto the Concat's grid): the pool lanes sum one
    element x − z_in (a 1×1 window), the requant unit does the rest."""
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, y)
    out = _requant_fields(graph, node, fields["out_ch"])
    return Layer(index=index, kind="requant", lane_multipliers=(1, 0),
                 bias=np.zeros(fields["out_ch"], dtype=np.int64), **fields, **out)


# -- limits ---------------------------------------------------------------------------------

def _check_codes(spec: TensorSpec, name: str, what: str) -> None:
    if spec.bits > MAX_ACT_BITS:
        raise AcceleratorError(f"layer {name}: {what} {spec.name!r} has {spec.bits}-bit codes; "
                               f"activations are at most {MAX_ACT_BITS} bits")
    if spec.per_channel and what == "input":
        raise AcceleratorError(f"layer {name}: input {spec.name!r} has per-channel scales")


def _max_centered(x: TensorSpec) -> int:
    """max |x − z_in| over the input's code range."""
    return max(x.qmax - x.zero_point, x.zero_point - x.qmin)


#: Descriptor fields the RTL reads narrower than a word (docs/hardware.md §6): a map's height and width
#: (16 bits), a conv's input channels per group (24 bits), so its address multipliers stay small.
MAX_MAP_SIDE = (1 << 16) - 1
MAX_GROUP_CHANNELS = (1 << 24) - 1


def _check_limits(layer: Layer, name: str, config: AccelConfig) -> None:
    """§2 kernel size and every map on its own against the activation memory (`allocate` checks the
    maps that are live together; `check_weight_ring` the weight ring, which depends on every layer)."""
    if max(layer.kh, layer.kw) > config.max_kernel:
        raise AcceleratorError(f"layer {name}: kernel {layer.kh}x{layer.kw} exceeds max_kernel={config.max_kernel}")
    check_packing(layer)
    maps = [("input", layer.in_ch, layer.in_h, layer.in_w)]
    if not layer.raw_output:  # raw accumulators go to the separate output memory
        maps.append(("output", layer.out_ch, layer.out_h, layer.out_w))
    for what, c, h, w in maps:
        if c * h * w > config.act_buffer_bytes:
            raise AcceleratorError(f"layer {name}: {what} map {c}x{h}x{w} = {c * h * w} bytes does not fit "
                                   f"act_buffer_bytes={config.act_buffer_bytes}")
    if max(layer.in_h, layer.in_w, layer.out_h, layer.out_w) > MAX_MAP_SIDE:
        raise AcceleratorError(f"layer {name}: a map side above {MAX_MAP_SIDE} (input {layer.in_h}x{layer.in_w}, "
                               f"output {layer.out_h}x{layer.out_w}; the descriptor's 16-bit height and width)")
    if layer.in_ch // layer.groups > MAX_GROUP_CHANNELS:
        raise AcceleratorError(f"layer {name}: {layer.in_ch // layer.groups} input channels per group exceed "
                               f"{MAX_GROUP_CHANNELS} (the descriptor's 24-bit field)")


# -- the activation memory (§6) ---------------------------------------------------------------

@dataclass
class FreeConcats:
    """Concats that cost nothing: each part tensor's (root region, byte offset in it)."""
    concats: set[str] = field(default_factory=set)          # node names
    slot: dict[str, tuple[str, int]] = field(default_factory=dict)


def _free_concats(graph: IntegerGraph, steps: list[ChainStep]) -> FreeConcats:
    """Which Concats allocation makes free, in graph order: a Concat is free when each of its inputs
    is a distinct tensor not already placed in another Concat, and it is not the graph output (the
    program ends with the layer that writes the output). Its inputs then live at their channel
    offsets of its region (nested Concats compose)."""
    free = FreeConcats()
    graph_output = _unflatten(graph, graph.outputs[0])
    for step in steps:
        node = step.node
        if node.op != "Concat":
            continue
        parts = step.inputs
        if step.output == graph_output or len(set(parts)) != len(parts) or any(p in free.slot for p in parts):
            continue
        free.concats.add(node.name)
        offset = 0
        for part in parts:
            # every tensor already placed in this part (a nested Concat) moves along with it
            for t, (root, off) in list(free.slot.items()):
                if root == part:
                    free.slot[t] = (step.output, offset + off)
            free.slot[part] = (step.output, offset)
            offset += math.prod(_chw(graph.tensors[part]))
    return free


def _unflatten(graph: IntegerGraph, name: str) -> str:
    """The tensor whose bytes `name` is (through Flatten nodes, which are free)."""
    producer = {n.output: n for n in graph.nodes}
    while name in producer and producer[name].op == "Flatten":
        name = producer[name].inputs[0]
    return name


@dataclass
class Allocation:
    """Regions of the activation memory: each root tensor's base, size and live interval (layer
    indices), and the byte address of every tensor (a Concat part inside its Concat's region)."""
    regions: list[dict]
    address: dict[str, int]
    size: int            # bytes the allocation needs (the highest region end)
    peak_live: int       # the most bytes live at one layer (a lower bound for any allocation)

    def to_json(self) -> dict:
        return {"bytes": self.size, "peak_live_bytes": self.peak_live, "regions": self.regions,
                "address": dict(self.address)}


def allocate(graph: IntegerGraph, input_name: str, layers: list[Layer], reads: list[tuple[str, ...]],
             nodes: list[str], free: FreeConcats, config: AccelConfig) -> Allocation:
    """Give every map a region of the activation memory (docs/hardware.md §6).

    A map is live from the layer that writes it (the input codes: layer 0, whose INPUT phase loads
    them) to the last layer that reads it; a Concat part lives in its Concat's region, which is live
    as long as any tensor in it. Regions are placed greedily by size (largest first; ties: earlier
    first layer, then name), each at the lowest address where it overlaps no placed region that is
    live at the same time. A layer's output therefore never overlaps its inputs. AcceleratorError
    naming the layer whose map ends past `act_buffer_bytes`.
    """
    def nbytes(name: str) -> int:
        return math.prod(_chw(graph.tensors[name]))

    def root(name: str) -> str:
        return free.slot[name][0] if name in free.slot else name

    first: dict[str, int] = {}
    last: dict[str, int] = {}

    def touch(name: str, i: int) -> None:
        r = root(name)
        first[r] = min(first.get(r, i), i)
        last[r] = max(last.get(r, i), i)

    touch(input_name, 0)
    for i, (layer, read) in enumerate(zip(layers, reads)):
        for name in read:
            touch(name, i)
        if not layer.raw_output:
            touch(layer.name, i)
    writer = {layer.name: i for i, layer in enumerate(layers)}
    order = sorted(first, key=lambda r: (-nbytes(r), first[r], r))
    placed: list[tuple[int, int, int, int]] = []   # (base, end, first, last)
    base: dict[str, int] = {}
    for r in order:
        size = nbytes(r)
        busy = sorted((b, e) for b, e, f, l in placed if f <= last[r] and first[r] <= l)
        at = 0
        for b, e in busy:
            if at + size <= b:
                break
            at = max(at, e)
        base[r] = at
        placed.append((at, at + size, first[r], last[r]))
    need = max((e for _, e, _, _ in placed), default=0)
    live = [sum(nbytes(r) for r in first if first[r] <= i <= last[r]) for i in range(len(layers))]
    if need > config.act_buffer_bytes:
        r = min((r for r in base if base[r] + nbytes(r) > config.act_buffer_bytes), key=lambda r: (first[r], r))
        i = first[r]
        what = "the input codes" if r == input_name else f"map {r!r}"
        shape = "x".join(str(v) for v in _chw(graph.tensors[r]))
        raise AcceleratorError(
            f"layer {nodes[i]}: the activation memory does not fit: {what} ({shape} = {nbytes(r)} bytes) would "
            f"occupy bytes {base[r]}..{base[r] + nbytes(r) - 1} while {live[i]} bytes of maps are live at this "
            f"layer; the allocation needs {need} bytes, act_buffer_bytes={config.act_buffer_bytes} "
            "(docs/hardware.md §6)")
    address = {name: base[root(name)] + (free.slot[name][1] if name in free.slot else 0)
               for name in set(first) | set(free.slot)}
    regions = [{"tensor": r, "base": base[r], "bytes": nbytes(r), "live": [first[r], last[r]],
                "writer": writer.get(r), "parts": sorted((t for t in free.slot if free.slot[t][0] == r),
                                                          key=lambda t: free.slot[t][1])}
               for r in sorted(base, key=lambda r: (first[r], base[r]))]
    return Allocation(regions, address, need, max(live, default=0))


# -- folding (§4), shared by the timing model, the image writer and the cycle model -----------

def term_blocks(layer: Layer, config: AccelConfig) -> int:
    """T = ⌈K/C⌉ for a conv; the pool lanes step one window element per cycle (kh·kw; add: 2)."""
    return math.ceil(layer.terms / config.simd) if layer.kind == "conv" else layer.terms


def group_channels(layer: Layer, config: AccelConfig) -> int:
    """Output channels per channel group: R·(channel lanes), 2R in packing modes 2 and 4 (§3)."""
    return config.pe * layer.channel_lanes


def channel_groups(layer: Layer, config: AccelConfig) -> int:
    """G = ⌈out_ch/(R·channel lanes)⌉ (pool-lane kinds: R output channels per group)."""
    return math.ceil(layer.out_ch / group_channels(layer, config))


def pixel_passes(layer: Layer) -> int:
    """Passes of the pixel loop per group: P, or ⌈P/2⌉ in packing mode 4 (two pixels a pass)."""
    return math.ceil(layer.pixels / layer.pixel_lanes)


def weight_buffer_entries(layer: Layer, config: AccelConfig) -> int:
    """(R·channel lanes)·T·C: the weights of one channel group, padded rows and terms included."""
    return group_channels(layer, config) * term_blocks(layer, config) * config.simd if layer.kind == "conv" else 0


# -- the weight ring (§4, §5): one word per term block ------------------------------------------

#: Load-schedule word (LS.hex, §6, 64 bits): blocks of the layer, bus words per block, storage width, codebook.
SCHEDULE_WORD_BITS = 64
SCHEDULE_BLOCK_BITS = 32               # bits 0-31: term blocks of the layer, G·T
SCHEDULE_WORDS_BITS = 16               # bits 32-47: bus words per block
SCHEDULE_STORAGE_SHIFT = 48            # bits 48-49: storage width code
SCHEDULE_CODEBOOK_SHIFT = 50           # bit 50: 2-bit codebook indices (from W2.hex)
SCHEDULE_STORAGE = {8: 0, 4: 1, 2: 2}  # storage width -> its code


def block_words(layer: Layer, config: AccelConfig) -> int:
    """Bus words of one term block of a conv layer: its R·(channel lanes)·C weights at their storage
    width, the block padded to whole words (so every block starts on a word, §6)."""
    if layer.kind != "conv":
        return 0
    return words_per_block(group_channels(layer, config) * config.simd, storage_bits(layer), config.bus_bits)


def words_per_block(entries: int, bits: int, bus_bits: int) -> int:
    """Bus words of a term block of `entries` weights of `bits` each, padded to whole words (§6)."""
    return -(-entries * bits // bus_bits)


def ring_word_entries(program: Program) -> int:
    """Entries (8-bit weights or 2-bit indices, one byte each) of one weight-ring word: a term block
    of R·(channel lanes of the array)·C weights, rounded up to whole bus words of 2-bit entries (the
    loader assembles a block by pushing up to bus_bits/2 entries a cycle into a register this wide)."""
    config = program.config
    per_push = config.bus_bits // CODEBOOK_INDEX_BITS
    block = config.pe * array_lanes(program)[0] * config.simd
    return -(-block // per_push) * per_push


def ring_depth(program: Program) -> int:
    """D: words of the weight ring, the largest power of two (so that its addresses wrap for free)
    whose words hold at most weight_buffer_entries 8-bit entries, and no more than the program's
    blocks need (the power of two at or above them, at least 2): a ring that holds every block of an
    image never makes the loader wait, so a larger one would change no cycle. A word is
    `ring_word_entries` wide, which on a small array (R·PCH·C below bus_bits/2) is more than a
    block: such a ring holds fewer weights than its size."""
    words = program.config.weight_buffer_entries // ring_word_entries(program)
    if words < 1:
        raise AcceleratorError(f"weight_buffer_entries={program.config.weight_buffer_entries} does not hold one "
                               f"weight-ring word of {ring_word_entries(program)} entries (one term block)")
    blocks = sum(channel_groups(l, program.config) * term_blocks(l, program.config)
                 for l in program.layers if l.kind == "conv")
    return min(1 << (words.bit_length() - 1), max(2, 1 << (blocks - 1).bit_length()))


def fit_weight_ring(program: Program) -> Program:
    """Check the weight ring (`check_weight_ring`) after the packing modes are chosen. Packing channel
    pairs doubles a block and so halves the blocks the ring holds: when a layer's group then no longer
    fits, every layer runs in mode 1 (one channel lane) instead, which may fit. Returns `program`."""
    convs = [layer for layer in program.layers if layer.kind == "conv"]
    if array_lanes(program)[0] == 2 and max((term_blocks(l, program.config) for l in convs), default=0) > ring_depth(program):
        for layer in convs:
            layer.packing = 1
    check_weight_ring(program)
    return program


def check_weight_ring(program: Program) -> None:
    """Every conv layer's channel group (T blocks) must fit the ring at once, and its load schedule
    its LS.hex word (§6)."""
    config = program.config
    depth = ring_depth(program)
    for layer in program.layers:
        if layer.kind != "conv":
            continue
        T, blocks = term_blocks(layer, config), channel_groups(layer, config) * term_blocks(layer, config)
        if T > depth:
            raise AcceleratorError(
                f"layer {layer.name}: one channel group is T = {T} term blocks, more than the weight ring's "
                f"{depth} words (weight_buffer_entries={config.weight_buffer_entries}, "
                f"{ring_word_entries(program)} entries a word)")
        if blocks >= 1 << SCHEDULE_BLOCK_BITS or block_words(layer, config) >= 1 << SCHEDULE_WORDS_BITS:  # pragma: no cover
            raise AcceleratorError(
                f"layer {layer.name}: {blocks} term blocks of {block_words(layer, config)} bus words do not fit its "
                f"load-schedule word (fewer than 2^{SCHEDULE_BLOCK_BITS} blocks, 2^{SCHEDULE_WORDS_BITS} words each)")


def storage_bits(layer: Layer) -> int:
    """Bits per weight in external memory and on the bus (§6): a codebook layer's 2-bit indices,
    else the narrowest of 2, 4, 8 bits that holds the layer's weight codes."""
    return storage_width(layer.weight_bits, layer.is_codebook)


def storage_width(weight_bits: int, codebook: bool) -> int:
    """`storage_bits` from a layer's weight width and kind (what a descriptor carries)."""
    if codebook:
        return CODEBOOK_INDEX_BITS
    # (wider codes never reach the hardware, the compiler refuses them; the cost model still sizes them)
    return next((b for b in STORAGE_WIDTHS if weight_bits <= b), weight_bits)


# -- packed MACs (§3) --------------------------------------------------------------------------

#: Dense weight storage widths on the bus (W8.hex): the narrowest that holds the codes.
STORAGE_WIDTHS = (2, 4, 8)
#: Bits of one product field of the packed multiplier: mode 2 splits P at bit 18, mode 4 at 9, 18, 27.
PACKED_FIELD_BITS = {2: 18, 4: 9}


def _field_fits(lo: int, hi: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1


def d_range(layer: Layer) -> tuple[int, int]:
    """(min, max) of d = x − z_in over the layer's input codes."""
    lo, hi = int_range(layer.in_bits, layer.in_signed)
    return lo - layer.z_in, hi - layer.z_in


def check_packing(layer: Layer) -> None:
    """Refuse a packing mode the PE cannot run `layer` in exactly (a program edited or read back
    from files: the cycle model would not notice, the RTL's fields would overflow)."""
    allowed = allowed_packings(layer, d_range(layer)) if layer.kind == "conv" else [1]
    if layer.packing not in allowed:
        raise AcceleratorError(f"layer {layer.name}: packing mode {layer.packing} is not exact for its widths "
                               f"({layer.weight_bits}-bit weights, d in {list(d_range(layer))}); allowed: {allowed}")


def allowed_packings(layer: Layer, d_bounds: tuple[int, int]) -> list[int]:
    """Packing modes the PE can run `layer` in, from the weight codes' range and d = x − z_in's
    (`d_bounds`): every product w·d must fit its field as a signed value (mode 2: 18 bits, which any
    8-bit weight × 10-bit d does; mode 4: 9 bits, e.g. 4-bit weights × 5-bit d). Two channels share
    one d, so a grouped conv packs channels only when pairs (2i, 2i+1) lie in one convolution
    group (out_ch/groups even); a depthwise conv runs in mode 1."""
    codes = layer.codebook if layer.is_codebook else layer.weights
    w_lo, w_hi = int(np.min(codes, initial=0)), int(np.max(codes, initial=0))
    if not layer.is_codebook:   # the declared width bounds the codes (a layer is costed by its width)
        w_lo, w_hi = -(1 << (layer.weight_bits - 1)), (1 << (layer.weight_bits - 1)) - 1
    corners = [w * d for w in (w_lo, w_hi) for d in d_bounds]
    if layer.groups > 1 and (layer.out_ch // layer.groups) % 2:
        return [1]
    modes = [1]
    for mode, bits in PACKED_FIELD_BITS.items():
        if _field_fits(min(corners), max(corners), bits):
            modes.append(mode)
    return modes


def packed_cycles(layer: Layer, config: AccelConfig) -> int:
    """Compute + drain of a conv layer in its current packing mode, without zero skipping: the
    figure the compiler minimises over the allowed modes. Weight loads do not enter it: the loader
    streams every layer's blocks through the weight ring ahead of the array (§5), and a layer's bus
    words are the same in every mode (a mode-2 block holds twice the weights of a mode-1 block, and
    there are half as many)."""
    return channel_groups(layer, config) * (pixel_passes(layer) * term_blocks(layer, config) + 1)


def choose_packing(layer: Layer, d_bounds: tuple[int, int], config: AccelConfig) -> int:
    """The allowed mode with the fewest cycles (`packed_cycles`); ties go to the narrower packing
    (fewer idle product slots, e.g. mode 4 on a one-pixel layer)."""
    best = None
    for mode in sorted(allowed_packings(layer, d_bounds)):
        layer.packing = mode
        cycles = packed_cycles(layer, config)
        if best is None or cycles < best[0]:
            best = (cycles, mode)
    layer.packing = best[1]
    return layer.packing


def array_lanes(program: Program) -> tuple[int, int]:
    """(channel lanes, pixel lanes) the PE array is built with: the most any conv layer's packing
    mode uses (§3). Each doubles the accumulators and requant units per row."""
    convs = [layer for layer in program.layers if layer.kind == "conv"]
    return (max((layer.channel_lanes for layer in convs), default=1),
            max((layer.pixel_lanes for layer in convs), default=1))
