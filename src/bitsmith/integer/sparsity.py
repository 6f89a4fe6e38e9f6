"""How sparse an IntegerGraph's weights are, and what storing it costs in each format
(`bitsmith sparsity GRAPH`; docs/sparse-formats.md, "A whole graph").

Per Conv2d / Linear: n weights, nnz non-zero codes, density nnz/n, and the payload bits of every
format of `bitsmith.integer.sparse` (the weight as [out_channels, K], codes signed at the layer's
`weight_bits`), each plus the format's fixed header (`sparse.HEADER_BITS`); the best is the
smallest. A layer with an outlier split (the "outlier" attr, docs/sparse-formats.md "In the IR")
may also be stored as its low_bits codes l (in their best format, dense included) plus the outlier
codes (in their best format at outlier_bits), each with its header: the "outlier" entry of its
formats, which competes for the best like the others. `storage` is the format the IR declares
(`weight_storage`, absent = dense) and `storage_bits` its size. A codebook (CLIP-Q) layer stores its indices densely (`index_bits` each) plus its
codebook values, not in a sparse format: index 0 is not a pruned weight.

Everything else integer inference needs is counted at the width it is declared with, so the
whole-model figure is honest: biases 32 bits (int32), a Requant's multiplier at its
`multiplier_bits`, its shift in SHIFT_BITS and its two clamp bounds 32 bits each, an Add's two
multipliers 32 bits each, every tensor's zero point 32 bits, and the scales (float32) of the graph's
input and outputs — where floats go in and come out. The scales of intermediate tensors are
metadata the integer computation never reads (they are folded into the multipliers), so they do
not count. The FP32 reference is the float model the graph was lowered from,
with BatchNorm folded: 32 bits per weight and per bias, nothing else. Compression = FP32 bits /
stored bits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import replace

from bitsmith.errors import ConfigError

from .graph import IntegerGraph, weight_format
from .ops import STORAGE_FIELD_ATTRS, WEIGHTED_OPS, outlier_parts, weight_storage
from .sparse import (DEFAULT_INDEX_BITS, DEFAULT_RUN_BITS, FORMATS, HEADER_BITS, best_format, code_stats,
                     format_sizes, payload_bits)

FLOAT_BITS = 32
BIAS_BITS = 32
SHIFT_BITS = 6          # shifts are 0..62 (integer.arithmetic.MAX_SHIFT)
ADD_MULTIPLIER_BITS = 32
SCALE_BITS = 32         # a float32 scale or an int32 zero point


def _layer(graph: IntegerGraph, node, run_bits: int, index_bits: int) -> dict:
    weight = graph.weight_codes(node)
    codes = weight.reshape(weight.shape[0], -1).numpy()
    n = int(codes.size)
    nnz = int((codes != 0).sum())
    bits = int(node.attrs["weight_bits"])
    row = {"name": node.output, "op": node.op, "shape": list(weight.shape), "weight_bits": bits,
           "weights": n, "nnz": nnz, "density": nnz / n if n else 0.0, "fp32_bits": n * FLOAT_BITS}
    if weight_format(node) == "codebook":
        book = graph.params[node.params["codebook"]].numel()
        stored = n * int(node.attrs["index_bits"]) + book * bits
        row.update(formats={"codebook": stored}, best="codebook", stored_bits=stored, dense_bits=n * bits,
                   storage="codebook", storage_bits=stored)
        return row
    sizes = {name: size + HEADER_BITS for name, size in
             format_sizes(codes, bits, signed=True, run_bits=run_bits, index_bits=index_bits).items()}
    split = outlier_parts(node, weight)
    if split is not None:
        row["outlier"] = _outlier_row(node, split, run_bits, index_bits)
        sizes["outlier"] = row["outlier"]["stored_bits"]
    order = FORMATS + ("outlier",)
    best = min(sizes, key=lambda k: (sizes[k], order.index(k)))
    storage, fields = weight_storage(node)
    row.update(formats=sizes, best=best, stored_bits=sizes[best], dense_bits=sizes["dense"], storage=storage,
               storage_bits=payload_bits(storage, code_stats(codes), bits, **fields) + HEADER_BITS)
    return row


def _outlier_row(node, split, run_bits: int, index_bits: int) -> dict:
    """The low codes and the outliers of an outlier split, each in its best format with its header."""
    attr = node.attrs["outlier"]
    out = {"low_bits": int(attr["low_bits"]), "shift": int(attr["shift"]), "outlier_bits": int(attr["outlier_bits"])}
    for part, codes, bits in (("low", split[0], out["low_bits"]), ("outliers", split[1], out["outlier_bits"])):
        flat = codes.reshape(codes.shape[0], -1).numpy()
        fmt, size = best_format(flat, bits, signed=True, run_bits=run_bits, index_bits=index_bits)
        out[part] = {"nnz": int((flat != 0).sum()), "format": fmt, "bits": size + HEADER_BITS}
    out["stored_bits"] = out["low"]["bits"] + out["outliers"]["bits"]
    return out


def annotate(graph: IntegerGraph, formats: str | Mapping[str, str] = "best", *, run_bits: int = DEFAULT_RUN_BITS,
             index_bits: int = DEFAULT_INDEX_BITS) -> IntegerGraph:
    """A copy of `graph` whose dense Conv2d / Linear nodes declare how their weight codes are stored
    (the attr "weight_storage", and "storage_run_bits" / "storage_index_bits" for run-length /
    relative). `formats`: "best" (each layer's smallest, `sparse.best_format` on [out, K] with these
    field widths), one format name for every dense layer, or {node name: format} for the named
    nodes only. Arithmetic does not change (the codes are the same tensors). Codebook layers store
    their own indices: "best" and a single name leave them alone, naming one in a dict is an error."""
    weighted = {n.name: n for n in graph.nodes if n.op in WEIGHTED_OPS}
    if isinstance(formats, Mapping):
        unknown = [name for name in formats if name not in weighted]
        if unknown:
            raise ConfigError(f"annotate: {unknown[0]!r} is not a Conv2d / Linear node of the graph; its weighted "
                              f"nodes: {', '.join(weighted) or 'none'}")
        wanted = dict(formats)
        coded = [name for name in wanted if weight_format(weighted[name]) != "dense"]
        if coded:
            raise ConfigError(f"annotate: node {coded[0]!r} has {weight_format(weighted[coded[0]])} weights, which "
                              "store their own indices; weight_storage describes dense codes only")
    elif isinstance(formats, str):
        wanted = {name: formats for name, n in weighted.items() if weight_format(n) == "dense"}
    else:
        raise ConfigError(f"annotate: formats must be 'best', a format name or {{node: format}}, got {formats!r}")
    for name, fmt in wanted.items():
        if fmt != "best" and fmt not in FORMATS:
            raise ConfigError(f"annotate: node {name!r}: unknown format {fmt!r}; allowed: best, {', '.join(FORMATS)}")
    out = copy.copy(graph)   # new containers; the parameter tensors themselves are shared, never changed
    out.nodes, out.params, out.tensors, out.metadata = [], dict(graph.params), dict(graph.tensors), dict(graph.metadata)
    for node in graph.nodes:
        fmt = wanted.get(node.name)
        if fmt is not None:
            if fmt == "best":
                codes = graph.weight_codes(node)
                fmt, _ = best_format(codes.reshape(codes.shape[0], -1).numpy(), int(node.attrs["weight_bits"]),
                                     run_bits=run_bits, index_bits=index_bits)
            attrs = {k: v for k, v in node.attrs.items() if k != "weight_storage" and k not in STORAGE_FIELD_ATTRS}
            attrs["weight_storage"] = fmt
            if fmt == "run-length":
                attrs["storage_run_bits"] = run_bits
            if fmt == "relative":
                attrs["storage_index_bits"] = index_bits
            node = replace(node, attrs=attrs)
        out.nodes.append(node)
    out.validate()
    return out


def _other_bits(graph: IntegerGraph) -> tuple[int, int]:
    """(stored bits of everything but the weights, FP32 bits of the biases)."""
    stored, fp32 = 0, 0
    for node in graph.nodes:
        for role, key in node.params.items():
            count = graph.params[key].numel()
            if role == "bias":
                stored += count * BIAS_BITS
                fp32 += count * FLOAT_BITS
            elif role == "multiplier":
                width = int(node.attrs["multiplier_bits"]) if node.op == "Requant" else ADD_MULTIPLIER_BITS
                stored += count * width
            elif role == "shift":
                stored += count * SHIFT_BITS
        if node.op == "Requant":
            stored += 2 * SCALE_BITS  # its clamp bounds
    for name, spec in graph.tensors.items():
        stored += SCALE_BITS  # every tensor's zero point (convolutions subtract their input's)
        if name in graph.inputs or name in graph.outputs:  # scales only where floats go in or out
            stored += SCALE_BITS * max(1, len(spec.scale_tensor().reshape(-1)))
    return stored, fp32


def activation_sparsity(graph: IntegerGraph, x) -> list[dict]:
    """Per Conv2d / Linear, the fraction of its input activation codes that stand for 0 (code == the
    tensor's zero point) on the float images `x`: what a zero-skipping datapath could skip."""
    from .engine import run  # the engine loads torch's kernels: only when asked

    outputs = run(graph, x, return_all=True)
    rows = []
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS:
            name = node.inputs[0]
            codes = outputs[name]
            zeros = int((codes == graph.tensors[name].zero_point).sum())
            rows.append({"layer": node.output, "input": name, "elements": int(codes.numel()),
                         "zero_fraction": zeros / codes.numel() if codes.numel() else 0.0})
    return rows


def graph_sparsity(graph: IntegerGraph, *, run_bits: int = DEFAULT_RUN_BITS,
                   index_bits: int = DEFAULT_INDEX_BITS) -> dict:
    """Per-layer density and format sizes, and the whole graph's stored bits and compression."""
    layers = [_layer(graph, node, run_bits, index_bits) for node in graph.nodes if node.op in WEIGHTED_OPS]
    other, fp32_bias = _other_bits(graph)
    weights = sum(r["weights"] for r in layers)
    stored = sum(r["stored_bits"] for r in layers) + other
    fp32 = sum(r["fp32_bits"] for r in layers) + fp32_bias
    return {
        "layers": layers, "run_bits": run_bits, "index_bits": index_bits, "header_bits": HEADER_BITS,
        "weights": weights, "nnz": sum(r["nnz"] for r in layers),
        "density": sum(r["nnz"] for r in layers) / weights if weights else 0.0,
        "weight_bits_stored": sum(r["stored_bits"] for r in layers),
        "weight_bits_dense": sum(r["dense_bits"] for r in layers),
        "other_bits": other, "stored_bits": stored, "stored_kb": stored / 8192,
        "fp32_bits": fp32, "fp32_kb": fp32 / 8192,
        "compression": fp32 / stored if stored else math.inf,
    }
