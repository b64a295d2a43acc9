// cuda_fp16.h (CPU emulator, tests/cuda_emu) — __half and __half2 with the conversions and arithmetic intrinsics our
// kernels use. Conversions are the emulator's own bit-exact IEEE binary16 code (round to nearest even, subnormals,
// overflow to inf, NaN -> canonical 0x7fff as the device's cvt), independent of the project's vlm_f32_to_f16, so a
// bug there does not hide behind the emulator.
#ifndef CUDA_EMU_FP16_H
#define CUDA_EMU_FP16_H

#include "cuda_runtime.h"

inline uint16_t emu_f32_to_f16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                     // NaN
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax >= 0x38800000u) { // normal half: rebias 127 -> 15, round the 13 dropped bits
        const uint32_t r = ax - 0x38000000u;
        return (uint16_t)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
    }
    if (ax <= 0x33000000u) return (uint16_t)sign; // <= 2^-25 (the tie rounds to even: 0)
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e; // subnormal: m * 2^(e-126) units
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

inline float emu_f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0) {
        const float f = (float)m * 0x1p-24f; // exact
        memcpy(&x, &f, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

struct __half_raw {
    unsigned short x;
};

struct __align__(2) __half {
    unsigned short emu_bits;
    __half() = default;
    __half(__half_raw r) : emu_bits(r.x) {}
    __half(float f) : emu_bits(emu_f32_to_f16_bits(f)) {}
    __half(double f)
        : emu_bits(emu_f32_to_f16_bits((float)f)) {} // double rounding, as the device's __double2half is not
    __half(int i) : emu_bits(emu_f32_to_f16_bits((float)i)) {}
    operator float() const { return emu_f16_bits_to_f32(emu_bits); }
    operator __half_raw() const { return __half_raw{emu_bits}; }
};
typedef __half half;

struct __align__(4) __half2 {
    __half x, y;
};
typedef __half2 half2;

inline __half emu_half_bits(uint16_t b) { return __half(__half_raw{b}); }
inline __half __float2half(float f) { return emu_half_bits(emu_f32_to_f16_bits(f)); }
inline __half __float2half_rn(float f) { return emu_half_bits(emu_f32_to_f16_bits(f)); }
inline __half __float2half_rz(float f) { // toward zero: the largest-magnitude half not beyond f
    const __half r = __float2half_rn(f);
    const float rf = emu_f16_bits_to_f32(r.emu_bits);
    if (f != f || fabsf(rf) <= fabsf(f)) return r;
    return emu_half_bits((uint16_t)(r.emu_bits - 1)); // one step toward zero (the bits are sign-magnitude)
}
inline __half __double2half(double d) { return __float2half_rn((float)d); }
inline float __half2float(__half h) { return emu_f16_bits_to_f32(h.emu_bits); }
inline __half __int2half_rn(int i) { return __float2half_rn((float)i); }
inline int __half2int_rn(__half h) { return (int)nearbyintf(__half2float(h)); }
inline int __half2int_rz(__half h) { return (int)__half2float(h); }
inline __half __ushort_as_half(unsigned short b) { return emu_half_bits(b); }
inline unsigned short __half_as_ushort(__half h) { return h.emu_bits; }
inline __half __short_as_half(short b) { return emu_half_bits((uint16_t)b); }
inline short __half_as_short(__half h) { return (short)h.emu_bits; }

inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 make_half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__float2half_rn(a), __float2half_rn(a)}; }
inline __half2 __half2half2(__half a) { return __half2{a, a}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2{a.x, b.x}; }
inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2{a.y, b.y}; }

// arithmetic: exact in double (a half has 11 significant bits and a 40-binade range), then rounded to half through
// float; the float step rounds only sums that span more than 24 bits, which are never near a half rounding tie
inline double emu_hd(__half h) { return (double)__half2float(h); }
inline __half __hadd(__half a, __half b) { return __float2half_rn((float)(emu_hd(a) + emu_hd(b))); }
inline __half __hsub(__half a, __half b) { return __float2half_rn((float)(emu_hd(a) - emu_hd(b))); }
inline __half __hmul(__half a, __half b) { return __float2half_rn((float)(emu_hd(a) * emu_hd(b))); }
inline __half __hdiv(__half a, __half b) { return __float2half_rn((float)(emu_hd(a) / emu_hd(b))); }
inline __half __hfma(__half a, __half b, __half c) {
    return __float2half_rn((float)(emu_hd(a) * emu_hd(b) + emu_hd(c)));
}
inline __half __hneg(__half a) { return emu_half_bits((uint16_t)(a.emu_bits ^ 0x8000u)); }
inline __half __habs(__half a) { return emu_half_bits((uint16_t)(a.emu_bits & 0x7fffu)); }
inline bool __hisnan(__half a) { return (a.emu_bits & 0x7c00u) == 0x7c00u && (a.emu_bits & 0x3ffu); }
inline int __hisinf(__half a) { return (a.emu_bits & 0x7fffu) == 0x7c00u ? (a.emu_bits & 0x8000u ? -1 : 1) : 0; }
inline __half __hmax(__half a, __half b) { return __hisnan(a) ? b : __hisnan(b) ? a : emu_hd(a) >= emu_hd(b) ? a : b; }
inline __half __hmin(__half a, __half b) { return __hisnan(a) ? b : __hisnan(b) ? a : emu_hd(a) <= emu_hd(b) ? a : b; }
inline bool __heq(__half a, __half b) { return emu_hd(a) == emu_hd(b); }
inline bool __hne(__half a, __half b) { return emu_hd(a) != emu_hd(b) && !__hisnan(a) && !__hisnan(b); }
inline bool __hlt(__half a, __half b) { return emu_hd(a) < emu_hd(b); }
inline bool __hle(__half a, __half b) { return emu_hd(a) <= emu_hd(b); }
inline bool __hgt(__half a, __half b) { return emu_hd(a) > emu_hd(b); }
inline bool __hge(__half a, __half b) { return emu_hd(a) >= emu_hd(b); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __h2div(__half2 a, __half2 b) { return __half2{__hdiv(a.x, b.x), __hdiv(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2{__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
inline __half2 __hmin2(__half2 a, __half2 b) { return __half2{__hmin(a.x, b.x), __hmin(a.y, b.y)}; }
inline __half2 __hneg2(__half2 a) { return __half2{__hneg(a.x), __hneg(a.y)}; }
inline __half2 __habs2(__half2 a) { return __half2{__habs(a.x), __habs(a.y)}; }

inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
inline __half &operator+=(__half &a, __half b) { return a = __hadd(a, b); }
inline __half &operator-=(__half &a, __half b) { return a = __hsub(a, b); }
inline __half &operator*=(__half &a, __half b) { return a = __hmul(a, b); }
inline __half &operator/=(__half &a, __half b) { return a = __hdiv(a, b); }
inline bool operator==(__half a, __half b) { return __heq(a, b); }
inline bool operator!=(__half a, __half b) { return __hne(a, b); }
inline bool operator<(__half a, __half b) { return __hlt(a, b); }
inline bool operator<=(__half a, __half b) { return __hle(a, b); }
inline bool operator>(__half a, __half b) { return __hgt(a, b); }
inline bool operator>=(__half a, __half b) { return __hge(a, b); }
inline __half2 operator+(__half2 a, __half2 b) { return __hadd2(a, b); }
inline __half2 operator-(__half2 a, __half2 b) { return __hsub2(a, b); }
inline __half2 operator*(__half2 a, __half2 b) { return __hmul2(a, b); }
inline __half2 &operator+=(__half2 &a, __half2 b) { return a = __hadd2(a, b); }
inline __half2 &operator*=(__half2 &a, __half2 b) { return a = __hmul2(a, b); }

#endif
