/* test_tokenizer.c — the byte-level BPE tokenizer (tokenizer/bpe.c, tokenizer/tokenizer.c, tokenizer/unicode.c)
 * against Hugging Face `tokenizers` 0.23.3:
 *   - the real Qwen2 tokenizer (tests/data/tokenizers/qwen2/tokenizer.json.gz, decompressed with gzip -dc into a
 *     temporary folder) on the reference corpus tests/golden/tok_qwen2_corpus.bin (tools/make_tokenizer_fixtures.py):
 *     encode with and without special tokens, decode, round trip, streaming decode;
 *   - merges stored as "a b" strings load identically to ["a", "b"] pairs;
 *   - the heap-based merge loop against a naive lowest-rank-first BPE written here (long single pieces);
 *   - the pre-tokenizer on cases whose splits come from HF's Split(Qwen2 regex) and agree with Python's `regex`
 *     module (an independent engine);
 *   - a small synthetic tokenizer built here (expected ids from HF over the same JSON): added tokens, special vs
 *     non-special with and without parse_special, a normalized added token, ignore_merges;
 *   - UTF-8 repair (maximal subparts), streaming across split characters, limits, and one error line naming the
 *     file for every malformed tokenizer.json. */
#include "test.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "runtime/util.h"
#include "tests/golden.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

/* ---------------------------------------------------------------------------------------------------------------
 * The Qwen2 tokenizer and the reference corpus (loaded once, shared by the cases)
 * ------------------------------------------------------------------------------------------------------------- */

static struct vlm_tokenizer *g_qwen;

static void free_qwen(void) { tok_free(g_qwen); }


static const struct vlm_tokenizer *qwen(void) {
    if (g_qwen) return g_qwen;
    const char *path = test_qwen2_tokenizer_path();
    if (!path) return NULL;
    if (tok_load_file(path, &g_qwen) != VLM_OK) {
        FAIL("cannot load %s", path);
        return NULL;
    }
    atexit(free_qwen);
    return g_qwen;
}

/* Ragged views of tok_qwen2_corpus.bin. */
struct corpus {
    struct golden_file g;
    size_t n;
    const uint8_t *text, *decoded, *valid, *nfc_stable;
    const int64_t *text_off, *ids, *ids_off, *ids_ns, *ids_ns_off, *decoded_off;
};

static const struct golden_tensor *find_record(const struct golden_file *g, const char *name, enum golden_dtype dt) {
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->t[i].name, name) == 0 && g->t[i].dtype == dt) return &g->t[i];
    return NULL;
}

/* Loads the corpus; false (after FAIL) when a required record is missing or inconsistent. */
static bool corpus_load(struct corpus *c) {
    memset(c, 0, sizeof *c);
    if (golden_load("tests/golden/tok_qwen2_corpus.bin", &c->g) != 0) return false;
    const struct golden_tensor *tb = golden_get(&c->g, "text_bytes", GOLDEN_U8),
                               *to = golden_get(&c->g, "text_offsets", GOLDEN_I64),
                               *ids = golden_get(&c->g, "ids", GOLDEN_I64),
                               *io = golden_get(&c->g, "ids_offsets", GOLDEN_I64),
                               *db = golden_get(&c->g, "decoded_bytes", GOLDEN_U8),
                               *dof = golden_get(&c->g, "decoded_offsets", GOLDEN_I64);
    if (!tb || !to || !ids || !io || !db || !dof) return false;
    c->n = (size_t)to->n - 1;
    if (to->n < 2 || io->n != to->n || dof->n != to->n) {
        FAIL("corpus: offset records disagree (%lld, %lld, %lld)", (long long)to->n, (long long)io->n,
             (long long)dof->n);
        return false;
    }
    c->text = tb->data;
    c->text_off = to->data;
    c->ids = ids->data;
    c->ids_off = io->data;
    c->decoded = db->data;
    c->decoded_off = dof->data;
    if (c->text_off[c->n] != tb->n || c->ids_off[c->n] != ids->n || c->decoded_off[c->n] != db->n) {
        FAIL("corpus: offsets do not end at the record sizes");
        return false;
    }
    const struct golden_tensor *ins = find_record(&c->g, "ids_nospecial", GOLDEN_I64),
                               *ino = find_record(&c->g, "ids_nospecial_offsets", GOLDEN_I64);
    if (ins && ino && ino->n == to->n && ((const int64_t *)ino->data)[c->n] == ins->n) {
        c->ids_ns = ins->data;
        c->ids_ns_off = ino->data;
    }
    const struct golden_tensor *v = find_record(&c->g, "valid_utf8", GOLDEN_U8),
                               *s = find_record(&c->g, "nfc_stable", GOLDEN_U8);
    if (v && v->n == (int64_t)c->n) c->valid = v->data;
    if (s && s->n == (int64_t)c->n) c->nfc_stable = s->data;
    return true;
}

static void print_bytes(const char *label, const void *p, size_t n) {
    const unsigned char *b = p;
    fprintf(stderr, "    %s (%zu bytes): ", label, n);
    for (size_t i = 0; i < n && i < 120; i++) fprintf(stderr, b[i] >= 0x20 && b[i] < 0x7F ? "%c" : "\\x%02x", b[i]);
    fprintf(stderr, "%s\n", n > 120 ? "..." : "");
}

static void print_ids(const char *label, const int64_t *ids, size_t n) {
    fprintf(stderr, "    %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %lld", (long long)ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

/* Encodes corpus string i and compares with want[0..n_want); reports the first few mismatches. */
static bool encode_matches(const struct vlm_tokenizer *t, const struct corpus *c, size_t i, bool parse_special,
                           const int64_t *want, size_t n_want, int *n_reported) {
    const char *s = (const char *)c->text + c->text_off[i];
    size_t len = (size_t)(c->text_off[i + 1] - c->text_off[i]);
    int64_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(t, s, len, parse_special, &ids, &n) != VLM_OK) {
        FAIL("corpus string %zu: encode failed", i);
        return false;
    }
    bool ok = n == n_want && memcmp(ids, want, n * sizeof *ids) == 0;
    if (!ok && (*n_reported)++ < 5) {
        FAIL("corpus string %zu (parse_special=%d): ids differ", i, parse_special);
        print_bytes("text", s, len);
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    free(ids);
    return ok;
}

TEST(tok_qwen2_corpus_encode) {
    const struct vlm_tokenizer *t = qwen();
    struct corpus c;
    if (!t || !corpus_load(&c)) return;
    int reported = 0;
    size_t bad = 0, bad_ns = 0;
    for (size_t i = 0; i < c.n; i++) {
        if (!encode_matches(t, &c, i, true, c.ids + c.ids_off[i], (size_t)(c.ids_off[i + 1] - c.ids_off[i]), &reported))
            bad++;
        if (c.ids_ns && !encode_matches(t, &c, i, false, c.ids_ns + c.ids_ns_off[i],
                                        (size_t)(c.ids_ns_off[i + 1] - c.ids_ns_off[i]), &reported))
            bad_ns++;
    }
    if (test_verbose())
        fprintf(stderr, "  %zu strings, %lld ids: %zu mismatches (specials parsed), %zu (specials as text%s)\n", c.n,
                (long long)c.ids_off[c.n], bad, bad_ns, c.ids_ns ? "" : ": record absent, not tested");
    CHECK_EQ(bad, 0);
    CHECK_EQ(bad_ns, 0);
    CHECK(c.n >= 1000);
    golden_free(&c.g);
}

TEST(tok_qwen2_corpus_decode) {
    const struct vlm_tokenizer *t = qwen();
    struct corpus c;
    if (!t || !corpus_load(&c)) return;
    size_t bad = 0, bad_rt = 0, n_rt = 0;
    for (size_t i = 0; i < c.n; i++) {
        const uint8_t *want = c.decoded + c.decoded_off[i];
        size_t n_want = (size_t)(c.decoded_off[i + 1] - c.decoded_off[i]);
        const int64_t *lists[2] = {c.ids + c.ids_off[i], c.ids_ns ? c.ids_ns + c.ids_ns_off[i] : NULL};
        size_t counts[2] = {(size_t)(c.ids_off[i + 1] - c.ids_off[i]),
                            c.ids_ns ? (size_t)(c.ids_ns_off[i + 1] - c.ids_ns_off[i]) : 0};
        for (int k = 0; k < 2; k++) {
            if (!lists[k]) continue;
            char *out = NULL;
            size_t n = 0;
            if (tok_decode(t, lists[k], counts[k], false, &out, &n) != VLM_OK) {
                FAIL("corpus string %zu: decode failed", i);
                bad++;
                continue;
            }
            if (n != n_want || memcmp(out, want, n) != 0 || out[n] != '\0') {
                if (bad++ < 5) {
                    FAIL("corpus string %zu: decode differs (list %d)", i, k);
                    print_bytes("want", want, n_want);
                    print_bytes("got ", out, n);
                }
            }
            free(out);
        }
        /* round trip: decode(encode(s)) == s for valid UTF-8 that NFC leaves alone */
        if (c.valid && c.nfc_stable && c.valid[i] && c.nfc_stable[i]) {
            const char *s = (const char *)c.text + c.text_off[i];
            size_t len = (size_t)(c.text_off[i + 1] - c.text_off[i]);
            int64_t *ids = NULL;
            size_t n_ids = 0;
            char *out = NULL;
            size_t n = 0;
            n_rt++;
            if (tok_encode(t, s, len, false, &ids, &n_ids) != VLM_OK ||
                tok_decode(t, ids, n_ids, false, &out, &n) != VLM_OK || n != len || memcmp(out, s, len) != 0) {
                if (bad_rt++ < 5) FAIL("corpus string %zu: decode(encode(s)) != s", i);
            }
            free(ids);
            free(out);
        }
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(bad_rt, 0);
    CHECK(c.valid == NULL || n_rt > c.n / 2);
    golden_free(&c.g);
}

/* Streams ids through tok_stream_push/flush and returns the concatenated text (malloc'd), or NULL. */
static char *stream_all(const struct vlm_tokenizer *t, const int64_t *ids, size_t n, bool skip_special,
                        size_t *out_len) {
    struct tok_stream s;
    tok_stream_init(&s, t, skip_special);
    size_t cap = 64, len = 0;
    char *text = malloc(cap);
    char piece[4096];
    for (size_t i = 0; i <= n && text; i++) {
        int64_t k =
            i < n ? tok_stream_push(&s, ids[i], piece, sizeof piece) : tok_stream_flush(&s, piece, sizeof piece);
        if (k < 0) {
            free(text);
            return NULL;
        }
        if (len + (size_t)k + 1 > cap) {
            while (len + (size_t)k + 1 > cap) cap *= 2;
            char *nt = realloc(text, cap);
            if (!nt) {
                free(text);
                return NULL;
            }
            text = nt;
        }
        memcpy(text + len, piece, (size_t)k);
        len += (size_t)k;
    }
    *out_len = len;
    return text;
}

TEST(tok_qwen2_corpus_stream) {
    const struct vlm_tokenizer *t = qwen();
    struct corpus c;
    if (!t || !corpus_load(&c)) return;
    size_t bad = 0;
    for (size_t i = 0; i < c.n; i++) {
        const int64_t *ids = c.ids + c.ids_off[i];
        size_t n = (size_t)(c.ids_off[i + 1] - c.ids_off[i]);
        for (int skip = 0; skip < 2; skip++) {
            char *full = NULL, *streamed;
            size_t n_full = 0, n_streamed = 0;
            if (tok_decode(t, ids, n, skip, &full, &n_full) != VLM_OK) {
                bad++;
                continue;
            }
            streamed = stream_all(t, ids, n, skip, &n_streamed);
            if (!streamed || n_streamed != n_full || memcmp(streamed, full, n_full) != 0) {
                if (bad++ < 5) {
                    FAIL("corpus string %zu (skip_special=%d): streamed text differs from decode", i, skip);
                    print_bytes("decode", full, n_full);
                    if (streamed) print_bytes("stream", streamed, n_streamed);
                }
            }
            free(full);
            free(streamed);
        }
    }
    CHECK_EQ(bad, 0);
    golden_free(&c.g);
}

TEST(tok_qwen2_special_ids) {
    const struct vlm_tokenizer *t = qwen();
    if (!t) return;
    const struct tok_special *sp = tok_special_ids(t);
    CHECK_EQ(tok_get_kind(t), TOK_KIND_BPE);
    CHECK_EQ(tok_vocab_size(t), 151648);
    CHECK_EQ(sp->pad, 151643);
    CHECK_EQ(sp->im_start, 151644);
    CHECK_EQ(sp->im_end, 151645);
    CHECK_EQ(sp->eos, 151645);
    CHECK_EQ(sp->image, 151646);
    CHECK_EQ(sp->video, 151647);
    CHECK_EQ(sp->bos, -1);
    CHECK_EQ(sp->unk, -1);
    /* spec §7.3 common ids (token strings as the vocabulary writes them: newline is "Ċ") */
    CHECK_EQ(tok_token_to_id(t, "\xc4\x8a"), 198);
    CHECK_EQ(tok_token_to_id(t, "system"), 8948);
    CHECK_EQ(tok_token_to_id(t, "user"), 872);
    CHECK_EQ(tok_token_to_id(t, "assistant"), 77091);
    CHECK_EQ(tok_token_to_id(t, "<image>"), 151646);
    CHECK_EQ(tok_token_to_id(t, "no such token here"), -1);
}

/* The spec §7.2 prompt: special tokens become single ids only with parse_special. */
TEST(tok_qwen2_chat_prompt) {
    const struct vlm_tokenizer *t = qwen();
    if (!t) return;
    static const char prompt[] =
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is shown in this "
        "image?<|im_end|>\n<|im_start|>assistant\n";
    int64_t *ids = NULL, *plain = NULL;
    size_t n = 0, n_plain = 0;
    if (!CHECK(tok_encode(t, prompt, sizeof prompt - 1, true, &ids, &n) == VLM_OK)) return;
    static const int64_t head[] = {151644, 8948, 198}; /* <|im_start|> system \n */
    CHECK(n > 20 && memcmp(ids, head, sizeof head) == 0);
    CHECK_EQ(ids[n - 3], 151644);
    CHECK_EQ(ids[n - 2], 77091);
    CHECK_EQ(ids[n - 1], 198);
    size_t n_special = 0;
    for (size_t i = 0; i < n; i++) n_special += ids[i] >= 151643;
    CHECK_EQ(n_special, 6); /* 3 <|im_start|>, 2 <|im_end|>, 1 <image> */
    CHECK(tok_encode(t, prompt, sizeof prompt - 1, false, &plain, &n_plain) == VLM_OK);
    for (size_t i = 0; i < n_plain; i++)
        if (plain[i] >= 151643) {
            FAIL("special id %lld from text with parse_special = false", (long long)plain[i]);
            break;
        }
    /* decode with skip_special drops exactly the special tokens */
    char *out = NULL;
    size_t len = 0;
    CHECK(tok_decode(t, ids, n, true, &out, &len) == VLM_OK);
    CHECK(out &&
          strcmp(out, "system\nYou are a helpful assistant.\nuser\n\nWhat is shown in this image?\nassistant\n") == 0);
    free(out);
    CHECK(tok_decode(t, ids, n, false, &out, &len) == VLM_OK);
    CHECK(out && len == sizeof prompt - 1 && memcmp(out, prompt, len) == 0);
    free(out);
    free(ids);
    free(plain);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Merges in both forms; heap merge against a naive BPE
 * ------------------------------------------------------------------------------------------------------------- */

/* Reads a whole file (FAIL on error). */
static char *slurp(const char *path, size_t *len) {
    char *buf = NULL;
    test_capture_begin();
    enum vlm_status st = vlm_file_read_all(path, 256u << 20, &buf, len);
    char err[256];
    test_capture_end(err, sizeof err);
    if (st != VLM_OK) FAIL("cannot read %s: %s", path, err);
    return buf;
}

TEST(tok_qwen2_merges_string_form) {
    const struct vlm_tokenizer *t = qwen();
    struct corpus c;
    if (!t || !corpus_load(&c)) return;
    size_t len = 0;
    char *text = slurp(test_qwen2_tokenizer_path(), &len);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "merges");
    if (!CHECK(cJSON_IsArray(merges) && cJSON_GetArraySize(merges) == 151387)) {
        cJSON_Delete(root);
        golden_free(&c.g);
        return;
    }
    CHECK(cJSON_IsArray(merges->child)); /* the fixture uses pairs; convert to "a b" */
    cJSON *strs = cJSON_CreateArray();
    for (cJSON *m = merges->child; m; m = m->next) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s %s", cJSON_GetArrayItem(m, 0)->valuestring,
                 cJSON_GetArrayItem(m, 1)->valuestring);
        cJSON_AddItemToArray(strs, cJSON_CreateString(buf));
    }
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "merges", strs);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    const char *path = test_tmp_path("merges_as_strings.json");
    test_write_file(path, out, strlen(out));
    free(out);
    struct vlm_tokenizer *t2 = NULL;
    if (!CHECK(tok_load_file(path, &t2) == VLM_OK)) {
        golden_free(&c.g);
        return;
    }
    CHECK_EQ(tok_vocab_size(t2), tok_vocab_size(t));
    size_t bad = 0;
    for (size_t i = 0; i < c.n; i++) {
        const char *s = (const char *)c.text + c.text_off[i];
        size_t n = (size_t)(c.text_off[i + 1] - c.text_off[i]);
        int64_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        tok_encode(t, s, n, true, &a, &na);
        tok_encode(t2, s, n, true, &b, &nb);
        if (!a || !b || na != nb || memcmp(a, b, na * sizeof *a) != 0) bad++;
        free(a);
        free(b);
    }
    CHECK_EQ(bad, 0);
    tok_free(t2);
    golden_free(&c.g);
}

/* Naive BPE over token strings: merge the lowest-ranked adjacent pair (leftmost on ties) until none is left. */
struct naive {
    char **keys; /* "left\x01right" */
    int64_t *ranks;
    size_t mask;
};

static uint64_t naive_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int64_t naive_rank(const struct naive *nv, const char *a, const char *b) {
    char key[1024];
    snprintf(key, sizeof key, "%s\x01%s", a, b);
    for (size_t i = naive_hash(key) & nv->mask; nv->keys[i]; i = (i + 1) & nv->mask)
        if (strcmp(nv->keys[i], key) == 0) return nv->ranks[i];
    return -1;
}

static bool naive_build(struct naive *nv, const cJSON *merges) {
    size_t n = (size_t)cJSON_GetArraySize(merges), cap = 1;
    while (cap < 2 * n) cap *= 2;
    nv->keys = calloc(cap, sizeof *nv->keys);
    nv->ranks = calloc(cap, sizeof *nv->ranks);
    nv->mask = cap - 1;
    if (!nv->keys || !nv->ranks) return false;
    int64_t r = 0;
    for (const cJSON *m = merges->child; m; m = m->next, r++) {
        char key[1024];
        snprintf(key, sizeof key, "%s\x01%s", cJSON_GetArrayItem(m, 0)->valuestring,
                 cJSON_GetArrayItem(m, 1)->valuestring);
        size_t i = naive_hash(key) & nv->mask;
        while (nv->keys[i] && strcmp(nv->keys[i], key) != 0) i = (i + 1) & nv->mask;
        if (!nv->keys[i]) nv->keys[i] = strdup(key);
        nv->ranks[i] = r;
    }
    return true;
}

static void naive_free(struct naive *nv) {
    for (size_t i = 0; nv->keys && i <= nv->mask; i++) free(nv->keys[i]);
    free(nv->keys);
    free(nv->ranks);
}

/* GPT-2 bytes_to_unicode, written out independently of bpe.c. */
static uint32_t gpt2_cp(unsigned b) {
    static uint32_t map[256];
    if (!map['!']) {
        unsigned n = 0;
        for (unsigned x = 0; x < 256; x++) {
            bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
            map[x] = printable ? x : 256 + n++;
        }
    }
    return map[b];
}

/* Ids of a single-piece word by naive BPE; returns the count (0 on failure). */
static size_t naive_encode(const struct naive *nv, const struct vlm_tokenizer *t, const unsigned char *w, size_t n,
                           int64_t *out) {
    char **sym = calloc(n, sizeof *sym);
    size_t m = n;
    for (size_t i = 0; i < n; i++) {
        sym[i] = malloc(8);
        size_t l = uni_utf8_put(gpt2_cp(w[i]), (unsigned char *)sym[i]);
        sym[i][l] = '\0';
    }
    for (;;) {
        int64_t best = -1;
        size_t at = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            int64_t r = naive_rank(nv, sym[i], sym[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) {
                best = r;
                at = i;
            }
        }
        if (best < 0) break;
        size_t la = strlen(sym[at]), lb = strlen(sym[at + 1]);
        char *joined = malloc(la + lb + 1);
        memcpy(joined, sym[at], la);
        memcpy(joined + la, sym[at + 1], lb + 1);
        free(sym[at]);
        free(sym[at + 1]);
        sym[at] = joined;
        memmove(sym + at + 1, sym + at + 2, (m - at - 2) * sizeof *sym);
        m--;
    }
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        out[k++] = tok_token_to_id(t, sym[i]);
        free(sym[i]);
    }
    free(sym);
    return k;
}

TEST(tok_qwen2_merge_vs_naive) {
    const struct vlm_tokenizer *t = qwen();
    if (!t) return;
    size_t len = 0;
    char *text = slurp(test_qwen2_tokenizer_path(), &len);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "merges");
    struct naive nv = {0};
    if (!CHECK(cJSON_IsArray(merges) && naive_build(&nv, merges))) {
        cJSON_Delete(root);
        naive_free(&nv);
        return;
    }
    /* single pieces (letters only, optionally one leading space) up to 600 bytes: many merge orders */
    static const char *const alphabets[] = {"aeiourstln", "ab", "a", "xyzqkjw", "\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97"};
    uint64_t seed = 12345;
    size_t bad = 0, n_words = 0;
    unsigned char w[700];
    int64_t want[700], *got = NULL;
    for (int round = 0; round < 150; round++) {
        const char *alpha = alphabets[round % 5];
        size_t na = strlen(alpha), n = 0;
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t target = 1 + (size_t)(seed >> 33) % (round < 100 ? 40 : 600);
        if (round & 1) w[n++] = ' ';
        while (n < target) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t k = (size_t)(seed >> 33) % na;
            if (round % 5 == 4) k -= k % 3; /* whole 3-byte characters */
            size_t l = round % 5 == 4 ? 3 : 1;
            memcpy(w + n, alpha + k, l);
            n += l;
        }
        size_t nw = naive_encode(&nv, t, w, n, want), ng = 0;
        n_words++;
        if (tok_encode(t, (const char *)w, n, false, &got, &ng) != VLM_OK || ng != nw ||
            memcmp(got, want, nw * sizeof *want) != 0) {
            if (bad++ < 3) {
                FAIL("word %d: heap BPE differs from naive BPE", round);
                print_bytes("word", w, n);
                print_ids("naive", want, nw);
                print_ids("heap ", got, ng);
            }
        }
        free(got);
        got = NULL;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(n_words, 150);
    naive_free(&nv);
    cJSON_Delete(root);
}

/* 1 MB without a space is one pre-token: the merge loop must stay O(m log m); the result must still round-trip. */
TEST(tok_qwen2_pathological) {
    const struct vlm_tokenizer *t = qwen();
    if (!t) return;
    char *s = malloc(1u << 20);
    uint64_t seed = 7;
    for (int kind = 0; kind < 3; kind++) {
        size_t n = kind == 2 ? (1u << 20) - (1u << 20) % 3 : 1u << 20; /* whole characters */
        for (size_t i = 0; i < n; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            s[i] = kind == 0 ? 'a' : kind == 1 ? "abcdefghij"[(seed >> 33) % 10] : "\xe4\xb8\xad"[i % 3];
        }
        double t0 = vlm_time_ms();
        int64_t *ids = NULL;
        size_t n_ids = 0;
        char *out = NULL;
        size_t len = 0;
        CHECK(tok_encode(t, s, n, true, &ids, &n_ids) == VLM_OK);
        double ms = vlm_time_ms() - t0;
        CHECK(tok_decode(t, ids, n_ids, false, &out, &len) == VLM_OK);
        CHECK(len == n && out && memcmp(out, s, n) == 0);
        CHECK(n_ids > 0 && n_ids < n);
        if (test_verbose()) fprintf(stderr, "  1 MB single piece (kind %d): %zu ids in %.0f ms\n", kind, n_ids, ms);
        CHECK(ms < 20000); /* quadratic would take hours; this bound holds under ASan too */
        free(ids);
        free(out);
    }
    free(s);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Pre-tokenizer
 * ------------------------------------------------------------------------------------------------------------- */

/* Splits from HF tokenizers 0.23.3 Split(Qwen2 regex, Isolated); Python `regex` 2026.5.9 findall gives the same. */
/* clang-format off */
static const struct {
    const char *text;
    const char *pieces[16];
} k_pretok_cases[] = {
    {"Hello, world!", {"Hello", ",", " world", "!"}},
    {"don't", {"don", "'t"}},
    {"DON'T", {"DON", "'T"}},
    {"I'm we're they've it'll he'd she's", {"I", "'m", " we", "'re", " they", "'ve", " it", "'ll", " he", "'d", " she", "'s"}},
    {"'s'S'T'Re'vE'M'LL'D", {"'s", "'S", "'T", "'Re", "'vE", "'M", "'LL", "'D"}},
    {"'ll'l 'x", {"'ll", "'l", " '", "x"}},
    {"'\xc5\xbft", {"'\xc5\xbf", "t"}},
    {"'\xc5\xbf", {"'\xc5\xbf"}},
    {"rock'n'roll", {"rock", "'n", "'roll"}},
    {"x''s", {"x", "''", "s"}},
    {"12345", {"1", "2", "3", "4", "5"}},
    {"3.14159", {"3", ".", "1", "4", "1", "5", "9"}},
    {"\xd9\xa3\xd9\xa4\xd9\xa5 \xe2\x85\x93\xc2\xb2", {"\xd9\xa3", "\xd9\xa4", "\xd9\xa5", " ", "\xe2\x85\x93", "\xc2\xb2"}},
    {"a1b2", {"a", "1", "b", "2"}},
    {" 42", {" ", "4", "2"}},
    {"a  b", {"a", " ", " b"}},
    {"a   b", {"a", "  ", " b"}},
    {"a \tb", {"a", " ", "\tb"}},
    {"a\t\tb", {"a", "\t", "\tb"}},
    {"  ", {"  "}},
    {"a  ", {"a", "  "}},
    {" ", {" "}},
    {"\t", {"\t"}},
    {"   x", {"  ", " x"}},
    {"a\nb", {"a", "\n", "b"}},
    {"a\n\nb", {"a", "\n\n", "b"}},
    {"a \n b", {"a", " \n", " b"}},
    {"a  \n\n  b", {"a", "  \n\n", " ", " b"}},
    {"\r\n", {"\r\n"}},
    {"x\r\n\r\ny", {"x", "\r\n\r\n", "y"}},
    {" \n", {" \n"}},
    {"a\n ", {"a", "\n", " "}},
    {"\n\n\n", {"\n\n\n"}},
    {"...", {"..."}},
    {" ...", {" ..."}},
    {"  ...", {" ", " ..."}},
    {"!!!\n\nx", {"!!!\n\n", "x"}},
    {" \x3f!\r\n", {" \x3f!\r\n"}},
    {"(x)", {"(x", ")"}},
    {"$100", {"$", "1", "0", "0"}},
    {"--help", {"--", "help"}},
    {"a--b", {"a", "--", "b"}},
    {" hello", {" hello"}},
    {"\thello", {"\thello"}},
    {"\xc2\xa0hello", {"\xc2\xa0hello"}},
    {"\xe3\x80\x80hello", {"\xe3\x80\x80hello"}},
    {"\xe2\x80\xa8x", {"\xe2\x80\xa8x"}},
    {"\xc2\x85x", {"\xc2\x85x"}},
    {"\nhello", {"\n", "hello"}},
    {"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6", {"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6"}},
    {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88", {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88"}},
    {"\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xed\x85\x8d\xec\x8a\xa4\xed\x8a\xb8", {"\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4", " \xed\x85\x8d\xec\x8a\xa4\xed\x8a\xb8"}},
    {"\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80", {"\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82", " \xd0\xbc\xd0\xb8\xd1\x80"}},
    {"\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84\xd9\x85", {"\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7", " \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84\xd9\x85"}},
    {"e\xcc\x81", {"e", "\xcc\x81"}},
    {"\xf0\x9f\x98\x80\xf0\x9f\x98\x80", {"\xf0\x9f\x98\x80\xf0\x9f\x98\x80"}},
    {" \xf0\x9f\x98\x80", {" \xf0\x9f\x98\x80"}},
    {"a\xf0\x9f\x98\x80""b", {"a", "\xf0\x9f\x98\x80""b"}},
    {"x\xe2\x80\x8dy", {"x", "\xe2\x80\x8dy"}},
    {"\xef\xbb\xbfx", {"\xef\xbb\xbfx"}},
    {"\x01\x02x", {"\x01\x02", "x"}},
    {"\x1c\x1d x", {"\x1c\x1d", " x"}},
    {"\xe1\xb2\x89\xe1\xb2\x8a", {"\xe1\xb2\x89\xe1\xb2\x8a"}},
    {"\xf0\x96\xb5\xb0\xf0\x96\xb5\xb1", {"\xf0\x96\xb5\xb0", "\xf0\x96\xb5\xb1"}},
    {"\xe0\xae\x95\xe0\xaf\x8d\xe0\xae\xb7", {"\xe0\xae\x95", "\xe0\xaf\x8d\xe0\xae\xb7"}},
    {"\xe0\xa4\xa8\xe0\xa4\xbc", {"\xe0\xa4\xa8", "\xe0\xa4\xbc"}},
};
/* clang-format on */

TEST(tok_pretokenize_cases) {
    for (size_t c = 0; c < sizeof k_pretok_cases / sizeof k_pretok_cases[0]; c++) {
        const unsigned char *s = (const unsigned char *)k_pretok_cases[c].text;
        size_t n = strlen(k_pretok_cases[c].text), i = 0, k = 0;
        bool ok = true;
        while (i < n) {
            size_t j = uni_qwen2_piece_end(s, n, i);
            const char *want = k_pretok_cases[c].pieces[k];
            if (j <= i || j > n || !want || strlen(want) != j - i || memcmp(want, s + i, j - i) != 0) {
                ok = false;
                break;
            }
            i = j;
            k++;
        }
        if (ok && k_pretok_cases[c].pieces[k]) ok = false;
        if (!ok) {
            FAIL("pre-tokenizer case %zu: piece %zu differs", c, k);
            print_bytes("text", s, n);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Unicode helpers
 * ------------------------------------------------------------------------------------------------------------- */

/* Python bytes.decode("utf-8", "replace") on each input (worked out from Unicode §3.9, checked in Python). */
TEST(tok_utf8_repair) {
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"abc", "abc"},
        {"\xe4\xb8", "\xef\xbf\xbd"},                                             /* truncated: one U+FFFD */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},                 /* surrogate: three */
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                                 /* overlong: two */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"\xf0\x9f\x98\x20", "\xef\xbf\xbd "},                                    /* cut by a space */
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe2\x82\xac\x80", "\xe2\x82\xac\xef\xbf\xbd"},
        {"\xf0\x9f\x91\x8d\xf0\x9f\x91\xe2\x80\x8d", "\xf0\x9f\x91\x8d\xef\xbf\xbd\xe2\x80\x8d"}, /* same length! */
        {"\xff\xfe", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"a\xe1\x80", "a\xef\xbf\xbd"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const unsigned char *in = (const unsigned char *)cases[c].in;
        size_t n = strlen(cases[c].in);
        bool valid = true;
        size_t rl = uni_utf8_repaired_len(in, n, &valid);
        unsigned char out[64];
        CHECK(rl == strlen(cases[c].out));
        CHECK(valid == (c == 0));
        if (rl <= sizeof out) {
            uni_utf8_repair(in, n, out);
            if (memcmp(out, cases[c].out, rl) != 0) FAIL("repair case %zu differs", c);
        }
    }
}

/* utf8proc's Unicode version is the one the compatibility tables in unicode.c were derived against; and a few
 * code points where HF and utf8proc 2.8 disagree behave as HF does. */
TEST(tok_unicode_version) {
    if (strcmp(uni_utf8proc_version(), "15.0.0") != 0)
        FAIL("utf8proc reports Unicode %s; re-derive the tables in tokenizer/unicode.c (see its header) for it",
             uni_utf8proc_version());
    CHECK_EQ(uni_class(0x1C89), UNI_L);  /* Unicode 16 letter: HF's regex knows it */
    CHECK_EQ(uni_class(0x16D70), UNI_N); /* Unicode 16 digit */
    CHECK_EQ(uni_class(0x0378), 0);      /* unassigned */
    CHECK_EQ(uni_class(0x00A0), UNI_WS); /* NBSP is White_Space */
    CHECK_EQ(uni_class(0x200B), 0);      /* ZWSP is not */
    CHECK_EQ(uni_class(0x180E), 0);      /* nor MONGOLIAN VOWEL SEPARATOR (since Unicode 6.3) */
    CHECK_EQ(uni_class(0x0085), UNI_WS);
    CHECK_EQ(uni_class('\r'), UNI_WS | UNI_CRLF);
    static const struct {
        const char *in, *out;
    } nfc[] = {
        {"e\xcc\x81", "\xc3\xa9"},                  /* e + acute -> é */
        {"a\xcc\x96\xcc\x81", "\xc3\xa1\xcc\x96"},  /* reordered by class, then composed */
        {"a\xdf\xbd\xcc\x81", "a\xdf\xbd\xcc\x81"}, /* U+07FD: unknown to HF: blocks */
        {"\xf0\x91\xa4\xb5\xf0\x91\xa4\xb0", "\xf0\x91\xa4\xb5\xf0\x91\xa4\xb0"}, /* U+11935 U+11930 stay */
        {"\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81"},                 /* conjoining jamo -> 각 */
        {"\xe2\x84\xab", "\xc3\x85"},                                             /* Angstrom sign -> Å */
    };
    for (size_t c = 0; c < sizeof nfc / sizeof nfc[0]; c++) {
        unsigned char *out = NULL;
        size_t n = 0;
        if (!CHECK(uni_nfc((const unsigned char *)nfc[c].in, strlen(nfc[c].in), &out, &n) == VLM_OK)) continue;
        if (n != strlen(nfc[c].out) || memcmp(out, nfc[c].out, n) != 0) FAIL("NFC case %zu differs", c);
        free(out);
    }
}

/* The class-0 "second half" table in unicode.c, recomputed from the linked utf8proc; and uni_nfc (which sends only
 * the stretches NFC may change through utf8proc) against utf8proc on whole strings without HF-inert characters. */
TEST(tok_nfc_tables) {
    size_t missing = 0, extra = 0;
    static uint8_t second[0x110000];
    memset(second, 0, sizeof second);
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        utf8proc_int32_t d[32];
        int last = 0;
        utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, d, 32, UTF8PROC_DECOMPOSE, &last);
        for (utf8proc_ssize_t i = 1; i < n && n <= 32; i++)
            if (utf8proc_get_property(d[i])->combining_class == 0) second[d[i]] = 1;
    }
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        bool want = second[cp], got = uni_nfc_starter_second(cp);
        if (want && !got && missing++ < 3) FAIL("U+%04X composes with its predecessor but is not in the table", cp);
        if (!want && got && extra++ < 3) FAIL("U+%04X is in the table but is no second half", cp);
    }
    CHECK_EQ(missing, 0);
    CHECK_EQ(extra, 0);

    static const uint32_t pool[] = {'a',    'e',    'o',    'A',    ' ',     '.',    0x300,  0x301,  0x308,
                                    0x316,  0x327,  0x345,  0x5B0,  0x93C,   0xE38,  0x3099, 0x309A, 0x304B,
                                    0x30AB, 0x1100, 0x1161, 0x11A8, 0xAC00,  0xAC01, 0x0BC6, 0x0BBE, 0x0CC6,
                                    0x0CC2, 0x0CD5, 0x0F71, 0x0F72, 0x0F80,  0x212B, 0x00C5, 0x1E0A, 0x0323,
                                    0x03B1, 0x1F00, 0x0344, 0x4E2D, 0x1F600, 0xFB2C};
    uint64_t seed = 99;
    size_t bad = 0;
    for (int k = 0; k < 20000; k++) {
        unsigned char s[64];
        size_t n = 0;
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int len = 1 + (int)((seed >> 33) % 10);
        for (int j = 0; j < len; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            n += uni_utf8_put(pool[(seed >> 33) % (sizeof pool / sizeof pool[0])], s + n);
        }
        unsigned char *a = NULL;
        utf8proc_uint8_t *b = NULL;
        size_t na = 0;
        utf8proc_ssize_t nb = utf8proc_map(s, (utf8proc_ssize_t)n, &b, UTF8PROC_COMPOSE | UTF8PROC_STABLE);
        if (uni_nfc(s, n, &a, &na) != VLM_OK || nb < 0 || na != (size_t)nb || memcmp(a, b, na) != 0) {
            if (bad++ < 3) {
                FAIL("uni_nfc differs from utf8proc_map");
                print_bytes("text", s, n);
            }
        }
        free(a);
        free(b);
    }
    CHECK_EQ(bad, 0);
}

/* ---------------------------------------------------------------------------------------------------------------
 * A small synthetic tokenizer (the same JSON, loaded by HF tokenizers 0.23.3, gave the expected ids below)
 * ------------------------------------------------------------------------------------------------------------- */

static const char k_qwen2_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

static void put_cp(char *buf, uint32_t cp) { buf[uni_utf8_put(cp, (unsigned char *)buf)] = '\0'; }

/* Vocab: the 256 byte tokens (id = byte), then the merges' results in order, then "abc" when ignore_merges;
 * merges as pairs or "a b" strings; added tokens <|im_start|>, <|im_end|> (special), <tool>, <|im (not special),
 * ǹ (U+01F9, normalized). */
static cJSON *mini_json(bool ignore_merges, bool string_merges) {
    static const char *const merges[][2] = {
        {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"a", "a"},
        {"aa", "aa"},      {"l", "l"}, {"'", "ll"},         {"\xc3\x83", "\xc2\xa9"}};
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject(),
          *ml = cJSON_CreateArray(), *added = cJSON_CreateArray();
    int id = 0;
    for (unsigned b = 0; b < 256; b++) {
        char k[8];
        put_cp(k, gpt2_cp(b));
        cJSON_AddNumberToObject(vocab, k, id++);
    }
    for (size_t m = 0; m < sizeof merges / sizeof merges[0]; m++) {
        char k[64];
        snprintf(k, sizeof k, "%s%s", merges[m][0], merges[m][1]);
        cJSON_AddNumberToObject(vocab, k, id++);
        if (string_merges) {
            snprintf(k, sizeof k, "%s %s", merges[m][0], merges[m][1]);
            cJSON_AddItemToArray(ml, cJSON_CreateString(k));
        } else {
            cJSON_AddItemToArray(ml, cJSON_CreateStringArray(merges[m], 2));
        }
    }
    if (ignore_merges) cJSON_AddNumberToObject(vocab, "abc", id++);
    static const struct {
        const char *content;
        bool special, normalized;
    } adds[] = {{"<|im_start|>", true, false},
                {"<|im_end|>", true, false},
                {"<tool>", false, false},
                {"<|im", false, false},
                {"\xc7\xb9", false, true}};
    for (size_t a = 0; a < sizeof adds / sizeof adds[0]; a++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", id++);
        cJSON_AddStringToObject(t, "content", adds[a].content);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", adds[a].normalized);
        cJSON_AddBoolToObject(t, "special", adds[a].special);
        cJSON_AddItemToArray(added, t);
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON *norm = cJSON_CreateObject();
    cJSON_AddStringToObject(norm, "type", "NFC");
    cJSON_AddItemToObject(root, "normalizer", norm);
    cJSON *pre = cJSON_CreateObject(), *seq = cJSON_CreateArray(), *split = cJSON_CreateObject(),
          *pat = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", k_qwen2_regex);
    cJSON_AddItemToObject(split, "pattern", pat);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "trim_offsets", 0);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON_AddItemToArray(seq, split);
    cJSON_AddItemToArray(seq, bl);
    cJSON_AddItemToObject(pre, "pretokenizers", seq);
    cJSON_AddItemToObject(root, "pre_tokenizer", pre);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", cJSON_Duplicate(bl, 1));
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
    cJSON_AddStringToObject(model, "end_of_word_suffix", "");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", ignore_merges);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", ml);
    cJSON_AddItemToObject(root, "model", model);
    return root;
}

/* Writes j as name in the temp folder (j is freed) and returns the path. */
static const char *write_json(const char *name, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    const char *path = test_tmp_path(name);
    test_write_file(path, s, strlen(s));
    free(s);
    return path;
}

static bool ids_equal(const struct vlm_tokenizer *t, const char *text, bool parse_special, const int64_t *want,
                      size_t n_want) {
    int64_t *ids = NULL;
    size_t n = 0;
    bool ok = tok_encode(t, text, strlen(text), parse_special, &ids, &n) == VLM_OK && n == n_want &&
              memcmp(ids, want, n * sizeof *ids) == 0;
    if (!ok) {
        FAIL("encode(\"%s\", parse_special=%d) differs", text, parse_special);
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    free(ids);
    return ok;
}

#define IDS(...) ((const int64_t[]){__VA_ARGS__}), sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)

TEST(tok_mini_encode) {
    for (int form = 0; form < 2; form++) {
        struct vlm_tokenizer *t = NULL;
        if (!CHECK(tok_load_file(write_json("mini.json", mini_json(false, form)), &t) == VLM_OK)) return;
        CHECK_EQ(tok_vocab_size(t), 269);
        for (int ps = 0; ps < 2; ps++) { /* no special token in these: same ids either way */
            ids_equal(t, "the", ps, IDS(116, 257));
            ids_equal(t, " the", ps, IDS(258));
            ids_equal(t, " then the", ps, IDS(258, 110, 258));
            ids_equal(t, "aaaaaaa", ps, IDS(260, 259, 97));
            ids_equal(t, "they'll", ps, IDS(116, 257, 121, 262));
            ids_equal(t, "\xc3\xa9", ps, IDS(263));
            ids_equal(t, "e\xcc\x81", ps, IDS(263)); /* NFC first */
            ids_equal(t, "n\xcc\x80", ps, IDS(268)); /* normalized added token, matched after NFC */
            ids_equal(t, "an\u0300b", ps, IDS(97, 268, 98));
            ids_equal(t, "<tool>x", ps, IDS(266, 120)); /* non-special: split out even without parse_special */
            ids_equal(t, "<|imx", ps, IDS(267, 120));
            ids_equal(t, "abc", ps, IDS(97, 98, 99));
        }
        ids_equal(t, "<|im_start|>hi<|im_end|>", true, IDS(264, 104, 105, 265));
        ids_equal(t, "<|im_start|>hi<|im_end|>", false,
                  IDS(60, 124, 105, 109, 95, 115, 116, 97, 114, 116, 124, 62, 104, 105, 60, 124, 105, 109, 95, 101, 110,
                      100, 124, 62));
        /* leftmost-longest: "<|im_start|>" wins over "<|im"; as text it is not searched again for "<|im" */
        ids_equal(t, "<|im_start|>", true, IDS(264));
        ids_equal(t, "<|im_start|>", false, IDS(60, 124, 105, 109, 95, 115, 116, 97, 114, 116, 124, 62));
        ids_equal(t, "x<|im_end|>\xc3\xa9", true, IDS(120, 265, 263));
        CHECK_EQ(tok_token_to_id(t, "<tool>"), 266);
        CHECK_EQ(tok_token_to_id(t, "\xc4\xa0the"), 258);
        /* decode: skip_special drops special tokens only; a lone 0xC3 byte becomes U+FFFD */
        static const int64_t ids[] = {264, 116, 265, 266, 268, 195, 10};
        char *out = NULL;
        size_t n = 0;
        CHECK(tok_decode(t, ids, 7, true, &out, &n) == VLM_OK);
        CHECK(out && strcmp(out, "t<tool>\xc7\xb9\xef\xbf\xbd\n") == 0);
        free(out);
        CHECK(tok_decode(t, ids, 7, false, &out, &n) == VLM_OK);
        CHECK(out && strcmp(out, "<|im_start|>t<|im_end|><tool>\xc7\xb9\xef\xbf\xbd\n") == 0);
        free(out);
        /* embedded NUL and the empty string */
        int64_t *e = NULL;
        size_t ne = 9;
        CHECK(tok_encode(t, "a\0b", 3, true, &e, &ne) == VLM_OK && ne == 3 && e[1] == 0);
        free(e);
        CHECK(tok_encode(t, "", 0, true, &e, &ne) == VLM_OK && ne == 0);
        free(e);
        CHECK(tok_decode(t, NULL, 0, false, &out, &n) == VLM_OK && n == 0 && out[0] == '\0');
        free(out);
        tok_free(t);
    }
}

TEST(tok_mini_ignore_merges) {
    struct vlm_tokenizer *t = NULL;
    if (!CHECK(tok_load_file(write_json("mini_im.json", mini_json(true, false)), &t) == VLM_OK)) return;
    ids_equal(t, "abc", true, IDS(264));             /* the whole piece is a token */
    ids_equal(t, " abc", true, IDS(32, 97, 98, 99)); /* " abc" is not: BPE as usual */
    ids_equal(t, "aaaaaaa", true, IDS(260, 259, 97));
    ids_equal(t, "<|im_start|>hi<|im_end|>", true, IDS(265, 104, 105, 266));
    tok_free(t);
}

/* Streaming across characters split over byte tokens (the mini vocab has one token per byte). */
TEST(tok_stream_split_chars) {
    struct vlm_tokenizer *t = NULL;
    if (!CHECK(tok_load_file(write_json("mini_stream.json", mini_json(false, false)), &t) == VLM_OK)) return;
    struct tok_stream s;
    char out[64];
    tok_stream_init(&s, t, false);
    /* 😀 = F0 9F 98 80, one byte token each: nothing until the last byte */
    CHECK_EQ(tok_stream_push(&s, 0xF0, out, sizeof out), 0);
    CHECK_EQ(tok_stream_push(&s, 0x9F, out, sizeof out), 0);
    CHECK_EQ(tok_stream_push(&s, 0x98, out, sizeof out), 0);
    CHECK(tok_stream_push(&s, 0x80, out, sizeof out) == 4 && memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
    /* E4 B8 then 'A': the held bytes can no longer complete: one U+FFFD, then A */
    CHECK_EQ(tok_stream_push(&s, 0xE4, out, sizeof out), 0);
    CHECK_EQ(tok_stream_push(&s, 0xB8, out, sizeof out), 0);
    CHECK(tok_stream_push(&s, 'A', out, sizeof out) == 4 && memcmp(out, "\uFFFDA", 4) == 0);
    /* a lone continuation byte is invalid at once */
    CHECK(tok_stream_push(&s, 0x80, out, sizeof out) == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0);
    /* a special token between two halves does not break the character when skipped ... */
    CHECK_EQ(tok_stream_push(&s, 0xC3, out, sizeof out), 0);
    struct tok_stream s2 = s;
    s2.skip_special = true;
    CHECK_EQ(tok_stream_push(&s2, 264, out, sizeof out), 0);
    CHECK(tok_stream_push(&s2, 0xA9, out, sizeof out) == 2 && memcmp(out, "\xc3\xa9", 2) == 0);
    /* ... and does when kept: U+FFFD, the token text, then U+FFFD for the orphan continuation */
    CHECK(tok_stream_push(&s, 264, out, sizeof out) == 15 && memcmp(out, "\xef\xbf\xbd<|im_start|>", 15) == 0);
    CHECK(tok_stream_push(&s, 0xA9, out, sizeof out) == 3);
    /* flush: a held prefix becomes one U+FFFD; nothing held: nothing */
    CHECK_EQ(tok_stream_push(&s, 0xF0, out, sizeof out), 0);
    CHECK_EQ(tok_stream_push(&s, 0x9F, out, sizeof out), 0);
    CHECK(tok_stream_flush(&s, out, sizeof out) == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0);
    CHECK_EQ(tok_stream_flush(&s, out, sizeof out), 0);
    /* an output buffer that is too small: -1, one error line, nothing consumed */
    char err[256];
    test_capture_begin();
    int64_t r = tok_stream_push(&s, 264, out, 4);
    test_capture_end(err, sizeof err);
    CHECK_EQ(r, -1);
    CHECK_ERROR_LINE(err, "too small", NULL);
    CHECK_EQ(tok_stream_push(&s, 264, out, sizeof out), 12);
    tok_free(t);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Errors: out-of-range ids, limits, malformed files
 * ------------------------------------------------------------------------------------------------------------- */

TEST(tok_decode_out_of_range) {
    struct vlm_tokenizer *t = NULL;
    if (!CHECK(tok_load_file(write_json("mini_range.json", mini_json(false, false)), &t) == VLM_OK)) return;
    static const int64_t bad_ids[] = {-1, 269, 1000000, INT64_MAX};
    for (size_t k = 0; k < sizeof bad_ids / sizeof bad_ids[0]; k++) {
        int64_t ids[3] = {97, bad_ids[k], 98};
        char *out = (char *)"untouched";
        size_t n = 12345;
        char err[256], idbuf[32];
        snprintf(idbuf, sizeof idbuf, "%lld", (long long)bad_ids[k]);
        test_capture_begin();
        enum vlm_status st = tok_decode(t, ids, 3, false, &out, &n);
        test_capture_end(err, sizeof err);
        CHECK_EQ(st, VLM_ERR_ARG);
        CHECK(n == 12345 && strcmp(out, "untouched") == 0);
        CHECK_ERROR_LINE(err, idbuf, "outside");
        struct tok_stream s;
        char piece[64];
        tok_stream_init(&s, t, false);
        test_capture_begin();
        int64_t r = tok_stream_push(&s, bad_ids[k], piece, sizeof piece);
        test_capture_end(err, sizeof err);
        CHECK_EQ(r, -1);
        CHECK_ERROR_LINE(err, idbuf, NULL);
    }
    tok_free(t);
}

TEST(tok_huge_input_refused) {
    struct vlm_tokenizer *t = NULL;
    if (!CHECK(tok_load_file(write_json("mini_huge.json", mini_json(false, false)), &t) == VLM_OK)) return;
    /* the length is checked before a byte is read: a tiny buffer with a huge length is safe to pass */
    static const char small[] = "abc";
    int64_t *ids = NULL;
    size_t n = 0;
    char err[256];
    test_capture_begin();
    enum vlm_status st = tok_encode(t, small, (size_t)TOK_MAX_TEXT_BYTES + 1, true, &ids, &n);
    test_capture_end(err, sizeof err);
    CHECK_EQ(st, VLM_ERR_ARG);
    CHECK(ids == NULL);
    CHECK_ERROR_LINE(err, "limit", NULL);
    tok_free(t);
}

static void write_text(const char *path, const char *text) { test_write_file(path, text, strlen(text)); }

/* Loads path expecting status want and one error line naming the file and containing needle. */
static void expect_load_error(const char *what, const char *path, enum vlm_status want, const char *needle) {
    struct vlm_tokenizer *t = NULL;
    char err[1024];
    test_capture_begin();
    enum vlm_status st = tok_load_file(path, &t);
    test_capture_end(err, sizeof err);
    if (st != want) FAIL("%s: status %d (%s), expected %d; stderr: %s", what, st, vlm_status_str(st), want, err);
    if (t) {
        FAIL("%s: the tokenizer was returned on failure", what);
        tok_free(t);
    }
    if (!test_check_error_line(err, path, needle, __FILE__, __LINE__)) fprintf(stderr, "    case: %s\n", what);
}

/* mini_json with one edit applied by fn, written and loaded, expecting want + needle. */
static void bad_variant(const char *what, void (*fn)(cJSON *root), enum vlm_status want, const char *needle) {
    cJSON *j = mini_json(false, false);
    fn(j);
    expect_load_error(what, write_json("bad.json", j), want, needle);
}

static cJSON *model_of(cJSON *r) { return cJSON_GetObjectItemCaseSensitive(r, "model"); }
static cJSON *vocab_of(cJSON *r) { return cJSON_GetObjectItemCaseSensitive(model_of(r), "vocab"); }
static cJSON *merges_of(cJSON *r) { return cJSON_GetObjectItemCaseSensitive(model_of(r), "merges"); }
static cJSON *added_at(cJSON *r, int k) {
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "added_tokens"), k);
}
static void set_item(cJSON *o, const char *key, cJSON *v) { cJSON_ReplaceItemInObjectCaseSensitive(o, key, v); }

static void e_wordpiece(cJSON *r) { set_item(model_of(r), "type", cJSON_CreateString("WordPiece")); }
static void e_no_type(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(model_of(r), "type"); }
static void e_gpt2_pre(cJSON *r) {
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "use_regex", 1);
    set_item(r, "pre_tokenizer", bl);
}
static void e_other_regex(cJSON *r) {
    cJSON *split = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "pre_tokenizer"), "pretokenizers"), 0);
    set_item(cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex",
             cJSON_CreateString("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"));
}
static void e_merged_behavior(cJSON *r) {
    cJSON *split = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "pre_tokenizer"), "pretokenizers"), 0);
    set_item(split, "behavior", cJSON_CreateString("MergedWithPrevious"));
}
static void e_nfkc(cJSON *r) {
    cJSON *n = cJSON_CreateObject();
    cJSON_AddStringToObject(n, "type", "NFKC");
    set_item(r, "normalizer", n);
}
static void e_no_decoder(cJSON *r) { set_item(r, "decoder", cJSON_CreateNull()); }
static void e_dup_id(cJSON *r) { set_item(vocab_of(r), "he", cJSON_CreateNumber(5)); }
static void e_id_range(cJSON *r) { set_item(vocab_of(r), "he", cJSON_CreateNumber(99999)); }
static void e_id_fraction(cJSON *r) { set_item(vocab_of(r), "he", cJSON_CreateNumber(257.5)); }
static void e_id_string(cJSON *r) { set_item(vocab_of(r), "he", cJSON_CreateString("257")); }
static void e_dup_token(cJSON *r) { /* cJSON keeps a repeated key: a second "he", ids still dense */
    cJSON_AddNumberToObject(vocab_of(r), "he", 264);
    set_item(r, "added_tokens", cJSON_CreateArray());
}
static void e_merge_unknown(cJSON *r) {
    static const char *const pair[2] = {"q", "zz"};
    cJSON_AddItemToArray(merges_of(r), cJSON_CreateStringArray(pair, 2));
}
static void e_merge_result(cJSON *r) {
    static const char *const pair[2] = {"x", "y"};
    cJSON_AddItemToArray(merges_of(r), cJSON_CreateStringArray(pair, 2));
}
static void e_merge_nospace(cJSON *r) { cJSON_AddItemToArray(merges_of(r), cJSON_CreateString("xy")); }
static void e_merge_one(cJSON *r) {
    static const char *const one[1] = {"x"};
    cJSON_AddItemToArray(merges_of(r), cJSON_CreateStringArray(one, 1));
}
static void e_no_byte(cJSON *r) { /* the token for byte 'A' renamed: ids stay dense */
    cJSON_DeleteItemFromObjectCaseSensitive(vocab_of(r), "A");
    cJSON_AddNumberToObject(vocab_of(r), "AAA", 'A');
}
static void e_small_vocab(cJSON *r) {
    cJSON *v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "a", 0);
    set_item(model_of(r), "vocab", v);
    set_item(model_of(r), "merges", cJSON_CreateArray());
}
static void e_added_collides(cJSON *r) { set_item(added_at(r, 2), "id", cJSON_CreateNumber(5)); }
static void e_added_gap(cJSON *r) { set_item(added_at(r, 2), "id", cJSON_CreateNumber(400)); }
static void e_added_dup_id(cJSON *r) { set_item(added_at(r, 2), "id", cJSON_CreateNumber(264)); }
static void e_added_dup_content(cJSON *r) { set_item(added_at(r, 2), "content", cJSON_CreateString("<|im_end|>")); }
static void e_added_lstrip(cJSON *r) { set_item(added_at(r, 1), "lstrip", cJSON_CreateTrue()); }
static void e_added_empty(cJSON *r) { set_item(added_at(r, 1), "content", cJSON_CreateString("")); }
static void e_byte_fallback(cJSON *r) { set_item(model_of(r), "byte_fallback", cJSON_CreateTrue()); }
static void e_no_vocab(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(model_of(r), "vocab"); }

TEST(tok_bad_files) {
    char err[512];
    /* missing file, via tok_load_file and via tok_load on an empty folder */
    expect_load_error("missing file", test_tmp_path("does_not_exist.json"), VLM_ERR_IO, "cannot open");
    const char *dir = test_tmpdir();
    struct vlm_tokenizer *t = NULL;
    test_capture_begin();
    enum vlm_status st = tok_load(dir, &t);
    test_capture_end(err, sizeof err);
    CHECK_EQ(st, VLM_ERR_IO);
    CHECK_ERROR_LINE(err, dir, "tokenizer.json");

    const char *p = test_tmp_path("empty.json");
    test_write_file(p, "", 0);
    expect_load_error("empty", p, VLM_ERR_FORMAT, "empty");
    p = test_tmp_path("garbage.json");
    write_text(p, "{\"model\": {\"type\": \"BPE\", ");
    expect_load_error("not JSON", p, VLM_ERR_FORMAT, "JSON");
    p = test_tmp_path("array.json");
    write_text(p, "[1, 2]");
    expect_load_error("JSON array", p, VLM_ERR_FORMAT, "JSON object");
    p = test_tmp_path("nomodel.json");
    write_text(p, "{\"version\": \"1.0\"}");
    expect_load_error("no model", p, VLM_ERR_FORMAT, "model");

    bad_variant("model.type WordPiece", e_wordpiece, VLM_ERR_UNSUPPORTED, "WordPiece");
    bad_variant("model.type missing", e_no_type, VLM_ERR_FORMAT, "model.type");
    bad_variant("GPT-2 pre-tokenizer", e_gpt2_pre, VLM_ERR_UNSUPPORTED, "pre_tokenizer");
    bad_variant("other split regex", e_other_regex, VLM_ERR_UNSUPPORTED, "Qwen2 regex");
    bad_variant("split behavior", e_merged_behavior, VLM_ERR_UNSUPPORTED, "Isolated");
    bad_variant("NFKC normalizer", e_nfkc, VLM_ERR_UNSUPPORTED, "NFKC");
    bad_variant("no decoder", e_no_decoder, VLM_ERR_UNSUPPORTED, "decoder");
    bad_variant("byte_fallback", e_byte_fallback, VLM_ERR_UNSUPPORTED, "byte_fallback");
    bad_variant("duplicate id", e_dup_id, VLM_ERR_FORMAT, "used twice");
    bad_variant("id out of range", e_id_range, VLM_ERR_FORMAT, "0 .. 263");
    bad_variant("fractional id", e_id_fraction, VLM_ERR_FORMAT, "not an integer");
    bad_variant("string id", e_id_string, VLM_ERR_FORMAT, "not an integer");
    bad_variant("duplicate token", e_dup_token, VLM_ERR_FORMAT, "appears twice");
    bad_variant("merge of unknown tokens", e_merge_unknown, VLM_ERR_FORMAT, "merges[8]");
    bad_variant("merge result not in vocab", e_merge_result, VLM_ERR_FORMAT, "merged token");
    bad_variant("merge string without space", e_merge_nospace, VLM_ERR_FORMAT, "merges[8]");
    bad_variant("merge pair of one", e_merge_one, VLM_ERR_FORMAT, "merges[8]");
    bad_variant("byte token missing", e_no_byte, VLM_ERR_FORMAT, "0x41");
    bad_variant("vocab too small", e_small_vocab, VLM_ERR_FORMAT, "entries");
    bad_variant("vocab missing", e_no_vocab, VLM_ERR_FORMAT, "model.vocab");
    bad_variant("added token collides", e_added_collides, VLM_ERR_FORMAT, "collides");
    bad_variant("added token id gap", e_added_gap, VLM_ERR_FORMAT, "dense");
    bad_variant("added token id twice", e_added_dup_id, VLM_ERR_FORMAT, "twice");
    bad_variant("added token content twice", e_added_dup_content, VLM_ERR_FORMAT, "repeats");
    bad_variant("added token lstrip", e_added_lstrip, VLM_ERR_UNSUPPORTED, "lstrip");
    bad_variant("added token empty", e_added_empty, VLM_ERR_FORMAT, "content");

    /* over the 64 MB cap: refused before reading (a sparse file) */
    p = test_tmp_path("huge.json");
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (CHECK(fd >= 0)) {
        CHECK(ftruncate(fd, (64 << 20) + 1) == 0);
        close(fd);
        expect_load_error("file over the cap", p, VLM_ERR_FORMAT, "allowed");
    }
}

/* tok_load prefers tokenizer.json in a folder; a JSON file under another name is recognised by its content. */
TEST(tok_load_dir) {
    const char *p = write_json("tokenizer.json", mini_json(false, false));
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", p);
    *strrchr(dir, '/') = '\0';
    struct vlm_tokenizer *t = NULL;
    if (CHECK(tok_load(dir, &t) == VLM_OK)) {
        CHECK_EQ(tok_get_kind(t), TOK_KIND_BPE);
        CHECK_EQ(tok_vocab_size(t), 269);
        CHECK_EQ(tok_special_ids(t)->im_start, 264);
        CHECK_EQ(tok_special_ids(t)->im_end, 265);
        CHECK_EQ(tok_special_ids(t)->eos, 265);
        CHECK_EQ(tok_special_ids(t)->image, -1);
        tok_free(t);
    }
    cJSON *j = mini_json(false, false);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    const char *q = test_tmp_path("tokenizer.data");
    test_write_file(q, "\n  ", 3);
    FILE *f = fopen(q, "ab");
    if (f) {
        fputs(s, f);
        fclose(f);
    }
    free(s);
    t = NULL;
    if (CHECK(tok_load_file(q, &t) == VLM_OK)) CHECK_EQ(tok_get_kind(t), TOK_KIND_BPE);
    tok_free(t);
    tok_free(NULL);
}
