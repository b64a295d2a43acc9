/* backward.c — the float32 activation-gradient pass of mbq.md §4 (see backward.h for the contract).
 *
 * Plan: one forward over the decoder saving only the residual stream at each layer boundary (L+1 arrays of n x d);
 * the loss and its gradient at the head, streamed over chunks of supervised rows (one chunk of logits at a time,
 * never n x vocab); then layer by layer from the top, the layer's internals are recomputed from its saved input and
 * the adjoints run through the MLP and the attention. So beyond the boundary residuals, memory is one layer's
 * activations and gradients, and the attention backward recomputes each (query, head) row of probabilities.
 *
 * The forward is the math of runtime/qwen2.c with the float32 reference ops (kernels/ops.h), so the recomputed
 * activations are the ones the runtime and HF produce; the adjoints are written here, accumulate in double and
 * store float32. Only activation gradients are formed (no weight gradients). */
#include "converter/backward.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "converter/conv.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "runtime/util.h"

void conv_grad_stats_free(struct conv_grad_stats *s) {
    if (!s) return;
    free(s->vis_attn);
    free(s->ans_attn);
    free(s->vis_mlp);
    free(s->ans_mlp);
    memset(s, 0, sizeof *s);
}

/* a x b elements of size sz, the product checked; NULL after one log line. */
static void *alloc2(int64_t a, int64_t b, size_t sz, const char *what) {
    size_t n;
    if (a < 0 || b < 0 || !vlm_size_mul((size_t)a, (size_t)b, &n)) {
        vlm_log_error("gradient pass: %s: size overflow", what);
        return NULL;
    }
    return vlm_alloc_array(n ? n : 1, sz, what);
}

/* ---- linear backward: dx (M, K) (+)= dy (M, N) · W, W (N, K) row-major. A task owns a tile of LB_ROWS rows of
 * dx by LB_COLS columns and keeps its accumulators (double) on the stack; it walks W's rows once, reading a
 * 64-float run of each, and applies it to every row of its tile. So W is read once per row tile, not once per
 * row: for the lm_head (N = vocabulary, W of hundreds of MB) with the answer rows of a sample in one tile, the
 * whole backward reads the head once. */

#define LB_COLS 64
#define LB_ROWS 32

struct lin_bwd_job {
    float *dx;
    const float *dy, *w;
    int64_t M, N, K, n_blk;
    int accumulate;
};

static void lin_bwd_range(void *ctx, int64_t begin, int64_t end) {
    const struct lin_bwd_job *j = ctx;
    double acc[LB_ROWS][LB_COLS];
    for (int64_t it = begin; it < end; it++) {
        const int64_t t0 = it / j->n_blk * LB_ROWS, k0 = (it % j->n_blk) * LB_COLS;
        const int64_t nk = j->K - k0 < LB_COLS ? j->K - k0 : LB_COLS;
        const int64_t nt = j->M - t0 < LB_ROWS ? j->M - t0 : LB_ROWS;
        for (int64_t r = 0; r < nt; r++)
            for (int64_t c = 0; c < nk; c++) acc[r][c] = 0;
        for (int64_t o = 0; o < j->N; o++) {
            const float *wr = j->w + o * j->K + k0;
            for (int64_t r = 0; r < nt; r++) {
                const double g = j->dy[(t0 + r) * j->N + o];
                if (g == 0) continue; /* masked-out rows of a gradient are all zero */
                for (int64_t c = 0; c < nk; c++) acc[r][c] += g * wr[c];
            }
        }
        for (int64_t r = 0; r < nt; r++) {
            float *dxr = j->dx + (t0 + r) * j->K + k0;
            if (j->accumulate)
                for (int64_t c = 0; c < nk; c++) dxr[c] = (float)((double)dxr[c] + acc[r][c]);
            else
                for (int64_t c = 0; c < nk; c++) dxr[c] = (float)acc[r][c];
        }
    }
}

static void lin_bwd(float *dx, const float *dy, const float *w, int64_t M, int64_t N, int64_t K, int accumulate) {
    struct lin_bwd_job j = {dx, dy, w, M, N, K, (K + LB_COLS - 1) / LB_COLS, accumulate};
    const int64_t tiles = (M + LB_ROWS - 1) / LB_ROWS * j.n_blk;
    vlm_pool_for(vlm_pool_default(), tiles, 1, lin_bwd_range, &j);
}

/* ---- the GEMMs on the fast f32 kernels when the model has a kernel context (every loaded model does): the
 * calibration's cost is almost all GEMM. Forward: conv_linear_f32 (converter/conv.h). Backward: dx (+)= dy·W, as one
 * GEMM against Wᵀ
 * (a transposed copy, built per call: a layer's weights are small next to the GEMM's work at calibration lengths).
 * Without a context (or if a scratch allocation fails) the double-precision loops above/below are used. */
static void lin_bwd_fast(const struct vlm_model *m, float *dx, const float *dy, const float *w, int64_t M, int64_t N,
                         int64_t K, int accumulate) {
    float *wt = m->qctx ? malloc((size_t)N * (size_t)K * sizeof(float)) : NULL;
    float *tmp = wt && accumulate ? malloc((size_t)M * (size_t)K * sizeof(float)) : NULL;
    if (!wt || (accumulate && !tmp)) {
        free(wt);
        free(tmp);
        lin_bwd(dx, dy, w, M, N, K, accumulate);
        return;
    }
    for (int64_t o = 0; o < N; o++)
        for (int64_t k = 0; k < K; k++) wt[k * N + o] = w[o * K + k];
    const struct vlm_qmat v = {.fmt = VLM_QF_F32, .n = K, .k = N, .codes = wt};
    if (cpu_qlinear(m->qctx, accumulate ? tmp : dx, dy, &v, NULL, M) != VLM_OK) {
        lin_bwd(dx, dy, w, M, N, K, accumulate);
    } else if (accumulate) {
        for (int64_t i = 0; i < M * K; i++) dx[i] += tmp[i];
    }
    free(wt);
    free(tmp);
}

/* ---- RMSNorm backward, accumulated into dx: y = g ⊙ x·s, s = 1/sqrt(mean(x²) + eps), so with r = dy ⊙ g,
 * ∂L/∂x = s·r − (s³/n)·(x·r)·x. (HF rounds x·s to float before the multiply by g; that rounding has no
 * derivative.) Row-local, parallel over rows. */

struct rms_bwd_job {
    float *dx;
    const float *x, *g, *dy;
    int64_t n;
    float eps;
};

static void rms_bwd_range(void *ctx, int64_t begin, int64_t end) {
    const struct rms_bwd_job *j = ctx;
    const int64_t n = j->n;
    for (int64_t t = begin; t < end; t++) {
        const float *x = j->x + t * n, *dy = j->dy + t * n;
        float *dx = j->dx + t * n;
        double ss = 0, xr = 0;
        for (int64_t c = 0; c < n; c++) {
            ss += (double)x[c] * x[c];
            xr += (double)x[c] * ((double)dy[c] * j->g[c]);
        }
        const double s = 1.0 / sqrt(ss / (double)n + (double)j->eps);
        const double k = s * s * s / (double)n * xr;
        for (int64_t c = 0; c < n; c++)
            dx[c] = (float)((double)dx[c] + s * ((double)dy[c] * j->g[c]) - k * x[c]);
    }
}

static void rms_bwd(float *dx, const float *x, const float *g, const float *dy, int64_t M, int64_t n, float eps) {
    struct rms_bwd_job j = {dx, x, g, dy, n, eps};
    vlm_pool_for(vlm_pool_default(), M, 1 + 16384 / (n > 0 ? n : 1), rms_bwd_range, &j);
}

/* ---- RoPE backward: the forward rotates each (j, j+hd/2) pair by +angle, an orthogonal map, so the adjoint is the
 * rotation by −angle. Angles exactly as cpu_rope_neox_ref computes them (float32, position from 0). */
static void rope_bwd(float *dx, int64_t n_tok, int64_t n_heads, int64_t hd, float theta) {
    const int64_t half = hd / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        const float pos = (float)t;
        for (int64_t j = 0; j < half; j++) {
            const float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
            const float ang = inv_freq * pos;
            const float c = cosf(ang), s = sinf(ang);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = dx + (t * n_heads + h) * hd;
                const float a = v[j], b = v[j + half];
                v[j] = a * c + b * s;
                v[j + half] = b * c - a * s;
            }
        }
    }
}

/* ---- causal GQA attention backward, parallel over KV heads (a KV head's group of query heads is the only
 * writer of its dK/dV slice and of those heads' dQ). Per (query i, head h) the probabilities are recomputed:
 * S_j = (q_i·k_j)·scale, P = softmax(S) over j <= i; with dO_i: dP_j = dO_i·v_j, dS_j = P_j (dP_j − Σ P dP),
 * dq_i = scale Σ dS_j k_j, dk_j += scale dS_j q_i, dv_j += P_j dO_i. q, k post-RoPE. */

struct attn_bwd_job {
    float *dq;          /* (n, nh*hd) */
    double *dk, *dv;    /* (n, nkv*hd), zeroed */
    const float *q, *k, *v, *dout;
    double *scratch;    /* nkv x 2n */
    int64_t n, nh, nkv, hd;
};

static void attn_bwd_range(void *ctx, int64_t begin, int64_t end) {
    const struct attn_bwd_job *J = ctx;
    const int64_t n = J->n, hd = J->hd, qd = J->nh * hd, kvd = J->nkv * hd, group = J->nh / J->nkv;
    const float scale = (float)(1.0 / sqrt((double)hd)); /* as cpu_attention_ref */
    for (int64_t kvh = begin; kvh < end; kvh++) {
        double *P = J->scratch + kvh * 2 * n, *dP = P + n;
        for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
            for (int64_t i = 0; i < n; i++) {
                const float *qi = J->q + i * qd + h * hd, *doi = J->dout + i * qd + h * hd;
                double mx = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    const float *kj = J->k + j * kvd + kvh * hd;
                    double acc = 0;
                    for (int64_t c = 0; c < hd; c++) acc += (double)qi[c] * kj[c];
                    P[j] = (double)((float)acc * scale);
                    if (P[j] > mx) mx = P[j];
                }
                double sum = 0;
                for (int64_t j = 0; j <= i; j++) sum += (P[j] = exp(P[j] - mx));
                double dsum = 0;
                for (int64_t j = 0; j <= i; j++) {
                    P[j] /= sum;
                    const float *vj = J->v + j * kvd + kvh * hd;
                    double acc = 0;
                    for (int64_t c = 0; c < hd; c++) acc += (double)doi[c] * vj[c];
                    dP[j] = acc;
                    dsum += P[j] * acc;
                }
                double dqi[512];
                double *dqa = hd <= 512 ? dqi : NULL;
                VLM_ASSERT(dqa); /* head_dim is checked <= 512 by the caller */
                for (int64_t c = 0; c < hd; c++) dqa[c] = 0;
                for (int64_t j = 0; j <= i; j++) {
                    const double ds = P[j] * (dP[j] - dsum) * scale;
                    const float *kj = J->k + j * kvd + kvh * hd;
                    double *dkj = J->dk + j * kvd + kvh * hd, *dvj = J->dv + j * kvd + kvh * hd;
                    for (int64_t c = 0; c < hd; c++) {
                        dqa[c] += ds * kj[c];
                        dkj[c] += ds * qi[c];
                        dvj[c] += P[j] * doi[c];
                    }
                }
                float *dqo = J->dq + i * qd + h * hd;
                for (int64_t c = 0; c < hd; c++) dqo[c] = (float)dqa[c];
            }
    }
}

/* Sum of |g| over the rows t of g (n, d) with mask[t]. */
static double masked_abs_sum(const float *g, const uint8_t *mask, int64_t n, int64_t d) {
    double s = 0;
    for (int64_t t = 0; t < n; t++)
        if (mask[t])
            for (int64_t c = 0; c < d; c++) s += fabs((double)g[t * d + c]);
    return s;
}

/* One decoder layer's forward with the math and ops of runtime/qwen2.c (positions from 0, causal), recomputing its
 * internals from its input x (n, d) into the caller's buffers: a (scratch), q, k (post-RoPE), v, att, hmid, gate,
 * up. When h_out is non-NULL it also writes the layer output there (gate then holds the SwiGLU product instead). */
struct layer_bufs {
    float *a, *q, *k, *v, *att, *hmid, *gate, *up, *scores;
};

static void layer_forward(const struct vlm_model *m, int64_t l, const float *x, int64_t n, const struct layer_bufs *b,
                          float *h_out) {
    const struct vlm_text_config *tc = &m->config.text;
    const struct qwen2_layer_weights *W = &m->w.layers[l];
    const int64_t d = tc->hidden_size, f = tc->intermediate_size, nh = tc->n_heads, nkv = tc->n_kv_heads,
                  hd = tc->head_dim, qd = nh * hd, kvd = nkv * hd;
    cpu_rmsnorm_ref(b->a, x, W->attn_norm, n, d, tc->rms_norm_eps);
    conv_linear_f32(m, b->q, b->a, W->q_w, W->q_b, n, qd, d);
    conv_linear_f32(m, b->k, b->a, W->k_w, W->k_b, n, kvd, d);
    conv_linear_f32(m, b->v, b->a, W->v_w, W->v_b, n, kvd, d);
    cpu_rope_neox_ref(b->q, n, nh, hd, 0, tc->rope_theta);
    cpu_rope_neox_ref(b->k, n, nkv, hd, 0, tc->rope_theta);
    cpu_attention(b->att, b->q, b->k, b->v, n, n, nh, nkv, hd, kvd, 0, 1, b->scores);
    conv_linear_f32(m, b->hmid, b->att, W->o_w, NULL, n, d, qd);
    for (int64_t i = 0; i < n * d; i++) b->hmid[i] += x[i];
    cpu_rmsnorm_ref(b->a, b->hmid, W->mlp_norm, n, d, tc->rms_norm_eps);
    conv_linear_f32(m, b->gate, b->a, W->gate_w, NULL, n, f, d);
    conv_linear_f32(m, b->up, b->a, W->up_w, NULL, n, f, d);
    if (h_out) {
        cpu_swiglu_ref(b->gate, b->up, n * f);
        conv_linear_f32(m, h_out, b->gate, W->down_w, NULL, n, d, f);
        for (int64_t i = 0; i < n * d; i++) h_out[i] += b->hmid[i];
    }
}

/* Supervised rows handled per chunk at the head: bounds the logits buffer to this many vocabulary rows. */
#define HEAD_CHUNK LB_ROWS

enum vlm_status conv_grad_sample(struct vlm_model *m, const float *emb, const int64_t *ids, const uint8_t *vis,
                                 const uint8_t *ans, int64_t n, struct conv_grad_stats *out, float *g_attn,
                                 float *g_mlp, float *g_emb) {
    if (!m || !emb || !ids || !vis || !ans || !out) {
        vlm_log_error("gradient pass: NULL argument");
        return VLM_ERR_ARG;
    }
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t d = tc->hidden_size, f = tc->intermediate_size, L = tc->n_layers, nh = tc->n_heads,
                  nkv = tc->n_kv_heads, hd = tc->head_dim, qd = nh * hd, kvd = nkv * hd, V = m->w.n_vocab_rows;
    if (n < 2) {
        vlm_log_error("gradient pass: sample of %lld positions (need at least 2 for a next-token loss)",
                      (long long)n);
        return VLM_ERR_ARG;
    }
    int64_t n_vis = 0, n_ans = 0, n_tgt = 0;
    for (int64_t t = 0; t < n; t++) {
        n_vis += vis[t] != 0;
        n_ans += ans[t] != 0;
        if (t >= 1 && ans[t]) {
            n_tgt++;
            if (ids[t] < 0 || ids[t] >= V) {
                vlm_log_error("gradient pass: target id %lld at position %lld outside the vocabulary [0, %lld)",
                              (long long)ids[t], (long long)t, (long long)V);
                return VLM_ERR_ARG;
            }
        }
    }
    if (n_vis == 0 || n_tgt == 0) {
        vlm_log_error("gradient pass: sample has no %s position; mbq.md §4 rejects it (its mean |gradient| is "
                      "undefined)", n_vis == 0 ? "vision" : "supervised (answer)");
        return VLM_ERR_ARG;
    }
    bool have = m->w.final_norm && m->w.lm_head && m->w.layers;
    for (int64_t l = 0; have && l < L; l++) have = m->w.layers[l].attn_norm && m->w.layers[l].mlp_norm;
    if (!have || hd > 512 || hd % 2 || nkv <= 0 || nh % nkv) {
        vlm_log_error("gradient pass: %s: needs a float32 checkpoint with head_dim <= 512 (a .mbq model has no "
                      "float32 decoder weights)", m->dir ? m->dir : "model");
        return VLM_ERR_UNSUPPORTED;
    }

    enum vlm_status st = VLM_ERR_OOM;
    struct conv_grad_stats s = {.n_layers = L, .n_vis = n_vis, .n_ans = n_ans, .n_target = n_tgt};
    float *hs = NULL, *a = NULL, *q = NULL, *k = NULL, *v = NULL, *att = NULL, *hmid = NULL, *gate = NULL,
          *up = NULL, *dact = NULL, *gh = NULL, *dmid = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *logits = NULL,
          *scores = NULL, *xin = NULL, *dxin = NULL;
    double *dkd = NULL, *dvd = NULL, *ascr = NULL;
    int64_t nd, nf, all;
    if (__builtin_mul_overflow(n, d, &nd) || __builtin_mul_overflow(n, f, &nf) ||
        __builtin_mul_overflow(L + 1, nd, &all)) {
        vlm_log_error("gradient pass: sample of %lld positions: size overflow", (long long)n);
        return VLM_ERR_OOM;
    }
    if (!(s.vis_attn = alloc2(L, 1, sizeof(double), "gradient stats")) ||
        !(s.ans_attn = alloc2(L, 1, sizeof(double), "gradient stats")) ||
        !(s.vis_mlp = alloc2(L, 1, sizeof(double), "gradient stats")) ||
        !(s.ans_mlp = alloc2(L, 1, sizeof(double), "gradient stats")) ||
        !(hs = alloc2(L + 1, nd, sizeof(float), "layer-boundary residuals")) ||
        !(a = alloc2(n, d, sizeof(float), "gradient pass buffers")) ||
        !(q = alloc2(n, qd, sizeof(float), "gradient pass buffers")) ||
        !(k = alloc2(n, kvd, sizeof(float), "gradient pass buffers")) ||
        !(v = alloc2(n, kvd, sizeof(float), "gradient pass buffers")) ||
        !(att = alloc2(n, qd, sizeof(float), "gradient pass buffers")) ||
        !(hmid = alloc2(n, d, sizeof(float), "gradient pass buffers")) ||
        !(gate = alloc2(n, f, sizeof(float), "gradient pass buffers")) ||
        !(up = alloc2(n, f, sizeof(float), "gradient pass buffers")) ||
        !(dact = alloc2(n, f, sizeof(float), "gradient pass buffers")) ||
        !(xin = alloc2(HEAD_CHUNK, d, sizeof(float), "gradient pass buffers")) ||
        !(dxin = alloc2(HEAD_CHUNK, d, sizeof(float), "gradient pass buffers")) ||
        !(gh = alloc2(n, d, sizeof(float), "gradient pass buffers")) ||
        !(dmid = alloc2(n, d, sizeof(float), "gradient pass buffers")) ||
        !(dq = alloc2(n, qd, sizeof(float), "gradient pass buffers")) ||
        !(dk = alloc2(n, kvd, sizeof(float), "gradient pass buffers")) ||
        !(dv = alloc2(n, kvd, sizeof(float), "gradient pass buffers")) ||
        !(dkd = alloc2(n, kvd, sizeof(double), "gradient pass buffers")) ||
        !(dvd = alloc2(n, kvd, sizeof(double), "gradient pass buffers")) ||
        !(ascr = alloc2(nkv, 2 * n, sizeof(double), "attention backward scratch")) ||
        !(logits = alloc2(HEAD_CHUNK, V, sizeof(float), "logits chunk")) ||
        !(scores = alloc2(n, 1, sizeof(float), "attention scratch")))
        goto done;


    const struct layer_bufs lb = {a, q, k, v, att, hmid, gate, up, scores};
    /* forward, keeping the residual at each layer boundary */
    memcpy(hs, emb, (size_t)nd * sizeof(float));
    for (int64_t l = 0; l < L; l++) {
        if ((st = vlm_model_layer_load(m, l)) != VLM_OK) goto done;
        layer_forward(m, l, hs + l * nd, n, &lb, hs + (l + 1) * nd);
    }

    /* head: final RMSNorm, logits of the supervised rows in chunks, CE and its gradient (p − onehot) / n_tgt,
     * then back through the head (tied or not, W = lm_head (V, d)) and the final norm into gh = ∂L/∂h_out(L-1). */
    {
        const float *hL = hs + L * nd;
        cpu_rmsnorm_ref(a, hL, m->w.final_norm, n, d, tc->rms_norm_eps);
        memset(dmid, 0, (size_t)nd * sizeof(float)); /* ∂L/∂(normed final hidden), rows without a target stay 0 */
        double loss = 0;
        int64_t rows[HEAD_CHUNK], nr = 0;
        for (int64_t t = 0; t + 1 < n; t++) {
            if (ans[t + 1]) rows[nr++] = t;
            if (nr == 0 || (nr < HEAD_CHUNK && t + 2 < n)) continue;
            for (int64_t r = 0; r < nr; r++) memcpy(xin + r * d, a + rows[r] * d, (size_t)d * sizeof(float));
            conv_linear_f32(m, logits, xin, m->w.lm_head, NULL, nr, V, d);
            for (int64_t r = 0; r < nr; r++) {
                float *lr = logits + r * V;
                const int64_t tgt = ids[rows[r] + 1];
                double mx = -INFINITY, sum = 0;
                for (int64_t c = 0; c < V; c++) mx = lr[c] > mx ? lr[c] : mx;
                for (int64_t c = 0; c < V; c++) sum += exp((double)lr[c] - mx);
                loss += mx + log(sum) - (double)lr[tgt];
                for (int64_t c = 0; c < V; c++)
                    lr[c] = (float)((exp((double)lr[c] - mx) / sum - (c == tgt)) / (double)n_tgt);
            }
            lin_bwd(dxin, logits, m->w.lm_head, nr, V, d, 0);
            for (int64_t r = 0; r < nr; r++) memcpy(dmid + rows[r] * d, dxin + r * d, (size_t)d * sizeof(float));
            nr = 0;
        }
        s.loss = loss / (double)n_tgt;
        memset(gh, 0, (size_t)nd * sizeof(float));
        rms_bwd(gh, hL, m->w.final_norm, dmid, n, d, tc->rms_norm_eps);
    }

    for (int64_t l = L - 1; l >= 0; l--) {
        if ((st = vlm_model_layer_load(m, l)) != VLM_OK) goto done;
        const struct qwen2_layer_weights *W = &m->w.layers[l];
        const float *x = hs + l * nd;
        /* gh = G_mlp(l) = ∂L/∂h_out(l) */
        s.vis_mlp[l] = masked_abs_sum(gh, vis, n, d);
        s.ans_mlp[l] = masked_abs_sum(gh, ans, n, d);
        if (g_mlp) memcpy(g_mlp + l * nd, gh, (size_t)nd * sizeof(float));
        layer_forward(m, l, x, n, &lb, NULL);
        /* MLP: dact = gh · W_down; act = silu(g)·u, silu' = σ(g)(1 + g(1 − σ(g))); gate/up become their grads */
        lin_bwd_fast(m, dact, gh, W->down_w, n, d, f, 0);
        for (int64_t i = 0; i < nf; i++) {
            const double g = gate[i], u = up[i], sg = 1.0 / (1.0 + exp(-g));
            gate[i] = (float)(dact[i] * u * sg * (1.0 + g * (1.0 - sg)));
            up[i] = (float)(dact[i] * g * sg);
        }
        lin_bwd_fast(m, a, gate, W->gate_w, n, f, d, 0);
        lin_bwd_fast(m, a, up, W->up_w, n, f, d, 1);
        memcpy(dmid, gh, (size_t)nd * sizeof(float));
        rms_bwd(dmid, hmid, W->mlp_norm, a, n, d, tc->rms_norm_eps);
        /* dmid = G_attn(l) = ∂L/∂h_mid(l) */
        s.vis_attn[l] = masked_abs_sum(dmid, vis, n, d);
        s.ans_attn[l] = masked_abs_sum(dmid, ans, n, d);
        if (g_attn) memcpy(g_attn + l * nd, dmid, (size_t)nd * sizeof(float));
        /* attention: dO = dmid · W_o (into att), then the softmax attention backward, RoPE adjoint, q/k/v */
        lin_bwd_fast(m, att, dmid, W->o_w, n, d, qd, 0);
        memset(dkd, 0, (size_t)(n * kvd) * sizeof(double));
        memset(dvd, 0, (size_t)(n * kvd) * sizeof(double));
        struct attn_bwd_job aj = {dq, dkd, dvd, q, k, v, att, ascr, n, nh, nkv, hd};
        vlm_pool_for(vlm_pool_default(), nkv, 1, attn_bwd_range, &aj);
        for (int64_t i = 0; i < n * kvd; i++) dk[i] = (float)dkd[i], dv[i] = (float)dvd[i];
        rope_bwd(dq, n, nh, hd, tc->rope_theta);
        rope_bwd(dk, n, nkv, hd, tc->rope_theta);
        lin_bwd_fast(m, a, dq, W->q_w, n, qd, d, 0);
        lin_bwd_fast(m, a, dk, W->k_w, n, kvd, d, 1);
        lin_bwd_fast(m, a, dv, W->v_w, n, kvd, d, 1);
        memcpy(gh, dmid, (size_t)nd * sizeof(float));
        rms_bwd(gh, x, W->attn_norm, a, n, d, tc->rms_norm_eps);
    }
    if (g_emb) memcpy(g_emb, gh, (size_t)nd * sizeof(float));
    *out = s;
    st = VLM_OK;
done:
    if (st != VLM_OK) conv_grad_stats_free(&s);
    free(hs), free(a), free(q), free(k), free(v), free(att), free(hmid), free(gate), free(up), free(dact);
    free(gh), free(dmid), free(dq), free(dk), free(dv), free(logits), free(scores), free(xin), free(dxin);
    free(dkd), free(dvd), free(ascr);
    return st;
}
