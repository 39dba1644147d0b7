"""Output activations and losses with their gradients, fused and row-parallel.

Every loss returns the SUM over the batch as a Python float (accumulated in float64: each row's
loss in float64, then the rows added in order, so the value is the same for every thread count)
and writes the gradient w.r.t. the logits/predictions UNscaled (not divided by the batch size).
``delta`` may be the very same array as ``logits``/``pred``: each row is read before it is written.
Softmax and sigmoid use a branch-free, vectorizable float exp (relative error < 1e-6, denormal
results flushed to 0); the losses themselves (log-sum-exp, softplus) are evaluated in float64.
"""

from fastfire._core._openmp cimport MIN_ELEMENTS_PER_THREAD, threads_for
from cython.parallel cimport prange
from libc.math cimport exp, fabs, log, log1p

import numpy as np

from fastfire._core._types cimport float32_t, float64_t, index_t


# Branch-free float exp for x <= 0 and the row helpers built on it, in C so that GCC vectorizes
# them at -O3 (libm's expf is a scalar call: ~4x slower on a 10^4-class softmax). Accuracy: Cody-
# Waite range reduction and Cephes' degree-5 polynomial, a few ulp (relative error < 5e-7);
# exp(x) = 0 below -87.33 (where float32 would only hold denormals); NaN propagates.
# GCC if-converts the clamps/selects only without trapping math, so these few functions carry
# `optimize("no-trapping-math")` (we never read FP exception flags; results are unchanged).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && !defined(__clang__)
    #define FF_NO_TRAP __attribute__((optimize("no-trapping-math")))
    #else
    #define FF_NO_TRAP
    #endif
    static inline FF_NO_TRAP float ff_exp_nonpos(float x) {
        float xc = x < -87.33654f ? -87.33654f : (x > 0.0f ? 0.0f : x);
        float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to int */
        n = (n == n) ? n : 0.0f;                                    /* NaN: keep the cast defined */
        float r = xc - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        float q = 1.9875691500e-4f;
        q = q * r + 1.3981999507e-3f;
        q = q * r + 8.3334519073e-3f;
        q = q * r + 4.1665795894e-2f;
        q = q * r + 1.6666665459e-1f;
        q = q * r + 5.0000001201e-1f;
        float y = q * r * r + r + 1.0f;
        uint32_t bits = ((uint32_t) ((int32_t) n + 127)) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return x < -87.33654f ? 0.0f : y * scale;
    }
    /* 1 / (1 + exp(-z)) from exp(-|z|) <= 1: never overflows */
    static inline FF_NO_TRAP float ff_sigmoid(float z) {
        float e = ff_exp_nonpos(z < 0.0f ? z : -z);
        float s = 1.0f / (1.0f + e);
        return z < 0.0f ? e * s : s;
    }
    /* sum of p floats in double, four independent accumulators (fixed order: deterministic) */
    static inline double ff_sum_double(const float *x, Py_ssize_t p) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        Py_ssize_t j = 0;
        for (; j + 4 <= p; j += 4) {
            s0 += x[j]; s1 += x[j + 1]; s2 += x[j + 2]; s3 += x[j + 3];
        }
        for (; j < p; j++) s0 += x[j];
        return (s0 + s1) + (s2 + s3);
    }
    /* out[j] = exp(z[j] - shift) with shift = max(z); returns the sum in double. out may be z. */
    static FF_NO_TRAP double ff_exp_shifted(const float *z, float *out, Py_ssize_t p, float shift) {
        for (Py_ssize_t j = 0; j < p; j++) out[j] = ff_exp_nonpos(z[j] - shift);
        return ff_sum_double(out, p);
    }
    static FF_NO_TRAP void ff_sigmoid_row(const float *z, float *out, Py_ssize_t p) {
        for (Py_ssize_t j = 0; j < p; j++) out[j] = ff_sigmoid(z[j]);
    }
    """
    float ff_exp_nonpos(float x) noexcept nogil
    float ff_sigmoid(float z) noexcept nogil
    double ff_sum_double(const float* x, Py_ssize_t p) noexcept nogil
    double ff_exp_shifted(const float* z, float* out, Py_ssize_t p, float shift) noexcept nogil
    void ff_sigmoid_row(const float* z, float* out, Py_ssize_t p) noexcept nogil



def _check_same_shape(name, a, b, a_name, b_name):
    if a.shape[0] != b.shape[0] or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name}: {a_name} {tuple(a.shape[:2])} and {b_name} {tuple(b.shape[:2])} differ."
        )


cdef inline double _softplus(double z) noexcept nogil:
    """log(1 + exp(z)) without overflow."""
    return (z if z > 0 else 0.0) + log1p(exp(-fabs(z)))


cdef inline float _row_max(const float* z, Py_ssize_t p) noexcept nogil:
    cdef float m = z[0]
    cdef Py_ssize_t j
    for j in range(1, p):
        if z[j] > m:
            m = z[j]
    return m


cdef inline double _sum_in_order(const double* x, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += x[i]
    return s


def softmax_inplace(float[:, ::1] Z,   # IN/OUT (n, p)
                    int n_threads=1):
    """In place row softmax, ``Z[i] = exp(Z[i] - max(Z[i])) / sum(...)`` (stable).

    Parameters
    ----------
    Z : ndarray of shape (n_samples, n_classes), float32
        Logits, overwritten by probabilities.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], i, j
    n_threads = threads_for(n_threads, Z.shape[0] * Z.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef float* row
    cdef float mx, inv
    cdef double s
    if n == 0 or p == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            row = &Z[i, 0]
            mx = _row_max(row, p)
            s = ff_exp_shifted(row, row, p, mx)
            inv = <float> (1.0 / s)
            for j in range(p):
                row[j] = row[j] * inv


def logistic_inplace(float[:, ::1] Z,   # IN/OUT (n, p)
                     int n_threads=1):
    """In place ``Z = 1 / (1 + exp(-Z))``, stable for large ``|Z|``.

    Parameters
    ----------
    Z : ndarray of shape (n_samples, n_outputs), float32
        Logits, overwritten by probabilities.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).
    """
    cdef Py_ssize_t n = Z.shape[0], p = Z.shape[1], i, j
    n_threads = threads_for(n_threads, Z.shape[0] * Z.shape[1], MIN_ELEMENTS_PER_THREAD)
    cdef float* row
    if n == 0 or p == 0:
        return
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            row = &Z[i, 0]
            ff_sigmoid_row(row, row, p)


def softmax_cross_entropy(const float[:, ::1] logits,   # IN (n, p)
                          const index_t[::1] y,         # IN (n,) class ids in [0, p)
                          float[:, ::1] delta,          # OUT (n, p), may alias logits
                          int n_threads=1):
    """Multinomial cross-entropy of softmax(logits) and its gradient.

    ``loss = sum_i logsumexp(z_i) - z_i[y_i]`` (stable), ``delta = softmax(z) - onehot(y)``.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_classes), float32
        Output-layer pre-activations.
    y : ndarray of shape (n_samples,), int32
        Class ids in ``[0, n_classes)``.
    delta : ndarray of shape (n_samples, n_classes), float32
        Gradient w.r.t. the logits (not divided by ``n_samples``); may be ``logits`` itself.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).

    Returns
    -------
    loss : float
        The summed loss (0.0 for 0 rows).

    Raises
    ------
    ValueError
        On a shape mismatch or a class id outside ``[0, n_classes)`` (found while computing; the
        rows with valid ids are still written).
    """
    cdef Py_ssize_t n = logits.shape[0], p = logits.shape[1], i, j
    _check_same_shape("softmax_cross_entropy", logits, delta, "logits", "delta")
    if y.shape[0] != n:
        raise ValueError(f"softmax_cross_entropy: y has {y.shape[0]} entries, logits {n} rows.")
    n_threads = threads_for(n_threads, logits.shape[0] * logits.shape[1], MIN_ELEMENTS_PER_THREAD)
    if n == 0:
        return 0.0
    if p == 0:
        raise ValueError("softmax_cross_entropy: logits have 0 columns.")
    cdef float64_t[::1] row_loss = np.empty(n, dtype=np.float64)
    cdef const float* z
    cdef float* d
    cdef float mx, zy, inv
    cdef double s
    cdef index_t yi
    cdef double total
    cdef int bad = 0
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            z = &logits[i, 0]
            d = &delta[i, 0]
            yi = y[i]
            if yi < 0 or yi >= p:
                row_loss[i] = 0.0
                bad += 1
                continue
            zy = z[yi]
            mx = _row_max(z, p)
            s = ff_exp_shifted(z, d, p, mx)   # element-wise: d may be z
            row_loss[i] = log(s) + mx - zy
            inv = <float> (1.0 / s)
            for j in range(p):
                d[j] = d[j] * inv
            d[yi] = d[yi] - 1
        total = _sum_in_order(&row_loss[0], n)
    if bad:
        raise ValueError(f"softmax_cross_entropy: {bad} class ids outside [0, {p}).")
    return total


def logistic_cross_entropy(const float[:, ::1] logits,   # IN (n, p)
                           const float[:, ::1] Y,        # IN (n, p) targets in [0, 1]
                           float[:, ::1] delta,          # OUT (n, p), may alias logits
                           int n_threads=1):
    """Binary cross-entropy of sigmoid(logits) against Y, summed over all entries, and its gradient.

    Per entry ``softplus(z) - y z`` (= ``-y log s - (1 - y) log(1 - s)`` with ``s = sigmoid(z)``,
    finite for any z; scikit-learn instead clips ``s`` to ``[eps, 1 - eps]``, which only differs
    for ``|z| > ~16``), ``delta = sigmoid(z) - y``.

    Parameters
    ----------
    logits : ndarray of shape (n_samples, n_outputs), float32
        Output-layer pre-activations.
    Y : ndarray of shape (n_samples, n_outputs), float32
        Targets (0/1 indicators, or probabilities).
    delta : ndarray of shape (n_samples, n_outputs), float32
        Gradient w.r.t. the logits (not divided by ``n_samples``); may be ``logits`` itself.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).

    Returns
    -------
    loss : float
        The summed loss.
    """
    cdef Py_ssize_t n = logits.shape[0], p = logits.shape[1], i, j
    _check_same_shape("logistic_cross_entropy", logits, Y, "logits", "Y")
    _check_same_shape("logistic_cross_entropy", logits, delta, "logits", "delta")
    n_threads = threads_for(n_threads, logits.shape[0] * logits.shape[1], MIN_ELEMENTS_PER_THREAD)
    if n == 0 or p == 0:
        return 0.0
    cdef float64_t[::1] row_loss = np.empty(n, dtype=np.float64)
    cdef const float* z
    cdef const float* t
    cdef float* d
    cdef float zj
    cdef double s
    cdef double total
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            z = &logits[i, 0]
            t = &Y[i, 0]
            d = &delta[i, 0]
            s = 0.0
            for j in range(p):
                zj = z[j]
                s = s + _softplus(zj) - <double> t[j] * zj
                d[j] = ff_sigmoid(zj) - t[j]
            row_loss[i] = s
        total = _sum_in_order(&row_loss[0], n)
    return total


def squared_error(const float[:, ::1] pred,   # IN (n, p)
                  const float[:, ::1] Y,      # IN (n, p)
                  float[:, ::1] delta,        # OUT (n, p), may alias pred
                  int n_threads=1):
    """Summed squared error ``sum (pred - Y)**2`` and ``delta = pred - Y``.

    Note ``delta`` is the gradient of HALF the returned sum (scikit-learn's convention: its
    ``squared_loss`` is ``mean / 2`` and its output delta ``pred - y``).

    Parameters
    ----------
    pred : ndarray of shape (n_samples, n_outputs), float32
        Predictions (identity output layer).
    Y : ndarray of shape (n_samples, n_outputs), float32
        Targets.
    delta : ndarray of shape (n_samples, n_outputs), float32
        Output ``pred - Y`` (not divided by ``n_samples``); may be ``pred`` itself.
    n_threads : int, default=1
        Number of OpenMP threads (over rows).

    Returns
    -------
    loss : float
        ``sum((pred - Y)**2)`` in float64.
    """
    cdef Py_ssize_t n = pred.shape[0], p = pred.shape[1], i, j
    _check_same_shape("squared_error", pred, Y, "pred", "Y")
    _check_same_shape("squared_error", pred, delta, "pred", "delta")
    n_threads = threads_for(n_threads, pred.shape[0] * pred.shape[1], MIN_ELEMENTS_PER_THREAD)
    if n == 0 or p == 0:
        return 0.0
    cdef float64_t[::1] row_loss = np.empty(n, dtype=np.float64)
    cdef const float* a
    cdef const float* t
    cdef float* d
    cdef float r
    cdef double s
    cdef double total
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            a = &pred[i, 0]
            t = &Y[i, 0]
            d = &delta[i, 0]
            s = 0.0
            for j in range(p):
                r = a[j] - t[j]
                s = s + <double> r * r
                d[j] = r
            row_loss[i] = s
        total = _sum_in_order(&row_loss[0], n)
    return total
