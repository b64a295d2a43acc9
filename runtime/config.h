/* config.h — the model configuration read from an HF checkpoint's config.json and
 * preprocessor_config.json (through cJSON). Every value is validated against sane bounds at parse time,
 * so later code may trust it: positive dims, heads dividing the width, bounded pinpoint list. */
#ifndef VLM_CONFIG_H
#define VLM_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "vlm.h"

#define VLM_MAX_PINPOINTS 64
#define VLM_MAX_FEATURE_LAYERS 8

enum vlm_act {
    VLM_ACT_GELU_TANH, /* "gelu_pytorch_tanh", "gelu_new", "gelu_fast" family: tanh approximation */
    VLM_ACT_GELU_ERF,  /* "gelu": exact erf form */
    VLM_ACT_SILU,      /* "silu" / "swish" */
};

/* Qwen2 decoder (text_config). */
struct vlm_text_config {
    int64_t hidden_size;       /* d */
    int64_t intermediate_size; /* f */
    int64_t n_layers;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t head_dim;          /* d / n_heads unless config gives head_dim */
    int64_t vocab_size;
    int64_t max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;          /* HF computes inv_freq in float32 from this */
    enum vlm_act hidden_act;   /* must be silu for Qwen2 */
    bool tie_word_embeddings;  /* text_config's flag (the one HF honours for the composite model) */
};

/* SigLIP vision tower (vision_config). */
struct vlm_vision_config {
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t n_layers;          /* layers present in the checkpoint */
    int64_t n_heads;
    int64_t head_dim;          /* hidden_size / n_heads */
    int64_t image_size;        /* crop side, e.g. 384 */
    int64_t patch_size;        /* e.g. 14 */
    int64_t n_channels;        /* 3 */
    int64_t n_patches_side;    /* image_size / patch_size (27) */
    float layer_norm_eps;
    enum vlm_act hidden_act;
};

enum vlm_select_strategy { VLM_SELECT_FULL, VLM_SELECT_DEFAULT };

struct vlm_config {
    struct vlm_text_config text;
    struct vlm_vision_config vision;
    /* Indices into the tower's hidden-state list (0 = embeddings, i = output of layer i; negative from the
     * end), already resolved to 0..n_layers; several are concatenated on the channel axis. */
    int n_feature_layers;
    int feature_layers[VLM_MAX_FEATURE_LAYERS];
    enum vlm_select_strategy select_strategy;
    int64_t n_pinpoints;
    int64_t pinpoints[VLM_MAX_PINPOINTS][2]; /* (height, width), in file order */
    int64_t anyres_max;        /* 9 for "anyres_max_9"; 0 when vision_aspect_ratio has no max */
    int64_t image_token_index;
    enum vlm_act projector_act;
    bool projector_bias;
    bool tie_word_embeddings;  /* top-level flag, informational; text.tie_word_embeddings decides */
};

/* preprocessor_config.json */
struct vlm_preproc_config {
    int64_t size_h, size_w;    /* crop size, e.g. 384 x 384 */
    float image_mean[3];
    float image_std[3];
    double rescale_factor;     /* 1/255 */
    int resample;              /* PIL filter id; 3 = BICUBIC (the only one supported) */
    bool do_rescale, do_normalize, do_convert_rgb;
    int64_t n_pinpoints;       /* the processor's own image_grid_pinpoints; 0 when the file has none */
    int64_t pinpoints[VLM_MAX_PINPOINTS][2]; /* (height, width); vlm_model_load requires them == config's */
};

/* Parses config.json at path. VLM_ERR_IO if missing, VLM_ERR_FORMAT (one line naming the file and the key)
 * for bad JSON, duplicate keys, missing keys or absurd values, VLM_ERR_UNSUPPORTED for another model type or a
 * feature we do not run (sliding window, scaled RoPE, select strategy "default", non-square crops, ...).
 * Defaults (transformers 5.24): vision_config absent -> the so400m-minus-one-layer dims; vision hidden_act
 * gelu_pytorch_tanh, layer_norm_eps 1e-6, num_channels 3; text max_position_embeddings 32768, rms_norm_eps 1e-6,
 * rope_theta 10000 (when neither rope_theta nor rope_parameters.rope_theta is given), hidden_act silu,
 * tie_word_embeddings false, head_dim hidden/heads; vision_feature_layer -1; select strategy "full";
 * vision_aspect_ratio "anyres_max_9"; image_grid_pinpoints the 36 multiples of 384; projector "gelu" with bias;
 * image_token_index (or image_token_id) 151646. Required: text_config and its dims (hidden_size,
 * intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size) and, when
 * vision_config is present, its dims. *out untouched on failure. */
enum vlm_status vlm_config_parse(const char *path, struct vlm_config *out);
/* Parses preprocessor_config.json; missing optional keys take the LlavaOnevisionImageProcessor class defaults
 * (size 384x384, OpenAI-CLIP mean/std, rescale 1/255, resample 3, do_* true). size may be {height, width} or
 * {shortest_edge}. VLM_ERR_UNSUPPORTED for non-square size, resample != 3, do_resize false, do_center_crop true,
 * crop_size != size. *out untouched on failure. */
enum vlm_status vlm_preproc_parse(const char *path, struct vlm_preproc_config *out);

/* The same two parsers over an already-parsed JSON object (a .mbq header section); name is used in messages
 * (e.g. "model.mbq: config"). Duplicate keys are rejected here too. */
struct cJSON;
enum vlm_status vlm_config_parse_json(const struct cJSON *root, const char *name, struct vlm_config *out);
enum vlm_status vlm_preproc_parse_json(const struct cJSON *root, const char *name, struct vlm_preproc_config *out);

/* Parameter counts implied by a config (independent of any weights file). */
struct vlm_param_count {
    int64_t vision;        /* tower up to the layers kept, incl. embeddings and post-LN */
    int64_t projector;
    int64_t text_linear;   /* q,k,v,o,gate,up,down weights (no biases) over all layers */
    int64_t text_other;    /* biases, norms */
    int64_t embedding;     /* vocab x d */
    int64_t lm_head;       /* 0 when tied */
    int64_t total;
};
/* Counts from the config alone: embedding and lm_head use text.vocab_size (the base vocabulary), not the padded
 * row count of a checkpoint; vision counts layers 0..vlm_config_n_vit_layers-1 plus patch/position embeddings and
 * post-LN; total also counts image_newline. c must come from vlm_config_parse (the caps keep products in int64). */
void vlm_config_count_params(const struct vlm_config *c, struct vlm_param_count *out);

/* Vision layers the selected features need: max(feature_layers) (0 when only the embeddings are selected). */
int64_t vlm_config_n_vit_layers(const struct vlm_config *c);

/* Memory needs implied by a config (implemented in model_load.c). */
struct vlm_mem_estimate {
    struct vlm_param_count params;
    int64_t fp32_bytes;            /* the float32 reference weights (this runtime's arena, before vocab padding) */
    int64_t fp16_bytes;            /* the same weights in fp16/bf16 */
    int64_t kv_bytes_per_token_fp16; /* 2 (k, v) x n_layers x n_kv_heads x head_dim x 2 bytes */
    int64_t kv_bytes_per_token_fp32;
};
void vlm_config_estimate_memory(const struct vlm_config *c, struct vlm_mem_estimate *out);

#endif
