"""The layer program the accelerator runs (docs/hardware.md §2, §6): one `Layer` per descriptor.

`bitsmith.accel.compiler.compile_graph` builds it from an IntegerGraph; the cycle model, the cost
model, the memory-image writer and the Verilog generator all read it and nothing else.

Every layer reads its input(s) from and writes its output to the one activation memory, at the
byte addresses the compiler allocated (`in_base`, `in2_base`, `out_base`; docs/hardware.md §6). A
hand-built Program leaves them 0, which only a single layer (or a raw-output layer) can run with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .config import ACC_BITS, MAX_ACT_BITS, PARAM_WORDS_PER_CHANNEL, AccelConfig

#: Descriptor kinds (word 0, low byte = the index). conv runs on the PE array; every other kind on
#: the pool lanes: maxpool / reorg / concat in max mode (reorg and concat: a 1×1 window, one element,
#: so a copy through a channel map), avgpool / requant / add in sum mode followed by the requant unit.
KINDS = ("conv", "maxpool", "avgpool", "add", "reorg", "concat", "requant")
#: Kinds whose per-channel table holds bias, multiplier, shift (the requant unit runs).
REQUANT_KINDS = ("conv", "avgpool", "add", "requant")
#: Kinds the pool lanes run in max mode (no requant: codes out on the input's grid).
MAX_KINDS = ("maxpool", "reorg", "concat")
#: Packing modes of a conv layer (docs/hardware.md §3): (output channels, output pixels) per PE product.
PACKINGS = {1: (1, 1), 2: (2, 1), 4: (2, 2)}


@dataclass
class Layer:
    index: int
    name: str                 # the graph tensor this layer produces (Requant / pool output, or the raw accumulator)
    kind: str                 # one of KINDS: "conv" (Conv2d or Linear), "maxpool", "avgpool", "add", "reorg",
                              # "concat" (a Concat that allocation could not make free), "requant" (of codes)
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
    groups: int = 1           # conv: K = (in_ch / groups)·kh·kw terms; row o reads the channels of its group
    channel_map: Optional[np.ndarray] = None  # int64 [out_ch]: activation address of row o's first input
                              # value (grouped conv, reorg, concat), else None (row o reads in_base + o·H·W,
                              # a dense conv reads in_base)
    in_base: int = 0          # activation-memory byte address of the (first) input map
    in2_base: int = 0         # add: the second input map
    out_base: int = 0         # the output map (unused for a raw output, which goes to the output memory)
    in2_signed: bool = False  # add: the second input's codes
    in2_bits: int = 0
    z_in2: int = 0
    lane_multipliers: tuple[int, int] = (0, 0)  # pool-lane multipliers of window elements 0 and 1 (add: m_a,
                              # m_b; avgpool, requant: (1, 0); max kinds: unused, 0)
    weight_storage: str = "dense"   # conv: the IR's weight_storage, a bitsmith.integer.sparse format; the
                              # compressed weight stream (docs/hardware.md §6) stores the codes in it
    storage_fields: dict = field(default_factory=dict)   # its field width: {"run_bits": r} / {"index_bits": k}
    packing: int = 1          # conv: products per PE multiplier per cycle (docs/hardware.md §3 "Packed MACs"):
                              # 1, 2 (two output channels share d) or 4 (two channels × two pixels); one of PACKINGS

    @property
    def terms(self) -> int:
        """K: input terms per output value (conv: (in_ch/groups)·kh·kw), window elements per output
        value on the pool lanes (pools: kh·kw; add: 2, a 1×2 window of one element per input; reorg,
        concat, requant: 1)."""
        return (self.in_ch // self.groups) * self.kh * self.kw if self.kind == "conv" else self.kh * self.kw

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
    def channel_lanes(self) -> int:
        """Output channels each PE row serves per cycle (2 in packing modes 2 and 4; pool kinds 1)."""
        return PACKINGS[self.packing][0] if self.kind == "conv" else 1

    @property
    def pixel_lanes(self) -> int:
        """Output pixels each pass of the pixel loop covers (2 in packing mode 4)."""
        return PACKINGS[self.packing][1] if self.kind == "conv" else 1

    @property
    def weight_codes(self) -> np.ndarray:
        """[out_ch, K] signed weight codes (a codebook layer's indices looked up)."""
        return self.codebook[self.weights] if self.is_codebook else self.weights

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
        """The requant unit runs (a raw-output conv keeps an identity table but bypasses it)."""
        return self.kind in REQUANT_KINDS and not self.raw_output

    @property
    def has_table(self) -> bool:
        """The per-channel table holds bias, multiplier, shift (docs/hardware.md §6)."""
        return self.kind in REQUANT_KINDS

    @property
    def has_map(self) -> bool:
        return self.channel_map is not None

    @property
    def table_words(self) -> int:
        """param.hex words per channel: bias, multiplier, shift (requant kinds), input address (channel map)."""
        return PARAM_WORDS_PER_CHANNEL * self.has_table + self.has_map


@dataclass
class Program:
    config: AccelConfig
    layers: list[Layer]
    input_name: str           # the graph's quantized input tensor (codes loaded as In8.hex)
    metadata: dict = field(default_factory=dict)
