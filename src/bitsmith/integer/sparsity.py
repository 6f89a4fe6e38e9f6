"""How sparse an IntegerGraph's weights are, and what storing it costs in each format
(`bitsmith sparsity GRAPH`; docs/sparse-formats.md, "A whole graph").

Per Conv2d / Linear: n weights, nnz non-zero codes, density nnz/n, and the payload bits of every
format of `bitsmith.integer.sparse` (the weight as [out_channels, K], codes signed at the layer's
`weight_bits`), each plus the format's fixed header (`sparse.HEADER_BITS`); the best is the
smallest. A codebook (CLIP-Q) layer stores its indices densely (`index_bits` each) plus its
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

import math

from .graph import IntegerGraph, weight_format
from .ops import WEIGHTED_OPS
from .sparse import DEFAULT_INDEX_BITS, DEFAULT_RUN_BITS, FORMATS, HEADER_BITS, format_sizes

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
        row.update(formats={"codebook": stored}, best="codebook", stored_bits=stored, dense_bits=n * bits)
        return row
    sizes = {name: size + HEADER_BITS for name, size in
             format_sizes(codes, bits, signed=True, run_bits=run_bits, index_bits=index_bits).items()}
    best = min(sizes, key=lambda k: (sizes[k], FORMATS.index(k)))
    row.update(formats=sizes, best=best, stored_bits=sizes[best], dense_bits=sizes["dense"])
    return row


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
