/* conv_model.c — conv_run: an HF checkpoint (read by the runtime's own loader, so the converter and the runtime
 * read checkpoints identically) into a .mbq file through the atomic writer of runtime/mbq_file.h. The decoder's
 * linears are streamed: they stay in the mapped checkpoint and are widened to float32 one layer at a time (by the
 * calibration, then once more here to fold the calibration's scales and quantize), so memory is the rest of the
 * model in float32 + one layer + the calibration batch, not 4 bytes per parameter.
 * The tensor list is runtime/model_mbq.h's table, shared with the loader. The output depends only on the
 * checkpoint's bytes and the options (no paths, times or host facts go into the file), so equal inputs give equal
 * files on one machine (calibration runs the fast float kernels, whose summation order follows the CPU's ISA). */
#include "converter/conv.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "converter/calibrate.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ops.h"
#include "runtime/mbq_file.h"
#include "runtime/model.h"
#include "runtime/model_mbq.h"
#include "runtime/util.h"
#include "tokenizer/tokenizer.h"

enum vlm_qformat conv_linear_format(const struct conv_options *o) {
    switch (o->method) {
    case CONV_F32: return VLM_QF_F32;
    case CONV_F16: return o->float_fmt == VLM_QF_BF16 ? VLM_QF_BF16 : VLM_QF_F16;
    case CONV_RTN:
    case CONV_AWQ:
    case CONV_MBQ: return o->abits == 8 ? VLM_QF_W4A8 : o->wbits == 3 ? VLM_QF_W3G128 : VLM_QF_W4G128;
    case CONV_SMOOTHQUANT: return VLM_QF_W4A8;
    }
    return VLM_QF_F32;
}

void conv_linear_f32(const struct vlm_model *m, float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t N, int64_t K) {
    if (m->qctx) {
        const struct vlm_qmat v = {.fmt = VLM_QF_F32, .n = N, .k = K, .codes = w};
        if (cpu_qlinear(m->qctx, y, x, &v, b, M) == VLM_OK) return;
    }
    cpu_linear_ref(y, x, w, b, M, N, K);
}

static const char *method_name(enum conv_method m) {
    static const char *const names[] = {"f32", "fp16", "rtn", "awq", "smoothquant", "mbq"};
    return (unsigned)m < sizeof names / sizeof *names ? names[m] : "?";
}

static bool calibrated(enum conv_method m) { return m == CONV_AWQ || m == CONV_SMOOTHQUANT || m == CONV_MBQ; }

cJSON *conv_read_json_file(const char *path, bool required, enum vlm_status *st) {
    struct stat sb;
    char *buf = NULL;
    size_t len;
    *st = VLM_OK;
    if (!required && stat(path, &sb) != 0) return NULL;
    if ((*st = vlm_file_read_all(path, 16u << 20, &buf, &len)) != VLM_OK) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!cJSON_IsObject(j)) {
        vlm_log_error("%s: not a JSON object", path);
        cJSON_Delete(j);
        *st = VLM_ERR_FORMAT;
        return NULL;
    }
    return j;
}

/* A JSON file of the checkpoint, parsed (NULL with *st = VLM_OK when optional and absent). */
static cJSON *read_json(const char *dir, const char *name, bool required, enum vlm_status *st) {
    char path[4096];
    if (!vlm_path_join(path, sizeof path, dir, name)) {
        vlm_log_error("%s: path too long", dir);
        *st = VLM_ERR_ARG;
        return NULL;
    }
    return conv_read_json_file(path, required, st);
}

/* The checkpoint's tokenizer file, checked by loading it. *data NULL when the checkpoint has none. */
static enum vlm_status read_tokenizer(const char *dir, char **data, size_t *len, const char **kind) {
    static const char *const names[] = {"tokenizer.json", "tokenizer.model"};
    char path[4096];
    struct stat sb;
    *data = NULL;
    for (int i = 0; i < 2; i++) {
        if (!vlm_path_join(path, sizeof path, dir, names[i]) || stat(path, &sb) != 0) continue;
        struct vlm_tokenizer *t = NULL;
        enum vlm_status st = tok_load_file(path, &t); /* refuse to package a tokenizer the runtime cannot load */
        tok_free(t);
        if (st != VLM_OK) return st;
        if ((st = vlm_file_read_all(path, 256u << 20, data, len)) != VLM_OK) return st;
        *kind = i == 0 ? "bpe" : "spm";
        return VLM_OK;
    }
    return VLM_OK;
}

static bool packed(enum vlm_qformat f) { return f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_W4A8; }

enum vlm_qformat conv_slot_format(const struct conv_options *o, const struct mbq_slot *s) {
    switch (s->kind) {
    case MBQ_SLOT_FLOAT: return s->n_dims == 1 ? VLM_QF_F32 : o->float_fmt; /* norms, biases: f32 (scales fold in) */
    case MBQ_SLOT_LINEAR: return conv_linear_format(o);
    case MBQ_SLOT_EMBED: return o->embed_fmt;
    case MBQ_SLOT_HEAD: return o->head_fmt;
    }
    return VLM_QF_F32;
}

bool conv_slot_declare(const struct conv_options *o, const struct mbq_slot *s, const char *name,
                       struct mbq_tensor_decl *decl, struct vlm_qlayout *L, int64_t *k_out) {
    const enum vlm_qformat f = conv_slot_format(o, s);
    int64_t n = s->n_dims == 2 ? s->shape[0] : 1, k;
    VLM_ASSERT(vlm_dims_product(s->shape, s->n_dims, &k));
    if (s->n_dims == 2) k = s->shape[1];
    const char *why;
    if (!vlm_qlayout(f, n, k, L, &why)) {
        vlm_log_error("%s: tensor '%s' [%lld, %lld] cannot be stored as %s: %s%s", name, s->name, (long long)n,
                      (long long)k, vlm_qformat_name(f), why,
                      packed(f) ? " (group-128 formats need it; this model needs --method fp16)" : "");
        return false;
    }
    *decl = (struct mbq_tensor_decl){.name = s->name, .dtype = (int)f, .n_dims = s->n_dims};
    memcpy(decl->shape, s->shape, sizeof decl->shape);
    *k_out = k;
    return true;
}

/* Peak resident set of this process so far, in bytes (Linux reports ru_maxrss in KiB); 0 when unknown. */
static double peak_rss_bytes(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0.0;
}

/* Relative Frobenius error of the stored weights, accumulated over the decoder linears. */
struct err_acc {
    double num, den;
};

enum vlm_status conv_run(const struct conv_options *o) {
    enum vlm_status st;
    struct vlm_model *m = NULL;
    cJSON *cfg = NULL, *pre = NULL, *gen = NULL, *meta = NULL, *report = NULL;
    char *tok = NULL;
    size_t tok_len = 0;
    const char *tok_kind = NULL;
    struct mbq_slot *slots = NULL;
    struct mbq_tensor_decl *decls = NULL;
    struct mbq_writer *w = NULL;
    unsigned char *blob = NULL;
    float *row = NULL, *scales = NULL;
    struct stat sb;
    double t0 = vlm_time_ms();

    if (stat(o->model_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        vlm_log_error("%s: not a checkpoint directory (config.json, preprocessor_config.json, *.safetensors)",
                      o->model_dir);
        return VLM_ERR_IO;
    }
    if (o->group != VLM_QGROUP) {
        vlm_log_error("--group %d: only 128 is defined by the formats", o->group);
        return VLM_ERR_ARG;
    }
    if ((st = read_tokenizer(o->model_dir, &tok, &tok_len, &tok_kind)) != VLM_OK) goto fail;
    if (!(cfg = read_json(o->model_dir, "config.json", true, &st))) goto fail;
    if (!(pre = read_json(o->model_dir, "preprocessor_config.json", true, &st))) goto fail;
    gen = read_json(o->model_dir, "generation_config.json", false, &st);
    if (st != VLM_OK) goto fail;
    /* the decoder's linears stay in the mapped checkpoint and are widened one layer at a time (by the calibration
     * and again by the writer): memory is the rest of the model in float32 plus one layer, not 4 bytes per
     * parameter of the whole model */
    const struct vlm_load_opts lo = {.stream_decoder_linears = true};
    if ((st = vlm_model_load_opts(o->model_dir, &lo, &m)) != VLM_OK) goto fail;
    /* the calibration images go through the vision tower on the fast f32 GEMM and attention, as a .mbq model's do
     * at run time (float32 throughout; the reference path would take minutes per image at so400m size) */
    m->fast_f32 = true;
    if (calibrated(o->method)) {
        struct vlm_tokenizer *tk = NULL;
        if (!o->calib_path) {
            vlm_log_error("--method %s needs calibration data (--calib DATA.json)", method_name(o->method));
            st = VLM_ERR_ARG;
            goto fail;
        }
        if ((st = tok_load(o->model_dir, &tk)) != VLM_OK) goto fail;
        const struct conv_calib_opts co = {
            .method = o->method == CONV_AWQ ? CONV_CAL_AWQ : o->method == CONV_MBQ ? CONV_CAL_MBQ : CONV_CAL_SMOOTHQUANT,
            .format = conv_linear_format(o), .calib_path = o->calib_path, .n_samples = o->n_samples, .seed = o->seed,
            .progress = !o->quiet};
        report = cJSON_CreateObject();
        st = report ? conv_calibrate(m, tk, &co, report, &scales) : VLM_ERR_OOM;
        tok_free(tk);
        if (st != VLM_OK) goto fail;
    }

    const bool with_head = !m->lm_head_tied || o->head_fmt != o->embed_fmt;
    const int64_t cap = mbq_slots_cap(&m->config);
    slots = vlm_calloc_array((size_t)cap + 1, sizeof *slots, "tensor table");
    decls = vlm_calloc_array((size_t)cap + 1, sizeof *decls, "tensor declarations");
    if (!slots || !decls) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    const int64_t n_slots = mbq_slots_fill(&m->config, &m->w, with_head, slots);
    size_t max_bytes = 0;
    int64_t max_k = 1;
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        struct vlm_qlayout L;
        int64_t k;
        if (!conv_slot_declare(o, s, o->model_dir, &decls[i], &L, &k)) {
            st = VLM_ERR_UNSUPPORTED;
            goto fail;
        }
        max_bytes = L.total_bytes > max_bytes ? L.total_bytes : max_bytes;
        max_k = k > max_k ? k : max_k;
    }
    int64_t n_decls = n_slots;
    if (tok) decls[n_decls++] = (struct mbq_tensor_decl){.name = "tokenizer.file", .dtype = VLM_MBQ_DTYPE_U8,
                                                         .n_dims = 1, .shape = {(int64_t)tok_len}};

    /* header: the checkpoint's own JSON files, the tokenizer entry, the method and its parameters */
    meta = cJSON_CreateObject();
    cJSON *q = cJSON_CreateObject();
    if (!meta || !q) {
        cJSON_Delete(q);
        st = VLM_ERR_OOM;
        goto fail;
    }
    cJSON_AddItemToObject(meta, "config", cfg), cfg = NULL;
    cJSON_AddItemToObject(meta, "preprocessor", pre), pre = NULL;
    if (gen) cJSON_AddItemToObject(meta, "generation", gen), gen = NULL;
    if (tok) {
        cJSON *t = cJSON_AddObjectToObject(meta, "tokenizer");
        if (t) cJSON_AddStringToObject(t, "kind", tok_kind), cJSON_AddStringToObject(t, "tensor", "tokenizer.file");
    }
    cJSON_AddItemToObject(meta, "quant", q);
    cJSON_AddStringToObject(q, "method", method_name(o->method));
    cJSON_AddStringToObject(q, "linear_format", vlm_qformat_name(conv_linear_format(o)));
    if (o->method != CONV_F32 && o->method != CONV_F16) {
        const bool a8 = conv_linear_format(o) == VLM_QF_W4A8;
        cJSON_AddNumberToObject(q, "wbits", a8 ? 4 : o->wbits);
        cJSON_AddNumberToObject(q, "abits", a8 ? 8 : 16);
        cJSON_AddNumberToObject(q, "group", a8 ? -1 : o->group); /* W4A8 weights are per channel */
    }
    if (report) cJSON_AddItemToObject(q, "calibration", report), report = NULL;
    cJSON_AddStringToObject(q, "embed_format", vlm_qformat_name(o->embed_fmt));
    cJSON_AddStringToObject(q, "head_format", vlm_qformat_name(with_head ? o->head_fmt : o->embed_fmt));
    cJSON_AddStringToObject(q, "float_format", vlm_qformat_name(o->float_fmt));
    cJSON_AddStringToObject(q, "scope", "decoder linears (q, k, v, o, gate, up, down); vision tower, projector, "
                                        "norms and biases unquantized");

    if ((st = mbq_writer_open(o->out_path, meta, decls, n_decls, &w)) != VLM_OK) goto fail;
    blob = aligned_alloc(VLM_QALIGN, (max_bytes + VLM_QALIGN) / VLM_QALIGN * VLM_QALIGN); /* views need 64 */
    if (!blob) vlm_log_error("out of memory: the quantization buffer needs %zu bytes", max_bytes);
    row = vlm_alloc_array((size_t)max_k, sizeof(float), "row buffer");
    if (!blob || !row) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    struct err_acc err = {0, 0};
    size_t lin_bytes = 0, total_bytes = 0;
    int64_t lin_weights = 0, widened = -1;
    for (int64_t i = 0; i < n_slots; i++) {
        const struct mbq_slot *s = &slots[i];
        enum vlm_qformat f = (enum vlm_qformat)decls[i].dtype;
        if (s->kind == MBQ_SLOT_LINEAR && s->layer != widened) { /* slots come layer by layer */
            if ((st = vlm_model_layer_load(m, s->layer)) != VLM_OK) goto fail;
            if (scales) conv_fold_layer_linears(m, s->layer, scales); /* the calibration's scales */
            widened = s->layer;
        }
        int64_t n = s->n_dims == 2 ? s->shape[0] : 1, k;
        VLM_ASSERT(vlm_dims_product(s->shape, s->n_dims, &k));
        if (s->n_dims == 2) k = s->shape[1];
        struct vlm_qlayout L;
        VLM_ASSERT(vlm_qlayout(f, n, k, &L, NULL));
        const float *src = *s->f;
        vlm_quantize_ref(f, src, n, k, blob);
        if (s->kind == MBQ_SLOT_LINEAR) {
            struct vlm_qmat qm;
            VLM_ASSERT(vlm_qmat_view(f, n, k, blob, L.total_bytes, &qm, NULL));
            for (int64_t r = 0; r < n; r++) {
                vlm_dequantize_row_ref(&qm, r, row);
                for (int64_t j = 0; j < k; j++) {
                    double d = (double)src[r * k + j] - row[j];
                    err.num += d * d;
                    err.den += (double)src[r * k + j] * src[r * k + j];
                }
            }
            lin_bytes += L.total_bytes;
            lin_weights += n * k;
        }
        /* an fp16 overflow would put an infinity into the file: refuse instead */
        if (f == VLM_QF_F16) {
            struct vlm_qmat qm;
            const char *why;
            VLM_ASSERT(vlm_qmat_view(f, n, k, blob, L.total_bytes, &qm, NULL));
            if (!vlm_qmat_check(&qm, &why)) {
                vlm_log_error("%s: tensor '%s' does not fit fp16 (%s); convert with --dtype bf16 or f32",
                              o->model_dir, s->name, why);
                st = VLM_ERR_UNSUPPORTED;
                goto fail;
            }
        }
        total_bytes += L.total_bytes;
        if ((st = mbq_writer_write(w, i, blob, L.total_bytes)) != VLM_OK) goto fail;
        if (!o->quiet && isatty(2))
            fprintf(stderr, "\rvlmconvert: %lld/%lld tensors", (long long)i + 1, (long long)n_slots);
    }
    if (!o->quiet && isatty(2)) fprintf(stderr, "\n");
    if (tok && (st = mbq_writer_write(w, n_slots, tok, tok_len)) != VLM_OK) goto fail;
    st = mbq_writer_finish(w);
    w = NULL;
    if (st != VLM_OK) goto fail;
    if (!o->quiet)
        vlm_log_info("wrote %s: method %s, decoder linears %s (%.3f bits/weight, relative weight error %.4f), "
                     "embed %s, head %s, %.2f MB of tensors, tokenizer %s; %.1f s, peak memory %.2f GB", o->out_path,
                     method_name(o->method), vlm_qformat_name(conv_linear_format(o)),
                     lin_weights ? 8.0 * (double)lin_bytes / (double)lin_weights : 0.0,
                     err.den > 0 ? sqrt(err.num / err.den) : 0.0, vlm_qformat_name(o->embed_fmt),
                     with_head ? vlm_qformat_name(o->head_fmt) : "tied", (double)total_bytes / 1e6,
                     tok ? tok_kind : "none", (vlm_time_ms() - t0) / 1000.0, peak_rss_bytes() / 1e9);
fail:
    mbq_writer_abort(w);
    free(blob);
    free(row);
    free(scales);
    free(slots);
    free(decls);
    cJSON_Delete(meta);
    cJSON_Delete(report);
    cJSON_Delete(cfg);
    cJSON_Delete(pre);
    cJSON_Delete(gen);
    free(tok);
    vlm_model_free(m);
    return st;
}
