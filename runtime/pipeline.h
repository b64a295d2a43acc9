/* pipeline.h — one request through the reference model: image -> packed features, prompt ids with the
 * <image> placeholder expanded, embeddings with the features scattered in, greedy generation. */
#ifndef VLM_PIPELINE_H
#define VLM_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "qwen2.h"
#include "vision/image.h"

/* Layout, preprocess, SigLIP, projector, pack. *out_feats (layout->n_image_tokens, d) is malloc'd. */
enum vlm_status vlm_image_encode(const struct vlm_model *m, const struct vlm_image *img, struct img_layout *layout,
                                 float **out_feats);

/* Replaces the single image-token id in ids (n) by n_image_tokens copies. VLM_ERR_ARG unless exactly
 * n_images (0 or 1) placeholders are present. *out (malloc'd) and *out_n receive the expanded ids. */
enum vlm_status vlm_prompt_expand(const int64_t *ids, int64_t n, int64_t image_token, int n_images,
                                  int64_t n_image_tokens, int64_t **out, int64_t *out_n);

/* out (n, d): embeddings of ids with the rows of feats (n_feat_rows, d), in order, written into the positions
 * whose id is image_token. VLM_ERR_ARG when the counts differ (spec §6.8: an input error, not a crash). */
enum vlm_status vlm_prompt_embed(const struct vlm_model *m, const int64_t *ids, int64_t n, const float *feats,
                                 int64_t n_feat_rows, float *out);

/* Called with each generated token id as soon as it is chosen; return non-zero to stop. */
typedef int (*vlm_token_cb)(int64_t id, void *user);

/* Wall-clock split of one generation. */
struct vlm_gen_stats {
    double prefill_ms;   /* the prompt forward pass, up to the first token's logits */
    double decode_ms;    /* every later step */
};

/* Prefills emb (n, d) into a fresh cache sized n + max_new and decodes greedily up to max_new tokens
 * (argmax, lowest id wins ties), stopping after a token in stop_ids. out_tokens (max_new) receives the
 * tokens, *n_out their count. prefill_logits, when non-NULL, receives (n, n_vocab_rows) logits of the prompt.
 * stats, when non-NULL, receives the timings. */
enum vlm_status vlm_generate_greedy(const struct vlm_model *m, const float *emb, int64_t n, int64_t max_new,
                                    const int64_t *stop_ids, int n_stop, int64_t *out_tokens, int64_t *n_out,
                                    float *prefill_logits, vlm_token_cb cb, void *user,
                                    struct vlm_gen_stats *stats);

/* A conversation's decoder state kept between requests: which token ids the KV cache holds, in order. A new prompt
 * that starts with some of them prefills only the rest (llama.cpp's prompt-cache reuse), so a chat's next question
 * costs its own tokens, not the whole chat's. With m->gpu the cache is the device's (one per model). Zero-initialise;
 * vlm_session_free releases it. */
struct vlm_session {
    struct kv_cache kv; /* the CPU path's cache, grown as the chat grows */
    int64_t *ids;       /* ids[0..n_ids): the tokens whose k/v are cached */
    int64_t n_ids, cap_ids;
};
void vlm_session_free(struct vlm_session *s);

/* Positions a generation on m can use, prompt and answer together: the model's max_position_embeddings on the CPU,
 * the device cache's size (vlm_gpu_create's max_seq) on the GPU. */
int64_t vlm_context_len(const struct vlm_model *m);
/* Whether a prompt of n tokens and an answer of up to max_new (at least one position) fit vlm_context_len(m). */
bool vlm_context_fits(const struct vlm_model *m, int64_t n, int64_t max_new);

/* As vlm_generate_greedy for the expanded prompt ids (n), whose image-token positions take feats' rows
 * (n_feat_rows, d) in order: the longest common prefix of ids with the tokens already cached is kept (at most n - 1:
 * the last prompt token is always recomputed) and only the rest is prefilled. *n_cached (may be NULL) receives the
 * count kept. The answer equals a fresh prefill's up to float rounding. An argument error leaves the session as it was;
 * a failure while running leaves it empty (the cache may be half written). */
enum vlm_status vlm_session_generate(const struct vlm_model *m, struct vlm_session *s, const int64_t *ids, int64_t n,
                                     const float *feats, int64_t n_feat_rows, int64_t max_new,
                                     const int64_t *stop_ids, int n_stop, int64_t *out_tokens, int64_t *n_out,
                                     vlm_token_cb cb, void *user, struct vlm_gen_stats *stats, int64_t *n_cached);

/* Index of the largest value (first on ties), as torch.argmax. */
int64_t vlm_argmax(const float *x, int64_t n);

#endif
