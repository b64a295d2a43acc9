/* pack.c — transformers' pack_image_features for one single-image prompt (spec §6.1-§6.6): the base view's
 * rows, then the tiles re-assembled into one feature map, unpadded, down-sampled when anyres_max asks for it
 * (bilinear exactly as torch's CPU interpolate(mode="bilinear", align_corners=False)), with image_newline
 * appended after every row. All sizes come from struct img_layout (img_compute_layout), so the number of rows
 * written is the token count the prompt was built with. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"
#include "vision/image.h"

/* The feature vector at (row y, col x) of the (P*grid_h, P*grid_w) map: tile (y/P, x/P), patch (y%P, x%P). */
static inline const float *map_at(const float *feats, const struct img_layout *L, int64_t P, int64_t d, int64_t y,
                                  int64_t x) {
    const int64_t tile = 1 + (y / P) * L->grid_w + (x / P);
    const int64_t patch = (y % P) * P + (x % P);
    return feats + ((size_t)tile * (size_t)(P * P) + (size_t)patch) * (size_t)d;
}

/* Bilinear down-sampling, bit-exact with torch 2.15's CPU kernels (aten/src/ATen/native/cpu/UpSampleKernel.cpp,
 * float32, align_corners=False, output size given, no antialias), as compiled in the x86-64 release build
 * (GCC contracts some a*b+c into fused multiply-adds; which ones was measured against torch on random maps,
 * and the golden tests hold the result). torch picks one of two kernels for an NCHW map:
 *  - output_h + output_w <= 128 ("channels-last" vectorised kernel):
 *      src = fma(scale, i + 0.5f, -0.5f), weights w_rc = lr * lc (float32 products),
 *      out = fma(x00, w00, fma(x01, w01, fma(x11, w11, x10 * w10)))
 *  - otherwise (generic separable-recursive kernel):
 *      src = scale * (i + 0.5f) - 0.5f (two roundings),
 *      t0 = fma(x00, lc0, x01 * lc1), t1 = fma(x10, lc0, x11 * lc1), out = fma(t0, lr0, t1 * lr1)
 * Shared: scale = float(n_in) / float(n_out); src clamped below at 0; i0 = min(floor(src), n_in - 1);
 * l1 = clamp(src - i0, 0, 1); l0 = 1 - l1; i1 = i0 + 1 unless i0 is the last index.
 * Spec §6.4 gives the plain (unfused) form; it differs from torch by an ulp in about half the outputs.
 * The real 27x27 configuration always takes the generic kernel (a pooled map has about 81 x 81 cells); the tiny
 * test models (P = 4) always take the vectorised one. */
#define TORCH_SMALL_OUTPUT_KERNEL_MAX 128

struct lin_tap {
    int64_t i0, i1;
    float l0, l1;
};

static void linear_taps(int64_t n_in, int64_t n_out, bool fused_src, struct lin_tap *taps) {
    const float scale = (float)n_in / (float)n_out;
    for (int64_t i = 0; i < n_out; i++) {
        const float di = (float)i + 0.5f;
        float src = fused_src ? fmaf(scale, di, -0.5f) : scale * di - 0.5f;
        if (src < 0.0f) src = 0.0f;
        int64_t i0 = (int64_t)floorf(src);
        if (i0 > n_in - 1) i0 = n_in - 1;
        float l1 = src - (float)i0;
        if (l1 < 0.0f) l1 = 0.0f;
        if (l1 > 1.0f) l1 = 1.0f;
        taps[i].i0 = i0;
        taps[i].i1 = i0 < n_in - 1 ? i0 + 1 : i0;
        taps[i].l1 = l1;
        taps[i].l0 = 1.0f - l1;
    }
}

/* Contract in image.h. feats (layout->n_crops, P*P, d); image_newline (d); out (layout->n_image_tokens, d).
 * P must equal layout->patches_side and the layout must be self-consistent (VLM_ERR_ARG otherwise, logged).
 * The pooled values are bit-identical to torch 2.15's CPU interpolate (see the kernel notes above). */
enum vlm_status img_pack_features(const float *feats, const struct img_layout *layout, int64_t P, int64_t d,
                                  const float *image_newline, float *out) {
    enum vlm_status st = VLM_ERR_ARG;
    struct lin_tap *taps = NULL;
    if (!feats || !layout || !image_newline || !out || d < 1) {
        vlm_log_error("image packing: missing argument");
        goto fail;
    }
    const struct img_layout *L = layout;
    /* every field is bounded first, so the products below cannot overflow */
    const int64_t lim = 1ll << 20;
    bool ok = P >= 1 && P <= lim && P == L->patches_side && L->grid_h >= 1 && L->grid_h <= lim && L->grid_w >= 1 &&
              L->grid_w <= lim && L->pool_h >= 0 && L->pool_h <= lim && L->pool_w >= 0 && L->pool_w <= lim;
    if (ok) {
        const int64_t ch0 = P * L->grid_h, cw0 = P * L->grid_w;
        ok = L->n_crops == 1 + L->grid_h * L->grid_w && L->unpad_h >= 0 && L->unpad_w >= 0 && L->unpad_top >= 0 &&
             L->unpad_left >= 0 && L->unpad_top + L->unpad_h <= ch0 && L->unpad_left + L->unpad_w <= cw0 &&
             (L->pooled ? L->pool_h >= 1 && L->pool_w >= 1 && L->unpad_h >= 1 && L->unpad_w >= 1
                        : L->pool_h == L->unpad_h && L->pool_w == L->unpad_w) &&
             L->n_image_tokens == P * P + L->pool_h * (L->pool_w + 1);
    }
    if (!ok) {
        vlm_log_error("image packing: inconsistent layout for P = %lld (grid %lld x %lld, map %lld x %lld, "
                      "%lld tokens)",
                      (long long)P, (long long)L->grid_h, (long long)L->grid_w, (long long)L->pool_h,
                      (long long)L->pool_w, (long long)L->n_image_tokens);
        goto fail;
    }
    const size_t row_bytes = (size_t)d * sizeof(float);

    /* §6.1 base view, unchanged */
    memcpy(out, feats, (size_t)(P * P) * row_bytes);
    float *o = out + (size_t)(P * P) * (size_t)d;

    if (!L->pooled) {
        /* §6.2 + §6.3: the unpadded window of the re-assembled map, §6.5 newline after each row */
        for (int64_t y = 0; y < L->unpad_h; y++) {
            for (int64_t x = 0; x < L->unpad_w; x++, o += d)
                memcpy(o, map_at(feats, L, P, d, L->unpad_top + y, L->unpad_left + x), row_bytes);
            memcpy(o, image_newline, row_bytes);
            o += d;
        }
    } else {
        /* §6.4 bilinear down-sampling of the unpadded map to (pool_h, pool_w), then the newlines */
        taps = vlm_alloc_array((size_t)(L->pool_h + L->pool_w), sizeof *taps, "pooling taps");
        if (!taps) {
            st = VLM_ERR_OOM;
            goto fail;
        }
        const bool small = L->pool_h + L->pool_w <= TORCH_SMALL_OUTPUT_KERNEL_MAX;
        const struct lin_tap *rt = taps, *ct = taps + L->pool_h;
        linear_taps(L->unpad_h, L->pool_h, small, taps);
        linear_taps(L->unpad_w, L->pool_w, small, taps + L->pool_h);
        const int64_t row_len = (L->pool_w + 1) * d; /* floats per output row incl. its newline */
#pragma omp parallel for schedule(static) if (L->pool_h * row_len > 65536)
        for (int64_t i = 0; i < L->pool_h; i++) {
            float *orow = o + (size_t)i * (size_t)row_len;
            const int64_t y0 = L->unpad_top + rt[i].i0, y1 = L->unpad_top + rt[i].i1;
            const float lr0 = rt[i].l0, lr1 = rt[i].l1;
            for (int64_t j = 0; j < L->pool_w; j++) {
                float *q = orow + j * d;
                const int64_t x0 = L->unpad_left + ct[j].i0, x1 = L->unpad_left + ct[j].i1;
                const float lc0 = ct[j].l0, lc1 = ct[j].l1;
                const float *p00 = map_at(feats, L, P, d, y0, x0), *p01 = map_at(feats, L, P, d, y0, x1);
                const float *p10 = map_at(feats, L, P, d, y1, x0), *p11 = map_at(feats, L, P, d, y1, x1);
                if (small) {
                    const float w00 = lr0 * lc0, w01 = lr0 * lc1, w10 = lr1 * lc0, w11 = lr1 * lc1;
                    for (int64_t k = 0; k < d; k++)
                        q[k] = fmaf(p00[k], w00, fmaf(p01[k], w01, fmaf(p11[k], w11, p10[k] * w10)));
                } else {
                    for (int64_t k = 0; k < d; k++) {
                        const float t0 = fmaf(p00[k], lc0, p01[k] * lc1);
                        const float t1 = fmaf(p10[k], lc0, p11[k] * lc1);
                        q[k] = fmaf(t0, lr0, t1 * lr1);
                    }
                }
            }
            memcpy(orow + L->pool_w * d, image_newline, row_bytes);
        }
        o += (size_t)L->pool_h * (size_t)row_len;
    }
    VLM_ASSERT(o == out + (size_t)L->n_image_tokens * (size_t)d);
    st = VLM_OK;
fail:
    free(taps);
    return st;
}
