/* tokenizer.c — the tokenizer.h interface: loading (tokenizer.json -> bpe.c, tokenizer.model -> spm.c), the
 * getters, and decoding, which is shared by both families: each implementation hands over the raw bytes of a
 * token, and this file joins them and repairs invalid UTF-8 with the "maximal subpart" rule (one U+FFFD per
 * maximal invalid subsequence, as Python's errors="replace" and Rust's from_utf8_lossy do). Streaming decode
 * yields exactly the bytes of the full decode, released as soon as they can no longer change. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/util.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/unicode.h"

/* ---------------------------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* True when the file's first non-blank byte is '{' (a tokenizer.json under another name). */
static bool looks_like_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    int c;
    do c = fgetc(f);
    while (c == ' ' || c == '\t' || c == '\n' || c == '\r');
    fclose(f);
    return c == '{';
}

enum vlm_status tok_load_file(const char *path, struct vlm_tokenizer **out) {
    if (!path || !out) {
        vlm_log_error("tok_load_file: NULL argument");
        return VLM_ERR_ARG;
    }
    struct vlm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        vlm_log_error("%s: out of memory", path);
        return VLM_ERR_OOM;
    }
    enum vlm_status st;
    if (ends_with(path, ".json") || looks_like_json(path)) {
        t->kind = TOK_KIND_BPE;
        st = bpe_load(path, &t->bpe, &t->special, &t->vocab_size);
    } else {
        t->kind = TOK_KIND_SPM;
        st = spm_load(path, &t->spm, &t->special, &t->vocab_size);
    }
    if (st != VLM_OK) {
        free(t);
        return st;
    }
    *out = t;
    return VLM_OK;
}

enum vlm_status tok_load_mem(enum tok_kind kind, const char *name, const void *data, size_t len,
                             struct vlm_tokenizer **out) {
    if (!name || (!data && len) || !out || (kind != TOK_KIND_BPE && kind != TOK_KIND_SPM)) {
        vlm_log_error("tok_load_mem: bad argument");
        return VLM_ERR_ARG;
    }
    struct vlm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        vlm_log_error("%s: out of memory", name);
        return VLM_ERR_OOM;
    }
    t->kind = kind;
    enum vlm_status st = kind == TOK_KIND_BPE ? bpe_load_mem(name, data, len, &t->bpe, &t->special, &t->vocab_size)
                                              : spm_load_mem(name, data, len, &t->spm, &t->special, &t->vocab_size);
    if (st != VLM_OK) {
        free(t);
        return st;
    }
    *out = t;
    return VLM_OK;
}

enum vlm_status tok_load(const char *dir, struct vlm_tokenizer **out) {
    if (!dir || !out) {
        vlm_log_error("tok_load: NULL argument");
        return VLM_ERR_ARG;
    }
    static const char *const names[] = {"tokenizer.json", "tokenizer.model"};
    char path[4096];
    struct stat sb;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (!vlm_path_join(path, sizeof path, dir, names[k])) {
            vlm_log_error("%s: directory path too long", dir);
            return VLM_ERR_ARG;
        }
        if (stat(path, &sb) == 0) return tok_load_file(path, out);
    }
    vlm_log_error("%s: no tokenizer.json or tokenizer.model", dir);
    return VLM_ERR_IO;
}

void tok_free(struct vlm_tokenizer *t) {
    if (!t) return;
    if (t->kind == TOK_KIND_BPE) bpe_free(t->bpe);
    else spm_free(t->spm);
    free(t);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Getters and encode
 * ------------------------------------------------------------------------------------------------------------- */

enum tok_kind tok_get_kind(const struct vlm_tokenizer *t) { return t->kind; }
int64_t tok_vocab_size(const struct vlm_tokenizer *t) { return t->vocab_size; }
const struct tok_special *tok_special_ids(const struct vlm_tokenizer *t) { return &t->special; }

int64_t tok_token_to_id(const struct vlm_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    return t->kind == TOK_KIND_BPE ? bpe_token_to_id(t->bpe, token) : spm_token_to_id(t->spm, token);
}

enum vlm_status tok_encode(const struct vlm_tokenizer *t, const char *text, size_t len, bool parse_special,
                           int64_t **ids, size_t *n_ids) {
    if (!t || (!text && len) || !ids || !n_ids) {
        vlm_log_error("tok_encode: NULL argument");
        return VLM_ERR_ARG;
    }
    if (len > TOK_MAX_TEXT_BYTES) {
        vlm_log_error("tok_encode: text of %zu bytes exceeds the %llu-byte limit", len,
                      (unsigned long long)TOK_MAX_TEXT_BYTES);
        return VLM_ERR_ARG;
    }
    if (!text) text = "";
    return t->kind == TOK_KIND_BPE ? bpe_encode(t->bpe, text, len, parse_special, ids, n_ids)
                                   : spm_encode(t->spm, text, len, parse_special, ids, n_ids);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Decode
 * ------------------------------------------------------------------------------------------------------------- */

/* Raw bytes of id; NULL (after logging) for an id outside the vocabulary. */
static const unsigned char *token_bytes(const struct vlm_tokenizer *t, int64_t id, size_t *len, bool *is_special) {
    const unsigned char *b = NULL;
    if (id >= 0 && id < t->vocab_size)
        b = t->kind == TOK_KIND_BPE ? bpe_token_bytes(t->bpe, id, len, is_special)
                                    : spm_token_bytes(t->spm, id, len, is_special);
    if (!b)
        vlm_log_error("decode: token id %lld is outside the vocabulary (0 .. %lld)", (long long)id,
                      (long long)t->vocab_size - 1);
    return b;
}

/* SentencePiece decoding drops the space that starts the text (the dummy-prefix "▁" of the first piece; HF's
 * Strip decoder on the fused string): one byte, once, even when the first piece is only that space. Byte-level BPE
 * keeps everything. */
static inline bool strip_leading_space(const struct vlm_tokenizer *t, bool started) {
    return t->kind == TOK_KIND_SPM && !started;
}

enum vlm_status tok_decode(const struct vlm_tokenizer *t, const int64_t *ids, size_t n, bool skip_special, char **out,
                           size_t *out_len) {
    if (!t || (!ids && n) || !out || !out_len) {
        vlm_log_error("tok_decode: NULL argument");
        return VLM_ERR_ARG;
    }
    /* pass 1: validate ids and size the raw byte string */
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        bool sp;
        if (!token_bytes(t, ids[i], &len, &sp)) return VLM_ERR_ARG;
        if (skip_special && sp) continue;
        if (!vlm_size_add(raw_len, len, &raw_len)) {
            vlm_log_error("tok_decode: output too large");
            return VLM_ERR_ARG;
        }
    }
    unsigned char *raw = malloc(raw_len ? raw_len : 1);
    if (!raw) {
        vlm_log_error("tok_decode: out of memory for %zu bytes", raw_len);
        return VLM_ERR_OOM;
    }
    size_t k = 0;
    bool started = false;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        bool sp;
        const unsigned char *b = token_bytes(t, ids[i], &len, &sp);
        if (skip_special && sp) continue;
        if (len && strip_leading_space(t, started)) {
            started = true; /* only the first byte of the whole text is dropped, once */
            if (b[0] == ' ') {
                b++;
                len--;
            }
        }
        memcpy(raw + k, b, len);
        k += len;
    }
    /* pass 2: repair invalid UTF-8 (at most 3 output bytes per input byte) */
    size_t fixed_len = uni_utf8_repaired_len(raw, k, NULL);
    char *text = malloc(fixed_len + 1);
    if (!text) {
        free(raw);
        vlm_log_error("tok_decode: out of memory for %zu bytes", fixed_len);
        return VLM_ERR_OOM;
    }
    uni_utf8_repair(raw, k, (unsigned char *)text);
    text[fixed_len] = '\0';
    free(raw);
    *out = text;
    *out_len = fixed_len;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Streaming decode. Invariant: s->pending holds a proper prefix of one valid UTF-8 sequence (at most 3 bytes);
 * everything before it has been emitted. Appending bytes either completes it, proves it invalid (then it is one
 * maximal subpart: U+FFFD), or extends it. This gives the same bytes as decoding the whole sequence at once.
 * ------------------------------------------------------------------------------------------------------------- */

void tok_stream_init(struct tok_stream *s, const struct vlm_tokenizer *t, bool skip_special) {
    memset(s, 0, sizeof *s);
    s->t = t;
    s->skip_special = skip_special;
}

/* Scans b[0..n) for what can be released: returns the output size of b[0..*done) (valid characters copied,
 * each maximal invalid subpart as U+FFFD); b[*done..n) is a truncated valid prefix (at most 3 bytes). */
static size_t stream_measure(const unsigned char *b, size_t n, size_t *done) {
    size_t i = 0, out = 0;
    while (i < n) {
        uint32_t cp;
        size_t len;
        enum uni_scan k = uni_utf8_scan(b + i, n - i, &cp, &len);
        if (k == UNI_SCAN_TRUNCATED) break;
        out += k == UNI_SCAN_OK ? len : 3;
        i += len;
    }
    *done = i;
    return out;
}

/* Emits the complete part of pending + b[0..n) into out and keeps an incomplete tail in pending. Returns the byte
 * count, or -1 (after logging; nothing consumed) when out (cap bytes) is too small. Allocates nothing. */
static int64_t stream_feed(struct tok_stream *s, const unsigned char *b, size_t n, char *out, size_t cap) {
    /* the held prefix first: with the next few bytes it either completes, proves invalid, or stays incomplete */
    unsigned char head[8];
    size_t n_head = 0, head_out = 0, head_used = 0; /* bytes of b the head takes */
    bool head_held = false;
    if (s->n_pending) {
        size_t m = n < 4 - s->n_pending ? n : 4 - s->n_pending;
        memcpy(head, s->pending, s->n_pending);
        memcpy(head + s->n_pending, b, m);
        n_head = s->n_pending + m;
        uint32_t cp;
        size_t len;
        enum uni_scan k = uni_utf8_scan(head, n_head, &cp, &len);
        if (k == UNI_SCAN_TRUNCATED) { /* only when b ran out: everything stays held */
            head_held = true;
            head_used = m;
        } else {
            head_out = k == UNI_SCAN_OK ? len : 3;
            head_used = len - s->n_pending; /* the pending bytes are a valid prefix: len >= n_pending */
        }
    }
    size_t done = 0, need = head_out;
    if (!head_held) need += stream_measure(b + head_used, n - head_used, &done);
    if (need > cap) {
        vlm_log_error("decode: stream output buffer of %zu bytes is too small (%zu needed)", cap, need);
        return -1;
    }
    if (head_held) {
        memcpy(s->pending + s->n_pending, b, head_used);
        s->n_pending += head_used;
        return 0;
    }
    if (head_out) uni_utf8_repair(head, head_used + s->n_pending, (unsigned char *)out);
    uni_utf8_repair(b + head_used, done, (unsigned char *)out + head_out);
    size_t rest = n - head_used - done;
    VLM_ASSERT(rest < sizeof s->pending);
    memcpy(s->pending, b + head_used + done, rest);
    s->n_pending = rest;
    return (int64_t)need;
}

int64_t tok_stream_push(struct tok_stream *s, int64_t id, char *out, size_t cap) {
    size_t len;
    bool sp;
    const unsigned char *b = token_bytes(s->t, id, &len, &sp);
    if (!b) return -1;
    if (s->skip_special && sp) return 0;
    bool first = len && strip_leading_space(s->t, s->started);
    if (first && b[0] == ' ') {
        b++;
        len--;
    }
    int64_t r = stream_feed(s, b, len, out, cap);
    if (r >= 0 && first) s->started = true;
    return r;
}

int64_t tok_stream_flush(struct tok_stream *s, char *out, size_t cap) {
    if (s->n_pending == 0) return 0;
    /* a truncated but valid prefix is one maximal subpart: one U+FFFD */
    if (cap < 3) {
        vlm_log_error("decode: stream output buffer of %zu bytes is too small (3 needed)", cap);
        return -1;
    }
    size_t k = uni_utf8_put(UNI_REPLACEMENT, (unsigned char *)out);
    s->n_pending = 0;
    return (int64_t)k;
}
