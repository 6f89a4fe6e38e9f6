"""Exact rewrites of a traced float model into the few forms the quantizer's passes know.

Each rewrite computes the same numbers as what it replaces:

* functions → modules: `F.relu` / `torch.relu` / `x.relu()` → nn.ReLU, `F.relu6` → nn.ReLU6,
  `F.hardtanh` → nn.Hardtanh, `F.adaptive_avg_pool2d` → nn.AdaptiveAvgPool2d, `torch.flatten(x, 1)` /
  `x.flatten(1)` → nn.Flatten, so that fusion sees one form of each;
* `a + b`, `torch.add(a, b)`, `a += b`, `a.add(b)` of two tensors → a `QuantAdd`;
* AdaptiveAvgPool2d → AvgPool2d with kernel = stride = input size / output size (needs the shapes;
  refused when the output size does not divide the input size, where adaptive bins overlap);
* a Conv2d's padding as explicit (top, left, bottom, right): `padding='same'` (PyTorch puts the odd
  pixel at the bottom / right) and a ZeroPad2d / ConstantPad2d(…, 0) that feeds only this conv.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from bitsmith.errors import ConfigError
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fx_nodes import module_of

#: The padding modules folded into the Conv2d they feed.
PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d)
#: Functions and tensor methods that add two tensors.
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_")


def _arg(node: fx.Node, index: int, name: str, default):
    """Argument `name` of a call, given by position `index` or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _hardtanh(node: fx.Node) -> nn.Module:
    return nn.Hardtanh(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))


def _flatten(node: fx.Node) -> nn.Module:
    # torch.flatten's and Tensor.flatten's start_dim defaults to 0 (the batch too); only 1 is supported.
    return nn.Flatten(_arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


#: call_function target → the module it is (built from the call's arguments).
FUNCTION_MODULES = {
    F.relu: lambda node: nn.ReLU(),
    torch.relu: lambda node: nn.ReLU(),
    F.relu6: lambda node: nn.ReLU6(),
    F.hardtanh: _hardtanh,
    F.adaptive_avg_pool2d: lambda node: nn.AdaptiveAvgPool2d(_arg(node, 1, "output_size", None)),
    torch.flatten: _flatten,
}
#: call_method name → the module it is.
METHOD_MODULES = {"relu": lambda node: nn.ReLU(), "flatten": _flatten}


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple, name: str = ""
                         ) -> fx.Node:
    name = _fresh_name(gm, name or node.name)
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in ADD_METHODS))


def modules_for_functions(gm: fx.GraphModule, config: QuantConfig) -> None:
    """Replace the functional forms above by modules, and every add of two tensors by a QuantAdd."""
    add_names: set[str] = set()
    for node in list(gm.graph.nodes):
        if is_add(node):
            name = _add_name(node, add_names)
            _check_add(node, name)
            # "q_layer1_0_add" as "q_conv1": the quantized form of the float model's "layer1.0.add"
            _replace_with_module(gm, node, QuantAdd(config, name), tuple(node.args[:2]), "q_" + name.replace(".", "_"))
        elif node.op == "call_function" and node.target in FUNCTION_MODULES:
            _replace_with_module(gm, node, FUNCTION_MODULES[node.target](node), (node.args[0],))
        elif node.op == "call_method" and node.target in METHOD_MODULES:
            _replace_with_module(gm, node, METHOD_MODULES[node.target](node), (node.args[0],))


def _add_name(node: fx.Node, taken: set[str]) -> str:
    """The add's name in messages and in the graph: the module whose forward adds, then "add"
    ("layer1.0.add", "layer1.0.add_1" for a second one there), or "add", "add_1", … at the top."""
    stack = node.meta.get("nn_module_stack") or {}
    base = f"{next(reversed(stack))}.add" if stack else "add"
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _check_add(node: fx.Node, name: str) -> None:
    operands = node.args[:2]
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) and a.op != "get_attr" for a in operands):
        raise ConfigError(f"add {name!r} adds a constant ({', '.join(map(repr, node.args))}); bitsmith "
                          "quantizes the sum of two tensors only (fold a constant into a bias instead)")
    extra = {k: v for k, v in node.kwargs.items() if not (k == "alpha" and v == 1)}
    if extra:
        raise ConfigError(f"add {name!r}: torch.add with {extra} is not supported; bitsmith adds two "
                          "tensors with no scaling (alpha=1) and no out=")


# -- shape-dependent rewrites ----------------------------------------------------------------------


def propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...], model_name: str) -> None:
    """Record every node's output shape (node.meta["tensor_meta"]) for a batch of one input of
    `input_shape`; a model that does not run on that shape is a ConfigError that says so."""
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((1,) + tuple(input_shape)))
    except Exception as e:  # torch raises RuntimeError, ValueError, IndexError … for a wrong shape
        raise ConfigError(f"{model_name} does not run on input shape {tuple(input_shape)} (C, H, W): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check the model's "
                          "input_shape and the shape of the calibration batches") from None


def _spatial(node: fx.Node) -> tuple[int, int]:
    shape = node.meta["tensor_meta"].shape
    return int(shape[-2]), int(shape[-1])


def adaptive_pools_to_avgpool(gm: fx.GraphModule) -> None:
    """Every AdaptiveAvgPool2d → the AvgPool2d that computes the same windows (shapes must be known).

    The module is replaced under its own name, so per-layer overrides that name it still apply; a
    module called at several places must pool alike at all of them.
    """
    kernels: dict[str, tuple[tuple[int, int], fx.Node]] = {}
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if not isinstance(m, nn.AdaptiveAvgPool2d):
            continue
        size_in = _spatial(node.args[0])
        size_out = tuple(s if s is not None else i for s, i in zip(_pair_of(m.output_size), size_in))
        if any(i % o for i, o in zip(size_in, size_out)):
            raise ConfigError(f"layer {node.target!r} (AdaptiveAvgPool2d) pools a {size_in[0]} x {size_in[1]} input "
                              f"to {size_out[0]} x {size_out[1]}: the output size must divide the input size "
                              "(then it is an AvgPool2d with kernel = stride = input / output); otherwise its "
                              "windows overlap and differ in size, which the integer graph does not do")
        kernel = (size_in[0] // size_out[0], size_in[1] // size_out[1])
        seen = kernels.setdefault(node.target, (kernel, node))
        if seen[0] != kernel:
            raise ConfigError(f"layer {node.target!r} (AdaptiveAvgPool2d) is called on inputs that need pooling "
                              f"windows {list(seen[0])} and {list(kernel)}; give each call its own module")
    for target, (kernel, _) in kernels.items():
        _set_submodule(gm, target, nn.AvgPool2d(kernel, stride=kernel))


def _pair_of(size) -> tuple:
    return (size, size) if size is None or isinstance(size, int) else tuple(size)


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


# -- convolution padding ------------------------------------------------------------------------------


def conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The conv's own zero padding as (top, left, bottom, right); 'same' as PyTorch pads it."""
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":
        # torch.nn.Conv2d: total d·(k − 1) per axis, the smaller half first (top / left).
        (th, tw) = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        return th // 2, tw // 2, th - th // 2, tw - tw // 2
    ph, pw = conv.padding
    return ph, pw, ph, pw


def pad_module_pads(pad: nn.Module) -> tuple[int, int, int, int]:
    """A ZeroPad2d / ConstantPad2d's padding as (top, left, bottom, right) (PyTorch stores
    (left, right, top, bottom))."""
    left, right, top, bottom = pad.padding
    return top, left, bottom, right


def folded_padding(gm: fx.GraphModule, conv_node: fx.Node) -> tuple[tuple[int, int, int, int], fx.Node | None]:
    """(the conv's total padding, the pad node folded into it or None): a ZeroPad2d right before the
    conv whose only user is the conv adds its padding to the conv's."""
    pads = conv_pads(module_of(gm, conv_node))
    src = conv_node.args[0]
    if isinstance(module_of(gm, src), PAD_MODULES) and len(src.users) == 1:
        extra = pad_module_pads(module_of(gm, src))
        return tuple(p + e for p, e in zip(pads, extra)), src
    return pads, None
