"""cocotb 2.1 unit tests of the generated Verilog on Icarus, driven from pytest.

The `test_*` functions at the bottom are the pytest side: each builds one module with
cocotb_tools.runner and runs the cocotb coroutines above it (named without `test_`, so pytest does
not collect them) inside the simulator. Expected values come from Python: the PE and codebook
from their one-line definitions, the requant unit from bitsmith.integer.arithmetic.requantize
(and an independent big-integer model for s = 63), the FSM's phase lengths from
bitsmith.accel.timing.layer_cycles.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "bitsmith" / "rtl" / "templates"
MODULE = __name__   # tests.rtl.test_rtl_units: importable in the simulator (sys.path holds the repo root)

# iverilog is a required dependency (scripts/setup.sh installs it): a missing simulator fails, not skips.


def _mask(value: int, bits: int) -> int:
    return value & ((1 << bits) - 1)


def _wrap32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


# --------------------------------------------------------------------------- cocotb side: PE

def _pe_products(w_lo: int, w_hi: int, d_p: int, d_q: int, quad: int) -> list[int]:
    """The four product slots docs/hardware.md §3 defines: (lo, p), (lo, q), (hi, p), (hi, q)."""
    return [w_lo * d_p, w_lo * d_q, w_hi * d_p, w_hi * d_q] if quad else [w_lo * d_p, 0, w_hi * d_p, 0]


@cocotb.test()
async def pe_packed_products(dut):
    """The one 27×18 multiplier returns every product its mode packs, exactly: mode 2 (two 8-bit
    weights × one 10-bit d, every corner and random values) and mode 4 (two weights × two d whose
    products fit 9 bits: all 4-bit weights × 5-bit d, exhaustively over the corners' signs)."""
    rng = random.Random(1)
    cases = [(w_lo, w_hi, d, 0, 0) for w_lo in (-128, -1, 0, 1, 127) for w_hi in (-128, -1, 0, 1, 127)
             for d in (-255, -1, 0, 1, 255)]
    cases += [(rng.randint(-128, 127), rng.randint(-128, 127), rng.randint(-255, 255), 0, 0) for _ in range(300)]
    cases += [(w_lo, w_hi, d_p, d_q, 1) for w_lo in (-8, -1, 0, 7) for w_hi in (-8, -1, 0, 7)
              for d_p in (-16, -1, 0, 15) for d_q in (-16, -1, 0, 15)]
    cases += [(rng.randint(-8, 7), rng.randint(-8, 7), rng.randint(-16, 15), rng.randint(-16, 15), 1) for _ in range(300)]
    cases += [(-2, 1, 128, -127, 1), (1, -2, -127, 128, 1)]   # 2-bit weights: |d| up to 128 still fits 9 bits
    for w_lo, w_hi, d_p, d_q, quad in cases:
        dut.w_lo.value = _mask(w_lo, 8)
        dut.w_hi.value = _mask(w_hi, 8)
        dut.d_p.value = _mask(d_p, 10)
        dut.d_q.value = _mask(d_q, 10)
        dut.quad.value = quad
        await Timer(1, unit="ns")
        prod = int(dut.prod.value)
        got = [((prod >> (18 * s)) & 0x3FFFF) - ((prod >> (18 * s + 17) & 1) << 18) for s in range(4)]
        assert got == _pe_products(w_lo, w_hi, d_p, d_q, quad), (w_lo, w_hi, d_p, d_q, quad)


@cocotb.test()
async def pe_array_chain_clear_enable(dut):
    """Each row and lane l = k·PPX + q: acc <= (clear ? bias : acc) + Σ_c (product slot 2k + q of PE c)
    when enabled; held otherwise (each row has its own data terms: the same in a dense conv, its
    group's in a grouped one). Mode 2 and mode 4 cycles alternate."""
    R, C, PCH, PPX = int(dut.R.value), int(dut.C.value), int(dut.PCH.value), int(dut.PPX.value)
    NL = PCH * PPX
    rng = random.Random(2)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    acc = [[0] * NL for _ in range(R)]
    await FallingEdge(dut.clk)
    for step in range(60):
        quad = int(PPX == 2 and rng.random() < 0.5)
        wmax, dmax = (8, 16) if quad else (128, 256)
        w = [[[rng.randint(-wmax, wmax - 1) if k < PCH else 0 for k in range(2)] for _ in range(C)] for _ in range(R)]
        shared = rng.random() < 0.5   # a dense conv: every row sees the same C terms
        rows = [[[rng.randint(-dmax + 1, dmax - 1) if q < PPX else 0 for q in range(2)] for _ in range(C)]
                for _ in range(R)]
        d = [rows[0] if shared else rows[r] for r in range(R)]
        bias = [[rng.randint(-(1 << 20), 1 << 20) for _ in range(NL)] for _ in range(R)]
        clear = 1 if step == 0 else rng.randint(0, 1)
        enable = 1 if step == 0 else rng.choice([0, 1, 1])
        dut.weights.value = sum(_mask(w[r][c][k], 8) << (8 * ((r * C + c) * PCH + k))
                                for r in range(R) for c in range(C) for k in range(PCH))
        dut.data.value = sum(_mask(d[r][c][q], 10) << (10 * ((r * C + c) * PPX + q))
                             for r in range(R) for c in range(C) for q in range(PPX))
        dut.bias.value = sum(_mask(bias[r][l], 32) << (32 * (r * NL + l)) for r in range(R) for l in range(NL))
        dut.clear.value = clear
        dut.enable.value = enable
        dut.quad.value = quad
        await RisingEdge(dut.clk)
        if enable:
            for r in range(R):
                for l in range(NL):
                    slot = 2 * (l // PPX) + l % PPX
                    products = sum(_pe_products(w[r][c][0], w[r][c][1], d[r][c][0], d[r][c][1], quad)[slot]
                                   for c in range(C))
                    acc[r][l] = _wrap32((bias[r][l] if clear else acc[r][l]) + products)
        await FallingEdge(dut.clk)
        got = int(dut.acc.value)
        for r in range(R):
            for l in range(NL):
                assert _wrap32(got >> (32 * (r * NL + l))) == acc[r][l], (step, r, l, clear, enable, quad)


# --------------------------------------------------------------------------- cocotb side: codebook

@cocotb.test()
async def codebook_decodes_every_code(dut):
    """Every 2-bit code at every position selects its register; reloading changes the values."""
    N = int(dut.N.value)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for book in ([-128, -3, 0, 127], [5, -7, 0, 1], [-1, -2, -3, -4]):
        for i, v in enumerate(book):
            await FallingEdge(dut.clk)
            dut.load.value = 1
            dut.load_index.value = i
            dut.load_value.value = _mask(v, 8)
        await FallingEdge(dut.clk)
        dut.load.value = 0
        for code in range(4):
            for pos in range(N):         # the code at one position, the others cycling
                idx = [(code if n == pos else (code + n) % 4) for n in range(N)]
                dut.indices.value = sum(ix << (2 * n) for n, ix in enumerate(idx))
                await Timer(1, unit="ns")
                values = int(dut.values.value)
                for n in range(N):
                    got = ((values >> (8 * n)) & 0xFF)
                    assert (got - 256 if got >= 128 else got) == book[idx[n]], (book, code, n)


# --------------------------------------------------------------------------- cocotb side: requant

def _requant_spec(acc: int, m: int, s: int, z: int, lo: int, hi: int) -> int:
    """docs/arithmetic.md §4 with Python integers (exact, any s including 63)."""
    rounding = 1 << (s - 1) if s > 0 else 0
    return min(max(z + ((acc * m + rounding) >> s), lo), hi)


def _requant_reference(acc: int, m: int, s: int, z: int, lo: int, hi: int) -> int:
    import torch

    from bitsmith.integer.arithmetic import requantize

    return int(requantize(torch.tensor([acc]), torch.tensor([m]), torch.tensor([s]), z, lo, hi)[0])


def _requant_cases() -> list[tuple[int, int, int, int, int, int]]:
    rng = random.Random(3)
    top = (1 << 31) - 1
    cases = [
        (top, top, 0, 0, -(1 << 31), top),            # s = 0: no rounding term; saturates high
        (-(1 << 31), top, 0, 0, -128, 127),           # saturates low
        (-(1 << 31), top, 62, 0, -128, 127), (top, top, 62, 3, 0, 255),   # huge m, largest graph shift
        (-(1 << 31), top, 63, -5, -128, 127), (top, top, 63, 10, 0, 255),  # shift 63 (hardware limit)
        (-3, 1, 1, 0, -128, 127), (-5, 1, 1, 0, -128, 127), (3, 1, 1, 0, -128, 127),  # ties: -1.5 -> -1, -2.5 -> -2, 1.5 -> 2
        (-1, 1 << 30, 31, 0, -128, 127), (1, 1 << 30, 31, 0, -128, 127),   # ±0.5 -> 0 and 1
        (1000, 1 << 30, 30, 200, 0, 255), (-1000, 1 << 30, 30, -20, -20, 127),   # zero points, ReLU lo
        (0, 0, 0, 7, 0, 255), (12345, 0, 5, -3, -128, 127),          # m = 0
        (500, 1 << 30, 33, 0, 0, 255),                                # result 0 after rounding
    ]
    for _ in range(400):
        z = rng.randint(-128, 255)
        lo = rng.choice([-128, 0, z if -128 <= z <= 127 else 0])
        hi = 255 if lo >= 0 and rng.random() < 0.5 else 127
        cases.append((rng.randint(-(1 << 31), top), rng.choice([rng.randint(0, top), rng.randint(1 << 30, top)]),
                      rng.randint(0, 62), z, lo, hi))
    for _ in range(100):                              # small accumulators: ties and near-ties
        s = rng.randint(1, 8)
        cases.append((rng.randint(-2000, 2000), rng.randint(1, 1 << 8), s, rng.randint(-5, 5), -128, 127))
    return cases


@cocotb.test()
async def requant_matches_the_engine(dut):
    for acc, m, s, z, lo, hi in _requant_cases():
        dut.acc.value = _mask(acc, 32)
        dut.m.value = _mask(m, 32)
        dut.s.value = s
        dut.z_out.value = _mask(z, 32)
        dut.lo.value = _mask(lo, 32)
        dut.hi.value = _mask(hi, 32)
        await Timer(1, unit="ns")
        got = dut.y.value.to_signed()
        want = _requant_spec(acc, m, s, z, lo, hi)
        assert got == want, (acc, m, s, z, lo, hi, got, want)
        if s <= 62:                                    # the engine's range (arithmetic.MAX_SHIFT)
            assert got == _requant_reference(acc, m, s, z, lo, hi), (acc, m, s, z, lo, hi)


# --------------------------------------------------------------------------- cocotb side: FSM

@cocotb.test()
async def fsm_phase_lengths(dut):
    """Runs the generated top on its images and counts the cycles spent in each state per layer;
    they must equal bitsmith.accel.timing.layer_cycles (passed in BITSMITH_EXPECTED_PHASES)."""
    expected = json.loads(os.environ["BITSMITH_EXPECTED_PHASES"])
    names = {1: "param", 2: "codebook", 3: "input", 4: "weights", 5: "compute", 6: "drain", 8: "next", 9: "finish"}
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.image_base.value = 0
    dut.host_mem.value = 0
    dut.host_addr.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    for image in range(expected["images"]):
        dut.image_base.value = image * expected["words_per_image"]
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        counts: dict[int, dict[str, int]] = {}
        finish = 0
        for _ in range(4 * expected["total"] + 100):
            if int(dut.done.value):
                break
            state = int(dut.state.value)
            assert state in names, f"state {state} occupied a cycle"   # IDLE / NEXT_GROUP take none
            if state == 9:
                finish += 1
            else:
                row = counts.setdefault(int(dut.layer.value), {p: 0 for p in names.values() if p != "finish"})
                row[names[state]] += 1
            await FallingEdge(dut.clk)
        assert int(dut.done.value), "the FSM did not finish"
        assert finish == 1
        assert [counts.get(i) for i in range(len(expected["layers"]))] == expected["layers"]
        assert int(dut.cycles.value) == expected["total"]
        await FallingEdge(dut.clk)
        assert int(dut.state.value) == 0 and not int(dut.done.value)


# --------------------------------------------------------------------------- pytest side

def _run(tmp_path, toplevel: str, sources: list[Path], testcase: str, parameters=None, extra_env=None):
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    runner = get_runner("icarus")
    runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=tmp_path / "build", parameters=parameters or {},
                 always=True, timescale=("1ns", "1ps"))
    results = runner.test(test_module=MODULE, hdl_toplevel=toplevel, testcase=testcase,
                          build_dir=tmp_path / "build", test_dir=tmp_path, extra_env=extra_env or {})
    tests, failed = get_results(Path(results))
    assert (tests, failed) == (1, 0)


def test_pe(tmp_path):
    _run(tmp_path, "bitsmith_pe", [TEMPLATES / "bitsmith_pe.v"], "pe_packed_products")


@pytest.mark.parametrize("lanes", [(1, 1), (2, 1), (2, 2)])
def test_pe_array(tmp_path, lanes):
    _run(tmp_path, "bitsmith_pe_array", [TEMPLATES / "bitsmith_pe.v", TEMPLATES / "bitsmith_pe_array.v"],
         "pe_array_chain_clear_enable", parameters={"R": 3, "C": 4, "PCH": lanes[0], "PPX": lanes[1]})


def test_codebook(tmp_path):
    _run(tmp_path, "bitsmith_codebook", [TEMPLATES / "bitsmith_codebook.v"], "codebook_decodes_every_code",
         parameters={"N": 5})


def test_requant(tmp_path):
    _run(tmp_path, "bitsmith_requant", [TEMPLATES / "bitsmith_requant.v"], "requant_matches_the_engine")


# The FSM cases are golden graphs (tests/golden/README.md), asymmetric activations:
FSM_CASES = {
    "one_layer": ("fsm_one_layer", 2),        # a 1-layer program: first and last layer, raw output, one group
    "single_group": ("fsm_single_group", 1),  # every layer fits one channel group (out_ch <= R)
    "partial_rows": ("fsm_partial_rows", 1),  # the last group only partially filled (6 = 4 + 2 and 5 = 4 + 1
                                              # channels on R = 4), pools, padding
}


@pytest.mark.parametrize("case", list(FSM_CASES))
def test_fsm(tmp_path, case):
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.config import AccelConfig
    from bitsmith.accel.memory import write_memory
    from bitsmith.accel.timing import input_cycles, layer_cycles, program_cycles
    from bitsmith.rtl.generate import DESIGN_FILES, generate_rtl
    from bitsmith.integer import engine
    from bitsmith.verify import verification_inputs
    from tests.helpers import golden

    name, images = FSM_CASES[case]
    graph = golden(name)
    config = AccelConfig(pe=4, simd=4, bus_bits=64)
    program = compile_graph(graph, config)
    outputs = engine.run(graph, verification_inputs(graph, images, "random").x, return_all=True)
    write_memory(program, outputs[program.input_name], tmp_path / "memory", expected=outputs)
    generate_rtl(program, tmp_path / "rtl", images=images, memory_dir=tmp_path / "memory")
    expected = {
        "images": images,
        "words_per_image": input_cycles(program.layers[0], config),
        "total": program_cycles(program)["total"],
        "layers": [layer_cycles(layer, config, first=i == 0) for i, layer in enumerate(program.layers)],
    }
    if case == "partial_rows":
        assert [layer.out_ch % 4 for layer in program.layers if layer.kind == "conv"] == [2, 1]
    _run(tmp_path, "bitsmith_top", [tmp_path / "rtl" / f for f in DESIGN_FILES], "fsm_phase_lengths",
         extra_env={"BITSMITH_EXPECTED_PHASES": json.dumps(expected)})
