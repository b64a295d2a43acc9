// cuda_bf16.h (CPU emulator, tests/cuda_emu) — __nv_bfloat16 and __nv_bfloat162: conversions (round to nearest
// even; NaN -> canonical 0x7fff) and float-rounded arithmetic.
#ifndef CUDA_EMU_BF16_H
#define CUDA_EMU_BF16_H

#include "cuda_fp16.h"

inline uint16_t emu_f32_to_bf16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16); // overflow carries into inf, as it should
}

inline float emu_bf16_bits_to_f32(uint16_t b) {
    const uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

struct __nv_bfloat16_raw {
    unsigned short x;
};

struct __align__(2) __nv_bfloat16 {
    unsigned short emu_bits;
    __nv_bfloat16() = default;
    __nv_bfloat16(__nv_bfloat16_raw r) : emu_bits(r.x) {}
    __nv_bfloat16(float f) : emu_bits(emu_f32_to_bf16_bits(f)) {}
    operator float() const { return emu_bf16_bits_to_f32(emu_bits); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{emu_bits}; }
};
typedef __nv_bfloat16 nv_bfloat16;

struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 emu_bf16(uint16_t b) { return __nv_bfloat16(__nv_bfloat16_raw{b}); }
inline __nv_bfloat16 __float2bfloat16(float f) { return emu_bf16(emu_f32_to_bf16_bits(f)); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return emu_bf16(emu_f32_to_bf16_bits(f)); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu_bf16_bits_to_f32(b.emu_bits); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return emu_bf16(b); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.emu_bits; }
inline __half __bfloat162half(__nv_bfloat16 b) {
    return __float2half_rn(__bfloat162float(b));
} // exact float, one rounding
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return float2{__bfloat162float(b.x), __bfloat162float(b.y)}; }
inline float __low2float(__nv_bfloat162 b) { return __bfloat162float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return __bfloat162float(b.y); }

// a bf16 product is exact in float (8 x 8 bits), a sum rounds once in float, then once to bf16: as the device's
// fma.rn.bf16 only where the float step is exact; close enough for references that accumulate in float anyway
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16_rn((float)a + (float)b); }
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16_rn((float)a - (float)b); }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16_rn((float)a * (float)b); }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return __float2bfloat16_rn((float)a * (float)b + (float)c);
}

#endif
