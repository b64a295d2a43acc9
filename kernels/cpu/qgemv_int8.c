/* qgemv_int8.c — the decode GEMV (M = 1..4 tokens) of the int8-activation formats W3G128, W4G128 and W4A8 on AVX-512
 * VNNI (kernels/cpu/qgemv_int8.h). At decode every weight byte is read once per token, so the kernel's job is to keep
 * ONE core's DRAM stream saturated: few instructions per weight byte, no per-group horizontal work, little per-row
 * overhead (k = 896 rows are only 7 groups), and prefetches far enough ahead to cover DRAM latency across 4 KB pages.
 *
 * Promises (checked by tests/test_qgemv_int8.c):
 *   - W4A8: bit-identical to cpu_qlinear_ref (and to cpu_int8_rows): the integer sum is exact and the epilogue is
 *     the same f32 expression (d_t · s_row) · (float)(Σ a·u − 8·Σa) + b, b = 0 when there is no bias.
 *   - W3G128/W4G128: the A8 arithmetic of kernels/cpu/qgemm.h — the per-group integer sums Σ q·a are exact, the
 *     result differs from cpu_qlinear_a8_ref only in the f32 rounding/summation order of the per-group terms
 *     (NMSE <= 1e-10 in the tests).
 *   - Only y[t·n + r] for t < M and r in [r0, r1) is written; the scratch is read exactly as cpu_int8_prepare lays it
 *     out (the layout of int8_common.h, shared with qgemm_int8.c).
 *
 * Shape of the kernel (per token t; T = M tokens share every unpacked code block):
 *   - Rows are walked one at a time, in order, so the code plane of [r0, r1) is ONE sequential stream (measured on
 *     Zen 4 by the previous author: four interleaved row streams were slower than one).
 *   - W3/W4, per group g: unpack the block to two vectors of u8 codes (c0, c1), v = vpdpbusd(vpdpbusd(0, c0, a), c1, a)
 *     — 16 int32 lanes whose sum is Σ q·a exactly — then acc += cvt(v) · (s_g·d_g) as ONE f32 FMA with a broadcast
 *     memory operand. No horizontal reduction per group. The zero-point term −z_g·Σa_g·s_g·d_g is added to the same
 *     accumulator 16 groups at a time: lane g of one vector FMA (cvt(z·Σa) is exact: |z·Σa| < 2^24). Folding it into
 *     the f32 sum instead of into the int32 lanes has the same rounding class as cpu_int8_rows' lane-0 seed: there
 *     too the −z·Σa term meets the other lanes' partial sums only in f32.
 *   - s_g·d_g for 16 groups is one vcvtph2ps + one vmulps per (row, token), stored to a 64-byte stack table that the
 *     per-group FMAs read as {1to16} broadcasts (loads are cheap; shuffles are not).
 *   - Each row leaves a 16-lane partial vector per token; every 16 rows are finished together by one 16×16
 *     transpose-reduce (45 vector ops, ~3 per row instead of ~8 for a per-row horizontal sum), then bias and ONE
 *     masked 16-float store per token. The W3 "codes × 4 in the upper 256 bits" trick (see unpack_w3_512 in int8_common.h) is undone for
 *     free inside the first reduce level (an FMA by 0.25 instead of an add; exact: a power of two).
 *   - W4A8: the same, with int32 accumulators over all of k and the epilogue on 16 rows at once.
 *   - Software prefetch PF_BYTES ahead on the code stream (one per code block), and on the scale/zero side streams
 *     once per 16 groups: the L2 stream prefetcher stops at 4 KB page boundaries, software prefetches do not.
 *
 * Instructions per group of 128 weights, T = 1, gcc 12 -O2 (hot loop, 2 groups per iteration): W3 16.5 (13 vector:
 * 2 kmovq, 2 vmovdqu8{z}, vbroadcasti64x4, vpsrlq, 2 vpternlogd, zeroing move, 2 vpdpbusd, vcvtdq2ps, vfmadd231ps
 * {1to16}; + 1 prefetch + loop control), W4 11.5 (8 vector), W4A8 10.5 (6 vector + register moves). Measured from
 * L2 on Zen 4: W3 ~7, W4 ~6, W4A8 ~4.6 cycles per group (cpu_int8_rows: 9.4 / 8.9 / 5.7 at k = 3584, and 16-46
 * cycles per group at k = 896..128 where its per-row overhead dominated).
 */
#include <string.h>

#include <immintrin.h>

#include "kernels/cpu/int8_common.h"
#include "kernels/cpu/qgemv_int8.h"
#include "runtime/util.h"

#define TGT INT8_TGT_AVX512
#define INLINE static inline __attribute__((always_inline))

/* Software prefetch of the code stream: 8 KB ahead (two 4 KB pages: the hardware L2 stream prefetcher stops at page
 * boundaries) into L2 only (T1). Measured on Zen 4, 1 thread, DRAM-streamed 7B shapes: T0 at 1-4 KB was slower,
 * worst at k = 18944 — a row there (7-9 KB of codes) plus 19 KB of activations and the prefetched lines no longer fit
 * the 32 KB L1, and the activations, reused by every row, get evicted; from L2 the L1 refills itself in time. The
 * -D overrides are for benchmarking only. */
#ifndef QGEMV_PF_BYTES
#define QGEMV_PF_BYTES 8192
#endif
#ifndef QGEMV_PF_HINT
#define QGEMV_PF_HINT _MM_HINT_T1
#endif
enum { PF_BYTES = QGEMV_PF_BYTES, BLOCK_ROWS = 16 };

struct gemv_args {
    float *y;
    const float *b;
    const uint8_t *codes;   /* code blocks (n, G, bb) */
    const uint16_t *scales; /* W3/W4: fp16 (n, G) */
    const uint8_t *zeros;   /* W3/W4: u8 (n, G) */
    const float *rscale;    /* W4A8: f32 (n) */
    const int8_t *a;        /* activation codes (M, k), 64-byte aligned rows (k % 128 == 0) */
    const float *d;         /* (M, Gp) */
    const int32_t *asum;    /* (M, Gp) */
    int64_t n, k, G, Gp;
};

/* ---------------------------------------------------------------------------------------------------------------
 * code unpacking (quant.h layouts)
 * ------------------------------------------------------------------------------------------------------------- */


/* ---------------------------------------------------------------------------------------------------------------
 * 16 × 16 transpose-reduce: v[j] = the partial vector of row PERM(j); returns lane i = Σ of row i's 16 lanes (lanes
 * 8..15 scaled by q8 first — all lanes of q8 equal: 0.25 for W3, 1 otherwise; the first level's second operand holds
 * exactly the upper halves of both rows, so an FMA there does it, with one code path). The rows are
 * fed in the transposed order PERM(j) = 4·(j % 4) + j / 4 because four levels of pairwise shuffles leave input j's
 * sum in lane 4·(j % 4) + j / 4; feeding that permutation puts row i in lane i without a final permute.
 * Levels: 128-bit-block shuffles (×2), then 64-bit and 32-bit in-lane shuffles; 3 ops per pair, 45 in all.
 * ------------------------------------------------------------------------------------------------------------- */

#define PERM(j) (4 * ((j) % 4) + (j) / 4)

INLINE TGT __m512 reduce16_ps(const float (*rows)[16], __m512 q8) {
    __m512 c[8], e[4], f[2];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        __m512 a = _mm512_load_ps(rows[PERM(2 * p)]), b = _mm512_load_ps(rows[PERM(2 * p + 1)]);
        c[p] = _mm512_fmadd_ps(_mm512_shuffle_f32x4(a, b, 0xEE), q8, _mm512_shuffle_f32x4(a, b, 0x44));
    }
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
        e[p] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * p], c[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * p], c[2 * p + 1], 0xDD));
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        __m512d x = _mm512_castps_pd(e[2 * p]), y = _mm512_castps_pd(e[2 * p + 1]);
        f[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    return _mm512_add_ps(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xDD));
}

/* The same on int32 (exact, so the order is irrelevant): W4A8. */
INLINE TGT __m512i reduce16_epi32(const int32_t (*rows)[16]) {
    __m512i c[8], e[4], f[2];
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        __m512i a = _mm512_load_si512(rows[PERM(2 * p)]), b = _mm512_load_si512(rows[PERM(2 * p + 1)]);
        c[p] = _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0xEE), _mm512_shuffle_i32x4(a, b, 0x44));
    }
#pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
        e[p] = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2 * p], c[2 * p + 1], 0x88),
                                _mm512_shuffle_i32x4(c[2 * p], c[2 * p + 1], 0xDD));
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++)
        f[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(e[2 * p], e[2 * p + 1]), _mm512_unpackhi_epi64(e[2 * p], e[2 * p + 1]));
    __m512 x = _mm512_castsi512_ps(f[0]), y = _mm512_castsi512_ps(f[1]);
    return _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(x, y, 0x88)),
                            _mm512_castps_si512(_mm512_shuffle_ps(x, y, 0xDD)));
}

/* ---------------------------------------------------------------------------------------------------------------
 * W3G128 / W4G128
 * ------------------------------------------------------------------------------------------------------------- */

/* One group of one row for T tokens into accumulator set acc[.][u]; act[t] points at token t's 128 activation codes
 * of this group. Everything the hot loop needs is passed as plain values (no loads through the args struct: the
 * compiler cannot keep struct fields in registers across the stack-table stores). */
INLINE TGT void g128_group(const int W3, const int T, const uint8_t *blk, const int8_t *const act[4], size_t off,
                           const float (*sd)[16], int j, __m512 acc[4][2], const int u) {
    _mm_prefetch((const char *)(blk + PF_BYTES), QGEMV_PF_HINT);
    __m512i c0, c1;
    if (W3) unpack_w3_512(blk, &c0, &c1);
    else unpack_w4_512(blk, &c0, &c1);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c0, _mm512_load_si512(act[t] + off));
        v = _mm512_dpbusd_epi32(v, c1, _mm512_load_si512(act[t] + off + 64));
        acc[t][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(sd[t][j]), acc[t][u]);
    }
}

/* Row r, T tokens: out[t] (16 floats, 64-byte aligned) = the row's partial vector (lanes sum to y − b, with lanes
 * 8..15 × 4 for W3). */
INLINE TGT void g128_row(const struct gemv_args *A, const int W3, const int T, int64_t r, float (*out)[BLOCK_ROWS][16],
                         int slot) {
    const int64_t G = A->G;
    const size_t bb = W3 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES;
    const uint8_t *blk = A->codes + (size_t)r * (size_t)G * bb;
    const uint16_t *sc = A->scales + r * G;
    const uint8_t *zp = A->zeros + r * G;
    /* W3: the zero-point term lands in the same lanes as the codes, so lanes 8..15 get it × 4 as well */
    const __m512i zshift = W3 ? _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(2), 1) : _mm512_setzero_si512();
    __m512 acc[4][2];
    _Alignas(64) float sd[4][16];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    const int8_t *act[4] = {A->a, A->a, A->a, A->a}; /* token t's activation codes; only t < T are used */
#pragma GCC unroll 4
    for (int t = 1; t < T; t++) act[t] = A->a + t * A->k;
    const float *d = A->d;
    const int32_t *asum = A->asum;
    const int64_t Gp = A->Gp;
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1);
        /* side streams: 2 and 1 bytes per group; one prefetch per 16 groups keeps them PF_BYTES-equivalent ahead */
        _mm_prefetch((const char *)(sc + g0) + PF_BYTES * 2 / bb, _MM_HINT_T0);
        _mm_prefetch((const char *)(zp + g0) + PF_BYTES / bb, _MM_HINT_T0);
        __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sc + g0));
        __m512i z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, zp + g0));
        if (W3) z = _mm512_sllv_epi32(z, zshift);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            /* padding lanes (g >= G): s = 0 from the masked load and d = 0, Σa = 0 in the scratch padding → 0 */
            __m512 sdt = _mm512_mul_ps(s, _mm512_load_ps(d + t * Gp + g0));
            _mm512_store_ps(sd[t], sdt);
            __m512 za = _mm512_cvtepi32_ps(_mm512_mullo_epi32(z, _mm512_load_si512(asum + t * Gp + g0)));
            acc[t][1] = _mm512_fnmadd_ps(za, sdt, acc[t][1]);
        }
        int j = 0;
        size_t off = (size_t)g0 * VLM_QGROUP;
        /* two accumulator sets: the FMA latency chain (4 cycles) would otherwise pace a W4 group at T = 1 */
        for (; j + 2 <= ng; j += 2, blk += 2 * bb, off += 2 * VLM_QGROUP) {
            g128_group(W3, T, blk, act, off, (const float (*)[16])sd, j, acc, 0);
            g128_group(W3, T, blk + bb, act, off + VLM_QGROUP, (const float (*)[16])sd, j + 1, acc, 1);
        }
        if (j < ng) {
            g128_group(W3, T, blk, act, off, (const float (*)[16])sd, j, acc, 0);
            blk += bb;
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) _mm512_store_ps(out[t][slot], _mm512_add_ps(acc[t][0], acc[t][1]));
}

/* y for rows [r0, r1), 16 at a time: rows → partial vectors → transpose-reduce → + bias → masked store. */
INLINE TGT void g128_rows(const struct gemv_args *A, const int W3, const int T, int64_t r0, int64_t r1) {
    _Alignas(64) float part[4][BLOCK_ROWS][16];
    const __m512 q8 = _mm512_set1_ps(W3 ? 0.25f : 1.0f); /* the upper-half scale, for reduce16_ps */
    for (int64_t rb = r0; rb < r1; rb += BLOCK_ROWS) {
        const int nr = r1 - rb < BLOCK_ROWS ? (int)(r1 - rb) : BLOCK_ROWS;
        for (int i = 0; i < nr; i++) g128_row(A, W3, T, rb + i, part, i);
        if (nr < BLOCK_ROWS) /* the tail block: defined values in the unused slots (their lanes are not stored) */
            for (int t = 0; t < T; t++) memset(part[t][nr], 0, sizeof(float) * 16 * (size_t)(BLOCK_ROWS - nr));
        const __mmask16 m = (__mmask16)((1u << nr) - 1);
        /* + 0.0f without a bias, as the other levels do (turns −0 into +0: keeps the levels comparable bit for bit) */
        const __m512 bias = A->b ? _mm512_maskz_loadu_ps(m, A->b + rb) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            _mm512_mask_storeu_ps(A->y + t * A->n + rb, m,
                                  _mm512_add_ps(reduce16_ps((const float (*)[16])part[t], q8), bias));
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * W4A8
 * ------------------------------------------------------------------------------------------------------------- */

/* One group of one row into int32 accumulators acc[t][2u], acc[t][2u+1] (columns 0..63 / 64..127). */
INLINE TGT void w4a8_group(const int T, const uint8_t *blk, const int8_t *const act[4], size_t off, __m512i acc[4][4],
                           const int u) {
    _mm_prefetch((const char *)(blk + PF_BYTES), QGEMV_PF_HINT);
    __m512i c0, c1;
    unpack_w4_512(blk, &c0, &c1);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc[t][2 * u] = _mm512_dpbusd_epi32(acc[t][2 * u], c0, _mm512_load_si512(act[t] + off));
        acc[t][2 * u + 1] = _mm512_dpbusd_epi32(acc[t][2 * u + 1], c1, _mm512_load_si512(act[t] + off + 64));
    }
}

INLINE TGT void w4a8_row(const struct gemv_args *A, const int T, int64_t r, int32_t (*out)[BLOCK_ROWS][16], int slot) {
    const int64_t G = A->G;
    const uint8_t *blk = A->codes + (size_t)r * (size_t)G * VLM_W4_BLOCK_BYTES;
    const int8_t *act[4] = {A->a, A->a, A->a, A->a}; /* token t's activation codes; only t < T are used */
#pragma GCC unroll 4
    for (int t = 1; t < T; t++) act[t] = A->a + t * A->k;
    /* four int32 chains per token (even / odd groups × column halves): vpdpbusd latency never paces the loop */
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) acc[t][i] = _mm512_setzero_si512();
    int64_t g = 0;
    size_t off = 0;
    for (; g + 2 <= G; g += 2, blk += 2 * VLM_W4_BLOCK_BYTES, off += 2 * VLM_QGROUP) {
        w4a8_group(T, blk, act, off, acc, 0);
        w4a8_group(T, blk + VLM_W4_BLOCK_BYTES, act, off + VLM_QGROUP, acc, 1);
    }
    if (g < G) w4a8_group(T, blk, act, off, acc, 0);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        _mm512_store_si512(out[t][slot], _mm512_add_epi32(_mm512_add_epi32(acc[t][0], acc[t][1]),
                                                          _mm512_add_epi32(acc[t][2], acc[t][3])));
}

INLINE TGT void w4a8_rows(const struct gemv_args *A, const int T, int64_t r0, int64_t r1) {
    _Alignas(64) int32_t part[4][BLOCK_ROWS][16];
    for (int64_t rb = r0; rb < r1; rb += BLOCK_ROWS) {
        const int nr = r1 - rb < BLOCK_ROWS ? (int)(r1 - rb) : BLOCK_ROWS;
        for (int i = 0; i < nr; i++) w4a8_row(A, T, rb + i, part, i);
        if (nr < BLOCK_ROWS)
            for (int t = 0; t < T; t++) memset(part[t][nr], 0, sizeof(int32_t) * 16 * (size_t)(BLOCK_ROWS - nr));
        const __mmask16 m = (__mmask16)((1u << nr) - 1);
        const __m512 rs = _mm512_maskz_loadu_ps(m, A->rscale + rb);
        const __m512 bias = A->b ? _mm512_maskz_loadu_ps(m, A->b + rb) : _mm512_setzero_ps();
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            /* exactly cpu_qlinear_ref's f32 expression, lane-wise: (s_t · s_row) · (float)(Σ a·u − 8·Σa) + b */
            __m512i s = _mm512_sub_epi32(reduce16_epi32((const int32_t (*)[16])part[t]), _mm512_set1_epi32(8 * A->asum[t]));
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(A->d[t]), rs), _mm512_cvtepi32_ps(s));
            _mm512_mask_storeu_ps(A->y + t * A->n + rb, m, _mm512_add_ps(v, bias));
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * entry: (format, M) → a constant instance
 * ------------------------------------------------------------------------------------------------------------- */

TGT static void gemv_dispatch(const struct gemv_args *A, enum vlm_qformat f, int T, int64_t r0, int64_t r1) {
#define GV_CASE(TT)                                                                                           \
    case TT:                                                                                                  \
        if (f == VLM_QF_W3G128) g128_rows(A, 1, TT, r0, r1);                                                  \
        else if (f == VLM_QF_W4G128) g128_rows(A, 0, TT, r0, r1);                                             \
        else w4a8_rows(A, TT, r0, r1);                                                                        \
        break;
    switch (T) {
        GV_CASE(1) GV_CASE(2) GV_CASE(3) GV_CASE(4)
    default: VLM_ASSERT(!"M out of 1..4");
    }
#undef GV_CASE
}

void cpu_int8_gemv_avx512(float *y, const void *scratch, const struct vlm_qmat *w, const float *b, int64_t M,
                          int64_t r0, int64_t r1) {
    const enum vlm_qformat f = w->fmt;
    struct a8_layout L;
    VLM_ASSERT((is_g128(f) || f == VLM_QF_W4A8) && a8_layout(f, M, w->k, &L) && M <= 4 && 0 <= r0 && r0 <= r1 &&
               r1 <= w->n);
    const unsigned char *base = scratch;
    const struct gemv_args A = {
        .y = y, .b = b, .codes = w->codes,
        .scales = f == VLM_QF_W4A8 ? NULL : w->scales, .zeros = w->zeros,
        .rscale = f == VLM_QF_W4A8 ? w->scales : NULL,
        .a = (const int8_t *)(base + L.codes_off), .d = (const float *)(base + L.d_off),
        .asum = (const int32_t *)(base + L.sum_off),
        .n = w->n, .k = w->k, .G = L.G, .Gp = L.Gp,
    };
    if (r0 < r1) gemv_dispatch(&A, f, (int)M, r0, r1);
}
