"""Quantization-aware training: DoReFa, PACT, LSQ, HWGQ, binary, ternary, outlier-aware (OAQ) and
learned intervals (QIL), lowered bit-exactly.

    qmodel = bitsmith.quantize(model, train_set, QATConfig("lsq", wbits=4, abits=4, epochs=2))
    metrics = bitsmith.pipeline.qat_run("runs/lenet5", "runs/lenet5-lsq", QATConfig("lsq", wbits=4, abits=4))

See docs/qat.md for the methods, their integer codes and measured results.
"""

from bitsmith.quant.qat.exact import set_exact_eval
from bitsmith.quant.qat.prepare import METHODS, QATSpec, layer_bits, qat_prepare, sync_input_scales
from bitsmith.quant.qat.train import QATTrainConfig, qat_train

__all__ = ["METHODS", "QATSpec", "QATTrainConfig", "layer_bits", "qat_prepare", "qat_train",
           "set_exact_eval", "sync_input_scales"]
