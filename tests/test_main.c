/* test_main.c — runner for every TEST registered by the test_*.c files. See test.h. */
#include "test.h"

#include "runtime/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VLM_SRC_DIR
#error "VLM_SRC_DIR must be defined by the Makefile"
#endif

struct test_case {
    const char *name, *file;
    test_fn fn;
};

static struct test_case g_cases[1024];
static int g_n_cases;
static int g_case_failed, g_case_skipped;
static const char *g_case_name;
static bool g_verbose;
static char g_tmp_root[512];
static int g_tmp_seq;

void test_register(const char *name, const char *file, test_fn fn) {
    if (g_n_cases >= (int)(sizeof g_cases / sizeof g_cases[0])) {
        fprintf(stderr, "test: too many cases\n");
        exit(2);
    }
    g_cases[g_n_cases++] = (struct test_case){name, file, fn};
}

bool test_verbose(void) { return g_verbose; }

void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s (%s:%d): ", g_case_name, file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    g_case_failed = 1;
}

bool test_check(bool cond, const char *expr, const char *file, int line) {
    if (!cond) test_fail(file, line, "%s", expr);
    return cond;
}

bool test_check_i64(int64_t got, int64_t want, const char *expr, const char *file, int line) {
    if (got != want) test_fail(file, line, "%s: got %lld, want %lld", expr, (long long)got, (long long)want);
    return got == want;
}

static int fclass(float x) { return isnan(x) ? 2 : isinf(x) ? (x > 0 ? 3 : 4) : 0; }

bool test_check_near(const char *label, const float *got, const float *ref, int64_t n, double atol, double rtol,
                     const char *file, int line) {
    if (n <= 0) {
        test_fail(file, line, "%s: empty comparison", label);
        return false;
    }
    double worst = 0, worst_excess = 0;
    int64_t worst_i = 0, n_bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fclass(got[i]) != fclass(ref[i])) {
            test_fail(file, line, "%s: [%lld] got %g, ref %g (NaN/Inf class differs)", label, (long long)i,
                      (double)got[i], (double)ref[i]);
            return false;
        }
        if (fclass(ref[i])) continue; /* same non-finite class */
        double d = fabs((double)got[i] - (double)ref[i]);
        double lim = atol + rtol * fabs((double)ref[i]);
        if (d > worst) worst = d;
        if (d > lim) {
            n_bad++;
            if (d - lim > worst_excess) { worst_excess = d - lim; worst_i = i; }
        }
    }
    if (n_bad) {
        test_fail(file, line, "%s: %lld of %lld values off; worst [%lld] got %.9g ref %.9g; max abs err %.3g "
                  "(atol %.3g rtol %.3g)", label, (long long)n_bad, (long long)n, (long long)worst_i,
                  (double)got[worst_i], (double)ref[worst_i], worst, atol, rtol);
        return false;
    }
    if (g_verbose) fprintf(stderr, "  %s: n=%lld max abs err %.3g\n", label, (long long)n, worst);
    return true;
}

void test_skip(const char *why) {
    fprintf(stderr, "SKIP %s: %s\n", g_case_name, why);
    g_case_skipped = 1;
}

const char *test_path(const char *rel) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", VLM_SRC_DIR, rel);
    return b;
}

/* The per-run root directory (created on first use, removed at exit). */
static const char *tmp_root(void) {
    if (!g_tmp_root[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(g_tmp_root, sizeof g_tmp_root, "%s/vlmtest.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(g_tmp_root)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return g_tmp_root;
}

/* Every path handed out stays valid until exit (kept in this list, freed by the runner). */
static char **g_tmp_paths;
static size_t g_n_tmp_paths, g_cap_tmp_paths;

static const char *keep_path(char *p) {
    if (g_n_tmp_paths == g_cap_tmp_paths) {
        size_t cap = g_cap_tmp_paths ? 2 * g_cap_tmp_paths : 64;
        char **np = realloc(g_tmp_paths, cap * sizeof *np);
        if (!np) {
            fprintf(stderr, "test: out of memory\n");
            exit(2);
        }
        g_tmp_paths = np, g_cap_tmp_paths = cap;
    }
    return g_tmp_paths[g_n_tmp_paths++] = p;
}

const char *test_tmpdir(void) {
    char *buf = malloc(600);
    if (!buf) exit(2);
    snprintf(buf, 600, "%s/%d", tmp_root(), ++g_tmp_seq);
    if (mkdir(buf, 0700) != 0) {
        perror(buf);
        exit(2);
    }
    return keep_path(buf);
}

const char *test_tmp_path(const char *name) {
    const char *dir = test_tmpdir();
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) exit(2);
    snprintf(p, n, "%s/%s", dir, name);
    return keep_path(p);
}

void test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) test_fail(__FILE__, __LINE__, "cannot write %s", path);
}

uint32_t test_crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

int test_run_cmd(const char *cmdline, char *err_buf, size_t cap) {
    char errfile[700], full[8192];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", tmp_root());
    snprintf(full, sizeof full, "%s 2>'%s'", cmdline, errfile);
    int rc = system(full);
    if (err_buf && cap) {
        err_buf[0] = 0;
        FILE *f = fopen(errfile, "rb");
        if (f) {
            size_t n = fread(err_buf, 1, cap - 1, f);
            err_buf[n] = 0;
            fclose(f);
        }
    }
    if (rc == -1 || !WIFEXITED(rc)) return -1;
    return WEXITSTATUS(rc);
}

#define MAX_CAPTURE_DEPTH 8
static struct {
    FILE *file;
    int saved_fd;
} g_captures[MAX_CAPTURE_DEPTH];
static int g_n_captures;

void test_capture_begin(void) {
    if (g_n_captures >= MAX_CAPTURE_DEPTH) {
        fprintf(stderr, "test: stderr captures nested too deep\n");
        exit(2);
    }
    fflush(stderr);
    FILE *f = tmpfile();
    int saved = dup(2);
    if (!f || saved < 0 || dup2(fileno(f), 2) < 0) {
        perror("test: cannot capture stderr");
        exit(2);
    }
    g_captures[g_n_captures].file = f;
    g_captures[g_n_captures].saved_fd = saved;
    g_n_captures++;
}

size_t test_capture_end(char *buf, size_t cap) {
    if (g_n_captures <= 0) {
        fprintf(stderr, "test: test_capture_end without test_capture_begin\n");
        exit(2);
    }
    fflush(stderr);
    g_n_captures--;
    FILE *f = g_captures[g_n_captures].file;
    dup2(g_captures[g_n_captures].saved_fd, 2);
    close(g_captures[g_n_captures].saved_fd);
    long total = ftell(f);
    rewind(f);
    size_t n = cap ? fread(buf, 1, cap - 1, f) : 0;
    if (cap) buf[n] = 0;
    fclose(f);
    return total > 0 ? (size_t)total : 0;
}

bool test_check_error_line(const char *msg, const char *needle1, const char *needle2, const char *file, int line) {
    const char *nl = strchr(msg, '\n');
    bool ok = strncmp(msg, "vlmrun: error: ", 15) == 0 && nl && nl[1] == '\0' &&
              (!needle1 || strstr(msg, needle1)) && (!needle2 || strstr(msg, needle2));
    if (!ok)
        test_fail(file, line, "want one 'vlmrun: error:' line containing '%s'%s%s, got: %s", needle1 ? needle1 : "",
                  needle2 ? " and " : "", needle2 ? needle2 : "", msg);
    return ok;
}

double test_max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as the max */
    }
    return m;
}

double test_nmse(const float *got, const float *ref, int64_t n) {
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        e += d * d;
        s += (double)ref[i] * ref[i];
    }
    return s > 0 ? e / s : e;
}

struct vlm_model *test_load_model(const char *rel_dir, bool stream) {
    struct vlm_model *m = NULL;
    const struct vlm_load_opts lo = {.stream_decoder_linears = stream};
    test_capture_begin();
    enum vlm_status st = vlm_model_load_opts(test_path(rel_dir), &lo, &m);
    test_capture_end(NULL, 0);
    if (!CHECK(st == VLM_OK)) return NULL;
    return m;
}

double test_cosine(const float *a, const float *b, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / (sqrt(aa) * sqrt(bb));
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) g_verbose = true;
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) filter = argv[++i];
        else {
            fprintf(stderr, "usage: %s [-v] [-k substring]\n", argv[0]);
            return 2;
        }
    }
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < g_n_cases; i++) {
        if (filter && !strstr(g_cases[i].name, filter)) continue;
        g_case_name = g_cases[i].name;
        g_case_failed = g_case_skipped = 0;
        if (g_verbose) fprintf(stderr, "RUN  %s (%s)\n", g_cases[i].name, g_cases[i].file);
        /* quiet on success: the case's stderr (expected error lines included) is shown only when it fails */
        test_capture_begin();
        g_cases[i].fn();
        static char log[1 << 16];
        size_t n_log = test_capture_end(log, sizeof log);
        if ((g_case_failed || g_verbose) && n_log) {
            fputs(log, stderr);
            if (n_log >= sizeof log) fprintf(stderr, "[... %zu more bytes of output]\n", n_log - sizeof log + 1);
        }
        if (g_case_failed) {
            failed++;
            fprintf(stderr, "FAILED %s (%s)\n", g_cases[i].name, g_cases[i].file);
        }
        else if (g_case_skipped) skipped++;
        else {
            passed++;
            if (g_verbose) fprintf(stderr, "PASS %s\n", g_cases[i].name);
        }
    }
    if (g_tmp_root[0]) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp_root);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmp_root);
    }
    for (size_t i = 0; i < g_n_tmp_paths; i++) free(g_tmp_paths[i]);
    free(g_tmp_paths);
    if (skipped) printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else printf("%d passed, %d failed\n", passed, failed);
    return failed > 0 ? 1 : 0;
}

uint32_t test_rng_u32(uint64_t *r) {
    *r ^= *r << 13, *r ^= *r >> 7, *r ^= *r << 17;
    return (uint32_t)(*r >> 16);
}
float test_rng_unit(uint64_t *r) { return ((float)(test_rng_u32(r) & 0xffffff) + 0.5f) / 16777216.0f; }
float test_rng_normal(uint64_t *r) { return sqrtf(-2.0f * logf(test_rng_unit(r))) * cosf(6.2831853f * test_rng_unit(r)); }

static uint64_t g_test_rng = 0x9e3779b97f4a7c15ull;
uint32_t test_rand_u32(void) { return test_rng_u32(&g_test_rng); }
float test_rand_unit(void) { return test_rng_unit(&g_test_rng); }
float test_rand_normal(void) { return test_rng_normal(&g_test_rng); }

const char *test_tiny_q_tokenized(bool text_mode) {
    static char dirs[2][1024];
    char *dir = dirs[text_mode];
    if (dir[0]) return dir;
    char cmd[8192];
    snprintf(dir, sizeof dirs[0], "%s/tiny_q_%s", test_tmpdir(), text_mode ? "text" : "tok");
    int k = snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s'/* '%s'/ && cp '%s' '%s'/tokenizer.json", dir,
                     test_path("tests/data/models/tiny_q"), dir, test_path("tests/data/calib/tiny_tokenizer.json"),
                     dir);
    if (text_mode && k > 0 && (size_t)k < sizeof cmd)
        snprintf(cmd + k, sizeof cmd - (size_t)k,
                 " && sed -i 's/\"image_token_index\": 1000,/\"image_token_index\": 263,/' '%s'/config.json && "
                 "grep -q '\"image_token_index\": 263,' '%s'/config.json", dir, dir);
    if (!CHECK_EQ(test_run_cmd(cmd, NULL, 0), 0)) dir[0] = 0;
    return dir;
}

const char *test_qwen2_tokenizer_path(void) {
    static char path[1024];
    if (path[0]) return path;
    const char *gz = test_path("tests/data/tokenizers/qwen2/tokenizer.json.gz");
    const char *dst = test_tmp_path("qwen2_tokenizer.json");
    char cmd[2600], err[512];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s' > '%s'", gz, dst);
    if (test_run_cmd(cmd, err, sizeof err) != 0) {
        FAIL("cannot decompress %s (gzip -dc): %s", gz, err);
        return NULL;
    }
    snprintf(path, sizeof path, "%s", dst);
    return path;
}

char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)n + 1))) {
        *len = fread(b, 1, (size_t)n, f);
        b[*len] = 0;
    }
    fclose(f);
    return b;
}
