"""One verb for every way of quantizing: `quantize(model, data, config)`.

    qmodel = quantize(model, calib_batches, QuantConfig(weight_bits=8, act_bits=8))        # PTQ
    qmodel = quantize(model, train_set, QATConfig("lsq", wbits=4, abits=4, epochs=2))       # QAT
    qmodel = quantize(model, calib_batches, ClipQConfig(p=0.4, bits=2))                     # CLIP-Q
    qmodel = quantize(model, train_set, ClipQConfig(p=0.4, bits=2, finetune=QATTrainConfig()))
    graph = lower(qmodel)

The config says which: `QuantConfig` calibrates on `data` (batches of float inputs); `QATConfig`
trains on `data` (an ArrayDataset with labels; its first shuffled batches calibrate the start);
`ClipQConfig` runs PTQ on `data`'s batches, gives every layer a CLIP-Q codebook and, with
`finetune`, trains it on `data` (then an ArrayDataset). The float model is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch.fx as fx
from torch import nn

from bitsmith.data import ArrayDataset
from bitsmith.errors import ConfigError
from bitsmith.quant.calibration import dataset_batches
from bitsmith.quant.clipq import apply_clipq, check_clipq_params
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.ptq import quantize as ptq_quantize
from bitsmith.quant.qat.prepare import QATSpec, qat_prepare
from bitsmith.quant.qat.train import QATTrainConfig, qat_train


@dataclass(frozen=True)
class QATConfig(QATTrainConfig, QATSpec):
    """Quantization-aware training in one config: the method and bits (the fields of QATSpec:
    method, wbits, abits, bitw, bita, keep_first_last_8bit, per_channel, input_bits, outlier_fraction and
    outlier_bits for oaq) and how it
    trains (the fields of QATTrainConfig: epochs, batch_size, optimizer, lr, quant_lr, …)."""

    def __post_init__(self) -> None:
        QATSpec.__post_init__(self)
        QATTrainConfig.__post_init__(self)

    @property
    def spec(self) -> QATSpec:
        return QATSpec(**{f.name: getattr(self, f.name) for f in fields(QATSpec)})

    @property
    def train(self) -> QATTrainConfig:
        return QATTrainConfig(**{f.name: getattr(self, f.name) for f in fields(QATTrainConfig)})

    def to_json(self) -> dict[str, Any]:
        return {"kind": "qat", **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class ClipQConfig:
    """CLIP-Q (joint pruning and codebook quantization of weights) on top of PTQ.

    Every Conv2d/Linear gets clip fraction `p` and `bits`-bit codebook indices unless `layers`
    overrides them ({float layer name: (p, bits)}, e.g. from `search_clipq`); `skip` leaves layers
    on their PTQ weights. `ptq` is the PTQ that gives the activation grids (8-bit min-max by
    default); `finetune` trains the shadow weights through the codebook (None: no training)."""

    p: float = 0.4
    bits: int = 2
    q35: bool = False
    layers: dict[str, tuple[float, int]] | None = None
    skip: tuple[str, ...] = ()
    ptq: QuantConfig = field(default_factory=QuantConfig)
    finetune: QATTrainConfig | None = None

    def __post_init__(self) -> None:
        check_clipq_params(self.p, self.bits)
        for name, (lp, lb) in (self.layers or {}).items():
            check_clipq_params(lp, lb, f"CLIP-Q layer {name!r}")
        if not isinstance(self.ptq, QuantConfig):
            raise ConfigError(f"ClipQConfig.ptq must be a QuantConfig, got {type(self.ptq).__name__}")
        object.__setattr__(self, "skip", tuple(self.skip))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "clipq", "p": self.p, "bits": self.bits, "q35": self.q35,
                "layers": {k: list(v) for k, v in (self.layers or {}).items()}, "skip": list(self.skip),
                "ptq": self.ptq.to_json(),
                "finetune": None if self.finetune is None else dict(self.finetune.__dict__)}


AnyConfig = QuantConfig | QATConfig | ClipQConfig


def quantize(model: nn.Module, data: Iterable | ArrayDataset, config: AnyConfig | None = None, *,
             on_epoch: Callable[[dict[str, Any]], None] | None = None, objective: Any = None) -> fx.GraphModule:
    """A quantized copy of `model`, ready for `lower`; see the module docstring for `data`.

    `on_epoch(record)` runs after each training epoch of QAT or CLIP-Q fine-tuning (loss, train
    accuracy, seconds): progress output, or a benchmark's interleaved timing. `objective` is the
    training loss and score of QAT (bitsmith.train.task_objective; default cross-entropy)."""
    config = QuantConfig() if config is None else config
    if isinstance(config, QuantConfig):
        return ptq_quantize(model, _batches(model, data), config)
    if isinstance(config, QATConfig):
        train_set = _dataset(data, "QAT")
        qmodel = qat_prepare(model, _batches(model, train_set), config.spec)
        qat_train(qmodel, model, train_set, config.train, on_epoch=on_epoch, objective=objective)
        return qmodel
    if isinstance(config, ClipQConfig):
        qmodel = ptq_quantize(model, _batches(model, data), config.ptq)
        apply_clipq(qmodel, config.p, config.bits, q35=config.q35, layers=config.layers, skip=config.skip)
        if config.finetune is not None:
            qat_train(qmodel, model, _dataset(data, "CLIP-Q fine-tuning"), config.finetune, on_epoch=on_epoch,
                      objective=objective)
        return qmodel
    raise ConfigError(f"quantize() takes a QuantConfig, QATConfig or ClipQConfig, got {type(config).__name__}")


def _batches(model: nn.Module, data) -> Iterable:
    """Calibration batches: `data` itself, or the calibration draw from a data set."""
    if isinstance(data, ArrayDataset):
        return dataset_batches(data, tuple(model.input_shape))
    return data


def _dataset(data, what: str) -> ArrayDataset:
    if not isinstance(data, ArrayDataset):
        raise ConfigError(f"{what} trains on a labelled data set: pass an ArrayDataset "
                          f"(bitsmith.data.load_dataset(name, 'train')), not {type(data).__name__}")
    return data
