"""The g++-compiled C++ reference of the HLS export (docs/hls.md) against the integer engine on every
layer: random graphs (any DAG of the IR's ops), a SkyNet with its reorg bypass, the golden
UltraNet-Bypass, LeNet-5. Compiling is the expensive part (about a second per small graph, more for
big weight tables), so each graph is compiled once and run on all its images at once.

The graphs here are built directly (tests/random_graphs.GraphMaker) or are golden graphs: nothing
imports the front end (tests/test_architecture.py)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from bitsmith.errors import AcceleratorError
from bitsmith.integer import engine
from bitsmith.integer.graph import IntegerGraph
from bitsmith.targets.hls import compile_reference, export_hls, read_hls, run_hls, run_reference
from tests.helpers import GXX, golden, invoke, needs_gxx
from tests.random_graphs import random_graph
from tests.targets.hls_graphs import mixed_graph, skynet_graph

pytestmark = needs_gxx

#: Random graphs run by the C++ reference (one compile each); tests/targets/test_hls.py runs the
#: numpy model of the files on seeds 0-39, so these are others.
CPP_SEEDS = range(60, 80)


def _codes(g: IntegerGraph, images: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Input codes uniform over the input's whole range, and every tensor the engine computes for them."""
    spec = g.tensors[g.nodes[0].output]
    rng = np.random.default_rng(seed)
    codes = rng.integers(spec.qmin, spec.qmax + 1, (images, *spec.shape))
    codes[0] = spec.qmin
    codes[1] = spec.qmax                          # the extremes: all-min and all-max images
    x = torch.from_numpy(((codes - spec.zero_point) * float(spec.scale)).astype(np.float32))
    out = {k: v.numpy() for k, v in engine.run(g, x, return_all=True).items()}
    assert np.array_equal(out[spec.name], codes)
    return codes, out


def _assert_every_layer_matches(ran, want: dict[str, np.ndarray], what: str) -> None:
    assert ran
    for layer, values in ran:
        expected = want[layer.name].reshape(values.shape[0], -1)
        np.testing.assert_array_equal(values.reshape(values.shape[0], -1), expected,
                                      err_msg=f"{what}: {layer.macro} {layer.name}")


# -- random graphs ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", CPP_SEEDS)
def test_cpp_reference_matches_the_engine_on_random_graphs(seed, tmp_path):
    g = random_graph(seed)
    codes, want = _codes(g, 4, seed)
    _assert_every_layer_matches(run_hls(g, codes, tmp_path), want, f"random graph {seed}")


def test_the_cpp_seeds_cover_every_layer_kind_and_form():
    from bitsmith.targets.hls import hls_layers

    seen = set()
    for seed in CPP_SEEDS:
        for layer in hls_layers(random_graph(seed)):
            seen |= {layer.kind, layer.op}
            if layer.kind == "conv":
                seen.add("depthwise" if layer.op == "Conv2d" and layer.groups == layer.ifm_ch > 1 else
                         "grouped" if 1 < layer.groups < layer.ifm_ch else "asymmetric" if len(set(layer.pads)) > 1
                         else "")
    assert seen >= {"conv", "pool", "reorg", "concat", "add", "Conv2d", "Linear", "AvgPool2d", "Requant",
                    "depthwise", "grouped", "asymmetric"}, seen


def test_cpp_reference_runs_every_layer_kind_of_one_graph(tmp_path):
    g = mixed_graph()
    codes, want = _codes(g, 5, 0)
    ran = run_hls(g, codes, tmp_path)
    assert [l.macro for l, _ in ran] == ["CONV_0", "CONV_1", "CONV_2", "CONV_3", "ADD_0", "CONV_4", "CONCAT_0",
                                         "REORG_0", "CONV_5", "CONV_6"]
    _assert_every_layer_matches(ran, want, "mixed graph")


# -- SkyNet and UltraNet-Bypass through the command line ----------------------------------------

def _cli_check(g: IntegerGraph, root, images: int = 3):
    g.save(root / "graph")
    result = invoke("hw", "hls", root / "graph", "--out", root / "hls", "--check", "--images", images, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["matches_engine"] is True and report["mismatched_elements"] == 0, report
    assert report["checked_images"] == images and report["written"] is True
    return report


def test_skynet_with_its_reorg_bypass_matches_through_the_cli(tmp_path):
    g = skynet_graph()
    report = _cli_check(g, tmp_path)
    layers = [row.split()[0] for row in report["layers"]]
    assert layers.count("REORG_0") == layers.count("CONCAT_0") == 1 and len(layers) == 19
    parsed = {l.macro: l for l in read_hls(tmp_path / "hls")}
    depthwise = [l for l in parsed.values() if l.kind == "conv" and l.op == "Conv2d" and l.groups == l.ifm_ch > 1]
    assert len(depthwise) == 6 and all(l.terms == 9 and l.w_tiles == l.ofm_ch // l.pe * 9 // l.simd for l in depthwise)
    assert parsed["CONCAT_0"].inputs[0] == parsed["REORG_0"].name


def test_golden_ultranet_bypass_matches_through_the_cli(tmp_path):
    report = _cli_check(golden("ultranet_bypass_32x64"), tmp_path, images=2)
    assert [row.split()[0] for row in report["layers"]][-5:] == ["REORG_0", "CONV_7", "CONCAT_0", "CONV_8", "CONV_9"]


# -- LeNet-5: the CLI, new images, a wrong input size (one compile for the module) --------------

@pytest.fixture(scope="module")
def cli_checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("hls_cli")
    g = golden("lenet5_bias_w8a8")
    g.save(root / "graph")
    result = invoke("hw", "hls", root / "graph", "--out", root / "hls", "--check", "--images", 3, "--json")
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
    x = torch.randn((5,) + tuple(g.input_spec.shape), generator=torch.Generator().manual_seed(7)) * 1.5
    want = {k: v.numpy() for k, v in engine.run(g, x, return_all=True).items()}
    got = run_reference(out / "hls_reference", out, want[g.nodes[0].output], parsed)
    assert len(got) == len(parsed) == 7
    _assert_every_layer_matches(list(zip(parsed, got)), want, "lenet")
    assert len(np.unique(got[-1])) > 10  # raw logits, signed


def test_cpp_reference_rejects_a_wrong_input_size(cli_checked, tmp_path):
    _, out, _ = cli_checked
    (tmp_path / "in.txt").write_text("1 2 3\n")
    done = subprocess.run([str(out / "hls_reference"), str(tmp_path / "in.txt"), str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "multiple of 1024" in done.stderr


def test_compile_reference_reports_compiler_errors(tmp_path):
    (tmp_path / "hls_reference.cpp").write_text("int main() { return undefined_name; }\n")
    with pytest.raises(AcceleratorError, match="(?s)g\\+\\+ failed.*undefined_name"):
        compile_reference(tmp_path)


def test_cpp_reference_stops_when_a_layer_reads_an_array_of_the_wrong_size(tmp_path):
    """The program checks every array it reads: a config.h whose layer reads the wrong tensor stops it."""
    g = mixed_graph()
    export_hls(g, tmp_path)
    config = (tmp_path / "config.h").read_text()
    (tmp_path / "config.h").write_text(config.replace('#define CONV_2_INPUT "conv3"', '#define CONV_2_INPUT "conv1"'))
    binary = compile_reference(tmp_path)
    spec = g.tensors[g.nodes[0].output]
    (tmp_path / "in.txt").write_text("\n".join(["0"] * int(np.prod(spec.shape))) + "\n")
    done = subprocess.run([str(binary), str(tmp_path / "in.txt"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 3 and "CONV_2: input conv1 has the wrong size" in done.stderr
    assert GXX is not None
