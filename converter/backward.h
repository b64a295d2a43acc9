/* backward.h — the float32 gradient pass of MBQ's modality sensitivity (shared/spec/mbq.md §4): for one
 * calibration sample, the Qwen2 decoder forward on given input embeddings, the mean next-token cross-entropy over
 * the supervised positions, and the backward of activation gradients only (no weight gradients, no 1/128 loss
 * factor) down to the decoder input. Per layer it yields G_attn = ∂L/∂(o_proj output) = ∂L/∂h_mid and
 * G_mlp = ∂L/∂(down_proj output) = ∂L/∂h_out, reduced to sums of |G| over the vision and the answer positions
 * (mbq.md §4 step 3; the caller divides by token count x d and averages over samples).
 *
 * A plain CPU reference: the forward uses the float32 reference ops (kernels/ops.h), the adjoints accumulate in
 * double. Checked against torch autograd (tests/golden/grad_ref.bin) and against finite differences.
 *
 * Note for the caller: in the last layer, h_mid and h_out at position t reach the loss only through position t's
 * own logits, so G_attn / G_mlp of the last layer vanish exactly at every position that does not predict a
 * supervised token — normally all vision positions. Its ρ is then 0 (the reference gives the same), and the
 * median floor of mbq.md §4 step 7 is what sets r for that layer. */
#ifndef VLM_CONV_BACKWARD_H
#define VLM_CONV_BACKWARD_H

#include <stdint.h>

#include "runtime/model.h"
#include "vlm.h"

struct conv_grad_stats {
    int64_t n_layers;
    /* (n_layers) each: sum over (positions in the mask) x (all d channels) of |G| */
    double *vis_attn, *ans_attn, *vis_mlp, *ans_mlp;
    int64_t n_vis, n_ans;   /* positions in vis and in ans (ans counted as given, position 0 included) */
    int64_t n_target;       /* supervised positions that enter the loss: t >= 1 with ans[t] */
    double loss;            /* mean cross-entropy over those n_target positions */
};

/* One sample. m: an HF checkpoint loaded in float32, fully or with streamed decoder linears (each layer is widened
 * through vlm_model_layer_load when needed: twice per sample, forward and backward; a .mbq model is
 * VLM_ERR_UNSUPPORTED). emb (n, d): decoder input embeddings, image features already scattered in. ids (n): token
 * ids; ids[t+1] is the target of position t and must lie in [0, vocab rows) where ans[t+1]. vis, ans (n): masks
 * (nonzero = in the set); position t (t >= 1) enters the loss iff ans[t].
 * On success fills *out (arrays allocated here; release with conv_grad_stats_free).
 * g_attn, g_mlp: optional (n_layers, n, d) outputs of the full G_attn / G_mlp, g_emb: optional (n, d) output of
 * ∂L/∂emb (for tests), each NULL when unwanted.
 * Memory: the n x d residual at each layer boundary plus one layer's activations and gradients (O(n·(d+f)) and one
 * vocabulary row); never the n x n attention probabilities of more than one (query, head) row.
 * Status: VLM_ERR_ARG (one error line) for NULL pointers, n < 2, no vision position, no supervised position
 * t >= 1 (mbq.md §4: such samples are rejected), or a target id out of range; VLM_ERR_UNSUPPORTED for a model
 * without float32 weights; VLM_ERR_OOM. *out is untouched on failure. */
enum vlm_status conv_grad_sample(struct vlm_model *m, const float *emb, const int64_t *ids, const uint8_t *vis,
                                 const uint8_t *ans, int64_t n, struct conv_grad_stats *out, float *g_attn,
                                 float *g_mlp, float *g_emb);

/* Frees the arrays of s and zeroes it; NULL or a zeroed struct is fine. */
void conv_grad_stats_free(struct conv_grad_stats *s);

#endif
