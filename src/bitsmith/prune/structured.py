"""Structured (filter / channel) pruning that physically shrinks the layers, with Torch-Pruning.

Definitions.

* Channel groups. Removing output channel i of a conv removes input channel i of every layer that
  reads it, the BatchNorm entries on it, the Linear columns it becomes after a Flatten, and — when
  it meets other layers' channels in a residual Add — output channel i of those layers too.
  Torch-Pruning's `DependencyGraph` (DepGraph) finds these coupled sets from a traced forward pass;
  each *group* is one such set, rooted at a Conv2d / Linear's output channels, and is removed
  together (`group.prune(indices)`), so coupled widths stay consistent by construction.
* Prunable groups: every group except those that reach the model's output (the last classifier,
  or a conv whose channels flow to the output through pools / flattens / adds only: removing them
  would change what the model outputs) and those containing a layer of `ignored_layers`.
* Scores per channel of a group:
  "l1" — Σ over the group's Conv2d / Linear layers that *produce* the channel of the L1 norm of that
  filter, Σ|W[i]| (Li et al. 2017, "Pruning Filters for Efficient ConvNets"; for an uncoupled layer
  exactly its filter's L1 norm);
  "bn" — Σ over the group's BatchNorms of |γ_i| (Liu et al. 2017, network slimming), computed by
  `tp.importance.BNScaleImportance` (group reduction "sum", no normalisation).
  Why not Torch-Pruning's default MagnitudeImportance: it averages in the *next* layer's input
  columns and BN scales and normalises by the mean, which is a different criterion than the one
  named.
* `channel_prune(model, ratio)`: in each prunable group of n channels the k = ⌊ratio·n⌋ channels of
  smallest score are removed (stable sort: ties removed in index order); with `round_to` r the kept
  count n − k is rounded down to a multiple of r (but at least min(r, n)). Scores are computed on
  the unpruned model before anything is removed, so the result does not depend on group order.

The pruned model keeps `input_shape`, `num_classes`, and its `spec` gains "shrunk" (the widths of
every resized Conv2d / Linear / BatchNorm, bitsmith.runs), so a saved run rebuilds it:
`save_pruned_run` writes a float run folder that `bitsmith quantize / qat / eval` load unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from bitsmith.artifacts import FLOAT_RUN, public_path, publishing
from bitsmith.errors import ConfigError
from bitsmith.models import model_summary
from bitsmith.prune.magnitude import check_sparsity, current_masks
from bitsmith.quant.modules import QuantLayer
from bitsmith.runs import RunInfo, layer_widths, load_run, save_checkpoint

CRITERIA = ("l1", "bn")
_ROOTS = (nn.Conv2d, nn.Linear)


@dataclass
class LayerChange:
    """One Conv2d / Linear: its input and output widths before and after pruning."""

    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int


@dataclass
class StructuredReport:
    """What structured pruning removed: per layer widths, and model MACs / parameters per image as
    `bitsmith summary` counts them (bitsmith.models.model_summary); `removed` maps each pruned
    group's root layer to the channel indices removed from it (indices of the unpruned layer)."""

    layers: list[LayerChange]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    removed: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _totals(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    rows = model_summary(model, input_shape)
    return sum(r.macs for r in rows), sum(r.params for r in rows)


def _roots(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _ROOTS)}


def _check_prunable(model: nn.Module) -> None:
    quant = [name for name, m in model.named_modules() if isinstance(m, QuantLayer)]
    if quant:
        raise ConfigError(f"structured pruning works on float models; {quant[0]!r} is already quantized: prune the "
                          "float model, then quantize it")
    masked = list(current_masks(model))
    if masked:
        raise ConfigError(f"{masked[0]!r} carries a pruning mask; bake it first (bitsmith.prune.remove_masks) so "
                          "that Torch-Pruning can resize the plain weight")
    if not _roots(model):
        raise ConfigError(f"{type(model).__name__} has no prunable layer (Conv2d or Linear)")


def input_shape_of(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """`input_shape` (C, H, W), or the model's own; a ConfigError when neither is known."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} has no input_shape attribute; pass input_shape=(C, H, W)")
    return tuple(shape)


def dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model`, traced on one zero image (eval mode, restored)."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """The Conv2d / Linear layers whose output channels reach the model's output without passing
    through another Conv2d / Linear (their widths are the model's output: never pruned)."""
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, _ROOTS):
            continue
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if not current.outputs:
                found.append(module)
                break
            stack += [n for n in current.outputs if not isinstance(n.module, _ROOTS)]
    return found


def prunable_groups(model: nn.Module, graph: tp.DependencyGraph,
                    ignored_layers: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """[(root layer name, group)] of the groups that may lose channels (see the module docstring)."""
    roots = _roots(model)
    ignored = list(ignored_layers or [])
    unknown = [n for n in ignored if n not in roots]
    if unknown:
        raise ConfigError(f"ignored_layers: {', '.join(map(repr, unknown))} not a Conv2d/Linear of "
                          f"{type(model).__name__}; allowed: {', '.join(roots)}")
    names = {m: n for n, m in roots.items()}
    skip = output_layers(graph) + [roots[n] for n in ignored]
    groups = [(names[group[0].dep.target.module], group)
              for group in graph.get_all_groups(ignored_layers=skip, root_module_types=_ROOTS)]
    if not groups:
        raise ConfigError(f"{type(model).__name__} has no prunable layer: every Conv2d/Linear feeds the model "
                          "output or is ignored")
    return groups


def _l1_scores(group: Any) -> torch.Tensor:
    """Σ over the group's producing Conv2d / Linear layers of Σ|W[i]| for each root channel i."""
    n = len(group[0].idxs)
    scores = torch.zeros(n, dtype=torch.float64)
    for item in group:
        layer, fn = item.dep.target.module, item.dep.handler
        if isinstance(layer, _ROOTS) and fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            w = layer.weight.detach().to(torch.float64)[list(item.idxs)].flatten(1)
            scores.index_add_(0, torch.tensor(item.root_idxs), w.abs().sum(1))
    return scores


_BN_SCALE = tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None)


def channel_scores(model: nn.Module, groups: list[tuple[str, Any]], criterion: str) -> dict[str, torch.Tensor]:
    """{root name: score per channel} for `criterion` ("l1" or "bn")."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; allowed: {', '.join(CRITERIA)}")
    if criterion == "l1":
        return {name: _l1_scores(group) for name, group in groups}
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"criterion 'bn' ranks channels by their BatchNorm scale, but {type(model).__name__} "
                          "has no BatchNorm; use criterion 'l1'")
    scores = {}
    for name, group in groups:
        score = _BN_SCALE(group)
        if score is None:
            raise ConfigError(f"criterion 'bn': layer {name!r} has no BatchNorm on its output channels; pass it in "
                              "ignored_layers or use criterion 'l1'")
        scores[name] = score.to(torch.float64)
    return scores


def _kept_count(n: int, ratio: float, round_to: int | None) -> int:
    keep = n - math.floor(ratio * n)
    if round_to:
        keep = max(keep - keep % round_to, min(round_to, n))
    return keep


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    return {name: w for name, m in model.named_modules() if (w := layer_widths(m)) is not None}


def remove_channels(model: nn.Module, graph: tp.DependencyGraph, removal: dict[str, list[int]],
                    input_shape: Sequence[int]) -> StructuredReport:
    """Remove, in place, the output channels `removal[root]` of each named root layer (and everything
    coupled to them, via the dependency graph); update `model.spec["shrunk"]`; report the change."""
    shape = tuple(input_shape)
    macs_before, params_before = _totals(model, shape)
    roots = _roots(model)
    before = {name: layer_widths(m) for name, m in roots.items()}
    widths_before = _widths(model)
    for name, idxs in removal.items():
        if idxs:
            layer = roots[name]
            pruner = graph.get_pruner_of_module(layer)
            graph.get_pruning_group(layer, pruner.prune_out_channels, idxs=sorted(idxs)).prune()
    macs_after, params_after = _totals(model, shape)
    changes = []
    for name, m in roots.items():
        old, new = before[name], layer_widths(m)
        key_in, key_out = ("in_channels", "out_channels") if isinstance(m, nn.Conv2d) else ("in_features",
                                                                                                "out_features")
        changes.append(LayerChange(name, type(m).__name__, old[key_in], new[key_in], old[key_out], new[key_out]))
    changed = {name: w for name, w in _widths(model).items() if w != widths_before.get(name)}
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and changed:
        shrunk = {**spec.get("shrunk", {}), **changed}
        order = list(dict(model.named_modules()))
        model.spec = {**spec, "shrunk": {n: shrunk[n] for n in order if n in shrunk}}
    return StructuredReport(changes, macs_before, macs_after, params_before, params_after,
                            {n: sorted(int(i) for i in idxs) for n, idxs in removal.items() if idxs})


def channel_prune(model: nn.Module, ratio: float, *, input_shape: Sequence[int] | None = None,
                  criterion: str = "l1", ignored_layers: Sequence[str] | None = None,
                  round_to: int | None = None) -> tuple[nn.Module, StructuredReport]:
    """Remove the fraction `ratio` ∈ [0, 1) of the output channels of every prunable group (see the
    module docstring) from a deep copy of `model`; returns the shrunk copy (eval mode) and a report."""
    ratio = check_sparsity(ratio, "ratio")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be a positive integer or None, got {round_to!r}")
    _check_prunable(model)
    shape = input_shape_of(model, input_shape)
    model = copy.deepcopy(model).eval()
    graph = dependency_graph(model, shape)
    groups = prunable_groups(model, graph, ignored_layers)
    scores = channel_scores(model, groups, criterion)
    removal = {}
    for name, _ in groups:
        score = scores[name]
        n = len(score)
        removal[name] = torch.sort(score, stable=True).indices[:n - _kept_count(n, ratio, round_to)].tolist()
    report = remove_channels(model, graph, removal, shape)
    return model.eval(), report


def save_pruned_run(run_dir: str | Path, model: nn.Module, source: RunInfo, *, pruning: dict[str, Any],
                    metrics: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write `model` (a pruned copy of the float run `source`) as a float run folder that
    `bitsmith quantize`, `qat` and `eval` load (shrunk widths in its spec; bitsmith.runs).

    The run keeps the source's data set and records `pruning` (how it was made, JSON) and
    `metrics` (e.g. {"accuracy": ...}); it has no optimizer state (nothing to resume). Written
    whole or not at all (bitsmith.artifacts.publishing), read back before it is published. An
    existing float run at `run_dir` is replaced only with `force` (it may be hours of training).
    """
    if getattr(model, "spec", None) is None:
        raise ConfigError(f"{type(model).__name__} has no .spec: prune a model built by bitsmith.models.build_model")
    if not force and Path(run_dir).is_dir() and FLOAT_RUN.detect(Path(run_dir)):
        raise ConfigError(f"{run_dir} already holds a float run; choose another folder or pass force=True to "
                          "replace it")
    meta = {
        "dataset": source.meta["dataset"],
        "data_dir": source.meta.get("data_dir"),
        "epoch": 0,
        "metrics": metrics or {},
        "pruning": {**pruning, "source_run": str(public_path(Path(source.path).resolve()).absolute())},
    }
    # An optimizer with no state: the run format records one; nothing resumes a pruned run.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with publishing(run_dir, FLOAT_RUN, force=force, command="bitsmith prune") as stage:
        save_checkpoint(stage.path, model, optimizer, meta, {})
        load_run(stage.path)
    return Path(run_dir)
