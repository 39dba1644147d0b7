"""ShiftedReLURegressor / ShiftedReLUClassifier: tree == dense, learning, scikit-learn contract."""

import pickle
import signal
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastfire.estimators import shifted_relu as shifted_relu_module
from fastfire.estimators.shifted_relu import (
    ShiftedReLUClassifier,
    ShiftedReLURegressor,
    choose_solver,
    estimate_iteration_seconds,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def regression_data(n=80, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1]
    return X, y


# ------------------------------------------------------------------ tree == dense
@pytest.mark.parametrize("activation", ["shifted_relu", "gated"])
@pytest.mark.parametrize("batch_size", [None, 16])
def test_tree_and_dense_follow_the_same_trajectory(activation, batch_size):
    X, y = regression_data()
    Y = np.column_stack([y, X[:, 2] ** 2])          # two outputs
    # Both solvers round differently, so an entry of C within float32 rounding of b can fire
    # in one and not the other; such flips are rare, but after ~100 steps one may happen and
    # shift the curve by ~1e-5 (shifted ReLU, continuous) or ~1e-3 (gated, which jumps by b/√m
    # at b). Hence 25 full-batch steps / 8 epochs of 5 mini-batches, and a moderate step.
    max_iter = 25 if batch_size is None else 8
    kw = dict(n_neurons=1500, max_iter=max_iter, tol=0.0, random_state=3, activation=activation,
              learning_rate=8.0, batch_size=batch_size, n_jobs=2)
    tree = ShiftedReLURegressor(solver="tree", **kw).fit(X, Y)
    dense = ShiftedReLURegressor(solver="dense", **kw).fit(X, Y)
    assert tree.solver_ == "tree" and dense.solver_ == "dense"
    assert tree.n_iter_ == dense.n_iter_ == max_iter
    np.testing.assert_allclose(tree.loss_curve_, dense.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(tree.firing_fraction_, dense.firing_fraction_, rtol=1e-3)
    assert tree.loss_curve_[-1] < 0.8 * tree.loss_curve_[0]    # it did move
    np.testing.assert_allclose(tree.hidden_weights_, dense.hidden_weights_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tree.predict(X), dense.predict(X), rtol=1e-4, atol=1e-5)


def test_tree_and_dense_classifiers_predict_the_same_labels():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((90, 5))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    kw = dict(n_neurons=800, max_iter=30, random_state=0, tol=0.0)
    tree = ShiftedReLUClassifier(solver="tree", **kw).fit(X, y)
    dense = ShiftedReLUClassifier(solver="dense", **kw).fit(X, y)
    np.testing.assert_allclose(tree.loss_curve_, dense.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(tree.decision_function(X), dense.decision_function(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(tree.predict(X), dense.predict(X))


def test_tree_result_does_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setattr(shifted_relu_module, "SERIAL_BELOW", 0)
    X, y = regression_data()
    kw = dict(n_neurons=600, max_iter=10, tol=0.0, random_state=0, solver="tree")
    one = ShiftedReLURegressor(n_jobs=1, **kw).fit(X, y)
    two = ShiftedReLURegressor(n_jobs=2, **kw).fit(X, y)
    assert one.loss_curve_ == two.loss_curve_
    np.testing.assert_array_equal(one.predict(X), two.predict(X))


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("solver", ["tree", "dense"])
def test_learns_better_than_a_constant(solver):
    X, y = regression_data(n=120)
    reg = ShiftedReLURegressor(n_neurons=2000, max_iter=100, solver=solver, random_state=0).fit(X, y)
    mse = np.mean((reg.predict(X) - y) ** 2)
    assert mse < 0.3 * np.var(y)                  # a constant predictor has mse == var(y)
    assert reg.score(X, y) > 0.7
    assert len(reg.loss_curve_) == len(reg.firing_fraction_) == reg.n_iter_
    assert all(0 < f < 0.5 for f in reg.firing_fraction_)


def test_classifier_binary_and_multiclass():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((150, 4))
    y2 = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = ShiftedReLUClassifier(n_neurons=1000, max_iter=100, random_state=0).fit(X, y2)
    assert clf.decision_function(X).shape == (150,)
    assert clf.score(X, y2) > 0.9
    y3 = np.digitize(X[:, 0], [-0.5, 0.5]) + 10
    clf3 = ShiftedReLUClassifier(n_neurons=1000, max_iter=100, random_state=0).fit(X, y3)
    assert clf3.decision_function(X).shape == (150, 3)
    np.testing.assert_array_equal(clf3.classes_, [10, 11, 12])
    assert clf3.score(X, y3) > 0.8


def test_threshold_default_and_firing_fraction():
    X, y = regression_data()
    reg = ShiftedReLURegressor(n_neurons=4096, max_iter=2, random_state=0).fit(X, y)
    assert reg.threshold_ == pytest.approx(np.sqrt(0.4 * np.log(4096)))
    from scipy.stats import norm
    assert reg.firing_fraction_[0] == pytest.approx(norm.sf(reg.threshold_), rel=0.15)
    assert reg.firing_fraction_[0] * 4096 <= 4096 ** 0.8


# ------------------------------------------------------------------ solver="auto"
def test_auto_solver_follows_the_cost_model():
    p = 0.0127                                     # P(N(0,1) > sqrt(0.4 ln 2^18))
    # the headline configuration: tree, by several times per step
    assert choose_solver(256, 2**18, 1024, p, 100) == "tree"
    assert estimate_iteration_seconds("dense", 256, 2**18, 1024, p) > \
        3 * estimate_iteration_seconds("tree", 256, 2**18, 1024, p)
    # the tree's per-step cost does not depend on d; the dense one grows with it
    assert estimate_iteration_seconds("tree", 256, 2**16, 8, p) == \
        estimate_iteration_seconds("tree", 256, 2**16, 4096, p)
    assert choose_solver(4096, 2**12, 4, 0.034, 100) == "dense"   # n·P(fire) large, tiny d
    assert choose_solver(50, 64, 3, 0.1, 100) == "dense"          # fixed overheads dominate
    # one epoch cannot amortise the preprocessing GEMM where the per-step gain is small
    small_gain = dict(n_samples=1024, n_neurons=2**14, n_features=64, firing_fraction=0.0245)
    assert choose_solver(max_iter=200, **small_gain) == "tree"
    assert choose_solver(max_iter=1, **small_gain) == "dense"
    # mini-batches shrink the dense step but not the tree's pass over C
    assert choose_solver(512, 2**16, 1024, 0.0176, 10, batch_size=4) == "dense"


@pytest.mark.parametrize("d", [2, 300])
def test_auto_solver_is_what_the_estimator_uses(d):
    from scipy.special import ndtr

    X, y = regression_data(n=200, d=d)
    reg = ShiftedReLURegressor(n_neurons=4096, max_iter=2, random_state=0).fit(X, y)
    p = float(ndtr(-reg.threshold_))               # unit-norm inputs
    assert reg.solver_ == choose_solver(200, 4096, d, p, 2)


# ------------------------------------------------------------------ scikit-learn contract
def test_verbose_prints_one_line_per_iteration(capsys):
    X, y = regression_data()
    ShiftedReLURegressor(n_neurons=64, max_iter=4, tol=0.0, verbose=1, random_state=0).fit(X, y)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Iteration")]
    assert len(lines) == 4 and "loss" in lines[0] and "firing" in lines[0]


@pytest.mark.parametrize("solver", ["tree", "dense"])
def test_ctrl_c_stops_after_the_current_iteration(solver, monkeypatch):
    X, y = regression_data()
    calls = {"n": 0}
    original = shifted_relu_module.CorrelationTree.forward if solver == "tree" else \
        shifted_relu_module._BaseShiftedReLU._dense_step

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)      # Ctrl-C in the middle of iteration 3
        return original(*args, **kwargs)

    if solver == "tree":
        monkeypatch.setattr(shifted_relu_module.CorrelationTree, "forward", interrupting)
    else:
        monkeypatch.setattr(shifted_relu_module._BaseShiftedReLU, "_dense_step", staticmethod(interrupting))
    reg = ShiftedReLURegressor(n_neurons=200, max_iter=50, tol=0.0, solver=solver, random_state=0)
    before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN under nohup
    reg.fit(X, y)
    assert reg.n_iter_ == 3 and len(reg.loss_curve_) == 3
    assert np.isfinite(reg.predict(X)).all()
    assert signal.getsignal(signal.SIGINT) is before                        # handler restored


def test_clone_pickle_set_params():
    X, y = regression_data()
    reg = ShiftedReLURegressor(n_neurons=128, max_iter=5, random_state=0, solver="tree").fit(X, y)
    restored = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(restored.predict(X), reg.predict(X))
    cloned = clone(reg)
    assert not hasattr(cloned, "n_iter_") and cloned.get_params() == reg.get_params()
    cloned.set_params(n_neurons=64, solver="dense").fit(X, y)
    assert cloned.hidden_weights_.shape == (64, 6)
    clf = ShiftedReLUClassifier(n_neurons=64, max_iter=5, random_state=0).fit(X, y > 0)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict(X), clf.predict(X))


def test_float32_in_float32_out():
    X, y = regression_data()
    reg = ShiftedReLURegressor(n_neurons=64, max_iter=3, random_state=0).fit(X.astype(np.float32), y)
    assert reg.predict(X.astype(np.float32)).dtype == np.float32
    assert reg.predict(X).dtype == np.float64
    assert reg.hidden_weights_.dtype == np.float32


@pytest.mark.parametrize("params, match", [
    ({"n_neurons": 0}, "n_neurons"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"solver": "sparse"}, "solver"),
    ({"activation": "relu"}, "activation"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_iter": 0}, "max_iter"),
    ({"tol": -1.0}, "tol"),
    ({"threshold": np.inf}, "threshold"),
    ({"n_jobs": 0}, "n_jobs"),
])
def test_bad_parameters_raise(params, match):
    X, y = regression_data()
    with pytest.raises(ValueError, match=match):
        ShiftedReLURegressor(**params).fit(X, y)


def test_bad_data_raise():
    X, y = regression_data()
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ShiftedReLURegressor(n_neurons=16).fit(bad, y)
    reg = ShiftedReLURegressor(n_neurons=16, max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        reg.predict(X[:, :3])
    with pytest.raises(NotFittedError):
        ShiftedReLURegressor().predict(X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ShiftedReLUClassifier(n_neurons=16).fit(X, np.zeros(len(X)))
    import scipy.sparse as sp
    with pytest.raises(TypeError, match="[Ss]parse"):
        ShiftedReLURegressor(n_neurons=16).fit(sp.csr_matrix(X), y)


def test_diverging_learning_rate_is_reported():
    X, y = regression_data()
    with pytest.raises(ValueError, match="diverged"):
        ShiftedReLURegressor(n_neurons=64, learning_rate=1e30, max_iter=50, random_state=0).fit(X, y * 1e10)


def test_convergence_warning_at_max_iter():
    X, y = regression_data()
    with pytest.warns(ConvergenceWarning):
        ShiftedReLURegressor(n_neurons=32, max_iter=2, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ShiftedReLURegressor(n_neurons=32, max_iter=500, tol=1.0, random_state=0).fit(X, y)


@parametrize_with_checks(
    [
        ShiftedReLURegressor(n_neurons=256, max_iter=100, solver="tree", random_state=0),
        ShiftedReLURegressor(n_neurons=128, max_iter=60, solver="dense", random_state=0),
        ShiftedReLUClassifier(n_neurons=256, max_iter=100, solver="tree", random_state=0),
    ],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
