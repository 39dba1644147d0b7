# BLAS for the kernels, through scipy.linalg.cython_blas (no link-time BLAS dependency).
#
# BLAS is column-major; fastfire's arrays are row-major (C-contiguous). A row-major m x n matrix is
# the column-major n x m matrix of its transpose, so the row-major product C = op(A) op(B) is the
# column-major product C^T = op(B)^T op(A)^T: swap the operands and the (m, n) sizes, keep the
# transpose flags. The wrappers below do that once so kernels think in row-major only.
#
# The routines are called from inside OpenMP regions: the caller caps BLAS at one thread
# (threadpoolctl) so that OpenBLAS does not oversubscribe the cores.

from scipy.linalg.cython_blas cimport saxpy, sdot, sgemm, sgemv, sscal


cdef inline void sgemm_rm(bint trans_a, bint trans_b, int m, int n, int k, float alpha,
                          const float* A, int lda, const float* B, int ldb, float beta,
                          float* C, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C.

    ``lda``/``ldb``/``ldc`` are the row strides (in elements) of the matrices as stored:
    A is m x k (k x m when ``trans_a``), B is k x n (n x k when ``trans_b``). The caller makes sure
    m, n, k > 0 (BLAS rejects leading dimensions of 0).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> B, &ldb, <float*> A, &lda, &beta, C, &ldc)


cdef inline void sgemv_rm(bint trans, int m, int n, float alpha, const float* A, int lda,
                          const float* x, float beta, float* y) noexcept nogil:
    """Row-major y = alpha * op(A) @ x + beta * y with A stored m x n (row stride ``lda``)."""
    cdef char t = b'N' if trans else b'T'  # row-major A is column-major A^T
    cdef int one = 1
    sgemv(&t, &n, &m, &alpha, <float*> A, &lda, <float*> x, &one, &beta, y, &one)


cdef inline void saxpy_(int n, float alpha, const float* x, float* y) noexcept nogil:
    """y += alpha * x over n contiguous floats."""
    cdef int one = 1
    saxpy(&n, &alpha, <float*> x, &one, y, &one)


cdef inline float sdot_(int n, const float* x, const float* y) noexcept nogil:
    """Dot product of n contiguous floats (float accumulation, as BLAS does)."""
    cdef int one = 1
    return sdot(&n, <float*> x, &one, <float*> y, &one)


cdef inline void sscal_(int n, float alpha, float* x) noexcept nogil:
    """x *= alpha over n contiguous floats."""
    cdef int one = 1
    sscal(&n, &alpha, x, &one)
