/* unicode.h — the Unicode pieces the tokenizers need, matched to what Hugging Face `tokenizers` does:
 *   - UTF-8 scanning with the "maximal subpart" replacement rule (Python bytes.decode(errors="replace"),
 *     Rust String::from_utf8_lossy): every maximal invalid subsequence becomes one U+FFFD;
 *   - the character classes of the Qwen2 pre-tokenizer regex (\p{L}, \p{N}, \s = White_Space);
 *   - NFC as HF's normaliser computes it.
 * Categories and normalisation come from utf8proc; the small tables in unicode.c cover where utf8proc's Unicode
 * version (15.0) and HF's differ (see the comments there). */
#ifndef VLM_TOK_UNICODE_H
#define VLM_TOK_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm.h"

#define UNI_REPLACEMENT 0xFFFDu

/* Result of looking at the bytes at the start of a buffer. */
enum uni_scan {
    UNI_SCAN_OK,        /* a valid scalar value; *cp set */
    UNI_SCAN_INVALID,   /* a maximal invalid subpart (replace by one U+FFFD); *cp = U+FFFD */
    UNI_SCAN_TRUNCATED, /* the buffer ends inside a sequence that could still become valid */
};
/* Scans one character from s[0..n) (n >= 1). Returns the kind and sets *len to the bytes it covers (for
 * TRUNCATED: all n bytes, which are a valid prefix of a longer sequence). */
enum uni_scan uni_utf8_scan(const unsigned char *s, size_t n, uint32_t *cp, size_t *len);

/* Writes cp (a scalar value) as UTF-8 into out (4 bytes room); returns the length. */
size_t uni_utf8_put(uint32_t cp, unsigned char *out);

/* Number of bytes s[0..n) takes once each maximal invalid subpart (and a truncated tail) is replaced by
 * U+FFFD; *valid (may be NULL) tells whether there was nothing to replace (the length alone cannot: three
 * invalid bytes take as much room as one U+FFFD). */
size_t uni_utf8_repaired_len(const unsigned char *s, size_t n, bool *valid);
/* Writes the repaired text (uni_utf8_repaired_len bytes) to out. */
void uni_utf8_repair(const unsigned char *s, size_t n, unsigned char *out);

/* Pre-tokenizer classes (bit set). */
enum {
    UNI_L = 1,    /* \p{L}: Lu Ll Lt Lm Lo */
    UNI_N = 2,    /* \p{N}: Nd Nl No */
    UNI_WS = 4,   /* \s: the 25 White_Space code points */
    UNI_CRLF = 8, /* '\r' or '\n' (also UNI_WS) */
};
unsigned uni_class(uint32_t cp);

/* The Qwen2 pre-tokenizer (spec llava-onevision.md §8): end (exclusive) of the piece of the regex
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * that starts at s[i], for valid UTF-8 s[0..n) and i < n. Pieces tile the text: call again from the end. */
size_t uni_qwen2_piece_end(const unsigned char *s, size_t n, size_t i);

/* NFC of valid UTF-8 s[0..n) as HF tokenizers' NFC normaliser computes it. *out is malloc'd (caller frees),
 * *out_len its length. VLM_ERR_OOM after logging on allocation failure. */
enum vlm_status uni_nfc(const unsigned char *s, size_t n, unsigned char **out, size_t *out_len);
/* True when s[0..n) is certainly unchanged by NFC (a cheap test: every code point below U+0300). */
bool uni_nfc_quick_yes(const unsigned char *s, size_t n);
/* True for a class-0 code point that is the second half of a canonical decomposition (exposed for the test that
 * re-derives this table from utf8proc). */
bool uni_nfc_starter_second(uint32_t cp);

/* The Unicode version of the linked utf8proc ("15.0.0"); the compatibility tables in unicode.c were derived
 * against that version. */
const char *uni_utf8proc_version(void);

#endif
