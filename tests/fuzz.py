"""The file fuzzer's parts (tests/integer/test_fuzz.py for graph folders, tests/test_runs_fuzz.py for
run folders): JSON and tensor mutations drawn with hypothesis, and the one writer of mutated graph
folders.

Nothing here imports bitsmith's front end. `rewrite_graph_folder` writes graph.json and
tensors.safetensors without `IntegerGraph` (plain json + safetensors), so a mutated folder is
exactly what the fuzzer meant, however invalid. It is the one writer of mutated folders, and it
records graph.json's integrity digest of the tensors file (`tensors_sha256`) to match what it
wrote: the fuzzer makes consistent-but-wrong folders, so it keeps exercising the validator behind
the loader's digest check; raw byte mutations (`flip_bytes`) bypass it on purpose. If the digest
rule changes (another hash, a self-digest inside the safetensors file), only this function changes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from safetensors.torch import save as st_save

GRAPH_FORMAT = "bitsmith.integer_graph"  # the safetensors metadata IntegerGraph.save writes
TENSORS_DIGEST = "tensors_sha256"  # graph.json's sha256 of tensors.safetensors (bitsmith.integer.schema)


def rewrite_graph_folder(path: str | os.PathLike, doc: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write `doc` as path/graph.json and `tensors` as path/tensors.safetensors (any document, any
    tensors: nothing is validated), with graph.json's integrity digest of the tensors file set to
    match (`tensors_sha256`, when the document is an object): a consistent-but-wrong folder, so the
    loader's digest check passes and the validator behind it is what the mutation meets."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": GRAPH_FORMAT})
    (path / "tensors.safetensors").write_bytes(data)
    if isinstance(doc, dict):
        doc = {**doc, TENSORS_DIGEST: hashlib.sha256(data).hexdigest()}
    (path / "graph.json").write_text(json.dumps(doc))


# -- values a field can be replaced with ------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2, 7, 8, 15, 16, 17, 24, 25, 31, 32, 33, 53, 62, 63, 64, 127, 128, 255, 256,
             (1 << 15) - 1, 1 << 15, (1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 1, (1 << 32) - 1, 1 << 32,
             1 << 53, (1 << 63) - 1, 1 << 63, -(1 << 63), 1 << 64, 10 ** 30]
ODD_VALUES = [None, True, False, 0, 1, -1, 1.5, 0.0, -0.0, math.nan, math.inf, -math.inf, "", "x", "int",
              "float32", "Conv2d", [], {}, [1, 1], [0], {"x": 1}]


def replacement(draw, old: Any, names: list[str]) -> Any:
    """A value to put where `old` was: of its own type but at an edge, of another type, or a name."""
    choices: list[Any] = list(ODD_VALUES)
    if isinstance(old, bool):
        choices += [not old, int(old)]
    elif isinstance(old, int):
        choices += EDGE_INTS + [old + 1, old - 1, -old, old * 2, old // 2, float(old), str(old), [old], [old, old]]
    elif isinstance(old, float):
        choices += [old * 2, old / 2, -old, 1e-300, 1e300, 1e-46, 3.5e38, str(old), [old]]
        choices += [int(old), math.ulp(old)] if math.isfinite(old) else []
    elif isinstance(old, str):
        choices += names + [old + "x", old.upper(), "a/b", "a b", old * 40, old[:-1]]
    elif isinstance(old, list):
        choices += [old[:-1], old + old[-1:], old[::-1], old[:1] * 3, [old], tuple_free(old)]
    elif isinstance(old, dict):
        choices += [{k: v for k, v in list(old.items())[:-1]}, list(old.values()), list(old)]
    return draw(st.sampled_from(choices))


def tuple_free(v: Any) -> Any:
    return [x * 2 if isinstance(x, int) and not isinstance(x, bool) else x for x in v] if isinstance(v, list) else v


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON document (the root is ())."""
    found = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += paths(v, prefix + (i,))
    return found


def get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def put(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    get(doc, path[:-1])[path[-1]] = value
    return doc


def mutate_json(draw, doc: Any, names: list[str], extra_keys: dict[str, Any]) -> Any:
    """One structural mutation of a JSON document: replace a value, delete or add a key, drop,
    duplicate or swap list items. `extra_keys` are keys worth adding (known elsewhere in the format)."""
    doc = copy.deepcopy(doc)
    where = draw(st.sampled_from(paths(doc)))
    target = get(doc, where)
    kinds = ["replace"]
    if isinstance(target, dict):
        kinds += ["delete_key", "add_key"] if target else ["add_key"]
    if isinstance(target, list) and target:
        kinds += ["drop_item", "duplicate_item", "swap_items"]
    kind = draw(st.sampled_from(kinds))
    if kind == "replace":
        return put(doc, where, replacement(draw, target, names))
    if kind == "delete_key":
        del target[draw(st.sampled_from(sorted(target)))]
    elif kind == "add_key":
        key = draw(st.sampled_from(sorted(extra_keys) + ["extra", ""]))
        target[key] = extra_keys.get(key, draw(st.sampled_from(ODD_VALUES)))
    elif kind == "drop_item":
        del target[draw(st.integers(0, len(target) - 1))]
    elif kind == "duplicate_item":
        i = draw(st.integers(0, len(target) - 1))
        target.insert(draw(st.integers(0, len(target))), copy.deepcopy(target[i]))
    else:
        i, j = draw(st.integers(0, len(target) - 1)), draw(st.integers(0, len(target) - 1))
        target[i], target[j] = target[j], target[i]
    return doc


# -- tensors --------------------------------------------------------------------------------------

DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float32, torch.float64, torch.bool]


def mutate_tensors(draw, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One mutation of the parameters: a dtype, a shape, an element at an edge of its dtype, a key
    removed, added or renamed."""
    tensors = {k: v.clone() for k, v in tensors.items()}
    if not tensors:
        return {"extra": torch.zeros(1, dtype=torch.int8)}
    key = draw(st.sampled_from(sorted(tensors)))
    t = tensors[key]
    kind = draw(st.sampled_from(["dtype", "value", "value", "values", "shape", "shape", "remove", "add", "rename"]))
    if kind == "dtype":
        tensors[key] = t.to(draw(st.sampled_from(DTYPES)))
    elif kind == "value" and t.numel():
        flat = t.reshape(-1).clone()
        i = draw(st.integers(0, flat.numel() - 1))
        if t.is_floating_point():
            value = draw(st.sampled_from([0.5, -1.0, 1e30, math.nan, math.inf]))
        elif t.dtype == torch.bool:
            value = not bool(flat[i])
        else:
            info = torch.iinfo(t.dtype)
            value = draw(st.sampled_from([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, info.max // 2 + 1,
                                          int(flat[i]) + 1, int(flat[i]) - 1, -int(flat[i])]))
            value = min(max(value, info.min), info.max)
        flat[i] = value
        tensors[key] = flat.reshape(t.shape)
    elif kind == "values" and t.numel() and not t.is_floating_point() and t.dtype != torch.bool:
        op = draw(st.sampled_from(["double", "negate", "zero", "wide"]))
        if op == "double":
            tensors[key] = t * 2
        elif op == "negate":
            tensors[key] = -t if t.dtype != torch.uint8 else t
        elif op == "zero":
            tensors[key] = torch.zeros_like(t)
        else:
            tensors[key] = t.to(torch.int64) << draw(st.sampled_from([8, 16, 31, 40]))
    elif kind == "shape":
        # One tensor, or every tensor of its node alike (a multiplier and its shift, a weight and its bias).
        op = draw(st.sampled_from(["flatten", "unsqueeze", "scalar", "truncate", "append", "empty", "transpose"]))
        node = key.rsplit(".", 1)[0]
        keys = [k for k in tensors if k.rsplit(".", 1)[0] == node] if draw(st.booleans()) else [key]
        for k in keys:
            tensors[k] = reshaped(tensors[k], op)
    elif kind == "remove":
        del tensors[key]
    elif kind == "add":
        tensors[draw(st.sampled_from(["extra", key + "x"]))] = t.clone()
    elif kind == "rename":
        tensors[key + "_renamed"] = tensors.pop(key)
    return tensors


def reshaped(t: torch.Tensor, op: str) -> torch.Tensor:
    if op == "flatten":
        return t.reshape(-1)
    if op == "unsqueeze":
        return t.unsqueeze(0)
    if op == "scalar" and t.numel() == 1:
        return t.reshape(())
    if op == "truncate" and t.dim() and t.shape[0] > 1:
        return t[:-1].clone()
    if op == "append" and t.dim():
        return torch.cat([t, t[:1]])
    if op == "empty":
        return t.reshape(-1)[:0].clone()
    if op == "transpose" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous()
    return t


def flip_bytes(draw, data: bytes) -> bytes:
    """A raw byte mutation of a file: flip, zero or drop a byte, or cut the file short."""
    if not data:
        return b"x"
    i = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "zero", "drop", "truncate"]))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    if kind == "zero":
        return data[:i] + b"\0" + data[i + 1:]
    if kind == "drop":
        return data[:i] + data[i + 1:]
    return data[:i]
