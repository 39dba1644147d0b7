"""Conv2D / Pool2D / Flatten layers inside a Network: gradients by finite differences."""

import numpy as np
import pytest

from fastfire.nn.active import ActiveSet
from fastfire.nn.conv import Conv2D, ConvSampling, Flatten, Pool2D
from fastfire.nn.layers import DenseLayer
from fastfire.nn.network import Network
from fastfire.nn.selectors import Dense


def _net(kind="max", selector=None, seed=0, activation="tanh", relu_input=False):
    rng = np.random.default_rng(seed)
    shape = (2, 6, 5)
    c1 = Conv2D((rng.standard_normal((3, 2, 3, 3)) * 0.5).astype(np.float32),
                (rng.standard_normal(3) * 0.1).astype(np.float32), activation, shape, 1, 1, selector)
    p1 = Pool2D(c1.output_shape, 2, kind, relu_input)
    c2 = Conv2D((rng.standard_normal((4, 3, 2, 2)) * 0.5).astype(np.float32),
                (rng.standard_normal(4) * 0.1).astype(np.float32), "tanh", p1.output_shape, 1, 0, selector)
    fl = Flatten(c2.output_shape)
    d = DenseLayer((rng.standard_normal((fl.n_out, 3)) * 0.5).astype(np.float32),
                   np.zeros(3, np.float32), "identity", Dense())
    return Network.from_layers([c1, p1, c2, fl, d], "softmax"), rng


def _loss(net, X, y):
    logits = net.forward(ActiveSet.from_dense(X), 1)[-1].values.astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


class _NoStep:
    """An optimizer that leaves the parameters alone (the L2 term is 0 here: alpha=0)."""

    def step(self, params, grads, l2s, n_threads):
        return 0.0


@pytest.mark.parametrize("kind,activation,relu_input", [("max", "tanh", False), ("avg", "tanh", False),
                                                         ("max", "relu", True)])
def test_network_gradients_match_finite_differences(kind, activation, relu_input):
    net, rng = _net(kind, activation=activation, relu_input=relu_input)
    X = rng.standard_normal((4, 60)).astype(np.float32)
    y = np.array([0, 2, 1, 2], np.int32)
    loss = net.train_step(ActiveSet.from_dense(X), y, 0.0, _NoStep(), 2)
    assert abs(loss - _loss(net, X, y)) < 1e-5
    h = 1e-2
    for layer in (net.layers[0], net.layers[2], net.layers[4]):
        for param, grad in ((layer.coef, layer.coef_grad), (layer.intercept, layer.intercept_grad)):
            flat, gflat = param.reshape(-1), grad.reshape(-1)
            for i in rng.choice(flat.size, min(6, flat.size), replace=False):
                old = flat[i]
                flat[i] = old + h
                lp = _loss(net, X, y)
                flat[i] = old - h
                lm = _loss(net, X, y)
                flat[i] = old
                fd = (lp - lm) / (2 * h)
                assert abs(fd - gflat[i]) < 3e-3 + 3e-2 * abs(fd), (type(layer).__name__, i, fd, gflat[i])


def test_relu_derivative_in_max_pooling_gives_the_same_gradients():
    # Pool2D(relu_input=True) applies ReLU's derivative itself and the network skips the
    # convolution's activation_backward: every gradient is the same as the unfused stack's
    grads = []
    for relu_input in (False, True):
        net, rng = _net("max", activation="relu", relu_input=relu_input)
        assert net.layers[1].applies_input_activation == relu_input
        X = rng.standard_normal((6, 60)).astype(np.float32)
        net.train_step(ActiveSet.from_dense(X), np.array([0, 2, 1, 2, 0, 1], np.int32), 0.0,
                       _NoStep(), 2)
        grads.append([g.copy() for g in net.grads])
    for plain, fused in zip(*grads):
        np.testing.assert_array_equal(plain, fused)
    assert any(np.any(g != 0) for g in grads[1])
    with pytest.raises(ValueError, match="max pooling"):
        Pool2D((2, 4, 4), 2, "avg", relu_input=True)


def test_input_gradient_of_the_stack():
    net, rng = _net("max")
    X = rng.standard_normal((3, 60)).astype(np.float32)
    y = np.array([1, 0, 2], np.int32)
    acts = net.forward(ActiveSet.from_dense(X), 1, training=True)
    probs = np.exp(acts[-1].values - acts[-1].values.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    delta = (probs - np.eye(3, dtype=np.float32)[y]).astype(np.float32)
    grad = delta
    for i in range(len(net.layers) - 1, -1, -1):
        grad = net.layers[i].backward(grad, 1, need_input_grad=True).copy()
        if i > 0:
            net.layers[i - 1].activation_backward(acts[i], grad, 1)
    # d(mean loss)/dX = grad / n (layers return per-sample gradients of the unscaled delta)
    h = 1e-2
    for i in rng.choice(X.size, 6, replace=False):
        Xp, Xm = X.copy(), X.copy()
        Xp.flat[i] += h
        Xm.flat[i] -= h
        fd = (_loss(net, Xp, y) - _loss(net, Xm, y)) / (2 * h) * len(y)
        assert abs(fd - grad.flat[i]) < 3e-3 + 3e-2 * abs(fd)


def conv_reference(X, Wt, b, stride, pad):
    """Direct convolution (cross-correlation): X (N, C, H, W), Wt (F, C, KH, KW)."""
    N, _C, H, W = X.shape
    F, _, KH, KW = Wt.shape
    Xp = np.pad(X.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for i in range(KH):
        for j in range(KW):
            patch = Xp[:, :, i: i + stride * Ho: stride, j: j + stride * Wo: stride]
            out += np.einsum("nchw,fc->nfhw", patch, Wt[:, :, i, j])
    return out + b[None, :, None, None]


def test_conv_layer_matches_numpy_reference():
    rng = np.random.default_rng(3)
    coef = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    layer = Conv2D(coef, b, "relu", (3, 7, 7), stride=2, padding=1)
    X = rng.standard_normal((5, 3 * 49)).astype(np.float32)
    out = layer.forward(ActiveSet.from_dense(X), 2).values
    ref = np.maximum(conv_reference(X.reshape(5, 3, 7, 7), coef, b, 2, 1), 0)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)
    assert layer.output_shape == (4, 4, 4)


def test_sampled_forward_keeps_top_input_channels():
    rng = np.random.default_rng(4)
    coef = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    coef[:, 1] *= 10  # channels 1 and 3 dominate
    X = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    X[:, 3] *= 10
    layer = Conv2D(coef, np.zeros(2, np.float32), "identity", (4, 5, 5), 1, 1,
                   ConvSampling(ratio=0.5, mode="forward"))
    out = layer.forward(ActiveSet.from_dense(X.reshape(3, -1)), 1, training=True).values
    np.testing.assert_array_equal(layer._channels, [1, 3])
    ref = Conv2D(np.ascontiguousarray(coef[:, [1, 3]]), np.zeros(2, np.float32), "identity", (2, 5, 5), 1, 1)
    expected = ref.forward(ActiveSet.from_dense(np.ascontiguousarray(X[:, [1, 3]].reshape(3, -1))), 1).values
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    delta = rng.standard_normal(out.shape).astype(np.float32)
    gin = layer.backward(delta, 1)
    assert np.all(layer.coef_grad[:, [0, 2]] == 0) and np.all(gin.reshape(3, 4, 25)[:, [0, 2]] == 0)
    assert layer.macs_done < layer.macs_exact
    # prediction stays exact
    full = Conv2D(coef, np.zeros(2, np.float32), "identity", (4, 5, 5), 1, 1)
    np.testing.assert_allclose(layer.forward(ActiveSet.from_dense(X.reshape(3, -1)), 1).values,
                               full.forward(ActiveSet.from_dense(X.reshape(3, -1)), 1).values)


def test_sampled_backward_uses_top_examples_and_output_channels():
    rng = np.random.default_rng(5)
    coef = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    X = rng.standard_normal((6, 2 * 16)).astype(np.float32)
    layer = Conv2D(coef, np.zeros(4, np.float32), "identity", (2, 4, 4), 1, 1,
                   ConvSampling(ratio=0.5, mode="backward"))
    exact = Conv2D(coef, np.zeros(4, np.float32), "identity", (2, 4, 4), 1, 1)
    layer.forward(ActiveSet.from_dense(X), 1, training=True)
    delta = rng.standard_normal((6, 64)).astype(np.float32)
    delta[[1, 4]] *= 20  # examples 1, 4 and 5 (largest ‖x‖·‖δ‖) dominate
    delta[5] *= 10
    gin = layer.backward(delta, 1).copy()
    rows = [1, 4, 5]
    exact.forward(ActiveSet.from_dense(np.ascontiguousarray(X[rows])), 1, training=True)
    exact.backward(np.ascontiguousarray(delta[rows]), 1, need_input_grad=False)
    np.testing.assert_allclose(layer.coef_grad, exact.coef_grad * 3 / 6, rtol=1e-4, atol=1e-5)
    assert np.abs(gin).sum() > 0


def test_backward_input_ratio_keeps_fewer_output_channels_for_the_input_gradient():
    # ratio 1 for the examples, input_ratio 0.25 of 4 output channels: the input gradient is
    # the exact one from the output channel with the largest ‖W[f]‖·‖δ[:, f]‖ only
    rng = np.random.default_rng(6)
    coef = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    X = rng.standard_normal((5, 2 * 16)).astype(np.float32)
    delta = rng.standard_normal((5, 4, 16)).astype(np.float32)
    delta[:, 2] *= 10
    layer = Conv2D(coef, np.zeros(4, np.float32), "identity", (2, 4, 4), 1, 1,
                   ConvSampling(ratio=1.0, mode="backward", input_ratio=0.25))
    exact = Conv2D(coef, np.zeros(4, np.float32), "identity", (2, 4, 4), 1, 1)
    for conv in (layer, exact):
        conv.forward(ActiveSet.from_dense(X), 1, training=True)
    gin = layer.backward(delta.reshape(5, -1), 1).copy()
    only = np.zeros_like(delta)
    only[:, 2] = delta[:, 2]
    np.testing.assert_allclose(gin, exact.backward(only.reshape(5, -1), 1), rtol=1e-5, atol=1e-5)
    exact.backward(delta.reshape(5, -1), 1, need_input_grad=False)
    np.testing.assert_allclose(layer.coef_grad, exact.coef_grad, rtol=1e-5, atol=1e-5)
    assert layer.selector.k_input(64) == 16 and layer.selector.k(50) == 50
    with pytest.raises(ValueError, match="backward mode only"):
        ConvSampling(0.5, mode="forward", input_ratio=0.25)
    with pytest.raises(ValueError, match="input_ratio"):
        ConvSampling(0.5, mode="backward", input_ratio=0.0)
