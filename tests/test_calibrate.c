/* test_calibrate.c — vlmconvert's calibrated methods end to end on tiny_q (with the hand-made tokenizer of
 * tests/data/calib): the file runs, the header reports what MBQ chose (rho per layer and side, r = max(rho,
 * median), alphas on the grid), the same seed gives the same bytes, and bad calibration input leaves no file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "converter/calibrate.h"
#include "converter/conv.h"
#include "converter/search.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "test.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

static const char *model_dir(void) { return test_tiny_q_tokenized(false); }

static struct conv_options mbq_opts(enum conv_method method, const char *out, int64_t n) {
    return (struct conv_options){.model_dir = model_dir(), .out_path = out, .method = method, .wbits = 3,
                                 .abits = 16, .group = 128, .float_fmt = VLM_QF_F16, .embed_fmt = VLM_QF_F16,
                                 .head_fmt = VLM_QF_F16, .quiet = true,
                                 .calib_path = test_path("tests/data/calib/good.json"), .n_samples = n, .seed = 42};
}

static double median2(double a, double b) { return 0.5 * (a + b); }

TEST(calibrate_mbq_file_reports_and_runs) {
    if (!model_dir()[0]) return;
    const char *out = test_tmp_path("mbq.mbq");
    struct conv_options o = mbq_opts(CONV_MBQ, out, 3);
    test_capture_begin();
    enum vlm_status st = conv_run(&o);
    char log[8192];
    test_capture_end(log, sizeof log);
    if (!CHECK(st == VLM_OK)) {
        fprintf(stderr, "%s", log);
        return;
    }
    struct vlm_model *m = NULL;
    test_capture_begin();
    st = vlm_model_load(out, &m);
    test_capture_end(NULL, 0);
    if (!CHECK(st == VLM_OK)) return;
    CHECK(m->w.layers[0].wq.fmt == VLM_QF_W3G128);
    CHECK(strcmp(m->quant_method, "mbq") == 0);
    const cJSON *cal = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "quant"), "calibration");
    const char *keys[] = {"rho_attn", "rho_mlp", "r_attn", "r_mlp"};
    const cJSON *arr[4];
    for (int i = 0; i < 4; i++) {
        arr[i] = cJSON_GetObjectItemCaseSensitive(cal, keys[i]);
        CHECK(cJSON_IsArray(arr[i]) && cJSON_GetArraySize(arr[i]) == m->config.text.n_layers);
    }
    if (cJSON_GetArraySize(arr[0]) == 2 && cJSON_GetArraySize(arr[1]) == 2) {
        /* r = max(rho, median over layers); with two layers the median is their mean (NumPy) */
        for (int side = 0; side < 2; side++) {
            const double r0 = cJSON_GetArrayItem(arr[side], 0)->valuedouble;
            const double r1 = cJSON_GetArrayItem(arr[side], 1)->valuedouble, med = median2(r0, r1);
            CHECK(r0 > 0 && r1 > 0 && isfinite(r0) && isfinite(r1));
            CHECK(fabs(cJSON_GetArrayItem(arr[2 + side], 0)->valuedouble - fmax(r0, med)) < 1e-12);
            CHECK(fabs(cJSON_GetArrayItem(arr[2 + side], 1)->valuedouble - fmax(r1, med)) < 1e-12);
        }
    }
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(cal, "alpha_qkv_gateup_down"), *row;
    CHECK(cJSON_IsArray(al) && cJSON_GetArraySize(al) == m->config.text.n_layers);
    cJSON_ArrayForEach(row, al) {
        const cJSON *a;
        cJSON_ArrayForEach(a, row) CHECK(a->valuedouble >= 0 && a->valuedouble <= 0.95 + 1e-9 &&
                                         fabs(a->valuedouble * 20 - rint(a->valuedouble * 20)) < 1e-4);
    }
    CHECK(cJSON_GetObjectItemCaseSensitive(cal, "n_samples")->valuedouble == 3);
    vlm_model_free(m);
    /* the file runs through vlmrun (in id mode: the test tokenizer's <image> id is not the config's) */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' '1002 <image> 5 6 7' --ids --max-new 4 >/dev/null 2>&1",
             VLM_BUILD_DIR, out, test_path("tests/data/images/unpad_70x150.png"));
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
}


TEST(calibrate_same_seed_same_bytes) {
    if (!model_dir()[0]) return;
    const enum conv_method ms[] = {CONV_AWQ, CONV_MBQ, CONV_SMOOTHQUANT};
    for (int i = 0; i < 3; i++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "seed_a%d.mbq", i);
        snprintf(b, sizeof b, "seed_b%d.mbq", i);
        struct conv_options oa = mbq_opts(ms[i], test_tmp_path(a), 2), ob = oa;
        ob.out_path = test_tmp_path(b);
        if (ms[i] == CONV_SMOOTHQUANT) oa.wbits = ob.wbits = 4, oa.abits = ob.abits = 8;
        test_capture_begin();
        bool ok = conv_run(&oa) == VLM_OK && conv_run(&ob) == VLM_OK;
        test_capture_end(NULL, 0);
        if (!CHECK(ok)) continue;
        size_t la = 0, lb = 0;
        char *x = test_read_file(oa.out_path, &la), *y = test_read_file(ob.out_path, &lb);
        CHECK(x && y && la == lb && la > 0 && memcmp(x, y, la) == 0);
        free(x);
        free(y);
    }
}

static bool exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

TEST(calibrate_bad_input_leaves_no_file) {
    if (!model_dir()[0]) return;
    struct {
        const char *calib;
        int64_t n;
        enum vlm_status want;
        const char *needle;
    } cases[] = {
        {"tests/data/calib/good.json", 10, VLM_ERR_ARG, "good.json"},         /* fewer samples than asked */
        {"tests/data/calib/missing_image.json", 1, VLM_ERR_IO, NULL},          /* an image that is not there */
        {"tests/data/calib/bad_json.json", 1, VLM_ERR_FORMAT, "bad_json.json"}, /* malformed JSON */
        {"tests/data/calib/no_answer.json", 1, VLM_ERR_FORMAT, "no_answer.json"},
        {"tests/data/calib/no_image_marker.json", 1, VLM_ERR_FORMAT, "no_image_marker.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *out = test_tmp_path("bad.mbq");
        struct conv_options o = mbq_opts(CONV_MBQ, out, cases[i].n);
        o.calib_path = test_path(cases[i].calib);
        char log[4096];
        test_capture_begin();
        enum vlm_status st = conv_run(&o);
        test_capture_end(log, sizeof log);
        if (!CHECK_EQ(st, cases[i].want)) fprintf(stderr, "  %s: %s\n", cases[i].calib, log);
        CHECK(strstr(log, "error:") != NULL);
        if (cases[i].needle) CHECK(strstr(log, cases[i].needle) != NULL);
        CHECK(!exists(out));
    }
    /* usage: a calibrated method without --calib, --calib without one, smoothquant without W4A8 */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model x --out y --method mbq 2>/dev/null", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model x --out y --method rtn --calib z 2>/dev/null", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model x --out y --method smoothquant --calib z 2>/dev/null",
             VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
}

/* vlmconvert streams the decoder (one layer's float linears at a time: the calibration folds the norms, the writer
 * folds the linears when it widens each layer again). Reference without streaming: the same calibration on a fully
 * loaded model, every group folded there (conv_fold_linears after the calibration's norm folds = conv_fold_group),
 * every linear quantized with the reference quantizer. The file's linears and norms must equal it byte for byte. */
TEST(calibrate_streamed_write_matches_resident_fold) {
    if (!model_dir()[0]) return;
    const enum conv_method ms[] = {CONV_AWQ, CONV_SMOOTHQUANT};
    for (int i = 0; i < 2; i++) {
        struct conv_options o = mbq_opts(ms[i], test_tmp_path(i ? "stream_sq.mbq" : "stream_awq.mbq"), 2);
        if (ms[i] == CONV_SMOOTHQUANT) o.wbits = 4, o.abits = 8;
        const enum vlm_qformat fmt = conv_linear_format(&o);
        struct vlm_model *m = NULL;
        struct vlm_tokenizer *tok = NULL;
        struct mbq_file *f = NULL;
        float *scales = NULL;
        unsigned char *q = NULL;
        cJSON *report = cJSON_CreateObject();
        test_capture_begin();
        enum vlm_status st = conv_run(&o);
        if (st == VLM_OK) st = vlm_model_load(o.model_dir, &m);
        if (st == VLM_OK) m->fast_f32 = true; /* conv_run's vision path for the calibration images */
        if (st == VLM_OK) st = tok_load(o.model_dir, &tok);
        const struct conv_calib_opts co = {.method = i ? CONV_CAL_SMOOTHQUANT : CONV_CAL_AWQ, .format = fmt,
                                           .calib_path = o.calib_path, .n_samples = o.n_samples, .seed = o.seed};
        if (st == VLM_OK) st = conv_calibrate(m, tok, &co, report, &scales);
        if (st == VLM_OK) st = mbq_file_open(o.out_path, &f);
        test_capture_end(NULL, 0);
        if (CHECK(st == VLM_OK)) {
            const struct vlm_text_config *tc = &m->config.text;
            const int64_t d = tc->hidden_size, per = conv_scales_per_layer(tc);
            int64_t compared = 0;
            for (int64_t l = 0; l < tc->n_layers; l++) {
                for (int g = 0; g < 3; g++)
                    conv_fold_linears(m, l, (enum conv_group)g, conv_scales_group(scales, tc, l, g));
                struct qwen2_layer_weights *L = &m->w.layers[l];
                const struct {
                    const char *name;
                    const float *w;
                    int64_t n, k;
                } lin[] = {{"self_attn.q_proj.weight", L->q_w, L->wq.n, L->wq.k},
                           {"self_attn.k_proj.weight", L->k_w, L->wk.n, L->wk.k},
                           {"self_attn.v_proj.weight", L->v_w, L->wv.n, L->wv.k},
                           {"self_attn.o_proj.weight", L->o_w, L->wo.n, L->wo.k},
                           {"mlp.gate_proj.weight", L->gate_w, L->wgate.n, L->wgate.k},
                           {"mlp.up_proj.weight", L->up_w, L->wup.n, L->wup.k},
                           {"mlp.down_proj.weight", L->down_w, L->wdown.n, L->wdown.k},
                           {"input_layernorm.weight", L->attn_norm, 1, d},
                           {"post_attention_layernorm.weight", L->mlp_norm, 1, d}};
                for (size_t j = 0; j < sizeof lin / sizeof lin[0]; j++) {
                    char name[160];
                    snprintf(name, sizeof name, "language_model.model.layers.%lld.%s", (long long)l, lin[j].name);
                    const struct mbq_tensor *t = mbq_file_find(f, name);
                    const bool norm = j >= 7;
                    struct vlm_qlayout lay;
                    if (!CHECK(t && vlm_qlayout(norm ? VLM_QF_F32 : fmt, lin[j].n, lin[j].k, &lay, NULL))) continue;
                    free(q);
                    q = aligned_alloc(VLM_QALIGN, (lay.total_bytes + VLM_QALIGN) / VLM_QALIGN * VLM_QALIGN);
                    if (!CHECK(q)) continue;
                    vlm_quantize_ref(norm ? VLM_QF_F32 : fmt, lin[j].w, lin[j].n, lin[j].k, q);
                    if (!CHECK(t->size == lay.total_bytes && memcmp(t->data, q, lay.total_bytes) == 0))
                        fprintf(stderr, "  %s: %s differs from the resident fold\n", o.out_path, name);
                    compared++;
                }
            }
            CHECK_EQ(compared, 9 * tc->n_layers);
            /* and the scales did something: at least one is not 1 */
            int64_t not_one = 0;
            for (int64_t j = 0; j < tc->n_layers * per; j++) not_one += scales[j] != 1.0f;
            CHECK(not_one > 0);
        }
        free(q);
        free(scales);
        mbq_file_close(f);
        tok_free(tok);
        vlm_model_free(m);
        cJSON_Delete(report);
    }
}
