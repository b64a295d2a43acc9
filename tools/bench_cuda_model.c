/* bench_cuda_model.c — end-to-end speed of the GPU path (runtime/gpu.c) on .mbq files: prefill tokens/s, decode
 * ms/token and tokens/s (the captured decode step, wall clock per token including the embedding upload and the
 * argmax download, median of the steps), and the vision encoder + projector for 1 and 7 crops.
 *
 * Models of the published sizes come from `vlmconvert --random 7b ... --layers L`: a GPU run cannot afford writing
 * and loading every layer of each format, so each variant is given as TWO files cut to different layer counts and the
 * time per token is fitted as t = t_fixed + L · t_layer (both measured), then extrapolated to the full layer count
 * the header records (quant.random.decoder_layers_of). The fit and the measured points are printed.
 *
 * Usage: bench_cuda_model [--out FILE.md] [--prompt N] [--steps N] NAME:A.mbq:B.mbq [NAME:A.mbq:B.mbq ...]
 *   The first variant is the baseline of the speed-up column (give FP16 first). Without a GPU: one line, exit 0. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "runtime/gpu.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/util.h"

#define MAX_VARIANTS 8

struct point {
    int64_t layers, layers_full;
    double prefill_ms, step_ms, vis1_ms, vis7_ms;
    char device[512];
};

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) { /* uniform in [-1, 1): inputs only need to be finite and varied */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* Loads path, runs the GPU path, fills *p. Returns false after printing why. */
static bool measure(const char *path, int64_t n_prompt, int64_t n_steps, struct point *p) {
    struct vlm_model *m = NULL;
    bool ok = false;
    float *x = NULL, *px = NULL, *feats = NULL;
    if (vlm_model_load(path, &m) != VLM_OK) return false;
    const int64_t d = m->config.text.hidden_size;
    p->layers = p->layers_full = m->config.text.n_layers;
    if (m->mbq) {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "quant");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(q, "random"),
                                                           "decoder_layers_of");
        if (cJSON_IsNumber(of) && of->valuedouble >= (double)p->layers) p->layers_full = (int64_t)of->valuedouble;
    }
    if (vlm_model_use_gpu(m, 0, n_prompt + n_steps + 1) != VLM_OK) goto done;
    snprintf(p->device, sizeof p->device, "%s", vlm_gpu_describe(m->gpu));
    x = vlm_alloc_array((size_t)n_prompt, (size_t)d * sizeof(float), "bench embeddings");
    if (!x) goto done;
    for (int64_t i = 0; i < n_prompt * d; i++) x[i] = 0.02f * rnd();
    int64_t id;
    /* warm-up: one prefill and a few steps (captures the graph) */
    vlm_gpu_reset(m->gpu);
    if (vlm_gpu_forward(m->gpu, x, n_prompt, NULL, 0, &id) != VLM_OK) goto done;
    for (int s = 0; s < 3; s++)
        if (vlm_gpu_forward(m->gpu, x + s * d, 1, NULL, 0, &id) != VLM_OK) goto done;
    vlm_gpu_reset(m->gpu);
    double t0 = vlm_time_ms();
    if (vlm_gpu_forward(m->gpu, x, n_prompt, NULL, 0, &id) != VLM_OK) goto done;
    p->prefill_ms = vlm_time_ms() - t0;
    double *ts = calloc((size_t)n_steps, sizeof *ts);
    if (!ts) goto done;
    for (int64_t s = 0; s < n_steps; s++) {
        t0 = vlm_time_ms();
        if (vlm_gpu_forward(m->gpu, x + (s % n_prompt) * d, 1, NULL, 0, &id) != VLM_OK) {
            free(ts);
            goto done;
        }
        ts[s] = vlm_time_ms() - t0;
    }
    qsort(ts, (size_t)n_steps, sizeof *ts, cmp_double);
    p->step_ms = ts[n_steps / 2];
    free(ts);
    /* vision: 1 and 7 crops of random pixels (the tower's cost does not depend on the values) */
    const struct vlm_vision_config *vc = &m->config.vision;
    const int64_t crop = vc->n_channels * vc->image_size * vc->image_size;
    const int64_t np = vc->n_patches_side * vc->n_patches_side;
    px = vlm_alloc_array(7, (size_t)crop * sizeof(float), "bench pixels");
    feats = vlm_alloc_array(7 * (size_t)np, (size_t)d * sizeof(float), "bench features");
    if (!px || !feats) goto done;
    for (int64_t i = 0; i < 7 * crop; i++) px[i] = rnd();
    for (int rep = 0; rep < 2; rep++) { /* the first run of each size warms cuBLAS up */
        t0 = vlm_time_ms();
        if (vlm_gpu_encode_image(m->gpu, px, 1, feats) != VLM_OK) goto done;
        p->vis1_ms = vlm_time_ms() - t0;
        t0 = vlm_time_ms();
        if (vlm_gpu_encode_image(m->gpu, px, 7, feats) != VLM_OK) p->vis7_ms = -1; /* fewer crops allocated */
        else p->vis7_ms = vlm_time_ms() - t0;
    }
    ok = true;
done:
    free(x);
    free(px);
    free(feats);
    vlm_model_free(m);
    return ok;
}

int main(int argc, char **argv) {
    const char *out_path = NULL;
    int64_t n_prompt = 512, n_steps = 64;
    const char *specs[MAX_VARIANTS];
    int n_var = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) n_prompt = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) n_steps = atoll(argv[++i]);
        else if (argv[i][0] != '-' && n_var < MAX_VARIANTS) specs[n_var++] = argv[i];
        else {
            fprintf(stderr, "usage: bench_cuda_model [--out FILE.md] [--prompt N] [--steps N] NAME:A.mbq:B.mbq ...\n");
            return 2;
        }
    }
    int n_dev = 0;
    if (cuda_backend_probe(&n_dev) != VLM_OK || n_dev == 0) {
        printf("bench_cuda_model: no CUDA device (%s); nothing measured\n",
               cuda_backend_compiled() ? "no GPU or driver" : "CPU-only build");
        return 0;
    }
    if (n_var == 0 || n_prompt < 1 || n_steps < 1) {
        fprintf(stderr, "bench_cuda_model: give at least one NAME:A.mbq:B.mbq variant\n");
        return 2;
    }
    FILE *out = out_path ? fopen(out_path, "w") : stdout;
    if (!out) {
        fprintf(stderr, "bench_cuda_model: cannot write %s\n", out_path);
        return 1;
    }
    double base_tok_s = 0;
    int rc = 0;
    for (int v = 0; v < n_var; v++) {
        char buf[2048];
        snprintf(buf, sizeof buf, "%s", specs[v]);
        char *name = strtok(buf, ":"), *fa = strtok(NULL, ":"), *fb = strtok(NULL, ":");
        struct point a, b;
        if (!name || !fa || !fb) {
            fprintf(stderr, "bench_cuda_model: '%s' is not NAME:A.mbq:B.mbq\n", specs[v]);
            rc = 2;
            break;
        }
        if (!measure(fa, n_prompt, n_steps, &a) || !measure(fb, n_prompt, n_steps, &b) || a.layers == b.layers) {
            fprintf(stderr, "bench_cuda_model: %s: measurement failed (or equal layer counts)\n", name);
            rc = 1;
            continue;
        }
        if (v == 0)
            fprintf(out, "# GPU end to end (runtime/gpu.c)\n\n- device: %s\n- prompt %lld tokens, decode median of "
                         "%lld steps; per-token times fitted t = t_fixed + L * t_layer over two cut files and "
                         "extrapolated to the full layer count\n\n| variant | layers measured | full layers | decode "
                         "ms/token | decode tok/s | vs first | prefill tok/s | vision 1 crop ms | vision 7 crops ms |\n"
                         "|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
                    a.device, (long long)n_prompt, (long long)n_steps);
        const double per_layer = (b.step_ms - a.step_ms) / (double)(b.layers - a.layers);
        const double fixed = a.step_ms - per_layer * (double)a.layers;
        const double step_full = fixed + per_layer * (double)a.layers_full;
        const double pl_pre = (b.prefill_ms - a.prefill_ms) / (double)(b.layers - a.layers);
        const double pre_full = a.prefill_ms - pl_pre * (double)a.layers + pl_pre * (double)a.layers_full;
        const double tok_s = 1000.0 / step_full;
        if (v == 0) base_tok_s = tok_s;
        fprintf(out, "| %s | %lld: %.3f ms, %lld: %.3f ms | %lld | %.3f | %.1f | %.2fx | %.0f | %.2f | %.2f |\n", name,
                (long long)a.layers, a.step_ms, (long long)b.layers, b.step_ms, (long long)a.layers_full, step_full,
                tok_s, tok_s / base_tok_s, n_prompt / (pre_full * 1e-3), b.vis1_ms > a.vis1_ms ? b.vis1_ms : a.vis1_ms,
                b.vis7_ms > a.vis7_ms ? b.vis7_ms : a.vis7_ms);
        fflush(out);
    }
    if (out != stdout) fclose(out);
    return rc;
}
