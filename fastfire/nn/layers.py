"""Dense layers computed through the Cython kernels, exchanging ActiveSets."""

import numpy as np

from fastfire._core._dense import (
    ACTIVATIONS,
    act_backward,
    bias_act_forward,
    column_sums,
    csr_matmul,
    csr_t_matmul,
    gemm,
)


class DenseLayer:
    """A fully connected layer ``out = activation(inputs @ coef + intercept)``.

    The layer owns its parameters (``coef`` of shape ``(n_in, n_out)``, the layout of
    scikit-learn's ``coefs_``, and ``intercept``), their gradients and its work buffers. The
    buffers grow to the largest batch seen and smaller batches use views of them, so a
    training step allocates nothing.

    Parameters
    ----------
    coef : ndarray of shape (n_in, n_out), float32, C-contiguous
        Weights; used in place (shared with the estimator's ``coefs_``).
    intercept : ndarray of shape (n_out,), float32
        Biases; used in place.
    activation : {"identity", "relu", "logistic", "tanh"}
        Activation applied after the affine map.
    selector : Selector
        Chooses the active output neurons (only ``Dense`` is implemented by this layer).
    """

    def __init__(self, coef, intercept, activation, selector):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}.")
        self.coef = coef
        self.intercept = intercept
        self.activation = activation
        self.selector = selector
        self.coef_grad = np.zeros_like(coef)
        self.intercept_grad = np.zeros_like(intercept)
        self._act_code = ACTIVATIONS[activation]
        self._inputs = None
        self._out = np.empty((0, coef.shape[1]), dtype=np.float32)
        self._input_grad = np.empty((0, coef.shape[0]), dtype=np.float32)

    @property
    def n_in(self):
        return self.coef.shape[0]

    @property
    def n_out(self):
        return self.coef.shape[1]

    @staticmethod
    def _rows(buffer, n):
        """A C-contiguous view of the first ``n`` rows of ``buffer``, grown when too small."""
        if buffer.shape[0] < n:
            buffer = np.empty((n, buffer.shape[1]), dtype=np.float32)
        return buffer, buffer[:n]

    def forward(self, inputs, n_threads, training=False):
        """Compute the layer's output for an input ActiveSet.

        Parameters
        ----------
        inputs : ActiveSet
            Dense values or a sparse (CSR) set of active input features.
        n_threads : int
            OpenMP threads for the kernels.
        training : bool, default=False
            Keep the inputs for :meth:`backward`.

        Returns
        -------
        outputs : ActiveSet
            Dense activations ``(n_samples, n_out)``; a view of the layer's buffer, valid until
            the next forward call.
        """
        active = self.selector.select(self, inputs, training)
        if active is not None:
            raise NotImplementedError(
                f"{type(self.selector).__name__} returned an active set, but DenseLayer computes "
                "every neuron; sparse selectors bring their own layer kernels."
            )
        n = inputs.n_samples
        self._out, out = self._rows(self._out, n)
        if inputs.is_dense:
            gemm(inputs.values, self.coef, out, n_threads=n_threads)
        else:
            csr_matmul(inputs.indptr, inputs.indices, inputs.values, self.coef, out, 0.0, n_threads)
        bias_act_forward(out, self.intercept, self._act_code, n_threads)
        self._inputs = inputs if training else None
        return inputs.from_dense(out)

    def backward(self, delta, n_threads, need_input_grad=True):
        """Gradients of the mean loss from ``delta`` = dLoss/d(pre-activation), summed over the batch.

        Fills ``coef_grad`` (``inputsᵀ·delta / n``) and ``intercept_grad`` (column means of
        ``delta``). The L2 term is added by the optimizer.

        Parameters
        ----------
        delta : ndarray of shape (n_samples, n_out), float32
            Unscaled per-sample gradient with respect to this layer's pre-activation.
        n_threads : int
            OpenMP threads for the kernels.
        need_input_grad : bool, default=True
            Also return dLoss/d(inputs) (false for the first layer).

        Returns
        -------
        input_grad : ndarray of shape (n_samples, n_in) or None
            Per-sample gradient with respect to this layer's input values.
        """
        inputs = self._inputs
        n = delta.shape[0]
        scale = 1.0 / n
        if inputs.is_dense:
            gemm(inputs.values, delta, self.coef_grad, trans_a=True, alpha=scale, n_threads=n_threads)
        else:
            csr_t_matmul(
                inputs.indptr, inputs.indices, inputs.values, delta, self.coef_grad,
                scale, 0.0, n_threads,
            )
        column_sums(delta, self.intercept_grad, scale, n_threads)
        if not need_input_grad:
            return None
        self._input_grad, input_grad = self._rows(self._input_grad, n)
        gemm(delta, self.coef, input_grad, trans_b=True, n_threads=n_threads)
        return input_grad

    def activation_backward(self, outputs, grad, n_threads):
        """In place: turn dLoss/d(outputs) into dLoss/d(pre-activation).

        Parameters
        ----------
        outputs : ActiveSet
            This layer's output from the forward pass.
        grad : ndarray of shape (n_samples, n_out), float32
            dLoss/d(outputs), overwritten.
        n_threads : int
        """
        act_backward(outputs.values, grad, self._act_code, n_threads)

    def release_buffers(self):
        """Drop work buffers and saved inputs (before pickling, or to free memory)."""
        self._inputs = None
        self._out = self._out[:0]
        self._input_grad = self._input_grad[:0]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_inputs"] = None
        state["_out"] = np.empty((0, self.n_out), dtype=np.float32)
        state["_input_grad"] = np.empty((0, self.n_in), dtype=np.float32)
        return state
