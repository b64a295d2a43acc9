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

/* Per layer, the chosen scales of the three groups, laid out as [qkv (d) | gate_up (d) | down (f)]. */
static inline int64_t conv_scales_per_layer(const struct vlm_text_config *tc) {
    return 2 * tc->hidden_size + tc->intermediate_size;
}
/* Group g's scales of layer l in such a table (g = 0, 1, 2: QKV, GATE_UP, DOWN of converter/search.h). */
static inline float *conv_scales_group(float *table, const struct vlm_text_config *tc, int64_t l, int g) {
    return table + l * conv_scales_per_layer(tc) + g * tc->hidden_size;
}

/* Folds layer l's share of a conv_calibrate scales table into its (widened) linears: conv_fold_linears of QKV,
 * GATE_UP, DOWN in that order, the order the calibration folded the norms and conv_fold_group would fold both. */
void conv_fold_layer_linears(struct vlm_model *m, int64_t l, float *table);

/* Loads the calibration samples (with tok and m's float vision path), measures MBQ's modality sensitivity when
 * asked, and chooses each layer's scales, walking the decoder one layer at a time (m may be streamed:
 * vlm_load_opts; each layer is widened once). The scales are folded into m's norms here; *scales (allocated here,
 * n_layers x conv_scales_per_layer, the caller frees) are what the linears still need: conv_fold_linears of
 * groups QKV, GATE_UP, DOWN in that order, when the writer widens the layer to quantize it. report receives what
 * was chosen (rho, r, alphas, sample and token counts, seed). Errors are logged once; m's norms may be partly
 * folded on failure (the caller discards m). */
enum vlm_status conv_calibrate(struct vlm_model *m, const struct vlm_tokenizer *tok, const struct conv_calib_opts *o,
                               cJSON *report, float **scales);

#endif
