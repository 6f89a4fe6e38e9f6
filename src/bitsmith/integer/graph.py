"""The IntegerGraph: the one contract every bitsmith back end reads.

A graph is a list of nodes in execution order over named tensors. Every tensor but the float
input is an integer tensor with a declared width, signedness, scale and zero point
(real value = scale · (code − zero_point)); the scale may be one per channel (dimension 0 of the
shape without batch). Integer parameters (weights, biases, multipliers, shifts) live in
`tensors.safetensors`; everything else in `graph.json`. docs/arithmetic.md defines what each op
computes; `bitsmith.integer.engine` executes it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.errors import CheckpointError, GraphError
from bitsmith.integer.arithmetic import MAX_SHIFT, int_range
from bitsmith.storage import load_tensors, read_json, save_tensors_atomic, write_json_atomic

FORMAT = "bitsmith.integer_graph"
VERSION = 1
GRAPH_FILE = "graph.json"
TENSORS_FILE = "tensors.safetensors"

# Attribute names each op requires (beyond inputs/outputs); params are checked separately.
OPS: dict[str, dict[str, Any]] = {
    "QuantizeInput": {"attrs": [], "params": [], "inputs": 1},
    "Conv2d": {"attrs": ["stride", "padding", "dilation", "groups", "weight_bits"], "params": ["weight"], "inputs": 1},
    "Linear": {"attrs": ["weight_bits"], "params": ["weight"], "inputs": 1},
    "Requant": {"attrs": ["clamp_min", "clamp_max", "multiplier_bits"], "params": ["multiplier", "shift"], "inputs": 1},
    "MaxPool2d": {"attrs": ["kernel", "stride"], "params": [], "inputs": 1},
    "AvgPool2d": {"attrs": ["kernel", "stride"], "params": [], "inputs": 1},
    "Flatten": {"attrs": [], "params": [], "inputs": 1},
    "Reorg": {"attrs": ["stride"], "params": [], "inputs": 1},
    "Concat": {"attrs": [], "params": [], "inputs": None},
}
# How Conv2d / Linear store their weights (attr "weight_format", default "dense"): the params each
# format needs in place of "weight", and the attrs it adds. "codebook": `weight_index` (uint8,
# the weight's shape) selects from `codebook` (a 1-D int table, values within weight_bits);
# the weight codes are codebook[weight_index] (CLIP-Q). `weight_codes(node)` expands either.
WEIGHT_FORMATS: dict[str, dict[str, list[str]]] = {
    "dense": {"params": ["weight"], "attrs": []},
    "codebook": {"params": ["weight_index", "codebook"], "attrs": ["index_bits"]},
}


@dataclass
class TensorSpec:
    """A value in the graph. `dtype` is "float32" (the graph input only) or "int"."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str = "int"
    bits: int = 32
    signed: bool = True
    scale: float | list[float] = 1.0
    zero_point: int = 0

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def per_channel(self) -> bool:
        return isinstance(self.scale, list)

    def scale_tensor(self) -> torch.Tensor:
        return torch.tensor(self.scale, dtype=torch.float64)

    def same_quantization(self, other: "TensorSpec") -> bool:
        return (self.bits, self.signed, self.scale, self.zero_point) == (
            other.bits, other.signed, other.scale, other.zero_point)

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if self.dtype == "float32":
            for k in ("bits", "signed", "scale", "zero_point"):
                d.pop(k)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # role -> key in tensors.safetensors

    def to_json(self) -> dict:
        return asdict(self)


class IntegerGraph:
    """Nodes, tensor specs and integer parameters; `run` executes it exactly."""

    def __init__(
        self,
        tensors: dict[str, TensorSpec],
        nodes: list[Node],
        params: dict[str, torch.Tensor],
        inputs: list[str],
        outputs: list[str],
        metadata: dict[str, Any] | None = None,
    ):
        self.tensors = tensors
        self.nodes = nodes
        self.params = params
        self.inputs = inputs
        self.outputs = outputs
        self.metadata = metadata or {}

    # -- execution ------------------------------------------------------------------------
    def run(self, x, *, return_all: bool = False, check_overflow: bool = True):
        """Execute on float images (what the float model takes); returns the output codes (int64)."""
        from bitsmith.integer.engine import run_graph

        return run_graph(self, x, return_all=return_all, check_overflow=check_overflow)

    def dequantize(self, codes: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """Output codes → float values: scale · (code − zero_point), per channel along dim 1."""
        spec = self.tensors[output or self.outputs[0]]
        scale = spec.scale_tensor()
        if spec.per_channel:
            scale = scale.reshape((1, -1) + (1,) * (codes.dim() - 2))
        return ((codes.to(torch.float64) - spec.zero_point) * scale).to(torch.float32)

    def predict(self, x) -> torch.Tensor:
        """Dequantized outputs, for ranking classes: with per-channel output scales the raw codes
        of different classes are on different grids, so their argmax would be wrong."""
        return self.dequantize(self.run(x))

    @property
    def input_spec(self) -> TensorSpec:
        return self.tensors[self.inputs[0]]

    @property
    def output_spec(self) -> TensorSpec:
        return self.tensors[self.outputs[0]]

    def weight_codes(self, node: Node) -> torch.Tensor:
        """The integer weight codes of a Conv2d / Linear node, whatever their storage format:
        the dense `weight`, or `codebook[weight_index]` (expanded; every back end reads this)."""
        if weight_format(node) == "codebook":
            return self.params[node.params["codebook"]][self.params[node.params["weight_index"]].long()]
        return self.params[node.params["weight"]]

    def node_producing(self, tensor: str) -> Node | None:
        return next((n for n in self.nodes if n.output == tensor), None)

    # -- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tensors": [spec.to_json() for spec in self.tensors.values()],
            "nodes": [node.to_json() for node in self.nodes],
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/graph.json` and `path/tensors.safetensors` (each atomically)."""
        self.validate()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # Parameters first: a graph.json never points at tensors that are not yet on disk.
        save_tensors_atomic(path / TENSORS_FILE, self.params, metadata={"format": FORMAT})
        write_json_atomic(path / GRAPH_FILE, self.to_json())
        return path

    def validate(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        ops = ", ".join(n.op for n in self.nodes)
        return f"IntegerGraph({len(self.nodes)} nodes: {ops})"


def load(path: str | os.PathLike) -> IntegerGraph:
    """Load and validate a graph folder (or its graph.json)."""
    path = Path(path)
    if path.is_file() and path.name == GRAPH_FILE:
        path = path.parent
    if not (path / GRAPH_FILE).is_file():
        raise GraphError(f"{path} is not an integer graph: {GRAPH_FILE} not found there")
    try:
        doc = read_json(path / GRAPH_FILE, "graph description")
        params, _ = load_tensors(path / TENSORS_FILE, "graph parameters")
    except CheckpointError as e:
        raise GraphError(str(e)) from None
    where = path / GRAPH_FILE
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphError(f"{where}: not a bitsmith integer graph (format field is {doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise GraphError(
            f"{where}: graph format version {doc.get('version')!r}; this bitsmith reads version {VERSION}. "
            "Re-create the graph with this bitsmith (bitsmith quantize) or upgrade bitsmith."
        )
    try:
        tensors = {t["name"]: TensorSpec.from_json(t) for t in doc["tensors"]}
        nodes = [Node(**n) for n in doc["nodes"]]
        graph = IntegerGraph(tensors, nodes, params, list(doc["inputs"]), list(doc["outputs"]), doc.get("metadata"))
    except (KeyError, TypeError) as e:
        raise GraphError(f"{where}: malformed graph description ({type(e).__name__}: {e})") from None
    try:
        graph.validate()
    except GraphError as e:
        raise GraphError(f"{where}: {e}") from None
    return graph


# -- validation ---------------------------------------------------------------------------

def weight_format(node: Node) -> str:
    """"dense" or "codebook" for a Conv2d / Linear node (see WEIGHT_FORMATS)."""
    return node.attrs.get("weight_format", "dense")


def _required(node: Node, rule: dict[str, Any], kind: str) -> list[str]:
    if node.op not in ("Conv2d", "Linear"):
        return rule[kind]
    fmt = WEIGHT_FORMATS.get(weight_format(node))
    if fmt is None:
        raise GraphError(f"node {node.name!r} ({node.op}): weight_format {weight_format(node)!r}; "
                         f"allowed: {', '.join(WEIGHT_FORMATS)}")
    base = [r for r in rule[kind] if r != "weight"]
    return base + fmt[kind]


def _weight_shape(g: IntegerGraph, node: Node) -> torch.Size:
    role = "weight_index" if weight_format(node) == "codebook" else "weight"
    return g.params[node.params[role]].shape


def _validate(g: IntegerGraph) -> None:
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise GraphError("a graph has exactly one input and one output")
    for spec in g.tensors.values():
        _check_spec(spec)
    if g.input_spec.dtype != "float32":
        raise GraphError(f"graph input {g.inputs[0]!r} must be float32")
    defined = set(g.inputs)
    for node in g.nodes:
        where = f"node {node.name!r} ({node.op})"
        rule = OPS.get(node.op)
        if rule is None:
            raise GraphError(f"{where}: unknown op; known ops: {', '.join(OPS)}")
        if rule["inputs"] is not None and len(node.inputs) != rule["inputs"]:
            raise GraphError(f"{where}: takes {rule['inputs']} input(s), has {len(node.inputs)}")
        for name in node.inputs:
            if name not in defined:
                raise GraphError(f"{where}: input {name!r} is not produced by an earlier node")
        if node.output in defined or node.output not in g.tensors:
            raise GraphError(f"{where}: output {node.output!r} is undeclared or produced twice")
        for a in _required(node, rule, "attrs"):
            if a not in node.attrs:
                raise GraphError(f"{where}: missing attribute {a!r}")
        for p in _required(node, rule, "params"):
            key = node.params.get(p)
            if key is None or key not in g.params:
                raise GraphError(f"{where}: parameter {p!r} missing from {TENSORS_FILE}")
        ins = [g.tensors[i] for i in node.inputs]
        out = g.tensors[node.output]
        if node.op != "QuantizeInput" and any(s.dtype != "int" for s in ins):
            raise GraphError(f"{where}: takes integer inputs; only QuantizeInput reads the float input")
        expected = _infer_shape(g, node, ins)
        if tuple(expected) != tuple(out.shape):
            raise GraphError(f"{where}: output {node.output!r} declared shape {list(out.shape)}, computes {list(expected)}")
        _check_params(g, node, ins, out, where)
        defined.add(node.output)
    if g.outputs[0] not in defined:
        raise GraphError(f"graph output {g.outputs[0]!r} is never produced")


def _check_spec(spec: TensorSpec) -> None:
    where = f"tensor {spec.name!r}"
    if spec.dtype not in ("int", "float32"):
        raise GraphError(f"{where}: dtype {spec.dtype!r}; allowed: int, float32")
    if any((not isinstance(d, int)) or d <= 0 for d in spec.shape):
        raise GraphError(f"{where}: bad shape {list(spec.shape)}")
    if spec.dtype == "float32":
        return
    if not 1 <= spec.bits <= 32:
        raise GraphError(f"{where}: {spec.bits} bits; allowed 1 to 32")
    scales = spec.scale if spec.per_channel else [spec.scale]
    if spec.per_channel and len(scales) != spec.shape[0]:
        raise GraphError(f"{where}: {len(scales)} per-channel scales for {spec.shape[0]} channels")
    if not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in scales):
        raise GraphError(f"{where}: scales must be finite and positive")
    if not spec.qmin <= spec.zero_point <= spec.qmax:
        raise GraphError(f"{where}: zero point {spec.zero_point} outside [{spec.qmin}, {spec.qmax}]")


def as_pair(v) -> list[int]:
    """A kernel/stride/padding attribute as [height, width] (an int means both)."""
    return [v, v] if isinstance(v, int) else list(v)



def _pool_out(size: int, k: int, s: int, p: int = 0, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _infer_shape(g: IntegerGraph, node: Node, ins: list[TensorSpec]) -> tuple[int, ...]:
    a = node.attrs
    x = ins[0].shape
    if node.op in ("QuantizeInput", "Requant"):
        return x
    if node.op == "Conv2d":
        w = _weight_shape(g, node)
        if len(x) != 3 or len(w) != 4:
            raise GraphError(f"node {node.name!r}: Conv2d needs a CHW input and an OIHW weight")
        (sh, sw), (ph, pw), (dh, dw) = as_pair(a["stride"]), as_pair(a["padding"]), as_pair(a["dilation"])
        if x[0] != w[1] * a["groups"]:
            raise GraphError(f"node {node.name!r}: input has {x[0]} channels, weight expects {w[1] * a['groups']}")
        return (w[0], _pool_out(x[1], w[2], sh, ph, dh), _pool_out(x[2], w[3], sw, pw, dw))
    if node.op == "Linear":
        w = _weight_shape(g, node)
        if len(x) != 1 or len(w) != 2 or w[1] != x[0]:
            raise GraphError(f"node {node.name!r}: Linear weight {list(w)} does not fit input {list(x)}")
        return (w[0],)
    if node.op in ("MaxPool2d", "AvgPool2d"):
        (kh, kw), (sh, sw) = as_pair(a["kernel"]), as_pair(a["stride"])
        return (x[0], _pool_out(x[1], kh, sh), _pool_out(x[2], kw, sw))
    if node.op == "Flatten":
        return (math.prod(x),)
    if node.op == "Reorg":
        s = a["stride"]
        if x[1] % s or x[2] % s:
            raise GraphError(f"node {node.name!r}: Reorg stride {s} does not divide {x[1]}x{x[2]}")
        return (x[0] * s * s, x[1] // s, x[2] // s)
    if node.op == "Concat":
        if any(len(s.shape) != len(x) or s.shape[1:] != x[1:] for s in ins):
            raise GraphError(f"node {node.name!r}: Concat inputs differ in spatial shape")
        return (sum(s.shape[0] for s in ins),) + tuple(x[1:])
    raise GraphError(f"node {node.name!r}: no shape rule for {node.op}")


def _check_range(t: torch.Tensor, lo: int, hi: int, what: str) -> None:
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise GraphError(f"{what}: values [{int(t.min())}, {int(t.max())}] outside the allowed [{lo}, {hi}]")


def _check_params(g: IntegerGraph, node: Node, ins: list[TensorSpec], out: TensorSpec, where: str) -> None:
    int_dtypes = (torch.int8, torch.int16, torch.int32, torch.int64)
    for role, key in node.params.items():
        if g.params[key].dtype not in int_dtypes and not (role == "weight_index" and g.params[key].dtype == torch.uint8):
            raise GraphError(f"{where}: parameter {role!r} has dtype {g.params[key].dtype}; must be an integer type")
    x = ins[0]
    if node.op in ("Conv2d", "Linear"):
        if x.per_channel:
            raise GraphError(f"{where}: input {x.name!r} must have a per-tensor scale")
        wbits = node.attrs["weight_bits"]
        if not 1 <= wbits <= 16:
            raise GraphError(f"{where}: weight_bits {wbits}; allowed 1 to 16")
        lo, hi = int_range(wbits, True)
        if weight_format(node) == "codebook":
            _check_codebook(g, node, lo, hi, where)
        else:
            _check_range(g.params[node.params["weight"]], lo, hi, f"{where}: weight codes")
        if "bias" in node.params:
            b = g.params[node.params["bias"]]
            if tuple(b.shape) != (out.shape[0],):
                raise GraphError(f"{where}: bias shape {list(b.shape)}, expected [{out.shape[0]}]")
            _check_range(b, *int_range(out.bits, True), f"{where}: bias")
        if out.zero_point != 0 or not out.signed:
            raise GraphError(f"{where}: an accumulator output is signed with zero point 0")
    elif node.op == "Requant":
        m, s = g.params[node.params["multiplier"]], g.params[node.params["shift"]]
        channels = x.shape[0]
        if m.shape != s.shape or m.numel() not in (1, channels):
            raise GraphError(f"{where}: multiplier/shift must hold 1 or {channels} values")
        mbits = node.attrs["multiplier_bits"]
        _check_range(m, 0, (1 << (mbits - 1)) - 1, f"{where}: multiplier")
        _check_range(s, 0, MAX_SHIFT, f"{where}: shift")
        if x.bits > 32:
            raise GraphError(f"{where}: input wider than 32 bits")
        lo, hi = node.attrs["clamp_min"], node.attrs["clamp_max"]
        if not out.qmin <= lo <= hi <= out.qmax:
            raise GraphError(f"{where}: clamp [{lo}, {hi}] outside the output range [{out.qmin}, {out.qmax}]")
    elif node.op in ("MaxPool2d", "Flatten", "Reorg", "Concat"):
        for s in ins:
            if not s.same_quantization(out):
                raise GraphError(f"{where}: input {s.name!r} and output must share bits, scale and zero point")
            if node.op != "MaxPool2d" and s.per_channel:
                raise GraphError(f"{where}: needs per-tensor scales")
    elif node.op == "AvgPool2d":
        if x.per_channel:
            raise GraphError(f"{where}: needs a per-tensor input scale")
        if out.zero_point != 0 or not out.signed:
            raise GraphError(f"{where}: the window sum is signed with zero point 0")


def _check_codebook(g: IntegerGraph, node: Node, lo: int, hi: int, where: str) -> None:
    index, codebook = g.params[node.params["weight_index"]], g.params[node.params["codebook"]]
    if index.dtype != torch.uint8:
        raise GraphError(f"{where}: weight_index has dtype {index.dtype}; must be uint8")
    ibits = node.attrs["index_bits"]
    if not isinstance(ibits, int) or not 1 <= ibits <= 8:
        raise GraphError(f"{where}: index_bits {ibits!r}; allowed 1 to 8")
    if codebook.dim() != 1 or not 1 <= codebook.numel() <= 1 << ibits:
        raise GraphError(f"{where}: codebook shape {list(codebook.shape)}; must be 1-D with 1 to {1 << ibits} "
                         f"values (index_bits {ibits})")
    _check_range(index, 0, codebook.numel() - 1, f"{where}: weight_index (codebook of {codebook.numel()})")
    _check_range(codebook, lo, hi, f"{where}: codebook values")
