// Pool unit (docs/hardware.md §3): R lanes, one window element per lane per cycle. Max keeps the
// largest code (signed or unsigned compare); avg sums x - z_in onto the lane's start value (the
// channel's bias, 0 for a plain average) and the requant unit divides afterwards.
module bitsmith_pool #(
    parameter R = 8
) (
    input  wire             clk,
    input  wire             enable,      // take one window element this cycle
    input  wire             first,       // first window element of a pixel
    input  wire             is_max,      // 1 max pool, 0 average pool
    input  wire             in_signed,
    input  wire signed [31:0] z_in,
    input  wire [R*8-1:0]   codes,       // lane r at [r*8 +: 8]
    input  wire [R*32-1:0]  start,       // lane r's start value for an average (its bias)
    output wire [R*32-1:0]  acc
);
    genvar r;
    generate
        for (r = 0; r < R; r = r + 1) begin : lane
            reg  signed [31:0] acc_q;
            wire [7:0]         code = codes[r*8 +: 8];
            wire signed [31:0] x = in_signed ? {{24{code[7]}}, code} : {24'd0, code};
            wire signed [31:0] sum_in = first ? $signed(start[r*32 +: 32]) : acc_q;
            always @(posedge clk)
                if (enable) begin
                    if (is_max) acc_q <= (first || x > acc_q) ? x : acc_q;
                    else        acc_q <= sum_in + (x - z_in);
                end
            assign acc[r*32 +: 32] = acc_q;
        end
    endgenerate
endmodule
