/* test_qgemm.c — the thread pool (kernels/cpu/pool.c) and the fast linear cpu_qlinear (kernels/cpu/qgemm.c) against
 * the reference cpu_qlinear_ref, in the spirit of llama.cpp's test-backend-ops: every float format at every ISA
 * level this CPU has (capped with cpu_isa_set), awkward shapes (k and n not multiples of any vector width, M on
 * both sides of the GEMV/GEMM switch and of every tile size), with and without bias, on 1 and 2 threads; NaN/Inf
 * classes must match; a guard band after y must stay untouched. One end-to-end test runs the int8 formats through
 * the dispatcher (their kernels have their own tests in test_qgemm_int8.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "test.h"

/* F32/F16/BF16/Q8R: the products are exact (FMA) with the same canonical ŵ as the reference; only the summation
 * order differs (f32 partial sums in vector lanes vs one double sum). For k <= 960 random inputs the relative
 * error of each output is ~ sqrt(k) * 2^-24 ~ 2e-6 at worst-case cancellation of a few outputs, so the NMSE is
 * ~1e-12; 1e-10 leaves margin and still catches any wrong weight or dropped term (those give NMSE >= ~1e-4). */
#define TOL_QGEMM_FLOAT_NMSE 1e-10
/* The scalar level accumulates in double in index order, exactly like cpu_qlinear_ref: bit-identical. */
#define TOL_QGEMM_SCALAR_NMSE 0.0
/* W3G128/W4G128 vs cpu_qlinear_a8_ref: integer inner sums are exact, only the f32 order of the per-group terms
 * differs (qgemm.h). W4A8 is integer end to end: exact. */
#define TOL_QGEMM_A8_NMSE 1e-10

#define GUARD 64
static const uint32_t k_sentinel = 0x7fc0dead; /* a quiet NaN with a payload no kernel produces */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int fclass(float v) { return isnan(v) ? 1 : isinf(v) ? (v > 0 ? 2 : 3) : 0; }

/* y: M*n + GUARD floats, all set to the sentinel */
static float *alloc_y(int64_t count) {
    float *y = malloc((size_t)(count + GUARD) * sizeof(float));
    for (int64_t i = 0; i < count + GUARD; i++) memcpy(&y[i], &k_sentinel, 4);
    return y;
}

/* NMSE over entries finite in ref; false (with a message) on a class mismatch, a touched guard or NMSE > tol */
static bool compare(const char *what, const float *got, const float *ref, int64_t count, double tol) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < count; i++) {
        if (fclass(got[i]) != fclass(ref[i])) {
            FAIL("%s: class of y[%lld] differs: got %g, want %g", what, (long long)i, got[i], ref[i]);
            return false;
        }
        if (fclass(ref[i]) != 0) continue;
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    for (int64_t i = count; i < count + GUARD; i++) {
        uint32_t u;
        memcpy(&u, &got[i], 4);
        if (u != k_sentinel) {
            FAIL("%s: guard element %lld after y was written", what, (long long)(i - count));
            return false;
        }
    }
    double nmse = den > 0 ? num / den : num;
    if (nmse > tol) {
        FAIL("%s: NMSE %.3g > %.3g", what, nmse, tol);
        return false;
    }
    return true;
}

struct qblob {
    void *blob;
    struct vlm_qmat m;
};

static bool make_qmat(enum vlm_qformat f, int64_t n, int64_t k, struct qblob *out) {
    struct vlm_qlayout L;
    const char *why = NULL;
    if (!CHECK(vlm_qlayout(f, n, k, &L, &why))) return false;
    float *w = malloc((size_t)(n * k) * sizeof(float));
    for (int64_t i = 0; i < n * k; i++) w[i] = frand();
    out->blob = aligned_alloc(VLM_QALIGN, (L.total_bytes + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN);
    vlm_quantize_ref(f, w, n, k, out->blob);
    free(w);
    return CHECK(vlm_qmat_view(f, n, k, out->blob, L.total_bytes, &out->m, &why));
}

/* ---------------------------------------------------------------------------------------------------------------
 * pool
 * ------------------------------------------------------------------------------------------------------------- */

struct pool_probe {
    int calls[8];
    int bad_n;
    int expect_n;
};

static void probe_fn(void *ctx, int t, int n) {
    struct pool_probe *p = ctx;
    if (n != p->expect_n || t < 0 || t >= n) __atomic_add_fetch(&p->bad_n, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&p->calls[t], 1, __ATOMIC_RELAXED);
}

TEST(qgemm_pool_every_thread_once) {
    for (int size = 1; size <= 4; size++) {
        struct vlm_pool *p = vlm_pool_init(size);
        if (!CHECK(p != NULL)) return;
        CHECK_EQ(vlm_pool_size(p), size);
        struct pool_probe pr = {.expect_n = size};
        for (int run = 1; run <= 200; run++) {
            vlm_pool_run(p, probe_fn, &pr);
            for (int t = 0; t < size; t++)
                if (pr.calls[t] != run) {
                    FAIL("pool of %d, run %d: thread %d called %d times", size, run, t, pr.calls[t]);
                    vlm_pool_free(p);
                    return;
                }
            /* a pause now and then lets the workers fall asleep, so both hand-off paths run */
            if (run % 50 == 0) {
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        }
        CHECK_EQ(pr.bad_n, 0);
        vlm_pool_free(p);
    }
    vlm_pool_free(NULL);
}

static void caller_fn(void *ctx, int t, int n) {
    (void)n;
    if (t == 0) *(int *)ctx = 1;
}

TEST(qgemm_pool_default_and_caller) {
    struct vlm_pool *a = vlm_pool_default(), *b = vlm_pool_default();
    CHECK(a != NULL);
    CHECK(a == b);
    CHECK(vlm_pool_size(a) >= 1);
    int seen = 0;
    vlm_pool_run(a, caller_fn, &seen); /* t = 0 runs on this thread, before the call returns */
    CHECK_EQ(seen, 1);
}

/* ---------------------------------------------------------------------------------------------------------------
 * float formats
 * ------------------------------------------------------------------------------------------------------------- */

static const enum vlm_qformat k_float_fmts[] = {VLM_QF_F32, VLM_QF_F16, VLM_QF_BF16, VLM_QF_Q8R};

TEST(qgemm_isa_levels) {
    enum cpu_isa best = cpu_isa_detect();
    CHECK(cpu_isa_name(best) != NULL);
    for (int l = 0; l <= (int)CPU_ISA_AVX512; l++) CHECK((int)cpu_isa_set((enum cpu_isa)l) <= (int)best);
    CHECK_EQ(cpu_isa_set(CPU_ISA_AVX512), best);
    if (test_verbose()) fprintf(stderr, "qgemm: cpu isa %s\n", cpu_isa_name(best));
}

/* Every float format x ISA level x pool size on the shape grid; the reference is computed once per shape. */
TEST(qgemm_float_vs_ref) {
    static const int64_t ks[] = {1, 7, 100, 130, 384, 896 + 64};
    static const int64_t ns[] = {1, 3, 17, 33, 100};
    static const int64_t Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 300};
    enum cpu_isa best = cpu_isa_detect();
    struct vlm_pool *pools[2] = {NULL, vlm_pool_init(2)};
    if (!CHECK(pools[1] != NULL)) return;
    int failures = 0;
    for (size_t fi = 0; fi < sizeof k_float_fmts / sizeof k_float_fmts[0] && failures < 5; fi++) {
        enum vlm_qformat f = k_float_fmts[fi];
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0] && failures < 5; ki++) {
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0] && failures < 5; ni++) {
                int64_t k = ks[ki], n = ns[ni];
                struct qblob w;
                if (!make_qmat(f, n, k, &w)) return;
                int64_t Mmax = 300;
                float *x = malloc((size_t)(Mmax * k) * sizeof(float));
                float *b = malloc((size_t)n * sizeof(float));
                for (int64_t i = 0; i < Mmax * k; i++) x[i] = frand();
                for (int64_t i = 0; i < n; i++) b[i] = frand();
                for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0] && failures < 5; mi++) {
                    int64_t M = Ms[mi];
                    const float *bias = (M + n + (int64_t)ki) % 2 ? b : NULL; /* half the shapes with a bias */
                    float *ref = malloc((size_t)(M * n) * sizeof(float));
                    cpu_qlinear_ref(ref, x, &w.m, bias, M);
                    for (int lv = 0; lv <= (int)best; lv++) {
                        cpu_isa_set((enum cpu_isa)lv);
                        for (int pi = 0; pi < 2; pi++) {
                            struct cpu_qctx c = {.pool = pools[pi]};
                            float *y = alloc_y(M * n);
                            char what[160];
                            snprintf(what, sizeof what, "%s %s threads %d: M %lld n %lld k %lld bias %d",
                                     vlm_qformat_name(f), cpu_isa_name((enum cpu_isa)lv), pi + 1, (long long)M,
                                     (long long)n, (long long)k, bias != NULL);
                            CHECK_EQ(cpu_qlinear(&c, y, x, &w.m, bias, M), VLM_OK);
                            double tol = lv == CPU_ISA_SCALAR ? TOL_QGEMM_SCALAR_NMSE : TOL_QGEMM_FLOAT_NMSE;
                            if (!compare(what, y, ref, M * n, tol)) failures++;
                            free(y);
                            cpu_qctx_free(&c);
                        }
                    }
                    free(ref);
                }
                free(x);
                free(b);
                free(w.blob);
            }
        }
    }
    cpu_isa_set(best);
    vlm_pool_free(pools[1]);
}

/* x with +Inf and -Inf entries: the NaN/Inf class of every output must match the reference (Inf·0 = NaN, mixed
 * infinities = NaN), on the GEMV and the GEMM paths and in the k tail. */
TEST(qgemm_float_inf_classes) {
    enum cpu_isa best = cpu_isa_detect();
    struct vlm_pool *pool = vlm_pool_init(2);
    if (!CHECK(pool != NULL)) return;
    const int64_t n = 33, k = 130;
    static const int64_t Ms[] = {1, 5, 300};
    for (size_t fi = 0; fi < sizeof k_float_fmts / sizeof k_float_fmts[0]; fi++) {
        enum vlm_qformat f = k_float_fmts[fi];
        struct qblob w;
        if (!make_qmat(f, n, k, &w)) return;
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            int64_t M = Ms[mi];
            float *x = malloc((size_t)(M * k) * sizeof(float));
            for (int64_t i = 0; i < M * k; i++) x[i] = frand();
            x[64] = INFINITY;                 /* token 0, inside the vector body */
            x[(M - 1) * k + 129] = -INFINITY; /* last token, in the k tail */
            if (M > 2) x[k + 3] = INFINITY, x[k + 100] = -INFINITY; /* token 1: NaN everywhere */
            float *ref = malloc((size_t)(M * n) * sizeof(float));
            cpu_qlinear_ref(ref, x, &w.m, NULL, M);
            for (int lv = 0; lv <= (int)best; lv++) {
                cpu_isa_set((enum cpu_isa)lv);
                struct cpu_qctx c = {.pool = pool};
                float *y = alloc_y(M * n);
                char what[128];
                snprintf(what, sizeof what, "inf classes %s %s M %lld", vlm_qformat_name(f),
                         cpu_isa_name((enum cpu_isa)lv), (long long)M);
                CHECK_EQ(cpu_qlinear(&c, y, x, &w.m, NULL, M), VLM_OK);
                compare(what, y, ref, M * n, TOL_QGEMM_FLOAT_NMSE);
                free(y);
                cpu_qctx_free(&c);
            }
            free(ref);
            free(x);
        }
        free(w.blob);
    }
    cpu_isa_set(best);
    vlm_pool_free(pool);
}

/* Larger shapes that cross the GEMM blocking (MC 256 tokens, NC 256 rows, KC 128/256) with partial blocks. */
TEST(qgemm_float_gemm_blocks) {
    enum cpu_isa best = cpu_isa_detect();
    struct vlm_pool *pool = vlm_pool_init(2);
    if (!CHECK(pool != NULL)) return;
    const int64_t n = 300, k = 600, M = 270;
    for (size_t fi = 0; fi < sizeof k_float_fmts / sizeof k_float_fmts[0]; fi++) {
        enum vlm_qformat f = k_float_fmts[fi];
        struct qblob w;
        if (!make_qmat(f, n, k, &w)) return;
        float *x = malloc((size_t)(M * k) * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < M * k; i++) x[i] = frand();
        for (int64_t i = 0; i < n; i++) b[i] = frand();
        float *ref = malloc((size_t)(M * n) * sizeof(float));
        cpu_qlinear_ref(ref, x, &w.m, b, M);
        for (int lv = 1; lv <= (int)best; lv++) {
            cpu_isa_set((enum cpu_isa)lv);
            struct cpu_qctx c = {.pool = pool};
            float *y = alloc_y(M * n);
            char what[96];
            snprintf(what, sizeof what, "gemm blocks %s %s", vlm_qformat_name(f), cpu_isa_name((enum cpu_isa)lv));
            CHECK_EQ(cpu_qlinear(&c, y, x, &w.m, b, M), VLM_OK);
            compare(what, y, ref, M * n, TOL_QGEMM_FLOAT_NMSE);
            free(y);
            cpu_qctx_free(&c);
        }
        free(ref);
        free(x);
        free(b);
        free(w.blob);
    }
    cpu_isa_set(best);
    vlm_pool_free(pool);
}

/* ---------------------------------------------------------------------------------------------------------------
 * int8 formats through the dispatcher (fails until the kernels of qgemm_int8.c land)
 * ------------------------------------------------------------------------------------------------------------- */

TEST(qgemm_int8_dispatch) {
    static const enum vlm_qformat fmts[] = {VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};
    static const int64_t Ms[] = {1, 33};
    enum cpu_isa best = cpu_isa_detect();
    struct vlm_pool *pool = vlm_pool_init(2);
    if (!CHECK(pool != NULL)) return;
    const int64_t n = 50, k = 384;
    for (size_t fi = 0; fi < 3; fi++) {
        enum vlm_qformat f = fmts[fi];
        struct qblob w;
        if (!make_qmat(f, n, k, &w)) return;
        for (size_t mi = 0; mi < 2; mi++) {
            int64_t M = Ms[mi];
            float *x = malloc((size_t)(M * k) * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
            for (int64_t i = 0; i < M * k; i++) x[i] = frand();
            for (int64_t i = 0; i < n; i++) b[i] = frand();
            float *ref = malloc((size_t)(M * n) * sizeof(float));
            cpu_qlinear_a8_ref(ref, x, &w.m, b, M);
            for (int lv = 0; lv <= (int)best; lv++) {
                cpu_isa_set((enum cpu_isa)lv);
                struct cpu_qctx c = {.pool = pool};
                float *y = alloc_y(M * n);
                char what[96];
                snprintf(what, sizeof what, "int8 dispatch %s %s M %lld", vlm_qformat_name(f),
                         cpu_isa_name((enum cpu_isa)lv), (long long)M);
                CHECK_EQ(cpu_qlinear(&c, y, x, &w.m, b, M), VLM_OK);
                compare(what, y, ref, M * n, f == VLM_QF_W4A8 ? 0.0 : TOL_QGEMM_A8_NMSE);
                if (f == VLM_QF_W4A8 && memcmp(y, ref, (size_t)(M * n) * sizeof(float)) != 0)
                    FAIL("%s: W4A8 is not bit-identical to the reference", what);
                free(y);
                cpu_qctx_free(&c);
            }
            free(ref);
            free(x);
            free(b);
        }
        free(w.blob);
    }
    cpu_isa_set(best);
    vlm_pool_free(pool);
}
