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
    const char *dtype_name; /* the file's dtype string ("F16", "I64", ...): static storage */
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    int64_t n_elements;
    const void *data;   /* points into the read-only mmap; not aligned in general (read it by bytes) */
    uint64_t data_offset; /* begin of data_offsets, relative to the end of the header */
    size_t size_bytes;
    int file_index;     /* which shard */
};

struct st_checkpoint; /* opaque: all shards of one checkpoint, their mmaps and the merged tensor table */

/* Opens one .safetensors file. Fails (one line naming the file) on any violation: VLM_ERR_IO when it cannot be
 * opened/mapped, VLM_ERR_FORMAT for any rule of §6.1 (including files < 8 bytes), VLM_ERR_OOM, VLM_ERR_ARG for
 * NULL arguments. *out untouched on failure. The mapping lives until st_checkpoint_close. */
enum vlm_status st_file_open(const char *path, struct st_checkpoint **out);
/* Opens dir/model.safetensors or, when absent, dir/model.safetensors.index.json and its shards. Tensor names
 * must be unique across shards and the index must name each tensor's actual shard. Shard names must be plain
 * file names (no '/', '\\' or ".."). Every name of the weight_map must exist. VLM_ERR_IO when neither file
 * exists or a shard is missing; VLM_ERR_FORMAT for a bad index or shard. *out untouched on failure. */
enum vlm_status st_checkpoint_open(const char *dir, struct st_checkpoint **out);
void st_checkpoint_close(struct st_checkpoint *ck); /* NULL is a no-op */

int64_t st_checkpoint_count(const struct st_checkpoint *ck);
int st_checkpoint_n_files(const struct st_checkpoint *ck);
/* i in [0, count): tensors in file order, then in data-offset order. */
const struct st_tensor *st_checkpoint_at(const struct st_checkpoint *ck, int64_t i);
/* Exact (case-sensitive) lookup, O(log n). NULL when absent. */
const struct st_tensor *st_checkpoint_find(const struct st_checkpoint *ck, const char *name);
/* Path of model.safetensors or of the index file this checkpoint was opened from (for error messages). */
const char *st_checkpoint_source_path(const struct st_checkpoint *ck);
/* Path of the shard that holds t (for error messages). */
const char *st_checkpoint_file_path(const struct st_checkpoint *ck, const struct st_tensor *t);

/* Converts t to float32 into dst (n_elements floats), exactly. BF16/F16/F32 only (asserts otherwise). */
void st_tensor_to_f32(const struct st_tensor *t, float *dst);

/* Tells the kernel that t's mapped bytes are not needed again soon: the whole pages inside them leave this
 * process's resident set (they stay in the page cache, and a later read maps them back in). For a caller that
 * widens a checkpoint piece by piece (the converter streams decoder layers) so that the resident set holds the
 * widened copies only, not the file as well. Advisory: failures are ignored. */
void st_tensor_evict(const struct st_tensor *t);

/* Scalar conversions, exact (round-trip) in the direction half/bf16 -> float. */
float vlm_f16_to_f32(uint16_t h);
float vlm_bf16_to_f32(uint16_t b);

#endif
