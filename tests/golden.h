/* golden.h — reader for the reference dumps written by tools/make_fixtures.py.
 *
 * File layout (little-endian), one file per fixture case, several named tensors each:
 *   "VLMG" magic (4 bytes) | u32 version (1) | u32 n_records
 *   per record: u32 name_len | name bytes (no NUL) | u32 dtype | u32 n_dims | i64 shape[n_dims] | data
 *   dtype: 0 = f32, 1 = i32, 2 = u8, 3 = i64; data = prod(shape) elements, row-major, no padding.
 * A missing or malformed file fails the calling test (never a silent pass). */
#ifndef VLM_GOLDEN_H
#define VLM_GOLDEN_H

#include <stdint.h>

enum golden_dtype { GOLDEN_F32 = 0, GOLDEN_I32 = 1, GOLDEN_U8 = 2, GOLDEN_I64 = 3 };

struct golden_tensor {
    char name[128];
    enum golden_dtype dtype;
    int n_dims;
    int64_t shape[8];
    int64_t n;          /* number of elements */
    const void *data;   /* malloc'd copy, aligned for any element type */
};

struct golden_file {
    int n;
    struct golden_tensor t[64];
};

/* Loads path (relative to the repo root). Returns 0, or -1 after recording a test failure. */
int golden_load(const char *rel_path, struct golden_file *out);
/* The record called name; records a test failure and returns NULL when absent or of another dtype. */
const struct golden_tensor *golden_get(const struct golden_file *g, const char *name, enum golden_dtype dtype);
void golden_free(struct golden_file *g);

#endif
