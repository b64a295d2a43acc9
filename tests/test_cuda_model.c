/* test_cuda_model.c — the whole model on the GPU (runtime/gpu.c) against the CPU path on the fixture models: the
 * vision tower + projector on the reference pixels, the full-prompt logits of the decoder, and eight decode steps
 * through the captured CUDA graph (teacher-forced with the CPU's greedy tokens, so both sides see the same inputs),
 * whose device-side argmax must equal the argmax of the logits it downloads. Float checkpoints (F16 on the GPU) and
 * random .mbq files in W3, W4 and W4A8 (vlmconvert --random on the fixture's config). Without a GPU every case
 * prints one SKIP line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "kernels/cuda_backend.h"
#include "runtime/gpu.h"
#include "runtime/model.h"
#include "runtime/pipeline.h"
#include "runtime/qwen2.h"
#include "test.h"
#include "vision/image.h"
#include "vision/siglip.h"

/* GPU vs CPU with FP16 activations: each FP16 rounding is <= 2^-11 relative (uniform error, NMSE ~ 2^-22 / 3 ~ 8e-8
 * per rounding); a tiny model's path has ~30 roundings in series (norm outputs, q/k/v, attention out, MLP), so
 * NMSE ~ 3e-6 is expected; the bound leaves 30x for accumulation-order effects. The quantized formats use the same
 * weights on both sides (W4A8 exactly the same integer arithmetic; W3/W4 the canonical dequantized weights on the
 * GPU vs int8-activation kernels on the CPU, NMSE <= 5e-4 per linear by qgemm.h), hence the looser second bound. */
#define TOL_GPU_NMSE_FLOAT 1e-4
#define TOL_GPU_NMSE_QUANT 2e-3

#ifndef VLM_BUILD_DIR
#error "VLM_BUILD_DIR must be defined by the Makefile"
#endif

/* Attaches a GPU with a context of max_seq tokens; false (after test_skip) without a device. */
static bool attach_gpu(struct vlm_model *m, int64_t max_seq) {
    test_capture_begin();
    enum vlm_status st = vlm_model_use_gpu(m, 0, max_seq);
    char msg[512];
    test_capture_end(msg, sizeof msg);
    if (st == VLM_ERR_NO_DEVICE) {
        test_skip("no CUDA device");
        return false;
    }
    if (!CHECK(st == VLM_OK)) fprintf(stderr, "  vlm_model_use_gpu: %s\n", msg);
    return st == VLM_OK;
}

static bool finite_all(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* The comparison of one model: vision on pixels (n_crops), decoder on the prompt emb (n, d), 8 decode steps. */
static void compare_model(struct vlm_model *m, const float *pixels, int64_t n_crops, const int64_t *ids, int64_t n,
                          double tol) {
    const struct vlm_config *cfg = &m->config;
    const int64_t np = cfg->vision.n_patches_side * cfg->vision.n_patches_side, d = cfg->text.hidden_size;
    const int64_t V = m->w.n_vocab_rows, rows = n_crops * np, n_steps = 8;
    float *vis = malloc((size_t)(rows * cfg->vision.hidden_size * cfg->n_feature_layers) * sizeof(float));
    float *proj_cpu = malloc((size_t)(rows * d) * sizeof(float)), *proj_gpu = malloc((size_t)(rows * d) * sizeof(float));
    float *emb = malloc((size_t)((n + n_steps) * d) * sizeof(float));
    float *lc = malloc((size_t)(n * V) * sizeof(float)), *lg = malloc((size_t)(n * V) * sizeof(float));
    struct kv_cache kv = {0};
    if (!CHECK(vis && proj_cpu && proj_gpu && emb && lc && lg)) goto done;

    /* vision: CPU first (m->gpu is not attached yet), then the GPU */
    if (!CHECK(vit_forward(m, pixels, n_crops, vis) == VLM_OK) || !CHECK(vit_project(m, vis, rows, proj_cpu) == VLM_OK))
        goto done;
    if (!attach_gpu(m, n + n_steps)) goto done;
    if (!CHECK(vlm_gpu_encode_image(m->gpu, pixels, n_crops, proj_gpu) == VLM_OK)) goto done;
    CHECK(finite_all(proj_gpu, rows * d));
    const double e_vis = test_nmse(proj_gpu, proj_cpu, rows * d);
    if (!CHECK(e_vis <= tol)) fprintf(stderr, "  projected features: NMSE %.3g > %.3g\n", e_vis, tol);

    /* decoder, full prompt: every row's logits */
    if (!CHECK(qwen2_embed(m, ids, n, emb) == VLM_OK)) goto done;
    if (!CHECK(kv_cache_init(&kv, &cfg->text, n + n_steps) == VLM_OK)) goto done;
    if (!CHECK(qwen2_forward(m, &kv, emb, n, lc, 1) == VLM_OK)) goto done;
    vlm_gpu_reset(m->gpu);
    int64_t next = -1;
    if (!CHECK(vlm_gpu_forward(m->gpu, emb, n, lg, 1, &next) == VLM_OK)) goto done;
    CHECK(finite_all(lg, n * V));
    const double e_pre = test_nmse(lg, lc, n * V);
    if (!CHECK(e_pre <= tol)) fprintf(stderr, "  prompt logits (%lld rows): NMSE %.3g > %.3g\n", (long long)n, e_pre, tol);
    CHECK_EQ(next, vlm_argmax(lg + (n - 1) * V, V));

    /* decode steps through the graph, fed the CPU's greedy tokens */
    int64_t tok = vlm_argmax(lc + (n - 1) * V, V);
    for (int64_t s = 0; s < n_steps; s++) {
        float *x = emb + (n + s) * d;
        if (!CHECK(qwen2_embed(m, &tok, 1, x) == VLM_OK)) goto done;
        if (!CHECK(qwen2_forward(m, &kv, x, 1, lc, 0) == VLM_OK)) goto done;
        if (!CHECK(vlm_gpu_forward(m->gpu, x, 1, lg, 0, &next) == VLM_OK)) goto done;
        const double e = test_nmse(lg, lc, V);
        if (!CHECK(e <= tol) || !CHECK(finite_all(lg, V)))
            fprintf(stderr, "  decode step %lld (position %lld): NMSE %.3g > %.3g\n", (long long)s,
                    (long long)(n + s), e, tol);
        CHECK_EQ(next, vlm_argmax(lg, V)); /* the device's argmax is torch.argmax of what it computed */
        tok = vlm_argmax(lc, V);
    }
    CHECK_EQ(vlm_gpu_n_past(m->gpu), n + n_steps);
    if (test_verbose())
        fprintf(stderr, "  GPU vs CPU NMSE: projected %.3g, prompt logits %.3g\n", e_vis, e_pre);
done:
    kv_cache_free(&kv);
    free(vis);
    free(proj_cpu);
    free(proj_gpu);
    free(emb);
    free(lc);
    free(lg);
}

/* A fixture model with its golden pixels and prompt ids. */
static void run_fixture(const char *model_dir, const char *golden, double tol) {
    struct golden_file g;
    if (golden_load(golden, &g) != 0) return;
    const struct golden_tensor *gpix = golden_get(&g, "pixel_values", GOLDEN_F32);
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    struct vlm_model *m = test_load_model(model_dir, false);
    if (gpix && gids && m) compare_model(m, gpix->data, gpix->shape[0], gids->data, gids->n, tol);
    vlm_model_free(m);
    golden_free(&g);
}

TEST(cuda_model_f32_single) { run_fixture("tests/data/models/tiny_single", "tests/golden/single_png.bin", TOL_GPU_NMSE_FLOAT); }
TEST(cuda_model_f32_unpad) { run_fixture("tests/data/models/tiny_unpad", "tests/golden/unpad_png.bin", TOL_GPU_NMSE_FLOAT); }

/* A random .mbq of tiny_q's architecture in one format (vlmconvert --random; tiny_q is tiny_unpad's tower, vocabulary
 * and image token with group-128-sized decoder widths, so the unpad golden's pixels and ids fit it), compared on the
 * unpad golden. */
static void run_random(const char *name, const char *fmt_args) {
    int n_dev = 0;
    if (cuda_backend_probe(&n_dev) != VLM_OK || n_dev == 0) { /* before spending a conversion */
        test_skip("no CUDA device");
        return;
    }
    char out[512], cmd[2048], err[2048];
    snprintf(out, sizeof out, "%s", test_tmp_path(name));
    snprintf(cmd, sizeof cmd, "%s/vlmconvert --random '%s' --out '%s' %s --seed 7", VLM_BUILD_DIR,
             test_path("tests/data/models/tiny_q/config.json"), out, fmt_args);
    if (!CHECK_EQ(test_run_cmd(cmd, err, sizeof err), 0)) {
        fprintf(stderr, "  %s\n  %s\n", cmd, err);
        return;
    }
    struct golden_file g;
    if (golden_load("tests/golden/unpad_png.bin", &g) != 0) return;
    const struct golden_tensor *gpix = golden_get(&g, "pixel_values", GOLDEN_F32);
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    struct vlm_model *m = NULL;
    test_capture_begin();
    enum vlm_status st = vlm_model_load(out, &m);
    test_capture_end(NULL, 0);
    if (CHECK(st == VLM_OK) && gpix && gids) compare_model(m, gpix->data, gpix->shape[0], gids->data, gids->n,
                                                           TOL_GPU_NMSE_QUANT);
    vlm_model_free(m);
    golden_free(&g);
}

TEST(cuda_model_random_w3) { run_random("gpu_w3.mbq", "--wbits 3"); }
TEST(cuda_model_random_w4) { run_random("gpu_w4.mbq", "--wbits 4"); }
TEST(cuda_model_random_w4a8) { run_random("gpu_w4a8.mbq", "--wbits 4 --abits 8"); }

/* A chat session on the device cache (vlm_gpu_truncate): a prompt extending the last one prefills only its new
 * tokens and answers as a fresh prefill of the whole prompt on the GPU does; a generation outside the session
 * (vlm_generate_greedy resets the device cache) makes the session reuse nothing. */
TEST(cuda_model_session_reuses_prefix) {
    struct golden_file g;
    if (golden_load("tests/golden/unpad_png.bin", &g) != 0) return;
    struct vlm_session s = {0};
    int64_t *seq = NULL;
    float *emb = NULL;
    const struct golden_tensor *gids = golden_get(&g, "input_ids", GOLDEN_I64);
    const struct golden_tensor *gpack = golden_get(&g, "packed", GOLDEN_F32);
    const struct golden_tensor *ggreedy = golden_get(&g, "greedy", GOLDEN_I64);
    struct vlm_model *m = test_load_model("tests/data/models/tiny_unpad", false);
    if (!gids || !gpack || !ggreedy || !m || !CHECK(ggreedy->n >= 10)) goto done;
    const int64_t d = m->config.text.hidden_size, n0 = gids->n, n_img = gpack->n / d;
    if (!attach_gpu(m, n0 + 32)) goto done;
    seq = malloc((size_t)(n0 + 10) * sizeof *seq);
    emb = malloc((size_t)((n0 + 10) * d) * sizeof *emb);
    if (!CHECK(seq && emb)) goto done;
    memcpy(seq, gids->data, (size_t)n0 * sizeof *seq);
    memcpy(seq + n0, ggreedy->data, 10 * sizeof *seq);
    int64_t f1[4], f2[6], gen[6], n1 = 0, n2 = 0, n_gen = 0, cached = -1;
    if (!CHECK(vlm_prompt_embed(m, seq, n0, gpack->data, n_img, emb) == VLM_OK) ||
        !CHECK(vlm_generate_greedy(m, emb, n0, 4, NULL, 0, f1, &n1, NULL, NULL, NULL, NULL) == VLM_OK) ||
        !CHECK(vlm_prompt_embed(m, seq, n0 + 10, gpack->data, n_img, emb) == VLM_OK) ||
        !CHECK(vlm_generate_greedy(m, emb, n0 + 10, 6, NULL, 0, f2, &n2, NULL, NULL, NULL, NULL) == VLM_OK))
        goto done;
    if (!CHECK(vlm_session_generate(m, &s, seq, n0, gpack->data, n_img, 4, NULL, 0, gen, &n_gen, NULL, NULL, NULL,
                                    &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, 0); /* the device cache held f2's prompt, not this session's tokens */
    CHECK_EQ(n_gen, n1);
    for (int64_t i = 0; i < n_gen && i < n1; i++) CHECK_EQ(gen[i], f1[i]);
    CHECK_EQ(vlm_gpu_n_past(m->gpu), n0 + n_gen - 1);
    if (!CHECK(vlm_session_generate(m, &s, seq, n0 + 10, gpack->data, n_img, 6, NULL, 0, gen, &n_gen, NULL, NULL,
                                    NULL, &cached) == VLM_OK))
        goto done;
    /* the prompt and the fed-back answer tokens that agree with transformers' greedy ones are kept */
    int64_t agree = 0;
    while (agree < n1 - 1 && f1[agree] == ((const int64_t *)ggreedy->data)[agree]) agree++;
    CHECK_EQ(cached, n0 + agree);
    CHECK_EQ(n_gen, n2);
    for (int64_t i = 0; i < n_gen && i < n2; i++) CHECK_EQ(gen[i], f2[i]);
    if (!CHECK(vlm_generate_greedy(m, emb, n0 + 10, 2, NULL, 0, f2, &n2, NULL, NULL, NULL, NULL) == VLM_OK)) goto done;
    if (!CHECK(vlm_session_generate(m, &s, seq, n0 + 10, gpack->data, n_img, 2, NULL, 0, gen, &n_gen, NULL, NULL,
                                    NULL, &cached) == VLM_OK))
        goto done;
    CHECK_EQ(cached, 0);
done:
    vlm_session_free(&s);
    free(seq);
    free(emb);
    vlm_model_free(m);
    golden_free(&g);
}

/* Two concatenated vision feature layers (tiny_odd) are a CPU-only feature: a clear one-line refusal, not a crash. */
TEST(cuda_model_refuses_concat_features) {
    struct vlm_model *m = test_load_model("tests/data/models/tiny_odd", false);
    if (!m) return;
    test_capture_begin();
    enum vlm_status st = vlm_model_use_gpu(m, 0, 64);
    char msg[512];
    test_capture_end(msg, sizeof msg);
    if (st == VLM_ERR_NO_DEVICE) test_skip("no CUDA device");
    else if (CHECK(st == VLM_ERR_UNSUPPORTED)) CHECK_ERROR_LINE(msg, "feature layers", "--device cpu");
    CHECK(m->gpu == NULL);
    vlm_model_free(m);
}

/* vlmrun --device: cuda without a GPU is one line and exit 1 before the model loads (with one, it runs); an unknown
 * device is a usage error. */
TEST(cuda_cli_device_flag) {
    int n_dev = 0;
    const bool gpu = cuda_backend_probe(&n_dev) == VLM_OK && n_dev > 0;
    char cmd[2048], err[2048];
    snprintf(cmd, sizeof cmd, "%s/vlmrun --device cuda --model '%s' '%s' '1 2 3' --max-new 2 >/dev/null", VLM_BUILD_DIR,
             test_path("tests/data/models/tiny_unpad"), test_path("tests/data/images/unpad_70x150.png"));
    const int rc = test_run_cmd(cmd, err, sizeof err);
    if (gpu) {
        CHECK_EQ(rc, 0);
    } else {
        CHECK_EQ(rc, 1);
        CHECK_ERROR_LINE(err, "--device cuda", cuda_backend_compiled() ? "no CUDA device" : "no CUDA backend");
        CHECK(strstr(err, "params") == NULL); /* refused before loading the model */
    }
    snprintf(cmd, sizeof cmd, "%s/vlmrun --device tpu --model x y z", VLM_BUILD_DIR);
    CHECK_EQ(test_run_cmd(cmd, err, sizeof err), 2);
    CHECK(strstr(err, "--device takes cuda or cpu, not 'tpu'") != NULL);
}
