/* LLM.int8 forward for batch 1..8 in two calls; included by gemv.c after the job code (one translation unit).
 * The Python wrapper, kernels/bnb8_linear.py, states the numerics and the bound.
 *
 * int8_quant_act(x, m, k, use_thr, thr16, a16_out, sca_out, cols_out, ca_out) -> nc (outlier columns) or -1
 *   x float32 (m, k) contiguous; a16_out int16 (m, k); sca_out float32 (m); cols_out int64 (k); ca_out int8
 *   (m, k) or 0. One pass over x and one over its row, on the caller (GIL released, O(m k)):
 *   a = float32(float16(x)) (vcvtps2ph, round to
 *      nearest even: torch's x.half()); an element is an outlier if use_thr and |a| >= thr16 (thr16 = the
 *      threshold as float16, as torch compares a float16 tensor with a Python float); cols = the sorted columns
 *      holding one; SCA[i] = max |a| over row i's non-outlier elements; r = float32(float32(1 / SCA[i]) * 127)
 *      (torch's `127.0 / t` is `t.reciprocal() * 127`); CA = round_half_even(a * r) as int8, 0 in every
 *      outlier column (for m == 1 that column's only element is the zeroed outlier; for m > 1 bnb zeroes the
 *      whole column), 0 in a row whose SCA is 0 (torch's round(NaN).to(int8) gives 0 there; y is 0 anyway).
 *      Any non-finite a (NaN, inf, or |x| beyond float16's range) returns -1: the caller takes its torch path.
 *
 * int8_linear_rows(a16, m, k, sca, cb, scb, bias, out, n, threads, mm_scale, deq_scale, cols, nc, xo, wo_out)
 *   cb int8 (n, k); scb float32 (n); bias float32 (n) or 0; out float32 (m, n); cols int64 (nc);
 *   xo float32 (m, nc) or 0; wo_out float32 (n, nc) or 0. Parallel over output rows (job_parallel):
 *   acc = exact int32 CA . CB[o] (row8),
 *      y = float32(acc) * (SCA[i] * SCB[o]); y = y * mm_scale; y = y + bias[o]   (each step rounded once,
 *      in torch's order; built with -ffp-contract=off so no step fuses). The outlier columns' weights
 *   w(o, c) = float32(float32(CB[o, c]) * SCB[o]) * deq_scale (int8-dequantized; the row is being read anyway,
 *   so the gather costs nothing) go to wo_out[o, c] if given (the caller adds x[:, cols] @ wo.T with torch's
 *   addmm: bit-identical to the torch path), and if xo is given are summed here: s = xo[i, 0] * w(o, 0),
 *   s = fma(xo[i, c], w(o, c), s) over the next columns, y = y + s (MKL's addmm may sum in another order).
 */

#if EQ_X86
#define EQ_AVX2F __attribute__((target("avx2,fma,f16c")))

EQ_INLINE EQ_AVX2F __m256 f16_round8(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

EQ_INLINE EQ_AVX2F float f16_round1(float v) { return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)); }

/* Pass 1 over row i: outlier mask (|a| >= thr, or-ed into mask), SCA[i]; returns 1 if a value is not finite. */
static EQ_AVX2F int lq_scan_row(const float *xi, Py_ssize_t k, int use_thr, float thr, int32_t *mask, float *sca) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
    const __m256 vt = _mm256_set1_ps(thr);
    __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    Py_ssize_t j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256 a = _mm256_and_ps(f16_round8(_mm256_loadu_ps(xi + j)), absm);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
        if (use_thr) {
            __m256 o = _mm256_cmp_ps(a, vt, _CMP_GE_OQ);
            __m256i *mp = (__m256i *)(mask + j);
            _mm256_storeu_si256(mp, _mm256_or_si256(_mm256_loadu_si256(mp), _mm256_castps_si256(o)));
            a = _mm256_andnot_ps(o, a);
        }
        vmax = _mm256_max_ps(vmax, a);
    }
    float mx = 0.0f, lanes[8];
    int nonfinite = _mm256_movemask_ps(bad) != 0;
    _mm256_storeu_ps(lanes, vmax);
    for (int l = 0; l < 8; l++) mx = lanes[l] > mx ? lanes[l] : mx;
    for (; j < k; j++) {
        float a = __builtin_fabsf(f16_round1(xi[j]));
        nonfinite |= !(a < INFINITY);
        if (use_thr && a >= thr) {
            mask[j] = -1;
            continue;
        }
        mx = a > mx ? a : mx;
    }
    *sca = mx;
    return nonfinite;
}

/* Pass 2 over row i: a16[j] = round_half_even(a * r), 0 in masked columns and in a row with SCA == 0. */
static EQ_AVX2F void lq_codes_row(const float *xi, Py_ssize_t k, float sca, const int32_t *mask, int16_t *a16) {
    if (sca == 0.0f) {
        for (Py_ssize_t j = 0; j < k; j++) a16[j] = 0;
        return;
    }
    const float r = (1.0f / sca) * 127.0f;
    const __m256 vr = _mm256_set1_ps(r);
    Py_ssize_t j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256 q = _mm256_round_ps(_mm256_mul_ps(f16_round8(_mm256_loadu_ps(xi + j)), vr),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i c = _mm256_andnot_si256(_mm256_loadu_si256((const __m256i *)(mask + j)), _mm256_cvtps_epi32(q));
        __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        _mm_storeu_si128((__m128i *)(a16 + j), p);
    }
    for (; j < k; j++) a16[j] = mask[j] ? 0 : (int16_t)__builtin_nearbyintf(f16_round1(xi[j]) * r);
}

/* Output row r from its exact int32 dot products acc[0..M) (int8_linear_rows in the header). */
EQ_INLINE EQ_AVX2F void lq_finish(const job_t *jb, Py_ssize_t r, const int32_t *acc, const int M) {
    const int8_t *w = (const int8_t *)jb->w + r * jb->k;
    const float sb = jb->absmax[r];
    float *wo = jb->wo + r * jb->nc;
    for (Py_ssize_t c = 0; c < jb->nc; c++) wo[c] = ((float)w[jb->cols[c]] * sb) * jb->deq_scale;
    for (int i = 0; i < M; i++) {
        float y = (float)acc[i] * (jb->sca[i] * sb);
        y = y * jb->mm_scale;
        if (jb->bias) y = y + jb->bias[r];
        if (jb->xo && jb->nc) {
            const float *xo = jb->xo + i * jb->nc;
            float s = xo[0] * wo[0];
            for (Py_ssize_t c = 1; c < jb->nc; c++) s = __builtin_fmaf(xo[c], wo[c], s);
            y = y + s;
        }
        ((float *)jb->out)[i * jb->n + r] = y;
    }
}

/* Batch 1 with K >= 8192: four rows per row8x4 call (the same exact sums), the rest one by one. Below that
 * the int16 activation row (2K bytes) stays in L1 between rows and one row at a time is faster (4096 rows,
 * one thread, ms one-by-one / four at a time: K 2048 0.58 / 0.80, 4096 1.05 / 1.12, 6144 1.55 / 1.53,
 * 8192 1.05 / 0.94 for 2048 rows, 11008 2.86 / 2.33). */
#define EQ_X4_MIN_K 8192
static EQ_AVX2F void rowsl_1(const job_t *jb, Py_ssize_t r0, Py_ssize_t r1) {
    int32_t acc[4];
    Py_ssize_t r = r0;
    for (; jb->k >= EQ_X4_MIN_K && r + 4 <= r1; r += 4) {
        row8x4((const int16_t *)jb->x, jb->k, (const int8_t *)jb->w + r * jb->k, acc);
        for (int q = 0; q < 4; q++) lq_finish(jb, r + q, acc + q, 1);
    }
    for (; r < r1; r++) {
        row8((const int16_t *)jb->x, jb->k, (const int8_t *)jb->w + r * jb->k, acc, 1, 1);
        lq_finish(jb, r, acc, 1);
    }
}

#define EQ_ROWSL(M)                                                                  \
    static EQ_AVX2F void rowsl_##M(const job_t *jb, Py_ssize_t r0, Py_ssize_t r1) { \
        int32_t acc[8];                                                              \
        for (Py_ssize_t r = r0; r < r1; r++) {                                       \
            row8((const int16_t *)jb->x, jb->k, (const int8_t *)jb->w + r * jb->k, acc, 1, M); \
            lq_finish(jb, r, acc, M);                                                \
        }                                                                            \
    }
EQ_ROWSL(2)
EQ_ROWSL(3)
EQ_ROWSL(4)
EQ_ROWSL(5)
EQ_ROWSL(6)
EQ_ROWSL(7)
EQ_ROWSL(8)

typedef void (*rowsl_fn)(const job_t *, Py_ssize_t, Py_ssize_t);
static const rowsl_fn ROWSL[9] = {NULL, rowsl_1, rowsl_2, rowsl_3, rowsl_4, rowsl_5, rowsl_6, rowsl_7, rowsl_8};

static void job_rowsl(const job_t *j, Py_ssize_t r0, Py_ssize_t r1) { ROWSL[j->m](j, r0, r1); }

/* int8_quant_act's work (header). Returns nc, or -1 for a non-finite value. */
static Py_ssize_t lq_quant(const float *x, Py_ssize_t m, Py_ssize_t k, int use_thr, float thr, int32_t *mask,
                           int16_t *a16, float *sca, int64_t *cols, int8_t *ca) {
    Py_ssize_t nc = 0;
    int bad = 0;
    for (Py_ssize_t t = 0; t < k; t++) mask[t] = 0;
    for (Py_ssize_t i = 0; i < m; i++) bad |= lq_scan_row(x + i * k, k, use_thr, thr, mask, sca + i);
    if (bad) return -1;
    for (Py_ssize_t i = 0; i < m; i++) lq_codes_row(x + i * k, k, sca[i], mask, a16 + i * k);
    for (Py_ssize_t t = 0; t < k; t++)
        if (mask[t]) cols[nc++] = t;
    if (ca)
        for (Py_ssize_t t = 0; t < m * k; t++) ca[t] = (int8_t)a16[t];
    return nc;
}
#endif

static PyObject *py_int8_quant_act(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t x, m, k, a16, sca, cols, ca;
    int use_thr;
    float thr;
    if (!PyArg_ParseTuple(args, "nnnpfnnnn", &x, &m, &k, &use_thr, &thr, &a16, &sca, &cols, &ca)) return NULL;
    if (m < 1 || m > 8 || k < 1) {
        PyErr_SetString(PyExc_ValueError, "int8_quant_act: unsupported geometry");
        return NULL;
    }
    if (!cpu_ok()) return no_kernel();
#if EQ_X86
    int32_t *mask = (int32_t *)malloc(sizeof(int32_t) * (size_t)k);
    if (!mask) return PyErr_NoMemory();
    Py_ssize_t nc;
    Py_BEGIN_ALLOW_THREADS
    nc = lq_quant((const float *)x, m, k, use_thr, thr, mask, (int16_t *)a16, (float *)sca, (int64_t *)cols,
                  (int8_t *)ca);
    Py_END_ALLOW_THREADS
    free(mask);
    return PyLong_FromSsize_t(nc);
#else
    return NULL;
#endif
}

static PyObject *py_int8_linear_rows(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t a16, m, k, sca, cb, scb, bias, out, n, threads, cols, nc, xo, wo;
    float mm_scale, deq_scale;
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnffnnnn", &a16, &m, &k, &sca, &cb, &scb, &bias, &out, &n, &threads,
                          &mm_scale, &deq_scale, &cols, &nc, &xo, &wo))
        return NULL;
    if (m < 1 || m > 8 || k < 1 || n < 0 || threads < 1 || nc < 0 || nc > k || (nc && !wo)) {
        PyErr_SetString(PyExc_ValueError, "int8_linear_rows: unsupported geometry");
        return NULL;
    }
    if (!cpu_ok()) return no_kernel();
#if EQ_X86
    job_t j = {0};
    j.finished = n == 0;
    j.n = n;
    j.rows = job_rowsl;
    j.x = (const void *)a16;
    j.w = (const void *)cb;
    j.absmax = (const float *)scb;
    j.m = m;
    j.k = k;
    j.out = (void *)out;
    j.sca = (const float *)sca;
    j.bias = (const float *)bias;
    j.xo = (const float *)xo;
    j.wo = (float *)wo;
    j.cols = (const int64_t *)cols;
    j.nc = nc;
    j.mm_scale = mm_scale;
    j.deq_scale = deq_scale;
    return run_job(&j, threads, 0);
#else
    return NULL;
#endif
}
