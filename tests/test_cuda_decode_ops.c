/* test_cuda_decode_ops.c — the decoder's plumbing kernels (kernels/cuda/decode_ops.cu): the KV-cache append at a host
 * or device position, the device argmax (against vlm_argmax on finite data, and the contract of cuda_backend.h on
 * ties, infinities and NaN), and the row-broadcast add. All three are exact, so every check is bit for bit; cache
 * rows and output elements nobody should write keep a guard value. Skipped (one SKIP line) without a CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "runtime/pipeline.h"
#include "test.h"

#define GUARD_HALF 0x5a5au /* a finite FP16 (203.25) no kernel writes */
#define GUARD_F32 -1234.5f

/* Device 0, or NULL after marking the case skipped (no device, or one this build cannot use). */
static struct cuda_ctx *open_device(void) {
    struct cuda_ctx *c = NULL;
    const enum vlm_status st = cuda_ctx_create(0, &c);
    if (st == VLM_ERR_NO_DEVICE || st == VLM_ERR_UNSUPPORTED) {
        test_skip(st == VLM_ERR_NO_DEVICE ? "no CUDA device" : "CUDA device not supported by this build");
        return NULL;
    }
    return CHECK(st == VLM_OK && c) ? c : NULL;
}

/* A device copy of bytes of host; NULL (after a failed CHECK) when allocation or upload fails. */
static void *to_device(struct cuda_ctx *c, const void *host, size_t bytes) {
    void *d = NULL;
    if (!CHECK(cuda_malloc(c, &d, bytes, "test buffer") == VLM_OK)) return NULL;
    if (!CHECK(cuda_upload(c, d, host, bytes) == VLM_OK)) {
        cuda_free(c, d);
        return NULL;
    }
    return d;
}

/* ---------------------------------------------------------------------------------------------------------------
 * KV-cache append
 * ------------------------------------------------------------------------------------------------------------- */

/* cache (max_seq, width) halves, all GUARD_HALF; n_tok rows of src stored at pos (host) or *pos_dev (device); then
 * every cache row must be src's row or untouched. */
static void kv_case(struct cuda_ctx *c, int64_t max_seq, int64_t width, int64_t n_tok, int64_t pos, bool on_device) {
    const size_t cache_bytes = (size_t)(max_seq * width) * 2, src_bytes = (size_t)(n_tok * width) * 2;
    uint16_t *cache = malloc(cache_bytes), *src = malloc(src_bytes);
    for (int64_t i = 0; i < max_seq * width; i++) cache[i] = GUARD_HALF;
    for (int64_t i = 0; i < n_tok * width; i++) src[i] = (uint16_t)(0x3c00u + (uint16_t)(i * 7 % 1000)); /* 1.0 .. */
    const int32_t pos32 = (int32_t)pos;
    uint16_t *dcache = to_device(c, cache, cache_bytes), *dsrc = to_device(c, src, src_bytes);
    int32_t *dpos = on_device ? to_device(c, &pos32, sizeof pos32) : NULL;
    if (dcache && dsrc && (dpos || !on_device)) {
        /* with the position on the device, the host one is ignored: pass a wrong one */
        cuda_kv_store(c, dcache, dsrc, n_tok, width, on_device ? max_seq + 5 : pos, dpos);
        CHECK(cuda_ctx_sync(c, "kv_store") == VLM_OK);
        if (CHECK(cuda_download(c, cache, dcache, cache_bytes) == VLM_OK)) {
            int64_t bad = -1;
            for (int64_t r = 0; r < max_seq && bad < 0; r++)
                for (int64_t i = 0; i < width; i++) {
                    const bool written = r >= pos && r < pos + n_tok;
                    const uint16_t want = written ? src[(r - pos) * width + i] : GUARD_HALF;
                    if (cache[r * width + i] != want) {
                        bad = r;
                        break;
                    }
                }
            if (!CHECK(bad < 0))
                fprintf(stderr, "  kv_store max_seq=%lld width=%lld n_tok=%lld pos=%lld%s: row %lld wrong\n",
                        (long long)max_seq, (long long)width, (long long)n_tok, (long long)pos,
                        on_device ? " (device)" : "", (long long)bad);
        }
    }
    cuda_free(c, dcache), cuda_free(c, dsrc), cuda_free(c, dpos);
    free(cache), free(src);
}

TEST(cuda_kv_store_positions) {
    struct cuda_ctx *c = open_device();
    if (!c) return;
    kv_case(c, 37, 100, 5, 3, false);    /* a prefill chunk in the middle */
    kv_case(c, 37, 100, 37, 0, false);   /* the whole cache */
    kv_case(c, 37, 100, 1, 11, true);    /* a captured decode step */
    kv_case(c, 37, 100, 1, 36, true);    /* the last row */
    kv_case(c, 300, 1152, 1, 299, true); /* more than one block per row */
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * argmax
 * ------------------------------------------------------------------------------------------------------------- */

/* The device argmax of x (n); -1 after a failed CHECK. */
static int64_t device_argmax(struct cuda_ctx *c, const float *x, int64_t n) {
    float *dx = to_device(c, x, (size_t)n * 4);
    int32_t *dout = NULL, out = -1;
    if (dx && CHECK(cuda_malloc(c, (void **)&dout, sizeof out, "argmax out") == VLM_OK)) {
        cuda_argmax(c, dout, dx, n);
        if (!CHECK(cuda_ctx_sync(c, "argmax") == VLM_OK) || !CHECK(cuda_download(c, &out, dout, sizeof out) == VLM_OK))
            out = -1;
    }
    cuda_free(c, dx), cuda_free(c, dout);
    return out;
}

TEST(cuda_argmax_vs_ref) {
    struct cuda_ctx *c = open_device();
    if (!c) return;
    uint64_t rng = 0x510e527fade682d1ull;
    /* random finite data: the same index as vlm_argmax (torch.argmax); 151936 is Qwen2's vocabulary */
    const int64_t sizes[] = {1, 31, 1024, 1025, 5000, 151936};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        const int64_t n = sizes[s];
        float *x = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) x[i] = test_rng_normal(&rng) * 4.0f;
        const int64_t got = device_argmax(c, x, n), want = vlm_argmax(x, n);
        if (!CHECK_EQ(got, want)) fprintf(stderr, "  argmax n=%lld\n", (long long)n);
        free(x);
    }

    /* ties go to the lowest index: inside one thread's stride, across warps, across the whole range */
    const int64_t n = 5000;
    float *x = malloc((size_t)n * 4);
    const int64_t pairs[][2] = {{5, 700}, {3, 1030}, {1024, 2048}, {31, 32}, {4998, 4999}, {0, 4999}};
    for (size_t p = 0; p < sizeof pairs / sizeof *pairs; p++) {
        for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 97) * 0.01f;
        x[pairs[p][0]] = x[pairs[p][1]] = 7.0f;
        if (!CHECK_EQ(device_argmax(c, x, n), pairs[p][0]))
            fprintf(stderr, "  tie at %lld and %lld\n", (long long)pairs[p][0], (long long)pairs[p][1]);
    }
    for (int64_t i = 0; i < n; i++) x[i] = 2.5f;
    CHECK_EQ(device_argmax(c, x, n), 0); /* all equal */
    for (int64_t i = 0; i < n; i++) x[i] = -INFINITY;
    CHECK_EQ(device_argmax(c, x, n), 0); /* all -inf */
    x[4321] = -1e30f;
    CHECK_EQ(device_argmax(c, x, n), 4321);

    /* NaN never wins (the contract of cuda_backend.h; vlm_argmax differs only when x[0] is NaN) */
    for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 89);
    x[88] = 500.0f;
    x[0] = x[1] = x[2000] = NAN;
    CHECK_EQ(device_argmax(c, x, n), 88);
    x[0] = 0.0f;
    CHECK_EQ(device_argmax(c, x, n), vlm_argmax(x, n));
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
    CHECK_EQ(device_argmax(c, x, n), 0); /* all NaN */
    x[3333] = -INFINITY;
    CHECK_EQ(device_argmax(c, x, n), 3333);
    free(x);
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * row-broadcast add
 * ------------------------------------------------------------------------------------------------------------- */

TEST(cuda_add_rows_exact) {
    struct cuda_ctx *c = open_device();
    if (!c) return;
    uint64_t rng = 0x9b05688c2b3e6c1full;
    const int64_t M = 7, n = 333, G = 64; /* G guard floats on each side */
    float *y = malloc((size_t)(M * n + 2 * G) * 4), *b = malloc((size_t)n * 4), *ref = malloc((size_t)(M * n) * 4);
    for (int64_t i = 0; i < M * n + 2 * G; i++) y[i] = GUARD_F32;
    for (int64_t i = 0; i < M * n; i++) y[G + i] = test_rng_normal(&rng) * 3.0f;
    for (int64_t j = 0; j < n; j++) b[j] = test_rng_normal(&rng);
    for (int64_t i = 0; i < M * n; i++) ref[i] = y[G + i] + b[i % n];
    float *dy = to_device(c, y, (size_t)(M * n + 2 * G) * 4), *db = to_device(c, b, (size_t)n * 4);
    if (dy && db) {
        cuda_add_rows_f32(c, dy + G, db, M, n);
        CHECK(cuda_ctx_sync(c, "add_rows") == VLM_OK);
        if (CHECK(cuda_download(c, y, dy, (size_t)(M * n + 2 * G) * 4) == VLM_OK)) {
            CHECK_NEAR_TENSOR("add_rows", y + G, ref, M * n, 0.0, 0.0);
            bool guard_ok = true;
            for (int64_t i = 0; i < G; i++) guard_ok &= y[i] == GUARD_F32 && y[G + M * n + i] == GUARD_F32;
            CHECK(guard_ok);
        }
    }
    cuda_free(c, dy), cuda_free(c, db);
    free(y), free(b), free(ref);
    cuda_ctx_free(c);
}
