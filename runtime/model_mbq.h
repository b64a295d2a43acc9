/* model_mbq.h — the tensors of a model as a .mbq file holds them: one table (names, shapes, which field of struct
 * vlm_weights each fills) shared by the loader (model_mbq.c) and the converter, so the two cannot disagree.
 * Names are the legacy llava-hf names (vision_tower.vision_model.*, multi_modal_projector.*, image_newline,
 * language_model.model.*, language_model.lm_head.weight), so a user who knows the checkpoint knows the file. */
#ifndef VLM_MODEL_MBQ_H
#define VLM_MODEL_MBQ_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"

enum mbq_slot_kind {
    MBQ_SLOT_FLOAT,   /* vision tower, projector, image_newline, norms, biases: stored f32/f16/bf16, run in f32 */
    MBQ_SLOT_LINEAR,  /* decoder q/k/v/o/gate/up/down: any weight format */
    MBQ_SLOT_EMBED,   /* embed_tokens: f32/f16/bf16/q8r; rows = n_vocab_rows */
    MBQ_SLOT_HEAD,    /* lm_head (absent when tied): f32/f16/bf16/q8r; rows = n_vocab_rows */
};

struct mbq_slot {
    char name[160];
    enum mbq_slot_kind kind;
    int n_dims;
    int64_t shape[4];
    float **f;            /* the float32 field of struct vlm_weights */
    struct vlm_qmat *q;   /* LINEAR/EMBED/HEAD: the view the decoder uses */
    int64_t layer;        /* the decoder layer the tensor belongs to, -1 for any other */
};

/* The most slots a config can give (for allocation). */
int64_t mbq_slots_cap(const struct vlm_config *c);
/* Fills slots (cap >= mbq_slots_cap(c)) for w, whose vit/layers tables must be allocated and n_vit_layers and
 * n_vocab_rows set; with_head adds the lm_head slot. Returns the count. Order: vision, projector, newline,
 * embed, [head], decoder layers, final norm — the order the converter writes. */
int64_t mbq_slots_fill(const struct vlm_config *c, struct vlm_weights *w, bool with_head, struct mbq_slot *slots);

/* The .mbq tensor that carries the tokenizer file. */
#define MBQ_TOKENIZER_TENSOR "tokenizer.file"

#endif
