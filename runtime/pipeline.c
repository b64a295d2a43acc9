/* pipeline.c — see pipeline.h. */
#include "pipeline.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu.h"
#include "util.h"
#include "vision/siglip.h"

enum vlm_status vlm_image_encode(const struct vlm_model *m, const struct vlm_image *img, struct img_layout *layout,
                                 float **out_feats) {
    const struct vlm_config *c = &m->config;
    const int64_t np = c->vision.n_patches_side * c->vision.n_patches_side, d = c->text.hidden_size;
    const int64_t width = c->vision.hidden_size * c->n_feature_layers;
    float *pixels = NULL, *vis = NULL, *proj = NULL, *packed = NULL;
    struct img_layout lay;
    enum vlm_status st = img_compute_layout(c, &m->preproc, img->height, img->width, &lay);
    if (st != VLM_OK) return st;
    if ((st = img_preprocess(img, c, &m->preproc, &lay, &pixels)) != VLM_OK) goto fail;
    st = VLM_ERR_OOM;
    size_t rows;
    if (!vlm_size_mul((size_t)lay.n_crops, (size_t)np, &rows)) goto fail;
    vis = vlm_alloc_array(rows, (size_t)width * sizeof(float), "vision features");
    proj = vis ? vlm_alloc_array(rows, (size_t)d * sizeof(float), "projected features") : NULL;
    packed = proj ? vlm_alloc_array((size_t)lay.n_image_tokens, (size_t)d * sizeof(float), "packed features") : NULL;
    if (!packed) goto fail;
    if (m->gpu) {
        if ((st = vlm_gpu_encode_image(m->gpu, pixels, lay.n_crops, proj)) != VLM_OK) goto fail;
    } else {
        if ((st = vit_forward(m, pixels, lay.n_crops, vis)) != VLM_OK) goto fail;
        if ((st = vit_project(m, vis, (int64_t)rows, proj)) != VLM_OK) goto fail;
    }
    if ((st = img_pack_features(proj, &lay, c->vision.n_patches_side, d, m->w.image_newline, packed)) != VLM_OK)
        goto fail;
    free(pixels);
    free(vis);
    free(proj);
    *layout = lay;
    *out_feats = packed;
    return VLM_OK;
fail:
    free(pixels);
    free(vis);
    free(proj);
    free(packed);
    return st;
}

enum vlm_status vlm_prompt_expand(const int64_t *ids, int64_t n, int64_t image_token, int n_images,
                                  int64_t n_image_tokens, int64_t **out, int64_t *out_n) {
    int64_t n_marks = 0;
    for (int64_t i = 0; i < n; i++) n_marks += ids[i] == image_token;
    if (n_marks != n_images) {
        vlm_log_error("prompt has %lld image placeholders (id %lld) for %d image(s)", (long long)n_marks,
                      (long long)image_token, n_images);
        return VLM_ERR_ARG;
    }
    size_t total = (size_t)n;
    if (n_images && !vlm_size_add(total - 1, (size_t)n_image_tokens, &total)) {
        vlm_log_error("prompt: expanded length overflows");
        return VLM_ERR_ARG;
    }
    int64_t *r = vlm_alloc_array(total ? total : 1, sizeof(int64_t), "expanded prompt");
    if (!r) return VLM_ERR_OOM;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] == image_token)
            for (int64_t j = 0; j < n_image_tokens; j++) r[k++] = image_token;
        else r[k++] = ids[i];
    }
    VLM_ASSERT((size_t)k == total);
    *out = r;
    *out_n = k;
    return VLM_OK;
}

enum vlm_status vlm_prompt_embed(const struct vlm_model *m, const int64_t *ids, int64_t n, const float *feats,
                                 int64_t n_feat_rows, float *out) {
    const int64_t d = m->config.text.hidden_size, img = m->config.image_token_index;
    int64_t n_img = 0;
    for (int64_t i = 0; i < n; i++) n_img += ids[i] == img;
    if (n_img != n_feat_rows) {
        vlm_log_error("prompt has %lld image-token positions but the image gives %lld features", (long long)n_img,
                      (long long)n_feat_rows);
        return VLM_ERR_ARG;
    }
    enum vlm_status st = qwen2_embed(m, ids, n, out);
    if (st != VLM_OK) return st;
    int64_t r = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] == img) memcpy(out + i * d, feats + (r++) * d, (size_t)d * sizeof(float));
    return VLM_OK;
}

int64_t vlm_argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* vlm_generate_greedy's loop on m->gpu, after the prompt's first n_past tokens are already in the device cache
 * (emb holds the rest, n rows): the argmax taken on the device. */
static enum vlm_status generate_gpu(const struct vlm_model *m, const float *emb, int64_t n, int64_t max_new,
                                    const int64_t *stop_ids, int n_stop, int64_t *out_tokens, int64_t *n_out,
                                    float *prefill_logits, vlm_token_cb cb, void *user, struct vlm_gen_stats *stats) {
    const int64_t d = m->config.text.hidden_size;
    float *x = vlm_alloc_array((size_t)d, sizeof(float), "token embedding");
    if (!x) return VLM_ERR_OOM;
    int64_t n_gen = 0, id = 0;
    double t0 = vlm_time_ms(), t1;
    enum vlm_status st = vlm_gpu_forward(m->gpu, emb, n, prefill_logits, prefill_logits != NULL, &id);
    t1 = vlm_time_ms();
    while (st == VLM_OK && n_gen < max_new) {
        out_tokens[n_gen++] = id;
        int stop = cb ? cb(id, user) : 0;
        for (int s = 0; s < n_stop; s++) stop |= id == stop_ids[s];
        if (stop || n_gen == max_new) break;
        if ((st = qwen2_embed(m, &id, 1, x)) == VLM_OK) st = vlm_gpu_forward(m->gpu, x, 1, NULL, 0, &id);
    }
    if (st == VLM_OK) {
        *n_out = n_gen;
        if (stats) *stats = (struct vlm_gen_stats){.prefill_ms = t1 - t0, .decode_ms = vlm_time_ms() - t1};
    }
    free(x);
    return st;
}

/* The same loop on the CPU, continuing the cache kv (emb: the n prompt rows not in it yet). */
static enum vlm_status generate_cpu(const struct vlm_model *m, struct kv_cache *kv, const float *emb, int64_t n,
                                    int64_t max_new, const int64_t *stop_ids, int n_stop, int64_t *out_tokens,
                                    int64_t *n_out, float *prefill_logits, vlm_token_cb cb, void *user,
                                    struct vlm_gen_stats *stats) {
    const int64_t V = m->w.n_vocab_rows, d = m->config.text.hidden_size;
    enum vlm_status st = VLM_OK;
    float *logits = vlm_alloc_array((size_t)V, sizeof(float), "logits");
    float *x = vlm_alloc_array((size_t)d, sizeof(float), "token embedding");
    int64_t n_gen = 0;
    if (!logits || !x) {
        st = VLM_ERR_OOM;
        goto done;
    }
    double t0 = vlm_time_ms(), t1 = t0;
    if (prefill_logits) {
        if ((st = qwen2_forward(m, kv, emb, n, prefill_logits, 1)) != VLM_OK) goto done;
        memcpy(logits, prefill_logits + (n - 1) * V, (size_t)V * sizeof(float));
    } else if ((st = qwen2_forward(m, kv, emb, n, logits, 0)) != VLM_OK) {
        goto done;
    }
    t1 = vlm_time_ms();
    while (n_gen < max_new) {
        int64_t id = vlm_argmax(logits, V);
        out_tokens[n_gen++] = id;
        int stop = cb ? cb(id, user) : 0;
        for (int s = 0; s < n_stop; s++) stop |= id == stop_ids[s];
        if (stop || n_gen == max_new) break;
        if ((st = qwen2_embed(m, &id, 1, x)) != VLM_OK) goto done;
        if ((st = qwen2_forward(m, kv, x, 1, logits, 0)) != VLM_OK) goto done;
    }
    *n_out = n_gen;
    if (stats) *stats = (struct vlm_gen_stats){.prefill_ms = t1 - t0, .decode_ms = vlm_time_ms() - t1};
done:
    free(logits);
    free(x);
    return st;
}

enum vlm_status vlm_generate_greedy(const struct vlm_model *m, const float *emb, int64_t n, int64_t max_new,
                                    const int64_t *stop_ids, int n_stop, int64_t *out_tokens, int64_t *n_out,
                                    float *prefill_logits, vlm_token_cb cb, void *user,
                                    struct vlm_gen_stats *stats) {
    struct kv_cache kv;
    if (max_new < 0 || n <= 0) {
        vlm_log_error("generate: bad lengths (prompt %lld, max_new %lld)", (long long)n, (long long)max_new);
        return VLM_ERR_ARG;
    }
    if (m->gpu) {
        vlm_gpu_reset(m->gpu);
        return generate_gpu(m, emb, n, max_new, stop_ids, n_stop, out_tokens, n_out, prefill_logits, cb, user, stats);
    }
    enum vlm_status st = kv_cache_init(&kv, &m->config.text, n + (max_new > 0 ? max_new : 1));
    if (st != VLM_OK) return st;
    st = generate_cpu(m, &kv, emb, n, max_new, stop_ids, n_stop, out_tokens, n_out, prefill_logits, cb, user, stats);
    kv_cache_free(&kv);
    return st;
}

int64_t vlm_context_len(const struct vlm_model *m) {
    return m->gpu ? vlm_gpu_max_seq(m->gpu) : m->config.text.max_position_embeddings;
}

bool vlm_context_fits(const struct vlm_model *m, int64_t n, int64_t max_new) {
    const int64_t cap = vlm_context_len(m);
    return max_new >= 0 && n > 0 && max_new <= cap && n <= cap - (max_new > 0 ? max_new : 1);
}

void vlm_session_free(struct vlm_session *s) {
    if (!s) return;
    kv_cache_free(&s->kv);
    free(s->ids);
    memset(s, 0, sizeof *s);
}

/* Makes s->ids hold at least n ids. */
static enum vlm_status session_ids_reserve(struct vlm_session *s, int64_t n) {
    if (n <= s->cap_ids) return VLM_OK;
    int64_t cap = s->cap_ids > 0 ? s->cap_ids : 256;
    while (cap < n) cap = cap > INT64_MAX / 2 ? n : 2 * cap;
    int64_t *ids = vlm_alloc_array((size_t)cap, sizeof *ids, "session token ids");
    if (!ids) return VLM_ERR_OOM;
    if (s->n_ids > 0) memcpy(ids, s->ids, (size_t)s->n_ids * sizeof *ids);
    free(s->ids);
    s->ids = ids, s->cap_ids = cap;
    return VLM_OK;
}

enum vlm_status vlm_session_generate(const struct vlm_model *m, struct vlm_session *s, const int64_t *ids, int64_t n,
                                     const float *feats, int64_t n_feat_rows, int64_t max_new,
                                     const int64_t *stop_ids, int n_stop, int64_t *out_tokens, int64_t *n_out,
                                     vlm_token_cb cb, void *user, struct vlm_gen_stats *stats, int64_t *n_cached) {
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t d = tc->hidden_size, img = m->config.image_token_index;
    if (!vlm_context_fits(m, n, max_new)) {
        vlm_log_error("generate: prompt %lld + answer %lld tokens do not fit the %lld positions of the %s",
                      (long long)n, (long long)max_new, (long long)vlm_context_len(m),
                      m->gpu ? "GPU's KV cache (--ctx)" : "model");
        return VLM_ERR_ARG;
    }
    /* The device cache belongs to the model: anything else that ran on it since (vlm_generate_greedy resets it) makes
     * this session's record stale, and nothing is reused. */
    if (m->gpu && vlm_gpu_n_past(m->gpu) != s->n_ids) s->n_ids = 0;
    /* Reuse the longest common prefix, but always recompute the last prompt token: its logits pick the first answer
     * token, and the cache holds keys and values, not logits. */
    int64_t keep = 0;
    while (keep < s->n_ids && keep < n - 1 && s->ids[keep] == ids[keep]) keep++;
    int64_t skip_feats = 0;
    for (int64_t i = 0; i < keep; i++) skip_feats += ids[i] == img;
    if (skip_feats > n_feat_rows) {
        vlm_log_error("prompt has more image-token positions than the image's %lld features", (long long)n_feat_rows);
        return VLM_ERR_ARG;
    }
    s->n_ids = keep; /* from here on the cache beyond keep is being overwritten */
    enum vlm_status st = session_ids_reserve(s, n + max_new);
    if (st != VLM_OK) return st;
    float *emb = vlm_alloc_array((size_t)(n - keep), (size_t)d * sizeof(float), "prompt embeddings");
    if (!emb) return VLM_ERR_OOM;
    st = vlm_prompt_embed(m, ids + keep, n - keep, feats + skip_feats * d, n_feat_rows - skip_feats, emb);
    if (st != VLM_OK) goto done;
    if (m->gpu) {
        vlm_gpu_truncate(m->gpu, keep);
        st = generate_gpu(m, emb, n - keep, max_new, stop_ids, n_stop, out_tokens, n_out, NULL, cb, user, stats);
    } else {
        const int64_t need = n + (max_new > 0 ? max_new : 1);
        if (!s->kv.k) {
            st = kv_cache_init(&s->kv, tc, need); /* need fits: checked above */
        } else {
            s->kv.n_past = keep; /* rewound first, so a growth moves only the rows kept */
            if (need > s->kv.max_seq) { /* doubling keeps a long chat's copies linear in its length */
                int64_t want = s->kv.max_seq <= tc->max_position_embeddings / 2 ? 2 * s->kv.max_seq
                                                                                 : tc->max_position_embeddings;
                st = kv_cache_grow(&s->kv, tc, want > need ? want : need);
            }
        }
        if (st != VLM_OK) goto done;
        st = generate_cpu(m, &s->kv, emb, n - keep, max_new, stop_ids, n_stop, out_tokens, n_out, NULL, cb, user,
                          stats);
    }
    if (st != VLM_OK) goto done;
    /* The cache now holds the prompt and every answer token but the last (never fed back). */
    const int64_t n_fed = *n_out > 1 ? *n_out - 1 : 0;
    memcpy(s->ids + keep, ids + keep, (size_t)(n - keep) * sizeof *ids);
    memcpy(s->ids + n, out_tokens, (size_t)n_fed * sizeof *ids);
    s->n_ids = n + n_fed;
    if (n_cached) *n_cached = keep;
done:
    if (st != VLM_OK) s->n_ids = 0; /* a failed step may have written part of the cache: trust none of it */
    free(emb);
    return st;
}
