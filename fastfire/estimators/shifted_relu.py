"""Two-layer shifted-ReLU networks trained by gradient descent, with correlation trees.

``ShiftedReLURegressor`` and ``ShiftedReLUClassifier`` train the model of Song, Yang,
Zhang (NeurIPS 2021) and Alman et al. (NeurIPS 2023)::

    f(x) = (1/√m) Σ_r a_r σ_b(<w_r, x>),   σ_b(z) = max(z − b, 0)   (or z·1[z > b])

with fixed output signs ``a_r ∈ {−1, +1}`` (one sign vector per output), trainable
``w_r`` initialised ``N(0, I)``, inputs scaled to unit norm, the squared loss
``L = Σ_i ||f(x_i) − y_i||² / (2 n)`` and full-batch gradient descent. With
``solver="tree"`` each iteration finds the firing neurons (``<w_r, x_i> > b``) with
:class:`fastfire.nn.corrtree.CorrelationTree` and updates the correlations through the
Gram matrix, never touching the ``m × d`` weights; ``solver="dense"`` does the same
iteration with BLAS. Both follow the same trajectory (up to float32 rounding).
"""

import math
import signal
import threading
import time
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.linalg import blas as scipy_blas
from scipy.special import ndtr
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from fastfire._core._openmp import effective_n_threads
from fastfire.nn.corrtree import SERIAL_BELOW, CorrelationTree

__all__ = ["ShiftedReLUClassifier", "ShiftedReLURegressor", "choose_solver", "estimate_iteration_seconds"]

# ---------------------------------------------------------------------------------------------
# cost model of one gradient-descent step (seconds), fitted with
# `python bench/bench_corrtree.py --fit-cost grid.json ...` (non-negative least squares on the
# relative error) to the 32 configurations n in {128, 512}, d in {64, 1024}, m = 2^12..2^20
# (2 threads) of bench/RESULTS-corrtree.md, measured on a 2-core AMD EPYC shared with other
# jobs (load average 3-6):
#   dense: COST_DENSE * n_b * m * d + COST_DENSE_ELEM * n_b * m + COST_DENSE_FIXED
#          (two float32 GEMMs; the element-wise passes over the n_b x m activations)
#   tree:  COST_TREE_PAIR * n * nnz + COST_TREE_ELEM * n * m + COST_TREE_FIXED
#          (ΔC = K coef over the nnz = n_b * m * p firing pairs; queries, transposition and
#          tree repair, about two passes over C), p = P(N(0, s²) > b), s² = mean ||x||²
#   tree preprocessing: one GEMM (C = X W0^T), about half a dense step.
# Median |predicted/measured - 1|: 0.11 (tree), 0.27 (dense). The rule picks the measured faster
# solver in 30 of 32 configurations; the two misses are m = 2^12 with d = 64 (measured
# dense/tree ratios 0.48 and 0.92), where fixed per-step overheads dominate both solvers.
COST_DENSE = 5.1e-11
COST_DENSE_ELEM = 1.57e-8
COST_DENSE_FIXED = 0.068
COST_TREE_PAIR = 2.7e-10
COST_TREE_ELEM = 3.95e-9
COST_TREE_FIXED = 0.071


def estimate_iteration_seconds(solver, n_samples, n_neurons, n_features, firing_fraction,
                               batch_size=None):
    """Predicted seconds of one gradient step of ``solver`` ("tree" or "dense").

    See the module constants for the formula and where the constants come from.
    """
    n, m, d = float(n_samples), float(n_neurons), float(n_features)
    n_b = float(min(batch_size or n_samples, n_samples))
    if solver == "dense":
        return COST_DENSE * n_b * m * d + COST_DENSE_ELEM * n_b * m + COST_DENSE_FIXED
    nnz = n_b * m * firing_fraction
    return COST_TREE_PAIR * n * nnz + COST_TREE_ELEM * n * m + COST_TREE_FIXED


def choose_solver(n_samples, n_neurons, n_features, firing_fraction, max_iter, batch_size=None):
    """``"tree"`` or ``"dense"``: whichever the cost model predicts faster over ``max_iter`` epochs.

    The tree pays one GEMM of preprocessing (``C = X W0^T``) up front.
    """
    n_b = min(batch_size or n_samples, n_samples)
    steps = max_iter * math.ceil(n_samples / n_b)
    dense = steps * estimate_iteration_seconds("dense", n_samples, n_neurons, n_features,
                                               firing_fraction, batch_size)
    tree = (0.5 * (estimate_iteration_seconds("dense", n_samples, n_neurons, n_features,
                                              firing_fraction) - COST_DENSE_FIXED)
            + steps * estimate_iteration_seconds("tree", n_samples, n_neurons, n_features,
                                                 firing_fraction, batch_size))
    return "tree" if tree < dense else "dense"


class _StopOnInterrupt:
    """Turn the first Ctrl-C into a flag checked at the end of each iteration.

    A second Ctrl-C raises KeyboardInterrupt as usual. Only in the main thread (signal
    handlers cannot be installed elsewhere); in other threads this does nothing.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # e.g. embedded interpreters
                self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _normalize_rows(X):
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    norms[norms == 0] = 1.0
    return X / norms[:, None].astype(X.dtype)


class _BaseShiftedReLU(BaseEstimator):
    _parameter_constraints = {
        "n_neurons": [Interval(Integral, 1, None, closed="left")],
        "threshold": [Interval(Real, None, None, closed="neither"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "solver": [StrOptions({"tree", "dense", "auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "normalize": ["boolean"],
        "activation": [StrOptions({"shifted_relu", "gated"})],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
        "verbose": ["verbose"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        n_neurons=1024,
        *,
        threshold=None,
        learning_rate="auto",
        max_iter=200,
        solver="auto",
        batch_size=None,
        normalize=True,
        activation="shifted_relu",
        random_state=None,
        n_jobs=None,
        verbose=0,
        tol=1e-4,
        n_iter_no_change=10,
    ):
        self.n_neurons = n_neurons
        self.threshold = threshold
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.solver = solver
        self.batch_size = batch_size
        self.normalize = normalize
        self.activation = activation
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change

    # ------------------------------------------------------------------ training
    def _prepare_X(self, X):
        X = np.asarray(X, dtype=np.float32)
        if self.normalize:
            X = _normalize_rows(X)
        return np.ascontiguousarray(X, dtype=np.float32)

    def _fit_targets(self, X, Y):
        """Train on float32 X (n, d) (already normalised) and Y (n, q)."""
        if self.n_jobs == 0:
            raise ValueError("The 'n_jobs' parameter must not be 0; use None, -1 or a positive int.")
        n, d = X.shape
        # tiny problems run on one thread (waking a team costs more than the work)
        n_threads = effective_n_threads(self.n_jobs) if n * self.n_neurons >= SERIAL_BELOW else 1
        q = Y.shape[1]
        m = self.n_neurons
        b = float(np.sqrt(0.4 * np.log(m))) if self.threshold is None else float(self.threshold)
        # firing probability at initialisation: <w, x> ~ N(0, ||x||^2)
        sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)
        norms = np.sqrt(sq)
        p = float(np.mean(np.where(norms > 0, ndtr(-b / np.where(norms > 0, norms, 1.0)), 0.0)))
        if self.learning_rate == "auto":
            # GD on the squared loss is stable while eta * lambda_max(H / n) < 2 with the NTK
            # H_ij = <x_i, x_j> (1/m) Σ_r 1[r fires on i and j]; lambda_max <= trace(H)/n.
            curvature = float(np.mean(sq * np.where(norms > 0, ndtr(-b / np.where(norms > 0, norms, 1.0)), 0.0)))
            eta = 1.0 / max(curvature, 1e-12)
        else:
            eta = float(self.learning_rate)
        n_b = n if self.batch_size is None else min(int(self.batch_size), n)
        solver = self.solver
        if solver == "auto":
            solver = choose_solver(n, m, d, p, self.max_iter, n_b)
        self.threshold_ = b
        self.learning_rate_ = eta
        self.solver_ = solver

        rng = check_random_state(self.random_state)
        gen = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))
        W = gen.standard_normal((m, d), dtype=np.float32)
        a = (2 * gen.integers(0, 2, size=(m, q)) - 1).astype(np.float32)
        gated = self.activation == "gated"
        inv_sqrt_m = np.float32(1.0 / np.sqrt(m))

        tree = dense_buf = None
        t0 = time.perf_counter()
        if solver == "dense":
            dense_buf = np.empty((n_b, m), dtype=np.float32)
        if solver == "tree":
            tree = CorrelationTree(X, W, n_jobs=n_threads, copy=False)
            tree.K  # noqa: B018  (the Gram matrix, computed once up front)
        self.preprocessing_seconds_ = time.perf_counter() - t0

        self.loss_curve_ = []
        self.firing_fraction_ = []
        self.iteration_seconds_ = []
        best_loss, no_improvement = np.inf, 0
        converged = False
        all_rows = np.arange(n, dtype=np.int32)
        with _StopOnInterrupt() as interrupt, threadpool_limits(n_threads, user_api="blas"):
            for it in range(self.max_iter):
                t_start = time.perf_counter()
                if n_b >= n:
                    batches = [all_rows]
                else:
                    perm = gen.permutation(n).astype(np.int32)
                    batches = [np.sort(perm[s:s + n_b]) for s in range(0, n, n_b)]
                loss_sum, fired = 0.0, 0
                for rows in batches:
                    step = np.float32(-eta / (rows.size * np.sqrt(m)))
                    if tree is not None:
                        F, indptr, indices = tree.forward(rows, b, a, self.activation)
                        E = F - Y[rows]
                        tree.gradient_step(rows, indptr, indices, E, a, step)
                        fired += indices.size
                    else:
                        E, n_fired = self._dense_step(X[rows], Y[rows], W, a, b, gated, inv_sqrt_m,
                                                      step, dense_buf)
                        fired += n_fired
                    loss_sum += 0.5 * float(np.einsum("ij,ij->", E, E, dtype=np.float64))
                loss = loss_sum / n
                self.loss_curve_.append(loss)
                self.firing_fraction_.append(fired / (n * m))
                self.iteration_seconds_.append(time.perf_counter() - t_start)
                self.n_iter_ = it + 1
                if self.verbose:
                    print(f"Iteration {it + 1}, loss = {loss:.8f}, firing fraction = "
                          f"{fired / (n * m):.5f}, {self.iteration_seconds_[-1]:.3f} s")
                if not np.isfinite(loss):
                    raise ValueError(
                        f"The loss diverged at iteration {it + 1}; lower the learning_rate "
                        f"(it is {eta:.4g})."
                    )
                if loss > best_loss - self.tol:
                    no_improvement += 1
                else:
                    no_improvement = 0
                best_loss = min(best_loss, loss)
                if no_improvement >= self.n_iter_no_change:
                    converged = True
                    if self.verbose:
                        print(f"Training loss did not improve more than tol={self.tol} for "
                              f"{self.n_iter_no_change} consecutive iterations. Stopping.")
                    break
                if interrupt.requested:
                    converged = True
                    if self.verbose:
                        print("Interrupted: stopping after this iteration.")
                    break
        if not converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Gradient descent: maximum iterations ({self.max_iter}) reached and "
                          f"the optimization hasn't converged yet.", ConvergenceWarning)
        self.hidden_weights_ = tree.weights(fold=True) if tree is not None else W
        self.output_weights_ = a
        return self

    @staticmethod
    def _dense_step(Xb, Yb, W, a, b, gated, inv_sqrt_m, step, buf):
        """One dense step in place on W: the BLAS baseline. Returns (residual, n firing).

        ``buf`` is an (n, m) float32 scratch reused across steps (no per-step page faults).
        The caller caps BLAS at the fit's thread count (threadpoolctl) around the whole loop.
        """
        n_b = Xb.shape[0]
        Z = buf[:n_b]
        np.matmul(Xb, W.T, out=Z)                              # (n_b, m) GEMM
        mask = Z > b
        if gated:
            Z *= mask                                          # H = z 1[z > b]
        else:
            Z -= np.float32(b)
            np.maximum(Z, np.float32(0), out=Z)                # H = max(z - b, 0)
        E = (Z @ a) * inv_sqrt_m - Yb                          # (n_b, q)
        np.matmul(E * step, a.T, out=Z)                        # D = step (E a^T) ⊙ mask
        Z *= mask
        # W += D^T Xb, in place (W^T is the Fortran-ordered (d, m) view of W)
        out = scipy_blas.sgemm(1.0, Xb.T, Z.T, beta=1.0, c=W.T, trans_b=True, overwrite_c=True)
        if not np.shares_memory(out, W):  # never expected: scipy copies only non-F-ordered c
            W[...] = out.T
        return E.astype(np.float32, copy=False), int(np.count_nonzero(mask))

    def _decision(self, X):
        """Network outputs (n, q) for validated X, float32, computed densely in chunks."""
        X = self._prepare_X(X)
        W, a = self.hidden_weights_, self.output_weights_
        m = W.shape[0]
        b = np.float32(self.threshold_)
        out = np.empty((X.shape[0], a.shape[1]), dtype=np.float32)
        chunk = max(1, (1 << 24) // m)
        with threadpool_limits(effective_n_threads(self.n_jobs), user_api="blas"):
            for s in range(0, X.shape[0], chunk):
                Z = X[s:s + chunk] @ W.T
                mask = Z > b
                H = np.where(mask, Z if self.activation == "gated" else Z - b, np.float32(0))
                out[s:s + chunk] = (H @ a) * np.float32(1.0 / np.sqrt(m))
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class ShiftedReLURegressor(RegressorMixin, _BaseShiftedReLU):
    """Two-layer shifted-ReLU network regressor trained by (full-batch) gradient descent.

    The model is ``f(x) = (1/√m) Σ_r a_r σ_b(<w_r, x>)`` with ``σ_b(z) = max(z − b, 0)``
    (``activation="gated"``: ``z·1[z > b]``), fixed random output signs ``a_r ∈ {−1, +1}``
    (one sign vector per output), hidden weights ``w_r(0) ~ N(0, I_d)``, inputs scaled to
    unit norm, loss ``Σ_i ||f(x_i) − y_i||² / (2 n)``. Only the hidden weights are trained.
    There is no intercept: centre ``y`` if it has a large mean.

    With ``solver="tree"`` each iteration costs ``O(n·nnz + n·m)`` (``nnz`` firing pairs)
    instead of the dense ``O(n·m·d)``, after ``O(n·m·d)`` preprocessing; both solvers give
    the same iterates up to float32 rounding.

    Parameters
    ----------
    n_neurons : int, default=1024
        Hidden width ``m``.
    threshold : float or None, default=None
        Shift ``b``; None means ``√(0.4 · ln m)``, so that about ``m^(4/5)`` neurons or fewer
        fire per unit-norm input at initialisation.
    learning_rate : float or "auto", default="auto"
        Step size ``η``. "auto": ``1 / mean_i(||x_i||² P(N(0, ||x_i||²) > b))``, one over the
        trace bound of the curvature of the loss at initialisation (about ``1/P(fire)``
        for unit-norm inputs), which keeps full-batch gradient descent stable.
    max_iter : int, default=200
        Epochs (full-batch: gradient steps).
    solver : {"auto", "tree", "dense"}, default="auto"
        "tree": correlation trees (:class:`fastfire.nn.corrtree.CorrelationTree`).
        "dense": the same iteration with BLAS GEMMs. "auto": the one that
        :func:`choose_solver` predicts faster over ``max_iter`` epochs, by the cost model
        ``dense ≈ 5.1e-11·n_b·m·d + 1.57e-8·n_b·m + 0.068`` s per step and
        ``tree ≈ 2.7e-10·n·nnz + 3.95e-9·n·m + 0.071`` s per step (``nnz = n_b·m·P(fire)``
        firing pairs) plus half a dense step of preprocessing, fitted to 32 measured
        configurations on a 2-core AMD EPYC (bench/RESULTS-corrtree.md; it picks the faster
        solver in 30 of them, the misses at m = 2^12, d = 64). Per full-batch step the tree
        wins when ``d > 5.3·n·P(fire) − 230`` and the problem is large enough for the fixed
        overheads not to matter: it loses for many samples with small ``d`` (``n·P(fire)`` in
        the hundreds), for tiny ``m``, for small mini-batches (the tree still refreshes
        all ``n`` rows of C) and for very few iterations (the preprocessing GEMM).
    batch_size : int or None, default=None
        None: full-batch gradient descent. Otherwise mini-batches of that size (clipped to
        ``n``), reshuffled every epoch.
    normalize : bool, default=True
        Scale every input to unit Euclidean norm (zero rows stay zero), in fit and predict.
    activation : {"shifted_relu", "gated"}, default="shifted_relu"
        ``max(z − b, 0)`` or ``z·1[z > b]``. A neuron fires when ``z > b`` (strictly).
    random_state : int, RandomState instance or None, default=None
        Seeds ``W(0)``, ``a`` and the mini-batch order.
    n_jobs : int or None, default=None
        Threads of the kernels and of BLAS, see :func:`fastfire.effective_n_threads`. The tree
        solver gives the same result for any thread count.
    verbose : int, default=0
        Print one line per iteration (loss, firing fraction, seconds).
    tol : float, default=1e-4
        Training stops when the loss has not improved by at least ``tol`` for
        ``n_iter_no_change`` consecutive iterations.
    n_iter_no_change : int, default=10
        See ``tol``.

    Attributes
    ----------
    hidden_weights_ : ndarray of shape (n_neurons, n_features_in_), float32
        Trained ``w_r``.
    output_weights_ : ndarray of shape (n_neurons, n_outputs_), float32
        The fixed signs ``a``.
    threshold_, learning_rate_ : float
        The ``b`` and ``η`` used.
    solver_ : str
        "tree" or "dense".
    loss_curve_ : list of float
        Loss at the start of each iteration (mean over the epoch's mini-batches).
    firing_fraction_ : list of float
        Fraction of (sample, neuron) pairs that fired in each iteration.
    iteration_seconds_ : list of float
        Wall time of each iteration.
    preprocessing_seconds_ : float
        Time to build the correlation trees (0 for "dense").
    n_iter_ : int
        Iterations run.
    n_outputs_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X has feature names.

    Notes
    -----
    Ctrl-C during ``fit`` (in the main thread) stops training at the end of the current
    iteration and leaves a usable model; a second Ctrl-C interrupts at once.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire.estimators.shifted_relu import ShiftedReLURegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((64, 8)); y = X[:, 0] - 0.5 * X[:, 1]
    >>> reg = ShiftedReLURegressor(n_neurons=512, solver="tree", max_iter=50,
    ...                            random_state=0).fit(X, y)
    >>> reg.loss_curve_[-1] < reg.loss_curve_[0]
    True
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)

        Returns
        -------
        self : object
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=True)
        Y = np.asarray(y, dtype=np.float32)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        self.n_outputs_ = Y.shape[1]
        return self._fit_targets(self._prepare_X(X), np.ascontiguousarray(Y))

    def predict(self, X):
        """Predict with the trained network (dense, exact).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            float32 for float32 input, float64 otherwise.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        out = self._decision(X).astype(X.dtype, copy=False)
        return out.ravel() if self.n_outputs_ == 1 else out


class ShiftedReLUClassifier(ClassifierMixin, _BaseShiftedReLU):
    """Two-layer shifted-ReLU network classifier trained by (full-batch) gradient descent.

    The network of :class:`ShiftedReLURegressor` regresses targets in ``{−1, +1}``: one
    output for two classes (``+1`` for ``classes_[1]``), else one output per class
    (one-vs-rest: ``+1`` for the class, ``−1`` for the others), squared loss. ``predict``
    takes the sign (binary) or the arg-max (multiclass) of :meth:`decision_function`.

    Parameters
    ----------
    n_neurons : int, default=1024
    threshold : float or None, default=None
    learning_rate : float or "auto", default="auto"
    max_iter : int, default=200
    solver : {"auto", "tree", "dense"}, default="auto"
    batch_size : int or None, default=None
    normalize : bool, default=True
    activation : {"shifted_relu", "gated"}, default="shifted_relu"
    random_state : int, RandomState instance or None, default=None
    n_jobs : int or None, default=None
    verbose : int, default=0
    tol : float, default=1e-4
    n_iter_no_change : int, default=10
        All as in :class:`ShiftedReLURegressor`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    hidden_weights_, output_weights_, threshold_, learning_rate_, solver_, loss_curve_,
    firing_fraction_, iteration_seconds_, preprocessing_seconds_, n_iter_, n_outputs_,
    n_features_in_ :
        As in :class:`ShiftedReLURegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire.estimators.shifted_relu import ShiftedReLUClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((80, 5)); y = (X[:, 0] > 0).astype(int)
    >>> clf = ShiftedReLUClassifier(n_neurons=512, max_iter=100, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.8
    True
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : object
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"ShiftedReLUClassifier needs samples of at least 2 classes in the data; got "
                f"only one class: {self.classes_[0]!r}."
            )
        if self.classes_.size == 2:
            Y = np.where(codes == 1, 1.0, -1.0).reshape(-1, 1)
        else:
            Y = -np.ones((codes.size, self.classes_.size))
            Y[np.arange(codes.size), codes] = 1.0
        self.n_outputs_ = Y.shape[1]
        return self._fit_targets(self._prepare_X(X), np.ascontiguousarray(Y, dtype=np.float32))

    def decision_function(self, X):
        """Network outputs: shape (n_samples,) for two classes, else (n_samples, n_classes)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        out = self._decision(X).astype(X.dtype, copy=False)
        return out.ravel() if self.n_outputs_ == 1 else out

    def predict(self, X):
        """Predicted class labels, shape (n_samples,)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[np.argmax(scores, axis=1)]
