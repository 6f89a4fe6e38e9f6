"""Lowering: a calibrated fake-quantized model (bitsmith.quant) → IntegerGraph.

The front end's last step: the IR (bitsmith.integer) knows nothing of how a graph was made.

Walks the torch.fx graph once, in order, keeping for every fx value the IntegerGraph tensor
that holds it. The integers written here (weight codes, biases, multipliers, shifts) are the
ones the fake-quant model rounds to, so the two agree up to the requantizer's dyadic rounding.
With power-of-two scales (scale_mode "pot" or "qformat") every multiplier that is an exact power
of two 2^-k is written as m = 1, s = k: a pure rounding shift (docs/arithmetic.md).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.fx as fx
from torch import nn

from bitsmith.errors import ConfigError, GraphError
from bitsmith.integer.arithmetic import int_range
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import as_pair as _pair
from bitsmith.models import Reorg
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.fx_nodes import module_of
from bitsmith.quant.modules import QuantConv2d, QuantLayer
from bitsmith.quant.requant import (Clamp, activation_offset, add_parameters, bias_codes, layer_bias_codes, multiplier,
                                    requant_parameters)
from bitsmith.quant.rewrite import propagate_shapes

# add_parameters, bias_codes, multiplier and requant_parameters live in quant/requant.py, shared with the
# fake-quant modules that evaluate exactly as the graph; they are named here too, where the graph is made.
__all__ = ["add_parameters", "bias_codes", "lower", "multiplier", "requant_parameters"]

class _Builder:
    def __init__(self, config: QuantConfig):
        self.config = config
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.params: dict[str, torch.Tensor] = {}

    def tensor(self, spec: TensorSpec) -> TensorSpec:
        if spec.name in self.tensors:
            raise GraphError(f"tensor name {spec.name!r} used twice")
        self.tensors[spec.name] = spec
        return spec

    def node(self, op: str, name: str, inputs: list[TensorSpec], out: TensorSpec, attrs=None, params=None) -> TensorSpec:
        stored = {}
        for role, value in (params or {}).items():
            key = f"{name}.{role}"
            self.params[key] = value
            stored[role] = key
        self.nodes.append(Node(op, name, [i.name for i in inputs], out.name, attrs or {}, stored))
        return out

    def requant(self, name: str, x: TensorSpec, out: TensorSpec, clamp: Clamp | None = None) -> TensorSpec:
        """Requantize `x` onto the grid of `out` (per channel when x's scale is), narrowed by a fused clamp."""
        in_scales = x.scale if x.per_channel else [x.scale]
        m, s, lo, hi = requant_parameters(in_scales, out.scale, out.bits, out.signed, out.zero_point, clamp,
                                          self.config, where=f"layer {name!r}")
        attrs = {"clamp_min": lo, "clamp_max": hi, "multiplier_bits": self.config.multiplier_bits}
        return self.node("Requant", name, [x], self.tensor(out), attrs, {"multiplier": m, "shift": s})


def _codes_spec(name: str, shape, fq: FakeQuantize) -> TensorSpec:
    return TensorSpec(name, tuple(shape), "int", fq.bits, fq.signed, float(fq.scale), int(fq.zero_point))



def lower(qmodel: fx.GraphModule, config: QuantConfig | None = None, *, input_shape: tuple[int, ...] | None = None,
          metadata: dict | None = None) -> IntegerGraph:
    """Lower a model returned by `bitsmith.quantize` to an IntegerGraph (validated).

    `config` is the QuantConfig the model was quantized with; None takes the one `quantize` stamped
    on the model (a model from anywhere else is refused).
    """
    config = config if config is not None else getattr(qmodel, "bitsmith_config", None)
    if not isinstance(config, QuantConfig):
        raise ConfigError("lower() takes the model returned by bitsmith.quantize() and its QuantConfig; "
                          "this one is not quantized")
    input_shape = _input_shape(qmodel, input_shape)
    qmodel = qmodel.eval()
    propagate_shapes(qmodel, input_shape, "the quantized model")
    b = _Builder(config)
    env: dict[fx.Node, TensorSpec] = {}
    acc_bits = config.acc_bits

    def shape(node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape[1:])

    for node in qmodel.graph.nodes:
        m = module_of(qmodel, node)
        if node.op == "placeholder":
            if env:
                raise ConfigError("bitsmith lowers models with exactly one input")
            env[node] = b.tensor(TensorSpec("input", input_shape, "float32"))
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise ConfigError("bitsmith lowers models with exactly one output tensor")
            output = env[result]
        elif isinstance(m, FakeQuantize):
            _check_frozen(m, node.target)
            _check_no_offset(m, node.target)
            x = env[node.args[0]]
            out = _codes_spec(node.name, shape(node), m)
            if x.dtype == "float32":
                env[node] = b.node("QuantizeInput", node.name, [x], b.tensor(out))
            elif x.same_quantization(out):
                env[node] = x  # already on this grid (e.g. a Concat that requantized its inputs)
            else:
                env[node] = b.requant(node.name, x, out)
        elif isinstance(m, QuantLayer):
            env[node] = _lower_layer(b, node, m, env[node.args[0]], shape(node), acc_bits)
        elif isinstance(m, QuantAdd):
            env[node] = _lower_add(b, node, m, [env[a] for a in node.args], shape(node), acc_bits)
        elif isinstance(m, nn.MaxPool2d):  # padding, dilation and ceil mode were checked by prepare (support.py)
            x = env[node.args[0]]
            attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size)}
            env[node] = b.node("MaxPool2d", node.name, [x], b.tensor(replace(x, name=node.name, shape=shape(node))), attrs)
        elif isinstance(m, nn.AvgPool2d):
            x = env[node.args[0]]
            k = _pair(m.kernel_size)
            out = TensorSpec(node.name, shape(node), "int", acc_bits, True, x.scale / (k[0] * k[1]), 0)
            attrs = {"kernel": k, "stride": _pair(m.stride or m.kernel_size)}
            env[node] = b.node("AvgPool2d", node.name, [x], b.tensor(out), attrs)
        elif isinstance(m, nn.Flatten):
            x = env[node.args[0]]
            env[node] = b.node("Flatten", node.name, [x], b.tensor(replace(x, name=node.name, shape=shape(node))))
        elif isinstance(m, Reorg):
            x = env[node.args[0]]
            env[node] = b.node("Reorg", node.name, [x], b.tensor(replace(x, name=node.name, shape=shape(node))),
                               {"stride": m.stride})
        elif node.op == "call_function" and node.target is torch.cat:
            env[node] = _lower_concat(b, qmodel, node, env, shape(node))
        else:
            raise ConfigError(f"cannot lower {node.op} {node.name!r} ({node.target})")

    meta = {"quant_config": config.to_json(), **(metadata or {})}
    graph = IntegerGraph(b.tensors, b.nodes, b.params, ["input"], [output.name], meta)
    graph.validate()
    return graph


def _check_frozen(fq: FakeQuantize, name: str) -> None:
    if not fq.enabled or fq.observing:
        raise ConfigError(f"quantizer {name!r} is {'disabled' if not fq.enabled else 'not frozen'}; "
                          "lower() needs every activation quantized (enable it / quantize() the model)")


def _check_no_offset(fq: FakeQuantize, name: str) -> None:
    """A quantizer that subtracts an offset before rounding (QIL) lowers only behind a Conv2d/Linear,
    whose bias takes the offset; anywhere else the graph has nowhere to put it."""
    if activation_offset(fq) != 0.0:
        raise ConfigError(f"quantizer {name!r} subtracts an offset ({activation_offset(fq):g}) before rounding; "
                          "that lowers only as the output quantizer of a Conv2d/Linear (folded into its bias)")


def _input_shape(qmodel: fx.GraphModule, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape to lower for: `given`, or the one the model was quantized for; both must agree."""
    known = tuple(getattr(qmodel, "input_shape", ()) or ())
    given = tuple(given or ())
    if given and known and given != known:
        raise ConfigError(f"lower(input_shape={given}): the model was quantized for input shape {known} (C, H, W); "
                          "lower it for that shape, or quantize it again on batches of the shape you want")
    if not (given or known):
        raise ConfigError("lower() needs the input shape (C, H, W): pass input_shape=")
    return given or known


def _lower_add(b: _Builder, node: fx.Node, m: QuantAdd, inputs: list[TensorSpec], out_shape, acc_bits: int
               ) -> TensorSpec:
    """Add (acc = (a − z_a)·m_a + (b − z_b)·m_b at scale S_out·2^-k) and the Requant after it (a rounding
    shift by k, with the fused clamp): the integers QuantAdd computes (add_parameters)."""
    for x in inputs:
        if x.dtype != "int" or x.per_channel:
            raise ConfigError(f"add {m.name!r}: input {x.name!r} is not quantized per tensor")
    if inputs[0].shape != inputs[1].shape:
        raise ConfigError(f"add {m.name!r} adds tensors of shapes {list(inputs[0].shape)} and {list(inputs[1].shape)}; "
                          "the integer graph adds tensors of one shape (no broadcasting)")
    _check_frozen(m.act_quant, f"{node.target}.act_quant")
    _check_no_offset(m.act_quant, f"{node.target}.act_quant")
    out = _codes_spec(node.name, out_shape, m.act_quant)
    m_a, m_b, k = m.integer_parameters()
    acc = TensorSpec(f"{node.name}_acc", tuple(out_shape), "int", acc_bits, True, math.ldexp(out.scale, -k), 0)
    b.node("Add", acc.name, inputs, b.tensor(acc), {}, {"multiplier": torch.tensor([m_a, m_b], dtype=torch.int64)})
    return b.requant(node.name, acc, out, m.clamp)


def _lower_layer(b: _Builder, node: fx.Node, m: QuantLayer, x: TensorSpec, out_shape, acc_bits: int) -> TensorSpec:
    if x.dtype != "int" or x.per_channel:
        raise ConfigError(f"layer {node.target!r}: its input is not quantized per tensor")
    codebook_weights = getattr(m.weight_quantizer, "codebook_weights", None)
    weight_attrs = {}
    if codebook_weights is not None:  # CLIP-Q: indices into a per-layer integer codebook, not expanded
        index, codebook, w_scale = codebook_weights(m.weight)
        params = {"weight_index": index.to(torch.uint8), "codebook": codebook.to(torch.int16)}
        weight_attrs = {"weight_format": "codebook", "index_bits": int(m.weight_quantizer.index_bits)}
    else:
        codes, w_scale = m.quantize_weight()
        wdtype = torch.int8 if m.code_bits <= 8 else torch.int16
        params = {"weight": codes.to(wdtype)}
    acc_scale = [float(s) * x.scale for s in w_scale.reshape(-1).tolist()]
    per_channel = w_scale.numel() > 1
    # The bias, less the output quantizer's offset (QIL's pruning edge) on the accumulator grid.
    bias = layer_bias_codes(m.bias, activation_offset(m.act_quant), acc_scale, m.weight.shape[0])
    if bias is not None:
        lo, hi = int_range(acc_bits, True)
        if bias.numel() and (bias.min() < lo or bias.max() > hi):
            raise ConfigError(f"layer {node.target!r}: the bias needs more than {acc_bits} bits at scale S_w·S_in; "
                              "use fewer weight/activation bits or a wider accumulator")
        params["bias"] = bias.to(torch.int32 if acc_bits <= 32 else torch.int64)
    acc_name = f"{node.name}_acc" if m.act_quant is not None else node.name
    acc = TensorSpec(acc_name, out_shape, "int", acc_bits, True, acc_scale if per_channel else acc_scale[0], 0)
    split_parameters = getattr(m.weight_quantizer, "split_parameters", None)
    if split_parameters is not None:  # OAQ: the node's "outlier" attr, how storage splits its codes
        weight_attrs = {**weight_attrs, "outlier": split_parameters(m.weight)}
    if isinstance(m, QuantConv2d):
        attrs = {"stride": _pair(m.stride), "padding": m.padding, "dilation": _pair(m.dilation),
                 "groups": m.groups, "weight_bits": m.code_bits, **weight_attrs}
        b.node("Conv2d", acc_name, [x], b.tensor(acc), attrs, params)
    else:
        b.node("Linear", acc_name, [x], b.tensor(acc), {"weight_bits": m.code_bits, **weight_attrs}, params)
    if m.act_quant is not None:
        _check_frozen(m.act_quant, f"{node.target}.act_quant")
    if m.act_quant is None:
        if m.clamp is not None:
            raise ConfigError(f"layer {node.target!r}: a fused {m.clamp} needs an output quantizer")
        return acc
    return b.requant(node.name, acc, _codes_spec(node.name, out_shape, m.act_quant), clamp=m.clamp)


def _lower_concat(b: _Builder, qmodel: fx.GraphModule, node: fx.Node, env, out_shape) -> TensorSpec:
    tensors, dim = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim != 1:
        raise ConfigError(f"concat {node.name!r}: only channel concatenation (dim=1) is supported")
    users = list(node.users)
    fq = module_of(qmodel, users[0]) if len(users) == 1 else None
    if not isinstance(fq, FakeQuantize):
        raise ConfigError(f"concat {node.name!r} must be followed by its requantization point (prepare() adds it)")
    target = _codes_spec(node.name, out_shape, fq)
    parts = []
    for i, t in enumerate(tensors):
        x = env[t]
        if x.dtype != "int" or x.bits > 32:
            raise ConfigError(f"concat {node.name!r}: input {t.name} is not quantized")
        if not x.same_quantization(target):
            x = b.requant(f"{node.name}_in{i}", x, replace(target, name=f"{node.name}_in{i}", shape=x.shape))
        parts.append(x)
    return b.node("Concat", node.name, parts, b.tensor(target))
