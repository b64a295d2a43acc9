/* test_cuda_ops.c — the CUDA backend's plumbing (kernels/cuda/backend_cuda.cu), elementwise/norm ops (ops.cu) and
 * attention (attention.cu) against the CPU references of kernels/ops.h and kernels/quant.h, on random data with
 * awkward shapes (n not a multiple of 32 or 128, one row and 37 rows, strides wider than the dense rows, GQA ratios 1,
 * 2 and 7, causal and not, nonzero q_pos0, 1 to ~4100 keys). Inputs that the GPU reads as FP16 are rounded to FP16
 * first, so the reference sees exactly what the GPU sees; outputs are checked with CHECK_NEAR_TENSOR (which also
 * fails on any NaN/Inf the reference does not have) and guard bands around them must stay untouched.
 * Every case starts by opening device 0 and is skipped (one SKIP line) when there is no CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "test.h"

/* Tolerances (|got − ref| <= ATOL + RTOL·|ref|), the reference being FP32/double on the same FP16-rounded inputs.
 * FP16 outputs: rounding the kernel's FP32 result to the nearest FP16 is within 2^-11 relative (4.9e-4); RTOL 2^-10
 * leaves as much again for the FP32-vs-double arithmetic before it (~1e-6 relative). */
#define TOL_CUDA_FP16_RTOL 9.765625e-4
/* norms: FP32 block sums vs double sums (relative ~n·2^-24 at worst); ATOL for outputs near 0, where b + g·x̂
 * cancels in LayerNorm (a few float ulps of |b| + |g·x̂| ~ 10). */
#define TOL_CUDA_NORM_ATOL 1e-5
/* GELU: for x << 0 both forms compute 1 + tanh (or erf) ≈ 0, where float's ~1.2e-7 absolute error near −1 is scaled
 * by 0.5|x| <= ~16; SwiGLU has no cancellation but shares the bound. */
#define TOL_CUDA_ACT_ATOL 4e-6
/* RoPE: angles are bit-identical (same inv_freq table, same float product), device sinf/cosf are within 2 ulps,
 * and a·cos − b·sin may cancel: a few float ulps of |a| + |b| <= ~10. */
#define TOL_CUDA_ROPE_ATOL 1e-5
/* attention (FP16 out): FP32 dot products over hd <= 256 (score error ~1e-5 at the sharpest softmax tested), FP32
 * sums of up to ~4100 weighted values (typically sqrt(n)·2^-24·|v|, bounded by n·2^-24 ≈ 2.4e-4 · |v|max in the
 * worst order); 1e-4 absolute is ~10x the typical error and still far below what a masking or indexing slip moves
 * (>= 1/n_visible of a value ~1). */
#define TOL_CUDA_ATTN_ATOL 1e-4
/* embedding rows and the FP32 residual add: the same single float operations as the reference: exact */
#define TOL_CUDA_EXACT 0.0

#define GUARD 64              /* guard elements on each side of an output buffer */
#define GUARD_HALF 0x5a5au    /* an FP16 guard value (a finite 203.25) no kernel writes */
#define GUARD_F32 -1234.5f

/* ---------------------------------------------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------------------------------------------- */

/* Opens device 0, or marks the case skipped (no device, or one the backend does not support) and returns NULL. */
static struct cuda_ctx *ctx_open(void) {
    struct cuda_ctx *c = NULL;
    enum vlm_status st = cuda_ctx_create(0, &c);
    if (st == VLM_ERR_NO_DEVICE) {
        test_skip("no CUDA device");
        return NULL;
    }
    if (st == VLM_ERR_UNSUPPORTED) {
        test_skip("CUDA device not supported by this build (compute capability < 8.0 or no kernel image)");
        return NULL;
    }
    if (!CHECK(st == VLM_OK && c)) return NULL;
    return c;
}

/* Device buffers of one case, freed together. A failed allocation or copy records a failure and clears ok. */
struct dev_set {
    struct cuda_ctx *c;
    void *p[32];
    int n;
    bool ok;
};

/* bytes of device memory holding a copy of host (zeroed when host is NULL) */
static void *dev_put(struct dev_set *s, const void *host, size_t bytes) {
    void *d = NULL;
    if (!s->ok || !CHECK(s->n < 32) || !CHECK(cuda_malloc(s->c, &d, bytes, "test buffer") == VLM_OK)) {
        s->ok = false;
        return NULL;
    }
    s->p[s->n++] = d;
    enum vlm_status st = host ? cuda_upload(s->c, d, host, bytes) : cuda_memset0(s->c, d, bytes);
    if (!CHECK(st == VLM_OK)) s->ok = false;
    return d;
}

static bool dev_get(struct dev_set *s, void *host, const void *dev, size_t bytes) {
    if (!s->ok || !CHECK(cuda_download(s->c, host, dev, bytes) == VLM_OK)) s->ok = false;
    return s->ok;
}

static void dev_free_all(struct dev_set *s) {
    for (int i = 0; i < s->n; i++) cuda_free(s->c, s->p[i]);
    s->n = 0;
}

/* n normal values · scale + offset, rounded to FP16: h gets the halves, f (may be NULL) the same values as floats */
static void rand_half(uint64_t *rng, uint16_t *h, float *f, int64_t n, float scale, float offset) {
    for (int64_t i = 0; i < n; i++) {
        h[i] = vlm_f32_to_f16(test_rng_normal(rng) * scale + offset);
        if (f) f[i] = vlm_f16_to_f32(h[i]);
    }
}

static void half_to_float(float *f, const uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) f[i] = vlm_f16_to_f32(h[i]);
}

static bool all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* the guard halves around an output of n halves (buffer: GUARD + n + GUARD) */
static bool guard_half_ok(const uint16_t *buf, int64_t n) {
    for (int64_t i = 0; i < GUARD; i++)
        if (buf[i] != GUARD_HALF || buf[GUARD + n + i] != GUARD_HALF) return false;
    return true;
}

static bool guard_f32_ok(const float *buf, int64_t n) {
    for (int64_t i = 0; i < GUARD; i++)
        if (buf[i] != GUARD_F32 || buf[GUARD + n + i] != GUARD_F32) return false;
    return true;
}

/* a host buffer of GUARD + n + GUARD halves, all GUARD_HALF */
static uint16_t *guarded_half(int64_t n) {
    uint16_t *b = malloc((size_t)(n + 2 * GUARD) * sizeof *b);
    for (int64_t i = 0; i < n + 2 * GUARD; i++) b[i] = GUARD_HALF;
    return b;
}

static float *guarded_f32(int64_t n) {
    float *b = malloc((size_t)(n + 2 * GUARD) * sizeof *b);
    for (int64_t i = 0; i < n + 2 * GUARD; i++) b[i] = GUARD_F32;
    return b;
}

static bool is_nan_half(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

/* ---------------------------------------------------------------------------------------------------------------
 * context, memory, conversions
 * ------------------------------------------------------------------------------------------------------------- */

TEST(cuda_ctx_info_memory_timer) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    struct cuda_device_info info;
    cuda_ctx_info(c, &info);
    CHECK(info.name[0] != 0);
    CHECK(info.cc_major >= 8);
    CHECK(info.n_sm > 0);
    CHECK(info.total_bytes > 0 && info.free_bytes > 0 && info.free_bytes <= info.total_bytes);
    CHECK(info.peak_gbps > 50 && info.peak_gbps < 100000); /* any sm_80+ part: hundreds to thousands of GB/s */
    if (test_verbose())
        fprintf(stderr, "  %s cc %d.%d, %d SMs, %zu MiB free of %zu, peak %.0f GB/s\n", info.name, info.cc_major,
                info.cc_minor, info.n_sm, info.free_bytes >> 20, info.total_bytes >> 20, info.peak_gbps);

    /* upload, memset0 of a middle part, download */
    struct dev_set s = {.c = c, .ok = true};
    uint8_t host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (uint8_t)(i * 7 + 3);
    uint8_t *d = dev_put(&s, host, sizeof host);
    if (s.ok) {
        CHECK(cuda_memset0(c, d + 100, 300) == VLM_OK);
        CHECK(cuda_ctx_sync(c, "memset test") == VLM_OK);
        if (dev_get(&s, back, d, sizeof back))
            for (int i = 0; i < 1000; i++)
                if (!CHECK(back[i] == (i >= 100 && i < 400 ? 0 : host[i]))) break;
    }
    /* zero-byte calls are no-ops */
    void *z = (void *)&host;
    CHECK(cuda_malloc(c, &z, 0, "nothing") == VLM_OK && z == NULL);
    CHECK(cuda_upload(c, d, host, 0) == VLM_OK && cuda_download(c, back, d, 0) == VLM_OK);
    /* timer around some work */
    double ms = -1;
    CHECK(cuda_timer_begin(c) == VLM_OK);
    if (s.ok) CHECK(cuda_memset0(c, d, sizeof host) == VLM_OK);
    CHECK(cuda_timer_end(c, &ms) == VLM_OK);
    CHECK(isfinite(ms) && ms >= 0);
    CHECK(cuda_ctx_reserve(c, 1 << 20, "test scratch") == VLM_OK);
    CHECK(cuda_ctx_reserve(c, 1000, "test scratch (smaller: kept)") == VLM_OK);
    CHECK(cuda_ctx_sync(c, "info test") == VLM_OK);
    dev_free_all(&s);
    cuda_ctx_free(c);
    cuda_ctx_free(NULL);
    cuda_free(NULL, NULL);
    cuda_graph_free(NULL);
}

TEST(cuda_malloc_absurd_is_oom_one_line) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    void *p = (void *)&c; /* must stay untouched */
    char buf[512];
    test_capture_begin();
    enum vlm_status st = cuda_malloc(c, &p, (size_t)1 << 60, "absurd test buffer");
    test_capture_end(buf, sizeof buf);
    CHECK(st == VLM_ERR_OOM);
    CHECK(p == (void *)&c);
    CHECK_ERROR_LINE(buf, "absurd test buffer", "1152921504606846976 bytes");
    /* the scratch arena reports the same way */
    test_capture_begin();
    st = cuda_ctx_reserve(c, (size_t)1 << 60, "absurd scratch");
    test_capture_end(buf, sizeof buf);
    CHECK(st == VLM_ERR_OOM);
    CHECK_ERROR_LINE(buf, "absurd scratch", NULL);
    /* and the context still works afterwards */
    struct dev_set s = {.c = c, .ok = true};
    float one = 1.0f, back = 0;
    float *d = dev_put(&s, &one, sizeof one);
    if (dev_get(&s, &back, d, sizeof back)) CHECK(back == 1.0f);
    CHECK(cuda_ctx_sync(c, "after OOM") == VLM_OK);
    dev_free_all(&s);
    cuda_ctx_free(c);
}

TEST(cuda_f16_conversions_exact) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x6a09e667f3bcc908ull;
    struct dev_set s = {.c = c, .ok = true};
    /* every half -> float (exact), and back (exact again for every non-NaN) */
    const int64_t NH = 65536;
    uint16_t *h = malloc(NH * sizeof *h), *h2 = malloc(NH * sizeof *h2);
    float *f = malloc(NH * sizeof *f);
    for (int64_t i = 0; i < NH; i++) h[i] = (uint16_t)i;
    uint16_t *dh = dev_put(&s, h, NH * sizeof *h);
    float *df = dev_put(&s, NULL, NH * sizeof *f);
    uint16_t *dh2 = dev_put(&s, NULL, NH * sizeof *h2);
    if (s.ok) {
        cuda_f16_to_f32(c, df, dh, NH);
        cuda_f32_to_f16(c, dh2, df, NH);
        CHECK(cuda_ctx_sync(c, "f16 round trip") == VLM_OK);
    }
    if (dev_get(&s, f, df, NH * sizeof *f) && dev_get(&s, h2, dh2, NH * sizeof *h2)) {
        int64_t bad = 0;
        for (int64_t i = 0; i < NH; i++) {
            float want = vlm_f16_to_f32(h[i]);
            bool ok = is_nan_half(h[i]) ? isnan(f[i]) && is_nan_half(h2[i])
                                        : memcmp(&f[i], &want, 4) == 0 && h2[i] == h[i];
            if (!ok && bad++ < 5) FAIL("half 0x%04x: got %a and back 0x%04x, want %a", h[i], f[i], h2[i], want);
        }
        CHECK_EQ(bad, 0);
    }
    /* float -> half vs vlm_f32_to_f16: random bit patterns (every exponent), exact ties between neighbouring halves
     * (normal and subnormal: round half to even), the overflow edge and the specials */
    const int64_t NF = 200000;
    float *x = malloc(NF * sizeof *x);
    uint16_t *got = malloc(NF * sizeof *got);
    int64_t n = 0;
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                             1e-8f, 2.9802322e-8f /* 2^-25: tie to 0 */, 5.9604645e-8f, 3e-8f, 1.0f, 3e38f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[n++] = special[i];
    while (n < NF / 2) {
        uint32_t u = test_rng_u32(&rng);
        memcpy(&x[n++], &u, 4);
    }
    while (n < NF) {
        uint16_t a = (uint16_t)(test_rng_u32(&rng) % 0x7bffu); /* finite, below the largest: a + 1 is finite */
        float lo = vlm_f16_to_f32(a), hi = vlm_f16_to_f32((uint16_t)(a + 1));
        float mid = lo + (hi - lo) * 0.5f; /* exact: 12 significant bits */
        x[n++] = (test_rng_u32(&rng) & 1) ? mid : -mid;
    }
    float *dx = dev_put(&s, x, NF * sizeof *x);
    uint16_t *dg = dev_put(&s, NULL, NF * sizeof *got);
    if (s.ok) {
        cuda_f32_to_f16(c, dg, dx, NF);
        CHECK(cuda_ctx_sync(c, "f32 to f16") == VLM_OK);
    }
    if (dev_get(&s, got, dg, NF * sizeof *got)) {
        int64_t bad = 0;
        for (int64_t i = 0; i < NF; i++) {
            uint16_t want = vlm_f32_to_f16(x[i]);
            bool ok = isnan(x[i]) ? is_nan_half(got[i]) : got[i] == want;
            if (!ok && bad++ < 5) FAIL("float %a: got 0x%04x, want 0x%04x", x[i], got[i], want);
        }
        CHECK_EQ(bad, 0);
    }
    free(h), free(h2), free(f), free(x), free(got);
    dev_free_all(&s);
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * norms and elementwise ops
 * ------------------------------------------------------------------------------------------------------------- */

/* layer = 0: RMSNorm, 1: LayerNorm; one (M, n) case */
static void norm_case(struct cuda_ctx *c, uint64_t *rng, int layer, int64_t M, int64_t n) {
    struct dev_set s = {.c = c, .ok = true};
    float *x = malloc((size_t)(M * n) * 4), *g = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
    float *ref = malloc((size_t)(M * n) * 4), *got = malloc((size_t)(M * n) * 4);
    uint16_t *y = guarded_half(M * n);
    /* LayerNorm rows get a mean of 3 (the two-pass variance must not cancel) */
    for (int64_t i = 0; i < M * n; i++) x[i] = test_rng_normal(rng) * 2.0f + (layer ? 3.0f : 0.0f);
    for (int64_t i = 0; i < n; i++) g[i] = 1.0f + 0.3f * test_rng_normal(rng), b[i] = test_rng_normal(rng);
    const float eps = 1e-6f;
    float *dx = dev_put(&s, x, (size_t)(M * n) * 4), *dg = dev_put(&s, g, (size_t)n * 4);
    float *db = dev_put(&s, b, (size_t)n * 4);
    uint16_t *dy = dev_put(&s, y, (size_t)(M * n + 2 * GUARD) * 2);
    if (s.ok) {
        if (layer) cuda_layernorm(c, dy + GUARD, dx, dg, db, M, n, eps);
        else cuda_rmsnorm(c, dy + GUARD, dx, dg, M, n, eps);
        CHECK(cuda_ctx_sync(c, "norm") == VLM_OK);
    }
    if (dev_get(&s, y, dy, (size_t)(M * n + 2 * GUARD) * 2)) {
        if (layer) cpu_layernorm_ref(ref, x, g, b, M, n, eps);
        else cpu_rmsnorm_ref(ref, x, g, M, n, eps);
        half_to_float(got, y + GUARD, M * n);
        char label[96];
        snprintf(label, sizeof label, "%s M=%lld n=%lld", layer ? "layernorm" : "rmsnorm", (long long)M, (long long)n);
        CHECK_NEAR_TENSOR(label, got, ref, M * n, TOL_CUDA_NORM_ATOL, TOL_CUDA_FP16_RTOL);
        CHECK(all_finite(got, M * n));
        CHECK(guard_half_ok(y, M * n));
    }
    free(x), free(g), free(b), free(ref), free(got), free(y);
    dev_free_all(&s);
}

TEST(cuda_rmsnorm_layernorm_vs_ref) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0xbb67ae8584caa73bull;
    const int64_t Ms[] = {1, 37}, ns[] = {64, 897, 1152, 3584};
    for (int layer = 0; layer < 2; layer++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 4; j++) norm_case(c, &rng, layer, Ms[i], ns[j]);
    cuda_ctx_free(c);
}

enum act_op { ACT_GELU_TANH, ACT_GELU_ERF, ACT_SWIGLU };

static void act_case(struct cuda_ctx *c, uint64_t *rng, enum act_op op, int64_t n) {
    struct dev_set s = {.c = c, .ok = true};
    uint16_t *a = guarded_half(n), *b = malloc((size_t)n * 2);
    float *ref = malloc((size_t)n * 4), *bf = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
    rand_half(rng, a + GUARD, ref, n, 3.0f, 0.0f); /* |x| up to ~15: both tails of the activations */
    rand_half(rng, b, bf, n, 1.0f, 0.0f);
    uint16_t *da = dev_put(&s, a, (size_t)(n + 2 * GUARD) * 2), *dbb = dev_put(&s, b, (size_t)n * 2);
    if (s.ok) {
        if (op == ACT_GELU_TANH) cuda_gelu_tanh(c, da + GUARD, n);
        else if (op == ACT_GELU_ERF) cuda_gelu_erf(c, da + GUARD, n);
        else cuda_swiglu(c, da + GUARD, dbb, n);
        CHECK(cuda_ctx_sync(c, "activation") == VLM_OK);
    }
    if (dev_get(&s, a, da, (size_t)(n + 2 * GUARD) * 2)) {
        if (op == ACT_GELU_TANH) cpu_gelu_tanh_ref(ref, n);
        else if (op == ACT_GELU_ERF) cpu_gelu_erf_ref(ref, n);
        else cpu_swiglu_ref(ref, bf, n);
        half_to_float(got, a + GUARD, n);
        static const char *names[] = {"gelu_tanh", "gelu_erf", "swiglu"};
        char label[64];
        snprintf(label, sizeof label, "%s n=%lld", names[op], (long long)n);
        CHECK_NEAR_TENSOR(label, got, ref, n, TOL_CUDA_ACT_ATOL, TOL_CUDA_FP16_RTOL);
        CHECK(all_finite(got, n));
        CHECK(guard_half_ok(a, n));
    }
    free(a), free(b), free(ref), free(bf), free(got);
    dev_free_all(&s);
}

TEST(cuda_activations_vs_ref) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x3c6ef372fe94f82bull;
    const int64_t ns[] = {1, 1000, 100003};
    for (int op = 0; op < 3; op++)
        for (int i = 0; i < 3; i++) act_case(c, &rng, (enum act_op)op, ns[i]);
    cuda_ctx_free(c);
}

TEST(cuda_add_f32_exact) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0xa54ff53a5f1d36f1ull;
    struct dev_set s = {.c = c, .ok = true};
    const int64_t n = 100003;
    float *y = guarded_f32(n), *x = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) y[GUARD + i] = test_rng_normal(&rng) * 10, x[i] = test_rng_normal(&rng);
    for (int64_t i = 0; i < n; i++) ref[i] = y[GUARD + i] + x[i];
    float *dy = dev_put(&s, y, (size_t)(n + 2 * GUARD) * 4), *dx = dev_put(&s, x, (size_t)n * 4);
    if (s.ok) {
        cuda_add_f32(c, dy + GUARD, dx, n);
        CHECK(cuda_ctx_sync(c, "add") == VLM_OK);
    }
    if (dev_get(&s, y, dy, (size_t)(n + 2 * GUARD) * 4)) {
        CHECK_NEAR_TENSOR("add_f32", y + GUARD, ref, n, TOL_CUDA_EXACT, TOL_CUDA_EXACT);
        CHECK(guard_f32_ok(y, n));
    }
    free(y), free(x), free(ref);
    dev_free_all(&s);
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * RoPE
 * ------------------------------------------------------------------------------------------------------------- */

/* x (n_tok, stride) halves, the rotated part (n_heads, hd) at the start of each row; extra = stride − n_heads·hd
 * halves of padding that must stay as they were. pos_dev_val >= 0: the position comes from the device. */
static void rope_case(struct cuda_ctx *c, uint64_t *rng, int64_t n_tok, int64_t n_heads, int64_t hd, int64_t extra,
                      int64_t pos0, int32_t pos_dev_val, float theta) {
    struct dev_set s = {.c = c, .ok = true};
    const int64_t dense = n_heads * hd, stride = dense + extra, nx = n_tok * stride;
    uint16_t *x = malloc((size_t)nx * 2), *back = malloc((size_t)nx * 2);
    float *ref = malloc((size_t)(n_tok * dense) * 4), *got = malloc((size_t)(n_tok * dense) * 4);
    rand_half(rng, x, NULL, nx, 1.5f, 0.0f);
    for (int64_t t = 0; t < n_tok; t++) half_to_float(ref + t * dense, x + t * stride, dense);
    uint16_t *dx = dev_put(&s, x, (size_t)nx * 2);
    int32_t *dpos = pos_dev_val >= 0 ? dev_put(&s, &pos_dev_val, sizeof pos_dev_val) : NULL;
    if (s.ok) {
        cuda_rope_neox(c, dx, n_tok, n_heads, hd, stride, pos0, dpos, theta);
        CHECK(cuda_ctx_sync(c, "rope") == VLM_OK);
    }
    if (dev_get(&s, back, dx, (size_t)nx * 2)) {
        cpu_rope_neox_ref(ref, n_tok, n_heads, hd, pos_dev_val >= 0 ? pos_dev_val : pos0, theta);
        for (int64_t t = 0; t < n_tok; t++) half_to_float(got + t * dense, back + t * stride, dense);
        char label[128];
        snprintf(label, sizeof label, "rope n_tok=%lld heads=%lld hd=%lld stride=%lld pos0=%lld%s", (long long)n_tok,
                 (long long)n_heads, (long long)hd, (long long)stride,
                 (long long)(pos_dev_val >= 0 ? pos_dev_val : pos0), pos_dev_val >= 0 ? " (device)" : "");
        CHECK_NEAR_TENSOR(label, got, ref, n_tok * dense, TOL_CUDA_ROPE_ATOL, TOL_CUDA_FP16_RTOL);
        CHECK(all_finite(got, n_tok * dense));
        bool pad_ok = true;
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t i = dense; i < stride; i++) pad_ok &= back[t * stride + i] == x[t * stride + i];
        CHECK(pad_ok);
    }
    free(x), free(back), free(ref), free(got);
    dev_free_all(&s);
}

TEST(cuda_rope_neox_vs_ref) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x510e527fade682d1ull;
    rope_case(c, &rng, 1, 14, 64, 2 * 2 * 64, 4097, -1, 1e6f); /* decode: q of a fused QKV row (0.5B shapes) */
    rope_case(c, &rng, 37, 2, 72, 10, 0, -1, 10000.0f);
    rope_case(c, &rng, 37, 4, 128, 0, 9000, -1, 1e6f);         /* dense, far positions */
    rope_case(c, &rng, 5, 2, 64, 6, 0, 123, 1e6f);             /* position from the device (pos0 ignored) */
    rope_case(c, &rng, 3, 1, 256, 2, 31, -1, 10000.0f);        /* the largest hd */
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * embedding
 * ------------------------------------------------------------------------------------------------------------- */

static void embed_case(struct cuda_ctx *c, uint64_t *rng, enum vlm_qformat f, int64_t n_vocab, int64_t d) {
    struct dev_set s = {.c = c, .ok = true};
    struct vlm_qlayout L;
    const char *why = NULL;
    if (!CHECK(vlm_qlayout(f, n_vocab, d, &L, &why))) return;
    float *w = malloc((size_t)(n_vocab * d) * 4);
    for (int64_t i = 0; i < n_vocab * d; i++) w[i] = test_rng_normal(rng) * 0.5f;
    void *blob = aligned_alloc(VLM_QALIGN, (L.total_bytes + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN);
    vlm_quantize_ref(f, w, n_vocab, d, blob);
    struct vlm_qmat hm;
    CHECK(vlm_qmat_view(f, n_vocab, d, blob, L.total_bytes, &hm, &why));
    enum { N_IDS = 39 };
    int32_t ids[N_IDS];
    for (int i = 0; i < N_IDS - 2; i++) ids[i] = (int32_t)(test_rng_u32(rng) % (uint32_t)n_vocab);
    ids[N_IDS - 2] = 0, ids[N_IDS - 1] = (int32_t)(n_vocab - 1);
    float *ref = malloc((size_t)(N_IDS * d) * 4), *out = guarded_f32(N_IDS * d);
    for (int i = 0; i < N_IDS; i++) vlm_dequantize_row_ref(&hm, ids[i], ref + i * d);

    uint8_t *dblob = dev_put(&s, blob, L.total_bytes);
    int32_t *dids = dev_put(&s, ids, sizeof ids);
    float *dout = dev_put(&s, out, (size_t)(N_IDS * d + 2 * GUARD) * 4);
    if (s.ok) {
        struct cuda_qmat dm = {.fmt = f, .n = n_vocab, .k = d, .blob = dblob, .codes = dblob + L.codes_off,
                               .scales = L.scales_bytes ? dblob + L.scales_off : NULL,
                               .zeros = L.zeros_bytes ? dblob + L.zeros_off : NULL};
        cuda_embed(c, dout + GUARD, dids, N_IDS, &dm);
        CHECK(cuda_ctx_sync(c, "embed") == VLM_OK);
        if (dev_get(&s, out, dout, (size_t)(N_IDS * d + 2 * GUARD) * 4)) {
            char label[64];
            snprintf(label, sizeof label, "embed %s %lldx%lld", vlm_qformat_name(f), (long long)n_vocab, (long long)d);
            CHECK_NEAR_TENSOR(label, out + GUARD, ref, N_IDS * d, TOL_CUDA_EXACT, TOL_CUDA_EXACT);
            CHECK(guard_f32_ok(out, N_IDS * d));
        }
        /* ids outside the table: documented as the caller's bug; they read as NaN rows, without a fault */
        const int32_t bad[2] = {-1, (int32_t)n_vocab};
        if (s.ok && CHECK(cuda_upload(c, dids, bad, sizeof bad) == VLM_OK)) {
            cuda_embed(c, dout + GUARD, dids, 2, &dm);
            CHECK(cuda_ctx_sync(c, "embed out of range") == VLM_OK);
            if (dev_get(&s, out, dout, (size_t)(2 * d + 2 * GUARD) * 4)) {
                bool nan_rows = true;
                for (int64_t i = 0; i < 2 * d; i++) nan_rows &= isnan(out[GUARD + i]) != 0;
                CHECK(nan_rows);
            }
        }
    }
    free(w), free(blob), free(ref), free(out);
    dev_free_all(&s);
}

TEST(cuda_embed_formats_exact) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x9b05688c2b3e6c1full;
    embed_case(c, &rng, VLM_QF_F16, 300, 200);
    embed_case(c, &rng, VLM_QF_Q8R, 300, 200);
    embed_case(c, &rng, VLM_QF_W3G128, 300, 256);
    embed_case(c, &rng, VLM_QF_W4G128, 300, 384);
    embed_case(c, &rng, VLM_QF_W4A8, 300, 256);
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * attention
 * ------------------------------------------------------------------------------------------------------------- */

struct att_case {
    int64_t n_q, n_kv, n_heads, n_kv_heads, hd, q_pos0;
    int causal;
    int64_t q_extra, kv_extra; /* halves of padding per token beyond the dense q / k,v rows */
    float q_scale;             /* larger: sharper softmax */
};

/* Host data of one case: q (n_q, q_stride), k and v (n_kv, kv_stride) as halves, padding filled with 1000 (a
 * kernel reading it would be far off), and the FP32 reference output (n_q, n_heads, hd). */
struct att_data {
    int64_t q_stride, kv_stride, n_out;
    uint16_t *q, *k, *v;
    float *ref;
};

static void att_data_make(struct att_data *a, const struct att_case *t, uint64_t *rng) {
    const int64_t hd = t->hd, dq = t->n_heads * hd, dkv = t->n_kv_heads * hd;
    a->q_stride = dq + t->q_extra;
    a->kv_stride = dkv + t->kv_extra;
    a->n_out = t->n_q * dq;
    a->q = malloc((size_t)(t->n_q * a->q_stride) * 2);
    a->k = malloc((size_t)(t->n_kv * a->kv_stride) * 2);
    a->v = malloc((size_t)(t->n_kv * a->kv_stride) * 2);
    a->ref = malloc((size_t)a->n_out * 4);
    float *qf = malloc((size_t)(t->n_q * dq) * 4), *kf = malloc((size_t)(t->n_kv * a->kv_stride) * 4);
    float *vf = malloc((size_t)(t->n_kv * a->kv_stride) * 4), *scratch = malloc((size_t)(t->n_kv + 1) * 4);
    const uint16_t pad = vlm_f32_to_f16(1000.0f);
    for (int64_t i = 0; i < t->n_q; i++) {
        rand_half(rng, a->q + i * a->q_stride, qf + i * dq, dq, t->q_scale, 0.0f);
        for (int64_t e = dq; e < a->q_stride; e++) a->q[i * a->q_stride + e] = pad;
    }
    for (int64_t j = 0; j < t->n_kv; j++) {
        rand_half(rng, a->k + j * a->kv_stride, kf + j * a->kv_stride, dkv, 1.0f, 0.0f);
        rand_half(rng, a->v + j * a->kv_stride, vf + j * a->kv_stride, dkv, 1.0f, 0.0f);
        for (int64_t e = dkv; e < a->kv_stride; e++) {
            a->k[j * a->kv_stride + e] = a->v[j * a->kv_stride + e] = pad;
            kf[j * a->kv_stride + e] = vf[j * a->kv_stride + e] = 1000.0f;
        }
    }
    cpu_attention_ref(a->ref, qf, kf, vf, t->n_q, t->n_kv, t->n_heads, t->n_kv_heads, hd, a->kv_stride, t->q_pos0,
                      t->causal, scratch);
    free(qf), free(kf), free(vf), free(scratch);
}

static void att_data_free(struct att_data *a) { free(a->q), free(a->k), free(a->v), free(a->ref); }

static void att_label(char *buf, size_t cap, const struct att_case *t, const char *what) {
    snprintf(buf, cap, "attention%s n_q=%lld n_kv=%lld heads=%lld/%lld hd=%lld q_pos0=%lld %s", what,
             (long long)t->n_q, (long long)t->n_kv, (long long)t->n_heads, (long long)t->n_kv_heads, (long long)t->hd,
             (long long)t->q_pos0, t->causal ? "causal" : "full");
}

/* Runs one case on the device and checks it against the reference; with n_kv_dev_bound > n_kv also the device-
 * length path (grid sized by the bound, the real length from device memory), which must give the same bits. */
static void att_run(struct cuda_ctx *c, const struct att_case *t, uint64_t *rng, int64_t n_kv_dev_bound) {
    struct dev_set s = {.c = c, .ok = true};
    struct att_data a;
    att_data_make(&a, t, rng);
    const int64_t n_kv_alloc = n_kv_dev_bound > t->n_kv ? n_kv_dev_bound : t->n_kv;
    uint16_t *out = guarded_half(a.n_out), *out2 = guarded_half(a.n_out);
    float *got = malloc((size_t)a.n_out * 4);
    const size_t out_bytes = (size_t)(a.n_out + 2 * GUARD) * 2, kv_bytes = (size_t)(t->n_kv * a.kv_stride) * 2;
    uint16_t *dq = dev_put(&s, a.q, (size_t)(t->n_q * a.q_stride) * 2);
    /* K/V buffers as large as the bound: the keys past n_kv are zero, as an unused part of a KV cache might be */
    uint16_t *dk = dev_put(&s, NULL, (size_t)(n_kv_alloc * a.kv_stride) * 2);
    uint16_t *dv = dev_put(&s, NULL, (size_t)(n_kv_alloc * a.kv_stride) * 2);
    uint16_t *dout = dev_put(&s, out, out_bytes);
    if (s.ok) {
        CHECK(cuda_upload(c, dk, a.k, kv_bytes) == VLM_OK && cuda_upload(c, dv, a.v, kv_bytes) == VLM_OK);
        CHECK(cuda_ctx_reserve(c, cuda_attention_scratch_bytes(t->n_heads, t->hd, n_kv_alloc), "attention scratch") ==
              VLM_OK);
        cuda_attention(c, dout + GUARD, dq, dk, dv, t->n_q, t->n_kv, t->n_heads, t->n_kv_heads, t->hd, a.q_stride,
                       a.kv_stride, t->q_pos0, t->causal, NULL);
        CHECK(cuda_ctx_sync(c, "attention") == VLM_OK);
    }
    char label[160];
    if (dev_get(&s, out, dout, out_bytes)) {
        half_to_float(got, out + GUARD, a.n_out);
        att_label(label, sizeof label, t, "");
        CHECK_NEAR_TENSOR(label, got, a.ref, a.n_out, TOL_CUDA_ATTN_ATOL, TOL_CUDA_FP16_RTOL);
        CHECK(all_finite(got, a.n_out));
        CHECK(guard_half_ok(out, a.n_out));
    }
    if (n_kv_dev_bound > t->n_kv && s.ok) {
        const int32_t n_kv32 = (int32_t)t->n_kv;
        int32_t *dn = dev_put(&s, &n_kv32, sizeof n_kv32);
        uint16_t *dout2 = dev_put(&s, out2, out_bytes);
        if (s.ok) {
            /* q_pos0 deliberately wrong: it must come from the device (n_kv − n_q) */
            cuda_attention(c, dout2 + GUARD, dq, dk, dv, t->n_q, n_kv_dev_bound, t->n_heads, t->n_kv_heads, t->hd,
                           a.q_stride, a.kv_stride, 12345, t->causal, dn);
            CHECK(cuda_ctx_sync(c, "attention (device length)") == VLM_OK);
        }
        if (dev_get(&s, out2, dout2, out_bytes)) {
            att_label(label, sizeof label, t, " (device length)");
            if (!CHECK(memcmp(out, out2, out_bytes) == 0)) FAIL("%s differs from the host-length call", label);
        }
    }
    free(out), free(out2), free(got);
    att_data_free(&a);
    dev_free_all(&s);
}

/* q_pos0 of the causal cases is n_kv − n_q (the usual prefill/decode) unless a case says otherwise */
TEST(cuda_attention_decode_vs_ref) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x1f83d9abfb41bd6bull;
    const struct att_case cases[] = {
        /* n_q n_kv heads kvh hd q_pos0 causal q_extra kv_extra q_scale */
        {1, 1, 2, 2, 64, 0, 1, 0, 0, 1.0f},          /* the first token: one key, GQA 1 */
        {1, 7, 14, 2, 64, 6, 1, 2 * 2 * 64, 2 * 64, 1.0f}, /* GQA 7, fused-QKV strides */
        {1, 300, 4, 2, 72, 0, 0, 8, 6, 2.0f},        /* non-causal, GQA 2 */
        {1, 1000, 7, 1, 128, 999, 1, 0, 128, 1.0f},   /* GQA 7, hd 128, 4 chunks */
        {1, 300, 2, 1, 128, 100, 1, 0, 0, 3.0f},      /* causal prefix of a longer cache: 101 keys visible */
        {1, 4100, 4, 2, 64, 4099, 1, 4, 4, 1.0f},     /* long: 17 chunks, the last one of 4 keys */
        {1, 300, 2, 1, 256, 299, 1, 0, 2, 1.0f},      /* the largest hd */
        {1, 257, 3, 1, 40, 256, 1, 2, 0, 2.0f},       /* hd outside the tuned set, 2 chunks (256 + 1) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) att_run(c, &cases[i], &rng, 0);
    cuda_ctx_free(c);
}

TEST(cuda_attention_prefill_vs_ref) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x5be0cd19137e2179ull;
    const struct att_case cases[] = {
        /* n_q n_kv heads kvh hd q_pos0 causal q_extra kv_extra q_scale */
        {5, 7, 4, 2, 64, 2, 1, 2 * 2 * 64, 2 * 64, 1.0f}, /* continuation of a 2-token prefix */
        {5, 1, 2, 1, 64, 0, 1, 0, 0, 1.0f},       /* queries past the last key see all (one) keys */
        {5, 300, 3, 3, 80, 0, 0, 6, 10, 2.0f},    /* non-causal, hd 80 */
        {200, 200, 4, 2, 64, 0, 1, 0, 0, 1.0f},   /* prefill: 7 query tiles, the last partial */
        {200, 300, 7, 1, 128, 100, 1, 2 * 128, 128, 1.0f}, /* GQA 7, hd 128, q_pos0 100 */
        {200, 1000, 2, 2, 72, 0, 0, 4, 0, 1.0f},  /* non-causal hd 72 */
        {200, 300, 4, 4, 72, 0, 0, 0, 0, 4.0f},   /* vision-like, sharp softmax */
        {37, 1000, 14, 2, 96, 963, 1, 0, 0, 1.0f}, /* GQA 7, hd 96 */
        {200, 7, 2, 1, 64, 0, 0, 0, 0, 1.0f},     /* fewer keys than queries, non-causal */
        {130, 4100, 2, 1, 64, 3970, 1, 0, 0, 1.0f}, /* long context chunk */
        {5, 300, 2, 1, 40, 295, 1, 2, 2, 1.0f},   /* generic kernel: hd 40 */
        {33, 300, 2, 2, 256, 0, 0, 0, 0, 1.0f},   /* generic kernel: hd 256, 5 query tiles of 8 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) att_run(c, &cases[i], &rng, 0);
    cuda_ctx_free(c);
}

TEST(cuda_attention_device_length) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0xcbbb9d5dc1059ed8ull;
    /* the real length (n_kv) on the device, the grid sized by a bound of 1000 / 4100 keys; causal, q_pos0 = n_kv − n_q */
    const struct att_case cases[] = {
        {1, 300, 14, 2, 64, 299, 1, 2 * 2 * 64, 2 * 64, 1.0f}, /* decode: 2 real chunks of 4 */
        {1, 256, 4, 4, 128, 255, 1, 0, 0, 1.0f},              /* a length on the chunk boundary */
        {5, 300, 4, 2, 72, 295, 1, 0, 0, 1.0f},               /* flash path */
    };
    att_run(c, &cases[0], &rng, 1000);
    att_run(c, &cases[1], &rng, 4100);
    att_run(c, &cases[2], &rng, 1000);
    cuda_ctx_free(c);
}

/* ---------------------------------------------------------------------------------------------------------------
 * CUDA graphs
 * ------------------------------------------------------------------------------------------------------------- */

TEST(cuda_graph_rmsnorm_add_replay) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x428a2f98d728ae22ull;
    struct dev_set s = {.c = c, .ok = true};
    const int64_t M = 37, n = 896, N = M * n;
    float *x0 = malloc((size_t)N * 4), *r = malloc((size_t)N * 4), *g = malloc((size_t)n * 4);
    float *xg = malloc((size_t)N * 4), *x1 = malloc((size_t)N * 4), *x2 = malloc((size_t)N * 4);
    float *ref = malloc((size_t)N * 4), *got = malloc((size_t)N * 4);
    uint16_t *yg = malloc((size_t)N * 2), *yd = malloc((size_t)N * 2);
    for (int64_t i = 0; i < N; i++) x0[i] = test_rng_normal(&rng), r[i] = test_rng_normal(&rng) * 0.5f;
    for (int64_t i = 0; i < n; i++) g[i] = 1.0f + 0.2f * test_rng_normal(&rng);
    float *dx = dev_put(&s, x0, (size_t)N * 4), *dr = dev_put(&s, r, (size_t)N * 4), *dg = dev_put(&s, g, (size_t)n * 4);
    uint16_t *dy = dev_put(&s, NULL, (size_t)N * 2);
    struct cuda_graph *graph = NULL;
    if (s.ok && CHECK(cuda_graph_begin(c) == VLM_OK)) {
        cuda_rmsnorm(c, dy, dx, dg, M, n, 1e-6f); /* y = rmsnorm(x); x += r */
        cuda_add_f32(c, dx, dr, N);
        CHECK(cuda_graph_end(c, &graph) == VLM_OK);
    }
    if (graph) {
        /* capturing ran nothing */
        if (dev_get(&s, xg, dx, (size_t)N * 4)) CHECK(memcmp(xg, x0, (size_t)N * 4) == 0);
        CHECK(cuda_graph_launch(c, graph) == VLM_OK);
        CHECK(cuda_graph_launch(c, graph) == VLM_OK);
        CHECK(cuda_ctx_sync(c, "graph") == VLM_OK);
        /* after two replays: y = rmsnorm(x0 + r), x = x0 + r + r */
        for (int64_t i = 0; i < N; i++) x1[i] = x0[i] + r[i], x2[i] = x1[i] + r[i];
        if (dev_get(&s, xg, dx, (size_t)N * 4) && dev_get(&s, yg, dy, (size_t)N * 2)) {
            CHECK_NEAR_TENSOR("graph x after two replays", xg, x2, N, TOL_CUDA_EXACT, TOL_CUDA_EXACT);
            cpu_rmsnorm_ref(ref, x1, g, M, n, 1e-6f);
            half_to_float(got, yg, N);
            CHECK_NEAR_TENSOR("graph rmsnorm", got, ref, N, TOL_CUDA_NORM_ATOL, TOL_CUDA_FP16_RTOL);
        }
        /* the same ops launched directly on x1 give the same bits */
        if (s.ok && CHECK(cuda_upload(c, dx, x1, (size_t)N * 4) == VLM_OK)) {
            cuda_rmsnorm(c, dy, dx, dg, M, n, 1e-6f);
            CHECK(cuda_ctx_sync(c, "direct") == VLM_OK);
            if (dev_get(&s, yd, dy, (size_t)N * 2)) CHECK(memcmp(yd, yg, (size_t)N * 2) == 0);
        }
    }
    cuda_graph_free(graph);
    free(x0), free(r), free(g), free(xg), free(x1), free(x2), free(ref), free(got), free(yg), free(yd);
    dev_free_all(&s);
    cuda_ctx_free(c);
}

/* The decode step's pattern: a graph captured once reads the position and the cache length from device memory,
 * which change between replays. */
TEST(cuda_graph_decode_step_device_positions) {
    struct cuda_ctx *c = ctx_open();
    if (!c) return;
    uint64_t rng = 0x7137449123ef65cdull;
    struct dev_set s = {.c = c, .ok = true};
    const int64_t H = 4, HKV = 2, hd = 64, BOUND = 600, q_stride = H * hd, kv_stride = HKV * hd;
    uint16_t *q = malloc((size_t)q_stride * 2), *kv = malloc((size_t)(BOUND * kv_stride) * 2);
    uint16_t *og = malloc((size_t)(H * hd) * 2), *od = malloc((size_t)(H * hd) * 2);
    rand_half(&rng, q, NULL, q_stride, 1.0f, 0.0f);
    rand_half(&rng, kv, NULL, BOUND * kv_stride, 1.0f, 0.0f);
    uint16_t *dqr = dev_put(&s, NULL, (size_t)q_stride * 2); /* rotated in place: q is uploaded before each step */
    uint16_t *dk = dev_put(&s, kv, (size_t)(BOUND * kv_stride) * 2), *dout = dev_put(&s, NULL, (size_t)(H * hd) * 2);
    int32_t *dpos = dev_put(&s, NULL, 4), *dn = dev_put(&s, NULL, 4);
    if (s.ok) CHECK(cuda_ctx_reserve(c, cuda_attention_scratch_bytes(H, hd, BOUND), "attention scratch") == VLM_OK);
    struct cuda_graph *graph = NULL;
    if (s.ok && CHECK(cuda_graph_begin(c) == VLM_OK)) {
        /* rope at *dpos, attention over *dn keys */
        cuda_rope_neox(c, dqr, 1, H, hd, q_stride, 0, dpos, 1e6f);
        cuda_attention(c, dout, dqr, dk, dk, 1, BOUND, H, HKV, hd, q_stride, kv_stride, 0, 1, dn);
        CHECK(cuda_graph_end(c, &graph) == VLM_OK);
    }
    const int32_t lens[] = {100, 513, 1};
    for (int i = 0; graph && i < 3; i++) {
        const int32_t n_kv = lens[i], pos = n_kv - 1;
        if (!(CHECK(cuda_upload(c, dqr, q, (size_t)q_stride * 2) == VLM_OK) &&
              CHECK(cuda_upload(c, dpos, &pos, 4) == VLM_OK) && CHECK(cuda_upload(c, dn, &n_kv, 4) == VLM_OK)))
            break;
        CHECK(cuda_graph_launch(c, graph) == VLM_OK);
        CHECK(cuda_ctx_sync(c, "graph decode step") == VLM_OK);
        if (!dev_get(&s, og, dout, (size_t)(H * hd) * 2)) break;
        /* the same step with host-side values */
        if (!CHECK(cuda_upload(c, dqr, q, (size_t)q_stride * 2) == VLM_OK)) break;
        cuda_rope_neox(c, dqr, 1, H, hd, q_stride, pos, NULL, 1e6f);
        cuda_attention(c, dout, dqr, dk, dk, 1, n_kv, H, HKV, hd, q_stride, kv_stride, pos, 1, NULL);
        CHECK(cuda_ctx_sync(c, "direct decode step") == VLM_OK);
        if (!dev_get(&s, od, dout, (size_t)(H * hd) * 2)) break;
        if (!CHECK(memcmp(og, od, (size_t)(H * hd) * 2) == 0)) FAIL("graph replay with n_kv=%d differs", n_kv);
    }
    cuda_graph_free(graph);
    free(q), free(kv), free(og), free(od);
    dev_free_all(&s);
    cuda_ctx_free(c);
}
