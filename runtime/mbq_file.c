/* mbq_file.c — the .mbq model file: strict mmap reader and atomic writer. See mbq_file.h.
 *
 * Promise (as safetensors.c's): no pointer into a file is formed before every rule of mbq_file.h has been checked
 * for that file; every failure is ONE error line naming the file and the problem, and a status — file content never
 * reaches an assert. The writer validates its header by running the reader's own header parser over the exact
 * text it is about to write, so whatever the writer produces the reader accepts, and both enforce one set of rules.
 *
 * Sections: small helpers (byte order, JSON checks shared in spirit with safetensors.c); tensor sizes; the header
 * parser (shared by reader and writer); reader; writer. */
#include "mbq_file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

_Static_assert(sizeof(size_t) >= 8, "the reader maps multi-GB files and keeps offsets up to 2^53 in size_t");
_Static_assert(VLM_MBQ_DTYPE_U8 == VLM_QF_COUNT, "u8 follows the weight formats");

#define MBQ_PREAMBLE 32
#define MBQ_DATA_ALIGN 4096u            /* data_offset granularity: a page, so mmap'd tensor data is page-based */
#define MBQ_ENDIAN_MARK 0x01020304u
#define MBQ_FORMAT_NAME "vlm-mbq"
#define MBQ_MAX_EXACT 9007199254740992.0 /* 2^53: every integer below it is exact in a JSON double */
#define MBQ_MAX_EXACT_U ((size_t)1 << 53)

/* ---------------------------------------------------------------------------------------------------------------
 * small helpers
 * ------------------------------------------------------------------------------------------------------------- */

static uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const unsigned char *p) { return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32; }

static void wr_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void wr_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static bool round_up(size_t x, size_t to, size_t *out) {
    size_t r;
    if (!vlm_size_add(x, to - 1, &r)) return false;
    *out = r / to * to;
    return true;
}

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a key that occurs twice in one object anywhere inside v (cJSON keeps both and its lookups return the first,
 * so a duplicate could show two readers two different files). Recursion depth is bounded by cJSON's nesting
 * limit (1000). Returns the duplicated key or NULL; *oom set when a scratch allocation failed. */
static const char *json_dup_key_deep(const cJSON *v, bool *oom) {
    if (cJSON_IsObject(v)) {
        size_t n = 0;
        for (const cJSON *it = v->child; it; it = it->next) n++;
        if (n >= 2) {
            const char **keys = malloc(n * sizeof *keys);
            if (!keys) {
                *oom = true;
                return NULL;
            }
            size_t k = 0;
            for (const cJSON *it = v->child; it; it = it->next) keys[k++] = it->string ? it->string : "";
            qsort(keys, n, sizeof *keys, cmp_cstr_ptr);
            const char *dup = NULL;
            for (size_t i = 1; i < n && !dup; i++)
                if (!strcmp(keys[i - 1], keys[i])) dup = keys[i];
            free(keys);
            if (dup) return dup;
        }
    }
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        for (const cJSON *it = v->child; it; it = it->next) {
            const char *dup = json_dup_key_deep(it, oom);
            if (dup || *oom) return dup;
        }
    }
    return NULL;
}

/* A JSON number that is an exact integer in [0, 2^53). */
static bool json_u53(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < MBQ_MAX_EXACT) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

const char *mbq_dtype_name(int dtype) {
    if (dtype == VLM_MBQ_DTYPE_U8) return "u8";
    return vlm_qformat_name((enum vlm_qformat)dtype); /* "?" when out of range */
}

/* The dtype named s, or -1. */
static int dtype_from_name(const char *s) {
    if (!strcmp(s, "u8")) return VLM_MBQ_DTYPE_U8;
    return vlm_qformat_from_name(s);
}

/* ---------------------------------------------------------------------------------------------------------------
 * tensor sizes
 * ------------------------------------------------------------------------------------------------------------- */

static bool dtype_is_matrix_format(int dtype) {
    return dtype == VLM_QF_Q8R || dtype == VLM_QF_W3G128 || dtype == VLM_QF_W4G128 || dtype == VLM_QF_W4A8;
}

/* Byte size of a tensor entry by the rules of mbq_file.h; false with a one-line reason. Sizes stay below 2^53 so
 * that they (and the offsets built from them) are exact in the JSON header. */
static bool tensor_size(int dtype, int n_dims, const int64_t *shape, size_t *out, const char **why) {
    if (n_dims < 1 || n_dims > VLM_MBQ_MAX_DIMS) {
        *why = "the rank must be 1..4";
        return false;
    }
    for (int d = 0; d < n_dims; d++) {
        if (shape[d] < 1) {
            *why = "every dimension must be >= 1";
            return false;
        }
    }
    size_t size;
    if (dtype_is_matrix_format(dtype)) {
        if (n_dims != 2) {
            *why = "a q8r, w3g128, w4g128 or w4a8 tensor must have rank 2";
            return false;
        }
        struct vlm_qlayout L;
        if (!vlm_qlayout((enum vlm_qformat)dtype, shape[0], shape[1], &L, why)) return false;
        size = L.total_bytes;
    } else {
        size_t elem;
        switch (dtype) {
        case VLM_QF_F32: elem = 4; break;
        case VLM_QF_F16:
        case VLM_QF_BF16: elem = 2; break;
        case VLM_MBQ_DTYPE_U8: elem = 1; break;
        default: *why = "unknown dtype"; return false;
        }
        int64_t elems;
        if (!vlm_dims_product(shape, n_dims, &elems) || !vlm_size_mul((size_t)elems, elem, &size)) {
            *why = "the size overflows";
            return false;
        }
    }
    if (size >= MBQ_MAX_EXACT_U) {
        *why = "the size overflows (2^53 bytes or more)";
        return false;
    }
    *out = size;
    return true;
}

/* "tensor 'name' (w3g128 [896, 900])" into buf, for messages. */
static const char *describe(char *buf, size_t cap, const char *name, int dtype, int n_dims, const int64_t *shape) {
    char nbuf[VLM_MBQ_MAX_NAME + 4];
    int len = snprintf(buf, cap, "tensor '%s' (%s [", vlm_printable(name, nbuf, sizeof nbuf), mbq_dtype_name(dtype));
    for (int d = 0; d < n_dims && len > 0 && (size_t)len < cap; d++)
        len += snprintf(buf + len, cap - (size_t)len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len > 0 && (size_t)len < cap) snprintf(buf + len, cap - (size_t)len, "])");
    return buf;
}

/* ---------------------------------------------------------------------------------------------------------------
 * the header parser, shared by the reader and the writer
 * ------------------------------------------------------------------------------------------------------------- */

/* A validated header: the JSON tree (owning the name strings), the tensor table in file order (data pointers not
 * yet set), each tensor's offset in the data section, and a by-name index for lookup. */
struct mbq_table {
    cJSON *root;
    struct mbq_tensor *t;
    size_t *off;
    const struct mbq_tensor **by_name;
    int64_t n;
    size_t data_end; /* end of the last tensor (0 with none): the exact size of the data section */
};

static void table_free(struct mbq_table *tb) {
    cJSON_Delete(tb->root);
    free(tb->t);
    free(tb->off);
    free(tb->by_name);
    memset(tb, 0, sizeof *tb);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const struct mbq_tensor *const *)a)->name, (*(const struct mbq_tensor *const *)b)->name);
}

/* Checks the top-level objects other than "tensors" whose meaning the runtime relies on. */
static bool check_meta(const char *file, const struct mbq_table *tb) {
    static const char *const objects[] = {"config", "preprocessor", "quant", "tokenizer"};
    for (size_t i = 0; i < sizeof objects / sizeof objects[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(tb->root, objects[i]);
        if (v && !cJSON_IsObject(v)) {
            vlm_log_error("%s: header \"%s\" is not a JSON object", file, objects[i]);
            return false;
        }
    }
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(tb->root, "tokenizer");
    if (!tok) return true;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(tok, "kind");
    if (!cJSON_IsString(kind) || (strcmp(kind->valuestring, "bpe") != 0 && strcmp(kind->valuestring, "spm") != 0)) {
        vlm_log_error("%s: header \"tokenizer\" has no \"kind\" of \"bpe\" or \"spm\"", file);
        return false;
    }
    const cJSON *tname = cJSON_GetObjectItemCaseSensitive(tok, "tensor");
    if (!cJSON_IsString(tname)) {
        vlm_log_error("%s: header \"tokenizer\" has no \"tensor\" string", file);
        return false;
    }
    const struct mbq_tensor key = {.name = tname->valuestring}, *kp = &key;
    const struct mbq_tensor **hit =
        tb->n ? bsearch(&kp, tb->by_name, (size_t)tb->n, sizeof *tb->by_name, cmp_tensor_name) : NULL;
    char pbuf[VLM_MBQ_MAX_NAME + 4];
    if (!hit) {
        vlm_log_error("%s: tokenizer tensor '%s' is not in the tensor table", file,
                      vlm_printable(tname->valuestring, pbuf, sizeof pbuf));
        return false;
    }
    if ((*hit)->dtype != VLM_MBQ_DTYPE_U8) {
        vlm_log_error("%s: tokenizer tensor '%s' has dtype %s, not u8", file, (*hit)->name,
                      mbq_dtype_name((*hit)->dtype));
        return false;
    }
    return true;
}

/* Parses and validates the JSON header h (hb bytes; version is the preamble's). file names the file in messages.
 * On success fills *out (the caller frees it with table_free). */
static enum vlm_status parse_header(const char *file, const unsigned char *h, size_t hb, uint32_t version,
                                    struct mbq_table *out) {
    enum vlm_status st = VLM_ERR_FORMAT;
    struct mbq_table tb = {0};
    char pbuf[VLM_MBQ_MAX_NAME + 4], dbuf[VLM_MBQ_MAX_NAME + 160];

    size_t where = 0;
    const char *why = vlm_json_prescan(h, hb, &where);
    if (why) {
        vlm_log_error("%s: header has %s at byte %zu", file, why, where + MBQ_PREAMBLE);
        goto fail;
    }
    const char *end = NULL;
    tb.root = cJSON_ParseWithLengthOpts((const char *)h, hb, &end, 0);
    if (!tb.root) {
        size_t at = (end && end >= (const char *)h && end <= (const char *)h + hb) ? (size_t)(end - (const char *)h)
                                                                                  : 0;
        vlm_log_error("%s: header is not valid JSON (near byte %zu)", file, at + MBQ_PREAMBLE);
        goto fail;
    }
    for (const char *p = end; p < (const char *)h + hb; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            vlm_log_error("%s: header has bytes after the JSON object (byte %zu)", file,
                          (size_t)(p - (const char *)h) + MBQ_PREAMBLE);
            goto fail;
        }
    }
    if (!cJSON_IsObject(tb.root)) {
        vlm_log_error("%s: header is not a JSON object", file);
        goto fail;
    }
    bool oom = false;
    const char *dup = json_dup_key_deep(tb.root, &oom);
    if (oom) {
        vlm_log_error("%s: out of memory checking header keys", file);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if (dup) {
        vlm_log_error("%s: header has the key '%s' twice in one object", file, vlm_printable(dup, pbuf, sizeof pbuf));
        goto fail;
    }
    const cJSON *jf = cJSON_GetObjectItemCaseSensitive(tb.root, "format");
    if (!cJSON_IsString(jf) || strcmp(jf->valuestring, MBQ_FORMAT_NAME) != 0) {
        vlm_log_error("%s: header \"format\" is not \"%s\"", file, MBQ_FORMAT_NAME);
        goto fail;
    }
    int64_t jver;
    if (!json_u53(cJSON_GetObjectItemCaseSensitive(tb.root, "version"), &jver) || jver != (int64_t)version) {
        vlm_log_error("%s: header \"version\" is missing or differs from the preamble's version %u", file, version);
        goto fail;
    }
    const cJSON *jt = cJSON_GetObjectItemCaseSensitive(tb.root, "tensors");
    if (!cJSON_IsArray(jt)) {
        vlm_log_error("%s: header has no \"tensors\" array", file);
        goto fail;
    }

    int64_t n = 0;
    for (const cJSON *e = jt->child; e; e = e->next) n++;
    size_t cap = n ? (size_t)n : 1;
    tb.t = vlm_calloc_array(cap, sizeof *tb.t, file);
    tb.off = vlm_calloc_array(cap, sizeof *tb.off, file);
    tb.by_name = vlm_calloc_array(cap, sizeof *tb.by_name, file);
    if (!tb.t || !tb.off || !tb.by_name) {
        st = VLM_ERR_OOM;
        goto fail;
    }

    size_t next = 0; /* where the next tensor must begin: the running padded size */
    int64_t i = 0;
    for (const cJSON *e = jt->child; e; e = e->next, i++) {
        if (!cJSON_IsObject(e)) {
            vlm_log_error("%s: tensors[%lld] is not a JSON object", file, (long long)i);
            goto fail;
        }
        const cJSON *jname = NULL, *jdt = NULL, *jshape = NULL, *joff = NULL, *jsize = NULL;
        for (const cJSON *f = e->child; f; f = f->next) {
            if (!strcmp(f->string, "name")) jname = f;
            else if (!strcmp(f->string, "dtype")) jdt = f;
            else if (!strcmp(f->string, "shape")) jshape = f;
            else if (!strcmp(f->string, "offset")) joff = f;
            else if (!strcmp(f->string, "size")) jsize = f;
            else {
                vlm_log_error("%s: tensors[%lld] has an unknown field '%s'", file, (long long)i,
                              vlm_printable(f->string, pbuf, 64));
                goto fail;
            }
        }
        if (!jname || !jdt || !jshape || !joff || !jsize) {
            vlm_log_error("%s: tensors[%lld] lacks \"%s\"", file, (long long)i,
                          !jname ? "name" : !jdt ? "dtype" : !jshape ? "shape" : !joff ? "offset" : "size");
            goto fail;
        }
        if (!cJSON_IsString(jname)) {
            vlm_log_error("%s: tensors[%lld] name is not a string", file, (long long)i);
            goto fail;
        }
        const char *name = jname->valuestring;
        size_t name_len = strlen(name); /* the prescan rejected \u0000, so this is the whole name */
        if (name_len == 0 || name_len > VLM_MBQ_MAX_NAME) {
            vlm_log_error("%s: tensors[%lld] name of %zu bytes (must be 1..%d)", file, (long long)i, name_len,
                          VLM_MBQ_MAX_NAME);
            goto fail;
        }
        if (vlm_has_control(name)) { /* escaped control characters ("\n") would break one-line messages */
            vlm_log_error("%s: tensor name '%s' contains a control character", file,
                          vlm_printable(name, pbuf, sizeof pbuf));
            goto fail;
        }
        struct mbq_tensor *t = &tb.t[i];
        t->name = name;
        t->dtype = cJSON_IsString(jdt) ? dtype_from_name(jdt->valuestring) : -1;
        if (t->dtype < 0) {
            vlm_log_error("%s: tensor '%s' has an unknown dtype %s%s%s", file, name, cJSON_IsString(jdt) ? "'" : "",
                          cJSON_IsString(jdt) ? vlm_printable(jdt->valuestring, pbuf, 32) : "(not a string)",
                          cJSON_IsString(jdt) ? "'" : "");
            goto fail;
        }
        if (!cJSON_IsArray(jshape)) {
            vlm_log_error("%s: tensor '%s' shape is not an array", file, name);
            goto fail;
        }
        int rank = cJSON_GetArraySize(jshape);
        if (rank < 1 || rank > VLM_MBQ_MAX_DIMS) {
            vlm_log_error("%s: tensor '%s' has rank %d (must be 1..%d)", file, name, rank, VLM_MBQ_MAX_DIMS);
            goto fail;
        }
        t->n_dims = rank;
        int d = 0;
        for (const cJSON *s = jshape->child; s; s = s->next, d++) {
            if (!json_u53(s, &t->shape[d])) {
                vlm_log_error("%s: tensor '%s' shape[%d] is not a non-negative integer below 2^53", file, name, d);
                goto fail;
            }
        }
        size_t size;
        if (!tensor_size(t->dtype, t->n_dims, t->shape, &size, &why)) {
            vlm_log_error("%s: %s: %s", file, describe(dbuf, sizeof dbuf, name, t->dtype, t->n_dims, t->shape), why);
            goto fail;
        }
        int64_t jsz, joffv;
        if (!json_u53(jsize, &jsz)) {
            vlm_log_error("%s: tensor '%s' size is not a non-negative integer below 2^53", file, name);
            goto fail;
        }
        if ((size_t)jsz != size) {
            vlm_log_error("%s: %s: size is %lld bytes, but the dtype and shape need %zu", file,
                          describe(dbuf, sizeof dbuf, name, t->dtype, t->n_dims, t->shape), (long long)jsz, size);
            goto fail;
        }
        if (!json_u53(joff, &joffv)) {
            vlm_log_error("%s: tensor '%s' offset is not a non-negative integer below 2^53", file, name);
            goto fail;
        }
        if ((size_t)joffv != next) {
            if (joffv % VLM_QALIGN != 0)
                vlm_log_error("%s: tensor '%s' offset %lld is not a multiple of %d (expected %zu)", file, name,
                              (long long)joffv, VLM_QALIGN, next);
            else if ((size_t)joffv < next)
                vlm_log_error("%s: tensor '%s' offset %lld overlaps the previous tensor (expected %zu)", file, name,
                              (long long)joffv, next);
            else
                vlm_log_error("%s: tensor '%s' offset %lld leaves a gap after the previous tensor (expected %zu)",
                              file, name, (long long)joffv, next);
            goto fail;
        }
        t->size = size;
        tb.off[i] = next;
        tb.by_name[i] = t;
        tb.data_end = next + size; /* both < 2^53: no overflow */
        if (!round_up(tb.data_end, VLM_QALIGN, &next)) VLM_ASSERT(!"unreachable: below 2^54");
    }
    tb.n = n;

    qsort(tb.by_name, (size_t)n, sizeof *tb.by_name, cmp_tensor_name);
    for (int64_t k = 1; k < n; k++) {
        if (!strcmp(tb.by_name[k - 1]->name, tb.by_name[k]->name)) {
            vlm_log_error("%s: tensor name '%s' appears twice", file, tb.by_name[k]->name);
            goto fail;
        }
    }
    if (!check_meta(file, &tb)) goto fail;
    *out = tb;
    return VLM_OK;
fail:
    table_free(&tb);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * reader
 * ------------------------------------------------------------------------------------------------------------- */

struct mbq_file {
    char *path;
    void *map; /* the mapping mbq_file_open made (NULL for mbq_file_parse: the caller owns the buffer) */
    size_t map_size;
    struct mbq_table tb;
};

void mbq_file_close(struct mbq_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    table_free(&f->tb);
    free(f->path);
    free(f);
}

const char *mbq_file_path(const struct mbq_file *f) { return f->path; }

const cJSON *mbq_file_header(const struct mbq_file *f) { return f->tb.root; }

int64_t mbq_file_count(const struct mbq_file *f) { return f->tb.n; }

const struct mbq_tensor *mbq_file_at(const struct mbq_file *f, int64_t i) {
    VLM_ASSERT(i >= 0 && i < f->tb.n);
    return &f->tb.t[i];
}

const struct mbq_tensor *mbq_file_find(const struct mbq_file *f, const char *name) {
    if (!name || f->tb.n == 0) return NULL;
    const struct mbq_tensor key = {.name = name}, *kp = &key;
    const struct mbq_tensor **hit = bsearch(&kp, f->tb.by_name, (size_t)f->tb.n, sizeof *f->tb.by_name,
                                            cmp_tensor_name);
    return hit ? *hit : NULL;
}

/* True when p[a, b) is all zero. */
static bool all_zero(const unsigned char *p, size_t a, size_t b) {
    for (size_t i = a; i < b; i++)
        if (p[i]) return false;
    return true;
}

enum vlm_status mbq_file_parse(const void *buf, size_t len, const char *name, struct mbq_file **out) {
    if (!out || (!buf && len)) return VLM_ERR_ARG;
    if (!name) name = "(buffer)";
    const unsigned char *p = buf;
    enum vlm_status st = VLM_ERR_FORMAT;
    struct mbq_table tb = {0};
    struct mbq_file *f = NULL;

    if (len == 0) {
        vlm_log_error("%s: file is empty, not a .mbq file (convert a checkpoint with vlmconvert)", name);
        goto fail;
    }
    size_t mlen = len < 8 ? len : 8;
    if (memcmp(p, VLM_MBQ_MAGIC, mlen) != 0) {
        if (mlen >= 6 && memcmp(p, VLM_MBQ_MAGIC, 6) == 0)
            vlm_log_error("%s: damaged .mbq magic (\\r\\n altered: was the file transferred in text mode?)", name);
        else
            vlm_log_error("%s: not a .mbq file (no VLMMBQ magic); convert a checkpoint with vlmconvert", name);
        goto fail;
    }
    if (len < MBQ_PREAMBLE) {
        vlm_log_error("%s: truncated: %zu bytes, shorter than the %d-byte .mbq preamble", name, len, MBQ_PREAMBLE);
        goto fail;
    }
    uint32_t version = rd_u32(p + 8);
    if (version != VLM_MBQ_VERSION) {
        vlm_log_error("%s: unsupported .mbq version %u (this build reads version %u)", name, version,
                      VLM_MBQ_VERSION);
        goto fail;
    }
    uint32_t mark = rd_u32(p + 12);
    if (mark != MBQ_ENDIAN_MARK) {
        vlm_log_error("%s: endianness marker is 0x%08x, not 0x%08x%s", name, mark, MBQ_ENDIAN_MARK,
                      mark == 0x04030201u ? " (written by a big-endian writer)" : "");
        goto fail;
    }
    uint64_t hb = rd_u64(p + 16), doff = rd_u64(p + 24);
    if (hb == 0 || hb > VLM_MBQ_MAX_HEADER) {
        vlm_log_error("%s: header_bytes %llu is outside 1..%u", name, (unsigned long long)hb, VLM_MBQ_MAX_HEADER);
        goto fail;
    }
    size_t hend = MBQ_PREAMBLE + (size_t)hb; /* <= 32 + 64 MiB */
    if (hend > len) {
        vlm_log_error("%s: header of %llu bytes runs past the end of the %zu-byte file", name,
                      (unsigned long long)hb, len);
        goto fail;
    }
    if (doff % MBQ_DATA_ALIGN != 0) {
        vlm_log_error("%s: data_offset %llu is not a multiple of %u", name, (unsigned long long)doff, MBQ_DATA_ALIGN);
        goto fail;
    }
    if (doff < hend || doff > len) {
        vlm_log_error("%s: data_offset %llu is %s", name, (unsigned long long)doff,
                      doff < hend ? "inside the preamble or the header" : "past the end of the file");
        goto fail;
    }
    if (!all_zero(p, hend, (size_t)doff)) {
        vlm_log_error("%s: nonzero byte in the padding between the header and data_offset %llu", name,
                      (unsigned long long)doff);
        goto fail;
    }
    if ((st = parse_header(name, p + MBQ_PREAMBLE, (size_t)hb, version, &tb)) != VLM_OK) goto fail;
    st = VLM_ERR_FORMAT;
    size_t data_len = len - (size_t)doff;
    if (tb.data_end != data_len) {
        if (tb.data_end > data_len)
            vlm_log_error("%s: truncated: the tensors need %zu bytes of data, the file has %zu", name, tb.data_end,
                          data_len);
        else
            vlm_log_error("%s: %zu trailing bytes after the last tensor (data ends at %zu, file has %zu)", name,
                          data_len - tb.data_end, (size_t)doff + tb.data_end, len);
        goto fail;
    }
    const unsigned char *data = p + doff;
    for (int64_t i = 0; i + 1 < tb.n; i++) {
        if (!all_zero(data, tb.off[i] + tb.t[i].size, tb.off[i + 1])) {
            vlm_log_error("%s: nonzero byte in the padding after tensor '%s'", name, tb.t[i].name);
            goto fail;
        }
    }
    if ((uintptr_t)data % VLM_QALIGN != 0) { /* the caller's buffer, not the file: mmap is page-aligned */
        vlm_log_error("%s: tensor data at %p is not %d-byte aligned in memory", name, (const void *)data,
                      VLM_QALIGN);
        st = VLM_ERR_ARG;
        goto fail;
    }
    for (int64_t i = 0; i < tb.n; i++) tb.t[i].data = data + tb.off[i];

    f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name))) {
        vlm_log_error("%s: out of memory", name);
        st = VLM_ERR_OOM;
        goto fail;
    }
    f->tb = tb;
    *out = f;
    return VLM_OK;
fail:
    if (f) free(f->path);
    free(f);
    table_free(&tb);
    return st;
}

enum vlm_status mbq_file_open(const char *path, struct mbq_file **out) {
    if (!path || !out) return VLM_ERR_ARG;
    enum vlm_status st = VLM_ERR_IO;
    void *map = NULL;
    size_t size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        vlm_log_error("%s: cannot open: %s", path, strerror(errno));
        return VLM_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        vlm_log_error("%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) { /* a directory opens fine; mmap of it fails with a less helpful message */
        vlm_log_error("%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        vlm_log_error("%s: file of %lld bytes does not fit in the address space", path, (long long)sb.st_size);
        st = VLM_ERR_OOM;
        goto fail;
    }
    size = (size_t)sb.st_size;
    if (size > 0) { /* mmap of 0 bytes is EINVAL; an empty file is rejected by the parser instead */
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            vlm_log_error("%s: mmap of %zu bytes failed: %s", path, size, strerror(errno));
            st = errno == ENOMEM ? VLM_ERR_OOM : VLM_ERR_IO;
            map = NULL;
            goto fail;
        }
    }
    close(fd);
    fd = -1;
    struct mbq_file *f = NULL;
    if ((st = mbq_file_parse(map ? map : "", size, path, &f)) != VLM_OK) goto fail;
    f->map = map;
    f->map_size = size;
    *out = f;
    return VLM_OK;
fail:
    if (map) munmap(map, size);
    if (fd >= 0) close(fd);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * writer
 * ------------------------------------------------------------------------------------------------------------- */

struct mbq_writer {
    char *path;
    char *tmp;         /* "<path>.tmp.XXXXXX" while it exists; NULL once renamed or removed */
    int fd;
    struct mbq_table tb; /* the header as the reader will see it: names, sizes, offsets */
    size_t data_offset;
    size_t *done;      /* bytes of each tensor written so far (== its size once complete) */
    bool failed;       /* an I/O error left the temp file in an unknown state: finish must refuse */
};

static void writer_free(struct mbq_writer *w) {
    if (w->fd >= 0) close(w->fd);
    if (w->tmp) unlink(w->tmp);
    table_free(&w->tb);
    free(w->done);
    free(w->tmp);
    free(w->path);
    free(w);
}

void mbq_writer_abort(struct mbq_writer *w) {
    if (w) writer_free(w);
}

/* Builds the header object: "format" and "version" first, meta's other keys in meta's order, "tensors" last, so
 * equal inputs print equal bytes. NULL on OOM. */
static cJSON *build_header(const cJSON *meta, const struct mbq_tensor_decl *decls, int64_t n, const size_t *sizes) {
    cJSON *root = cJSON_CreateObject(), *arr = NULL;
    if (!root || !cJSON_AddStringToObject(root, "format", MBQ_FORMAT_NAME) ||
        !cJSON_AddNumberToObject(root, "version", VLM_MBQ_VERSION))
        goto fail;
    for (const cJSON *it = meta ? meta->child : NULL; it; it = it->next) {
        if (!it->string || !strcmp(it->string, "format") || !strcmp(it->string, "version") ||
            !strcmp(it->string, "tensors"))
            continue;
        cJSON *copy = cJSON_Duplicate(it, 1);
        if (!copy) goto fail;
        if (!cJSON_AddItemToObject(root, it->string, copy)) {
            cJSON_Delete(copy);
            goto fail;
        }
    }
    if (!(arr = cJSON_AddArrayToObject(root, "tensors"))) goto fail;
    size_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const struct mbq_tensor_decl *d = &decls[i];
        cJSON *e = cJSON_CreateObject(), *shape = NULL;
        if (!e) goto fail;
        if (!cJSON_AddItemToArray(arr, e)) {
            cJSON_Delete(e);
            goto fail;
        }
        if (!cJSON_AddStringToObject(e, "name", d->name) ||
            !cJSON_AddStringToObject(e, "dtype", mbq_dtype_name(d->dtype)) ||
            !(shape = cJSON_AddArrayToObject(e, "shape")))
            goto fail;
        for (int k = 0; k < d->n_dims; k++) {
            cJSON *num = cJSON_CreateNumber((double)d->shape[k]); /* < 2^53: exact */
            if (!num) goto fail;
            if (!cJSON_AddItemToArray(shape, num)) {
                cJSON_Delete(num);
                goto fail;
            }
        }
        if (!cJSON_AddNumberToObject(e, "offset", (double)off) || !cJSON_AddNumberToObject(e, "size", (double)sizes[i]))
            goto fail;
        /* sizes < 2^53 and n < 2^53 entries: the sum cannot overflow size_t, and an offset >= 2^53 is rejected by
         * the header parser that checks this very text */
        off = (off + sizes[i] + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN;
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

enum vlm_status mbq_writer_open(const char *path, const cJSON *meta, const struct mbq_tensor_decl *decls,
                                int64_t n_decls, struct mbq_writer **out) {
    if (!path || !out || n_decls < 0 || (n_decls > 0 && !decls) || (meta && !cJSON_IsObject(meta))) {
        vlm_log_error("%s: mbq_writer_open: invalid arguments", path ? path : "(null)");
        return VLM_ERR_ARG;
    }
    enum vlm_status st = VLM_ERR_FORMAT;
    size_t *sizes = NULL;
    cJSON *root = NULL;
    char *text = NULL;
    unsigned char *head = NULL;
    struct mbq_writer *w = NULL;
    char dbuf[VLM_MBQ_MAX_NAME + 160];

    sizes = vlm_alloc_array(n_decls ? (size_t)n_decls : 1, sizeof *sizes, path);
    if (!sizes) {
        st = VLM_ERR_OOM;
        goto fail;
    }
    /* what the JSON cannot carry is checked here; everything else by the reader's parser on the printed text */
    for (int64_t i = 0; i < n_decls; i++) {
        const struct mbq_tensor_decl *d = &decls[i];
        const char *why;
        if (!d->name) {
            vlm_log_error("%s: tensor %lld has no name", path, (long long)i);
            st = VLM_ERR_ARG;
            goto fail;
        }
        if (d->dtype < 0 || d->dtype > VLM_MBQ_DTYPE_U8) {
            vlm_log_error("%s: tensor '%s' has an unknown dtype %d", path, d->name, d->dtype);
            goto fail;
        }
        if (d->n_dims < 1 || d->n_dims > VLM_MBQ_MAX_DIMS) {
            vlm_log_error("%s: tensor '%s' has rank %d (must be 1..%d)", path, d->name, d->n_dims, VLM_MBQ_MAX_DIMS);
            goto fail;
        }
        if (!tensor_size(d->dtype, d->n_dims, d->shape, &sizes[i], &why)) {
            vlm_log_error("%s: %s: %s", path, describe(dbuf, sizeof dbuf, d->name, d->dtype, d->n_dims, d->shape),
                          why);
            goto fail;
        }
    }
    if (!(root = build_header(meta, decls, n_decls, sizes)) || !(text = cJSON_PrintUnformatted(root))) {
        vlm_log_error("%s: out of memory building the header", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    size_t hb = strlen(text);
    if (hb > VLM_MBQ_MAX_HEADER) {
        vlm_log_error("%s: header of %zu bytes exceeds the %u-byte limit", path, hb, VLM_MBQ_MAX_HEADER);
        goto fail;
    }
    w = calloc(1, sizeof *w);
    if (!w) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    w->fd = -1;
    if ((st = parse_header(path, (const unsigned char *)text, hb, VLM_MBQ_VERSION, &w->tb)) != VLM_OK) goto fail;
    st = VLM_ERR_OOM;
    size_t file_end;
    if (!round_up(MBQ_PREAMBLE + hb, MBQ_DATA_ALIGN, &w->data_offset) ||
        !vlm_size_add(w->data_offset, w->tb.data_end, &file_end)) {
        vlm_log_error("%s: file size overflows", path);
        goto fail;
    }
    if (!(w->path = strdup(path)) || !(w->done = calloc(n_decls ? (size_t)n_decls : 1, sizeof *w->done)) ||
        !(head = calloc(1, w->data_offset))) {
        vlm_log_error("%s: out of memory", path);
        goto fail;
    }
    st = VLM_ERR_IO;
    if ((w->fd = vlm_file_tmp_open(path, &w->tmp)) < 0) goto fail; /* w->tmp stays NULL: nothing to remove */
    memcpy(head, VLM_MBQ_MAGIC, 8);
    wr_u32(head + 8, VLM_MBQ_VERSION);
    wr_u32(head + 12, MBQ_ENDIAN_MARK);
    wr_u64(head + 16, hb);
    wr_u64(head + 24, w->data_offset);
    memcpy(head + MBQ_PREAMBLE, text, hb); /* the rest of head is the zero padding up to data_offset */
    if (!vlm_file_pwrite_all(w->fd, head, w->data_offset, 0)) {
        vlm_log_error("%s: writing the header to %s failed: %s", path, w->tmp, strerror(errno));
        goto fail;
    }
    /* the final size up front: padding between tensors is never written and reads back as zero */
    if (ftruncate(w->fd, (off_t)file_end) != 0) {
        vlm_log_error("%s: cannot size %s to %zu bytes: %s", path, w->tmp, file_end, strerror(errno));
        goto fail;
    }
    free(head);
    free(text);
    cJSON_Delete(root);
    free(sizes);
    *out = w;
    return VLM_OK;
fail:
    if (w) writer_free(w);
    free(head);
    free(text);
    cJSON_Delete(root);
    free(sizes);
    return st;
}

/* Writes tensor i's data: all of it (whole), or its next size bytes after those already written. */
static enum vlm_status write_tensor(struct mbq_writer *w, int64_t i, const void *data, size_t size, bool whole) {
    if (!w) return VLM_ERR_ARG;
    char dbuf[VLM_MBQ_MAX_NAME + 160];
    if (i < 0 || i >= w->tb.n) {
        vlm_log_error("%s: tensor index %lld is outside 0..%lld", w->path, (long long)i, (long long)w->tb.n - 1);
        return VLM_ERR_ARG;
    }
    const struct mbq_tensor *t = &w->tb.t[i];
    const char *desc = describe(dbuf, sizeof dbuf, t->name, t->dtype, t->n_dims, t->shape);
    const size_t pos = w->done[i];
    if (pos == t->size || (whole && pos > 0)) {
        vlm_log_error("%s: %s is written twice", w->path, desc);
        return VLM_ERR_ARG;
    }
    if ((whole ? size != t->size : size > t->size - pos) || (!data && size)) {
        if (whole)
            vlm_log_error("%s: %s: %zu bytes given, the declaration needs %zu", w->path, desc, data ? size : 0,
                          t->size);
        else
            vlm_log_error("%s: %s: a part of %zu bytes at byte %zu passes its end (%zu bytes)", w->path, desc,
                          data ? size : 0, pos, t->size);
        return VLM_ERR_ARG;
    }
    if (!vlm_file_pwrite_all(w->fd, data, size, w->data_offset + w->tb.off[i] + pos)) {
        vlm_log_error("%s: writing %s to %s failed: %s", w->path, desc, w->tmp, strerror(errno));
        w->failed = true;
        return VLM_ERR_IO;
    }
    w->done[i] = pos + size;
    return VLM_OK;
}

enum vlm_status mbq_writer_write(struct mbq_writer *w, int64_t i, const void *data, size_t size) {
    return write_tensor(w, i, data, size, true);
}

enum vlm_status mbq_writer_write_part(struct mbq_writer *w, int64_t i, const void *data, size_t size) {
    return write_tensor(w, i, data, size, false);
}

enum vlm_status mbq_writer_finish(struct mbq_writer *w) {
    if (!w) return VLM_ERR_ARG;
    enum vlm_status st = VLM_ERR_IO;
    if (w->failed) {
        vlm_log_error("%s: an earlier write failed; the file is not finished", w->path);
        goto fail;
    }
    for (int64_t i = 0; i < w->tb.n; i++) {
        if (w->done[i] != w->tb.t[i].size) {
            if (w->done[i] == 0)
                vlm_log_error("%s: tensor '%s' was declared but never written", w->path, w->tb.t[i].name);
            else
                vlm_log_error("%s: tensor '%s' is incomplete: %zu of its %zu bytes written", w->path,
                              w->tb.t[i].name, w->done[i], w->tb.t[i].size);
            st = VLM_ERR_ARG;
            goto fail;
        }
    }
    int fd = w->fd;
    w->fd = -1; /* closed by vlm_file_tmp_publish whatever happens */
    if ((st = vlm_file_tmp_publish(fd, w->tmp, w->path)) != VLM_OK) goto fail;
    free(w->tmp);
    w->tmp = NULL;
    writer_free(w);
    return VLM_OK;
fail:
    writer_free(w);
    return st;
}
