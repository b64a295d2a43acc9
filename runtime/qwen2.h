/* qwen2.h — the Qwen2 decoder, float32 reference (shared/spec/llava-onevision.md §10): embedding lookup,
 * RMSNorm, RoPE (NeoX), grouped-query attention with q/k/v bias, SwiGLU MLP, tied or untied head, KV cache. */
#ifndef VLM_QWEN2_H
#define VLM_QWEN2_H

#include <stdint.h>

#include "model.h"

struct kv_cache {
    float *k;           /* (n_layers, max_seq, n_kv_heads * head_dim), k after RoPE */
    float *v;           /* (n_layers, max_seq, n_kv_heads * head_dim) */
    int64_t n_layers, max_seq, kv_dim;
    int64_t n_past;     /* tokens already cached; the next token sits at position n_past */
};

enum vlm_status kv_cache_init(struct kv_cache *kv, const struct vlm_text_config *tc, int64_t max_seq);
void kv_cache_free(struct kv_cache *kv);
/* Re-allocates kv for max_seq (> kv->max_seq) tokens, keeping the n_past cached ones. On failure kv is unchanged. */
enum vlm_status kv_cache_grow(struct kv_cache *kv, const struct vlm_text_config *tc, int64_t max_seq);

/* out (n, d) = embedding rows of ids. VLM_ERR_ARG when an id is outside the embedding table. */
enum vlm_status qwen2_embed(const struct vlm_model *m, const int64_t *ids, int64_t n, float *out);

/* Runs n new tokens (embeddings x (n, d)) at positions kv->n_past .. n_past+n-1, appends their k/v to the
 * cache and advances n_past. logits: (n, n_vocab_rows) when all_logits, else (1, n_vocab_rows) for the last
 * token. VLM_ERR_ARG when the cache would overflow, VLM_ERR_OOM on scratch allocation failure. */
enum vlm_status qwen2_forward(const struct vlm_model *m, struct kv_cache *kv, const float *x, int64_t n,
                              float *logits, int all_logits);

/* As qwen2_forward, and also, when last_hidden is non-NULL, copies the residual stream of the last token after
 * the last layer and before the final norm into last_hidden (d) — a stage boundary for tests. logits may be NULL
 * to skip the head. */
enum vlm_status qwen2_forward_ex(const struct vlm_model *m, struct kv_cache *kv, const float *x, int64_t n,
                                 float *logits, int all_logits, float *last_hidden);

#endif
