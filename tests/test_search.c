/* test_search.c — the scale search of mbq.md §5-§7 (converter/search.c): the primitives against their formulas,
 * folding exact in float, and on a real decoder layer (tiny_q, layer 0) the properties the method promises: alpha
 * = 0 is RTN, the chosen loss never exceeds RTN's, MBQ's weighted loss at its own alpha is <= its weighted loss at
 * AWQ's alpha, AWQ's unweighted loss <= RTN's, and with outlier channels the search strictly beats RTN. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "converter/search.h"
#include "runtime/model.h"
#include "runtime/qwen2.h"
#include "test.h"

TEST(search_scales_formula) {
    float stat[5] = {0.5f, 2.0f, 8.0f, 0.0f, 1.0f}, s[5];
    conv_scales(stat, 5, 0.0f, s);
    for (int j = 0; j < 5; j++) CHECK(s[j] == 1.0f);
    conv_scales(stat, 5, 0.5f, s);
    /* s = max(stat^0.5, 1e-4) / sqrt(max * min): max 2.828, min 1e-4 */
    const double norm = sqrt(sqrt(8.0) * 1e-4);
    CHECK(fabs(s[2] - sqrt(8.0) / norm) < 1e-3 * s[2]);
    CHECK(fabs(s[3] - 1e-4 / norm) < 1e-3 * s[3]);
    float mx = 0, mn = INFINITY;
    for (int j = 0; j < 5; j++) mx = fmaxf(mx, s[j]), mn = fminf(mn, s[j]);
    CHECK(fabs(mx * mn - 1.0) < 1e-5);
    float x[6] = {1, -2, 3, -4, 0, 6}, st[3];
    conv_act_stat(x, 2, 3, st);
    CHECK(st[0] == 2.5f && st[1] == 1.0f && st[2] == 4.5f);
}

TEST(search_quant_scaled_is_the_reference_quantizer) {
    const int64_t n = 3, k = 256;
    float *w = malloc(n * k * sizeof(float)), *a = malloc(n * k * sizeof(float)), *b = malloc(n * k * sizeof(float));
    float s[256], ws[3 * 256];
    for (int64_t i = 0; i < n * k; i++) w[i] = test_rand_normal() * 0.05f;
    for (int j = 0; j < 256; j++) s[j] = 0.5f + test_rand_unit();
    const enum vlm_qformat fm[] = {VLM_QF_W3G128, VLM_QF_W4G128, VLM_QF_W4A8};
    for (int f = 0; f < 3; f++) {
        /* with s: exactly quantize(W diag(s)) dequantized, computed by hand through the reference */
        for (int64_t r = 0; r < n; r++)
            for (int64_t j = 0; j < k; j++) ws[r * k + j] = w[r * k + j] * s[j];
        conv_quant_scaled(fm[f], w, n, k, s, a);
        conv_quant_scaled(fm[f], ws, n, k, NULL, b);
        CHECK(memcmp(a, b, (size_t)(n * k) * sizeof(float)) == 0);
        /* and the quantization error is bounded by half a step relative to the row/group range */
        double worst = 0, range = 0;
        for (int64_t i = 0; i < n * k; i++) worst = fmax(worst, fabs(b[i] - ws[i])), range = fmax(range, fabs(ws[i]));
        CHECK(worst <= range / (fm[f] == VLM_QF_W3G128 ? 7 : 7) + 1e-6);
    }
    float o[4] = {1, 2, 3, 4}, oh[4] = {1.5f, 2, 2, 4};
    uint8_t vis[2] = {1, 0}, ans[2] = {0, 1};
    CHECK(fabs(conv_loss(o, oh, 2, 2, NULL, NULL, 1) - 1.5) < 1e-12);
    CHECK(fabs(conv_loss(o, oh, 2, 2, vis, ans, 0.25) - (1.0 + 0.25 * 0.5)) < 1e-12);
    free(w);
    free(a);
    free(b);
}

/* A calibration batch for layer 0 of tiny_q: two samples of 24 tokens from embedding rows, vision-like positions
 * replaced by random vectors; optional outlier channels (the activation pattern AWQ exists for). */
struct batch {
    float *h;
    uint8_t vis[48], ans[48];
    int64_t seg[3];
};

static void make_batch(const struct vlm_model *m, bool outliers, struct batch *bt) {
    const int64_t d = m->config.text.hidden_size, T = 48;
    bt->h = malloc((size_t)(T * d) * sizeof(float));
    bt->seg[0] = 0, bt->seg[1] = 24, bt->seg[2] = 48;
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = t % 24;
        bt->vis[t] = p >= 3 && p < 13;
        bt->ans[t] = p >= 16;
        if (bt->vis[t])
            for (int64_t j = 0; j < d; j++) bt->h[t * d + j] = test_rand_normal();
        else
            CHECK(qwen2_embed(m, (int64_t[]){(int64_t)(test_rand_u32() % 1000)}, 1, bt->h + t * d) == VLM_OK);
        if (outliers)
            for (int64_t j = 0; j < d; j += 17) bt->h[t * d + j] *= 25.0f;
    }
}

TEST(search_layer_properties) {
    struct vlm_model *m = test_load_model("tests/data/models/tiny_q", false);
    if (!m) return;
    const int64_t d = m->config.text.hidden_size, f = m->config.text.intermediate_size;
    for (int outl = 0; outl < 2; outl++) {
        struct batch bt;
        make_batch(m, outl, &bt);
        struct conv_layer_batch b = {.m = m, .layer = 0, .T = 48, .n_seg = 2, .seg = bt.seg, .vis = bt.vis,
                                     .ans = bt.ans, .h = bt.h};
        struct conv_layer_batch bu = b; /* AWQ: unweighted, every token */
        bu.vis = bu.ans = NULL;
        const enum conv_group groups[] = {CONV_GROUP_QKV, CONV_GROUP_GATE_UP, CONV_GROUP_DOWN};
        const enum vlm_qformat fmts[] = {VLM_QF_W3G128, VLM_QF_W4A8};
        for (int fi = 0; fi < 2; fi++) {
            for (int gi = 0; gi < 3; gi++) {
                const int64_t k = groups[gi] == CONV_GROUP_DOWN ? f : d;
                float *s_mbq = malloc((size_t)k * sizeof(float)), *s_awq = malloc((size_t)k * sizeof(float));
                float a_mbq = -1, a_awq = -1;
                double l_mbq[CONV_GRID], l_awq[CONV_GRID], rtn_w = 0, rtn_u = 0, mbq_at_awq = 0;
                const double r = 0.3;
                bool ok = conv_search_group(&b, groups[gi], fmts[fi], r, s_mbq, &a_mbq, l_mbq) == VLM_OK &&
                          conv_search_group(&bu, groups[gi], fmts[fi], 1.0, s_awq, &a_awq, l_awq) == VLM_OK &&
                          conv_group_loss(&b, groups[gi], fmts[fi], r, NULL, &rtn_w) == VLM_OK &&
                          conv_group_loss(&bu, groups[gi], fmts[fi], 1.0, NULL, &rtn_u) == VLM_OK &&
                          conv_group_loss(&b, groups[gi], fmts[fi], r, s_awq, &mbq_at_awq) == VLM_OK;
                if (CHECK(ok)) {
                    double best_mbq = INFINITY, best_awq = INFINITY;
                    for (int i = 0; i < CONV_GRID; i++) best_mbq = fmin(best_mbq, l_mbq[i]), best_awq = fmin(best_awq, l_awq[i]);
                    CHECK(l_mbq[0] == rtn_w && l_awq[0] == rtn_u); /* alpha = 0 is RTN, exactly */
                    CHECK(best_mbq <= rtn_w && best_awq <= rtn_u);  /* never worse than RTN on its own loss */
                    CHECK(best_mbq <= mbq_at_awq * (1 + 1e-12));    /* MBQ's weighted loss <= AWQ's choice's */
                    CHECK(a_mbq >= 0 && a_mbq < 1 && a_awq >= 0 && a_awq < 1);
                    if (outl && gi == 0 && !CHECK(best_mbq < rtn_w && a_mbq > 0))
                        FAIL("outlier channels: the search should beat RTN (alpha %g, %g vs %g)", a_mbq, best_mbq,
                             rtn_w);
                    if (test_verbose())
                        fprintf(stderr, "  outliers %d %s group %d: RTN %.4g, AWQ alpha %.2f (weighted %.4g), MBQ "
                                        "alpha %.2f %.4g\n", outl, vlm_qformat_name(fmts[fi]), gi, rtn_w, a_awq,
                                mbq_at_awq, a_mbq, best_mbq);
                }
                free(s_mbq);
                free(s_awq);
            }
        }
        free(bt.h);
    }
    vlm_model_free(m);
}

/* Folding the scales changes no float result: logits of a prompt before and after folding every group of every
 * layer with arbitrary positive scales agree to float rounding. */
TEST(search_fold_is_exact_in_float) {
    struct vlm_model *m = test_load_model("tests/data/models/tiny_q", false);
    if (!m) return;
    const int64_t d = m->config.text.hidden_size, f = m->config.text.intermediate_size, V = m->w.n_vocab_rows;
    const int64_t ids[] = {1002, 17, 10, 22, 41, 99, 300, 7, 512, 63, 1003, 10};
    const int64_t n = 12;
    float *emb = malloc((size_t)(n * d) * sizeof(float)), *a = malloc((size_t)(n * V) * sizeof(float));
    float *b = malloc((size_t)(n * V) * sizeof(float)), *s = malloc((size_t)f * sizeof(float));
    struct kv_cache kv;
    CHECK(qwen2_embed(m, ids, n, emb) == VLM_OK);
    CHECK(kv_cache_init(&kv, &m->config.text, n) == VLM_OK && qwen2_forward(m, &kv, emb, n, a, 1) == VLM_OK);
    kv_cache_free(&kv);
    for (int64_t l = 0; l < m->config.text.n_layers; l++)
        for (int g = 0; g < 3; g++) {
            const int64_t k = g == CONV_GROUP_DOWN ? f : d;
            for (int64_t j = 0; j < k; j++) s[j] = 0.25f + 3.0f * test_rand_unit();
            conv_fold_group(m, l, (enum conv_group)g, s);
        }
    CHECK(kv_cache_init(&kv, &m->config.text, n) == VLM_OK && qwen2_forward(m, &kv, emb, n, b, 1) == VLM_OK);
    kv_cache_free(&kv);
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n * V; i++) worst = fmax(worst, fabs(a[i] - b[i])), scale = fmax(scale, fabs(a[i]));
    if (!CHECK(worst <= 1e-4 * scale)) FAIL("folding moved logits by %g (max |logit| %g)", worst, scale);
    free(emb);
    free(a);
    free(b);
    free(s);
    vlm_model_free(m);
}
