"""Zero skipping in the cycle model (docs/hardware.md §5 "Zero skipping"): fewer compute cycles,
never a different value."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.program import Layer, Program
from bitsmith.accel.simulate import simulate
from bitsmith.accel.sweep import evaluate_design
from bitsmith.accel.timing import PHASES, layer_densities, live_blocks, program_cycles
from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from bitsmith.integer.sparsity import activation_sparsity
from bitsmith.rtl import generate as rtl_generate
from bitsmith.verify import verification_inputs, verify
from tests.helpers import golden, invoke


#: LeNet-5 W8A8 at 8×8 on a 256-bit bus: the weight loads hide under the compute (7,443 cycles, of which
#: 6,541 compute and drain), so a skipped compute cycle is a cycle saved. On the default 64-bit bus the
#: loader needs about 7,800 of the 8,494 cycles, so skipped compute mostly turns into waiting for
#: weights (test_on_a_bus_bound_design_skipping_saves_little).
COMPUTE_BOUND = AccelConfig(bus_bits=256)

def _tiny(zero_skip: str) -> Program:
    """One raw-output conv on R×C = 2×4: 2 input channels of 3×3, a 2×2 kernel, 3 output channels.
    K = 2·2·2 = 8 terms (t = ci·4 + ky·2 + kx), T = 2 blocks of C = 4, G = ⌈3/2⌉ = 2 groups, P = 2·2."""
    weights = np.zeros((3, 8), dtype=np.int64)
    weights[0, 0] = 1    # row 0 (group 0): term 0 = (ci 0, ky 0, kx 0), block 0
    weights[2, 6] = 2    # row 2 (group 1): term 6 = (ci 1, ky 1, kx 0), block 1; row 1 is all zero
    layer = Layer(index=0, name="t", kind="conv", in_ch=2, in_h=3, in_w=3, out_ch=3, out_h=2, out_w=2, kh=2, kw=2,
                  in_signed=True, out_bits=32, out_signed=True, raw_output=True, weight_bits=8, weights=weights,
                  bias=np.zeros(3, dtype=np.int64), multiplier=np.ones(3, dtype=np.int64),
                  shift=np.zeros(3, dtype=np.int64), clamp_lo=-2**31, clamp_hi=2**31 - 1)
    config = AccelConfig(pe=2, simd=4, bus_bits=64, zero_skip=zero_skip)
    return Program(config, [layer], "codes", metadata={"tensor_shapes": {"t": [3, 2, 2]}})


def _tiny_codes() -> np.ndarray:
    image = np.zeros((2, 3, 3), dtype=np.int64)
    image[0] = [[5, 0, 0], [0, 7, 0], [0, 0, 0]]
    image[1] = [[0, 0, 0], [3, 0, 0], [0, 0, 4]]
    return np.stack([image, np.zeros_like(image)])   # image 1 is all zero (z_in = 0)


def test_a_hand_computed_layer():
    # Fixed phases: param 22 + 3·3 = 31; input ⌈18 bytes·8 / 64⌉ = 3; weights 0 (four term blocks of
    # 2·4 bytes, one bus word each, load in cycles 0-3, during PARAM); next 1; finish 1 → 36 without
    # compute and drain. A pixel drains during the next pixel's first
    # compute cycle; the group's last pixel, and a pixel q ≥ 1 with no compute cycle, on its own.
    # none:    compute = G·P·T = 2·4·2 = 16, drain 1 + 1                          → 54
    # weights: group 0 has a non-zero only in block 0, group 1 only in block 1:
    #          compute = P·(1 + 1) = 8, drain 1 + 1                               → 46
    # both, image 0: group 0 (w at ci 0, (0,0)) reads x0[oy][ox] = 5, 0, 0, 7 at the 4 pixels → 2 cycles
    #          (pixels 1, 2 compute nothing: drain 1 + 2);
    #          group 1 (w at ci 1, (1,0)) reads x1[oy+1][ox] = 3, 0, 0, 0            → 1 cycle (drain 1 + 3);
    #          compute = 3, drain 7                                               → 46
    # both, image 1 (all zero): compute = 0, drain 4 + 4                          → 44
    codes = _tiny_codes()
    want = {"none": [54, 54], "weights": [46, 46], "both": [46, 44]}
    outputs = None
    for mode, cycles in want.items():
        program = _tiny(mode)
        result = simulate(program, codes)
        assert result.cycles["images"] == cycles, mode
        assert result.total_cycles == sum(cycles) / 2
        assert result.cycles["zero_skip"] == mode
        if mode != "both":
            assert program_cycles(program)["total"] == cycles[0]
        if outputs is None:
            outputs = result.outputs["t"]
        np.testing.assert_array_equal(result.outputs["t"], outputs)   # skipping never changes a value
    np.testing.assert_array_equal(outputs[0], [[[5, 0], [0, 7]], [[0, 0], [0, 0]], [[6, 0], [0, 0]]])
    both = simulate(_tiny("both"), codes).cycles["layers"][0]
    assert both["compute_images"] == [3, 0] and both["compute"] == 1.5
    assert both["drain_images"] == [7, 8] and both["drain"] == 7.5
    assert sum(both[p] for p in PHASES) + 1 == 45


def test_the_estimate_of_both_on_the_hand_computed_layer():
    # m = live terms per block: group 0 block 0 → 1, group 1 block 1 → 1, the others 0.
    # compute ≈ P·Σ (1 − (1 − ρ)^m) = 4·(ρ + ρ) = 8ρ; ρ = 0.25 → 2 cycles, ρ = 1 → the weights count 8.
    program = _tiny("both")
    assert live_blocks(program.layers[0], program.config).tolist() == [[True, False], [False, True]]
    assert program_cycles(program, {"t": 0.25})["layers"][0]["compute"] == 2
    assert program_cycles(program, {"t": 1.0})["layers"][0]["compute"] == 8
    # drain ≈ Σ_g (1 + (P − 1)·Π_j (1 − ρ)^m_gj): a pixel skips its one live block with probability
    # 1 − ρ and then drains on its own; ρ = 0.25 → 2·(1 + 3·0.75) = 6.5 → 6 (round half to even), ρ = 1 → 2.
    assert program_cycles(program, {"t": 0.25})["layers"][0]["drain"] == 6
    assert program_cycles(program, {"t": 1.0})["layers"][0]["drain"] == 2
    assert program_cycles(program, {"t": 0.5})["layers"][0]["drain"] == round(2 * (1 + 3 * 0.5))
    counted = program_cycles(program)
    assert counted["layers"][0]["compute"] == 8 and counted["zero_skip"].startswith("both (no activation densities")
    with pytest.raises(ConfigError, match="not a layer of the program"):
        program_cycles(program, {"nope": 0.5})
    with pytest.raises(ConfigError, match=r"outside \[0, 1\]"):
        program_cycles(program, {"t": 1.5})


def test_zero_skip_must_be_a_known_mode():
    with pytest.raises(ConfigError, match="zero_skip must be one of none, weights, both"):
        AccelConfig(zero_skip="activations")
    assert AccelConfig.from_json(AccelConfig(zero_skip="both").to_json()).zero_skip == "both"


def _prune(graph, fraction: float, by_input_channel: bool, seed: int = 0):
    """Zero about `fraction` of every Conv2d's weight codes: at random, or whole input channels (so
    whole term blocks become zero)."""
    gen = torch.Generator().manual_seed(seed)
    for node in graph.nodes:
        if node.op != "Conv2d":
            continue
        w = graph.params[node.params["weight"]]
        if by_input_channel:
            keep = torch.zeros(w.shape, dtype=torch.bool)
            keep[:, : max(1, round(w.shape[1] * (1 - fraction)))] = True
        else:
            keep = torch.rand(w.shape, generator=gen) >= fraction
        graph.params[node.params["weight"]] = torch.where(keep, w, torch.zeros_like(w))
    graph.validate()
    return graph


@pytest.fixture(scope="module")
def images():
    inputs = verification_inputs(golden("lenet5_w8a8"), 10, "fashion-mnist")
    return inputs.x[: inputs.real]


@pytest.mark.parametrize("by_input_channel", [False, True])
def test_pruned_lenet_outputs_equal_the_engine_and_cycles_fall(images, by_input_channel):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel)
    convs = [n for n in g.nodes if n.op == "Conv2d"]
    density = sum(int((g.params[n.params["weight"]] != 0).sum()) for n in convs) / \
        sum(g.params[n.params["weight"]].numel() for n in convs)
    assert density < 0.3
    outputs = engine.run(g, images, return_all=True)
    totals = {}
    for mode in ("none", "weights", "both"):
        program = compile_graph(g, dataclasses.replace(COMPUTE_BOUND, zero_skip=mode))
        result = simulate(program, outputs[program.input_name])
        for layer in program.layers:
            np.testing.assert_array_equal(result.outputs[layer.name], outputs[layer.name].numpy(),
                                          err_msg=f"{mode} {layer.name}")
        if mode != "both":   # exact from the weights: the formula and the simulation agree phase by phase
            formula = program_cycles(program)
            for counted, row in zip(result.cycles["layers"], formula["layers"]):
                assert {p: counted[p] for p in PHASES} == {p: row[p] for p in PHASES}
            assert result.total_cycles == formula["total"]
        totals[mode] = result.cycles["images"]
    assert totals["none"] == [7443] * len(images)   # docs/hardware.md's figure for LeNet-5 W8A8 on 256 bits
    assert all(b <= w <= n for n, w, b in zip(totals["none"], totals["weights"], totals["both"]))
    assert max(totals["both"]) < totals["none"][0]
    if by_input_channel:   # whole term blocks are zero: the weights alone save cycles
        assert totals["weights"][0] < totals["none"][0] - 1000
    else:                  # 20 % of weights survive at random: an all-zero 8×8 block is (0.8)^64 rare
        assert totals["weights"][0] > totals["none"][0] - 100


def test_on_a_bus_bound_design_skipping_saves_little(images):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel=True)
    codes = engine.run(g, images, return_all=True)
    totals, waits = {}, {}
    for mode in ("none", "both"):
        program = compile_graph(g, AccelConfig(zero_skip=mode))
        result = simulate(program, codes[program.input_name])
        totals[mode] = result.cycles["images"]
        waits[mode] = sum(layer["weights"] for layer in result.cycles["layers"])
    # the skipped compute cycles reappear as weight waits
    assert waits["both"] > waits["none"] + 1000
    assert totals["none"][0] == 8494 and all(0 <= 8494 - b < 100 for b in totals["both"])


def test_the_report_estimates_both_from_activation_densities(images):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel=False)
    program = compile_graph(g, COMPUTE_BOUND)
    densities = layer_densities(g, program, activation_sparsity(g, images))
    convs = [layer.name for layer in program.layers if layer.kind == "conv"]
    assert sorted(densities) == sorted(convs) and all(0 < d <= 1 for d in densities.values())
    design = evaluate_design(program, densities)
    assert design["zero_skip"]["both"]["count"] == "both (estimate)"
    assert design["zero_skip"]["both"]["cycles"] < design["zero_skip"]["weights"]["cycles"] <= design["cycles"]
    assert evaluate_design(program)["zero_skip"]["both"] is None
    exact = simulate(dataclasses.replace(program, config=dataclasses.replace(COMPUTE_BOUND, zero_skip="both")),
                     engine.run(g, images, return_all=True)[program.input_name])
    # independent zeros are an assumption: the estimate is near the exact mean, not equal to it
    assert design["zero_skip"]["both"]["cycles"] == pytest.approx(exact.total_cycles, rel=0.15)


def test_codebook_layers_skip_by_their_looked_up_values():
    """A codebook layer's padded buffer entries hold index 0, whose value may be non-zero: they never
    make a block live. Weights that select a zero codebook value are zero weights."""
    g = golden("lenet5_clipq")
    for node in g.nodes:
        if node.attrs.get("weight_format") != "codebook" or node.op != "Conv2d":
            continue
        book = g.params[node.params["codebook"]]
        assert int(book[0]) != 0 and (book == 0).any()   # padding reads a non-zero value
        index = g.params[node.params["weight_index"]].clone()
        flat = index.reshape(index.shape[0], -1)
        flat[:, 8:] = int(torch.nonzero(book == 0)[0])   # every term past the first block selects 0
        g.params[node.params["weight_index"]] = flat.reshape(index.shape)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = engine.run(g, x, return_all=True)
    program = compile_graph(g, AccelConfig(zero_skip="weights"))
    conv1 = program.layers[0]
    assert conv1.is_codebook and conv1.out_ch % program.config.pe   # it has padded rows
    assert live_blocks(conv1, program.config).sum() == 1
    result = simulate(program, outputs[program.input_name])
    formula = program_cycles(program)
    for counted, row in zip(result.cycles["layers"], formula["layers"]):
        assert counted["compute"] == row["compute"], row["name"]
    assert result.cycles["layers"][0]["compute"] == conv1.pixels   # one block, one group
    assert result.total_cycles == formula["total"]
    for layer in program.layers:
        np.testing.assert_array_equal(result.outputs[layer.name], outputs[layer.name].numpy())


def _naive_both(layer, R: int, C: int, x: np.ndarray) -> int:
    """Compute cycles of one conv layer and image under "both", straight from §4's definitions: for
    each group g (R·channel lanes rows), pixel pass (pixel lanes pixels in raster order) and block j,
    is there a real row r, a pixel of the pass and a term t = j·C + c < K with w[r][t] ≠ 0 and
    d_r(t) ≠ 0? x: the layer's input codes [in_ch, in_h, in_w]."""
    kin = layer.in_ch // layer.groups
    per_out = layer.out_ch // layer.groups
    K, T = layer.terms, -(-layer.terms // C)
    rows_per_group = R * layer.channel_lanes
    pixels = [(oy, ox) for oy in range(layer.out_h) for ox in range(layer.out_w)]
    passes = [pixels[i : i + layer.pixel_lanes] for i in range(0, len(pixels), layer.pixel_lanes)]
    cycles = 0
    for g in range(-(-layer.out_ch // rows_per_group)):
        rows = range(g * rows_per_group, min((g + 1) * rows_per_group, layer.out_ch))
        for group_of_pixels in passes:
            for j in range(T):
                live = False
                for (oy, ox), r in ((p, r) for p in group_of_pixels for r in rows):
                    for t in range(j * C, min((j + 1) * C, K)):
                        if layer.weights[r, t] == 0:
                            continue
                        ci, rest = divmod(t, layer.kh * layer.kw)
                        ky, kx = divmod(rest, layer.kw)
                        iy, ix = oy * layer.sh - layer.ph + ky, ox * layer.sw - layer.pw + kx
                        channel = (r // per_out) * kin + ci
                        if 0 <= iy < layer.in_h and 0 <= ix < layer.in_w and x[channel, iy, ix] != layer.z_in:
                            live = True
                            break
                    if live:
                        break
                cycles += live
    return cycles


@pytest.mark.parametrize("name", ["grouped_conv", "strided_padded"])
def test_both_counts_what_the_definition_says(name):
    """Grouped rows with their own inputs, padding, strides and a non-zero input zero point."""
    g = golden(name)
    gen = torch.Generator().manual_seed(3)
    for node in g.nodes:
        if node.op in ("Conv2d", "Linear"):
            w = g.params[node.params["weight"]]
            g.params[node.params["weight"]] = torch.where(torch.rand(w.shape, generator=gen) < 0.3, w,
                                                          torch.zeros_like(w))
    x = torch.rand(3, *g.input_spec.shape, generator=gen)
    x[1] = 0   # mostly one code: many activations equal the zero point or the padding
    outputs = engine.run(g, x, return_all=True)
    program = compile_graph(g, AccelConfig(pe=4, simd=4, zero_skip="both"))
    result = simulate(program, outputs[program.input_name])
    for layer in program.layers:
        np.testing.assert_array_equal(result.outputs[layer.name], outputs[layer.name].numpy())
    inputs = [outputs[program.input_name]] + [outputs[layer.name] for layer in program.layers[:-1]]
    weights_only = program_cycles(dataclasses.replace(program, config=AccelConfig(pe=4, simd=4, zero_skip="weights")))
    for layer, source, counted, w in zip(program.layers, inputs, result.cycles["layers"], weights_only["layers"]):
        if layer.kind != "conv":
            continue
        codes = source.numpy().reshape(len(x), layer.in_ch, layer.in_h, layer.in_w)
        want = [_naive_both(layer, 4, 4, image) for image in codes]
        assert counted["compute_images"] == want, layer.name
        assert max(want) <= w["compute"]


def test_the_plain_figures_do_not_depend_on_the_programs_zero_skip(images):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel=True)
    densities = None
    designs = {}
    for mode in ("none", "both"):
        program = compile_graph(g, dataclasses.replace(COMPUTE_BOUND, zero_skip=mode))
        densities = densities or layer_densities(g, program, activation_sparsity(g, images))
        designs[mode] = evaluate_design(program, densities)
    assert designs["none"]["cycles"] == designs["both"]["cycles"] == 7443
    assert designs["none"]["zero_skip"] == designs["both"]["zero_skip"]


def test_verify_counts_data_dependent_cycles_per_image_and_rtl_refuses_zero_skip(tmp_path):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel=True)
    inputs = verification_inputs(g, 3, "fashion-mnist")
    report = verify(g, "accel", inputs, config=dataclasses.replace(COMPUTE_BOUND, zero_skip="both"))
    assert report.passed and report.mismatches == 0 and report.cycles_equal is None
    assert len(report.cycles_per_image) == report.images and max(report.cycles_per_image) < 7443
    assert any("depend on the activations" in note for note in report.notes)
    weights = verify(g, "accel", inputs, config=dataclasses.replace(COMPUTE_BOUND, zero_skip="weights"))
    assert weights.passed and weights.cycles_equal is True                # exact: equal to the formula
    with pytest.raises(ConfigError, match="does not skip zeros"):
        rtl_generate.testbench(compile_graph(g, AccelConfig(zero_skip="weights")), tmp_path, 1, 1)


def test_the_commands_take_zero_skip(tmp_path):
    g = _prune(golden("lenet5_w8a8"), 0.8, by_input_channel=True)
    g.save(tmp_path / "g")
    result = invoke("hw", "report", str(tmp_path / "g"), "--zero-skip", "both", "--activations", "5",
                    "--bus-bits", "256", "--json")
    assert result.exit_code == 0, result.output
    design = json.loads(result.output)
    assert design["cycles"] == 7443 and design["zero_skip"]["both"]["cycles"] < design["zero_skip"]["weights"]["cycles"]
    sim = invoke("hw", "simulate", str(tmp_path / "g"), "--zero-skip", "weights", "--images", "2",
                 "--bus-bits", "256", "--json")
    assert sim.exit_code == 0, sim.output
    assert json.loads(sim.output)["total_cycles"] == design["zero_skip"]["weights"]["cycles"]
    bad = invoke("hw", "report", str(tmp_path / "g"), "--activations", "5")
    assert bad.exit_code != 0 and "--zero-skip both" in bad.output + str(bad.exception)
