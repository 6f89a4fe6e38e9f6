"""QAT training and the `bitsmith qat` job: float run → QAT model → IntegerGraph, measured.

Training reuses bitsmith.train's pieces (data pipeline, cosine learning rate): weights by SGD
(Nesterov momentum) or Adam, the quantizers' own parameters (LSQ steps, PACT α) by Adam, and a
loss of cross-entropy plus knowledge distillation from the float model (its logits are computed
on the same batch under no_grad: LeNet-sized teachers cost little). PACT's regulariser λ·α² acts
through its gradient, as the α's weight decay in Adam (`quantizer_param_groups`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from bitsmith.data import ArrayDataset, iterate_batches, load_dataset
from bitsmith.errors import ConfigError
from bitsmith.evaluate import predictions
from bitsmith.quant.calibration import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES, calibration_batches
from bitsmith.quant.lower import lower
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of
from bitsmith.quant.ptq import input_quantizer
from bitsmith.quant.qat.exact import set_exact_eval
from bitsmith.quant.qat.pooling import training_view
from bitsmith.quant.qat.prepare import QATSpec, qat_prepare, quantizer_parameters, sync_input_scales
from bitsmith.runs import load_run
from bitsmith.storage import save_tensors_atomic, write_json_atomic
from bitsmith.train import SGD_MOMENTUM, cosine_lr

QAT_WEIGHTS_FILE = "qat_weights.safetensors"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class QATTrainConfig:
    """How QAT trains (the defaults are the ones measured in docs/qat.md)."""

    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "sgd"  # for the weights: "sgd" (Nesterov momentum 0.9) or "adam"
    lr: float = 0.02  # weights; cosine decay to 0 over all QAT steps
    quant_lr: float = 1e-3  # Adam, for LSQ steps and PACT α (same cosine)
    weight_decay: float = 0.0
    distill: float = 0.0  # weight of the distillation term (0: plain cross-entropy)
    temperature: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; allowed: sgd, adam")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        for name in ("lr", "quant_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.distill <= 1:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill!r}")


def _optimizers(qmodel: nn.Module, config: QATTrainConfig) -> list[torch.optim.Optimizer]:
    quant = {id(p) for p in quantizer_parameters(qmodel)}
    weights = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in quant]
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(weights, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(weights, lr=config.lr, weight_decay=config.weight_decay)
    opts = [opt]
    if quant:
        opts.append(torch.optim.Adam(quantizer_param_groups(qmodel), lr=config.quant_lr, fused=True))
    return opts


def quantizer_param_groups(qmodel: nn.Module) -> list[dict]:
    """Adam groups for the learned quantizer parameters. A quantizer with an L2 term λ·p² (PACT's α)
    gets weight_decay 2λ: Adam's (coupled) weight decay adds 2λ·p to the gradient, which is exactly the
    gradient of λ·p² in the loss, without a dozen tiny autograd ops per step."""
    decayed = {}
    for m in qmodel.modules():
        if hasattr(m, "regularization"):
            decayed[id(m.alpha)] = 2 * m.weight_decay
    groups: dict[float, list[nn.Parameter]] = {}
    for p in quantizer_parameters(qmodel):
        groups.setdefault(decayed.get(id(p), 0.0), []).append(p)
    return [{"params": params, "weight_decay": wd} for wd, params in groups.items()]


def _distillation(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton's KD term T²·KL(softmax(teacher/T) ‖ softmax(student/T))."""
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _bias_pairs(qmodel: fx.GraphModule) -> list[tuple[QuantLayer, nn.Module]]:
    """(layer with a bias, its input quantizer): biases are rounded at the learned input scale."""
    pairs = []
    for node in qmodel.graph.nodes:
        layer = module_of(qmodel, node)
        if isinstance(layer, QuantLayer) and layer.bias is not None:
            pairs.append((layer, input_quantizer(qmodel, node)))
    return pairs


def teacher_logits(teacher: nn.Module, ds: ArrayDataset, input_shape, batch_size: int = 1000) -> torch.Tensor:
    """The float model's logits for every image of `ds`, in dataset order (no augmentation)."""
    teacher.eval()
    out = []
    with torch.no_grad():
        for x, _ in iterate_batches(ds, batch_size, input_shape):
            out.append(teacher(x))
    return torch.cat(out)


def qat_train(qmodel: fx.GraphModule, teacher: nn.Module | None, train_ds: ArrayDataset, config: QATTrainConfig,
              *, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train `qmodel` in place; returns one record per epoch (loss, train accuracy, lr, seconds).

    Without augmentation the teacher's logits are computed once for the whole training set (its
    time is spread over the epochs' `seconds`); with augmentation, on every batch.
    """
    info = train_ds.info
    shape = tuple(qmodel.input_shape)
    steps_per_epoch = len(train_ds.labels) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(train_ds.labels)} training images")
    total = steps_per_epoch * config.epochs
    opts = _optimizers(qmodel, config)
    base_lrs = [config.lr, config.quant_lr]
    bias_pairs = _bias_pairs(qmodel)
    distill = config.distill if teacher is not None else 0.0
    start = time.perf_counter()
    cached, true_labels = None, train_ds.labels
    if distill > 0 and not info.augment:
        cached = teacher_logits(teacher, train_ds, shape)
        # Iterate over image indices: the batches then say which cached logits belong to them.
        train_ds = ArrayDataset(info, train_ds.images, torch.arange(len(true_labels)))
    setup_seconds = time.perf_counter() - start
    view, deferred = training_view(qmodel)
    history = []
    try:
        for q in deferred:
            q.deferred = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            gen = torch.Generator().manual_seed(config.seed + 1)
            for epoch in range(config.epochs):
                view.train()
                start = time.perf_counter()
                loss_sum, correct, seen = 0.0, 0, 0
                batches = iterate_batches(train_ds, config.batch_size, shape, shuffle=True, augment=info.augment,
                                          generator=gen, drop_last=True)
                for i, (x, y) in enumerate(batches):
                    step = epoch * steps_per_epoch + i
                    for opt, base in zip(opts, base_lrs):
                        for group in opt.param_groups:
                            group["lr"] = cosine_lr(base, step, total)
                    for layer, fq in bias_pairs:
                        layer.input_scale = fq.scale.detach().clone()
                    target = None
                    if cached is not None:
                        target, y = cached[y], true_labels[y]
                    elif distill > 0:
                        with torch.no_grad():
                            target = teacher(x)
                    logits = view(x)
                    loss = F.cross_entropy(logits, y)
                    if target is not None:
                        loss = (1 - distill) * loss + distill * _distillation(logits, target, config.temperature)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise ConfigError(f"QAT diverged: loss {value} at step {step}; lower the learning rate (--lr)")
                    for opt in opts:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for opt in opts:
                        opt.step()
                    loss_sum += value * len(y)
                    correct += (logits.argmax(dim=1) == y).sum().item()
                    seen += len(y)
                seconds = time.perf_counter() - start + setup_seconds / config.epochs
                record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                          "seconds": round(seconds, 3)}
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
    finally:
        for q in deferred:
            q.deferred = False
    qmodel.eval()
    sync_input_scales(qmodel)
    return history


def _percent(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100 * float((pred == labels).double().mean()), 4)


def qat_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str, wbits: int = 4, abits: int = 4,
            epochs: int = 2, bitw: str | None = None, bita: str | None = None, keep_first_last_8bit: bool = False,
            data_dir: str | None = None, lr: float | None = None, quiet: bool = False,
            train_config: QATTrainConfig | None = None, per_channel: bool = True,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """QAT of a float run: PTQ-initialise, train `epochs` epochs, lower, measure on the test set.

    `on_epoch(record)` runs after each training epoch, outside its timing (benchmarks/qat.py times
    a float epoch there, so float and QAT epochs interleave).

    Writes to `out_dir`: the IntegerGraph (graph.json + tensors.safetensors), the trained QAT
    model's tensors (qat_weights.safetensors) and metrics.json, which it also returns:
    fp32_accuracy, accuracy (fake-quant), integer_accuracy (percent), agreement (fraction of test
    images on which fake-quant and integer engine predict the same class), seconds_per_epoch
    (QAT training pass) and fp_seconds_per_epoch (the float run's recorded epochs, which include
    its test evaluation).
    """
    spec = QATSpec(method, wbits=wbits, abits=abits, bitw=bitw, bita=bita,
                   keep_first_last_8bit=keep_first_last_8bit, per_channel=per_channel)
    config = train_config or QATTrainConfig()
    config = QATTrainConfig(**{**asdict(config), "epochs": epochs, **({"lr": lr} if lr is not None else {})})
    run = load_run(run_dir)
    dataset = run.meta["dataset"]
    data_dir = data_dir or run.meta.get("data_dir")
    shape = tuple(run.model.input_shape)
    train_ds = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)

    qmodel = qat_prepare(run.model, calibration_batches(dataset, shape, data_dir), spec)

    def report(record: dict[str, Any]) -> None:
        if not quiet:
            print(f"qat {method} epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  "
                  f"train {record['train_acc']:.2f}%  {record['seconds']:.1f} s", flush=True)
        if on_epoch is not None:
            on_epoch(record)

    history = qat_train(qmodel, run.model, train_ds, config, on_epoch=report)
    graph = lower(qmodel, metadata={
        "model": run.model.spec, "dataset": dataset, "data_dir": data_dir,
        "source_run": str(Path(run_dir).resolve()), "qat": {"spec": spec.to_json(), "train": asdict(config)},
        "calibration": {"batches": CALIBRATION_BATCHES, "batch_size": CALIBRATION_BATCH_SIZE},
    })
    out_dir = Path(out_dir)
    graph.save(out_dir)
    save_qat_weights(qmodel, out_dir / QAT_WEIGHTS_FILE, spec)

    labels = torch.as_tensor(test.labels, dtype=torch.int64)
    fp_pred = predictions(run.model, test, shape)
    fq_pred = predictions(qmodel, test, shape)  # integer-exact evaluation (qat.exact)
    int_pred = predictions(graph.predict, test, shape)
    set_exact_eval(qmodel, False)
    float_pred = predictions(qmodel, test, shape)  # the plain float fake-quant path, for comparison
    set_exact_eval(qmodel, True)
    fp_history = run.meta.get("metrics", {}).get("history", [])
    fp_seconds = (sum(r["seconds"] for r in fp_history) / len(fp_history)) if fp_history else None
    seconds = sum(r["seconds"] for r in history) / len(history)
    metrics = {
        "model": run.model.spec["name"], "dataset": dataset, "method": method, "spec": spec.to_json(),
        "train_config": asdict(config),
        "weight_bits": [m.code_bits for m in qmodel.modules() if isinstance(m, QuantLayer)],
        "fp32_accuracy": _percent(fp_pred, labels),
        "accuracy": _percent(fq_pred, labels),
        "integer_accuracy": _percent(int_pred, labels),
        "agreement": float((fq_pred == int_pred).double().mean()),
        "disagreements": int((fq_pred != int_pred).sum()),
        "float_fake_quant_accuracy": _percent(float_pred, labels),
        "float_fake_quant_agreement": float((float_pred == int_pred).double().mean()),
        "test_images": len(labels),
        "seconds_per_epoch": round(seconds, 3),
        "fp_seconds_per_epoch": None if fp_seconds is None else round(fp_seconds, 3),
        "history": history,
        "graph": str(out_dir),
    }
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    return metrics


def save_qat_weights(qmodel: nn.Module, path: Path, spec: QATSpec) -> None:
    """The trained model's parameters and buffers (safetensors; empty placeholders skipped)."""
    tensors = {k: v.detach().contiguous().clone() for k, v in qmodel.state_dict().items() if v.numel() > 0}
    save_tensors_atomic(path, tensors, metadata={"format": "bitsmith.qat", "spec": json.dumps(spec.to_json())})
