/* qgemm_internal.h — the split between the dispatcher (qgemm.c: pool, scratch, ISA choice, float formats) and
 * the int8 kernels (qgemm_int8.c: W3G128, W4G128, W4A8). Not for use outside kernels/cpu/. */
#ifndef VLM_QGEMM_INTERNAL_H
#define VLM_QGEMM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/qgemm.h"

/* Bytes of scratch the int8 path needs for M tokens of an (n, k) matrix in format f (activation codes, scales,
 * sums, 64-byte aligned pieces). f is W3G128, W4G128 or W4A8. 0 on size overflow. */
size_t cpu_int8_scratch_bytes(enum vlm_qformat f, int64_t M, int64_t k);

/* Quantizes the activations of tokens [t0, t1) of x (M, k) into scratch (laid out for all M tokens; scratch is
 * 64-byte aligned and cpu_int8_scratch_bytes(f, M, k) long). Threads call it on disjoint token ranges. */
void cpu_int8_prepare(enum cpu_isa isa, enum vlm_qformat f, const float *x, int64_t M, int64_t k, void *scratch,
                      int64_t t0, int64_t t1);

/* Output rows [r0, r1) of y (M, n), every token, from the prepared scratch. Threads call it on disjoint row ranges
 * (r0, r1 multiples of 16 except at n). */
void cpu_int8_rows(enum cpu_isa isa, float *y, const void *scratch, const struct vlm_qmat *w, const float *b,
                   int64_t M, int64_t r0, int64_t r1);

#endif
