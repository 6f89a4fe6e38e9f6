"""The differentiable search loop (DNAS, DeepBurning-MixQ style) over a `supernet`.

    result = search(model, layers, candidates_w, candidates_a, cost_tables, cost_constant,
                    train_ds, input_shape, DNASConfig(epochs=3, cd=3e-5))
    result.bitw, result.bita  # the widths with the largest α per layer

The loss of one batch is

    L = CE(supernet(x), y) + cd · E,   E = Σ_l softmax(α_w,l)ᵀ · T_l · softmax(α_a,l) + C

with T_l[i, j] the hardware cost of layer l at weight width w_i and input width a_j (the
caller's table, already normalised, e.g. by the first layer's MACs) and C the cost of what is not
searched. E is the expected cost of an architecture drawn from the softmaxes, so cd trades
accuracy for hardware: its gradient pushes probability towards cheap widths, cross-entropy's
towards accurate ones. A fixed side of a layer has p = [1].

Two optimisers step on every batch, as in MixQ: the weights (and BatchNorm, in train mode) by SGD
with Nesterov momentum 0.9 and weight decay 5e-4, lr cosine to 0; the α by SGD with momentum 0.9
and weight decay 5e-4, lr cosine from alpha_lr to 0.3·alpha_lr. Learning rates are pure
functions of the global step (`bitsmith.train.cosine_lr`). The search starts from the float
model's trained weights and leaves the float model as it is.

Determinism: torch's global generator is seeded (and restored afterwards) and the batch order
comes from a generator seeded from `seed`, so with one thread two searches are bit-identical.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from bitsmith.data import ArrayDataset, iterate_batches
from bitsmith.errors import ConfigError
from bitsmith.quant.qat.prepare import bit_string
from bitsmith.search.supernet import (
    alpha_parameters,
    argmax_bits,
    build_supernet,
    probabilities,
    weight_parameters,
)
from bitsmith.train import SGD_MOMENTUM, cosine_lr

#: MixQ's α schedule: cosine from alpha_lr down to this fraction of it.
ALPHA_LR_FLOOR = 0.3
#: Calibration batches for the activations' σ when the caller gives none (taken in order from train_ds).
CALIB_BATCHES = 4


@dataclass(frozen=True)
class DNASConfig:
    """How the search trains (defaults: DeepBurning-MixQ's recipe)."""

    epochs: int = 3
    cd: float = 3e-5  # weight of the expected cost in the loss
    batch_size: int = 128
    lr: float = 0.02  # weights: SGD Nesterov, cosine to 0
    alpha_lr: float = 0.1  # α: SGD momentum, cosine to ALPHA_LR_FLOOR·alpha_lr
    weight_decay: float = 5e-4
    alpha_weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("lr", "alpha_lr"):
            value = getattr(self, name)
            if not _real(value) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        for name in ("cd", "weight_decay", "alpha_weight_decay"):
            value = getattr(self, name)
            if not _real(value) or not value >= 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class DNASResult:
    """What a search found: the argmax widths per layer, and one record per epoch."""

    layers: list[str]
    bitw: list[int]
    bita: list[int]
    history: list[dict[str, Any]]
    config: DNASConfig
    supernet: nn.Module | None = field(default=None, repr=False)  # the trained supernet (not serialised)

    @property
    def epoch_seconds(self) -> list[float]:
        """Seconds of each epoch's training pass."""
        return [r["seconds"] for r in self.history]

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "bitw": list(self.bitw),
            "bita": list(self.bita),
            "bitw_string": bit_string(self.bitw),
            "bita_string": bit_string(self.bita),
            "config": self.config.to_json(),
            "epoch_seconds": self.epoch_seconds,
            "history": [dict(r) for r in self.history],
        }


def _cost_tables(tables: Sequence, candidates_w: Sequence[Sequence[int]],
                 candidates_a: Sequence[Sequence[int]], layers: Sequence[str]) -> list[torch.Tensor]:
    if isinstance(tables, (str, bytes)) or not isinstance(tables, Sequence) or len(tables) != len(layers):
        got = len(tables) if isinstance(tables, Sequence) else tables
        raise ConfigError(f"cost_tables must hold one table per searched layer ({len(layers)}), got {got!r}")
    out = []
    for name, table, cw, ca in zip(layers, tables, candidates_w, candidates_a):
        t = torch.as_tensor(table, dtype=torch.float32)
        if tuple(t.shape) != (len(cw), len(ca)):
            raise ConfigError(f"{name}: cost table of shape {tuple(t.shape)}; allowed: [{len(cw)}, {len(ca)}] "
                              f"(one row per weight width {list(cw)}, one column per activation width {list(ca)})")
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{name}: the cost table has non-finite entries; allowed: finite numbers")
        out.append(t)
    return out


def expected_cost(probs: Sequence[tuple[torch.Tensor, torch.Tensor]], tables: Sequence[torch.Tensor],
                  constant: float) -> torch.Tensor:
    """E = Σ_l p_w,lᵀ · T_l · p_a,l + constant (differentiable in the probabilities)."""
    total = sum(torch.dot(pw, torch.mv(t, pa)) for (pw, pa), t in zip(probs, tables))
    return total + constant


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2f}%  "
                   "bitw {task.fields[bitw]}  bita {task.fields[bita]}  cost {task.fields[cost]:.4g}"),
        TimeElapsedColumn(),
        transient=True,
        disable=quiet,
    )


def search(model: nn.Module, layers: Sequence[str], candidates_w: Sequence[Sequence[int]],
           candidates_a: Sequence[Sequence[int]], cost_tables: Sequence, cost_constant: float,
           train_ds: ArrayDataset, input_shape: Sequence[int], config: DNASConfig, *,
           on_epoch: Callable[[dict[str, Any]], None] | None = None, quiet: bool = False,
           calib_batches: Iterable | None = None) -> DNASResult:
    """Search per-layer weight / input-activation widths for `model` (not modified).

    `cost_tables[l]`: [len(candidates_w[l]), len(candidates_a[l])] normalised hardware costs;
    `cost_constant`: the cost of the unsearched rest. `calib_batches` (tensors or (x, y) pairs)
    set the activations' σ; by default the first CALIB_BATCHES batches of `train_ds`, in order.
    Each epoch's record: epoch, train_loss (mean cross-entropy), train_acc (%), expected_cost
    (at the epoch's end), bitw / bita (argmax widths), prob_w / prob_a (softmax of every layer's
    α, lists per layer), seconds (the training pass only). `on_epoch(record)` is called after
    each epoch, outside that timing.
    """
    if not isinstance(config, DNASConfig):
        raise ConfigError(f"config must be a DNASConfig, got {type(config).__name__}")
    shape = tuple(int(d) for d in input_shape)
    if not _real(cost_constant) or not math.isfinite(cost_constant):
        raise ConfigError(f"cost_constant must be a finite number, got {cost_constant!r}")
    steps_per_epoch = len(train_ds.labels) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(train_ds.labels)} training "
                          "images; lower the batch size")
    if calib_batches is None:
        calib_batches = list(itertools.islice(iterate_batches(train_ds, config.batch_size, shape), CALIB_BATCHES))
    supernet = build_supernet(model, layers, candidates_w, candidates_a, calib_batches)
    names = list(layers)
    tables = _cost_tables(cost_tables, candidates_w, candidates_a, names)
    constant = float(cost_constant)

    alphas = alpha_parameters(supernet)
    weight_opt = torch.optim.SGD(weight_parameters(supernet), lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                                 weight_decay=config.weight_decay)
    alpha_opt = (torch.optim.SGD(alphas, lr=config.alpha_lr, momentum=SGD_MOMENTUM,
                                 weight_decay=config.alpha_weight_decay) if alphas else None)
    total = steps_per_epoch * config.epochs
    floor = ALPHA_LR_FLOOR * config.alpha_lr
    history: list[dict[str, Any]] = []
    bar = _progress(quiet)
    with torch.random.fork_rng(devices=[]), bar:
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed + 1)
        bw, ba = argmax_bits(supernet)
        task = bar.add_task("", total=steps_per_epoch, loss=float("nan"), acc=float("nan"),
                            bitw=bit_string(bw), bita=bit_string(ba), cost=float("nan"))
        for epoch in range(config.epochs):
            bar.reset(task, total=steps_per_epoch, description=f"search {epoch + 1}/{config.epochs}")
            supernet.train()
            start = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            batches = iterate_batches(train_ds, config.batch_size, shape, shuffle=True, augment=train_ds.info.augment,
                                      generator=gen, drop_last=True)
            for i, (x, y) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                for group in weight_opt.param_groups:
                    group["lr"] = cosine_lr(config.lr, step, total)
                if alpha_opt is not None:
                    for group in alpha_opt.param_groups:
                        group["lr"] = floor + cosine_lr(config.alpha_lr - floor, step, total)
                logits = supernet(x)
                ce = F.cross_entropy(logits, y)
                cost = expected_cost(probabilities(supernet), tables, constant)
                loss = ce + config.cd * cost
                value = ce.item()
                if not math.isfinite(value):
                    raise ConfigError(f"the search diverged: loss {value} at step {step}; lower the learning "
                                      "rates (lr, alpha_lr) or cd")
                weight_opt.zero_grad(set_to_none=True)
                if alpha_opt is not None:
                    alpha_opt.zero_grad(set_to_none=True)
                loss.backward()
                weight_opt.step()
                if alpha_opt is not None:
                    alpha_opt.step()
                loss_sum += value * len(y)
                correct += (logits.argmax(dim=1) == y).sum().item()
                seen += len(y)
                if not quiet:
                    bw, ba = argmax_bits(supernet)
                    bar.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen,
                               bitw=bit_string(bw), bita=bit_string(ba), cost=cost.item())
            seconds = time.perf_counter() - start
            with torch.no_grad():
                probs = probabilities(supernet)
                cost_now = float(expected_cost(probs, tables, constant))
            bw, ba = argmax_bits(supernet)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_acc": 100.0 * correct / seen,
                "expected_cost": cost_now,
                "bitw": bw,
                "bita": ba,
                "prob_w": [pw.tolist() for pw, _ in probs],
                "prob_a": [pa.tolist() for _, pa in probs],
                "seconds": round(seconds, 3),
            }
            history.append(record)
            if not quiet:
                bar.console.print(f"search {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
                                  f"train {record['train_acc']:.2f}%  bitw {bit_string(bw)}  bita {bit_string(ba)}  "
                                  f"cost {cost_now:.4g}  {seconds:.1f} s")
            if on_epoch is not None:
                state = torch.get_rng_state()  # whatever the callback draws, the search's stream goes on as it was
                on_epoch(record)
                torch.set_rng_state(state)
    supernet.eval()
    bw, ba = argmax_bits(supernet)
    return DNASResult(layers=names, bitw=bw, bita=ba, history=history, config=config, supernet=supernet)
