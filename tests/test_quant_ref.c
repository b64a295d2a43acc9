/* test_quant_ref.c — the reference side of kernels/quant.h against an independent statement of the formats:
 * tests/golden/quant_ref.bin, written by tools/make_quant_fixtures.py with torch following mbq.md §2 literally.
 * The canonical dequantized weights (up to the sign of zero) and the int8 activation codes must match exactly; the fp16/bf16
 * conversions are checked exhaustively against the widening conversions; layouts against hand arithmetic. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "kernels/quant.h"
#include "test.h"

static void *aligned(size_t n) { return aligned_alloc(VLM_QALIGN, (n + VLM_QALIGN) / VLM_QALIGN * VLM_QALIGN); }

/* Quantizes w (n, k) in format f, dequantizes every row, compares with want bit for bit. */
static void check_format(enum vlm_qformat f, const float *w, int64_t n, int64_t k, const float *want) {
    struct vlm_qlayout L;
    const char *why = NULL;
    if (!CHECK(vlm_qlayout(f, n, k, &L, &why))) return;
    unsigned char *blob = aligned(L.total_bytes);
    float *row = malloc((size_t)k * sizeof(float));
    vlm_quantize_ref(f, w, n, k, blob);
    struct vlm_qmat m;
    CHECK(vlm_qmat_view(f, n, k, blob, L.total_bytes, &m, &why));
    CHECK(vlm_qmat_check(&m, &why));
    int64_t bad = 0, first = -1;
    float first_got = 0;
    for (int64_t r = 0; r < n; r++) {
        vlm_dequantize_row_ref(&m, r, row);
        /* equal as floats: torch keeps the sign of round(-0.3) = -0 in q·s, our integer codes give +0 */
        for (int64_t i = 0; i < k; i++)
            if (!(row[i] == want[r * k + i])) {
                if (first < 0) first = r * k + i, first_got = row[i];
                bad++;
            }
    }
    if (bad) FAIL("%s: %lld of %lld dequantized values differ from torch's, first at row %lld col %lld (%.9g vs %.9g)",
                  vlm_qformat_name(f), (long long)bad, (long long)(n * k), (long long)(first / k),
                  (long long)(first % k), (double)first_got, (double)want[first]);
    free(blob);
    free(row);
}

TEST(quant_ref_matches_torch_bit_for_bit) {
    struct golden_file g;
    if (golden_load("tests/golden/quant_ref.bin", &g) != 0) return;
    const struct golden_tensor *w = golden_get(&g, "w", GOLDEN_F32);
    const struct golden_tensor *w3 = golden_get(&g, "w3g128", GOLDEN_F32);
    const struct golden_tensor *w4 = golden_get(&g, "w4g128", GOLDEN_F32);
    const struct golden_tensor *w4a8 = golden_get(&g, "w4a8", GOLDEN_F32);
    const struct golden_tensor *q8r = golden_get(&g, "q8r", GOLDEN_F32);
    const struct golden_tensor *x = golden_get(&g, "x", GOLDEN_F32);
    const struct golden_tensor *xq = golden_get(&g, "x_q8", GOLDEN_I32);
    const struct golden_tensor *xs = golden_get(&g, "x_scale", GOLDEN_F32);
    if (w && w3 && w4 && w4a8 && q8r && x && xq && xs) {
        const int64_t n = w->shape[0], k = w->shape[1];
        CHECK_EQ(k % 128, 0);
        check_format(VLM_QF_W3G128, w->data, n, k, w3->data);
        check_format(VLM_QF_W4G128, w->data, n, k, w4->data);
        check_format(VLM_QF_W4A8, w->data, n, k, w4a8->data);
        check_format(VLM_QF_Q8R, w->data, n, k, q8r->data);
        /* per-token activation quantization of W4A8 (mbq.md §2.2) */
        const int64_t M = x->shape[0], kx = x->shape[1];
        int8_t *a = malloc((size_t)kx);
        for (int64_t t = 0; t < M; t++) {
            float s = vlm_quantize_act_q8_ref((const float *)x->data + t * kx, kx, a);
            CHECK(memcmp(&s, (const float *)xs->data + t, 4) == 0);
            int64_t bad = 0;
            for (int64_t i = 0; i < kx; i++) bad += a[i] != ((const int32_t *)xq->data)[t * kx + i];
            if (bad) FAIL("token %lld: %lld activation codes differ from torch's", (long long)t, (long long)bad);
        }
        free(a);
    }
    golden_free(&g);
}

/* The edge cases of mbq.md §2.1, by hand: the fixture exercises them too, this says what they mean. */
TEST(quant_ref_asym_edge_groups) {
    float w[128], row[128];
    unsigned char *blob = aligned(4096);
    struct vlm_qmat m;
    struct vlm_qlayout L;
    CHECK(vlm_qlayout(VLM_QF_W3G128, 1, 128, &L, NULL));
    /* all-positive group 1..128 (x 0.01): mn > 0 so z clamps to 0 and values above 7 s clip to 7 s */
    for (int i = 0; i < 128; i++) w[i] = 0.01f * (float)(i + 1);
    vlm_quantize_ref(VLM_QF_W3G128, w, 1, 128, blob);
    CHECK(vlm_qmat_view(VLM_QF_W3G128, 1, 128, blob, L.total_bytes, &m, NULL));
    CHECK_EQ(m.zeros[0], 0);
    vlm_dequantize_row_ref(&m, 0, row);
    float s = vlm_f16_to_f32(((const uint16_t *)m.scales)[0]);
    CHECK(fabsf(s - vlm_f16_to_f32(vlm_f32_to_f16((1.28f - 0.01f) / 7))) == 0);
    CHECK(row[127] == 7 * s); /* clipped: 1.28 is far above 7 s ~ 1.27 ... and the codes cannot exceed 7 */
    CHECK(row[0] == 0);       /* 0.01 / s rounds to 0 */
    /* all-negative: z clamps to Q = 7 */
    for (int i = 0; i < 128; i++) w[i] = -0.01f * (float)(i + 1);
    vlm_quantize_ref(VLM_QF_W3G128, w, 1, 128, blob);
    CHECK_EQ(m.zeros[0], 7);
    /* constant group: range 0 -> s = fp16(1e-5 / 7); every value lands on one code */
    for (int i = 0; i < 128; i++) w[i] = 0.3f;
    vlm_quantize_ref(VLM_QF_W3G128, w, 1, 128, blob);
    vlm_dequantize_row_ref(&m, 0, row);
    for (int i = 1; i < 128; i++) CHECK(row[i] == row[0]);
    CHECK(vlm_f16_to_f32(((const uint16_t *)m.scales)[0]) == vlm_f16_to_f32(vlm_f32_to_f16(1e-5f / 7)));
    /* the error bound of round-to-nearest: |w - ŵ| <= s/2 inside [mn, mx] when nothing clips (mixed signs) */
    for (int i = 0; i < 128; i++) w[i] = (float)sin(0.37 * i) * 0.2f;
    vlm_quantize_ref(VLM_QF_W4G128, w, 1, 128, blob);
    CHECK(vlm_qlayout(VLM_QF_W4G128, 1, 128, &L, NULL));
    CHECK(vlm_qmat_view(VLM_QF_W4G128, 1, 128, blob, L.total_bytes, &m, NULL));
    vlm_dequantize_row_ref(&m, 0, row);
    s = vlm_f16_to_f32(((const uint16_t *)m.scales)[0]);
    double worst = 0;
    for (int i = 0; i < 128; i++) worst = fmax(worst, fabs((double)w[i] - row[i]));
    CHECK(worst <= 0.5 * s * (1 + 1e-6) + 1e-7);
    free(blob);
}

/* Every fp16 value survives f16 -> f32 -> f16; midpoints between neighbours round to the even one. */
TEST(quant_ref_f16_conversion_exhaustive) {
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = vlm_f16_to_f32((uint16_t)h);
        uint16_t back = vlm_f32_to_f16(f);
        if (isnan(f)) bad += !((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
        else bad += back != h;
        /* midpoint to the next finite value of the same sign */
        if ((h & 0x7fff) < 0x7bff && !isnan(f)) {
            float next = vlm_f16_to_f32((uint16_t)(h + 1));
            float mid = (float)(((double)f + (double)next) / 2);
            if ((double)mid == ((double)f + (double)next) / 2) { /* exactly representable midpoint */
                uint16_t r = vlm_f32_to_f16(mid);
                bad += r != ((h & 1) ? h + 1 : h);
            }
        }
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(vlm_f32_to_f16(65520.0f), 0x7c00);  /* rounds up past 65504: inf */
    CHECK_EQ(vlm_f32_to_f16(65519.0f), 0x7bff);
    CHECK_EQ(vlm_f32_to_f16(-1e-8f), 0x8000);    /* below half the smallest subnormal: -0 */
    CHECK_EQ(vlm_f32_to_f16(INFINITY), 0x7c00);
}

TEST(quant_ref_bf16_conversion) {
    int64_t bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float f = vlm_bf16_to_f32((uint16_t)b);
        if (!isnan(f)) bad += vlm_f32_to_bf16(f) != b;
    }
    CHECK_EQ(bad, 0);
    /* 1 + 2^-8 is the midpoint between 1 and 1 + 2^-7: ties to even (1.0); 1 + 3*2^-8 ties up to 1 + 2^-6 */
    CHECK_EQ(vlm_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    CHECK_EQ(vlm_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    CHECK(isnan(vlm_bf16_to_f32(vlm_f32_to_bf16(NAN))));
}

TEST(quant_ref_layouts) {
    struct vlm_qlayout L;
    const char *why = NULL;
    /* W3, 3 rows x 256: codes 3*2*48 = 288 B at 0; scales 12 B at 320; zeros 6 B at 384; total 390 */
    CHECK(vlm_qlayout(VLM_QF_W3G128, 3, 256, &L, &why));
    CHECK(L.codes_off == 0 && L.codes_bytes == 288 && L.scales_off == 320 && L.scales_bytes == 12 &&
          L.zeros_off == 384 && L.zeros_bytes == 6 && L.total_bytes == 390 && L.n_groups == 2);
    CHECK(vlm_qlayout(VLM_QF_F16, 3, 7, &L, &why) && L.total_bytes == 42); /* plain formats: exact size */
    CHECK(vlm_qlayout(VLM_QF_W4A8, 2, 128, &L, &why) && L.codes_bytes == 128 && L.scales_off == 128 &&
          L.total_bytes == 136);
    CHECK(!vlm_qlayout(VLM_QF_W4G128, 4, 100, &L, &why) && strstr(why, "multiple of 128"));
    CHECK(!vlm_qlayout(VLM_QF_F32, 0, 5, &L, &why));
    CHECK(!vlm_qlayout(VLM_QF_F32, INT64_MAX / 2, 8, &L, &why) && strstr(why, "overflow"));
    CHECK(!vlm_qlayout(VLM_QF_COUNT, 1, 1, &L, &why));
    CHECK(vlm_qformat_from_name("w3g128") == VLM_QF_W3G128 && vlm_qformat_from_name("nope") == -1);
    /* a view refuses a size that is not the layout's, and misaligned data */
    unsigned char *blob = aligned(512);
    struct vlm_qmat m;
    CHECK(vlm_qlayout(VLM_QF_W3G128, 3, 256, &L, NULL));
    CHECK(!vlm_qmat_view(VLM_QF_W3G128, 3, 256, blob, L.total_bytes - 1, &m, &why));
    CHECK(!vlm_qmat_view(VLM_QF_W3G128, 3, 256, blob + 4, L.total_bytes, &m, &why));
    /* a zero point above 2^bits - 1 and a NaN scale are caught by the value check */
    float w[3 * 256];
    for (int i = 0; i < 3 * 256; i++) w[i] = (float)cos(i * 0.1);
    vlm_quantize_ref(VLM_QF_W3G128, w, 3, 256, blob);
    CHECK(vlm_qmat_view(VLM_QF_W3G128, 3, 256, blob, L.total_bytes, &m, &why) && vlm_qmat_check(&m, &why));
    blob[L.zeros_off + 4] = 8;
    CHECK(!vlm_qmat_check(&m, &why) && strstr(why, "row 2"));
    blob[L.zeros_off + 4] = 1;
    uint16_t nan16 = 0x7e00;
    memcpy(blob + L.scales_off + 2, &nan16, 2);
    CHECK(!vlm_qmat_check(&m, &why));
    free(blob);
}
