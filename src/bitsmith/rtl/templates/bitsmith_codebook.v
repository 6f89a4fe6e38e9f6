// Codebook decoder (docs/hardware.md §3): four signed 8-bit registers loaded once per layer; each of
// the N 2-bit indices read from the weight ring selects one of them (00 most negative, 01 other
// negative, 10 zero, 11 positive in the source's order; any four values work).
`timescale 1ns/1ps
module bitsmith_codebook #(
    parameter N = 64
) (
    input  wire           clk,
    input  wire           load,        // write value into register load_index
    input  wire [1:0]     load_index,
    input  wire [7:0]     load_value,
    input  wire [N*2-1:0] indices,     // index n at [n*2 +: 2]
    output wire [N*8-1:0] values       // value n at [n*8 +: 8]
);
    reg [7:0] book [0:3];
    always @(posedge clk)
        if (load) book[load_index] <= load_value;
    genvar n;
    generate
        for (n = 0; n < N; n = n + 1) begin : decode
            assign values[n*8 +: 8] = book[indices[n*2 +: 2]];
        end
    endgenerate
endmodule
