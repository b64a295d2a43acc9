/* util.c — see util.h. */
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
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

/* The program name in front of every log line; the CLIs set it (tests expect "vlmrun"). */
static const char *g_prog = "vlmrun";
void vlm_log_set_prog(const char *name) { g_prog = name; }

void vlm_assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "%s: assertion failed: %s:%d: %s\n", g_prog, file, line, cond);
    fflush(stderr);
    abort();
}

void vlm_log_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static bool g_info = true;
void vlm_log_set_info(bool on) { g_info = on; }

void vlm_log_info(const char *fmt, ...) {
    if (!g_info) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", g_prog);
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

bool vlm_str_append(struct vlm_str *b, const char *s, size_t n, const char *what) {
    size_t need;
    if (!vlm_size_add(b->len, n, &need) || !vlm_size_add(need, 1, &need)) {
        vlm_log_error("%s: too long", what);
        return false;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            vlm_log_error("%s: out of memory allocating %zu bytes", what, cap);
            return false;
        }
        b->s = p, b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
    return true;
}

void vlm_str_free(struct vlm_str *b) {
    free(b->s);
    *b = (struct vlm_str){0};
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

int vlm_file_tmp_open(const char *path, char **tmp) {
    const size_t plen = strlen(path);
    *tmp = malloc(plen + sizeof ".tmp.XXXXXX");
    if (!*tmp) {
        vlm_log_error("%s: out of memory for the temporary file's name", path);
        return -1;
    }
    memcpy(*tmp, path, plen);
    memcpy(*tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkostemp(*tmp, O_CLOEXEC);
    if (fd < 0) {
        vlm_log_error("%s: cannot create the temporary file %s: %s", path, *tmp, strerror(errno));
    } else if (fchmod(fd, 0644) != 0) { /* mkstemp makes 0600; outputs are meant to be shared */
        vlm_log_error("%s: cannot set the mode of %s: %s", path, *tmp, strerror(errno));
        close(fd);
        unlink(*tmp);
        fd = -1;
    }
    if (fd < 0) {
        free(*tmp);
        *tmp = NULL;
    }
    return fd;
}

/* fsyncs the directory holding path, so a rename into it is durable. */
static bool fsync_parent(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else {
        errno = ENAMETOOLONG;
        return false;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return false;
    /* EINVAL: the filesystem cannot sync directories; there is nothing more to do for durability */
    bool ok = fsync(dfd) == 0 || errno == EINVAL;
    int saved = errno;
    close(dfd);
    errno = saved;
    return ok;
}

enum vlm_status vlm_file_tmp_publish(int fd, const char *tmp, const char *path) {
    if (fsync(fd) != 0) {
        vlm_log_error("%s: fsync of %s failed: %s", path, tmp, strerror(errno));
        close(fd);
        return VLM_ERR_IO;
    }
    if (close(fd) != 0) {
        vlm_log_error("%s: closing %s failed: %s", path, tmp, strerror(errno));
        return VLM_ERR_IO;
    }
    if (rename(tmp, path) != 0) {
        vlm_log_error("%s: cannot rename %s onto it: %s", path, tmp, strerror(errno));
        return VLM_ERR_IO;
    }
    if (!fsync_parent(path)) {
        /* The file is complete and its data are on disk; only the directory entry's durability across a crash is
         * unknown. Removing it now would destroy both the new and the (already replaced) old file, so keep it. */
        vlm_log_info("warning: %s: fsync of its directory failed (%s); the file is complete but a crash now could "
                     "lose the rename", path, strerror(errno));
    }
    return VLM_OK;
}

bool vlm_file_pwrite_all(int fd, const void *buf, size_t n, size_t off) {
    const unsigned char *p = buf;
    while (n > 0) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t k = pwrite(fd, p, chunk, (off_t)off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (k == 0) {
            errno = EIO;
            return false;
        }
        p += k;
        off += (size_t)k;
        n -= (size_t)k;
    }
    return true;
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

/* ---- text checks shared by the file readers (safetensors.c, mbq_file.c) ---- */

/* Validates raw header text before cJSON sees it, closing parser-differential holes: bytes must be UTF-8 (no
 * overlongs, surrogates or code points > U+10FFFF); no raw control byte except JSON whitespace (JSON forbids them
 * in strings; cJSON would accept them); no "\u0000" escape (cJSON would cut the string there, so two different
 * names could compare equal). Returns NULL when fine, else a short reason. */
const char *vlm_json_prescan(const unsigned char *s, size_t n, size_t *where) {
    bool in_str = false;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        *where = i;
        if (c < 0x80) {
            if (c < 0x20 && c != ' ' && c != '\t' && c != '\n' && c != '\r') return "a raw control byte";
            if (c < 0x20 && in_str) return "a raw control byte inside a string";
            if (c == '"') in_str = !in_str;
            else if (c == '\\' && in_str) {
                if (i + 1 >= n) return "a truncated escape";
                if (s[i + 1] == 'u' && i + 5 < n && s[i + 2] == '0' && s[i + 3] == '0' && s[i + 4] == '0' &&
                    s[i + 5] == '0')
                    return "a \\u0000 escape";
                i += 2; /* skip the escaped character (so \" does not end the string) */
                continue;
            }
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07, min = 0x10000;
        else return "invalid UTF-8";
        if (len > n - i) return "truncated UTF-8";
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return "invalid UTF-8";
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "invalid UTF-8";
        i += len;
    }
    if (in_str) return "an unterminated string";
    return NULL;
}

/* s made safe for a one-line message: control bytes become '?', at most cap-1 bytes (then "..."). */
const char *vlm_printable(const char *s, char *buf, size_t cap) {
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++) buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = 0;
    if (s[i] && cap > 4) memcpy(buf + cap - 4, "...", 4);
    return buf;
}

bool vlm_has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
    return false;
}
