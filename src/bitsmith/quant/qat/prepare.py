"""Build a QAT model: PTQ-initialise a float model, then swap in a method's quantizers.

    qmodel = qat_prepare(model, calib_batches, QATSpec("lsq", wbits=4, abits=4))

1. Bits per layer: global `wbits` / `abits`, or DeepBurning-MixQ bit strings with one digit per
   Conv2d/Linear in graph order (`bitw="822222"`: that layer's weights; `bita="833363"`: that
   layer's *input* activations, so the first digit is the input quantizer's), optionally with the
   first and last layers kept at 8 bits.
2. PTQ at those bits (`bitsmith.quant.quantize`, MSE observers, per-channel weights) gives
   calibrated scales to start from.
3. Every layer gets the method's weight quantizer and every activation point except the input
   its activation quantizer (the input stays the calibrated 8-bit — or `bita[0]`-bit — grid: it
   sees normalised signed images). A residual add's output point is one of them: it trains as a
   float add followed by the method's quantizer and evaluates exactly (bitsmith.quant.add).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.prepare import module_of, prepare, quantizable_layers
from bitsmith.quant.ptq import add_input_grids, input_quantizer, quantize
from bitsmith.quant.qat.activations import FixedQuantize, HWGQQuantize, LSQQuantize, PACTQuantize
from bitsmith.quant.qat.exact import make_exact
from bitsmith.quant.qat.oaq import OutlierAwareWeight, check_outlier_settings
from bitsmith.quant.qat.qil import QILQuantize, QILWeight
from bitsmith.quant.qat.weights import BinaryWeight, DoReFaWeight, GaussianWeight, LSQWeight, TernaryWeight

#: method → (weight quantizer, activation quantizer).
METHODS = {
    "dorefa": ("DoReFa", "calibrated fixed clip"),
    "pact": ("DoReFa", "PACT"),
    "lsq": ("LSQ", "LSQ"),
    "hwgq": ("Gaussian step g[b]·std(W)", "HWGQ h[b]"),
    "binary": ("binary sign·mean|W|", "LSQ"),
    "ternary": ("ternary (TWN)", "LSQ"),
    "oaq": ("outlier-aware: b-bit grid, largest outlier_fraction at outlier_bits", "LSQ"),
    "qil": ("QIL interval (c, d) per output channel", "QIL interval (c, d) after a ReLU; LSQ elsewhere"),
}
BITS = range(2, 9)
#: Widths a bit string may give a layer: 2..8 for every method; LSQ (no tables, codes of exactly
#: the width) also takes 9..16, what a mixed-precision search may choose.
STRING_BITS = range(2, 17)
WIDE_METHODS = ("lsq",)
KEPT_BITS = 8


def parse_bit_string(text: str, what: str) -> list[int]:
    """DeepBurning-MixQ's bit string: one digit per layer ('822222'), or comma-separated widths
    ('8,12,4') when a width has two digits; a string with a 0 or 1 and no comma is one width ('12')."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"--{what} {text!r} is not allowed: a bit string has one digit per Conv2d/Linear layer, each 2 to 8 "
                          "(e.g. '822222'), or comma-separated widths 2 to 16 (e.g. '8,12,4')")
    text = text.strip()
    if "," in text:
        items = text.split(",")
    elif text.isdigit() and not set(text) & {"0", "1"}:
        items = list(text)   # one digit per layer
    else:
        items = [text]       # no digit string has a 0 or 1: one two-digit width ("12")
    if not all(i.strip().isdigit() for i in items):
        raise ConfigError(f"--{what} {text!r}: only digits (one per layer) or comma-separated integers are allowed, "
                          "e.g. '822222' or '8,12,4'")
    bits = [int(i) for i in items]
    bad = [b for b in bits if b not in STRING_BITS]
    if bad:
        raise ConfigError(f"--{what} {text!r}: width {bad[0]} is not allowed; allowed: 2 to 16 "
                          f"(above 8 with --method lsq only)")
    return bits


def bit_string(bits: list[int]) -> str:
    """The inverse of parse_bit_string: digits when every width is < 10, else comma-separated."""
    return "".join(map(str, bits)) if all(b < 10 for b in bits) else ",".join(map(str, bits))


@dataclass(frozen=True)
class QATSpec:
    """What to train: method, bits (global or per layer) and the quantizer options."""

    method: str
    wbits: int = 4
    abits: int = 4
    bitw: str | None = None
    bita: str | None = None
    keep_first_last_8bit: bool = False
    per_channel: bool = True
    input_bits: int = 8
    outlier_fraction: float = 0.01  # oaq: share of each layer's weights (largest |w|) kept as outliers
    outlier_bits: int = 8  # oaq: width of the outlier codes (8 or 16)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown QAT method {self.method!r}; allowed: {', '.join(METHODS)}")
        check_outlier_settings(self.outlier_fraction, self.outlier_bits)
        for name in ("wbits", "abits", "input_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in BITS:
                raise ConfigError(f"{name}={value!r} is not allowed; allowed: {BITS.start} to {BITS.stop - 1}")
        for name in ("bitw", "bita"):
            value = getattr(self, name)
            if value is None:
                continue
            wide = [b for b in parse_bit_string(value, name) if b not in BITS]
            if wide and self.method not in WIDE_METHODS:
                raise ConfigError(f"--{name} {value!r}: width {wide[0]} needs --method {' or '.join(WIDE_METHODS)}; "
                                  f"{self.method} takes widths 2 to 8")

    def to_json(self) -> dict:
        return dict(self.__dict__)


def layer_bits(model: nn.Module, spec: QATSpec) -> tuple[list[str], list[int], list[int]]:
    """(layer names in order, weight bits, input-activation bits) per Conv2d/Linear layer."""
    names = quantizable_layers(model)
    n = len(names)
    wbits = [spec.wbits] * n
    abits = [spec.input_bits] + [spec.abits] * (n - 1)
    for key, bits in (("bitw", wbits), ("bita", abits)):
        text = getattr(spec, key)
        if text is None:
            continue
        parsed = parse_bit_string(text, key)
        if len(parsed) != n:
            raise ConfigError(f"--{key} {text!r} has {len(parsed)} widths but {type(model).__name__} has {n} "
                              f"Conv2d/Linear layers ({', '.join(names)}); allowed: exactly {n} widths, each 2 to 8")
        bits[:] = parsed
    if spec.keep_first_last_8bit:
        wbits[0] = wbits[-1] = KEPT_BITS
        abits[0] = abits[-1] = KEPT_BITS
    return names, wbits, abits


def _quantizer_owner(qmodel: fx.GraphModule, fq: FakeQuantize) -> str | None:
    """The QuantConfig.layers key that sets the bits of quantization point `fq` (None: no key can)."""
    if fq is getattr(qmodel, "input_quant", None):
        return "input"
    for node in qmodel.graph.nodes:
        m = module_of(qmodel, node)
        if isinstance(m, QuantLayer) and m.act_quant is fq:
            return m.float_name
        if m is fq and node.args and isinstance(module_of(qmodel, node.args[0]), nn.AvgPool2d):
            return node.args[0].target
    return None


def ptq_config(model: nn.Module, spec: QATSpec, input_shape: tuple[int, ...] | None = None) -> QuantConfig:
    """The PTQ configuration that starts QAT: per-layer weight bits and activation bits (`input_shape`:
    that of the calibration batches, for models whose passes need it)."""
    names, wbits, abits = layer_bits(model, spec)
    base = dict(weight_bits=spec.wbits, act_bits=spec.abits, per_channel=spec.per_channel,
                observer="mse", weight_observer="mse")
    layers: dict[str, dict] = {name: {"weight_bits": w} for name, w in zip(names, wbits)}
    layers.setdefault("input", {})["act_bits"] = spec.input_bits
    wanted: dict[int, tuple[str | None, int, str]] = {}
    for name, group, owner in input_sources(model, input_shape, QuantConfig(**base)):
        bits = abits[names.index(name)]
        seen = wanted.get(group)
        if seen is not None and seen[1] != bits:
            raise ConfigError(f"--bita: layers {seen[2]!r} and {name!r} read the same activations "
                              f"but ask for {seen[1]} and {bits} bits; give them the same digit")
        if owner is None and bits != spec.abits:
            raise ConfigError(f"--bita: the input of {name!r} is a concatenation or a residual add, whose "
                              f"bits follow --abits ({spec.abits}); allowed digit there: {spec.abits}")
        wanted[group] = (owner, bits, name)
        if owner is not None:
            layers.setdefault(owner, {})["act_bits"] = bits
    return QuantConfig(**base, layers=layers)


def input_sources(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                  config: QuantConfig | None = None) -> list[tuple[str, int, str | None]]:
    """Per Conv2d/Linear in graph order: (its name, the id of the quantization point it reads, the
    QuantConfig.layers key that sets that point's bits — None for a concatenation or residual add,
    whose bits follow the global activation width). Layers with the same id read the same codes, so
    their input widths are one choice."""
    probe = prepare(model, config or QuantConfig(), input_shape)  # only to see which quantizer feeds which layer
    sources = []
    for node in probe.graph.nodes:
        layer = module_of(probe, node)
        if isinstance(layer, QuantLayer):
            fq = input_quantizer(probe, node)
            sources.append((layer.float_name, id(fq), _quantizer_owner(probe, fq)))
    return sources


def _weight_quantizer(method: str, layer: QuantLayer, bits: int, spec: QATSpec) -> nn.Module:
    per_channel = spec.per_channel
    if method in ("binary", "ternary") and bits == KEPT_BITS:
        method = "lsq"  # a layer kept at 8 bits keeps a multi-bit grid
    if method == "oaq":
        return OutlierAwareWeight(bits, spec.outlier_fraction, spec.outlier_bits)
    if method == "qil":
        return QILWeight(bits, layer.weight_scale, per_channel)
    if method in ("dorefa", "pact"):
        return DoReFaWeight(bits, per_channel)
    if method == "lsq":
        return LSQWeight(bits, layer.weight_scale, per_channel)
    if method == "hwgq":
        return GaussianWeight(bits, per_channel=False)
    if method == "binary":
        return BinaryWeight(per_channel)
    return TernaryWeight(per_channel)


def _activation_quantizer(method: str, ptq: FakeQuantize, sigma: float, qil_point: bool = False) -> FakeQuantize:
    if method == "qil" and qil_point:
        return QILQuantize(ptq, ptq.bits)
    if method == "dorefa":
        return FixedQuantize(ptq, ptq.bits)
    if method == "pact":
        return PACTQuantize(ptq, ptq.bits)
    if method == "hwgq":
        return HWGQQuantize(ptq, ptq.bits, sigma)
    return LSQQuantize(ptq, ptq.bits)


def qil_output_point(layer: QuantLayer) -> bool:
    """Whether a QIL activation may quantize this layer's output: an unsigned point behind no clamp
    or a ReLU. Its offset p is folded into the layer's bias, below the clamp; a ReLU commutes with
    that (p ≥ 0), a clamp with a finite top (ReLU6, Hardtanh) would cut at the wrong place."""
    fq = layer.act_quant
    return fq is not None and not fq.signed and (layer.clamp is None or math.isinf(layer.clamp.hi))


def activation_rms(qmodel: fx.GraphModule, batches: list[torch.Tensor]) -> dict[FakeQuantize, float]:
    """sqrt(E[x²]) of what each activation quantizer receives, over the calibration batches."""
    sums: dict[FakeQuantize, list[float]] = {}

    def hook(module, args):
        x = args[0].detach().to(torch.float64)
        acc = sums.setdefault(module, [0.0, 0])
        acc[0] += float((x * x).sum())
        acc[1] += x.numel()

    handles = [m.register_forward_pre_hook(hook) for m in qmodel.modules() if isinstance(m, FakeQuantize)]
    try:
        with torch.no_grad():
            for x in batches:
                qmodel(x)
    finally:
        for h in handles:
            h.remove()
    return {m: (s / max(n, 1)) ** 0.5 for m, (s, n) in sums.items()}


def qat_prepare(model: nn.Module, calib_data: Iterable, spec: QATSpec) -> fx.GraphModule:
    """A fake-quantized copy of `model` with `spec.method`'s trainable quantizers, ready to train."""
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calib_data]
    config = ptq_config(model, spec, tuple(batches[0].shape[1:]) if batches else None)
    qmodel = quantize(model, batches, config)
    names, wbits, _ = layer_bits(model, spec)
    rms = activation_rms(qmodel, batches) if spec.method == "hwgq" else {}
    replaced: dict[FakeQuantize, FakeQuantize] = {}

    def swap(fq: FakeQuantize, qil_point: bool = False) -> FakeQuantize:
        if fq not in replaced:
            # HWGQ's σ of the pre-activation: after a ReLU E[y²] is half of it (symmetric, zero mean).
            sigma = rms.get(fq, 1.0) * (2 ** 0.5 if not fq.signed else 1.0)
            replaced[fq] = _activation_quantizer(spec.method, fq, sigma, qil_point)
        return replaced[fq]

    for node in qmodel.graph.nodes:
        m = module_of(qmodel, node)
        if isinstance(m, QuantLayer):
            bits = wbits[names.index(m.float_name)]
            m.weight_quantizer = _weight_quantizer(spec.method, m, bits, spec)
            if m.act_quant is not None:
                m.act_quant = swap(m.act_quant, qil_output_point(m))
        elif isinstance(m, QuantAdd):
            m.act_quant = swap(m.act_quant)
        elif isinstance(m, FakeQuantize) and node.target == "input_quant":
            # The same grid, computed by the fused fake-quant op (fewer passes per batch).
            setattr(qmodel, node.target, FixedQuantize(m, m.bits))
        elif isinstance(m, FakeQuantize):
            setattr(qmodel, node.target, swap(m))
    sync_input_scales(qmodel)
    qmodel.qat_spec = spec
    return qmodel


def sync_input_scales(qmodel: fx.GraphModule) -> None:
    """Tell every layer the (possibly learned) grid of its input: its bias is rounded at that
    scale, and its integer-exact evaluation (qat.exact) reads the codes off it; and every add the
    grids of its inputs (its exact evaluation and lowering read them)."""
    for node in qmodel.graph.nodes:
        layer = module_of(qmodel, node)
        if isinstance(layer, QuantAdd):
            layer.input_grids = add_input_grids(qmodel, node)
        elif isinstance(layer, QuantLayer):
            fq = input_quantizer(qmodel, node)
            layer.input_scale = fq.scale.detach().clone()
            make_exact(layer, qmodel.bitsmith_config, float(fq.scale), int(fq.zero_point))


def quantizer_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """The learned quantizer parameters (LSQ steps, PACT α, QIL centres and distances), apart from the weights."""
    return [p for name, p in qmodel.named_parameters() if name.endswith((".step", ".alpha", ".centre", ".distance"))]


def regularization(qmodel: nn.Module) -> torch.Tensor | float:
    """Sum of the quantizers' loss terms (PACT's λ·α²)."""
    terms = [m.regularization() for m in qmodel.modules() if hasattr(m, "regularization")]
    return sum(terms) if terms else 0.0
