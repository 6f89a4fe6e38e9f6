"""The activation memory's banks (bitsmith.accel.banks, docs/hardware.md §3): the per-cycle accesses,
the collision check, the bank count the compiler picks, and that the RTL really is banked: with a
bank count the check rejects, the generated top reads wrong bytes."""

import numpy as np
import pytest

from bitsmith.accel import banks as banks_module
from bitsmith.accel.banks import (IDLE, busiest, choose_banks, collisions, conv_reads, cycle_accesses, distinct,
                                  drain_writes)
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import activation_bytes, rtl_memory_depths
from bitsmith.errors import AcceleratorError
from tests.helpers import golden


@pytest.fixture(scope="module")
def lenet_4x4():
    return compile_graph(golden("lenet5_w8a8"), AccelConfig(pe=4, simd=4))


def test_collisions_count_two_bytes_in_one_bank_not_one_byte_read_twice():
    cycles = np.array([[0, 9, IDLE],     # 0 and 9: bank 0 of 9, two different bytes
                       [3, 3, 4],        # byte 3 read by two ports: one read of bank 3
                       [IDLE, IDLE, 5]])
    assert collisions(distinct(cycles), 9) == 1
    assert collisions(distinct(cycles), 10) == 0
    assert busiest(distinct(cycles)) == 2           # the second cycle touches two bytes, not three


def test_conv_reads_follow_the_term_order(lenet_4x4):
    conv1 = lenet_4x4.layers[0]                     # 1×32×32 → 6×28×28, 5×5, no padding
    reads = conv_reads(conv1, lenet_4x4.config)
    assert reads.shape == (28 * 28 * 7, 4)          # P pixels × T = ⌈25/4⌉ blocks, C = 4 ports
    base = conv1.in_base
    # pixel 0: block 0 holds terms (ky, kx) = (0, 0..3), block 1 (0, 4), (1, 0..2); the last block term
    # 24 = (4, 4) and three past K
    assert reads[0].tolist() == [base, base + 1, base + 2, base + 3]
    assert reads[1].tolist() == [base + 4, base + 32, base + 33, base + 34]
    assert reads[6].tolist() == [base + 4 * 32 + 4, IDLE, IDLE, IDLE]
    # pixel 29 = (1, 1): the window moves one row and one column
    assert reads[29 * 7].tolist() == [base + 33, base + 34, base + 35, base + 36]


def test_drain_writes_are_one_pass_of_every_channel_lane(lenet_4x4):
    conv1 = lenet_4x4.layers[0]                     # mode 2: 8 channel lanes, 6 channels
    writes = drain_writes(conv1, lenet_4x4.config)
    assert writes.shape == (28 * 28, 8)
    assert writes[5].tolist() == [conv1.out_base + o * 784 + 5 for o in range(6)] + [IDLE, IDLE]


def test_lenet_banks_and_why_eight_do_not_do(lenet_4x4):
    banking = choose_banks(lenet_4x4, activation_bytes(lenet_4x4))
    assert (banking.banks, banking.shift, banking.depth) == (9, 3, 735)      # 5,880 bytes
    accesses = dict(cycle_accesses(lenet_4x4))
    # 8 banks: conv1's drain writes channel planes 784 bytes apart (a multiple of 8) into one bank
    conv1 = lenet_4x4.layers[0]
    assert collisions(distinct(accesses[f"layer 0 ({conv1.name}) writes"]), 8) == 28 * 28
    assert all(collisions(distinct(a), 9) == 0 for a in accesses.values())
    # the placement is one to one: every byte its own (bank, word)
    places = {banking.place(a) for a in range(5880)}
    assert len(places) == 5880 and max(w for _, w in places) == banking.depth - 1


def test_no_banking_is_an_error_naming_the_accesses(lenet_4x4, monkeypatch):
    monkeypatch.setattr(banks_module, "MAX_BANKS", 8)
    with pytest.raises(AcceleratorError, match=r"into 8\.\.8 banks.*writes collide in 784 cycles"):
        choose_banks(lenet_4x4, activation_bytes(lenet_4x4))


def test_the_rtl_reads_through_the_banks(tmp_path, monkeypatch):
    """With 8 banks, which the check rejects for LeNet-5 at 2×2 (pool1's two lanes read channel planes
    784 bytes apart: one bank, two words), the generated top's pool reads are wrong: the banks are real.
    (conv1's drain writes collide too, but the simulated form writes port by port: the SYNTHESIS form
    has the per-bank writes, tests/rtl/test_lint.py.)"""
    from bitsmith.accel import cost
    from tests.rtl.test_rtl import run_rtl

    graph = golden("lenet5_w8a8")
    config = AccelConfig(pe=2, simd=2)
    program = compile_graph(graph, config)
    accesses = dict(cycle_accesses(program))
    assert collisions(distinct(accesses["layer 1 (pool1) reads"]), 8) == 2352      # 3 groups × 196 × 4
    assert collisions(distinct(accesses[f"layer 0 ({program.layers[0].name}) reads"]), 8) == 0
    monkeypatch.setattr(cost, "rtl_banking", lambda program, act: {"ACT_BANKS": 8, "ACT_SHIFT": 3,
                                                                    "ACT_BANK_DEPTH": (act - 1) // 8 + 1})
    assert rtl_memory_depths(program)["ACT_BANKS"] == 8
    report = run_rtl(graph, images=1, config=config, data="random", work_dir=tmp_path)
    assert report.layers[0].mismatches == 0 and report.layers[1].mismatches > 0
