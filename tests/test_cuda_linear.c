/* test_cuda_linear.c — cuda_linear and cuda_qmat_upload (kernels/cuda/linear.cu) against the CPU reference
 * cpu_qlinear_ref (kernels/quant.h), in the spirit of llama.cpp's test-backend-ops: every weight format (F32 and BF16
 * through their F16 upload, F16, Q8R, W3G128, W4G128, W4A8), token counts on both sides of the GEMV/GEMM switch
 * (M = 1, 2, 3, 5, 8 | 9, 37, 200), awkward output sizes (n = 1, 33, 257, 1000: not multiples of any tile) and
 * k = 128, 384, 1152 (plus k = 37 and 200 for the formats that allow any k), every output mode (F16, F32, F32_ADD onto
 * a random y), with and without a bias. x is rounded to FP16 on the host first and the reference runs on those same
 * values. Checked per output element against a bound that follows from the arithmetic of the path (below), plus an
 * NMSE bound over the whole output, NaN/Inf classes, guard bands on both sides of y, and the uploaded bytes.
 * Without a device every case reports SKIP: no CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "kernels/quant.h"
#include "test.h"

/* ---- tolerances. S = Σ_j |x_j · ŵ_j| + |b| of the output element (ŵ: the canonical dequantized weight). */
/* GEMV (M <= 8) for F16/Q8R/W3/W4: the same exact products as the reference (11-bit x times an exact ŵ or a small
 * integer), summed in FP32 in another order (lane partials, warp shuffles; W3/W4 on the tensor cores with FP32
 * accumulation per 128-group, then s·group sum): each rounding is <= 2^-24 (tensor cores truncate: <= 2^-23) of a
 * partial sum bounded by S, over a few dozen sequential roundings for k <= 1152 -> ~4e-6·S worst case. */
#define TOL_GEMV_REL 1e-5
/* cuBLAS on exact FP16 weights (F16 at M > 8): exact products, FP32 tensor-core accumulation whose additions
 * truncate, split-K reductions in FP32 (we disallow reduced-precision reductions) -> 1e-4·S leaves room for
 * whatever kernel cuBLAS picks. */
#define TOL_CUBLAS_REL 1e-4
/* W3/W4/Q8R at M > 8 dequantize to FP16 before cuBLAS. ŵ = (q − z)·s needs up to 11 + 4 = 15 significant bits, so
 * FP16 rounds it: |δŵ| <= 2^-11·|ŵ| in FP16's normal range, <= 2^-25 (half the subnormal spacing) below it. Hence
 * 2^-11·S + 2^-25·Σ|x| on top of the cuBLAS term. (Dequantizing into FP32 would be exact but runs the GEMM at FP32
 * speed; the rounding is that of any FP16 inference stack.) */
#define TOL_DQ16_REL (1.0 / 2048.0)
#define TOL_DQ16_SUBNORMAL (1.0 / 33554432.0)
/* Output rounding. F16 out: the device rounds its f32 result once (2^-11 relative, 2^-25 absolute below the FP16
 * normal range; 2^-24 kept); with cuBLAS and a bias the FP16 GEMM result is rounded before the bias is added: one
 * more 2^-11·(|y| + |b|). F32 and F32_ADD: the device adds b and y in another order than the reference (a few
 * 2^-24 of |y|, |y0|, |b|). */
#define TOL_OUT_F16_REL (1.0 / 2048.0 * 1.001)
#define TOL_OUT_F16_ABS (1.0 / 16777216.0)
#define TOL_OUT_F32_REL (1.0 / 4194304.0)
/* NMSE over a whole output: the per-element bounds above are worst cases (linear in k); real errors are random-walk
 * sized. A wrong weight, zero point, group, row or token gives NMSE >= ~1e-4. Exact paths are compared bit for bit. */
#define TOL_NMSE_GEMV 1e-8
#define TOL_NMSE_CUBLAS 1e-7
#define TOL_NMSE_DQ16 1e-6
#define TOL_NMSE_OUT_F16 1e-6
/* W4A8, GEMV and tensor-core GEMM: integer dot products are exact and the epilogue is the reference's own f32
 * operations (explicit rounding, no FMA): bit-identical, at every M and in every output mode. */

#define M_MAX 200
#define GUARD_BYTES 256 /* before and after y, filled with 0xff (an FP16/F32 NaN), must stay untouched */

static const int64_t k_Ms[] = {1, 2, 3, 5, 8, 9, 37, 200};
static const int64_t k_ns[] = {1, 33, 257, 1000};
static const int64_t k_ks[] = {128, 384, 1152};
static const int64_t k_ks_any[] = {37, 200}; /* formats with any k (F32/BF16/F16/Q8R): scalar and 8-byte paths */
static const int64_t k_ns_any[] = {33, 257};

static uint64_t g_rng = 0x6A09E667F3BCC908ull; /* this file's own stream: data independent of other cases */

static int fclass(float v) { return isnan(v) ? 1 : isinf(v) ? (v > 0 ? 2 : 3) : 0; }

/* A context, or false after marking the case skipped (no device, or one below sm_80) or failed. */
static bool open_ctx(struct cuda_ctx **c) {
    enum vlm_status st = cuda_ctx_create(0, c);
    if (st == VLM_ERR_NO_DEVICE) {
        test_skip("no CUDA device");
        return false;
    }
    if (st == VLM_ERR_UNSUPPORTED) {
        test_skip("CUDA device below compute capability 8.0");
        return false;
    }
    return CHECK_EQ(st, VLM_OK);
}

/* ---------------------------------------------------------------------------------------------------------------
 * one matrix: host formats, reference, device copy
 * ------------------------------------------------------------------------------------------------------------- */

struct hmat {
    void *blob;          /* the format under test, as vlm_quantize_ref writes it */
    struct vlm_qmat m;
    void *ref_blob;      /* what the device holds: an F16 copy for F32/BF16, else the same blob */
    struct vlm_qmat ref; /* the matrix the reference runs on */
    struct vlm_qlayout L, ref_L;
};

static void *qalloc(size_t bytes) { return aligned_alloc(VLM_QALIGN, (bytes + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN); }

static bool hmat_make(enum vlm_qformat f, int64_t n, int64_t k, struct hmat *h) {
    memset(h, 0, sizeof *h);
    const char *why = NULL;
    const enum vlm_qformat rf = f == VLM_QF_F32 || f == VLM_QF_BF16 ? VLM_QF_F16 : f;
    if (!CHECK(vlm_qlayout(f, n, k, &h->L, &why)) || !CHECK(vlm_qlayout(rf, n, k, &h->ref_L, &why))) return false;
    float *w = malloc((size_t)(n * k) * sizeof(float));
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rng_normal(&g_rng);
    h->blob = qalloc(h->L.total_bytes);
    vlm_quantize_ref(f, w, n, k, h->blob);
    if (f == VLM_QF_BF16) /* the device widens the stored BF16 values: round those, not the f32 originals */
        for (int64_t i = 0; i < n * k; i++) {
            uint16_t v;
            memcpy(&v, (const unsigned char *)h->blob + 2 * i, 2);
            w[i] = vlm_bf16_to_f32(v);
        }
    if (rf != f) {
        h->ref_blob = qalloc(h->ref_L.total_bytes);
        vlm_quantize_ref(rf, w, n, k, h->ref_blob); /* round to nearest even, as the upload must */
    } else {
        h->ref_blob = h->blob;
    }
    free(w);
    return CHECK(vlm_qmat_view(f, n, k, h->blob, h->L.total_bytes, &h->m, &why)) &&
           CHECK(vlm_qmat_view(rf, n, k, h->ref_blob, h->ref_L.total_bytes, &h->ref, &why));
}

static void hmat_free(struct hmat *h) {
    if (h->ref_blob != h->blob) free(h->ref_blob);
    free(h->blob);
}

/* The uploaded blob must hold exactly the reference blob's planes (the padding between planes is not compared). */
static bool check_uploaded(struct cuda_ctx *c, const struct hmat *h, const struct cuda_qmat *d, const char *what) {
    const struct vlm_qlayout *L = &h->ref_L;
    if (!CHECK_EQ(d->fmt, h->ref.fmt) || !CHECK_EQ(d->n, h->ref.n) || !CHECK_EQ(d->k, h->ref.k)) return false;
    const unsigned char *base = d->blob;
    if (!CHECK((const unsigned char *)d->codes == base + L->codes_off) ||
        !CHECK((const unsigned char *)d->scales == (L->scales_bytes ? base + L->scales_off : NULL)) ||
        !CHECK((const unsigned char *)d->zeros == (L->zeros_bytes ? base + L->zeros_off : NULL)))
        return false;
    unsigned char *got = malloc(L->total_bytes);
    bool ok = CHECK_EQ(cuda_download(c, got, d->blob, L->total_bytes), VLM_OK);
    const unsigned char *want = h->ref_blob;
    struct { size_t off, bytes; const char *name; } planes[3] = {
        {L->codes_off, L->codes_bytes, "codes"}, {L->scales_off, L->scales_bytes, "scales"},
        {L->zeros_off, L->zeros_bytes, "zeros"}};
    for (int p = 0; ok && p < 3; p++)
        if (planes[p].bytes && memcmp(got + planes[p].off, want + planes[p].off, planes[p].bytes) != 0) {
            FAIL("%s: uploaded %s plane differs from the host's", what, planes[p].name);
            ok = false;
        }
    free(got);
    return ok;
}

/* ---------------------------------------------------------------------------------------------------------------
 * comparison
 * ------------------------------------------------------------------------------------------------------------- */

enum path { PATH_EXACT, PATH_GEMV, PATH_CUBLAS, PATH_DQ16 };

static enum path path_of(enum vlm_qformat f, int64_t M) {
    if (f == VLM_QF_W4A8) return PATH_EXACT;
    if (M <= 8) return PATH_GEMV;
    return f == VLM_QF_F16 ? PATH_CUBLAS : PATH_DQ16;
}

struct expect {
    const float *ref;  /* (M_MAX, n) cpu_qlinear_ref */
    const float *S;    /* (M_MAX, n) Σ|x·ŵ| + |b| */
    const float *sx;   /* (M_MAX) Σ|x| */
    const float *y0;   /* (M_MAX, n) the y that F32_ADD starts from */
    const float *b;    /* (n) or NULL */
};

/* got: the downloaded y with its guards (GUARD_BYTES, y, GUARD_BYTES). */
static bool compare(const char *what, const unsigned char *got_all, enum cuda_out out, enum path path,
                    const struct expect *e, int64_t M, int64_t n) {
    const size_t esize = out == CUDA_OUT_F16 ? 2 : 4, ybytes = (size_t)(M * n) * esize;
    for (size_t i = 0; i < GUARD_BYTES; i++)
        if (got_all[i] != 0xff || got_all[GUARD_BYTES + ybytes + i] != 0xff) {
            FAIL("%s: guard byte %s y written", what, got_all[i] != 0xff ? "before" : "after");
            return false;
        }
    const unsigned char *got = got_all + GUARD_BYTES;
    double rel = path == PATH_GEMV ? TOL_GEMV_REL : path == PATH_CUBLAS ? TOL_CUBLAS_REL
               : path == PATH_DQ16 ? TOL_DQ16_REL + TOL_CUBLAS_REL : 0.0;
    double nmse_tol = path == PATH_GEMV ? TOL_NMSE_GEMV : path == PATH_CUBLAS ? TOL_NMSE_CUBLAS : TOL_NMSE_DQ16;
    if (out == CUDA_OUT_F16 && nmse_tol < TOL_NMSE_OUT_F16) nmse_tol = TOL_NMSE_OUT_F16;
    double num = 0, den = 0, worst = 0;
    int64_t worst_i = -1;
    for (int64_t t = 0; t < M; t++)
        for (int64_t o = 0; o < n; o++) {
            const int64_t i = t * n + o;
            const float r = e->ref[i];
            const float bo = e->b ? fabsf(e->b[o]) : 0.0f;
            float want, g;
            double tol = 0;
            if (out == CUDA_OUT_F16) {
                uint16_t gh, wh = vlm_f32_to_f16(r);
                memcpy(&gh, got + 2 * i, 2);
                if (path == PATH_EXACT && gh != wh) {
                    FAIL("%s: y[%lld][%lld] = f16 0x%04x, want 0x%04x (bit-exact path)", what, (long long)t,
                         (long long)o, gh, wh);
                    return false;
                }
                g = vlm_f16_to_f32(gh);
                want = r;
                tol = TOL_OUT_F16_REL * fabs(r) + TOL_OUT_F16_ABS;
                if (path != PATH_GEMV && path != PATH_EXACT && e->b) tol += TOL_OUT_F16_REL * (fabs(r) + bo);
            } else {
                memcpy(&g, got + 4 * i, 4);
                want = out == CUDA_OUT_F32_ADD ? e->y0[i] + r : r;
                if (path == PATH_EXACT) {
                    if (memcmp(&g, &want, 4) != 0) {
                        FAIL("%s: y[%lld][%lld] = %.9g, want %.9g (bit-exact path)", what, (long long)t, (long long)o,
                             g, want);
                        return false;
                    }
                    continue;
                }
                tol = TOL_OUT_F32_REL * (fabs(want) + fabs(r) + bo + (out == CUDA_OUT_F32_ADD ? fabs(e->y0[i]) : 0));
            }
            if (path == PATH_EXACT) continue;
            tol += rel * e->S[i];
            if (path == PATH_DQ16) tol += TOL_DQ16_SUBNORMAL * e->sx[t];
            if (fclass(g) != fclass(want)) {
                FAIL("%s: class of y[%lld][%lld] differs: got %g, want %g", what, (long long)t, (long long)o, g, want);
                return false;
            }
            if (fclass(want) != 0) continue;
            const double d = fabs((double)g - (double)want);
            if (d > tol) {
                FAIL("%s: y[%lld][%lld] = %.9g, want %.9g: |error| %.3g > bound %.3g (S %.4g)", what, (long long)t,
                     (long long)o, g, want, d, tol, e->S[i]);
                return false;
            }
            if (tol > 0 && d / tol > worst) worst = d / tol, worst_i = i;
            num += d * d;
            den += (double)want * want;
        }
    if (path == PATH_EXACT) return true;
    const double nmse = den > 0 ? num / den : num;
    if (nmse > nmse_tol) {
        FAIL("%s: NMSE %.3g > %.3g", what, nmse, nmse_tol);
        return false;
    }
    if (test_verbose())
        fprintf(stderr, "  %s: NMSE %.3g, worst error at %.3f of its bound (element %lld)\n", what, nmse, worst,
                (long long)worst_i);
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * the sweep
 * ------------------------------------------------------------------------------------------------------------- */

static const char *out_name(enum cuda_out o) {
    return o == CUDA_OUT_F16 ? "f16" : o == CUDA_OUT_F32 ? "f32" : "f32_add";
}

/* Every M and output mode for one (format, n, k). Returns the number of failed comparisons. */
static int run_shape(struct cuda_ctx *c, enum vlm_qformat f, int64_t n, int64_t k, bool with_bias) {
    struct hmat h;
    if (!hmat_make(f, n, k, &h)) return 1;
    char what[192];
    snprintf(what, sizeof what, "%s n %lld k %lld", vlm_qformat_name(f), (long long)n, (long long)k);
    int failures = 0;

    /* host data: x (FP16-rounded), b, y0; the reference and the error scales */
    uint16_t *x16 = malloc((size_t)(M_MAX * k) * 2);
    float *x = malloc((size_t)(M_MAX * k) * sizeof(float));
    float *b = malloc((size_t)n * sizeof(float));
    float *y0 = malloc((size_t)(M_MAX * n) * sizeof(float));
    float *ref = malloc((size_t)(M_MAX * n) * sizeof(float));
    float *S = calloc((size_t)(M_MAX * n), sizeof(float));
    float *sx = calloc(M_MAX, sizeof(float));
    float *wrow = malloc((size_t)k * sizeof(float));
    for (int64_t i = 0; i < M_MAX * k; i++) {
        x16[i] = vlm_f32_to_f16(test_rng_normal(&g_rng));
        x[i] = vlm_f16_to_f32(x16[i]);
    }
    for (int64_t i = 0; i < n; i++) b[i] = test_rng_normal(&g_rng);
    for (int64_t i = 0; i < M_MAX * n; i++) y0[i] = 4.0f * test_rng_normal(&g_rng);
    const float *bias = with_bias ? b : NULL;
    cpu_qlinear_ref(ref, x, &h.ref, bias, M_MAX);
    for (int64_t t = 0; t < M_MAX; t++)
        for (int64_t j = 0; j < k; j++) sx[t] += fabsf(x[t * k + j]);
    if (f != VLM_QF_W4A8)
        for (int64_t o = 0; o < n; o++) {
            vlm_dequantize_row_ref(&h.ref, o, wrow);
            for (int64_t t = 0; t < M_MAX; t++) {
                double s = bias ? fabs(bias[o]) : 0.0;
                for (int64_t j = 0; j < k; j++) s += fabs((double)x[t * k + j] * wrow[j]);
                S[t * n + o] = (float)s;
            }
        }
    const struct expect e = {.ref = ref, .S = S, .sx = sx, .y0 = y0, .b = bias};

    /* device data */
    struct cuda_qmat d = {0};
    void *x_d = NULL, *b_d = NULL, *y_d = NULL;
    const size_t ybytes_max = (size_t)(M_MAX * n) * 4, yall = 2 * GUARD_BYTES + ybytes_max;
    unsigned char *yh = malloc(yall);
    if (!CHECK_EQ(cuda_qmat_upload(c, &h.m, &d, what), VLM_OK) || !check_uploaded(c, &h, &d, what) ||
        !CHECK_EQ(cuda_malloc(c, &x_d, (size_t)(M_MAX * k) * 2, "x"), VLM_OK) ||
        !CHECK_EQ(cuda_malloc(c, &b_d, (size_t)n * 4, "b"), VLM_OK) ||
        !CHECK_EQ(cuda_malloc(c, &y_d, yall, "y"), VLM_OK) ||
        !CHECK_EQ(cuda_upload(c, x_d, x16, (size_t)(M_MAX * k) * 2), VLM_OK) ||
        !CHECK_EQ(cuda_upload(c, b_d, b, (size_t)n * 4), VLM_OK)) {
        failures++;
        goto done;
    }
    size_t scratch = 0;
    for (size_t mi = 0; mi < sizeof k_Ms / sizeof k_Ms[0]; mi++) {
        size_t s = cuda_linear_scratch_bytes(&d, k_Ms[mi]);
        scratch = s > scratch ? s : scratch;
    }
    if (f == VLM_QF_W4A8) CHECK(cuda_linear_scratch_bytes(&d, 1) >= (size_t)k);
    if (f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_Q8R) {
        CHECK_EQ(cuda_linear_scratch_bytes(&d, 8), 0);
        CHECK(cuda_linear_scratch_bytes(&d, 9) >= (size_t)k * 2);
    }
    if (scratch && !CHECK_EQ(cuda_ctx_reserve(c, scratch, "cuda_linear test scratch"), VLM_OK)) {
        failures++;
        goto done;
    }

    for (size_t mi = 0; mi < sizeof k_Ms / sizeof k_Ms[0] && failures < 3; mi++) {
        const int64_t M = k_Ms[mi];
        for (int oi = 0; oi < 3 && failures < 3; oi++) {
            const enum cuda_out out = (enum cuda_out)oi;
            const size_t esize = out == CUDA_OUT_F16 ? 2 : 4, ybytes = (size_t)(M * n) * esize;
            memset(yh, 0xff, yall); /* guards, and NaN in every output a kernel forgets */
            if (out == CUDA_OUT_F32_ADD) memcpy(yh + GUARD_BYTES, y0, ybytes);
            char label[256];
            snprintf(label, sizeof label, "%s M %lld out %s bias %d", what, (long long)M, out_name(out), with_bias);
            if (!CHECK_EQ(cuda_upload(c, y_d, yh, yall), VLM_OK)) {
                failures++;
                break;
            }
            cuda_linear(c, (unsigned char *)y_d + GUARD_BYTES, out, x_d, &d, with_bias ? b_d : NULL, M);
            if (!CHECK_EQ(cuda_ctx_sync(c, label), VLM_OK) || !CHECK_EQ(cuda_download(c, yh, y_d, yall), VLM_OK)) {
                failures++;
                break;
            }
            if (!compare(label, yh, out, path_of(f, M), &e, M, n)) failures++;
        }
    }
done:
    cuda_free(c, x_d);
    cuda_free(c, b_d);
    cuda_free(c, y_d);
    cuda_qmat_free(c, &d);
    free(yh);
    free(x16);
    free(x);
    free(b);
    free(y0);
    free(ref);
    free(S);
    free(sx);
    free(wrow);
    hmat_free(&h);
    return failures;
}

static void run_format(enum vlm_qformat f) {
    struct cuda_ctx *c;
    if (!open_ctx(&c)) return;
    int failures = 0;
    for (size_t ki = 0; ki < sizeof k_ks / sizeof k_ks[0] && failures == 0; ki++)
        for (size_t ni = 0; ni < sizeof k_ns / sizeof k_ns[0] && failures == 0; ni++)
            failures += run_shape(c, f, k_ns[ni], k_ks[ki], (ki + ni) % 2 == 0);
    const bool any_k = f == VLM_QF_F32 || f == VLM_QF_BF16 || f == VLM_QF_F16 || f == VLM_QF_Q8R;
    for (size_t ki = 0; any_k && ki < sizeof k_ks_any / sizeof k_ks_any[0] && failures == 0; ki++)
        for (size_t ni = 0; ni < sizeof k_ns_any / sizeof k_ns_any[0] && failures == 0; ni++)
            failures += run_shape(c, f, k_ns_any[ni], k_ks_any[ki], (ki + ni) % 2 == 1);
    cuda_ctx_free(c);
}

TEST(cuda_linear_f32) { run_format(VLM_QF_F32); }
TEST(cuda_linear_bf16) { run_format(VLM_QF_BF16); }
TEST(cuda_linear_f16) { run_format(VLM_QF_F16); }
TEST(cuda_linear_q8r) { run_format(VLM_QF_Q8R); }
TEST(cuda_linear_w3g128) { run_format(VLM_QF_W3G128); }
TEST(cuda_linear_w4g128) { run_format(VLM_QF_W4G128); }
TEST(cuda_linear_w4a8) { run_format(VLM_QF_W4A8); }

/* Decode-sized shapes (one 7B q/o row block and a down-projection-like k) at M = 1: the GEMV's multi-group loop
 * (several batches of 4 groups per warp), and W4A8 at large k. Only n = 40 rows, so the reference stays cheap. */
TEST(cuda_linear_long_k) {
    struct cuda_ctx *c;
    if (!open_ctx(&c)) return;
    static const enum vlm_qformat fmts[] = {VLM_QF_F16, VLM_QF_Q8R, VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};
    for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++)
        if (run_shape(c, fmts[fi], 40, 18944, fi % 2 == 0) != 0) break;
    cuda_ctx_free(c);
}
