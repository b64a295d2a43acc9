/* golden.c — see golden.h. Bounds-checks every record against the file size. */
#include "golden.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

static int rd(const uint8_t *b, size_t len, size_t *off, void *dst, size_t n) {
    if (n > len - *off) return -1;
    memcpy(dst, b + *off, n);
    *off += n;
    return 0;
}

int golden_load(const char *rel_path, struct golden_file *out) {
    memset(out, 0, sizeof *out);
    const char *path = test_path(rel_path);
    FILE *f = fopen(path, "rb");
    if (!f) {
        FAIL("golden file %s missing (regenerate with tools/make_fixtures.py)", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
    if (!b || sz < 12 || fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        free(b);
        FAIL("golden file %s unreadable or too short", path);
        return -1;
    }
    fclose(f);
    size_t len = (size_t)sz, off = 0;
    uint32_t version, n_rec;
    if (memcmp(b, "VLMG", 4) != 0) goto bad;
    off = 4;
    if (rd(b, len, &off, &version, 4) || version != 1 || rd(b, len, &off, &n_rec, 4) || n_rec > 64) goto bad;
    for (uint32_t r = 0; r < n_rec; r++) {
        struct golden_tensor *t = &out->t[r];
        uint32_t name_len, dtype, n_dims;
        if (rd(b, len, &off, &name_len, 4) || name_len >= sizeof t->name) goto bad;
        if (rd(b, len, &off, t->name, name_len)) goto bad;
        t->name[name_len] = 0;
        if (rd(b, len, &off, &dtype, 4) || dtype > 3 || rd(b, len, &off, &n_dims, 4) || n_dims > 8) goto bad;
        t->dtype = (enum golden_dtype)dtype;
        t->n_dims = (int)n_dims;
        int64_t n = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            if (rd(b, len, &off, &t->shape[d], 8) || t->shape[d] < 0 || t->shape[d] > (1ll << 32)) goto bad;
            n *= t->shape[d];
        }
        size_t esz = dtype == GOLDEN_U8 ? 1 : dtype == GOLDEN_I64 ? 8 : 4;
        if (n > (int64_t)((len - off) / esz)) goto bad;
        t->n = n;
        /* records follow names of any length, so copy each into its own (malloc-aligned) block */
        void *copy = malloc((size_t)n * esz + 1);
        if (!copy) goto bad;
        memcpy(copy, b + off, (size_t)n * esz);
        t->data = copy;
        out->n = (int)r + 1;
        off += (size_t)n * esz;
    }
    if (off != len) goto bad;
    free(b);
    return 0;
bad:
    free(b);
    golden_free(out);
    FAIL("golden file %s is malformed", path);
    return -1;
}

const struct golden_tensor *golden_get(const struct golden_file *g, const char *name, enum golden_dtype dtype) {
    for (int i = 0; i < g->n; i++) {
        if (strcmp(g->t[i].name, name) == 0) {
            if (g->t[i].dtype != dtype) {
                FAIL("golden record %s has dtype %d, want %d", name, (int)g->t[i].dtype, (int)dtype);
                return NULL;
            }
            return &g->t[i];
        }
    }
    FAIL("golden record %s missing", name);
    return NULL;
}

void golden_free(struct golden_file *g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++) free((void *)g->t[i].data);
    g->n = 0;
}
