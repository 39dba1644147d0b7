"""Stochastic optimizers (scikit-learn's arithmetic) over fused Cython update kernels.

Parameters are updated in place through flat views, with the L2 penalty folded into the
kernel (``grad + l2 * param``) so each step is one pass over the parameters.

A layer that computed gradients for a few rows only (sparse layers such as LSH) reports them as
a :class:`RowGrad`; those parameters are updated lazily, row by row (``adam_step_rows`` with
per-row step counters and exact bias correction, ``sgd_step_rows``): rows without gradient,
and their optimizer state, are not touched, so a step costs O(touched rows), never a pass over
all weights.

An active-set layer over a dense input (the LSH output layer) reports a :class:`BatchRowGrad`
instead: the recipe of its row gradients, which the optimizer computes row by row in the
update's own pass, the row's bias included (``adam_step_grad_rows``, ``sgd_step_grad_rows``),
so the gradient is never written out. Reading ``values`` materialises it (the same bits).
"""

import numpy as np

from fastfire._core._active import active_input_grad_rows, grad_rows_dense
from fastfire._core._optim import (
    adam_step,
    adam_step_grad_rows,
    adam_step_outer,
    adam_step_rows,
    adam_step_size_table,
    outer_product,
    sgd_step,
    sgd_step_grad_rows,
    sgd_step_rows,
)


def _flat(array):
    return array.reshape(-1)


class RowGrad:
    """Gradient of some rows of a parameter.

    Parameters
    ----------
    rows : ndarray of int32
        Distinct row ids.
    values : ndarray of shape (len(rows), p), float32
        Row ``k`` is the gradient of row ``rows[k]``.
    layout : {"T", "rows", "col"}
        Which rows: of ``param.T`` (a Fortran-ordered ``(n_in, n_out)`` coef stored neuron-major,
        rows are neurons), of ``param`` itself (a C-ordered coef, rows are input features) or
        of ``param.reshape(-1, 1)`` (a bias vector).
    """

    __slots__ = ("rows", "values", "layout")

    def __init__(self, rows, values, layout):
        self.rows = rows
        self.values = values
        self.layout = layout

    def view(self, array):
        """The C-contiguous row view of ``array`` (a parameter or its optimizer state)."""
        if self.layout == "T":
            out = array.T
        elif self.layout == "rows":
            out = array
        else:
            out = array.reshape(-1, 1)
        if not out.flags.c_contiguous:
            raise ValueError("RowGrad: the parameter's row view is not C-contiguous.")
        return out


class BatchRowGrad(RowGrad):
    """Gradient of some rows of a neuron-major weight matrix (layout ``"T"``) and of the matching
    biases, described by the layer's batch rather than computed.

    Row ``s`` of the gradient (row ``rows[s]`` of ``param.T``) is
    ``scale * sum_q delta[t_entries[q]] * X[t_sample[q]]`` over ``q`` in
    ``t_indptr[s]:t_indptr[s + 1]`` (the layout of ``_active.touched_rows``); the
    bias gradient is ``scale * sum_e delta[e]`` (:attr:`bias_grad`, a :class:`RowGrad` of
    layout ``"col"``). :class:`Adam` and :class:`SGD` compute each row in the pass that updates
    it; ``values`` computes them all (``_active.grad_rows_dense``), for any other reader.

    Parameters
    ----------
    rows : ndarray of int32
        Distinct row ids.
    X : ndarray of shape (n, d), float32
        The layer's input batch.
    delta : ndarray of shape (nnz,), float32
        Gradient of the loss with respect to each active entry.
    indptr : ndarray of int64
        The active set's row offsets (``n + 1``).
    slot, t_indptr, t_entries, t_sample : ndarray
        From ``_active.touched_rows``.
    scale : float
        Factor of the gradient (``1 / n``).
    n_threads : int
        Threads used to materialise ``values``.
    """

    __slots__ = ("X", "delta", "indptr", "slot", "t_indptr", "t_entries", "t_sample",
                 "scale", "n_threads", "bias_grad", "_computed", "input_grad", "partial")

    def __init__(self, rows, X, delta, indptr, slot, t_indptr, t_entries, t_sample, scale,
                 n_threads):
        self.rows = rows
        self.layout = "T"
        self.X, self.delta, self.indptr, self.slot = X, delta, indptr, slot
        self.t_indptr, self.t_entries, self.t_sample = t_indptr, t_entries, t_sample
        self.scale = scale
        self.n_threads = n_threads
        self._computed = None
        self.bias_grad = _BatchBiasGrad(self)
        self.input_grad = self.partial = None

    def request_input_grad(self, input_grad, partial):
        """Ask the optimizer to also write the layer's input gradient, ``sum_e delta[e] * W[r]``
        over each sample's entries, into ``input_grad`` ``(n, d)`` from the rows before it
        updates them (``partial``: the other threads' scratch, ``(n_threads - 1, n, d)``)."""
        self.input_grad, self.partial = input_grad, partial

    def write_input_grad(self, Wt, n_threads):
        """Write the requested input gradient from the neuron-major weights ``Wt`` (for an
        optimizer that does not fuse it into its update; call before the update)."""
        active_input_grad_rows(self.delta, Wt, self.rows, self.t_indptr, self.t_entries,
                               self.t_sample, self.input_grad, self.partial, n_threads)

    @property
    def pending(self):
        """True until ``values`` has been read (an optimizer may then fuse the computation)."""
        return self._computed is None

    def _compute(self):
        if self._computed is None:
            nt = self.rows.shape[0]
            grad = np.empty((nt, self.X.shape[1]), dtype=np.float32)
            bias_grad = np.empty(nt, dtype=np.float32)
            grad_rows_dense(self.X, self.delta, self.indptr, self.slot, self.t_indptr,
                            self.t_entries, self.t_sample, grad, bias_grad, self.scale,
                            False, self.n_threads)
            self._computed = (grad, bias_grad.reshape(-1, 1))
        return self._computed

    @property
    def values(self):
        """The ``(len(rows), d)`` gradient rows (computed on first access)."""
        return self._compute()[0]

    def fused_args(self):
        """The batch arguments of ``adam_step_grad_rows`` / ``sgd_step_grad_rows``."""
        return (self.rows, self.X, self.delta, self.t_indptr, self.t_entries, self.t_sample,
                self.scale)

    def fused_outputs(self):
        """The input-gradient keyword arguments of the fused row steps."""
        return {"input_grad": self.input_grad, "partial": self.partial}


class _BatchBiasGrad(RowGrad):
    """The bias part of a :class:`BatchRowGrad` (layout ``"col"``)."""

    __slots__ = ("weights",)

    def __init__(self, weights):
        self.rows = weights.rows
        self.layout = "col"
        self.weights = weights

    @property
    def values(self):
        """The ``(len(rows), 1)`` bias gradient (computed on first access)."""
        return self.weights._compute()[1]


def _fused_bias_index(grads, i):
    """Index in ``grads`` of the bias part of ``grads[i]`` when it is a pending
    :class:`BatchRowGrad` whose bias is stepped too, else None."""
    g = grads[i]
    if not isinstance(g, BatchRowGrad) or not g.pending:
        return None
    for j, other in enumerate(grads):
        if other is g.bias_grad:
            return j
    return None


def _write_requested_input_grad(g, param, n_threads):
    """Before an unfused row update: the input gradient a :class:`BatchRowGrad` was asked for."""
    if isinstance(g, BatchRowGrad) and g.input_grad is not None:
        g.write_input_grad(g.view(param), n_threads)


class Adam:
    """Adam (Kingma & Ba) with scikit-learn's bias-corrected step size.

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays (C-contiguous float32), updated in place.
    learning_rate_init : float
    beta_1, beta_2, epsilon : float
    """

    def __init__(self, params, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate_init
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.t = 0
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]
        self.row_ts = [None] * len(params)  # per-row step counters of lazily updated params

    def step(self, params, grads, l2s, n_threads, indices=None, advance=True):
        """One update of every parameter from its gradient (``l2s``: per-array L2 factor).

        Returns the squared norm, before the update, of the penalised arrays (``l2 > 0``; for a
        :class:`RowGrad`, of its rows): the loss's L2 term, computed in the update's own pass.
        ``indices``: update only these parameters (by position; None: all); ``advance``: count
        a new step (False for the remaining parameters of a step done in several calls).
        """
        if advance:
            self.t += 1
            self.learning_rate = (
                self.learning_rate_init
                * np.sqrt(1 - self.beta_2**self.t)
                / (1 - self.beta_1**self.t)
            )
        squared_norm = 0.0
        if not hasattr(self, "row_ts"):
            self.row_ts = [None] * len(params)
        fused = set()                     # biases already stepped with their weight rows
        for i in range(len(params)) if indices is None else indices:
            p, g, m, v, l2 = params[i], grads[i], self.ms[i], self.vs[i], l2s[i]
            if i in fused:
                continue
            j = _fused_bias_index(grads, i)
            if j is not None:
                norm, bias_norm = adam_step_grad_rows(
                    g.view(p), g.view(m), g.view(v), self._row_counts(i, g.view(p)),
                    params[j], self.ms[j], self.vs[j], self._row_counts(j, params[j]),
                    *g.fused_args(), self.learning_rate_init, self.beta_1, self.beta_2,
                    self.epsilon, l2, l2s[j], n_threads, self._step_sizes(), **g.fused_outputs(),
                )
                fused.add(j)
                if l2s[j] > 0:
                    squared_norm += bias_norm
            elif isinstance(g, RowGrad):
                _write_requested_input_grad(g, p, n_threads)
                self._row_counts(i, g.view(p))
                norm = adam_step_rows(
                    g.view(p), g.values, g.rows, g.view(m), g.view(v), self.row_ts[i],
                    self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon, l2, n_threads,
                    self._step_sizes(),
                )
            elif isinstance(g, OuterGrad):
                norm = adam_step_outer(p, g.left, g.right, g.alpha, m, v, self.learning_rate,
                                       self.beta_1, self.beta_2, self.epsilon, l2, n_threads)
            else:
                norm = adam_step(_flat(p), _flat(g), _flat(m), _flat(v), self.learning_rate,
                                 self.beta_1, self.beta_2, self.epsilon, l2, n_threads)
            if l2 > 0:
                squared_norm += norm
        return squared_norm

    def _row_counts(self, i, rows_view):
        """Per-row step counters of parameter ``i`` (created at the first row-wise step)."""
        if self.row_ts[i] is None:
            self.row_ts[i] = np.zeros(rows_view.shape[0], dtype=np.int64)
        return self.row_ts[i]

    def _step_sizes(self):
        """Lazy Adam's step sizes by row count, covering counts up to ``self.t`` (no row has
        been updated more often than the optimizer has stepped), regrown by doubling."""
        key = (self.learning_rate_init, self.beta_1, self.beta_2)
        table = getattr(self, "_step_size_table", None)
        if table is None or len(table) <= self.t or self._step_size_key != key:
            table = adam_step_size_table(*key, max(1024, 2 * self.t))
            self._step_size_table, self._step_size_key = table, key
        return table

    def iteration_ends(self, time_step):
        """Adam has no learning-rate schedule."""

    def trigger_stopping(self, msg, verbose):
        """No improvement: stop (Adam has no adaptive schedule to fall back on)."""
        if verbose:
            print(msg + " Stopping.")
        return True


class SGD:
    """SGD with momentum / Nesterov and scikit-learn's learning-rate schedules.

    Parameters
    ----------
    params : list of ndarray
    learning_rate_init : float
    lr_schedule : {"constant", "invscaling", "adaptive"}
    momentum : float
    nesterov : bool
    power_t : float
    """

    def __init__(self, params, learning_rate_init=0.1, lr_schedule="constant", momentum=0.9,
                 nesterov=True, power_t=0.5):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = momentum
        self.nesterov = nesterov
        self.power_t = power_t
        self.velocities = [np.zeros_like(p) for p in params]

    def step(self, params, grads, l2s, n_threads, indices=None, advance=True):
        """One update of every parameter from its gradient (``l2s``: per-array L2 factor).

        Returns the squared norm of the penalised arrays before the update; ``indices`` and
        ``advance`` as :meth:`Adam.step` (SGD keeps no step count).
        """
        squared_norm = 0.0
        fused = set()                     # biases already stepped with their weight rows
        for i in range(len(params)) if indices is None else indices:
            p, g, vel, l2 = params[i], grads[i], self.velocities[i], l2s[i]
            if i in fused:
                continue
            j = _fused_bias_index(grads, i)
            if j is not None:
                norm, bias_norm = sgd_step_grad_rows(
                    g.view(p), g.view(vel), params[j], self.velocities[j], *g.fused_args(),
                    self.learning_rate, self.momentum, self.nesterov, l2, l2s[j], n_threads,
                    **g.fused_outputs(),
                )
                fused.add(j)
                if l2s[j] > 0:
                    squared_norm += bias_norm
            elif isinstance(g, RowGrad):
                _write_requested_input_grad(g, p, n_threads)
                norm = sgd_step_rows(g.view(p), g.values, g.rows, g.view(vel), self.learning_rate,
                                     self.momentum, self.nesterov, l2, n_threads)
            else:
                norm = sgd_step(_flat(p), _flat(g), _flat(vel), self.learning_rate, self.momentum,
                                self.nesterov, l2, n_threads)
            if l2 > 0:
                squared_norm += norm
        return squared_norm

    def iteration_ends(self, time_step):
        """Apply the ``invscaling`` schedule after an epoch (``time_step``: samples seen)."""
        if self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        """No improvement: divide an adaptive learning rate by 5, or stop."""
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class OuterGrad:
    """A weight gradient kept as its factors: ``alpha * left.T @ right``.

    A layer that samples its weight gradient over ``k`` examples of the batch reports it this
    way (``left``: the ``k`` kept input rows, scaled; ``right``: their ``delta`` rows). Adam
    applies it without ever writing the gradient matrix (``adam_step_outer``); any other
    consumer gets the array formed in ``out`` on first use (:meth:`toarray`, ``reshape``,
    ``np.asarray``), with the same arithmetic.

    Parameters
    ----------
    left : ndarray of shape (k, n_rows), float32, C-contiguous
    right : ndarray of shape (k, p), float32, C-contiguous
    alpha : float
    out : ndarray of shape (n_rows, p), float32, C-contiguous
        Where the gradient is formed when an array is asked for.
    n_threads : int, default=1
        Threads for forming it.
    """

    __slots__ = ("left", "right", "alpha", "out", "n_threads", "_formed")

    def __init__(self, left, right, alpha, out, n_threads=1):
        if left.shape[0] != right.shape[0] or out.shape != (left.shape[1], right.shape[1]):
            raise ValueError(
                f"OuterGrad: left {left.shape}, right {right.shape} and out {out.shape} do not "
                "agree (need (k, n_rows), (k, p) and (n_rows, p))."
            )
        self.left = left
        self.right = right
        self.alpha = float(alpha)
        self.out = out
        self.n_threads = int(n_threads)
        self._formed = False

    @property
    def shape(self):
        return self.out.shape

    def toarray(self):
        """The gradient as an array (``out``, formed on the first call)."""
        if not self._formed:
            outer_product(self.left, self.right, self.out, self.alpha, self.n_threads)
            self._formed = True
        return self.out

    def reshape(self, *shape):
        """``toarray().reshape(*shape)`` (lets array consumers such as SGD take it as is)."""
        return self.toarray().reshape(*shape)

    def __array__(self, dtype=None, copy=None):
        out = self.toarray()
        return out if dtype is None else out.astype(dtype)
