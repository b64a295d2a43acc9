/* cuda_backend.h — the C boundary of the CUDA backend (the .cu files under kernels/cuda, extern "C").
 * CPU-only builds link kernels/cuda_stub.c instead, where every call reports VLM_ERR_NO_DEVICE, so no caller needs
 * an #ifdef.
 *
 * Op contract (the GPU twin of kernels/ops.h and kernels/quant.h; every op is tested against those CPU references
 * in tests/test_cuda_*.c):
 *   - activations are FP16 ("half", stored as uint16_t on the C side) between ops; every reduction (dot product,
 *     norm statistics, softmax) accumulates in FP32;
 *   - the residual stream of the decoder and of the vision tower is FP32 (so the many adds into it do not round to
 *     FP16 each time), and so are logits;
 *   - norms/biases are FP32 on the device; linear weights keep their .mbq format (kernels/quant.h) bit for bit, except
 *     F32 and BF16 matrices, which become F16 at upload (the FP16 path);
 *   - every pointer argument of an op is a DEVICE pointer unless its name ends in _host; all ops are asynchronous on
 *     the context's stream and allocate nothing (scratch comes from the context, sized at cuda_ctx_reserve);
 *   - an op's failure to launch is reported by the next cuda_ctx_sync (VLM_ERR_CUDA, logged with the CUDA error).
 */
#ifndef VLM_CUDA_BACKEND_H
#define VLM_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/quant.h"
#include "vlm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this build has the CUDA backend (nvcc found, CUDA=1), 0 in a CPU-only build. */
int cuda_backend_compiled(void);

/* Counts usable CUDA devices. VLM_ERR_NO_DEVICE (and *n_devices = 0) when there is no driver or device:
 * a recoverable condition, the caller falls back to the CPU. */
enum vlm_status cuda_backend_probe(int *n_devices);

/* ---- context: one device, one stream, one cuBLAS handle, one scratch arena */
struct cuda_ctx;

/* Opens device `device` (0-based). VLM_ERR_NO_DEVICE when absent (one line says so), VLM_ERR_CUDA when the driver
 * fails, VLM_ERR_UNSUPPORTED below compute capability 8.0 (the int8 tensor-core and bf16 paths need sm_80). */
enum vlm_status cuda_ctx_create(int device, struct cuda_ctx **out);
void cuda_ctx_free(struct cuda_ctx *c); /* NULL is a no-op */

struct cuda_device_info {
    char name[256];
    int cc_major, cc_minor, n_sm;
    size_t total_bytes, free_bytes;
    double peak_gbps; /* theoretical DRAM bandwidth: 2 x memory clock x bus width (from the device attributes) */
};
void cuda_ctx_info(struct cuda_ctx *c, struct cuda_device_info *out);

/* Grows the context's scratch arena to at least `bytes` (dequantized weight tiles, split-K partials, int8
 * activations). Call once at load with the largest need; ops assert they fit. VLM_ERR_OOM names `what`. */
enum vlm_status cuda_ctx_reserve(struct cuda_ctx *c, size_t bytes, const char *what);

/* Waits for the stream; VLM_ERR_CUDA (logged: the CUDA error string and `where`) when anything queued failed. */
enum vlm_status cuda_ctx_sync(struct cuda_ctx *c, const char *where);

/* ---- memory: device buffers. cuda_malloc's OOM message names `what` and the bytes asked and free. */
enum vlm_status cuda_malloc(struct cuda_ctx *c, void **dev, size_t bytes, const char *what);
void cuda_free(struct cuda_ctx *c, void *dev); /* NULL is a no-op */
enum vlm_status cuda_upload(struct cuda_ctx *c, void *dev, const void *host, size_t bytes);   /* synchronous */
enum vlm_status cuda_download(struct cuda_ctx *c, void *host, const void *dev, size_t bytes); /* synchronous */
enum vlm_status cuda_memset0(struct cuda_ctx *c, void *dev, size_t bytes);                   /* asynchronous */

/* FP32 <-> FP16 on the device (round to nearest even), n values. */
void cuda_f32_to_f16(struct cuda_ctx *c, uint16_t *dst, const float *src, int64_t n);
void cuda_f16_to_f32(struct cuda_ctx *c, float *dst, const uint16_t *src, int64_t n);

/* ---- weights on the device */
struct cuda_qmat {
    enum vlm_qformat fmt; /* F16, Q8R, W3G128, W4G128 or W4A8 (F32/BF16 are converted to F16 at upload) */
    int64_t n, k;
    void *blob;           /* the whole matrix laid out by vlm_qlayout(fmt, n, k) (device memory) */
    const void *codes;    /* views into blob, as struct vlm_qmat */
    const void *scales;
    const uint8_t *zeros;
};
/* Copies a host matrix (any format of quant.h) to the device; F32/BF16 become F16. VLM_ERR_OOM names `what`. */
enum vlm_status cuda_qmat_upload(struct cuda_ctx *c, const struct vlm_qmat *host, struct cuda_qmat *dev,
                                 const char *what);
void cuda_qmat_free(struct cuda_ctx *c, struct cuda_qmat *dev);
/* Scratch bytes cuda_linear needs for this matrix at M rows (dequantized F16 copy for the GEMM path, int8
 * activations, ...): pass the maximum over all matrices and M to cuda_ctx_reserve. */
size_t cuda_linear_scratch_bytes(const struct cuda_qmat *w, int64_t M);

/* How a linear stores its result y (M, n). */
enum cuda_out {
    CUDA_OUT_F16 = 0, /* (uint16_t *) y = x·Ŵᵀ + b, rounded to FP16 */
    CUDA_OUT_F32,     /* (float *)    y = x·Ŵᵀ + b */
    CUDA_OUT_F32_ADD, /* (float *)    y += x·Ŵᵀ + b: the residual add fused into the epilogue */
};

/* y (M, n) = x (M, k) · Ŵᵀ + b, x FP16, b FP32 (n) or NULL; y must not alias x. Kernels by format and M:
 *   M <= 8:  fused dequant-GEMV (W3G128, W4G128, Q8R, F16: FP32 accumulation of x·ŵ with the canonical ŵ of
 *            quant.h; W4A8: x quantized per token to int8 as quant.h says, exact int32 dot products, the same
 *            epilogue as cpu_qlinear_ref: (float)(s_t·s_row)·(float)acc + b);
 *   M > 8:   W4A8: int8 tensor-core GEMM with the per-token activation quantization fused (bit-identical
 *            arithmetic to the GEMV); F16: cuBLAS; W3G128/W4G128/Q8R: dequantize to F16 scratch, then cuBLAS.
 * Tolerance vs cpu_qlinear_ref with the same FP16-rounded x: see tests/test_cuda_linear.c. */
void cuda_linear(struct cuda_ctx *c, void *y, enum cuda_out out, const uint16_t *x, const struct cuda_qmat *w,
                 const float *b, int64_t M);

/* ---- elementwise and normalization ops (shapes as kernels/ops.h) */
/* y (M, n) FP16 = RMSNorm(x (M, n) FP32) · g */
void cuda_rmsnorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, int64_t M, int64_t n, float eps);
/* y (M, n) FP16 = LayerNorm(x (M, n) FP32) · g + b (biased variance) */
void cuda_layernorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, const float *b, int64_t M,
                    int64_t n, float eps);
/* in place over n FP16 values: gelu (tanh form), gelu (erf form) */
void cuda_gelu_tanh(struct cuda_ctx *c, uint16_t *x, int64_t n);
void cuda_gelu_erf(struct cuda_ctx *c, uint16_t *x, int64_t n);
/* a (n) FP16 = silu(a) · b (n) FP16, in place: the SwiGLU gate */
void cuda_swiglu(struct cuda_ctx *c, uint16_t *a, const uint16_t *b, int64_t n);
/* y (n) FP32 += x (n) FP32 */
void cuda_add_f32(struct cuda_ctx *c, float *y, const float *x, int64_t n);
/* RoPE NeoX in place on x (n_tok, n_heads, hd) FP16 at row stride `stride` halves per token; the token i sits at
 * position pos0 + i. When pos_dev is non-NULL, pos0 is read from *pos_dev on the device instead (CUDA graphs). */
void cuda_rope_neox(struct cuda_ctx *c, uint16_t *x, int64_t n_tok, int64_t n_heads, int64_t hd, int64_t stride,
                    int64_t pos0, const int32_t *pos_dev, float theta);
/* out (n, d) FP32 = rows ids (n, device int32) of an embedding table in any format (F16, Q8R, F32->F16 upload) */
void cuda_embed(struct cuda_ctx *c, float *out, const int32_t *ids, int64_t n, const struct cuda_qmat *table);

/* ---- decoder plumbing (kernels/cuda/decode_ops.cu) */
/* Copies n_tok rows of `width` halves from src (dense) into cache rows pos0 .. pos0+n_tok-1 (row stride `width`);
 * with pos_dev non-NULL the first row is *pos_dev (a captured decode step writes where the position says). */
void cuda_kv_store(struct cuda_ctx *c, uint16_t *cache, const uint16_t *src, int64_t n_tok, int64_t width,
                   int64_t pos0, const int32_t *pos_dev);
/* *out_dev = index of the largest of x (n) FP32, the lowest index on ties (torch.argmax, vlm_argmax); NaN never
 * wins. One block; n up to 2^31. */
void cuda_argmax(struct cuda_ctx *c, int32_t *out_dev, const float *x, int64_t n);
/* y (M, n) FP32 += b (n) broadcast over rows (the vision tower's position embedding per crop uses it with M = P*P,
 * n = hidden, once per crop). */
void cuda_add_rows_f32(struct cuda_ctx *c, float *y, const float *b, int64_t M, int64_t n);

/* ---- attention, contract of cpu_attention_ref (kernels/ops.h) with FP16 q/k/v/out and FP32 softmax:
 * q (n_q, n_heads, hd) at row stride q_stride halves; k, v (n_kv_tok, n_kv_heads, hd) at kv_stride halves per token;
 * out (n_q, n_heads, hd) dense. hd in {64, 72, 80, 96, 128} (SigLIP 72 at so400m, 64 at base; Qwen2 64 at 0.5B, 128
 * at 7B/72B; other hd up to 256 run a slower generic kernel). n_q >= 1: tiled flash attention (prefill, vision);
 * n_q == 1: split-K decode attention over the context's scratch.
 * When n_kv_dev is non-NULL, n_kv_tok and q_pos0 are taken as *n_kv_dev and *n_kv_dev - n_q on the device
 * (decode inside a CUDA graph; n_kv_tok is then the upper bound that sizes the grid). */
void cuda_attention(struct cuda_ctx *c, uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                    int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t q_stride,
                    int64_t kv_stride, int64_t q_pos0, int causal, const int32_t *n_kv_dev);
/* Scratch bytes cuda_attention needs for a decode step over up to n_kv_tok keys. */
size_t cuda_attention_scratch_bytes(int64_t n_heads, int64_t hd, int64_t n_kv_tok);

/* ---- CUDA graphs: the decode step is captured once and replayed per token (its inputs — the token's embedding,
 * its position — are copied into fixed device buffers before each launch; kernels read positions from there). */
struct cuda_graph;
enum vlm_status cuda_graph_begin(struct cuda_ctx *c);                        /* start capturing the stream */
enum vlm_status cuda_graph_end(struct cuda_ctx *c, struct cuda_graph **out); /* stop, instantiate */
enum vlm_status cuda_graph_launch(struct cuda_ctx *c, struct cuda_graph *g);
void cuda_graph_free(struct cuda_graph *g); /* NULL is a no-op */

/* ---- timing for benchmarks: milliseconds of GPU time between begin and end on the context's stream (synchronizes) */
enum vlm_status cuda_timer_begin(struct cuda_ctx *c);
enum vlm_status cuda_timer_end(struct cuda_ctx *c, double *ms);

#ifdef __cplusplus
}
#endif
#endif
