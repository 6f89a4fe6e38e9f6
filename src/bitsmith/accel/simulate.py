"""Cycle-level model of the accelerator (docs/hardware.md §3–§5): executes the memory files' words.

`simulate(program, codes)` packs the program and the input codes into the §6 memory words
(`memory.build_memory`) and then runs the controller FSM from those words only: it decodes each
descriptor and per-channel table from `param.hex` words, decodes every term block of the weight
ring from the packed W8 / W2 bus words (a packing bug shows up as a wrong output), keeps the one
activation memory as bytes (two's complement when signed) and reads and writes every map at the
addresses the descriptors and channel maps give (an allocation bug shows up as a wrong output),
and advances a cycle counter phase by phase as the FSM does.

What is vectorised (and why it keeps the semantics): all images of the batch run at once, and a
conv layer's arithmetic runs as one product over all pixels and channel groups after the FSM
loop has decoded every group's term blocks and counted its cycles; the pool lanes
gather every window element of every lane at once. No output depends on another pixel, group or
image, and a layer's output never overlaps its inputs (§6), so the order does not change a value. Overflow keeps its
per-cycle meaning: the register after cycle j of a pixel is bias + the first j term blocks of C
products. When |bias| + Σ|w|·max|d| fits 32 bits no cycle can leave the range; otherwise the
running sums are formed cycle by cycle and every wrap is counted where it happens, and the output
is the register's wrapped value.

Zero skipping (`config.zero_skip`, docs/hardware.md §5): "weights" counts P cycles per term block
of a group with a non-zero weight in the decoded ring words; "both" counts, per image and pixel,
the blocks where some non-zero weight meets a non-zero d = x − z_in (padding reads d = 0) — exact
from the data, so cycles differ per image: `cycles["images"]` holds each image's total, and the
per-layer phases and `total` are the batch means. Outputs never depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bitsmith.errors import AcceleratorError, DataError

from .compiler import check_packing, storage_width
from .config import (ACC_BITS, ACC_MAX, ACC_MIN, CODEBOOK_SIZE, CODEBOOK_VALUE_BITS,
                     DESCRIPTOR_WORDS, MAX_ACT_BITS)
from .memory import MemoryImage, build_memory, channel_table, decode_descriptor, schedule_words, unpack_blocks
from .program import MAX_KINDS, PACKINGS, Program
from .timing import FINISH_CYCLES, PHASES, ring_waits

#: Elements per image chunk of the im2col columns [images, T·C, P]: bounds memory (~64 MB float64).
CHUNK_ELEMENTS = 1 << 23


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]   # layer tensor name -> int64 codes, the engine's shape [N, ...]
    cycles: dict                     # {"layers": [{phase: cycles}], "total", "finish", "images", "zero_skip"}
                                     # per image (zero_skip "both": batch means, "images" each image's)
    overflows: list[str] = field(default_factory=list)  # accumulator wraps detected (layer, count)
    images: int = 0

    @property
    def total_cycles(self) -> int:
        return self.cycles["total"]


class _Counter:
    """The FSM's cycle counter, split by phase of the current layer; cycles that depend on the image
    (zero_skip "both") are counted per image."""

    def __init__(self, n_images: int):
        self.total = 0
        self.layers: list[dict] = []
        self.per_image = np.zeros(n_images, dtype=np.int64)
        self.data_dependent = False

    def start_layer(self, index: int, name: str, kind: str) -> None:
        self.layers.append({"index": index, "name": name, "kind": kind, **{p: 0 for p in PHASES}})

    def tick(self, phase: str, cycles: int = 1, layer_index: int = -1) -> None:
        if phase != "finish":
            self.layers[layer_index][phase] += cycles
        self.total += cycles

    def tick_images(self, phase: str, cycles: np.ndarray, layer_index: int = -1) -> None:
        """Cycles of `phase` that differ per image, [N] (of the current layer, or of `layer_index`)."""
        layer = self.layers[layer_index]
        layer[f"{phase}_images"] = (np.asarray(layer.get(f"{phase}_images", 0)) + cycles).tolist()
        self.per_image += cycles
        self.data_dependent = True

    def result(self) -> dict:
        images = (self.total + self.per_image).tolist()
        if not self.data_dependent:
            return {"layers": self.layers, "finish": FINISH_CYCLES, "total": self.total, "images": images}
        for layer in self.layers:   # phases as batch means, so that they still sum to the total
            for phase in PHASES:
                if f"{phase}_images" in layer:
                    layer[phase] += float(np.mean(layer[f"{phase}_images"])) if images else 0.0
        mean = float(np.mean(images)) if images else float(self.total)
        return {"layers": self.layers, "finish": FINISH_CYCLES, "total": mean, "images": images}


def simulate(program: Program, codes, memory: MemoryImage | None = None) -> SimResult:
    """Run `program` on input codes [N, C, H, W] (the graph's QuantizeInput output).

    `memory` (e.g. read back from files with `memory.read_memory`) replaces the words packed from
    `program`; the program itself only supplies names, output shapes and the configuration.
    """
    config = program.config
    for layer in program.layers:
        check_packing(layer)  # the packed products are exact only in the modes the fields allow (§3)
    codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    codes = codes.astype(np.int64)
    n_images = int(codes.shape[0])
    if memory is None:
        memory = build_memory(program, codes)
    bus = config.bus_bits
    shapes = program.metadata.get("tensor_shapes", {})
    act = np.zeros((n_images, config.act_buffer_bytes), dtype=np.uint8)   # the one activation memory
    counter = _Counter(n_images)
    outputs: dict[str, np.ndarray] = {}
    overflows: list[str] = []
    n_layers = memory.param[0]
    if memory.schedule and memory.schedule != schedule_words(program):
        raise DataError("LS.hex (the weight loader's schedule) does not match the program's conv layers")
    busy = []   # per layer: compute + drain per channel group (conv), or in total (pool lanes)
    for i in range(n_layers):
        name = program.layers[i].name
        # PARAM: the descriptor, then the per-channel table, one 32-bit word per cycle.
        d = decode_descriptor(memory.param[1 + DESCRIPTOR_WORDS * i : 1 + DESCRIPTOR_WORDS * (i + 1)])
        counter.start_layer(i, name, d["kind"])
        counter.tick("param", DESCRIPTOR_WORDS)
        table, channel_map = channel_table(memory.param, d)
        per_channel = (0 if table is None else table.shape[1]) + (channel_map is not None)
        counter.tick("param", per_channel * d["out_ch"])
        bias = multiplier = shift = None
        if table is not None:
            bias, multiplier, shift = table[:, 0], table[:, 1], table[:, 2]
        codebook = None
        if d["codebook"]:
            codebook = _signed(np.array(memory.cb8[d["codebook_base"] : d["codebook_base"] + CODEBOOK_SIZE],
                                        dtype=np.int64), CODEBOOK_VALUE_BITS)
            counter.tick("codebook", CODEBOOK_SIZE)
        if i == 0:  # INPUT: each image from In8 words into the activation memory at the layer's input
            in_bytes = d["in_ch"] * d["in_h"] * d["in_w"]
            per_image = math.ceil(in_bytes * MAX_ACT_BITS / bus)
            for n in range(n_images):
                words = memory.inputs[n * per_image : (n + 1) * per_image]
                act[n, d["in_base"] : d["in_base"] + in_bytes] = _unpack(words, MAX_ACT_BITS, bus)[:in_bytes]
            counter.tick("input", per_image)
        if d["kind"] == "conv":
            raw, wraps, groups_busy = _run_conv(d, act, memory, codebook, bias, multiplier, shift, channel_map,
                                                config, counter)
            busy.append(groups_busy)
            if wraps:
                overflows.append(f"layer {name}: 32-bit accumulator wrapped in {wraps} output values")
        else:
            raw = _run_lanes(d, act, bias, multiplier, shift, channel_map, config.pe, counter)
            busy.append(counter.layers[-1]["compute"] + counter.layers[-1]["drain"])
        out_bytes = d["out_ch"] * d["out_h"] * d["out_w"]
        if raw is not None:
            y = raw
        else:
            y = act[:, d["out_base"] : d["out_base"] + out_bytes].astype(np.int64)
            if d["out_signed"]:
                y = _signed(y, MAX_ACT_BITS)
        shape = shapes.get(name, [d["out_ch"], d["out_h"], d["out_w"]])
        outputs[name] = y.reshape(n_images, *shape)
        counter.tick("next")
    # WEIGHTS: what the array waited for the loader, which streams every layer's blocks through the
    # weight ring ahead of it (§5); it depends on every layer's busy cycles, so it is counted last.
    for i, wait in enumerate(ring_waits(program, busy)):
        if np.ndim(wait):
            counter.tick_images("weights", wait, layer_index=i)
        else:
            counter.tick("weights", wait, layer_index=i)
    counter.tick("finish", FINISH_CYCLES)
    cycles = counter.result() | {"zero_skip": config.zero_skip}
    return SimResult(outputs=outputs, cycles=cycles, overflows=overflows, images=n_images)


def _read_map(act: np.ndarray, base: int, channels: int, h: int, w: int, signed: bool) -> np.ndarray:
    """Codes [N, channels, h, w] stored from byte `base` of the activation memory (CHW)."""
    n_bytes = channels * h * w
    if base + n_bytes > act.shape[1]:
        raise AcceleratorError(f"a map of {n_bytes} bytes at address {base} runs past the activation memory "
                               f"({act.shape[1]} bytes)")
    x = act[:, base : base + n_bytes].astype(np.int64)
    return (_signed(x, MAX_ACT_BITS) if signed else x).reshape(act.shape[0], channels, h, w)


# -- conv -----------------------------------------------------------------------------------

def _run_conv(d, act, memory, codebook, bias, multiplier, shift, channel_map, config, counter):
    """All channel groups of a conv layer; returns (raw 32-bit outputs or None, wrap count, each
    group's compute + drain cycles: [G], or [G, N] under zero_skip "both").

    The FSM loop (compute, drain per group) decodes every group's term blocks and
    counts its cycles; the arithmetic then runs as one exact product per input base (one for a
    dense conv, one per convolution group for a grouped one: row o reads the in_ch/groups channels
    starting at its channel-map address) and image chunk.
    """
    # Packing (§3): a group is R·(channel lanes) output channels; the pixel loop advances
    # (pixel lanes) pixels a pass. The packed products are exact (check_packing: every field holds
    # its product), so the values are the plain sums; only the schedule changes.
    lanes, pixel_lanes = PACKINGS[d["packing"]]
    R, C, bus = config.pe * lanes, config.simd, config.bus_bits
    kin = d["in_ch"] // d["groups"]
    K = kin * d["kh"] * d["kw"]
    T = math.ceil(K / C)
    P = d["out_h"] * d["out_w"]
    passes = math.ceil(P / pixel_lanes)
    out_ch, n_images = d["out_ch"], act.shape[0]
    bits = storage_width(d["weight_bits"], d["codebook"])   # on the bus (§6)
    groups = math.ceil(out_ch / R)
    # The layer's words, block by block (§6): the loader writes each into a weight-ring word, where
    # block j of group g holds row i's C entries at i·C (codebook decoder / sign extension on read).
    entries = unpack_blocks(memory.w2 if d["codebook"] else memory.w8, d["weight_base"], bits, bus, groups, T, R, C,
                            signed=not d["codebook"])
    ring = codebook[entries] if d["codebook"] else entries   # [groups·R, T·C]
    weight_rows = []
    groups_busy = []   # compute + drain of each group, which the loader's next blocks overlap
    for g in range(groups):
        wbuf = ring[g * R : (g + 1) * R]
        weight_rows.append(wbuf[: min(R, out_ch - g * R)])  # rows with o < out_ch
        # COMPUTE: P pixels × T cycles (C terms per row per cycle), fewer with zero skipping (the
        # weight part known from the ring words); DRAIN: each pixel's write shares the next
        # pixel's first compute cycle, so only the group's last pixel (and, skipping, a pixel after
        # one with no compute cycle) takes a cycle of its own.
        drain = 1
        if config.zero_skip == "none":
            compute = passes * T
        elif config.zero_skip == "weights":
            # Padded entries (rows o ≥ out_ch, terms t ≥ K) never count: a codebook layer's hold
            # codebook[0], which may be non-zero.
            real = wbuf.reshape(R, T * C)[: min(R, out_ch - g * R), :K] != 0
            compute = passes * int(np.pad(real, ((0, 0), (0, T * C - K))).reshape(-1, T, C).any(axis=(0, 2)).sum())
            drain = 1 if compute else passes
        else:
            compute = drain = 0   # "both": counted per image below
        counter.tick("compute", compute)
        counter.tick("drain", drain)
        groups_busy.append(compute + drain)
    weights = np.concatenate(weight_rows)                      # [out_ch, T·C], zeros for t ≥ K
    row_base = channel_map if channel_map is not None else np.full(out_ch, d["in_base"], dtype=np.int64)
    acc = np.empty((n_images, out_ch, P), dtype=np.int64)
    wraps = 0
    H, W, oh, ow = d["in_h"], d["in_w"], d["out_h"], d["out_w"]
    # Top / left padding from the descriptor; bottom / right as far as the last window reaches (a
    # position past the map reads d = 0, §4).
    bottom = max(0, (oh - 1) * d["sh"] + d["kh"] - H - d["ph"])
    right = max(0, (ow - 1) * d["sw"] + d["kw"] - W - d["pw"])
    full_h = (H + d["ph"] + bottom - d["kh"]) // d["sh"] + 1
    full_w = (W + d["pw"] + right - d["kw"]) // d["sw"] + 1

    def columns(x: np.ndarray, channels: int) -> torch.Tensor:
        """d(t) = x − z_in, 0 for padded positions and for t ≥ K: [n, groups·T·C, P], OIHW term order
        within each run of `kin` channels."""
        centered = torch.from_numpy(x - d["z_in"]).to(torch.float64)
        centered = F.pad(centered, (d["pw"], right, d["ph"], bottom))
        patches = F.unfold(centered, (d["kh"], d["kw"]), stride=(d["sh"], d["sw"]))
        patches = patches.reshape(patches.shape[0], channels // kin, K, full_h, full_w)[..., :oh, :ow]
        patches = F.pad(patches.reshape(patches.shape[0], channels // kin, K, P), (0, 0, 0, T * C - K))
        return patches

    if config.zero_skip == "both":
        pixel_compute = _skip_both(weights != 0, row_base, act, d, columns, R, C, T, P, pixel_lanes)   # [N, G, passes]
        group_busy = pixel_compute.sum(axis=2) + 1 + (pixel_compute[:, :, 1:] == 0).sum(axis=2)
        counter.tick_images("compute", pixel_compute.sum(axis=(1, 2)))
        counter.tick_images("drain", (group_busy - pixel_compute.sum(axis=2)).sum(axis=1))
        groups_busy = group_busy.T   # [G, N]

    bases = np.unique(row_base)
    step = kin * H * W
    contiguous = len(bases) > 1 and np.array_equal(bases, bases[0] + step * np.arange(len(bases)))
    if contiguous and _grouped_bound(weights, bias, row_base, d) <= ACC_MAX:
        # A grouped conv whose groups lie back to back (what the compiler writes): one im2col over all
        # of them, row o contracted with the columns of its own group. No cycle can wrap (bound above).
        x = _read_map(act, int(bases[0]), kin * len(bases), H, W, d["in_signed"])
        group = ((row_base - bases[0]) // step).astype(np.int64)
        w = torch.from_numpy(np.ascontiguousarray(weights)).to(torch.float64)
        chunk = max(1, CHUNK_ELEMENTS // max(1, out_ch * T * C * P))
        for n0 in range(0, n_images, chunk):
            patches = columns(x[n0 : n0 + chunk], kin * len(bases))[:, torch.from_numpy(group)]  # [n, out_ch, TC, P]
            values = torch.einsum("ot,notp->nop", w, patches).to(torch.int64).numpy()
            acc[n0 : n0 + chunk] = bias.reshape(1, -1, 1) + values
        bases = []
    chunk = max(1, CHUNK_ELEMENTS // max(1, T * C * P))
    for base in bases:
        rows = np.flatnonzero(row_base == base)
        x = _read_map(act, int(base), kin, H, W, d["in_signed"])
        for n0 in range(0, n_images, chunk):
            patches = columns(x[n0 : n0 + chunk], kin)[:, 0]
            values, chunk_wraps = _pe_chain(patches, weights[rows], bias[rows], C)
            acc[n0 : n0 + chunk, rows] = values
            wraps += chunk_wraps
    if d["raw_output"]:
        return acc, wraps, groups_busy
    _write(act, d["out_base"], _requant(acc, multiplier, shift, d), 0, P)
    return None, wraps, groups_busy


def _skip_both(nonzero: np.ndarray, row_base: np.ndarray, act: np.ndarray, d: dict, columns, R: int, C: int,
               T: int, P: int, pixel_lanes: int = 1) -> np.ndarray:
    """Compute cycles [N, G, passes] per image, channel group and pixel pass under zero_skip "both": Σ
    over blocks j of [some row r of g and column c have w[r][j·C+c] ≠ 0 and d_r(j·C+c) ≠ 0 at a
    pixel of the pass]. Rows reading the same input (a dense conv: all) see the same d, so per group
    and input only the OR of their weight masks over rows matters."""
    n_images, kin = act.shape[0], d["in_ch"] // d["groups"]
    group_of = np.arange(nonzero.shape[0]) // R
    live = np.zeros((n_images, int(group_of.max(initial=-1)) + 1, T, P), dtype=bool)
    chunk = max(1, CHUNK_ELEMENTS // max(1, T * C * P))
    for base in np.unique(row_base):
        rows = row_base == base
        x = _read_map(act, int(base), kin, d["in_h"], d["in_w"], d["in_signed"])
        masks = {int(g): torch.from_numpy(nonzero[rows & (group_of == g)].any(axis=0).reshape(T, C).astype(np.float64))
                 for g in np.unique(group_of[rows])}
        for n0 in range(0, n_images, chunk):
            active = (columns(x[n0 : n0 + chunk], kin)[:, 0] != 0).to(torch.float64).reshape(-1, T, C, P)
            for g, mask in masks.items():
                live[n0 : n0 + chunk, g] |= (torch.einsum("tc,ntcp->ntp", mask, active) > 0).numpy()
    if pixel_lanes > 1:   # a pass computes a block when either of its pixels needs it
        pad = (-P) % pixel_lanes
        live = np.pad(live, ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(*live.shape[:3], -1, pixel_lanes).any(axis=4)
    return live.sum(axis=2).astype(np.int64)


def _grouped_bound(weights: np.ndarray, bias: np.ndarray, row_base: np.ndarray, d: dict) -> int:
    """|bias| + Σ|w|·max|x − z_in| over the rows, with max|x − z_in| over the input's code range."""
    lo, hi = (-128, 127) if d["in_signed"] else (0, 255)
    max_d = max(hi - d["z_in"], d["z_in"] - lo)
    return int((np.abs(bias) + np.abs(weights).sum(axis=1) * max_d).max(initial=0))


def _pe_chain(patches: torch.Tensor, weights: np.ndarray, bias: np.ndarray, C: int) -> tuple[np.ndarray, int]:
    """Accumulators [n, rows, P] after T cycles of `acc[r] += Σ_c w[r][j·C+c]·d(j·C+c)` from
    acc[r] = bias, wrapped to 32 bits, and how many of them left the 32-bit range at some cycle.

    Every register value along the way is bounded by |bias| + Σ_t |w|·max|d|; when that bound fits
    32 bits no cycle can wrap and the final value is one exact float64 product (|Σ| < 2^53).
    Otherwise the running sum is formed cycle by cycle and checked after every cycle.
    """
    n, TC, P = patches.shape
    w = torch.from_numpy(np.ascontiguousarray(weights)).to(torch.float64)
    start = torch.from_numpy(bias.astype(np.int64)).reshape(1, -1, 1)
    max_d = int(patches.abs().max()) if patches.numel() else 0
    bound = np.abs(bias) + np.abs(weights).sum(axis=1) * max_d
    if int(bound.max(initial=0)) <= ACC_MAX:
        return (start + torch.matmul(w, patches).to(torch.int64)).numpy(), 0
    T = TC // C
    acc = np.empty((n, weights.shape[0], P), dtype=np.int64)
    wraps = 0
    for i in range(n):  # one image at a time: the running sums are [T, rows, P]
        cycle_sums = torch.matmul(w.reshape(-1, T, C).permute(1, 0, 2), patches[i].reshape(T, C, P))
        running = start[0] + torch.cumsum(cycle_sums.to(torch.int64), dim=0)  # the register after each cycle
        # The first cycle that leaves the range is where the register wraps (docs/hardware.md §2).
        wraps += int(((running < ACC_MIN) | (running > ACC_MAX)).any(dim=0).sum())
        acc[i] = ((running[-1] - ACC_MIN) % (1 << ACC_BITS) + ACC_MIN).numpy()
    return acc, wraps


# -- the pool lanes -----------------------------------------------------------------------------

def lane_addresses(d: dict, channel_map) -> np.ndarray:
    """[out_ch, P, E]: the activation address lane o reads for window element e of output pixel p.

    Element e = ky·kw + kx of pixel (oy, ox) is at row (oy·sh + ky), column (ox·sw + kx) of the
    channel whose first value is at the lane's input address: the channel map's (reorg, concat), else
    in_base + o·H·W. An add's element 1 comes from the second input, at in2_base + o·H·W.
    """
    out_ch, oh, ow, H, W = d["out_ch"], d["out_h"], d["out_w"], d["in_h"], d["in_w"]
    o = np.arange(out_ch, dtype=np.int64)
    if d["kind"] == "add":
        pixel = np.arange(oh * ow, dtype=np.int64)
        first = d["in_base"] + o[:, None] * H * W + pixel[None, :]
        second = d["in2_base"] + o[:, None] * H * W + pixel[None, :]
        return np.stack([first, second], axis=2)
    base = channel_map if channel_map is not None else d["in_base"] + o * H * W
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    ky, kx = np.meshgrid(np.arange(d["kh"]), np.arange(d["kw"]), indexing="ij")
    rows = oy.reshape(-1, 1) * d["sh"] + ky.reshape(1, -1)
    cols = ox.reshape(-1, 1) * d["sw"] + kx.reshape(1, -1)
    return base[:, None, None] + (rows * W + cols)[None]


def _run_lanes(d, act, bias, multiplier, shift, channel_map, R, counter):
    """Every kind but conv: R lanes (output channels), one window element per lane per cycle,
    row-major; max mode (maxpool, reorg, concat) keeps the largest code, sum mode (avgpool, requant,
    add) adds (x − z_e)·m_e onto the lane's start value (its bias, 0) and the requant unit follows."""
    P = d["out_h"] * d["out_w"]
    E = d["kh"] * d["kw"]
    kind = d["kind"]
    is_max = kind in MAX_KINDS
    addresses = lane_addresses(d, channel_map)                    # [out_ch, P, E]
    if addresses.size and (addresses.min() < 0 or addresses.max() >= act.shape[1]):
        raise AcceleratorError(f"layer {kind}: a lane address runs past the activation memory ({act.shape[1]} bytes)")
    values = act[:, addresses].astype(np.int64)                    # [N, out_ch, P, E] codes
    # Window element e takes the input's signedness, zero point and lane multiplier: an add's element 1
    # those of its second input, every other element those of the (first) input.
    src = [1 if kind == "add" and e == 1 else 0 for e in range(E)]
    signed, zero = (d["in_signed"], d["in2_signed"]), (d["z_in"], d["z_in2"])
    for e in range(E):
        if signed[src[e]]:
            values[..., e] = _signed(values[..., e], MAX_ACT_BITS)
    for g in range(math.ceil(d["out_ch"] / R)):
        counter.tick("compute", P * E)  # COMPUTE: one window element per lane per cycle
        counter.tick("drain", 1)        # DRAIN: the last pixel's write (the others share a compute cycle)
    if is_max:
        _write(act, d["out_base"], values.max(axis=3), 0, P)
        return None
    m = d["lane_multipliers"]
    acc = bias.reshape(1, -1, 1) + sum((values[..., e] - zero[src[e]]) * m[src[e]] for e in range(E))
    _write(act, d["out_base"], _requant(acc, multiplier, shift, d), 0, P)
    return None


# -- shared units -------------------------------------------------------------------------------

def _requant(acc: np.ndarray, m: np.ndarray, s: np.ndarray, d: dict) -> np.ndarray:
    """The requant unit per row: clamp(z_out + ((acc·m + 2^(s−1)) >>> s), lo, hi) in 64-bit signed.

    Deliberately not `bitsmith.integer.arithmetic.requantize`: the cycle model computes what the
    hardware unit does from the decoded param.hex words, independently of the IR's code, so a bug in
    either shows up as a mismatch instead of being shared by the model and the golden reference."""
    a = torch.from_numpy(np.ascontiguousarray(acc))
    m = torch.from_numpy(m.astype(np.int64)).reshape(1, -1, 1)
    s = torch.from_numpy(s.astype(np.int64)).reshape(1, -1, 1)
    rounding = torch.where(s > 0, torch.bitwise_left_shift(torch.ones_like(s), (s - 1).clamp(min=0)), 0)
    scaled = torch.bitwise_right_shift(a * m + rounding, s)  # int64 wraps like a 64-bit adder
    return (scaled + d["z_out"]).clamp(d["clamp_lo"], d["clamp_hi"]).numpy()


def _write(act: np.ndarray, base: int, y: np.ndarray, first_channel: int, P: int) -> None:
    """Codes [N, rows, P] into the activation memory at CHW addresses from `base`, one byte each."""
    rows = y.shape[1]
    start = base + first_channel * P
    act[:, start : start + rows * P] = (y.reshape(y.shape[0], rows * P) & 0xFF).astype(np.uint8)


def _signed(values: np.ndarray, bits: int) -> np.ndarray:
    return np.where(values >= 1 << (bits - 1), values - (1 << bits), values)


def _unpack(words: list[int], elem_bits: int, word_bits: int) -> np.ndarray:
    """Elements of `elem_bits` from bus words, element i of a word at bits [i·b + b − 1 : i·b]."""
    limbs_per_word = word_bits // 64 if word_bits % 64 == 0 else None
    if limbs_per_word:
        mask64 = (1 << 64) - 1
        limbs = np.array([(w >> (64 * k)) & mask64 for w in words for k in range(limbs_per_word)], dtype=np.uint64)
        per_limb = 64 // elem_bits
    else:  # 32-bit multiples that are not 64-bit multiples (e.g. a 32- or 96-bit bus)
        mask32 = (1 << 32) - 1
        limbs = np.array([(w >> (32 * k)) & mask32 for w in words for k in range(word_bits // 32)], dtype=np.uint64)
        per_limb = 32 // elem_bits
    shifts = (np.arange(per_limb, dtype=np.uint64) * np.uint64(elem_bits))
    elements = (limbs[:, None] >> shifts) & np.uint64((1 << elem_bits) - 1)
    return elements.reshape(-1).astype(np.int64)


def mismatches(result: SimResult, expected: dict) -> dict[str, int]:
    """Per layer, how many output values differ from `expected` (engine tensors by name)."""
    counts = {}
    for name, got in result.outputs.items():
        want = expected[name]
        want = want.detach().cpu().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
        if want.shape != got.shape:
            counts[name] = int(got.size)
        else:
            counts[name] = int(np.count_nonzero(want.astype(np.int64) != got))
    return counts
