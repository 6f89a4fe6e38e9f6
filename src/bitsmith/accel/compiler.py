"""IntegerGraph → accelerator layer program (docs/hardware.md §2, §4).

`compile_graph` takes the graph as a chain of layers (`chain.layer_chain`: each Conv2d / Linear /
AvgPool2d fused with its Requant, MaxPool2d a pool layer, Flatten free, QuantizeInput on the host)
and turns each into a descriptor. Everything the hardware
cannot do, and every buffer that is too small, is an `AcceleratorError` naming the graph node and
the limit, so a design-space sweep can report *why* a configuration does not fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bitsmith.errors import AcceleratorError
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import as_pair, weight_format

from bitsmith.integer.ops import Emitters

from bitsmith.integer.chain import ChainStep, layer_chain
from .config import (
    ACC_BITS,
    ACC_MAX,
    ACC_MIN,
    CODEBOOK_INDEX_BITS,
    CODEBOOK_SIZE,
    CODEBOOK_VALUE_BITS,
    DESCRIPTOR_FIELD_MAX,
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
    input_name, steps = layer_chain(graph, EMIT)
    _check_codes(graph.tensors[input_name], graph.nodes[0].name, "input")
    layers: list[Layer] = []
    for step in steps:
        layer = EMIT.lookup(step.node)(graph, step, len(layers))
        _check_limits(layer, step.node.name, config)
        layers.append(layer)
    # The engine's shape of each layer's tensor (a Linear's is 1-D), so back ends can compare.
    shapes = {layer.name: list(graph.tensors[layer.name].shape) for layer in layers}
    return Program(config=config, layers=layers, input_name=input_name,
                   metadata={"graph_output": graph.outputs[0], "tensor_shapes": shapes})


# -- one layer per node (group) -------------------------------------------------------------

#: The layer ops the accelerator computes; QuantizeInput (host), Requant (fused) and Flatten (free)
#: are the chain walk's (chain.STRUCTURAL_OPS).
EMIT = Emitters("accelerator compiler")


@EMIT.register("Conv2d", "Linear")
def _emit_conv(graph: IntegerGraph, step: ChainStep, index: int) -> Layer:
    return _conv_layer(graph, step.node, step.requant, index)


@EMIT.register("AvgPool2d")
def _emit_avgpool(graph: IntegerGraph, step: ChainStep, index: int) -> Layer:
    return _avgpool_layer(graph, step.node, step.requant, index)


@EMIT.register("MaxPool2d")
def _emit_maxpool(graph: IntegerGraph, step: ChainStep, index: int) -> Layer:
    return _maxpool_layer(graph, step.node, index)


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


def _conv_layer(graph: IntegerGraph, node: Node, requant: Node | None, index: int) -> Layer:
    x, acc = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    fields = _io_fields(graph, node.name, x, acc)
    if node.op == "Conv2d":
        (kh, kw), (sh, sw) = _kernel(graph, node), as_pair(node.attrs["stride"])
        (ph, pw), (dh, dw) = as_pair(node.attrs["padding"]), as_pair(node.attrs["dilation"])
        if node.attrs["groups"] != 1:
            raise AcceleratorError(f"layer {node.name}: grouped convolution (groups={node.attrs['groups']}); "
                                   "the accelerator runs groups=1 only")
        if (dh, dw) != (1, 1):
            raise AcceleratorError(f"layer {node.name}: dilated convolution (dilation={[dh, dw]}); "
                                   "the accelerator runs dilation=1 only")
        for what, value in (("stride", max(sh, sw)), ("padding", max(ph, pw))):
            if value > DESCRIPTOR_FIELD_MAX:
                raise AcceleratorError(f"layer {node.name}: {what} {value} exceeds the descriptor field (max {DESCRIPTOR_FIELD_MAX})")
        geometry = dict(kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
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
    layer = Layer(index=index, kind="conv", weight_bits=wbits, codebook=codebook, weights=weights, bias=bias,
                  **fields, **geometry, **out)
    # §2: K·max|w|·max|x − z_in| + max|bias| ≤ 2^31 − 1, so the 32-bit accumulator cannot wrap.
    bound = layer.terms * int(np.abs(codes).max(initial=0)) * _max_centered(x) + int(np.abs(bias).max(initial=0))
    if bound > ACC_MAX:
        raise AcceleratorError(f"layer {node.name}: accumulator bound K·max|w|·max|x−z|+max|bias| = "
                               f"{layer.terms}·{int(np.abs(codes).max(initial=0))}·{_max_centered(x)}"
                               f"+{int(np.abs(bias).max(initial=0))} = {bound} exceeds the 32-bit accumulator "
                               f"(max {ACC_MAX})")
    return layer


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
    out = _requant_fields(graph, requant, fields["out_ch"])
    layer = Layer(index=index, kind="avgpool", kh=kh, kw=kw, sh=sh, sw=sw,
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
    return Layer(index=index, name=node.output, kind="maxpool", kh=kh, kw=kw, sh=sh, sw=sw,
                 out_bits=y.bits, out_signed=y.signed, z_out=y.zero_point,
                 clamp_lo=y.qmin, clamp_hi=y.qmax, **fields)


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


def _check_limits(layer: Layer, name: str, config: AccelConfig) -> None:
    """§2 kernel size, §4 activation and weight buffers."""
    if max(layer.kh, layer.kw) > config.max_kernel:
        raise AcceleratorError(f"layer {name}: kernel {layer.kh}x{layer.kw} exceeds max_kernel={config.max_kernel}")
    maps = [("input", layer.in_ch, layer.in_h, layer.in_w)]
    if not layer.raw_output:  # raw accumulators go to the separate output memory
        maps.append(("output", layer.out_ch, layer.out_h, layer.out_w))
    for what, c, h, w in maps:
        if c * h * w > config.act_buffer_bytes:
            raise AcceleratorError(f"layer {name}: {what} map {c}x{h}x{w} = {c * h * w} bytes does not fit "
                                   f"act_buffer_bytes={config.act_buffer_bytes}")
    if layer.kind == "conv":
        entries = weight_buffer_entries(layer, config)
        if entries > config.weight_buffer_entries:
            raise AcceleratorError(
                f"layer {name}: one channel group needs R·T·C = {config.pe}·{term_blocks(layer, config)}·"
                f"{config.simd} = {entries} weights, does not fit weight_buffer_entries={config.weight_buffer_entries}")


# -- folding (§4), shared by the timing model, the image writer and the cycle model -----------

def term_blocks(layer: Layer, config: AccelConfig) -> int:
    """T = ⌈K/C⌉ for a conv; a pool steps one window element per cycle (kh·kw)."""
    return math.ceil(layer.terms / config.simd) if layer.kind == "conv" else layer.terms


def channel_groups(layer: Layer, config: AccelConfig) -> int:
    """G = ⌈out_ch/R⌉ (pools: ⌈channels/R⌉, the same since out_ch = in_ch)."""
    return math.ceil(layer.out_ch / config.pe)


def weight_buffer_entries(layer: Layer, config: AccelConfig) -> int:
    """R·T·C: the weights of one channel group, padded rows and terms included."""
    return config.pe * term_blocks(layer, config) * config.simd if layer.kind == "conv" else 0
