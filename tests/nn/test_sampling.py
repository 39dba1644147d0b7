"""ColumnRowSampling: the sampled dense layer against NumPy references, and in the MLP estimators."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from fastfire import MLPClassifier, MLPRegressor
from fastfire.nn.active import ActiveSet
from fastfire.nn.sampling import MODES, ColumnRowSampling, SampledDenseLayer
from fastfire.nn.selectors import SELECTORS

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _layer(mode, scheme="bernoulli", ratio=0.4, n_in=40, n_out=30, activation="relu", seed=0):
    rng = np.random.default_rng(seed)
    coef = (rng.standard_normal((n_in, n_out)) * 0.3).astype(np.float32)
    intercept = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
    sel = ColumnRowSampling(scheme=scheme, ratio=ratio, minimal_k=2, mode=mode, random_state=seed)
    return sel.make_layer(coef, intercept, activation), rng


def _relu(z):
    return np.maximum(z, 0)


def test_registered_and_validated():
    assert SELECTORS["sampled"] is ColumnRowSampling
    assert MODES == ("forward", "backward", "forward_exact_backward")
    for kwargs, name in [({"scheme": "x"}, "scheme"), ({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"),
                         ({"minimal_k": 0}, "minimal_k"), ({"mode": "both"}, "mode"),
                         ({"epsilon": 2.0}, "epsilon"), ({"random_state": "a"}, "random_state"),
                         ({"estimate_fraction": 0}, "estimate_fraction")]:
        with pytest.raises(ValueError, match=name):
            ColumnRowSampling(**kwargs)


def test_forward_mode_layer_matches_numpy():
    layer, rng = _layer("forward")
    assert isinstance(layer, SampledDenseLayer)
    X = rng.random((12, 40)).astype(np.float32)
    out = layer.forward(ActiveSet.from_dense(X), 2, training=True).values.copy()
    kept = layer._sample
    assert kept is not None and kept < 40
    idx, scale = layer._idx[:kept], layer._scale[:kept]
    xs = X[:, idx] * scale
    np.testing.assert_allclose(out, _relu(xs @ layer.coef[idx] + layer.intercept), rtol=1e-5, atol=1e-5)

    delta = rng.standard_normal((12, 30)).astype(np.float32)
    grad_in = layer.backward(delta, 2, need_input_grad=True)
    ref_w = np.zeros_like(layer.coef)
    ref_w[idx] = xs.T @ delta / 12
    np.testing.assert_allclose(layer.coef_grad, ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.intercept_grad, delta.mean(0), rtol=1e-5, atol=1e-6)
    ref_in = np.zeros_like(X)
    ref_in[:, idx] = (delta @ layer.coef[idx].T) * scale
    np.testing.assert_allclose(grad_in, ref_in, rtol=1e-5, atol=1e-5)
    assert layer.macs_done < layer.macs_exact


def _mean_corrected_layer(mode="forward"):
    rng = np.random.default_rng(3)
    coef = (rng.standard_normal((40, 30)) * 0.3).astype(np.float32)
    intercept = (rng.standard_normal(30) * 0.1).astype(np.float32)
    sel = ColumnRowSampling(scheme="topk", ratio=0.4, minimal_k=2, mode=mode, random_state=0,
                            dropped="mean")
    return sel.make_layer(coef, intercept, "identity"), rng


def test_forward_mode_mean_correction_matches_numpy():
    layer, rng = _mean_corrected_layer()
    X = rng.random((12, 40)).astype(np.float32)
    W, b = layer.coef.astype(np.float64), layer.intercept.astype(np.float64)
    out = layer.forward(ActiveSet.from_dense(X), 2, training=True).values.copy()
    scores = np.linalg.norm(X, axis=0) * np.linalg.norm(W, axis=1)
    kept = np.sort(np.argsort(-scores, kind="stable")[:16])
    np.testing.assert_array_equal(layer._idx[: layer._sample], kept)
    dropped = np.setdiff1d(np.arange(40), kept)

    def surrogate(X, W):  # the layer's estimate of X @ W + b, for a fixed kept set
        return X[:, kept] @ W[kept] + X[:, dropped].mean(0) @ W[dropped] + b

    X64 = X.astype(np.float64)
    np.testing.assert_allclose(out, surrogate(X64, W), rtol=1e-5, atol=1e-5)
    # closer to the exact product than dropping the features outright
    exact = X64 @ W + b
    assert (np.abs(out - exact).mean()
            < 0.7 * np.abs(X64[:, kept] @ W[kept] + b - exact).mean())

    # the gradients are those of the surrogate (loss = sum(delta * out) / n), checked by
    # central differences along random directions
    delta = rng.standard_normal((12, 30)).astype(np.float32)
    grad_in = layer.backward(delta, 2, need_input_grad=True)
    np.testing.assert_allclose(layer.intercept_grad, delta.mean(0), rtol=1e-5, atol=1e-6)

    def loss(X, W):
        return (delta * surrogate(X, W)).sum() / 12

    h = 1e-4
    for _ in range(3):
        dW = rng.standard_normal(W.shape)
        numeric = (loss(X64, W + h * dW) - loss(X64, W - h * dW)) / (2 * h)
        assert abs((layer.coef_grad * dW).sum() - numeric) < 1e-4 * (1 + abs(numeric))
        dX = rng.standard_normal(X.shape)
        numeric = (loss(X64 + h * dX, W) - loss(X64 - h * dX, W)) / (2 * h) * 12
        assert abs((grad_in * dX).sum() - numeric) < 1e-4 * (1 + abs(numeric))
    assert layer.coef_grad[dropped].any() and grad_in[:, dropped].any()


def test_mean_correction_needs_a_topk_forward_sample():
    for kwargs in ({"scheme": "bernoulli"}, {"scheme": "topk", "mode": "backward"}):
        with pytest.raises(ValueError, match="dropped"):
            ColumnRowSampling(dropped="mean", **kwargs)
    with pytest.raises(ValueError, match="dropped"):
        ColumnRowSampling(scheme="topk", dropped="median")
    # forward_exact_backward: corrected forward, exact gradients
    layer, rng = _mean_corrected_layer("forward_exact_backward")
    X = rng.random((12, 40)).astype(np.float32)
    layer.forward(ActiveSet.from_dense(X), 1, training=True)
    delta = rng.standard_normal((12, 30)).astype(np.float32)
    grad_in = layer.backward(delta, 1)
    np.testing.assert_allclose(layer.coef_grad, X.T @ delta / 12, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_in, delta @ layer.coef.T, rtol=1e-5, atol=1e-5)


def test_forward_exact_backward_gives_exact_gradients():
    layer, rng = _layer("forward_exact_backward")
    X = rng.random((12, 40)).astype(np.float32)
    layer.forward(ActiveSet.from_dense(X), 1, training=True)
    delta = rng.standard_normal((12, 30)).astype(np.float32)
    grad_in = layer.backward(delta, 1)
    np.testing.assert_allclose(layer.coef_grad, X.T @ delta / 12, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_in, delta @ layer.coef.T, rtol=1e-5, atol=1e-5)


def test_backward_mode_exact_forward_and_sampled_gradients():
    layer, rng = _layer("backward", scheme="topk", ratio=0.5)
    X = rng.random((16, 40)).astype(np.float32)
    out = layer.forward(ActiveSet.from_dense(X), 2, training=True).values.copy()
    np.testing.assert_allclose(out, _relu(X @ layer.coef + layer.intercept), rtol=1e-5, atol=1e-5)
    delta = rng.standard_normal((16, 30)).astype(np.float32)
    w_before = None
    grad_in = layer.backward(delta, 2)
    # input gradient: the last product (sampled over the 30 output features, top 15)
    s = np.linalg.norm(delta, axis=0) * np.linalg.norm(layer.coef, axis=0)
    keep = np.sort(np.argsort(-s)[:15])
    np.testing.assert_allclose(grad_in, delta[:, keep] @ layer.coef[:, keep].T, rtol=1e-5, atol=1e-5)
    # weight gradient: sampled over the 16 batch examples (top 8 by ‖x_i‖·‖delta_i‖)
    s = np.linalg.norm(X, axis=1) * np.linalg.norm(delta, axis=1)
    keep = np.sort(np.argsort(-s)[:8])
    np.testing.assert_allclose(layer.coef_grad, X[keep].T @ delta[keep] / 16, rtol=1e-5, atol=1e-6)
    assert w_before is None


def test_backward_mode_weight_gradient_is_unbiased():
    layer, rng = _layer("backward", scheme="bernoulli", ratio=0.3, n_in=6, n_out=4)
    X = rng.random((20, 6)).astype(np.float32)
    delta = rng.standard_normal((20, 4)).astype(np.float32)
    grads = []
    for _ in range(1000):
        layer.forward(ActiveSet.from_dense(X), 1, training=True)
        layer.backward(delta, 1, need_input_grad=False)
        grads.append(np.array(layer.coef_grad, dtype=np.float64))
    grads = np.array(grads)
    z = (grads.mean(0) - X.T.astype(np.float64) @ delta / 20) / (grads.std(0, ddof=1) / np.sqrt(len(grads)))
    assert np.abs(z).max() < 4.5


def test_backward_mode_input_gradient_scores_use_the_previous_weights():
    # the column norms of W come from the previous step's gather: one update stale
    layer, rng = _layer("backward", scheme="topk", ratio=0.5)
    X = rng.random((16, 40)).astype(np.float32)
    delta = rng.standard_normal((16, 30)).astype(np.float32)
    layer.forward(ActiveSet.from_dense(X), 2, training=True)
    layer.backward(delta, 2)
    w_old = layer.coef.copy()
    layer.coef *= rng.gamma(1.0, 1.0, 30).astype(np.float32)  # an "optimizer step"
    layer.forward(ActiveSet.from_dense(X), 2, training=True)
    grad_in = layer.backward(delta, 2)
    s = np.linalg.norm(delta, axis=0) * np.linalg.norm(w_old, axis=0)
    keep = np.sort(np.argsort(-s)[:15])
    np.testing.assert_allclose(grad_in, delta[:, keep] @ layer.coef[:, keep].T, rtol=1e-5, atol=1e-5)
    # a pickled layer starts from fresh norms
    layer2 = pickle.loads(pickle.dumps(layer))
    layer2.coef *= rng.gamma(1.0, 1.0, 30).astype(np.float32)
    layer2.forward(ActiveSet.from_dense(X), 2, training=True)
    grad_in = layer2.backward(delta, 2)
    s = np.linalg.norm(delta, axis=0) * np.linalg.norm(layer2.coef, axis=0)
    keep = np.sort(np.argsort(-s)[:15])
    np.testing.assert_allclose(grad_in, delta[:, keep] @ layer2.coef[:, keep].T, rtol=1e-5, atol=1e-5)


def test_prediction_is_exact():
    layer, rng = _layer("forward")
    X = rng.random((8, 40)).astype(np.float32)
    out = layer.forward(ActiveSet.from_dense(X), 1, training=False).values
    np.testing.assert_allclose(out, _relu(X @ layer.coef + layer.intercept), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_ratio_one_trains_bit_for_bit_as_dense(mode):
    X, y = load_digits(return_X_y=True)
    X = X[:400] / 16
    y = y[:400]
    kw = {"hidden_layer_sizes": (32,), "max_iter": 3, "random_state": 0, "n_jobs": 2}
    dense = MLPClassifier(**kw).fit(X, y)
    sampled = MLPClassifier(selection=ColumnRowSampling(ratio=1.0, mode=mode, random_state=0), **kw).fit(X, y)
    for a, b in zip(dense.coefs_ + dense.intercepts_, sampled.coefs_ + sampled.intercepts_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_trains_well_on_digits(mode):
    X, y = load_digits(return_X_y=True)
    X = X / 16
    sel = ColumnRowSampling(scheme="bernoulli", ratio=0.5, mode=mode, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=25, random_state=0, n_jobs=2,
                        batch_size=64, selection=[sel, "dense"]).fit(X[:1400], y[:1400])
    assert clf.score(X[1400:], y[1400:]) > 0.85
    layer = clf._network.layers[0]
    assert layer.macs_done < 0.9 * layer.macs_exact


def test_deterministic_for_a_seed_and_pickles():
    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16, y[:300]
    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2, random_state=0, n_jobs=2,
                        selection=ColumnRowSampling(scheme="crs", ratio=0.3, random_state=3))
    a = clone(est).fit(X, y)
    b = clone(est).fit(X, y)
    for ca, cb in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(ca, cb)
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.predict_proba(X), a.predict_proba(X))
    c.partial_fit(X, y)  # training continues after unpickling (buffers regrow)


def test_string_selection_and_regressor():
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, (300, 20))
    y = X[:, 0] - X[:, 1]
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=5, selection="sampled").fit(X, y)
    assert isinstance(reg._network.layers[0], SampledDenseLayer)
    assert np.isfinite(reg.loss_)
    kw = {"hidden_layer_sizes": (32,), "max_iter": 50, "random_state": 0}
    dense = MLPRegressor(**kw).fit(X, y).score(X, y)
    sel = ColumnRowSampling(scheme="bernoulli", ratio=0.5, mode="backward", random_state=0)
    assert MLPRegressor(selection=sel, **kw).fit(X, y).score(X, y) > dense - 0.1


def test_backward_mode_weight_gradient_is_factored_and_applied_unformed():
    from fastfire.nn.optimizers import SGD, Adam, OuterGrad

    layer, rng = _layer("backward", scheme="topk", ratio=0.5)
    X = rng.random((20, 40)).astype(np.float32)
    delta = rng.standard_normal((20, 30)).astype(np.float32)
    layer.forward(ActiveSet.from_dense(X), 2, training=True)
    layer.backward(delta, 2)
    g = layer.coef_grad
    assert isinstance(g, OuterGrad) and g.left.shape == (10, 40) and g.right.shape == (10, 30)
    formed = np.array(g)  # the sampled gradient over the 10 kept examples, as NumPy forms it
    keep = np.sort(np.argsort(-(np.linalg.norm(X, axis=1) * np.linalg.norm(delta, axis=1)),
                              kind="stable")[:10])
    np.testing.assert_allclose(formed, X[keep].T @ delta[keep] / 20, rtol=1e-5, atol=1e-6)

    for make in (lambda p: Adam(p, 1e-2), lambda p: SGD(p, 1e-2)):
        fused = [layer.coef.copy(), layer.intercept.copy()]
        plain = [a.copy() for a in fused]
        opt_fused, opt_plain = make(fused), make(plain)
        for _ in range(3):
            g = OuterGrad(g.left, g.right, g.alpha, np.empty_like(formed))
            norm_fused = opt_fused.step(fused, [g, layer.intercept_grad], [1e-3, 0.0], 2)
            norm_plain = opt_plain.step(plain, [formed, layer.intercept_grad], [1e-3, 0.0], 2)
            np.testing.assert_array_equal(fused[0], plain[0])
            assert norm_fused == pytest.approx(norm_plain, rel=1e-6)
    # factored_update=False forms the same gradient with a GEMM
    coef, intercept = layer.coef.copy(), layer.intercept.copy()
    sel = ColumnRowSampling(scheme="topk", ratio=0.5, minimal_k=2, mode="backward",
                            random_state=0, factored_update=False)
    formed_layer = sel.make_layer(coef, intercept, "relu")
    formed_layer.forward(ActiveSet.from_dense(X), 2, training=True)
    formed_layer.backward(delta, 2)
    assert isinstance(formed_layer.coef_grad, np.ndarray)
    np.testing.assert_allclose(formed_layer.coef_grad, formed, rtol=1e-5, atol=1e-6)
    # an exact weight gradient (k = n = 2 examples) is a plain array again
    layer.forward(ActiveSet.from_dense(X[:2]), 1, training=True)
    layer.backward(delta[:2], 1)
    assert isinstance(layer.coef_grad, np.ndarray)
