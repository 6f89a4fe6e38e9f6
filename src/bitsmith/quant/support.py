"""What the quantizer accepts, and a ConfigError naming the module (name and type) for everything else.

The modules below (after the functional forms have become modules, bitsmith.quant.rewrite) are the
ones bitsmith lowers; docs/user-guide.md ("Bring your own model") has the same table for users, and
tests/quant/test_modules_table.py checks every row. The checks run on the traced float model, before
calibration, so a model bitsmith cannot lower fails in a second with a message that says why.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from bitsmith.errors import ConfigError
from bitsmith.models import Reorg
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.fx_nodes import module_of
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.rewrite import PAD_MODULES

#: Modules the tracer keeps whole (never traced into).
LEAF_TYPES = (Reorg, FakeQuantize, QuantLayer, QuantAdd)
#: Modules that only reshape (codes unchanged).
SHAPE_ONLY = (nn.Flatten, nn.Identity)
#: Clamping activations, fused into the Requant of the layer or add before them (ReLU6 is a Hardtanh).
CLAMP_MODULES = (nn.ReLU, nn.Hardtanh)
#: Dropout of every kind: the identity at inference.
DROPOUT_MODULES = (_DropoutNd,)
SUPPORTED_MODULES = ((nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d) + CLAMP_MODULES
                     + (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)
                     + DROPOUT_MODULES + PAD_MODULES + LEAF_TYPES)
#: Functions left in the graph after the rewrites: channel concatenation (and getitem with an integer,
#: which fx records for indexing a module's tuple output; a slice is refused).
SUPPORTED_FUNCTIONS = (torch.cat, operator.getitem)

_CURVE = ("a smooth curve, not a clamp: the integer graph has no lookup-table op, so it cannot be computed "
          "exactly on codes; use ReLU, ReLU6 or Hardtanh and retrain")
#: Modules refused with the reason.
REFUSED: dict[type, str] = {
    nn.LeakyReLU: ("it scales negative inputs by a second factor, which needs a second requantization multiplier "
                   "in every back end; not supported (docs/arithmetic.md, 'Not supported: LeakyReLU'): use ReLU "
                   "and retrain"),
    nn.PReLU: "its learned negative slope needs a second requantization multiplier (as LeakyReLU); use ReLU",
    **{t: _CURVE for t in (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU,
                           nn.Mish, nn.Softplus, nn.Softmax, nn.LogSoftmax)},
    nn.Upsample: "the integer graph has no upsampling op",
    nn.ConvTranspose2d: "the integer graph has no transposed convolution",
    nn.AdaptiveMaxPool2d: "only AdaptiveAvgPool2d is rewritten into a pool the integer graph has",
}


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """"layer 'name' (Type)" for messages."""
    return f"layer {node.target!r} ({type(module_of(gm, node)).__name__})"


def check_module_calls(gm: fx.GraphModule) -> None:
    """A module with parameters or statistics (Conv2d, Linear, BatchNorm) may be called once: each call
    is a layer of the graph with its own weights, scales and requantization. Stateless modules (ReLU,
    pools, Flatten) may be reused, as torchvision models reuse `self.relu`."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for target, n in calls.items():
        m = gm.get_submodule(target)
        stateful = next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        if n > 1 and stateful and not isinstance(m, LEAF_TYPES):
            raise ConfigError(f"layer {target!r} ({type(m).__name__}) is called {n} times; give each call its own "
                              "module (bitsmith quantizes each call as a layer with its own weights and scales)")


def check_supported(gm: fx.GraphModule) -> None:
    """Every node is a supported module, torch.cat or a QuantAdd (adds were rewritten already)."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            _check_module(gm, node)
        elif node.op == "call_function" and node.target is operator.getitem and not isinstance(node.args[1], int):
            raise ConfigError(f"operation {node.name!r} slices a tensor ({node.args[0].name}[{node.args[1]}]); "
                              "slicing is not supported (the integer graph has no slice op)")
        elif node.op == "call_function" and node.target not in SUPPORTED_FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            raise ConfigError(f"operation {node.name!r} ({name}) is not supported; bitsmith quantizes the modules "
                              "and functions listed in docs/user-guide.md (Bring your own model): Conv2d, Linear, "
                              "BatchNorm, ReLU / ReLU6 / Hardtanh (or F.relu, F.relu6, F.hardtanh), pools, "
                              "Flatten (or torch.flatten(x, 1)), torch.cat and the sum of two tensors")
        elif node.op == "call_method":
            raise ConfigError(f"tensor method .{node.target}() at {node.name!r} is not supported; use nn.Flatten or "
                              "torch.flatten(x, 1) instead of view/reshape, and modules for the rest")


def _check_module(gm: fx.GraphModule, node: fx.Node) -> None:
    m = module_of(gm, node)
    what = describe(gm, node)
    for kind, reason in REFUSED.items():
        if isinstance(m, kind):
            raise ConfigError(f"{what} is not supported: {reason}")
    if not isinstance(m, SUPPORTED_MODULES):
        raise ConfigError(f"{what} is a module bitsmith cannot quantize; supported: "
                          f"{', '.join(t.__name__ for t in SUPPORTED_MODULES)}")
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and not m.track_running_stats:
        raise ConfigError(f"{what} has track_running_stats=False: it normalises every batch with that batch's own "
                          "statistics, so there are no running statistics to fold into the layer before it; "
                          "train it with track_running_stats=True")
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise ConfigError(f"{what} has padding_mode={m.padding_mode!r}: the integer graph pads with zeros only "
                          "(padding_mode='zeros')")
    if isinstance(m, nn.MaxPool2d) and (_pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode):
        raise ConfigError(f"{what}: only padding 0, dilation 1 and ceil_mode=False are supported")
    if isinstance(m, nn.AvgPool2d) and (_pair(m.padding) != (0, 0) or m.ceil_mode or m.divisor_override):
        raise ConfigError(f"{what}: only padding 0, ceil_mode=False and no divisor_override are supported")
    if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1):
        raise ConfigError(f"{what}: only start_dim=1, end_dim=-1 is supported (keep the batch dimension, "
                          "flatten the rest)")
    if isinstance(m, PAD_MODULES) and (getattr(m, "value", 0) != 0 or min(m.padding) < 0):
        raise ConfigError(f"{what}: only zero padding (value 0, no negative pads) is supported; it is folded "
                          "into the Conv2d it feeds")


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def check_add_shapes(gm: fx.GraphModule) -> None:
    """Both inputs of every add have one shape (after shape propagation): the graph's Add does not
    broadcast."""
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if isinstance(m, QuantAdd):
            a, b = (tuple(arg.meta["tensor_meta"].shape[1:]) for arg in node.args)
            if a != b:
                raise ConfigError(f"add {m.name!r} adds tensors of shapes {list(a)} and {list(b)}; the integer graph "
                                  "adds tensors of one shape (no broadcasting)")


def check_fused(gm: fx.GraphModule) -> None:
    """After fusion: what is left of BatchNorm, clamps and pads could not be folded; say why."""
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        what = describe(gm, node) if m is not None else ""
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            raise ConfigError(f"{what} does not directly follow a Conv2d/Linear with a single user, so it cannot "
                              "be folded")
        if isinstance(m, CLAMP_MODULES):
            raise ConfigError(f"{what} does not directly follow a Conv2d, Linear, BatchNorm or add; bitsmith fuses "
                              "it into the requantization of the layer before it, so place it right after one")
        if isinstance(m, PAD_MODULES):
            raise ConfigError(f"{what} does not feed a single Conv2d; bitsmith folds zero padding into the padding "
                              "of the Conv2d it feeds (its only user)")
