/* cuda_stub.c — the CPU-only build's stand-in for the CUDA backend, so the runtime needs no #ifdef CUDA.
 * Linked only when CUDA=0 (the Makefile swaps in the kernels/cuda objects otherwise). Nothing can reach an op
 * without a context, and no context can be created here, so the ops are empty. */
#include <string.h>

#include "cuda_backend.h"

int cuda_backend_compiled(void) { return 0; }

enum vlm_status cuda_backend_probe(int *n_devices) {
    *n_devices = 0;
    return VLM_ERR_NO_DEVICE;
}

enum vlm_status cuda_ctx_create(int device, struct cuda_ctx **out) {
    (void)device;
    *out = NULL;
    return VLM_ERR_NO_DEVICE;
}
void cuda_ctx_free(struct cuda_ctx *c) { (void)c; }
void cuda_ctx_info(struct cuda_ctx *c, struct cuda_device_info *out) { memset(out, 0, sizeof *out); }
enum vlm_status cuda_ctx_reserve(struct cuda_ctx *c, size_t bytes, const char *what) { return VLM_ERR_NO_DEVICE; }
enum vlm_status cuda_ctx_sync(struct cuda_ctx *c, const char *where) { return VLM_ERR_NO_DEVICE; }
enum vlm_status cuda_malloc(struct cuda_ctx *c, void **dev, size_t bytes, const char *what) {
    *dev = NULL;
    return VLM_ERR_NO_DEVICE;
}
void cuda_free(struct cuda_ctx *c, void *dev) {}
enum vlm_status cuda_upload(struct cuda_ctx *c, void *dev, const void *host, size_t bytes) { return VLM_ERR_NO_DEVICE; }
enum vlm_status cuda_download(struct cuda_ctx *c, void *host, const void *dev, size_t bytes) {
    return VLM_ERR_NO_DEVICE;
}
enum vlm_status cuda_memset0(struct cuda_ctx *c, void *dev, size_t bytes) { return VLM_ERR_NO_DEVICE; }
void cuda_f32_to_f16(struct cuda_ctx *c, uint16_t *dst, const float *src, int64_t n) {}
void cuda_f16_to_f32(struct cuda_ctx *c, float *dst, const uint16_t *src, int64_t n) {}
enum vlm_status cuda_qmat_upload(struct cuda_ctx *c, const struct vlm_qmat *host, struct cuda_qmat *dev,
                                 const char *what) {
    return VLM_ERR_NO_DEVICE;
}
void cuda_qmat_free(struct cuda_ctx *c, struct cuda_qmat *dev) {}
size_t cuda_linear_scratch_bytes(const struct cuda_qmat *w, int64_t M) { return 0; }
void cuda_linear(struct cuda_ctx *c, void *y, enum cuda_out out, const uint16_t *x, const struct cuda_qmat *w,
                 const float *b, int64_t M) {}
void cuda_rmsnorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, int64_t M, int64_t n, float eps) {}
void cuda_layernorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, const float *b, int64_t M,
                    int64_t n, float eps) {}
void cuda_gelu_tanh(struct cuda_ctx *c, uint16_t *x, int64_t n) {}
void cuda_gelu_erf(struct cuda_ctx *c, uint16_t *x, int64_t n) {}
void cuda_swiglu(struct cuda_ctx *c, uint16_t *a, const uint16_t *b, int64_t n) {}
void cuda_add_f32(struct cuda_ctx *c, float *y, const float *x, int64_t n) {}
void cuda_rope_neox(struct cuda_ctx *c, uint16_t *x, int64_t n_tok, int64_t n_heads, int64_t hd, int64_t stride,
                    int64_t pos0, const int32_t *pos_dev, float theta) {}
void cuda_embed(struct cuda_ctx *c, float *out, const int32_t *ids, int64_t n, const struct cuda_qmat *table) {}
void cuda_attention(struct cuda_ctx *c, uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                    int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t q_stride,
                    int64_t kv_stride, int64_t q_pos0, int causal, const int32_t *n_kv_dev) {}
size_t cuda_attention_scratch_bytes(int64_t n_heads, int64_t hd, int64_t n_kv_tok) { return 0; }
enum vlm_status cuda_graph_begin(struct cuda_ctx *c) { return VLM_ERR_NO_DEVICE; }
enum vlm_status cuda_graph_end(struct cuda_ctx *c, struct cuda_graph **out) {
    *out = NULL;
    return VLM_ERR_NO_DEVICE;
}
enum vlm_status cuda_graph_launch(struct cuda_ctx *c, struct cuda_graph *g) { return VLM_ERR_NO_DEVICE; }
void cuda_graph_free(struct cuda_graph *g) {}
enum vlm_status cuda_timer_begin(struct cuda_ctx *c) { return VLM_ERR_NO_DEVICE; }
enum vlm_status cuda_timer_end(struct cuda_ctx *c, double *ms) {
    *ms = 0;
    return VLM_ERR_NO_DEVICE;
}
void cuda_kv_store(struct cuda_ctx *c, uint16_t *cache, const uint16_t *src, int64_t n_tok, int64_t width,
                   int64_t pos0, const int32_t *pos_dev) {}
void cuda_argmax(struct cuda_ctx *c, int32_t *out_dev, const float *x, int64_t n) {}
void cuda_add_rows_f32(struct cuda_ctx *c, float *y, const float *b, int64_t M, int64_t n) {}
