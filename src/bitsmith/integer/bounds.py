"""The int64 proof: before a graph runs, every intermediate of every layer is bounded below 2^63.

The engine (fast path, at plan time) and the reference interpreter compute in int64 wherever a
float is not provably exact (docs/arithmetic.md §7). int64 arithmetic wraps silently, so both call
`check_int64(graph)` first: it walks the graph once with the static value range of every tensor and
bounds, per layer, the largest magnitude any intermediate can take (docs/arithmetic.md §8):

  QuantizeInput   max(|qmin − z|, |qmax − z|, |qmin|, |qmax|) of its output
  Conv2d, Linear  max over outputs c of Σ_k |w[c, k]| · max|x − z_in| + |B[c]|
  AvgPool2d       kh · kw · max|x − z_in|
  Add             max|a − z_a|·m[0] + max|b − z_b|·m[1]
  Requant         max over channels of max(V·m + R, ⌊(V·m + R) / 2^s⌋ + 1 + |z_out|), V = max|x − z_in|
  data movement   the magnitude of the input range

where x ranges over the input's *declared* code range (for an accumulator: its declared width,
which the engine's overflow check enforces before any consumer reads it; with
`check_overflow=False` the accumulator's computed range instead) and w, B, m, s are the layer's
actual parameters. A layer whose bound reaches 2^63 is refused with a GraphError naming it, before
anything is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitsmith.errors import GraphError
from bitsmith.integer.arithmetic import int_range
from bitsmith.integer.ops import as_pair

INT64_LIMIT = 1 << 63

Range = tuple[int, int]


@dataclass(frozen=True)
class LayerBound:
    node: str
    op: str
    bound: int   # the largest magnitude an intermediate of this layer can take
    what: str    # the formula, in words, for the message


def _centred(r: Range, z: int) -> int:
    return max(abs(r[0] - z), abs(r[1] - z))


def _intersect(r: Range, spec, checked: bool) -> Range:
    """An accumulator's range after the engine's overflow check (which raises outside the declared width)."""
    if not checked:
        return r
    lo, hi = int_range(spec.bits, spec.signed)
    return max(r[0], lo), min(r[1], hi)


def layer_bounds(g, check_overflow: bool = True) -> list[LayerBound]:
    """The int64 bound of every node, in graph order (see the module docstring)."""
    ranges: dict[str, Range] = {}
    bounds: list[LayerBound] = []
    for node in g.nodes:
        out = g.tensors[node.output]
        ins = [g.tensors[i] for i in node.inputs]
        r = ranges.get(node.inputs[0], (0, 0))
        if node.op == "QuantizeInput":
            lo, hi, z = out.qmin, out.qmax, out.zero_point
            bound = max(abs(lo - z), abs(hi - z), abs(lo), abs(hi))
            what, ranges[node.output] = "the rounded quotient and the codes", (lo, hi)
        elif node.op in ("Conv2d", "Linear"):
            c = _centred(r, ins[0].zero_point)
            w = g.weight_codes(node).to(torch.int64)
            per_out = [int(v) * c for v in w.abs().reshape(w.shape[0], -1).sum(dim=1).tolist()]
            bias = (g.params[node.params["bias"]].to(torch.int64).tolist() if "bias" in node.params
                    else [0] * len(per_out))
            bound = max(max(p + abs(b) for p, b in zip(per_out, bias)), c)
            acc = (min(b - p for p, b in zip(per_out, bias)), max(b + p for p, b in zip(per_out, bias)))
            ranges[node.output] = _intersect(acc, out, check_overflow)
            what = "Σ|w|·max|x − z_in| + |bias| (every partial sum)"
        elif node.op == "AvgPool2d":
            kh, kw = as_pair(node.attrs["kernel"])
            z = ins[0].zero_point
            c = _centred(r, z)
            bound = kh * kw * c
            ranges[node.output] = _intersect((kh * kw * (r[0] - z), kh * kw * (r[1] - z)), out, check_overflow)
            what = f"the window sum, {kh}·{kw}·max|x − z_in|"
        elif node.op == "Requant":
            c = _centred(r, ins[0].zero_point)
            m = g.params[node.params["multiplier"]].to(torch.int64).reshape(-1).tolist()
            s = g.params[node.params["shift"]].to(torch.int64).reshape(-1).tolist()
            bound = c
            for mc, sc in zip(m, s):
                product = c * abs(mc) + ((1 << (sc - 1)) if sc > 0 else 0)
                bound = max(bound, product, (product >> max(sc, 0)) + 1 + abs(out.zero_point))
            ranges[node.output] = (node.attrs["clamp_min"], node.attrs["clamp_max"])
            what = "max|x − z_in|·m + 2^(s−1), and the shifted value plus z_out"
        elif node.op == "Add":
            m = g.params[node.params["multiplier"]].to(torch.int64).tolist()
            spans = [(ranges.get(i, (0, 0)), s.zero_point, mi) for i, s, mi in zip(node.inputs, ins, m)]
            lo = sum((r[0] - z) * mi for r, z, mi in spans)
            hi = sum((r[1] - z) * mi for r, z, mi in spans)
            bound = max(sum(_centred(r, z) * mi for r, z, mi in spans), *(_centred(r, z) for r, z, _ in spans))
            ranges[node.output] = _intersect((lo, hi), out, check_overflow)
            what = "Σ max|x − z|·m over both inputs"
        else:  # MaxPool2d, Flatten, Reorg, Concat move codes
            lo = min(ranges.get(i, (0, 0))[0] for i in node.inputs)
            hi = max(ranges.get(i, (0, 0))[1] for i in node.inputs)
            bound, what, ranges[node.output] = max(abs(lo), abs(hi)), "the codes it moves", (lo, hi)
        bounds.append(LayerBound(node.name, node.op, bound, what))
    return bounds


def check_int64(g, check_overflow: bool = True) -> None:
    """GraphError naming the first layer some intermediate of which may reach 2^63; None when every
    intermediate of every layer provably fits int64."""
    for b in layer_bounds(g, check_overflow):
        if b.bound >= INT64_LIMIT:
            unchecked = ("" if check_overflow else
                         " (accumulators are unchecked here: with check_overflow=True their declared widths bound them)")
            raise GraphError(
                f"layer {b.node!r} ({b.op}): {b.what} can reach {b.bound} ≈ 2^{b.bound.bit_length() - 1}, beyond "
                f"int64 (2^63){unchecked}; no back end can compute it exactly. Use narrower codes, weights or "
                "multipliers, or fewer terms per output"
            )
