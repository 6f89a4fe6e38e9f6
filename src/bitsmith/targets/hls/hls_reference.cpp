// bitsmith HLS reference: runs the layers of a DeepBurning-MixQ style config.h / weights.hpp
// exactly as the format defines them (docs/hls.md), in plain C++17 with 64-bit integers.
//
//   g++ -O2 -std=c++17 -I DIR -o hls_reference DIR/hls_reference.cpp
//   ./hls_reference INPUT.txt OUT_DIR
//
// INPUT.txt: the input codes of one or more images, CHW order, whitespace separated (HLS_IN_SIZE
// values per image). OUT_DIR/Lii.txt: the output of layer ii (order of HLS_LAYERS), one integer per
// line, images back to back. Nothing here knows about a particular network: the layer list is
// the HLS_LAYERS X-macro of config.h, and every layer reads the activation arrays it names
// (INPUT / INPUTS: HLS_INPUT or an earlier layer's NAME), so any graph of layers runs.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hls_shim.h"
#include "config.h"
#include "weights.hpp"

namespace {

using Codes = std::vector<int64_t>;
using Activations = std::map<std::string, Codes>;  // tensor name -> its codes (one image)

struct ConvShape {
    int k, s, pad_top, pad_left, groups, ich, irow, icol, och, orow, ocol, simd, pe, w_bit, l_shift, raw;
    int64_t pad_val, out_lo, out_hi;
};

// floor(v / 2^t) without relying on the implementation-defined >> of negative values (C++17).
[[maybe_unused]] int64_t floor_shift(int64_t v, int t) {
    if (t == 0) return v;
    return v >= 0 ? (v >> t) : -(((-(v + 1)) >> t) + 1);
}

[[maybe_unused]] int64_t rounding(int l_shift) { return l_shift > 0 ? (int64_t{1} << (l_shift - 1)) : 0; }

[[maybe_unused]] int64_t clip(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The activation array `name` (HLS_INPUT or an earlier layer's output) with `size` codes.
const Codes& read_input(const Activations& acts, const char* layer, const char* name, size_t size) {
    auto it = acts.find(name);
    if (it == acts.end() || it->second.size() != size) {
        std::cerr << layer << ": input " << name << (it == acts.end() ? " was not computed" : " has the wrong size")
                  << "\n";
        std::exit(3);
    }
    return it->second;
}

// A CONV_n's weight fields, inc and bias read out of its weights.hpp arrays: channel o is PE lane
// o % PE, row o / PE; its K = k*k*ich/groups terms are words row*K/SIMD ... of the lane, SIMD fields
// of W_BIT bits per word, element 0 lowest. (Only this reading depends on the array types; the
// arithmetic below is one function for every layer, which keeps the compile short.)
struct ConvParams {
    std::vector<int64_t> w;          // [och][K]
    std::vector<int64_t> inc, bias;  // [och]
};

template <int WN, int PE, int TILES, int IB, int BB, int ROWS>
ConvParams conv_params(const ConvShape& c, const ap_uint<WN> (&w)[PE][TILES], const ap_int<IB> (&inc)[PE][ROWS],
                       const ap_int<BB> (&bias)[PE][ROWS]) {
    static_assert(ROWS * PE > 0, "empty layer");
    const int terms = c.k * c.k * (c.ich / c.groups), words = terms / c.simd;
    ConvParams p{std::vector<int64_t>(size_t(c.och) * terms), std::vector<int64_t>(c.och), std::vector<int64_t>(c.och)};
    for (int o = 0; o < c.och; ++o) {
        const int lane = o % c.pe, row = o / c.pe;
        for (int j = 0; j < words; ++j)
            for (int e = 0; e < c.simd; ++e)
                p.w[size_t(o) * terms + j * c.simd + e] =
                    sign_extend(w[lane][row * words + j].range(e * c.w_bit + c.w_bit - 1, e * c.w_bit), c.w_bit);
        p.inc[o] = int64_t(inc[lane][row]);
        p.bias[o] = int64_t(bias[lane][row]);
    }
    return p;
}

// CONV_n: output channel o of group g = o / (och/groups) reads input channels g*ich/groups ...;
// term t = (kc*k + kr)*(ich/groups) + ic; padded positions (top P, left P_LEFT) hold PAD_VAL.
[[maybe_unused]] Codes conv_layer(const Codes& x, const ConvShape& c, const ConvParams& p) {
    const int icg = c.ich / c.groups, ocg = c.och / c.groups, terms = c.k * c.k * icg;
    Codes y(size_t(c.och) * c.orow * c.ocol);
    for (int o = 0; o < c.och; ++o) {
        const int first_ic = (o / ocg) * icg;
        const int64_t* w = &p.w[size_t(o) * terms];
        for (int oy = 0; oy < c.orow; ++oy) {
            for (int ox = 0; ox < c.ocol; ++ox) {
                int64_t acc = 0;
                for (int t = 0; t < terms; ++t) {
                    const int ic = t % icg, kr = (t / icg) % c.k, kc = t / (icg * c.k);
                    const int iy = oy * c.s - c.pad_top + kr, ix = ox * c.s - c.pad_left + kc;
                    const bool inside = iy >= 0 && iy < c.irow && ix >= 0 && ix < c.icol;
                    acc += w[t] * (inside ? x[(size_t(first_ic + ic) * c.irow + iy) * c.icol + ix] : c.pad_val);
                }
                const int64_t v = floor_shift(acc * p.inc[o] + p.bias[o] + rounding(c.l_shift), c.l_shift);
                y[(size_t(o) * c.orow + oy) * c.ocol + ox] = c.raw ? v : clip(v, c.out_lo, c.out_hi);
            }
        }
    }
    return y;
}

// POOL_n: the maximum of each k x k window, stride s, no padding.
[[maybe_unused]] Codes maxpool_layer(const Codes& x, int k, int s, int ch, int irow, int icol, int orow, int ocol) {
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

// REORG_n: out[c*S*S + i*S + j][y][x] = in[c][y*S + i][x*S + j].
[[maybe_unused]] Codes reorg_layer(const Codes& x, int s, int ch, int irow, int icol) {
    const int orow = irow / s, ocol = icol / s;
    Codes y(x.size());
    for (int c = 0; c < ch; ++c)
        for (int i = 0; i < s; ++i)
            for (int j = 0; j < s; ++j)
                for (int oy = 0; oy < orow; ++oy)
                    for (int ox = 0; ox < ocol; ++ox)
                        y[((size_t(c) * s * s + i * s + j) * orow + oy) * ocol + ox] =
                            x[(size_t(c) * irow + oy * s + i) * icol + ox * s + j];
    return y;
}

// CONCAT_n: the inputs' channels one after the other.
[[maybe_unused]] Codes concat_layer(const Activations& acts, const char* layer, const char* const* names,
                                    const int* channels, int count, int pixels) {
    Codes y;
    for (int i = 0; i < count; ++i) {
        const Codes& part = read_input(acts, layer, names[i], size_t(channels[i]) * pixels);
        y.insert(y.end(), part.begin(), part.end());
    }
    return y;
}

// ADD_n: acc = a*M_A + b*M_B per element, then the folded requant of channel c (inc / bias [1][CH]).
template <int B, int CH>
std::vector<int64_t> per_channel(const ap_int<B> (&v)[1][CH]) {
    return std::vector<int64_t>(&v[0][0], &v[0][0] + CH);
}

[[maybe_unused]] Codes add_layer(const Codes& a, const Codes& b, int pixels, int64_t m_a, int64_t m_b, int l_shift,
                                 int64_t lo, int64_t hi, const std::vector<int64_t>& inc,
                                 const std::vector<int64_t>& bias) {
    Codes y(a.size());
    for (size_t c = 0; c < inc.size(); ++c)
        for (int p = 0; p < pixels; ++p) {
            const size_t i = c * pixels + p;
            const int64_t acc = a[i] * m_a + b[i] * m_b;
            y[i] = clip(floor_shift(acc * inc[c] + bias[c] + rounding(l_shift), l_shift), lo, hi);
        }
    return y;
}

// Write a layer's outputs (one per line) and keep them as the activation array `name`.
void keep(Activations& acts, const char* name, Codes y, std::ostream& out) {
    for (int64_t v : y) out << v << '\n';
    acts[name] = std::move(y);
}

}  // namespace

// The layers of config.h, expanded by HLS_LAYERS below. Each reads its inputs from `acts` (checked:
// present and of the declared size), writes its outputs to outs[layer] and keeps them in `acts`.
#define BITSMITH_IN(L, name, ch, row, col) read_input(acts, #L, name, size_t(ch) * (row) * (col))

#define BITSMITH_CONV_SHAPE(n)                                                                     \
    ConvShape{CONV_##n##_K, CONV_##n##_S, CONV_##n##_P, CONV_##n##_P_LEFT, CONV_##n##_GROUPS,      \
              CONV_##n##_IFM_CH, CONV_##n##_IFM_ROW, CONV_##n##_IFM_COL, CONV_##n##_OFM_CH,       \
              CONV_##n##_OFM_ROW, CONV_##n##_OFM_COL, CONV_##n##_SIMD, CONV_##n##_PE,             \
              CONV_##n##_W_BIT, CONV_##n##_L_SHIFT, CONV_##n##_RAW, CONV_##n##_PAD_VAL,           \
              CONV_##n##_OUT_LO, CONV_##n##_OUT_HI}

// Each CONV_n's parameters, read from weights.hpp once, before the first image.
#define BITSMITH_CONV_PARAMS(n) \
    const ConvParams conv_##n = conv_params(BITSMITH_CONV_SHAPE(n), conv_##n##_w, conv_##n##_inc, conv_##n##_bias);
#define BITSMITH_NONE(n)

#define BITSMITH_RUN_CONV(n)                                                                       \
    keep(acts, CONV_##n##_NAME,                                                                    \
         conv_layer(BITSMITH_IN(CONV_##n, CONV_##n##_INPUT, CONV_##n##_IFM_CH, CONV_##n##_IFM_ROW,   \
                                CONV_##n##_IFM_COL),                                               \
                    BITSMITH_CONV_SHAPE(n), conv_##n),                                             \
         outs[layer++]);

#define BITSMITH_RUN_POOL(n)                                                                       \
    keep(acts, POOL_##n##_NAME,                                                                    \
         maxpool_layer(BITSMITH_IN(POOL_##n, POOL_##n##_INPUT, POOL_##n##_IFM_CH, POOL_##n##_IFM_ROW, \
                                   POOL_##n##_IFM_COL),                                            \
                       POOL_##n##_K, POOL_##n##_S, POOL_##n##_IFM_CH, POOL_##n##_IFM_ROW,          \
                       POOL_##n##_IFM_COL, POOL_##n##_OFM_ROW, POOL_##n##_OFM_COL),                \
         outs[layer++]);

#define BITSMITH_RUN_REORG(n)                                                                      \
    keep(acts, REORG_##n##_NAME,                                                                   \
         reorg_layer(BITSMITH_IN(REORG_##n, REORG_##n##_INPUT, REORG_##n##_IFM_CH,                 \
                                 REORG_##n##_IFM_ROW, REORG_##n##_IFM_COL),                        \
                     REORG_##n##_S, REORG_##n##_IFM_CH, REORG_##n##_IFM_ROW, REORG_##n##_IFM_COL), \
         outs[layer++]);

#define BITSMITH_RUN_CONCAT(n)                                                                     \
    {                                                                                              \
        const char* const names[] = {CONCAT_##n##_INPUTS};                                         \
        const int channels[] = {CONCAT_##n##_IN_CH};                                               \
        static_assert(sizeof names / sizeof names[0] == sizeof channels / sizeof channels[0],      \
                      "CONCAT_n_INPUTS and CONCAT_n_IN_CH differ in length");                      \
        keep(acts, CONCAT_##n##_NAME,                                                              \
             concat_layer(acts, "CONCAT_" #n, names, channels, int(sizeof channels / sizeof channels[0]), \
                          CONCAT_##n##_OFM_ROW * CONCAT_##n##_OFM_COL),                            \
             outs[layer++]);                                                                       \
    }

#define BITSMITH_RUN_ADD(n)                                                                        \
    {                                                                                              \
        const char* const names[] = {ADD_##n##_INPUTS};                                            \
        static_assert(sizeof names / sizeof names[0] == 2, "ADD_n_INPUTS names two tensors");      \
        keep(acts, ADD_##n##_NAME,                                                                 \
             add_layer(BITSMITH_IN(ADD_##n, names[0], ADD_##n##_IFM_CH, ADD_##n##_IFM_ROW, ADD_##n##_IFM_COL), \
                       BITSMITH_IN(ADD_##n, names[1], ADD_##n##_IFM_CH, ADD_##n##_IFM_ROW, ADD_##n##_IFM_COL), \
                       ADD_##n##_OFM_ROW * ADD_##n##_OFM_COL, ADD_##n##_M_A, ADD_##n##_M_B,        \
                       ADD_##n##_L_SHIFT, ADD_##n##_OUT_LO, ADD_##n##_OUT_HI,                      \
                       per_channel(add_##n##_inc), per_channel(add_##n##_bias)),                   \
             outs[layer++]);                                                                       \
    }

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
    HLS_LAYERS(BITSMITH_CONV_PARAMS, BITSMITH_NONE, BITSMITH_NONE, BITSMITH_NONE, BITSMITH_NONE)
    for (size_t image = 0; image < all.size() / HLS_IN_SIZE; ++image) {
        Activations acts;
        acts[HLS_INPUT] = Codes(all.begin() + image * HLS_IN_SIZE, all.begin() + (image + 1) * HLS_IN_SIZE);
        int layer = 0;
        HLS_LAYERS(BITSMITH_RUN_CONV, BITSMITH_RUN_POOL, BITSMITH_RUN_REORG, BITSMITH_RUN_CONCAT, BITSMITH_RUN_ADD)
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
