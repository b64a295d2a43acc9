// backend_cuda.cu — the CUDA backend's context, memory and plumbing (contract in kernels/cuda_backend.h): device
// discovery, one context per device (stream, cuBLAS handle, scratch arena, timer events), device buffers, FP32<->FP16
// conversion, CUDA graphs and timers. The op families live in their own files (ops.cu, attention.cu, ...).
//
// Promises: nothing here aborts on an environment problem; every failure is one line on stderr naming what failed
// (vlm_log_error: "vlmrun: error: cuda: <what>: <CUDA error>") and a vlm_status. Everything but the extern "C"
// boundary is static.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"

#include "runtime/util.h"

struct cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

/* ---------------------------------------------------------------------------------------------------------------
 * error plumbing (declared in cuda_internal.h)
 * ------------------------------------------------------------------------------------------------------------- */

enum vlm_status cuda_status(cudaError_t e, const char *where) {
    if (e == cudaSuccess) return VLM_OK;
    (void)cudaGetLastError(); // clear a non-sticky error so the next check does not report it a second time
    vlm_log_error("cuda: %s: %s (%s)", where, cudaGetErrorString(e), cudaGetErrorName(e));
    return VLM_ERR_CUDA;
}

enum vlm_status cublas_status(cublasStatus_t e, const char *where) {
    if (e == CUBLAS_STATUS_SUCCESS) return VLM_OK;
    vlm_log_error("cuda: %s: cuBLAS %s", where, cublasGetStatusString(e));
    return VLM_ERR_CUDA;
}

void *cuda_scratch(struct cuda_ctx *c, size_t bytes, const char *op) {
    if (bytes > c->scratch_bytes) // a sizing bug of the caller (cuda_ctx_reserve too small), not a user error
        vlm_log_error("cuda: %s needs %zu scratch bytes but only %zu are reserved (cuda_ctx_reserve)", op, bytes,
                      c->scratch_bytes);
    VLM_ASSERT(bytes <= c->scratch_bytes);
    return c->scratch;
}

/* ---------------------------------------------------------------------------------------------------------------
 * FP32 <-> FP16 kernels (also used by cuda_ctx_create to check that this binary has code for the device)
 * ------------------------------------------------------------------------------------------------------------- */

#define CONV_THREADS 256
#define CONV_MAX_BLOCKS 65536u // grid-stride beyond this

static __global__ void f32_to_f16_kernel(__half *dst, const float *src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2half_rn(src[i]); // IEEE round to nearest even, subnormals and overflow to inf included
}

static __global__ void f16_to_f32_kernel(float *dst, const __half *src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __half2float(src[i]); // exact
}

static unsigned conv_blocks(int64_t n) {
    unsigned b = cuda_blocks(n, CONV_THREADS);
    return b < CONV_MAX_BLOCKS ? b : CONV_MAX_BLOCKS;
}

extern "C" void cuda_f32_to_f16(struct cuda_ctx *c, uint16_t *dst, const float *src, int64_t n) {
    if (n <= 0) return;
    f32_to_f16_kernel<<<conv_blocks(n), CONV_THREADS, 0, c->stream>>>((__half *)dst, src, n);
}

extern "C" void cuda_f16_to_f32(struct cuda_ctx *c, float *dst, const uint16_t *src, int64_t n) {
    if (n <= 0) return;
    f16_to_f32_kernel<<<conv_blocks(n), CONV_THREADS, 0, c->stream>>>(dst, (const __half *)src, n);
}

/* ---------------------------------------------------------------------------------------------------------------
 * device discovery and the context
 * ------------------------------------------------------------------------------------------------------------- */

extern "C" enum vlm_status cuda_backend_probe(int *n_devices) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError(); // clear the sticky "no driver" error so a later probe starts clean
        *n_devices = 0;
        return VLM_ERR_NO_DEVICE;
    }
    *n_devices = n;
    return VLM_OK;
}

extern "C" void cuda_ctx_free(struct cuda_ctx *c) {
    if (!c) return;
    if (c->stream) (void)cuda_status(cudaStreamSynchronize(c->stream), "cuda_ctx_free: stream synchronize");
    if (c->scratch) (void)cuda_status(cudaFree(c->scratch), "cuda_ctx_free: scratch");
    if (c->t0) (void)cudaEventDestroy(c->t0);
    if (c->t1) (void)cudaEventDestroy(c->t1);
    if (c->blas) (void)cublas_status(cublasDestroy(c->blas), "cuda_ctx_free: cublasDestroy");
    if (c->stream) (void)cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" enum vlm_status cuda_ctx_create(int device, struct cuda_ctx **out) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0 || device < 0 || device >= n) {
        (void)cudaGetLastError();
        if (e != cudaSuccess)
            vlm_log_error("cuda: no CUDA device (%s)", cudaGetErrorString(e));
        else
            vlm_log_error("cuda: no CUDA device %d (%d found)", device, n);
        return VLM_ERR_NO_DEVICE;
    }
    cudaDeviceProp prop;
    if (cuda_status(cudaSetDevice(device), "cudaSetDevice") != VLM_OK ||
        cuda_status(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties") != VLM_OK)
        return VLM_ERR_CUDA;
    if (prop.major < 8) {
        vlm_log_error("cuda: device %d (%s) has compute capability %d.%d; the CUDA backend needs 8.0 or newer", device,
                      prop.name, prop.major, prop.minor);
        return VLM_ERR_UNSUPPORTED;
    }
    // The binary holds code for a few architectures only (Makefile CUDA_ARCH): ask for one kernel's attributes,
    // which fails for a device none of them runs on, so that case is a clear message here, not a launch error later.
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, f32_to_f16_kernel);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        vlm_log_error("cuda: device %d (%s, compute capability %d.%d): this build has no kernels for it (%s); rebuild "
                      "with CUDA_ARCH=%d%d",
                      device, prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major, prop.minor);
        return VLM_ERR_UNSUPPORTED;
    }

    struct cuda_ctx *c = (struct cuda_ctx *)calloc(1, sizeof *c);
    if (!c) {
        vlm_log_error("cuda: out of host memory for the CUDA context");
        return VLM_ERR_OOM;
    }
    c->device = device;
    c->prop = prop;
    if (cuda_status(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags") ||
        cublas_status(cublasCreate(&c->blas), "cublasCreate") ||
        cublas_status(cublasSetStream(c->blas, c->stream), "cublasSetStream") ||
        cuda_status(cudaEventCreate(&c->t0), "cudaEventCreate") ||
        cuda_status(cudaEventCreate(&c->t1), "cudaEventCreate"))
        goto fail;
    *out = c;
    return VLM_OK;
fail:
    cuda_ctx_free(c);
    return VLM_ERR_CUDA;
}

extern "C" void cuda_ctx_info(struct cuda_ctx *c, struct cuda_device_info *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", c->prop.name);
    out->cc_major = c->prop.major;
    out->cc_minor = c->prop.minor;
    out->n_sm = c->prop.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    if (cuda_status(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo") == VLM_OK) {
        out->free_bytes = free_b;
        out->total_bytes = total_b;
    }
    // cudaDeviceProp lost memoryClockRate in CUDA 13; the attributes still give it (kHz) and the bus width (bits)
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, c->device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, c->device) != cudaSuccess) {
        (void)cudaGetLastError();
        clock_khz = bus_bits = 0; // unknown: peak_gbps stays 0
    }
    out->peak_gbps = 2.0 * (double)clock_khz * 1e3 * ((double)bus_bits / 8.0) / 1e9; // double data rate
}

extern "C" enum vlm_status cuda_ctx_reserve(struct cuda_ctx *c, size_t bytes, const char *what) {
    if (bytes <= c->scratch_bytes) return VLM_OK;
    // queued work may still use the old arena
    if (cuda_status(cudaStreamSynchronize(c->stream), "cuda_ctx_reserve: stream synchronize")) return VLM_ERR_CUDA;
    if (c->scratch && cuda_status(cudaFree(c->scratch), "cuda_ctx_reserve: cudaFree")) return VLM_ERR_CUDA;
    c->scratch = NULL;
    c->scratch_bytes = 0;
    void *p = NULL;
    enum vlm_status st = cuda_malloc(c, &p, bytes, what);
    if (st != VLM_OK) return st; // the context is left without scratch
    c->scratch = p;
    c->scratch_bytes = bytes;
    return VLM_OK;
}

extern "C" enum vlm_status cuda_ctx_sync(struct cuda_ctx *c, const char *where) {
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaGetLastError(); // a launch that failed (bad configuration) leaves its error here
    return cuda_status(e, where);
}

/* ---------------------------------------------------------------------------------------------------------------
 * memory
 * ------------------------------------------------------------------------------------------------------------- */

extern "C" enum vlm_status cuda_malloc(struct cuda_ctx *c, void **dev, size_t bytes, const char *what) {
    (void)c;
    if (bytes == 0) {
        *dev = NULL;
        return VLM_OK;
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        free_b = total_b = 0;
    }
    void *p = NULL;
    // more than the device has cannot succeed: say so without asking the driver (which may answer otherwise)
    cudaError_t e = total_b && bytes > total_b ? cudaErrorMemoryAllocation : cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        vlm_log_error("cuda: out of device memory for %s: %zu bytes asked, %zu free (of %zu)", what, bytes, free_b,
                      total_b);
        return VLM_ERR_OOM;
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        vlm_log_error("cuda: cudaMalloc of %zu bytes for %s: %s", bytes, what, cudaGetErrorString(e));
        return VLM_ERR_CUDA;
    }
    *dev = p;
    return VLM_OK;
}

extern "C" void cuda_free(struct cuda_ctx *c, void *dev) {
    (void)c;
    if (dev) (void)cuda_status(cudaFree(dev), "cuda_free");
}

// Copies go on the context's stream (a plain cudaMemcpy runs on the legacy stream, which does not wait for a
// non-blocking stream's queued kernels), then wait for it.
extern "C" enum vlm_status cuda_upload(struct cuda_ctx *c, void *dev, const void *host, size_t bytes) {
    if (bytes == 0) return VLM_OK;
    if (cuda_status(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, c->stream), "cuda_upload"))
        return VLM_ERR_CUDA;
    return cuda_status(cudaStreamSynchronize(c->stream), "cuda_upload: stream synchronize");
}

extern "C" enum vlm_status cuda_download(struct cuda_ctx *c, void *host, const void *dev, size_t bytes) {
    if (bytes == 0) return VLM_OK;
    if (cuda_status(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "cuda_download"))
        return VLM_ERR_CUDA;
    return cuda_status(cudaStreamSynchronize(c->stream), "cuda_download: stream synchronize");
}

extern "C" enum vlm_status cuda_memset0(struct cuda_ctx *c, void *dev, size_t bytes) {
    if (bytes == 0) return VLM_OK;
    return cuda_status(cudaMemsetAsync(dev, 0, bytes, c->stream), "cuda_memset0");
}

/* ---------------------------------------------------------------------------------------------------------------
 * CUDA graphs: capture the context's stream (thread-local mode: other threads' CUDA calls are not affected)
 * ------------------------------------------------------------------------------------------------------------- */

extern "C" enum vlm_status cuda_graph_begin(struct cuda_ctx *c) {
    return cuda_status(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
}

extern "C" enum vlm_status cuda_graph_end(struct cuda_ctx *c, struct cuda_graph **out) {
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    if (cuda_status(cudaStreamEndCapture(c->stream, &graph), "cudaStreamEndCapture")) goto fail;
    if (cuda_status(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate")) goto fail;
    {
        struct cuda_graph *g = (struct cuda_graph *)calloc(1, sizeof *g);
        if (!g) {
            vlm_log_error("cuda: out of host memory for a CUDA graph");
            (void)cudaGraphExecDestroy(exec);
            (void)cudaGraphDestroy(graph);
            return VLM_ERR_OOM;
        }
        g->graph = graph;
        g->exec = exec;
        *out = g;
        return VLM_OK;
    }
fail:
    if (graph) (void)cudaGraphDestroy(graph);
    return VLM_ERR_CUDA;
}

extern "C" enum vlm_status cuda_graph_launch(struct cuda_ctx *c, struct cuda_graph *g) {
    return cuda_status(cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch");
}

extern "C" void cuda_graph_free(struct cuda_graph *g) {
    if (!g) return;
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    if (g->graph) (void)cudaGraphDestroy(g->graph);
    free(g);
}

/* ---------------------------------------------------------------------------------------------------------------
 * timers
 * ------------------------------------------------------------------------------------------------------------- */

extern "C" enum vlm_status cuda_timer_begin(struct cuda_ctx *c) {
    return cuda_status(cudaEventRecord(c->t0, c->stream), "cuda_timer_begin");
}

extern "C" enum vlm_status cuda_timer_end(struct cuda_ctx *c, double *ms) {
    float t = 0;
    if (cuda_status(cudaEventRecord(c->t1, c->stream), "cuda_timer_end: record") ||
        cuda_status(cudaEventSynchronize(c->t1), "cuda_timer_end: synchronize") ||
        cuda_status(cudaEventElapsedTime(&t, c->t0, c->t1), "cuda_timer_end: elapsed time"))
        return VLM_ERR_CUDA;
    *ms = t;
    return VLM_OK;
}
