"""Optimizer steps of fastfire._core._optim against scikit-learn's arithmetic in plain NumPy."""

import numpy as np
import pytest

from fastfire._core import _optim

THREADS = (1, 2, 3)
SIZES = [0, 1, 17, 1001]


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _state(rng, n):
    f = lambda: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    return f(), f(), f() * 0.1, np.abs(f()) * 0.1


# --- plain NumPy references (scikit-learn's AdamOptimizer / SGDOptimizer, float32) -----------

def ref_adam(param, grad, m, v, lr_t, b1, b2, eps, l2):
    g = grad + np.float32(l2) * param
    m = np.float32(b1) * m + np.float32(1 - b1) * g
    v = np.float32(b2) * v + np.float32(1 - b2) * (g * g)
    return param - np.float32(lr_t) * m / (np.sqrt(v) + np.float32(eps)), m, v


def ref_sgd(param, grad, vel, lr, momentum, nesterov, l2):
    g = grad + np.float32(l2) * param
    vel = np.float32(momentum) * vel - np.float32(lr) * g
    update = np.float32(momentum) * vel - np.float32(lr) * g if nesterov else vel
    return param + update, vel


def sklearn_lr_t(lr, b1, b2, t):
    return lr * np.sqrt(1 - b2**t) / (1 - b1**t)


# --- dense steps ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_adam_step_matches_reference(n, l2, n_threads):
    rng = np.random.default_rng(n)
    param, grad, m, v = _state(rng, n)
    exp_param, exp_m, exp_v = param.copy(), m.copy(), v.copy()
    grad = _readonly(grad)
    for t in range(1, 4):
        lr_t = sklearn_lr_t(1e-3, 0.9, 0.999, t)
        norm = _optim.adam_step(param, grad, m, v, lr_t, 0.9, 0.999, 1e-8, l2, n_threads)
        assert norm == pytest.approx(np.sum(exp_param.astype(np.float64) ** 2), rel=1e-5)
        exp_param, exp_m, exp_v = ref_adam(exp_param, grad, exp_m, exp_v, lr_t, 0.9, 0.999, 1e-8, l2)
    np.testing.assert_allclose(m, exp_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, exp_v, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(param, exp_param, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_sgd_step_matches_reference(n, momentum, nesterov, l2, n_threads):
    rng = np.random.default_rng(n + 1)
    param, grad, vel, _ = _state(rng, n)
    exp_param, exp_vel = param.copy(), vel.copy()
    grad = _readonly(grad)
    for _ in range(3):
        norm = _optim.sgd_step(param, grad, vel, 0.1, momentum, nesterov, l2, n_threads)
        assert norm == pytest.approx(np.sum(exp_param.astype(np.float64) ** 2), rel=1e-5)
        exp_param, exp_vel = ref_sgd(exp_param, grad, exp_vel, 0.1, momentum, nesterov, l2)
    np.testing.assert_allclose(vel, exp_vel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(param, exp_param, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [7, 100_003])
def test_adam_step_rounds_exactly_as_numpy(n):
    # the vector paths (AVX when the CPU has it, SSE, scalar tail) do NumPy's float32 operations
    # in the same order, without FMA contraction: bit-identical results
    rng = np.random.default_rng(3)
    param, grad, m, v = _state(rng, n)
    exp_param, exp_m, exp_v = ref_adam(param, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-3)
    _optim.adam_step(param, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-3, 2)
    np.testing.assert_array_equal(m, exp_m)
    np.testing.assert_array_equal(v, exp_v)
    np.testing.assert_array_equal(param, exp_param)


@pytest.mark.parametrize("step", ["adam", "sgd"])
def test_dense_step_squared_norm_is_the_same_for_every_thread_count(step):
    # per-chunk partial sums added in chunk order: bit-identical, not merely close
    rng = np.random.default_rng(11)
    param, grad, m, v = _state(rng, 100_003)
    norms = []
    for n_threads in THREADS:
        p = param.copy()
        if step == "adam":
            norms.append(_optim.adam_step(p, grad, m.copy(), v.copy(), 1e-3, 0.9, 0.999, 1e-8,
                                          1e-4, n_threads))
        else:
            norms.append(_optim.sgd_step(p, grad, m.copy(), 0.1, 0.9, True, 1e-4, n_threads))
    assert norms[0] == norms[1] == norms[2]
    assert norms[0] == pytest.approx(np.sum(param.astype(np.float64) ** 2), rel=1e-6)


def test_adam_and_sgd_accept_flat_views_of_matrices():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((30, 7)).astype(np.float32)
    G = rng.standard_normal((30, 7)).astype(np.float32)
    m, v = np.zeros_like(W), np.zeros_like(W)
    W0 = W.copy()
    _optim.adam_step(W.reshape(-1), G.reshape(-1), m.reshape(-1), v.reshape(-1), 0.01, 0.9,
                     0.999, 1e-8, 0.0, 2)
    exp, _, _ = ref_adam(W0, G, np.zeros_like(W), np.zeros_like(W), 0.01, 0.9, 0.999, 1e-8, 0.0)
    np.testing.assert_allclose(W, exp, rtol=1e-6)


def test_dense_steps_reject_length_mismatch():
    a, b = np.zeros(5, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="grad"):
        _optim.adam_step(a, b, a.copy(), a.copy(), 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="velocity"):
        _optim.sgd_step(a, a.copy(), b, 0.1, 0.9, False, 0.0, 1)


# --- row-restricted (lazy) steps --------------------------------------------------------------

def _rows_problem(rng, n_rows, p, n_active):
    param = rng.standard_normal((n_rows, p)).astype(np.float32)
    rows = _readonly(np.sort(rng.choice(n_rows, n_active, replace=False)).astype(np.int32))
    grad_rows = _readonly(rng.standard_normal((n_active, p)).astype(np.float32))
    return param, rows, grad_rows


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("n_rows,p,n_active", [(5, 3, 0), (1, 1, 1), (40, 9, 13), (300, 33, 300)])
def test_adam_step_rows_matches_per_row_reference(n_rows, p, n_active, n_threads):
    rng = np.random.default_rng(n_rows + p)
    param, rows, _ = _rows_problem(rng, n_rows, p, n_active)
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    t = rng.integers(0, 5, n_rows).astype(np.int64)  # rows have their own histories
    exp_param, exp_m, exp_v, exp_t = param.copy(), m.copy(), v.copy(), t.copy()
    lr, b1, b2, eps, l2 = 1e-2, 0.9, 0.999, 1e-8, 1e-3
    for step in range(3):
        grad_rows = _readonly(rng.standard_normal((n_active, p)).astype(np.float32))
        norm = _optim.adam_step_rows(param, grad_rows, rows, m, v, t, lr, b1, b2, eps, l2, n_threads)
        expected_norm = np.sum(exp_param[rows].astype(np.float64) ** 2)
        assert norm == pytest.approx(expected_norm, rel=1e-5, abs=1e-12)
        for k, r in enumerate(rows):
            exp_t[r] += 1
            lr_r = sklearn_lr_t(lr, b1, b2, exp_t[r])
            exp_param[r], exp_m[r], exp_v[r] = ref_adam(exp_param[r], grad_rows[k], exp_m[r],
                                                        exp_v[r], lr_r, b1, b2, eps, l2)
    np.testing.assert_array_equal(t, exp_t)
    np.testing.assert_allclose(m, exp_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, exp_v, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(param, exp_param, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(n_rows), rows)
    np.testing.assert_array_equal(m[untouched], 0)


def test_adam_step_size_table_matches_the_bias_corrected_formula():
    table = _optim.adam_step_size_table(1e-3, 0.9, 0.999, 50)
    assert table.dtype == np.float32 and table.shape == (51,) and table[0] == 0
    t = np.arange(1, 51)
    np.testing.assert_allclose(table[1:], sklearn_lr_t(1e-3, 0.9, 0.999, t), rtol=1e-6)
    with pytest.raises(ValueError, match="t_max"):
        _optim.adam_step_size_table(1e-3, 0.9, 0.999, -1)


@pytest.mark.parametrize("n_threads", THREADS)
def test_adam_step_rows_with_step_size_table_is_bit_identical(n_threads):
    # counts inside the table and beyond it (those fall back to computing the step size)
    rng = np.random.default_rng(11)
    param, rows, grad_rows = _rows_problem(rng, 60, 5, 40)
    t = rng.integers(0, 12, 60).astype(np.int64)
    table = _optim.adam_step_size_table(1e-2, 0.9, 0.999, 8)
    states = [(param.copy(), np.zeros_like(param), np.zeros_like(param), t.copy()) for _ in range(2)]
    for step in range(4):
        for (P, m, v, tt), sizes in zip(states, (None, table)):
            _optim.adam_step_rows(P, grad_rows, rows, m, v, tt, 1e-2, 0.9, 0.999, 1e-8, 1e-3,
                                  n_threads, sizes)
    for a, b in zip(states[0], states[1]):
        np.testing.assert_array_equal(a, b)
    assert (states[1][3][rows] > 8).any() and (states[1][3][rows] <= 8).any()


def test_adam_step_rows_with_all_rows_equals_dense_adam():
    rng = np.random.default_rng(4)
    param, rows, _ = _rows_problem(rng, 20, 6, 20)
    P2 = param.copy()
    m1, v1, m2, v2 = (np.zeros_like(param) for _ in range(4))
    t = np.zeros(20, np.int64)
    for step in range(1, 4):
        G = rng.standard_normal((20, 6)).astype(np.float32)
        _optim.adam_step_rows(param, G, np.arange(20, dtype=np.int32), m1, v1, t, 1e-2, 0.9,
                              0.999, 1e-8, 0.0, 2)
        _optim.adam_step(P2.reshape(-1), G.reshape(-1), m2.reshape(-1), v2.reshape(-1),
                         sklearn_lr_t(1e-2, 0.9, 0.999, step), 0.9, 0.999, 1e-8, 0.0, 2)
    np.testing.assert_allclose(param, P2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_step_rows_matches_reference(nesterov, n_threads):
    rng = np.random.default_rng(8)
    param, rows, grad_rows = _rows_problem(rng, 50, 7, 19)
    vel = rng.standard_normal((50, 7)).astype(np.float32)
    exp_param, exp_vel = param.copy(), vel.copy()
    norm = _optim.sgd_step_rows(param, grad_rows, rows, vel, 0.05, 0.9, nesterov, 1e-3, n_threads)
    assert norm == pytest.approx(np.sum(exp_param[rows].astype(np.float64) ** 2), rel=1e-6)
    exp_param[rows], exp_vel[rows] = ref_sgd(exp_param[rows], grad_rows, exp_vel[rows], 0.05, 0.9,
                                             nesterov, 1e-3)
    np.testing.assert_allclose(param, exp_param, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vel, exp_vel, rtol=1e-6, atol=1e-7)


def test_row_steps_reject_bad_rows_and_shapes():
    param = np.zeros((4, 3), np.float32)
    rows = np.array([1, 9], np.int32)
    G = np.ones((2, 3), np.float32)
    t = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="outside"):
        _optim.adam_step_rows(param, G, rows, param.copy(), param.copy(), t, 0.1, 0.9, 0.999,
                              1e-8, 0.0, 2)
    assert t[1] == 1  # the valid row was still updated
    with pytest.raises(ValueError, match="outside"):
        _optim.sgd_step_rows(param, G, rows, param.copy(), 0.1, 0.9, False, 0.0, 1)
    with pytest.raises(ValueError, match="grad_rows"):
        _optim.adam_step_rows(param, np.ones((3, 3), np.float32), rows, param.copy(),
                              param.copy(), t, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="t has"):
        _optim.adam_step_rows(param, G, rows, param.copy(), param.copy(), np.zeros(3, np.int64),
                              0.1, 0.9, 0.999, 1e-8, 0.0, 1)


# --- Adam on a factored gradient (alpha * left.T @ right) ---------------------------------------

@pytest.mark.parametrize("n_rows, p, k", [(1, 1, 1), (37, 45, 3), (20, 600, 15), (9, 70, 0),
                                         (50, 13, 50)])
@pytest.mark.parametrize("n_threads", THREADS)
def test_outer_product_matches_numpy(n_rows, p, k, n_threads):
    rng = np.random.default_rng(n_rows + p + k)
    left = rng.standard_normal((k, n_rows)).astype(np.float32)
    right = rng.standard_normal((k, p)).astype(np.float32)
    out = np.full((n_rows, p), np.nan, np.float32)
    _optim.outer_product(_readonly(left), _readonly(right), out, 0.02, n_threads)
    ref = 0.02 * left.astype(np.float64).T @ right
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_rows, p, k", [(37, 45, 3), (20, 600, 15), (9, 70, 0)])
def test_adam_step_outer_equals_adam_on_the_formed_gradient(n_rows, p, k):
    rng = np.random.default_rng(k)
    left = rng.standard_normal((k, n_rows)).astype(np.float32)
    right = rng.standard_normal((k, p)).astype(np.float32)
    param, _, m, v = (a.reshape(n_rows, p) for a in _state(rng, n_rows * p))
    grad = np.empty((n_rows, p), np.float32)
    _optim.outer_product(left, right, grad, 0.02, 1)
    np.testing.assert_allclose(grad, 0.02 * left.astype(np.float64).T @ right, rtol=1e-5, atol=1e-6)
    ref = ref_adam(param, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-4)
    expected_norm = float((param.astype(np.float64) ** 2).sum())
    norms = []
    for n_threads in THREADS:
        p2, m2, v2 = param.copy(), m.copy(), v.copy()
        norms.append(_optim.adam_step_outer(p2, _readonly(left), _readonly(right), 0.02, m2, v2,
                                            1e-3, 0.9, 0.999, 1e-8, 1e-4, n_threads))
        # the same bits as adam_step on outer_product's gradient, and as NumPy within rounding
        p3, m3, v3 = param.copy(), m.copy(), v.copy()
        _optim.adam_step(p3.reshape(-1), grad.reshape(-1), m3.reshape(-1), v3.reshape(-1), 1e-3,
                         0.9, 0.999, 1e-8, 1e-4, 1)
        for got, same, want in zip((p2, m2, v2), (p3, m3, v3), ref):
            np.testing.assert_array_equal(got, same)
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert norms[0] == norms[1] == norms[2]
    assert norms[0] == pytest.approx(expected_norm, rel=1e-6)


def test_factored_steps_reject_shape_mismatch():
    param = np.zeros((4, 5), np.float32)
    good_l, good_r = np.zeros((2, 4), np.float32), np.zeros((2, 5), np.float32)
    for left, right in [(np.zeros((3, 4), np.float32), good_r), (np.zeros((2, 3), np.float32), good_r),
                        (good_l, np.zeros((2, 6), np.float32))]:
        with pytest.raises(ValueError, match="left"):
            _optim.adam_step_outer(param, left, right, 1.0, param.copy(), param.copy(), 1e-3,
                                   0.9, 0.999, 1e-8, 0.0)
        with pytest.raises(ValueError, match="left"):
            _optim.outer_product(left, right, param)
    with pytest.raises(ValueError, match="m"):
        _optim.adam_step_outer(param, good_l, good_r, 1.0, np.zeros((4, 4), np.float32),
                               param.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0)


# --- fused gradient + update of an active-set layer's rows ------------------------------------

def _active_batch(rng, n, n_rows, d, per_sample):
    """A batch of ``n`` samples with ``per_sample`` distinct active rows each, laid out by
    ``_active.touched_rows``: (X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows)."""
    from fastfire._core import _active

    idx = np.concatenate([rng.choice(n_rows, per_sample, replace=False) for _ in range(n)])
    idx = idx.astype(np.int32)
    indptr = np.arange(0, n * per_sample + 1, per_sample, dtype=np.int64)
    nnz = idx.shape[0]
    m = min(nnz, n_rows)
    rows, slot = np.empty(m, np.int32), np.empty(nnz, np.int32)
    t_indptr, t_entries = np.empty(m + 1, np.int64), np.empty(nnz, np.int64)
    t_sample = np.empty(nnz, np.int32)
    nt = _active.touched_rows(indptr, idx, np.full(n_rows, -1, np.int32), rows, slot, t_indptr,
                              t_entries, t_sample)
    X = rng.standard_normal((n, d)).astype(np.float32)
    delta = rng.standard_normal(nnz).astype(np.float32)
    delta[::7] = 0.0                                     # zero deltas are skipped by both paths
    return X, delta, indptr, slot, t_indptr[:nt + 1], t_entries, t_sample, rows[:nt]


def _materialised(batch, n_threads):
    from fastfire._core import _active

    X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = batch
    grad = np.empty((rows.shape[0], X.shape[1]), np.float32)
    bias_grad = np.empty(rows.shape[0], np.float32)
    _active.grad_rows_dense(X, delta, indptr, slot, t_indptr, t_entries, t_sample, grad,
                            bias_grad, 0.25, False, n_threads)
    return grad, bias_grad.reshape(-1, 1)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("n,n_rows,d,per_sample", [(3, 10, 4, 2), (40, 3000, 64, 30)])
def test_adam_step_grad_rows_equals_gradient_then_row_steps(n, n_rows, d, per_sample, table,
                                                             n_threads):
    # bit for bit: grad_rows_dense + adam_step_rows on the weights and on the biases (n_rows, 1)
    rng = np.random.default_rng(n_rows)
    lr, b1, b2, eps, l2 = 1e-2, 0.9, 0.999, 1e-8, 1e-3
    sizes = _optim.adam_step_size_table(lr, b1, b2, 2) if table else None
    W = rng.standard_normal((n_rows, d)).astype(np.float32)
    b = rng.standard_normal(n_rows).astype(np.float32)
    fused = [W.copy(), np.zeros_like(W), np.zeros_like(W), np.zeros(n_rows, np.int64),
             b.copy(), np.zeros_like(b), np.zeros_like(b), np.zeros(n_rows, np.int64)]
    split = [a.copy() for a in fused]
    for step in range(4):                                # counts inside and past the table
        batch = _active_batch(rng, n, n_rows, d, per_sample)
        X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = batch
        norm, bias_norm = _optim.adam_step_grad_rows(
            *fused, rows, X, delta, t_indptr, t_entries, t_sample, 0.25, lr, b1, b2, eps,
            l2, 0.0, n_threads, sizes)
        grad, bias_grad = _materialised(batch, n_threads)
        Ws, ms, vs, ts, bs, bms, bvs, bts = split
        exp_norm = _optim.adam_step_rows(Ws, grad, rows, ms, vs, ts, lr, b1, b2, eps, l2,
                                         n_threads, sizes)
        exp_bias_norm = _optim.adam_step_rows(bs.reshape(-1, 1), bias_grad, rows,
                                              bms.reshape(-1, 1), bvs.reshape(-1, 1), bts, lr,
                                              b1, b2, eps, 0.0, n_threads, sizes)
        assert norm == exp_norm and bias_norm == exp_bias_norm
    for a, e in zip(fused, split):
        np.testing.assert_array_equal(a, e)
    if n_rows > 1000:                                    # untouched rows, counts past the table
        assert (fused[3] == 0).any() and (fused[3] > 2).any()


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_step_grad_rows_equals_gradient_then_row_steps(nesterov, n_threads):
    rng = np.random.default_rng(5)
    batch = _active_batch(rng, 40, 3000, 64, 30)
    X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = batch
    W = rng.standard_normal((3000, 64)).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    vel, bvel = 0.1 * W, 0.1 * b
    fused = [W.copy(), vel.copy(), b.copy(), bvel.copy()]
    norm, bias_norm = _optim.sgd_step_grad_rows(*fused, rows, X, delta, t_indptr, t_entries,
                                                t_sample, 0.25, 0.05, 0.9, nesterov, 1e-3,
                                                1e-4, n_threads)
    grad, bias_grad = _materialised(batch, n_threads)
    exp = [W.copy(), vel.copy(), b.copy(), bvel.copy()]
    exp_norm = _optim.sgd_step_rows(exp[0], grad, rows, exp[1], 0.05, 0.9, nesterov, 1e-3,
                                    n_threads)
    exp_bias_norm = _optim.sgd_step_rows(exp[2].reshape(-1, 1), bias_grad, rows,
                                         exp[3].reshape(-1, 1), 0.05, 0.9, nesterov, 1e-4,
                                         n_threads)
    assert norm == exp_norm and bias_norm == exp_bias_norm
    for a, e in zip(fused, exp):
        np.testing.assert_array_equal(a, e)


def _input_grad_rows(W, batch, n_threads):
    """Reference input gradient (the unfused kernel) and a NumPy check of it."""
    from fastfire._core import _active

    X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = batch
    n, d = X.shape[0], W.shape[1]
    ref = np.empty((n, d), np.float32)
    _active.active_input_grad_rows(delta, W, rows, t_indptr, t_entries, t_sample, ref,
                                   np.empty((max(n_threads - 1, 1), n, d), np.float32),
                                   n_threads)
    dense = np.zeros((n, W.shape[0]))                   # the entries' deltas, sample x neuron
    np.add.at(dense, (np.repeat(np.arange(n), np.diff(indptr)), rows[slot]), delta)
    np.testing.assert_allclose(ref, dense @ W, rtol=1e-4, atol=1e-4)
    return ref


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_fused_row_steps_write_the_input_gradient_of_the_old_rows(solver, n_threads):
    # the input gradient written in the update pass: the bits of active_input_grad_rows on the
    # weights before the update (same thread count), and the update itself unchanged
    rng = np.random.default_rng(7)
    batch = _active_batch(rng, 40, 3000, 64, 30)
    X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = batch
    W = rng.standard_normal((3000, 64)).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    expected = _input_grad_rows(W, batch, n_threads)
    n = X.shape[0]
    out = np.full((n, 64), np.nan, np.float32)
    partial = np.full((max(n_threads - 1, 1), n, 64), np.nan, np.float32)
    if solver == "adam":
        state = [W.copy(), np.zeros_like(W), np.zeros_like(W), np.zeros(3000, np.int64),
                 b.copy(), np.zeros_like(b), np.zeros_like(b), np.zeros(3000, np.int64)]
        args = (0.25, 1e-2, 0.9, 0.999, 1e-8, 1e-3, 0.0, n_threads)
        step = _optim.adam_step_grad_rows
    else:
        state = [W.copy(), 0.1 * W, b.copy(), 0.1 * b]
        args = (0.25, 0.05, 0.9, True, 1e-3, 0.0, n_threads)
        step = _optim.sgd_step_grad_rows
    plain = [a.copy() for a in state]
    with_grad = step(*state, rows, X, delta, t_indptr, t_entries, t_sample, *args,
                     input_grad=out, partial=partial)
    without = step(*plain, rows, X, delta, t_indptr, t_entries, t_sample, *args)
    np.testing.assert_array_equal(out, expected)
    assert with_grad == without
    for a, e in zip(state, plain):
        np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="input_grad must be"):
        step(*plain, rows, X, delta, t_indptr, t_entries, t_sample, *args,
             input_grad=out[:-1], partial=partial)
    if n_threads > 1:
        with pytest.raises(ValueError, match="partial must be"):
            step(*plain, rows, X, delta, t_indptr, t_entries, t_sample, *args,
                 input_grad=out, partial=None)


def test_fused_row_steps_reject_bad_entries_and_shapes():
    rng = np.random.default_rng(2)
    X, delta, indptr, slot, t_indptr, t_entries, t_sample, rows = \
        _active_batch(rng, 4, 20, 3, 5)
    W = np.zeros((20, 3), np.float32)
    b = np.zeros(20, np.float32)

    def adam(rows=rows, t_indptr=t_indptr, t_entries=t_entries, t_sample=t_sample,
             X=X, bias=b):
        return _optim.adam_step_grad_rows(W, W.copy(), W.copy(), np.zeros(20, np.int64), bias,
                                          b.copy(), b.copy(), np.zeros(20, np.int64), rows, X,
                                          delta, t_indptr, t_entries, t_sample, 1.0, 0.1,
                                          0.9, 0.999, 1e-8, 0.0, 0.0, 2)

    bad_rows = rows.copy()
    bad_rows[0] = 20
    with pytest.raises(ValueError, match="row ids outside"):
        adam(rows=bad_rows)
    bad_entries = t_entries.copy()
    bad_entries[0] = delta.shape[0]
    with pytest.raises(ValueError, match="entries outside"):
        adam(t_entries=bad_entries)
    bad_samples = t_sample.copy()
    bad_samples[:] = 4
    with pytest.raises(ValueError, match="entries outside"):
        adam(t_sample=bad_samples)
    bad_indptr = t_indptr.copy()
    bad_indptr[-1] = t_entries.shape[0] + 1
    with pytest.raises(ValueError, match="entries outside"):
        adam(t_indptr=bad_indptr)
    with pytest.raises(ValueError, match="t_indptr"):
        adam(t_indptr=t_indptr[:-1])
    with pytest.raises(ValueError, match="X has"):
        adam(X=np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="bias has"):
        adam(bias=np.zeros(19, np.float32))
    with pytest.raises(ValueError, match="t_sample"):
        adam(t_sample=t_sample[:-1])
    with pytest.raises(ValueError, match="velocity"):
        _optim.sgd_step_grad_rows(W, np.zeros((20, 2), np.float32), b, b.copy(), rows, X, delta,
                                  t_indptr, t_entries, t_sample, 1.0, 0.1, 0.9, False, 0.0,
                                  0.0, 1)
