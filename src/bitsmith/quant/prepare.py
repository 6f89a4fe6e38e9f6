"""Turn a float model into a fake-quantized one (the model that `bitsmith.lower` reads).

Passes over the torch.fx graph, in order:
1. drop Dropout (inference semantics);
2. fold each BatchNorm into the Conv2d / Linear before it and fuse a following ReLU, replacing the
   three with one QuantConv2d / QuantLinear;
3. put a FakeQuantize on the input, and after every AvgPool2d and torch.cat (their results leave
   the integer grid of their inputs and are requantized);
4. give every compute layer an output quantizer, except a layer whose accumulator is the graph
   output (reached through Flatten only) when `requantize_output` is off.

Per-layer overrides (QuantConfig.layers) are looked up by the float model's module names, which
are only known here, so their names are checked here too.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models import Reorg
from bitsmith.quant.config import WEIGHT_KEYS, QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantConv2d, QuantLayer, QuantLinear

LEAF_TYPES = (Reorg, FakeQuantize, QuantLayer)
SHAPE_ONLY = (nn.Flatten, nn.Identity)
SUPPORTED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
                     nn.Flatten, nn.Dropout, nn.Identity) + LEAF_TYPES


class QuantTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = QuantTracer().trace(model)
    except Exception as e:  # fx raises many types for untraceable code
        raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx ({e}); bitsmith quantizes "
                          "models built from the zoo's layer types without data-dependent control flow") from None
    gm = fx.GraphModule(model, graph)
    for attr in ("input_shape", "num_classes", "spec"):
        if hasattr(model, attr):
            setattr(gm, attr, getattr(model, attr))
    return gm


def prepare(model: nn.Module, config: QuantConfig) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    gm = trace(model)
    _check_supported(gm)
    check_layer_overrides(model, config)
    _drop_dropout(gm)
    _fuse_compute_layers(gm, config)
    _insert_activation_quantizers(gm, config)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.bitsmith_config = config
    return gm


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _check_supported(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module" and not isinstance(module_of(gm, node), SUPPORTED_MODULES):
            raise ConfigError(f"layer {node.target!r} is a {type(module_of(gm, node)).__name__}, which bitsmith cannot "
                              f"quantize; supported: {', '.join(t.__name__ for t in SUPPORTED_MODULES)}")
        if node.op == "call_function" and node.target not in (torch.cat, operator.getitem):
            raise ConfigError(f"operation {node.name!r} ({getattr(node.target, '__name__', node.target)}) is not "
                              "supported; use module layers (nn.ReLU, nn.Flatten, ...) and torch.cat only")
        if node.op == "call_method":
            raise ConfigError(f"tensor method .{node.target}() at {node.name!r} is not supported; use nn.Flatten "
                              "instead of view/flatten/reshape")


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear modules: the layers QuantConfig.layers may address."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_layer_overrides(model: nn.Module, config: QuantConfig) -> None:
    """Every override names a Conv2d / Linear (any setting), an AvgPool2d or "input" (activation
    settings only: they own a requantization point but no weights)."""
    modules = dict(model.named_modules())
    allowed = quantizable_layers(model)
    listing = f"allowed layers: {', '.join(allowed + ['input'])}"
    for name, override in config.layers.items():
        m = None if name == "input" else modules.get(name)
        if name != "input" and (m is None or name == ""):
            raise ConfigError(f"layers: {name!r} is not a layer of {type(model).__name__}; {listing}")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        kind = "the input quantizer" if m is None else f"a {type(m).__name__}"
        weight_keys = [k for k in override if k in WEIGHT_KEYS]
        if weight_keys:
            raise ConfigError(f"layers[{name!r}]: {', '.join(weight_keys)}: per-channel and the other weight settings "
                              f"apply to Conv2d/Linear weights, and {name!r} is {kind}, which has none; {listing}")
        if m is not None and not isinstance(m, nn.AvgPool2d):
            raise ConfigError(f"layers[{name!r}]: {name!r} is {kind}, which has no quantizer of its own (it keeps "
                              f"the grid of its input or is folded into the layer before it); set the layer that "
                              f"produces its input instead; {listing}")


def _drop_dropout(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if isinstance(module_of(gm, node), (nn.Dropout, nn.Identity)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W' = W·γ/σ, b' = (b − μ)·γ/σ + β with σ = sqrt(var + eps), per output channel."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    w = weight * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
    b = (bias if bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    return w.detach(), (b * factor + beta).detach()


def _fuse_compute_layers(gm: fx.GraphModule, config: QuantConfig) -> None:
    for node in list(gm.graph.nodes):
        layer = module_of(gm, node)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        tail = node
        nxt = _only_user(tail)
        bn_type = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
        if nxt is not None and isinstance(module_of(gm, nxt), bn_type):
            weight, bias = _fold_bn(weight, bias, module_of(gm, nxt))
            tail = nxt
            nxt = _only_user(tail)
        relu = nxt is not None and isinstance(module_of(gm, nxt), nn.ReLU)
        if relu:
            tail = nxt
        settings = config.for_layer(node.target)
        kw = dict(relu=relu, weight_bits=settings["weight_bits"], per_channel=settings["per_channel"], act_quant=None,
                  weight_observer=settings["weight_observer"], scale_mode=config.scale_mode,
                  weight_format=config.weight_format, float_name=node.target)
        qlayer = (QuantConv2d(layer, weight, bias, **kw) if isinstance(layer, nn.Conv2d)
                  else QuantLinear(weight, bias, **kw))
        name = "q_" + node.target.replace(".", "_")
        gm.add_submodule(name, qlayer)
        with gm.graph.inserting_after(tail):
            new = gm.graph.call_module(name, (node.args[0],))
        tail.replace_all_uses_with(new)
        chain = [tail]
        while chain[-1] is not node:
            chain.append(chain[-1].args[0])
        for old in chain:  # erase from the end of the chain backwards
            gm.graph.erase_node(old)
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            raise ConfigError(f"BatchNorm {node.target!r} does not directly follow a Conv2d/Linear with a single "
                              "user, so it cannot be folded")
        if isinstance(m, nn.ReLU):
            raise ConfigError(f"ReLU {node.target!r} does not directly follow a Conv2d, Linear or BatchNorm; "
                              "bitsmith fuses ReLU into the layer before it, so place it right after one")


def _reaches_output_through_shape_ops(gm: fx.GraphModule, node: fx.Node) -> bool:
    users = list(node.users)
    if not users:
        return False
    for user in users:
        if user.op == "output":
            continue
        if isinstance(module_of(gm, user), SHAPE_ONLY) and _reaches_output_through_shape_ops(gm, user):
            continue
        return False
    return True


def _insert_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> fx.Node:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new


def activation_quantizer(config: QuantConfig, layer: str | None, rounding: str = "half_up") -> FakeQuantize:
    """A FakeQuantize with the settings of `layer` (a float module name, "input", or None); the input
    rounds as QuantizeInput (half to even), every other point as a Requant (half up)."""
    s = config.for_layer(layer)
    return FakeQuantize(s["act_bits"], s["observer"], symmetric=s["act_symmetric"], pot=config.scale_mode != "float",
                        qformat=config.act_format, rounding=rounding)


def _insert_activation_quantizers(gm: fx.GraphModule, config: QuantConfig) -> None:
    for node in list(gm.graph.nodes):
        m = module_of(gm, node)
        if node.op == "placeholder":
            _insert_after(gm, node, "input_quant", activation_quantizer(config, "input", rounding="half_even"))
        elif isinstance(m, QuantLayer):
            if config.requantize_output or m.relu or not _reaches_output_through_shape_ops(gm, node):
                m.act_quant = activation_quantizer(config, m.float_name)
        elif isinstance(m, nn.AvgPool2d):
            _insert_after(gm, node, f"{node.name}_requant", activation_quantizer(config, node.target))
        elif node.op == "call_function" and node.target is torch.cat:
            _insert_after(gm, node, f"{node.name}_requant", activation_quantizer(config, None))
