/* safetensors.h — strict, mmap-based reader of HF safetensors checkpoints (single file or sharded with
 * model.safetensors.index.json). Validation follows shared/spec/targets.md §6.1: header size limit, JSON
 * object with unique keys, known dtype, checked byte sizes, contiguous non-overlapping offsets starting at 0,
 * data ending exactly at end of file. Nothing is trusted before it is checked. */
#ifndef VLM_SAFETENSORS_H
#define VLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "vlm.h"

#define ST_MAX_DIMS 8
#define ST_MAX_NAME 256
#define ST_MAX_HEADER_BYTES 100000000ull

enum vlm_dtype {
    VLM_DTYPE_F32,
    VLM_DTYPE_F16,
    VLM_DTYPE_BF16,
    VLM_DTYPE_OTHER, /* a valid safetensors dtype we cannot compute with (I64, U8, ...) */
};
const char *vlm_dtype_name(enum vlm_dtype t);

struct st_tensor {
    char name[ST_MAX_NAME + 1];
    enum vlm_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    int64_t n_elements;
    const void *data;   /* points into the read-only mmap */
    size_t size_bytes;
    int file_index;     /* which shard */
};

struct st_checkpoint; /* opaque: all shards of one checkpoint, their mmaps and the merged tensor table */

/* Opens one .safetensors file. Fails (one line naming the file) on any violation. */
enum vlm_status st_file_open(const char *path, struct st_checkpoint **out);
/* Opens dir/model.safetensors or, when absent, dir/model.safetensors.index.json and its shards. Tensor names
 * must be unique across shards and the index must name each tensor's actual shard. */
enum vlm_status st_checkpoint_open(const char *dir, struct st_checkpoint **out);
void st_checkpoint_close(struct st_checkpoint *ck); /* NULL is a no-op */

int64_t st_checkpoint_count(const struct st_checkpoint *ck);
const struct st_tensor *st_checkpoint_at(const struct st_checkpoint *ck, int64_t i);
/* NULL when absent. */
const struct st_tensor *st_checkpoint_find(const struct st_checkpoint *ck, const char *name);
/* Path of the shard that holds t (for error messages). */
const char *st_checkpoint_file_path(const struct st_checkpoint *ck, const struct st_tensor *t);

/* Converts t to float32 into dst (n_elements floats). BF16/F16/F32 only. */
void st_tensor_to_f32(const struct st_tensor *t, float *dst);

/* Scalar conversions, exact (round-trip) in the direction half/bf16 -> float. */
float vlm_f16_to_f32(uint16_t h);
float vlm_bf16_to_f32(uint16_t b);

#endif
