"""ActiveSet: the one currency between layers."""

import numpy as np
import scipy.sparse as sp


class ActiveSet:
    """Per sample, the active neurons of a layer and their values.

    CSR-like: the active neurons of sample ``i`` are ``indices[indptr[i]:indptr[i+1]]`` with
    values ``values[indptr[i]:indptr[i+1]]``. When every neuron is active, ``indices`` and
    ``indptr`` are None and ``values`` is a dense C-contiguous ``(n_samples, n_neurons)``
    float32 array. Sparse input data is simply the ActiveSet of layer 0.

    Parameters
    ----------
    values : ndarray of float32
        Dense ``(n_samples, n_neurons)`` values, or the flat values of the active entries.
    n_neurons : int
        Width of the layer the set belongs to.
    indptr : ndarray of int64, default=None
        Row offsets into ``indices``/``values`` (``n_samples + 1`` entries).
    indices : ndarray of int32, default=None
        Ids of the active neurons.
    """

    __slots__ = ("values", "n_neurons", "indptr", "indices")

    def __init__(self, values, n_neurons, indptr=None, indices=None):
        self.values = values
        self.n_neurons = int(n_neurons)
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def from_dense(cls, values):
        """All neurons active: wrap a dense ``(n_samples, n_neurons)`` float32 array."""
        return cls(values, values.shape[1])

    @classmethod
    def from_csr(cls, X):
        """Wrap a scipy CSR matrix (its non-zeros are the active entries) without copying
        when it already has int64 ``indptr``, int32 ``indices`` and float32 ``data``."""
        X = sp.csr_matrix(X)
        return cls(
            np.ascontiguousarray(X.data, dtype=np.float32),
            X.shape[1],
            indptr=np.ascontiguousarray(X.indptr, dtype=np.int64),
            indices=np.ascontiguousarray(X.indices, dtype=np.int32),
        )

    @classmethod
    def from_data(cls, X):
        """Wrap an input batch: a dense float32 array or any scipy sparse matrix."""
        if sp.issparse(X):
            return cls.from_csr(X)
        return cls.from_dense(np.ascontiguousarray(X, dtype=np.float32))

    @property
    def is_dense(self):
        """True when every neuron is active (``values`` is a dense 2-D array)."""
        return self.indices is None

    @property
    def n_samples(self):
        """Number of samples (rows) in the set."""
        return self.values.shape[0] if self.is_dense else self.indptr.shape[0] - 1

    def to_dense(self):
        """Return the values as a dense ``(n_samples, n_neurons)`` float32 array."""
        if self.is_dense:
            return self.values
        return sp.csr_matrix(
            (self.values, self.indices, self.indptr), shape=(self.n_samples, self.n_neurons)
        ).toarray()

    def __repr__(self):
        kind = "dense" if self.is_dense else f"sparse, {self.values.shape[0]} active"
        return f"ActiveSet({self.n_samples} samples x {self.n_neurons} neurons, {kind})"
