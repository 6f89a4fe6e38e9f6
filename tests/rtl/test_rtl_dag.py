"""The generated Verilog runs any DAG (docs/hardware.md §2): depthwise and grouped convs, residual Adds
with a fused ReLU, free Concats and Concat copies, Reorg, lone Requants of codes, asymmetric padding,
in Icarus through bitsmith.verify: every output value of every layer equal to the engine's, and the
RTL's cycle count equal to the §5 formula, per layer and in total."""

import pytest

from bitsmith.accel.config import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.verify import verification_inputs, verify
from tests.helpers import needs_verilator
from tests.random_graphs import GraphMaker, random_graph

SMALL = AccelConfig(pe=3, simd=4, bus_bits=64, max_kernel=12)


def run(graph, config=SMALL, images=2, sim="icarus", fault=None, work_dir=None):
    return verify(graph, "rtl", verification_inputs(graph, images, "random"), sim=sim, config=config, fault=fault,
                  work_dir=work_dir, raise_errors=True)


def assert_exact(report, images=2):
    assert report.images == images and report.complete and report.details["timeout"] is None
    for row in report.layers:
        assert row.elements > 0 and row.mismatches == 0, row
        assert row.cycles == row.formula_cycles, row
    assert report.cycles_per_image == [report.formula_cycles] * images
    assert report.passed


def _depthwise():
    gm = GraphMaker(11)
    x = gm.input((4, 6, 7))
    y = gm.conv(x, 4, 3, groups=4, clamp="relu6")                 # depthwise 3x3
    y = gm.conv(y, 6, 3, stride=2, groups=2, clamp="relu")       # grouped
    return gm.graph(gm.conv(y, 5, 1, pads=[0, 0], clamp="none"))


def _residual():
    gm = GraphMaker(12)
    x = gm.input((3, 5, 6))
    x = gm.conv(x, 4, 3, clamp="relu")
    y = gm.conv(gm.conv(x, 4, 3, clamp="relu"), 4, 1, pads=[0, 0], clamp="none")
    return gm.graph(gm.add(y, x, clamp="relu"))                  # the ResNet block: relu(x + f(x))


def _concat_reorg_requant():
    gm = GraphMaker(13)
    x = gm.input((2, 8, 8))
    a = gm.conv(x, 3, 3)
    b = gm.reorg(gm.conv(a, 2, 1, pads=[0, 0]), 2)              # 8x4x4
    c = gm.concat([gm.maxpool(a, 2, 2), b])                     # free; b moved onto a's grid by a lone Requant
    d = gm.concat([c, c])                                       # the same tensor twice: a copy layer
    return gm.graph(gm.conv(d, 4, 3))


def _asymmetric():
    gm = GraphMaker(14)
    x = gm.input((2, 7, 8))
    y = gm.conv(x, 3, 2, pads=[0, 0, 1, 1])                     # padding='same' of an even kernel
    y = gm.conv(y, 3, 3, pads=[2, 0, 0, 1], stride=2)
    return gm.graph(gm.conv(y, 2, 3, pads=[1, 2, 3, 0], clamp="none"))


def _packed_odd_width(height: int):
    """4-bit convs in packing mode 4 (two output pixels a pass) on maps of odd width: a pass's
    second pixel starts the next row, and with an odd pixel count the last pass has one pixel."""
    gm = GraphMaker(21)
    x = gm.input((3, height, 7), bits=4)
    y = gm.conv(x, 6, 3, weight_bits=4, out_bits=4)                         # height x 7
    y = gm.conv(y, 5, 3, pads=[0, 0], weight_bits=4, out_bits=4)            # (height-2) x 5
    return gm.graph(gm.conv(y, 4, 3, pads=[0, 0], weight_bits=4, clamp="none"))   # (height-4) x 3


@pytest.mark.parametrize("height", [5, 6])   # odd and even pixel counts on every layer
def test_packed_mode_4_on_odd_widths_bit_exact_in_icarus(height):
    graph = _packed_odd_width(height)
    layers = compile_graph(graph, SMALL).layers
    assert [(l.packing, l.out_w % 2) for l in layers] == [(4, 1)] * 3
    assert [l.pixels % 2 for l in layers] == ([1, 1, 1] if height == 5 else [0, 0, 0])
    assert_exact(run(graph))


CASES = {"depthwise": _depthwise, "residual": _residual, "concat_reorg_requant": _concat_reorg_requant,
         "asymmetric_padding": _asymmetric}


@pytest.mark.parametrize("case", list(CASES))
def test_new_layer_kinds_bit_exact_in_icarus(case):
    graph = CASES[case]()
    kinds = [l.kind for l in compile_graph(graph, SMALL).layers]
    expected = {"depthwise": {"conv"}, "residual": {"add"}, "concat_reorg_requant": {"reorg", "requant", "concat", "maxpool"},
                "asymmetric_padding": {"conv"}}[case]
    assert expected <= set(kinds)
    assert_exact(run(graph))


@pytest.mark.parametrize("seed", [1, 6, 7, 9, 15, 16, 19, 28])   # every kind; small maps (seconds each)
def test_random_graphs_bit_exact_in_icarus(seed):
    config = [SMALL, AccelConfig(pe=8, simd=8, max_kernel=12), AccelConfig(pe=1, simd=3, bus_bits=32, max_kernel=12)][seed % 3]
    assert_exact(run(random_graph(seed), config))


def test_no_zero_point_fault_is_caught_in_the_add():
    report = run(_residual(), images=1, fault="no_zero_point")
    assert not report.passed and report.mismatches > 0


ZOO_CONFIG = AccelConfig(pe=8, simd=8, bus_bits=512)   # Icarus time grows faster than R·C: 8×8 is quicker than 16×16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ultranet_bypass_32x64", "skynet_32x64"])
def test_ultranet_bypass_and_skynet_bit_exact_in_icarus(golden, name):
    graph = golden(name)
    report = run(graph, ZOO_CONFIG)
    assert_exact(report)
    kinds = {row.kind for row in report.layers}
    assert ("reorg" in kinds) if name.startswith("ultranet") else ("conv" in kinds)


@pytest.mark.slow
@needs_verilator
def test_dag_in_verilator_same_as_icarus():
    graph = _concat_reorg_requant()
    a, b = run(graph, sim="icarus"), run(graph, sim="verilator")
    assert_exact(a)
    assert_exact(b)
    assert [(r.name, r.cycles) for r in a.layers] == [(r.name, r.cycles) for r in b.layers]
