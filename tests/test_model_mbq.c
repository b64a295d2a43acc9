/* test_model_mbq.c — the .mbq model path end to end: vlmconvert's library side writes a file, the runtime loads it
 * and runs the decoder from it. The anchor is the HF-checkpoint float32 run (itself pinned to transformers by
 * test_e2e): an f32 or exact-16-bit conversion must give the SAME logits bit for bit; quantized conversions must
 * run through the fast kernels within a stated distance of the scalar reference kernels, and rank as
 * quantization error says (W4 closer to FP than W3). Also: determinism, the tokenizer inside the file, every
 * converter failure leaving no file, and model-level rejection of files whose tensors do not fit the config. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "converter/conv.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "test.h"
#include "tolerances.h"
#include "tokenizer/tokenizer.h"
#include "vision/image.h"

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

/* KL(fast kernels || reference kernels) of the same quantized file, mean over prompt positions. The W3/W4 fast
 * kernels quantize activations to int8 per group of 128 (kernels/cpu/qgemm.h): a second, small error on top of
 * the weight error, measured below at ~1e-4 mean KL on tiny_q, against ~0.1-0.7 for the weight quantization
 * itself. W4A8's fast path is bit-identical in its integer part, only the f16/q8r head sums differ in order. */
#define TOL_MBQ_FAST_VS_REF_KL 5e-3

static const char PROMPT[] = "1002 17 10 <image> 10 22 41 99 300 7 512 63 1003 10 1002 301 10";

static struct conv_options opts(const char *model, const char *out, enum conv_method method, int wbits, int abits,
                                enum vlm_qformat fl) {
    return (struct conv_options){.model_dir = test_path(model), .out_path = out, .method = method, .wbits = wbits,
                                 .abits = abits, .group = 128, .float_fmt = fl, .embed_fmt = fl, .head_fmt = fl,
                                 .quiet = true};
}

static bool exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Full-prompt logits (n, V) of m on PROMPT and image; NULL after a test failure. */
static float *prompt_logits(struct vlm_model *m, const char *image, int64_t *n_out) {
    struct vlm_image img = {0};
    struct img_layout lay;
    float *feats = NULL, *emb = NULL, *logits = NULL;
    int64_t ids[64], n = 0, *full = NULL, n_full = 0;
    for (const char *p = PROMPT; *p;) {
        while (*p == ' ') p++;
        if (!*p) break;
        if (strncmp(p, "<image>", 7) == 0) ids[n++] = m->config.image_token_index, p += 7;
        else ids[n++] = strtoll(p, (char **)&p, 10);
    }
    if (!CHECK(img_load(test_path(image), &img) == VLM_OK)) return NULL;
    if (CHECK(vlm_image_encode(m, &img, &lay, &feats) == VLM_OK) &&
        CHECK(vlm_prompt_expand(ids, n, m->config.image_token_index, 1, lay.n_image_tokens, &full, &n_full) ==
              VLM_OK)) {
        const int64_t d = m->config.text.hidden_size, V = m->w.n_vocab_rows;
        emb = malloc((size_t)(n_full * d) * sizeof(float));
        logits = malloc((size_t)(n_full * V) * sizeof(float));
        struct kv_cache kv;
        if (CHECK(vlm_prompt_embed(m, full, n_full, feats, lay.n_image_tokens, emb) == VLM_OK) &&
            CHECK(kv_cache_init(&kv, &m->config.text, n_full) == VLM_OK)) {
            if (!CHECK(qwen2_forward(m, &kv, emb, n_full, logits, 1) == VLM_OK)) free(logits), logits = NULL;
            kv_cache_free(&kv);
        } else {
            free(logits), logits = NULL;
        }
    }
    *n_out = n_full;
    free(full);
    free(feats);
    free(emb);
    img_free(&img);
    return logits;
}

static double mean_kl(const float *a, const float *b, int64_t n, int64_t V, double *top1) {
    double sum = 0;
    int64_t agree = 0;
    for (int64_t p = 0; p < n; p++) {
        const float *x = a + p * V, *y = b + p * V;
        double mx = x[0], my = y[0], zx = 0, zy = 0, kl = 0;
        for (int64_t i = 1; i < V; i++) mx = fmax(mx, x[i]), my = fmax(my, y[i]);
        for (int64_t i = 0; i < V; i++) zx += exp(x[i] - mx), zy += exp(y[i] - my);
        for (int64_t i = 0; i < V; i++) {
            double lx = x[i] - mx - log(zx), ly = y[i] - my - log(zy);
            kl += exp(lx) * (lx - ly);
        }
        sum += kl;
        agree += vlm_argmax(x, V) == vlm_argmax(y, V);
    }
    if (top1) *top1 = (double)agree / (double)n;
    return sum / (double)n;
}

/* Converts model with o, loads both, compares logits bit for bit. */
static void check_bit_identical(const char *model, const char *image, struct conv_options o) {
    struct vlm_model *hf = NULL, *mq = NULL;
    test_capture_begin();
    enum vlm_status st = conv_run(&o);
    bool ok = st == VLM_OK && vlm_model_load(test_path(model), &hf) == VLM_OK &&
              vlm_model_load(o.out_path, &mq) == VLM_OK;
    char log[4096];
    test_capture_end(log, sizeof log);
    if (!CHECK(ok)) {
        fprintf(stderr, "%s", log);
    } else {
        CHECK(mq->mbq != NULL && hf->mbq == NULL);
        int64_t na = 0, nb = 0, nc = 0;
        const int64_t V = hf->w.n_vocab_rows;
        float *a = prompt_logits(hf, image, &na);
        mq->kernels = VLM_KERNELS_REF; /* the same float32 reference everywhere: identical */
        float *b = prompt_logits(mq, image, &nb);
        mq->kernels = VLM_KERNELS_FAST; /* the fast f32 GEMMs (vision, decoder): only summation order differs */
        float *c = prompt_logits(mq, image, &nc);
        if (a && b && c && CHECK_EQ(na, nb) && CHECK_EQ(na, nc)) {
            if (!CHECK(memcmp(a, b, (size_t)(na * V) * sizeof(float)) == 0))
                FAIL("%s -> %s: logits differ (max |diff| %g)", model, o.out_path, test_max_abs_diff(a, b, na * V));
            CHECK_NEAR_TENSOR("fast f32 kernels vs reference", c, a, na * V, TOL_LOGITS_ATOL, TOL_LOGITS_RTOL);
        }
        free(a);
        free(b);
        free(c);
    }
    vlm_model_free(hf);
    vlm_model_free(mq);
}

TEST(mbq_f32_conversion_is_bit_identical) {
    /* F32 legacy-named tied checkpoint, and a BF16 untied one stored as f32 */
    check_bit_identical("tests/data/models/tiny_single", "tests/data/images/single_40x50.png",
                        opts("tests/data/models/tiny_single", test_tmp_path("single_f32.mbq"), CONV_F32, 4, 16,
                             VLM_QF_F32));
    check_bit_identical("tests/data/models/tiny_unpad", "tests/data/images/unpad_70x150.png",
                        opts("tests/data/models/tiny_unpad", test_tmp_path("unpad_f32.mbq"), CONV_F32, 4, 16,
                             VLM_QF_F32));
}

TEST(mbq_16bit_conversion_of_16bit_checkpoint_is_bit_identical) {
    /* a 16-bit checkpoint stored in its own 16-bit type loses nothing; the decoder then runs the fast f16/bf16
     * kernels, whose f32 sums differ from the reference only in order — so compare those with the reference
     * kernels selected, and the fast ones within a tight KL */
    struct conv_options o = opts("tests/data/models/tiny_unpad", test_tmp_path("unpad_bf16.mbq"), CONV_F16, 4, 16,
                                 VLM_QF_BF16);
    struct vlm_model *hf = NULL, *mq = NULL;
    test_capture_begin();
    bool ok = conv_run(&o) == VLM_OK && vlm_model_load(test_path("tests/data/models/tiny_unpad"), &hf) == VLM_OK &&
              vlm_model_load(o.out_path, &mq) == VLM_OK;
    test_capture_end(NULL, 0);
    if (CHECK(ok)) {
        CHECK(mq->w.layers[0].wq.fmt == VLM_QF_BF16 && mq->w.embed_q.fmt == VLM_QF_BF16);
        int64_t na = 0, nb = 0, nc = 0;
        float *a = prompt_logits(hf, "tests/data/images/unpad_70x150.png", &na);
        mq->kernels = VLM_KERNELS_REF;
        float *b = prompt_logits(mq, "tests/data/images/unpad_70x150.png", &nb);
        mq->kernels = VLM_KERNELS_FAST;
        float *c = prompt_logits(mq, "tests/data/images/unpad_70x150.png", &nc);
        const int64_t V = hf->w.n_vocab_rows;
        if (a && b && c && CHECK_EQ(na, nb) && CHECK_EQ(na, nc)) {
            /* vision runs in f32 from bf16-exact values: identical; the decoder's bf16 reference linear
             * accumulates in double like cpu_linear_ref: identical */
            CHECK(memcmp(a, b, (size_t)(na * V) * sizeof(float)) == 0);
            double top1, kl = mean_kl(a, c, na, V, &top1);
            CHECK(kl < 1e-6);
            CHECK(top1 == 1.0);
        }
        free(a);
        free(b);
        free(c);
    }
    vlm_model_free(hf);
    vlm_model_free(mq);
}

TEST(mbq_quantized_fast_kernels_match_reference_kernels) {
    struct vlm_model *hf = NULL;
    test_capture_begin();
    bool ok = vlm_model_load(test_path("tests/data/models/tiny_q"), &hf) == VLM_OK;
    test_capture_end(NULL, 0);
    if (!CHECK(ok)) return;
    int64_t n_fp = 0;
    float *fp = prompt_logits(hf, "tests/data/images/pool_140x260.png", &n_fp);
    const int64_t V = hf->w.n_vocab_rows;
    struct {
        const char *name;
        int wbits, abits;
        enum vlm_qformat head;
        double kl_fp;
    } v[] = {{"w3.mbq", 3, 16, VLM_QF_F16, 0}, {"w4.mbq", 4, 16, VLM_QF_F16, 0}, {"w4a8.mbq", 4, 8, VLM_QF_Q8R, 0}};
    for (size_t i = 0; fp && i < sizeof v / sizeof v[0]; i++) {
        struct conv_options o = opts("tests/data/models/tiny_q", test_tmp_path(v[i].name), CONV_RTN, v[i].wbits,
                                     v[i].abits, VLM_QF_F16);
        o.head_fmt = v[i].head;
        struct vlm_model *mq = NULL;
        test_capture_begin();
        ok = conv_run(&o) == VLM_OK && vlm_model_load(o.out_path, &mq) == VLM_OK;
        test_capture_end(NULL, 0);
        if (!CHECK(ok)) continue;
        CHECK(mq->w.layers[1].wdown.fmt == conv_linear_format(&o));
        CHECK(mq->w.lm_head_q.fmt == v[i].head);
        int64_t nr = 0, nf = 0;
        mq->kernels = VLM_KERNELS_REF;
        float *r = prompt_logits(mq, "tests/data/images/pool_140x260.png", &nr);
        mq->kernels = VLM_KERNELS_FAST;
        float *f = prompt_logits(mq, "tests/data/images/pool_140x260.png", &nf);
        if (r && f && CHECK_EQ(nr, n_fp) && CHECK_EQ(nf, n_fp)) {
            double top1, kl = mean_kl(r, f, nr, V, &top1);
            v[i].kl_fp = mean_kl(fp, r, nr, V, NULL);
            if (test_verbose())
                fprintf(stderr, "  %s: KL(ref kernels || fast) %.3g (top-1 %.3f), KL(FP || quantized) %.4f\n",
                        v[i].name, kl, top1, v[i].kl_fp);
            if (!CHECK(kl < TOL_MBQ_FAST_VS_REF_KL)) FAIL("%s: fast vs reference kernels KL %g", v[i].name, kl);
            CHECK(isfinite(v[i].kl_fp) && v[i].kl_fp > 0);
        }
        free(r);
        free(f);
        vlm_model_free(mq);
    }
    /* 4 bits are closer to the float model than 3 */
    CHECK(v[1].kl_fp < v[0].kl_fp);
    free(fp);
    vlm_model_free(hf);
}


TEST(mbq_conversion_is_deterministic_and_carries_the_tokenizer) {
    /* a checkpoint directory with a tokenizer: tiny_q's files plus the SentencePiece fixture */
    char dir[1024], cmd[4096];
    snprintf(dir, sizeof dir, "%s/with_tok", test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/* '%s'/ && cp '%s' '%s'/", dir,
             test_path("tests/data/models/tiny_q"), dir, test_path("tests/data/tokenizers/spm/tokenizer.model"), dir);
    if (!CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0)) return;
    struct conv_options o = opts("tests/data/models/tiny_q", test_tmp_path("tok_a.mbq"), CONV_RTN, 3, 16,
                                 VLM_QF_F16);
    o.model_dir = dir;
    struct conv_options o2 = o;
    o2.out_path = test_tmp_path("tok_b.mbq");
    test_capture_begin();
    bool ok = conv_run(&o) == VLM_OK && conv_run(&o2) == VLM_OK;
    test_capture_end(NULL, 0);
    if (!CHECK(ok)) return;
    size_t la = 0, lb = 0;
    char *a = test_read_file(o.out_path, &la), *b = test_read_file(o2.out_path, &lb);
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0);
    free(a);
    free(b);
    /* the tokenizer inside the file encodes like the file it came from */
    struct vlm_model *m = NULL;
    struct vlm_tokenizer *t1 = NULL, *t2 = NULL;
    test_capture_begin();
    ok = vlm_model_load(o.out_path, &m) == VLM_OK && vlm_model_has_tokenizer(m) &&
         vlm_model_load_tokenizer(m, &t1) == VLM_OK &&
         tok_load_file(test_path("tests/data/tokenizers/spm/tokenizer.model"), &t2) == VLM_OK;
    test_capture_end(NULL, 0);
    if (CHECK(ok)) {
        const char *text = "A small red circle, left of 2 squares.";
        int64_t *i1 = NULL, *i2 = NULL;
        size_t n1 = 0, n2 = 0;
        CHECK(tok_encode(t1, text, strlen(text), false, &i1, &n1) == VLM_OK);
        CHECK(tok_encode(t2, text, strlen(text), false, &i2, &n2) == VLM_OK);
        CHECK(n1 == n2 && n1 > 3 && memcmp(i1, i2, n1 * sizeof *i1) == 0);
        free(i1);
        free(i2);
    }
    tok_free(t1);
    tok_free(t2);
    vlm_model_free(m);
}

/* Each converter failure: an error status, one error line naming the problem, and no file at out (nor a temp). */
static void expect_conv_error(struct conv_options o, enum vlm_status want, const char *needle) {
    char log[4096];
    test_capture_begin();
    enum vlm_status st = conv_run(&o);
    test_capture_end(log, sizeof log);
    CHECK_EQ(st, want);
    if (!CHECK(strstr(log, needle) != NULL)) fprintf(stderr, "  want '%s' in: %s\n", needle, log);
    CHECK(!exists(o.out_path));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "ls '%s'* 2>/dev/null | grep -q tmp", o.out_path);
    CHECK(test_run_cmd(cmd, NULL, 0) != 0); /* no temp file left next to it */
}

TEST(mbq_converter_failures_leave_no_file) {
    /* tiny_single's decoder is 64 wide: group-128 formats cannot hold it */
    expect_conv_error(opts("tests/data/models/tiny_single", test_tmp_path("w3_single.mbq"), CONV_RTN, 3, 16,
                           VLM_QF_F16), VLM_ERR_UNSUPPORTED, "not a multiple of 128");
    expect_conv_error(opts("tests/data/models/nope", test_tmp_path("nope.mbq"), CONV_F16, 4, 16, VLM_QF_F16),
                      VLM_ERR_IO, "not a checkpoint directory");
    struct conv_options o = opts("tests/data/models/tiny_q", "/nonexistent-dir/x.mbq", CONV_RTN, 4, 16, VLM_QF_F16);
    char log[4096];
    test_capture_begin();
    CHECK(conv_run(&o) != VLM_OK);
    test_capture_end(log, sizeof log);
    CHECK(strstr(log, "/nonexistent-dir/x.mbq") != NULL);
    /* an existing output survives a failed conversion untouched */
    const char *keep = test_tmp_path("keep.mbq");
    test_write_file(keep, "precious", 8);
    o = opts("tests/data/models/tiny_single", keep, CONV_RTN, 3, 16, VLM_QF_F16);
    test_capture_begin();
    CHECK(conv_run(&o) == VLM_ERR_UNSUPPORTED);
    test_capture_end(NULL, 0);
    size_t n = 0;
    char *b = test_read_file(keep, &n);
    CHECK(b && n == 8 && memcmp(b, "precious", 8) == 0);
    free(b);
}

/* Rewrites src into dst through the writer, with one change: drop tensor `drop`, or turn tensor `retype` into a u8
 * blob of the same bytes, or add an extra f32 tensor named `extra`. */
static bool rewrite(const char *src, const char *dst, const char *drop, const char *retype, const char *extra) {
    struct mbq_file *f = NULL;
    if (mbq_file_open(src, &f) != VLM_OK) return false;
    int64_t n = mbq_file_count(f);
    struct mbq_tensor_decl *d = calloc((size_t)n + 1, sizeof *d);
    const void **data = calloc((size_t)n + 1, sizeof *data);
    size_t *size = calloc((size_t)n + 1, sizeof *size);
    int64_t k = 0;
    static const float one = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        const struct mbq_tensor *t = mbq_file_at(f, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        d[k] = (struct mbq_tensor_decl){.name = t->name, .dtype = t->dtype, .n_dims = t->n_dims};
        memcpy(d[k].shape, t->shape, sizeof d[k].shape);
        if (retype && strcmp(t->name, retype) == 0) d[k].dtype = VLM_MBQ_DTYPE_U8, d[k].n_dims = 1,
                                                    d[k].shape[0] = (int64_t)t->size;
        data[k] = t->data, size[k] = t->size, k++;
    }
    if (extra) d[k] = (struct mbq_tensor_decl){.name = extra, .dtype = VLM_QF_F32, .n_dims = 1, .shape = {1}},
               data[k] = &one, size[k] = 4, k++;
    cJSON *meta = cJSON_Duplicate(mbq_file_header(f), 1);
    struct mbq_writer *w = NULL;
    bool ok = meta && mbq_writer_open(dst, meta, d, k, &w) == VLM_OK;
    for (int64_t i = 0; ok && i < k; i++) ok = mbq_writer_write(w, i, data[i], size[i]) == VLM_OK;
    if (ok) ok = mbq_writer_finish(w) == VLM_OK;
    else mbq_writer_abort(w);
    cJSON_Delete(meta);
    free(d);
    free(data);
    free(size);
    mbq_file_close(f);
    return ok;
}

static void expect_load_error(const char *path, const char *needle) {
    struct vlm_model *m = NULL;
    char log[4096];
    test_capture_begin();
    enum vlm_status st = vlm_model_load(path, &m);
    test_capture_end(log, sizeof log);
    CHECK_EQ(st, VLM_ERR_FORMAT);
    CHECK(m == NULL);
    CHECK_ERROR_LINE(log, path, needle);
}

TEST(mbq_model_rejects_files_that_do_not_fit_the_config) {
    const char *src = test_tmp_path("fit_src.mbq");
    struct conv_options o = opts("tests/data/models/tiny_q", src, CONV_RTN, 4, 16, VLM_QF_F16);
    test_capture_begin();
    enum vlm_status st = conv_run(&o);
    test_capture_end(NULL, 0);
    if (!CHECK(st == VLM_OK)) return;
    const char *a = test_tmp_path("fit_missing.mbq"), *b = test_tmp_path("fit_u8.mbq"),
               *c = test_tmp_path("fit_extra.mbq");
    test_capture_begin();
    bool ok = rewrite(src, a, "language_model.model.layers.1.mlp.up_proj.weight", NULL, NULL) &&
              rewrite(src, b, NULL, "language_model.model.layers.0.self_attn.k_proj.weight", NULL) &&
              rewrite(src, c, NULL, NULL, "language_model.model.layers.7.extra");
    test_capture_end(NULL, 0);
    if (!CHECK(ok)) return;
    expect_load_error(a, "no tensor 'language_model.model.layers.1.mlp.up_proj.weight'");
    expect_load_error(b, "k_proj.weight' has shape");
    expect_load_error(c, "unexpected tensor 'language_model.model.layers.7.extra'");
}

/* The CLIs on a converted file: vlmrun runs it (same tokens as the checkpoint for an f32 conversion), --info
 * describes it, vlmeval measures zero distance for it. */
TEST(mbq_cli_vlmrun_and_vlmeval) {
    char cmd[8192], out_a[600], out_b[600], err[4096];
    const char *mbq = test_tmp_path("cli_f32.mbq");
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model '%s' --out '%s' --method f32 --quiet", VLM_BUILD_DIR,
             test_path("tests/data/models/tiny_unpad"), mbq);
    if (!CHECK_EQ(test_run_cmd(cmd, err, sizeof err), 0)) fprintf(stderr, "%s\n", err);
    snprintf(out_a, sizeof out_a, "%s", test_tmp_path("run_a.txt"));
    snprintf(out_b, sizeof out_b, "%s", test_tmp_path("run_b.txt"));
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' '%s' --max-new 12 > '%s'", VLM_BUILD_DIR,
             test_path("tests/data/models/tiny_unpad"), test_path("tests/data/images/unpad_70x150.png"), PROMPT,
             out_a);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' '%s' '%s' --max-new 12 > '%s'", VLM_BUILD_DIR, mbq,
             test_path("tests/data/images/unpad_70x150.png"), PROMPT, out_b);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    size_t na = 0, nb = 0;
    char *a = test_read_file(out_a, &na), *b = test_read_file(out_b, &nb);
    CHECK(a && b && na > 10 && na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    snprintf(cmd, sizeof cmd, "%s/vlmrun --model '%s' --info | grep -q 'quant: {\"method\":\"f32\"'",
             VLM_BUILD_DIR, mbq);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    snprintf(cmd, sizeof cmd, "cd '%s' && %s/vlmeval --ref tests/data/models/tiny_unpad --model '%s' --greedy 8 "
             "2>/dev/null | grep -q '^| all | 5 cases | [0-9]* | 0.000000 | 0.000000 | 100.0 %% | 40 / 40 |$'",
             test_path("."), VLM_BUILD_DIR, mbq);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0);
    /* usage errors exit 2 */
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model x --out y --wbits 5 2>/dev/null", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --model x --out y --abits 8 --wbits 3 2>/dev/null", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
    snprintf(cmd, sizeof cmd, "%s/vlmeval --ref x 2>/dev/null", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, NULL, 0), 2);
}
