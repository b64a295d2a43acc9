/* config.c — config.json and preprocessor_config.json of an HF LLaVA-OneVision checkpoint. See config.h.
 *
 * Promise: a config that parses is safe to compute with. Every number is range-checked against caps the code was
 * written for, so later size products fit in int64 (the caps are listed below; the largest product,
 * layers x intermediate x hidden x 3, stays under 2^62). Keys HF gives a default take that default (transformers
 * 5.24 class attributes); architecture dimensions have no safe default and are required. Each failure is one line:
 * "<file>: key '<dotted.key>' ...".
 *
 * Sections: JSON accessors; text_config; vision_config; top level; preprocessor_config; parameter counts. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "util.h"

/* caps ("absurd values" beyond these are rejected, naming the key) */
#define CAP_HIDDEN 65536
#define CAP_INTER (1 << 20)
#define CAP_LAYERS 1024
#define CAP_VOCAB (4 << 20)
#define CAP_POSITIONS (1 << 24)
#define CAP_IMAGE_SIDE 8192
#define CAP_PINPOINT_SIDE 16384
#define CAP_ANYRES_MAX 1024
#define CAP_CONFIG_BYTES (16u << 20)

/* ---------------------------------------------------------------------------------------------------------------
 * JSON accessors: each logs one line naming the file and the dotted key, and leaves *out untouched on failure
 * ------------------------------------------------------------------------------------------------------------- */

struct jctx {
    const char *path;   /* file, for messages */
    const char *prefix; /* "text_config." etc. ("" at top level) */
};

static const cJSON *jget(const cJSON *obj, const char *key) {
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* absent or JSON null */
static bool jmissing(const cJSON *v) { return !v || cJSON_IsNull(v); }


/* s made safe for a one-line message: control bytes become '?', at most 40 bytes. */
static const char *printable(const char *s, char buf[48]) {
    size_t i = 0;
    for (; s[i] && i < 40; i++) buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = 0;
    return buf;
}

/* A JSON value as it would read in a message (strings quoted, made printable). */
static void describe(const cJSON *v, char *buf, size_t cap) {
    char p[48];
    if (cJSON_IsNumber(v)) snprintf(buf, cap, "%.10g", v->valuedouble);
    else if (cJSON_IsString(v)) snprintf(buf, cap, "\"%s\"", printable(v->valuestring, p));
    else if (cJSON_IsBool(v)) snprintf(buf, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsArray(v)) snprintf(buf, cap, "an array");
    else if (cJSON_IsObject(v)) snprintf(buf, cap, "an object");
    else snprintf(buf, cap, "null");
}

/* v (present) is an integer in [lo, hi]; key is for the message. */
static enum vlm_status jint_value(const struct jctx *c, const char *key, const cJSON *v, int64_t lo, int64_t hi,
                                  int64_t *out) {
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) {
        char got[64];
        describe(v, got, sizeof got);
        vlm_log_error("%s: key '%s%s' is %s, must be an integer in [%lld, %lld]", c->path, c->prefix, key, got,
                      (long long)lo, (long long)hi);
        return VLM_ERR_FORMAT;
    }
    *out = (int64_t)d;
    return VLM_OK;
}

/* Integer in [lo, hi]. Absent/null: *out = def when !required, else a format error. */
static enum vlm_status jint(const struct jctx *c, const cJSON *obj, const char *key, bool required, int64_t def,
                            int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v = jget(obj, key);
    if (jmissing(v)) {
        if (required) {
            vlm_log_error("%s: missing key '%s%s'", c->path, c->prefix, key);
            return VLM_ERR_FORMAT;
        }
        *out = def;
        return VLM_OK;
    }
    return jint_value(c, key, v, lo, hi, out);
}

/* Finite number in (lo, hi] when lo_open, else [lo, hi]. */
static enum vlm_status jnum(const struct jctx *c, const cJSON *obj, const char *key, double def, double lo,
                            bool lo_open, double hi, double *out) {
    const cJSON *v = jget(obj, key);
    if (jmissing(v)) {
        *out = def;
        return VLM_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(d) || (lo_open ? !(d > lo) : !(d >= lo)) || !(d <= hi)) {
        char got[64];
        describe(v, got, sizeof got);
        vlm_log_error("%s: key '%s%s' is %s, must be a finite number in %c%g, %g]", c->path, c->prefix, key, got,
                      lo_open ? '(' : '[', lo, hi);
        return VLM_ERR_FORMAT;
    }
    *out = d;
    return VLM_OK;
}

static enum vlm_status jbool(const struct jctx *c, const cJSON *obj, const char *key, bool def, bool *out) {
    const cJSON *v = jget(obj, key);
    if (jmissing(v)) {
        *out = def;
        return VLM_OK;
    }
    if (!cJSON_IsBool(v)) {
        char got[64];
        describe(v, got, sizeof got);
        vlm_log_error("%s: key '%s%s' is %s, must be true or false", c->path, c->prefix, key, got);
        return VLM_ERR_FORMAT;
    }
    *out = cJSON_IsTrue(v);
    return VLM_OK;
}

/* String or default (def may be NULL: then required). Only enum-like keys are read as strings, so a control
 * character is a bad value (and keeps every message that prints the string on one line). */
static enum vlm_status jstr(const struct jctx *c, const cJSON *obj, const char *key, const char *def,
                            const char **out) {
    const cJSON *v = jget(obj, key);
    if (jmissing(v)) {
        if (!def) {
            vlm_log_error("%s: missing key '%s%s'", c->path, c->prefix, key);
            return VLM_ERR_FORMAT;
        }
        *out = def;
        return VLM_OK;
    }
    if (!cJSON_IsString(v)) {
        char got[64];
        describe(v, got, sizeof got);
        vlm_log_error("%s: key '%s%s' is %s, must be a string", c->path, c->prefix, key, got);
        return VLM_ERR_FORMAT;
    }
    if (vlm_has_control(v->valuestring)) {
        char got[64];
        describe(v, got, sizeof got);
        vlm_log_error("%s: key '%s%s' is %s, which holds a control character", c->path, c->prefix, key, got);
        return VLM_ERR_FORMAT;
    }
    *out = v->valuestring;
    return VLM_OK;
}

/* Sub-object or NULL when absent/null; a format error when it is something else. */
static enum vlm_status jobj(const struct jctx *c, const cJSON *obj, const char *key, const cJSON **out) {
    const cJSON *v = jget(obj, key);
    if (jmissing(v)) {
        *out = NULL;
        return VLM_OK;
    }
    if (!cJSON_IsObject(v)) {
        vlm_log_error("%s: key '%s%s' must be an object", c->path, c->prefix, key);
        return VLM_ERR_FORMAT;
    }
    *out = v;
    return VLM_OK;
}

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Rejects an object, anywhere in the document, holding the same key twice (cJSON keeps both and its lookups
 * return the first, while Python's json keeps the last: a parser differential). */
static enum vlm_status check_dup_keys(const char *path, const cJSON *v) {
    for (const cJSON *ch = v->child; ch; ch = ch->next) {
        enum vlm_status st = check_dup_keys(path, ch);
        if (st != VLM_OK) return st;
    }
    if (!cJSON_IsObject(v) || !v->child || !v->child->next) return VLM_OK;
    size_t n = 0;
    for (const cJSON *ch = v->child; ch; ch = ch->next) n++;
    const char **keys = vlm_alloc_array(n, sizeof *keys, path);
    if (!keys) return VLM_ERR_OOM;
    size_t k = 0;
    for (const cJSON *ch = v->child; ch; ch = ch->next) keys[k++] = ch->string ? ch->string : "";
    qsort(keys, n, sizeof *keys, cmp_cstr_ptr);
    enum vlm_status st = VLM_OK;
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(keys[i - 1], keys[i])) {
            char p[48];
            vlm_log_error("%s: key '%s' appears twice in one object", path, printable(keys[i], p));
            st = VLM_ERR_FORMAT;
            break;
        }
    }
    free(keys);
    return st;
}

/* Reads and parses a JSON object file (no duplicate keys anywhere). VLM_ERR_IO when missing. On success *out is
 * the document (caller cJSON_Delete's it). */
static enum vlm_status load_json(const char *path, cJSON **out) {
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    enum vlm_status st = vlm_file_read_all(path, CAP_CONFIG_BYTES, &text, &len);
    if (st != VLM_OK) return st;
    st = VLM_ERR_FORMAT;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        vlm_log_error("%s: not valid JSON (near byte %zu)", path, at);
        goto fail;
    }
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            vlm_log_error("%s: bytes after the JSON value (byte %zu)", path, (size_t)(p - text));
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        vlm_log_error("%s: top level is not a JSON object", path);
        goto fail;
    }
    if ((st = check_dup_keys(path, root)) != VLM_OK) goto fail;
    free(text);
    *out = root;
    return VLM_OK;
fail:
    cJSON_Delete(root);
    free(text);
    return st;
}

/* Activation names of transformers ACT2FN that we compute. */
static bool parse_act(const char *s, enum vlm_act *out) {
    if (!strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_new") || !strcmp(s, "gelu_fast")) *out = VLM_ACT_GELU_TANH;
    else if (!strcmp(s, "gelu")) *out = VLM_ACT_GELU_ERF;
    else if (!strcmp(s, "silu") || !strcmp(s, "swish")) *out = VLM_ACT_SILU;
    else return false;
    return true;
}

/* A side that may be an int or an [h, w] pair (SiglipVisionConfig allows both); we only run square crops. */
static enum vlm_status jside(const struct jctx *c, const cJSON *obj, const char *key, bool required, int64_t def,
                             int64_t *out) {
    const cJSON *v = jget(obj, key);
    if (cJSON_IsArray(v)) {
        const cJSON *a = v->child, *b = a ? a->next : NULL;
        if (cJSON_GetArraySize(v) != 2 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) ||
            a->valuedouble != b->valuedouble) {
            vlm_log_error("%s: key '%s%s' must be an integer or an [h, w] pair with h == w (square crops only)",
                          c->path, c->prefix, key);
            return VLM_ERR_UNSUPPORTED;
        }
        return jint_value(c, key, a, 1, CAP_IMAGE_SIDE, out);
    }
    return jint(c, obj, key, required, def, 1, CAP_IMAGE_SIDE, out);
}

/* ---------------------------------------------------------------------------------------------------------------
 * text_config (Qwen2Config)
 * ------------------------------------------------------------------------------------------------------------- */

/* rope: transformers 5.x keeps it in "rope_parameters" ({rope_type, rope_theta}), 4.x in "rope_theta" plus an
 * optional "rope_scaling" dict ({type|rope_type, factor, ...}). HF's priority: rope_scaling, else rope_parameters;
 * theta from that dict, else top-level rope_theta, else 10000 (RotaryEmbeddingConfigMixin.default_theta). A dict
 * nested by layer type ({"full_attention": {...}}) is read through its "full_attention" entry. */
static enum vlm_status parse_rope(const struct jctx *c, const cJSON *t, float *theta_out) {
    enum vlm_status st;
    const cJSON *rs, *rp;
    if ((st = jobj(c, t, "rope_scaling", &rs)) != VLM_OK) return st;
    if ((st = jobj(c, t, "rope_parameters", &rp)) != VLM_OK) return st;
    const cJSON *dict = rs ? rs : rp;
    const char *dict_key = rs ? "rope_scaling" : "rope_parameters";
    char pfx[96] = "";
    struct jctx dc = {c->path, pfx};
    if (dict) {
        const cJSON *nested = jget(dict, "full_attention");
        if (cJSON_IsObject(nested)) {
            dict = nested;
            snprintf(pfx, sizeof pfx, "%s%s.full_attention.", c->prefix, dict_key);
        } else {
            snprintf(pfx, sizeof pfx, "%s%s.", c->prefix, dict_key);
        }
        const char *type = NULL;
        if ((st = jstr(&dc, dict, "rope_type", "", &type)) != VLM_OK) return st;
        if (!type[0] && (st = jstr(&dc, dict, "type", "default", &type)) != VLM_OK) return st;
        if (strcmp(type, "default") != 0) {
            vlm_log_error("%s: key '%srope_type' is \"%.40s\": only default RoPE is supported", c->path, pfx, type);
            return VLM_ERR_UNSUPPORTED;
        }
    }
    double theta;
    if ((st = jnum(c, t, "rope_theta", 10000.0, 0, true, 1e12, &theta)) != VLM_OK) return st;
    if (dict && (st = jnum(&dc, dict, "rope_theta", theta, 0, true, 1e12, &theta)) != VLM_OK) return st;
    *theta_out = (float)theta;
    return VLM_OK;
}

static enum vlm_status parse_text(const char *path, const cJSON *t, struct vlm_text_config *out) {
    struct jctx c = {path, "text_config."};
    enum vlm_status st;
    struct vlm_text_config x = {0};
    const char *s;
    if ((st = jstr(&c, t, "model_type", "qwen2", &s)) != VLM_OK) return st;
    if (strcmp(s, "qwen2") != 0) {
        vlm_log_error("%s: key 'text_config.model_type' is \"%.40s\": only qwen2 is supported", path, s);
        return VLM_ERR_UNSUPPORTED;
    }
    if ((st = jint(&c, t, "hidden_size", true, 0, 1, CAP_HIDDEN, &x.hidden_size)) != VLM_OK ||
        (st = jint(&c, t, "intermediate_size", true, 0, 1, CAP_INTER, &x.intermediate_size)) != VLM_OK ||
        (st = jint(&c, t, "num_hidden_layers", true, 0, 1, CAP_LAYERS, &x.n_layers)) != VLM_OK ||
        (st = jint(&c, t, "num_attention_heads", true, 0, 1, CAP_HIDDEN, &x.n_heads)) != VLM_OK ||
        (st = jint(&c, t, "vocab_size", true, 0, 1, CAP_VOCAB, &x.vocab_size)) != VLM_OK ||
        (st = jint(&c, t, "max_position_embeddings", false, 32768, 1, CAP_POSITIONS, &x.max_position_embeddings)) !=
            VLM_OK)
        return st;
    /* HF: an explicit null means "as many as the query heads"; the class default when the key is absent is 32,
     * which no real Qwen2 checkpoint relies on, so the key is required here. */
    const cJSON *kv = jget(t, "num_key_value_heads");
    if (kv && cJSON_IsNull(kv)) x.n_kv_heads = x.n_heads;
    else if ((st = jint(&c, t, "num_key_value_heads", true, 0, 1, CAP_HIDDEN, &x.n_kv_heads)) != VLM_OK) return st;
    if (x.n_heads % x.n_kv_heads != 0) {
        vlm_log_error("%s: key 'text_config.num_key_value_heads' (%lld) does not divide num_attention_heads (%lld)",
                      path, (long long)x.n_kv_heads, (long long)x.n_heads);
        return VLM_ERR_FORMAT;
    }
    /* head_dim: Qwen2Config has no such field but keeps unknown keys, and the modeling code reads it when set */
    if (!jmissing(jget(t, "head_dim"))) {
        if ((st = jint(&c, t, "head_dim", true, 0, 2, CAP_HIDDEN, &x.head_dim)) != VLM_OK) return st;
        if (x.n_heads * x.head_dim > CAP_INTER) {
            vlm_log_error("%s: key 'text_config.head_dim' (%lld) x num_attention_heads (%lld) exceeds %d", path,
                          (long long)x.head_dim, (long long)x.n_heads, CAP_INTER);
            return VLM_ERR_FORMAT;
        }
    } else {
        if (x.hidden_size % x.n_heads != 0) {
            vlm_log_error("%s: key 'text_config.num_attention_heads' (%lld) does not divide hidden_size (%lld)",
                          path, (long long)x.n_heads, (long long)x.hidden_size);
            return VLM_ERR_FORMAT;
        }
        x.head_dim = x.hidden_size / x.n_heads;
    }
    if (x.head_dim % 2 != 0) {
        vlm_log_error("%s: key 'text_config.head_dim' is %lld, must be even for rotate-half RoPE", path,
                      (long long)x.head_dim);
        return VLM_ERR_FORMAT;
    }
    double eps;
    if ((st = jnum(&c, t, "rms_norm_eps", 1e-6, 0, true, 1.0, &eps)) != VLM_OK) return st;
    x.rms_norm_eps = (float)eps;
    if ((st = parse_rope(&c, t, &x.rope_theta)) != VLM_OK) return st;
    if ((st = jstr(&c, t, "hidden_act", "silu", &s)) != VLM_OK) return st;
    if (!parse_act(s, &x.hidden_act) || x.hidden_act != VLM_ACT_SILU) {
        vlm_log_error("%s: key 'text_config.hidden_act' is \"%.40s\": Qwen2 here needs silu", path, s);
        return VLM_ERR_UNSUPPORTED;
    }
    if ((st = jbool(&c, t, "tie_word_embeddings", false, &x.tie_word_embeddings)) != VLM_OK) return st;
    bool sliding;
    if ((st = jbool(&c, t, "use_sliding_window", false, &sliding)) != VLM_OK) return st;
    if (sliding) {
        vlm_log_error("%s: key 'text_config.use_sliding_window' is true: sliding-window attention is unsupported",
                      path);
        return VLM_ERR_UNSUPPORTED;
    }
    const cJSON *lt = jget(t, "layer_types");
    if (!jmissing(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != x.n_layers) {
            vlm_log_error("%s: key 'text_config.layer_types' must be an array of num_hidden_layers (%lld) strings",
                          path, (long long)x.n_layers);
            return VLM_ERR_FORMAT;
        }
        int i = 0;
        for (const cJSON *e = lt->child; e; e = e->next, i++) {
            if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention") != 0) {
                vlm_log_error("%s: key 'text_config.layer_types[%d]' is not \"full_attention\": only full attention "
                              "is supported", path, i);
                return VLM_ERR_UNSUPPORTED;
            }
        }
    }
    *out = x;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * vision_config (SiglipVisionConfig)
 * ------------------------------------------------------------------------------------------------------------- */

/* v == NULL (absent/null): transformers builds the vision config from LlavaOnevisionConfig's sub-config defaults
 * (so400m minus one layer). When v is an object, missing dimensions are an error: HF would silently fall back to
 * the SigLIP-base class defaults (768 wide, 12 layers), which is never what a LLaVA-OneVision file means. */
static enum vlm_status parse_vision(const char *path, const cJSON *v, struct vlm_vision_config *out) {
    struct jctx c = {path, "vision_config."};
    enum vlm_status st;
    struct vlm_vision_config x = {0};
    const char *s;
    bool req = v != NULL;
    if ((st = jstr(&c, v, "model_type", "siglip_vision_model", &s)) != VLM_OK) return st;
    if (strcmp(s, "siglip_vision_model") != 0) {
        vlm_log_error("%s: key 'vision_config.model_type' is \"%.40s\": only siglip_vision_model is supported", path,
                      s);
        return VLM_ERR_UNSUPPORTED;
    }
    if ((st = jint(&c, v, "hidden_size", req, 1152, 1, CAP_HIDDEN, &x.hidden_size)) != VLM_OK ||
        (st = jint(&c, v, "intermediate_size", req, 4304, 1, CAP_INTER, &x.intermediate_size)) != VLM_OK ||
        (st = jint(&c, v, "num_hidden_layers", req, 26, 1, CAP_LAYERS, &x.n_layers)) != VLM_OK ||
        (st = jint(&c, v, "num_attention_heads", req, 16, 1, CAP_HIDDEN, &x.n_heads)) != VLM_OK ||
        (st = jint(&c, v, "num_channels", false, 3, 1, 16, &x.n_channels)) != VLM_OK ||
        (st = jside(&c, v, "image_size", req, 384, &x.image_size)) != VLM_OK ||
        (st = jside(&c, v, "patch_size", req, 14, &x.patch_size)) != VLM_OK)
        return st;
    if (x.n_channels != 3) {
        vlm_log_error("%s: key 'vision_config.num_channels' is %lld: only RGB (3) is supported", path,
                      (long long)x.n_channels);
        return VLM_ERR_UNSUPPORTED;
    }
    if (x.hidden_size % x.n_heads != 0) {
        vlm_log_error("%s: key 'vision_config.num_attention_heads' (%lld) does not divide hidden_size (%lld)", path,
                      (long long)x.n_heads, (long long)x.hidden_size);
        return VLM_ERR_FORMAT;
    }
    x.head_dim = x.hidden_size / x.n_heads;
    /* no divisibility: the real tower has 384 / 14 -> 27 patches and never sees the last 6 pixel rows/columns
     * (a "valid" stride-14 conv floors), so only patch_size <= image_size is required */
    if (x.patch_size > x.image_size) {
        vlm_log_error("%s: key 'vision_config.patch_size' (%lld) exceeds image_size (%lld)", path,
                      (long long)x.patch_size, (long long)x.image_size);
        return VLM_ERR_FORMAT;
    }
    x.n_patches_side = x.image_size / x.patch_size;
    double eps;
    if ((st = jnum(&c, v, "layer_norm_eps", 1e-6, 0, true, 1.0, &eps)) != VLM_OK) return st;
    x.layer_norm_eps = (float)eps;
    if ((st = jstr(&c, v, "hidden_act", "gelu_pytorch_tanh", &s)) != VLM_OK) return st;
    if (!parse_act(s, &x.hidden_act)) {
        vlm_log_error("%s: key 'vision_config.hidden_act' is \"%.40s\": unsupported activation", path, s);
        return VLM_ERR_UNSUPPORTED;
    }
    *out = x;
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * top level (LlavaOnevisionConfig)
 * ------------------------------------------------------------------------------------------------------------- */

/* image_grid_pinpoints: list of [h, w]; each side a positive multiple of crop, at most CAP_PINPOINT_SIDE. */
static enum vlm_status parse_pinpoints(const char *path, const char *key, const cJSON *arr, int64_t crop,
                                       int64_t *n_out, int64_t (*pts)[2]) {
    int n = cJSON_GetArraySize(arr);
    if (!cJSON_IsArray(arr) || n < 1 || n > VLM_MAX_PINPOINTS) {
        vlm_log_error("%s: key '%s' must be a list of 1..%d [height, width] pairs", path, key, VLM_MAX_PINPOINTS);
        return VLM_ERR_FORMAT;
    }
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        const cJSON *a = cJSON_IsArray(e) ? e->child : NULL, *b = a ? a->next : NULL;
        bool ok = cJSON_GetArraySize(e) == 2 && cJSON_IsNumber(a) && cJSON_IsNumber(b);
        for (int k = 0; ok && k < 2; k++) {
            double d = (k ? b : a)->valuedouble;
            ok = d >= 1 && d <= CAP_PINPOINT_SIDE && d == floor(d) && (int64_t)d % crop == 0;
            if (ok) pts[i][k] = (int64_t)d;
        }
        if (!ok) {
            vlm_log_error("%s: key '%s[%d]' must be a [height, width] pair of positive multiples of the crop size "
                          "%lld, at most %d", path, key, i, (long long)crop, CAP_PINPOINT_SIDE);
            return VLM_ERR_FORMAT;
        }
    }
    *n_out = n;
    return VLM_OK;
}

/* The 36 default canvases of LlavaOnevisionConfig: (a*384, b*384), a, b in 1..6, height-major. */
static void default_pinpoints(int64_t *n_out, int64_t (*pts)[2]) {
    int n = 0;
    for (int a = 1; a <= 6; a++)
        for (int b = 1; b <= 6; b++) pts[n][0] = 384 * a, pts[n][1] = 384 * b, n++;
    *n_out = n;
}

/* A section handed over already parsed (a .mbq header): the same object and duplicate-key rules as a file. */
static enum vlm_status check_root(const cJSON *root, const char *path) {
    if (!cJSON_IsObject(root)) {
        vlm_log_error("%s: not a JSON object", path);
        return VLM_ERR_FORMAT;
    }
    return check_dup_keys(path, root);
}

enum vlm_status vlm_config_parse(const char *path, struct vlm_config *out) {
    if (!path || !out) return VLM_ERR_ARG;
    cJSON *root = NULL;
    enum vlm_status st = load_json(path, &root);
    if (st != VLM_OK) return st;
    st = vlm_config_parse_json(root, path, out);
    cJSON_Delete(root);
    return st;
}

enum vlm_status vlm_config_parse_json(const cJSON *root, const char *path, struct vlm_config *out) {
    if (!root || !path || !out) return VLM_ERR_ARG;
    enum vlm_status st = check_root(root, path);
    if (st != VLM_OK) return st;
    struct jctx c = {path, ""};
    struct vlm_config *x = calloc(1, sizeof *x); /* built aside so *out stays untouched on failure */
    if (!x) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    const char *s;
    if ((st = jstr(&c, root, "model_type", NULL, &s)) != VLM_OK) goto fail;
    if (strcmp(s, "llava_onevision") != 0) {
        vlm_log_error("%s: key 'model_type' is \"%.40s\": only llava_onevision is supported", path, s);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    const cJSON *t, *v;
    if ((st = jobj(&c, root, "text_config", &t)) != VLM_OK) goto fail;
    if (!t) {
        /* HF would build a default Qwen2Config (a 4096-wide, 32-layer model): never what a checkpoint means */
        vlm_log_error("%s: missing key 'text_config'", path);
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    if ((st = parse_text(path, t, &x->text)) != VLM_OK) goto fail;
    if ((st = jobj(&c, root, "vision_config", &v)) != VLM_OK) goto fail;
    if ((st = parse_vision(path, v, &x->vision)) != VLM_OK) goto fail;

    /* vision_feature_layer: int or list, indexing the n_layers + 1 hidden states (negative from the end) */
    const cJSON *fl = jget(root, "vision_feature_layer");
    int64_t n_states = x->vision.n_layers + 1;
    if (jmissing(fl)) {
        x->n_feature_layers = 1;
        x->feature_layers[0] = (int)(n_states - 1); /* default -1 */
    } else {
        bool is_list = cJSON_IsArray(fl);
        int n = is_list ? cJSON_GetArraySize(fl) : 1;
        if ((!is_list && !cJSON_IsNumber(fl)) || n < 1 || n > VLM_MAX_FEATURE_LAYERS) {
            vlm_log_error("%s: key 'vision_feature_layer' must be an integer or a list of 1..%d integers", path,
                          VLM_MAX_FEATURE_LAYERS);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        const cJSON *e = is_list ? fl->child : fl;
        for (int i = 0; i < n; i++, e = e->next) {
            double d = cJSON_IsNumber(e) ? e->valuedouble : NAN;
            if (!(d >= (double)-n_states && d < (double)n_states) || d != floor(d)) {
                char got[64];
                describe(e, got, sizeof got);
                vlm_log_error("%s: key 'vision_feature_layer' entry %s is not an integer in [%lld, %lld] (the "
                              "tower has %lld hidden states)", path, got, (long long)-n_states,
                              (long long)n_states - 1, (long long)n_states);
                st = VLM_ERR_FORMAT;
                goto fail;
            }
            int64_t k = (int64_t)d;
            x->feature_layers[i] = (int)(k < 0 ? k + n_states : k);
        }
        x->n_feature_layers = n;
    }

    if ((st = jstr(&c, root, "vision_feature_select_strategy", "full", &s)) != VLM_OK) goto fail;
    if (!strcmp(s, "full")) {
        x->select_strategy = VLM_SELECT_FULL;
    } else if (!strcmp(s, "default")) {
        vlm_log_error("%s: key 'vision_feature_select_strategy' is \"default\": it drops patch 0, meant for a CLS "
                      "token that SigLIP does not have (spec §3.4)", path);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    } else {
        vlm_log_error("%s: key 'vision_feature_select_strategy' is \"%.40s\", must be \"full\" or \"default\"", path,
                      s);
        st = VLM_ERR_FORMAT;
        goto fail;
    }

    const cJSON *pp = jget(root, "image_grid_pinpoints");
    if (!jmissing(pp)) {
        if ((st = parse_pinpoints(path, "image_grid_pinpoints", pp, x->vision.image_size, &x->n_pinpoints,
                                  x->pinpoints)) != VLM_OK)
            goto fail;
    } else if (x->vision.image_size != 384 && 384 % x->vision.image_size != 0) {
        vlm_log_error("%s: key 'image_grid_pinpoints' is absent and its default (multiples of 384) does not fit "
                      "vision_config.image_size %lld", path, (long long)x->vision.image_size);
        st = VLM_ERR_FORMAT;
        goto fail;
    } else {
        default_pinpoints(&x->n_pinpoints, x->pinpoints);
    }

    /* "anyres_max_N": HF parses N with int(s.strip("anyres_max_")); only that form works there */
    if ((st = jstr(&c, root, "vision_aspect_ratio", "anyres_max_9", &s)) != VLM_OK) goto fail;
    {
        const char *num = !strncmp(s, "anyres_max_", 11) ? s + 11 : NULL;
        char *endp = NULL;
        long long mx = num && *num >= '0' && *num <= '9' ? strtoll(num, &endp, 10) : -1;
        if (mx < 1 || mx > CAP_ANYRES_MAX || !endp || *endp) {
            vlm_log_error("%s: key 'vision_aspect_ratio' is \"%.40s\": only \"anyres_max_N\" with N in 1..%d is "
                          "supported", path, s, CAP_ANYRES_MAX);
            st = VLM_ERR_UNSUPPORTED;
            goto fail;
        }
        x->anyres_max = mx;
    }

    /* image_token_index (also spelled image_token_id in newer configs; attribute_map aliases them) */
    {
        int64_t a = -1, b = -1;
        if ((st = jint(&c, root, "image_token_index", false, -1, 0, CAP_VOCAB, &a)) != VLM_OK ||
            (st = jint(&c, root, "image_token_id", false, -1, 0, CAP_VOCAB, &b)) != VLM_OK)
            goto fail;
        if (a >= 0 && b >= 0 && a != b) {
            vlm_log_error("%s: keys 'image_token_index' (%lld) and 'image_token_id' (%lld) disagree", path,
                          (long long)a, (long long)b);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
        x->image_token_index = a >= 0 ? a : b >= 0 ? b : 151646;
        if (x->image_token_index >= x->text.vocab_size) {
            vlm_log_error("%s: key 'image_token_index' is %lld, outside the vocabulary [0, %lld)", path,
                          (long long)x->image_token_index, (long long)x->text.vocab_size);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
    }

    if ((st = jstr(&c, root, "projector_hidden_act", "gelu", &s)) != VLM_OK) goto fail;
    if (!parse_act(s, &x->projector_act)) {
        vlm_log_error("%s: key 'projector_hidden_act' is \"%.40s\": unsupported activation", path, s);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    if ((st = jbool(&c, root, "multimodal_projector_bias", true, &x->projector_bias)) != VLM_OK ||
        (st = jbool(&c, root, "tie_word_embeddings", false, &x->tie_word_embeddings)) != VLM_OK)
        goto fail;

    *out = *x;
    free(x);
    return VLM_OK;
fail:
    free(x);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * preprocessor_config.json (LlavaOnevisionImageProcessor)
 * ------------------------------------------------------------------------------------------------------------- */

/* image_mean / image_std: a list of 3 numbers or one number for all channels (HF accepts both). */
static enum vlm_status parse_triplet(const char *path, const cJSON *root, const char *key, const float def[3],
                                     bool positive, float out[3]) {
    const cJSON *v = jget(root, key);
    if (jmissing(v)) {
        memcpy(out, def, 3 * sizeof *out);
        return VLM_OK;
    }
    double d[3] = {0, 0, 0};
    bool ok;
    if (cJSON_IsNumber(v)) {
        d[0] = d[1] = d[2] = v->valuedouble;
        ok = true;
    } else {
        ok = cJSON_IsArray(v) && cJSON_GetArraySize(v) == 3;
        int i = 0;
        for (const cJSON *e = ok ? v->child : NULL; e; e = e->next, i++) {
            if (!cJSON_IsNumber(e)) ok = false;
            else d[i] = e->valuedouble;
        }
    }
    for (int i = 0; ok && i < 3; i++) ok = isfinite(d[i]) && (positive ? d[i] > 0 : true) && fabs(d[i]) < 1e6;
    if (!ok) {
        vlm_log_error("%s: key '%s' must be a list of 3 finite numbers%s", path, key, positive ? " > 0" : "");
        return VLM_ERR_FORMAT;
    }
    for (int i = 0; i < 3; i++) out[i] = (float)d[i];
    return VLM_OK;
}

enum vlm_status vlm_preproc_parse(const char *path, struct vlm_preproc_config *out) {
    if (!path || !out) return VLM_ERR_ARG;
    cJSON *root = NULL;
    enum vlm_status st = load_json(path, &root);
    if (st != VLM_OK) return st;
    st = vlm_preproc_parse_json(root, path, out);
    cJSON_Delete(root);
    return st;
}

enum vlm_status vlm_preproc_parse_json(const cJSON *root, const char *path, struct vlm_preproc_config *out) {
    if (!root || !path || !out) return VLM_ERR_ARG;
    enum vlm_status st = check_root(root, path);
    if (st != VLM_OK) return st;
    struct jctx c = {path, ""};
    struct vlm_preproc_config x = {0};
    static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}; /* OPENAI_CLIP_MEAN */
    static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f}; /* OPENAI_CLIP_STD */

    const cJSON *size;
    if ((st = jobj(&c, root, "size", &size)) != VLM_OK) goto fail;
    if (!size) {
        x.size_h = x.size_w = 384;
    } else {
        struct jctx sc = {path, "size."};
        if (!jmissing(jget(size, "height")) || !jmissing(jget(size, "width"))) {
            if ((st = jint(&sc, size, "height", true, 0, 1, CAP_IMAGE_SIDE, &x.size_h)) != VLM_OK ||
                (st = jint(&sc, size, "width", true, 0, 1, CAP_IMAGE_SIDE, &x.size_w)) != VLM_OK)
                goto fail;
        } else if (!jmissing(jget(size, "shortest_edge"))) {
            if ((st = jint(&sc, size, "shortest_edge", true, 0, 1, CAP_IMAGE_SIDE, &x.size_h)) != VLM_OK) goto fail;
            x.size_w = x.size_h;
        } else {
            vlm_log_error("%s: key 'size' must hold height and width, or shortest_edge", path);
            st = VLM_ERR_FORMAT;
            goto fail;
        }
    }
    if (x.size_h != x.size_w) {
        vlm_log_error("%s: key 'size' is %lld x %lld: only square crops are supported", path, (long long)x.size_h,
                      (long long)x.size_w);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    const cJSON *crop = jget(root, "crop_size");
    if (!jmissing(crop)) {
        /* the processor tiles with crop_size.height when it is set: accept it only when it equals size */
        const cJSON *ch = cJSON_IsObject(crop) ? jget(crop, "height") : NULL;
        const cJSON *cw = cJSON_IsObject(crop) ? jget(crop, "width") : NULL;
        if (!cJSON_IsNumber(ch) || ch->valuedouble != (double)x.size_h ||
            (cw && (!cJSON_IsNumber(cw) || cw->valuedouble != (double)x.size_w))) {
            vlm_log_error("%s: key 'crop_size' differs from 'size' (%lld): unsupported", path, (long long)x.size_h);
            st = VLM_ERR_UNSUPPORTED;
            goto fail;
        }
    }
    if ((st = parse_triplet(path, root, "image_mean", clip_mean, false, x.image_mean)) != VLM_OK ||
        (st = parse_triplet(path, root, "image_std", clip_std, true, x.image_std)) != VLM_OK)
        goto fail;
    if ((st = jnum(&c, root, "rescale_factor", 1.0 / 255.0, 0, true, 1e6, &x.rescale_factor)) != VLM_OK) goto fail;
    int64_t resample;
    if ((st = jint(&c, root, "resample", false, 3, 0, 5, &resample)) != VLM_OK) goto fail;
    if (resample != 3) {
        vlm_log_error("%s: key 'resample' is %lld: only 3 (PIL BICUBIC) is supported", path, (long long)resample);
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    x.resample = (int)resample;
    bool do_resize, do_center_crop;
    if ((st = jbool(&c, root, "do_rescale", true, &x.do_rescale)) != VLM_OK ||
        (st = jbool(&c, root, "do_normalize", true, &x.do_normalize)) != VLM_OK ||
        (st = jbool(&c, root, "do_convert_rgb", true, &x.do_convert_rgb)) != VLM_OK ||
        (st = jbool(&c, root, "do_resize", true, &do_resize)) != VLM_OK ||
        (st = jbool(&c, root, "do_center_crop", false, &do_center_crop)) != VLM_OK)
        goto fail;
    if (!do_resize || do_center_crop) {
        vlm_log_error("%s: key '%s' is %s: unsupported", path, !do_resize ? "do_resize" : "do_center_crop",
                      !do_resize ? "false" : "true");
        st = VLM_ERR_UNSUPPORTED;
        goto fail;
    }
    const cJSON *pp = jget(root, "image_grid_pinpoints");
    if (!jmissing(pp) &&
        (st = parse_pinpoints(path, "image_grid_pinpoints", pp, x.size_h, &x.n_pinpoints, x.pinpoints)) != VLM_OK)
        goto fail;
    *out = x;
    return VLM_OK;
fail:
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * parameter counts
 * ------------------------------------------------------------------------------------------------------------- */

void vlm_config_count_params(const struct vlm_config *c, struct vlm_param_count *out) {
    const struct vlm_text_config *t = &c->text;
    const struct vlm_vision_config *v = &c->vision;
    struct vlm_param_count p = {0};
    /* the caps of the parser keep every product here far below 2^63 */
    int64_t n_vit = vlm_config_n_vit_layers(c);
    int64_t vh = v->hidden_size, vi = v->intermediate_size, ps = v->patch_size;
    int64_t per_vit = 4 * (vh * vh + vh) + 2 * 2 * vh + (vi * vh + vi) + (vh * vi + vh);
    int64_t n_patches = v->n_patches_side * v->n_patches_side;
    p.vision = n_vit * per_vit + (vh * v->n_channels * ps * ps + vh) + n_patches * vh + 2 * vh;

    int64_t d = t->hidden_size, q = t->n_heads * t->head_dim, kv = t->n_kv_heads * t->head_dim;
    int64_t in = vh * c->n_feature_layers;
    p.projector = in * d + d * d + (c->projector_bias ? 2 * d : 0);
    p.text_linear = t->n_layers * (d * q + 2 * d * kv + q * d + 3 * d * t->intermediate_size);
    p.text_other = t->n_layers * (q + 2 * kv + 2 * d) + d;
    p.embedding = t->vocab_size * d;
    p.lm_head = t->tie_word_embeddings ? 0 : t->vocab_size * d;
    p.total = p.vision + p.projector + d /* image_newline */ + p.text_linear + p.text_other + p.embedding + p.lm_head;
    *out = p;
}

int64_t vlm_config_n_vit_layers(const struct vlm_config *c) {
    int64_t m = 0;
    for (int i = 0; i < c->n_feature_layers; i++)
        if (c->feature_layers[i] > m) m = c->feature_layers[i];
    return m;
}
