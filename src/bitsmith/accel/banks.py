"""The activation memory's banks (docs/hardware.md §3 "Activation memory", §6 "On chip").

The RTL keeps the one byte-addressed activation memory as NB banks: byte a lives in bank a mod NB
at word a >> KB, with 2^KB ≤ NB (two bytes of one bank and one word would be fewer than NB apart
and a multiple of NB apart, so the map is one to one). Each bank is a block RAM with one write
and one synchronous read a cycle. That holds the §5 schedule only if no cycle reads two bytes
from one bank, or writes two bytes into one: this module lists, cycle by cycle, the bytes every
layer reads and writes, and `choose_banks` takes the smallest NB under which none collide. The
addresses depend on the descriptors alone (never on the data), so the check is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import AcceleratorError

from .compiler import channel_groups, group_channels, pixel_passes, term_blocks
from .config import AccelConfig
from .program import Layer, Program
from .simulate import lane_addresses

#: The most banks `choose_banks` tries before it gives up (every bank is at least one memory).
MAX_BANKS = 1024
IDLE = -1   # a port that reads or writes nothing this cycle


@dataclass(frozen=True)
class Banking:
    banks: int    # NB: byte a is in bank a mod NB ...
    shift: int    # KB: ... at word a >> KB (2^KB ≤ NB)
    depth: int    # words per bank: the largest address's word + 1

    def place(self, address: int) -> tuple[int, int]:
        """(bank, word) of byte `address`."""
        return address % self.banks, address >> self.shift


def conv_reads(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[cycles, ports]: the byte every operand port of a conv layer reads in each compute cycle
    (IDLE for a padded position, a term t ≥ K or a row past out_ch), cycles in the FSM's order
    (group, pass, term block). A dense conv has one port per (column, pixel lane), every row
    sharing them; a grouped one a port per (row, column, pixel lane), each row at its channel map's
    address (docs/hardware.md §4)."""
    kh, kw, H, W = layer.kh, layer.kw, layer.in_h, layer.in_w
    pe, simd = config.pe, config.simd
    kin = layer.in_ch // layer.groups
    T, P, lanes = term_blocks(layer, config), layer.pixels, layer.pixel_lanes
    passes = pixel_passes(layer)
    t = np.arange(T * simd).reshape(T, simd)
    ci, ky, kx = t // (kh * kw), (t // kw) % kh, t % kw
    pixel = np.arange(passes)[:, None] * lanes + np.arange(lanes)[None, :]           # [passes, lanes]
    oy, ox = pixel // layer.out_w, pixel % layer.out_w
    iy = (oy * layer.sh - layer.ph)[:, None, None, :] + ky[None, :, :, None]       # [passes, T, C, lanes]
    ix = (ox * layer.sw - layer.pw)[:, None, None, :] + kx[None, :, :, None]
    valid = ((ci < kin)[None, :, :, None] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
             & (pixel < P)[:, None, None, :])
    offset = ci[None, :, :, None] * H * W + iy * W + ix
    if layer.channel_map is None:
        reads = np.where(valid, layer.in_base + offset, IDLE)
        return reads.reshape(passes * T, simd * lanes)
    # grouped: row r of group g serves channel g·GRP + r (pairs: + 2r) and reads from its map word
    grp = group_channels(layer, config)
    rows = np.arange(channel_groups(layer, config))[:, None] * grp \
        + np.arange(pe)[None, :] * layer.channel_lanes                              # [G, R]
    live = rows < layer.out_ch
    base = np.where(live, layer.channel_map[np.minimum(rows, layer.out_ch - 1)], 0)
    reads = base[:, None, None, :, None, None] + offset[None, :, :, None, :, :]      # [G, passes, T, R, C, lanes]
    ok = live[:, None, None, :, None, None] & valid[None, :, :, None, :, :]
    return np.where(ok, reads, IDLE).reshape(-1, pe * simd * lanes)


def lane_reads(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[cycles, R]: the byte each pool lane reads per cycle of a pool-lane layer (group, pixel,
    window element), IDLE for lanes past out_ch."""
    pe, groups = config.pe, channel_groups(layer, config)
    reads = lane_addresses(vars(layer), layer.channel_map)                          # [out_ch, P, E], the cycle model's
    idle = np.full((groups * pe - layer.out_ch, *reads.shape[1:]), IDLE, dtype=reads.dtype)
    reads = np.concatenate([reads, idle])                                            # lanes past out_ch
    return reads.reshape(groups, pe, -1).transpose(0, 2, 1).reshape(-1, pe)


def drain_writes(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[cycles, lanes]: the bytes one drain writes (a pass's outputs: every row's channel lanes and
    pixel lanes; a pool-lane layer's one output per row), IDLE for channels past out_ch and a
    missing second pixel. A raw-output layer writes the output memory instead: no rows."""
    if layer.raw_output:
        return np.empty((0, 1), dtype=np.int64)
    pe = config.pe
    grp, chans, lanes = pe * layer.channel_lanes, layer.channel_lanes, layer.pixel_lanes
    P, passes = layer.pixels, pixel_passes(layer)
    G = channel_groups(layer, config)
    ch = np.arange(G)[:, None, None] * grp + np.arange(pe)[None, :, None] * chans + np.arange(chans)[None, None, :]
    pixel = np.arange(passes)[:, None] * lanes + np.arange(lanes)[None, :]          # [passes, lanes]
    writes = layer.out_base + ch[:, None, :, :, None] * P + pixel[None, :, None, None, :]
    ok = (ch < layer.out_ch)[:, None, :, :, None] & (pixel < P)[None, :, None, None, :]
    return np.where(ok, writes, IDLE).reshape(G * passes, -1)


def cycle_accesses(program: Program) -> list[tuple[str, np.ndarray]]:
    """(what, [cycles, ports]) for every kind of access of the program that has more than one port
    in a cycle: each layer's reads and its drain's writes. (The image's input writes are the bus
    word's consecutive bytes: apart whenever NB ≥ their count, `choose_banks`' floor.)"""
    config = program.config
    out = []
    for layer in program.layers:
        reads = conv_reads(layer, config) if layer.kind == "conv" else lane_reads(layer, config)
        out.append((f"layer {layer.index} ({layer.name}) reads", reads))
        out.append((f"layer {layer.index} ({layer.name}) writes", drain_writes(layer, config)))
    return out


def distinct(accesses: np.ndarray) -> np.ndarray:
    """`accesses` with each cycle's ports sorted and a byte that another port of the cycle also
    accesses left to one port (the rest IDLE): ports that read one byte share its bank's read,
    as a grouped conv's rows of one convolution group do, or mode 4's two pixels' overlapping windows."""
    a = np.sort(accesses, axis=1)
    if a.shape[1] > 1:
        a[:, 1:][a[:, 1:] == a[:, :-1]] = IDLE
    return a


def collisions(accesses: np.ndarray, banks: int) -> int:
    """Cycles of `accesses` ([cycles, ports] from `distinct`, IDLE ports ignored) in which two
    different bytes lie in one bank of `banks`."""
    if accesses.size == 0 or accesses.shape[1] < 2:
        return 0
    idle = accesses == IDLE
    # an idle port gets a bank of its own (banks + its index), so it never meets another
    bank = np.where(idle, banks + np.arange(accesses.shape[1])[None, :], accesses % banks)
    bank.sort(axis=1)
    return int((bank[:, 1:] == bank[:, :-1]).any(axis=1).sum())


def busiest(accesses: np.ndarray) -> int:
    """The most bytes one cycle of `accesses` (from `distinct`) touches."""
    return int((accesses != IDLE).sum(axis=1).max()) if accesses.size else 0


def choose_banks(program: Program, act_bytes: int) -> Banking:
    """The smallest NB (≥ the most bytes any cycle reads or writes, and ≥ the input's bytes per bus
    word) under which no cycle of `program` has two accesses in one bank; AcceleratorError when
    none up to MAX_BANKS does."""
    accesses = [(what, np.unique(distinct(a), axis=0)) for what, a in cycle_accesses(program)]
    first = program.layers[0]
    floor = max([1, min(program.config.bus_bits // 8, first.in_elems)] + [busiest(a) for _, a in accesses])
    worst = None
    for banks in range(floor, MAX_BANKS + 1):
        clash = next(((what, n) for what, a in accesses if (n := collisions(a, banks))), None)
        if clash is None:
            shift = int(math.log2(banks))
            return Banking(banks, shift, ((max(1, act_bytes) - 1) >> shift) + 1)
        worst = clash
    raise AcceleratorError(f"no banking of the activation memory into {floor}..{MAX_BANKS} banks keeps every "
                           f"cycle's bytes in distinct banks (at {MAX_BANKS} banks: {worst[0]} collide in "
                           f"{worst[1]} cycles)")



def rtl_banking(program: Program, act_bytes: int) -> dict[str, int]:
    """The top's bank parameters (bitsmith.rtl.generate): ACT_BANKS, ACT_SHIFT, ACT_BANK_DEPTH."""
    b = choose_banks(program, act_bytes)
    return {"ACT_BANKS": b.banks, "ACT_SHIFT": b.shift, "ACT_BANK_DEPTH": b.depth}


__all__ = ["Banking", "IDLE", "MAX_BANKS", "busiest", "choose_banks", "collisions", "conv_reads",
           "cycle_accesses", "distinct", "drain_writes", "lane_reads", "rtl_banking"]
