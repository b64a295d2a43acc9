/* bench_common.h — pieces shared by the benchmarks in tools/ (each is one translation unit, so these are static):
 * the report (stdout + a markdown file), a xorshift generator, aligned allocation that exits on failure, the DRAM
 * streaming-read probe, synthetic weight blobs, and the CPU model name. */
#ifndef VLM_BENCH_COMMON_H
#define VLM_BENCH_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/quant.h"
#include "runtime/util.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- report buffer: everything printed goes to stdout and to the file */
static char *g_rep;
static size_t g_rep_len, g_rep_cap;
__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int l = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (l < 0) return;
    if ((size_t)l >= sizeof line) l = sizeof line - 1;
    fputs(line, stdout);
    fflush(stdout);
    if (g_rep_len + (size_t)l + 1 > g_rep_cap) {
        g_rep_cap = (g_rep_cap + (size_t)l + 1) * 2;
        g_rep = realloc(g_rep, g_rep_cap);
        VLM_ASSERT(g_rep);
    }
    memcpy(g_rep + g_rep_len, line, (size_t)l + 1);
    g_rep_len += (size_t)l;
}

static uint64_t g_seed = 0x243F6A8885A308D3ull;
static uint64_t rnd64(void) {
    g_seed ^= g_seed << 13, g_seed ^= g_seed >> 7, g_seed ^= g_seed << 17;
    return g_seed;
}

static void *xalloc(size_t bytes) {
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* ---------------------------------------------------------------------------------------------------------------
 * DRAM read bandwidth
 * ------------------------------------------------------------------------------------------------------------- */

struct stream_job {
    const unsigned char *buf;
    size_t bytes;
    uint64_t sums[64];
};

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static uint64_t read512(const unsigned char *p, size_t bytes) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= bytes; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
}

__attribute__((target("avx2"))) static uint64_t read256(const unsigned char *p, size_t bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= bytes; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    return t[0] + t[1] + t[2] + t[3];
}
#endif

static uint64_t read_scalar(const unsigned char *p, size_t bytes) {
    uint64_t s = 0;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        s += v;
    }
    return s;
}

static void stream_thread(void *ctx, int t, int nt) {
    struct stream_job *j = ctx;
    size_t per = j->bytes / (size_t)nt / 256 * 256;
    const unsigned char *p = j->buf + per * (size_t)t;
    uint64_t s;
#if defined(__x86_64__)
    enum cpu_isa isa = cpu_isa_detect();
    if (isa == CPU_ISA_AVX512) s = read512(p, per);
    else if (isa == CPU_ISA_AVX2) s = read256(p, per);
    else s = read_scalar(p, per);
#else
    s = read_scalar(p, per);
#endif
    j->sums[t] = s;
}

/* best-of-passes read bandwidth in GB/s (10^9 bytes) */
static double dram_bw(struct vlm_pool *pool, const unsigned char *buf, size_t bytes, int passes) {
    struct stream_job j = {.buf = buf, .bytes = bytes};
    double best = 1e30;
    vlm_pool_run(pool, stream_thread, &j); /* warm-up: page tables, clocks */
    for (int r = 0; r < passes; r++) {
        double t0 = vlm_time_ms();
        vlm_pool_run(pool, stream_thread, &j);
        double ms = vlm_time_ms() - t0;
        if (ms < best) best = ms;
    }
    volatile uint64_t sink = j.sums[0];
    (void)sink;
    return (double)(bytes / (size_t)vlm_pool_size(pool) / 256 * 256 * (size_t)vlm_pool_size(pool)) / 1e9 /
           (best / 1e3);
}

/* ---------------------------------------------------------------------------------------------------------------
 * synthetic weights: random codes, valid scales and zeros (the speed of the kernels does not depend on values)
 * ------------------------------------------------------------------------------------------------------------- */

static void fill_blob(enum vlm_qformat f, int64_t n, int64_t k, unsigned char *blob, const struct vlm_qlayout *L) {
    uint64_t *p = (uint64_t *)blob;
    size_t words = L->total_bytes / 8;
    for (size_t i = 0; i < words; i++) p[i] = rnd64();
    if (f == VLM_QF_F16 || f == VLM_QF_BF16) /* clear the top exponent bit: finite values below 2 in magnitude */
        for (size_t i = 0; i < words; i++) p[i] &= 0xBFFFBFFFBFFFBFFFull;
    if (f == VLM_QF_F32) {
        float *w = (float *)blob;
        for (int64_t i = 0; i < n * k; i++) w[i] = (float)((int64_t)(rnd64() % 2001) - 1000) / 1000.0f;
    }
    if (f == VLM_QF_Q8R || f == VLM_QF_W4A8) {
        float s = 0.01f;
        for (int64_t r = 0; r < n; r++) memcpy(blob + L->scales_off + 4 * (size_t)r, &s, 4);
    }
    if (f == VLM_QF_W3G128 || f == VLM_QF_W4G128) {
        uint16_t s = vlm_f32_to_f16(0.01f);
        for (size_t i = 0; i < L->scales_bytes / 2; i++) memcpy(blob + L->scales_off + 2 * i, &s, 2);
        for (size_t i = 0; i < L->zeros_bytes; i++) blob[L->zeros_off + i] = (unsigned char)(i % (f == VLM_QF_W3G128 ? 8 : 16));
    }
}

static void cpu_model(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *v = strchr(line, ':');
        if (!v) break;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        snprintf(buf, cap, "%s", v);
        break;
    }
    fclose(f);
}


/* Parses [--quick] [--out FILE]; without --out a full run writes default_out, a quick one writes nothing.
 * Returns 0, or 2 after printing the usage line. */
static int bench_args(int argc, char **argv, const char *name, const char *default_out, bool *quick,
                      const char **out_path) {
    *quick = false;
    *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) *quick = true;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) *out_path = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--out FILE]\n", name);
            return 2;
        }
    }
    if (!*out_path && !*quick) *out_path = default_out;
    return 0;
}

/* Writes everything out() printed to path (NULL: nothing). Returns 0, or 1 after a message naming the file. */
static int bench_write_report(const char *name, const char *path) {
    if (!path) return 0;
    FILE *f = fopen(path, "w");
    bool ok = f && fwrite(g_rep, 1, g_rep_len, f) == g_rep_len;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) {
        fprintf(stderr, "%s: cannot write %s\n", name, path);
        return 1;
    }
    fprintf(stderr, "%s: wrote %s\n", name, path);
    return 0;
}

#endif
