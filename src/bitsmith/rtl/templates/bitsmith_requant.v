// Requant unit, one per row (docs/arithmetic.md §4, docs/hardware.md §3):
//   y = clamp(z_out + ((acc*m + 2^(s-1)) >>> s), lo, hi)
// acc*m in 64-bit signed arithmetic, >>> arithmetic, no rounding term when s = 0, shift 0..63.
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
    reg        [5:0]  shift;
    reg signed [63:0] product, rounding, scaled, biased, z_out64, lo64, hi64;
    always @* begin
        z_out64  = {{32{z_out[31]}}, z_out};   // sign-extended to the product's width
        lo64     = {{32{lo[31]}}, lo};
        hi64     = {{32{hi[31]}}, hi};
        shift    = s + FAULT_SHIFT;
        product  = $signed({{32{acc[31]}}, acc}) * $signed({{32{m[31]}}, m});   // 64-bit signed
        rounding = (shift == 6'd0) ? 64'sd0 : (64'sd1 <<< (shift - 6'd1));
        scaled   = (product + rounding) >>> shift;
        biased   = scaled + z_out64;
        y = (biased < lo64) ? lo : (biased > hi64) ? hi : biased[31:0];
    end
endmodule
