// cuda_runtime.h (CPU emulator, tests/cuda_emu) — the subset of the CUDA runtime API and of the device built-ins that
// kernels/cuda/*.cu use, for compiling them with a host C++ compiler. Host memory stands in for device memory; every
// stream operation runs at once, in order (or is recorded into a graph while its stream is captured). Semantics
// follow the CUDA documentation; where the documentation says "undefined", the emulator reports and aborts when it
// can tell (see README.md).
#ifndef CUDA_EMU_RUNTIME_H
#define CUDA_EMU_RUNTIME_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_emu.h"

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __shared__ static // declarations rewrite.pl did not recognise: no fill, no size check
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define CUDART_VERSION 12040

/* ---------------------------------------------------------------------------------------------------------------
 * vector types (alignment as CUDA's, so misaligned vector accesses are UBSan errors here as they are faults there)
 * ------------------------------------------------------------------------------------------------------------- */

#define EMU_VEC2(T, name, al)                                                                                          \
    struct __attribute__((aligned(al))) name {                                                                         \
        T x, y;                                                                                                        \
    };                                                                                                                 \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define EMU_VEC4(T, name, al)                                                                                          \
    struct __attribute__((aligned(al))) name {                                                                         \
        T x, y, z, w;                                                                                                  \
    };                                                                                                                 \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
EMU_VEC2(float, float2, 8)
EMU_VEC4(float, float4, 16)
EMU_VEC2(int, int2, 8)
EMU_VEC4(int, int4, 16)
EMU_VEC2(unsigned, uint2, 8)
EMU_VEC4(unsigned, uint4, 16)
EMU_VEC2(short, short2, 4)
EMU_VEC4(short, short4, 8)
EMU_VEC2(unsigned short, ushort2, 4)
EMU_VEC4(unsigned short, ushort4, 8)
EMU_VEC4(signed char, char4, 4)
EMU_VEC4(unsigned char, uchar4, 4)
EMU_VEC2(double, double2, 16)
#undef EMU_VEC2
#undef EMU_VEC4
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

/* ---------------------------------------------------------------------------------------------------------------
 * runtime API: errors, device, memory, streams, events, graphs
 * ------------------------------------------------------------------------------------------------------------- */

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureWrongThread = 908,
};
typedef cudaError_t cudaError;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor, totalConstMem;
    int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
    int major, minor, multiProcessorCount, maxThreadsPerMultiProcessor, l2CacheSize, memoryBusWidth;
    int integrated, canMapHostMemory, concurrentKernels, ECCEnabled, pciBusID, pciDeviceID, pciDomainID;
};

struct cudaFuncAttributes {
    size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
    int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion, maxDynamicSharedSizeBytes;
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrMemoryClockRate = 36,
    cudaDevAttrGlobalMemoryBusWidth = 37,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};

typedef struct emu_event *cudaEvent_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph_exec *cudaGraphExec_t;

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostRegisterDefault 0x00

cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);

cudaError_t emu_func_get_attributes(cudaFuncAttributes *attr, const void *kernel);
cudaError_t emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value);
template <class... P> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, void (*kernel)(P...)) {
    return emu_func_get_attributes(attr, (const void *)kernel);
}
template <class... P> cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    return emu_func_set_attribute((const void *)kernel, attr, value);
}
template <class... P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, void (*kernel)(P...), int block, size_t smem) {
    (void)kernel, (void)smem;
    *n = block > 0 ? (2048 / block < 32 ? 2048 / block : 32) : 0;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned flags);
cudaError_t cudaHostUnregister(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void *dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s = nullptr);
// __constant__ / __device__ variables are plain host globals here
template <class T>
cudaError_t cudaMemcpyToSymbol(T &symbol, const void *src, size_t bytes, size_t offset = 0,
                               cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    if (offset + bytes > sizeof symbol || kind == cudaMemcpyDeviceToHost) return cudaErrorInvalidValue;
    memcpy((char *)&symbol + offset, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status);

cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

/* ---------------------------------------------------------------------------------------------------------------
 * device built-ins: barriers, warp shuffles and votes
 * ------------------------------------------------------------------------------------------------------------- */

inline void __syncthreads(void) { (void)emu_block_barrier(0); }
inline int __syncthreads_count(int pred) { return emu_block_barrier(pred != 0); }
inline int __syncthreads_and(int pred) {
    return emu_block_barrier(pred != 0) == (int)(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int pred) { return emu_block_barrier(pred != 0) != 0; }
// memory fences order nothing here: a thread runs alone until it reaches a barrier or a collective
inline void __threadfence(void) {}
inline void __threadfence_block(void) {}
inline void __threadfence_system(void) {}

void emu_exchange_sync(emu_warp_op *const ops[32], unsigned mask);
void emu_exchange_shfl(emu_warp_op *const ops[32], unsigned mask);
void emu_exchange_ballot(emu_warp_op *const ops[32], unsigned mask);
void emu_exchange_reduce_add(emu_warp_op *const ops[32], unsigned mask);
void emu_exchange_reduce_min(emu_warp_op *const ops[32], unsigned mask);
void emu_exchange_reduce_max(emu_warp_op *const ops[32], unsigned mask);

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_warp_op op = {mask, 0, 0, 0, nullptr};
    emu_warp_collective(emu_exchange_sync, &op);
}

// src: the absolute lane to read, or -1 for "own value" (a source outside the caller's width segment)
template <class T> T emu_shfl(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move up to 8-byte scalars");
    emu_warp_op op = {mask, 0, 0, src, nullptr};
    memcpy(&op.in, &v, sizeof v);
    emu_warp_collective(emu_exchange_shfl, &op);
    T r;
    memcpy(&r, &op.out, sizeof r);
    return r;
}
inline void emu_check_width(int width) {
    if (width <= 0 || width > 32 || (width & (width - 1)))
        emu_fail("shuffle width %d is not a power of 2 <= 32", width);
}
template <class T> T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    emu_check_width(width);
    const int lane = (int)emu_lane();
    return emu_shfl(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <class T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu_check_width(width);
    const int lane = (int)emu_lane();
    return emu_shfl(mask, v, (lane & (width - 1)) >= (int)delta ? lane - (int)delta : -1);
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu_check_width(width);
    const int lane = (int)emu_lane();
    return emu_shfl(mask, v, (lane & (width - 1)) + (int64_t)delta < width ? lane + (int)delta : -1);
}
// a later segment gives the caller's own value, an earlier one (or its own) is readable, as the CUDA guide says
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu_check_width(width);
    const int lane = (int)emu_lane(), s = lane ^ lane_mask;
    return emu_shfl(mask, v, s >= ((lane & ~(width - 1)) + width) || s < 0 ? -1 : s);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu_warp_op op = {mask, (uint64_t)(pred != 0), 0, 0, nullptr};
    emu_warp_collective(emu_exchange_ballot, &op);
    return (unsigned)op.out;
}
inline int __any_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) == mask; }
inline int __uni_sync(unsigned mask, int pred) {
    const unsigned b = __ballot_sync(mask, pred) & mask;
    return b == 0 || b == mask;
}
inline unsigned emu_reduce(emu_exchange_fn fn, unsigned mask, uint64_t v) {
    emu_warp_op op = {mask, v, 0, 0, nullptr};
    emu_warp_collective(fn, &op);
    return (unsigned)op.out;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return emu_reduce(emu_exchange_reduce_add, mask, v); }
inline int __reduce_add_sync(unsigned mask, int v) {
    return (int)emu_reduce(emu_exchange_reduce_add, mask, (unsigned)v);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return emu_reduce(emu_exchange_reduce_min, mask, v); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return emu_reduce(emu_exchange_reduce_max, mask, v); }
inline int __reduce_min_sync(unsigned mask, int v) {
    return (int)(emu_reduce(emu_exchange_reduce_min, mask, (unsigned)v ^ 0x80000000u) ^ 0x80000000u);
}
inline int __reduce_max_sync(unsigned mask, int v) {
    return (int)(emu_reduce(emu_exchange_reduce_max, mask, (unsigned)v ^ 0x80000000u) ^ 0x80000000u);
}

/* ---------------------------------------------------------------------------------------------------------------
 * device built-ins: atomics (a thread is never interrupted between barriers, so plain read-modify-write is atomic)
 * ------------------------------------------------------------------------------------------------------------- */

template <class T> T atomicAdd(T *p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <class T> T atomicSub(T *p, T v) {
    const T old = *p;
    *p = old - v;
    return old;
}
template <class T> T atomicExch(T *p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
template <class T> T atomicMax(T *p, T v) {
    const T old = *p;
    *p = old > v ? old : v;
    return old;
}
template <class T> T atomicMin(T *p, T v) {
    const T old = *p;
    *p = old < v ? old : v;
    return old;
}
template <class T> T atomicAnd(T *p, T v) {
    const T old = *p;
    *p = old & v;
    return old;
}
template <class T> T atomicOr(T *p, T v) {
    const T old = *p;
    *p = old | v;
    return old;
}
template <class T> T atomicXor(T *p, T v) {
    const T old = *p;
    *p = old ^ v;
    return old;
}
template <class T> T atomicCAS(T *p, T cmp, T v) {
    const T old = *p;
    if (old == cmp) *p = v;
    return old;
}
inline unsigned atomicInc(unsigned *p, unsigned lim) {
    const unsigned old = *p;
    *p = old >= lim ? 0 : old + 1;
    return old;
}

/* ---------------------------------------------------------------------------------------------------------------
 * device built-ins: math and bit intrinsics (host libm: ulps differ from the device library's)
 * ------------------------------------------------------------------------------------------------------------- */

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float exp10f(float x) { return powf(10.0f, x); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline float __int2float_rn(int i) { return (float)i; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return (int)((int64_t)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline int __mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
// dot products of 4 byte pairs (dp4a) and of 2 16-bit x 2 8-bit pairs (dp2a), accumulated into c (wrapping)
inline int __dp4a(int a, int b, int c) {
    uint32_t acc = (uint32_t)c;
    for (int i = 0; i < 4; i++) acc += (uint32_t)((int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i)));
    return (int)acc;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; i++) c += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return c;
}
inline int __dp4a(char4 a, char4 b, int c) {
    int ai, bi;
    memcpy(&ai, &a, 4);
    memcpy(&bi, &b, 4);
    return __dp4a(ai, bi, c);
}
inline int emu_dp2a(int a, int b, int c, int hi) {
    uint32_t acc = (uint32_t)c;
    for (int i = 0; i < 2; i++)
        acc += (uint32_t)((int)(int16_t)(a >> (16 * i)) * (int)(int8_t)(b >> (8 * (2 * hi + i))));
    return (int)acc;
}
inline int __dp2a_lo(int a, int b, int c) { return emu_dp2a(a, b, c, 0); }
inline int __dp2a_hi(int a, int b, int c) { return emu_dp2a(a, b, c, 1); }

// cached loads are plain loads
template <class T> T __ldg(const T *p) { return *p; }
template <class T> T __ldcs(const T *p) { return *p; }
template <class T> T __ldcg(const T *p) { return *p; }
template <class T> T __ldlu(const T *p) { return *p; }
template <class T> void __stcs(T *p, T v) { *p = v; }
template <class T> void __stcg(T *p, T v) { *p = v; }

#endif
