"""Post-training quantization: prepare, calibrate on a few batches, freeze."""

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


def freeze(qmodel: fx.GraphModule) -> None:
    """Fix every activation scale from its observer and tell each layer its input scale."""
    for name, m in qmodel.named_modules():
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
