"""Post-training quantization: prepare, fix the weight scales, calibrate on a few batches, freeze.

The weight scales are fixed before calibration, so the activations the observers see are those
of the final quantized weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn

from bitsmith import progress
from bitsmith.errors import ConfigError
from bitsmith.models import Reorg
from bitsmith.quant.add import Grid, QuantAdd
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.fx_nodes import module_of
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import prepare


def quantize(model: nn.Module, calib_data: Iterable, config: QuantConfig | None = None) -> fx.GraphModule:
    """Return a calibrated fake-quantized copy of `model` (the float model is left untouched).

    `calib_data` yields float input batches, or (inputs, labels) pairs, all of one shape; it must
    match `model.input_shape` when the model has one, and is the quantized model's input shape when not.
    """
    config = config or QuantConfig()
    batches = (_inputs(batch) for batch in calib_data)
    first = next(batches, None)
    if first is None:
        raise ConfigError("calibration data is empty; pass at least one batch of inputs")
    shape = calibration_shape(model, first)
    qmodel = prepare(model, config, input_shape=shape)
    qmodel.input_shape = shape
    freeze_weights(qmodel)
    total = len(calib_data) if hasattr(calib_data, "__len__") else None
    with torch.no_grad():
        for x in progress.steps(itertools.chain([first], batches), "calibrating", total=total):
            if tuple(x.shape[1:]) != shape:
                raise ConfigError(f"calibration batches differ in shape: {tuple(x.shape[1:])} after {shape}")
            qmodel(x)
    freeze(qmodel)
    return qmodel


def _inputs(batch) -> torch.Tensor:
    """The float32 input tensor of a calibration batch (or of an (inputs, labels) pair)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ConfigError(f"a calibration batch must be a tensor [N, C, H, W] (or [N, features]), got "
                          f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else list(x.shape)}")
    return x.float() if x.is_floating_point() else x


def calibration_shape(model: nn.Module, batch: torch.Tensor) -> tuple[int, ...]:
    """The input shape the calibration batches give, checked against the model's `input_shape`."""
    shape = tuple(int(d) for d in batch.shape[1:])
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != shape:
        raise ConfigError(f"{type(model).__name__} expects input shape {tuple(expected)} (its input_shape, C, H, W) "
                          f"but the calibration batches have shape {shape}; bring the images to "
                          f"{tuple(expected)} (e.g. load_dataset batches through bitsmith.data) or rebuild the "
                          "model for this shape")
    return shape


def freeze_weights(qmodel: fx.GraphModule) -> None:
    """Fix every layer's weight scale (weight observer, power of two or Q-format)."""
    for m in qmodel.modules():
        if isinstance(m, QuantLayer):
            m.freeze_weights()


def freeze(qmodel: fx.GraphModule) -> None:
    """Fix every weight scale not yet fixed and every activation scale from its observer, and
    tell each layer its input scale and each add the grids of its inputs."""
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantLayer) and not m.weights_frozen:
            m.freeze_weights()
        if isinstance(m, FakeQuantize):
            m.freeze(name)
    for node in qmodel.graph.nodes:
        m = module_of(qmodel, node)
        if isinstance(m, QuantLayer):
            m.input_scale = input_quantizer(qmodel, node).scale.clone()
        elif isinstance(m, QuantAdd):
            m.input_grids = add_input_grids(qmodel, node)


def input_quantizer(qmodel: fx.GraphModule, node: fx.Node) -> FakeQuantize:
    """The quantizer whose grid the input of layer `node` lies on."""
    return grid_quantizer(qmodel, node.args[0], f"layer {node.target!r}")


def add_input_grids(qmodel: fx.GraphModule, node: fx.Node) -> tuple[Grid, Grid]:
    """The grids of the two inputs of the QuantAdd `node`, at the quantizers' current scales."""
    what = f"add {module_of(qmodel, node).name!r}"
    return tuple(Grid.of(grid_quantizer(qmodel, arg, what)) for arg in node.args)


def grid_quantizer(qmodel: fx.GraphModule, src: fx.Node, reader: str) -> FakeQuantize:
    """The quantizer whose grid the value of `src` lies on (looking through max-pool and shape ops);
    `reader` names who asks, for the error."""
    while True:
        m = module_of(qmodel, src)
        if isinstance(m, FakeQuantize):
            return m
        if isinstance(m, (QuantLayer, QuantAdd)) and m.act_quant is not None:
            return m.act_quant
        if isinstance(m, (nn.MaxPool2d, nn.Flatten, Reorg)):
            src = src.args[0]
            continue
        raise ConfigError(f"{reader}: its input ({src.name}) is not on an integer grid")


def set_activation_quantization(qmodel: fx.GraphModule, enabled: bool) -> None:
    """Switch every activation quantizer on or off (off: activations stay float, weights stay
    quantized — a weight-only experiment; such a model cannot be lowered)."""
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize):
            m.enabled = enabled
