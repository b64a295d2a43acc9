/* test_preprocess.c — preprocessing and packing (vision/preprocess.c, vision/pack.c) against the reference:
 * the token-count table of spec §6.7 and transformers' counter on ~3000 sizes (tests/golden/token_count.bin),
 * Pillow's bicubic resize byte for byte (tests/golden/resize.bin), the slow image processor's pixel_values bit for
 * bit and the model's pack_image_features (tests/golden/{single_png,unpad_png,pool_png,jpeg,odd_png}.bin).
 * Configs are built by hand here (the real 384/14 one and the tiny 56/14 one of the fixtures), so these tests do
 * not depend on the config parser. */
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "golden.h"
#include "runtime/util.h"
#include "test.h"
#include "tolerances.h"
#include "vision/image.h"


/* ---------------------------------------------------------------------------------------------------------
 * helpers */

/* SigLIP crop side S with patch 14, the 36 pinpoints (a*S, b*S) height-major, anyres_max_9, mean/std 0.5. */
static void make_config(struct vlm_config *c, struct vlm_preproc_config *pp, int64_t S) {
    memset(c, 0, sizeof *c);
    memset(pp, 0, sizeof *pp);
    c->vision.image_size = S;
    c->vision.patch_size = 14;
    c->vision.n_patches_side = S / 14;
    c->n_pinpoints = 36;
    for (int a = 1; a <= 6; a++)
        for (int b = 1; b <= 6; b++) {
            c->pinpoints[(a - 1) * 6 + (b - 1)][0] = a * S;
            c->pinpoints[(a - 1) * 6 + (b - 1)][1] = b * S;
        }
    c->anyres_max = 9;
    pp->size_h = pp->size_w = S;
    for (int i = 0; i < 3; i++) pp->image_mean[i] = 0.5f, pp->image_std[i] = 0.5f;
    pp->rescale_factor = 1.0 / 255.0;
    pp->resample = 3;
    pp->do_rescale = pp->do_normalize = pp->do_convert_rgb = true;
}


struct err_capture {
    int saved_fd;
    char path[800];
};
static void capture_begin(struct err_capture *c) {
    fflush(stderr);
    snprintf(c->path, sizeof c->path, "%s", test_tmp_path("stderr.txt"));
    int fd = open(c->path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    c->saved_fd = dup(2);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
}
static void capture_end(struct err_capture *c, char *buf, size_t cap) {
    fflush(stderr);
    dup2(c->saved_fd, 2);
    close(c->saved_fd);
    buf[0] = 0;
    FILE *f = fopen(c->path, "rb");
    if (f) {
        size_t n = fread(buf, 1, cap - 1, f);
        buf[n] = 0;
        fclose(f);
    }
}

/* The record called name, or NULL without recording a failure (for optional records). */
static const struct golden_tensor *golden_find(const struct golden_file *g, const char *name) {
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, name) == 0) return &g->t[i];
    return NULL;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 0) {
        float v = ldexpf((float)man, -24); /* zero or subnormal */
        return sign ? -v : v;
    }
    if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Reads the model's image_newline (length d) from the first *.safetensors file of model_dir that holds it, with a
 * minimal header walk (cJSON). F32, F16 and BF16. Records a failure and returns false when it cannot. */
static bool read_image_newline(const char *model_dir, int64_t d, float *out) {
    char pattern[1200];
    snprintf(pattern, sizeof pattern, "%s/*.safetensors", test_path(model_dir));
    glob_t gl;
    if (glob(pattern, 0, NULL, &gl) != 0) {
        FAIL("no safetensors files in %s", model_dir);
        return false;
    }
    bool found = false;
    for (size_t f = 0; f < gl.gl_pathc && !found; f++) {
        char *buf = NULL;
        size_t len = 0;
        if (vlm_file_read_all(gl.gl_pathv[f], 256u << 20, &buf, &len) != VLM_OK) continue;
        uint64_t hlen = 0;
        for (int i = 7; i >= 0 && len >= 8; i--) hlen = hlen << 8 | (uint8_t)buf[i];
        cJSON *j = len >= 8 && hlen <= len - 8 ? cJSON_ParseWithLength(buf + 8, (size_t)hlen) : NULL;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "image_newline");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(j, "model.image_newline");
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        if (t && cJSON_IsString(dt) && cJSON_GetArraySize(off) == 2) {
            const char *dtype = dt->valuestring;
            size_t esz = strcmp(dtype, "F32") == 0                                   ? 4
                         : strcmp(dtype, "F16") == 0 || strcmp(dtype, "BF16") == 0 ? 2
                                                                                   : 0;
            double a = cJSON_GetArrayItem(off, 0)->valuedouble, b = cJSON_GetArrayItem(off, 1)->valuedouble;
            const size_t base = 8 + (size_t)hlen;
            if (esz && b - a == (double)d * (double)esz && base + (size_t)b <= len) {
                const uint8_t *p = (const uint8_t *)buf + base + (size_t)a;
                for (int64_t i = 0; i < d; i++) {
                    if (esz == 4) {
                        memcpy(&out[i], p + 4 * i, 4);
                    } else {
                        uint16_t v = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
                        if (dtype[0] == 'B') {
                            uint32_t bits = (uint32_t)v << 16;
                            memcpy(&out[i], &bits, 4);
                        } else {
                            out[i] = half_to_float(v);
                        }
                    }
                }
                found = true;
            }
        }
        cJSON_Delete(j);
        free(buf);
    }
    globfree(&gl);
    if (!found) FAIL("image_newline (%lld values) not found in %s", (long long)d, model_dir);
    return found;
}

/* ---------------------------------------------------------------------------------------------------------
 * layout and token count */

/* Spec §6.7, every row, with the real configuration (384, patch 14, 27 x 27). */
TEST(image_layout_token_table_spec) {
    static const struct {
        int64_t h, w, canvas_h, canvas_w, n_crops, unpad_h, unpad_w, pool_h, pool_w, tokens;
    } rows[] = {
        {384, 384, 384, 384, 2, 27, 27, 27, 27, 1485},       {224, 224, 384, 384, 2, 27, 27, 27, 27, 1485},
        {336, 336, 384, 384, 2, 27, 27, 27, 27, 1485},       {1, 1, 384, 384, 2, 27, 27, 27, 27, 1485},
        {100, 200, 384, 384, 2, 13, 27, 13, 27, 1093},       {480, 640, 768, 768, 5, 40, 54, 40, 54, 2929},
        {768, 1024, 768, 1152, 7, 54, 73, 54, 73, 4725},     {1024, 768, 1152, 768, 7, 73, 54, 73, 54, 4744},
        {899, 1024, 1152, 1152, 10, 71, 81, 71, 81, 6551},   {720, 1280, 768, 1536, 9, 54, 96, 54, 96, 5967},
        {1080, 1920, 1152, 1920, 16, 75, 135, 60, 108, 7269}, {1200, 1600, 1536, 1920, 21, 102, 135, 70, 93, 7309},
        {2304, 2304, 2304, 2304, 37, 162, 162, 81, 81, 7371}, {10000, 100, 2304, 384, 7, 162, 1, 162, 1, 1053},
        {100, 10000, 384, 2304, 7, 1, 162, 1, 162, 892},     {1173, 961, 1536, 1152, 13, 98, 81, 98, 81, 8765},
    };
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 384);
    CHECK_EQ(c.vision.n_patches_side, 27);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct img_layout L;
        if (!CHECK_EQ(img_compute_layout(&c, &pp, rows[i].h, rows[i].w, &L), VLM_OK)) continue;
        CHECK_EQ(L.canvas_h, rows[i].canvas_h);
        CHECK_EQ(L.canvas_w, rows[i].canvas_w);
        CHECK_EQ(L.n_crops, rows[i].n_crops);
        CHECK_EQ(L.grid_h * L.grid_w + 1, rows[i].n_crops);
        CHECK_EQ(L.unpad_h, rows[i].unpad_h);
        CHECK_EQ(L.unpad_w, rows[i].unpad_w);
        CHECK_EQ(L.pool_h, rows[i].pool_h);
        CHECK_EQ(L.pool_w, rows[i].pool_w);
        CHECK_EQ(L.pooled, rows[i].pool_h != rows[i].unpad_h);
        CHECK_EQ(L.n_image_tokens, rows[i].tokens);
        CHECK_EQ(img_num_image_tokens(&c, &pp, rows[i].h, rows[i].w), rows[i].tokens);
    }
}

/* Images whose unpadded side lands within 5e-8 below an integer: Python's round(x, 7) lifts it (transformers
 * PR #35779). Without that rounding 47 x 423 would unpad to 5 rows (1004 tokens) and 94 x 423 to 11 rows (1334).
 * Values from transformers' LlavaOnevisionProcessor._get_number_of_features. */
TEST(image_layout_round7_edges) {
    static const struct {
        int64_t h, w, unpad_h, unpad_w, tokens;
    } rows[] = {
        {47, 423, 7, 54, 1114}, {94, 423, 13, 54, 1444}, {55, 99, 15, 27, 1149},
        {49, 1323, 5, 108, 1274}, {423, 47, 54, 7, 1161}, {99, 55, 27, 15, 1161},
    };
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 384);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct img_layout L;
        if (!CHECK_EQ(img_compute_layout(&c, &pp, rows[i].h, rows[i].w, &L), VLM_OK)) continue;
        CHECK_EQ(L.unpad_h, rows[i].unpad_h);
        CHECK_EQ(L.unpad_w, rows[i].unpad_w);
        CHECK_EQ(L.n_image_tokens, rows[i].tokens);
    }
}

/* transformers' counter (processor) and select_best_resolution on ~3000 sizes, real configuration. */
TEST(image_layout_token_count_golden) {
    struct golden_file g;
    if (golden_load("tests/golden/token_count.bin", &g) != 0) return;
    const struct golden_tensor *sizes = golden_get(&g, "sizes", GOLDEN_I64);
    const struct golden_tensor *canvas = golden_get(&g, "canvas", GOLDEN_I64);
    if (sizes && canvas && CHECK(sizes->n_dims == 2 && sizes->shape[1] == 3 && canvas->n_dims == 2 &&
                                 canvas->shape[1] == 2 && canvas->shape[0] == sizes->shape[0] &&
                                 sizes->shape[0] > 100)) {
        struct vlm_config c;
        struct vlm_preproc_config pp;
        make_config(&c, &pp, 384);
        const int64_t *s = sizes->data, *cv = canvas->data;
        int64_t bad = 0;
        for (int64_t i = 0; i < sizes->shape[0]; i++) {
            struct img_layout L;
            enum vlm_status st = img_compute_layout(&c, &pp, s[3 * i], s[3 * i + 1], &L);
            if (st != VLM_OK || L.n_image_tokens != s[3 * i + 2] || L.canvas_h != cv[2 * i] ||
                L.canvas_w != cv[2 * i + 1]) {
                if (bad++ < 5)
                    FAIL("%lld x %lld: got %lld tokens on %lld x %lld, want %lld on %lld x %lld", (long long)s[3 * i],
                         (long long)s[3 * i + 1], (long long)L.n_image_tokens, (long long)L.canvas_h,
                         (long long)L.canvas_w, (long long)s[3 * i + 2], (long long)cv[2 * i],
                         (long long)cv[2 * i + 1]);
            }
        }
        CHECK_EQ(bad, 0);
    }
    golden_free(&g);
}

TEST(image_layout_rejects_bad_input) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 384);
    struct img_layout L = {.n_image_tokens = -5};
    struct err_capture cap;
    char msg[4096];
    capture_begin(&cap);
    CHECK_EQ(img_compute_layout(&c, &pp, 0, 10, &L), VLM_ERR_ARG);
    CHECK_EQ(img_compute_layout(&c, &pp, 10, -3, &L), VLM_ERR_ARG);
    CHECK_EQ(img_compute_layout(&c, &pp, 1ll << 40, 10, &L), VLM_ERR_ARG);
    CHECK_EQ(img_num_image_tokens(&c, &pp, 0, 0), -1);
    pp.size_h = pp.size_w = 336; /* crop size must be the tower's image size */
    CHECK_EQ(img_compute_layout(&c, &pp, 10, 10, &L), VLM_ERR_ARG);
    make_config(&c, &pp, 384);
    c.pinpoints[5][1] = 1000; /* not a multiple of 384 */
    CHECK_EQ(img_compute_layout(&c, &pp, 10, 10, &L), VLM_ERR_ARG);
    make_config(&c, &pp, 384);
    c.n_pinpoints = 0;
    CHECK_EQ(img_compute_layout(&c, &pp, 10, 10, &L), VLM_ERR_ARG);
    capture_end(&cap, msg, sizeof msg);
    CHECK_EQ(L.n_image_tokens, -5); /* untouched */
    CHECK(strstr(msg, "vlmrun: error: image layout:") == msg);
    /* no pooling when anyres_max is 0: the 2304^2 map keeps all 162 x 162 cells */
    make_config(&c, &pp, 384);
    c.anyres_max = 0;
    if (CHECK_EQ(img_compute_layout(&c, &pp, 2304, 2304, &L), VLM_OK)) {
        CHECK_EQ(L.pooled, 0);
        CHECK_EQ(L.n_image_tokens, 729 + 162 * 163);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Pillow bicubic */

TEST(image_resize_matches_pillow_golden) {
    struct golden_file g;
    if (golden_load("tests/golden/resize.bin", &g) != 0) return;
    int n_pairs = 0;
    for (int k = 0;; k++) {
        char sname[32], dname[32];
        snprintf(sname, sizeof sname, "src_%d", k);
        snprintf(dname, sizeof dname, "dst_%d", k);
        const struct golden_tensor *s = golden_find(&g, sname);
        if (!s) break;
        const struct golden_tensor *d = golden_get(&g, dname, GOLDEN_U8);
        if (!d || !CHECK(s->dtype == GOLDEN_U8 && s->n_dims == 3 && d->n_dims == 3 && s->shape[2] == d->shape[2]))
            break;
        uint8_t *out = malloc((size_t)d->n);
        enum vlm_status st = img_resize_bicubic_u8(s->data, s->shape[0], s->shape[1], s->shape[2], out, d->shape[0],
                                                   d->shape[1]);
        if (CHECK_EQ(st, VLM_OK)) {
            int64_t n_bad = 0, max = 0;
            const uint8_t *r = d->data;
            for (int64_t i = 0; i < d->n; i++) {
                int64_t diff = llabs((long long)out[i] - (long long)r[i]);
                n_bad += diff != 0;
                if (diff > max) max = diff;
            }
            if (n_bad)
                FAIL("resize pair %d: %lld x %lld -> %lld x %lld: %lld bytes differ (max %lld)", k,
                     (long long)s->shape[0], (long long)s->shape[1], (long long)d->shape[0], (long long)d->shape[1],
                     (long long)n_bad, (long long)max);
        }
        free(out);
        n_pairs++;
    }
    if (n_pairs < 10) FAIL("resize.bin holds only %d pairs", n_pairs);
    golden_free(&g);
}

TEST(image_resize_properties) {
    enum { H = 17, W = 23 };
    uint8_t src[H * W * 3], dst[64 * 64 * 3];
    for (int i = 0; i < H * W * 3; i++) src[i] = (uint8_t)(i * 37 + 11);
    /* equal sizes: an exact copy (Pillow returns im.copy()) */
    CHECK_EQ(img_resize_bicubic_u8(src, H, W, 3, dst, H, W), VLM_OK);
    CHECK(memcmp(src, dst, sizeof src) == 0);
    /* a constant image stays constant, up or down, in either pass order */
    static const int64_t sizes[][2] = {{1, 1}, {5, 40}, {40, 5}, {64, 64}, {3, 23}, {17, 2}};
    memset(src, 200, sizeof src);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        CHECK_EQ(img_resize_bicubic_u8(src, H, W, 3, dst, sizes[k][0], sizes[k][1]), VLM_OK);
        int bad = 0;
        for (int64_t i = 0; i < sizes[k][0] * sizes[k][1] * 3; i++) bad += dst[i] != 200;
        CHECK_EQ(bad, 0);
    }
    /* channels are independent: a 1-channel resize equals channel 0 of the 3-channel one */
    uint8_t grey[H * W], g_out[31 * 9];
    for (int i = 0; i < H * W; i++) src[3 * i] = grey[i] = (uint8_t)(i * 91), src[3 * i + 1] = 0, src[3 * i + 2] = 255;
    CHECK_EQ(img_resize_bicubic_u8(src, H, W, 3, dst, 31, 9), VLM_OK);
    CHECK_EQ(img_resize_bicubic_u8(grey, H, W, 1, g_out, 31, 9), VLM_OK);
    int bad = 0;
    for (int i = 0; i < 31 * 9; i++) bad += dst[3 * i] != g_out[i] || dst[3 * i + 1] != 0 || dst[3 * i + 2] != 255;
    CHECK_EQ(bad, 0);
    struct err_capture cap;
    char msg[1024];
    capture_begin(&cap);
    CHECK_EQ(img_resize_bicubic_u8(src, 0, W, 3, dst, 4, 4), VLM_ERR_ARG);
    CHECK_EQ(img_resize_bicubic_u8(src, H, W, 3, dst, 4, 0), VLM_ERR_ARG);
    CHECK_EQ(img_resize_bicubic_u8(NULL, H, W, 3, dst, 4, 4), VLM_ERR_ARG);
    capture_end(&cap, msg, sizeof msg);
}

/* ---------------------------------------------------------------------------------------------------------
 * pixel values and packing against transformers (tiny 56 / 14 configuration) */

/* tiny_single/unpad/pool: crop 56 (P = 4), hidden 64, mean/std 0.5. tiny_odd: crop 28 (P = 2), hidden 112, the
 * OpenAI-CLIP mean/std (so normalisation is not a plain 2x - 1), a tall image (padding left and right), pooled. */
static const struct golden_case {
    const char *file, *model;
    int64_t S, d;
    bool clip_norm;
} golden_cases[] = {
    {"tests/golden/single_png.bin", "tests/data/models/tiny_single", 56, 64, false},
    {"tests/golden/unpad_png.bin", "tests/data/models/tiny_unpad", 56, 64, false},
    {"tests/golden/pool_png.bin", "tests/data/models/tiny_pool", 56, 64, false},
    {"tests/golden/jpeg.bin", "tests/data/models/tiny_unpad", 56, 64, false}, /* stages from PIL's pixels */
    {"tests/golden/odd_png.bin", "tests/data/models/tiny_odd", 28, 112, true},
};

static void golden_case_config(const struct golden_case *gc, struct vlm_config *c, struct vlm_preproc_config *pp) {
    static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    make_config(c, pp, gc->S);
    if (gc->clip_norm) {
        memcpy(pp->image_mean, clip_mean, sizeof clip_mean);
        memcpy(pp->image_std, clip_std, sizeof clip_std);
    }
}

/* The golden image as a struct vlm_image (borrowing the golden buffer; img_preprocess does not write it). */
static bool golden_image(const struct golden_file *g, struct vlm_image *img) {
    const struct golden_tensor *t = golden_get(g, "image_rgb", GOLDEN_U8);
    if (!t || !CHECK(t->n_dims == 3 && t->shape[2] == 3)) return false;
    img->height = t->shape[0];
    img->width = t->shape[1];
    img->rgb = (uint8_t *)t->data;
    return true;
}

TEST(image_preprocess_matches_transformers) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    for (size_t k = 0; k < sizeof golden_cases / sizeof golden_cases[0]; k++) {
        const int64_t S = golden_cases[k].S;
        golden_case_config(&golden_cases[k], &c, &pp);
        struct golden_file g;
        if (golden_load(golden_cases[k].file, &g) != 0) continue;
        struct vlm_image img;
        const struct golden_tensor *lay = golden_get(&g, "layout", GOLDEN_I64);
        const struct golden_tensor *pv = golden_get(&g, "pixel_values", GOLDEN_F32);
        struct img_layout L;
        if (golden_image(&g, &img) && lay && pv && CHECK_EQ(lay->n, 10) &&
            CHECK_EQ(img_compute_layout(&c, &pp, img.height, img.width, &L), VLM_OK)) {
            const int64_t *w = lay->data;
            const int64_t got[10] = {L.canvas_h, L.canvas_w, L.resize_h, L.resize_w, L.n_crops,
                                     L.unpad_h,  L.unpad_w,  L.pool_h,   L.pool_w,   L.n_image_tokens};
            for (int i = 0; i < 10; i++)
                if (got[i] != w[i])
                    FAIL("%s: layout[%d] = %lld, want %lld", golden_cases[k].file, i, (long long)got[i],
                         (long long)w[i]);
            float *pix = NULL;
            if (CHECK_EQ(img_preprocess(&img, &c, &pp, &L, &pix), VLM_OK)) {
                if (CHECK(pv->n_dims == 4 && pv->shape[0] == L.n_crops && pv->shape[1] == 3 && pv->shape[2] == S &&
                          pv->shape[3] == S))
                    CHECK_NEAR_TENSOR(golden_cases[k].file, pix, pv->data, pv->n, TOL_PIXELS_ATOL, TOL_PIXELS_RTOL);
                free(pix);
            }
        }
        golden_free(&g);
    }
}

TEST(image_pack_matches_transformers) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    for (size_t k = 0; k < sizeof golden_cases / sizeof golden_cases[0]; k++) {
        golden_case_config(&golden_cases[k], &c, &pp);
        const int64_t P = c.vision.n_patches_side, d = golden_cases[k].d;
        struct golden_file g;
        if (golden_load(golden_cases[k].file, &g) != 0) continue;
        struct vlm_image img;
        const struct golden_tensor *proj = golden_get(&g, "projected", GOLDEN_F32);
        const struct golden_tensor *packed = golden_get(&g, "packed", GOLDEN_F32);
        /* image_newline: the golden record when the fixtures carry one, else the model's own weights */
        float newline[112];
        VLM_ASSERT(d <= 112);
        bool have_nl;
        const struct golden_tensor *nl = golden_find(&g, "image_newline");
        if (nl) {
            have_nl = CHECK(nl->dtype == GOLDEN_F32 && nl->n == d);
            if (have_nl) memcpy(newline, nl->data, (size_t)d * sizeof(float));
        } else {
            have_nl = read_image_newline(golden_cases[k].model, d, newline);
        }
        struct img_layout L;
        if (golden_image(&g, &img) && proj && packed && have_nl &&
            CHECK_EQ(img_compute_layout(&c, &pp, img.height, img.width, &L), VLM_OK) &&
            CHECK(proj->n_dims == 3 && proj->shape[0] == L.n_crops && proj->shape[1] == P * P && proj->shape[2] == d) &&
            CHECK(packed->n_dims == 2 && packed->shape[0] == L.n_image_tokens && packed->shape[1] == d)) {
            float *out = malloc((size_t)packed->n * sizeof(float));
            if (CHECK_EQ(img_pack_features(proj->data, &L, P, d, newline, out), VLM_OK)) {
                CHECK_NEAR_TENSOR(golden_cases[k].file, out, packed->data, packed->n, TOL_PACKED_ATOL,
                                  TOL_PACKED_RTOL);
                /* structure, independent of our packer: base rows are crop 0 verbatim, every row ends in the
                 * newline vector */
                const float *ref = packed->data;
                CHECK(memcmp(ref, proj->data, (size_t)(P * P * d) * sizeof(float)) == 0);
                int bad = 0;
                for (int64_t r = 0; r < L.pool_h; r++)
                    bad += memcmp(ref + (P * P + r * (L.pool_w + 1) + L.pool_w) * d, newline,
                                  (size_t)d * sizeof(float)) != 0;
                CHECK_EQ(bad, 0);
                if (test_verbose()) {
                    int64_t n_diff = 0;
                    for (int64_t i = 0; i < packed->n; i++) n_diff += out[i] != ref[i];
                    fprintf(stderr, "  %s: %lld of %lld packed values not bit-identical (pooled %d)\n",
                            golden_cases[k].file, (long long)n_diff, (long long)packed->n, L.pooled);
                }
            }
            free(out);
        }
        golden_free(&g);
    }
}

/* The single_png case (40 x 50 on a 56 x 56 canvas, resized to 45 x 56): tile rows outside [5, 50) are black,
 * i.e. (0 - 0.5) / 0.5 = -1 after normalisation; the base view has no padding. */
TEST(image_preprocess_black_padding) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 56);
    uint8_t *rgb = malloc(40 * 50 * 3);
    memset(rgb, 255, 40 * 50 * 3);
    struct vlm_image img = {.width = 50, .height = 40, .rgb = rgb};
    struct img_layout L;
    float *pix = NULL;
    if (CHECK_EQ(img_compute_layout(&c, &pp, 40, 50, &L), VLM_OK) && CHECK_EQ(L.pad_top, 5) &&
        CHECK_EQ(L.resize_h, 45) && CHECK_EQ(img_preprocess(&img, &c, &pp, &L, &pix), VLM_OK)) {
        int bad = 0;
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 56; y++)
                for (int x = 0; x < 56; x++) {
                    float base = pix[(ch * 56 + y) * 56 + x], tile = pix[((3 + ch) * 56 + y) * 56 + x];
                    bad += base != 1.0f;
                    bad += tile != (y >= 5 && y < 50 ? 1.0f : -1.0f);
                }
        CHECK_EQ(bad, 0);
        free(pix);
    }
    free(rgb);
}

/* do_rescale / do_normalize: a 56 x 56 image needs no resize, so both crops are the image itself and every
 * value is the per-level formula of spec §5.5. */
TEST(image_preprocess_rescale_normalize_flags) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 56);
    pp.image_mean[1] = 0.25f, pp.image_std[2] = 0.125f;
    uint8_t *rgb = malloc(56 * 56 * 3);
    for (int i = 0; i < 56 * 56 * 3; i++) rgb[i] = (uint8_t)(i * 7);
    struct vlm_image img = {.width = 56, .height = 56, .rgb = rgb};
    for (int mode = 0; mode < 4; mode++) {
        pp.do_rescale = mode & 1, pp.do_normalize = (mode >> 1) & 1;
        struct img_layout L;
        float *pix = NULL;
        if (!CHECK_EQ(img_compute_layout(&c, &pp, 56, 56, &L), VLM_OK) || !CHECK_EQ(L.n_crops, 2) ||
            !CHECK_EQ(img_preprocess(&img, &c, &pp, &L, &pix), VLM_OK))
            continue;
        int bad = 0;
        for (int crop = 0; crop < 2; crop++)
            for (int ch = 0; ch < 3; ch++)
                for (int p = 0; p < 56 * 56; p++) {
                    uint8_t u = rgb[3 * p + ch];
                    float x = pp.do_rescale ? (float)((double)u * (1.0 / 255.0)) : (float)u;
                    if (pp.do_normalize) x = (x - pp.image_mean[ch]) / pp.image_std[ch];
                    bad += pix[((size_t)crop * 3 + ch) * 56 * 56 + p] != x;
                }
        CHECK_EQ(bad, 0);
        free(pix);
    }
    free(rgb);
}

TEST(image_preprocess_and_pack_reject_mismatch) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 56);
    uint8_t rgb[10 * 12 * 3] = {0};
    struct vlm_image img = {.width = 12, .height = 10, .rgb = rgb};
    struct img_layout L, other;
    float *pix = (float *)&L;
    struct err_capture cap;
    char msg[4096];
    CHECK_EQ(img_compute_layout(&c, &pp, 10, 12, &L), VLM_OK);
    CHECK_EQ(img_compute_layout(&c, &pp, 300, 12, &other), VLM_OK);
    capture_begin(&cap);
    CHECK_EQ(img_preprocess(&img, &c, &pp, &other, &pix), VLM_ERR_ARG); /* layout of another image */
    pp.resample = 2;
    CHECK_EQ(img_preprocess(&img, &c, &pp, &L, &pix), VLM_ERR_UNSUPPORTED);
    float feats[2 * 16 * 4] = {0}, nl[4] = {0}, out[64 * 4];
    CHECK_EQ(img_pack_features(feats, &L, 5, 4, nl, out), VLM_ERR_ARG); /* P differs from the layout's */
    L.n_image_tokens++;
    CHECK_EQ(img_pack_features(feats, &L, 4, 4, nl, out), VLM_ERR_ARG);
    capture_end(&cap, msg, sizeof msg);
    CHECK(pix == (float *)&L); /* untouched */
}

/* Tiles against an explicitly built padded canvas (spec §5.3 steps 3-7), for a tall image (padding left and
 * right, which none of the golden cases has) and a wide one. */
TEST(image_preprocess_tiles_from_padded_canvas) {
    struct vlm_config c;
    struct vlm_preproc_config pp;
    make_config(&c, &pp, 56);
    pp.do_rescale = pp.do_normalize = false; /* pixel values are then the uint8 levels */
    static const int64_t sizes[][2] = {{150, 70}, {61, 333}, {300, 41}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const int64_t H = sizes[k][0], W = sizes[k][1], S = 56;
        uint8_t *rgb = malloc((size_t)(H * W * 3));
        for (int64_t i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)((i * 2654435761u) >> 11);
        struct vlm_image img = {.width = W, .height = H, .rgb = rgb};
        struct img_layout L;
        float *pix = NULL;
        if (CHECK_EQ(img_compute_layout(&c, &pp, H, W, &L), VLM_OK) &&
            CHECK(L.pad_top > 0 || L.pad_left > 0) && CHECK_EQ(img_preprocess(&img, &c, &pp, &L, &pix), VLM_OK)) {
            uint8_t *resized = malloc((size_t)(L.resize_h * L.resize_w * 3));
            uint8_t *canvas = calloc((size_t)(L.canvas_h * L.canvas_w * 3), 1);
            uint8_t *base = malloc((size_t)(S * S * 3));
            CHECK_EQ(img_resize_bicubic_u8(rgb, H, W, 3, resized, L.resize_h, L.resize_w), VLM_OK);
            CHECK_EQ(img_resize_bicubic_u8(rgb, H, W, 3, base, S, S), VLM_OK);
            for (int64_t y = 0; y < L.resize_h; y++)
                memcpy(canvas + ((y + L.pad_top) * L.canvas_w + L.pad_left) * 3, resized + y * L.resize_w * 3,
                       (size_t)(L.resize_w * 3));
            int64_t bad = 0;
            for (int64_t crop = 0; crop < L.n_crops; crop++)
                for (int64_t ch = 0; ch < 3; ch++)
                    for (int64_t y = 0; y < S; y++)
                        for (int64_t x = 0; x < S; x++) {
                            uint8_t want;
                            if (crop == 0) {
                                want = base[(y * S + x) * 3 + ch];
                            } else {
                                int64_t r = (crop - 1) / L.grid_w, q = (crop - 1) % L.grid_w;
                                want = canvas[((r * S + y) * L.canvas_w + q * S + x) * 3 + ch];
                            }
                            bad += pix[((crop * 3 + ch) * S + y) * S + x] != (float)want;
                        }
            CHECK_EQ(bad, 0);
            free(resized);
            free(canvas);
            free(base);
            free(pix);
        }
        free(rgb);
    }
}
