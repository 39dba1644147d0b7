"""Threshold firing in the MLP engine, against dense ReLU training and a NumPy reference."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import fastfire
from fastfire import MLPClassifier, Threshold
from fastfire.nn.active import ActiveSet
from fastfire.nn.network import Network
from fastfire.nn.optimizers import SGD
from fastfire.nn.selectors import Dense


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(**params).fit(X, y)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_threshold_zero_trains_exactly_like_dense_relu(digits, n_jobs):
    X, y = digits
    kw = dict(hidden_layer_sizes=(48, 24), max_iter=3, random_state=0, n_jobs=n_jobs)
    dense = _fit(X, y, **kw)
    sparse = _fit(X, y, selection=[Threshold(0.0), Threshold(0.0), "dense"], **kw)
    np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(sparse.coefs_[1], dense.coefs_[1], atol=1e-5)
    np.testing.assert_allclose(sparse.predict_proba(X), dense.predict_proba(X), atol=1e-5)


def _reference_step(X, target, coefs, intercepts, b, lr):
    """One plain-NumPy SGD step (no momentum) of a shifted-ReLU MLP with softmax output."""
    n = X.shape[0]
    acts, masks = [X.astype(np.float64)], []
    for W, c in zip(coefs[:-1], intercepts[:-1]):
        z = acts[-1] @ W + c
        masks.append(z > b)
        acts.append(np.where(z > b, z - b, 0.0))
    logits = acts[-1] @ coefs[-1] + intercepts[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(n), target]).mean()
    delta = p.copy()
    delta[np.arange(n), target] -= 1
    new_coefs, new_intercepts = [], []
    for i in range(len(coefs) - 1, -1, -1):
        grad_W, grad_c = acts[i].T @ delta / n, delta.mean(0)
        if i > 0:
            delta = (delta @ coefs[i].T) * masks[i - 1]
        new_coefs.insert(0, coefs[i] - lr * grad_W)
        new_intercepts.insert(0, intercepts[i] - lr * grad_c)
    return loss, new_coefs, new_intercepts, acts


@pytest.mark.parametrize("b", [0.05, 0.3])
def test_one_training_step_matches_numpy_reference(digits, b):
    X, y = digits[0][:64], digits[1][:64].astype(np.int32)
    rng = np.random.default_rng(0)
    sizes = [64, 40, 30, 10]
    coefs = [rng.normal(0, 0.3, (a, c)).astype(np.float32) for a, c in zip(sizes[:-1], sizes[1:])]
    intercepts = [rng.normal(0, 0.1, c).astype(np.float32) for c in sizes[1:]]
    ref_loss, ref_coefs, ref_intercepts, ref_acts = _reference_step(X, y, coefs, intercepts, b, 0.1)

    network = Network([c.copy() for c in coefs], [c.copy() for c in intercepts], "relu", "softmax",
                      [Threshold(b), Threshold(b), Dense()])
    activations = network.forward(ActiveSet.from_data(X), n_threads=2)
    for ours, ref, layer in zip(activations[1:3], ref_acts[1:3], network.layers):
        assert not ours.is_dense
        np.testing.assert_array_equal(ours.to_dense() > 0, ref > 0)  # the firing sets
        np.testing.assert_allclose(ours.to_dense(), ref, atol=1e-5)
        assert layer.firing_fraction == pytest.approx((ref > 0).mean())
    optimizer = SGD(network.params, learning_rate_init=0.1, momentum=0.0, nesterov=False)
    loss = network.train_step(ActiveSet.from_data(X), y, 0.0, optimizer, n_threads=2)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for layer, W, c in zip(network.layers, ref_coefs, ref_intercepts):
        np.testing.assert_allclose(layer.coef, W, atol=1e-5)
        np.testing.assert_allclose(layer.intercept, c, atol=1e-5)


def test_higher_threshold_fires_fewer_neurons_and_still_learns(digits):
    X, y = digits
    clf = _fit(X, y, hidden_layer_sizes=(256,), max_iter=30, random_state=0,
               selection=[Threshold(0.5), "dense"])
    assert clf.score(X, y) > 0.95
    layer = clf._network.layers[0]
    layer.forward(ActiveSet.from_data(X), n_threads=1)
    assert 0 < layer.firing_fraction < 0.5


def test_threshold_by_name_save_load_and_pickle(tmp_path, digits):
    import pickle

    X, y = digits
    clf = _fit(X, y, hidden_layer_sizes=(16,), max_iter=2, random_state=0,
               selection=[Threshold(0.2), "dense"])
    by_name = _fit(X, y, hidden_layer_sizes=(16,), max_iter=2, random_state=0,
                   selection=["threshold", "dense"])
    assert by_name._network.layers[0].selector == Threshold()
    fastfire.save(clf, tmp_path / "m.npz")
    loaded = fastfire.load(tmp_path / "m.npz")
    assert loaded.selection[0] == Threshold(0.2)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(selection=Threshold(0.1)), "output layer"),
        (dict(selection=[Threshold(-1.0), "dense"]), "b >= 0"),
        (dict(selection=[Threshold(float("nan")), "dense"]), "b >= 0"),
        (dict(selection=[Threshold(0.1), "dense"], activation="tanh"), "activation='relu'"),
    ],
)
def test_bad_threshold_settings_raise(digits, params, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, **params).fit(X, y)
