/* calib.h — MBQ's calibration inputs (shared/spec/mbq.md §3): image–caption conversations in the
 * ShareGPT4V/LLaVA JSON form, rendered with the model's ChatML template, with the vision embeddings computed once
 * by the float vision path in LLaVA's "pad" mode (one crop, 730 vision positions for a 384 model), a vision-token
 * mask and an answer mask.
 *
 * Input: a JSON list of {"image": path (relative to the JSON's folder unless absolute), "conversations":
 * [{"from": "human", "value": "...<image>..."}, {"from": "gpt", "value": "..."}]}; other keys are ignored.
 *
 * Promises: every sample's ids, masks and embeddings follow §3 exactly as documented in calib.c; the selection is
 * a pure function of (list, n_samples, seed); every bad input (unreadable or malformed JSON, a sample without
 * "<image>" or without an answer, a missing image, too few samples, ids outside the embedding table) is one error
 * line naming the file and the problem, and nothing is left allocated. */
#ifndef VLM_CONV_CALIB_H
#define VLM_CONV_CALIB_H

#include <stdint.h>

#include "runtime/model.h"
#include "tokenizer/tokenizer.h"
#include "vision/image.h"
#include "vlm.h"

/* One calibration sequence of n tokens. */
struct conv_sample {
    int64_t n;
    int64_t *ids;  /* (n) token ids; the vision positions hold the model's config.image_token_index */
    uint8_t *vis;  /* (n) 1 on the inserted image span (V of §3) */
    uint8_t *ans;  /* (n) 1 where the reference's label is not -100 (A of §3, with its "\n"/ChatML quirk) */
    float *emb;    /* (n, d) text embeddings with the vision rows scattered in; NULL from conv_calib_build_ids */
};

struct conv_calib {
    int64_t n_samples;
    struct conv_sample *s; /* (n_samples) */
};

/* Vision positions per sample for m's config: P² features of one crop + 1 image_newline (730 for 384/14). */
int64_t conv_calib_n_vision(const struct vlm_config *c);

/* The human turn as the reference feeds it: every "<image>" removed, the rest stripped of ASCII whitespace at
 * both ends. *out malloc'd. VLM_ERR_FORMAT (logged) when human holds no "<image>". */
enum vlm_status conv_calib_clean_prompt(const char *human, char **out);

/* The ids and masks of one conversation (prompt already cleaned) with n_vis vision positions holding image_id.
 * Fills out->n, ids, vis, ans; out->emb = NULL. VLM_ERR_ARG for a tokenizer without <|im_start|>, <|im_end|>,
 * <image> or a single-token "\n". Free with conv_sample_free. */
enum vlm_status conv_calib_build_ids(const struct vlm_tokenizer *tok, const char *prompt, const char *caption,
                                     int64_t n_vis, int64_t image_id, struct conv_sample *out);

/* LLaVA's expand2square: a side x side canvas (side = max(w, h)) filled with the mean colour
 * floor(image_mean * 255) per channel, img pasted at ((side - w) / 2, (side - h) / 2). out->rgb malloc'd
 * (img_free). VLM_ERR_OOM when the canvas cannot be allocated. */
enum vlm_status conv_calib_pad_square(const struct vlm_image *img, const struct vlm_preproc_config *pp,
                                      struct vlm_image *out);

/* The pad-mode crop: conv_calib_pad_square, Pillow-exact bicubic resize to image_size², rescale + normalize as
 * the runtime does. *out_pixels (3, S, S) float32, malloc'd. */
enum vlm_status conv_calib_pad_pixels(const struct vlm_image *img, const struct vlm_model *m, float **out_pixels);

/* The sample's vision rows: vit_forward on the one pad-mode crop, vit_project, then image_newline appended.
 * *out_rows (conv_calib_n_vision, d) malloc'd. */
enum vlm_status conv_calib_vision(const struct vlm_model *m, const struct vlm_image *img, float **out_rows);

/* Fisher–Yates shuffle of 0 .. n-1 into perm (n) driven by splitmix64 seeded with seed (see calib.c). */
void conv_calib_shuffle(int64_t n, uint64_t seed, int64_t *perm);

/* Reads json_path, shuffles the whole list (conv_calib_shuffle), takes the first n_samples (>= 1) and builds each
 * one (conv_calib_build_ids + conv_calib_vision + embeddings). Status: VLM_ERR_IO (unreadable JSON, missing image),
 * VLM_ERR_FORMAT (malformed JSON or sample, undecodable image), VLM_ERR_ARG (n_samples < 1 or more than the list
 * holds, an id outside the embedding table, a tokenizer without the ChatML tokens), VLM_ERR_OOM. On failure *out
 * is zeroed. */
enum vlm_status conv_calib_load(const char *json_path, const struct vlm_model *m, const struct vlm_tokenizer *tok,
                                int64_t n_samples, uint64_t seed, struct conv_calib *out);

void conv_sample_free(struct conv_sample *s); /* frees the arrays, zeroes *s; NULL ok */
void conv_calib_free(struct conv_calib *c);   /* frees every sample, zeroes *c; NULL ok */

#endif
