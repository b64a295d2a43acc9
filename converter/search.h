/* search.h — the channel-wise scale search shared by AWQ, SmoothQuant-free MBQ and their W4A8 variants
 * (shared/spec/mbq.md §5-§7): activation statistics, the normalised scales of one alpha, quantize-in-the-scaled-
 * domain, the modality-weighted L1 loss, the 20-point alpha grid over a caller's module evaluation, and the
 * evaluation of the three searchable groups of a Qwen2 decoder layer on a batch of calibration tokens.
 *
 * Conventions: a batch is T tokens, the concatenation of n_seg samples (segment s = tokens seg[s] .. seg[s+1]-1,
 * positions 0.. within its sample; attention never crosses samples). vis/ans (T) are the modality masks of
 * mbq.md §3 (NULL: the unweighted loss over all tokens, as AWQ). Weights are float32 (out, in) row-major. */
#ifndef VLM_CONV_SEARCH_H
#define VLM_CONV_SEARCH_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/quant.h"
#include "runtime/model.h"
#include "vlm.h"

#define CONV_GRID 20 /* alpha = 0, 0.05, ..., 0.95 (mbq.md §6 step 2b) */

/* stat (k) = mean over the T tokens of |x_tj| (mbq.md §6 step 2a: a mean, over every token, pads included). */
void conv_act_stat(const float *x, int64_t T, int64_t k, float *stat);

/* s (k) = max(stat^alpha, 1e-4), then s /= sqrt(max(s) * min(s)) (mbq.md §6 step 2c). alpha = 0 gives s = 1. */
void conv_scales(const float *stat, int64_t k, float alpha, float *s);

/* The candidate linear of one group member: out (n, k) = Q(W · diag(s)) in format f, dequantized (W3G128/W4G128:
 * §2.1; W4A8: §2.2 per-channel), NOT yet divided by s. The caller feeds it x / s (and, for W4A8, the per-token
 * int8 fake quantization of x / s), which equals the folded model's arithmetic exactly. s NULL means s = 1. */
void conv_quant_scaled(enum vlm_qformat f, const float *w, int64_t n, int64_t k, const float *s, float *out);

/* The §5 loss, un-normalised (the denominator is constant over a search): Σ_{t∈ans} Σ_c |o − ô| + r ·
 * Σ_{t∈vis} Σ_c |o − ô|; with vis == ans == NULL, Σ over every token. o, ô (T, C). */
double conv_loss(const float *o, const float *ohat, int64_t T, int64_t C, const uint8_t *vis, const uint8_t *ans,
                 double r);

/* One searchable group of a decoder layer (mbq.md §6 table; group 2 v->o never applies to Qwen2's GQA). */
enum conv_group { CONV_GROUP_QKV = 0, CONV_GROUP_GATE_UP = 1, CONV_GROUP_DOWN = 2 };

/* A layer's calibration batch: the layer input h (T, d) from the float pipeline, and what the groups need. */
struct conv_layer_batch {
    const struct vlm_model *m;  /* float32 weights (an HF checkpoint's model); m->qctx used for the GEMMs */
    int64_t layer;
    int64_t T, n_seg;
    const int64_t *seg;         /* (n_seg + 1) */
    const uint8_t *vis, *ans;   /* (T) or NULL */
    const float *h;             /* (T, d) layer input */
};

/* Runs the search of group g with weight format f and ratio r (1 and masks NULL for AWQ): 20 alphas, each
 * evaluating the inspected module (QKV: the whole attention incl. o_proj in float; GATE_UP: the whole MLP with down
 * in float; DOWN: down_proj) with only the group's linears quantized, against the float module's output. Writes the
 * chosen scales (len: d for QKV and GATE_UP, f for DOWN), the alpha, and the loss of every alpha (losses may be
 * NULL). alpha = 0 is plain RTN, so the chosen loss never exceeds RTN's. VLM_ERR_OOM on allocation failure. */
enum vlm_status conv_search_group(const struct conv_layer_batch *b, enum conv_group g, enum vlm_qformat f, double r,
                                  float *best_s, float *best_alpha, double *losses);

/* Loss of group g on the batch with given scales (NULL: RTN), same evaluation as the search. */
enum vlm_status conv_group_loss(const struct conv_layer_batch *b, enum conv_group g, enum vlm_qformat f, double r,
                                const float *s, double *loss);

/* out (T, d) = the layer's float output on the batch (the next layer's input). */
enum vlm_status conv_layer_forward(const struct conv_layer_batch *b, float *out);

/* SmoothQuant's fixed migration scales for a norm -> linears group (QKV or GATE_UP; mbq.md §8):
 * s_j = max_t |x_tj|^alpha / max_{rows of the group's linears} |W_rj|^(1 - alpha), both clamped >= 1e-5. */
enum vlm_status conv_smooth_group(const struct conv_layer_batch *b, enum conv_group g, float alpha, float *s);

/* Folds the group's scales into the float weights of m's layer (exact in float, mbq.md §6.1): QKV: input_layernorm
 * γ /= s, q/k/v columns *= s; GATE_UP: post_attention_layernorm γ /= s, gate/up columns *= s; DOWN: up rows /= s,
 * down columns *= s. m's float weights must be writable (the converter owns its loaded model). */
void conv_fold_group(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s);
/* The two halves of conv_fold_group, for a model whose decoder linears are streamed (vlm_load_opts): the
 * calibration folds the norms (resident) as it goes, and the writer folds the linears when it widens the layer
 * again to quantize it. Both halves together are conv_fold_group, operation for operation. */
void conv_fold_norm(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s);
void conv_fold_linears(struct vlm_model *m, int64_t layer, enum conv_group g, const float *s);

#endif
