/* test_mbq_file.c — the .mbq model file (runtime/mbq_file.c): a round trip through the writer and the reader with
 * every kind of tensor, byte-identical output for identical input, every rule of mbq_file.h broken once (right
 * status, one error line naming the file, *out untouched), and the writer's atomicity (no temp file and no file at
 * path after any failure; an existing file survives a failed write). Files are written at test time in
 * test_tmpdir(): valid ones by the writer, corrupt ones by editing those bytes or by raw_file(), which frames any
 * JSON text and data with a correct preamble. */
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/quant.h"
#include "runtime/mbq_file.h"
#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* The whole file (malloc'd, caller frees) or NULL. */
static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)sz + 1)) != NULL &&
            fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
            free(buf);
            buf = NULL;
        }
        *n = (size_t)(sz < 0 ? 0 : sz);
    }
    fclose(f);
    return buf;
}

/* Number of entries of dir other than . and .. (the writer must leave no temp file behind). */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A .mbq image: a correct preamble for json, the JSON, zero padding to the next 4096, then data. */
static unsigned char *raw_image(const char *json, const void *data, size_t n, size_t *len) {
    size_t hb = strlen(json), doff = (32 + hb + 4095) / 4096 * 4096;
    *len = doff + n;
    unsigned char *buf = calloc(1, *len + 1);
    if (!buf) return NULL;
    memcpy(buf, VLM_MBQ_MAGIC, 8);
    put_u32(buf + 8, VLM_MBQ_VERSION);
    put_u32(buf + 12, 0x01020304u);
    put_u64(buf + 16, hb);
    put_u64(buf + 24, doff);
    memcpy(buf + 32, json, hb);
    if (n) memcpy(buf + doff, data, n);
    return buf;
}

/* raw_image written to a fresh file called name; returns its path. */
static const char *raw_file(const char *name, const char *json, const void *data, size_t n) {
    const char *path = test_tmp_path(name);
    size_t len;
    unsigned char *buf = raw_image(json, data, n, &len);
    if (!buf) {
        FAIL("out of memory");
        return path;
    }
    test_write_file(path, buf, len);
    free(buf);
    return path;
}

/* Runs mbq_file_open with stderr captured; checks that a failure leaves *out untouched and prints exactly one
 * "vlmrun: error: " line naming the file. */
static enum vlm_status open_capture(const char *path, char *err, size_t cap) {
    struct mbq_file *sentinel = (struct mbq_file *)(uintptr_t)0x1234, *f = sentinel;
    test_capture_begin();
    enum vlm_status st = mbq_file_open(path, &f);
    test_capture_end(err, cap);
    if (st == VLM_OK) {
        mbq_file_close(f);
    } else {
        CHECK(f == sentinel);
        CHECK_ERROR_LINE(err, path, NULL);
    }
    if (test_verbose() && err[0]) fprintf(stderr, "  stderr: %s", err);
    return st;
}

static void expect_reject_at(const char *path, enum vlm_status want, const char *needle, int line) {
    char err[2048];
    enum vlm_status st = open_capture(path, err, sizeof err);
    if (st != want)
        test_fail(__FILE__, line, "%s: got status %d (%s), want %d; stderr: %s", path, st, vlm_status_str(st), want,
                  err);
    if (needle && !strstr(err, needle)) test_fail(__FILE__, line, "%s: message lacks '%s': %s", path, needle, err);
}
#define expect_reject(path, want, needle) expect_reject_at((path), (want), (needle), __LINE__)

static void expect_ok_at(const char *path, int line) {
    char err[2048];
    enum vlm_status st = open_capture(path, err, sizeof err);
    if (st != VLM_OK) test_fail(__FILE__, line, "%s: got status %d (%s); stderr: %s", path, st, vlm_status_str(st), err);
}
#define expect_ok(path) expect_ok_at((path), __LINE__)

/* A crafted header: tensors (the inside of the "tensors" array) and extra top-level members (",\"k\":v" or ""). */
static const char *hdr(const char *tensors, const char *extra) {
    static char bufs[4][4096];
    static int k;
    char *b = bufs[k++ & 3];
    snprintf(b, sizeof bufs[0], "{\"format\":\"vlm-mbq\",\"version\":1%s,\"tensors\":[%s]}", extra, tensors);
    return b;
}

/* The crafted base: tensor a (f32 [4], 16 bytes at 0) and b (u8 [3] at 64): 67 bytes of data. */
#define TA "{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}"
#define TB "{\"name\":\"b\",\"dtype\":\"u8\",\"shape\":[3],\"offset\":64,\"size\":3}"
static unsigned char g_data[256];
static void init_data(void) {
    memset(g_data, 0, sizeof g_data);
    float a[4] = {1, 2, 3, 4};
    memcpy(g_data, a, sizeof a);
    memcpy(g_data + 64, "xyz", 3);
}

static float *rand_matrix(int64_t n, int64_t k, uint32_t seed) {
    float *w = malloc((size_t)(n * k) * sizeof *w);
    if (!w) return NULL;
    for (int64_t i = 0; i < n * k; i++) {
        seed = seed * 1664525u + 1013904223u;
        w[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.2f;
    }
    return w;
}

/* The round-trip model: every dtype and rank the file must carry. */
enum { S_BIAS, S_PATCH, S_W3, S_W4A8, S_W4, S_Q8R, S_TOK, S_N };
struct sample {
    struct mbq_tensor_decl decls[S_N];
    void *blobs[S_N];
    size_t sizes[S_N];
    cJSON *meta;
};

static const char k_tok_text[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}";

static bool sample_init(struct sample *s) {
    memset(s, 0, sizeof *s);
    static const struct mbq_tensor_decl decls[S_N] = {
        {"vision.bias", VLM_QF_F32, 1, {5}},
        {"vision.patch_embed.weight", VLM_QF_F16, 4, {2, 3, 2, 2}},
        {"model.layers.0.mlp.down_proj.weight", VLM_QF_W3G128, 2, {4, 256}},
        {"model.layers.0.mlp.up_proj.weight", VLM_QF_W4A8, 2, {3, 128}},
        {"model.layers.0.self_attn.q_proj.weight", VLM_QF_W4G128, 2, {2, 128}},
        {"lm_head.weight", VLM_QF_Q8R, 2, {3, 7}},
        {"tokenizer.json", VLM_MBQ_DTYPE_U8, 1, {sizeof k_tok_text - 1}},
    };
    memcpy(s->decls, decls, sizeof decls);
    for (int i = 0; i < S_N; i++) {
        const struct mbq_tensor_decl *d = &s->decls[i];
        if (d->dtype != VLM_MBQ_DTYPE_U8 && d->n_dims == 2) {
            struct vlm_qlayout L;
            if (!vlm_qlayout((enum vlm_qformat)d->dtype, d->shape[0], d->shape[1], &L, NULL)) return false;
            s->sizes[i] = L.total_bytes;
            s->blobs[i] = aligned_alloc(VLM_QALIGN, (L.total_bytes + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN);
            float *w = rand_matrix(d->shape[0], d->shape[1], 17u + (uint32_t)i);
            if (!s->blobs[i] || !w) {
                free(w);
                return false;
            }
            vlm_quantize_ref((enum vlm_qformat)d->dtype, w, d->shape[0], d->shape[1], s->blobs[i]);
            free(w);
        }
    }
    float bias[5] = {0.5f, -1.0f, 2.25f, 1e-3f, -7.0f};
    uint16_t patch[24];
    for (int i = 0; i < 24; i++) patch[i] = vlm_f32_to_f16((float)i * 0.125f - 1.0f);
    s->sizes[S_BIAS] = sizeof bias;
    s->sizes[S_PATCH] = sizeof patch;
    s->sizes[S_TOK] = sizeof k_tok_text - 1;
    if (!(s->blobs[S_BIAS] = malloc(sizeof bias)) || !(s->blobs[S_PATCH] = malloc(sizeof patch)) ||
        !(s->blobs[S_TOK] = malloc(sizeof k_tok_text)))
        return false;
    memcpy(s->blobs[S_BIAS], bias, sizeof bias);
    memcpy(s->blobs[S_PATCH], patch, sizeof patch);
    memcpy(s->blobs[S_TOK], k_tok_text, sizeof k_tok_text);
    s->meta = cJSON_Parse("{\"config\": {\"model_type\": \"llava_onevision\", \"text_config\": {\"hidden_size\": 896}},"
                          " \"preprocessor\": {\"image_mean\": [0.5, 0.5, 0.5]},"
                          " \"tokenizer\": {\"kind\": \"bpe\", \"tensor\": \"tokenizer.json\"},"
                          " \"quant\": {\"method\": \"rtn\", \"bits\": 3},"
                          " \"converter_report\": {\"note\": \"caf\xc3\xa9\", \"layers\": [1, 2]},"
                          " \"format\": \"ignored: the writer sets it\", \"tensors\": 5}");
    return s->meta != NULL;
}

static void sample_free(struct sample *s) {
    for (int i = 0; i < S_N; i++) free(s->blobs[i]);
    cJSON_Delete(s->meta);
}

/* Writes the sample to path, tensors in the given order (NULL: table order). */
static enum vlm_status sample_write(const struct sample *s, const char *path, const int *order) {
    struct mbq_writer *w = NULL;
    enum vlm_status st = mbq_writer_open(path, s->meta, s->decls, S_N, &w);
    if (st != VLM_OK) return st;
    for (int j = 0; j < S_N; j++) {
        int i = order ? order[j] : j;
        if ((st = mbq_writer_write(w, i, s->blobs[i], s->sizes[i])) != VLM_OK) {
            mbq_writer_abort(w);
            return st;
        }
    }
    return mbq_writer_finish(w);
}

/* A valid writer-made file at a fresh path; its bytes in *img (caller frees). */
static const char *sample_file(unsigned char **img, size_t *len) {
    struct sample s;
    const char *path = test_tmp_path("model.mbq");
    *img = NULL;
    if (!CHECK(sample_init(&s))) {
        sample_free(&s);
        return path;
    }
    CHECK_EQ(sample_write(&s, path, NULL), VLM_OK);
    sample_free(&s);
    *img = read_file(path, len);
    CHECK(*img != NULL);
    return path;
}

/* ---------------------------------------------------------------------------------------------------------------
 * round trip and determinism
 * ------------------------------------------------------------------------------------------------------------- */

TEST(mbq_round_trip) {
    struct sample s;
    if (!CHECK(sample_init(&s))) {
        sample_free(&s);
        return;
    }
    const char *path = test_tmp_path("model.mbq");
    CHECK_EQ(sample_write(&s, path, NULL), VLM_OK);
    struct mbq_file *f = NULL;
    if (!CHECK(mbq_file_open(path, &f) == VLM_OK)) {
        sample_free(&s);
        return;
    }
    CHECK(!strcmp(mbq_file_path(f), path));
    CHECK_EQ(mbq_file_count(f), S_N);
    for (int i = 0; i < S_N && i < mbq_file_count(f); i++) {
        const struct mbq_tensor *t = mbq_file_at(f, i);
        const struct mbq_tensor_decl *d = &s.decls[i];
        CHECK(!strcmp(t->name, d->name));
        CHECK_EQ(t->dtype, d->dtype);
        CHECK_EQ(t->n_dims, d->n_dims);
        for (int k = 0; k < d->n_dims; k++) CHECK_EQ(t->shape[k], d->shape[k]);
        CHECK_EQ(t->size, s.sizes[i]);
        CHECK(memcmp(t->data, s.blobs[i], s.sizes[i]) == 0);
        CHECK_EQ((uintptr_t)t->data % VLM_QALIGN, 0);
        CHECK(mbq_file_find(f, d->name) == t);
    }
    CHECK(mbq_file_find(f, "nope") == NULL);
    CHECK(mbq_file_find(f, "vision.bia") == NULL);

    /* the packed weights read back as views equal to the originals, value for value */
    for (int i = S_W3; i <= S_Q8R; i++) {
        const struct mbq_tensor *t = mbq_file_at(f, i);
        struct vlm_qmat got, want;
        const char *why = NULL;
        if (!CHECK(vlm_qmat_view((enum vlm_qformat)t->dtype, t->shape[0], t->shape[1], t->data, t->size, &got, &why)))
            FAIL("view of %s: %s", t->name, why);
        CHECK(vlm_qmat_view((enum vlm_qformat)t->dtype, t->shape[0], t->shape[1], s.blobs[i], s.sizes[i], &want,
                            &why));
        CHECK(vlm_qmat_check(&got, &why));
        float a[256], b[256];
        for (int64_t r = 0; r < t->shape[0]; r++) {
            vlm_dequantize_row_ref(&got, r, a);
            vlm_dequantize_row_ref(&want, r, b);
            CHECK(memcmp(a, b, (size_t)t->shape[1] * sizeof(float)) == 0);
        }
    }

    /* header: the writer's keys first, the caller's in its order, "tensors" last; "format" is the writer's */
    const cJSON *h = mbq_file_header(f);
    const cJSON *c = h ? h->child : NULL;
    const char *order[] = {"format", "version", "config", "preprocessor", "tokenizer", "quant", "converter_report",
                           "tensors"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++, c = c ? c->next : NULL)
        if (!CHECK(c && !strcmp(c->string, order[i]))) FAIL("header key %zu is not %s", i, order[i]);
    CHECK(c == NULL);
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(h, "format")->valuestring, "vlm-mbq"));
    CHECK_EQ(cJSON_GetObjectItemCaseSensitive(h, "version")->valuedouble, 1);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(h, "config");
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(cfg, "model_type")->valuestring, "llava_onevision"));
    CHECK(cJSON_Compare(cfg, cJSON_GetObjectItemCaseSensitive(s.meta, "config"), 1));
    CHECK(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(h, "converter_report"),
                        cJSON_GetObjectItemCaseSensitive(s.meta, "converter_report"), 1));
    CHECK_EQ(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(h, "tensors")), S_N);

    /* the layout: data_offset page-aligned, the file ending exactly at the last tensor's end */
    size_t len = 0;
    unsigned char *img = read_file(path, &len);
    if (CHECK(img != NULL)) {
        uint64_t doff = get_u64(img + 24);
        const struct mbq_tensor *last = mbq_file_at(f, S_N - 1);
        const struct mbq_tensor *first = mbq_file_at(f, 0);
        CHECK_EQ(doff % 4096, 0);
        CHECK_EQ(len, doff + (size_t)((const unsigned char *)last->data - (const unsigned char *)first->data) +
                          last->size);
        CHECK(memcmp(img, "VLMMBQ\r\n\x01\0\0\0\x04\x03\x02\x01", 16) == 0);
    }
    free(img);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644);
    char dir[700];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    CHECK_EQ(dir_entries(dir), 1); /* no temp file left next to it */
    mbq_file_close(f);
    mbq_file_close(NULL);
    sample_free(&s);
}

TEST(mbq_dtype_names) {
    CHECK(!strcmp(mbq_dtype_name(VLM_QF_F32), "f32"));
    CHECK(!strcmp(mbq_dtype_name(VLM_QF_W3G128), "w3g128"));
    CHECK(!strcmp(mbq_dtype_name(VLM_QF_W4A8), "w4a8"));
    CHECK(!strcmp(mbq_dtype_name(VLM_MBQ_DTYPE_U8), "u8"));
    CHECK(!strcmp(mbq_dtype_name(-1), "?"));
    CHECK(!strcmp(mbq_dtype_name(VLM_MBQ_DTYPE_U8 + 1), "?"));
}

TEST(mbq_deterministic) {
    struct sample s;
    if (!CHECK(sample_init(&s))) {
        sample_free(&s);
        return;
    }
    const char *p1 = test_tmp_path("a.mbq"), *p2 = test_tmp_path("b.mbq");
    static const int reversed[S_N] = {6, 5, 4, 3, 2, 1, 0};
    CHECK_EQ(sample_write(&s, p1, NULL), VLM_OK);
    CHECK_EQ(sample_write(&s, p2, reversed), VLM_OK); /* write order must not matter */
    size_t n1 = 0, n2 = 0;
    unsigned char *a = read_file(p1, &n1), *b = read_file(p2, &n2);
    if (CHECK(a && b)) {
        CHECK_EQ(n1, n2);
        CHECK(n1 == n2 && memcmp(a, b, n1) == 0);
    }
    free(a);
    free(b);
    sample_free(&s);
}

TEST(mbq_parse_buffer) {
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    /* aligned copy: fine; misaligned copy: the caller's error, not the file's */
    unsigned char *al = aligned_alloc(4096, (len + 4096) / 4096 * 4096 + 4096);
    if (CHECK(al != NULL)) {
        struct mbq_file *f = NULL;
        memcpy(al, img, len);
        CHECK_EQ(mbq_file_parse(al, len, "buf.mbq", &f), VLM_OK);
        if (f) {
            CHECK(!strcmp(mbq_file_path(f), "buf.mbq"));
            CHECK_EQ(mbq_file_count(f), S_N);
            CHECK((const unsigned char *)mbq_file_at(f, 0)->data >= al &&
                  (const unsigned char *)mbq_file_at(f, 0)->data < al + len);
        }
        mbq_file_close(f);
        memmove(al + 1, al, len);
        f = NULL;
        char err[1024];
        test_capture_begin();
        CHECK_EQ(mbq_file_parse(al + 1, len, "buf.mbq", &f), VLM_ERR_ARG);
        test_capture_end(err, sizeof err);
        CHECK_ERROR_LINE(err, "buf.mbq", "aligned");
        CHECK(f == NULL);
    }
    free(al);
    free(img);
    struct mbq_file *f = NULL;
    CHECK_EQ(mbq_file_parse(NULL, 5, "x", &f), VLM_ERR_ARG);
    CHECK_EQ(mbq_file_parse("", 0, "x", NULL), VLM_ERR_ARG);
    CHECK_EQ(mbq_file_open(NULL, &f), VLM_ERR_ARG);
}

TEST(mbq_crafted_base_ok) {
    init_data();
    /* the hand-framed base of the corrupt cases below is itself valid, so each case breaks exactly one rule */
    expect_ok(raw_file("a.mbq", hdr(TA "," TB, ""), g_data, 67));
    expect_ok(raw_file("b.mbq", hdr(TA "," TB, ",\"tokenizer\":{\"kind\":\"spm\",\"tensor\":\"b\"},\"config\":{}"),
                       g_data, 67));
    expect_ok(raw_file("c.mbq", hdr("", ""), NULL, 0)); /* no tensors, empty data section */
    /* a 256-byte name and multi-byte UTF-8 are fine; trailing JSON whitespace too */
    char name[257], t[600];
    memset(name, 'n', 256);
    name[256] = 0;
    snprintf(t, sizeof t, "{\"name\":\"%s\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}", name);
    expect_ok(raw_file("d.mbq", hdr(t, ""), g_data, 16));
    expect_ok(raw_file("e.mbq", hdr("{\"name\":\"caf\xc3\xa9\",\"dtype\":\"f32\",\"shape\":[1,1,2,2],\"offset\":0,"
                                    "\"size\":16}", ""), g_data, 16));
    char ws[256];
    snprintf(ws, sizeof ws, "%s \n", hdr(TA, ""));
    expect_ok(raw_file("f.mbq", ws, g_data, 16));
}

TEST(mbq_empty_model) {
    const char *path = test_tmp_path("empty.mbq");
    struct mbq_writer *w = NULL;
    CHECK_EQ(mbq_writer_open(path, NULL, NULL, 0, &w), VLM_OK);
    CHECK_EQ(mbq_writer_finish(w), VLM_OK);
    struct mbq_file *f = NULL;
    if (CHECK(mbq_file_open(path, &f) == VLM_OK)) {
        CHECK_EQ(mbq_file_count(f), 0);
        CHECK(mbq_file_find(f, "x") == NULL);
        mbq_file_close(f);
    }
    size_t len = 0;
    unsigned char *img = read_file(path, &len);
    CHECK_EQ(len, 4096);
    /* a data section of one byte with no tensors is a trailing byte */
    if (img) {
        const char *p2 = test_tmp_path("trail.mbq");
        img[len] = 0;
        test_write_file(p2, img, len + 1);
        expect_reject(p2, VLM_ERR_FORMAT, "trailing");
    }
    free(img);
}

/* ---------------------------------------------------------------------------------------------------------------
 * corrupt files: the preamble
 * ------------------------------------------------------------------------------------------------------------- */

TEST(mbq_missing_and_not_regular) {
    expect_reject(test_tmp_path("nope.mbq"), VLM_ERR_IO, "cannot open");
    expect_reject(test_tmpdir(), VLM_ERR_IO, "not a regular file");
}

TEST(mbq_empty_and_truncated_preamble) {
    const char *p = test_tmp_path("empty.mbq");
    test_write_file(p, "", 0);
    expect_reject(p, VLM_ERR_FORMAT, "empty");
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    p = test_tmp_path("short.mbq");
    test_write_file(p, img, 20);
    expect_reject(p, VLM_ERR_FORMAT, "truncated");
    p = test_tmp_path("five.mbq");
    test_write_file(p, img, 5); /* a prefix of the magic: still truncated, not "not a .mbq file" */
    expect_reject(p, VLM_ERR_FORMAT, "truncated");
    free(img);
}

TEST(mbq_bad_magic) {
    /* a safetensors file handed to the .mbq reader */
    static const char st[] = "\x02\0\0\0\0\0\0\0{}                              ";
    const char *p = test_tmp_path("model.safetensors");
    test_write_file(p, st, sizeof st - 1);
    expect_reject(p, VLM_ERR_FORMAT, "not a .mbq file");
    expect_reject(p, VLM_ERR_FORMAT, "vlmconvert");
    /* \r\n turned into \n by a text-mode transfer */
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    p = test_tmp_path("text.mbq");
    test_write_file(p, img, 6);
    FILE *f = fopen(p, "ab");
    if (f) {
        fwrite("\n", 1, 1, f);
        fwrite(img + 8, 1, len - 8, f);
        fclose(f);
    }
    expect_reject(p, VLM_ERR_FORMAT, "text mode");
    free(img);
}

/* Writes img with a u32/u64 patched at off; returns the path. */
static const char *patched(const unsigned char *img, size_t len, size_t off, int width, uint64_t v, const char *nm) {
    const char *p = test_tmp_path(nm);
    unsigned char *c = malloc(len);
    if (!c) return p;
    memcpy(c, img, len);
    if (width == 4) put_u32(c + off, (uint32_t)v);
    else put_u64(c + off, v);
    test_write_file(p, c, len);
    free(c);
    return p;
}

TEST(mbq_bad_version_and_endianness) {
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    expect_reject(patched(img, len, 8, 4, 0, "v0.mbq"), VLM_ERR_FORMAT, "unsupported .mbq version 0");
    expect_reject(patched(img, len, 8, 4, 99, "v99.mbq"), VLM_ERR_FORMAT, "unsupported .mbq version 99");
    expect_reject(patched(img, len, 8, 4, 99, "v99b.mbq"), VLM_ERR_FORMAT, "reads version 1");
    expect_reject(patched(img, len, 12, 4, 0x04030201u, "be.mbq"), VLM_ERR_FORMAT, "big-endian");
    expect_reject(patched(img, len, 12, 4, 0, "e0.mbq"), VLM_ERR_FORMAT, "endianness marker");
    free(img);
}

TEST(mbq_bad_header_bytes) {
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    uint64_t hb = get_u64(img + 16);
    expect_reject(patched(img, len, 16, 8, 0, "h0.mbq"), VLM_ERR_FORMAT, "header_bytes 0");
    expect_reject(patched(img, len, 16, 8, (64u << 20) + 1, "hbig.mbq"), VLM_ERR_FORMAT, "header_bytes");
    expect_reject(patched(img, len, 16, 8, UINT64_MAX - 8, "hwrap.mbq"), VLM_ERR_FORMAT, "header_bytes");
    /* within the limit but past the end of a small file */
    const char *p = test_tmp_path("hpast.mbq");
    unsigned char c[4096];
    memcpy(c, img, sizeof c);
    put_u64(c + 16, 8000);
    test_write_file(p, c, sizeof c);
    expect_reject(p, VLM_ERR_FORMAT, "runs past the end");
    /* shorter than the JSON: its last '}' now lies in the padding, which must be zero; longer: the padding's
     * zero byte becomes part of the header, a raw control byte */
    expect_reject(patched(img, len, 16, 8, hb - 1, "hshort.mbq"), VLM_ERR_FORMAT, "padding");
    expect_reject(patched(img, len, 16, 8, hb + 1, "hlong.mbq"), VLM_ERR_FORMAT, "control byte");
    free(img);
}

TEST(mbq_bad_data_offset) {
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    uint64_t doff = get_u64(img + 24);
    expect_reject(patched(img, len, 24, 8, doff + 4, "d4.mbq"), VLM_ERR_FORMAT, "not a multiple of 4096");
    expect_reject(patched(img, len, 24, 8, 0, "d0.mbq"), VLM_ERR_FORMAT, "data_offset 0 is inside the preamble");
    expect_reject(patched(img, len, 24, 8, (len + 4095) / 4096 * 4096 + 4096, "dpast.mbq"), VLM_ERR_FORMAT,
                  "past the end");
    /* 4096-aligned and in the file, but the data no longer ends where the file does */
    expect_reject(patched(img, len, 24, 8, doff + 4096, "dnext.mbq"), VLM_ERR_FORMAT, NULL);
    free(img);
}

TEST(mbq_nonzero_padding) {
    init_data();
    size_t len;
    unsigned char *img = raw_image(hdr(TA "," TB, ""), g_data, 67, &len);
    if (!CHECK(img != NULL)) return;
    const char *p = test_tmp_path("hpad.mbq");
    img[4095] = 1; /* the header padding */
    test_write_file(p, img, len);
    expect_reject(p, VLM_ERR_FORMAT, "padding");
    img[4095] = 0;
    img[4096 + 20] = 1; /* between a's end (16) and b (64) */
    p = test_tmp_path("tpad.mbq");
    test_write_file(p, img, len);
    expect_reject(p, VLM_ERR_FORMAT, "padding after tensor 'a'");
    free(img);
}

TEST(mbq_truncated_and_trailing) {
    unsigned char *img;
    size_t len = 0;
    sample_file(&img, &len);
    if (!img) return;
    const char *p = test_tmp_path("trunc.mbq");
    test_write_file(p, img, len - 1);
    expect_reject(p, VLM_ERR_FORMAT, "truncated");
    p = test_tmp_path("nodata.mbq");
    test_write_file(p, img, get_u64(img + 24));
    expect_reject(p, VLM_ERR_FORMAT, "truncated");
    p = test_tmp_path("trail.mbq");
    unsigned char *c = malloc(len + 1);
    if (c) {
        memcpy(c, img, len);
        c[len] = 0;
        test_write_file(p, c, len + 1);
        expect_reject(p, VLM_ERR_FORMAT, "1 trailing bytes");
    }
    free(c);
    free(img);
}

/* ---------------------------------------------------------------------------------------------------------------
 * corrupt files: the JSON header
 * ------------------------------------------------------------------------------------------------------------- */

TEST(mbq_header_not_json) {
    init_data();
    expect_reject(raw_file("a.mbq", "{\"format\": }", NULL, 0), VLM_ERR_FORMAT, "not valid JSON");
    expect_reject(raw_file("b.mbq", "[1, 2]", NULL, 0), VLM_ERR_FORMAT, "not a JSON object");
    expect_reject(raw_file("c.mbq", "\"vlm-mbq\"", NULL, 0), VLM_ERR_FORMAT, "not a JSON object");
    char t[512];
    snprintf(t, sizeof t, "%sx", hdr(TA, ""));
    expect_reject(raw_file("d.mbq", t, g_data, 16), VLM_ERR_FORMAT, "after the JSON");
    snprintf(t, sizeof t, "%s{}", hdr(TA, ""));
    expect_reject(raw_file("e.mbq", t, g_data, 16), VLM_ERR_FORMAT, "after the JSON");
}

TEST(mbq_header_bad_bytes) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr(TA, ",\"config\":{\"k\":\"\x80\"}"), g_data, 16), VLM_ERR_FORMAT, "UTF-8");
    expect_reject(raw_file("b.mbq", hdr(TA, ",\"config\":{\"k\":\"\xc0\xaf\"}"), g_data, 16), VLM_ERR_FORMAT,
                  "UTF-8");
    expect_reject(raw_file("c.mbq", hdr(TA, ",\"config\":{\"k\":\"\xed\xa0\x80\"}"), g_data, 16), VLM_ERR_FORMAT,
                  "UTF-8"); /* a surrogate */
    /* a NUL byte inside the header text */
    size_t len;
    unsigned char *img = raw_image(hdr(TA, ",\"config\":{\"k\":\"ab\"}"), g_data, 16, &len);
    if (CHECK(img != NULL)) {
        unsigned char *q = memchr(img + 32, 'b', 4000);
        if (CHECK(q != NULL)) *q = 0;
        const char *p = test_tmp_path("nul.mbq");
        test_write_file(p, img, len);
        expect_reject(p, VLM_ERR_FORMAT, "control byte");
    }
    free(img);
    expect_reject(raw_file("d.mbq", hdr("{\"name\":\"a\\u0000b\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "u0000");
    expect_reject(raw_file("e.mbq", hdr("{\"name\":\"a\\nb\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "control character");
}

TEST(mbq_header_duplicate_keys) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr(TA, ",\"format\":\"vlm-mbq\""), g_data, 16), VLM_ERR_FORMAT,
                  "'format' twice");
    expect_reject(raw_file("b.mbq", hdr(TA, ",\"config\":{\"text_config\":{\"a\":1,\"a\":2}}"), g_data, 16),
                  VLM_ERR_FORMAT, "'a' twice");
    expect_reject(raw_file("c.mbq", hdr("{\"name\":\"a\",\"name\":\"z\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "'name' twice");
    /* inside an array inside an object */
    expect_reject(raw_file("d.mbq", hdr(TA, ",\"report\":{\"x\":[{\"k\":1,\"k\":1}]}"), g_data, 16), VLM_ERR_FORMAT,
                  "twice");
}

TEST(mbq_header_top_level) {
    init_data();
    expect_reject(raw_file("a.mbq", "{\"format\":\"vlm-mbx\",\"version\":1,\"tensors\":[]}", NULL, 0), VLM_ERR_FORMAT,
                  "\"format\"");
    expect_reject(raw_file("b.mbq", "{\"version\":1,\"tensors\":[]}", NULL, 0), VLM_ERR_FORMAT, "\"format\"");
    expect_reject(raw_file("c.mbq", "{\"format\":\"vlm-mbq\",\"version\":2,\"tensors\":[]}", NULL, 0), VLM_ERR_FORMAT,
                  "\"version\"");
    expect_reject(raw_file("d.mbq", "{\"format\":\"vlm-mbq\",\"version\":\"1\",\"tensors\":[]}", NULL, 0),
                  VLM_ERR_FORMAT, "\"version\"");
    expect_reject(raw_file("e.mbq", "{\"format\":\"vlm-mbq\",\"version\":1}", NULL, 0), VLM_ERR_FORMAT, "\"tensors\"");
    expect_reject(raw_file("f.mbq", "{\"format\":\"vlm-mbq\",\"version\":1,\"tensors\":{}}", NULL, 0), VLM_ERR_FORMAT,
                  "\"tensors\"");
    expect_reject(raw_file("g.mbq", hdr("1", ""), NULL, 0), VLM_ERR_FORMAT, "tensors[0] is not a JSON object");
    expect_reject(raw_file("h.mbq", hdr(TA, ",\"config\":[1]"), g_data, 16), VLM_ERR_FORMAT,
                  "\"config\" is not a JSON object");
    expect_reject(raw_file("i.mbq", hdr(TA, ",\"quant\":\"rtn\""), g_data, 16), VLM_ERR_FORMAT, "\"quant\"");
}

TEST(mbq_tensor_fields) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0}", ""), g_data,
                           16), VLM_ERR_FORMAT, "lacks \"size\"");
    expect_reject(raw_file("b.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16,"
                                        "\"extra\":1}", ""), g_data, 16), VLM_ERR_FORMAT, "unknown field 'extra'");
    expect_reject(raw_file("c.mbq", hdr("{\"name\":7,\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}", ""),
                           g_data, 16), VLM_ERR_FORMAT, "name is not a string");
    /* integers: no strings, fractions or negatives */
    expect_reject(raw_file("d.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":\"0\","
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "offset is not");
    expect_reject(raw_file("e.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0.5,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "offset is not");
    expect_reject(raw_file("f.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":-64,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "offset is not");
    expect_reject(raw_file("g.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,"
                                        "\"size\":16.5}", ""), g_data, 16), VLM_ERR_FORMAT, "size is not");
    expect_reject(raw_file("h.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[2.5],\"offset\":0,"
                                        "\"size\":10}", ""), g_data, 16), VLM_ERR_FORMAT, "shape[0]");
    expect_reject(raw_file("i.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[\"4\"],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "shape[0]");
    expect_reject(raw_file("j.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":4,\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "not an array");
}

TEST(mbq_tensor_names) {
    init_data();
    /* the same name twice (b renamed to a) */
    expect_reject(raw_file("a.mbq", hdr(TA ",{\"name\":\"a\",\"dtype\":\"u8\",\"shape\":[3],\"offset\":64,\"size\":3}",
                                        ""), g_data, 67), VLM_ERR_FORMAT, "tensor name 'a' appears twice");
    expect_reject(raw_file("b.mbq", hdr("{\"name\":\"\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}",
                                        ""), g_data, 16), VLM_ERR_FORMAT, "name of 0 bytes");
    char name[301], t[700];
    memset(name, 'n', 300);
    name[300] = 0;
    snprintf(t, sizeof t, "{\"name\":\"%s\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}", name);
    expect_reject(raw_file("c.mbq", hdr(t, ""), g_data, 16), VLM_ERR_FORMAT, "name of 300 bytes");
    name[257] = 0;
    snprintf(t, sizeof t, "{\"name\":\"%s\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":16}", name);
    expect_reject(raw_file("d.mbq", hdr(t, ""), g_data, 16), VLM_ERR_FORMAT, "name of 257 bytes");
    expect_reject(raw_file("e.mbq", hdr("{\"name\":\"a\\u007f\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "control character");
}

TEST(mbq_tensor_dtype) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f64\",\"shape\":[2],\"offset\":0,\"size\":16}",
                                        ""), g_data, 16), VLM_ERR_FORMAT, "unknown dtype 'f64'");
    expect_reject(raw_file("b.mbq", hdr("{\"name\":\"a\",\"dtype\":\"F32\",\"shape\":[4],\"offset\":0,\"size\":16}",
                                        ""), g_data, 16), VLM_ERR_FORMAT, "unknown dtype 'F32'");
    expect_reject(raw_file("c.mbq", hdr("{\"name\":\"a\",\"dtype\":0,\"shape\":[4],\"offset\":0,\"size\":16}", ""),
                           g_data, 16), VLM_ERR_FORMAT, "unknown dtype (not a string)");
}

TEST(mbq_tensor_shape) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[],\"offset\":0,\"size\":4}",
                                        ""), g_data, 4), VLM_ERR_FORMAT, "rank 0");
    expect_reject(raw_file("b.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[1,1,1,1,4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "rank 5");
    expect_reject(raw_file("c.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4,0],\"offset\":0,\"size\":0}",
                                        ""), NULL, 0), VLM_ERR_FORMAT, "tensor 'a' (f32 [4, 0]): every dimension");
    expect_reject(raw_file("d.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[-4],\"offset\":0,\"size\":16}",
                                        ""), g_data, 16), VLM_ERR_FORMAT, "shape[0]");
    /* 2^62 cannot be a dimension (above 2^53); 2^26 cubed overflows int64; 2^26 squared x 4 bytes >= 2^53 */
    expect_reject(raw_file("e.mbq", hdr("{\"name\":\"a\",\"dtype\":\"u8\",\"shape\":[4611686018427387904],"
                                        "\"offset\":0,\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "shape[0]");
    expect_reject(raw_file("f.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[67108864,67108864,67108864],"
                                        "\"offset\":0,\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "overflows");
    expect_reject(raw_file("g.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[67108864,67108864],"
                                        "\"offset\":0,\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "overflows");
    expect_reject(raw_file("h.mbq", hdr("{\"name\":\"w\",\"dtype\":\"w4g128\",\"shape\":[4294967296,4294967296],"
                                        "\"offset\":0,\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "overflows");
}

TEST(mbq_tensor_size_rules) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":0,\"size\":15}",
                                        ""), g_data, 15), VLM_ERR_FORMAT, "size is 15 bytes, but the dtype and shape "
                                                                          "need 16");
    expect_reject(raw_file("b.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f16\",\"shape\":[4],\"offset\":0,\"size\":16}",
                                        ""), g_data, 16), VLM_ERR_FORMAT, "need 8");
    expect_reject(raw_file("c.mbq", hdr("{\"name\":\"w\",\"dtype\":\"w3g128\",\"shape\":[896,100],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT,
                  "tensor 'w' (w3g128 [896, 100]): the input dimension is not a multiple of 128");
    expect_reject(raw_file("d.mbq", hdr("{\"name\":\"w\",\"dtype\":\"w4a8\",\"shape\":[128],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "rank 2");
    expect_reject(raw_file("e.mbq", hdr("{\"name\":\"w\",\"dtype\":\"q8r\",\"shape\":[1,1,4],\"offset\":0,"
                                        "\"size\":16}", ""), g_data, 16), VLM_ERR_FORMAT, "rank 2");
    /* the packed size is the layout's, not n*k*bits/8: w3g128 [1, 128] is 48 code bytes, then 2 scale bytes and
     * 1 zero byte, each plane starting at a multiple of 64 */
    struct vlm_qlayout L;
    if (!CHECK(vlm_qlayout(VLM_QF_W3G128, 1, 128, &L, NULL))) return;
    CHECK_EQ(L.zeros_off, 128);
    CHECK(L.total_bytes > 51 && L.total_bytes <= 192);
    unsigned char blob[192] = {0};
    char t[256], need[64];
    snprintf(t, sizeof t, "{\"name\":\"w\",\"dtype\":\"w3g128\",\"shape\":[1,128],\"offset\":0,\"size\":51}");
    snprintf(need, sizeof need, "need %zu", L.total_bytes);
    expect_reject(raw_file("f.mbq", hdr(t, ""), blob, 51), VLM_ERR_FORMAT, need);
    snprintf(t, sizeof t, "{\"name\":\"w\",\"dtype\":\"w3g128\",\"shape\":[1,128],\"offset\":0,\"size\":%zu}",
             L.total_bytes);
    expect_ok(raw_file("g.mbq", hdr(t, ""), blob, L.total_bytes));
}

TEST(mbq_tensor_offsets) {
    init_data();
    unsigned char big[256] = {0};
    memcpy(big, g_data, 67);
    /* b claims 128: a gap of 64 bytes (the data has b's bytes there, so only the offset rule can catch it) */
    memcpy(big + 128, "xyz", 3);
    expect_reject(raw_file("a.mbq", hdr(TA ",{\"name\":\"b\",\"dtype\":\"u8\",\"shape\":[3],\"offset\":128,"
                                        "\"size\":3}", ""), big, 131), VLM_ERR_FORMAT, "offset 128 leaves a gap");
    expect_reject(raw_file("b.mbq", hdr(TA ",{\"name\":\"b\",\"dtype\":\"u8\",\"shape\":[3],\"offset\":0,"
                                        "\"size\":3}", ""), g_data, 16), VLM_ERR_FORMAT, "overlaps");
    expect_reject(raw_file("c.mbq", hdr(TA ",{\"name\":\"b\",\"dtype\":\"u8\",\"shape\":[3],\"offset\":16,"
                                        "\"size\":3}", ""), g_data, 19), VLM_ERR_FORMAT, "not a multiple of 64");
    expect_reject(raw_file("d.mbq", hdr("{\"name\":\"a\",\"dtype\":\"f32\",\"shape\":[4],\"offset\":64,"
                                        "\"size\":16}", ""), big, 80), VLM_ERR_FORMAT, "expected 0");
    /* table order is file order: b listed before a */
    expect_reject(raw_file("e.mbq", hdr(TB "," TA, ""), g_data, 67), VLM_ERR_FORMAT, "tensor 'b' offset 64");
}

TEST(mbq_tokenizer_rules) {
    init_data();
    expect_reject(raw_file("a.mbq", hdr(TA "," TB, ",\"tokenizer\":{\"kind\":\"bpe\",\"tensor\":\"tok\"}"), g_data, 67),
                  VLM_ERR_FORMAT, "tokenizer tensor 'tok' is not in the tensor table");
    expect_reject(raw_file("b.mbq", hdr(TA "," TB, ",\"tokenizer\":{\"kind\":\"bpe\",\"tensor\":\"a\"}"), g_data, 67),
                  VLM_ERR_FORMAT, "dtype f32, not u8");
    expect_reject(raw_file("c.mbq", hdr(TA "," TB, ",\"tokenizer\":{\"kind\":\"wordpiece\",\"tensor\":\"b\"}"), g_data,
                           67), VLM_ERR_FORMAT, "\"kind\"");
    expect_reject(raw_file("d.mbq", hdr(TA "," TB, ",\"tokenizer\":{\"kind\":\"bpe\"}"), g_data, 67), VLM_ERR_FORMAT,
                  "\"tensor\"");
    expect_reject(raw_file("e.mbq", hdr(TA "," TB, ",\"tokenizer\":\"b\""), g_data, 67), VLM_ERR_FORMAT,
                  "\"tokenizer\" is not a JSON object");
    expect_reject(raw_file("f.mbq", hdr("", ",\"tokenizer\":{\"kind\":\"bpe\",\"tensor\":\"b\"}"), NULL, 0),
                  VLM_ERR_FORMAT, "not in the tensor table");
}

/* ---------------------------------------------------------------------------------------------------------------
 * writer failures: nothing left behind
 * ------------------------------------------------------------------------------------------------------------- */

static const struct mbq_tensor_decl k_two[2] = {{"a", VLM_QF_F32, 1, {4}}, {"b", VLM_MBQ_DTYPE_U8, 1, {3}}};

TEST(mbq_writer_nonexistent_dir) {
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/missing/model.mbq", dir);
    struct mbq_writer *w = (struct mbq_writer *)(uintptr_t)0x1234;
    test_capture_begin();
    CHECK_EQ(mbq_writer_open(path, NULL, k_two, 2, &w), VLM_ERR_IO);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "temporary file");
    CHECK(w == (struct mbq_writer *)(uintptr_t)0x1234);
    CHECK_EQ(dir_entries(dir), 0);
}

TEST(mbq_writer_unfinished) {
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/model.mbq", dir);
    struct mbq_writer *w = NULL;
    CHECK_EQ(mbq_writer_open(path, NULL, k_two, 2, &w), VLM_OK);
    CHECK_EQ(dir_entries(dir), 1); /* the temp file, next to path */
    CHECK_EQ(mbq_writer_write(w, 0, g_data, 16), VLM_OK);
    test_capture_begin();
    CHECK_EQ(mbq_writer_finish(w), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "tensor 'b' was declared but never written");
    CHECK(!file_exists(path));
    CHECK_EQ(dir_entries(dir), 0);
}

TEST(mbq_writer_bad_writes) {
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/model.mbq", dir);
    struct mbq_writer *w = NULL;
    if (!CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) return;
    test_capture_begin();
    CHECK_EQ(mbq_writer_write(w, 0, g_data, 15), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "tensor 'a' (f32 [4]): 15 bytes given, the declaration needs 16");
    test_capture_begin();
    CHECK_EQ(mbq_writer_write(w, 2, g_data, 3), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "index 2");
    test_capture_begin();
    CHECK_EQ(mbq_writer_write(w, -1, g_data, 3), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "index -1");
    CHECK_EQ(mbq_writer_write(w, 1, g_data, 3), VLM_OK);
    test_capture_begin();
    CHECK_EQ(mbq_writer_write(w, 1, g_data, 3), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "written twice");
    mbq_writer_abort(w);
    mbq_writer_abort(NULL);
    CHECK(!file_exists(path));
    CHECK_EQ(dir_entries(dir), 0);
    CHECK_EQ(mbq_writer_write(NULL, 0, g_data, 1), VLM_ERR_ARG);
    CHECK_EQ(mbq_writer_finish(NULL), VLM_ERR_ARG);
}

TEST(mbq_writer_parts) {
    init_data();
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/model.mbq", dir);
    struct mbq_writer *w = NULL;
    if (!CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) return;
    /* a in parts of 5, 0 and 11 bytes; b whole */
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data, 5), VLM_OK);
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data + 5, 0), VLM_OK);
    test_capture_begin();
    CHECK_EQ(mbq_writer_write(w, 0, g_data, 16), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "tensor 'a' (f32 [4]) is written twice");
    test_capture_begin();
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data + 5, 12), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "a part of 12 bytes at byte 5 passes its end (16 bytes)");
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data + 5, 11), VLM_OK);
    test_capture_begin();
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data, 0), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "written twice");
    CHECK_EQ(mbq_writer_write(w, 1, g_data + 64, 3), VLM_OK);
    CHECK_EQ(mbq_writer_finish(w), VLM_OK);
    struct mbq_file *f = NULL;
    if (CHECK(mbq_file_open(path, &f) == VLM_OK))
        CHECK(memcmp(mbq_file_at(f, 0)->data, g_data, 16) == 0 && memcmp(mbq_file_at(f, 1)->data, "xyz", 3) == 0);
    mbq_file_close(f);
    /* a tensor left incomplete: finish refuses and leaves no file */
    snprintf(path, sizeof path, "%s/partial.mbq", dir);
    if (!CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) return;
    CHECK_EQ(mbq_writer_write_part(w, 0, g_data, 5), VLM_OK);
    CHECK_EQ(mbq_writer_write(w, 1, g_data + 64, 3), VLM_OK);
    test_capture_begin();
    CHECK_EQ(mbq_writer_finish(w), VLM_ERR_ARG);
    test_capture_end(err, sizeof err);
    CHECK_ERROR_LINE(err, path, "tensor 'a' is incomplete: 5 of its 16 bytes written");
    CHECK(!file_exists(path));
    CHECK_EQ(dir_entries(dir), 1); /* model.mbq only */
}

/* Runs mbq_writer_open on decls expecting failure `want` with needle in the one error line, nothing left in dir. */
static void expect_writer_reject_at(const cJSON *meta, const struct mbq_tensor_decl *decls, int64_t n,
                                    enum vlm_status want, const char *needle, int line) {
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/model.mbq", dir);
    struct mbq_writer *w = NULL;
    test_capture_begin();
    enum vlm_status st = mbq_writer_open(path, meta, decls, n, &w);
    test_capture_end(err, sizeof err);
    if (st != want) test_fail(__FILE__, line, "got status %d, want %d: %s", st, want, err);
    if (!test_check_error_line(err, path, needle, __FILE__, line)) return;
    if (w) {
        test_fail(__FILE__, line, "writer returned on failure");
        mbq_writer_abort(w);
    }
    if (dir_entries(dir) != 0) test_fail(__FILE__, line, "files left in %s", dir);
}
#define expect_writer_reject(meta, decls, n, want, needle)                                                     \
    expect_writer_reject_at((meta), (decls), (n), (want), (needle), __LINE__)

TEST(mbq_writer_rejects_bad_declarations) {
    struct mbq_tensor_decl d[2] = {{"x", VLM_QF_W3G128, 2, {896, 900}}, {"y", VLM_QF_F32, 1, {4}}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT,
                         "tensor 'x' (w3g128 [896, 900]): the input dimension is not a multiple of 128");
    d[0] = (struct mbq_tensor_decl){"x", VLM_QF_F32, 5, {1, 1, 1, 1}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "rank 5");
    d[0] = (struct mbq_tensor_decl){"x", VLM_QF_F32, 0, {0}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "rank 0");
    d[0] = (struct mbq_tensor_decl){"x", VLM_QF_F32, 2, {3, -1}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "every dimension");
    d[0] = (struct mbq_tensor_decl){"x", VLM_QF_F32, 2, {(int64_t)1 << 62, 4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "overflows");
    d[0] = (struct mbq_tensor_decl){"x", 99, 1, {4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "unknown dtype 99");
    d[0] = (struct mbq_tensor_decl){"y", VLM_QF_F32, 1, {4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "tensor name 'y' appears twice");
    d[0] = (struct mbq_tensor_decl){"", VLM_QF_F32, 1, {4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "name of 0 bytes");
    d[0] = (struct mbq_tensor_decl){"a\nb", VLM_QF_F32, 1, {4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_FORMAT, "control character");
    d[0] = (struct mbq_tensor_decl){NULL, VLM_QF_F32, 1, {4}};
    expect_writer_reject(NULL, d, 2, VLM_ERR_ARG, "no name");

    /* meta goes through the same rules */
    cJSON *meta = cJSON_Parse("{\"tokenizer\": {\"kind\": \"bpe\", \"tensor\": \"tokenizer.json\"}}");
    expect_writer_reject(meta, k_two, 2, VLM_ERR_FORMAT, "not in the tensor table");
    cJSON_Delete(meta);
    meta = cJSON_Parse("{\"config\": 3}");
    expect_writer_reject(meta, k_two, 2, VLM_ERR_FORMAT, "\"config\" is not a JSON object");
    cJSON_Delete(meta);
    meta = cJSON_Parse("{\"report\": {\"k\": 1}}");
    cJSON_AddNumberToObject(cJSON_GetObjectItemCaseSensitive(meta, "report"), "k", 2); /* a duplicate key */
    expect_writer_reject(meta, k_two, 2, VLM_ERR_FORMAT, "'k' twice");
    cJSON_Delete(meta);
    meta = cJSON_Parse("{\"report\": {\"k\": \"x\"}}");
    cJSON_SetValuestring(cJSON_GetObjectItemCaseSensitive(meta, "report")->child, "\xff");
    expect_writer_reject(meta, k_two, 2, VLM_ERR_FORMAT, "UTF-8");
    cJSON_Delete(meta);
    meta = cJSON_CreateArray();
    expect_writer_reject(meta, k_two, 2, VLM_ERR_ARG, "invalid arguments");
    cJSON_Delete(meta);
    expect_writer_reject(NULL, k_two, -1, VLM_ERR_ARG, "invalid arguments");
    expect_writer_reject(NULL, NULL, 2, VLM_ERR_ARG, "invalid arguments");
}

/* The publishing step itself failing (runtime/util.c's vlm_file_tmp_publish): the destination is a directory, so
 * the final rename is refused. One error line naming it, the directory untouched, no temp file left. */
TEST(mbq_writer_rename_fails) {
    const char *dir = test_tmpdir();
    char path[700], err[1024];
    snprintf(path, sizeof path, "%s/model.mbq", dir);
    if (!CHECK_EQ(mkdir(path, 0755), 0)) return;
    init_data();
    struct mbq_writer *w = NULL;
    if (CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) {
        CHECK_EQ(mbq_writer_write(w, 0, g_data, 16), VLM_OK);
        CHECK_EQ(mbq_writer_write(w, 1, g_data + 64, 3), VLM_OK);
        test_capture_begin();
        CHECK_EQ(mbq_writer_finish(w), VLM_ERR_IO);
        test_capture_end(err, sizeof err);
        CHECK_ERROR_LINE(err, path, "cannot rename");
    }
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK_EQ(dir_entries(dir), 1); /* the directory only */
    CHECK_EQ(rmdir(path), 0);
}

TEST(mbq_writer_keeps_existing_file) {
    unsigned char *before;
    size_t n_before = 0;
    const char *path = sample_file(&before, &n_before);
    if (!before) return;
    char dir[700];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    /* a failed finish and an abort both leave the old file byte for byte */
    struct mbq_writer *w = NULL;
    char err[1024];
    if (CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) {
        test_capture_begin();
        CHECK(mbq_writer_finish(w) != VLM_OK);
        test_capture_end(err, sizeof err);
        CHECK_ERROR_LINE(err, path, "never written");
    }
    w = NULL;
    if (CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) mbq_writer_abort(w);
    size_t n_after = 0;
    unsigned char *after = read_file(path, &n_after);
    CHECK(after && n_after == n_before && memcmp(before, after, n_before) == 0);
    CHECK_EQ(dir_entries(dir), 1);
    free(after);
    /* a successful write replaces it */
    init_data();
    w = NULL;
    if (CHECK(mbq_writer_open(path, NULL, k_two, 2, &w) == VLM_OK)) {
        CHECK_EQ(mbq_writer_write(w, 1, g_data + 64, 3), VLM_OK);
        CHECK_EQ(mbq_writer_write(w, 0, g_data, 16), VLM_OK);
        CHECK_EQ(mbq_writer_finish(w), VLM_OK);
    }
    struct mbq_file *f = NULL;
    if (CHECK(mbq_file_open(path, &f) == VLM_OK)) {
        CHECK_EQ(mbq_file_count(f), 2);
        const struct mbq_tensor *b = mbq_file_find(f, "b");
        CHECK(b && b->size == 3 && memcmp(b->data, "xyz", 3) == 0);
        mbq_file_close(f);
    }
    CHECK_EQ(dir_entries(dir), 1);
    /* the writer's output for this pair is exactly the hand-framed base of the corrupt-file tests */
    size_t n_img = 0, n_raw = 0;
    unsigned char *img = read_file(path, &n_img);
    unsigned char *raw = raw_image(hdr(TA "," TB, ""), g_data, 67, &n_raw);
    CHECK(img && raw && n_img == n_raw && memcmp(img, raw, n_raw) == 0);
    free(img);
    free(raw);
    free(before);
}
