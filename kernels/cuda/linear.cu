// linear.cu — y (M, n) = x (M, k) · Ŵᵀ + b on the GPU for every weight format of kernels/quant.h: the device twin of
// cpu_qlinear_ref, plus the weight upload. Contract in kernels/cuda_backend.h; tests in tests/test_cuda_linear.c.
//
// What runs, by format and number of token rows M:
//   M <= 8 (decode): one fused GEMV per format that streams the packed weights once from DRAM.
//     W3G128, W4G128  gemv_g128_kernel: 16 output rows per block, its 8 warps split the k groups; each warp
//                     dequantizes 16 rows x 128 columns per group into FP16 (q − z), exact, in registers and
//                     multiplies them with x on the tensor cores (mma m16n8k16, FP32 accumulation; the M <= 8
//                     tokens are the mma's n = 8); the group scale s multiplies the FP32 group sum.
//     F16, Q8R        gemv_rows_kernel: a warp per 2 or 4 rows, lanes across k, FP32 FMAs on CUDA cores.
//     W4A8            quant_act_kernel (x -> int8 per token, exactly vlm_quantize_act_q8_ref) then
//                     gemv_w4a8_kernel: dp4a int32 dot products, the epilogue (float)(s_t·s_row)·(float)acc + b.
//   M > 8 (prefill, vision):
//     W4A8            quant_act_kernel then gemm_w4a8_kernel: int8 WMMA tensor cores (16x16x16, int32), the
//                     same integer sums and the same epilogue, so GEMV and GEMM are both bit-identical to the CPU.
//     F16             cuBLAS (cublasGemmEx, FP16 in, FP32 compute).
//     W3G128, W4G128, Q8R
//                     dequant_f16_kernel writes Ŵ rounded to FP16 into scratch, a slice of rows at a time (so the
//                     scratch stays <= 64 MiB whatever the matrix), then cuBLAS as F16. The FP16 rounding of
//                     ŵ = (q − z)·s is NOT exact (s has 11 significant bits, |q − z| up to 4 more): |δŵ| <= 2^-11·|ŵ|,
//                     the tolerance tests/test_cuda_linear.c allows this path.
// Loads: weights go through ld.global.nc.L1::no_allocate (read once, keep L1 for x), x and the int8 activations
// through the read-only cache (__ldg; every warp of a block and every block on an SM reuses them from L1).
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "runtime/util.h"

#define DQ_SLICE_BYTES ((size_t)64 << 20) // FP16 dequantized rows per cuBLAS call on the M > 8 path
#define GEMV_MAX_M 8

// ---------------------------------------------------------------------------------------------------------------
// device helpers
// ---------------------------------------------------------------------------------------------------------------

// tests/cuda_emu (the CPU emulator of these kernels; its build defines VLM_CUDA_EMU) has no inline PTX: there the
// three PTX helpers below are plain CUDA with the same results (the mma one through warp shuffles, following the
// fragment layout written next to it — so the emulator checks everything around the mma, not our reading of the
// PTX fragment layout itself, which only hardware can confirm).
#if defined(VLM_CUDA_EMU)
#define LINEAR_NO_PTX 1
#endif

// Streaming weight loads: read once per call, not worth an L1 line (which x and the activations use).
static __device__ __forceinline__ uint4 ld_stream16(const void *p) {
#ifdef LINEAR_NO_PTX
    return *reinterpret_cast<const uint4 *>(p);
#else
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#endif
}

static __device__ __forceinline__ uint2 ld_stream8(const void *p) {
#ifdef LINEAR_NO_PTX
    return *reinterpret_cast<const uint2 *>(p);
#else
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
#endif
}

static __device__ __forceinline__ uint4 ldg16(const void *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }

// Two FP16 lanes a − b (round to nearest; every use here is exact: small integers plus 1024).
static __device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
#ifdef LINEAR_NO_PTX
    const unsigned short lo = __half_as_ushort(__hsub(__ushort_as_half((unsigned short)(a & 0xffffu)),
                                                      __ushort_as_half((unsigned short)(b & 0xffffu))));
    const unsigned short hi = __half_as_ushort(__hsub(__ushort_as_half((unsigned short)(a >> 16)),
                                                      __ushort_as_half((unsigned short)(b >> 16))));
    return (uint32_t)lo | (uint32_t)hi << 16;
#else
    uint32_t d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
#endif
}

// The FP16 in the low / high 16 bits of a register, widened (exact).
static __device__ __forceinline__ float h2f_lo(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
}
static __device__ __forceinline__ float h2f_hi(uint32_t w) {
    return __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}

// d (16x8, FP32) += a (16x16, FP16, row major) · b (16x8, FP16, column major). Fragment ownership (PTX ISA, mma
// m16n8k16 .f16), with gid = lane / 4 and tig = lane % 4:
//   a0: A[gid][2tig, 2tig+1]   a1: A[gid+8][2tig, 2tig+1]   a2: A[gid][2tig+8, +9]   a3: A[gid+8][2tig+8, +9]
//   b0: B[2tig, 2tig+1][gid]   b1: B[2tig+8, +9][gid]
//   d0, d1: D[gid][2tig, 2tig+1]    d2, d3: D[gid+8][2tig, 2tig+1]
// (the lower 16 bits of a register hold the element with the lower k index).
static __device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
#ifdef LINEAR_NO_PTX
    // D[gid][n] += Σ_k A[gid][k]·B[k][n] for n = 2tig, 2tig+1 (and row gid+8), gathering the A row from lanes
    // gid·4 + q and the B column n from lanes n·4 + q, q = 0..3, exactly as laid out above (1-D blocks only)
    const int lane = (int)(threadIdx.x & 31), gid = lane >> 2, tig = lane & 3;
    for (int q = 0; q < 4; q++) {
        const int sa = gid * 4 + q;
        const uint32_t A0 = __shfl_sync(0xffffffffu, a0, sa), A1 = __shfl_sync(0xffffffffu, a1, sa);
        const uint32_t A2 = __shfl_sync(0xffffffffu, a2, sa), A3 = __shfl_sync(0xffffffffu, a3, sa);
        for (int j = 0; j < 2; j++) {
            const int sb = (2 * tig + j) * 4 + q;
            const uint32_t B0 = __shfl_sync(0xffffffffu, b0, sb), B1 = __shfl_sync(0xffffffffu, b1, sb);
            d[j] += h2f_lo(A0) * h2f_lo(B0) + h2f_hi(A0) * h2f_hi(B0) + h2f_lo(A2) * h2f_lo(B1) +
                    h2f_hi(A2) * h2f_hi(B1);
            d[2 + j] += h2f_lo(A1) * h2f_lo(B0) + h2f_hi(A1) * h2f_hi(B0) + h2f_lo(A3) * h2f_lo(B1) +
                        h2f_hi(A3) * h2f_hi(B1);
        }
    }
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// y[i] for the three output modes. F32_ADD rounds once: y + v.
static __device__ __forceinline__ void store_out(void *y, int out, int64_t i, float v) {
    if (out == CUDA_OUT_F16) {
        reinterpret_cast<__half *>(y)[i] = __float2half_rn(v);
    } else if (out == CUDA_OUT_F32) {
        reinterpret_cast<float *>(y)[i] = v;
    } else {
        float *p = reinterpret_cast<float *>(y) + i;
        *p = __fadd_rn(*p, v);
    }
}

template <typename T> static __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// ---------------------------------------------------------------------------------------------------------------
// W4A8 activations: int8 per token
// ---------------------------------------------------------------------------------------------------------------

// One block per token row t: st[t] = max(max|x_t|, 1e-5) / 127, a = clamp(rint(x / st[t]), −128, 127), sa[t] = Σ a
// (the GEMV folds the code bias out: Σ a·(u − 8) = Σ a·u − 8·Σ a). The same f32 operations as
// vlm_quantize_act_q8_ref — an exact max, IEEE division, round half to even — so the codes are identical.
static __global__ __launch_bounds__(256) void quant_act_kernel(int8_t *a, float *st, int32_t *sa, const __half *x,
                                                        int64_t k) {
    __shared__ float red_f[8];
    __shared__ int32_t red_i[8];
    __shared__ float s_sh;
    const int64_t t = blockIdx.x;
    const __half *xr = x + t * k;
    int8_t *ar = a + t * k;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < k; i += 256) m = fmaxf(m, fabsf(__half2float(xr[i])));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (lane == 0) red_f[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = red_f[0];
        for (int i = 1; i < 8; i++) mm = fmaxf(mm, red_f[i]);
        const float s = __fdiv_rn(mm > 1e-5f ? mm : 1e-5f, 127.0f);
        s_sh = s;
        st[t] = s;
    }
    __syncthreads();
    const float s = s_sh;
    int32_t sum = 0;
    for (int64_t i = threadIdx.x; i < k; i += 256) {
        float v = rintf(__fdiv_rn(__half2float(xr[i]), s));
        v = v < -128.0f ? -128.0f : v > 127.0f ? 127.0f : v;
        const int q = (int)v;
        ar[i] = (int8_t)q;
        sum += q;
    }
    sum = warp_sum(sum);
    if (lane == 0) red_i[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t tot = 0;
        for (int i = 0; i < 8; i++) tot += red_i[i];
        sa[t] = tot;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// GEMV, F16 and Q8R: CUDA cores, a warp per R rows
// ---------------------------------------------------------------------------------------------------------------

// 8 weights of one unit as floats: F16 (a uint4 of 8 halves) or Q8R (8 int8 in .x, .y; q = byte − 128 after the
// bias flip, built as the float 2^23 + (q + 128) and one exact subtraction: no int->float conversion unit).
template <bool Q8> static __device__ __forceinline__ void unit_to_f32(const uint4 &v, float (&f)[8]) {
    if (Q8) {
        const uint32_t lo = v.x ^ 0x80808080u, hi = v.y ^ 0x80808080u;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            f[e] = __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7440u | e)) - 8388736.0f;
            f[4 + e] = __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7440u | e)) - 8388736.0f;
        }
    } else {
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; e++) f[2 * e] = h2f_lo(w[e]), f[2 * e + 1] = h2f_hi(w[e]);
    }
}

// y (M, n) for F16 (w: halves (n, k)) or Q8R (w: int8 (n, k), wscale: f32 (n)). Block: 8 warps; warp: R consecutive
// rows (rows past n read row n−1 and are not stored). VEC: units of 8 columns — the lanes of a warp read 32
// consecutive 16-byte (F16) or 8-byte (Q8R) pieces of a row, U units in flight per lane; the x unit of a token is one
// 16-byte __ldg shared by the R rows. !VEC (k % 8 != 0 or x not 16-byte aligned): one column per lane step.
// The warp's sums are reduced with xor shuffles in a fixed order (deterministic), then lane r·M + t stores (r, t).
template <int M, int R, bool VEC, bool Q8>
static __global__ __launch_bounds__(256) void gemv_rows_kernel(void *y, int out, const __half *x, const void *w,
                                                        const float *wscale, const float *b, int64_t n, int64_t k) {
    constexpr int U = Q8 ? 16 / R : 8 / R; // units in flight per lane per row
    const int lane = threadIdx.x & 31;
    const int64_t row0 = ((int64_t)blockIdx.x * 8 + (threadIdx.x >> 5)) * R;
    if (row0 >= n) return; // no block-wide barrier in this kernel
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++) acc[r][t] = 0.0f;
    int64_t rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = row0 + r < n ? row0 + r : n - 1;

    if (VEC) {
        const int64_t nu = k >> 3;
        for (int64_t u0 = lane; u0 < nu; u0 += 32 * U) {
            uint4 wv[U][R];
#pragma unroll
            for (int j = 0; j < U; j++) {
                const int64_t u = u0 + 32 * j;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    wv[j][r] = make_uint4(0, 0, 0, 0);
                    if (u < nu) {
                        if (Q8) {
                            const uint2 v = ld_stream8(reinterpret_cast<const int8_t *>(w) + rows[r] * k + u * 8);
                            wv[j][r].x = v.x, wv[j][r].y = v.y;
                        } else {
                            wv[j][r] = ld_stream16(reinterpret_cast<const __half *>(w) + rows[r] * k + u * 8);
                        }
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < U; j++) {
                const int64_t u = u0 + 32 * j;
                if (u < nu) {
                    float wf[R][8];
#pragma unroll
                    for (int r = 0; r < R; r++) unit_to_f32<Q8>(wv[j][r], wf[r]);
#pragma unroll
                    for (int t = 0; t < M; t++) {
                        float xf[8];
                        unit_to_f32<false>(ldg16(x + (int64_t)t * k + u * 8), xf);
#pragma unroll
                        for (int r = 0; r < R; r++)
#pragma unroll
                            for (int e = 0; e < 8; e++) acc[r][t] = fmaf(wf[r][e], xf[e], acc[r][t]);
                    }
                }
            }
        }
    } else {
        for (int64_t col = lane; col < k; col += 32) {
            float wf[R];
#pragma unroll
            for (int r = 0; r < R; r++)
                wf[r] = Q8 ? (float)__ldg(reinterpret_cast<const signed char *>(w) + rows[r] * k + col)
                           : __half2float(__ldg(reinterpret_cast<const __half *>(w) + rows[r] * k + col));
#pragma unroll
            for (int t = 0; t < M; t++) {
                const float xv = __half2float(__ldg(x + (int64_t)t * k + col));
#pragma unroll
                for (int r = 0; r < R; r++) acc[r][t] = fmaf(wf[r], xv, acc[r][t]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++) acc[r][t] = warp_sum(acc[r][t]);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++)
            if (lane == r * M + t && row0 + r < n) {
                const int64_t row = row0 + r;
                float v = acc[r][t];
                if (Q8) v *= wscale[row];
                if (b) v += b[row];
                store_out(y, out, (int64_t)t * n + row, v);
            }
}

// ---------------------------------------------------------------------------------------------------------------
// GEMV, W3G128 and W4G128: tensor cores on exact FP16 (q − z)
// ---------------------------------------------------------------------------------------------------------------
//
// Block: 16 output rows (one mma's m), 8 warps; warp w takes the groups G = w, w + 8, ... of those rows. Lane
// (gid, tig) = (lane / 4, lane % 4) owns rows gid and gid + 8 (its mma A rows), the 32 columns of each group listed
// below (the same for both rows and for every gid, so one slot -> column map serves the whole warp), and x of token
// gid (the mma's n; tokens past M feed zeros). Only k slots are permuted, which leaves Σ_k A·B unchanged.
//
// Dequantization builds two FP16 values per 32-bit register without converting anything: the bits of q go into the
// mantissa of 1024.0 (0x6400 | q is exactly 1024 + q), and one f16x2 subtraction of 1024 + z leaves the exact small
// integer q − z. The mma multiplies exactly (11-bit by 5-bit products) and accumulates the group's 128 products in
// FP32; the FP32 group sum is then multiplied by s. So y = Σ_G s_G · Σ_i (q − z)·x, the canonical ŵ of quant.h up to
// FP32 summation order.
//
// W4 (block byte b = q[b] | q[b+64] << 4): lane tig loads bytes 16·tig .. 16·tig+15 of each row's 64-byte block (a
// quad of lanes reads the whole block: coalesced). In its word i (bytes c0 = 16·tig + 4i .. c0+3):
//   (v & 0x000F000F)      -> columns (c0, c0+2)         (v >> 8  & 0x000F000F) -> (c0+1, c0+3)
//   (v >> 4 & 0x000F000F) -> (64+c0, 64+c0+2)           (v >> 12 & 0x000F000F) -> (64+c0+1, 64+c0+3)
// so one mma takes the low nibbles of word i as A (a0/a1: (c0, c0+2) of rows gid/gid+8; a2/a3: (c0+1, c0+3)) and
// x pairs (x[c0], x[c0+2]), (x[c0+1], x[c0+3]) as B; a second takes the high nibbles. 8 mma per group.
//
// W3 (lo: byte b = 2-bit parts of q[b], q[b+32], q[b+64], q[b+96]; hi: bit i of the 128-bit mask = q[i] >> 2): lane
// tig owns lo bytes 8·tig .. 8·tig+7 (one 8-byte load) and reads the 16-byte hi word (the quad's four lanes load the
// same address: one transaction); its columns are 32m + 8·tig + j (m < 4, j < 8). For m and j < 4 one register
// holds columns (32m + 8tig + j, 32m + 8tig + j + 4):
//   lo: P = byte_perm(lo0, lo1) = [lo0.b_j, ., lo1.b_j, .] puts bytes j and j+4 in the two halves; (P >> 2m) & 3.
//   hi: h = byte tig of hi word m (bits j = column 32m + 8tig + j); X = h | h << 12 puts bit j at j and bit j+4 at
//       j+16; shifted to bits 2 and 18 and masked, it completes q = lo | hi << 2 in both halves.

// What lanes whose B token is past M read instead of x (one pointer select per group instead of zeroing registers).
static __device__ const uint4 zero_x4[16] = {};

static __device__ __forceinline__ uint32_t w4_pair(uint32_t v) { return (v & 0x000F000Fu) | 0x64006400u; }

// 1024 + q in both halves of a W3 pair; J = j in 0..3 (compile-time), P = the byte_perm'ed lo bytes, X = hi spread.
template <int J> static __device__ __forceinline__ uint32_t w3_pair(uint32_t P, uint32_t X, int m) {
    const uint32_t lo = (P >> ((J & 1) * 8 + 2 * m)) & 0x00030003u;
    const uint32_t hx = J < 2 ? X << (2 - J) : X >> (J - 2);
    return lo | (hx & 0x00040004u) | 0x64006400u;
}

template <int M, bool W3>
static __global__ __launch_bounds__(256) void gemv_g128_kernel(void *y, int out, const __half *x, const uint8_t *codes,
                                                        const __half *scales, const uint8_t *zeros, const float *b,
                                                        int64_t n, int64_t k) {
    constexpr int BB = W3 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES;
    constexpr int U = 4; // groups in flight per warp
    __shared__ float4 red[8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
    const int64_t ng = k >> 7;
    const int64_t rA = (int64_t)blockIdx.x * 16 + gid, rB = rA + 8;
    const int64_t lA = rA < n ? rA : n - 1, lB = rB < n ? rB : n - 1; // rows past n read row n−1, never stored
    const bool tok_ok = gid < M;
    const __half *xt = x + (int64_t)(tok_ok ? gid : 0) * k;
    const __half *zx = reinterpret_cast<const __half *>(zero_x4); // 128 zeros: one group's columns
    const uint8_t *cA = codes + lA * ng * BB, *cB = codes + lB * ng * BB;

    float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t G0 = warp; G0 < ng; G0 += 8 * U) {
        uint4 wa[U], wb[U]; // W4: bytes 16·tig.. of the block; W3: .x/.y = lo bytes 8·tig.., hi word separately
        uint4 ha[U], hb[U];
        float sA[U], sB[U];
        uint32_t zA[U], zB[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t G = G0 + 8 * u; // warp-uniform: the mma below runs on full warps only
            wa[u] = wb[u] = ha[u] = hb[u] = make_uint4(0, 0, 0, 0);
            sA[u] = sB[u] = 0.0f;
            zA[u] = zB[u] = 0;
            if (G < ng) {
                if (W3) {
                    const uint2 la = ld_stream8(cA + G * BB + 8 * tig), lb = ld_stream8(cB + G * BB + 8 * tig);
                    wa[u].x = la.x, wa[u].y = la.y, wb[u].x = lb.x, wb[u].y = lb.y;
                    ha[u] = ld_stream16(cA + G * BB + 32);
                    hb[u] = ld_stream16(cB + G * BB + 32);
                } else {
                    wa[u] = ld_stream16(cA + G * BB + 16 * tig);
                    wb[u] = ld_stream16(cB + G * BB + 16 * tig);
                }
                sA[u] = __half2float(__ldg(scales + lA * ng + G));
                sB[u] = __half2float(__ldg(scales + lB * ng + G));
                zA[u] = __ldg(zeros + lA * ng + G);
                zB[u] = __ldg(zeros + lB * ng + G);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t G = G0 + 8 * u;
            if (G >= ng) break;
            const uint32_t zzA = 0x64006400u | zA[u] | zA[u] << 16, zzB = 0x64006400u | zB[u] | zB[u] << 16;
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const __half *xg = tok_ok ? xt + G * 128 : zx; // this group's 128 columns of the lane's token
            if (W3) {
                const uint32_t PA[2] = {__byte_perm(wa[u].x, wa[u].y, 0x5410), __byte_perm(wa[u].x, wa[u].y, 0x7632)};
                const uint32_t PB[2] = {__byte_perm(wb[u].x, wb[u].y, 0x5410), __byte_perm(wb[u].x, wb[u].y, 0x7632)};
                const uint32_t hwA[4] = {ha[u].x, ha[u].y, ha[u].z, ha[u].w};
                const uint32_t hwB[4] = {hb[u].x, hb[u].y, hb[u].z, hb[u].w};
#pragma unroll
                for (int m = 0; m < 4; m++) {
                    const uint32_t hA = (hwA[m] >> (8 * tig)) & 0xffu, hB = (hwB[m] >> (8 * tig)) & 0xffu;
                    const uint32_t XA = hA | hA << 12, XB = hB | hB << 12;
                    const uint4 xv = ldg16(xg + 32 * m + 8 * tig); // x[32m + 8tig + j], j = 0..7
                    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
                    // step jj: j = 2jj in slots (2tig, 2tig+1), j = 2jj+1 in slots (2tig+8, 2tig+9)
                    mma_16816(d, hsub2(w3_pair<0>(PA[0], XA, m), zzA), hsub2(w3_pair<0>(PB[0], XB, m), zzB),
                              hsub2(w3_pair<1>(PA[0], XA, m), zzA), hsub2(w3_pair<1>(PB[0], XB, m), zzB),
                              __byte_perm(xw[0], xw[2], 0x5410), __byte_perm(xw[0], xw[2], 0x7632));
                    mma_16816(d, hsub2(w3_pair<2>(PA[1], XA, m), zzA), hsub2(w3_pair<2>(PB[1], XB, m), zzB),
                              hsub2(w3_pair<3>(PA[1], XA, m), zzA), hsub2(w3_pair<3>(PB[1], XB, m), zzB),
                              __byte_perm(xw[1], xw[3], 0x5410), __byte_perm(xw[1], xw[3], 0x7632));
                }
            } else {
                const __half *xq = xg + 16 * tig;
                const uint4 xl0 = ldg16(xq), xl1 = ldg16(xq + 8), xh0 = ldg16(xq + 64), xh1 = ldg16(xq + 72);
                const uint32_t xl[8] = {xl0.x, xl0.y, xl0.z, xl0.w, xl1.x, xl1.y, xl1.z, xl1.w};
                const uint32_t xh[8] = {xh0.x, xh0.y, xh0.z, xh0.w, xh1.x, xh1.y, xh1.z, xh1.w};
                const uint32_t va[4] = {wa[u].x, wa[u].y, wa[u].z, wa[u].w};
                const uint32_t vb[4] = {wb[u].x, wb[u].y, wb[u].z, wb[u].w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    mma_16816(d, hsub2(w4_pair(va[i]), zzA), hsub2(w4_pair(vb[i]), zzB),
                              hsub2(w4_pair(va[i] >> 8), zzA), hsub2(w4_pair(vb[i] >> 8), zzB),
                              __byte_perm(xl[2 * i], xl[2 * i + 1], 0x5410),
                              __byte_perm(xl[2 * i], xl[2 * i + 1], 0x7632));
                    mma_16816(d, hsub2(w4_pair(va[i] >> 4), zzA), hsub2(w4_pair(vb[i] >> 4), zzB),
                              hsub2(w4_pair(va[i] >> 12), zzA), hsub2(w4_pair(vb[i] >> 12), zzB),
                              __byte_perm(xh[2 * i], xh[2 * i + 1], 0x5410),
                              __byte_perm(xh[2 * i], xh[2 * i + 1], 0x7632));
                }
            }
            tot[0] = fmaf(sA[u], d[0], tot[0]); // (row gid,   token 2tig)
            tot[1] = fmaf(sA[u], d[1], tot[1]); // (row gid,   token 2tig+1)
            tot[2] = fmaf(sB[u], d[2], tot[2]); // (row gid+8, token 2tig)
            tot[3] = fmaf(sB[u], d[3], tot[3]); // (row gid+8, token 2tig+1)
        }
    }

    // the 8 warps' partial sums, added in warp order (deterministic)
    red[warp][lane] = make_float4(tot[0], tot[1], tot[2], tot[3]);
    __syncthreads();
    if (threadIdx.x < 16 * M) {
        const int r = threadIdx.x / M, t = threadIdx.x % M; // output (row r of the block, token t)
        const int src = (r & 7) * 4 + (t >> 1), comp = (r >> 3) * 2 + (t & 1);
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++) s += reinterpret_cast<const float *>(&red[w][src])[comp];
        const int64_t row = (int64_t)blockIdx.x * 16 + r;
        if (row < n) {
            if (b) s += b[row];
            store_out(y, out, (int64_t)t * n + row, s);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// GEMV, W4A8: dp4a on the int8 activations
// ---------------------------------------------------------------------------------------------------------------

// Warp: R consecutive rows; lane (gl, w) = (lane % 8, lane / 8) reads bytes 16w .. 16w+15 of the 64-byte block of
// group G = 8·it + gl (the warp covers 512 contiguous bytes of a row per step): low nibbles are columns 16w + e,
// high nibbles 64 + 16w + e — the activation bytes at those columns are two 16-byte __ldg. acc = Σ a·u exactly in
// int32 (|acc| <= 128·15·k), then acc − 8·Σa = Σ a·(u − 8), and the epilogue of cpu_qlinear_ref with explicit
// rounding (no contraction): (float)(s_t · s_row) · (float)acc + b.
template <int M, int R>
static __global__ __launch_bounds__(256) void gemv_w4a8_kernel(void *y, int out, const int8_t *a, const float *st,
                                                        const int32_t *sa, const uint8_t *codes, const float *srow,
                                                        const float *b, int64_t n, int64_t k) {
    constexpr int U = 8 / R;
    const int lane = threadIdx.x & 31, gl = lane & 7, w = lane >> 3;
    const int64_t row0 = ((int64_t)blockIdx.x * 8 + (threadIdx.x >> 5)) * R;
    if (row0 >= n) return; // no block-wide barrier in this kernel
    const int64_t ng = k >> 7;
    int64_t rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = row0 + r < n ? row0 + r : n - 1;
    int32_t acc[R][M];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++) acc[r][t] = 0;

    for (int64_t G0 = gl; G0 < ng; G0 += 8 * U) {
        uint4 wv[U][R];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t G = G0 + 8 * j;
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[j][r] = G < ng ? ld_stream16(codes + (rows[r] * ng + G) * VLM_W4_BLOCK_BYTES + 16 * w)
                                  : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t G = G0 + 8 * j;
            if (G < ng) {
#pragma unroll
                for (int t = 0; t < M; t++) {
                    const int8_t *ap = a + (int64_t)t * k + G * 128 + 16 * w;
                    const uint4 alo = ldg16(ap), ahi = ldg16(ap + 64);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const uint4 v = wv[j][r];
                        int s = acc[r][t];
                        s = __dp4a((int)(v.x & 0x0F0F0F0Fu), (int)alo.x, s);
                        s = __dp4a((int)(v.y & 0x0F0F0F0Fu), (int)alo.y, s);
                        s = __dp4a((int)(v.z & 0x0F0F0F0Fu), (int)alo.z, s);
                        s = __dp4a((int)(v.w & 0x0F0F0F0Fu), (int)alo.w, s);
                        s = __dp4a((int)((v.x >> 4) & 0x0F0F0F0Fu), (int)ahi.x, s);
                        s = __dp4a((int)((v.y >> 4) & 0x0F0F0F0Fu), (int)ahi.y, s);
                        s = __dp4a((int)((v.z >> 4) & 0x0F0F0F0Fu), (int)ahi.z, s);
                        s = __dp4a((int)((v.w >> 4) & 0x0F0F0F0Fu), (int)ahi.w, s);
                        acc[r][t] = s;
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++) acc[r][t] = warp_sum(acc[r][t]);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < M; t++)
            if (lane == r * M + t && row0 + r < n) {
                const int64_t row = row0 + r;
                const int32_t dot = acc[r][t] - 8 * sa[t];
                float v = __fmul_rn(__fmul_rn(st[t], srow[row]), (float)dot);
                v = __fadd_rn(v, b ? b[row] : 0.0f);
                store_out(y, out, (int64_t)t * n + row, v);
            }
}

// ---------------------------------------------------------------------------------------------------------------
// GEMM, W4A8: int8 tensor cores (WMMA 16x16x16, int32 accumulators)
// ---------------------------------------------------------------------------------------------------------------
//
// Block tile: 64 tokens x 128 output rows, k step 128 (one code block per row); 8 warps as 2 (tokens) x 4 (rows),
// 32 x 32 each (2 x 2 fragments). Shared tiles are stored as 8 "slabs" of 16 k-columns, each slab row 16 bytes, so
// every fragment starts 256-byte aligned with ldm = 16 (WMMA needs 32-byte aligned pointers; a plain row-major tile
// would put odd 16-column steps at 16-byte offsets) and a fragment load reads 256 contiguous bytes:
//   As[slab][token][16] (8 KB), Bs[slab][row][16] (16 KB) — B is W (n, k) row-major, i.e. col_major k x n.
// Codes are unpacked to int8 (u − 8): ((nibbles | 0x80808080) − 0x08080808) ^ 0x80808080 (no borrow crosses a byte,
// every byte being >= 0x80 before the subtraction). One k step in registers ahead of the one in shared memory.
// After the k loop the int32 tile goes through shared memory (the same bytes; WMMA's accumulator layout is
// opaque) to the epilogue: (float)(s_t · s_row) · (float)acc + b, bit-identical to the GEMV and the CPU.
#define GM_BM 64
#define GM_BN 128
#define GM_CLD (GM_BN + 4) // int32 row stride of the C tile (a multiple of 4, rows stay 32-byte aligned)

static __device__ __forceinline__ uint32_t s4_to_s8(uint32_t nib) {
    return ((nib | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
}

static __global__ __launch_bounds__(256) void gemm_w4a8_kernel(void *y, int out, const int8_t *a, const float *st,
                                                        const uint8_t *codes, const float *srow, const float *b,
                                                        int64_t M, int64_t n, int64_t k) {
    namespace wmma = nvcuda::wmma;
    constexpr int A_BYTES = 8 * GM_BM * 16, B_BYTES = 8 * GM_BN * 16, C_BYTES = GM_BM * GM_CLD * 4;
    constexpr int SMEM = C_BYTES > A_BYTES + B_BYTES ? C_BYTES : A_BYTES + B_BYTES;
    __shared__ __align__(256) unsigned char smem[SMEM];
    signed char *As = reinterpret_cast<signed char *>(smem);
    signed char *Bs = reinterpret_cast<signed char *>(smem + A_BYTES);
    int32_t *Cs = reinterpret_cast<int32_t *>(smem);

    const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
    const int64_t m0 = (int64_t)blockIdx.y * GM_BM, n0 = (int64_t)blockIdx.x * GM_BN;
    const int64_t ng = k >> 7;

    // Each thread moves 2 of the 512 16-byte pieces of each tile per k step. A piece c: token (c >> 1) & 63,
    // slab 2·(c >> 7) + (c & 1); B piece c: row (c >> 1) & 127, code word w = 2·(c >> 8) + (c & 1) (bytes 16w..,
    // i.e. columns 16w.. in its low nibbles -> slab w, and 64 + 16w.. in its high nibbles -> slab 4 + w). Pairs of
    // lanes read 32 contiguous bytes of global memory; shared stores see at most 2-way bank conflicts.
    int a_tok[2], a_slab[2], b_row[2], b_w[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int c = tid + 256 * i;
        a_tok[i] = (c >> 1) & 63;
        a_slab[i] = ((c >> 7) << 1) | (c & 1);
        b_row[i] = (c >> 1) & 127;
        b_w[i] = ((c >> 8) << 1) | (c & 1);
    }
    uint4 ra[2], rb[2];
    auto load = [&](int64_t G) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int64_t tm = m0 + a_tok[i], o = n0 + b_row[i];
            ra[i] = tm < M ? ldg16(a + tm * k + G * 128 + a_slab[i] * 16) : make_uint4(0, 0, 0, 0);
            rb[i] = o < n ? ld_stream16(codes + (o * ng + G) * VLM_W4_BLOCK_BYTES + b_w[i] * 16)
                          : make_uint4(0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u); // u = 8: zero weights
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0);

    load(0);
    for (int64_t G = 0; G < ng; G++) {
        __syncthreads(); // the previous step's fragments are loaded
#pragma unroll
        for (int i = 0; i < 2; i++) {
            *reinterpret_cast<uint4 *>(As + (a_slab[i] * GM_BM + a_tok[i]) * 16) = ra[i];
            const uint4 v = rb[i];
            const uint4 lo = make_uint4(s4_to_s8(v.x & 0x0F0F0F0Fu), s4_to_s8(v.y & 0x0F0F0F0Fu),
                                        s4_to_s8(v.z & 0x0F0F0F0Fu), s4_to_s8(v.w & 0x0F0F0F0Fu));
            const uint4 hi = make_uint4(s4_to_s8((v.x >> 4) & 0x0F0F0F0Fu), s4_to_s8((v.y >> 4) & 0x0F0F0F0Fu),
                                        s4_to_s8((v.z >> 4) & 0x0F0F0F0Fu), s4_to_s8((v.w >> 4) & 0x0F0F0F0Fu));
            *reinterpret_cast<uint4 *>(Bs + (b_w[i] * GM_BN + b_row[i]) * 16) = lo;
            *reinterpret_cast<uint4 *>(Bs + ((4 + b_w[i]) * GM_BN + b_row[i]) * 16) = hi;
        }
        __syncthreads();
        if (G + 1 < ng) load(G + 1); // in flight during the mma below
#pragma unroll
        for (int s = 0; s < 8; s++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], As + (s * GM_BM + wm * 32 + i * 16) * 16, 16);
#pragma unroll
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], Bs + (s * GM_BN + wn * 32 + j * 16) * 16, 16);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
    __syncthreads(); // Cs reuses the A/B tiles
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * GM_CLD + wn * 32 + j * 16, acc[i][j], GM_CLD,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < GM_BM * GM_BN; e += 256) {
        const int r = e / GM_BN, cc = e % GM_BN; // consecutive threads: consecutive outputs of one token
        const int64_t tm = m0 + r, o = n0 + cc;
        if (tm < M && o < n) {
            float v = __fmul_rn(__fmul_rn(st[tm], srow[o]), (float)Cs[r * GM_CLD + cc]);
            v = __fadd_rn(v, b ? b[o] : 0.0f);
            store_out(y, out, tm * n + o, v);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// M > 8 for W3G128, W4G128, Q8R: dequantize to FP16, then cuBLAS
// ---------------------------------------------------------------------------------------------------------------

// The canonical ŵ of quant.h (vlm_dequantize_row_ref) of row `row`, column `col`, in f32.
template <int FMT>
static __device__ __forceinline__ float dq_elem(const uint8_t *codes, const void *scales, const uint8_t *zeros,
                                                int64_t row, int64_t col, int64_t k) {
    if (FMT == VLM_QF_Q8R)
        return (float)reinterpret_cast<const signed char *>(codes)[row * k + col] *
               reinterpret_cast<const float *>(scales)[row];
    const int64_t ng = k >> 7, gi = row * ng + (col >> 7);
    const int i = (int)(col & 127);
    int q;
    if (FMT == VLM_QF_W4G128) {
        const uint8_t byte = codes[gi * VLM_W4_BLOCK_BYTES + (i & 63)];
        q = i < 64 ? byte & 15 : byte >> 4;
    } else {
        const uint8_t *blk = codes + gi * VLM_W3_BLOCK_BYTES;
        q = ((blk[i & 31] >> (2 * (i >> 5))) & 3) | ((blk[32 + (i >> 3)] >> (i & 7)) & 1) << 2;
    }
    const float s = __half2float(reinterpret_cast<const __half *>(scales)[gi]);
    return (float)(q - (int)zeros[gi]) * s; // exact in f32
}

// dst (rows, k) FP16 = ŵ of rows row0 .. row0+rows−1, rounded to nearest even. A thread per 8 consecutive elements
// of the flattened slice (any k; one 16-byte store when all 8 exist — dst is the scratch base, 16-byte aligned).
template <int FMT>
static __global__ __launch_bounds__(256) void dequant_f16_kernel(__half *dst, const uint8_t *codes, const void *scales,
                                                          const uint8_t *zeros, int64_t row0, int64_t rows,
                                                          int64_t k) {
    const int64_t total = rows * k;
    const int64_t e0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (e0 >= total) return;
    int64_t r = e0 / k, col = e0 % k;
    const int cnt = total - e0 < 8 ? (int)(total - e0) : 8;
    uint32_t h[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (j < cnt) {
            const uint32_t v = __half_as_ushort(__float2half_rn(dq_elem<FMT>(codes, scales, zeros, row0 + r, col, k)));
            h[j >> 1] |= v << (16 * (j & 1));
            if (++col == k) col = 0, r++;
        }
    }
    if (cnt == 8) {
        *reinterpret_cast<uint4 *>(dst + e0) = make_uint4(h[0], h[1], h[2], h[3]);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < cnt) dst[e0 + j] = __ushort_as_half((unsigned short)(h[j >> 1] >> (16 * (j & 1))));
    }
}

// y (M, n) += b broadcast over rows after cuBLAS: FP32 in place, or FP16 widened, added in f32, rounded once more.
static __global__ void add_bias_kernel(void *y, int out, const float *b, int64_t M, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M * n) return;
    const float bv = b[i % n];
    if (out == CUDA_OUT_F16) {
        __half *p = reinterpret_cast<__half *>(y) + i;
        *p = __float2half_rn(__half2float(*p) + bv);
    } else {
        reinterpret_cast<float *>(y)[i] += bv;
    }
}

// F32/BF16 -> F16 at upload (round to nearest even, as vlm_f32_to_f16 of the widened value).
static __global__ void widen_f16_kernel(__half *dst, const void *src, int64_t cnt, int bf16) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cnt; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = bf16 ? __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(src)[i] << 16)
                             : reinterpret_cast<const float *>(src)[i];
        dst[i] = __float2half_rn(v);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// host side
// ---------------------------------------------------------------------------------------------------------------

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

// W4A8 activation scratch: a (M, k) int8 | st (M) f32 | sa (M) int32, each 256-byte aligned.
static size_t act_bytes(int64_t M, int64_t k) {
    return align256((size_t)M * (size_t)k) + 2 * align256((size_t)M * 4);
}

// Rows of FP16 Ŵ per cuBLAS call on the dequantized path (a multiple of 128 when that many fit).
static int64_t dq_slice_rows(int64_t n, int64_t k) {
    int64_t r = (int64_t)(DQ_SLICE_BYTES / (2 * (size_t)k));
    if (r >= 256) r = r / 128 * 128;
    if (r < 1) r = 1;
    return r < n ? r : n;
}

static bool needs_dequant(enum vlm_qformat f) {
    return f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_Q8R;
}

extern "C" size_t cuda_linear_scratch_bytes(const struct cuda_qmat *w, int64_t M) {
    if (!w || M < 1) return 0;
    if (w->fmt == VLM_QF_W4A8) return act_bytes(M, w->k);
    if (needs_dequant(w->fmt) && M > GEMV_MAX_M) return (size_t)dq_slice_rows(w->n, w->k) * (size_t)w->k * 2;
    return 0;
}

extern "C" void cuda_qmat_free(struct cuda_ctx *c, struct cuda_qmat *dev) {
    if (!dev) return;
    cuda_free(c, dev->blob);
    memset(dev, 0, sizeof *dev);
}

// Host -> device on the context's stream (ordered with the kernels that follow; the caller synchronizes).
static enum vlm_status copy_h2d(struct cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return VLM_OK;
    return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "cuda_qmat_upload");
}

extern "C" enum vlm_status cuda_qmat_upload(struct cuda_ctx *c, const struct vlm_qmat *host, struct cuda_qmat *dev,
                                            const char *what) {
    const bool widen = host->fmt == VLM_QF_F32 || host->fmt == VLM_QF_BF16;
    const enum vlm_qformat f = widen ? VLM_QF_F16 : host->fmt;
    struct vlm_qlayout L;
    const char *why = NULL;
    if (!vlm_qlayout(f, host->n, host->k, &L, &why)) {
        vlm_log_error("%s: cannot upload a %s matrix of %lld x %lld: %s", what, vlm_qformat_name(host->fmt),
                      (long long)host->n, (long long)host->k, why);
        return VLM_ERR_ARG;
    }
    void *blob = NULL, *stage = NULL;
    enum vlm_status st = cuda_malloc(c, &blob, L.total_bytes, what);
    if (st != VLM_OK) return st;
    unsigned char *base = static_cast<unsigned char *>(blob);
    if (!widen) {
        st = copy_h2d(c, base + L.codes_off, host->codes, L.codes_bytes);
        if (st == VLM_OK) st = copy_h2d(c, base + L.scales_off, host->scales, L.scales_bytes);
        if (st == VLM_OK) st = copy_h2d(c, base + L.zeros_off, host->zeros, L.zeros_bytes);
        if (st == VLM_OK) st = cuda_status(cudaStreamSynchronize(c->stream), "cuda_qmat_upload");
    } else {
        // through a bounded staging buffer, converted on the device chunk by chunk
        const size_t esize = host->fmt == VLM_QF_F32 ? 4 : 2;
        const int64_t total = host->n * host->k, chunk = (int64_t)4 << 20;
        const int64_t stage_n = total < chunk ? total : chunk;
        st = cuda_malloc(c, &stage, (size_t)stage_n * esize, what);
        for (int64_t off = 0; st == VLM_OK && off < total; off += stage_n) {
            const int64_t cnt = total - off < stage_n ? total - off : stage_n;
            st = copy_h2d(c, stage, static_cast<const unsigned char *>(host->codes) + (size_t)off * esize,
                          (size_t)cnt * esize);
            if (st != VLM_OK) break;
            widen_f16_kernel<<<(unsigned)((cnt + 255) / 256 < 4096 ? (cnt + 255) / 256 : 4096), 256, 0, c->stream>>>(
                reinterpret_cast<__half *>(base) + off, stage, cnt, host->fmt == VLM_QF_BF16);
            st = cuda_status(cudaGetLastError(), "cuda_qmat_upload: widen_f16_kernel");
            // the next chunk overwrites the staging buffer
            if (st == VLM_OK) st = cuda_status(cudaStreamSynchronize(c->stream), "cuda_qmat_upload");
        }
        cuda_free(c, stage);
    }
    if (st != VLM_OK) {
        cuda_free(c, blob);
        return st;
    }
    dev->fmt = f;
    dev->n = host->n;
    dev->k = host->k;
    dev->blob = blob;
    dev->codes = base + L.codes_off;
    dev->scales = L.scales_bytes ? base + L.scales_off : NULL;
    dev->zeros = L.zeros_bytes ? base + L.zeros_off : NULL;
    return VLM_OK;
}

// ---- launchers (templates on M stay in this file)

template <int M> static void launch_g128(struct cuda_ctx *c, bool w3, void *y, int out, const __half *x,
                                         const struct cuda_qmat *w, const float *b) {
    const unsigned blocks = (unsigned)((w->n + 15) / 16);
    const uint8_t *codes = static_cast<const uint8_t *>(w->codes);
    const __half *sc = static_cast<const __half *>(w->scales);
    if (w3) gemv_g128_kernel<M, true><<<blocks, 256, 0, c->stream>>>(y, out, x, codes, sc, w->zeros, b, w->n, w->k);
    else gemv_g128_kernel<M, false><<<blocks, 256, 0, c->stream>>>(y, out, x, codes, sc, w->zeros, b, w->n, w->k);
}

template <int M, bool Q8> static void launch_rows(struct cuda_ctx *c, void *y, int out, const __half *x,
                                                 const struct cuda_qmat *w, const float *b) {
    constexpr int R = M > 4 ? 4 : 2;
    const unsigned blocks = (unsigned)((w->n + 8 * R - 1) / (8 * R));
    const float *ws = static_cast<const float *>(w->scales);
    const bool vec = w->k % 8 == 0 && ((uintptr_t)x & 15) == 0; // rows of x and of W 16-byte (8-byte Q8R) aligned
    if (vec) gemv_rows_kernel<M, R, true, Q8><<<blocks, 256, 0, c->stream>>>(y, out, x, w->codes, ws, b, w->n, w->k);
    else gemv_rows_kernel<M, R, false, Q8><<<blocks, 256, 0, c->stream>>>(y, out, x, w->codes, ws, b, w->n, w->k);
}

template <int M> static void launch_w4a8(struct cuda_ctx *c, void *y, int out, const int8_t *a, const float *st,
                                         const int32_t *sa, const struct cuda_qmat *w, const float *b) {
    constexpr int R = M > 4 ? 4 : 2;
    const unsigned blocks = (unsigned)((w->n + 8 * R - 1) / (8 * R));
    gemv_w4a8_kernel<M, R><<<blocks, 256, 0, c->stream>>>(y, out, a, st, sa, static_cast<const uint8_t *>(w->codes),
                                                          static_cast<const float *>(w->scales), b, w->n, w->k);
}

#define DISPATCH_M(M, CALL)                                                                                        \
    switch (M) {                                                                                                   \
    case 1: CALL(1); break;                                                                                        \
    case 2: CALL(2); break;                                                                                        \
    case 3: CALL(3); break;                                                                                        \
    case 4: CALL(4); break;                                                                                        \
    case 5: CALL(5); break;                                                                                        \
    case 6: CALL(6); break;                                                                                        \
    case 7: CALL(7); break;                                                                                        \
    default: CALL(8); break;                                                                                       \
    }

// y (M, rows) at column offset `col0` of y (M, n) = x (M, k) · W_slice (rows, k)ᵀ through cuBLAS, FP16 inputs, FP32
// compute, C FP16 or FP32 as `out` says, beta = 1 for F32_ADD.
// cuBLAS is column-major. Row-major y (M, n) is, byte for byte, the column-major n x M matrix yᵀ with ld n; row-major
// W (rows, k) is the column-major k x rows matrix Wᵀ (ld k); row-major x (M, k) is column-major k x M xᵀ (ld k).
// y = x·Wᵀ  <=>  yᵀ = W·xᵀ = (Wᵀ)ᵀ·xᵀ, so: C = yᵀ (m = rows, n = M, ldc = n), A = the Wᵀ buffer with CUBLAS_OP_T
// (lda = k), B = the xᵀ buffer with CUBLAS_OP_N (ldb = k), inner dimension k. A slice of W rows is a slice of C's
// rows: C starts at y + col0 with the same ldc = n.
static void gemm_cublas(struct cuda_ctx *c, void *y, enum cuda_out out, const __half *x, const __half *W,
                        int64_t M, int64_t col0, int64_t rows, int64_t n, int64_t k) {
    VLM_ASSERT(M <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX);
    const float alpha = 1.0f, beta = out == CUDA_OUT_F32_ADD ? 1.0f : 0.0f;
    void *C = out == CUDA_OUT_F16 ? (void *)(reinterpret_cast<__half *>(y) + col0)
                                  : (void *)(reinterpret_cast<float *>(y) + col0);
    cublas_status(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)M, (int)k, &alpha, W, CUDA_R_16F,
                               (int)k, x, CUDA_R_16F, (int)k, &beta, C,
                               out == CUDA_OUT_F16 ? CUDA_R_16F : CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT),
                  "cuda_linear: cublasGemmEx");
}

static void linear_cublas(struct cuda_ctx *c, void *y, enum cuda_out out, const __half *x,
                          const struct cuda_qmat *w, const float *b, int64_t M) {
    const int64_t n = w->n, k = w->k;
    // the handle is shared: pin what this path relies on (stream, host scalars, FP32 reductions for FP16 output)
    cublas_status(cublasSetStream(c->blas, c->stream), "cuda_linear: cublasSetStream");
    cublas_status(cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST), "cuda_linear: cublasSetPointerMode");
    cublas_status(cublasSetMathMode(c->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                            CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
                  "cuda_linear: cublasSetMathMode");
    if (w->fmt == VLM_QF_F16) {
        gemm_cublas(c, y, out, x, static_cast<const __half *>(w->codes), M, 0, n, n, k);
    } else {
        const int64_t slice = dq_slice_rows(n, k);
        __half *wdq = static_cast<__half *>(cuda_scratch(c, (size_t)slice * (size_t)k * 2, "cuda_linear"));
        const uint8_t *codes = static_cast<const uint8_t *>(w->codes);
        for (int64_t r0 = 0; r0 < n; r0 += slice) {
            const int64_t rows = n - r0 < slice ? n - r0 : slice;
            const unsigned blocks = (unsigned)((rows * k + 8 * 256 - 1) / (8 * 256));
            switch (w->fmt) {
            case VLM_QF_W3G128:
                dequant_f16_kernel<VLM_QF_W3G128><<<blocks, 256, 0, c->stream>>>(wdq, codes, w->scales, w->zeros, r0,
                                                                                rows, k);
                break;
            case VLM_QF_W4G128:
                dequant_f16_kernel<VLM_QF_W4G128><<<blocks, 256, 0, c->stream>>>(wdq, codes, w->scales, w->zeros, r0,
                                                                                rows, k);
                break;
            default:
                dequant_f16_kernel<VLM_QF_Q8R><<<blocks, 256, 0, c->stream>>>(wdq, codes, w->scales, w->zeros, r0,
                                                                             rows, k);
                break;
            }
            gemm_cublas(c, y, out, x, wdq, M, r0, rows, n, k);
        }
    }
    // y = (x·Ŵᵀ) + b for F16/F32; for F32_ADD cuBLAS already formed y + x·Ŵᵀ (beta = 1), then + b
    if (b) add_bias_kernel<<<cuda_blocks(M * n, 256), 256, 0, c->stream>>>(y, out, b, M, n);
}

extern "C" void cuda_linear(struct cuda_ctx *c, void *y, enum cuda_out out, const uint16_t *x16,
                            const struct cuda_qmat *w, const float *b, int64_t M) {
    if (M < 1) return;
    const __half *x = reinterpret_cast<const __half *>(x16);
    const int64_t n = w->n, k = w->k;
    const int o = (int)out;
    switch (w->fmt) {
    case VLM_QF_W4A8: {
        VLM_ASSERT(k % VLM_QGROUP == 0);
        unsigned char *s = static_cast<unsigned char *>(cuda_scratch(c, act_bytes(M, k), "cuda_linear"));
        int8_t *a = reinterpret_cast<int8_t *>(s);
        float *st = reinterpret_cast<float *>(s + align256((size_t)M * (size_t)k));
        int32_t *sa = reinterpret_cast<int32_t *>(s + align256((size_t)M * (size_t)k) + align256((size_t)M * 4));
        VLM_ASSERT(M <= INT32_MAX);
        quant_act_kernel<<<(unsigned)M, 256, 0, c->stream>>>(a, st, sa, x, k);
        if (M <= GEMV_MAX_M) {
#define CALL(MM) launch_w4a8<MM>(c, y, o, a, st, sa, w, b)
            DISPATCH_M(M, CALL)
#undef CALL
        } else {
            VLM_ASSERT((M + GM_BM - 1) / GM_BM <= 65535);
            const dim3 grid((unsigned)((n + GM_BN - 1) / GM_BN), (unsigned)((M + GM_BM - 1) / GM_BM));
            gemm_w4a8_kernel<<<grid, 256, 0, c->stream>>>(y, o, a, st, static_cast<const uint8_t *>(w->codes),
                                                          static_cast<const float *>(w->scales), b, M, n, k);
        }
        break;
    }
    case VLM_QF_W3G128:
    case VLM_QF_W4G128:
        VLM_ASSERT(k % VLM_QGROUP == 0);
        if (M <= GEMV_MAX_M) {
            VLM_ASSERT(((uintptr_t)x & 15) == 0); // x rows are read as 16-byte vectors
            const bool w3 = w->fmt == VLM_QF_W3G128;
#define CALL(MM) launch_g128<MM>(c, w3, y, o, x, w, b)
            DISPATCH_M(M, CALL)
#undef CALL
        } else {
            linear_cublas(c, y, out, x, w, b, M);
        }
        break;
    case VLM_QF_Q8R:
    case VLM_QF_F16:
        if (M <= GEMV_MAX_M) {
            if (w->fmt == VLM_QF_Q8R) {
#define CALL(MM) launch_rows<MM, true>(c, y, o, x, w, b)
                DISPATCH_M(M, CALL)
#undef CALL
            } else {
#define CALL(MM) launch_rows<MM, false>(c, y, o, x, w, b)
                DISPATCH_M(M, CALL)
#undef CALL
            }
        } else {
            linear_cublas(c, y, out, x, w, b, M);
        }
        break;
    default: VLM_ASSERT(!"cuda_linear: F32/BF16 matrices are F16 on the device (cuda_qmat_upload)");
    }
    // a failed launch stays pending for the next cuda_ctx_sync (the contract of cuda_backend.h)
}
