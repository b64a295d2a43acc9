/* attention.c — cpu_attention, the fast CPU scaled dot-product attention (contract in kernels/ops.h, the same as
 * cpu_attention_ref's), threaded over the process pool with run-time ISA dispatch (scalar C, AVX2+FMA, AVX-512).
 *
 * Promises: the result is the reference's up to float32 rounding (max |Δ| <= 1e-5 · (1 + |ref|), checked by
 * tests/test_attention.c); no heap allocation at all (every buffer is on the stack and bounded), so there is no
 * new error path; `scratch` is not used; the result does not depend on the thread count (each output row is
 * computed by exactly one thread in a fixed order).
 *
 * Algorithm: a flash-attention style online softmax. A work item is (query block, KV head, subset of that KV
 * head's query heads); its "rows" are every (query, head) pair of the block that reads this KV head, so one pass
 * over a chunk of K/V rows (held in L1/L2) serves all of them. That is what matters most for decode: with GQA
 * 7:1 the reference reads the K/V cache seven times per layer, this reads it once per KV head. Per row and key
 * chunk: scores by f32 dot products vectorised over hd, chunk max, running-max rescale, exp, and O += p·V
 * vectorised over hd. Causal rows only visit their visible keys (no masked work). Query blocks are handed out in
 * zig-zag order (first, last, second, ...) because vlm_pool_for gives each thread one contiguous range of items
 * and causal blocks grow linearly in cost. */
#include <math.h>
#include <stdint.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"

#if defined(__x86_64__) || defined(__i386__)
#define ATT_X86 1
#include <immintrin.h>
#else
#define ATT_X86 0
#endif

#define ATT_ROW_FLOATS 4096 /* the O accumulators of one item: rows * hd <= this (16 KiB of stack) */
#define ATT_MAX_ROWS 64
#define ATT_MAX_CHUNK 256   /* keys per chunk (stack score buffer) */
#define ATT_CHUNK_FLOATS 4096 /* keys per chunk * hd ~ 16 KiB of K, so a chunk of K and V stays in L1/L2 */
#define ATT_MIN_WORK 65536    /* multiply-adds below which waking the pool costs more than it saves */

/* The three per-ISA primitives of the inner loop. n >= 1 keys in each. */
struct att_isa {
    /* s[j] = (q · k_j) * scale, k_j = k + j * stride */
    void (*scores)(float *s, const float *q, const float *k, int64_t stride, int64_t n, int64_t hd, float scale);
    /* s[j] = exp(s[j] - m) in place; returns Σ s[j] */
    float (*exps)(float *s, int64_t n, float m);
    /* o = o * corr + Σ_j p[j] v_j, v_j = v + j * stride */
    void (*pv)(float *o, const float *p, const float *v, int64_t stride, int64_t n, int64_t hd, float corr);
};

/* ---------------------------------------------------------------------------------------------------------------
 * scalar C
 * ------------------------------------------------------------------------------------------------------------- */

static void scores_c(float *s, const float *q, const float *k, int64_t stride, int64_t n, int64_t hd, float scale) {
    for (int64_t j = 0; j < n; j++) {
        const float *kj = k + j * stride;
        float acc = 0;
        for (int64_t d = 0; d < hd; d++) acc += q[d] * kj[d];
        s[j] = acc * scale;
    }
}

static float exps_c(float *s, int64_t n, float m) {
    float sum = 0;
    for (int64_t j = 0; j < n; j++) sum += s[j] = expf(s[j] - m);
    return sum;
}

static void pv_c(float *o, const float *p, const float *v, int64_t stride, int64_t n, int64_t hd, float corr) {
    if (corr != 1.0f)
        for (int64_t d = 0; d < hd; d++) o[d] *= corr;
    for (int64_t j = 0; j < n; j++) {
        const float *vj = v + j * stride;
        for (int64_t d = 0; d < hd; d++) o[d] += p[j] * vj[d];
    }
}

static const struct att_isa g_isa_c = {scores_c, exps_c, pv_c};

#if ATT_X86
/* Cephes expf on r = x - n·ln2, |r| <= ln2/2: max relative error ~1e-7 (about 1 ulp), i.e. what expf gives. */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* ---------------------------------------------------------------------------------------------------------------
 * AVX2 + FMA
 * ------------------------------------------------------------------------------------------------------------- */
#define AVX2_TARGET __attribute__((target("avx2,fma")))

/* lanes [0, n) set, n in 0..8 */
AVX2_TARGET static inline __m256i mask8(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2_TARGET static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* (Σ a0, Σ a1, Σ a2, Σ a3) */
AVX2_TARGET static inline __m128 hsum8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 t0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1)); /* a0 a1 a0 a1 | ... */
    __m256 t1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    __m256 u = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1))),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1))));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

AVX2_TARGET static void scores_avx2(float *s, const float *q, const float *k, int64_t stride, int64_t n, int64_t hd,
                                    float scale) {
    const int64_t hv = hd & ~(int64_t)7;
    const __m256i tm = mask8(hd - hv);
    const __m128 sc = _mm_set1_ps(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) { /* four keys at a time: one joint horizontal reduction */
        const float *k0 = k + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t d = 0;
        for (; d < hv; d += 8) {
            __m256 qd = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + d), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k1 + d), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k2 + d), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k3 + d), a3);
        }
        if (d < hd) {
            __m256 qd = _mm256_maskload_ps(q + d, tm);
            a0 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(k0 + d, tm), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(k1 + d, tm), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(k2 + d, tm), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_maskload_ps(k3 + d, tm), a3);
        }
        _mm_storeu_ps(s + j, _mm_mul_ps(hsum8x4(a0, a1, a2, a3), sc));
    }
    for (; j < n; j++) {
        const float *kj = k + j * stride;
        __m256 a = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d < hv; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), a);
        if (d < hd) a = _mm256_fmadd_ps(_mm256_maskload_ps(q + d, tm), _mm256_maskload_ps(kj + d, tm), a);
        s[j] = hsum8(a) * scale;
    }
}

/* exp(x) for x <= 0 (the only inputs here: score - running max); below -87.3 it returns 0 rather than a
 * denormal, which changes a probability by < 1e-37. */
AVX2_TARGET static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), under);
}

AVX2_TARGET static float exps_avx2(float *s, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (j < n) {
        __m256i tm = mask8(n - j);
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(s + j, tm), mv)), _mm256_castsi256_ps(tm));
        _mm256_maskstore_ps(s + j, tm, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum8(acc);
}

AVX2_TARGET static void pv_avx2(float *o, const float *p, const float *v, int64_t stride, int64_t n, int64_t hd,
                                float corr) {
    const __m256 cv = _mm256_set1_ps(corr);
    int64_t d = 0;
    for (; d + 32 <= hd; d += 32) { /* 32 columns of o in registers across all n keys */
        __m256 o0 = _mm256_mul_ps(_mm256_loadu_ps(o + d), cv), o1 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 8), cv);
        __m256 o2 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 16), cv);
        __m256 o3 = _mm256_mul_ps(_mm256_loadu_ps(o + d + 24), cv);
        for (int64_t j = 0; j < n; j++) {
            const float *vj = v + j * stride + d;
            __m256 pj = _mm256_broadcast_ss(p + j);
            o0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), o0);
            o1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), o1);
            o2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), o2);
            o3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), o3);
        }
        _mm256_storeu_ps(o + d, o0), _mm256_storeu_ps(o + d + 8, o1);
        _mm256_storeu_ps(o + d + 16, o2), _mm256_storeu_ps(o + d + 24, o3);
    }
    for (; d < hd; d += 8) {
        __m256i tm = mask8(hd - d < 8 ? hd - d : 8);
        __m256 o0 = _mm256_mul_ps(_mm256_maskload_ps(o + d, tm), cv);
        for (int64_t j = 0; j < n; j++)
            o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_maskload_ps(v + j * stride + d, tm), o0);
        _mm256_maskstore_ps(o + d, tm, o0);
    }
}

static const struct att_isa g_isa_avx2 = {scores_avx2, exps_avx2, pv_avx2};

/* ---------------------------------------------------------------------------------------------------------------
 * AVX-512 (F, VL, BW, DQ; cpu_isa_detect's AVX512 level implies them)
 * ------------------------------------------------------------------------------------------------------------- */
#define AVX512_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))

AVX512_TARGET static inline __mmask16 mask16(int64_t n) { return (__mmask16)((1u << (n < 16 ? n : 16)) - 1u); }

/* (Σ a0, Σ a1, Σ a2, Σ a3) */
AVX512_TARGET static inline __m128 hsum16x4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1))));
    /* each 128-bit lane of u now holds partial sums of (a0, a1, a2, a3): add the four lanes */
    __m256 w = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
}

AVX512_TARGET static void scores_avx512(float *s, const float *q, const float *k, int64_t stride, int64_t n,
                                        int64_t hd, float scale) {
    const int64_t hv = hd & ~(int64_t)15;
    const __mmask16 tm = mask16(hd - hv);
    const __m128 sc = _mm_set1_ps(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) { /* four keys at a time: one joint horizontal reduction */
        const float *k0 = k + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t d = 0;
        for (; d < hv; d += 16) {
            __m512 qd = _mm512_loadu_ps(q + d);
            a0 = _mm512_fmadd_ps(qd, _mm512_loadu_ps(k0 + d), a0);
            a1 = _mm512_fmadd_ps(qd, _mm512_loadu_ps(k1 + d), a1);
            a2 = _mm512_fmadd_ps(qd, _mm512_loadu_ps(k2 + d), a2);
            a3 = _mm512_fmadd_ps(qd, _mm512_loadu_ps(k3 + d), a3);
        }
        if (d < hd) {
            __m512 qd = _mm512_maskz_loadu_ps(tm, q + d);
            a0 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(tm, k0 + d), a0);
            a1 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(tm, k1 + d), a1);
            a2 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(tm, k2 + d), a2);
            a3 = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(tm, k3 + d), a3);
        }
        _mm_storeu_ps(s + j, _mm_mul_ps(hsum16x4(a0, a1, a2, a3), sc));
    }
    for (; j < n; j++) {
        const float *kj = k + j * stride;
        __m512 a = _mm512_setzero_ps();
        int64_t d = 0;
        for (; d < hv; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(kj + d), a);
        if (d < hd) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, q + d), _mm512_maskz_loadu_ps(tm, kj + d), a);
        s[j] = _mm512_reduce_add_ps(a) * scale;
    }
}

/* exp(x) for x <= 0; scalef applies 2^n with correct underflow (to denormals, then 0), so no range mask. */
AVX512_TARGET static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f)); /* keeps n finite; exp(-150) is 0 in float anyway */
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, fx);
}

AVX512_TARGET static float exps_avx512(float *s, int64_t n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 tm = mask16(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, s + j), mv));
        _mm512_mask_storeu_ps(s + j, tm, e);
        acc = _mm512_mask_add_ps(acc, tm, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

AVX512_TARGET static void pv_avx512(float *o, const float *p, const float *v, int64_t stride, int64_t n, int64_t hd,
                                    float corr) {
    const __m512 cv = _mm512_set1_ps(corr);
    int64_t d = 0;
    for (; d + 64 <= hd; d += 64) { /* 64 columns of o in registers across all n keys */
        __m512 o0 = _mm512_mul_ps(_mm512_loadu_ps(o + d), cv), o1 = _mm512_mul_ps(_mm512_loadu_ps(o + d + 16), cv);
        __m512 o2 = _mm512_mul_ps(_mm512_loadu_ps(o + d + 32), cv);
        __m512 o3 = _mm512_mul_ps(_mm512_loadu_ps(o + d + 48), cv);
        for (int64_t j = 0; j < n; j++) {
            const float *vj = v + j * stride + d;
            __m512 pj = _mm512_set1_ps(p[j]);
            o0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), o0);
            o1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), o1);
            o2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), o2);
            o3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), o3);
        }
        _mm512_storeu_ps(o + d, o0), _mm512_storeu_ps(o + d + 16, o1);
        _mm512_storeu_ps(o + d + 32, o2), _mm512_storeu_ps(o + d + 48, o3);
    }
    for (; d < hd; d += 16) {
        __mmask16 tm = mask16(hd - d);
        __m512 o0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, o + d), cv);
        for (int64_t j = 0; j < n; j++)
            o0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(tm, v + j * stride + d), o0);
        _mm512_mask_storeu_ps(o + d, tm, o0);
    }
}

static const struct att_isa g_isa_avx512 = {scores_avx512, exps_avx512, pv_avx512};
#endif /* ATT_X86 */

/* ---------------------------------------------------------------------------------------------------------------
 * the driver
 * ------------------------------------------------------------------------------------------------------------- */

struct att_job {
    const struct att_isa *f;
    float *out;
    const float *q, *k, *v;
    int64_t n_q, n_kv, n_heads, hd, kv_stride, q_pos0, group;
    int causal;
    float scale;
    int64_t bq, n_qb;  /* queries per block, blocks */
    int64_t hsub, n_hsub; /* query heads per item, items per KV head and block */
    int64_t n_kvh, chunk;
};

/* keys visible to query i */
static int64_t n_visible(const struct att_job *J, int64_t i) {
    int64_t n = J->causal ? J->q_pos0 + i + 1 : J->n_kv;
    return n < 0 ? 0 : n > J->n_kv ? J->n_kv : n;
}

static void att_item(const struct att_job *J, int64_t item) {
    const int64_t per_qb = J->n_kvh * J->n_hsub, z = item / per_qb, rem = item % per_qb;
    const int64_t qb = z % 2 == 0 ? z / 2 : J->n_qb - 1 - z / 2; /* zig-zag: see the top comment */
    const int64_t g = rem / J->n_hsub, h0 = g * J->group + rem % J->n_hsub * J->hsub;
    const int64_t h1 = h0 + J->hsub < (g + 1) * J->group ? h0 + J->hsub : (g + 1) * J->group;
    const int64_t i0 = qb * J->bq, i1 = i0 + J->bq < J->n_q ? i0 + J->bq : J->n_q;
    const int64_t nh = h1 - h0, n_rows = (i1 - i0) * nh, hd = J->hd;
    const float *kg = J->k + g * hd, *vg = J->v + g * hd;

    float o[ATT_ROW_FLOATS], m[ATT_MAX_ROWS], l[ATT_MAX_ROWS], s[ATT_MAX_CHUNK];
    for (int64_t r = 0; r < n_rows; r++) m[r] = -INFINITY, l[r] = 0;
    for (int64_t x = 0; x < n_rows * hd; x++) o[x] = 0;
    const int64_t n_end = n_visible(J, i1 - 1); /* the last query sees the most keys */
    for (int64_t j0 = 0; j0 < n_end; j0 += J->chunk) {
        const float *kc = kg + j0 * J->kv_stride, *vc = vg + j0 * J->kv_stride;
        for (int64_t i = i0; i < i1; i++) {
            int64_t n = n_visible(J, i) - j0;
            if (n <= 0) continue;
            if (n > J->chunk) n = J->chunk;
            for (int64_t h = h0; h < h1; h++) {
                const int64_t r = (i - i0) * nh + (h - h0);
                J->f->scores(s, J->q + (i * J->n_heads + h) * hd, kc, J->kv_stride, n, hd, J->scale);
                float cm = s[0];
                for (int64_t j = 1; j < n; j++) cm = s[j] > cm ? s[j] : cm;
                float mn = cm > m[r] ? cm : m[r];
                /* the running max grows: earlier terms shrink by exp(m_old - m_new) (0 on the first chunk) */
                float corr = mn > m[r] ? expf(m[r] - mn) : 1.0f;
                m[r] = mn;
                l[r] = l[r] * corr + J->f->exps(s, n, mn);
                J->f->pv(o + r * hd, s, vc, J->kv_stride, n, hd, corr);
            }
        }
    }
    for (int64_t i = i0; i < i1; i++)
        for (int64_t h = h0; h < h1; h++) {
            const int64_t r = (i - i0) * nh + (h - h0);
            float *dst = J->out + (i * J->n_heads + h) * hd;
            if (l[r] == 0) { /* no visible key: the reference's empty sum */
                for (int64_t d = 0; d < hd; d++) dst[d] = 0;
                continue;
            }
            const float inv = 1.0f / l[r];
            for (int64_t d = 0; d < hd; d++) dst[d] = o[r * hd + d] * inv;
        }
}

static void att_range(void *ctx, int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; it++) att_item(ctx, it);
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* cpu_attention at a given ISA level (clamped to what the CPU has). Not in ops.h: a hook for
 * tests/test_attention.c, which runs every level the CPU has. */
void cpu_attention_isa(int isa, float *out, const float *q, const float *k, const float *v, int64_t n_q,
                       int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride,
                       int64_t q_pos0, int causal, float *scratch);
void cpu_attention_isa(int isa, float *out, const float *q, const float *k, const float *v, int64_t n_q,
                       int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride,
                       int64_t q_pos0, int causal, float *scratch) {
    if (n_q <= 0 || n_heads <= 0) return;
    if (hd <= 0 || hd > ATT_ROW_FLOATS || n_kv_heads <= 0 || n_heads % n_kv_heads != 0) {
        /* outside what the stack buffers hold (or a malformed shape): the reference's behaviour */
        cpu_attention_ref(out, q, k, v, n_q, n_kv_tok, n_heads, n_kv_heads, hd, kv_stride, q_pos0, causal, scratch);
        return;
    }
    struct att_job J = {.f = &g_isa_c, .out = out, .q = q, .k = k, .v = v, .n_q = n_q, .n_kv = n_kv_tok,
                        .n_heads = n_heads, .hd = hd, .kv_stride = kv_stride, .q_pos0 = q_pos0,
                        .group = n_heads / n_kv_heads, .causal = causal, .n_kvh = n_kv_heads};
    J.scale = (float)(1.0 / sqrt((double)hd)); /* as the reference */
    enum cpu_isa best = cpu_isa_detect(), lv = isa < (int)best ? (enum cpu_isa)isa : best;
#if ATT_X86
    if (lv >= CPU_ISA_AVX512) J.f = &g_isa_avx512;
    else if (lv >= CPU_ISA_AVX2) J.f = &g_isa_avx2;
#else
    (void)lv;
#endif
    J.chunk = ATT_CHUNK_FLOATS / hd;
    J.chunk = J.chunk < 16 ? 16 : J.chunk > ATT_MAX_CHUNK ? ATT_MAX_CHUNK : J.chunk;

    /* rows per item: as many as the O buffer holds (more rows share each K/V chunk) */
    int64_t max_rows = ATT_ROW_FLOATS / hd;
    if (max_rows > ATT_MAX_ROWS) max_rows = ATT_MAX_ROWS;
    J.hsub = J.group < max_rows ? J.group : max_rows;
    J.bq = max_rows / J.hsub;
    if (J.bq > n_q) J.bq = n_q;
    struct vlm_pool *pool = vlm_pool_default();
    const int64_t n_thr = pool ? vlm_pool_size(pool) : 1;
    J.n_qb = cdiv(n_q, J.bq);
    if (J.n_qb * n_kv_heads < n_thr) {
        /* too few items for the threads (decode with few KV heads, short prompts): split the query blocks first,
         * then the heads of a group; each split re-reads its K/V, but idle cores are worse */
        J.bq = cdiv(n_q, cdiv(n_thr, n_kv_heads));
        J.n_qb = cdiv(n_q, J.bq);
        int64_t want = cdiv(n_thr, J.n_qb * n_kv_heads);
        if (want > J.group) want = J.group;
        if (cdiv(J.group, want) < J.hsub) J.hsub = cdiv(J.group, want);
    }
    J.n_hsub = cdiv(J.group, J.hsub);
    const int64_t n_items = J.n_qb * n_kv_heads * J.n_hsub;
    const int64_t n_vis_avg = causal ? (n_visible(&J, 0) + n_visible(&J, n_q - 1)) / 2 + 1 : n_kv_tok;
    const int64_t work = J.bq * J.hsub * n_vis_avg * hd * 2; /* multiply-adds per item */
    vlm_pool_for(pool, n_items, work > 0 ? cdiv(ATT_MIN_WORK, work) : n_items, att_range, &J);
}

void cpu_attention(float *out, const float *q, const float *k, const float *v, int64_t n_q, int64_t n_kv_tok,
                   int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride, int64_t q_pos0, int causal,
                   float *scratch) {
    cpu_attention_isa((int)cpu_isa_current(), out, q, k, v, n_q, n_kv_tok, n_heads, n_kv_heads, hd, kv_stride, q_pos0,
                      causal, scratch);
}
