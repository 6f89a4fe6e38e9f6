// R rows x C columns of PEs (docs/hardware.md §3, §4). Every row sees its own C data terms (the same
// ones in a dense conv; those of its convolution group in a grouped one) and its own C weights; row
// r's chain starts at its accumulator, or at its bias on the first term block of a pixel (clear), and
// its end is written back to the accumulator when enable is high.
`timescale 1ns/1ps
module bitsmith_pe_array #(
    parameter R = 8,
    parameter C = 8
) (
    input  wire              clk,
    input  wire              enable,   // accumulate this cycle
    input  wire              clear,    // first term block: start from the bias instead of the accumulator
    input  wire [R*C*8-1:0]  weights,  // row r, column c at [(r*C+c)*8 +: 8]
    input  wire [R*C*10-1:0] data,     // row r, column c at [(r*C+c)*10 +: 10]
    input  wire [R*32-1:0]   bias,     // row r at [r*32 +: 32]
    output wire [R*32-1:0]   acc       // row r at [r*32 +: 32]
);
    genvar r, c;
    generate
        for (r = 0; r < R; r = r + 1) begin : row
            reg  signed [31:0] acc_q;
            wire [31:0] chain [0:C];      // chain[c] is PE c's l_in (one net each: cheap to simulate)
            assign chain[0] = clear ? bias[r*32 +: 32] : acc_q;
            for (c = 0; c < C; c = c + 1) begin : col
                bitsmith_pe pe (
                    .w(weights[(r*C+c)*8 +: 8]),
                    .d(data[(r*C+c)*10 +: 10]),
                    .en(1'b1),
                    .l_in(chain[c]),
                    .out(chain[c+1])
                );
            end
            always @(posedge clk)
                if (enable) acc_q <= chain[C];
            assign acc[r*32 +: 32] = acc_q;
        end
    endgenerate
endmodule
