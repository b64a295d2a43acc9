/* pool.c — the pthread pool of pool.h: vlm_pool_run calls fn(ctx, t, n) once for every t in 0..n-1 (t = 0 on the
 * caller) and returns when all have returned; no allocation per run.
 *
 * Hand-off: a run publishes (fn, ctx) and bumps a generation counter; a worker that has seen generation g runs the
 * job once the counter differs from g. Workers first spin on the counter for a few microseconds (decode calls the
 * pool hundreds of times per token with only small ops in between, and a condvar wake-up costs tens of
 * microseconds), then sleep on a condition variable, so an idle pool costs no CPU. Completion is a countdown of
 * the workers still running; the caller spins on it briefly and then sleeps on a second condvar. Every counter
 * change that a sleeper may wait for is followed by a signal under the mutex, so no wake-up is lost.
 * Concurrent vlm_pool_run calls from different threads on one pool are serialised by a mutex (cheap when
 * uncontended), so the process-wide pool is safe to share; a nested call from fn would deadlock (pool.h). */
#include "kernels/cpu/pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/util.h"

#define POOL_MAX_THREADS 256
#define POOL_SPIN_NS 30000 /* spin this long for work / completion before sleeping */

struct vlm_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t run_mu; /* serialises vlm_pool_run callers */
    pthread_mutex_t mu;     /* guards the sleeps below */
    pthread_cond_t cv_work, cv_done;
    vlm_pool_fn fn; /* written before gen is bumped (release), read after it is seen (acquire) */
    void *ctx;
    unsigned gen;    /* atomic: generation of the current job */
    int pending;     /* atomic: workers that have not finished the current job */
    int stop;        /* atomic: set by vlm_pool_free */
    int n_sleeping;  /* under mu: workers waiting on cv_work (the caller broadcasts only when > 0) */
    bool caller_sleeping; /* under mu */
};

struct worker_arg {
    struct vlm_pool *p;
    int t;
};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until cond(p, arg) holds or POOL_SPIN_NS pass; true when it held. */
static bool spin_until(bool (*cond)(struct vlm_pool *, unsigned), struct vlm_pool *p, unsigned arg) {
    int64_t t0 = 0;
    for (int i = 0;; i++) {
        if (cond(p, arg)) return true;
        cpu_relax();
        if ((i & 63) == 63) { /* the clock read costs ~20 ns; check it rarely */
            int64_t t = now_ns();
            if (t0 == 0) t0 = t;
            else if (t - t0 > POOL_SPIN_NS) return false;
        }
    }
}

static bool work_ready(struct vlm_pool *p, unsigned seen) {
    return __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) != seen || __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

static bool all_done(struct vlm_pool *p, unsigned unused) {
    (void)unused;
    return __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) == 0;
}

static void *worker_main(void *argp) {
    struct worker_arg a = *(struct worker_arg *)argp;
    free(argp);
    struct vlm_pool *p = a.p;
    /* generation 0 is the pool's state at creation: a run may bump it before this thread gets here */
    unsigned seen = 0;
    for (;;) {
        if (!spin_until(work_ready, p, seen)) {
            pthread_mutex_lock(&p->mu);
            p->n_sleeping++;
            while (!work_ready(p, seen)) pthread_cond_wait(&p->cv_work, &p->mu);
            p->n_sleeping--;
            pthread_mutex_unlock(&p->mu);
        }
        if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) return NULL;
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        p->fn(p->ctx, a.t, p->n);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            /* the caller may be asleep: tell it under the mutex so the wake-up cannot fall between its check and
             * its wait */
            pthread_mutex_lock(&p->mu);
            if (p->caller_sleeping) pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static int default_threads(void) {
    const char *env = getenv("VLM_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v > 0) return v > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)v;
    }
    /* the cores this process may run on (taskset), which is at most the online count */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0) return c > POOL_MAX_THREADS ? POOL_MAX_THREADS : c;
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c < 1 ? 1 : c > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)c;
}

static void stop_workers(struct vlm_pool *p, int started) {
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++) pthread_join(p->threads[i], NULL);
}

struct vlm_pool *vlm_pool_init(int n_threads) {
    int n = n_threads > 0 ? (n_threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : n_threads) : default_threads();
    struct vlm_pool *p = calloc(1, sizeof *p);
    if (!p) {
        vlm_log_error("thread pool: out of memory");
        return NULL;
    }
    p->n = n;
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n > 1) {
        p->threads = calloc((size_t)n - 1, sizeof *p->threads);
        if (!p->threads) {
            vlm_log_error("thread pool: out of memory");
            vlm_pool_free(p);
            return NULL;
        }
        for (int i = 0; i < n - 1; i++) {
            struct worker_arg *a = malloc(sizeof *a);
            if (a) *a = (struct worker_arg){p, i + 1};
            int rc = a ? pthread_create(&p->threads[i], NULL, worker_main, a) : -1;
            if (rc != 0) {
                free(a);
                vlm_log_error("thread pool: cannot start thread %d of %d (%s)", i + 1, n,
                              rc > 0 ? strerror(rc) : "out of memory");
                stop_workers(p, i);
                p->n = 1; /* workers already joined */
                vlm_pool_free(p);
                return NULL;
            }
        }
    }
    return p;
}

void vlm_pool_free(struct vlm_pool *p) {
    if (!p) return;
    if (p->n > 1 && p->threads) stop_workers(p, p->n - 1);
    free(p->threads);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    free(p);
}

int vlm_pool_size(const struct vlm_pool *p) { return p ? p->n : 1; }

void vlm_pool_run(struct vlm_pool *p, vlm_pool_fn fn, void *ctx) {
    if (!p || p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    __atomic_store_n(&p->pending, p->n - 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->mu);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_ACQ_REL);
    if (p->n_sleeping > 0) pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);

    fn(ctx, 0, p->n);

    if (!spin_until(all_done, p, 0)) {
        pthread_mutex_lock(&p->mu);
        p->caller_sleeping = true;
        while (!all_done(p, 0)) pthread_cond_wait(&p->cv_done, &p->mu);
        p->caller_sleeping = false;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->run_mu);
}

static struct vlm_pool *g_default;
static pthread_once_t g_default_once = PTHREAD_ONCE_INIT;
static void default_init(void) { g_default = vlm_pool_init(0); }

struct vlm_pool *vlm_pool_default(void) {
    pthread_once(&g_default_once, default_init);
    return g_default;
}

struct range_job {
    vlm_range_fn fn;
    void *ctx;
    int64_t n;
};

static void range_thread(void *ctx, int t, int nt) {
    const struct range_job *j = ctx;
    int64_t b = j->n * t / nt, e = j->n * (t + 1) / nt; /* n <= 2^62 in practice: callers pass element counts */
    if (b < e) j->fn(j->ctx, b, e);
}

void vlm_pool_for(struct vlm_pool *p, int64_t n, int64_t grain, vlm_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (!p || p->n == 1 || n < 2 * (grain > 0 ? grain : 1)) {
        fn(ctx, 0, n);
        return;
    }
    struct range_job j = {fn, ctx, n};
    vlm_pool_run(p, range_thread, &j);
}
