"""MLPClassifier / MLPRegressor against scikit-learn's (the reference), and their behaviour."""

import io
import os
import pickle
import platform
import signal
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits, make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor

import fastfire
from fastfire import Dense, MLPClassifier, MLPRegressor


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _fit_quietly(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


TARGETS = ["multiclass", "binary", "multilabel", "regression"]


def _target(kind, X, y):
    if kind == "multiclass":
        return y
    if kind == "binary":
        return np.where(y > 4, "big", "small")
    if kind == "multilabel":
        return np.stack([y > 4, y % 2 == 0, y == 3], axis=1).astype(int)
    return np.stack([X[:, 10] - X[:, 20], X[:, 30]], axis=1)


@pytest.mark.smoke
@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize(
    "params",
    [
        dict(solver="adam", activation="relu"),
        dict(solver="sgd", activation="tanh", learning_rate="invscaling", nesterovs_momentum=False),
        dict(solver="sgd", activation="logistic", alpha=0.01, batch_size=64),
        dict(solver="adam", activation="identity", shuffle=False, hidden_layer_sizes=(12, 7)),
    ],
)
def test_training_trajectory_matches_scikit_learn(digits, kind, params):
    X, y = digits
    target = _target(kind, X, y)
    kw = dict(dict(hidden_layer_sizes=(24,), max_iter=4, random_state=0), **params)
    ours_cls, ref_cls = (
        (MLPRegressor, SkMLPRegressor) if kind == "regression" else (MLPClassifier, SkMLPClassifier)
    )
    ours = _fit_quietly(ours_cls(**kw), X, target)
    ref = _fit_quietly(ref_cls(**kw), X, target)  # float32 X: scikit-learn computes in float32 too
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=2e-5)
    for ours_coef, ref_coef in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(ours_coef, ref_coef, rtol=1e-3, atol=2e-5)
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_
    assert ours.out_activation_ == ref.out_activation_ and ours.n_outputs_ == ref.n_outputs_
    if kind == "regression":
        np.testing.assert_allclose(ours.predict(X), ref.predict(X), atol=1e-4)
    else:
        assert np.mean(ours.predict(X) == ref.predict(X)) > 0.99  # ties at 0.5 may flip
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_early_stopping_matches_scikit_learn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(16,), max_iter=60, random_state=0, early_stopping=True,
              n_iter_no_change=2, tol=0.02)
    ours = _fit_quietly(MLPClassifier(**kw), X, y)
    ref = _fit_quietly(SkMLPClassifier(**kw), X, y)
    assert ours.n_iter_ == ref.n_iter_ < 60
    np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_)
    assert ours.best_validation_score_ == ref.best_validation_score_
    assert ours.best_loss_ is None
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))  # best weights restored


def test_adaptive_learning_rate_matches_scikit_learn(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(8,), max_iter=30, random_state=1, solver="sgd",
              learning_rate="adaptive", learning_rate_init=0.5, n_iter_no_change=2, tol=1e-2)
    ours = _fit_quietly(MLPClassifier(**kw), X, y)
    ref = _fit_quietly(SkMLPClassifier(**kw), X, y)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-4)
    assert ours._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate)


@pytest.mark.smoke
def test_sparse_input_trains_like_dense(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    dense = _fit_quietly(MLPClassifier(**kw), X, y)
    for fmt in ("csr", "csc", "coo"):
        sparse = _fit_quietly(MLPClassifier(**kw), sp.csr_matrix(X).asformat(fmt), y)
        np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-5)
        np.testing.assert_allclose(sparse.predict_proba(sp.csr_matrix(X)), dense.predict_proba(X),
                                   atol=1e-5)


def test_sparse_multilabel_targets_stay_sparse():
    X, Y = make_multilabel_classification(n_samples=300, n_features=20, n_classes=6, random_state=0)
    kw = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    dense = _fit_quietly(MLPClassifier(**kw), X, Y)
    sparse = _fit_quietly(MLPClassifier(**kw), X, sp.csr_matrix(Y))
    np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-6)
    pred = sparse.predict(X)
    assert sp.issparse(pred) and pred.shape == Y.shape
    np.testing.assert_array_equal(pred.toarray(), dense.predict(X))
    assert isinstance(dense.predict(X), np.ndarray) and dense.predict(X).dtype == Y.dtype
    np.testing.assert_array_equal(sparse.classes_, np.arange(6))


def test_float_dtype_of_outputs_follows_input(digits):
    X, y = digits
    clf = _fit_quietly(MLPClassifier((8,), max_iter=2, random_state=0), X, y)
    assert clf.coefs_[0].dtype == np.float32
    assert clf.predict_proba(X).dtype == np.float32
    assert clf.predict_proba(X.astype(np.float64)).dtype == np.float64
    reg = _fit_quietly(MLPRegressor((8,), max_iter=2, random_state=0), X, X[:, 5])
    assert reg.predict(X).dtype == np.float32 and reg.predict(X.astype(float)).dtype == np.float64


def test_results_are_deterministic_and_close_across_thread_counts(digits):
    X, y = digits
    fits = {
        n_jobs: _fit_quietly(MLPClassifier((32,), max_iter=3, random_state=0, n_jobs=n_jobs), X, y)
        for n_jobs in (1, 2, 3)
    }
    again = _fit_quietly(MLPClassifier((32,), max_iter=3, random_state=0, n_jobs=2), X, y)
    np.testing.assert_array_equal(again.coefs_[0], fits[2].coefs_[0])
    for clf in fits.values():
        np.testing.assert_allclose(clf.loss_curve_, fits[1].loss_curve_, rtol=1e-5)


def test_partial_fit_and_warm_start(digits):
    X, y = digits
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(X, y)
    clf = MLPClassifier((16,), random_state=0)
    clf.partial_fit(X[:100], y[:100], classes=np.arange(10))
    clf.partial_fit(X[100:], y[100:])
    assert clf.n_iter_ == 2 and clf.t_ == len(X)
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X[:5], y[:5] + 100)
    with pytest.raises(ValueError, match="is not the same as on last call"):
        clf.partial_fit(X[:5], y[:5], classes=np.arange(3))

    # partial_fit with the classes of the whole problem even if a batch misses some
    clf3 = MLPClassifier((4,), random_state=0).partial_fit(X[y < 2], y[y < 2], classes=np.arange(10))
    assert clf3.out_activation_ == "softmax" and clf3.predict_proba(X).shape == (len(X), 10)

    warm = _fit_quietly(MLPClassifier((16,), max_iter=2, random_state=0, warm_start=True), X, y)
    first = warm.coefs_[0].copy()
    _fit_quietly(warm, X, y)
    assert warm.n_iter_ == 4 and not np.array_equal(first, warm.coefs_[0])
    warm.set_params(hidden_layer_sizes=(5,))
    with pytest.raises(ValueError, match="warm_start=False"):
        warm.fit(X, y)


def test_pickle_clone_and_set_params(digits):
    X, y = digits
    clf = _fit_quietly(MLPClassifier((16,), max_iter=3, random_state=0), X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    restored.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(restored.coefs_[0], clf.coefs_[0])

    fresh = clone(clf).set_params(hidden_layer_sizes=(4, 4), solver="sgd")
    assert not hasattr(fresh, "coefs_")
    _fit_quietly(fresh, X, y)
    assert [c.shape for c in fresh.coefs_] == [(64, 4), (4, 4), (4, 10)]


@pytest.mark.parametrize("kind", TARGETS)
def test_save_load_round_trip(tmp_path, digits, kind):
    X, y = digits
    target = _target(kind, X, y)
    est_cls = MLPRegressor if kind == "regression" else MLPClassifier
    est = _fit_quietly(est_cls((8,), max_iter=2, random_state=0, selection=[Dense(), "dense"]), X, target)
    path = tmp_path / "model.npz"
    fastfire.save(est, path)
    loaded = fastfire.load(path)
    assert type(loaded) is est_cls and loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    loaded.partial_fit(X, target)  # optimizer state travelled too
    est.partial_fit(X, target)
    np.testing.assert_array_equal(loaded.coefs_[-1], est.coefs_[-1])
    with open(path, "rb") as f:
        assert b"pickle" not in f.read(200)
    with np.load(path, allow_pickle=False) as data:  # loadable without pickle
        assert "__meta__" in data.files


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match="not a fastfire model"):
        fastfire.load(path)
    with pytest.raises(TypeError, match="save\\(\\) supports"):
        fastfire.save(object(), tmp_path / "x.npz")


def test_verbose_prints_one_line_per_epoch(digits):
    X, y = digits
    out = io.StringIO()
    with redirect_stdout(out):
        _fit_quietly(MLPClassifier((8,), max_iter=3, verbose=True, early_stopping=True, random_state=0), X, y)
    lines = [l for l in out.getvalue().splitlines() if l.startswith("Iteration")]
    assert len(lines) == 3
    assert "loss = " in lines[0] and "validation score = " in lines[0] and lines[0].endswith("s")


def test_convergence_warning_at_max_iter(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\)"):
        MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)


class _InterruptAfter(Dense):
    """A dense selector that sends SIGINT to this process after a number of updates."""

    def __init__(self, n_updates):
        self.n_updates = n_updates
        self._seen = 0

    def after_update(self, layer):
        self._seen += 1
        if self._seen == self.n_updates:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
def test_ctrl_c_stops_after_the_batch_and_keeps_the_model(digits):
    X, y = digits
    clf = MLPClassifier((8,), max_iter=50, batch_size=100, random_state=0,
                        selection=["dense", _InterruptAfter(5)])
    before = signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN under nohup
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X, y)
    assert clf.n_iter_ == 1 and clf.t_ == 500  # stopped after the 5th batch of 100
    assert clf.predict(X).shape == (len(X),) and len(clf.loss_curve_) == 1
    assert signal.getsignal(signal.SIGINT) is before


_FLUSH_SEEN = []   # module level: the estimator trains a copy of its selectors


class _RecordDenormalFlush(Dense):
    """A dense selector that records, at every update, whether the thread flushes subnormals."""

    def after_update(self, layer):
        from fastfire._core._openmp import denormals_flushed

        _FLUSH_SEEN.append(denormals_flushed())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
                    reason="flushing subnormals is implemented for x86-64 and AArch64 only")
def test_training_flushes_subnormals_and_restores_the_setting(digits):
    from fastfire._core._openmp import denormals_flushed

    X, y = digits
    _FLUSH_SEEN.clear()
    _fit_quietly(MLPClassifier((8,), max_iter=2, batch_size=200, random_state=0, n_jobs=2,
                               selection=["dense", _RecordDenormalFlush()]), X, y)
    assert len(_FLUSH_SEEN) == 2 * 9 and all(_FLUSH_SEEN)
    assert not denormals_flushed()


@pytest.mark.parametrize(
    "params, error, match",
    [
        (dict(hidden_layer_sizes=(10, 0)), ValueError, "hidden_layer_sizes"),
        (dict(solver="lbfgs"), ValueError, "solver"),
        (dict(selection="bogus"), ValueError, "Unknown selection 'bogus'"),
        (dict(selection=["dense"] * 3), ValueError, "selection has 3 entries"),
        (dict(selection=[3, "dense"]), TypeError, "selection entries"),
        (dict(n_jobs=0), ValueError, "n_jobs"),
        (dict(learning_rate_init=0), ValueError, "learning_rate_init"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_parameters_raise_clear_errors(digits, params, error, match):
    X, y = digits
    with pytest.raises(error, match=match):
        MLPClassifier(**dict(dict(hidden_layer_sizes=(8,), max_iter=1), **params)).fit(X, y)


def test_bad_data_raises_clear_errors(digits):
    X, y = digits
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier(max_iter=1).fit(bad, y)
    with pytest.raises(ValueError, match="infinity"):
        MLPRegressor(max_iter=1).fit(X, np.where(y == 3, np.inf, 1.0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier(max_iter=1).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier(max_iter=1).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="0 sample"):
        MLPClassifier(max_iter=1).fit(X[:0], y[:0])
    clf = _fit_quietly(MLPClassifier((8,), max_iter=1), X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :10])
    with pytest.raises(ValueError, match="labels|targets"):
        clf.partial_fit(X, np.stack([y > 4, y > 5], axis=1).astype(int))
