/* image_decode.c — PNG/JPEG decoding to 8-bit RGB (spec §5.2, targets §6.3).
 *
 * Promises:
 * - Only PNG and JPEG reach the decoder: the magic bytes are checked here first, and stb_image is compiled with
 *   STBI_ONLY_PNG + STBI_ONLY_JPEG, STB_IMAGE_STATIC (a private copy: nobody else can flip its globals) and no
 *   stdio (we read the file ourselves, capped at IMG_MAX_FILE_BYTES).
 * - One walk over the JPEG markers or PNG chunks comes first (vision/image_check.c): it reads the declared size
 *   and rejects what the stb_image we link mishandles (JPEG Huffman tables with more than 256 codes, undefined
 *   tables, a missing end-of-image marker; PNG chunks that are empty or run past the end of the file).
 * - The pixel budget is enforced from the header BEFORE any pixel is decoded: we read width and height from
 *   the PNG IHDR / JPEG SOF ourselves (so the message can quote them even above stb's own per-side limit), then
 *   stbi_info_from_memory must agree, then we decode.
 * - Colour conversion matches transformers' convert_to_rgb on a PIL image: images without alpha are used as
 *   decoded (grey -> R=G=B); images with alpha (grey+alpha, RGBA, palette or colour-key tRNS) are composited
 *   over opaque white exactly like PIL.Image.alpha_composite(white, im).convert("RGB"). Never flipped.
 * - Known deviations from PIL's decode: JPEG IDCT/upsampling differ by a few levels (spec §5.2); 16-bit PNGs
 *   keep the high byte of each sample (PIL does the same for RGB/RGBA, but clips 16-bit grey "I;16" to 255);
 *   EXIF orientation is not applied. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/util.h"
#include "vision/image.h"

/* ---------------------------------------------------------------------------------------------------------
 * stb_image, private copy */

#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_FAILURE_USERMSG
#define STBI_MAX_DIMENSIONS IMG_MAX_SIDE
/* zeroed, so a stb path that reads a table it never filled sees zeros, not heap leftovers (deterministic) */
#define STBI_MALLOC(sz) calloc(1, sz)
#define STBI_REALLOC(p, newsz) realloc(p, newsz)
#define STBI_FREE(p) free(p)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
/* static declarations stb never defines (GIF, unpremultiply) are reported at the end of the file, so this one
 * stays off for the whole file */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

/* stb keeps its last failure reason in a (thread-local) global and some failure paths do not set one, so a stale
 * reason from an earlier image could be reported; clear it before each call. */
static void stb_clear_reason(void) { stbi__g_failure_reason = NULL; }

/* ---------------------------------------------------------------------------------------------------------
 * Format sniffing and header dimensions */

enum img_kind { IMG_KIND_PNG, IMG_KIND_JPEG };

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};

/* Names a few formats we recognise but do not decode, for a better message; NULL when unknown. */
static const char *other_format_name(const uint8_t *b, size_t len) {
    if (len >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0)) return "GIF";
    if (len >= 2 && memcmp(b, "BM", 2) == 0) return "BMP";
    if (len >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0) return "WebP";
    if (len >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0)) return "TIFF";
    if (len >= 12 && memcmp(b + 4, "ftyp", 4) == 0) return "HEIF/AVIF";
    if (len >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7') return "PNM";
    if (len >= 4 && memcmp(b, "8BPS", 4) == 0) return "PSD";
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * Alpha compositing over white */

/* PIL.Image.alpha_composite(white, im) for one channel value v with alpha a, then convert("RGB").
 * PIL's AlphaComposite.c, with the destination alpha fixed at 255, reduces to coef1 = 128·a,
 * coef2 = 128·(255 − a) and out = SHIFTFORDIV255(128·(v·a + 255·(255 − a)) + (0x80 << 7)) >> 7, where
 * SHIFTFORDIV255(x) = ((x >> 8) + x) >> 8. For every (v, a) in 0..255² that equals
 * round((v·a + 255·(255 − a)) / 255) (255 is odd, so there are no ties): checked exhaustively against Pillow 13,
 * and test image_decode_alpha_all_pairs_match_pil checks all pairs against PIL's general formula.
 * a = 255 gives v; a = 0 gives 255. */
static inline uint8_t over_white(uint32_t v, uint32_t a) {
    return (uint8_t)((v * a + 255u * (255u - a) + 127u) / 255u);
}

/* ---------------------------------------------------------------------------------------------------------
 * Public entry points */

/* Contract in image.h. buf must hold len bytes; name only appears in messages. On failure *out is untouched. */
enum vlm_status img_decode_memory(const uint8_t *buf, size_t len, const char *name, struct vlm_image *out) {
    enum vlm_status st = VLM_ERR_FORMAT;
    uint8_t *px = NULL;
    if (!name) name = "<memory>";
    if (!buf || !out) {
        vlm_log_error("%s: img_decode_memory called without a buffer or an output", name);
        return VLM_ERR_ARG;
    }
    if ((long long)len > IMG_MAX_FILE_BYTES) {
        vlm_log_error("%s: image is %zu bytes, more than the %lld allowed", name, len, IMG_MAX_FILE_BYTES);
        return VLM_ERR_FORMAT;
    }

    enum img_kind kind;
    int64_t hw = 0, hh = 0;
    char bad[192]; /* the walkers' one-line reason */
    if (len >= 8 && memcmp(buf, png_signature, 8) == 0) {
        kind = IMG_KIND_PNG;
        if (!img_png_walk(buf, len, &hw, &hh, bad, sizeof bad)) {
            vlm_log_error("%s: %s", name, bad);
            goto fail;
        }
    } else if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) {
        kind = IMG_KIND_JPEG;
        if (!img_jpeg_walk(buf, len, &hw, &hh, bad, sizeof bad)) { /* Debian's stb overflows on bad tables */
            vlm_log_error("%s: %s", name, bad);
            goto fail;
        }
    } else {
        const char *other = other_format_name(buf, len);
        if (other) {
            vlm_log_error("%s: not a PNG or JPEG image (looks like %s, which is not supported)", name, other);
            st = VLM_ERR_UNSUPPORTED;
        } else {
            vlm_log_error("%s: not a PNG or JPEG image", name);
        }
        goto fail;
    }

    /* the budget, from the header alone */
    if (hw <= 0 || hh <= 0) {
        vlm_log_error("%s: image header claims %lld x %lld pixels", name, (long long)hw, (long long)hh);
        goto fail;
    }
    int64_t n_claimed;
    bool too_many = __builtin_mul_overflow(hw, hh, &n_claimed) || n_claimed > IMG_MAX_PIXELS;
    if (too_many || hw > IMG_MAX_SIDE || hh > IMG_MAX_SIDE) {
        if (too_many)
            vlm_log_error("%s: image header claims %lld x %lld pixels, more than the %lld allowed", name,
                          (long long)hw, (long long)hh, IMG_MAX_PIXELS);
        else
            vlm_log_error("%s: image header claims %lld x %lld pixels, a side longer than the %d allowed", name,
                          (long long)hw, (long long)hh, IMG_MAX_SIDE);
        goto fail;
    }

    /* stb's own header parse must agree before we let it decode */
    int iw, ih, icomp;
    stb_clear_reason();
    if (!stbi_info_from_memory(buf, (int)len, &iw, &ih, &icomp)) {
        const char *why = stbi_failure_reason();
        vlm_log_error("%s: corrupt %s header: %s", name, kind == IMG_KIND_PNG ? "PNG" : "JPEG",
                      why ? why : "rejected by the decoder");
        goto fail;
    }
    if (iw != hw || ih != hh) {
        vlm_log_error("%s: inconsistent %s header: %lld x %lld vs %d x %d", name, kind == IMG_KIND_PNG ? "PNG" : "JPEG",
                      (long long)hw, (long long)hh, iw, ih);
        goto fail;
    }

    /* JPEG has no alpha: ask for RGB. PNG: ask for RGBA, so every alpha source (alpha channel, palette tRNS,
     * colour-key tRNS) arrives the same way; an opaque pixel composites to itself. */
    int want = kind == IMG_KIND_JPEG ? 3 : 4;
    int dw, dh, dcomp;
    stb_clear_reason();
    px = stbi_load_from_memory(buf, (int)len, &dw, &dh, &dcomp, want);
    if (!px) {
        const char *why = stbi_failure_reason();
        if (why && kind == IMG_KIND_JPEG && strcmp(why, "Not a PNG") == 0) why = NULL; /* from stb's PNG probe */
        if (why && strcmp(why, "Out of memory") == 0) {
            vlm_log_error("%s: out of memory decoding %lld x %lld pixels", name, (long long)hw, (long long)hh);
            st = VLM_ERR_OOM;
        } else {
            vlm_log_error("%s: corrupt %s data: %s", name, kind == IMG_KIND_PNG ? "PNG" : "JPEG",
                          why ? why : "rejected by the decoder");
        }
        goto fail;
    }
    if (dw != hw || dh != hh) {
        vlm_log_error("%s: decoder returned %d x %d for a %lld x %lld header", name, dw, dh, (long long)hw,
                      (long long)hh);
        goto fail;
    }

    size_t n_px = (size_t)hw * (size_t)hh; /* <= IMG_MAX_PIXELS, checked above */
    if (want == 4) {
        /* in place, forward: pixel i's 3 output bytes end at 3i+2 < 4i+4, so nothing unread is overwritten */
        for (size_t i = 0; i < n_px; i++) {
            uint32_t r = px[4 * i], g = px[4 * i + 1], b = px[4 * i + 2], a = px[4 * i + 3];
            px[3 * i + 0] = over_white(r, a);
            px[3 * i + 1] = over_white(g, a);
            px[3 * i + 2] = over_white(b, a);
        }
        uint8_t *shrunk = realloc(px, n_px * 3);
        if (shrunk) px = shrunk; /* keeping the larger block is harmless */
    }

    out->width = hw;
    out->height = hh;
    out->rgb = px;
    return VLM_OK;
fail:
    free(px);
    return st;
}

/* Contract in image.h. Missing/unreadable files and non-regular files (directories, devices) are VLM_ERR_IO,
 * files over the byte cap VLM_ERR_FORMAT (reported by vlm_file_read_all with the path). */
enum vlm_status img_load(const char *path, struct vlm_image *out) {
    char *buf = NULL;
    size_t len = 0;
    struct stat sb;
    if (path && stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) { /* a directory "opens" but has no bytes */
        vlm_log_error("%s: not a regular file", path);
        return VLM_ERR_IO;
    }
    enum vlm_status st = vlm_file_read_all(path, (size_t)IMG_MAX_FILE_BYTES, &buf, &len);
    if (st != VLM_OK) return st;
    st = img_decode_memory((const uint8_t *)buf, len, path, out);
    free(buf);
    return st;
}

void img_free(struct vlm_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}
