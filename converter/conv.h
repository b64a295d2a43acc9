/* conv.h — the converter's library side (vlmconvert's CLI is converter/convert.c): an HF LLaVA-OneVision
 * checkpoint into one .mbq file: f32 and f16 (no quantization: a deployable single file; f32 reproduces the
 * checkpoint's float32 run bit for bit), rtn (round-to-nearest, mbq.md §2) for the decoder linears at W3 g128,
 * W4 g128 or W4A8, and the calibrated methods AWQ, SmoothQuant and MBQ (converter/calibrate.h), which fold their
 * channel scales into the float model before the same final quantization. */
#ifndef VLM_CONV_H
#define VLM_CONV_H

#include <stdbool.h>

#include "kernels/quant.h"
#include "vlm.h"

enum conv_method { CONV_F32, CONV_F16, CONV_RTN, CONV_AWQ, CONV_SMOOTHQUANT, CONV_MBQ };

struct conv_options {
    const char *model_dir;      /* HF checkpoint directory */
    const char *out_path;       /* the .mbq to write (atomically) */
    enum conv_method method;
    int wbits;                  /* 3 or 4 (rtn) */
    int abits;                  /* 16, or 8 for W4A8 (rtn, wbits 4) */
    int group;                  /* 128 (the only group size the formats define) */
    enum vlm_qformat float_fmt; /* vision tower, projector, image_newline: f32, f16 or bf16 */
    enum vlm_qformat embed_fmt; /* f32, f16, bf16 or q8r */
    enum vlm_qformat head_fmt;  /* f32, f16, bf16 or q8r; != embed_fmt writes a separate head even when tied */
    bool quiet;
    /* calibrated methods (AWQ, SmoothQuant, MBQ): converter/calibrate.h */
    const char *calib_path;     /* ShareGPT4V-style JSON; images relative to it */
    int64_t n_samples;
    uint64_t seed;              /* also the seed of --random's values */
    /* --random (conv_random_run; model_dir unused): "0.5b", "7b", "72b" or the path of an HF config.json */
    const char *random;
    int64_t n_layers;           /* decoder layers kept (first n_layers); 0: all */
    int64_t n_vision_layers;    /* vision layers kept; 0: all */
    size_t random_chunk_bytes;  /* write buffer bytes; below 8 (0): 16 MB. Tests pass odd sizes: same values */
};

/* y (M, N) = x (M, K) · Wᵀ + b for a float32 weight array of the model being converted: the fast f32 GEMM through
 * m->qctx (calibration's cost is almost all GEMM), or the float32 reference when m has no kernel context or the
 * fast path's scratch cannot grow. Shared by the gradient pass and the scale search. */
struct vlm_model;
void conv_linear_f32(const struct vlm_model *m, float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t N, int64_t K);

/* The weight format of the decoder linears under o (f32/f16/bf16 for the float methods). */
enum vlm_qformat conv_linear_format(const struct conv_options *o);

/* The stored format of one tensor of runtime/model_mbq.h's table under o: decoder linears in
 * conv_linear_format(o), embedding and head in o->embed_fmt / o->head_fmt, other 2-D and 4-D tensors (vision
 * tower, projector) in o->float_fmt, 1-D tensors (norms, biases, image_newline) in f32. */
struct mbq_slot;
enum vlm_qformat conv_slot_format(const struct conv_options *o, const struct mbq_slot *s);
/* The declaration of slot s in its conv_slot_format, its layout and its k (columns; the element count for a 1-D
 * tensor). False after one line naming `name` (the checkpoint or --random value), the tensor and why the format
 * cannot hold it (group-128 formats need k % 128 == 0). */
struct mbq_tensor_decl;
bool conv_slot_declare(const struct conv_options *o, const struct mbq_slot *s, const char *name,
                       struct mbq_tensor_decl *decl, struct vlm_qlayout *L, int64_t *k_out);

/* Loads o->model_dir, writes o->out_path. Every failure logs one line naming the file and the problem and leaves
 * no file at out_path (and an existing one untouched). */
enum vlm_status conv_run(const struct conv_options *o);

/* vlmconvert --random (converter/conv_random.c): writes o->out_path, a .mbq of the architecture o->random names
 * (a published size, or an HF config.json with the preprocessor_config.json / generation_config.json beside it
 * when present), cut to o->n_layers / o->n_vision_layers when non-zero, with random weights generated directly in
 * the formats o selects (method f32, fp16 or rtn with wbits / abits; embed / head / float formats as conv_run),
 * deterministic in o->seed. The header's quant.method is "random". Memory stays a few MB whatever the size (each
 * tensor is generated and written in 16 MB pieces). Failures as conv_run: one line, no file at out_path. */
enum vlm_status conv_random_run(const struct conv_options *o);

/* The config.json of a published size ("0.5b", "7b", "72b": spec §2) as a new cJSON object, or NULL for
 * another name (or out of memory). */
struct cJSON;
struct cJSON *conv_random_preset(const char *name);

/* The JSON object in file path, parsed (at most 16 MiB); NULL with *st set — VLM_OK and NULL when !required and the
 * file is absent; a one-line error otherwise (read failure, not a JSON object). */
struct cJSON *conv_read_json_file(const char *path, bool required, enum vlm_status *st);

#endif
