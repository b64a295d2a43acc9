/* mbq_file.h — the .mbq model file: one file that is a whole deployable model (config, preprocessor settings,
 * tokenizer, quantization parameters, every tensor). Read by mmap and validated as strictly as the safetensors
 * reader (targets.md §6.1, §6.2); written atomically (temp file in the same directory, fsync, rename).
 *
 * Layout (all integers little-endian):
 *   offset 0   8 bytes  magic "VLMMBQ\r\n" (the \r\n catches text-mode transfers, as PNG's signature does)
 *          8   u32      format version (1)
 *         12   u32      endianness marker 0x01020304 (a big-endian writer would show 0x04030201)
 *         16   u64      header_bytes: length of the JSON header (1 .. 64 MiB)
 *         24   u64      data_offset: start of the tensor data; a multiple of 4096 and >= 32 + header_bytes
 *         32   ...      the JSON header (UTF-8, no NUL), then zero bytes up to data_offset
 *   data_offset ...     tensor data; tensor i lives at data_offset + offset_i
 * The JSON header is one object:
 *   {"format": "vlm-mbq", "version": 1,
 *    "config": {...config.json as the checkpoint had it...},
 *    "preprocessor": {...preprocessor_config.json...},
 *    "tokenizer": {"kind": "bpe" | "spm", "tensor": "<name of a u8 tensor holding tokenizer.json / tokenizer.model>"},
 *    "quant": {"method": "fp16" | "rtn" | ..., ...method parameters...},
 *    "tensors": [{"name": "...", "dtype": "f32|f16|bf16|q8r|w3g128|w4g128|w4a8|u8", "shape": [..],
 *                 "offset": N, "size": N}, ...]}
 * Other top-level keys are allowed and kept (the converter stores its report there). "config", "preprocessor",
 * "quant" and "tokenizer", when present, must be objects; "tokenizer" must have "kind" "bpe" or "spm" and a
 * "tensor" naming a u8 tensor of the table. No object anywhere in the header may repeat a key.
 * Tensor rules: names non-empty, <= 256 bytes, no control bytes, unique; rank 1..4, every dim >= 1; q8r, w3g128,
 * w4g128 and w4a8 have rank 2 and size = vlm_qlayout(dtype, shape[0], shape[1]).total_bytes; f32/f16/bf16/u8 have
 * size = product(shape) * element size; all size arithmetic overflow-checked. Offsets: in table order, the first
 * is 0 and each next one is the previous end rounded up to 64 (the running padded size — no gaps, no overlap);
 * the file ends exactly at data_offset + the last end (with no tensors, at data_offset). Padding bytes (after the
 * header and between tensors) are written as zero, and the reader rejects a file where they are not.
 */
#ifndef VLM_MBQ_FILE_H
#define VLM_MBQ_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "kernels/quant.h"
#include "vlm.h"

#define VLM_MBQ_MAGIC "VLMMBQ\r\n"
#define VLM_MBQ_VERSION 1u
#define VLM_MBQ_MAX_HEADER (64u << 20)
#define VLM_MBQ_MAX_DIMS 4
#define VLM_MBQ_MAX_NAME 256

/* dtype of a tensor entry: a weight format, or raw bytes (the tokenizer file). */
#define VLM_MBQ_DTYPE_U8 VLM_QF_COUNT

struct mbq_tensor {
    const char *name;
    int dtype;                  /* enum vlm_qformat value, or VLM_MBQ_DTYPE_U8 */
    int n_dims;
    int64_t shape[VLM_MBQ_MAX_DIMS];
    const void *data;           /* into the mapping; 64-byte aligned */
    size_t size;                /* bytes */
};

struct mbq_file; /* opaque: the mapping, the parsed header, the tensor table */

/* Maps path read-only and validates everything above. On failure logs one line naming the file and the problem
 * and returns VLM_ERR_IO (cannot open/read/map), VLM_ERR_FORMAT (any rule broken) or VLM_ERR_OOM; *out untouched. */
enum vlm_status mbq_file_open(const char *path, struct mbq_file **out);
/* The same validation over a buffer the caller keeps alive (fuzzing, tests); name is used in messages.
 * buf + data_offset must be 64-byte aligned (mmap guarantees it; any 4096-aligned buffer does): a misaligned
 * buffer is the caller's error, VLM_ERR_ARG. */
enum vlm_status mbq_file_parse(const void *buf, size_t len, const char *name, struct mbq_file **out);
void mbq_file_close(struct mbq_file *f); /* NULL is a no-op */

const char *mbq_file_path(const struct mbq_file *f);
/* The parsed header object (owned by f; do not modify). */
const cJSON *mbq_file_header(const struct mbq_file *f);
int64_t mbq_file_count(const struct mbq_file *f);
const struct mbq_tensor *mbq_file_at(const struct mbq_file *f, int64_t i);
const struct mbq_tensor *mbq_file_find(const struct mbq_file *f, const char *name); /* NULL when absent */
/* Name of a dtype value ("w3g128", "u8", ...). */
const char *mbq_dtype_name(int dtype);

/* ---- writer: declare every tensor first (so the header, with its offsets, is written once, up front), then
 * write each tensor's bytes exactly once (whole, or in consecutive parts), tensors in any order; finish renames
 * the temp file onto path. */
struct mbq_tensor_decl {
    const char *name;
    int dtype;
    int n_dims;
    int64_t shape[VLM_MBQ_MAX_DIMS];
};

struct mbq_writer;
/* meta: an object whose keys (except "format", "version", "tensors", which the writer sets) go into the header
 * as given (copied; the caller keeps ownership). Validates the declarations by the reader's rules, creates
 * "<path>.tmp.XXXXXX" next to path and writes the preamble and header. Errors name path and the problem. */
enum vlm_status mbq_writer_open(const char *path, const cJSON *meta, const struct mbq_tensor_decl *decls,
                                int64_t n_decls, struct mbq_writer **out);
/* Writes tensor i's bytes; size must equal its declared size; each index once. Misuse (index, size, twice) is
 * VLM_ERR_ARG and leaves w usable; an I/O error is VLM_ERR_IO and makes finish fail. */
enum vlm_status mbq_writer_write(struct mbq_writer *w, int64_t i, const void *data, size_t size);
/* Appends size bytes to tensor i's data, after the parts written before, so a large tensor can be produced in
 * pieces from a small buffer (vlmconvert --random); the tensor is complete once its declared size is reached.
 * A part passing the end, or any part (even an empty one) after i is complete: VLM_ERR_ARG, w usable;
 * mbq_writer_write of a tensor with parts written is "written twice". I/O errors as mbq_writer_write. */
enum vlm_status mbq_writer_write_part(struct mbq_writer *w, int64_t i, const void *data, size_t size);
/* Checks every tensor was written completely (else VLM_ERR_ARG), fsyncs, renames onto path, fsyncs the
 * directory, frees w (also on failure, removing the temp file: no file appears at path, and an existing one is
 * left as it was). */
enum vlm_status mbq_writer_finish(struct mbq_writer *w);
/* Removes the temp file and frees w; NULL is a no-op. Use on any error path after open. */
void mbq_writer_abort(struct mbq_writer *w);

#endif
