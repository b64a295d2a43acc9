/* siglip.h — the SigLIP vision tower up to the selected feature layer(s), and the mlp2x_gelu projector,
 * float32 reference (shared/spec/llava-onevision.md §3-§4). */
#ifndef VLM_SIGLIP_H
#define VLM_SIGLIP_H

#include <stdint.h>

#include "../runtime/model.h"

/* Runs the tower on n_crops crops pixels (n_crops, 3, S, S) and writes the selected features
 * feats (n_crops, P*P, hidden * n_feature_layers). VLM_ERR_OOM on scratch allocation failure. */
enum vlm_status vit_forward(const struct vlm_model *m, const float *pixels, int64_t n_crops, float *feats);

/* Projector: out (n, d) = W2 · act(W1 · x + b1) + b2 for x (n, hidden * n_feature_layers). */
enum vlm_status vit_project(const struct vlm_model *m, const float *x, int64_t n, float *out);

#endif
