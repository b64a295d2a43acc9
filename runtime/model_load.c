/* model_load.c — vlm_model_load / vlm_model_free: an HF LLaVA-OneVision checkpoint directory into float32 views of
 * one arena. See the contract in model.h.
 *
 * Promise: before any byte is allocated for weights, every tensor the model needs has been found under one naming
 * scheme (spec §9) and checked for dtype and exact shape; the arena size is a checked sum; after conversion every
 * value is finite. The loader reads only the vision layers the selected features need.
 *
 * Sections: naming schemes; the load plan (resolve + check); load; summary and memory estimate. */
#include "model.h"
#include "gpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/cpu/pool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "mbq_file.h"
#include "safetensors.h"
#include "util.h"

#define NAME_CAP 320 /* longest tensor name we build: prefix (<= 64) + "encoder.layers.NNNN.self_attn.q_proj.weight" */

/* ---------------------------------------------------------------------------------------------------------------
 * naming schemes
 * ------------------------------------------------------------------------------------------------------------- */

struct scheme {
    enum vlm_name_scheme id;
    const char *text;          /* prefix of embed_tokens, layers.N, norm */
    const char *lm_head;       /* full name */
    const char *proj1, *proj2; /* prefixes of the projector's two linears */
    const char *newline;       /* full name */
    const char *vision[3];     /* candidate tower prefixes, first match wins; NULL-terminated */
};

static const struct scheme k_schemes[] = {
    {VLM_NAMES_LEGACY, "language_model.model.", "language_model.lm_head.weight", "multi_modal_projector.linear_1.",
     "multi_modal_projector.linear_2.", "image_newline", {"vision_tower.vision_model.", "vision_tower.", NULL}},
    {VLM_NAMES_MODULE, "model.language_model.", "lm_head.weight", "model.multi_modal_projector.linear_1.",
     "model.multi_modal_projector.linear_2.", "model.image_newline",
     {"model.vision_tower.vision_model.", "model.vision_tower.", NULL}},
    {VLM_NAMES_LMMS, "model.", "lm_head.weight", "model.mm_projector.0.", "model.mm_projector.2.",
     "model.image_newline", {"model.vision_tower.vision_tower.vision_model.", NULL, NULL}},
};

const char *vlm_name_scheme_str(enum vlm_name_scheme s) {
    switch (s) {
    case VLM_NAMES_LEGACY: return "legacy llava-hf";
    case VLM_NAMES_MODULE: return "transformers module tree";
    case VLM_NAMES_LMMS: return "lmms-lab original";
    }
    return "?";
}

/* ---------------------------------------------------------------------------------------------------------------
 * the load plan: one entry per tensor to convert
 * ------------------------------------------------------------------------------------------------------------- */

struct entry {
    char name[NAME_CAP];
    int n_dims;
    int64_t shape[4];
    float **dst;                 /* view to set */
    const struct st_tensor *t;   /* resolved */
    size_t offset;               /* in floats, into the arena (or, streamed, into the layer buffer) */
    bool layer_linear;           /* one of a decoder layer's 7 linear weights: streamable */
};

/* A streamed model's decoder linears: 7 plan entries per layer (q, k, v, o, gate, up, down, in plan order) that
 * stay in the mapped checkpoint, and the one buffer a layer is widened into. */
#define LAYER_LINEARS 7
struct vlm_layer_stream {
    struct st_checkpoint *ck;
    struct entry *e;             /* (n_layers * LAYER_LINEARS); offsets are into buf, equal for every layer */
    int64_t n_layers;
    float *buf;
    size_t buf_floats;
    int64_t cur;                 /* the layer in buf, or -1 */
};

struct plan {
    struct entry *e;
    size_t n, cap;
    const struct st_checkpoint *ck;
    enum vlm_name_scheme scheme;
};

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Adds tensor prefix+suffix with the expected shape; checks presence, dtype and shape at once. */
static enum vlm_status plan_add(struct plan *p, const char *prefix, const char *suffix, float **dst, int n_dims,
                                int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    VLM_ASSERT(p->n < p->cap);
    struct entry *e = &p->e[p->n];
    int len = snprintf(e->name, sizeof e->name, "%s%s", prefix, suffix);
    VLM_ASSERT(len > 0 && (size_t)len < sizeof e->name);
    e->n_dims = n_dims;
    e->shape[0] = d0, e->shape[1] = d1, e->shape[2] = d2, e->shape[3] = d3;
    e->dst = dst;
    e->t = st_checkpoint_find(p->ck, e->name);
    if (!e->t) {
        vlm_log_error("%s: checkpoint has no tensor '%s' (naming scheme: %s)", st_checkpoint_source_path(p->ck),
                      e->name, vlm_name_scheme_str(p->scheme));
        return VLM_ERR_FORMAT;
    }
    const char *file = st_checkpoint_file_path(p->ck, e->t);
    if (e->t->dtype == VLM_DTYPE_OTHER) {
        vlm_log_error("%s: tensor '%s' has dtype %s; only F32, F16 and BF16 are supported", file, e->name,
                      e->t->dtype_name);
        return VLM_ERR_UNSUPPORTED;
    }
    bool same = e->t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = e->t->shape[i] == e->shape[i];
    if (!same) {
        char found[160], want[160];
        fmt_shape(found, sizeof found, e->t->shape, e->t->n_dims);
        fmt_shape(want, sizeof want, e->shape, n_dims);
        vlm_log_error("%s: tensor '%s' has shape %s, expected %s", file, e->name, found, want);
        return VLM_ERR_FORMAT;
    }
    p->n++;
    return VLM_OK;
}

#define ADD1(pfx, sfx, dst, a) plan_add(p, (pfx), (sfx), (dst), 1, (a), 0, 0, 0)
#define ADD2(pfx, sfx, dst, a, b) plan_add(p, (pfx), (sfx), (dst), 2, (a), (b), 0, 0)
/* a decoder layer's linear weight: as ADD2, marked streamable */
static enum vlm_status plan_add_linear(struct plan *p, const char *prefix, const char *suffix, float **dst,
                                       int64_t d0, int64_t d1) {
    enum vlm_status st = plan_add(p, prefix, suffix, dst, 2, d0, d1, 0, 0);
    if (st == VLM_OK) p->e[p->n - 1].layer_linear = true;
    return st;
}
#define ADDL(pfx, sfx, dst, a, b) plan_add_linear(p, (pfx), (sfx), (dst), (a), (b))

static enum vlm_status plan_vision(struct plan *p, const char *vp, const struct vlm_config *c, struct vlm_weights *w) {
    const struct vlm_vision_config *v = &c->vision;
    const int64_t h = v->hidden_size, f = v->intermediate_size, ps = v->patch_size;
    enum vlm_status st;
    /* patch_w: the conv kernel [hidden, 3, p, p] is used as (hidden, 3*p*p) row-major: a reshape, no transpose */
    if ((st = plan_add(p, vp, "embeddings.patch_embedding.weight", &w->patch_w, 4, h, v->n_channels, ps, ps)) ||
        (st = ADD1(vp, "embeddings.patch_embedding.bias", &w->patch_b, h)) ||
        (st = ADD2(vp, "embeddings.position_embedding.weight", &w->pos_emb, v->n_patches_side * v->n_patches_side, h)))
        return st;
    for (int64_t l = 0; l < w->n_vit_layers; l++) {
        struct vit_layer_weights *L = &w->vit[l];
        char pfx[NAME_CAP];
        snprintf(pfx, sizeof pfx, "%sencoder.layers.%lld.", vp, (long long)l);
        if ((st = ADD1(pfx, "layer_norm1.weight", &L->ln1_w, h)) ||
            (st = ADD1(pfx, "layer_norm1.bias", &L->ln1_b, h)) ||
            (st = ADD2(pfx, "self_attn.q_proj.weight", &L->q_w, h, h)) ||
            (st = ADD1(pfx, "self_attn.q_proj.bias", &L->q_b, h)) ||
            (st = ADD2(pfx, "self_attn.k_proj.weight", &L->k_w, h, h)) ||
            (st = ADD1(pfx, "self_attn.k_proj.bias", &L->k_b, h)) ||
            (st = ADD2(pfx, "self_attn.v_proj.weight", &L->v_w, h, h)) ||
            (st = ADD1(pfx, "self_attn.v_proj.bias", &L->v_b, h)) ||
            (st = ADD2(pfx, "self_attn.out_proj.weight", &L->o_w, h, h)) ||
            (st = ADD1(pfx, "self_attn.out_proj.bias", &L->o_b, h)) ||
            (st = ADD1(pfx, "layer_norm2.weight", &L->ln2_w, h)) ||
            (st = ADD1(pfx, "layer_norm2.bias", &L->ln2_b, h)) ||
            (st = ADD2(pfx, "mlp.fc1.weight", &L->fc1_w, f, h)) || (st = ADD1(pfx, "mlp.fc1.bias", &L->fc1_b, f)) ||
            (st = ADD2(pfx, "mlp.fc2.weight", &L->fc2_w, h, f)) || (st = ADD1(pfx, "mlp.fc2.bias", &L->fc2_b, h)))
            return st;
    }
    return VLM_OK;
}

static enum vlm_status plan_text(struct plan *p, const struct scheme *s, const struct vlm_config *c,
                                 struct vlm_weights *w) {
    const struct vlm_text_config *t = &c->text;
    const int64_t d = t->hidden_size, f = t->intermediate_size;
    const int64_t q = t->n_heads * t->head_dim, kv = t->n_kv_heads * t->head_dim;
    enum vlm_status st;
    for (int64_t l = 0; l < t->n_layers; l++) {
        struct qwen2_layer_weights *L = &w->layers[l];
        char pfx[NAME_CAP];
        snprintf(pfx, sizeof pfx, "%slayers.%lld.", s->text, (long long)l);
        if ((st = ADD1(pfx, "input_layernorm.weight", &L->attn_norm, d)) ||
            (st = ADDL(pfx, "self_attn.q_proj.weight", &L->q_w, q, d)) ||
            (st = ADD1(pfx, "self_attn.q_proj.bias", &L->q_b, q)) ||
            (st = ADDL(pfx, "self_attn.k_proj.weight", &L->k_w, kv, d)) ||
            (st = ADD1(pfx, "self_attn.k_proj.bias", &L->k_b, kv)) ||
            (st = ADDL(pfx, "self_attn.v_proj.weight", &L->v_w, kv, d)) ||
            (st = ADD1(pfx, "self_attn.v_proj.bias", &L->v_b, kv)) ||
            (st = ADDL(pfx, "self_attn.o_proj.weight", &L->o_w, d, q)) ||
            (st = ADD1(pfx, "post_attention_layernorm.weight", &L->mlp_norm, d)) ||
            (st = ADDL(pfx, "mlp.gate_proj.weight", &L->gate_w, f, d)) ||
            (st = ADDL(pfx, "mlp.up_proj.weight", &L->up_w, f, d)) ||
            (st = ADDL(pfx, "mlp.down_proj.weight", &L->down_w, d, f)))
            return st;
    }
    return ADD1(s->text, "norm.weight", &w->final_norm, d);
}

/* embed_tokens and lm_head: rows may exceed vocab_size (checkpoints pad to a multiple of 64), lm_head rows must
 * equal embed rows; the tying rule of spec §9. Sets *tied. */
static enum vlm_status plan_vocab(struct plan *p, const struct scheme *s, const struct vlm_config *c,
                                  struct vlm_weights *w, bool *tied) {
    const int64_t d = c->text.hidden_size;
    char name[NAME_CAP];
    snprintf(name, sizeof name, "%sembed_tokens.weight", s->text);
    const struct st_tensor *e = st_checkpoint_find(p->ck, name);
    VLM_ASSERT(e); /* the scheme was chosen by this very name */
    /* rows: at least the vocabulary, at most the vocab cap plus padding */
    int64_t rows = e->n_dims == 2 ? e->shape[0] : -1;
    if (e->n_dims != 2 || e->shape[1] != d || rows < c->text.vocab_size || rows > c->text.vocab_size + (1 << 20)) {
        char found[160];
        fmt_shape(found, sizeof found, e->shape, e->n_dims);
        vlm_log_error("%s: tensor '%s' has shape %s, expected [rows, %lld] with %lld <= rows <= %lld",
                      st_checkpoint_file_path(p->ck, e), name, found, (long long)d, (long long)c->text.vocab_size,
                      (long long)c->text.vocab_size + (1 << 20));
        return VLM_ERR_FORMAT;
    }
    enum vlm_status st = ADD2(s->text, "embed_tokens.weight", &w->embed, rows, d);
    if (st) return st;
    w->n_vocab_rows = rows;
    if (st_checkpoint_find(p->ck, s->lm_head)) {
        *tied = false;
        return ADD2(s->lm_head, "", &w->lm_head, rows, d);
    }
    if (!c->text.tie_word_embeddings) {
        vlm_log_error("%s: checkpoint has no tensor '%s' and text_config.tie_word_embeddings is false",
                      st_checkpoint_source_path(p->ck), s->lm_head);
        return VLM_ERR_FORMAT;
    }
    *tied = true;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * load
 * ------------------------------------------------------------------------------------------------------------- */

enum vlm_status vlm_model_use_gpu(struct vlm_model *m, int device, int64_t max_seq) {
    struct vlm_gpu *g = NULL;
    enum vlm_status st = vlm_gpu_create(m, device, max_seq, &g);
    if (st != VLM_OK) return st;
    vlm_gpu_free(m->gpu);
    m->gpu = g;
    return VLM_OK;
}

void vlm_model_free(struct vlm_model *m) {
    if (!m) return;
    vlm_gpu_free(m->gpu);
    if (m->qctx) {
        cpu_qctx_free(m->qctx);
        free(m->qctx);
    }
    mbq_file_close(m->mbq);
    if (m->stream) {
        st_checkpoint_close(m->stream->ck);
        free(m->stream->e);
        free(m->stream->buf);
        free(m->stream);
    }
    free(m->arena);
    free(m->w.vit);
    free(m->w.layers);
    free(m->dir);
    free(m);
}

/* The processor must produce what the tower eats: crop side = image_size, same canvases. */
enum vlm_status vlm_preproc_check(const char *path, const struct vlm_config *c, const struct vlm_preproc_config *pp) {
    if (pp->size_h != c->vision.image_size || pp->size_w != c->vision.image_size) {
        vlm_log_error("%s: key 'size' is %lld x %lld, but vision_config.image_size is %lld", path,
                      (long long)pp->size_h, (long long)pp->size_w, (long long)c->vision.image_size);
        return VLM_ERR_FORMAT;
    }
    if (pp->n_pinpoints == 0) return VLM_OK;
    bool same = pp->n_pinpoints == c->n_pinpoints;
    for (int64_t i = 0; same && i < pp->n_pinpoints; i++)
        same = pp->pinpoints[i][0] == c->pinpoints[i][0] && pp->pinpoints[i][1] == c->pinpoints[i][1];
    if (!same) {
        vlm_log_error("%s: key 'image_grid_pinpoints' differs from config.json's", path);
        return VLM_ERR_FORMAT;
    }
    return VLM_OK;
}

static struct vlm_qmat f32_view(const float *p, int64_t n, int64_t k) {
    return (struct vlm_qmat){.fmt = VLM_QF_F32, .n = n, .k = k, .codes = p};
}

/* The f32 views of layer l's linears (views of NULL arrays when the layer is not widened). */
static void set_layer_views(struct vlm_model *m, int64_t l) {
    const struct vlm_text_config *t = &m->config.text;
    const int64_t d = t->hidden_size, f = t->intermediate_size;
    const int64_t q = t->n_heads * t->head_dim, kv = t->n_kv_heads * t->head_dim;
    struct qwen2_layer_weights *L = &m->w.layers[l];
    L->wq = f32_view(L->q_w, q, d);
    L->wk = f32_view(L->k_w, kv, d);
    L->wv = f32_view(L->v_w, kv, d);
    L->wo = f32_view(L->o_w, d, q);
    L->wgate = f32_view(L->gate_w, f, d);
    L->wup = f32_view(L->up_w, f, d);
    L->wdown = f32_view(L->down_w, d, f);
}

void vlm_model_set_f32_views(struct vlm_model *m) {
    const int64_t d = m->config.text.hidden_size;
    for (int64_t l = 0; l < m->config.text.n_layers; l++) set_layer_views(m, l);
    m->w.embed_q = f32_view(m->w.embed, m->w.n_vocab_rows, d);
    m->w.lm_head_q = f32_view(m->w.lm_head, m->w.n_vocab_rows, d);
}

/* Widens one plan entry into dst and rejects non-finite values (one line naming the file and tensor). */
static enum vlm_status widen_entry(const struct st_checkpoint *ck, const struct entry *e, float *dst) {
    st_tensor_to_f32(e->t, dst);
    for (int64_t k = 0; k < e->t->n_elements; k++) {
        if (!isfinite(dst[k])) {
            vlm_log_error("%s: tensor '%s' holds a non-finite value (%g) at element %lld",
                          st_checkpoint_file_path(ck, e->t), e->name, (double)dst[k], (long long)k);
            return VLM_ERR_FORMAT;
        }
    }
    return VLM_OK;
}

enum vlm_status vlm_model_layer_load(struct vlm_model *m, int64_t l) {
    if (!m || l < 0 || l >= m->config.text.n_layers) return VLM_ERR_ARG;
    struct vlm_layer_stream *s = m->stream;
    if (!s) {
        const struct qwen2_layer_weights *L = &m->w.layers[l];
        if (L->q_w && L->k_w && L->v_w && L->o_w && L->gate_w && L->up_w && L->down_w) return VLM_OK;
        vlm_log_error("%s: decoder layer %lld has no float32 weights (a .mbq model holds them quantized; the "
                      "converter needs the HF checkpoint)", m->dir ? m->dir : "model", (long long)l);
        return VLM_ERR_UNSUPPORTED;
    }
    if (s->cur == l) return VLM_OK;
    vlm_model_layer_drop(m);
    for (int j = 0; j < LAYER_LINEARS; j++) {
        const struct entry *e = &s->e[l * LAYER_LINEARS + j];
        enum vlm_status st = widen_entry(s->ck, e, s->buf + e->offset);
        st_tensor_evict(e->t);
        if (st != VLM_OK) {
            for (int i = 0; i < j; i++) *s->e[l * LAYER_LINEARS + i].dst = NULL;
            return st;
        }
        *e->dst = s->buf + e->offset;
    }
    set_layer_views(m, l);
    s->cur = l;
    return VLM_OK;
}

void vlm_model_layer_drop(struct vlm_model *m) {
    struct vlm_layer_stream *s = m ? m->stream : NULL;
    if (!s || s->cur < 0) return;
    for (int j = 0; j < LAYER_LINEARS; j++) *s->e[s->cur * LAYER_LINEARS + j].dst = NULL;
    set_layer_views(m, s->cur);
    s->cur = -1;
}

size_t vlm_model_resident_bytes(const struct vlm_model *m) {
    return (m->arena_floats + (m->stream ? m->stream->buf_floats : 0)) * sizeof(float);
}

bool vlm_model_fast(const struct vlm_model *m) { return m->fast_f32 && m->kernels == VLM_KERNELS_FAST; }

enum vlm_status vlm_model_linear_f32(const struct vlm_model *m, float *y, const float *x, const float *w,
                                     const float *b, int64_t M, int64_t N, int64_t K) {
    if (!vlm_model_fast(m)) {
        cpu_linear_ref(y, x, w, b, M, N, K);
        return VLM_OK;
    }
    const struct vlm_qmat v = f32_view(w, N, K);
    return cpu_qlinear(m->qctx, y, x, &v, b, M);
}

void vlm_model_attention(const struct vlm_model *m, float *out, const float *q, const float *k, const float *v,
                         int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd,
                         int64_t kv_stride, int64_t q_pos0, int causal, float *scratch) {
    if (vlm_model_fast(m))
        cpu_attention(out, q, k, v, n_q, n_kv_tok, n_heads, n_kv_heads, hd, kv_stride, q_pos0, causal, scratch);
    else
        cpu_attention_ref(out, q, k, v, n_q, n_kv_tok, n_heads, n_kv_heads, hd, kv_stride, q_pos0, causal, scratch);
}

/* A path naming a regular file is a .mbq; anything else is tried as a checkpoint directory. */
static bool is_regular_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

enum vlm_status vlm_model_load(const char *dir, struct vlm_model **out) {
    return vlm_model_load_opts(dir, NULL, out);
}

enum vlm_status vlm_model_load_opts(const char *dir, const struct vlm_load_opts *opts, struct vlm_model **out) {
    if (!dir || !out) return VLM_ERR_ARG;
    if (is_regular_file(dir)) return vlm_model_load_mbq(dir, out);
    const bool stream = opts && opts->stream_decoder_linears;
    enum vlm_status st;
    struct vlm_model *m = NULL;
    struct st_checkpoint *ck = NULL;
    struct plan plan = {0};
    char path[4096], pp_path[4096];

    if (!vlm_path_join(path, sizeof path, dir, "config.json") ||
        !vlm_path_join(pp_path, sizeof pp_path, dir, "preprocessor_config.json")) {
        vlm_log_error("%s: directory path is too long", dir);
        return VLM_ERR_ARG;
    }
    m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        vlm_log_error("%s: out of memory", dir);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if ((st = vlm_config_parse(path, &m->config)) != VLM_OK) goto fail;
    if ((st = vlm_preproc_parse(pp_path, &m->preproc)) != VLM_OK) goto fail;
    if ((st = vlm_preproc_check(pp_path, &m->config, &m->preproc)) != VLM_OK) goto fail;
    if ((st = st_checkpoint_open(dir, &ck)) != VLM_OK) goto fail;

    /* scheme: where embed_tokens lives */
    const struct scheme *s = NULL;
    char name[NAME_CAP];
    for (size_t i = 0; i < sizeof k_schemes / sizeof k_schemes[0] && !s; i++) {
        snprintf(name, sizeof name, "%sembed_tokens.weight", k_schemes[i].text);
        if (st_checkpoint_find(ck, name)) s = &k_schemes[i];
    }
    if (!s) {
        vlm_log_error("%s: checkpoint has no embed_tokens tensor under any known naming scheme (tried "
                      "'language_model.model.embed_tokens.weight', 'model.language_model.embed_tokens.weight', "
                      "'model.embed_tokens.weight')", st_checkpoint_source_path(ck));
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    const char *vp = NULL;
    for (int i = 0; s->vision[i] && !vp; i++) {
        snprintf(name, sizeof name, "%sembeddings.patch_embedding.weight", s->vision[i]);
        if (st_checkpoint_find(ck, name)) vp = s->vision[i];
    }
    if (!vp) vp = s->vision[0]; /* plan_add reports the missing tensor under the scheme's first prefix */

    const struct vlm_config *c = &m->config;
    struct vlm_weights *w = &m->w;
    w->n_vit_layers = vlm_config_n_vit_layers(c);
    w->vit = vlm_calloc_array(w->n_vit_layers ? (size_t)w->n_vit_layers : 1, sizeof *w->vit, "vision layer table");
    w->layers = vlm_calloc_array((size_t)c->text.n_layers, sizeof *w->layers, "decoder layer table");
    /* entries: 3 + 16 per vision layer, 4 projector, 1 newline, 12 per decoder layer + norm, embed, lm_head */
    plan.cap = 3 + 16 * (size_t)w->n_vit_layers + 4 + 1 + 12 * (size_t)c->text.n_layers + 3;
    plan.e = vlm_calloc_array(plan.cap, sizeof *plan.e, "load plan");
    if (!w->vit || !w->layers || !plan.e) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    plan.ck = ck;
    plan.scheme = s->id;
    struct plan *p = &plan;
    const int64_t d = c->text.hidden_size, vin = c->vision.hidden_size * c->n_feature_layers;
    bool tied = false;
    if ((st = plan_vision(p, vp, c, w)) != VLM_OK) goto fail;
    if ((st = ADD2(s->proj1, "weight", &w->proj1_w, d, vin)) || (st = ADD2(s->proj2, "weight", &w->proj2_w, d, d)))
        goto fail;
    if (c->projector_bias &&
        ((st = ADD1(s->proj1, "bias", &w->proj1_b, d)) || (st = ADD1(s->proj2, "bias", &w->proj2_b, d))))
        goto fail;
    if ((st = ADD1(s->newline, "", &w->image_newline, d)) != VLM_OK) goto fail;
    if ((st = plan_vocab(p, s, c, w, &tied)) != VLM_OK) goto fail;
    if ((st = plan_text(p, s, c, w)) != VLM_OK) goto fail;

    /* one arena: checked sum of every entry's element count (streamed linears: the first layer's sizes make the
     * layer buffer, whose offsets every layer shares) */
    size_t total = 0, layer_total = 0, lin_off[LAYER_LINEARS] = {0};
    int64_t n_lin = 0;
    const char *dtype = NULL;
    for (size_t i = 0; i < plan.n; i++) {
        struct entry *e = &plan.e[i];
        const bool deferred = stream && e->layer_linear;
        size_t *sum = deferred ? &layer_total : &total;
        if (deferred && n_lin >= LAYER_LINEARS) {
            e->offset = lin_off[n_lin++ % LAYER_LINEARS]; /* same shapes in every layer (plan_text) */
        } else {
            if (deferred) lin_off[n_lin++] = *sum;
            e->offset = *sum;
            if (!vlm_size_add(*sum, (size_t)e->t->n_elements, sum)) {
                vlm_log_error("%s: weight arena size overflows", dir);
                st = VLM_ERR_OOM;
                goto fail;
            }
        }
        const char *dn = e->t->dtype_name;
        dtype = !dtype ? dn : strcmp(dtype, dn) ? "mixed" : dtype;
    }
    size_t bytes;
    if (!vlm_size_mul(total, sizeof(float), &bytes) || !(m->arena = malloc(bytes ? bytes : 1))) {
        vlm_log_error("%s: out of memory: the float32 weight arena needs %zu floats (%.2f GB) and did not fit", dir,
                      total, (double)total * 4.0 / 1e9);
        st = VLM_ERR_OOM;
        goto fail;
    }
    m->arena_floats = total;
    if (stream) {
        struct vlm_layer_stream *ls = calloc(1, sizeof *ls);
        if (ls) m->stream = ls;
        if (!ls || !(ls->e = vlm_calloc_array((size_t)n_lin, sizeof *ls->e, "layer stream table")) ||
            !(ls->buf = vlm_alloc_array(layer_total ? layer_total : 1, sizeof(float), "decoder layer buffer"))) {
            st = VLM_ERR_OOM;
            goto fail;
        }
        VLM_ASSERT(n_lin == LAYER_LINEARS * c->text.n_layers);
        ls->n_layers = c->text.n_layers;
        ls->buf_floats = layer_total;
        ls->cur = -1;
    }
    for (size_t i = 0, j = 0; i < plan.n; i++) {
        const struct entry *e = &plan.e[i];
        if (stream && e->layer_linear) {
            m->stream->e[j++] = *e;
            continue;
        }
        float *dst = m->arena + e->offset;
        if ((st = widen_entry(ck, e, dst)) != VLM_OK) goto fail;
        if (stream) st_tensor_evict(e->t); /* the checkpoint stays mapped: keep only the widened copy resident */
        *e->dst = dst;
    }
    if (tied) w->lm_head = w->embed;
    vlm_model_set_f32_views(m);
    m->quant_method = "none";
    if (!(m->qctx = calloc(1, sizeof *m->qctx))) {
        vlm_log_error("%s: out of memory", dir);
        st = VLM_ERR_OOM;
        goto fail;
    }
    m->qctx->pool = vlm_pool_default();

    m->scheme = s->id;
    m->vision_prefix = vp;
    m->lm_head_tied = tied;
    m->file_dtype = dtype;
    m->n_files = st_checkpoint_n_files(ck);
    free(plan.e);
    if (stream) m->stream->ck = ck; /* the layer stream reads from it until vlm_model_free */
    else st_checkpoint_close(ck);
    vlm_model_log_summary(m);
    *out = m;
    return VLM_OK;
fail:
    free(plan.e);
    st_checkpoint_close(ck); /* never handed to m->stream on this path */
    vlm_model_free(m);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * summary and memory estimate
 * ------------------------------------------------------------------------------------------------------------- */

void vlm_model_log_summary(const struct vlm_model *m) {
    if (m->mbq) {
        double mapped = 0;
        for (int64_t i = 0; i < mbq_file_count(m->mbq); i++) mapped += (double)mbq_file_at(m->mbq, i)->size;
        vlm_log_info("model %s: quant %s, decoder linears %s, embed %s, lm_head %s; %.2f MB mapped, %.2f MB fp32 "
                     "arena (vision, projector, norms), vision layers %lld of %lld", m->dir, m->quant_method,
                     vlm_qformat_name(m->w.layers[0].wq.fmt), vlm_qformat_name(m->w.embed_q.fmt),
                     m->lm_head_tied ? "tied to embed_tokens" : vlm_qformat_name(m->w.lm_head_q.fmt), mapped / 1e6,
                     (double)m->arena_floats * 4.0 / 1e6, (long long)m->w.n_vit_layers,
                     (long long)m->config.vision.n_layers);
        return;
    }
    if (m->stream)
        vlm_log_info("model %s: decoder linears streamed from the checkpoint, one layer (%.2f MB fp32) at a time",
                     m->dir, (double)m->stream->buf_floats * 4.0 / 1e6);
    vlm_log_info("model %s: %zu params (%.1f M), %.2f MB fp32 in one arena, file dtype %s (%d file%s, names %s%s%s), "
                 "lm_head %s, vision layers %lld of %lld, fp32 reference",
                 m->dir, m->arena_floats, (double)m->arena_floats / 1e6, (double)m->arena_floats * 4.0 / 1e6,
                 m->file_dtype,
                 m->n_files, m->n_files == 1 ? "" : "s", vlm_name_scheme_str(m->scheme),
                 m->vision_prefix ? ", tower " : "", m->vision_prefix ? m->vision_prefix : "",
                 m->lm_head_tied ? "tied to embed_tokens" : "untied", (long long)m->w.n_vit_layers,
                 (long long)m->config.vision.n_layers);
}

void vlm_config_estimate_memory(const struct vlm_config *c, struct vlm_mem_estimate *out) {
    struct vlm_mem_estimate e = {0};
    vlm_config_count_params(c, &e.params);
    /* the parser's caps keep total far below 2^61, so these products fit */
    e.fp32_bytes = e.params.total * 4;
    e.fp16_bytes = e.params.total * 2;
    const struct vlm_text_config *t = &c->text;
    e.kv_bytes_per_token_fp16 = 2 * t->n_layers * t->n_kv_heads * t->head_dim * 2;
    e.kv_bytes_per_token_fp32 = 2 * e.kv_bytes_per_token_fp16;
    *out = e;
}
