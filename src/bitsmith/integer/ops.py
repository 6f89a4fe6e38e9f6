"""Every op of the IntegerGraph, defined once, and the tables back ends fill with their emitters.

`OPS` names each op with its attributes, parameters and input count; `bitsmith.integer.shapes`
holds its shape rule and parameter checks, `bitsmith.integer.reference` its reference semantics
(docs/arithmetic.md). A back end (the fast engine, ONNX, the accelerator compiler, the HLS export,
…) builds one `Emitters` table and registers a function per op it implements:

    EMIT = Emitters("ONNX integer export")

    @EMIT.register("Conv2d")
    def _conv2d(graph, node, builder): ...

    EMIT.lookup(node)(graph, node, builder)   # UnsupportedOpError naming the op if missing

Adding an op is then one entry in `OPS`, its shape rule and check, its reference function, and
one registration per back end; `Emitters.missing()` lists what a back end lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitsmith.errors import GraphError, UnsupportedOpError


@dataclass(frozen=True)
class OpDef:
    name: str
    attrs: tuple[str, ...]        # attributes every node of this op carries
    params: tuple[str, ...]       # integer parameters (roles) in tensors.safetensors
    inputs: int | None            # number of inputs; None: one or more
    doc: str                      # what it computes, in one line (docs/arithmetic.md has the detail)


def _op(name: str, attrs=(), params=(), inputs: int | None = 1, doc: str = "") -> OpDef:
    return OpDef(name, tuple(attrs), tuple(params), inputs, doc)


OPS: dict[str, OpDef] = {d.name: d for d in (
    _op("QuantizeInput", doc="float image → codes: clamp(round_half_even(x / scale) + z)"),
    _op("Conv2d", ["stride", "padding", "dilation", "groups", "weight_bits"], ["weight"],
        doc="Σ (x − z_in)·w + bias, exact, into a signed accumulator"),
    _op("Linear", ["weight_bits"], ["weight"], doc="Σ (x − z_in)·w + bias, exact, into a signed accumulator"),
    _op("Requant", ["clamp_min", "clamp_max", "multiplier_bits"], ["multiplier", "shift"],
        doc="clamp(z_out + ((x − z_in)·m + 2^(s−1)) >> s, lo, hi)"),
    _op("MaxPool2d", ["kernel", "stride"], doc="window maximum of the codes"),
    _op("AvgPool2d", ["kernel", "stride"], doc="window sum of (x − z_in); the 1/N lives in the next Requant"),
    _op("Flatten", doc="CHW → C·H·W, codes unchanged"),
    _op("Reorg", ["stride"], doc="space-to-depth (pixel_unshuffle) by `stride`"),
    _op("Concat", inputs=None, doc="channel concatenation of inputs on one grid"),
)}

# How Conv2d / Linear store their weights (attr "weight_format", default "dense"): the params each
# format needs in place of "weight", and the attrs it adds. "codebook": `weight_index` (uint8,
# the weight's shape) selects from `codebook` (a 1-D int table, values within weight_bits);
# the weight codes are codebook[weight_index] (CLIP-Q).
WEIGHT_FORMATS: dict[str, dict[str, tuple[str, ...]]] = {
    "dense": {"params": ("weight",), "attrs": ()},
    "codebook": {"params": ("weight_index", "codebook"), "attrs": ("index_bits",)},
}

#: Ops whose output is a wide signed accumulator (zero point 0) that a Requant brings back to codes.
ACCUMULATING_OPS = ("Conv2d", "Linear", "AvgPool2d")


def op_def(op: str) -> OpDef:
    d = OPS.get(op)
    if d is None:
        raise GraphError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    return d


class Emitters:
    """One back end's functions per op. `register` refuses ops the IR does not define; `lookup`
    names the op, the node and what the back end supports when it has no function for it."""

    def __init__(self, backend: str):
        self.backend = backend
        self._table: dict[str, Callable[..., Any]] = {}

    def register(self, *ops: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        for op in ops:
            op_def(op)  # only ops of the IR

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            for op in ops:
                if op in self._table:
                    raise ValueError(f"{self.backend}: op {op} registered twice")
                self._table[op] = fn
            return fn

        return add

    def lookup(self, node: Any) -> Callable[..., Any]:
        """The function for `node.op`, or UnsupportedOpError naming the node and the op."""
        fn = self._table.get(node.op)
        if fn is None:
            raise UnsupportedOpError(
                f"{self.backend}: node {node.name!r}: op {node.op} is not supported by this back end "
                f"(it implements {', '.join(self.supported())}; missing: {', '.join(self.missing())})")
        return fn

    def supported(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if op in self._table)

    def missing(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if op not in self._table)

    def __contains__(self, op: str) -> bool:
        return op in self._table
