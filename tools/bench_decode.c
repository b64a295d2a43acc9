/* bench_decode.c — end-to-end decoder speed of the CPU runtime per weight format: the whole Qwen2 decoder of the
 * LLaVA-OneVision 0.5B dimensions (24 layers, tied 151936 x 896 head), built in memory with synthetic weights in
 * each format, run through qwen2_forward exactly as vlmrun runs it (KV cache, RoPE, attention, norms, the head).
 * For the 7B dimensions the machine's memory allows only some of the 28 layers in FP16, so 4 layers plus the full
 * head are built and the 28-layer token time is extrapolated as 28·t_layer + t_head (both measured; said so in
 * the output).
 *
 * Usage: bench_decode [--quick] [--out FILE]   (default FILE: bench/decode.md)
 *        bench_decode --model FILE.mbq [--quick] [--out FILE]
 *   --model: the decoder of that .mbq file instead of the built-in synthetic models — any .mbq vlmrun runs, with
 *   or without a tokenizer (token embeddings are fed directly), e.g. a random-weight model of any published size
 *   from `vlmconvert --random 7b --wbits 3`; a file cut with --layers is extrapolated to the full layer count its
 *   header records, as for the 7B section below. Writes a report only with --out.
 * Also the vision tower (SigLIP so400m: 26 of 27 layers as LLaVA-OneVision uses them, 729 tokens per 384² crop)
 * and projector on the fast float32 GEMM (as a .mbq model runs them), per crop.
 * Reported per variant: prefill tokens/s (a 256-token prompt), decode ms/token and tokens/s (median of 32 steps
 * after the prompt), the weight bytes read per decoded token (every decoder matrix once + the head), the implied
 * GB/s and its fraction of the DRAM read bandwidth measured in the same run, and the speed-up over FP16. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/qwen2.h"
#include "vision/siglip.h"
#include "tools/bench_common.h"

#ifndef VLM_SRC_DIR
#define VLM_SRC_DIR "."
#endif

struct variant {
    const char *name;
    enum vlm_qformat lin, head;
};

/* One synthetic matrix in format f; returns the view, adds its bytes to *bytes. */
static struct vlm_qmat make_mat(enum vlm_qformat f, int64_t n, int64_t k, size_t *bytes) {
    struct vlm_qlayout L;
    VLM_ASSERT(vlm_qlayout(f, n, k, &L, NULL));
    unsigned char *blob = xalloc(L.total_bytes);
    fill_blob(f, n, k, blob, &L);
    struct vlm_qmat m;
    VLM_ASSERT(vlm_qmat_view(f, n, k, blob, L.total_bytes, &m, NULL));
    *bytes += L.total_bytes;
    return m;
}

static float *make_vec(int64_t n, float base, float spread) {
    float *v = xalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) v[i] = base + spread * (float)((int64_t)(rnd64() % 2001) - 1000) / 1000.0f;
    return v;
}

/* The decoder of config c with n_layers layers, linears in lin, head in head (untied, or tied when the config
 * says so and head is the embedding format). *weight_bytes: bytes one decode step reads (layers + head). */
static struct vlm_model *build(const struct vlm_config *c, int64_t n_layers, enum vlm_qformat lin,
                               enum vlm_qformat head, size_t *weight_bytes, size_t *head_bytes) {
    struct vlm_model *m = calloc(1, sizeof *m);
    VLM_ASSERT(m);
    m->config = *c;
    m->config.text.n_layers = n_layers;
    const struct vlm_text_config *t = &m->config.text;
    const int64_t d = t->hidden_size, f = t->intermediate_size;
    const int64_t q = t->n_heads * t->head_dim, kv = t->n_kv_heads * t->head_dim;
    m->w.layers = calloc((size_t)n_layers, sizeof *m->w.layers);
    VLM_ASSERT(m->w.layers);
    size_t bytes = 0;
    for (int64_t l = 0; l < n_layers; l++) {
        struct qwen2_layer_weights *L = &m->w.layers[l];
        L->attn_norm = make_vec(d, 1.0f, 0.1f), L->mlp_norm = make_vec(d, 1.0f, 0.1f);
        L->q_b = make_vec(q, 0, 0.1f), L->k_b = make_vec(kv, 0, 0.1f), L->v_b = make_vec(kv, 0, 0.1f);
        L->wq = make_mat(lin, q, d, &bytes), L->wk = make_mat(lin, kv, d, &bytes);
        L->wv = make_mat(lin, kv, d, &bytes), L->wo = make_mat(lin, d, q, &bytes);
        L->wgate = make_mat(lin, f, d, &bytes), L->wup = make_mat(lin, f, d, &bytes);
        L->wdown = make_mat(lin, d, f, &bytes);
    }
    m->w.final_norm = make_vec(d, 1.0f, 0.1f);
    m->w.n_vocab_rows = t->vocab_size;
    size_t hb = 0;
    m->w.lm_head_q = make_mat(head, t->vocab_size, d, &hb);
    m->w.embed_q = m->w.lm_head_q; /* the bench feeds embeddings directly; the table is never read */
    m->qctx = calloc(1, sizeof *m->qctx);
    VLM_ASSERT(m->qctx);
    m->fast_f32 = true; /* as a .mbq model runs: fast kernels for attention too */
    *weight_bytes = bytes + hb;
    *head_bytes = hb;
    return m;
}

static void destroy(struct vlm_model *m) {
    for (int64_t l = 0; l < m->config.text.n_layers; l++) {
        struct qwen2_layer_weights *L = &m->w.layers[l];
        free(L->attn_norm), free(L->mlp_norm), free(L->q_b), free(L->k_b), free(L->v_b);
        const struct vlm_qmat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
        for (int i = 0; i < 7; i++) free((void *)mats[i]->codes);
    }
    free((void *)m->w.lm_head_q.codes);
    free(m->w.final_norm);
    free(m->w.layers);
    cpu_qctx_free(m->qctx);
    free(m->qctx);
    free(m);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct timing {
    double prefill_tok_s, decode_ms, head_ms;
};

/* DRAM read bandwidth of this run (a 1 GiB buffer, 256 MiB with --quick), the denominator of the GB/s fractions. */
static double measure_dram_bw(struct vlm_pool *pool, bool quick) {
    const size_t nb = quick ? (size_t)256 << 20 : (size_t)1 << 30;
    unsigned char *buf = xalloc(nb);
    memset(buf, 1, nb);
    const double bw = dram_bw(pool, buf, nb, 3);
    free(buf);
    return bw;
}

/* Prefill n_prompt random embeddings, then n_steps single-token steps; median step time. Also times the head GEMV
 * alone (median of n_steps). */
static struct timing run(struct vlm_model *m, int64_t n_prompt, int n_steps) {
    const int64_t d = m->config.text.hidden_size, V = m->w.n_vocab_rows;
    struct kv_cache kv;
    VLM_ASSERT(kv_cache_init(&kv, &m->config.text, n_prompt + n_steps + 1) == VLM_OK);
    float *x = make_vec(n_prompt * d, 0, 1.0f), *logits = xalloc((size_t)V * sizeof(float));
    double t0 = vlm_time_ms();
    VLM_ASSERT(qwen2_forward(m, &kv, x, n_prompt, logits, 0) == VLM_OK);
    struct timing r = {.prefill_tok_s = (double)n_prompt / ((vlm_time_ms() - t0) / 1e3)};
    double *steps = calloc((size_t)n_steps, sizeof(double));
    for (int s = 0; s < n_steps; s++) {
        t0 = vlm_time_ms();
        VLM_ASSERT(qwen2_forward(m, &kv, x + (s % n_prompt) * d, 1, logits, 0) == VLM_OK);
        steps[s] = vlm_time_ms() - t0;
    }
    qsort(steps, (size_t)n_steps, sizeof *steps, cmp_double);
    r.decode_ms = steps[n_steps / 2];
    for (int s = 0; s < n_steps; s++) {
        t0 = vlm_time_ms();
        VLM_ASSERT(cpu_qlinear(m->qctx, logits, x, &m->w.lm_head_q, NULL, 1) == VLM_OK);
        steps[s] = vlm_time_ms() - t0;
    }
    qsort(steps, (size_t)n_steps, sizeof *steps, cmp_double);
    r.head_ms = steps[n_steps / 2];
    free(steps);
    free(x);
    free(logits);
    kv_cache_free(&kv);
    return r;
}

/* Bytes of one matrix as stored. */
static size_t mat_bytes(const struct vlm_qmat *q) {
    struct vlm_qlayout L;
    VLM_ASSERT(vlm_qlayout(q->fmt, q->n, q->k, &L, NULL));
    return L.total_bytes;
}

/* --model: the decoder of one .mbq file, timed as the built-in variants are. Returns the exit status. */
static int bench_file(const char *path, bool quick, const char *out_path, struct vlm_pool *pool) {
    struct vlm_model *m = NULL;
    if (vlm_model_load(path, &m) != VLM_OK) return 1;
    m->qctx->pool = pool;
    const struct vlm_text_config *t = &m->config.text;
    const int64_t L = t->n_layers;
    size_t layer_bytes = 0, head_bytes = mat_bytes(&m->w.lm_head_q);
    for (int64_t l = 0; l < L; l++) {
        const struct qwen2_layer_weights *W = &m->w.layers[l];
        const struct vlm_qmat *mats[] = {&W->wq, &W->wk, &W->wv, &W->wo, &W->wgate, &W->wup, &W->wdown};
        for (int i = 0; i < 7; i++) layer_bytes += mat_bytes(mats[i]);
    }
    /* a model cut with vlmconvert --random --layers records the full count: extrapolate to it */
    const cJSON *rnd = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "quant"), "random");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(rnd, "decoder_layers_of");
    const int64_t L_full = cJSON_IsNumber(of) && of->valuedouble > (double)L ? (int64_t)of->valuedouble : L;
    char model[256];
    cpu_model(model, sizeof model);
    const int n_steps = quick ? 8 : 32;
    const int64_t n_prompt = quick ? 32 : 256;
    out("# CPU decoder speed of %s%s\n\n", path, quick ? " (--quick smoke run)" : "");
    out("- CPU: %s (%ld online cores), threads: %d; %s\n", model, sysconf(_SC_NPROCESSORS_ONLN), vlm_pool_size(pool),
        vlm_model_kernels_str(m));
    out("- weights: %s%s; d %lld, ffn %lld, %lld layers%s, head %lld x %lld %s\n", m->quant_method,
        strcmp(m->quant_method, "random") == 0 ? " (random values: speed does not depend on them)" : "",
        (long long)t->hidden_size, (long long)t->intermediate_size, (long long)L,
        L_full > L ? " in the file" : "", (long long)m->w.n_vocab_rows, (long long)t->hidden_size,
        vlm_qformat_name(m->w.lm_head_q.fmt));
    out("- prefill: a %lld-token prompt; decode: median of %d single-token steps after it; bytes/token = every "
        "decoder matrix once + the head (KV cache reads excluded)\n", (long long)n_prompt, n_steps);
    if (L_full > L)
        out("- %lld of %lld layers in the file: the %lld-layer token time is extrapolated as %lld x t_layer + t_head "
            "(both measured); prefill is of the layers in the file\n", (long long)L, (long long)L_full,
            (long long)L_full, (long long)L_full);
    const double bw = measure_dram_bw(pool, quick);
    out("- DRAM read bandwidth, same run, %d threads: %.1f GB/s\n\n", vlm_pool_size(pool), bw);
    struct timing r = run(m, n_prompt, n_steps);
    const double t_layer = (r.decode_ms - r.head_ms) / (double)L, t_full = (double)L_full * t_layer + r.head_ms;
    const double bytes = (double)layer_bytes / (double)L * (double)L_full + (double)head_bytes;
    const double gbs = bytes / 1e9 / (t_full / 1e3);
    out("| layers | MB/token | prefill tok/s | t_layer ms | t_head ms | decode ms/token | tok/s | GB/s | of DRAM "
        "|\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    out("| %lld%s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.1f | %.0f%% |\n", (long long)L_full,
        L_full > L ? " (extrapolated)" : "", bytes / 1e6, r.prefill_tok_s, t_layer, r.head_ms, t_full, 1e3 / t_full,
        gbs, 100.0 * gbs / bw);
    vlm_model_free(m);
    return bench_write_report("bench_decode", out_path);
}

int main(int argc, char **argv) {
    bool quick;
    const char *out_path, *model_path = NULL;
    /* --model FILE is this benchmark's own option; the rest is bench_args' */
    char *rest[64];
    int n_rest = 0;
    bool has_out = false;
    for (int i = 0; i < argc && n_rest < 64; i++) {
        if (i > 0 && strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model_path = argv[++i];
            continue;
        }
        has_out = has_out || (i > 0 && strcmp(argv[i], "--out") == 0);
        rest[n_rest++] = argv[i];
    }
    if (n_rest == 64 ||
        bench_args(n_rest, rest, "bench_decode", VLM_SRC_DIR "/bench/decode.md", &quick, &out_path) != 0) {
        fprintf(stderr, "       bench_decode --model FILE.mbq [--quick] [--out FILE]\n");
        return 2;
    }
    if (model_path) {
        vlm_log_set_prog("bench_decode");
        struct vlm_pool *pool = vlm_pool_default();
        if (!pool) return 1;
        return bench_file(model_path, quick, has_out ? out_path : NULL, pool);
    }
    struct vlm_config c05, c7;
    if (vlm_config_parse(VLM_SRC_DIR "/tests/data/configs/0.5b/config.json", &c05) != VLM_OK ||
        vlm_config_parse(VLM_SRC_DIR "/tests/data/configs/7b/config.json", &c7) != VLM_OK)
        return 1;
    struct vlm_pool *pool = vlm_pool_default();
    if (!pool) return 1;
    char model[256], date[64];
    cpu_model(model, sizeof model);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    const int n_steps = quick ? 8 : 32;
    const int64_t n_prompt = quick ? 32 : 256;

    out("# End-to-end CPU decoder speed per weight format%s\n\n", quick ? " (--quick smoke run)" : "");
    out("- CPU: %s (%ld online cores), ISA level: %s, threads: %d (the default pool, for every op)\n", model,
        sysconf(_SC_NPROCESSORS_ONLN), cpu_isa_name(cpu_isa_detect()), vlm_pool_size(pool));
    out("- date: %s\n", date);
    out("- synthetic weights in each format (speed does not depend on values); the decoder runs through qwen2_forward "
        "as vlmrun runs a .mbq: float32 activations and KV cache, RMSNorm, RoPE, the fast attention kernel, "
        "the head over all %lld rows\n", (long long)c05.text.vocab_size);
    out("- prefill: a %lld-token prompt; decode: median of %d single-token steps after it; bytes/token = every "
        "decoder matrix once + the head (KV cache reads excluded: ~%.1f MB at this context for 0.5B)\n",
        (long long)n_prompt, n_steps,
        (double)(2 * c05.text.n_layers * c05.text.n_kv_heads * c05.text.head_dim * 4 * (n_prompt + n_steps)) / 1e6);
    const double bw = measure_dram_bw(pool, quick);
    out("- DRAM read bandwidth, same run, %d threads: %.1f GB/s\n\n", vlm_pool_size(pool), bw);

    const struct variant v05[] = {
        {"fp16 (tied fp16 head)", VLM_QF_F16, VLM_QF_F16},   {"W4 g128 + fp16 head", VLM_QF_W4G128, VLM_QF_F16},
        {"W3 g128 + fp16 head", VLM_QF_W3G128, VLM_QF_F16},  {"W4A8 + fp16 head", VLM_QF_W4A8, VLM_QF_F16},
        {"W4 g128 + int8 head", VLM_QF_W4G128, VLM_QF_Q8R}, {"W3 g128 + int8 head", VLM_QF_W3G128, VLM_QF_Q8R},
        {"W4A8 + int8 head", VLM_QF_W4A8, VLM_QF_Q8R},
    };
    out("## 0.5B dimensions (24 layers, d 896, ffn 4864, head 151936 x 896)\n\n");
    out("| weights | MB/token | prefill tok/s | decode ms/token | of which head ms | decode tok/s | GB/s | of DRAM "
        "| vs fp16 |\n");
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    double base = 0;
    for (size_t i = 0; i < sizeof v05 / sizeof v05[0]; i++) {
        size_t wb, hb;
        struct vlm_model *m = build(&c05, c05.text.n_layers, v05[i].lin, v05[i].head, &wb, &hb);
        m->qctx->pool = pool;
        struct timing t = run(m, n_prompt, n_steps);
        if (i == 0) base = t.decode_ms;
        double gbs = (double)wb / 1e9 / (t.decode_ms / 1e3);
        out("| %s | %.0f | %.0f | %.2f | %.2f | %.1f | %.1f | %.0f%% | %.2fx |\n", v05[i].name, (double)wb / 1e6,
            t.prefill_tok_s, t.decode_ms, t.head_ms, 1e3 / t.decode_ms, gbs, 100.0 * gbs / bw, base / t.decode_ms);
        destroy(m);
    }

    const int64_t L7 = quick ? 2 : 4;
    const struct variant v7[] = {
        {"fp16 + fp16 head", VLM_QF_F16, VLM_QF_F16},       {"W4 g128 + int8 head", VLM_QF_W4G128, VLM_QF_Q8R},
        {"W3 g128 + int8 head", VLM_QF_W3G128, VLM_QF_Q8R}, {"W4A8 + int8 head", VLM_QF_W4A8, VLM_QF_Q8R},
    };
    out("\n## 7B dimensions (d 3584, ffn 18944, head 152064 x 3584): %lld of 28 layers built, 28-layer token time "
        "extrapolated as 28 x t_layer + t_head\n\n", (long long)L7);
    out("| weights | MB/token (28 layers) | t_layer ms | t_head ms | decode ms/token (28 L) | tok/s | GB/s | of DRAM "
        "| vs fp16 |\n");
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < sizeof v7 / sizeof v7[0]; i++) {
        size_t wb, hb;
        struct vlm_model *m = build(&c7, L7, v7[i].lin, v7[i].head, &wb, &hb);
        m->qctx->pool = pool;
        struct timing t = run(m, quick ? 16 : 64, n_steps);
        double t_layer = (t.decode_ms - t.head_ms) / (double)L7, t28 = 28 * t_layer + t.head_ms;
        double bytes28 = (double)(wb - hb) / (double)L7 * 28 + (double)hb;
        if (i == 0) base = t28;
        double gbs = bytes28 / 1e9 / (t28 / 1e3);
        out("| %s | %.0f | %.2f | %.2f | %.1f | %.2f | %.1f | %.0f%% | %.2fx |\n", v7[i].name, bytes28 / 1e6, t_layer,
            t.head_ms, t28, 1e3 / t28, gbs, 100.0 * gbs / bw, base / t28);
        destroy(m);
    }
    /* vision: the tower and projector of the 0.5B config in float32, fast kernels (the .mbq path), one crop */
    {
        struct vlm_model *m = calloc(1, sizeof *m);
        VLM_ASSERT(m);
        m->config = c05;
        const struct vlm_vision_config *vc = &c05.vision;
        const int64_t h = vc->hidden_size, fi = vc->intermediate_size, np = vc->n_patches_side * vc->n_patches_side;
        const int64_t L = quick ? 2 : vlm_config_n_vit_layers(&c05), d = c05.text.hidden_size;
        const int64_t kdim = vc->n_channels * vc->patch_size * vc->patch_size, in = h * c05.n_feature_layers;
        const float sc = 0.02f;
        m->w.n_vit_layers = L;
        m->w.vit = calloc((size_t)L, sizeof *m->w.vit);
        m->w.patch_w = make_vec(h * kdim, 0, sc), m->w.patch_b = make_vec(h, 0, sc);
        m->w.pos_emb = make_vec(np * h, 0, sc);
        for (int64_t l = 0; l < L; l++) {
            struct vit_layer_weights *W = &m->w.vit[l];
            W->ln1_w = make_vec(h, 1, 0.1f), W->ln1_b = make_vec(h, 0, sc), W->ln2_w = make_vec(h, 1, 0.1f);
            W->ln2_b = make_vec(h, 0, sc);
            W->q_w = make_vec(h * h, 0, sc), W->k_w = make_vec(h * h, 0, sc), W->v_w = make_vec(h * h, 0, sc);
            W->o_w = make_vec(h * h, 0, sc), W->q_b = make_vec(h, 0, sc), W->k_b = make_vec(h, 0, sc);
            W->v_b = make_vec(h, 0, sc), W->o_b = make_vec(h, 0, sc);
            W->fc1_w = make_vec(fi * h, 0, sc), W->fc1_b = make_vec(fi, 0, sc);
            W->fc2_w = make_vec(h * fi, 0, sc), W->fc2_b = make_vec(h, 0, sc);
        }
        m->w.proj1_w = make_vec(d * in, 0, sc), m->w.proj1_b = make_vec(d, 0, sc);
        m->w.proj2_w = make_vec(d * d, 0, sc), m->w.proj2_b = make_vec(d, 0, sc);
        m->qctx = calloc(1, sizeof *m->qctx);
        VLM_ASSERT(m->qctx);
        m->qctx->pool = pool;
        m->fast_f32 = true;
        float *px = make_vec(vc->n_channels * vc->image_size * vc->image_size, 0, 1);
        float *feats = xalloc((size_t)(np * in) * sizeof(float)), *proj = xalloc((size_t)(np * d) * sizeof(float));
        double best = 1e30;
        for (int r = 0; r < (quick ? 1 : 2); r++) {
            double t0 = vlm_time_ms();
            VLM_ASSERT(vit_forward(m, px, 1, feats) == VLM_OK && vit_project(m, feats, np, proj) == VLM_OK);
            double ms = vlm_time_ms() - t0;
            best = ms < best ? ms : best;
        }
        /* FLOPs: per layer 4 h² + 2 h·fi weights per token, attention 2·np·h (QKᵀ and PV) per token */
        double flop = 2.0 * (double)np * ((double)L * (4.0 * h * h + 2.0 * h * fi + 2.0 * np * h) + h * kdim +
                                         in * d + d * d);
        out("\n## Vision tower + projector (SigLIP so400m dims: %lld layers, %lld tokens per crop), float32 weights, "
            "fast f32 GEMM + the fast attention; norms and GELU (tanh, in double) still the plain reference\n\n",
            (long long)L, (long long)np);
        out("| crops | ms per crop | GFLOP per crop | GFLOP/s |\n|---:|---:|---:|---:|\n");
        out("| 1 | %.0f | %.0f | %.1f |\n", best, flop / 1e9, flop / 1e9 / (best / 1e3));
        free(px), free(feats), free(proj);
        for (int64_t l = 0; l < L; l++) {
            struct vit_layer_weights *W = &m->w.vit[l];
            float *all[] = {W->ln1_w, W->ln1_b, W->ln2_w, W->ln2_b, W->q_w, W->k_w, W->v_w, W->o_w, W->q_b,
                            W->k_b, W->v_b, W->o_b, W->fc1_w, W->fc1_b, W->fc2_w, W->fc2_b};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
        }
        free(m->w.vit), free(m->w.patch_w), free(m->w.patch_b), free(m->w.pos_emb);
        free(m->w.proj1_w), free(m->w.proj1_b), free(m->w.proj2_w), free(m->w.proj2_b);
        cpu_qctx_free(m->qctx);
        free(m->qctx);
        free(m);
    }
    return bench_write_report("bench_decode", out_path);
}
