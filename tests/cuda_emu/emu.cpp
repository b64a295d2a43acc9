// emu.cpp — the CPU emulator of CUDA kernels (tests/cuda_emu/README.md): the block scheduler that runs every CUDA
// thread as a coroutine (switch.S), the warp collectives, and the runtime API of include/cuda_runtime.h over host
// memory. Test code only, single host thread: kernels are launched from one thread at a time.
//
// Environment: VLM_EMU_ORDER = forward (default) | reverse | random — the order of the warps of a block, of the lanes
// of a warp and of the blocks of a grid (run_block says why it matters; random reshuffles at every barrier, seeded by
// VLM_EMU_SEED); VLM_EMU_NODEV=1 — report no device (the CPU fallback paths); VLM_EMU_STATS=1 — one line of launch
// and switch counts at exit.
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "cuda_runtime.h"
#include "mma.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

// switch.S: saves the callee-saved registers on the current stack, stores its stack pointer in *save_sp, and
// resumes the context whose stack pointer is new_sp.
extern "C" void emu_switch(void **save_sp, void *new_sp);

#define EMU_STACK_BYTES (256u << 10) // per CUDA thread (sanitizer frames are large)
#define EMU_MAX_THREADS 1024
#define EMU_STATIC_SHARED_MAX (48u << 10)   // static __shared__ per block
#define EMU_SHARED_OPTIN_MAX (227u << 10)   // static + dynamic with cudaFuncAttributeMaxDynamicSharedMemorySize (sm_90)
#define EMU_DEVICE_BYTES ((size_t)16 << 30) // the fake device's memory
#define EMU_POISON 0xff                     // fill of fresh device and shared memory: NaN as float/half, -1 as int

/* ---------------------------------------------------------------------------------------------------------------
 * scheduler state
 * ------------------------------------------------------------------------------------------------------------- */

enum thread_state { T_READY, T_BLOCK_BAR, T_WARP_OP, T_EXITED };

struct emu_thread {
    uint3 idx;
    unsigned lin; // linear index in the block (x fastest): lane = lin % 32, warp = lin / 32
    int state;
    void *sp;           // saved stack pointer while suspended
    char *stack;        // mmap'd: one guard page, then EMU_STACK_BYTES
    void *fake_stack;   // ASan's per-fiber state
    int bar_pred;       // __syncthreads_count & co.
    emu_exchange_fn fn; // the warp collective this thread waits at
    emu_warp_op *op;
};

enum order_mode { ORDER_FORWARD, ORDER_REVERSE, ORDER_RANDOM };

static struct {
    // the launch running now
    const char *kernel; // NULL outside a kernel
    const std::function<void()> *body;
    emu_thread *cur;                 // the running CUDA thread, NULL while the scheduler runs
    int exchange_warp;               // the warp whose collective is being exchanged (diagnostics), else -1
    std::vector<emu_thread> threads; // reserved once: emu_thread_idx points into it
    void *sched_sp;                  // the scheduler's saved stack pointer while a CUDA thread runs
    void *sched_fake_stack;
    const void *sched_stack_bottom;
    size_t sched_stack_size;
    int barrier_count;               // the last released __syncthreads' count of nonzero predicates
    std::vector<void *> shared_seen; // static __shared__ arrays filled in this block
    size_t static_shared_bytes, dynamic_shared_bytes, shared_limit;
    unsigned char *dynamic_shared;
    // configuration and statistics
    int order;
    std::mt19937 rng;
    long long launches, blocks, switches;
    FILE *report;  // the original stderr (the test runner captures fd 2 per case)
    int report_fd; // its descriptor
    size_t page;
} g;

const uint3 *emu_thread_idx;
uint3 emu_block_idx;
dim3 emu_block_dim, emu_grid_dim;

#ifdef EMU_ASAN
// A sanitizer report inside a kernel ends with where the emulator was: kernel, block, thread.
static void report_kernel_at_death(void) {
    if (g.kernel)
        fprintf(g.report, "emu: the report above happened in kernel %s, block (%u,%u,%u), thread (%u,%u,%u)\n",
                g.kernel, emu_block_idx.x, emu_block_idx.y, emu_block_idx.z, g.cur ? g.cur->idx.x : 0,
                g.cur ? g.cur->idx.y : 0, g.cur ? g.cur->idx.z : 0);
}
#endif

// Runs during static initialization, after `g` (declaration order within this file) and before main, so before the
// test runner first captures fd 2.
static bool emu_init(void) {
    g.page = (size_t)sysconf(_SC_PAGESIZE);
    g.threads.reserve(EMU_MAX_THREADS);
    g.exchange_warp = -1;
    const char *o = getenv("VLM_EMU_ORDER");
    g.order = !o || !strcmp(o, "forward") ? ORDER_FORWARD
              : !strcmp(o, "reverse")     ? ORDER_REVERSE
              : !strcmp(o, "random")      ? ORDER_RANDOM
                                          : -1;
    if (g.order < 0) {
        fprintf(stderr, "emu: VLM_EMU_ORDER takes forward, reverse or random, not '%s'\n", o);
        exit(2);
    }
    const char *seed = getenv("VLM_EMU_SEED");
    g.rng.seed(seed ? (unsigned)strtoul(seed, NULL, 10) : 1u);
    // Kernel faults and sanitizer reports go to the original stderr, so that they survive the test runner's
    // per-case capture of fd 2 (which an abort would otherwise discard): run_kernel points fd 2 there meanwhile.
    g.report_fd = dup(2);
    g.report = g.report_fd >= 0 ? fdopen(g.report_fd, "w") : NULL;
    if (!g.report) g.report = stderr;
    setvbuf(g.report, NULL, _IONBF, 0);
#ifdef EMU_ASAN
    __sanitizer_set_death_callback(report_kernel_at_death);
    // GCC links UBSan as a library of its own, with its own copy of the callback
    void *ubsan = dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
    void (*ubsan_set_death)(void (*)(void)) =
        ubsan ? (void (*)(void (*)(void)))dlsym(ubsan, "__sanitizer_set_death_callback") : NULL;
    if (ubsan_set_death) ubsan_set_death(report_kernel_at_death);
#endif
    return true;
}
static const bool emu_initialized = emu_init();

// VLM_EMU_STATS=1: one line at exit (destroyed before `g`, declared after it)
static struct emu_stats_at_exit {
    ~emu_stats_at_exit() {
        const char *s = getenv("VLM_EMU_STATS");
        if (emu_initialized && s && s[0] == '1')
            fprintf(g.report, "emu: %lld kernel launches, %lld blocks, %lld thread switches\n", g.launches, g.blocks,
                    g.switches);
    }
} emu_stats;

static void vreport(const char *fmt, va_list ap) {
    fprintf(g.report, "emu: ");
    if (g.kernel) {
        fprintf(g.report, "%s block (%u,%u,%u)", g.kernel, emu_block_idx.x, emu_block_idx.y, emu_block_idx.z);
        if (g.cur) fprintf(g.report, " thread (%u,%u,%u)", g.cur->idx.x, g.cur->idx.y, g.cur->idx.z);
        if (g.exchange_warp >= 0) fprintf(g.report, " warp %d", g.exchange_warp);
        fprintf(g.report, ": ");
    }
    vfprintf(g.report, fmt, ap);
    fprintf(g.report, "\n");
}

void emu_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    abort();
}

/* ---------------------------------------------------------------------------------------------------------------
 * coroutines
 * ------------------------------------------------------------------------------------------------------------- */

// Scheduler -> thread t; returns when t blocks or exits.
static void resume(emu_thread *t) {
    g.cur = t;
    emu_thread_idx = &t->idx;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&g.sched_fake_stack, t->stack + g.page, EMU_STACK_BYTES);
#endif
    emu_switch(&g.sched_sp, t->sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(g.sched_fake_stack, NULL, NULL);
#endif
    g.cur = NULL;
    g.switches++;
}

// Thread -> scheduler, leaving the thread in `state`; returns when the scheduler resumes it (never for T_EXITED).
static void suspend(int state) {
    emu_thread *t = g.cur;
    t->state = state;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(state == T_EXITED ? NULL : &t->fake_stack, g.sched_stack_bottom, g.sched_stack_size);
#endif
    emu_switch(&t->sp, g.sched_sp);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake_stack, &g.sched_stack_bottom, &g.sched_stack_size);
#endif
}

// The first frame of every CUDA thread: switch.S "returns" here on the thread's first resume.
static void thread_entry(void) {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &g.sched_stack_bottom, &g.sched_stack_size);
#endif
    (*g.body)();
    suspend(T_EXITED);
    abort(); // an exited thread is never resumed
}

static void thread_init(emu_thread *t, unsigned lin) {
    if (!t->stack) {
        void *p = mmap(NULL, EMU_STACK_BYTES + g.page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) emu_fail("cannot map a %u-byte thread stack", EMU_STACK_BYTES);
        if (mprotect(p, g.page, PROT_NONE) != 0) emu_fail("cannot protect a stack guard page"); // overflow faults
        t->stack = (char *)p;
    }
    const unsigned bx = emu_block_dim.x, by = emu_block_dim.y;
    t->lin = lin;
    t->idx = uint3{lin % bx, (lin / bx) % by, lin / (bx * by)};
    t->state = T_READY;
    t->fake_stack = NULL;
    // initial frame for switch.S: six callee-saved registers, then the "return address" thread_entry, then a slot
    // standing for thread_entry's own return address (so that its frame is ABI-aligned: rsp % 16 == 8 at entry)
    void **s = (void **)(((uintptr_t)(t->stack + g.page + EMU_STACK_BYTES)) & ~(uintptr_t)15);
    *--s = NULL;
    *--s = (void *)&thread_entry;
    for (int i = 0; i < 6; i++) *--s = NULL;
    t->sp = s;
}

/* ---------------------------------------------------------------------------------------------------------------
 * kernel-side entry points
 * ------------------------------------------------------------------------------------------------------------- */

int emu_block_barrier(int pred) {
    if (!g.cur) emu_fail("__syncthreads outside a kernel");
    g.cur->bar_pred = pred;
    suspend(T_BLOCK_BAR);
    return g.barrier_count;
}

void emu_warp_collective(emu_exchange_fn fn, emu_warp_op *op) {
    if (!g.cur) emu_fail("warp collective outside a kernel");
    g.cur->fn = fn;
    g.cur->op = op;
    suspend(T_WARP_OP);
}

unsigned emu_lane(void) {
    if (!g.cur) emu_fail("lane id asked outside a kernel");
    return g.cur->lin & 31u;
}

void emu_shared_register(void *p, size_t bytes) {
    if (!g.kernel) emu_fail("__shared__ variable used outside a kernel");
    for (void *q : g.shared_seen)
        if (q == p) return;
    g.shared_seen.push_back(p);
    memset(p, EMU_POISON, bytes);
    g.static_shared_bytes += bytes;
    if (g.static_shared_bytes > EMU_STATIC_SHARED_MAX)
        emu_fail("static shared memory reaches %zu bytes, over the %u-byte limit", g.static_shared_bytes,
                 EMU_STATIC_SHARED_MAX);
    if (g.static_shared_bytes + g.dynamic_shared_bytes > g.shared_limit)
        emu_fail("static (%zu) + dynamic (%zu) shared memory bytes exceed the kernel's limit of %zu",
                 g.static_shared_bytes, g.dynamic_shared_bytes, g.shared_limit);
}

void *emu_dynamic_shared(void) {
    if (!g.kernel) emu_fail("extern __shared__ array used outside a kernel (declared at namespace scope?)");
    return g.dynamic_shared;
}

/* ---------------------------------------------------------------------------------------------------------------
 * warp collectives: the exchanges (run by the scheduler once every lane of the mask has arrived)
 * ------------------------------------------------------------------------------------------------------------- */

void emu_exchange_sync(emu_warp_op *const ops[32], unsigned mask) { (void)ops, (void)mask; }

void emu_exchange_shfl(emu_warp_op *const ops[32], unsigned mask) {
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u)) continue;
        const int s = ops[l]->src;
        // a source lane outside the mask gives an undefined value on the device: a NaN / all-ones pattern here
        ops[l]->out = s < 0 ? ops[l]->in : (mask >> s & 1u) ? ops[s]->in : ~(uint64_t)0;
    }
}

void emu_exchange_ballot(emu_warp_op *const ops[32], unsigned mask) {
    uint64_t b = 0;
    for (int l = 0; l < 32; l++)
        if ((mask >> l & 1u) && ops[l]->in) b |= 1ull << l;
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) ops[l]->out = b;
}

static void exchange_reduce(emu_warp_op *const ops[32], unsigned mask, int kind) {
    uint32_t r = kind == 1 ? UINT32_MAX : 0;
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u)) continue;
        const uint32_t v = (uint32_t)ops[l]->in;
        r = kind == 0 ? r + v : kind == 1 ? std::min(r, v) : std::max(r, v);
    }
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) ops[l]->out = r;
}
void emu_exchange_reduce_add(emu_warp_op *const ops[32], unsigned mask) { exchange_reduce(ops, mask, 0); }
void emu_exchange_reduce_min(emu_warp_op *const ops[32], unsigned mask) { exchange_reduce(ops, mask, 1); }
void emu_exchange_reduce_max(emu_warp_op *const ops[32], unsigned mask) { exchange_reduce(ops, mask, 2); }

// WMMA load/store: what CUDA requires of the arguments (they must be uniform over the warp, the pointer 256-bit
// aligned, the stride a multiple of 16 bytes)
void nvcuda::wmma::emu_exchange_wmma_mem(emu_warp_op *const ops[32], unsigned mask) {
    (void)mask;
    const emu_mem_args *a0 = (const emu_mem_args *)ops[0]->arg;
    for (int l = 1; l < 32; l++) {
        const emu_mem_args *a = (const emu_mem_args *)ops[l]->arg;
        if (a->p != a0->p || a->ldm != a0->ldm || a->col_major != a0->col_major || a->elem_bytes != a0->elem_bytes)
            emu_fail("%s: lanes 0 and %d pass different arguments (%p, ldm %u, %s vs %p, ldm %u, %s)", a0->what, l,
                     a0->p, a0->ldm, a0->col_major ? "col" : "row", a->p, a->ldm, a->col_major ? "col" : "row");
    }
    if ((uintptr_t)a0->p % 32 != 0) emu_fail("%s: pointer %p is not 256-bit aligned", a0->what, a0->p);
    if ((size_t)a0->ldm * (size_t)a0->elem_bytes % 16 != 0)
        emu_fail("%s: ldm %u (elements of %d bytes) is not a multiple of 16 bytes", a0->what, a0->ldm, a0->elem_bytes);
}

static const char *collective_name(emu_exchange_fn fn) {
    if (fn == emu_exchange_sync) return "__syncwarp";
    if (fn == emu_exchange_shfl) return "a shuffle";
    if (fn == emu_exchange_ballot) return "a vote";
    if (fn == emu_exchange_reduce_add || fn == emu_exchange_reduce_min || fn == emu_exchange_reduce_max)
        return "a __reduce_*_sync";
    if (fn == nvcuda::wmma::emu_exchange_wmma_mem) return "a WMMA load/store";
    return "a WMMA mma_sync";
}

/* ---------------------------------------------------------------------------------------------------------------
 * the block scheduler
 * ------------------------------------------------------------------------------------------------------------- */

// Releases the collectives of warp w whose lanes have all arrived; false when none could be. Reports (and aborts on)
// what can never complete or is undefined on the device.
static bool release_warp(unsigned w, unsigned n) {
    const unsigned base = w * 32;
    bool released = false;
    for (unsigned l = 0; l < 32 && base + l < n; l++) {
        emu_thread *t = &g.threads[base + l];
        if (t->state != T_WARP_OP) continue;
        const unsigned mask = t->op->mask;
        const char *what = collective_name(t->fn);
        g.exchange_warp = (int)w;
        if (!(mask >> l & 1u)) emu_fail("lane %u calls %s with mask 0x%08x, which does not name it", l, what, mask);
        emu_warp_op *ops[32] = {0};
        bool complete = true;
        for (unsigned m = 0; m < 32; m++) {
            if (!(mask >> m & 1u)) continue;
            if (base + m >= n)
                emu_fail("lane %u calls %s with mask 0x%08x, which names lane %u of a block of %u threads", l, what,
                         mask, m, n);
            const emu_thread *o = &g.threads[base + m];
            if (o->state == T_EXITED)
                emu_fail("lane %u calls %s with mask 0x%08x, which names lane %u that has exited", l, what, mask, m);
            if (o->state == T_BLOCK_BAR)
                emu_fail("deadlock: lane %u waits at %s for lane %u, which waits at __syncthreads", l, what, m);
            if (o->state != T_WARP_OP) {
                complete = false;
                continue;
            }
            if (o->fn != t->fn || o->op->mask != mask)
                emu_fail("lanes %u and %u meet at different warp collectives (%s, mask 0x%08x vs %s, mask 0x%08x)", l,
                         m, what, mask, collective_name(o->fn), o->op->mask);
            ops[m] = o->op;
        }
        if (complete) {
            t->fn(ops, mask);
            for (unsigned m = 0; m < 32; m++)
                if (mask >> m & 1u) g.threads[base + m].state = T_READY;
            released = true;
        }
        g.exchange_warp = -1;
    }
    return released;
}

// One block. Between two __syncthreads, warps run one at a time, each as far as it can go (its collectives are
// released as soon as its lanes arrive), so one warp gets a whole phase ahead of the others, as the hardware allows:
// a missing barrier between warps then reads data not yet written, or overwritten already. Within a warp, each lane
// runs alone until it blocks, so a missing __syncwarp shows up the same way. The order of warps and of lanes is
// forward, reverse or random (VLM_EMU_ORDER); forward and reverse together expose a hazard in either direction.
static void run_block(unsigned n) {
    for (unsigned i = 0; i < n; i++) thread_init(&g.threads[i], i);
    g.shared_seen.clear();
    g.static_shared_bytes = 0;
    if (g.dynamic_shared_bytes) memset(g.dynamic_shared, EMU_POISON, g.dynamic_shared_bytes);
    g.blocks++;
    const unsigned n_warps = (n + 31) / 32;
    unsigned warps[EMU_MAX_THREADS / 32], lanes[32];
    for (;;) {
        for (unsigned i = 0; i < n_warps; i++) warps[i] = g.order == ORDER_REVERSE ? n_warps - 1 - i : i;
        if (g.order == ORDER_RANDOM) std::shuffle(warps, warps + n_warps, g.rng);
        for (unsigned wi = 0; wi < n_warps; wi++) {
            const unsigned w = warps[wi], base = w * 32, n_lanes = n - base < 32 ? n - base : 32;
            do {
                for (unsigned i = 0; i < n_lanes; i++) lanes[i] = g.order == ORDER_REVERSE ? n_lanes - 1 - i : i;
                if (g.order == ORDER_RANDOM) std::shuffle(lanes, lanes + n_lanes, g.rng);
                for (unsigned i = 0; i < n_lanes; i++)
                    if (g.threads[base + lanes[i]].state == T_READY) resume(&g.threads[base + lanes[i]]);
            } while (release_warp(w, n));
        }
        // every thread now waits at __syncthreads or has exited (release_warp reported any other state)
        unsigned at_bar = 0, exited = 0, count = 0;
        for (unsigned i = 0; i < n; i++) {
            const emu_thread *t = &g.threads[i];
            if (t->state == T_EXITED)
                exited++;
            else if (t->state == T_BLOCK_BAR)
                at_bar++, count += t->bar_pred != 0;
            else
                emu_fail("internal: thread %u in state %d after its warp ran", i, t->state);
        }
        if (exited == n) return;
        if (exited)
            emu_fail("__syncthreads reached by %u threads while %u threads of the block have exited (undefined on "
                     "the device: a barrier in divergent code)",
                     at_bar, exited);
        g.barrier_count = (int)count;
        for (unsigned i = 0; i < n; i++) g.threads[i].state = T_READY;
    }
}

static void run_kernel(const char *name, const emu_launch_config &cfg, size_t limit,
                       const std::function<void()> &body) {
    if (g.kernel) emu_fail("kernel %s launched from inside a kernel", name);
    const unsigned n = cfg.block.x * cfg.block.y * cfg.block.z;
    while (g.threads.size() < n) g.threads.push_back(emu_thread{});
    g.kernel = name;
    g.body = &body;
    emu_block_dim = cfg.block;
    emu_grid_dim = cfg.grid;
    g.shared_limit = limit;
    g.dynamic_shared_bytes = cfg.shared_bytes;
    // malloc'd at its exact size, so a read past the dynamic shared memory is an ASan error
    g.dynamic_shared = (unsigned char *)malloc(cfg.shared_bytes ? cfg.shared_bytes : 1);
    if (!g.dynamic_shared) emu_fail("out of host memory for %zu bytes of dynamic shared memory", cfg.shared_bytes);
    const int saved_stderr = g.report_fd >= 0 ? dup(2) : -1;
    if (saved_stderr >= 0) dup2(g.report_fd, 2);
    const uint64_t n_blocks = (uint64_t)cfg.grid.x * cfg.grid.y * cfg.grid.z;
    std::vector<uint64_t> block_order;
    if (g.order == ORDER_RANDOM && n_blocks <= (1u << 20)) {
        block_order.resize(n_blocks);
        for (uint64_t b = 0; b < n_blocks; b++) block_order[b] = b;
        std::shuffle(block_order.begin(), block_order.end(), g.rng);
    }
    for (uint64_t i = 0; i < n_blocks; i++) {
        const uint64_t b = !block_order.empty() ? block_order[i] : g.order == ORDER_REVERSE ? n_blocks - 1 - i : i;
        emu_block_idx = uint3{(unsigned)(b % cfg.grid.x), (unsigned)(b / cfg.grid.x % cfg.grid.y),
                              (unsigned)(b / ((uint64_t)cfg.grid.x * cfg.grid.y))};
        run_block(n);
    }
    if (saved_stderr >= 0) dup2(saved_stderr, 2), close(saved_stderr);
    free(g.dynamic_shared);
    g.dynamic_shared = NULL;
    g.dynamic_shared_bytes = 0;
    g.kernel = NULL;
    g.launches++;
}

/* ---------------------------------------------------------------------------------------------------------------
 * streams, capture, launches
 * ------------------------------------------------------------------------------------------------------------- */

struct emu_stream {
    bool capturing, invalidated;
    cudaStreamCaptureMode mode;
    std::vector<std::function<void()>> captured;
};
struct emu_event {
    bool recorded;
    double ms;
};
struct emu_graph {
    std::vector<std::function<void()>> ops;
};
struct emu_graph_exec {
    std::vector<std::function<void()>> ops;
};

static cudaError_t g_last_error = cudaSuccess;
static std::set<emu_stream *> g_streams;
static std::set<emu_event *> g_events;
static std::map<const void *, int> g_dyn_shared_limit; // per kernel (cudaFuncSetAttribute)
static std::map<uintptr_t, size_t> g_allocs;           // device allocations: start -> bytes
static size_t g_alloc_bytes;
static int g_n_capturing; // streams capturing in global or thread-local mode

static cudaError_t fail_api(cudaError_t e) {
    g_last_error = e;
    return e;
}

// An API call CUDA refuses during a (global or thread-local) capture: it invalidates the capture.
static bool refused_by_capture(void) {
    if (g_n_capturing == 0) return false;
    for (emu_stream *s : g_streams)
        if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed) s->invalidated = true;
    return true;
}

static bool stream_ok(cudaStream_t s) { return !s || g_streams.count(s); }

int emu_enqueue(cudaStream_t s, std::function<void()> op) {
    if (!stream_ok(s)) return fail_api(cudaErrorInvalidResourceHandle);
    if (s && s->capturing) {
        if (s->invalidated) return fail_api(cudaErrorStreamCaptureInvalidated);
        s->captured.push_back(std::move(op));
        return cudaSuccess;
    }
    op();
    return cudaSuccess;
}

static size_t dyn_shared_limit(const void *key) {
    auto it = g_dyn_shared_limit.find(key);
    return it == g_dyn_shared_limit.end() ? EMU_STATIC_SHARED_MAX : (size_t)it->second;
}

void emu_enqueue_kernel(const char *name, const void *key, const emu_launch_config &cfg, std::function<void()> body) {
    const dim3 b = cfg.block, gr = cfg.grid;
    const uint64_t n = (uint64_t)b.x * b.y * b.z;
    if (b.x == 0 || b.y == 0 || b.z == 0 || n > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 || gr.x == 0 ||
        gr.y == 0 || gr.z == 0 || gr.x > 0x7fffffffu || gr.y > 65535 || gr.z > 65535) {
        fail_api(cudaErrorInvalidConfiguration);
        return;
    }
    const size_t limit = dyn_shared_limit(key);
    if (cfg.shared_bytes > limit) {
        fail_api(cudaErrorInvalidValue);
        return;
    }
    const emu_launch_config c = cfg;
    const size_t total_limit = limit > EMU_STATIC_SHARED_MAX ? limit : EMU_STATIC_SHARED_MAX;
    (void)emu_enqueue(cfg.stream, [name, c, total_limit, body]() { run_kernel(name, c, total_limit, body); });
}

bool emu_is_device(const void *p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && bytes <= it->second && a - it->first <= it->second - bytes;
}

/* ---------------------------------------------------------------------------------------------------------------
 * runtime API: device
 * ------------------------------------------------------------------------------------------------------------- */

static bool no_device(void) {
    const char *e = getenv("VLM_EMU_NODEV");
    return e && e[0] == '1';
}

cudaError_t cudaGetDeviceCount(int *n) {
    if (no_device()) {
        *n = 0;
        return fail_api(cudaErrorNoDevice);
    }
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    return no_device() ? fail_api(cudaErrorNoDevice) : device == 0 ? cudaSuccess : fail_api(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device != 0 || no_device()) return fail_api(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulator");
    p->totalGlobalMem = EMU_DEVICE_BYTES;
    p->sharedMemPerBlock = EMU_STATIC_SHARED_MAX;
    p->sharedMemPerBlockOptin = EMU_SHARED_OPTIN_MAX;
    p->sharedMemPerMultiprocessor = 228u << 10;
    p->totalConstMem = 64u << 10;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff, p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->major = 9, p->minor = 0;
    p->multiProcessorCount = 132;
    p->maxThreadsPerMultiProcessor = 2048;
    p->l2CacheSize = 50 << 20;
    p->memoryBusWidth = 5120;
    p->concurrentKernels = 1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int device) {
    if (device != 0) return fail_api(cudaErrorInvalidDevice);
    switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = EMU_STATIC_SHARED_MAX; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrMemoryClockRate: *v = 2619000; break; // kHz: with 5120 bits, an H100 SXM's 3.35 TB/s
    case cudaDevAttrGlobalMemoryBusWidth: *v = 5120; break;
    case cudaDevAttrL2CacheSize: *v = 50 << 20; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = EMU_SHARED_OPTIN_MAX; break;
    default: return fail_api(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    return refused_by_capture() ? fail_api(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    const cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define NAME(x)                                                                                                        \
    case x: return #x;
        NAME(cudaSuccess)
        NAME(cudaErrorInvalidValue)
        NAME(cudaErrorMemoryAllocation)
        NAME(cudaErrorInvalidConfiguration) NAME(cudaErrorInvalidDevicePointer) NAME(cudaErrorInvalidMemcpyDirection)
            NAME(cudaErrorInvalidDeviceFunction) NAME(cudaErrorNoDevice) NAME(cudaErrorInvalidDevice)
                NAME(cudaErrorInvalidResourceHandle) NAME(cudaErrorNotReady) NAME(cudaErrorLaunchOutOfResources)
                    NAME(cudaErrorStreamCaptureUnsupported) NAME(cudaErrorStreamCaptureInvalidated)
                        NAME(cudaErrorStreamCaptureUnmatched) NAME(cudaErrorStreamCaptureWrongThread)
#undef NAME
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureWrongThread:
        return "attempt to terminate a thread-local capture sequence from another thread";
    }
    return "unknown error";
}

cudaError_t emu_func_get_attributes(cudaFuncAttributes *a, const void *kernel) {
    memset(a, 0, sizeof *a);
    a->maxThreadsPerBlock = 1024;
    a->numRegs = 32;
    a->ptxVersion = a->binaryVersion = 90;
    a->maxDynamicSharedSizeBytes = (int)dyn_shared_limit(kernel);
    return cudaSuccess;
}

cudaError_t emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > EMU_SHARED_OPTIN_MAX) return fail_api(cudaErrorInvalidValue);
        g_dyn_shared_limit[kernel] = value;
    }
    return cudaSuccess;
}

/* ---------------------------------------------------------------------------------------------------------------
 * runtime API: memory (device memory is host memory from malloc, so ASan sees overruns and use after free)
 * ------------------------------------------------------------------------------------------------------------- */

cudaError_t cudaMalloc(void **p, size_t bytes) {
    if (refused_by_capture()) return fail_api(cudaErrorStreamCaptureUnsupported);
    if (bytes == 0) {
        *p = NULL;
        return cudaSuccess;
    }
    if (bytes > EMU_DEVICE_BYTES - g_alloc_bytes) return fail_api(cudaErrorMemoryAllocation);
    void *q = NULL;
    if (posix_memalign(&q, 256, bytes) != 0) return fail_api(cudaErrorMemoryAllocation); // cudaMalloc's alignment
    memset(q, EMU_POISON, bytes); // fresh device memory holds garbage: reading it before writing shows up as NaN
    g_allocs[(uintptr_t)q] = bytes;
    g_alloc_bytes += bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    if (refused_by_capture()) return fail_api(cudaErrorStreamCaptureUnsupported);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) return fail_api(cudaErrorInvalidDevicePointer);
    g_alloc_bytes -= it->second;
    g_allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : fail_api(cudaErrorMemoryAllocation);
}
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags) {
    (void)flags;
    return cudaMallocHost(p, bytes);
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned flags) {
    (void)p, (void)bytes, (void)flags;
    return cudaSuccess;
}
cudaError_t cudaHostUnregister(void *p) {
    (void)p;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = EMU_DEVICE_BYTES - g_alloc_bytes;
    *total_bytes = EMU_DEVICE_BYTES;
    return cudaSuccess;
}

// The device side of a copy must lie inside one allocation (the driver's "invalid argument" otherwise).
static cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((int)kind < 0 || (int)kind > 4) return cudaErrorInvalidMemcpyDirection;
    if ((dst_dev && !emu_is_device(dst, bytes)) || (src_dev && !emu_is_device(src, bytes)))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    if (bytes == 0) return cudaSuccess;
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess) return fail_api(e);
    if (!stream_ok(s)) return fail_api(cudaErrorInvalidResourceHandle);
    // a copy between pageable host memory and the device cannot be captured (no pinned host memory here)
    if (s && s->capturing && kind != cudaMemcpyDeviceToDevice) {
        s->invalidated = true;
        return fail_api(cudaErrorStreamCaptureUnsupported);
    }
    return (cudaError_t)emu_enqueue(s, [dst, src, bytes]() { memcpy(dst, src, bytes); });
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (refused_by_capture()) return fail_api(cudaErrorStreamCaptureUnsupported);
    return cudaMemcpyAsync(dst, src, bytes, kind, NULL);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s) {
    if (bytes == 0) return cudaSuccess;
    if (!emu_is_device(dst, bytes)) return fail_api(cudaErrorInvalidValue);
    return (cudaError_t)emu_enqueue(s, [dst, value, bytes]() { memset(dst, value, bytes); });
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes) {
    if (refused_by_capture()) return fail_api(cudaErrorStreamCaptureUnsupported);
    return cudaMemsetAsync(dst, value, bytes, NULL);
}

/* ---------------------------------------------------------------------------------------------------------------
 * runtime API: streams, events, graphs
 * ------------------------------------------------------------------------------------------------------------- */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = new emu_stream();
    g_streams.insert(*s);
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || !g_streams.count(s)) return fail_api(cudaErrorInvalidResourceHandle);
    if (s->capturing) return fail_api(cudaErrorStreamCaptureUnsupported);
    g_streams.erase(s);
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (!stream_ok(s)) return fail_api(cudaErrorInvalidResourceHandle);
    if (s ? s->capturing : g_n_capturing > 0) {
        if (s)
            s->invalidated = true;
        else
            (void)refused_by_capture();
        return fail_api(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    (void)flags;
    return !stream_ok(s) || !g_events.count(e) ? fail_api(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    if (!s) return fail_api(cudaErrorStreamCaptureUnsupported); // the legacy stream cannot be captured
    if (!g_streams.count(s)) return fail_api(cudaErrorInvalidResourceHandle);
    if (s->capturing) return fail_api(cudaErrorInvalidValue);
    s->capturing = true;
    s->invalidated = false;
    s->mode = mode;
    s->captured.clear();
    if (mode != cudaStreamCaptureModeRelaxed) g_n_capturing++;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    if (!s || !g_streams.count(s)) return fail_api(cudaErrorInvalidResourceHandle);
    if (!s->capturing) return fail_api(cudaErrorStreamCaptureUnmatched);
    s->capturing = false;
    if (s->mode != cudaStreamCaptureModeRelaxed) g_n_capturing--;
    if (s->invalidated) {
        *graph = NULL;
        s->captured.clear();
        return fail_api(cudaErrorStreamCaptureInvalidated);
    }
    *graph = new emu_graph{std::move(s->captured)};
    s->captured.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status) {
    if (!stream_ok(s)) return fail_api(cudaErrorInvalidResourceHandle);
    *status = !s || !s->capturing ? cudaStreamCaptureStatusNone
              : s->invalidated    ? cudaStreamCaptureStatusInvalidated
                                  : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new emu_event();
    g_events.insert(*e);
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    (void)flags;
    return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!g_events.count(e)) return fail_api(cudaErrorInvalidResourceHandle);
    g_events.erase(e);
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!g_events.count(e)) return fail_api(cudaErrorInvalidResourceHandle);
    return (cudaError_t)emu_enqueue(s, [e]() {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        e->ms = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6; // the emulated work's host time
        e->recorded = true;
    });
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    return g_events.count(e) ? cudaSuccess : fail_api(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!g_events.count(a) || !g_events.count(b)) return fail_api(cudaErrorInvalidResourceHandle);
    if (!a->recorded || !b->recorded) return fail_api(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    (void)flags;
    if (!graph) return fail_api(cudaErrorInvalidValue);
    *exec = new emu_graph_exec{graph->ops};
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return fail_api(cudaErrorInvalidValue);
    return (cudaError_t)emu_enqueue(s, [exec]() {
        for (const std::function<void()> &op : exec->ops) op();
    });
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
