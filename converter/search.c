/* search.c — the channel-wise scale search of mbq.md §5-§7 (contracts in search.h). Everything is float32 on the
 * CPU kernels (the fast f32 GEMM through m->qctx, the fast attention); quantization is the reference quantizer of
 * kernels/quant.h, so a searched candidate is exactly what the final file will hold. */
#include "converter/search.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "converter/conv.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * primitives
 * ------------------------------------------------------------------------------------------------------------- */

void conv_act_stat(const float *x, int64_t T, int64_t k, float *stat) {
    double *acc = calloc((size_t)k, sizeof *acc);
    VLM_ASSERT(acc);
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) acc[j] += fabs((double)x[t * k + j]);
    for (int64_t j = 0; j < k; j++) stat[j] = T > 0 ? (float)(acc[j] / (double)T) : 0.0f;
    free(acc);
}

void conv_scales(const float *stat, int64_t k, float alpha, float *s) {
    float mx = 0, mn = INFINITY;
    for (int64_t j = 0; j < k; j++) {
        float v = powf(stat[j], alpha);
        s[j] = v > 1e-4f ? v : 1e-4f; /* also catches stat = 0 with alpha > 0 */
        mx = s[j] > mx ? s[j] : mx;
        mn = s[j] < mn ? s[j] : mn;
    }
    const float norm = sqrtf(mx * mn);
    for (int64_t j = 0; j < k; j++) s[j] /= norm;
}

/* Rows are independent in every format (groups run along k), so the candidate is built in row blocks across the
 * pool: identical bytes to one vlm_quantize_ref call over the whole matrix. */
struct qs_job {
    enum vlm_qformat f;
    const float *w, *s;
    int64_t k;
    float *out;
};

static void qs_range(void *ctx, int64_t r0, int64_t r1) {
    const struct qs_job *j = ctx;
    const int64_t n = r1 - r0, k = j->k;
    struct vlm_qlayout L;
    VLM_ASSERT(vlm_qlayout(j->f, n, k, &L, NULL));
    float *ws = vlm_alloc_array((size_t)n, (size_t)k * sizeof(float), "scaled weights");
    unsigned char *blob = aligned_alloc(VLM_QALIGN, (L.total_bytes + VLM_QALIGN) / VLM_QALIGN * VLM_QALIGN);
    VLM_ASSERT(ws && blob); /* the search's working set is far larger than these; it cannot fail gracefully here */
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) ws[r * k + c] = j->s ? j->w[(r0 + r) * k + c] * j->s[c] : j->w[(r0 + r) * k + c];
    vlm_quantize_ref(j->f, ws, n, k, blob);
    struct vlm_qmat m;
    VLM_ASSERT(vlm_qmat_view(j->f, n, k, blob, L.total_bytes, &m, NULL));
    for (int64_t r = 0; r < n; r++) vlm_dequantize_row_ref(&m, r, j->out + (r0 + r) * k);
    free(blob);
    free(ws);
}

void conv_quant_scaled(enum vlm_qformat f, const float *w, int64_t n, int64_t k, const float *s, float *out) {
    struct qs_job j = {f, w, s, k, out};
    vlm_pool_for(vlm_pool_default(), n, 1 + 65536 / k, qs_range, &j);
}

double conv_loss(const float *o, const float *ohat, int64_t T, int64_t C, const uint8_t *vis, const uint8_t *ans,
                 double r) {
    double a = 0, v = 0;
    for (int64_t t = 0; t < T; t++) {
        const bool all = !vis && !ans, in_a = ans && ans[t], in_v = vis && vis[t];
        if (!all && !in_a && !in_v) continue; /* prompt text and pads carry no loss (mbq.md §3 "Masks") */
        double e = 0;
        for (int64_t c = 0; c < C; c++) e += fabs((double)o[t * C + c] - (double)ohat[t * C + c]);
        if (all || in_a) a += e;
        if (in_v) v += e;
    }
    return a + r * v;
}

/* ---------------------------------------------------------------------------------------------------------------
 * the layer's modules on a batch
 * ------------------------------------------------------------------------------------------------------------- */

/* x' (T, k) = x / s per channel, then for W4A8 the per-token int8 fake quantization of §2.2 (the activation side of
 * the candidate). s NULL: 1. */
static void act_side(enum vlm_qformat f, const float *x, int64_t T, int64_t k, const float *s, float *xo,
                     int8_t *tmp) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) xo[t * k + j] = s ? x[t * k + j] / s[j] : x[t * k + j];
    if (f != VLM_QF_W4A8) return;
    for (int64_t t = 0; t < T; t++) {
        float st = vlm_quantize_act_q8_ref(xo + t * k, k, tmp);
        for (int64_t j = 0; j < k; j++) xo[t * k + j] = (float)tmp[j] * st;
    }
}

/* Causal attention of every segment (positions restart at 0 per sample) + o_proj: out (T, d). */
static void attn_rest(const struct conv_layer_batch *b, float *q, float *k, float *v, float *att,
                      float *out) {
    const struct vlm_text_config *tc = &b->m->config.text;
    const struct qwen2_layer_weights *L = &b->m->w.layers[b->layer];
    const int64_t hd = tc->head_dim, qd = tc->n_heads * hd, kvd = tc->n_kv_heads * hd;
    for (int64_t sgi = 0; sgi < b->n_seg; sgi++) {
        const int64_t t0 = b->seg[sgi], n = b->seg[sgi + 1] - t0;
        if (n <= 0) continue;
        cpu_rope_neox_ref(q + t0 * qd, n, tc->n_heads, hd, 0, tc->rope_theta);
        cpu_rope_neox_ref(k + t0 * kvd, n, tc->n_kv_heads, hd, 0, tc->rope_theta);
        cpu_attention(att + t0 * qd, q + t0 * qd, k + t0 * kvd, v + t0 * kvd, n, n, tc->n_heads, tc->n_kv_heads, hd,
                      kvd, 0, 1, NULL);
    }
    conv_linear_f32(b->m, out, att, L->o_w, NULL, b->T, tc->hidden_size, qd);
}

struct work {
    float *x1, *x2, *x3;        /* the three groups' inputs (T, d), (T, d), (T, f) from the float layer */
    float *xs;                  /* (T, max(d, f)) the candidate's activation side */
    float *q, *k, *v, *att;     /* (T, qd), (T, kvd) x2, (T, qd) */
    float *g, *u;               /* (T, f) */
    float *out;                 /* (T, d) */
    float *wq[3];               /* candidate weights of the group's linears */
    int8_t *a8;                 /* (max(d, f)) */
};

static void work_free(struct work *w) {
    free(w->x1), free(w->x2), free(w->x3), free(w->xs), free(w->q), free(w->k), free(w->v), free(w->att);
    free(w->g), free(w->u), free(w->out), free(w->a8);
    for (int i = 0; i < 3; i++) free(w->wq[i]);
}

static float *fa(int64_t T, int64_t n) { return vlm_alloc_array((size_t)T, (size_t)n * sizeof(float), "search"); }

/* Allocates and fills the float inputs of the three groups (the layer run in float32). */
static enum vlm_status work_init(const struct conv_layer_batch *b, struct work *w) {
    const struct vlm_model *m = b->m;
    const struct vlm_text_config *tc = &m->config.text;
    const struct qwen2_layer_weights *L = &m->w.layers[b->layer];
    const int64_t T = b->T, d = tc->hidden_size, f = tc->intermediate_size, hd = tc->head_dim;
    const int64_t qd = tc->n_heads * hd, kvd = tc->n_kv_heads * hd, wide = d > f ? d : f;
    memset(w, 0, sizeof *w);
    w->x1 = fa(T, d), w->x2 = fa(T, d), w->x3 = fa(T, f), w->xs = fa(T, wide), w->q = fa(T, qd), w->k = fa(T, kvd);
    w->v = fa(T, kvd), w->att = fa(T, qd), w->g = fa(T, f), w->u = fa(T, f), w->out = fa(T, d);
    w->a8 = malloc((size_t)wide);
    const int64_t wmax = f * d > qd * d ? f * d : qd * d;
    for (int i = 0; i < 3; i++) w->wq[i] = fa(wmax, 1);
    if (!w->x1 || !w->x2 || !w->x3 || !w->xs || !w->q || !w->k || !w->v || !w->att || !w->g || !w->u || !w->out ||
        !w->a8 || !w->wq[0] || !w->wq[1] || !w->wq[2]) {
        work_free(w);
        return VLM_ERR_OOM;
    }
    cpu_rmsnorm_ref(w->x1, b->h, L->attn_norm, T, d, tc->rms_norm_eps);
    conv_linear_f32(m, w->q, w->x1, L->q_w, L->q_b, T, qd, d);
    conv_linear_f32(m, w->k, w->x1, L->k_w, L->k_b, T, kvd, d);
    conv_linear_f32(m, w->v, w->x1, L->v_w, L->v_b, T, kvd, d);
    attn_rest(b, w->q, w->k, w->v, w->att, w->out);
    for (int64_t i = 0; i < T * d; i++) w->out[i] += b->h[i]; /* h_mid */
    cpu_rmsnorm_ref(w->x2, w->out, L->mlp_norm, T, d, tc->rms_norm_eps);
    conv_linear_f32(m, w->g, w->x2, L->gate_w, NULL, T, f, d);
    conv_linear_f32(m, w->u, w->x2, L->up_w, NULL, T, f, d);
    memcpy(w->x3, w->g, (size_t)(T * f) * sizeof(float));
    cpu_swiglu_ref(w->x3, w->u, T * f);
    return VLM_OK;
}

/* The inspected module of group g with the group's linears as candidates for scales s (quant == false: the float
 * module, the target). Output (T, d) into w->out. */
static void eval_group(const struct conv_layer_batch *b, struct work *w, enum conv_group g,
                       enum vlm_qformat f, const float *s, bool quant) {
    const struct vlm_model *m = b->m;
    const struct vlm_text_config *tc = &m->config.text;
    const struct qwen2_layer_weights *L = &m->w.layers[b->layer];
    const int64_t T = b->T, d = tc->hidden_size, ff = tc->intermediate_size, hd = tc->head_dim;
    const int64_t qd = tc->n_heads * hd, kvd = tc->n_kv_heads * hd;
    switch (g) {
    case CONV_GROUP_QKV: {
        const float *x = w->x1;
        if (quant) {
            act_side(f, w->x1, T, d, s, w->xs, w->a8);
            conv_quant_scaled(f, L->q_w, qd, d, s, w->wq[0]);
            conv_quant_scaled(f, L->k_w, kvd, d, s, w->wq[1]);
            conv_quant_scaled(f, L->v_w, kvd, d, s, w->wq[2]);
            x = w->xs;
        }
        conv_linear_f32(m, w->q, x, quant ? w->wq[0] : L->q_w, L->q_b, T, qd, d);
        conv_linear_f32(m, w->k, x, quant ? w->wq[1] : L->k_w, L->k_b, T, kvd, d);
        conv_linear_f32(m, w->v, x, quant ? w->wq[2] : L->v_w, L->v_b, T, kvd, d);
        attn_rest(b, w->q, w->k, w->v, w->att, w->out);
        return;
    }
    case CONV_GROUP_GATE_UP: {
        const float *x = w->x2;
        if (quant) {
            act_side(f, w->x2, T, d, s, w->xs, w->a8);
            conv_quant_scaled(f, L->gate_w, ff, d, s, w->wq[0]);
            conv_quant_scaled(f, L->up_w, ff, d, s, w->wq[1]);
            x = w->xs;
        }
        conv_linear_f32(m, w->g, x, quant ? w->wq[0] : L->gate_w, NULL, T, ff, d);
        conv_linear_f32(m, w->u, x, quant ? w->wq[1] : L->up_w, NULL, T, ff, d);
        cpu_swiglu_ref(w->g, w->u, T * ff);
        conv_linear_f32(m, w->out, w->g, L->down_w, NULL, T, d, ff);
        return;
    }
    case CONV_GROUP_DOWN: {
        const float *x = w->x3;
        if (quant) {
            act_side(f, w->x3, T, ff, s, w->xs, w->a8);
            conv_quant_scaled(f, L->down_w, d, ff, s, w->wq[0]);
            x = w->xs;
        }
        conv_linear_f32(m, w->out, x, quant ? w->wq[0] : L->down_w, NULL, T, d, ff);
        return;
    }
    }
}

static const float *group_input(const struct work *w, enum conv_group g) {
    return g == CONV_GROUP_QKV ? w->x1 : g == CONV_GROUP_GATE_UP ? w->x2 : w->x3;
}

static enum vlm_status search_or_loss(const struct conv_layer_batch *b, enum conv_group g, enum vlm_qformat f,
                                      double r, const float *fixed_s, bool search, float *best_s, float *best_alpha,
                                      double *losses, double *loss_out) {
    const struct vlm_text_config *tc = &b->m->config.text;
    const int64_t d = tc->hidden_size, k = g == CONV_GROUP_DOWN ? tc->intermediate_size : d;
    struct work w;
    enum vlm_status st = work_init(b, &w);
    if (st != VLM_OK) return st;
    float *target = fa(b->T, d), *stat = fa(k, 1), *s = fa(k, 1);
    if (!target || !stat || !s) {
        st = VLM_ERR_OOM;
        goto done;
    }
    eval_group(b, &w, g, f, NULL, false);
    memcpy(target, w.out, (size_t)(b->T * d) * sizeof(float));
    if (!search) {
        eval_group(b, &w, g, f, fixed_s, true);
        *loss_out = conv_loss(target, w.out, b->T, d, b->vis, b->ans, r);
        goto done;
    }
    conv_act_stat(group_input(&w, g), b->T, k, stat);
    double best = INFINITY;
    for (int i = 0; i < CONV_GRID; i++) {
        const float alpha = (float)i / (float)CONV_GRID;
        conv_scales(stat, k, alpha, s);
        eval_group(b, &w, g, f, s, true);
        const double l = conv_loss(target, w.out, b->T, d, b->vis, b->ans, r);
        if (losses) losses[i] = l;
        if (l < best) { /* first strict minimum in grid order (mbq.md §6 step 2d) */
            best = l;
            *best_alpha = alpha;
            memcpy(best_s, s, (size_t)k * sizeof(float));
        }
    }
done:
    free(target);
    free(stat);
    free(s);
    work_free(&w);
    return st;
}

enum vlm_status conv_search_group(const struct conv_layer_batch *b, enum conv_group g, enum vlm_qformat f, double r,
                                  float *best_s, float *best_alpha, double *losses) {
    return search_or_loss(b, g, f, r, NULL, true, best_s, best_alpha, losses, NULL);
}

enum vlm_status conv_group_loss(const struct conv_layer_batch *b, enum conv_group g, enum vlm_qformat f, double r,
                                const float *s, double *loss) {
    return search_or_loss(b, g, f, r, s, false, NULL, NULL, NULL, loss);
}

void conv_fold_norm(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s) {
    struct qwen2_layer_weights *L = &m->w.layers[layer];
    const int64_t d = m->config.text.hidden_size;
    float *gamma = g == CONV_GROUP_QKV ? L->attn_norm : g == CONV_GROUP_GATE_UP ? L->mlp_norm : NULL;
    if (gamma) /* DOWN folds into up_proj, a linear */
        for (int64_t j = 0; j < d; j++) gamma[j] /= s[j];
}

void conv_fold_linears(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s) {
    const struct vlm_text_config *tc = &m->config.text;
    struct qwen2_layer_weights *L = &m->w.layers[layer];
    const int64_t d = tc->hidden_size, f = tc->intermediate_size;
    const int64_t qd = tc->n_heads * tc->head_dim, kvd = tc->n_kv_heads * tc->head_dim;
    switch (g) {
    case CONV_GROUP_QKV:
        for (int64_t r = 0; r < qd; r++)
            for (int64_t j = 0; j < d; j++) L->q_w[r * d + j] *= s[j];
        for (int64_t r = 0; r < kvd; r++)
            for (int64_t j = 0; j < d; j++) L->k_w[r * d + j] *= s[j], L->v_w[r * d + j] *= s[j];
        return;
    case CONV_GROUP_GATE_UP:
        for (int64_t r = 0; r < f; r++)
            for (int64_t j = 0; j < d; j++) L->gate_w[r * d + j] *= s[j], L->up_w[r * d + j] *= s[j];
        return;
    case CONV_GROUP_DOWN:
        for (int64_t r = 0; r < f; r++)
            for (int64_t j = 0; j < d; j++) L->up_w[r * d + j] /= s[r];
        for (int64_t r = 0; r < d; r++)
            for (int64_t j = 0; j < f; j++) L->down_w[r * f + j] *= s[j];
        return;
    }
}

void conv_fold_group(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s) {
    conv_fold_norm(m, layer, g, s);
    conv_fold_linears(m, layer, g, s);
}

enum vlm_status conv_layer_forward(const struct conv_layer_batch *b, float *out) {
    const struct vlm_text_config *tc = &b->m->config.text;
    const int64_t T = b->T, d = tc->hidden_size, f = tc->intermediate_size;
    struct work w;
    enum vlm_status st = work_init(b, &w); /* w.out = h_mid, w.x3 = silu(gate) * up */
    if (st != VLM_OK) return st;
    conv_linear_f32(b->m, out, w.x3, b->m->w.layers[b->layer].down_w, NULL, T, d, f);
    for (int64_t i = 0; i < T * d; i++) out[i] += w.out[i];
    work_free(&w);
    return VLM_OK;
}

enum vlm_status conv_smooth_group(const struct conv_layer_batch *b, enum conv_group g, float alpha, float *s) {
    const struct vlm_text_config *tc = &b->m->config.text;
    const struct qwen2_layer_weights *L = &b->m->w.layers[b->layer];
    const int64_t T = b->T, d = tc->hidden_size, f = tc->intermediate_size;
    const int64_t qd = tc->n_heads * tc->head_dim, kvd = tc->n_kv_heads * tc->head_dim;
    if (g == CONV_GROUP_DOWN) return VLM_ERR_ARG; /* SmoothQuant migrates only norm -> linear (mbq.md §8) */
    struct work w;
    enum vlm_status st = work_init(b, &w);
    if (st != VLM_OK) return st;
    const float *x = g == CONV_GROUP_QKV ? w.x1 : w.x2;
    const float *ws[3] = {g == CONV_GROUP_QKV ? L->q_w : L->gate_w, g == CONV_GROUP_QKV ? L->k_w : L->up_w,
                          g == CONV_GROUP_QKV ? L->v_w : NULL};
    const int64_t ns[3] = {g == CONV_GROUP_QKV ? qd : f, g == CONV_GROUP_QKV ? kvd : f, kvd};
    for (int64_t j = 0; j < d; j++) {
        float xm = 0, wm = 0;
        for (int64_t t = 0; t < T; t++) xm = fmaxf(xm, fabsf(x[t * d + j]));
        for (int i = 0; i < 3; i++)
            for (int64_t r = 0; ws[i] && r < ns[i]; r++) wm = fmaxf(wm, fabsf(ws[i][r * d + j]));
        xm = xm > 1e-5f ? xm : 1e-5f;
        wm = wm > 1e-5f ? wm : 1e-5f;
        s[j] = powf(xm, alpha) / powf(wm, 1.0f - alpha);
    }
    work_free(&w);
    return VLM_OK;
}
