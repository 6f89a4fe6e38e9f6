"""Quantized compute layers: Conv2d / Linear (BN folded, a clamping activation fused) with fake-quant weights.

Each layer owns the quantizer of its *output* activation (`act_quant`), or none when its
accumulator is the graph output. `input_scale` (set when the model is frozen) lets the bias be
rounded exactly as the integer graph stores it: to an int32 at scale S_w·S_in.

Weight scales: after `freeze_weights()` the layer keeps its weight scale in the `weight_scale`
buffer (chosen by the weight observer, rounded to a power of two, or fixed by a Q-format) and
both the fake-quant forward pass and `quantize_weight()` (what lowering writes) use it, so the
two see the same integer codes. Before that (or after `unfreeze_weights()`, for training) the
scale is recomputed from max|W| on every forward pass.

Quantization-aware training plugs in a `weight_quantizer` (an nn.Module, see
bitsmith.quant.qat): when set, it alone decides the weights — `weight_quantizer(w)` is the
fake-quant forward (with its own straight-through gradients) and
`weight_quantizer.integer_weights(w) -> (codes, scale)` gives the integers lowering writes, with
`weight_quantizer.code_bits` their signed width. Both must describe the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.quant.config import QFormat
from bitsmith.quant.fake_quant import FakeQuantize, fake_quantize_weight, quantize_weight, weight_qparams
from bitsmith.quant.fake_quant import weight_scale as minmax_weight_scale
from bitsmith.quant.requant import Clamp


class QuantLayer(nn.Module):
    """Shared part of QuantConv2d and QuantLinear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, clamp: Clamp | None, weight_bits: int,
                 per_channel: bool, act_quant: FakeQuantize | None, weight_observer: str = "minmax",
                 scale_mode: str = "float", weight_format: QFormat | None = None, float_name: str = "") -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.clamp = clamp  # the fused ReLU / ReLU6 / Hardtanh, or None
        self.weight_bits = weight_bits
        self.per_channel = per_channel
        self.weight_observer = weight_observer
        self.scale_mode = scale_mode
        self.weight_format = weight_format
        self.float_name = float_name  # the Conv2d / Linear of the float model this layer came from
        self.act_quant = act_quant
        self.fake_quant_weights = True  # False: float weights (e.g. to observe float activation ranges)
        self.weight_quantizer: nn.Module | None = None  # QAT methods: see the module docstring
        self.register_buffer("weight_scale", torch.empty(0))  # empty = not frozen: recomputed from max|W|
        self.register_buffer("input_scale", torch.tensor(0.0))  # 0 = not frozen yet

    def _linear_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weights_frozen(self) -> bool:
        return self.weight_scale.numel() > 0

    @property
    def full_range_weights(self) -> bool:
        """Q-format weights use the full signed code range (Q3.5: −128 … 127)."""
        return self.weight_format is not None

    def freeze_weights(self) -> None:
        """Choose and keep the weight scale (weight observer, pot rounding or Q-format)."""
        self.weight_scale = weight_qparams(self.weight, self.weight_bits, self.per_channel, self.weight_observer,
                                           self.scale_mode, self.weight_format)

    def unfreeze_weights(self) -> None:
        self.weight_scale = torch.empty(0)

    @property
    def code_bits(self) -> int:
        """Signed width of the integer weight codes lowering writes."""
        return self.weight_quantizer.code_bits if self.weight_quantizer is not None else self.weight_bits

    def current_weight_scale(self) -> torch.Tensor:
        if self.weight_quantizer is not None:
            return self.weight_quantizer.integer_weights(self.weight)[1]
        return self.weight_scale if self.weights_frozen else minmax_weight_scale(self.weight, self.weight_bits,
                                                                                 self.per_channel)

    def quantize_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer weight codes, scale): exactly the codes the forward pass rounds the weights to."""
        if self.weight_quantizer is not None:
            return self.weight_quantizer.integer_weights(self.weight)
        return quantize_weight(self.weight, self.weight_bits, self.per_channel, self.current_weight_scale(),
                               self.full_range_weights)

    def quantized_bias(self) -> torch.Tensor | None:
        if self.bias is None or float(self.input_scale) == 0.0:
            return self.bias
        step = self.current_weight_scale().to(torch.float64) * float(self.input_scale)
        q = torch.round(self.bias.detach().to(torch.float64) / step)
        return self.bias + ((q * step).to(self.bias.dtype) - self.bias).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fake_quant_weights and self.weight_quantizer is not None:
            y = self._linear_op(x, self.weight_quantizer(self.weight), self.quantized_bias())
        elif self.fake_quant_weights:
            w = fake_quantize_weight(self.weight, self.weight_bits, self.per_channel, self.current_weight_scale(),
                                     self.full_range_weights)
            y = self._linear_op(x, w, self.quantized_bias())
        else:
            y = self._linear_op(x, self.weight, self.bias)
        if self.clamp is not None:
            y = self.clamp.apply(y)
        return self.act_quant(y) if self.act_quant is not None else y

    def extra_repr(self) -> str:
        how = str(self.weight_format) if self.weight_format is not None else self.weight_observer
        return (f"{self.float_name or '?'}: weight_bits={self.weight_bits}, per_channel={self.per_channel}, {how}, "
                f"scale_mode={self.scale_mode}, clamp={self.clamp}")


class QuantConv2d(QuantLayer):
    """`pads` is the zero padding (top, left, bottom, right): the conv's own, with 'same' made explicit
    and a ZeroPad2d before it folded in (bitsmith.quant.rewrite)."""

    def __init__(self, conv: nn.Conv2d, weight, bias, pads: tuple[int, int, int, int], **kw) -> None:
        super().__init__(weight, bias, **kw)
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.pads = tuple(pads)  # zero padding only: other padding modes are refused (quant/support.py)

    @property
    def padding(self) -> list[int]:
        """The IR's padding attribute: [ph, pw] when both sides of each axis pad alike, else
        [top, left, bottom, right]."""
        top, left, bottom, right = self.pads
        return [top, left] if (top, left) == (bottom, right) else [top, left, bottom, right]

    def conv2d(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The convolution with this layer's geometry; zero padding pads the real value 0 (code z)."""
        top, left, bottom, right = self.pads
        if (top, left) == (bottom, right):
            return F.conv2d(x, w, b, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, self.stride, 0, self.dilation, self.groups)

    def _linear_op(self, x, w, b):
        return self.conv2d(x, w, b)


class QuantLinear(QuantLayer):
    def _linear_op(self, x, w, b):
        return F.linear(x, w, b)
