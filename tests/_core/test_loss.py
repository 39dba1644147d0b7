"""Output activations and losses of fastfire._core._loss against plain NumPy references."""

import numpy as np
import pytest

from fastfire._core import _loss

THREADS = (1, 2, 3)
SHAPES = [(0, 4), (1, 1), (1, 10), (7, 3), (129, 33)]


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _logits(rng, shape, extreme=False):
    Z = (rng.standard_normal(shape) * 3).astype(np.float32)
    if extreme and Z.size:
        Z.flat[::3] = 1e4
        Z.flat[1::5] = -1e4
    return Z


# --- plain NumPy references -------------------------------------------------------------------

def ref_softmax(Z):
    z = Z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ref_logsumexp(Z):
    z = Z.astype(np.float64)
    mx = z.max(axis=1)
    return mx + np.log(np.exp(z - mx[:, None]).sum(axis=1))


def ref_sigmoid(Z):
    z = Z.astype(np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def ref_softmax_ce(Z, y):
    n, p = Z.shape
    loss = (ref_logsumexp(Z) - Z.astype(np.float64)[np.arange(n), y]).sum() if n else 0.0
    onehot = np.zeros((n, p))
    onehot[np.arange(n), y] = 1
    return loss, ref_softmax(Z) - onehot if n else np.zeros((0, p))


def ref_logistic_ce(Z, Y):
    z, t = Z.astype(np.float64), Y.astype(np.float64)
    loss = (np.logaddexp(0, z) - t * z).sum()
    return loss, ref_sigmoid(Z) - t


# --- in-place output activations --------------------------------------------------------------

@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extreme", [False, True])
def test_softmax_inplace(shape, extreme, n_threads):
    rng = np.random.default_rng(sum(shape))
    Z0 = _logits(rng, shape, extreme)
    Z = Z0.copy()
    _loss.softmax_inplace(Z, n_threads)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(Z, ref_softmax(Z0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_logistic_inplace(shape, n_threads):
    rng = np.random.default_rng(sum(shape) + 1)
    Z0 = _logits(rng, shape, extreme=True)
    Z = Z0.copy()
    _loss.logistic_inplace(Z, n_threads)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(Z, ref_sigmoid(Z0), rtol=1e-5, atol=1e-7)


# --- losses -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("alias", [False, True])
def test_softmax_cross_entropy(shape, extreme, alias, n_threads):
    rng = np.random.default_rng(sum(shape) + 2)
    Z0 = _logits(rng, shape, extreme)
    y = _readonly(rng.integers(0, shape[1], shape[0]).astype(np.int32))
    exp_loss, exp_delta = ref_softmax_ce(Z0, y)
    if alias:
        Z = Z0.copy()
        loss = _loss.softmax_cross_entropy(Z, y, Z, n_threads)
        delta = Z
    else:
        delta = np.full(shape, np.nan, np.float32)
        loss = _loss.softmax_cross_entropy(_readonly(Z0), y, delta, n_threads)
    assert isinstance(loss, float) and np.isfinite(loss)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, exp_delta, rtol=1e-5, atol=1e-6)


def test_softmax_cross_entropy_extreme_values():
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e4, 3e4, -3e4]], np.float32)
    y = np.array([1, 2, 0], np.int32)
    delta = np.empty_like(Z)
    loss = _loss.softmax_cross_entropy(Z, y, delta, 2)
    np.testing.assert_allclose(loss, 2e4 + np.log(3) + np.log(2), rtol=1e-6)
    np.testing.assert_allclose(delta, [[1, -1, 0], [1 / 3, 1 / 3, -2 / 3], [-0.5, 0.5, 0]],
                               atol=1e-6)


def test_softmax_cross_entropy_rejects_bad_labels():
    Z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="class ids"):
        _loss.softmax_cross_entropy(Z, np.array([0, 4, 1], np.int32), Z.copy(), 1)
    with pytest.raises(ValueError, match="class ids"):
        _loss.softmax_cross_entropy(Z, np.array([0, -1, 1], np.int32), Z.copy(), 2)
    with pytest.raises(ValueError, match="y has"):
        _loss.softmax_cross_entropy(Z, np.array([0, 1], np.int32), Z.copy(), 1)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alias", [False, True])
def test_logistic_cross_entropy(shape, alias, n_threads):
    rng = np.random.default_rng(sum(shape) + 3)
    Z0 = _logits(rng, shape, extreme=True)
    Y = rng.integers(0, 2, shape).astype(np.float32)
    if Y.size:
        Y.flat[::7] = 0.3  # soft targets work too
    Y = _readonly(Y)
    exp_loss, exp_delta = ref_logistic_ce(Z0, Y)
    if alias:
        Z = Z0.copy()
        loss = _loss.logistic_cross_entropy(Z, Y, Z, n_threads)
        delta = Z
    else:
        delta = np.full(shape, np.nan, np.float32)
        loss = _loss.logistic_cross_entropy(_readonly(Z0), Y, delta, n_threads)
    assert isinstance(loss, float) and np.isfinite(loss)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, exp_delta, rtol=1e-5, atol=1e-6)


def test_logistic_cross_entropy_small_values_match_binary_log_loss():
    # away from saturation it is scikit-learn's binary log-loss (sum, not mean)
    rng = np.random.default_rng(5)
    Z = rng.uniform(-5, 5, (50, 4)).astype(np.float32)
    Y = rng.integers(0, 2, (50, 4)).astype(np.float32)
    s = ref_sigmoid(Z)
    expected = -(Y * np.log(s) + (1 - Y) * np.log(1 - s)).sum()
    loss = _loss.logistic_cross_entropy(Z, Y, np.empty_like(Z), 1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alias", [False, True])
def test_squared_error(shape, alias, n_threads):
    rng = np.random.default_rng(sum(shape) + 4)
    P0 = rng.standard_normal(shape).astype(np.float32)
    Y = _readonly(rng.standard_normal(shape).astype(np.float32))
    diff = P0.astype(np.float64) - Y
    if alias:
        P = P0.copy()
        loss = _loss.squared_error(P, Y, P, n_threads)
        delta = P
    else:
        delta = np.full(shape, np.nan, np.float32)
        loss = _loss.squared_error(_readonly(P0), Y, delta, n_threads)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, (diff**2).sum(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(delta, diff, rtol=1e-6, atol=1e-7)


def test_losses_identical_across_threads_and_calls():
    rng = np.random.default_rng(9)
    Z = _logits(rng, (1000, 37))
    y = rng.integers(0, 37, 1000).astype(np.int32)
    Y = rng.integers(0, 2, (1000, 37)).astype(np.float32)
    results = []
    for t in (1, 2, 3, 3):
        d1, d2, d3 = (np.empty_like(Z) for _ in range(3))
        losses = (_loss.softmax_cross_entropy(Z, y, d1, t), _loss.logistic_cross_entropy(Z, Y, d2, t),
                  _loss.squared_error(Z, Y, d3, t))
        results.append((losses, d1, d2, d3))
    for losses, *deltas in results[1:]:
        assert losses == results[0][0]
        for d, d0 in zip(deltas, results[0][1:]):
            np.testing.assert_array_equal(d, d0)


def test_loss_shape_mismatch_raises():
    Z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="delta"):
        _loss.squared_error(Z, Z, np.zeros((3, 5), np.float32), 1)
    with pytest.raises(ValueError, match="Y"):
        _loss.logistic_cross_entropy(Z, np.zeros((2, 4), np.float32), Z.copy(), 1)


def test_vectorized_exp_accuracy_and_nan():
    # the kernels use their own branch-free exp: check it over the whole float32 range it serves
    z = np.linspace(-100, 100, 200_001).astype(np.float32)
    Z = z[None, :].copy()
    _loss.logistic_inplace(Z, 1)
    np.testing.assert_allclose(Z[0], ref_sigmoid(z), rtol=1e-6, atol=1.5e-38)  # denormals flush to 0
    assert Z[0, 0] == 0.0 and Z[0, -1] == 1.0
    rows = np.stack([np.zeros_like(z), z], axis=1)  # softmax([0, z]) = [1 - s, s]
    _loss.softmax_inplace(rows, 2)
    np.testing.assert_allclose(rows[:, 1], ref_sigmoid(z), rtol=1e-6, atol=1.5e-38)  # denormals flush to 0
    N = np.array([[np.nan, 0.0], [1.0, 2.0]], np.float32)
    _loss.logistic_inplace(N, 1)
    assert np.isnan(N[0, 0]) and np.isfinite(N[1]).all()
