// A minimal stand-in for Vivado HLS ap_uint<N> / ap_int<N>, enough to read a DeepBurning-MixQ
// weights.hpp without vendor headers (docs/hls.md). Plain C++17, 64-bit integers only.
//
// ap_uint<N>: any width, stored as little-endian uint64_t limbs; built from the hex string
//   literals weights.hpp uses ("0x..."), like Vivado's string constructor; range(hi, lo) reads a
//   field of at most 64 bits. The constructor is constexpr, so the weight tables are constant
//   data (no start-up cost).
// ap_int<N>: N <= 64, an int64_t wrapped to N bits on construction (two's complement).
#ifndef BITSMITH_HLS_SHIM_H
#define BITSMITH_HLS_SHIM_H

#include <cstdint>
#include <stdexcept>

template <int N>
class ap_uint {
    static_assert(N >= 1, "ap_uint needs at least one bit");

public:
    static constexpr int kLimbs = (N + 63) / 64;

    constexpr ap_uint() : limb_{} {}
    constexpr ap_uint(uint64_t v) : limb_{} { limb_[0] = v; trim(); }
    // "0x" followed by hex digits, most significant first; digits beyond N bits are an error.
    constexpr ap_uint(const char* text) : limb_{} {
        if (text[0] != '0' || (text[1] != 'x' && text[1] != 'X')) throw std::invalid_argument("ap_uint: expected 0x...");
        int len = 0;
        while (text[2 + len] != '\0') ++len;
        for (int i = 0; i < len; ++i) {  // digit i from the right holds bits [4i+3 : 4i]
            const uint64_t d = hex_digit(text[2 + len - 1 - i]);
            const int bit = 4 * i;
            if (d == 0) continue;
            if (bit >= 64 * kLimbs) throw std::invalid_argument("ap_uint: literal wider than the type");
            limb_[bit / 64] |= d << (bit % 64);  // bit % 64 <= 60: a digit never straddles limbs
        }
        if (!fits()) throw std::invalid_argument("ap_uint: literal wider than the type");
    }

    // Bits [hi : lo] (hi - lo < 64) as an unsigned integer, like ap_uint::range(hi, lo).
    constexpr uint64_t range(int hi, int lo) const {
        if (lo < 0 || hi < lo || hi >= N || hi - lo >= 64) throw std::out_of_range("ap_uint::range");
        const int width = hi - lo + 1;
        uint64_t v = limb_[lo / 64] >> (lo % 64);
        if (lo % 64 != 0 && lo / 64 + 1 < kLimbs) v |= limb_[lo / 64 + 1] << (64 - lo % 64);
        return width == 64 ? v : v & ((uint64_t{1} << width) - 1);
    }

private:
    static constexpr uint64_t hex_digit(char c) {
        if (c >= '0' && c <= '9') return uint64_t(c - '0');
        if (c >= 'a' && c <= 'f') return uint64_t(c - 'a' + 10);
        if (c >= 'A' && c <= 'F') return uint64_t(c - 'A' + 10);
        throw std::invalid_argument("ap_uint: not a hex digit");
    }
    constexpr bool fits() const { return N % 64 == 0 || (limb_[kLimbs - 1] >> (N % 64)) == 0; }
    constexpr void trim() {
        if (N % 64 != 0) limb_[kLimbs - 1] &= (uint64_t{1} << (N % 64)) - 1;
    }

    uint64_t limb_[kLimbs];
};

template <int N>
class ap_int {
    static_assert(N >= 1 && N <= 64, "this ap_int stand-in holds at most 64 bits");

public:
    constexpr ap_int() : v_(0) {}
    constexpr ap_int(long long v) : v_(wrap(v)) {}
    constexpr operator int64_t() const { return v_; }

private:
    static constexpr int64_t wrap(long long v) {
        if (N == 64) return v;
        const uint64_t mask = (uint64_t{1} << N) - 1, u = uint64_t(v) & mask;
        return (u >> (N - 1)) ? int64_t(u | ~mask) : int64_t(u);
    }
    int64_t v_;
};

// A W-bit two's complement field (W <= 64) as a signed integer.
constexpr int64_t sign_extend(uint64_t field, int w) {
    if (w == 64) return int64_t(field);
    return (field >> (w - 1)) ? int64_t(field | ~((uint64_t{1} << w) - 1)) : int64_t(field);
}

#endif
