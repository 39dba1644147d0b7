"""The training loop shared by MLPClassifier and MLPRegressor (scikit-learn semantics)."""

import time
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from fastfire._core._dense import take_csr_rows, take_rows
from fastfire._core._openmp import effective_n_threads, flush_denormals
from fastfire._interrupt import interruptible
from fastfire.nn.active import ActiveSet
from fastfire.nn.lsh import LSH, SparseInput  # noqa: F401  (registers "lsh", "sparse_input")
from fastfire.nn.network import Network
from fastfire.nn.optimizers import SGD, Adam
from fastfire.nn.selectors import Selector, resolve_selection

#: ``selection="auto"`` puts LSH on the output layer of a multiclass / multilabel classifier
#: with at least this many outputs (every other layer dense). Measured on the 2-core machine
#: (bench/RESULTS-lsh.md, "auto rule"): below it fastfire's dense GEMM path is as fast per sample.
AUTO_LSH_MIN_OUTPUTS = 4096


def _as_float32_input(X):
    """float32 C-contiguous dense, or float32 CSR with int64 indptr / int32 indices."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.shape[1] > np.iinfo(np.int32).max:
            raise ValueError(f"X has {X.shape[1]} features; at most 2**31 - 1 are supported.")
        X = sp.csr_matrix(
            (X.data.astype(np.float32, copy=False), X.indices.astype(np.int32, copy=False),
             X.indptr.astype(np.int64, copy=False)),
            shape=X.shape,
        )
        X.sort_indices()
        return X
    return np.ascontiguousarray(X, dtype=np.float32)


def _sparse_row_topk(active_set, k):
    """Top-k entries of every row of a sparse ActiveSet: (indices, scores), best first, padded
    with -1 / -inf where a row has fewer than k entries."""
    n = active_set.n_samples
    counts = np.diff(active_set.indptr)
    rows = np.repeat(np.arange(n), counts)
    order = np.lexsort((active_set.indices, -active_set.values, rows))
    rank = np.arange(order.size) - np.repeat(active_set.indptr[:-1], counts)
    keep = rank < k
    indices = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    sel = order[keep]
    indices[rows[sel], rank[keep]] = active_set.indices[sel]
    scores[rows[sel], rank[keep]] = active_set.values[sel]
    return indices, scores


def _take_rows(A, idx):
    """Rows ``idx`` of a dense array (C-contiguous copy) or a sparse matrix (CSR)."""
    if sp.issparse(A):
        return A[idx]
    return np.take(A, idx, axis=0)


class _CSRRowGatherer:
    """``rows -> ActiveSet`` of those rows of a CSR matrix (float32 data, int32 column ids),
    copied by the ``take_csr_rows`` kernel into buffers reused by every batch (a training step
    is done with its batch before the next one is gathered). scipy's ``X[rows]`` costs about
    100 us per batch in checks and index conversions, on the serial part of a step."""

    def __init__(self, X, batch_size, n_threads):
        self.X = X
        self.n_threads = n_threads
        self.indptr = np.empty(batch_size + 1, dtype=np.int64)
        self.indices = np.empty(0, dtype=np.int32)
        self.data = np.empty(0, dtype=np.float32)

    @staticmethod
    def accepts(X):
        """True for a CSR matrix this gatherer can copy without conversion."""
        return (sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
                and X.indices.dtype == np.int32 and X.indptr.dtype in (np.int32, np.int64))

    def __call__(self, rows):
        X = self.X
        lengths = X.indptr[rows + 1] - X.indptr[rows]
        total = int(lengths.sum())
        if self.indices.shape[0] < total:
            self.indices = np.empty(total, dtype=np.int32)
            self.data = np.empty(total, dtype=np.float32)
        if self.indptr.shape[0] < rows.shape[0] + 1:
            self.indptr = np.empty(rows.shape[0] + 1, dtype=np.int64)
        indptr = self.indptr[: rows.shape[0] + 1]
        take_csr_rows(X.indptr, X.indices, X.data, rows, indptr, self.indices, self.data,
                      self.n_threads)
        return ActiveSet(self.data[:total], X.shape[1], indptr=indptr,
                         indices=self.indices[:total])


def _batch_gatherer(X, batch_size, n_threads):
    """``rows -> X[rows]`` for the shuffled mini-batches of an epoch.

    Dense float32 rows are copied by the parallel ``take_rows`` kernel into one buffer reused by
    every batch: a training step is done with its batch before the next one is gathered. A CSR
    matrix of float32 gives an ActiveSet (:class:`_CSRRowGatherer`).
    """
    if _CSRRowGatherer.accepts(X):
        return _CSRRowGatherer(X, batch_size, n_threads)
    if sp.issparse(X) or X.dtype != np.float32 or X.ndim != 2 or not X.flags.c_contiguous:
        return lambda rows: _take_rows(X, rows)
    buffer = np.empty((batch_size, X.shape[1]), dtype=np.float32)

    def gather(rows):
        out = buffer[: len(rows)]
        take_rows(X, rows, out, n_threads)
        return out

    return gather


class BaseMLP(BaseEstimator):
    """Shared parameters, validation and the stochastic training loop.

    Subclasses define the targets: ``_encode_targets`` (fit-time validation and encoding for
    the loss, setting ``n_outputs_`` and ``out_activation_``), ``_batch_target`` and
    ``_validation_score`` (from output activations), and ``_stratify_validation``.
    """

    _y_numeric = False

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [None, Integral],
        "selection": [str, Selector, list, tuple],
    }

    def __init__(
        self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
        batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
        max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
        warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
        validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
        n_jobs=None, selection="dense",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.n_jobs = n_jobs
        self.selection = selection

    # ------------------------------------------------------------------ set-up
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if not hasattr(sizes, "__iter__") else list(sizes)
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, (Integral, np.integer)) or size <= 0:
                raise ValueError(
                    f"hidden_layer_sizes must contain positive integers; got {self.hidden_layer_sizes!r}."
                )
        return [int(s) for s in sizes]

    def _reset_training_state(self):
        """Counters, loss curve, early-stopping state and optimizer of a fresh fit."""
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._optimizer = None

    def _initialize(self, layer_units):
        """Glorot-uniform weights (scikit-learn's factors) and fresh training state."""
        self._reset_training_state()
        self.n_layers_ = len(layer_units)
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(
                self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
            )
            self.intercepts_.append(self._random_state.uniform(-bound, bound, fan_out).astype(np.float32))

    def _resolve_auto(self):
        """``selection="auto"``: on a classifier with at least ``AUTO_LSH_MIN_OUTPUTS``
        outputs, LSH on the output layer and row-sparse updates (``"sparse_input"``) on the
        first layer; every layer dense otherwise."""
        n = len(self.coefs_)
        wide = (self.out_activation_ in ("softmax", "logistic")
                and self.n_outputs_ >= AUTO_LSH_MIN_OUTPUTS)
        if not wide:
            return ["dense"] * n
        return (["sparse_input"] if n > 1 else []) + ["dense"] * max(0, n - 2) + ["lsh"]

    def _build_network(self):
        selection = self._resolve_auto() if self.selection == "auto" else self.selection
        selectors = resolve_selection(selection, len(self.coefs_))
        # Selectors that draw random numbers (LSH) get a seed from random_state when they have
        # none of their own; it is kept (and saved) so a reloaded model rebuilds the same tables.
        seeds = getattr(self, "_selector_seeds", None)
        if seeds is None or len(seeds) != len(selectors):
            rng = getattr(self, "_random_state", None)
            if rng is None:
                rng = check_random_state(self.random_state)
            seeds = [int(rng.randint(0, 2**31 - 1))
                     if isinstance(s, LSH) and s.random_state is None else 0 for s in selectors]
            self._selector_seeds = seeds
        for selector, seed in zip(selectors, seeds):
            if isinstance(selector, LSH):
                selector._seed = seed
        self._network = Network(
            self.coefs_, self.intercepts_, self.activation, self.out_activation_, selectors
        )

    def _sparse_output(self):
        """True when the output layer computes a sparse active set during training (LSH)."""
        return hasattr(self._network.layers[-1], "set_targets")

    def _make_optimizer(self):
        params = self._network.params
        if self.solver == "adam":
            return Adam(params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)
        return SGD(params, self.learning_rate_init, self.learning_rate, self.momentum,
                   self.nesterovs_momentum, self.power_t)

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, incremental=False, classes=None):
        hidden = self._hidden_sizes()
        n_threads = effective_n_threads(self.n_jobs)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = validate_data(
            self, X, y, accept_sparse=["csr", "csc"], dtype=[np.float32, np.float64],
            multi_output=True, y_numeric=self._y_numeric, reset=first_pass,
        )
        X = _as_float32_input(X)
        target = self._encode_targets(y, first_pass, classes)

        self._random_state = check_random_state(self.random_state)
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        if first_pass:
            self._initialize(layer_units)
        elif [c.shape[0] for c in self.coefs_] + [self.coefs_[-1].shape[1]] != layer_units:
            raise ValueError(
                f"The network has layer sizes {[c.shape[0] for c in self.coefs_] + [self.n_outputs_]} "
                f"but hidden_layer_sizes={self.hidden_layer_sizes!r} asks for {layer_units}; "
                "refit with warm_start=False."
            )
        if first_pass:
            self.__dict__.pop("_selector_seeds", None)
        if first_pass or not hasattr(self, "_network"):
            self._build_network()
        if self._optimizer is None or not incremental and not self.warm_start:
            self._optimizer = self._make_optimizer()

        with threadpool_limits(1, user_api="blas"):
            self._fit_stochastic(X, target, y, incremental, n_threads)
        return self

    def _fit_stochastic(self, X, target, y, incremental, n_threads):
        early_stopping = self.early_stopping and not incremental
        X_val = y_val = None
        if early_stopping:
            stratify = y if self._stratify_validation() else None
            train_idx, val_idx = train_test_split(
                np.arange(X.shape[0]), random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify,
            )
            X_val, y_val = _take_rows(X, val_idx), _take_rows(y, val_idx)
            X, target = _take_rows(X, train_idx), _take_rows(target, train_idx)

        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        network, optimizer = self._network, self._optimizer
        # a sparse output layer takes the targets as they are (class ids or CSR labels)
        batch_target = (lambda t: t) if self._sparse_output() else self._batch_target
        interrupted = False
        # Reshuffled in place every epoch: the same random stream as scikit-learn's MLP.
        order = np.arange(n_samples, dtype=np.int64) if self.shuffle else None
        gather = _batch_gatherer(X, batch_size, n_threads)
        # a sparse output layer reads a CSR target's label ids only (an ActiveSet of them)
        if self._sparse_output() and _CSRRowGatherer.accepts(target):
            take_target = _CSRRowGatherer(target, batch_size, n_threads)
        else:
            take_target = lambda rows: _take_rows(target, rows)  # noqa: E731
        # subnormal gradients would slow a trained network about twice (see flush_denormals)
        with interruptible() as flag, flush_denormals(n_threads):
            for _ in range(self.max_iter):
                start_time = time.perf_counter()
                if order is not None:
                    self._random_state.shuffle(order)
                accumulated_loss, seen = 0.0, 0
                for start in range(0, n_samples, batch_size):
                    stop = min(start + batch_size, n_samples)
                    if order is None:
                        rows = slice(start, stop)
                        X_batch, t_batch = X[rows], target[rows]
                    else:
                        rows = order[start:stop]
                        X_batch, t_batch = gather(rows), take_target(rows)
                    if not isinstance(X_batch, ActiveSet):
                        X_batch = ActiveSet.from_data(X_batch)
                    batch_loss = network.train_step(
                        X_batch, batch_target(t_batch),
                        self.alpha, optimizer, n_threads,
                    )
                    accumulated_loss += batch_loss * (stop - start)
                    seen += stop - start
                    if flag.raised:
                        interrupted = True
                        break

                self.n_iter_ += 1
                self.loss_ = accumulated_loss / seen
                self.t_ += seen
                self.loss_curve_.append(self.loss_)
                self._update_no_improvement_count(early_stopping, X_val, y_val, n_threads)
                if self.verbose:
                    line = f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}"
                    if early_stopping:
                        line += f", validation score = {self.validation_scores_[-1]:.6f}"
                    print(f"{line}, time = {time.perf_counter() - start_time:.2f}s", flush=True)
                if interrupted:
                    warnings.warn(
                        f"Training interrupted (Ctrl-C) during iteration {self.n_iter_}; the model "
                        "keeps the weights learned so far.", UserWarning,
                    )
                    break
                optimizer.iteration_ends(self.t_)

                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                        "the optimization hasn't converged yet.", ConvergenceWarning,
                    )

        restored = early_stopping and hasattr(self, "_best_coefs")
        if restored:
            for param, best in zip(self.coefs_ + self.intercepts_, self._best_coefs + self._best_intercepts):
                param[...] = best
        for layer in network.layers:
            # hash tables follow the final weights: approximate top-k then uses up-to-date
            # tables, and a pickled or saved model (which rebuilds them) gets the same ones.
            # Skipped when the schedule has just rebuilt them (fastfire train's partial_fit
            # chunks of 2,048 rows at 670K labels: every chunk would rebuild twice).
            if hasattr(layer, "build_tables") and (restored or not layer.tables_current()):
                layer.build_tables(n_threads)

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, n_threads):
        if early_stopping:
            if self._sparse_output():
                # wide sparse outputs: P@1 (accuracy for multiclass) from a chunked top-1,
                # never an n_val x n_outputs matrix
                score = self._precision_at_1(X_val, y_val, n_threads)
            else:
                score = self._validation_score(self._network.predict(X_val, n_threads), y_val)
            self.validation_scores_.append(score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [b.copy() for b in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # ------------------------------------------------------------------ prediction
    def _topk(self, X, k, n_threads, exact=True):
        """Top-k output-layer scores (logits) of float32 input ``X``, in row chunks.

        Exact: every output neuron is scored, one chunk of rows at a time (at most
        ``predict_chunk_rows`` rows in memory). Approximate: only the neurons retrieved from
        the output layer's hash tables are scored; rows with fewer than k candidates are padded
        with index -1 and score -inf.
        """
        from fastfire._core._active import dense_scores_topk
        from fastfire.nn.network import predict_chunk_rows

        network = self._network
        last = network.layers[-1]
        n_samples = X.shape[0]
        chunk = predict_chunk_rows(network.layers, n_samples)
        indices = np.empty((n_samples, k), dtype=np.int64)
        scores = np.empty((n_samples, k), dtype=np.float32)
        for start in range(0, n_samples, chunk):
            stop = min(start + chunk, n_samples)
            acts = ActiveSet.from_data(X[start:stop])
            for layer in network.layers[:-1]:
                acts = layer.forward(acts, n_threads)
            if exact:
                out = last.forward(acts, n_threads).values
                idx = np.empty((stop - start, k), dtype=np.int32)
                _val = np.empty((stop - start, k), dtype=np.float32)
                dense_scores_topk(out, k, idx, _val, n_threads)
                indices[start:stop], scores[start:stop] = idx, _val
            else:
                active = last.query(acts, n_threads, labels=False, min_active=0)
                out = last.forward_active(acts, active, n_threads)
                indices[start:stop], scores[start:stop] = _sparse_row_topk(out, k)
        return indices, scores

    def _precision_at_1(self, X, y, n_threads):
        """Fraction of rows whose best-scored output is a true label (accuracy for multiclass)."""
        top, _ = self._topk(X, 1, n_threads)
        top = top[:, 0]
        if sp.issparse(y) or (getattr(y, "ndim", 1) == 2 and y.shape[1] > 1):
            Y = sp.csr_matrix(y)
            return float(np.asarray(Y[np.arange(Y.shape[0]), top]).ravel().astype(bool).mean())
        return float(np.mean(self.classes_[top] == np.asarray(y)))

    def _forward(self, X):
        """Validated input → output activations (float32) and the input's float dtype."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=[np.float32, np.float64],
                          reset=False)
        dtype = X.dtype
        with threadpool_limits(1, user_api="blas"):
            out = self._network.predict(_as_float32_input(X), effective_n_threads(self.n_jobs))
        return out, dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
