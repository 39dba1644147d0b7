"""Convolution, pooling and flatten layers for :meth:`Network.from_layers`.

Images travel between layers as ordinary ``(n_samples, C*H*W)`` float32 rows (channel-major),
so a convolutional stack feeds dense layers without copies and the Network's training step runs
unchanged. Each layer has the interface of :class:`~fastfire.nn.layers.DenseLayer`: ``forward``,
``backward``, ``activation_backward``, ``coef``/``intercept`` and their gradients, ``selector``.
Layers without parameters (pooling, flatten) hold empty parameter arrays.
"""

import numpy as np

from fastfire._core._conv import (
    conv2d_backward,
    conv2d_forward,
    conv_output_size,
    map_square_sums,
    pool_backward,
    pool_forward,
)
from fastfire._core._dense import ACTIVATIONS, act_backward, bias_act_forward
from fastfire.nn.selectors import Dense, Selector

_EMPTY2 = np.empty((0, 0), dtype=np.float32)
_EMPTY1 = np.empty(0, dtype=np.float32)


# Below this much work per thread (multiply-adds, or elements for pooling), an OpenMP region
# costs more than it saves: on a loaded machine a region waits for its slowest thread.
_GRAIN_MACS = 1 << 20
_GRAIN_ELEMENTS = 1 << 16


def _threads(work, n_threads, grain):
    """Threads worth using for ``work`` units: at least one, at most ``n_threads``."""
    return int(max(1, min(n_threads, work // grain)))


def _rows(buffer, n, width, dtype=np.float32):
    if buffer is None or buffer.shape[0] < n or buffer.shape[1] != width:
        buffer = np.empty((max(n, 1), width), dtype=dtype)
    return buffer, buffer[:n]


class ConvSampling(Selector):
    """Top-k sampled products in a :class:`Conv2D` layer during training (prediction is exact).

    The convolution ``out = W * X`` is a sum over input channels; its gradients are sums over
    output channels (input gradient) and over the batch examples (weight gradient). Each sum
    keeps the ``k = min(max(⌊ratio·n⌋, minimal_k), n)`` terms with the largest norm products
    (deterministic top-k, unscaled, as in Adelman et al.'s convolution experiments):

    - ``mode="forward"``: the input channels ``c`` with the largest ``‖W[:, c]‖·‖X[:, c]‖``
      in the forward pass; the backward pass goes through the same channels (the gradients of
      the other channels' weights and inputs are zero);
    - ``mode="backward"``: exact forward; the input gradient from the output channels ``f``
      with the largest ``‖W[f]‖·‖dout[:, f]‖``, the weight gradient from the examples ``i``
      with the largest ``‖X[i]‖·‖dout[i]‖``.

    The work follows ``k``: the forward mode convolves the ``k`` gathered channels (im2col,
    both GEMMs and col2im of the backward pass on ``k`` channels); the backward mode runs the
    weight gradient's im2col and GEMM on the ``k`` examples only and the input gradient's GEMM
    on the ``k`` output channels (its col2im stays full size; with at most a quarter of the
    channels kept, the input gradient is a transposed convolution of those channels instead,
    whose work is proportional to ``k``). The scores take one parallel pass over the layer's
    input and one over ``dout``.

    Parameters
    ----------
    ratio : float in (0, 1], default=0.5
    minimal_k : int, default=1
    mode : {"forward", "backward"}, default="forward"
    input_ratio : float in (0, 1], default=None
        Backward mode: the ratio of output channels kept for the input gradient, when it
        should differ from ``ratio`` (which then applies to the weight gradient's examples).
        None: ``ratio`` for both.
    """

    name = None  # used through Conv2D(selector=...) / ConvNetClassifier(conv_selection=...)

    def __init__(self, ratio=0.5, minimal_k=1, mode="forward", input_ratio=None):
        for label, value in (("ratio", ratio), ("input_ratio", 1.0 if input_ratio is None else input_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{label} must be a float in (0, 1]; got {value!r}.")
        if isinstance(minimal_k, bool) or not isinstance(minimal_k, (int, np.integer)) or minimal_k < 1:
            raise ValueError(f"minimal_k must be an int >= 1; got {minimal_k!r}.")
        if mode not in ("forward", "backward"):
            raise ValueError(f"mode must be 'forward' or 'backward'; got {mode!r}.")
        if input_ratio is not None and mode != "backward":
            raise ValueError("input_ratio is for the backward mode only.")
        self.ratio = float(ratio)
        self.minimal_k = int(minimal_k)
        self.mode = mode
        self.input_ratio = None if input_ratio is None else float(input_ratio)

    def k(self, n, ratio=None):
        """How many of ``n`` terms to keep (at ``ratio``, by default the selector's)."""
        ratio = self.ratio if ratio is None else ratio
        return min(max(int(ratio * n + 1e-9), self.minimal_k), n)

    def k_input(self, n_channels):
        """How many output channels the backward mode keeps for the input gradient."""
        return self.k(n_channels, getattr(self, "input_ratio", None))  # older pickles lack it


def _top(scores, k):
    """Ids of the k largest scores, ascending (ties: lower id first)."""
    if k >= len(scores):
        return None
    order = np.argsort(-scores, kind="stable")[:k]
    return np.sort(order).astype(np.intp)


class Conv2D:
    """2-D convolution + bias + activation on ``(n, C*H*W)`` rows, through im2col + sgemm.

    Parameters
    ----------
    coef : ndarray of shape (F, C, KH, KW), float32, C-contiguous
        Kernels; used in place.
    intercept : ndarray of shape (F,), float32
    activation : {"identity", "relu", "logistic", "tanh"}
    input_shape : tuple (C, H, W)
    stride : int, default=1
    padding : int, default=0
        Zero padding on every side.
    selector : Selector, default=None
        ``None``/:class:`~fastfire.nn.selectors.Dense` for exact products, or
        :class:`ConvSampling`.
    """

    def __init__(self, coef, intercept, activation, input_shape, stride=1, padding=0, selector=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}.")
        if coef.ndim != 4 or coef.dtype != np.float32 or not coef.flags.c_contiguous:
            raise ValueError("coef must be a C-contiguous float32 array of shape (F, C, KH, KW).")
        C, H, W = (int(v) for v in input_shape)
        F, Cw, KH, KW = coef.shape
        if Cw != C:
            raise ValueError(f"coef has {Cw} input channels but input_shape has {C}.")
        if intercept.shape != (F,):
            raise ValueError(f"intercept must have shape ({F},); got {intercept.shape}.")
        if int(stride) < 1 or int(padding) < 0:
            raise ValueError(f"stride must be >= 1 and padding >= 0; got {stride}, {padding}.")
        Ho = conv_output_size(H, KH, stride, padding)
        Wo = conv_output_size(W, KW, stride, padding)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"a {KH}x{KW} kernel with padding {padding} does not fit a {H}x{W} image.")
        self.coef = coef
        self.intercept = intercept
        self.activation = activation
        self.input_shape = (C, H, W)
        self.output_shape = (F, Ho, Wo)
        self.stride = int(stride)
        self.padding = int(padding)
        self.selector = selector if selector is not None else Dense()
        self.coef_grad = np.zeros_like(coef)
        self.intercept_grad = np.zeros_like(intercept)
        self._act_code = ACTIVATIONS[activation]
        self._inputs = None
        self._channels = None  # input channels kept by a sampled forward pass
        self._out = self._input_grad = None
        self._sampled = self._zero_bias = None
        self.macs_done = 0
        self.macs_exact = 0

    @property
    def n_in(self):
        return int(np.prod(self.input_shape))

    @property
    def n_out(self):
        return int(np.prod(self.output_shape))

    def _geometry(self, C):
        _, H, W = self.input_shape
        _, _, KH, KW = self.coef.shape
        return {"C": C, "H": H, "W": W, "KH": KH, "KW": KW, "stride": self.stride, "pad": self.padding}

    def _macs(self, C, n, F=None):
        F = self.coef.shape[0] if F is None else F
        KH, KW = self.coef.shape[2:]
        return n * F * C * KH * KW * self.output_shape[1] * self.output_shape[2]

    def forward(self, inputs, n_threads, training=False):
        """Convolve a dense ``(n, C*H*W)`` ActiveSet; returns ``(n, F*Ho*Wo)`` activations."""
        if not inputs.is_dense:
            raise ValueError("Conv2D needs dense image rows.")
        X = inputs.values
        n = X.shape[0]
        C = self.input_shape[0]
        F = self.coef.shape[0]
        self._out, out = _rows(self._out, n, self.n_out)
        n_threads = _threads(self._macs(C, n), n_threads, _GRAIN_MACS)
        sel = self.selector
        self._channels = None
        W2 = self.coef.reshape(F, -1)
        if training and isinstance(sel, ConvSampling) and sel.mode == "forward":
            k = sel.k(C)
            if k < C:
                scores = (np.sqrt(self._map_norms(X, C, n_threads).sum(axis=0))
                          * np.sqrt(np.einsum("fcij,fcij->c", self.coef, self.coef, dtype=np.float64)))
                self._channels = _top(scores, k)
        if self._channels is not None:
            ch = self._channels
            Xc = X.reshape(n, C, -1)
            Xs = np.ascontiguousarray(Xc[:, ch].reshape(n, -1))
            Ws = np.ascontiguousarray(self.coef[:, ch].reshape(F, -1))
            conv2d_forward(Xs, Ws, self.intercept, out,
                           n_threads=n_threads, **self._geometry(len(ch)))
            self._sampled = (Xs, Ws)
            if training:
                self.macs_done += self._macs(len(ch), n)
        else:
            conv2d_forward(X, W2, self.intercept, out, n_threads=n_threads,
                           **self._geometry(C))
            if training:
                self.macs_done += self._macs(C, n)
        if training:
            self.macs_exact += self._macs(C, n)
        if self._zero_bias is None or self._zero_bias.shape[0] != self.n_out:
            self._zero_bias = np.zeros(self.n_out, np.float32)
        bias_act_forward(out, self._zero_bias, self._act_code, n_threads)  # bias added above
        self._inputs = inputs if training else None
        return inputs.from_dense(out)

    def _map_norms(self, A, maps, n_threads):
        """Squared norm of each of the ``maps`` channels of every row of ``A``: ``(n, maps)``."""
        out = np.empty((A.shape[0], maps), np.float64)
        map_square_sums(A, out, n_threads)
        return out

    def backward(self, delta, n_threads, need_input_grad=True):
        """Gradients from ``delta`` = dLoss/d(pre-activation) ``(n, F*Ho*Wo)``; returns the
        input gradient ``(n, C*H*W)`` (or None)."""
        X = self._inputs.values
        n = X.shape[0]
        C = self.input_shape[0]
        F = self.coef.shape[0]
        sel = self.selector
        scale = 1.0 / n
        n_threads = _threads(self._macs(C, n), n_threads, _GRAIN_MACS)
        if need_input_grad:
            self._input_grad, input_grad = _rows(self._input_grad, n, self.n_in)
        else:
            input_grad = _EMPTY2
        exact_macs = self._macs(C, n) * (2 if need_input_grad else 1)
        self.macs_exact += exact_macs
        if self._channels is not None:  # back through the forward sample of input channels
            ch = self._channels
            Xs, Ws = self._sampled
            k = len(ch)
            dWs = np.empty((F, k * self.coef.shape[2] * self.coef.shape[3]), np.float32)
            dXs = np.empty((n, Xs.shape[1]), np.float32) if need_input_grad else _EMPTY2
            conv2d_backward(Xs, Ws, delta, dWs, self.intercept_grad, dXs, scale=scale,
                            n_threads=n_threads, **self._geometry(k))
            self.coef_grad[...] = 0.0
            self.coef_grad[:, ch] = dWs.reshape(F, k, *self.coef.shape[2:])
            if need_input_grad:
                input_grad[...] = 0.0
                input_grad.reshape(n, C, -1)[:, ch] = dXs.reshape(n, k, -1)
            self.macs_done += self._macs(k, n) * (2 if need_input_grad else 1)
            return input_grad if need_input_grad else None
        W2 = self.coef.reshape(F, -1)
        g2 = self.coef_grad.reshape(F, -1)
        rows = channels = None
        if isinstance(sel, ConvSampling) and sel.mode == "backward":
            # weight gradient from the top-k examples by ‖x_i‖·‖δ_i‖, input gradient from the
            # top-k output channels by ‖W[f]‖·‖δ[:, f]‖ (one pass over δ gives both norms)
            if sel.k(n) < n or (need_input_grad and sel.k_input(F) < F):
                d_norms = self._map_norms(delta, F, n_threads)
                if sel.k(n) < n:
                    x_norms = self._map_norms(X, 1, n_threads)[:, 0]
                    rows = _top(np.sqrt(x_norms * d_norms.sum(axis=1)), sel.k(n))
                if need_input_grad and sel.k_input(F) < F:
                    channels = _top(np.sqrt(d_norms.sum(axis=0) * np.einsum("fk,fk->f", W2, W2)),
                                    sel.k_input(F))
        conv2d_backward(X, W2, delta, g2, self.intercept_grad, input_grad, scale=scale,
                        n_threads=n_threads, example_ids=rows, output_channels=channels,
                        **self._geometry(C))
        self.macs_done += self._macs(C, n if rows is None else len(rows))
        if need_input_grad:
            self.macs_done += self._macs(C, n, F if channels is None else len(channels))
            return input_grad
        return None

    def activation_backward(self, outputs, grad, n_threads):
        """In place: dLoss/d(outputs) → dLoss/d(pre-activation)."""
        act_backward(outputs.values, grad, self._act_code, n_threads)

    def release_buffers(self):
        self._inputs = None
        self._out = self._input_grad = None
        self._sampled = None

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_inputs", "_out", "_input_grad", "_sampled", "_channels"):
            state[key] = None
        return state


class _ParameterFree:
    """Shared plumbing of layers without parameters (pooling, flatten)."""

    def _init_empty(self):
        self.coef = np.zeros((0, 0), dtype=np.float32)
        self.intercept = np.zeros(0, dtype=np.float32)
        self.coef_grad = np.zeros((0, 0), dtype=np.float32)
        self.intercept_grad = np.zeros(0, dtype=np.float32)
        self.selector = Dense()
        self.activation = "identity"

    @property
    def n_in(self):
        return int(np.prod(self.input_shape))

    @property
    def n_out(self):
        return int(np.prod(self.output_shape))

    def activation_backward(self, outputs, grad, n_threads):
        """No activation: the gradient w.r.t. the outputs is already the one ``backward`` takes."""

    def release_buffers(self):
        self._out = self._input_grad = self._argmax = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_out"] = state["_input_grad"] = state["_argmax"] = None
        return state


class Pool2D(_ParameterFree):
    """Max or average pooling over non-overlapping ``pool x pool`` windows (stride = window).

    A window larger than the image is clipped to it (so 1-pixel-high images pool along their
    width only); trailing rows/columns that do not fill a window are dropped.

    Parameters
    ----------
    input_shape : tuple (C, H, W)
    pool : int or (int, int), default=2
    kind : {"max", "avg"}, default="max"
    relu_input : bool, default=False
        The previous layer's activation is ReLU (max pooling only). The backward pass then
        applies ReLU's derivative too: a window passes its gradient only if its maximum is
        positive, and the network skips the previous layer's ``activation_backward`` (a pass
        over the unpooled gradient saved; see :attr:`applies_input_activation`).
    """

    def __init__(self, input_shape, pool=2, kind="max", relu_input=False):
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg'; got {kind!r}.")
        if relu_input and kind != "max":
            raise ValueError("relu_input=True needs max pooling.")
        ph, pw = (pool, pool) if np.isscalar(pool) else pool
        if int(ph) < 1 or int(pw) < 1:
            raise ValueError(f"pool must be >= 1; got {pool!r}.")
        C, H, W = (int(v) for v in input_shape)
        self.input_shape = (C, H, W)
        self.window = (min(int(ph), H), min(int(pw), W))
        self.output_shape = (C, H // self.window[0], W // self.window[1])
        self.kind = kind
        self.relu_input = bool(relu_input)
        self._init_empty()
        self._out = self._input_grad = self._argmax = None

    @property
    def applies_input_activation(self):
        """True when :meth:`backward` returns the gradient w.r.t. the previous layer's
        pre-activation (ReLU's derivative applied here), so the network must not apply it."""
        return getattr(self, "relu_input", False)  # models pickled before the attribute

    def _args(self):
        C, H, W = self.input_shape
        return {"C": C, "H": H, "W": W, "PH": self.window[0], "PW": self.window[1], "is_max": self.kind == "max"}

    def forward(self, inputs, n_threads, training=False):
        X = inputs.values
        n = X.shape[0]
        self._out, out = _rows(self._out, n, self.n_out)
        if self.kind == "max":
            self._argmax, argmax = _rows(self._argmax, n, self.n_out, np.int32)
        else:
            argmax = np.empty((0, 0), np.int32)
        n_threads = _threads(n * self.n_in, n_threads, _GRAIN_ELEMENTS)
        pool_forward(X, out, argmax, n_threads=n_threads, **self._args())
        return inputs.from_dense(out)

    def backward(self, delta, n_threads, need_input_grad=True):
        if not need_input_grad:
            return None
        n = delta.shape[0]
        self._input_grad, input_grad = _rows(self._input_grad, n, self.n_in)
        argmax = self._argmax[:n] if self.kind == "max" else np.empty((0, 0), np.int32)
        n_threads = _threads(n * self.n_in, n_threads, _GRAIN_ELEMENTS)
        positive = self._out[:n] if self.applies_input_activation else None
        pool_backward(delta, argmax, input_grad, n_threads=n_threads, positive=positive,
                      **self._args())
        return input_grad


class Flatten(_ParameterFree):
    """Flatten ``(C, H, W)`` images to feature rows: the identity on fastfire's row layout (images
    already travel as channel-major rows); kept so stacks read like their PyTorch twins."""

    def __init__(self, input_shape):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.output_shape = (int(np.prod(self.input_shape)),)
        self._init_empty()
        self._out = self._input_grad = self._argmax = None

    def forward(self, inputs, n_threads, training=False):
        return inputs

    def backward(self, delta, n_threads, need_input_grad=True):
        return delta if need_input_grad else None
