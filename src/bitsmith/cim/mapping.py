"""Weights onto crossbars: bit slicing, the tile plan, and the conductances of every mapped layer.

A mapped layer's rows are its inputs in tap-major order (kernel row, kernel column, input channel),
cut into sub-arrays of `subarray_rows`; with 128 input channels a sub-array is one kernel tap, as in
the seed tool. Its columns are output channels × weight slices, plus the reference columns: one
per slice holding the offset 2^(n−1) for the offset mapping, or the negative array for the
differential mapping (docs/cim.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bitsmith.cim.config import CIMConfig
from bitsmith.errors import ConfigError, GraphError
from bitsmith.integer.graph import IntegerGraph, Node

MAPPABLE_OPS = ("Conv2d", "Linear")


def slice_unsigned(values: torch.Tensor, bits: int, cell_bits: int) -> torch.Tensor:
    """Unsigned integers in [0, 2^bits − 1] → their `bits / cell_bits` cell values, LSB first:
    shape [S, *values.shape]. 7 with 4 bits and 1-bit cells → (1, 1, 1, 0); 8 → (0, 0, 0, 1)."""
    if bits % cell_bits:
        raise ConfigError(f"cell_bits {cell_bits} does not divide {bits} bits")
    values = values.to(torch.int64)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 2**bits - 1):
        raise GraphError(f"values outside [0, {2**bits - 1}] cannot be sliced as {bits}-bit unsigned integers")
    mask = 2**cell_bits - 1
    return torch.stack([(values >> (cell_bits * s)) & mask for s in range(bits // cell_bits)])


def decompose(codes: torch.Tensor, weight_bits: int, cell_bits: int, mapping: str = "offset",
              odd: bool = False) -> torch.Tensor:
    """Signed weight codes in [−2^(n−1), 2^(n−1) − 1] → unsigned cell values, LSB first.

    "offset": the slices of W + 2^(n−1), shape [S, *codes.shape] (so the signed 0 is 8 = (0, 0, 0, 1)
    for n = 4 and 1-bit cells, −1 is 7 = (1, 1, 1, 0)). "differential": the slices of max(W, 0) and
    of max(−W, 0), shape [2, S, *codes.shape]; both fit n unsigned bits (2^(n−1) does).
    `odd`: every code is odd, w = 2W − (2^m − 1) with m = n − 1 (DoReFa's levels, `odd_codes`):
    "offset" slices W = (w + 2^m − 1) / 2 into m bits, "differential" max(±w, 0) into m bits."""
    codes = codes.to(torch.int64)
    half = 2 ** (weight_bits - 1)
    if codes.numel() and (int(codes.min()) < -half or int(codes.max()) > half - 1):
        raise GraphError(f"weight codes outside the signed {weight_bits}-bit range [{-half}, {half - 1}]")
    if odd and not odd_codes(codes):
        raise GraphError("odd=True needs every weight code odd")
    bits = weight_bits - 1 if odd else weight_bits
    if mapping == "offset":
        return slice_unsigned((codes + 2**bits - 1) // 2 if odd else codes + half, bits, cell_bits)
    if mapping == "differential":
        return torch.stack([slice_unsigned(codes.clamp(min=0), bits, cell_bits),
                            slice_unsigned((-codes).clamp(min=0), bits, cell_bits)])
    raise ConfigError(f"mapping must be 'offset' or 'differential', got {mapping!r}")


def odd_codes(codes: torch.Tensor) -> bool:
    """Every code odd (DoReFa's 2^m levels (2k − (2^m − 1)) stored as (m + 1)-bit codes): such a
    layer needs only m bits per weight on the crossbar."""
    return bool(codes.numel()) and bool((codes.remainder(2) == 1).all())


@dataclass(frozen=True)
class TilePlan:
    """How one layer sits on square `subarray_rows` crossbars (the counts a cost model needs). A
    grouped convolution puts each group on crossbars of its own: rows, columns and tiles are per
    group, crossbars and cells count every group."""

    layer: str
    rows: int  # input channels (of one group) × kernel taps
    slices: int  # cells per weight
    weight_columns: int  # output channels (of one group) × slices (× 2 for the differential mapping)
    reference_columns: int  # the offset mapping's reference columns (one per slice)
    row_tiles: int  # sub-arrays along the rows (of one group)
    column_tiles: int
    cells: int  # programmed cells, reference included, all groups
    groups: int = 1

    @property
    def crossbars(self) -> int:
        return self.groups * self.row_tiles * self.column_tiles


def tile_plan(name: str, rows: int, outputs: int, weight_bits: int, config: CIMConfig, groups: int = 1) -> TilePlan:
    """The plan of a layer of `groups` groups, each of `rows` rows and `outputs` output channels."""
    slices = weight_bits // config.cell_bits
    arrays = 2 if config.mapping == "differential" else 1
    weight_columns = outputs * slices * arrays
    reference_columns = slices if config.mapping == "offset" else 0
    columns = weight_columns + reference_columns
    size = config.subarray_rows
    return TilePlan(name, rows, slices, weight_columns, reference_columns, math.ceil(rows / size),
                    math.ceil(columns / size), groups * rows * columns, groups)


@dataclass
class MappedLayer:
    """A Conv2d / Linear on crossbars. `conductance` is [K, R, S, O + O_ref] in `unit`s: K sub-arrays
    of R rows (the last one zero-padded), S slices, O weight columns then the reference columns (1
    for the offset mapping, O for the differential one). A grouped conv's groups follow each other
    along K (K = groups × sub-arrays per group), each with its own O columns. `unit` is 1 level, or half a level for a
    layer of odd codes (its reference cells hold (2^c − 1)/2, docs/cim.md), so that every ideal
    column sum is an integer. `active_rows` [K] counts the real rows of each sub-array (the
    full-scale ADC range); `column_bound` bounds |Σ rows| of any column (or column − reference)
    for one input bit; `weight_bits` are the stored bits per weight (m = n − 1 for odd codes)."""

    node: Node
    plan: TilePlan
    weight_bits: int
    conductance: torch.Tensor
    active_rows: torch.Tensor
    weight_sum: torch.Tensor  # Σ of the signed codes per output channel (the input-offset correction)
    outputs: int  # output channels of one group (all of them unless the conv is grouped)
    programmed: tuple  # the CIMConfig fields the conductances depend on (programming_key)
    unit: int = 1
    column_bound: float = 0.0
    adc_ranges: torch.Tensor | None = None  # [input bits, parts, K, S, 2] from `calibrate`
    calibrated_with: tuple | None = None  # the ADC settings of that calibration (calibration_key)

    @property
    def full_scale(self) -> torch.Tensor:
        """The largest ideal column sum of each sub-array, [K], in units."""
        return self.active_rows * self.unit * (2 ** (self.weight_bits // self.plan.slices) - 1)


def mapped_nodes(graph: IntegerGraph, config: CIMConfig) -> list[Node]:
    """The Conv2d / Linear nodes that run on crossbars under `config.digital`."""
    weighted = [n for n in graph.nodes if n.op in MAPPABLE_OPS]
    if config.digital == "none":
        return weighted
    if config.digital == "seed":
        convs = [n for n in weighted if n.op == "Conv2d"]
        return convs[1:]
    ops = {n.name: n.op for n in graph.nodes}
    unknown = [d for d in config.digital if d not in ops]
    if unknown:
        raise ConfigError(f"CIMConfig.digital names {unknown}, which are not nodes of the graph")
    other = [f"{d!r} ({ops[d]})" for d in config.digital if ops[d] not in MAPPABLE_OPS]
    if other:
        raise ConfigError(f"CIMConfig.digital names {', '.join(other)}: only {' and '.join(MAPPABLE_OPS)} layers run "
                          "on crossbars, every other op is digital already")
    return [n for n in weighted if n.name not in config.digital]


def _stored_bits(node: Node, odd: bool, config: CIMConfig) -> int:
    bits = node.attrs["weight_bits"]
    stored = bits - 1 if odd else bits
    if stored % config.cell_bits:
        why = f" (odd codes of {bits} bits are stored in {stored})" if odd else ""
        raise ConfigError(f"layer {node.name!r}: cell_bits {config.cell_bits} does not divide its {stored} "
                          f"weight bits{why}")
    return stored


def weight_rows(graph: IntegerGraph, node: Node) -> torch.Tensor:
    """The signed weight codes as [groups, rows, O / groups], rows in tap-major order (kh, kw, c_in
    of the group)."""
    w = graph.weight_codes(node).to(torch.int64)
    if node.op == "Linear":
        return w.t().unsqueeze(0)
    groups = node.attrs.get("groups", 1)
    o, c, kh, kw = w.shape
    w = w.reshape(groups, o // groups, c, kh, kw).permute(0, 3, 4, 2, 1)  # [G, kh, kw, C/G, O/G]
    return w.reshape(groups, kh * kw * c, o // groups)


def map_layer(graph: IntegerGraph, node: Node, config: CIMConfig, index: int) -> MappedLayer:
    w = weight_rows(graph, node)  # [G, rows, O]
    odd = odd_codes(w) and node.attrs["weight_bits"] > 1
    bits = _stored_bits(node, odd, config)
    groups, rows, outputs = w.shape
    plan = tile_plan(node.name, rows, outputs, bits, config, groups)
    levels = decompose(w, node.attrs["weight_bits"], config.cell_bits, config.mapping, odd).to(torch.float32)
    if config.mapping == "offset":  # [S, G, rows, O + 1]
        # the encoding of a signed 0: 2^(n−1), or for odd codes (2^m − 1)/2, i.e. (2^c − 1)/2 in every cell
        zero = (slice_unsigned(torch.tensor([2 ** (bits - 1)]), bits, config.cell_bits).to(torch.float32) if not odd
                else torch.full((plan.slices, 1), (2**config.cell_bits - 1) / 2))
        levels = torch.cat([levels, zero.reshape(-1, 1, 1, 1).expand(-1, groups, rows, 1)], dim=3)
    else:  # [S, G, rows, 2·O]
        levels = torch.cat([levels[0], levels[1]], dim=3)
    size = config.subarray_rows
    k = plan.row_tiles
    levels = torch.nn.functional.pad(levels, (0, 0, 0, k * size - rows))  # zero rows: no input reaches them
    levels = levels.reshape(levels.shape[0], groups * k, size, levels.shape[-1]).permute(1, 2, 0, 3)  # [G·K, R, S, cols]
    active = torch.tensor([min(size, rows - i * size) for i in range(k)] * groups)
    unit = 2 if odd and config.mapping == "offset" else 1
    conductance = program(levels, active, config, index, unit)
    bound = float(conductance.abs().sum(dim=1).max()) if conductance.numel() else 0.0
    return MappedLayer(node, plan, bits, conductance, active, w.sum(1).reshape(-1), outputs, programming_key(config),
                       unit, bound)


#: The CIMConfig fields that decide a layer's conductances (the ADC and read noise act at run time).
PROGRAMMING_FIELDS = ("cell_bits", "mapping", "subarray_rows", "digital", "on_off_ratio", "variation",
                      "stuck_at_0", "stuck_at_1", "drift_nu", "drift_time", "seed")


def programming_key(config: CIMConfig) -> tuple:
    return tuple(getattr(config, f) for f in PROGRAMMING_FIELDS)


def program(levels: torch.Tensor, active: torch.Tensor, config: CIMConfig, index: int, unit: int = 1) -> torch.Tensor:
    """Cell levels → conductances in `unit`s (levels × unit), with the device non-idealities
    (docs/cim.md): finite on/off ratio G = (1 − 1/r)·b + (2^c − 1)/r, stuck-at cells at the lowest /
    highest conductance, device-to-device variation G·(1 + N(0, σ)) (a conductance is never
    negative), drift G·(t/t0)^(−ν). Drawn from a generator seeded by (seed, layer index), so a
    layer's devices do not depend on other layers. Non-ideal conductances are then held on a grid
    of 2^−f units fine enough that every sum of a sub-array's rows is exact in float32 (`on_grid`)."""
    g = levels * unit
    if config.ideal_devices:
        return g
    top = 2**config.cell_bits - 1
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
    g = levels
    g_min = top / config.on_off_ratio if config.on_off_ratio is not None else 0.0
    if config.on_off_ratio is not None:
        g = (1 - 1 / config.on_off_ratio) * g + g_min
    if config.stuck_at_0 or config.stuck_at_1:
        u = torch.rand(g.shape, generator=gen)
        g = torch.where(u < config.stuck_at_0, torch.full_like(g, g_min), g)
        g = torch.where((u >= config.stuck_at_0) & (u < config.stuck_at_0 + config.stuck_at_1),
                        torch.full_like(g, float(top)), g)
    if config.variation:
        g = (g * (1 + config.variation * torch.randn(g.shape, generator=gen))).clamp_(min=0)
    if config.drift_nu:
        g = g * config.drift_time ** (-config.drift_nu)
    # padded rows are absent cells: no conductance at all
    present = (torch.arange(g.shape[1]).reshape(1, -1) < active.reshape(-1, 1)).to(g.dtype)
    return on_grid(g * unit * present.reshape(g.shape[0], g.shape[1], 1, 1))


def on_grid(g: torch.Tensor) -> torch.Tensor:
    """`g` [K, R, S, C] rounded to multiples of 2^−f, f the largest with R·max|g|·2^f ≤ 2^23: then
    every partial sum of a column over the rows — and of a column minus another — is an integer
    multiple of 2^−f below 2^24 of them, exact in float32 whatever the order of the additions. So
    the vectorised simulator and the reference algorithm (benchmarks/cim.py) get the very same
    sums, and the result does not depend on how a BLAS library blocks its matmul. (A grid of 2^−16
    of a level for 128 rows of 1-bit cells: far below any device's precision.)"""
    f = grid_bits(g)
    return g if f is None else torch.round(g * 2.0**f) / 2.0**f


def grid_bits(g: torch.Tensor) -> int | None:
    """The f of `on_grid` for conductances `g` [K, R, S, C] (None when all are zero)."""
    largest = float(g.abs().max()) if g.numel() else 0.0
    return None if largest == 0 else math.floor(math.log2(2**23 / (g.shape[1] * largest)))


def map_graph(graph: IntegerGraph, config: CIMConfig) -> dict[str, MappedLayer]:
    """Every mapped layer of `graph` by node name, in graph order. Refuses (naming the layer) a
    layer whose stored weight bits `config.cell_bits` does not divide."""
    chosen = {n.name for n in mapped_nodes(graph, config)}
    return {node.name: map_layer(graph, node, config, index)
            for index, node in enumerate(graph.nodes) if node.name in chosen}

