"""Threshold firing for hidden layers: only the neurons with ``z > b`` form the active set.

The shifted-ReLU sparsifier of Song, Zhang and Zhang (2021, "Training multi-layer
over-parametrized neural networks in subquadratic time") applied to fastfire's MLPs: a hidden
layer computes ``max(z - b, 0)`` with ``z = x W + c``, and only its firing entries are passed on,
as a CSR ActiveSet. The next layer's forward product and its weight gradient then run over the
firing entries only (``csr_matmul`` / ``csr_t_matmul``), and the backward pass through the
layer is masked to them. With ``b = 0`` the network is exactly a ReLU network.
"""

from numbers import Real

import numpy as np

from fastfire._core._dense import RELU, act_backward, bias_act_forward, nonzero_fill, nonzero_indptr
from fastfire.nn.active import ActiveSet
from fastfire.nn.layers import DenseLayer
from fastfire.nn.selectors import Selector, register_selector


@register_selector
class Threshold(Selector):
    """Compute, for each sample, only the neurons of a hidden layer that fire above ``b``.

    The layer's activation becomes the shifted ReLU ``max(z - b, 0)``. Its firing entries are
    passed to the next layer as a sparse active set, so that layer's forward product and weight
    gradient run over them only. This pays off when few neurons fire. ``firing_fraction`` on the
    layer reports the fraction of the last batch. Use it on hidden layers with
    ``activation="relu"``; the output layer needs another selection, e.g. ``"dense"``.

    Parameters
    ----------
    b : float, default=0.0
        Firing threshold, at least 0. ``b = 0`` is an exact ReLU layer; larger values fire
        fewer neurons (the layer's ``firing_fraction`` tells how many).

    Examples
    --------
    >>> from fastfire import MLPClassifier, Threshold
    >>> clf = MLPClassifier(hidden_layer_sizes=(512, 512), selection=[Threshold(0.5), Threshold(0.5), "dense"])
    """

    name = "threshold"

    def __init__(self, b=0.0):
        self.b = b

    def make_layer(self, coef, intercept, activation):
        """Build a :class:`ThresholdLayer` (hidden ReLU layers only)."""
        if isinstance(self.b, bool) or not isinstance(self.b, Real) or not np.isfinite(self.b) or self.b < 0:
            raise ValueError(f"Threshold(b) needs a finite b >= 0; got b={self.b!r}.")
        if activation == "identity":
            raise ValueError(
                "Threshold selects the firing neurons of hidden layers; give the output layer "
                "another selection, e.g. selection=[Threshold(b), ..., 'dense']."
            )
        if activation != "relu":
            raise ValueError(
                f"Threshold computes the shifted ReLU max(z - b, 0); it needs activation='relu', "
                f"got activation={activation!r}."
            )
        return ThresholdLayer(coef, intercept, activation, self)


class ThresholdLayer(DenseLayer):
    """A dense ReLU layer whose output is the sparse set of entries with ``z > b``.

    Same interface as :class:`~fastfire.nn.layers.DenseLayer`; ``forward`` returns a CSR
    ActiveSet of the values ``z - b`` of the firing neurons.

    Attributes
    ----------
    firing_fraction : float or None
        Fraction of (sample, neuron) pairs that fired in the last forward pass.
    """

    def __init__(self, coef, intercept, activation, selector):
        super().__init__(coef, intercept, activation, selector)
        self.firing_fraction = None
        self._dense_out = None

    def forward(self, inputs, n_threads, training=False):
        """Shifted-ReLU outputs of the firing neurons, as a CSR ActiveSet."""
        dense = super().forward(inputs, n_threads, training).values  # relu(z)
        # For b >= 0, max(z - b, 0) = max(relu(z) - b, 0): one more fused pass.
        shift = np.full(self.n_out, -self.selector.b, dtype=np.float32)
        bias_act_forward(dense, shift, RELU, n_threads)
        n = dense.shape[0]
        indptr = np.empty(n + 1, dtype=np.int64)
        nonzero_indptr(dense, indptr, n_threads)
        nnz = int(indptr[-1])
        indices = np.empty(nnz, dtype=np.int32)
        values = np.empty(nnz, dtype=np.float32)
        nonzero_fill(dense, indptr, indices, values, n_threads)
        self.firing_fraction = nnz / dense.size if dense.size else 0.0
        self._dense_out = dense
        return ActiveSet(values, self.n_out, indptr=indptr, indices=indices)

    def activation_backward(self, outputs, grad, n_threads):
        """In place: keep the gradient of the firing entries only (the shifted ReLU's derivative)."""
        act_backward(self._dense_out[: grad.shape[0]], grad, RELU, n_threads)

    def release_buffers(self):
        """Drop work buffers and saved inputs."""
        super().release_buffers()
        self._dense_out = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_dense_out"] = None
        return state
