"""Float training: one loop, a checkpoint after every epoch, and exact resume.

    config = TrainConfig(model="lenet5", dataset="fashion-mnist", epochs=8)
    metrics = train(config, "runs/lenet5")  # writes checkpoint.safetensors, run.json, metrics.json
    metrics = train(config, "runs/lenet5", resume=True)  # continues after the last completed epoch

Reproducibility. Everything random comes from two generators seeded from `config.seed`: torch's
global generator (weight init, dropout) and a dedicated data generator (order and augmentation).
Both states go into the checkpoint with the weights and the optimizer state, and the
learning rate is a pure function of the global step (cosine, no scheduler object), so a resumed
run repeats exactly what the uninterrupted run would have done. In deterministic mode
(`config.deterministic`, the default) `torch.use_deterministic_algorithms(True)` is on while
training, and the CPU thread count is pinned: a fresh run records `torch.get_num_threads()` in
the checkpoint and a resumed run uses that same count, because a float reduction split over a
different number of threads can round differently. The result is then bit-identical to an
uninterrupted run on the same machine and torch build, even after a SIGKILL mid-epoch.
The caller's global RNG state, thread count and determinism flag are restored on return.

Several processes (`torchrun --nproc_per_node N -m bitsmith train …`, bitsmith.distributed):
`batch_size` stays the global batch, each rank trains on its slice of every global batch under
DistributedDataParallel, so the steps, learning rates and checkpoints are those of one process
with that batch. Rank 0 alone checks and writes the run folder and prints; it reads the checkpoint
to resume from and hands it to the others, so every rank starts from the same state (also on
machines that do not share a file system). The test set is evaluated in slices, one per rank.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from bitsmith import distributed
from bitsmith import progress as progress_bars
from bitsmith.artifacts import FLOAT_RUN, check_target, clean_stale, publishing
from bitsmith.data import ArrayDataset, DatasetInfo, dataset_info, iterate_batches, load_dataset
from bitsmith.detection import DetectionObjective, box_iou, detection_head
from bitsmith.errors import CheckpointError, ConfigError
from bitsmith.evaluate import predicted_boxes, predictions
from bitsmith.models import build_model, spatial_multiple
from bitsmith.runs import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_model_state,
    load_optimizer_state,
    read_checkpoint,
    save_checkpoint,
)

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
SGD_MOMENTUM = 0.9
# Models whose default head is a detector; on a classification data set they need [N, classes] logits.
_DETECTOR_MODELS = ("ultranet", "ultranet_bypass", "skynet")
# Settings a resumed run may change: where the data lives does not change what is trained.
_RESUMABLE_CHANGES = ("data_dir",)


@dataclass
class TrainConfig:
    """Everything that decides a float training run (and must match when it is resumed)."""

    model: str
    dataset: str
    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adam"
    lr: float | None = None  # None: 0.05 for sgd, 1e-3 for adam; decays by a cosine to 0
    weight_decay: float = 5e-4
    seed: int = 0
    data_dir: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = True
    limit_train: int | None = None  # use only the first N training images (smoke runs, tests)
    limit_test: int | None = None

    def resolved(self) -> TrainConfig:
        """A checked copy with the learning-rate default filled in."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)
        if not lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        return replace(
            self,
            dataset=dataset_info(self.dataset).name,  # "Fashion_MNIST" and "fashion-mnist" are one run
            lr=lr,
            weight_decay=float(self.weight_decay),
            data_dir=None if self.data_dir is None else str(self.data_dir),
            model_kwargs=dict(self.model_kwargs),
        )


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate at global step `step` (0-based): base · ½(1 + cos(π·step/total))."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def model_input_shape(model: str, info: DatasetInfo) -> tuple[int, int, int]:
    """The input shape a model gets on a data set: LeNet-5 keeps 32 x 32 (the data is padded or
    upsampled to it), the others take the images' own shape rounded up to the multiple of 4, 8 or
    16 their pools need (Fashion-MNIST's 28 x 28 is padded to 32 x 32 for VGG-tiny)."""
    channels, height, width = info.image_shape
    if model == "lenet5":
        return (channels, 32, 32)
    m = spatial_multiple(model)
    return (channels, -(-height // m) * m, -(-width // m) * m)


def build_for_dataset(config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """Build `config.model` with the data set's classes and input shape (on a detection data set:
    with its detection head's channels, bitsmith.detection)."""
    kwargs = dict(config.model_kwargs)
    if info.task == "detect":
        head = detection_head(config.model)
        if kwargs.get("classify"):
            raise ConfigError(f"{config.model}: classify=true makes a classifier; {info.name} needs the detection head")
        return build_model(config.model, num_classes=head.channels, input_shape=info.image_shape, **kwargs)
    if config.model in _DETECTOR_MODELS:
        kwargs.setdefault("classify", True)
    shape = model_input_shape(config.model, info)
    return build_model(config.model, num_classes=info.num_classes, input_shape=shape, **kwargs)


class ClassificationObjective:
    """Cross-entropy, scored by the number of correct argmax predictions (accuracy in percent)."""

    metric = "acc"
    percent = True

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float((logits.argmax(dim=1) == labels).sum().item())


Objective = ClassificationObjective | DetectionObjective


def task_objective(model: str, info: DatasetInfo) -> Objective:
    """The loss and score of `model` on data set `info`: detection data sets train a detection head."""
    return DetectionObjective(model) if info.task == "detect" else ClassificationObjective()


def score_text(objective: Objective, value: float) -> str:
    """How an epoch line shows a score: '93.10%' or 'IoU 0.7312'."""
    return f"{value:.2f}%" if objective.percent else f"IoU {value:.4f}"


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9, or Adam; weight decay (L2) on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train `config.model` on `config.dataset`, checkpointing into `out_dir` after every epoch.

    Returns the run's metrics (also in out_dir/metrics.json): "history" (one record per epoch:
    train_loss, train_acc, test_acc, lr, seconds) and "accuracy", the final test accuracy in percent.
    resume=True continues from out_dir/checkpoint.safetensors (or starts fresh if there is none yet);
    its config must match the checkpoint's. `progress`, if given, is called with each epoch's record
    once that epoch is checkpointed. `quiet` turns off the progress bar and the per-epoch lines; the
    bar is also off when stdout is not a terminal, and only rank 0 shows either (`progress` is
    called on every rank, with the same global-batch figures).

    Where the run is written (docs/guarantees.md): into an absent or empty `out_dir`, and on
    resume, in place, one atomic checkpoint per epoch, so a killed run resumes. An existing float
    run is refused without `resume` (ConfigError) and any other non-empty folder is refused
    (OutputError) unless `force`; with `force` the new run trains in a temporary sibling folder
    and replaces the old folder only once it has finished (a failure leaves the old one as it was).
    """
    config = config.resolved()
    out_dir = Path(out_dir)
    command = "bitsmith train"
    ctx = distributed.context()
    quiet = quiet or not ctx.is_main

    def plan() -> tuple[bool, Checkpoint | None]:  # (train in place?, the checkpoint to resume from)
        clean_stale(out_dir)  # temporaries of a killed `train --force`; a cut-short swap's previous version
        found = check_target(out_dir, FLOAT_RUN, force=True, command=command)  # path errors; kinds below
        if found not in (None, FLOAT_RUN) and not force:
            check_target(out_dir, FLOAT_RUN, command=command)  # raises: another kind, or not a bitsmith folder
        if found is None or (found is FLOAT_RUN and (resume or not force)):
            return True, _existing_checkpoint(config, out_dir, resume)
        return False, None

    in_place, checkpoint = distributed.on_main(plan)  # rank 0 decides; every rank gets its checkpoint
    if not ctx.is_main:  # the others train alongside and write nothing
        metrics = _train_into(config, None, checkpoint, quiet, progress)
    elif in_place:
        metrics = _train_into(config, out_dir, checkpoint, quiet, progress)
    else:
        with publishing(out_dir, FLOAT_RUN, force=True, command=command) as stage:
            metrics = _train_into(config, stage.path, None, quiet, progress)
            read_checkpoint(stage.path)  # the finished run reads back before it replaces the old folder
    distributed.barrier()  # every rank returns once the run folder is complete
    return metrics


def _train_into(config: TrainConfig, out_dir: Path | None, checkpoint: Checkpoint | None, quiet: bool,
                progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Train into `out_dir` (None: a rank other than 0, which writes nothing)."""
    for stale in out_dir.glob(".*.tmp") if out_dir is not None else ():  # files of a run killed mid-write
        if stale.is_file():
            stale.unlink()
    if checkpoint is not None and checkpoint.meta["epoch"] >= config.epochs:
        return checkpoint.meta["metrics"]

    info = dataset_info(config.dataset)
    train_ds = load_dataset(config.dataset, "train", config.data_dir, limit=config.limit_train)
    test_ds = load_dataset(config.dataset, "test", config.data_dir, limit=config.limit_test)
    distributed.per_rank_batch(config.batch_size, distributed.context())  # refuses an uneven split early
    steps_per_epoch = len(train_ds.labels) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train_ds.labels)} training images "
            f"of {config.dataset!r}; lower the batch size."
        )
    threads = torch.get_num_threads()
    if checkpoint is not None:
        threads = checkpoint.meta.get("environment", {}).get("num_threads", threads)
    with _reproducible(config, threads):
        return _train_loop(config, out_dir, info, train_ds, test_ds, steps_per_epoch, checkpoint, quiet, progress)


def _existing_checkpoint(config: TrainConfig, out_dir: Path, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from, after checking it belongs to this config."""
    path = out_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    if not resume:
        raise ConfigError(
            f"{out_dir} already holds a training run ({path.name}); pass resume=True (--resume) to continue it, "
            "choose another output folder (--out), or pass force=True (--force) to replace it."
        )
    checkpoint = read_checkpoint(out_dir)
    stored = checkpoint.meta.get("train_config", {})
    current = _jsonable(asdict(config))
    for name, value in current.items():
        if name not in _RESUMABLE_CHANGES and stored.get(name) != value:
            raise ConfigError(
                f"cannot resume {path}: {name} is {value!r} now but the checkpoint was trained with "
                f"{stored.get(name)!r}. Use the same {name}, or start a new run in another folder (--out)."
            )
    return checkpoint


@contextmanager
def _reproducible(config: TrainConfig, threads: int) -> Iterator[None]:
    """Seeded, deterministic, fixed-thread training; the caller's global state is restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            torch.manual_seed(config.seed)
            if config.deterministic:
                torch.use_deterministic_algorithms(True)
                torch.set_num_threads(threads)
            yield
        finally:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
            torch.set_num_threads(old_threads)


def _train_loop(
    config: TrainConfig,
    out_dir: Path | None,
    info: DatasetInfo,
    train_ds: ArrayDataset,
    test_ds: ArrayDataset,
    steps_per_epoch: int,
    checkpoint: Checkpoint | None,
    quiet: bool,
    progress: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    ctx = distributed.context()
    model = build_for_dataset(config, info).to(ctx.device)  # consumes the freshly seeded global generator
    objective = task_objective(config.model, info)
    train_key, test_key = f"train_{objective.metric}", f"test_{objective.metric}"
    optimizer = make_optimizer(config, model)
    data_gen = torch.Generator().manual_seed(config.seed + 1)  # a stream of its own, apart from weight init
    history: list[dict[str, Any]] = []
    if checkpoint is not None:  # the optimizer's state lands on the parameters' device
        history = _restore(checkpoint, model, optimizer, data_gen, steps_per_epoch)
    trained = distributed.wrap(model, ctx)

    metrics: dict[str, Any] = {}
    bar = progress_bar(quiet)
    with bar:
        epochs = bar.add_task("training", total=config.epochs, completed=len(history), stats="")
        task = bar.add_task("", total=steps_per_epoch, stats="")
        for epoch in range(len(history), config.epochs):
            bar.reset(task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{config.epochs}")
            start = time.perf_counter()
            batches = iterate_batches(train_ds, config.batch_size, model.input_shape, shuffle=True,
                                      augment=info.augment, generator=data_gen, drop_last=True)
            first_step, total_steps = epoch * steps_per_epoch, steps_per_epoch * config.epochs
            record = {"epoch": epoch + 1}
            record |= _train_epoch(trained, optimizer, distributed.shard_batches(batches, ctx), config.lr,
                                   first_step, total_steps,
                                   lambda loss, acc: bar.update(task, advance=1, stats=batch_stats(loss, acc)),
                                   objective)
            record[test_key] = _test_score(model, test_ds, ctx, objective)
            record["seconds"] = round(time.perf_counter() - start, 3)
            history.append(record)
            metrics = _metrics(config, history)
            meta = {
                "dataset": config.dataset,
                "data_dir": config.data_dir,
                "epoch": epoch + 1,
                "train_config": _jsonable(asdict(config)),
                "metrics": metrics,
                "steps_per_epoch": steps_per_epoch,
                "train_images": len(train_ds.labels),
                "test_images": len(test_ds.labels),
                "environment": {"torch": torch.__version__, "num_threads": torch.get_num_threads()},
            }
            if ctx.distributed:  # the processes that trained it (a resume with another count is allowed, not bit-exact)
                meta["environment"] |= {"world_size": ctx.world_size, "backend": str(torch.distributed.get_backend())}
            rng = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
            if out_dir is not None:
                save_checkpoint(out_dir, model, optimizer, meta, rng)
            bar.update(epochs, advance=1, stats=f"test {score_text(objective, record[test_key])}")
            if not quiet:
                bar.console.print(
                    f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
                    f"train {score_text(objective, record[train_key])}  "
                    f"test {score_text(objective, record[test_key])}  {record['seconds']:.1f} s"
                )
            if progress is not None:
                progress(record)
    return metrics


def _restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_gen: torch.Generator,
    steps_per_epoch: int,
) -> list[dict[str, Any]]:
    """Put the checkpoint's weights, optimizer state and generator states back; returns the epoch history."""
    if _jsonable(model.spec) != checkpoint.meta["model"]:
        raise ConfigError(
            f"cannot resume {checkpoint.path}: the model is now built as {model.spec}, the checkpoint holds "
            f"{checkpoint.meta['model']}. Start a new run in another folder (--out)."
        )
    if checkpoint.meta.get("steps_per_epoch") != steps_per_epoch:
        raise ConfigError(
            f"cannot resume {checkpoint.path}: the training set now gives {steps_per_epoch} batches per epoch, "
            f"the checkpoint was trained with {checkpoint.meta.get('steps_per_epoch')} (different data?). "
            "Point data_dir at the original data, or start a new run in another folder (--out)."
        )
    history = list(checkpoint.meta["metrics"]["history"])
    if len(history) != checkpoint.meta["epoch"] or {"torch", "data"} - set(checkpoint.rng):
        raise CheckpointError(
            f"{checkpoint.path}: epoch history or generator states are incomplete; start a new run."
        )
    load_model_state(model, checkpoint)
    load_optimizer_state(optimizer, checkpoint)
    torch.set_rng_state(checkpoint.rng["torch"])
    data_gen.set_state(checkpoint.rng["data"])
    return history


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    base_lr: float,
    first_step: int,
    total_steps: int,
    on_batch: Callable[[float, float], None],
    objective: Objective,
) -> dict[str, float]:
    """One pass of SGD/Adam over `batches`; returns the epoch's mean loss, score (accuracy in %, or
    mean IoU for detection) and last lr."""
    scale = 100.0 if objective.percent else 1.0
    model.train()
    loss_sum, correct, seen, lr = 0.0, 0, 0, base_lr
    for i, (x, y) in enumerate(batches):
        lr = cosine_lr(base_lr, first_step + i, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(x)
        loss = objective.loss(logits, y)
        # Sums over the ranks' slices (the batch itself in one process): the figures of the global
        # batch, and every rank sees a diverged loss at the same step, so all stop together.
        batch_loss, batch_correct, batch_seen = distributed.all_sum(
            [loss.item() * len(y), objective.hits(logits, y), len(y)])
        loss_value = batch_loss / batch_seen
        if not math.isfinite(batch_loss):
            raise ConfigError(
                f"training diverged: loss is {loss_value} at global step {first_step + i} (lr {lr:.3g}). "
                "Lower the learning rate (--lr) or raise the batch size; the last good checkpoint is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += batch_loss
        correct += batch_correct
        seen += int(batch_seen)
        on_batch(loss_sum / seen, scale * correct / seen)
    return {"train_loss": loss_sum / seen, f"train_{objective.metric}": scale * correct / seen, "lr": lr}


def _metrics(config: TrainConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    final = {"mean_iou": history[-1]["test_iou"]} if "test_iou" in history[-1] else {"accuracy": history[-1]["test_acc"]}
    return {
        "model": config.model,
        "dataset": config.dataset,
        "epochs_completed": len(history),
        "epochs": config.epochs,
        **final,
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "history": history,
    }


def _test_score(model: nn.Module, test_ds: ArrayDataset, ctx: distributed.Context, objective: Objective) -> float:
    """Test accuracy in percent (detection: mean IoU); under a process group each rank predicts its
    slice of the test set and the correct counts (IoU sums) are summed."""
    images = len(test_ds)
    part = distributed.shard_range(images, ctx)
    mine = ArrayDataset(test_ds.info, test_ds.images[part.start:part.stop], test_ds.labels[part.start:part.stop])
    total = 0.0
    if len(mine) or not images:  # an empty test set: predictions() names the problem
        was_training = model.training
        model.eval()  # dropout / batch-norm statistics must not change a measurement
        predict = lambda x: model(x.to(ctx.device)).cpu()  # noqa: E731
        if isinstance(objective, DetectionObjective):
            total = float(box_iou(predicted_boxes(predict, mine, model.input_shape, objective.head), mine.labels).sum())
        else:
            total = float((predictions(predict, mine, model.input_shape) == mine.labels).sum().item())
        model.train(was_training)
    (total,) = distributed.all_sum([total])
    return (100.0 if objective.percent else 1.0) * total / images


def batch_stats(loss: float, acc: float) -> str:
    return f"loss {loss:.4f}  acc {acc:.2f}%"


def progress_bar(quiet: bool) -> Progress:
    """Epoch and batch bars with the time left; off when `quiet` or when stdout is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        transient=True,
        disable=quiet or not progress_bars.shown(),
    )


def _jsonable(obj: Any) -> Any:
    """What `obj` looks like after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))
