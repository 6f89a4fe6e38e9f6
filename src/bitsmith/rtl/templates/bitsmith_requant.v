// Requant unit, one per accumulator lane (docs/arithmetic.md §4, docs/hardware.md §3):
//   y = clamp(z_out + ((acc*m + 2^(s-1)) >>> s), lo, hi)
// acc*m in 64-bit signed arithmetic, >>> arithmetic, no rounding term when s = 0, shift 0..63.
// Computed as the same integer in a narrower datapath (docs/hardware.md §3 "Requant unit"):
//   for s ≥ 1, (x + 2^(s-1)) >>> s == ((x >>> (s-1)) + 1) >>> 1, so one shifter and no rounding
//   constant; and the shifted value is saturated to 35 bits first, which cannot change y: anything
//   beyond ±2^34 lands beyond ±2^33 after the last halving, where z_out (32 bits) cannot bring it
//   back inside [lo, hi] (32 bits), so it clamps to the same bound either way.
// FAULT_SHIFT != 0 is a deliberate bug (the checker's own test): the shift is off by that amount.
`timescale 1ns/1ps
module bitsmith_requant #(
    parameter FAULT_SHIFT = 0
) (
    input  wire signed [31:0] acc,
    input  wire signed [31:0] m,
    input  wire        [5:0]  s,
    input  wire signed [31:0] z_out,
    input  wire signed [31:0] lo,
    input  wire signed [31:0] hi,
    output reg  signed [31:0] y
);
    localparam signed [36:0] SAT_HI = 37'sd17179869183;    //  2^34 - 1
    localparam signed [36:0] SAT_LO = -37'sd17179869184;   // -2^34
    reg        [5:0]  shift;
    reg signed [63:0] product, half;
    reg signed [36:0] half_sat, up, scaled, biased;
    always @* begin
        shift    = s + FAULT_SHIFT;
        product  = $signed({{32{acc[31]}}, acc}) * $signed({{32{m[31]}}, m});   // 64-bit signed
        half     = (shift == 6'd0) ? product : (product >>> (shift - 6'd1));     // x >>> (s-1)
        // (a concatenation is unsigned: every operand below is made signed where it is compared)
        half_sat = (half[63:34] == {30{half[34]}}) ? $signed({{2{half[34]}}, half[34:0]})  // fits 35 bits
                 : half[63] ? SAT_LO : SAT_HI;
        up       = half_sat + 37'sd1;
        scaled   = (shift == 6'd0) ? half_sat : (up >>> 1);
        biased   = scaled + $signed({{5{z_out[31]}}, z_out});
        y = (biased < $signed({{5{lo[31]}}, lo})) ? lo : (biased > $signed({{5{hi[31]}}, hi})) ? hi : biased[31:0];
    end
endmodule
