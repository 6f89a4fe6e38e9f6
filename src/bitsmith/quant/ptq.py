"""Post-training quantization: prepare, fix the weight scales, calibrate on a few batches, freeze.

The weight scales are fixed before calibration, so the activations the observers see are those
of the final quantized weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models import Reorg
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of, prepare


def quantize(model: nn.Module, calib_data: Iterable, config: QuantConfig | None = None) -> fx.GraphModule:
    """Return a calibrated fake-quantized copy of `model` (the float model is left untouched).

    `calib_data` yields float input batches, or (inputs, labels) pairs.
    """
    config = config or QuantConfig()
    qmodel = prepare(model, config)
    freeze_weights(qmodel)
    batches = 0
    with torch.no_grad():
        for batch in calib_data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            qmodel(x)
            batches += 1
    if batches == 0:
        raise ConfigError("calibration data is empty; pass at least one batch of inputs")
    freeze(qmodel)
    return qmodel


def freeze_weights(qmodel: fx.GraphModule) -> None:
    """Fix every layer's weight scale (weight observer, power of two or Q-format)."""
    for m in qmodel.modules():
        if isinstance(m, QuantLayer):
            m.freeze_weights()


def freeze(qmodel: fx.GraphModule) -> None:
    """Fix every weight scale not yet fixed and every activation scale from its observer, and
    tell each layer its input scale."""
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantLayer) and not m.weights_frozen:
            m.freeze_weights()
        if isinstance(m, FakeQuantize):
            m.freeze(name)
    for node in qmodel.graph.nodes:
        layer = module_of(qmodel, node)
        if isinstance(layer, QuantLayer):
            layer.input_scale = input_quantizer(qmodel, node).scale.clone()


def input_quantizer(qmodel: fx.GraphModule, node: fx.Node) -> FakeQuantize:
    """The quantizer whose grid the input of `node` lies on (looking through max-pool and shape ops)."""
    src = node.args[0]
    while True:
        m = module_of(qmodel, src)
        if isinstance(m, FakeQuantize):
            return m
        if isinstance(m, QuantLayer) and m.act_quant is not None:
            return m.act_quant
        if isinstance(m, (nn.MaxPool2d, nn.Flatten, Reorg)):
            src = src.args[0]
            continue
        raise ConfigError(f"layer {node.target!r}: its input ({src.name}) is not on an integer grid")


def set_activation_quantization(qmodel: fx.GraphModule, enabled: bool) -> None:
    """Switch every activation quantizer on or off (off: activations stay float, weights stay
    quantized — a weight-only experiment; such a model cannot be lowered)."""
    for m in qmodel.modules():
        if isinstance(m, FakeQuantize):
            m.enabled = enabled
