"""Every op of the IntegerGraph, defined once, and the tables back ends fill with their emitters.

`OPS` holds each op's attributes (with their JSON types and ranges), parameters, input count, shape
rule and parameter checks. `bitsmith.integer.schema` derives graph.json's per-op schema from it (so
an attribute's type and range are written here and nowhere else), and `IntegerGraph.validate` runs
the shape rules and checks; `bitsmith.integer.reference` holds each op's reference semantics, one
function per op written as docs/arithmetic.md states it. A back end (the fast engine, ONNX, the
accelerator compiler, the HLS export, …) builds one `Emitters` table and registers a function per
op it implements:

    EMIT = Emitters("ONNX integer export")

    @EMIT.register("Conv2d")
    def _conv2d(graph, node, builder): ...

    EMIT.lookup(node)(graph, node, builder)   # UnsupportedOpError naming the op if missing

Adding an op is then one entry in `OPS`, its shape rule and check, its reference function, and
one registration per back end; `Emitters.missing()` lists what a back end lacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bitsmith.errors import GraphError, UnsupportedOpError
from bitsmith.integer import outliers
from bitsmith.integer.arithmetic import MAX_SHIFT, MULTIPLIER_BITS, TENSOR_BITS, WEIGHT_BITS, int_range
from bitsmith.integer.sparse import DEFAULT_INDEX_BITS, DEFAULT_RUN_BITS, FIELD_BITS, SIGNED_BITS
from bitsmith.integer.sparse import FORMATS as SPARSE_FORMATS


#: Ops whose output is a wide signed accumulator (zero point 0) that a Requant brings back to codes.
ACCUMULATING_OPS = ("Conv2d", "Linear", "AvgPool2d", "Add")

@dataclass(frozen=True)
class Attr:
    """The JSON type and range of one node attribute; `bitsmith.integer.schema` turns it into the
    graph.json schema (booleans are never integers there).

    kind "int": an integer in [lo, hi]; "pair": an integer or a list of two, each in [lo, hi]
    ([height, width]); "pads": a "pair", or a list of four ([top, left, bottom, right]);
    "choice": one of `choices` (strings); "record": an object with exactly the integer `fields`
    (name, lo, hi).
    """

    kind: str
    lo: int = 0
    hi: int = 0
    choices: tuple[str, ...] = ()
    fields: tuple[tuple[str, int, int], ...] = ()

    def describe(self) -> str:
        if self.kind == "record":
            return "an object {" + ", ".join(f"{n}: an integer from {lo} to {hi}" for n, lo, hi in self.fields) + "}"
        if self.kind == "int":
            return f"an integer from {self.lo} to {self.hi}"
        if self.kind == "pair":
            return f"an integer from {self.lo} to {self.hi}, or a list of two such integers"
        if self.kind == "pads":
            return (f"an integer from {self.lo} to {self.hi}, or a list of two ([height, width]) or four "
                    "([top, left, bottom, right]) such integers")
        return "one of " + ", ".join(repr(c) for c in self.choices)


def int_attr(lo: int, hi: int) -> Attr:
    return Attr("int", lo, hi)


def pair_attr(lo: int, hi: int) -> Attr:
    return Attr("pair", lo, hi)


def pads_attr(lo: int, hi: int) -> Attr:
    return Attr("pads", lo, hi)


def choice_attr(*choices: str) -> Attr:
    return Attr("choice", choices=tuple(choices))


def record_attr(*fields: tuple[str, int, int]) -> Attr:
    return Attr("record", fields=tuple(fields))


#: Largest kernel, stride, padding or dilation an attribute may declare (a spatial size).
MAX_WINDOW = 1 << 16
#: A clamp bound lies in the union of every code range an integer tensor may declare.
#: Largest multiplier of an Add input (a 32-bit signed register).
ADD_MULTIPLIER_MAX = (1 << 31) - 1
CLAMP_RANGE = (int_range(TENSOR_BITS[1], True)[0], int_range(TENSOR_BITS[1], False)[1])

# How Conv2d / Linear store their weights (attr "weight_format", default "dense"): the params each
# format needs in place of "weight", and the attrs it adds. "codebook": `weight_index` (uint8,
# the weight's shape) selects from `codebook` (a 1-D int table, values within weight_bits);
# the weight codes are codebook[weight_index] (CLIP-Q).
WEIGHT_FORMATS: dict[str, dict[str, Any]] = {
    "dense": {"params": ("weight",), "attrs": {}},
    "codebook": {"params": ("weight_index", "codebook"), "attrs": {"index_bits": int_attr(1, 8)}},
}
#: Ops whose weights come in one of WEIGHT_FORMATS (chosen by the optional attribute "weight_format").
WEIGHTED_OPS = ("Conv2d", "Linear")

# How a dense Conv2d / Linear's weight codes are *stored* (docs/sparse-formats.md "In the IR"): the
# optional attr "weight_storage" names a format of bitsmith.integer.sparse (absent = "dense"), with
# its field width ("storage_run_bits" for run-length, "storage_index_bits" for relative; absent = the
# sparse module's default). The optional "outlier" describes an outlier split of the codes: inliers
# are l·2^shift with l a signed low_bits code, every other code is an outlier within outlier_bits.
# None of these change arithmetic: the engine, the reference and every back end read the codes.
STORAGE_ATTRS: dict[str, Attr] = {
    "weight_storage": choice_attr(*SPARSE_FORMATS),
    "storage_run_bits": int_attr(*FIELD_BITS),
    "storage_index_bits": int_attr(*FIELD_BITS),
    "outlier": record_attr(("low_bits", *SIGNED_BITS), ("shift", 0, SIGNED_BITS[1]), ("outlier_bits", *SIGNED_BITS)),
}
#: The storage format a field-width attr belongs to.
STORAGE_FIELD_ATTRS = {"storage_run_bits": "run-length", "storage_index_bits": "relative"}


ShapeRule = Callable[[Any, Any, list], tuple[int, ...]]
Check = Callable[[Any, Any, list, Any, str], None]


@dataclass(frozen=True)
class OpDef:
    name: str
    attrs: Mapping[str, Attr]     # attributes every node of this op carries, with their types and ranges
    params: tuple[str, ...]       # integer parameters (roles) in tensors.safetensors
    inputs: int | None            # number of inputs; None: one or more
    shape: ShapeRule              # (graph, node, input specs) → output shape (without batch)
    check: Check                  # (graph, node, input specs, output spec, where) → GraphError or None
    doc: str                      # what it computes, in one line (docs/arithmetic.md has the detail)
    optional_params: tuple[str, ...] = ()  # roles a node may add (a Conv2d / Linear bias)


# -- helpers every back end uses to read a node -----------------------------------------------

def as_pair(v) -> list[int]:
    """A kernel/stride/padding attribute as [height, width] (an int means both)."""
    return [v, v] if isinstance(v, int) else list(v)


def as_pads(v) -> tuple[int, int, int, int]:
    """A Conv2d padding attribute as (top, left, bottom, right): an int means all four, [ph, pw]
    means ph above and below, pw left and right."""
    if isinstance(v, int):
        return v, v, v, v
    if len(v) == 2:
        return v[0], v[1], v[0], v[1]
    return tuple(v)


def symmetric_padding(v) -> list[int] | None:
    """[ph, pw] when a padding attribute pads both sides alike, None when it is asymmetric."""
    top, left, bottom, right = as_pads(v)
    return [top, left] if (top, left) == (bottom, right) else None


def weight_format(node) -> str:
    """"dense" or "codebook" for a Conv2d / Linear node (see WEIGHT_FORMATS)."""
    return node.attrs.get("weight_format", "dense")


def weight_storage(node) -> tuple[str, dict[str, int]]:
    """(format, {"run_bits": r} or {"index_bits": k} or {}) a Conv2d / Linear node's weight codes are
    stored in (STORAGE_ATTRS; absent = ("dense", {})): the keyword arguments of sparse.encode."""
    fmt = node.attrs.get("weight_storage", "dense")
    if fmt == "run-length":
        return fmt, {"run_bits": int(node.attrs.get("storage_run_bits", DEFAULT_RUN_BITS))}
    if fmt == "relative":
        return fmt, {"index_bits": int(node.attrs.get("storage_index_bits", DEFAULT_INDEX_BITS))}
    return fmt, {}


def storage_problem(attrs: Mapping[str, Any]) -> str | None:
    """What is inconsistent among a Conv2d / Linear node's storage attrs (types and ranges are the
    schema's), or None: storage describes dense codes only, a field width belongs to its format, an
    outlier split must fit the weight width."""
    given = [a for a in STORAGE_ATTRS if a in attrs]
    if given and attrs.get("weight_format", "dense") != "dense":
        return (f"attribute {given[0]!r} describes dense weight codes; a {attrs['weight_format']} weight "
                "stores its own (drop it, or make the weight dense)")
    for name, fmt in STORAGE_FIELD_ATTRS.items():
        if name in attrs and attrs.get("weight_storage", "dense") != fmt:
            return (f"attribute {name!r} is the field width of weight_storage {fmt!r}; this node's is "
                    f"{attrs.get('weight_storage', 'dense')!r}")
    split, bits = attrs.get("outlier"), attrs.get("weight_bits")
    if isinstance(split, Mapping) and isinstance(bits, int):
        low, shift, wide = split.get("low_bits"), split.get("shift"), split.get("outlier_bits")
        if all(isinstance(v, int) for v in (low, shift, wide)) and (low + shift > bits or wide > bits):
            return (f"attribute 'outlier' {dict(split)}: low_bits + shift ({low + shift}) and outlier_bits ({wide}) "
                    f"must each be at most weight_bits ({bits})")
    return None


def outlier_parts(node, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(low codes l, outlier codes) of a node with an "outlier" attr, each the weight's shape, by the
    one split rule (`bitsmith.integer.outliers.outlier_split`): an inlier code q = l·2^shift with
    |l| ≤ 2^(low_bits−1) − 1 has l there and 0 in the outliers; every other code is 0 in l and itself
    in the outliers. None without the attr. codes == l·2^shift + outliers."""
    attr = node.attrs.get("outlier")
    if attr is None:
        return None
    split = outliers.outlier_split(codes.numpy(), int(attr["low_bits"]), int(attr["shift"]))
    wide = np.zeros(codes.numel(), dtype=np.int64)
    wide[split.index] = split.values
    return torch.from_numpy(split.dense), torch.from_numpy(wide.reshape(tuple(codes.shape)))


def signature(op: str, attrs: Mapping[str, Any]) -> tuple[dict[str, Attr], dict[str, Attr], tuple[str, ...],
                                                          tuple[str, ...]]:
    """What a node of `op` with these `attrs` carries: (required attrs, optional attrs, required params,
    optional params). For Conv2d / Linear the weight format (attrs["weight_format"], default
    "dense") puts its own params in place of "weight" and adds its attrs."""
    d = op_def(op)
    attrs_required, params_required = dict(d.attrs), d.params
    optional: dict[str, Attr] = {}
    if op in WEIGHTED_OPS:
        optional["weight_format"] = choice_attr(*WEIGHT_FORMATS)
        optional |= STORAGE_ATTRS
        fmt = WEIGHT_FORMATS.get(attrs.get("weight_format", "dense"))
        if fmt is None:
            raise GraphError(f"weight_format {attrs.get('weight_format')!r}; allowed: {', '.join(WEIGHT_FORMATS)}")
        attrs_required |= fmt["attrs"]
        params_required = tuple(n for n in params_required if n != "weight") + fmt["params"]
    return attrs_required, optional, params_required, d.optional_params


def required(node, kind: str) -> tuple[str, ...]:
    """The attrs or params (`kind`) a node must carry: its op's, with the weight format's in place of
    "weight" for Conv2d / Linear."""
    try:
        attrs, _, params, _ = signature(node.op, node.attrs)
    except GraphError as e:
        raise GraphError(f"node {node.name!r} ({node.op}): {e}") from None
    return tuple(attrs) if kind == "attrs" else params


def _window_out(size: int, k: int, s: int, p: int = 0, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _weight_shape(g, node) -> tuple[int, ...]:
    role = "weight_index" if weight_format(node) == "codebook" else "weight"
    return tuple(g.params[node.params[role]].shape)


def _in_range(t, lo: int, hi: int, what: str) -> None:
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise GraphError(f"{what}: values [{int(t.min())}, {int(t.max())}] outside the allowed [{lo}, {hi}]")


# -- shape rules ------------------------------------------------------------------------------

def _same_shape(g, node, ins):
    return tuple(ins[0].shape)


def _conv_shape(g, node, ins):
    a, x, w = node.attrs, ins[0].shape, _weight_shape(g, node)
    if len(x) != 3 or len(w) != 4:
        raise GraphError(f"node {node.name!r}: Conv2d needs a CHW input and an OIHW weight")
    (sh, sw), (dh, dw) = as_pair(a["stride"]), as_pair(a["dilation"])
    top, left, bottom, right = as_pads(a["padding"])
    if x[0] != w[1] * a["groups"] or w[0] % a["groups"]:
        raise GraphError(f"node {node.name!r}: input has {x[0]} channels, weight expects {w[1] * a['groups']} "
                         f"in {a['groups']} group(s) of {w[0]} outputs")
    out = (w[0], _window_out(x[1] + top + bottom, w[2], sh, 0, dh), _window_out(x[2] + left + right, w[3], sw, 0, dw))
    if min(out) < 1:
        raise GraphError(f"node {node.name!r}: kernel {list(w[2:])} does not fit the input {list(x)}")
    return out


def _linear_shape(g, node, ins):
    x, w = ins[0].shape, _weight_shape(g, node)
    if len(x) != 1 or len(w) != 2 or w[1] != x[0]:
        raise GraphError(f"node {node.name!r}: Linear weight {list(w)} does not fit input {list(x)}")
    return (w[0],)


def _pool_shape(g, node, ins):
    x = ins[0].shape
    (kh, kw), (sh, sw) = as_pair(node.attrs["kernel"]), as_pair(node.attrs["stride"])
    if len(x) != 3 or kh > x[1] or kw > x[2]:
        raise GraphError(f"node {node.name!r}: {node.op} kernel {[kh, kw]} does not fit the input {list(x)}")
    return (x[0], _window_out(x[1], kh, sh), _window_out(x[2], kw, sw))


def _flatten_shape(g, node, ins):
    return (math.prod(ins[0].shape),)


def _reorg_shape(g, node, ins):
    x, s = ins[0].shape, node.attrs["stride"]
    if len(x) != 3 or x[1] % s or x[2] % s:
        raise GraphError(f"node {node.name!r}: Reorg stride {s} does not divide {list(x[1:])}")
    return (x[0] * s * s, x[1] // s, x[2] // s)


def _add_shape(g, node, ins):
    if ins[0].shape != ins[1].shape:
        raise GraphError(f"node {node.name!r}: Add inputs have shapes {list(ins[0].shape)} and {list(ins[1].shape)}")
    return tuple(ins[0].shape)


def _concat_shape(g, node, ins):
    x = ins[0].shape
    if any(len(s.shape) != len(x) or s.shape[1:] != x[1:] for s in ins):
        raise GraphError(f"node {node.name!r}: Concat inputs differ in spatial shape")
    return (sum(s.shape[0] for s in ins),) + tuple(x[1:])


# -- parameter checks (attribute types and ranges are graph.json's schema, from `Attr` above) --------

def _no_check(g, node, ins, out, where) -> None:
    return None


def _check_quantize_input(g, node, ins, out, where) -> None:
    """The one float operation: a float32 division by the output's (single) scale."""
    if out.per_channel:
        raise GraphError(f"{where}: the input quantizer's output {out.name!r} needs one scale, not one per channel")
    scale32 = float(torch.tensor(out.scale, dtype=torch.float32))  # as the engine and ONNX round it
    if not 0 < scale32 < math.inf:
        raise GraphError(f"{where}: scale {out.scale!r} of {out.name!r} is 0 or infinite as a float32 "
                         "(QuantizeInput divides in float32); allowed: about 1.4e-45 to 3.4e38")


def _check_mac(g, node, ins, out, where) -> None:
    """Conv2d / Linear: weight codes within weight_bits, bias within the accumulator."""
    x = ins[0]
    if x.per_channel:
        raise GraphError(f"{where}: input {x.name!r} must have a per-tensor scale")
    if any(d < 1 for d in _weight_shape(g, node)):
        raise GraphError(f"{where}: weight shape {list(_weight_shape(g, node))} has an empty dimension")
    lo, hi = int_range(node.attrs["weight_bits"], True)
    if weight_format(node) == "codebook":
        _check_codebook(g, node, lo, hi, where)
    else:
        _in_range(g.params[node.params["weight"]], lo, hi, f"{where}: weight codes")
    problem = storage_problem(node.attrs)
    if problem:
        raise GraphError(f"{where}: {problem}")
    split = outlier_parts(node, g.weight_codes(node))
    if split is not None:
        _in_range(split[1], *int_range(int(node.attrs["outlier"]["outlier_bits"]), True),
                  f"{where}: outlier codes (codes that are not low_bits codes · 2^shift)")
    if "bias" in node.params:
        b = g.params[node.params["bias"]]
        if tuple(b.shape) != (out.shape[0],):
            raise GraphError(f"{where}: bias shape {list(b.shape)}, expected [{out.shape[0]}]")
        _in_range(b, *int_range(out.bits, True), f"{where}: bias")
    if out.zero_point != 0 or not out.signed:
        raise GraphError(f"{where}: an accumulator output is signed with zero point 0")


def _check_codebook(g, node, lo: int, hi: int, where: str) -> None:
    index, codebook = g.params[node.params["weight_index"]], g.params[node.params["codebook"]]
    if str(index.dtype) != "torch.uint8":
        raise GraphError(f"{where}: weight_index has dtype {index.dtype}; must be uint8")
    ibits = node.attrs["index_bits"]
    if codebook.dim() != 1 or not 1 <= codebook.numel() <= 1 << ibits:
        raise GraphError(f"{where}: codebook shape {list(codebook.shape)}; must be 1-D with 1 to {1 << ibits} "
                         f"values (index_bits {ibits})")
    _in_range(index, 0, codebook.numel() - 1, f"{where}: weight_index (codebook of {codebook.numel()})")
    _in_range(codebook, lo, hi, f"{where}: codebook values")


def _check_requant(g, node, ins, out, where) -> None:
    x = ins[0]
    m, s = g.params[node.params["multiplier"]], g.params[node.params["shift"]]
    channels = x.shape[0]
    if m.dim() != 1 or s.dim() != 1 or m.shape != s.shape or m.numel() not in (1, channels):
        raise GraphError(f"{where}: multiplier and shift have shapes {list(m.shape)} and {list(s.shape)}; "
                         f"each must be 1-D with 1 or {channels} values")
    mbits = node.attrs["multiplier_bits"]
    _in_range(m, 0, (1 << (mbits - 1)) - 1, f"{where}: multiplier ({mbits}-bit)")
    _in_range(s, 0, MAX_SHIFT, f"{where}: shift")
    lo, hi = node.attrs["clamp_min"], node.attrs["clamp_max"]
    if not out.qmin <= lo <= hi <= out.qmax:
        raise GraphError(f"{where}: clamp [{lo}, {hi}] outside the output range [{out.qmin}, {out.qmax}] "
                         "(or clamp_min > clamp_max)")


def _check_same_grid(g, node, ins, out, where) -> None:
    """MaxPool2d, Flatten, Reorg, Concat move codes without changing them: one grid in and out."""
    for s in ins:
        if not s.same_quantization(out):
            raise GraphError(f"{where}: input {s.name!r} and output must share bits, signedness, scale and zero point")
        if node.op != "MaxPool2d" and s.per_channel:
            raise GraphError(f"{where}: needs per-tensor scales")


def _check_avgpool(g, node, ins, out, where) -> None:
    if ins[0].per_channel:
        raise GraphError(f"{where}: needs a per-tensor input scale")
    if out.zero_point != 0 or not out.signed:
        raise GraphError(f"{where}: the window sum is signed with zero point 0")


def _check_add(g, node, ins, out, where) -> None:
    """Two per-tensor code inputs, one non-negative multiplier each, into an accumulator."""
    for s in ins:
        if s.per_channel:
            raise GraphError(f"{where}: input {s.name!r} must have a per-tensor scale")
    m = g.params[node.params["multiplier"]]
    if m.dim() != 1 or m.numel() != 2:
        raise GraphError(f"{where}: multiplier has shape {list(m.shape)}; must be 1-D with one value per input (2)")
    _in_range(m, 0, ADD_MULTIPLIER_MAX, f"{where}: multiplier")
    if out.zero_point != 0 or not out.signed:
        raise GraphError(f"{where}: an accumulator output is signed with zero point 0")


def _op(name: str, attrs: Mapping[str, Attr] | None = None, params=(), inputs: int | None = 1, *, shape: ShapeRule,
        check: Check = _no_check, doc: str = "", optional_params=()) -> OpDef:
    return OpDef(name, dict(attrs or {}), tuple(params), inputs, shape, check, doc, tuple(optional_params))


_WINDOW = {"kernel": pair_attr(1, MAX_WINDOW), "stride": pair_attr(1, MAX_WINDOW)}

OPS: dict[str, OpDef] = {d.name: d for d in (
    _op("QuantizeInput", shape=_same_shape, check=_check_quantize_input,
        doc="float image → codes: clamp(round_half_even(x / scale) + z)"),
    _op("Conv2d", {"stride": pair_attr(1, MAX_WINDOW), "padding": pads_attr(0, MAX_WINDOW),
                   "dilation": pair_attr(1, MAX_WINDOW), "groups": int_attr(1, 1 << 20),
                   "weight_bits": int_attr(*WEIGHT_BITS)},
        ["weight"], shape=_conv_shape, check=_check_mac, optional_params=["bias"],
        doc="Σ (x − z_in)·w + bias, exact, into a signed accumulator"),
    _op("Linear", {"weight_bits": int_attr(*WEIGHT_BITS)}, ["weight"], shape=_linear_shape, check=_check_mac,
        optional_params=["bias"], doc="Σ (x − z_in)·w + bias, exact, into a signed accumulator"),
    _op("Requant", {"clamp_min": int_attr(*CLAMP_RANGE), "clamp_max": int_attr(*CLAMP_RANGE),
                    "multiplier_bits": int_attr(*MULTIPLIER_BITS)},
        ["multiplier", "shift"], shape=_same_shape, check=_check_requant,
        doc="clamp(z_out + ((x − z_in)·m + 2^(s−1)) >> s, lo, hi)"),
    _op("MaxPool2d", _WINDOW, shape=_pool_shape, check=_check_same_grid, doc="window maximum of the codes"),
    _op("AvgPool2d", _WINDOW, shape=_pool_shape, check=_check_avgpool,
        doc="window sum of (x − z_in); the 1/N lives in the next Requant"),
    _op("Flatten", shape=_flatten_shape, check=_check_same_grid, doc="CHW → C·H·W, codes unchanged"),
    _op("Reorg", {"stride": int_attr(1, 1 << 10)}, shape=_reorg_shape, check=_check_same_grid,
        doc="space-to-depth (pixel_unshuffle) by `stride`"),
    _op("Concat", inputs=None, shape=_concat_shape, check=_check_same_grid,
        doc="channel concatenation of inputs on one grid"),
    _op("Add", params=["multiplier"], inputs=2, shape=_add_shape, check=_check_add,
        doc="(a − z_a)·m[0] + (b − z_b)·m[1], exact, into a signed accumulator (a Requant follows)"),
)}


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
