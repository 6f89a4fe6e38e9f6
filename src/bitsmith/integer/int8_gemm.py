"""Exact int8 convolutions and matrix products on the CPU's integer units: which kernels this
machine has (`backend`), and the layers built on them (`conv`, `linear`).

Two sets of kernels, both giving the float32 accumulator of uint8 codes × int8 weights exactly:
oneDNN's (through torch) where the CPU has VNNI or AMX, else bitsmith's own AVX2 kernel
(`bitsmith.integer.u8s8`), which arranges the weights so that the AVX2 pair sums cannot saturate.

PyTorch's CPU build carries oneDNN's int8 kernels (`torch.ops.onednn.qconv2d_pointwise`,
`qlinear_pointwise`): uint8 activations × int8 weights, summed in int32 on the VNNI / AMX units.
Asked for a float32 result with every scale 1.0 and no output zero point, they return the integer
accumulator Σ w·(x − z_x) (+ bias) converted to float32, which is exact whenever every value the
layer can produce is below 2^24 in magnitude — the engine's per-layer bound decides that, as for
its float32 GEMMs (`bitsmith.integer.exactness`).

The int32 sums themselves are exact only where the hardware sums u8·s8 products without
saturating: VNNI (`vpdpbusd`) and AMX do; the older AVX2 sequence (`vpmaddubsw`) saturates pairs
of products at 16 bits. So oneDNN's kernels are used only when the CPU reports VNNI or AMX and a probe
with the most extreme codes gives the exact integers; otherwise the AVX2 kernel, where it was
built. `BITSMITH_INT8_GEMM=0` turns both off (the engine then uses its float GEMMs, equally exact,
slower).

Packed weights depend on the batch size (oneDNN picks its blocking from it), so each layer keeps
one packing per batch size it has seen.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from bitsmith.integer import u8s8

INT32_MAX = (1 << 31) - 1
ENV_SWITCH = "BITSMITH_INT8_GEMM"
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.lru_cache(maxsize=1)
def _cpu_has_vnni() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_VNNI_FLAGS & set(line.split(":", 1)[1].split()))
    return False


@functools.lru_cache(maxsize=1)
def _ops_present() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        for name in ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise"):
            getattr(torch.ops.onednn, name)
    except (AttributeError, RuntimeError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _probe() -> bool:
    """The most extreme codes through both kernels must give the exact integers: 255 × −128 and
    0 × 127 summed over many channels saturate at once where pairs of products are added in 16 bits."""
    try:
        k = 256
        x = torch.zeros(4, k, dtype=torch.uint8)
        x[0], x[1], x[2, ::2], x[3, 1::2] = 255, 0, 255, 255
        w = torch.full((8, k), -128, dtype=torch.int8)
        w[1::2] = 127
        w[2, ::3] = 127
        want = (x.to(torch.int64) - 3) @ w.to(torch.int64).t()
        got = Int8Linear(w, zero_point=3)(x)
        conv = Int8Conv(w.reshape(8, k, 1, 1), 3, stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
        got_conv = conv(x.reshape(4, k, 1, 1).contiguous(memory_format=torch.channels_last)).reshape(4, 8)
        return bool(torch.equal(got.to(torch.int64), want) and torch.equal(got_conv.to(torch.int64), want))
    except RuntimeError:
        return False


def backend() -> str | None:
    """Which exact int8 kernels the engine may use here: "onednn" (VNNI / AMX), "avx2"
    (`bitsmith.integer.u8s8`), or None (switched off, or neither)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _cpu_has_vnni() and _ops_present() and _probe():
        return "onednn"
    return "avx2" if u8s8.available() else None


def available() -> bool:
    """May the engine use exact int8 kernels here (see the module docstring)?"""
    return backend() is not None


def conv(weight: torch.Tensor, zero_point: int, *, stride, pads, dilation, groups: int,
         bias: torch.Tensor | None, a_range: tuple[int, int], covers_input: bool = False):
    """A Conv2d on this machine's int8 kernels (`backend`), or None where they do not take it
    (grouped convolutions; asymmetric padding on oneDNN). `pads` is (top, left, bottom, right);
    `a_range` bounds the input's carrier values. `covers_input`: the kernel covers the whole
    (unpadded, undilated) input, so oneDNN runs it as its int8 matrix product; the AVX2 kernel takes
    it as a convolution, reading the channels-last input without a copy."""
    kind = backend()
    if kind is None or groups != 1:
        return None
    if kind == "avx2":
        return u8s8.U8S8Conv(weight, zero_point, stride=stride, pads=pads, dilation=dilation, bias=bias,
                             a_range=a_range)
    if covers_input:
        product = Int8Linear(weight.reshape(weight.shape[0], -1), zero_point, bias)
        return lambda x: product(x.reshape(x.shape[0], -1)).reshape(x.shape[0], -1, 1, 1)
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        return None
    return Int8Conv(weight, zero_point, stride=stride, padding=[top, left], dilation=dilation, groups=1, bias=bias)


def linear(weight: torch.Tensor, zero_point: int, bias: torch.Tensor | None, a_range: tuple[int, int]):
    """x·Wᵀ + bias on this machine's int8 kernels, or None without them."""
    kind = backend()
    if kind == "avx2":
        return u8s8.U8S8Linear(weight, zero_point, bias, a_range=a_range)
    return Int8Linear(weight, zero_point, bias) if kind == "onednn" else None


class _Int8Product:
    """What both int8 kernels keep: the weight codes, the input's zero point, the bias, unit
    scales, and one weight packing per input shape (`_prepack`)."""

    def __init__(self, weight: torch.Tensor, zero_point: int, bias: torch.Tensor | None):
        if weight.dtype != torch.int8:
            raise ValueError(f"{type(self).__name__} needs int8 weight codes")
        self.weight = weight.contiguous()
        self.zero_point = int(zero_point)
        self.bias = None if bias is None else bias.to(torch.float32).contiguous()
        self._ones = torch.ones(weight.shape[0], dtype=torch.float32)
        self._zeros = torch.zeros(weight.shape[0], dtype=torch.int64)
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def _packing(self, shape: tuple[int, ...]) -> torch.Tensor:
        packed = self._packed.get(shape)
        if packed is None:
            packed = self._packed[shape] = self._prepack(list(shape))
        return packed

    def _prepack(self, shape: list[int]) -> torch.Tensor:
        raise NotImplementedError


class Int8Conv(_Int8Product):
    """Conv2d of uint8 codes (channels-last) with int8 weights: the float32 accumulator, exactly,
    when every value it can hold is below 2^24 (the caller proves that).

    `zero_point` is the input's zero point as the uint8 carrier holds it; padding positions count
    as that zero point, i.e. as centred zeros, as in the integer graph."""

    def __init__(self, weight: torch.Tensor, zero_point: int, *, stride, padding, dilation, groups: int,
                 bias: torch.Tensor | None = None):
        super().__init__(weight, zero_point, bias)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = int(groups)

    def _prepack(self, shape: list[int]) -> torch.Tensor:
        return torch.ops.onednn.qconv_prepack(self.weight, self._ones, 1.0, self.zero_point, self.stride,
                                              self.padding, self.dilation, self.groups, shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packing(tuple(x.shape))
        return torch.ops.onednn.qconv2d_pointwise(
            x, 1.0, self.zero_point, packed, self._ones, self._zeros, self.bias, self.stride, self.padding,
            self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], "")


class Int8Linear(_Int8Product):
    """x·Wᵀ (+ bias) of uint8 codes [M, K] with int8 weights [N, K]: the float32 accumulator, exactly
    under the same conditions as Int8Conv."""

    def __init__(self, weight: torch.Tensor, zero_point: int, bias: torch.Tensor | None = None):
        super().__init__(weight, zero_point, bias)

    def _prepack(self, shape: list[int]) -> torch.Tensor:
        return torch.ops.onednn.qlinear_prepack(self.weight, shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packing(tuple(x.shape))
        return torch.ops.onednn.qlinear_pointwise(x, 1.0, self.zero_point, packed, self._ones, self._zeros,
                                                  self.bias, 1.0, 0, torch.float32, "none", [], "")
