"""Locality-sensitive hashing for active-neuron selection (SLIDE): hash codes, tables, queries.

Hash families
-------------
A family of ``K * L`` hash functions is described by two CSR structures built in Python
(``fastfire.nn.lsh``), both over the same entries:

* function-major: ``fn_indptr`` (K*L + 1), ``fn_idx`` (feature ids), ``fn_val``;
* feature-major (the transpose): ``ft_indptr`` (n_features + 1), ``ft_fn`` (function ids), ``ft_val``.

``family`` selects what a function computes from an input vector ``x``:

* ``SIMHASH`` (signed random projections, sparse projections allowed): ``fn_val`` are the signs;
  the bit is ``1`` when ``sum_e fn_val[e] * x[fn_idx[e]] > 0`` (a sum of exactly 0 gives 0).
* ``WTA`` (winner take all): the entries of a function are its bin of coordinates and ``fn_val``
  their positions ``0 .. bin_size-1`` (stored in position order); the code is the position of the
  largest value, the smallest position on ties. A dense input considers every coordinate; a
  sparse input only its non-zeros, and a bin without a non-zero gets the code ``bin_size``.
* ``DWTA`` (densified WTA, Chen & Shrivastava; SLIDE's default): as WTA, and an empty bin
  borrows the code of the function ``mix(seed, h, a) % (K*L)`` for the first attempt
  ``a = 1, 2, ...`` (at most ``DENSIFY_ATTEMPTS``) whose bin is not empty (original codes only,
  so the result does not depend on the order of evaluation).

The key of table ``t`` concatenates the codes of functions ``t*K .. t*K+K-1`` (bits for SimHash,
base ``bin_size + 1`` digits for WTA/DWTA, first function most significant). When the key space is
larger than ``2**range_pow`` the key is folded: ``bucket = mix64(key ^ (t * GOLDEN) ^ seed) >> (64 -
range_pow)``; otherwise ``bucket = key``.

Tables
------
Table ``t`` is one CSR row block: neuron ids ``ids[t, offsets[t, b]:offsets[t, b + 1]]`` fall in
bucket ``b``. Memory is ``L * (n_buckets + 1 + n_neurons)`` int32: no ``n_buckets x capacity``
array. A bucket keeps at most ``capacity`` ids; neurons are inserted in id order and on overflow
``FIFO`` keeps the last ``capacity`` inserted (SLIDE's ring buffer), ``RESERVOIR`` a uniform sample
(reservoir sampling with a counter-based RNG: the same tables for every thread count).
Building reads the bucket ids table-major (``(L, n)``) and runs in parallel over tables; it may
take a subset of the neurons (``neuron_ids``). Hashing and queries run in parallel over samples.
"""

from cython.parallel cimport parallel, prange
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastfire._core._blas cimport sgemm_rm
from fastfire._core._openmp cimport omp_get_thread_num
from fastfire._core._types cimport index_t, offset_t

import numpy as np

SIMHASH = 0
WTA = 1
DWTA = 2
FIFO = 0
RESERVOIR = 1
UNION = 0
TOPK = 1
THRESHOLD = 2
DENSIFY_ATTEMPTS = 100

cdef enum:
    _SIMHASH = 0
    _WTA = 1
    _DWTA = 2
    _FIFO = 0
    _RESERVOIR = 1
    _UNION = 0
    _TOPK = 1
    _THRESHOLD = 2
    _DENSIFY_ATTEMPTS = 100

cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    """splitmix64's finaliser: a stateless 64-bit hash."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline uint64_t rand3_inner(uint64_t b, uint64_t c) noexcept nogil:
    """The part of :func:`rand3` that depends on ``b`` and ``c`` only (hoisted by callers that
    draw for many ``a``)."""
    return mix64(b * 0xD1B54A32D192ED03ULL + mix64(c + 1))


cdef inline uint64_t rand3_outer(uint64_t seed, uint64_t a, uint64_t inner) noexcept nogil:
    """:func:`rand3` from ``rand3_inner(b, c)``."""
    return mix64(seed ^ mix64(a * _GOLDEN + inner))


cdef inline uint64_t rand3(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) noexcept nogil:
    """Counter-based random 64 bits from a seed and three counters."""
    return rand3_outer(seed, a, rand3_inner(b, c))


cdef inline uint64_t reservoir_slot(uint64_t table_key, uint64_t inner, uint64_t n_seen) noexcept nogil:
    """The reservoir draw of a neuron, uniform in ``[0, n_seen)`` (``n_seen < 2**32``; a
    multiply-shift, not a division): ``table_key = mix64(seed ^ t * GOLDEN)`` per table,
    ``inner = rand3_inner(id, 11)`` per neuron."""
    return ((mix64(table_key ^ inner) >> 32) * n_seen) >> 32


def reservoir_slot_py(uint64_t seed, uint64_t t, uint64_t neuron, uint64_t n_seen):
    """Python access to the reservoir draw of ``neuron`` in table ``t`` (tests)."""
    return reservoir_slot(mix64(seed ^ (t * _GOLDEN)), rand3_inner(neuron, 11), n_seen)


def mix64_py(uint64_t x):
    """Python access to :func:`mix64` (tests)."""
    return mix64(x)


def rand3_py(uint64_t seed, uint64_t a, uint64_t b, uint64_t c):
    """Python access to the counter-based RNG (tests)."""
    return rand3(seed, a, b, c)


cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    /* Bit h of the result: x[h] > 0 (false for NaN), for h < width <= 64. */
    static inline uint64_t ff_sign_mask(const float *x, int width) {
        const __m128 zero = _mm_setzero_ps();
        uint64_t mask = 0;
        int h = 0;
        for (; h + 4 <= width; h += 4)
            mask |= (uint64_t) _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(x + h), zero)) << h;
        for (; h < width; h++)
            mask |= (uint64_t) (x[h] > 0) << h;
        return mask;
    }
    __attribute__((target("bmi2")))
    static void ff_extract_keys_bmi2(uint64_t mask, const uint64_t *selectors, int n, uint64_t *keys) {
        for (int j = 0; j < n; j++)
            keys[j] = _pext_u64(mask, selectors[j]);
    }
    /* PEXT is one instruction on Intel and on AMD from Zen 3; Zen 1/2 microcode it (slow). */
    static int ff_use_pext(void) {
        static int have = -1;
        if (have < 0)
            have = __builtin_cpu_supports("bmi2") && !__builtin_cpu_is("znver1")
                   && !__builtin_cpu_is("znver2");
        return have;
    }
    #else
    static inline uint64_t ff_sign_mask(const float *x, int width) {
        uint64_t mask = 0;
        for (int h = 0; h < width; h++)
            mask |= (uint64_t) (x[h] > 0) << h;
        return mask;
    }
    static void ff_extract_keys_bmi2(uint64_t mask, const uint64_t *selectors, int n, uint64_t *keys) {}
    static int ff_use_pext(void) { return 0; }
    #endif
    static int ff_pext_allowed = 1;     /* tests switch the portable loop on */
    /* The bits of mask at the set bits of selector, packed from bit 0 up (PEXT). */
    static void ff_extract_keys(uint64_t mask, const uint64_t *selectors, int n, uint64_t *keys) {
        if (ff_pext_allowed && ff_use_pext()) {
            ff_extract_keys_bmi2(mask, selectors, n, keys);
            return;
        }
        for (int j = 0; j < n; j++) {
            uint64_t sel = selectors[j], key = 0;
            for (int p = 0; sel; p++, sel &= sel - 1)
                key |= ((mask >> __builtin_ctzll(sel)) & 1ULL) << p;
            keys[j] = key;
        }
    }
    """
    int ff_pext_allowed
    int ff_use_pext() noexcept nogil
    uint64_t ff_sign_mask(const float* x, int width) noexcept nogil
    void ff_extract_keys(uint64_t mask, const uint64_t* selectors, int n,
                         uint64_t* keys) noexcept nogil


def allow_pext(bint allowed):
    """Let :func:`simhash_table_major` use the BMI2 bit-extract instruction where the CPU has a
    fast one (the default) or not (the portable loop; tests compare the two). Returns whether
    PEXT was in use before."""
    global ff_pext_allowed
    before = bool(ff_pext_allowed and ff_use_pext())
    ff_pext_allowed = allowed
    return before


def _check_threads(int n_threads):
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------

cdef struct Family:
    int family
    int K
    int L
    int bin_size
    int range_pow      # 0: no folding
    uint64_t seed
    const int64_t* fn_indptr
    const int32_t* fn_idx
    const float* fn_val
    const int64_t* ft_indptr
    const int32_t* ft_fn
    const float* ft_val


cdef inline void _codes_to_buckets(const Family* f, int32_t* codes, int32_t* out) noexcept nogil:
    """Densify (DWTA), then turn the K*L codes into L bucket ids."""
    cdef int KL = f.K * f.L, h, a, t, k
    cdef int32_t empty = f.bin_size
    cdef int64_t j
    cdef uint64_t key, base = <uint64_t> (f.bin_size + 1)
    if f.family == _DWTA:
        # codes of empty bins are marked negative-1 - so we can read originals while filling
        for h in range(KL):
            if codes[h] == empty:
                codes[h] = -1
        for h in range(KL):
            if codes[h] != -1:
                continue
            for a in range(1, _DENSIFY_ATTEMPTS + 1):
                j = <int64_t> (rand3(f.seed, <uint64_t> h, <uint64_t> a, 7) % <uint64_t> KL)
                if codes[j] >= 0:
                    codes[h] = -2 - codes[j]   # borrowed: keep distinct from originals
                    break
        for h in range(KL):
            if codes[h] == -1:
                codes[h] = empty
            elif codes[h] <= -2:
                codes[h] = -2 - codes[h]
    for t in range(f.L):
        key = 0
        for k in range(f.K):
            if f.family == _SIMHASH:
                key = (key << 1) | <uint64_t> codes[t * f.K + k]
            else:
                key = key * base + <uint64_t> codes[t * f.K + k]
        if f.range_pow > 0:
            key = mix64(key ^ (<uint64_t> t * _GOLDEN) ^ f.seed) >> (64 - f.range_pow)
        out[t] = <int32_t> key


cdef inline void _hash_dense_row(const Family* f, const float* x, float* acc,
                                 int32_t* codes, int32_t* out) noexcept nogil:
    cdef int KL = f.K * f.L, h
    cdef int64_t e
    cdef float s, best, v
    cdef int32_t code
    for h in range(KL):
        if f.family == _SIMHASH:
            s = 0.0
            for e in range(f.fn_indptr[h], f.fn_indptr[h + 1]):
                s = s + f.fn_val[e] * x[f.fn_idx[e]]
            codes[h] = 1 if s > 0 else 0
        else:
            code = f.bin_size
            best = 0.0
            for e in range(f.fn_indptr[h], f.fn_indptr[h + 1]):
                v = x[f.fn_idx[e]]
                if code == f.bin_size or v > best:
                    best = v
                    code = <int32_t> f.fn_val[e]
            codes[h] = code
    _codes_to_buckets(f, codes, out)


cdef inline void _hash_sparse_row(const Family* f, const int32_t* idx, const float* val,
                                  int64_t nnz, float* acc, int32_t* codes,
                                  int32_t* out) noexcept nogil:
    cdef int KL = f.K * f.L, h
    cdef int64_t p, e
    cdef int32_t pos
    cdef float v
    for h in range(KL):
        acc[h] = 0.0
        codes[h] = f.bin_size
    for p in range(nnz):
        v = val[p]
        if v == 0:
            continue
        for e in range(f.ft_indptr[idx[p]], f.ft_indptr[idx[p] + 1]):
            h = f.ft_fn[e]
            if f.family == _SIMHASH:
                acc[h] = acc[h] + f.ft_val[e] * v
            else:
                pos = <int32_t> f.ft_val[e]
                if codes[h] == f.bin_size or v > acc[h] or (v == acc[h] and pos < codes[h]):
                    acc[h] = v
                    codes[h] = pos
    if f.family == _SIMHASH:
        for h in range(KL):
            codes[h] = 1 if acc[h] > 0 else 0
    _codes_to_buckets(f, codes, out)


cdef Family _make_family(int family, int K, int L, int bin_size, int range_pow, uint64_t seed,
                         const int64_t[::1] fn_indptr, const int32_t[::1] fn_idx,
                         const float[::1] fn_val, const int64_t[::1] ft_indptr,
                         const int32_t[::1] ft_fn, const float[::1] ft_val) except *:
    cdef Family f
    if family not in (SIMHASH, WTA, DWTA):
        raise ValueError(f"unknown hash family {family}.")
    if K < 1 or L < 1 or (family != SIMHASH and bin_size < 1) or not 0 <= range_pow <= 31:
        raise ValueError(f"bad family sizes K={K}, L={L}, bin_size={bin_size}, range_pow={range_pow}.")
    if fn_indptr.shape[0] != K * L + 1:
        raise ValueError(f"fn_indptr has {fn_indptr.shape[0]} entries, expected K*L+1={K * L + 1}.")
    if fn_idx.shape[0] != fn_val.shape[0] or ft_fn.shape[0] != ft_val.shape[0] \
            or ft_fn.shape[0] != fn_idx.shape[0]:
        raise ValueError("family CSR arrays have inconsistent lengths.")
    f.family = family
    f.K = K
    f.L = L
    f.bin_size = bin_size
    f.range_pow = range_pow
    f.seed = seed
    f.fn_indptr = &fn_indptr[0]
    f.fn_idx = &fn_idx[0] if fn_idx.shape[0] else NULL
    f.fn_val = &fn_val[0] if fn_val.shape[0] else NULL
    f.ft_indptr = &ft_indptr[0]
    f.ft_fn = &ft_fn[0] if ft_fn.shape[0] else NULL
    f.ft_val = &ft_val[0] if ft_val.shape[0] else NULL
    return f


def hash_dense(const float[:, ::1] X,            # IN (n, d)
               int family, int K, int L, int bin_size, int range_pow, uint64_t seed,
               const int64_t[::1] fn_indptr, const int32_t[::1] fn_idx, const float[::1] fn_val,
               const int64_t[::1] ft_indptr, const int32_t[::1] ft_fn, const float[::1] ft_val,
               int32_t[:, ::1] out,               # OUT (n, L) bucket ids
               int n_threads=1):
    """Bucket ids of every row of a dense matrix in the ``L`` tables (parallel over rows)."""
    cdef Py_ssize_t n = X.shape[0], i
    if out.shape[0] != n or out.shape[1] != L:
        raise ValueError(f"hash_dense: out must be ({n}, {L}).")
    if ft_indptr.shape[0] != X.shape[1] + 1:
        raise ValueError(f"hash_dense: the family has {ft_indptr.shape[0] - 1} features, X {X.shape[1]}.")
    _check_threads(n_threads)
    cdef Family f = _make_family(family, K, L, bin_size, range_pow, seed, fn_indptr, fn_idx,
                                 fn_val, ft_indptr, ft_fn, ft_val)
    cdef float* acc
    cdef int32_t* codes
    if n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        acc = <float*> malloc(K * L * sizeof(float))
        codes = <int32_t*> malloc(K * L * sizeof(int32_t))
        for i in prange(n, schedule="static"):
            _hash_dense_row(&f, &X[i, 0], acc, codes, &out[i, 0])
        free(acc)
        free(codes)


def hash_csr(const int64_t[::1] indptr, const int32_t[::1] indices, const float[::1] data,
             int n_features,
             int family, int K, int L, int bin_size, int range_pow, uint64_t seed,
             const int64_t[::1] fn_indptr, const int32_t[::1] fn_idx, const float[::1] fn_val,
             const int64_t[::1] ft_indptr, const int32_t[::1] ft_fn, const float[::1] ft_val,
             int32_t[:, ::1] out,                 # OUT (n, L)
             int n_threads=1):
    """Bucket ids of every row of a CSR matrix (only its non-zeros are read)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i
    if out.shape[0] != n or out.shape[1] != L:
        raise ValueError(f"hash_csr: out must be ({n}, {L}).")
    if ft_indptr.shape[0] != n_features + 1:
        raise ValueError(f"hash_csr: the family has {ft_indptr.shape[0] - 1} features, X {n_features}.")
    _check_threads(n_threads)
    cdef Family f = _make_family(family, K, L, bin_size, range_pow, seed, fn_indptr, fn_idx,
                                 fn_val, ft_indptr, ft_fn, ft_val)
    cdef float* acc
    cdef int32_t* codes
    if n <= 0:
        return
    with nogil, parallel(num_threads=n_threads):
        acc = <float*> malloc(K * L * sizeof(float))
        codes = <int32_t*> malloc(K * L * sizeof(int32_t))
        for i in prange(n, schedule="dynamic", chunksize=16):
            _hash_sparse_row(&f, &indices[indptr[i]] if indptr[i + 1] > indptr[i] else NULL,
                             &data[indptr[i]] if indptr[i + 1] > indptr[i] else NULL,
                             indptr[i + 1] - indptr[i], acc, codes, &out[i, 0])
        free(acc)
        free(codes)


def simhash_from_projections(const float[:, ::1] S,    # IN (n, K*L) projections X @ P
                             int K, int L, int range_pow, uint64_t seed,
                             int32_t[:, ::1] out,          # OUT (n, L)
                             int n_threads=1):
    """SimHash bucket ids from precomputed projections (dense inputs hashed with one GEMM):
    bit = ``S[i, h] > 0``, then the same keys and folding as :func:`hash_dense`."""
    cdef Py_ssize_t n = S.shape[0], i
    cdef int h
    if S.shape[1] != K * L or out.shape[0] != n or out.shape[1] != L:
        raise ValueError(f"simhash_from_projections: S must be (n, {K * L}) and out (n, {L}).")
    _check_threads(n_threads)
    cdef Family f
    f.family = _SIMHASH
    f.K = K
    f.L = L
    f.bin_size = 0
    f.range_pow = range_pow
    f.seed = seed
    cdef int32_t* codes
    if n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        codes = <int32_t*> malloc(K * L * sizeof(int32_t))
        for i in prange(n, schedule="static"):
            for h in range(K * L):
                codes[h] = 1 if S[i, h] > 0 else 0
            _codes_to_buckets(&f, codes, &out[i, 0])
        free(codes)


cdef struct KeyWriter:
    # how one row's projections become its keys in the listed tables (table-major output)
    int K
    int L
    int range_pow
    uint64_t seed
    Py_ssize_t n_tables
    const int32_t* tables      # table of each listed slot; NULL: slot j is table j
    const int32_t* bit_cols    # (K * n_tables,) column of every key bit
    const uint64_t* selectors  # (n_tables,) column masks, or NULL (generic path)
    int32_t* out               # (L, out_stride)
    Py_ssize_t out_stride


cdef inline void _write_keys(const KeyWriter* w, const float* row, Py_ssize_t width,
                             Py_ssize_t col, uint64_t* keys,
                             unsigned char* sign) noexcept nogil:
    """Keys of one row of projections ``row`` (``width`` of them) in every listed table, written
    to ``out[t, col]``. ``keys`` holds ``n_tables`` words, ``sign`` ``width`` bytes (scratch)."""
    cdef Py_ssize_t j, h
    cdef int k, t
    cdef uint64_t key
    if w.selectors != NULL:
        # a table's key is the bits of the row's sign mask at its columns, in column order
        # (its first bit, the largest column, most significant): one PEXT per table
        ff_extract_keys(ff_sign_mask(row, <int> width), w.selectors, <int> w.n_tables, keys)
    else:
        # each sign once as a byte: a table's key bits are then byte loads through the
        # column map, not float compares
        for h in range(width):
            sign[h] = 1 if row[h] > 0 else 0
        for j in range(w.n_tables):
            key = 0
            for k in range(w.K):
                key = key | (<uint64_t> sign[w.bit_cols[j * w.K + k]] << (w.K - 1 - k))
            keys[j] = key
    for j in range(w.n_tables):
        key = keys[j]
        t = w.tables[j] if w.tables != NULL else <int> j
        if w.range_pow > 0:
            key = mix64(key ^ (<uint64_t> t * _GOLDEN) ^ w.seed) >> (64 - w.range_pow)
        w.out[t * w.out_stride + col] = <int32_t> key


cdef object _key_writer(KeyWriter* w, Py_ssize_t width, int K, int L, int range_pow,
                        uint64_t seed, int32_t[:, ::1] out, Py_ssize_t col0, Py_ssize_t n,
                        const int32_t[::1] tables, const int32_t[::1] cols, str name):
    """Check the key arguments shared by the table-major SimHash kernels and fill ``w``; returns
    the arrays ``w`` points into (keep them alive while it is used)."""
    cdef Py_ssize_t nt = L if tables is None else tables.shape[0], j
    cdef int k
    if K < 1 or K > 63 or not 0 <= range_pow <= 31:
        raise ValueError(f"{name}: bad K={K} or range_pow={range_pow}.")
    if out.shape[0] != L or col0 < 0 or out.shape[1] < col0 + n:
        raise ValueError(f"{name}: out must be ({L}, >= col0 + n) = ({L}, >= {col0 + n}).")
    if cols is None:
        if width != K * nt:
            raise ValueError(f"{name}: the projections must have K * n_tables = {K * nt} columns.")
        bit_cols = np.arange(K * nt, dtype=np.int32)
    else:
        if cols.shape[0] != K * nt:
            raise ValueError(f"{name}: cols must have K * n_tables = {K * nt} entries.")
        for j in range(K * nt):
            if cols[j] < 0 or cols[j] >= width:
                raise ValueError(f"{name}: column {cols[j]} outside [0, {width}).")
        bit_cols = np.ascontiguousarray(cols)
    listed = None
    if tables is not None:
        for j in range(nt):
            if tables[j] < 0 or tables[j] >= L:
                raise ValueError(f"{name}: table {tables[j]} outside [0, {L}).")
        listed = np.ascontiguousarray(tables)
    cdef const int32_t[::1] bc = bit_cols
    cdef uint64_t[::1] sel
    selectors = None
    if width <= 64 and _bits_descend(bc, K, nt):
        selectors = np.zeros(nt, dtype=np.uint64)
        sel = selectors
        for j in range(nt):
            for k in range(K):
                sel[j] |= (<uint64_t> 1) << bc[j * K + k]
    w.K = K
    w.L = L
    w.range_pow = range_pow
    w.seed = seed
    w.n_tables = nt
    w.bit_cols = &bc[0] if nt > 0 else NULL
    w.tables = NULL
    cdef const int32_t[::1] tv
    if listed is not None and nt > 0:
        tv = listed
        w.tables = &tv[0]
    w.selectors = NULL
    if selectors is not None and nt > 0:
        sel = selectors
        w.selectors = &sel[0]
    w.out = &out[0, 0] if out.shape[0] * out.shape[1] > 0 else NULL
    w.out_stride = out.shape[1]
    return bit_cols, listed, selectors


def simhash_table_major(const float[:, ::1] S,       # IN (n, K * len(tables)) projections
                        int K, int L, int range_pow, uint64_t seed,
                        int32_t[:, ::1] out,             # OUT (L, >= col0 + n), table-major
                        Py_ssize_t col0=0,
                        const int32_t[::1] tables=None,  # IN table of each K columns; None: 0..L-1
                        int n_threads=1,
                        const int32_t[::1] cols=None):   # IN (K * n_tables,) column of each bit
    """As :func:`simhash_from_projections`, written table-major: ``out[t, col0 + i]`` is the
    bucket of row ``i`` in table ``t`` (the layout :func:`build_tables` reads).

    ``tables``: the tables whose projections ``S`` holds, K columns each in that order (rows of
    ``out`` not listed are not written); the keys and folding are those of the listed tables.
    ``cols``: bit ``k`` of the ``j``-th table is ``S[i, cols[j * K + k]] > 0`` instead (tables
    sharing a pool of projections: ``S`` holds the pool, any width).
    """
    cdef Py_ssize_t n = S.shape[0], width = S.shape[1], i
    cdef KeyWriter w
    keep = _key_writer(&w, width, K, L, range_pow, seed, out, col0, n, tables, cols,
                       "simhash_table_major")
    _check_threads(n_threads)
    if n == 0 or w.n_tables == 0:
        return
    cdef uint64_t* keys
    cdef unsigned char* sign
    with nogil, parallel(num_threads=n_threads):
        keys = <uint64_t*> malloc(w.n_tables * sizeof(uint64_t))
        sign = <unsigned char*> malloc(width if width > 0 else 1)
        for i in prange(n, schedule="static"):
            _write_keys(&w, &S[i, 0], width, col0 + i, keys, sign)
        free(keys)
        free(sign)


#: Rows projected per block by :func:`simhash_rows_table_major`: the block's projections (256 KB
#: for a pool of 64) stay in the thread's L2 cache until their keys are written. 512 to 2,048
#: measured alike at 670K rows; 256 was slower (bench/RESULTS-lsh.md, "Rebuilds").
cdef Py_ssize_t _PROJECTION_BLOCK = 1024


def simhash_rows_table_major(const float[:, ::1] W,       # IN (n, d) rows to hash
                             const float[:, ::1] P,       # IN (d, width) projections
                             int K, int L, int range_pow, uint64_t seed,
                             int32_t[:, ::1] out,         # OUT (L, >= col0 + n), table-major
                             Py_ssize_t col0=0,
                             const int32_t[::1] tables=None,
                             int n_threads=1,
                             const int32_t[::1] cols=None):
    """:func:`simhash_table_major` of the projections ``W @ P``, computed block by block.

    Each thread projects blocks of rows with one single-threaded ``sgemm`` into a buffer of its
    own and writes their keys while the buffer is in cache: the ``(n, width)`` projections are
    never stored. The same keys as ``simhash_table_major(W @ P, ...)`` (the same ``sgemm``
    arithmetic per row). The caller caps BLAS at one thread (threadpoolctl): the blocks already
    run on ``n_threads`` OpenMP threads.
    """
    cdef Py_ssize_t n = W.shape[0], d = W.shape[1], width = P.shape[1]
    if P.shape[0] != d:
        raise ValueError(f"simhash_rows_table_major: P has {P.shape[0]} rows, W {d} columns.")
    cdef KeyWriter w
    keep = _key_writer(&w, width, K, L, range_pow, seed, out, col0, n, tables, cols,
                       "simhash_rows_table_major")
    _check_threads(n_threads)
    if n == 0 or w.n_tables == 0:
        return
    if d == 0 or width == 0:
        # no projection, every bit 0: the keys of a zero row
        simhash_table_major(np.zeros((n, width), np.float32), K, L, range_pow, seed, out, col0,
                            tables, n_threads, cols)
        return
    cdef Py_ssize_t block = _PROJECTION_BLOCK
    cdef Py_ssize_t n_blocks = (n + block - 1) // block, bi, i0, rows_in, i
    cdef uint64_t* keys
    cdef unsigned char* sign
    cdef float* S
    with nogil, parallel(num_threads=n_threads):
        keys = <uint64_t*> malloc(w.n_tables * sizeof(uint64_t))
        sign = <unsigned char*> malloc(width)
        S = <float*> malloc(block * width * sizeof(float))
        for bi in prange(n_blocks, schedule="dynamic", chunksize=1):
            i0 = bi * block
            rows_in = min(block, n - i0)
            sgemm_rm(False, False, <int> rows_in, <int> width, <int> d, 1.0, &W[i0, 0],
                     <int> d, &P[0, 0], <int> width, 0.0, S, <int> width)
            for i in range(rows_in):
                _write_keys(&w, S + i * width, width, col0 + i0 + i, keys, sign)
        free(keys)
        free(sign)
        free(S)


cdef bint _bits_descend(const int32_t[::1] bit_cols, int K, Py_ssize_t n_tables):
    """True when every table's K key columns are strictly decreasing."""
    cdef Py_ssize_t j
    cdef int k
    for j in range(n_tables):
        for k in range(1, K):
            if bit_cols[j * K + k] >= bit_cols[j * K + k - 1]:
                return False
    return True


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------

def build_tables(const int32_t[:, ::1] buckets,   # IN (L, n) bucket ids, table-major
                 int n_buckets, int capacity, int policy, uint64_t seed,
                 int32_t[:, ::1] offsets,         # OUT (L, n_buckets + 1)
                 int32_t[:, ::1] ids,             # OUT (L, >= n): first offsets[t, -1] used
                 const int32_t[:, ::1] neuron_ids=None,  # IN (L, n) ids of the columns; None: 0..n-1
                 int n_threads=1):
    """Fill the ``L`` bucketed tables from the neurons' bucket ids (parallel over tables).

    ``buckets[t, r]`` is the bucket of neuron ``r`` (or ``neuron_ids[t, r]``) in table ``t``: the
    table-major layout lets each thread read its table's ids contiguously. Column ``r`` of table
    ``t`` is inserted as neuron ``neuron_ids[t, r]`` (each table may hold its own subset of the
    neurons; increasing ids keep FIFO's "last inserted" meaning), and the reservoir draws use
    that id, so a subset gets the same random stream as the full build. Returns the number of neurons dropped because their bucket was
    full (all tables).
    """
    cdef Py_ssize_t L = buckets.shape[0], n = buckets.shape[1], t, r, b
    cdef bint mapped = neuron_ids is not None
    if offsets.shape[0] != L or offsets.shape[1] != n_buckets + 1:
        raise ValueError(f"build_tables: offsets must be ({L}, {n_buckets + 1}).")
    if ids.shape[0] != L or ids.shape[1] < n:
        raise ValueError(f"build_tables: ids must be ({L}, >= {n}).")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    if policy not in (FIFO, RESERVOIR):
        raise ValueError(f"unknown bucket policy {policy}.")
    if mapped:
        if neuron_ids.shape[0] != L or neuron_ids.shape[1] != n:
            raise ValueError(f"build_tables: neuron_ids must be ({L}, {n}).")
    _check_threads(n_threads)
    cdef int32_t bad = 0
    cdef int32_t* badp = &bad
    cdef Py_ssize_t n_ids = ids.shape[1]
    cdef int32_t* seen
    cdef int32_t* off
    cdef const int32_t* col
    cdef int32_t j, slot, total, rid
    cdef int64_t dropped = 0
    cdef uint64_t u, table_key
    # the reservoir draw has a part common to all tables: once per id
    cdef uint64_t* inner = NULL
    if policy == RESERVOIR and n_ids > 0:
        inner = <uint64_t*> malloc(n_ids * sizeof(uint64_t))
        if inner == NULL:
            raise MemoryError()
        with nogil:
            for r in prange(n_ids, schedule="static", num_threads=n_threads):
                inner[r] = rand3_inner(<uint64_t> r, 11)
    with nogil, parallel(num_threads=n_threads):
        seen = <int32_t*> malloc((n_buckets + 1) * sizeof(int32_t))
        for t in prange(L, schedule="dynamic", chunksize=1):
            off = &offsets[t, 0]
            col = &buckets[t, 0] if n > 0 else NULL
            table_key = mix64(seed ^ (<uint64_t> t * _GOLDEN))
            memset(seen, 0, (n_buckets + 1) * sizeof(int32_t))
            for r in range(n):
                b = col[r]
                if b < 0 or b >= n_buckets:
                    badp[0] = 1
                    break
                if mapped and (neuron_ids[t, r] < 0 or neuron_ids[t, r] >= n_ids):
                    badp[0] = 2
                    break
                seen[b] += 1
            if badp[0]:
                continue
            total = 0
            for b in range(n_buckets):
                off[b] = total
                j = seen[b]
                if j > capacity:
                    dropped += j - capacity
                    j = capacity
                total = total + j
                seen[b] = 0
            off[n_buckets] = total
            for r in range(n):
                b = col[r]
                rid = neuron_ids[t, r] if mapped else <int32_t> r
                j = seen[b]
                seen[b] = j + 1
                if j < capacity:
                    slot = j
                elif policy == _FIFO:
                    slot = j % capacity
                else:
                    u = reservoir_slot(table_key, inner[rid], <uint64_t> (j + 1))
                    if u >= <uint64_t> capacity:
                        continue
                    slot = <int32_t> u
                ids[t, off[b] + slot] = rid
        free(seen)
    free(inner)
    if bad == 1:
        raise ValueError(f"build_tables: a bucket id lies outside [0, {n_buckets}).")
    if bad:
        raise ValueError(f"build_tables: a neuron id lies outside [0, {n_ids}).")
    return dropped


def check_buckets(const int32_t[:, ::1] buckets, int n_buckets):
    """True when every bucket id lies in ``[0, n_buckets)``."""
    cdef Py_ssize_t i, t
    for i in range(buckets.shape[0]):
        for t in range(buckets.shape[1]):
            if buckets[i, t] < 0 or buckets[i, t] >= n_buckets:
                return False
    return True


# --------------------------------------------------------------------------------------------
# queries: active sets
# --------------------------------------------------------------------------------------------

def query(const int32_t[:, ::1] qbuckets,        # IN (n, L) bucket ids of the inputs
          const int32_t[:, ::1] offsets,         # IN (L, n_buckets + 1)
          const int32_t[:, ::1] ids,             # IN (L, n_neurons)
          int policy, int budget, int threshold,
          const int64_t[::1] label_indptr,       # IN (n + 1,) or empty: labels forced first
          const int32_t[::1] labels,             # IN
          int min_active, int n_neurons, int capacity, uint64_t seed, uint64_t step,
          int32_t[::1] counts,                   # OUT (n,) active neurons per sample
          int32_t[::1] n_forced,                 # OUT (n,) labels placed first
          int32_t[:, ::1] out,                   # OUT (n, capacity) active ids, first counts[i]
          int n_threads=1,
          int32_t[:, ::1] scratch=None,          # SCRATCH (>= n_threads, 2 * n_neurons) or None
          int32_t stamp=0):
    """Active output neurons of each sample from its buckets in the ``L`` tables.

    Per sample: the true labels first (when ``label_indptr`` is not empty), then the retrieved
    neurons chosen by ``policy`` up to ``budget`` of them (labels not counted): ``UNION`` in table
    order, ``TOPK`` the ``budget`` neurons found in most tables (ties: first found first),
    ``THRESHOLD`` those found in at least ``threshold`` tables (most tables first, at most
    ``budget``); then random neurons (counter-based RNG from ``seed``, ``step`` and the sample
    index: the same for every thread count) until ``min_active`` are active. ``out`` must have
    room for ``max labels + max(budget, min_active)`` ids per sample; ``capacity`` is the
    tables' bucket capacity (the largest bucket size).

    ``scratch``: per-thread work arrays kept by the caller between calls, every entry below
    ``stamp`` on entry (start with -1 and pass ``stamp`` = the number of samples queried
    before; the caller resets the scratch and the count before they pass ``2**31 - 1``).
    Sample ``i`` marks its neurons with ``stamp + i``, so nothing is cleared per call. Without
    it each call allocates and clears ``2 * n_neurons`` ints per thread, which at 670K
    neurons cost more in page faults than the query itself.
    """
    cdef Py_ssize_t n = qbuckets.shape[0], L = qbuckets.shape[1], i
    cdef Py_ssize_t cap = out.shape[1]
    cdef bint has_labels = label_indptr.shape[0] > 0
    if offsets.shape[0] != L or ids.shape[0] != L or ids.shape[1] != n_neurons:
        raise ValueError("query: tables do not match the query's L or n_neurons.")
    if counts.shape[0] != n or n_forced.shape[0] != n or out.shape[0] != n:
        raise ValueError("query: outputs must have one row per sample.")
    if has_labels and label_indptr.shape[0] != n + 1:
        raise ValueError(f"query: label_indptr has {label_indptr.shape[0]} entries, expected {n + 1}.")
    if policy not in (UNION, TOPK, THRESHOLD):
        raise ValueError(f"unknown selection policy {policy}.")
    if budget < 0 or min_active < 0:
        raise ValueError("budget and min_active must be >= 0.")
    if has_labels:
        for i in range(n):
            if label_indptr[i + 1] - label_indptr[i] + max(budget, min_active) > cap:
                raise ValueError("query: out has too few columns for the labels and the budget.")
    elif max(budget, min_active) > cap:
        raise ValueError("query: out has too few columns for the budget.")
    _check_threads(n_threads)
    cdef bint kept = scratch is not None
    if kept and (scratch.shape[0] < n_threads or scratch.shape[1] < 2 * n_neurons):
        raise ValueError(f"query: scratch must be (>= {n_threads}, >= {2 * n_neurons}).")
    if stamp < 0 or <int64_t> stamp + n > 2147483647:
        raise ValueError(f"query: stamp {stamp} + {n} samples leaves [0, 2**31 - 1].")
    cdef int32_t mk
    cdef int n_b = offsets.shape[1] - 1
    cdef int32_t* mark
    cdef int32_t* cnt
    cdef int32_t* cand
    cdef int32_t ns, nl, r, nc, c, b, want, lo, q
    cdef int32_t* hist
    cdef int64_t e, e0, e1, attempt
    cdef int t, level
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    if n == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        if kept:
            mark = &scratch[omp_get_thread_num(), 0]
            cnt = mark + n_neurons
        else:
            mark = <int32_t*> malloc(n_neurons * sizeof(int32_t))
            cnt = <int32_t*> malloc(n_neurons * sizeof(int32_t))
            for q in range(n_neurons):
                mark[q] = -1
        cand = <int32_t*> malloc((L * capacity + 1) * sizeof(int32_t)) if policy != _UNION else NULL
        hist = <int32_t*> malloc((L + 2) * sizeof(int32_t))
        for i in prange(n, schedule="dynamic", chunksize=4):
            mk = stamp + <int32_t> i
            ns = 0
            if has_labels:
                for e in range(label_indptr[i], label_indptr[i + 1]):
                    r = labels[e]
                    if r >= 0 and r < n_neurons and mark[r] != mk:
                        mark[r] = mk
                        cnt[r] = -1
                        out[i, ns] = r
                        ns = ns + 1
            nl = ns
            n_forced[i] = nl
            if budget > 0:
                if policy == _UNION:
                    for t in range(L):
                        if ns - nl >= budget:
                            break
                        b = qbuckets[i, t]
                        e0 = offsets[t, b]
                        e1 = offsets[t, b + 1]
                        for e in range(e0, e1):
                            r = ids[t, e]
                            if mark[r] != mk:
                                mark[r] = mk
                                cnt[r] = 1
                                out[i, ns] = r
                                ns = ns + 1
                                if ns - nl >= budget:
                                    break
                else:
                    nc = 0
                    for t in range(L):
                        b = qbuckets[i, t]
                        for e in range(offsets[t, b], offsets[t, b + 1]):
                            r = ids[t, e]
                            if mark[r] != mk:
                                mark[r] = mk
                                cnt[r] = 1
                                cand[nc] = r
                                nc = nc + 1
                            elif cnt[r] > 0:
                                cnt[r] = cnt[r] + 1
                    # counting sort by collision count, most first, first-found first: O(nc + L)
                    lo = threshold if policy == _THRESHOLD else 1
                    for level in range(L + 1):
                        hist[level] = 0
                    for c in range(nc):
                        hist[cnt[cand[c]]] += 1
                    want = 0
                    for level in range(L, lo - 1, -1):
                        b = hist[level]
                        hist[level] = want          # first slot of this level
                        want = want + b
                    for c in range(nc):
                        level = cnt[cand[c]]
                        if level >= lo and hist[level] < budget:
                            out[i, nl + hist[level]] = cand[c]
                            hist[level] += 1
                    ns = nl + (want if want < budget else budget)
            # random fill
            attempt = 0
            want = min_active if min_active < n_neurons else n_neurons
            while ns < want and attempt < 8 * <int64_t> want + 64:
                r = <int32_t> (rand3(seed, step, <uint64_t> i, <uint64_t> attempt) % <uint64_t> n_neurons)
                attempt = attempt + 1
                if mark[r] != mk:
                    mark[r] = mk
                    cnt[r] = 0
                    out[i, ns] = r
                    ns = ns + 1
            if ns < want:   # nearly every neuron wanted: sweep from a random start
                r = <int32_t> (rand3(seed, step, <uint64_t> i, 0xFFFF) % <uint64_t> n_neurons)
                for c in range(n_neurons):
                    if ns >= want:
                        break
                    if mark[(r + c) % n_neurons] != mk:
                        mark[(r + c) % n_neurons] = mk
                        out[i, ns] = (r + c) % n_neurons
                        ns = ns + 1
            counts[i] = ns
        if not kept:
            free(mark)
            free(cnt)
        if cand != NULL:
            free(cand)
        free(hist)


def compact(const int32_t[::1] counts,            # IN (n,)
            const int32_t[:, ::1] padded,         # IN (n, cap)
            int64_t[::1] indptr,                  # OUT (n + 1,)
            int32_t[::1] indices,                 # OUT (sum(counts),)
            int n_threads=1):
    """Padded per-sample id lists → CSR (``indptr`` must be preallocated, ``indices`` sized)."""
    cdef Py_ssize_t n = counts.shape[0], i, j
    cdef int64_t total = 0
    indptr[0] = 0
    for i in range(n):
        total += counts[i]
        indptr[i + 1] = total
    if indices.shape[0] != total:
        raise ValueError(f"compact: indices has {indices.shape[0]} entries, needs {total}.")
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            for j in range(counts[i]):
                indices[indptr[i] + j] = padded[i, j]
