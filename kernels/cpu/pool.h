/* pool.h — a small pthread pool that runs one function on every worker (the caller's thread included) and
 * returns when all are done. Kernels split their work by (thread, n_threads); no work queue, no allocation per
 * call. One pool per process is the normal case (vlm_pool_default). */
#ifndef VLM_POOL_H
#define VLM_POOL_H

#include <stdint.h>

struct vlm_pool;

/* Starts n_threads - 1 workers (the caller is the n-th). n_threads <= 0: every online core, or $VLM_THREADS when
 * set to a positive integer. Returns NULL (after logging) when threads cannot be created. */
struct vlm_pool *vlm_pool_init(int n_threads);
void vlm_pool_free(struct vlm_pool *p); /* NULL is a no-op */
int vlm_pool_size(const struct vlm_pool *p);

/* Calls fn(ctx, t, n) for t = 0 .. n-1 concurrently (t = 0 on the calling thread), n = vlm_pool_size(p), and
 * returns after every call has returned. Not reentrant: fn must not call vlm_pool_run on the same pool. */
typedef void (*vlm_pool_fn)(void *ctx, int thread, int n_threads);
void vlm_pool_run(struct vlm_pool *p, vlm_pool_fn fn, void *ctx);

/* Parallel for: fn(ctx, begin, end) over [0, n) cut into one contiguous range per thread (t = 0's on the caller).
 * Runs fn(ctx, 0, n) on the caller alone when p is NULL or has one thread, or when n < 2 * grain (too little work
 * to pay for a hand-off). Ranges never overlap, so a loop whose iterations are independent gives the same result
 * on any thread count. Not reentrant (as vlm_pool_run). */
typedef void (*vlm_range_fn)(void *ctx, int64_t begin, int64_t end);
void vlm_pool_for(struct vlm_pool *p, int64_t n, int64_t grain, vlm_range_fn fn, void *ctx);

/* The process-wide pool, created on first use with vlm_pool_init(0); NULL if that failed. */
struct vlm_pool *vlm_pool_default(void);

#endif
