/* The thread pool of edgequant._gemv: a job's output rows shared by the caller and threads - 1 detached
 * pthreads (see gemv.c's header for the scheme); included by gemv.c inside its EQ_X86 section, after the
 * kernels and before the job_rows* adapters (one translation unit). */
#define CHUNK 16

typedef struct job job_t;
struct job {
    int64_t next, done, refs;
    int32_t finished; /* 1 once done == n; the waiting caller sleeps on it (futex) */
    Py_ssize_t n;
    void (*rows)(const job_t *, Py_ssize_t, Py_ssize_t);
    const void *x, *w;
    const float *absmax, *table;
    Py_ssize_t m, k, bs;
    void *out;
    float *xbuf; /* gemv4: x in decode32's order; int8_linear: a16, sca, cols, xo; owned by the job */
    const float *sca, *bias, *xo; /* int8_linear_rows: SCA (m), bias or NULL, x's outlier columns or NULL */
    const int64_t *cols;           /* int8_linear_rows: the outlier columns (nc) */
    float *wo;                     /* int8_linear_rows: their dequantized weights (n, nc) */
    Py_ssize_t nc;
    float mm_scale, deq_scale;
};

/* Claim and compute CHUNK rows at a time until none is left; returns how many rows this thread did. */
static Py_ssize_t job_run(job_t *j) {
    Py_ssize_t mine = 0;
    for (;;) {
        Py_ssize_t r0 = (Py_ssize_t)__atomic_fetch_add(&j->next, CHUNK, __ATOMIC_RELAXED);
        if (r0 >= j->n) break;
        Py_ssize_t r1 = r0 + CHUNK < j->n ? r0 + CHUNK : j->n;
        j->rows(j, r0, r1);
        mine += r1 - r0;
        if (__atomic_add_fetch(&j->done, (int64_t)(r1 - r0), __ATOMIC_ACQ_REL) == (int64_t)j->n) {
            __atomic_store_n(&j->finished, 1, __ATOMIC_RELEASE);
#ifdef __linux__
            syscall(SYS_futex, &j->finished, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
#endif
        }
    }
    return mine;
}

/* Wait until every row is done: a short spin, then sleep (futex) so that a helper sharing this CPU runs. */
static void job_wait(job_t *j) {
    for (int spin = 0; !__atomic_load_n(&j->finished, __ATOMIC_ACQUIRE); spin++) {
        if (spin < 2000) {
            _mm_pause();
            continue;
        }
#ifdef __linux__
        syscall(SYS_futex, &j->finished, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
}

static void job_release(job_t *j) {
    if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(j->xbuf);
        free(j);
    }
}

/* xp[i, 32c + f] = x[i, 32c + 2 * (4 * (f / 8) + f % 4) + 1 - (f % 8) / 4]: decode32's element order. */
static void permute_x(const float *x, float *xp, Py_ssize_t m, Py_ssize_t k) {
    for (Py_ssize_t r = 0; r < m * k; r += 32)
        for (int f = 0; f < 32; f++) xp[r + f] = x[r + 2 * (4 * (f / 8) + f % 4) + 1 - (f % 8) / 4];
}

/* One row, k % 64 == 0: xp[64c + 32h + 8g + f] = x[64c + 2 * (16 * (f / 4) + 4g + f % 4) + 1 - h], the order of
 * row4_batch1's 64-code steps (h = 0: the low nibbles of 32 bytes, odd elements; h = 1: the high nibbles). */
static void permute_x64(const float *x, float *xp, Py_ssize_t k) {
    for (Py_ssize_t r = 0; r < k; r += 64)
        for (int i = 0; i < 64; i++) {
            const int h = i / 32, g = (i % 32) / 8, f = i % 8;
            xp[r + i] = x[r + 2 * (16 * (f / 4) + 4 * g + f % 4) + 1 - h];
        }
}

static void *job_worker(void *arg) {
    job_run((job_t *)arg);
    job_release((job_t *)arg);
    return NULL;
}

/* Run j on the caller and threads - 1 helpers; returns when every row is done. Takes ownership of j. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Dynamic thread count, as OpenMP's OMP_DYNAMIC or MKL_DYNAMIC: `threads` is an upper bound. After a
 * parallel call the caller estimates its time alone, t_own * n / rows_own (t_own: until no rows were left to
 * claim, rows_own: the rows it did). If the call took longer (a helper started late or was preempted while
 * holding rows: an oversubscribed machine), the next `backoff` calls run on the caller alone and backoff
 * doubles (8 .. 256); a parallel call that paid off resets it to 8. Results never depend on the threads. */
static int solo_left = 0, backoff = 8;

static void job_parallel(job_t *j, Py_ssize_t threads) {
    Py_ssize_t helpers = threads - 1, max_helpers = (j->n + CHUNK - 1) / CHUNK - 1;
    if (helpers > max_helpers) helpers = max_helpers;
    if (helpers > 0 && __atomic_load_n(&solo_left, __ATOMIC_RELAXED) > 0) {
        __atomic_sub_fetch(&solo_left, 1, __ATOMIC_RELAXED);
        helpers = 0;
    }
    if (helpers > 63) helpers = 63;
    j->refs = 1 + (helpers > 0 ? helpers : 0);
    if (helpers > 0) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 18);
        for (Py_ssize_t t = 0; t < helpers; t++) {
            pthread_t th;
            if (pthread_create(&th, &attr, job_worker, j) != 0) job_release(j);
        }
        pthread_attr_destroy(&attr);
    }
    Py_ssize_t n = j->n;
    double t0 = now_s();
    Py_ssize_t own = job_run(j);
    double t1 = now_s();
    job_wait(j);
    job_release(j);
    if (helpers > 0) {
        int b = __atomic_load_n(&backoff, __ATOMIC_RELAXED);
        if (own > 0 && now_s() - t0 > (t1 - t0) * (double)n / (double)own) {
            __atomic_store_n(&solo_left, b, __ATOMIC_RELAXED);
            __atomic_store_n(&backoff, b < 256 ? 2 * b : 256, __ATOMIC_RELAXED);
        } else {
            __atomic_store_n(&backoff, 8, __ATOMIC_RELAXED);
        }
    }
}
