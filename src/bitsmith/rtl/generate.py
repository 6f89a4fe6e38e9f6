"""Verilog-2005 for the accelerator of docs/hardware.md, generated from a compiled Program.

The hardware lives in `templates/*.v` as plain Verilog; Python only fills in `@@NAME@@` fields
(sizes from the configuration and the memory files, file paths, a fault switch) and writes the
per-program testbench `tb_bitsmith.v`, which knows each layer's shape and checks every output
value against `expected/Lii.hex` (docs/rtl.md says why templates rather than a Python HDL).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from bitsmith.accel.config import (ACC_BITS, CODEBOOK_INDEX_BITS, CODEBOOK_SIZE, CODEBOOK_VALUE_BITS,
                                   DESCRIPTOR_WORDS, MAX_ACT_BITS, MULTIPLIER_BITS, PARAM_WORD_BITS,
                                   SHIFT_FIELD_BITS, WEIGHT_BYTE_BITS)
from bitsmith.accel.compiler import array_lanes
from bitsmith.accel.cost import rtl_memory_depths
from bitsmith.accel.memory import PROGRAM_FILE, SCHEDULE_FILE, expected_file, verify_memory_folder
from bitsmith.accel.program import Program
from bitsmith.accel.timing import input_cycles, program_cycles
from bitsmith.errors import ConfigError, DataError
from bitsmith.storage import write_bytes_atomic

#: Verilog files that make up the design, in dependency order (the top last).
DESIGN_FILES = ("bitsmith_pe.v", "bitsmith_pe_array.v", "bitsmith_codebook.v", "bitsmith_requant.v",
                "bitsmith_pool.v", "bitsmith_top.v")
TESTBENCH_FILE = "tb_bitsmith.v"
TESTBENCH_TOP = "tb_bitsmith"

#: Deliberate hardware bugs for testing the checker (name -> top-level parameter overrides).
FAULTS = {
    "shift_off_by_one": {"FAULT_SHIFT": 1},      # requant shifts by s + 1
    "drop_bias": {"FAULT_DROP_BIAS": 1},         # accumulators start at 0 instead of the bias
    "no_zero_point": {"FAULT_NO_ZIN": 1},        # x - z_in computed as x
}

#: States of bitsmith_top (docs/hardware.md §5), as the testbench and the cocotb tests read them.
STATES = {"IDLE": 0, "PARAM": 1, "CODEBOOK": 2, "INPUT": 3, "WEIGHTS": 4, "COMPUTE": 5, "DRAIN": 6,
          "NEXT_GROUP": 7, "NEXT_LAYER": 8, "FINISH": 9}

#: Widths the templates spell out in their port and register declarations (the cocotb unit tests
#: build bitsmith_pe.v, bitsmith_requant.v, bitsmith_codebook.v unfilled, so these stay literal
#: there). They must be the accelerator's (bitsmith.accel.config); bitsmith_top.v takes the
#: descriptor length as a field.
TEMPLATE_WIDTHS = {"ACC_BITS": 32, "MULTIPLIER_BITS": 32, "SHIFT_FIELD_BITS": 6, "PARAM_WORD_BITS": 32,
                   "MAX_ACT_BITS": 8, "WEIGHT_BYTE_BITS": 8, "CODEBOOK_INDEX_BITS": 2, "CODEBOOK_SIZE": 4,
                   "CODEBOOK_VALUE_BITS": 8}
_ACCEL_WIDTHS = {"ACC_BITS": ACC_BITS, "MULTIPLIER_BITS": MULTIPLIER_BITS, "SHIFT_FIELD_BITS": SHIFT_FIELD_BITS,
                 "PARAM_WORD_BITS": PARAM_WORD_BITS, "MAX_ACT_BITS": MAX_ACT_BITS, "WEIGHT_BYTE_BITS": WEIGHT_BYTE_BITS,
                 "CODEBOOK_INDEX_BITS": CODEBOOK_INDEX_BITS, "CODEBOOK_SIZE": CODEBOOK_SIZE,
                 "CODEBOOK_VALUE_BITS": CODEBOOK_VALUE_BITS}
assert TEMPLATE_WIDTHS == _ACCEL_WIDTHS, "the Verilog templates' fixed widths differ from bitsmith.accel.config"

MAX_PRINTED_MISMATCHES = 20
_FIELD = re.compile(r"@@([A-Z0-9_]+)@@")


def template(name: str) -> str:
    """The text of one Verilog template shipped in bitsmith/rtl/templates."""
    return resources.files("bitsmith.rtl").joinpath("templates").joinpath(name).read_text()


def fill(text: str, fields: dict) -> str:
    """Replace every @@NAME@@; a field the template uses but `fields` lacks is an error."""
    missing = sorted(set(_FIELD.findall(text)) - set(fields))
    if missing:
        raise ConfigError(f"Verilog template needs field(s) {', '.join(missing)}")
    return _FIELD.sub(lambda m: str(fields[m.group(1)]), text)


def _hex_lines(path: Path) -> int:
    """Words in a $readmemh file (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def _verilog_path(path: Path, relative_to: Path | None = None) -> str:
    """A path as $readmemh reads it: absolute, or relative to the simulator's working folder
    `relative_to` (a folder whose memory files sit beside it then stays valid when moved)."""
    path = Path(path).resolve()
    text = os.path.relpath(path, Path(relative_to).resolve()) if relative_to is not None else str(path)
    return text.replace("\\", "/")


def memory_sizes(program: Program, memory_dir: str | os.PathLike) -> dict[str, int]:
    """Depths of every memory of the top: the image files' lengths, and the largest activation map,
    weight group and channel table of the program (buffers sized to what the program needs; the
    cost model's `rtl_memory_depths`, which this takes them from)."""
    memory_dir = Path(memory_dir)
    depths = rtl_memory_depths(program)
    return {
        "ACT_DEPTH": depths["ACT_DEPTH"],
        "ACT_BANKS": depths["ACT_BANKS"],
        "ACT_SHIFT": depths["ACT_SHIFT"],
        "ACT_BANK_DEPTH": depths["ACT_BANK_DEPTH"],
        "RING_DEPTH": depths["RING_DEPTH"],
        "MAXCH": depths["MAXCH"],
        "PARAM_DEPTH": max(1, _hex_lines(memory_dir / "param.hex")),
        "W8_DEPTH": max(1, _hex_lines(memory_dir / "W8.hex")),
        "W2_DEPTH": max(1, _hex_lines(memory_dir / "W2.hex")),
        "CB_DEPTH": max(1, _hex_lines(memory_dir / "CB8.hex")),
        "IN8_DEPTH": max(1, _hex_lines(memory_dir / "In8.hex")),
        "LS_DEPTH": max(1, _hex_lines(memory_dir / SCHEDULE_FILE)),
        "OUT32_DEPTH": depths["OUT32_DEPTH"],
    }


def packing_lanes(program: Program) -> dict[str, int]:
    """PCH, PPX of the top: the channel and pixel lanes the program's packing modes need (docs/hardware.md
    §3, `compiler.array_lanes`); 2 builds a second accumulator (and requant unit) per row for each."""
    channels, pixels = array_lanes(program)
    return {"PCH": channels, "PPX": pixels}


def _readmemh_lines(memory_dir: Path, relative_to: Path | None = None) -> str:
    """The image memories' initial block: $readmemh for each file the program has; a memory whose
    file is absent (a program without codebook layers has no W2.hex or CB8.hex) is never read and
    has depth 1, and gets a zero word so that it is driven (no undriven signal, no X)."""
    lines = []
    for name, mem, zero in (("param.hex", "param_mem", "32'd0"), ("W8.hex", "w8_mem", "{BUS{1'b0}}"),
                            ("W2.hex", "w2_mem", "{BUS{1'b0}}"), ("CB8.hex", "cb8_mem", "8'd0"),
                            ("In8.hex", "in8_mem", "{BUS{1'b0}}"), (SCHEDULE_FILE, "ls_mem", "64'd0")):
        if (memory_dir / name).is_file():
            lines.append(f'        $readmemh("{_verilog_path(memory_dir / name, relative_to)}", {mem});')
        else:
            lines.append(f"        {mem}[0] = {zero};   // no {name}: never read")
    return "\n".join(lines)


def generate_rtl(program: Program, out_dir: str | os.PathLike, images: int = 1, fault: str | None = None,
                 memory_dir: str | os.PathLike | None = None, relative_paths: bool = False) -> dict:
    """Write the design files and `tb_bitsmith.v` for `program` into `out_dir`.

    `memory_dir` holds the program's memory files (bitsmith.accel.memory.write_memory; default
    `out_dir`; checked against the sha256 digests of its program.json when it has one), `images`
    is how many images the testbench runs (In8.hex must hold that many), `fault` one of FAULTS (a
    deliberate bug, for testing the checker). With `relative_paths` the $readmemh paths are
    relative to `out_dir`, where the simulators run (bitsmith.rtl.simulators), so the work folder
    can move (bitsmith publishes it from a temporary folder). Returns a manifest: the Verilog
    files, the top names and the memory sizes used.
    """
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"unknown RTL fault {fault!r}; choose one of {', '.join(sorted(FAULTS))}")
    if images < 1:
        raise ConfigError(f"rtl: images must be at least 1, got {images}")
    out = Path(out_dir)
    memory_dir = Path(memory_dir) if memory_dir is not None else out
    if not (memory_dir / "param.hex").is_file():
        raise DataError(f"{memory_dir}: no param.hex; write the memory files first "
                        "(bitsmith.accel.memory.write_memory)")
    if (memory_dir / PROGRAM_FILE).is_file():
        verify_memory_folder(memory_dir)
    relative_to = out if relative_paths else None
    config = program.config
    words_per_image = input_cycles(program.layers[0], config)
    available = _hex_lines(memory_dir / "In8.hex") // max(1, words_per_image)
    if available < images:
        raise DataError(f"{memory_dir / 'In8.hex'} holds {available} image(s); the testbench needs {images}")
    sizes = memory_sizes(program, memory_dir)
    fields = {"R": config.pe, "C": config.simd, "BUS": config.bus_bits, **sizes, "DESCRIPTOR_WORDS": DESCRIPTOR_WORDS,
              **packing_lanes(program),
              "MAPPED_CONV": int(any(layer.kind == "conv" and layer.has_map for layer in program.layers)),
              "FAULT_SHIFT": 0, "FAULT_DROP_BIAS": 0, "FAULT_NO_ZIN": 0,
              "READMEMH": _readmemh_lines(memory_dir, relative_to),
              "PROGRAM_NAME": f"{len(program.layers)} layers, {config.pe}x{config.simd} PEs, bus {config.bus_bits}"
                              + (f", FAULT {fault}" if fault else "")}
    if fault:
        fields.update(FAULTS[fault])
    files = []
    for name in DESIGN_FILES:
        write_bytes_atomic(out / name, fill(template(name), fields).encode())
        files.append(name)
    write_bytes_atomic(out / TESTBENCH_FILE,
                       testbench(program, memory_dir, images, words_per_image, relative_to, sizes).encode())
    return {"files": files, "testbench": TESTBENCH_FILE, "top": "bitsmith_top", "tb_top": TESTBENCH_TOP,
            "sizes": sizes, "fault": fault, "images": images}


def _widen(value: str, bits: int) -> str:
    """A `bits`-wide Verilog value zero-extended to 32 bits."""
    return value if bits == ACC_BITS else f"{{{ACC_BITS - bits}'d0, {value}}}"


def _as_int(word: str, bits: int, signed: bool) -> str:
    """The 32-bit integer a zero-extended `bits`-wide stored value stands for (sign-extended when signed)."""
    if bits == ACC_BITS or not signed:
        return word
    return f"{{{{{ACC_BITS - bits}{{{word}[{bits - 1}]}}}}, {word}[{bits - 1}:0]}}"


def testbench(program: Program, memory_dir: Path, images: int, words_per_image: int,
              relative_to: Path | None = None, sizes: dict[str, int] | None = None) -> str:
    """tb_bitsmith.v: runs `images` images; after each layer compares every output value with
    expected/Lii.hex and prints MISMATCH / LAYER / CYCLES lines and a final SUMMARY."""
    if program.config.zero_skip != "none":
        raise ConfigError(f"the generated Verilog does not skip zeros (zero_skip {program.config.zero_skip!r}); "
                          "compile the program with zero_skip 'none' for RTL, and read zero-skipping cycles "
                          "from the cycle model (bitsmith hw simulate/report --zero-skip)")
    expected_cycles = program_cycles(program)["total"]
    decls, loads, checks = [], [], []
    for layer in program.layers:
        i = layer.index
        path = memory_dir / expected_file(i)
        if not path.is_file():
            raise DataError(f"{path} not found: write the memory files with the engine's expected outputs")
        bits = layer.stored_out_bits
        n = layer.out_elems
        mem = f"exp_l{i:02d}"
        decls.append(f"    reg [{bits - 1}:0] {mem} [0:{images * n - 1}];")
        loads.append(f'        $readmemh("{_verilog_path(path, relative_to)}", {mem});')
        source = "dut.out32[k]" if layer.raw_output else f"act_byte({layer.out_base} + k)"
        signed = layer.raw_output or layer.out_signed
        hw, w = layer.out_h * layer.out_w, layer.out_w
        got_bits, want_bits = _widen(source, bits), _widen(f"{mem}[img * {n} + k]", bits)
        got, want = _as_int("got_bits", bits, signed), _as_int("want_bits", bits, signed)
        checks.append(f"""            {i}: for (k = 0; k < {n}; k = k + 1) begin
                got_bits = {got_bits}; want_bits = {want_bits};
                got = {got}; want = {want};
                if (got !== want) report(img, {i}, k / {hw}, (k / {w}) % {layer.out_h}, k % {w}, got, want);
            end""")
    banks = sizes or rtl_memory_depths(program)   # the top's depths (generate_rtl passes its own)
    nb, kb, db = banks["ACT_BANKS"], banks["ACT_SHIFT"], banks["ACT_BANK_DEPTH"]
    bank_reads = "\n".join(f"            {b}: act_byte = dut.act_bank[{b}].mem[a >> {kb}];" for b in range(nb))
    return f"""// Generated by bitsmith.rtl.generate: runs {images} image(s) through bitsmith_top and compares
// every output value of every layer with the integer engine's (expected/Lii.hex). Nothing but
// equality passes.
`timescale 1ns/1ps
module {TESTBENCH_TOP};
    localparam IMAGES = {images};
    localparam WORDS_PER_IMAGE = {words_per_image};
    localparam MAX_CYCLES = {2 * expected_cycles + 1000};   // watchdog: twice the §5 count
    localparam MAX_PRINT = {MAX_PRINTED_MISMATCHES};
    localparam S_NEXT_LAYER = {STATES['NEXT_LAYER']};

    reg clk = 1'b0, rst = 1'b1, start = 1'b0;
    reg [31:0] image_base = 0;
    wire done;
    /* verilator lint_off UNUSEDSIGNAL */
    wire busy;
    /* verilator lint_on UNUSEDSIGNAL */
    wire [31:0] cycles;
    wire [3:0] state;
    wire [15:0] layer;
    // The host read port and busy are outputs this testbench does not use (the checks read the
    // buffers directly); connected all the same, so the DUT is the one a host sees.
    /* verilator lint_off UNUSEDSIGNAL */
    wire [31:0] host_data;
    /* verilator lint_on UNUSEDSIGNAL */
    bitsmith_top dut (.clk(clk), .rst(rst), .start(start), .image_base(image_base), .done(done),
                      .busy(busy), .cycles(cycles), .state(state), .layer(layer),
                      .host_mem(2'd0), .host_addr(32'd0), .host_data(host_data));
    initial forever #5 clk = ~clk;

{chr(10).join(decls)}
    initial begin
{chr(10).join(loads)}
    end

    integer img, k, total_mismatches, layer_mismatches, printed, layer_start;
    reg [31:0] got_bits, want_bits;   // one output value, zero-extended from its stored width
    reg signed [31:0] got, want;

    // Byte a of the DUT's activation memory: bank a mod {nb}, word a >> {kb} (bitsmith.accel.banks).
    function [7:0] act_byte(input integer a);
`ifdef SYNTHESIS
        case (a % {nb})
{bank_reads}
            default: act_byte = 8'd0;
        endcase
`else
        act_byte = dut.act_mem[(a % {nb}) * {db} + (a >> {kb})];
`endif
    endfunction

    task report;
        input integer image, lay, channel, y, x;
        input signed [31:0] g, w;
        begin
            layer_mismatches = layer_mismatches + 1;
            total_mismatches = total_mismatches + 1;
            if (printed < MAX_PRINT)
                $display("MISMATCH image=%0d layer=%0d channel=%0d y=%0d x=%0d got=%0d want=%0d",
                         image, lay, channel, y, x, g, w);
            printed = printed + 1;
        end
    endtask

    task check_layer;
        input integer lay;
        begin
            layer_mismatches = 0;
            case (lay)
{chr(10).join(checks)}
            default: ;
            endcase
        end
    endtask

    initial begin
`ifdef WAVES
        $dumpfile("tb_bitsmith.vcd");
        $dumpvars(0, {TESTBENCH_TOP});
`endif
        total_mismatches = 0; printed = 0;
        repeat (3) @(negedge clk);
        rst = 1'b0;
        for (img = 0; img < IMAGES; img = img + 1) begin
            image_base = img * WORDS_PER_IMAGE;
            @(negedge clk) start = 1'b1;
            @(negedge clk) start = 1'b0;
            layer_start = 0;
            while (!done) begin
                if (state == S_NEXT_LAYER) begin
                    check_layer({{16'd0, layer}});
                    $display("LAYER image=%0d layer=%0d cycles=%0d mismatches=%0d", img, layer,
                             cycles + 1 - layer_start, layer_mismatches);
                    layer_start = cycles + 1;
                end
                if (cycles > MAX_CYCLES) begin
                    $display("TIMEOUT image=%0d cycles=%0d state=%0d layer=%0d", img, cycles, state, layer);
                    $display("SUMMARY mismatches=%0d images=%0d timeout=1", total_mismatches, img);
                    $finish;
                end
                @(negedge clk);
            end
            $display("CYCLES image=%0d total=%0d", img, cycles);
        end
        $display("SUMMARY mismatches=%0d images=%0d", total_mismatches, IMAGES);
        $finish;
    end
endmodule
"""
