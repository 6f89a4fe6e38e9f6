"""Random small IntegerGraphs, built directly (no front end), for property tests of the back ends.

`GraphMaker` writes nodes the way lowering does (a Conv2d / Linear / AvgPool2d / Add accumulator
followed by its Requant, Concat inputs on one grid, …) with random weights, zero points, scales
and clamps. `random_graph(seed)` draws a whole graph mixing Conv (dense, grouped, depthwise,
asymmetric padding), residual Add, Concat, MaxPool, AvgPool, Reorg, ReLU / ReLU6-style clamps, and
an optional Flatten + Linear head. Everything stays within the accelerator's limits (codes of at
most 8 bits, 8-bit weights, small maps), so one graph can run on every back end.

Nothing here imports the front end (bitsmith.quant): back-end tests may use it.
"""

from __future__ import annotations

import math
import random

import torch

from bitsmith.integer.arithmetic import int_range, quantize_multiplier
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec

ADD_MULTIPLIER_MAX = (1 << 15) - 1


class GraphMaker:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.params: dict[str, torch.Tensor] = {}

    # -- plumbing -----------------------------------------------------------------------------

    def _name(self, op: str) -> str:
        return f"{op.lower()}{len(self.nodes)}"

    def _node(self, op: str, inputs: list[TensorSpec], out: TensorSpec, attrs=None, params=None) -> TensorSpec:
        stored = {}
        for role, value in (params or {}).items():
            stored[role] = f"{out.name}.{role}"
            self.params[stored[role]] = value
        self.tensors[out.name] = out
        self.nodes.append(Node(op, out.name, [i.name for i in inputs], out.name, attrs or {}, stored))
        return out

    def grid(self, name: str, shape, bits: int | None = None) -> TensorSpec:
        """A random code grid: 4 to 8 bits, signed or not, a zero point inside the range."""
        bits = bits or self.rng.choice([4, 6, 8, 8, 8])
        signed = self.rng.random() < 0.5
        lo, hi = int_range(bits, signed)
        zp = self.rng.choice([0, 0, self.rng.randint(lo // 2, hi // 2)]) if signed else \
            self.rng.choice([0, (hi + 1) // 2, self.rng.randint(0, hi // 2)])
        scale = 2.0 ** self.rng.uniform(-6, 0)
        return TensorSpec(name, tuple(shape), "int", bits, signed, scale, zp)

    def requant(self, x: TensorSpec, out: TensorSpec, real_multiplier: float, clamp: str = "none") -> TensorSpec:
        m, s = quantize_multiplier(real_multiplier, 32)
        lo, hi = out.qmin, out.qmax
        if clamp in ("relu", "relu6"):
            lo = max(lo, out.zero_point)
        if clamp == "relu6":
            hi = max(lo, min(hi, out.zero_point + self.rng.randint(1, hi - out.zero_point + 1)))
        attrs = {"clamp_min": lo, "clamp_max": hi, "multiplier_bits": 32}
        params = {"multiplier": torch.tensor([m], dtype=torch.int64), "shift": torch.tensor([s], dtype=torch.int64)}
        name = out.name
        out = TensorSpec(name, out.shape, "int", out.bits, out.signed, out.scale, out.zero_point)
        return self._node("Requant", [x], out, attrs, params)

    # -- layers -------------------------------------------------------------------------------

    def input(self, shape, bits: int | None = None) -> TensorSpec:
        x = TensorSpec("input", tuple(shape), "float32")
        self.tensors["input"] = x
        codes = self.grid("codes", shape, bits)
        codes.scale = 6.0 / (codes.qmax - codes.qmin)  # standard-normal images span the range
        codes.zero_point = (codes.qmin + codes.qmax + 1) // 2
        return self._node("QuantizeInput", [x], codes)

    def conv(self, x: TensorSpec, out_ch: int, kernel: int, stride: int = 1, pads=None, groups: int = 1,
             clamp: str = "relu", weight_bits: int = 8, bias: bool = True, requant: bool = True,
             out_bits: int | None = None) -> TensorSpec:
        c, h, w = x.shape
        pads = pads if pads is not None else [kernel // 2] * 2
        top, left, bottom, right = pads if len(pads) == 4 else (pads[0], pads[1], pads[0], pads[1])
        oh = (h + top + bottom - kernel) // stride + 1
        ow = (w + left + right - kernel) // stride + 1
        lo, hi = int_range(weight_bits, True)
        weight = torch.randint(lo, hi + 1, (out_ch, c // groups, kernel, kernel), generator=self.gen, dtype=torch.int8)
        name = self._name("conv")
        params = {"weight": weight}
        terms = (c // groups) * kernel * kernel
        if bias:
            params["bias"] = torch.randint(-8 * terms, 8 * terms + 1, (out_ch,), generator=self.gen, dtype=torch.int32)
        attrs = {"stride": [stride, stride], "padding": list(pads), "dilation": [1, 1], "groups": groups,
                 "weight_bits": weight_bits}
        acc = TensorSpec(f"{name}_acc", (out_ch, oh, ow), "int", 32, True, x.scale * 0.01, 0)
        acc = self._node("Conv2d", [x], acc, attrs, params)
        if not requant:
            return acc
        out = self.grid(name, acc.shape, out_bits)
        return self.requant(acc, out, self._gain(terms, hi, x, out), clamp)

    def _gain(self, terms: int, wmax: int, x: TensorSpec, out: TensorSpec) -> float:
        """A multiplier that maps a typical accumulator (random weights, codes spread over a third of
        the input range) onto a fraction of the output range, so few outputs saturate."""
        spread = math.sqrt(terms) * (wmax / math.sqrt(3)) * (x.qmax - x.qmin) / 6
        return self.rng.uniform(0.1, 0.4) * (out.qmax - out.qmin) / max(spread, 1.0)

    def linear(self, x: TensorSpec, out_features: int, requant: bool) -> TensorSpec:
        (k,) = x.shape
        weight = torch.randint(-127, 128, (out_features, k), generator=self.gen, dtype=torch.int8)
        name = self._name("fc")
        params = {"weight": weight, "bias": torch.randint(-500, 501, (out_features,), generator=self.gen, dtype=torch.int32)}
        acc = self._node("Linear", [x], TensorSpec(f"{name}_acc" if requant else name, (out_features,), "int", 32, True,
                                                   x.scale * 0.01, 0), {"weight_bits": 8}, params)
        if not requant:
            return acc
        out = self.grid(name, acc.shape)
        return self.requant(acc, out, self._gain(k, 127, x, out), "none")

    def add(self, a: TensorSpec, b: TensorSpec, clamp: str = "relu") -> TensorSpec:
        out = self.grid(self._name("add"), a.shape)
        k = self.rng.randint(6, 14)
        m = [min(ADD_MULTIPLIER_MAX, max(0, round(s.scale * 2 ** k / out.scale))) for s in (a, b)]
        acc = TensorSpec(f"{out.name}_acc", a.shape, "int", 32, True, out.scale * 2.0 ** -k, 0)
        acc = self._node("Add", [a, b], acc, {}, {"multiplier": torch.tensor(m, dtype=torch.int64)})
        return self.requant(acc, out, 2.0 ** -k, clamp)

    def on_grid(self, x: TensorSpec, target: TensorSpec) -> TensorSpec:
        """x requantized onto target's grid (as lowering does for a Concat input)."""
        if x.same_quantization(target):
            return x
        out = TensorSpec(self._name("regrid"), x.shape, "int", target.bits, target.signed, target.scale,
                         target.zero_point)
        return self.requant(x, out, x.scale / target.scale)

    def concat(self, parts: list[TensorSpec]) -> TensorSpec:
        target = parts[0]
        parts = [self.on_grid(p, target) for p in parts]
        shape = (sum(p.shape[0] for p in parts),) + tuple(target.shape[1:])
        out = TensorSpec(self._name("cat"), shape, "int", target.bits, target.signed, target.scale, target.zero_point)
        return self._node("Concat", parts, out)

    def maxpool(self, x: TensorSpec, k: int = 2, stride: int = 2) -> TensorSpec:
        c, h, w = x.shape
        out = TensorSpec(self._name("maxpool"), (c, (h - k) // stride + 1, (w - k) // stride + 1), "int", x.bits,
                         x.signed, x.scale, x.zero_point)
        return self._node("MaxPool2d", [x], out, {"kernel": [k, k], "stride": [stride, stride]})

    def avgpool(self, x: TensorSpec, kh: int, kw: int, stride: int | None = None) -> TensorSpec:
        c, h, w = x.shape
        sh, sw = (stride or kh), (stride or kw)
        name = self._name("avgpool")
        acc = TensorSpec(f"{name}_acc", (c, (h - kh) // sh + 1, (w - kw) // sw + 1), "int", 32, True,
                         x.scale / (kh * kw), 0)
        acc = self._node("AvgPool2d", [x], acc, {"kernel": [kh, kw], "stride": [sh, sw]})
        out = self.grid(name, acc.shape)
        return self.requant(acc, out, acc.scale / out.scale)

    def reorg(self, x: TensorSpec, stride: int = 2) -> TensorSpec:
        c, h, w = x.shape
        out = TensorSpec(self._name("reorg"), (c * stride * stride, h // stride, w // stride), "int", x.bits,
                         x.signed, x.scale, x.zero_point)
        return self._node("Reorg", [x], out, {"stride": stride})

    def flatten(self, x: TensorSpec) -> TensorSpec:
        out = TensorSpec(self._name("flatten"), (math.prod(x.shape),), "int", x.bits, x.signed, x.scale, x.zero_point)
        return self._node("Flatten", [x], out)

    def graph(self, output: TensorSpec) -> IntegerGraph:
        g = IntegerGraph(dict(self.tensors), list(self.nodes), dict(self.params), ["input"], [output.name],
                         {"made_by": "tests/random_graphs.py"})
        g.validate()
        return g


BLOCKS = ("conv", "depthwise", "grouped", "residual", "concat", "maxpool", "avgpool", "reorg", "asym_pad")


def random_graph(seed: int, blocks: int | None = None) -> IntegerGraph:
    """A random valid graph of 2 to 5 blocks drawn from BLOCKS, with an optional Linear head."""
    gm = GraphMaker(seed)
    rng = gm.rng
    c, h, w = rng.choice([1, 2, 3, 4]), rng.choice([6, 8, 10]), rng.choice([6, 8, 12])
    x = gm.input((c, h, w))
    x = gm.conv(x, rng.choice([4, 6, 8]), 3, clamp=rng.choice(["relu", "relu6", "none"]))
    for _ in range(blocks if blocks is not None else rng.randint(2, 5)):
        c, h, w = x.shape
        choices = [b for b in BLOCKS if not (b in ("maxpool", "reorg") and min(h, w) < 4)
                   and not (b == "reorg" and (h % 2 or w % 2)) and not (b == "avgpool" and min(h, w) < 2)
                   and not (c > 16 and b in ("reorg", "concat"))]
        block = rng.choice(choices)
        if block == "conv":
            x = gm.conv(x, rng.choice([4, 8, 12]), rng.choice([1, 3]), stride=rng.choice([1, 1, 2]),
                        clamp=rng.choice(["relu", "relu6", "none"]), weight_bits=rng.choice([4, 8]))
        elif block == "depthwise":
            x = gm.conv(x, c, 3, stride=rng.choice([1, 2]), groups=c, clamp=rng.choice(["relu", "relu6"]))
        elif block == "grouped":
            g = 2 if c % 2 == 0 else 1
            x = gm.conv(x, 2 * c if g == 2 else c, 3, groups=g)
        elif block == "residual":
            y = gm.conv(x, c, 3, clamp="relu")
            y = gm.conv(y, c, 1, clamp="none")
            x = gm.add(y, x, clamp=rng.choice(["relu", "none", "relu6"]))
        elif block == "concat":
            y = gm.conv(x, rng.choice([2, 4]), 1, clamp="relu")
            x = gm.concat([x, y] if rng.random() < 0.5 else [y, x])
        elif block == "maxpool":
            x = gm.maxpool(x, rng.choice([2, 3]), 2)
        elif block == "avgpool":
            k = rng.choice([2, min(h, w)])
            x = gm.avgpool(x, k, k)
        elif block == "reorg":
            x = gm.reorg(x, 2)
        elif block == "asym_pad":  # what padding='same' makes of an even kernel
            x = gm.conv(x, rng.choice([4, 8]), 2, pads=[0, 0, 1, 1], clamp="relu")
    if rng.random() < 0.5:
        x = gm.linear(gm.flatten(x), rng.choice([3, 10]), requant=rng.random() < 0.5)
    return gm.graph(x)
