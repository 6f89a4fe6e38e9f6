/* Exact uint8 x int8 convolutions on AVX2 (bitsmith.integer.u8s8), called through ctypes.

   The products run on vpmaddubsw, which multiplies 32 unsigned bytes by 32 signed bytes and adds
   adjacent pairs into 16 bits, *saturating*; vpmaddwd by ones then adds pairs of those into 32 bits
   (exact). So a pair sum a0*w0 + a1*w1 must never leave [-32768, 32767]: the Python side packs the
   weights so that no adjacent pair can, for every activation the layer can be given (the proof
   and the packing are in u8s8.py). This file does no checking of its own. It computes

       acc[q, o] = add[o] + sum_e sum_{j<4} w[o, e, j] * x[base(q) + offset[e] + j]

   in wrapping int32 arithmetic, which equals the true integer whenever that fits in int32 (the
   caller proves it does), and stores either acc as float32 (exact below 2^24, proved by the
   caller) or, with a requantization, the uint8 code of acc (see `requant4`).

   Pixels q = 0 .. n_img*out_h*out_w - 1 (row-major over image, output row, output column) start
   at base(q) = n*image_stride + oh*row_stride + ow*pixel_stride in x. Weights are packed as
   [o_blocks][entries][16 channels][4 bytes]; per-channel arrays have o_blocks*16 entries; outputs
   are [q][n_out] (channels-last). */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

int bitsmith_u8s8_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* x [n, h, w, c] (uint8, contiguous) into xp [n, h + top + bottom, w + left + right, c4]: the
   input inside, `fill` in the spatial padding, zeros in the padded channels c .. c4-1 (their
   weights are zero), and zeros in the 4 bytes after it (which a row's last 4-byte group may
   read, with zero weights). */
void bitsmith_u8_pad(const uint8_t *x, uint8_t *xp, int64_t n, int64_t h, int64_t w, int64_t c, int64_t c4,
                     int64_t top, int64_t bottom, int64_t left, int64_t right, uint8_t fill) {
    const int64_t hp = h + top + bottom, wp = w + left + right;
    memset(xp + n * hp * wp * c4, 0, 4);
    for (int64_t i = 0; i < n; i++) {
        uint8_t *image = xp + i * hp * wp * c4;
        const uint8_t *src_image = x + i * h * w * c;
        memset(image, fill, (size_t)(top * wp * c4));
        memset(image + (top + h) * wp * c4, fill, (size_t)(bottom * wp * c4));
        for (int64_t r = 0; r < h; r++) {
            uint8_t *row = image + (top + r) * wp * c4;
            const uint8_t *src = src_image + r * w * c;
            memset(row, fill, (size_t)(left * c4));
            memset(row + (left + w) * c4, fill, (size_t)(right * c4));
            uint8_t *dst = row + left * c4;
            if (c == c4) {
                memcpy(dst, src, (size_t)(w * c));
            } else {
                for (int64_t j = 0; j < w; j++)
                    for (int64_t k = 0; k < c4; k++) dst[j * c4 + k] = k < c ? src[j * c + k] : 0;
            }
        }
    }
}

/* Max-pool of uint8 [n, h, w, c] (contiguous) into [n, out_h, out_w, c], no padding: per output
   row, the maximum of its kh input rows first (one long loop), then of kw neighbours. */
void bitsmith_u8_maxpool(const uint8_t *restrict x, uint8_t *restrict out, int64_t n, int64_t h, int64_t w,
                         int64_t c, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
    const int64_t out_h = (h - kh) / sh + 1, out_w = (w - kw) / sw + 1, row = w * c;
    uint8_t rows[row];
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < out_h; r++) {
            const uint8_t *first = x + (i * h + r * sh) * row;
            memcpy(rows, first, (size_t)row);
            for (int64_t a = 1; a < kh; a++)
                for (int64_t k = 0; k < row; k++) rows[k] = first[a * row + k] > rows[k] ? first[a * row + k] : rows[k];
            uint8_t *dst_row = out + (i * out_h + r) * out_w * c;
            for (int64_t j = 0; j < out_w; j++) {
                uint8_t *restrict dst = dst_row + j * c;
                const uint8_t *src = rows + j * sw * c;
                memcpy(dst, src, (size_t)c);
                for (int64_t b = 1; b < kw; b++)
                    for (int64_t k = 0; k < c; k++) dst[k] = src[b * c + k] > dst[k] ? src[b * c + k] : dst[k];
            }
        }
}

/* The requantization of bitsmith.integer.requant_kernels (FloatRequant's operations, in float64,
   one by one, no reordering): v = acc - z_in; v = clamp(v, v_min, v_max) when `clamped`;
   code = clamp(floor(v * scale + offset), lo, hi) + code_offset, stored as uint8. */
typedef struct {
    const double *scale, *offset, *v_min, *v_max; /* per channel, o_blocks*16 entries */
    double z_in, lo, hi, code_offset;
    int64_t clamped;
} Requant;

#define MR 4  /* pixels per tile */
#define PB 64 /* pixels per block */

__attribute__((target("avx2"))) static inline void store_float(float *dst, __m256i lo, __m256i hi, int64_t width) {
    __m256 a = _mm256_cvtepi32_ps(lo), b = _mm256_cvtepi32_ps(hi);
    if (width >= 16) {
        _mm256_storeu_ps(dst, a);
        _mm256_storeu_ps(dst + 8, b);
    } else {
        float tmp[16];
        _mm256_storeu_ps(tmp, a);
        _mm256_storeu_ps(tmp + 8, b);
        memcpy(dst, tmp, (size_t)width * sizeof(float));
    }
}

__attribute__((target("avx2"))) static inline __m128i requant4(__m128i acc, const Requant *r, int64_t ch) {
    __m256d v = _mm256_sub_pd(_mm256_cvtepi32_pd(acc), _mm256_set1_pd(r->z_in));
    if (r->clamped)
        v = _mm256_min_pd(_mm256_max_pd(v, _mm256_loadu_pd(r->v_min + ch)), _mm256_loadu_pd(r->v_max + ch));
    __m256d q = _mm256_add_pd(_mm256_mul_pd(v, _mm256_loadu_pd(r->scale + ch)), _mm256_loadu_pd(r->offset + ch));
    q = _mm256_min_pd(_mm256_max_pd(_mm256_floor_pd(q), _mm256_set1_pd(r->lo)), _mm256_set1_pd(r->hi));
    return _mm256_cvtpd_epi32(_mm256_add_pd(q, _mm256_set1_pd(r->code_offset))); /* exact: small integers */
}

__attribute__((target("avx2"))) static inline void store_codes(uint8_t *dst, __m256i lo, __m256i hi, const Requant *r,
                                                               int64_t ch, int64_t width) {
    __m128i c0 = requant4(_mm256_castsi256_si128(lo), r, ch), c1 = requant4(_mm256_extracti128_si256(lo, 1), r, ch + 4);
    __m128i c2 = requant4(_mm256_castsi256_si128(hi), r, ch + 8);
    __m128i c3 = requant4(_mm256_extracti128_si256(hi, 1), r, ch + 12);
    /* codes are in [0, 255]: the saturating packs change nothing */
    __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3));
    if (width >= 16) {
        _mm_storeu_si128((__m128i *)dst, bytes);
    } else {
        uint8_t tmp[16];
        _mm_storeu_si128((__m128i *)tmp, bytes);
        memcpy(dst, tmp, (size_t)width);
    }
}

__attribute__((target("avx2"))) static void conv(const uint8_t *x, int64_t image_stride, int64_t row_stride,
                                                 int64_t pixel_stride, int64_t n_img, int64_t out_h, int64_t out_w,
                                                 const int32_t *offsets, int64_t n_entries, const int8_t *weights,
                                                 const int32_t *add, int64_t n_out, float *out_float,
                                                 const Requant *requant, uint8_t *out_codes) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t pixels = n_img * out_h * out_w, plane = out_h * out_w;
    const int64_t o_blocks = (n_out + 15) / 16;
    /* Pixel blocks of PB: one o-block's weights stay in L1 while the block's tiles pass under them. */
    for (int64_t b0 = 0; b0 < pixels; b0 += PB) {
        const int64_t b1 = b0 + PB < pixels ? b0 + PB : pixels;
        const uint8_t *base[PB + MR];
        /* (image, row, column) of pixel b0, then counted on: no division per pixel */
        int64_t n = b0 / plane, oh = b0 % plane / out_w, ow = b0 % out_w;
        for (int64_t q = b0; q < b0 + PB + MR; q++) {
            if (q >= pixels) { /* the tail repeats the last pixel, unstored */
                base[q - b0] = base[q - b0 - 1];
                continue;
            }
            base[q - b0] = x + n * image_stride + oh * row_stride + ow * pixel_stride;
            if (++ow == out_w) {
                ow = 0;
                if (++oh == out_h) oh = 0, n++;
            }
        }
        for (int64_t ob = 0; ob < o_blocks; ob++)
            for (int64_t q0 = b0; q0 < b1; q0 += MR) {
                const uint8_t *p0 = base[q0 - b0], *p1 = base[q0 - b0 + 1], *p2 = base[q0 - b0 + 2],
                              *p3 = base[q0 - b0 + 3];
                const int8_t *w = weights + ob * n_entries * 64;
                __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
                for (int64_t e = 0; e < n_entries; e++, w += 64) {
                    const int32_t off = offsets[e];
                    /* By hand: GCC's allocation of the intrinsics kept one accumulator on the stack.
                       The weights stay in memory operands, so 8 accumulators, `ones` and two
                       temporaries are all the vector registers it needs. */
                    __asm__(
                        "vpbroadcastd (%[p0]), %%ymm14\n\t"
                        "vpmaddubsw (%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[l0], %[l0]\n\t"
                        "vpmaddubsw 32(%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[h0], %[h0]\n\t"
                        "vpbroadcastd (%[p1]), %%ymm14\n\t"
                        "vpmaddubsw (%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[l1], %[l1]\n\t"
                        "vpmaddubsw 32(%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[h1], %[h1]\n\t"
                        "vpbroadcastd (%[p2]), %%ymm14\n\t"
                        "vpmaddubsw (%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[l2], %[l2]\n\t"
                        "vpmaddubsw 32(%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[h2], %[h2]\n\t"
                        "vpbroadcastd (%[p3]), %%ymm14\n\t"
                        "vpmaddubsw (%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[l3], %[l3]\n\t"
                        "vpmaddubsw 32(%[w]), %%ymm14, %%ymm15\n\t"
                        "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t"
                        "vpaddd %%ymm15, %[h3], %[h3]\n\t"
                        : [l0] "+x"(l0), [l1] "+x"(l1), [l2] "+x"(l2), [l3] "+x"(l3), [h0] "+x"(h0), [h1] "+x"(h1),
                          [h2] "+x"(h2), [h3] "+x"(h3)
                        : [p0] "r"(p0 + off), [p1] "r"(p1 + off), [p2] "r"(p2 + off), [p3] "r"(p3 + off), [w] "r"(w),
                          [ones] "x"(ones)
                        : "xmm14", "xmm15", "memory");
                }
                const __m256i add0 = _mm256_loadu_si256((const __m256i *)(add + ob * 16));
                const __m256i add1 = _mm256_loadu_si256((const __m256i *)(add + ob * 16 + 8));
                const int64_t width = n_out - ob * 16;
                const __m256i lo[MR] = {l0, l1, l2, l3}, hi[MR] = {h0, h1, h2, h3};
                for (int t = 0; t < MR && q0 + t < b1; t++) {
                    const __m256i a = _mm256_add_epi32(lo[t], add0), b = _mm256_add_epi32(hi[t], add1);
                    if (requant)
                        store_codes(out_codes + (q0 + t) * n_out + ob * 16, a, b, requant, ob * 16, width);
                    else
                        store_float(out_float + (q0 + t) * n_out + ob * 16, a, b, width);
                }
            }
    }
}

/* The accumulators as float32. */
void bitsmith_u8s8_conv(const uint8_t *x, int64_t image_stride, int64_t row_stride, int64_t pixel_stride,
                        int64_t n_img, int64_t out_h, int64_t out_w, const int32_t *offsets, int64_t n_entries,
                        const int8_t *weights, const int32_t *add, int64_t n_out, float *out) {
    conv(x, image_stride, row_stride, pixel_stride, n_img, out_h, out_w, offsets, n_entries, weights, add, n_out, out,
         NULL, NULL);
}

/* The accumulators requantized to uint8 codes. */
void bitsmith_u8s8_conv_requant(const uint8_t *x, int64_t image_stride, int64_t row_stride, int64_t pixel_stride,
                                int64_t n_img, int64_t out_h, int64_t out_w, const int32_t *offsets, int64_t n_entries,
                                const int8_t *weights, const int32_t *add, int64_t n_out, const double *scale,
                                const double *offset, const double *v_min, const double *v_max, int64_t clamped,
                                double z_in, double lo, double hi, double code_offset, uint8_t *out) {
    const Requant r = {scale, offset, v_min, v_max, z_in, lo, hi, code_offset, clamped};
    conv(x, image_stride, row_stride, pixel_stride, n_img, out_h, out_w, offsets, n_entries, weights, add, n_out, NULL,
         &r, out);
}
