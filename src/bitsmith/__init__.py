"""bitsmith: from float CNN training to bit-exact integer hardware.

    qmodel = bitsmith.quantize(model, calib_batches, bitsmith.QuantConfig(weight_bits=8, act_bits=8))
    graph = bitsmith.lower(qmodel)          # IntegerGraph
    codes = graph.run(images)               # exact integer outputs
"""

from bitsmith.errors import BitsmithError
from bitsmith.integer import IntegerGraph, lower
from bitsmith.quant import QuantConfig, quantize

__version__ = "0.1.0"
__all__ = ["BitsmithError", "IntegerGraph", "QuantConfig", "__version__", "lower", "quantize"]
