// bitsmith HLS reference: runs the layers of a DeepBurning-MixQ style config.h / weights.hpp
// exactly as the source format defines them (docs/hls.md), in plain C++17 with 64-bit integers.
//
//   g++ -O2 -std=c++17 -I DIR -o hls_reference DIR/hls_reference.cpp
//   ./hls_reference INPUT.txt OUT_DIR
//
// INPUT.txt: the input codes of one or more images, CHW order, whitespace separated (HLS_IN_SIZE
// values per image). OUT_DIR/Lii.txt: the output of layer ii (order of HLS_LAYERS), one integer per
// line, images back to back. Nothing here knows about a particular network: the layer list is
// the HLS_LAYERS X-macro of config.h.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "hls_shim.h"
#include "config.h"
#include "weights.hpp"

namespace {

using Codes = std::vector<int64_t>;

struct ConvShape {
    int k, s, p, ich, irow, icol, och, orow, ocol, simd, pe, w_bit, l_shift, raw;
    int64_t pad_val, out_lo, out_hi;
};

// floor(v / 2^t) without relying on the implementation-defined >> of negative values (C++17).
int64_t floor_shift(int64_t v, int t) {
    if (t == 0) return v;
    return v >= 0 ? (v >> t) : -(((-(v + 1)) >> t) + 1);
}

template <int WN, int PE, int TILES, int IB, int BB, int ROWS>
Codes conv_layer(const Codes& x, const ConvShape& c, const ap_uint<WN> (&w)[PE][TILES],
                 const ap_int<IB> (&inc)[PE][ROWS], const ap_int<BB> (&bias)[PE][ROWS]) {
    static_assert(ROWS * PE > 0, "empty layer");
    const int terms = c.k * c.k * c.ich, words = terms / c.simd;
    const int64_t rounding = c.l_shift > 0 ? (int64_t{1} << (c.l_shift - 1)) : 0;
    Codes y(size_t(c.och) * c.orow * c.ocol);
    for (int o = 0; o < c.och; ++o) {
        const int lane = o % c.pe, row = o / c.pe;           // channel o: PE lane o % PE, row o / PE
        for (int oy = 0; oy < c.orow; ++oy) {
            for (int ox = 0; ox < c.ocol; ++ox) {
                int64_t acc = 0;
                for (int j = 0; j < words; ++j) {
                    const ap_uint<WN>& word = w[lane][row * words + j];
                    for (int e = 0; e < c.simd; ++e) {
                        const int t = j * c.simd + e;        // term t = (kc*K + kr)*ich + ic
                        const int ic = t % c.ich, kr = (t / c.ich) % c.k, kc = t / (c.ich * c.k);
                        const int iy = oy * c.s - c.p + kr, ix = ox * c.s - c.p + kc;
                        const bool inside = iy >= 0 && iy < c.irow && ix >= 0 && ix < c.icol;
                        const int64_t xv = inside ? x[(size_t(ic) * c.irow + iy) * c.icol + ix] : c.pad_val;
                        acc += sign_extend(word.range(e * c.w_bit + c.w_bit - 1, e * c.w_bit), c.w_bit) * xv;
                    }
                }
                int64_t v = floor_shift(acc * int64_t(inc[lane][row]) + int64_t(bias[lane][row]) + rounding, c.l_shift);
                if (!c.raw) v = v < c.out_lo ? c.out_lo : (v > c.out_hi ? c.out_hi : v);
                y[(size_t(o) * c.orow + oy) * c.ocol + ox] = v;
            }
        }
    }
    return y;
}

Codes maxpool_layer(const Codes& x, int k, int s, int ch, int irow, int icol, int orow, int ocol) {
    Codes y(size_t(ch) * orow * ocol);
    for (int c = 0; c < ch; ++c)
        for (int oy = 0; oy < orow; ++oy)
            for (int ox = 0; ox < ocol; ++ox) {
                int64_t best = x[(size_t(c) * irow + oy * s) * icol + ox * s];
                for (int ky = 0; ky < k; ++ky)
                    for (int kx = 0; kx < k; ++kx) {
                        const int64_t v = x[(size_t(c) * irow + oy * s + ky) * icol + ox * s + kx];
                        if (v > best) best = v;
                    }
                y[(size_t(c) * orow + oy) * ocol + ox] = best;
            }
    return y;
}

}  // namespace

#define BITSMITH_RUN_CONV(n)                                                                          \
    x = conv_layer(x,                                                                                 \
                   ConvShape{CONV_##n##_K, CONV_##n##_S, CONV_##n##_P, CONV_##n##_IFM_CH,             \
                             CONV_##n##_IFM_ROW, CONV_##n##_IFM_COL, CONV_##n##_OFM_CH,               \
                             CONV_##n##_OFM_ROW, CONV_##n##_OFM_COL, CONV_##n##_SIMD, CONV_##n##_PE,  \
                             CONV_##n##_W_BIT, CONV_##n##_L_SHIFT, CONV_##n##_RAW,                    \
                             CONV_##n##_PAD_VAL, CONV_##n##_OUT_LO, CONV_##n##_OUT_HI},               \
                   conv_##n##_w, conv_##n##_inc, conv_##n##_bias);                                    \
    write_layer(layer++, x);

#define BITSMITH_RUN_POOL(n)                                                                          \
    x = maxpool_layer(x, POOL_##n##_K, POOL_##n##_S, POOL_##n##_IFM_CH, POOL_##n##_IFM_ROW,          \
                      POOL_##n##_IFM_COL, POOL_##n##_OFM_ROW, POOL_##n##_OFM_COL);                   \
    write_layer(layer++, x);

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " INPUT.txt OUT_DIR\n";
        return 2;
    }
    std::ifstream in(argv[1]);
    if (!in) {
        std::cerr << "cannot read " << argv[1] << "\n";
        return 2;
    }
    Codes all;
    for (int64_t v; in >> v;) all.push_back(v);
    if (!in.eof() || all.empty() || all.size() % HLS_IN_SIZE != 0) {
        std::cerr << argv[1] << ": expected a multiple of " << HLS_IN_SIZE << " integers, read " << all.size() << "\n";
        return 2;
    }
    std::vector<std::ofstream> outs;
    for (int i = 0; i < HLS_NUM_LAYERS; ++i) {
        char name[16];
        std::snprintf(name, sizeof name, "/L%02d.txt", i);
        outs.emplace_back(std::string(argv[2]) + name);
        if (!outs.back()) {
            std::cerr << "cannot write " << argv[2] << name << "\n";
            return 2;
        }
    }
    auto write_layer = [&outs](int i, const Codes& values) {
        for (int64_t v : values) outs[i] << v << '\n';
    };
    for (size_t image = 0; image < all.size() / HLS_IN_SIZE; ++image) {
        Codes x(all.begin() + image * HLS_IN_SIZE, all.begin() + (image + 1) * HLS_IN_SIZE);
        int layer = 0;
        HLS_LAYERS(BITSMITH_RUN_CONV, BITSMITH_RUN_POOL)
        (void)layer;
    }
    for (auto& f : outs) {
        f.flush();
        if (!f) {
            std::cerr << "write error in " << argv[2] << "\n";
            return 1;
        }
    }
    return 0;
}
