/* model.h — an LLaVA-OneVision model held as float32 weights: the exact CPU reference every fast path is
 * checked against. Weights are converted from the checkpoint's dtype (BF16/F16/F32) once at load, into one
 * allocation carved into views. Linear weights are [out, in] row-major as in the checkpoint. */
#ifndef VLM_MODEL_H
#define VLM_MODEL_H

#include <stdint.h>

#include "config.h"
#include "vlm.h"

struct vit_layer_weights {
    float *ln1_w, *ln1_b;       /* (hidden) */
    float *q_w, *k_w, *v_w;     /* (hidden, hidden) */
    float *q_b, *k_b, *v_b;     /* (hidden) */
    float *o_w, *o_b;           /* (hidden, hidden), (hidden) */
    float *ln2_w, *ln2_b;       /* (hidden) */
    float *fc1_w, *fc1_b;       /* (inter, hidden), (inter) */
    float *fc2_w, *fc2_b;       /* (hidden, inter), (hidden) */
};

struct qwen2_layer_weights {
    float *attn_norm;           /* (d) input_layernorm */
    float *q_w, *q_b;           /* (n_heads*hd, d), (n_heads*hd) */
    float *k_w, *k_b;           /* (n_kv*hd, d), (n_kv*hd) */
    float *v_w, *v_b;           /* (n_kv*hd, d), (n_kv*hd) */
    float *o_w;                 /* (d, n_heads*hd), no bias */
    float *mlp_norm;            /* (d) post_attention_layernorm */
    float *gate_w, *up_w;       /* (f, d) */
    float *down_w;              /* (d, f) */
};

struct vlm_weights {
    /* vision tower: only layers 0 .. n_vit_layers-1 are loaded (those the selected features need) */
    float *patch_w;             /* (hidden, 3*patch*patch): conv kernel reshaped row-major, no transpose */
    float *patch_b;             /* (hidden) */
    float *pos_emb;             /* (n_patches, hidden) */
    int64_t n_vit_layers;
    struct vit_layer_weights *vit;   /* (n_vit_layers) */
    /* projector */
    float *proj1_w, *proj1_b;   /* (d, hidden*n_feature_layers), (d); bias NULL when projector_bias false */
    float *proj2_w, *proj2_b;   /* (d, d), (d) */
    float *image_newline;       /* (d) */
    /* decoder */
    int64_t n_vocab_rows;       /* rows of embed_tokens in the checkpoint (>= text.vocab_size is allowed) */
    float *embed;               /* (n_vocab_rows, d) */
    struct qwen2_layer_weights *layers; /* (n_layers) */
    float *final_norm;          /* (d) */
    float *lm_head;             /* (n_vocab_rows, d); == embed when tied */
};

struct vlm_model {
    struct vlm_config config;
    struct vlm_preproc_config preproc;
    struct vlm_weights w;
    float *arena;               /* the one block the weight views point into */
    size_t arena_floats;
    char *dir;                  /* checkpoint directory, for messages */
};

#endif
