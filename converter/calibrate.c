/* calibrate.c — the calibrated methods of vlmconvert (mbq.md §4, §6-§8, §10): load the calibration samples, measure
 * the modality sensitivity with the gradient pass (MBQ), then walk the decoder layer by layer on the whole batch,
 * search (AWQ, MBQ) or compute (SmoothQuant) the channel scales of each group and fold them into the float model.
 * After conv_calibrate the model's norms hold their scales and the linears' scales are returned; conv_run folds
 * those into each layer as it widens it and quantizes exactly as RTN would, so the file holds what the search
 * evaluated. One layer's float linears are in memory at a time (the model may be streamed). Every number the method chose goes into the header report. */
#include "converter/calibrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "converter/backward.h"
#include "converter/calib.h"
#include "converter/search.h"
#include "runtime/util.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* NumPy's median: the mean of the two middle values for an even count. */
static double median(const double *v, int64_t n) {
    double *c = malloc((size_t)n * sizeof *c);
    VLM_ASSERT(c);
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_double);
    double r = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return r;
}

static void progress(bool show, const char *what, int64_t done, int64_t total, double t0) {
    if (!show) return;
    double el = (vlm_time_ms() - t0) / 1e3, eta = done > 0 ? el / (double)done * (double)(total - done) : 0;
    int bar = total > 0 ? (int)(30 * done / total) : 30;
    fprintf(stderr, "\rvlmconvert: %s %lld/%lld [%.*s%*s] %.0f s, ETA %.0f s ", what, (long long)done,
            (long long)total, bar, "==============================", 30 - bar, "", el, eta);
    if (done == total) fputc('\n', stderr);
}

static cJSON *json_array(const double *v, int64_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* mbq.md §4: per layer and side, rho = (mean over samples of mean|G| on vision tokens) / (same on answer tokens);
 * r = max(rho, median over layers). */
static enum vlm_status sensitivity(struct vlm_model *m, const struct conv_calib *c, bool show, double *r_attn,
                                   double *r_mlp, cJSON *report) {
    const int64_t L = m->config.text.n_layers, d = m->config.text.hidden_size;
    double *acc = calloc((size_t)(4 * L), sizeof *acc); /* vis_attn, ans_attn, vis_mlp, ans_mlp */
    double *rho_a = calloc((size_t)L, sizeof *rho_a), *rho_m = calloc((size_t)L, sizeof *rho_m);
    if (!acc || !rho_a || !rho_m) {
        free(acc), free(rho_a), free(rho_m);
        vlm_log_error("calibration: out of memory");
        return VLM_ERR_OOM;
    }
    double t0 = vlm_time_ms(), loss = 0;
    enum vlm_status st = VLM_OK;
    for (int64_t i = 0; i < c->n_samples && st == VLM_OK; i++) {
        const struct conv_sample *s = &c->s[i];
        struct conv_grad_stats g = {0};
        if ((st = conv_grad_sample(m, s->emb, s->ids, s->vis, s->ans, s->n, &g, NULL, NULL, NULL)) != VLM_OK) break;
        for (int64_t l = 0; l < L; l++) { /* per sample: mean over (masked tokens x channels) */
            acc[0 * L + l] += g.vis_attn[l] / ((double)g.n_vis * (double)d);
            acc[1 * L + l] += g.ans_attn[l] / ((double)g.n_ans * (double)d);
            acc[2 * L + l] += g.vis_mlp[l] / ((double)g.n_vis * (double)d);
            acc[3 * L + l] += g.ans_mlp[l] / ((double)g.n_ans * (double)d);
        }
        loss += g.loss;
        conv_grad_stats_free(&g);
        progress(show, "gradient pass, sample", i + 1, c->n_samples, t0);
    }
    if (st == VLM_OK) {
        for (int64_t l = 0; l < L; l++) { /* ratio of means over samples (the 1/n cancels) */
            rho_a[l] = acc[1 * L + l] > 0 ? acc[0 * L + l] / acc[1 * L + l] : 0;
            rho_m[l] = acc[3 * L + l] > 0 ? acc[2 * L + l] / acc[3 * L + l] : 0;
        }
        const double med_a = median(rho_a, L), med_m = median(rho_m, L);
        for (int64_t l = 0; l < L; l++) r_attn[l] = fmax(rho_a[l], med_a), r_mlp[l] = fmax(rho_m[l], med_m);
        cJSON_AddItemToObject(report, "rho_attn", json_array(rho_a, L));
        cJSON_AddItemToObject(report, "rho_mlp", json_array(rho_m, L));
        cJSON_AddItemToObject(report, "r_attn", json_array(r_attn, L));
        cJSON_AddItemToObject(report, "r_mlp", json_array(r_mlp, L));
        cJSON_AddNumberToObject(report, "calib_loss", loss / (double)c->n_samples);
        vlm_log_info("modality sensitivity (rho = mean|grad| vision / answer): median attn %.4g, mlp %.4g; mean "
                     "calibration loss %.4f; gradient pass %.1f s", med_a, med_m, loss / (double)c->n_samples,
                     (vlm_time_ms() - t0) / 1e3);
        for (int64_t l = 0; l < L; l++)
            vlm_log_info("  layer %2lld: rho_attn %.4g  rho_mlp %.4g  ->  r_attn %.4g  r_mlp %.4g", (long long)l,
                         rho_a[l], rho_m[l], r_attn[l], r_mlp[l]);
    }
    free(acc), free(rho_a), free(rho_m);
    return st;
}

void conv_fold_layer_linears(struct vlm_model *m, int64_t l, float *table) {
    for (int g = 0; g < 3; g++)
        conv_fold_linears(m, l, (enum conv_group)g, conv_scales_group(table, &m->config.text, l, g));
}

enum vlm_status conv_calibrate(struct vlm_model *m, const struct vlm_tokenizer *tok, const struct conv_calib_opts *o,
                               cJSON *report, float **scales) {
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t L = tc->n_layers, d = tc->hidden_size, f = tc->intermediate_size;
    const bool show = o->progress && isatty(2);
    struct conv_calib c = {0};
    double *r_attn = NULL, *r_mlp = NULL, *alphas = NULL;
    float *h = NULL, *h2 = NULL, *table = NULL;
    const int64_t per_layer = conv_scales_per_layer(tc);
    *scales = NULL;
    int64_t *seg = NULL;
    uint8_t *vis = NULL, *ans = NULL;
    const double t_load = vlm_time_ms();
    enum vlm_status st = conv_calib_load(o->calib_path, m, tok, o->n_samples, o->seed, &c);
    if (st != VLM_OK) return st;
    vlm_log_info("calibration inputs: %lld samples through the float vision path in %.1f s", (long long)c.n_samples,
                 (vlm_time_ms() - t_load) / 1e3);
    r_attn = calloc((size_t)L, sizeof *r_attn), r_mlp = calloc((size_t)L, sizeof *r_mlp);
    alphas = calloc((size_t)(3 * L), sizeof *alphas);
    seg = calloc((size_t)c.n_samples + 1, sizeof *seg);
    int64_t T = 0;
    for (int64_t i = 0; i < c.n_samples; i++) T += c.s[i].n; /* each bounded by the tokenizer and config caps */
    h = vlm_alloc_array((size_t)T, (size_t)d * sizeof(float), "calibration batch");
    h2 = vlm_alloc_array((size_t)T, (size_t)d * sizeof(float), "calibration batch");
    table = vlm_alloc_array((size_t)L, (size_t)per_layer * sizeof(float), "scales");
    vis = calloc((size_t)T, 1), ans = calloc((size_t)T, 1);
    if (!r_attn || !r_mlp || !alphas || !seg || !h || !h2 || !table || !vis || !ans) {
        vlm_log_error("calibration: out of memory for %lld tokens", (long long)T);
        st = VLM_ERR_OOM;
        goto done;
    }
    for (int64_t l = 0; l < L; l++) r_attn[l] = r_mlp[l] = 1.0;
    if (o->method == CONV_CAL_MBQ && (st = sensitivity(m, &c, show, r_attn, r_mlp, report)) != VLM_OK) goto done;
    for (int64_t i = 0, t = 0; i < c.n_samples; i++) {
        seg[i] = t;
        memcpy(h + t * d, c.s[i].emb, (size_t)(c.s[i].n * d) * sizeof(float));
        memcpy(vis + t, c.s[i].vis, (size_t)c.s[i].n);
        memcpy(ans + t, c.s[i].ans, (size_t)c.s[i].n);
        t += c.s[i].n;
    }
    seg[c.n_samples] = T;
    const int64_t n_samples = c.n_samples;
    conv_calib_free(&c); /* the batch holds the copies the search needs */
    const bool weighted = o->method == CONV_CAL_MBQ;
    double t0 = vlm_time_ms();
    for (int64_t l = 0; l < L; l++) {
        struct conv_layer_batch b = {.m = m, .layer = l, .T = T, .n_seg = n_samples, .seg = seg,
                                     .vis = weighted ? vis : NULL, .ans = weighted ? ans : NULL, .h = h};
        if ((st = vlm_model_layer_load(m, l)) != VLM_OK) goto done;
        /* the next layer's input comes from the float layer before any of this layer's scales (mbq.md §6 step 1);
         * every group is searched on the unscaled layer, then the scales are folded */
        if ((st = conv_layer_forward(&b, h2)) != VLM_OK) goto done;
        float *sv[3] = {conv_scales_group(table, tc, l, 0), conv_scales_group(table, tc, l, 1),
                        conv_scales_group(table, tc, l, 2)};
        for (int g = 0; g < 3; g++) {
            const int64_t k = g == CONV_GROUP_DOWN ? f : d;
            float alpha = 0.5f;
            if (o->method == CONV_CAL_SMOOTHQUANT) {
                if (g == CONV_GROUP_DOWN) { /* SmoothQuant leaves up -> down alone */
                    for (int64_t j = 0; j < k; j++) sv[g][j] = 1.0f;
                } else if ((st = conv_smooth_group(&b, (enum conv_group)g, 0.5f, sv[g])) != VLM_OK) {
                    goto done;
                }
            } else {
                const double r = g == CONV_GROUP_QKV ? r_attn[l] : r_mlp[l];
                if ((st = conv_search_group(&b, (enum conv_group)g, o->format, weighted ? r : 1.0, sv[g], &alpha,
                                            NULL)) != VLM_OK)
                    goto done;
            }
            alphas[3 * l + g] = alpha;
        }
        /* the norms keep their share now; the linears get theirs when the writer widens the layer again */
        for (int g = 0; g < 3; g++) conv_fold_norm(m, l, (enum conv_group)g, sv[g]);
        float *tmp = h;
        h = h2, h2 = tmp;
        progress(show, "scale search, layer", l + 1, L, t0);
    }
    cJSON *al = cJSON_AddArrayToObject(report, "alpha_qkv_gateup_down");
    for (int64_t l = 0; al && l < L; l++) cJSON_AddItemToArray(al, json_array(alphas + 3 * l, 3));
    cJSON_AddNumberToObject(report, "n_samples", (double)n_samples);
    cJSON_AddNumberToObject(report, "calib_tokens", (double)T);
    cJSON_AddNumberToObject(report, "seed", (double)o->seed);
    vlm_log_info("calibration: %lld samples, %lld tokens, %lld layers in %.1f s", (long long)n_samples,
                 (long long)T, (long long)L, (vlm_time_ms() - t0) / 1e3);
    *scales = table;
    table = NULL;
done:
    conv_calib_free(&c);
    free(r_attn), free(r_mlp), free(alphas), free(seg), free(h), free(h2), free(table), free(vis), free(ans);
    return st;
}
