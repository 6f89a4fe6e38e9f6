"""`bitsmith prune`: prune a float run with one method, fine-tune it, and write the result as a float
run folder that `bitsmith quantize`, `qat` and `eval` read (docs/pruning.md, "The command").

Methods (one `PruneConfig`):
- "magnitude": unstructured, global or per layer, one-shot / iterative / AGP during fine-tuning
  (`prune_finetune`); `sparsity` is the fraction of weights removed.
- "nm": N:M (`nm_masks`, 2:4 by default), then fine-tuning under the masks.
- "pattern": 3×3 pattern pruning with `pattern_k` entries per kernel and connectivity pruning
  (`pattern_masks`), then fine-tuning under the masks.
- "channel": structured, `sparsity` of every prunable layer's output channels removed physically
  (`channel_prune`, Torch-Pruning's dependency graph; criterion "l1" or "bn"), then fine-tuning.
- "ssl": group-lasso training (`ssl_train`), removal of the groups whose norm fell below
  `ssl_threshold` (`ssl_remove`), then fine-tuning.

Every method's fine-tuning is `magnitude.finetune` (SGD, cosine rate; optional L1 / L2 penalties).
The written run records how it was made under "pruning"; its zero weights are the masks:
`bitsmith qat` on it keeps them zero through QAT (`pipeline`), and PTQ keeps zeros by itself.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bitsmith.artifacts import FLOAT_RUN, check_target
from bitsmith.errors import ConfigError
from bitsmith.evaluate import accuracy
from bitsmith.models import model_summary
from bitsmith.prune.magnitude import (SCHEDULES, SCOPES, apply_masks, check_sparsity, finetune, prunable_layers,
                                      prune_finetune, remove_masks, sparsity_of)
from bitsmith.prune.nm import check_nm, nm_masks
from bitsmith.prune.pattern import check_library_size, check_pattern_size, pattern_masks
from bitsmith.prune.ssl import GROUPS, ssl_remove, ssl_train
from bitsmith.prune.structured import CRITERIA, channel_prune, save_pruned_run
from bitsmith.runs import load_run

METHODS = ("magnitude", "nm", "pattern", "channel", "ssl")


def _positive(name: str, value: Any, kind: type = int) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int) and value > 0
    if not ok:
        raise ConfigError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


@dataclass(frozen=True)
class PruneConfig:
    """What `bitsmith prune` does (the module docstring); checked on construction."""

    method: str = "magnitude"
    #: magnitude: fraction of weights removed; channel: fraction of each layer's output channels.
    sparsity: float = 0.9
    schedule: str = "agp"
    scope: str = "global"
    n: int = 2
    m: int = 4
    pattern_k: int = 4
    library_size: int = 8
    connectivity: float = 0.0
    criterion: str = "l1"
    ssl_groups: tuple[str, ...] = ("filter", "channel")
    ssl_strength: float = 1e-4
    ssl_threshold: float = 1e-3
    ssl_epochs: int = 2
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 5e-4
    l1: float = 0.0
    l2: float = 0.0
    seed: int = 0
    layers: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown pruning method {self.method!r}; allowed: {', '.join(METHODS)}")
        check_sparsity(self.sparsity)
        check_sparsity(self.connectivity, "connectivity")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; allowed: {', '.join(SCOPES)}")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {self.criterion!r}; allowed: {', '.join(CRITERIA)}")
        unknown = [g for g in self.ssl_groups if g not in GROUPS]
        if unknown or not self.ssl_groups:
            raise ConfigError(f"SSL groups {list(self.ssl_groups)!r}: allowed one or more of {', '.join(GROUPS)}")
        check_nm(self.n, self.m)
        check_pattern_size(self.pattern_k)
        check_library_size(self.library_size, self.pattern_k)
        for name in ("epochs", "batch_size", "pattern_k", "library_size", "ssl_epochs"):
            _positive(name, getattr(self, name))
        for name in ("lr", "ssl_strength", "ssl_threshold"):
            _positive(name, getattr(self, name), float)
        for name in ("weight_decay", "l1", "l2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        """The settings that matter to `method` (the rest are defaults it never reads)."""
        common = ("method", "epochs", "lr", "batch_size", "weight_decay", "l1", "l2", "seed", "layers")
        own = {"magnitude": ("sparsity", "schedule", "scope"), "nm": ("n", "m"),
               "pattern": ("pattern_k", "library_size", "connectivity"), "channel": ("sparsity", "criterion"),
               "ssl": ("ssl_groups", "ssl_strength", "ssl_threshold", "ssl_epochs")}[self.method]
        values = asdict(self)
        return {k: (list(values[k]) if isinstance(values[k], tuple) else values[k]) for k in common + own}


def _training(config: PruneConfig) -> dict[str, Any]:
    return {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
            "weight_decay": config.weight_decay, "seed": config.seed}


def prune_model(model: nn.Module, train_ds, config: PruneConfig, *, quiet: bool = True
                ) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned, fine-tuned copy of the float `model` (masks baked in: pruned weights are 0.0) and
    what the method reports (history, library, removed channels, ...)."""
    shape = tuple(model.input_shape)
    train = _training(config)
    penalties = {"l1": config.l1, "l2": config.l2}
    layers = list(config.layers) if config.layers else None
    details: dict[str, Any] = {}
    if config.method == "magnitude":
        pruned, history = prune_finetune(model, train_ds, shape, sparsity=config.sparsity, schedule=config.schedule,
                                         scope=config.scope, layers=layers, quiet=quiet, **train, **penalties)
    elif config.method in ("nm", "pattern"):
        if config.method == "nm":
            masks = nm_masks(model, config.n, config.m, layers=layers)
        else:
            masks, report = pattern_masks(model, k=config.pattern_k, library_size=config.library_size,
                                          connectivity=config.connectivity, layers=layers)
            details["patterns"] = report
        masked = apply_masks(copy.deepcopy(model), masks)   # the source run's model stays unpruned
        pruned, history = finetune(masked, train_ds, shape, quiet=quiet, **train, **penalties)
    elif config.method == "channel":
        shrunk, report = channel_prune(model, config.sparsity, input_shape=shape, criterion=config.criterion)
        details["structure"] = report.to_json()
        pruned, history = finetune(shrunk, train_ds, shape, quiet=quiet, **train, **penalties)
    else:
        trained, ssl_history = ssl_train(model, train_ds, shape, strength=config.ssl_strength,
                                         groups=config.ssl_groups, epochs=config.ssl_epochs, lr=config.lr,
                                         batch_size=config.batch_size, seed=config.seed, quiet=quiet)
        removed, report = ssl_remove(trained, config.ssl_threshold, input_shape=shape, groups=config.ssl_groups)
        details["ssl_history"] = ssl_history
        details["structure"] = report.to_json()
        pruned, history = finetune(removed, train_ds, shape, quiet=quiet, **train, **penalties)
    details["finetune_history"] = history
    return remove_masks(pruned), details


def _macs(model: nn.Module) -> int:
    return sum(row.macs for row in model_summary(model, tuple(model.input_shape)))


def prune_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, config: PruneConfig, *,
              data_dir: str | None = None, quiet: bool = False, force: bool = False,
              train_limit: int | None = None) -> dict[str, Any]:
    """Prune the float run `run_dir` with `config` and write the pruned run to `out_dir` (written
    whole or not at all; an existing folder of another kind is refused unless `force`).

    `train_limit`: fine-tune on the first N training images (small machines). Returns (and writes
    as the run's metrics) fp32_accuracy and accuracy (float, test set), the per-layer and total
    weight sparsity, MACs per image before and after, and the method's details.
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune_run takes a PruneConfig, got {type(config).__name__}")
    check_target(out_dir, FLOAT_RUN, force=force, command="bitsmith prune")  # fail before any training
    start = time.perf_counter()
    run = load_run(run_dir)
    dataset, shape = run.meta["dataset"], tuple(run.model.input_shape)
    train_ds, test = run.dataset("train", data_dir, limit=train_limit), run.dataset("test", data_dir)
    pruned, details = prune_model(run.model, train_ds, config, quiet=quiet)
    sparsity = sparsity_of(pruned)
    metrics = {
        "model": run.model.spec["name"], "dataset": dataset, "method": config.method,
        "fp32_accuracy": accuracy(run.model, test, shape), "accuracy": accuracy(pruned, test, shape),
        "sparsity": sparsity["total"], "layer_sparsity": {k: v for k, v in sparsity.items() if k != "total"},
        "macs_before": _macs(run.model), "macs_after": _macs(pruned),
        "params_before": sum(p.numel() for p in run.model.parameters()),
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "train_images": len(train_ds), "test_images": len(test),
        "seconds": round(time.perf_counter() - start, 1),
        **details,
    }
    save_pruned_run(out_dir, pruned, run, pruning=config.to_json(), metrics=_json_safe(metrics), force=force)
    return metrics


def _json_safe(value: Any) -> Any:
    """Tensors in reports (pattern libraries, histograms) as lists, so the run's JSON holds them."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def pruned_run_masks(run_meta: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The keep-masks of a pruned run (its non-zero weights), or None for a run that was not pruned."""
    if not run_meta.get("pruning"):
        return None
    return {name: m.weight.detach() != 0 for name, m in prunable_layers(model).items()}


