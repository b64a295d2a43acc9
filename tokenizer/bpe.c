/* bpe.c — byte-level BPE from a Hugging Face tokenizer.json (Qwen2 family; spec llava-onevision.md §8).
 *
 * Promise: tokenize exactly as HF `tokenizers` 0.23 does for the Qwen2 configuration, namely
 *   added tokens (leftmost-longest exact match) -> NFC -> Split(Qwen2 regex, Isolated) -> ByteLevel map -> BPE,
 * and refuse, with one error line naming the file, any tokenizer.json this file does not implement exactly.
 * Encoding is linear in the text apart from the BPE merge loop, which is O(m log m) in the length m of a
 * pre-token (indexed heap over adjacent pairs), so pathological inputs (1 MB without a space) stay fast.
 * Nothing is mutated after load: one model may encode from many threads (the piece cache is per call).
 *
 * The pre-tokenizer (a hand-written matcher for the Qwen2 regex), UTF-8 repair and NFC live in unicode.c.
 * Sections: small helpers; byte map; hash tables; added-token trie; loading; lookups; per-call encoding state;
 * piece cache; BPE merge; encode. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/unicode.h"

#define BPE_MAX_FILE_BYTES (64u << 20)
#define BPE_MAX_VOCAB (1 << 21) /* ids are stored as uint32 and int32 internally; real vocabularies are ~150k */
#define BPE_MAX_ADDED (1 << 16)
#define BPE_MAX_MERGES (1 << 22)
#define BPE_MAX_TOKEN_BYTES 4096      /* longest token string we accept in a file */
#define BPE_MAX_ADDED_BYTES (1 << 20) /* all added tokens' contents together (bounds the trie) */
#define BPE_NONE UINT32_MAX
#define BPE_MAP_CPS 0x144 /* the byte map's images are below U+0144 */

/* The Qwen2 pre-tokenizer pattern, exactly as tokenizer.json stores it (JSON-unescaped). */
static const char k_qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

enum { TOKF_ADDED = 1, TOKF_SPECIAL = 2 };

struct trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next sibling, -1 if none */
    int32_t token;   /* id of the added token ending here, -1 if none */
    unsigned char byte;
};

/* Exact-match automaton over the added tokens' bytes. */
struct trie {
    struct trie_node *nodes;
    size_t n, cap;
    int32_t root[256]; /* node for the first byte, -1 if no token starts with it */
    size_t n_tokens;
};

struct bpe_model {
    int64_t n_vocab; /* model.vocab entries: ids 0 .. n_vocab-1 */
    int64_t n_ids;   /* vocab + added tokens beyond it */
    /* per id (n_ids): the token string as in the file, and its bytes with the byte-level map undone */
    uint32_t *str_off;   /* (n_ids + 1) */
    char *strs;          /* NUL after each string */
    uint32_t *bytes_off; /* (n_ids + 1) */
    unsigned char *bytes;
    uint8_t *flags; /* (n_ids) TOKF_* */
    /* token string -> id (vocab strings, then added contents not already in the vocab) */
    int32_t *str_slots; /* (str_mask + 1), -1 empty */
    size_t str_mask;
    /* merges: (left id, right id) -> rank, merged id */
    uint64_t *merge_keys; /* (merge_mask + 1) */
    uint32_t *merge_rank; /* BPE_NONE = empty slot */
    uint32_t *merge_new;
    size_t merge_mask;
    uint32_t byte_id[256];        /* id of the one-byte token for each byte */
    uint32_t byte_cp[256];        /* byte map: code point that stands for each byte in token strings */
    int16_t cp_byte[BPE_MAP_CPS]; /* its inverse, -1 for code points that stand for no byte */
    struct trie raw_trie;         /* added tokens with normalized = false: matched on the raw text */
    struct trie norm_trie;        /* normalized = true: matched on the NFC text */
    bool nfc;
    bool ignore_merges;
};

/* ---------------------------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0x165667B19E3779F9ull;
    h ^= h >> 32;
    return h;
}

static inline uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    return x;
}

/* A short printable excerpt of token s in buf (control characters become '?': error messages stay on one line). */
static const char *excerpt(const char *s, char *buf, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; s[i] && k + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[k++] = (c < 0x20 || c == 0x7F) ? '?' : (char)c;
        if (i >= 40) {
            memcpy(buf + k, "...", 3);
            k += 3;
            break;
        }
    }
    buf[k] = '\0';
    return buf;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Byte map (GPT-2 bytes_to_unicode)
 * ------------------------------------------------------------------------------------------------------------- */

/* Code point that byte b is written as in the vocabulary: printable Latin-1 bytes stand for themselves, the other
 * 68 bytes map to U+0100.. in increasing byte order (space -> U+0120 'Ġ', newline -> U+010A 'Ċ'). Used at load to
 * fill the model's tables. */
static uint32_t byte_to_cp(unsigned b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
    unsigned k = 0; /* rank of b among the unprintable bytes */
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) k++;
    return 0x100 + k;
}

/* Raw bytes of token string s (len bytes) as HF's ByteLevel decoder produces them: every character mapped back
 * to its byte (cp_byte: the inverse map, -1 where a code point is no byte's image), or, when some character is not
 * in the map, the string's own UTF-8 bytes. Writes at most len bytes to out and returns the count. */
static size_t token_to_bytes(const int16_t *cp_byte, const char *s, size_t len, unsigned char *out) {
    size_t k = 0, i = 0;
    while (i < len) {
        uint32_t cp;
        size_t l;
        int b = -1;
        if (uni_utf8_scan((const unsigned char *)s + i, len - i, &cp, &l) == UNI_SCAN_OK && cp < BPE_MAP_CPS)
            b = cp_byte[cp];
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[k++] = (unsigned char)b;
        i += l;
    }
    return k;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Hash tables (open addressing, power-of-two sizes, built once at load)
 * ------------------------------------------------------------------------------------------------------------- */

static inline const char *tok_str(const struct bpe_model *m, int64_t id, size_t *len) {
    *len = m->str_off[id + 1] - m->str_off[id] - 1;
    return m->strs + m->str_off[id];
}

/* Slot of string s in the string table: the slot holding it, or the empty slot where it would go. */
static size_t str_find_slot(const struct bpe_model *m, const char *s, size_t len) {
    size_t i = (size_t)hash_bytes(s, len) & m->str_mask;
    for (;;) {
        int32_t id = m->str_slots[i];
        if (id < 0) return i;
        size_t l;
        const char *t = tok_str(m, id, &l);
        if (l == len && memcmp(t, s, len) == 0) return i;
        i = (i + 1) & m->str_mask;
    }
}

static int64_t str_lookup(const struct bpe_model *m, const char *s, size_t len) {
    return m->str_slots[str_find_slot(m, s, len)];
}

static inline size_t merge_slot(const struct bpe_model *m, uint64_t key) {
    size_t i = (size_t)hash_u64(key) & m->merge_mask;
    while (m->merge_rank[i] != BPE_NONE && m->merge_keys[i] != key) i = (i + 1) & m->merge_mask;
    return i;
}

/* Rank and merged id of the pair (a, b); false when the pair is not a merge. */
static inline bool merge_find(const struct bpe_model *m, uint32_t a, uint32_t b, uint32_t *rank, uint32_t *new_id) {
    size_t i = merge_slot(m, ((uint64_t)a << 32) | b);
    if (m->merge_rank[i] == BPE_NONE) return false;
    *rank = m->merge_rank[i];
    *new_id = m->merge_new[i];
    return true;
}

static size_t table_size_for(size_t n) {
    size_t s = 16;
    while (s < n * 2) s *= 2;
    return s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Added-token trie
 * ------------------------------------------------------------------------------------------------------------- */

static void trie_init(struct trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

static void trie_free(struct trie *t) { free(t->nodes); }

static int32_t trie_new_node(struct trie *t, unsigned char byte) {
    if (t->n == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 64;
        struct trie_node *nn = realloc(t->nodes, ncap * sizeof *nn);
        if (!nn) return -1;
        t->nodes = nn;
        t->cap = ncap;
    }
    struct trie_node *nd = &t->nodes[t->n];
    nd->child = nd->sibling = nd->token = -1;
    nd->byte = byte;
    return (int32_t)t->n++;
}

/* Adds s[0..len) (len >= 1) for token id; false on allocation failure. A repeated string keeps the first id. */
static bool trie_add(struct trie *t, const unsigned char *s, size_t len, int32_t id) {
    int32_t node = t->root[s[0]];
    if (node < 0) {
        if ((node = trie_new_node(t, s[0])) < 0) return false;
        t->root[s[0]] = node;
    }
    for (size_t i = 1; i < len; i++) {
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        if (c < 0) {
            if ((c = trie_new_node(t, s[i])) < 0) return false;
            t->nodes[c].sibling = t->nodes[node].child;
            t->nodes[node].child = c;
        }
        node = c;
    }
    if (t->nodes[node].token < 0) t->nodes[node].token = id;
    t->n_tokens++;
    return true;
}

/* Longest added token starting at s[0..n): its id (and *len), or -1. */
static inline int32_t trie_match(const struct trie *t, const unsigned char *s, size_t n, size_t *len) {
    int32_t node = t->root[s[0]];
    int32_t best = -1;
    size_t i = 1;
    while (node >= 0) {
        if (t->nodes[node].token >= 0) {
            best = t->nodes[node].token;
            *len = i;
        }
        if (i == n) break;
        int32_t c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        node = c;
        i++;
    }
    return best;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------------------------- */

void bpe_free(struct bpe_model *m) {
    if (!m) return;
    free(m->str_off);
    free(m->strs);
    free(m->bytes_off);
    free(m->bytes);
    free(m->flags);
    free(m->str_slots);
    free(m->merge_keys);
    free(m->merge_rank);
    free(m->merge_new);
    trie_free(&m->raw_trie);
    trie_free(&m->norm_trie);
    free(m);
}

static bool json_is(const cJSON *o, const char *type) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) && strcmp(t->valuestring, type) == 0;
}

/* Reads o.name as a bool into *out: absent or null gives def; false (after logging) for any other type. */
static bool json_bool(const char *path, const char *where, const cJSON *o, const char *name, bool def, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return true;
    }
    if (!cJSON_IsBool(v)) {
        vlm_log_error("%s: %s.%s is not a boolean", path, where, name);
        return false;
    }
    *out = cJSON_IsTrue(v);
    return true;
}

/* Integral JSON number in [0, limit); false otherwise. */
static bool json_id(const cJSON *v, int64_t limit, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < (double)limit) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

/* A JSON string field that must be absent, null or "" (HF's default for the BPE affix options). */
static bool json_empty_string(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return !v || cJSON_IsNull(v) || (cJSON_IsString(v) && v->valuestring[0] == '\0');
}

/* Checks normalizer, pre_tokenizer, decoder. VLM_ERR_UNSUPPORTED (logged) for anything else than Qwen2's. */
static enum vlm_status check_pipeline(const char *path, const cJSON *root, bool *nfc) {
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (!norm || cJSON_IsNull(norm)) {
        *nfc = false;
    } else if (cJSON_IsObject(norm) && json_is(norm, "NFC")) {
        *nfc = true;
    } else {
        const cJSON *t = cJSON_IsObject(norm) ? cJSON_GetObjectItemCaseSensitive(norm, "type") : NULL;
        vlm_log_error("%s: normalizer %s is not supported (only NFC or none)", path,
                      cJSON_IsString(t) ? t->valuestring : "(malformed)");
        return VLM_ERR_UNSUPPORTED;
    }

    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const cJSON *seq =
        cJSON_IsObject(pre) && json_is(pre, "Sequence") ? cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers") : NULL;
    const cJSON *split = cJSON_IsArray(seq) && cJSON_GetArraySize(seq) == 2 ? cJSON_GetArrayItem(seq, 0) : NULL;
    const cJSON *bl = split ? cJSON_GetArrayItem(seq, 1) : NULL;
    if (!split || !cJSON_IsObject(split) || !json_is(split, "Split") || !cJSON_IsObject(bl) ||
        !json_is(bl, "ByteLevel")) {
        vlm_log_error("%s: pre_tokenizer is not supported (only Sequence[Split(Qwen2 regex), ByteLevel])", path);
        return VLM_ERR_UNSUPPORTED;
    }
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_IsObject(pat) ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
    if (!cJSON_IsString(re) || strcmp(re->valuestring, k_qwen2_pattern) != 0) {
        vlm_log_error("%s: pre_tokenizer Split pattern is not the Qwen2 regex (spec llava-onevision.md section 8)",
                      path);
        return VLM_ERR_UNSUPPORTED;
    }
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    bool invert = false, prefix = false, use_regex = true;
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") != 0 ||
        !json_bool(path, "pre_tokenizer Split", split, "invert", false, &invert) || invert) {
        vlm_log_error("%s: pre_tokenizer Split must have behavior Isolated and invert false", path);
        return VLM_ERR_UNSUPPORTED;
    }
    if (!json_bool(path, "pre_tokenizer ByteLevel", bl, "add_prefix_space", true, &prefix) ||
        !json_bool(path, "pre_tokenizer ByteLevel", bl, "use_regex", true, &use_regex) || prefix || use_regex) {
        vlm_log_error("%s: pre_tokenizer ByteLevel must have add_prefix_space false and use_regex false", path);
        return VLM_ERR_UNSUPPORTED;
    }

    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!cJSON_IsObject(dec) || !json_is(dec, "ByteLevel")) {
        vlm_log_error("%s: decoder is not supported (only ByteLevel)", path);
        return VLM_ERR_UNSUPPORTED;
    }
    /* post_processor, truncation and padding are deliberately ignored: encode never adds special tokens
     * (tokenizer.h) and never truncates or pads. */
    return VLM_OK;
}

/* Appends token string s (len bytes) for id: string pool, decoded bytes, flags. Pools sized by the caller. */
static void put_token(struct bpe_model *m, int64_t id, const char *s, size_t len, size_t *str_used, size_t *bytes_used,
                      uint8_t flags) {
    m->str_off[id] = (uint32_t)*str_used;
    memcpy(m->strs + *str_used, s, len);
    m->strs[*str_used + len] = '\0';
    *str_used += len + 1;
    m->bytes_off[id] = (uint32_t)*bytes_used;
    *bytes_used += token_to_bytes(m->cp_byte, s, len, m->bytes + *bytes_used);
    m->flags[id] = flags;
}

/* data == NULL: read the file at path; else parse data[0..data_len) and use path as its name in messages. */
static enum vlm_status bpe_load_impl(const char *path, const char *data, size_t data_len, struct bpe_model **out,
                                     struct tok_special *special, int64_t *vocab_size) {
    char *text = NULL;
    size_t text_len = 0;
    cJSON *root = NULL;
    struct bpe_model *m = NULL;
    const cJSON **by_id = NULL;    /* vocab entry of each id */
    const cJSON **added_of = NULL; /* added token of each id (n_ids), NULL if none */
    char *cat = NULL;              /* merge concatenation buffer */
    char ebuf[64];
    enum vlm_status st;
    if (data) {
        if (data_len > BPE_MAX_FILE_BYTES) {
            vlm_log_error("%s: %zu bytes, more than the %zu-byte limit", path, data_len, (size_t)BPE_MAX_FILE_BYTES);
            return VLM_ERR_FORMAT;
        }
        text = malloc(data_len + 1);
        if (!text) {
            vlm_log_error("%s: out of memory", path);
            return VLM_ERR_OOM;
        }
        memcpy(text, data, data_len);
        text[data_len] = 0;
        text_len = data_len;
    } else {
        st = vlm_file_read_all(path, BPE_MAX_FILE_BYTES, &text, &text_len);
        if (st != VLM_OK) return st;
    }
    st = VLM_ERR_FORMAT;
    if (text_len == 0) {
        vlm_log_error("%s: file is empty", path);
        goto fail;
    }
    root = cJSON_ParseWithLength(text, text_len);
    if (!root) {
        vlm_log_error("%s: not valid JSON", path);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        vlm_log_error("%s: the top level is not a JSON object", path);
        goto fail;
    }
    free(text);
    text = NULL;

    /* --- model --- */
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        vlm_log_error("%s: no \"model\" object", path);
        goto fail;
    }
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(mtype)) {
        vlm_log_error("%s: model.type is missing", path);
        goto fail;
    }
    if (strcmp(mtype->valuestring, "BPE") != 0) {
        vlm_log_error("%s: model.type \"%s\" is not supported (only BPE)", path,
                      excerpt(mtype->valuestring, ebuf, sizeof ebuf));
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    bool byte_fallback = false, ignore_merges = false;
    if (!json_bool(path, "model", model, "byte_fallback", false, &byte_fallback) ||
        !json_bool(path, "model", model, "ignore_merges", false, &ignore_merges))
        goto fail;
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (byte_fallback || (dropout && !cJSON_IsNull(dropout)) ||
        !json_empty_string(model, "continuing_subword_prefix") || !json_empty_string(model, "end_of_word_suffix")) {
        vlm_log_error("%s: model options not supported (byte_fallback, dropout, continuing_subword_prefix or "
                      "end_of_word_suffix set)",
                      path);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    /* unk_token and fuse_unk are ignored: the vocabulary must hold all 256 byte tokens (checked below), so the
     * byte-level pipeline never produces an unknown symbol. */
    bool nfc = false;
    if ((st = check_pipeline(path, root, &nfc)) != VLM_OK) goto fail;
    st = VLM_ERR_FORMAT;

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        vlm_log_error("%s: model.vocab must be an object and model.merges an array", path);
        goto fail;
    }
    int64_t n_vocab = cJSON_GetArraySize(vocab);
    if (n_vocab < 256 || n_vocab > BPE_MAX_VOCAB) {
        vlm_log_error("%s: model.vocab has %lld entries (expected 256 .. %d)", path, (long long)n_vocab, BPE_MAX_VOCAB);
        goto fail;
    }
    int64_t n_merges = cJSON_GetArraySize(merges);
    if (n_merges > BPE_MAX_MERGES) {
        vlm_log_error("%s: model.merges has %lld entries (at most %d)", path, (long long)n_merges, BPE_MAX_MERGES);
        goto fail;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        vlm_log_error("%s: added_tokens is not an array", path);
        goto fail;
    }
    int64_t n_added = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    if (n_added > BPE_MAX_ADDED) {
        vlm_log_error("%s: added_tokens has %lld entries (at most %d)", path, (long long)n_added, BPE_MAX_ADDED);
        goto fail;
    }

    /* vocab ids: unique and dense 0 .. n_vocab-1 */
    by_id = calloc((size_t)n_vocab, sizeof *by_id);
    if (!by_id) goto oom;
    size_t str_bytes = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int64_t id;
        size_t len = strlen(e->string);
        if (!json_id(e, n_vocab, &id)) {
            vlm_log_error("%s: model.vocab token \"%s\" has an id that is not an integer in 0 .. %lld", path,
                          excerpt(e->string, ebuf, sizeof ebuf), (long long)n_vocab - 1);
            goto fail;
        }
        if (by_id[id]) {
            vlm_log_error("%s: model.vocab id %lld is used twice", path, (long long)id);
            goto fail;
        }
        if (len == 0 || len > BPE_MAX_TOKEN_BYTES) {
            vlm_log_error("%s: model.vocab id %lld has a token of %zu bytes (expected 1 .. %d)", path, (long long)id,
                          len, BPE_MAX_TOKEN_BYTES);
            goto fail;
        }
        by_id[id] = e;
        str_bytes += len + 1;
    }

    /* added tokens: validate fields, find their ids */
    int64_t n_ids = n_vocab;
    size_t added_bytes = 0;
    int64_t k = 0;
    for (const cJSON *a = n_added ? added->child : NULL; a; a = a->next, k++) {
        const cJSON *content = cJSON_IsObject(a) ? cJSON_GetObjectItemCaseSensitive(a, "content") : NULL;
        int64_t id;
        if (!cJSON_IsString(content) || !json_id(cJSON_GetObjectItemCaseSensitive(a, "id"), BPE_MAX_VOCAB, &id)) {
            vlm_log_error("%s: added_tokens[%lld] needs an integer id in 0 .. %d and a string content", path,
                          (long long)k, BPE_MAX_VOCAB - 1);
            goto fail;
        }
        size_t len = strlen(content->valuestring);
        if (len == 0 || len > BPE_MAX_TOKEN_BYTES) {
            vlm_log_error("%s: added_tokens[%lld] content is %zu bytes (expected 1 .. %d)", path, (long long)k, len,
                          BPE_MAX_TOKEN_BYTES);
            goto fail;
        }
        added_bytes += len;
        if (added_bytes > BPE_MAX_ADDED_BYTES) {
            vlm_log_error("%s: added_tokens hold more than %d bytes of content", path, BPE_MAX_ADDED_BYTES);
            goto fail;
        }
        bool lstrip, rstrip, single_word, normalized, is_special;
        if (!json_bool(path, "added_tokens[]", a, "lstrip", false, &lstrip) ||
            !json_bool(path, "added_tokens[]", a, "rstrip", false, &rstrip) ||
            !json_bool(path, "added_tokens[]", a, "single_word", false, &single_word) ||
            !json_bool(path, "added_tokens[]", a, "normalized", false, &normalized) ||
            !json_bool(path, "added_tokens[]", a, "special", false, &is_special))
            goto fail;
        if (lstrip || rstrip || single_word) {
            vlm_log_error("%s: added token id %lld uses lstrip/rstrip/single_word, which is not supported", path,
                          (long long)id);
            st = VLM_ERR_UNSUPPORTED;
            goto fail;
        }
        if (id < n_vocab) {
            if (strcmp(by_id[id]->string, content->valuestring) != 0) {
                vlm_log_error("%s: added token id %lld (\"%s\") collides with a different vocab token", path,
                              (long long)id, excerpt(content->valuestring, ebuf, sizeof ebuf));
                goto fail;
            }
        } else {
            if (id + 1 > n_ids) n_ids = id + 1;
            str_bytes += len + 1;
        }
    }
    if (n_ids > BPE_MAX_VOCAB) {
        vlm_log_error("%s: %lld token ids (at most %d)", path, (long long)n_ids, BPE_MAX_VOCAB);
        goto fail;
    }
    if (str_bytes > UINT32_MAX / 2) {
        vlm_log_error("%s: token strings total %zu bytes, too many", path, str_bytes);
        goto fail;
    }

    m = calloc(1, sizeof *m);
    if (!m) goto oom;
    trie_init(&m->raw_trie);
    trie_init(&m->norm_trie);
    m->n_vocab = n_vocab;
    m->n_ids = n_ids;
    for (int c = 0; c < BPE_MAP_CPS; c++) m->cp_byte[c] = -1;
    for (unsigned b = 0; b < 256; b++) {
        m->byte_cp[b] = byte_to_cp(b);
        m->cp_byte[m->byte_cp[b]] = (int16_t)b;
    }
    m->nfc = nfc;
    m->ignore_merges = ignore_merges;
    m->str_off = vlm_alloc_array((size_t)n_ids + 1, sizeof *m->str_off, "tokenizer strings");
    m->strs = malloc(str_bytes + 1);
    m->bytes_off = vlm_alloc_array((size_t)n_ids + 1, sizeof *m->bytes_off, "tokenizer bytes");
    m->bytes = malloc(str_bytes + 1);
    m->flags = calloc((size_t)n_ids, 1);
    m->str_mask = table_size_for((size_t)n_ids) - 1;
    m->str_slots = vlm_alloc_array(m->str_mask + 1, sizeof *m->str_slots, "tokenizer string table");
    added_of = calloc((size_t)n_ids, sizeof *added_of);
    if (!m->str_off || !m->strs || !m->bytes_off || !m->bytes || !m->flags || !m->str_slots || !added_of) goto oom;
    memset(m->str_slots, 0xFF, (m->str_mask + 1) * sizeof *m->str_slots);

    size_t str_used = 0, bytes_used = 0;
    for (int64_t id = 0; id < n_vocab; id++) {
        const char *s = by_id[id]->string;
        size_t len = strlen(s);
        size_t slot = str_find_slot(m, s, len);
        if (m->str_slots[slot] >= 0) { /* cJSON keeps repeated object keys */
            vlm_log_error("%s: model.vocab token \"%s\" appears twice", path, excerpt(s, ebuf, sizeof ebuf));
            goto fail;
        }
        put_token(m, id, s, len, &str_used, &bytes_used, 0);
        m->str_off[id + 1] = (uint32_t)str_used; /* str_find_slot reads the next offset */
        m->str_slots[slot] = (int32_t)id;
    }
    for (const cJSON *a = n_added ? added->child : NULL; a; a = a->next) {
        const char *s = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        size_t len = strlen(s);
        int64_t id;
        json_id(cJSON_GetObjectItemCaseSensitive(a, "id"), BPE_MAX_VOCAB, &id);
        if (added_of[id]) {
            vlm_log_error("%s: added token id %lld appears twice", path, (long long)id);
            goto fail;
        }
        added_of[id] = a;
        int64_t prev = str_lookup(m, s, len);
        if (id >= n_vocab) {
            if (prev >= 0) {
                vlm_log_error("%s: added token id %lld (\"%s\") repeats the content of id %lld", path, (long long)id,
                              excerpt(s, ebuf, sizeof ebuf), (long long)prev);
                goto fail;
            }
        }
    }
    /* ids beyond the vocab: dense, in id order, so the offset arrays stay monotonic */
    for (int64_t id = n_vocab; id < n_ids; id++) {
        if (!added_of[id]) {
            vlm_log_error("%s: token id %lld is neither in model.vocab nor in added_tokens (ids must be dense)", path,
                          (long long)id);
            goto fail;
        }
        const char *s = cJSON_GetObjectItemCaseSensitive(added_of[id], "content")->valuestring;
        size_t len = strlen(s);
        size_t slot = str_find_slot(m, s, len);
        if (m->str_slots[slot] >= 0) {
            vlm_log_error("%s: added token id %lld (\"%s\") repeats the content of id %lld", path, (long long)id,
                          excerpt(s, ebuf, sizeof ebuf), (long long)m->str_slots[slot]);
            goto fail;
        }
        put_token(m, id, s, len, &str_used, &bytes_used, 0);
        m->str_off[id + 1] = (uint32_t)str_used;
        m->str_slots[slot] = (int32_t)id;
    }
    m->str_off[n_ids] = (uint32_t)str_used;
    m->bytes_off[n_ids] = (uint32_t)bytes_used;
    for (int64_t id = 0; id < n_ids; id++) {
        const cJSON *a = added_of[id];
        if (!a) continue;
        bool is_special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"));
        bool normalized = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "normalized"));
        m->flags[id] = TOKF_ADDED | (is_special ? TOKF_SPECIAL : 0);
        size_t len;
        const char *s = tok_str(m, id, &len);
        bool ok;
        if (normalized && nfc) { /* HF matches normalized tokens by their normalised content */
            unsigned char *ns = NULL;
            size_t nlen = 0;
            bool valid;
            uni_utf8_repaired_len((const unsigned char *)s, len, &valid);
            if (!valid) {
                vlm_log_error("%s: added token id %lld is not valid UTF-8", path, (long long)id);
                goto fail;
            }
            if ((st = uni_nfc((const unsigned char *)s, len, &ns, &nlen)) != VLM_OK) goto fail;
            st = VLM_ERR_FORMAT;
            ok = nlen == 0 || trie_add(&m->norm_trie, ns, nlen, (int32_t)id);
            free(ns);
        } else {
            ok = trie_add(normalized ? &m->norm_trie : &m->raw_trie, (const unsigned char *)s, len, (int32_t)id);
        }
        if (!ok) goto oom;
    }

    /* all 256 byte tokens */
    for (unsigned b = 0; b < 256; b++) {
        unsigned char u[4];
        size_t l = uni_utf8_put(m->byte_cp[b], u);
        int64_t id = str_lookup(m, (const char *)u, l);
        if (id < 0 || id >= n_vocab) {
            vlm_log_error("%s: model.vocab lacks the byte-level token for byte 0x%02X", path, b);
            goto fail;
        }
        m->byte_id[b] = (uint32_t)id;
    }

    /* merges, either "a b" strings or ["a", "b"] pairs; rank = position (a repeated pair keeps the last rank, as
     * HF's map does) */
    m->merge_mask = table_size_for((size_t)n_merges) - 1;
    m->merge_keys = vlm_alloc_array(m->merge_mask + 1, sizeof *m->merge_keys, "tokenizer merges");
    m->merge_rank = vlm_alloc_array(m->merge_mask + 1, sizeof *m->merge_rank, "tokenizer merges");
    m->merge_new = vlm_alloc_array(m->merge_mask + 1, sizeof *m->merge_new, "tokenizer merges");
    cat = malloc(2 * BPE_MAX_TOKEN_BYTES + 2);
    if (!m->merge_keys || !m->merge_rank || !m->merge_new || !cat) goto oom;
    memset(m->merge_rank, 0xFF, (m->merge_mask + 1) * sizeof *m->merge_rank);
    int64_t rank = 0;
    for (const cJSON *e = merges->child; e; e = e->next, rank++) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (sp && sp != e->valuestring && sp[1]) {
                a = e->valuestring;
                la = (size_t)(sp - a);
                b = sp + 1;
                lb = strlen(b);
            }
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring;
            la = strlen(a);
            b = e->child->next->valuestring;
            lb = strlen(b);
        }
        if (!a || la == 0 || lb == 0) {
            vlm_log_error("%s: model.merges[%lld] is neither \"a b\" nor [\"a\", \"b\"]", path, (long long)rank);
            goto fail;
        }
        int64_t ia = str_lookup(m, a, la), ib = str_lookup(m, b, lb), inew = -1;
        if (la + lb <= 2 * BPE_MAX_TOKEN_BYTES) {
            memcpy(cat, a, la);
            memcpy(cat + la, b, lb);
            inew = str_lookup(m, cat, la + lb);
        }
        if (ia < 0 || ib < 0 || inew < 0 || ia >= n_vocab || ib >= n_vocab || inew >= n_vocab) {
            vlm_log_error("%s: model.merges[%lld] uses a token that is not in model.vocab (%s)", path, (long long)rank,
                          ia < 0 || ia >= n_vocab   ? "left part"
                          : ib < 0 || ib >= n_vocab ? "right part"
                                                    : "merged token");
            goto fail;
        }
        uint64_t key = ((uint64_t)ia << 32) | (uint64_t)ib;
        size_t slot = merge_slot(m, key);
        m->merge_keys[slot] = key;
        m->merge_rank[slot] = (uint32_t)rank;
        m->merge_new[slot] = (uint32_t)inew;
    }

    /* special ids by content (spec §7.3): Qwen2 has no BOS; <|im_end|> ends a turn (generation_config's eos). */
    struct tok_special sp = {-1, -1, -1, -1, -1, -1, -1, -1};
    sp.im_start = str_lookup(m, "<|im_start|>", 12);
    sp.im_end = str_lookup(m, "<|im_end|>", 10);
    sp.image = str_lookup(m, "<image>", 7);
    sp.video = str_lookup(m, "<video>", 7);
    sp.pad = str_lookup(m, "<|endoftext|>", 13);
    sp.eos = sp.im_end >= 0 ? sp.im_end : sp.pad;

    free(by_id);
    free(added_of);
    free(cat);
    cJSON_Delete(root);
    *out = m;
    *special = sp;
    *vocab_size = n_ids;
    return VLM_OK;
oom:
    vlm_log_error("%s: out of memory loading the tokenizer", path);
    st = VLM_ERR_OOM;
fail:
    free(text);
    free(by_id);
    free(added_of);
    free(cat);
    cJSON_Delete(root);
    bpe_free(m);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Lookups
 * ------------------------------------------------------------------------------------------------------------- */

const unsigned char *bpe_token_bytes(const struct bpe_model *m, int64_t id, size_t *len, bool *is_special) {
    if (!m || id < 0 || id >= m->n_ids) return NULL;
    *len = m->bytes_off[id + 1] - m->bytes_off[id];
    *is_special = (m->flags[id] & TOKF_SPECIAL) != 0;
    return m->bytes + m->bytes_off[id];
}

int64_t bpe_token_to_id(const struct bpe_model *m, const char *token) {
    if (!m || !token) return -1;
    return str_lookup(m, token, strlen(token));
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encoding state (one per call)
 * ------------------------------------------------------------------------------------------------------------- */

#define CACHE_MAX_KEY 64          /* pieces longer than this are not cached */
#define CACHE_MAX_SLOTS (1 << 17) /* bound on the per-call cache */

struct cache_entry {
    uint64_t hash;
    uint32_t key_off, ids_off; /* into key_pool / id_pool */
    uint16_t key_len, n_ids;   /* key_len 0 = empty slot */
};

struct enc {
    const struct bpe_model *m;
    int64_t *ids;
    size_t n_ids, cap_ids;
    /* BPE scratch */
    uint32_t *sym_id, *sym_prev, *sym_next, *heap_pos; /* (cap_sym) each */
    uint64_t *heap;                                    /* (cap_sym) */
    size_t cap_sym;
    /* piece cache */
    struct cache_entry *cache;
    size_t cache_mask, cache_used;
    unsigned char *key_pool;
    size_t key_used, key_cap;
    uint32_t *id_pool;
    size_t id_used, id_cap;
    char *map_buf; /* ignore_merges: the piece written with the byte map */
    size_t map_cap;
    bool parse_special;
    enum vlm_status st; /* why the last step failed */
};

static bool enc_reserve_ids(struct enc *e, size_t more) {
    if (e->n_ids + more <= e->cap_ids) return true;
    size_t ncap = e->cap_ids ? e->cap_ids : 256;
    while (ncap < e->n_ids + more) {
        if (ncap > SIZE_MAX / 2 / sizeof(int64_t)) goto oom;
        ncap *= 2;
    }
    int64_t *n = realloc(e->ids, ncap * sizeof *n);
    if (!n) goto oom;
    e->ids = n;
    e->cap_ids = ncap;
    return true;
oom:
    vlm_log_error("tokenizer: out of memory for %zu token ids", e->n_ids + more);
    e->st = VLM_ERR_OOM;
    return false;
}

static inline bool enc_push(struct enc *e, int64_t id) {
    if (e->n_ids == e->cap_ids && !enc_reserve_ids(e, 1)) return false;
    e->ids[e->n_ids++] = id;
    return true;
}

static void enc_free(struct enc *e) {
    free(e->sym_id);
    free(e->sym_prev);
    free(e->sym_next);
    free(e->heap_pos);
    free(e->heap);
    free(e->cache);
    free(e->key_pool);
    free(e->id_pool);
    free(e->map_buf);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Piece cache (bounded; per call, so encode stays thread-safe on a shared model)
 * ------------------------------------------------------------------------------------------------------------- */

static struct cache_entry *cache_find(const struct enc *e, const unsigned char *s, size_t n, uint64_t h) {
    if (!e->cache) return NULL;
    size_t i = (size_t)h & e->cache_mask;
    for (;;) {
        struct cache_entry *c = &e->cache[i];
        if (c->key_len == 0) return c;
        if (c->hash == h && c->key_len == n && memcmp(e->key_pool + c->key_off, s, n) == 0) return c;
        i = (i + 1) & e->cache_mask;
    }
}

static bool pool_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t ncap = *cap ? *cap : 4096;
    while (ncap < need) ncap *= 2;
    void *n = realloc(*p, ncap * elem);
    if (!n) return false;
    *p = n;
    *cap = ncap;
    return true;
}

/* Remembers ids[0..k) for piece s[0..n). Best effort: a full cache or a failed allocation just skips it. */
static void cache_put(struct enc *e, const unsigned char *s, size_t n, uint64_t h, const int64_t *ids, size_t k) {
    if (k > UINT16_MAX) return;
    if (!e->cache || (e->cache_used + 1) * 2 > e->cache_mask + 1) {
        size_t old = e->cache ? e->cache_mask + 1 : 0;
        if (old >= CACHE_MAX_SLOTS) return;
        size_t nsz = old ? old * 2 : 1024;
        struct cache_entry *nc = calloc(nsz, sizeof *nc);
        if (!nc) return;
        for (size_t i = 0; i < old; i++) {
            struct cache_entry *c = &e->cache[i];
            if (c->key_len == 0) continue;
            size_t j = (size_t)c->hash & (nsz - 1);
            while (nc[j].key_len) j = (j + 1) & (nsz - 1);
            nc[j] = *c;
        }
        free(e->cache);
        e->cache = nc;
        e->cache_mask = nsz - 1;
    }
    if (e->key_used + n > UINT32_MAX || e->id_used + k > UINT32_MAX) return;
    if (!pool_grow((void **)&e->key_pool, &e->key_cap, e->key_used + n, 1) ||
        !pool_grow((void **)&e->id_pool, &e->id_cap, e->id_used + k, sizeof *e->id_pool))
        return;
    struct cache_entry *c = cache_find(e, s, n, h);
    c->hash = h;
    c->key_off = (uint32_t)e->key_used;
    c->key_len = (uint16_t)n;
    c->ids_off = (uint32_t)e->id_used;
    c->n_ids = (uint16_t)k;
    memcpy(e->key_pool + e->key_used, s, n);
    e->key_used += n;
    for (size_t i = 0; i < k; i++) e->id_pool[e->id_used + i] = (uint32_t)ids[i];
    e->id_used += k;
    e->cache_used++;
}

/* ---------------------------------------------------------------------------------------------------------------
 * BPE merge of one piece: repeatedly merge the adjacent pair with the lowest (rank, position), as HF's
 * Word::merge_all does with its binary heap. Here the heap is indexed by symbol position, so each pair has one
 * key, updated in place (no stale entries): memory stays at 24 bytes per input byte and time at O(m log m).
 * ------------------------------------------------------------------------------------------------------------- */

static bool enc_reserve_sym(struct enc *e, size_t n) {
    if (n <= e->cap_sym) return true;
    size_t ncap = e->cap_sym ? e->cap_sym : 64;
    while (ncap < n) ncap *= 2;
    uint32_t **arrs[] = {&e->sym_id, &e->sym_prev, &e->sym_next, &e->heap_pos};
    for (size_t k = 0; k < sizeof arrs / sizeof arrs[0]; k++) {
        uint32_t *p = vlm_alloc_array(ncap, sizeof(uint32_t), "tokenizer merge buffers");
        if (!p) goto oom;
        free(*arrs[k]);
        *arrs[k] = p;
    }
    uint64_t *h = vlm_alloc_array(ncap, sizeof(uint64_t), "tokenizer merge buffers");
    if (!h) goto oom;
    free(e->heap);
    e->heap = h;
    e->cap_sym = ncap;
    return true;
oom:
    e->st = VLM_ERR_OOM;
    return false;
}

/* The heap holds one key per mergeable pair: rank << 32 | position of the pair's left symbol, so comparing keys
 * orders by rank, then position (leftmost first). hpos[position] is the key's index in the heap, or BPE_NONE. */
#define KEY_POS(k) ((uint32_t)(k))

static void heap_up(uint64_t *heap, uint32_t *hpos, size_t i) {
    uint64_t k = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent] <= k) break;
        heap[i] = heap[parent];
        hpos[KEY_POS(heap[i])] = (uint32_t)i;
        i = parent;
    }
    heap[i] = k;
    hpos[KEY_POS(k)] = (uint32_t)i;
}

static void heap_down(uint64_t *heap, uint32_t *hpos, size_t n, size_t i) {
    uint64_t k = heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap[c + 1] < heap[c]) c++;
        if (heap[c] >= k) break;
        heap[i] = heap[c];
        hpos[KEY_POS(heap[i])] = (uint32_t)i;
        i = c;
    }
    heap[i] = k;
    hpos[KEY_POS(k)] = (uint32_t)i;
}

/* Restores the heap order around index i after its key changed. */
static inline void heap_fix(uint64_t *heap, uint32_t *hpos, size_t n, size_t i) {
    if (i > 0 && heap[i] < heap[(i - 1) / 2]) heap_up(heap, hpos, i);
    else heap_down(heap, hpos, n, i);
}

/* Removes the pair at position p from the heap (of *n keys) if it is there. */
static void heap_remove(uint64_t *heap, uint32_t *hpos, size_t *n, uint32_t p) {
    uint32_t i = hpos[p];
    if (i == BPE_NONE) return;
    hpos[p] = BPE_NONE;
    (*n)--;
    if (i == *n) return;
    heap[i] = heap[*n];
    hpos[KEY_POS(heap[i])] = i;
    heap_fix(heap, hpos, *n, i);
}

/* Sets the pair at position p to rank r (BPE_NONE: not a merge) and fixes its heap entry. */
static void heap_set(uint64_t *heap, uint32_t *hpos, size_t *n, uint32_t p, uint32_t r) {
    if (r == BPE_NONE) {
        heap_remove(heap, hpos, n, p);
        return;
    }
    uint64_t k = (uint64_t)r << 32 | p;
    if (hpos[p] == BPE_NONE) {
        heap[*n] = k;
        hpos[p] = (uint32_t)*n;
        (*n)++;
        heap_up(heap, hpos, *n - 1);
    } else {
        heap[hpos[p]] = k;
        heap_fix(heap, hpos, *n, hpos[p]);
    }
}

/* Appends the BPE ids of piece s[0..n) (n >= 1, raw bytes) to e->ids. */
static bool bpe_piece(struct enc *e, const unsigned char *s, size_t n) {
    const struct bpe_model *m = e->m;
    if (n == 1) return enc_push(e, m->byte_id[s[0]]);
    if (m->ignore_merges) { /* HF: a piece that is a whole vocab token is taken as is */
        size_t need = 2 * n;
        if (need > e->map_cap) {
            char *nb = realloc(e->map_buf, need);
            if (!nb) {
                vlm_log_error("tokenizer: out of memory for a piece of %zu bytes", n);
                e->st = VLM_ERR_OOM;
                return false;
            }
            e->map_buf = nb;
            e->map_cap = need;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) k += uni_utf8_put(m->byte_cp[s[i]], (unsigned char *)e->map_buf + k);
        int64_t id = str_lookup(m, e->map_buf, k);
        if (id >= 0 && id < m->n_vocab) return enc_push(e, id);
    }
    uint64_t h = 0;
    if (n <= CACHE_MAX_KEY) {
        h = hash_bytes(s, n);
        const struct cache_entry *c = cache_find(e, s, n, h);
        if (c && c->key_len) {
            if (!enc_reserve_ids(e, c->n_ids)) return false;
            for (size_t i = 0; i < c->n_ids; i++) e->ids[e->n_ids++] = e->id_pool[c->ids_off + i];
            return true;
        }
    }
    if (n > UINT32_MAX - 1) {
        vlm_log_error("tokenizer: pre-token of %zu bytes is too long", n);
        e->st = VLM_ERR_ARG;
        return false;
    }
    if (!enc_reserve_sym(e, n)) return false;
    uint32_t *id = e->sym_id, *prev = e->sym_prev, *next = e->sym_next, *hpos = e->heap_pos;
    uint64_t *heap = e->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = m->byte_id[s[i]];
        prev[i] = i ? (uint32_t)(i - 1) : BPE_NONE;
        next[i] = i + 1 < n ? (uint32_t)(i + 1) : BPE_NONE;
        hpos[i] = BPE_NONE;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r, nid;
        if (merge_find(m, id[i], id[i + 1], &r, &nid)) {
            heap[hn] = (uint64_t)r << 32 | i;
            hpos[i] = (uint32_t)hn;
            hn++;
        }
    }
    for (size_t i = hn / 2; i-- > 0;) heap_down(heap, hpos, hn, i);
    while (hn > 0) {
        uint32_t p = KEY_POS(heap[0]), q = next[p];
        uint32_t r, nid;
        bool ok = merge_find(m, id[p], id[q], &r, &nid);
        VLM_ASSERT(ok && r == (uint32_t)(heap[0] >> 32));
        heap_remove(heap, hpos, &hn, p);
        heap_remove(heap, hpos, &hn, q);
        id[p] = nid;
        uint32_t nq = next[q];
        next[p] = nq;
        if (nq != BPE_NONE) {
            prev[nq] = p;
            heap_set(heap, hpos, &hn, p, merge_find(m, id[p], id[nq], &r, &nid) ? r : BPE_NONE);
        }
        uint32_t pp = prev[p];
        if (pp != BPE_NONE) heap_set(heap, hpos, &hn, pp, merge_find(m, id[pp], id[p], &r, &nid) ? r : BPE_NONE);
    }
    size_t first = e->n_ids;
    for (uint32_t i = 0; i != BPE_NONE; i = next[i])
        if (!enc_push(e, id[i])) return false;
    if (n <= CACHE_MAX_KEY) cache_put(e, s, n, h, e->ids + first, e->n_ids - first);
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encode
 * ------------------------------------------------------------------------------------------------------------- */

/* Pre-tokenizes and BPE-encodes a normalised text segment. */
static bool encode_plain(struct enc *e, const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t j = uni_qwen2_piece_end(s, n, i);
        if (!bpe_piece(e, s + i, j - i)) return false;
        i = j;
    }
    return true;
}

/* Splits s[0..n) by the added tokens of trie t (leftmost-longest); calls plain() on the text between them.
 * Without parse_special a special token's match stays text (HF's encode_special_tokens: only special tokens
 * are affected; non-special added tokens are still split out). */
static bool split_added(struct enc *e, const struct trie *t, const unsigned char *s, size_t n,
                        bool (*plain)(struct enc *, const unsigned char *, size_t)) {
    if (t->n_tokens == 0) return plain(e, s, n);
    size_t seg = 0, i = 0;
    while (i < n) {
        size_t len = 0;
        int32_t id = t->root[s[i]] >= 0 ? trie_match(t, s + i, n - i, &len) : -1;
        if (id < 0) {
            i++;
            continue;
        }
        if (!e->parse_special && (e->m->flags[id] & TOKF_SPECIAL)) {
            i += len;
            continue;
        }
        if (i > seg && !plain(e, s + seg, i - seg)) return false;
        if (!enc_push(e, id)) return false;
        i += len;
        seg = i;
    }
    return n > seg ? plain(e, s + seg, n - seg) : true;
}

/* Text between raw-matched added tokens: NFC, then the normalized added tokens, then pre-tokenize + BPE. */
static bool encode_segment(struct enc *e, const unsigned char *s, size_t n) {
    const struct bpe_model *m = e->m;
    if (!m->nfc || uni_nfc_quick_yes(s, n)) return split_added(e, &m->norm_trie, s, n, encode_plain);
    unsigned char *ns = NULL;
    size_t nn = 0;
    enum vlm_status st = uni_nfc(s, n, &ns, &nn);
    if (st != VLM_OK) {
        e->st = st;
        return false;
    }
    bool ok = split_added(e, &m->norm_trie, ns, nn, encode_plain);
    free(ns);
    return ok;
}

enum vlm_status bpe_encode(const struct bpe_model *m, const char *text, size_t len, bool parse_special, int64_t **ids,
                           size_t *n_ids) {
    if (!m || (!text && len) || !ids || !n_ids) {
        vlm_log_error("tokenizer: bpe_encode called with a NULL argument");
        return VLM_ERR_ARG;
    }
    /* the TOK_MAX_TEXT_BYTES limit is checked by tok_encode, this function's only caller */
    struct enc enc;
    memset(&enc, 0, sizeof enc);
    struct enc *e = &enc;
    e->m = m;
    e->parse_special = parse_special;
    e->st = VLM_OK;

    const unsigned char *s = (const unsigned char *)text;
    unsigned char *fixed = NULL;
    bool valid;
    size_t rl = uni_utf8_repaired_len(s, len, &valid);
    if (!valid) { /* invalid UTF-8: each maximal invalid subpart becomes U+FFFD (Python errors="replace") */
        fixed = malloc(rl ? rl : 1);
        if (!fixed) {
            vlm_log_error("tokenizer: out of memory repairing %zu bytes of text", len);
            return VLM_ERR_OOM;
        }
        uni_utf8_repair(s, len, fixed);
        s = fixed;
        len = rl;
    }
    bool ok = enc_reserve_ids(e, len / 4 + 16) && split_added(e, &m->raw_trie, s, len, encode_segment);
    free(fixed);
    enum vlm_status st = ok ? VLM_OK : (e->st != VLM_OK ? e->st : VLM_ERR_OOM);
    if (st == VLM_OK) {
        *ids = e->ids;
        *n_ids = e->n_ids;
        e->ids = NULL;
    }
    free(e->ids);
    enc_free(e);
    return st;
}

enum vlm_status bpe_load(const char *path, struct bpe_model **out, struct tok_special *special, int64_t *vocab_size) {
    return bpe_load_impl(path, NULL, 0, out, special, vocab_size);
}

enum vlm_status bpe_load_mem(const char *name, const void *data, size_t len, struct bpe_model **out,
                             struct tok_special *special, int64_t *vocab_size) {
    return bpe_load_impl(name, data ? data : "", len, out, special, vocab_size);
}
