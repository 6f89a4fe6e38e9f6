"""The layer program the accelerator runs (docs/hardware.md §2, §6): one `Layer` per descriptor.

`bitsmith.accel.compiler.compile_graph` builds it from an IntegerGraph; the cycle model, the cost
model, the memory-image writer and the Verilog generator all read it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import ACC_BITS, MAX_ACT_BITS, AccelConfig

KINDS = ("conv", "maxpool", "avgpool")


@dataclass
class Layer:
    index: int
    name: str                 # the graph tensor this layer produces (Requant / pool output, or the raw accumulator)
    kind: str                 # "conv" (Conv2d or Linear), "maxpool", "avgpool"
    in_ch: int
    in_h: int
    in_w: int
    out_ch: int
    out_h: int
    out_w: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    in_bits: int = 8          # activation code width of the input (≤ 8)
    in_signed: bool = False
    out_bits: int = 8         # 32 when raw_output
    out_signed: bool = False
    z_in: int = 0
    z_out: int = 0
    clamp_lo: int = 0
    clamp_hi: int = 255
    raw_output: bool = False  # no requant: 32-bit accumulators out (last layer only)
    weight_bits: int = 0      # 2..8 for conv, 0 for pools
    codebook: Optional[np.ndarray] = None   # int64 [4] when the layer uses 2-bit indices
    weights: Optional[np.ndarray] = None    # int64 [out_ch, K] signed codes (dense), or indices 0..3 (codebook)
    bias: Optional[np.ndarray] = None       # int64 [out_ch] (zeros when the graph has none)
    multiplier: Optional[np.ndarray] = None  # int64 [out_ch] (one value repeated when per-tensor)
    shift: Optional[np.ndarray] = None      # int64 [out_ch]

    @property
    def terms(self) -> int:
        """K: input terms per output value (conv), window size (pools)."""
        return self.in_ch * self.kh * self.kw if self.kind == "conv" else self.kh * self.kw

    @property
    def pixels(self) -> int:
        return self.out_h * self.out_w

    @property
    def in_elems(self) -> int:
        return self.in_ch * self.in_h * self.in_w

    @property
    def out_elems(self) -> int:
        return self.out_ch * self.out_h * self.out_w

    @property
    def macs(self) -> int:
        """Useful multiply-accumulates per image (conv); 0 for pools."""
        return self.out_ch * self.pixels * self.terms if self.kind == "conv" else 0

    @property
    def is_codebook(self) -> bool:
        return self.codebook is not None

    @property
    def stored_out_bits(self) -> int:
        """Bits per output value in the buffers and expected/Lii.hex: one byte per code, or the raw
        32-bit accumulator."""
        return ACC_BITS if self.raw_output else MAX_ACT_BITS

    @property
    def has_requant(self) -> bool:
        return self.kind != "maxpool" and not self.raw_output


@dataclass
class Program:
    config: AccelConfig
    layers: list[Layer]
    input_name: str           # the graph's quantized input tensor (codes loaded as In8.hex)
    metadata: dict = field(default_factory=dict)
