"""The analytic cycle counts of docs/hardware.md §5 (controller FSM).

    cycles = Σ_layers (param + codebook + input + weights + Σ_groups (compute + drain) + 1) + 1

The weights do not wait for the array: a loader streams every conv layer's term blocks, in program
order, one bus word a cycle, into the weight ring (D words of one term block each) whenever it has
a free word, from the image's first cycle on (it pauses during INPUT, which holds the bus). A
channel group's T words are freed when its last drain cycle ends. So the loader runs ahead through
pools, parameter loads and compute-bound layers and fills the ring with the weights of the layers
to come; the array waits ("weights") only when a group's last block is not in yet:

    start_g = max(t_g, loaded(last block of g)),   weights = Σ_g (start_g − t_g)

with t_g the cycle the FSM reaches group g. `ring_waits` runs this recurrence exactly.

The drain (requant + write) of a pixel runs in the first compute cycle of the next pixel, which
reads the accumulators only after they have been written out; only each group's last pixel drains
in a cycle of its own: drain_g = 1 (with zero skipping, also every pixel after the first whose
compute cycles were all skipped: it has no cycle its predecessor's drain could share).

The cycle-level model (`bitsmith.accel.simulate`) counts the same cycles by executing the
program; the generated Verilog must take exactly as many. The cost model and the design-space
sweep read `program_cycles`.

Zero skipping (`AccelConfig.zero_skip`, docs/hardware.md §5 "Zero skipping") changes only the
compute phase of conv layers. The R rows of a channel group run in lockstep, C terms per row per
cycle, so a cycle (pixel p, term block j) can be skipped only when *all* R·C products of that cycle
have a zero operand. "weights": when all R·C weights of block j of the group are 0 — exact from the
codes: compute = P · (live blocks of the group). "both": also when every non-zero weight of the
block meets an activation equal to its zero point (or a padding position) — data dependent:
`simulate` counts it exactly per image; here it is estimated from the layer's input activation
density ρ (fraction of codes ≠ zero point, e.g. from `bitsmith.integer.sparsity.activation_sparsity`)
assuming independent zeros: block j with m_j live terms is skipped with probability (1 − ρ)^m_j.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from bitsmith.errors import ConfigError

from .compiler import (block_words, channel_groups, check_weight_ring, group_channels, pixel_passes, ring_depth,
                       term_blocks)
from .config import CODEBOOK_SIZE, DESCRIPTOR_WORDS, MAX_ACT_BITS, AccelConfig
from .program import Layer, Program

PHASES = ("param", "codebook", "input", "weights", "compute", "drain", "next")
FINISH_CYCLES = 1
CODEBOOK_CYCLES = CODEBOOK_SIZE   # one codebook value per cycle
NEXT_LAYER_CYCLES = 1


def param_cycles(layer: Layer) -> int:
    """Descriptor, then per channel (bias, multiplier, shift) for layers with a requant unit and the
    input address for layers with a channel map (grouped conv, reorg, concat)."""
    return DESCRIPTOR_WORDS + layer.table_words * layer.out_ch


def input_cycles(layer: Layer, config: AccelConfig) -> int:
    """The image from external memory into the activation memory (at the first layer's input
    address): one code per byte, bus_bits per cycle."""
    return math.ceil(layer.in_elems * MAX_ACT_BITS / config.bus_bits)


def group_compute_cycles(layer: Layer, config: AccelConfig) -> int:
    """(pixel passes)·T (conv: P·T, ⌈P/2⌉·T in packing mode 4) or P·(window elements) on the pool
    lanes (pools kh·kw, add 2, reorg / concat / requant 1) for one channel group, without zero skipping."""
    return pixel_passes(layer) * term_blocks(layer, config)


def weight_blocks(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[G, T, R, C] bool: which weight-buffer entries of each channel group hold a non-zero weight
    (a codebook layer's looked-up values; padded rows and terms are zero); R here is the group's
    channels, R·(channel lanes)."""
    R, C, T, G = group_channels(layer, config), config.simd, term_blocks(layer, config), channel_groups(layer, config)
    nonzero = np.zeros((G * R, T * C), dtype=bool)
    nonzero[: layer.out_ch, : layer.terms] = layer.weight_codes != 0
    return nonzero.reshape(G, R, T, C).transpose(0, 2, 1, 3)


def live_blocks(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[G, T] bool: term block j of channel group g has a non-zero weight in some row (it takes a
    compute cycle per pixel under zero_skip "weights")."""
    return weight_blocks(layer, config).any(axis=(2, 3))


def live_terms(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[G, T] int: m, the activation values block j of group g multiplies by a non-zero weight. Rows
    that read the same input (a dense conv: all of them) share a column's value, so a column counts
    once per distinct row input (a grouped conv's rows of different convolution groups read
    different values)."""
    nonzero = weight_blocks(layer, config)            # [G, T, R, C]
    R, G = group_channels(layer, config), channel_groups(layer, config)
    inputs = np.full(G * R, -1, dtype=np.int64)        # padded rows: no input (their weights are 0)
    inputs[: layer.out_ch] = layer.channel_map if layer.channel_map is not None else 0
    inputs = inputs.reshape(G, R)
    m = np.zeros(nonzero.shape[:2], dtype=np.int64)
    for g in range(G):
        for source in np.unique(inputs[g][inputs[g] >= 0]):
            m[g] += nonzero[g][:, inputs[g] == source].any(axis=1).sum(axis=1)
    return m


def group_computes(layer: Layer, config: AccelConfig, activation_density: float | None = None) -> np.ndarray:
    """[G] float: the compute phase of each channel group for one image under `config.zero_skip`
    (module docstring). "both" needs the input's activation density ρ for its estimate
    P·Σ_j (1 − (1 − ρ)^m_gj); without one (None) activations count as dense (ρ = 1), which is the
    "weights" count, an upper bound."""
    groups = channel_groups(layer, config)
    if layer.kind != "conv" or config.zero_skip == "none":
        return np.full(groups, float(group_compute_cycles(layer, config)))
    passes = pixel_passes(layer)
    if config.zero_skip == "weights" or activation_density is None:
        return passes * live_blocks(layer, config).sum(axis=1).astype(np.float64)
    if not 0.0 <= activation_density <= 1.0:
        raise ConfigError(f"layer {layer.name}: activation density {activation_density!r} outside [0, 1]")
    m = live_terms(layer, config) * layer.pixel_lanes   # a pass of two pixels is skipped only if both are
    return passes * np.where(m > 0, 1.0 - (1.0 - activation_density) ** m, 0.0).sum(axis=1)


def compute_cycles(layer: Layer, config: AccelConfig, activation_density: float | None = None) -> int:
    """The compute phase of one layer and image, groups summed (`group_computes`), rounded to the
    nearest cycle (exact but for the "both" estimate)."""
    return round(float(group_computes(layer, config, activation_density).sum()))


def group_drains(layer: Layer, config: AccelConfig, activation_density: float | None = None) -> np.ndarray:
    """[G] float: the drain cycles of each channel group that no compute cycle hides (module
    docstring): 1 + #{pixels q ≥ 1 with no compute cycle}. Without zero skipping every pixel computes
    (T ≥ 1), so 1; "weights": P for a group with no live block; the "both" estimate adds
    (P − 1)·Π_j (1 − ρ)^m_gj, the chance that a pixel skips every block."""
    groups = channel_groups(layer, config)
    if layer.kind != "conv" or config.zero_skip == "none":
        return np.ones(groups)
    passes = pixel_passes(layer)
    if config.zero_skip == "weights" or activation_density is None:
        return np.where(live_blocks(layer, config).any(axis=1), 1.0, float(passes))
    m = live_terms(layer, config) * layer.pixel_lanes
    all_skipped = np.where(m > 0, (1.0 - activation_density) ** m, 1.0).prod(axis=1)
    return 1.0 + (passes - 1) * all_skipped


def ring_waits(program: Program, busy: list) -> list:
    """Per layer, the cycles the array waits for weights (module docstring), from `busy[i]`: for a
    conv layer its groups' compute + drain cycles, [G] (or [G, N] when they differ per image), for
    any other layer its total compute + drain (a number, or [N]). Waits are ints, or [N] arrays."""
    check_weight_ring(program)   # a hand-built program may not have been through the compiler
    return _ring_waits(program.layers, program.config, ring_depth(program), busy)


def _ring_waits(layers: list[Layer], config: AccelConfig, depth: int, busy: list, first_reads_input: bool = True) -> list:
    first = layers[0]
    pause_start = param_cycles(first) + (CODEBOOK_CYCLES if first.is_codebook else 0)
    pause_end = pause_start + (input_cycles(first, config) if first_reads_input else 0)
    t = np.int64(0)        # the FSM's cycle (0: the image's first PARAM cycle)
    loader = np.int64(0)   # the first cycle the loader is free for the next block
    freed: list = []       # per loaded block: the first cycle its ring word may be reused
    waits = []
    for i, layer in enumerate(layers):
        t = t + param_cycles(layer) + (CODEBOOK_CYCLES if layer.is_codebook else 0)
        t = t + (pause_end - pause_start if i == 0 else 0)
        if layer.kind != "conv":
            waits.append(0)
            t = t + np.sum(busy[i], axis=0) + NEXT_LAYER_CYCLES
            continue
        blocks, words = term_blocks(layer, config), block_words(layer, config)
        wait = 0
        for group_busy in np.asarray(busy[i]):
            k = len(freed)     # the group's first block
            loader = _load_blocks(loader, [freed[j - depth] if j >= depth else None for j in range(k, k + blocks)],
                                  words, pause_start, pause_end)
            start = np.maximum(t, loader)
            wait = wait + (start - t)
            t = start + group_busy
            freed.extend([t] * blocks)
        waits.append(wait)
        t = t + NEXT_LAYER_CYCLES
    return [w if np.ndim(w) else int(w) for w in waits]


def _load_blocks(loader, free_at: list, words: int, pause_start: int, pause_end: int):
    """The loader's next free cycle after loading blocks that may each start no earlier than
    `free_at[j]` (None: at once), `words` cycles each, none during [pause_start, pause_end)."""
    if np.all(loader >= pause_end):   # past INPUT: end = max(loader + n·w, max_j free_j + (n − j)·w)
        end = loader + len(free_at) * words
        for j, free in enumerate(free_at):
            if free is not None:
                end = np.maximum(end, free + (len(free_at) - j) * words)
        return end
    for free in free_at:
        start = loader if free is None else np.maximum(loader, free)
        end = start + words
        end = np.where(start >= pause_end, end,
                       np.where(start >= pause_start, pause_end + words,
                                np.where(end > pause_start, end + (pause_end - pause_start), end)))
        loader = end
    return loader


def layer_cycles(layer: Layer, config: AccelConfig, first: bool,
                 activation_density: float | None = None) -> dict[str, int]:
    """Cycles of each §5 phase for one layer and one image (groups summed), the layer run on its
    own: the loader starts with the layer's first cycle and an empty ring, so no earlier layer hides
    its first loads (in a program they usually are: `program_cycles`)."""
    computes = group_computes(layer, config, activation_density)
    busy = computes + group_drains(layer, config, activation_density)
    alone = Program(config=config, layers=[layer], input_name="")
    check_weight_ring(alone)
    wait = _ring_waits([layer], config, ring_depth(alone), [busy], first_reads_input=first)[0]
    return _phases(layer, config, first, computes, busy, wait)


def _phases(layer: Layer, config: AccelConfig, first: bool, computes: np.ndarray, busy: np.ndarray,
            wait) -> dict[str, int]:
    """The §5 phases of one layer from its groups' compute and compute + drain cycles and its wait."""
    return {
        "param": param_cycles(layer),
        "codebook": CODEBOOK_CYCLES if layer.is_codebook else 0,
        "input": input_cycles(layer, config) if first else 0,
        "weights": round(float(wait)),
        "compute": round(float(computes.sum())),
        "drain": round(float(busy.sum() - computes.sum())),
        "next": NEXT_LAYER_CYCLES,
    }


def program_cycles(program: Program, activation_density: Mapping[str, float] | None = None) -> dict:
    """Per-layer rows, phase totals, `total` (finish included), network `utilisation` and `fps`.

    Row utilisation = useful MACs / (R·C·packing·compute cycles), the share of the packed
    multipliers' product slots that do useful work (None for pools); network `utilisation` = useful
    MACs / (R·C·total cycles), MACs per PE and cycle (above 1 is possible with packing); `share` = the
    layer's fraction of the total cycles. `activation_density` ({layer name: ρ}, see
    `layer_densities`) feeds the estimate of zero_skip "both"; `zero_skip` in the result says which
    count it is: "none", "weights" (exact), "both (estimate)" or "both (no activation densities:
    the weights count)".
    """
    config = program.config
    lanes = config.pe * config.simd
    density = dict(activation_density or {})
    unknown = sorted(set(density) - {layer.name for layer in program.layers})
    if unknown:
        raise ConfigError(f"activation densities for {unknown[0]!r}, which is not a layer of the program")
    rows = []
    computes = [group_computes(layer, config, density.get(layer.name)) for layer in program.layers]
    busy = [c + group_drains(layer, config, density.get(layer.name)) for c, layer in zip(computes, program.layers)]
    waits = ring_waits(program, busy)
    for i, layer in enumerate(program.layers):
        phases = _phases(layer, config, i == 0, computes[i], busy[i], waits[i])
        cycles = sum(phases.values())
        rows.append({
            "index": layer.index, "name": layer.name, "kind": layer.kind,
            "groups": channel_groups(layer, config), "term_blocks": term_blocks(layer, config),
            **phases, "cycles": cycles, "macs": layer.macs,
            "packing": layer.packing if layer.kind == "conv" else None,
            # product slots: R·C multipliers × the products each packs (docs/hardware.md §5)
            "utilisation": (layer.macs / (lanes * layer.packing * phases["compute"])
                            if layer.kind == "conv" and phases["compute"] else None),
        })
    total = sum(r["cycles"] for r in rows) + FINISH_CYCLES
    for r in rows:
        r["share"] = r["cycles"] / total
    macs = sum(r["macs"] for r in rows)
    skip = config.zero_skip
    if skip == "both":
        convs = [layer.name for layer in program.layers if layer.kind == "conv"]
        skip = ("both (estimate)" if all(n in density for n in convs)
                else "both (no activation densities: the weights count)" if not density
                else "both (estimate where a density is given, else the weights count)")
    return {
        "zero_skip": skip,
        "layers": rows,
        "phases": {p: sum(r[p] for r in rows) for p in PHASES} | {"finish": FINISH_CYCLES},
        "finish": FINISH_CYCLES,
        "total": total,
        "macs": macs,
        "utilisation": macs / (lanes * total),
        "fps": config.clock_mhz * 1e6 / total,
        "clock_mhz": config.clock_mhz,
    }


def layer_densities(graph, program: Program, rows: list[dict]) -> dict[str, float]:
    """{program layer name: ρ} from `bitsmith.integer.sparsity.activation_sparsity` rows (one per
    Conv2d / Linear, named by its accumulator tensor): ρ = 1 − zero_fraction of the layer's input."""
    by_acc = {row["layer"]: 1.0 - float(row["zero_fraction"]) for row in rows}
    names = {layer.name for layer in program.layers if layer.kind == "conv"}
    out = {}
    for node in graph.nodes:
        acc = node.inputs[0] if node.op == "Requant" else node.output
        if acc in by_acc and node.output in names:
            out[node.output] = by_acc[acc]
    return out
