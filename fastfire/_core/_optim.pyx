"""Optimizer steps (Adam, SGD with momentum / Nesterov), dense and row-restricted (lazy).

The dense steps work on flat 1-D views of a parameter and its state (the caller passes
``W.reshape(-1)``) and reproduce scikit-learn's ``AdamOptimizer`` / ``SGDOptimizer`` arithmetic.
The ``*_rows`` steps update only the listed rows of a 2-D parameter (SLIDE-style lazy updates for
sparse training): rows that got no gradient are not touched at all, their optimizer state included.
Every element is updated independently, so the result is the same for every thread count.
Each step also returns the squared norm of the parameters it updated, taken before the update in
the same pass: the L2 term of the loss costs no extra pass over the weights.

Scalars (learning rate, betas, epsilon, l2, momentum) are taken as Python floats (C double) and
rounded to float32 only after ``1 - beta`` is formed, as scikit-learn's float64 arithmetic does
(``1 - float32(0.999)`` would be off by 1.3e-5 relative). The element-wise Adam update is a C loop
with an explicit SSE path on x86-64, since GCC does not vectorize ``sqrtf`` under errno semantics.
"""

from fastfire._core._openmp cimport (MIN_ELEMENTS_PER_THREAD, omp_get_num_threads,
                                     omp_get_thread_num, threads_for)
from cython.parallel cimport parallel, prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastfire._core._vec cimport ff_vec_axpy
from libc.math cimport pow, sqrt

from fastfire._core._types cimport float32_t, float64_t, index_t, offset_t

import numpy as np

# The element-wise Adam update in C. GCC does not vectorize sqrtf without -fno-math-errno (each
# call becomes sqrtss plus an errno branch; function attributes and `omp simd` do not lift it in
# GCC 12), and that flag is not ours to set globally, so x86-64 gets explicit vector loops: SSE
# (part of the x86-64 baseline: no -march needed) and, chosen at run time when the CPU has it, AVX
# (a function compiled for that target only; 2-2.5x faster than SSE on AMD Zen 3, where the
# sqrt/div units bound this loop). AVX without FMA does the same roundings as SSE and as the scalar
# loop (IEEE sqrt and division are correctly rounded in all three), so the result does not depend
# on the path.
cdef extern from *:
    """
    #include <math.h>
    #if defined(__SSE__) || defined(_M_X64)
    #include <xmmintrin.h>
    #define FF_ADAM_SSE 1
    #endif
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    #define FF_ADAM_AVX 1
    /* Adam over the first multiple of 8 entries with AVX; returns how many were done and adds the
       squared parameters (before the update) to *sumsq. */
    __attribute__((target("avx")))
    static Py_ssize_t ff_adam_update_avx(
            float *param, const float *grad, float *m, float *v, Py_ssize_t n, float lr,
            float b1, float b2, float one_b1, float one_b2, float eps, float l2, double *sumsq) {
        const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2),
                     vob1 = _mm256_set1_ps(one_b1), vob2 = _mm256_set1_ps(one_b2),
                     veps = _mm256_set1_ps(eps), vl2 = _mm256_set1_ps(l2), vlr = _mm256_set1_ps(lr);
        __m256 acc = _mm256_setzero_ps();
        float lanes[8];
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 p = _mm256_loadu_ps(param + i);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(p, p));
            __m256 g = _mm256_add_ps(_mm256_loadu_ps(grad + i), _mm256_mul_ps(vl2, p));
            __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)),
                                      _mm256_mul_ps(vob1, g));
            __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                      _mm256_mul_ps(vob2, _mm256_mul_ps(g, g)));
            _mm256_storeu_ps(m + i, mi);
            _mm256_storeu_ps(v + i, vi);
            p = _mm256_sub_ps(p, _mm256_div_ps(_mm256_mul_ps(vlr, mi),
                                               _mm256_add_ps(_mm256_sqrt_ps(vi), veps)));
            _mm256_storeu_ps(param + i, p);
        }
        _mm256_storeu_ps(lanes, acc);
        *sumsq += (((double) lanes[0] + lanes[1]) + ((double) lanes[2] + lanes[3]))
                  + (((double) lanes[4] + lanes[5]) + ((double) lanes[6] + lanes[7]));
        return i;
    }
    #endif
    /* One Adam step over n entries; returns the sum of the squared parameters before the update
       (the L2 term of the loss, accumulated in the same pass). */
    static double ff_adam_update(
            float *param, const float *grad, float *m, float *v, Py_ssize_t n, float lr,
            float b1, float b2, float one_b1, float one_b2, float eps, float l2) {
        Py_ssize_t i = 0;
        double sumsq = 0.0;
    #ifdef FF_ADAM_AVX
        if (__builtin_cpu_supports("avx")) {
            i = ff_adam_update_avx(param, grad, m, v, n, lr, b1, b2, one_b1, one_b2, eps, l2,
                                   &sumsq);
        }
    #endif
    #ifdef FF_ADAM_SSE
        const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vob1 = _mm_set1_ps(one_b1),
                     vob2 = _mm_set1_ps(one_b2), veps = _mm_set1_ps(eps), vl2 = _mm_set1_ps(l2),
                     vlr = _mm_set1_ps(lr);
        __m128 acc = _mm_setzero_ps();
        float lanes[4];
        for (; i + 4 <= n; i += 4) {
            __m128 p = _mm_loadu_ps(param + i);
            acc = _mm_add_ps(acc, _mm_mul_ps(p, p));
            __m128 g = _mm_add_ps(_mm_loadu_ps(grad + i), _mm_mul_ps(vl2, p));
            __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vob1, g));
            __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)),
                                   _mm_mul_ps(vob2, _mm_mul_ps(g, g)));
            _mm_storeu_ps(m + i, mi);
            _mm_storeu_ps(v + i, vi);
            p = _mm_sub_ps(p, _mm_div_ps(_mm_mul_ps(vlr, mi), _mm_add_ps(_mm_sqrt_ps(vi), veps)));
            _mm_storeu_ps(param + i, p);
        }
        _mm_storeu_ps(lanes, acc);
        sumsq += ((double) lanes[0] + lanes[1]) + ((double) lanes[2] + lanes[3]);
    #endif
        for (; i < n; i++) {
            float g = grad[i] + l2 * param[i];
            float mi = b1 * m[i] + one_b1 * g;
            float vi = b2 * v[i] + one_b2 * (g * g);
            sumsq += (double) param[i] * param[i];
            m[i] = mi;
            v[i] = vi;
            param[i] = param[i] - lr * mi / (sqrtf(vi) + eps);
        }
        return sumsq;
    }
    """
    double ff_adam_update(float* param, const float* grad, float* m, float* v, Py_ssize_t n,
                          float lr, float b1, float b2, float one_b1, float one_b2, float eps,
                          float l2) noexcept nogil

# Elements per task of the dense steps (a multiple of 16 floats: chunks start on cache lines).
cdef Py_ssize_t _CHUNK = 4096


cdef double _sgd_update(float* w, const float* grad, float* velocity, Py_ssize_t n, float lr,
                        float mom, bint nesterov, float l2) noexcept nogil:
    """One SGD step over n entries; returns the sum of the squared parameters before it."""
    cdef Py_ssize_t j
    cdef float g, vel
    cdef double sumsq = 0.0
    for j in range(n):
        sumsq += <double> w[j] * w[j]
        g = grad[j] + l2 * w[j]
        vel = mom * velocity[j] - lr * g
        velocity[j] = vel
        if nesterov:
            w[j] = w[j] + (mom * vel - lr * g)
        else:
            w[j] = w[j] + vel
    return sumsq


cdef inline float _lazy_step_size(double lr, double beta_1, double beta_2, int64_t t) noexcept nogil:
    """Adam's bias-corrected step size after ``t`` updates of a row (float64, then rounded)."""
    return <float> (lr * sqrt(1.0 - pow(beta_2, <double> t)) / (1.0 - pow(beta_1, <double> t)))


def adam_step_size_table(double lr, double beta_1, double beta_2, Py_ssize_t t_max):
    """Lazy Adam's bias-corrected step sizes for step counts ``0 .. t_max``.

    Entry ``t`` (``t >= 1``) is the float32 rounding of
    ``lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``, computed exactly as
    :func:`adam_step_rows` computes it per row (entry 0 is 0). Passed to ``adam_step_rows`` as
    ``step_sizes``, it replaces two ``pow`` calls per row, most of the cost of a row of width 1.

    Parameters
    ----------
    lr : float
        Base learning rate.
    beta_1, beta_2 : float
        Adam's constants.
    t_max : int
        Largest step count in the table (``>= 0``).

    Returns
    -------
    step_sizes : ndarray of shape (t_max + 1,), float32
    """
    if t_max < 0:
        raise ValueError(f"adam_step_size_table: t_max must be >= 0, got {t_max}.")
    cdef float[::1] table = np.zeros(t_max + 1, dtype=np.float32)
    cdef Py_ssize_t t
    for t in range(1, t_max + 1):
        table[t] = _lazy_step_size(lr, beta_1, beta_2, t)
    return np.asarray(table)


cdef double _ordered_sum(const double[::1] parts) noexcept:
    """Sum in index order: per-chunk partial sums give the same total for every thread count."""
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(parts.shape[0]):
        total += parts[i]
    return total



def _check_len(name, ref, **arrays):
    for key, arr in arrays.items():
        if arr.shape[0] != ref:
            raise ValueError(f"{name}: {key} has {arr.shape[0]} entries, param has {ref}.")


def adam_step(float[::1] param,          # IN/OUT (n,)
              const float[::1] grad,     # IN (n,)
              float[::1] m,              # IN/OUT (n,) first moment
              float[::1] v,              # IN/OUT (n,) second moment
              double lr_t, double beta_1, double beta_2, double epsilon, double l2,
              int n_threads=1):
    """One Adam step over all entries, in place.

    ``g = grad + l2 * param``; ``m = beta_1 m + (1 - beta_1) g``; ``v = beta_2 v + (1 - beta_2) g**2``;
    ``param -= lr_t * m / (sqrt(v) + epsilon)``.

    Parameters
    ----------
    param : ndarray of shape (n,), float32
        Flat parameter view, updated in place.
    grad : ndarray of shape (n,), float32
        Its gradient.
    m, v : ndarray of shape (n,), float32
        Adam's moment estimates, updated in place.
    lr_t : float
        Step size with scikit-learn's bias correction already applied:
        ``learning_rate_init * sqrt(1 - beta_2**t) / (1 - beta_1**t)``.
    beta_1, beta_2, epsilon : float
        Adam's constants.
    l2 : float
        L2 penalty coefficient added to the gradient (0 when the caller already added it).
    n_threads : int, default=1
        Number of OpenMP threads (``schedule="static"``).

    Returns
    -------
    squared_norm : float
        ``sum(param**2)`` before the update (the L2 term of the loss, computed in the same pass;
        the same value for every thread count).
    """
    cdef Py_ssize_t n = param.shape[0], i
    _check_len("adam_step", n, grad=grad, m=m, v=v)
    n_threads = threads_for(n_threads, param.shape[0], MIN_ELEMENTS_PER_THREAD)
    # scalars arrive as Python floats (float64): 1 - beta is formed in float64 before rounding,
    # as scikit-learn does (1 - float32(0.999) would be off by 1.3e-5 relative)
    cdef float b1 = <float> beta_1, b2 = <float> beta_2
    cdef float one_b1 = <float> (1.0 - beta_1), one_b2 = <float> (1.0 - beta_2)
    cdef float lr_f = <float> lr_t, eps = <float> epsilon, l2_f = <float> l2
    if n == 0:
        return 0.0
    cdef Py_ssize_t n_chunks = (n + _CHUNK - 1) // _CHUNK, c, start
    cdef double[::1] chunk_sums = np.empty(n_chunks)
    with nogil:
        for c in prange(n_chunks, schedule="static", num_threads=n_threads):
            start = c * _CHUNK
            chunk_sums[c] = ff_adam_update(&param[start], &grad[start], &m[start], &v[start],
                                           min(_CHUNK, n - start), lr_f, b1, b2, one_b1, one_b2,
                                           eps, l2_f)
    return _ordered_sum(chunk_sums)


def sgd_step(float[::1] param,            # IN/OUT (n,)
             const float[::1] grad,       # IN (n,)
             float[::1] velocity,         # IN/OUT (n,)
             double lr, double momentum, bint nesterov, double l2,
             int n_threads=1):
    """One SGD step with (Nesterov) momentum over all entries, in place.

    ``g = grad + l2 * param``; ``velocity = momentum * velocity - lr * g``; then
    ``param += momentum * velocity - lr * g`` if ``nesterov`` else ``param += velocity``
    (scikit-learn's ``SGDOptimizer``).

    Parameters
    ----------
    param : ndarray of shape (n,), float32
        Flat parameter view, updated in place.
    grad : ndarray of shape (n,), float32
        Its gradient.
    velocity : ndarray of shape (n,), float32
        Momentum buffer, updated in place.
    lr : float
        Current learning rate.
    momentum : float
        Momentum in ``[0, 1]`` (0: plain SGD).
    nesterov : bool
        Use Nesterov's momentum.
    l2 : float
        L2 penalty coefficient added to the gradient.
    n_threads : int, default=1
        Number of OpenMP threads (``schedule="static"``).

    Returns
    -------
    squared_norm : float
        ``sum(param**2)`` before the update, as :func:`adam_step` returns it.
    """
    cdef Py_ssize_t n = param.shape[0]
    _check_len("sgd_step", n, grad=grad, velocity=velocity)
    n_threads = threads_for(n_threads, param.shape[0], MIN_ELEMENTS_PER_THREAD)
    cdef float lr_f = <float> lr, mom = <float> momentum, l2_f = <float> l2
    if n == 0:
        return 0.0
    cdef Py_ssize_t n_chunks = (n + _CHUNK - 1) // _CHUNK, c, start
    cdef double[::1] chunk_sums = np.empty(n_chunks)
    with nogil:
        for c in prange(n_chunks, schedule="static", num_threads=n_threads):
            start = c * _CHUNK
            chunk_sums[c] = _sgd_update(&param[start], &grad[start], &velocity[start],
                                        min(_CHUNK, n - start), lr_f, mom, nesterov, l2_f)
    return _ordered_sum(chunk_sums)


def adam_step_rows(float[:, ::1] param,          # IN/OUT (n_rows, p)
                   const float[:, ::1] grad_rows, # IN (n_active, p): gradient of rows[k] in row k
                   const index_t[::1] rows,       # IN (n_active,) unique row ids
                   float[:, ::1] m,               # IN/OUT (n_rows, p)
                   float[:, ::1] v,               # IN/OUT (n_rows, p)
                   int64_t[::1] t,                # IN/OUT (n_rows,) per-row step counters
                   double lr, double beta_1, double beta_2, double epsilon, double l2,
                   int n_threads=1, const float[::1] step_sizes=None):
    """Lazy Adam: one step on the listed rows only, each with its own step counter.

    For every ``k``, row ``r = rows[k]`` is updated with gradient ``grad_rows[k]``:
    ``t[r] += 1``; ``g = grad_rows[k] + l2 * param[r]``; the moments ``m[r]``, ``v[r]`` as in
    :func:`adam_step`; ``param[r] -= lr_r * m[r] / (sqrt(v[r]) + epsilon)`` with the exact bias
    correction from the row's own count, ``lr_r = lr * sqrt(1 - beta_2**t[r]) / (1 - beta_1**t[r])``
    (computed in float64). Rows not listed are not touched: their moments do not decay and their
    counters do not advance (the "lazy Adam" of SLIDE / TensorFlow's LazyAdam). With every row
    listed at every step this is exactly :func:`adam_step` with scikit-learn's ``lr_t``.

    Parameters
    ----------
    param : ndarray of shape (n_rows, p), float32
        Parameter matrix (e.g. ``W.T`` stored neuron-major, or a bias as ``(n_rows, 1)``).
    grad_rows : ndarray of shape (n_active, p), float32
        Compact gradient: row ``k`` is the gradient of ``param[rows[k]]``.
    rows : ndarray of shape (n_active,), int32
        Row ids, UNIQUE (duplicates would race; not checked) and in ``[0, n_rows)`` (ids outside
        are skipped and reported with a ValueError after the step).
    m, v : ndarray of shape (n_rows, p), float32
        Moment estimates, updated in place on the listed rows.
    t : ndarray of shape (n_rows,), int64
        Per-row step counters kept by the caller (start at 0), incremented on the listed rows.
    lr : float
        Base learning rate (``learning_rate_init``), without bias correction.
    beta_1, beta_2, epsilon : float
        Adam's constants.
    l2 : float
        L2 penalty coefficient added to the gradient of the listed rows.
    n_threads : int, default=1
        Number of OpenMP threads (over the listed rows, ``schedule="static"``).
    step_sizes : ndarray of float32, optional
        :func:`adam_step_size_table` for these ``lr``, ``beta_1``, ``beta_2``: a row whose new
        count is in the table takes its step size from it (the same bits), the others compute
        it.

    Returns
    -------
    squared_norm : float
        Sum of the squared entries of the listed rows before the update (their L2 term).
    """
    cdef Py_ssize_t n_rows = param.shape[0], p = param.shape[1], n_active = rows.shape[0]
    cdef Py_ssize_t k
    if grad_rows.shape[0] != n_active or grad_rows.shape[1] != p:
        raise ValueError(
            f"adam_step_rows: grad_rows {(grad_rows.shape[0], grad_rows.shape[1])} must be (len(rows), p) = "
            f"{(n_active, p)}."
        )
    for name, arr in (("m", m), ("v", v)):
        if arr.shape[0] != n_rows or arr.shape[1] != p:
            raise ValueError(
                f"adam_step_rows: {name} {(arr.shape[0], arr.shape[1])} differs from param {(n_rows, p)}."
            )
    if t.shape[0] != n_rows:
        raise ValueError(f"adam_step_rows: t has {t.shape[0]} entries, param {n_rows} rows.")
    n_threads = threads_for(n_threads, rows.shape[0] * param.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef index_t r
    cdef int64_t tr
    cdef float lr_r
    cdef float b1 = <float> beta_1, b2 = <float> beta_2
    cdef float one_b1 = <float> (1.0 - beta_1), one_b2 = <float> (1.0 - beta_2)
    cdef float eps = <float> epsilon, l2_f = <float> l2
    cdef float* w
    cdef float* mr
    cdef float* vr
    cdef const float* gr
    cdef int bad = 0
    if n_active == 0:
        return 0.0
    cdef double[::1] row_sums = np.zeros(n_active)
    cdef Py_ssize_t n_sizes = step_sizes.shape[0] if step_sizes is not None else 0
    cdef const float* sizes = &step_sizes[0] if n_sizes > 0 else NULL
    with nogil:
        for k in prange(n_active, schedule="static", num_threads=n_threads):
            r = rows[k]
            if r < 0 or r >= n_rows:
                bad += 1
                continue
            tr = t[r] + 1
            t[r] = tr
            if tr < n_sizes:
                lr_r = sizes[tr]
            else:
                lr_r = _lazy_step_size(lr, beta_1, beta_2, tr)
            if p == 0:
                continue
            w = &param[r, 0]
            mr = &m[r, 0]
            vr = &v[r, 0]
            gr = &grad_rows[k, 0]
            row_sums[k] = ff_adam_update(w, gr, mr, vr, p, lr_r, b1, b2, one_b1, one_b2, eps, l2_f)
    if bad:
        raise ValueError(f"adam_step_rows: {bad} row ids outside [0, {n_rows}) were skipped.")
    return _ordered_sum(row_sums)


# Fused gradient + update of the rows an active-set layer touched (the LSH output layer over a
# dense hidden layer). The layer's weight gradient is never materialised: each row's gradient is
# summed into a thread-local buffer and applied while it is still in L1, and the row's bias is
# updated in the same pass. Against computing a compact (n_touched, d) gradient and then
# updating (two passes over ~64 MB at the Amazon-670K shape), this saves the gradient's write
# and read-back and one pass of scattered row misses.

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FF_OPTIM_PREFETCH_W(p) __builtin_prefetch((const void*) (p), 1, 3)
    #else
    #define FF_OPTIM_PREFETCH_W(p) ((void) 0)
    #endif
    """
    void FF_OPTIM_PREFETCH_W(const void* p) noexcept nogil

#: Touched rows ahead of the current one whose parameter and state rows are prefetched (the
#: rows are scattered over the layer, so each starts with cache misses otherwise).
cdef enum:
    _ROWS_AHEAD = 2


cdef inline void _prefetch_rows_w(float* a, float* b, float* c, Py_ssize_t d) noexcept nogil:
    """Hint the cache lines of three rows of ``d`` floats for writing (64-byte lines)."""
    cdef Py_ssize_t j
    for j in range(0, d, 16):
        FF_OPTIM_PREFETCH_W(a + j)
        FF_OPTIM_PREFETCH_W(b + j)
        FF_OPTIM_PREFETCH_W(c + j)


cdef struct BatchEntries:
    # the layer's batch as the fused row steps read it (see ``_batch_entries``)
    const float* X             # (n, d) inputs
    Py_ssize_t n
    Py_ssize_t d
    const float* delta         # (nnz,) per active entry
    Py_ssize_t nnz
    const int64_t* t_entries   # (n_entries,) entries grouped by row slot
    Py_ssize_t n_entries
    const int32_t* t_sample    # (n_entries,) sample of t_entries[q]
    float scale


cdef BatchEntries _batch_entries(const float[:, ::1] X, const float[::1] delta,
                                 const int64_t[::1] t_entries, const int32_t[::1] t_sample,
                                 float scale):
    """The pointers and sizes of a batch (NULL for empty arrays)."""
    cdef BatchEntries b
    b.n, b.d = X.shape[0], X.shape[1]
    b.X = &X[0, 0] if b.n * b.d > 0 else NULL
    b.nnz = delta.shape[0]
    b.delta = &delta[0] if b.nnz else NULL
    b.n_entries = t_entries.shape[0]
    b.t_entries = &t_entries[0] if b.n_entries else NULL
    b.t_sample = &t_sample[0] if b.n_entries else NULL
    b.scale = scale
    return b


cdef inline int _row_grads(const BatchEntries* b, const float* w, float* acc, int64_t q0,
                           int64_t q1, float* g, float* gb) noexcept nogil:
    """One touched row's gradients from its entries ``e = t_entries[q]``, ``q`` in ``q0:q1``,
    in that order: ``g = scale * sum delta[e] * X[t_sample[q]]`` and
    ``gb = scale * sum delta[e]`` (the arithmetic of ``_active.grad_rows_dense``, same bits)
    and, when ``acc`` is not NULL, the
    input gradient ``acc[t_sample[q]] += delta[e] * w`` from the weight row ``w`` before
    its update (that of ``_active.active_input_grad_rows``). Returns 1, leaving the sums
    partial, when the entries or their samples are out of range."""
    cdef int64_t q, e
    cdef int32_t i
    cdef float bias_sum = 0.0
    cdef Py_ssize_t d = b.d
    if q0 < 0 or q1 < q0 or q1 > b.n_entries:
        return 1
    if d:
        memset(g, 0, d * sizeof(float))
    for q in range(q0, q1):
        e = b.t_entries[q]
        if e < 0 or e >= b.nnz:
            return 1
        i = b.t_sample[q]
        if i < 0 or i >= b.n:
            return 1
        bias_sum = bias_sum + b.scale * b.delta[e]
        if d and b.delta[e] != 0:
            ff_vec_axpy(d, b.scale * b.delta[e], b.X + i * d, g)
            if acc != NULL:
                ff_vec_axpy(d, b.delta[e], w, acc + i * d)
    gb[0] = bias_sum
    return 0


cdef float* _input_grad_accumulator(bint wanted, float[:, ::1] input_grad,
                                    float[:, :, ::1] partial, int* team) noexcept nogil:
    """Inside a parallel block: the calling thread's zeroed accumulator of the input gradient
    (``input_grad`` for thread 0, ``partial[tid - 1]`` for the others; thread 0 stores the team
    size in ``team``), or NULL when it is not ``wanted`` or empty."""
    cdef Py_ssize_t n = input_grad.shape[0] if wanted else 0
    cdef Py_ssize_t d = input_grad.shape[1] if wanted else 0
    cdef int tid
    cdef float* acc
    if n * d == 0:
        return NULL
    tid = omp_get_thread_num()
    if tid == 0:
        team[0] = omp_get_num_threads()
    acc = &input_grad[0, 0] if tid == 0 else &partial[tid - 1, 0, 0]
    memset(acc, 0, n * d * sizeof(float))
    return acc


def _sum_input_grad(float[:, ::1] input_grad, float[:, :, ::1] partial, int team,
                    int n_threads):
    """After the pass: add the other threads' accumulators into ``input_grad`` (when asked
    for), in thread order."""
    cdef Py_ssize_t i, n, d
    cdef int k
    if input_grad is None:
        return
    n, d = input_grad.shape[0], input_grad.shape[1]
    if team > 1 and n * d > 0:
        with nogil:
            for i in prange(n, schedule="static", num_threads=n_threads):
                for k in range(team - 1):
                    ff_vec_axpy(d, 1.0, &partial[k, i, 0], &input_grad[i, 0])


def _fused_threads(name, input_grad, partial, Py_ssize_t n, Py_ssize_t d, Py_ssize_t nt,
                   int n_threads):
    """Check the optional input-gradient outputs of a fused row step and return its thread
    count: ``n_threads`` when the input gradient is asked for (its sums follow the split of
    the rows, as in ``_active.active_input_grad_rows``), else fewer for a small pass. With no
    touched row the input gradient is zero."""
    if input_grad is None:
        return threads_for(n_threads, nt * (d + 1), MIN_ELEMENTS_PER_THREAD)
    if input_grad.shape[0] != n or input_grad.shape[1] != d:
        raise ValueError(f"{name}: input_grad must be ({n}, {d}).")
    if n_threads > 1 and (partial is None or partial.shape[0] < n_threads - 1
                          or partial.shape[1] != n or partial.shape[2] != d):
        raise ValueError(f"{name}: partial must be (>= {n_threads - 1}, {n}, {d}).")
    if nt == 0:
        input_grad[...] = 0
    return n_threads


def _check_fused_rows(name, Py_ssize_t n_rows, Py_ssize_t d, param, states, bias, bias_states,
                      Py_ssize_t nt, X, delta, t_indptr, t_entries, t_sample):
    """Shapes shared by the fused row steps (the entries themselves are checked in the pass)."""
    for key, arr in states.items():
        if arr.shape[0] != n_rows or arr.shape[1] != d:
            raise ValueError(f"{name}: {key} {tuple(arr.shape[:2])} differs from param {(n_rows, d)}.")
    for key, arr in dict(bias=bias, **bias_states).items():
        if arr.shape[0] != n_rows:
            raise ValueError(f"{name}: {key} has {arr.shape[0]} entries, param {n_rows} rows.")
    if X.shape[1] != d:
        raise ValueError(f"{name}: X has {X.shape[1]} columns, param {d}.")
    if t_indptr.shape[0] < nt + 1:
        raise ValueError(f"{name}: t_indptr has {t_indptr.shape[0]} entries, needs len(rows) + 1 = {nt + 1}.")
    if t_sample.shape[0] != t_entries.shape[0]:
        raise ValueError(f"{name}: t_sample has {t_sample.shape[0]} entries, t_entries {t_entries.shape[0]}.")


def _raise_if_skipped(name, int bad_rows, int bad_entries, Py_ssize_t n_rows):
    """Raise the ValueError of a fused row step whose pass skipped invalid rows or entries."""
    if bad_rows:
        raise ValueError(f"{name}: {bad_rows} row ids outside [0, {n_rows}) were skipped.")
    if bad_entries:
        raise ValueError(f"{name}: {bad_entries} rows with entries outside the batch "
                         "(t_indptr / t_entries / t_sample) were skipped.")


def adam_step_grad_rows(float[:, ::1] param,           # IN/OUT (n_rows, d) neuron-major weights
                        float[:, ::1] m,               # IN/OUT (n_rows, d)
                        float[:, ::1] v,               # IN/OUT (n_rows, d)
                        int64_t[::1] t,                # IN/OUT (n_rows,) per-row step counters
                        float[::1] bias,               # IN/OUT (n_rows,)
                        float[::1] bias_m,             # IN/OUT (n_rows,)
                        float[::1] bias_v,             # IN/OUT (n_rows,)
                        int64_t[::1] bias_t,           # IN/OUT (n_rows,)
                        const index_t[::1] rows,       # IN (n_touched,) unique row ids
                        const float[:, ::1] X,         # IN (n, d) the layer's input batch
                        const float[::1] delta,        # IN (nnz,) dLoss/d(output) per active entry
                        const int64_t[::1] t_indptr,   # IN (>= n_touched + 1,)
                        const int64_t[::1] t_entries,  # IN entries grouped by row slot
                        const int32_t[::1] t_sample,   # IN (n_entries,) sample of t_entries[q]
                        float scale,
                        double lr, double beta_1, double beta_2, double epsilon, double l2,
                        double bias_l2, int n_threads=1, const float[::1] step_sizes=None,
                        float[:, ::1] input_grad=None,        # OUT (n, d) or None
                        float[:, :, ::1] partial=None):       # SCRATCH (>= n_threads - 1, n, d)
    """Lazy Adam on the rows of an active-set layer, each row's gradient computed in the pass.

    For every slot ``s``, the gradient of row ``r = rows[s]`` is
    ``scale * sum_q delta[e] * X[t_sample[q]]`` and that of its bias
    ``scale * sum_q delta[e]``, over the entries ``e = t_entries[q]``, ``q`` in
    ``t_indptr[s]:t_indptr[s + 1]``, in that order (the layout of ``_active.touched_rows``; the sums of
    ``_active.grad_rows_dense``). Row ``r`` of ``param`` and entry ``r`` of ``bias`` then take
    :func:`adam_step_rows`' step with their own counters (``l2`` and ``bias_l2``). The result
    has the same bits as ``grad_rows_dense`` followed by ``adam_step_rows`` on the weights and
    on the biases (as ``(n_rows, 1)``), for every thread count.

    Parameters
    ----------
    param, m, v : ndarray of shape (n_rows, d), float32
        Weights (one row per neuron) and Adam's moments, updated in place on the listed rows.
    t : ndarray of shape (n_rows,), int64
        The weights' per-row step counters.
    bias, bias_m, bias_v : ndarray of shape (n_rows,), float32
        Biases and their moments.
    bias_t : ndarray of shape (n_rows,), int64
        The biases' step counters.
    rows : ndarray of shape (n_touched,), int32
        Row ids, UNIQUE (duplicates would race; not checked) and in ``[0, n_rows)``.
    X : ndarray of shape (n, d), float32
        The layer's input batch.
    delta : ndarray of shape (nnz,), float32
        Gradient of the loss with respect to each active entry's output.
    t_indptr, t_entries, t_sample : ndarray
        The active entries grouped by row slot and the sample of each of them, in the
        same order (``_active.touched_rows``).
    scale : float
        Factor of the gradient (``1 / n`` for a mean loss).
    lr, beta_1, beta_2, epsilon : float
        Adam's constants (``lr`` without bias correction).
    l2, bias_l2 : float
        L2 penalty of the weights and of the biases.
    n_threads : int, default=1
        OpenMP threads (over the rows, static schedule).
    step_sizes : ndarray of float32, optional
        :func:`adam_step_size_table` for ``lr``, ``beta_1``, ``beta_2``.
    input_grad : ndarray of shape (n, d), float32, optional
        Output: the gradient with respect to the layer's input, ``sum_e delta[e] * W[r]`` over
        each sample's entries, from the rows before their update, computed in the same pass
        (each row is read once for both). The same bits as
        ``_active.active_input_grad_rows`` with the same ``n_threads``.
    partial : ndarray of shape (>= n_threads - 1, n, d), float32, optional
        Scratch of the other threads' input-gradient sums (needed with ``input_grad`` when
        ``n_threads > 1``).

    Returns
    -------
    squared_norm, bias_squared_norm : float
        Sums of the squared weights and biases of the listed rows before the update.
    """
    cdef Py_ssize_t n_rows = param.shape[0], d = param.shape[1], nt = rows.shape[0]
    cdef Py_ssize_t n = X.shape[0]
    _check_fused_rows("adam_step_grad_rows", n_rows, d, param, {"m": m, "v": v}, bias,
                      {"t": t, "bias_m": bias_m, "bias_v": bias_v, "bias_t": bias_t}, nt, X,
                      delta, t_indptr, t_entries, t_sample)
    n_threads = _fused_threads("adam_step_grad_rows", input_grad, partial, n, d, nt, n_threads)
    cdef bint with_input_grad = input_grad is not None
    if nt == 0:
        return 0.0, 0.0
    cdef float b1 = <float> beta_1, b2 = <float> beta_2
    cdef float one_b1 = <float> (1.0 - beta_1), one_b2 = <float> (1.0 - beta_2)
    cdef float eps = <float> epsilon, l2_f = <float> l2, bias_l2_f = <float> bias_l2
    cdef Py_ssize_t n_sizes = step_sizes.shape[0] if step_sizes is not None else 0
    cdef const float* sizes = &step_sizes[0] if n_sizes > 0 else NULL
    cdef double[::1] row_sums = np.zeros(nt)
    cdef double[::1] bias_sums = np.zeros(nt)
    cdef BatchEntries batch = _batch_entries(X, delta, t_entries, t_sample, scale)
    cdef Py_ssize_t s
    cdef index_t r, ra
    cdef int64_t tr, q0, q1
    cdef float lr_r, gb
    cdef float* g
    cdef int bad_rows = 0, bad_entries = 0, team = 1
    cdef int* teamp = &team     # written inside the parallel block, read after it
    cdef float* acc
    with nogil, parallel(num_threads=n_threads):
        g = <float*> malloc((d if d > 0 else 1) * sizeof(float))
        acc = _input_grad_accumulator(with_input_grad, input_grad, partial, teamp)
        # static: a fixed split of the rows over the threads, so that the input gradient's
        # sums are the same for a given thread count (as _active.active_input_grad_rows')
        for s in prange(nt, schedule="static", chunksize=64):
            if s + _ROWS_AHEAD < nt:
                ra = rows[s + _ROWS_AHEAD]
                if 0 <= ra < n_rows:
                    _prefetch_rows_w(&param[ra, 0], &m[ra, 0], &v[ra, 0], d)
                    _prefetch_rows_w(&bias[ra], &bias_m[ra], &bias_v[ra], 1)
                    FF_OPTIM_PREFETCH_W(&t[ra])
                    FF_OPTIM_PREFETCH_W(&bias_t[ra])
            r = rows[s]
            q0 = t_indptr[s]
            q1 = t_indptr[s + 1]
            if r < 0 or r >= n_rows:
                bad_rows += 1
                continue
            gb = 0.0
            if _row_grads(&batch, &param[r, 0], acc, q0, q1, g, &gb):
                bad_entries += 1
                continue
            tr = t[r] + 1
            t[r] = tr
            lr_r = sizes[tr] if tr < n_sizes else _lazy_step_size(lr, beta_1, beta_2, tr)
            if d:
                row_sums[s] = ff_adam_update(&param[r, 0], g, &m[r, 0], &v[r, 0], d, lr_r, b1,
                                             b2, one_b1, one_b2, eps, l2_f)
            tr = bias_t[r] + 1
            bias_t[r] = tr
            lr_r = sizes[tr] if tr < n_sizes else _lazy_step_size(lr, beta_1, beta_2, tr)
            bias_sums[s] = ff_adam_update(&bias[r], &gb, &bias_m[r], &bias_v[r], 1, lr_r, b1,
                                          b2, one_b1, one_b2, eps, bias_l2_f)
        free(g)
    _sum_input_grad(input_grad, partial, team, n_threads)
    _raise_if_skipped("adam_step_grad_rows", bad_rows, bad_entries, n_rows)
    return _ordered_sum(row_sums), _ordered_sum(bias_sums)


def sgd_step_grad_rows(float[:, ::1] param,            # IN/OUT (n_rows, d) neuron-major weights
                       float[:, ::1] velocity,         # IN/OUT (n_rows, d)
                       float[::1] bias,                # IN/OUT (n_rows,)
                       float[::1] bias_velocity,       # IN/OUT (n_rows,)
                       const index_t[::1] rows,        # IN (n_touched,) unique row ids
                       const float[:, ::1] X,          # IN (n, d)
                       const float[::1] delta,         # IN (nnz,)
                       const int64_t[::1] t_indptr,    # IN (>= n_touched + 1,)
                       const int64_t[::1] t_entries,   # IN
                       const int32_t[::1] t_sample,   # IN (n_entries,)
                       float scale, double lr, double momentum, bint nesterov, double l2,
                       double bias_l2, int n_threads=1,
                       float[:, ::1] input_grad=None,         # OUT (n, d) or None
                       float[:, :, ::1] partial=None):        # SCRATCH (>= n_threads - 1, n, d)
    """Lazy SGD (momentum / Nesterov) on the rows of an active-set layer, each row's gradient
    computed in the pass: as :func:`adam_step_grad_rows`, with :func:`sgd_step_rows`' update
    (the same bits as ``grad_rows_dense`` followed by ``sgd_step_rows`` on the weights and on
    the biases).

    Parameters
    ----------
    param, velocity : ndarray of shape (n_rows, d), float32
        Weights and their momentum buffer.
    bias, bias_velocity : ndarray of shape (n_rows,), float32
        Biases and their momentum buffer.
    rows, X, delta, t_indptr, t_entries, t_sample, scale :
        As :func:`adam_step_grad_rows`.
    lr, momentum : float
        Learning rate and momentum.
    nesterov : bool
        Use Nesterov's momentum.
    l2, bias_l2 : float
        L2 penalty of the weights and of the biases.
    n_threads : int, default=1
        OpenMP threads.
    input_grad, partial : ndarray, optional
        As :func:`adam_step_grad_rows`: the input gradient from the rows before the update.

    Returns
    -------
    squared_norm, bias_squared_norm : float
        Sums of the squared weights and biases of the listed rows before the update.
    """
    cdef Py_ssize_t n_rows = param.shape[0], d = param.shape[1], nt = rows.shape[0]
    cdef Py_ssize_t n = X.shape[0]
    _check_fused_rows("sgd_step_grad_rows", n_rows, d, param, {"velocity": velocity}, bias,
                      {"bias_velocity": bias_velocity}, nt, X, delta, t_indptr, t_entries,
                      t_sample)
    n_threads = _fused_threads("sgd_step_grad_rows", input_grad, partial, n, d, nt, n_threads)
    cdef bint with_input_grad = input_grad is not None
    if nt == 0:
        return 0.0, 0.0
    cdef float lr_f = <float> lr, mom = <float> momentum
    cdef float l2_f = <float> l2, bias_l2_f = <float> bias_l2
    cdef double[::1] row_sums = np.zeros(nt)
    cdef double[::1] bias_sums = np.zeros(nt)
    cdef BatchEntries batch = _batch_entries(X, delta, t_entries, t_sample, scale)
    cdef Py_ssize_t s
    cdef index_t r, ra
    cdef int64_t q0, q1
    cdef float gb
    cdef float* g
    cdef int bad_rows = 0, bad_entries = 0, team = 1
    cdef int* teamp = &team     # written inside the parallel block, read after it
    cdef float* acc
    with nogil, parallel(num_threads=n_threads):
        g = <float*> malloc((d if d > 0 else 1) * sizeof(float))
        acc = _input_grad_accumulator(with_input_grad, input_grad, partial, teamp)
        # static: a fixed split of the rows over the threads, so that the input gradient's
        # sums are the same for a given thread count (as _active.active_input_grad_rows')
        for s in prange(nt, schedule="static", chunksize=64):
            if s + _ROWS_AHEAD < nt:
                ra = rows[s + _ROWS_AHEAD]
                if 0 <= ra < n_rows:
                    _prefetch_rows_w(&param[ra, 0], &velocity[ra, 0], &velocity[ra, 0], d)
                    FF_OPTIM_PREFETCH_W(&bias[ra])
                    FF_OPTIM_PREFETCH_W(&bias_velocity[ra])
            r = rows[s]
            q0 = t_indptr[s]
            q1 = t_indptr[s + 1]
            if r < 0 or r >= n_rows:
                bad_rows += 1
                continue
            gb = 0.0
            if _row_grads(&batch, &param[r, 0], acc, q0, q1, g, &gb):
                bad_entries += 1
                continue
            if d:
                row_sums[s] = _sgd_update(&param[r, 0], g, &velocity[r, 0], d, lr_f, mom,
                                          nesterov, l2_f)
            bias_sums[s] = _sgd_update(&bias[r], &gb, &bias_velocity[r], 1, lr_f, mom, nesterov,
                                       bias_l2_f)
        free(g)
    _sum_input_grad(input_grad, partial, team, n_threads)
    _raise_if_skipped("sgd_step_grad_rows", bad_rows, bad_entries, n_rows)
    return _ordered_sum(row_sums), _ordered_sum(bias_sums)


def sgd_step_rows(float[:, ::1] param,           # IN/OUT (n_rows, p)
                  const float[:, ::1] grad_rows, # IN (n_active, p)
                  const index_t[::1] rows,       # IN (n_active,) unique row ids
                  float[:, ::1] velocity,        # IN/OUT (n_rows, p)
                  double lr, double momentum, bint nesterov, double l2,
                  int n_threads=1):
    """Lazy SGD with (Nesterov) momentum: :func:`sgd_step` applied to the listed rows only.

    Row ``rows[k]`` gets gradient ``grad_rows[k]``; rows not listed keep their parameters and
    velocity unchanged (their momentum does not decay).

    Parameters
    ----------
    param : ndarray of shape (n_rows, p), float32
        Parameter matrix, updated in place on the listed rows.
    grad_rows : ndarray of shape (n_active, p), float32
        Compact gradient, row ``k`` for ``param[rows[k]]``.
    rows : ndarray of shape (n_active,), int32
        Unique row ids in ``[0, n_rows)`` (ids outside are skipped and reported with a ValueError).
    velocity : ndarray of shape (n_rows, p), float32
        Momentum buffer.
    lr, momentum : float
        Learning rate and momentum.
    nesterov : bool
        Use Nesterov's momentum.
    l2 : float
        L2 penalty coefficient.
    n_threads : int, default=1
        Number of OpenMP threads (over the listed rows).

    Returns
    -------
    squared_norm : float
        Sum of the squared entries of the listed rows before the update (their L2 term).
    """
    cdef Py_ssize_t n_rows = param.shape[0], p = param.shape[1], n_active = rows.shape[0]
    cdef Py_ssize_t k
    if grad_rows.shape[0] != n_active or grad_rows.shape[1] != p:
        raise ValueError(
            f"sgd_step_rows: grad_rows {(grad_rows.shape[0], grad_rows.shape[1])} must be (len(rows), p) = "
            f"{(n_active, p)}."
        )
    if velocity.shape[0] != n_rows or velocity.shape[1] != p:
        raise ValueError(
            f"sgd_step_rows: velocity {(velocity.shape[0], velocity.shape[1])} differs from param {(n_rows, p)}."
        )
    n_threads = threads_for(n_threads, rows.shape[0] * param.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef index_t r
    cdef float lr_f = <float> lr, mom = <float> momentum, l2_f = <float> l2
    cdef int bad = 0
    if n_active == 0 or p == 0:
        return 0.0
    cdef double[::1] row_sums = np.zeros(n_active)
    with nogil:
        for k in prange(n_active, schedule="static", num_threads=n_threads):
            r = rows[k]
            if r < 0 or r >= n_rows:
                bad += 1
                continue
            row_sums[k] = _sgd_update(&param[r, 0], &grad_rows[k, 0], &velocity[r, 0], p, lr_f,
                                      mom, nesterov, l2_f)
    if bad:
        raise ValueError(f"sgd_step_rows: {bad} row ids outside [0, {n_rows}) were skipped.")
    return _ordered_sum(row_sums)


# Adam on a weight gradient given by its factors, ``G = alpha * left.T @ right`` (a sampled
# weight gradient over k batch examples): each block of a row of G is formed in an L1 buffer
# right before Adam updates that block, so G is never written to memory. The row blocks are
# sums of k products in a fixed order (FMA where the CPU has it: AVX2 + FMA chosen at run time),
# so every thread count gives the same bits.
from cython.parallel cimport parallel
from fastfire._core._openmp cimport omp_get_thread_num

cdef extern from *:
    """
    #define FF_OUTER_BLOCK 512
    #if defined(__GNUC__) && defined(__x86_64__)
    #define FF_OUTER_FMA 1
    __attribute__((target("avx2,fma")))
    static void ff_outer_block_fma(float *g, const float *a, const float *right, Py_ssize_t ld,
                                   Py_ssize_t k, Py_ssize_t width) {
        Py_ssize_t c = 0, j;
        for (; c + 32 <= width; c += 32) {
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(),
                   s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            for (j = 0; j < k; j++) {
                const __m256 aj = _mm256_broadcast_ss(a + j);
                const float *r = right + j * ld + c;
                s0 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(r), s0);
                s1 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(r + 8), s1);
                s2 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(r + 16), s2);
                s3 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(r + 24), s3);
            }
            _mm256_storeu_ps(g + c, s0);
            _mm256_storeu_ps(g + c + 8, s1);
            _mm256_storeu_ps(g + c + 16, s2);
            _mm256_storeu_ps(g + c + 24, s3);
        }
        for (; c + 8 <= width; c += 8) {
            __m256 s0 = _mm256_setzero_ps();
            for (j = 0; j < k; j++)
                s0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + j),
                                     _mm256_loadu_ps(right + j * ld + c), s0);
            _mm256_storeu_ps(g + c, s0);
        }
        for (; c < width; c++) {
            float s = 0.0f;
            for (j = 0; j < k; j++)
                s = fmaf(a[j], right[j * ld + c], s);
            g[c] = s;
        }
    }
    /* Four rows at once (the loads of right shared): g + i * FF_OUTER_BLOCK gets
       sum_j a[i * k + j] * right[j, 0:width] for i < 4, with the arithmetic of the one-row
       kernel (the same FMA chain per entry, so the same bits). */
    __attribute__((target("avx2,fma")))
    static void ff_outer_block4_fma(float *g, const float *a, const float *right, Py_ssize_t ld,
                                    Py_ssize_t k, Py_ssize_t width) {
        Py_ssize_t c = 0, j;
        const float *a0 = a, *a1 = a + k, *a2 = a + 2 * k, *a3 = a + 3 * k;
        float *g0 = g, *g1 = g + FF_OUTER_BLOCK, *g2 = g + 2 * FF_OUTER_BLOCK,
              *g3 = g + 3 * FF_OUTER_BLOCK;
        for (; c + 16 <= width; c += 16) {
            __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps(),
                   s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps(),
                   s20 = _mm256_setzero_ps(), s21 = _mm256_setzero_ps(),
                   s30 = _mm256_setzero_ps(), s31 = _mm256_setzero_ps();
            for (j = 0; j < k; j++) {
                const float *r = right + j * ld + c;
                const __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
                __m256 aj = _mm256_broadcast_ss(a0 + j);
                s00 = _mm256_fmadd_ps(aj, r0, s00);
                s01 = _mm256_fmadd_ps(aj, r1, s01);
                aj = _mm256_broadcast_ss(a1 + j);
                s10 = _mm256_fmadd_ps(aj, r0, s10);
                s11 = _mm256_fmadd_ps(aj, r1, s11);
                aj = _mm256_broadcast_ss(a2 + j);
                s20 = _mm256_fmadd_ps(aj, r0, s20);
                s21 = _mm256_fmadd_ps(aj, r1, s21);
                aj = _mm256_broadcast_ss(a3 + j);
                s30 = _mm256_fmadd_ps(aj, r0, s30);
                s31 = _mm256_fmadd_ps(aj, r1, s31);
            }
            _mm256_storeu_ps(g0 + c, s00); _mm256_storeu_ps(g0 + c + 8, s01);
            _mm256_storeu_ps(g1 + c, s10); _mm256_storeu_ps(g1 + c + 8, s11);
            _mm256_storeu_ps(g2 + c, s20); _mm256_storeu_ps(g2 + c + 8, s21);
            _mm256_storeu_ps(g3 + c, s30); _mm256_storeu_ps(g3 + c + 8, s31);
        }
        if (c < width) {
            ff_outer_block_fma(g0 + c, a0, right + c, ld, k, width - c);
            ff_outer_block_fma(g1 + c, a1, right + c, ld, k, width - c);
            ff_outer_block_fma(g2 + c, a2, right + c, ld, k, width - c);
            ff_outer_block_fma(g3 + c, a3, right + c, ld, k, width - c);
        }
    }
    #endif
    static int ff_outer_use_fma(void) {
    #ifdef FF_OUTER_FMA
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    #else
        return 0;
    #endif
    }
    /* g[0:width] = sum_j a[j] * right[j, 0:width] (rows of right ld apart), j in order. */
    static void ff_outer_block(float *g, const float *a, const float *right, Py_ssize_t ld,
                               Py_ssize_t k, Py_ssize_t width) {
        Py_ssize_t c, j;
    #ifdef FF_OUTER_FMA
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            ff_outer_block_fma(g, a, right, ld, k, width);
            return;
        }
    #endif
        for (c = 0; c < width; c++)
            g[c] = 0.0f;
        for (j = 0; j < k; j++) {
            const float aj = a[j];
            const float *r = right + j * ld;
            for (c = 0; c < width; c++)
                g[c] += aj * r[c];
        }
    }
    /* Adam over four rows (ld_param apart) whose gradients are sum_j a[i * k + j] * right[j, :],
       formed in blocks in the scratch g (4 * FF_OUTER_BLOCK); adds each row's squared entries
       before the update to sums[i]. */
    static void ff_adam_outer_rows4(
            float *param, float *m, float *v, Py_ssize_t ld_param, Py_ssize_t p, const float *a,
            Py_ssize_t k, const float *right, Py_ssize_t ld, float *g, float lr, float b1,
            float b2, float one_b1, float one_b2, float eps, float l2, double *sums) {
        Py_ssize_t c0, width, i;
        for (c0 = 0; c0 < p; c0 += FF_OUTER_BLOCK) {
            width = p - c0 < FF_OUTER_BLOCK ? p - c0 : FF_OUTER_BLOCK;
    #ifdef FF_OUTER_FMA
            if (ff_outer_use_fma())
                ff_outer_block4_fma(g, a, right + c0, ld, k, width);
            else
    #endif
                for (i = 0; i < 4; i++)
                    ff_outer_block(g + i * FF_OUTER_BLOCK, a + i * k, right + c0, ld, k, width);
            for (i = 0; i < 4; i++)
                sums[i] += ff_adam_update(param + i * ld_param + c0, g + i * FF_OUTER_BLOCK,
                                          m + i * ld_param + c0, v + i * ld_param + c0, width,
                                          lr, b1, b2, one_b1, one_b2, eps, l2);
        }
    }
    /* Adam over one row of p entries whose gradient is sum_j a[j] * right[j, :], formed in
       blocks of FF_OUTER_BLOCK in the scratch g; returns the squared row before the update. */
    static double ff_adam_outer_row(
            float *param, float *m, float *v, Py_ssize_t p, const float *a, Py_ssize_t k,
            const float *right, Py_ssize_t ld, float *g, float lr, float b1, float b2,
            float one_b1, float one_b2, float eps, float l2) {
        double sumsq = 0.0;
        Py_ssize_t c0, width;
        for (c0 = 0; c0 < p; c0 += FF_OUTER_BLOCK) {
            width = p - c0 < FF_OUTER_BLOCK ? p - c0 : FF_OUTER_BLOCK;
            ff_outer_block(g, a, right + c0, ld, k, width);
            sumsq += ff_adam_update(param + c0, g, m + c0, v + c0, width, lr, b1, b2, one_b1,
                                    one_b2, eps, l2);
        }
        return sumsq;
    }
    """
    int FF_OUTER_BLOCK
    void ff_outer_block(float* g, const float* a, const float* right, Py_ssize_t ld,
                        Py_ssize_t k, Py_ssize_t width) noexcept nogil
    double ff_adam_outer_row(float* param, float* m, float* v, Py_ssize_t p, const float* a,
                             Py_ssize_t k, const float* right, Py_ssize_t ld, float* g, float lr,
                             float b1, float b2, float one_b1, float one_b2, float eps,
                             float l2) noexcept nogil
    void ff_adam_outer_rows4(float* param, float* m, float* v, Py_ssize_t ld_param, Py_ssize_t p,
                             const float* a, Py_ssize_t k, const float* right, Py_ssize_t ld,
                             float* g, float lr, float b1, float b2, float one_b1, float one_b2,
                             float eps, float l2, double* sums) noexcept nogil


def _check_outer(name, param, left, right, **state):
    n_rows, p = param.shape[0], param.shape[1]
    if left.shape[0] != right.shape[0] or left.shape[1] != n_rows or right.shape[1] != p:
        raise ValueError(
            f"{name}: left {(left.shape[0], left.shape[1])} and right "
            f"{(right.shape[0], right.shape[1])} must be (k, {n_rows}) and (k, {p}) for param "
            f"{(n_rows, p)}."
        )
    for key, arr in state.items():
        if arr.shape[0] != n_rows or arr.shape[1] != p:
            raise ValueError(
                f"{name}: {key} {(arr.shape[0], arr.shape[1])} differs from param {(n_rows, p)}."
            )


def outer_product(const float[:, ::1] left,    # IN (k, n_rows)
                  const float[:, ::1] right,   # IN (k, p)
                  float[:, ::1] out,           # OUT (n_rows, p)
                  double alpha=1.0, int n_threads=1):
    """``out = alpha * left.T @ right`` with the arithmetic of :func:`adam_step_outer`.

    Row ``r`` of ``out`` is ``sum_j (alpha * left[j, r]) * right[j, :]``, summed over ``j`` in
    order (with FMA where the CPU has AVX2 and FMA): the gradient that
    :func:`adam_step_outer` applies, formed in full (for optimizers without a fused step).

    Parameters
    ----------
    left : ndarray of shape (k, n_rows), float32
    right : ndarray of shape (k, p), float32
    out : ndarray of shape (n_rows, p), float32
        Overwritten.
    alpha : float, default=1.0
    n_threads : int, default=1
        OpenMP threads (over rows; the result does not depend on it).
    """
    _check_outer("outer_product", out, left, right)
    cdef Py_ssize_t n_rows = out.shape[0], p = out.shape[1], k = left.shape[0], r, j
    cdef float alpha_f = <float> alpha
    cdef float* a
    if n_rows == 0 or p == 0:
        return
    if k == 0:
        out[:, :] = 0.0
        return
    n_threads = threads_for(n_threads, n_rows * p * k, MIN_ELEMENTS_PER_THREAD)
    cdef float[:, ::1] coefs = np.empty((n_threads, k), dtype=np.float32)  # per thread
    with nogil, parallel(num_threads=n_threads):
        a = &coefs[omp_get_thread_num(), 0]
        for r in prange(n_rows, schedule="static"):
            for j in range(k):
                a[j] = alpha_f * left[j, r]
            ff_outer_block(&out[r, 0], a, &right[0, 0], p, k, p)


def adam_step_outer(float[:, ::1] param,          # IN/OUT (n_rows, p)
                    const float[:, ::1] left,     # IN (k, n_rows)
                    const float[:, ::1] right,    # IN (k, p)
                    double alpha,
                    float[:, ::1] m,              # IN/OUT (n_rows, p)
                    float[:, ::1] v,              # IN/OUT (n_rows, p)
                    double lr_t, double beta_1, double beta_2, double epsilon, double l2,
                    int n_threads=1):
    """One Adam step with the gradient ``alpha * left.T @ right`` given by its factors.

    The same update as :func:`adam_step` on ``grad = alpha * left.T @ right`` (formed as
    :func:`outer_product` forms it), but the gradient is never stored: each block of a row of
    it is computed in a small buffer right before its Adam update, so the step reads and
    writes the parameters and moments only, not a gradient matrix. For a weight gradient
    taken over ``k`` examples of a batch (column-row sampling over the batch), ``left`` and
    ``right`` are the ``k`` kept rows of the layer's input and of its ``delta``.

    Parameters
    ----------
    param : ndarray of shape (n_rows, p), float32
        Parameter matrix, updated in place.
    left : ndarray of shape (k, n_rows), float32
    right : ndarray of shape (k, p), float32
        The factors of the gradient.
    alpha : float
        Scale of the gradient (e.g. ``1 / batch size``), applied to ``left``'s entries.
    m, v : ndarray of shape (n_rows, p), float32
        Adam's moment estimates, updated in place.
    lr_t : float
        Bias-corrected step size (as for :func:`adam_step`).
    beta_1, beta_2, epsilon : float
        Adam's constants.
    l2 : float
        L2 penalty coefficient added to the gradient.
    n_threads : int, default=1
        OpenMP threads (over rows, ``schedule="static"``; the result does not depend on it).

    Returns
    -------
    squared_norm : float
        ``sum(param**2)`` before the update.
    """
    _check_outer("adam_step_outer", param, left, right, m=m, v=v)
    cdef Py_ssize_t n_rows = param.shape[0], p = param.shape[1], k = left.shape[0], r, j
    cdef float b1 = <float> beta_1, b2 = <float> beta_2
    cdef float one_b1 = <float> (1.0 - beta_1), one_b2 = <float> (1.0 - beta_2)
    cdef float lr_f = <float> lr_t, eps = <float> epsilon, l2_f = <float> l2
    cdef float alpha_f = <float> alpha
    cdef float* a
    cdef float* g
    if n_rows == 0 or p == 0:
        return 0.0
    n_threads = threads_for(n_threads, n_rows * p, MIN_ELEMENTS_PER_THREAD)
    cdef double[::1] row_sums = np.zeros(n_rows)
    cdef const float* right_ptr = &right[0, 0] if k > 0 else NULL
    # per thread: gradient blocks of four rows, then their 4 * k coefficients
    cdef float[:, ::1] scratch = np.empty((n_threads, 4 * (FF_OUTER_BLOCK + k)), dtype=np.float32)
    cdef Py_ssize_t n_groups = n_rows // 4, grp, i
    with nogil, parallel(num_threads=n_threads):
        g = &scratch[omp_get_thread_num(), 0]
        a = g + 4 * FF_OUTER_BLOCK
        for grp in prange(n_groups, schedule="static"):
            r = 4 * grp
            for i in range(4):
                for j in range(k):
                    a[i * k + j] = alpha_f * left[j, r + i]
            ff_adam_outer_rows4(&param[r, 0], &m[r, 0], &v[r, 0], p, p, a, k, right_ptr, p, g,
                                lr_f, b1, b2, one_b1, one_b2, eps, l2_f, &row_sums[r])
    for r in range(4 * n_groups, n_rows):  # the last rows, one by one
        g = &scratch[0, 0]
        a = g + FF_OUTER_BLOCK
        for j in range(k):
            a[j] = alpha_f * left[j, r]
        row_sums[r] = ff_adam_outer_row(&param[r, 0], &m[r, 0], &v[r, 0], p, a, k, right_ptr, p,
                                        g, lr_f, b1, b2, one_b1, one_b2, eps, l2_f)
    return _ordered_sum(row_sums)
