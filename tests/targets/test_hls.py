"""HLS export (docs/hls.md): the files parse back to the exact integers, the numpy model of the
files and the g++-compiled C++ reference equal the integer engine on every layer, the requant
mapping is exact, and the format's rules are enforced."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bitsmith.cli import app
from bitsmith.errors import AcceleratorError, ConfigError, DataError
from bitsmith.integer import engine
from bitsmith.integer.arithmetic import requantize
from bitsmith.targets.hls import (compile_reference, export_hls, fold_requant, hls_layers, hls_requant, read_hls,
                                  run_hls_layers, run_reference, signed_width)
from bitsmith.verify import compare
from tests.helpers import GXX, golden

# Golden graphs (tests/golden/README.md).
GRAPHS = {
    "lenet_w8a8": "lenet5_w8a8",
    # per-channel 4-bit weights, 4-bit activations, bias, unsigned input with a zero point
    "lenet_w4a4_pc_bias_asym": "lenet5_w4a4_pc_asym",
    "lenet_clipq": "lenet5_clipq",
    # padded 3x3 convs whose input has a zero point (PAD_VAL), BN-folded biases, a Linear after a
    # Flatten of a 256x4x4 map (CHW order)
    "vgg_tiny_asym": "vgg_tiny_bn",
}


@pytest.fixture(scope="module")
def graphs():
    return {name: golden(graph) for name, graph in GRAPHS.items()}


def _engine(g, images=6, seed=1):
    x = torch.randn((images,) + tuple(g.input_spec.shape), generator=torch.Generator().manual_seed(seed)) * 1.5
    return {k: v.numpy() for k, v in engine.run(g, x, return_all=True).items()}


# -- parse back, recompute, compare -------------------------------------------------------------

@pytest.mark.parametrize("name", list(GRAPHS))
def test_parsed_files_recompute_every_layer_like_the_engine(graphs, name, tmp_path):
    g = graphs[name]
    written = export_hls(g, tmp_path)
    parsed = read_hls(tmp_path)
    engine = _engine(g)
    outputs = run_hls_layers(parsed, engine[g.nodes[0].output])
    layer_tensors = [n.output for n in g.nodes if n.op in ("Requant", "MaxPool2d")] + [g.outputs[0]]
    assert [l.name for l in parsed] == [l.name for l in written] == layer_tensors
    for layer, got in zip(parsed, outputs):
        want = engine[layer.name].reshape(got.shape[0], -1)
        np.testing.assert_array_equal(got.reshape(got.shape[0], -1), want, err_msg=f"{name} {layer.macro} {layer.name}")
        assert len(np.unique(want)) > 1, f"{layer.name}: a constant layer would prove little"
    # the parsed integers are the graph's: weights (transposed back to OIHW), folded requant
    for layer in (l for l in parsed if l.kind == "conv"):
        conv = next(n for n in g.nodes if n.op in ("Conv2d", "Linear") and
                    (n.output == layer.name or any(r.inputs == [n.output] and r.output == layer.name for r in g.nodes)))
        w = g.weight_codes(conv).long().numpy().reshape(layer.ofm_ch, layer.ifm_ch, layer.k, layer.k)
        back = layer.weights.reshape(layer.ofm_ch, layer.k, layer.k, layer.ifm_ch).transpose(0, 3, 2, 1)
        np.testing.assert_array_equal(back, w, err_msg=layer.name)
        z_in = g.tensors[conv.inputs[0]].zero_point
        assert layer.pad_val == z_in
        b = g.params[conv.params["bias"]].long().numpy() if "bias" in conv.params else np.zeros(layer.ofm_ch, np.int64)
        bias_acc = [int(v) for v in b - z_in * w.reshape(layer.ofm_ch, -1).sum(1)]
        if layer.raw:
            assert layer.inc == [1] * layer.ofm_ch and layer.bias == bias_acc and layer.l_shift == 0
        else:
            req = next(n for n in g.nodes if n.output == layer.name)
            m, s = (g.params[req.params[role]].expand(layer.ofm_ch).tolist() for role in ("multiplier", "shift"))
            assert layer.l_shift == max(s)
            assert layer.inc == [mc * 2 ** (layer.l_shift - sc) for mc, sc in zip(m, s)]
            assert layer.bias == [bc * ic + g.tensors[layer.name].zero_point * 2 ** layer.l_shift
                                  for bc, ic in zip(bias_acc, layer.inc)]


def test_the_cases_cover_zero_points_padding_codebooks_and_per_channel(graphs, tmp_path):
    """The parametrized graphs really exercise what they are named for."""
    asym = hls_layers(graphs["lenet_w4a4_pc_bias_asym"])
    assert asym[0].pad_val != 0 and len(set(asym[0].inc)) > 1 and any(asym[0].bias)
    vgg = hls_layers(graphs["vgg_tiny_asym"])
    assert vgg[0].p == 1 and vgg[0].pad_val != 0
    assert any(n.attrs.get("weight_format") == "codebook" for n in graphs["lenet_clipq"].nodes)
    assert hls_layers(graphs["lenet_w8a8"])[-1].raw


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
    ({"q_conv1": {"simd": 4}}, r"CONV_0.*SIMD 4 .*\(k\*k\*ich\) % simd == 0.*25"),
    ({"q_conv1_acc": {"pe": 4}}, r"CONV_0.*PE 4 .*och % pe == 0.*och = 6"),
    ({"q_fc1": {"simd": 0}}, r"q_fc1.*positive integer"),
    ({"nope": {"simd": 1}}, r"unknown layer.*nope"),
    ({"q_conv1": {"lanes": 1}}, r"simd and/or pe"),
])
def test_forced_values_breaking_the_rules_are_config_errors(graphs, forced, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        export_hls(graphs["lenet_w8a8"], tmp_path, layers=forced)
    assert not (tmp_path / "config.h").exists()


def test_ops_the_format_cannot_hold_are_accelerator_errors(graphs):
    g = copy.copy(graphs["lenet_w8a8"])
    g.nodes = [copy.copy(n) for n in g.nodes]
    pool = next(n for n in g.nodes if n.op == "MaxPool2d")
    pool.op = "AvgPool2d"
    with pytest.raises(AcceleratorError, match="pool1.*AvgPool2d"):
        hls_layers(g)
    g.nodes = [n for n in graphs["lenet_w8a8"].nodes if n.name != "q_conv2"]  # conv2 without its Requant
    with pytest.raises(AcceleratorError, match="q_conv2_acc.*exactly one Requant"):
        hls_layers(g)


def test_a_product_beyond_int64_is_an_accelerator_error(graphs):
    g = copy.copy(graphs["lenet_w4a4_pc_bias_asym"])
    req = next(n for n in g.nodes if n.name == "q_conv2")
    g.params = dict(g.params)
    shift = g.params[req.params["shift"]].clone()
    shift[0] = 62  # one channel with a tiny multiplier forces T = 62 on all the others
    g.params[req.params["shift"]] = shift
    with pytest.raises(AcceleratorError, match=r"q_conv2.*CONV_1.*64-bit"):
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


# -- the C++ reference (one compile for the module) ------------------------------------------------

@pytest.fixture(scope="module")
def cli_checked(tmp_path_factory):
    if GXX is None:
        pytest.skip("g++ not installed: the C++ HLS reference cannot be compiled")
    root = tmp_path_factory.mktemp("hls_cli")
    g = golden("lenet5_bias_w8a8")
    g.save(root / "graph")
    result = CliRunner().invoke(app, ["hw", "hls", str(root / "graph"), "--out", str(root / "hls"), "--check",
                                      "--images", "3", "--json"])
    return g, root / "hls", result


def test_cli_check_compiles_runs_and_finds_no_mismatch(cli_checked):
    _, out, result = cli_checked
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["matches_engine"] is True and report["mismatched_elements"] == 0 and report["checked_images"] == 3
    assert len(report["layers"]) == 7
    assert {p.name for p in out.iterdir()} >= {"config.h", "weights.hpp", "config_simd_pe.txt", "hls_reference.cpp",
                                               "hls_shim.h", "hls_reference"}


def test_cpp_reference_matches_every_lenet_layer_on_new_images(cli_checked):
    g, out, _ = cli_checked
    parsed = read_hls(out)
    engine = _engine(g, images=5, seed=7)
    got = run_reference(out / "hls_reference", out, engine[g.nodes[0].output], parsed)
    assert len(got) == len(parsed) == 7
    for layer, values in zip(parsed, got):
        want = engine[layer.name].reshape(values.shape[0], -1)
        np.testing.assert_array_equal(values.reshape(values.shape[0], -1), want, err_msg=f"{layer.macro} {layer.name}")
    assert len(np.unique(got[-1])) > 10  # raw logits, signed


def test_cpp_reference_rejects_a_wrong_input_size(cli_checked, tmp_path):
    import subprocess

    _, out, _ = cli_checked
    (tmp_path / "in.txt").write_text("1 2 3\n")
    done = subprocess.run([str(out / "hls_reference"), str(tmp_path / "in.txt"), str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "multiple of 1024" in done.stderr


def test_compile_reference_reports_compiler_errors(tmp_path):
    if GXX is None:
        pytest.skip("g++ not installed")
    (tmp_path / "hls_reference.cpp").write_text("int main() { return undefined_name; }\n")
    with pytest.raises(AcceleratorError, match="(?s)g\\+\\+ failed.*undefined_name"):
        compile_reference(tmp_path)
