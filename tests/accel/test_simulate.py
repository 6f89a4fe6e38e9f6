"""The cycle-level model: bit for bit equal to the integer engine, cycle counts equal to §5."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.memory import build_memory, read_memory, write_memory
from bitsmith.accel.program import Layer, Program
from bitsmith.accel.simulate import simulate
from bitsmith.accel.timing import PHASES, program_cycles
from bitsmith.integer import engine
from bitsmith.verify import compare, verification_inputs
from tests.helpers import golden

N_IMAGES = 20


def _check(graph, x, config=None):
    """Simulate `graph` on float images x; every layer equals the engine, cycles equal §5."""
    config = config or AccelConfig()
    program = compile_graph(graph, config)
    outputs = engine.run(graph, x, return_all=True)
    result = simulate(program, outputs[program.input_name])
    assert result.overflows == []
    for layer in program.layers:
        got, want = result.outputs[layer.name], outputs[layer.name].numpy()
        assert got.shape == want.shape, layer.name
        np.testing.assert_array_equal(got, want, err_msg=layer.name)
    assert {l.name: compare(result.outputs[l.name], outputs[l.name])[1] for l in program.layers} == \
        {l.name: 0 for l in program.layers}
    formula = program_cycles(program)
    for counted, row in zip(result.cycles["layers"], formula["layers"]):
        assert {p: counted[p] for p in PHASES} == {p: row[p] for p in PHASES}, row["name"]
    assert result.total_cycles == formula["total"]
    # the outputs are not all alike: the test would see a wrong layer
    assert len(np.unique(result.outputs[program.layers[-1].name])) > 1
    return program, result, outputs


@pytest.fixture(scope="module")
def fashion():
    g = golden("lenet5_w8a8")
    inputs = verification_inputs(g, N_IMAGES, "fashion-mnist")   # 20 test images + 20 random codes
    assert inputs.description.startswith("fashion-mnist") and inputs.x.shape == (2 * N_IMAGES, 1, 32, 32)
    assert (inputs.real, inputs.random) == (N_IMAGES, N_IMAGES)
    return inputs.x


def test_lenet_w8a8_on_fashion_mnist(fashion):
    program, result, _ = _check(golden("lenet5_w8a8"), fashion)
    assert result.total_cycles == 8494  # the figure docs/hardware.md quotes for the default configuration


def test_lenet_clipq_codebook_mixed_with_dense(fashion):
    g = golden("lenet5_clipq")
    program, _, _ = _check(g, fashion, AccelConfig(pe=4, simd=16, bus_bits=128))
    assert [l.is_codebook for l in program.layers if l.kind == "conv"] == [True, True, True, True, False]


def test_lenet_w4a4_per_channel(fashion):
    _check(golden("lenet5_w4a4_pc"), fashion, AccelConfig(pe=3, simd=5, bus_bits=32))


def test_lenet_asymmetric_requantized_output(fashion):
    g = golden("lenet5_asym_requant_output")
    program, _, _ = _check(g, fashion)
    assert program.layers[0].z_in != 0 and not program.layers[-1].raw_output


def test_vgg_tiny_random_weights_with_bn():
    x = torch.randn(N_IMAGES, 3, 32, 32)
    program, _, _ = _check(golden("vgg_tiny_bn"), x, AccelConfig(pe=16, simd=8))
    assert max(l.out_ch * l.pixels for l in program.layers) == 64 * 32 * 32


def test_padding_and_stride():
    g = golden("strided_padded")
    program, _, _ = _check(g, torch.randn(N_IMAGES, 1, 16, 16), AccelConfig(pe=4, simd=4))
    assert (program.layers[0].sh, program.layers[0].ph) == (2, 1)
    assert (program.layers[1].sw, program.layers[1].pw) == (2, 1)


def test_avgpool_layers():
    g = golden("avgpool")
    program, _, _ = _check(g, torch.randn(N_IMAGES, 2, 14, 14), AccelConfig(pe=4, simd=8))
    assert [l.kind for l in program.layers].count("avgpool") == 3
    assert program.layers[-1].out_signed  # the pooled raw-conv output is signed


def test_runs_from_the_written_files_and_catches_a_packing_error(tmp_path, fashion):
    g = golden("lenet5_clipq")
    program = compile_graph(g, AccelConfig())
    outputs = engine.run(g, fashion[:4], return_all=True)
    write_memory(program, outputs[program.input_name], tmp_path, expected=outputs)
    _, memory = read_memory(tmp_path)
    result = simulate(program, outputs[program.input_name], memory=memory)
    assert sum(compare(result.outputs[l.name], outputs[l.name])[1] for l in program.layers) == 0
    # one flipped bit in one W2 word (q_conv2's first group) changes that layer's outputs
    memory.w2[build_memory(program).weight_base[2]] ^= 1 << 5  # an index of row 0, term 2
    faulty = simulate(program, outputs[program.input_name], memory=memory)
    wrong = {l.name: compare(faulty.outputs[l.name], outputs[l.name])[1] for l in program.layers}
    assert wrong["q_conv1"] == 0 and wrong["q_conv2"] > 0


def _reference_conv(x, w, bias, kh, kw):
    """Plain int64 valid convolution (independent of the model)."""
    n, c, h, wd = x.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, w.shape[0], oh, ow), dtype=np.int64)
    for o in range(w.shape[0]):
        for y in range(oh):
            for xx in range(ow):
                out[:, o, y, xx] = bias[o] + (x[:, :, y:y + kh, xx:xx + kw].reshape(n, -1) * w[o]).sum(axis=1)
    return out


def test_tiny_hand_built_layer_counts_and_wraps():
    """A raw-output conv built by hand (no compiler bound check): cycle counts by hand, 32-bit wraps."""
    rng = np.random.default_rng(0)
    config = AccelConfig(pe=4, simd=8, bus_bits=64)
    weights = rng.integers(-128, 128, size=(10, 27))
    bias = rng.integers(-1000, 1000, size=10)
    bias[7] = 2**31 - 5000  # channel 7 wraps for most inputs
    layer = Layer(index=0, name="t", kind="conv", in_ch=3, in_h=5, in_w=5, out_ch=10, out_h=3, out_w=3, kh=3, kw=3,
                  in_signed=True, out_bits=32, out_signed=True, raw_output=True, weight_bits=8, weights=weights,
                  bias=bias, multiplier=np.ones(10, dtype=np.int64), shift=np.zeros(10, dtype=np.int64),
                  clamp_lo=-2**31, clamp_hi=2**31 - 1)
    program = Program(config, [layer], "codes", metadata={"tensor_shapes": {"t": [10, 3, 3]}})
    codes = rng.integers(-128, 128, size=(6, 3, 5, 5))
    result = simulate(program, codes)
    # param 22 + 3·10 + input 10 + weights 0 (the 12 blocks of 4 words load in cycles 0-47, during
    # PARAM) + compute 3·9·4 + drain 3 (each group's last pixel; the others write during the next
    # pixel's first compute cycle) + next 1, finish 1 (by hand)
    assert result.total_cycles == 52 + 10 + 0 + 108 + 3 + 1 + 1 == program_cycles(program)["total"]
    # with a ring of one group (4 words) groups 1 and 2 wait 16 cycles each for their loads
    # (test_compiler.test_a_ring_of_one_group_waits_for_every_later_load works it out)
    one_group = Program(replace(config, weight_buffer_entries=128), [layer], "codes", metadata=program.metadata)
    assert simulate(one_group, codes).total_cycles == 175 + 32 == program_cycles(one_group)["total"]
    exact = _reference_conv(codes, weights.reshape(10, 3, 3, 3).reshape(10, -1), bias, 3, 3)
    wrapped = (exact + 2**31) % 2**32 - 2**31
    np.testing.assert_array_equal(result.outputs["t"], wrapped)
    # A wrap is any cycle whose register leaves the range: running sums over blocks of C = 8 terms.
    patches = np.stack([codes[:, :, y:y + 3, x:x + 3].reshape(6, -1) for y in range(3) for x in range(3)], axis=2)
    products = weights[None, :, :, None] * patches[:, None]                       # [n, o, t, pixel]
    products = np.pad(products, ((0, 0), (0, 0), (0, 5), (0, 0))).reshape(6, 10, 4, 8, 9).sum(axis=3)
    running = bias[None, :, None, None] + np.cumsum(products, axis=2)             # [n, o, cycle, pixel]
    wraps = int(((running > 2**31 - 1) | (running < -2**31)).any(axis=2).sum())
    assert wraps > int(((exact > 2**31 - 1) | (exact < -2**31)).sum()) > 0 and result.overflows == [f"layer t: 32-bit accumulator wrapped in {wraps} output values"]


def test_cli_hw_simulate_json(tmp_path):
    g = golden("lenet5_clipq")
    g.save(tmp_path / "g")
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", "hw", "simulate", str(tmp_path / "g"), "--images", "3",
                           "--pe", "4", "--simd", "16", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    program = compile_graph(g, AccelConfig(pe=4, simd=16))
    assert out["mismatches"] == 0 and out["images"] == 3 and out["inputs"].startswith("fashion-mnist")
    assert out["total_cycles"] == out["formula_cycles"] == program_cycles(program)["total"]
    assert [r["layer"] for r in out["layers"]] == [l.name for l in program.layers]
    assert sum(r["cycles"] for r in out["layers"]) + 1 == out["total_cycles"]
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", "hw", "compile", str(tmp_path / "g"), "--out",
                           str(tmp_path / "img"), "--images", "2", "--max-kernel", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "kernel 5x5 exceeds max_kernel=3" in proc.stderr and "Traceback" not in proc.stderr
