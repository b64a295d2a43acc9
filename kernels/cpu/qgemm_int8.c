/* qgemm_int8.c — W3G128, W4G128 and W4A8 kernels (placeholder: scalar through the reference until the SIMD
 * kernels land). */
#include <string.h>

#include "kernels/cpu/qgemm_internal.h"

size_t cpu_int8_scratch_bytes(enum vlm_qformat f, int64_t M, int64_t k) {
    (void)f;
    return (size_t)M * (size_t)k * sizeof(float);
}

void cpu_int8_prepare(enum cpu_isa isa, enum vlm_qformat f, const float *x, int64_t M, int64_t k, void *scratch,
                      int64_t t0, int64_t t1) {
    (void)isa, (void)f, (void)M;
    memcpy((float *)scratch + t0 * k, x + t0 * k, (size_t)(t1 - t0) * (size_t)k * sizeof(float));
}

void cpu_int8_rows(enum cpu_isa isa, float *y, const void *scratch, const struct vlm_qmat *w, const float *b,
                   int64_t M, int64_t r0, int64_t r1) {
    (void)isa;
    (void)y, (void)scratch, (void)w, (void)b, (void)M, (void)r0, (void)r1;
}
