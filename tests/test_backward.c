/* test_backward.c — converter/backward.c, the fp32 gradient pass of mbq.md §4, checked three ways:
 * (1) against torch autograd through transformers' own Qwen2 modules on tiny_q (tests/golden/grad_ref.bin, written
 *     by tools/make_grad_fixtures.py): the loss, every G_attn / G_mlp entry, ∂L/∂emb, and the four |G| sums;
 * (2) against central finite differences of the C forward alone, in double, on entries of emb;
 * (3) the rejections of mbq.md §4 (no vision or no supervised position) with one error line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "converter/backward.h"
#include "golden.h"
#include "runtime/model.h"
#include "test.h"

static struct vlm_model *load_tiny_q_opts(bool stream) { return test_load_model("tests/data/models/tiny_q", stream); }

static struct vlm_model *load_tiny_q(void) { return load_tiny_q_opts(false); }

/* Max |got - ref| over n values, and max |ref|. */
static void max_err(const float *got, const float *ref, int64_t n, double *err, double *scale) {
    *err = 0, *scale = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= *err)) *err = e; /* NaN propagates as a failure */
        *scale = fmax(*scale, fabs((double)ref[i]));
    }
}

/* Gradients are compared relative to the tensor's own scale: entries far below max|ref| carry an absolute error
 * set by the large ones they are summed from (fp32 forward and backward, different summation orders than torch),
 * so a per-entry relative bound would be meaningless for them. Measured: <= 1.4e-6 of max|ref| on tiny_q;
 * 1e-4 leaves ~70x margin for other compilers and thread counts (summation order) while still catching any
 * missing or mis-scaled term (those show up at 1e-2 and above). */
#define GRAD_TOL 1e-4

static void check_grad(const char *label, const float *got, const float *ref, int64_t n) {
    double err, scale;
    max_err(got, ref, n, &err, &scale);
    if (test_verbose()) fprintf(stderr, "  %s: max|Δ| %.3g, max|ref| %.3g, ratio %.3g\n", label, err, scale,
                                err / scale);
    if (!(scale > 0 && err <= GRAD_TOL * scale))
        FAIL("%s: max |Δ| %.3g vs max |ref| %.3g (tolerance %.0e relative)", label, err, scale, GRAD_TOL);
}

TEST(backward_matches_torch_autograd) {
    struct golden_file g;
    if (golden_load("tests/golden/grad_ref.bin", &g) != 0) return;
    const struct golden_tensor *emb = golden_get(&g, "emb", GOLDEN_F32), *ids = golden_get(&g, "ids", GOLDEN_I64),
                               *vis = golden_get(&g, "vis", GOLDEN_U8), *ans = golden_get(&g, "ans", GOLDEN_U8),
                               *loss = golden_get(&g, "loss", GOLDEN_F32), *ga = golden_get(&g, "g_attn", GOLDEN_F32),
                               *gm = golden_get(&g, "g_mlp", GOLDEN_F32), *ge = golden_get(&g, "g_emb", GOLDEN_F32);
    struct vlm_model *m = load_tiny_q();
    if (m && emb && ids && vis && ans && loss && ga && gm && ge) {
        const int64_t n = emb->shape[0], d = emb->shape[1], L = m->config.text.n_layers;
        CHECK_EQ(d, m->config.text.hidden_size);
        CHECK_EQ(ga->shape[0], L);
        CHECK_EQ(ga->n, L * n * d);
        CHECK_EQ(gm->n, L * n * d);
        float *g_attn = calloc((size_t)(L * n * d), sizeof(float)), *g_mlp = calloc((size_t)(L * n * d), sizeof(float)),
              *g_emb = calloc((size_t)(n * d), sizeof(float));
        struct conv_grad_stats s;
        if (CHECK(conv_grad_sample(m, emb->data, ids->data, vis->data, ans->data, n, &s, g_attn, g_mlp, g_emb) ==
                  VLM_OK)) {
            const double lref = ((const float *)loss->data)[0];
            if (test_verbose()) fprintf(stderr, "  loss %.9g vs torch %.9g\n", s.loss, lref);
            CHECK(fabs(s.loss - lref) <= 1e-5 * fabs(lref));
            CHECK_EQ(s.n_layers, L);
            const uint8_t *vm = vis->data, *am = ans->data;
            int64_t nv = 0, na = 0, nt = 0;
            for (int64_t t = 0; t < n; t++) nv += vm[t] != 0, na += am[t] != 0, nt += t > 0 && am[t];
            CHECK_EQ(s.n_vis, nv);
            CHECK_EQ(s.n_ans, na);
            CHECK_EQ(s.n_target, nt);
            char label[64];
            for (int64_t l = 0; l < L; l++) {
                snprintf(label, sizeof label, "g_attn[%lld]", (long long)l);
                check_grad(label, g_attn + l * n * d, (const float *)ga->data + l * n * d, n * d);
                snprintf(label, sizeof label, "g_mlp[%lld]", (long long)l);
                check_grad(label, g_mlp + l * n * d, (const float *)gm->data + l * n * d, n * d);
                /* the four statistics: exactly the masked |G| sums of what we returned, and close to torch's */
                double sums[2][4] = {{0}};
                for (int64_t t = 0; t < n; t++)
                    for (int64_t c = 0; c < d; c++) {
                        const int64_t i = (l * n + t) * d + c;
                        if (vm[t]) {
                            sums[0][0] += fabs((double)g_attn[i]), sums[0][2] += fabs((double)g_mlp[i]);
                            sums[1][0] += fabs((double)((const float *)ga->data)[i]);
                            sums[1][2] += fabs((double)((const float *)gm->data)[i]);
                        }
                        if (am[t]) {
                            sums[0][1] += fabs((double)g_attn[i]), sums[0][3] += fabs((double)g_mlp[i]);
                            sums[1][1] += fabs((double)((const float *)ga->data)[i]);
                            sums[1][3] += fabs((double)((const float *)gm->data)[i]);
                        }
                    }
                const double got[4] = {s.vis_attn[l], s.ans_attn[l], s.vis_mlp[l], s.ans_mlp[l]};
                for (int i = 0; i < 4; i++) {
                    CHECK(fabs(got[i] - sums[0][i]) <= 1e-12 * sums[0][i]);
                    CHECK(fabs(got[i] - sums[1][i]) <= 1e-4 * sums[1][i]);
                }
                /* the last layer's output (and its h_mid) at a position reaches the loss only through that
                 * position's own logits, and no vision position predicts a target here: exactly zero, in torch
                 * too. Every earlier layer reaches the targets through attention. */
                if (l == L - 1) CHECK(got[0] == 0 && got[2] == 0 && sums[1][0] == 0 && sums[1][2] == 0);
                else CHECK(got[0] > 0 && got[1] > 0 && got[2] > 0 && got[3] > 0);
                if (test_verbose())
                    fprintf(stderr, "  layer %lld: mean|G| vis/ans attn %.4g/%.4g mlp %.4g/%.4g\n", (long long)l,
                            got[0] / (double)(nv * d), got[1] / (double)(na * d), got[2] / (double)(nv * d),
                            got[3] / (double)(na * d));
            }
            check_grad("g_emb", g_emb, ge->data, n * d);
            conv_grad_stats_free(&s);
        }
        free(g_attn), free(g_mlp), free(g_emb);
    }
    vlm_model_free(m);
    golden_free(&g);
}

/* dL/demb against (L(e + h) − L(e − h)) / 2h. The loss is evaluated by the same C forward (float32 activations,
 * double loss sum), so its rounding noise is ~1e-6 relative of L ≈ 10, i.e. ~1e-5 absolute; h = 1e-2 keeps that
 * noise at ~1e-3 in the quotient, and the truncation error is O(h²·L''') — small against derivatives of
 * ~1e-2..1e-1.
 * Entries with the largest |gradient| are chosen (vision and text positions both), and compared at 2e-2 relative
 * plus an absolute floor of 2e-3 of the largest entry. */
TEST(backward_matches_finite_differences) {
    struct golden_file g;
    if (golden_load("tests/golden/grad_ref.bin", &g) != 0) return;
    const struct golden_tensor *emb = golden_get(&g, "emb", GOLDEN_F32), *ids = golden_get(&g, "ids", GOLDEN_I64),
                               *vis = golden_get(&g, "vis", GOLDEN_U8), *ans = golden_get(&g, "ans", GOLDEN_U8);
    struct vlm_model *m = load_tiny_q();
    if (m && emb && ids && vis && ans) {
        const int64_t n = emb->shape[0], d = emb->shape[1];
        float *e = malloc((size_t)(n * d) * sizeof(float)), *ge = malloc((size_t)(n * d) * sizeof(float));
        memcpy(e, emb->data, (size_t)(n * d) * sizeof(float));
        struct conv_grad_stats s;
        if (CHECK(conv_grad_sample(m, e, ids->data, vis->data, ans->data, n, &s, NULL, NULL, ge) == VLM_OK)) {
            conv_grad_stats_free(&s);
            double gmax = 0;
            for (int64_t i = 0; i < n * d; i++) gmax = fmax(gmax, fabs((double)ge[i]));
            /* probes: in a vision row, a text row before the answers, an answer row, and the largest entry */
            int64_t probe[8] = {6 * d + 3, 10 * d + 77, 20 * d + 5, 28 * d + 64, 33 * d + 1, 40 * d + 100, 0, 0};
            int n_probe = 6;
            int64_t best = 0;
            for (int64_t i = 0; i < n * d; i++)
                if (fabs((double)ge[i]) > fabs((double)ge[best])) best = i;
            probe[n_probe++] = best;
            probe[n_probe++] = 46 * d + 127;
            double worst = 0;
            for (int p = 0; p < n_probe; p++) {
                const int64_t i = probe[p];
                const float e0 = e[i];
                const double h = 1e-2 * fmax(1.0, fabs((double)e0));
                double lp = 0, lm = 0;
                e[i] = (float)(e0 + h);
                const double hp = (double)e[i] - e0;
                if (CHECK(conv_grad_sample(m, e, ids->data, vis->data, ans->data, n, &s, NULL, NULL, NULL) == VLM_OK))
                    lp = s.loss, conv_grad_stats_free(&s);
                e[i] = (float)(e0 - h);
                const double hm = e0 - (double)e[i];
                if (CHECK(conv_grad_sample(m, e, ids->data, vis->data, ans->data, n, &s, NULL, NULL, NULL) == VLM_OK))
                    lm = s.loss, conv_grad_stats_free(&s);
                e[i] = e0;
                const double fd = (lp - lm) / (hp + hm), an = ge[i], err = fabs(fd - an);
                worst = fmax(worst, err / (2e-2 * fabs(an) + 2e-3 * gmax));
                if (test_verbose())
                    fprintf(stderr, "  emb[%lld][%lld]: backward %.6g, finite difference %.6g\n", (long long)(i / d),
                            (long long)(i % d), an, fd);
                if (!(err <= 2e-2 * fabs(an) + 2e-3 * gmax))
                    FAIL("emb[%lld][%lld]: backward %.6g vs finite difference %.6g", (long long)(i / d),
                         (long long)(i % d), an, fd);
            }
            if (test_verbose()) fprintf(stderr, "  worst fraction of the tolerance used: %.3g\n", worst);
        }
        free(e), free(ge);
    }
    vlm_model_free(m);
    golden_free(&g);
}

/* The converter streams the decoder's linears (one layer widened at a time, twice per sample): the same arithmetic
 * as the fully loaded model, so every output is bit-identical on the autograd fixture's sample. */
TEST(backward_streamed_model_identical) {
    struct golden_file g;
    if (golden_load("tests/golden/grad_ref.bin", &g) != 0) return;
    const struct golden_tensor *emb = golden_get(&g, "emb", GOLDEN_F32), *ids = golden_get(&g, "ids", GOLDEN_I64),
                               *vis = golden_get(&g, "vis", GOLDEN_U8), *ans = golden_get(&g, "ans", GOLDEN_U8);
    struct vlm_model *full = load_tiny_q_opts(false), *str = load_tiny_q_opts(true);
    float *buf[2][3] = {{NULL}};
    if (full && str && emb && ids && vis && ans && CHECK(str->stream && !full->stream)) {
        const int64_t n = emb->shape[0], d = emb->shape[1], L = full->config.text.n_layers;
        const size_t sz[3] = {(size_t)(L * n * d), (size_t)(L * n * d), (size_t)(n * d)};
        struct conv_grad_stats s[2];
        bool ok = true;
        for (int k = 0; k < 2; k++) {
            for (int j = 0; j < 3; j++) ok = ok && (buf[k][j] = calloc(sz[j], sizeof(float)));
            ok = ok && CHECK(conv_grad_sample(k ? str : full, emb->data, ids->data, vis->data, ans->data, n, &s[k],
                                              buf[k][0], buf[k][1], buf[k][2]) == VLM_OK);
        }
        if (ok) {
            CHECK(s[0].loss == s[1].loss);
            for (int j = 0; j < 3; j++) CHECK(memcmp(buf[0][j], buf[1][j], sz[j] * sizeof(float)) == 0);
            for (int64_t l = 0; l < L; l++)
                CHECK(s[0].vis_attn[l] == s[1].vis_attn[l] && s[0].ans_mlp[l] == s[1].ans_mlp[l]);
            /* the stream ends holding layer 0 (the backward runs down to it) */
            CHECK(str->w.layers[0].q_w != NULL && str->w.layers[L - 1].q_w == NULL);
            conv_grad_stats_free(&s[0]);
            conv_grad_stats_free(&s[1]);
        }
    }
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) free(buf[k][j]);
    vlm_model_free(full);
    vlm_model_free(str);
    golden_free(&g);
}

/* mbq.md §4 last bullet: a sample with no vision or no supervised position has an undefined mean |G|; rejected
 * with VLM_ERR_ARG and one error line, outputs untouched. Also: ans only at position 0 has no target. */
TEST(backward_rejects_empty_masks) {
    struct vlm_model *m = load_tiny_q();
    if (!m) return;
    const int64_t n = 8, d = m->config.text.hidden_size;
    float *e = calloc((size_t)(n * d), sizeof(float));
    for (int64_t i = 0; i < n * d; i++) e[i] = 0.01f * (float)((i * 37) % 11) - 0.05f;
    int64_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const uint8_t vis_ok[8] = {0, 1, 1, 0, 0, 0, 0, 0}, ans_ok[8] = {0, 0, 0, 0, 0, 1, 1, 1};
    const uint8_t none[8] = {0}, only0[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    struct {
        const uint8_t *vis, *ans;
        const char *needle;
    } cases[] = {{none, ans_ok, "no vision position"},
                 {vis_ok, none, "no supervised"},
                 {vis_ok, only0, "no supervised"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct conv_grad_stats s;
        memset(&s, 0x5a, sizeof s);
        char buf[512];
        test_capture_begin();
        enum vlm_status st = conv_grad_sample(m, e, ids, cases[c].vis, cases[c].ans, n, &s, NULL, NULL, NULL);
        test_capture_end(buf, sizeof buf);
        CHECK(st == VLM_ERR_ARG);
        CHECK_ERROR_LINE(buf, "gradient pass", cases[c].needle);
        CHECK(s.n_layers == 0x5a5a5a5a5a5a5a5a); /* untouched */
    }
    /* a target id outside the vocabulary */
    ids[6] = 5000;
    struct conv_grad_stats s;
    char buf[512];
    test_capture_begin();
    enum vlm_status st = conv_grad_sample(m, e, ids, vis_ok, ans_ok, n, &s, NULL, NULL, NULL);
    test_capture_end(buf, sizeof buf);
    CHECK(st == VLM_ERR_ARG);
    CHECK_ERROR_LINE(buf, "target id 5000", NULL);
    /* and the valid sample runs */
    ids[6] = 7;
    test_capture_begin();
    st = conv_grad_sample(m, e, ids, vis_ok, ans_ok, n, &s, NULL, NULL, NULL);
    test_capture_end(buf, sizeof buf);
    if (CHECK(st == VLM_OK)) {
        CHECK_EQ(s.n_vis, 2);
        CHECK_EQ(s.n_ans, 3);
        CHECK(isfinite(s.loss) && s.loss > 0);
        CHECK(s.vis_attn[0] > 0 && s.vis_mlp[0] > 0 && s.ans_attn[0] > 0 && s.ans_mlp[0] > 0);
        CHECK(s.vis_attn[s.n_layers - 1] == 0 && s.ans_mlp[s.n_layers - 1] > 0); /* see the autograd case */
        conv_grad_stats_free(&s);
    }
    free(e);
    vlm_model_free(m);
}
