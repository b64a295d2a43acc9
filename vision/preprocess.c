/* preprocess.c — LlavaOnevisionImageProcessor (slow, PIL) for one image of a single-image prompt, in C:
 * Pillow-exact bicubic resize (spec §5.6), the anyres layout (best canvas, resize target, padding, tiles, unpad,
 * anyres_max pooling size, token count — spec §5.3, §6.3, §6.4, §6.6) and rescale + normalize (§5.5).
 *
 * Promises: byte-identical resized pixels to Pillow's Image.resize(BICUBIC) on 8-bit data, bit-identical
 * pixel_values to transformers' slow processor, and ONE function (img_compute_layout) that decides every size,
 * so the prompt builder and the feature packer cannot disagree. Every float decision uses the same IEEE-double
 * operations, in the same order, as the Python reference. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"
#include "vision/image.h"

/* ---------------------------------------------------------------------------------------------------------
 * Pillow bicubic resampling (Resample.c semantics, our own code)
 *
 * Per axis, output sample i reads source samples [lo_i, lo_i + n_i) with fixed-point weights c_ik:
 *   scale = n_in / n_out; fs = max(scale, 1) (antialias when shrinking); support = 2 * fs
 *   center = (i + 0.5) * scale; lo = trunc(center - support + 0.5) >= 0; hi = trunc(center + support + 0.5) <= n_in
 *   w_k = bicubic((lo + k - center + 0.5) * (1 / fs)), then w_k /= sum(w) when the sum is non-zero
 *   c_k = w_k * 2^22 rounded half away from zero (truncating +-0.5 shifted values, as Pillow does)
 *   out = clip8(2^21 + sum_k c_k * u_k): 255 at >= 2^30, 0 at <= 0, else >> 22
 * All in double, in Pillow's operation order (the multiply by 1/fs, not a divide, and the Horner-form kernel
 * matter for the last bit of w_k). Two passes, each storing uint8; their order is Pillow 13's (see
 * img_resize_bicubic_u8), which differs from spec §5.6's "horizontal first" when the height shrinks a lot.
 * Verified byte-for-byte against Pillow 13.0.0 on tens of thousands of random sizes (tests/golden/resize.bin
 * holds a fixed sample). */

#define RESAMPLE_BITS 22 /* Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2 */
#define RESAMPLE_MAX_SIDE (1ll << 24) /* Pillow keeps box edges in float32: sides must be exact there */

/* The cubic convolution kernel with a = -0.5 (Keys), support 2, written in Pillow's evaluation order. */
static double bicubic_kernel(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* One axis's taps: output i reads n[i] inputs from lo[i] with weights coef[i*ksize .. + n[i]). One block, carved. */
struct resample_axis {
    int64_t n_out;
    int64_t ksize;   /* row stride of coef, 2*ceil(support)+1 (Pillow's bound; n[i] <= ksize) */
    int64_t *lo;     /* (n_out) */
    int64_t *n;      /* (n_out) */
    int32_t *coef;   /* (n_out, ksize) fixed point, 22 fractional bits */
    void *block;
};

static void axis_free(struct resample_axis *ax) {
    free(ax->block);
    memset(ax, 0, sizeof *ax);
}

/* Fills *ax for resampling n_in samples to n_out (both in 1..RESAMPLE_MAX_SIDE). VLM_ERR_OOM on allocation
 * failure (logged); *ax is zeroed then. */
static enum vlm_status axis_init(struct resample_axis *ax, int64_t n_in, int64_t n_out) {
    memset(ax, 0, sizeof *ax);
    const double scale = (double)n_in / (double)n_out;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    const double inv_fs = 1.0 / filterscale;
    const int64_t ksize = (int64_t)ceil(support) * 2 + 1;

    size_t n_coef, bytes, coef_bytes, tmp_bytes;
    if (!vlm_size_mul((size_t)n_out, (size_t)ksize, &n_coef) || !vlm_size_mul(n_coef, sizeof(int32_t), &coef_bytes) ||
        !vlm_size_mul((size_t)ksize, sizeof(double), &tmp_bytes) ||
        !vlm_size_mul((size_t)n_out, 2 * sizeof(int64_t), &bytes) || !vlm_size_add(bytes, coef_bytes, &bytes) ||
        !vlm_size_add(bytes, tmp_bytes, &bytes)) {
        vlm_log_error("bicubic resize: coefficient table for %lld -> %lld overflows", (long long)n_in,
                      (long long)n_out);
        return VLM_ERR_OOM;
    }
    char *block = vlm_alloc_array(bytes, 1, "bicubic resize coefficients");
    if (!block) return VLM_ERR_OOM;
    /* carve: lo, n (int64), then the double scratch, then coef (int32) — each aligned for its type */
    ax->block = block;
    ax->n_out = n_out;
    ax->ksize = ksize;
    ax->lo = (int64_t *)block;
    ax->n = ax->lo + n_out;
    double *w = (double *)(ax->n + n_out);
    ax->coef = (int32_t *)(w + ksize);

    for (int64_t i = 0; i < n_out; i++) {
        const double center = (i + 0.5) * scale;
        int64_t lo = (int64_t)(center - support + 0.5);
        int64_t hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > n_in) hi = n_in;
        const int64_t n = hi - lo;
        VLM_ASSERT(n >= 1 && n <= ksize);
        double sum = 0.0;
        for (int64_t k = 0; k < n; k++) {
            w[k] = bicubic_kernel(((double)(k + lo) - center + 0.5) * inv_fs);
            sum += w[k];
        }
        int32_t *c = ax->coef + i * ksize;
        for (int64_t k = 0; k < n; k++) {
            double v = sum != 0.0 ? w[k] / sum : w[k];
            c[k] = v < 0 ? (int32_t)(-0.5 + v * (1 << RESAMPLE_BITS)) : (int32_t)(0.5 + v * (1 << RESAMPLE_BITS));
        }
        for (int64_t k = n; k < ksize; k++) c[k] = 0;
        ax->lo[i] = lo;
        ax->n[i] = n;
    }
    return VLM_OK;
}

/* Pillow's clip8 on a 22-bit fixed-point accumulator. */
static inline uint8_t clip8(int32_t acc) {
    if (acc >= (1 << RESAMPLE_BITS << 8)) return 255;
    if (acc <= 0) return 0;
    return (uint8_t)(acc >> RESAMPLE_BITS);
}

/* The int32 accumulators cannot overflow: the normalised bicubic weights have sum(|w|) < 1.25, so
 * |acc| < 2^21 + 255 * 1.25 * 2^22 (plus at most 0.5 per tap of rounding) < 2^31. */

/* Horizontal pass over n_rows rows of src (row stride sw*c) starting at row y0, into dst (n_rows, ax->n_out, c). */
static void resample_rows(const uint8_t *src, int64_t sw, int64_t c, int64_t y0, int64_t n_rows,
                          const struct resample_axis *ax, uint8_t *dst) {
    const int64_t dw = ax->n_out;
#pragma omp parallel for schedule(static) if (n_rows * dw > 65536)
    for (int64_t y = 0; y < n_rows; y++) {
        const uint8_t *srow = src + (size_t)(y0 + y) * (size_t)sw * (size_t)c;
        uint8_t *drow = dst + (size_t)y * (size_t)dw * (size_t)c;
        for (int64_t x = 0; x < dw; x++) {
            const int32_t *k = ax->coef + x * ax->ksize;
            const uint8_t *s = srow + ax->lo[x] * c;
            const int64_t n = ax->n[x];
            for (int64_t ch = 0; ch < c; ch++) {
                int32_t acc = 1 << (RESAMPLE_BITS - 1);
                for (int64_t t = 0; t < n; t++) acc += (int32_t)s[t * c + ch] * k[t];
                drow[x * c + ch] = clip8(acc);
            }
        }
    }
}

/* Vertical pass: src holds rows [y0, ...) of the source (row length row_len bytes); dst (ax->n_out, row_len). */
static void resample_cols(const uint8_t *src, int64_t row_len, int64_t y0, const struct resample_axis *ax,
                          uint8_t *dst) {
    const int64_t dh = ax->n_out;
#pragma omp parallel for schedule(static) if (dh * row_len > 65536)
    for (int64_t y = 0; y < dh; y++) {
        const int32_t *k = ax->coef + y * ax->ksize;
        const uint8_t *s = src + (size_t)(ax->lo[y] - y0) * (size_t)row_len;
        const int64_t n = ax->n[y];
        uint8_t *drow = dst + (size_t)y * (size_t)row_len;
        for (int64_t j = 0; j < row_len; j++) {
            int32_t acc = 1 << (RESAMPLE_BITS - 1);
            for (int64_t t = 0; t < n; t++) acc += (int32_t)s[(size_t)t * (size_t)row_len + (size_t)j] * k[t];
            drow[j] = clip8(acc);
        }
    }
}

/* Contract in image.h. Sides must be in 1..2^24, c >= 1 and both byte counts must fit int64 (VLM_ERR_ARG
 * otherwise). Pass order as Pillow 13 (each pass rounds to uint8, so the order is part of the result):
 * normally horizontal first, over only the source rows the vertical pass reads, then vertical; vertical first
 * when sh - dh > 0 and sh - dh > 2 * (sw - dw). A pass whose size does not change is skipped (equal sizes copy). */
enum vlm_status img_resize_bicubic_u8(const uint8_t *src, int64_t sh, int64_t sw, int64_t c, uint8_t *dst,
                                      int64_t dh, int64_t dw) {
    enum vlm_status st = VLM_OK;
    struct resample_axis hor = {0}, ver = {0};
    uint8_t *tmp = NULL;
    if (!src || !dst || c < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || sh > RESAMPLE_MAX_SIDE ||
        sw > RESAMPLE_MAX_SIDE || dh > RESAMPLE_MAX_SIDE || dw > RESAMPLE_MAX_SIDE) {
        vlm_log_error("bicubic resize: bad sizes %lld x %lld x %lld -> %lld x %lld", (long long)sh, (long long)sw,
                      (long long)c, (long long)dh, (long long)dw);
        return VLM_ERR_ARG;
    }
    int64_t sdims[3] = {sh, sw, c}, ddims[3] = {dh, dw, c}, src_bytes, dst_bytes;
    if (!vlm_dims_product(sdims, 3, &src_bytes) || !vlm_dims_product(ddims, 3, &dst_bytes)) {
        vlm_log_error("bicubic resize: image size overflows");
        return VLM_ERR_ARG;
    }
    const bool need_h = dw != sw, need_v = dh != sh;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)src_bytes);
        return VLM_OK;
    }
    if (need_v && (st = axis_init(&ver, sh, dh)) != VLM_OK) goto fail;
    if (need_h && (st = axis_init(&hor, sw, dw)) != VLM_OK) goto fail;

    /* Pillow >= 13: when the height shrinks by more than twice as many pixels as the width, the vertical pass
     * runs first (on every column), then the horizontal pass on its output. Older Pillow always ran the
     * horizontal pass first; the two orders differ by rounding (each pass stores uint8). */
    const bool vertical_first = sh - dh > 0 && sh - dh > (sw - dw) * 2;
    if (!need_v) {
        resample_rows(src, sw, c, 0, sh, &hor, dst);
    } else if (!need_h) {
        resample_cols(src, sw * c, 0, &ver, dst);
    } else if (vertical_first) {
        tmp = vlm_alloc_array((size_t)dh, (size_t)(sw * c), "bicubic resize intermediate");
        if (!tmp) {
            st = VLM_ERR_OOM;
            goto fail;
        }
        resample_cols(src, sw * c, 0, &ver, tmp);
        resample_rows(tmp, sw, c, 0, dh, &hor, dst);
    } else {
        const int64_t y_first = ver.lo[0];
        const int64_t y_last = ver.lo[dh - 1] + ver.n[dh - 1]; /* exclusive */
        tmp = vlm_alloc_array((size_t)(y_last - y_first), (size_t)(dw * c), "bicubic resize intermediate");
        if (!tmp) {
            st = VLM_ERR_OOM;
            goto fail;
        }
        resample_rows(src, sw, c, y_first, y_last - y_first, &hor, tmp);
        resample_cols(tmp, dw * c, y_first, &ver, dst);
    }
fail:
    free(tmp);
    axis_free(&hor);
    axis_free(&ver);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------
 * Layout: best canvas, resize target, padding, unpad, pooling, token count */

/* Contract in image.h. transformers' select_best_resolution: candidates in list order; s = min(cw/W, ch/H) in
 * double; effective = min(trunc(W*s) * trunc(H*s), W*H); wasted = ch*cw - effective; take a candidate when
 * effective is larger, or equal with strictly less waste. The running best starts at (0, +inf) as in Python, so
 * the first candidate is always taken (even when every effective size is 0, e.g. a 1 x 20000 image).
 * Sizes must be positive and below 2^31 (the caller checks); *best_* stay 0 when n_pinpoints is 0. */
void img_select_best_resolution(int64_t h, int64_t w, const int64_t (*pinpoints)[2], int64_t n_pinpoints,
                                int64_t *best_h, int64_t *best_w) {
    int64_t bh = 0, bw = 0, best_eff = 0, best_waste = INT64_MAX;
    bool have = false;
    for (int64_t i = 0; i < n_pinpoints; i++) {
        const int64_t ch = pinpoints[i][0], cw = pinpoints[i][1];
        const double sw = (double)cw / (double)w, sh = (double)ch / (double)h;
        const double s = sw < sh ? sw : sh;
        const int64_t dw = (int64_t)((double)w * s), dh = (int64_t)((double)h * s);
        int64_t eff = dw * dh;
        if (eff > w * h) eff = w * h;
        const int64_t waste = ch * cw - eff;
        if (!have || eff > best_eff || (eff == best_eff && waste < best_waste)) {
            have = true;
            best_eff = eff;
            best_waste = waste;
            bh = ch;
            bw = cw;
        }
    }
    *best_h = bh;
    *best_w = bw;
}

/* int(round(x, 7)) for 0 <= x < 2^52, as Python computes it: round() rounds the exact binary value of x to 7
 * decimals (half-even, but an exact tie cannot occur: 5e-8 is not dyadic), int() truncates. So the result is
 * floor(x) + 1 exactly when (floor(x) + 1) - x < 5e-8, else floor(x). d = (floor(x)+1) - x is exact whenever it
 * is small (Sterbenz), and since the double nearest to 5e-8 lies BELOW 5e-8, "d < 5e-8" is "d <= 5e-8" in doubles. */
static int64_t trunc_round7(double x) {
    double f = floor(x);
    return (int64_t)f + ((f + 1.0) - x <= 5e-8 ? 1 : 0);
}

/* Python's float floor division a // b for a >= 0, b > 0 (CPython float_floor_div): m = fmod(a, b),
 * q = (a - m) / b, then the integer nearest to q (floor, plus one when the fraction exceeds 0.5). */
static int64_t py_floordiv(double a, double b) {
    double m = fmod(a, b);
    double q = (a - m) / b;
    double f = floor(q);
    if (q - f > 0.5) f += 1.0;
    return (int64_t)f;
}

/* Contract in image.h. Also VLM_ERR_ARG when the config cannot describe an anyres layout: preprocessor crop size
 * not equal to the vision image_size, no pinpoints, a pinpoint that is not a positive multiple of the crop size,
 * or a negative anyres_max. Logs one line. On failure *out is untouched. */
enum vlm_status img_compute_layout(const struct vlm_config *c, const struct vlm_preproc_config *pp, int64_t h,
                                   int64_t w, struct img_layout *out) {
    enum vlm_status st = VLM_ERR_ARG;
    if (!c || !pp || !out) {
        vlm_log_error("image layout: missing config or output");
        goto fail;
    }
    if (h < 1 || w < 1 || h > (1ll << 30) || w > (1ll << 30)) {
        vlm_log_error("image layout: image size %lld x %lld is out of range", (long long)h, (long long)w);
        goto fail;
    }
    const int64_t S = c->vision.image_size, P = c->vision.n_patches_side;
    if (S < 1 || P < 1 || pp->size_h != S || pp->size_w != S) {
        vlm_log_error("image layout: preprocessor crop %lld x %lld must equal the vision image_size %lld (P = %lld)",
                      (long long)pp->size_h, (long long)pp->size_w, (long long)S, (long long)P);
        goto fail;
    }
    if (c->n_pinpoints < 1 || c->n_pinpoints > VLM_MAX_PINPOINTS || c->anyres_max < 0 || c->anyres_max > 1000000) {
        vlm_log_error("image layout: config has %lld grid pinpoints and anyres_max %lld", (long long)c->n_pinpoints,
                      (long long)c->anyres_max);
        goto fail;
    }
    for (int64_t i = 0; i < c->n_pinpoints; i++) {
        const int64_t ph = c->pinpoints[i][0], pw = c->pinpoints[i][1];
        if (ph < S || pw < S || ph % S || pw % S || ph > (1ll << 20) || pw > (1ll << 20)) {
            vlm_log_error("image layout: grid pinpoint %lld x %lld is not a multiple of the crop size %lld",
                          (long long)ph, (long long)pw, (long long)S);
            goto fail;
        }
    }

    struct img_layout L = {0};
    L.height = h;
    L.width = w;
    L.patches_side = P;

    /* §5.3.1 best canvas, §5.3.2 resize target (get_patch_output_size), §5.3.4 centred padding */
    img_select_best_resolution(h, w, (const int64_t(*)[2])c->pinpoints, c->n_pinpoints, &L.canvas_h, &L.canvas_w);
    L.grid_h = L.canvas_h / S;
    L.grid_w = L.canvas_w / S;
    const double scale_w = (double)L.canvas_w / (double)w, scale_h = (double)L.canvas_h / (double)h;
    if (scale_w < scale_h) {
        L.resize_w = L.canvas_w;
        L.resize_h = (int64_t)ceil((double)h * scale_w);
        if (L.resize_h > L.canvas_h) L.resize_h = L.canvas_h;
    } else {
        L.resize_h = L.canvas_h;
        L.resize_w = (int64_t)ceil((double)w * scale_h);
        if (L.resize_w > L.canvas_w) L.resize_w = L.canvas_w;
    }
    L.pad_top = (L.canvas_h - L.resize_h) / 2;
    L.pad_left = (L.canvas_w - L.resize_w) / 2;
    L.n_crops = 1 + L.grid_h * L.grid_w;

    /* §6.3 unpad of the (P*grid_h, P*grid_w) feature map (transformers' unpad_image / _get_unpadded_features) */
    const int64_t ch0 = P * L.grid_h, cw0 = P * L.grid_w;
    L.unpad_h = ch0;
    L.unpad_w = cw0;
    if ((double)w / (double)h > (double)cw0 / (double)ch0) {
        const int64_t new_h = trunc_round7((double)h * ((double)cw0 / (double)w));
        const int64_t pad = (ch0 - new_h) / 2; /* new_h <= ch0 here, so C division is Python's // */
        L.unpad_top = pad;
        L.unpad_h = ch0 - 2 * pad;
    } else {
        const int64_t new_w = trunc_round7((double)w * ((double)ch0 / (double)h));
        const int64_t pad = (cw0 - new_w) / 2;
        L.unpad_left = pad;
        L.unpad_w = cw0 - 2 * pad;
    }
    VLM_ASSERT(L.unpad_h >= 0 && L.unpad_w >= 0 && L.unpad_top >= 0 && L.unpad_left >= 0);

    /* §6.4 anyres_max pooling size; a map that unpads to nothing stays empty (transformers then packs only the
     * base view's rows, and the counter agrees) */
    L.pool_h = L.unpad_h;
    L.pool_w = L.unpad_w;
    if (c->anyres_max > 0) {
        const double ratio =
            sqrt((double)(L.unpad_h * L.unpad_w) / (double)(c->anyres_max * P * P));
        if (ratio > 1.1) {
            L.pooled = 1;
            L.pool_h = py_floordiv((double)L.unpad_h, ratio);
            L.pool_w = py_floordiv((double)L.unpad_w, ratio);
        }
    }

    /* §6.6 */
    L.n_image_tokens = P * P + L.pool_h * (L.pool_w + 1);
    *out = L;
    return VLM_OK;
fail:
    return st;
}

/* Contract in image.h: -1 (after logging) when img_compute_layout rejects the size or config. */
int64_t img_num_image_tokens(const struct vlm_config *c, const struct vlm_preproc_config *pp, int64_t h, int64_t w) {
    struct img_layout L;
    if (img_compute_layout(c, pp, h, w, &L) != VLM_OK) return -1;
    return L.n_image_tokens;
}

/* ---------------------------------------------------------------------------------------------------------
 * Crops, rescale + normalize */

/* The float value of every uint8 level for each channel, computed as transformers does: x = float32(double(u) *
 * rescale_factor) (numpy upcasts to float64, multiplies, casts back), then y = (x - mean) / std in float32.
 * Without do_rescale x = float32(u); without do_normalize y = x. */
void img_level_table(const struct vlm_preproc_config *pp, float lut[3][256]) {
    for (int ch = 0; ch < 3; ch++) {
        for (int u = 0; u < 256; u++) {
            float x = pp->do_rescale ? (float)((double)u * pp->rescale_factor) : (float)u;
            if (pp->do_normalize) x = (x - pp->image_mean[ch]) / pp->image_std[ch];
            lut[ch][u] = x;
        }
    }
}

/* Writes one (3, S, S) crop from interleaved RGB rows: row y of the crop is src + y * stride (S pixels). */
static void crop_to_planes(const uint8_t *src, int64_t stride, int64_t S, const float lut[3][256], float *dst) {
    const size_t plane = (size_t)S * (size_t)S;
    for (int64_t y = 0; y < S; y++) {
        const uint8_t *row = src + (size_t)y * (size_t)stride;
        for (int64_t x = 0; x < S; x++) {
            const size_t o = (size_t)y * (size_t)S + (size_t)x;
            dst[o] = lut[0][row[3 * x + 0]];
            dst[plane + o] = lut[1][row[3 * x + 1]];
            dst[2 * plane + o] = lut[2][row[3 * x + 2]];
        }
    }
}

/* Contract in image.h. layout must be img_compute_layout's result for this image and config (checked field by
 * field, VLM_ERR_ARG otherwise); only PIL BICUBIC (resample 3) is supported (VLM_ERR_UNSUPPORTED). The padded
 * canvas is never materialised: each tile pixel reads the resized image or, outside it, 0. On failure
 * *out_pixels is untouched. */
enum vlm_status img_preprocess(const struct vlm_image *img, const struct vlm_config *c,
                               const struct vlm_preproc_config *pp, const struct img_layout *layout,
                               float **out_pixels) {
    enum vlm_status st = VLM_ERR_ARG;
    float *pixels = NULL;
    uint8_t *base = NULL, *resized = NULL, *canvas = NULL;
    if (!img || !img->rgb || !c || !pp || !layout || !out_pixels) {
        vlm_log_error("image preprocess: missing argument");
        goto fail;
    }
    if (pp->resample != 3) {
        vlm_log_error("image preprocess: resample filter %d is not supported (only 3 = BICUBIC)", pp->resample);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    struct img_layout L;
    if ((st = img_compute_layout(c, pp, img->height, img->width, &L)) != VLM_OK) goto fail;
    if (layout->height != L.height || layout->width != L.width || layout->canvas_h != L.canvas_h ||
        layout->canvas_w != L.canvas_w || layout->grid_h != L.grid_h || layout->grid_w != L.grid_w ||
        layout->resize_h != L.resize_h || layout->resize_w != L.resize_w || layout->pad_top != L.pad_top ||
        layout->pad_left != L.pad_left || layout->n_crops != L.n_crops) {
        vlm_log_error("image preprocess: layout does not belong to this %lld x %lld image", (long long)img->height,
                      (long long)img->width);
        st = VLM_ERR_ARG;
        goto fail;
    }
    const int64_t S = pp->size_h;
    const size_t crop_floats = (size_t)3 * (size_t)S * (size_t)S; /* S <= 2^20 from the config */
    pixels = vlm_alloc_array((size_t)L.n_crops, crop_floats * sizeof(float), "pixel values");
    base = vlm_alloc_array((size_t)S * (size_t)S, 3, "base view");
    resized = vlm_alloc_array((size_t)L.resize_h * (size_t)L.resize_w, 3, "resized image");
    canvas = vlm_alloc_array((size_t)S * (size_t)S, 3, "tile");
    if (!pixels || !base || !resized || !canvas) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    float lut[3][256];
    img_level_table(pp, lut);

    /* crop 0: the whole image straight to S x S (aspect ratio not kept, no padding) */
    if ((st = img_resize_bicubic_u8(img->rgb, img->height, img->width, 3, base, S, S)) != VLM_OK) goto fail;
    crop_to_planes(base, 3 * S, S, lut, pixels);

    /* tiles of the black-padded canvas, row-major */
    if ((st = img_resize_bicubic_u8(img->rgb, img->height, img->width, 3, resized, L.resize_h, L.resize_w)) != VLM_OK)
        goto fail;
    for (int64_t r = 0; r < L.grid_h; r++) {
        for (int64_t q = 0; q < L.grid_w; q++) {
            /* tile columns [x_lo, x_hi) come from the resized image, the rest is padding */
            int64_t x_lo = L.pad_left - q * S, x_hi = L.pad_left + L.resize_w - q * S;
            x_lo = x_lo < 0 ? 0 : x_lo > S ? S : x_lo;
            x_hi = x_hi < x_lo ? x_lo : x_hi > S ? S : x_hi;
            for (int64_t y = 0; y < S; y++) {
                const int64_t ry = r * S + y - L.pad_top; /* row in the resized image */
                uint8_t *row = canvas + (size_t)y * (size_t)S * 3;
                memset(row, 0, (size_t)S * 3);
                if (ry < 0 || ry >= L.resize_h || x_hi == x_lo) continue;
                const int64_t rx = q * S + x_lo - L.pad_left;
                memcpy(row + 3 * x_lo, resized + ((size_t)ry * (size_t)L.resize_w + (size_t)rx) * 3,
                       (size_t)(x_hi - x_lo) * 3);
            }
            crop_to_planes(canvas, 3 * S, S, lut, pixels + (size_t)(1 + r * L.grid_w + q) * crop_floats);
        }
    }
    free(base);
    free(resized);
    free(canvas);
    *out_pixels = pixels;
    return VLM_OK;
fail:
    free(pixels);
    free(base);
    free(resized);
    free(canvas);
    return st;
}
