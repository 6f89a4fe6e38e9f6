"""bitsmith: from float CNN training to bit-exact integer hardware.

    qmodel = bitsmith.quantize(model, calib_batches, bitsmith.QuantConfig(weight_bits=8, act_bits=8))
    graph = bitsmith.lower(qmodel)          # IntegerGraph
    codes = bitsmith.run(graph, images)     # exact integer outputs

The names below load on first use, so `import bitsmith.integer` (what every back end reads) does
not pull in the quantization front end.
"""

from importlib import import_module

from bitsmith.errors import BitsmithError
from bitsmith.version import __version__

_LAZY = {
    "IntegerGraph": "bitsmith.integer.graph",
    "load": "bitsmith.integer.graph",
    "run": "bitsmith.integer.engine",
    "QuantConfig": "bitsmith.quant.config",
    "lower": "bitsmith.quant.lower",
    "quantize": "bitsmith.quant.api",
    "QATConfig": "bitsmith.quant.api",
    "ClipQConfig": "bitsmith.quant.api",
}
__all__ = ["BitsmithError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bitsmith' has no attribute {name!r}")
