/* bench_cuda.c — decode GEMV (M = 1) throughput of cuda_linear (kernels/cuda/linear.cu) for the LLaVA-OneVision 0.5B
 * and 7B decoder linear shapes in every weight format, against the card's peak DRAM bandwidth and against cuBLAS's
 * FP16 GEMV (cublasGemmEx at M = 1) timed in the same run on the same weights.
 *
 * Usage: bench_cuda [--quick]   (markdown on stdout; tools/bench_cuda.sh saves it as bench/cuda_gemv_<card>.md;
 *        --quick: the 0.5B shapes and 7B q/o only, fewer iterations). No CUDA device: one line, exit status 0.
 * What it measures, per shape x format:
 *   - time per call: GPU time (cuda_timer_begin/end) over >= 50 calls after a warm-up, each call on the next of
 *     several copies of the matrix so that the copies together exceed the L2 cache several times (a model reads each
 *     matrix once per token); rows whose copies still fit in 64 MiB are marked "(L2)";
 *   - GB/s = (weight blob + x + y bytes) per call / time, and its fraction of cuda_device_info.peak_gbps;
 *   - speedup over cuBLAS FP16: the cuBLAS time of the same shape / this time.
 * Outputs as decode uses them: q/k/v/gate/up write FP16, o/down add into the FP32 residual (F32_ADD), the head writes
 * FP32 logits; cuBLAS gets the same output type (beta = 1 for the residual add).
 * The weights are synthetic (random codes, valid scales; tools/bench_common.h): speed does not depend on values.
 *
 * The Makefile builds tools/bench_*.c as plain C without the CUDA headers, so the few cuBLAS and CUDA runtime entry
 * points the baseline needs are declared below, weak: a CPU-only build links (and never gets past cuda_ctx_create),
 * and a build whose libraries lack them prints the table without the baseline. cuBLAS runs on the legacy default
 * stream with its own handle and is timed with CUDA events there; cuda_linear runs on the context's stream. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda_backend.h"
#include "kernels/quant.h"
#include "runtime/util.h"
/* bench_common.h's CPU-side helpers (the DRAM probe, the CPU name) are not used here */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "tools/bench_common.h"
#pragma GCC diagnostic pop

/* ---- the C APIs of cuBLAS and the CUDA runtime used by the baseline (values as in cublas_api.h / library_types.h) */
typedef struct cublasContext *bench_blas_t;
typedef struct CUevent_st *bench_event_t;
enum { BENCH_OP_N = 0, BENCH_OP_T = 1, BENCH_R_32F = 0, BENCH_R_16F = 2, BENCH_COMPUTE_32F = 68, BENCH_GEMM_DEFAULT = -1 };
extern int cublasCreate_v2(bench_blas_t *handle) __attribute__((weak));
extern int cublasDestroy_v2(bench_blas_t handle) __attribute__((weak));
extern int cublasGemmEx(bench_blas_t handle, int transa, int transb, int m, int n, int k, const void *alpha,
                        const void *A, int Atype, int lda, const void *B, int Btype, int ldb, const void *beta,
                        void *C, int Ctype, int ldc, int compute, int algo) __attribute__((weak));
extern int cudaEventCreate(bench_event_t *e) __attribute__((weak));
extern int cudaEventDestroy(bench_event_t e) __attribute__((weak));
extern int cudaEventRecord(bench_event_t e, void *stream) __attribute__((weak));
extern int cudaEventSynchronize(bench_event_t e) __attribute__((weak));
extern int cudaEventElapsedTime(float *ms, bench_event_t a, bench_event_t b) __attribute__((weak));

struct baseline {
    bool ok;
    bench_blas_t blas;
    bench_event_t t0, t1;
};

static bool baseline_init(struct baseline *bl) {
    memset(bl, 0, sizeof *bl);
    if (!cublasCreate_v2 || !cublasDestroy_v2 || !cublasGemmEx || !cudaEventCreate || !cudaEventDestroy ||
        !cudaEventRecord || !cudaEventSynchronize || !cudaEventElapsedTime)
        return false;
    if (cublasCreate_v2(&bl->blas) != 0) return false;
    if (cudaEventCreate(&bl->t0) != 0 || cudaEventCreate(&bl->t1) != 0) return false;
    bl->ok = true;
    return true;
}

static void baseline_free(struct baseline *bl) {
    if (bl->t0) cudaEventDestroy(bl->t0);
    if (bl->t1) cudaEventDestroy(bl->t1);
    if (bl->blas) cublasDestroy_v2(bl->blas);
}

/* y (1, n) = x (1, k) · Wᵀ, W (n, k) row-major FP16 = column-major k x n: C (n x 1) = op_T(W) · x. */
static int baseline_gemv(struct baseline *bl, const struct cuda_qmat *w, const void *x, void *y, enum cuda_out out) {
    const float alpha = 1.0f, beta = out == CUDA_OUT_F32_ADD ? 1.0f : 0.0f;
    return cublasGemmEx(bl->blas, BENCH_OP_T, BENCH_OP_N, (int)w->n, 1, (int)w->k, &alpha, w->codes, BENCH_R_16F,
                        (int)w->k, x, BENCH_R_16F, (int)w->k, &beta, y, out == CUDA_OUT_F16 ? BENCH_R_16F : BENCH_R_32F,
                        (int)w->n, BENCH_COMPUTE_32F, BENCH_GEMM_DEFAULT);
}

/* ms per call of `iters` baseline calls cycling over the copies; < 0 when a call failed */
static double baseline_time(struct baseline *bl, const struct cuda_qmat *w, int copies, int iters, const void *x,
                            void *y, enum cuda_out out) {
    for (int i = 0; i < copies && i < 10; i++)
        if (baseline_gemv(bl, &w[i], x, y, out) != 0) return -1;
    float ms = 0;
    if (cudaEventRecord(bl->t0, NULL) != 0) return -1;
    for (int i = 0; i < iters; i++)
        if (baseline_gemv(bl, &w[i % copies], x, y, out) != 0) return -1;
    if (cudaEventRecord(bl->t1, NULL) != 0 || cudaEventSynchronize(bl->t1) != 0 ||
        cudaEventElapsedTime(&ms, bl->t0, bl->t1) != 0)
        return -1;
    return ms / iters;
}

/* ---------------------------------------------------------------------------------------------------------------
 * cuda_linear timing
 * ------------------------------------------------------------------------------------------------------------- */

#define MIB (1024.0 * 1024.0)
#define WS_BYTES ((size_t)512 << 20) /* copies of a matrix until they hold this much (H100/H200 L2: 50 MB) */
#define MAX_COPIES 1024

/* Uploads `copies` copies of one synthetic matrix; the number of copies actually made (0 on failure). */
static int upload_copies(struct cuda_ctx *c, enum vlm_qformat f, int64_t n, int64_t k, struct cuda_qmat *dev,
                         int want) {
    struct vlm_qlayout L;
    struct vlm_qmat hm;
    const char *why = NULL;
    VLM_ASSERT(vlm_qlayout(f, n, k, &L, &why));
    unsigned char *blob = xalloc(L.total_bytes);
    fill_blob(f, n, k, blob, &L);
    VLM_ASSERT(vlm_qmat_view(f, n, k, blob, L.total_bytes, &hm, &why));
    int made = 0;
    while (made < want && cuda_qmat_upload(c, &hm, &dev[made], "bench_cuda weights") == VLM_OK) made++;
    free(blob);
    return made;
}

static double linear_time(struct cuda_ctx *c, const struct cuda_qmat *w, int copies, int iters, const void *x, void *y,
                          enum cuda_out out) {
    for (int i = 0; i < copies && i < 10; i++) cuda_linear(c, y, out, x, &w[i], NULL, 1);
    double ms = 0;
    if (cuda_timer_begin(c) != VLM_OK) return -1;
    for (int i = 0; i < iters; i++) cuda_linear(c, y, out, x, &w[i % copies], NULL, 1);
    if (cuda_timer_end(c, &ms) != VLM_OK || cuda_ctx_sync(c, "bench_cuda") != VLM_OK) return -1;
    return ms / iters;
}

/* ---------------------------------------------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------------------------------------------- */

struct shape {
    const char *what;
    int64_t n, k;
    enum cuda_out out;
};

static const char *out_name(enum cuda_out o) {
    return o == CUDA_OUT_F16 ? "f16" : o == CUDA_OUT_F32 ? "f32" : "f32 +=";
}

int main(int argc, char **argv) {
    bool quick;
    const char *out_path;
    if (bench_args(argc, argv, "bench_cuda", NULL, &quick, &out_path) != 0) return 2;
    struct cuda_ctx *c = NULL;
    enum vlm_status st = cuda_ctx_create(0, &c);
    if (st != VLM_OK) {
        printf("bench_cuda: no usable CUDA device (%s); nothing measured\n", vlm_status_str(st));
        return 0;
    }
    struct cuda_device_info info;
    cuda_ctx_info(c, &info);
    struct baseline bl;
    baseline_init(&bl);
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));

    static const struct shape shapes_all[] = {
        {"0.5B q", 896, 896, CUDA_OUT_F16},             {"0.5B k/v", 128, 896, CUDA_OUT_F16},
        {"0.5B o", 896, 896, CUDA_OUT_F32_ADD},         {"0.5B gate/up", 4864, 896, CUDA_OUT_F16},
        {"0.5B down", 896, 4864, CUDA_OUT_F32_ADD},     {"0.5B head", 151936, 896, CUDA_OUT_F32},
        {"7B q", 3584, 3584, CUDA_OUT_F16},             {"7B k/v", 512, 3584, CUDA_OUT_F16},
        {"7B o", 3584, 3584, CUDA_OUT_F32_ADD},         {"7B gate/up", 18944, 3584, CUDA_OUT_F16},
        {"7B down", 3584, 18944, CUDA_OUT_F32_ADD},     {"7B head", 152064, 3584, CUDA_OUT_F32}};
    static const struct shape shapes_quick[] = {
        {"0.5B q", 896, 896, CUDA_OUT_F16},    {"0.5B gate/up", 4864, 896, CUDA_OUT_F16},
        {"0.5B down", 896, 4864, CUDA_OUT_F32_ADD}, {"7B q", 3584, 3584, CUDA_OUT_F16},
        {"7B o", 3584, 3584, CUDA_OUT_F32_ADD}};
    const struct shape *shapes = quick ? shapes_quick : shapes_all;
    const int n_shapes = quick ? 5 : 12;
    static const enum vlm_qformat fmts[] = {VLM_QF_F16, VLM_QF_Q8R, VLM_QF_W4A8, VLM_QF_W4G128, VLM_QF_W3G128};
    const int min_iters = quick ? 20 : 50;

    out("# cuda_linear GEMV benchmark (M = 1)%s\n\n", quick ? " (--quick)" : "");
    out("- device: %s (compute capability %d.%d, %d SMs, %.1f GiB); peak DRAM bandwidth %.0f GB/s (2 x memory clock "
        "x bus width)\n",
        info.name, info.cc_major, info.cc_minor, info.n_sm, (double)info.total_bytes / (MIB * 1024.0),
        info.peak_gbps);
    out("- date: %s; GPU time per call (CUDA events) over >= %d calls after a warm-up, each call on the next of several "
        "copies of the matrix (together >= %.0f MiB, at most %d copies; \"(L2)\" when they fit in 64 MiB)\n",
        date, min_iters, (double)WS_BYTES / MIB, MAX_COPIES);
    out("- GB/s = (weight blob + x + y bytes) / time; %% peak against the line above; baseline: cuBLAS FP16 GEMV "
        "(cublasGemmEx, M = 1, FP32 compute) on the F16 copies, same output type%s\n",
        bl.ok ? "" : " -- NOT AVAILABLE in this build (cuBLAS entry points missing), speedups are against our F16");
    out("- synthetic weights (random codes, valid scales)\n\n");
    out("| shape (n x k) | out | format | blob MiB | copies | us | GB/s | %% peak | speedup vs cuBLAS FP16 |\n");
    out("|---|---|---|---:|---:|---:|---:|---:|---:|\n");

    int rc = 0;
    for (int si = 0; si < n_shapes; si++) {
        const struct shape *sh = &shapes[si];
        void *x = NULL, *y = NULL;
        uint16_t *xh = xalloc((size_t)sh->k * 2);
        for (int64_t i = 0; i < sh->k; i++) xh[i] = vlm_f32_to_f16((float)((int64_t)(rnd64() % 2001) - 1000) / 1000.0f);
        const bool io_ok = cuda_malloc(c, &x, (size_t)sh->k * 2, "bench_cuda x") == VLM_OK &&
                           cuda_malloc(c, &y, (size_t)sh->n * 4, "bench_cuda y") == VLM_OK &&
                           cuda_upload(c, x, xh, (size_t)sh->k * 2) == VLM_OK &&
                           cuda_memset0(c, y, (size_t)sh->n * 4) == VLM_OK;
        free(xh);
        if (!io_ok) {
            cuda_free(c, x);
            cuda_free(c, y);
            rc = 1;
            break;
        }
        const size_t io_bytes = (size_t)sh->k * 2 + (size_t)sh->n * (sh->out == CUDA_OUT_F16 ? 2 : 4) *
                                                        (sh->out == CUDA_OUT_F32_ADD ? 2 : 1);
        double t_blas = -1, t_f16 = -1;
        for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
            const enum vlm_qformat f = fmts[fi];
            struct vlm_qlayout L;
            VLM_ASSERT(vlm_qlayout(f, sh->n, sh->k, &L, NULL));
            int want = (int)((WS_BYTES + L.total_bytes - 1) / L.total_bytes);
            if (want > MAX_COPIES) want = MAX_COPIES;
            if (want < 1) want = 1;
            struct cuda_qmat *w = calloc((size_t)want, sizeof *w);
            const int copies = upload_copies(c, f, sh->n, sh->k, w, want);
            const int iters = copies > min_iters ? copies : min_iters;
            double t = -1;
            if (copies > 0 && cuda_ctx_reserve(c, cuda_linear_scratch_bytes(&w[0], 1), "bench_cuda scratch") == VLM_OK)
                t = linear_time(c, w, copies, iters, x, y, sh->out);
            if (f == VLM_QF_F16 && t > 0) {
                t_f16 = t;
                if (bl.ok) t_blas = baseline_time(&bl, w, copies, iters, x, y, sh->out);
            }
            const double ref = bl.ok ? t_blas : t_f16;
            const bool l2 = (double)copies * (double)L.total_bytes < 64.0 * MIB;
            if (f == VLM_QF_F16 && bl.ok) {
                const double gbs = t_blas > 0 ? (double)(L.total_bytes + io_bytes) / 1e6 / t_blas : 0;
                out("| %s %lldx%lld | %s | cuBLAS f16 | %.1f | %d%s | %.1f | %.0f | %.0f%% | 1.00x |\n", sh->what,
                    (long long)sh->n, (long long)sh->k, out_name(sh->out), (double)L.total_bytes / MIB, copies,
                    l2 ? " (L2)" : "", t_blas * 1e3, gbs, info.peak_gbps > 0 ? 100 * gbs / info.peak_gbps : 0);
            }
            if (t > 0) {
                const double gbs = (double)(L.total_bytes + io_bytes) / 1e6 / t; /* bytes / ms / 1e6 = GB/s */
                char sp[32] = "-";
                if (ref > 0) snprintf(sp, sizeof sp, "%.2fx", ref / t);
                out("| %s %lldx%lld | %s | %s | %.1f | %d%s | %.1f | %.0f | %.0f%% | %s |\n", sh->what,
                    (long long)sh->n, (long long)sh->k, out_name(sh->out), vlm_qformat_name(f),
                    (double)L.total_bytes / MIB, copies, l2 ? " (L2)" : "", t * 1e3, gbs,
                    info.peak_gbps > 0 ? 100 * gbs / info.peak_gbps : 0, sp);
            } else {
                out("| %s %lldx%lld | %s | %s | %.1f | %d | failed | | | |\n", sh->what, (long long)sh->n,
                    (long long)sh->k, out_name(sh->out), vlm_qformat_name(f), (double)L.total_bytes / MIB, copies);
                rc = 1;
            }
            for (int i = 0; i < copies; i++) cuda_qmat_free(c, &w[i]);
            free(w);
        }
        cuda_free(c, x);
        cuda_free(c, y);
    }
    out("\n");
    baseline_free(&bl);
    cuda_ctx_free(c);
    int wrc = bench_write_report("bench_cuda", out_path);
    free(g_rep);
    return rc ? rc : wrc;
}
