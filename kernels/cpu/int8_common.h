/* int8_common.h — what the int8-activation kernels share (qgemm_int8.c: prepare, tiles, prefill GEMM; qgemv_int8.c:
 * the decode GEMV): the one scratch layout that cpu_int8_prepare writes and both read, and the AVX-512 unpacking of
 * the W3/W4 code blocks of kernels/quant.h. Internal to kernels/cpu/; static inline so each file keeps its own copy
 * inlined into its hot loops. */
#ifndef VLM_INT8_COMMON_H
#define VLM_INT8_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <immintrin.h>

#include "kernels/quant.h"
#include "runtime/util.h"

#define INT8_TGT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")))

/* Scratch for M tokens of width k: codes int8 (M, k) | d f32 (M, Gp) | Σa int32 (M, Gp), pieces rounded up to 64
 * bytes; Gp = G rounded up to 16 for W3/W4 (the GEMV reads 16 groups at a time; padding is 0), 1 for W4A8. */
struct a8_layout {
    size_t codes_off, d_off, sum_off, total;
    int64_t G, Gp; /* groups per token row, and the padded row length of the d / Σa tables */
};

static inline bool is_g128(enum vlm_qformat f) { return f == VLM_QF_W3G128 || f == VLM_QF_W4G128; }

static inline size_t round64(size_t x) { return (x + 63) / 64 * 64; }

/* False when k is not a positive multiple of 128, M < 1, or a size overflows. */
static inline bool a8_layout(enum vlm_qformat f, int64_t M, int64_t k, struct a8_layout *L) {
    if (M < 1 || k < VLM_QGROUP || k % VLM_QGROUP) return false;
    L->G = k / VLM_QGROUP;
    L->Gp = is_g128(f) ? (L->G + 15) / 16 * 16 : 1;
    size_t codes, tab;
    if (!vlm_size_mul((size_t)M, (size_t)k, &codes) || codes > SIZE_MAX / 2) return false;
    if (!vlm_size_mul((size_t)M, (size_t)L->Gp * 4, &tab) || tab > SIZE_MAX / 4) return false;
    L->codes_off = 0;
    L->d_off = round64(codes);
    L->sum_off = L->d_off + round64(tab);
    if (L->sum_off > SIZE_MAX / 2) return false;
    L->total = L->sum_off + round64(tab);
    return true;
}

/* W3 block → two vectors of u8 codes, 8 instructions. c0 = columns 0..31 | 4 × columns 32..63, c1 = columns 64..95 |
 * 4 × columns 96..127: the lo plane broadcast to both halves and masked with 0x03 | 0x0C needs no per-half shift; the
 * upper 256 bits then carry codes times 4 (<= 28, still a u8), which the caller undoes by scaling the upper half of its
 * f32 accumulators by 1/4 (exact: a power of two). The hi plane is two ready byte masks (quant.h) that select 4 (lower
 * half) or 16 (upper half), merged with one vpternlog (C ? B : A). */
static inline __attribute__((always_inline)) INT8_TGT_AVX512 void unpack_w3_512(const uint8_t *blk, __m512i *c0,
                                                                                __m512i *c1) {
    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi8(0x03), _mm256_set1_epi8(0x0c), 1);
    const __m512i hib = _mm512_inserti64x4(_mm512_set1_epi8(0x04), _mm256_set1_epi8(0x10), 1);
    __m512i lo = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)blk));
    uint64_t h0, h1;
    memcpy(&h0, blk + 32, 8);
    memcpy(&h1, blk + 40, 8);
    __m512i m0 = _mm512_maskz_mov_epi8(_cvtu64_mask64(h0), hib), m1 = _mm512_maskz_mov_epi8(_cvtu64_mask64(h1), hib);
    /* A = the hi-bit vector (dead afterwards: no register copy), B = the lo plane, C = sel */
    *c0 = _mm512_ternarylogic_epi32(m0, lo, sel, 0xD8);
    *c1 = _mm512_ternarylogic_epi32(m1, _mm512_srli_epi64(lo, 4), sel, 0xD8);
}

/* W4 / W4A8 block → c0 = columns 0..63, c1 = columns 64..127 (u8). 4 instructions, 1 load. */
static inline __attribute__((always_inline)) INT8_TGT_AVX512 void unpack_w4_512(const uint8_t *blk, __m512i *c0,
                                                                                __m512i *c1) {
    const __m512i m15 = _mm512_set1_epi8(15);
    __m512i v = _mm512_loadu_si512(blk);
    *c0 = _mm512_and_si512(v, m15);
    *c1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), m15);
}

#endif
