"""The accelerator compiler, the §5 cycle formulas and the §6 memory files (docs/hardware.md)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import check_weight_ring, compile_graph
from bitsmith.accel.memory import (export_memory, pack_elements, read_expected, read_hex, read_input_codes,
                                   read_program, unpack_elements, write_memory)
from bitsmith.accel.program import Layer, Program
from bitsmith.accel.timing import layer_cycles, program_cycles
from bitsmith.errors import AcceleratorError
from bitsmith.integer import engine
from tests.helpers import golden


# -- the program ----------------------------------------------------------------------------

def test_lenet_program_holds_the_graph_integers():
    g = golden("lenet5_bias_w8a8")
    p = compile_graph(g, AccelConfig())
    assert [(l.kind, l.name) for l in p.layers] == [
        ("conv", "q_conv1"), ("maxpool", "pool1"), ("conv", "q_conv2"), ("maxpool", "pool2"),
        ("conv", "q_conv3"), ("conv", "q_fc1"), ("conv", "q_fc2")]
    assert p.input_name == "input_quant"
    nodes = {n.output: n for n in g.nodes}
    for layer in p.layers:
        assert layer.index == p.layers.index(layer)
        if layer.kind != "conv":
            assert layer.weights is None and (layer.kind == "maxpool") == (layer.multiplier is None)
            continue
        acc = layer.name if layer.raw_output else nodes[layer.name].inputs[0]
        node = nodes[acc]
        want = g.weight_codes(node).to(torch.int64).reshape(layer.out_ch, -1).numpy()
        np.testing.assert_array_equal(layer.weights, want)  # OIHW term order
        assert layer.weights.shape == (layer.out_ch, layer.terms)
        np.testing.assert_array_equal(layer.bias, g.params[node.params["bias"]].numpy())
        assert layer.multiplier.shape == layer.shift.shape == (layer.out_ch,)
        if not layer.raw_output:
            req = nodes[layer.name]
            assert set(layer.multiplier.tolist()) == set(g.params[req.params["multiplier"]].tolist())
            assert (layer.clamp_lo, layer.clamp_hi) == (req.attrs["clamp_min"], req.attrs["clamp_max"])
    fc1 = p.layers[5]
    assert (fc1.in_ch, fc1.in_h, fc1.in_w, fc1.out_ch, fc1.out_h, fc1.out_w) == (120, 1, 1, 84, 1, 1)
    last = p.layers[-1]
    assert last.raw_output and last.out_bits == 32 and last.name == g.outputs[0]
    assert all(not l.raw_output for l in p.layers[:-1])
    assert p.layers[0].in_signed and not p.layers[0].out_signed  # normalised input, ReLU output


def test_codebook_layers_hold_indices_and_the_padded_codebook():
    g = golden("lenet5_clipq")   # 2-bit codebooks on conv1..fc1, dense fc2
    p = compile_graph(g, AccelConfig())
    nodes = {n.name: n for n in g.nodes}
    convs = [l for l in p.layers if l.kind == "conv"]
    assert [l.is_codebook for l in convs] == [True, True, True, True, False]
    for layer, name in zip(convs[:4], ["q_conv1_acc", "q_conv2_acc", "q_conv3_acc", "q_fc1_acc"]):
        assert layer.codebook.shape == (4,) and layer.weights.min() >= 0 and layer.weights.max() <= 3
        expanded = g.weight_codes(nodes[name]).to(torch.int64).reshape(layer.out_ch, -1).numpy()
        np.testing.assert_array_equal(layer.codebook[layer.weights], expanded)


def test_requantized_output_and_asymmetric_codes():
    g = golden("lenet5_asym_requant_output")
    p = compile_graph(g, AccelConfig())
    assert not p.layers[-1].raw_output and p.layers[-1].out_bits == 8
    assert p.layers[0].z_in != 0 and not p.layers[0].in_signed


# -- what does not run (hardware.md §2, §4) -------------------------------------------------

@pytest.mark.parametrize("config, message", [
    (AccelConfig(act_buffer_bytes=4096),
     r"layer q_conv1_acc: output map 6x28x28 = 4704 bytes does not fit act_buffer_bytes=4096"),
    (AccelConfig(act_buffer_bytes=1000),
     r"layer q_conv1_acc: input map 1x32x32 = 1024 bytes does not fit act_buffer_bytes=1000"),
    (AccelConfig(weight_buffer_entries=2048),
     r"layer q_conv3: one channel group is T = 50 term blocks, more than the weight ring's 32 words "
     r"\(weight_buffer_entries=2048, 64 entries a word\)"),
    (AccelConfig(max_kernel=3), r"layer q_conv1_acc: kernel 5x5 exceeds max_kernel=3"),
])
def test_buffers_and_kernel_limits(config, message):
    with pytest.raises(AcceleratorError, match=message):
        compile_graph(golden("lenet5_w8a8"), config)


def test_pool_kernel_limit_and_exact_fit():
    g = golden("maxpool5")   # conv 3x3, maxpool 5x5, linear on 1x12x12
    with pytest.raises(AcceleratorError, match=r"layer _2: kernel 5x5 exceeds max_kernel=4"):
        compile_graph(g, AccelConfig(max_kernel=4))
    # The conv's input (1x12x12 = 144 bytes) and output (2x10x10 = 200 bytes) are live together:
    # an activation memory of exactly 344 bytes is enough.
    p = compile_graph(g, AccelConfig(act_buffer_bytes=344))
    assert len(p.layers) == 3 and p.metadata["activation_memory"]["bytes"] == 344  # conv, pool, linear
    conv, pool, fc = p.layers
    assert (conv.in_base, conv.out_base, pool.in_base, pool.out_base, fc.in_base) == (200, 0, 0, 200, 200)
    with pytest.raises(AcceleratorError, match=r"layer q_0_acc: the activation memory does not fit: the input codes "
                                               r"\(1x12x12 = 144 bytes\) would occupy bytes 200..343 while 344 bytes of "
                                               r"maps are live at this layer; the allocation needs 344 bytes, "
                                               r"act_buffer_bytes=343"):
        compile_graph(g, AccelConfig(act_buffer_bytes=343))
    with pytest.raises(AcceleratorError, match=r"output map 2x10x10 = 200 bytes does not fit act_buffer_bytes=199"):
        compile_graph(g, AccelConfig(act_buffer_bytes=199))


def test_unsupported_graphs():
    dilated = golden("dilated_conv")
    with pytest.raises(AcceleratorError, match=r"layer q_0_acc: dilated convolution"):
        compile_graph(dilated, AccelConfig())


def test_grouped_reorg_and_concat_golden_graphs_compile():
    grouped = compile_graph(golden("grouped_conv"), AccelConfig())
    conv = grouped.layers[0]
    assert conv.groups == 2 and conv.terms == (conv.in_ch // 2) * conv.kh * conv.kw
    half = conv.in_ch // 2 * conv.in_h * conv.in_w
    assert conv.channel_map.tolist() == [conv.in_base] * (conv.out_ch // 2) + [conv.in_base + half] * (conv.out_ch // 2)
    reorg = compile_graph(golden("reorg"), AccelConfig())
    assert [l.kind for l in reorg.layers] == ["conv", "reorg", "conv"]
    concat = compile_graph(golden("concat"), AccelConfig())
    # the Concat is free: q_a's regrid (cat_in0) and q_b are written side by side into its region
    assert [l.kind for l in concat.layers] == ["conv", "conv", "requant", "conv"]
    by = {l.name: l for l in concat.layers}
    fc = concat.layers[-1]
    assert by["cat_in0"].out_base == fc.in_base and by["q_b"].out_base == fc.in_base + by["cat_in0"].out_elems


def test_codebook_of_three_bits_is_rejected():
    g = golden("lenet5_clipq_3bit")   # conv3: a 3-bit codebook
    with pytest.raises(AcceleratorError, match=r"layer q_conv3_acc: 3-bit codebook with \d entries; the decoder "
                                               r"takes 2-bit indices into 4 values"):
        compile_graph(g, AccelConfig())


def test_wide_weights_codes_multiplier_and_accumulator():
    with pytest.raises(AcceleratorError, match=r"layer q_conv1_acc: 12-bit weights"):
        compile_graph(golden("lenet5_w12"), AccelConfig())
    with pytest.raises(AcceleratorError, match=r"10-bit codes; activations are at most 8 bits"):
        compile_graph(golden("lenet5_w12a10"), AccelConfig())   # the 10-bit input codes are refused first
    g = golden("lenet5_bias_w8a8")
    g.params["q_conv2_acc.bias"] = g.params["q_conv2_acc.bias"].clone()
    g.params["q_conv2_acc.bias"][3] = 2**31 - 100
    with pytest.raises(AcceleratorError, match=r"layer q_conv2_acc: accumulator bound .* = \d+ exceeds the 32-bit "
                                               r"accumulator \(max 2147483647\)"):
        compile_graph(g, AccelConfig())
    g = golden("lenet5_w8a8")
    key = next(n.params["multiplier"] for n in g.nodes if n.name == "q_conv1")
    g.params[key] = torch.full_like(g.params[key], 2**31)
    with pytest.raises(AcceleratorError, match=r"layer q_conv1: multiplier 2147483648 does not fit the 32-bit"):
        compile_graph(g, AccelConfig())


# -- cycle formulas (§5) ----------------------------------------------------------------------

def _tiny_layer(**kw):
    """conv 3x5x5 -> 10x3x3, 3x3 kernel: K = 27 terms, P = 9 pixels."""
    fields = dict(index=0, name="t", kind="conv", in_ch=3, in_h=5, in_w=5, out_ch=10, out_h=3, out_w=3, kh=3, kw=3,
                  weight_bits=8, weights=np.zeros((10, 27), dtype=np.int64), bias=np.zeros(10, dtype=np.int64),
                  multiplier=np.ones(10, dtype=np.int64), shift=np.zeros(10, dtype=np.int64))
    return Layer(**{**fields, **kw})


def test_cycles_of_a_tiny_layer_by_hand():
    config = AccelConfig(pe=4, simd=8, bus_bits=64)
    # R=4, C=8: T = ceil(27/8) = 4, G = ceil(10/4) = 3, P = 9; a term block is 4·8 bytes = 4 bus words.
    # Alone, the loader starts with the layer: its 12 blocks (48 words) are in long before the 52 param
    # cycles and the 10 input cycles end, so the array never waits.
    assert layer_cycles(_tiny_layer(), config, first=True) == {
        "param": 22 + 3 * 10, "codebook": 0, "input": math.ceil(75 * 8 / 64),    # 10 words of 8 bytes
        "weights": 0, "compute": 3 * 9 * 4, "drain": 3, "next": 1}   # a pixel drains in the next one's first cycle
    codebook = _tiny_layer(codebook=np.array([-3, -1, 0, 2]))
    c = layer_cycles(codebook, config, first=False)
    assert (c["input"], c["codebook"], c["weights"]) == (0, 4, 0)
    pool = Layer(index=1, name="p", kind="maxpool", in_ch=10, in_h=3, in_w=3, out_ch=10, out_h=1, out_w=1, kh=3, kw=3)
    assert layer_cycles(pool, config, first=False) == {
        "param": 22, "codebook": 0, "input": 0, "weights": 0, "compute": 3 * 1 * 9, "drain": 3, "next": 1}
    total = program_cycles(Program(config, [_tiny_layer(), pool], "in"))
    assert total["total"] == (52 + 10 + 0 + 108 + 3 + 1) + (22 + 27 + 3 + 1) + 1 == 228
    assert total["layers"][0]["utilisation"] == pytest.approx(10 * 9 * 27 / (4 * 8 * 108))
    assert total["utilisation"] == pytest.approx(10 * 9 * 27 / (4 * 8 * 228))
    assert total["fps"] == pytest.approx(200e6 / 228)
    assert sum(r["share"] for r in total["layers"]) == pytest.approx(1 - 1 / 228)


def test_a_ring_of_one_group_waits_for_every_later_load():
    # weight_buffer_entries=128: a ring of 128 / 32 = 4 words, one group (T = 4). Blocks 0-3 load in
    # cycles 0-15; group 0 computes from cycle 52 (after PARAM) for 36 + 1 cycles, to 89. Only then are
    # its words free: blocks 4-7 load in 89-104, group 1 waits 16 cycles and runs 105-141; blocks 8-11
    # load in 142-157, group 2 waits 16 and runs 158-194.
    small = AccelConfig(pe=4, simd=8, bus_bits=64, weight_buffer_entries=128)
    assert layer_cycles(_tiny_layer(), small, first=False)["weights"] == 2 * 16
    # Two groups' words (256 entries): blocks 8-11 load while group 1 computes, as soon as group 0 frees its
    # words at 89 (89-104), before group 1 ends at 126: no wait.
    assert layer_cycles(_tiny_layer(), replace(small, weight_buffer_entries=256), first=False)["weights"] == 0
    # Not even one group fits: the compiler says so.
    with pytest.raises(AcceleratorError, match=r"T = 4 term blocks, more than the weight ring's 2 words"):
        program = Program(replace(small, weight_buffer_entries=64), [_tiny_layer()], "in")
        check_weight_ring(program)


def test_the_loader_pauses_while_the_image_loads():
    # 6x5x5 -> 4x3x3 on a 32-bit bus: T = ceil(54/8) = 7 blocks of 32 bytes = 8 words, one group.
    # PARAM takes 22 + 12 = 34 cycles (words 0-33: blocks 0-3 and two words of block 4), INPUT
    # ceil(150·8/32) = 38 cycles (34-71) holds the bus; block 4's other six words load in 72-77, blocks 5
    # and 6 in 78-93, so the array, ready at 72, waits 22 cycles.
    layer = _tiny_layer(in_ch=6, out_ch=4, weights=np.zeros((4, 54), dtype=np.int64), bias=np.zeros(4, dtype=np.int64),
                        multiplier=np.ones(4, dtype=np.int64), shift=np.zeros(4, dtype=np.int64))
    c = layer_cycles(layer, AccelConfig(pe=4, simd=8, bus_bits=32), first=True)
    assert (c["param"], c["input"], c["weights"], c["compute"]) == (34, 38, 22, 9 * 7)


def test_the_weight_ring_hides_lenets_loads():
    c = program_cycles(compile_graph(golden("lenet5_w8a8"), AccelConfig()))
    rows = {r["name"]: r for r in c["layers"]}
    # The loader runs ahead through conv1, the pools and conv2 (4,500 cycles of compute) and fills the
    # ring (512 words of one 16-channel block) with conv3's 400 blocks: conv3, fully packed (mode 2),
    # never waits; fc1's 90 blocks (15 words each) only start once conv3's groups free their words.
    assert [rows[n]["packing"] for n in ("q_conv2", "q_conv3", "q_fc1")] == [2, 2, 2]
    assert [rows[n]["weights"] for n in ("q_conv1", "q_conv2", "q_conv3")] == [0, 0, 0]
    assert rows["q_fc1"]["weights"] > 0 and c["total"] == 8494
    # With a ring of a quarter of that, conv3 waits for most of its loads.
    small = program_cycles(compile_graph(golden("lenet5_w8a8"), AccelConfig(weight_buffer_entries=16384)))
    assert small["layers"][4]["weights"] > 3000 and small["total"] > c["total"]


def test_lenet_cycles_formula():
    p = compile_graph(golden("lenet5_w8a8"), AccelConfig())
    c = program_cycles(p)
    conv1 = c["layers"][0]  # 1x32x32 -> 6x28x28, 5x5: K=25, T=4, G=1, P=784; its 32 words load during PARAM
    assert (conv1["param"], conv1["input"], conv1["weights"], conv1["compute"], conv1["drain"]) == (
        22 + 18, 1024 * 8 // 64, 0, 784 * 4, 1)   # drain: the last pixel's write
    assert c["total"] == sum(r["cycles"] for r in c["layers"]) + 1
    assert c["macs"] == 6 * 784 * 25 + 16 * 100 * 150 + 120 * 400 + 84 * 120 + 10 * 84


# -- memory files (§6) --------------------------------------------------------------------------

def test_packing_puts_element_zero_in_the_low_bits():
    assert pack_elements(np.array([1, 2, -1]), 8, 64) == [0xFF0201]
    assert pack_elements(np.array([1, 2, 3, 0, 1]), 2, 32) == [1 | 2 << 2 | 3 << 4 | 1 << 8]
    words = pack_elements(np.arange(-20, 20), 8, 128)
    assert len(words) == 3 and words[0] & 0xFF == 256 - 20
    np.testing.assert_array_equal(unpack_elements(words, 8, 128, 40, signed=True), np.arange(-20, 20))


def _assert_same_program(a: Program, b: Program):
    assert a.config == b.config and a.input_name == b.input_name and len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        for f in Layer.__dataclass_fields__:
            u, v = getattr(x, f), getattr(y, f)
            if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                assert u is not None and v is not None, (x.name, f)
                np.testing.assert_array_equal(u, v, err_msg=f"{x.name}.{f}")
            else:
                assert u == v, (x.name, f, u, v)


@pytest.mark.parametrize("which", ["dense", "codebook"])
def test_memory_files_round_trip(tmp_path, which):
    g = golden("lenet5_bias_asym" if which == "dense" else "lenet5_clipq")
    config = AccelConfig(pe=4, simd=16, bus_bits=128)
    x = torch.randn(3, 1, 32, 32)
    doc = export_memory(g, x, tmp_path, config)
    program = compile_graph(g, config)
    _assert_same_program(read_program(tmp_path), program)
    outputs = engine.run(g, x, return_all=True)
    np.testing.assert_array_equal(read_input_codes(tmp_path), outputs[program.input_name].numpy())
    for layer in program.layers:
        np.testing.assert_array_equal(read_expected(tmp_path, layer.index).reshape(3, -1),
                                      outputs[layer.name].reshape(3, -1).numpy())
    assert (tmp_path / "Out32.hex").read_text() == (tmp_path / "expected/L06.hex").read_text()
    assert set(doc["files"]) >= {"param.hex", "In8.hex", "Out32.hex", "program.json"} - {"program.json"}
    assert (tmp_path / "W2.hex").is_file() == (tmp_path / "CB8.hex").is_file() == (which == "codebook")
    assert (tmp_path / "W8.hex").is_file()  # the dense fc2 of the codebook graph too
    # every line is one word of the file's width
    assert {len(s) for s in (tmp_path / "In8.hex").read_text().split()} == {32}
    assert {len(s) for s in (tmp_path / "param.hex").read_text().split()} == {8}
    assert {len(s) for s in (tmp_path / "expected/L00.hex").read_text().split()} == {2}
    param = read_hex(tmp_path / "param.hex", 32)
    assert param[0] == 7 and len(param) == 1 + 22 * 7 + 3 * sum(l.out_ch for l in program.layers if l.kind == "conv")
    assert doc["cycles"]["total"] == program_cycles(program)["total"]
    if which == "codebook":
        cb = read_hex(tmp_path / "CB8.hex", 8)
        assert len(cb) == 16 and [v - 256 if v > 127 else v for v in cb[:4]] == program.layers[0].codebook.tolist()


def test_descriptor_words_of_the_first_layer(tmp_path):
    g = golden("lenet5_w8a8")
    program = compile_graph(g, AccelConfig())
    write_memory(program, torch.zeros((1, 1, 32, 32), dtype=torch.int64), tmp_path)
    param = read_hex(tmp_path / "param.hex", 32)
    d = param[1:23]
    assert d[0] == 0 | 1 << 10              # conv, input signed, output unsigned, dense, requant
    assert d[1:7] == [1, 32, 32, 6, 28, 28]
    assert d[7] == 5 | 5 << 8 | 1 << 16 | 1 << 24 and d[8] == 8 << 16 | 1 << 24   # 8-bit weights, packing 1
    assert d[13] == 0 and d[14] == 1 + 22 * 7 and d[15] == 0
    # activation addresses: the input codes and conv1's output are live together and do not overlap
    conv1 = program.layers[0]
    assert d[16:19] == [conv1.in_base, 0, conv1.out_base] and d[19:22] == [0, 0, 1]
    assert {conv1.in_base, conv1.out_base} == {0, 6 * 28 * 28}
    assert param[23] == 1                   # pool1: maxpool, no flags
    last = param[1 + 22 * 6 : 1 + 22 * 7]
    assert last[0] & (1 << 9) and last[0] & (1 << 11)   # raw 32-bit output, signed
    assert not (tmp_path / "expected").exists() and not (tmp_path / "W2.hex").exists()


# -- packed MACs (§3) ---------------------------------------------------------------------------

def _conv_of(name: str, layer_name: str, config=AccelConfig()):
    return next(l for l in compile_graph(golden(name), config).layers if l.name == layer_name)


def test_allowed_packings_follow_the_product_fields():
    from bitsmith.accel.compiler import allowed_packings
    w8 = _conv_of("lenet5_w8a8", "q_conv2")
    assert allowed_packings(w8, (-255, 255)) == [1, 2]          # 8-bit × 10-bit d: 18-bit fields only
    w4 = _conv_of("lenet5_w4a4_pc", "q_conv2")
    assert allowed_packings(w4, (0, 15)) == [1, 2, 4]           # |w·d| ≤ 8·15 fits 9 bits
    assert allowed_packings(w4, (-16, 15)) == [1, 2, 4]         # 8·16 = 128 still fits
    assert allowed_packings(w4, (-32, 31)) == [1, 2]            # 8·32 = 256 does not
    # a grouped conv packs channel pairs only inside one convolution group
    grouped = _conv_of("grouped_conv", "q_0")
    assert grouped.groups == 2 and grouped.out_ch // grouped.groups == 2
    assert grouped.weight_bits == 8 and allowed_packings(grouped, (-255, 255)) == [1, 2]
    odd = Layer(index=0, name="dw", kind="conv", in_ch=3, in_h=4, in_w=4, out_ch=3, out_h=4, out_w=4,
                groups=3, weight_bits=4, weights=np.zeros((3, 1), dtype=np.int64))
    assert allowed_packings(odd, (0, 15)) == [1]                # depthwise: no pair shares an input


def test_the_compiler_picks_the_fastest_allowed_mode():
    from bitsmith.accel.compiler import choose_packing, packed_cycles
    config = AccelConfig()
    program = compile_graph(golden("lenet5_w4a4_pc"), config)
    assert [l.packing for l in program.layers if l.kind == "conv"] == [4, 4, 2, 2, 2]
    for layer in (l for l in program.layers if l.kind == "conv"):
        chosen = layer.packing
        cycles = {}
        for mode in (1, 2, 4):
            layer.packing = mode
            cycles[mode] = packed_cycles(layer, config)
            # the compiler's figure is the §5 compute + drain (the loads overlap across layers)
            phases = layer_cycles(layer, config, first=False)
            assert cycles[mode] == phases["compute"] + phases["drain"]
        layer.packing = chosen
        assert cycles[chosen] == min(cycles.values())
        assert choose_packing(layer, (-8, 7), config) == chosen
    # q_conv3 (one pixel, 400 terms): mode 4 packs no second pixel, so mode 2 (the narrower) wins the tie
    conv3 = next(l for l in program.layers if l.name == "q_conv3")
    conv3.packing = 4
    assert packed_cycles(conv3, config) == packed_cycles(replace(conv3, packing=2), config)


def test_weights_are_stored_at_their_width_and_read_back(tmp_path):
    from bitsmith.accel.compiler import storage_bits
    from bitsmith.accel.memory import read_program
    from bitsmith.accel.compiler import block_words
    g = golden("lenet5_mixed")    # weight widths 2, 5, 3, 7, 8
    config = AccelConfig(pe=4, simd=4)
    program = compile_graph(g, config)
    convs = [l for l in program.layers if l.kind == "conv"]
    assert [storage_bits(l) for l in convs] == [2, 8, 4, 8, 8]
    # a term block of R'·C weights at b bits, whole bus words: conv1 (2-bit, mode 2 at 4×4: 8 channels)
    # 8·4·2 = 64 bits, one word; conv2 (8-bit storage, mode 4: 8 channels) 256 bits, four words
    assert convs[0].packing == 2 and block_words(convs[0], config) == 1
    assert convs[1].packing == 4 and block_words(convs[1], config) == 4
    x = torch.rand(2, 1, 32, 32)
    export_memory(g, x, tmp_path, config)
    back = read_program(tmp_path)
    for a, b in zip(program.layers, back.layers):
        assert a.packing == b.packing
        if a.kind == "conv":
            assert np.array_equal(a.weights, b.weights)


def test_a_descriptor_with_an_unknown_packing_mode_is_refused():
    from bitsmith.accel.config import DESCRIPTOR_WORDS
    from bitsmith.accel.memory import build_memory, decode_descriptor
    from bitsmith.errors import DataError
    words = build_memory(compile_graph(golden("lenet5_w8a8"), AccelConfig())).param[1 : 1 + DESCRIPTOR_WORDS]
    assert decode_descriptor(words)["packing"] == 1
    words[8] = (words[8] & 0xFFFFFF) | 3 << 24
    with pytest.raises(DataError, match="packing mode 3"):
        decode_descriptor(words)


def _pe_fields(w_lo, w_hi, d_p, d_q, quad: bool):
    """The products bitsmith_pe.v splits out of its one 27×18 product, bit for bit (numpy int64):
    mode 2 → (w_lo·d_p, w_hi·d_p), mode 4 → (w_lo·d_p, w_lo·d_q, w_hi·d_p, w_hi·d_q)."""
    def signed(v, bits):
        v = v & ((1 << bits) - 1)
        return np.where(v >> (bits - 1), v - (1 << bits), v)
    a = w_hi * (1 << 18) + w_lo
    b = d_q * (1 << 9) + d_p if quad else d_p
    p = a * b                                           # |p| < 2^44: exact in int64
    if not quad:
        return signed(p, 18), signed(((p >> 18) & ((1 << 18) - 1)) + ((p >> 17) & 1), 18)
    r1 = (((p >> 9) & ((1 << 27) - 1)) + ((p >> 8) & 1)) & ((1 << 27) - 1)
    r2 = (((r1 >> 9) & ((1 << 18) - 1)) + ((r1 >> 8) & 1)) & ((1 << 18) - 1)
    r3 = ((r2 >> 9) + ((r2 >> 8) & 1)) & 511
    return signed(p, 9), signed(r1, 9), signed(r2, 9), signed(r3, 9)


def test_packed_fields_are_exact_wherever_the_compiler_allows_the_mode():
    from bitsmith.accel.compiler import allowed_packings
    # mode 2: every 8-bit weight pair × every 10-bit d (|d| ≤ 255), exhaustively
    d = np.arange(-255, 256, dtype=np.int64)
    w = np.arange(-128, 128, dtype=np.int64)
    w_lo, d_p = np.meshgrid(w, d, indexing="ij")
    for w_hi in range(-128, 128):
        lo, hi = _pe_fields(w_lo, w_hi, d_p, 0, quad=False)
        assert np.array_equal(lo, w_lo * d_p) and np.array_equal(hi, w_hi * d_p), w_hi
    # mode 4: for 2-, 3- and 4-bit weights, the widest symmetric d range the compiler allows, exhaustively
    for bits in (2, 3, 4):
        layer = Layer(index=0, name="l", kind="conv", in_ch=1, in_h=1, in_w=1, out_ch=2, out_h=1, out_w=1,
                      weight_bits=bits, weights=np.zeros((2, 1), dtype=np.int64))
        widest = max(r for r in range(1, 256) if 4 in allowed_packings(layer, (-r, r)))
        assert 4 not in allowed_packings(layer, (-widest - 1, widest + 1))
        ws = np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)
        ds = np.arange(-widest, widest + 1, dtype=np.int64)
        w_lo, w_hi, d_p, d_q = (v.reshape(-1) for v in np.meshgrid(ws, ws, ds, ds, indexing="ij"))
        got = _pe_fields(w_lo, w_hi, d_p, d_q, quad=True)
        for field, want in zip(got, (w_lo * d_p, w_lo * d_q, w_hi * d_p, w_hi * d_q)):
            assert np.array_equal(field, want), bits
        # one step past the allowed range some field is wrong: the check is tight
        edge = _pe_fields(np.int64(-(1 << (bits - 1))), np.int64(0), np.int64(-widest - 1), np.int64(0), quad=True)
        assert edge[0] != (1 << (bits - 1)) * (widest + 1)


def test_descriptor_fields_the_rtl_reads_narrow_are_checked():
    """The RTL reads a map's height and width as 16-bit fields and a conv's input channels per group
    as a 24-bit one (docs/hardware.md §6): a layer beyond them is refused, not silently truncated."""
    from bitsmith.accel.compiler import MAX_GROUP_CHANNELS, MAX_MAP_SIDE, _check_limits
    from bitsmith.accel.program import Layer

    def conv(in_ch, side):
        return Layer(index=0, name="x", kind="conv", in_ch=in_ch, in_h=1, in_w=side, out_ch=1, out_h=1, out_w=side,
                     weight_bits=8, weights=np.zeros((1, 1), dtype=np.int64))

    big = AccelConfig(act_buffer_bytes=1 << 26)
    _check_limits(conv(1, MAX_MAP_SIDE), "x", big)
    with pytest.raises(AcceleratorError, match="a map side above 65535 .*16-bit height and width"):
        _check_limits(conv(1, MAX_MAP_SIDE + 1), "x", big)
    _check_limits(conv(MAX_GROUP_CHANNELS, 1), "x", big)
    with pytest.raises(AcceleratorError, match="16777216 input channels per group exceed 16777215"):
        _check_limits(conv(MAX_GROUP_CHANNELS + 1, 1), "x", big)
