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
    uint64_t seed;
};

/* y (M, N) = x (M, K) · Wᵀ + b for a float32 weight array of the model being converted: the fast f32 GEMM through
 * m->qctx (calibration's cost is almost all GEMM), or the float32 reference when m has no kernel context or the
 * fast path's scratch cannot grow. Shared by the gradient pass and the scale search. */
struct vlm_model;
void conv_linear_f32(const struct vlm_model *m, float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t N, int64_t K);

/* The weight format of the decoder linears under o (f32/f16/bf16 for the float methods). */
enum vlm_qformat conv_linear_format(const struct conv_options *o);

/* Loads o->model_dir, writes o->out_path. Every failure logs one line naming the file and the problem and leaves
 * no file at out_path (and an existing one untouched). */
enum vlm_status conv_run(const struct conv_options *o);

#endif
