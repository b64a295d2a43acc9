/* test_safetensors.c — the strict safetensors reader (runtime/safetensors.c) against hand-written files: every rule
 * of targets.md §6.1 violated once (right status, no crash, one error line), exact F32/F16/BF16 conversion, lookup,
 * sharded checkpoints and their index rules, and a multi-GB sparse file. All files are written at test time in
 * test_tmpdir(). */
#include "test.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/safetensors.h"
#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------------------------------------------- */


/* Writes dir/name: 8-byte little-endian declared_len, then hdr (hdr_len bytes), then data. Returns the path
 * (static ring of buffers). */
static const char *write_file(const char *dir, const char *name, uint64_t declared_len, const char *hdr,
                              size_t hdr_len, const void *data, size_t data_len) {
    static char bufs[8][700];
    static int k;
    char *path = bufs[k++ & 7];
    snprintf(path, sizeof bufs[0], "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        FAIL("cannot create %s", path);
        return path;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(declared_len >> (8 * i));
    bool ok = fwrite(le, 1, 8, f) == 8;
    if (hdr_len) ok = ok && fwrite(hdr, 1, hdr_len, f) == hdr_len;
    if (data_len) ok = ok && fwrite(data, 1, data_len, f) == data_len;
    ok = (fclose(f) == 0) && ok;
    if (!ok) FAIL("cannot write %s", path);
    return path;
}

/* A well-formed file: header text (its real length) + data. */
static const char *write_st(const char *dir, const char *name, const char *hdr, const void *data, size_t n) {
    return write_file(dir, name, strlen(hdr), hdr, strlen(hdr), data, n);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    test_write_file(path, text, strlen(text));
}

/* Runs st_file_open with stderr captured; returns the status, copies the error text into err. Checks that a
 * failure leaves *out untouched and prints exactly one line. */
static enum vlm_status open_capture(const char *path, char *err, size_t cap) {
    struct st_checkpoint *sentinel = (struct st_checkpoint *)(uintptr_t)0x1234, *ck = sentinel;
    test_capture_begin();
    enum vlm_status st = st_file_open(path, &ck);
    test_capture_end(err, cap);
    if (st == VLM_OK) {
        st_checkpoint_close(ck);
    } else {
        CHECK(ck == sentinel); /* out-param untouched on failure */
        const char *nl = strchr(err, '\n');
        if (!CHECK(nl && nl[1] == '\0')) FAIL("expected exactly one error line, got: %s", err);
        CHECK(strstr(err, path) != NULL); /* the line names the file */
    }
    if (test_verbose() && err[0]) fprintf(stderr, "  stderr: %s", err);
    return st;
}

/* Expects a malformed file to be rejected with `want`; when `needle` is non-NULL the message must contain it. */
static void expect_reject(const char *path, enum vlm_status want, const char *needle) {
    char err[2048];
    enum vlm_status st = open_capture(path, err, sizeof err);
    if (st != want) FAIL("%s: got status %d (%s), want %d; stderr: %s", path, st, vlm_status_str(st), want, err);
    if (needle && !strstr(err, needle)) FAIL("%s: message lacks '%s': %s", path, needle, err);
}

static void expect_ok(const char *path) {
    char err[2048];
    enum vlm_status st = open_capture(path, err, sizeof err);
    if (st != VLM_OK) FAIL("%s: got status %d (%s); stderr: %s", path, st, vlm_status_str(st), err);
}

static const unsigned char k_zero[64];

/* ---------------------------------------------------------------------------------------------------------------
 * framing: header length and limits
 * ------------------------------------------------------------------------------------------------------------- */

TEST(st_missing_file) {
    char path[700];
    snprintf(path, sizeof path, "%s/nope.safetensors", test_tmpdir());
    expect_reject(path, VLM_ERR_IO, "cannot open");
}

TEST(st_missing_dir) {
    struct st_checkpoint *ck = NULL;
    CHECK_EQ(st_checkpoint_open("/nonexistent/dir/for/vlmrun", &ck), VLM_ERR_IO);
    CHECK(ck == NULL);
    char d[700];
    snprintf(d, sizeof d, "%s", test_tmpdir()); /* exists, but holds no checkpoint */
    CHECK_EQ(st_checkpoint_open(d, &ck), VLM_ERR_IO);
    CHECK(ck == NULL);
}

TEST(st_null_args) {
    struct st_checkpoint *ck = NULL;
    CHECK_EQ(st_file_open(NULL, &ck), VLM_ERR_ARG);
    CHECK_EQ(st_checkpoint_open(NULL, &ck), VLM_ERR_ARG);
    CHECK_EQ(st_checkpoint_open("/tmp", NULL), VLM_ERR_ARG);
    st_checkpoint_close(NULL); /* no-op */
}

TEST(st_empty_file) {
    const char *dir = test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
    expect_reject(path, VLM_ERR_FORMAT, "too short");
}

TEST(st_seven_bytes) {
    const char *dir = test_tmpdir();
    char path[700];
    snprintf(path, sizeof path, "%s/seven.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (f) fwrite("\x02\0\0\0\0\0\0", 1, 7, f), fclose(f);
    expect_reject(path, VLM_ERR_FORMAT, "too short");
}

TEST(st_header_len_past_eof) {
    const char *h = "{}";
    expect_reject(write_file(test_tmpdir(), "a.safetensors", 1000, h, 2, NULL, 0), VLM_ERR_FORMAT, "past the end");
}

TEST(st_header_len_over_limit) {
    const char *h = "{}";
    expect_reject(write_file(test_tmpdir(), "a.safetensors", 100000001ull, h, 2, NULL, 0), VLM_ERR_FORMAT, "limit");
    /* a length that would wrap 8 + N */
    expect_reject(write_file(test_tmpdir(), "b.safetensors", UINT64_MAX - 3, h, 2, NULL, 0), VLM_ERR_FORMAT, "limit");
}

TEST(st_header_zero_len) {
    expect_reject(write_file(test_tmpdir(), "a.safetensors", 0, NULL, 0, NULL, 0), VLM_ERR_FORMAT, "'{'");
}

TEST(st_header_not_brace) {
    expect_reject(write_st(test_tmpdir(), "a.safetensors", " {}", NULL, 0), VLM_ERR_FORMAT, "'{'");
    /* a top-level array cannot start with '{' either */
    expect_reject(write_st(test_tmpdir(), "b.safetensors", "[{\"a\":1}]", NULL, 0), VLM_ERR_FORMAT, "'{'");
}

TEST(st_invalid_json) {
    expect_reject(write_st(test_tmpdir(), "a.safetensors", "{\"a\": }", NULL, 0), VLM_ERR_FORMAT, "JSON");
    expect_reject(write_st(test_tmpdir(), "b.safetensors", "{\"a\": {\"dtype\": \"F32\"", NULL, 0), VLM_ERR_FORMAT,
                  NULL);
    /* something after the object other than padding spaces */
    expect_reject(write_st(test_tmpdir(), "c.safetensors", "{}x", NULL, 0), VLM_ERR_FORMAT, "after the JSON");
    expect_reject(write_st(test_tmpdir(), "d.safetensors", "{}{}", NULL, 0), VLM_ERR_FORMAT, "after the JSON");
}

TEST(st_header_bytes_not_utf8_or_control) {
    const char *dir = test_tmpdir();
    /* invalid UTF-8 (a lone continuation byte) inside a metadata string */
    expect_reject(write_st(dir, "a.safetensors", "{\"__metadata__\": {\"k\": \"\x80\"}}", NULL, 0), VLM_ERR_FORMAT,
                  "UTF-8");
    /* an overlong encoding of '/' */
    expect_reject(write_st(dir, "b.safetensors", "{\"__metadata__\": {\"k\": \"\xc0\xaf\"}}", NULL, 0),
                  VLM_ERR_FORMAT, "UTF-8");
    /* a NUL byte inside the header */
    static const char nul_hdr[] = "{\"__metadata__\": {\"k\": \"a\0b\"}}";
    expect_reject(write_file(dir, "c.safetensors", sizeof nul_hdr - 1, nul_hdr, sizeof nul_hdr - 1, NULL, 0),
                  VLM_ERR_FORMAT, "control");
    /* a \u0000 escape would make two names compare equal in C */
    expect_reject(write_st(dir, "d.safetensors", "{\"a\\u0000b\": {\"dtype\": \"F32\", \"shape\": [0], "
                                                 "\"data_offsets\": [0, 0]}}", NULL, 0), VLM_ERR_FORMAT, "u0000");
    /* an escaped control character in a name would split the one-line messages */
    expect_reject(write_st(dir, "f.safetensors", "{\"a\\nb\": {\"dtype\": \"F32\", \"shape\": [0], "
                                                 "\"data_offsets\": [0, 0]}}", NULL, 0), VLM_ERR_FORMAT, "control");
    /* valid multi-byte UTF-8 in a name is fine */
    expect_ok(write_st(dir, "e.safetensors", "{\"caf\xc3\xa9\": {\"dtype\": \"F32\", \"shape\": [0], "
                                             "\"data_offsets\": [0, 0]}}", NULL, 0));
}

/* ---------------------------------------------------------------------------------------------------------------
 * header content
 * ------------------------------------------------------------------------------------------------------------- */

TEST(st_duplicate_key) {
    const char *h = "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                    " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 8), VLM_ERR_FORMAT, "twice");
    /* a duplicated field inside one tensor entry */
    const char *h2 = "{\"w\": {\"dtype\": \"F32\", \"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_reject(write_st(test_tmpdir(), "b.safetensors", h2, k_zero, 4), VLM_ERR_FORMAT, "twice");
}

TEST(st_unknown_dtype) {
    const char *h = "{\"w\": {\"dtype\": \"F17\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 4), VLM_ERR_FORMAT, "dtype");
    const char *h2 = "{\"w\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_reject(write_st(test_tmpdir(), "b.safetensors", h2, k_zero, 4), VLM_ERR_FORMAT, "dtype");
    const char *h3 = "{\"w\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}"; /* case matters */
    expect_reject(write_st(test_tmpdir(), "c.safetensors", h3, k_zero, 4), VLM_ERR_FORMAT, "dtype");
}

TEST(st_other_dtypes_accepted_and_marked) {
    const char *h = "{\"a\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 16]},"
                    " \"b\": {\"dtype\": \"BOOL\", \"shape\": [3], \"data_offsets\": [16, 19]},"
                    " \"c\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [19, 20]},"
                    " \"d\": {\"dtype\": \"F4\", \"shape\": [4], \"data_offsets\": [20, 22]}}";
    const char *path = write_st(test_tmpdir(), "a.safetensors", h, k_zero, 22);
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_file_open(path, &ck) == VLM_OK)) return;
    const struct st_tensor *a = st_checkpoint_find(ck, "a"), *d = st_checkpoint_find(ck, "d");
    if (CHECK(a && d)) {
        CHECK(a->dtype == VLM_DTYPE_OTHER);
        CHECK(!strcmp(a->dtype_name, "I64"));
        CHECK_EQ(d->size_bytes, 2);
    }
    st_checkpoint_close(ck);
    /* 3 F4 values are 12 bits: not a whole number of bytes */
    const char *h2 = "{\"d\": {\"dtype\": \"F4\", \"shape\": [3], \"data_offsets\": [0, 2]}}";
    expect_reject(write_st(test_tmpdir(), "b.safetensors", h2, k_zero, 2), VLM_ERR_FORMAT, "whole number");
}

TEST(st_bad_shape) {
    const char *dir = test_tmpdir();
    expect_reject(write_st(dir, "a.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], "
                                                 "\"data_offsets\": [0, 4]}}", k_zero, 4), VLM_ERR_FORMAT, "shape");
    expect_reject(write_st(dir, "b.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2.5], "
                                                 "\"data_offsets\": [0, 10]}}", k_zero, 10), VLM_ERR_FORMAT, "shape");
    expect_reject(write_st(dir, "c.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"1\"], "
                                                 "\"data_offsets\": [0, 4]}}", k_zero, 4), VLM_ERR_FORMAT, "shape");
    expect_reject(write_st(dir, "d.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": 1, "
                                                 "\"data_offsets\": [0, 4]}}", k_zero, 4), VLM_ERR_FORMAT, "shape");
    expect_reject(write_st(dir, "e.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                                                 "\"data_offsets\": [0, 4]}}", k_zero, 4), VLM_ERR_FORMAT, "rank");
    expect_reject(write_st(dir, "f.safetensors", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", k_zero,
                           4), VLM_ERR_FORMAT, "lacks");
    expect_reject(write_st(dir, "g.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": "
                                                 "[0, 4], \"extra\": 1}}", k_zero, 4), VLM_ERR_FORMAT, "unknown field");
    /* rank 8 and rank 0 are legal */
    expect_ok(write_st(dir, "h.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1], "
                                             "\"data_offsets\": [0, 4]}}", k_zero, 4));
    expect_ok(write_st(dir, "i.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [], "
                                             "\"data_offsets\": [0, 4]}}", k_zero, 4));
}

TEST(st_shape_product_overflow) {
    /* 2^40 x 2^40 elements: the element count overflows int64 */
    expect_reject(write_st(test_tmpdir(), "a.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": "
                           "[1099511627776, 1099511627776], \"data_offsets\": [0, 0]}}", NULL, 0), VLM_ERR_FORMAT,
                  "overflow");
    /* 2^31 x 2^31 fits int64 (2^62) but x 32 bits overflows */
    expect_reject(write_st(test_tmpdir(), "b.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": "
                           "[2147483648, 2147483648], \"data_offsets\": [0, 0]}}", NULL, 0), VLM_ERR_FORMAT,
                  "overflow");
    /* a zero dimension makes the product 0 even next to a huge one: legal, zero bytes */
    expect_ok(write_st(test_tmpdir(), "c.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": "
                       "[0, 4503599627370496], \"data_offsets\": [0, 0]}}", NULL, 0));
    /* a dimension beyond 2^53 cannot be represented exactly: rejected */
    expect_reject(write_st(test_tmpdir(), "d.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": "
                           "[18446744073709551616], \"data_offsets\": [0, 0]}}", NULL, 0), VLM_ERR_FORMAT, "shape");
}

TEST(st_offsets_begin_after_end) {
    expect_reject(write_st(test_tmpdir(), "a.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [4, 0]}}", k_zero, 4), VLM_ERR_FORMAT, "begin > end");
    expect_reject(write_st(test_tmpdir(), "b.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [0]}}", k_zero, 4), VLM_ERR_FORMAT, "pair");
    expect_reject(write_st(test_tmpdir(), "c.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [-4, 0]}}", k_zero, 4), VLM_ERR_FORMAT, "data_offsets");
}

TEST(st_gap_between_tensors) {
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                    " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 12), VLM_ERR_FORMAT, "gap");
}

TEST(st_overlapping_tensors) {
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                    " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 12), VLM_ERR_FORMAT,
                  "tensor 'b' data_offsets [4, 12] overlap the previous tensor ending at 8");
    /* the same bytes claimed twice (aliasing) */
    const char *h2 = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                     " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_reject(write_st(test_tmpdir(), "b.safetensors", h2, k_zero, 4), VLM_ERR_FORMAT, "overlap");
}

TEST(st_first_begin_not_zero) {
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 8), VLM_ERR_FORMAT, "not 0");
}

TEST(st_size_mismatch) {
    const char *h = "{\"a\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 8]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 8), VLM_ERR_FORMAT, "needs 6");
}

TEST(st_trailing_bytes) {
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 5), VLM_ERR_FORMAT, "trailing");
}

TEST(st_truncated_data) {
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}";
    expect_reject(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 15), VLM_ERR_FORMAT, "truncated");
    expect_reject(write_st(test_tmpdir(), "b.safetensors", h, NULL, 0), VLM_ERR_FORMAT, "truncated");
}

TEST(st_name_length) {
    char name[300], hdr[600];
    memset(name, 'n', 257);
    name[257] = 0;
    snprintf(hdr, sizeof hdr, "{\"%s\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", name);
    expect_reject(write_st(test_tmpdir(), "a.safetensors", hdr, k_zero, 4), VLM_ERR_FORMAT, "name");
    name[256] = 0; /* exactly 256 bytes: fine */
    snprintf(hdr, sizeof hdr, "{\"%s\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", name);
    expect_ok(write_st(test_tmpdir(), "b.safetensors", hdr, k_zero, 4));
    expect_reject(write_st(test_tmpdir(), "c.safetensors", "{\"\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [0, 4]}}", k_zero, 4), VLM_ERR_FORMAT, "name");
}

TEST(st_metadata_rules) {
    const char *dir = test_tmpdir();
    expect_reject(write_st(dir, "a.safetensors", "{\"__metadata__\": {\"format\": 1}}", NULL, 0), VLM_ERR_FORMAT,
                  "not a string");
    expect_reject(write_st(dir, "b.safetensors", "{\"__metadata__\": [\"pt\"]}", NULL, 0), VLM_ERR_FORMAT,
                  "__metadata__");
    expect_ok(write_st(dir, "c.safetensors", "{\"__metadata__\": {\"format\": \"pt\"}}", NULL, 0));
    /* an entry that is not an object */
    expect_reject(write_st(dir, "d.safetensors", "{\"w\": 5}", NULL, 0), VLM_ERR_FORMAT, "not a JSON object");
}

TEST(st_header_padding_and_empty) {
    /* writers pad the header with spaces up to an 8-byte boundary */
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}       ";
    expect_ok(write_st(test_tmpdir(), "a.safetensors", h, k_zero, 4));
    /* no tensors at all is a valid (empty) file */
    expect_ok(write_st(test_tmpdir(), "b.safetensors", "{}", NULL, 0));
    /* zero-element tensors share an offset */
    const char *h3 = "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]},"
                     " \"b\": {\"dtype\": \"F16\", \"shape\": [2, 0], \"data_offsets\": [0, 0]},"
                     " \"c\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    expect_ok(write_st(test_tmpdir(), "c.safetensors", h3, k_zero, 4));
}

/* ---------------------------------------------------------------------------------------------------------------
 * values and lookup
 * ------------------------------------------------------------------------------------------------------------- */

/* Independent reference for binary16 -> float: sign * man * 2^-24 (subnormal) or (1024 + man) * 2^(exp - 25). */
static float f16_ref(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    double v;
    if (exp == 31) v = man ? NAN : INFINITY;
    else if (exp == 0) v = ldexp((double)man, -24);
    else v = ldexp((double)(1024 + man), exp - 25);
    return (float)(sign ? -v : v);
}

TEST(st_f16_exhaustive) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = vlm_f16_to_f32((uint16_t)h), ref = f16_ref((uint16_t)h);
        bool ok = isnan(ref) ? isnan(got) : (memcmp(&got, &ref, 4) == 0); /* bitwise: keeps -0 */
        if (!ok && bad++ < 5) FAIL("f16 0x%04x: got %a, want %a", h, (double)got, (double)ref);
    }
    CHECK_EQ(bad, 0);
    /* NaN keeps sign and payload bits (quiet NaN 0x7e00 -> 0x7fc00000) */
    float q = vlm_f16_to_f32(0x7e00);
    uint32_t qb;
    memcpy(&qb, &q, 4);
    CHECK_EQ(qb, 0x7fc00000u);
}

TEST(st_roundtrip_f32_f16_bf16) {
    /* F32: -0, smallest subnormal, max, inf, nan */
    const uint32_t f32_bits[6] = {0x00000000u, 0x80000000u, 0x00000001u, 0x7f7fffffu, 0xff800000u, 0x7fc00001u};
    /* F16: 0, -0, smallest subnormal, largest subnormal, smallest normal, 1, -2, 65504, inf, -inf, nan, 1/3 */
    const uint16_t f16_bits[12] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00,
                                   0xc000, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x3555};
    const float f16_want[12] = {0.0f, -0.0f, 0x1p-24f, 0x3ffp-24f, 0x1p-14f, 1.0f,
                                -2.0f, 65504.0f, INFINITY, -INFINITY, NAN, 0x1.554p-2f};
    /* BF16: 1, -1.5, smallest subnormal (2^-133), inf, nan, 3.140625 */
    const uint16_t bf16_bits[6] = {0x3f80, 0xbfc0, 0x0001, 0x7f80, 0x7fc0, 0x4049};
    const float bf16_want[6] = {1.0f, -1.5f, 0x1p-133f, INFINITY, NAN, 3.140625f};

    unsigned char data[24 + 24 + 12];
    for (int i = 0; i < 6; i++)
        for (int b = 0; b < 4; b++) data[4 * i + b] = (unsigned char)(f32_bits[i] >> (8 * b));
    for (int i = 0; i < 12; i++) data[24 + 2 * i] = (unsigned char)f16_bits[i], data[25 + 2 * i] = f16_bits[i] >> 8;
    for (int i = 0; i < 6; i++) data[48 + 2 * i] = (unsigned char)bf16_bits[i], data[49 + 2 * i] = bf16_bits[i] >> 8;
    /* deliberately listed out of offset order in the header */
    const char *h = "{\"half\": {\"dtype\": \"F16\", \"shape\": [3, 4], \"data_offsets\": [24, 48]},"
                    " \"__metadata__\": {\"format\": \"pt\"},"
                    " \"single\": {\"dtype\": \"F32\", \"shape\": [6], \"data_offsets\": [0, 24]},"
                    " \"brain\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [48, 60]}}";
    const char *path = write_st(test_tmpdir(), "model.safetensors", h, data, sizeof data);
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_file_open(path, &ck) == VLM_OK)) return;
    CHECK_EQ(st_checkpoint_count(ck), 3);
    CHECK(st_checkpoint_find(ck, "__metadata__") == NULL);
    CHECK(st_checkpoint_find(ck, "nope") == NULL);
    CHECK(st_checkpoint_find(ck, "Half") == NULL);
    const struct st_tensor *s = st_checkpoint_find(ck, "single"), *f = st_checkpoint_find(ck, "half"),
                           *b = st_checkpoint_find(ck, "brain");
    if (!CHECK(s && f && b)) goto done;
    CHECK(s->dtype == VLM_DTYPE_F32 && f->dtype == VLM_DTYPE_F16 && b->dtype == VLM_DTYPE_BF16);
    CHECK(f->n_dims == 2 && f->shape[0] == 3 && f->shape[1] == 4 && f->n_elements == 12 && f->size_bytes == 24);
    CHECK(!strcmp(st_checkpoint_file_path(ck, f), path));
    float out[12];
    st_tensor_to_f32(s, out);
    for (int i = 0; i < 6; i++) {
        uint32_t got;
        memcpy(&got, &out[i], 4);
        if (got != f32_bits[i]) FAIL("F32[%d]: bits 0x%08x, want 0x%08x", i, got, f32_bits[i]);
    }
    st_tensor_to_f32(f, out);
    CHECK_NEAR_TENSOR("f16", out, f16_want, 12, 0, 0);
    CHECK(signbit(out[1]) && !signbit(out[0]));
    st_tensor_to_f32(b, out);
    CHECK_NEAR_TENSOR("bf16", out, bf16_want, 6, 0, 0);
    /* st_checkpoint_at walks in offset order */
    CHECK(!strcmp(st_checkpoint_at(ck, 0)->name, "single"));
    CHECK(!strcmp(st_checkpoint_at(ck, 2)->name, "brain"));
done:
    st_checkpoint_close(ck);
}

TEST(st_many_tensors_found_by_name) {
    /* 40 tensors of 1 float each, names in reverse order relative to offsets */
    char hdr[8192];
    size_t k = 0;
    float data[40];
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < 40; i++) {
        data[i] = (float)i * 0.5f;
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"t.%02d\": {\"dtype\": \"F32\", \"shape\": [1, 1], "
                              "\"data_offsets\": [%d, %d]}", i ? ", " : "", 39 - i, 4 * i, 4 * i + 4);
    }
    snprintf(hdr + k, sizeof hdr - k, "}");
    const char *path = write_st(test_tmpdir(), "m.safetensors", hdr, data, sizeof data);
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_file_open(path, &ck) == VLM_OK)) return;
    CHECK_EQ(st_checkpoint_count(ck), 40);
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof name, "t.%02d", i);
        const struct st_tensor *t = st_checkpoint_find(ck, name);
        if (!CHECK(t != NULL)) continue;
        float v;
        st_tensor_to_f32(t, &v);
        if (v != (float)(39 - i) * 0.5f) FAIL("%s = %g", name, (double)v);
    }
    st_checkpoint_close(ck);
}

TEST(st_multi_gb_sparse_file) {
    /* a 5 GB F16 tensor in a sparse file: offsets above 4 GiB must survive (no 32-bit truncation), and mmap of a
     * multi-GB file must work. Only the last page is touched. */
    const char *h = "{\"big\": {\"dtype\": \"F16\", \"shape\": [50000, 50000], \"data_offsets\": [0, 5000000000]},"
                    " \"tail\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [5000000000, 5000000004]}}";
    const char *path = write_st(test_tmpdir(), "big.safetensors", h, NULL, 0);
    uint64_t total = 8 + strlen(h) + 5000000004ull;
    if (truncate(path, (off_t)total) != 0) {
        FAIL("cannot make a 5 GB sparse file in %s", path);
        return;
    }
    /* put 1.0f in "tail" */
    FILE *f = fopen(path, "r+b");
    const unsigned char one[4] = {0x00, 0x00, 0x80, 0x3f};
    if (!f || fseeko(f, (off_t)(total - 4), SEEK_SET) != 0 || fwrite(one, 1, 4, f) != 4) FAIL("cannot write tail");
    if (f) fclose(f);
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_file_open(path, &ck) == VLM_OK)) return;
    const struct st_tensor *big = st_checkpoint_find(ck, "big"), *tail = st_checkpoint_find(ck, "tail");
    if (CHECK(big && tail)) {
        CHECK_EQ(big->n_elements, 2500000000ll);
        CHECK_EQ(big->size_bytes, 5000000000ll);
        CHECK_EQ(tail->data_offset, 5000000000ll);
        float v = 0;
        st_tensor_to_f32(tail, &v);
        CHECK(v == 1.0f);
        const unsigned char *last = (const unsigned char *)big->data + big->size_bytes - 1;
        CHECK(*last == 0);
    }
    st_checkpoint_close(ck);
    /* one byte short: truncated */
    if (truncate(path, (off_t)(total - 1)) == 0) expect_reject(path, VLM_ERR_FORMAT, "truncated");
}

/* ---------------------------------------------------------------------------------------------------------------
 * sharded checkpoints
 * ------------------------------------------------------------------------------------------------------------- */

/* Writes two valid shards a.safetensors {x, y} and b.safetensors {z} into dir. */
static void write_two_shards(const char *dir) {
    const float xa[2] = {1, 2}, xb[1] = {3};
    unsigned char d1[12];
    memcpy(d1, xa, 8);
    memcpy(d1 + 8, xb, 4);
    write_st(dir, "model-00001-of-00002.safetensors",
             "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"y\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", d1, 12);
    const uint16_t z[3] = {0x3c00, 0x4000, 0x4200}; /* 1, 2, 3 in F16 */
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"z\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 6]}}", z, 6);
}

static enum vlm_status open_dir(const char *dir) {
    struct st_checkpoint *ck = NULL;
    enum vlm_status st = st_checkpoint_open(dir, &ck);
    st_checkpoint_close(ck);
    return st;
}

TEST(st_sharded_ok) {
    const char *dir = test_tmpdir();
    write_two_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 18}, \"weight_map\": {"
               "\"x\": \"model-00001-of-00002.safetensors\", \"z\": \"model-00002-of-00002.safetensors\","
               "\"y\": \"model-00001-of-00002.safetensors\"}}");
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_checkpoint_open(dir, &ck) == VLM_OK)) return;
    CHECK_EQ(st_checkpoint_count(ck), 3);
    CHECK_EQ(st_checkpoint_n_files(ck), 2);
    const struct st_tensor *x = st_checkpoint_find(ck, "x"), *z = st_checkpoint_find(ck, "z");
    if (CHECK(x && z)) {
        CHECK(strstr(st_checkpoint_file_path(ck, x), "model-00001-of-00002.safetensors") != NULL);
        CHECK(strstr(st_checkpoint_file_path(ck, z), "model-00002-of-00002.safetensors") != NULL);
        float v[3];
        const float want[3] = {1, 2, 3};
        st_tensor_to_f32(z, v);
        CHECK_NEAR_TENSOR("z", v, want, 3, 0, 0);
    }
    st_checkpoint_close(ck);
}

TEST(st_single_file_preferred) {
    const char *dir = test_tmpdir();
    write_st(dir, "model.safetensors", "{\"only\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
             k_zero, 4);
    write_text(dir, "model.safetensors.index.json", "not even JSON");
    struct st_checkpoint *ck = NULL;
    if (!CHECK(st_checkpoint_open(dir, &ck) == VLM_OK)) return;
    CHECK(st_checkpoint_find(ck, "only") != NULL);
    st_checkpoint_close(ck);
}

TEST(st_index_missing_shard) {
    const char *dir = test_tmpdir();
    write_two_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"y\": \"model-00001-of-00002."
               "safetensors\", \"z\": \"model-00002-of-00002.safetensors\", \"w\": \"model-00003-of-00003."
               "safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_IO);
}

TEST(st_index_wrong_shard) {
    const char *dir = test_tmpdir();
    write_two_shards(dir);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"y\": \"model-00002-of-00002."
               "safetensors\", \"z\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
}

TEST(st_index_unsafe_shard_names) {
    const char *dir = test_tmpdir();
    write_two_shards(dir);
    const char *bad[] = {"../model-00001-of-00002.safetensors", "sub/model.safetensors", "/etc/passwd", "..", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char idx[512];
        snprintf(idx, sizeof idx, "{\"weight_map\": {\"x\": \"%s\"}}", bad[i]);
        write_text(dir, "model.safetensors.index.json", idx);
        if (open_dir(dir) != VLM_ERR_FORMAT) FAIL("shard name '%s' was not rejected", bad[i]);
    }
}

TEST(st_index_incomplete_or_extra) {
    const char *dir = test_tmpdir();
    write_two_shards(dir);
    /* y is in shard 1 but not in the map */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"z\": \"model-00002-of-00002."
               "safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    /* the map names a tensor no shard holds */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"y\": \"model-00001-of-00002."
               "safetensors\", \"z\": \"model-00002-of-00002.safetensors\", \"ghost\": \"model-00002-of-00002."
               "safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    /* no weight_map, weight_map not an object, duplicate key in the map, empty map */
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": [\"x\"]}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", \"x\": \"model-00002-of-00002."
               "safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": 1}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
    write_text(dir, "model.safetensors.index.json", "[1, 2]");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
}

TEST(st_duplicate_name_across_shards) {
    const char *dir = test_tmpdir();
    write_st(dir, "s1.safetensors", "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
             k_zero, 4);
    write_st(dir, "s2.safetensors", "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"y\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", k_zero, 8);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
}

TEST(st_bad_shard_content) {
    const char *dir = test_tmpdir();
    write_st(dir, "s1.safetensors", "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
             k_zero, 3); /* truncated */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"s1.safetensors\"}}");
    CHECK_EQ(open_dir(dir), VLM_ERR_FORMAT);
}

TEST(st_tiny_fixtures_open) {
    /* the committed tiny checkpoints (missing files fail the test) */
    const char *dirs[] = {"tests/data/models/tiny_single", "tests/data/models/tiny_unpad",
                          "tests/data/models/tiny_pool"};
    const int files[] = {1, 1, 4};
    for (int i = 0; i < 3; i++) {
        struct st_checkpoint *ck = NULL;
        if (!CHECK(st_checkpoint_open(test_path(dirs[i]), &ck) == VLM_OK)) continue;
        CHECK_EQ(st_checkpoint_n_files(ck), files[i]);
        CHECK(st_checkpoint_count(ck) > 50);
        st_checkpoint_close(ck);
    }
}
