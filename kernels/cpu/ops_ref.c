/* ops_ref.c — the float32 CPU reference of every op (contracts in kernels/ops.h).
 *
 * Plain loops, no intrinsics: this file is what every fast and CUDA kernel is checked against. Reductions
 * (dot products, means, softmax sums) accumulate in double so that the reference is at least as accurate as
 * PyTorch's float32 blocked sums; results are rounded to float once. Rows are independent, so splitting rows over
 * the thread pool (vlm_pool_for; one threading system for the whole runtime, so no two spin against each other)
 * changes no result. */
#include <math.h>
#include <stddef.h>

#include "kernels/cpu/pool.h"
#include "kernels/ops.h"

struct linear_job {
    float *y;
    const float *x, *w, *b;
    int64_t N, K;
};

/* outputs [begin, end) of the flattened (M, N) result */
static void linear_range(void *ctx, int64_t begin, int64_t end) {
    const struct linear_job *j = ctx;
    for (int64_t o = begin; o < end; o++) {
        const int64_t i = o / j->N, n = o % j->N;
        const float *xr = j->x + i * j->K, *wr = j->w + n * j->K;
        double acc = j->b ? (double)j->b[n] : 0.0;
        for (int64_t k = 0; k < j->K; k++) acc += (double)xr[k] * (double)wr[k];
        j->y[o] = (float)acc;
    }
}

void cpu_linear_ref(float *y, const float *x, const float *w, const float *b, int64_t M, int64_t N, int64_t K) {
    struct linear_job j = {y, x, w, b, N, K};
    vlm_pool_for(vlm_pool_default(), M * N, 1 + 16384 / (K > 0 ? K : 1), linear_range, &j);
}

struct norm_job {
    float *y;
    const float *x, *g, *b;
    int64_t n;
    float eps;
};

static void layernorm_range(void *ctx, int64_t begin, int64_t end) {
    const struct norm_job *j = ctx;
    const int64_t n = j->n;
    for (int64_t i = begin; i < end; i++) {
        const float *xr = j->x + i * n;
        float *yr = j->y + i * n;
        double mean = 0, var = 0;
        for (int64_t k = 0; k < n; k++) mean += xr[k];
        mean /= (double)n;
        for (int64_t k = 0; k < n; k++) var += ((double)xr[k] - mean) * ((double)xr[k] - mean);
        var /= (double)n; /* biased, as torch.nn.LayerNorm */
        double inv = 1.0 / sqrt(var + (double)j->eps);
        for (int64_t k = 0; k < n; k++) yr[k] = (float)(((double)xr[k] - mean) * inv * j->g[k] + j->b[k]);
    }
}

void cpu_layernorm_ref(float *y, const float *x, const float *g, const float *b, int64_t M, int64_t n, float eps) {
    struct norm_job j = {y, x, g, b, n, eps};
    vlm_pool_for(vlm_pool_default(), M, 1 + 16384 / (n > 0 ? n : 1), layernorm_range, &j);
}

static void rmsnorm_range(void *ctx, int64_t begin, int64_t end) {
    const struct norm_job *j = ctx;
    const int64_t n = j->n;
    for (int64_t i = begin; i < end; i++) {
        const float *xr = j->x + i * n;
        float *yr = j->y + i * n;
        double ss = 0;
        for (int64_t k = 0; k < n; k++) ss += (double)xr[k] * xr[k];
        /* HF: r = (float)(x * rsqrt(mean + eps)), then weight * r (the weight multiply after the cast). */
        double inv = 1.0 / sqrt(ss / (double)n + (double)j->eps);
        for (int64_t k = 0; k < n; k++) yr[k] = j->g[k] * (float)(xr[k] * inv);
    }
}

void cpu_rmsnorm_ref(float *y, const float *x, const float *g, int64_t M, int64_t n, float eps) {
    struct norm_job j = {y, x, g, NULL, n, eps};
    vlm_pool_for(vlm_pool_default(), M, 1 + 16384 / (n > 0 ? n : 1), rmsnorm_range, &j);
}

/* Elementwise activations: each element on its own, so splitting the range over the pool changes no result. */
struct act_job {
    float *a;
    const float *b;
};

static void gelu_tanh_range(void *ctx, int64_t begin, int64_t end) {
    float *x = ((struct act_job *)ctx)->a;
    const double c = 0.7978845608028654; /* sqrt(2/pi) */
    for (int64_t i = begin; i < end; i++) {
        double v = x[i];
        x[i] = (float)(0.5 * v * (1.0 + tanh(c * (v + 0.044715 * v * v * v))));
    }
}

static void gelu_erf_range(void *ctx, int64_t begin, int64_t end) {
    float *x = ((struct act_job *)ctx)->a;
    for (int64_t i = begin; i < end; i++) {
        double v = x[i];
        x[i] = (float)(0.5 * v * (1.0 + erf(v * 0.7071067811865476)));
    }
}

static void silu_range(void *ctx, int64_t begin, int64_t end) {
    float *x = ((struct act_job *)ctx)->a;
    for (int64_t i = begin; i < end; i++) {
        double v = x[i];
        x[i] = (float)(v / (1.0 + exp(-v)));
    }
}

static void swiglu_range(void *ctx, int64_t begin, int64_t end) {
    const struct act_job *j = ctx;
    for (int64_t i = begin; i < end; i++) {
        double v = j->a[i];
        /* HF: act_fn(gate) is rounded to float before the multiply by up. */
        j->a[i] = (float)(v / (1.0 + exp(-v))) * j->b[i];
    }
}

#define ACT_GRAIN 8192 /* elements: below two of these a hand-off costs more than it saves */

void cpu_gelu_tanh_ref(float *x, int64_t n) {
    struct act_job j = {x, NULL};
    vlm_pool_for(vlm_pool_default(), n, ACT_GRAIN, gelu_tanh_range, &j);
}

void cpu_gelu_erf_ref(float *x, int64_t n) {
    struct act_job j = {x, NULL};
    vlm_pool_for(vlm_pool_default(), n, ACT_GRAIN, gelu_erf_range, &j);
}

void cpu_silu_ref(float *x, int64_t n) {
    struct act_job j = {x, NULL};
    vlm_pool_for(vlm_pool_default(), n, ACT_GRAIN, silu_range, &j);
}

void cpu_swiglu_ref(float *a, const float *b, int64_t n) {
    struct act_job j = {a, b};
    vlm_pool_for(vlm_pool_default(), n, ACT_GRAIN, swiglu_range, &j);
}

void cpu_softmax_ref(float *x, int64_t M, int64_t n) {
    for (int64_t i = 0; i < M; i++) {
        float *r = x + i * n;
        float mx = -INFINITY;
        for (int64_t k = 0; k < n; k++) mx = r[k] > mx ? r[k] : mx;
        if (mx == -INFINITY) { /* fully masked row: torch gives NaN; keep that class */
            for (int64_t k = 0; k < n; k++) r[k] = NAN;
            continue;
        }
        double sum = 0;
        for (int64_t k = 0; k < n; k++) sum += exp((double)r[k] - (double)mx);
        for (int64_t k = 0; k < n; k++) r[k] = (float)(exp((double)r[k] - (double)mx) / sum);
    }
}

void cpu_rope_neox_ref(float *x, int64_t n_tok, int64_t n_heads, int64_t hd, int64_t pos0, float theta) {
    int64_t half = hd / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        float pos = (float)(pos0 + t); /* HF casts position ids to float32 */
        for (int64_t j = 0; j < half; j++) {
            /* HF: inv_freq = 1 / theta^(float(2j)/hd) in float32; angle = inv_freq * pos in float32. */
            float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
            float ang = inv_freq * pos;
            float c = cosf(ang), s = sinf(ang);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = x + (t * n_heads + h) * hd;
                float a = v[j], b = v[j + half];
                v[j] = a * c - b * s;
                v[j + half] = b * c + a * s;
            }
        }
    }
}

void cpu_attention_ref(float *out, const float *q, const float *k, const float *v, int64_t n_q, int64_t n_kv_tok,
                       int64_t n_heads, int64_t n_kv_heads, int64_t hd, int64_t kv_stride, int64_t q_pos0, int causal,
                       float *scratch) {
    const int64_t group = n_heads / n_kv_heads;
    const float scale = (float)(1.0 / sqrt((double)hd)); /* HF: head_dim**-0.5 as a Python float, then float32 */
    for (int64_t i = 0; i < n_q; i++) {
        int64_t n_vis = causal ? q_pos0 + i + 1 : n_kv_tok;
        if (n_vis > n_kv_tok) n_vis = n_kv_tok;
        for (int64_t h = 0; h < n_heads; h++) {
            const float *qh = q + (i * n_heads + h) * hd;
            const int64_t kvh = h / group;
            for (int64_t j = 0; j < n_vis; j++) {
                const float *kj = k + j * kv_stride + kvh * hd;
                double acc = 0;
                for (int64_t d = 0; d < hd; d++) acc += (double)qh[d] * kj[d];
                scratch[j] = (float)acc * scale;
            }
            cpu_softmax_ref(scratch, 1, n_vis);
            float *oh = out + (i * n_heads + h) * hd;
            for (int64_t d = 0; d < hd; d++) {
                double acc = 0;
                for (int64_t j = 0; j < n_vis; j++) acc += (double)scratch[j] * v[j * kv_stride + kvh * hd + d];
                oh[d] = (float)acc;
            }
        }
    }
}
