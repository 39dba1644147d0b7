"""Dense-layer kernels: blocked parallel GEMM, CSR products, fused bias + activation.

All arrays are float32 and C-contiguous; outputs are preallocated by the caller. Parallelism is
OpenMP: GEMM splits C into ``n_threads`` blocks, each computed by one single-threaded ``sgemm``
(the caller caps BLAS at one thread with threadpoolctl). Every other kernel gives exactly the same
result for every thread count; GEMM differs at most by BLAS's float rounding across block shapes.
"""

from fastfire._core._openmp cimport MIN_ELEMENTS_PER_THREAD, MIN_MACS_PER_THREAD, threads_for
from cython.parallel cimport parallel, prange
from libc.math cimport expf, tanhf
from libc.stdlib cimport free, malloc
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

import numpy as np

from fastfire._core._blas cimport sgemm_rm
from fastfire._core._types cimport float32_t, float64_t, index_t, offset_t

IDENTITY = 0
RELU = 1
LOGISTIC = 2
TANH = 3
ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "logistic": LOGISTIC, "tanh": TANH}

cdef enum:
    _IDENTITY = 0
    _RELU = 1
    _LOGISTIC = 2
    _TANH = 3

# GEMM blocks start on multiples of this many rows/columns, so that OpenBLAS's micro-kernel tiles
# stay full and column blocks of C start on cache-line boundaries.
cdef int _GEMM_ALIGN = 16
cdef int _GEMM_SHORT_K = 32


cdef inline int _clamp_threads(int n_threads) noexcept nogil:
    return n_threads if n_threads > 1 else 1


cdef inline float _logistic(float z) noexcept nogil:
    """1 / (1 + exp(-z)), without overflow for large |z|."""
    cdef float e
    if z >= 0:
        return 1.0 / (1.0 + expf(-z))
    e = expf(z)
    return e / (1.0 + e)


cdef inline void _scale_rows(float* C, Py_ssize_t n_rows, Py_ssize_t n_cols, float beta,
                             int n_threads) noexcept nogil:
    """C = beta * C (C = 0 when beta == 0, so NaN/garbage in C does not survive)."""
    cdef Py_ssize_t i, j
    cdef float* row
    if beta == 1.0:
        return
    for i in prange(n_rows, schedule="static", num_threads=n_threads):
        row = C + i * n_cols
        if beta == 0.0:
            memset(row, 0, n_cols * sizeof(float))
        else:
            for j in range(n_cols):
                row[j] = beta * row[j]



# --------------------------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------------------------

def gemm(const float[:, ::1] A,   # IN
         const float[:, ::1] B,   # IN
         float[:, ::1] C,         # OUT
         bint trans_a=False, bint trans_b=False, float alpha=1.0, float beta=0.0,
         int n_threads=1):
    """Row-major ``C = alpha * op(A) @ op(B) + beta * C``, parallel over blocks of C.

    C is split into ``n_threads`` blocks along its larger dimension (rows or columns); each block is
    one single-threaded ``sgemm``. With ``n_threads == 1`` a single ``sgemm`` covers C (and BLAS
    may use its own threads, if the caller lets it).

    Parameters
    ----------
    A : ndarray of shape (m, k), or (k, m) when ``trans_a``, float32, C-contiguous
        Left operand (read-only arrays work).
    B : ndarray of shape (k, n), or (n, k) when ``trans_b``, float32, C-contiguous
        Right operand.
    C : ndarray of shape (m, n), float32, C-contiguous
        Output, updated in place. Not read when ``beta == 0``.
    trans_a, trans_b : bool, default=False
        Use the transpose of A / B.
    alpha, beta : float, default=1.0, 0.0
        Scalars of the update. With ``k == 0`` the result is ``beta * C``.
    n_threads : int, default=1
        Number of OpenMP threads (blocks of C).

    Raises
    ------
    ValueError
        When the shapes of A, B and C do not agree, naming them.
    """
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1]
    cdef Py_ssize_t am = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t ak = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t bk = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t bn = B.shape[0] if trans_b else B.shape[1]
    if am != m or bn != n or ak != bk:
        raise ValueError(
            f"gemm: shapes do not agree: op(A) is {(am, ak)} (A.shape={(A.shape[0], A.shape[1])}, "
            f"trans_a={bool(trans_a)}), op(B) is {(bk, bn)} (B.shape={(B.shape[0], B.shape[1])}, "
            f"trans_b={bool(trans_b)}), C.shape={(C.shape[0], C.shape[1])}; expected op(A) (m, k), "
            f"op(B) (k, n), C (m, n)."
        )
    if max(m, n, ak) > 2147483647:
        raise ValueError("gemm: dimensions must fit in a 32-bit BLAS int.")
    n_threads = threads_for(n_threads, m * n * ak, MIN_MACS_PER_THREAD)

    cdef const float* a_ptr = &A[0, 0] if A.shape[0] > 0 and A.shape[1] > 0 else NULL
    cdef const float* b_ptr = &B[0, 0] if B.shape[0] > 0 and B.shape[1] > 0 else NULL
    cdef float* c_ptr = &C[0, 0] if m > 0 and n > 0 else NULL
    if m == 0 or n == 0:
        return
    with nogil:
        _gemm_blocked(trans_a, trans_b, <int> m, <int> n, <int> ak, alpha, a_ptr,
                      <int> A.shape[1], b_ptr, <int> B.shape[1], beta, c_ptr, n_threads)


cdef void _gemm_blocked(bint trans_a, bint trans_b, int m, int n, int k, float alpha,
                        const float* A, int lda, const float* B, int ldb, float beta,
                        float* C, int n_threads) noexcept nogil:
    """Row-major C (m x n, contiguous) = alpha op(A) op(B) + beta C in n_threads blocks of C."""
    # Aᵀ·D (weight gradients) with wide C scales better split by rows (measured: 784x128 @ 128x1024
    # at 2 threads 1.7-2.0 ms by rows vs 2.4 ms by columns; by columns at 256 columns). With a short
    # k (an input gradient through a narrow output layer, 128x10 @ 10x1024) the product is a pass
    # over C: split by rows, each thread writes whole rows, which the next row-parallel kernel
    # (the activation's gradient) then finds in its own cache.
    cdef bint split_rows = m >= n or (trans_a and n >= 512) or k < _GEMM_SHORT_K
    cdef int dim = m if split_rows else n
    cdef int ldc = n
    cdef int n_blocks, block, b, start, stop
    cdef const float* a_blk
    cdef const float* b_blk
    if k == 0:
        _scale_rows(C, m, n, beta, _clamp_threads(n_threads))
        return
    # Blocks of at least _GEMM_ALIGN rows/cols, starting on multiples of _GEMM_ALIGN.
    n_blocks = min(n_threads, (dim + _GEMM_ALIGN - 1) // _GEMM_ALIGN)
    if n_blocks <= 1:
        sgemm_rm(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    block = (dim + n_blocks - 1) // n_blocks
    block = ((block + _GEMM_ALIGN - 1) // _GEMM_ALIGN) * _GEMM_ALIGN
    for b in prange(n_blocks, schedule="static", chunksize=1, num_threads=n_blocks):
        start = b * block
        stop = min(start + block, dim)
        if start >= stop:
            continue
        if split_rows:
            # rows start..stop of op(A): rows of A, or columns of A when transposed
            a_blk = A + (start if trans_a else start * lda)
            sgemm_rm(trans_a, trans_b, stop - start, n, k, alpha, a_blk, lda,
                     B, ldb, beta, C + start * ldc, ldc)
        else:
            # columns start..stop of op(B): columns of B, or rows of B when transposed
            b_blk = B + (start * ldb if trans_b else start)
            sgemm_rm(trans_a, trans_b, m, stop - start, k, alpha, A, lda,
                     b_blk, ldb, beta, C + start, ldc)


# --------------------------------------------------------------------------------------------
# CSR products (sparse first-layer input)
# --------------------------------------------------------------------------------------------

def csr_matmul(const offset_t[::1] indptr,   # IN (n_rows + 1,)
               const index_t[::1] indices,   # IN (nnz,)
               const float[::1] data,        # IN (nnz,)
               const float[:, ::1] B,        # IN (n_features, p)
               float[:, ::1] C,              # OUT (n_rows, p)
               float beta=0.0, int n_threads=1):
    """``C = X @ B + beta * C`` with X a CSR matrix of ``C.shape[0]`` rows and ``B.shape[0]`` columns.

    Parallel over the rows of X (``schedule="dynamic"``: rows differ in length); each non-zero adds
    a scaled row of B to the row of C. Exactly the same result for every thread count.

    Parameters
    ----------
    indptr : ndarray of shape (n_rows + 1,), int64
        CSR row pointers (``indptr[0] == 0``, non-decreasing).
    indices : ndarray of shape (nnz,), int32
        Column ids, each in ``[0, B.shape[0])`` (not checked).
    data : ndarray of shape (nnz,), float32
        Non-zero values.
    B : ndarray of shape (n_features, p), float32
        Dense right operand.
    C : ndarray of shape (n_rows, p), float32
        Output, updated in place; not read when ``beta == 0``.
    beta : float, default=0.0
        Scale of the previous content of C.
    n_threads : int, default=1
        Number of OpenMP threads.
    """
    cdef Py_ssize_t n_rows = C.shape[0], p = C.shape[1]
    if indptr.shape[0] != n_rows + 1 or B.shape[1] != p or indices.shape[0] != data.shape[0]:
        raise ValueError(
            f"csr_matmul: shapes do not agree: indptr {indptr.shape[0]}, indices "
            f"{indices.shape[0]}, data {data.shape[0]}, B {(B.shape[0], B.shape[1])}, "
            f"C {(C.shape[0], C.shape[1])}; expected indptr of C.shape[0] + 1 and B.shape[1] == C.shape[1]."
        )
    if n_rows > 0 and indptr[n_rows] > data.shape[0]:
        raise ValueError(f"csr_matmul: indptr[-1]={indptr[n_rows]} exceeds nnz={data.shape[0]}.")
    n_threads = threads_for(n_threads, data.shape[0] * B.shape[1], MIN_MACS_PER_THREAD)
    cdef Py_ssize_t i, j, col
    cdef offset_t e
    cdef float x
    cdef float* c_row
    cdef const float* b_row
    if n_rows == 0 or p == 0:
        return
    with nogil:
        for i in prange(n_rows, schedule="dynamic", chunksize=4, num_threads=n_threads):
            c_row = &C[i, 0]
            if beta == 0.0:
                memset(c_row, 0, p * sizeof(float))
            elif beta != 1.0:
                for j in range(p):
                    c_row[j] = beta * c_row[j]
            for e in range(indptr[i], indptr[i + 1]):
                x = data[e]
                b_row = &B[indices[e], 0]
                for j in range(p):
                    c_row[j] = c_row[j] + x * b_row[j]


def csr_t_matmul(const offset_t[::1] indptr,   # IN (n_rows + 1,)
                 const index_t[::1] indices,   # IN (nnz,)
                 const float[::1] data,        # IN (nnz,)
                 const float[:, ::1] D,        # IN (n_rows, p)
                 float[:, ::1] C,              # OUT (n_features, p)
                 float alpha=1.0, float beta=0.0, int n_threads=1):
    """``C = alpha * X.T @ D + beta * C`` with X a CSR matrix of ``D.shape[0]`` rows and ``C.shape[0]`` columns.

    The weight gradient of a first layer fed sparse input. Race-free and deterministic: X is first
    transposed (a counting sort into CSC, serial, O(nnz + n_features)), then the rows of C are
    computed in parallel, each by one thread, summing its non-zeros in row order in float64.
    Exactly the same result for every thread count.

    Parameters
    ----------
    indptr : ndarray of shape (n_rows + 1,), int64
        CSR row pointers.
    indices : ndarray of shape (nnz,), int32
        Column ids, each in ``[0, C.shape[0])``; out-of-range ids are ignored.
    data : ndarray of shape (nnz,), float32
        Non-zero values.
    D : ndarray of shape (n_rows, p), float32
        Dense right operand (the layer's output gradient).
    C : ndarray of shape (n_features, p), float32
        Output, updated in place; not read when ``beta == 0``. Rows of features without
        non-zeros become ``beta * C``.
    alpha, beta : float, default=1.0, 0.0
        Scalars of the update.
    n_threads : int, default=1
        Number of OpenMP threads.
    """
    cdef Py_ssize_t n_rows = D.shape[0], p = D.shape[1], n_features = C.shape[0]
    if indptr.shape[0] != n_rows + 1 or C.shape[1] != p or indices.shape[0] != data.shape[0]:
        raise ValueError(
            f"csr_t_matmul: shapes do not agree: indptr {indptr.shape[0]}, indices "
            f"{indices.shape[0]}, data {data.shape[0]}, D {(D.shape[0], D.shape[1])}, "
            f"C {(C.shape[0], C.shape[1])}; expected indptr of D.shape[0] + 1 and C.shape[1] == D.shape[1]."
        )
    if n_rows > 0 and indptr[n_rows] > data.shape[0]:
        raise ValueError(f"csr_t_matmul: indptr[-1]={indptr[n_rows]} exceeds nnz={data.shape[0]}.")
    n_threads = threads_for(n_threads, data.shape[0] * D.shape[1], MIN_MACS_PER_THREAD)
    if n_features == 0 or p == 0:
        return
    cdef offset_t nnz = indptr[n_rows] if n_rows > 0 else 0
    # CSC scratch, allocated with the GIL (once per call, not per iteration).
    cdef offset_t[::1] col_ptr = np.zeros(n_features + 1, dtype=np.int64)
    cdef index_t[::1] t_rows = np.empty(max(nnz, 1), dtype=np.int32)
    cdef float[::1] t_vals = np.empty(max(nnz, 1), dtype=np.float32)
    cdef Py_ssize_t i, j, f
    cdef offset_t e, pos
    cdef index_t col
    cdef double* acc
    cdef float* c_row
    cdef const float* d_row
    cdef float x
    cdef int failed = 0
    cdef int* failed_ptr = &failed
    with nogil:
        # 1. counting sort of the non-zeros by column (stable: row order kept within a column)
        for e in range(nnz):
            col = indices[e]
            if 0 <= col < n_features:
                col_ptr[col + 1] += 1
        for f in range(n_features):
            col_ptr[f + 1] += col_ptr[f]
        for i in range(n_rows):
            for e in range(indptr[i], indptr[i + 1]):
                col = indices[e]
                if 0 <= col < n_features:
                    pos = col_ptr[col]
                    t_rows[pos] = <index_t> i
                    t_vals[pos] = data[e]
                    col_ptr[col] = pos + 1
        for f in range(n_features, 0, -1):  # shift back: col_ptr[f] is again the start of f
            col_ptr[f] = col_ptr[f - 1]
        col_ptr[0] = 0
        # 2. each row of C by one thread, float64 accumulation
        with parallel(num_threads=n_threads):
            acc = <double*> malloc(p * sizeof(double))
            if acc == NULL:
                failed_ptr[0] = 1
            for f in prange(n_features, schedule="static"):
                if acc == NULL:
                    continue
                c_row = &C[f, 0]
                if col_ptr[f] == col_ptr[f + 1]:
                    if beta == 0.0:
                        memset(c_row, 0, p * sizeof(float))
                    elif beta != 1.0:
                        for j in range(p):
                            c_row[j] = beta * c_row[j]
                    continue
                for j in range(p):
                    acc[j] = 0.0
                for e in range(col_ptr[f], col_ptr[f + 1]):
                    x = t_vals[e]
                    d_row = &D[t_rows[e], 0]
                    for j in range(p):
                        acc[j] += x * d_row[j]
                if beta == 0.0:
                    for j in range(p):
                        c_row[j] = <float> (alpha * acc[j])
                else:
                    for j in range(p):
                        c_row[j] = <float> (alpha * acc[j] + beta * c_row[j])
            free(acc)
    if failed:
        raise MemoryError("csr_t_matmul: could not allocate thread-local scratch.")


# --------------------------------------------------------------------------------------------
# bias + activation, activation derivatives, column sums
# --------------------------------------------------------------------------------------------

def bias_act_forward(float[:, ::1] Z,           # IN/OUT (n, p)
                     const float[::1] bias,     # IN (p,)
                     int activation, int n_threads=1):
    """In place ``Z = act(Z + bias)``.

    Parameters
    ----------
    Z : ndarray of shape (n_samples, n_units), float32
        Pre-activations without bias; overwritten by the activations.
    bias : ndarray of shape (n_units,), float32
        Bias added to every row.
    activation : int
        ``IDENTITY`` (0), ``RELU`` (1: ``max(z, 0)``), ``LOGISTIC`` (2: ``1 / (1 + exp(-z))``,
        stable for large ``|z|``) or ``TANH`` (3).
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], i, j
    if bias.shape[0] != p:
        raise ValueError(f"bias_act_forward: bias has {bias.shape[0]} entries, Z has {p} columns.")
    if activation < 0 or activation > 3:
        raise ValueError(f"bias_act_forward: unknown activation code {activation}.")
    n_threads = threads_for(n_threads, Z.shape[0] * Z.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef float* row
    cdef const float* b = &bias[0] if p > 0 else NULL
    cdef float z
    if n == 0 or p == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            row = &Z[i, 0]
            if activation == _IDENTITY:
                for j in range(p):
                    row[j] = row[j] + b[j]
            elif activation == _RELU:
                for j in range(p):
                    z = row[j] + b[j]
                    row[j] = 0 if z < 0 else z  # NaN stays NaN, as np.maximum(z, 0)
            elif activation == _LOGISTIC:
                for j in range(p):
                    row[j] = _logistic(row[j] + b[j])
            else:
                for j in range(p):
                    row[j] = tanhf(row[j] + b[j])


def act_backward(const float[:, ::1] A,     # IN (n, p) activation outputs
                 float[:, ::1] delta,       # IN/OUT (n, p)
                 int activation, int n_threads=1):
    """In place ``delta *= act'(z)``, the derivative written from the activation output ``A``.

    As scikit-learn's ``inplace_*_derivative``: relu ``A > 0``; logistic ``A (1 - A)``; tanh
    ``1 - A**2``; identity leaves ``delta`` as it is.

    Parameters
    ----------
    A : ndarray of shape (n_samples, n_units), float32
        Activation outputs of the layer's forward pass.
    delta : ndarray of shape (n_samples, n_units), float32
        Gradient w.r.t. ``A`` on entry, w.r.t. the pre-activation on return.
    activation : int
        ``IDENTITY``, ``RELU``, ``LOGISTIC`` or ``TANH``.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = A.shape[0], p = A.shape[1], i, j
    if delta.shape[0] != n or delta.shape[1] != p:
        raise ValueError(
            f"act_backward: A {(A.shape[0], A.shape[1])} and delta {(delta.shape[0], delta.shape[1])} differ."
        )
    if activation < 0 or activation > 3:
        raise ValueError(f"act_backward: unknown activation code {activation}.")
    n_threads = threads_for(n_threads, A.shape[0] * A.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef const float* a_row
    cdef float* d_row
    cdef float a
    if n == 0 or p == 0 or activation == _IDENTITY:
        return
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            a_row = &A[i, 0]
            d_row = &delta[i, 0]
            if activation == _RELU:
                for j in range(p):  # a select, not a branch: vectorised, no mispredictions
                    d_row[j] = d_row[j] if a_row[j] > 0 else 0
            elif activation == _LOGISTIC:
                for j in range(p):
                    a = a_row[j]
                    d_row[j] = d_row[j] * (a * (1 - a))
            else:
                for j in range(p):
                    a = a_row[j]
                    d_row[j] = d_row[j] * (1 - a * a)


def column_sums(const float[:, ::1] X,    # IN (n, p)
                float[::1] out,           # OUT (p,)
                float alpha=1.0, int n_threads=1):
    """``out = alpha * X.sum(axis=0)``, accumulated in float64 (the bias gradient).

    Parallel over blocks of columns, each summed over all rows by one thread: exactly the same
    result for every thread count.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units), float32
        Matrix to sum. With 0 rows ``out`` becomes 0.
    out : ndarray of shape (n_units,), float32
        Output, overwritten.
    alpha : float, default=1.0
        Scale of the sums.
    n_threads : int, default=1
        Number of OpenMP threads.
    """
    cdef Py_ssize_t n = X.shape[0], p = X.shape[1]
    if out.shape[0] != p:
        raise ValueError(f"column_sums: out has {out.shape[0]} entries, X has {p} columns.")
    n_threads = threads_for(n_threads, X.shape[0] * X.shape[1], MIN_ELEMENTS_PER_THREAD)
    if p == 0:
        return
    cdef Py_ssize_t n_blocks = min(<Py_ssize_t> n_threads, (p + 15) // 16)
    cdef Py_ssize_t block = (p + n_blocks - 1) // n_blocks
    cdef Py_ssize_t b, i, j, start, width
    cdef double* acc
    cdef const float* row
    cdef int failed = 0
    cdef int* failed_ptr = &failed
    block = ((block + 15) // 16) * 16
    with nogil, parallel(num_threads=n_blocks):
        acc = <double*> malloc(block * sizeof(double))
        if acc == NULL:
            failed_ptr[0] = 1
        for b in prange(n_blocks, schedule="static", chunksize=1):
            start = b * block
            width = min(block, p - start)
            if acc == NULL or width <= 0:
                continue
            for j in range(width):
                acc[j] = 0.0
            for i in range(n):
                row = &X[i, start]
                for j in range(width):
                    acc[j] += row[j]
            for j in range(width):
                out[start + j] = <float> (alpha * acc[j])
        free(acc)
    if failed:
        raise MemoryError("column_sums: could not allocate thread-local scratch.")


# --------------------------------------------------------------------------------------------
# row gather (the mini-batch of a shuffled epoch)
# --------------------------------------------------------------------------------------------

def take_rows(const float[:, ::1] X,       # IN (n, p)
              const int64_t[::1] rows,     # IN (m,) row ids in [0, n)
              float[:, ::1] out,           # OUT (m, p)
              int n_threads=1):
    """``out[i] = X[rows[i]]``: NumPy's ``np.take(X, rows, axis=0, out=out)``, parallel over rows.

    Parameters
    ----------
    X : ndarray of shape (n, p), float32, C-contiguous
        Rows to gather from (read-only arrays work).
    rows : ndarray of shape (m,), int64
        Row ids; every one is checked to lie in ``[0, n)`` before anything is written.
    out : ndarray of shape (m, p), float32, C-contiguous
        Output, overwritten.
    n_threads : int, default=1
        Number of OpenMP threads.

    Raises
    ------
    ValueError
        When the shapes disagree or a row id is out of range.
    """
    cdef Py_ssize_t n = X.shape[0], p = X.shape[1], m = rows.shape[0], i
    if out.shape[0] != m or out.shape[1] != p:
        raise ValueError(
            f"take_rows: out is {(out.shape[0], out.shape[1])}, expected (len(rows), X.shape[1]) = "
            f"{(m, p)}."
        )
    cdef int64_t bad = -1
    for i in range(m):
        if rows[i] < 0 or rows[i] >= n:
            bad = i
            break
    if bad >= 0:
        raise ValueError(f"take_rows: rows[{bad}] = {rows[bad]} is outside [0, {n}).")
    if m == 0 or p == 0:
        return
    n_threads = threads_for(n_threads, m * p, MIN_ELEMENTS_PER_THREAD)
    with nogil:
        for i in prange(m, schedule="static", num_threads=n_threads):
            memcpy(&out[i, 0], &X[rows[i], 0], p * sizeof(float))


ctypedef fused csr_offset:
    int32_t
    int64_t


def take_csr_rows(const csr_offset[::1] indptr,   # IN (n + 1,) CSR matrix (n, p)
                  const index_t[::1] indices,     # IN (nnz,)
                  const float[::1] data,          # IN (nnz,)
                  const int64_t[::1] rows,        # IN (m,) row ids in [0, n)
                  offset_t[::1] out_indptr,       # OUT (m + 1,)
                  index_t[::1] out_indices,       # OUT (>= nnz of the rows,)
                  float[::1] out_data,            # OUT (>= nnz of the rows,)
                  int n_threads=1):
    """Rows ``rows`` of a CSR matrix: scipy's ``X[rows]`` into preallocated arrays (int64
    offsets), the entries copied in parallel over rows.

    Parameters
    ----------
    indptr : ndarray of shape (n + 1,), int32 or int64
    indices : ndarray of int32
    data : ndarray of float32
        The CSR matrix (column ids are copied as they are, unsorted ones included).
    rows : ndarray of shape (m,), int64
        Row ids; every one, and the offsets of its row, are checked before anything is copied.
    out_indptr : ndarray of shape (m + 1,), int64
        Output row offsets, ``out_indptr[0] = 0``.
    out_indices, out_data : ndarray of int32 / float32
        Output entries; at least as long as the rows' entries together.
    n_threads : int, default=1
        Number of OpenMP threads.

    Returns
    -------
    nnz : int
        Entries written (``out_indptr[m]``).

    Raises
    ------
    ValueError
        When a row id or a row's offsets are out of range, or the outputs are too short.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1, m = rows.shape[0], nnz = indices.shape[0], i
    cdef int64_t r, a, b
    if out_indptr.shape[0] != m + 1:
        raise ValueError(f"take_csr_rows: out_indptr has {out_indptr.shape[0]} entries, "
                         f"expected len(rows) + 1 = {m + 1}.")
    if data.shape[0] != nnz:
        raise ValueError(f"take_csr_rows: data has {data.shape[0]} entries, indices {nnz}.")
    out_indptr[0] = 0
    for i in range(m):
        r = rows[i]
        if r < 0 or r >= n:
            raise ValueError(f"take_csr_rows: rows[{i}] = {r} is outside [0, {n}).")
        a = indptr[r]
        b = indptr[r + 1]
        if a < 0 or b < a or b > nnz:
            raise ValueError(f"take_csr_rows: row {r} has offsets [{a}, {b}) outside [0, {nnz}].")
        out_indptr[i + 1] = out_indptr[i] + (b - a)
    if out_indices.shape[0] < out_indptr[m] or out_data.shape[0] < out_indptr[m]:
        raise ValueError(f"take_csr_rows: the rows have {out_indptr[m]} entries; out_indices "
                         f"and out_data hold {out_indices.shape[0]} and {out_data.shape[0]}.")
    n_threads = threads_for(n_threads, out_indptr[m], MIN_ELEMENTS_PER_THREAD)
    if out_indptr[m] == 0:
        return 0
    with nogil:
        for i in prange(m, schedule="static", num_threads=n_threads):
            a = indptr[rows[i]]
            b = indptr[rows[i] + 1]
            if b > a:
                memcpy(&out_indices[out_indptr[i]], &indices[a], (b - a) * sizeof(index_t))
                memcpy(&out_data[out_indptr[i]], &data[a], (b - a) * sizeof(float))
    return out_indptr[m]


# --------------------------------------------------------------------------------------------
# dense -> CSR (the firing entries of a layer become the next layer's sparse input)
# --------------------------------------------------------------------------------------------

def nonzero_indptr(const float[:, ::1] A,   # IN (n, p)
                   offset_t[::1] indptr,    # OUT (n + 1,)
                   int n_threads=1):
    """CSR row pointer of the non-zero entries of ``A``: ``indptr[i + 1] - indptr[i]`` is the
    number of non-zeros of row ``i`` (NaN counts as non-zero).

    Parameters
    ----------
    A : ndarray of shape (n, p), float32
        Dense values.
    indptr : ndarray of shape (n + 1,), int64
        Output row pointer.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = A.shape[0], p = A.shape[1], i, j
    cdef offset_t count
    if indptr.shape[0] != n + 1:
        raise ValueError(f"nonzero_indptr: indptr has {indptr.shape[0]} entries, expected {n + 1}.")
    n_threads = threads_for(n_threads, n * p, MIN_ELEMENTS_PER_THREAD)
    indptr[0] = 0
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            count = 0
            for j in range(p):
                count = count + (A[i, j] != 0)
            indptr[i + 1] = count
        for i in range(n):
            indptr[i + 1] += indptr[i]


def nonzero_fill(const float[:, ::1] A,         # IN (n, p)
                 const offset_t[::1] indptr,    # IN (n + 1,) from nonzero_indptr(A)
                 index_t[::1] indices,          # OUT (indptr[n],)
                 float[::1] values,             # OUT (indptr[n],)
                 int n_threads=1):
    """Column indices and values of the non-zero entries of ``A``, row by row (CSR order).

    Parameters
    ----------
    A : ndarray of shape (n, p), float32
        Dense values.
    indptr : ndarray of shape (n + 1,), int64
        The row pointer :func:`nonzero_indptr` computed for ``A``.
    indices : ndarray of shape (indptr[n],), int32
        Output column indices, increasing within each row.
    values : ndarray of shape (indptr[n],), float32
        Output values.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = A.shape[0], p = A.shape[1], i, j
    cdef offset_t k
    if indptr.shape[0] != n + 1:
        raise ValueError(f"nonzero_fill: indptr has {indptr.shape[0]} entries, expected {n + 1}.")
    if indices.shape[0] < indptr[n] or values.shape[0] < indptr[n]:
        raise ValueError("nonzero_fill: indices/values are shorter than indptr[n].")
    n_threads = threads_for(n_threads, n * p, MIN_ELEMENTS_PER_THREAD)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            k = indptr[i]
            for j in range(p):
                if A[i, j] != 0 and k < indptr[i + 1]:  # the bound guards an indptr not from A
                    indices[k] = <index_t> j
                    values[k] = A[i, j]
                    k = k + 1
