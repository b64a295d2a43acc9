/* qwen2.c — the Qwen2 decoder, float32 reference (shared/spec/llava-onevision.md §10). The caller gives
 * embeddings (so image features can be scattered in first); positions are the running cache index. */
#include "qwen2.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "util.h"

/* y (M, w->n) = x (M, w->k) · Ŵᵀ + b in the weight's stored format: f32 as vlm_model_linear_f32 (the float32
 * reference for an HF checkpoint: the path the golden tests pin down), other formats through the fast kernels (or
 * their references when m->kernels says so). The only failure is the fast path's scratch growing (VLM_ERR_OOM). */
static enum vlm_status linear(const struct vlm_model *m, float *y, const float *x, const struct vlm_qmat *w,
                              const float *b, int64_t M) {
    if (w->fmt == VLM_QF_F32) return vlm_model_linear_f32(m, y, x, w->codes, b, M, w->n, w->k);
    if (m->kernels == VLM_KERNELS_REF) {
        cpu_qlinear_ref(y, x, w, b, M);
        return VLM_OK;
    }
    return cpu_qlinear(m->qctx, y, x, w, b, M);
}

enum vlm_status kv_cache_init(struct kv_cache *kv, const struct vlm_text_config *tc, int64_t max_seq) {
    if (max_seq <= 0 || max_seq > tc->max_position_embeddings) {
        vlm_log_error("kv cache: %lld tokens requested, the model allows 1 .. %lld", (long long)max_seq,
                      (long long)tc->max_position_embeddings);
        return VLM_ERR_ARG;
    }
    int64_t kv_dim = tc->n_kv_heads * tc->head_dim;
    size_t n;
    if (!vlm_size_mul((size_t)tc->n_layers, (size_t)max_seq, &n) || !vlm_size_mul(n, (size_t)kv_dim, &n)) {
        vlm_log_error("kv cache: size overflows");
        return VLM_ERR_OOM;
    }
    float *k = vlm_alloc_array(n, sizeof(float), "kv cache (k)");
    float *v = k ? vlm_alloc_array(n, sizeof(float), "kv cache (v)") : NULL;
    if (!v) {
        free(k);
        return VLM_ERR_OOM;
    }
    *kv = (struct kv_cache){.k = k, .v = v, .n_layers = tc->n_layers, .max_seq = max_seq, .kv_dim = kv_dim};
    return VLM_OK;
}

void kv_cache_free(struct kv_cache *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

enum vlm_status kv_cache_grow(struct kv_cache *kv, const struct vlm_text_config *tc, int64_t max_seq) {
    struct kv_cache nk;
    if (max_seq <= kv->max_seq) return VLM_OK;
    enum vlm_status st = kv_cache_init(&nk, tc, max_seq);
    if (st != VLM_OK) return st;
    /* (n_layers, max_seq, kv_dim): each layer's rows move to the new stride */
    const size_t row = (size_t)kv->kv_dim * sizeof(float);
    for (int64_t l = 0; l < kv->n_layers; l++) {
        memcpy(nk.k + l * max_seq * nk.kv_dim, kv->k + l * kv->max_seq * kv->kv_dim, (size_t)kv->n_past * row);
        memcpy(nk.v + l * max_seq * nk.kv_dim, kv->v + l * kv->max_seq * kv->kv_dim, (size_t)kv->n_past * row);
    }
    nk.n_past = kv->n_past;
    kv_cache_free(kv);
    *kv = nk;
    return VLM_OK;
}

enum vlm_status qwen2_embed(const struct vlm_model *m, const int64_t *ids, int64_t n, float *out) {
    const int64_t d = m->config.text.hidden_size;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->w.n_vocab_rows) {
            vlm_log_error("token id %lld at position %lld is outside the embedding table (0 .. %lld)",
                          (long long)ids[i], (long long)i, (long long)m->w.n_vocab_rows - 1);
            return VLM_ERR_ARG;
        }
        vlm_dequantize_row_ref(&m->w.embed_q, ids[i], out + i * d);
    }
    return VLM_OK;
}

enum vlm_status qwen2_forward(const struct vlm_model *m, struct kv_cache *kv, const float *x, int64_t n,
                              float *logits, int all_logits) {
    return qwen2_forward_ex(m, kv, x, n, logits, all_logits, NULL);
}

enum vlm_status qwen2_forward_ex(const struct vlm_model *m, struct kv_cache *kv, const float *x, int64_t n,
                                 float *logits, int all_logits, float *last_hidden) {
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t d = tc->hidden_size, f = tc->intermediate_size, hd = tc->head_dim;
    const int64_t qd = tc->n_heads * hd, kvd = tc->n_kv_heads * hd, pos0 = kv->n_past;
    if (m->stream) { /* the converter's streamed float model holds one layer at a time */
        vlm_log_error("decoder: %s was loaded with streamed decoder layers; the forward needs them all", m->dir);
        return VLM_ERR_UNSUPPORTED;
    }
    if (n <= 0 || n > kv->max_seq - kv->n_past) {
        vlm_log_error("decoder: %lld new tokens do not fit the context (%lld of %lld used)", (long long)n,
                      (long long)kv->n_past, (long long)kv->max_seq);
        return VLM_ERR_ARG;
    }
    /* scratch: h, a (n, d); q (n, qd); att (n, qd); gate, up (n, f); scores (n_past + n) */
    size_t per_tok = (size_t)(2 * d + 2 * qd + 2 * f), total;
    if (!vlm_size_mul(per_tok, (size_t)n, &total) || !vlm_size_add(total, (size_t)(pos0 + n), &total)) {
        vlm_log_error("decoder: scratch size overflows");
        return VLM_ERR_OOM;
    }
    float *buf = vlm_alloc_array(total, sizeof(float), "decoder scratch");
    if (!buf) return VLM_ERR_OOM;
    float *h = buf, *a = h + n * d, *q = a + n * d, *att = q + n * qd, *gate = att + n * qd, *up = gate + n * f;
    float *scores = up + n * f;
    memcpy(h, x, (size_t)(n * d) * sizeof(float));
    enum vlm_status st = VLM_OK;

    for (int64_t l = 0; l < tc->n_layers; l++) {
        const struct qwen2_layer_weights *L = &m->w.layers[l];
        float *kc = kv->k + (l * kv->max_seq) * kvd, *vc = kv->v + (l * kv->max_seq) * kvd;
        cpu_rmsnorm_ref(a, h, L->attn_norm, n, d, tc->rms_norm_eps);
        /* k and v go straight into the cache rows of the new positions */
        if ((st = linear(m, q, a, &L->wq, L->q_b, n)) || (st = linear(m, kc + pos0 * kvd, a, &L->wk, L->k_b, n)) ||
            (st = linear(m, vc + pos0 * kvd, a, &L->wv, L->v_b, n)))
            goto done;
        cpu_rope_neox_ref(q, n, tc->n_heads, hd, pos0, tc->rope_theta);
        cpu_rope_neox_ref(kc + pos0 * kvd, n, tc->n_kv_heads, hd, pos0, tc->rope_theta);
        vlm_model_attention(m, att, q, kc, vc, n, pos0 + n, tc->n_heads, tc->n_kv_heads, hd, kvd, pos0, 1, scores);
        if ((st = linear(m, a, att, &L->wo, NULL, n))) goto done;
        for (int64_t i = 0; i < n * d; i++) h[i] += a[i];
        cpu_rmsnorm_ref(a, h, L->mlp_norm, n, d, tc->rms_norm_eps);
        if ((st = linear(m, gate, a, &L->wgate, NULL, n)) || (st = linear(m, up, a, &L->wup, NULL, n))) goto done;
        cpu_swiglu_ref(gate, up, n * f);
        if ((st = linear(m, a, gate, &L->wdown, NULL, n))) goto done;
        for (int64_t i = 0; i < n * d; i++) h[i] += a[i];
    }
    kv->n_past += n;
    if (last_hidden) memcpy(last_hidden, h + (n - 1) * d, (size_t)d * sizeof(float));
    if (logits) {
        const int64_t first = all_logits ? 0 : n - 1, n_out = n - first;
        cpu_rmsnorm_ref(a, h + first * d, m->w.final_norm, n_out, d, tc->rms_norm_eps);
        st = linear(m, logits, a, &m->w.lm_head_q, NULL, n_out);
    }
done:
    free(buf);
    return st;
}
