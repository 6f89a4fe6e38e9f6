"""Turn a float model into a fake-quantized one (the model that `bitsmith.lower` reads).

Passes over the torch.fx graph, in order:
1. check what the model calls (bitsmith.quant.support) and rewrite functional forms into modules and
   every add of two tensors into a QuantAdd (bitsmith.quant.rewrite);
2. drop Dropout (inference semantics); with the input shape known, turn AdaptiveAvgPool2d into AvgPool2d;
3. fold each BatchNorm into the Conv2d / Linear before it and fuse a following ReLU, ReLU6 or Hardtanh,
   replacing them with one QuantConv2d / QuantLinear (a ZeroPad2d before a conv joins its padding);
   fuse a clamp after an add into its QuantAdd;
4. put a FakeQuantize on the input, and after every AvgPool2d and torch.cat (their results leave
   the integer grid of their inputs and are requantized);
5. give every compute layer an output quantizer, except a layer whose accumulator is the graph
   output (reached through Flatten only) when `requantize_output` is off; every add has one.

Per-layer overrides (QuantConfig.layers) are looked up by the float model's module names, which
are only known here, so their names are checked here too.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx as fx
from torch import nn

from bitsmith.errors import BitsmithWarning, ConfigError
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.config import WEIGHT_KEYS, QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.fx_nodes import module_of, only_user
from bitsmith.quant.modules import QuantConv2d, QuantLayer, QuantLinear
from bitsmith.quant.requant import Clamp
from bitsmith.quant.rewrite import (adaptive_pools_to_avgpool, folded_padding, modules_for_functions,
                                    propagate_shapes)
from bitsmith.quant.support import (DROPOUT_MODULES, LEAF_TYPES, SHAPE_ONLY, check_add_shapes, check_fused,
                                    check_module_calls, check_supported)

__all__ = ["module_of", "prepare", "quantizable_layers", "trace"]


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


def float32_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose parameters and buffers are float32 (the float model is never
    modified); a float64 (or half) model is converted, with a BitsmithWarning saying so."""
    model = copy.deepcopy(model).eval()
    other = sorted({str(t.dtype).replace("torch.", "") for t in [*model.parameters(), *model.buffers()]
                    if t.is_floating_point() and t.dtype != torch.float32})
    if other:
        warnings.warn(f"{type(model).__name__} has {', '.join(other)} parameters or buffers; bitsmith quantizes a "
                      "float32 copy of it (calibration batches are converted to float32 too)", BitsmithWarning,
                      stacklevel=3)
        model = model.float()
    return model


def prepare(model: nn.Module, config: QuantConfig, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """The fake-quantized copy of `model`, not yet calibrated. `input_shape` (C, H, W; default:
    `model.input_shape`) lets the passes that need shapes run (AdaptiveAvgPool2d) and checks that the
    model runs on it."""
    model = float32_copy(model)
    gm = trace(model)
    check_module_calls(gm)
    modules_for_functions(gm, config)
    check_supported(gm)
    check_layer_overrides(model, config)
    _drop_dropout(gm)
    input_shape = input_shape or getattr(model, "input_shape", None)
    if input_shape is not None:
        propagate_shapes(gm, input_shape, type(model).__name__)
        check_add_shapes(gm)
        adaptive_pools_to_avgpool(gm)
    elif any(isinstance(module_of(gm, n), nn.AdaptiveAvgPool2d) for n in gm.graph.nodes):
        raise ConfigError(f"{type(model).__name__} has an AdaptiveAvgPool2d, whose window depends on the input "
                          "size: give the model an input_shape attribute (C, H, W) or pass input_shape=")
    _fuse_compute_layers(gm, config)
    check_fused(gm)
    _insert_activation_quantizers(gm, config)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.bitsmith_config = config
    return gm


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear modules: the layers QuantConfig.layers may address."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_layer_overrides(model: nn.Module, config: QuantConfig) -> None:
    """Every override names a Conv2d / Linear (any setting), an AvgPool2d / AdaptiveAvgPool2d or "input"
    (activation settings only: they own a requantization point but no weights)."""
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
        if m is not None and not isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            raise ConfigError(f"layers[{name!r}]: {name!r} is {kind}, which has no quantizer of its own (it keeps "
                              f"the grid of its input or is folded into the layer before it); set the layer that "
                              f"produces its input instead; {listing}")


def _drop_dropout(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if isinstance(module_of(gm, node), DROPOUT_MODULES + (nn.Identity,)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W' = W·γ/σ, b' = (b − μ)·γ/σ + β with σ = sqrt(var + eps), per output channel."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    w = weight * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
    b = (bias if bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    return w.detach(), (b * factor + beta).detach()


def fused_clamp(m: nn.Module | None) -> Clamp | None:
    """The Clamp a ReLU / ReLU6 / Hardtanh module computes, None for any other module."""
    if isinstance(m, nn.ReLU):
        return Clamp.relu()
    if isinstance(m, nn.ReLU6):
        return Clamp("ReLU6", 0.0, 6.0)
    if isinstance(m, nn.Hardtanh):
        return Clamp(f"Hardtanh({m.min_val:g}, {m.max_val:g})", float(m.min_val), float(m.max_val))
    return None


def _fuse_compute_layers(gm: fx.GraphModule, config: QuantConfig) -> None:
    for node in list(gm.graph.nodes):
        layer = module_of(gm, node)
        if isinstance(layer, QuantAdd):
            _fuse_add_clamp(gm, node, layer)
            continue
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        tail = node
        nxt = only_user(tail)
        bn_type = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
        if nxt is not None and isinstance(module_of(gm, nxt), bn_type):
            weight, bias = _fold_bn(weight, bias, module_of(gm, nxt))
            tail = nxt
            nxt = only_user(tail)
        clamp = fused_clamp(module_of(gm, nxt)) if nxt is not None else None
        if clamp is not None:
            tail = nxt
        settings = config.for_layer(node.target)
        kw = dict(clamp=clamp, weight_bits=settings["weight_bits"], per_channel=settings["per_channel"],
                  act_quant=None, weight_observer=settings["weight_observer"], scale_mode=config.scale_mode,
                  weight_format=config.weight_format, float_name=node.target)
        source, pad_node = node.args[0], None
        if isinstance(layer, nn.Conv2d):
            pads, pad_node = folded_padding(gm, node)
            source = pad_node.args[0] if pad_node is not None else source
            qlayer = QuantConv2d(layer, weight, bias, pads, **kw)
        else:
            qlayer = QuantLinear(weight, bias, **kw)
        name = "q_" + node.target.replace(".", "_")
        gm.add_submodule(name, qlayer)
        with gm.graph.inserting_after(tail):
            new = gm.graph.call_module(name, (source,))
        tail.replace_all_uses_with(new)
        chain = [tail]
        while chain[-1] is not node:
            chain.append(chain[-1].args[0])
        for old in chain + ([pad_node] if pad_node is not None else []):  # erase from the end backwards
            gm.graph.erase_node(old)


def _fuse_add_clamp(gm: fx.GraphModule, node: fx.Node, add: QuantAdd) -> None:
    """A ReLU / ReLU6 / Hardtanh that is the add's only user becomes the add's clamp."""
    nxt = only_user(node)
    clamp = fused_clamp(module_of(gm, nxt)) if nxt is not None else None
    if clamp is not None:
        add.clamp = clamp
        nxt.replace_all_uses_with(node)
        gm.graph.erase_node(nxt)


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
            if config.requantize_output or m.clamp is not None or not _reaches_output_through_shape_ops(gm, node):
                m.act_quant = activation_quantizer(config, m.float_name)
        elif isinstance(m, QuantAdd):
            m.act_quant = activation_quantizer(config, None)
        elif isinstance(m, nn.AvgPool2d):
            _insert_after(gm, node, f"{node.name}_requant", activation_quantizer(config, node.target))
        elif node.op == "call_function" and node.target is torch.cat:
            _insert_after(gm, node, f"{node.name}_requant", activation_quantizer(config, None))
