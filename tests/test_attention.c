/* test_attention.c — cpu_attention (kernels/cpu/attention.c) against cpu_attention_ref at every ISA level the CPU
 * has: decode (n_q = 1) at contexts 1, 7, 255, 1000; causal prefill n_q = n_kv_tok = 1, 17, 300; chunked prefill
 * (q_pos0 > 0); SigLIP-like non-causal 729 x 729 (2 heads of 72); GQA 7:1 (hd 16), 2:1 and 14:2 (hd 64); a KV
 * row stride wider than n_kv_heads * hd (the KV cache layout); hd 32 and 128. Tolerance max |Δ| <= 1e-5 · (1 + |ref|)
 * (float32 online softmax vs double sums; measured max ~1e-7 · (1 + |ref|), printed with -v); NaN/Inf classes
 * identical; a guard band after out untouched. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "test.h"

#define SENTINEL 1234.5f
#define GUARD 16

/* The level-capped entry point: defined in kernels/cpu/attention.c as a test hook (not part of ops.h). */
void cpu_attention_isa(int isa, float *out, const float *q, const float *k, const float *v, int64_t n_q,
                       int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride,
                       int64_t q_pos0, int causal, float *scratch);


static double g_worst; /* max over all cases of |Δ| / (1 + |ref|) */

/* One shape. q_gain > 1 makes the softmax peaky, so the running max changes between key chunks. */
static void check_case(const char *label, int64_t n_q, int64_t n_kv, int64_t n_heads, int64_t n_kv_heads, int64_t hd,
                       int64_t kv_pad, int64_t q_pos0, int causal, float q_gain) {
    const int64_t stride = n_kv_heads * hd + kv_pad, n_out = n_q * n_heads * hd;
    float *q = malloc((size_t)n_out * 4), *k = malloc((size_t)(n_kv * stride) * 4);
    float *v = malloc((size_t)(n_kv * stride) * 4), *scr = malloc((size_t)(n_kv > 0 ? n_kv : 1) * 4);
    float *ref = malloc((size_t)n_out * 4), *got = malloc((size_t)(n_out + GUARD) * 4);
    for (int64_t i = 0; i < n_out; i++) q[i] = test_rand_normal() * q_gain;
    for (int64_t i = 0; i < n_kv * stride; i++) k[i] = test_rand_normal(), v[i] = test_rand_normal();
    cpu_attention_ref(ref, q, k, v, n_q, n_kv, n_heads, n_kv_heads, hd, stride, q_pos0, causal, scr);

    for (int isa = CPU_ISA_SCALAR; isa <= (int)cpu_isa_detect(); isa++) {
        for (int64_t i = 0; i < n_out + GUARD; i++) got[i] = SENTINEL;
        cpu_attention_isa(isa, got, q, k, v, n_q, n_kv, n_heads, n_kv_heads, hd, stride, q_pos0, causal, NULL);
        char what[160];
        snprintf(what, sizeof what, "%s [%s]", label, cpu_isa_name((enum cpu_isa)isa));
        CHECK_NEAR_TENSOR(what, got, ref, n_out, 1e-5, 1e-5);
        double w = 0;
        for (int64_t i = 0; i < n_out; i++) {
            double e = fabs((double)got[i] - ref[i]) / (1.0 + fabs((double)ref[i]));
            w = e > w ? e : w;
        }
        g_worst = w > g_worst ? w : g_worst;
        for (int i = 0; i < GUARD; i++)
            if (got[n_out + i] != SENTINEL) {
                FAIL("%s: guard band after out overwritten", what);
                break;
            }
        if (test_verbose()) fprintf(stderr, "  %-40s max |d|/(1+|ref|) = %.2e\n", what, w);
    }
    free(q), free(k), free(v), free(scr), free(ref), free(got);
}

TEST(attention_decode) {
    static const int64_t ctx[] = {1, 7, 255, 1000};
    for (size_t c = 0; c < sizeof ctx / sizeof ctx[0]; c++) {
        char label[64];
        snprintf(label, sizeof label, "decode ctx %lld 14:2 hd 64", (long long)ctx[c]);
        check_case(label, 1, ctx[c], 14, 2, 64, 0, ctx[c] - 1, 1, 1.0f);
        snprintf(label, sizeof label, "decode ctx %lld 7:1 hd 16 peaky", (long long)ctx[c]);
        check_case(label, 1, ctx[c], 7, 1, 16, 0, ctx[c] - 1, 1, 4.0f);
    }
    /* the KV cache: rows wider than the heads they hold, context shorter than the allocation */
    check_case("decode kv cache stride, 2:1 hd 64", 1, 300, 4, 2, 64, 3 * 128 + 5, 299, 1, 2.0f);
}

TEST(attention_prefill_causal) {
    static const int64_t n[] = {1, 17, 300};
    for (size_t c = 0; c < sizeof n / sizeof n[0]; c++) {
        char label[64];
        snprintf(label, sizeof label, "prefill n %lld 14:2 hd 64", (long long)n[c]);
        check_case(label, n[c], n[c], 14, 2, 64, 0, 0, 1, 1.0f);
    }
    check_case("prefill n 300 2:1 hd 128 peaky", 300, 300, 2, 1, 128, 0, 0, 1, 4.0f);
    check_case("prefill n 100 4:4 hd 32", 100, 100, 4, 4, 32, 0, 0, 1, 1.0f);
}

TEST(attention_prefill_chunked) {
    /* a second chunk of a prompt: 40 new queries after 260 cached tokens, KV rows padded as in the cache */
    check_case("chunked q 40 @260 14:2 hd 64", 40, 300, 14, 2, 64, 64, 260, 1, 1.0f);
    check_case("chunked q 5 @95 7:1 hd 16", 5, 100, 7, 1, 16, 7, 95, 1, 3.0f);
    /* visibility clipped by n_kv_tok: queries whose positions run past the last key see all keys */
    check_case("chunked q 8 @95 kv 100 2:1 hd 64", 8, 100, 2, 1, 64, 0, 95, 1, 1.0f);
}

TEST(attention_noncausal_siglip) {
    check_case("siglip 729x729 2 heads hd 72", 729, 729, 2, 2, 72, 0, 0, 0, 1.0f);
    check_case("noncausal 33x70 7:1 hd 16", 33, 70, 7, 1, 16, 0, 0, 0, 3.0f);
    if (test_verbose()) fprintf(stderr, "  worst max |d|/(1+|ref|) so far: %.2e\n", g_worst);
}

TEST(attention_public_entry) {
    /* cpu_attention is cpu_attention_isa at the best level; one shape through it, scratch NULL allowed */
    const int64_t n_q = 9, n_kv = 50, nh = 4, nkv = 2, hd = 72, n_out = n_q * nh * hd;
    float *q = malloc((size_t)n_out * 4), *k = malloc((size_t)(n_kv * nkv * hd) * 4);
    float *v = malloc((size_t)(n_kv * nkv * hd) * 4), *scr = malloc((size_t)n_kv * 4);
    float *ref = malloc((size_t)n_out * 4), *got = malloc((size_t)(n_out + GUARD) * 4);
    for (int64_t i = 0; i < n_out; i++) q[i] = test_rand_normal();
    for (int64_t i = 0; i < n_kv * nkv * hd; i++) k[i] = test_rand_normal(), v[i] = test_rand_normal();
    for (int64_t i = 0; i < n_out + GUARD; i++) got[i] = SENTINEL;
    cpu_attention_ref(ref, q, k, v, n_q, n_kv, nh, nkv, hd, nkv * hd, 41, 1, scr);
    cpu_attention(got, q, k, v, n_q, n_kv, nh, nkv, hd, nkv * hd, 41, 1, NULL);
    CHECK_NEAR_TENSOR("cpu_attention", got, ref, n_out, 1e-5, 1e-5);
    for (int i = 0; i < GUARD; i++) CHECK(got[n_out + i] == SENTINEL);
    free(q), free(k), free(v), free(scr), free(ref), free(got);
}
