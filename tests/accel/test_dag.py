"""Any DAG on the accelerator (docs/hardware.md §2, §6): grouped / depthwise convs, residual Adds,
Concats (free by allocation, or a copy layer), Reorg, lone Requants of codes and asymmetric padding.
The cycle model equals the integer engine on every layer output, element by element, and its
cycle count equals the §5 formulas; the activation-memory allocation never lets a layer's output
overlap a map that is live at the same time."""

import numpy as np
import pytest
import torch

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.cost import cost_report
from bitsmith.accel.faults import with_fault
from bitsmith.accel.memory import read_memory, read_program, write_memory
from bitsmith.accel.simulate import simulate
from bitsmith.accel.timing import PHASES, layer_cycles, program_cycles
from bitsmith.errors import AcceleratorError
from bitsmith.integer import engine
from tests.random_graphs import GraphMaker, random_graph

SMALL = AccelConfig(pe=3, simd=4, bus_bits=64, max_kernel=12)


def check(graph, config=SMALL, images=6, seed=0):
    """Compile, simulate; every layer equals the engine, cycles equal §5. Returns (program, result)."""
    program = compile_graph(graph, config)
    x = torch.randn(images, *graph.tensors[graph.inputs[0]].shape, generator=torch.Generator().manual_seed(seed))
    outputs = engine.run(graph, x, return_all=True)
    result = simulate(program, outputs[program.input_name])
    assert result.overflows == []
    for layer in program.layers:
        want = outputs[layer.name].numpy()
        assert result.outputs[layer.name].shape == want.shape, layer.name
        np.testing.assert_array_equal(result.outputs[layer.name], want, err_msg=f"{layer.name} ({layer.kind})")
    formula = program_cycles(program)
    for counted, row in zip(result.cycles["layers"], formula["layers"]):
        assert {p: counted[p] for p in PHASES} == {p: row[p] for p in PHASES}, row["name"]
    assert result.total_cycles == formula["total"]
    check_allocation(program)
    return program, result


def check_allocation(program):
    """Regions live at the same layer are disjoint; every layer's output is disjoint from its inputs."""
    alloc = program.metadata["activation_memory"]
    regions = alloc["regions"]
    for i, a in enumerate(regions):
        assert 0 <= a["base"] and a["base"] + a["bytes"] <= alloc["bytes"] <= program.config.act_buffer_bytes
        for b in regions[i + 1:]:
            if a["live"][0] <= b["live"][1] and b["live"][0] <= a["live"][1]:
                assert a["base"] + a["bytes"] <= b["base"] or b["base"] + b["bytes"] <= a["base"], (a, b)
    for layer in program.layers:
        if layer.raw_output:
            continue
        out = (layer.out_base, layer.out_base + layer.out_elems)
        ins = [(layer.in_base, layer.in_base + layer.in_elems)]
        if layer.kind == "add":
            ins.append((layer.in2_base, layer.in2_base + layer.in_elems))
        if layer.has_map and layer.kind != "concat":   # grouped conv, reorg: rows read inside the input map
            assert layer.in_base <= layer.channel_map.min() and layer.channel_map.max() < ins[0][1], layer.name
        if layer.kind == "concat":                     # every part's channels: one H·W plane per row
            plane = layer.out_h * layer.out_w
            ins += [(int(a), int(a) + plane) for a in layer.channel_map]
        for lo, hi in ins:
            assert hi <= out[0] or out[1] <= lo, (layer.name, out, (lo, hi))


# -- random graphs ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_random_graphs_cycle_model_equals_engine(seed):
    graph = random_graph(seed)
    config = [SMALL, AccelConfig(pe=8, simd=8, max_kernel=12), AccelConfig(pe=1, simd=3, bus_bits=32, max_kernel=12)][seed % 3]
    check(graph, config, seed=seed)


def test_random_graphs_cover_every_new_kind():
    kinds = set()
    free = 0
    for seed in range(30):
        program = compile_graph(random_graph(seed), SMALL)
        kinds |= {l.kind for l in program.layers}
        kinds |= {"grouped" for l in program.layers if l.kind == "conv" and l.groups > 1}
        kinds |= {"asym" for l in program.layers if l.kind == "conv" and (l.ph, l.pw) == (0, 0) and l.kh == 2}
        free += sum(1 for r in program.metadata["activation_memory"]["regions"] if r["parts"])
    assert kinds >= {"conv", "maxpool", "avgpool", "add", "reorg", "requant", "grouped", "asym"}
    assert free > 0   # some Concats were free


# -- one kind at a time ---------------------------------------------------------------------------

def test_depthwise_and_grouped_conv():
    gm = GraphMaker(1)
    x = gm.input((4, 7, 9))
    y = gm.conv(x, 4, 3, groups=4, clamp="relu6")                 # depthwise
    y = gm.conv(y, 8, 3, stride=2, groups=2, clamp="relu")       # grouped, 2 groups
    y = gm.conv(y, 8, 1, groups=8, pads=[0, 0], clamp="none")    # depthwise 1x1
    program, _ = check(gm.graph(y))
    dw, grouped, dw1 = program.layers
    assert (dw.groups, dw.terms, grouped.groups, grouped.terms, dw1.terms) == (4, 9, 2, 18, 1)
    hw = 7 * 9
    assert (dw.channel_map - dw.in_base).tolist() == [0, hw, 2 * hw, 3 * hw]
    assert (grouped.channel_map - grouped.in_base).tolist() == [0] * 4 + [2 * hw] * 4
    # param: descriptor + (bias, m, s, input address) per channel
    assert layer_cycles(dw, SMALL, first=False)["param"] == 22 + 4 * 4
    check(gm.graph(y), AccelConfig(pe=8, simd=8))


def test_residual_add_with_fused_relu():
    gm = GraphMaker(2)
    x = gm.input((3, 6, 6))
    x = gm.conv(x, 4, 3, clamp="relu")
    y = gm.conv(x, 4, 3, clamp="relu")
    y = gm.conv(y, 4, 1, clamp="none")
    out = gm.add(y, x, clamp="relu")
    program, result = check(gm.graph(out))
    add = program.layers[-1]
    assert add.kind == "add" and (add.kh, add.kw, add.terms) == (1, 2, 2)
    req = next(n for n in gm.nodes if n.op == "Requant" and n.inputs[0].endswith("_acc") and n.output == out.name)
    assert add.clamp_lo == req.attrs["clamp_min"] == max(out.qmin, out.zero_point)   # ReLU fused
    m = gm.params[next(n for n in gm.nodes if n.op == "Add").params["multiplier"]].tolist()
    assert list(add.lane_multipliers) == m
    # x (read by the first conv of the branch and by the add) stays live and untouched until the add
    assert add.in2_base == program.layers[0].out_base
    # §5: param 22 + 3·4, compute P·2 per group, drain 1 per group (G = ⌈4/3⌉ = 2; the other pixels'
    # writes share the next pixel's first cycle)
    assert layer_cycles(add, SMALL, first=False) == {"param": 34, "codebook": 0, "input": 0, "weights": 0,
                                                     "compute": 2 * 36 * 2, "drain": 2, "next": 1}
    report = cost_report(program)
    assert report["dsp"]["lanes"] == SMALL.pe and report["dsp"]["total"] == sum(
        report["dsp"][k] for k in ("array", "requant", "lanes"))


def test_add_of_signed_and_unsigned_inputs_and_the_same_tensor_twice():
    for seed in range(6):
        gm = GraphMaker(100 + seed)
        x = gm.input((2, 5, 5))
        a = gm.conv(x, 3, 3, clamp="none")
        b = gm.conv(x, 3, 1, pads=[0, 0], clamp="relu")
        s = gm.add(a, b, clamp="none")
        out = gm.add(s, s, clamp="relu6")
        check(gm.graph(out))


def test_add_multiplier_too_wide_for_the_lane_register():
    gm = GraphMaker(3)
    x = gm.input((2, 4, 4))
    y = gm.conv(x, 2, 3)
    out = gm.add(y, x)
    node = next(n for n in gm.nodes if n.op == "Add")
    gm.params[node.params["multiplier"]] = torch.tensor([40000, 3], dtype=torch.int64)
    with pytest.raises(AcceleratorError, match=rf"layer {node.name}: Add multiplier m_a = 40000 does not fit the "
                                               r"16-bit signed lane multiplier register \(0..32767"):
        compile_graph(gm.graph(out), SMALL)


def test_free_concat_and_nested_concat():
    gm = GraphMaker(4)
    x = gm.input((2, 6, 6))
    a = gm.conv(x, 3, 3)
    b = gm.conv(a, 2, 1, pads=[0, 0])
    c = gm.concat([a, b])                   # b's grid differs: a lone Requant moves it onto a's
    d = gm.conv(c, 2, 3)
    e = gm.concat([c, d])                   # nested: c (itself free) inside e
    out = gm.conv(e, 4, 3)
    program, _ = check(gm.graph(out))
    assert "concat" not in [l.kind for l in program.layers]
    assert "requant" in [l.kind for l in program.layers]
    by = {l.name: l for l in program.layers}
    last = program.layers[-1]
    parts = [l for l in program.layers[:-1] if last.in_base <= l.out_base < last.in_base + last.in_elems]
    # every part was written straight into the concatenated region, at its channel offset, in order
    assert sorted(l.out_base - last.in_base for l in parts) == [0, 3 * 36, 5 * 36]
    assert by[a.name].out_base == last.in_base


def test_concat_copy_when_a_part_is_used_twice_or_is_the_output():
    gm = GraphMaker(5)
    x = gm.input((2, 5, 5))
    a = gm.conv(x, 3, 3)
    twice = gm.concat([a, a])               # the same tensor twice: a copy layer
    out = gm.concat([gm.conv(twice, 2, 1, pads=[0, 0]), x])  # the graph output: a copy layer
    program, _ = check(gm.graph(out))
    kinds = [l.kind for l in program.layers]
    assert kinds == ["conv", "concat", "conv", "requant", "concat"]   # x moved onto the Concat's grid
    cat = program.layers[1]
    assert cat.has_map and (cat.channel_map - program.layers[0].out_base).tolist() == [0, 25, 50, 0, 25, 50]
    assert layer_cycles(cat, SMALL, first=False) == {"param": 22 + 6, "codebook": 0, "input": 0, "weights": 0,
                                                     "compute": 2 * 25, "drain": 2, "next": 1}


def test_reorg():
    gm = GraphMaker(6)
    x = gm.input((3, 8, 12))
    y = gm.conv(x, 2, 3)
    r = gm.reorg(y, 2)
    r4 = gm.reorg(gm.conv(r, 4, 1, pads=[0, 0]), 2)
    out = gm.conv(r4, 3, 3)
    program, _ = check(gm.graph(out))
    reorg = program.layers[1]
    assert reorg.kind == "reorg" and (reorg.sh, reorg.sw, reorg.kh) == (2, 2, 1)
    o = np.arange(8)
    want = (o // 4) * 96 + ((o // 2) % 2) * 12 + o % 2
    assert (reorg.channel_map - reorg.in_base).tolist() == want.tolist()


def test_asymmetric_padding():
    gm = GraphMaker(7)
    x = gm.input((2, 7, 8))
    y = gm.conv(x, 3, 2, pads=[0, 0, 1, 1])          # 'same' for an even kernel
    y = gm.conv(y, 3, 3, pads=[2, 0, 0, 1], stride=2)
    y = gm.conv(y, 2, 3, pads=[1, 2, 3, 0])
    program, _ = check(gm.graph(y))
    assert [(l.ph, l.pw, l.out_h, l.out_w) for l in program.layers] == [(0, 0, 7, 8), (2, 0, 4, 4), (1, 2, 6, 4)]


def test_files_round_trip_and_run_from_disk(tmp_path):
    graph = random_graph(3)
    for seed in range(30):   # a graph with a free Concat, a grouped conv or an add
        graph = random_graph(seed)
        p = compile_graph(graph, SMALL)
        if any(l.has_map for l in p.layers) and any(r["parts"] for r in p.metadata["activation_memory"]["regions"]):
            break
    program = compile_graph(graph, SMALL)
    x = torch.randn(3, *graph.tensors["input"].shape)
    outputs = engine.run(graph, x, return_all=True)
    doc = write_memory(program, outputs[program.input_name], tmp_path, expected=outputs)
    assert doc["metadata"]["activation_memory"]["bytes"] == program.metadata["activation_memory"]["bytes"]
    back = read_program(tmp_path)
    for a, b in zip(program.layers, back.layers):
        for f in ("kind", "in_base", "in2_base", "out_base", "groups", "z_in2", "in2_signed", "ph", "pw"):
            assert getattr(a, f) == getattr(b, f), (a.name, f)
        assert tuple(a.lane_multipliers) == tuple(b.lane_multipliers)
        assert (a.channel_map is None) == (b.channel_map is None)
        if a.channel_map is not None:
            np.testing.assert_array_equal(a.channel_map, b.channel_map)
    _, memory = read_memory(tmp_path)
    result = simulate(back, outputs[program.input_name], memory=memory)
    for layer in program.layers:
        np.testing.assert_array_equal(result.outputs[layer.name], outputs[layer.name].numpy())


def test_activation_memory_too_small_names_the_layer():
    gm = GraphMaker(8)
    x = gm.input((2, 6, 6))          # 72 bytes
    a = gm.conv(x, 4, 3)             # 144
    b = gm.conv(a, 4, 3)             # 144, a still live for the add
    out = gm.add(b, a)               # 144
    graph = gm.graph(out)
    need = compile_graph(graph, SMALL).metadata["activation_memory"]["bytes"]
    assert need == 3 * 144           # a, b and the sum are live together at the add
    compile_graph(graph, AccelConfig(pe=3, simd=4, act_buffer_bytes=need))
    with pytest.raises(AcceleratorError, match=r"layer add\d+_acc: the activation memory does not fit: .* the allocation "
                                               rf"needs {need} bytes, act_buffer_bytes={need - 1}"):
        compile_graph(graph, AccelConfig(pe=3, simd=4, act_buffer_bytes=need - 1))


def test_no_zero_point_fault_reaches_the_add_lanes():
    gm = GraphMaker(9)
    x = gm.input((2, 4, 4))
    y = gm.conv(x, 2, 3)
    out = gm.add(y, x)
    program = compile_graph(gm.graph(out), SMALL)
    faulty = with_fault(program, "no_zero_point")
    assert faulty.layers[-1].z_in == faulty.layers[-1].z_in2 == 0


# -- the zoo models the accelerator used to refuse (golden graphs at 3x32x64) ---------------------

@pytest.mark.parametrize("name, config", [
    ("skynet_32x64", AccelConfig()),                                # depthwise 3x3 convs, groups = channels
    ("skynet_32x64", AccelConfig(pe=16, simd=16, bus_bits=512)),
    ("ultranet_bypass_32x64", AccelConfig()),                       # Reorg, lone Requant, a free Concat
    ("ultranet_bypass_32x64", AccelConfig(pe=4, simd=32, bus_bits=128)),
])
def test_skynet_and_ultranet_bypass_cycle_model_equals_engine(golden, name, config):
    graph = golden(name)
    program, _ = check(graph, config, images=4)
    kinds = [l.kind for l in program.layers]
    if name.startswith("skynet"):
        assert sum(1 for l in program.layers if l.kind == "conv" and l.groups == l.in_ch > 1) == 6
        assert program.metadata["activation_memory"]["bytes"] == 122880   # dw2's input and output, 48x16x32 ... live together
    else:
        assert "reorg" in kinds and "requant" in kinds and "concat" not in kinds
        assert any(r["parts"] for r in program.metadata["activation_memory"]["regions"])
