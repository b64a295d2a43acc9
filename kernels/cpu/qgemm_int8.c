/* qgemm_int8.c — the int8-activation kernels of the fast CPU linear (kernels/cpu/qgemm.h) for W3G128, W4G128 and
 * W4A8: activation quantization (cpu_int8_prepare), the row kernels (cpu_int8_rows) at three ISA levels (scalar C,
 * AVX2+FMA+F16C, AVX-512 F/BW/VL/DQ+VNNI) and the scalar statement of the A8 arithmetic (cpu_qlinear_a8_ref).
 *
 * Promises (checked by tests/test_qgemm_int8.c):
 *   - cpu_int8_prepare writes the same bytes at every ISA level (codes, scales, sums, padding).
 *   - W4A8: every ISA level is bit-identical to cpu_qlinear_ref for finite x.
 *   - W3G128/W4G128: the scalar level is bit-identical to cpu_qlinear_a8_ref; the SIMD levels differ from it only in
 *     the f32 summation order of the per-group terms (the integer sums are exact everywhere).
 *   - Only y[t·n + r] for r in [r0, r1) and t < M is written.
 *
 * A8 activation quantization (W3G128/W4G128), per token t and group g of 128 columns, x = those 128 values:
 *   - any x non-finite (NaN, ±Inf): d = NaN, a = 0, Σa = 0 — the group poisons every output of the token with NaN
 *     (we do not try to reproduce Inf·w signs: an Inf activation is already a broken model);
 *   - else amax = max|x|, d = amax / 127 (f32 division); d == 0 (an all-zero group, or amax so small that amax/127
 *     underflows): a = 0, Σa = 0; else a = clamp(rint(x / d), −128, 127) (x / d is an f32 division, rint rounds half
 *     to even; the clamp only bites for subnormal d, whose relative rounding can push |x/d| past 127.5).
 *   y[t, o] = acc + (b ? b[o] : 0), acc = Σ_g in order of (s_g · d_g) · (float)(Σ q·a − z_g · Σa), in f32; the
 *   integer Σ is exact (|Σ| <= 128·15·128 < 2^24, so the conversion is exact too).
 * W4A8 (quant.h, mbq.md §2.2): s_t = max(amax, 1e-5) / 127, a = clamp(rint(x / s_t), −128, 127), exactly as
 *   vlm_quantize_act_q8_ref; a token with a non-finite value gets s_t = NaN and a = 0 (all its outputs NaN; the
 *   reference's behaviour there is undefined: it converts NaN to int8). y = (s_t · s_row) · (float)acc + b with
 *   acc = Σ a·u − 8·Σa in int32 (exact for k <= 2^20).
 *
 * Scratch (cpu_int8_scratch_bytes), pieces 64-byte aligned: codes int8 (M, k) | d f32 (M, Gp) | Σa int32 (M, Gp),
 * with G = k/128 groups and Gp = G rounded up to 16 (the padding holds d = 0, Σa = 0) for W3G128/W4G128, and
 * Gp = 1 (one scale and one sum per token) for W4A8.
 *
 * Kernel shape (SIMD): a tile of R rows × T tokens walks the groups; per group the T tokens' activation codes are
 * loaded once, each row's code block is unpacked once and used for all T tokens (u8 codes × s8 activations: VNNI
 * vpdpbusd, or vpmaddubsw + vpmaddwd on AVX2). W3/W4 keep one int32 vector per (row, token, group) seeded with
 * −z·Σa in lane 0, convert it once and FMA it with s·d into an f32 accumulator; the s·d and −z·Σa terms are computed
 * 16 groups at a time into small stack tables. Rows are taken in panels of 64 so that for prefill (large M) a panel's
 * codes stay in L2 while token tiles stream by. Code blocks are prefetched a few groups ahead.
 * AVX-512 prefill (M > 12 for W3/W4, M > 4 for W4A8) uses a GEMM instead (gemm_512): 32-row panels unpacked once per
 * call into a thread-local buffer in the VNNI operand layout, 4-token × 32-row register tiles; W3/W4 there perform
 * exactly the scalar level's f32 operations, so that path is bit-identical to it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

#include "kernels/cpu/int8_common.h"
#include "kernels/cpu/qgemm_internal.h"
#include "kernels/cpu/qgemv_int8.h"
#include "runtime/util.h"

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TGT_AVX512 INT8_TGT_AVX512
#define INLINE static inline __attribute__((always_inline))

enum {
    PANEL_ROWS = 64, /* rows per panel: W3, k = 18944: 64·148·48 B = 454 KB of codes, kept in L2 across token tiles */
    PF_GROUPS = 16,  /* software prefetch distance in code blocks (~0.8-1 KB ahead) */
};

/* ---------------------------------------------------------------------------------------------------------------
 * scratch layout
 * ------------------------------------------------------------------------------------------------------------- */

size_t cpu_int8_scratch_bytes(enum vlm_qformat f, int64_t M, int64_t k) {
    struct a8_layout L;
    if (!is_g128(f) && f != VLM_QF_W4A8) return 0;
    return a8_layout(f, M, k, &L) ? L.total : 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * activation quantization — scalar (the definition) and SIMD (bit-identical: same f32 division, rint, clamp)
 * ------------------------------------------------------------------------------------------------------------- */

/* Max |x| ignoring NaN (as vlm_quantize_act_q8_ref does); *bad set when any value is NaN or ±Inf. */
static float absmax_scalar(const float *x, int64_t n, bool *bad) {
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = fabsf(x[i]);
        if (!isfinite(v)) *bad = true;
        m = v > m ? v : m;
    }
    return m;
}

/* a = clamp(rint(x / d), −128, 127) for d > 0 finite; returns Σa. */
static int32_t quant_codes_scalar(const float *x, int64_t n, float d, int8_t *a) {
    int32_t sum = 0;
    for (int64_t i = 0; i < n; i++) {
        float q = rintf(x[i] / d);
        q = q < -128.0f ? -128.0f : q > 127.0f ? 127.0f : q;
        a[i] = (int8_t)q;
        sum += a[i];
    }
    return sum;
}

/* One W3/W4 activation group (see the top comment); returns d, writes a (128) and *sum. */
static float quant_group_scalar(const float *x, int8_t *a, int32_t *sum) {
    bool bad = false;
    float d = absmax_scalar(x, VLM_QGROUP, &bad) / 127.0f;
    if (bad || d == 0.0f) {
        memset(a, 0, VLM_QGROUP);
        *sum = 0;
        return bad ? NAN : 0.0f;
    }
    *sum = quant_codes_scalar(x, VLM_QGROUP, d, a);
    return d;
}

/* One W4A8 token (k values); returns s_t. */
static float quant_token_scalar(const float *x, int64_t k, int8_t *a, int32_t *sum) {
    bool bad = false;
    float amax = absmax_scalar(x, k, &bad);
    if (bad) {
        memset(a, 0, (size_t)k);
        *sum = 0;
        return NAN;
    }
    float s = (amax > 1e-5f ? amax : 1e-5f) / 127.0f; /* the expression of vlm_quantize_act_q8_ref */
    *sum = quant_codes_scalar(x, k, s, a);
    return s;
}

/* AVX-512: max|x| over n (multiple of 128) values, non-finite flag. Any order gives the same max of finite values. */
TGT_AVX512 static float absmax_512(const float *x, int64_t n, bool *bad) {
    const __m512 big = _mm512_set1_ps(3.40282347e38f);
    __m512 m0 = _mm512_setzero_ps(), m1 = m0;
    __mmask16 nf = 0;
    for (int64_t i = 0; i < n; i += 32) {
        __m512 a0 = _mm512_abs_ps(_mm512_loadu_ps(x + i)), a1 = _mm512_abs_ps(_mm512_loadu_ps(x + i + 16));
        nf |= _mm512_cmp_ps_mask(a0, big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, big, _CMP_NLE_UQ);
        m0 = _mm512_max_ps(a0, m0);
        m1 = _mm512_max_ps(a1, m1);
    }
    *bad = nf != 0;
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

TGT_AVX512 static int32_t quant_codes_512(const float *x, int64_t n, float d, int8_t *a) {
    const __m512 vd = _mm512_set1_ps(d);
    const __m512i lo = _mm512_set1_epi32(-128), hi = _mm512_set1_epi32(127);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + i), vd)); /* rint under MXCSR's RNE */
        v = _mm512_max_epi32(_mm512_min_epi32(v, hi), lo);
        sum = _mm512_add_epi32(sum, v);
        _mm_storeu_si128((__m128i *)(a + i), _mm512_cvtepi32_epi8(v));
    }
    return _mm512_reduce_add_epi32(sum);
}

TGT_AVX2 static float absmax_avx2(const float *x, int64_t n, bool *bad) {
    const __m256 big = _mm256_set1_ps(3.40282347e38f), absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m0 = _mm256_setzero_ps(), m1 = m0, nf = m0;
    for (int64_t i = 0; i < n; i += 16) {
        __m256 a0 = _mm256_and_ps(_mm256_loadu_ps(x + i), absm), a1 = _mm256_and_ps(_mm256_loadu_ps(x + i + 8), absm);
        nf = _mm256_or_ps(nf, _mm256_or_ps(_mm256_cmp_ps(a0, big, _CMP_NLE_UQ), _mm256_cmp_ps(a1, big, _CMP_NLE_UQ)));
        m0 = _mm256_max_ps(a0, m0); /* max(a, m) returns m when a is NaN */
        m1 = _mm256_max_ps(a1, m1);
    }
    *bad = _mm256_movemask_ps(nf) != 0;
    __m256 m = _mm256_max_ps(m0, m1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

TGT_AVX2 static int32_t quant_codes_avx2(const float *x, int64_t n, float d, int8_t *a) {
    const __m256 vd = _mm256_set1_ps(d);
    const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127), perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sum = _mm256_setzero_si256();
    for (int64_t i = 0; i < n; i += 32) {
        __m256i v[4];
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), vd));
            v[j] = _mm256_max_epi32(_mm256_min_epi32(v[j], hi), lo);
            sum = _mm256_add_epi32(sum, v[j]);
        }
        /* packs work per 128-bit lane: bytes come out as v0[0:4] v1[0:4] v2[0:4] v3[0:4] | v0[4:8] ...; the dword
         * permutation restores column order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(a + i), _mm256_permutevar8x32_epi32(p, perm));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* The shared shape of the SIMD quantizers: max pass, then division pass. */
static float quant_run_isa(enum cpu_isa isa, const float *x, int64_t n, bool g128, int8_t *a, int32_t *sum) {
    if (isa == CPU_ISA_SCALAR) return g128 ? quant_group_scalar(x, a, sum) : quant_token_scalar(x, n, a, sum);
    bool bad = false;
    float amax = isa == CPU_ISA_AVX512 ? absmax_512(x, n, &bad) : absmax_avx2(x, n, &bad);
    float d = g128 ? amax / 127.0f : (amax > 1e-5f ? amax : 1e-5f) / 127.0f;
    if (bad || d == 0.0f) {
        memset(a, 0, (size_t)n);
        *sum = 0;
        return bad ? NAN : 0.0f;
    }
    *sum = isa == CPU_ISA_AVX512 ? quant_codes_512(x, n, d, a) : quant_codes_avx2(x, n, d, a);
    return d;
}

void cpu_int8_prepare(enum cpu_isa isa, enum vlm_qformat f, const float *x, int64_t M, int64_t k, void *scratch,
                      int64_t t0, int64_t t1) {
    struct a8_layout L;
    VLM_ASSERT(a8_layout(f, M, k, &L) && 0 <= t0 && t0 <= t1 && t1 <= M);
    unsigned char *base = scratch;
    int8_t *codes = (int8_t *)(base + L.codes_off);
    float *d = (float *)(base + L.d_off);
    int32_t *sum = (int32_t *)(base + L.sum_off);
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * k;
        int8_t *at = codes + t * k;
        if (is_g128(f)) {
            for (int64_t g = 0; g < L.G; g++)
                d[t * L.Gp + g] = quant_run_isa(isa, xt + g * VLM_QGROUP, VLM_QGROUP, true, at + g * VLM_QGROUP,
                                                &sum[t * L.Gp + g]);
            for (int64_t g = L.G; g < L.Gp; g++) d[t * L.Gp + g] = 0.0f, sum[t * L.Gp + g] = 0;
        } else {
            d[t] = quant_run_isa(isa, xt, k, false, at, &sum[t]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * code unpacking for the scalar level (quant.h's layouts, byte by byte)
 * ------------------------------------------------------------------------------------------------------------- */

static void unpack_block(bool w3, const uint8_t *blk, uint8_t q[VLM_QGROUP]) {
    for (int i = 0; i < VLM_QGROUP; i++) {
        if (w3) q[i] = (uint8_t)(((blk[i % 32] >> (2 * (i / 32))) & 3) | (((blk[32 + i / 8] >> (i % 8)) & 1) << 2));
        else q[i] = (uint8_t)(i < 64 ? blk[i] & 15 : blk[i - 64] >> 4);
    }
}

static uint16_t rd_u16(const void *p, size_t i) {
    uint16_t v;
    memcpy(&v, (const unsigned char *)p + 2 * i, 2);
    return v;
}

/* ---------------------------------------------------------------------------------------------------------------
 * the reference A8 arithmetic (qgemm.h): self-contained, slow
 * ------------------------------------------------------------------------------------------------------------- */

void cpu_qlinear_a8_ref(float *y, const float *x, const struct vlm_qmat *w, const float *b, int64_t M) {
    if (!is_g128(w->fmt)) {
        cpu_qlinear_ref(y, x, w, b, M);
        return;
    }
    const int64_t n = w->n, k = w->k, G = k / VLM_QGROUP;
    const bool w3 = w->fmt == VLM_QF_W3G128;
    const size_t bb = w3 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES;
    int8_t *a = malloc((size_t)k);
    float *d = malloc((size_t)G * sizeof(float));
    int32_t *asum = malloc((size_t)G * sizeof(int32_t));
    VLM_ASSERT(a && d && asum);
    for (int64_t t = 0; t < M; t++) {
        for (int64_t g = 0; g < G; g++) d[g] = quant_group_scalar(x + t * k + g * VLM_QGROUP, a + g * VLM_QGROUP, &asum[g]);
        for (int64_t o = 0; o < n; o++) {
            float acc = 0.0f;
            for (int64_t g = 0; g < G; g++) {
                size_t gi = (size_t)(o * G + g);
                uint8_t q[VLM_QGROUP];
                unpack_block(w3, (const uint8_t *)w->codes + gi * bb, q);
                int32_t isum = 0;
                for (int i = 0; i < VLM_QGROUP; i++) isum += (int32_t)q[i] * a[g * VLM_QGROUP + i];
                float s = vlm_f16_to_f32(rd_u16(w->scales, gi));
                acc += (s * d[g]) * (float)(isum - (int32_t)w->zeros[gi] * asum[g]);
            }
            y[t * n + o] = acc + (b ? b[o] : 0.0f);
        }
    }
    free(a);
    free(d);
    free(asum);
}

/* ---------------------------------------------------------------------------------------------------------------
 * row kernels — common arguments
 * ------------------------------------------------------------------------------------------------------------- */

struct rows_args {
    float *y;
    const float *b;
    const uint8_t *codes;    /* code blocks (n, G, bb) */
    const uint16_t *scales;  /* W3/W4: fp16 (n, G) */
    const uint8_t *zeros;    /* W3/W4: (n, G) */
    const float *rscale;     /* W4A8: f32 (n) */
    const int8_t *a;         /* activation codes (M, k) */
    const float *d;          /* (M, Gp) */
    const int32_t *asum;     /* (M, Gp) */
    int64_t n, k, G, Gp, M;
    size_t bb;
};

static float bias_of(const struct rows_args *A, int64_t r) { return A->b ? A->b[r] : 0.0f; }

/* ---- scalar level: the reference arithmetic on the prepared scratch (bit-identical to cpu_qlinear_a8_ref and,
 * for W4A8, to cpu_qlinear_ref) */
static void rows_scalar(const struct rows_args *A, enum vlm_qformat f, int64_t r0, int64_t r1) {
    const bool w3 = f == VLM_QF_W3G128;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t = 0; t < A->M; t++) {
            const int8_t *at = A->a + t * A->k;
            float acc = 0.0f;
            int32_t iacc = 0;
            for (int64_t g = 0; g < A->G; g++) {
                size_t gi = (size_t)(r * A->G + g);
                uint8_t q[VLM_QGROUP];
                unpack_block(w3, A->codes + gi * A->bb, q);
                int32_t isum = 0;
                for (int i = 0; i < VLM_QGROUP; i++) isum += (int32_t)q[i] * at[g * VLM_QGROUP + i];
                if (f == VLM_QF_W4A8) {
                    iacc += isum;
                } else {
                    float s = vlm_f16_to_f32(A->scales[gi]);
                    acc += (s * A->d[t * A->Gp + g]) * (float)(isum - (int32_t)A->zeros[gi] * A->asum[t * A->Gp + g]);
                }
            }
            if (f == VLM_QF_W4A8) {
                iacc -= 8 * A->asum[t];
                A->y[t * A->n + r] = (A->d[t] * A->rscale[r]) * (float)iacc + bias_of(A, r);
            } else {
                A->y[t * A->n + r] = acc + bias_of(A, r);
            }
        }
}

/* ---------------------------------------------------------------------------------------------------------------
 * AVX-512 VNNI
 * ------------------------------------------------------------------------------------------------------------- */

/* Rows [r, r+R) × tokens [t0, t0+T) of a W3G128/W4G128 matrix. R, T, W3 are constants after inlining. */
INLINE TGT_AVX512 void g128_tile_512(const struct rows_args *A, const int W3, int64_t r, const int R, int64_t t0,
                                     const int T) {
    __m512 acc[4][4];
    _Alignas(64) float sd[4][4][16];
    _Alignas(64) int32_t corr[4][4][16];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    const int64_t G = A->G;
    const size_t bb = A->bb;
    const uint8_t *rowc[4];
    const int8_t *act[4];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) rowc[i] = A->codes + (size_t)((r + i) * G) * bb;
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) act[t] = A->a + (t0 + t) * A->k;
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
        const __mmask16 m = (__mmask16)((1u << ng) - 1);
        /* s·d and −z·Σa for 16 groups of every (row, token) of the tile */
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            size_t gi = (size_t)((r + i) * G + g0);
            __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, A->scales + gi));
            __m512i z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, A->zeros + gi));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                size_t ti = (size_t)((t0 + t) * A->Gp + g0);
                _mm512_store_ps(sd[i][t], _mm512_mul_ps(s, _mm512_load_ps(A->d + ti)));
                _mm512_store_si512(corr[i][t], _mm512_mullo_epi32(z, _mm512_sub_epi32(_mm512_setzero_si512(),
                                                                                     _mm512_load_si512(A->asum + ti))));
            }
        }
        for (int gj = 0; gj < ng; gj++) {
            const int64_t g = g0 + gj;
            __m512i a0[4], a1[4];
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                a0[t] = _mm512_load_si512(act[t] + g * VLM_QGROUP);
                a1[t] = _mm512_load_si512(act[t] + g * VLM_QGROUP + 64);
            }
#pragma GCC unroll 4
            for (int i = 0; i < R; i++) {
                const uint8_t *blk = rowc[i] + (size_t)g * bb;
                _mm_prefetch((const char *)(blk + PF_GROUPS * bb), _MM_HINT_T0);
                __m512i c0, c1;
                if (W3) unpack_w3_512(blk, &c0, &c1);
                else unpack_w4_512(blk, &c0, &c1);
#pragma GCC unroll 4
                for (int t = 0; t < T; t++) {
                    /* lane 0 starts at −z·Σa, so the lanes sum to Σ(q − z)·a exactly */
                    __m512i v = _mm512_maskz_loadu_epi32(1, &corr[i][t][gj]);
                    v = _mm512_dpbusd_epi32(v, c0, a0[t]);
                    v = _mm512_dpbusd_epi32(v, c1, a1[t]);
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(sd[i][t][gj]), acc[i][t]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m512 v = acc[i][t];
            if (W3) /* lanes 8..15 summed 4 × the codes (unpack_w3_512) */
                v = _mm512_mul_ps(v, _mm512_insertf32x8(_mm512_set1_ps(1.0f), _mm256_set1_ps(0.25f), 1));
            A->y[(t0 + t) * A->n + r + i] = _mm512_reduce_add_ps(v) + bias_of(A, r + i);
        }
}

/* One group of a W4A8 tile into accumulator set u. */
INLINE TGT_AVX512 void w4a8_group_512(const struct rows_args *A, int64_t r, const int R, int64_t t0, const int T,
                                      int64_t g, __m512i acc[4][4][4], const int u) {
    __m512i a0[4], a1[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const int8_t *ap = A->a + (t0 + t) * A->k + g * VLM_QGROUP;
        a0[t] = _mm512_load_si512(ap);
        a1[t] = _mm512_load_si512(ap + 64);
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
        const uint8_t *blk = A->codes + ((size_t)((r + i) * A->G + g)) * VLM_W4_BLOCK_BYTES;
        _mm_prefetch((const char *)(blk + PF_GROUPS * VLM_W4_BLOCK_BYTES), _MM_HINT_T0);
        __m512i c0, c1;
        unpack_w4_512(blk, &c0, &c1);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            acc[i][t][2 * u] = _mm512_dpbusd_epi32(acc[i][t][2 * u], c0, a0[t]);
            acc[i][t][2 * u + 1] = _mm512_dpbusd_epi32(acc[i][t][2 * u + 1], c1, a1[t]);
        }
    }
}

/* Rows [r, r+R) × tokens [t0, t0+T) of a W4A8 matrix: int32 accumulation over all of k, exact. A (row, token) keeps
 * two accumulators (columns 0..63 / 64..127 of every block), and four (even / odd groups) when the tile is a single
 * row and token, so that the vpdpbusd latency chains never limit the rate. */
INLINE TGT_AVX512 void w4a8_tile_512(const struct rows_args *A, int64_t r, const int R, int64_t t0, const int T) {
    __m512i acc[4][4][4];
    const int U = R * T == 1 ? 2 : 1;
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
#pragma GCC unroll 4
            for (int j = 0; j < 2 * U; j++) acc[i][t][j] = _mm512_setzero_si512();
    int64_t g = 0;
    if (U == 2)
        for (; g + 2 <= A->G; g += 2) {
            w4a8_group_512(A, r, R, t0, T, g, acc, 0);
            w4a8_group_512(A, r, R, t0, T, g + 1, acc, U - 1);
        }
    for (; g < A->G; g++) w4a8_group_512(A, r, R, t0, T, g, acc, 0);
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m512i v = _mm512_add_epi32(acc[i][t][0], acc[i][t][1]);
            if (U == 2) v = _mm512_add_epi32(v, _mm512_add_epi32(acc[i][t][2], acc[i][t][3]));
            int32_t s = _mm512_reduce_add_epi32(v) - 8 * A->asum[t0 + t];
            A->y[(t0 + t) * A->n + r + i] = (A->d[t0 + t] * A->rscale[r + i]) * (float)s + bias_of(A, r + i);
        }
}

/* One tile with run-time (R, T) → a constant instance. R in {1, 4}, T in 1..4. */
TGT_AVX512 static void tile_512(const struct rows_args *A, enum vlm_qformat f, int64_t r, int R, int64_t t0, int T) {
#define T512_CASE(RR, TT)                                                                                     \
    case RR * 8 + TT:                                                                                         \
        if (f == VLM_QF_W3G128) g128_tile_512(A, 1, r, RR, t0, TT);                                           \
        else if (f == VLM_QF_W4G128) g128_tile_512(A, 0, r, RR, t0, TT);                                      \
        else w4a8_tile_512(A, r, RR, t0, TT);                                                                 \
        break;
    switch (R * 8 + T) {
        T512_CASE(1, 1) T512_CASE(1, 2) T512_CASE(1, 3) T512_CASE(1, 4)
        T512_CASE(4, 1) T512_CASE(4, 2) T512_CASE(4, 3) T512_CASE(4, 4)
    default: VLM_ASSERT(!"bad tile");
    }
#undef T512_CASE
}

/* ---- AVX-512 GEMM (M > 4: prefill, vision tokens). The output rows are taken in panels of GP_ROWS = 32; for each
 * k-block of up to GP_KBG groups the panel's codes are unpacked ONCE into a thread-local buffer in the VNNI operand
 * layout "for each k4 (4 consecutive columns): 32 rows × 4 bytes" (two 64-byte vectors: rows 0..15, 16..31), then
 * every token of the call streams past it: per k4, two vector loads, one broadcast dword of activations per token
 * and two vpdpbusd per token into a register tile of GT tokens × 32 rows. The unpack + transpose (~6 instructions
 * per 64 codes) is paid once per weight per call, the MACs once per weight × token.
 * W3/W4: per group the int32 accumulators start at −z·Σa (exact) and are then added, as (s·d)·(float)(acc), to f32
 * accumulators in group order starting from 0 — the same f32 operations in the same order as the scalar level, so
 * this path is bit-identical to it. W4A8: int32 accumulation over all of k, y = (s_t·s_row)·(float)(acc − 8·Σa) + b,
 * bit-identical too. Between k-blocks the partial sums (f32, or the int32 bit patterns for W4A8) are parked in y —
 * only rows [r0, r1) are ever written (masked stores). */
enum {
    GP_ROWS = 32,     /* rows per panel: two 16-lane vectors */
    GP_KBG = 8,       /* groups per k-block: 32 rows × 1024 columns = 32 KB of unpacked codes (L1) */
    GT = 4,           /* tokens per register tile: 8 int32 + 8 f32 accumulators */
    GP_TOK = 768,     /* tokens per pass over the rows: their activations stay in cache across panels */
};

static _Thread_local _Alignas(64) uint8_t g_panel[GP_KBG * VLM_QGROUP * GP_ROWS]; /* unpacked codes of one k-block */

struct gpanel {
    const uint8_t *B;    /* g_panel: (ng, 32 k4, 32 rows, 4) u8 codes */
    const float *s;      /* W3/W4: (ng, 32 rows) f32 group scales (0 for rows past the panel) */
    const int32_t *nz;   /* W3/W4: (ng, 32 rows) −z */
    int64_t p, g0;       /* first row, first group */
    int ng;
    bool first, last;    /* the k-block is the first / last of k */
    __mmask16 m[2];      /* valid rows of the two halves */
};

/* 16 × 16 dword transpose: r[i] dword j → o[j] dword i. */
INLINE TGT_AVX512 void transpose16_512(__m512i r[16]) {
    __m512i b[4][4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        __m512i a0 = _mm512_unpacklo_epi32(r[4 * q], r[4 * q + 1]), a1 = _mm512_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
        __m512i a2 = _mm512_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
        __m512i a3 = _mm512_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
        b[q][0] = _mm512_unpacklo_epi64(a0, a2); /* lane L: rows 4q..4q+3 of dword 4L + m */
        b[q][1] = _mm512_unpackhi_epi64(a0, a2);
        b[q][2] = _mm512_unpacklo_epi64(a1, a3);
        b[q][3] = _mm512_unpackhi_epi64(a1, a3);
    }
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        __m512i x01 = _mm512_shuffle_i32x4(b[0][m], b[1][m], 0x88), y01 = _mm512_shuffle_i32x4(b[0][m], b[1][m], 0xdd);
        __m512i x23 = _mm512_shuffle_i32x4(b[2][m], b[3][m], 0x88), y23 = _mm512_shuffle_i32x4(b[2][m], b[3][m], 0xdd);
        r[m] = _mm512_shuffle_i32x4(x01, x23, 0x88);
        r[8 + m] = _mm512_shuffle_i32x4(x01, x23, 0xdd);
        r[4 + m] = _mm512_shuffle_i32x4(y01, y23, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(y01, y23, 0xdd);
    }
}

/* W3 block → the true codes of columns 0..63 (c0) and 64..127 (c1). */
INLINE TGT_AVX512 void unpack_w3_true_512(const uint8_t *blk, __m512i *c0, __m512i *c1) {
    const __m512i three = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
    __m512i lo = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)blk));
    uint64_t h0, h1;
    memcpy(&h0, blk + 32, 8);
    memcpy(&h1, blk + 40, 8);
    __m512i s0 = _mm512_srlv_epi64(lo, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0));
    __m512i s1 = _mm512_srlv_epi64(lo, _mm512_set_epi64(6, 6, 6, 6, 4, 4, 4, 4));
    /* (A & B) | C with A = the shifted lo plane, B = 3, C = the third bits as 4 */
    *c0 = _mm512_ternarylogic_epi32(s0, three, _mm512_maskz_mov_epi8(_cvtu64_mask64(h0), four), 0xEA);
    *c1 = _mm512_ternarylogic_epi32(s1, three, _mm512_maskz_mov_epi8(_cvtu64_mask64(h1), four), 0xEA);
}

/* Unpacks groups [g0, g0+ng) of rows [p, p+nrows) into g_panel (rows past nrows: code 0, s 0, z 0). */
TGT_AVX512 static void gemm_pack_512(const struct rows_args *A, enum vlm_qformat f, int64_t p, int nrows, int64_t g0,
                                     int ng, float *s, int32_t *nz) {
    for (int gl = 0; gl < ng; gl++) {
        const int64_t g = g0 + gl;
        for (int h = 0; h < 2 && f != VLM_QF_W3G128; h++) {
            /* W4: transpose the packed blocks (one dword = the low nibbles of k4 j and the high nibbles of k4 16 + j),
             * then split the nibbles: half the shuffles of transposing unpacked codes */
            __m512i r[16];
            const __m512i m15 = _mm512_set1_epi8(15);
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const int row = 16 * h + i;
                r[i] = row < nrows ? _mm512_loadu_si512(A->codes + ((size_t)((p + row) * A->G + g)) * A->bb)
                                   : _mm512_setzero_si512();
            }
            transpose16_512(r);
            uint8_t *dst = g_panel + ((size_t)(gl * 32) * GP_ROWS + 16 * h) * 4;
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                _mm512_store_si512(dst + (size_t)j * GP_ROWS * 4, _mm512_and_si512(r[j], m15));
                _mm512_store_si512(dst + (size_t)(16 + j) * GP_ROWS * 4, _mm512_and_si512(_mm512_srli_epi16(r[j], 4), m15));
            }
        }
        for (int h = 0; h < 2 && f == VLM_QF_W3G128; h++) {
            __m512i r[2][16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                const int row = 16 * h + i;
                if (row < nrows) {
                    unpack_w3_true_512(A->codes + ((size_t)((p + row) * A->G + g)) * A->bb, &r[0][i], &r[1][i]);
                } else {
                    r[0][i] = r[1][i] = _mm512_setzero_si512();
                }
            }
            for (int c = 0; c < 2; c++) {
                transpose16_512(r[c]);
                uint8_t *dst = g_panel + ((size_t)(gl * 32 + 16 * c) * GP_ROWS + 16 * h) * 4;
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) _mm512_store_si512(dst + (size_t)j * GP_ROWS * 4, r[c][j]);
            }
        }
        if (f != VLM_QF_W4A8) {
            _Alignas(64) uint16_t s16[GP_ROWS];
            for (int i = 0; i < GP_ROWS; i++) {
                const size_t gi = (size_t)((p + i) * A->G + g);
                s16[i] = i < nrows ? A->scales[gi] : 0;
                nz[gl * GP_ROWS + i] = i < nrows ? -(int32_t)A->zeros[gi] : 0;
            }
            _mm512_store_ps(s + gl * GP_ROWS, _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)s16)));
            _mm512_store_ps(s + gl * GP_ROWS + 16, _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(s16 + 16))));
        }
    }
}

INLINE int32_t ld_i32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Tokens [t0, t0+T) × the 32 rows of panel P over its k-block. W4A8 = 0: W3/W4 (f32 accumulation per group). */
INLINE TGT_AVX512 void gemm_tile_512(const struct rows_args *A, const struct gpanel *P, const int W4A8, int64_t t0,
                                     const int T) {
    __m512 accf[GT][2];
    __m512i acci[GT][2];
    const int8_t *act[GT];
    float *yt[GT];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        act[t] = A->a + (t0 + t) * A->k + P->g0 * VLM_QGROUP;
        yt[t] = A->y + (t0 + t) * A->n + P->p;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            if (W4A8) acci[t][h] = P->first ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi32(P->m[h], yt[t] + 16 * h);
            else accf[t][h] = P->first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(P->m[h], yt[t] + 16 * h);
        }
    }
    for (int gl = 0; gl < P->ng; gl++) {
        const int64_t g = P->g0 + gl;
        if (!W4A8) {
            const __m512i nz0 = _mm512_load_si512(P->nz + gl * GP_ROWS), nz1 = _mm512_load_si512(P->nz + gl * GP_ROWS + 16);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m512i sa = _mm512_set1_epi32(A->asum[(t0 + t) * A->Gp + g]);
                acci[t][0] = _mm512_mullo_epi32(nz0, sa); /* −z·Σa, exact */
                acci[t][1] = _mm512_mullo_epi32(nz1, sa);
            }
        }
        const uint8_t *B = P->B + (size_t)gl * 32 * GP_ROWS * 4;
#pragma GCC unroll 2
        for (int kk = 0; kk < 32; kk++) {
            const __m512i b0 = _mm512_load_si512(B + kk * GP_ROWS * 4), b1 = _mm512_load_si512(B + kk * GP_ROWS * 4 + 64);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m512i a = _mm512_set1_epi32(ld_i32(act[t] + gl * VLM_QGROUP + 4 * kk));
                acci[t][0] = _mm512_dpbusd_epi32(acci[t][0], b0, a);
                acci[t][1] = _mm512_dpbusd_epi32(acci[t][1], b1, a);
            }
        }
        if (!W4A8) {
            const __m512 s0 = _mm512_load_ps(P->s + gl * GP_ROWS), s1 = _mm512_load_ps(P->s + gl * GP_ROWS + 16);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m512 d = _mm512_set1_ps(A->d[(t0 + t) * A->Gp + g]);
                /* acc += (s·d)·(float)Σ — the scalar level's operations, no FMA */
                accf[t][0] = _mm512_add_ps(accf[t][0], _mm512_mul_ps(_mm512_mul_ps(s0, d), _mm512_cvtepi32_ps(acci[t][0])));
                accf[t][1] = _mm512_add_ps(accf[t][1], _mm512_mul_ps(_mm512_mul_ps(s1, d), _mm512_cvtepi32_ps(acci[t][1])));
            }
        }
    }
    __m512 bias[2], rs[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        bias[h] = A->b && P->last ? _mm512_maskz_loadu_ps(P->m[h], A->b + P->p + 16 * h) : _mm512_setzero_ps();
        rs[h] = W4A8 && P->last ? _mm512_maskz_loadu_ps(P->m[h], A->rscale + P->p + 16 * h) : _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            if (W4A8 && !P->last) {
                _mm512_mask_storeu_epi32(yt[t] + 16 * h, P->m[h], acci[t][h]); /* int32 partial sums parked in y */
            } else if (W4A8) {
                const __m512i v = _mm512_sub_epi32(acci[t][h], _mm512_set1_epi32(8 * A->asum[t0 + t]));
                const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(A->d[t0 + t]), rs[h]);
                _mm512_mask_storeu_ps(yt[t] + 16 * h, P->m[h],
                                      _mm512_add_ps(_mm512_mul_ps(sc, _mm512_cvtepi32_ps(v)), bias[h]));
            } else {
                _mm512_mask_storeu_ps(yt[t] + 16 * h, P->m[h], P->last ? _mm512_add_ps(accf[t][h], bias[h]) : accf[t][h]);
            }
        }
}

TGT_AVX512 static void gemm_tiles_512(const struct rows_args *A, const struct gpanel *P, bool w4a8, int64_t t0,
                                      int64_t t1) {
    if (w4a8)
        for (; t0 + GT <= t1; t0 += GT) gemm_tile_512(A, P, 1, t0, GT);
    else
        for (; t0 + GT <= t1; t0 += GT) gemm_tile_512(A, P, 0, t0, GT);
    const int T = (int)(t1 - t0);
#define GT_CASE(TT)                                                                                           \
    case TT:                                                                                                  \
        if (w4a8) gemm_tile_512(A, P, 1, t0, TT);                                                             \
        else gemm_tile_512(A, P, 0, t0, TT);                                                                  \
        break;
    switch (T) {
    case 0: break;
        GT_CASE(1) GT_CASE(2) GT_CASE(3)
    default: VLM_ASSERT(!"bad tail");
    }
#undef GT_CASE
}

TGT_AVX512 static void gemm_512(const struct rows_args *A, enum vlm_qformat f, int64_t r0, int64_t r1) {
    _Alignas(64) float s[GP_KBG * GP_ROWS];
    _Alignas(64) int32_t nz[GP_KBG * GP_ROWS];
    for (int64_t t0 = 0; t0 < A->M; t0 += GP_TOK) {
    const int64_t t1 = A->M - t0 < GP_TOK ? A->M : t0 + GP_TOK;
    for (int64_t p = r0; p < r1; p += GP_ROWS) {
        const int nrows = r1 - p < GP_ROWS ? (int)(r1 - p) : GP_ROWS;
        struct gpanel P = {.B = g_panel, .s = s, .nz = nz, .p = p};
        P.m[0] = nrows >= 16 ? 0xffff : (__mmask16)((1u << nrows) - 1);
        P.m[1] = nrows >= 32 ? 0xffff : nrows > 16 ? (__mmask16)((1u << (nrows - 16)) - 1) : 0;
        for (int64_t g0 = 0; g0 < A->G; g0 += GP_KBG) {
            P.g0 = g0;
            P.ng = A->G - g0 < GP_KBG ? (int)(A->G - g0) : GP_KBG;
            P.first = g0 == 0;
            P.last = g0 + P.ng == A->G;
            gemm_pack_512(A, f, p, nrows, g0, P.ng, s, nz);
            gemm_tiles_512(A, &P, f == VLM_QF_W4A8, t0, t1);
        }
    }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * AVX2 (+FMA, F16C): vpmaddubsw u8×s8 → s16 pairs, four blocks of 32 summed in s16, vpmaddwd → s32. No overflow or
 * saturation: |pair| <= 2·15·128 = 3840, four of them 15360 < 32767. 16 ymm registers: tiles are at most 2 × 2.
 * ------------------------------------------------------------------------------------------------------------- */

/* W3 block → four vectors of 32 consecutive columns each. */
INLINE TGT_AVX2 void unpack_w3_avx2(const uint8_t *blk, __m256i c[4]) {
    const __m256i three = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                          3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i lo = _mm256_loadu_si256((const __m256i *)blk);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        int32_t hw;
        memcpy(&hw, blk + 32 + 4 * j, 4);
        __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi32(hw), shuf);
        h = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, bits), bits), four);
        c[j] = _mm256_or_si256(_mm256_and_si256(j ? _mm256_srli_epi16(lo, 2 * j) : lo, three), h);
    }
}

INLINE TGT_AVX2 void unpack_w4_avx2(const uint8_t *blk, __m256i c[4]) {
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256i v0 = _mm256_loadu_si256((const __m256i *)blk), v1 = _mm256_loadu_si256((const __m256i *)(blk + 32));
    c[0] = _mm256_and_si256(v0, m15);
    c[1] = _mm256_and_si256(v1, m15);
    c[2] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m15);
    c[3] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m15);
}

/* Σ over 128 columns of c·a as 8 int32 lanes. */
INLINE TGT_AVX2 __m256i dot128_avx2(const __m256i c[4], const int8_t *a) {
    __m256i p = _mm256_maddubs_epi16(c[0], _mm256_load_si256((const __m256i *)a));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[1], _mm256_load_si256((const __m256i *)(a + 32))));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[2], _mm256_load_si256((const __m256i *)(a + 64))));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(c[3], _mm256_load_si256((const __m256i *)(a + 96))));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

INLINE TGT_AVX2 float hsum_ps_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

INLINE TGT_AVX2 int32_t hsum_epi32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

INLINE TGT_AVX2 void g128_tile_avx2(const struct rows_args *A, const int W3, int64_t r, const int R, int64_t t0,
                                    const int T) {
    __m256 acc[2][2];
    _Alignas(32) float sd[2][2][16];
    _Alignas(32) int32_t corr[2][2][16];
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();
    const int64_t G = A->G;
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
        const int ng = G - g0 < 16 ? (int)(G - g0) : 16;
#pragma GCC unroll 2
        for (int i = 0; i < R; i++) {
            size_t gi = (size_t)((r + i) * G + g0);
            _Alignas(32) uint16_t s16[16] = {0};
            _Alignas(16) uint8_t z8[16] = {0};
            memcpy(s16, A->scales + gi, (size_t)ng * 2);
            memcpy(z8, A->zeros + gi, (size_t)ng);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256 s = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(s16 + 8 * h)));
                __m256i z = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(z8 + 8 * h)));
#pragma GCC unroll 2
                for (int t = 0; t < T; t++) {
                    size_t ti = (size_t)((t0 + t) * A->Gp + g0 + 8 * h);
                    _mm256_store_ps(sd[i][t] + 8 * h, _mm256_mul_ps(s, _mm256_load_ps(A->d + ti)));
                    __m256i na = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_load_si256((const __m256i *)(A->asum + ti)));
                    _mm256_store_si256((__m256i *)(corr[i][t] + 8 * h), _mm256_mullo_epi32(z, na));
                }
            }
        }
        for (int gj = 0; gj < ng; gj++) {
            const int64_t g = g0 + gj;
#pragma GCC unroll 2
            for (int i = 0; i < R; i++) {
                const uint8_t *blk = A->codes + ((size_t)((r + i) * G + g)) * A->bb;
                _mm_prefetch((const char *)(blk + PF_GROUPS * A->bb), _MM_HINT_T0);
                __m256i c[4];
                if (W3) unpack_w3_avx2(blk, c);
                else unpack_w4_avx2(blk, c);
#pragma GCC unroll 2
                for (int t = 0; t < T; t++) {
                    __m256i v = dot128_avx2(c, A->a + (t0 + t) * A->k + g * VLM_QGROUP);
                    v = _mm256_add_epi32(v, _mm256_zextsi128_si256(_mm_cvtsi32_si128(corr[i][t][gj])));
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(sd[i][t][gj]), acc[i][t]);
                }
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) A->y[(t0 + t) * A->n + r + i] = hsum_ps_avx2(acc[i][t]) + bias_of(A, r + i);
}

INLINE TGT_AVX2 void w4a8_tile_avx2(const struct rows_args *A, int64_t r, const int R, int64_t t0, const int T) {
    __m256i acc[2][2];
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[i][t] = _mm256_setzero_si256();
    for (int64_t g = 0; g < A->G; g++) {
#pragma GCC unroll 2
        for (int i = 0; i < R; i++) {
            const uint8_t *blk = A->codes + ((size_t)((r + i) * A->G + g)) * VLM_W4_BLOCK_BYTES;
            _mm_prefetch((const char *)(blk + PF_GROUPS * VLM_W4_BLOCK_BYTES), _MM_HINT_T0);
            __m256i c[4];
            unpack_w4_avx2(blk, c);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++)
                acc[i][t] = _mm256_add_epi32(acc[i][t], dot128_avx2(c, A->a + (t0 + t) * A->k + g * VLM_QGROUP));
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            int32_t s = hsum_epi32_avx2(acc[i][t]) - 8 * A->asum[t0 + t];
            A->y[(t0 + t) * A->n + r + i] = (A->d[t0 + t] * A->rscale[r + i]) * (float)s + bias_of(A, r + i);
        }
}

TGT_AVX2 static void tile_avx2(const struct rows_args *A, enum vlm_qformat f, int64_t r, int R, int64_t t0, int T) {
#define T2_CASE(RR, TT)                                                                                       \
    case RR * 8 + TT:                                                                                         \
        if (f == VLM_QF_W3G128) g128_tile_avx2(A, 1, r, RR, t0, TT);                                          \
        else if (f == VLM_QF_W4G128) g128_tile_avx2(A, 0, r, RR, t0, TT);                                     \
        else w4a8_tile_avx2(A, r, RR, t0, TT);                                                                \
        break;
    switch (R * 8 + T) {
        T2_CASE(1, 1) T2_CASE(1, 2) T2_CASE(2, 1) T2_CASE(2, 2)
    default: VLM_ASSERT(!"bad tile");
    }
#undef T2_CASE
}

/* ---------------------------------------------------------------------------------------------------------------
 * entry
 * ------------------------------------------------------------------------------------------------------------- */

void cpu_int8_rows(enum cpu_isa isa, float *y, const void *scratch, const struct vlm_qmat *w, const float *b,
                   int64_t M, int64_t r0, int64_t r1) {
    struct a8_layout L;
    const enum vlm_qformat f = w->fmt;
    VLM_ASSERT((is_g128(f) || f == VLM_QF_W4A8) && a8_layout(f, M, w->k, &L) && 0 <= r0 && r0 <= r1 && r1 <= w->n);
    const unsigned char *base = scratch;
    struct rows_args A = {
        .y = y, .b = b, .codes = w->codes,
        .scales = is_g128(f) ? w->scales : NULL, .zeros = w->zeros,
        .rscale = f == VLM_QF_W4A8 ? w->scales : NULL,
        .a = (const int8_t *)(base + L.codes_off), .d = (const float *)(base + L.d_off),
        .asum = (const int32_t *)(base + L.sum_off),
        .n = w->n, .k = w->k, .G = L.G, .Gp = L.Gp, .M = M,
        .bb = f == VLM_QF_W3G128 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES,
    };
    if (isa == CPU_ISA_SCALAR) {
        rows_scalar(&A, f, r0, r1);
        return;
    }
    /* One token tile (decode): rows one at a time, so the codes are read as ONE sequential stream — measured on Zen 4,
     * four interleaved row streams (rows of 1.3-7 KB) ran at 7-10 GB/s against 17-27 GB/s for one. Several token
     * tiles (prefill): R rows share each activation load, and the panel's codes come from L2 after the first tile. */
    /* Prefill: the panel GEMM above. Its per-call unpack + transpose of the codes only pays off over enough tokens;
     * measured on Zen 4 (3584 × 3584) the crossover against the tiles below is M ≈ 12 for W3/W4 (whose tiles unpack a
     * block once per 4 tokens) and M < 5 for W4A8. */
    if (isa == CPU_ISA_AVX512 && (f == VLM_QF_W4A8 ? M > 4 : M > 12)) {
        gemm_512(&A, f, r0, r1);
        return;
    }
    /* Decode: the dedicated GEMV (qgemv_int8.c: per-group float folding, one transpose-reduce per 16 rows) — faster
     * than the tiles below at M <= 4, except at M >= 3 with very long rows, where its activations (M·k bytes) no
     * longer fit L1 beside the code stream (measured slower at k = 18944, M = 4). */
    if (isa == CPU_ISA_AVX512 && M <= 4 && (M <= 2 || w->k <= 8192)) {
        cpu_int8_gemv_avx512(y, scratch, w, b, M, r0, r1);
        return;
    }
    const int TB = isa == CPU_ISA_AVX512 ? 4 : 2, RB = M <= TB ? 1 : isa == CPU_ISA_AVX512 ? 4 : 2;
    for (int64_t p0 = r0; p0 < r1; p0 += PANEL_ROWS) {
        const int64_t p1 = r1 - p0 < PANEL_ROWS ? r1 : p0 + PANEL_ROWS;
        for (int64_t t0 = 0; t0 < M; t0 += TB) {
            const int T = M - t0 < TB ? (int)(M - t0) : TB;
            for (int64_t r = p0; r < p1;) {
                const int R = p1 - r >= RB ? RB : 1;
                if (isa == CPU_ISA_AVX512) tile_512(&A, f, r, R, t0, T);
                else tile_avx2(&A, f, r, R, t0, T);
                r += R;
            }
        }
    }
}
