"""Per-layer weight and activation distributions of a float run, with the ranges a quantizer could pick.

The values are those `bitsmith ranges` measures (bitsmith.quant.ranges): the folded weights of
every Conv2d / Linear, and the activation each layer's output quantizer sees (after BatchNorm
folding and the fused ReLU), with float weights, on a few calibration batches
(bitsmith.quant.calibration). Beside min–max and mean ± 3σ (exact, from `layer_ranges`) each
distribution carries the percentile range (the 100 − p and p-th percentiles, p = the percentile
observer's) of the values drawn, and the *chosen clip*: the range the integer graph made from the
run actually covers (its tensor's scale × code range; for weights the widest channel), or, with no
such graph, the range the default PTQ configuration (min–max) would choose.

Activations are many: at most `max_samples` values per layer are kept (the same share from every
batch, drawn with a fixed seed) for the histogram and the percentiles; min, max, mean and σ are
over every value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitsmith.integer.arithmetic import int_range
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.observers import PERCENTILE
from bitsmith.quant.prepare import prepare
from bitsmith.quant.ranges import layer_ranges

MAX_SAMPLES = 200_000
_SEED = 0

Range = tuple[float, float]


@dataclass
class Distribution:
    """The values of one layer's weights or output activation, and the ranges marked on its histogram."""

    layer: str
    side: str                 # "weight" or "activation"
    values: np.ndarray        # float32: every weight, or the activation sample
    count: int                # values seen (activations: before sampling)
    minmax: Range
    sigma: Range              # mean ± 3σ
    percentile: Range
    clip: Range | None
    clip_source: str


def _percentiles(values: np.ndarray) -> Range:
    lo, hi = np.percentile(values.astype(np.float64), [100.0 - PERCENTILE, PERCENTILE])
    return float(lo), float(hi)


def _minmax_clip(lo: float, hi: float) -> Range:
    """The default (min–max, symmetric) grid: [0, hi] after a ReLU, else ± the larger magnitude."""
    if lo >= 0:
        return 0.0, hi
    bound = max(abs(lo), abs(hi))
    return -bound, bound


def _graph_clips(graph, layer: str) -> tuple[Range | None, Range | None]:
    """(weight clip, activation clip) of the float layer `layer` in `graph` (named q_<layer>, dots → _)."""
    name = "q_" + layer.replace(".", "_")
    acc_node = next((n for n in graph.nodes if n.name in (f"{name}_acc", name) and n.op in ("Conv2d", "Linear")), None)
    out = graph.tensors.get(name)
    producer = graph.node_producing(name) if out is not None else None
    act = None  # a layer whose output the graph does not requantize (e.g. the logits) has no clip
    if producer is not None and producer.op == "Requant" and not out.per_channel:
        act = _real_range(out)
    weight = None
    if acc_node is not None and "weight_bits" in acc_node.attrs and acc_node.attrs.get("weight_format") != "codebook":
        x = graph.tensors[acc_node.inputs[0]]
        acc = graph.tensors[acc_node.output]
        if not x.per_channel and x.scale:
            w_scale = max(acc.scale if acc.per_channel else [acc.scale]) / x.scale
            bound = w_scale * int_range(int(acc_node.attrs["weight_bits"]), True)[1]
            weight = (-bound, bound)
    return weight, act


def _input_clip(graph) -> Range | None:
    spec = graph.tensors.get(graph.nodes[0].output) if graph.nodes and graph.nodes[0].op == "QuantizeInput" else None
    if spec is None or spec.per_channel:
        return None
    return _real_range(spec)


def _real_range(spec) -> Range:
    """The real values a per-tensor code range [q_min, q_max] stands for."""
    return (spec.qmin - spec.zero_point) * spec.scale, (spec.qmax - spec.zero_point) * spec.scale


class _Sampler:
    """Keeps up to `quota` values of every batch a hook sees."""

    def __init__(self, quota: int, generator: torch.Generator) -> None:
        self.quota, self.gen, self.parts, self.seen = quota, generator, [], 0

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1).to(torch.float32)
        self.seen += x.numel()
        if x.numel() > self.quota:
            x = x[torch.randperm(x.numel(), generator=self.gen)[: self.quota]]
        self.parts.append(x.numpy().copy())

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def layer_distributions(model: nn.Module, calib: Sequence[torch.Tensor], graph=None,
                        max_samples: int = MAX_SAMPLES) -> tuple[list[dict], list[Distribution]]:
    """(the ranges rows of `layer_ranges`, one Distribution per weight and per activation).

    `graph`: the integer graph made from this model (its clips are marked), or None (the default
    min–max clip is marked)."""
    rows = layer_ranges(model, calib)  # exact min-max and 3σ, the same figures as `bitsmith ranges`
    qmodel = prepare(model, QuantConfig(observer="sigma", requantize_output=True))
    layers = [m for m in qmodel.modules() if isinstance(m, QuantLayer)]
    gen = torch.Generator().manual_seed(_SEED)
    quota = max(1, max_samples // max(1, len(calib)))
    samplers = {"input": _Sampler(quota, gen)}
    handles = [qmodel.get_submodule("input_quant").register_forward_pre_hook(samplers["input"])]
    for m in layers:
        m.fake_quant_weights = False  # float weights: the float model's activations
        if m.act_quant is not None:
            samplers[m.float_name] = _Sampler(quota, gen)
            handles.append(m.act_quant.register_forward_pre_hook(samplers[m.float_name]))
    try:
        with torch.no_grad():
            for x in calib:
                qmodel(x)
    finally:
        for h in handles:
            h.remove()
    weights = {m.float_name: m.weight.detach().reshape(-1).to(torch.float32).numpy() for m in layers}
    source = "integer graph" if graph is not None else "default PTQ (min-max)"
    out = []
    for row in rows:
        name = row["layer"]
        w_clip, a_clip = (None, _input_clip(graph)) if name == "input" and graph is not None else (
            _graph_clips(graph, name) if graph is not None else (None, None))
        for side, prefix, values, clip in (("weight", "weight", weights.get(name), w_clip),
                                           ("activation", "act", samplers.get(name) and samplers[name].values(), a_clip)):
            if values is None or row[f"{prefix}_min"] is None or not len(values):
                continue
            lo, hi = row[f"{prefix}_min"], row[f"{prefix}_max"]
            if graph is not None:
                chosen, label = clip, source if clip is not None else "not quantized in the graph"
            elif side == "weight":
                bound = max(abs(lo), abs(hi))  # weights: a symmetric signed grid
                chosen, label = (-bound, bound), source
            else:
                chosen, label = _minmax_clip(lo, hi), source
            count = len(values) if side == "weight" else samplers[name].seen
            out.append(Distribution(name, side, values, count, (lo, hi),
                                    (row[f"{prefix}_3sigma_lo"], row[f"{prefix}_3sigma_hi"]),
                                    _percentiles(values), chosen, label))
    return rows, out
