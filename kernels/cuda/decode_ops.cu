// decode_ops.cu — the decoder's plumbing kernels: KV-cache append at a device-side position (so a captured decode
// step needs no re-capture per token), greedy argmax on the device (one int crosses PCIe per token instead of the
// vocabulary's logits), and a row-broadcast add. Contracts in kernels/cuda_backend.h.
#include <math.h>

#include "kernels/cuda/cuda_internal.h"

// One thread per half: the copy is a few KB per token.
static __global__ void kv_store_kernel(uint16_t *cache, const uint16_t *src, int64_t n_tok, int64_t width,
                                       int64_t pos0, const int32_t *pos_dev) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_tok * width) return;
    const int64_t p = pos_dev ? (int64_t)*pos_dev : pos0;
    cache[p * width + i] = src[i]; // rows are contiguous at stride width on both sides
}

extern "C" void cuda_kv_store(struct cuda_ctx *c, uint16_t *cache, const uint16_t *src, int64_t n_tok, int64_t width,
                              int64_t pos0, const int32_t *pos_dev) {
    const int64_t n = n_tok * width;
    if (n <= 0) return;
    kv_store_kernel<<<cuda_blocks(n, 256), 256, 0, c->stream>>>(cache, src, n_tok, width, pos0, pos_dev);
}

// (value, index) pair order of torch.argmax on finite values: larger value wins, the lower index on ties; NaN loses
// to everything (the contract of cuda_backend.h). vlm_argmax (`x[i] > x[best]`) agrees except when x[0] is NaN, where
// it returns 0.
static __device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
    if (isnan(v)) return false;
    if (isnan(bv)) return true;
    return v > bv || (v == bv && i < bi);
}

static __global__ void argmax_kernel(int32_t *out, const float *x, int64_t n) {
    float bv = NAN;
    int32_t bi = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        if (better(x[i], (int32_t)i, bv, bi)) bv = x[i], bi = (int32_t)i;
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_down_sync(0xffffffffu, bv, off);
        const int32_t oi = __shfl_down_sync(0xffffffffu, bi, off);
        if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    __shared__ float sv[32];
    __shared__ int32_t si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : NAN;
        bi = lane < nw ? si[lane] : 0;
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_down_sync(0xffffffffu, bv, off);
            const int32_t oi = __shfl_down_sync(0xffffffffu, bi, off);
            if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (lane == 0) *out = bi; // all NaN: 0, as vlm_argmax
    }
}

extern "C" void cuda_argmax(struct cuda_ctx *c, int32_t *out_dev, const float *x, int64_t n) {
    argmax_kernel<<<1, 1024, 0, c->stream>>>(out_dev, x, n);
}

static __global__ void add_rows_kernel(float *y, const float *b, int64_t M, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M * n) y[i] += b[i % n];
}

extern "C" void cuda_add_rows_f32(struct cuda_ctx *c, float *y, const float *b, int64_t M, int64_t n) {
    if (M * n <= 0) return;
    add_rows_kernel<<<cuda_blocks(M * n, 256), 256, 0, c->stream>>>(y, b, M, n);
}

extern "C" int cuda_backend_compiled(void) { return 1; }
