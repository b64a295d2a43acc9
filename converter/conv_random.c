/* conv_random.c — vlmconvert --random: a .mbq of the published LLaVA-OneVision 0.5B / 7B / 72B dimensions (spec
 * §2), or of any HF config.json, with random weights generated directly in the storage formats a conversion
 * would use, so the runtime can be benchmarked at every size without a checkpoint. It is NOT a model: the
 * header's quant.method is "random".
 *
 * Promises: the file passes every check of the loader (vlm_model_load: shapes, formats, vlm_qmat_check); the
 * same options and seed give the same bytes (values depend only on the seed, the tensor's name and its format,
 * so a model cut with --layers has the same first layers as the whole one); memory stays a few MB whatever the
 * size: no tensor is ever whole in memory, each is generated in 16 MB pieces straight into the atomic writer of
 * runtime/mbq_file.h (temp file, rename at the end).
 *
 * Values (the realistic scale is HF's initialisation, N(0, 0.02) for every weight; norms 1):
 *   - float tensors (vision tower, projector, embedding/head and f32/fp16 linears): ≈ N(0, 0.02), drawn as the
 *     sum of four 16-bit uniforms (Irwin–Hall: bounded at ±3.5σ, one 64-bit draw per value);
 *   - norm weights 1; biases and image_newline ≈ N(0, 0.02);
 *   - quantized tensors: codes uniform (random bytes are uniform codes in every packed layout), zeros at the
 *     middle of the range (Q/2 rounded either way), scales drawn uniformly in ±25 % around the value that gives
 *     the dequantized weights a standard deviation of 0.02. Quantizing 7B normals would cost minutes; this costs
 *     one random byte per byte of codes. */
#include "converter/conv.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/config.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/model_mbq.h"
#include "runtime/util.h"

#define RND_SIGMA 0.02f               /* standard deviation of every random weight */
#define RND_CHUNK_BYTES ((size_t)16 << 20) /* default write buffer: the most memory any tensor takes */

/* ---------------------------------------------------------------------------------------------------------------
 * the published configurations (spec §2; the same values as tests/data/configs/{0.5b,7b,72b})
 * ------------------------------------------------------------------------------------------------------------- */

struct preset {
    const char *name;
    int64_t hidden, ffn, n_layers, n_heads, n_kv_heads, vocab;
    bool tied;
};

static const struct preset k_presets[] = {
    {"0.5b", 896, 4864, 24, 14, 2, 151936, true},
    {"7b", 3584, 18944, 28, 28, 4, 152064, false},
    {"72b", 8192, 29568, 80, 64, 8, 152064, false},
};

static const struct preset *find_preset(const char *name) {
    for (size_t i = 0; i < sizeof k_presets / sizeof *k_presets; i++)
        if (strcasecmp(name, k_presets[i].name) == 0) return &k_presets[i];
    return NULL;
}

/* [[h, w], ...] from n (height, width) pairs. NULL on OOM. */
static cJSON *pinpoint_array(const int64_t (*pp)[2], int64_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; a && i < n; i++) {
        const double hw[2] = {(double)pp[i][0], (double)pp[i][1]};
        cJSON *e = cJSON_CreateDoubleArray(hw, 2);
        if (!e || !cJSON_AddItemToArray(a, e)) {
            cJSON_Delete(e);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* All (a·384, b·384), a, b in 1..6, height-major: the published image_grid_pinpoints. */
static cJSON *published_pinpoints(void) {
    int64_t pp[36][2];
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++) pp[6 * a + b][0] = 384 * (a + 1), pp[6 * a + b][1] = 384 * (b + 1);
    return pinpoint_array(pp, 36);
}

cJSON *conv_random_preset(const char *name) {
    const struct preset *p = find_preset(name);
    if (!p) return NULL;
    cJSON *c = cJSON_CreateObject(), *arch = NULL, *t = NULL, *v = NULL, *rope = NULL, *pp = published_pinpoints();
    bool ok = c && pp && (arch = cJSON_AddArrayToObject(c, "architectures")) &&
              cJSON_AddItemToArray(arch, cJSON_CreateString("LlavaOnevisionForConditionalGeneration")) &&
              cJSON_AddStringToObject(c, "dtype", "float16") && cJSON_AddItemToObject(c, "image_grid_pinpoints", pp);
    if (!ok) cJSON_Delete(pp); /* not attached */
    ok = ok && cJSON_AddNumberToObject(c, "image_token_index", 151646) &&
         cJSON_AddStringToObject(c, "model_type", "llava_onevision") &&
         cJSON_AddBoolToObject(c, "multimodal_projector_bias", true) &&
         cJSON_AddStringToObject(c, "projector_hidden_act", "gelu") &&
         (t = cJSON_AddObjectToObject(c, "text_config")) && cJSON_AddStringToObject(t, "hidden_act", "silu") &&
         cJSON_AddNumberToObject(t, "hidden_size", (double)p->hidden) &&
         cJSON_AddNumberToObject(t, "intermediate_size", (double)p->ffn) &&
         cJSON_AddNumberToObject(t, "max_position_embeddings", 32768) &&
         cJSON_AddStringToObject(t, "model_type", "qwen2") &&
         cJSON_AddNumberToObject(t, "num_attention_heads", (double)p->n_heads) &&
         cJSON_AddNumberToObject(t, "num_hidden_layers", (double)p->n_layers) &&
         cJSON_AddNumberToObject(t, "num_key_value_heads", (double)p->n_kv_heads) &&
         cJSON_AddNumberToObject(t, "rms_norm_eps", 1e-6) && (rope = cJSON_AddObjectToObject(t, "rope_parameters")) &&
         cJSON_AddNumberToObject(rope, "rope_theta", 1e6) && cJSON_AddStringToObject(rope, "rope_type", "default") &&
         cJSON_AddBoolToObject(t, "tie_word_embeddings", p->tied) &&
         cJSON_AddBoolToObject(t, "use_sliding_window", false) &&
         cJSON_AddNumberToObject(t, "vocab_size", (double)p->vocab) &&
         cJSON_AddBoolToObject(c, "tie_word_embeddings", p->tied) &&
         cJSON_AddNumberToObject(c, "video_token_index", 151647) &&
         cJSON_AddStringToObject(c, "vision_aspect_ratio", "anyres_max_9") &&
         (v = cJSON_AddObjectToObject(c, "vision_config")) &&
         cJSON_AddStringToObject(v, "hidden_act", "gelu_pytorch_tanh") &&
         cJSON_AddNumberToObject(v, "hidden_size", 1152) &&
         cJSON_AddNumberToObject(v, "image_size", 384) && cJSON_AddNumberToObject(v, "intermediate_size", 4304) &&
         cJSON_AddNumberToObject(v, "layer_norm_eps", 1e-6) &&
         cJSON_AddStringToObject(v, "model_type", "siglip_vision_model") &&
         cJSON_AddNumberToObject(v, "num_attention_heads", 16) && cJSON_AddNumberToObject(v, "num_channels", 3) &&
         cJSON_AddNumberToObject(v, "num_hidden_layers", 26) && cJSON_AddNumberToObject(v, "patch_size", 14) &&
         cJSON_AddBoolToObject(v, "vision_use_head", false) &&
         cJSON_AddNumberToObject(c, "vision_feature_layer", -1) &&
         cJSON_AddStringToObject(c, "vision_feature_select_strategy", "full");
    if (!ok) {
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

/* preprocessor_config.json for config c as the published checkpoints have it (SigLIP mean/std 0.5, bicubic, the
 * crop side and pinpoints of c). NULL on OOM. */
static cJSON *default_preprocessor(const struct vlm_config *c) {
    static const double half[3] = {0.5, 0.5, 0.5};
    cJSON *p = cJSON_CreateObject(), *size = NULL, *pp = NULL;
    bool ok = p && cJSON_AddBoolToObject(p, "do_convert_rgb", true) && cJSON_AddBoolToObject(p, "do_normalize", true) &&
              cJSON_AddBoolToObject(p, "do_pad", true) && cJSON_AddBoolToObject(p, "do_rescale", true) &&
              cJSON_AddBoolToObject(p, "do_resize", true);
    if (ok && c->n_pinpoints > 0) {
        pp = pinpoint_array((const int64_t(*)[2])c->pinpoints, c->n_pinpoints);
        ok = pp && cJSON_AddItemToObject(p, "image_grid_pinpoints", pp);
        if (!ok) cJSON_Delete(pp);
    }
    ok = ok && cJSON_AddItemToObject(p, "image_mean", cJSON_CreateDoubleArray(half, 3)) &&
         cJSON_AddStringToObject(p, "image_processor_type", "LlavaOnevisionImageProcessor") &&
         cJSON_AddItemToObject(p, "image_std", cJSON_CreateDoubleArray(half, 3)) &&
         cJSON_AddNumberToObject(p, "resample", 3) && cJSON_AddNumberToObject(p, "rescale_factor", 1.0 / 255.0) &&
         (size = cJSON_AddObjectToObject(p, "size")) &&
         cJSON_AddNumberToObject(size, "height", (double)c->vision.image_size) &&
         cJSON_AddNumberToObject(size, "width", (double)c->vision.image_size);
    if (!ok) {
        cJSON_Delete(p);
        return NULL;
    }
    return p;
}

/* ---------------------------------------------------------------------------------------------------------------
 * the configuration to build: a preset or a config.json (+ the files beside it), cut to the requested layers
 * ------------------------------------------------------------------------------------------------------------- */


/* Sets obj.num_hidden_layers = n (0: unchanged), keeping the first n layers; *was = the count before (0 when
 * absent). A list "layer_types" is cut to match. what and opt name the layers and the option in messages. */
static enum vlm_status cut_layers(const char *name, cJSON *obj, const char *what, const char *opt, int64_t n,
                                  int64_t *was) {
    cJSON *k = cJSON_GetObjectItemCaseSensitive(obj, "num_hidden_layers");
    if (n == 0) { /* nothing to cut: the config parser judges the value */
        *was = cJSON_IsNumber(k) && k->valuedouble >= 1 && k->valuedouble <= 1e6 ? (int64_t)k->valuedouble : 0;
        return VLM_OK;
    }
    if (!cJSON_IsNumber(k) || k->valuedouble < 1 || k->valuedouble > 1e6) {
        vlm_log_error("%s: no valid num_hidden_layers for the %s layers", name, what);
        return VLM_ERR_FORMAT;
    }
    *was = (int64_t)k->valuedouble;
    if (n > *was) {
        vlm_log_error("%s: %s %lld: the model has %lld %s layers", name, opt, (long long)n, (long long)*was, what);
        return VLM_ERR_ARG;
    }
    cJSON_SetNumberValue(k, (double)n);
    cJSON *types = cJSON_GetObjectItemCaseSensitive(obj, "layer_types");
    if (cJSON_IsArray(types))
        while (cJSON_GetArraySize(types) > n) cJSON_DeleteItemFromArray(types, cJSON_GetArraySize(types) - 1);
    return VLM_OK;
}

/* ---------------------------------------------------------------------------------------------------------------
 * random values
 * ------------------------------------------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z) { /* the splitmix64 finaliser */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* splitmix64: one stream per plane of a tensor, so values never depend on how the writes are chunked. */
struct rng {
    uint64_t state;
    uint64_t word;   /* bytes not yet handed out by rng_bytes, lowest first */
    int n_left;
};

static uint64_t rng_next(struct rng *r) { return mix64(r->state += 0x9E3779B97F4A7C15ull); }

/* ≈ N(0, 1): the sum of four 16-bit uniforms, centred and scaled to unit variance (|x| <= 3.47). */
static float rng_gauss(struct rng *r) {
    const uint64_t x = rng_next(r);
    const int32_t s = (int32_t)(x & 0xffff) + (int32_t)(x >> 16 & 0xffff) + (int32_t)(x >> 32 & 0xffff) +
                      (int32_t)(x >> 48);
    return (float)(s - 131070) * (1.0f / 37837.23f); /* 4 · (65536² − 1) / 12 = 37837.23² */
}

static float rng_unit(struct rng *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); } /* [0, 1) */

/* n uniform bytes; the byte stream is the same however it is split into calls. */
static void rng_bytes(struct rng *r, unsigned char *dst, size_t n) {
    for (; n && r->n_left; n--, r->n_left--, r->word >>= 8) *dst++ = (unsigned char)r->word;
    for (; n >= 8; n -= 8, dst += 8) {
        const uint64_t x = rng_next(r);
        for (int b = 0; b < 8; b++) dst[b] = (unsigned char)(x >> (8 * b));
    }
    if (n) {
        r->word = rng_next(r), r->n_left = 8;
        for (; n; n--, r->n_left--, r->word >>= 8) *dst++ = (unsigned char)r->word;
    }
}

/* What fills one plane of a tensor's blob (kernels/quant.h layouts). */
enum fill {
    FILL_PAD,      /* zero bytes between planes */
    FILL_GAUSS,    /* a · N(0, 1) in fmt (f32/f16/bf16) */
    FILL_CONST,    /* the value a in fmt */
    FILL_BYTES,    /* uniform bytes: uniform codes of W3G128 / W4G128 / W4A8 */
    FILL_Q8,       /* uniform int8 codes in −127..127 (Q8R) */
    FILL_SCALE,    /* a · U(0.75, 1.25) in fmt (f16 group scales, f32 row scales) */
    FILL_ZERO,     /* integer zero a/2 rounded down or up at random (a = Q) */
};

struct plane {
    enum fill fill;
    enum vlm_qformat fmt; /* element type of GAUSS / CONST / SCALE: f32, f16 or bf16 */
    float a;
    size_t count;         /* elements */
};

static size_t elem_bytes(const struct plane *p) {
    if (p->fill == FILL_GAUSS || p->fill == FILL_CONST || p->fill == FILL_SCALE) return p->fmt == VLM_QF_F32 ? 4 : 2;
    return 1;
}

static void put_float(unsigned char *dst, enum vlm_qformat fmt, float v) {
    if (fmt == VLM_QF_F32) {
        memcpy(dst, &v, 4);
    } else {
        const uint16_t h = fmt == VLM_QF_F16 ? vlm_f32_to_f16(v) : vlm_f32_to_bf16(v);
        dst[0] = (unsigned char)h, dst[1] = (unsigned char)(h >> 8); /* the file is little-endian */
    }
}

/* n elements of plane p into dst. */
static void fill_elems(const struct plane *p, struct rng *r, unsigned char *dst, size_t n) {
    const size_t eb = elem_bytes(p);
    switch (p->fill) {
    case FILL_PAD: memset(dst, 0, n); break;
    case FILL_GAUSS:
        for (size_t i = 0; i < n; i++) put_float(dst + i * eb, p->fmt, p->a * rng_gauss(r));
        break;
    case FILL_CONST:
        for (size_t i = 0; i < n; i++) put_float(dst + i * eb, p->fmt, p->a);
        break;
    case FILL_BYTES: rng_bytes(r, dst, n); break;
    case FILL_Q8:
        rng_bytes(r, dst, n);
        for (size_t i = 0; i < n; i++) dst[i] = (unsigned char)(int8_t)((int)((dst[i] * 255u) >> 8) - 127);
        break;
    case FILL_SCALE:
        for (size_t i = 0; i < n; i++) put_float(dst + i * eb, p->fmt, p->a * (0.75f + 0.5f * rng_unit(r)));
        break;
    case FILL_ZERO: {
        const unsigned q = (unsigned)p->a;
        rng_bytes(r, dst, n);
        for (size_t i = 0; i < n; i++) dst[i] = (unsigned char)(q / 2 + (dst[i] & 1u));
        break;
    }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * streaming a tensor into the writer in pieces
 * ------------------------------------------------------------------------------------------------------------- */

struct sink {
    struct mbq_writer *w;
    int64_t tensor;
    unsigned char *buf;
    size_t cap, len;
};

static enum vlm_status sink_flush(struct sink *s) {
    enum vlm_status st = mbq_writer_write_part(s->w, s->tensor, s->buf, s->len);
    s->len = 0;
    return st;
}

static enum vlm_status sink_plane(struct sink *s, const struct plane *p, struct rng *r) {
    const size_t eb = elem_bytes(p);
    for (size_t left = p->count; left > 0;) {
        if (s->cap - s->len < eb) {
            enum vlm_status st = sink_flush(s);
            if (st != VLM_OK) return st;
        }
        size_t n = (s->cap - s->len) / eb;
        n = n < left ? n : left;
        fill_elems(p, r, s->buf + s->len, n);
        s->len += n * eb, left -= n;
    }
    return VLM_OK;
}

/* Standard deviation of (q − z) for uniform codes q in 0..Q and z = Q/2 rounded at random: √(((Q+1)² − 1) / 12)
 * (+ a negligible 1/4 from z); the scales that make it σ·(1 ± 25 %) follow. */
static float code_std(int Q) { return Q == 7 ? 2.2913f : Q == 15 ? 4.6098f : 73.6116f; /* 7, 15, Q8R's 254 */ }

struct placed_plane {
    size_t off; /* byte offset in the blob */
    struct plane p;
};

/* Writes tensor i (slot s, format f, shape (n, k)) with random values seeded by (seed, name, format). */
static enum vlm_status write_random_tensor(struct sink *s, int64_t i, const struct mbq_slot *sl, enum vlm_qformat f,
                                           int64_t n, int64_t k, uint64_t seed) {
    struct vlm_qlayout L;
    VLM_ASSERT(vlm_qlayout(f, n, k, &L, NULL));
    const size_t nl = strlen(sl->name);
    const bool norm = strstr(sl->name, "norm") && nl > 7 && strcmp(sl->name + nl - 7, ".weight") == 0;
    struct placed_plane pl[3];
    int np = 0;
    const size_t ne = (size_t)n * (size_t)k, ng = (size_t)n * (size_t)L.n_groups;
    switch (f) {
    case VLM_QF_F32:
    case VLM_QF_F16:
    case VLM_QF_BF16:
        pl[np++] = (struct placed_plane){0, {norm ? FILL_CONST : FILL_GAUSS, f, norm ? 1.0f : RND_SIGMA, ne}};
        break;
    case VLM_QF_Q8R:
        pl[np++] = (struct placed_plane){L.codes_off, {FILL_Q8, f, 0, ne}};
        pl[np++] = (struct placed_plane){L.scales_off, {FILL_SCALE, VLM_QF_F32, RND_SIGMA / code_std(254), (size_t)n}};
        break;
    case VLM_QF_W4A8:
        pl[np++] = (struct placed_plane){L.codes_off, {FILL_BYTES, f, 0, L.codes_bytes}};
        pl[np++] = (struct placed_plane){L.scales_off, {FILL_SCALE, VLM_QF_F32, RND_SIGMA / code_std(15), (size_t)n}};
        break;
    case VLM_QF_W3G128:
    case VLM_QF_W4G128: {
        const int Q = f == VLM_QF_W3G128 ? 7 : 15;
        pl[np++] = (struct placed_plane){L.codes_off, {FILL_BYTES, f, 0, L.codes_bytes}};
        pl[np++] = (struct placed_plane){L.scales_off, {FILL_SCALE, VLM_QF_F16, RND_SIGMA / code_std(Q), ng}};
        pl[np++] = (struct placed_plane){L.zeros_off, {FILL_ZERO, f, (float)Q, ng}};
        break;
    }
    default: vlm_assert_fail(__FILE__, __LINE__, "f is a weight format");
    }
    /* one stream per plane, from the seed and the tensor's name (FNV-1a) and format */
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *c = sl->name; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    const uint64_t base = mix64(seed ^ mix64(h ^ (uint64_t)f));
    s->tensor = i;
    s->len = 0;
    size_t pos = 0;
    for (int j = 0; j < np; j++) {
        struct rng r = {.state = mix64(base + (uint64_t)j + 1)};
        const struct plane pad = {FILL_PAD, f, 0, pl[j].off - pos};
        enum vlm_status st;
        if ((st = sink_plane(s, &pad, &r)) != VLM_OK || (st = sink_plane(s, &pl[j].p, &r)) != VLM_OK) return st;
        pos = pl[j].off + pl[j].p.count * elem_bytes(&pl[j].p);
    }
    VLM_ASSERT(pos == L.total_bytes);
    return sink_flush(s);
}

/* ---------------------------------------------------------------------------------------------------------------
 * conv_random_run
 * ------------------------------------------------------------------------------------------------------------- */

enum vlm_status conv_random_run(const struct conv_options *o) {
    enum vlm_status st = VLM_OK;
    cJSON *cfg = NULL, *pre = NULL, *gen = NULL, *meta = NULL;
    struct vlm_weights w = {0};
    struct mbq_slot *slots = NULL;
    struct mbq_tensor_decl *decls = NULL;
    struct mbq_writer *wr = NULL;
    struct sink sk = {0};
    const double t0 = vlm_time_ms();
    const char *name = o->random;
    char dir[4096], path[4200], cname[4300];
    const struct preset *preset = find_preset(name);

    if (o->method != CONV_F32 && o->method != CONV_F16 && o->method != CONV_RTN) {
        vlm_log_error("--random writes f32, fp16 or quantized weights (--wbits / --abits); --method %s needs a "
                      "checkpoint", o->method == CONV_AWQ ? "awq" : o->method == CONV_MBQ ? "mbq" : "smoothquant");
        return VLM_ERR_ARG;
    }
    if (o->group != VLM_QGROUP) {
        vlm_log_error("--group %d: only 128 is defined by the formats", o->group);
        return VLM_ERR_ARG;
    }
    if (o->n_layers < 0 || o->n_vision_layers < 0) {
        vlm_log_error("--layers and --vision-layers take a positive count");
        return VLM_ERR_ARG;
    }
    if (preset) {
        if (!(cfg = conv_random_preset(name))) {
            vlm_log_error("%s: out of memory building the config", name);
            st = VLM_ERR_OOM;
            goto fail;
        }
    } else {
        /* a config.json; the preprocessor and generation configs beside it, when there */
        const char *slash = strrchr(name, '/');
        if (!slash) snprintf(dir, sizeof dir, ".");
        else snprintf(dir, sizeof dir, "%.*s", (int)(slash - name == 0 ? 1 : slash - name), name);
        if (!(cfg = conv_read_json_file(name, true, &st))) goto fail;
        if (!vlm_path_join(path, sizeof path, dir, "preprocessor_config.json")) {
            vlm_log_error("%s: path too long", name);
            st = VLM_ERR_ARG;
            goto fail;
        }
        if (!(pre = conv_read_json_file(path, false, &st)) && st != VLM_OK) goto fail;
        VLM_ASSERT(vlm_path_join(path, sizeof path, dir, "generation_config.json")); /* not longer than the above */
        if (!(gen = conv_read_json_file(path, false, &st)) && st != VLM_OK) goto fail;
    }
    /* cut, then check the result with the loader's own parsers */
    int64_t text_was = 0, vis_was = 0;
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(cfg, "text_config");
    cJSON *vc = cJSON_GetObjectItemCaseSensitive(cfg, "vision_config");
    if (cJSON_IsObject(tc) && (st = cut_layers(name, tc, "decoder", "--layers", o->n_layers, &text_was)) != VLM_OK)
        goto fail;
    if (o->n_vision_layers && !cJSON_IsObject(vc)) {
        vlm_log_error("%s: --vision-layers needs a config with a vision_config", name);
        st = VLM_ERR_ARG;
        goto fail;
    }
    if (cJSON_IsObject(vc) &&
        (st = cut_layers(name, vc, "vision", "--vision-layers", o->n_vision_layers, &vis_was)) != VLM_OK)
        goto fail;
    struct vlm_config c;
    struct vlm_preproc_config pc;
    snprintf(cname, sizeof cname, "%s: config", name);
    if ((st = vlm_config_parse_json(cfg, cname, &c)) != VLM_OK) goto fail;
    if (!text_was) text_was = c.text.n_layers;
    if (!vis_was) vis_was = c.vision.n_layers;
    if (!pre && !(pre = default_preprocessor(&c))) {
        vlm_log_error("%s: out of memory building the preprocessor config", name);
        st = VLM_ERR_OOM;
        goto fail;
    }
    snprintf(cname, sizeof cname, "%s: preprocessor", name);
    if ((st = vlm_preproc_parse_json(pre, cname, &pc)) != VLM_OK || (st = vlm_preproc_check(cname, &c, &pc)) != VLM_OK)
        goto fail;

    /* the tensor table the loader expects, each tensor in the format conv_run would give it */
    const bool with_head = !c.text.tie_word_embeddings || o->head_fmt != o->embed_fmt;
    w.n_vit_layers = vlm_config_n_vit_layers(&c);
    w.n_vocab_rows = c.text.vocab_size;
    w.vit = vlm_calloc_array(w.n_vit_layers ? (size_t)w.n_vit_layers : 1, sizeof *w.vit, "vision layer table");
    w.layers = vlm_calloc_array((size_t)c.text.n_layers, sizeof *w.layers, "decoder layer table");
    slots = vlm_calloc_array((size_t)mbq_slots_cap(&c), sizeof *slots, "tensor table");
    decls = vlm_calloc_array((size_t)mbq_slots_cap(&c), sizeof *decls, "tensor declarations");
    if (!w.vit || !w.layers || !slots || !decls) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    const int64_t n_slots = mbq_slots_fill(&c, &w, with_head, slots);
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        struct vlm_qlayout L;
        int64_t k;
        if (!conv_slot_declare(o, s, name, &decls[i], &L, &k)) {
            st = VLM_ERR_UNSUPPORTED;
            goto fail;
        }
    }

    /* header: the config (cut), preprocessor, generation config; quant says loudly that this is not a model */
    const enum vlm_qformat lin = conv_linear_format(o);
    cJSON *q = NULL, *r = NULL;
    bool ok = (meta = cJSON_CreateObject()) && cJSON_AddItemToObject(meta, "config", cfg);
    if (ok) cfg = NULL;
    ok = ok && cJSON_AddItemToObject(meta, "preprocessor", pre);
    if (ok) pre = NULL;
    if (ok && gen) {
        ok = cJSON_AddItemToObject(meta, "generation", gen);
        if (ok) gen = NULL;
    }
    ok = ok && (q = cJSON_AddObjectToObject(meta, "quant")) && cJSON_AddStringToObject(q, "method", "random") &&
         cJSON_AddStringToObject(q, "linear_format", vlm_qformat_name(lin));
    if (ok && o->method == CONV_RTN) {
        const bool a8 = lin == VLM_QF_W4A8;
        ok = cJSON_AddNumberToObject(q, "wbits", a8 ? 4 : o->wbits) &&
             cJSON_AddNumberToObject(q, "abits", a8 ? 8 : 16) &&
             cJSON_AddNumberToObject(q, "group", a8 ? -1 : o->group); /* as conv_run: W4A8 is per channel */
    }
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed); /* a string: exact beyond 2^53 */
    ok = ok && cJSON_AddStringToObject(q, "embed_format", vlm_qformat_name(o->embed_fmt)) &&
         cJSON_AddStringToObject(q, "head_format", vlm_qformat_name(with_head ? o->head_fmt : o->embed_fmt)) &&
         cJSON_AddStringToObject(q, "float_format", vlm_qformat_name(o->float_fmt)) &&
         (r = cJSON_AddObjectToObject(q, "random")) &&
         cJSON_AddStringToObject(r, "architecture", preset ? preset->name : "config.json") &&
         cJSON_AddStringToObject(r, "seed", seed) &&
         cJSON_AddNumberToObject(r, "decoder_layers", (double)c.text.n_layers) &&
         cJSON_AddNumberToObject(r, "decoder_layers_of", (double)text_was) &&
         cJSON_AddNumberToObject(r, "vision_layers", (double)c.vision.n_layers) &&
         cJSON_AddNumberToObject(r, "vision_layers_of", (double)vis_was) &&
         cJSON_AddStringToObject(q, "scope",
                                 "RANDOM WEIGHTS, not a trained model (vlmconvert --random, for benchmarks): values "
                                 "~N(0, 0.02), norms 1; quantized tensors have uniform codes, mid-range zeros and "
                                 "scales for a 0.02 standard deviation; formats as a conversion with these options");
    if (!ok) {
        vlm_log_error("%s: out of memory building the header", o->out_path);
        st = VLM_ERR_OOM;
        goto fail;
    }

    if ((st = mbq_writer_open(o->out_path, meta, decls, n_slots, &wr)) != VLM_OK) goto fail;
    const size_t cap = o->random_chunk_bytes >= 8 ? o->random_chunk_bytes : RND_CHUNK_BYTES;
    sk = (struct sink){.w = wr, .cap = cap, .buf = malloc(cap)};
    if (!sk.buf) {
        vlm_log_error("out of memory: the write buffer needs %zu bytes", cap);
        st = VLM_ERR_OOM;
        goto fail;
    }
    double total_bytes = 0, lin_bytes = 0, lin_weights = 0;
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        const enum vlm_qformat f = (enum vlm_qformat)decls[i].dtype;
        int64_t n = s->n_dims == 2 ? s->shape[0] : 1, k;
        VLM_ASSERT(vlm_dims_product(s->shape, s->n_dims, &k));
        if (s->n_dims == 2) k = s->shape[1];
        if ((st = write_random_tensor(&sk, i, s, f, n, k, o->seed)) != VLM_OK) goto fail;
        struct vlm_qlayout L;
        VLM_ASSERT(vlm_qlayout(f, n, k, &L, NULL));
        total_bytes += (double)L.total_bytes;
        if (s->kind == MBQ_SLOT_LINEAR) lin_bytes += (double)L.total_bytes, lin_weights += (double)n * (double)k;
        if (!o->quiet && isatty(2))
            fprintf(stderr, "\rvlmconvert: %lld/%lld tensors", (long long)i + 1, (long long)n_slots);
    }
    if (!o->quiet && isatty(2)) fprintf(stderr, "\n");
    st = mbq_writer_finish(wr);
    wr = NULL;
    if (st != VLM_OK) goto fail;
    if (!o->quiet) {
        struct rusage ru;
        const double peak = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0.0;
        vlm_log_info("wrote %s: RANDOM weights (seed %s) of %s, %lld of %lld decoder layers, %lld of %lld vision "
                     "layers; decoder linears %s (%.3f bits/weight), embed %s, head %s, %.1f MB of tensors; "
                     "%.1f s, peak memory %.2f GB", o->out_path, seed, preset ? preset->name : name,
                     (long long)c.text.n_layers, (long long)text_was,
                     (long long)c.vision.n_layers, (long long)vis_was, vlm_qformat_name(lin),
                     lin_weights > 0 ? 8.0 * lin_bytes / lin_weights : 0.0, vlm_qformat_name(o->embed_fmt),
                     with_head ? vlm_qformat_name(o->head_fmt) : "tied", total_bytes / 1e6,
                     (vlm_time_ms() - t0) / 1000.0, peak / 1e9);
    }
fail:
    mbq_writer_abort(wr);
    free(sk.buf);
    free(slots);
    free(decls);
    free(w.vit);
    free(w.layers);
    cJSON_Delete(meta);
    cJSON_Delete(cfg);
    cJSON_Delete(pre);
    cJSON_Delete(gen);
    return st;
}
