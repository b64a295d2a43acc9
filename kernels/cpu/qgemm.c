/* qgemm.c — cpu_qlinear: the dispatcher (ISA choice, work split over the pool, grow-only scratch) and the kernels
 * of the float formats F32, F16, BF16 and Q8R at three ISA levels (scalar C, AVX2+FMA+F16C, AVX-512). The int8
 * formats (W3G128, W4G128, W4A8) are computed by qgemm_int8.c through qgemm_internal.h.
 *
 * Promise for the float formats (qgemm.h): every product is x · ŵ with ŵ the canonical dequantized weight of
 * quant.h (F16/BF16 widened exactly, Q8R as the f32 product q · s_row); products are exact inside an FMA, and only
 * the order of the f32 summation (b is added last) differs from cpu_qlinear_ref. The scalar level accumulates in
 * double from b in index order, exactly as cpu_qlinear_ref does, so it is bit-identical to it.
 *
 * Shapes of the work:
 *   GEMV (M < QG_GEMM_MIN_M, decode): each thread owns a range of output rows; blocks of 4 rows are streamed once
 *     from memory, converted to f32 in registers and multiplied with up to 4 tokens at a time (the row block stays
 *     in L1/L2 for the next group of tokens). Several rows at once hide the FMA latency and let one x load feed
 *     4 FMAs; software prefetch runs one row block ahead (see PF_L1_BLOCK).
 *   GEMM (M >= QG_GEMM_MIN_M, prefill and vision): the (rows x tokens) plane is tiled over the threads; a strip of
 *     NR rows x KC columns is converted to f32 into a per-thread buffer laid out [kk][NR] (fits L1) and reused by
 *     an MR x NR register-blocked micro-kernel for every token of a token block (x rows are read in place, the
 *     block of MC tokens x KC columns stays in L2); the partial sums live in y between k blocks.
 * SIMD functions carry __attribute__((target)) so the library needs no -m flags; cpu_isa_detect picks at run time.
 * The build uses -ffp-contract=off, so every fused multiply-add here is an explicit FMA intrinsic. */
#include "kernels/cpu/qgemm.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm_internal.h"
#include "runtime/util.h"

#if defined(__x86_64__) || defined(__i386__)
#define QG_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define QG_X86 0
#endif

#define QG_GEMM_MIN_M 8       /* from this many tokens on, the packed GEMM beats re-streaming the row blocks */
#define QG_SINGLE_MACS 16384  /* below this many multiply-adds, waking the pool costs more than it saves */
#define QG_PREP_SINGLE 65536  /* int8 activation quantization of fewer than M*k values stays on the caller */

/* ---------------------------------------------------------------------------------------------------------------
 * ISA detection and the level cap
 * ------------------------------------------------------------------------------------------------------------- */

static enum cpu_isa g_detected;
static int g_cap = -1; /* atomic; -1: no cap set (use g_detected) */
static pthread_once_t g_detect_once = PTHREAD_ONCE_INIT;

#if QG_X86
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static void detect_once(void) {
    g_detected = CPU_ISA_SCALAR;
#if QG_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    bool fma = c >> 12 & 1, osxsave = c >> 27 & 1, avx = c >> 28 & 1, f16c = c >> 29 & 1;
    if (!osxsave || !avx) return;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return; /* the OS must save XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    bool avx2 = b >> 5 & 1, avx512f = b >> 16 & 1, avx512bw = b >> 30 & 1, avx512vl = b >> 31 & 1;
    bool vnni = c >> 11 & 1;
    if (!(avx2 && fma && f16c)) return;
    g_detected = CPU_ISA_AVX2;
    /* opmask, ZMM0-15 upper halves and ZMM16-31 state (XCR0 bits 5..7) */
    if (avx512f && avx512bw && avx512vl && vnni && (xcr0 & 0xE0) == 0xE0) g_detected = CPU_ISA_AVX512;
#endif
}

enum cpu_isa cpu_isa_detect(void) {
    pthread_once(&g_detect_once, detect_once);
    return g_detected;
}

const char *cpu_isa_name(enum cpu_isa i) {
    switch (i) {
    case CPU_ISA_SCALAR: return "scalar";
    case CPU_ISA_AVX2: return "avx2";
    case CPU_ISA_AVX512: return "avx512";
    }
    return "?";
}

enum cpu_isa cpu_isa_set(enum cpu_isa max_level) {
    enum cpu_isa best = cpu_isa_detect(), lv = max_level < best ? max_level : best;
    if ((int)lv < 0) lv = CPU_ISA_SCALAR;
    __atomic_store_n(&g_cap, (int)lv, __ATOMIC_RELAXED);
    return lv;
}

static enum cpu_isa isa_now(void) {
    enum cpu_isa best = cpu_isa_detect();
    int cap = __atomic_load_n(&g_cap, __ATOMIC_RELAXED);
    return cap >= 0 && cap < (int)best ? (enum cpu_isa)cap : best;
}

enum cpu_isa cpu_isa_current(void) { return isa_now(); }

/* ---------------------------------------------------------------------------------------------------------------
 * the job shared by the threads of one call
 * ------------------------------------------------------------------------------------------------------------- */

enum qg_mode { QG_GEMV, QG_GEMM, QG_INT8_PREP, QG_INT8_ROWS };

struct qg_job {
    enum qg_mode mode;
    enum cpu_isa isa;
    const struct vlm_qmat *w;
    const float *x, *b;
    float *y;
    int64_t M, n, k;
    int row_parts, tok_parts; /* GEMM grid: thread t owns row part t % row_parts, token part t / row_parts */
    void *scratch;            /* int8: the activation scratch; scalar: n_threads row buffers of k floats */
};

/* [*lo, *hi) = part idx of parts of [0, len), cut at multiples of align (the last part takes the remainder). */
static void split_range(int64_t len, int parts, int idx, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t chunks = (len + align - 1) / align;
    int64_t c0 = chunks * idx / parts, c1 = chunks * (idx + 1) / parts;
    *lo = c0 * align < len ? c0 * align : len;
    *hi = c1 * align < len ? c1 * align : len;
}

static size_t elem_bytes(enum vlm_qformat f) { return f == VLM_QF_F32 ? 4 : f == VLM_QF_Q8R ? 1 : 2; }

static float row_scale(const struct vlm_qmat *w, int64_t r) {
    if (w->fmt != VLM_QF_Q8R) return 1.0f;
    float s;
    memcpy(&s, (const unsigned char *)w->scales + 4 * (size_t)r, 4);
    return s;
}

static const unsigned char *row_ptr(const struct vlm_qmat *w, int64_t r) {
    return (const unsigned char *)w->codes + (size_t)r * (size_t)w->k * elem_bytes(w->fmt);
}

/* ŵ[i] of a row, one value (the tails of the SIMD paths use it too, so it must match the vector conversions) */
static inline float wval(enum vlm_qformat f, const unsigned char *row, int64_t i, float s) {
    uint16_t h;
    float v;
    switch (f) {
    case VLM_QF_F32: memcpy(&v, row + 4 * i, 4); return v;
    case VLM_QF_F16: memcpy(&h, row + 2 * i, 2); return vlm_f16_to_f32(h);
    case VLM_QF_BF16: {
        memcpy(&h, row + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&v, &u, 4);
        return v;
    }
    default: return (float)((const int8_t *)row)[i] * s;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * scalar level: double accumulation from b in index order (bit-identical to cpu_qlinear_ref)
 * ------------------------------------------------------------------------------------------------------------- */

static void rows_scalar(const struct qg_job *j, float *buf, int64_t r0, int64_t r1) {
    const int64_t k = j->k, n = j->n;
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = row_ptr(j->w, r);
        float s = row_scale(j->w, r);
        for (int64_t i = 0; i < k; i++) buf[i] = wval(j->w->fmt, row, i, s);
        for (int64_t t = 0; t < j->M; t++) {
            const float *xt = j->x + t * k;
            double acc = j->b ? (double)j->b[r] : 0.0;
            for (int64_t i = 0; i < k; i++) acc += (double)xt[i] * (double)buf[i];
            j->y[t * n + r] = (float)acc;
        }
    }
}

#if QG_X86
/* ---------------------------------------------------------------------------------------------------------------
 * AVX-512 level
 * ------------------------------------------------------------------------------------------------------------- */
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))
/* Prefetch: the rows of a block are contiguous, and the next block follows it. Prefetching the next block at the
 * pace this one is consumed (R*16*es bytes per step) gives one stream the hardware sees as linear, a block ahead;
 * with 4 rows of short k the per-row hardware streams never ramp up (measured 2x slower). A block that would not
 * fit L1 beside the current one is prefetched into L2 instead. */
#define PF_L1_BLOCK 8192 /* measured: 3.5-7 KiB blocks faster into L1, 14-28 KiB blocks into L2 */

/* 16 values of ŵ from element i of a row; m masks the lanes to load (the rest are 0) */
INLINE T512 __m512 ld16(enum vlm_qformat f, const unsigned char *row, int64_t i, __mmask16 m, __m512 s) {
    switch (f) {
    case VLM_QF_F32: return _mm512_maskz_loadu_ps(m, row + 4 * i);
    case VLM_QF_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * i));
    case VLM_QF_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row + 2 * i)), 16));
    default: return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + i))), s);
    }
}

INLINE T512 __m512 ld16_full(enum vlm_qformat f, const unsigned char *row, int64_t i, __m512 s) {
    switch (f) {
    case VLM_QF_F32: return _mm512_loadu_ps(row + 4 * i);
    case VLM_QF_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 2 * i)));
    case VLM_QF_BF16:
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 2 * i))), 16));
    default:
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + i)))),
                             s);
    }
}

/* y[t0 .. t0+T) x rows [r, r+R): R rows streamed once, T tokens per pass. */
INLINE T512 void gemv512_block(enum vlm_qformat f, const int R, const int T, const struct qg_job *j, int64_t r,
                               int64_t t0) {
    const int64_t k = j->k, n = j->n;
    const size_t es = elem_bytes(f);
    const unsigned char *rows[4];
    __m512 sc[4], acc[4][4];
#pragma GCC unroll 4
    for (int q = 0; q < R; q++) {
        rows[q] = row_ptr(j->w, r + q);
        sc[q] = _mm512_set1_ps(row_scale(j->w, r + q));
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[q][t] = _mm512_setzero_ps();
    }
    const float *xs = j->x + t0 * k;
    const unsigned char *next = rows[0] + (size_t)R * (size_t)k * es; /* the next row block, read at our pace */
    const bool pf_l1 = (size_t)R * (size_t)k * es <= PF_L1_BLOCK;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        __m512 xv[4];
#pragma GCC unroll 4
        for (int l = 0; l < (int)((R * 16 * es + 63) / 64); l++) {
            const char *pa = (const char *)next + (size_t)R * (size_t)i * es + 64 * l;
            if (pf_l1) _mm_prefetch(pa, _MM_HINT_T0);
            else _mm_prefetch(pa, _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(xs + t * k + i);
#pragma GCC unroll 4
        for (int q = 0; q < R; q++) {
            __m512 wv = ld16_full(f, rows[q], i, sc[q]);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[q][t] = _mm512_fmadd_ps(wv, xv[t], acc[q][t]);
        }
    }
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        __m512 xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = _mm512_maskz_loadu_ps(m, xs + t * k + i);
#pragma GCC unroll 4
        for (int q = 0; q < R; q++) {
            __m512 wv = ld16(f, rows[q], i, m, sc[q]);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[q][t] = _mm512_fmadd_ps(wv, xv[t], acc[q][t]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < R; q++) {
        float bias = j->b ? j->b[r + q] : 0.0f;
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) j->y[(t0 + t) * n + r + q] = _mm512_reduce_add_ps(acc[q][t]) + bias;
    }
}

#define GEMV4_CASES(F)                                                                                             \
    static T512 void gemv512##F##_r4(int T, const struct qg_job *j, int64_t r, int64_t t0) {                         \
        switch (T) {                                                                                                \
        case 1: gemv512_block(VLM_QF_##F, 4, 1, j, r, t0); break;                                                  \
        case 2: gemv512_block(VLM_QF_##F, 4, 2, j, r, t0); break;                                                  \
        case 3: gemv512_block(VLM_QF_##F, 4, 3, j, r, t0); break;                                                  \
        default: gemv512_block(VLM_QF_##F, 4, 4, j, r, t0); break;                                                 \
        }                                                                                                           \
    }                                                                                                               \
    static T512 void gemv512##F##_r1(int T, const struct qg_job *j, int64_t r, int64_t t0) {                         \
        switch (T) {                                                                                                \
        case 1: gemv512_block(VLM_QF_##F, 1, 1, j, r, t0); break;                                                  \
        case 2: gemv512_block(VLM_QF_##F, 1, 2, j, r, t0); break;                                                  \
        case 3: gemv512_block(VLM_QF_##F, 1, 3, j, r, t0); break;                                                  \
        default: gemv512_block(VLM_QF_##F, 1, 4, j, r, t0); break;                                                 \
        }                                                                                                           \
    }
GEMV4_CASES(F32)
GEMV4_CASES(F16)
GEMV4_CASES(BF16)
GEMV4_CASES(Q8R)

typedef void (*gemv_fn)(int T, const struct qg_job *j, int64_t r, int64_t t0);

/* Rows [r0, r1) for every token: 4-row blocks, then single rows; tokens in groups of tmax. */
static void gemv_rows(gemv_fn f4, gemv_fn f1, int tmax, const struct qg_job *j, int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (int64_t t = 0; t < j->M; t += tmax) f4(j->M - t < tmax ? (int)(j->M - t) : tmax, j, r, t);
    for (; r < r1; r++)
        for (int64_t t = 0; t < j->M; t += tmax) f1(j->M - t < tmax ? (int)(j->M - t) : tmax, j, r, t);
}

/* ---- AVX-512 GEMM: MR tokens x NR outputs per micro-kernel call */
#define MR512 8
#define NR512 32
#define KC512 128
#define MC_TOK 256 /* tokens per block (x block MC x KC floats stays in L2) */
#define NC_ROWS 256 /* rows per block (the y block MC x NC stays in L2 between k blocks) */

/* Converts rows [o, o+nr) x columns [k0, k0+kc) into wp[kk*NR + q] (rows beyond nr are 0). */
INLINE T512 void pack512_impl(enum vlm_qformat f, const struct vlm_qmat *w, int64_t o, int nr, int64_t k0, int kc,
                              float *wp) {
    float tmp[16] __attribute__((aligned(64)));
    for (int q = 0; q < NR512; q++) {
        if (q >= nr) {
            for (int kk = 0; kk < kc; kk++) wp[kk * NR512 + q] = 0.0f;
            continue;
        }
        const unsigned char *row = row_ptr(w, o + q);
        __m512 s = _mm512_set1_ps(row_scale(w, o + q));
        for (int kk = 0; kk < kc; kk += 16) {
            int c = kc - kk < 16 ? kc - kk : 16;
            __mmask16 m = (__mmask16)(c == 16 ? 0xFFFF : (1u << c) - 1);
            _mm512_store_ps(tmp, ld16(f, row, k0 + kk, m, s));
            for (int e = 0; e < c; e++) wp[(kk + e) * NR512 + q] = tmp[e];
        }
    }
}

static T512 void pack512(enum vlm_qformat f, const struct vlm_qmat *w, int64_t o, int nr, int64_t k0, int kc,
                         float *wp) {
    switch (f) {
    case VLM_QF_F32: pack512_impl(VLM_QF_F32, w, o, nr, k0, kc, wp); break;
    case VLM_QF_F16: pack512_impl(VLM_QF_F16, w, o, nr, k0, kc, wp); break;
    case VLM_QF_BF16: pack512_impl(VLM_QF_BF16, w, o, nr, k0, kc, wp); break;
    default: pack512_impl(VLM_QF_Q8R, w, o, nr, k0, kc, wp); break;
    }
}

/* c (MR x NR, row stride ldc) (+)= x rows · wp; bias (NR) added at the end when non-NULL. */
static T512 void ukern512(const float *const xr_in[MR512], const float *wp, int kc, float *c, int64_t ldc,
                          bool load_c, const float *bias) {
    __m512 acc[MR512][2];
    const float *xr[MR512];
#pragma GCC unroll 8
    for (int t = 0; t < MR512; t++) {
        xr[t] = xr_in[t];
        acc[t][0] = load_c ? _mm512_loadu_ps(c + t * ldc) : _mm512_setzero_ps();
        acc[t][1] = load_c ? _mm512_loadu_ps(c + t * ldc + 16) : _mm512_setzero_ps();
    }
    for (int kk = 0; kk < kc; kk++) {
        __m512 w0 = _mm512_load_ps(wp + kk * NR512), w1 = _mm512_load_ps(wp + kk * NR512 + 16);
#pragma GCC unroll 8
        for (int t = 0; t < MR512; t++) {
            __m512 xb = _mm512_set1_ps(xr[t][kk]);
            acc[t][0] = _mm512_fmadd_ps(w0, xb, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, xb, acc[t][1]);
        }
    }
    if (bias) {
        __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
#pragma GCC unroll 8
        for (int t = 0; t < MR512; t++) {
            acc[t][0] = _mm512_add_ps(acc[t][0], b0);
            acc[t][1] = _mm512_add_ps(acc[t][1], b1);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MR512; t++) {
        _mm512_storeu_ps(c + t * ldc, acc[t][0]);
        _mm512_storeu_ps(c + t * ldc + 16, acc[t][1]);
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * AVX2 level
 * ------------------------------------------------------------------------------------------------------------- */

INLINE T256 __m256 ld8_full(enum vlm_qformat f, const unsigned char *row, int64_t i, __m256 s) {
    switch (f) {
    case VLM_QF_F32: return _mm256_loadu_ps((const float *)(row + 4 * i));
    case VLM_QF_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * i)));
    case VLM_QF_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 2 * i))), 16));
    default:
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + i)))), s);
    }
}

/* c values (c < 8) of ŵ from element i, the rest 0: through a zero-padded copy (AVX2 has no masked 16-bit loads) */
INLINE T256 __m256 ld8_part(enum vlm_qformat f, const unsigned char *row, int64_t i, int c, __m256 s) {
    unsigned char buf[32] __attribute__((aligned(32))) = {0};
    size_t es = elem_bytes(f);
    memcpy(buf, row + (size_t)i * es, (size_t)c * es);
    return ld8_full(f, buf, 0, s);
}

INLINE T256 __m256 ldx8_part(const float *x, int c) {
    float buf[8] __attribute__((aligned(32))) = {0};
    memcpy(buf, x, (size_t)c * sizeof(float));
    return _mm256_load_ps(buf);
}

INLINE T256 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* AVX2 has 16 registers: up to 4 rows x 2 tokens of accumulators */
INLINE T256 void gemv256_block(enum vlm_qformat f, const int R, const int T, const struct qg_job *j, int64_t r,
                               int64_t t0) {
    const int64_t k = j->k, n = j->n;
    const size_t es = elem_bytes(f);
    const unsigned char *rows[4];
    __m256 sc[4], acc[4][2];
#pragma GCC unroll 4
    for (int q = 0; q < R; q++) {
        rows[q] = row_ptr(j->w, r + q);
        sc[q] = _mm256_set1_ps(row_scale(j->w, r + q));
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[q][t] = _mm256_setzero_ps();
    }
    const float *xs = j->x + t0 * k;
    const unsigned char *next = rows[0] + (size_t)R * (size_t)k * es;
    const bool pf_l1 = (size_t)R * (size_t)k * es <= PF_L1_BLOCK;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv[2];
#pragma GCC unroll 4
        for (int l = 0; l < (int)((R * 8 * es + 63) / 64); l++) {
            const char *pa = (const char *)next + (size_t)R * (size_t)i * es + 64 * l;
            if (pf_l1) _mm_prefetch(pa, _MM_HINT_T0);
            else _mm_prefetch(pa, _MM_HINT_T1);
        }
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(xs + t * k + i);
#pragma GCC unroll 4
        for (int q = 0; q < R; q++) {
            __m256 wv = ld8_full(f, rows[q], i, sc[q]);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) acc[q][t] = _mm256_fmadd_ps(wv, xv[t], acc[q][t]);
        }
    }
    if (i < k) {
        int c = (int)(k - i);
        __m256 xv[2];
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) xv[t] = ldx8_part(xs + t * k + i, c);
#pragma GCC unroll 4
        for (int q = 0; q < R; q++) {
            __m256 wv = ld8_part(f, rows[q], i, c, sc[q]);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) acc[q][t] = _mm256_fmadd_ps(wv, xv[t], acc[q][t]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < R; q++) {
        float bias = j->b ? j->b[r + q] : 0.0f;
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) j->y[(t0 + t) * n + r + q] = hsum256(acc[q][t]) + bias;
    }
}

#define GEMV2_CASES(F)                                                                                             \
    static T256 void gemv256##F##_r4(int T, const struct qg_job *j, int64_t r, int64_t t0) {                         \
        if (T == 1) gemv256_block(VLM_QF_##F, 4, 1, j, r, t0);                                                     \
        else gemv256_block(VLM_QF_##F, 4, 2, j, r, t0);                                                            \
    }                                                                                                               \
    static T256 void gemv256##F##_r1(int T, const struct qg_job *j, int64_t r, int64_t t0) {                         \
        if (T == 1) gemv256_block(VLM_QF_##F, 1, 1, j, r, t0);                                                     \
        else gemv256_block(VLM_QF_##F, 1, 2, j, r, t0);                                                            \
    }
GEMV2_CASES(F32)
GEMV2_CASES(F16)
GEMV2_CASES(BF16)
GEMV2_CASES(Q8R)

/* ---- AVX2 GEMM: 6 tokens x 16 outputs (12 accumulators + 2 weights + 1 broadcast = 15 of 16 registers) */
#define MR256 6
#define NR256 16
#define KC256 256

INLINE T256 void pack256_impl(enum vlm_qformat f, const struct vlm_qmat *w, int64_t o, int nr, int64_t k0, int kc,
                              float *wp) {
    float tmp[8] __attribute__((aligned(32)));
    for (int q = 0; q < NR256; q++) {
        if (q >= nr) {
            for (int kk = 0; kk < kc; kk++) wp[kk * NR256 + q] = 0.0f;
            continue;
        }
        const unsigned char *row = row_ptr(w, o + q);
        __m256 s = _mm256_set1_ps(row_scale(w, o + q));
        for (int kk = 0; kk < kc; kk += 8) {
            int c = kc - kk < 8 ? kc - kk : 8;
            _mm256_store_ps(tmp, c == 8 ? ld8_full(f, row, k0 + kk, s) : ld8_part(f, row, k0 + kk, c, s));
            for (int e = 0; e < c; e++) wp[(kk + e) * NR256 + q] = tmp[e];
        }
    }
}

static T256 void pack256(enum vlm_qformat f, const struct vlm_qmat *w, int64_t o, int nr, int64_t k0, int kc,
                         float *wp) {
    switch (f) {
    case VLM_QF_F32: pack256_impl(VLM_QF_F32, w, o, nr, k0, kc, wp); break;
    case VLM_QF_F16: pack256_impl(VLM_QF_F16, w, o, nr, k0, kc, wp); break;
    case VLM_QF_BF16: pack256_impl(VLM_QF_BF16, w, o, nr, k0, kc, wp); break;
    default: pack256_impl(VLM_QF_Q8R, w, o, nr, k0, kc, wp); break;
    }
}

static T256 void ukern256(const float *const xr_in[MR256], const float *wp, int kc, float *c, int64_t ldc,
                          bool load_c, const float *bias) {
    __m256 acc[MR256][2];
    const float *xr[MR256];
#pragma GCC unroll 6
    for (int t = 0; t < MR256; t++) {
        xr[t] = xr_in[t];
        acc[t][0] = load_c ? _mm256_loadu_ps(c + t * ldc) : _mm256_setzero_ps();
        acc[t][1] = load_c ? _mm256_loadu_ps(c + t * ldc + 8) : _mm256_setzero_ps();
    }
    for (int kk = 0; kk < kc; kk++) {
        __m256 w0 = _mm256_load_ps(wp + kk * NR256), w1 = _mm256_load_ps(wp + kk * NR256 + 8);
#pragma GCC unroll 6
        for (int t = 0; t < MR256; t++) {
            __m256 xb = _mm256_broadcast_ss(xr[t] + kk);
            acc[t][0] = _mm256_fmadd_ps(w0, xb, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(w1, xb, acc[t][1]);
        }
    }
    if (bias) {
        __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
#pragma GCC unroll 6
        for (int t = 0; t < MR256; t++) {
            acc[t][0] = _mm256_add_ps(acc[t][0], b0);
            acc[t][1] = _mm256_add_ps(acc[t][1], b1);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < MR256; t++) {
        _mm256_storeu_ps(c + t * ldc, acc[t][0]);
        _mm256_storeu_ps(c + t * ldc + 8, acc[t][1]);
    }
}
#endif /* QG_X86 */

/* ---------------------------------------------------------------------------------------------------------------
 * the GEMM driver (one ISA-independent loop nest over the micro-kernel of the level)
 * ------------------------------------------------------------------------------------------------------------- */

typedef void (*pack_fn)(enum vlm_qformat f, const struct vlm_qmat *w, int64_t o, int nr, int64_t k0, int kc,
                        float *wp);
typedef void (*ukern_fn)(const float *const xr[], const float *wp, int kc, float *c, int64_t ldc, bool load_c,
                         const float *bias);

#define MR_MAX 8
#define NR_MAX 32
#define WP_FLOATS (128 * 32) /* KC x NR of either level: 128 x 32 (AVX-512) or 256 x 16 (AVX2) */

static void gemm_tile(const struct qg_job *j, int MR, int NR, int KC, pack_fn pack, ukern_fn uk, int64_t r0,
                      int64_t r1, int64_t t0, int64_t t1) {
    const int64_t k = j->k, n = j->n;
    float wp[WP_FLOATS] __attribute__((aligned(64)));
    float tile[MR_MAX * NR_MAX] __attribute__((aligned(64)));
    float bpad[NR_MAX] __attribute__((aligned(64)));
    const float *xr[MR_MAX];
    for (int64_t tb = t0; tb < t1; tb += MC_TOK) {
        int64_t tbe = tb + MC_TOK < t1 ? tb + MC_TOK : t1;
        for (int64_t ob = r0; ob < r1; ob += NC_ROWS) {
            int64_t obe = ob + NC_ROWS < r1 ? ob + NC_ROWS : r1;
            for (int64_t k0 = 0; k0 < k; k0 += KC) {
                int kc = k - k0 < KC ? (int)(k - k0) : KC;
                bool first = k0 == 0, last = k0 + kc == k;
                for (int64_t o = ob; o < obe; o += NR) {
                    int nr = obe - o < NR ? (int)(obe - o) : NR;
                    pack(j->w->fmt, j->w, o, nr, k0, kc, wp);
                    const float *bias = NULL;
                    if (last && j->b) {
                        if (nr == NR) bias = j->b + o;
                        else {
                            memset(bpad, 0, sizeof bpad);
                            memcpy(bpad, j->b + o, (size_t)nr * sizeof(float));
                            bias = bpad;
                        }
                    }
                    for (int64_t t = tb; t < tbe; t += MR) {
                        int mr = tbe - t < MR ? (int)(tbe - t) : MR;
                        /* rows past the block repeat its last token; their results are dropped */
                        for (int e = 0; e < MR; e++) xr[e] = j->x + (t + (e < mr ? e : mr - 1)) * k + k0;
                        float *c = j->y + t * n + o;
                        if (mr == MR && nr == NR) {
                            uk(xr, wp, kc, c, n, !first, bias);
                            continue;
                        }
                        if (!first)
                            for (int e = 0; e < mr; e++) memcpy(tile + e * NR, c + e * n, (size_t)nr * sizeof(float));
                        uk(xr, wp, kc, tile, NR, !first, bias);
                        for (int e = 0; e < mr; e++) memcpy(c + e * n, tile + e * NR, (size_t)nr * sizeof(float));
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * per-thread entry points
 * ------------------------------------------------------------------------------------------------------------- */

static void float_rows(const struct qg_job *j, int64_t r0, int64_t r1, int64_t t0, int64_t t1, int thread) {
    if (r0 >= r1 || t0 >= t1) return;
#if QG_X86
    if (j->isa == CPU_ISA_AVX512 && j->mode == QG_GEMM) {
        gemm_tile(j, MR512, NR512, KC512, pack512, ukern512, r0, r1, t0, t1);
        return;
    }
    if (j->isa == CPU_ISA_AVX2 && j->mode == QG_GEMM) {
        gemm_tile(j, MR256, NR256, KC256, pack256, ukern256, r0, r1, t0, t1);
        return;
    }
    if (j->isa == CPU_ISA_AVX512) {
        switch (j->w->fmt) {
        case VLM_QF_F32: gemv_rows(gemv512F32_r4, gemv512F32_r1, 4, j, r0, r1); return;
        case VLM_QF_F16: gemv_rows(gemv512F16_r4, gemv512F16_r1, 4, j, r0, r1); return;
        case VLM_QF_BF16: gemv_rows(gemv512BF16_r4, gemv512BF16_r1, 4, j, r0, r1); return;
        default: gemv_rows(gemv512Q8R_r4, gemv512Q8R_r1, 4, j, r0, r1); return;
        }
    }
    if (j->isa == CPU_ISA_AVX2) {
        switch (j->w->fmt) {
        case VLM_QF_F32: gemv_rows(gemv256F32_r4, gemv256F32_r1, 2, j, r0, r1); return;
        case VLM_QF_F16: gemv_rows(gemv256F16_r4, gemv256F16_r1, 2, j, r0, r1); return;
        case VLM_QF_BF16: gemv_rows(gemv256BF16_r4, gemv256BF16_r1, 2, j, r0, r1); return;
        default: gemv_rows(gemv256Q8R_r4, gemv256Q8R_r1, 2, j, r0, r1); return;
        }
    }
#endif
    /* the scalar level splits rows only (tok_parts == 1) */
    rows_scalar(j, (float *)j->scratch + (size_t)thread * (size_t)((j->k + 15) & ~(int64_t)15), r0, r1);
}

static void qg_thread(void *ctx, int t, int nt) {
    const struct qg_job *j = ctx;
    int64_t r0, r1, t0, t1;
    switch (j->mode) {
    case QG_GEMV:
        split_range(j->n, nt, t, 16, &r0, &r1);
        float_rows(j, r0, r1, 0, j->M, t);
        return;
    case QG_GEMM: {
        if (t >= j->row_parts * j->tok_parts) return;
        split_range(j->n, j->row_parts, t % j->row_parts, 32, &r0, &r1);
        split_range(j->M, j->tok_parts, t / j->row_parts, 8, &t0, &t1);
        float_rows(j, r0, r1, t0, t1, t);
        return;
    }
    case QG_INT8_PREP:
        split_range(j->M, nt, t, 1, &t0, &t1);
        if (t0 < t1) cpu_int8_prepare(j->isa, j->w->fmt, j->x, j->M, j->k, j->scratch, t0, t1);
        return;
    case QG_INT8_ROWS:
        split_range(j->n, nt, t, 16, &r0, &r1);
        if (r0 < r1) cpu_int8_rows(j->isa, j->y, j->scratch, j->w, j->b, j->M, r0, r1);
        return;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * the dispatcher
 * ------------------------------------------------------------------------------------------------------------- */

void cpu_qctx_free(struct cpu_qctx *c) {
    if (!c) return;
    free(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
}

static enum vlm_status grow_scratch(struct cpu_qctx *c, size_t need) {
    if (need <= c->scratch_bytes) return VLM_OK;
    size_t bytes = (need + 63) & ~(size_t)63;
    if (bytes < need) bytes = 0;
    void *p = bytes ? aligned_alloc(64, bytes) : NULL;
    if (!p) {
        vlm_log_error("cpu_qlinear: out of memory growing the scratch to %zu bytes", need);
        return VLM_ERR_OOM;
    }
    free(c->scratch); /* the contents are per call: nothing to keep */
    c->scratch = p;
    c->scratch_bytes = bytes;
    return VLM_OK;
}

static void run(struct vlm_pool *pool, bool single, struct qg_job *j) {
    if (single || !pool) qg_thread(j, 0, 1);
    else vlm_pool_run(pool, qg_thread, j);
}

enum vlm_status cpu_qlinear(struct cpu_qctx *c, float *y, const float *x, const struct vlm_qmat *w, const float *b,
                            int64_t M) {
    VLM_ASSERT(c && w);
    if (M <= 0) return VLM_OK;
    struct qg_job j = {.isa = isa_now(), .w = w, .x = x, .b = b, .y = y, .M = M, .n = w->n, .k = w->k};
    struct vlm_pool *pool = c->pool;
    int nt = vlm_pool_size(pool);
    double macs = (double)M * (double)w->n * (double)w->k;
    bool single = nt == 1 || macs < QG_SINGLE_MACS;
    if (single) nt = 1;

    if (w->fmt == VLM_QF_W3G128 || w->fmt == VLM_QF_W4G128 || w->fmt == VLM_QF_W4A8) {
        size_t need = cpu_int8_scratch_bytes(w->fmt, M, w->k);
        if (need == 0) {
            vlm_log_error("cpu_qlinear: activation scratch size for %lld x %lld overflows", (long long)M,
                          (long long)w->k);
            return VLM_ERR_OOM;
        }
        enum vlm_status st = grow_scratch(c, need);
        if (st != VLM_OK) return st;
        j.scratch = c->scratch;
        j.mode = QG_INT8_PREP;
        run(pool, single || (double)M * (double)w->k < QG_PREP_SINGLE, &j);
        j.mode = QG_INT8_ROWS;
        run(pool, single, &j);
        return VLM_OK;
    }

    j.mode = M < QG_GEMM_MIN_M || j.isa == CPU_ISA_SCALAR ? QG_GEMV : QG_GEMM;
    if (j.isa == CPU_ISA_SCALAR) {
        size_t stride = (size_t)((w->k + 15) & ~(int64_t)15), need;
        if (!vlm_size_mul(stride * sizeof(float), (size_t)nt, &need)) need = SIZE_MAX;
        enum vlm_status st = grow_scratch(c, need);
        if (st != VLM_OK) return st;
        j.scratch = c->scratch;
    }
    if (j.mode == QG_GEMM) {
        /* rows first (each thread then converts only its own weights); tokens too when rows are too few */
        int64_t row_chunks = (w->n + 31) / 32;
        j.row_parts = row_chunks >= nt ? nt : (int)row_chunks;
        j.tok_parts = nt / j.row_parts;
        int64_t tok_chunks = (M + 7) / 8;
        if (j.tok_parts > tok_chunks) j.tok_parts = (int)tok_chunks;
    }
    run(pool, single, &j);
    return VLM_OK;
}
