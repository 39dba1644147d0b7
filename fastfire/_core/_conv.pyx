"""2-D convolution, max/average pooling: im2col + single-threaded sgemm, parallel over samples.

Layouts (all float32, C-contiguous, one image per row so that the layers exchange ordinary
``(n_samples, features)`` arrays):

- input ``X``: ``(N, C*H*W)``, channel-major (``X[n].reshape(C, H, W)``);
- weights ``Wt``: ``(F, C*KH*KW)`` (``coef.reshape(F, C, KH, KW)``), bias ``(F,)``;
- output: ``(N, F*Ho*Wo)`` with ``Ho = (H + 2*pad - KH) // stride + 1`` (same for ``Wo``).

Each thread owns an im2col buffer ``(C*KH*KW, Ho*Wo)`` and, in the backward pass, a partial
weight/bias gradient; samples are dealt to threads statically and the partials are summed in
thread order in float64, so results are deterministic for a fixed thread count.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import numpy as np

from fastfire._core._blas cimport sgemm_rm
from fastfire._core._openmp cimport MIN_ELEMENTS_PER_THREAD, omp_get_thread_num, threads_for


def conv_output_size(Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad):
    """``(size + 2*pad - kernel) // stride + 1`` (0 when the kernel does not fit)."""
    if size + 2 * pad < kernel:
        return 0
    return (size + 2 * pad - kernel) // stride + 1


cdef inline void _valid_range(int size, int offset, int stride, int out_size,
                              int* lo, int* hi) noexcept nogil:
    """Output positions ``o`` in [lo, hi) whose input position ``o*stride + offset`` lies in
    [0, size) (``offset`` = kernel tap - padding); ``hi <= lo`` when none does."""
    if offset >= 0:
        lo[0] = 0
    else:
        lo[0] = (-offset + stride - 1) // stride
    if size - 1 - offset < 0:
        hi[0] = 0
    else:
        hi[0] = min(out_size, (size - 1 - offset) // stride + 1)
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void _zero_outside(float* block, int y0, int y1, int x0, int x1, int Wo) noexcept nogil:
    """Zero the entries of a ``(Ho, Wo)`` block outside the rows [y0, y1) x columns [x0, x1)
    that a contiguous run from (y0, x0) to (y1 - 1, x1 - 1) covers: the start of row y0, the end
    of row y1 - 1 and the gap of ``Wo - x1 + x0`` entries between consecutive rows. The gaps are
    zeroed column by column (strided stores): written row by row, GCC turns each short loop into
    a memset call, thousands per image."""
    cdef int oy, t
    cdef int gap = Wo - x1 + x0
    for t in range(x0):
        block[y0 * Wo + t] = 0.0
    for t in range(x1, Wo):
        block[(y1 - 1) * Wo + t] = 0.0
    for t in range(gap):
        for oy in range(y0, y1 - 1):
            block[oy * Wo + x1 + t] = 0.0


cdef void _im2col(const float* x, int C, int H, int W, int KH, int KW, int stride, int pad,
                  int Ho, int Wo, float* cols) noexcept nogil:
    """cols[(c*KH + i)*KW + j, oy*Wo + ox] = x[c, oy*stride - pad + i, ox*stride - pad + j] (0 outside).

    The valid output range of each kernel tap is computed once, so the inner loops are plain
    copies with no per-pixel bounds test; with stride 1 and ``Wo == W`` (same padding) the rows
    of a tap are one contiguous copy, whose few wrapped border entries are zeroed after."""
    cdef int c, i, j, oy, ox, y0, y1, x0, x1
    cdef Py_ssize_t t, length
    cdef float* row
    cdef float* dst
    cdef const float* src
    cdef bint flat = stride == 1 and Wo == W
    for i in range(KH):
        _valid_range(H, i - pad, stride, Ho, &y0, &y1)
        for j in range(KW):
            _valid_range(W, j - pad, stride, Wo, &x0, &x1)
            for c in range(C):
                row = cols + ((c * KH + i) * KW + j) * Ho * Wo
                if y1 <= y0 or x1 <= x0:
                    memset(row, 0, <size_t> Ho * Wo * sizeof(float))
                    continue
                if y0 > 0:
                    memset(row, 0, <size_t> y0 * Wo * sizeof(float))
                if y1 < Ho:
                    memset(row + y1 * Wo, 0, <size_t> (Ho - y1) * Wo * sizeof(float))
                # src[t * stride] is the input pixel of output position (y0, x0 + t)
                src = x + (c * H + y0 * stride - pad + i) * W + x0 * stride + j - pad
                if flat:
                    length = (y1 - y0 - 1) * Wo + (x1 - x0)
                    memcpy(row + y0 * Wo + x0, src, <size_t> length * sizeof(float))
                    _zero_outside(row, y0, y1, x0, x1, Wo)
                    continue
                for oy in range(y0, y1):
                    dst = row + oy * Wo
                    for ox in range(x0):
                        dst[ox] = 0.0
                    for ox in range(x1, Wo):
                        dst[ox] = 0.0
                    for t in range(x1 - x0):
                        dst[x0 + t] = src[t * stride]
                    src = src + stride * W


cdef void _col2im(float* cols, int C, int H, int W, int KH, int KW, int stride, int pad,
                  int Ho, int Wo, float* x) noexcept nogil:
    """x (zeroed here) accumulates cols back into image positions: the adjoint of _im2col.

    ``cols`` is scratch: with stride 1 and ``Wo == W`` its entries that fall outside the image
    are zeroed so that each tap's rows are added as one contiguous run."""
    cdef int c, i, j, oy, ox, y0, y1, x0, x1
    cdef Py_ssize_t t, length
    cdef float* src
    cdef float* dst
    cdef float* row
    cdef bint flat = stride == 1 and Wo == W
    memset(x, 0, <size_t> C * H * W * sizeof(float))
    for i in range(KH):
        _valid_range(H, i - pad, stride, Ho, &y0, &y1)
        for j in range(KW):
            _valid_range(W, j - pad, stride, Wo, &x0, &x1)
            if y1 <= y0 or x1 <= x0:
                continue
            for c in range(C):
                row = cols + ((c * KH + i) * KW + j) * Ho * Wo
                dst = x + (c * H + y0 * stride - pad + i) * W + x0 * stride + j - pad
                if flat:
                    _zero_outside(row, y0, y1, x0, x1, Wo)
                    src = row + y0 * Wo + x0
                    length = (y1 - y0 - 1) * Wo + (x1 - x0)
                    for t in range(length):
                        dst[t] += src[t]
                else:
                    for oy in range(y0, y1):
                        src = row + oy * Wo + x0
                        for t in range(x1 - x0):
                            dst[t * stride] += src[t]
                        dst = dst + stride * W


# Long float sums (bias gradients, sampling scores) over 8 lanes in SSE2, each lane's partial
# added to a double every 256 terms. GCC does not vectorise a float sum without reassociation
# flags (a single accumulator is one dependency chain, ~4 cycles a term); explicit lanes keep a
# fixed order, so the result does not depend on the thread count.
cdef extern from *:
    """
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define FF_SUM_SSE2 1
    #else
    #define FF_SUM_SSE2 0
    #endif
    static double ff_sum(const float* a, Py_ssize_t n, int squares) {
        double total = 0.0;
        Py_ssize_t q = 0, t;
    #if FF_SUM_SSE2
        float lanes[8];
        int l;
        while (q + 8 <= n) {
            Py_ssize_t stop = q + ((n - q < 256 ? n - q : 256) / 8) * 8;
            __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
            for (; q < stop; q += 8) {
                __m128 v0 = _mm_loadu_ps(a + q), v1 = _mm_loadu_ps(a + q + 4);
                if (squares) {
                    v0 = _mm_mul_ps(v0, v0);
                    v1 = _mm_mul_ps(v1, v1);
                }
                s0 = _mm_add_ps(s0, v0);
                s1 = _mm_add_ps(s1, v1);
            }
            _mm_storeu_ps(lanes, s0);
            _mm_storeu_ps(lanes + 4, s1);
            for (l = 0; l < 8; l++) total += lanes[l];
        }
    #endif
        for (t = q; t < n; t++) total += squares ? (double) a[t] * a[t] : a[t];
        return total;
    }
    """
    double ff_sum(const float* a, Py_ssize_t n, int squares) noexcept nogil


def _check_conv(X, Wt, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                Py_ssize_t stride, Py_ssize_t pad, n_threads):
    if min(C, H, W, KH, KW, stride) < 1 or pad < 0 or n_threads < 1:
        raise ValueError(
            f"conv: C={C}, H={H}, W={W}, KH={KH}, KW={KW}, stride={stride} must be >= 1, "
            f"pad={pad} >= 0, n_threads={n_threads} >= 1."
        )
    if X.shape[1] != C * H * W:
        raise ValueError(f"conv: X has {X.shape[1]} columns, expected C*H*W = {C * H * W}.")
    if Wt.shape[1] != C * KH * KW:
        raise ValueError(f"conv: weights have {Wt.shape[1]} columns, expected C*KH*KW = {C * KH * KW}.")
    Ho = conv_output_size(H, KH, stride, pad)
    Wo = conv_output_size(W, KW, stride, pad)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv: a {KH}x{KW} kernel does not fit a {H}x{W} image with pad={pad}.")
    return Ho, Wo


def conv2d_forward(const float[:, ::1] X,      # IN (N, C*H*W)
                   const float[:, ::1] Wt,     # IN (F, C*KH*KW)
                   const float[::1] bias,      # IN (F,)
                   float[:, ::1] out,          # OUT (N, F*Ho*Wo)
                   int C, int H, int W, int KH, int KW, int stride=1, int pad=0,
                   int n_threads=1):
    """``out[n] = Wt @ im2col(X[n]) + bias`` for every sample, in parallel over samples."""
    cdef Py_ssize_t N = X.shape[0], F = Wt.shape[0]
    Ho, Wo = _check_conv(X, Wt, C, H, W, KH, KW, stride, pad, n_threads)
    cdef int ho = Ho, wo = Wo, P = Ho * Wo, K = C * KH * KW
    if bias.shape[0] != F or out.shape[0] != N or out.shape[1] != F * P:
        raise ValueError(f"conv2d_forward: bias {bias.shape[0]} / out {(out.shape[0], out.shape[1])} "
                         f"do not match F={F}, N={N}, F*Ho*Wo={F * P}.")
    cdef Py_ssize_t n, f, q
    cdef float* cols
    cdef float* o
    cdef int failed = 0
    cdef int* failed_ptr = &failed
    if N == 0 or F == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        cols = <float*> malloc(<size_t> K * P * sizeof(float))
        if cols == NULL:
            failed_ptr[0] = 1
        for n in prange(N, schedule="static"):
            if cols == NULL:
                continue
            _im2col(&X[n, 0], C, H, W, KH, KW, stride, pad, ho, wo, cols)
            o = &out[n, 0]
            sgemm_rm(False, False, <int> F, P, K, 1.0, &Wt[0, 0], K, cols, P, 0.0, o, P)
            for f in range(F):
                for q in range(P):
                    o[f * P + q] = o[f * P + q] + bias[f]
        free(cols)
    if failed:
        raise MemoryError("conv2d_forward: could not allocate the im2col buffer.")


def _check_ids(ids, Py_ssize_t bound, str name):
    """``ids`` as a C-contiguous intp array of distinct ids in [0, bound), or None for all."""
    if ids is None:
        return None
    ids = np.ascontiguousarray(ids, dtype=np.intp)
    if ids.ndim != 1:
        raise ValueError(f"conv2d_backward: {name} must be 1-D; got shape {ids.shape}.")
    if ids.shape[0] and (ids.min() < 0 or ids.max() >= bound):
        raise ValueError(f"conv2d_backward: {name} must lie in [0, {bound}).")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError(f"conv2d_backward: {name} must not repeat an id.")
    return ids


def conv2d_backward(const float[:, ::1] X,      # IN (N, C*H*W)
                    const float[:, ::1] Wt,     # IN (F, C*KH*KW)
                    const float[:, ::1] dout,   # IN (N, F*Ho*Wo) gradient w.r.t. the output
                    float[:, ::1] dW,           # OUT (F, C*KH*KW) or empty (not computed)
                    float[::1] dbias,           # OUT (F,) or empty (not computed)
                    float[:, ::1] dX,           # OUT (N, C*H*W) or empty (not computed)
                    int C, int H, int W, int KH, int KW, int stride=1, int pad=0,
                    float scale=1.0, int n_threads=1, example_ids=None, output_channels=None,
                    transposed=None):
    """Gradients of a convolution, optionally from a subset of the terms of each sum.

    ``dW = scale Σ_{n in example_ids} dout[n] im2col(X[n])ᵀ``; ``dbias = scale Σ_n Σ_q
    dout[n, f, q]`` (always over every example); ``dX[n] = col2im(Wt[S]ᵀ dout[n, S])`` with ``S``
    the ``output_channels`` (not scaled). The work of the weight and input gradients is
    proportional to the ids kept. Pass an empty array (shape 0) for a gradient that is not
    needed.

    Parameters
    ----------
    example_ids : array-like of int, default=None
        Distinct examples (rows of ``X`` and ``dout``) summed into ``dW``; None for all.
    output_channels : array-like of int, default=None
        Distinct output channels summed into ``dX``; None for all.
    transposed : bool, default=None
        Compute ``dX`` as a transposed convolution: im2col of the kept channels of ``dout``
        (padded by ``KH - 1 - pad``) and one GEMM with the flipped kernels straight into
        ``dX``, instead of ``col2im(Wt[S]ᵀ dout[n, S])``, whose GEMM output and scatter-add
        stay the size of ``im2col(X[n])`` however few channels are kept. Needs stride 1, a
        square kernel and ``pad < KH``. None: when possible and at most a quarter of the output
        channels are kept (where it was faster on the small CNN; at half, col2im was).
    """
    cdef Py_ssize_t N = X.shape[0], F = Wt.shape[0]
    Ho, Wo = _check_conv(X, Wt, C, H, W, KH, KW, stride, pad, n_threads)
    cdef int ho = Ho, wo = Wo, P = Ho * Wo, K = C * KH * KW
    cdef bint want_w = dW.shape[0] > 0, want_b = dbias.shape[0] > 0, want_x = dX.shape[0] > 0
    if dout.shape[0] != N or dout.shape[1] != F * P:
        raise ValueError(f"conv2d_backward: dout is {(dout.shape[0], dout.shape[1])}, expected {(N, F * P)}.")
    if want_w and (dW.shape[0] != F or dW.shape[1] != K):
        raise ValueError(f"conv2d_backward: dW is {(dW.shape[0], dW.shape[1])}, expected {(F, K)}.")
    if want_b and dbias.shape[0] != F:
        raise ValueError(f"conv2d_backward: dbias has {dbias.shape[0]} entries, expected {F}.")
    if want_x and (dX.shape[0] != N or dX.shape[1] != X.shape[1]):
        raise ValueError(f"conv2d_backward: dX is {(dX.shape[0], dX.shape[1])}, expected {(N, X.shape[1])}.")
    examples = _check_ids(example_ids, N, "example_ids")
    channels = _check_ids(output_channels, F, "output_channels")
    cdef const Py_ssize_t[::1] ex = examples if examples is not None else np.arange(N, dtype=np.intp)
    cdef const Py_ssize_t[::1] ch = channels if channels is not None else np.arange(F, dtype=np.intp)
    # the kept rows of Wt, gathered once (all of Wt without a channel subset)
    cdef const float[:, ::1] Wk = Wt if channels is None else np.ascontiguousarray(np.asarray(Wt)[channels])
    cdef Py_ssize_t n_ex = ex.shape[0]
    cdef int Fk = ch.shape[0]
    cdef bint gather_x = channels is not None
    cdef bint do_w = want_w and n_ex > 0 and F > 0, do_x = want_x and Fk > 0
    cdef bint can_transpose = stride == 1 and KH == KW and pad < KH
    if transposed is None:
        transposed = can_transpose and 4 * Fk <= F
    elif transposed and not can_transpose:
        raise ValueError(f"conv2d_backward: transposed=True needs stride 1, a square kernel and "
                         f"pad < KH; got stride={stride}, {KH}x{KW}, pad={pad}.")
    cdef bint tr = do_x and transposed
    cdef int Kt = Fk * KH * KW
    # flipped kernels of the kept channels: Wf[c, (f*KH + i)*KW + j] = Wt[S[f], c, KH-1-i, KW-1-j]
    cdef const float[:, ::1] Wf = (np.ascontiguousarray(
        np.asarray(Wk).reshape(Fk, C, KH, KW)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(C, Kt))
        if tr else Wk)
    cdef size_t cols_size = max(<size_t> K * P, <size_t> Kt * H * W if tr else 0)
    cdef int nt = max(1, min(n_threads, N)) if N > 0 else 1
    cdef float[:, :, ::1] part_w = np.zeros((nt if do_w else 0, F, K), dtype=np.float32)
    cdef double[:, ::1] part_b = np.zeros((nt if want_b else 0, F), dtype=np.float64)
    cdef Py_ssize_t n, e, f, q
    cdef int tid
    cdef float* cols
    cdef float* dsel
    cdef const float* d
    cdef int failed = 0
    cdef int* failed_ptr = &failed
    if want_x and not do_x:
        np.asarray(dX)[...] = 0.0
    if N > 0 and (do_w or want_b or do_x):
        with nogil, parallel(num_threads=nt):
            tid = omp_get_thread_num()
            cols = <float*> malloc(cols_size * sizeof(float))
            dsel = <float*> malloc(<size_t> Fk * P * sizeof(float)) if gather_x and Fk > 0 else NULL
            if cols == NULL or (gather_x and Fk > 0 and dsel == NULL):
                failed_ptr[0] = 1
            if do_w:
                for e in prange(n_ex, schedule="static"):
                    if cols == NULL:
                        continue
                    n = ex[e]
                    _im2col(&X[n, 0], C, H, W, KH, KW, stride, pad, ho, wo, cols)
                    sgemm_rm(False, True, <int> F, K, P, 1.0, &dout[n, 0], P, cols, P, 1.0,
                             &part_w[tid, 0, 0], K)
            if want_b or do_x:
                for n in prange(N, schedule="static"):
                    d = &dout[n, 0]
                    if want_b:
                        for f in range(F):
                            part_b[tid, f] = part_b[tid, f] + ff_sum(d + f * P, P, 0)
                    if do_x and cols != NULL and (dsel != NULL or not gather_x):
                        if gather_x:
                            for f in range(Fk):
                                memcpy(dsel + f * P, d + ch[f] * P, <size_t> P * sizeof(float))
                            d = dsel
                        if tr:
                            _im2col(d, Fk, ho, wo, KH, KW, 1, KH - 1 - pad, H, W, cols)
                            sgemm_rm(False, False, C, H * W, Kt, 1.0, &Wf[0, 0], Kt, cols, H * W,
                                     0.0, &dX[n, 0], H * W)
                        else:
                            sgemm_rm(True, False, K, P, Fk, 1.0, &Wk[0, 0], K, d, P, 0.0, cols, P)
                            _col2im(cols, C, H, W, KH, KW, stride, pad, ho, wo, &dX[n, 0])
            free(cols)
            free(dsel)
    if failed:
        raise MemoryError("conv2d_backward: could not allocate the im2col buffers.")
    if want_w:
        if do_w:
            np.asarray(dW)[...] = np.sum(np.asarray(part_w), axis=0, dtype=np.float64) * scale
        else:
            np.asarray(dW)[...] = 0.0
    if want_b:
        np.asarray(dbias)[...] = np.sum(np.asarray(part_b), axis=0) * scale


def map_square_sums(const float[:, ::1] A,     # IN (N, M*P)
                    double[:, ::1] out,        # OUT (N, M)
                    int n_threads=1):
    """Squared norm of each map (channel) of every row: ``out[n, m] = Σ_q A[n, m*P + q]²``.

    ``P = A.shape[1] // M`` with ``M = out.shape[1]``. Row sums of ``out`` are the squared row
    norms, column sums the squared norms of one channel across the batch: the scores of the
    sampled convolution products, in one parallel pass over ``A``.
    """
    cdef Py_ssize_t N = A.shape[0], M = out.shape[1]
    if out.shape[0] != N or M < 1 or A.shape[1] % M != 0 or n_threads < 1:
        raise ValueError(f"map_square_sums: A {(A.shape[0], A.shape[1])} does not split into "
                         f"out {(out.shape[0], out.shape[1])} maps (n_threads={n_threads}).")
    cdef Py_ssize_t P = A.shape[1] // M, n, m
    if N == 0:
        return
    n_threads = threads_for(n_threads, N * A.shape[1], MIN_ELEMENTS_PER_THREAD)
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            for m in range(M):
                out[n, m] = ff_sum(&A[n, m * P], P, 1)


# --------------------------------------------------------------------------------------------
# pooling (non-overlapping windows: window == stride; trailing rows/columns that do not fill a
# window are dropped, as in PyTorch with ceil_mode=False)
# --------------------------------------------------------------------------------------------

# 2x2 max pooling (the common case) in SSE2, four windows at a time. In scalar code the window
# maximum is a data-dependent branch that mispredicts on about every other window of real
# activations (GCC does not if-convert it under CPython's -fwrapv): 10x slower than this loop.
# Same result as the scalar rule: the first maximum in row-major window order, a NaN winning.
# A row whose width is not a multiple of four ends with one more group of four that overlaps
# the previous one (same values written twice): a scalar tail of up to three windows would
# cost as much as the rest of a 7-window row.
cdef extern from *:
    """
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define FF_POOL_SSE2 1
    static inline void ff_pool_take(__m128 v, __m128i iv, __m128* cur, __m128i* best) {
        __m128 take = _mm_or_ps(_mm_cmpgt_ps(v, *cur),
                                _mm_andnot_ps(_mm_cmpunord_ps(*cur, *cur), _mm_cmpunord_ps(v, v)));
        __m128i ti = _mm_castps_si128(take);
        *cur = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, *cur));
        *best = _mm_or_si128(_mm_and_si128(ti, iv), _mm_andnot_si128(ti, *best));
    }
    /* Windows ox .. ox + 3: r0, r1 the two input rows, base the flat input index of r0[0]. */
    static inline void ff_pool4(const float* r0, const float* r1, int base, int W, int ox,
                                float* out, int* argmax) {
        __m128 a0 = _mm_loadu_ps(r0 + 2 * ox), a1 = _mm_loadu_ps(r0 + 2 * ox + 4);
        __m128 b0 = _mm_loadu_ps(r1 + 2 * ox), b1 = _mm_loadu_ps(r1 + 2 * ox + 4);
        __m128i i00 = _mm_add_epi32(_mm_set1_epi32(base + 2 * ox), _mm_set_epi32(6, 4, 2, 0));
        __m128i one = _mm_set1_epi32(1), row = _mm_set1_epi32(W);
        __m128 cur = _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0));
        __m128i best = i00;
        ff_pool_take(_mm_shuffle_ps(a0, a1, _MM_SHUFFLE(3, 1, 3, 1)), _mm_add_epi32(i00, one), &cur, &best);
        ff_pool_take(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)), _mm_add_epi32(i00, row), &cur, &best);
        ff_pool_take(_mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)),
                     _mm_add_epi32(_mm_add_epi32(i00, row), one), &cur, &best);
        _mm_storeu_ps(out + ox, cur);
        _mm_storeu_si128((__m128i*) (argmax + ox), best);
    }
    /* Gradients of windows ox .. ox + 3: dout[ox] at each window's argmax, 0 at its other
       three positions (an argmax outside its window writes only zeros). */
    static inline void ff_unpool4(const float* dout, const int* argmax, const float* pooled,
                                  int base, int W, int ox, float* r0, float* r1) {
        __m128i one = _mm_set1_epi32(1), row = _mm_set1_epi32(W);
        __m128 g = _mm_loadu_ps(dout + ox);
        if (pooled)  /* ReLU before the pooling: only windows whose maximum is positive */
            g = _mm_and_ps(g, _mm_cmpgt_ps(_mm_loadu_ps(pooled + ox), _mm_setzero_ps()));
        __m128i rel = _mm_sub_epi32(_mm_loadu_si128((const __m128i*) (argmax + ox)),
                                    _mm_add_epi32(_mm_set1_epi32(base + 2 * ox), _mm_set_epi32(6, 4, 2, 0)));
        __m128 g00 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rel, _mm_setzero_si128())), g);
        __m128 g01 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rel, one)), g);
        __m128 g10 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rel, row)), g);
        __m128 g11 = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(rel, _mm_add_epi32(row, one))), g);
        _mm_storeu_ps(r0 + 2 * ox, _mm_unpacklo_ps(g00, g01));
        _mm_storeu_ps(r0 + 2 * ox + 4, _mm_unpackhi_ps(g00, g01));
        _mm_storeu_ps(r1 + 2 * ox, _mm_unpacklo_ps(g10, g11));
        _mm_storeu_ps(r1 + 2 * ox + 4, _mm_unpackhi_ps(g10, g11));
    }
    #else
    #define FF_POOL_SSE2 0
    #endif
    /* Max pooling of the Wo windows of one output row. Returns the number of windows done:
       Wo, or 0 (the caller's scalar loop does them) without SSE2 or when Wo < 4. */
    static int ff_max_pool_2x2_row(const float* r0, const float* r1, int base, int W, int Wo,
                                   float* out, int* argmax) {
    #if FF_POOL_SSE2
        int ox;
        if (Wo < 4) return 0;
        for (ox = 0; ox + 4 <= Wo; ox += 4) ff_pool4(r0, r1, base, W, ox, out, argmax);
        if (Wo % 4) ff_pool4(r0, r1, base, W, Wo - 4, out, argmax);
        return Wo;
    #else
        return 0;
    #endif
    }
    /* The adjoint for one output row: writes all 2 x 2Wo gradients of the row's windows (no
       memset, no scatter); with pooled (the row's pooled outputs, or NULL) a window whose
       maximum is not positive passes no gradient. Returns the number of windows done, as
       above. */
    static int ff_max_unpool_2x2_row(const float* dout, const int* argmax, const float* pooled,
                                     int base, int W, int Wo, float* r0, float* r1) {
    #if FF_POOL_SSE2
        int ox;
        if (Wo < 4) return 0;
        for (ox = 0; ox + 4 <= Wo; ox += 4) ff_unpool4(dout, argmax, pooled, base, W, ox, r0, r1);
        if (Wo % 4) ff_unpool4(dout, argmax, pooled, base, W, Wo - 4, r0, r1);
        return Wo;
    #else
        return 0;
    #endif
    }
    """
    int ff_max_pool_2x2_row(const float* r0, const float* r1, int base, int W, int Wo,
                            float* out, int* argmax) noexcept nogil
    int ff_max_unpool_2x2_row(const float* dout, const int* argmax, const float* pooled,
                              int base, int W, int Wo, float* r0, float* r1) noexcept nogil
    const int FF_POOL_SSE2


cdef void _max_pool_one(const float* x, float* out, int* argmax, int C, int H, int W,
                        int PH, int PW) noexcept nogil:
    """Max pooling of one image; ``argmax`` gets the flat input index of each maximum."""
    cdef int Ho = H // PH, Wo = W // PW
    cdef int c, oy, ox, i, j, best, idx, done, pos
    cdef float v, b
    for c in range(C):
        for oy in range(Ho):
            pos = (c * Ho + oy) * Wo
            done = 0
            if PH == 2 and PW == 2:
                idx = (c * H + oy * 2) * W
                done = ff_max_pool_2x2_row(x + idx, x + idx + W, idx, W, Wo, out + pos, argmax + pos)
            for ox in range(done, Wo):
                best = (c * H + oy * PH) * W + ox * PW
                b = x[best]
                for i in range(PH):
                    for j in range(PW):
                        idx = (c * H + oy * PH + i) * W + ox * PW + j
                        v = x[idx]
                        if v > b or (v != v and b == b):
                            b = v
                            best = idx
                out[pos + ox] = b
                argmax[pos + ox] = best


cdef void _avg_pool_one(const float* x, float* out, int C, int H, int W, int PH, int PW) noexcept nogil:
    """Average pooling of one image."""
    cdef int Ho = H // PH, Wo = W // PW
    cdef int c, oy, ox, i, j
    cdef double acc
    cdef float inv = 1.0 / (PH * PW)
    for c in range(C):
        for oy in range(Ho):
            for ox in range(Wo):
                acc = 0.0
                for i in range(PH):
                    for j in range(PW):
                        acc = acc + x[(c * H + oy * PH + i) * W + ox * PW + j]
                out[(c * Ho + oy) * Wo + ox] = <float> (acc * inv)


def pool_forward(const float[:, ::1] X,     # IN (N, C*H*W)
                 float[:, ::1] out,         # OUT (N, C*Ho*Wo)
                 int[:, ::1] argmax,        # OUT (N, C*Ho*Wo) for max pooling, or empty
                 int C, int H, int W, int PH, int PW, bint is_max, int n_threads=1):
    """Max (``is_max``) or average pooling over ``PH x PW`` windows with the same stride.

    ``argmax`` receives, for max pooling, the flat index (in ``c*H*W + y*W + x``) of each
    window's maximum (the first one on ties; NaN wins as in NumPy's argmax)."""
    cdef Py_ssize_t N = X.shape[0]
    if min(C, H, W, PH, PW, n_threads) < 1 or PH > H or PW > W:
        raise ValueError(f"pool: C={C}, H={H}, W={W}, window {PH}x{PW} (must fit the image), n_threads={n_threads}.")
    cdef int Ho = H // PH, Wo = W // PW
    if X.shape[1] != C * H * W or out.shape[0] != N or out.shape[1] != C * Ho * Wo:
        raise ValueError(f"pool: X {(X.shape[0], X.shape[1])} / out {(out.shape[0], out.shape[1])} "
                         f"do not match C*H*W={C * H * W}, C*Ho*Wo={C * Ho * Wo}.")
    if is_max and (argmax.shape[0] != N or argmax.shape[1] != C * Ho * Wo):
        raise ValueError("pool: argmax must have the shape of out for max pooling.")
    cdef Py_ssize_t n
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            if is_max:
                _max_pool_one(&X[n, 0], &out[n, 0], &argmax[n, 0], C, H, W, PH, PW)
            else:
                _avg_pool_one(&X[n, 0], &out[n, 0], C, H, W, PH, PW)


def pool_backward(const float[:, ::1] dout,    # IN (N, C*Ho*Wo)
                  const int[:, ::1] argmax,    # IN (N, C*Ho*Wo) for max pooling
                  float[:, ::1] dX,            # OUT (N, C*H*W)
                  int C, int H, int W, int PH, int PW, bint is_max, int n_threads=1,
                  const float[:, ::1] positive=None):  # IN (N, C*Ho*Wo) pooled outputs, or None
    """Adjoint of :func:`pool_forward`: the window gradient to its maximum (max) or spread
    evenly over the window (average); positions outside every window get 0. An ``argmax``
    entry that does not lie in its window (2x2) or in the image (other windows) adds
    nothing: a wrong ``argmax`` gives a wrong gradient, never a write out of bounds.

    ``positive`` (max pooling only), the pooled outputs, passes a window's gradient only
    where its maximum is > 0. When the pooled values are ReLU outputs this applies ReLU's
    derivative ``A > 0`` too (it is 1 at a positive maximum, and the other positions get
    no gradient anyway), which saves a pass over the larger, unpooled gradient."""
    cdef Py_ssize_t N = dout.shape[0]
    if min(C, H, W, PH, PW, n_threads) < 1 or PH > H or PW > W:
        raise ValueError(f"pool: C={C}, H={H}, W={W}, window {PH}x{PW}, n_threads={n_threads}.")
    cdef int Ho = H // PH, Wo = W // PW
    if dout.shape[1] != C * Ho * Wo or dX.shape[0] != N or dX.shape[1] != C * H * W:
        raise ValueError("pool_backward: shapes do not agree.")
    if is_max and (argmax.shape[0] != N or argmax.shape[1] != C * Ho * Wo):
        raise ValueError("pool_backward: argmax must have the shape of dout.")
    cdef bint masked = positive is not None
    if masked and not is_max:
        raise ValueError("pool_backward: positive is for max pooling only.")
    if masked and (positive.shape[0] != N or positive.shape[1] != C * Ho * Wo):
        raise ValueError("pool_backward: positive must have the shape of dout.")
    cdef Py_ssize_t n
    cdef int c, oy, ox, i, j, pos, q = C * Ho * Wo, size = C * H * W
    cdef float g
    cdef float inv = 1.0 / (PH * PW)
    cdef float* dx
    cdef const float* pooled
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            dx = &dX[n, 0]
            pooled = &positive[n, 0] if masked else NULL
            if is_max and PH == 2 and PW == 2 and Wo >= 4 and FF_POOL_SSE2:
                if H % 2 or W % 2:  # positions outside every window
                    memset(dx, 0, <size_t> C * H * W * sizeof(float))
                for c in range(C):
                    for oy in range(Ho):
                        pos = (c * Ho + oy) * Wo
                        i = (c * H + oy * 2) * W
                        ff_max_unpool_2x2_row(&dout[n, pos], &argmax[n, pos],
                                              pooled + pos if masked else NULL, i, W, Wo,
                                              dx + i, dx + i + W)
                continue
            memset(dx, 0, <size_t> C * H * W * sizeof(float))
            if is_max:
                for pos in range(q):
                    i = argmax[n, pos]
                    if 0 <= i < size and (not masked or pooled[pos] > 0):
                        dx[i] += dout[n, pos]
            else:
                for c in range(C):
                    for oy in range(Ho):
                        for ox in range(Wo):
                            g = dout[n, (c * Ho + oy) * Wo + ox] * inv
                            for i in range(PH):
                                for j in range(PW):
                                    dx[c * H * W + (oy * PH + i) * W + ox * PW + j] = g
