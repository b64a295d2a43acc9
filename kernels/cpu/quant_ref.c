/* quant_ref.c — the reference side of kernels/quant.h: layouts, quantizers, dequantizers and the plain linear.
 * No intrinsics; every fast kernel and every file reader is checked against this file. */
#include "kernels/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/util.h"

/* ---------------------------------------------------------------------------------------------------------------
 * names and layouts
 * ------------------------------------------------------------------------------------------------------------- */

static const char *const qformat_names[VLM_QF_COUNT] = {"f32", "f16", "bf16", "q8r", "w3g128", "w4g128", "w4a8"};

const char *vlm_qformat_name(enum vlm_qformat f) {
    return (unsigned)f < VLM_QF_COUNT ? qformat_names[f] : "?";
}

int vlm_qformat_from_name(const char *s) {
    for (int i = 0; i < VLM_QF_COUNT; i++)
        if (s && strcmp(s, qformat_names[i]) == 0) return i;
    return -1;
}

static bool align_up(size_t x, size_t *out) {
    if (x > SIZE_MAX - (VLM_QALIGN - 1)) return false;
    *out = (x + VLM_QALIGN - 1) / VLM_QALIGN * VLM_QALIGN;
    return true;
}

/* Appends a plane of `bytes` bytes at the running aligned offset *pos; *end receives its unpadded end. */
static bool add_plane(size_t *pos, size_t bytes, size_t *off, size_t *size, size_t *end) {
    if (!vlm_size_add(*pos, bytes, end)) return false;
    *off = *pos;
    *size = bytes;
    return align_up(*end, pos);
}

bool vlm_qlayout(enum vlm_qformat f, int64_t n, int64_t k, struct vlm_qlayout *out, const char **why) {
    const char *dummy;
    if (!why) why = &dummy;
    if ((unsigned)f >= VLM_QF_COUNT) {
        *why = "unknown format";
        return false;
    }
    if (n < 1 || k < 1) {
        *why = "a dimension is < 1";
        return false;
    }
    bool packed = f == VLM_QF_W3G128 || f == VLM_QF_W4G128 || f == VLM_QF_W4A8;
    if (packed && k % VLM_QGROUP != 0) {
        *why = "the input dimension is not a multiple of 128";
        return false;
    }
    struct vlm_qlayout L = {0};
    size_t nk, pos = 0, elem, end = 0;
    if (!vlm_size_mul((size_t)n, (size_t)k, &nk)) goto overflow;
    L.n_groups = packed ? k / VLM_QGROUP : 0;
    size_t ng = packed ? (size_t)n * (size_t)L.n_groups : 0; /* <= n*k, no overflow */
    switch (f) {
    case VLM_QF_F32:
    case VLM_QF_F16:
    case VLM_QF_BF16:
        elem = f == VLM_QF_F32 ? 4 : 2;
        if (!vlm_size_mul(nk, elem, &elem) || !add_plane(&pos, elem, &L.codes_off, &L.codes_bytes, &end)) goto overflow;
        break;
    case VLM_QF_Q8R:
        if (!add_plane(&pos, nk, &L.codes_off, &L.codes_bytes, &end) ||
            !add_plane(&pos, (size_t)n * 4, &L.scales_off, &L.scales_bytes, &end))
            goto overflow;
        break;
    case VLM_QF_W3G128:
    case VLM_QF_W4G128:
        elem = f == VLM_QF_W3G128 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES;
        if (!vlm_size_mul(ng, elem, &elem) || !add_plane(&pos, elem, &L.codes_off, &L.codes_bytes, &end) ||
            !add_plane(&pos, ng * 2, &L.scales_off, &L.scales_bytes, &end) ||
            !add_plane(&pos, ng, &L.zeros_off, &L.zeros_bytes, &end))
            goto overflow;
        break;
    case VLM_QF_W4A8:
        if (!vlm_size_mul(ng, VLM_W4_BLOCK_BYTES, &elem) || !add_plane(&pos, elem, &L.codes_off, &L.codes_bytes, &end) ||
            !add_plane(&pos, (size_t)n * 4, &L.scales_off, &L.scales_bytes, &end))
            goto overflow;
        break;
    default: VLM_ASSERT(!"unreachable");
    }
    L.total_bytes = end; /* the last plane's end: no tail padding, so a plain f16 matrix is exactly n*k*2 bytes */
    *out = L;
    return true;
overflow:
    *why = "the size overflows";
    return false;
}

bool vlm_qmat_view(enum vlm_qformat f, int64_t n, int64_t k, const void *base, size_t blob_bytes,
                   struct vlm_qmat *out, const char **why) {
    struct vlm_qlayout L;
    if (!vlm_qlayout(f, n, k, &L, why)) return false;
    if (L.total_bytes != blob_bytes) {
        if (why) *why = "the byte size does not match the format and shape";
        return false;
    }
    if ((uintptr_t)base % VLM_QALIGN != 0) {
        if (why) *why = "the data is not 64-byte aligned";
        return false;
    }
    const unsigned char *p = base;
    *out = (struct vlm_qmat){.fmt = f, .n = n, .k = k, .codes = p + L.codes_off,
                             .scales = L.scales_bytes ? p + L.scales_off : NULL,
                             .zeros = L.zeros_bytes ? p + L.zeros_off : NULL};
    return true;
}

/* ---------------------------------------------------------------------------------------------------------------
 * scalar conversions
 * ------------------------------------------------------------------------------------------------------------- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

uint16_t vlm_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or NaN (payload's top bits kept, quiet bit forced) */
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {
        /* result is subnormal or zero: value / 2^-24, rounded to nearest even, as an integer mantissa */
        if (a < 0x33000000u) return sign; /* < 2^-25: rounds to 0 (2^-25 exactly is a tie to even 0) */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* 14 .. 24: bits to drop to express value in units of 2^-24 */
        uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias 127 -> 15, drop 13 mantissa bits with round to nearest even (carry may bump the exponent) */
    uint32_t r = a - 0x38000000u;
    uint32_t q = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

uint16_t vlm_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    uint32_t rem = u & 0xffffu, q = u >> 16;
    if (rem > 0x8000u || (rem == 0x8000u && (q & 1))) q++;
    return (uint16_t)q;
}

/* ---------------------------------------------------------------------------------------------------------------
 * code packing
 * ------------------------------------------------------------------------------------------------------------- */

static void pack_w3(const uint8_t q[128], uint8_t blk[48]) {
    memset(blk, 0, 48);
    for (int i = 0; i < 128; i++) {
        blk[i % 32] |= (uint8_t)((q[i] & 3) << (2 * (i / 32)));
        blk[32 + i / 8] |= (uint8_t)(((q[i] >> 2) & 1) << (i % 8));
    }
}

static void unpack_w3(const uint8_t blk[48], uint8_t q[128]) {
    for (int i = 0; i < 128; i++)
        q[i] = (uint8_t)(((blk[i % 32] >> (2 * (i / 32))) & 3) | (((blk[32 + i / 8] >> (i % 8)) & 1) << 2));
}

static void pack_w4(const uint8_t q[128], uint8_t blk[64]) {
    for (int b = 0; b < 64; b++) blk[b] = (uint8_t)((q[b] & 15) | (q[b + 64] & 15) << 4);
}

static void unpack_w4(const uint8_t blk[64], uint8_t q[128]) {
    for (int i = 0; i < 128; i++) q[i] = (uint8_t)(i < 64 ? blk[i] & 15 : blk[i - 64] >> 4);
}

static uint16_t rd16(const void *p, size_t i) {
    uint16_t v;
    memcpy(&v, (const unsigned char *)p + 2 * i, 2);
    return v;
}

static float rdf32(const void *p, size_t i) {
    float v;
    memcpy(&v, (const unsigned char *)p + 4 * i, 4);
    return v;
}

/* ---------------------------------------------------------------------------------------------------------------
 * quantizers
 * ------------------------------------------------------------------------------------------------------------- */

static float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

/* One asymmetric group (mbq.md §2.1) with the scale rounded to fp16 first. */
static void quant_group_asym(const float *w, int bits, uint8_t q[128], uint16_t *s16_out, uint8_t *z_out) {
    const float Q = (float)((1 << bits) - 1);
    float mx = w[0], mn = w[0];
    for (int i = 1; i < 128; i++) {
        mx = w[i] > mx ? w[i] : mx;
        mn = w[i] < mn ? w[i] : mn;
    }
    float range = mx - mn;
    float s = (range > 1e-5f ? range : 1e-5f) / Q;
    uint16_t s16 = vlm_f32_to_f16(s);
    if ((s16 & 0x7c00u) == 0x7c00u) s16 = 0x7bffu; /* beyond fp16's range: clamp to 65504 */
    float sq = vlm_f16_to_f32(s16);
    float z = clampf(-rintf(mn / sq), 0.0f, Q);
    for (int i = 0; i < 128; i++) q[i] = (uint8_t)clampf(rintf(w[i] / sq) + z, 0.0f, Q);
    *s16_out = s16;
    *z_out = (uint8_t)z;
}

static float row_absmax(const float *w, int64_t k) {
    float m = 0.0f;
    for (int64_t i = 0; i < k; i++) m = fabsf(w[i]) > m ? fabsf(w[i]) : m;
    return m;
}

void vlm_quantize_ref(enum vlm_qformat f, const float *w, int64_t n, int64_t k, void *blob) {
    struct vlm_qlayout L;
    VLM_ASSERT(vlm_qlayout(f, n, k, &L, NULL));
    unsigned char *base = blob;
    memset(base, 0, L.total_bytes);
    unsigned char *codes = base + L.codes_off, *scales = base + L.scales_off, *zeros = base + L.zeros_off;
    for (int64_t r = 0; r < n; r++) {
        const float *row = w + r * k;
        switch (f) {
        case VLM_QF_F32: memcpy(codes + (size_t)r * k * 4, row, (size_t)k * 4); break;
        case VLM_QF_F16:
        case VLM_QF_BF16:
            for (int64_t i = 0; i < k; i++) {
                uint16_t h = f == VLM_QF_F16 ? vlm_f32_to_f16(row[i]) : vlm_f32_to_bf16(row[i]);
                memcpy(codes + ((size_t)r * k + i) * 2, &h, 2);
            }
            break;
        case VLM_QF_Q8R: {
            float amax = row_absmax(row, k), s = (amax > 1e-5f ? amax : 1e-5f) / 127.0f;
            for (int64_t i = 0; i < k; i++)
                ((int8_t *)codes)[(size_t)r * k + i] = (int8_t)clampf(rintf(row[i] / s), -127.0f, 127.0f);
            memcpy(scales + (size_t)r * 4, &s, 4);
            break;
        }
        case VLM_QF_W3G128:
        case VLM_QF_W4G128: {
            int bits = f == VLM_QF_W3G128 ? 3 : 4;
            size_t bb = f == VLM_QF_W3G128 ? VLM_W3_BLOCK_BYTES : VLM_W4_BLOCK_BYTES;
            for (int64_t g = 0; g < L.n_groups; g++) {
                uint8_t q[128], z;
                uint16_t s16;
                quant_group_asym(row + g * 128, bits, q, &s16, &z);
                size_t gi = (size_t)r * L.n_groups + g;
                if (bits == 3) pack_w3(q, codes + gi * bb);
                else pack_w4(q, codes + gi * bb);
                memcpy(scales + gi * 2, &s16, 2);
                zeros[gi] = z;
            }
            break;
        }
        case VLM_QF_W4A8: {
            float amax = row_absmax(row, k), s = (amax > 1e-5f ? amax : 1e-5f) / 7.0f;
            for (int64_t g = 0; g < L.n_groups; g++) {
                uint8_t u[128];
                for (int i = 0; i < 128; i++) u[i] = (uint8_t)(clampf(rintf(row[g * 128 + i] / s), -8.0f, 7.0f) + 8);
                pack_w4(u, codes + ((size_t)r * L.n_groups + g) * VLM_W4_BLOCK_BYTES);
            }
            memcpy(scales + (size_t)r * 4, &s, 4);
            break;
        }
        default: VLM_ASSERT(!"unreachable");
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * dequantizers and checks
 * ------------------------------------------------------------------------------------------------------------- */

void vlm_dequantize_row_ref(const struct vlm_qmat *m, int64_t r, float *out) {
    const int64_t k = m->k, ng = k / VLM_QGROUP;
    const unsigned char *codes = m->codes;
    switch (m->fmt) {
    case VLM_QF_F32:
        for (int64_t i = 0; i < k; i++) out[i] = rdf32(codes, (size_t)(r * k + i));
        return;
    case VLM_QF_F16:
        for (int64_t i = 0; i < k; i++) out[i] = vlm_f16_to_f32(rd16(codes, (size_t)(r * k + i)));
        return;
    case VLM_QF_BF16:
        for (int64_t i = 0; i < k; i++) out[i] = vlm_bf16_to_f32(rd16(codes, (size_t)(r * k + i)));
        return;
    case VLM_QF_Q8R: {
        float s = rdf32(m->scales, (size_t)r);
        for (int64_t i = 0; i < k; i++) out[i] = (float)((const int8_t *)codes)[r * k + i] * s;
        return;
    }
    case VLM_QF_W3G128:
    case VLM_QF_W4G128:
        for (int64_t g = 0; g < ng; g++) {
            size_t gi = (size_t)(r * ng + g);
            uint8_t q[128];
            if (m->fmt == VLM_QF_W3G128) unpack_w3(codes + gi * VLM_W3_BLOCK_BYTES, q);
            else unpack_w4(codes + gi * VLM_W4_BLOCK_BYTES, q);
            float s = vlm_f16_to_f32(rd16(m->scales, gi));
            int z = m->zeros[gi];
            for (int i = 0; i < 128; i++) out[g * 128 + i] = (float)((int)q[i] - z) * s;
        }
        return;
    case VLM_QF_W4A8: {
        float s = rdf32(m->scales, (size_t)r);
        for (int64_t g = 0; g < ng; g++) {
            uint8_t u[128];
            unpack_w4(codes + (size_t)(r * ng + g) * VLM_W4_BLOCK_BYTES, u);
            for (int i = 0; i < 128; i++) out[g * 128 + i] = (float)((int)u[i] - 8) * s;
        }
        return;
    }
    default: VLM_ASSERT(!"unreachable");
    }
}

bool vlm_qmat_check(const struct vlm_qmat *m, const char **why) {
    static char msg[128];
    const int64_t n = m->n, k = m->k, ng = k / VLM_QGROUP;
    switch (m->fmt) {
    case VLM_QF_F32:
    case VLM_QF_F16:
    case VLM_QF_BF16: {
        float *row = malloc((size_t)k * sizeof(float));
        if (!row) {
            *why = "out of memory while checking values";
            return false;
        }
        for (int64_t r = 0; r < n; r++) {
            vlm_dequantize_row_ref(m, r, row);
            for (int64_t i = 0; i < k; i++)
                if (!isfinite(row[i])) {
                    snprintf(msg, sizeof msg, "row %lld holds a NaN or infinite value", (long long)r);
                    free(row);
                    *why = msg;
                    return false;
                }
        }
        free(row);
        return true;
    }
    case VLM_QF_Q8R:
    case VLM_QF_W4A8:
        for (int64_t r = 0; r < n; r++) {
            float s = rdf32(m->scales, (size_t)r);
            if (!isfinite(s) || !(s > 0.0f)) {
                snprintf(msg, sizeof msg, "row %lld has scale %g (must be finite and > 0)", (long long)r, s);
                *why = msg;
                return false;
            }
        }
        return true;
    case VLM_QF_W3G128:
    case VLM_QF_W4G128: {
        int Q = m->fmt == VLM_QF_W3G128 ? 7 : 15;
        for (int64_t gi = 0; gi < n * ng; gi++) {
            float s = vlm_f16_to_f32(rd16(m->scales, (size_t)gi));
            if (!isfinite(s) || s < 0.0f || m->zeros[gi] > Q) {
                snprintf(msg, sizeof msg, "row %lld group %lld has scale %g and zero %d (zero must be <= %d)",
                         (long long)(gi / ng), (long long)(gi % ng), s, m->zeros[gi], Q);
                *why = msg;
                return false;
            }
        }
        return true;
    }
    default: *why = "unknown format"; return false;
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * activation quantization and the reference linear
 * ------------------------------------------------------------------------------------------------------------- */

float vlm_quantize_act_q8_ref(const float *x, int64_t k, int8_t *a) {
    float amax = row_absmax(x, k), s = (amax > 1e-5f ? amax : 1e-5f) / 127.0f;
    for (int64_t i = 0; i < k; i++) a[i] = (int8_t)clampf(rintf(x[i] / s), -128.0f, 127.0f);
    return s;
}

void cpu_qlinear_ref(float *y, const float *x, const struct vlm_qmat *w, const float *b, int64_t M) {
    const int64_t n = w->n, k = w->k;
    if (w->fmt == VLM_QF_W4A8) {
        int8_t *a = malloc((size_t)k);
        VLM_ASSERT(a);
        for (int64_t t = 0; t < M; t++) {
            float st = vlm_quantize_act_q8_ref(x + t * k, k, a);
            for (int64_t o = 0; o < n; o++) {
                /* the codes, not ŵ: recover u − 8 from ŵ / s_row would round; unpack directly instead */
                const unsigned char *blk = (const unsigned char *)w->codes + (size_t)o * (size_t)(k / 2);
                int64_t acc = 0;
                for (int64_t i = 0; i < k; i++) {
                    int64_t g = i / 128, j = i % 128;
                    int u = j < 64 ? blk[g * 64 + j] & 15 : blk[g * 64 + j - 64] >> 4;
                    acc += (int64_t)a[i] * (u - 8);
                }
                float so = rdf32(w->scales, (size_t)o);
                y[t * n + o] = (st * so) * (float)acc + (b ? b[o] : 0.0f);
            }
        }
        free(a);
        return;
    }
    float *wr = malloc((size_t)k * sizeof(float));
    VLM_ASSERT(wr);
    for (int64_t o = 0; o < n; o++) {
        vlm_dequantize_row_ref(w, o, wr);
        for (int64_t t = 0; t < M; t++) {
            const float *xt = x + t * k;
            double acc = b ? (double)b[o] : 0.0; /* as cpu_linear_ref: same order, so f32 results are identical */
            for (int64_t i = 0; i < k; i++) acc += (double)xt[i] * (double)wr[i];
            y[t * n + o] = (float)acc;
        }
    }
    free(wr);
}
