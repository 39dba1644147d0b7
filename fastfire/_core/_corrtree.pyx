# Max-trees over the rows and the columns of a correlation matrix C (n x m, float32, C-contiguous).
#
# Two tree families share one implicit layout, parametrised by the fan-out B:
#   level 0 = the leaves (C itself, never copied), level l >= 1 has size[l] = ceil(size[l-1] / B)
#   nodes, up to the root (size[L] == 1). Node g of level l is the max of children
#   g*B .. min(g*B + B, size[l-1]) - 1 of level l-1.
# DTree ("data tree", one per row i of C, over neurons): nodes are one (n, n_internal) array; the
#   tree of row i is the contiguous row nodes[i, :] with level l at columns off[l] .. off[l]+size[l].
# WTree ("weight tree", one per column r of C, over data points): nodes are one (n_internal, m)
#   array; level l of every tree is the block of rows off[l] .. off[l]+size[l], so node (l, g) of
#   neuron r is nodes_w[off[l] + g, r]. Rebuilding it is an element-wise max of contiguous rows.
#
# Queries return every leaf strictly greater than b (v > b; a leaf equal to b does not fire, NaN
# never fires) in increasing order, in O(k log m) visits for k outputs: a subtree is entered only if
# its max is > b. Batched queries run in parallel over trees (schedule="dynamic": output sizes are
# uneven) into per-thread growable buffers, then are copied into CSR-like arrays (indptr, indices).
#
# Kernels trust their inputs (shapes, ids in range); fastfire.nn.corrtree validates them.

cimport cython
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt
from libc.stdint cimport uint64_t

import numpy as np

from fastfire._core._types cimport float32_t, float64_t, index_t, offset_t

cdef extern from *:
    """
    #include <stdint.h>
    #ifdef __SSE2__
    #include <emmintrin.h>
    #endif

    /* bit j set <=> p[j * stride] > b, for j < cnt <= 64 (NaN never sets a bit) */
    static inline uint64_t fastfire_gt_mask(const float* p, int64_t stride, int64_t cnt, float b) {
        uint64_t mask = 0;
        int64_t j = 0;
    #ifdef __SSE2__
        if (stride == 1) {
            __m128 bb = _mm_set1_ps(b);
            for (; j + 4 <= cnt; j += 4)
                mask |= (uint64_t) _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(p + j), bb)) << j;
        }
    #endif
        for (; j < cnt; j++)
            if (p[j * stride] > b) mask |= (uint64_t) 1 << j;
        return mask;
    }

    static inline int fastfire_ctz64(uint64_t x) {   /* x != 0 */
    #if defined(__GNUC__) || defined(__clang__)
        return __builtin_ctzll(x);
    #else
        int n = 0;
        while (!(x & 1)) { x >>= 1; n++; }
        return n;
    #endif
    }

    /* max of p[0 .. cnt-1], cnt >= 1, finite values */
    static inline float fastfire_max_contig(const float* p, int64_t cnt) {
        float best = p[0];
        int64_t j = 1;
    #ifdef __SSE2__
        if (cnt >= 8) {
            __m128 m0 = _mm_loadu_ps(p), m1 = _mm_loadu_ps(p + 4);
            float t[4];
            for (j = 8; j + 8 <= cnt; j += 8) {
                m0 = _mm_max_ps(m0, _mm_loadu_ps(p + j));
                m1 = _mm_max_ps(m1, _mm_loadu_ps(p + j + 4));
            }
            _mm_storeu_ps(t, _mm_max_ps(m0, m1));
            best = t[0];
            for (int k = 1; k < 4; k++) best = t[k] > best ? t[k] : best;
        }
    #endif
        for (; j < cnt; j++) best = p[j] > best ? p[j] : best;
        return best;
    }

    static inline void fastfire_add_into(float* __restrict__ y, const float* __restrict__ x, int64_t cnt) {
        for (int64_t j = 0; j < cnt; j++) y[j] += x[j];
    }

    /* out[0:32] = sum_{k0 <= k < k1} coef[k] * K[data[k] * n + j0 : +32], accumulators in
       registers (8 SSE vectors); increasing k, so the result is deterministic */
    static inline void fastfire_accum32(float* __restrict__ out, const float* __restrict__ K,
                                        int64_t n, int64_t j0, const float* __restrict__ coef,
                                        const int32_t* __restrict__ data, int64_t k0, int64_t k1) {
    #ifdef __SSE2__
        __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int64_t k = k0; k < k1; k++) {
            const float* x = K + (int64_t) data[k] * n + j0;
            __m128 c = _mm_set1_ps(coef[k]);
            a0 = _mm_add_ps(a0, _mm_mul_ps(c, _mm_loadu_ps(x)));
            a1 = _mm_add_ps(a1, _mm_mul_ps(c, _mm_loadu_ps(x + 4)));
            a2 = _mm_add_ps(a2, _mm_mul_ps(c, _mm_loadu_ps(x + 8)));
            a3 = _mm_add_ps(a3, _mm_mul_ps(c, _mm_loadu_ps(x + 12)));
            a4 = _mm_add_ps(a4, _mm_mul_ps(c, _mm_loadu_ps(x + 16)));
            a5 = _mm_add_ps(a5, _mm_mul_ps(c, _mm_loadu_ps(x + 20)));
            a6 = _mm_add_ps(a6, _mm_mul_ps(c, _mm_loadu_ps(x + 24)));
            a7 = _mm_add_ps(a7, _mm_mul_ps(c, _mm_loadu_ps(x + 28)));
        }
        _mm_storeu_ps(out, a0); _mm_storeu_ps(out + 4, a1); _mm_storeu_ps(out + 8, a2);
        _mm_storeu_ps(out + 12, a3); _mm_storeu_ps(out + 16, a4); _mm_storeu_ps(out + 20, a5);
        _mm_storeu_ps(out + 24, a6); _mm_storeu_ps(out + 28, a7);
    #else
        for (int j = 0; j < 32; j++) out[j] = 0.0f;
        for (int64_t k = k0; k < k1; k++) {
            const float* x = K + (int64_t) data[k] * n + j0;
            float c = coef[k];
            for (int j = 0; j < 32; j++) out[j] += c * x[j];
        }
    #endif
    }

    """
    uint64_t gt_mask "fastfire_gt_mask"(const float32_t* p, offset_t stride, offset_t cnt, float32_t b) noexcept nogil
    int ctz64 "fastfire_ctz64"(uint64_t x) noexcept nogil
    void add_into "fastfire_add_into"(float32_t* y, const float32_t* x, offset_t cnt) noexcept nogil
    void accum32 "fastfire_accum32"(float32_t* out, const float32_t* K, offset_t n, offset_t j0,
                                    const float32_t* coef, const index_t* data, offset_t k0,
                                    offset_t k1) noexcept nogil
    float32_t max_contig "fastfire_max_contig"(const float32_t* p, offset_t cnt) noexcept nogil

cdef enum:
    MAX_LEVELS = 64
    BLOCK_ROWS = 32     # (= the width of accum32) rows of C updated together by gradient_update (one K-row slice per entry)
    TILE_NEURONS = 64   # neurons whose updates are buffered before being written row by row
    RANGE_NEURONS = 256 # at most this many consecutive neurons per tile of gradient_update_range


def level_layout(offset_t n_leaves, offset_t fanout):
    """Sizes and offsets of the internal levels of a max-tree over ``n_leaves`` leaves.

    Returns ``(size, off)``, int64 arrays of length ``L + 1``: ``size[0] = n_leaves``,
    ``size[l] = ceil(size[l-1] / fanout)`` down to the root (``size[L] == 1``, ``L >= 1``);
    ``off[l]`` is where level ``l`` starts in the tree's node storage (``off[0] = 0`` unused),
    levels stored bottom-up. ``off[L] + 1`` is the number of internal nodes.
    """
    if n_leaves < 1 or fanout < 2:
        raise ValueError(f"need n_leaves >= 1 and fanout >= 2, got {n_leaves}, {fanout}")
    # (no negative indexing here: wraparound is off in this module)
    cdef offset_t s = n_leaves, o = 0
    sizes = [s]
    off = [0, 0]
    while True:
        s = (s + fanout - 1) // fanout
        sizes.append(s)
        if s == 1:
            break
        off.append(o + s)
        o += s
    if len(sizes) > MAX_LEVELS:
        raise ValueError("tree too deep")
    return np.asarray(sizes, dtype=np.int64), np.asarray(off, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# growable per-thread buffer of neuron/data ids

cdef struct IdBuf:
    index_t* data
    offset_t size
    offset_t cap
    int failed


cdef inline int _buf_push(IdBuf* buf, index_t value) noexcept nogil:
    cdef offset_t new_cap
    cdef index_t* new_data
    if buf.size == buf.cap:
        new_cap = 2 * buf.cap if buf.cap > 0 else 1024
        new_data = <index_t*> realloc(buf.data, new_cap * sizeof(index_t))
        if new_data == NULL:
            buf.failed = 1
            return -1
        buf.data = new_data
        buf.cap = new_cap
    buf.data[buf.size] = value
    buf.size += 1
    return 0


cdef inline offset_t _query(
    const float32_t* leaves, offset_t lstride,      # leaf j at leaves[j * lstride]
    const float32_t* nodes, offset_t nstride,       # node at position p at nodes[p * nstride]
    const offset_t* off, const offset_t* size, int n_levels, offset_t fanout,
    float32_t b, IdBuf* buf,                        # OUT: ids appended in increasing order
) noexcept nogil:
    """Append to buf the leaves > b of one tree; return how many (or -1 on allocation failure).

    Depth-first, children in increasing order. mask[l] holds the not yet visited children
    (> b) of the current node of level l; base[l] is the id of that node's first child.
    """
    cdef uint64_t mask[MAX_LEVELS]
    cdef offset_t base[MAX_LEVELS]
    cdef offset_t count = 0, c, cnt
    cdef int lvl = n_levels
    if not (nodes[off[n_levels] * nstride] > b):    # root; "not >" so that NaN never fires
        return 0
    base[lvl] = 0
    cnt = fanout if fanout < size[lvl - 1] else size[lvl - 1]
    mask[lvl] = (gt_mask(leaves, lstride, cnt, b) if lvl == 1 else
                 gt_mask(nodes + off[lvl - 1] * nstride, nstride, cnt, b))
    while lvl <= n_levels:
        if mask[lvl] == 0:
            lvl += 1
            continue
        if lvl == 1:                                # firing leaves: emit them all
            while mask[1] != 0:
                if _buf_push(buf, <index_t> (base[1] + ctz64(mask[1]))) != 0:
                    return -1
                count += 1
                mask[1] &= mask[1] - 1
            lvl = 2
            continue
        c = base[lvl] + ctz64(mask[lvl])
        mask[lvl] &= mask[lvl] - 1
        lvl -= 1
        base[lvl] = c * fanout
        cnt = size[lvl - 1] - base[lvl]
        if cnt > fanout:
            cnt = fanout
        if lvl == 1:
            mask[lvl] = gt_mask(leaves + base[lvl] * lstride, lstride, cnt, b)
        else:
            mask[lvl] = gt_mask(nodes + (off[lvl - 1] + base[lvl]) * nstride, nstride, cnt, b)
    return count


cdef inline float32_t _max_strided(const float32_t* p, offset_t stride, offset_t count) noexcept nogil:
    cdef float32_t best = p[0]
    cdef offset_t j
    for j in range(1, count):
        if p[j * stride] > best:
            best = p[j * stride]
    return best


cdef inline void _dtree_node(const float32_t* leaves, float32_t* nodes, const offset_t* off,
                             const offset_t* size, offset_t fanout, int lvl, offset_t g) noexcept nogil:
    """Recompute node g of level lvl of one DTree (leaves and nodes are that tree's rows)."""
    cdef offset_t lo = g * fanout
    cdef offset_t cnt = size[lvl - 1] - lo
    if cnt > fanout:
        cnt = fanout
    if lvl == 1:
        nodes[off[1] + g] = max_contig(leaves + lo, cnt)
    else:
        nodes[off[lvl] + g] = max_contig(nodes + off[lvl - 1] + lo, cnt)


# ---------------------------------------------------------------------------------------------
# DTree: build / repair

def dtree_refresh(
    const float32_t[:, ::1] C,          # IN (n, m)
    float32_t[:, ::1] nodes,            # OUT (n, n_internal)
    const offset_t[::1] size,           # IN level sizes (L + 1)
    const offset_t[::1] off,            # IN level offsets (L + 1)
    offset_t fanout,
    const index_t[::1] rows,            # IN the trees (rows of C) to refresh
    const offset_t[::1] node_ptr,       # IN (L + 2) or empty: level l's nodes are node_ids[node_ptr[l]:node_ptr[l+1]]
    const offset_t[::1] node_ids,       # IN sorted node ids per level (used when node_ptr is not empty)
    int n_threads,
    int first_level=1,                  # levels below it are already up to date
):
    """Rebuild (``node_ptr`` empty) or repair (the listed nodes, bottom-up) the DTrees of ``rows``."""
    cdef int n_levels = size.shape[0] - 1
    cdef offset_t n_rows = rows.shape[0], t, g, k
    cdef int lvl
    cdef bint full = node_ptr.shape[0] == 0
    cdef const float32_t* leaves
    cdef float32_t* tree
    with nogil:
        for t in prange(n_rows, schedule="static", num_threads=n_threads):
            leaves = &C[rows[t], 0]
            tree = &nodes[rows[t], 0]
            for lvl in range(first_level, n_levels + 1):
                if full:
                    for g in range(size[lvl]):
                        _dtree_node(leaves, tree, &off[0], &size[0], fanout, lvl, g)
                else:
                    for k in range(node_ptr[lvl], node_ptr[lvl + 1]):
                        _dtree_node(leaves, tree, &off[0], &size[0], fanout, lvl, node_ids[k])


# ---------------------------------------------------------------------------------------------
# WTree: build / repair

def wtree_refresh(
    const float32_t[:, ::1] C,          # IN (n, m)
    float32_t[:, ::1] nodes,            # OUT (n_internal, m)
    const offset_t[::1] size,           # IN level sizes (L + 1), size[0] == n
    const offset_t[::1] off,            # IN level offsets (L + 1)
    offset_t fanout,
    const index_t[::1] cols,            # IN the trees (columns of C) to refresh; empty: all
    int n_threads,
):
    """Rebuild the WTrees of ``cols`` (all columns when ``cols`` is empty), level by level."""
    cdef int n_levels = size.shape[0] - 1
    cdef offset_t m = C.shape[1], n_cols = cols.shape[0], g, n_nodes
    cdef int lvl
    with nogil:
        for lvl in range(1, n_levels + 1):
            # one task per node row g of this level: element-wise max of its children's rows
            n_nodes = size[lvl]
            for g in prange(n_nodes, schedule="static", num_threads=n_threads):
                _wtree_node_row(&C[0, 0], &nodes[0, 0], &off[0], &size[0], fanout, m, lvl, g,
                                &cols[0] if n_cols > 0 else NULL, n_cols)


cdef inline void _wtree_node_row(const float32_t* C, float32_t* nodes, const offset_t* off,
                                 const offset_t* size, offset_t fanout, offset_t m, int lvl,
                                 offset_t g, const index_t* cols, offset_t n_cols) noexcept nogil:
    """Row g of WTree level lvl: max over its children's rows, for all columns or the listed ones."""
    cdef offset_t lo = g * fanout, cnt = size[lvl - 1] - lo, j, r, k
    cdef const float32_t* src
    cdef float32_t* dst = nodes + (off[lvl] + g) * m
    cdef float32_t v
    if cnt > fanout:
        cnt = fanout
    if lvl == 1:
        src = C + lo * m
    else:
        src = nodes + (off[lvl - 1] + lo) * m
    if n_cols == 0:
        for r in range(m):
            dst[r] = src[r]
        for j in range(1, cnt):
            for r in range(m):
                v = src[j * m + r]
                dst[r] = dst[r] if dst[r] >= v else v
    else:
        for k in range(n_cols):
            r = cols[k]
            dst[r] = _max_strided(src + r, m, cnt)


# ---------------------------------------------------------------------------------------------
# batched queries

cdef inline object _collect(IdBuf* bufs, int n_bufs, const int[::1] owner, const offset_t[::1] start,
                            const offset_t[::1] count, int n_threads):
    """Concatenate per-query segments of the per-thread buffers into (indptr, indices)."""
    cdef offset_t n_q = count.shape[0], q
    indptr_np = np.zeros(n_q + 1, dtype=np.int64)
    cdef offset_t[::1] indptr = indptr_np
    for q in range(n_q):
        indptr[q + 1] = indptr[q] + count[q]
    indices_np = np.empty(indptr[n_q], dtype=np.int32)
    cdef index_t[::1] indices = indices_np
    cdef index_t* dst_base = &indices[0] if indptr[n_q] > 0 else NULL
    with nogil:
        for q in prange(n_q, schedule="static", num_threads=n_threads):
            if count[q] > 0:
                memcpy(dst_base + indptr[q], bufs[owner[q]].data + start[q], count[q] * sizeof(index_t))
    return indptr_np, indices_np


cdef IdBuf* _new_bufs(int n) except NULL:
    cdef IdBuf* bufs = <IdBuf*> malloc(n * sizeof(IdBuf))
    cdef int t
    if bufs == NULL:
        raise MemoryError()
    for t in range(n):
        bufs[t].data = NULL
        bufs[t].size = 0
        bufs[t].cap = 0
        bufs[t].failed = 0
    return bufs


cdef void _free_bufs(IdBuf* bufs, int n) noexcept:
    cdef int t
    for t in range(n):
        free(bufs[t].data)
    free(bufs)


def dtree_query(
    const float32_t[:, ::1] C,          # IN (n, m)
    const float32_t[:, ::1] nodes,      # IN (n, n_internal)
    const offset_t[::1] size,
    const offset_t[::1] off,
    offset_t fanout,
    const index_t[::1] rows,            # IN the data points to query
    float32_t b,
    int n_threads,
):
    """For each row i in ``rows`` the neurons r with C[i, r] > b: CSR ``(indptr, indices)``."""
    return _batched_query(C, nodes, size, off, fanout, rows, False, b, n_threads)


def wtree_query(
    const float32_t[:, ::1] C,          # IN (n, m)
    const float32_t[:, ::1] nodes,      # IN (n_internal, m)
    const offset_t[::1] size,
    const offset_t[::1] off,
    offset_t fanout,
    const index_t[::1] cols,            # IN the neurons to query
    float32_t b,
    int n_threads,
):
    """For each neuron r in ``cols`` the data points i with C[i, r] > b: CSR ``(indptr, indices)``."""
    return _batched_query(C, nodes, size, off, fanout, cols, True, b, n_threads)


cdef object _batched_query(
    const float32_t[:, ::1] C,
    const float32_t[:, ::1] nodes,
    const offset_t[::1] size,
    const offset_t[::1] off,
    offset_t fanout,
    const index_t[::1] ids,             # rows of C (DTrees) or columns of C (WTrees)
    bint by_column,
    float32_t b,
    int n_threads,
):
    """Query one tree per id in parallel into per-thread buffers, then collect them as CSR.

    A DTree lies along a row of C and of ``nodes`` (stride 1); a WTree along a column (stride
    = row length). Trees differ in size, hence the dynamic schedule; WTree queries are cheaper
    per tree, hence their larger chunks.
    """
    cdef int n_levels = size.shape[0] - 1
    cdef offset_t n_q = ids.shape[0], q, k
    cdef offset_t c_row = C.shape[1], n_row = nodes.shape[1]
    cdef offset_t c_step = 1 if by_column else c_row, c_stride = c_row if by_column else 1
    cdef offset_t n_step = 1 if by_column else n_row, n_stride = n_row if by_column else 1
    cdef int chunk = 64 if by_column else 4
    cdef int failed = 0, t
    owner_np = np.zeros(n_q, dtype=np.intc)
    start_np = np.zeros(n_q, dtype=np.int64)
    count_np = np.zeros(n_q, dtype=np.int64)
    cdef int[::1] owner = owner_np
    cdef offset_t[::1] start = start_np, count = count_np
    cdef const float32_t* c0 = &C[0, 0] if C.shape[0] > 0 and C.shape[1] > 0 else NULL
    cdef const float32_t* n0 = &nodes[0, 0] if nodes.shape[0] > 0 and nodes.shape[1] > 0 else NULL
    cdef IdBuf* bufs = _new_bufs(n_threads)
    cdef IdBuf* buf
    try:
        with nogil, parallel(num_threads=n_threads):
            t = threadid()
            buf = &bufs[t]
            for q in prange(n_q, schedule="dynamic", chunksize=chunk):
                owner[q] = t
                start[q] = buf.size
                k = _query(c0 + ids[q] * c_step, c_stride, n0 + ids[q] * n_step, n_stride,
                           &off[0], &size[0], n_levels, fanout, b, buf)
                count[q] = k if k > 0 else 0
        for t in range(n_threads):
            failed |= bufs[t].failed
        if failed:
            raise MemoryError(f"out of memory in {'wtree' if by_column else 'dtree'}_query")
        return _collect(bufs, n_threads, owner, start, count, n_threads)
    finally:
        _free_bufs(bufs, n_threads)


# ---------------------------------------------------------------------------------------------
# the two halves of a gradient-descent step of the shifted-ReLU network

def forward_values(
    const float32_t[:, ::1] C,          # IN (n, m)
    const offset_t[::1] indptr,         # IN firing sets of the batch rows (from dtree_query)
    const index_t[::1] indices,
    const index_t[::1] rows,            # IN (n_b,) data point of each batch row
    const float32_t[:, ::1] a,          # IN (m, q) output weights
    float32_t b,
    bint gated,                         # sigma(z) = z * 1[z > b] instead of max(z - b, 0)
    float32_t scale,                    # 1 / sqrt(m)
    float32_t[:, ::1] out,              # OUT (n_b, q)
    int n_threads,
):
    """out[t, o] = scale * sum over the firing r of row t of a[r, o] * sigma_b(C[rows[t], r])."""
    cdef offset_t n_b = rows.shape[0], t, k
    cdef Py_ssize_t q = a.shape[1], o
    cdef index_t r
    cdef float64_t h
    cdef float64_t* acc
    with nogil, parallel(num_threads=n_threads):
        acc = <float64_t*> malloc(q * sizeof(float64_t))
        for t in prange(n_b, schedule="dynamic", chunksize=4):
            for o in range(q):
                acc[o] = 0.0
            for k in range(indptr[t], indptr[t + 1]):
                r = indices[k]
                h = C[rows[t], r] if gated else C[rows[t], r] - b
                for o in range(q):
                    acc[o] = acc[o] + h * a[r, o]
            for o in range(q):
                out[t, o] = <float32_t> (scale * acc[o])
        free(acc)


def transpose_firing(
    const offset_t[::1] indptr,         # IN CSR over batch rows
    const index_t[::1] indices,         # IN neuron ids
    offset_t m,
    int n_threads,
):
    """Transpose a firing pattern: for each neuron r, the batch positions t that fire it.

    Returns ``(t_indptr (m + 1,), t_rows)``; within each neuron the positions increase, whatever
    ``n_threads`` is (per-thread histograms over contiguous row chunks).
    """
    cdef offset_t n_b = indptr.shape[0] - 1, nnz = indices.shape[0]
    cdef int P = n_threads if n_threads < n_b else (<int> n_b if n_b > 0 else 1)
    cdef offset_t chunk = (n_b + P - 1) // P if P > 0 else 0
    hist_np = np.zeros((P, m), dtype=np.int64)
    cdef offset_t[:, ::1] hist = hist_np
    t_indptr_np = np.zeros(m + 1, dtype=np.int64)
    cdef offset_t[::1] t_indptr = t_indptr_np
    t_rows_np = np.empty(nnz, dtype=np.int32)
    cdef index_t[::1] t_rows = t_rows_np
    cdef int p, pp
    cdef offset_t t, k, r, lo, hi, run, tmp
    with nogil:
        for p in prange(P, schedule="static", num_threads=n_threads):
            lo = p * chunk
            hi = lo + chunk if lo + chunk < n_b else n_b
            for t in range(lo, hi):
                for k in range(indptr[t], indptr[t + 1]):
                    hist[p, indices[k]] += 1
        # exclusive scan over (r, p): hist[p, r] becomes the first slot of thread p for neuron r
        run = 0
        for r in range(m):
            t_indptr[r] = run
            for pp in range(P):
                tmp = hist[pp, r]
                hist[pp, r] = run
                run = run + tmp
        t_indptr[m] = run
        for p in prange(P, schedule="static", num_threads=n_threads):
            lo = p * chunk
            hi = lo + chunk if lo + chunk < n_b else n_b
            for t in range(lo, hi):
                for k in range(indptr[t], indptr[t + 1]):
                    r = indices[k]
                    t_rows[hist[p, r]] = <index_t> t
                    hist[p, r] += 1
    return t_indptr_np, t_rows_np


def gradient_update(
    float32_t[:, ::1] C,                # IN/OUT (n, m): C[:, r] += K[:, rows] @ coef[:, r]
    float32_t[:, ::1] A,                # IN/OUT (m, n): lazy weight coefficients, A[r, rows] += coef
    const float32_t[:, ::1] K,          # IN (n, n) Gram matrix X X^T
    const offset_t[::1] t_indptr,       # IN (m + 1,) from transpose_firing
    const index_t[::1] t_rows,          # IN batch positions firing each neuron
    const index_t[::1] rows,            # IN (n_b,) data point of each batch position
    const float32_t[:, ::1] E,          # IN (n_b, q) residual f - y of the batch
    const float32_t[:, ::1] a,          # IN (m, q) output weights
    const index_t[::1] touched,         # IN neurons with at least one firing row, increasing
    float32_t step,                     # -learning_rate / (n_b sqrt(m))
    float32_t[::1] coef_buf,            # scratch (nnz,): the coefficient of every firing pair
    index_t[::1] data_buf,              # scratch (nnz,): the data point of every firing pair
    int n_threads,
):
    """Apply one gradient step: c_ir = step * <a_r, e_i> for the firing pairs, then ΔC = K c.

    Work is split into tiles of BLOCK_ROWS rows of C times a chunk of neurons; each entry of C
    is written by exactly one tile and summed in increasing i, so the result does not depend on
    ``n_threads``. Sums over the <= n firing rows of a neuron run in float32 (SIMD over rows).
    """
    cdef offset_t n = C.shape[0], m = C.shape[1]
    cdef Py_ssize_t q = a.shape[1], o
    cdef offset_t n_touched = touched.shape[0]
    cdef offset_t n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef offset_t rchunk = 1024
    cdef offset_t n_chunks = (n_touched + rchunk - 1) // rchunk
    cdef offset_t tile, blk, ch, j0, u_end, k, r, u
    cdef float64_t dot
    cdef float32_t c
    with nogil:
        # coefficients and the lazy-weight update, once per firing pair; data_buf[k] = the
        # data point of pair k (saves an indirection in the hot loop below)
        for k in prange(n_touched, schedule="dynamic", chunksize=256, num_threads=n_threads):
            r = touched[k]
            for u in range(t_indptr[r], t_indptr[r + 1]):
                dot = 0.0
                for o in range(q):
                    dot = dot + a[r, o] * E[t_rows[u], o]
                c = <float32_t> (step * dot)
                coef_buf[u] = c
                data_buf[u] = rows[t_rows[u]]
                A[r, data_buf[u]] += c
        for tile in prange(n_blocks * n_chunks, schedule="dynamic", num_threads=n_threads):
            blk = tile % n_blocks
            ch = tile // n_blocks
            j0 = blk * BLOCK_ROWS
            u_end = (ch + 1) * rchunk if (ch + 1) * rchunk < n_touched else n_touched
            _update_tile(&C[0, 0], m, &K[0, 0], n, j0, n - j0 if n - j0 < BLOCK_ROWS else BLOCK_ROWS,
                         &touched[ch * rchunk], u_end - ch * rchunk, &t_indptr[0],
                         &coef_buf[0], &data_buf[0])


cdef inline void _update_tile(float32_t* C, offset_t m, const float32_t* K, offset_t n,
                              offset_t j0, offset_t jn, const index_t* touched, offset_t n_touched,
                              const offset_t* t_indptr, const float32_t* coef,
                              const index_t* data) noexcept nogil:
    """C[j0:j0+jn, r] += sum_k coef[k] * K[data[k], j0:j0+jn] for the neurons r of one tile.

    The sums of TILE_NEURONS neurons are gathered in a local buffer first and then written
    row by row: writing a column of C directly (stride m) thrashes the cache sets.
    """
    cdef float32_t acc[TILE_NEURONS * BLOCK_ROWS]
    cdef float32_t loc[BLOCK_ROWS]
    cdef float32_t* ac
    cdef const float32_t* krow
    cdef float32_t c
    cdef offset_t u0, u, nu, k, jj, r
    cdef float32_t* crow
    u0 = 0
    while u0 < n_touched:
        nu = n_touched - u0 if n_touched - u0 < TILE_NEURONS else TILE_NEURONS
        for u in range(nu):
            r = touched[u0 + u]
            if jn == BLOCK_ROWS:
                accum32(loc, K, n, j0, coef, data, t_indptr[r], t_indptr[r + 1])
            else:
                for jj in range(BLOCK_ROWS):
                    loc[jj] = 0
                for k in range(t_indptr[r], t_indptr[r + 1]):
                    krow = K + data[k] * n + j0
                    c = coef[k]
                    for jj in range(jn):
                        loc[jj] += c * krow[jj]
            ac = acc + u * BLOCK_ROWS
            for jj in range(BLOCK_ROWS):
                ac[jj] = loc[jj]
        for jj in range(jn):
            crow = C + (j0 + jj) * m
            for u in range(nu):
                crow[touched[u0 + u]] += acc[u * BLOCK_ROWS + jj]
        u0 += nu


def gradient_update_range(
    float32_t[:, ::1] C,                # IN/OUT (n, m): C[:, r] += K[:, rows] @ coef[:, r]
    float32_t[:, ::1] A,                # IN/OUT (m, n): lazy weight coefficients, A[r, rows] += coef
    const float32_t[:, ::1] K,          # IN (n, n) Gram matrix X X^T
    const offset_t[::1] t_indptr,       # IN (m + 1,) from transpose_firing
    const index_t[::1] t_rows,          # IN batch positions firing each neuron
    const index_t[::1] rows,            # IN (n_b,) data point of each batch position
    const float32_t[:, ::1] E,          # IN (n_b, q) residual f - y of the batch
    const float32_t[:, ::1] a,          # IN (m, q) output weights
    float32_t step,                     # -learning_rate / (n_b sqrt(m))
    float32_t[::1] coef_buf,            # scratch (nnz,)
    index_t[::1] data_buf,              # scratch (nnz,)
    float32_t[:, ::1] dnodes,           # OUT (n, n_internal): level 1 of every DTree is rebuilt
    offset_t fanout,
    int n_threads,
):
    """:func:`gradient_update` for when most neurons received gradient: tiles are ranges of
    consecutive neurons (untouched ones add 0), so C is written in contiguous SIMD runs, and
    level 1 of the DTrees of the tile's rows is rebuilt while the tile is in cache (levels >= 2
    are left to ``dtree_refresh(first_level=2)``). Ranges are multiples of the fan-out, so every
    level-1 node belongs to exactly one tile; results do not depend on ``n_threads``.
    """
    cdef offset_t n = C.shape[0], m = C.shape[1]
    cdef Py_ssize_t q = a.shape[1], o
    cdef offset_t width = fanout * (RANGE_NEURONS // fanout if RANGE_NEURONS // fanout > 0 else 1)
    cdef offset_t n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef offset_t n_ranges = (m + width - 1) // width
    cdef offset_t tile, blk, rg, j0, r0, r1, k, r, u
    cdef float64_t dot
    cdef float32_t c
    with nogil:
        for r in prange(m, schedule="static", num_threads=n_threads):
            for u in range(t_indptr[r], t_indptr[r + 1]):
                dot = 0.0
                for o in range(q):
                    dot = dot + a[r, o] * E[t_rows[u], o]
                c = <float32_t> (step * dot)
                coef_buf[u] = c
                data_buf[u] = rows[t_rows[u]]
                A[r, data_buf[u]] += c
        for tile in prange(n_blocks * n_ranges, schedule="dynamic", num_threads=n_threads):
            blk = tile % n_blocks
            rg = tile // n_blocks
            j0 = blk * BLOCK_ROWS
            r0 = rg * width
            r1 = r0 + width if r0 + width < m else m
            _update_range(&C[0, 0], m, &K[0, 0], n, j0, n - j0 if n - j0 < BLOCK_ROWS else BLOCK_ROWS,
                          r0, r1, &t_indptr[0], &coef_buf[0] if coef_buf.shape[0] > 0 else NULL,
                          &data_buf[0] if data_buf.shape[0] > 0 else NULL,
                          &dnodes[0, 0], dnodes.shape[1], fanout)


cdef inline void _update_range(float32_t* C, offset_t m, const float32_t* K, offset_t n,
                               offset_t j0, offset_t jn, offset_t r0, offset_t r1,
                               const offset_t* t_indptr, const float32_t* coef, const index_t* data,
                               float32_t* dnodes, offset_t n_internal, offset_t fanout) noexcept nogil:
    """Rows j0..j0+jn of C, neurons r0..r1: add K c, then rebuild their level-1 DTree nodes."""
    cdef float32_t acc[BLOCK_ROWS * RANGE_NEURONS]     # acc[jj * RANGE_NEURONS + u]
    cdef float32_t loc[BLOCK_ROWS]
    cdef const float32_t* krow
    cdef float32_t* crow
    cdef float32_t* tree
    cdef offset_t u, k, jj, r, g, g_end, cnt
    for r in range(r0, r1):
        u = r - r0
        if jn == BLOCK_ROWS:
            accum32(loc, K, n, j0, coef, data, t_indptr[r], t_indptr[r + 1])
        else:
            for jj in range(BLOCK_ROWS):
                loc[jj] = 0
            for k in range(t_indptr[r], t_indptr[r + 1]):
                krow = K + data[k] * n + j0
                for jj in range(jn):
                    loc[jj] += coef[k] * krow[jj]
        for jj in range(BLOCK_ROWS):
            acc[jj * RANGE_NEURONS + u] = loc[jj]
    g_end = (r1 + fanout - 1) // fanout
    for jj in range(jn):
        crow = C + (j0 + jj) * m
        add_into(crow + r0, acc + jj * RANGE_NEURONS, r1 - r0)
        tree = dnodes + (j0 + jj) * n_internal          # level 1 starts at offset 0
        for g in range(r0 // fanout, g_end):
            cnt = m - g * fanout
            if cnt > fanout:
                cnt = fanout
            tree[g] = max_contig(crow + g * fanout, cnt)


def max_abs_diff(const float32_t[:, ::1] A, const float32_t[:, ::1] B, int n_threads):
    """max |A - B| over two equal-shape arrays (NaN anywhere gives NaN), in parallel over rows."""
    cdef offset_t n = A.shape[0], m = A.shape[1], i, j
    out_np = np.zeros(n, dtype=np.float64)
    cdef float64_t[::1] out = out_np
    cdef float64_t d, best
    with nogil:
        for i in prange(n, schedule="static", num_threads=n_threads):
            best = 0.0
            for j in range(m):
                d = <float64_t> A[i, j] - <float64_t> B[i, j]
                if d < 0:
                    d = -d
                if not (d <= best):
                    best = d
            out[i] = best
    return float(out_np.max()) if n > 0 else 0.0
