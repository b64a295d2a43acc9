/* qwen2.c — the Qwen2 decoder, float32 reference (shared/spec/llava-onevision.md §10). The caller gives
 * embeddings (so image features can be scattered in first); positions are the running cache index. */
#include "qwen2.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "util.h"

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

enum vlm_status qwen2_embed(const struct vlm_model *m, const int64_t *ids, int64_t n, float *out) {
    const int64_t d = m->config.text.hidden_size;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= m->w.n_vocab_rows) {
            vlm_log_error("token id %lld at position %lld is outside the embedding table (0 .. %lld)",
                          (long long)ids[i], (long long)i, (long long)m->w.n_vocab_rows - 1);
            return VLM_ERR_ARG;
        }
        memcpy(out + i * d, m->w.embed + ids[i] * d, (size_t)d * sizeof(float));
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

    for (int64_t l = 0; l < tc->n_layers; l++) {
        const struct qwen2_layer_weights *L = &m->w.layers[l];
        float *kc = kv->k + (l * kv->max_seq) * kvd, *vc = kv->v + (l * kv->max_seq) * kvd;
        cpu_rmsnorm_ref(a, h, L->attn_norm, n, d, tc->rms_norm_eps);
        cpu_linear_ref(q, a, L->q_w, L->q_b, n, qd, d);
        /* k and v go straight into the cache rows of the new positions */
        cpu_linear_ref(kc + pos0 * kvd, a, L->k_w, L->k_b, n, kvd, d);
        cpu_linear_ref(vc + pos0 * kvd, a, L->v_w, L->v_b, n, kvd, d);
        cpu_rope_neox_ref(q, n, tc->n_heads, hd, pos0, tc->rope_theta);
        cpu_rope_neox_ref(kc + pos0 * kvd, n, tc->n_kv_heads, hd, pos0, tc->rope_theta);
        cpu_attention_ref(att, q, kc, vc, n, pos0 + n, tc->n_heads, tc->n_kv_heads, hd, kvd, pos0, 1, scores);
        cpu_linear_ref(a, att, L->o_w, NULL, n, d, qd);
        for (int64_t i = 0; i < n * d; i++) h[i] += a[i];
        cpu_rmsnorm_ref(a, h, L->mlp_norm, n, d, tc->rms_norm_eps);
        cpu_linear_ref(gate, a, L->gate_w, NULL, n, f, d);
        cpu_linear_ref(up, a, L->up_w, NULL, n, f, d);
        cpu_swiglu_ref(gate, up, n * f);
        cpu_linear_ref(a, gate, L->down_w, NULL, n, d, f);
        for (int64_t i = 0; i < n * d; i++) h[i] += a[i];
    }
    kv->n_past += n;
    if (last_hidden) memcpy(last_hidden, h + (n - 1) * d, (size_t)d * sizeof(float));
    if (!logits) {
        free(buf);
        return VLM_OK;
    }

    const int64_t first = all_logits ? 0 : n - 1, n_out = n - first;
    cpu_rmsnorm_ref(a, h + first * d, m->w.final_norm, n_out, d, tc->rms_norm_eps);
    cpu_linear_ref(logits, a, m->w.lm_head, NULL, n_out, m->w.n_vocab_rows, d);
    free(buf);
    return VLM_OK;
}
