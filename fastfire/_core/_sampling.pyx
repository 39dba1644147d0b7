"""Column-row sampled matrix products (Adelman, Levy, Hakimi, Silberstein, NeurIPS 2021).

A product ``C = op(A) @ op(B)`` with inner dimension ``n`` is the sum of ``n`` outer products
``op(A)[:, i] ⊗ op(B)[i, :]``. The kernels here keep ``k`` of them, chosen by the scores
``s_i = ‖op(A)[:, i]‖ · ‖op(B)[i, :]‖``, gather the kept columns of ``op(A)`` (scaled) and rows of
``op(B)`` into contiguous buffers and multiply those with BLAS: the work is ``m·p·k`` instead of
``m·p·n`` multiply-adds, and no dense masked product is ever formed.

Schemes (``SCHEMES``):

- ``"crs"``: ``k`` draws with replacement, ``P(i) = (1-ε)·s_i/Σs + ε/n``; draw ``i`` scaled by
  ``1/(k·P(i))`` (repeated draws are merged, their scales added). Unbiased.
- ``"bernoulli"``: each ``i`` kept independently with ``p_i = (1-ε)·min(1, k·s_i/Σs) + ε·k/n``,
  scaled by ``1/p_i``. Unbiased; keeps at most about ``k`` pairs on average.
- ``"topk"``: the ``k`` largest scores, unscaled (biased, deterministic; ties by lower index).
- ``"topk_estimated"``: as ``"topk"``, with the norms computed on a random contiguous block of
  ``⌈fraction·m⌉`` rows of ``op(A)`` and ``⌈fraction·p⌉`` columns of ``op(B)``.
- ``"uniform"``: ``k`` pairs uniformly without replacement, scaled by ``n/k``. Unbiased.

The product is exact (a plain GEMM) when ``k >= n`` or every score is zero.

Randomness comes from a counter-based generator (``splitmix64`` of ``(seed, counter, j)``): the
``j``-th random number of call ``counter`` does not depend on which thread draws it, so results
are the same for every thread count. Scores and draws are computed in parallel; prefix sums and
the compaction of the kept ids are serial (``O(n)``, negligible next to the product).
"""

from cython.parallel cimport parallel, prange
from libc.math cimport ceil, sqrt
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastfire._core._blas cimport sdot_, sgemm_rm
from fastfire._core._types cimport index_t, uint64_t

SCHEMES = {"crs": 0, "bernoulli": 1, "topk": 2, "topk_estimated": 3, "uniform": 4}

cdef enum:
    _CRS = 0
    _BERNOULLI = 1
    _TOPK = 2
    _TOPK_EST = 3
    _UNIFORM = 4

cdef int _ALIGN = 16
# Scores, draws and gathers touch few floats per call; a thread joins one of them only for every
# this many floats it would read (below that, the fork and join cost more than the work).
cdef Py_ssize_t _AUX_GRAIN = 1 << 16


cdef inline int _aux_threads(Py_ssize_t size, int n_threads) noexcept nogil:
    """Threads for an auxiliary pass over ``size`` floats: at most one per ``_AUX_GRAIN``."""
    cdef Py_ssize_t t = size // _AUX_GRAIN
    if t < 1:
        return 1
    return <int> t if t < n_threads else n_threads


cdef inline Py_ssize_t _row_parts(Py_ssize_t n_rows) noexcept nogil:
    """Row blocks of a column-norm sweep: a fixed number for a given height (not the thread
    count), so the float partial sums, and the samples chosen from them, are the same for every
    number of threads."""
    return max(<Py_ssize_t> 1, min(<Py_ssize_t> 8, n_rows // 64))


def _set_aux_grain(Py_ssize_t grain):
    """Experiment hook: floats per thread of the auxiliary passes (returns the previous value)."""
    global _AUX_GRAIN
    old = _AUX_GRAIN
    _AUX_GRAIN = max(grain, 1)
    return old


# --------------------------------------------------------------------------------------------
# counter-based random numbers
# --------------------------------------------------------------------------------------------

cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    """splitmix64's finaliser: a bijective avalanche of 64 bits."""
    z = (z ^ (z >> 30)) * <uint64_t> 0xbf58476d1ce4e5b9
    z = (z ^ (z >> 27)) * <uint64_t> 0x94d049bb133111eb
    return z ^ (z >> 31)


cdef inline double _uniform(uint64_t seed, uint64_t counter, uint64_t j) noexcept nogil:
    """The ``j``-th uniform number in [0, 1) of stream (seed, counter)."""
    cdef uint64_t z = _mix(seed + <uint64_t> 0x9e3779b97f4a7c15 * (2 * counter + 1))
    z = _mix(z ^ (j * <uint64_t> 0xd1b54a32d192ed03 + <uint64_t> 0x8cb92ba72f3d8dd7))
    return <double> (z >> 11) * (1.0 / 9007199254740992.0)


def uniform_numbers(uint64_t seed, uint64_t counter, Py_ssize_t n):
    """The first ``n`` numbers of stream ``(seed, counter)`` (for tests and reproducibility)."""
    import numpy as np
    out = np.empty(n, dtype=np.float64)
    cdef double[::1] o = out
    cdef Py_ssize_t j
    for j in range(n):
        o[j] = _uniform(seed, counter, j)
    return out


# --------------------------------------------------------------------------------------------
# norms, gathers, scatters, GEMM
# --------------------------------------------------------------------------------------------

cdef void _row_sq_norms(const float* X, Py_ssize_t n_rows, Py_ssize_t ld, Py_ssize_t c0,
                        Py_ssize_t c1, double* out, int n_threads) noexcept nogil:
    """out[r] = Σ_{c0 <= c < c1} X[r, c]²  (parallel over rows; BLAS sdot, float accumulation:
    the scores only steer the sampling, the scales stay consistent with the probabilities)."""
    cdef Py_ssize_t r
    cdef const float* row
    for r in prange(n_rows, schedule="static", num_threads=n_threads):
        row = X + r * ld + c0
        out[r] = sdot_(<int> (c1 - c0), row, row) if c1 > c0 else 0.0


cdef inline void _sum_partials(const float* partial, Py_ssize_t n_parts, Py_ssize_t n_cols,
                               double* out) noexcept nogil:
    """out = the sum of n_parts rows of n_cols partial sums, added in a fixed order."""
    cdef Py_ssize_t b, c
    for c in range(n_cols):
        out[c] = partial[c]
    for b in range(1, n_parts):
        for c in range(n_cols):
            out[c] += partial[b * n_cols + c]


cdef void _col_sq_norms(const float* X, Py_ssize_t n_cols, Py_ssize_t ld, Py_ssize_t r0,
                        Py_ssize_t r1, double* out, int n_threads) noexcept nogil:
    """out[c] = Σ_{r0 <= r < r1} X[r, c]²  (rows split in blocks over threads, each block summing
    whole rows into its own float partials: contiguous, vectorisable sweeps; the partials are
    added in double, in block order)."""
    cdef Py_ssize_t n_rows = r1 - r0
    cdef Py_ssize_t n_parts = _row_parts(n_rows)
    cdef Py_ssize_t block, b, start, stop, r, c
    cdef const float* row
    cdef float* acc
    cdef float* partial
    if n_cols == 0:
        return
    if n_rows <= 0:
        memset(out, 0, n_cols * sizeof(double))
        return
    partial = <float*> calloc(n_parts * n_cols, sizeof(float))
    if partial == NULL:  # no scratch: one serial sweep in double
        memset(out, 0, n_cols * sizeof(double))
        for r in range(r0, r1):
            row = X + r * ld
            for c in range(n_cols):
                out[c] += <double> row[c] * row[c]
        return
    block = (n_rows + n_parts - 1) // n_parts
    for b in prange(n_parts, schedule="static", num_threads=min(<Py_ssize_t> n_threads, n_parts)):
        acc = partial + b * n_cols
        start = r0 + b * block
        stop = min(start + block, r1)
        for r in range(start, stop):
            row = X + r * ld
            for c in range(n_cols):
                acc[c] = acc[c] + row[c] * row[c]
    _sum_partials(partial, n_parts, n_cols, out)
    free(partial)


cdef void _gather_rows(const float* X, Py_ssize_t ld, Py_ssize_t width, const index_t* idx,
                       const float* scale, Py_ssize_t k, float* out, int n_threads) noexcept nogil:
    """out[j, :] = scale[j] * X[idx[j], :width]  (out is k x width; scale may be NULL)."""
    cdef Py_ssize_t j, c
    cdef const float* src
    cdef float* dst
    cdef float s
    for j in prange(k, schedule="static", num_threads=n_threads):
        src = X + idx[j] * ld
        dst = out + j * width
        if scale == NULL:
            memcpy(dst, src, width * sizeof(float))
        else:
            s = scale[j]
            for c in range(width):
                dst[c] = s * src[c]


cdef void _gather_cols(const float* X, Py_ssize_t ld, Py_ssize_t n_rows, const index_t* idx,
                       const float* scale, Py_ssize_t k, float* out, int n_threads) noexcept nogil:
    """out[r, j] = scale[j] * X[r, idx[j]]  (out is n_rows x k; scale may be NULL)."""
    cdef Py_ssize_t r, j
    cdef const float* src
    cdef float* dst
    for r in prange(n_rows, schedule="static", num_threads=n_threads):
        src = X + r * ld
        dst = out + r * k
        if scale == NULL:
            for j in range(k):
                dst[j] = src[idx[j]]
        else:
            for j in range(k):
                dst[j] = scale[j] * src[idx[j]]


cdef bint _gather_cols_norms(const float* X, Py_ssize_t ld, Py_ssize_t n_rows, Py_ssize_t n_cols,
                             const index_t* idx, Py_ssize_t k, float* out, double* norms,
                             int n_threads) noexcept nogil:
    """out[r, j] = X[r, idx[j]] (out is n_rows x k) and, in the same sweep over the rows,
    norms[c] = Σ_r X[r, c]² for every column c (float partials per thread, added in double).
    Returns False (nothing written) when the scratch cannot be allocated."""
    cdef Py_ssize_t n_parts = _row_parts(n_rows)
    cdef Py_ssize_t block, b, start, stop, r, c, j
    cdef const float* src
    cdef float* dst
    cdef float* acc
    cdef float* partial = <float*> calloc(max(n_parts * n_cols, <Py_ssize_t> 1), sizeof(float))
    if partial == NULL:
        return False
    block = (n_rows + n_parts - 1) // n_parts
    for b in prange(n_parts, schedule="static", num_threads=min(<Py_ssize_t> n_threads, n_parts)):
        acc = partial + b * n_cols
        start = b * block
        stop = min(start + block, n_rows)
        for r in range(start, stop):
            src = X + r * ld
            dst = out + r * k
            for j in range(k):
                dst[j] = src[idx[j]]
            for c in range(n_cols):
                acc[c] = acc[c] + src[c] * src[c]
    _sum_partials(partial, n_parts, n_cols, norms)
    free(partial)
    return True


cdef void _gemm_par(bint trans_a, bint trans_b, int m, int n, int k, float alpha,
                    const float* A, int lda, const float* B, int ldb,
                    float* C, int n_threads) noexcept nogil:
    """Row-major C (m x n, contiguous) = alpha op(A) op(B), split into blocks of C over threads."""
    cdef bint split_rows = m >= n
    cdef int dim = m if split_rows else n
    cdef int n_blocks, block, b, start, stop
    cdef Py_ssize_t i
    if m == 0 or n == 0:
        return
    if k == 0:
        memset(C, 0, <size_t> m * n * sizeof(float))
        return
    n_blocks = min(n_threads, (dim + _ALIGN - 1) // _ALIGN)
    if n_blocks <= 1:
        sgemm_rm(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, 0.0, C, n)
        return
    block = (dim + n_blocks - 1) // n_blocks
    block = ((block + _ALIGN - 1) // _ALIGN) * _ALIGN
    for b in prange(n_blocks, schedule="static", chunksize=1, num_threads=n_blocks):
        start = b * block
        stop = min(start + block, dim)
        if start >= stop:
            continue
        if split_rows:
            sgemm_rm(trans_a, trans_b, stop - start, n, k, alpha,
                     A + (start if trans_a else start * lda), lda, B, ldb, 0.0, C + start * n, n)
        else:
            sgemm_rm(trans_a, trans_b, m, stop - start, k, alpha, A, lda,
                     B + (start * ldb if trans_b else start), ldb, 0.0, C + start, n)


# --------------------------------------------------------------------------------------------
# selection helpers
# --------------------------------------------------------------------------------------------

cdef double _kth_largest(double* v, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th largest value of v[0:n] (1 <= k <= n); v is reordered (quickselect)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, target = k - 1, i, j
    cdef double pivot, t
    while lo < hi:
        pivot = v[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while v[i] > pivot:
                i += 1
            while v[j] < pivot:
                j -= 1
            if i <= j:
                t = v[i]
                v[i] = v[j]
                v[j] = t
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return v[target]


cdef Py_ssize_t _select(int scheme, const double* s, double total, Py_ssize_t n, Py_ssize_t k,
                        double eps, uint64_t seed, uint64_t counter, index_t* idx, float* scale,
                        double* work, int* count, int n_threads) noexcept nogil:
    """Choose the kept ids (ascending in ``idx``) and their scales; returns how many."""
    cdef Py_ssize_t i, j, lo, hi, mid, n_kept = 0, ties
    cdef double p, acc, u, thr, tmp
    if k <= 0:
        return 0
    if scheme == _CRS:
        # work = cumulative distribution of the mixed probabilities
        acc = 0.0
        for i in range(n):
            acc = acc + (1.0 - eps) * s[i] / total + eps / n
            work[i] = acc
        for j in prange(k, schedule="static", num_threads=n_threads):
            u = _uniform(seed, counter, j) * acc
            lo = 0
            hi = n - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if work[mid] > u:
                    hi = mid
                else:
                    lo = mid + 1
            idx[j] = <index_t> lo  # draws, compacted below
        memset(count, 0, n * sizeof(int))
        for j in range(k):
            count[idx[j]] += 1
        for i in range(n):
            if count[i]:
                p = (1.0 - eps) * s[i] / total + eps / n
                idx[n_kept] = <index_t> i
                scale[n_kept] = <float> (count[i] / (k * p))
                n_kept += 1
        return n_kept
    if scheme == _BERNOULLI:
        for i in prange(n, schedule="static", num_threads=n_threads):
            p = k * s[i] / total
            if p > 1.0:
                p = 1.0
            p = (1.0 - eps) * p + eps * k / n
            work[i] = p
            count[i] = _uniform(seed, counter, i) < p
        for i in range(n):
            if count[i]:
                idx[n_kept] = <index_t> i
                scale[n_kept] = <float> (1.0 / work[i])
                n_kept += 1
        return n_kept
    if scheme == _TOPK or scheme == _TOPK_EST:
        memcpy(work, s, n * sizeof(double))
        thr = _kth_largest(work, n, k)
        ties = 0
        for i in range(n):
            if s[i] > thr:
                ties += 1
        ties = k - ties  # entries equal to the threshold that are kept, lowest ids first
        for i in range(n):
            if s[i] > thr:
                idx[n_kept] = <index_t> i
                scale[n_kept] = 1.0
                n_kept += 1
            elif s[i] == thr and ties > 0:
                ties -= 1
                idx[n_kept] = <index_t> i
                scale[n_kept] = 1.0
                n_kept += 1
        return n_kept
    # uniform without replacement: partial Fisher-Yates over a permutation
    for i in range(n):
        count[i] = <int> i
    for j in range(k):
        i = j + <Py_ssize_t> (_uniform(seed, counter, j) * (n - j))
        if i >= n:
            i = n - 1
        mid = count[j]
        count[j] = count[i]
        count[i] = <int> mid
    for i in range(n):
        work[i] = 0.0
    for j in range(k):
        work[count[j]] = 1.0
    for i in range(n):
        if work[i] != 0.0:
            idx[n_kept] = <index_t> i
            scale[n_kept] = <float> (<double> n / k)
            n_kept += 1
    return n_kept


# --------------------------------------------------------------------------------------------
# public kernels
# --------------------------------------------------------------------------------------------

def effective_k(Py_ssize_t n, double ratio, Py_ssize_t minimal_k):
    """``k = min(max(⌊ratio·n⌋, minimal_k), n)``: how many of the ``n`` pairs a product keeps."""
    cdef Py_ssize_t k = <Py_ssize_t> (ratio * n + 1e-9)
    if k < minimal_k:
        k = minimal_k
    if k > n:
        k = n
    if k < 0:
        k = 0
    return k


def sampled_matmul(const float[:, ::1] A,    # IN (m, n), or (n, m) when trans_a
                   const float[:, ::1] B,    # IN (n, p), or (p, n) when trans_b
                   float[:, ::1] C,          # OUT (m, p)
                   bint trans_a, bint trans_b, int scheme, Py_ssize_t k,
                   index_t[::1] idx,         # OUT (n,) kept ids, ascending, first n_kept valid
                   float[::1] scale,         # OUT (n,) their scales
                   float[::1] a_buf,         # OUT (>= m*n,) gathered scaled op(A) columns
                   float[::1] b_buf,         # OUT (>= n*p,) gathered op(B) rows
                   double eps=0.1, double fraction=0.25, uint64_t seed=0, uint64_t counter=0,
                   float alpha=1.0, int n_threads=1,
                   double[::1] b_norms=None,  # IN/OUT (n,) cache of op(B)'s squared row norms
                   bint b_norms_valid=False, bint gather_only=False):
    """``C ≈ alpha · op(A) @ op(B)`` from ``k`` of the ``n`` column-row pairs.

    Parameters
    ----------
    A, B : ndarray, float32, C-contiguous
        Operands as stored; ``trans_a`` / ``trans_b`` as in BLAS. The inner dimension ``n`` is
        the columns of ``op(A)`` and the rows of ``op(B)``.
    C : ndarray of shape (m, p), float32
        Output, overwritten.
    trans_a, trans_b : bool
        Use the transposes of the stored operands.
    scheme : int
        ``SCHEMES[name]``.
    k : int
        Target number of pairs (see :func:`effective_k`); ``k >= n`` computes the exact product.
    idx, scale : ndarray of shape (>= n,)
        Filled with the kept ids (ascending) and their scales (the scale multiplies the
        gathered ``op(A)`` columns). Undefined when the product was exact.
    a_buf, b_buf : ndarray of float32, at least ``m*n`` and ``n*p`` entries
        Filled with the gathered operands: ``a_buf`` holds ``(m, n_kept)`` scaled columns of
        ``op(A)`` (stored ``(n_kept, m)`` when ``trans_a``), ``b_buf`` holds ``(n_kept, p)``
        unscaled rows of ``op(B)`` (stored ``(p, n_kept)`` when ``trans_b``). They let a layer
        back-propagate through the sample without gathering again.
    eps : float, default=0.1
        Weight of the uniform distribution mixed into the sampling probabilities.
    fraction : float, default=0.25
        Share of rows/columns the ``"topk_estimated"`` scores are computed on.
    seed, counter : int
        The random stream: use a new ``counter`` for every product.
    alpha : float, default=1.0
        Scale of the product.
    n_threads : int, default=1
    b_norms : ndarray of float64 of shape (>= n,), default=None
        A cache of the squared norms of the rows of ``op(B)`` (the columns of ``B`` when
        ``trans_b``), for a ``B`` used again and again, such as a weight matrix. With
        ``trans_b`` and ``b_norms_valid`` they are taken as the ``op(B)`` half of the scores
        instead of a pass over ``B``; otherwise they are computed and stored. When the product
        is sampled with ``trans_b``, the gather of the kept columns of ``B`` (a sweep over all
        of ``B``'s rows) refills them with the norms of this call's ``B`` at no extra pass, for
        the next call. Scores taken from a cache filled before ``B`` last changed (an optimizer
        step) are one update stale: top-k keeps the largest scores of the previous weights,
        and the unbiased schemes stay unbiased (their probabilities are fixed before the
        draws, and the scales match them). ``"topk_estimated"`` estimates its scores on a
        block of rows and neither reads nor writes the cache.
    b_norms_valid : bool, default=False
        Whether ``b_norms`` holds norms to use.
    gather_only : bool, default=False
        Choose and gather the pairs (``idx``, ``scale``, ``a_buf``, ``b_buf``) but leave ``C``
        untouched, for a caller that uses the product in factored form (e.g. a weight gradient
        applied by :func:`fastfire._core._optim.adam_step_outer`). When the product is exact
        (``exact`` returned True) nothing is gathered either: the caller computes it.

    Returns
    -------
    n_kept : int
        Number of pairs used (``n`` for an exact product).
    exact : bool
        True when the exact product was computed (``k >= n`` or all scores zero).
    """
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t n = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t bn = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t p = B.shape[0] if trans_b else B.shape[1]
    if bn != n or C.shape[0] != m or C.shape[1] != p:
        raise ValueError(
            f"sampled_matmul: shapes do not agree: op(A) {(m, n)}, op(B) {(bn, p)}, "
            f"C {(C.shape[0], C.shape[1])}."
        )
    if scheme < 0 or scheme > 4:
        raise ValueError(f"sampled_matmul: unknown scheme code {scheme}.")
    if idx.shape[0] < n or scale.shape[0] < n or a_buf.shape[0] < m * n or b_buf.shape[0] < n * p:
        raise ValueError("sampled_matmul: idx/scale need n entries, a_buf m*n and b_buf n*p.")
    if not (0.0 <= eps <= 1.0) or not (0.0 < fraction <= 1.0):
        raise ValueError(f"sampled_matmul: eps={eps} must be in [0, 1], fraction={fraction} in (0, 1].")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")
    if k < 0:
        raise ValueError(f"sampled_matmul: k must be >= 0, got {k}.")
    if b_norms is not None and b_norms.shape[0] < n:
        raise ValueError(f"sampled_matmul: b_norms needs n={n} entries, got {b_norms.shape[0]}.")
    if m == 0 or p == 0:
        return 0, True
    cdef const float* a_ptr = &A[0, 0] if n > 0 else NULL
    cdef const float* b_ptr = &B[0, 0] if n > 0 else NULL
    cdef float* c_ptr = &C[0, 0]
    cdef int lda = <int> A.shape[1], ldb = <int> B.shape[1]
    cdef bint exact = k >= n
    cdef Py_ssize_t n_kept = n, i, r0a = 0, r1a = m, r0b = 0, r1b = p, blk
    cdef double total = 0.0
    cdef double* sa = NULL
    cdef double* sb = NULL
    cdef double* work = NULL
    cdef int* count = NULL
    cdef double* cache = NULL  # b_norms
    cdef bint reuse
    if b_norms is not None and n > 0 and scheme != _TOPK_EST:
        cache = &b_norms[0]
    reuse = cache != NULL and trans_b and b_norms_valid
    if not exact:
        sa = <double*> malloc(n * sizeof(double))
        sb = <double*> malloc(n * sizeof(double))
        work = <double*> malloc(n * sizeof(double))
        count = <int*> malloc(n * sizeof(int))
        if sa == NULL or sb == NULL or work == NULL or count == NULL:
            free(sa); free(sb); free(work); free(count)
            raise MemoryError("sampled_matmul: could not allocate scratch.")
        if scheme == _TOPK_EST:
            blk = <Py_ssize_t> ceil(fraction * m)
            r0a = <Py_ssize_t> (_uniform(seed, counter, n + 1) * (m - blk + 1))
            r1a = min(r0a + blk, m)
            blk = <Py_ssize_t> ceil(fraction * p)
            r0b = <Py_ssize_t> (_uniform(seed, counter, n + 2) * (p - blk + 1))
            r1b = min(r0b + blk, p)
    with nogil:
        if not exact:
            # squared norms of the columns of op(A) and rows of op(B)
            if trans_a:
                _row_sq_norms(a_ptr, n, lda, r0a, r1a, sa, _aux_threads(n * (r1a - r0a), n_threads))
            else:
                _col_sq_norms(a_ptr, n, lda, r0a, r1a, sa, _aux_threads(n * (r1a - r0a), n_threads))
            if reuse:
                memcpy(sb, cache, n * sizeof(double))
            elif trans_b:
                _col_sq_norms(b_ptr, n, ldb, r0b, r1b, sb, _aux_threads(n * (r1b - r0b), n_threads))
            else:
                _row_sq_norms(b_ptr, n, ldb, r0b, r1b, sb, _aux_threads(n * (r1b - r0b), n_threads))
            if cache != NULL and not reuse:
                memcpy(cache, sb, n * sizeof(double))
            for i in range(n):
                sa[i] = sqrt(sa[i] * sb[i])
            for i in range(n):
                total = total + sa[i]
            if not (total > 0.0):  # all zero (or NaN): nothing to sample from
                exact = True
        if not exact:
            n_kept = _select(scheme, sa, total, n, k, eps, seed, counter, &idx[0], &scale[0],
                             work, count, _aux_threads(16 * n, n_threads))
            if trans_a:
                _gather_rows(a_ptr, lda, m, &idx[0], &scale[0], n_kept, &a_buf[0], _aux_threads(m * n_kept, n_threads))
            else:
                _gather_cols(a_ptr, lda, m, &idx[0], &scale[0], n_kept, &a_buf[0], _aux_threads(m * n, n_threads))
            if not trans_b:
                _gather_rows(b_ptr, ldb, p, &idx[0], NULL, n_kept, &b_buf[0],
                             _aux_threads(p * n_kept, n_threads))
            elif cache == NULL or not _gather_cols_norms(b_ptr, ldb, p, n, &idx[0], n_kept,
                                                         &b_buf[0], cache,
                                                         _aux_threads(p * n, n_threads)):
                _gather_cols(b_ptr, ldb, p, &idx[0], NULL, n_kept, &b_buf[0],
                             _aux_threads(p * n, n_threads))
            if not gather_only:
                _gemm_par(trans_a, trans_b, <int> m, <int> p, <int> n_kept, alpha,
                          &a_buf[0], <int> (m if trans_a else n_kept),
                          &b_buf[0], <int> (n_kept if trans_b else p), c_ptr, n_threads)
        else:
            n_kept = n
            if not gather_only:
                _gemm_par(trans_a, trans_b, <int> m, <int> p, <int> n, alpha, a_ptr, lda,
                          b_ptr, ldb, c_ptr, n_threads)
    free(sa); free(sb); free(work); free(count)
    return n_kept, bool(exact)


def scatter_rows(const float[:, ::1] src,   # IN (k, p)
                 const index_t[::1] idx,    # IN (k,) distinct ids
                 float[:, ::1] out,         # OUT (n, p)
                 int n_threads=1,
                 const float[::1] fill_left=None,   # IN (n,) optional
                 const float[::1] fill_right=None): # IN (p,) optional
    """``out[idx[j], :] = src[j, :]``; every other row ``r`` is 0, or ``fill_left[r] *
    fill_right`` when both fills are given (the weight gradient of the sampled rows, and the
    rank-one gradient of the dropped rows under the mean correction)."""
    cdef Py_ssize_t k = src.shape[0], p = src.shape[1], n = out.shape[0], r, j, c
    if idx.shape[0] < k or out.shape[1] != p:
        raise ValueError("scatter_rows: shapes do not agree.")
    if (fill_left is None) != (fill_right is None):
        raise ValueError("scatter_rows: give both fill_left and fill_right, or neither.")
    cdef bint fill = fill_left is not None
    if fill and (fill_left.shape[0] != n or fill_right.shape[0] != p):
        raise ValueError(
            f"scatter_rows: fill_left needs {n} entries and fill_right {p}; got "
            f"{fill_left.shape[0]} and {fill_right.shape[0]}."
        )
    cdef index_t* where
    cdef float* row
    cdef float a
    if n == 0 or p == 0:
        return
    where = <index_t*> malloc(n * sizeof(index_t))
    if where == NULL:
        raise MemoryError("scatter_rows: could not allocate scratch.")
    with nogil:
        for r in range(n):
            where[r] = -1
        for j in range(k):
            if 0 <= idx[j] < n:
                where[idx[j]] = <index_t> j
        for r in prange(n, schedule="static", num_threads=n_threads):
            row = &out[r, 0]
            if where[r] >= 0:
                memcpy(row, &src[where[r], 0], p * sizeof(float))
            elif fill:
                a = fill_left[r]
                for c in range(p):
                    row[c] = a * fill_right[c]
            else:
                memset(row, 0, p * sizeof(float))
    free(where)


def scatter_columns(const float[:, ::1] src,   # IN (m, k)
                    const index_t[::1] idx,    # IN (k,) distinct ids in [0, n)
                    const float[::1] scale,    # IN (k,)
                    float[:, ::1] out,         # OUT (m, n)
                    int n_threads=1,
                    const float[::1] fill=None):  # IN (n,) optional
    """``out[:, idx[j]] = scale[j] * src[:, j]``; every other column ``c`` is 0, or ``fill[c]``
    in every row when ``fill`` is given (the input gradient of a sampled product, and the
    gradient of the dropped inputs through their batch mean under the mean correction)."""
    cdef Py_ssize_t m = src.shape[0], k = src.shape[1], n = out.shape[1], r, j
    if idx.shape[0] < k or scale.shape[0] < k or out.shape[0] != m:
        raise ValueError("scatter_columns: shapes do not agree.")
    if fill is not None and fill.shape[0] != n:
        raise ValueError(f"scatter_columns: fill needs {n} entries, got {fill.shape[0]}.")
    for j in range(k):
        if not 0 <= idx[j] < n:
            raise ValueError(f"scatter_columns: id {idx[j]} out of range [0, {n}).")
    cdef float* row
    cdef const float* s_row
    cdef const float* fill_ptr = &fill[0] if fill is not None and n > 0 else NULL
    if m == 0 or n == 0:
        return
    with nogil:
        for r in prange(m, schedule="static", num_threads=n_threads):
            row = &out[r, 0]
            if fill_ptr != NULL:
                memcpy(row, fill_ptr, n * sizeof(float))
            else:
                memset(row, 0, n * sizeof(float))
            if k > 0:
                s_row = &src[r, 0]
                for j in range(k):
                    row[idx[j]] = scale[j] * s_row[j]
