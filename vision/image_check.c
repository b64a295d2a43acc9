/* image_check.c — one walk over a JPEG's markers (img_jpeg_walk) and one over a PNG's chunks (img_png_walk) before
 * stb_image sees the bytes: each returns the dimensions its header declares, for the pixel budget, and rejects what
 * our stb_image copy mishandles or would decode silently.
 *
 * Why: the stb_image shipped by Debian (libstb-dev) builds a Huffman table from 16 code-length counts without
 * checking that they sum to at most 256; a crafted DHT segment then writes past the 257-byte size list and the
 * 256-byte value table inside its decoder state (found by tests/fuzz/fuzz_image.c; regression file
 * tests/data/bad/jpeg_dht_overflow.jpg). We cannot patch the system header, so every DHT segment — including
 * those between the scans of a progressive JPEG — is checked here before stb sees the bytes.
 * The same copy also decodes a scan with a Huffman table that was never defined, reading its uninitialised heap
 * memory (found by the fuzzer as an assertion that fired only on some runs), so each scan's tables must have
 * been defined by an earlier DHT segment. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "image.h"
#include "runtime/util.h"

/* Checks one DHT segment payload p[0..n). */
/* defined[class][id]: set for every table a DHT segment defines (class 0 = DC, 1 = AC). */
static int dht_ok(const uint8_t *p, size_t n, char *why, size_t cap, unsigned char defined[2][4]) {
    size_t off = 0;
    while (off < n) {
        if (n - off < 17) {
            snprintf(why, cap, "corrupt JPEG: Huffman table segment cut short");
            return 0;
        }
        int tc = p[off] >> 4, th = p[off] & 15;
        if (tc > 1 || th > 3) {
            snprintf(why, cap, "corrupt JPEG: bad Huffman table class %d / id %d", tc, th);
            return 0;
        }
        defined[tc][th] = 1;
        size_t total = 0;
        for (int i = 1; i <= 16; i++) total += p[off + i];
        if (total > 256) {
            snprintf(why, cap, "corrupt JPEG: Huffman table declares %zu codes, more than 256", total);
            return 0;
        }
        off += 17;
        if (total > n - off) {
            snprintf(why, cap, "corrupt JPEG: Huffman table values run past their segment");
            return 0;
        }
        off += total;
    }
    return 1;
}

/* Checks that the scan header p[0..n) uses only defined tables: the DC table when the scan decodes DC
 * coefficients with Huffman codes (spectral start 0 and a first pass, or any baseline scan), the AC table when
 * it decodes AC coefficients (spectral start > 0, or any baseline scan). */
static int sos_ok(const uint8_t *p, size_t n, bool progressive, const unsigned char defined[2][4], char *why,
                  size_t cap) {
    if (n < 1 || n < 1 + 2 * (size_t)p[0] + 3) return 1; /* stb rejects a malformed scan header itself */
    const int ns = p[0], ss = p[1 + 2 * ns], ah = p[3 + 2 * ns] >> 4;
    const bool use_dc = !progressive || (ss == 0 && ah == 0), use_ac = !progressive || ss > 0;
    for (int c = 0; c < ns; c++) {
        const int td = p[2 + 2 * c] >> 4, ta = p[2 + 2 * c] & 15;
        if ((use_dc && (td > 3 || !defined[0][td])) || (use_ac && (ta > 3 || !defined[1][ta]))) {
            snprintf(why, cap, "corrupt JPEG: a scan uses Huffman table DC %d / AC %d that was never defined", td, ta);
            return 0;
        }
    }
    return 1;
}

/* The first frame header (SOF0..SOF15 other than DHT C4, JPG C8 and DAC CC) gives the dimensions. stb decodes a
 * truncated JPEG "successfully" (the missing part comes out grey) where PIL raises, so a missing end-of-image
 * marker is our truncation test. Between and after the scans, entropy-coded data is skipped byte by byte: there
 * 0xFF is always followed by 0x00 (a stuffed byte), a restart marker or a real marker, so the first FF D9 met is
 * the real EOI. */
int img_jpeg_walk(const uint8_t *buf, size_t len, int64_t *w, int64_t *h, char *why, size_t cap) {
    unsigned char defined[2][4] = {{0}};
    bool progressive = false, have_frame = false, have_scan = false;
    size_t i = 2; /* after SOI (checked by the caller) */
    while (i + 2 <= len) {
        if (buf[i] != 0xFF) { /* padding between segments, or entropy-coded data after a scan header */
            i++;
            continue;
        }
        uint8_t m = buf[i + 1];
        if (m == 0xFF) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { /* stuffed byte, TEM, RSTn, SOI: no length */
            i += 2;
            continue;
        }
        if (m == 0xD9) { /* EOI */
            if (!have_scan) break;
            return 1;
        }
        if (i + 4 > len) break;
        size_t seg = img_rd_be16(buf + i + 2);
        if (seg < 2 || seg > len - i - 2) {
            /* stb would read such a segment anyway, taking missing bytes as zeros; a valid file never has one */
            snprintf(why, cap, "corrupt or truncated JPEG: marker 0x%02X at byte %zu declares %zu bytes, past the "
                     "end of the file", m, i, seg);
            return 0;
        }
        const uint8_t *p = buf + i + 4;
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (!have_frame) {
                if (seg < 7) break;
                *h = img_rd_be16(p + 1);
                *w = img_rd_be16(p + 3);
                have_frame = true;
            }
            if (m == 0xC2 || m == 0xC6 || m == 0xCA || m == 0xCE) progressive = true; /* progressive SOFn */
        }
        if (m == 0xC4 && !dht_ok(p, seg - 2, why, cap, defined)) return 0;
        if (m == 0xDA) {
            if (!have_frame) break;
            if (!sos_ok(p, seg - 2, progressive, defined, why, cap)) return 0;
            have_scan = true;
        }
        i += 2 + seg;
    }
    snprintf(why, cap, have_scan ? "truncated JPEG: no end-of-image marker after the image data"
                                 : "corrupt or truncated JPEG: no frame header followed by image data");
    return 0;
}

/* The first chunk must be IHDR (length 13); width and height are its first two big-endian u32. The chunk framing is
 * then checked: the same Debian stb_image copies a zero-length first IDAT chunk from a NULL buffer (NULL + 0:
 * undefined behaviour that UBSan reports; found by tests/fuzz/fuzz_image.c, regression file
 * tests/data/bad/png_empty_idat.png). Such chunks carry nothing, so they are rejected before stb sees them. */
int img_png_walk(const uint8_t *buf, size_t len, int64_t *w, int64_t *h, char *why, size_t cap) {
    if (len < 8 + 8 + 13 || img_rd_be32(buf + 8) != 13 || memcmp(buf + 12, "IHDR", 4) != 0) {
        snprintf(why, cap, "corrupt PNG: no IHDR chunk at the start");
        return 0;
    }
    *w = img_rd_be32(buf + 16);
    *h = img_rd_be32(buf + 20);
    size_t i = 8; /* after the signature (checked by the caller) */
    while (len - i >= 8) { /* a length and a type: enough to judge a chunk even when its data or CRC is cut off */
        size_t n = img_rd_be32(buf + i);
        if (n == 0 && memcmp(buf + i + 4, "IDAT", 4) == 0) {
            snprintf(why, cap, "corrupt PNG: empty IDAT chunk at byte %zu", i);
            return 0;
        }
        if (memcmp(buf + i + 4, "IEND", 4) == 0) return 1;
        if (n + 12 > len - i) { /* n < 2^32: no overflow */
            /* stb grows its IDAT buffer to the declared length before it notices the file ends: a 1.4 KB file
             * declaring a 1 GB IDAT made it realloc 2 GiB (tests/fuzz/fuzz_image.c,
             * tests/data/bad/png_idat_huge.png) */
            char type[5], shown[5]; /* the chunk type is the file's bytes: control bytes must not break the line */
            memcpy(type, buf + i + 4, 4);
            type[4] = 0;
            snprintf(why, cap, "corrupt PNG: truncated: chunk %s at byte %zu declares %zu bytes, past the end of the "
                     "file", vlm_printable(type, shown, sizeof shown), i, n);
            return 0;
        }
        i += 12 + n;
    }
    return 1;
}
