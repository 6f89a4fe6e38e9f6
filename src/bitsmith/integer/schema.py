"""The schema of graph.json: every field typed and range-checked in one place (pydantic v2, strict).

    check_document(doc, where)     # GraphError naming the file, the tensor or node, the field and
                                   # what is allowed; returns nothing when `doc` fits

What is checked here is what one JSON object can say about itself: types (a boolean is never an
integer, a string never a number), ranges, required and unknown keys, names, a tensor's zero point
within its own code range, its per-channel scales against its channel count, a node's attributes
and parameter roles for its op (and weight format). Each op's attributes, with their types and
ranges, are declared once, in `bitsmith.integer.ops.OPS` (`Attr`); the node models below are
derived from that table. What needs several objects (shapes, parameter values against declared
widths, graph order, the tensors file) is `IntegerGraph.validate`'s (graph.py, ops.py).

docs/integer-graph.md states the same schema in prose.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, WithJsonSchema,
                      create_model, model_validator)

from bitsmith.errors import GraphError
from bitsmith.integer.arithmetic import TENSOR_BITS, int_range
from bitsmith.integer.ops import OPS, WEIGHT_FORMATS, WEIGHTED_OPS, Attr, signature, storage_problem

FORMAT = "bitsmith.integer_graph"
VERSION = 1

#: Tensor, node and parameter names: letters, digits, '_', '.', '-' (no '/': back ends name their own
#: helper values "<node>/<step>", so a graph name can never collide with one), at most 256 characters.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,255}")
#: Largest dimension a tensor shape may declare (the batch is not part of it).
MAX_DIM = (1 << 31) - 1
#: Dimensions of a tensor without the batch: C, or C×H×W (1 to 3).
RANK = (1, 3)
#: Widest zero point of any integer tensor (the union of the code ranges of TENSOR_BITS).
ZERO_POINT_RANGE = (int_range(TENSOR_BITS[1], True)[0], int_range(TENSOR_BITS[1], False)[1])


# -- leaf types: each check says what is allowed --------------------------------------------------

def _leaf(check: Callable[[Any], Any], json_schema: dict) -> Any:
    return Annotated[Any, PlainValidator(check), WithJsonSchema(json_schema)]


def _bounded(json_type: str, lo: Any, hi: Any) -> dict[str, Any]:
    """The JSON Schema of a `json_type` in [lo, hi] (either bound may be open)."""
    schema: dict[str, Any] = {"type": json_type}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return schema


def is_int(v: Any) -> bool:
    """An integer that is not a boolean (JSON true/false are never numbers here)."""
    return isinstance(v, int) and not isinstance(v, bool)


def strict_int(lo: int | None = None, hi: int | None = None) -> Any:
    """An integer in [lo, hi] (either bound may be open)."""
    if lo is not None and hi is not None:
        allowed = f"an integer from {lo} to {hi}"
    elif lo is not None:
        allowed = f"an integer ≥ {lo}"
    else:
        allowed = "an integer"

    def check(v: Any) -> int:
        if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"{v!r}; allowed: {allowed}")
        return v

    return _leaf(check, _bounded("integer", lo, hi))


def finite_number(lo: float | None = None, hi: float | None = None) -> Any:
    """A finite number in [lo, hi] (an integer is a number; a boolean is not)."""
    allowed = "a finite number" + (f" ≥ {lo}" if lo is not None else "") + (f" and ≤ {hi}" if hi is not None else "")

    def check(v: Any) -> Any:
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or (lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ValueError(f"{v!r}; allowed: {allowed}")
        return v

    return _leaf(check, _bounded("number", lo, hi))


def _positive(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _check_scale(v: Any) -> Any:
    """A finite number > 0 (an integer is a number; a boolean is not), or a non-empty list of them."""
    if not (_positive(v) or (isinstance(v, list) and v and all(_positive(s) for s in v))):
        raise ValueError(f"{v!r}; allowed: a finite number > 0, or a non-empty list of them (one per channel)")
    return v


_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
Scale = _leaf(_check_scale, {"anyOf": [_POSITIVE, {"type": "array", "items": _POSITIVE, "minItems": 1}]})


def _check_name(v: Any) -> str:
    if not isinstance(v, str) or not NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a name; allowed: letters, digits, '_', '.', '-', starting with a letter "
                         "or '_', at most 256 characters")
    return v


Name = _leaf(_check_name, {"type": "string", "pattern": f"^{NAME.pattern}$"})
StrictBool = Annotated[bool, Field(strict=True)]


def _attr_type(a: Attr) -> Any:
    """The JSON type of an attribute declared in ops.OPS."""
    if a.kind == "int":
        return strict_int(a.lo, a.hi)
    if a.kind == "choice":
        def check_choice(v: Any, choices=a.choices) -> str:
            if not isinstance(v, str) or v not in choices:
                raise ValueError(f"{v!r}; allowed: {', '.join(repr(c) for c in choices)}")
            return v

        return _leaf(check_choice, {"enum": list(a.choices)})
    if a.kind == "record":
        def check_record(v: Any) -> dict:
            if (not isinstance(v, dict) or set(v) != {n for n, _, _ in a.fields}
                    or not all(is_int(v[n]) and lo <= v[n] <= hi for n, lo, hi in a.fields)):
                raise ValueError(f"{v!r}; allowed: {a.describe()}")
            return v

        properties = {n: {"type": "integer", "minimum": lo, "maximum": hi} for n, lo, hi in a.fields}
        return _leaf(check_record, {"type": "object", "properties": properties, "required": list(properties),
                                    "additionalProperties": False})

    lengths = (2, 4) if a.kind == "pads" else (2,)

    def check_pair(v: Any, lo=a.lo, hi=a.hi) -> Any:
        items = v if isinstance(v, list) and len(v) in lengths else [v] if not isinstance(v, list) else None
        if items is None or not all(is_int(i) and lo <= i <= hi for i in items):
            raise ValueError(f"{v!r}; allowed: {a.describe()}")
        return v

    item = {"type": "integer", "minimum": a.lo, "maximum": a.hi}
    lists = [{"type": "array", "items": item, "minItems": n, "maxItems": n} for n in lengths]
    return _leaf(check_pair, {"anyOf": [item, *lists]})


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# -- tensors --------------------------------------------------------------------------------------

_CODE_FIELDS = ("bits", "signed", "scale", "zero_point")


class TensorModel(_Strict):
    """One entry of "tensors". The graph input is dtype "float32" with no code fields; every other
    tensor is dtype "int" with all four."""

    name: Name
    shape: Annotated[list[strict_int(1, MAX_DIM)], Field(min_length=RANK[0], max_length=RANK[1])]
    dtype: Literal["int", "float32"]
    bits: strict_int(*TENSOR_BITS) = None
    signed: StrictBool = None
    scale: Scale = None
    zero_point: strict_int(*ZERO_POINT_RANGE) = None

    @model_validator(mode="after")
    def _codes(self) -> "TensorModel":
        given = [f for f in _CODE_FIELDS if f in self.model_fields_set]
        if self.dtype == "float32":
            if given:
                raise ValueError(f"a float32 tensor has no {', '.join(given)} (only integer tensors carry codes)")
            return self
        missing = [f for f in _CODE_FIELDS if f not in given]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: an integer tensor declares bits, signed, scale and "
                             "zero_point")
        lo, hi = int_range(self.bits, self.signed)
        if not lo <= self.zero_point <= hi:
            raise ValueError(f"zero_point {self.zero_point} outside the {'signed' if self.signed else 'unsigned'} "
                             f"{self.bits}-bit code range; allowed: {lo} to {hi}")
        if isinstance(self.scale, list) and len(self.scale) != self.shape[0]:
            raise ValueError(f"scale: {len(self.scale)} per-channel scales for {self.shape[0]} channels "
                             f"(shape {self.shape}); allowed: one number, or a list of {self.shape[0]}")
        return self


# -- nodes: one model per op, derived from ops.OPS -------------------------------------------------

class _NodeBase(_Strict):
    name: Name
    inputs: Annotated[list[Name], Field(min_length=1)]
    output: Name
    params: dict[str, Name] = {}

    @model_validator(mode="after")
    def _signature(self) -> "_NodeBase":
        attrs = self.attrs.model_dump(exclude_unset=True)
        required_attrs, optional_attrs, required_params, optional_params = signature(self.op, attrs)
        missing = [a for a in required_attrs if a not in attrs]
        if missing:
            raise ValueError(f"missing attribute {missing[0]!r}; allowed: {required_attrs[missing[0]].describe()}")
        unused = [a for a in attrs if a not in required_attrs and a not in optional_attrs]
        if unused:
            raise ValueError(f"attribute {unused[0]!r} does not belong to a "
                             f"{attrs.get('weight_format', 'dense')} {self.op}")
        problem = storage_problem(attrs) if self.op in WEIGHTED_OPS else None
        if problem:
            raise ValueError(problem)
        roles = set(required_params) | set(optional_params)
        extra = sorted(set(self.params) - roles)
        if extra:
            raise ValueError(f"parameter role {extra[0]!r} is not one of this {self.op}'s: "
                             f"{', '.join(sorted(roles)) or 'none'}")
        missing = [p for p in required_params if p not in self.params]
        if missing:
            raise ValueError(f"missing parameter {missing[0]!r} (params maps each role to a key of "
                             "tensors.safetensors)")
        return self


def _node_model(op: str) -> type[_NodeBase]:
    """The model of a node of `op`: its attributes typed from ops.OPS. Every attribute is optional in
    the model; `_signature` requires the ones the op (and its weight format) needs, saying their range."""
    d = OPS[op]
    declared = dict(d.attrs)
    if op in WEIGHTED_OPS:  # every weight format's attributes may appear; _signature keeps the right ones
        declared |= signature(op, {})[1]
        for fmt in WEIGHT_FORMATS.values():
            declared |= fmt["attrs"]
    attrs_model = create_model(f"{op}Attrs", __base__=_Strict, **{n: (_attr_type(a), None) for n, a in declared.items()})
    inputs = Annotated[list[Name], Field(min_length=1, max_length=d.inputs)]
    return create_model(f"{op}Node", __base__=_NodeBase, op=(Literal[op], ...), inputs=(inputs, ...),
                        attrs=(attrs_model, attrs_model()))


NODE_MODELS: dict[str, type[_NodeBase]] = {op: _node_model(op) for op in OPS}
NodeModel = Annotated[Union[tuple(NODE_MODELS.values())], Field(discriminator="op")]


# -- the document ---------------------------------------------------------------------------------

def _optional_str() -> Any:
    def check(v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{v!r}; allowed: a string or null")
        return v

    return _leaf(check, {"type": ["string", "null"]})


class _ModelNote(BaseModel):
    """metadata.model: the zoo model a graph was made from (ONNX exports name their graph after it)."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: Annotated[str, Field(min_length=1)]


class GraphMetadata(BaseModel):
    """Free-form, except the keys bitsmith reads back (the data set to evaluate on and where it lives)."""

    model_config = ConfigDict(strict=True, extra="allow")
    dataset: _optional_str() = None
    data_dir: _optional_str() = None
    source_run: _optional_str() = None
    model: _ModelNote | None = None


def _check_sha256(v: Any) -> str:
    if not isinstance(v, str) or not SHA256.fullmatch(v):
        raise ValueError(f"{v!r}; allowed: 64 lowercase hexadecimal digits")
    return v


#: graph.json may record the sha256 of tensors.safetensors ("tensors_sha256"); its form is checked
#: here, its value against the file by the loader's integrity check.
SHA256 = re.compile(r"[0-9a-f]{64}")
Sha256 = _leaf(_check_sha256, {"type": "string", "pattern": f"^{SHA256.pattern}$"})


class GraphDocument(_Strict):
    format: Literal[FORMAT]
    version: Literal[VERSION]
    tensors_sha256: Sha256 = None
    inputs: Annotated[list[Name], Field(min_length=1, max_length=1)]
    outputs: Annotated[list[Name], Field(min_length=1, max_length=1)]
    tensors: Annotated[list[TensorModel], Field(min_length=1)]
    nodes: Annotated[list[NodeModel], Field(min_length=1)]
    metadata: GraphMetadata = GraphMetadata()

    @model_validator(mode="after")
    def _unique_names(self) -> "GraphDocument":
        for what, names in (("tensor", [t.name for t in self.tensors]), ("node", [n.name for n in self.nodes])):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"{what} name {name!r} appears twice; every {what} name is unique")
                seen.add(name)
        return self


_DOCUMENT = TypeAdapter(GraphDocument)


def json_schema() -> dict:
    """graph.json's schema as a JSON Schema document (for other tools; bitsmith validates with the models)."""
    return _DOCUMENT.json_schema()


def check_document(doc: Any, where: str = "graph") -> None:
    """Raise GraphError unless `doc` (graph.json, parsed) fits the schema.

    The format and version are checked first, so a newer graph says "upgrade bitsmith" rather than
    listing fields this version does not know.
    """
    if not isinstance(doc, dict):
        raise GraphError(f"{where}: not a bitsmith integer graph (the document is a JSON {_json_type(doc)}, "
                         "not an object)")
    if doc.get("format") != FORMAT:
        raise GraphError(f"{where}: not a bitsmith integer graph (format field is {doc.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
        raise GraphError(
            f"{where}: graph format version {doc.get('version')!r}; this bitsmith reads version {VERSION}. "
            "Re-create the graph with this bitsmith (bitsmith quantize) or upgrade bitsmith."
        )
    try:
        _DOCUMENT.validate_python(doc)
    except ValidationError as e:
        raise GraphError(f"{where}: {describe_errors(e, lambda loc: _graph_location(doc, loc))}") from None


# -- messages -------------------------------------------------------------------------------------

def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def field_path(loc: tuple) -> str:
    """('attrs', 'stride', 0) → "attrs.stride[0]"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error_text(err: dict) -> str:
    kind, value = err["type"], err.get("input")
    key = err["loc"][-1] if err["loc"] else None
    if kind == "value_error":
        return err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"missing key {key!r}"
    if kind == "extra_forbidden":
        return f"unknown key {key!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be an object, not a JSON {_json_type(value)}"
    if kind == "list_type":
        return f"must be a list, not a JSON {_json_type(value)}"
    if kind in ("string_type", "string_too_short"):
        return f"{value!r}; allowed: a non-empty string"
    if kind == "bool_type":
        return f"{value!r}; allowed: true or false"
    if kind == "literal_error":
        return f"{value!r}; allowed: {err['ctx']['expected']}"
    if kind == "too_short":
        return f"{err['ctx'].get('actual_length')} items; allowed: at least {err['ctx']['min_length']}"
    if kind == "too_long":
        return f"{err['ctx'].get('actual_length')} items; allowed: at most {err['ctx']['max_length']}"
    if kind == "union_tag_invalid":
        op = value.get("op") if isinstance(value, dict) else err["ctx"]["tag"]
        return f"unknown op {op!r}; known ops: {', '.join(OPS)}"
    if kind == "union_tag_not_found":
        return f"missing key 'op'; allowed: one of {', '.join(OPS)}"
    return f"{value!r}: {err['msg']}"


def describe_errors(e: ValidationError, locate: Callable[[tuple], tuple[str, tuple]]) -> str:
    """The first error of `e` as "<what>: <field>: <problem; allowed: …>" (and how many more there are).

    `locate(loc)` names the object a location falls in (e.g. "tensor 'x'") and returns the rest of
    the location (the field inside it)."""
    errors = e.errors()
    where, rest = locate(tuple(errors[0]["loc"]))
    parts = [p for p in (where, field_path(rest)) if p]
    text = ": ".join(parts + [_error_text(errors[0])])
    return text + (f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else "")


def _graph_location(doc: dict, loc: tuple) -> tuple[str, tuple]:
    def entry_name(kind: str, i: int) -> str | None:
        items = doc.get(kind)
        item = items[i] if isinstance(items, list) and 0 <= i < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        return name if isinstance(name, str) else None

    if len(loc) >= 2 and loc[0] == "tensors" and isinstance(loc[1], int):
        name = entry_name("tensors", loc[1])
        return (f"tensor {name!r}" if name else f"tensors[{loc[1]}]"), loc[2:]
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        rest = loc[2:]
        op = rest[0] if rest and rest[0] in OPS else None  # the discriminated union's tag
        rest = rest[1:] if op else rest
        name = entry_name("nodes", loc[1])
        label = f"node {name!r}" if name else f"nodes[{loc[1]}]"
        return (f"{label} ({op})" if op else label), rest
    return "", loc
