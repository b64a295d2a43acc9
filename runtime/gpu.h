/* gpu.h — a model on the GPU: the decoder (every layer, FP16 activations, FP16 KV cache, the decode step captured in
 * a CUDA graph) and the vision tower + projector, over the op contract of kernels/cuda_backend.h. Plain C: it
 * compiles into the CPU-only build too, where vlm_gpu_create reports VLM_ERR_NO_DEVICE.
 *
 * Memory: everything is allocated by vlm_gpu_create — weights (decoder linears in their .mbq format, F32/BF16 as
 * F16; vision/projector F16; norms and biases F32), the KV cache for max_seq tokens, activations for one prefill chunk
 * of VLM_GPU_CHUNK tokens and for the largest image, the op scratch — and nothing per token. The embedding table
 * stays on the host (one row per decode step is looked up there and uploaded with the step's inputs). */
#ifndef VLM_GPU_H
#define VLM_GPU_H

#include <stdint.h>

#include "model.h"

/* Prompt tokens per prefill pass: bounds the activation buffers (a 9,000-token image prompt runs in 9 passes). */
#define VLM_GPU_CHUNK 1024

struct vlm_gpu;

/* Uploads m to device `device` with a KV cache of max_seq tokens. Statuses: VLM_ERR_NO_DEVICE (no GPU / CPU-only
 * build; one line), VLM_ERR_UNSUPPORTED (a model the GPU path does not run, e.g. a streamed model; one line),
 * VLM_ERR_OOM (names what did not fit, with bytes asked and free), VLM_ERR_CUDA. */
enum vlm_status vlm_gpu_create(const struct vlm_model *m, int device, int64_t max_seq, struct vlm_gpu **out);
void vlm_gpu_free(struct vlm_gpu *g); /* NULL is a no-op */

/* One line for logs: device name, memory used, formats. */
const char *vlm_gpu_describe(const struct vlm_gpu *g);

/* Forgets the cached tokens (a new prompt starts at position 0). */
void vlm_gpu_reset(struct vlm_gpu *g);
/* Forgets the cached tokens from position n on (n <= the count cached; a larger n changes nothing): a session
 * keeps the prefix its next prompt shares. */
void vlm_gpu_truncate(struct vlm_gpu *g, int64_t n);
/* Tokens the device cache holds at most (vlm_gpu_create's max_seq). */
int64_t vlm_gpu_max_seq(const struct vlm_gpu *g);
/* Tokens cached so far. */
int64_t vlm_gpu_n_past(const struct vlm_gpu *g);

/* The decoder on n new tokens (embeddings x_host (n, d) FP32 on the host), as qwen2_forward: appends to the cache,
 * advances the position. logits_host: NULL, or (n, V) when all_logits, else (V) for the last token. next_id: NULL, or
 * receives argmax of the last token's logits (computed on the device). n == 1 replays the captured decode graph.
 * VLM_ERR_ARG when the cache would overflow. */
enum vlm_status vlm_gpu_forward(struct vlm_gpu *g, const float *x_host, int64_t n, float *logits_host, int all_logits,
                                int64_t *next_id);

/* vit_forward + vit_project on the GPU: pixels_host (n_crops, 3, S, S) -> out_host (n_crops, P*P, d) FP32 projected
 * features (ready for img_pack_features). VLM_ERR_ARG when n_crops exceeds what was allocated (the config's most). */
enum vlm_status vlm_gpu_encode_image(struct vlm_gpu *g, const float *pixels_host, int64_t n_crops, float *out_host);

#endif
