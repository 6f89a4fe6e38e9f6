"""The design-space sweep: the Pareto front on hand-made points, the LeNet-5 sweep (files, front,
weight modes against hand-derived DSP counts), skipped configurations, and `bitsmith hw report/sweep`."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitsmith.accel.compiler import channel_groups, compile_graph, term_blocks
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import cost_report
from bitsmith.accel.sweep import dense_program, evaluate_design, pareto_front, sweep, write_sweep
from bitsmith.accel.timing import program_cycles
from bitsmith.errors import AcceleratorError, ConfigError
from tests.helpers import golden, invoke


@pytest.fixture(scope="module")
def lenet_graphs():
    """W8A8 LeNet-5, its CLIP-Q variant (2-bit codebooks, dense fc2), and an all-codebook variant."""
    return golden("lenet5_w8a8"), golden("lenet5_clipq"), golden("lenet5_clipq_all")


def _dominated(p, points):
    return any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)


def test_pareto_front_on_hand_made_points():
    points = [(1, 10), (2, 5), (2, 6), (3, 5), (4, 1), (4, 1), (5, 0.5), (0.5, 20), (6, 0.5), (0.5, 25)]
    # (2, 6) and (3, 5) lose to (2, 5); (6, 0.5) to (5, 0.5); (0.5, 25) to (0.5, 20); the twin (4, 1) stays twice
    assert pareto_front(points) == [0, 1, 4, 5, 6, 7]
    assert pareto_front([(3, 3)]) == [0] and pareto_front([]) == []
    assert pareto_front([(1, 2), (2, 1), (1, 1)]) == [2]


def test_lenet_sweep_writes_files_and_an_undominated_front(lenet_graphs, tmp_path):
    dense, clipq, _ = lenet_graphs
    result = sweep(dense, codebook_graph=clipq)
    assert result["modes"] == ["int8", "int4", "codebook2"] and not result["skipped"]
    assert len(result["points"]) == 6 * 6 * 3
    coords = [(p["dsp"], p["cycles"]) for p in result["points"]]
    front = [(p["dsp"], p["cycles"]) for p in result["pareto"]]
    assert front and all(not _dominated(f, coords) for f in front)
    # and every point left out is dominated by a front point
    assert all(_dominated(c, front) for c, p in zip(coords, result["points"]) if not p["pareto"])

    by = {(p["mode"], p["pe"], p["simd"]): p for p in result["points"]}
    for pe in (1, 2, 4, 8, 16, 32):
        for simd in (1, 2, 4, 8, 16, 32):
            i8, i4, cb = by["int8", pe, simd], by["int4", pe, simd], by["codebook2", pe, simd]
            # the RTL's array: one DSP48E2 per PE in every mode; requant: 4 per unit, R or 2R units
            assert i8["dsp_array"] == i4["dsp_array"] == cb["dsp_array"] == pe * simd
            for point in (i8, i4, cb):
                assert point["dsp_requant"] in (4 * pe, 8 * pe) and point["dsp_lanes"] == pe
            assert i4["cycles"] <= i8["cycles"]         # int4 stores the weights at 4 bits: fewer bus words
            # 2-bit indices load 4× faster than 8-bit weights, which saves cycles only where the array
            # waits for weights; each of the four codebook layers reads its codebook (4 cycles)
            assert cb["cycles"] <= i8["cycles"] + 4 * 4
            if pe * simd >= 256:                        # bus bound: the loads decide
                assert cb["cycles"] < i8["cycles"]
    config = AccelConfig(pe=4, simd=16)
    assert by["codebook2", 4, 16]["cycles"] == program_cycles(compile_graph(clipq, config))["total"]
    assert by["int8", 4, 16]["cycles"] == program_cycles(compile_graph(dense, config))["total"]

    files = write_sweep(result, tmp_path / "sweep")
    png = (tmp_path / "sweep" / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rows = list(csv.DictReader(io.StringIO(Path(files["csv"]).read_text())))
    assert len(rows) == len(result["points"])
    assert sum(r["pareto"] == "True" for r in rows) == len(result["pareto"])
    saved = json.loads(Path(files["json"]).read_text())
    assert saved["pareto"] == result["pareto"]
    table = Path(files["pareto_table"]).read_text().splitlines()
    assert len(table) == 2 + len(result["pareto"])


def test_all_codebook_program_needs_no_dataflow_array_dsps(lenet_graphs):
    _, _, all_cb = lenet_graphs
    program = compile_graph(all_cb, AccelConfig(pe=8, simd=8))
    report = cost_report(program)
    # MixQ / CLIP-Q select trick: no array multipliers; the RTL: 64 DSP48E2 PEs, 16 requant units (mode 2)
    assert report["dsp"] == {"array": 64, "requant": 64, "lanes": 8, "requant_units": 16, "total": 136,
                             "mixq_array": 0, "array_layer": None}
    # the RTL's ROMs: W2.hex (2-bit indices; a block of 16·8 indices is 4 words, conv1's, in mode 1, 2)
    # param.hex 863 × 32 → one RAMB36E2; the weight ring 512 words × 16·8 8-bit entries → 29 RAMB18E2
    # (512 × 36 each, ram_mapping)
    mems = {m["name"]: m for m in report["memories"]}
    w2 = mems["W2 memory"]["depth"]
    assert w2 == sum(channel_groups(l, program.config) * term_blocks(l, program.config) * (4 if l.packing > 1 else 2)
                     for l in program.layers if l.kind == "conv") == 2088
    assert report["bram18"]["weight ring"] == 29 and report["bram18"]["param memory"] == 2
    # the activation memory: 5,880 bytes in 19 banks (bitsmith.accel.banks) of 368 × 8 bits, a RAMB18E2 each
    assert report["bram18"]["activation memory"] == 19
    assert report["bram18"]["total"] == report["bram18"]["W2 memory"] + 2 + 29 + 19
    # expanded to dense 8-bit, the same program needs the full int8 array
    dense = dense_program(program, 8)
    assert not any(l.is_codebook for l in dense.layers)
    # ... and its W8.hex holds 4× the words of W2.hex: 8,352 × 64 bits → 16 RAMB36E2 = 32 BRAM18
    assert evaluate_design(dense)["dsp"]["mixq_array"] == 32 and cost_report(dense)["bram18"]["W8 memory"] == 32


def test_configs_that_do_not_fit_are_recorded(lenet_graphs):
    dense, _, _ = lenet_graphs
    # A ring word is one term block, R·C entries rounded up to a bus word of 2-bit entries (32 on the
    # 64-bit bus): 2048 entries are 64 words for R·C ≤ 32, 32 words at 8×8. conv2 (K = 150) needs
    # T = 150 words at C = 1, conv3 (K = 400) 100 at C = 4, 50 at C = 8: only 1×8 and 4×8 fit.
    result = sweep(dense, sizes=(1, 4, 8), base=AccelConfig(weight_buffer_entries=2048))
    skipped = {(s["pe"], s["simd"]) for s in result["skipped"]}
    assert skipped == {(1, 1), (1, 4), (4, 1), (4, 4), (8, 1), (8, 4), (8, 8)}
    assert all("more than the weight ring's" in s["reason"] and "weight_buffer_entries=2048" in s["reason"]
               for s in result["skipped"])
    assert {(p["pe"], p["simd"]) for p in result["points"]}.isdisjoint(skipped)
    with pytest.raises(AcceleratorError, match="no configuration"):
        sweep(dense, sizes=(8,), base=AccelConfig(weight_buffer_entries=2048))
    with pytest.raises(ConfigError, match="codebook graph has no 2-bit codebook"):
        sweep(dense, sizes=(2,), codebook_graph=dense)


def test_cli_report_and_sweep(lenet_graphs, tmp_path):
    dense, clipq, _ = lenet_graphs
    dense.save(tmp_path / "int8")
    clipq.save(tmp_path / "clipq")
    result = invoke("hw", "report", tmp_path / "int8", "--pe", "8", "--simd", "8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cycles"] == program_cycles(compile_graph(dense, AccelConfig()))["total"]
    assert report["dsp"]["total"] == 136 and [l["dsp"] for l in report["layers"]] == [32, 0, 32, 0, 32, 32, 32]
    result = invoke("hw", "report", tmp_path / "clipq", "--pe", "4", "--simd", "16")
    assert result.exit_code == 0 and "q_conv1" in result.stdout and "cb2/8" in result.stdout

    result = invoke("hw", "sweep", tmp_path / "int8", "--out", tmp_path / "sw", "--sizes", "1,4,16",
                     "--codebook-graph", tmp_path / "clipq", "--weight-buffer-entries", "4096", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # 4096 entries: 128 ring words of 32 entries for R·C ≤ 32 (conv2 needs 150 at C = 1), 16 of 256 at
    # 16×16 (conv3: 25), 64 at 16×4 (conv3: 100); the other 4 configs × 3 modes run
    assert [(s["pe"], s["simd"]) for s in out["skipped"]] == [(1, 1), (4, 1), (16, 1), (16, 4), (16, 16)]
    assert out["points"] == 4 * 3
    assert (tmp_path / "sw" / "pareto.png").is_file() and (tmp_path / "sw" / "sweep.csv").is_file()

    result = invoke("hw", "sweep", tmp_path / "int8", "--out", tmp_path / "x", "--sizes", "0,2")
    assert isinstance(result.exception, ConfigError) and "--sizes" in str(result.exception)
    # through main(): one message, exit code 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", "hw", "report", str(tmp_path / "int8"), "--pe", "32",
                           "--simd", "32", "--weight-buffer-entries", "1000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "weight_buffer_entries=1000" in proc.stderr and "Traceback" not in proc.stderr
