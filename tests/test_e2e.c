/* test_e2e.c — the whole reference path against transformers, stage by stage, on the tiny random-weight
 * fixture models (tools/make_fixtures.py writes tests/golden/<case>.bin from transformers' own classes):
 * layout and T_img, pixel_values, vision features, projector output, packed features, expanded input ids,
 * full-prompt logits and 20 greedy tokens (with the KV cache, and once more by full recompute). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "kernels/ops.h"
#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/qwen2.h"
#include "test.h"
#include "tolerances.h"
#include "vision/image.h"
#include "vision/siglip.h"

struct e2e_case {
    const char *golden, *model;
};

static const struct e2e_case k_cases[] = {
    {"tests/golden/single_png.bin", "tests/data/models/tiny_single"},
    {"tests/golden/unpad_png.bin", "tests/data/models/tiny_unpad"},
    {"tests/golden/pool_png.bin", "tests/data/models/tiny_pool"},
    {"tests/golden/jpeg.bin", "tests/data/models/tiny_unpad"},
    /* head_dim 72 tower, two feature layers concatenated, GQA 7:1, CLIP mean/std, column unpad + pooling */
    {"tests/golden/odd_png.bin", "tests/data/models/tiny_odd"},
};

static int64_t i64_at(const struct golden_tensor *t, int64_t i) { return ((const int64_t *)t->data)[i]; }

/* Checks one fixture case end to end. Every stage starts from the reference's own input for that stage, so a
 * mismatch points at one module rather than cascading. */
static void run_case(const struct e2e_case *c) {
    struct golden_file g;
    struct vlm_model *m = NULL;
    float *pixels = NULL, *vis = NULL, *proj = NULL, *packed = NULL, *emb = NULL, *logits = NULL;
    int64_t *ids = NULL;
    if (golden_load(c->golden, &g) != 0) return;
    if (!CHECK(vlm_model_load(test_path(c->model), &m) == VLM_OK)) goto done;
    const struct golden_tensor *rgb = golden_get(&g, "image_rgb", GOLDEN_U8);
    const struct golden_tensor *glay = golden_get(&g, "layout", GOLDEN_I64);
    const struct golden_tensor *gpix = golden_get(&g, "pixel_values", GOLDEN_F32);
    const struct golden_tensor *gvis = golden_get(&g, "vision_features", GOLDEN_F32);
    const struct golden_tensor *gproj = golden_get(&g, "projected", GOLDEN_F32);
    const struct golden_tensor *gpack = golden_get(&g, "packed", GOLDEN_F32);
    const struct golden_tensor *gprompt = golden_get(&g, "prompt_ids", GOLDEN_I64);
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    const struct golden_tensor *gpos = golden_get(&g, "logits_pos", GOLDEN_I64);
    const struct golden_tensor *glog = golden_get(&g, "logits", GOLDEN_F32);
    const struct golden_tensor *ggreedy = golden_get(&g, "greedy", GOLDEN_I64);
    if (!rgb || !glay || !gpix || !gvis || !gproj || !gpack || !gprompt || !gids || !gpos || !glog || !ggreedy)
        goto done;
    const struct vlm_config *cfg = &m->config;
    const int64_t d = cfg->text.hidden_size, np = cfg->vision.n_patches_side * cfg->vision.n_patches_side;
    const int64_t V = m->w.n_vocab_rows;

    /* layout: canvas, resize target, crops, unpadded and pooled maps, T_img */
    struct vlm_image img = {.width = rgb->shape[1], .height = rgb->shape[0], .rgb = (uint8_t *)rgb->data};
    struct img_layout lay;
    if (!CHECK(img_compute_layout(cfg, &m->preproc, img.height, img.width, &lay) == VLM_OK)) goto done;
    const int64_t got_lay[10] = {lay.canvas_h, lay.canvas_w, lay.resize_h, lay.resize_w, lay.n_crops,
                                 lay.unpad_h,  lay.unpad_w,  lay.pool_h,   lay.pool_w,   lay.n_image_tokens};
    for (int i = 0; i < 10; i++) CHECK_EQ(got_lay[i], i64_at(glay, i));
    if (!CHECK_EQ(gpix->shape[0], lay.n_crops)) goto done;

    /* pixel values */
    if (!CHECK(img_preprocess(&img, cfg, &m->preproc, &lay, &pixels) == VLM_OK)) goto done;
    CHECK_NEAR_TENSOR("pixel_values", pixels, gpix->data, gpix->n, TOL_PIXELS_ATOL, TOL_PIXELS_RTOL);

    /* vision tower from the reference pixels */
    vis = malloc((size_t)gvis->n * sizeof(float));
    proj = malloc((size_t)gproj->n * sizeof(float));
    packed = malloc((size_t)gpack->n * sizeof(float));
    if (!CHECK(vis && proj && packed)) goto done;
    CHECK_EQ(gvis->n, lay.n_crops * np * cfg->vision.hidden_size * cfg->n_feature_layers);
    CHECK(vit_forward(m, gpix->data, lay.n_crops, vis) == VLM_OK);
    CHECK_NEAR_TENSOR("vision_features", vis, gvis->data, gvis->n, TOL_STAGE_ATOL, TOL_STAGE_RTOL);

    /* projector from the reference features */
    CHECK_EQ(gproj->n, lay.n_crops * np * d);
    CHECK(vit_project(m, gvis->data, lay.n_crops * np, proj) == VLM_OK);
    CHECK_NEAR_TENSOR("projected", proj, gproj->data, gproj->n, TOL_STAGE_ATOL, TOL_STAGE_RTOL);

    /* packing from the reference projector output */
    if (!CHECK_EQ(gpack->n, lay.n_image_tokens * d)) goto done;
    CHECK(img_pack_features(gproj->data, &lay, cfg->vision.n_patches_side, d, m->w.image_newline, packed) == VLM_OK);
    CHECK_NEAR_TENSOR("packed", packed, gpack->data, gpack->n, TOL_STAGE_ATOL, TOL_STAGE_RTOL);

    /* placeholder expansion */
    int64_t n_ids;
    if (!CHECK(vlm_prompt_expand(gprompt->data, gprompt->n, cfg->image_token_index, 1, lay.n_image_tokens, &ids,
                                 &n_ids) == VLM_OK))
        goto done;
    if (!CHECK_EQ(n_ids, gids->n)) goto done;
    CHECK(memcmp(ids, gids->data, (size_t)n_ids * sizeof(int64_t)) == 0);

    /* full-prompt logits from the reference packed features */
    emb = malloc((size_t)(n_ids * d) * sizeof(float));
    logits = malloc((size_t)(n_ids * V) * sizeof(float));
    if (!CHECK(emb && logits)) goto done;
    if (!CHECK(vlm_prompt_embed(m, ids, n_ids, gpack->data, lay.n_image_tokens, emb) == VLM_OK)) goto done;
    if (!CHECK_EQ(glog->shape[1], V)) goto done;
    int64_t gen[20], n_gen = 0;
    if (!CHECK(vlm_generate_greedy(m, emb, n_ids, ggreedy->n, NULL, 0, gen, &n_gen, logits, NULL, NULL, NULL) == VLM_OK))
        goto done;
    double worst = 0, cos_min = 1;
    for (int64_t r = 0; r < gpos->n; r++) {
        int64_t p = i64_at(gpos, r);
        if (!CHECK(p >= 0 && p < n_ids)) goto done;
        const float *ref = (const float *)glog->data + r * V;
        char label[64];
        snprintf(label, sizeof label, "logits[pos %lld]", (long long)p);
        CHECK_NEAR_TENSOR(label, logits + p * V, ref, V, TOL_LOGITS_ATOL, TOL_LOGITS_RTOL);
        double e = test_max_abs_diff(logits + p * V, ref, V), cs = test_cosine(logits + p * V, ref, V);
        worst = e > worst ? e : worst;
        cos_min = cs < cos_min ? cs : cos_min;
    }
    CHECK(cos_min >= TOL_LOGITS_MIN_COSINE);
    if (test_verbose()) fprintf(stderr, "  %s: logits max abs %.3g, min cosine %.9f\n", c->golden, worst, cos_min);

    /* greedy tokens with the KV cache */
    CHECK_EQ(n_gen, ggreedy->n);
    for (int64_t i = 0; i < n_gen && i < ggreedy->n; i++) CHECK_EQ(gen[i], i64_at(ggreedy, i));
done:
    free(pixels);
    free(vis);
    free(proj);
    free(packed);
    free(emb);
    free(logits);
    free(ids);
    vlm_model_free(m);
    golden_free(&g);
}

TEST(e2e_single_crop) { run_case(&k_cases[0]); }
TEST(e2e_unpad_multicrop) { run_case(&k_cases[1]); }
TEST(e2e_anyres_max_pooling) { run_case(&k_cases[2]); }
TEST(e2e_jpeg) { run_case(&k_cases[3]); }
TEST(e2e_odd_shapes) { run_case(&k_cases[4]); }

/* The KV-cache decode must give the same tokens as recomputing the whole sequence every step. */
TEST(e2e_kv_cache_equals_recompute) {
    struct golden_file g;
    struct vlm_model *m = NULL;
    float *emb = NULL, *logits = NULL;
    int64_t *seq = NULL;
    if (golden_load("tests/golden/unpad_png.bin", &g) != 0) return;
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    const struct golden_tensor *gpack = golden_get(&g, "packed", GOLDEN_F32);
    const struct golden_tensor *ggreedy = golden_get(&g, "greedy", GOLDEN_I64);
    if (!gids || !gpack || !ggreedy) goto done;
    if (!CHECK(vlm_model_load(test_path("tests/data/models/tiny_unpad"), &m) == VLM_OK)) goto done;
    const int64_t d = m->config.text.hidden_size, V = m->w.n_vocab_rows, n0 = gids->n, steps = 8;
    const int64_t n_img = gpack->n / d;
    seq = malloc((size_t)(n0 + steps) * sizeof(int64_t));
    emb = malloc((size_t)((n0 + steps) * d) * sizeof(float));
    logits = malloc((size_t)V * sizeof(float));
    if (!CHECK(seq && emb && logits)) goto done;
    memcpy(seq, gids->data, (size_t)n0 * sizeof(int64_t));
    for (int64_t s = 0; s < steps; s++) {
        int64_t n = n0 + s;
        struct kv_cache kv;
        if (!CHECK(kv_cache_init(&kv, &m->config.text, n) == VLM_OK)) goto done;
        CHECK(vlm_prompt_embed(m, seq, n, gpack->data, n_img, emb) == VLM_OK);
        CHECK(qwen2_forward(m, &kv, emb, n, logits, 0) == VLM_OK);
        kv_cache_free(&kv);
        seq[n] = vlm_argmax(logits, V);
        CHECK_EQ(seq[n], i64_at(ggreedy, s));
    }
done:
    free(seq);
    free(emb);
    free(logits);
    vlm_model_free(m);
    golden_free(&g);
}

/* A session (vlm_session_generate) keeps what it cached: a prompt that extends the last one prefills only the new
 * tokens, a prompt that diverges keeps the common prefix, and the tokens still equal transformers' greedy ones
 * (golden "greedy": 20 tokens after input_ids) and a fresh prefill's. The cache also grows between calls. */
TEST(e2e_session_reuses_prefix) {
    struct golden_file g;
    struct vlm_model *m = NULL;
    struct vlm_session s = {0};
    int64_t *seq = NULL;
    float *emb = NULL;
    if (golden_load("tests/golden/unpad_png.bin", &g) != 0) return;
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    const struct golden_tensor *gpack = golden_get(&g, "packed", GOLDEN_F32);
    const struct golden_tensor *ggreedy = golden_get(&g, "greedy", GOLDEN_I64);
    if (!gids || !gpack || !ggreedy || !CHECK(ggreedy->n >= 16)) goto done;
    if (!CHECK(vlm_model_load(test_path("tests/data/models/tiny_unpad"), &m) == VLM_OK)) goto done;
    const int64_t d = m->config.text.hidden_size, n0 = gids->n, n_img = gpack->n / d;
    const int64_t *ref = (const int64_t *)ggreedy->data;
    seq = malloc((size_t)(n0 + 20) * sizeof *seq);
    emb = malloc((size_t)((n0 + 20) * d) * sizeof *emb);
    if (!CHECK(seq && emb)) goto done;
    memcpy(seq, gids->data, (size_t)n0 * sizeof *seq);
    int64_t gen[20], n_gen = 0, cached = -1;

    /* 1: the prompt, 4 tokens: nothing cached yet */
    if (!CHECK(vlm_session_generate(m, &s, seq, n0, gpack->data, n_img, 4, NULL, 0, gen, &n_gen, NULL, NULL, NULL,
                                    &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, 0);
    CHECK_EQ(n_gen, 4);
    for (int64_t i = 0; i < n_gen; i++) CHECK_EQ(gen[i], ref[i]);
    CHECK_EQ(s.n_ids, n0 + 3); /* the last answer token was never fed back */
    const int64_t cap1 = s.kv.max_seq;

    /* 2: the prompt and transformers' first 10 tokens, 6 more: the 3 fed-back answer tokens are reused too, the
     * cache grows, and the continuation is transformers' tokens 10..15 */
    memcpy(seq + n0, ref, 10 * sizeof *seq);
    if (!CHECK(vlm_session_generate(m, &s, seq, n0 + 10, gpack->data, n_img, 6, NULL, 0, gen, &n_gen, NULL, NULL,
                                    NULL, &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, n0 + 3);
    CHECK(s.kv.max_seq > cap1);
    CHECK_EQ(n_gen, 6);
    for (int64_t i = 0; i < n_gen; i++) CHECK_EQ(gen[i], ref[10 + i]);

    /* 3: the bare prompt again: all but its last token come from the (longer) cache */
    if (!CHECK(vlm_session_generate(m, &s, seq, n0, gpack->data, n_img, 8, NULL, 0, gen, &n_gen, NULL, NULL, NULL,
                                    &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, n0 - 1);
    for (int64_t i = 0; i < n_gen; i++) CHECK_EQ(gen[i], ref[i]);

    /* 4: a prompt that differs from the cached one at its second-to-last token (after the image): the prefix up
     * to there is kept, and the answer equals a fresh prefill's */
    int64_t j = n0 - 2;
    if (!CHECK(seq[j] != m->config.image_token_index)) goto done;
    seq[j] = seq[j] == 0 ? 1 : 0;
    int64_t fresh[8], n_fresh = 0;
    if (!CHECK(vlm_session_generate(m, &s, seq, n0, gpack->data, n_img, 8, NULL, 0, gen, &n_gen, NULL, NULL, NULL,
                                    &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, j);
    if (!CHECK(vlm_prompt_embed(m, seq, n0, gpack->data, n_img, emb) == VLM_OK)) goto done;
    if (!CHECK(vlm_generate_greedy(m, emb, n0, 8, NULL, 0, fresh, &n_fresh, NULL, NULL, NULL, NULL) == VLM_OK))
        goto done;
    CHECK_EQ(n_gen, n_fresh);
    for (int64_t i = 0; i < n_gen && i < n_fresh; i++) CHECK_EQ(gen[i], fresh[i]);

    /* 5: a prompt that cannot fit the model's positions: one error before anything runs; the session is kept */
    const int64_t held = s.n_ids;
    test_capture_begin();
    enum vlm_status st = vlm_session_generate(m, &s, seq, n0, gpack->data, n_img,
                                              m->config.text.max_position_embeddings, NULL, 0, gen, &n_gen, NULL,
                                              NULL, NULL, &cached);
    char msg[256];
    test_capture_end(msg, sizeof msg);
    CHECK(st == VLM_ERR_ARG);
    CHECK(strstr(msg, "do not fit") != NULL);
    CHECK_EQ(s.n_ids, held);
done:
    vlm_session_free(&s);
    free(seq);
    free(emb);
    vlm_model_free(m);
    golden_free(&g);
}

/* Every SigLIP hidden state (0 = embeddings, i = output of layer i) against transformers' hidden_states list, by
 * asking a copy of the model for that single layer's features: a mismatch names the first layer that drifts. */
static void check_vision_hidden(const char *golden, const char *model) {
    struct golden_file g;
    struct vlm_model *m = NULL;
    float *out = NULL;
    if (golden_load(golden, &g) != 0) return;
    const struct golden_tensor *gpix = golden_get(&g, "pixel_values", GOLDEN_F32);
    if (!gpix || !CHECK(vlm_model_load(test_path(model), &m) == VLM_OK)) goto done;
    const int64_t n_crops = gpix->shape[0];
    for (int i = 0; i <= m->config.vision.n_layers; i++) {
        char name[32];
        snprintf(name, sizeof name, "vision_hidden_%d", i);
        const struct golden_tensor *ref = golden_get(&g, name, GOLDEN_F32);
        if (!ref) break;
        struct vlm_model one = *m;
        one.config.n_feature_layers = 1;
        one.config.feature_layers[0] = i;
        one.w.n_vit_layers = i; /* layers past the selected one are not needed */
        free(out);
        out = malloc((size_t)ref->n * sizeof(float));
        const int64_t P = m->config.vision.n_patches_side;
        if (!CHECK(out != NULL) || !CHECK_EQ(ref->n, n_crops * P * P * m->config.vision.hidden_size)) break;
        CHECK(vit_forward(&one, gpix->data, n_crops, out) == VLM_OK);
        CHECK_NEAR_TENSOR(name, out, ref->data, ref->n, TOL_STAGE_ATOL, TOL_STAGE_RTOL);
    }
done:
    free(out);
    vlm_model_free(m);
    golden_free(&g);
}

TEST(e2e_vision_hidden_states) {
    check_vision_hidden("tests/golden/single_png.bin", "tests/data/models/tiny_single");
    check_vision_hidden("tests/golden/unpad_png.bin", "tests/data/models/tiny_unpad");
    check_vision_hidden("tests/golden/odd_png.bin", "tests/data/models/tiny_odd");
}

/* Every decoder layer's output at the last prompt position against transformers' hidden_states (captured by the
 * fixture script): entry i < L is the output of layer i (0 = embeddings), entry L is after the final norm, and
 * hidden_last_prenorm is the last layer's output before it. A copy of the model cut to i layers gives entry i. */
static void check_decoder_hidden(const char *golden, const char *model) {
    struct golden_file g;
    struct vlm_model *m = NULL;
    float *emb = NULL, *h = NULL;
    if (golden_load(golden, &g) != 0) return;
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    const struct golden_tensor *gpack = golden_get(&g, "packed", GOLDEN_F32);
    const struct golden_tensor *ghid = golden_get(&g, "hidden_last", GOLDEN_F32);
    const struct golden_tensor *gpre = golden_get(&g, "hidden_last_prenorm", GOLDEN_F32);
    if (!gids || !gpack || !ghid || !gpre || !CHECK(vlm_model_load(test_path(model), &m) == VLM_OK)) goto done;
    const int64_t d = m->config.text.hidden_size, n = gids->n, L = m->config.text.n_layers;
    if (!CHECK_EQ(ghid->shape[0], L + 1) || !CHECK_EQ(ghid->shape[1], d)) goto done;
    emb = malloc((size_t)(n * d) * sizeof(float));
    h = malloc((size_t)d * sizeof(float));
    if (!CHECK(emb && h) || !CHECK(vlm_prompt_embed(m, gids->data, n, gpack->data, gpack->n / d, emb) == VLM_OK))
        goto done;
    for (int64_t i = 0; i <= L; i++) {
        struct vlm_model cut = *m;
        cut.config.text.n_layers = i < L ? i : L;
        struct kv_cache kv;
        if (!CHECK(kv_cache_init(&kv, &cut.config.text, n) == VLM_OK)) goto done;
        CHECK(qwen2_forward_ex(&cut, &kv, emb, n, NULL, 0, h) == VLM_OK);
        kv_cache_free(&kv);
        char label[48];
        snprintf(label, sizeof label, "decoder hidden %lld", (long long)i);
        if (i < L) {
            CHECK_NEAR_TENSOR(label, h, (const float *)ghid->data + i * d, d, TOL_STAGE_ATOL, TOL_STAGE_RTOL);
        } else {
            CHECK_NEAR_TENSOR("decoder last layer (pre-norm)", h, gpre->data, d, TOL_STAGE_ATOL, TOL_STAGE_RTOL);
            float *normed = emb; /* reuse: the prompt embeddings are no longer needed */
            for (int64_t k = 0; k < d; k++) normed[k] = h[k];
            cpu_rmsnorm_ref(normed, normed, m->w.final_norm, 1, d, m->config.text.rms_norm_eps);
            CHECK_NEAR_TENSOR("decoder final norm", normed, (const float *)ghid->data + L * d, d, TOL_STAGE_ATOL,
                              TOL_STAGE_RTOL);
        }
    }
done:
    free(emb);
    free(h);
    vlm_model_free(m);
    golden_free(&g);
}

TEST(e2e_decoder_hidden_states) {
    check_decoder_hidden("tests/golden/single_png.bin", "tests/data/models/tiny_single");
    check_decoder_hidden("tests/golden/pool_png.bin", "tests/data/models/tiny_pool");
    check_decoder_hidden("tests/golden/odd_png.bin", "tests/data/models/tiny_odd");
}
