/* test_ops.c — the float32 reference ops against values derived by hand (exactly representable inputs,
 * closed-form outputs) and against properties that hold for any correct implementation. */
#include <math.h>
#include <string.h>

#include "kernels/ops.h"
#include "test.h"
#include "tolerances.h"

TEST(linear_small_exact) {
    /* x (2,3), W (2,3) [out,in], b (2): every product and sum is exact in float32 */
    const float x[] = {1, 2, 3, -1, 0.5f, 4};
    const float w[] = {2, 0, 1, -1, 3, 0.25f};
    const float b[] = {0.5f, -2};
    const float want[] = {1 * 2 + 2 * 0 + 3 * 1 + 0.5f, -1 + 6 + 0.75f - 2, -2 + 0 + 4 + 0.5f, 1 + 1.5f + 1 - 2};
    float y[4];
    cpu_linear_ref(y, x, w, b, 2, 2, 3);
    CHECK_NEAR_TENSOR("linear", y, want, 4, 0, 0);
    cpu_linear_ref(y, x, w, NULL, 2, 2, 3);
    const float want_nb[] = {want[0] - 0.5f, want[1] + 2, want[2] - 0.5f, want[3] + 2};
    CHECK_NEAR_TENSOR("linear no bias", y, want_nb, 4, 0, 0);
}

TEST(layernorm_properties) {
    float x[2][8] = {{1, 2, 3, 4, 5, 6, 7, 8}, {-3, 0.5f, 2, 2, 9, -1, 0, 4}};
    float g[8], b[8], y[16];
    for (int i = 0; i < 8; i++) g[i] = 1, b[i] = 0;
    cpu_layernorm_ref(y, &x[0][0], g, b, 2, 8, 1e-6f);
    for (int r = 0; r < 2; r++) {
        double m = 0, v = 0;
        for (int i = 0; i < 8; i++) m += y[r * 8 + i];
        for (int i = 0; i < 8; i++) v += (y[r * 8 + i] - m / 8) * (y[r * 8 + i] - m / 8);
        CHECK(fabs(m / 8) < 1e-6);
        CHECK(fabs(v / 8 - 1) < 1e-5); /* biased variance 1 up to eps */
    }
    /* row 0: mean 4.5, var 5.25 -> first value (1-4.5)/sqrt(5.25+1e-6) */
    CHECK(fabs(y[0] - (-3.5 / sqrt(5.25 + 1e-6))) < 1e-6);
    for (int i = 0; i < 8; i++) g[i] = 2, b[i] = 1;
    float y2[16];
    cpu_layernorm_ref(y2, &x[0][0], g, b, 2, 8, 1e-6f);
    for (int i = 0; i < 16; i++) CHECK(fabs(y2[i] - (2 * y[i] + 1)) < 1e-6);
}

TEST(rmsnorm_known) {
    const float x[] = {3, 4}, g[] = {1, 2};
    float y[2];
    cpu_rmsnorm_ref(y, x, g, 1, 2, 0);
    const float want[] = {(float)(3 / sqrt(12.5)), (float)(2 * (4 / sqrt(12.5)))};
    CHECK_NEAR_TENSOR("rmsnorm", y, want, 2, TOL_OP_ATOL, TOL_OP_RTOL);
    float z[2] = {3, 4};
    cpu_rmsnorm_ref(z, z, g, 1, 2, 0); /* in place */
    CHECK_NEAR_TENSOR("rmsnorm in place", z, want, 2, 0, 0);
}

TEST(activations_known_values) {
    /* reference values: erf/tanh forms at 1 and -2 from their definitions (published tables) */
    float a[] = {1, -2, 0};
    cpu_gelu_erf_ref(a, 3);
    const float ga[] = {0.8413447460685429f, -0.04550026389635842f, 0};
    CHECK_NEAR_TENSOR("gelu_erf", a, ga, 3, TOL_OP_ATOL, TOL_OP_RTOL);
    float t[] = {1, -2, 0};
    cpu_gelu_tanh_ref(t, 3);
    const float gt[] = {0.8411919906082768f, -0.04540230591222795f, 0};
    CHECK_NEAR_TENSOR("gelu_tanh", t, gt, 3, TOL_OP_ATOL, TOL_OP_RTOL);
    float s[] = {1, -2, 0};
    cpu_silu_ref(s, 3);
    const float gs[] = {0.7310585786300049f, -0.23840584404423515f, 0};
    CHECK_NEAR_TENSOR("silu", s, gs, 3, TOL_OP_ATOL, TOL_OP_RTOL);
    float g2[] = {1, -2}, u[] = {2, 3};
    cpu_swiglu_ref(g2, u, 2);
    const float gw[] = {2 * 0.7310585786300049f, 3 * -0.23840584404423515f};
    CHECK_NEAR_TENSOR("swiglu", g2, gw, 2, TOL_OP_ATOL, TOL_OP_RTOL);
}

TEST(softmax_known_and_stable) {
    float x[] = {0, (float)log(2.0), 1000, 1001, -INFINITY, 0}; /* large but exact: no overflow */
    cpu_softmax_ref(x, 3, 2);
    const float want[] = {1.f / 3, 2.f / 3, (float)(1 / (1 + M_E)), (float)(M_E / (1 + M_E)), 0, 1};
    CHECK_NEAR_TENSOR("softmax", x, want, 6, TOL_OP_ATOL, TOL_OP_RTOL);
}

TEST(rope_identity_rotation_relative) {
    /* position 0 is the identity */
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8}, v0[8];
    memcpy(v0, v, sizeof v);
    cpu_rope_neox_ref(v, 1, 2, 4, 0, 10000.f);
    CHECK_NEAR_TENSOR("rope pos 0", v, v0, 8, 0, 0);
    /* hd = 2: inv_freq = 1, the pair (x0, x1) rotates by exactly `pos` radians */
    float p[2] = {1, 0};
    cpu_rope_neox_ref(p, 1, 1, 2, 3, 10000.f);
    const float want[2] = {cosf(3.f), sinf(3.f)};
    CHECK_NEAR_TENSOR("rope hd2", p, want, 2, TOL_OP_ATOL, 0);
    /* pairs are j and j + hd/2 (NeoX): norms of (x[j], x[j+2]) are preserved */
    float q[4] = {1, 2, 3, 4};
    cpu_rope_neox_ref(q, 1, 1, 4, 5, 100.f);
    CHECK(fabs(hypot(q[0], q[2]) - hypot(1, 3)) < 1e-6);
    CHECK(fabs(hypot(q[1], q[3]) - hypot(2, 4)) < 1e-6);
    /* second pair angle = pos * theta^(-2/4) = 5 / 10 */
    CHECK(fabs(q[1] - (2 * cos(0.5) - 4 * sin(0.5))) < 1e-5);
    /* dot(rope(a, m), rope(b, n)) depends only on m - n */
    float a1[4] = {0.3f, -1, 2, 0.5f}, b1[4] = {1, 1, -0.5f, 2}, a2[4], b2[4];
    memcpy(a2, a1, sizeof a1), memcpy(b2, b1, sizeof b1);
    cpu_rope_neox_ref(a1, 1, 1, 4, 7, 100.f);
    cpu_rope_neox_ref(b1, 1, 1, 4, 3, 100.f);
    cpu_rope_neox_ref(a2, 1, 1, 4, 14, 100.f);
    cpu_rope_neox_ref(b2, 1, 1, 4, 10, 100.f);
    double d1 = 0, d2 = 0;
    for (int i = 0; i < 4; i++) d1 += a1[i] * b1[i], d2 += a2[i] * b2[i];
    CHECK(fabs(d1 - d2) < 1e-5);
}

TEST(attention_causal_gqa) {
    /* 4 query heads, 2 kv heads (group 2), hd 2, 3 tokens */
    enum { T = 3, H = 4, KV = 2, HD = 2 };
    float q[T * H * HD], k[T * KV * HD], v[T * KV * HD], out[T * H * HD], scratch[T];
    memset(q, 0, sizeof q); /* zero queries: uniform weights over the visible keys */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < KV; h++)
            for (int d = 0; d < HD; d++) {
                k[(t * KV + h) * HD + d] = (float)(t + d);
                v[(t * KV + h) * HD + d] = (float)(10 * t + 100 * h + d);
            }
    cpu_attention_ref(out, q, k, v, T, T, H, KV, HD, KV * HD, 0, 1, scratch);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < HD; d++) {
                /* mean of v over keys 0..t of kv head h/2 */
                double m = 0;
                for (int j = 0; j <= t; j++) m += 10 * j + 100 * (h / 2) + d;
                CHECK(fabs(out[(t * H + h) * HD + d] - m / (t + 1)) < 1e-5);
            }
    /* non-causal: every query sees all keys; a strongly aligned key dominates */
    float q1[H * HD] = {0}, out1[H * HD];
    q1[0] = 50; /* head 0 looks along dim 0: key 2 has the largest k[0] = 2 */
    cpu_attention_ref(out1, q1, k, v, 1, T, H, KV, HD, KV * HD, 0, 0, scratch);
    CHECK(fabs(out1[0] - 20) < 1e-3); /* v of token 2, kv head 0, dim 0 */
    /* decode step: query at position 1 with 3 cached keys sees keys 0..1 only */
    cpu_attention_ref(out1, q, k, v, 1, T, H, KV, HD, KV * HD, 1, 1, scratch);
    CHECK(fabs(out1[0] - 5) < 1e-5);
}
