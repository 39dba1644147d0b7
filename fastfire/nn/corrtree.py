"""Weight–data correlation trees: exact firing-neuron detection for shifted-ReLU layers.

The public class is :class:`CorrelationTree`. It keeps the correlation matrix
``C = X W^T`` of ``n`` data points and ``m`` neurons together with two families of
max-trees over it (kernels in ``fastfire._core._corrtree``):

* the **DTree** of a data point ``i`` is a max-tree over row ``C[i, :]``:
  :meth:`CorrelationTree.query` returns the neurons ``r`` with ``C[i, r] > b``;
* the **WTree** of a neuron ``r`` is a max-tree over column ``C[:, r]``:
  :meth:`CorrelationTree.query_neuron` returns the data points ``i`` with ``C[i, r] > b``.

A query visits only the subtrees whose maximum exceeds ``b``: ``O(k log m)`` work for
``k`` outputs instead of a scan of all ``m`` entries (Song, Yang, Zhang, NeurIPS 2021;
Alman, Liang, Song, Zhang, Zhuo, NeurIPS 2023).

Gradient steps of a two-layer network change every weight by a combination of data
points, ``Δw_r = Σ_i coef[i, r] x_i``, so ``ΔC[:, r] = K coef[:, r]`` with the Gram matrix
``K = X X^T``: ``C`` is maintained without ever touching the ``m x d`` weights, which are
kept lazily as ``W = W0 + A X`` and materialised only on request (:meth:`weights`).
"""

import numbers

import numpy as np
from scipy.linalg import blas as scipy_blas
from threadpoolctl import threadpool_limits

from fastfire._core import _corrtree
from fastfire._core._openmp import effective_n_threads

__all__ = ["CorrelationTree"]

#: Fan-out of both tree families. Measured on the 2-core development machine
#: (bench/RESULTS-corrtree.md, "fan-out"): 16 beats 2, 4 and 8 for queries and rebuilds.
DEFAULT_FANOUT = 16

#: Below this many entries of C (n·m) the kernels run on one thread: waking an OpenMP team
#: costs more than the work (and much more on a busy machine).
SERIAL_BELOW = 1 << 18

#: gradient_step updates C over contiguous neuron ranges (fused with the level-1 DTree
#: rebuild) when more than this fraction of the neurons received gradient, else over the
#: list of touched neurons followed by a path repair. Measured crossover (1 thread, n=256,
#: m=2^18): list faster up to 49% touched, range faster at 84% (bench/RESULTS-corrtree.md).
RANGE_UPDATE_FRACTION = 0.65

#: Repair only the touched DTree nodes while fewer than this fraction of the level-1
#: nodes is touched; rebuild whole DTrees bottom-up above it. WTrees: rebuild all of them
#: once more than WTREE_REBUILD_FRACTION of the columns changed, else only those columns.
#: Measured crossovers (n=256, m=2^18, fan-out 16): bench/RESULTS-corrtree.md, "repair vs rebuild".
REBUILD_FRACTION = 0.6
WTREE_REBUILD_FRACTION = 0.1


def _as_matrix(value, name, n_cols=None):
    """float32 C-contiguous 2-D copy-free view (copy when needed), finite, else ValueError."""
    if value is None:
        raise ValueError(f"{name} must be a 2-D array, got None.")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists, objects that do not convert
        raise ValueError(f"{name} must be a 2-D numeric array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}.")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}.")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ValueError(f"{name} must have {n_cols} columns, got shape {arr.shape}.")
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity (after conversion to float32).")
    return arr


def _as_ids(value, name, bound, unique=False):
    """1-D int32 ids in [0, bound) (a scalar becomes a length-1 array), else ValueError."""
    arr = np.asarray(value)
    if arr.dtype.kind == "b" or (arr.dtype.kind not in "iu" and arr.size > 0):
        raise ValueError(f"{name} must be an integer or an array of integers, got dtype {arr.dtype}.")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be an integer or a 1-D array, got shape {arr.shape}.")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= bound):
        raise ValueError(f"{name} must lie in [0, {bound}), got values in [{arr.min()}, {arr.max()}].")
    arr = np.ascontiguousarray(arr, dtype=np.int32)
    if unique and np.unique(arr).size != arr.size:
        raise ValueError(f"{name} must not contain duplicates.")
    return arr


def _as_threshold(b):
    if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Real):
        raise ValueError(f"b must be a real number, got {b!r}.")
    with np.errstate(over="ignore"):
        b32 = np.float32(b)
    if not np.isfinite(b32):
        raise ValueError(f"b must be finite in float32, got {b!r}.")
    return b32


class CorrelationTree:
    """Correlation matrix ``C = X W^T`` with max-trees over its rows and its columns.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Data points, converted to float32. Must be finite.
    W : array-like of shape (m, d)
        Initial weights ``W0`` of the ``m`` neurons, converted to float32. Must be finite.
    n_jobs : int or None, default=None
        Threads of the kernels, resolved by :func:`fastfire.effective_n_threads`
        (``None``: ``OMP_NUM_THREADS`` or all usable cores; ``-1``: all cores).
    fanout : int, default=16
        Children per tree node (2 to 64). 16 was the fastest measured.
    copy : bool, default=True
        Copy ``W``. With False a float32 C-contiguous ``W`` is adopted as ``W0`` without a
        copy and is then modified in place by :meth:`update` (saves ``m·d`` memory).

    Attributes
    ----------
    C : ndarray of shape (n, m), float32
        The maintained correlations (read-only view; row ``i`` holds ``<w_r, x_i>``).
    n_samples, n_neurons, n_features : int
        ``n``, ``m`` and ``d``.

    Notes
    -----
    *Firing and ties.* All queries use the strict test ``C[i, r] > b``: an entry equal
    to ``b`` does not fire, matching both activations ``max(z - b, 0)`` (whose value at
    ``z = b`` is 0 anyway) and ``z * 1[z > b]``. Results are sorted ids.

    *Precision.* ``C`` is float32 and is updated incrementally (``ΔC = K coef``), so after
    many updates it differs from a fresh ``X W^T`` by float32 rounding; :meth:`check`
    measures that drift. Entries within that drift of ``b`` may fire differently from a
    fresh computation; everything else agrees exactly.

    *Memory.* ``C`` (n·m), the lazy coefficients ``A`` (m·n), ``W0`` (m·d) and the
    trees (about 2·n·m/(fanout-1)), all float32, plus ``K`` (n·n) once it is needed.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire.nn.corrtree import CorrelationTree
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((5, 3)); W = rng.standard_normal((40, 3))
    >>> tree = CorrelationTree(X, W, n_jobs=1)
    >>> firing = tree.query(0, 1.0)
    >>> bool(np.array_equal(firing, np.flatnonzero(X[0] @ W.T.astype(np.float32) > 1.0)))
    True
    >>> tree.update_coefficients([3, 7], np.ones((5, 2)))
    >>> tree.check()[0]
    True
    """

    def __init__(self, X, W, n_jobs=None, fanout=DEFAULT_FANOUT, copy=True):
        X_in, W_in = X, W
        X = _as_matrix(X, "X")
        if isinstance(X_in, np.ndarray) and np.may_share_memory(X, X_in):
            X = X.copy()                          # small (n x d); never aliased by the caller
        W = _as_matrix(W, "W", n_cols=X.shape[1])
        if copy and isinstance(W_in, np.ndarray) and np.may_share_memory(W, W_in):
            W = W.copy()
        if isinstance(fanout, bool) or not isinstance(fanout, numbers.Integral) or not 2 <= fanout <= 64:
            raise ValueError(f"fanout must be an int in [2, 64], got {fanout!r}.")
        if X.shape[0] >= 2**31 or W.shape[0] >= 2**31:
            raise ValueError("n and m must be below 2**31.")
        self._n_threads = effective_n_threads(n_jobs)
        if X.shape[0] * W.shape[0] < SERIAL_BELOW:
            self._n_threads = 1
        self.fanout = int(fanout)
        self._X = X
        self._W0 = W
        n, m = X.shape[0], W.shape[0]
        self._A = np.empty((m, n), dtype=np.float32)
        self._A.fill(0.0)                         # touch the pages now, not in the first step
        self._K = None
        with threadpool_limits(self._n_threads, user_api="blas"):
            self._C = np.ascontiguousarray(X @ self._W0.T, dtype=np.float32)
        self._dsize, self._doff = _corrtree.level_layout(m, self.fanout)
        self._wsize, self._woff = _corrtree.level_layout(n, self.fanout)
        self._dnodes = np.empty((n, int(self._doff[-1]) + 1), dtype=np.float32)
        self._wnodes = np.empty((int(self._woff[-1]) + 1, m), dtype=np.float32)
        self._all_rows = np.arange(n, dtype=np.int32)
        self._wdirty = np.zeros(m, dtype=bool)   # WTrees are repaired lazily (see _sync_wtrees)
        self._rebuild()

    # ------------------------------------------------------------------ properties
    @property
    def n_samples(self):
        return self._C.shape[0]

    @property
    def n_neurons(self):
        return self._C.shape[1]

    @property
    def n_features(self):
        return self._X.shape[1]

    @property
    def n_threads(self):
        """Threads of the kernels: ``n_jobs`` resolved, 1 when ``n·m < SERIAL_BELOW``."""
        return self._n_threads

    @property
    def C(self):
        view = self._C.view()
        view.flags.writeable = False
        return view

    @property
    def K(self):
        """The Gram matrix ``X X^T`` (n, n), float32, computed on first use."""
        if self._K is None:
            with threadpool_limits(self._n_threads, user_api="blas"):
                self._K = np.ascontiguousarray(self._X @ self._X.T, dtype=np.float32)
        return self._K

    # ------------------------------------------------------------------ trees
    _EMPTY_IDS = np.zeros(0, dtype=np.int32)
    _EMPTY_OFFSETS = np.zeros(0, dtype=np.int64)

    def _rebuild(self, dnodes=None, wnodes=None):
        """Build both tree families from ``C`` bottom-up (into the given arrays if any)."""
        dnodes = self._dnodes if dnodes is None else dnodes
        wnodes = self._wnodes if wnodes is None else wnodes
        _corrtree.dtree_refresh(self._C, dnodes, self._dsize, self._doff, self.fanout,
                                self._all_rows, self._EMPTY_OFFSETS, self._EMPTY_OFFSETS,
                                self._n_threads)
        _corrtree.wtree_refresh(self._C, wnodes, self._wsize, self._woff, self.fanout,
                                self._EMPTY_IDS, self._n_threads)

    def _repair_columns(self, cols):
        """Repair the trees after the columns ``cols`` (sorted, unique) of C changed.

        DTrees: only the nodes on the paths above those columns are recomputed, in every
        row, unless the touched level-1 nodes exceed ``REBUILD_FRACTION`` of the level, in
        which case the whole trees are rebuilt bottom-up (contiguous, no lists: cheaper).
        WTrees: the columns are only marked; :meth:`_sync_wtrees` repairs them when a
        neuron query or :meth:`check` needs them (training never reads them).
        """
        if cols.size == 0:
            return
        size, B = self._dsize, self.fanout
        level1 = np.unique(cols // B)
        if level1.size > REBUILD_FRACTION * size[1]:
            ptr, ids = self._EMPTY_OFFSETS, self._EMPTY_OFFSETS
        else:
            lists = [level1]
            for _ in range(2, len(size)):
                lists.append(np.unique(lists[len(lists) - 1] // B))
            ptr = np.zeros(len(size) + 1, dtype=np.int64)
            ptr[2:] = np.cumsum([len(x) for x in lists])
            ids = np.concatenate(lists).astype(np.int64)
        _corrtree.dtree_refresh(self._C, self._dnodes, size, self._doff, B, self._all_rows,
                                ptr, ids, self._n_threads)
        self._wdirty[cols] = True

    def _sync_wtrees(self):
        """Rebuild the WTrees of the columns changed since the last sync."""
        dirty = np.flatnonzero(self._wdirty).astype(np.int32)
        if dirty.size == 0:
            return
        cols = self._EMPTY_IDS if dirty.size > WTREE_REBUILD_FRACTION * self.n_neurons else dirty
        _corrtree.wtree_refresh(self._C, self._wnodes, self._wsize, self._woff, self.fanout,
                                cols, self._n_threads)
        self._wdirty[:] = False

    # ------------------------------------------------------------------ queries
    def query(self, i, b, return_values=False):
        """Neurons that fire for data point(s) ``i``: ``{r : C[i, r] > b}`` (strict).

        Parameters
        ----------
        i : int or array-like of int
            One data point or a batch (queried in parallel over the DTrees).
        b : float
            Threshold; an entry equal to ``b`` does not fire.
        return_values : bool, default=False
            Also return the correlations ``C[i, r]`` of the firing pairs.

        Returns
        -------
        For a scalar ``i``: ``indices`` (sorted int32 neuron ids) [, ``values``].
        For an array: ``(indptr, indices)`` [, ``values``], CSR-like: the neurons of
        ``i[t]`` are ``indices[indptr[t]:indptr[t + 1]]``.
        """
        scalar = np.ndim(i) == 0
        rows = _as_ids(i, "i", self.n_samples)
        b = _as_threshold(b)
        indptr, indices = _corrtree.dtree_query(self._C, self._dnodes, self._dsize, self._doff,
                                                self.fanout, rows, b, self._n_threads)
        out = (indices,) if scalar else (indptr, indices)
        if return_values:
            out = out + (self._C[np.repeat(rows, np.diff(indptr)), indices],)
        return out[0] if len(out) == 1 else out

    def query_neuron(self, r, b, return_values=False):
        """Data points that fire neuron(s) ``r``: ``{i : C[i, r] > b}`` (strict).

        Same conventions as :meth:`query`, over the WTrees (one per neuron).
        """
        scalar = np.ndim(r) == 0
        cols = _as_ids(r, "r", self.n_neurons)
        b = _as_threshold(b)
        if cols.size == 0:  # the kernel reads an empty id list as "all"
            indptr, indices = np.zeros(1, dtype=np.int64), self._EMPTY_IDS.copy()
        else:
            self._sync_wtrees()
            indptr, indices = _corrtree.wtree_query(self._C, self._wnodes, self._wsize, self._woff,
                                                    self.fanout, cols, b, self._n_threads)
        out = (indices,) if scalar else (indptr, indices)
        if return_values:
            out = out + (self._C[indices, np.repeat(cols, np.diff(indptr))],)
        return out[0] if len(out) == 1 else out

    # ------------------------------------------------------------------ updates
    def update(self, neuron_ids, new_weights):
        """Set the weights of some neurons: ``w_r = new_weights[k]`` for ``r = neuron_ids[k]``.

        Recomputes those columns of ``C`` with BLAS (``n·k·d``) and repairs the trees.

        Parameters
        ----------
        neuron_ids : int or array-like of int, shape (k,)
            Distinct neuron ids.
        new_weights : array-like of shape (k, d)
        """
        ids = _as_ids(neuron_ids, "neuron_ids", self.n_neurons, unique=True)
        if ids.size == 0:
            return
        new_w = _as_matrix(new_weights, "new_weights", n_cols=self.n_features)
        if new_w.shape[0] != ids.size:
            raise ValueError(f"new_weights must have {ids.size} rows (one per id), got {new_w.shape[0]}.")
        with threadpool_limits(self._n_threads, user_api="blas"):
            self._C[:, ids] = self._X @ new_w.T
        self._W0[ids] = new_w
        self._A[ids] = 0.0
        self._repair_columns(np.sort(ids))

    def update_coefficients(self, neuron_ids, coef):
        """Move neurons by combinations of data points: ``Δw_r = Σ_i coef[i, k] x_i``.

        Then ``ΔC[:, r] = K coef[:, k]`` with the Gram matrix ``K = X X^T`` (computed
        once): ``n·n·k`` work, independent of ``d``; the weights stay lazy.

        Parameters
        ----------
        neuron_ids : int or array-like of int, shape (k,)
            Distinct neuron ids.
        coef : array-like of shape (n, k)
        """
        ids = _as_ids(neuron_ids, "neuron_ids", self.n_neurons, unique=True)
        if ids.size == 0:
            return
        coef = _as_matrix(coef, "coef", n_cols=ids.size)
        if coef.shape[0] != self.n_samples:
            raise ValueError(f"coef must have shape ({self.n_samples}, {ids.size}), got {coef.shape}.")
        with threadpool_limits(self._n_threads, user_api="blas"):
            self._C[:, ids] += self.K @ coef
        self._A[ids] += coef.T
        self._repair_columns(np.sort(ids))

    def gradient_step(self, rows, indptr, indices, residual, a, step):
        """One gradient step of ``f(x) = (1/√m) Σ_r a_r σ_b(<w_r, x>)`` on the trees.

        With the firing sets of the batch (from :meth:`query` at the current ``C``),
        sets ``coef[i, r] = step · <a_r, residual_t>`` for every firing pair (``i = rows[t]``)
        and applies ``ΔC[:, r] = K coef[:, r]`` for the neurons that fired, then repairs
        the trees. This is the engine of ``ShiftedReLURegressor(solver="tree")``. The
        firing sets are checked for shape and range (O(nnz)), not for being the true ones.

        Parameters
        ----------
        rows : int32 array (n_b,)
        indptr, indices : CSR firing sets of ``rows`` as returned by :meth:`query`
        residual : float32 array (n_b, q), ``f(x) - y`` of the batch
        a : float32 array (m, q), output weights
        step : float, ``-learning_rate / (n_b √m)`` for the loss ``Σ ||f - y||² / (2 n_b)``

        Returns
        -------
        n_touched : int
            The number of neurons that received gradient.
        """
        m = self.n_neurons
        rows = _as_ids(rows, "rows", self.n_samples)
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        indices = _as_ids(indices, "indices", m)
        if (indptr.ndim != 1 or indptr.size != rows.size + 1 or indptr[0] != 0
                or indptr[indptr.size - 1] != indices.size or (np.diff(indptr) < 0).any()):
            raise ValueError("indptr must be the CSR offsets of the firing sets of rows "
                             f"({rows.size + 1} non-decreasing values from 0 to {indices.size}).")
        a = np.ascontiguousarray(a, dtype=np.float32)
        residual = np.ascontiguousarray(residual, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != m:
            raise ValueError(f"a must have shape ({m}, q), got {a.shape}.")
        if residual.shape != (rows.size, a.shape[1]):
            raise ValueError(f"residual must have shape ({rows.size}, {a.shape[1]}), got {residual.shape}.")
        t_indptr, t_rows = _corrtree.transpose_firing(indptr, indices, m, self._n_threads)
        touched = np.flatnonzero(np.diff(t_indptr)).astype(np.int32)
        coef_buf = np.empty(t_rows.shape[0], dtype=np.float32)
        data_buf = np.empty(t_rows.shape[0], dtype=np.int32)
        if touched.size > RANGE_UPDATE_FRACTION * m:
            # most neurons moved: contiguous ranges, level 1 of the DTrees rebuilt on the fly
            _corrtree.gradient_update_range(self._C, self._A, self.K, t_indptr, t_rows, rows,
                                            residual, a, np.float32(step), coef_buf, data_buf,
                                            self._dnodes, self.fanout, self._n_threads)
            if len(self._dsize) > 2:
                _corrtree.dtree_refresh(self._C, self._dnodes, self._dsize, self._doff, self.fanout,
                                        self._all_rows, self._EMPTY_OFFSETS, self._EMPTY_OFFSETS,
                                        self._n_threads, 2)
            self._wdirty[touched] = True
        else:
            _corrtree.gradient_update(self._C, self._A, self.K, t_indptr, t_rows, rows, residual,
                                      a, touched, np.float32(step), coef_buf, data_buf,
                                      self._n_threads)
            self._repair_columns(touched)
        return int(touched.size)

    def forward(self, rows, b, a, activation="shifted_relu"):
        """Outputs of the network for data points ``rows`` and their firing sets.

        Returns ``(out, indptr, indices)``: ``out[t] = (1/√m) Σ_{r fires} a_r σ_b(C[rows[t], r])``
        (float32, shape (n_b, q)) and the CSR firing sets as from :meth:`query`.
        """
        rows = _as_ids(rows, "rows", self.n_samples)
        b = _as_threshold(b)
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != self.n_neurons:
            raise ValueError(f"a must have shape ({self.n_neurons}, q), got {a.shape}.")
        if activation not in ("shifted_relu", "gated"):
            raise ValueError(f"activation must be 'shifted_relu' or 'gated', got {activation!r}.")
        indptr, indices = _corrtree.dtree_query(self._C, self._dnodes, self._dsize, self._doff,
                                                self.fanout, rows, b, self._n_threads)
        out = np.empty((rows.size, a.shape[1]), dtype=np.float32)
        _corrtree.forward_values(self._C, indptr, indices, rows, a, b, activation == "gated",
                                 np.float32(1.0 / np.sqrt(self.n_neurons)), out, self._n_threads)
        return out, indptr, indices

    # ------------------------------------------------------------------ weights and checks
    def weights(self, fold=False):
        """Materialise the weights ``W = W0 + A X`` (m, d), float32.

        Parameters
        ----------
        fold : bool, default=False
            False: return a new array (peak memory ``2·m·d``). True: add ``A X`` into ``W0``
            in place and reset the coefficients ``A`` to zero (the state is unchanged, no
            ``m·d`` temporary) and return ``W0`` itself, which the tree keeps using: copy it
            before modifying it.
        """
        out = self._W0 if fold else self._W0.copy()
        with threadpool_limits(self._n_threads, user_api="blas"):
            # out += A X, in place: out^T (d, m) is Fortran-ordered, as X^T and A^T are
            res = scipy_blas.sgemm(1.0, self._X.T, self._A.T, beta=1.0, c=out.T, overwrite_c=True)
        if not np.shares_memory(res, out):   # not expected: scipy copies only non-F-ordered c
            out[...] = res.T
        if fold:
            self._A.fill(0.0)
        return out

    def check(self, atol=None):
        """Compare the maintained ``C`` and trees with a fresh computation.

        Parameters
        ----------
        atol : float or None, default=None
            Allowed ``max |C - X W^T|``; ``None`` means ``1e-4 · max(1, max |X W^T|)``
            (float32 drift of incremental updates).

        Returns
        -------
        ok : bool
            True when the drift is within ``atol`` and both tree families equal, exactly,
            trees rebuilt from scratch over the maintained ``C`` (max is exact).
        max_error : float
            ``max |C - X W^T|`` with ``W`` from :meth:`weights`.
        """
        with threadpool_limits(self._n_threads, user_api="blas"):
            fresh = np.ascontiguousarray(self._X @ self.weights().T, dtype=np.float32)
        max_error = _corrtree.max_abs_diff(self._C, fresh, self._n_threads)
        if atol is None:
            atol = 1e-4 * max(1.0, float(np.abs(fresh).max()))
        self._sync_wtrees()
        dnodes, wnodes = np.empty_like(self._dnodes), np.empty_like(self._wnodes)
        self._rebuild(dnodes, wnodes)
        trees_ok = np.array_equal(dnodes, self._dnodes) and np.array_equal(wnodes, self._wnodes)
        return bool(trees_ok and max_error <= atol), max_error

    def __repr__(self):
        return (f"CorrelationTree(n_samples={self.n_samples}, n_neurons={self.n_neurons}, "
                f"n_features={self.n_features}, fanout={self.fanout}, n_threads={self._n_threads})")
