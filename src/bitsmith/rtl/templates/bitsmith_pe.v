// bitsmith PE (source c_unit, docs/hardware.md §3 "Packed MACs"): ONE signed 27 x 18-bit multiplier,
// the size of a DSP48E2, that computes up to four products per cycle:
//   A = (w_hi << 18) + w_lo   (two weights, sign-extended; w_hi = 0 when the layer packs no channels)
//   B = d_p                   (modes 1 and 2)
//   B = (d_q << 9) + d_p      (mode 4, quad: d of the same term at two output pixels p and q)
//   P = A * B, split back into signed fields with the sign-correction (borrow) term of each lower field:
//   modes 1, 2: w_lo*d_p = P[17:0], w_hi*d_p = P[35:18] + P[17]
//   mode 4:     w_lo*d_p, w_lo*d_q, w_hi*d_p, w_hi*d_q = 9-bit fields at bits 0, 9, 18, 27, each
//               plus the sign bit of the field below it (after that field's own correction).
// The compiler allows a mode only if every product fits its field (18 bits: any 8-bit weight times a
// 10-bit d; 9 bits: e.g. 4-bit weights times 5-bit d), so the fields are exact.
// prod slot s = 2*k + q: (lo, p), (lo, q), (hi, p), (hi, q), each 18-bit signed (slots 1, 3 are 0
// unless quad). The row's accumulation chain (bitsmith_pe_array) adds them.
`timescale 1ns/1ps
module bitsmith_pe (
    input  wire signed [7:0]  w_lo,    // weight of the row's first channel (2..8-bit codes sign-extended, or a codebook value)
    input  wire signed [7:0]  w_hi,    // weight of its second channel (packing modes 2, 4), else 0
    input  wire signed [9:0]  d_p,     // x - z_in at pixel p, or 0 for a padded / out-of-range term
    // d at the pass's second pixel (mode 4), else 0. Mode 4's fields hold |w*d| < 256 with |w| >= 2,
    // so d fits 9 bits and B takes d_q[8:0]; bit 9 only repeats its sign.
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire signed [9:0]  d_q,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire               quad,    // mode 4: two pixels in B, four 9-bit fields in P
    output reg  [4*18-1:0]    prod
);
    reg signed [26:0] a;
    reg signed [17:0] b;
    // A 27 x 18 signed product is what maps to one DSP48E2; its bits 44:36 only repeat the sign of the
    // top field, which no mode reads.
    /* verilator lint_off UNUSEDSIGNAL */
    reg signed [44:0] p;
    /* verilator lint_on UNUSEDSIGNAL */
    reg        [26:0] r1;          // mode 4: (P - field 0) >> 9, bits 35:9 of P plus the borrow
    reg        [17:0] r2;          // (r1 - field 1) >> 9
    reg        [8:0]  r3;          // (r2 - field 2) >> 9: field 3
    reg        [17:0] hi;
    always @* begin
        a  = $signed({w_hi[7], w_hi, 18'd0}) + $signed({{19{w_lo[7]}}, w_lo});
        b  = quad ? $signed({d_q[8:0], 9'd0}) + $signed({{8{d_p[9]}}, d_p}) : $signed({{8{d_p[9]}}, d_p});
        p  = a * b;
        hi = p[35:18] + {17'd0, p[17]};
        r1 = p[35:9] + {26'd0, p[8]};
        r2 = r1[26:9] + {17'd0, r1[8]};
        r3 = r2[17:9] + {8'd0, r2[8]};
        if (quad)
            prod = {{9{r3[8]}}, r3, {9{r2[8]}}, r2[8:0], {9{r1[8]}}, r1[8:0], {9{p[8]}}, p[8:0]};
        else
            prod = {18'd0, hi, 18'd0, p[17:0]};
    end
endmodule
