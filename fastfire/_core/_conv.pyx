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
from libc.string cimport memset

import numpy as np

from fastfire._core._blas cimport sgemm_rm
from fastfire._core._openmp cimport omp_get_thread_num


def conv_output_size(Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad):
    """``(size + 2*pad - kernel) // stride + 1`` (0 when the kernel does not fit)."""
    if size + 2 * pad < kernel:
        return 0
    return (size + 2 * pad - kernel) // stride + 1


cdef void _im2col(const float* x, int C, int H, int W, int KH, int KW, int stride, int pad,
                  int Ho, int Wo, float* cols) noexcept nogil:
    """cols[(c*KH + i)*KW + j, oy*Wo + ox] = x[c, oy*stride - pad + i, ox*stride - pad + j] (0 outside)."""
    cdef int c, i, j, oy, ox, y, xx
    cdef float* row
    cdef const float* plane
    for c in range(C):
        plane = x + c * H * W
        for i in range(KH):
            for j in range(KW):
                row = cols + ((c * KH + i) * KW + j) * Ho * Wo
                for oy in range(Ho):
                    y = oy * stride - pad + i
                    if y < 0 or y >= H:
                        memset(row + oy * Wo, 0, Wo * sizeof(float))
                        continue
                    for ox in range(Wo):
                        xx = ox * stride - pad + j
                        row[oy * Wo + ox] = plane[y * W + xx] if 0 <= xx < W else 0.0


cdef void _col2im(const float* cols, int C, int H, int W, int KH, int KW, int stride, int pad,
                  int Ho, int Wo, float* x) noexcept nogil:
    """x (zeroed here) accumulates cols back into image positions: the adjoint of _im2col."""
    cdef int c, i, j, oy, ox, y, xx
    cdef const float* row
    cdef float* plane
    memset(x, 0, <size_t> C * H * W * sizeof(float))
    for c in range(C):
        plane = x + c * H * W
        for i in range(KH):
            for j in range(KW):
                row = cols + ((c * KH + i) * KW + j) * Ho * Wo
                for oy in range(Ho):
                    y = oy * stride - pad + i
                    if y < 0 or y >= H:
                        continue
                    for ox in range(Wo):
                        xx = ox * stride - pad + j
                        if 0 <= xx < W:
                            plane[y * W + xx] += row[oy * Wo + ox]


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


def conv2d_backward(const float[:, ::1] X,      # IN (N, C*H*W)
                    const float[:, ::1] Wt,     # IN (F, C*KH*KW)
                    const float[:, ::1] dout,   # IN (N, F*Ho*Wo) gradient w.r.t. the output
                    float[:, ::1] dW,           # OUT (F, C*KH*KW) or empty (not computed)
                    float[::1] dbias,           # OUT (F,) or empty (not computed)
                    float[:, ::1] dX,           # OUT (N, C*H*W) or empty (not computed)
                    int C, int H, int W, int KH, int KW, int stride=1, int pad=0,
                    float scale=1.0, int n_threads=1):
    """Gradients of a convolution: ``dW = scale Σ_n dout[n] im2col(X[n])ᵀ``, ``dbias = scale Σ
    dout``, ``dX[n] = col2im(Wtᵀ dout[n])`` (not scaled). Pass an empty array (shape 0) for a
    gradient that is not needed."""
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
    cdef int nt = max(1, min(n_threads, N)) if N > 0 else 1
    cdef float[:, :, ::1] part_w = np.zeros((nt if want_w else 0, F, K), dtype=np.float32)
    cdef double[:, ::1] part_b = np.zeros((nt if want_b else 0, F), dtype=np.float64)
    cdef Py_ssize_t n, f, q, t, j
    cdef int tid
    cdef float* cols
    cdef const float* d
    cdef double acc
    cdef int failed = 0
    cdef int* failed_ptr = &failed
    if N > 0 and F > 0:
        with nogil, parallel(num_threads=nt):
            tid = omp_get_thread_num()
            cols = <float*> malloc(<size_t> K * P * sizeof(float))
            if cols == NULL:
                failed_ptr[0] = 1
            for n in prange(N, schedule="static"):
                if cols == NULL:
                    continue
                d = &dout[n, 0]
                if want_w:
                    _im2col(&X[n, 0], C, H, W, KH, KW, stride, pad, ho, wo, cols)
                    sgemm_rm(False, True, <int> F, K, P, 1.0, d, P, cols, P, 1.0,
                             &part_w[tid, 0, 0], K)
                if want_b:
                    for f in range(F):
                        acc = 0.0
                        for q in range(P):
                            acc = acc + d[f * P + q]
                        part_b[tid, f] = part_b[tid, f] + acc
                if want_x:
                    sgemm_rm(True, False, K, P, <int> F, 1.0, &Wt[0, 0], K, d, P, 0.0, cols, P)
                    _col2im(cols, C, H, W, KH, KW, stride, pad, ho, wo, &dX[n, 0])
            free(cols)
    if failed:
        raise MemoryError("conv2d_backward: could not allocate the im2col buffer.")
    if want_w:
        total = np.sum(np.asarray(part_w), axis=0, dtype=np.float64) * scale
        np.asarray(dW)[...] = total
    if want_b:
        np.asarray(dbias)[...] = np.sum(np.asarray(part_b), axis=0) * scale


# --------------------------------------------------------------------------------------------
# pooling (non-overlapping windows: window == stride; trailing rows/columns that do not fill a
# window are dropped, as in PyTorch with ceil_mode=False)
# --------------------------------------------------------------------------------------------

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
    cdef int c, oy, ox, i, j, best, pos
    cdef float v, b
    cdef double acc
    cdef float inv = 1.0 / (PH * PW)
    cdef const float* x
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            x = &X[n, 0]
            for c in range(C):
                for oy in range(Ho):
                    for ox in range(Wo):
                        pos = (c * Ho + oy) * Wo + ox
                        if is_max:
                            best = c * H * W + (oy * PH) * W + ox * PW
                            b = x[best]
                            for i in range(PH):
                                for j in range(PW):
                                    v = x[c * H * W + (oy * PH + i) * W + ox * PW + j]
                                    if v > b or (v != v and b == b):
                                        b = v
                                        best = c * H * W + (oy * PH + i) * W + ox * PW + j
                            out[n, pos] = b
                            argmax[n, pos] = best
                        else:
                            acc = 0.0
                            for i in range(PH):
                                for j in range(PW):
                                    acc = acc + x[c * H * W + (oy * PH + i) * W + ox * PW + j]
                            out[n, pos] = <float> (acc * inv)


def pool_backward(const float[:, ::1] dout,    # IN (N, C*Ho*Wo)
                  const int[:, ::1] argmax,    # IN (N, C*Ho*Wo) for max pooling
                  float[:, ::1] dX,            # OUT (N, C*H*W)
                  int C, int H, int W, int PH, int PW, bint is_max, int n_threads=1):
    """Adjoint of :func:`pool_forward`: the window gradient to its maximum (max) or spread
    evenly over the window (average); positions outside every window get 0."""
    cdef Py_ssize_t N = dout.shape[0]
    if min(C, H, W, PH, PW, n_threads) < 1 or PH > H or PW > W:
        raise ValueError(f"pool: C={C}, H={H}, W={W}, window {PH}x{PW}, n_threads={n_threads}.")
    cdef int Ho = H // PH, Wo = W // PW
    if dout.shape[1] != C * Ho * Wo or dX.shape[0] != N or dX.shape[1] != C * H * W:
        raise ValueError("pool_backward: shapes do not agree.")
    if is_max and (argmax.shape[0] != N or argmax.shape[1] != C * Ho * Wo):
        raise ValueError("pool_backward: argmax must have the shape of dout.")
    cdef Py_ssize_t n
    cdef int c, oy, ox, i, j, pos, q = C * Ho * Wo
    cdef float g
    cdef float inv = 1.0 / (PH * PW)
    cdef float* dx
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            dx = &dX[n, 0]
            memset(dx, 0, <size_t> C * H * W * sizeof(float))
            if is_max:
                for pos in range(q):
                    dx[argmax[n, pos]] += dout[n, pos]
            else:
                for c in range(C):
                    for oy in range(Ho):
                        for ox in range(Wo):
                            g = dout[n, (c * Ho + oy) * Wo + ox] * inv
                            for i in range(PH):
                                for j in range(PW):
                                    dx[c * H * W + (oy * PH + i) * W + ox * PW + j] = g
