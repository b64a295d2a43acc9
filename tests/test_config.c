/* test_config.c — config.json / preprocessor_config.json parsing (runtime/config.c): the published 0.5B/7B/72B
 * configs and the spec's derived parameter counts, transformers 5.24 defaults, and one rejection per bad value
 * (right status, one error line naming the key). */
#include "test.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/config.h"
#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------------------------------------------- */


/* A small valid config (the tiny fixtures' dims) that the variants below edit. */
static const char k_base[] =
    "{\"model_type\": \"llava_onevision\",\n"
    " \"text_config\": {\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 128,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 1024,"
    " \"rope_theta\": 1000000.0, \"tie_word_embeddings\": true},\n"
    " \"vision_config\": {\"model_type\": \"siglip_vision_model\", \"hidden_size\": 64, \"intermediate_size\": 128,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"image_size\": 56, \"patch_size\": 14},\n"
    " \"image_grid_pinpoints\": [[56, 56], [56, 112], [112, 56]],\n"
    " \"image_token_index\": 1000}\n";

static const char *write_json(const char *name, const char *text) {
    static char bufs[4][700];
    static int k;
    char *path = bufs[k++ & 3];
    snprintf(path, sizeof bufs[0], "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0) FAIL("cannot write %s", path);
    if (f) fclose(f);
    return path;
}

/* k_base with the first occurrence of `from` replaced by `to` (FAIL when absent: the test would prove nothing). */
static const char *variant(const char *from, const char *to) {
    static char buf[8192];
    const char *at = strstr(k_base, from);
    if (!at) {
        FAIL("variant: '%s' not in the base config", from);
        snprintf(buf, sizeof buf, "%s", k_base);
        return buf;
    }
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - k_base), k_base, to, at + strlen(from));
    return buf;
}

/* Parses text as config.json (or preprocessor_config.json when pre) with stderr captured into err. */
static enum vlm_status parse_capture(const char *text, bool pre, void *out, char *err, size_t cap) {
    const char *path = write_json(pre ? "preprocessor_config.json" : "config.json", text);
    test_capture_begin();
    enum vlm_status st = pre ? vlm_preproc_parse(path, out) : vlm_config_parse(path, out);
    test_capture_end(err, cap);
    if (test_verbose() && err[0]) fprintf(stderr, "  stderr: %s", err);
    if (st != VLM_OK) {
        const char *nl = strchr(err, '\n');
        if (!nl || nl[1] != '\0') FAIL("expected exactly one error line, got: %s", err);
        if (!strstr(err, path)) FAIL("error line does not name the file: %s", err);
    }
    return st;
}

/* Expects the config text to be rejected with `want`, the message containing `needle`; *out untouched. */
#define EXPECT_CFG(text, want, needle) expect_cfg((text), (want), (needle), __LINE__)
static void expect_cfg(const char *text, enum vlm_status want, const char *needle, int line) {
    struct vlm_config c;
    memset(&c, 0x5a, sizeof c);
    char err[2048];
    enum vlm_status st = parse_capture(text, false, &c, err, sizeof err);
    if (st != want) FAIL("line %d: status %d (%s), want %d; stderr: %s", line, st, vlm_status_str(st), want, err);
    if (needle && !strstr(err, needle)) FAIL("line %d: message lacks '%s': %s", line, needle, err);
    if (want != VLM_OK) {
        unsigned char *b = (unsigned char *)&c;
        for (size_t i = 0; i < sizeof c; i++)
            if (b[i] != 0x5a) {
                FAIL("line %d: *out was written on failure", line);
                break;
            }
    }
}

#define EXPECT_PRE(text, want, needle) expect_pre((text), (want), (needle), __LINE__)
static void expect_pre(const char *text, enum vlm_status want, const char *needle, int line) {
    struct vlm_preproc_config p;
    char err[2048];
    enum vlm_status st = parse_capture(text, true, &p, err, sizeof err);
    if (st != want) FAIL("line %d: status %d (%s), want %d; stderr: %s", line, st, vlm_status_str(st), want, err);
    if (needle && !strstr(err, needle)) FAIL("line %d: message lacks '%s': %s", line, needle, err);
}

static bool parse_ok(const char *text, struct vlm_config *c) {
    char err[2048];
    enum vlm_status st = parse_capture(text, false, c, err, sizeof err);
    if (st != VLM_OK) FAIL("expected a valid config, got %s: %s", vlm_status_str(st), err);
    return st == VLM_OK;
}

/* x in units of 0.1 M (or 0.01 M), rounded half away from zero: matches how the spec's table was rounded. */
static int64_t tenths_of_m(int64_t x) { return llround((double)x / 1e5); }
static int64_t hundredths_of_m(int64_t x) { return llround((double)x / 1e4); }

/* ---------------------------------------------------------------------------------------------------------------
 * published configs (tests/data/configs/{0.5b,7b,72b}: transformers to_json_file with the published dims)
 * ------------------------------------------------------------------------------------------------------------- */

struct published {
    const char *dir;
    int64_t d, layers, heads, kv, hd, f, vocab;
    bool tie;
    int64_t linear_tenths;      /* spec §2.1 "linear params" in 0.1 M */
    int64_t projector_hundredths; /* spec §2.3 in 0.01 M */
    int64_t kv_bytes_fp16;      /* spec §2.1 */
};

static const struct published k_pub[] = {
    {"tests/data/configs/0.5b", 896, 24, 14, 2, 64, 4864, 151936, true, 3578, 184, 12288},
    {"tests/data/configs/7b", 3584, 28, 28, 4, 128, 18944, 152064, false, 65253, 1698, 57344},
    {"tests/data/configs/72b", 8192, 80, 64, 8, 128, 29568, 152064, false, 702126, 7656, 327680},
};

TEST(config_published_parse) {
    for (size_t i = 0; i < sizeof k_pub / sizeof k_pub[0]; i++) {
        const struct published *p = &k_pub[i];
        char rel[256];
        snprintf(rel, sizeof rel, "%s/config.json", p->dir);
        struct vlm_config c;
        if (!CHECK(vlm_config_parse(test_path(rel), &c) == VLM_OK)) continue; /* a missing file fails here */
        CHECK_EQ(c.text.hidden_size, p->d);
        CHECK_EQ(c.text.n_layers, p->layers);
        CHECK_EQ(c.text.n_heads, p->heads);
        CHECK_EQ(c.text.n_kv_heads, p->kv);
        CHECK_EQ(c.text.head_dim, p->hd);
        CHECK_EQ(c.text.intermediate_size, p->f);
        CHECK_EQ(c.text.vocab_size, p->vocab);
        CHECK_EQ(c.text.max_position_embeddings, 32768);
        CHECK(c.text.rope_theta == 1000000.0f); /* from rope_parameters (transformers 5.x form) */
        CHECK(c.text.rms_norm_eps == 1e-6f);
        CHECK(c.text.hidden_act == VLM_ACT_SILU);
        CHECK(c.text.tie_word_embeddings == p->tie);
        CHECK_EQ(c.vision.hidden_size, 1152);
        CHECK_EQ(c.vision.intermediate_size, 4304);
        CHECK_EQ(c.vision.n_layers, 26);
        CHECK_EQ(c.vision.n_heads, 16);
        CHECK_EQ(c.vision.head_dim, 72);
        CHECK_EQ(c.vision.image_size, 384);
        CHECK_EQ(c.vision.patch_size, 14);
        CHECK_EQ(c.vision.n_patches_side, 27);
        CHECK(c.vision.hidden_act == VLM_ACT_GELU_TANH);
        CHECK(c.vision.layer_norm_eps == 1e-6f);
        CHECK_EQ(c.n_feature_layers, 1);
        CHECK_EQ(c.feature_layers[0], 26); /* -1 of the 27 hidden states */
        CHECK(c.select_strategy == VLM_SELECT_FULL);
        CHECK_EQ(c.n_pinpoints, 36);
        CHECK(c.pinpoints[0][0] == 384 && c.pinpoints[0][1] == 384);
        CHECK(c.pinpoints[1][0] == 384 && c.pinpoints[1][1] == 768); /* (height, width), height-major */
        CHECK(c.pinpoints[35][0] == 2304 && c.pinpoints[35][1] == 2304);
        CHECK_EQ(c.anyres_max, 9);
        CHECK_EQ(c.image_token_index, 151646);
        CHECK(c.projector_act == VLM_ACT_GELU_ERF);
        CHECK(c.projector_bias);
    }
}

TEST(config_published_param_counts) {
    for (size_t i = 0; i < sizeof k_pub / sizeof k_pub[0]; i++) {
        const struct published *p = &k_pub[i];
        char rel[256];
        snprintf(rel, sizeof rel, "%s/config.json", p->dir);
        struct vlm_config c;
        if (!CHECK(vlm_config_parse(test_path(rel), &c) == VLM_OK)) continue;
        struct vlm_param_count n;
        vlm_config_count_params(&c, &n);
        if (!CHECK_EQ(tenths_of_m(n.text_linear), p->linear_tenths))
            FAIL("%s: linear %lld", p->dir, (long long)n.text_linear);
        if (!CHECK_EQ(hundredths_of_m(n.projector), p->projector_hundredths))
            FAIL("%s: projector %lld", p->dir, (long long)n.projector);
        /* spec §2.2: 15 239 504 per SigLIP layer, 396.2 M for 26 layers, + 1.52 M embeddings and post-LN */
        CHECK_EQ(n.vision - 26 * 15239504ll, 1520640);
        CHECK_EQ(tenths_of_m(26 * 15239504ll), 3962);
        /* embeddings counted from the config's base vocab_size (not the checkpoint's padded rows) */
        CHECK_EQ(n.embedding, p->vocab * p->d);
        CHECK_EQ(n.lm_head, p->tie ? 0 : p->vocab * p->d);
        CHECK_EQ(n.text_other, p->layers * (p->heads * p->hd + 2 * p->kv * p->hd + 2 * p->d) + p->d);
        CHECK_EQ(n.total, n.vision + n.projector + p->d + n.text_linear + n.text_other + n.embedding + n.lm_head);
        struct vlm_mem_estimate m;
        vlm_config_estimate_memory(&c, &m);
        CHECK_EQ(m.kv_bytes_per_token_fp16, p->kv_bytes_fp16);
        CHECK_EQ(m.kv_bytes_per_token_fp32, 2 * p->kv_bytes_fp16);
        CHECK_EQ(m.fp32_bytes, 4 * n.total);
        CHECK_EQ(m.fp16_bytes, 2 * n.total);
        CHECK_EQ(m.params.total, n.total);
        if (test_verbose())
            fprintf(stderr, "  %s: total %.1f M, linear %.1f M, projector %.2f M, fp16 %.2f GB, kv %lld B/token\n",
                    p->dir, n.total / 1e6, n.text_linear / 1e6, n.projector / 1e6, m.fp16_bytes / 1e9,
                    (long long)m.kv_bytes_per_token_fp16);
    }
}

TEST(config_published_preprocessor) {
    for (size_t i = 0; i < sizeof k_pub / sizeof k_pub[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "%s/preprocessor_config.json", k_pub[i].dir);
        struct vlm_preproc_config p;
        if (!CHECK(vlm_preproc_parse(test_path(rel), &p) == VLM_OK)) continue;
        CHECK(p.size_h == 384 && p.size_w == 384);
        for (int k = 0; k < 3; k++) CHECK(p.image_mean[k] == 0.5f && p.image_std[k] == 0.5f);
        CHECK(p.rescale_factor == 1.0 / 255.0);
        CHECK_EQ(p.resample, 3);
        CHECK(p.do_rescale && p.do_normalize && p.do_convert_rgb);
        CHECK_EQ(p.n_pinpoints, 36);
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * defaults and accepted forms
 * ------------------------------------------------------------------------------------------------------------- */

TEST(config_base_and_defaults) {
    struct vlm_config c;
    if (!parse_ok(k_base, &c)) return;
    CHECK_EQ(c.text.head_dim, 16);
    CHECK_EQ(c.text.max_position_embeddings, 32768);
    CHECK(c.text.rms_norm_eps == 1e-6f);
    CHECK(c.text.rope_theta == 1e6f);
    CHECK(c.text.tie_word_embeddings);
    CHECK(!c.tie_word_embeddings); /* top-level flag absent: false (informational) */
    CHECK(c.vision.hidden_act == VLM_ACT_GELU_TANH);
    CHECK(c.vision.layer_norm_eps == 1e-6f);
    CHECK_EQ(c.vision.n_channels, 3);
    CHECK_EQ(c.vision.n_patches_side, 4);
    CHECK_EQ(c.n_feature_layers, 1);
    CHECK_EQ(c.feature_layers[0], 2);
    CHECK(c.select_strategy == VLM_SELECT_FULL);
    CHECK_EQ(c.anyres_max, 9);
    CHECK(c.projector_act == VLM_ACT_GELU_ERF);
    CHECK(c.projector_bias);
    CHECK_EQ(c.n_pinpoints, 3);
    CHECK(c.pinpoints[1][0] == 56 && c.pinpoints[1][1] == 112);
    CHECK_EQ(c.image_token_index, 1000);
    CHECK_EQ(vlm_config_n_vit_layers(&c), 2);
}

TEST(config_defaults_when_absent) {
    /* a 384 tower without pinpoints, image token, rope: the 5.24 defaults apply */
    const char *text =
        "{\"model_type\": \"llava_onevision\", \"text_config\": {\"hidden_size\": 64, \"intermediate_size\": 128,"
        " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": null,"
        " \"vocab_size\": 152064}}";
    struct vlm_config c;
    if (!parse_ok(text, &c)) return;
    CHECK_EQ(c.text.n_kv_heads, 4); /* explicit null: as many as the query heads */
    CHECK(c.text.rope_theta == 10000.0f);
    CHECK(!c.text.tie_word_embeddings);
    CHECK_EQ(c.image_token_index, 151646);
    CHECK_EQ(c.n_pinpoints, 36);
    CHECK(c.pinpoints[6][0] == 768 && c.pinpoints[6][1] == 384);
    /* vision_config absent: LlavaOnevisionConfig's sub-config defaults */
    CHECK_EQ(c.vision.hidden_size, 1152);
    CHECK_EQ(c.vision.n_layers, 26);
    CHECK_EQ(c.vision.image_size, 384);
    CHECK_EQ(c.vision.patch_size, 14);
    CHECK_EQ(c.feature_layers[0], 26);
}

TEST(config_rope_forms) {
    struct vlm_config c;
    /* rope_parameters wins over a top-level rope_theta (HF priority) */
    if (parse_ok(variant("\"rope_theta\": 1000000.0", "\"rope_theta\": 5.0, \"rope_parameters\": {\"rope_type\": "
                                                      "\"default\", \"rope_theta\": 20000.0}"), &c))
        CHECK(c.text.rope_theta == 20000.0f);
    /* rope_parameters without theta: the top-level one */
    if (parse_ok(variant("\"rope_theta\": 1000000.0", "\"rope_theta\": 5000.0, \"rope_parameters\": {\"rope_type\": "
                                                      "\"default\"}"), &c))
        CHECK(c.text.rope_theta == 5000.0f);
    /* 4.x: rope_scaling null */
    if (parse_ok(variant("\"rope_theta\": 1000000.0", "\"rope_theta\": 300.0, \"rope_scaling\": null"), &c))
        CHECK(c.text.rope_theta == 300.0f);
    /* nested by layer type */
    if (parse_ok(variant("\"rope_theta\": 1000000.0", "\"rope_parameters\": {\"full_attention\": {\"rope_type\": "
                                                      "\"default\", \"rope_theta\": 7.0}}"), &c))
        CHECK(c.text.rope_theta == 7.0f);
    EXPECT_CFG(variant("\"rope_theta\": 1000000.0", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}"),
               VLM_ERR_UNSUPPORTED, "rope_type");
    EXPECT_CFG(variant("\"rope_theta\": 1000000.0", "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4}"),
               VLM_ERR_UNSUPPORTED, "rope_type");
    EXPECT_CFG(variant("\"rope_theta\": 1000000.0", "\"rope_theta\": 0"), VLM_ERR_FORMAT, "rope_theta");
    EXPECT_CFG(variant("\"rope_theta\": 1000000.0", "\"rope_theta\": -1"), VLM_ERR_FORMAT, "rope_theta");
    EXPECT_CFG(variant("\"rope_theta\": 1000000.0", "\"rope_parameters\": {\"rope_theta\": \"big\"}"),
               VLM_ERR_FORMAT, "rope_parameters.rope_theta");
}

TEST(config_feature_layers) {
    struct vlm_config c;
    if (parse_ok(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": "
                                                        "[-2, -1]"), &c)) {
        CHECK_EQ(c.n_feature_layers, 2);
        CHECK_EQ(c.feature_layers[0], 1);
        CHECK_EQ(c.feature_layers[1], 2);
        struct vlm_param_count n;
        vlm_config_count_params(&c, &n);
        CHECK_EQ(n.projector, 128 * 64 + 64 + 64 * 64 + 64); /* projector input = 2 x 64 */
    }
    if (parse_ok(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": 0"),
                 &c)) {
        CHECK_EQ(c.feature_layers[0], 0); /* the embeddings: no encoder layer needed */
        CHECK_EQ(vlm_config_n_vit_layers(&c), 0);
    }
    if (parse_ok(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": -3"),
                 &c))
        CHECK_EQ(c.feature_layers[0], 0);
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": 99"),
               VLM_ERR_FORMAT, "vision_feature_layer");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": -4"),
               VLM_ERR_FORMAT, "vision_feature_layer");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": 3"),
               VLM_ERR_FORMAT, "vision_feature_layer");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": []"),
               VLM_ERR_FORMAT, "vision_feature_layer");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": 1.5"),
               VLM_ERR_FORMAT, "vision_feature_layer");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_feature_layer\": "
                                                      "[1, \"x\"]"), VLM_ERR_FORMAT, "vision_feature_layer");
}

TEST(config_other_accepted_forms) {
    struct vlm_config c;
    /* image_token_id alias */
    if (parse_ok(variant("\"image_token_index\": 1000", "\"image_token_id\": 1001"), &c))
        CHECK_EQ(c.image_token_index, 1001);
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"image_token_id\": 1001"),
               VLM_ERR_FORMAT, "disagree");
    /* explicit head_dim (hidden 64 / 4 heads would give 16) */
    if (parse_ok(variant("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 2, \"head_dim\": 32"), &c))
        CHECK_EQ(c.text.head_dim, 32);
    /* image_size / patch_size as square pairs */
    if (parse_ok(variant("\"image_size\": 56, \"patch_size\": 14", "\"image_size\": [56, 56], \"patch_size\": 14"),
                 &c))
        CHECK_EQ(c.vision.image_size, 56);
    /* activations, bias, explicit anyres_max */
    if (parse_ok(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"projector_hidden_act\": "
                         "\"gelu_pytorch_tanh\", \"multimodal_projector_bias\": false, \"vision_aspect_ratio\": "
                         "\"anyres_max_4\""), &c)) {
        CHECK(c.projector_act == VLM_ACT_GELU_TANH);
        CHECK(!c.projector_bias);
        CHECK_EQ(c.anyres_max, 4);
    }
    if (parse_ok(variant("\"patch_size\": 14", "\"patch_size\": 14, \"hidden_act\": \"gelu\", "
                                               "\"layer_norm_eps\": 1e-5"), &c)) {
        CHECK(c.vision.hidden_act == VLM_ACT_GELU_ERF);
        CHECK(c.vision.layer_norm_eps == 1e-5f);
    }
    /* layer_types of full attention only, and use_sliding_window false, are fine */
    if (parse_ok(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"use_sliding_window\": false,"
                         " \"layer_types\": [\"full_attention\", \"full_attention\"], \"sliding_window\": null"), &c))
        CHECK_EQ(c.text.vocab_size, 1024);
}

/* ---------------------------------------------------------------------------------------------------------------
 * rejections
 * ------------------------------------------------------------------------------------------------------------- */

TEST(config_missing_and_invalid_files) {
    struct vlm_config c;
    char path[700];
    snprintf(path, sizeof path, "%s/none/config.json", test_tmpdir());
    CHECK_EQ(vlm_config_parse(path, &c), VLM_ERR_IO);
    CHECK_EQ(vlm_config_parse(NULL, &c), VLM_ERR_ARG);
    EXPECT_CFG("", VLM_ERR_FORMAT, "JSON");
    EXPECT_CFG("{\"model_type\": \"llava_onevision\", ", VLM_ERR_FORMAT, "JSON");
    EXPECT_CFG("[1, 2, 3]", VLM_ERR_FORMAT, "object");
    EXPECT_CFG("{\"a\": 1} {\"b\": 2}", VLM_ERR_FORMAT, "after");
    EXPECT_CFG(variant("\"model_type\": \"llava_onevision\",", "\"model_type\": \"llava_onevision\", \"model_type\": "
                                                              "\"llava_onevision\","), VLM_ERR_FORMAT, "twice");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"vocab_size\": 2048"), VLM_ERR_FORMAT,
               "twice");
}

TEST(config_model_types) {
    EXPECT_CFG(variant("\"llava_onevision\"", "\"llama\""), VLM_ERR_UNSUPPORTED, "model_type");
    EXPECT_CFG(variant("\"llava_onevision\"", "\"llava_next\""), VLM_ERR_UNSUPPORTED, "llava_next");
    EXPECT_CFG(variant("\"model_type\": \"llava_onevision\",", ""), VLM_ERR_FORMAT, "model_type");
    EXPECT_CFG(variant("\"llava_onevision\"", "7"), VLM_ERR_FORMAT, "model_type");
    EXPECT_CFG(variant("\"qwen2\"", "\"llama\""), VLM_ERR_UNSUPPORTED, "text_config.model_type");
    EXPECT_CFG(variant("\"qwen2\"", "\"qwen2\\nINJECTED\""), VLM_ERR_FORMAT, "control character"); /* one line */
    EXPECT_CFG(variant("\"siglip_vision_model\"", "\"clip_vision_model\""), VLM_ERR_UNSUPPORTED,
               "vision_config.model_type");
}

TEST(config_missing_text_config) {
    const char *no_text =
        "{\"model_type\": \"llava_onevision\", \"vision_config\": {\"hidden_size\": 64, \"intermediate_size\": 128,"
        " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"image_size\": 56, \"patch_size\": 14}}";
    EXPECT_CFG(no_text, VLM_ERR_FORMAT, "'text_config'");
    EXPECT_CFG(variant("\"text_config\": {", "\"text_config\": 5, \"x\": {"), VLM_ERR_FORMAT, "text_config");
    EXPECT_CFG(variant("\"vocab_size\": 1024,", ""), VLM_ERR_FORMAT, "text_config.vocab_size");
    EXPECT_CFG(variant("\"num_key_value_heads\": 2,", ""), VLM_ERR_FORMAT, "num_key_value_heads");
    EXPECT_CFG(variant("\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"image_size\"", "\"intermediate_size\": 128, "
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"image_size\""),
               VLM_ERR_FORMAT, "vision_config.hidden_size");
}

TEST(config_absurd_dims) {
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": 0"), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": -5"), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": 1e12"), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": 64.5"), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": \"64\""), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"hidden_size\": 64", "\"hidden_size\": true"), VLM_ERR_FORMAT, "text_config.hidden_size");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 0"), VLM_ERR_FORMAT, "vocab_size");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 5000000"), VLM_ERR_FORMAT, "vocab_size");
    EXPECT_CFG(variant("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 100000"), VLM_ERR_FORMAT,
               "text_config.num_hidden_layers");
    EXPECT_CFG(variant("\"intermediate_size\": 128", "\"intermediate_size\": 0"), VLM_ERR_FORMAT,
               "text_config.intermediate_size");
    EXPECT_CFG(variant("\"num_attention_heads\": 4", "\"num_attention_heads\": 3"), VLM_ERR_FORMAT,
               "does not divide");
    EXPECT_CFG(variant("\"num_attention_heads\": 4, \"num_key_value_heads\": 2",
                       "\"num_attention_heads\": 4, \"num_key_value_heads\": 3"), VLM_ERR_FORMAT,
               "num_key_value_heads");
    EXPECT_CFG(variant("\"num_attention_heads\": 4, \"num_key_value_heads\": 2",
                       "\"num_attention_heads\": 4, \"num_key_value_heads\": 0"), VLM_ERR_FORMAT,
               "num_key_value_heads");
    EXPECT_CFG(variant("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 2, \"head_dim\": 15"), VLM_ERR_FORMAT,
               "head_dim");
    EXPECT_CFG(variant("\"num_attention_heads\": 4, \"num_key_value_heads\": 2",
                       "\"num_attention_heads\": 64, \"num_key_value_heads\": 2"), VLM_ERR_FORMAT,
               "even"); /* head_dim 1 */
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"rms_norm_eps\": 0"), VLM_ERR_FORMAT,
               "rms_norm_eps");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"rms_norm_eps\": -1e-6"), VLM_ERR_FORMAT,
               "rms_norm_eps");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"max_position_embeddings\": 0"),
               VLM_ERR_FORMAT, "max_position_embeddings");
    /* vision */
    EXPECT_CFG(variant("\"image_size\": 56", "\"image_size\": 13"), VLM_ERR_FORMAT, "patch_size");
    EXPECT_CFG(variant("\"image_size\": 56", "\"image_size\": 0"), VLM_ERR_FORMAT, "vision_config.image_size");
    EXPECT_CFG(variant("\"image_size\": 56", "\"image_size\": [56, 112]"), VLM_ERR_UNSUPPORTED, "image_size");
    EXPECT_CFG(variant("\"patch_size\": 14", "\"patch_size\": 14, \"num_channels\": 4"), VLM_ERR_UNSUPPORTED,
               "num_channels");
    EXPECT_CFG(variant("\"patch_size\": 14", "\"patch_size\": 14, \"layer_norm_eps\": 0"), VLM_ERR_FORMAT,
               "vision_config.layer_norm_eps");
    EXPECT_CFG(variant("\"patch_size\": 14", "\"patch_size\": 14, \"hidden_act\": \"relu\""), VLM_ERR_UNSUPPORTED,
               "vision_config.hidden_act");
    EXPECT_CFG(variant("\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"image_size\"",
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 5, \"image_size\""), VLM_ERR_FORMAT,
               "vision_config.num_attention_heads");
    /* eps NaN/Inf cannot be written in JSON; a huge one is out of range */
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"rms_norm_eps\": 1e400"), VLM_ERR_FORMAT,
               NULL);
}

TEST(config_unsupported_features) {
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"use_sliding_window\": true"),
               VLM_ERR_UNSUPPORTED, "use_sliding_window");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"layer_types\": [\"full_attention\", "
                                               "\"sliding_attention\"]"), VLM_ERR_UNSUPPORTED, "layer_types");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"layer_types\": [\"full_attention\"]"),
               VLM_ERR_FORMAT, "layer_types");
    EXPECT_CFG(variant("\"vocab_size\": 1024", "\"vocab_size\": 1024, \"hidden_act\": \"gelu\""),
               VLM_ERR_UNSUPPORTED, "text_config.hidden_act");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, "
                                                      "\"vision_feature_select_strategy\": \"default\""),
               VLM_ERR_UNSUPPORTED, "vision_feature_select_strategy");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, "
                                                      "\"vision_feature_select_strategy\": \"cls\""),
               VLM_ERR_FORMAT, "vision_feature_select_strategy");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_aspect_ratio\": "
                                                      "\"anyres\""), VLM_ERR_UNSUPPORTED, "vision_aspect_ratio");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"vision_aspect_ratio\": "
                                                      "\"anyres_max_0\""), VLM_ERR_UNSUPPORTED, "vision_aspect_ratio");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"projector_hidden_act\": "
                                                      "\"tanh\""), VLM_ERR_UNSUPPORTED, "projector_hidden_act");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1000, \"multimodal_projector_bias\": "
                                                      "1"), VLM_ERR_FORMAT, "multimodal_projector_bias");
}

TEST(config_pinpoints_and_token) {
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[[56, 56], [56, 100]]"), VLM_ERR_FORMAT,
               "image_grid_pinpoints[1]");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[[56, 56], [0, 56]]"), VLM_ERR_FORMAT,
               "image_grid_pinpoints[1]");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[[56, 56], [-56, 56]]"), VLM_ERR_FORMAT,
               "image_grid_pinpoints[1]");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[[56, 56, 56]]"), VLM_ERR_FORMAT,
               "image_grid_pinpoints[0]");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[]"), VLM_ERR_FORMAT, "image_grid_pinpoints");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", "[[56, 1000048]]"), VLM_ERR_FORMAT,
               "image_grid_pinpoints[0]");
    /* more than VLM_MAX_PINPOINTS */
    char many[4096];
    size_t k = (size_t)snprintf(many, sizeof many, "[");
    for (int i = 0; i < VLM_MAX_PINPOINTS + 1; i++)
        k += (size_t)snprintf(many + k, sizeof many - k, "%s[56, 56]", i ? ", " : "");
    snprintf(many + k, sizeof many - k, "]");
    EXPECT_CFG(variant("[[56, 56], [56, 112], [112, 56]]", many), VLM_ERR_FORMAT, "image_grid_pinpoints");
    /* pinpoints absent with a 56-pixel tower: the default (multiples of 384) does not fit */
    EXPECT_CFG(variant("\"image_grid_pinpoints\": [[56, 56], [56, 112], [112, 56]],", ""), VLM_ERR_FORMAT,
               "image_grid_pinpoints");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": 1024"), VLM_ERR_FORMAT,
               "image_token_index");
    EXPECT_CFG(variant("\"image_token_index\": 1000", "\"image_token_index\": -1"), VLM_ERR_FORMAT,
               "image_token_index");
}

/* ---------------------------------------------------------------------------------------------------------------
 * preprocessor_config.json
 * ------------------------------------------------------------------------------------------------------------- */

TEST(preproc_defaults_and_forms) {
    struct vlm_preproc_config p;
    char err[1024];
    if (CHECK(parse_capture("{}", true, &p, err, sizeof err) == VLM_OK)) {
        CHECK(p.size_h == 384 && p.size_w == 384);
        CHECK(p.image_mean[0] == 0.48145466f && p.image_std[2] == 0.27577711f); /* OpenAI CLIP class defaults */
        CHECK(p.rescale_factor == 1.0 / 255.0);
        CHECK_EQ(p.resample, 3);
        CHECK(p.do_rescale && p.do_normalize && p.do_convert_rgb);
        CHECK_EQ(p.n_pinpoints, 0);
    }
    if (CHECK(parse_capture("{\"size\": {\"shortest_edge\": 56}, \"image_mean\": 0.5, \"image_std\": [1, 2, 3],"
                            " \"do_normalize\": false, \"rescale_factor\": 0.5}",
                            true, &p, err, sizeof err) == VLM_OK)) {
        CHECK(p.size_h == 56 && p.size_w == 56);
        CHECK(p.image_mean[1] == 0.5f && p.image_std[2] == 3.0f);
        CHECK(!p.do_normalize);
        CHECK(p.rescale_factor == 0.5);
    }
    CHECK_EQ(vlm_preproc_parse("/nonexistent/preprocessor_config.json", &p), VLM_ERR_IO);
}

TEST(preproc_rejections) {
    EXPECT_PRE("{\"size\": {\"height\": 384, \"width\": 300}}", VLM_ERR_UNSUPPORTED, "size");
    EXPECT_PRE("{\"size\": {\"height\": 0, \"width\": 0}}", VLM_ERR_FORMAT, "size.height");
    EXPECT_PRE("{\"size\": {\"height\": 384}}", VLM_ERR_FORMAT, "size.width");
    EXPECT_PRE("{\"size\": {\"longest_edge\": 384}}", VLM_ERR_FORMAT, "size");
    EXPECT_PRE("{\"size\": 384}", VLM_ERR_FORMAT, "size");
    EXPECT_PRE("{\"image_std\": [0.5, 0, 0.5]}", VLM_ERR_FORMAT, "image_std");
    EXPECT_PRE("{\"image_mean\": [0.5, 0.5]}", VLM_ERR_FORMAT, "image_mean");
    EXPECT_PRE("{\"image_mean\": [0.5, \"x\", 0.5]}", VLM_ERR_FORMAT, "image_mean");
    EXPECT_PRE("{\"rescale_factor\": 0}", VLM_ERR_FORMAT, "rescale_factor");
    EXPECT_PRE("{\"resample\": 2}", VLM_ERR_UNSUPPORTED, "resample");
    EXPECT_PRE("{\"resample\": 99}", VLM_ERR_FORMAT, "resample");
    EXPECT_PRE("{\"do_resize\": false}", VLM_ERR_UNSUPPORTED, "do_resize");
    EXPECT_PRE("{\"do_center_crop\": true}", VLM_ERR_UNSUPPORTED, "do_center_crop");
    EXPECT_PRE("{\"crop_size\": {\"height\": 336, \"width\": 336}}", VLM_ERR_UNSUPPORTED, "crop_size");
    EXPECT_PRE("{\"do_rescale\": \"yes\"}", VLM_ERR_FORMAT, "do_rescale");
    EXPECT_PRE("{\"image_grid_pinpoints\": [[384, 500]]}", VLM_ERR_FORMAT, "image_grid_pinpoints");
    EXPECT_PRE("{\"a\": 1, \"a\": 2}", VLM_ERR_FORMAT, "twice");
    EXPECT_PRE("[]", VLM_ERR_FORMAT, "object");
}
