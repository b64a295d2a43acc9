// cublas.cpp — the emulator's cuBLAS subset (include/cublas_v2.h): GEMM as plain loops over column-major matrices,
// as the cuBLAS documentation defines it,
//   C (m x n, ldc) = alpha · op(A) · op(B) + beta · C,   op(A) (m x k) = A (lda >= m) or Aᵀ (A stored k x m, lda >= k)
// with C not read when beta == 0 (so NaN garbage there does not propagate, as in cuBLAS). Sums run in k order in
// FP32 (int32 for CUBLAS_COMPUTE_32I, wrapping); the *_FAST_* compute types round the inputs first (FP16, BF16,
// TF32), as the tensor cores would. Every matrix must lie inside one device allocation.
#include <stdio.h>

#include <set>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"

struct emu_blas {
    cudaStream_t stream;
    cublasPointerMode_t pointer_mode;
};
static std::set<emu_blas *> g_handles;

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new emu_blas{nullptr, CUBLAS_POINTER_MODE_HOST};
    g_handles.insert(*h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!g_handles.erase(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!g_handles.count(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t *s) {
    if (!g_handles.count(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *s = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    (void)mode;
    return g_handles.count(h) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t mode) {
    if (!g_handles.count(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *workspace, size_t bytes) {
    (void)workspace, (void)bytes;
    return g_handles.count(h) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown status";
}

/* ---------------------------------------------------------------------------------------------------------------
 * GEMM
 * ------------------------------------------------------------------------------------------------------------- */

static size_t type_bytes(cudaDataType_t t) {
    switch (t) {
    case CUDA_R_32F:
    case CUDA_R_32I: return 4;
    case CUDA_R_64F: return 8;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    case CUDA_R_8I:
    case CUDA_R_8U: return 1;
    }
    return 0;
}

static float load_f(const void *p, cudaDataType_t t, size_t i) {
    switch (t) {
    case CUDA_R_32F: return ((const float *)p)[i];
    case CUDA_R_16F: return __half2float(((const __half *)p)[i]);
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case CUDA_R_8I: return (float)((const int8_t *)p)[i];
    case CUDA_R_8U: return (float)((const uint8_t *)p)[i];
    case CUDA_R_32I: return (float)((const int32_t *)p)[i];
    case CUDA_R_64F: return (float)((const double *)p)[i];
    }
    return 0.0f;
}

static void store_f(void *p, cudaDataType_t t, size_t i, float v) {
    switch (t) {
    case CUDA_R_32F: ((float *)p)[i] = v; break;
    case CUDA_R_16F: ((__half *)p)[i] = __float2half_rn(v); break;
    case CUDA_R_16BF: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    default: break; // excluded by gemm_check
    }
}

// the rounding of the inputs a *_FAST_* compute type allows
static float round_input(float v, cublasComputeType_t c) {
    switch (c) {
    case CUBLAS_COMPUTE_32F_FAST_16F: return __half2float(__float2half_rn(v));
    case CUBLAS_COMPUTE_32F_FAST_16BF: return __bfloat162float(__float2bfloat16_rn(v));
    case CUBLAS_COMPUTE_32F_FAST_TF32: { // 10 mantissa bits, nearest even
        uint32_t x;
        memcpy(&x, &v, 4);
        if ((x & 0x7f800000u) != 0x7f800000u) x = (x + 0xfffu + ((x >> 13) & 1u)) & ~0x1fffu;
        memcpy(&v, &x, 4);
        return v;
    }
    default: return v;
    }
}

struct gemm_args {
    cublasOperation_t ta, tb;
    int m, n, k;
    const void *A, *B;
    void *C;
    cudaDataType_t at, bt, ct;
    int lda, ldb, ldc;
    long long sa, sb, sc;
    int batch;
    cublasComputeType_t compute;
    // alpha, beta: read at the call (host pointer mode) or at the execution (device pointer mode)
    float alpha_f, beta_f;
    int32_t alpha_i, beta_i;
    const void *alpha_dev, *beta_dev;
};

static bool is_int_compute(cublasComputeType_t c) {
    return c == CUBLAS_COMPUTE_32I || c == CUBLAS_COMPUTE_32I_PEDANTIC;
}
static bool is_half_compute(cublasComputeType_t c) {
    return c == CUBLAS_COMPUTE_16F || c == CUBLAS_COMPUTE_16F_PEDANTIC;
}

static void scalars(const void *alpha, const void *beta, cublasComputeType_t c, gemm_args *g) {
    if (is_int_compute(c))
        g->alpha_i = *(const int32_t *)alpha, g->beta_i = *(const int32_t *)beta;
    else if (is_half_compute(c))
        g->alpha_f = __half2float(*(const __half *)alpha), g->beta_f = __half2float(*(const __half *)beta);
    else
        g->alpha_f = *(const float *)alpha, g->beta_f = *(const float *)beta;
}

// elements spanned by a column-major (rows x cols) matrix at leading dimension ld
static size_t span(int rows, int cols, int ld) {
    return rows && cols ? (size_t)(cols - 1) * (size_t)ld + (size_t)rows : 0;
}

static void check_in_device(const char *what, const void *p, size_t elems, cudaDataType_t t, int batch,
                            long long stride) {
    if (!elems) return;
    for (int b = 0; b < batch; b++) {
        const char *q = (const char *)p + (size_t)(b * stride) * type_bytes(t);
        if (!emu_is_device(q, elems * type_bytes(t)))
            emu_fail("cuBLAS GEMM: matrix %s (batch %d, %zu elements at %p) is not inside one device allocation", what,
                     b, elems, (const void *)q);
    }
}

// Σ a[l]·b[l] in l order. Not instrumented: the emulator's own arithmetic on its packed copies (the reads of the
// device matrices that fill them are), which is most of a GEMM's time under ASan.
__attribute__((no_sanitize("address", "undefined"))) static float dot_f32(const float *a, const float *b, size_t k) {
    float acc = 0.0f;
    for (size_t l = 0; l < k; l++) acc += a[l] * b[l];
    return acc;
}
__attribute__((no_sanitize("address", "undefined"))) static uint32_t dot_i32(const int32_t *a, const int32_t *b,
                                                                             size_t k) {
    uint32_t acc = 0;
    for (size_t l = 0; l < k; l++) acc += (uint32_t)a[l] * (uint32_t)b[l]; // int8 products: exact, then wrapping
    return acc;
}

// op(A) as m x k and op(B)ᵀ as n x k, row-major, converted (and rounded, for the *_FAST_* types) once per matrix
// instead of once per product; the sums then run over contiguous rows in k order.
static void gemm_run(const gemm_args &g) {
    const int ar = g.ta == CUBLAS_OP_N ? g.m : g.k, ac = g.ta == CUBLAS_OP_N ? g.k : g.m;
    const int br = g.tb == CUBLAS_OP_N ? g.k : g.n, bc = g.tb == CUBLAS_OP_N ? g.n : g.k;
    check_in_device("A", g.A, span(ar, ac, g.lda), g.at, g.batch, g.sa);
    check_in_device("B", g.B, span(br, bc, g.ldb), g.bt, g.batch, g.sb);
    check_in_device("C", g.C, span(g.m, g.n, g.ldc), g.ct, g.batch, g.sc);
    gemm_args a = g;
    if (g.alpha_dev) scalars(g.alpha_dev, g.beta_dev, g.compute, &a);
    const bool int_math = is_int_compute(g.compute);
    const size_t m = (size_t)g.m, n = (size_t)g.n, k = (size_t)g.k;
    std::vector<float> Af(int_math ? 0 : m * k), Bf(int_math ? 0 : n * k);
    std::vector<int32_t> Ai(int_math ? m * k : 0), Bi(int_math ? n * k : 0);
    for (int b = 0; b < g.batch; b++) {
        const char *A = (const char *)g.A + (size_t)(b * g.sa) * type_bytes(g.at);
        const char *B = (const char *)g.B + (size_t)(b * g.sb) * type_bytes(g.bt);
        char *C = (char *)g.C + (size_t)(b * g.sc) * type_bytes(g.ct);
        for (size_t i = 0; i < m; i++)
            for (size_t l = 0; l < k; l++) {
                const size_t ai = g.ta == CUBLAS_OP_N ? i + l * (size_t)g.lda : l + i * (size_t)g.lda;
                if (int_math)
                    Ai[i * k + l] = ((const int8_t *)A)[ai];
                else
                    Af[i * k + l] = round_input(load_f(A, g.at, ai), g.compute);
            }
        for (size_t j = 0; j < n; j++)
            for (size_t l = 0; l < k; l++) {
                const size_t bi = g.tb == CUBLAS_OP_N ? l + j * (size_t)g.ldb : j + l * (size_t)g.ldb;
                if (int_math)
                    Bi[j * k + l] = ((const int8_t *)B)[bi];
                else
                    Bf[j * k + l] = round_input(load_f(B, g.bt, bi), g.compute);
            }
        for (size_t j = 0; j < n; j++)
            for (size_t i = 0; i < m; i++) {
                const size_t ci = i + j * (size_t)g.ldc;
                if (int_math) {
                    const uint32_t acc = dot_i32(&Ai[i * k], &Bi[j * k], k);
                    int32_t *c = (int32_t *)C + ci;
                    uint32_t r = (uint32_t)a.alpha_i * acc;
                    if (a.beta_i != 0) r += (uint32_t)a.beta_i * (uint32_t)*c;
                    *c = (int32_t)r;
                } else {
                    float r = a.alpha_f * dot_f32(&Af[i * k], &Bf[j * k], k);
                    if (a.beta_f != 0.0f) r += a.beta_f * load_f(C, g.ct, ci);
                    store_f(C, g.ct, ci, r);
                }
            }
    }
}

// cuBLAS's argument checks, and the type combinations emulated
static cublasStatus_t gemm_check(const gemm_args &g) {
    if ((g.ta != CUBLAS_OP_N && g.ta != CUBLAS_OP_T && g.ta != CUBLAS_OP_C) ||
        (g.tb != CUBLAS_OP_N && g.tb != CUBLAS_OP_T && g.tb != CUBLAS_OP_C) || g.m < 0 || g.n < 0 || g.k < 0 ||
        g.batch < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int ar = g.ta == CUBLAS_OP_N ? g.m : g.k, br = g.tb == CUBLAS_OP_N ? g.k : g.n;
    if (g.lda < (ar > 1 ? ar : 1) || g.ldb < (br > 1 ? br : 1) || g.ldc < (g.m > 1 ? g.m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    const bool f_in = [](cudaDataType_t t) { return t == CUDA_R_16F || t == CUDA_R_16BF || t == CUDA_R_32F; }(g.at);
    if (is_int_compute(g.compute))
        return g.at == CUDA_R_8I && g.bt == CUDA_R_8I && g.ct == CUDA_R_32I ? CUBLAS_STATUS_SUCCESS
                                                                            : CUBLAS_STATUS_NOT_SUPPORTED;
    if (is_half_compute(g.compute))
        return g.at == CUDA_R_16F && g.bt == CUDA_R_16F && g.ct == CUDA_R_16F ? CUBLAS_STATUS_SUCCESS
                                                                              : CUBLAS_STATUS_NOT_SUPPORTED;
    if (!f_in || g.bt != g.at || (g.ct != CUDA_R_16F && g.ct != CUDA_R_16BF && g.ct != CUDA_R_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t gemm_enqueue(cublasHandle_t h, gemm_args g, const void *alpha, const void *beta) {
    if (!g_handles.count(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    const cublasStatus_t st = gemm_check(g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (h->pointer_mode == CUBLAS_POINTER_MODE_DEVICE)
        g.alpha_dev = alpha, g.beta_dev = beta;
    else
        scalars(alpha, beta, g.compute, &g);
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    return emu_enqueue(h->stream, [g]() { gemm_run(g); }) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                                         : CUBLAS_STATUS_EXECUTION_FAILED;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void *alpha, const void *A, cudaDataType_t at, int lda,
                                          long long sa, const void *B, cudaDataType_t bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType_t ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    gemm_args g = {};
    g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k, g.A = A, g.B = B, g.C = C, g.at = at, g.bt = bt, g.ct = ct;
    g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.sa = sa, g.sb = sb, g.sc = sc, g.batch = batch, g.compute = compute;
    return gemm_enqueue(h, g, alpha, beta);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType_t at, int lda, const void *B,
                            cudaDataType_t bt, int ldb, const void *beta, void *C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                                      compute, algo);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc) {
    return cublasGemmEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C, CUDA_R_32F, ldc,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
