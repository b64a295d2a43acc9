/* qgemm.h — the fast CPU linear for every weight format of kernels/quant.h: y (M, n) = x (M, k) · Ŵᵀ + b.
 * GEMV (M = 1, decode) and GEMM (M up to thousands: prefill, vision tokens) behind one call, threaded over a
 * vlm_pool, with runtime CPU dispatch (scalar C, AVX2+FMA, AVX-512 with VNNI). Checked against cpu_qlinear_ref
 * (kernels/cpu/quant_ref.c) and against the scalar C path of the same arithmetic.
 *
 * Arithmetic per format (what "correct" means for the tests):
 *   F32, F16, BF16, Q8R  exact f32 dot products of x with the canonical ŵ; only the summation order differs from
 *                        cpu_qlinear_ref.
 *   W4A8                 the integer form of quant.h: per-token int8 activations (s_t = max|x_t|/127), int32
 *                        accumulation; bit-identical to cpu_qlinear_ref.
 *   W3G128, W4G128       activations quantized per token and per group of 128 columns to int8 (d = max|x|/127 over
 *                        the group, a = rint(x/d); a group of zeros gets d = 0, a = 0), then y = Σ_g s_g · d_g · (Σ q·a − z_g · Σ a) with int32 inner
 *                        sums — llama.cpp's approach for its CPU k-quants (activations as Q8_K), because dequantizing
 *                        3-bit codes to f32 costs more instructions per weight than memory can deliver on a CPU core.
 *                        The integer sums are exact, so it matches cpu_qlinear_a8_ref up to the f32 summation order of the
 *                        per-group terms (NMSE <= 1e-10), and cpu_qlinear_ref within NMSE <= 5e-4.
 */
#ifndef VLM_QGEMM_H
#define VLM_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/quant.h"
#include "vlm.h"

struct vlm_pool;

enum cpu_isa { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2, CPU_ISA_AVX512 /* F, BW, VL, VNNI */ };
enum cpu_isa cpu_isa_detect(void);        /* best level this CPU and OS support (cpuid + xgetbv) */
const char *cpu_isa_name(enum cpu_isa i);
/* Caps the level used by cpu_qlinear (tests run every level the CPU has; benches compare); returns the level
 * now in effect (never above cpu_isa_detect()). */
enum cpu_isa cpu_isa_set(enum cpu_isa max_level);
/* The level in effect now (cpu_isa_detect() capped by the last cpu_isa_set). */
enum cpu_isa cpu_isa_current(void);

/* Grow-only scratch for activation quantization, owned by the caller (one per decoding thread of control);
 * after the first calls at the largest M nothing is allocated. Zero-initialise; free with cpu_qctx_free. */
struct cpu_qctx {
    struct vlm_pool *pool;      /* NULL: single-threaded on the caller */
    void *scratch;
    size_t scratch_bytes;
};
void cpu_qctx_free(struct cpu_qctx *c);

/* y (M, n) = x (M, k) · Ŵᵀ + b (b (n) or NULL). y must not alias x. VLM_ERR_OOM when scratch cannot grow. */
enum vlm_status cpu_qlinear(struct cpu_qctx *c, float *y, const float *x, const struct vlm_qmat *w, const float *b,
                            int64_t M);

/* The scalar statement of the W3G128/W4G128 A8 arithmetic above (and, for other formats, cpu_qlinear_ref). */
void cpu_qlinear_a8_ref(float *y, const float *x, const struct vlm_qmat *w, const float *b, int64_t M);

#endif
