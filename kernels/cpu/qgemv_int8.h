/* qgemv_int8.h — the decode GEMV (M = 1..4 tokens) of the int8-activation formats (W3G128, W4G128, W4A8) on AVX-512
 * VNNI, over the scratch that cpu_int8_prepare (kernels/cpu/qgemm_internal.h) lays out. Not for use outside
 * kernels/cpu/ (and its tests). */
#ifndef VLM_QGEMV_INT8_H
#define VLM_QGEMV_INT8_H

#include <stdint.h>

#include "kernels/quant.h"

/* Rows [r0, r1) of y (M, n) for M = 1..4 tokens, from the scratch cpu_int8_prepare wrote for these M tokens and this
 * matrix's format and k; w->fmt is W3G128, W4G128 or W4A8; b (n) or NULL. Writes only y[t·n + r], t < M, r0 <= r < r1,
 * so threads may call it on disjoint row ranges. Arithmetic: W4A8 bit-identical to cpu_qlinear_ref; W3G128/W4G128 the
 * A8 arithmetic of qgemm.h (exact integer sums, f32 summation order free: NMSE <= 1e-10 vs cpu_qlinear_a8_ref).
 * The caller checks that the CPU has AVX-512 F/BW/VL/DQ + VNNI (cpu_isa_detect() >= CPU_ISA_AVX512). */
void cpu_int8_gemv_avx512(float *y, const void *scratch, const struct vlm_qmat *w, const float *b, int64_t M,
                          int64_t r0, int64_t r1);

#endif
