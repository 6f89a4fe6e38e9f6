"""Quantization: configs, observers, fake-quant modules and post-training quantization."""

from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantConv2d, QuantLinear
from bitsmith.quant.prepare import prepare
from bitsmith.quant.ptq import quantize

__all__ = ["QuantConfig", "FakeQuantize", "QuantConv2d", "QuantLinear", "prepare", "quantize"]
