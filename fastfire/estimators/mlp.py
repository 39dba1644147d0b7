"""MLPClassifier and MLPRegressor: drop-ins for scikit-learn's, on fastfire's engine."""

import numpy as np
import scipy.sparse as sp
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from fastfire._core._openmp import effective_n_threads
from fastfire.estimators._mlp_base import BaseMLP, _as_float32_input

_SHARED_PARAMETERS_DOC = """
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        The ith element is the number of neurons in the ith hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Hidden-layer activation.
    solver : {"adam", "sgd"}, default="adam"
        Stochastic optimizer (scikit-learn's "lbfgs" is not offered: it is full-batch).
    alpha : float, default=0.0001
        L2 penalty, scaled by the batch size as in scikit-learn.
    batch_size : int or "auto", default="auto"
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
        Learning-rate schedule for ``solver="sgd"``.
    learning_rate_init : float, default=0.001
        Initial step size.
    power_t : float, default=0.5
        Exponent of the ``invscaling`` schedule.
    max_iter : int, default=200
        Maximum number of epochs (passes over the data).
    shuffle : bool, default=True
        Shuffle the samples every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling and the validation split. Results are
        identical for a fixed seed and thread count.
    tol : float, default=1e-4
        Improvement below which an epoch counts as "no change".
    verbose : bool, default=False
        Print one line per epoch: loss, validation score (with early stopping), seconds.
    warm_start : bool, default=False
        Continue from the previous fit's weights.
    momentum : float, default=0.9
        Momentum of ``solver="sgd"``.
    nesterovs_momentum : bool, default=True
        Nesterov momentum for ``solver="sgd"``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop when its score stalls; the
        best weights seen are kept.
    validation_fraction : float, default=0.1
        Fraction of the training data held out with ``early_stopping``.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's moment decay rates.
    epsilon : float, default=1e-8
        Adam's numerical stabiliser.
    n_iter_no_change : int, default=10
        Epochs without improvement (by ``tol``) before stopping.
    n_jobs : int or None, default=None
        Threads for the kernels: None uses ``OMP_NUM_THREADS`` if set, else all usable
        cores; -1 all cores; k uses k threads. BLAS runs single-threaded inside.
    selection : str, Selector or list of those, default="dense"
        How each weight layer chooses the neurons it computes: one selector for every
        layer, or one entry per weight layer (hidden layers first, output last). A string
        names a selector with its defaults; ``"dense"`` (:class:`fastfire.Dense`) computes
        every neuron exactly; ``"lsh"`` (:class:`fastfire.nn.lsh.LSH`) computes, during
        training, only the neurons found in hash tables (SLIDE); ``"auto"`` uses LSH on the
        output layer of a multiclass / multilabel classifier with at least
        ``fastfire.estimators._mlp_base.AUTO_LSH_MIN_OUTPUTS`` outputs and dense elsewhere.
"""

_SHARED_ATTRIBUTES_DOC = """
    loss_ : float
        Mean loss of the last epoch.
    best_loss_ : float or None
        Lowest epoch loss (None with ``early_stopping``).
    loss_curve_ : list of float
        Mean loss of every epoch.
    validation_scores_ : list of float or None
        Validation score of every epoch (``early_stopping`` only).
    best_validation_score_ : float or None
        Best validation score (``early_stopping`` only).
    t_ : int
        Number of training samples seen.
    coefs_ : list of ndarray of shape (n_in, n_out), float32
        Weight matrices, one per layer.
    intercepts_ : list of ndarray of shape (n_out,), float32
        Bias vectors, one per layer.
    n_features_in_ : int
        Number of input features.
    feature_names_in_ : ndarray of str
        Input column names, when ``X`` had string column names.
    n_iter_ : int
        Epochs run.
    n_layers_ : int
        Number of layers (input and output included).
    n_outputs_ : int
        Number of output units.
    out_activation_ : str
        Output activation ("softmax", "logistic" or "identity").
"""


def _fill_doc(cls):
    """Insert the parameters and attributes both estimators share into ``cls.__doc__``."""
    cls.__doc__ = cls.__doc__.replace("    %(parameters)s\n", _SHARED_PARAMETERS_DOC.lstrip("\n"))
    cls.__doc__ = cls.__doc__.replace("    %(attributes)s\n", _SHARED_ATTRIBUTES_DOC.lstrip("\n"))
    return cls


@_fill_doc
class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier trained with fastfire's kernels.

    A drop-in for :class:`sklearn.neural_network.MLPClassifier` (same parameters, same
    arithmetic, same fitted attributes) that computes in float32 with OpenMP kernels and
    accepts sparse input without densifying it. Binary, multiclass and multilabel targets
    (a dense or scipy.sparse indicator matrix) are supported.

    Parameters
    ----------
    %(parameters)s
    Attributes
    ----------
    classes_ : ndarray
        Class labels (for multilabel targets: ``arange(n_labels)``).
    %(attributes)s
    See Also
    --------
    MLPRegressor : The regression counterpart.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fastfire import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=30, random_state=0).fit(X / 16, y)
    >>> round(clf.score(X / 16, y), 2) > 0.95
    True
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the model to data ``X`` and targets ``y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data; sparse input is used as CSR without densifying it.
        y : array-like of shape (n_samples,) or (n_samples, n_labels), or sparse matrix
            Class labels, or a multilabel indicator matrix (dense or sparse).

        Returns
        -------
        self : MLPClassifier
            The fitted model.
        """
        return self._fit(X, y, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.
        y : array-like of shape (n_samples,) or (n_samples, n_labels), or sparse matrix
            Targets.
        classes : array-like of shape (n_classes,), default=None
            All classes that will ever be seen; required on the first call (ignored, but
            still required, for multilabel targets, whose classes are the columns of ``y``).

        Returns
        -------
        self : MLPClassifier
            The updated model.
        """
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif classes is not None and self._target_type != "multilabel-indicator":
            if not np.array_equal(self.classes_, np.unique(classes)):
                raise ValueError(
                    f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                    f"was: {self.classes_!r}"
                )
        return self._fit(X, y, incremental=True, classes=classes)

    def _encode_targets(self, y, first_pass, classes):
        if not sp.issparse(y) and y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        multilabel = y_type == "multilabel-indicator"
        if first_pass:
            if multilabel:
                self.classes_ = np.arange(y.shape[1])
                self._label_dtype = y.dtype
                self._sparse_labels = sp.issparse(y)
            else:
                self.classes_ = np.unique(y if classes is None else classes)
                if classes is not None:
                    self._check_known_classes(y)
                if len(self.classes_) < 2:
                    raise ValueError(
                        f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                        f"but the data contains only one class: {self.classes_[0]!r}"
                    )
            self._target_type = "multilabel-indicator" if multilabel else (
                "binary" if len(self.classes_) == 2 else "multiclass")
            self.n_outputs_ = 1 if self._target_type == "binary" else len(self.classes_)
            self.out_activation_ = "softmax" if self._target_type == "multiclass" else "logistic"
        elif multilabel != (self._target_type == "multilabel-indicator"):
            raise ValueError(
                f"The model was fitted on {self._target_type} targets; got {y_type} targets."
            )
        elif multilabel and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} labels, but the model has {self.n_outputs_}.")
        elif not multilabel:
            self._check_known_classes(y)

        if multilabel:
            return sp.csr_matrix(y, dtype=np.float32) if sp.issparse(y) else y.astype(np.float32)
        if self._target_type == "binary":
            return (y == self.classes_[1]).astype(np.float32).reshape(-1, 1)
        return np.searchsorted(self.classes_, y).astype(np.int32)

    def _check_known_classes(self, y):
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if len(unseen):
            raise ValueError(
                f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                f"'y' has {np.unique(y)}."
            )

    def _stratify_validation(self):
        # As scikit-learn: only single-output (binary) targets are stratified.
        return self._target_type == "binary"

    @staticmethod
    def _batch_target(target):
        if sp.issparse(target):
            return target.toarray()
        return target

    def _decode(self, out):
        """Output activations → predicted labels (or indicator matrix)."""
        if self._target_type == "multiclass":
            return self.classes_[np.argmax(out, axis=1)]
        if self._target_type == "binary":
            return self.classes_[(out[:, 0] > 0.5).astype(np.intp)]
        indicator = out > 0.5
        if self._sparse_labels:
            return sp.csr_matrix(indicator, dtype=self._label_dtype)
        return indicator.astype(self._label_dtype)

    def _validation_score(self, out, y_val):
        return accuracy_score(y_val, self._decode(out))

    def predict(self, X):
        """Predict class labels (a 0/1 indicator matrix for multilabel models).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_labels), or sparse matrix
            Predicted labels; multilabel predictions are sparse when the model was fitted on
            a sparse indicator matrix.
        """
        out, _ = self._forward(X)
        return self._decode(out)

    def predict_topk(self, X, k=5, exact=True):
        """The ``k`` best-scored classes (labels) of every sample, best first.

        Exact (default): every output neuron is scored, one chunk of rows at a time, so no
        ``n_samples x n_classes`` matrix is ever materialised. ``exact=False`` (models whose
        output layer uses LSH selection) scores only the neurons retrieved from the output
        layer's hash tables (the selector's ``policy`` and ``budget``): much faster for very
        wide outputs, approximate; rows with fewer than ``k`` candidates are padded with
        index -1 and score -inf.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.
        k : int, default=5
            Number of classes per sample, in ``[1, n_outputs]``.
        exact : bool, default=True
            Score every output (True) or the hash-table candidates only (False).

        Returns
        -------
        indices : ndarray of shape (n_samples, k), int64
            Column indices into ``classes_`` (label ids for multilabel models), best first;
            ties go to the lower index.
        scores : ndarray of shape (n_samples, k), float32
            The output layer's pre-activation scores (logits) of those classes.
        """
        check_is_fitted(self)
        if self._target_type == "binary":
            raise ValueError("predict_topk needs a multiclass or multilabel model; this one is binary.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_outputs_:
            raise ValueError(f"k must be an int in [1, {self.n_outputs_}]; got {k!r}.")
        if not exact and not hasattr(self._network.layers[-1], "query"):
            raise ValueError("predict_topk(exact=False) needs an output layer with LSH selection.")
        X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=[np.float32, np.float64],
                          reset=False)
        with threadpool_limits(1, user_api="blas"):
            return self._topk(_as_float32_input(X), int(k), effective_n_threads(self.n_jobs),
                              exact=bool(exact))

    def predict_proba(self, X):
        """Probability estimates.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Class probabilities in the order of ``classes_`` (per-label probabilities for
            multilabel models), in the floating dtype of ``X``.
        """
        out, dtype = self._forward(X)
        if self._target_type == "binary":
            out = np.hstack([1.0 - out, out])
        return out.astype(dtype, copy=False)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities.
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


@_fill_doc
class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor (squared loss) trained with fastfire's kernels.

    A drop-in for :class:`sklearn.neural_network.MLPRegressor`: same parameters, same
    arithmetic, same fitted attributes; float32 OpenMP kernels; sparse input as CSR;
    single- and multi-output targets.

    Parameters
    ----------
    %(parameters)s
    Attributes
    ----------
    %(attributes)s
    See Also
    --------
    MLPClassifier : The classification counterpart.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire import MLPRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-1, 1, (500, 3))
    >>> y = X[:, 0] - 2 * X[:, 1] ** 2
    >>> reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.9
    True
    """

    _y_numeric = True

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the model to data ``X`` and targets ``y``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data; sparse input is used as CSR without densifying it.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.

        Returns
        -------
        self : MLPRegressor
            The fitted model.
        """
        return self._fit(X, y, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.

        Returns
        -------
        self : MLPRegressor
            The updated model.
        """
        return self._fit(X, y, incremental=True)

    def _encode_targets(self, y, first_pass, classes):
        if sp.issparse(y):
            y = y.toarray()
        y = np.asarray(y, dtype=np.float32)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if first_pass:
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "identity"
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, but the model has {self.n_outputs_}.")
        return np.ascontiguousarray(y)

    def _stratify_validation(self):
        return False

    @staticmethod
    def _batch_target(target):
        return target

    def _validation_score(self, out, y_val):
        return r2_score(y_val, out.ravel() if out.shape[1] == 1 else out)

    def predict(self, X):
        """Predict with the fitted model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predictions in the floating dtype of ``X``.
        """
        out, dtype = self._forward(X)
        if out.shape[1] == 1:
            out = out.ravel()
        return out.astype(dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
