/* ops.h — one prototype per op, float32, shapes outermost first. The _ref versions are the plain,
 * obviously-correct CPU reference (kernels/cpu/ops_ref.c); every faster or CUDA version is tested against them.
 * All pointers are non-NULL unless stated; outputs never alias inputs unless stated. */
#ifndef VLM_OPS_H
#define VLM_OPS_H

#include <stdint.h>

/* y (M, N) = x (M, K) · W^T + b, W (N, K) row-major as HF Linear stores it; b (N) or NULL.
 * Accumulates each dot product in float32 in index order. */
void cpu_linear_ref(float *y, const float *x, const float *w, const float *b, int64_t M, int64_t N, int64_t K);

/* LayerNorm over the last dim, per row: y = (x - mean) / sqrt(var + eps) * g + b, biased variance.
 * x, y (M, n); in-place allowed (y == x). */
void cpu_layernorm_ref(float *y, const float *x, const float *g, const float *b, int64_t M, int64_t n, float eps);

/* RMSNorm per row: y = x / sqrt(mean(x^2) + eps) * g. In-place allowed. */
void cpu_rmsnorm_ref(float *y, const float *x, const float *g, int64_t M, int64_t n, float eps);

/* Elementwise activations, in place over n values. */
void cpu_gelu_tanh_ref(float *x, int64_t n);
void cpu_gelu_erf_ref(float *x, int64_t n);
void cpu_silu_ref(float *x, int64_t n);
/* a (n) = silu(a) * b (n) — SwiGLU gate. */
void cpu_swiglu_ref(float *a, const float *b, int64_t n);

/* Softmax in place over each of M rows of length n (max-subtracted, float32). */
void cpu_softmax_ref(float *x, int64_t M, int64_t n);

/* RoPE, NeoX rotate-half pairing (j with j + hd/2), applied in place to x (n_tok, n_heads, hd) for tokens at
 * positions pos0 .. pos0+n_tok-1. inv_freq and the angle are float32 as HF computes them. */
void cpu_rope_neox_ref(float *x, int64_t n_tok, int64_t n_heads, int64_t hd, int64_t pos0, float theta);

/* Scaled dot-product attention with grouped KV heads.
 * q (n_q, n_heads, hd); k, v (n_kv_tok, n_kv_heads, hd) at row stride kv_stride floats per token;
 * out (n_q, n_heads, hd). Query i sits at absolute position q_pos0 + i; key j at position j.
 * causal: key j visible to query i iff j <= q_pos0 + i. scale = 1/sqrt(hd). Softmax in float32.
 * scratch: at least n_kv_tok floats. */
void cpu_attention_ref(float *out, const float *q, const float *k, const float *v, int64_t n_q, int64_t n_kv_tok,
                       int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride, int64_t q_pos0, int causal,
                       float *scratch);

/* The same contract, fast (kernels/cpu/attention.c): threaded over vlm_pool_default(), SIMD by cpu_isa_detect(),
 * flash-style online softmax in float32 (within 1e-5 · (1 + |ref|) of cpu_attention_ref). scratch is unused (may
 * be NULL); allocates nothing. */
void cpu_attention(float *out, const float *q, const float *k, const float *v, int64_t n_q, int64_t n_kv_tok,
                   int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride, int64_t q_pos0, int causal,
                   float *scratch);

#endif
