// cuda_emu.h — the core of the CPU emulator of CUDA kernels (tests/cuda_emu, README.md there): the execution model
// that the fake CUDA headers of this folder build on. Every CUDA thread of a block runs as a coroutine on its own
// stack (tests/cuda_emu/emu.cpp); a thread runs until it reaches a barrier (__syncthreads) or a warp collective
// (shuffle, vote, __syncwarp, WMMA), which suspends it until every thread that collective names has arrived. Blocks
// of a grid run one after the other. Test code only: it is never linked into vlmrun.
//
// Identifiers: CUDA's own names (__syncthreads, threadIdx, __half, ...) are reproduced as CUDA spells them, so the
// kernels compile unchanged; everything the emulator adds is prefixed emu_.
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---------------------------------------------------------------------------------------------------------------
 * built-in index types and variables
 * ------------------------------------------------------------------------------------------------------------- */

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

typedef struct emu_stream *cudaStream_t;

extern const uint3 *emu_thread_idx; // the running thread's threadIdx (set by the scheduler at every switch)
extern uint3 emu_block_idx;
extern dim3 emu_block_dim, emu_grid_dim;

#define threadIdx (*emu_thread_idx)
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim
constexpr int warpSize = 32;

/* ---------------------------------------------------------------------------------------------------------------
 * synchronization
 * ------------------------------------------------------------------------------------------------------------- */

// __syncthreads: suspends until every thread of the block is at a block barrier. pred feeds the _count/_and/_or
// forms; the return value is the number of threads that passed a nonzero pred. A barrier that some threads of the
// block can no longer reach (they exited, or wait at a warp collective) is reported and aborts.
int emu_block_barrier(int pred);

// One lane's part in a warp collective. Every lane named in mask must call emu_warp_collective with the same
// exchange function and the same mask; when the last one arrives, exchange runs once with ops[l] (NULL for lanes
// outside mask) and may read every lane's `in`/`arg` and write every lane's `out`. Lanes meeting with different
// masks or collectives, a mask without the caller's own lane, a mask naming an exited or nonexistent lane, and a
// lane that waits at __syncthreads meanwhile are reported and abort.
struct emu_warp_op {
    unsigned mask;
    uint64_t in, out; // shuffles and votes: this lane's value and result (up to 8 bytes)
    int src;          // shuffles: the lane to read; -1 when the source is outside the segment (own value)
    void *arg;        // collective-specific (WMMA: this lane's fragments)
};
typedef void (*emu_exchange_fn)(emu_warp_op *const ops[32], unsigned mask);
void emu_warp_collective(emu_exchange_fn exchange, emu_warp_op *op);

// Lane of the running thread in its warp (linear thread index mod 32, as the hardware numbers lanes).
unsigned emu_lane(void);

// Kernel-side diagnostics: "emu: <kernel> block (x,y,z) thread (x,y,z): <message>", then abort().
[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---------------------------------------------------------------------------------------------------------------
 * shared memory
 *
 * tests/cuda_emu/rewrite.pl turns `__shared__ T name[N];` into a function-local static plus
 * emu_shared_register(&name, sizeof name): the first thread of each block to pass the declaration fills it with
 * 0xff bytes (NaN as float or half, -1 as int), so a read of shared memory no thread of the block wrote shows up,
 * and the block's static total is checked against the 48 KB limit. `extern __shared__ T name[];` becomes a pointer
 * to the launch's dynamic shared memory (same fill; size from the launch, limit 48 KB or the kernel's
 * cudaFuncAttributeMaxDynamicSharedMemorySize).
 * ------------------------------------------------------------------------------------------------------------- */

void emu_shared_register(void *p, size_t bytes);
void *emu_dynamic_shared(void);

/* ---------------------------------------------------------------------------------------------------------------
 * kernel launch: rewrite.pl turns `kernel<<<grid, block, smem, stream>>>(args)` into
 * emu_launch("kernel", kernel, emu_config(grid, block, smem, stream), args)
 * ------------------------------------------------------------------------------------------------------------- */

struct emu_launch_config {
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
};
inline emu_launch_config emu_config(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
    return emu_launch_config{grid, block, shared_bytes, stream};
}

// Checks the configuration as the driver does (an invalid one sets cudaErrorInvalidConfiguration for
// cudaGetLastError and runs nothing), then runs body once per thread of every block, now or, while the stream is
// being captured, at each launch of the graph.
void emu_enqueue_kernel(const char *name, const void *key, const emu_launch_config &cfg, std::function<void()> body);

// The arguments are converted to the kernel's parameter types at the launch and kept by value, as CUDA does (a
// captured graph replays the launch with the values of the capture).
template <class... P, class... A>
void emu_launch(const char *name, void (*kernel)(P...), const emu_launch_config &cfg, A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    std::tuple<typename std::decay<P>::type...> params(std::forward<A>(args)...);
    emu_enqueue_kernel(name, (const void *)kernel, cfg, [kernel, params]() { std::apply(kernel, params); });
}

// A stream operation other than a kernel (memset, device copy, cuBLAS call): runs now, or is recorded while the
// stream is being captured. Returns 0 (cudaSuccess) or the cudaError_t of an unknown stream or an invalidated capture.
int emu_enqueue(cudaStream_t stream, std::function<void()> op);

// Device allocations (cudaMalloc): true when [p, p + bytes) lies inside one.
bool emu_is_device(const void *p, size_t bytes);

#endif
