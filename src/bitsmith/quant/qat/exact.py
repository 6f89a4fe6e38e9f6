"""Integer-exact evaluation of QAT layers: the fake-quant model computes the integer graph's codes.

A fake-quant layer rounds `float32(conv) / S_out` half to even; the integer graph computes the
accumulator exactly and requantizes with the dyadic multiplier, `(acc·m + 2^(s−1)) >> s`. The
two round the same real number, so they differ only where it lies within float rounding of a
rounding boundary — rare, but not never (one LeNet-5 test image in 10,000 at W8A8 HWGQ).

QAT layers therefore evaluate (eval mode, `exact_eval` on) through `exact_layer_forward`:

    v     = round(x / S_in)                      exact: x is (q − z)·S_in in float32
    acc   = conv(v, codes) + B                   float64, exact (every partial sum < 2^53);
                                                 B = bias − the output quantizer's offset (QIL)
    q_out = requantize(acc, m, s, z_out, lo, hi) bitsmith.integer.arithmetic, the spec's int64 code
    y     = (q_out − z_out) · S_out              float32, what FakeQuantize returns

with the weight codes, and the bias B, (m, s) and clamp bounds from the functions `bitsmith.lower`
uses (`layer_bias_codes`, `requant_parameters`), so the two cannot drift. The last layer returns its accumulator dequantized as `IntegerGraph.dequantize` does.
Training keeps the float path and its straight-through gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import requantize
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.modules import QuantConv2d, QuantLayer, QuantLinear
from bitsmith.quant.requant import activation_offset, layer_bias_codes, requant_parameters


def exact_layer_forward(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as the integer graph computes it (see the module docstring)."""
    in_scale, in_zp = layer.qat_input
    config = layer.qat_config
    v = torch.round(x / torch.tensor(in_scale, dtype=torch.float32)).to(torch.float64)
    codes, w_scale = layer.quantize_weight()
    acc_scale = [float(s) * in_scale for s in w_scale.reshape(-1).tolist()]
    scale64 = torch.tensor(acc_scale, dtype=torch.float64)
    fq = layer.act_quant
    # The bias, less the output quantizer's offset (QIL) on the accumulator grid: what lowering writes.
    bias = layer_bias_codes(layer.bias, activation_offset(fq), acc_scale, codes.shape[0])
    if isinstance(layer, QuantConv2d):
        acc = layer.conv2d(v, codes.to(torch.float64), bias)
    else:
        acc = F.linear(v, codes.to(torch.float64), bias)
    channel_view = (1, -1) + (1,) * (acc.dim() - 2)
    if fq is None:  # the graph output: the accumulator, dequantized as IntegerGraph.dequantize does
        scale = scale64.reshape(channel_view) if len(acc_scale) > 1 else scale64.reshape(())
        return (acc * scale).to(torch.float32)
    m, s, lo, hi = requant_parameters(acc_scale, float(fq.scale), fq.bits, fq.signed, int(fq.zero_point), layer.clamp,
                                      config)
    q = requantize(acc.to(torch.int64), m, s, fq.zero_point, lo, hi)
    return (q - fq.zero_point).to(torch.float32) * fq.scale


class ExactEval:
    """Mixin for QuantConv2d / QuantLinear: integer-exact forward in eval mode (`exact_eval`)."""

    exact_eval = True

    def quantized_bias(self) -> torch.Tensor | None:
        """The float path's bias, less the output quantizer's offset (QIL) snapped to the accumulator
        grid as lowering snaps it (rounding straight through: its gradient reaches the offset)."""
        bias = super().quantized_bias()
        offset_tensor = getattr(self.act_quant, "offset_tensor", None)
        if offset_tensor is None:
            return bias
        p = offset_tensor()
        if float(self.input_scale) != 0.0:
            step = self.current_weight_scale().to(torch.float64).reshape(-1) * float(self.input_scale)
            snapped = (torch.round(p.detach().to(torch.float64) / step) * step).to(p.dtype)
            p = p + (snapped - p).detach()
        channels = self.weight.shape[0]
        return -p.expand(channels) if bias is None else bias - p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.exact_eval:
            return super().forward(x)
        with torch.no_grad():
            return exact_layer_forward(self, x)


class QATConv2d(ExactEval, QuantConv2d):
    pass


class QATLinear(ExactEval, QuantLinear):
    pass


def make_exact(layer: QuantLayer, config, input_scale: float, input_zero_point: int) -> None:
    """Turn a prepared QuantConv2d / QuantLinear into its exact-eval subclass, in place (the
    module keeps its parameters, buffers and place in the graph; lowering sees a QuantLayer)."""
    if config.scale_mode != "float":
        raise ConfigError("QAT uses float scales (scale_mode='float')")
    if not isinstance(layer, ExactEval):
        layer.__class__ = QATConv2d if isinstance(layer, QuantConv2d) else QATLinear
    layer.qat_config = config
    layer.qat_input = (input_scale, input_zero_point)


def set_exact_eval(qmodel: torch.nn.Module, enabled: bool) -> None:
    """Switch the integer-exact evaluation of every QAT layer and residual add on or off (off: float
    fake-quant)."""
    for m in qmodel.modules():
        if isinstance(m, (ExactEval, QuantAdd)):
            m.exact_eval = enabled
