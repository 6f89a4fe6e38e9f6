"""What a search chooses from, and what each choice costs on the hardware.

A `SearchSpace` holds, per Conv2d/Linear of the float model (in `quantizable_layers` order, the
order of `bitsmith qat --bitw/--bita` digits), the candidate weight widths and input-activation
widths; the first and last layers are fixed at 8/8 unless `search_first_last`. Its costs come from
the accelerator's one cost function (`bitsmith.accel.precision`) applied to the model's *geometry*:
the model quantized at W8A8 with synthetic calibration batches, lowered and compiled for the given
accelerator configuration. Only shapes matter there, never the values.

The search's differentiable cost is Σ_l softmax(α_w,l)ᵀ·T_l·softmax(α_a,l) + constant with the
tables T_l of `tables(metric)`, divided by the first layer's MACs (the issue's and MixQ's
normalisation; `normaliser`): the dataflow DSP count has that division inside its pipeline
interval already, so with `--cost dsp` the cd means what it means in DeepBurning-MixQ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.precision import COST_BITS, assignment_cost, cost_tables, weighted_layers
from bitsmith.accel.program import Program
from bitsmith.errors import BitsmithError, ConfigError
from bitsmith.quant import QuantConfig, lower, quantize
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of, quantizable_layers
from bitsmith.quant.qat.prepare import input_sources

#: The search's cost choices (`--cost`) → the figure of `bitsmith.accel.precision` it minimises.
COSTS = {"dsp": "dsp", "bitops": "bitops", "latency": "cycles", "memory": "weight_bits"}
#: The Hessian search's budgets (`--budget-<name>`) → the figure they bound.
BUDGETS = {"dsp": "dsp", "cycles": "cycles", "kb": "weight_kb"}
DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 7, 8)
FIXED_BITS = 8
GEOMETRY_SEED = 0


def parse_widths(text: str | list[int] | tuple[int, ...], what: str) -> tuple[int, ...]:
    """'2,3,4' (or a list) → (2, 3, 4): each 2..16, at least one, no repeats (sorted)."""
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            widths = [int(t) for t in items]
        except ValueError:
            raise ConfigError(f"{what} {text!r}: not a comma-separated list of integers; allowed: e.g. 2,3,4,8") from None
    else:
        widths = list(text)
    if not widths:
        raise ConfigError(f"{what}: the candidate list is empty; allowed: one or more widths, "
                          f"each {COST_BITS.start} to {COST_BITS.stop - 1}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w not in COST_BITS:
            raise ConfigError(f"{what}: width {w!r} is not allowed; allowed: {COST_BITS.start} to {COST_BITS.stop - 1}")
    if len(set(widths)) != len(widths):
        raise ConfigError(f"{what}: repeated widths in {widths}; allowed: each width once")
    return tuple(sorted(widths))


def graph_order(qmodel: nn.Module) -> list[str]:
    """Float names of the quantized layers in the order the lowered graph (and the program) runs them."""
    return [m.float_name for node in qmodel.graph.nodes
            if isinstance(m := module_of(qmodel, node), QuantLayer)]


def geometry_program(model: nn.Module, input_shape: tuple[int, ...], config: AccelConfig) -> tuple[Program, list[str]]:
    """The model at W8A8 on synthetic batches, lowered and compiled: its shapes, and the float name
    of each program layer with weights."""
    g = torch.Generator().manual_seed(GEOMETRY_SEED)
    batches = [torch.randn((4, *input_shape), generator=g) for _ in range(2)]
    qmodel = quantize(model, batches, QuantConfig())
    graph = lower(qmodel)
    try:
        program = compile_graph(graph, config)
    except BitsmithError as exc:
        raise ConfigError(f"the search prices layers on the accelerator, which cannot run this model as configured: "
                          f"{exc}") from exc
    names = graph_order(qmodel)
    if len(names) != len(weighted_layers(program)):
        raise ConfigError(f"{len(names)} quantized layers but {len(weighted_layers(program))} accelerator layers "
                          "with weights; the search needs one per Conv2d/Linear")
    return program, names


@dataclass
class SearchSpace:
    layers: list[str]                      # Conv2d/Linear names, bit-string order
    candidates_w: list[tuple[int, ...]]    # per layer; a fixed layer has one
    candidates_a: list[tuple[int, ...]]
    program: Program                       # the geometry (compiled W8A8 graph)
    program_index: list[int]               # layer l is weighted program layer program_index[l]

    @property
    def searched(self) -> list[bool]:
        return [len(w) > 1 or len(a) > 1 for w, a in zip(self.candidates_w, self.candidates_a)]

    @property
    def first_macs(self) -> int:
        return weighted_layers(self.program)[0].macs

    def _program_order(self, values: list) -> list:
        out = [None] * len(values)
        for l, p in enumerate(self.program_index):
            out[p] = values[l]
        return out

    def normaliser(self, metric: str) -> float:
        """What the search divides `metric` by: the first layer's MACs (MixQ's rule), which for the
        DSP count is already inside the pipeline interval (so 1), and for cycles is the interval
        itself (MACs₀ / (R·C): cycles per pipeline interval)."""
        if metric == "dsp":
            return 1.0
        if metric == "cycles":
            return self.first_macs / (self.program.config.pe * self.program.config.simd)
        return float(self.first_macs)

    def tables(self, metric: str, normalise: bool = False) -> tuple[list[np.ndarray], float]:
        """Per layer (bit-string order) the exact `metric` at each (w_i, a_j), and the constant rest;
        `normalise`: both divided by `normaliser(metric)` (the search's units)."""
        tables, constant = cost_tables(self.program, self._program_order(self.candidates_w),
                                       self._program_order(self.candidates_a), metric)
        ordered = [tables[p] for p in self.program_index]
        if normalise:
            scale = 1.0 / self.normaliser(metric)
            return [t * scale for t in ordered], constant * scale
        return ordered, constant

    def exact(self, wbits: list[int], abits: list[int]) -> dict:
        """`assignment_cost` of one assignment given in bit-string order (rows in program order)."""
        return assignment_cost(self.program, self._program_order(list(wbits)), self._program_order(list(abits)))

    def to_json(self) -> dict:
        return {"layers": self.layers, "candidates_w": [list(c) for c in self.candidates_w],
                "candidates_a": [list(c) for c in self.candidates_a], "searched": self.searched,
                "accelerator": self.program.config.to_json()}


def build_space(model: nn.Module, input_shape: tuple[int, ...], candidates_w=DEFAULT_CANDIDATES,
                candidates_a=DEFAULT_CANDIDATES, *, search_first_last: bool = False,
                config: AccelConfig | None = None) -> SearchSpace:
    """The search space of `model`: candidates per layer (first and last fixed at 8/8 unless
    `search_first_last`) and its geometry on the accelerator `config`."""
    ws = parse_widths(candidates_w, "--candidates-w")
    as_ = parse_widths(candidates_a, "--candidates-a")
    layers = quantizable_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d/Linear layer: nothing to search")
    program, order = geometry_program(model, tuple(input_shape), config or AccelConfig())
    if sorted(order) != sorted(layers):
        raise ConfigError(f"the graph's layers {order} are not the model's Conv2d/Linear modules {layers}")
    cand_w = [ws] * len(layers)
    cand_a = [as_] * len(layers)
    if not search_first_last:
        fixed = {0, len(layers) - 1}
        for l in fixed:
            cand_w[l] = cand_a[l] = (FIXED_BITS,)
    # An input that is not one layer's own choice is fixed: a residual add's or concatenation's output
    # (its width is QAT's global --abits, which the result sets to 8), or codes several layers read.
    sources = input_sources(model, tuple(input_shape))
    readers = Counter(group for _, group, _ in sources)
    for name, group, owner in sources:
        if owner is None or readers[group] > 1:
            cand_a[layers.index(name)] = (FIXED_BITS,)
    return SearchSpace(layers, cand_w, cand_a, program, [order.index(name) for name in layers])

