"""A dense layer restricted to per-sample active output sets (SLIDE's sparse forward/backward).

Layout. The layer's weights are stored neuron-major, ``Wt`` of shape ``(n_out, n_in)``
C-contiguous, so that the weight vector of one output neuron is one contiguous row (a dot product
and a gradient row are each one streaming pass). The estimator still sees scikit-learn's
``coef`` of shape ``(n_in, n_out)``: it is the Fortran-ordered view ``Wt.T`` of the same memory.

Active sets are CSR-like: the active neurons of sample ``i`` are ``idx[indptr[i]:indptr[i+1]]``
and the flat arrays of values / deltas follow that layout.

Gradients are accumulated for the touched rows only: :func:`touched_rows` lists the distinct
neurons of a batch (in increasing id order) and gives every active entry its row slot, plus a
slot-major transpose of the entries (samples in increasing order). :func:`grad_rows_dense` /
:func:`grad_rows_csr` then fill a compact ``(n_touched, n_in)`` gradient either

* deterministically (``hogwild=False``): parallel over touched rows, each row summing its
  samples in increasing order - the same bits for every thread count; or
* HOGWILD (``hogwild=True``, SLIDE's way): parallel over samples, adding into shared rows
  without synchronisation. Concurrent additions to the same row may be lost or reordered, so
  with more than one thread the result is NOT deterministic (with one thread it equals the
  deterministic path exactly).
"""

from cython.parallel cimport parallel, prange
from libc.math cimport expf, log1pf, logf, tanhf
from libc.stdint cimport INT32_MAX, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from fastfire._core._openmp cimport omp_get_num_threads, omp_get_thread_num
from fastfire._core._vec cimport ff_vec_axpy, ff_vec_dot

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FF_PREFETCH_R(p) __builtin_prefetch((const void*) (p), 0, 3)
    #define FF_PREFETCH_W(p) __builtin_prefetch((const void*) (p), 1, 3)
    #else
    #define FF_PREFETCH_R(p) ((void) 0)
    #define FF_PREFETCH_W(p) ((void) 0)
    #endif
    """
    void FF_PREFETCH_R(const void* p) noexcept nogil
    void FF_PREFETCH_W(const void* p) noexcept nogil

#: Active entries ahead of the current one whose weight row is prefetched. The rows of one
#: sample's active set are scattered over the layer (random neuron ids), so without a hint every
#: row starts with a cache miss; fetching a few rows ahead overlaps those misses with the
#: arithmetic on the current row.
cdef enum:
    _PREFETCH_AHEAD = 4


cdef inline void _prefetch_row(const float* row, Py_ssize_t d) noexcept nogil:
    """Hint the cache lines of one row of ``d`` floats for reading (64-byte lines)."""
    cdef Py_ssize_t j
    for j in range(0, d, 16):
        FF_PREFETCH_R(row + j)


cdef inline void _prefetch_row_w(float* row, Py_ssize_t d) noexcept nogil:
    """Hint the cache lines of one row of ``d`` floats for writing."""
    cdef Py_ssize_t j
    for j in range(0, d, 16):
        FF_PREFETCH_W(row + j)

cdef enum:
    _IDENTITY = 0
    _RELU = 1
    _LOGISTIC = 2
    _TANH = 3


def _check_threads(int n_threads):
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")


cdef inline float _act(float z, int act) noexcept nogil:
    cdef float e
    if act == _RELU:
        return z if z > 0 else 0.0
    if act == _LOGISTIC:
        if z >= 0:
            return 1.0 / (1.0 + expf(-z))
        e = expf(z)
        return e / (1.0 + e)
    if act == _TANH:
        return tanhf(z)
    return z


cdef inline float _act_grad(float a, int act) noexcept nogil:
    """Derivative from the activation's output ``a``."""
    if act == _RELU:
        return 1.0 if a > 0 else 0.0
    if act == _LOGISTIC:
        return a * (1.0 - a)
    if act == _TANH:
        return 1.0 - a * a
    return 1.0


def _check_set(indptr, idx, n, n_out_values=None):
    if indptr.shape[0] != n + 1:
        raise ValueError(f"indptr has {indptr.shape[0]} entries, expected n_samples + 1 = {n + 1}.")
    if indptr[n] != idx.shape[0]:
        raise ValueError(f"indptr[-1] = {indptr[n]} but idx has {idx.shape[0]} entries.")
    if n_out_values is not None and n_out_values != idx.shape[0]:
        raise ValueError(f"values have {n_out_values} entries, the active set {idx.shape[0]}.")


def active_forward_dense(const float[:, ::1] X,        # IN (n, n_in)
                         const float[:, ::1] Wt,       # IN (n_out, n_in) neuron-major
                         const float[::1] bias,        # IN (n_out,)
                         const int64_t[::1] indptr,    # IN (n + 1,)
                         const int32_t[::1] idx,       # IN (nnz,) active neuron ids
                         float[::1] out,               # OUT (nnz,)
                         int act=0, int n_threads=1):
    """``out[e] = act(bias[r] + Wt[r] . X[i])`` for every active entry ``e = (i, r)``."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i
    cdef int64_t e
    _check_set(indptr, idx, n, out.shape[0])
    if Wt.shape[1] != d:
        raise ValueError(f"Wt has {Wt.shape[1]} inputs, X {d}.")
    if bias.shape[0] != Wt.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} entries, Wt {Wt.shape[0]} rows.")
    _check_threads(n_threads)
    if n == 0 or idx.shape[0] == 0:
        return
    with nogil:
        for i in prange(n, schedule="dynamic", chunksize=4, num_threads=n_threads):
            for e in range(indptr[i], indptr[i + 1]):
                if e + _PREFETCH_AHEAD < indptr[i + 1]:
                    _prefetch_row(&Wt[idx[e + _PREFETCH_AHEAD], 0], d)
                    FF_PREFETCH_R(&bias[idx[e + _PREFETCH_AHEAD]])
                out[e] = _act(bias[idx[e]] + ff_vec_dot(&X[i, 0], &Wt[idx[e], 0], d), act)


def active_forward_rows_dense(const float[:, ::1] X,         # IN (n, n_in)
                              const float[:, ::1] Wt,        # IN (n_out, n_in) neuron-major
                              const float[::1] bias,         # IN (n_out,)
                              const int32_t[::1] rows,       # IN (n_touched,) distinct ids
                              const int64_t[::1] t_indptr,   # IN (>= n_touched + 1,)
                              const int64_t[::1] t_entries,  # IN entries grouped by row slot
                              const int32_t[::1] t_sample,   # IN (n_entries,) sample of t_entries[q]
                              const int64_t[::1] entry_pos,  # IN (nnz,) inverse of t_entries
                              float[::1] by_slot,            # SCRATCH (len(t_entries),)
                              float[::1] out,                # OUT (nnz,)
                              int act=0, int n_threads=1):
    """:func:`active_forward_dense` computed row by row: parallel over the touched rows (the
    layout of :func:`touched_rows`), each weight row read once for all its entries.

    ``out[e] = act(bias[r] + Wt[r] . X[t_sample[q]])`` for every entry ``e = t_entries[q]`` of
    row ``r = rows[s]``, ``q`` in ``t_indptr[s]:t_indptr[s + 1]``: the same values, bit
    for bit, as the sample-major kernel. When a batch touches each row several times (20K
    labels, ~1,000 active per sample: ~6 entries per row) the sample-major pass reads every
    weight row that many times.

    The values are first written in slot order (``by_slot[q]`` for ``e = t_entries[q]``: each
    thread's rows fill one contiguous run) and then gathered into the sample-major ``out``
    (``out[e] = by_slot[entry_pos[e]]``, contiguous runs of ``e`` per thread). Written
    straight to ``out[e]``, the entries of neighbouring rows land in the same cache lines of
    ``out`` from both threads (false sharing: a row's entries belong to random samples).
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], nt = rows.shape[0], nnz = out.shape[0]
    cdef Py_ssize_t n_out = Wt.shape[0], n_entries = t_entries.shape[0], s
    cdef int64_t q, e, p
    cdef int32_t r, ra, i
    cdef int bad = 0
    cdef int* badp = &bad       # written inside the parallel block, read after it
    if Wt.shape[1] != d:
        raise ValueError(f"Wt has {Wt.shape[1]} inputs, X {d}.")
    if bias.shape[0] != n_out:
        raise ValueError(f"bias has {bias.shape[0]} entries, Wt {n_out} rows.")
    if t_indptr.shape[0] < nt + 1 or t_sample.shape[0] != n_entries or entry_pos.shape[0] != nnz \
            or by_slot.shape[0] != n_entries:
        raise ValueError("active_forward_rows_dense: t_indptr / t_sample / entry_pos / "
                         "by_slot do not match.")
    _check_threads(n_threads)
    if nt == 0 and nnz == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        for s in prange(nt, schedule="dynamic", chunksize=16):
            if s + _PREFETCH_AHEAD < nt:
                ra = rows[s + _PREFETCH_AHEAD]
                if 0 <= ra < n_out:
                    _prefetch_row(&Wt[ra, 0], d)
                    FF_PREFETCH_R(&bias[ra])
            r = rows[s]
            if r < 0 or r >= n_out or t_indptr[s] < 0 or t_indptr[s] > t_indptr[s + 1] \
                    or t_indptr[s + 1] > n_entries:
                badp[0] = 1
                continue
            for q in range(t_indptr[s], t_indptr[s + 1]):
                e = t_entries[q]
                if e < 0 or e >= nnz:
                    badp[0] = 1
                    break
                i = t_sample[q]
                if i < 0 or i >= n:
                    badp[0] = 1
                    break
                by_slot[q] = _act(bias[r] + ff_vec_dot(&X[i, 0], &Wt[r, 0], d), act)
        for e in prange(nnz, schedule="static"):
            p = entry_pos[e]
            if p < 0 or p >= n_entries:
                badp[0] = 1
                continue
            out[e] = by_slot[p]
    if bad:
        raise ValueError("active_forward_rows_dense: rows or entries out of range were skipped.")


def active_forward_csr(const int64_t[::1] x_indptr, const int32_t[::1] x_idx,
                       const float[::1] x_val,         # IN CSR input (n, n_in)
                       const float[:, ::1] Wt,         # IN (n_out, n_in)
                       const float[::1] bias,          # IN (n_out,)
                       const int64_t[::1] indptr,      # IN (n + 1,)
                       const int32_t[::1] idx,         # IN (nnz,)
                       float[::1] out,                 # OUT (nnz,)
                       int act=0, int n_threads=1):
    """As :func:`active_forward_dense` for a CSR input: sums over the input's non-zeros."""
    cdef Py_ssize_t n = x_indptr.shape[0] - 1, i
    cdef int64_t e, p
    cdef double s
    cdef const float* w
    _check_set(indptr, idx, n, out.shape[0])
    if bias.shape[0] != Wt.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} entries, Wt {Wt.shape[0]} rows.")
    _check_threads(n_threads)
    if n <= 0 or idx.shape[0] == 0:
        return
    with nogil:
        for i in prange(n, schedule="dynamic", chunksize=4, num_threads=n_threads):
            for e in range(indptr[i], indptr[i + 1]):
                w = &Wt[idx[e], 0]
                s = 0.0
                for p in range(x_indptr[i], x_indptr[i + 1]):
                    s = s + x_val[p] * w[x_idx[p]]
                out[e] = _act(bias[idx[e]] + <float> s, act)


def sparse_softmax_xent(const int64_t[::1] indptr,      # IN (n + 1,)
                        const int32_t[::1] n_labels,    # IN (n,) labels first in each row
                        float[::1] values,              # IN logits / OUT delta (nnz,)
                        int n_threads=1):
    """Softmax over each sample's active set with the target spread over its true labels.

    The first ``n_labels[i]`` entries of sample ``i`` are its true labels, each with target
    ``1 / n_labels[i]`` (SLIDE). Returns the summed loss ``-sum_l (1/|Y|) log p_l`` and writes
    ``p - target`` over ``values``. A sample without labels contributes 0 (delta 0).
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    cdef int64_t e, a, b
    cdef float mx, inv
    cdef double s, lsum, loss = 0.0
    if n_labels.shape[0] != n or indptr[n] != values.shape[0]:
        raise ValueError("sparse_softmax_xent: indptr, n_labels and values disagree.")
    _check_threads(n_threads)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            a = indptr[i]
            b = indptr[i + 1]
            if n_labels[i] == 0 or b == a:
                for e in range(a, b):
                    values[e] = 0.0
                continue
            mx = values[a]
            for e in range(a, b):
                if values[e] > mx:
                    mx = values[e]
            s = 0.0
            for e in range(a, b):
                values[e] = expf(values[e] - mx)
                s = s + values[e]
            inv = 1.0 / n_labels[i]
            lsum = 0.0
            for e in range(a, b):
                values[e] = <float> (values[e] / s)
                if e < a + n_labels[i]:
                    lsum = lsum + logf(values[e] if values[e] > 1e-30 else 1e-30)
                    values[e] = values[e] - inv
            loss += -lsum * inv
    return loss


def sparse_logistic_xent(const int64_t[::1] indptr,     # IN (n + 1,)
                         const int32_t[::1] n_labels,   # IN (n,)
                         float[::1] values,             # IN logits / OUT delta (nnz,)
                         int n_threads=1):
    """Independent logistic outputs over the active entries; target 1 on the first
    ``n_labels[i]`` entries of a sample, 0 elsewhere. Returns the summed binary cross-entropy
    and writes ``sigmoid(z) - y`` over ``values``."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    cdef int64_t e
    cdef float z, y, p
    cdef double loss = 0.0
    if n_labels.shape[0] != n or indptr[n] != values.shape[0]:
        raise ValueError("sparse_logistic_xent: indptr, n_labels and values disagree.")
    _check_threads(n_threads)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            for e in range(indptr[i], indptr[i + 1]):
                z = values[e]
                y = 1.0 if e < indptr[i] + n_labels[i] else 0.0
                # log(1 + exp(z)) - y z, stably
                loss += (z if z > 0 else 0.0) + log1pf(expf(-z if z > 0 else z)) - y * z
                values[e] = _act(z, _LOGISTIC) - y
    return loss


def active_act_backward(const float[:, ::1] grad,       # IN (n, n_out) dLoss/d(outputs), dense
                        const int64_t[::1] indptr,      # IN
                        const int32_t[::1] idx,         # IN
                        const float[::1] values,        # IN (nnz,) the layer's activations
                        float[::1] delta,               # OUT (nnz,) dLoss/d(pre-activation)
                        int act=0, int n_threads=1):
    """Gather a dense output gradient at the active entries and apply the activation's derivative
    (a hidden LSH layer; inactive neurons output 0 and get no gradient)."""
    cdef Py_ssize_t n = grad.shape[0], i
    cdef int64_t e
    _check_set(indptr, idx, n, values.shape[0])
    if delta.shape[0] != values.shape[0]:
        raise ValueError("delta and values differ in length.")
    _check_threads(n_threads)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            for e in range(indptr[i], indptr[i + 1]):
                delta[e] = grad[i, idx[e]] * _act_grad(values[e], act)


def active_input_grad(const float[::1] delta,           # IN (nnz,)
                      const int64_t[::1] indptr,        # IN (n + 1,)
                      const int32_t[::1] idx,           # IN (nnz,)
                      const float[:, ::1] Wt,           # IN (n_out, n_in)
                      float[:, ::1] input_grad,         # OUT (n, n_in)
                      int n_threads=1):
    """``input_grad[i] = sum_{e in row i} delta[e] * Wt[idx[e]]`` (no race: one sample per task)."""
    cdef Py_ssize_t n = input_grad.shape[0], d = input_grad.shape[1], i
    cdef int64_t e
    _check_set(indptr, idx, n, delta.shape[0])
    if Wt.shape[1] != d:
        raise ValueError(f"Wt has {Wt.shape[1]} inputs, input_grad {d}.")
    _check_threads(n_threads)
    if n == 0 or d == 0:
        return
    with nogil:
        for i in prange(n, schedule="dynamic", chunksize=4, num_threads=n_threads):
            memset(&input_grad[i, 0], 0, d * sizeof(float))
            for e in range(indptr[i], indptr[i + 1]):
                if e + _PREFETCH_AHEAD < indptr[i + 1]:
                    _prefetch_row(&Wt[idx[e + _PREFETCH_AHEAD], 0], d)
                if delta[e] != 0:
                    ff_vec_axpy(d, delta[e], &Wt[idx[e], 0], &input_grad[i, 0])


def active_input_grad_rows(const float[::1] delta,            # IN (nnz,)
                           const float[:, ::1] Wt,            # IN (n_out, n_in)
                           const int32_t[::1] rows,           # IN (n_touched,) distinct ids
                           const int64_t[::1] t_indptr,       # IN (>= n_touched + 1,)
                           const int64_t[::1] t_entries,      # IN entries grouped by row slot
                           const int32_t[::1] t_sample,       # IN (n_entries,)
                           float[:, ::1] input_grad,          # OUT (n, n_in)
                           float[:, :, ::1] partial,          # SCRATCH (>= n_threads - 1, n, n_in)
                           int n_threads=1):
    """:func:`active_input_grad` computed row by row: each weight row is read once and added,
    scaled by each of its entries' delta, into its sample's row of a per-thread accumulator
    (thread 0's is ``input_grad``, the others' are ``partial``); the accumulators are then
    summed in thread order.

    The rows are split over the threads in a fixed round-robin of chunks (static schedule), so
    the result is the same for a given thread count; the summation order (by row, then by
    thread) differs from the sample-major kernel's, so the bits differ across thread counts.
    """
    cdef Py_ssize_t n = input_grad.shape[0], d = input_grad.shape[1], nt = rows.shape[0]
    cdef Py_ssize_t nnz = delta.shape[0], n_out = Wt.shape[0], n_entries = t_entries.shape[0]
    cdef Py_ssize_t s, i, k
    cdef int64_t q, e
    cdef int32_t r, ra, smp
    cdef int tid, team = 1, bad = 0
    cdef int* teamp = &team     # written inside the parallel block, read after it
    cdef int* badp = &bad
    cdef float* acc
    if Wt.shape[1] != d:
        raise ValueError(f"Wt has {Wt.shape[1]} inputs, input_grad {d}.")
    if t_indptr.shape[0] < nt + 1 or t_sample.shape[0] != n_entries:
        raise ValueError("active_input_grad_rows: t_indptr / t_sample do not match.")
    _check_threads(n_threads)
    if n_threads > 1 and (partial.shape[0] < n_threads - 1 or partial.shape[1] != n
                          or partial.shape[2] != d):
        raise ValueError(f"active_input_grad_rows: partial must be (>= {n_threads - 1}, {n}, {d}).")
    if n == 0 or d == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        tid = omp_get_thread_num()
        if tid == 0:
            teamp[0] = omp_get_num_threads()
        acc = &input_grad[0, 0] if tid == 0 else &partial[tid - 1, 0, 0]
        memset(acc, 0, n * d * sizeof(float))
        for s in prange(nt, schedule="static", chunksize=64):
            if s + _PREFETCH_AHEAD < nt:
                ra = rows[s + _PREFETCH_AHEAD]
                if 0 <= ra < n_out:
                    _prefetch_row(&Wt[ra, 0], d)
            r = rows[s]
            if r < 0 or r >= n_out or t_indptr[s] < 0 or t_indptr[s] > t_indptr[s + 1] \
                    or t_indptr[s + 1] > n_entries:
                badp[0] = 1
                continue
            for q in range(t_indptr[s], t_indptr[s + 1]):
                e = t_entries[q]
                if e < 0 or e >= nnz:
                    badp[0] = 1
                    break
                smp = t_sample[q]
                if smp < 0 or smp >= n:
                    badp[0] = 1
                    break
                if delta[e] != 0:
                    ff_vec_axpy(d, delta[e], &Wt[r, 0], acc + smp * d)
        # after the loop's barrier every accumulator is complete: summed in the same region
        # (one parallel region less per step)
        for i in prange(n, schedule="static"):
            for k in range(teamp[0] - 1):
                ff_vec_axpy(d, 1.0, &partial[k, i, 0], &input_grad[i, 0])
    if bad:
        raise ValueError("active_input_grad_rows: rows or entries out of range were skipped.")


cdef inline Py_ssize_t _sample_of(const int64_t[::1] indptr, Py_ssize_t n,
                                  int64_t e) noexcept nogil:
    """The sample whose entries ``indptr[i]:indptr[i + 1]`` hold entry ``e`` (the first such
    sample when some are empty; ``n`` when ``e`` is past the end): a binary search."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:                                  # first i with indptr[i + 1] > e
        mid = (lo + hi) // 2
        if indptr[mid + 1] > e:
            hi = mid
        else:
            lo = mid + 1
    return lo


def touched_rows(const int64_t[::1] indptr,             # IN (n + 1,)
                 const int32_t[::1] idx,                # IN (nnz,)
                 int32_t[::1] mark,                     # SCRATCH (n_out,) all -1 in and out
                 int32_t[::1] rows,                     # OUT (>= n_touched,) distinct ids
                 int32_t[::1] slot,                     # OUT (nnz,) row slot of each entry
                 int64_t[::1] t_indptr,                 # OUT (>= n_touched + 1,)
                 int64_t[::1] t_entries,                # OUT (nnz,) entries grouped by slot
                 int32_t[::1] t_sample,                 # OUT (nnz,) sample of t_entries[q]
                 int64_t[::1] entry_pos=None,           # OUT (nnz,) optional, see below
                 int32_t[:, ::1] counts=None,           # SCRATCH (n_blocks, n_out) 0 in and out
                 int n_threads=1):
    """Distinct neurons of a batch in increasing id order and the slot-major transpose of the
    active entries (samples in increasing order within a slot): a counting sort by neuron id,
    O(nnz + n_blocks * n_out). Returns ``n_touched``.

    Row ``rows[s]`` has the entries ``e = t_entries[q]`` for ``q`` in
    ``t_indptr[s]:t_indptr[s + 1]``, of the samples ``t_sample[q]`` (in that order, so the
    kernels that walk a row's entries find their input rows without a lookup by ``e``);
    ``slot[e]`` is the slot of entry ``e``. ``entry_pos``, when given, receives the inverse of
    ``t_entries``: ``t_entries[entry_pos[e]] == e``.

    The increasing order lets the kernels that then visit the touched rows (forward by rows,
    the optimizer's row pass, the input gradient by rows) sweep the weight and state arrays
    forward instead of jumping between random rows.

    The sort runs in ``n_blocks = counts.shape[0]`` blocks, in parallel on up to
    ``n_threads`` threads (``counts=None``: ``n_threads`` blocks, scratch allocated here).
    Block ``b`` counts, and later places, one contiguous range of the entries with its own row
    of ``counts``; the layer's rows are scanned in ``n_blocks`` contiguous ranges. Within a
    neuron the entries of block ``b`` come before those of block ``b + 1``, so the output does
    not depend on the block or thread count. ``mark`` holds the slot of each touched row
    during the call and is set to -1 there at the end (all -1 in, all -1 out); its other
    entries are neither read nor written.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1, nnz = idx.shape[0], n_out = mark.shape[0]
    cdef Py_ssize_t max_rows = rows.shape[0], n_blocks, b, u, i, r
    cdef int64_t e, c, tot, nt, ne
    cdef int32_t x
    cdef int bad = 0
    cdef int* badp = &bad       # written inside the parallel blocks, read after them
    _check_set(indptr, idx, n)
    _check_threads(n_threads)
    for i in range(n + 1):
        if indptr[i] < (indptr[i - 1] if i else 0) or indptr[0] != 0:
            raise ValueError("touched_rows: indptr must start at 0 and not decrease.")
    if slot.shape[0] != nnz or t_entries.shape[0] != nnz or t_sample.shape[0] != nnz:
        raise ValueError("touched_rows: slot, t_entries and t_sample need one entry per "
                         "active entry.")
    if rows.shape[0] < min(nnz, n_out) or t_indptr.shape[0] < min(nnz, n_out) + 1:
        raise ValueError("touched_rows: rows / t_indptr are too short.")
    if entry_pos is not None and entry_pos.shape[0] != nnz:
        raise ValueError("touched_rows: entry_pos needs one entry per active entry.")
    if nnz > INT32_MAX:
        raise ValueError(f"touched_rows: {nnz} active entries, at most {INT32_MAX} supported.")
    if counts is not None and (counts.shape[0] < 1 or counts.shape[1] != n_out):
        raise ValueError(f"touched_rows: counts must have shape (n_blocks >= 1, {n_out}), "
                         f"not {(counts.shape[0], counts.shape[1])}.")
    n_blocks = counts.shape[0] if counts is not None else n_threads
    cdef int nth = <int> min(n_threads, n_blocks)
    cdef int64_t* pos = &entry_pos[0] if entry_pos is not None and nnz else NULL
    cdef int32_t* owned = NULL
    cdef int32_t* cnt                                    # cnt[u * n_out + r]: block u, row r
    # block b: entries [e_lo[b], e_lo[b + 1]), rows [r_lo[b], r_lo[b + 1]); then the first
    # slot and entry position of its rows in the output
    cdef int64_t* blk = <int64_t*> malloc(4 * (n_blocks + 1) * sizeof(int64_t))
    if blk == NULL:
        raise MemoryError()
    cdef int64_t* e_lo = blk
    cdef int64_t* r_lo = blk + (n_blocks + 1)
    cdef int64_t* blk_rows = blk + 2 * (n_blocks + 1)
    cdef int64_t* blk_ents = blk + 3 * (n_blocks + 1)
    try:
        if counts is not None:
            cnt = &counts[0, 0] if n_out else NULL
        else:
            owned = <int32_t*> calloc(max(n_blocks * n_out, 1), sizeof(int32_t))
            if owned == NULL:
                raise MemoryError()
            cnt = owned
        for b in range(n_blocks + 1):
            e_lo[b] = nnz * b // n_blocks
            r_lo[b] = n_out * b // n_blocks
            blk_rows[b] = 0
            blk_ents[b] = 0
        with nogil:
            for b in prange(n_blocks, schedule="static", chunksize=1, num_threads=nth):
                for e in range(e_lo[b], e_lo[b + 1]):
                    r = idx[e]
                    if r < 0 or r >= n_out:
                        badp[0] = 1
                        continue
                    cnt[b * n_out + r] += 1
        if bad:
            memset(cnt, 0, n_blocks * n_out * sizeof(int32_t))
            for e in range(nnz):
                if idx[e] < 0 or idx[e] >= n_out:
                    raise ValueError(f"touched_rows: neuron id {idx[e]} outside [0, {n_out}).")
        with nogil:
            for b in prange(n_blocks, schedule="static", chunksize=1, num_threads=nth):
                nt = 0
                ne = 0
                for r in range(r_lo[b], r_lo[b + 1]):
                    tot = 0
                    for u in range(n_blocks):
                        if cnt[u * n_out + r] < 0:
                            badp[0] = 1
                        tot = tot + cnt[u * n_out + r]
                    if tot > 0:
                        nt = nt + 1
                        ne = ne + tot
                blk_rows[b + 1] = nt
                blk_ents[b + 1] = ne
            for b in range(n_blocks):                    # where each block's output starts
                blk_rows[b + 1] += blk_rows[b]
                blk_ents[b + 1] += blk_ents[b]
        # a scratch that was not all 0 shows as a negative count or a wrong total
        if bad or blk_ents[n_blocks] != nnz or blk_rows[n_blocks] > max_rows:
            memset(cnt, 0, n_blocks * n_out * sizeof(int32_t))
            raise ValueError("touched_rows: counts must be all 0 on entry.")
        nt = blk_rows[n_blocks]
        with nogil, parallel(num_threads=nth):
            for b in prange(n_blocks, schedule="static", chunksize=1):
                i = blk_rows[b]                          # next slot
                c = blk_ents[b]                          # next entry position
                for r in range(r_lo[b], r_lo[b + 1]):
                    tot = 0
                    for u in range(n_blocks):
                        tot = tot + cnt[u * n_out + r]
                    if tot == 0:
                        continue
                    rows[i] = <int32_t> r
                    mark[r] = <int32_t> i
                    t_indptr[i] = c
                    for u in range(n_blocks):            # counts become fill cursors
                        x = cnt[u * n_out + r]
                        cnt[u * n_out + r] = <int32_t> c
                        c = c + x
                    i = i + 1
            for b in prange(n_blocks, schedule="static", chunksize=1):
                i = _sample_of(indptr, n, e_lo[b])
                for e in range(e_lo[b], e_lo[b + 1]):
                    while e >= indptr[i + 1]:
                        i = i + 1
                    r = idx[e]
                    slot[e] = mark[r]
                    c = cnt[b * n_out + r]
                    t_entries[c] = e
                    t_sample[c] = <int32_t> i
                    if pos != NULL:
                        pos[e] = c
                    cnt[b * n_out + r] = <int32_t> (c + 1)
            for i in prange(nt, schedule="static"):      # scratch back to its state on entry
                r = rows[i]
                mark[r] = -1
                for u in range(n_blocks):
                    cnt[u * n_out + r] = 0
        t_indptr[nt] = nnz
        return nt
    finally:
        free(blk)
        free(owned)


def grad_rows_dense(const float[:, ::1] X,               # IN (n, n_in)
                    const float[::1] delta,              # IN (nnz,)
                    const int64_t[::1] indptr,           # IN (n + 1,)
                    const int32_t[::1] slot,             # IN (nnz,)
                    const int64_t[::1] t_indptr,         # IN (n_touched + 1,)
                    const int64_t[::1] t_entries,        # IN (nnz,)
                    const int32_t[::1] t_sample,         # IN (nnz,) sample of t_entries[q]
                    float[:, ::1] grad,                  # OUT (n_touched, n_in)
                    float[::1] bias_grad,                # OUT (n_touched,)
                    float scale, bint hogwild=False, int n_threads=1):
    """Compact gradient of the touched rows: ``grad[s] = scale * sum delta[e] * X[sample(e)]``
    over the entries of slot ``s``; ``bias_grad[s] = scale * sum delta[e]``."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], nt = grad.shape[0], s, i
    cdef int64_t e, q
    cdef float b
    _check_set(indptr, slot, n, delta.shape[0])
    if t_indptr.shape[0] < nt + 1 or bias_grad.shape[0] != nt or grad.shape[1] != d:
        raise ValueError("grad_rows_dense: grad / bias_grad / t_indptr do not match.")
    _check_threads(n_threads)
    with nogil:
        if not hogwild:
            for s in prange(nt, schedule="dynamic", chunksize=16, num_threads=n_threads):
                if d:
                    memset(&grad[s, 0], 0, d * sizeof(float))
                b = 0.0
                for q in range(t_indptr[s], t_indptr[s + 1]):
                    e = t_entries[q]
                    b = b + scale * delta[e]
                    if d and delta[e] != 0:
                        ff_vec_axpy(d, scale * delta[e], &X[t_sample[q], 0], &grad[s, 0])
                bias_grad[s] = b
        else:
            for s in prange(nt, schedule="static", num_threads=n_threads):
                if d:
                    memset(&grad[s, 0], 0, d * sizeof(float))
                bias_grad[s] = 0.0
            for i in prange(n, schedule="dynamic", chunksize=4, num_threads=n_threads):
                for e in range(indptr[i], indptr[i + 1]):
                    s = slot[e]
                    bias_grad[s] = bias_grad[s] + scale * delta[e]   # racy by design
                    if d and delta[e] != 0:
                        ff_vec_axpy(d, scale * delta[e], &X[i, 0], &grad[s, 0])


def grad_rows_csr(const int64_t[::1] x_indptr, const int32_t[::1] x_idx,
                  const float[::1] x_val,                # IN CSR input (n, n_in)
                  const float[::1] delta,                # IN (nnz,)
                  const int64_t[::1] indptr,             # IN (n + 1,)
                  const int32_t[::1] slot,               # IN (nnz,)
                  const int64_t[::1] t_indptr,           # IN
                  const int64_t[::1] t_entries,          # IN
                  const int32_t[::1] t_sample,           # IN
                  float[:, ::1] grad,                    # OUT (n_touched, n_in)
                  float[::1] bias_grad,                  # OUT (n_touched,)
                  float scale, bint hogwild=False, int n_threads=1):
    """As :func:`grad_rows_dense` for a CSR input (scatter over the input's non-zeros)."""
    cdef Py_ssize_t n = x_indptr.shape[0] - 1, d = grad.shape[1], nt = grad.shape[0], s, i
    cdef int64_t e, q, p
    cdef float b, g
    cdef float* row
    _check_set(indptr, slot, n, delta.shape[0])
    if t_indptr.shape[0] < nt + 1 or bias_grad.shape[0] != nt:
        raise ValueError("grad_rows_csr: grad / bias_grad / t_indptr do not match.")
    _check_threads(n_threads)
    with nogil:
        if not hogwild:
            for s in prange(nt, schedule="dynamic", chunksize=16, num_threads=n_threads):
                row = &grad[s, 0] if d else NULL
                if d:
                    memset(row, 0, d * sizeof(float))
                b = 0.0
                for q in range(t_indptr[s], t_indptr[s + 1]):
                    e = t_entries[q]
                    g = scale * delta[e]
                    b = b + g
                    i = t_sample[q]
                    for p in range(x_indptr[i], x_indptr[i + 1]):
                        row[x_idx[p]] = row[x_idx[p]] + g * x_val[p]
                bias_grad[s] = b
        else:
            for s in prange(nt, schedule="static", num_threads=n_threads):
                if d:
                    memset(&grad[s, 0], 0, d * sizeof(float))
                bias_grad[s] = 0.0
            for i in prange(n, schedule="dynamic", chunksize=4, num_threads=n_threads):
                for e in range(indptr[i], indptr[i + 1]):
                    s = slot[e]
                    g = scale * delta[e]
                    bias_grad[s] = bias_grad[s] + g
                    row = &grad[s, 0] if d else NULL
                    for p in range(x_indptr[i], x_indptr[i + 1]):
                        row[x_idx[p]] = row[x_idx[p]] + g * x_val[p]


def dense_scores_topk(const float[:, ::1] scores,        # IN (n, m)
                      int k,
                      int32_t[:, ::1] top_idx,           # OUT (n, k)
                      float[:, ::1] top_val,             # OUT (n, k)
                      int n_threads=1):
    """Top ``k`` of every row, best first, ties to the lower index (insertion into a sorted
    list of k: O(m k) worst case, O(m) typical for small k)."""
    cdef Py_ssize_t n = scores.shape[0], m = scores.shape[1], i, j
    cdef int c, pos
    cdef float v
    if k < 1 or k > m:
        raise ValueError(f"k must be in [1, {m}], got {k}.")
    if top_idx.shape[0] != n or top_idx.shape[1] != k or top_val.shape[0] != n or top_val.shape[1] != k:
        raise ValueError("top_idx / top_val must be (n, k).")
    _check_threads(n_threads)
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            c = 0
            for j in range(m):
                v = scores[i, j]
                if c == k and not (v > top_val[i, k - 1]):
                    continue
                pos = c if c < k else k - 1
                while pos > 0 and v > top_val[i, pos - 1]:
                    if pos < k:
                        top_val[i, pos] = top_val[i, pos - 1]
                        top_idx[i, pos] = top_idx[i, pos - 1]
                    pos = pos - 1
                top_val[i, pos] = v
                top_idx[i, pos] = <int32_t> j
                if c < k:
                    c = c + 1


def csr_rows_grad(const float[::1] x_val,                # IN (nnz,) values of the CSR input
                  const float[:, ::1] delta,             # IN (n, p) dLoss/d(pre-activation)
                  const int64_t[::1] t_indptr,           # IN (n_touched + 1,)
                  const int64_t[::1] t_entries,          # IN (nnz,) entries grouped by feature
                  const int32_t[::1] t_sample,           # IN (nnz,) sample of t_entries[q]
                  float[:, ::1] grad,                    # OUT (n_touched, p)
                  float scale, int n_threads=1):
    """Weight gradient of a first layer ``out = X @ W`` with a CSR input, on the rows of the
    features present in the batch only.

    With :func:`touched_rows` run on the input's CSR pattern (features play the part of the
    neurons: ``rows`` are the batch's distinct features, ``t_entries`` the input entries grouped
    by feature, samples in increasing order), row ``s`` of ``grad`` is
    ``scale * sum_q x_val[e] * delta[t_sample[q]]`` over the entries ``e = t_entries[q]`` of feature ``s``:
    row ``rows[s]`` of ``X.T @ delta * scale``. Parallel over features, each row summed in
    increasing sample order, so the result does not depend on the thread count.
    """
    cdef Py_ssize_t nt = grad.shape[0], p = grad.shape[1], n = delta.shape[0], s
    cdef int64_t q, e
    cdef float* row
    if delta.shape[1] != p:
        raise ValueError(f"csr_rows_grad: grad has {p} columns, delta {delta.shape[1]}.")
    if t_indptr.shape[0] < nt + 1 or t_sample.shape[0] != x_val.shape[0] \
            or t_entries.shape[0] != x_val.shape[0]:
        raise ValueError("csr_rows_grad: t_indptr / t_entries / t_sample do not match.")
    if nt and t_indptr[nt] > x_val.shape[0]:
        raise ValueError("csr_rows_grad: t_indptr points past the input's entries.")
    for q in range(x_val.shape[0]):
        if t_sample[q] < 0 or t_sample[q] >= n:
            raise ValueError(f"csr_rows_grad: t_sample has a sample {t_sample[q]} "
                             f"outside [0, {n}).")
    _check_threads(n_threads)
    if nt == 0 or p == 0:
        return
    with nogil:
        for s in prange(nt, schedule="dynamic", chunksize=16, num_threads=n_threads):
            row = &grad[s, 0]
            memset(row, 0, p * sizeof(float))
            for q in range(t_indptr[s], t_indptr[s + 1]):
                e = t_entries[q]
                if x_val[e] != 0:
                    ff_vec_axpy(p, scale * x_val[e], &delta[t_sample[q], 0], row)
