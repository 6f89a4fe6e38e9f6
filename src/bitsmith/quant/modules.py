"""Quantized compute layers: Conv2d / Linear (BN folded, ReLU fused) with fake-quant weights.

Each layer owns the quantizer of its *output* activation (`act_quant`), or none when its
accumulator is the graph output. `input_scale` (set when the model is frozen) lets the bias be
rounded exactly as the integer graph stores it: to an int32 at scale S_w·S_in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.quant.fake_quant import FakeQuantize, fake_quantize_weight, weight_scale


class QuantLayer(nn.Module):
    """Shared part of QuantConv2d and QuantLinear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool, weight_bits: int,
                 per_channel: bool, act_quant: FakeQuantize | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.relu = relu
        self.weight_bits = weight_bits
        self.per_channel = per_channel
        self.act_quant = act_quant
        self.register_buffer("input_scale", torch.tensor(0.0))  # 0 = not frozen yet

    def _linear_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def quantized_bias(self) -> torch.Tensor | None:
        if self.bias is None or float(self.input_scale) == 0.0:
            return self.bias
        step = weight_scale(self.weight, self.weight_bits, self.per_channel).to(torch.float64) * float(self.input_scale)
        q = torch.round(self.bias.detach().to(torch.float64) / step)
        return self.bias + ((q * step).to(self.bias.dtype) - self.bias).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize_weight(self.weight, self.weight_bits, self.per_channel)
        y = self._linear_op(x, w, self.quantized_bias())
        if self.relu:
            y = F.relu(y)
        return self.act_quant(y) if self.act_quant is not None else y


class QuantConv2d(QuantLayer):
    def __init__(self, conv: nn.Conv2d, weight, bias, **kw) -> None:
        super().__init__(weight, bias, **kw)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            from bitsmith.errors import ConfigError

            raise ConfigError(f"conv padding {conv.padding!r} / mode {conv.padding_mode!r}: only explicit zero padding is supported")

    def _linear_op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayer):
    def _linear_op(self, x, w, b):
        return F.linear(x, w, b)
