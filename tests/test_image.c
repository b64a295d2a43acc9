/* test_image.c — image decoding (vision/image_decode.c): every PNG colour type we can produce, alpha compositing
 * against PIL's integer formula for all 65536 (value, alpha) pairs, JPEG, and the hostile inputs of targets.md §6.3
 * (truncated, random, empty, missing, other formats, decompression bombs claimed in the header, oversized files).
 * Test images are written at runtime: stb_image_write for ordinary PNGs, hand-built chunks (own CRC-32) for
 * palette/tRNS/16-bit PNGs and forged headers, a tiny baseline encoder for flat JPEGs; the fixture photo JPEG
 * is cut and edited for the hostile JPEG cases. The fixture images in tests/data/images are compared with the
 * decoded pixels PIL produced (tests/golden/<case>.bin, record image_rgb). */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "golden.h"
#include "runtime/util.h"
#include "test.h"
#include "tolerances.h"
#include "vision/image.h"

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop


/* ---------------------------------------------------------------------------------------------------------
 * helpers */

static uint32_t lcg_state = 12345;
static uint8_t rnd8(void) {
    lcg_state = lcg_state * 1664525u + 1013904223u;
    return (uint8_t)(lcg_state >> 24);
}



/* Loads path expecting failure `want`: *out must stay untouched and stderr must hold exactly one line that starts
 * with "vlmrun: error: ", names the file and contains `needle` (when non-NULL). */
static void expect_load_error(const char *path, enum vlm_status want, const char *needle) {
    struct vlm_image img = {.width = -7, .height = -9, .rgb = (uint8_t *)&img};
        char msg[2048];
    test_capture_begin();
    enum vlm_status st = img_load(path, &img);
    test_capture_end(msg, sizeof msg);
    if (!CHECK_EQ(st, want)) fprintf(stderr, "  (%s) message: %s", path, msg);
    CHECK(img.width == -7 && img.height == -9 && img.rgb == (uint8_t *)&img);
    if (st == VLM_OK) img_free(&img);
    CHECK(strncmp(msg, "vlmrun: error: ", 15) == 0);
    CHECK(strstr(msg, path) != NULL);
    const char *nl = strchr(msg, '\n');
    CHECK(nl != NULL && nl[1] == '\0');
    if (needle && !CHECK(strstr(msg, needle) != NULL)) fprintf(stderr, "  message was: %s", msg);
}

static void expect_memory_error(const uint8_t *buf, size_t len, enum vlm_status want, const char *needle) {
    const char *path = test_tmp_path("bad.img");
    test_write_file(path, buf, len);
    expect_load_error(path, want, needle);
}

/* PIL's AlphaComposite.c for one channel, destination opaque white (dst alpha 255), written out in its general
 * integer form (7 precision bits, SHIFTFORDIV255 divisions) — independent of the shortcut the decoder uses. */
static uint8_t pil_over_white(uint32_t v, uint32_t a) {
    if (a == 0) return 255;
    const uint32_t dst = 255, dst_a = 255;
    uint32_t blend = dst_a * (255 - a);
    uint32_t outa255 = a * 255 + blend;
    uint32_t coef1 = a * 255 * 255 * (1u << 7) / outa255;
    uint32_t coef2 = 255 * (1u << 7) - coef1;
    uint32_t tmp = v * coef1 + dst * coef2 + (0x80u << 7);
    return (uint8_t)((((tmp >> 8) + tmp) >> 8) >> 7);
}

/* --- hand-built PNGs ---------------------------------------------------------------------------------- */

struct bytes {
    uint8_t *p;
    size_t n, cap;
};
static void put(struct bytes *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        VLM_ASSERT(b->p != NULL);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_be32(struct bytes *b, uint32_t v) {
    uint8_t q[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, q, 4);
}
static void put_chunk(struct bytes *b, const char *type, const uint8_t *d, size_t n) {
    put_be32(b, (uint32_t)n);
    size_t at = b->n;
    put(b, type, 4);
    if (n) put(b, d, n);
    put_be32(b, test_crc32(b->p + at, n + 4));
}
/* PNG with the given IHDR fields; raw = unfiltered scanlines without filter bytes (row_bytes each), may be NULL
 * for a header-only file (no IDAT/IEND). plte/trns optional. */
static struct bytes make_png(uint32_t w, uint32_t h, uint8_t depth, uint8_t color, const uint8_t *raw,
                             size_t row_bytes, const uint8_t *plte, size_t plte_n, const uint8_t *trns,
                             size_t trns_n) {
    struct bytes b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    put(&b, sig, 8);
    uint8_t ihdr[13] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                        (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h,
                        depth, color, 0, 0, 0};
    put_chunk(&b, "IHDR", ihdr, 13);
    if (plte) put_chunk(&b, "PLTE", plte, plte_n);
    if (trns) put_chunk(&b, "tRNS", trns, trns_n);
    if (raw) {
        size_t n = (size_t)h * (row_bytes + 1);
        uint8_t *filt = calloc(n, 1);
        for (uint32_t y = 0; y < h; y++) memcpy(filt + y * (row_bytes + 1) + 1, raw + y * row_bytes, row_bytes);
        int zlen = 0;
        uint8_t *z = stbi_zlib_compress(filt, (int)n, &zlen, 8);
        put_chunk(&b, "IDAT", z, (size_t)zlen);
        free(z);
        free(filt);
        put_chunk(&b, "IEND", NULL, 0);
    }
    return b;
}

static bool decode_ok(const uint8_t *buf, size_t len, struct vlm_image *img) {
    enum vlm_status st = img_decode_memory(buf, len, "memory", img);
    return CHECK_EQ(st, VLM_OK);
}

/* ---------------------------------------------------------------------------------------------------------
 * well-formed images */

TEST(image_decode_png_rgb_exact) {
    const int w = 37, h = 23;
    uint8_t src[23 * 37 * 3];
    for (size_t i = 0; i < sizeof src; i++) src[i] = rnd8();
    const char *path = test_tmp_path("rgb.png");
    CHECK(stbi_write_png(path, w, h, 3, src, w * 3));
    struct vlm_image img;
    if (!CHECK_EQ(img_load(path, &img), VLM_OK)) return;
    CHECK_EQ(img.width, w);
    CHECK_EQ(img.height, h);
    CHECK(memcmp(img.rgb, src, sizeof src) == 0); /* row 0 is the top row: never flipped */
    img_free(&img);
    CHECK(img.rgb == NULL && img.width == 0);
    img_free(&img); /* twice is fine */
    img_free(NULL);
}

TEST(image_decode_png_grey_is_rgb_equal) {
    const int w = 19, h = 11;
    uint8_t src[11 * 19];
    for (size_t i = 0; i < sizeof src; i++) src[i] = rnd8();
    int len;
    uint8_t *png = stbi_write_png_to_mem(src, w, w, h, 1, &len);
    struct vlm_image img;
    if (decode_ok(png, (size_t)len, &img)) {
        int bad = 0;
        for (int i = 0; i < w * h; i++)
            bad += img.rgb[3 * i] != src[i] || img.rgb[3 * i + 1] != src[i] || img.rgb[3 * i + 2] != src[i];
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png);
}

/* All 65536 (value, alpha) pairs in one RGBA image, and the same through grey+alpha. */
TEST(image_decode_alpha_all_pairs_match_pil) {
    uint8_t *rgba = malloc(256 * 256 * 4), *la = malloc(256 * 256 * 2);
    for (int a = 0; a < 256; a++) {
        for (int v = 0; v < 256; v++) {
            uint8_t *p = rgba + 4 * (a * 256 + v);
            p[0] = (uint8_t)v, p[1] = (uint8_t)(255 - v), p[2] = (uint8_t)(v ^ 0x5a), p[3] = (uint8_t)a;
            la[2 * (a * 256 + v)] = (uint8_t)v, la[2 * (a * 256 + v) + 1] = (uint8_t)a;
        }
    }
    int len;
    uint8_t *png = stbi_write_png_to_mem(rgba, 256 * 4, 256, 256, 4, &len);
    struct vlm_image img;
    if (decode_ok(png, (size_t)len, &img)) {
        int bad = 0;
        for (int i = 0; i < 256 * 256; i++)
            for (int ch = 0; ch < 3; ch++)
                bad += img.rgb[3 * i + ch] != pil_over_white(rgba[4 * i + ch], rgba[4 * i + 3]);
        CHECK_EQ(bad, 0);
        /* spot values worked out by hand from the formula: (v, a) = (0, 128) -> round(255*127/255) = 127 */
        CHECK_EQ(img.rgb[3 * (128 * 256 + 0)], 127);
        CHECK_EQ(img.rgb[3 * (0 * 256 + 77)], 255);   /* fully transparent -> white */
        CHECK_EQ(img.rgb[3 * (255 * 256 + 77)], 77);  /* opaque -> unchanged */
        img_free(&img);
    }
    free(png);
    png = stbi_write_png_to_mem(la, 256 * 2, 256, 256, 2, &len);
    if (decode_ok(png, (size_t)len, &img)) {
        int bad = 0;
        for (int i = 0; i < 256 * 256; i++) {
            uint8_t want = pil_over_white(la[2 * i], la[2 * i + 1]);
            bad += img.rgb[3 * i] != want || img.rgb[3 * i + 1] != want || img.rgb[3 * i + 2] != want;
        }
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png);
    free(rgba);
    free(la);
}

/* Palette with tRNS (PIL: mode P + transparency -> RGBA -> composite), colour-key tRNS on RGB and grey (key
 * pixels become white, the others stay), plain palette, 16-bit RGB (high byte). Checked against PIL 13 +
 * transformers' convert_to_rgb while writing this test. */
TEST(image_decode_png_palette_trns_and_16bit) {
    enum { W = 5, H = 3 };
    uint8_t plte[4 * 3] = {10, 20, 30, 200, 100, 0, 0, 0, 255, 90, 90, 90};
    uint8_t trns[3] = {255, 0, 128}; /* entry 3 has no alpha entry: opaque */
    uint8_t idx[H * W];
    for (int i = 0; i < H * W; i++) idx[i] = (uint8_t)(i % 4);
    struct vlm_image img;

    struct bytes png = make_png(W, H, 8, 3, idx, W, plte, sizeof plte, trns, sizeof trns);
    if (decode_ok(png.p, png.n, &img)) {
        int bad = 0;
        for (int i = 0; i < H * W; i++) {
            int k = idx[i];
            uint32_t a = k < 3 ? trns[k] : 255;
            for (int ch = 0; ch < 3; ch++) bad += img.rgb[3 * i + ch] != pil_over_white(plte[3 * k + ch], a);
        }
        CHECK_EQ(bad, 0);
        CHECK(img.rgb[3] == 255 && img.rgb[4] == 255 && img.rgb[5] == 255); /* pixel 1 = entry 1, alpha 0 */
        img_free(&img);
    }
    free(png.p);

    png = make_png(W, H, 8, 3, idx, W, plte, sizeof plte, NULL, 0); /* no tRNS: plain lookup */
    if (decode_ok(png.p, png.n, &img)) {
        int bad = 0;
        for (int i = 0; i < H * W; i++) bad += memcmp(img.rgb + 3 * i, plte + 3 * idx[i], 3) != 0;
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png.p);

    uint8_t rgb[H * W * 3];
    for (int i = 0; i < H * W; i++) rgb[3 * i] = (uint8_t)(i % 2 ? 60 : 7), rgb[3 * i + 1] = 120, rgb[3 * i + 2] = 0;
    uint8_t key_rgb[6] = {0, 60, 0, 120, 0, 0}; /* 16-bit samples (60, 120, 0) */
    png = make_png(W, H, 8, 2, rgb, W * 3, NULL, 0, key_rgb, 6);
    if (decode_ok(png.p, png.n, &img)) {
        int bad = 0;
        for (int i = 0; i < H * W; i++) {
            const uint8_t white[3] = {255, 255, 255};
            bad += memcmp(img.rgb + 3 * i, i % 2 ? white : rgb + 3 * i, 3) != 0;
        }
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png.p);

    uint8_t grey[H * W];
    for (int i = 0; i < H * W; i++) grey[i] = (uint8_t)(i % 3 ? 100 : 50);
    uint8_t key_grey[2] = {0, 100};
    png = make_png(W, H, 8, 0, grey, W, NULL, 0, key_grey, 2);
    if (decode_ok(png.p, png.n, &img)) {
        int bad = 0;
        for (int i = 0; i < H * W; i++) {
            uint8_t want = i % 3 ? 255 : 50;
            bad += img.rgb[3 * i] != want || img.rgb[3 * i + 1] != want || img.rgb[3 * i + 2] != want;
        }
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png.p);

    uint8_t rgb16[H * W * 6];
    for (size_t i = 0; i < sizeof rgb16; i++) rgb16[i] = rnd8();
    png = make_png(W, H, 16, 2, rgb16, W * 6, NULL, 0, NULL, 0);
    if (decode_ok(png.p, png.n, &img)) {
        int bad = 0;
        for (int i = 0; i < H * W * 3; i++) bad += img.rgb[i] != rgb16[2 * i]; /* big-endian high byte */
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(png.p);
}

/* --- hand-built baseline JPEGs ----------------------------------------------------------------------
 * (stb_image_write's JPEG encoder trips UBSan — a signed left shift in stbiw__jpg_writeBits — so the JPEG inputs
 * are the fixture photo and these.) A constant image: one quantiser of all 1s, every 8x8 block holds only its DC
 * coefficient 8 * (level - 128) (the DCT of a flat block), coded as a DC difference (the first block of each
 * component carries the value, the others 0) followed by end-of-block. Huffman tables: the DC categories used,
 * all with 3-bit codes; AC: only EOB, a 2-bit code. Decodes to the levels exactly (the IDCT of a DC-only block). */

struct bitw {
    struct bytes *b;
    uint32_t acc;
    int n;
};
static void bits_put(struct bitw *w, uint32_t v, int n) {
    for (int i = n - 1; i >= 0; i--) {
        w->acc = w->acc << 1 | ((v >> i) & 1u);
        if (++w->n == 8) {
            uint8_t c = (uint8_t)w->acc;
            put(w->b, &c, 1);
            if (c == 0xFF) put(w->b, "", 1); /* byte stuffing */
            w->acc = 0, w->n = 0;
        }
    }
}
static int dc_category(int v) {
    int a = v < 0 ? -v : v, n = 0;
    while (a) n++, a >>= 1;
    return n;
}
/* levels[c] is the level of component c (1 = grey, 3 = Y, Cb, Cr); w, h multiples of 8. */
static struct bytes make_flat_jpeg(int w, int h, int nc, const int *levels) {
    struct bytes b = {0};
    put(&b, "\xFF\xD8", 2);
    uint8_t dqt[2 + 2 + 65] = {0xFF, 0xDB, 0, 67, 0x00};
    memset(dqt + 5, 1, 64);
    put(&b, dqt, sizeof dqt);
    uint8_t sof[2 + 2 + 6 + 9] = {0xFF, 0xC0, 0, (uint8_t)(8 + 3 * nc), 8, (uint8_t)(h >> 8), (uint8_t)h,
                                  (uint8_t)(w >> 8), (uint8_t)w, (uint8_t)nc};
    for (int c = 0; c < nc; c++) sof[10 + 3 * c] = (uint8_t)(c + 1), sof[11 + 3 * c] = 0x11, sof[12 + 3 * c] = 0;
    put(&b, sof, (size_t)(10 + 3 * nc));
    /* DC table: category 0 plus each component's category, 3-bit codes in symbol order */
    uint8_t syms[4] = {0};
    int n_syms = 1;
    for (int c = 0; c < nc; c++) {
        int cat = dc_category(8 * (levels[c] - 128)), seen = 0;
        for (int k = 0; k < n_syms; k++) seen |= syms[k] == cat;
        if (!seen) syms[n_syms++] = (uint8_t)cat;
    }
    uint8_t dht_dc[2 + 2 + 1 + 16 + 4] = {0xFF, 0xC4, 0, (uint8_t)(3 + 16 + n_syms), 0x00};
    dht_dc[5 + 2] = (uint8_t)n_syms; /* counts[2] = codes of length 3 */
    memcpy(dht_dc + 21, syms, (size_t)n_syms);
    put(&b, dht_dc, (size_t)(21 + n_syms));
    static const uint8_t dht_ac[2 + 2 + 1 + 16 + 1] = {0xFF, 0xC4, 0, 20, 0x10, 0, 1, 0, 0, 0, 0, 0, 0,
                                                       0,    0,    0, 0,  0,    0, 0, 0x00};
    put(&b, dht_ac, sizeof dht_ac);
    uint8_t sos[2 + 2 + 1 + 6 + 3] = {0xFF, 0xDA, 0, (uint8_t)(6 + 2 * nc), (uint8_t)nc};
    for (int c = 0; c < nc; c++) sos[5 + 2 * c] = (uint8_t)(c + 1), sos[6 + 2 * c] = 0x00;
    sos[5 + 2 * nc] = 0, sos[6 + 2 * nc] = 63, sos[7 + 2 * nc] = 0;
    put(&b, sos, (size_t)(8 + 2 * nc));
    struct bitw bw = {&b, 0, 0};
    for (int blk = 0; blk < (w / 8) * (h / 8); blk++) {
        for (int c = 0; c < nc; c++) {
            int diff = blk == 0 ? 8 * (levels[c] - 128) : 0, cat = dc_category(diff), code = 0;
            for (int k = 0; k < n_syms; k++)
                if (syms[k] == cat) code = k;
            bits_put(&bw, (uint32_t)code, 3);
            if (cat) bits_put(&bw, (uint32_t)(diff >= 0 ? diff : diff + (1 << cat) - 1), cat);
            bits_put(&bw, 0, 2); /* EOB */
        }
    }
    if (bw.n) bits_put(&bw, 0x7F, 8 - bw.n); /* pad with 1-bits */
    put(&b, "\xFF\xD9", 2);
    return b;
}

TEST(image_decode_jpeg_flat_grey_and_colour) {
    struct vlm_image img;
    const int grey[1] = {77};
    struct bytes jpg = make_flat_jpeg(16, 24, 1, grey);
    const char *path = test_tmp_path("grey.jpg");
    test_write_file(path, jpg.p, jpg.n);
    if (CHECK_EQ(img_load(path, &img), VLM_OK)) {
        CHECK(img.width == 16 && img.height == 24);
        int bad = 0;
        for (int i = 0; i < 16 * 24 * 3; i++) bad += img.rgb[i] != 77;
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(jpg.p);
    /* Y, Cb, Cr = 100, 90, 160 -> JFIF: R = Y + 1.402 (Cr-128), G = Y - 0.344136 (Cb-128) - 0.714136 (Cr-128),
     * B = Y + 1.772 (Cb-128): 144.86, 90.22, 32.66; decoders round within one level */
    const int ycc[3] = {100, 90, 160};
    jpg = make_flat_jpeg(8, 16, 3, ycc);
    if (decode_ok(jpg.p, jpg.n, &img)) {
        CHECK(img.width == 8 && img.height == 16);
        const double want[3] = {144.864, 90.226, 32.664};
        int bad = 0;
        for (int i = 0; i < 8 * 16; i++)
            for (int ch = 0; ch < 3; ch++) bad += fabs(img.rgb[3 * i + ch] - want[ch]) > 1.0;
        CHECK_EQ(bad, 0);
        img_free(&img);
    }
    free(jpg.p);
}

/* The fixture PNGs decode to exactly PIL's pixels; the fixture JPEG within the decoder tolerance. */
TEST(image_decode_fixtures_match_pil) {
    static const struct {
        const char *golden, *image;
        bool exact;
    } cases[] = {
        {"tests/golden/single_png.bin", "tests/data/images/single_40x50.png", true},
        {"tests/golden/unpad_png.bin", "tests/data/images/unpad_70x150.png", true},
        {"tests/golden/pool_png.bin", "tests/data/images/pool_140x260.png", true},
        {"tests/golden/jpeg.bin", "tests/data/images/photo_60x45.jpg", false},
        {"tests/golden/odd_png.bin", "tests/data/images/odd_122x85.png", true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct golden_file g;
        if (golden_load(cases[c].golden, &g) != 0) continue;
        const struct golden_tensor *ref = golden_get(&g, "image_rgb", GOLDEN_U8);
        struct vlm_image img;
        if (ref && CHECK(ref->n_dims == 3 && ref->shape[2] == 3) &&
            CHECK_EQ(img_load(test_path(cases[c].image), &img), VLM_OK)) {
            CHECK_EQ(img.height, ref->shape[0]);
            CHECK_EQ(img.width, ref->shape[1]);
            if (img.height == ref->shape[0] && img.width == ref->shape[1]) {
                const uint8_t *r = ref->data;
                int64_t max = 0, sum = 0;
                for (int64_t i = 0; i < ref->n; i++) {
                    int64_t d = llabs((long long)img.rgb[i] - (long long)r[i]);
                    sum += d;
                    if (d > max) max = d;
                }
                double mean = (double)sum / (double)ref->n;
                if (test_verbose())
                    fprintf(stderr, "  %s: max abs diff %lld, mean %.4f\n", cases[c].image, (long long)max, mean);
                if (cases[c].exact) {
                    CHECK_EQ(max, 0);
                } else {
                    CHECK(max <= TOL_JPEG_MAX_ABS);
                    CHECK(mean <= TOL_JPEG_MEAN_ABS);
                }
            }
            img_free(&img);
        }
        golden_free(&g);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * hostile and broken inputs */

TEST(image_decode_rejects_missing_empty_random) {
    expect_load_error(test_path("tests/data/images/does_not_exist.png"), VLM_ERR_IO, NULL);
    const char *empty = test_tmp_path("empty.png");
    test_write_file(empty, "", 0);
    expect_load_error(empty, VLM_ERR_FORMAT, "not a PNG or JPEG image");
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = rnd8();
    junk[0] = 0x42; /* not 0x89 / 0xFF */
    expect_memory_error(junk, sizeof junk, VLM_ERR_FORMAT, "not a PNG or JPEG image");
    expect_memory_error(junk, 1, VLM_ERR_FORMAT, "not a PNG or JPEG image");
    /* the magic alone, and the magic followed by garbage */
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    expect_memory_error(sig, 8, VLM_ERR_FORMAT, "PNG");
    uint8_t sig_junk[600];
    memcpy(sig_junk, sig, 8);
    for (size_t i = 8; i < sizeof sig_junk; i++) sig_junk[i] = rnd8();
    expect_memory_error(sig_junk, sizeof sig_junk, VLM_ERR_FORMAT, "PNG");
    uint8_t jpeg_junk[600] = {0xFF, 0xD8, 0xFF};
    for (size_t i = 3; i < sizeof jpeg_junk; i++) jpeg_junk[i] = rnd8();
    expect_memory_error(jpeg_junk, sizeof jpeg_junk, VLM_ERR_FORMAT, "JPEG");
    expect_memory_error(jpeg_junk, 3, VLM_ERR_FORMAT, "JPEG");
    /* a directory is not a file */
    expect_load_error(test_tmpdir(), VLM_ERR_IO, NULL);
}

TEST(image_decode_rejects_other_formats) {
    uint8_t gif[64] = "GIF89a\x01\x00\x01\x00\x80\x00\x00";
    expect_memory_error(gif, sizeof gif, VLM_ERR_UNSUPPORTED, "not a PNG or JPEG image (looks like GIF");
    uint8_t bmp[64] = "BM";
    expect_memory_error(bmp, sizeof bmp, VLM_ERR_UNSUPPORTED, "BMP");
    uint8_t webp[64] = "RIFF\x10\x00\x00\x00WEBPVP8 ";
    expect_memory_error(webp, sizeof webp, VLM_ERR_UNSUPPORTED, "WebP");
    /* a real BMP from stb_image_write, whole */
    uint8_t px[4 * 4 * 3] = {0};
    const char *path = test_tmp_path("real.bmp");
    CHECK(stbi_write_bmp(path, 4, 4, 3, px));
    expect_load_error(path, VLM_ERR_UNSUPPORTED, "BMP");
}

TEST(image_decode_rejects_truncated) {
    enum { W = 40, H = 30 };
    uint8_t src[H * W * 3];
    for (size_t i = 0; i < sizeof src; i++) src[i] = rnd8();
    int len;
    uint8_t *png = stbi_write_png_to_mem(src, W * 3, W, H, 3, &len);
    /* every cut point inside the file must fail cleanly (ASan checks there is no over-read) */
    int n_ok = 0;
    for (int cut = 0; cut < len; cut += (cut < 64 ? 1 : 97)) {
        struct vlm_image img = {0};
        char msg[1024];
        test_capture_begin();
        enum vlm_status st = img_decode_memory(png, (size_t)cut, "cut.png", &img);
        test_capture_end(msg, sizeof msg);
        n_ok += st == VLM_OK;
        if (st == VLM_OK) img_free(&img);
        else if (!CHECK(st == VLM_ERR_FORMAT && strstr(msg, "cut.png"))) fprintf(stderr, "  cut %d: %s", cut, msg);
    }
    CHECK_EQ(n_ok, 0);
    expect_memory_error(png, (size_t)len / 2, VLM_ERR_FORMAT, "PNG");
    free(png);

    char *jpg;
    size_t jlen;
    if (CHECK_EQ(vlm_file_read_all(test_path("tests/data/images/photo_60x45.jpg"), 1 << 20, &jpg, &jlen), VLM_OK)) {
        struct vlm_image img;
        if (CHECK_EQ(img_decode_memory((uint8_t *)jpg, jlen, "photo.jpg", &img), VLM_OK)) img_free(&img);
        /* stb alone would decode a cut JPEG with a grey bottom; we want PIL's "truncated" error */
        expect_memory_error((uint8_t *)jpg, jlen - 2, VLM_ERR_FORMAT, "truncated JPEG");
        expect_memory_error((uint8_t *)jpg, jlen * 2 / 3, VLM_ERR_FORMAT, "JPEG");
        expect_memory_error((uint8_t *)jpg, 20, VLM_ERR_FORMAT, "JPEG");
        for (size_t cut = 0; cut < jlen; cut += 7) { /* no cut point may crash or over-read */
            char msg[1024];
            test_capture_begin();
            enum vlm_status st = img_decode_memory((uint8_t *)jpg, cut, "cut.jpg", &img);
            test_capture_end(msg, sizeof msg);
            if (st == VLM_OK) img_free(&img);
            CHECK(st == VLM_ERR_FORMAT);
        }
        free(jpg);
    }
}

/* A progressive JPEG with restart markers: ten scans, Huffman tables between them and RSTn in the entropy-coded data
 * are what the pre-decode marker walk (vision/image_check.c) must step over. The file holds the baseline fixture's
 * quantized coefficients reordered (tools/make_fixtures.py; PIL decodes both to identical pixels), so the decode
 * must equal the baseline file's exactly; and since stb fills a progressive file's missing scans with zeros, no
 * cut of it may decode. */
TEST(image_decode_progressive_jpeg_equals_baseline) {
    struct vlm_image base, prog;
    if (!CHECK_EQ(img_load(test_path("tests/data/images/photo_60x45.jpg"), &base), VLM_OK)) return;
    if (CHECK_EQ(img_load(test_path("tests/data/images/photo_60x45_progressive.jpg"), &prog), VLM_OK)) {
        if (CHECK_EQ(prog.width, base.width) && CHECK_EQ(prog.height, base.height)) {
            size_t n = (size_t)base.width * (size_t)base.height * 3, n_diff = 0;
            for (size_t i = 0; i < n; i++) n_diff += prog.rgb[i] != base.rgb[i];
            CHECK_EQ(n_diff, 0);
        }
        img_free(&prog);
    }
    img_free(&base);

    char *jpg;
    size_t jlen;
    if (CHECK_EQ(vlm_file_read_all(test_path("tests/data/images/photo_60x45_progressive.jpg"), 1 << 20, &jpg, &jlen),
                 VLM_OK)) {
        expect_memory_error((uint8_t *)jpg, jlen - 2, VLM_ERR_FORMAT, "truncated JPEG: no end-of-image marker");
        for (size_t cut = 0; cut < jlen; cut += 5) {
            struct vlm_image img;
            char msg[1024];
            test_capture_begin();
            enum vlm_status st = img_decode_memory((uint8_t *)jpg, cut, "cut.jpg", &img);
            test_capture_end(msg, sizeof msg);
            if (st == VLM_OK) img_free(&img);
            if (!CHECK(st == VLM_ERR_FORMAT && strstr(msg, "cut.jpg:") && strstr(msg, "JPEG")))
                fprintf(stderr, "  cut %zu: %s", cut, msg);
        }
        free(jpg);
    }
}

/* Decompression bombs: the header is checked before any pixel is decoded. */
TEST(image_decode_rejects_huge_headers) {
    struct bytes png = make_png(100000, 100000, 8, 2, NULL, 0, NULL, 0, NULL, 0);
    expect_memory_error(png.p, png.n, VLM_ERR_FORMAT,
                        "image header claims 100000 x 100000 pixels, more than the 36000000 allowed");
    free(png.p);
    png = make_png(0xFFFFFFFFu, 0xFFFFFFFFu, 8, 6, NULL, 0, NULL, 0, NULL, 0); /* product overflows int64 */
    expect_memory_error(png.p, png.n, VLM_ERR_FORMAT, "more than the 36000000 allowed");
    free(png.p);
    png = make_png(20000, 10, 8, 2, NULL, 0, NULL, 0, NULL, 0); /* few pixels, one side too long */
    expect_memory_error(png.p, png.n, VLM_ERR_FORMAT, "a side longer than the 16384 allowed");
    free(png.p);
    png = make_png(0, 10, 8, 2, NULL, 0, NULL, 0, NULL, 0);
    expect_memory_error(png.p, png.n, VLM_ERR_FORMAT, "0 x 10");
    free(png.p);
    /* within budget but nothing behind the header */
    png = make_png(6000, 6000, 8, 2, NULL, 0, NULL, 0, NULL, 0);
    expect_memory_error(png.p, png.n, VLM_ERR_FORMAT, "PNG");
    free(png.p);

    /* a JPEG whose frame header claims 60000 x 60000 (the fixture photo, edited) */
    char *jpg;
    size_t jlen;
    if (CHECK_EQ(vlm_file_read_all(test_path("tests/data/images/photo_60x45.jpg"), 1 << 20, &jpg, &jlen), VLM_OK)) {
        uint8_t *b = (uint8_t *)jpg;
        size_t sof = 0;
        for (size_t i = 2; i + 9 < jlen; i++)
            if (b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2)) {
                sof = i;
                break;
            }
        if (CHECK(sof > 0)) {
            b[sof + 5] = 0xEA, b[sof + 6] = 0x60; /* height 60000 */
            b[sof + 7] = 0xEA, b[sof + 8] = 0x60; /* width 60000 */
            expect_memory_error(b, jlen, VLM_ERR_FORMAT, "image header claims 60000 x 60000 pixels");
        }
        free(jpg);
    }
}

TEST(image_decode_rejects_oversized_file) {
    const char *path = test_tmp_path("huge.png");
    FILE *f = fopen(path, "wb");
    if (!CHECK(f != NULL)) return;
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    fwrite(sig, 1, 8, f);
    fclose(f);
    CHECK(truncate(path, IMG_MAX_FILE_BYTES + 1) == 0); /* sparse: costs no disk */
    expect_load_error(path, VLM_ERR_FORMAT, "allowed");
}

TEST(image_decode_bad_arguments) {
    struct vlm_image img = {0};
        char msg[1024];
    uint8_t b[8] = {0};
    test_capture_begin();
    enum vlm_status st1 = img_decode_memory(NULL, 10, "x", &img);
    enum vlm_status st2 = img_decode_memory(b, sizeof b, NULL, NULL);
    test_capture_end(msg, sizeof msg);
    CHECK_EQ(st1, VLM_ERR_ARG);
    CHECK_EQ(st2, VLM_ERR_ARG);
    CHECK(img.rgb == NULL);
}

/* A Huffman table that declares more than 256 codes makes the stb_image we link write past its tables; the
 * decoder must refuse it first (vision/image_check.c). Crafted here from a valid flat JPEG, and the fuzzer's
 * regression file. */
TEST(image_decode_rejects_oversized_huffman_table) {
    const int grey[1] = {90};
    struct bytes ok = make_flat_jpeg(8, 8, 1, grey);
    struct vlm_image img;
    if (decode_ok(ok.p, ok.n, &img)) img_free(&img);
    /* insert, right after SOI, an AC table with 16 codes of each length 1..16 = 256 + 16 = 272 codes */
    struct bytes bad = {0};
    put(&bad, ok.p, 2);
    const size_t n_codes = 272;
    uint8_t hdr[5 + 16] = {0xFF, 0xC4, (uint8_t)((3 + 16 + n_codes) >> 8), (uint8_t)(3 + 16 + n_codes), 0x11};
    for (int i = 0; i < 16; i++) hdr[5 + i] = 17;
    put(&bad, hdr, sizeof hdr);
    uint8_t vals[272];
    for (size_t i = 0; i < n_codes; i++) vals[i] = (uint8_t)i;
    put(&bad, vals, n_codes);
    put(&bad, ok.p + 2, ok.n - 2);
    expect_memory_error(bad.p, bad.n, VLM_ERR_FORMAT, "Huffman table declares 272 codes");
    free(bad.p);
    free(ok.p);
    expect_load_error(test_path("tests/data/bad/jpeg_dht_overflow.jpg"), VLM_ERR_FORMAT, "Huffman");
    /* fuzzer find: an oversized table in a DHT segment cut off by the end of the file */
    expect_load_error(test_path("tests/data/bad/jpeg_dht_truncated.jpg"), VLM_ERR_FORMAT, "past the end");
    /* fuzzer find: a scan using a Huffman table no DHT defined (stb reads uninitialised memory) */
    expect_load_error(test_path("tests/data/bad/jpeg_undefined_huffman.jpg"), VLM_ERR_FORMAT, "never defined");
    /* fuzzer find: an empty first IDAT chunk (stb adds 0 to a NULL buffer) */
    expect_load_error(test_path("tests/data/bad/png_empty_idat.png"), VLM_ERR_FORMAT, "empty IDAT");
    /* fuzzer find: the same in a file cut off 3 bytes after it, before the chunk's CRC (the framing check had
     * stopped at the last complete chunk, so stb saw the empty IDAT) */
    expect_load_error(test_path("tests/data/bad/png_empty_idat_cut.png"), VLM_ERR_FORMAT,
                      "empty IDAT chunk at byte 33");
    /* fuzzer find: a progressive JPEG whose scan data holds a code its Huffman table lacks: stb fails it (with the
     * shift the Makefile's note explains, undefined but harmless, its sanitizer check off in that one file) */
    expect_load_error(test_path("tests/data/bad/jpeg_prog_missing_code.jpg"), VLM_ERR_FORMAT, "corrupt JPEG data");
    /* fuzzer find: a 1.4 KB PNG whose IDAT declares ~1 GB (stb reallocated 2 GiB before noticing the end) */
    expect_load_error(test_path("tests/data/bad/png_idat_huge.png"), VLM_ERR_FORMAT, "past the end of the file");
    /* the same with control bytes in that chunk's type: the message names it and stays one line */
    size_t n = 0;
    uint8_t *b = (uint8_t *)test_read_file(test_path("tests/data/bad/png_idat_huge.png"), &n);
    if (CHECK(b != NULL && n > 1098 && memcmp(b + 1094, "IDAT", 4) == 0)) {
        memcpy(b + 1094, "\nAT\x01", 4);
        expect_memory_error(b, n, VLM_ERR_FORMAT, "chunk ?AT? at byte 1090 declares");
    }
    free(b);
}
