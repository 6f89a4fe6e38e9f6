// R rows x C columns of PEs (docs/hardware.md §3, §4), each PE one packed multiplier (bitsmith_pe).
// Row r keeps NL = PCH*PPX accumulators, lane l = k*PPX + q: output channel lane k (k = 1: the
// second channel of a packed pair) at pixel lane q (q = 1: the pass's second pixel, mode 4). Every row
// sees its own C data terms per pixel lane (the same ones in a dense conv; those of its convolution
// group in a grouped one) and its own C weights per channel lane; lane l's chain starts at its
// accumulator, or at its bias on the first term block of a pixel pass (clear), adds product slot
// 2k + q of every PE of the row, and its end is written back to the accumulator when enable is high.
// PCH = 2 and PPX = 2 are built only when the program has a layer in packing mode 2 or 4.
`timescale 1ns/1ps
module bitsmith_pe_array #(
    parameter R = 8,
    parameter C = 8,
    parameter PCH = 1,                 // channel lanes per row built: 1, or 2 (packing modes 2, 4)
    parameter PPX = 1                  // pixel lanes built: 1, or 2 (packing mode 4)
) (
    input  wire                    clk,
    input  wire                    enable,   // accumulate this cycle
    input  wire                    clear,    // first term block: start from the bias instead of the accumulator
    input  wire                    quad,     // the layer runs in packing mode 4
    input  wire [R*C*PCH*8-1:0]    weights,  // row r, column c, channel lane k at [((r*C+c)*PCH+k)*8 +: 8]
    input  wire [R*C*PPX*10-1:0]   data,     // row r, column c, pixel lane q at [((r*C+c)*PPX+q)*10 +: 10]
    input  wire [R*PCH*PPX*32-1:0] bias,     // row r, lane l at [(r*NL+l)*32 +: 32]
    output wire [R*PCH*PPX*32-1:0] acc       // row r, lane l at [(r*NL+l)*32 +: 32]
);
    localparam NL = PCH * PPX;
    genvar r, c, l;
    generate
        for (r = 0; r < R; r = r + 1) begin : row
            // Slots a configuration does not build a lane for (NL < 4) are left unread.
            /* verilator lint_off UNUSEDSIGNAL */
            wire [C*4*18-1:0] prods;          // PE c's four product slots at [c*72 +: 72]
            /* verilator lint_on UNUSEDSIGNAL */
            for (c = 0; c < C; c = c + 1) begin : col
                wire [7:0] w_hi;
                wire [9:0] d_q;
                if (PCH == 2) begin : pair
                    assign w_hi = weights[((r*C+c)*PCH+1)*8 +: 8];
                end else begin : single
                    assign w_hi = 8'd0;
                end
                if (PPX == 2) begin : two_pixels
                    assign d_q = data[((r*C+c)*PPX+1)*10 +: 10];
                end else begin : one_pixel
                    assign d_q = 10'd0;
                end
                bitsmith_pe pe (
                    .w_lo(weights[((r*C+c)*PCH)*8 +: 8]), .w_hi(w_hi),
                    .d_p(data[((r*C+c)*PPX)*10 +: 10]), .d_q(d_q),
                    .quad(quad && PPX == 2),
                    .prod(prods[c*72 +: 72])
                );
            end
            for (l = 0; l < NL; l = l + 1) begin : lane
                localparam SLOT = 2 * (l / PPX) + (l % PPX);
                reg signed [31:0] acc_q, sum;
                // The row's chain as one process: an event-driven simulator evaluates it once per
                // change of its inputs instead of rippling C adders one by one (same logic).
                always @* begin : chain
                    integer k;
                    sum = clear ? bias[(r*NL+l)*32 +: 32] : acc_q;
                    for (k = 0; k < C; k = k + 1)
                        sum = sum + {{14{prods[k*72 + SLOT*18 + 17]}}, prods[k*72 + SLOT*18 +: 18]};
                end
                always @(posedge clk)
                    if (enable) acc_q <= sum;
                assign acc[(r*NL+l)*32 +: 32] = acc_q;
            end
        end
    endgenerate
endmodule
