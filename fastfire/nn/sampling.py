"""Column-row sampling: approximate the products of dense layers during training.

The method of Adelman, Levy, Hakimi, Silberstein ("Faster Neural Network Training with
Approximate Tensor Operations", NeurIPS 2021): a product ``A @ B`` with inner dimension ``n`` is
replaced by ``k`` of its ``n`` column-row outer products, chosen by ``‖A[:, i]‖·‖B[i, :]‖``
(kernels in :mod:`fastfire._core._sampling`). Predictions are always exact.
"""

import numbers

import numpy as np

from fastfire._core._dense import bias_act_forward, column_sums, gemm
from fastfire._core._sampling import (
    SCHEMES,
    effective_k,
    sampled_matmul,
    scatter_columns,
    scatter_rows,
)
from fastfire.nn.layers import DenseLayer
from fastfire.nn.optimizers import OuterGrad
from fastfire.nn.selectors import Selector, register_selector

MODES = ("forward", "backward", "forward_exact_backward")
DROPPED = ("zero", "mean")

# A sampled product runs several short OpenMP regions (scores, draws, gathers, GEMM); below this
# many multiply-adds per thread they cost more than they save (each waits for its slowest thread).
_GRAIN_MACS = 1 << 18


@register_selector
class ColumnRowSampling(Selector):
    """Column-row sampled products in the training passes of a dense layer.

    Every product keeps ``k = min(max(⌊ratio·n⌋, minimal_k), n)`` of its ``n`` column-row pairs;
    ``k = n`` (or all-zero scores) computes the exact product. Prediction is exact.

    Parameters
    ----------
    scheme : {"bernoulli", "crs", "topk", "topk_estimated", "uniform"}, default="bernoulli"
        How pairs are chosen: ``"crs"`` draws ``k`` pairs with replacement with probabilities
        proportional to their norm products mixed with the uniform distribution (weight
        ``epsilon``) and scales them by ``1/(k·p)``; ``"bernoulli"`` keeps each pair
        independently with ``p_i = min(1, k·s_i/Σs)`` (same mixing), scaled by ``1/p_i``;
        ``"topk"`` keeps the ``k`` largest, unscaled; ``"topk_estimated"`` the same with the
        norms estimated on a random block of ``estimate_fraction`` of the rows; ``"uniform"``
        ``k`` pairs uniformly, scaled by ``n/k``. ``"crs"``, ``"bernoulli"`` and ``"uniform"``
        are unbiased.
    ratio : float in (0, 1], default=0.5
        Share of the pairs to keep.
    minimal_k : int, default=10
        Never keep fewer pairs than this (nor more than ``n``).
    mode : {"forward", "backward", "forward_exact_backward"}, default="forward"
        The three settings of the paper:

        - ``"forward"``: sample the forward product ``X @ W`` over the input features and
          back-propagate through the sample: the weight gradient is computed for the kept rows
          of ``W`` only (other rows get zero) and the input gradient for the kept input
          features only, so all three products of the layer shrink by ``k/n_in``;
        - ``"backward"``: exact forward; the input gradient ``delta @ Wᵀ`` is sampled over the
          output features and the weight gradient ``Xᵀ @ delta`` over the batch examples;
        - ``"forward_exact_backward"``: sampled forward product, exact gradients (computed
          as if the forward product had been exact).
    epsilon : float in [0, 1], default=0.1
        Weight of the uniform distribution mixed into the sampling probabilities.
    estimate_fraction : float in (0, 1], default=0.25
        Share of the rows on which ``"topk_estimated"`` computes its scores.
    dropped : {"zero", "mean"}, default="zero"
        What the forward product keeps of the dropped input features (``"forward"`` and
        ``"forward_exact_backward"`` modes with a top-k scheme): ``"zero"``, nothing (the
        paper); ``"mean"``, their batch mean: ``X @ W ≈ X[:, K] @ W[K] + mean(X[:, D]) @ W[D]``
        for the kept features ``K`` and the dropped ``D``, a correction shared by every row (a
        vector-matrix product). In the ``"forward"`` mode the gradients are those of this
        estimate: the dropped rows of ``W`` get the rank-one gradient
        ``mean(X[:, D]) ⊗ mean(delta)`` and the dropped inputs the gradient of their mean.
    factored_update : bool, default=True
        In the ``"backward"`` mode, hand a sampled weight gradient to the optimizer as its
        factors, the ``k`` kept rows of the input and of ``delta``
        (:class:`~fastfire.nn.optimizers.OuterGrad`): Adam then forms each block of it in
        cache right before updating that block and never writes the gradient matrix. False
        forms the gradient with a GEMM first (the same values up to rounding).
    random_state : int or None, default=None
        Seeds the sampling stream of each layer (together with the layer's shape, so layers of
        different shapes sharing one seed draw differently). None draws a seed from NumPy's
        global generator when the layer is built. Randomness is counter-based: results do not
        depend on the number of threads.

    Notes
    -----
    A first layer fed sparse (CSR) input computes its products exactly.

    In the ``"backward"`` mode the scores of the input gradient ``delta @ Wᵀ`` use column norms
    of ``W`` taken in the previous step's gather (the gather reads all of ``W`` anyway): they
    are one optimizer update stale, which saves a pass over ``W`` per step. Top-k then ranks
    by the previous weights' norms; the unbiased schemes stay unbiased (their probabilities
    are fixed before the draws and their scales match them).

    Examples
    --------
    >>> from fastfire import MLPClassifier
    >>> from fastfire.nn.sampling import ColumnRowSampling
    >>> clf = MLPClassifier(hidden_layer_sizes=(256,),
    ...                     selection=[ColumnRowSampling(ratio=0.3, random_state=0), "dense"])
    """

    name = "sampled"

    def __init__(self, scheme="bernoulli", ratio=0.5, minimal_k=10, mode="forward",
                 epsilon=0.1, estimate_fraction=0.25, random_state=None, dropped="zero",
                 factored_update=True):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {sorted(SCHEMES)}; got {scheme!r}.")
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be a float in (0, 1]; got {ratio!r}.")
        if (isinstance(minimal_k, bool) or not isinstance(minimal_k, numbers.Integral)
                or minimal_k < 1):
            raise ValueError(f"minimal_k must be an int >= 1; got {minimal_k!r}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}.")
        if not isinstance(epsilon, numbers.Real) or not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be a float in [0, 1]; got {epsilon!r}.")
        if not isinstance(estimate_fraction, numbers.Real) or not 0 < estimate_fraction <= 1:
            raise ValueError(f"estimate_fraction must be a float in (0, 1]; got {estimate_fraction!r}.")
        if random_state is not None and (isinstance(random_state, bool)
                                         or not isinstance(random_state, numbers.Integral)):
            raise ValueError(f"random_state must be an int or None; got {random_state!r}.")
        if dropped not in DROPPED:
            raise ValueError(f"dropped must be one of {list(DROPPED)}; got {dropped!r}.")
        if dropped == "mean" and (scheme not in ("topk", "topk_estimated") or mode == "backward"):
            raise ValueError(
                "dropped='mean' needs a top-k scheme ('topk', 'topk_estimated') and a mode that "
                f"samples the forward product; got scheme={scheme!r}, mode={mode!r}."
            )
        self.scheme = scheme
        self.ratio = float(ratio)
        self.minimal_k = int(minimal_k)
        self.mode = mode
        self.epsilon = float(epsilon)
        self.estimate_fraction = float(estimate_fraction)
        self.random_state = random_state
        self.dropped = dropped
        self.factored_update = bool(factored_update)

    def make_layer(self, coef, intercept, activation):
        """A :class:`SampledDenseLayer` computing with this selector."""
        return SampledDenseLayer(coef, intercept, activation, self)

    def layer_seed(self, n_in, n_out):
        """The 64-bit seed of a layer of shape ``(n_in, n_out)``."""
        if self.random_state is None:
            return int(np.random.randint(0, 2**62, dtype=np.int64))
        ss = np.random.SeedSequence([int(self.random_state) % 2**63, int(n_in), int(n_out)])
        return int(ss.generate_state(1, dtype=np.uint64)[0])


class SampledDenseLayer(DenseLayer):
    """A dense layer whose training products are column-row sampled (see :class:`ColumnRowSampling`).

    Same interface as :class:`~fastfire.nn.layers.DenseLayer`. Counts the multiply-adds of
    its training products in ``macs_done`` against ``macs_exact`` (what the exact products
    would have cost).
    """

    def __init__(self, coef, intercept, activation, selector):
        super().__init__(coef, intercept, activation, selector)
        self._scheme = SCHEMES[selector.scheme]
        self._seed = selector.layer_seed(*coef.shape)
        self._counter = 0
        self._sample = None  # n_kept of the forward sample, None when the forward was exact
        # dropped="mean": batch means of the dropped inputs (0 at kept ones), set by forward
        self._dropped_means = None
        # squared norms of the columns of coef, refreshed by the gather of each sampled input
        # gradient ("backward" mode) and used by the next one: scores one update stale
        self._coef_col_norms = np.zeros(coef.shape[1], dtype=np.float64)
        self._coef_col_norms_valid = False
        # "backward" mode: coef_grad is an OuterGrad over the kept examples when the weight
        # gradient is sampled (Adam applies it without forming it), else this array
        self._coef_grad_dense = self.coef_grad
        self._alloc(0)
        self.macs_done = 0
        self.macs_exact = 0

    def _alloc(self, batch):
        n_in, n_out = self.coef.shape
        width = max(n_in, n_out, batch, 1)
        self._idx = np.empty(width, dtype=np.int32)
        self._scale = np.empty(width, dtype=np.float32)
        self._a_buf = np.empty(max(batch * max(n_in, n_out), 1), dtype=np.float32)
        self._b_buf = np.empty(max(n_in * n_out, batch * n_out, 1), dtype=np.float32)
        self._grad_buf = np.empty(max(n_in * n_out, batch * max(n_in, n_out), 1), dtype=np.float32)
        self._batch_cap = batch
        self._wa_buf = np.empty(max(batch * n_in, 1), dtype=np.float32)
        self._wb_buf = np.empty(max(batch * n_out, 1), dtype=np.float32)
        self._means_buf = np.empty((1, n_in), dtype=np.float32)
        self._shift_buf = np.empty((1, max(n_in, n_out)), dtype=np.float32)
        self._bias_buf = np.empty(n_out, dtype=np.float32)

    def _threads(self, n, n_threads):
        """Threads for the sampled kernels of a batch of ``n`` (one for small products)."""
        return int(max(1, min(n_threads, n * self.n_in * self.n_out // _GRAIN_MACS)))

    def _product(self, A, B, C, trans_a, trans_b, k, alpha, n_threads, b_norms=None,
                 b_norms_valid=False, gather_only=False, a_buf=None, b_buf=None):
        """``C = alpha op(A) op(B)`` sampled (see ``sampled_matmul``); with ``gather_only`` a
        sampled product is left in the gather buffers and ``C`` is untouched (an exact one is
        always computed into ``C``). Returns ``(n_kept, exact)``."""
        self._counter += 1
        inner = A.shape[0] if trans_a else A.shape[1]
        if k >= inner:  # exact: the dense layer's own GEMM, bit for bit
            gemm(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=alpha, n_threads=n_threads)
            return inner, True
        s = self.selector
        m = A.shape[1] if trans_a else A.shape[0]
        p = B.shape[0] if trans_b else B.shape[1]
        n_threads = int(max(1, min(n_threads, m * inner * p // _GRAIN_MACS)))
        n_kept, exact = sampled_matmul(
            A, B, C, trans_a, trans_b, self._scheme, k, self._idx, self._scale,
            self._a_buf if a_buf is None else a_buf, self._b_buf if b_buf is None else b_buf,
            s.epsilon, s.estimate_fraction, self._seed, self._counter, alpha, n_threads,
            b_norms, b_norms_valid, gather_only,
        )
        if exact and gather_only:  # all-zero scores: nothing was gathered nor multiplied
            gemm(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=alpha, n_threads=n_threads)
        return n_kept, exact

    def forward(self, inputs, n_threads, training=False):
        s = self.selector
        if not training or not inputs.is_dense or s.mode == "backward":
            self._sample = None
            if training:
                macs = inputs.n_samples * self.n_in * self.n_out
                self.macs_done += macs
                self.macs_exact += macs
            return super().forward(inputs, n_threads, training)
        n = inputs.n_samples
        if n > self._batch_cap:
            self._alloc(n)
        self._out, out = self._rows(self._out, n)
        k = effective_k(self.n_in, s.ratio, s.minimal_k)
        n_kept, exact = self._product(inputs.values, self.coef, out, False, False, k, 1.0, n_threads)
        bias = self.intercept
        self._dropped_means = None
        if not exact and getattr(s, "dropped", "zero") == "mean":
            bias = self._mean_correction(inputs.values, n_kept, n_threads)
        bias_act_forward(out, bias, self._act_code, self._threads(n, n_threads))
        self._sample = None if exact or s.mode == "forward_exact_backward" else n_kept
        self._inputs = inputs
        self.macs_done += n * n_kept * self.n_out
        self.macs_exact += n * self.n_in * self.n_out
        return inputs.from_dense(out)

    def _mean_correction(self, X, n_kept, n_threads):
        """The bias plus ``mean(X[:, D]) @ W[D]`` over the dropped inputs ``D``; keeps the means
        (zero at the kept inputs) for the backward pass."""
        means = self._means_buf
        column_sums(X, means[0], 1.0 / X.shape[0], 1)
        means[0, self._idx[:n_kept]] = 0.0
        shift = self._shift_buf[:, : self.n_out]
        gemm(means, self.coef, shift, n_threads=self._threads(1, n_threads))
        np.add(shift[0], self.intercept, out=self._bias_buf)
        self._dropped_means = means[0]
        return self._bias_buf

    def backward(self, delta, n_threads, need_input_grad=True):
        s = self.selector
        inputs = self._inputs
        self.coef_grad = self._coef_grad_dense
        n = delta.shape[0]
        exact_macs = n * self.n_in * self.n_out * (2 if need_input_grad else 1)
        if s.mode == "forward" and self._sample is not None:
            n_threads = self._threads(n, n_threads)
            n_kept = self._sample
            x_s = self._a_buf[: n * n_kept].reshape(n, n_kept)        # scaled kept columns of X
            w_s = self._b_buf[: n_kept * self.n_out].reshape(n_kept, self.n_out)  # kept rows of W
            g = self._grad_buf[: n_kept * self.n_out].reshape(n_kept, self.n_out)
            means = self._dropped_means
            gemm(x_s, delta, g, trans_a=True, alpha=1.0 / n, n_threads=n_threads)
            column_sums(delta, self.intercept_grad, 1.0 / n, n_threads)
            # mean correction: d(mean(X[:, D]) @ W[D]) / dW[D] = mean(X[:, D]) ⊗ mean(delta)
            scatter_rows(g, self._idx, self.coef_grad, n_threads, means,
                         None if means is None else self.intercept_grad)
            self.macs_exact += exact_macs
            self.macs_done += n * n_kept * self.n_out * (2 if need_input_grad else 1)
            if not need_input_grad:
                return None
            tmp = self._grad_buf[: n * n_kept].reshape(n, n_kept)
            gemm(delta, w_s, tmp, trans_b=True, n_threads=n_threads)
            self._input_grad, input_grad = self._rows(self._input_grad, n)
            fill = None
            if means is not None:  # every row's dropped inputs: W[D] @ mean(delta)
                fill = self._shift_buf[:, : self.n_in]
                gemm(self.intercept_grad.reshape(1, -1), self.coef, fill, trans_b=True,
                     n_threads=self._threads(1, n_threads))
                fill = fill[0]
            scatter_columns(tmp, self._idx, self._scale, input_grad, n_threads, fill)
            return input_grad
        if s.mode != "backward" or not inputs.is_dense:
            self.macs_exact += exact_macs
            self.macs_done += exact_macs
            return super().backward(delta, n_threads, need_input_grad)
        # mode "backward": weight gradient sampled over the batch, input gradient over outputs
        if n > self._batch_cap:
            self._alloc(n)
        k_batch = effective_k(n, s.ratio, s.minimal_k)
        factored = getattr(s, "factored_update", True)
        n_kept, exact = self._product(inputs.values, delta, self.coef_grad, True, False, k_batch,
                                      1.0 / n, n_threads, gather_only=factored,
                                      a_buf=self._wa_buf, b_buf=self._wb_buf)
        if factored and not exact:  # the kept examples' rows of X (scaled) and of delta
            self.coef_grad = OuterGrad(
                self._wa_buf[: n_kept * self.n_in].reshape(n_kept, self.n_in),
                self._wb_buf[: n_kept * self.n_out].reshape(n_kept, self.n_out),
                1.0 / n, self._coef_grad_dense, n_threads,
            )
        column_sums(delta, self.intercept_grad, 1.0 / n, n_threads)
        self.macs_exact += exact_macs
        self.macs_done += n_kept * self.n_in * self.n_out
        if not need_input_grad:
            return None
        self._input_grad, input_grad = self._rows(self._input_grad, n)
        k_out = effective_k(self.n_out, s.ratio, s.minimal_k)
        n_kept, exact = self._product(delta, self.coef, input_grad, False, True, k_out, 1.0,
                                      n_threads, self._coef_col_norms, self._coef_col_norms_valid)
        self._coef_col_norms_valid = not exact
        self.macs_done += n * n_kept * self.n_in
        return input_grad

    def release_buffers(self):
        super().release_buffers()
        self._alloc(0)
        self._coef_col_norms_valid = False
        self._dropped_means = None
        self.coef_grad = self._coef_grad_dense

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_coef_col_norms" not in state:  # pickled before the norm cache existed
            self._coef_col_norms = np.zeros(self.coef.shape[1], dtype=np.float64)
            self._coef_col_norms_valid = False
        if "_coef_grad_dense" not in state:  # pickled before the factored weight gradient
            self._coef_grad_dense = self.coef_grad
        if "_wa_buf" not in state or "_means_buf" not in state:  # older buffers
            self._dropped_means = None
            self._alloc(0)

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_idx", "_scale", "_a_buf", "_b_buf", "_grad_buf", "_wa_buf", "_wb_buf"):
            state[key] = state[key][:1].copy()
        state["coef_grad"] = self._coef_grad_dense
        state["_batch_cap"] = 0
        state["_dropped_means"] = None
        state["_coef_col_norms_valid"] = False
        return state
