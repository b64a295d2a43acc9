/* test_main.c — runner for every TEST registered by the test_*.c files. See test.h. */
#include "test.h"

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

const char *test_tmpdir(void) {
    /* Each call returns its own string (kept until exit), so earlier results stay valid. */
    static char bufs[256][600];
    if (g_tmp_seq >= 256) {
        fprintf(stderr, "test: too many temporary directories\n");
        exit(2);
    }
    char *buf = bufs[g_tmp_seq];
    snprintf(buf, sizeof bufs[0], "%s/%d", tmp_root(), g_tmp_seq + 1);
    g_tmp_seq++;
    if (mkdir(buf, 0700) != 0) {
        perror(buf);
        exit(2);
    }
    return buf;
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

double test_max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as the max */
    }
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
        double t0 = 0;
        if (g_verbose) fprintf(stderr, "RUN  %s (%s)\n", g_cases[i].name, g_cases[i].file), t0 = 0;
        (void)t0;
        g_cases[i].fn();
        if (g_case_failed) failed++;
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
    if (skipped) printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else printf("%d passed, %d failed\n", passed, failed);
    return failed > 0 ? 1 : 0;
}
