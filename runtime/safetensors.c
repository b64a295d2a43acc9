/* safetensors.c — strict, mmap-based reader of HF safetensors checkpoints. See safetensors.h.
 *
 * Promise: no pointer into a file is formed before every rule of shared/spec/targets.md §6.1 has been checked
 * for that file: header length and limit, UTF-8, JSON object with unique keys, known dtypes, checked byte sizes,
 * offsets contiguous from 0 with no gap or overlap, data ending exactly at the end of the file. Sharded checkpoints
 * add: safe shard names, every tensor listed in the index under its real shard, no name twice across shards.
 * Tensor data is never read in place as float: st_tensor_to_f32 copies bytes, so file alignment does not matter.
 *
 * Sections: dtypes and scalar conversion; header pre-scan; one file (parse + validate); checkpoint (single file,
 * index + shards); lookup. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "util.h"

_Static_assert(sizeof(size_t) >= 8, "the reader maps multi-GB files and keeps offsets up to 2^53 in size_t");

#define ST_MAX_INDEX_BYTES (64u << 20) /* model.safetensors.index.json of a 72B model is ~100 kB */
#define ST_MAX_SHARDS 4096
#define ST_MAX_EXACT_INT 9007199254740992.0 /* 2^53: largest integer every JSON double holds exactly */

/* ---------------------------------------------------------------------------------------------------------------
 * dtypes and scalar conversion
 * ------------------------------------------------------------------------------------------------------------- */

/* Every dtype of the safetensors format (huggingface/safetensors `Dtype`), with its width in bits. Only the
 * first three are computed with; the rest are accepted as VLM_DTYPE_OTHER so that a valid file still opens. */
static const struct {
    const char *name;
    enum vlm_dtype dtype;
    int bits;
} k_dtypes[] = {
    {"F32", VLM_DTYPE_F32, 32},      {"F16", VLM_DTYPE_F16, 16},         {"BF16", VLM_DTYPE_BF16, 16},
    {"BOOL", VLM_DTYPE_OTHER, 8},    {"U8", VLM_DTYPE_OTHER, 8},         {"I8", VLM_DTYPE_OTHER, 8},
    {"I16", VLM_DTYPE_OTHER, 16},    {"U16", VLM_DTYPE_OTHER, 16},       {"I32", VLM_DTYPE_OTHER, 32},
    {"U32", VLM_DTYPE_OTHER, 32},    {"I64", VLM_DTYPE_OTHER, 64},       {"U64", VLM_DTYPE_OTHER, 64},
    {"F64", VLM_DTYPE_OTHER, 64},    {"C64", VLM_DTYPE_OTHER, 64},       {"F8_E4M3", VLM_DTYPE_OTHER, 8},
    {"F8_E5M2", VLM_DTYPE_OTHER, 8}, {"F8_E8M0", VLM_DTYPE_OTHER, 8},    {"F6_E2M3", VLM_DTYPE_OTHER, 6},
    {"F6_E3M2", VLM_DTYPE_OTHER, 6}, {"F4", VLM_DTYPE_OTHER, 4},
};

const char *vlm_dtype_name(enum vlm_dtype t) {
    switch (t) {
    case VLM_DTYPE_F32: return "F32";
    case VLM_DTYPE_F16: return "F16";
    case VLM_DTYPE_BF16: return "BF16";
    case VLM_DTYPE_OTHER: return "other";
    }
    return "?";
}

float vlm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, or NaN with its payload kept */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign; /* +-0 */
    } else {
        /* subnormal: value = man * 2^-24; normalise the mantissa into an f32 normal number (exact) */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float vlm_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void st_tensor_to_f32(const struct st_tensor *t, float *dst) {
    const unsigned char *src = t->data;
    size_t n = (size_t)t->n_elements;
    switch (t->dtype) {
    case VLM_DTYPE_F32:
        if (n) memcpy(dst, src, n * sizeof(float)); /* safetensors is little-endian, like every host we build for */
        return;
    case VLM_DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = vlm_f16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        return;
    case VLM_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = vlm_bf16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        return;
    case VLM_DTYPE_OTHER: break;
    }
    VLM_ASSERT(!"st_tensor_to_f32 called on a non-float tensor");
}

void st_tensor_evict(const struct st_tensor *t) {
    const long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !t->size_bytes) return;
    /* only pages wholly inside the tensor: a neighbour's bytes on a shared page stay mapped */
    const uintptr_t b = (uintptr_t)t->data, e = b + t->size_bytes, p = (uintptr_t)page;
    const uintptr_t b_up = (b + p - 1) / p * p, e_down = e / p * p;
    /* the mapping is read-only and private, so dropping its pages loses nothing: a later access refaults them
     * from the file */
    if (e_down > b_up) (void)madvise((void *)b_up, e_down - b_up, MADV_DONTNEED);
}

/* ---------------------------------------------------------------------------------------------------------------
 * checkpoint object
 * ------------------------------------------------------------------------------------------------------------- */

struct st_file {
    char *path;
    void *map; /* read-only mapping of the whole file (NULL until validated) */
    size_t map_size;
};

struct st_checkpoint {
    struct st_file *files;
    int n_files;
    struct st_tensor *tensors; /* all shards, file order then offset order */
    int64_t n_tensors;
    int64_t *by_name;          /* indices into tensors, sorted by name, for lookup */
    char *source;              /* model.safetensors or the index file: what was opened, for messages */
};

void st_checkpoint_close(struct st_checkpoint *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_files; i++) {
        if (ck->files[i].map) munmap(ck->files[i].map, ck->files[i].map_size);
        free(ck->files[i].path);
    }
    free(ck->files);
    free(ck->tensors);
    free(ck->by_name);
    free(ck->source);
    free(ck);
}

const char *st_checkpoint_source_path(const struct st_checkpoint *ck) { return ck->source; }

int64_t st_checkpoint_count(const struct st_checkpoint *ck) { return ck->n_tensors; }

int st_checkpoint_n_files(const struct st_checkpoint *ck) { return ck->n_files; }

const struct st_tensor *st_checkpoint_at(const struct st_checkpoint *ck, int64_t i) {
    VLM_ASSERT(i >= 0 && i < ck->n_tensors);
    return &ck->tensors[i];
}

const char *st_checkpoint_file_path(const struct st_checkpoint *ck, const struct st_tensor *t) {
    VLM_ASSERT(t->file_index >= 0 && t->file_index < ck->n_files);
    return ck->files[t->file_index].path;
}

const struct st_tensor *st_checkpoint_find(const struct st_checkpoint *ck, const char *name) {
    int64_t lo = 0, hi = ck->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->tensors[ck->by_name[mid]].name, name);
        if (c == 0) return &ck->tensors[ck->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------------
 * JSON helpers (shared by header and index parsing)
 * ------------------------------------------------------------------------------------------------------------- */

static int cmp_cstr_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a key that occurs twice among obj's direct children (cJSON keeps both; its lookups return the first).
 * Returns the duplicated key or NULL. *oom set when the scratch allocation failed. */
static const char *json_dup_key(const cJSON *obj, bool *oom) {
    size_t n = 0;
    *oom = false;
    for (const cJSON *it = obj->child; it; it = it->next) n++;
    if (n < 2) return NULL;
    const char **keys = malloc(n * sizeof *keys);
    if (!keys) {
        *oom = true;
        return NULL;
    }
    size_t k = 0;
    for (const cJSON *it = obj->child; it; it = it->next) keys[k++] = it->string ? it->string : "";
    qsort(keys, n, sizeof *keys, cmp_cstr_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (!strcmp(keys[i - 1], keys[i])) dup = keys[i];
    free(keys);
    return dup;
}

/* A JSON number that is an integer in [0, 2^53] (exact in a double). */
static bool json_u53(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_EXACT_INT) || d != floor(d)) return false;
    *out = (int64_t)d;
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * one file
 * ------------------------------------------------------------------------------------------------------------- */

static int cmp_by_offset(const void *a, const void *b) {
    const struct st_tensor *x = a, *y = b;
    if (x->data_offset != y->data_offset) return x->data_offset < y->data_offset ? -1 : 1;
    return x->size_bytes < y->size_bytes ? -1 : x->size_bytes > y->size_bytes;
}

/* Parses and validates the header of one mapped file; on success appends its tensors to *tensors (growing it).
 * The file is already mapped; path is for messages. */
static enum vlm_status parse_header(const char *path, const unsigned char *map, size_t file_size, int file_index,
                                    struct st_tensor **tensors, int64_t *n_tensors) {
    enum vlm_status st = VLM_ERR_FORMAT;
    cJSON *root = NULL;
    struct st_tensor *tab = NULL;
    int64_t n = 0;
    char pbuf[ST_MAX_NAME + 1]; /* printable copies of untrusted strings for messages */

    if (file_size < 8) {
        vlm_log_error("%s: file is %zu bytes, too short for the 8-byte header length", path, file_size);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | map[i];
    if (hlen > ST_MAX_HEADER_BYTES) {
        vlm_log_error("%s: header length %llu exceeds the %llu-byte limit", path, (unsigned long long)hlen,
                      (unsigned long long)ST_MAX_HEADER_BYTES);
        goto fail;
    }
    size_t data_start;
    if (!vlm_size_add(8, (size_t)hlen, &data_start) || data_start > file_size) {
        vlm_log_error("%s: header length %llu runs past the end of the %zu-byte file", path,
                      (unsigned long long)hlen, file_size);
        goto fail;
    }
    const unsigned char *h = map + 8;
    if (hlen == 0 || h[0] != '{') {
        vlm_log_error("%s: header does not start with '{'", path);
        goto fail;
    }
    size_t where = 0;
    const char *why = vlm_json_prescan(h, (size_t)hlen, &where);
    if (why) {
        vlm_log_error("%s: header has %s at byte %zu", path, why, where + 8);
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts((const char *)h, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = (end && end >= (const char *)h && end <= (const char *)h + hlen) ? (size_t)(end - (const char *)h)
                                                                                    : 0;
        vlm_log_error("%s: header is not valid JSON (near byte %zu)", path, at + 8);
        goto fail;
    }
    for (const char *p = end; p < (const char *)h + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            vlm_log_error("%s: header has bytes after the JSON object (byte %zu)", path,
                          (size_t)(p - (const char *)h) + 8);
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        vlm_log_error("%s: header is not a JSON object", path);
        goto fail;
    }
    bool oom;
    const char *dup = json_dup_key(root, &oom);
    if (oom) {
        vlm_log_error("%s: out of memory checking header keys", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if (dup) {
        vlm_log_error("%s: header has the key '%s' twice", path, vlm_printable(dup, pbuf, sizeof pbuf));
        goto fail;
    }

    int64_t count = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__") != 0) count++;
    tab = vlm_calloc_array(count ? (size_t)count : 1, sizeof *tab, path);
    if (!tab) {
        st = VLM_ERR_OOM;
        goto fail;
    }

    for (const cJSON *it = root->child; it; it = it->next) {
        const char *name = it->string;
        if (!strcmp(name, "__metadata__")) {
            if (!cJSON_IsObject(it)) {
                vlm_log_error("%s: __metadata__ is not an object", path);
                goto fail;
            }
            if ((dup = json_dup_key(it, &oom)) != NULL || oom) {
                if (oom) vlm_log_error("%s: out of memory checking __metadata__ keys", path);
                else vlm_log_error("%s: __metadata__ has the key '%s' twice", path, vlm_printable(dup, pbuf, sizeof pbuf));
                st = oom ? VLM_ERR_OOM : VLM_ERR_FORMAT;
                goto fail;
            }
            for (const cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    vlm_log_error("%s: __metadata__ value of '%s' is not a string", path,
                                  vlm_printable(m->string, pbuf, sizeof pbuf));
                    goto fail;
                }
            }
            continue;
        }
        size_t name_len = strlen(name);
        if (name_len == 0 || name_len > ST_MAX_NAME) {
            vlm_log_error("%s: tensor name of %zu bytes (must be 1..%d)", path, name_len, ST_MAX_NAME);
            goto fail;
        }
        if (vlm_has_control(name)) { /* escaped control characters ("\n") would break one-line messages */
            vlm_log_error("%s: tensor name '%s' contains a control character", path,
                          vlm_printable(name, pbuf, sizeof pbuf));
            goto fail;
        }
        if (!cJSON_IsObject(it)) {
            vlm_log_error("%s: tensor '%s' is not a JSON object", path, name);
            goto fail;
        }
        if ((dup = json_dup_key(it, &oom)) != NULL || oom) {
            if (oom) vlm_log_error("%s: out of memory checking keys of tensor '%s'", path, name);
            else vlm_log_error("%s: tensor '%s' has the field '%s' twice", path, name, vlm_printable(dup, pbuf, 64));
            st = oom ? VLM_ERR_OOM : VLM_ERR_FORMAT;
            goto fail;
        }
        const cJSON *jdt = NULL, *jshape = NULL, *joff = NULL;
        for (const cJSON *f = it->child; f; f = f->next) {
            if (!strcmp(f->string, "dtype")) jdt = f;
            else if (!strcmp(f->string, "shape")) jshape = f;
            else if (!strcmp(f->string, "data_offsets")) joff = f;
            else {
                vlm_log_error("%s: tensor '%s' has an unknown field '%s'", path, name, vlm_printable(f->string, pbuf, 64));
                goto fail;
            }
        }
        if (!jdt || !jshape || !joff) {
            vlm_log_error("%s: tensor '%s' lacks '%s'", path, name,
                          !jdt ? "dtype" : !jshape ? "shape" : "data_offsets");
            goto fail;
        }
        struct st_tensor *t = &tab[n];
        memcpy(t->name, name, name_len + 1);
        t->file_index = file_index;

        int bits = 0;
        if (cJSON_IsString(jdt)) {
            for (size_t k = 0; k < sizeof k_dtypes / sizeof k_dtypes[0]; k++) {
                if (!strcmp(jdt->valuestring, k_dtypes[k].name)) {
                    t->dtype = k_dtypes[k].dtype;
                    t->dtype_name = k_dtypes[k].name;
                    bits = k_dtypes[k].bits;
                    break;
                }
            }
        }
        if (!bits) {
            vlm_log_error("%s: tensor '%s' has an unknown dtype %s%s%s", path, name, cJSON_IsString(jdt) ? "'" : "",
                          cJSON_IsString(jdt) ? vlm_printable(jdt->valuestring, pbuf, 32) : "(not a string)",
                          cJSON_IsString(jdt) ? "'" : "");
            goto fail;
        }

        if (!cJSON_IsArray(jshape)) {
            vlm_log_error("%s: tensor '%s' shape is not an array", path, name);
            goto fail;
        }
        int rank = cJSON_GetArraySize(jshape);
        if (rank > ST_MAX_DIMS) {
            vlm_log_error("%s: tensor '%s' has rank %d, more than %d", path, name, rank, ST_MAX_DIMS);
            goto fail;
        }
        t->n_dims = rank;
        int d = 0;
        for (const cJSON *e = jshape->child; e; e = e->next, d++) {
            if (!json_u53(e, &t->shape[d])) {
                vlm_log_error("%s: tensor '%s' shape[%d] is not a non-negative integer below 2^53", path, name, d);
                goto fail;
            }
        }
        /* byte size = prod(shape) * bits / 8, all checked */
        int64_t elems;
        uint64_t total_bits;
        if (!vlm_dims_product(t->shape, rank, &elems) ||
            __builtin_mul_overflow((uint64_t)elems, (uint64_t)bits, &total_bits)) {
            vlm_log_error("%s: tensor '%s' size (product of its shape x %d bits) overflows 64 bits", path, name,
                          bits);
            goto fail;
        }
        if (total_bits % 8 != 0) {
            vlm_log_error("%s: tensor '%s' of %lld %s elements is not a whole number of bytes", path, name,
                          (long long)elems, t->dtype_name);
            goto fail;
        }
        t->n_elements = elems;

        if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2) {
            vlm_log_error("%s: tensor '%s' data_offsets is not a [begin, end] pair", path, name);
            goto fail;
        }
        int64_t begin, endo;
        if (!json_u53(joff->child, &begin) || !json_u53(joff->child->next, &endo)) {
            vlm_log_error("%s: tensor '%s' data_offsets are not non-negative integers below 2^53", path, name);
            goto fail;
        }
        if (begin > endo) {
            vlm_log_error("%s: tensor '%s' data_offsets [%lld, %lld] have begin > end", path, name,
                          (long long)begin, (long long)endo);
            goto fail;
        }
        if ((uint64_t)(endo - begin) != total_bits / 8) {
            vlm_log_error("%s: tensor '%s' data_offsets [%lld, %lld] span %lld bytes, but %s shape needs %llu", path,
                          name, (long long)begin, (long long)endo, (long long)(endo - begin), t->dtype_name,
                          (unsigned long long)(total_bits / 8));
            goto fail;
        }
        t->size_bytes = (size_t)(endo - begin);
        t->data_offset = (uint64_t)begin; /* the pointer is formed only after the whole file is validated */
        n++;
    }

    /* contiguity: sorted by begin, each begins where the previous ended, starting at 0, ending at EOF */
    qsort(tab, (size_t)n, sizeof *tab, cmp_by_offset);
    size_t pos = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t b = (size_t)tab[i].data_offset, e = b + tab[i].size_bytes; /* both < 2^54: no overflow */
        if (b < pos) {
            vlm_log_error("%s: tensor '%s' data_offsets [%zu, %zu] overlap the previous tensor ending at %zu", path,
                          tab[i].name, b, e, pos);
            goto fail;
        }
        if (b > pos) {
            if (i == 0) vlm_log_error("%s: first tensor '%s' begins at %zu, not 0", path, tab[i].name, b);
            else vlm_log_error("%s: gap of %zu bytes before tensor '%s' (data_offsets [%zu, %zu], previous ends at "
                               "%zu)", path, b - pos, tab[i].name, b, e, pos);
            goto fail;
        }
        pos = e;
    }
    size_t data_bytes = file_size - data_start;
    if (pos != data_bytes) {
        if (pos < data_bytes)
            vlm_log_error("%s: %zu trailing bytes after the last tensor (data ends at %zu, file has %zu)", path,
                          data_bytes - pos, data_start + pos, file_size);
        else
            vlm_log_error("%s: truncated: tensor data needs %zu bytes after the header, file has %zu", path, pos,
                          data_bytes);
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) tab[i].data = map + data_start + (size_t)tab[i].data_offset;

    /* append */
    if (n) {
        size_t total;
        if (!vlm_size_add((size_t)*n_tensors, (size_t)n, &total)) {
            vlm_log_error("%s: too many tensors", path);
            goto fail;
        }
        size_t bytes;
        if (!vlm_size_mul(total, sizeof **tensors, &bytes)) {
            vlm_log_error("%s: tensor table size overflows", path);
            st = VLM_ERR_OOM;
            goto fail;
        }
        struct st_tensor *grown = realloc(*tensors, bytes);
        if (!grown) {
            vlm_log_error("%s: out of memory for a table of %zu tensors", path, total);
            st = VLM_ERR_OOM;
            goto fail;
        }
        memcpy(grown + *n_tensors, tab, (size_t)n * sizeof *tab);
        *tensors = grown;
        *n_tensors = (int64_t)total;
    }
    free(tab);
    cJSON_Delete(root);
    return VLM_OK;
fail:
    free(tab);
    cJSON_Delete(root);
    return st;
}

/* Maps path read-only and validates it as file number file_index of ck (ck->files has room). */
static enum vlm_status add_file(struct st_checkpoint *ck, const char *path) {
    enum vlm_status st = VLM_ERR_IO;
    struct st_file *f = &ck->files[ck->n_files];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        vlm_log_error("%s: cannot open: %s", path, strerror(errno));
        return VLM_ERR_IO;
    }
    f->path = strdup(path);
    f->map = NULL;
    f->map_size = 0;
    if (!f->path) {
        vlm_log_error("%s: out of memory", path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        vlm_log_error("%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        vlm_log_error("%s: not a regular file", path);
        goto fail;
    }
    if (sb.st_size < 8) {
        vlm_log_error("%s: file is %lld bytes, too short for the 8-byte header length", path, (long long)sb.st_size);
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        vlm_log_error("%s: file of %lld bytes does not fit in the address space", path, (long long)sb.st_size);
        st = VLM_ERR_OOM;
        goto fail;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        vlm_log_error("%s: mmap of %lld bytes failed: %s", path, (long long)sb.st_size, strerror(errno));
        st = errno == ENOMEM ? VLM_ERR_OOM : VLM_ERR_IO;
        goto fail;
    }
    f->map = map;
    f->map_size = (size_t)sb.st_size;
    close(fd);
    fd = -1;
    ck->n_files++; /* from here the close path owns the mapping */
    return parse_header(f->path, map, f->map_size, ck->n_files - 1, &ck->tensors, &ck->n_tensors);
fail:
    if (fd >= 0) close(fd);
    free(f->path);
    f->path = NULL;
    return st;
}

/* Sorts a name index and rejects a name that occurs twice (across shards). */
static enum vlm_status build_name_index(struct st_checkpoint *ck) {
    int64_t *idx = vlm_alloc_array(ck->n_tensors ? (size_t)ck->n_tensors : 1, sizeof *idx, "tensor name index");
    if (!idx) return VLM_ERR_OOM;
    for (int64_t i = 0; i < ck->n_tensors; i++) idx[i] = i;
    /* bottom-up merge sort of indices: C11 qsort has no context pointer and we keep no global state */
    int64_t *tmp = vlm_alloc_array(ck->n_tensors ? (size_t)ck->n_tensors : 1, sizeof *tmp, "tensor name index");
    if (!tmp) {
        free(idx);
        return VLM_ERR_OOM;
    }
    const struct st_tensor *t = ck->tensors;
    for (int64_t w = 1; w < ck->n_tensors; w *= 2) {
        for (int64_t lo = 0; lo < ck->n_tensors; lo += 2 * w) {
            int64_t mid = lo + w < ck->n_tensors ? lo + w : ck->n_tensors;
            int64_t hi = lo + 2 * w < ck->n_tensors ? lo + 2 * w : ck->n_tensors;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = strcmp(t[idx[i]].name, t[idx[j]].name) <= 0 ? idx[i++] : idx[j++];
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
        }
        int64_t *sw = idx;
        idx = tmp;
        tmp = sw;
    }
    free(tmp);
    for (int64_t i = 1; i < ck->n_tensors; i++) {
        if (!strcmp(t[idx[i - 1]].name, t[idx[i]].name)) {
            vlm_log_error("%s: tensor '%s' also appears in %s", ck->files[t[idx[i]].file_index].path, t[idx[i]].name,
                          ck->files[t[idx[i - 1]].file_index].path);
            free(idx);
            return VLM_ERR_FORMAT;
        }
    }
    ck->by_name = idx;
    return VLM_OK;
}

static struct st_checkpoint *checkpoint_new(int n_files_cap) {
    struct st_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) return NULL;
    ck->files = calloc((size_t)n_files_cap, sizeof *ck->files);
    if (!ck->files) {
        free(ck);
        return NULL;
    }
    return ck;
}

enum vlm_status st_file_open(const char *path, struct st_checkpoint **out) {
    if (!path || !out) return VLM_ERR_ARG;
    enum vlm_status st;
    struct st_checkpoint *ck = checkpoint_new(1);
    if (!ck || !(ck->source = strdup(path))) {
        st_checkpoint_close(ck);
        vlm_log_error("%s: out of memory", path);
        return VLM_ERR_OOM;
    }
    if ((st = add_file(ck, path)) != VLM_OK) goto fail;
    if ((st = build_name_index(ck)) != VLM_OK) goto fail;
    *out = ck;
    return VLM_OK;
fail:
    st_checkpoint_close(ck);
    return st;
}

/* ---------------------------------------------------------------------------------------------------------------
 * sharded checkpoint: model.safetensors.index.json
 * ------------------------------------------------------------------------------------------------------------- */

static bool shard_name_ok(const char *s) {
    return s[0] != '\0' && strlen(s) <= 255 && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") &&
           !vlm_has_control(s);
}

static enum vlm_status open_sharded(const char *dir, const char *index_path, struct st_checkpoint **out) {
    enum vlm_status st = VLM_ERR_FORMAT;
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    const char **shards = NULL;
    struct st_checkpoint *ck = NULL;
    char path[4096], pbuf[ST_MAX_NAME + 1], sbuf[64];

    if ((st = vlm_file_read_all(index_path, ST_MAX_INDEX_BYTES, &text, &len)) != VLM_OK) return st;
    st = VLM_ERR_FORMAT;
    size_t where = 0;
    const char *why = vlm_json_prescan((const unsigned char *)text, len, &where);
    if (why) {
        vlm_log_error("%s: has %s at byte %zu", index_path, why, where);
        goto fail;
    }
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        vlm_log_error("%s: not a valid JSON object", index_path);
        goto fail;
    }
    bool oom;
    const char *dup = json_dup_key(root, &oom);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!oom && !dup && cJSON_IsObject(wm)) dup = json_dup_key(wm, &oom);
    if (oom) {
        vlm_log_error("%s: out of memory checking keys", index_path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if (dup) {
        vlm_log_error("%s: has the key '%s' twice", index_path, vlm_printable(dup, pbuf, sizeof pbuf));
        goto fail;
    }
    if (!cJSON_IsObject(wm)) {
        vlm_log_error("%s: no \"weight_map\" object", index_path);
        goto fail;
    }

    /* distinct shard names, in order of first appearance */
    int n_map = cJSON_GetArraySize(wm);
    shards = calloc(n_map > 0 ? (size_t)n_map : 1, sizeof *shards);
    if (!shards) {
        vlm_log_error("%s: out of memory", index_path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    int n_shards = 0;
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            vlm_log_error("%s: weight_map value of '%s' is not a string", index_path,
                          vlm_printable(e->string, pbuf, sizeof pbuf));
            goto fail;
        }
        const char *s = e->valuestring;
        if (!shard_name_ok(s)) {
            vlm_log_error("%s: shard name '%s' of tensor '%s' is not a plain file name", index_path,
                          vlm_printable(s, sbuf, sizeof sbuf), vlm_printable(e->string, pbuf, sizeof pbuf));
            goto fail;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], s) != 0) k++;
        if (k == n_shards) {
            if (n_shards == ST_MAX_SHARDS) {
                vlm_log_error("%s: more than %d shards", index_path, ST_MAX_SHARDS);
                goto fail;
            }
            shards[n_shards++] = s;
        }
    }
    if (n_shards == 0) {
        vlm_log_error("%s: weight_map is empty", index_path);
        goto fail;
    }
    ck = checkpoint_new(n_shards);
    if (!ck || !(ck->source = strdup(index_path))) {
        vlm_log_error("%s: out of memory", index_path);
        st = VLM_ERR_OOM;
        goto fail;
    }
    for (int k = 0; k < n_shards; k++) {
        if (!vlm_path_join(path, sizeof path, dir, shards[k])) {
            vlm_log_error("%s: path of shard '%s' is too long", index_path, shards[k]);
            st = VLM_ERR_ARG;
            goto fail;
        }
        if ((st = add_file(ck, path)) != VLM_OK) goto fail; /* a missing shard is VLM_ERR_IO */
    }
    if ((st = build_name_index(ck)) != VLM_OK) goto fail;
    st = VLM_ERR_FORMAT;
    /* every tensor of every shard is mapped to that shard ... */
    for (int64_t i = 0; i < ck->n_tensors; i++) {
        const struct st_tensor *t = &ck->tensors[i];
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(wm, t->name);
        if (!e) {
            vlm_log_error("%s: tensor '%s' of %s is not in the weight_map", index_path, t->name,
                          ck->files[t->file_index].path);
            goto fail;
        }
        if (strcmp(e->valuestring, shards[t->file_index]) != 0) {
            vlm_log_error("%s: weight_map puts tensor '%s' in %s, but it is in %s", index_path, t->name,
                          e->valuestring, shards[t->file_index]);
            goto fail;
        }
    }
    /* ... and every name of the map exists */
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!st_checkpoint_find(ck, e->string)) {
            vlm_log_error("%s: weight_map names tensor '%s' but %s does not hold it", index_path,
                          vlm_printable(e->string, pbuf, sizeof pbuf), e->valuestring);
            goto fail;
        }
    }
    free(shards);
    cJSON_Delete(root);
    free(text);
    *out = ck;
    return VLM_OK;
fail:
    st_checkpoint_close(ck);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return st;
}

enum vlm_status st_checkpoint_open(const char *dir, struct st_checkpoint **out) {
    if (!dir || !out) return VLM_ERR_ARG;
    char single[4096], index[4096];
    if (!vlm_path_join(single, sizeof single, dir, "model.safetensors") ||
        !vlm_path_join(index, sizeof index, dir, "model.safetensors.index.json")) {
        vlm_log_error("%s: directory path is too long", dir);
        return VLM_ERR_ARG;
    }
    struct stat sb;
    if (stat(single, &sb) == 0) return st_file_open(single, out);
    if (stat(index, &sb) == 0) return open_sharded(dir, index, out);
    vlm_log_error("%s: neither model.safetensors nor model.safetensors.index.json exists", dir);
    return VLM_ERR_IO;
}
