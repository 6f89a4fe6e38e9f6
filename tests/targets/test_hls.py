"""HLS export (docs/hls.md): the files parse back to the exact integers, the numpy model of the
files equals the integer engine on every layer of golden and random graphs, the requant mapping is
exact, and the format's rules are enforced. The g++-compiled C++ reference is
tests/targets/test_hls_graphs.py."""

import copy
import json
import re

import numpy as np
import pytest
import torch

from bitsmith.errors import AcceleratorError, ConfigError, DataError
from bitsmith.integer import engine
from bitsmith.integer.arithmetic import requantize
from bitsmith.targets.hls import (export_hls, fold_requant, hls_layers, hls_requant, read_hls, run_hls_layers,
                                  signed_width)
from bitsmith.verify import compare
from tests.helpers import golden
from tests.random_graphs import GraphMaker, random_graph
from tests.targets.hls_graphs import mixed_graph

# Random graphs (tests/random_graphs.py) whose parsed files the numpy model runs: cheap, so many.
RANDOM_SEEDS = range(40)

# Golden graphs (tests/golden/README.md).
GRAPHS = {
    "lenet_w8a8": "lenet5_w8a8",
    # per-channel 4-bit weights, 4-bit activations, bias, unsigned input with a zero point
    "lenet_w4a4_pc_bias_asym": "lenet5_w4a4_pc_asym",
    "lenet_clipq": "lenet5_clipq",
    # per-layer weight / activation widths (W_BIT, IN_BIT per CONV_n), as a mixed-precision search gives them
    "lenet_mixed": "lenet5_mixed",
    # padded 3x3 convs whose input has a zero point (PAD_VAL), BN-folded biases, a Linear after a
    # Flatten of a 256x4x4 map (CHW order)
    "vgg_tiny_asym": "vgg_tiny_bn",
    # Reorg of conv4's output, a lone Requant moving conv7's output onto the Concat's grid, the Concat
    "ultranet_bypass": "ultranet_bypass_32x64",
}


@pytest.fixture(scope="module")
def graphs():
    return {name: golden(graph) for name, graph in GRAPHS.items()}


def _engine(g, images=6, seed=1):
    x = torch.randn((images,) + tuple(g.input_spec.shape), generator=torch.Generator().manual_seed(seed)) * 1.5
    return {k: v.numpy() for k, v in engine.run(g, x, return_all=True).items()}


# -- parse back, recompute, compare -------------------------------------------------------------

def _producer(g, name):
    return next(n for n in g.nodes if n.output == name)


def _expected_parameters(g, layer):
    """(weights [och, K] in [kc][kr][ich/groups] order, inc, bias, T) of a parsed CONV_n / ADD_n,
    straight from the graph by docs/hls.md's formulas."""
    node = _producer(g, layer.name)
    requant = node if node.op == "Requant" else None
    if layer.kind == "add" or (requant is not None and layer.op != "Requant"):
        node = _producer(g, requant.inputs[0])    # the accumulating node before its Requant
    if layer.kind == "add":
        z_a, z_b = (g.tensors[i].zero_point for i in node.inputs)
        m_a, m_b = g.params[node.params["multiplier"]].tolist()
        assert (layer.m_a, layer.m_b) == (m_a, m_b)
        weights, bias_acc = None, [-(z_a * m_a + z_b * m_b)] * layer.ofm_ch
    else:
        assert layer.op == node.op
        if node.op in ("Conv2d", "Linear"):
            w = g.weight_codes(node).long().numpy().reshape(layer.ofm_ch, -1, layer.k, layer.k)
            b = g.params[node.params["bias"]].long().numpy() if "bias" in node.params else 0
        else:  # AvgPool2d / lone Requant: a depthwise conv of ones
            w, b = np.ones((layer.ofm_ch, 1, layer.k, layer.k), dtype=np.int64), 0
        assert w.shape[1] == layer.ifm_ch // layer.groups
        z_in = g.tensors[node.inputs[0]].zero_point
        assert layer.pad_val == z_in
        weights = w.transpose(0, 3, 2, 1).reshape(layer.ofm_ch, -1)
        bias_acc = [int(v) for v in b - z_in * weights.sum(axis=1)]
    if requant is None:
        return weights, [1] * layer.ofm_ch, bias_acc, 0
    m, s = (g.params[requant.params[role]].expand(layer.ofm_ch).tolist() for role in ("multiplier", "shift"))
    T = max(s)
    inc = [mc * 2 ** (T - sc) for mc, sc in zip(m, s)]
    return weights, inc, [bc * ic + g.tensors[layer.name].zero_point * 2 ** T for bc, ic in zip(bias_acc, inc)], T


def _check_parsed_against_graph(g, written, parsed, x, name):
    """Every parsed layer's outputs equal the engine's, and its integers the graph's."""
    engine_out = {k: v.numpy() for k, v in engine.run(g, x, return_all=True).items()}
    outputs = run_hls_layers(parsed, engine_out[g.nodes[0].output])
    assert [l.name for l in parsed] == [l.name for l in written]
    for layer, got in zip(parsed, outputs):
        want = engine_out[layer.name].reshape(got.shape[0], -1)
        np.testing.assert_array_equal(got.reshape(got.shape[0], -1), want, err_msg=f"{name} {layer.macro} {layer.name}")
        if layer.kind in ("conv", "add"):
            weights, inc, bias, T = _expected_parameters(g, layer)
            if weights is not None:
                np.testing.assert_array_equal(layer.weights, weights, err_msg=f"{name} {layer.macro}")
            assert (layer.inc, layer.bias, layer.l_shift) == (inc, bias, T), f"{name} {layer.macro}"
    return engine_out, outputs


@pytest.mark.parametrize("name", list(GRAPHS))
def test_parsed_files_recompute_every_layer_like_the_engine(graphs, name, tmp_path):
    g = graphs[name]
    written = export_hls(g, tmp_path)
    parsed = read_hls(tmp_path)
    engine_out, outputs = _check_parsed_against_graph(g, written, parsed, _inputs(g), name)
    steps = [n for n in g.nodes if n.op in ("Requant", "MaxPool2d", "Reorg", "Concat")]
    assert [l.name for l in parsed] == [n.output for n in steps] + ([g.outputs[0]] if parsed[-1].raw else [])
    for layer, got in zip(parsed, outputs):
        assert len(np.unique(got)) > 1, f"{layer.name}: a constant layer would prove little"


def _inputs(g, images=6, seed=1):
    return torch.randn((images,) + tuple(g.input_spec.shape), generator=torch.Generator().manual_seed(seed)) * 1.5


def _extreme_inputs(g):
    """Images whose input codes are all qmin, all qmax, the zero point, a qmin/qmax checkerboard, and
    two uniform over the whole range: x = (q − z)·scale, which QuantizeInput maps back to q."""
    spec = g.tensors[g.nodes[0].output]
    shape = tuple(spec.shape)
    checker = (np.indices(shape).sum(axis=0) % 2) * (spec.qmax - spec.qmin) + spec.qmin
    rng = np.random.default_rng(0)
    codes = np.stack([np.full(shape, spec.qmin), np.full(shape, spec.qmax), np.full(shape, spec.zero_point), checker,
                      *rng.integers(spec.qmin, spec.qmax + 1, (2, *shape))])
    x = torch.from_numpy(((codes - spec.zero_point) * float(spec.scale)).astype(np.float32))
    assert np.array_equal(engine.run(g, x, return_all=True)[spec.name].numpy(), codes)
    return x


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_graphs_every_layer_from_the_parsed_files(seed, tmp_path):
    """Grouped / depthwise convs, asymmetric padding, Add, Concat (with regridded inputs), MaxPool,
    AvgPool, Reorg, clamps and Linear heads, any DAG: the parsed files recompute the engine, also on
    the extreme input codes, and their integers are the graph's."""
    g = random_graph(seed)
    written = export_hls(g, tmp_path)
    parsed = read_hls(tmp_path)
    for x in (_inputs(g, images=4, seed=seed), _extreme_inputs(g)):
        _check_parsed_against_graph(g, written, parsed, x, f"seed {seed}")


def test_the_random_graphs_cover_every_layer_kind_and_form():
    """RANDOM_SEEDS exercise what the random tests are named for."""
    seen = set()
    for seed in RANDOM_SEEDS:
        g = random_graph(seed)
        for layer in hls_layers(g):
            seen.add(layer.kind)
            if layer.kind == "conv":
                seen.add(layer.op)
                seen.add("depthwise" if layer.groups == layer.ifm_ch > 1 and layer.op == "Conv2d" else
                         "grouped" if 1 < layer.groups < layer.ifm_ch else "")
                seen.add("asymmetric" if len(set(layer.pads)) > 1 else "")
                seen.add("raw" if layer.raw else "")
                seen.add("zero point" if layer.pad_val else "")
        if any(len([m for m in g.nodes if name in m.inputs]) > 1 for name in (n.output for n in g.nodes)):
            seen.add("fan-out")
    assert seen >= {"conv", "pool", "reorg", "concat", "add", "Conv2d", "Linear", "AvgPool2d", "Requant", "depthwise",
                    "grouped", "asymmetric", "raw", "zero point", "fan-out"}, seen


def test_the_cases_cover_zero_points_padding_codebooks_and_per_channel(graphs, tmp_path):
    """The parametrized graphs really exercise what they are named for."""
    asym = hls_layers(graphs["lenet_w4a4_pc_bias_asym"])
    assert asym[0].pad_val != 0 and len(set(asym[0].inc)) > 1 and any(asym[0].bias)
    vgg = hls_layers(graphs["vgg_tiny_asym"])
    assert vgg[0].p == 1 and vgg[0].pad_val != 0
    assert any(n.attrs.get("weight_format") == "codebook" for n in graphs["lenet_clipq"].nodes)
    assert hls_layers(graphs["lenet_w8a8"])[-1].raw
    bypass = {l.macro: l for l in hls_layers(graphs["ultranet_bypass"])}
    assert bypass["REORG_0"].inputs == ("q_stem_conv4",) and bypass["CONV_7"].op == "Requant"
    assert bypass["CONCAT_0"].inputs == ("reorg", "cat_in1") and bypass["CONCAT_0"].in_chs == (256, 64)
    assert bypass["CONV_8"].inputs == ("cat",) and bypass["CONV_8"].ifm_ch == 320


def test_weight_words_follow_the_source_layout(graphs, tmp_path):
    """Read conv_1's hex words straight from weights.hpp and check every field by its definition:
    lane p, word r*K/SIMD + j, field e holds w[o = r*PE + p, ic, kr, kc] of term t = j*SIMD + e,
    t = (kc*k + kr)*ich + ic, two's complement W_BIT bits, element 0 lowest."""
    g = graphs["lenet_w8a8"]
    export_hls(g, tmp_path, layers={"q_conv2": {"simd": 10, "pe": 4}})
    text = (tmp_path / "weights.hpp").read_text()
    head = re.search(r"const ap_uint<(\d+)> conv_1_w\[(\d+)\]\[(\d+)\] = \{(.*?)\};", text, re.S)
    bits, pe, tiles = int(head[1]), int(head[2]), int(head[3])
    assert (bits, pe, tiles) == (8 * 10, 4, (16 // 4) * (6 * 25 // 10))
    lanes = [re.findall(r'"0x([0-9a-f]+)"', row) for row in re.findall(r"\{([^{}]*)\}", head[4])]
    assert all(len(h) == bits // 4 for lane in lanes for h in lane)
    w = g.weight_codes(next(n for n in g.nodes if n.name == "q_conv2_acc")).long().numpy()
    och, ich, k, _ = w.shape
    checked = 0
    for o in range(och):
        for t in range(ich * k * k):
            j, e = divmod(t, 10)
            word = int(lanes[o % 4][(o // 4) * (ich * k * k // 10) + j], 16)
            field = (word >> (8 * e)) & 0xFF
            kc, rest = divmod(t, k * ich)
            kr, ic = divmod(rest, ich)
            assert field - 256 * (field >> 7) == w[o, ic, kr, kc]
            checked += 1
    assert checked == w.size
    assert (tmp_path / "config_simd_pe.txt").read_text().splitlines()[:3] == ["simd pe", "5 6", "10 4"]


def _defines(text: str, macro: str) -> dict[str, str]:
    return dict(re.findall(rf"^#define {macro}_(\w+) (.+)$", text, re.M))


def test_config_h_describes_every_layer_kind_with_its_inputs(tmp_path):
    """docs/hls.md § Files on a graph holding one of each: the defines, their values, the X-macro."""
    g = mixed_graph()
    export_hls(g, tmp_path)
    config = (tmp_path / "config.h").read_text()
    depthwise = _defines(config, "CONV_1")
    assert depthwise["OP"] == '"Conv2d"' and depthwise["INPUT"] == '"conv1"'
    assert (depthwise["GROUPS"], depthwise["IFM_CH"], depthwise["OFM_CH"], depthwise["S"]) == ("6", "6", "6", "2")
    assert int(depthwise["W_TILES"]) == 6 // int(depthwise["PE"]) * 9 // int(depthwise["SIMD"])
    asym = _defines(config, "CONV_2")       # a 2x2 kernel padded as padding='same' does it
    assert (asym["K"], asym["P"], asym["P_LEFT"], asym["P_BOTTOM"], asym["P_RIGHT"]) == ("2", "0", "0", "1", "1")
    add = _defines(config, "ADD_0")
    m_a, m_b = g.params[next(n for n in g.nodes if n.op == "Add").params["multiplier"]].tolist()
    assert add["INPUTS"] == '"conv5", "conv7"' and (int(add["M_A"]), int(add["M_B"])) == (m_a, m_b)
    regrid = _defines(config, "CONV_4")
    assert regrid["OP"] == '"Requant"' and regrid["INPUT"] == '"conv3"'
    assert (regrid["K"], regrid["GROUPS"]) == ("1", "6")
    concat = _defines(config, "CONCAT_0")
    assert concat["INPUTS"] == '"add9", "regrid11"' and concat["IN_CH"] == "4, 6" and concat["OFM_CH"] == "10"
    reorg = _defines(config, "REORG_0")
    assert reorg["INPUT"] == '"cat12"' and (reorg["S"], reorg["OFM_CH"], reorg["OFM_ROW"]) == ("2", "40", "2")
    avg = _defines(config, "CONV_5")
    assert avg["OP"] == '"AvgPool2d"' and (avg["K"], avg["S"], avg["GROUPS"], avg["W_BIT"]) == ("2", "2", "40", "2")
    head = _defines(config, "CONV_6")
    assert head["OP"] == '"Linear"' and head["INPUT"] == '"avgpool14"' and head["RAW"] == "1" and head["IFM_CH"] == "40"
    assert '#define HLS_INPUT "codes"' in config and '#define HLS_OUTPUT "fc17"' in config
    order = re.search(r"#define HLS_LAYERS\(CONV, POOL, REORG, CONCAT, ADD\) \\\n((?:.*\\\n)+)", config)[1]
    assert order.split() == ["CONV(0)", "\\", "CONV(1)", "\\", "CONV(2)", "\\", "CONV(3)", "\\", "ADD(0)", "\\",
                             "CONV(4)", "\\", "CONCAT(0)", "\\", "REORG(0)", "\\", "CONV(5)", "\\", "CONV(6)", "\\"]
    weights = (tmp_path / "weights.hpp").read_text()
    assert re.search(r"const ap_int<\d+> add_0_inc\[1\]\[4\]", weights) and "const ap_uint<" in weights
    assert (tmp_path / "config_simd_pe.txt").read_text().count("\n") == 1 + 7      # a row per CONV_n


def test_depthwise_weight_words_follow_the_layout(tmp_path):
    """The depthwise layer's hex words, field by field: channel o's k·k terms (ich/groups = 1) in lane
    o % PE, term t = kc·k + kr."""
    g = mixed_graph()
    export_hls(g, tmp_path, layers={"conv3": {"simd": 3, "pe": 2}})
    text = (tmp_path / "weights.hpp").read_text()
    head = re.search(r"const ap_uint<(\d+)> conv_1_w\[(\d+)\]\[(\d+)\] = \{(.*?)\};", text, re.S)
    assert (int(head[1]), int(head[2]), int(head[3])) == (8 * 3, 2, 3 * 3)
    lanes = [re.findall(r'"0x([0-9a-f]+)"', row) for row in re.findall(r"\{([^{}]*)\}", head[4])]
    w = g.weight_codes(next(n for n in g.nodes if n.name == "conv3_acc")).long().numpy()
    assert w.shape == (6, 1, 3, 3)
    for o in range(6):
        for t in range(9):
            j, e = divmod(t, 3)
            field = (int(lanes[o % 2][(o // 2) * 3 + j], 16) >> (8 * e)) & 0xFF
            kc, kr = divmod(t, 3)
            assert field - 256 * (field >> 7) == w[o, 0, kr, kc]


def test_cli_writes_the_files_without_check(tmp_path):
    """`bitsmith hw hls GRAPH --out DIR` (no --check, no g++ needed) writes the three files and lists the layers."""
    from tests.helpers import invoke

    mixed_graph().save(tmp_path / "g")
    result = invoke("hw", "hls", tmp_path / "g", "--out", tmp_path / "hls")
    assert result.exit_code == 0, result.output
    assert "HLS export of" in result.output
    result = invoke("hw", "hls", tmp_path / "g", "--out", tmp_path / "hls", "--force", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert "REORG_0 reorg13" in report["layers"] and "ADD_0 add9" in report["layers"] and report["written"]
    assert {p.name for p in (tmp_path / "hls").iterdir()} >= {"config.h", "weights.hpp", "config_simd_pe.txt"}
    assert [l.macro for l in read_hls(tmp_path / "hls")][-3:] == ["REORG_0", "CONV_5", "CONV_6"]


def test_a_wrong_parameter_is_caught_by_the_comparison(graphs, tmp_path):
    g = graphs["lenet_w8a8"]
    export_hls(g, tmp_path)
    parsed = read_hls(tmp_path)
    engine = _engine(g)
    bad = copy.deepcopy(parsed)
    bad[2].bias[3] += 1 << bad[2].l_shift  # one code higher on one channel of conv2
    got = run_hls_layers(bad, engine[g.nodes[0].output])
    rows = [compare(values, engine[layer.name]) for layer, values in zip(bad, got)]   # (elements, mismatches, first)
    assert rows[0][1] == 0 and rows[2][1] > 0
    assert rows[2][2]["got"] != rows[2][2]["want"] and set(rows[2][2]) >= {"image", "channel", "y", "x"}


# -- the requant mapping -------------------------------------------------------------------------

def test_fold_requant_is_exact_on_adversarial_accumulators():
    rng = np.random.default_rng(0)
    # per-channel (m, s): s = 0 (no rounding term), small s (many ties), s = 62, m = 0, extremes of m
    m = [1, 3, 0, (1 << 31) - 1, 1 << 30, 1, 5, (1 << 31) - 1, 1]
    s = [0, 1, 5, 31, 40, 62, 2, 62, 3]
    bias = [0, -7, 100, -(1 << 20), 12345, 1, -3, 0, 4]
    ties = [-12, -4, -3, -1, 0, 1, 3, 4, 12, -2, 2, 6, -6]
    # acc + B must stay a 32-bit accumulator on every channel: the extremes reach -2^31 and 2^31 - 1
    extremes = [-(1 << 31) - min(bias), -(1 << 31) - min(bias) + 1, (1 << 31) - 1 - max(bias), 1 << 30, -(1 << 30)]
    acc = np.array(ties + extremes + rng.integers(-(1 << 31) + (1 << 21), (1 << 31) - (1 << 21), 200).tolist(),
                   dtype=np.int64)
    for z_out, lo, hi in [(0, -128, 127), (-5, -128, 127), (3, 0, 255), (0, -(1 << 31), (1 << 31) - 1)]:
        inc, folded, T = fold_requant(bias, m, s, z_out)
        assert T == 62
        acc_col = acc.astype(object).reshape(-1, 1)
        got = hls_requant(acc_col, np.array(inc, dtype=object), np.array(folded, dtype=object), T, lo, hi)
        with_bias = torch.from_numpy(acc).reshape(-1, 1) + torch.tensor(bias)
        assert int(with_bias.min()) == -(1 << 31) and int(with_bias.max()) == (1 << 31) - 1
        want = requantize(with_bias, torch.tensor(m), torch.tensor(s), z_out, lo, hi)
        np.testing.assert_array_equal(got.astype(np.int64), want.numpy(), err_msg=f"z_out {z_out}")
        assert len(np.unique(want.numpy())) > 10


def test_fold_requant_per_tensor_and_rounding_ties():
    # m = 1, s = 2: acc/4 rounded half up; 2 → 1 (0.5 up), -2 → 0 (-0.5 up), 6 → 2 (1.5 up)
    inc, bias, T = fold_requant([0], [1], [2], 0)
    assert (inc, bias, T) == ([1], [0], 2)
    got = hls_requant(np.array([2, -2, 6, -6, 1, -1, 3, -3]), 1, 0, T, -100, 100)
    assert got.tolist() == [1, 0, 2, -1, 0, 0, 1, -1]
    assert hls_requant(np.array([5, -5]), 3, 1, 0, -8, 8, clip=True).tolist() == [8, -8]
    assert hls_requant(np.array([5, -5]), 3, 1, 0, -8, 8, clip=False).tolist() == [16, -14]


def test_signed_width_is_minimal():
    assert [signed_width([v]) for v in (0, -1, 1, 127, -128, 128, -129)] == [1, 1, 2, 8, 8, 9, 9]
    assert signed_width([3, -100, 5]) == 8
    assert signed_width([1 << 40]) == 42


def test_inc_and_bias_widths_are_the_minimal_signed_widths(graphs, tmp_path):
    export_hls(graphs["lenet_w4a4_pc_bias_asym"], tmp_path)
    config = (tmp_path / "config.h").read_text()
    for layer in (l for l in read_hls(tmp_path) if l.kind == "conv"):
        for key, values in (("INC_BIT", layer.inc), ("BIAS_BIT", layer.bias)):
            bits = int(re.search(rf"#define {layer.macro}_{key} (\d+)", config)[1])
            fits = lambda b: all(-(1 << (b - 1)) <= v < (1 << (b - 1)) for v in values)
            assert fits(bits) and (bits == 1 or not fits(bits - 1)), (layer.name, key, bits)


# -- SIMD / PE and the format's limits -------------------------------------------------------------

def test_default_simd_pe_are_the_largest_divisors_within_the_caps(graphs):
    for cap_simd, cap_pe in [(8, 8), (16, 4), (1, 1), (1000, 1000)]:
        for layer in (l for l in hls_layers(graphs["lenet_w8a8"], cap_simd, cap_pe) if l.kind == "conv"):
            want_simd = max(d for d in range(1, cap_simd + 1) if layer.terms % d == 0)
            want_pe = max(d for d in range(1, cap_pe + 1) if layer.ofm_ch % d == 0)
            assert (layer.simd, layer.pe) == (want_simd, want_pe)


@pytest.mark.parametrize("forced, message", [
    ({"q_conv1": {"simd": 4}}, r"CONV_0.*SIMD 4 .*\(k\*k\*ich/groups\) % simd == 0.*5\*5\*1 = 25"),
    ({"q_conv1_acc": {"pe": 4}}, r"CONV_0.*PE 4 .*och % pe == 0.*och = 6"),
    ({"q_fc1": {"simd": 0}}, r"q_fc1.*positive integer"),
    ({"nope": {"simd": 1}}, r"unknown layer.*nope"),
    ({"q_conv1": {"lanes": 1}}, r"simd and/or pe"),
])
def test_forced_values_breaking_the_rules_are_config_errors(graphs, forced, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        export_hls(graphs["lenet_w8a8"], tmp_path, layers=forced)
    assert not (tmp_path / "config.h").exists()


@pytest.mark.parametrize("graph, message", [
    ("strided_padded", r"layer 'q_2_acc' has stride \[1, 2\].*one value for both axes"),   # conv 5x5, stride (1, 2)
    ("dilated_conv", r"layer 'q_0_acc' is dilated \(dilation \[2, 2\]\)"),
])
def test_shapes_the_format_cannot_hold_are_accelerator_errors_naming_the_layer(graph, message, tmp_path):
    with pytest.raises(AcceleratorError, match="HLS export: " + message):
        export_hls(golden(graph), tmp_path)
    assert not (tmp_path / "config.h").exists()


def test_non_square_windows_and_misplaced_accumulators_are_accelerator_errors(graphs):
    gm = GraphMaker(3)
    x = gm.input((2, 8, 12))
    g = gm.graph(gm.avgpool(gm.conv(x, 4, 3), 2, 3))     # a 2x3 average pool
    with pytest.raises(AcceleratorError, match=r"HLS export: layer 'avgpool3_acc' has kernel \[2, 3\]"):
        hls_layers(g)
    pool = next(n for n in g.nodes if n.op == "AvgPool2d")
    pool.op, pool.attrs = "MaxPool2d", {"kernel": [2, 2], "stride": [1, 2]}
    with pytest.raises(AcceleratorError, match=r"layer 'avgpool3_acc' has stride \[1, 2\]"):
        hls_layers(g)
    g = copy.copy(graphs["lenet_w8a8"])
    g.nodes = [n for n in graphs["lenet_w8a8"].nodes if n.name != "q_conv2"]  # conv2 without its Requant
    with pytest.raises(AcceleratorError, match="q_conv2_acc.*exactly one Requant"):
        hls_layers(g)


def test_every_op_of_the_ir_has_an_hls_layer_but_the_walks_own():
    from bitsmith.integer.chain import STRUCTURAL_OPS
    from bitsmith.integer.ops import OPS
    from bitsmith.targets.hls import EMIT

    assert set(EMIT.missing()) == {"QuantizeInput", "Flatten"} and set(EMIT.missing()) < set(STRUCTURAL_OPS)
    assert set(EMIT.supported()) == set(OPS) - {"QuantizeInput", "Flatten"}


def test_a_product_beyond_int64_is_an_accelerator_error(graphs):
    g = copy.copy(graphs["lenet_w4a4_pc_bias_asym"])
    req = next(n for n in g.nodes if n.name == "q_conv2")
    g.params = dict(g.params)
    shift = g.params[req.params["shift"]].clone()
    shift[0] = 62  # one channel with a tiny multiplier forces T = 62 on all the others
    g.params[req.params["shift"]] = shift
    with pytest.raises(AcceleratorError, match=r"q_conv2.*CONV_1.*64-bit"):
        hls_layers(g)


def test_an_add_beyond_int64_is_an_accelerator_error_naming_it():
    g = mixed_graph()
    add = next(n for n in g.nodes if n.op == "Add")
    requant = next(n for n in g.nodes if n.inputs == [add.output])
    g.params[add.params["multiplier"]] = torch.tensor([(1 << 31) - 1] * 2)
    g.params[requant.params["multiplier"]] = torch.tensor([(1 << 31) - 1])
    with pytest.raises(AcceleratorError, match=r"layer 'add9' \(ADD_0\) channel 0: .*64-bit"):
        hls_layers(g)


def test_damaged_files_are_data_errors(graphs, tmp_path):
    export_hls(graphs["lenet_w8a8"], tmp_path)
    weights = (tmp_path / "weights.hpp").read_text()
    (tmp_path / "weights.hpp").write_text(re.sub(r'\{"0x[0-9a-f]+",', "{", weights, count=1))
    with pytest.raises(DataError, match="conv_0_w holds"):
        read_hls(tmp_path)
    (tmp_path / "weights.hpp").write_text(weights)
    (tmp_path / "config_simd_pe.txt").write_text("simd pe\n5 6\n")
    with pytest.raises(DataError, match="config_simd_pe.txt"):
        read_hls(tmp_path)
    export_hls(graphs["lenet_w8a8"], tmp_path)
    config = (tmp_path / "config.h").read_text()
    wrong = config.replace('#define POOL_0_INPUT "q_conv1"', '#define POOL_0_INPUT "q_conv9"')
    (tmp_path / "config.h").write_text(wrong)
    with pytest.raises(DataError, match=r"POOL_0 reads \['q_conv9'\], which is neither HLS_INPUT nor an earlier"):
        read_hls(tmp_path)
    (tmp_path / "config.h").write_text(config.replace("#define CONV_1_GROUPS 1\n", ""))
    with pytest.raises(DataError, match="#define CONV_1_GROUPS missing"):
        read_hls(tmp_path)
