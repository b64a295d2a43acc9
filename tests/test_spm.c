/* test_spm.c — the SentencePiece tokenizer (tokenizer/spm.c over spm_wrap.cc) against the sentencepiece Python
 * package: every string of tests/golden/tok_spm_corpus.bin encodes to the package's ids and those ids decode (through
 * tok_decode) to the package's text; the piece bytes, special ids and the parse_special switch behave as
 * tok_internal.h says; and bad model files give one error line naming the file, never a crash. The model is
 * tests/data/tokenizers/spm/tokenizer.model (see tests/golden/TOKENIZER_MANIFEST.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "test.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/tokenizer.h"

#define SPM_MODEL "tests/data/tokenizers/spm/tokenizer.model"

/* The corpus as views into the golden records. */
struct spm_corpus {
    struct golden_file g;
    const uint8_t *text, *decoded;
    const int64_t *text_off, *ids, *ids_off, *dec_off;
    int64_t n;
};

static bool corpus_load(struct spm_corpus *c) {
    memset(c, 0, sizeof *c);
    if (golden_load("tests/golden/tok_spm_corpus.bin", &c->g) != 0) return false;
    const struct golden_tensor *tb = golden_get(&c->g, "text_bytes", GOLDEN_U8),
                               *to = golden_get(&c->g, "text_offsets", GOLDEN_I64),
                               *ids = golden_get(&c->g, "ids", GOLDEN_I64),
                               *io = golden_get(&c->g, "ids_offsets", GOLDEN_I64),
                               *db = golden_get(&c->g, "decoded_bytes", GOLDEN_U8),
                               *dof = golden_get(&c->g, "decoded_offsets", GOLDEN_I64);
    if (!tb || !to || !ids || !io || !db || !dof) return false;
    c->n = to->n - 1;
    if (!CHECK(c->n > 500 && io->n == to->n && dof->n == to->n)) return false;
    c->text = tb->data, c->text_off = to->data, c->ids = ids->data, c->ids_off = io->data;
    c->decoded = db->data, c->dec_off = dof->data;
    return true;
}

/* Prints a string with non-printable bytes escaped, for failure messages. */
static void print_escaped(const char *label, const uint8_t *p, int64_t n) {
    fprintf(stderr, "  %s: \"", label);
    for (int64_t i = 0; i < n && i < 200; i++)
        fprintf(stderr, p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' ? "%c" : "\\x%02x", p[i]);
    fprintf(stderr, "%s\"\n", n > 200 ? "..." : "");
}

static void print_ids(const char *label, const int64_t *ids, int64_t n) {
    fprintf(stderr, "  %s (%lld):", label, (long long)n);
    for (int64_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %lld", (long long)ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static struct spm_model *load_model(struct tok_special *sp, int64_t *vocab) {
    struct spm_model *m = NULL;
    if (!CHECK_EQ(spm_load(test_path(SPM_MODEL), &m, sp, vocab), VLM_OK)) return NULL;
    return m;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Against the sentencepiece package */

TEST(spm_corpus_encode_matches_sentencepiece) {
    struct spm_corpus c;
    struct tok_special sp;
    int64_t vocab;
    struct spm_model *m = load_model(&sp, &vocab);
    if (corpus_load(&c) && m) {
        int64_t n_bad = 0;
        for (int64_t k = 0; k < c.n; k++) {
            const uint8_t *t = c.text + c.text_off[k];
            size_t len = (size_t)(c.text_off[k + 1] - c.text_off[k]);
            const int64_t *want = c.ids + c.ids_off[k];
            int64_t n_want = c.ids_off[k + 1] - c.ids_off[k];
            int64_t *got = NULL;
            size_t n_got = 0;
            /* parse_special = true is the package's own encode: <image> (user-defined) is one piece, "</s>" text */
            if (!CHECK_EQ(spm_encode(m, (const char *)t, len, true, &got, &n_got), VLM_OK)) break;
            if ((int64_t)n_got != n_want || memcmp(got, want, (size_t)n_want * sizeof *want) != 0) {
                if (n_bad++ < 5) {
                    FAIL("string %lld: ids differ from sentencepiece", (long long)k);
                    print_escaped("text", t, (int64_t)len);
                    print_ids("want", want, n_want);
                    print_ids("got ", got, (int64_t)n_got);
                }
            }
            free(got);
        }
        if (n_bad) FAIL("%lld of %lld strings differ", (long long)n_bad, (long long)c.n);
    }
    spm_free(m);
    golden_free(&c.g);
}

TEST(spm_corpus_decode_matches_sentencepiece) {
    struct spm_corpus c;
    struct vlm_tokenizer *t = NULL;
    if (!CHECK_EQ(tok_load_file(test_path(SPM_MODEL), &t), VLM_OK)) return;
    CHECK(tok_get_kind(t) == TOK_KIND_SPM);
    if (corpus_load(&c)) {
        int64_t n_bad = 0;
        for (int64_t k = 0; k < c.n; k++) {
            const int64_t *ids = c.ids + c.ids_off[k];
            size_t n = (size_t)(c.ids_off[k + 1] - c.ids_off[k]);
            const uint8_t *want = c.decoded + c.dec_off[k];
            size_t n_want = (size_t)(c.dec_off[k + 1] - c.dec_off[k]);
            char *got = NULL;
            size_t n_got = 0;
            /* sp.decode prints user-defined pieces and drops control ones: skip_special = false */
            if (!CHECK_EQ(tok_decode(t, ids, n, false, &got, &n_got), VLM_OK)) break;
            if (n_got != n_want || memcmp(got, want, n_want) != 0) {
                if (n_bad++ < 5) {
                    FAIL("string %lld: decoded text differs from sentencepiece", (long long)k);
                    print_ids("ids", ids, (int64_t)n);
                    print_escaped("want", want, (int64_t)n_want);
                    print_escaped("got ", (const uint8_t *)got, (int64_t)n_got);
                }
            }
            free(got);
        }
        if (n_bad) FAIL("%lld of %lld strings differ", (long long)n_bad, (long long)c.n);
    }
    tok_free(t);
    golden_free(&c.g);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Vocabulary and pieces (ids from tests/data/tokenizers/spm/tokenizer_config.json) */

TEST(spm_special_ids_and_lookup) {
    struct tok_special sp;
    int64_t vocab = 0;
    struct spm_model *m = load_model(&sp, &vocab);
    if (!m) return;
    CHECK_EQ(vocab, 1000);
    CHECK_EQ(sp.unk, 0);
    CHECK_EQ(sp.bos, 1);
    CHECK_EQ(sp.eos, 2);
    CHECK_EQ(sp.pad, -1);
    CHECK_EQ(sp.image, 3);
    CHECK_EQ(sp.im_start, -1);
    CHECK_EQ(sp.im_end, -1);
    CHECK_EQ(sp.video, -1);
    CHECK_EQ(spm_token_to_id(m, "<image>"), 3);
    CHECK_EQ(spm_token_to_id(m, "</s>"), 2);
    CHECK_EQ(spm_token_to_id(m, "<0x41>"), 4 + 0x41);
    CHECK_EQ(spm_token_to_id(m, "no such piece"), -1); /* not unk, unlike sentencepiece's PieceToId */
    CHECK_EQ(spm_token_to_id(m, ""), -1);
    spm_free(m);
}

static bool bytes_are(const struct spm_model *m, int64_t id, const char *want, bool want_special) {
    size_t n = 99;
    bool special = !want_special;
    const unsigned char *p = spm_token_bytes(m, id, &n, &special);
    bool ok = p && n == strlen(want) && memcmp(p, want, n) == 0 && special == want_special;
    if (!ok) FAIL("piece %lld: got %zu bytes '%.*s' special %d", (long long)id, n, p ? (int)n : 0,
                  p ? (const char *)p : "", (int)special);
    return ok;
}

TEST(spm_token_bytes_decode_pieces) {
    struct tok_special sp;
    int64_t vocab;
    struct spm_model *m = load_model(&sp, &vocab);
    if (!m) return;
    CHECK(bytes_are(m, 0, " \xe2\x81\x87 ", true)); /* <unk> prints sentencepiece's unk surface " ⁇ " */
    CHECK(bytes_are(m, 1, "", true));                /* <s>, </s>: control, nothing */
    CHECK(bytes_are(m, 2, "", true));
    CHECK(bytes_are(m, 3, "<image>", true));         /* user-defined: its text, special */
    CHECK(bytes_are(m, 4 + 'A', "A", false));        /* <0x41> */
    CHECK(bytes_are(m, 4 + 0x0a, "\n", false));
    size_t n;
    bool special;
    const unsigned char *p = spm_token_bytes(m, 4 + 0xff, &n, &special); /* <0xFF>: the raw byte */
    CHECK(p && n == 1 && p[0] == 0xff && !special);
    /* every "▁" becomes a space; find a merged piece that starts with one */
    int64_t id = spm_token_to_id(m, "\xe2\x96\x81the");
    if (CHECK(id > 259)) CHECK(bytes_are(m, id, " the", false));
    CHECK(spm_token_bytes(m, -1, &n, &special) == NULL);
    CHECK(spm_token_bytes(m, vocab, &n, &special) == NULL);
    spm_free(m);
}

/* ---------------------------------------------------------------------------------------------------------------
 * parse_special */

static void encode_both(const struct spm_model *m, const char *text, int64_t **with, size_t *n_with, int64_t **plain,
                        size_t *n_plain) {
    *with = *plain = NULL;
    *n_with = *n_plain = 0;
    CHECK_EQ(spm_encode(m, text, strlen(text), true, with, n_with), VLM_OK);
    CHECK_EQ(spm_encode(m, text, strlen(text), false, plain, n_plain), VLM_OK);
}

static int64_t count_id(const int64_t *ids, size_t n, int64_t id) {
    int64_t c = 0;
    for (size_t i = 0; i < n; i++) c += ids[i] == id;
    return c;
}

/* Concatenated piece bytes of ids (what a decoder prints before dropping the dummy-prefix space). */
static size_t piece_text(const struct spm_model *m, const int64_t *ids, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        bool special;
        const unsigned char *p = spm_token_bytes(m, ids[i], &len, &special);
        if (!p || k + len >= cap) return 0;
        memcpy(out + k, p, len);
        k += len;
    }
    out[k] = 0;
    return k;
}

TEST(spm_parse_special_off_spells_user_defined_symbols) {
    struct tok_special sp;
    int64_t vocab;
    struct spm_model *m = load_model(&sp, &vocab);
    if (!m) return;
    static const char *texts[] = {"ab<image>cd", "<image>", " <image> ", "<image><image>", "<<image>>",
                                  "x <image>\nWhat is shown?", "中<image>文", "<image>😀"};
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        int64_t *with, *plain;
        size_t n_with, n_plain;
        encode_both(m, texts[k], &with, &n_with, &plain, &n_plain);
        if (with && plain) {
            int64_t n_img = 0;
            for (const char *p = texts[k]; (p = strstr(p, "<image>")); p++) n_img++;
            CHECK_EQ(count_id(with, n_with, sp.image), n_img); /* sentencepiece matches <image> as one piece */
            CHECK_EQ(count_id(plain, n_plain, sp.image), 0);    /* ... but never in plain mode */
            for (size_t i = 0; i < n_plain; i++) {
                size_t len;
                bool special;
                spm_token_bytes(m, plain[i], &len, &special);
                CHECK(!special);
            }
            /* the same text either way: " " + text (the dummy prefix) */
            char a[256], b[256], want[256];
            snprintf(want, sizeof want, " %s", texts[k]);
            piece_text(m, with, n_with, a, sizeof a);
            piece_text(m, plain, n_plain, b, sizeof b);
            if (!CHECK(strcmp(a, want) == 0 && strcmp(b, want) == 0))
                fprintf(stderr, "  text '%s': parsed '%s', plain '%s'\n", texts[k], a, b);
        }
        free(with);
        free(plain);
    }
    /* text without a user-defined symbol: both modes are sentencepiece's encode */
    int64_t *with, *plain;
    size_t n_with, n_plain;
    encode_both(m, "A chat between a curious human </s> and <s> an assistant.", &with, &n_with, &plain, &n_plain);
    if (with && plain && CHECK_EQ(n_with, n_plain)) CHECK(memcmp(with, plain, n_with * sizeof *with) == 0);
    CHECK_EQ(count_id(with, n_with, sp.eos) + count_id(with, n_with, sp.bos), 0); /* control pieces stay text */
    free(with);
    free(plain);
    spm_free(m);
}

TEST(spm_encode_edge_inputs) {
    struct tok_special sp;
    int64_t vocab;
    struct spm_model *m = load_model(&sp, &vocab);
    if (!m) return;
    int64_t *ids = NULL;
    size_t n = 99;
    /* empty text: no ids, a freeable non-NULL array */
    if (CHECK_EQ(spm_encode(m, "", 0, false, &ids, &n), VLM_OK)) CHECK(ids != NULL && n == 0);
    free(ids);
    /* invalid UTF-8 and NUL bytes: sentencepiece's rule (one U+FFFD per bad byte, byte-fallback encoded) */
    static const char bad[] = "a\xff\xfe\xc3(\x00z\xe4\xb8";
    ids = NULL;
    if (CHECK_EQ(spm_encode(m, bad, sizeof bad - 1, false, &ids, &n), VLM_OK)) {
        int64_t fffd[3] = {4 + 0xef, 4 + 0xbf, 4 + 0xbd}, n_fffd = 0;
        for (size_t i = 0; i + 3 <= n; i++) n_fffd += memcmp(ids + i, fffd, sizeof fffd) == 0;
        CHECK_EQ(n_fffd, 5); /* ff, fe, c3, e4, b8 */
    }
    free(ids);
    /* over the size limit: refused before sentencepiece sees it */
    ids = NULL;
    test_capture_begin();
    enum vlm_status st = spm_encode(m, "x", (size_t)TOK_MAX_TEXT_BYTES + 1, false, &ids, &n);
    char err[512];
    test_capture_end(err, sizeof err);
    CHECK_EQ(st, VLM_ERR_ARG);
    CHECK_ERROR_LINE(err, "bytes", NULL);
    CHECK(ids == NULL);
    spm_free(m);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Bad model files */

/* spm_load(path) fails with want and one error line naming the file; out-params untouched. */
static void expect_load_error(const char *path, enum vlm_status want, const char *name) {
    struct spm_model *m = (struct spm_model *)(uintptr_t)1;
    struct tok_special sp = {.bos = 77};
    int64_t vocab = 77;
    char err[1024];
    test_capture_begin();
    enum vlm_status st = spm_load(path, &m, &sp, &vocab);
    test_capture_end(err, sizeof err);
    if (!CHECK_EQ(st, want)) fprintf(stderr, "  %s: %s\n", name, err);
    CHECK_ERROR_LINE(err, name, NULL);
    CHECK(m == (struct spm_model *)(uintptr_t)1 && sp.bos == 77 && vocab == 77);
    /* and through the public entry point */
    struct vlm_tokenizer *t = NULL;
    test_capture_begin();
    st = tok_load_file(path, &t);
    test_capture_end(err, sizeof err);
    CHECK(st != VLM_OK && t == NULL);
    CHECK_ERROR_LINE(err, name, NULL);
}

static unsigned char *read_model(size_t *n) {
    FILE *f = fopen(test_path(SPM_MODEL), "rb");
    if (!CHECK(f != NULL)) return NULL;
    unsigned char *buf = malloc(1 << 20);
    *n = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    CHECK(*n > 1000 && *n < (1 << 20));
    return buf;
}

TEST(spm_bad_model_files) {
    const char *dir = test_tmpdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/missing.model", dir);
    expect_load_error(path, VLM_ERR_IO, "missing.model");
    expect_load_error(dir, VLM_ERR_IO, dir); /* a directory */
    snprintf(path, sizeof path, "%s/empty.model", dir);
    test_write_file(path, "", 0);
    expect_load_error(path, VLM_ERR_FORMAT, "empty.model");
    snprintf(path, sizeof path, "%s/text.model", dir);
    test_write_file(path, "this is not a sentencepiece model\n", 34);
    expect_load_error(path, VLM_ERR_FORMAT, "text.model");
    size_t n = 0;
    unsigned char *model = read_model(&n);
    if (model) {
        /* cut at several points: inside a piece, inside the trainer spec, one byte short */
        const size_t cuts[] = {1, 7, n / 3, n / 2, n - 40, n - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
            char name[64];
            snprintf(name, sizeof name, "trunc%zu.model", cuts[i]);
            snprintf(path, sizeof path, "%s/%s", dir, name);
            test_write_file(path, model, cuts[i]);
            expect_load_error(path, VLM_ERR_FORMAT, name);
        }
        /* garbage: pseudo-random bytes, and the model with its first bytes overwritten */
        uint32_t x = 12345;
        for (size_t i = 0; i < n; i++) model[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 24);
        snprintf(path, sizeof path, "%s/garbage.model", dir);
        test_write_file(path, model, n);
        expect_load_error(path, VLM_ERR_FORMAT, "garbage.model");
    }
    free(model);
}

/* Every prefix length and single-byte corruption of the model in a quick sweep: no crash, no sanitizer report;
 * each either loads or fails with one error line. */
TEST(spm_load_survives_corruption) {
    size_t n = 0;
    unsigned char *model = read_model(&n);
    if (!model) return;
    const char *path = test_tmp_path("sweep.model");
    int n_loaded = 0, n_failed = 0;
    for (size_t step = 0; step < 64; step++) {
        size_t cut = n * step / 64;
        unsigned char saved = model[(step * 7919) % n];
        model[(step * 7919) % n] ^= 0x5a;
        for (int variant = 0; variant < 2; variant++) {
            test_write_file(path, model, variant ? n : cut);
            struct spm_model *m = NULL;
            struct tok_special sp;
            int64_t vocab;
            char err[1024];
            test_capture_begin();
            enum vlm_status st = spm_load(path, &m, &sp, &vocab);
            size_t n_err = test_capture_end(err, sizeof err);
            if (st == VLM_OK) {
                n_loaded++;
                CHECK(n_err == 0);
                int64_t *ids = NULL;
                size_t n_ids;
                if (spm_encode(m, "hello <image> world", 19, false, &ids, &n_ids) == VLM_OK)
                    for (size_t i = 0; i < n_ids; i++) CHECK(ids[i] >= 0 && ids[i] < vocab);
                free(ids);
                spm_free(m);
            } else {
                n_failed++;
                CHECK_ERROR_LINE(err, "sweep.model", NULL);
            }
        }
        model[(step * 7919) % n] = saved;
    }
    CHECK(n_failed > 0);
    if (test_verbose()) fprintf(stderr, "  corrupted models: %d loaded, %d refused\n", n_loaded, n_failed);
    free(model);
}
