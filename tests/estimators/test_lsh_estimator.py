"""MLPClassifier with LSH selection: accuracy vs dense, top-k prediction, persistence,
partial_fit / warm_start / early stopping, selection="auto" and errors."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import fastfire
from fastfire import MLPClassifier, MLPRegressor
from fastfire.datasets import make_extreme_classification
from fastfire.estimators import _mlp_base
from fastfire.metrics import precision_at_k, top_k
from fastfire.nn import network as network_module
from fastfire.nn.lsh import LSH, LSHLayer, SparseInput


@pytest.fixture(scope="module")
def xc():
    X, Y = make_extreme_classification(3300, 2000, 600, n_nonzeros=40, n_labels_per_sample=3,
                                       random_state=0)
    return X[:3000], Y[:3000], X[3000:], Y[3000:]


def _lsh(**kw):
    params = dict(k=6, l=16, budget=150, min_active=300, random_state=0)
    params.update(kw)
    return LSH(**params)


def _fit(X, Y, selection, **kw):
    params = dict(hidden_layer_sizes=(64,), max_iter=4, batch_size=64, random_state=0,
                  learning_rate_init=0.003, alpha=0.0, n_jobs=1, selection=selection)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(**params).fit(X, Y)


@pytest.fixture(scope="module")
def lsh_model(xc):
    X, Y, _, _ = xc
    return _fit(X, Y, [SparseInput(), _lsh()])


def test_lsh_reaches_p_at_1_of_full_softmax(xc, lsh_model):
    # the reference: the same network and loss with every output active (exact softmax)
    X, Y, Xt, Yt = xc
    full = _fit(X, Y, [SparseInput(), _lsh(min_active=600, budget=0)])
    p_lsh = precision_at_k(Yt, lsh_model.predict_topk(Xt, 1)[0], 1)
    p_full = precision_at_k(Yt, full.predict_topk(Xt, 1)[0], 1)
    assert p_full > 0.3                      # the problem is learnable in 4 epochs
    assert p_lsh >= p_full - 0.05, (p_lsh, p_full)
    # and much better than chance / the most frequent label
    assert p_lsh > 2 * np.asarray(Yt.sum(0)).max() / Yt.shape[0]


def test_predict_topk_exact_matches_dense_scores(xc, lsh_model, monkeypatch):
    X, Y, Xt, Yt = xc
    proba = lsh_model.predict_proba(Xt)
    monkeypatch.setattr(network_module, "PREDICT_CHUNK_FLOATS", 600 * 7)  # several chunks
    idx, scores = lsh_model.predict_topk(Xt, 5)
    assert idx.shape == scores.shape == (300, 5) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, top_k(proba, 5))
    assert (np.diff(scores, axis=1) <= 0).all()
    # dense models too
    dense = _fit(X[:500], Y[:500], "dense", max_iter=1)
    np.testing.assert_array_equal(dense.predict_topk(Xt, 3)[0], top_k(dense.predict_proba(Xt), 3))


def test_predict_topk_approximate_scores_retrieved_candidates(xc, lsh_model):
    X, Y, Xt, Yt = xc
    exact_idx, exact_scores = lsh_model.predict_topk(Xt, 5)
    idx, scores = lsh_model.predict_topk(Xt, 5, exact=False)
    valid = idx >= 0
    assert valid[:, 0].all()
    # scores are the exact logits of the returned labels, best first
    proba_logits = np.log(lsh_model.predict_proba(Xt))     # softmax: logits up to a row shift
    shift = (exact_scores[:, :1] - proba_logits[np.arange(300), exact_idx[:, 0]][:, None])
    rows = np.nonzero(valid[:, 0])[0]
    np.testing.assert_allclose(scores[rows, 0],
                               proba_logits[rows, idx[rows, 0]] + shift[rows, 0], atol=1e-3)
    assert (scores[valid] <= exact_scores[:, :1].repeat(5, 1)[valid] + 1e-5).all()
    p_exact = precision_at_k(Yt, exact_idx, 1)
    p_approx = precision_at_k(Yt, np.where(idx < 0, 0, idx), 1)
    assert p_approx > 0.7 * p_exact


def test_predict_returns_sparse_indicator_and_topk_errors(xc, lsh_model):
    X, Y, Xt, Yt = xc
    pred = lsh_model.predict(Xt)
    assert sp.issparse(pred) and pred.shape == Yt.shape
    with pytest.raises(ValueError, match="k must"):
        lsh_model.predict_topk(Xt, 0)
    with pytest.raises(ValueError, match="k must"):
        lsh_model.predict_topk(Xt, 601)
    dense = _fit(X[:200], Y[:200], "dense", max_iter=1)
    with pytest.raises(ValueError, match="exact=False"):
        dense.predict_topk(Xt, 2, exact=False)


def test_coefs_keep_sklearn_layout_and_share_memory(lsh_model):
    assert lsh_model.coefs_[1].shape == (64, 600)
    layer = lsh_model._network.layers[-1]
    assert isinstance(layer, LSHLayer) and lsh_model.coefs_[1] is layer.coef


def test_pickle_round_trip(xc, lsh_model):
    _, _, Xt, _ = xc
    clone = pickle.loads(pickle.dumps(lsh_model))
    np.testing.assert_array_equal(clone.predict_proba(Xt), lsh_model.predict_proba(Xt))
    a = clone.predict_topk(Xt, 3, exact=False)
    b = lsh_model.predict_topk(Xt, 3, exact=False)
    np.testing.assert_array_equal(a[0], b[0])             # tables rebuilt identically
    assert clone.coefs_[1] is clone._network.layers[-1].coef


def test_save_load_round_trip_and_continue_training(xc, lsh_model, tmp_path):
    X, Y, Xt, _ = xc
    path = tmp_path / "lsh.npz"
    fastfire.save(lsh_model, path)
    loaded = fastfire.load(path)
    assert isinstance(loaded.selection[1], LSH) and loaded.selection[1] == lsh_model.selection[1]
    np.testing.assert_array_equal(loaded.predict_proba(Xt), lsh_model.predict_proba(Xt))
    np.testing.assert_array_equal(loaded.predict_topk(Xt, 3, exact=False)[0],
                                  lsh_model.predict_topk(Xt, 3, exact=False)[0])
    loaded.partial_fit(X[:256], Y[:256])
    assert loaded.n_iter_ == lsh_model.n_iter_ + 1


def test_partial_fit_and_warm_start(xc):
    X, Y, _, _ = xc
    clf = MLPClassifier((32,), batch_size=64, random_state=0, selection=["dense", _lsh()])
    for _ in range(2):
        clf.partial_fit(X[:600], Y[:600], classes=np.arange(600))
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    warm = _fit(X[:600], Y[:600], ["dense", _lsh()], max_iter=1, warm_start=True)
    before = warm.coefs_[1].copy()
    warm.fit(X[:600], Y[:600])
    assert warm.n_iter_ == 2 and not np.array_equal(before, warm.coefs_[1])


def test_early_stopping_scores_precision_at_1(xc):
    X, Y, _, _ = xc
    clf = _fit(X, Y, [SparseInput(), _lsh()], early_stopping=True, max_iter=3,
               validation_fraction=0.2)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert all(0 <= s <= 1 for s in clf.validation_scores_)
    assert clf.best_validation_score_ == max(clf.validation_scores_) > 0.1


def test_multiclass_targets(xc):
    X, Y, Xt, Yt = xc
    y = np.asarray(Y.argmax(axis=1)).ravel()
    clf = _fit(X, y, ["dense", _lsh()], max_iter=3)
    acc_top1 = np.mean(clf.classes_[clf.predict_topk(X[:500], 1)[0][:, 0]] == y[:500])
    assert acc_top1 == pytest.approx(clf.score(X[:500], y[:500]))
    assert acc_top1 > 0.3


def test_deterministic_mode_reproducible(xc):
    X, Y, _, _ = xc
    sel = ["dense", _lsh(deterministic=True, min_active=20)]
    a = _fit(X[:800], Y[:800], sel, max_iter=2, n_jobs=2)
    b = _fit(X[:800], Y[:800], sel, max_iter=2, n_jobs=2)
    for ca, cb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(ca, cb)


def test_seed_from_estimator_random_state(xc):
    X, Y, _, _ = xc
    a = _fit(X[:300], Y[:300], ["dense", "lsh"], max_iter=1, random_state=3, n_jobs=1)
    b = _fit(X[:300], Y[:300], ["dense", "lsh"], max_iter=1, random_state=3, n_jobs=1)
    for ca, cb in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(ca, cb)


def test_selection_auto_rule(xc, monkeypatch):
    X, Y, _, _ = xc
    monkeypatch.setattr(_mlp_base, "AUTO_LSH_MIN_OUTPUTS", 500)
    wide = _fit(X[:300], Y[:300], "auto", max_iter=1)
    assert [type(l).__name__ for l in wide._network.layers] == ["SparseInputLayer", "LSHLayer"]
    narrow = _fit(X[:300], Y[:300, :50], "auto", max_iter=1)
    assert [type(l).__name__ for l in narrow._network.layers] == ["DenseLayer", "DenseLayer"]
    reg = MLPRegressor((8,), max_iter=2, selection="auto").fit(X[:100], np.ones(100))
    assert type(reg._network.layers[-1]).__name__ == "DenseLayer"


def test_lsh_needs_multiclass_or_multilabel_targets(xc):
    X, Y, _, _ = xc
    with pytest.raises(ValueError, match="multiclass or multilabel"):
        _fit(X[:100], np.arange(100) % 2, ["dense", _lsh()], max_iter=1)
    with pytest.raises(ValueError, match="multiclass or multilabel"):
        MLPRegressor((8,), max_iter=1, selection=["dense", _lsh()]).fit(X[:100], np.ones(100))


def test_dense_selection_untouched_by_lsh_import(xc):
    # selection="dense" keeps C-ordered coefs and the plain dense layers
    X, Y, _, _ = xc
    clf = _fit(X[:200], Y[:200, :20], "dense", max_iter=1)
    assert all(c.flags.c_contiguous for c in clf.coefs_)
    assert [type(l).__name__ for l in clf._network.layers] == ["DenseLayer", "DenseLayer"]


def test_end_of_fit_rebuild_only_when_the_tables_are_stale(xc):
    # partial_fit rebuilds the tables from the final weights, unless the schedule has just
    # done it: with calls of one rehash period (128 rows, batches of 64) each call rebuilds
    # once, not twice; a call that ends between two scheduled rebuilds rebuilds at its end
    # and the schedule then counts from there
    X, Y, Xt, _ = xc
    clf = MLPClassifier((32,), batch_size=64, random_state=0, n_jobs=1, selection=[
        SparseInput(), _lsh(rehash="fixed", rehash_every=128)])
    classes = np.arange(Y.shape[1])
    clf.partial_fit(X[:128], Y[:128], classes=classes)
    layer = clf._network.layers[-1]
    rebuilds = layer.n_rebuilds
    clf.partial_fit(X[128:256], Y[128:256])
    assert layer.n_rebuilds == rebuilds + 1 and layer.tables_current()
    clf.partial_fit(X[256:320], Y[256:320])                  # half a period: rebuilt at the end
    assert layer.n_rebuilds == rebuilds + 2 and layer.tables_current()
    assert layer.upkeep["since_rehash"] == 0
    fresh = pickle.loads(pickle.dumps(clf))                 # rebuilds from the final weights
    np.testing.assert_array_equal(fresh.predict_topk(Xt, 3, exact=False)[0],
                                  clf.predict_topk(Xt, 3, exact=False)[0])
    clf.partial_fit(X[320:448], Y[320:448])                  # one period after that rebuild
    assert layer.n_rebuilds == rebuilds + 3 and layer.tables_current()
