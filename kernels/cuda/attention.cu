// attention.cu — cuda_attention, the CUDA twin of cpu_attention_ref (contract in kernels/cuda_backend.h): scaled
// dot-product attention with grouped KV heads, causal or not, FP16 q/k/v/out, FP32 scores, softmax and accumulators.
//
// Two kernel families, both exact-softmax (no approximation beyond float rounding) and linear in memory:
//   - n_q >= 2 (prefill, vision): a tiled flash attention. One block of 128 threads per (tile of BQ queries, head);
//     K/V tiles of 32 keys are staged in shared memory as FP16, the Q tile as FP32; each warp owns BQ/4 query rows
//     for the whole key loop (lane = key for the scores, lane = head dimension for the output), so the online
//     softmax needs only warp shuffles and the block synchronizes only around the tile loads. CUDA cores, no
//     tensor cores: correctness first.
//   - n_q == 1 (decode): split-K. Kernel 1: one block per (chunk of 256 keys, head) writes (max, sum, partial
//     output) to the context's scratch; kernel 2: one block per head combines the chunks.
// When n_kv_dev is non-NULL, the number of keys is read on the device (min(*n_kv_dev, n_kv_tok)) and q_pos0 is
// that minus n_q: the grid is sized by n_kv_tok, and blocks past the real length contribute nothing, so one
// captured CUDA graph serves every decode step.
#include <math.h>

#include "kernels/cuda/cuda_internal.h"

#include "runtime/util.h"

#define ATT_THREADS 128   // 4 warps, both families
#define ATT_WARPS 4
#define ATT_BK 32         // keys per flash tile (= warp size: lane j scores key j)
#define ATT_HD_MAX 256    // the generic kernels' bound on the head dimension
#define DEC_CHUNK 256     // keys per split-K block

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v; // every lane gets the same bits (a + b == b + a at each butterfly step)
}

static __device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The real key count and first query position: from the device when n_kv_dev is given (CUDA graphs).
static __device__ void att_lengths(const int32_t *n_kv_dev, int64_t n_kv_tok, int64_t n_q, int64_t q_pos0_arg,
                                   int64_t *n_kv, int64_t *q_pos0) {
    if (n_kv_dev) {
        int64_t n = *n_kv_dev;
        n = n < 0 ? 0 : n > n_kv_tok ? n_kv_tok : n;
        *n_kv = n;
        *q_pos0 = n - n_q;
    } else {
        *n_kv = n_kv_tok;
        *q_pos0 = q_pos0_arg;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * flash attention (n_q >= 2)
 *
 * Block (query tile qt, head h); warp w owns query rows w·RPW .. w·RPW + RPW − 1 of the tile. Per key tile j0:
 *   scores  lane = key j0 + lane: s[i] = Σ_d Q[row i][d]·K[lane][d] (Q from shared, broadcast; K rows padded by
 *           2 halves so the 32 lanes hit 32 different banks), then · scale and masked to −inf;
 *   softmax per row: tile max and sum by warp shuffles, running (m, l) kept in registers (identical in all lanes),
 *           earlier output rescaled by exp(m_old − m_new);
 *   output  lane = head dims lane + 32c: O[i][c] += p_j · V[j][lane + 32c], p_j fetched from lane j by shuffle.
 * Shared memory: Q (BQ, hd) float + K, V (32, hd + 2) half: 33 KB at hd 128 (BQ 32), 41 KB generic (hd <= 256,
 * BQ 8); all static, under the 48 KB default.
 * ------------------------------------------------------------------------------------------------------------- */

// HD > 0: that head dimension exactly; HD == 0: any even hd <= ATT_HD_MAX (the slower generic kernel).
template <int HD, int BQ>
static __global__ void __launch_bounds__(ATT_THREADS)
attn_flash_kernel(__half *out, const __half *q, const __half *k, const __half *v, int64_t n_q, int64_t n_kv_tok,
                  int64_t n_heads, int64_t group, int hd_arg, int64_t q_stride, int64_t kv_stride, int64_t q_pos0_arg,
                  int causal, const int32_t *n_kv_dev, float scale) {
    constexpr int HDS = HD > 0 ? HD : ATT_HD_MAX; // storage bound
    constexpr int C = (HDS + 31) / 32;            // output columns per lane
    constexpr int RPW = BQ / ATT_WARPS;           // query rows per warp
    static_assert(BQ % ATT_WARPS == 0, "whole rows per warp");
    const int hd = HD > 0 ? HD : hd_arg;
    const int kst = hd + 2; // K/V row stride in shared memory (halves): an odd number of 32-bit words when 4 | hd

    __shared__ __align__(16) float qs[BQ * HDS];
    __shared__ __align__(16) __half ks[ATT_BK * (HDS + 2)];
    __shared__ __align__(16) __half vs[ATT_BK * (HDS + 2)];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t h = blockIdx.y, kvh = h / group, q0 = (int64_t)blockIdx.x * BQ;
    int64_t n_kv, q_pos0;
    att_lengths(n_kv_dev, n_kv_tok, n_q, q_pos0_arg, &n_kv, &q_pos0);

    // keys any row of this tile can see (uniform over the block: it bounds a loop with barriers)
    const int64_t q_last = (q0 + BQ < n_q ? q0 + BQ : n_q) - 1;
    int64_t n_end = n_kv;
    if (causal && q_pos0 + q_last + 1 < n_end) n_end = q_pos0 + q_last + 1;

    for (int idx = tid; idx < BQ * hd; idx += ATT_THREADS) {
        const int r = idx / hd, d = idx % hd;
        const int64_t qi = q0 + r;
        qs[r * hd + d] = qi < n_q ? __half2float(q[qi * q_stride + h * hd + d]) : 0.0f;
    }

    float m[RPW], l[RPW], o[RPW][C];
#pragma unroll
    for (int i = 0; i < RPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < C; cc++) o[i][cc] = 0.0f;
    }

    for (int64_t j0 = 0; j0 < n_end; j0 += ATT_BK) {
        __syncthreads(); // the previous tile is consumed (and, the first time, Q is staged)
        for (int idx = tid; idx < ATT_BK * hd; idx += ATT_THREADS) {
            const int r = idx / hd, d = idx % hd;
            const int64_t j = j0 + r;
            __half kx = __float2half_rn(0.0f), vx = kx; // zeros past the end: p = 0 must not meet a NaN
            if (j < n_kv) {
                kx = k[j * kv_stride + kvh * hd + d];
                vx = v[j * kv_stride + kvh * hd + d];
            }
            ks[r * kst + d] = kx;
            vs[r * kst + d] = vx;
        }
        __syncthreads();

        // scores of (row i, key j0 + lane)
        float s[RPW];
#pragma unroll
        for (int i = 0; i < RPW; i++) s[i] = 0.0f;
        const __half *kr = ks + lane * kst;
#pragma unroll 4
        for (int d = 0; d < hd; d += 2) {
            const float2 kk = __half22float2(*reinterpret_cast<const __half2 *>(kr + d));
#pragma unroll
            for (int i = 0; i < RPW; i++) {
                const float2 qq = *reinterpret_cast<const float2 *>(qs + (warp * RPW + i) * hd + d);
                s[i] += qq.x * kk.x + qq.y * kk.y;
            }
        }

        // online softmax; p[i] = probability weight of key j0 + lane for row i (before the final 1/l)
        const int64_t j = j0 + lane;
        float p[RPW];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
            const int64_t qi = q0 + warp * RPW + i;
            const bool visible = j < n_kv && (!causal || j <= q_pos0 + qi);
            const float sc = visible ? s[i] * scale : -INFINITY;
            const float mn = fmaxf(m[i], warp_max(sc));
            float corr;
            if (mn == -INFINITY) { // nothing visible yet for this row (uniform over the warp)
                p[i] = 0.0f;
                corr = 1.0f;
            } else {
                p[i] = expf(sc - mn);     // 0 for a masked key
                corr = expf(m[i] - mn);   // 0 on the row's first visible tile (m = −inf), where O and l are 0
            }
            l[i] = l[i] * corr + warp_sum(p[i]);
            m[i] = mn;
#pragma unroll
            for (int cc = 0; cc < C; cc++) o[i][cc] *= corr;
        }

        // O += P · V
        for (int jj = 0; jj < ATT_BK; jj++) {
            float vv[C];
#pragma unroll
            for (int cc = 0; cc < C; cc++) {
                const int d = lane + 32 * cc;
                vv[cc] = d < hd ? __half2float(vs[jj * kst + d]) : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < RPW; i++) {
                const float pj = __shfl_sync(0xffffffffu, p[i], jj);
#pragma unroll
                for (int cc = 0; cc < C; cc++) o[i][cc] += pj * vv[cc];
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RPW; i++) {
        const int64_t qi = q0 + warp * RPW + i;
        if (qi >= n_q) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f; // no visible key: 0, as the reference's empty sum
        __half *dst = out + (qi * n_heads + h) * hd;
#pragma unroll
        for (int cc = 0; cc < C; cc++) {
            const int d = lane + 32 * cc;
            if (d < hd) dst[d] = __float2half_rn(o[i][cc] * inv);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * split-K decode (n_q == 1)
 *
 * Partials: part (n_heads, n_chunks, hd + 2) floats: [0] = max score m of the chunk (−inf when the chunk is empty),
 * [1] = Σ exp(s − m), [2 ..] = Σ exp(s − m) · v. Kernel 1 shared memory: q (256 floats) + scores (256 floats).
 * ------------------------------------------------------------------------------------------------------------- */

static __global__ void __launch_bounds__(ATT_THREADS)
attn_decode_partial_kernel(float *part, const __half *q, const __half *k, const __half *v, int64_t n_kv_tok,
                           int64_t group, int hd, int64_t kv_stride, int64_t q_pos0_arg, int causal,
                           const int32_t *n_kv_dev, float scale, int64_t n_chunks) {
    __shared__ float qs[ATT_HD_MAX];
    __shared__ float ps[DEC_CHUNK];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t chunk = blockIdx.x, h = blockIdx.y, kvh = h / group;
    int64_t n_kv, q_pos0;
    att_lengths(n_kv_dev, n_kv_tok, 1, q_pos0_arg, &n_kv, &q_pos0);
    int64_t n_vis = n_kv;
    if (causal && q_pos0 + 1 < n_vis) n_vis = q_pos0 + 1 < 0 ? 0 : q_pos0 + 1;
    const int64_t j0 = chunk * DEC_CHUNK;
    const int n = (int)(n_vis - j0 <= 0 ? 0 : n_vis - j0 >= DEC_CHUNK ? DEC_CHUNK : n_vis - j0);
    float *dst = part + (h * n_chunks + chunk) * (hd + 2);
    if (n == 0) { // uniform over the block, before any barrier
        for (int d = tid; d < hd; d += ATT_THREADS) dst[2 + d] = 0.0f;
        if (tid == 0) dst[0] = -INFINITY, dst[1] = 0.0f;
        return;
    }

    for (int d = tid; d < hd; d += ATT_THREADS) qs[d] = __half2float(q[h * hd + d]);
    __syncthreads();
    // scores: one warp per key, lanes over the head dimension
    for (int jj = warp; jj < n; jj += ATT_WARPS) {
        const __half *kr = k + (j0 + jj) * kv_stride + kvh * hd;
        float a = 0.0f;
        for (int d = lane; d < hd; d += 32) a += qs[d] * __half2float(kr[d]);
        a = warp_sum(a);
        if (lane == 0) ps[jj] = a * scale;
    }
    __syncthreads();
    float mx = -INFINITY; // every warp computes the same max
    for (int jj = lane; jj < n; jj += 32) mx = fmaxf(mx, ps[jj]);
    mx = warp_max(mx);
    __syncthreads(); // all reads of the scores done before they become probabilities
    for (int jj = tid; jj < n; jj += ATT_THREADS) ps[jj] = expf(ps[jj] - mx);
    __syncthreads();
    for (int d = tid; d < hd; d += ATT_THREADS) {
        const __half *vc = v + j0 * kv_stride + kvh * hd + d;
        float acc = 0.0f;
        for (int jj = 0; jj < n; jj++) acc += ps[jj] * __half2float(vc[jj * kv_stride]);
        dst[2 + d] = acc;
    }
    if (warp == 0) {
        float sum = 0.0f;
        for (int jj = lane; jj < n; jj += 32) sum += ps[jj];
        sum = warp_sum(sum);
        if (lane == 0) dst[0] = mx, dst[1] = sum;
    }
}

static __global__ void __launch_bounds__(ATT_THREADS)
attn_decode_combine_kernel(__half *out, const float *part, int hd, int64_t n_chunks) {
    const int64_t h = blockIdx.x;
    const float *ph = part + h * n_chunks * (hd + 2);
    float mx = -INFINITY;
    for (int64_t c = 0; c < n_chunks; c++) mx = fmaxf(mx, ph[c * (hd + 2)]);
    float sum = 0.0f;
    if (mx != -INFINITY)
        for (int64_t c = 0; c < n_chunks; c++) {
            const float mc = ph[c * (hd + 2)];
            if (mc != -INFINITY) sum += ph[c * (hd + 2) + 1] * expf(mc - mx);
        }
    for (int d = threadIdx.x; d < hd; d += ATT_THREADS) {
        float acc = 0.0f;
        if (mx != -INFINITY)
            for (int64_t c = 0; c < n_chunks; c++) {
                const float mc = ph[c * (hd + 2)];
                if (mc != -INFINITY) acc += ph[c * (hd + 2) + 2 + d] * expf(mc - mx);
            }
        out[h * hd + d] = __float2half_rn(sum > 0.0f ? acc / sum : 0.0f); // no visible key: 0, as the reference
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * host side
 * ------------------------------------------------------------------------------------------------------------- */

static int64_t dec_chunks(int64_t n_kv_tok) { return (n_kv_tok + DEC_CHUNK - 1) / DEC_CHUNK; }

extern "C" size_t cuda_attention_scratch_bytes(int64_t n_heads, int64_t hd, int64_t n_kv_tok) {
    if (n_heads <= 0 || hd <= 0 || n_kv_tok <= 0) return 0;
    return (size_t)n_heads * (size_t)dec_chunks(n_kv_tok) * (size_t)(hd + 2) * sizeof(float);
}

template <int HD, int BQ>
static void launch_flash(struct cuda_ctx *c, __half *out, const __half *q, const __half *k, const __half *v,
                         int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t group, int64_t hd, int64_t q_stride,
                         int64_t kv_stride, int64_t q_pos0, int causal, const int32_t *n_kv_dev, float scale) {
    const dim3 grid((unsigned)((n_q + BQ - 1) / BQ), (unsigned)n_heads);
    attn_flash_kernel<HD, BQ><<<grid, ATT_THREADS, 0, c->stream>>>(out, q, k, v, n_q, n_kv_tok, n_heads, group,
                                                                  (int)hd, q_stride, kv_stride, q_pos0, causal,
                                                                  n_kv_dev, scale);
}

extern "C" void cuda_attention(struct cuda_ctx *c, uint16_t *out, const uint16_t *q, const uint16_t *k,
                               const uint16_t *v, int64_t n_q, int64_t n_kv_tok, int64_t n_heads, int64_t n_kv_heads,
                               int64_t hd, int64_t q_stride, int64_t kv_stride, int64_t q_pos0, int causal,
                               const int32_t *n_kv_dev) {
    if (n_q <= 0 || n_heads <= 0) return;
    VLM_ASSERT(n_kv_heads > 0 && n_heads % n_kv_heads == 0 && n_heads <= 65535);
    VLM_ASSERT(hd >= 2 && hd % 2 == 0 && hd <= ATT_HD_MAX);
    VLM_ASSERT(q_stride >= n_heads * hd && kv_stride >= n_kv_heads * hd && n_kv_tok >= 0);
    __half *o = (__half *)out;
    const __half *qh = (const __half *)q, *kh = (const __half *)k, *vh = (const __half *)v;
    if (n_kv_tok == 0) { // no keys at all: the reference's empty sums
        (void)cuda_memset0(c, out, (size_t)(n_q * n_heads * hd) * sizeof(uint16_t));
        return;
    }
    const int64_t group = n_heads / n_kv_heads;
    const float scale = (float)(1.0 / sqrt((double)hd)); // as the reference
    if (n_q == 1) {
        const int64_t n_chunks = dec_chunks(n_kv_tok);
        VLM_ASSERT(n_chunks <= 0x7fffffff);
        float *part = (float *)cuda_scratch(c, cuda_attention_scratch_bytes(n_heads, hd, n_kv_tok), "cuda_attention");
        attn_decode_partial_kernel<<<dim3((unsigned)n_chunks, (unsigned)n_heads), ATT_THREADS, 0, c->stream>>>(
            part, qh, kh, vh, n_kv_tok, group, (int)hd, kv_stride, q_pos0, causal, n_kv_dev, scale, n_chunks);
        attn_decode_combine_kernel<<<(unsigned)n_heads, ATT_THREADS, 0, c->stream>>>(o, part, (int)hd, n_chunks);
        return;
    }
#define FLASH(HD, BQ)                                                                                               \
    launch_flash<HD, BQ>(c, o, qh, kh, vh, n_q, n_kv_tok, n_heads, group, hd, q_stride, kv_stride, q_pos0, causal, \
                         n_kv_dev, scale)
    switch (hd) {
    case 64: FLASH(64, 32); break;
    case 72: FLASH(72, 32); break;
    case 80: FLASH(80, 32); break;
    case 96: FLASH(96, 32); break;
    case 128: FLASH(128, 32); break;
    default: FLASH(0, 8); break; // any other even hd <= 256
    }
#undef FLASH
}
