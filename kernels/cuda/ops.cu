// ops.cu — the CUDA twins of the elementwise and normalization ops of kernels/ops.h (contract in
// kernels/cuda_backend.h): RMSNorm, LayerNorm, GELU (tanh and erf forms), SwiGLU, the FP32 residual add, RoPE NeoX,
// and the embedding lookup. Every op is checked against its cpu_*_ref in tests/test_cuda_ops.c.
//
// Arithmetic: activations are read from FP16 (or the FP32 residual stream), all math is FP32 with the precise
// library functions (expf, tanhf, erff, sinf, cosf; never the __ intrinsics), reductions are FP32 (warp shuffles,
// then shared memory), and each result is rounded once to FP16 (RNE). The formulas mirror ops_ref.c step for step
// so that the only differences are FP32-vs-double sums and library ulps, far below the FP16 output rounding.
#include <math.h>

#include "kernels/cuda/cuda_internal.h"

#include "runtime/util.h"

#define EW_THREADS 256        // elementwise kernels: threads per block
#define EW_MAX_BLOCKS 65536u  // grid-stride loops beyond this many blocks
#define NORM_THREADS 256      // one block per row (a multiple of 32: the reductions assume whole warps)
#define ROPE_MAX_HALF 128     // hd <= 256: inv_freq table passed by value (512 bytes of kernel parameters)

static unsigned ew_blocks(int64_t n) {
    unsigned b = cuda_blocks(n, EW_THREADS);
    return b < EW_MAX_BLOCKS ? b : EW_MAX_BLOCKS;
}

/* ---------------------------------------------------------------------------------------------------------------
 * reductions
 * ------------------------------------------------------------------------------------------------------------- */

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread. sh: 32 floats of
// shared memory; it may be reused right after the call returns (the trailing barrier).
static __device__ float block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? sh[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) sh[0] = v; // after every lane of warp 0 read sh[] (the shuffles above order them)
    }
    __syncthreads();
    const float r = sh[0];
    __syncthreads();
    return r;
}

/* ---------------------------------------------------------------------------------------------------------------
 * RMSNorm, LayerNorm: one block per row, x FP32 (the residual stream), y FP16
 * ------------------------------------------------------------------------------------------------------------- */

static __global__ void rmsnorm_kernel(__half *y, const float *x, const float *g, int64_t n, float eps) {
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * n;
    __half *yr = y + (int64_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) ss += xr[k] * xr[k];
    ss = block_sum(ss, sh);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    // as the reference (and HF): the normalized value is formed first, the weight multiplies it after
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) yr[k] = __float2half_rn(g[k] * (xr[k] * inv));
}

static __global__ void layernorm_kernel(__half *y, const float *x, const float *g, const float *b, int64_t n,
                                        float eps) {
    __shared__ float sh[32];
    const float *xr = x + (int64_t)blockIdx.x * n;
    __half *yr = y + (int64_t)blockIdx.x * n;
    float s = 0.0f;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) s += xr[k];
    const float mean = block_sum(s, sh) / (float)n;
    float sv = 0.0f; // two passes (not E[x²] − mean²): no cancellation when |mean| >> std
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sv += (xr[k] - mean) * (xr[k] - mean);
    const float inv = 1.0f / sqrtf(block_sum(sv, sh) / (float)n + eps); // biased variance, as torch
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) yr[k] = __float2half_rn((xr[k] - mean) * inv * g[k] + b[k]);
}

extern "C" void cuda_rmsnorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, int64_t M, int64_t n,
                             float eps) {
    if (M <= 0 || n <= 0) return;
    VLM_ASSERT(M <= 0x7fffffff); // one block per row
    rmsnorm_kernel<<<(unsigned)M, NORM_THREADS, 0, c->stream>>>((__half *)y, x, g, n, eps);
}

extern "C" void cuda_layernorm(struct cuda_ctx *c, uint16_t *y, const float *x, const float *g, const float *b,
                               int64_t M, int64_t n, float eps) {
    if (M <= 0 || n <= 0) return;
    VLM_ASSERT(M <= 0x7fffffff);
    layernorm_kernel<<<(unsigned)M, NORM_THREADS, 0, c->stream>>>((__half *)y, x, g, b, n, eps);
}

/* ---------------------------------------------------------------------------------------------------------------
 * elementwise: GELU (tanh, erf), SwiGLU in place on FP16; the FP32 residual add
 * ------------------------------------------------------------------------------------------------------------- */

#define GRID_STRIDE(i, n)                                                                                           \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static __global__ void gelu_tanh_kernel(__half *x, int64_t n) {
    GRID_STRIDE(i, n) {
        const float v = __half2float(x[i]);
        x[i] = __float2half_rn(0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))));
    }
}

static __global__ void gelu_erf_kernel(__half *x, int64_t n) {
    GRID_STRIDE(i, n) {
        const float v = __half2float(x[i]);
        x[i] = __float2half_rn(0.5f * v * (1.0f + erff(v * 0.7071067811865476f)));
    }
}

static __global__ void swiglu_kernel(__half *a, const __half *b, int64_t n) {
    GRID_STRIDE(i, n) {
        const float v = __half2float(a[i]);
        const float silu = v / (1.0f + expf(-v)); // rounded to float before the multiply by b, as the reference
        a[i] = __float2half_rn(silu * __half2float(b[i]));
    }
}

static __global__ void add_f32_kernel(float *y, const float *x, int64_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

extern "C" void cuda_gelu_tanh(struct cuda_ctx *c, uint16_t *x, int64_t n) {
    if (n <= 0) return;
    gelu_tanh_kernel<<<ew_blocks(n), EW_THREADS, 0, c->stream>>>((__half *)x, n);
}

extern "C" void cuda_gelu_erf(struct cuda_ctx *c, uint16_t *x, int64_t n) {
    if (n <= 0) return;
    gelu_erf_kernel<<<ew_blocks(n), EW_THREADS, 0, c->stream>>>((__half *)x, n);
}

extern "C" void cuda_swiglu(struct cuda_ctx *c, uint16_t *a, const uint16_t *b, int64_t n) {
    if (n <= 0) return;
    swiglu_kernel<<<ew_blocks(n), EW_THREADS, 0, c->stream>>>((__half *)a, (const __half *)b, n);
}

extern "C" void cuda_add_f32(struct cuda_ctx *c, float *y, const float *x, int64_t n) {
    if (n <= 0) return;
    add_f32_kernel<<<ew_blocks(n), EW_THREADS, 0, c->stream>>>(y, x, n);
}

/* ---------------------------------------------------------------------------------------------------------------
 * RoPE NeoX: one thread per (token, head, pair j / j + hd/2)
 * ------------------------------------------------------------------------------------------------------------- */

// inv_freq[j] = 1 / theta^(2j/hd), computed on the host with the very expression of cpu_rope_neox_ref (the same
// powf), so the table is bit-identical to the reference's and the angles inv_freq·pos (one float product) are too.
// Passed by value: it lives in the kernel's parameters, which a CUDA graph captures with the launch.
struct rope_table {
    float inv_freq[ROPE_MAX_HALF];
};

static __global__ void rope_neox_kernel(__half *x, int64_t n_tok, int64_t n_heads, int64_t half, int64_t stride,
                                        int64_t pos0, const int32_t *pos_dev, const rope_table tab) {
    const int64_t p0 = pos_dev ? (int64_t)*pos_dev : pos0;
    const int64_t per_tok = n_heads * half;
    GRID_STRIDE(i, n_tok * per_tok) {
        const int64_t t = i / per_tok, r = i % per_tok, h = r / half, j = r % half;
        const float ang = tab.inv_freq[j] * (float)(p0 + t); // positions as float32, as HF
        const float cs = cosf(ang), sn = sinf(ang);
        __half *v = x + t * stride + h * 2 * half;
        const float a = __half2float(v[j]), b = __half2float(v[j + half]);
        v[j] = __float2half_rn(a * cs - b * sn);
        v[j + half] = __float2half_rn(b * cs + a * sn);
    }
}

extern "C" void cuda_rope_neox(struct cuda_ctx *c, uint16_t *x, int64_t n_tok, int64_t n_heads, int64_t hd,
                               int64_t stride, int64_t pos0, const int32_t *pos_dev, float theta) {
    if (n_tok <= 0 || n_heads <= 0) return;
    VLM_ASSERT(hd >= 2 && hd % 2 == 0 && hd / 2 <= ROPE_MAX_HALF && stride >= n_heads * hd);
    rope_table tab;
    for (int64_t j = 0; j < hd / 2; j++) tab.inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
    for (int64_t j = hd / 2; j < ROPE_MAX_HALF; j++) tab.inv_freq[j] = 0.0f;
    rope_neox_kernel<<<ew_blocks(n_tok * n_heads * (hd / 2)), EW_THREADS, 0, c->stream>>>(
        (__half *)x, n_tok, n_heads, hd / 2, stride, pos0, pos_dev, tab);
}

/* ---------------------------------------------------------------------------------------------------------------
 * embedding lookup: out (n, d) FP32 = the dequantized rows ids (n) of the table (n_vocab, d), any device format
 * ------------------------------------------------------------------------------------------------------------- */

// ŵ[r][i] exactly as vlm_dequantize_row_ref computes it (every case is one exact or once-rounded float product).
static __device__ float embed_value(int fmt, const uint8_t *codes, const void *scales, const uint8_t *zeros,
                                    int64_t k, int64_t r, int64_t i) {
    const int64_t ng = k / 128, gi = r * ng + i / 128;
    const int w = (int)(i % 128); // column inside the group
    switch (fmt) {
    case VLM_QF_F16: return __half2float(((const __half *)codes)[r * k + i]);
    case VLM_QF_Q8R: return (float)((const int8_t *)codes)[r * k + i] * ((const float *)scales)[r];
    case VLM_QF_W3G128: {
        const uint8_t *blk = codes + gi * VLM_W3_BLOCK_BYTES;
        const int q = ((blk[w % 32] >> (2 * (w / 32))) & 3) | (((blk[32 + w / 8] >> (w % 8)) & 1) << 2);
        return (float)(q - (int)zeros[gi]) * __half2float(((const __half *)scales)[gi]);
    }
    case VLM_QF_W4G128: {
        const uint8_t *blk = codes + gi * VLM_W4_BLOCK_BYTES;
        const int q = w < 64 ? blk[w] & 15 : blk[w - 64] >> 4;
        return (float)(q - (int)zeros[gi]) * __half2float(((const __half *)scales)[gi]);
    }
    case VLM_QF_W4A8: {
        const uint8_t *blk = codes + gi * VLM_W4_BLOCK_BYTES;
        const int u = w < 64 ? blk[w] & 15 : blk[w - 64] >> 4;
        return (float)(u - 8) * ((const float *)scales)[r];
    }
    default: return __int_as_float(0x7fc00000); // unreachable: cuda_embed checks the format
    }
}

static __global__ void embed_kernel(float *out, const int32_t *ids, int64_t n, int64_t n_vocab, int64_t d, int fmt,
                                    const uint8_t *codes, const void *scales, const uint8_t *zeros) {
    GRID_STRIDE(i, n * d) {
        const int64_t t = i / d, col = i % d, r = ids[t];
        // an id outside the table is the caller's bug: it reads as a NaN row instead of faulting
        out[i] = r >= 0 && r < n_vocab ? embed_value(fmt, codes, scales, zeros, d, r, col) : __int_as_float(0x7fc00000);
    }
}

// Formats: F16, Q8R, W3G128, W4G128, W4A8 (F32/BF16 tables are F16 on the device). ids (n) int32 on the device; an
// id outside [0, table->n) gives a row of NaN (no fault), so a bad id shows up in the logits.
extern "C" void cuda_embed(struct cuda_ctx *c, float *out, const int32_t *ids, int64_t n,
                           const struct cuda_qmat *table) {
    if (n <= 0) return;
    const int f = table->fmt;
    VLM_ASSERT(f == VLM_QF_F16 || f == VLM_QF_Q8R || f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_W4A8);
    embed_kernel<<<ew_blocks(n * table->k), EW_THREADS, 0, c->stream>>>(out, ids, n, table->n, table->k, f,
                                                                         (const uint8_t *)table->codes, table->scales,
                                                                         table->zeros);
}
