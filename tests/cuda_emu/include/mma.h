// mma.h (CPU emulator, tests/cuda_emu) — nvcuda::wmma: warp-level matrix fragments, shapes 16x16x16, 32x8x16 and
// 8x32x16, inputs __half, __nv_bfloat16, signed char or unsigned char, accumulators float, __half or int.
//
// CUDA leaves the element-to-lane mapping of a fragment unspecified; here lane l holds, in x[i], element i·32 + l of
// the fragment's matrix in row-major order (A: M x K, B: K x N, accumulator: M x N). A kernel that only uses the
// documented API (load/store/fill/mma, and uniform elementwise work on x[]) cannot tell. load_matrix_sync and
// store_matrix_sync are warp collectives that check what CUDA requires: every lane passes the same pointer, stride
// and layout, the pointer is 256-bit aligned, the stride a multiple of 16 bytes. mma_sync gathers the whole warp's
// fragments, multiplies (int: exact int32 wrapping sums; float/half: FP32 sums in k order, the tensor cores' order
// and rounding being unspecified), and hands each lane its part of D.
#ifndef CUDA_EMU_MMA_H
#define CUDA_EMU_MMA_H

#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct emu_shape;
template <int M, int N, int K> struct emu_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct emu_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct emu_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16),
                  "WMMA shapes here: 16x16x16, 32x8x16, 8x32x16");
    static constexpr int rows = emu_shape<Use, M, N, K>::rows, cols = emu_shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols / 32;
    typedef T element_type;
    T x[num_elements];
};

// the (row, col) of element i of lane `lane`
inline void emu_frag_pos(int i, unsigned lane, int cols, int *r, int *c) {
    const int e = i * 32 + (int)lane;
    *r = e / cols;
    *c = e % cols;
}

// The collective part of load/store: the whole warp arrives, with uniform arguments (checked).
struct emu_mem_args {
    const void *p;
    unsigned ldm;
    int col_major, elem_bytes;
    const char *what;
};
void emu_exchange_wmma_mem(emu_warp_op *const ops[32], unsigned mask);
inline void emu_wmma_mem_sync(const void *p, unsigned ldm, int col_major, int elem_bytes, const char *what) {
    emu_mem_args a = {p, ldm, col_major, elem_bytes, what};
    emu_warp_op op = {0xffffffffu, 0, 0, 0, &a};
    emu_warp_collective(emu_exchange_wmma_mem, &op);
}

template <class Use, int M, int N, int K, class T, class L, class V>
void fill_fragment(fragment<Use, M, N, K, T, L> &f, const V &v) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = T(v);
}

// matrix_a / matrix_b: the memory layout is the fragment's
template <class Use, int M, int N, int K, class T, class L, class S>
void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const S *p, unsigned ldm) {
    static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                  "matrix_a/matrix_b fragments need a row_major or col_major layout");
    static_assert(sizeof(S) == sizeof(T), "load_matrix_sync: memory and fragment element types differ");
    const int cm = std::is_same<L, col_major>::value;
    emu_wmma_mem_sync(p, ldm, cm, (int)sizeof(S), "load_matrix_sync");
    const unsigned lane = emu_lane();
    for (int i = 0; i < f.num_elements; i++) {
        int r, c;
        emu_frag_pos(i, lane, f.cols, &r, &c);
        f.x[i] = T(p[cm ? (size_t)c * ldm + r : (size_t)r * ldm + c]);
    }
}

// accumulators: the memory layout is an argument
template <int M, int N, int K, class T, class S>
void load_matrix_sync(fragment<accumulator, M, N, K, T> &f, const S *p, unsigned ldm, layout_t layout) {
    static_assert(sizeof(S) == sizeof(T), "load_matrix_sync: memory and fragment element types differ");
    const int cm = layout == mem_col_major;
    emu_wmma_mem_sync(p, ldm, cm, (int)sizeof(S), "load_matrix_sync");
    const unsigned lane = emu_lane();
    for (int i = 0; i < f.num_elements; i++) {
        int r, c;
        emu_frag_pos(i, lane, f.cols, &r, &c);
        f.x[i] = T(p[cm ? (size_t)c * ldm + r : (size_t)r * ldm + c]);
    }
}

template <int M, int N, int K, class T, class S>
void store_matrix_sync(S *p, const fragment<accumulator, M, N, K, T> &f, unsigned ldm, layout_t layout) {
    static_assert(sizeof(S) == sizeof(T), "store_matrix_sync: memory and fragment element types differ");
    const int cm = layout == mem_col_major;
    emu_wmma_mem_sync(p, ldm, cm, (int)sizeof(S), "store_matrix_sync");
    const unsigned lane = emu_lane();
    for (int i = 0; i < f.num_elements; i++) {
        int r, c;
        emu_frag_pos(i, lane, f.cols, &r, &c);
        p[cm ? (size_t)c * ldm + r : (size_t)r * ldm + c] = S(f.x[i]);
    }
}

// mma_sync: one lane's fragments, gathered by the exchange
template <class TA, class TC> struct emu_mma_args {
    const TA *a, *b;
    const TC *c;
    TC *d;
};

template <int M, int N, int K, class TA, class TC> void emu_exchange_mma(emu_warp_op *const ops[32], unsigned mask) {
    (void)mask; // always the full warp (emu_warp_collective checked that every lane arrived)
    static_assert(std::is_same<TC, int>::value ==
                      (std::is_same<TA, signed char>::value || std::is_same<TA, unsigned char>::value),
                  "int accumulators go with 8-bit inputs, float/half accumulators with half/bf16 inputs");
    TA A[M * K], B[K * N];
    TC C[M * N], D[M * N];
    for (int l = 0; l < 32; l++) {
        const emu_mma_args<TA, TC> *g = (const emu_mma_args<TA, TC> *)ops[l]->arg;
        for (int i = 0; i < M * K / 32; i++) A[i * 32 + l] = g->a[i];
        for (int i = 0; i < K * N / 32; i++) B[i * 32 + l] = g->b[i];
        for (int i = 0; i < M * N / 32; i++) C[i * 32 + l] = g->c[i];
    }
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) {
            if constexpr (std::is_same<TC, int>::value) {
                uint32_t s = (uint32_t)C[r * N + c];
                for (int k = 0; k < K; k++) s += (uint32_t)((int)A[r * K + k] * (int)B[k * N + c]);
                D[r * N + c] = (int)s;
            } else {
                float s = (float)C[r * N + c];
                for (int k = 0; k < K; k++) s += (float)A[r * K + k] * (float)B[k * N + c];
                D[r * N + c] = TC(s);
            }
        }
    for (int l = 0; l < 32; l++) { // after every read: d may be c
        const emu_mma_args<TA, TC> *g = (const emu_mma_args<TA, TC> *)ops[l]->arg;
        for (int i = 0; i < M * N / 32; i++) g->d[i] = D[i * 32 + l];
    }
}

template <int M, int N, int K, class TA, class LA, class LB, class TC>
void mma_sync(fragment<accumulator, M, N, K, TC> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
              const fragment<matrix_b, M, N, K, TA, LB> &b, const fragment<accumulator, M, N, K, TC> &c) {
    emu_mma_args<TA, TC> g = {a.x, b.x, c.x, d.x};
    emu_warp_op op = {0xffffffffu, 0, 0, 0, &g};
    emu_warp_collective(emu_exchange_mma<M, N, K, TA, TC>, &op);
}

} // namespace wmma
} // namespace nvcuda

#endif
