"""ConvNetClassifier: scikit-learn's contract, image layouts, training on 8x8 digits."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastfire.estimators.convnet import ConvNetClassifier
from fastfire.nn.conv import ConvSampling
from fastfire.nn.sampling import ColumnRowSampling

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


# Every check passes: 2-D data without image_shape are read as 1 x n_features images (no
# expected failures to declare).
@parametrize_with_checks([ConvNetClassifier(conv_channels=(4,), max_iter=200, random_state=0, n_jobs=2)])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def test_trains_on_digits_from_all_layouts():
    X, y = _digits()
    kw = {"conv_channels": (8, 16), "batch_size": 32, "learning_rate_init": 0.005, "max_iter": 8,
              "random_state": 0, "n_jobs": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        flat = ConvNetClassifier(image_shape=(8, 8), **kw).fit(X[:1400], y[:1400])
        four = ConvNetClassifier(**kw).fit(X[:1400].reshape(-1, 1, 8, 8), y[:1400])
    assert flat.image_shape_ == four.image_shape_ == (1, 8, 8)
    assert flat.score(X[1400:], y[1400:]) > 0.9
    # same data, same seed: the layouts give the same model
    for a, b in zip(flat.coefs_, four.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(four.predict(X[1400:].reshape(-1, 8, 8)), flat.predict(X[1400:]))
    assert len(flat.coefs_) == 3 and flat.coefs_[0].shape == (8, 1, 3, 3)
    assert flat.n_conv_layers_ == 2


def test_sampled_conv_and_dense_train():
    X, y = _digits()
    clf = ConvNetClassifier(conv_channels=(8, 16), image_shape=(1, 8, 8), batch_size=32,
                            learning_rate_init=0.005, max_iter=8, random_state=0, n_jobs=2,
                            conv_selection=[None, ConvSampling(0.5, mode="forward")],
                            selection=ColumnRowSampling(ratio=0.5, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[:1400], y[:1400])
    assert clf.score(X[1400:], y[1400:]) > 0.85
    conv2 = clf._network.layers[2]
    assert conv2.macs_done < conv2.macs_exact


def test_backward_sampling_with_input_ratio_and_relu_in_the_max_pool():
    X, y = _digits()
    sel = ConvSampling(0.5, mode="backward", input_ratio=0.25)
    clf = ConvNetClassifier(conv_channels=(8, 16), image_shape=(1, 8, 8), batch_size=32,
                            learning_rate_init=0.005, max_iter=8, random_state=0, n_jobs=2,
                            conv_selection=[None, sel])
    clf.fit(X[:1400], y[:1400])
    assert clf.score(X[1400:], y[1400:]) > 0.85
    pools = [clf._network.layers[1], clf._network.layers[3]]
    assert all(p.applies_input_activation for p in pools)  # ReLU + max pooling: fused
    conv2 = clf._network.layers[2]
    assert conv2.selector.input_ratio == 0.25 and conv2.selector is not sel  # a copy
    # weight gradient from 16 of 32 examples, input gradient from 4 of 16 output channels
    assert conv2.macs_done < conv2.macs_exact
    tanh = ConvNetClassifier(conv_channels=(4,), image_shape=(1, 8, 8), activation="tanh",
                             max_iter=1, random_state=0).fit(X[:100], y[:100])
    assert not tanh._network.layers[1].applies_input_activation


def test_training_options_and_persistence():
    X, y = _digits()
    X, y = X[:400], y[:400]
    est = ConvNetClassifier(conv_channels=(4,), image_shape=(8, 8), hidden_layer_sizes=(16,),
                            pooling="avg", early_stopping=True, n_iter_no_change=2, max_iter=30,
                            solver="sgd", learning_rate_init=0.05, random_state=0)
    clf = clone(est).fit(X, y)
    assert clf.validation_scores_ and clf.n_iter_ <= 30
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    inc = ConvNetClassifier(conv_channels=(4,), image_shape=(8, 8), random_state=0)
    inc.partial_fit(X, y, classes=np.arange(10))
    again = pickle.loads(pickle.dumps(inc))
    again.partial_fit(X, y)  # training continues after unpickling
    assert again.n_iter_ == 2
    assert clf.predict_proba(X.astype(np.float64)).dtype == np.float64
    assert clf.predict_proba(X).dtype == np.float32


def test_bad_images_raise():
    X, y = _digits()
    with pytest.raises(ValueError, match="image_shape"):
        ConvNetClassifier(image_shape=(1, 7, 7), max_iter=1).fit(X[:50], y[:50])
    clf = ConvNetClassifier(conv_channels=(2,), image_shape=(8, 8), max_iter=1).fit(X[:50], y[:50])
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:5, :60])
    with pytest.raises(ValueError, match="does not fit"):
        ConvNetClassifier(kernel_size=5, padding=0, image_shape=(1, 3, 3), max_iter=1).fit(
            np.zeros((10, 9)), np.arange(10) % 2)
    with pytest.raises(TypeError, match="dense"):
        import scipy.sparse as sp
        clf.fit(sp.csr_matrix(X[:50]), y[:50])
