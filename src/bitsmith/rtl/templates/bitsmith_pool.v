// Pool lanes (docs/hardware.md §3): R lanes, one window element per lane per cycle. Max mode keeps
// the largest code (signed or unsigned compare): max pools, and the copies of reorg and concat (a 1x1
// window). Sum mode adds (x - z)*m onto the lane's start value (the channel's bias, 0): average pools
// and lone requants (m = 1), add (element 0 of input a times m_a, element 1 of input b times m_b);
// the requant unit follows. The caller gives each element's signedness, zero point and multiplier.
`timescale 1ns/1ps
module bitsmith_pool #(
    parameter R = 8
) (
    input  wire             clk,
    input  wire             enable,      // take one window element this cycle
    input  wire             first,       // first window element of a pixel
    input  wire             is_max,      // 1 max mode, 0 sum mode
    input  wire             in_signed,   // this element's codes
    input  wire signed [31:0] z_in,      // this element's zero point
    input  wire [15:0]      m,           // this element's multiplier (0..2^15-1)
    input  wire [R*8-1:0]   codes,       // lane r at [r*8 +: 8]
    input  wire [R*32-1:0]  start,       // lane r's start value for a sum (its bias)
    output wire [R*32-1:0]  acc
);
    genvar r;
    generate
        for (r = 0; r < R; r = r + 1) begin : lane
            reg  signed [31:0] acc_q;
            wire [7:0]         code = codes[r*8 +: 8];
            wire signed [31:0] x = in_signed ? {{24{code[7]}}, code} : {24'd0, code};
            wire signed [31:0] sum_in = first ? $signed(start[r*32 +: 32]) : acc_q;
            // |x - z| <= 255 (a code and a zero point of one 8-bit range): bits 9:0 of the difference
            // hold it, so the product is 10 x 16 bits signed (m < 2^15), one DSP48E2 as the cost model counts.
            /* verilator lint_off UNUSEDSIGNAL */
            wire signed [31:0] diff = x - z_in;
            /* verilator lint_on UNUSEDSIGNAL */
            wire signed [25:0] term = $signed(diff[9:0]) * $signed(m);
            always @(posedge clk)
                if (enable) begin
                    if (is_max) acc_q <= (first || x > acc_q) ? x : acc_q;
                    else        acc_q <= sum_in + {{6{term[25]}}, term};
                end
            assign acc[r*32 +: 32] = acc_q;
        end
    endgenerate
endmodule
