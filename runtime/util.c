/* util.c — see util.h. */
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *vlm_status_str(enum vlm_status s) {
    switch (s) {
    case VLM_OK: return "ok";
    case VLM_ERR_IO: return "I/O error";
    case VLM_ERR_FORMAT: return "format error";
    case VLM_ERR_OOM: return "out of memory";
    case VLM_ERR_UNSUPPORTED: return "unsupported";
    case VLM_ERR_NO_DEVICE: return "no device";
    case VLM_ERR_CUDA: return "CUDA error";
    case VLM_ERR_ARG: return "invalid argument";
    }
    return "unknown status";
}

void vlm_assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "vlmrun: assertion failed: %s:%d: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}

void vlm_log_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("vlmrun: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void vlm_log_info(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("vlmrun: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

bool vlm_dims_product(const int64_t *dims, int n, int64_t *out) {
    int64_t p = 1;
    for (int i = 0; i < n; i++) {
        if (dims[i] < 0) return false;
        if (__builtin_mul_overflow(p, dims[i], &p)) return false;
    }
    *out = p;
    return true;
}

void *vlm_alloc_array(size_t n, size_t size, const char *what) {
    size_t bytes;
    if (!vlm_size_mul(n, size, &bytes)) {
        vlm_log_error("%s: size %zu x %zu overflows", what, n, size);
        return NULL;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (!p) vlm_log_error("%s: out of memory allocating %zu bytes", what, bytes);
    return p;
}

void *vlm_calloc_array(size_t n, size_t size, const char *what) {
    size_t bytes;
    if (!vlm_size_mul(n, size, &bytes)) {
        vlm_log_error("%s: size %zu x %zu overflows", what, n, size);
        return NULL;
    }
    void *p = calloc(bytes ? n : 1, bytes ? size : 1);
    if (!p) vlm_log_error("%s: out of memory allocating %zu bytes", what, bytes);
    return p;
}

enum vlm_status vlm_file_read_all(const char *path, size_t max_bytes, char **out_buf, size_t *out_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        vlm_log_error("%s: cannot open: %s", path, strerror(errno));
        return VLM_ERR_IO;
    }
    enum vlm_status st = VLM_ERR_IO;
    char *buf = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) goto io_fail;
    if (!S_ISREG(sb.st_mode)) { /* a directory opens fine and "has" LONG_MAX bytes */
        vlm_log_error("%s: not a regular file", path);
        goto fail;
    }
    if (fseek(f, 0, SEEK_END) != 0) goto io_fail;
    long sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) goto io_fail;
    if ((unsigned long)sz > max_bytes) {
        vlm_log_error("%s: file is %ld bytes, more than the %zu allowed", path, sz, max_bytes);
        st = VLM_ERR_FORMAT;
        goto fail;
    }
    buf = malloc((size_t)sz + 1);
    if (!buf) {
        vlm_log_error("%s: out of memory reading %ld bytes", path, sz);
        st = VLM_ERR_OOM;
        goto fail;
    }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) goto io_fail;
    buf[sz] = '\0';
    fclose(f);
    *out_buf = buf;
    *out_len = (size_t)sz;
    return VLM_OK;
io_fail:
    vlm_log_error("%s: read failed: %s", path, strerror(errno));
fail:
    free(buf);
    fclose(f);
    return st;
}

bool vlm_path_join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t ld = strlen(dir);
    while (ld > 1 && dir[ld - 1] == '/') ld--;
    int n = snprintf(buf, cap, "%.*s/%s", (int)ld, dir, name);
    return n >= 0 && (size_t)n < cap;
}

double vlm_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}
