"""Quantization, the front end: configs, observers, fake-quant modules, PTQ, QAT, CLIP-Q and the
lowering of a quantized model into the IntegerGraph."""

from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.lower import lower
from bitsmith.quant.modules import QuantConv2d, QuantLinear
from bitsmith.quant.prepare import prepare
from bitsmith.quant.api import ClipQConfig, QATConfig, quantize

__all__ = ["ClipQConfig", "QATConfig", "QuantConfig", "FakeQuantize", "QuantConv2d", "QuantLinear", "lower", "prepare", "quantize"]
