"""The one cost function of a bit assignment (bitsmith.accel.precision): its cycles are the cycle
model's, its tables sum to its exact figures, and its DSP count follows MixQ's packing tables."""

from __future__ import annotations

import math
import random

import pytest
import torch

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import ops_per_dsp
from bitsmith.accel.precision import METRICS, assignment_cost, cost_tables, pipeline_interval, weighted_layers
from bitsmith.accel.simulate import simulate
from bitsmith.accel.timing import program_cycles
from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from tests.helpers import golden

GRAPHS = ["lenet5_w8a8", "lenet5_w4a4_pc", "mixed_small", "grouped_conv", "skynet_32x64", "all_backends_small"]


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("pe, simd", [(8, 8), (4, 16), (3, 5)])
def test_cycles_are_the_timing_models(name, pe, simd):
    program = compile_graph(golden(name), AccelConfig(pe=pe, simd=simd))
    assert assignment_cost(program)["cycles"] == program_cycles(program)["total"]


@pytest.mark.parametrize("name", ["mixed_small", "grouped_conv"])
def test_cycles_are_what_the_cycle_level_model_counts(name):
    graph = golden(name)
    program = compile_graph(graph, AccelConfig(pe=4, simd=4, max_kernel=12))
    x = torch.randn(1, *graph.tensors[graph.inputs[0]].shape, generator=torch.Generator().manual_seed(3))
    codes = engine.run(graph, x, return_all=True)[program.input_name]
    assert simulate(program, codes).total_cycles == assignment_cost(program)["cycles"]


@pytest.mark.parametrize("name", ["lenet5_w8a8", "skynet_32x64", "grouped_conv"])
def test_tables_sum_to_the_exact_figures(name):
    program = compile_graph(golden(name), AccelConfig())
    n = len(weighted_layers(program))
    rng = random.Random(name)
    cands_w = [sorted(rng.sample(range(2, 9), 3)) for _ in range(n)]
    cands_a = [sorted(rng.sample(range(2, 9), 2)) for _ in range(n)]
    for metric in METRICS:
        tables, constant = cost_tables(program, cands_w, cands_a, metric)
        for _ in range(4):
            pick = [(rng.randrange(len(w)), rng.randrange(len(a))) for w, a in zip(cands_w, cands_a)]
            exact = assignment_cost(program, [w[i] for w, (i, _) in zip(cands_w, pick)],
                                    [a[j] for a, (_, j) in zip(cands_a, pick)])
            priced = sum(t[i, j] for t, (i, j) in zip(tables, pick)) + constant
            if metric == "cycles":   # each layer priced alone: an upper bound (precision's docstring)
                assert priced >= exact[metric]
            else:
                assert priced == pytest.approx(exact[metric], abs=1e-9)


def test_dsp_count_follows_the_packing_tables():
    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    layers = weighted_layers(program)
    interval = pipeline_interval(program)
    assert interval == math.ceil(layers[0].macs / 64)
    cost = assignment_cost(program, [8, 4, 2, 3, 8], [8, 4, 2, 5, 8])
    for layer, row, w, a in zip(layers, cost["layers"], [8, 4, 2, 3, 8], [8, 4, 2, 5, 8]):
        multipliers = math.ceil(layer.macs / interval)
        table = {1: 1, 2: 1, 3: 3, 4: 3, 5: 5}[min(layer.kh, layer.kw)]
        ops = ops_per_dsp(w, a, table)
        assert row["multipliers"] == multipliers
        assert row["dsp"] == math.ceil(round(multipliers / ops, 6))  # 6.67 stands for 20/3 (cost.exact_ops)
        assert row["bitops"] == layer.macs * w * a and row["weight_bits"] == layer.out_ch * layer.terms * w
    assert cost["layers"][0]["multipliers"] <= 64  # the first layer runs on R·C multipliers
    assert cost["dsp"] == sum(r["dsp"] for r in cost["layers"])


def test_lower_widths_never_cost_more_dsps_or_memory():
    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    n = len(weighted_layers(program))
    previous = None
    for bits in range(8, 1, -1):
        cost = assignment_cost(program, [bits] * n, [bits] * n)
        if previous is not None:
            assert cost["dsp"] <= previous["dsp"] and cost["weight_bits"] < previous["weight_bits"]
            assert cost["bitops"] < previous["bitops"]
            # cycles never rise; they drop where the packing mode does (4 from 4 bits). The narrower
            # storage (4, 2 bits) halves the bus words, but at 8×8 the weight ring already hides
            # LeNet-5's loads from 4 bits down.
            if bits == 4:
                assert cost["cycles"] < previous["cycles"]
            else:
                assert cost["cycles"] <= previous["cycles"]
        previous = cost


def test_wide_widths_pack_one_product_per_dsp():
    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    cost = assignment_cost(program, [12, 8, 8, 8, 16], [8, 8, 8, 8, 10])
    assert cost["layers"][0]["dsp"] == cost["layers"][0]["multipliers"]
    assert cost["layers"][4]["dsp"] == cost["layers"][4]["multipliers"]
    assert cost["array_dsp"] is None  # the shared array cannot run > 8 bits


@pytest.mark.parametrize("wbits, abits, needle", [
    ([8, 8, 8, 8], None, "4 weight widths for 5 layers"),
    ([8, 8, 1, 8, 8], None, "weight bits=1 is not allowed; allowed: 2 to 16"),
    (None, [8, 8, 8, 17, 8], "activation bits=17 is not allowed"),
    ([8, 8, True, 8, 8], None, "weight bits=True"),
])
def test_bad_assignments_are_refused(wbits, abits, needle):
    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    with pytest.raises(ConfigError, match=needle):
        assignment_cost(program, wbits, abits)


def test_bad_tables_are_refused():
    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    with pytest.raises(ConfigError, match="unknown cost metric 'area'"):
        cost_tables(program, [[8]] * 5, [[8]] * 5, "area")
    with pytest.raises(ConfigError, match="empty candidate list"):
        cost_tables(program, [[8]] * 4 + [[]], [[8]] * 5, "dsp")
    with pytest.raises(ConfigError, match="one list per layer"):
        cost_tables(program, [[8]] * 4, [[8]] * 5, "dsp")


def test_codebook_layers_have_no_width_to_price():
    program = compile_graph(golden("lenet5_clipq"), AccelConfig())
    with pytest.raises(ConfigError, match="codebook"):
        assignment_cost(program)


def test_hw_report_and_hls_export_use_the_same_cost_function(tmp_path):
    import json

    from bitsmith.targets.hls import read_hls
    from tests.helpers import invoke

    path = tmp_path / "g"
    golden("lenet5_mixed").save(path)
    program = compile_graph(golden("lenet5_mixed"), AccelConfig())
    exact = assignment_cost(program)
    report = invoke("hw", "report", path, "--json")
    assert report.exit_code == 0, report.output
    precision = json.loads(report.output)["precision"]
    assert (precision["dsp"], precision["cycles"], precision["wbits"]) == (exact["dsp"], exact["cycles"], [2, 5, 3, 7, 8])
    hls = invoke("hw", "hls", path, "--out", tmp_path / "hls", "--json")
    assert hls.exit_code == 0, hls.output
    cost = json.loads((tmp_path / "hls" / "cost.json").read_text())
    layers = {l.name: l for l in read_hls(tmp_path / "hls") if l.kind == "conv"}
    for row in cost["layers"]:  # the export's own folding, packed by the same tables
        assert row["multipliers"] == layers[row["name"]].pe * layers[row["name"]].simd
    assert cost["dsp"] == sum(r["dsp"] for r in cost["layers"]) and cost["cycles"] == exact["cycles"]


def test_widths_are_priced_in_the_packing_modes_they_allow():
    """A 4-bit program priced at 8 bits may not keep mode 4 (8-bit weights need 18-bit fields), and
    an 8-bit program priced at 4 bits gets it: each costs what compiling at those widths gives."""
    from bitsmith.accel.timing import program_cycles

    config = AccelConfig()
    w4, w8 = compile_graph(golden("lenet5_w4a4_pc"), config), compile_graph(golden("lenet5_w8a8"), config)
    n = len(weighted_layers(w8))
    assert assignment_cost(w4, [8] * n, [8] * n)["cycles"] == program_cycles(w8)["total"] > program_cycles(w4)["total"]
    assert assignment_cost(w8, [4] * n, [4] * n)["cycles"] == program_cycles(w4)["total"]


def test_a_packing_mode_the_fields_cannot_hold_is_refused():
    from bitsmith.accel.compiler import check_packing
    from bitsmith.errors import AcceleratorError

    program = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    conv1 = program.layers[0]
    conv1.packing = 4  # 8-bit weights × 10-bit d do not fit mode 4's 9-bit fields
    with pytest.raises(AcceleratorError, match="packing mode 4"):
        check_packing(conv1)
    with pytest.raises(AcceleratorError, match="packing mode 4"):
        simulate(program, torch.zeros(1, 1, 32, 32, dtype=torch.int64))
