/* siglip.c — SigLIP vision tower and mlp2x_gelu projector in float32 (shared/spec/llava-onevision.md §3-§4).
 * Linears and attention go through the model's dispatch (vlm_model_linear_f32, vlm_model_attention): the float32
 * reference for an HF checkpoint, the fast CPU kernels for a .mbq model. One crop at a time: crops never attend to
 * each other, and this bounds scratch memory to one crop's activations whatever the crop count. */
#include "siglip.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/util.h"

/* Scratch for one crop of np tokens. */
struct vit_scratch {
    float *x;     /* (np, hidden) residual stream */
    float *a;     /* (np, hidden) normed input */
    float *q, *k, *v, *att; /* (np, hidden) each */
    float *mlp;   /* (np, inter) */
    float *patch; /* (np, 3*p*p) the crop's patches, flattened (im2col), so the conv is one GEMM */
    float *row;   /* (np) attention scores */
};

static void apply_act(enum vlm_act act, float *x, int64_t n) {
    switch (act) {
    case VLM_ACT_GELU_TANH: cpu_gelu_tanh_ref(x, n); break;
    case VLM_ACT_GELU_ERF: cpu_gelu_erf_ref(x, n); break;
    case VLM_ACT_SILU: cpu_silu_ref(x, n); break;
    }
}

/* Patch embedding + position embedding of one crop (3, S, S) into s->x. */
static enum vlm_status vit_embed(const struct vlm_model *m, const float *px, struct vit_scratch *s) {
    const struct vlm_vision_config *vc = &m->config.vision;
    const int64_t P = vc->n_patches_side, ps = vc->patch_size, S = vc->image_size, hid = vc->hidden_size;
    const int64_t kdim = vc->n_channels * ps * ps;
    /* Conv2d(kernel = stride = patch) as a GEMM over the flattened [c][ky][kx] patches */
    for (int64_t r = 0; r < P; r++)
        for (int64_t c = 0; c < P; c++)
            for (int64_t ch = 0; ch < vc->n_channels; ch++)
                for (int64_t ky = 0; ky < ps; ky++)
                    for (int64_t kx = 0; kx < ps; kx++)
                        s->patch[(r * P + c) * kdim + (ch * ps + ky) * ps + kx] =
                            px[(ch * S + r * ps + ky) * S + c * ps + kx];
    enum vlm_status st = vlm_model_linear_f32(m, s->x, s->patch, m->w.patch_w, m->w.patch_b, P * P, hid, kdim);
    if (st != VLM_OK) return st;
    for (int64_t i = 0; i < P * P * hid; i++) s->x[i] += m->w.pos_emb[i];
    return VLM_OK;
}

static enum vlm_status vit_layer(const struct vlm_model *m, const struct vit_layer_weights *L, struct vit_scratch *s) {
    const struct vlm_vision_config *vc = &m->config.vision;
    const int64_t np = vc->n_patches_side * vc->n_patches_side, hid = vc->hidden_size, inter = vc->intermediate_size;
    enum vlm_status st;
    cpu_layernorm_ref(s->a, s->x, L->ln1_w, L->ln1_b, np, hid, vc->layer_norm_eps);
    if ((st = vlm_model_linear_f32(m, s->q, s->a, L->q_w, L->q_b, np, hid, hid)) ||
        (st = vlm_model_linear_f32(m, s->k, s->a, L->k_w, L->k_b, np, hid, hid)) ||
        (st = vlm_model_linear_f32(m, s->v, s->a, L->v_w, L->v_b, np, hid, hid)))
        return st;
    vlm_model_attention(m, s->att, s->q, s->k, s->v, np, np, vc->n_heads, vc->n_heads, vc->head_dim, hid, 0, 0,
                        s->row);
    if ((st = vlm_model_linear_f32(m, s->a, s->att, L->o_w, L->o_b, np, hid, hid))) return st;
    for (int64_t i = 0; i < np * hid; i++) s->x[i] += s->a[i];
    cpu_layernorm_ref(s->a, s->x, L->ln2_w, L->ln2_b, np, hid, vc->layer_norm_eps);
    if ((st = vlm_model_linear_f32(m, s->mlp, s->a, L->fc1_w, L->fc1_b, np, inter, hid))) return st;
    apply_act(vc->hidden_act, s->mlp, np * inter);
    if ((st = vlm_model_linear_f32(m, s->a, s->mlp, L->fc2_w, L->fc2_b, np, hid, inter))) return st;
    for (int64_t i = 0; i < np * hid; i++) s->x[i] += s->a[i];
    return VLM_OK;
}

/* Copies the current hidden state into every selected-feature slot that asks for hidden-state index idx. */
static void vit_collect(const struct vlm_model *m, int idx, const float *x, float *feats_crop) {
    const struct vlm_config *c = &m->config;
    const int64_t np = c->vision.n_patches_side * c->vision.n_patches_side, hid = c->vision.hidden_size;
    const int64_t width = hid * c->n_feature_layers;
    for (int f = 0; f < c->n_feature_layers; f++) {
        if (c->feature_layers[f] != idx) continue;
        for (int64_t t = 0; t < np; t++) memcpy(feats_crop + t * width + f * hid, x + t * hid, (size_t)hid * sizeof(float));
    }
}

enum vlm_status vit_forward(const struct vlm_model *m, const float *pixels, int64_t n_crops, float *feats) {
    const struct vlm_config *c = &m->config;
    const struct vlm_vision_config *vc = &c->vision;
    const int64_t np = vc->n_patches_side * vc->n_patches_side, hid = vc->hidden_size;
    const int64_t crop_px = vc->n_channels * vc->image_size * vc->image_size;
    const int64_t width = hid * c->n_feature_layers;
    /* All sizes come from a validated config; products are bounded by its caps. */
    size_t n_act = (size_t)(np * hid), n_total;
    if (!vlm_size_mul(n_act, 6, &n_total) || !vlm_size_add(n_total, (size_t)(np * vc->intermediate_size), &n_total) ||
        !vlm_size_add(n_total, (size_t)(np * vc->n_channels * vc->patch_size * vc->patch_size + np), &n_total)) {
        vlm_log_error("vision tower: scratch size overflows");
        return VLM_ERR_OOM;
    }
    float *buf = vlm_alloc_array(n_total, sizeof(float), "vision tower scratch");
    if (!buf) return VLM_ERR_OOM;
    struct vit_scratch s;
    float *p = buf;
    s.x = p, p += n_act;
    s.a = p, p += n_act;
    s.q = p, p += n_act;
    s.k = p, p += n_act;
    s.v = p, p += n_act;
    s.att = p, p += n_act;
    s.mlp = p, p += np * vc->intermediate_size;
    s.patch = p, p += np * vc->n_channels * vc->patch_size * vc->patch_size;
    s.row = p;
    enum vlm_status st = VLM_OK;
    for (int64_t cr = 0; cr < n_crops && st == VLM_OK; cr++) {
        float *fc = feats + cr * np * width;
        if ((st = vit_embed(m, pixels + cr * crop_px, &s)) != VLM_OK) break;
        vit_collect(m, 0, s.x, fc);
        for (int64_t l = 0; l < m->w.n_vit_layers && st == VLM_OK; l++) {
            if ((st = vit_layer(m, &m->w.vit[l], &s)) == VLM_OK) vit_collect(m, (int)(l + 1), s.x, fc);
        }
    }
    free(buf);
    return st;
}

enum vlm_status vit_project(const struct vlm_model *m, const float *x, int64_t n, float *out) {
    const struct vlm_config *c = &m->config;
    const int64_t in = c->vision.hidden_size * c->n_feature_layers, d = c->text.hidden_size;
    float *h = vlm_alloc_array((size_t)n, (size_t)d * sizeof(float), "projector scratch");
    if (!h) return VLM_ERR_OOM;
    enum vlm_status st = vlm_model_linear_f32(m, h, x, m->w.proj1_w, m->w.proj1_b, n, d, in);
    if (st == VLM_OK) {
        apply_act(c->projector_act, h, n * d);
        st = vlm_model_linear_f32(m, out, h, m->w.proj2_w, m->w.proj2_b, n, d, d);
    }
    free(h);
    return st;
}
