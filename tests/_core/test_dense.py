"""Dense-engine kernels of fastfire._core._dense against plain NumPy references."""

import numpy as np
import pytest
import scipy.sparse as sp

from fastfire._core import _dense

THREADS = (1, 2, 3)


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


# --- plain NumPy references ------------------------------------------------------------------

def ref_gemm(A, B, C, trans_a, trans_b, alpha, beta):
    a = A.T if trans_a else A
    b = B.T if trans_b else B
    out = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if beta != 0:
        out += beta * C.astype(np.float64)
    return out


def ref_act(Z, activation):
    z = Z.astype(np.float64)
    if activation == _dense.IDENTITY:
        return z
    if activation == _dense.RELU:
        return np.maximum(z, 0)
    if activation == _dense.LOGISTIC:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    return np.tanh(z)


def ref_act_derivative(A, activation):
    a = A.astype(np.float64)
    if activation == _dense.IDENTITY:
        return np.ones_like(a)
    if activation == _dense.RELU:
        return (a > 0).astype(np.float64)
    if activation == _dense.LOGISTIC:
        return a * (1 - a)
    return 1 - a**2


# --- gemm -------------------------------------------------------------------------------------

GEMM_SHAPES = [(0, 5, 7), (1, 1, 1), (1, 37, 5), (33, 1, 17), (17, 40, 1), (70, 45, 33),
               (128, 256, 100), (5, 300, 64), (3, 4, 0), (0, 0, 0), (6, 0, 3)]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_numpy(m, n, k, trans_a, trans_b, n_threads):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = _readonly(_rand(rng, k, m) if trans_a else _rand(rng, m, k))
    B = _readonly(_rand(rng, n, k) if trans_b else _rand(rng, k, n))
    C0 = _rand(rng, m, n)
    for alpha, beta in [(1.0, 0.0), (0.5, -1.5), (2.0, 1.0)]:
        C = C0.copy()
        _dense.gemm(A, B, C, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                    n_threads=n_threads)
        expected = ref_gemm(A, B, C0, trans_a, trans_b, alpha, beta)
        np.testing.assert_allclose(C, expected, rtol=1e-4, atol=1e-4 * max(k, 1) ** 0.5)


@pytest.mark.parametrize("n_threads", THREADS)
def test_gemm_beta_zero_ignores_garbage_in_C(n_threads):
    rng = np.random.default_rng(0)
    A, B = _rand(rng, 40, 9), _rand(rng, 9, 50)
    for k in (9, 0):
        a, b = A[:, :k].copy(), B[:k].copy()
        C = np.full((40, 50), np.nan, dtype=np.float32)
        _dense.gemm(a, b, C, beta=0.0, n_threads=n_threads)
        np.testing.assert_allclose(C, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_gemm_k_zero_scales_by_beta():
    C = np.arange(12, dtype=np.float32).reshape(3, 4)
    _dense.gemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), C, beta=0.5,
                n_threads=2)
    np.testing.assert_array_equal(C, 0.5 * np.arange(12, dtype=np.float32).reshape(3, 4))


def test_gemm_thread_blocks_cover_C_exactly():
    # shapes whose blocks do not divide evenly, both split directions (a short k splits by rows
    # even when C is wide); compare to 1 thread
    rng = np.random.default_rng(3)
    for m, n, k in [(97, 13, 31), (13, 97, 40), (200, 200, 31), (40, 300, 10)]:
        A, B = _rand(rng, m, k), _rand(rng, k, n)
        C1 = np.empty((m, n), np.float32)
        _dense.gemm(A, B, C1, n_threads=1)
        for t in (2, 3, 7):
            Ct = np.full((m, n), np.nan, np.float32)
            _dense.gemm(A, B, Ct, n_threads=t)
            np.testing.assert_allclose(Ct, C1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "a_shape,b_shape,c_shape,ta,tb",
    [((3, 4), (5, 6), (3, 6), False, False), ((3, 4), (4, 6), (3, 7), False, False),
     ((3, 4), (4, 6), (2, 6), False, False), ((3, 4), (4, 6), (3, 6), True, False),
     ((3, 4), (6, 4), (3, 6), False, False)],
)
def test_gemm_raises_on_mismatched_shapes(a_shape, b_shape, c_shape, ta, tb):
    A, B = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)
    C = np.zeros(c_shape, np.float32)
    with pytest.raises(ValueError, match="gemm: shapes do not agree"):
        _dense.gemm(A, B, C, trans_a=ta, trans_b=tb)


def test_gemm_rejects_bad_n_threads():
    A = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="n_threads"):
        _dense.gemm(A, A, A.copy(), n_threads=0)


# --- CSR products -----------------------------------------------------------------------------

def _csr(rng, n_rows, n_cols, density, empty_rows=()):
    X = sp.random(n_rows, n_cols, density=density, format="csr", dtype=np.float32,
                  random_state=np.random.RandomState(int(rng.integers(1 << 30))))
    X = X.tolil()
    for r in empty_rows:
        X[r, :] = 0
    X = X.tocsr()
    X.eliminate_zeros()
    X.sort_indices()
    indptr = _readonly(X.indptr.astype(np.int64))
    indices = _readonly(X.indices.astype(np.int32))
    data = _readonly(X.data.astype(np.float32))
    return X, indptr, indices, data


CSR_SHAPES = [(0, 10, 4), (1, 7, 3), (9, 50, 1), (37, 200, 33), (64, 1000, 16)]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n_rows,n_features,p", CSR_SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_csr_matmul_matches_scipy(n_rows, n_features, p, beta, n_threads):
    rng = np.random.default_rng(n_rows + p)
    empty = [r for r in (0, 3, n_rows - 1) if 0 <= r < n_rows]
    X, indptr, indices, data = _csr(rng, n_rows, n_features, 0.1, empty)
    B = _readonly(_rand(rng, n_features, p))
    C0 = _rand(rng, n_rows, p)
    C = C0.copy() if beta != 0 else np.full_like(C0, np.nan)
    _dense.csr_matmul(indptr, indices, data, B, C, beta=beta, n_threads=n_threads)
    expected = X.astype(np.float64) @ B.astype(np.float64) + (beta * C0 if beta != 0 else 0)
    np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n_rows,n_features,p", CSR_SHAPES + [(5, 0, 3), (4, 6, 0)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.25, 1.0), (-2.0, 0.5)])
def test_csr_t_matmul_matches_scipy(n_rows, n_features, p, alpha, beta, n_threads):
    rng = np.random.default_rng(n_rows * 7 + p)
    empty = [r for r in (0, 2, n_rows - 1) if 0 <= r < n_rows]
    X, indptr, indices, data = _csr(rng, n_rows, n_features, 0.15, empty)
    D = _readonly(_rand(rng, n_rows, p))
    C0 = _rand(rng, n_features, p)
    C = C0.copy() if beta != 0 else np.full_like(C0, np.nan)
    _dense.csr_t_matmul(indptr, indices, data, D, C, alpha=alpha, beta=beta, n_threads=n_threads)
    expected = alpha * (X.T.astype(np.float64) @ D.astype(np.float64))
    if beta != 0:
        expected = expected + beta * C0
    np.testing.assert_allclose(C, expected, rtol=1e-5, atol=1e-5)


def test_csr_kernels_identical_across_threads_and_calls():
    rng = np.random.default_rng(11)
    X, indptr, indices, data = _csr(rng, 300, 2000, 0.02)
    B, D = _rand(rng, 2000, 24), _rand(rng, 300, 24)
    outs_f, outs_t = [], []
    for t in (1, 2, 3, 3):
        C = np.empty((300, 24), np.float32)
        _dense.csr_matmul(indptr, indices, data, B, C, n_threads=t)
        outs_f.append(C)
        G = np.empty((2000, 24), np.float32)
        _dense.csr_t_matmul(indptr, indices, data, D, G, n_threads=t)
        outs_t.append(G)
    for C in outs_f[1:]:
        np.testing.assert_array_equal(C, outs_f[0])
    for G in outs_t[1:]:
        np.testing.assert_array_equal(G, outs_t[0])


def test_csr_kernels_reject_inconsistent_shapes():
    rng = np.random.default_rng(0)
    X, indptr, indices, data = _csr(rng, 5, 8, 0.3)
    with pytest.raises(ValueError, match="csr_matmul"):
        _dense.csr_matmul(indptr, indices, data, np.zeros((8, 3), np.float32),
                          np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="csr_t_matmul"):
        _dense.csr_t_matmul(indptr, indices, data, np.zeros((5, 3), np.float32),
                            np.zeros((8, 4), np.float32))


# --- bias + activation ------------------------------------------------------------------------

ACT_SHAPES = [(0, 5), (1, 1), (1, 17), (33, 7), (130, 65)]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", ACT_SHAPES)
@pytest.mark.parametrize("name", ["identity", "relu", "logistic", "tanh"])
def test_bias_act_forward_matches_numpy(name, shape, n_threads):
    activation = _dense.ACTIVATIONS[name]
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    Z0 = _rand(rng, *shape, scale=3.0)
    if Z0.size:
        Z0.flat[:: 5] = 0.0
        Z0.flat[1:: 11] = 1e4
        Z0.flat[2:: 13] = -1e4
    bias = _readonly(_rand(rng, shape[1]))
    Z = Z0.copy()
    _dense.bias_act_forward(Z, bias, activation, n_threads)
    assert np.all(np.isfinite(Z))
    np.testing.assert_allclose(Z, ref_act(Z0 + bias, activation), rtol=1e-5, atol=1e-6)


def test_relu_at_exactly_zero():
    Z = np.array([[0.0, -0.0, 1e-30, -1e-30]], np.float32)
    _dense.bias_act_forward(Z, np.zeros(4, np.float32), _dense.RELU, 1)
    np.testing.assert_array_equal(Z, np.array([[0, 0, 1e-30, 0]], np.float32))
    delta = np.ones_like(Z)
    _dense.act_backward(_readonly(Z), delta, _dense.RELU, 1)
    np.testing.assert_array_equal(delta, [[0, 0, 1, 0]])


def test_activation_codes():
    assert (_dense.IDENTITY, _dense.RELU, _dense.LOGISTIC, _dense.TANH) == (0, 1, 2, 3)
    assert _dense.ACTIVATIONS == {"identity": 0, "relu": 1, "logistic": 2, "tanh": 3}
    Z = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="activation"):
        _dense.bias_act_forward(Z, np.zeros(2, np.float32), 4, 1)
    with pytest.raises(ValueError, match="bias"):
        _dense.bias_act_forward(Z, np.zeros(3, np.float32), 0, 1)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", ACT_SHAPES)
@pytest.mark.parametrize("name", ["identity", "relu", "logistic", "tanh"])
def test_act_backward_matches_numpy(name, shape, n_threads):
    activation = _dense.ACTIVATIONS[name]
    rng = np.random.default_rng(shape[0] + 7 * shape[1])
    Z = _rand(rng, *shape, scale=2.0)
    if Z.size:
        Z.flat[::4] = 0.0
    A = np.asarray(ref_act(Z, activation), dtype=np.float32)
    A = _readonly(A)
    delta0 = _rand(rng, *shape)
    delta = delta0.copy()
    _dense.act_backward(A, delta, activation, n_threads)
    np.testing.assert_allclose(delta, delta0 * ref_act_derivative(A, activation),
                               rtol=1e-5, atol=1e-7)


# --- column sums ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (1, 40), (1000, 3), (257, 70), (64, 0)])
@pytest.mark.parametrize("alpha", [1.0, 1 / 128])
def test_column_sums_matches_numpy(shape, alpha, n_threads):
    rng = np.random.default_rng(shape[0] + shape[1])
    X = _readonly(_rand(rng, *shape))
    out = np.full(shape[1], np.nan, np.float32)
    _dense.column_sums(X, out, alpha=alpha, n_threads=n_threads)
    np.testing.assert_allclose(out, alpha * X.astype(np.float64).sum(axis=0), rtol=1e-6,
                               atol=1e-7)


def test_column_sums_accumulates_in_double_and_is_deterministic():
    X = np.full((100_000, 33), 0.1, np.float32)
    X[0] = 1e4
    outs = []
    for t in (1, 2, 3, 3):
        out = np.empty(33, np.float32)
        _dense.column_sums(X, out, n_threads=t)
        outs.append(out)
    exact = np.float32(1e4 + 99_999 * np.float64(np.float32(0.1)))
    np.testing.assert_allclose(outs[0], exact, rtol=1e-7)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_take_rows_matches_numpy_take(n_threads):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 37)).astype(np.float32)
    X.setflags(write=False)
    rows = rng.integers(0, 300, 1000).astype(np.int64)
    out = np.full((1000, 37), np.nan, np.float32)
    _dense.take_rows(X, rows, out, n_threads)
    np.testing.assert_array_equal(out, np.take(X, rows, axis=0))
    _dense.take_rows(X, rows[:0], out[:0], n_threads)  # empty batch


def test_take_rows_rejects_bad_ids_and_shapes_before_writing():
    X = np.ones((4, 3), np.float32)
    out = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"rows\[1\] = 4 is outside \[0, 4\)"):
        _dense.take_rows(X, np.array([0, 4], np.int64), out)
    with pytest.raises(ValueError, match=r"rows\[0\] = -1"):
        _dense.take_rows(X, np.array([-1, 0], np.int64), out)
    assert not out.any()
    with pytest.raises(ValueError, match="expected"):
        _dense.take_rows(X, np.array([0], np.int64), out)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("offsets", [np.int32, np.int64])
def test_take_csr_rows_matches_scipy(n_threads, offsets):
    rng = np.random.default_rng(5)
    X = sp.random(40, 30, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    X.indptr = X.indptr.astype(offsets)
    rows = rng.integers(0, 40, 500).astype(np.int64)   # repeats; enough entries for threads
    rows[:3] = [7, 7, 0]
    ref = X[rows]
    out_indptr = np.empty(rows.size + 1, np.int64)
    out_indices = np.full(ref.nnz + 5, -1, np.int32)
    out_data = np.full(ref.nnz + 5, np.nan, np.float32)
    nnz = _dense.take_csr_rows(X.indptr, X.indices, X.data, rows, out_indptr, out_indices,
                               out_data, n_threads)
    assert nnz == ref.nnz
    np.testing.assert_array_equal(out_indptr, ref.indptr)
    np.testing.assert_array_equal(out_indices[:nnz], ref.indices)
    np.testing.assert_array_equal(out_data[:nnz], ref.data)
    assert (out_indices[nnz:] == -1).all()             # nothing written past the rows
    assert _dense.take_csr_rows(X.indptr, X.indices, X.data, rows[:0], out_indptr[:1],
                                out_indices, out_data, n_threads) == 0


def test_take_csr_rows_rejects_bad_rows_offsets_and_short_outputs():
    X = sp.csr_matrix(np.eye(4, dtype=np.float32))
    args = (np.empty(3, np.int64), np.empty(4, np.int32), np.empty(4, np.float32))
    with pytest.raises(ValueError, match="outside"):
        _dense.take_csr_rows(X.indptr, X.indices, X.data, np.array([0, 4], np.int64), *args)
    with pytest.raises(ValueError, match="outside"):
        _dense.take_csr_rows(X.indptr, X.indices, X.data, np.array([-1, 0], np.int64), *args)
    bad = X.indptr.copy()
    bad[2] = 9
    with pytest.raises(ValueError, match="offsets"):
        _dense.take_csr_rows(bad, X.indices, X.data, np.array([1, 0], np.int64), *args)
    with pytest.raises(ValueError, match="hold"):
        _dense.take_csr_rows(X.indptr, X.indices, X.data, np.array([1, 0], np.int64),
                             args[0], args[1][:1], args[2])
    with pytest.raises(ValueError, match="out_indptr"):
        _dense.take_csr_rows(X.indptr, X.indices, X.data, np.array([1], np.int64), *args)
