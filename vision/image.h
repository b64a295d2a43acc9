/* image.h — image input for the vision path: decode (stb_image, PNG and JPEG only, size-capped from the header
 * before decoding), LlavaOnevisionImageProcessor preprocessing (anyres best canvas, Pillow-exact bicubic, black
 * padding, tiles, base view, rescale+normalize), the ONE image-token-count function, and feature packing
 * (unpad, anyres_max bilinear pooling, image_newline). Formulas: shared/spec/llava-onevision.md §5-§6. */
#ifndef VLM_IMAGE_H
#define VLM_IMAGE_H

#include <stdint.h>

#include "../runtime/config.h"
#include "vlm.h"

#define IMG_MAX_SIDE 16384           /* per side, checked from the header */
#define IMG_MAX_PIXELS 36000000ll    /* 36 MP decode budget (anyres never needs more than 2304^2 of canvas) */
#define IMG_MAX_FILE_BYTES (64ll << 20)

/* An 8-bit RGB image, rows top to bottom, pixels interleaved R,G,B. */
struct vlm_image {
    int64_t width, height;
    uint8_t *rgb;                    /* (height, width, 3), malloc'd */
};

/* Big-endian reads of PNG and JPEG header fields: the one pair both the size check and the chunk walkers use. */
static inline uint32_t img_rd_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline uint32_t img_rd_be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | (uint32_t)p[1]; }

/* Decodes a PNG or JPEG file. Alpha is composited over white; grey becomes R=G=B. Rejects other formats,
 * files over IMG_MAX_FILE_BYTES, sides over IMG_MAX_SIDE and more than IMG_MAX_PIXELS pixels before decoding.
 * One error line naming the file. */
enum vlm_status img_load(const char *path, struct vlm_image *out);
/* Same from memory; name is used in messages. */
enum vlm_status img_decode_memory(const uint8_t *buf, size_t len, const char *name, struct vlm_image *out);
void img_free(struct vlm_image *img); /* frees rgb, zeroes the struct; NULL ok */

/* vision/image_check.c: one walk over a JPEG's markers / a PNG's chunks in buf[0..len) (the caller has checked the
 * signature). 1 with *w, *h set from the first frame header / IHDR when the file is one our stb_image copy can
 * decode safely; else 0 with a one-line reason in why[0..cap), starting with "corrupt" or "truncated" and the
 * format. JPEG: every Huffman table holds at most 256 codes inside its segment, every scan uses defined tables, a
 * frame header precedes the first scan, an end-of-image marker follows it, no segment runs past the end. PNG:
 * IHDR first, no empty IDAT, no chunk declaring more bytes than the file holds. */
int img_jpeg_walk(const uint8_t *buf, size_t len, int64_t *w, int64_t *h, char *why, size_t cap);
int img_png_walk(const uint8_t *buf, size_t len, int64_t *w, int64_t *h, char *why, size_t cap);

/* PIL Image.resize(..., BICUBIC) on uint8 data with c interleaved channels, bit-exact.
 * src (sh, sw, c) -> dst (dh, dw, c). Returns VLM_ERR_OOM when scratch cannot be allocated. */
enum vlm_status img_resize_bicubic_u8(const uint8_t *src, int64_t sh, int64_t sw, int64_t c, uint8_t *dst,
                                      int64_t dh, int64_t dw);

/* select_best_resolution: the canvas (height, width) among pinpoints for an (h, w) image, HF tie rule. */
void img_select_best_resolution(int64_t h, int64_t w, const int64_t (*pinpoints)[2], int64_t n_pinpoints,
                                int64_t *best_h, int64_t *best_w);

/* Everything about one image's anyres layout, derived from its size and the config alone. */
struct img_layout {
    int64_t height, width;           /* original image */
    int64_t canvas_h, canvas_w;      /* best canvas */
    int64_t grid_h, grid_w;          /* tiles = canvas / crop size */
    int64_t resize_h, resize_w;      /* aspect-preserving resize target inside the canvas */
    int64_t pad_top, pad_left;
    int64_t n_crops;                 /* 1 + grid_h*grid_w */
    int64_t patches_side;            /* P: feature rows/cols per crop (vision n_patches_side) */
    int64_t unpad_h, unpad_w;        /* feature map after unpad (rows, cols) */
    int64_t unpad_top, unpad_left;   /* first kept row/col of the (P*grid_h, P*grid_w) map */
    int64_t pool_h, pool_w;          /* after anyres_max pooling (== unpad when not pooled) */
    int pooled;                      /* 1 when the bilinear down-sampling applies */
    int64_t n_image_tokens;          /* P^2 + pool_h * (pool_w + 1) */
};

/* THE image-token-count function: fills *out for an (h, w) image. Both the prompt builder and the feature
 * packer use it, so they cannot disagree. VLM_ERR_ARG for non-positive sizes. */
enum vlm_status img_compute_layout(const struct vlm_config *c, const struct vlm_preproc_config *pp, int64_t h,
                                   int64_t w, struct img_layout *out);
/* Convenience: the number of <image> tokens, or -1 on bad sizes. */
int64_t img_num_image_tokens(const struct vlm_config *c, const struct vlm_preproc_config *pp, int64_t h, int64_t w);

/* Preprocesses img into pixel values (n_crops, 3, size_h, size_w) float32, crop order [base, tiles row-major].
 * *out_pixels is malloc'd (caller frees). */
/* The float value of every uint8 level per channel as transformers computes it: float32(double(u) * rescale_factor),
 * then (x - mean) / std in float32 (each step only when the config enables it). img_preprocess uses it for every
 * crop; the converter's calibration view (one padded square) uses the same table. */
void img_level_table(const struct vlm_preproc_config *pp, float lut[3][256]);

enum vlm_status img_preprocess(const struct vlm_image *img, const struct vlm_config *c,
                               const struct vlm_preproc_config *pp, const struct img_layout *layout,
                               float **out_pixels);

/* Packs projector outputs feats (n_crops, P*P, d) into out (n_image_tokens, d): base rows, then the unpadded,
 * possibly pooled grid with image_newline after each row. */
enum vlm_status img_pack_features(const float *feats, const struct img_layout *layout, int64_t P, int64_t d,
                                  const float *image_newline, float *out);

#endif
