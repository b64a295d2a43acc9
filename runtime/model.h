/* model.h — an LLaVA-OneVision model held as float32 weights: the exact CPU reference every fast path is
 * checked against. Weights are converted from the checkpoint's dtype (BF16/F16/F32) once at load, into one
 * allocation carved into views. Linear weights are [out, in] row-major as in the checkpoint. */
#ifndef VLM_MODEL_H
#define VLM_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "kernels/quant.h"
#include "vlm.h"

/* Tensor naming schemes of spec §9, told apart by where embed_tokens lives. */
enum vlm_name_scheme {
    VLM_NAMES_LEGACY, /* published llava-hf and transformers 5.x save_pretrained: language_model.model.*,
                         language_model.lm_head.weight, multi_modal_projector.linear_{1,2}.*, image_newline,
                         vision_tower.vision_model.* (published) or vision_tower.* (5.x save) */
    VLM_NAMES_MODULE, /* newer transformers module tree: model.language_model.* (no inner .model), lm_head.weight,
                         model.multi_modal_projector.*, model.image_newline, model.vision_tower[.vision_model].* */
    VLM_NAMES_LMMS,   /* original lmms-lab: model.embed_tokens / model.layers.* / model.norm, lm_head.weight,
                         model.mm_projector.{0,2}.*, model.image_newline,
                         model.vision_tower.vision_tower.vision_model.* */
};
const char *vlm_name_scheme_str(enum vlm_name_scheme s);

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
    /* what the decoder runs: views of the seven linears in their stored format (f32 views of the arrays above
     * for an HF checkpoint; into the mapped .mbq file otherwise, where the float pointers above are NULL unless
     * the format is f32) */
    struct vlm_qmat wq, wk, wv, wo, wgate, wup, wdown;
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
    /* embedding and head as the decoder uses them (f32 views for an HF checkpoint; f16/bf16/q8r/f32 in a .mbq);
     * embed/lm_head above are NULL for a .mbq unless stored as f32 */
    struct vlm_qmat embed_q, lm_head_q;
};

/* Which linear kernels the decoder uses for non-f32 weights. f32 weights always run cpu_linear_ref (the
 * float32 reference the golden tests pin down). */
enum vlm_kernels { VLM_KERNELS_FAST = 0, VLM_KERNELS_REF };

struct mbq_file;
struct cpu_qctx;
struct vlm_layer_stream;

struct vlm_model {
    struct vlm_config config;
    struct vlm_preproc_config preproc;
    struct vlm_weights w;
    float *arena;               /* the one block the weight views point into */
    size_t arena_floats;        /* = parameters loaded (a tied lm_head counted once) */
    char *dir;                  /* checkpoint directory, for messages */
    /* what the loader found, for the summary line and tests */
    enum vlm_name_scheme scheme;
    const char *vision_prefix;  /* e.g. "vision_tower.vision_model." (static storage) */
    bool lm_head_tied;          /* no lm_head tensor: w.lm_head == w.embed */
    const char *file_dtype;     /* "F16", "BF16", "F32" or "mixed" (static storage) */
    int n_files;                /* safetensors files (shards) read */
    /* .mbq models: the mapped file the quantized views point into (NULL for an HF checkpoint) */
    struct mbq_file *mbq;
    const char *quant_method;   /* "none" for an HF checkpoint, else the .mbq header's quant.method */
    /* mutable run state behind the const model: kernel scratch (one decoding thread of control per model) */
    struct cpu_qctx *qctx;
    enum vlm_kernels kernels;
    /* loaded with stream_decoder_linears: the checkpoint stays mapped and one decoder layer's linears at a time are
     * float32 (vlm_model_layer_load); NULL otherwise */
    struct vlm_layer_stream *stream;
    bool fast_f32;              /* float32 parts (vision, projector, f32 linears) on the fast kernels: .mbq models */
    /* the model's copy on a GPU (runtime/gpu.h; vlm_model_use_gpu); NULL runs on the CPU. Owned by the model. */
    struct vlm_gpu *gpu;
};

/* Moves m's decoder and vision tower onto GPU `device` with a KV cache of max_seq tokens; from then on
 * vlm_image_encode and vlm_generate_greedy run there (qwen2_forward, vlmeval's KL, stays on the CPU). Statuses as
 * vlm_gpu_create (VLM_ERR_NO_DEVICE in a CPU-only build or without a GPU). */
enum vlm_status vlm_model_use_gpu(struct vlm_model *m, int device, int64_t max_seq);

/* An .mbq file (vlm_model_load dispatches here when given a regular file): config, preprocessor and tensors from
 * the file; vision, projector, norms and biases converted to the float32 arena; decoder linears, embedding and
 * lm_head used in place from the mapping. Same status contract as vlm_model_load. */
enum vlm_status vlm_model_load_mbq(const char *path, struct vlm_model **out);

/* The tokenizer that travels with the model: inside a .mbq file, or tokenizer.json / tokenizer.model in an HF
 * checkpoint directory. Statuses as tok_load. */
struct vlm_tokenizer;
enum vlm_status vlm_model_load_tokenizer(const struct vlm_model *m, struct vlm_tokenizer **out);

/* True when m is a .mbq that carries a tokenizer. */
bool vlm_model_has_tokenizer(const struct vlm_model *m);
/* One phrase for logs: the decoder's weight formats and the kernels that run them (static buffer). */
const char *vlm_model_kernels_str(const struct vlm_model *m);

/* Checks that preprocessor settings fit the config (crop side = vision image_size, same pinpoints); name is
 * used in messages. */
enum vlm_status vlm_preproc_check(const char *name, const struct vlm_config *c, const struct vlm_preproc_config *pp);

/* y (M, N) = x (M, K) · Wᵀ + b for a float32 weight array of the model (vision tower, projector; W (N, K)): the
 * float32 reference (cpu_linear_ref) for an HF checkpoint or when m->kernels is VLM_KERNELS_REF, the fast f32 GEMM
 * (cpu_qlinear) for a .mbq model. VLM_ERR_OOM only when the fast path's scratch cannot grow (logged). */
enum vlm_status vlm_model_linear_f32(const struct vlm_model *m, float *y, const float *x, const float *w,
                                     const float *b, int64_t M, int64_t N, int64_t K);
/* Attention with the contract of cpu_attention_ref (kernels/ops.h), dispatched the same way. */
void vlm_model_attention(const struct vlm_model *m, float *out, const float *q, const float *k, const float *v,
                         int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd,
                         int64_t kv_stride, int64_t q_pos0, int causal, float *scratch);
/* True when m runs the fast CPU kernels for its float32 parts too (m->fast_f32, set for .mbq models, and kernels
 * not forced to REF). An HF checkpoint stays on the float32 reference. */
bool vlm_model_fast(const struct vlm_model *m);

/* Points the vlm_qmat views of the decoder, embedding and head at the float32 arrays (HF checkpoints). */
void vlm_model_set_f32_views(struct vlm_model *m);

/* Contract of vlm_model_load (include/vlm.h), in detail: parses dir/config.json and dir/preprocessor_config.json
 * (size must equal vision image_size, its pinpoints, if any, must equal the config's), opens the checkpoint
 * (st_checkpoint_open), detects the naming scheme, checks that every tensor it needs exists with exactly the
 * expected shape and a F32/F16/BF16 dtype, applies the tying rule of spec §9 (lm_head tensor if present; else embed
 * when text_config.tie_word_embeddings; else a format error), converts everything to float32 into one arena and
 * rejects NaN/Inf. Vision layers beyond max(feature_layers) and post_layernorm are not loaded. Embedding rows may
 * exceed text.vocab_size (padding); lm_head rows must equal them. Prints one summary line on stderr.
 * Status: VLM_ERR_ARG (NULL), VLM_ERR_IO (missing files), VLM_ERR_FORMAT (bad files, shapes, values),
 * VLM_ERR_UNSUPPORTED (model type, dtype, features), VLM_ERR_OOM (the arena; the message says how much). */

/* Loading options of vlm_model_load_opts. */
struct vlm_load_opts {
    /* Leave the decoder layers' seven linear weights (q, k, v, o, gate, up, down) in the checkpoint's mapping
     * instead of the float32 arena: vlm_model_layer_load widens one layer at a time into a buffer the size of one
     * layer. For the converter, whose float32 model would otherwise cost 4 bytes per parameter (a 7B checkpoint
     * ~30 GB, a 72B ~290 GB). Everything else (vision tower, projector, embedding, head, norms, biases) loads as
     * usual, and the mapped pages of what was widened leave the resident set. The decoder forward of
     * runtime/qwen2.c needs every layer at once and refuses a streamed model. Their NaN/Inf check happens when a
     * layer is widened. */
    bool stream_decoder_linears;
};

/* vlm_model_load with options (NULL = defaults = vlm_model_load). An .mbq path ignores them. */
enum vlm_status vlm_model_load_opts(const char *dir, const struct vlm_load_opts *o, struct vlm_model **out);

/* Makes layer l's float32 linear weights (the q_w .. down_w fields of m->w.layers[l] and their f32 views) valid.
 * A fully loaded checkpoint: nothing to do. A streamed one: converts them from the checkpoint into the one layer
 * buffer unless layer l is already there, and clears the previous layer's fields (so a stale pointer is NULL, not
 * another layer's weights). The caller may modify the buffered weights; vlm_model_layer_drop forgets them.
 * Status: VLM_ERR_ARG (l out of range), VLM_ERR_UNSUPPORTED (a model without float32 linears: a .mbq; logged),
 * VLM_ERR_FORMAT (a non-finite weight; one line naming the file and tensor). */
enum vlm_status vlm_model_layer_load(struct vlm_model *m, int64_t l);

/* A streamed model: forgets the buffered layer, so the next vlm_model_layer_load converts from the checkpoint
 * again (e.g. after the caller scaled the buffered weights). No-op otherwise. */
void vlm_model_layer_drop(struct vlm_model *m);

/* Bytes of float32 weights the model holds resident: the arena plus, when streamed, the one layer buffer. */
size_t vlm_model_resident_bytes(const struct vlm_model *m);

/* The one-line load summary (params, bytes, file dtype, scheme, backend) on stderr. */
void vlm_model_log_summary(const struct vlm_model *m);

#endif
