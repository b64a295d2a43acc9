/* vlm.h — the only public header of vlmrun.
 *
 * vlmrun runs LLaVA-OneVision-style vision-language models (SigLIP vision tower, mlp2x_gelu projector,
 * Qwen2 decoder). Handles are opaque; every fallible call returns enum vlm_status and leaves its
 * out-parameters untouched on failure. Errors are logged once, at the failure site, on stderr. */
#ifndef VLM_H
#define VLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum vlm_status {
    VLM_OK = 0,
    VLM_ERR_IO = -1,          /* missing, unreadable or truncated file */
    VLM_ERR_FORMAT = -2,      /* corrupt or inconsistent content (header, shape, config value) */
    VLM_ERR_OOM = -3,         /* an allocation or a size computation failed */
    VLM_ERR_UNSUPPORTED = -4, /* valid input we do not handle (dtype, model type, image format) */
    VLM_ERR_NO_DEVICE = -5,   /* the requested accelerator is absent */
    VLM_ERR_CUDA = -6,        /* a CUDA call failed after init */
    VLM_ERR_ARG = -7,         /* the caller passed an invalid argument */
};

/* Short constant text for a status ("format error", ...). Never NULL. */
const char *vlm_status_str(enum vlm_status s);

struct vlm_model; /* weights + config of one checkpoint */

/* Loads an HF LLaVA-OneVision checkpoint directory (config.json, preprocessor_config.json,
 * model.safetensors or an index + shards). On success *out owns the model; free with vlm_model_free. */
enum vlm_status vlm_model_load(const char *dir, struct vlm_model **out);
void vlm_model_free(struct vlm_model *m); /* NULL is a no-op */

#ifdef __cplusplus
}
#endif
#endif
