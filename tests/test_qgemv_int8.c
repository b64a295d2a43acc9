/* test_qgemv_int8.c — the AVX-512 VNNI decode GEMV (kernels/cpu/qgemv_int8.c) for M = 1..4 tokens: W3G128 / W4G128
 * against cpu_qlinear_a8_ref (NMSE <= 1e-10: the integer sums are exact, only the f32 summation order differs), W4A8
 * bit-identical to cpu_qlinear_ref; over k in {128, 384, 640, 896, 3584}, n in {1, 5, 16, 17, 33, 100}, row ranges
 * split as a 2-thread dispatcher splits them (multiples of 16 except at n), bias on and off; a guard band after y
 * and the rows outside [r0, r1) must stay untouched. Skipped on CPUs without AVX-512 VNNI. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/qgemm_internal.h"
#include "kernels/cpu/qgemv_int8.h"
#include "kernels/quant.h"
#include "test.h"

#define SENTINEL 1234.5f

static uint64_t g_rng = 0x243f6a8885a308d3ull; /* this file's own stream (test.h) */


/* The row split a 2-thread dispatcher makes: a multiple of 16 near the middle. */
static int64_t split_row(int64_t n) {
    int64_t h = (n / 2 + 15) / 16 * 16;
    return h > n ? n : h;
}

/* One (format, n, k, M, bias) case. x has a few awkward groups: all zero (d = 0) and large values (shift the zero
 * point term's magnitude), so the −z·Σa fold is exercised with Σa far from 0. */
static void check_case(enum vlm_qformat f, int64_t n, int64_t k, int64_t M, bool bias) {
    float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4), *b = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rng_normal(&g_rng) * 0.05f + (i % 5 == 0 ? 0.03f : 0.0f);
    for (int64_t i = 0; i < M * k; i++) x[i] = test_rng_normal(&g_rng) + (i % 3 == 0 ? 1.5f : 0.0f);
    if (k >= 256)
        for (int64_t i = 0; i < 128; i++) x[128 + i] = 0.0f; /* token 0, group 1: all zero */
    for (int64_t i = 0; i < n; i++) b[i] = test_rng_normal(&g_rng);
    struct vlm_qlayout QL;
    CHECK(vlm_qlayout(f, n, k, &QL, NULL));
    void *blob = aligned_alloc(64, (QL.total_bytes + 63) / 64 * 64);
    vlm_quantize_ref(f, w, n, k, blob);
    struct vlm_qmat q;
    CHECK(vlm_qmat_view(f, n, k, blob, QL.total_bytes, &q, NULL));

    size_t sb = cpu_int8_scratch_bytes(f, M, k);
    CHECK(sb > 0 && sb % 64 == 0);
    void *scr = aligned_alloc(64, sb);
    memset(scr, 0x5a, sb);
    cpu_int8_prepare(CPU_ISA_AVX512, f, x, M, k, scr, 0, M);

    size_t ny = (size_t)(M * n + 16);
    float *y = malloc(ny * 4), *yr = malloc(ny * 4);
    for (size_t i = 0; i < ny; i++) y[i] = SENTINEL;
    const float *bp = bias ? b : NULL;
    int64_t rm = split_row(n);
    cpu_int8_gemv_avx512(y, scr, &q, bp, M, rm, n);
    bool untouched = true;
    for (int64_t t = 0; t < M; t++)
        for (int64_t r = 0; r < rm; r++) untouched &= y[t * n + r] == SENTINEL;
    if (!untouched) FAIL("%s n=%lld k=%lld M=%lld: rows outside [%lld, %lld) written", vlm_qformat_name(f),
                         (long long)n, (long long)k, (long long)M, (long long)rm, (long long)n);
    cpu_int8_gemv_avx512(y, scr, &q, bp, M, 0, rm);
    cpu_int8_gemv_avx512(y, scr, &q, bp, M, rm, rm); /* an empty range writes nothing */
    for (int i = 0; i < 16; i++)
        if (y[M * n + i] != SENTINEL) {
            FAIL("%s n=%lld k=%lld M=%lld: guard band after y overwritten", vlm_qformat_name(f), (long long)n,
                 (long long)k, (long long)M);
            break;
        }

    if (f == VLM_QF_W4A8) {
        cpu_qlinear_ref(yr, x, &q, bp, M);
        if (memcmp(y, yr, (size_t)(M * n) * 4) != 0)
            FAIL("w4a8 n=%lld k=%lld M=%lld bias=%d: not bit-identical to cpu_qlinear_ref", (long long)n, (long long)k,
                 (long long)M, bias);
    } else {
        cpu_qlinear_a8_ref(yr, x, &q, bp, M);
        double e = test_nmse(y, yr, M * n);
        if (!(e <= 1e-10))
            FAIL("%s n=%lld k=%lld M=%lld bias=%d: NMSE vs cpu_qlinear_a8_ref %.3g > 1e-10", vlm_qformat_name(f),
                 (long long)n, (long long)k, (long long)M, bias, e);
    }
    /* and the same bytes as the current AVX-512 rows kernel for W4A8 (both claim bit-identity to the reference) */
    if (f == VLM_QF_W4A8) {
        for (size_t i = 0; i < ny; i++) yr[i] = SENTINEL;
        cpu_int8_rows(CPU_ISA_AVX512, yr, scr, &q, bp, M, 0, n);
        if (memcmp(y, yr, (size_t)(M * n) * 4) != 0)
            FAIL("w4a8 n=%lld k=%lld M=%lld: differs from cpu_int8_rows", (long long)n, (long long)k, (long long)M);
    }
    free(y), free(yr), free(scr), free(blob), free(w), free(x), free(b);
}

TEST(qgemv_int8_vs_reference) {
    if (cpu_isa_detect() < CPU_ISA_AVX512) {
        test_skip("no AVX-512 VNNI on this CPU");
        return;
    }
    static const enum vlm_qformat fmts[] = {VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};
    static const int64_t ks[] = {128, 384, 640, 896, 3584}, ns[] = {1, 5, 16, 17, 33, 100};
    int combo = 0;
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
                for (int64_t M = 1; M <= 4; M++) {
                    check_case(fmts[fi], ns[ni], ks[ki], M, (combo & 1) != 0);
                    check_case(fmts[fi], ns[ni], ks[ki], M, (combo++ & 1) == 0);
                }
}

/* Non-finite activations poison exactly their token (d = NaN), as cpu_int8_rows does; other tokens stay finite. */
TEST(qgemv_int8_nonfinite_token) {
    if (cpu_isa_detect() < CPU_ISA_AVX512) {
        test_skip("no AVX-512 VNNI on this CPU");
        return;
    }
    static const enum vlm_qformat fmts[] = {VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};
    const int64_t n = 40, k = 640, M = 3;
    for (size_t fi = 0; fi < 3; fi++) {
        enum vlm_qformat f = fmts[fi];
        float *w = malloc((size_t)(n * k) * 4), *x = malloc((size_t)(M * k) * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = test_rng_normal(&g_rng);
        for (int64_t i = 0; i < M * k; i++) x[i] = test_rng_normal(&g_rng);
        x[1 * k + 300] = INFINITY;
        struct vlm_qlayout QL;
        CHECK(vlm_qlayout(f, n, k, &QL, NULL));
        void *blob = aligned_alloc(64, (QL.total_bytes + 63) / 64 * 64);
        vlm_quantize_ref(f, w, n, k, blob);
        struct vlm_qmat q;
        CHECK(vlm_qmat_view(f, n, k, blob, QL.total_bytes, &q, NULL));
        size_t sb = cpu_int8_scratch_bytes(f, M, k);
        void *scr = aligned_alloc(64, sb);
        cpu_int8_prepare(CPU_ISA_AVX512, f, x, M, k, scr, 0, M);
        float y[3 * 40], yr[3 * 40];
        cpu_int8_gemv_avx512(y, scr, &q, NULL, M, 0, n);
        cpu_int8_rows(CPU_ISA_AVX512, yr, scr, &q, NULL, M, 0, n);
        for (int64_t i = 0; i < M * n; i++) {
            bool want_nan = i / n == 1;
            if ((isnan(y[i]) != 0) != want_nan || (isnan(yr[i]) != 0) != want_nan) {
                FAIL("%s: output %lld: NaN %d / rows kernel NaN %d, want %d", vlm_qformat_name(f), (long long)i,
                     isnan(y[i]) != 0, isnan(yr[i]) != 0, want_nan);
                break;
            }
        }
        free(scr), free(blob), free(w), free(x);
    }
}
