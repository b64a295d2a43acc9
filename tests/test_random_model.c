/* test_random_model.c — vlmconvert --random: the published sizes' configs equal the committed ones, a random
 * model of tiny_q's config loads through the strict .mbq loader in every decoder format with the requested
 * dimensions, values of the intended scale and finite vision and decoder outputs; --layers / --vision-layers cut
 * it and say so; the bytes depend on the seed alone (not on the write chunking); bad arguments give one line,
 * exit 2 and no file. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "converter/conv.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "test.h"
#include "vision/image.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

#define TINY_CONFIG "tests/data/models/tiny_q/config.json"

static bool exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static struct conv_options ropts(const char *out, enum conv_method method, int wbits, int abits,
                                 enum vlm_qformat fl, uint64_t seed) {
    return (struct conv_options){.random = test_path(TINY_CONFIG), .out_path = out, .method = method,
                                 .wbits = wbits, .abits = abits, .group = 128, .float_fmt = fl, .embed_fmt = fl,
                                 .head_fmt = fl, .seed = seed, .quiet = true};
}

/* A quiet load; NULL after a failed CHECK. */
static struct vlm_model *load(const char *path) {
    struct vlm_model *m = NULL;
    char log[4096];
    test_capture_begin();
    enum vlm_status st = vlm_model_load(path, &m);
    test_capture_end(log, sizeof log);
    if (!CHECK(st == VLM_OK)) fprintf(stderr, "%s", log);
    return st == VLM_OK ? m : NULL;
}

static bool write_random(const struct conv_options *o) {
    char log[4096];
    test_capture_begin();
    enum vlm_status st = conv_random_run(o);
    test_capture_end(log, sizeof log);
    if (!CHECK(st == VLM_OK)) fprintf(stderr, "%s", log);
    return st == VLM_OK;
}

TEST(random_presets_equal_the_published_configs) {
    static const char *const sizes[] = {"0.5b", "7b", "72b"};
    for (int i = 0; i < 3; i++) {
        char path[128];
        snprintf(path, sizeof path, "tests/data/configs/%s/config.json", sizes[i]);
        struct vlm_config want, got;
        cJSON *j = conv_random_preset(sizes[i]);
        if (!CHECK(j) || !CHECK(vlm_config_parse(test_path(path), &want) == VLM_OK) ||
            !CHECK(vlm_config_parse_json(j, sizes[i], &got) == VLM_OK)) {
            cJSON_Delete(j);
            continue;
        }
        cJSON_Delete(j);
        const struct vlm_text_config *a = &got.text, *b = &want.text;
        CHECK(a->hidden_size == b->hidden_size && a->intermediate_size == b->intermediate_size &&
              a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
              a->head_dim == b->head_dim && a->vocab_size == b->vocab_size &&
              a->max_position_embeddings == b->max_position_embeddings && a->rms_norm_eps == b->rms_norm_eps &&
              a->rope_theta == b->rope_theta && a->hidden_act == b->hidden_act &&
              a->tie_word_embeddings == b->tie_word_embeddings);
        const struct vlm_vision_config *v = &got.vision, *u = &want.vision;
        CHECK(v->hidden_size == u->hidden_size && v->intermediate_size == u->intermediate_size &&
              v->n_layers == u->n_layers && v->n_heads == u->n_heads && v->head_dim == u->head_dim &&
              v->image_size == u->image_size && v->patch_size == u->patch_size && v->n_channels == u->n_channels &&
              v->layer_norm_eps == u->layer_norm_eps && v->hidden_act == u->hidden_act);
        CHECK(got.n_feature_layers == want.n_feature_layers && got.feature_layers[0] == want.feature_layers[0] &&
              got.select_strategy == want.select_strategy && got.anyres_max == want.anyres_max &&
              got.image_token_index == want.image_token_index && got.projector_act == want.projector_act &&
              got.projector_bias == want.projector_bias && got.n_pinpoints == want.n_pinpoints &&
              memcmp(got.pinpoints, want.pinpoints, sizeof got.pinpoints[0] * (size_t)got.n_pinpoints) == 0);
    }
    CHECK(conv_random_preset("13b") == NULL);
    cJSON *upper = conv_random_preset("7B"); /* names are case-insensitive */
    CHECK(upper != NULL);
    cJSON_Delete(upper);
}

/* Standard deviation of all of q's dequantized values (every row: the random scales vary per group and row). */
static double mat_std(const struct vlm_qmat *q) {
    float *row = malloc((size_t)q->k * sizeof(float));
    double s = 0, s2 = 0;
    for (int64_t r = 0; r < q->n; r++) {
        vlm_dequantize_row_ref(q, r, row);
        for (int64_t j = 0; j < q->k; j++) s += row[j], s2 += (double)row[j] * row[j];
    }
    free(row);
    const double ne = (double)q->n * (double)q->k, mean = s / ne;
    return sqrt(s2 / ne - mean * mean);
}

TEST(random_model_loads_and_runs_in_every_format) {
    static const struct {
        enum conv_method method;
        int wbits, abits;
        enum vlm_qformat lin, fl;
    } cases[] = {
        {CONV_RTN, 3, 16, VLM_QF_W3G128, VLM_QF_F16}, {CONV_RTN, 4, 16, VLM_QF_W4G128, VLM_QF_F16},
        {CONV_RTN, 4, 8, VLM_QF_W4A8, VLM_QF_BF16},   {CONV_F16, 4, 16, VLM_QF_F16, VLM_QF_F16},
        {CONV_F32, 4, 16, VLM_QF_F32, VLM_QF_F32},
    };
    struct vlm_config want;
    if (!CHECK(vlm_config_parse(test_path(TINY_CONFIG), &want) == VLM_OK)) return;
    struct vlm_image img = {0};
    if (!CHECK(img_load(test_path("tests/data/images/unpad_70x150.png"), &img) == VLM_OK)) return;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const char *out = test_tmp_path("r.mbq");
        struct conv_options o = ropts(out, cases[c].method, cases[c].wbits, cases[c].abits, cases[c].fl, 42);
        if (cases[c].lin == VLM_QF_W3G128) o.head_fmt = VLM_QF_Q8R; /* a separate int8 head of the tied model */
        if (!write_random(&o)) continue;
        struct vlm_model *m = load(out);
        if (!m) continue;
        const struct vlm_text_config *t = &m->config.text;
        CHECK(t->hidden_size == want.text.hidden_size && t->n_layers == want.text.n_layers &&
              t->intermediate_size == want.text.intermediate_size && t->n_heads == want.text.n_heads &&
              m->w.n_vit_layers == want.vision.n_layers && m->w.n_vocab_rows == want.text.vocab_size);
        CHECK(strcmp(m->quant_method, "random") == 0);
        CHECK(!vlm_model_has_tokenizer(m));
        for (int64_t l = 0; l < t->n_layers; l++) {
            const struct qwen2_layer_weights *L = &m->w.layers[l];
            CHECK(L->wq.fmt == cases[c].lin && L->wk.fmt == cases[c].lin && L->wdown.fmt == cases[c].lin);
            for (int64_t i = 0; i < t->hidden_size; i++) CHECK(L->attn_norm[i] == 1.0f && L->mlp_norm[i] == 1.0f);
        }
        CHECK(m->w.embed_q.fmt == cases[c].fl);
        CHECK(m->w.lm_head_q.fmt == o.head_fmt && m->lm_head_tied == (o.head_fmt == o.embed_fmt));
        /* the scale of HF's initialisation: dequantized weights with a standard deviation near 0.02 */
        const struct vlm_qmat *mats[] = {&m->w.layers[0].wq, &m->w.layers[0].wdown, &m->w.embed_q,
                                         &m->w.lm_head_q};
        for (int i = 0; i < 4; i++) {
            double sd = mat_std(mats[i]);
            if (!CHECK(sd > 0.018 && sd < 0.022)) FAIL("case %zu matrix %d: std %g, want ~0.02", c, i, sd);
        }
        /* the vision tower and the decoder run and stay finite */
        struct img_layout lay;
        float *feats = NULL;
        if (CHECK(vlm_image_encode(m, &img, &lay, &feats) == VLM_OK)) {
            const int64_t n = lay.n_image_tokens * t->hidden_size;
            int64_t bad = 0;
            for (int64_t i = 0; i < n; i++) bad += !isfinite(feats[i]);
            CHECK_EQ(bad, 0);
        }
        free(feats);
        const int64_t ids[] = {1, 17, 300, 5, 999, 42}, n = 6, d = t->hidden_size, V = m->w.n_vocab_rows;
        float *emb = malloc((size_t)(n * d) * sizeof(float)), *logits = malloc((size_t)(n * V) * sizeof(float));
        struct kv_cache kv;
        if (CHECK(vlm_prompt_embed(m, ids, n, NULL, 0, emb) == VLM_OK) &&
            CHECK(kv_cache_init(&kv, t, n) == VLM_OK)) {
            if (CHECK(qwen2_forward(m, &kv, emb, n, logits, 1) == VLM_OK)) {
                int64_t bad = 0;
                double mx = 0;
                for (int64_t i = 0; i < n * V; i++) bad += !isfinite(logits[i]), mx = fmax(mx, fabs(logits[i]));
                CHECK_EQ(bad, 0);
                if (!CHECK(mx > 0.1 && mx < 100)) FAIL("case %zu: max |logit| %g", c, mx);
            }
            kv_cache_free(&kv);
        }
        free(emb);
        free(logits);
        vlm_model_free(m);
        remove(out);
    }
    img_free(&img);
}

/* The file's bytes (NULL after a failed CHECK). */
static char *slurp(const char *path, size_t *len) {
    char *b = test_read_file(path, len);
    CHECK(b != NULL);
    return b;
}

TEST(random_model_bytes_depend_on_the_seed_only) {
    const char *a = test_tmp_path("a.mbq"), *b = test_tmp_path("b.mbq"), *c = test_tmp_path("c.mbq");
    struct conv_options o = ropts(a, CONV_RTN, 3, 16, VLM_QF_F16, 7);
    o.head_fmt = VLM_QF_Q8R;
    if (!write_random(&o)) return;
    o.out_path = b;
    o.random_chunk_bytes = 1003; /* pieces that split elements, planes and tensors differently: same bytes */
    if (!write_random(&o)) return;
    o.out_path = c;
    o.random_chunk_bytes = 0;
    o.seed = 8;
    if (!write_random(&o)) return;
    size_t la, lb, lc;
    char *x = slurp(a, &la), *y = slurp(b, &lb), *z = slurp(c, &lc);
    if (x && y && z) {
        CHECK(la == lb && memcmp(x, y, la) == 0);
        CHECK(la == lc && memcmp(x, z, la) != 0);
        /* the headers differ only in the seed; every tensor differs */
        struct mbq_file *fa = NULL, *fc = NULL;
        if (CHECK(mbq_file_open(a, &fa) == VLM_OK) && CHECK(mbq_file_open(c, &fc) == VLM_OK)) {
            int64_t same = 0;
            for (int64_t i = 0; i < mbq_file_count(fa); i++) {
                const struct mbq_tensor *ta = mbq_file_at(fa, i), *tc = mbq_file_at(fc, i);
                const bool ones = strstr(ta->name, "norm") && strstr(ta->name, ".weight"); /* norms are 1 */
                same += !ones && ta->size == tc->size && memcmp(ta->data, tc->data, ta->size) == 0;
            }
            CHECK_EQ(same, 0);
        }
        mbq_file_close(fa);
        mbq_file_close(fc);
    }
    free(x), free(y), free(z);
}

/* Runs vlmconvert with args; returns its exit status, stderr into err. */
static int run_conv(const char *args, char *err, size_t cap) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s/vlmconvert %s >/dev/null", VLM_BUILD_DIR, args);
    return test_run_cmd(cmd, err, cap);
}

TEST(random_model_cli_cuts_layers_and_says_so) {
    const char *out = test_tmp_path("cut.mbq"), *out2 = test_tmp_path("cut2.mbq");
    char args[4096], err[4096];
    snprintf(args, sizeof args, "--random '%s' --out '%s' --wbits 4 --layers 1 --vision-layers 1 --seed 5 --quiet",
             test_path(TINY_CONFIG), out);
    if (!CHECK_EQ(run_conv(args, err, sizeof err), 0)) fprintf(stderr, "%s", err);
    CHECK(err[0] == 0); /* --quiet */
    snprintf(args, sizeof args, "--random '%s' --out '%s' --wbits 4 --layers 1 --vision-layers 1 --seed 5",
             test_path(TINY_CONFIG), out2);
    if (!CHECK_EQ(run_conv(args, err, sizeof err), 0)) fprintf(stderr, "%s", err);
    CHECK(strstr(err, "RANDOM weights (seed 5)") && strstr(err, "1 of 2 decoder layers"));
    size_t l1, l2;
    char *x = slurp(out, &l1), *y = slurp(out2, &l2);
    CHECK(x && y && l1 == l2 && memcmp(x, y, l1) == 0); /* the CLI is deterministic too */
    free(x), free(y);
    struct vlm_model *m = load(out);
    if (!m) return;
    CHECK_EQ(m->config.text.n_layers, 1);
    CHECK_EQ(m->config.vision.n_layers, 1);
    CHECK_EQ(m->w.n_vit_layers, 1);
    CHECK(m->w.layers[0].wq.fmt == VLM_QF_W4G128);
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "quant");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(q, "random");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "config"), "text_config");
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "decoder_layers")) == 1 &&
          cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "decoder_layers_of")) == 2 &&
          cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(r, "vision_layers_of")) == 2);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(tc, "layer_types")) == 1);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "seed")), "5") == 0);
    CHECK(strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(q, "method")), "random") == 0);
    vlm_model_free(m);
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d) closedir(d);
    return n;
}

/* vlmconvert args must fail with rc and one stderr line containing needle, and leave no file at out. */
static void expect_cli_error(const char *args, const char *out, int rc, const char *needle) {
    char err[4096];
    int got = run_conv(args, err, sizeof err);
    if (!CHECK_EQ(got, rc)) fprintf(stderr, "  args: %s\n  stderr: %s\n", args, err);
    const char *nl = strchr(err, '\n');
    if (!CHECK(nl && nl[1] == 0)) fprintf(stderr, "  want one line: %s\n", err);
    if (!CHECK(strstr(err, needle) != NULL)) fprintf(stderr, "  want '%s' in: %s\n", needle, err);
    CHECK(!exists(out));
}

TEST(random_model_cli_rejects_bad_arguments) {
    const char *dir = test_tmpdir();
    char out[700], args[4096];
    snprintf(out, sizeof out, "%s/bad.mbq", dir);
    snprintf(args, sizeof args, "--random 13b --out '%s'", out);
    expect_cli_error(args, out, 2, "--random 13b: expected 0.5b, 7b, 72b or the path of a config.json");
    snprintf(args, sizeof args, "--random '%s/none.json' --out '%s'", dir, out);
    expect_cli_error(args, out, 2, "none.json: expected 0.5b, 7b, 72b");
    snprintf(args, sizeof args, "--random 7b --out '%s' --method awq --calib x.json", out);
    expect_cli_error(args, out, 2, "--calib needs a checkpoint");
    snprintf(args, sizeof args, "--random 7b --out '%s' --method mbq", out);
    expect_cli_error(args, out, 2, "--method mbq needs a checkpoint");
    snprintf(args, sizeof args, "--random 7b --out '%s' --layers 0", out);
    expect_cli_error(args, out, 2, "--layers 0: expected a positive integer");
    snprintf(args, sizeof args, "--model x --out '%s' --layers 2", out);
    expect_cli_error(args, out, 2, "cut a --random model");
    snprintf(args, sizeof args, "--model x --random 7b --out '%s'", out);
    expect_cli_error(args, out, 2, "exclude each other");
    /* found only once the config is read: a run failure (exit 1), still no file */
    snprintf(args, sizeof args, "--random 7b --out '%s' --layers 29", out);
    expect_cli_error(args, out, 1, "--layers 29: the model has 28 decoder layers");
    snprintf(args, sizeof args, "--random '%s' --out '%s'", test_path("tests/data/models/tiny_q/model.safetensors"),
             out);
    expect_cli_error(args, out, 1, "not a JSON object");
    /* a config whose widths no group-128 format fits: the quantized formats are refused, fp16 works */
    snprintf(args, sizeof args, "--random '%s' --out '%s' --wbits 4",
             test_path("tests/data/models/tiny_single/config.json"), out);
    expect_cli_error(args, out, 1, "cannot be stored as w4g128");
    CHECK_EQ(count_entries(dir), 0); /* no temporary file left either */
}
