// cuda_internal.h — what the .cu files of the CUDA backend share: the context and the error plumbing. Not for use
// outside kernels/cuda/.
#ifndef VLM_CUDA_INTERNAL_H
#define VLM_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda_backend.h"

struct cuda_ctx {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scratch;          // one arena, grown by cuda_ctx_reserve only (ops never allocate)
    size_t scratch_bytes;
    cudaEvent_t t0, t1;     // cuda_timer_begin / cuda_timer_end
};

// Logs "cuda: <where>: <error string>" once and maps to VLM_ERR_CUDA (VLM_OK for cudaSuccess).
enum vlm_status cuda_status(cudaError_t e, const char *where);
enum vlm_status cublas_status(cublasStatus_t e, const char *where);

// Scratch pointer of at least `bytes` (asserts the arena was reserved large enough: a sizing bug, not a user error).
void *cuda_scratch(struct cuda_ctx *c, size_t bytes, const char *op);

static inline unsigned cuda_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

#endif
