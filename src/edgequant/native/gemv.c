/* Batch-1..8 CPU kernels for the bitsandbytes-style layers (edgequant._gemv).
 *
 * gemv4(x, m, k, packed, absmax, table, blocksize, out, n, threads)
 *     out[i, r] = sum_j x[i, j] * (table[code(r, j)] * absmax[block(r, j)])   for r in [0, n)
 *     NF4/FP4 in bitsandbytes' layout: element e of the flat weight in byte e / 2, high nibble for even e.
 *     Needs k % blocksize == 0 and blocksize % 32 == 0 (rows of whole blocks), 1 <= m <= 8.
 *     x is copied once per call into the decoder's element order (permute_x; permute_x64 for batch 1 with
 *     blocksize % 64 == 0, whose steps decode 64 codes from one 32-byte load). The 16-entry table is cut into 4
 *     byte planes held in ymm registers; a code fetches the 4 bytes of its value with 4 in-lane vpshufb
 *     (on Zen 2 1.7x faster than vpermps + blend). For M >= 2 one vmulps by absmax[b] then gives the float32
 *     product table[c] * absmax[b], exactly dequantize_4bit's weight (scaling the table per block instead
 *     costs 8 more shuffles a block: 25% slower at blocksize 64), and only the summation order differs from
 *     dequantize-then-matmul (8-lane partial sums, fused multiply-adds). For M == 1 (row4_batch1) the
 *     block's sum of table[c] * x is multiplied by absmax[b] once; the bound of kernels/bnb4_native.py
 *     (2 gamma_K sum |x w|) still holds: see its docstring.
 *
 * int8_gemm(a16, m, k, w, out, n, threads)
 *     out[i, o] = sum_j a16[i, j] * w[o, j] in int32 (exact: products of int8 values widened to int16 and
 *     added pairwise by vpmaddwd), a16 = the int8 activations already widened to int16, w int8 (n, k).
 *
 * int8_quant_act(...), int8_linear_rows(...): LLM.int8's batch-1..8 forward in two calls (activation
 *     quantization with outlier columns; the int8 rows, dequantization, bias, the outlier columns' dequantized
 *     weights and optionally their product): see int8_linear.h.
 *
 * Pointers travel as integers (the Python wrappers check shapes, dtypes and contiguity). Threads: the caller
 * (GIL released) and threads - 1 detached pthreads share the output rows dynamically, CHUNK rows at a
 * time from an atomic counter; the caller returns once every row is done. A helper that the OS starts late
 * (a loaded machine) costs nothing: the others take its rows and it finds none left (the job it reads is
 * freed by whoever leaves last). A helper preempted while it holds rows makes the caller wait for it; when that
 * made a call slower than the caller alone, the next calls run on the caller alone for a while (dynamic thread
 * count: job_parallel). Python threads are not used, so no helper ever waits for the GIL. Results do not
 * depend on which thread computes which row.
 * The AVX2 code is compiled with a target attribute and used only when the CPU reports AVX2 and FMA
 * (and F16C: has_avx2()); on other CPUs (or compilers) the module still imports and the callers use their
 * numba paths.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(_WIN32)
#define EQ_X86 1
#include <immintrin.h>
#include <math.h>
#include <time.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define EQ_AVX2 __attribute__((target("avx2,fma")))
#define EQ_INLINE static inline __attribute__((always_inline))
#else
#define EQ_X86 0
#endif

#if EQ_X86

/* The 16 table values (lo: codes 0-7, hi: 8-15) as 4 byte planes: P[j] byte c = byte j of value c,
 * the 16 bytes repeated in both 128-bit lanes (vpshufb looks up within a lane). */
EQ_INLINE EQ_AVX2 void byte_planes(__m256 lo, __m256 hi, __m256i P[4]) {
    const __m256i mt = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m256i a = _mm256_shuffle_epi8(_mm256_castps_si256(lo), mt);
    __m256i b = _mm256_shuffle_epi8(_mm256_castps_si256(hi), mt);
    __m256i u = _mm256_unpacklo_epi32(a, b), v = _mm256_unpackhi_epi32(a, b);
    const __m256i i0 = _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5), i1 = _mm256_setr_epi32(2, 6, 3, 7, 2, 6, 3, 7);
    P[0] = _mm256_permutevar8x32_epi32(u, i0);
    P[1] = _mm256_permutevar8x32_epi32(u, i1);
    P[2] = _mm256_permutevar8x32_epi32(v, i0);
    P[3] = _mm256_permutevar8x32_epi32(v, i1);
}

/* 32 codes, one per byte of c (the low 4 bits), -> their 32 table values in 4 ymm: vector g, float f holds
 * the code at byte 16 * (f / 4) + 4g + f % 4 of c. */
EQ_INLINE EQ_AVX2 void decode_codes(__m256i c, const __m256i P[4], __m256 w[4]) {
    __m256i b0 = _mm256_shuffle_epi8(P[0], c), b1 = _mm256_shuffle_epi8(P[1], c);
    __m256i b2 = _mm256_shuffle_epi8(P[2], c), b3 = _mm256_shuffle_epi8(P[3], c);
    __m256i A = _mm256_unpacklo_epi8(b0, b1), B = _mm256_unpackhi_epi8(b0, b1);
    __m256i C = _mm256_unpacklo_epi8(b2, b3), D = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(A, C));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(A, C));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(B, D));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(B, D));
}

/* 16 packed bytes (32 codes) -> their 32 table values in 4 ymm. Lane 0 decodes the low nibbles (odd elements),
 * lane 1 the high nibbles (even elements); vector g, float f holds element 2 * (4g + f % 4) + 1 - f / 4 of
 * the 32 (x is copied into this order by permute_x). */
EQ_INLINE EQ_AVX2 void decode32(const uint8_t *p, const __m256i P[4], __m256 w[4]) {
    const __m256i cnt = _mm256_setr_epi64x(0, 0, 4, 4), m4 = _mm256_set1_epi8(15);
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    decode_codes(_mm256_and_si256(_mm256_srlv_epi64(v, cnt), m4), P, w);
}

EQ_INLINE EQ_AVX2 float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One output row, M batch rows (compile-time constant after inlining), A accumulators per batch row. */
EQ_INLINE EQ_AVX2 void row4(const float *x, Py_ssize_t k, const uint8_t *p, const float *s, Py_ssize_t bs,
                            const __m256i P[4], float *out, Py_ssize_t n, const int M, const int A) {
    __m256 acc[8][4];
    for (int i = 0; i < M; i++)
        for (int a = 0; a < A; a++) acc[i][a] = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (Py_ssize_t blk = 0; blk < k / bs; blk++) {
        __m256 sc = _mm256_set1_ps(s[blk]);
        for (Py_ssize_t e = 0; e < bs; e += 32, j += 32) {
            __m256 w[4];
            decode32(p + (j >> 1), P, w);
            for (int g = 0; g < 4; g++) {
                __m256 wg = _mm256_mul_ps(w[g], sc);
                for (int i = 0; i < M; i++)
                    acc[i][g % A] = _mm256_fmadd_ps(wg, _mm256_loadu_ps(x + i * k + j + 8 * g), acc[i][g % A]);
            }
        }
    }
    for (int i = 0; i < M; i++) {
        __m256 t = acc[i][0];
        for (int a = 1; a < A; a++) t = _mm256_add_ps(t, acc[i][a]);
        out[i * n] = hsum8(t);
    }
}

/* Batch 1: the block's absmax applied once per block, y = sum_b absmax[b] * (sum_{j in b} table[c_j] x_j)
 * (2 x 8 lanes of partial sums per block, folded into 2 x 8 lanes of row sums by one FMA each: 4 multiplies
 * per 32 weights fewer than row4), and with blocksize % 64 == 0 64 codes per 32-byte load. From memory at
 * 4096x11008, one thread: 4.49 ms with row4, 4.04 with the per-block scale, 3.76 with both. Bound: header. */
EQ_INLINE EQ_AVX2 void row4_batch1(const float *x, Py_ssize_t k, const uint8_t *p, const float *s, Py_ssize_t bs,
                                 const __m256i P[4], float *out) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    Py_ssize_t j = 0;
    for (Py_ssize_t blk = 0; blk < k / bs; blk++) {
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
        if (bs % 64 == 0) { /* 32 bytes at a time: no broadcast or variable shift (x in permute_x64's order) */
            const __m256i m4 = _mm256_set1_epi8(15);
            for (Py_ssize_t e = 0; e < bs; e += 64, j += 64) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p + (j >> 1)));
                __m256 w[4];
                for (int h = 0; h < 2; h++) {
                    decode_codes(_mm256_and_si256(h ? _mm256_srli_epi16(v, 4) : v, m4), P, w);
                    const float *xh = x + j + 32 * h;
                    b0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xh), b0);
                    b1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xh + 8), b1);
                    b0 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xh + 16), b0);
                    b1 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xh + 24), b1);
                }
            }
        } else {
            for (Py_ssize_t e = 0; e < bs; e += 32, j += 32) {
                __m256 w[4];
                decode32(p + (j >> 1), P, w);
                b0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x + j), b0);
                b1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x + j + 8), b1);
                b0 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + j + 16), b0);
                b1 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + j + 24), b1);
            }
        }
        const __m256 sc = _mm256_set1_ps(s[blk]);
        acc[0] = _mm256_fmadd_ps(b0, sc, acc[0]);
        acc[1] = _mm256_fmadd_ps(b1, sc, acc[1]);
    }
    out[0] = hsum8(_mm256_add_ps(acc[0], acc[1]));
}

static EQ_AVX2 void rows4_1(const float *x, Py_ssize_t k, const uint8_t *packed, const float *absmax,
                            Py_ssize_t bs, const float *table, float *out, Py_ssize_t n, Py_ssize_t r0,
                            Py_ssize_t r1) {
    (void)n;
    __m256i P[4];
    byte_planes(_mm256_loadu_ps(table), _mm256_loadu_ps(table + 8), P);
    for (Py_ssize_t r = r0; r < r1; r++)
        row4_batch1(x, k, packed + r * (k >> 1), absmax + r * (k / bs), bs, P, out + r);
}

#define EQ_ROWS4(M, A)                                                                                    \
    static EQ_AVX2 void rows4_##M(const float *x, Py_ssize_t k, const uint8_t *packed, const float *absmax, \
                                  Py_ssize_t bs, const float *table, float *out, Py_ssize_t n,            \
                                  Py_ssize_t r0, Py_ssize_t r1) {                                         \
        __m256i P[4];                                                                                     \
        byte_planes(_mm256_loadu_ps(table), _mm256_loadu_ps(table + 8), P);                               \
        for (Py_ssize_t r = r0; r < r1; r++)                                                              \
            row4(x, k, packed + r * (k >> 1), absmax + r * (k / bs), bs, P, out + r, n, M, A);            \
    }
EQ_ROWS4(2, 4)
EQ_ROWS4(3, 2)
EQ_ROWS4(4, 2)
EQ_ROWS4(5, 1)
EQ_ROWS4(6, 1)
EQ_ROWS4(7, 1)
EQ_ROWS4(8, 1)

typedef void (*rows4_fn)(const float *, Py_ssize_t, const uint8_t *, const float *, Py_ssize_t, const float *,
                         float *, Py_ssize_t, Py_ssize_t, Py_ssize_t);
static const rows4_fn ROWS4[9] = {NULL, rows4_1, rows4_2, rows4_3, rows4_4, rows4_5, rows4_6, rows4_7, rows4_8};

EQ_INLINE EQ_AVX2 int32_t hsum8_epi32(__m256i t) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

#ifndef EQ_PF8
#define EQ_PF8 1024
#endif
/* int8: one weight row against M activation rows, 16 weights per step (vpmovsxbw + vpmaddwd). */
EQ_INLINE EQ_AVX2 void row8(const int16_t *a, Py_ssize_t k, const int8_t *w, int32_t *out, Py_ssize_t n,
                            const int M) {
    __m256i acc[8][2];
    for (int i = 0; i < M; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    Py_ssize_t j = 0;
    for (; j + 32 <= k; j += 32) {
        _mm_prefetch((const char *)(w + j + EQ_PF8), _MM_HINT_T0);
        __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j)));
        __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + j + 16)));
        for (int i = 0; i < M; i++) {
            const int16_t *ai = a + i * k + j;
            acc[i][0] = _mm256_add_epi32(acc[i][0],
                                         _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)ai)));
            acc[i][1] = _mm256_add_epi32(acc[i][1],
                                         _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(ai + 16))));
        }
    }
    for (int i = 0; i < M; i++) {
        int32_t total = hsum8_epi32(_mm256_add_epi32(acc[i][0], acc[i][1]));
        for (Py_ssize_t jj = j; jj < k; jj++) total += (int32_t)a[i * k + jj] * (int32_t)w[jj];
        out[i * n] = total;
    }
}

/* int8, batch 1, long rows: four weight rows at once against the one activation row, which is then read
 * once for four rows instead of once per row (at K >= 8192 it no longer stays in L1 between rows; see
 * int8_linear.h's rowsl_1 for where this pays). Exact int32 sums, as row8's. */
#ifndef EQ_PF8X4
#define EQ_PF8X4 512
#endif
EQ_INLINE EQ_AVX2 void row8x4(const int16_t *a, Py_ssize_t k, const int8_t *w, int32_t out[4]) {
    __m256i acc[4][2];
    for (int q = 0; q < 4; q++) acc[q][0] = acc[q][1] = _mm256_setzero_si256();
    Py_ssize_t j = 0;
    for (; j + 32 <= k; j += 32) {
        const __m256i a0 = _mm256_loadu_si256((const __m256i *)(a + j));
        const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + j + 16));
        for (int q = 0; q < 4; q++) {
            const int8_t *wq = w + q * k + j;
            _mm_prefetch((const char *)(wq + EQ_PF8X4), _MM_HINT_T0);
            __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wq));
            __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wq + 16)));
            acc[q][0] = _mm256_add_epi32(acc[q][0], _mm256_madd_epi16(w0, a0));
            acc[q][1] = _mm256_add_epi32(acc[q][1], _mm256_madd_epi16(w1, a1));
        }
    }
    for (int q = 0; q < 4; q++) {
        int32_t total = hsum8_epi32(_mm256_add_epi32(acc[q][0], acc[q][1]));
        for (Py_ssize_t jj = j; jj < k; jj++) total += (int32_t)a[jj] * (int32_t)w[q * k + jj];
        out[q] = total;
    }
}

#define EQ_ROWS8(M)                                                                                         \
    static EQ_AVX2 void rows8_##M(const int16_t *a, Py_ssize_t k, const int8_t *w, int32_t *out, Py_ssize_t n, \
                                  Py_ssize_t r0, Py_ssize_t r1) {                                           \
        for (Py_ssize_t r = r0; r < r1; r++) row8(a, k, w + r * k, out + r, n, M);                          \
    }
EQ_ROWS8(1)
EQ_ROWS8(2)
EQ_ROWS8(3)
EQ_ROWS8(4)
EQ_ROWS8(5)
EQ_ROWS8(6)
EQ_ROWS8(7)
EQ_ROWS8(8)

typedef void (*rows8_fn)(const int16_t *, Py_ssize_t, const int8_t *, int32_t *, Py_ssize_t, Py_ssize_t,
                         Py_ssize_t);
static const rows8_fn ROWS8[9] = {NULL, rows8_1, rows8_2, rows8_3, rows8_4, rows8_5, rows8_6, rows8_7, rows8_8};

static int cpu_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return ok;
}
#else
static int cpu_ok(void) { return 0; }
#endif

static PyObject *no_kernel(void) {
    PyErr_SetString(PyExc_RuntimeError, "edgequant._gemv: this CPU/build has no AVX2+FMA kernel");
    return NULL;
}

static PyObject *py_has_avx2(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(cpu_ok());
}

#if EQ_X86
#include "job.h"

static void job_rows4(const job_t *j, Py_ssize_t r0, Py_ssize_t r1) {
    ROWS4[j->m]((const float *)j->x, j->k, (const uint8_t *)j->w, j->absmax, j->bs, j->table, (float *)j->out,
                j->n, r0, r1);
}

static void job_rows8(const job_t *j, Py_ssize_t r0, Py_ssize_t r1) {
    ROWS8[j->m]((const int16_t *)j->x, j->k, (const int8_t *)j->w, (int32_t *)j->out, j->n, r0, r1);
}

static PyObject *run_job(const job_t *proto, Py_ssize_t threads, int permute) {
    job_t *j = (job_t *)malloc(sizeof(job_t));
    float *xbuf = permute ? (float *)malloc(sizeof(float) * (size_t)(proto->m * proto->k + 1)) : NULL;
    if (!j || (permute && !xbuf)) {
        free(j);
        free(xbuf);
        return PyErr_NoMemory();
    }
    *j = *proto;
    j->xbuf = xbuf;
    if (permute) {
        if (proto->m == 1 && proto->bs % 64 == 0)
            permute_x64((const float *)proto->x, xbuf, proto->k);
        else
            permute_x((const float *)proto->x, xbuf, proto->m, proto->k);
        j->x = xbuf;
    }
    Py_BEGIN_ALLOW_THREADS
    job_parallel(j, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
#endif

static PyObject *py_gemv4(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t x, m, k, packed, absmax, table, bs, out, n, threads;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnn", &x, &m, &k, &packed, &absmax, &table, &bs, &out, &n, &threads))
        return NULL;
    if (m < 1 || m > 8 || bs < 32 || bs % 32 || k % bs || n < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "gemv4: unsupported geometry");
        return NULL;
    }
    if (!cpu_ok()) return no_kernel();
#if EQ_X86
    job_t j = {0, 0, 0, n == 0, n, job_rows4, (const void *)x, (const void *)packed, (const float *)absmax,
               (const float *)table, m, k, bs, (void *)out, NULL};
    return run_job(&j, threads, 1);
#else
    return NULL;
#endif
}

static PyObject *py_int8_gemm(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t a, m, k, w, out, n, threads;
    if (!PyArg_ParseTuple(args, "nnnnnnn", &a, &m, &k, &w, &out, &n, &threads)) return NULL;
    if (m < 1 || m > 8 || k < 0 || n < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "int8_gemm: unsupported geometry");
        return NULL;
    }
    if (!cpu_ok()) return no_kernel();
#if EQ_X86
    job_t j = {0, 0, 0, n == 0, n, job_rows8, (const void *)a, (const void *)w, NULL, NULL, m, k, 0, (void *)out,
               NULL};
    return run_job(&j, threads, 0);
#else
    return NULL;
#endif
}

#include "int8_linear.h"

static PyMethodDef METHODS[] = {
    {"has_avx2", py_has_avx2, METH_NOARGS, "True when the CPU has AVX2 and FMA and the kernels were compiled."},
    {"gemv4", py_gemv4, METH_VARARGS, "NF4/FP4 rows: see the source header."},
    {"int8_gemm", py_int8_gemm, METH_VARARGS, "Exact int8 rows: see the source header."},
    {"int8_quant_act", py_int8_quant_act, METH_VARARGS, "LLM.int8 activations, batch 1..8: see int8_linear.h."},
    {"int8_linear_rows", py_int8_linear_rows, METH_VARARGS, "LLM.int8 output rows: see int8_linear.h."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_gemv", "edgequant's AVX2 batch-1..8 kernels", -1,
                                    METHODS, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__gemv(void) { return PyModule_Create(&MODULE); }
