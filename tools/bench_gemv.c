/* bench_gemv.c — memory-bound decode GEMV and prefill GEMM throughput of cpu_qlinear (kernels/cpu/qgemm.c) for the
 * LLaVA-OneVision 0.5B / 7B layer shapes, against this machine's measured DRAM read bandwidth.
 *
 * Usage: bench_gemv [--quick] [--out FILE]   (default FILE: bench/gemv.md; --quick: a fast smoke run with small
 *        working sets and fewer shapes, written only with --out)
 * What it measures:
 *   1. DRAM read bandwidth: a streaming-read loop (AVX-512 or AVX2 loads, summed) over a 1 GiB buffer, best of 3
 *      passes, on 1 and 2 threads.
 *   2. GEMV (M = 1) for every shape x format, 1 and 2 threads: effective GB/s = weight bytes of the blob / time,
 *      and its fraction of the DRAM bandwidth at the same thread count; W3/W4 speedup over F16 in the same run.
 *      Like a model that reads each matrix once per token, each call uses a different copy of the matrix: enough
 *      copies that the working set (>= 512 MiB and >= 8 copies, capped at 3 GiB) is far beyond the last-level
 *      cache. The weights are synthetic (random codes, valid scales): the kernels' speed does not depend on values.
 *   3. GEMM throughput (GFLOP/s = 2·M·n·k / time) for F16, W4A8 and W3G128 at M = 729 and 4725 tokens (one and
 *      several images' vision tokens in prefill) on all threads.
 * Output: a markdown report on stdout and in FILE, with CPU model, ISA level, thread counts and date. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/quant.h"
#include "runtime/util.h"
#include "tools/bench_common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef VLM_SRC_DIR
#define VLM_SRC_DIR "."
#endif

#define MIB (1024.0 * 1024.0)

struct copies {
    unsigned char *base;
    size_t stride;
    int count;
    struct vlm_qmat *m;
    struct vlm_qlayout L;
};

static void make_copies(enum vlm_qformat f, int64_t n, int64_t k, size_t min_ws, int min_copies, size_t cap,
                        struct copies *c) {
    const char *why = NULL;
    VLM_ASSERT(vlm_qlayout(f, n, k, &c->L, &why));
    c->stride = (c->L.total_bytes + 63) / 64 * 64;
    size_t want = (min_ws + c->stride - 1) / c->stride;
    if (want < (size_t)min_copies) want = (size_t)min_copies;
    if (want * c->stride > cap) want = cap / c->stride;
    if (want < 1) want = 1;
    c->count = (int)want;
    c->base = xalloc(c->stride * want);
    fill_blob(f, n, k, c->base, &c->L);
    for (int i = 1; i < c->count; i++) memcpy(c->base + c->stride * (size_t)i, c->base, c->stride);
    c->m = malloc(sizeof *c->m * (size_t)c->count);
    for (int i = 0; i < c->count; i++)
        VLM_ASSERT(vlm_qmat_view(f, n, k, c->base + c->stride * (size_t)i, c->L.total_bytes, &c->m[i], &why));
}

static void free_copies(struct copies *c) {
    free(c->base);
    free(c->m);
}

/* seconds per call: best sweep (one call per copy) of at least min_sweeps, or until min_s seconds have passed */
static double time_sweeps(struct cpu_qctx *ctx, const struct copies *c, float *y, const float *x, int64_t M,
                          int min_sweeps, double min_s) {
    if (cpu_qlinear(ctx, y, x, &c->m[0], NULL, M) != VLM_OK) exit(1); /* scratch, pool warm-up */
    double best = 1e30, t_all = vlm_time_ms();
    for (int s = 0; s < min_sweeps || vlm_time_ms() - t_all < min_s * 1e3; s++) {
        double t0 = vlm_time_ms();
        for (int i = 0; i < c->count; i++) cpu_qlinear(ctx, y, x, &c->m[i], NULL, M);
        double ms = (vlm_time_ms() - t0) / c->count;
        if (ms < best) best = ms;
        if (s > 50) break;
    }
    return best / 1e3;
}

/* ---------------------------------------------------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------------------------------------------------- */

struct shape {
    const char *what;
    int64_t n, k;
};

int main(int argc, char **argv) {
    bool quick;
    const char *out_path;
    if (bench_args(argc, argv, "bench_gemv", VLM_SRC_DIR "/bench/gemv.md", &quick, &out_path) != 0) return 2;

    struct vlm_pool *pools[2] = {vlm_pool_init(1), vlm_pool_init(2)};
    if (!pools[0] || !pools[1]) return 1;
    const int thr[2] = {1, 2};
    enum cpu_isa isa = cpu_isa_detect();
    char model[256], date[64];
    cpu_model(model, sizeof model);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));

    const size_t dram_bytes = quick ? (size_t)256 << 20 : (size_t)1 << 30;
    const size_t min_ws = quick ? (size_t)64 << 20 : (size_t)512 << 20;
    const int min_copies = quick ? 2 : 8;
    const size_t cap = (size_t)3 << 30;

    out("# cpu_qlinear GEMV / GEMM benchmark%s\n\n", quick ? " (--quick smoke run: small working sets)" : "");
    out("- CPU: %s (%ld online cores), ISA level used: %s\n", model, sysconf(_SC_NPROCESSORS_ONLN), cpu_isa_name(isa));
    out("- date: %s; threads: 1 and 2 (a vlm_pool each)\n", date);
    out("- GEMV working set: each timed call uses a different copy of the matrix, cycling through max(%d copies, "
        "%.0f MiB) (capped at %.0f MiB), far beyond the last-level cache, as a model that reads every matrix once "
        "per token; time = best sweep over all copies / copies\n",
        min_copies, (double)min_ws / MIB, (double)cap / MIB);
    out("- weights are synthetic (random codes, valid scales); GB/s = 10^9 bytes of the weight blob per second\n\n");

    /* 1. DRAM */
    double bw[2];
    {
        unsigned char *buf = xalloc(dram_bytes);
        for (size_t i = 0; i < dram_bytes; i += 4096) buf[i] = (unsigned char)i; /* fault every page in */
        memset(buf, 1, dram_bytes);
        out("## DRAM read bandwidth (%.0f MiB buffer, streaming %s loads, best of %d passes)\n\n",
            (double)dram_bytes / MIB, isa == CPU_ISA_AVX512 ? "AVX-512" : isa == CPU_ISA_AVX2 ? "AVX2" : "scalar",
            quick ? 2 : 3);
        out("| threads | GB/s |\n|---:|---:|\n");
        for (int p = 0; p < 2; p++) {
            bw[p] = dram_bw(pools[p], buf, dram_bytes, quick ? 2 : 3);
            out("| %d | %.1f |\n", thr[p], bw[p]);
        }
        out("\n");
        free(buf);
    }

    /* 2. GEMV */
    static const struct shape shapes_all[] = {
        {"0.5B q/o", 896, 896},      {"0.5B gate/up", 4864, 896}, {"0.5B down", 896, 4864},
        {"7B q/o", 3584, 3584},      {"7B gate/up", 18944, 3584}, {"7B down", 3584, 18944},
        {"0.5B lm_head", 151936, 896}};
    static const struct shape shapes_quick[] = {{"0.5B q/o", 896, 896}, {"0.5B gate/up", 4864, 896}};
    const struct shape *shapes = quick ? shapes_quick : shapes_all;
    int n_shapes = quick ? 2 : 7;
    static const enum vlm_qformat fmts[] = {VLM_QF_F16, VLM_QF_BF16, VLM_QF_Q8R, VLM_QF_W3G128, VLM_QF_W4G128,
                                            VLM_QF_W4A8};
    out("## GEMV (M = 1)\n\n");
    out("| shape (n x k) | format | blob MiB | copies | 1T us | 1T GB/s | 1T %%DRAM | 2T us | 2T GB/s | 2T %%DRAM | "
        "speedup vs F16 1T / 2T |\n");
    out("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int si = 0; si < n_shapes; si++) {
        const struct shape *sh = &shapes[si];
        float *x = xalloc((size_t)sh->k * sizeof(float)), *y = xalloc((size_t)sh->n * sizeof(float));
        for (int64_t i = 0; i < sh->k; i++) x[i] = (float)((int64_t)(rnd64() % 2001) - 1000) / 1000.0f;
        double t_f16[2] = {0, 0};
        for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
            enum vlm_qformat f = fmts[fi];
            struct copies c;
            make_copies(f, sh->n, sh->k, min_ws, min_copies, cap, &c);
            double t[2];
            for (int p = 0; p < 2; p++) {
                struct cpu_qctx ctx = {.pool = pools[p]};
                t[p] = time_sweeps(&ctx, &c, y, x, 1, quick ? 2 : 3, quick ? 0.05 : 0.3);
                cpu_qctx_free(&ctx);
            }
            if (f == VLM_QF_F16) t_f16[0] = t[0], t_f16[1] = t[1];
            double gbs[2] = {(double)c.L.total_bytes / 1e9 / t[0], (double)c.L.total_bytes / 1e9 / t[1]};
            char sp[64] = "";
            if (f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_W4A8)
                snprintf(sp, sizeof sp, "%.2fx / %.2fx", t_f16[0] / t[0], t_f16[1] / t[1]);
            out("| %s %lldx%lld | %s | %.1f | %d | %.1f | %.1f | %.0f%% | %.1f | %.1f | %.0f%% | %s |\n", sh->what,
                (long long)sh->n, (long long)sh->k, vlm_qformat_name(f), (double)c.L.total_bytes / MIB, c.count,
                t[0] * 1e6, gbs[0], 100 * gbs[0] / bw[0], t[1] * 1e6, gbs[1], 100 * gbs[1] / bw[1], sp);
            free_copies(&c);
        }
        free(x);
        free(y);
    }
    out("\n");

    /* 3. GEMM */
    static const struct shape gshapes[] = {{"0.5B q/o", 896, 896}, {"0.5B gate/up", 4864, 896}, {"7B q/o", 3584, 3584}};
    static const int64_t gM[] = {729, 4725};
    static const enum vlm_qformat gfmts[] = {VLM_QF_F16, VLM_QF_W4A8, VLM_QF_W3G128};
    out("## GEMM (prefill / vision tokens), %d threads\n\n", vlm_pool_size(pools[1]));
    out("| shape (n x k) | M | format | ms | GFLOP/s |\n|---|---:|---|---:|---:|\n");
    for (int si = 0; si < (quick ? 1 : 3); si++) {
        const struct shape *sh = &gshapes[si];
        for (int mi = 0; mi < (quick ? 1 : 2); mi++) {
            int64_t M = gM[mi];
            float *x = xalloc((size_t)(M * sh->k) * sizeof(float)), *y = xalloc((size_t)(M * sh->n) * sizeof(float));
            for (int64_t i = 0; i < M * sh->k; i++) x[i] = (float)((int64_t)(rnd64() % 2001) - 1000) / 1000.0f;
            double flop = 2.0 * (double)M * (double)sh->n * (double)sh->k;
            int reps = flop > 5e10 ? 1 : flop > 5e9 ? 2 : 4; /* the big ones run ~1 s each on 2 cores */
            for (size_t fi = 0; fi < 3; fi++) {
                struct copies c;
                make_copies(gfmts[fi], sh->n, sh->k, 0, 1, cap, &c);
                struct cpu_qctx ctx = {.pool = pools[1]};
                if (cpu_qlinear(&ctx, y, x, &c.m[0], NULL, M) != VLM_OK) return 1; /* warm-up */
                double best = 1e30;
                for (int r = 0; r < reps; r++) {
                    double t0 = vlm_time_ms();
                    cpu_qlinear(&ctx, y, x, &c.m[0], NULL, M);
                    double ms = vlm_time_ms() - t0;
                    if (ms < best) best = ms;
                }
                out("| %s %lldx%lld | %lld | %s | %.1f | %.1f |\n", sh->what, (long long)sh->n, (long long)sh->k,
                    (long long)M, vlm_qformat_name(gfmts[fi]), best, flop / 1e9 / (best / 1e3));
                cpu_qctx_free(&ctx);
                free_copies(&c);
            }
            free(x);
            free(y);
        }
    }
    out("\n");

    int rc = bench_write_report("bench_gemv", out_path);
    free(g_rep);
    vlm_pool_free(pools[0]);
    vlm_pool_free(pools[1]);
    return rc;
}
