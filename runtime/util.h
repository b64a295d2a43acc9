/* util.h — always-on asserts, error logging, overflow-checked size arithmetic, a growing string, small file helpers.
 * Shared by every module; nothing here allocates global state. */
#ifndef VLM_UTIL_H
#define VLM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vlm.h"

#ifdef __cplusplus /* the CUDA backend's .cu files log through these too */
extern "C" {
#define VLM_NORETURN [[noreturn]]
#else
#define VLM_NORETURN _Noreturn
#endif

/* Broken invariants (never input errors): one expression, so it is safe inside an unbraced if/else. */
#define VLM_ASSERT(cond) ((cond) ? (void)0 : vlm_assert_fail(__FILE__, __LINE__, #cond))
VLM_NORETURN void vlm_assert_fail(const char *file, int line, const char *cond);

/* One line on stderr, prefixed "vlmrun: error: " (the program name: see vlm_log_set_prog). Callers name the file
 * and the problem. */
void vlm_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The program name used by the log lines ("vlmrun" unless a CLI sets its own; static storage). */
void vlm_log_set_prog(const char *name);
/* Turns the informational lines off (--quiet); errors always print. */
void vlm_log_set_info(bool on);
/* Informational line on stderr (load summary, timings). */
void vlm_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Checked arithmetic: return false (and leave *out untouched) on overflow. */
static inline bool vlm_size_mul(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return false;
    *out = r;
    return true;
}
static inline bool vlm_size_add(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) return false;
    *out = r;
    return true;
}
/* Product of n non-negative int64 dims; false on a negative dim or overflow of int64. */
bool vlm_dims_product(const int64_t *dims, int n, int64_t *out);

/* malloc/calloc of n*size bytes with the product checked; NULL (after logging what) on failure. */
void *vlm_alloc_array(size_t n, size_t size, const char *what);
void *vlm_calloc_array(size_t n, size_t size, const char *what);

/* A growing byte string; {0} is the empty one. s is NUL-terminated once anything (even "") was appended, so it can
 * be handed out as a C string; len excludes the NUL. */
struct vlm_str {
    char *s;
    size_t len, cap;
};
/* Appends s[0..n) (capacity doubled as needed). false after logging "what: ..." on size overflow or OOM, b then
 * unchanged. */
bool vlm_str_append(struct vlm_str *b, const char *s, size_t n, const char *what);
/* Frees b's bytes and leaves it empty ({0}); an empty b is a no-op. */
void vlm_str_free(struct vlm_str *b);

/* Reads a whole (small) file into a NUL-terminated buffer. Fails with VLM_ERR_IO if missing/unreadable,
 * VLM_ERR_FORMAT if larger than max_bytes. On success *out_buf is malloc'd (caller frees), *out_len set. */
enum vlm_status vlm_file_read_all(const char *path, size_t max_bytes, char **out_buf, size_t *out_len);

/* Output files appear whole or not at all. vlm_file_tmp_open creates "<path>.tmp.XXXXXX" beside path (the same
 * directory, so the final rename cannot cross devices; mkstemp: never an existing file or a symlink), mode 0644 like
 * any output, and returns its fd with *tmp malloc'd; -1 with one error line naming path. */
int vlm_file_tmp_open(const char *path, char **tmp);
/* Publishes a finished temp file: fsync(fd), close(fd), rename(tmp, path), then fsync of path's directory so the
 * rename survives a crash (a failure there is only a warning: the data are on disk and the old file is already
 * replaced). fd is closed in every case. VLM_ERR_IO with one error line naming path; tmp is then still there for
 * the caller to remove. */
enum vlm_status vlm_file_tmp_publish(int fd, const char *tmp, const char *path);
/* pwrite of all n bytes at offset off, retrying short writes and EINTR; false with errno set. */
bool vlm_file_pwrite_all(int fd, const void *buf, size_t n, size_t off);

/* Joins dir and name with one '/', into buf of size cap. false if it does not fit. */
bool vlm_path_join(char *buf, size_t cap, const char *dir, const char *name);

/* Monotonic wall clock in milliseconds. */
double vlm_time_ms(void);

/* Raw JSON text checks before cJSON sees it (closes parser-differential holes): valid UTF-8 (no overlongs,
 * surrogates, > U+10FFFF), no raw control bytes except JSON whitespace, no "\u0000" escape, no unterminated
 * string. NULL when fine, else a short reason with *where = the byte offset. */
const char *vlm_json_prescan(const unsigned char *s, size_t n, size_t *where);
/* s made safe for a one-line message in buf (cap bytes): control bytes become '?', long strings end in "...". */
const char *vlm_printable(const char *s, char *buf, size_t cap);
/* True when s holds a control byte (< 0x20 or 0x7f). */
bool vlm_has_control(const char *s);

#ifdef __cplusplus
}
#endif
#endif
