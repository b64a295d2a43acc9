/* test_qgemm_int8.c — the int8-activation kernels (kernels/cpu/qgemm_int8.c: W3G128, W4G128, W4A8) in the spirit of
 * llama.cpp's test-backend-ops / test-quantize-fns: every ISA level this CPU has against the scalar level of the same
 * arithmetic, the scalar level against the references (cpu_qlinear_a8_ref, cpu_qlinear_ref), on awkward shapes, with
 * row ranges split as two threads would, guard bands and untouched rows; NaN/Inf behaviour; and the reference
 * quantizers' round trip and exact formulas (shared/spec/mbq.md §2.1, §2.2). The ISA is passed to the kernels
 * explicitly, so each level is tested whatever cpu_isa_set says; cpu_qlinear is exercised too when it is linked. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/qgemm_internal.h"
#include "kernels/quant.h"
#include "test.h"

/* The dispatcher (kernels/cpu/qgemm.c) may not be linked into this runner: reach it weakly. */
#pragma weak cpu_qlinear
#pragma weak cpu_qctx_free

#define SENTINEL 1234.5f


/* The ISA levels this CPU has (the same test as cpu_isa_detect, via the compiler's cpuid/xgetbv runtime). */
static int isa_levels(enum cpu_isa out[3]) {
    int n = 0;
    out[n++] = CPU_ISA_SCALAR;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out[n++] = CPU_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        out[n++] = CPU_ISA_AVX512;
    return n;
}
static const char *isa_str(enum cpu_isa i) { return i == CPU_ISA_SCALAR ? "scalar" : i == CPU_ISA_AVX2 ? "avx2" : "avx512"; }

struct qm {
    void *blob;
    struct vlm_qmat m;
};

static struct qm make_mat(enum vlm_qformat f, int64_t n, int64_t k, const float *w) {
    struct vlm_qlayout L;
    struct qm q = {0};
    CHECK(vlm_qlayout(f, n, k, &L, NULL));
    q.blob = aligned_alloc(64, (L.total_bytes + 63) / 64 * 64); /* aligned_alloc wants a multiple of the alignment */
    vlm_quantize_ref(f, w, n, k, q.blob);
    CHECK(vlm_qmat_view(f, n, k, q.blob, L.total_bytes, &q.m, NULL));
    return q;
}

static void *alloc_scratch(enum vlm_qformat f, int64_t M, int64_t k, size_t *bytes) {
    *bytes = cpu_int8_scratch_bytes(f, M, k);
    CHECK(*bytes > 0 && *bytes % 64 == 0);
    void *s = aligned_alloc(64, *bytes);
    memset(s, 0x5a, *bytes);
    return s;
}

/* The row split a 2-thread dispatcher makes: a multiple of 16 near the middle. */
static int64_t split_row(int64_t n) {
    int64_t h = (n / 2 + 15) / 16 * 16;
    return h > n ? n : h;
}

/* y (M, n) through the int8 path at one ISA level: prepare in two token halves, rows in two ranges. y has a guard band
 * of 16 sentinels after M·n, checked here. */
static void run_int8(enum cpu_isa isa, float *y, const float *x, const struct vlm_qmat *w, const float *b, int64_t M) {
    size_t sb;
    void *scr = alloc_scratch(w->fmt, M, w->k, &sb);
    int64_t n = w->n, tm = M / 2, rm = split_row(n);
    for (int64_t i = 0; i < M * n + 16; i++) y[i] = SENTINEL;
    cpu_int8_prepare(isa, w->fmt, x, M, w->k, scr, tm, M);
    cpu_int8_prepare(isa, w->fmt, x, M, w->k, scr, 0, tm);
    cpu_int8_rows(isa, y, scr, w, b, M, rm, n);
    /* rows outside [rm, n) are untouched */
    bool untouched = true;
    for (int64_t t = 0; t < M; t++)
        for (int64_t r = 0; r < rm; r++) untouched &= y[t * n + r] == SENTINEL;
    if (!untouched) FAIL("%s: rows outside [%lld, %lld) written", isa_str(isa), (long long)rm, (long long)n);
    cpu_int8_rows(isa, y, scr, w, b, M, 0, rm);
    for (int i = 0; i < 16; i++)
        if (y[M * n + i] != SENTINEL) {
            FAIL("%s: guard band after y overwritten", isa_str(isa));
            break;
        }
    free(scr);
}

static const enum vlm_qformat k_fmts[3] = {VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};

/* One shape: every ISA level vs the scalar level, the scalar level vs the reference statement. */
static void check_shape(enum vlm_qformat f, int64_t n, int64_t k, int64_t M, bool bias) {
    float *w = malloc((size_t)(n * k) * sizeof(float)), *x = malloc((size_t)(M * k) * sizeof(float));
    float *b = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal() * 0.05f;
    for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal();
    for (int64_t i = 0; i < n; i++) b[i] = test_rand_normal();
    struct qm q = make_mat(f, n, k, w);
    size_t ny = (size_t)(M * n + 16);
    float *ys = malloc(ny * 4), *yv = malloc(ny * 4), *yr = malloc(ny * 4);
    run_int8(CPU_ISA_SCALAR, ys, x, &q.m, bias ? b : NULL, M);
    /* the scalar level IS the reference statement: bit-identical */
    if (f == VLM_QF_W4A8) cpu_qlinear_ref(yr, x, &q.m, bias ? b : NULL, M);
    else cpu_qlinear_a8_ref(yr, x, &q.m, bias ? b : NULL, M);
    if (memcmp(ys, yr, (size_t)(M * n) * 4) != 0)
        FAIL("%s n=%lld k=%lld M=%lld: scalar level differs from the reference", vlm_qformat_name(f), (long long)n,
             (long long)k, (long long)M);
    enum cpu_isa isas[3];
    int ni = isa_levels(isas);
    for (int i = 1; i < ni; i++) {
        run_int8(isas[i], yv, x, &q.m, bias ? b : NULL, M);
        if (f == VLM_QF_W4A8) {
            if (memcmp(yv, ys, (size_t)(M * n) * 4) != 0)
                FAIL("w4a8 %s n=%lld k=%lld M=%lld: not bit-identical to scalar", isa_str(isas[i]), (long long)n,
                     (long long)k, (long long)M);
        } else {
            double e = test_nmse(yv, ys, M * n);
            if (!(e <= 1e-10))
                FAIL("%s %s n=%lld k=%lld M=%lld: NMSE vs scalar %.3g > 1e-10", vlm_qformat_name(f), isa_str(isas[i]),
                     (long long)n, (long long)k, (long long)M, e);
        }
    }
    free(ys), free(yv), free(yr), free(q.blob), free(w), free(x), free(b);
}

TEST(int8_rows_awkward_shapes) {
    static const int64_t ks[] = {128, 384, 640, 896, 4864}, ns[] = {1, 5, 16, 17, 33, 100};
    static const int64_t Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17};
    int combo = 0;
    for (int fi = 0; fi < 3; fi++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                int64_t k = ks[ki], n = ns[ni];
                /* all M for the small shapes; a few for the big ones (the scalar reference is slow) */
                for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                    int64_t M = Ms[mi];
                    if (k * n > 100000 && M != 1 && M != 5 && M != 17) continue;
                    check_shape(k_fmts[fi], n, k, M, (combo++ & 1) != 0);
                }
            }
    for (int fi = 0; fi < 3; fi++) check_shape(k_fmts[fi], 33, 640, 200, true); /* prefill: panels × token tiles */
    for (int fi = 0; fi < 3; fi++) check_shape(k_fmts[fi], 100, 2048, 9, false); /* G = 16: one full chunk */
}

/* The AVX-512 panel GEMM (M > 12 for W3/W4, M > 4 for W4A8; smaller M take the GEMV tiles): token counts around
 * the switch and the register tile (4 tokens), several k-blocks (8 groups) with a partial last one, partial row
 * panels (32 rows) on both sides of the two-thread split, and more tokens than one pass (768). */
TEST(int8_gemm_prefill_shapes) {
    static const int64_t Ms[] = {5, 6, 7, 8, 9, 12, 13, 14, 15, 64, 100};
    int combo = 0;
    for (int fi = 0; fi < 3; fi++) {
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            check_shape(k_fmts[fi], 100, 1152, Ms[mi], (combo++ & 1) != 0); /* G = 9: k-blocks of 8 + 1 */
            check_shape(k_fmts[fi], 17, 256, Ms[mi], (combo++ & 1) != 0);
        }
        check_shape(k_fmts[fi], 48, 2176, 21, true); /* G = 17: 8 + 8 + 1 */
        check_shape(k_fmts[fi], 33, 256, 800, false); /* two token passes */
    }
}

/* Image-prompt size: M = 729 tokens × 896 × 896, every ISA level against the scalar level (the reference statements
 * are checked against the scalar level on the smaller shapes above; here they would only repeat the scalar work). */
TEST(int8_gemm_m729) {
    const int64_t n = 896, k = 896, M = 729;
    float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4), *b = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal() * 0.05f;
    for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal();
    for (int64_t i = 0; i < n; i++) b[i] = test_rand_normal();
    size_t ny = (size_t)(M * n + 16);
    float *ys = malloc(ny * 4), *yv = malloc(ny * 4);
    enum cpu_isa isas[3];
    int ni = isa_levels(isas);
    for (int fi = 0; fi < 3; fi++) {
        struct qm q = make_mat(k_fmts[fi], n, k, w);
        run_int8(CPU_ISA_SCALAR, ys, x, &q.m, b, M);
        for (int i = 1; i < ni; i++) {
            run_int8(isas[i], yv, x, &q.m, b, M);
            if (k_fmts[fi] == VLM_QF_W4A8) {
                if (memcmp(yv, ys, (size_t)(M * n) * 4) != 0)
                    FAIL("w4a8 %s M=729: not bit-identical to scalar", isa_str(isas[i]));
            } else {
                double e = test_nmse(yv, ys, M * n);
                if (!(e <= 1e-10))
                    FAIL("%s %s M=729: NMSE vs scalar %.3g > 1e-10", vlm_qformat_name(k_fmts[fi]), isa_str(isas[i]), e);
            }
        }
        free(q.blob);
    }
    free(ys), free(yv), free(w), free(x), free(b);
}

/* The A8 arithmetic against the exact reference (weights dequantized, dot products in double). Measured on this
 * data (normal x, normal weights, n 64, k 896 / 4864, M 3), gcc 12, Zen 4: NMSE W3G128 3.6e-5 .. 4.2e-5, W4G128
 * 4.3e-5 .. 5.0e-5 — the int8 activation rounding (step d = max|x|/127 per group); the tolerance is 5e-4. */
TEST(int8_a8_vs_exact_reference) {
    static const int64_t ks[] = {896, 4864};
    for (int fi = 0; fi < 2; fi++)
        for (int ki = 0; ki < 2; ki++) {
            int64_t n = 64, k = ks[ki], M = 3;
            float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4);
            for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal();
            for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal();
            struct qm q = make_mat(k_fmts[fi], n, k, w);
            float *ya = malloc((size_t)(M * n) * 4), *ye = malloc((size_t)(M * n) * 4);
            cpu_qlinear_a8_ref(ya, x, &q.m, NULL, M);
            cpu_qlinear_ref(ye, x, &q.m, NULL, M);
            double e = test_nmse(ya, ye, M * n);
            if (test_verbose()) fprintf(stderr, "  %s k=%lld: NMSE A8 vs exact %.3g\n", vlm_qformat_name(k_fmts[fi]),
                                        (long long)k, e);
            if (!(e <= 5e-4)) FAIL("%s k=%lld: NMSE %.3g > 5e-4", vlm_qformat_name(k_fmts[fi]), (long long)k, e);
            free(ya), free(ye), free(q.blob), free(w), free(x);
        }
}

/* cpu_int8_prepare writes the same bytes at every level (codes, scales, sums and the padding of the tables). */
TEST(int8_prepare_identical_across_isa) {
    enum cpu_isa isas[3];
    int ni = isa_levels(isas);
    static const int64_t ks[] = {128, 640, 4864};
    for (int fi = 0; fi < 3; fi++)
        for (int ki = 0; ki < 3; ki++) {
            int64_t k = ks[ki], M = 5;
            float *x = malloc((size_t)(M * k) * 4);
            for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal() * (i % 7 == 0 ? 30.0f : 1.0f);
            for (int64_t i = 0; i < 128; i++) x[k + i] = 0.0f;                   /* token 1: a zero group */
            for (int64_t i = 0; i < 128; i++) x[2 * k + i] = 1e-44f * (float)(i % 3); /* subnormal: d underflows */
            for (int64_t i = 0; i < 128; i++) x[3 * k + i] = (float)(i - 64) * 0.5f;  /* exact halves: ties to even */
            size_t sb;
            void *ref = alloc_scratch(k_fmts[fi], M, k, &sb);
            cpu_int8_prepare(CPU_ISA_SCALAR, k_fmts[fi], x, M, k, ref, 0, M);
            for (int i = 1; i < ni; i++) {
                void *got = alloc_scratch(k_fmts[fi], M, k, &sb);
                cpu_int8_prepare(isas[i], k_fmts[fi], x, M, k, got, 0, 2);
                cpu_int8_prepare(isas[i], k_fmts[fi], x, M, k, got, 2, M);
                if (memcmp(got, ref, sb) != 0)
                    FAIL("%s %s k=%lld: prepared scratch differs from scalar", vlm_qformat_name(k_fmts[fi]),
                         isa_str(isas[i]), (long long)k);
                free(got);
            }
            free(ref), free(x);
        }
}

/* NaN / Inf (qgemm_int8.c's top comment): a non-finite value poisons every output of its token with NaN, at every
 * level; the other tokens are unaffected (still the scalar values, W4A8 bit for bit). */
TEST(int8_nonfinite_inputs) {
    enum cpu_isa isas[3];
    int ni = isa_levels(isas);
    const int64_t n = 17, k = 640, M = 4;
    float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4);
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal();
    for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal();
    x[1 * k + 300] = INFINITY;
    x[2 * k + 5] = NAN;
    x[3 * k + 639] = -INFINITY;
    float *ys = malloc((size_t)(M * n + 16) * 4), *yv = malloc((size_t)(M * n + 16) * 4);
    for (int fi = 0; fi < 3; fi++) {
        struct qm q = make_mat(k_fmts[fi], n, k, w);
        for (int i = 0; i < ni; i++) {
            run_int8(isas[i], i == 0 ? ys : yv, x, &q.m, NULL, M);
            const float *y = i == 0 ? ys : yv;
            for (int64_t t = 0; t < M; t++)
                for (int64_t r = 0; r < n; r++) {
                    float v = y[t * n + r];
                    if (t == 0 ? !isfinite(v) : !isnan(v)) {
                        FAIL("%s %s token %lld row %lld: %g", vlm_qformat_name(k_fmts[fi]), isa_str(isas[i]),
                             (long long)t, (long long)r, v);
                        t = M;
                        break;
                    }
                }
            if (i > 0 && k_fmts[fi] == VLM_QF_W4A8) CHECK(memcmp(yv, ys, (size_t)n * 4) == 0);
            if (i > 0 && k_fmts[fi] != VLM_QF_W4A8) CHECK(test_nmse(yv, ys, n) <= 1e-10);
        }
        free(q.blob);
    }
    free(w), free(x), free(ys), free(yv);
}

/* Through the dispatcher, when it is linked: cpu_qlinear agrees with the scalar statement. */
TEST(int8_through_cpu_qlinear) {
    if (!cpu_qlinear || !cpu_qctx_free) {
        test_skip("kernels/cpu/qgemm.c (cpu_qlinear) is not linked into this runner");
        return;
    }
    const int64_t n = 100, k = 896;
    static const int64_t Ms[] = {1, 7, 200};
    for (int fi = 0; fi < 3; fi++)
        for (int mi = 0; mi < 3; mi++) {
            int64_t M = Ms[mi];
            float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4);
            for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal();
            for (int64_t i = 0; i < M * k; i++) x[i] = test_rand_normal();
            struct qm q = make_mat(k_fmts[fi], n, k, w);
            float *y = malloc((size_t)(M * n) * 4), *yr = malloc((size_t)(M * n) * 4);
            struct cpu_qctx c = {0};
            CHECK(cpu_qlinear(&c, y, x, &q.m, NULL, M) == VLM_OK);
            cpu_qlinear_a8_ref(yr, x, &q.m, NULL, M);
            if (k_fmts[fi] == VLM_QF_W4A8) CHECK(memcmp(y, yr, (size_t)(M * n) * 4) == 0);
            else CHECK(test_nmse(y, yr, M * n) <= 1e-10);
            cpu_qctx_free(&c);
            free(y), free(yr), free(q.blob), free(w), free(x);
        }
}

/* ---- reference quantizers (test-quantize-fns style) */

static float f16r(float v) { return vlm_f16_to_f32(vlm_f32_to_f16(v)); }

/* Round trip on 0.1 + 2·cos(i + offset), 4096 values: every error within s/2 of its group (W3/W4: the fp16 scale;
 * a range that is a hair above Q·s16 after fp16 rounding may clip the top code by that hair) or row (W4A8). */
TEST(int8_quant_round_trip_synthetic) {
    const int64_t n = 4, k = 1024;
    float *w = malloc(4096 * 4), *deq = malloc((size_t)k * 4);
    for (int i = 0; i < 4096; i++) w[i] = 0.1f + 2.0f * cosf((float)i + 0.5f);
    for (int fi = 0; fi < 3; fi++) {
        enum vlm_qformat f = k_fmts[fi];
        struct qm q = make_mat(f, n, k, w);
        double se = 0, maxerr = 0, maxbound = 0;
        bool ok = true;
        for (int64_t r = 0; r < n; r++) {
            vlm_dequantize_row_ref(&q.m, r, deq);
            for (int64_t g = 0; g < k / 128; g++) {
                const float *wg = w + r * k + g * 128;
                float bound;
                if (f == VLM_QF_W4A8) {
                    bound = 0.5f * ((const float *)q.m.scales)[r];
                } else {
                    float mx = wg[0], mn = wg[0];
                    for (int i = 1; i < 128; i++) mx = fmaxf(mx, wg[i]), mn = fminf(mn, wg[i]);
                    float Q = f == VLM_QF_W3G128 ? 7.0f : 15.0f;
                    float s16 = vlm_f16_to_f32(((const uint16_t *)q.m.scales)[r * (k / 128) + g]);
                    bound = 0.5f * s16 + fmaxf(0.0f, (mx - mn) - Q * s16);
                }
                bound = bound * (1.0f + 1e-6f) + 1e-6f;
                maxbound = fmax(maxbound, bound);
                for (int i = 0; i < 128; i++) {
                    double e = fabs((double)deq[g * 128 + i] - wg[i]);
                    se += e * e;
                    maxerr = fmax(maxerr, e);
                    if (e > bound) ok = false;
                }
            }
        }
        double rms = sqrt(se / 4096);
        if (test_verbose()) fprintf(stderr, "  %s: max err %.4g, rms %.4g\n", vlm_qformat_name(f), maxerr, rms);
        if (!ok) FAIL("%s: an error exceeds s/2 (max %.4g)", vlm_qformat_name(f), maxerr);
        /* uniform error in [-s/2, s/2] would give rms = 0.58·s/2; measured 0.53 (W4G128), 0.55 (W4A8), 0.59 (W3G128) */
        CHECK(rms <= 0.7 * maxbound);
        free(q.blob);
    }
    free(w), free(deq);
}

/* mbq.md §2.1 by hand on single groups: the codes, scale and zero the formulas give, read back from the blob. */
static void check_group_formula(enum vlm_qformat f, const float *wg, const char *what, int want_z) {
    const int Q = f == VLM_QF_W3G128 ? 7 : 15;
    float mx = wg[0], mn = wg[0];
    for (int i = 1; i < 128; i++) mx = fmaxf(mx, wg[i]), mn = fminf(mn, wg[i]);
    float s = fmaxf(mx - mn, 1e-5f) / (float)Q, s16 = f16r(s);
    float z = fminf(fmaxf(-rintf(mn / s16), 0.0f), (float)Q);
    struct qm q = make_mat(f, 1, 128, wg);
    CHECK(((const uint16_t *)q.m.scales)[0] == vlm_f32_to_f16(s));
    if (q.m.zeros[0] != (uint8_t)z) FAIL("%s %s: zero %d, want %g", vlm_qformat_name(f), what, q.m.zeros[0], z);
    if (want_z >= 0) CHECK_EQ(q.m.zeros[0], want_z);
    float deq[128];
    vlm_dequantize_row_ref(&q.m, 0, deq);
    for (int i = 0; i < 128; i++) {
        float code = fminf(fmaxf(rintf(wg[i] / s16) + z, 0.0f), (float)Q);
        if (deq[i] != (code - z) * s16) {
            FAIL("%s %s: column %d dequantizes to %g, want %g", vlm_qformat_name(f), what, i, deq[i], (code - z) * s16);
            break;
        }
    }
    free(q.blob);
}

TEST(int8_quant_formulas_by_hand) {
    float g[128];
    for (int fi = 0; fi < 2; fi++) {
        enum vlm_qformat f = k_fmts[fi];
        int Q = f == VLM_QF_W3G128 ? 7 : 15;
        for (int i = 0; i < 128; i++) g[i] = 1.0f + (float)i * 0.03f; /* all positive: z = 0, top codes clip */
        check_group_formula(f, g, "all-positive", 0);
        struct qm q = make_mat(f, 1, 128, g);
        float deq[128];
        vlm_dequantize_row_ref(&q.m, 0, deq);
        CHECK(deq[127] < g[127] - 0.5f); /* clipped at Q·s ≈ range, far below the largest value */
        free(q.blob);
        for (int i = 0; i < 128; i++) g[i] = -1.0f - (float)i * 0.03f; /* all negative: z clamps to Q */
        check_group_formula(f, g, "all-negative", Q);
        for (int i = 0; i < 128; i++) g[i] = 0.75f; /* constant: s = 1e-5/Q in fp16 */
        check_group_formula(f, g, "constant", -1);
        for (int i = 0; i < 128; i++) g[i] = 0.01f * (float)((i * 37) % 11 - 5);
        g[77] = 9.0f; /* one outlier dominates the range */
        check_group_formula(f, g, "outlier", -1);
    }
    /* W4A8 (mbq.md §2.2): s = max|w|/7, u = clamp(rint(w/s), −8, 7) + 8 */
    for (int i = 0; i < 128; i++) g[i] = (float)(i - 64) * 0.1f;
    struct qm q = make_mat(VLM_QF_W4A8, 1, 128, g);
    float s = 6.4f / 7.0f, deq[128];
    CHECK(((const float *)q.m.scales)[0] == s);
    vlm_dequantize_row_ref(&q.m, 0, deq);
    for (int i = 0; i < 128; i++) CHECK(deq[i] == fminf(fmaxf(rintf(g[i] / s), -8.0f), 7.0f) * s);
    free(q.blob);
}
