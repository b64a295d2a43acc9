/* model_mbq.c — a model from one .mbq file (runtime/mbq_file.h): the tensor table shared with the converter, and
 * vlm_model_load_mbq. Vision tower, projector, norms and biases are converted into the float32 arena (they run on
 * the float32 reference path); the decoder's linears, the embedding and lm_head are used in place from the
 * read-only mapping in their stored format, so a 3-bit model occupies ~3.25 bits per decoder weight in memory.
 *
 * Promise: every tensor the config implies is present with exactly its shape and an allowed format, no other
 * tensor is present, every scale/zero/float value passes vlm_qmat_check, before the model is returned. */
#include "model_mbq.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "mbq_file.h"
#include "safetensors.h"
#include "tokenizer/tokenizer.h"
#include "util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * the tensor table
 * ------------------------------------------------------------------------------------------------------------- */

int64_t mbq_slots_cap(const struct vlm_config *c) {
    return 3 + 16 * vlm_config_n_vit_layers(c) + 4 + 1 + 2 + 12 * c->text.n_layers + 1;
}

static void slot(struct mbq_slot *s, int64_t *n, enum mbq_slot_kind kind, const char *prefix, const char *suffix,
                 float **f, struct vlm_qmat *q, int n_dims, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    struct mbq_slot *e = &s[(*n)++];
    int len = snprintf(e->name, sizeof e->name, "%s%s", prefix, suffix);
    VLM_ASSERT(len > 0 && (size_t)len < sizeof e->name);
    e->kind = kind;
    e->layer = -1;
    e->n_dims = n_dims;
    e->shape[0] = d0, e->shape[1] = d1, e->shape[2] = d2, e->shape[3] = d3;
    e->f = f;
    e->q = q;
}

#define F1(pfx, sfx, dst, a) slot(s, &n, MBQ_SLOT_FLOAT, (pfx), (sfx), (dst), NULL, 1, (a), 0, 0, 0)
#define F2(pfx, sfx, dst, a, b) slot(s, &n, MBQ_SLOT_FLOAT, (pfx), (sfx), (dst), NULL, 2, (a), (b), 0, 0)
#define LIN(pfx, sfx, dst, q, a, b) slot(s, &n, MBQ_SLOT_LINEAR, (pfx), (sfx), (dst), (q), 2, (a), (b), 0, 0)

int64_t mbq_slots_fill(const struct vlm_config *c, struct vlm_weights *w, bool with_head, struct mbq_slot *s) {
    int64_t n = 0;
    const struct vlm_vision_config *v = &c->vision;
    const int64_t h = v->hidden_size, vf = v->intermediate_size, ps = v->patch_size;
    const char *vp = "vision_tower.vision_model.";
    slot(s, &n, MBQ_SLOT_FLOAT, vp, "embeddings.patch_embedding.weight", &w->patch_w, NULL, 4, h, v->n_channels, ps,
         ps);
    F1(vp, "embeddings.patch_embedding.bias", &w->patch_b, h);
    F2(vp, "embeddings.position_embedding.weight", &w->pos_emb, v->n_patches_side * v->n_patches_side, h);
    for (int64_t l = 0; l < w->n_vit_layers; l++) {
        struct vit_layer_weights *L = &w->vit[l];
        char p[96];
        snprintf(p, sizeof p, "%sencoder.layers.%lld.", vp, (long long)l);
        F1(p, "layer_norm1.weight", &L->ln1_w, h), F1(p, "layer_norm1.bias", &L->ln1_b, h);
        F2(p, "self_attn.q_proj.weight", &L->q_w, h, h), F1(p, "self_attn.q_proj.bias", &L->q_b, h);
        F2(p, "self_attn.k_proj.weight", &L->k_w, h, h), F1(p, "self_attn.k_proj.bias", &L->k_b, h);
        F2(p, "self_attn.v_proj.weight", &L->v_w, h, h), F1(p, "self_attn.v_proj.bias", &L->v_b, h);
        F2(p, "self_attn.out_proj.weight", &L->o_w, h, h), F1(p, "self_attn.out_proj.bias", &L->o_b, h);
        F1(p, "layer_norm2.weight", &L->ln2_w, h), F1(p, "layer_norm2.bias", &L->ln2_b, h);
        F2(p, "mlp.fc1.weight", &L->fc1_w, vf, h), F1(p, "mlp.fc1.bias", &L->fc1_b, vf);
        F2(p, "mlp.fc2.weight", &L->fc2_w, h, vf), F1(p, "mlp.fc2.bias", &L->fc2_b, h);
    }
    const struct vlm_text_config *t = &c->text;
    const int64_t d = t->hidden_size, f = t->intermediate_size, vin = h * c->n_feature_layers;
    const int64_t q = t->n_heads * t->head_dim, kv = t->n_kv_heads * t->head_dim;
    F2("multi_modal_projector.linear_1.", "weight", &w->proj1_w, d, vin);
    if (c->projector_bias) F1("multi_modal_projector.linear_1.", "bias", &w->proj1_b, d);
    F2("multi_modal_projector.linear_2.", "weight", &w->proj2_w, d, d);
    if (c->projector_bias) F1("multi_modal_projector.linear_2.", "bias", &w->proj2_b, d);
    F1("image_newline", "", &w->image_newline, d);
    const char *tp = "language_model.model.";
    slot(s, &n, MBQ_SLOT_EMBED, tp, "embed_tokens.weight", &w->embed, &w->embed_q, 2, w->n_vocab_rows, d, 0, 0);
    if (with_head)
        slot(s, &n, MBQ_SLOT_HEAD, "language_model.lm_head.weight", "", &w->lm_head, &w->lm_head_q, 2,
             w->n_vocab_rows, d, 0, 0);
    for (int64_t l = 0; l < t->n_layers; l++) {
        struct qwen2_layer_weights *L = &w->layers[l];
        char p[96];
        const int64_t first = n;
        snprintf(p, sizeof p, "%slayers.%lld.", tp, (long long)l);
        F1(p, "input_layernorm.weight", &L->attn_norm, d);
        LIN(p, "self_attn.q_proj.weight", &L->q_w, &L->wq, q, d), F1(p, "self_attn.q_proj.bias", &L->q_b, q);
        LIN(p, "self_attn.k_proj.weight", &L->k_w, &L->wk, kv, d), F1(p, "self_attn.k_proj.bias", &L->k_b, kv);
        LIN(p, "self_attn.v_proj.weight", &L->v_w, &L->wv, kv, d), F1(p, "self_attn.v_proj.bias", &L->v_b, kv);
        LIN(p, "self_attn.o_proj.weight", &L->o_w, &L->wo, d, q);
        F1(p, "post_attention_layernorm.weight", &L->mlp_norm, d);
        LIN(p, "mlp.gate_proj.weight", &L->gate_w, &L->wgate, f, d);
        LIN(p, "mlp.up_proj.weight", &L->up_w, &L->wup, f, d);
        LIN(p, "mlp.down_proj.weight", &L->down_w, &L->wdown, d, f);
        for (int64_t i = first; i < n; i++) s[i].layer = l;
    }
    F1(tp, "norm.weight", &w->final_norm, d);
    VLM_ASSERT(n <= mbq_slots_cap(c));
    return n;
}

/* ---------------------------------------------------------------------------------------------------------------
 * load
 * ------------------------------------------------------------------------------------------------------------- */

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int n) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static bool kind_allows(enum mbq_slot_kind k, int dtype) {
    switch (k) {
    case MBQ_SLOT_FLOAT: return dtype == VLM_QF_F32 || dtype == VLM_QF_F16 || dtype == VLM_QF_BF16;
    case MBQ_SLOT_LINEAR: return dtype >= 0 && dtype < VLM_QF_COUNT;
    case MBQ_SLOT_EMBED:
    case MBQ_SLOT_HEAD:
        return dtype == VLM_QF_F32 || dtype == VLM_QF_F16 || dtype == VLM_QF_BF16 || dtype == VLM_QF_Q8R;
    }
    return false;
}

static const char *kind_formats(enum mbq_slot_kind k) {
    return k == MBQ_SLOT_FLOAT    ? "f32, f16 or bf16"
           : k == MBQ_SLOT_LINEAR ? "a weight format"
                                  : "f32, f16, bf16 or q8r";
}

/* Float tensor t (f32/f16/bf16, element count n) into dst as float32. */
static void to_f32(const struct mbq_tensor *t, float *dst, size_t n) {
    const unsigned char *p = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == VLM_QF_F32) {
            memcpy(&dst[i], p + 4 * i, 4);
        } else {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            dst[i] = t->dtype == VLM_QF_F16 ? vlm_f16_to_f32(u) : vlm_bf16_to_f32(u);
        }
    }
}

static const char *header_string(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

enum vlm_status vlm_model_load_mbq(const char *path, struct vlm_model **out) {
    if (!path || !out) return VLM_ERR_ARG;
    enum vlm_status st;
    struct vlm_model *m = NULL;
    struct mbq_slot *slots = NULL;
    bool *used = NULL;
    char name[4200];

    m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(path))) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if ((st = mbq_file_open(path, &m->mbq)) != VLM_OK) goto fail;
    const struct mbq_file *mf = m->mbq;
    const cJSON *hdr = mbq_file_header(mf);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(hdr, "config");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(hdr, "preprocessor");
    if (!cJSON_IsObject(cfg) || !cJSON_IsObject(pre)) {
        vlm_log_error("%s: header has no '%s' object", path, !cJSON_IsObject(cfg) ? "config" : "preprocessor");
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    snprintf(name, sizeof name, "%s: header.config", path);
    if ((st = vlm_config_parse_json(cfg, name, &m->config)) != VLM_OK) goto fail;
    snprintf(name, sizeof name, "%s: header.preprocessor", path);
    if ((st = vlm_preproc_parse_json(pre, name, &m->preproc)) != VLM_OK) goto fail;
    if ((st = vlm_preproc_check(name, &m->config, &m->preproc)) != VLM_OK) goto fail;
    const cJSON *quant = cJSON_GetObjectItemCaseSensitive(hdr, "quant");
    const char *method = quant ? header_string(quant, "method") : NULL;
    m->quant_method = method ? method : "unknown"; /* points into the header, which lives as long as m->mbq */

    const struct vlm_config *c = &m->config;
    struct vlm_weights *w = &m->w;
    const int64_t d = c->text.hidden_size;
    w->n_vit_layers = vlm_config_n_vit_layers(c);
    w->vit = vlm_calloc_array(w->n_vit_layers ? (size_t)w->n_vit_layers : 1, sizeof *w->vit, "vision layer table");
    w->layers = vlm_calloc_array((size_t)c->text.n_layers, sizeof *w->layers, "decoder layer table");
    slots = vlm_calloc_array((size_t)mbq_slots_cap(c), sizeof *slots, "tensor table");
    used = vlm_calloc_array((size_t)mbq_file_count(mf) + 1, sizeof *used, "tensor flags");
    if (!w->vit || !w->layers || !slots || !used) {
        st = VLM_ERR_OOM;
        goto fail;
    }

    /* vocabulary rows come from the file's embedding (padding rows allowed, as in checkpoints) */
    const struct mbq_tensor *emb = mbq_file_find(mf, "language_model.model.embed_tokens.weight");
    if (!emb) {
        vlm_log_error("%s: no tensor 'language_model.model.embed_tokens.weight'", path);
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    if (emb->n_dims != 2 || emb->shape[1] != d || emb->shape[0] < c->text.vocab_size ||
        emb->shape[0] > c->text.vocab_size + (1 << 20)) {
        char found[160];
        fmt_shape(found, sizeof found, emb->shape, emb->n_dims);
        vlm_log_error("%s: tensor 'language_model.model.embed_tokens.weight' has shape %s, expected [rows, %lld] "
                      "with %lld <= rows <= %lld", path, found, (long long)d, (long long)c->text.vocab_size,
                      (long long)c->text.vocab_size + (1 << 20));
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    w->n_vocab_rows = emb->shape[0];
    bool has_head = mbq_file_find(mf, "language_model.lm_head.weight") != NULL;
    if (!has_head && !c->text.tie_word_embeddings) {
        vlm_log_error("%s: no tensor 'language_model.lm_head.weight' and text_config.tie_word_embeddings is false",
                      path);
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    int64_t n_slots = mbq_slots_fill(c, w, has_head, slots);

    /* pass 1: presence, format, shape, values; sum the float arena */
    size_t total = 0;
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        const struct mbq_tensor *t = mbq_file_find(mf, s->name);
        if (!t) {
            vlm_log_error("%s: no tensor '%s'", path, s->name);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        for (int64_t j = 0; j < mbq_file_count(mf); j++)
            if (mbq_file_at(mf, j) == t) used[j] = true;
        bool same = t->n_dims == s->n_dims;
        for (int k = 0; same && k < s->n_dims; k++) same = t->shape[k] == s->shape[k];
        if (!same) {
            char found[160], want[160];
            fmt_shape(found, sizeof found, t->shape, t->n_dims);
            fmt_shape(want, sizeof want, s->shape, s->n_dims);
            vlm_log_error("%s: tensor '%s' has shape %s, expected %s", path, s->name, found, want);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        if (!kind_allows(s->kind, t->dtype)) {
            vlm_log_error("%s: tensor '%s' is stored as %s; it must be %s", path, s->name, mbq_dtype_name(t->dtype),
                          kind_formats(s->kind));
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        if (s->kind == MBQ_SLOT_FLOAT) {
            int64_t ne;
            VLM_ASSERT(vlm_dims_product(s->shape, s->n_dims, &ne)); /* the file reader checked the product */
            if (!vlm_size_add(total, (size_t)ne, &total)) {
                vlm_log_error("%s: weight arena size overflows", path);
                st = VLM_ERR_OOM;
                goto fail;
            }
            continue;
        }
        const char *why = NULL;
        if (!vlm_qmat_view((enum vlm_qformat)t->dtype, s->shape[0], s->shape[1], t->data, t->size, s->q, &why) ||
            !vlm_qmat_check(s->q, &why)) {
            vlm_log_error("%s: tensor '%s' (%s): %s", path, s->name, mbq_dtype_name(t->dtype), why);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        if (t->dtype == VLM_QF_F32) *s->f = (float *)t->data; /* keep the float32 field usable (read-only) */
    }
    for (int64_t j = 0; j < mbq_file_count(mf); j++) {
        const struct mbq_tensor *t = mbq_file_at(mf, j);
        if (!used[j] && t->dtype != VLM_MBQ_DTYPE_U8) { /* u8 tensors carry files (the tokenizer) */
            vlm_log_error("%s: unexpected tensor '%s' (the config does not use it)", path, t->name);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
    }

    /* pass 2: the float tensors into one arena, finite values only */
    size_t bytes;
    if (!vlm_size_mul(total, sizeof(float), &bytes) || !(m->arena = malloc(bytes ? bytes : 1))) {
        vlm_log_error("%s: out of memory: the float32 arena needs %.2f GB and did not fit", path,
                      (double)total * 4.0 / 1e9);
        st = VLM_ERR_OOM;
        goto fail;
    }
    m->arena_floats = total;
    size_t off = 0;
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        if (s->kind != MBQ_SLOT_FLOAT) continue;
        const struct mbq_tensor *t = mbq_file_find(mf, s->name);
        int64_t ne;
        VLM_ASSERT(vlm_dims_product(s->shape, s->n_dims, &ne));
        float *dst = m->arena + off;
        to_f32(t, dst, (size_t)ne);
        for (int64_t k = 0; k < ne; k++) {
            if (!isfinite(dst[k])) {
                vlm_log_error("%s: tensor '%s' holds a non-finite value at element %lld", path, s->name, (long long)k);
                st = VLM_ERR_FORMAT;
                goto fail;
            }
        }
        *s->f = dst;
        off += (size_t)ne;
    }
    if (!has_head) {
        w->lm_head_q = w->embed_q;
        w->lm_head = w->embed;
    }
    if (!(m->qctx = calloc(1, sizeof *m->qctx))) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    m->qctx->pool = vlm_pool_default();
    m->lm_head_tied = !has_head;
    m->fast_f32 = true;
    m->file_dtype = "mbq";
    m->n_files = 1;
    m->scheme = VLM_NAMES_LEGACY;
    m->vision_prefix = "vision_tower.vision_model.";
    free(slots);
    free(used);
    vlm_model_log_summary(m);
    *out = m;
    return VLM_OK;
fail:
    free(slots);
    free(used);
    vlm_model_free(m);
    return st;
}

enum vlm_status vlm_model_load_tokenizer(const struct vlm_model *m, struct vlm_tokenizer **out) {
    if (!m->mbq) return tok_load(m->dir, out);
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "tokenizer");
    const char *kind = tk ? header_string(tk, "kind") : NULL, *tname = tk ? header_string(tk, "tensor") : NULL;
    const struct mbq_tensor *t = tname ? mbq_file_find(m->mbq, tname) : NULL;
    if (!t || !kind || (strcmp(kind, "bpe") != 0 && strcmp(kind, "spm") != 0)) {
        vlm_log_error("%s: the file carries no tokenizer (convert with a checkpoint that has tokenizer.json or "
                      "tokenizer.model, or pass --tokenizer)", m->dir);
        return VLM_ERR_IO;
    }
    char name[4200];
    snprintf(name, sizeof name, "%s: tensor '%s'", m->dir, tname);
    return tok_load_mem(strcmp(kind, "bpe") == 0 ? TOK_KIND_BPE : TOK_KIND_SPM, name, t->data, t->size, out);
}

bool vlm_model_has_tokenizer(const struct vlm_model *m) {
    if (!m->mbq) return false;
    const cJSON *tk = cJSON_GetObjectItemCaseSensitive(mbq_file_header(m->mbq), "tokenizer");
    return cJSON_IsObject(tk);
}

const char *vlm_model_kernels_str(const struct vlm_model *m) {
    static char buf[200];
    const struct vlm_qmat *w = &m->w.layers[0].wq;
    if (w->fmt == VLM_QF_F32) {
        snprintf(buf, sizeof buf, "linears f32, float32 reference kernels");
    } else if (m->kernels == VLM_KERNELS_REF) {
        snprintf(buf, sizeof buf, "linears %s, scalar reference kernels", vlm_qformat_name(w->fmt));
    } else {
        const struct vlm_pool *p = m->qctx ? m->qctx->pool : NULL;
        snprintf(buf, sizeof buf, "linears %s, head %s, %s kernels, %d thread%s", vlm_qformat_name(w->fmt),
                 vlm_qformat_name(m->w.lm_head_q.fmt), cpu_isa_name(cpu_isa_detect()),
                 p ? vlm_pool_size(p) : 1, p && vlm_pool_size(p) == 1 ? "" : "s");
    }
    return buf;
}
