// bitsmith PE (source c_unit, docs/hardware.md §3): out = w*d + l_in.
// Combinational, so the C PEs of a row form a chain that settles within one cycle and the chain's
// end is written back to the row's accumulator every cycle (no pipeline fill: §5 counts no such cycle).
// en = 0 makes the PE pass l_in through (an idle PE adds nothing).
// Written as a process rather than an assign: an event-driven simulator then evaluates each PE once
// per change of its inputs instead of rippling the whole chain after every single input (same logic).
`timescale 1ns/1ps
module bitsmith_pe (
    input  wire signed [7:0]  w,     // signed weight (2..8-bit codes sign-extended, or a codebook value)
    input  wire signed [9:0]  d,     // x - z_in, or 0 for a padded / out-of-range term
    input  wire               en,
    input  wire signed [31:0] l_in,  // previous PE of the chain, or the row's accumulator
    output reg  signed [31:0] out
);
    reg signed [17:0] product;       // 8 x 10 bits, signed
    always @* begin
        product = w * d;
        out = en ? l_in + {{14{product[17]}}, product} : l_in;
    end
endmodule
