/* quant.h — the weight formats, defined once: block layouts, reference quantizers (shared/spec/mbq.md §2) and
 * reference dequantizers, used by the converter, the CPU kernels, the .mbq file and (later) the CUDA kernels.
 *
 * A weight matrix is W (n, k): n output rows, k input columns, row-major as HF's Linear stores it; y = x·Wᵀ.
 * A matrix in any format is ONE blob of bytes made of planes; vlm_qlayout() gives each plane's offset and the
 * blob's size from (format, n, k) alone, so a file entry with a format and a shape has exactly one valid size.
 * Every plane starts at a multiple of VLM_QALIGN bytes inside the blob (blobs themselves are VLM_QALIGN-aligned
 * in a .mbq file and in memory), so kernels may use aligned 64-byte loads on row starts where the row size allows.
 *
 * Formats and bits per weight (k = 3584):
 *   F32    4 B      F16 2 B      BF16 2 B                                       any k >= 1
 *   Q8R    int8 symmetric per row, f32 row scale                   8.0 (+32/k)   any k >= 1
 *   W3G128 3-bit asymmetric, group 128 along k, fp16 scale, u8 zero 3.1875       k % 128 == 0
 *   W4G128 4-bit asymmetric, group 128 along k, fp16 scale, u8 zero 4.1875       k % 128 == 0
 *   W4A8   int4 symmetric per row (codes biased +8), f32 row scale 4.0 (+32/k)   k % 128 == 0
 *          activations: int8 symmetric per token, computed on the fly by the kernel (mbq.md §2.2)
 *
 * ---- W3G128: one 48-byte code block per (row, group); planes: codes (n, k/128, 48) | scales f16 (n, k/128) |
 *      zeros u8 (n, k/128). The 3-bit code q of column j = 128·g + i (i = 0..127) is split into bit planes:
 *
 *        block byte  0 .. 31  "lo": 2-bit low parts, four per byte, STRIDED by 32:
 *             byte b (0..31) = q[b] & 3 | (q[b+32] & 3) << 2 | (q[b+64] & 3) << 4 | (q[b+96] & 3) << 6
 *        block byte 32 .. 47  "hi": the third bits as one 128-bit little-endian mask:
 *             bit i of bytes 32..47 (byte 32 + i/8, bit i%8) = q[i] >> 2
 *
 *        lo: | b0: q0 q32 q64 q96 | b1: q1 q33 q65 q97 | ... | b31: q31 q63 q95 q127 |   (2 bits each, LSB first)
 *        hi: | b32: q0..q7 | b33: q8..q15 | ... | b47: q120..q127 |                    (1 bit each, LSB first)
 *
 *      Why: with AVX-512, one 32-byte load of lo, shifted by 0/2/4/6 and masked with 3, yields the low bits of
 *      four runs of 32 CONSECUTIVE columns (no shuffles), and the hi plane is a ready-made __mmask64 pair for a
 *      masked add of 4. On CUDA the block is three 16-byte words (lo0, lo1, hi): a thread that loads lo word w
 *      owns columns 16w..16w+15 (+32, +64, +96) and finds their third bits at fixed bit offsets of the hi word,
 *      so a warp reads 48 contiguous bytes per group with 16-byte loads — fully coalesced; the CUDA backend may
 *      still repack at load time. 3 bits never straddle a byte, unlike the paper's "8 codes in 3 bytes".
 *
 * ---- W4G128: one 64-byte code block per (row, group); planes: codes (n, k/128, 64) | scales | zeros as W3.
 *             byte b (0..63) = q[b] | q[b+64] << 4
 *      Why: one 64-byte load, `& 15` gives columns 0..63, `>> 4 & 15` gives 64..127 — consecutive runs again.
 *
 *      Both g128 formats dequantize as ŵ = (q − z) · s with s the stored fp16 scale widened to f32 and z the
 *      stored integer zero; (q − z) is a small integer and s has 11 significant bits, so the product is exact
 *      in f32 and the canonical ŵ is bit-identical everywhere (mbq.md §2.1 "[ours]": the (q − z)·s form is
 *      canonical; no precomputed −z·s is stored). Kernels use Σ(q−z)·s·x = s·(Σ q·x − z·Σ x).
 *
 * ---- W4A8: codes as W4G128 (64-byte blocks of biased codes u = q + 8 in 0..15, q in −8..7) | row scales f32 (n).
 *      ŵ = (u − 8) · s_row. At run time each token row x_t is quantized: s_t = max(max|x_t|, 1e-5) / 127,
 *      a = clamp(rint(x_t / s_t), −128, 127); y = s_t · s_row · Σ a·(u − 8) (int32, exact) + b. The unsigned
 *      code u is exactly the u8 operand of VNNI's vpdpbusd (u8 × s8): Σ a·(u−8) = Σ a·u − 8·Σ a.
 *
 * ---- Q8R: codes int8 (n, k) | row scales f32 (n); ŵ = q · s_row; s_row = max(max|w_row|, 1e-5) / 127.
 *      For the embedding table and lm_head (an extension beyond MBQ, targets.md §2.2).
 */
#ifndef VLM_QUANT_H
#define VLM_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VLM_QALIGN 64   /* every plane and every blob starts at a multiple of this */
#define VLM_QGROUP 128  /* group size of the g128 formats and the k granularity of the packed formats */
#define VLM_W3_BLOCK_BYTES 48
#define VLM_W4_BLOCK_BYTES 64
#ifdef __cplusplus /* the CUDA backend's .cu files include this header as C++ */
static_assert(VLM_W3_BLOCK_BYTES * 8 == VLM_QGROUP * 3, "W3 block holds 128 3-bit codes");
static_assert(VLM_W4_BLOCK_BYTES * 8 == VLM_QGROUP * 4, "W4 block holds 128 4-bit codes");
extern "C" {
#else
_Static_assert(VLM_W3_BLOCK_BYTES * 8 == VLM_QGROUP * 3, "W3 block holds 128 3-bit codes");
_Static_assert(VLM_W4_BLOCK_BYTES * 8 == VLM_QGROUP * 4, "W4 block holds 128 4-bit codes");
#endif

enum vlm_qformat {
    VLM_QF_F32 = 0,
    VLM_QF_F16,
    VLM_QF_BF16,
    VLM_QF_Q8R,
    VLM_QF_W3G128,
    VLM_QF_W4G128,
    VLM_QF_W4A8,
    VLM_QF_COUNT
};

/* "f32", "f16", "bf16", "q8r", "w3g128", "w4g128", "w4a8" — the names used in .mbq headers and messages. */
const char *vlm_qformat_name(enum vlm_qformat f);
/* The format named s, or -1. */
int vlm_qformat_from_name(const char *s);

/* Plane offsets (bytes from the blob start) and the blob size of an (n, k) matrix. Unused planes have size 0. */
struct vlm_qlayout {
    size_t codes_off, codes_bytes;   /* values (F32/F16/BF16), int8 codes (Q8R) or code blocks (W3/W4/W4A8) */
    size_t scales_off, scales_bytes; /* fp16 group scales (W3/W4G128) or f32 row scales (Q8R, W4A8) */
    size_t zeros_off, zeros_bytes;   /* u8 group zeros (W3/W4G128) */
    size_t total_bytes;              /* end of the last plane (no tail padding): n*k*elem for F32/F16/BF16 */
    int64_t n_groups;                /* k / 128 for the packed formats, else 0 */
};

/* Fills *out for format f and shape (n, k). False — with a one-line reason in why (may be NULL) — when n < 1,
 * k < 1, k is not a multiple of 128 for a packed format, or a size overflows size_t. */
bool vlm_qlayout(enum vlm_qformat f, int64_t n, int64_t k, struct vlm_qlayout *out, const char **why);

/* A read-only view of one matrix in one format; pointers into a blob laid out by vlm_qlayout. */
struct vlm_qmat {
    enum vlm_qformat fmt;
    int64_t n, k;
    const void *codes;          /* see the format table above */
    const void *scales;         /* const uint16_t * (fp16, (n, k/128)) or const float * ((n)), or NULL */
    const uint8_t *zeros;       /* (n, k/128) or NULL */
};

/* View of a blob of blob_bytes bytes at base (which must be VLM_QALIGN-aligned). False with a reason when the
 * size does not match the layout or base is misaligned. No values are checked (see vlm_qmat_check). */
bool vlm_qmat_view(enum vlm_qformat f, int64_t n, int64_t k, const void *base, size_t blob_bytes,
                   struct vlm_qmat *out, const char **why);

/* Checks the values a file could make hostile or meaningless: scales finite and >= 0 (and > 0 for the row
 * scales), zeros <= 2^bits − 1, F32/F16/BF16 values finite. False with a reason naming the row. */
bool vlm_qmat_check(const struct vlm_qmat *m, const char **why);

/* ---- Reference quantizers (mbq.md §2, round half to even via rintf, computed in f32):
 *   W3G128/W4G128: per (row, group): mx, mn; s = max(mx − mn, 1e-5) / Q; s is rounded to fp16 first and the codes
 *     are derived from that fp16 value: z = clamp(−rint(mn / s16), 0, Q), q = clamp(rint(w / s16) + z, 0, Q).
 *     An fp16 overflow of s (|w| > ~1e8) is clamped to the largest fp16; s16 is never 0 (smallest s is 1e-5/Q,
 *     above fp16's smallest subnormal).
 *   W4A8: s = max(max|w_row|, 1e-5) / 7 (f32), q = clamp(rint(w / s), −8, 7), stored u = q + 8.
 *   Q8R:  s = max(max|w_row|, 1e-5) / 127 (f32), q = clamp(rint(w / s), −127, 127).
 *   F16/BF16: round to nearest even (BF16: NaN stays NaN); F32: copy.
 * w (n, k) f32; blob: vlm_qlayout(f, n, k).total_bytes bytes, VLM_QALIGN-aligned; padding bytes are zeroed so
 * the same input always gives the same bytes. Rows are independent. */
void vlm_quantize_ref(enum vlm_qformat f, const float *w, int64_t n, int64_t k, void *blob);

/* out (k) = ŵ of row r, the canonical dequantized values defined above. */
void vlm_dequantize_row_ref(const struct vlm_qmat *m, int64_t r, float *out);

/* ---- Scalar conversions (round to nearest even; NaN preserved). */
uint16_t vlm_f32_to_f16(float f);
uint16_t vlm_f32_to_bf16(float f);
float vlm_f16_to_f32(uint16_t h);   /* also declared in runtime/safetensors.h; defined there */
float vlm_bf16_to_f32(uint16_t b);

/* ---- Per-token int8 activation quantization of W4A8 (mbq.md §2.2): x (k) → a (k) int8, returns s_t. */
float vlm_quantize_act_q8_ref(const float *x, int64_t k, int8_t *a);

/* ---- Reference linear: y (M, n) = x (M, k) · Ŵᵀ + b, b (n) or NULL.
 *   F32/F16/BF16/Q8R/W3G128/W4G128: Ŵ = the canonical dequantized weights; each dot product accumulated in
 *     double starting from b, in index order, rounded to f32 once — exactly cpu_linear_ref's arithmetic, so an
 *     F32 matrix gives identical results through either.
 *   W4A8: the integer form above: a = act-quantized x_t, acc = Σ a·(u−8) in int64,
 *     y = (float)(s_t · s_row) · (float)acc + b  — s_t·s_row is one f32 product, then one f32 product.
 * Slow and obviously correct; every fast kernel is checked against it. */
void cpu_qlinear_ref(float *y, const float *x, const struct vlm_qmat *w, const float *b, int64_t M);

#ifdef __cplusplus
}
#endif
#endif
