"""QAT training: the loop that trains a prepared QAT (or CLIP-Q) model in place.

Training reuses bitsmith.train's pieces (data pipeline, cosine learning rate): weights by SGD
(Nesterov momentum) or Adam, the quantizers' own parameters (LSQ steps, PACT α) by Adam, and a
loss of cross-entropy plus knowledge distillation from the float model (its logits are computed
on the same batch under no_grad: LeNet-sized teachers cost little). PACT's regulariser λ·α² acts
through its gradient, as the α's weight decay in Adam (`quantizer_param_groups`).

Under torchrun (bitsmith.distributed) the training view is wrapped in DistributedDataParallel over
a CPU (gloo) group and each rank trains on its slice of every global batch (`batch_size` stays the
global batch), exactly as the float loop does; every rank ends with the same trained model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from bitsmith import distributed
from bitsmith.data import ArrayDataset, iterate_batches
from bitsmith.errors import ConfigError
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of
from bitsmith.quant.ptq import input_quantizer
from bitsmith.quant.qat.pooling import training_view
from bitsmith.quant.qat.prepare import quantizer_parameters, sync_input_scales
from bitsmith.storage import save_tensors_atomic
from bitsmith.train import SGD_MOMENTUM, ClassificationObjective, batch_stats, cosine_lr, progress_bar, score_text

#: QAT trains on the CPU whatever the process group's backend.
CPU = torch.device("cpu")
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
              *, on_epoch: Callable[[dict[str, Any]], None] | None = None,
              objective: Any = None) -> list[dict[str, Any]]:
    """Train `qmodel` in place; returns one record per epoch (loss, train accuracy, lr, seconds).

    Without augmentation the teacher's logits are computed once for the whole training set (its
    time is spread over the epochs' `seconds`); with augmentation, on every batch. `objective`
    (bitsmith.train.task_objective; default: cross-entropy and accuracy) gives the loss and the
    score: a detection data set trains its detection loss and records train_iou instead.
    """
    objective = objective or ClassificationObjective()
    if not objective.percent and config.distill > 0:
        raise ConfigError("distillation (distill > 0) compares class scores; it does not apply to detection")
    scale = 100.0 if objective.percent else 1.0
    train_key = f"train_{objective.metric}"
    info = train_ds.info
    shape = tuple(qmodel.input_shape)
    ctx = distributed.context()
    distributed.per_rank_batch(config.batch_size, ctx)  # refuses an uneven split before any work
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
    # Every method's parameters all take part in each forward (checked for all of METHODS on LeNet-5),
    # so DDP need not search the autograd graph for unused ones.
    trained = distributed.wrap(view, ctx)
    history = []
    bar = progress_bar(not ctx.is_main)  # also off under bitsmith.progress.enabled(False)
    try:
        for q in deferred:
            q.deferred = True
        with torch.random.fork_rng(devices=[]), bar:
            torch.manual_seed(config.seed)
            gen = torch.Generator().manual_seed(config.seed + 1)
            epochs = bar.add_task("QAT", total=config.epochs, stats="")
            task = bar.add_task("", total=steps_per_epoch, stats="")
            for epoch in range(config.epochs):
                trained.train()
                bar.reset(task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{config.epochs}")
                start = time.perf_counter()
                loss_sum, correct, seen = 0.0, 0, 0
                batches = iterate_batches(train_ds, config.batch_size, shape, shuffle=True, augment=info.augment,
                                          generator=gen, drop_last=True)
                for i, (x, y) in enumerate(distributed.shard_batches(batches, ctx, CPU)):
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
                    logits = trained(x)
                    loss = objective.loss(logits, y)
                    if target is not None:
                        loss = (1 - distill) * loss + distill * _distillation(logits, target, config.temperature)
                    # Global-batch figures (sums over the ranks), and a divergence stops every rank at once.
                    batch_loss, batch_correct, batch_seen = distributed.all_sum(
                        [loss.item() * len(y), objective.hits(logits, y), len(y)])
                    value = batch_loss / batch_seen
                    if not math.isfinite(batch_loss):
                        raise ConfigError(f"QAT diverged: loss {value} at step {step}; lower the learning rate (--lr)")
                    for opt in opts:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for opt in opts:
                        opt.step()
                    loss_sum += batch_loss
                    correct += batch_correct
                    seen += int(batch_seen)
                    bar.update(task, advance=1, stats=batch_stats(loss_sum / seen, scale * correct / seen))
                seconds = time.perf_counter() - start + setup_seconds / config.epochs
                record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, train_key: scale * correct / seen,
                          "seconds": round(seconds, 3)}
                history.append(record)
                bar.update(epochs, advance=1, stats=f"train {score_text(objective, record[train_key])}")
                if on_epoch is not None:
                    on_epoch(record)
    finally:
        for q in deferred:
            q.deferred = False
    qmodel.eval()
    sync_input_scales(qmodel)
    return history


def save_qat_weights(qmodel: nn.Module, path: Path, config: dict) -> None:
    """The trained model's parameters and buffers (safetensors; empty placeholders skipped), with the
    config that made them (JSON) in the file's metadata."""
    tensors = {k: v.detach().contiguous().clone() for k, v in qmodel.state_dict().items() if v.numel() > 0}
    save_tensors_atomic(path, tensors, metadata={"format": "bitsmith.qat", "config": json.dumps(config)})
