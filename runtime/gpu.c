/* gpu.c — see gpu.h. The sequence of ops mirrors runtime/qwen2.c and vision/siglip.c line for line, so the two
 * paths can be read side by side; only the precision contract differs (kernels/cuda_backend.h). */
#include "gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_backend.h"
#include "util.h"

struct gpu_layer {
    float *attn_norm, *mlp_norm, *q_b, *k_b, *v_b;
    struct cuda_qmat q, k, v, o, gate, up, down;
};

struct gpu_vit_layer {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *q_b, *k_b, *v_b, *o_b, *fc1_b, *fc2_b;
    struct cuda_qmat q, k, v, o, fc1, fc2;
};

struct vlm_gpu {
    const struct vlm_model *m;
    struct cuda_ctx *c;
    struct cuda_device_info info;
    int64_t max_seq, n_past, max_crops;
    void **allocs;             /* every cuda_malloc'd buffer, freed at the end */
    size_t n_allocs, cap_allocs;
    /* decoder */
    struct gpu_layer *L;
    float *final_norm;
    struct cuda_qmat head;
    uint16_t *kc, *vc;         /* (n_layers, max_seq, kvd) FP16, k after RoPE */
    float *h;                  /* (CHUNK, d) residual stream */
    uint16_t *a, *q, *ks, *vs, *att, *gate, *up; /* (CHUNK, d / qd / kvd / kvd / qd / f / f) */
    float *logits;             /* (8, V) */
    int32_t *pos;              /* [position of the step's first token, keys after it]: read by a captured step */
    int32_t *next;             /* argmax of the last logits row */
    struct cuda_graph *graph;  /* the decode step (n = 1), captured at the first one */
    bool graph_failed;
    /* vision tower + projector */
    struct gpu_vit_layer *V;
    struct cuda_qmat patch, proj1, proj2;
    float *patch_b, *pos_emb, *proj1_b, *proj2_b;
    float *vx, *vpatch32, *vout;                 /* (rows, hid), (rows, kdim), (rows, d) */
    uint16_t *vpatch, *va, *vq, *vk, *vv, *vatt, *vmlp, *vproj; /* (rows, kdim/hid/hid/hid/hid/hid/inter/d) */
    float *host_patch;         /* (rows, kdim) im2col staging */
    char desc[512];
};

static enum vlm_status gpu_alloc(struct vlm_gpu *g, void **p, size_t n, size_t elem, const char *what) {
    size_t bytes;
    if (!vlm_size_mul(n ? n : 1, elem, &bytes)) {
        vlm_log_error("gpu: %s: size overflows", what);
        return VLM_ERR_OOM;
    }
    if (g->n_allocs == g->cap_allocs) {
        size_t cap = g->cap_allocs ? 2 * g->cap_allocs : 64;
        void **a = realloc(g->allocs, cap * sizeof *a);
        if (!a) {
            vlm_log_error("gpu: out of host memory for the allocation list");
            return VLM_ERR_OOM;
        }
        g->allocs = a, g->cap_allocs = cap;
    }
    enum vlm_status st = cuda_malloc(g->c, p, bytes, what);
    if (st != VLM_OK) return st;
    g->allocs[g->n_allocs++] = *p;
    return VLM_OK;
}

/* A float array of the host model (n values) on the device; host NULL gives NULL (an absent bias). */
static enum vlm_status gpu_f32(struct vlm_gpu *g, float **dst, const float *host, int64_t n, const char *what) {
    *dst = NULL;
    if (!host) return VLM_OK;
    enum vlm_status st = gpu_alloc(g, (void **)dst, (size_t)n, sizeof(float), what);
    return st ? st : cuda_upload(g->c, *dst, host, (size_t)n * sizeof(float));
}

static enum vlm_status gpu_mat(struct vlm_gpu *g, struct cuda_qmat *dst, const struct vlm_qmat *host,
                               const char *what) {
    return cuda_qmat_upload(g->c, host, dst, what);
}

/* A float32 (n, k) weight of the host model as a matrix view (uploaded as F16). */
static struct vlm_qmat f32_mat(const float *w, int64_t n, int64_t k) {
    return (struct vlm_qmat){.fmt = VLM_QF_F32, .n = n, .k = k, .codes = w};
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static enum vlm_status upload_decoder(struct vlm_gpu *g, size_t *scratch) {
    const struct vlm_model *m = g->m;
    const struct vlm_text_config *tc = &m->config.text;
    const int64_t qd = tc->n_heads * tc->head_dim, kvd = tc->n_kv_heads * tc->head_dim;
    enum vlm_status st;
    g->L = vlm_alloc_array((size_t)tc->n_layers, sizeof *g->L, "gpu layer table");
    if (!g->L) return VLM_ERR_OOM;
    memset(g->L, 0, (size_t)tc->n_layers * sizeof *g->L);
    for (int64_t l = 0; l < tc->n_layers; l++) {
        const struct qwen2_layer_weights *H = &m->w.layers[l];
        struct gpu_layer *D = &g->L[l];
        char what[64];
        snprintf(what, sizeof what, "decoder layer %lld", (long long)l);
        if ((st = gpu_f32(g, &D->attn_norm, H->attn_norm, tc->hidden_size, what)) ||
            (st = gpu_f32(g, &D->mlp_norm, H->mlp_norm, tc->hidden_size, what)) ||
            (st = gpu_f32(g, &D->q_b, H->q_b, qd, what)) || (st = gpu_f32(g, &D->k_b, H->k_b, kvd, what)) ||
            (st = gpu_f32(g, &D->v_b, H->v_b, kvd, what)) || (st = gpu_mat(g, &D->q, &H->wq, what)) ||
            (st = gpu_mat(g, &D->k, &H->wk, what)) || (st = gpu_mat(g, &D->v, &H->wv, what)) ||
            (st = gpu_mat(g, &D->o, &H->wo, what)) || (st = gpu_mat(g, &D->gate, &H->wgate, what)) ||
            (st = gpu_mat(g, &D->up, &H->wup, what)) || (st = gpu_mat(g, &D->down, &H->wdown, what)))
            return st;
        const struct cuda_qmat *all[] = {&D->q, &D->k, &D->v, &D->o, &D->gate, &D->up, &D->down};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(all[i], VLM_GPU_CHUNK));
    }
    if ((st = gpu_f32(g, &g->final_norm, m->w.final_norm, tc->hidden_size, "final norm")) ||
        (st = gpu_mat(g, &g->head, &m->w.lm_head_q, "lm_head")))
        return st;
    *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(&g->head, 8));
    *scratch = max_sz(*scratch, cuda_attention_scratch_bytes(tc->n_heads, tc->head_dim, g->max_seq));
    /* the cache and one chunk's activations */
    const size_t cache = (size_t)tc->n_layers * (size_t)g->max_seq * (size_t)kvd, C = VLM_GPU_CHUNK;
    const size_t d = (size_t)tc->hidden_size, f = (size_t)tc->intermediate_size;
    if ((st = gpu_alloc(g, (void **)&g->kc, cache, 2, "KV cache (k)")) ||
        (st = gpu_alloc(g, (void **)&g->vc, cache, 2, "KV cache (v)")) ||
        (st = gpu_alloc(g, (void **)&g->h, C * d, 4, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->a, C * d, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->q, C * (size_t)qd, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->ks, C * (size_t)kvd, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->vs, C * (size_t)kvd, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->att, C * (size_t)qd, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->gate, C * f, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->up, C * f, 2, "decoder activations")) ||
        (st = gpu_alloc(g, (void **)&g->logits, 8 * (size_t)g->head.n, 4, "logits")) ||
        (st = gpu_alloc(g, (void **)&g->pos, 2, sizeof(int32_t), "positions")) ||
        (st = gpu_alloc(g, (void **)&g->next, 1, sizeof(int32_t), "next token")))
        return st;
    return VLM_OK;
}

static enum vlm_status upload_vision(struct vlm_gpu *g, size_t *scratch) {
    const struct vlm_model *m = g->m;
    const struct vlm_config *c = &m->config;
    const struct vlm_vision_config *vc = &c->vision;
    const int64_t hid = vc->hidden_size, inter = vc->intermediate_size, d = c->text.hidden_size;
    const int64_t np = vc->n_patches_side * vc->n_patches_side, kdim = vc->n_channels * vc->patch_size * vc->patch_size;
    enum vlm_status st;
    if (c->n_feature_layers != 1) {
        vlm_log_error("gpu: %d concatenated vision feature layers are not supported on the GPU (one is: the "
                      "published models' vision_feature_layer -1); run with --device cpu", c->n_feature_layers);
        return VLM_ERR_UNSUPPORTED;
    }
    if (c->feature_layers[0] != m->w.n_vit_layers) { /* the loader loads exactly the layers the feature needs */
        vlm_log_error("gpu: vision feature layer %d but %lld layers loaded", c->feature_layers[0],
                      (long long)m->w.n_vit_layers);
        return VLM_ERR_UNSUPPORTED;
    }
    /* the most crops an image can give: the base crop + the largest pinpoint grid */
    g->max_crops = 1;
    for (int64_t i = 0; i < c->n_pinpoints; i++) {
        const int64_t n = 1 + (c->pinpoints[i][0] / vc->image_size) * (c->pinpoints[i][1] / vc->image_size);
        if (n > g->max_crops) g->max_crops = n;
    }
    const size_t n_v = (size_t)(m->w.n_vit_layers ? m->w.n_vit_layers : 1);
    g->V = vlm_alloc_array(n_v, sizeof *g->V, "gpu vision layer table");
    if (!g->V) return VLM_ERR_OOM;
    memset(g->V, 0, n_v * sizeof *g->V);
    const int64_t rows = g->max_crops * np;
    for (int64_t l = 0; l < m->w.n_vit_layers; l++) {
        const struct vit_layer_weights *H = &m->w.vit[l];
        struct gpu_vit_layer *D = &g->V[l];
        char what[64];
        snprintf(what, sizeof what, "vision layer %lld", (long long)l);
        const struct vlm_qmat q = f32_mat(H->q_w, hid, hid), k = f32_mat(H->k_w, hid, hid),
                              v = f32_mat(H->v_w, hid, hid), o = f32_mat(H->o_w, hid, hid),
                              fc1 = f32_mat(H->fc1_w, inter, hid), fc2 = f32_mat(H->fc2_w, hid, inter);
        if ((st = gpu_f32(g, &D->ln1_w, H->ln1_w, hid, what)) || (st = gpu_f32(g, &D->ln1_b, H->ln1_b, hid, what)) ||
            (st = gpu_f32(g, &D->ln2_w, H->ln2_w, hid, what)) || (st = gpu_f32(g, &D->ln2_b, H->ln2_b, hid, what)) ||
            (st = gpu_f32(g, &D->q_b, H->q_b, hid, what)) || (st = gpu_f32(g, &D->k_b, H->k_b, hid, what)) ||
            (st = gpu_f32(g, &D->v_b, H->v_b, hid, what)) || (st = gpu_f32(g, &D->o_b, H->o_b, hid, what)) ||
            (st = gpu_f32(g, &D->fc1_b, H->fc1_b, inter, what)) ||
            (st = gpu_f32(g, &D->fc2_b, H->fc2_b, hid, what)) || (st = gpu_mat(g, &D->q, &q, what)) ||
            (st = gpu_mat(g, &D->k, &k, what)) || (st = gpu_mat(g, &D->v, &v, what)) ||
            (st = gpu_mat(g, &D->o, &o, what)) || (st = gpu_mat(g, &D->fc1, &fc1, what)) ||
            (st = gpu_mat(g, &D->fc2, &fc2, what)))
            return st;
        const struct cuda_qmat *all[] = {&D->q, &D->k, &D->v, &D->o, &D->fc1, &D->fc2};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(all[i], rows));
    }
    const struct vlm_qmat patch = f32_mat(m->w.patch_w, hid, kdim),
                          p1 = f32_mat(m->w.proj1_w, d, hid), p2 = f32_mat(m->w.proj2_w, d, d);
    if ((st = gpu_mat(g, &g->patch, &patch, "patch embedding")) ||
        (st = gpu_f32(g, &g->patch_b, m->w.patch_b, hid, "patch embedding")) ||
        (st = gpu_f32(g, &g->pos_emb, m->w.pos_emb, np * hid, "position embedding")) ||
        (st = gpu_mat(g, &g->proj1, &p1, "projector")) || (st = gpu_mat(g, &g->proj2, &p2, "projector")) ||
        (st = gpu_f32(g, &g->proj1_b, m->w.proj1_b, d, "projector")) ||
        (st = gpu_f32(g, &g->proj2_b, m->w.proj2_b, d, "projector")))
        return st;
    *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(&g->patch, rows));
    *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(&g->proj1, rows));
    *scratch = max_sz(*scratch, cuda_linear_scratch_bytes(&g->proj2, rows));
    const size_t R = (size_t)rows;
    if ((st = gpu_alloc(g, (void **)&g->vx, R * (size_t)hid, 4, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vpatch32, R * (size_t)kdim, 4, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vout, R * (size_t)d, 4, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vpatch, R * (size_t)kdim, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->va, R * (size_t)hid, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vq, R * (size_t)hid, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vk, R * (size_t)hid, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vv, R * (size_t)hid, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vatt, R * (size_t)hid, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vmlp, R * (size_t)inter, 2, "vision activations")) ||
        (st = gpu_alloc(g, (void **)&g->vproj, R * (size_t)d, 2, "vision activations")))
        return st;
    g->host_patch = vlm_alloc_array(R, (size_t)kdim * sizeof(float), "vision patch staging");
    return g->host_patch ? VLM_OK : VLM_ERR_OOM;
}

enum vlm_status vlm_gpu_create(const struct vlm_model *m, int device, int64_t max_seq, struct vlm_gpu **out) {
    const struct vlm_text_config *tc = &m->config.text;
    if (m->stream) {
        vlm_log_error("gpu: %s was loaded with streamed decoder layers (the converter's mode); the GPU path needs "
                      "them all", m->dir);
        return VLM_ERR_UNSUPPORTED;
    }
    if (max_seq < 1 || max_seq > tc->max_position_embeddings || max_seq > INT32_MAX) {
        vlm_log_error("gpu: context of %lld tokens requested, the model allows 1 .. %lld", (long long)max_seq,
                      (long long)tc->max_position_embeddings);
        return VLM_ERR_ARG;
    }
    struct vlm_gpu *g = calloc(1, sizeof *g);
    if (!g) return VLM_ERR_OOM;
    g->m = m;
    g->max_seq = max_seq;
    enum vlm_status st = cuda_ctx_create(device, &g->c);
    if (st != VLM_OK) {
        free(g);
        return st;
    }
    cuda_ctx_info(g->c, &g->info);
    size_t scratch = 0;
    if ((st = upload_decoder(g, &scratch)) != VLM_OK || (st = upload_vision(g, &scratch)) != VLM_OK ||
        (st = cuda_ctx_reserve(g->c, scratch, "op scratch")) != VLM_OK ||
        (st = cuda_ctx_sync(g->c, "model upload")) != VLM_OK) {
        vlm_gpu_free(g);
        return st;
    }
    struct cuda_device_info now;
    cuda_ctx_info(g->c, &now);
    snprintf(g->desc, sizeof g->desc, "%s (sm_%d%d, %d SMs, %.0f GB/s peak): %.2f GB used by the model (weights, "
             "KV cache for %lld tokens, activations), %.2f GB free",
             g->info.name, g->info.cc_major, g->info.cc_minor, g->info.n_sm, g->info.peak_gbps,
             (double)(g->info.free_bytes - now.free_bytes) / 1e9, (long long)max_seq, (double)now.free_bytes / 1e9);
    *out = g;
    return VLM_OK;
}

void vlm_gpu_free(struct vlm_gpu *g) {
    if (!g) return;
    if (g->L)
        for (int64_t l = 0; l < g->m->config.text.n_layers; l++) {
            struct gpu_layer *D = &g->L[l];
            struct cuda_qmat *all[] = {&D->q, &D->k, &D->v, &D->o, &D->gate, &D->up, &D->down};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++) cuda_qmat_free(g->c, all[i]);
        }
    if (g->V)
        for (int64_t l = 0; l < g->m->w.n_vit_layers; l++) {
            struct gpu_vit_layer *D = &g->V[l];
            struct cuda_qmat *all[] = {&D->q, &D->k, &D->v, &D->o, &D->fc1, &D->fc2};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++) cuda_qmat_free(g->c, all[i]);
        }
    cuda_qmat_free(g->c, &g->head);
    cuda_qmat_free(g->c, &g->patch);
    cuda_qmat_free(g->c, &g->proj1);
    cuda_qmat_free(g->c, &g->proj2);
    for (size_t i = 0; i < g->n_allocs; i++) cuda_free(g->c, g->allocs[i]);
    cuda_graph_free(g->graph);
    cuda_ctx_free(g->c);
    free(g->allocs);
    free(g->L);
    free(g->V);
    free(g->host_patch);
    free(g);
}

const char *vlm_gpu_describe(const struct vlm_gpu *g) { return g->desc; }
void vlm_gpu_reset(struct vlm_gpu *g) { g->n_past = 0; }
void vlm_gpu_truncate(struct vlm_gpu *g, int64_t n) {
    if (n >= 0 && n < g->n_past) g->n_past = n;
}
int64_t vlm_gpu_n_past(const struct vlm_gpu *g) { return g->n_past; }
int64_t vlm_gpu_max_seq(const struct vlm_gpu *g) { return g->max_seq; }

/* Enqueues the decoder layers for nc tokens whose rows sit in g->h, at positions pos0.. (host) or, when dev, at the
 * positions g->pos says (the captured decode step: nc == 1, the grid of attention sized for the whole cache). */
static void enqueue_layers(struct vlm_gpu *g, int64_t nc, int64_t pos0, bool dev) {
    const struct vlm_text_config *tc = &g->m->config.text;
    const int64_t d = tc->hidden_size, f = tc->intermediate_size, hd = tc->head_dim;
    const int64_t qd = tc->n_heads * hd, kvd = tc->n_kv_heads * hd;
    struct cuda_ctx *c = g->c;
    const int32_t *pos_dev = dev ? g->pos : NULL, *nkv_dev = dev ? g->pos + 1 : NULL;
    for (int64_t l = 0; l < tc->n_layers; l++) {
        const struct gpu_layer *L = &g->L[l];
        uint16_t *kc = g->kc + (size_t)l * (size_t)g->max_seq * (size_t)kvd;
        uint16_t *vc = g->vc + (size_t)l * (size_t)g->max_seq * (size_t)kvd;
        cuda_rmsnorm(c, g->a, g->h, L->attn_norm, nc, d, tc->rms_norm_eps);
        cuda_linear(c, g->q, CUDA_OUT_F16, g->a, &L->q, L->q_b, nc);
        cuda_linear(c, g->ks, CUDA_OUT_F16, g->a, &L->k, L->k_b, nc);
        cuda_linear(c, g->vs, CUDA_OUT_F16, g->a, &L->v, L->v_b, nc);
        cuda_rope_neox(c, g->q, nc, tc->n_heads, hd, qd, pos0, pos_dev, tc->rope_theta);
        cuda_rope_neox(c, g->ks, nc, tc->n_kv_heads, hd, kvd, pos0, pos_dev, tc->rope_theta);
        cuda_kv_store(c, kc, g->ks, nc, kvd, pos0, pos_dev);
        cuda_kv_store(c, vc, g->vs, nc, kvd, pos0, pos_dev);
        cuda_attention(c, g->att, g->q, kc, vc, nc, dev ? g->max_seq : pos0 + nc, tc->n_heads, tc->n_kv_heads, hd, qd,
                       kvd, pos0, 1, nkv_dev);
        cuda_linear(c, g->h, CUDA_OUT_F32_ADD, g->att, &L->o, NULL, nc);
        cuda_rmsnorm(c, g->a, g->h, L->mlp_norm, nc, d, tc->rms_norm_eps);
        cuda_linear(c, g->gate, CUDA_OUT_F16, g->a, &L->gate, NULL, nc);
        cuda_linear(c, g->up, CUDA_OUT_F16, g->a, &L->up, NULL, nc);
        cuda_swiglu(c, g->gate, g->up, nc * f);
        cuda_linear(c, g->h, CUDA_OUT_F32_ADD, g->gate, &L->down, NULL, nc);
    }
}

/* Final norm + head on the last of the nc rows in g->h, and the argmax. */
static void enqueue_head(struct vlm_gpu *g, int64_t nc) {
    const struct vlm_text_config *tc = &g->m->config.text;
    const int64_t d = tc->hidden_size;
    cuda_rmsnorm(g->c, g->a, g->h + (nc - 1) * d, g->final_norm, 1, d, tc->rms_norm_eps);
    cuda_linear(g->c, g->logits, CUDA_OUT_F32, g->a, &g->head, NULL, 1);
    cuda_argmax(g->c, g->next, g->logits, g->head.n);
}

static enum vlm_status set_positions(struct vlm_gpu *g, int64_t pos0, int64_t n) {
    const int32_t p[2] = {(int32_t)pos0, (int32_t)(pos0 + n)};
    return cuda_upload(g->c, g->pos, p, sizeof p);
}

/* The decode step through the graph (captured at the first call; a failed capture falls back to plain launches,
 * said once). */
static enum vlm_status decode_step(struct vlm_gpu *g) {
    enum vlm_status st = set_positions(g, g->n_past, 1);
    if (st != VLM_OK) return st;
    if (!g->graph && !g->graph_failed) {
        if ((st = cuda_graph_begin(g->c)) == VLM_OK) {
            enqueue_layers(g, 1, 0, true);
            enqueue_head(g, 1);
            st = cuda_graph_end(g->c, &g->graph);
        }
        if (st != VLM_OK) {
            vlm_log_info("gpu: decode-step graph capture failed; launching kernels one by one");
            g->graph_failed = true;
            g->graph = NULL;
        }
    }
    if (g->graph) return cuda_graph_launch(g->c, g->graph);
    enqueue_layers(g, 1, 0, true);
    enqueue_head(g, 1);
    return VLM_OK;
}

enum vlm_status vlm_gpu_forward(struct vlm_gpu *g, const float *x_host, int64_t n, float *logits_host, int all_logits,
                                int64_t *next_id) {
    const struct vlm_text_config *tc = &g->m->config.text;
    const int64_t d = tc->hidden_size, V = g->head.n;
    if (n <= 0 || n > g->max_seq - g->n_past) {
        vlm_log_error("gpu decoder: %lld new tokens do not fit the context (%lld of %lld used; vlmrun --ctx sets it)",
                      (long long)n, (long long)g->n_past, (long long)g->max_seq);
        return VLM_ERR_ARG;
    }
    enum vlm_status st = VLM_OK;
    if (n == 1 && !all_logits) {
        if ((st = cuda_upload(g->c, g->h, x_host, (size_t)d * sizeof(float))) || (st = decode_step(g))) return st;
    } else {
        for (int64_t i0 = 0; i0 < n; i0 += VLM_GPU_CHUNK) {
            const int64_t nc = n - i0 < VLM_GPU_CHUNK ? n - i0 : VLM_GPU_CHUNK;
            if ((st = cuda_upload(g->c, g->h, x_host + i0 * d, (size_t)(nc * d) * sizeof(float)))) return st;
            enqueue_layers(g, nc, g->n_past + i0, false);
            if (all_logits && logits_host) { /* every row's logits, 8 rows per head pass (the GEMV path) */
                for (int64_t r = 0; r < nc; r += 8) {
                    const int64_t nr = nc - r < 8 ? nc - r : 8;
                    cuda_rmsnorm(g->c, g->a, g->h + r * d, g->final_norm, nr, d, tc->rms_norm_eps);
                    cuda_linear(g->c, g->logits, CUDA_OUT_F32, g->a, &g->head, NULL, nr);
                    if ((st = cuda_ctx_sync(g->c, "decoder logits")) ||
                        (st = cuda_download(g->c, logits_host + (i0 + r) * V, g->logits, (size_t)(nr * V) * 4)))
                        return st;
                }
            }
            if (i0 + nc == n) enqueue_head(g, nc);
        }
    }
    if ((st = cuda_ctx_sync(g->c, "decoder forward")) != VLM_OK) return st;
    g->n_past += n;
    if (logits_host && !all_logits && (st = cuda_download(g->c, logits_host, g->logits, (size_t)V * sizeof(float))))
        return st;
    if (next_id) {
        int32_t id = 0;
        if ((st = cuda_download(g->c, &id, g->next, sizeof id))) return st;
        *next_id = id;
    }
    return VLM_OK;
}

static void enqueue_act(struct cuda_ctx *c, enum vlm_act act, uint16_t *x, int64_t n) {
    if (act == VLM_ACT_GELU_TANH) cuda_gelu_tanh(c, x, n);
    else cuda_gelu_erf(c, x, n); /* VLM_ACT_SILU never reaches here: checked at upload */
}

enum vlm_status vlm_gpu_encode_image(struct vlm_gpu *g, const float *pixels_host, int64_t n_crops, float *out_host) {
    const struct vlm_model *m = g->m;
    const struct vlm_config *cf = &m->config;
    const struct vlm_vision_config *vc = &cf->vision;
    const int64_t P = vc->n_patches_side, np = P * P, ps = vc->patch_size, S = vc->image_size;
    const int64_t hid = vc->hidden_size, inter = vc->intermediate_size, d = cf->text.hidden_size;
    const int64_t kdim = vc->n_channels * ps * ps, rows = n_crops * np;
    struct cuda_ctx *c = g->c;
    if (n_crops < 1 || n_crops > g->max_crops) {
        vlm_log_error("gpu vision: %lld crops, the buffers hold 1 .. %lld", (long long)n_crops,
                      (long long)g->max_crops);
        return VLM_ERR_ARG;
    }
    if (vc->hidden_act == VLM_ACT_SILU || cf->projector_act == VLM_ACT_SILU) {
        vlm_log_error("gpu vision: silu activation in the vision tower or projector is not implemented on the GPU");
        return VLM_ERR_UNSUPPORTED;
    }
    /* Conv2d(kernel = stride = patch) as one GEMM over the flattened [c][ky][kx] patches of every crop */
    for (int64_t cr = 0; cr < n_crops; cr++) {
        const float *px = pixels_host + cr * vc->n_channels * S * S;
        float *dst = g->host_patch + cr * np * kdim;
        for (int64_t r = 0; r < P; r++)
            for (int64_t col = 0; col < P; col++)
                for (int64_t ch = 0; ch < vc->n_channels; ch++)
                    for (int64_t ky = 0; ky < ps; ky++)
                        for (int64_t kx = 0; kx < ps; kx++)
                            dst[(r * P + col) * kdim + (ch * ps + ky) * ps + kx] =
                                px[(ch * S + r * ps + ky) * S + col * ps + kx];
    }
    enum vlm_status st = cuda_upload(c, g->vpatch32, g->host_patch, (size_t)(rows * kdim) * sizeof(float));
    if (st != VLM_OK) return st;
    cuda_f32_to_f16(c, g->vpatch, g->vpatch32, rows * kdim);
    cuda_linear(c, g->vx, CUDA_OUT_F32, g->vpatch, &g->patch, g->patch_b, rows);
    cuda_add_rows_f32(c, g->vx, g->pos_emb, n_crops, np * hid);
    for (int64_t l = 0; l < m->w.n_vit_layers; l++) {
        const struct gpu_vit_layer *L = &g->V[l];
        cuda_layernorm(c, g->va, g->vx, L->ln1_w, L->ln1_b, rows, hid, vc->layer_norm_eps);
        cuda_linear(c, g->vq, CUDA_OUT_F16, g->va, &L->q, L->q_b, rows);
        cuda_linear(c, g->vk, CUDA_OUT_F16, g->va, &L->k, L->k_b, rows);
        cuda_linear(c, g->vv, CUDA_OUT_F16, g->va, &L->v, L->v_b, rows);
        for (int64_t cr = 0; cr < n_crops; cr++) { /* crops never attend to each other */
            const int64_t o = cr * np * hid;
            cuda_attention(c, g->vatt + o, g->vq + o, g->vk + o, g->vv + o, np, np, vc->n_heads, vc->n_heads,
                           vc->head_dim, hid, hid, 0, 0, NULL);
        }
        cuda_linear(c, g->vx, CUDA_OUT_F32_ADD, g->vatt, &L->o, L->o_b, rows);
        cuda_layernorm(c, g->va, g->vx, L->ln2_w, L->ln2_b, rows, hid, vc->layer_norm_eps);
        cuda_linear(c, g->vmlp, CUDA_OUT_F16, g->va, &L->fc1, L->fc1_b, rows);
        enqueue_act(c, vc->hidden_act, g->vmlp, rows * inter);
        cuda_linear(c, g->vx, CUDA_OUT_F32_ADD, g->vmlp, &L->fc2, L->fc2_b, rows);
    }
    /* the one selected feature layer is the last one run (n_vit_layers = max(feature_layers)) */
    cuda_f32_to_f16(c, g->va, g->vx, rows * hid);
    cuda_linear(c, g->vproj, CUDA_OUT_F16, g->va, &g->proj1, g->proj1_b, rows);
    enqueue_act(c, cf->projector_act, g->vproj, rows * d);
    cuda_linear(c, g->vout, CUDA_OUT_F32, g->vproj, &g->proj2, g->proj2_b, rows);
    if ((st = cuda_ctx_sync(c, "vision encoder")) != VLM_OK) return st;
    return cuda_download(c, out_host, g->vout, (size_t)(rows * d) * sizeof(float));
}
