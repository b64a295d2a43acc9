/* unicode.c — see unicode.h. UTF-8 scanning/repair, the Qwen2 pre-tokenizer classes and HF-compatible NFC.
 *
 * Reference behaviour: Hugging Face `tokenizers` 0.23 (Rust). Its Split pre-tokenizer runs the Qwen2 regex with
 * Oniguruma, whose Unicode tables are at version 16.0; its NFC normaliser (crate unicode-normalization-alignments)
 * uses much older tables (about Unicode 9.0). utf8proc 2.8, which we link, is at Unicode 15.0. The two tables
 * below close both gaps; they were derived by running HF's Split(Qwen2 regex) and NFC on every code point (and on
 * every combining mark next to reference marks, and every canonical pair) and comparing with utf8proc.
 * A test (tok_unicode_version) fails when the linked utf8proc changes version, so the tables get re-derived. */
#include "tokenizer/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * UTF-8
 * ------------------------------------------------------------------------------------------------------------- */

enum uni_scan uni_utf8_scan(const unsigned char *s, size_t n, uint32_t *cp, size_t *len) {
    unsigned b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        *len = 1;
        return UNI_SCAN_OK;
    }
    size_t need;                   /* continuation bytes */
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the first continuation byte */
    uint32_t v;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        v = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        v = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        v = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        *cp = UNI_REPLACEMENT;
        *len = 1;
        return UNI_SCAN_INVALID;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *cp = UNI_REPLACEMENT;
            *len = n;
            return UNI_SCAN_TRUNCATED;
        }
        unsigned b = s[k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            *cp = UNI_REPLACEMENT;
            *len = k; /* the maximal subpart ends before the first byte that cannot continue it */
            return UNI_SCAN_INVALID;
        }
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    *len = need + 1;
    return UNI_SCAN_OK;
}

size_t uni_utf8_put(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t uni_utf8_repaired_len(const unsigned char *s, size_t n, bool *valid) {
    size_t out = 0, i = 0;
    bool ok = true;
    while (i < n) {
        if (s[i] < 0x80) { /* ASCII runs dominate: skip them without the general scanner */
            i++;
            out++;
            continue;
        }
        uint32_t cp;
        size_t len;
        enum uni_scan k = uni_utf8_scan(s + i, n - i, &cp, &len);
        if (k != UNI_SCAN_OK) ok = false;
        out += k == UNI_SCAN_OK ? len : 3;
        i += len;
    }
    if (valid) *valid = ok;
    return out;
}

void uni_utf8_repair(const unsigned char *s, size_t n, unsigned char *out) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len;
        enum uni_scan k = uni_utf8_scan(s + i, n - i, &cp, &len);
        if (k == UNI_SCAN_OK) {
            memcpy(out, s + i, len);
            out += len;
        } else {
            out += uni_utf8_put(UNI_REPLACEMENT, out);
        }
        i += len;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Character classes
 * ------------------------------------------------------------------------------------------------------------- */

struct uni_range {
    uint32_t lo, hi;
};

/* Letters (L*) and numbers (N*) new in Unicode 16.0, which HF's regex (Oniguruma, Unicode 16) knows and
 * utf8proc 2.8 reports as unassigned. Used only where utf8proc says Cn, so a newer utf8proc takes over. */
static const struct uni_range k_u16_letters[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x11380, 0x11389}, {0x1138B, 0x1138B}, {0x1138E, 0x1138E},
    {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3}, {0x11BC0, 0x11BE0},
    {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF}, {0x1E5D0, 0x1E5ED},
    {0x1E5F0, 0x1E5F0}, {0x2EBF0, 0x2EE5D},
};
static const struct uni_range k_u16_numbers[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1E5F1, 0x1E5FA},
};

static bool in_ranges(uint32_t cp, const struct uni_range *r, size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

unsigned uni_class(uint32_t cp) {
    /* clang-format off */
    switch (cp) { /* White_Space (PropList.txt): what \s means in Oniguruma and the Rust regex crate */
    case '\n': case '\r': return UNI_WS | UNI_CRLF;
    case 0x09: case 0x0B: case 0x0C: case 0x20: case 0x85: case 0xA0: case 0x1680:
    case 0x2000: case 0x2001: case 0x2002: case 0x2003: case 0x2004: case 0x2005: case 0x2006:
    case 0x2007: case 0x2008: case 0x2009: case 0x200A: case 0x2028: case 0x2029: case 0x202F:
    case 0x205F: case 0x3000:
        return UNI_WS;
    default: break;
    }
    if (cp > 0x10FFFF) return 0;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    switch (c) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return UNI_L;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return UNI_N;
    case UTF8PROC_CATEGORY_CN:
        if (in_ranges(cp, k_u16_letters, sizeof k_u16_letters / sizeof k_u16_letters[0])) return UNI_L;
        if (in_ranges(cp, k_u16_numbers, sizeof k_u16_numbers / sizeof k_u16_numbers[0])) return UNI_N;
        return 0;
    default:
        return 0;
    }
    /* clang-format on */
}

/* ---------------------------------------------------------------------------------------------------------------
 * Pre-tokenizer: a hand-written matcher for the Qwen2 regex (unicode.h), alternatives tried in order at
 * each position, each with the backtracking outcome worked out:
 *   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)   contractions; case-insensitive, so ſ (U+017F, folds to s) counts as s
 *   2 [^\r\n\p{L}\p{N}]?\p{L}+       letters, with at most one leading non-letter/digit/CR/LF character
 *   3 \p{N}                          one digit
 *   4 ' '?[^\s\p{L}\p{N}]+[\r\n]*    punctuation run, optional leading space, trailing CR/LF
 *   5 \s*[\r\n]+                     whitespace up to and including its last CR/LF (backtracking of \s*)
 *   6 \s+(?!\S)                      whitespace run; before a non-space it gives back its last character
 *   7 \s+                            a single whitespace character before a non-space
 * Every character is matched by some alternative and no alternative matches empty, so the pieces tile the text.
 * ------------------------------------------------------------------------------------------------------------- */

/* Classes of ASCII characters (unicode.h bits). */
/* clang-format off */
static const uint8_t k_ascii_class[128] = {
    ['\t'] = UNI_WS, ['\n'] = UNI_WS | UNI_CRLF, ['\v'] = UNI_WS, ['\f'] = UNI_WS, ['\r'] = UNI_WS | UNI_CRLF,
    [' '] = UNI_WS,
    ['0'] = UNI_N, ['1'] = UNI_N, ['2'] = UNI_N, ['3'] = UNI_N, ['4'] = UNI_N,
    ['5'] = UNI_N, ['6'] = UNI_N, ['7'] = UNI_N, ['8'] = UNI_N, ['9'] = UNI_N,
    ['A'] = UNI_L, ['B'] = UNI_L, ['C'] = UNI_L, ['D'] = UNI_L, ['E'] = UNI_L, ['F'] = UNI_L, ['G'] = UNI_L,
    ['H'] = UNI_L, ['I'] = UNI_L, ['J'] = UNI_L, ['K'] = UNI_L, ['L'] = UNI_L, ['M'] = UNI_L, ['N'] = UNI_L,
    ['O'] = UNI_L, ['P'] = UNI_L, ['Q'] = UNI_L, ['R'] = UNI_L, ['S'] = UNI_L, ['T'] = UNI_L, ['U'] = UNI_L,
    ['V'] = UNI_L, ['W'] = UNI_L, ['X'] = UNI_L, ['Y'] = UNI_L, ['Z'] = UNI_L,
    ['a'] = UNI_L, ['b'] = UNI_L, ['c'] = UNI_L, ['d'] = UNI_L, ['e'] = UNI_L, ['f'] = UNI_L, ['g'] = UNI_L,
    ['h'] = UNI_L, ['i'] = UNI_L, ['j'] = UNI_L, ['k'] = UNI_L, ['l'] = UNI_L, ['m'] = UNI_L, ['n'] = UNI_L,
    ['o'] = UNI_L, ['p'] = UNI_L, ['q'] = UNI_L, ['r'] = UNI_L, ['s'] = UNI_L, ['t'] = UNI_L, ['u'] = UNI_L,
    ['v'] = UNI_L, ['w'] = UNI_L, ['x'] = UNI_L, ['y'] = UNI_L, ['z'] = UNI_L,
};
/* clang-format on */

/* Class of the character at s[i] (i < n; valid UTF-8) and its length. */
static inline unsigned char_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
    if (s[i] < 0x80) {
        *len = 1;
        return k_ascii_class[s[i]];
    }
    uint32_t cp;
    uni_utf8_scan(s + i, n - i, &cp, len);
    return uni_class(cp);
}

#define IS_P(c) (((c) & (UNI_WS | UNI_L | UNI_N)) == 0) /* [^\s\p{L}\p{N}] */

/* Length in bytes of "'s"-style contraction at s[i] (s[i] == '\''), or 0. */
static size_t contraction_at(const unsigned char *s, size_t n, size_t i) {
    if (i + 1 >= n) return 0;
    unsigned c = s[i + 1];
    if (c == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return 3; /* 'ſ */
    c |= 0x20; /* ASCII lower case: only 'S' and 's' give 's' etc., no other byte reaches the letters compared */
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
    if (i + 2 >= n) return 0;
    unsigned c2 = s[i + 2] | 0x20;
    if ((c == 'r' && c2 == 'e') || (c == 'v' && c2 == 'e') || (c == 'l' && c2 == 'l')) return 3;
    return 0;
}

size_t uni_qwen2_piece_end(const unsigned char *s, size_t n, size_t i) {
    size_t l0, l1;
    unsigned c0 = char_at(s, n, i, &l0);
    /* 1: contractions */
    if (s[i] == '\'') {
        size_t k = contraction_at(s, n, i);
        if (k) return i + k;
    }
    /* 2: optional non-letter/digit/CR/LF, then letters */
    size_t j = i;
    if (c0 & UNI_L) {
        j = i + l0;
    } else if (!(c0 & (UNI_L | UNI_N | UNI_CRLF)) && i + l0 < n && (char_at(s, n, i + l0, &l1) & UNI_L)) {
        j = i + l0 + l1;
    }
    if (j > i) {
        while (j < n && (char_at(s, n, j, &l1) & UNI_L)) j += l1;
        return j;
    }
    /* 3: one digit */
    if (c0 & UNI_N) return i + l0;
    /* 4: punctuation run with an optional leading space and trailing CR/LF */
    size_t k = i;
    if (IS_P(c0)) {
        k = i + l0;
    } else if (s[i] == ' ' && i + 1 < n && IS_P(char_at(s, n, i + 1, &l1))) {
        k = i + 1 + l1;
    }
    if (k > i) {
        while (k < n && IS_P(char_at(s, n, k, &l1))) k += l1;
        while (k < n && (s[k] == '\r' || s[k] == '\n')) k++;
        return k;
    }
    /* c0 is whitespace from here on */
    size_t last_crlf_end = 0, last_start = i;
    j = i;
    while (j < n) {
        unsigned c = char_at(s, n, j, &l1);
        if (!(c & UNI_WS)) break;
        last_start = j;
        j += l1;
        if (c & UNI_CRLF) last_crlf_end = j;
    }
    if (last_crlf_end) return last_crlf_end; /* 5 */
    if (j == n) return j;                    /* 6, at the end of the text */
    if (last_start > i) return last_start;   /* 6, giving back the last whitespace character */
    return j;                                /* 7 */
}

/* ---------------------------------------------------------------------------------------------------------------
 * NFC
 * ------------------------------------------------------------------------------------------------------------- */

/* Code points HF's NFC tables do not know, but utf8proc does as combining marks (non-zero canonical combining
 * class) or as the second half of a canonical composition (U+11930 in U+11935 U+11930 -> U+11938). To HF they are
 * unassigned: class 0, no composition, so they are never reordered and block composition across them. We keep that
 * by normalising the text between them separately and copying them unchanged. */
static const struct uni_range k_nfc_inert[] = {
    {0x07FD, 0x07FD},   {0x0898, 0x089F},   {0x08CA, 0x08D3},   {0x09FE, 0x09FE},   {0x0C3C, 0x0C3C},
    {0x0D3B, 0x0D3C},   {0x0EBA, 0x0EBA},   {0x1715, 0x1715},   {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11930, 0x11930}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
    {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97},
    {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

/* Starters (class 0) that are the second half of some canonical decomposition, so that NFC may compose them
 * with the character before them (Hangul vowels and trailing consonants, Indic length marks, ...). Every other
 * second half has a non-zero class. Derived from utf8proc's decompositions (all non-first characters of class 0
 * of every full canonical decomposition); the test tok_nfc_tables recomputes the list from the linked library. */
static const struct uni_range k_nfc_starter_seconds[] = {
    {0x09BE, 0x09BE},   {0x09D7, 0x09D7},   {0x0B3E, 0x0B3E},   {0x0B56, 0x0B57},   {0x0BBE, 0x0BBE},
    {0x0BD7, 0x0BD7},   {0x0CC2, 0x0CC2},   {0x0CD5, 0x0CD6},   {0x0D3E, 0x0D3E},   {0x0D57, 0x0D57},
    {0x0DCF, 0x0DCF},   {0x0DDF, 0x0DDF},   {0x0FB5, 0x0FB5},   {0x0FB7, 0x0FB7},   {0x102E, 0x102E},
    {0x1161, 0x1175},   {0x11A8, 0x11C2},   {0x1B35, 0x1B35},   {0x11127, 0x11127}, {0x1133E, 0x1133E},
    {0x11357, 0x11357}, {0x114B0, 0x114B0}, {0x114BA, 0x114BA}, {0x114BD, 0x114BD}, {0x115AF, 0x115AF},
    {0x11930, 0x11930},
};

bool uni_nfc_starter_second(uint32_t cp) {
    return in_ranges(cp, k_nfc_starter_seconds, sizeof k_nfc_starter_seconds / sizeof k_nfc_starter_seconds[0]);
}

bool uni_nfc_quick_yes(const unsigned char *s, size_t n) {
    /* Every code point below U+0300 is a starter that NFC leaves alone, and nothing below U+0300 composes with a
     * following character that is itself below U+0300. U+0300 is the first byte pair CC 80; lead bytes C0..CB
     * encode U+0000..U+02FF. */
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0xCC) return false;
    return true;
}

enum nfc_kind {
    NFC_QUICK, /* class 0, no decomposition, never a second half: NFC leaves it alone, and there is a normalisation
                * boundary before it (NFC(a + c + b) = NFC(a) + NFC(c + b)) */
    NFC_INERT, /* unknown to HF's tables (k_nfc_inert): copied, and a boundary on both sides */
    NFC_OTHER, /* anything else: normalised by utf8proc together with its neighbours up to the boundaries */
};

static enum nfc_kind nfc_kind(uint32_t cp) {
    if (cp < 0x300) return NFC_QUICK;
    if (cp >= 0x7FD && in_ranges(cp, k_nfc_inert, sizeof k_nfc_inert / sizeof k_nfc_inert[0])) return NFC_INERT;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class == 0 && p->decomp_seqindex == UINT16_MAX && !uni_nfc_starter_second(cp) &&
        !(cp >= 0xAC00 && cp <= 0xD7A3)) /* Hangul syllables decompose algorithmically */
        return NFC_QUICK;
    return NFC_OTHER;
}

/* Appends s[0..n) to *buf (capacity *cap, length *len), normalised by utf8proc when normalise is set. */
static enum vlm_status nfc_append(const unsigned char *s, size_t n, bool normalise, unsigned char **buf, size_t *len,
                                  size_t *cap) {
    const unsigned char *src = s;
    size_t src_n = n;
    utf8proc_uint8_t *mapped = NULL;
    if (normalise && n > 0) {
        if (n > (size_t)PTRDIFF_MAX / 8) { /* utf8proc counts in ssize_t code points */
            vlm_log_error("tokenizer: text of %zu bytes is too long to normalise", n);
            return VLM_ERR_ARG;
        }
        utf8proc_ssize_t r = utf8proc_map(s, (utf8proc_ssize_t)n, &mapped, UTF8PROC_COMPOSE | UTF8PROC_STABLE);
        if (r < 0) {
            /* input is valid UTF-8 by construction: only allocation can fail */
            vlm_log_error("tokenizer: NFC normalisation failed: %s", utf8proc_errmsg(r));
            return r == UTF8PROC_ERROR_NOMEM ? VLM_ERR_OOM : VLM_ERR_ARG;
        }
        src = mapped;
        src_n = (size_t)r;
    }
    if (*len + src_n > *cap) {
        size_t ncap = *cap ? *cap : 64;
        while (ncap < *len + src_n) ncap *= 2;
        unsigned char *nb = realloc(*buf, ncap);
        if (!nb) {
            free(mapped);
            vlm_log_error("tokenizer: out of memory normalising %zu bytes", n);
            return VLM_ERR_OOM;
        }
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, src, src_n);
    *len += src_n;
    free(mapped);
    return VLM_OK;
}

/* Copies the text as it is except the stretches that NFC could change: each such stretch runs from the last
 * boundary before a non-quick character (the quick starter it might compose with) to the next boundary, and only
 * it goes through utf8proc. ASCII is always quick, so in ordinary text the stretches are a few characters long. */
enum vlm_status uni_nfc(const unsigned char *s, size_t n, unsigned char **out, size_t *out_len) {
    size_t len = 0, cap = n + n / 8 + 16;
    unsigned char *buf = malloc(cap);
    if (!buf) {
        vlm_log_error("tokenizer: out of memory normalising %zu bytes", n);
        return VLM_ERR_OOM;
    }
    enum vlm_status st = VLM_OK;
    size_t seg = 0;        /* start of the bytes not yet written */
    size_t last_quick = 0; /* start of the last quick character at or after seg */
    bool have_quick = false;
    bool dirty = false; /* [seg, i) holds a character NFC may change: normalise it at the next boundary */
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = s[i] < 0x80 ? 1 : 2; /* below U+0300: ASCII, or a two-byte character with lead C2..CB */
        enum nfc_kind k = NFC_QUICK;
        if (s[i] >= 0xCC) { /* U+0300 and above */
            uni_utf8_scan(s + i, n - i, &cp, &l);
            k = nfc_kind(cp);
        }
        if (k == NFC_QUICK) {
            if (dirty) {
                if ((st = nfc_append(s + seg, i - seg, true, &buf, &len, &cap)) != VLM_OK) goto fail;
                seg = i;
                dirty = false;
            }
            last_quick = i;
            have_quick = true;
        } else if (k == NFC_INERT) {
            if ((st = nfc_append(s + seg, i - seg, dirty, &buf, &len, &cap)) != VLM_OK) goto fail;
            if ((st = nfc_append(s + i, l, false, &buf, &len, &cap)) != VLM_OK) goto fail;
            seg = i + l;
            dirty = have_quick = false;
        } else if (!dirty) {
            size_t start = have_quick ? last_quick : seg;
            if ((st = nfc_append(s + seg, start - seg, false, &buf, &len, &cap)) != VLM_OK) goto fail;
            seg = start;
            dirty = true;
        }
        i += l;
    }
    if ((st = nfc_append(s + seg, n - seg, dirty, &buf, &len, &cap)) != VLM_OK) goto fail;
    *out = buf;
    *out_len = len;
    return VLM_OK;
fail:
    free(buf);
    return st;
}

const char *uni_utf8proc_version(void) { return utf8proc_unicode_version(); }
