"""ConvNetClassifier: a small convolutional network with scikit-learn semantics.

It subclasses :class:`~fastfire.estimators.mlp.MLPClassifier`: targets, the stochastic training
loop (solvers, batches, early stopping, verbose, ``partial_fit``, ``warm_start``) and prediction
decoding are the MLP's; only the network (convolution blocks, then dense layers) and the image
handling differ.
"""

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from fastfire._core._openmp import effective_n_threads
from fastfire.estimators.mlp import MLPClassifier
from fastfire.nn.active import ActiveSet
from fastfire.nn.conv import Conv2D, ConvSampling, Flatten, Pool2D
from fastfire.nn.network import Network
from fastfire.nn.selectors import Dense, resolve_selection

# Prediction runs in chunks of this many rows (convolution outputs are wide).
PREDICT_CHUNK_ROWS = 256


class ConvNetClassifier(MLPClassifier):
    """Convolutional neural network classifier trained with fastfire's kernels.

    Convolution blocks ``Conv2D → activation → pooling`` (one per entry of ``conv_channels``),
    then dense hidden layers (``hidden_layer_sizes``, possibly empty) and a softmax / logistic
    output, trained with the same loop and options as :class:`fastfire.MLPClassifier`.
    Convolutions run through im2col + single-threaded sgemm, parallel over samples.

    Parameters
    ----------
    conv_channels : array-like of int, default=(16, 32)
        Output channels of each convolution block.
    kernel_size : int, default=3
        Square kernel size of every convolution.
    conv_stride : int, default=1
        Stride of every convolution.
    padding : int or "same", default="same"
        Zero padding on every side; ``"same"`` is ``kernel_size // 2``.
    pooling : {"max", "avg"} or None, default="max"
        Pooling after each convolution block (non-overlapping ``pool_size`` windows, clipped
        to the image), or none.
    pool_size : int, default=2
        Pooling window (= stride).
    hidden_layer_sizes : array-like of int, default=()
        Dense hidden layers between the convolutions and the output layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default="relu"
        Activation of the convolutions and hidden layers.
    image_shape : tuple (C, H, W), (H, W) or None, default=None
        Shape of one image when ``X`` is given as flat rows of ``C*H*W`` pixels (channel-major).
        With None, 4-D ``X`` of shape (n, C, H, W) and 3-D ``X`` of shape (n, H, W) give their
        own shape, and 2-D ``X`` is read as 1-pixel-high single-channel images (1, 1, n_features).
    solver, alpha, batch_size, learning_rate, learning_rate_init, power_t, max_iter, shuffle, \
random_state, tol, verbose, warm_start, momentum, nesterovs_momentum, early_stopping, \
validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, n_jobs
        As in :class:`fastfire.MLPClassifier`.
    selection : str, Selector or list of those, default="dense"
        Selection of the dense weight layers (hidden layers, then the output layer), as in
        :class:`fastfire.MLPClassifier` (e.g. ``ColumnRowSampling``).
    conv_selection : None, "dense", ConvSampling or list of those, default=None
        Products of the convolutions: exact (None / "dense") or top-k sampled during training
        (:class:`fastfire.nn.conv.ConvSampling`); one entry for all or one per convolution.

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    image_shape_ : tuple (C, H, W)
        Shape of the images the model was fitted on.
    coefs_ : list of ndarray
        Convolution kernels ``(F, C, KH, KW)`` first, then dense weights ``(n_in, n_out)``.
    intercepts_ : list of ndarray
        Biases, in the order of ``coefs_``.
    n_conv_layers_ : int
        Number of convolutions.
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_, t_, n_iter_, \
n_features_in_, n_outputs_, out_activation_
        As in :class:`fastfire.MLPClassifier`.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fastfire.estimators.convnet import ConvNetClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = ConvNetClassifier(conv_channels=(8,), image_shape=(1, 8, 8), batch_size=32,
    ...                         max_iter=10, random_state=0).fit(X / 16, y)
    >>> clf.score(X / 16, y) > 0.9
    True
    """

    _parameter_constraints = {
        **MLPClassifier._parameter_constraints,
        "conv_channels": ["array-like"],
        "kernel_size": [Interval(Integral, 1, None, closed="left")],
        "conv_stride": [Interval(Integral, 1, None, closed="left")],
        "padding": [StrOptions({"same"}), Interval(Integral, 0, None, closed="left")],
        "pooling": [StrOptions({"max", "avg"}), None],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "image_shape": [None, tuple, list],
        "conv_selection": [None, str, ConvSampling, list, tuple],
    }

    def __init__(
        self, conv_channels=(16, 32), kernel_size=3, conv_stride=1, padding="same", pooling="max",
        pool_size=2, hidden_layer_sizes=(), activation="relu", *, image_shape=None, solver="adam",
        alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
        power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
        warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
        validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
        n_jobs=None, selection="dense", conv_selection=None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            n_jobs=n_jobs, selection=selection,
        )
        self.conv_channels = conv_channels
        self.kernel_size = kernel_size
        self.conv_stride = conv_stride
        self.padding = padding
        self.pooling = pooling
        self.pool_size = pool_size
        self.image_shape = image_shape
        self.conv_selection = conv_selection

    # ------------------------------------------------------------------ images
    def _images(self, X, reset):
        """Validate X (any image layout) → float32 (n, C*H*W) rows and the image shape."""
        if sp.issparse(X):
            raise TypeError(f"{type(self).__name__} needs dense images; got a sparse matrix.")
        own_shape = None
        ndim = getattr(X, "ndim", None)
        if ndim is None and isinstance(X, (list, tuple)):
            ndim = np.asarray(X).ndim
        if ndim in (3, 4):
            X = np.asarray(X)
            own_shape = (1,) + X.shape[1:] if ndim == 3 else X.shape[1:]
            X = X.reshape(X.shape[0], -1)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=reset)
        if self.image_shape is not None:
            shape = tuple(int(v) for v in self.image_shape)
            if len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"image_shape must be (C, H, W) or (H, W); got {self.image_shape!r}.")
            if own_shape is not None and tuple(own_shape) != shape:
                raise ValueError(f"X holds images of shape {tuple(own_shape)} but image_shape={shape}.")
        else:
            shape = tuple(int(v) for v in own_shape) if own_shape is not None else (1, 1, X.shape[1])
        if int(np.prod(shape)) != X.shape[1]:
            raise ValueError(f"image_shape={shape} has {int(np.prod(shape))} pixels but X has "
                             f"{X.shape[1]} features.")
        if not reset and shape != self.image_shape_:
            raise ValueError(f"X holds images of shape {shape}; the model was fitted on {self.image_shape_}.")
        return np.ascontiguousarray(X, dtype=np.float32), X.dtype, shape

    def _conv_sizes(self):
        channels = [self.conv_channels] if np.isscalar(self.conv_channels) else list(self.conv_channels)
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, (Integral, np.integer)) or c < 1:
                raise ValueError(f"conv_channels must contain positive integers; got {self.conv_channels!r}.")
        return [int(c) for c in channels]

    def _conv_selectors(self, n_conv):
        spec = self.conv_selection
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec] * n_conv
        if len(specs) != n_conv:
            raise ValueError(f"conv_selection has {len(specs)} entries for {n_conv} convolutions.")
        out = []
        for s in specs:
            if s is None or s == "dense":
                out.append(Dense())
            elif isinstance(s, ConvSampling):
                out.append(ConvSampling(s.ratio, s.minimal_k, s.mode, getattr(s, "input_ratio", None)))
            else:
                raise ValueError(f"conv_selection entries must be None, 'dense' or ConvSampling; got {s!r}.")
        return out

    # ------------------------------------------------------------------ set-up
    def _initialize_network(self, image_shape, hidden):
        """Glorot-uniform kernels and weights; builds the layer stack and ``coefs_``."""
        rs = self._random_state
        factor = 2.0 if self.activation == "logistic" else 6.0
        k = int(self.kernel_size)
        pad = k // 2 if self.padding == "same" else int(self.padding)
        shape = image_shape
        self.coefs_, self.intercepts_ = [], []
        self._conv_geometry = []
        for f in self._conv_sizes():
            c = shape[0]
            bound = np.sqrt(factor / (c * k * k + f * k * k))
            self.coefs_.append(rs.uniform(-bound, bound, (f, c, k, k)).astype(np.float32))
            self.intercepts_.append(rs.uniform(-bound, bound, f).astype(np.float32))
            probe = Conv2D(self.coefs_[-1], self.intercepts_[-1], "identity", shape,
                           self.conv_stride, pad)
            self._conv_geometry.append((shape, pad))
            shape = probe.output_shape
            if self.pooling is not None:
                shape = Pool2D(shape, self.pool_size, self.pooling).output_shape
                if min(shape) < 1:
                    raise ValueError(f"pooling leaves an empty image after convolution {len(self.coefs_)}.")
        self.n_conv_layers_ = len(self._conv_geometry)
        units = [int(np.prod(shape))] + hidden + [self.n_outputs_]
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
            self.intercepts_.append(rs.uniform(-bound, bound, fan_out).astype(np.float32))
        self.n_layers_ = len(self.coefs_) + 1
        self._reset_training_state()

    def _build_network(self):
        n_conv = self.n_conv_layers_
        conv_selectors = self._conv_selectors(n_conv)
        layers = []
        out_shape = self.image_shape_
        for i in range(n_conv):
            shape, pad = self._conv_geometry[i]
            conv = Conv2D(self.coefs_[i], self.intercepts_[i], self.activation, shape,
                          self.conv_stride, pad, selector=conv_selectors[i])
            layers.append(conv)
            out_shape = conv.output_shape
            if self.pooling is not None:
                relu_input = self.pooling == "max" and self.activation == "relu"
                layers.append(Pool2D(out_shape, self.pool_size, self.pooling, relu_input))
                out_shape = layers[-1].output_shape
        layers.append(Flatten(out_shape))
        dense_coefs = self.coefs_[n_conv:]
        selectors = resolve_selection(self.selection, len(dense_coefs))
        for j, (coef, intercept) in enumerate(zip(dense_coefs, self.intercepts_[n_conv:])):
            act = self.activation if j < len(dense_coefs) - 1 else "identity"
            layers.append(selectors[j].make_layer(coef, intercept, act))
        self._network = Network.from_layers(layers, self.out_activation_)

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, incremental=False, classes=None):
        hidden = self._hidden_sizes()
        n_threads = effective_n_threads(self.n_jobs)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, _, shape = self._images(X, reset=first_pass)
        X, y = validate_data(self, X, y, multi_output=True, dtype=np.float32, reset=False)
        target = self._encode_targets(y, first_pass, classes)
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self.image_shape_ = shape
            self._initialize_network(shape, hidden)
        elif self.out_activation_ != "softmax" and self.n_outputs_ != self.coefs_[-1].shape[1]:
            raise ValueError("The number of outputs changed; refit with warm_start=False.")
        if first_pass or not hasattr(self, "_network"):
            self._build_network()
        if self._optimizer is None or not incremental and not self.warm_start:
            self._optimizer = self._make_optimizer()
        with threadpool_limits(1, user_api="blas"):
            self._fit_stochastic(np.ascontiguousarray(X, dtype=np.float32), target, y, incremental,
                                 n_threads)
        return self

    # ------------------------------------------------------------------ prediction
    def _forward(self, X):
        check_is_fitted(self)
        X, dtype, _ = self._images(X, reset=False)
        n_threads = effective_n_threads(self.n_jobs)
        out = np.empty((X.shape[0], self.n_outputs_), dtype=np.float32)
        network = self._network
        with threadpool_limits(1, user_api="blas"):
            for start in range(0, X.shape[0], PREDICT_CHUNK_ROWS):
                stop = min(start + PREDICT_CHUNK_ROWS, X.shape[0])
                outputs = network.forward(ActiveSet.from_dense(X[start:stop]), n_threads)[-1]
                network.loss.transform(outputs, n_threads)
                out[start:stop] = outputs.values
        return out, dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.classifier_tags.multi_label = True
        return tags
