/* test.h — the plain C test harness. Every test_*.c is linked into one runner (build/tests/run_tests);
 * TEST(name) registers a case at load time. A case passes when none of its CHECKs failed. The runner prints
 * one closing line "N passed, N failed[, N skipped]" and exits non-zero exactly when failed > 0.
 * Options: -v (print every case), -k SUBSTR (run only cases whose name contains SUBSTR).
 * Paths: VLM_SRC_DIR is the repository root (set by the Makefile); use test_path("tests/golden/x.bin"). */
#ifndef VLM_TEST_H
#define VLM_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);

#define TEST(name)                                                                                  \
    static void test_case_##name(void);                                                             \
    __attribute__((constructor)) static void test_reg_##name(void) {                               \
        test_register(#name, __FILE__, test_case_##name);                                           \
    }                                                                                               \
    static void test_case_##name(void)

/* Records a failure (with file:line and the expression) when cond is false; returns cond. */
bool test_check(bool cond, const char *expr, const char *file, int line);
#define CHECK(cond) test_check((cond), #cond, __FILE__, __LINE__)
bool test_check_i64(int64_t got, int64_t want, const char *expr, const char *file, int line);
#define CHECK_EQ(got, want) test_check_i64((int64_t)(got), (int64_t)(want), #got " == " #want, __FILE__, __LINE__)

/* Passes when every |got-ref| <= atol + rtol*|ref| and NaN/Inf classes agree; reports the max error and the
 * worst index on failure. n == 0 is a failure (an empty comparison proves nothing). */
bool test_check_near(const char *label, const float *got, const float *ref, int64_t n, double atol, double rtol,
                     const char *file, int line);
#define CHECK_NEAR_TENSOR(label, got, ref, n, atol, rtol)                                           \
    test_check_near((label), (got), (ref), (n), (atol), (rtol), __FILE__, __LINE__)

/* Marks the current case skipped with a reason (only for hardware that is absent, never for missing data). */
void test_skip(const char *why);
/* Records a failure with a message. */
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define FAIL(...) test_fail(__FILE__, __LINE__, __VA_ARGS__)

bool test_verbose(void);
/* Absolute path of a file under the repository root (static buffer ring; valid for a few calls). */
const char *test_path(const char *rel);
/* A fresh, empty temporary directory (under $TMPDIR); the string stays valid and the runner removes the
 * directory at exit. */
const char *test_tmpdir(void);
/* The path of a file called name in a fresh temporary directory (same lifetime as test_tmpdir). */
const char *test_tmp_path(const char *name);

/* The whole file at path (malloc'd, NUL-terminated) and its length in *len; NULL when it cannot be read. */
char *test_read_file(const char *path, size_t *len);
/* Writes n bytes to path (creating or truncating it); records a failure when it cannot. */
void test_write_file(const char *path, const void *data, size_t n);
/* CRC-32 as PNG and zlib define it (polynomial 0xEDB88320), for tests that craft PNG chunks. */
uint32_t test_crc32(const uint8_t *p, size_t n);

/* Runs a shell command line, returns its exit status (-1 if it did not exit normally); captures the
 * first cap-1 bytes of stderr into err_buf when non-NULL. */
int test_run_cmd(const char *cmdline, char *err_buf, size_t cap);

/* Redirects stderr (fd 2) into a temporary file until the matching test_capture_end. Nestable: the runner
 * captures each case (and replays it only on failure or with -v), and a case may capture inside that. */
void test_capture_begin(void);
/* Ends the innermost capture, restoring the previous stderr; copies up to cap-1 bytes of what was written to buf
 * (NUL-terminated) and returns the full byte count. */
size_t test_capture_end(char *buf, size_t cap);
/* Checks that msg is exactly one line, starting "vlmrun: error: ", containing each non-NULL needle. */
bool test_check_error_line(const char *msg, const char *needle1, const char *needle2, const char *file, int line);
#define CHECK_ERROR_LINE(msg, n1, n2) test_check_error_line((msg), (n1), (n2), __FILE__, __LINE__)

/* The real Qwen2 tokenizer.json, decompressed once (gzip -dc) from tests/data/tokenizers/qwen2/tokenizer.json.gz
 * into the run's temporary folder; NULL after recording a failure. */
const char *test_qwen2_tokenizer_path(void);

/* A copy of tests/data/models/tiny_q with tests/data/calib/tiny_tokenizer.json as its tokenizer.json (ids that fit
 * tiny_q's 1024 embedding rows), made once per run under the run's temp dir. text_mode also sets the config's
 * image_token_index to the tokenizer's <image> (263), as vlmrun's text prompts require; otherwise the config is
 * tiny_q's. "" after a failed CHECK. */
const char *test_tiny_q_tokenized(bool text_mode);

/* A shared deterministic generator for synthetic test data (xorshift64; one stream for the whole run, so a case's
 * data depends on the cases before it — fine for comparisons against in-process references). */
uint32_t test_rand_u32(void);
float test_rand_unit(void);   /* uniform in (0, 1) */
float test_rand_normal(void); /* N(0, 1), Box-Muller */
/* The same generator on a caller's own state, for a file whose data (and the margins its bounds were measured
 * with) must not depend on which cases ran before it. */
uint32_t test_rng_u32(uint64_t *state);
float test_rng_unit(uint64_t *state);
float test_rng_normal(uint64_t *state);

/* Max abs difference and cosine similarity of two vectors. */
double test_max_abs_diff(const float *a, const float *b, int64_t n);
/* Normalised mean squared error Σ(got − ref)² / Σref² (the plain sum when ref is all zero), in double. */
double test_nmse(const float *got, const float *ref, int64_t n);
/* A quiet load (the summary line captured) of rel_dir under the source tree, the decoder's linears streamed when
 * asked (vlm_load_opts); NULL after a failed CHECK. */
struct vlm_model;
struct vlm_model *test_load_model(const char *rel_dir, bool stream);
double test_cosine(const float *a, const float *b, int64_t n);

#endif
