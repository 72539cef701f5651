/* ggml's reference quantizers of the legacy 32-weight block types, in C (see legacy_native.py).
 *
 * Transcribed from ggml-quants.c (quantize_row_q4_0_ref, q4_1, q5_0, q5_1, q8_0) and
 * ggml_compute_fp32_to_fp16; the block layouts are those of edgequant/kernels/legacy.py. Compiled with
 * -ffp-contract=off so that x*id + 8.5f stays two float32 roundings (ggml's bytes; the numba kernels do the
 * same). Float->int8 conversions follow x86 cvttss2si (NaN or out of int32 range -> INT_MIN, then the low
 * byte), as the numba kernels and ggml's x86 builds do, so inf/NaN rows give ggml's bytes too.
 * Every function works on whole blocks of one contiguous range, so callers split rows over threads. The
 * quantizers also report the first NaN/Inf they met (from the per-block magnitude pass they make anyway),
 * so a caller that refuses non-finite input needs no separate scan.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define QK 32
#define FLT_MAX_F 3.402823466e+38f

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t fp16(float f) {
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = f2u(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = u2f((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f2u(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline void put16(uint8_t *o, uint16_t h) { o[0] = (uint8_t)(h & 0xFF); o[1] = (uint8_t)(h >> 8); }

/* x86 cvttss2si: truncate; NaN or out of range -> INT32_MIN */
static inline int32_t cvtt(float t) {
    return (t >= -2147483648.0f && t < 2147483648.0f) ? (int32_t)t : INT32_MIN;
}
static inline int32_t wrap8(int32_t c) { return (int32_t)(int8_t)(uint8_t)(c & 0xFF); }
static inline int32_t min_i(int32_t a, int32_t b) { return a < b ? a : b; }

#define ABS_MASK 0x7FFFFFFFu
#define INF_BITS 0x7F800000u

/* The signed element of largest magnitude, first index winning ties (ggml's strict scan); *finite is 0
 * when the block holds inf/NaN. One vectorizable pass takes the largest magnitude among the non-negative
 * and among the negative elements (as bits); only a tie between +a and -a, or inf/NaN, needs the scan. */
static inline float absmax_signed(const float *x, int *finite) {
    int32_t mp = 0, mq = 0; /* magnitudes as int32 bits: ordered like the floats, signed compares */
    for (int j = 0; j < QK; j++) {
        const int32_t b = (int32_t)f2u(x[j]);
        const int32_t a = b & (int32_t)ABS_MASK;
        const int32_t p = b >= 0 ? a : 0, q = b >= 0 ? 0 : a;
        mp = mp > p ? mp : p;
        mq = mq > q ? mq : q;
    }
    *finite = mp < (int32_t)INF_BITS && mq < (int32_t)INF_BITS;
    if (*finite) {
        if (mp > mq) return u2f((uint32_t)mp);
        if (mq > mp) return -u2f((uint32_t)mq);
        if (mp == 0) return 0.0f;
    }
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; j++) {
        const float v = x[j];
        if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
    }
    return max;
}

/* Q4_0 (nmax 8, 18 B) and Q5_0 (nmax 16, 22 B): d = max/-nmax, code = MIN(2nmax-1, (int8_t)(x*id + nmax+.5)) */
static int64_t sym_ref(const float *x, uint8_t *y, int64_t nb, int nmax) {
    int64_t bad = -1;
    const int bsize = nmax == 16 ? 22 : 18;
    const int qs_at = nmax == 16 ? 6 : 2;
    const float shift = (float)nmax + 0.5f;
    const int32_t top = 2 * nmax - 1;
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * QK;
        uint8_t *o = y + i * bsize;
        int finite;
        const float max = absmax_signed(xb, &finite);
        if (!finite && bad < 0) bad = i;
        const float d = max / (float)(-nmax);
        const float id = d ? 1.0f / d : 0.0f;
        put16(o, fp16(d));
        uint32_t qh = 0;
        if (finite && fabsf(id) <= FLT_MAX_F) { /* |x*id| <= nmax: plain casts are exact */
            for (int j = 0; j < QK / 2; ++j) {
                const int32_t a = min_i(top, (int32_t)(xb[j] * id + shift));
                const int32_t b = min_i(top, (int32_t)(xb[QK / 2 + j] * id + shift));
                o[qs_at + j] = (uint8_t)((a & 0x0F) | ((b & 0x0F) << 4));
                qh |= (uint32_t)((a >> 4) & 1) << j;
                qh |= (uint32_t)((b >> 4) & 1) << (j + QK / 2);
            }
        } else for (int j = 0; j < QK / 2; ++j) {
            const float x0 = xb[j] * id;
            const float x1 = xb[QK / 2 + j] * id;
            const int32_t a = min_i(top, wrap8(cvtt(x0 + shift))) & 0xFF;
            const int32_t b = min_i(top, wrap8(cvtt(x1 + shift))) & 0xFF;
            o[qs_at + j] = (uint8_t)((a & 0x0F) | ((b & 0x0F) << 4));
            qh |= (uint32_t)((a >> 4) & 1) << j;
            qh |= (uint32_t)((b >> 4) & 1) << (j + QK / 2);
        }
        if (nmax == 16) {
            for (int k = 0; k < 4; k++) o[2 + k] = (uint8_t)(qh >> (8 * k));
        }
    }
    return bad;
}

/* Q4_1 (nmax 15, 20 B): code = MIN(15, (int8_t)((x-min)*id + .5)); Q5_1 (nmax 31, 24 B): (uint8_t)(...)
 * Forced inline so that nmax is a constant in each caller: Q4_1 then drops the qh bits and the codes go
 * through q[] in vector steps (Q5_1 40 -> 24 ms, Q4_1 22 -> 19 ms per 16.7M weights; sym_ref measured slower
 * inlined, so it is not). */
static inline __attribute__((always_inline)) int64_t asym_ref(const float *x, uint8_t *y, int64_t nb, int nmax) {
    int64_t bad = -1;
    const int bsize = nmax == 31 ? 24 : 20;
    const int qs_at = nmax == 31 ? 8 : 4;
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * QK;
        uint8_t *o = y + i * bsize;
        /* min and max as integers: k(b) = b >= 0 ? b : b ^ 0x7FFFFFFF orders finite floats as the floats
         * (with -0 < +0), and integer min/max vectorize where a float compare-and-assign does not. Only a
         * zero extreme (ggml's scan keeps the first of -0 and +0) or inf/NaN needs ggml's scan. */
        int32_t kmin = INT32_MAX, kmax = INT32_MIN, ex = 0;
        for (int j = 0; j < QK; j++) {
            const int32_t b = (int32_t)f2u(xb[j]);
            const int32_t k = b >= 0 ? b : b ^ 0x7FFFFFFF;
            const int32_t e = b & (int32_t)INF_BITS;
            kmin = kmin < k ? kmin : k;
            kmax = kmax > k ? kmax : k;
            ex = ex > e ? ex : e;
        }
        float min = u2f((uint32_t)(kmin >= 0 ? kmin : kmin ^ 0x7FFFFFFF));
        float max = u2f((uint32_t)(kmax >= 0 ? kmax : kmax ^ 0x7FFFFFFF));
        if (ex == (int32_t)INF_BITS || min == 0.0f || max == 0.0f) {
            if (ex == (int32_t)INF_BITS && bad < 0) bad = i;
            min = 3.402823466e+38f;
            max = -3.402823466e+38f;
            for (int j = 0; j < QK; j++) {
                const float v = xb[j];
                if (v < min) min = v;
                if (v > max) max = v;
            }
        }
        const float d = (max - min) / (float)nmax;
        const float id = d ? 1.0f / d : 0.0f;
        put16(o, fp16(d));
        put16(o + 2, fp16(min));
        uint32_t qh = 0;
        if (ex < (int32_t)INF_BITS && fabsf(id) <= FLT_MAX_F && max - min <= FLT_MAX_F) {
            /* 0 <= (x-min)*id <= nmax: plain casts are exact (the clamp is the numba kernels' no-op) */
            uint8_t q[QK];
            for (int j = 0; j < QK; ++j) q[j] = (uint8_t)min_i(nmax, (int32_t)((xb[j] - min) * id + 0.5f));
            for (int j = 0; j < QK / 2; ++j) o[qs_at + j] = (uint8_t)((q[j] & 0x0F) | ((q[QK / 2 + j] & 0x0F) << 4));
            if (nmax == 31)
                for (int j = 0; j < QK; ++j) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        } else for (int j = 0; j < QK / 2; ++j) {
            const float x0 = (xb[j] - min) * id;
            const float x1 = (xb[QK / 2 + j] - min) * id;
            int32_t a = cvtt(x0 + 0.5f), b = cvtt(x1 + 0.5f);
            if (nmax == 15) {
                a = min_i(15, wrap8(a));
                b = min_i(15, wrap8(b));
            }
            a &= 0xFF;
            b &= 0xFF;
            o[qs_at + j] = (uint8_t)((a & 0x0F) | ((b & 0x0F) << 4));
            qh |= (uint32_t)((a >> 4) & 1) << j;
            qh |= (uint32_t)((b >> 4) & 1) << (j + QK / 2);
        }
        if (nmax == 31) {
            for (int k = 0; k < 4; k++) o[4 + k] = (uint8_t)(qh >> (8 * k));
        }
    }
    return bad;
}

/* C roundf (half away from zero) without a libm call: exact for every float */
static inline float round_away(float v) {
    const float a = fabsf(v);
    if (!(a < 8388608.0f)) return v; /* already an integer, or inf/NaN */
    float t = (float)(int32_t)a;
    if (a - t >= 0.5f) t += 1.0f;
    return copysignf(t, v);
}

/* Q8_0 (34 B): d = amax/127, q = (int8_t)roundf(x*id) */
static int64_t q8_0_ref(const float *x, uint8_t *y, int64_t nb) {
    int64_t bad = -1;
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * QK;
        uint8_t *o = y + i * 34;
        int32_t mb = 0;
        for (int j = 0; j < QK; j++) {
            const int32_t a = (int32_t)(f2u(xb[j]) & ABS_MASK);
            mb = mb > a ? mb : a;
        }
        float amax = u2f((uint32_t)mb);
        if (mb >= (int32_t)INF_BITS && bad < 0) bad = i;
        if (mb > (int32_t)INF_BITS) { /* a NaN: ggml's MAX(amax, |v|) scan, NaN included */
            amax = 0.0f;
            for (int j = 0; j < QK; j++) {
                const float v = fabsf(xb[j]);
                amax = amax > v ? amax : v;
            }
        }
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        put16(o, fp16(d));
        if (mb < (int32_t)INF_BITS && fabsf(id) <= FLT_MAX_F) { /* finite, |x*id| <= 127: plain casts are exact */
            for (int j = 0; j < QK; ++j) {
                const float v = xb[j] * id;
                const float a = fabsf(v);
                int32_t t = (int32_t)a;
                t += (a - (float)t >= 0.5f) ? 1 : 0;
                o[2 + j] = (uint8_t)(int8_t)(v < 0.0f ? -t : t);
            }
        } else {
            for (int j = 0; j < QK; ++j) o[2 + j] = (uint8_t)wrap8(cvtt(round_away(xb[j] * id)));
        }
    }
    return bad;
}

int64_t eq_first_nonfinite(const float *x, int64_t n);

/* kind: 0 Q4_0, 1 Q4_1, 2 Q5_0, 3 Q5_1, 8 Q8_0; n_elements a multiple of 32. Returns the flat index of the
 * first NaN/Inf of x (its blocks are still written, as ggml writes them), -1 if none, -2 for a bad kind. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default"))) /* one build, AVX2 where the CPU has it (same bytes) */
#endif
int64_t eq_quantize_ref(int kind, const float *x, uint8_t *y, int64_t n_elements) {
    const int64_t nb = n_elements / QK;
    int64_t bad;
    switch (kind) {
    case 0: bad = sym_ref(x, y, nb, 8); break;
    case 2: bad = sym_ref(x, y, nb, 16); break;
    case 1: bad = asym_ref(x, y, nb, 15); break;
    case 3: bad = asym_ref(x, y, nb, 31); break;
    case 8: bad = q8_0_ref(x, y, nb); break;
    default: return -2;
    }
    return bad < 0 ? -1 : bad * QK + eq_first_nonfinite(x + bad * QK, QK);
}

/* flat index of the first NaN/Inf (exponent all ones) of n float32, or -1 */
int64_t eq_first_nonfinite(const float *x, int64_t n) {
    const uint32_t *b = (const uint32_t *)x;
    for (int64_t s = 0; s < n; s += 4096) {
        const int64_t e = s + 4096 < n ? s + 4096 : n;
        int32_t m = 0;
        for (int64_t i = s; i < e; i++) {
            const int32_t v = (int32_t)(b[i] & 0x7F800000u);
            m = m > v ? m : v;
        }
        if (m == (int32_t)0x7F800000) {
            for (int64_t i = s; i < e; i++)
                if ((b[i] & 0x7F800000u) == 0x7F800000u) return i;
        }
    }
    return -1;
}
