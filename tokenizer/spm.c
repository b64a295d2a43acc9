/* spm.c — the SentencePiece side of tok_internal.h (tokenizer.model files, LLaVA-1.5 / LLaMA family), over the C
 * wrapper spm_wrap.h. Encoding is the sentencepiece library's own (exact against the sentencepiece Python package);
 * this file adds what the runtime needs around it:
 *   - the bytes each piece decodes to, precomputed once at load ("▁" -> ' ', <0xNN> -> that byte, control pieces
 *     -> nothing, the unknown piece -> the model's unk surface, " ⁇ " by default);
 *   - parse_special. With parse_special = true the text goes to sentencepiece as it is, which matches user-defined
 *     symbols ("<image>") as single pieces and never matches control symbols ("<s>", "</s>" stay text): exactly the
 *     sentencepiece package's encode, the reference (HF's LLaMA tokenizers also split "<s>"/"</s>" written in the
 *     text; the chat templates never need that: they emit BOS/EOS ids themselves). With parse_special = false no
 *     special id can come out of the text: a user-defined symbol the text spells is encoded with ordinary pieces
 *     (see spell_plain), everything around it exactly as sentencepiece encodes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"
#include "tokenizer/spm_wrap.h"
#include "tokenizer/tok_internal.h"

#define SPM_MAX_MODEL_BYTES (256u << 20) /* LLaMA's tokenizer.model is 0.5 MB; this only bounds a bad path */

struct spm_model {
    struct spmw *w;
    char *path;              /* for messages */
    int64_t n_pieces;
    size_t *offsets;         /* (n_pieces + 1) start of each piece's decoded bytes in bytes */
    unsigned char *bytes;    /* decoded bytes of every piece, back to back */
    bool *special;           /* (n_pieces) control, unknown or user-defined */
};

/* ---------------------------------------------------------------------------------------------------------------
 * Load */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Value of a byte piece "<0xNN>", or -1. */
static int byte_piece_value(const char *p, size_t n) {
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return -1;
    int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Writes the decoded bytes of piece id to out (NULL: only count) and returns their length; *special is set. */
static size_t piece_bytes(const struct spmw *w, int64_t id, unsigned char *out, bool *special) {
    size_t n;
    const char *p = spmw_id_to_piece(w, id, &n);
    switch (spmw_type_of(w, id)) {
    case SPMW_CONTROL:
        *special = true;
        return 0;
    case SPMW_UNKNOWN:
        *special = true;
        p = spmw_unk_surface(w, &n);
        if (out) memcpy(out, p, n);
        return n;
    case SPMW_BYTE: {
        int v = byte_piece_value(p, n);
        *special = false;
        if (v < 0) break; /* not spelled <0xNN>: decode it as text */
        if (out) out[0] = (unsigned char)v;
        return 1;
    }
    case SPMW_USER_DEFINED: *special = true; break;
    default: *special = false; break;
    }
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(p + i, "\xe2\x96\x81", 3) == 0) { /* U+2581 LOWER ONE EIGHTH BLOCK */
            if (out) out[k] = ' ';
            k++, i += 3;
        } else {
            if (out) out[k] = (unsigned char)p[i];
            k++, i++;
        }
    }
    return k;
}

static int64_t id_or_none(const struct spmw *w, const char *piece) {
    return spmw_piece_to_id(w, piece, strlen(piece));
}

/* data == NULL: read the file at path; else load data[0..data_len) and use path as its name in messages. */
static enum vlm_status spm_load_impl(const char *path, const void *data, size_t data_len, struct spm_model **out,
                                     struct tok_special *special, int64_t *vocab_size) {
    char *buf = NULL, err[512] = "";
    size_t len = 0;
    struct spm_model *s = NULL;
    enum vlm_status st;
    if (data) {
        if (data_len > SPM_MAX_MODEL_BYTES) {
            vlm_log_error("%s: %zu bytes, more than the %zu-byte limit", path, data_len, (size_t)SPM_MAX_MODEL_BYTES);
            return VLM_ERR_FORMAT;
        }
        buf = malloc(data_len ? data_len : 1);
        if (!buf) {
            vlm_log_error("%s: out of memory", path);
            return VLM_ERR_OOM;
        }
        if (data_len) memcpy(buf, data, data_len);
        len = data_len;
    } else {
        st = vlm_file_read_all(path, SPM_MAX_MODEL_BYTES, &buf, &len); /* logs, naming path */
        if (st != VLM_OK) return st;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    st = spmw_load(buf, len, &s->w, err, sizeof err);
    free(buf);
    buf = NULL;
    if (st != VLM_OK) {
        vlm_log_error("%s: %s", path, err);
        goto fail;
    }
    st = VLM_ERR_OOM;
    s->n_pieces = spmw_vocab_size(s->w);
    s->path = strdup(path);
    if (!s->path) vlm_log_error("%s: out of memory", path);
    s->offsets = vlm_alloc_array((size_t)s->n_pieces + 1, sizeof(size_t), "SentencePiece piece offsets");
    s->special = vlm_calloc_array((size_t)s->n_pieces, sizeof(bool), "SentencePiece piece flags");
    if (!s->path || !s->offsets || !s->special) goto fail;
    size_t total = 0;
    for (int64_t id = 0; id < s->n_pieces; id++) {
        s->offsets[id] = total;
        if (!vlm_size_add(total, piece_bytes(s->w, id, NULL, &s->special[id]), &total)) {
            vlm_log_error("%s: pieces too long", path);
            goto fail;
        }
    }
    s->offsets[s->n_pieces] = total;
    s->bytes = vlm_alloc_array(total, 1, "SentencePiece piece bytes");
    if (!s->bytes) goto fail;
    for (int64_t id = 0; id < s->n_pieces; id++) piece_bytes(s->w, id, s->bytes + s->offsets[id], &s->special[id]);

    *special = (struct tok_special){
        .bos = spmw_bos_id(s->w),
        .eos = spmw_eos_id(s->w),
        .pad = spmw_pad_id(s->w),
        .unk = spmw_unk_id(s->w),
        .im_start = id_or_none(s->w, "<|im_start|>"),
        .im_end = id_or_none(s->w, "<|im_end|>"),
        .image = id_or_none(s->w, "<image>"),
        .video = id_or_none(s->w, "<video>"),
    };
    *vocab_size = s->n_pieces;
    *out = s;
    return VLM_OK;
fail:
    free(buf);
    spm_free(s);
    return st;
}

void spm_free(struct spm_model *s) {
    if (!s) return;
    spmw_free(s->w);
    free(s->path);
    free(s->offsets);
    free(s->bytes);
    free(s->special);
    free(s);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encode */

/* A growing id array. */
struct idbuf {
    int64_t *v;
    size_t n, cap;
};

static bool idbuf_push(struct idbuf *b, int64_t id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int64_t *v = cap > SIZE_MAX / sizeof *v ? NULL : realloc(b->v, cap * sizeof *v);
        if (!v) {
            vlm_log_error("tokenizer: out of memory for %zu token ids", cap);
            return false;
        }
        b->v = v, b->cap = cap;
    }
    b->v[b->n++] = id;
    return true;
}

/* Length of the UTF-8 sequence starting at p (1 for an invalid lead byte or a sequence cut short by end). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    size_t n = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : (p[0] & 0xf8) == 0xf0 ? 4 : 1;
    if ((size_t)(end - p) < n) return 1;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 1;
    return n;
}

/* Spells text[0..len) (the surface of a user-defined symbol the user typed) with ordinary pieces: each character
 * as its own piece when the vocabulary has it as a normal piece, else as <0xNN> byte pieces, else unk. */
static enum vlm_status spell_plain(const struct spm_model *s, const char *text, size_t len, struct idbuf *b) {
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    int64_t unk = spmw_unk_id(s->w);
    while (p < end) {
        size_t n = utf8_len(p, end);
        int64_t id = spmw_piece_to_id(s->w, (const char *)p, n);
        if (id >= 0 && spmw_type_of(s->w, id) == SPMW_NORMAL) {
            if (!idbuf_push(b, id)) return VLM_ERR_OOM;
        } else {
            int64_t bytes[4];
            size_t k = 0;
            for (; k < n; k++) {
                char piece[8];
                snprintf(piece, sizeof piece, "<0x%02X>", p[k]);
                bytes[k] = spmw_piece_to_id(s->w, piece, 6);
                if (bytes[k] < 0 || !spmw_is_byte(s->w, bytes[k])) break;
            }
            if (k == n) {
                for (k = 0; k < n; k++)
                    if (!idbuf_push(b, bytes[k])) return VLM_ERR_OOM;
            } else if (unk < 0) {
                vlm_log_error("%s: no piece, byte piece or unk to spell '%.*s' with", s->path, (int)len, text);
                return VLM_ERR_ARG;
            } else if (!idbuf_push(b, unk)) {
                return VLM_ERR_OOM;
            }
        }
        p += n;
    }
    return VLM_OK;
}

/* text[0..len) through sentencepiece, appended to b. With plain_user_defined, user-defined pieces in the result are
 * replaced by a spelling of what the text wrote there (their byte spans in text). */
static enum vlm_status encode_text(const struct spm_model *s, const char *text, size_t len, bool plain_user_defined,
                                  struct idbuf *b) {
    char err[512] = "";
    int64_t *ids = NULL;
    uint32_t *spans = NULL;
    size_t n = 0;
    if (len == 0) return VLM_OK;
    enum vlm_status st = spmw_encode(s->w, text, len, &ids, &n, plain_user_defined ? &spans : NULL, err, sizeof err);
    if (st != VLM_OK) {
        vlm_log_error("%s: %s", s->path, err);
        return st;
    }
    for (size_t i = 0; st == VLM_OK && i < n; i++) {
        if (plain_user_defined && spmw_is_user_defined(s->w, ids[i]) && spans[2 * i] <= spans[2 * i + 1] &&
            spans[2 * i + 1] <= len)
            st = spell_plain(s, text + spans[2 * i], spans[2 * i + 1] - spans[2 * i], b);
        else if (!idbuf_push(b, ids[i]))
            st = VLM_ERR_OOM;
    }
    free(ids);
    free(spans);
    return st;
}

enum vlm_status spm_encode(const struct spm_model *s, const char *text, size_t len, bool parse_special, int64_t **ids,
                           size_t *n_ids) {
    if (len > TOK_MAX_TEXT_BYTES) {
        vlm_log_error("tokenizer: text of %zu bytes is more than the %llu allowed", len, TOK_MAX_TEXT_BYTES);
        return VLM_ERR_ARG;
    }
    struct idbuf b = {0};
    enum vlm_status st = encode_text(s, text, len, !parse_special, &b);
    if (st == VLM_OK && !b.v && !(b.v = vlm_alloc_array(1, sizeof *b.v, "token ids"))) /* non-NULL when empty */
        st = VLM_ERR_OOM;
    if (st != VLM_OK) {
        free(b.v);
        return st;
    }
    *ids = b.v;
    *n_ids = b.n;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Vocabulary */

const unsigned char *spm_token_bytes(const struct spm_model *s, int64_t id, size_t *len, bool *is_special) {
    if (id < 0 || id >= s->n_pieces) return NULL;
    *len = s->offsets[id + 1] - s->offsets[id];
    *is_special = s->special[id];
    return s->bytes + s->offsets[id];
}

int64_t spm_token_to_id(const struct spm_model *s, const char *token) {
    return spmw_piece_to_id(s->w, token, strlen(token));
}

enum vlm_status spm_load(const char *path, struct spm_model **out, struct tok_special *special, int64_t *vocab_size) {
    return spm_load_impl(path, NULL, 0, out, special, vocab_size);
}

enum vlm_status spm_load_mem(const char *name, const void *data, size_t len, struct spm_model **out,
                             struct tok_special *special, int64_t *vocab_size) {
    return spm_load_impl(name, data ? data : "", len, out, special, vocab_size);
}
