/* calibrate.h — the calibrated methods of vlmconvert: AWQ, SmoothQuant and MBQ (mbq.md §4-§8), run on the float
 * model before the final quantization (converter/calibrate.c). */
#ifndef VLM_CONV_CALIBRATE_H
#define VLM_CONV_CALIBRATE_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "kernels/quant.h"
#include "runtime/model.h"
#include "tokenizer/tokenizer.h"
#include "vlm.h"

enum conv_cal_method { CONV_CAL_AWQ, CONV_CAL_SMOOTHQUANT, CONV_CAL_MBQ };

struct conv_calib_opts {
    enum conv_cal_method method;
    enum vlm_qformat format;    /* the decoder linears' format the search quantizes to (W3G128, W4G128, W4A8) */
    const char *calib_path;     /* ShareGPT4V-style JSON (converter/calib.h) */
    int64_t n_samples;
    uint64_t seed;
    bool progress;              /* a progress bar with ETA on stderr when it is a terminal */
};

/* Loads the calibration samples (with tok and m's float vision path), measures MBQ's modality sensitivity when
 * asked, and folds each layer's chosen scales into m's float weights. report receives what was chosen (rho, r,
 * alphas, sample and token counts, seed). Errors are logged once; m may be partly folded on failure (the caller
 * discards it). */
enum vlm_status conv_calibrate(struct vlm_model *m, const struct vlm_tokenizer *tok, const struct conv_calib_opts *o,
                               cJSON *report);

#endif
