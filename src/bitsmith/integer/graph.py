"""The IntegerGraph: the one contract every bitsmith back end reads.

A graph is a list of nodes in execution order over named tensors. Every tensor but the float
input is an integer tensor with a declared width, signedness, scale and zero point
(real value = scale · (code − zero_point)); the scale may be one per channel (dimension 0 of the
shape without batch). Integer parameters (weights, biases, multipliers, shifts) live in
`tensors.safetensors`; everything else in `graph.json`. docs/arithmetic.md defines what each op
computes, `bitsmith.integer.ops` defines each op (attributes, shape rule, checks), and
`bitsmith.integer.engine.run` executes a graph.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.errors import BitsmithWarning, CheckpointError, GraphError
from bitsmith.integer.arithmetic import int_range
from bitsmith.integer.ops import OPS, required, weight_format
from bitsmith.integer.schema import FORMAT, VERSION, check_document
from bitsmith.storage import is_sha256, read_json, read_tensors, save_tensors_atomic, write_json_atomic

GRAPH_FILE = "graph.json"
TENSORS_FILE = "tensors.safetensors"
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)

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
    """Nodes, tensor specs and integer parameters. `bitsmith.integer.engine.run(graph, x)` executes it
    exactly; the graph itself knows nothing of the engine."""

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

    def dequantize(self, codes: torch.Tensor, output: str | None = None) -> torch.Tensor:
        """Output codes → float values: scale · (code − zero_point), per channel along dim 1."""
        spec = self.tensors[output or self.outputs[0]]
        scale = spec.scale_tensor()
        if spec.per_channel:
            scale = scale.reshape((1, -1) + (1,) * (codes.dim() - 2))
        return ((codes.to(torch.float64) - spec.zero_point) * scale).to(torch.float32)

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

    def macs(self, node: Node) -> int:
        """Multiply-adds of one image through a Conv2d or Linear node: each output element sums
        C_in/groups · KH · KW (Conv2d) or K (Linear) products. Reads shapes only (no codebook
        expansion)."""
        weight = self.params[node.params["weight_index" if weight_format(node) == "codebook" else "weight"]]
        return math.prod(self.tensors[node.output].shape) * math.prod(weight.shape[1:])

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
        """Write `path/graph.json` and `path/tensors.safetensors` (each atomically).

        tensors.safetensors verifies itself (bitsmith.storage), and graph.json records its sha256
        (`tensors_sha256`), which `load` checks: a folder holding one graph's JSON and another's
        tensors (a crash between the two renames, a copy) is refused. Publishing a whole folder
        atomically is the caller's (bitsmith.artifacts.publishing, as the commands do).
        """
        self.validate()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        # Parameters first: a graph.json never points at tensors that are not yet on disk.
        digest = save_tensors_atomic(path / TENSORS_FILE, self.params, metadata={"format": FORMAT})
        doc = self.to_json()
        doc = {"format": doc.pop("format"), "version": doc.pop("version"), TENSORS_DIGEST: digest, **doc}
        write_json_atomic(path / GRAPH_FILE, doc)
        return path

    def validate(self) -> None:
        """GraphError unless the graph is valid: its graph.json fits the schema (bitsmith.integer.schema)
        and its nodes, shapes and parameters agree (`_validate`)."""
        check_document(_as_document(self.to_json()))
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
        stored = read_tensors(path / TENSORS_FILE, "graph parameters")
    except CheckpointError as e:
        raise GraphError(str(e)) from None
    params = stored.tensors
    verify_tensors_digest(doc, path, stored.sha256)
    where = path / GRAPH_FILE
    check_document(doc, str(where))  # every field typed and in range (bitsmith.integer.schema)
    tensors = {t["name"]: TensorSpec.from_json(t) for t in doc["tensors"]}
    nodes = [Node(**n) for n in doc["nodes"]]
    graph = IntegerGraph(tensors, nodes, params, list(doc["inputs"]), list(doc["outputs"]), doc.get("metadata"))
    try:
        _validate(graph)
    except GraphError as e:
        raise GraphError(f"{where}: {e}") from None
    return graph


# -- validation ---------------------------------------------------------------------------

def _as_document(doc: dict) -> Any:
    """An in-memory graph's description as graph.json would hold it (tuples become lists)."""
    try:
        return json.loads(json.dumps(doc))
    except (TypeError, ValueError) as e:
        raise GraphError(f"graph: its description cannot be written as JSON ({e})") from None


def _validate(g: IntegerGraph) -> None:
    """What the schema cannot see in one object: graph order, shapes, the parameters file and the
    parameters' values against the declared widths. Assumes `check_document` passed."""
    for key, spec in g.tensors.items():
        if key != spec.name:
            raise GraphError(f"tensor {spec.name!r} is filed under the name {key!r}")
    if g.inputs[0] not in g.tensors:
        raise GraphError(f"graph input {g.inputs[0]!r} is not a declared tensor")
    if g.input_spec.dtype != "float32":
        raise GraphError(f"graph input {g.inputs[0]!r} must be float32")
    defined = set(g.inputs)
    produced: set[str] = set()
    for node in g.nodes:
        where = f"node {node.name!r} ({node.op})"
        d = OPS[node.op]
        for name in node.inputs:
            if name not in defined:
                raise GraphError(f"{where}: input {name!r} is not produced by an earlier node")
        if node.output in defined or node.output not in g.tensors:
            raise GraphError(f"{where}: output {node.output!r} is undeclared or produced twice")
        for p in required(node, "params"):
            if node.params[p] not in g.params:
                raise GraphError(f"{where}: parameter {p!r} ({node.params[p]!r}) missing from {TENSORS_FILE}")
        for role, key in node.params.items():
            if key not in g.params:
                raise GraphError(f"{where}: parameter {role!r} ({key!r}) missing from {TENSORS_FILE}")
            dtype = g.params[key].dtype
            if dtype not in _INT_DTYPES and not (role == "weight_index" and dtype == torch.uint8):
                raise GraphError(f"{where}: parameter {role!r} has dtype {dtype}; must be an integer type "
                                 "(int8, int16, int32 or int64)")
        ins = [g.tensors[i] for i in node.inputs]
        out = g.tensors[node.output]
        if out.dtype != "int":
            raise GraphError(f"{where}: output {node.output!r} is {out.dtype}; only the graph input is float32")
        if node.op != "QuantizeInput" and any(s.dtype != "int" for s in ins):
            raise GraphError(f"{where}: takes integer inputs; only QuantizeInput reads the float input")
        if node.op == "QuantizeInput" and ins[0].dtype != "float32":
            raise GraphError(f"{where}: reads the float input and produces integer codes")
        d.check(g, node, ins, out, where)  # parameters first: the shape rule reads their shapes
        expected = d.shape(g, node, ins)
        if tuple(expected) != tuple(out.shape):
            raise GraphError(f"{where}: output {node.output!r} declared shape {list(out.shape)}, computes {list(expected)}")
        defined.add(node.output)
        produced.add(node.output)
    if g.outputs[0] not in produced:
        raise GraphError(f"graph output {g.outputs[0]!r} is never produced by a node")


# -- integrity ------------------------------------------------------------------------------------

TENSORS_DIGEST = "tensors_sha256"  # graph.json: the sha256 of tensors.safetensors (64 lowercase hex digits)


def verify_tensors_digest(doc: Any, path: Path, actual: str) -> None:
    """graph.json's `tensors_sha256` must be the sha256 of the folder's tensors.safetensors.

    Called by `load` right after both files are read (`actual`: the digest `read_tensors` computed from
    the bytes it read, so the file is not read twice). A graph.json without the field (saved by
    bitsmith before it recorded one) loads with a BitsmithWarning: the pair cannot be checked.
    A document that is not a bitsmith graph is left to the format check that follows.
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return
    where = path / GRAPH_FILE
    recorded = doc.get(TENSORS_DIGEST)
    if recorded is None:
        warnings.warn(
            f"{where} records no sha256 of {TENSORS_FILE} (saved by an older bitsmith), so bitsmith cannot "
            "check that the two files belong together. Re-create the graph with bitsmith quantize to record one "
            "(or, if you know the two files belong together, load it and save it with this bitsmith).",
            BitsmithWarning, stacklevel=3)
        return
    if not is_sha256(recorded):
        return  # a malformed value: the schema check that follows names the field and its form
    if actual != recorded:
        raise GraphError(
            f"{path / TENSORS_FILE} does not belong to {where}: graph.json records sha256 {recorded[:12]}… for it, "
            f"the file has {actual[:12]}…. The folder mixes two graphs (an interrupted or partial copy or save) "
            "or the file was changed. Re-create the graph with bitsmith quantize (or restore both files "
            "from the same save)."
        )
