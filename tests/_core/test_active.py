"""fastfire._core._active against plain NumPy computations restricted to the active sets."""

import numpy as np
import pytest
import scipy.sparse as sp

from fastfire._core import _active

THREADS = (1, 2, 3)


def _active_set(rng, n, m, max_active):
    counts = rng.integers(0, max_active + 1, n)
    counts[0] = max_active
    idx = np.concatenate([np.sort(rng.choice(m, c, replace=False)) for c in counts]).astype(np.int32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, idx


def _mask(indptr, idx, n, m):
    rows = np.repeat(np.arange(n), np.diff(indptr))
    return rows, idx


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    n, d, m = 13, 24, 50
    X = rng.standard_normal((n, d)).astype(np.float32)
    Wt = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    indptr, idx = _active_set(rng, n, m, 12)
    return rng, X, Wt, b, indptr, idx


def _ref_act(z, act):
    return {0: z, 1: np.maximum(z, 0), 2: 1 / (1 + np.exp(-z)), 3: np.tanh(z)}[act]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_forward_dense_equals_dense_product_on_active_set(problem, n_threads, act):
    rng, X, Wt, b, indptr, idx = problem
    out = np.empty(idx.size, dtype=np.float32)
    _active.active_forward_dense(X, Wt, b, indptr, idx, out, act, n_threads)
    rows, cols = _mask(indptr, idx, X.shape[0], Wt.shape[0])
    ref = _ref_act((X.astype(np.float64) @ Wt.T.astype(np.float64) + b)[rows, cols], act)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_threads", THREADS)
def test_forward_csr_equals_dense(problem, n_threads):
    rng, X, Wt, b, indptr, idx = problem
    X[rng.random(X.shape) < 0.7] = 0
    Xs = sp.csr_matrix(X)
    out = np.empty(idx.size, dtype=np.float32)
    _active.active_forward_csr(Xs.indptr.astype(np.int64), Xs.indices.astype(np.int32),
                               Xs.data.astype(np.float32), Wt, b, indptr, idx, out, 1, n_threads)
    rows, cols = _mask(indptr, idx, X.shape[0], Wt.shape[0])
    ref = np.maximum((X @ Wt.T + b)[rows, cols], 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _ref_softmax(z, indptr, n_lab):
    delta = np.zeros_like(z, dtype=np.float64)
    loss = 0.0
    for i in range(len(indptr) - 1):
        a, c = indptr[i], indptr[i + 1]
        if n_lab[i] == 0 or c == a:
            continue
        p = np.exp(z[a:c] - z[a:c].max())
        p /= p.sum()
        t = np.zeros(c - a)
        t[: n_lab[i]] = 1.0 / n_lab[i]
        loss -= (t[: n_lab[i]] * np.log(p[: n_lab[i]])).sum()
        delta[a:c] = p - t
    return loss, delta


@pytest.mark.parametrize("n_threads", THREADS)
def test_sparse_softmax_matches_numpy(problem, n_threads):
    rng, X, Wt, b, indptr, idx = problem
    z = rng.standard_normal(idx.size).astype(np.float32) * 3
    counts = np.diff(indptr)
    n_lab = np.minimum(counts, rng.integers(0, 4, counts.size)).astype(np.int32)
    ref_loss, ref_delta = _ref_softmax(z.astype(np.float64), indptr, n_lab)
    vals = z.copy()
    loss = _active.sparse_softmax_xent(indptr, n_lab, vals, n_threads)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(vals, ref_delta, atol=1e-6)


@pytest.mark.parametrize("n_threads", THREADS)
def test_sparse_logistic_matches_numpy(problem, n_threads):
    rng, X, Wt, b, indptr, idx = problem
    z = rng.standard_normal(idx.size).astype(np.float32) * 3
    counts = np.diff(indptr)
    n_lab = np.minimum(counts, rng.integers(0, 4, counts.size)).astype(np.int32)
    y = np.concatenate([(np.arange(c) < l).astype(np.float64) for c, l in zip(counts, n_lab)])
    zz = z.astype(np.float64)
    ref_loss = (np.logaddexp(0, zz) - y * zz).sum()
    vals = z.copy()
    loss = _active.sparse_logistic_xent(indptr, n_lab, vals, n_threads)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(vals, 1 / (1 + np.exp(-zz)) - y, atol=1e-6)


def _backward(X, Wt, indptr, idx, delta, hogwild, n_threads, csr=False):
    m = Wt.shape[0]
    nnz = idx.size
    k = min(nnz, m)
    mark = np.full(m, -1, dtype=np.int32)
    rows = np.empty(k, dtype=np.int32)
    slot = np.empty(nnz, dtype=np.int32)
    t_indptr = np.empty(k + 1, dtype=np.int64)
    t_entries = np.empty(nnz, dtype=np.int64)
    es = np.empty(nnz, dtype=np.int32)
    nt = _active.touched_rows(indptr, idx, mark, rows, slot, t_indptr, t_entries, es)
    assert (mark == -1).all()
    grad = np.empty((nt, X.shape[1]), dtype=np.float32)
    bgrad = np.empty(nt, dtype=np.float32)
    scale = 1.0 / X.shape[0]
    if csr:
        Xs = sp.csr_matrix(X)
        _active.grad_rows_csr(Xs.indptr.astype(np.int64), Xs.indices.astype(np.int32),
                              Xs.data.astype(np.float32), delta, indptr, slot, t_indptr,
                              t_entries, es, grad, bgrad, scale, hogwild, n_threads)
    else:
        _active.grad_rows_dense(X, delta, indptr, slot, t_indptr, t_entries, es, grad, bgrad,
                                scale, hogwild, n_threads)
    return rows[:nt], grad, bgrad


def _ref_backward(X, Wt, indptr, idx, delta):
    n, m = X.shape[0], Wt.shape[0]
    rows, cols = _mask(indptr, idx, n, m)
    D = np.zeros((n, m))
    D[rows, cols] = delta
    return D.T @ X / n, D.sum(axis=0) / n, D @ Wt


@pytest.mark.parametrize("csr", [False, True])
@pytest.mark.parametrize("n_threads", THREADS)
def test_backward_equals_dense_gradient_restricted_to_active_rows(problem, n_threads, csr):
    rng, X, Wt, b, indptr, idx = problem
    if csr:
        X[rng.random(X.shape) < 0.6] = 0
    delta = rng.standard_normal(idx.size).astype(np.float32)
    ref_gW, ref_gb, ref_gx = _ref_backward(X, Wt, indptr, idx, delta)
    rows, grad, bgrad = _backward(X, Wt, indptr, idx, delta, False, n_threads, csr)
    assert len(set(rows.tolist())) == rows.size
    assert set(rows.tolist()) == set(idx.tolist())
    np.testing.assert_allclose(grad, ref_gW[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bgrad, ref_gb[rows], rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(Wt.shape[0]), rows)
    assert np.abs(ref_gW[untouched]).max(initial=0) == 0
    gx = np.empty_like(X)
    _active.active_input_grad(delta, indptr, idx, Wt, gx, n_threads)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("csr", [False, True])
def test_deterministic_mode_same_bits_for_every_thread_count(problem, csr):
    rng, X, Wt, b, indptr, idx = problem
    # many samples sharing few rows: long sums where the order matters
    n, m = 400, 7
    X = rng.standard_normal((n, 16)).astype(np.float32)
    indptr, idx = _active_set(rng, n, m, 5)
    delta = rng.standard_normal(idx.size).astype(np.float32)
    Wt = rng.standard_normal((m, 16)).astype(np.float32)
    ref = _backward(X, Wt, indptr, idx, delta, False, 1, csr)
    for t in (2, 3):
        got = _backward(X, Wt, indptr, idx, delta, False, t, csr)
        for a, c in zip(ref, got):
            np.testing.assert_array_equal(a, c)
    # HOGWILD on one thread adds in the same order: identical bits
    hog = _backward(X, Wt, indptr, idx, delta, True, 1, csr)
    for a, c in zip(ref, hog):
        np.testing.assert_array_equal(a, c)
    # HOGWILD on several threads races by design: only close (sums may be reordered or lost)
    _backward(X, Wt, indptr, idx, delta, True, 2, csr)


def test_act_backward_gathers_and_applies_derivative(problem):
    rng, X, Wt, b, indptr, idx = problem
    n, m = X.shape[0], Wt.shape[0]
    grad = rng.standard_normal((n, m)).astype(np.float32)
    vals = np.maximum(rng.standard_normal(idx.size), 0).astype(np.float32)
    delta = np.empty_like(vals)
    _active.active_act_backward(grad, indptr, idx, vals, delta, 1, 2)
    rows, cols = _mask(indptr, idx, n, m)
    np.testing.assert_array_equal(delta, grad[rows, cols] * (vals > 0))


@pytest.mark.parametrize("k", [1, 3, 50])
def test_dense_topk_matches_stable_argsort(k):
    rng = np.random.default_rng(1)
    S = rng.integers(0, 20, (30, 50)).astype(np.float32)  # many ties
    idx = np.empty((30, k), dtype=np.int32)
    val = np.empty((30, k), dtype=np.float32)
    _active.dense_scores_topk(S, k, idx, val, 2)
    ref = np.argsort(-S, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_array_equal(val, np.take_along_axis(S, ref, 1))


def test_errors_on_shape_mismatch(problem):
    rng, X, Wt, b, indptr, idx = problem
    with pytest.raises(ValueError, match="idx"):
        _active.active_forward_dense(X, Wt, b, indptr, idx[:-1], np.empty(idx.size - 1, np.float32))
    with pytest.raises(ValueError, match="inputs"):
        _active.active_forward_dense(X[:, :5].copy(), Wt, b, indptr, idx, np.empty(idx.size, np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        _active.active_forward_dense(X, Wt, b, indptr, idx, np.empty(idx.size, np.float32), 0, 0)
    with pytest.raises(ValueError, match="k must"):
        _active.dense_scores_topk(X, 0, np.empty((13, 0), np.int32), np.empty((13, 0), np.float32))


@pytest.mark.parametrize("n_threads", THREADS)
def test_csr_rows_grad_equals_numpy_on_the_batch_features(n_threads):
    rng = np.random.default_rng(3)
    n, n_in, p = 17, 60, 9
    X = sp.random(n, n_in, density=0.15, format="csr", random_state=1, dtype=np.float32)
    X.data[::7] = 0                                   # explicit zeros are skipped, not a crash
    indptr, indices = X.indptr.astype(np.int64), X.indices.astype(np.int32)
    delta = rng.standard_normal((n, p)).astype(np.float32)
    nnz = indices.size
    mark = np.full(n_in, -1, dtype=np.int32)
    rows = np.empty(min(nnz, n_in), dtype=np.int32)
    slot = np.empty(nnz, dtype=np.int32)
    t_indptr = np.empty(rows.size + 1, dtype=np.int64)
    t_entries = np.empty(nnz, dtype=np.int64)
    sample = np.empty(nnz, dtype=np.int32)
    nt = _active.touched_rows(indptr, indices, mark, rows, slot, t_indptr, t_entries, sample)
    grad = np.full((nt, p), np.nan, dtype=np.float32)
    _active.csr_rows_grad(X.data, delta, t_indptr, t_entries, sample, grad, 0.25, n_threads)
    ref = 0.25 * (X.toarray().astype(np.float64).T @ delta.astype(np.float64))
    np.testing.assert_array_equal(np.sort(rows[:nt]), np.unique(indices))
    np.testing.assert_allclose(grad, ref[rows[:nt]], rtol=1e-5, atol=1e-6)
    assert (mark == -1).all()
    again = np.empty_like(grad)
    _active.csr_rows_grad(X.data, delta, t_indptr, t_entries, sample, again, 0.25, 1)
    np.testing.assert_array_equal(grad, again)        # same bits for every thread count
    with pytest.raises(ValueError, match="columns"):
        _active.csr_rows_grad(X.data, np.ascontiguousarray(delta[:, :3]), t_indptr, t_entries,
                              sample, grad, 1.0)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 31, 32, 45, 128])
def test_row_kernels_at_every_vector_width(d):
    # the inline dot / axpy have 32-, 16-, 8-wide blocks and a scalar tail: cover each mix
    rng = np.random.default_rng(d)
    n, m = 5, 20
    X = rng.standard_normal((n, d)).astype(np.float32)
    Wt = rng.standard_normal((m, d)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    indptr, idx = _active_set(rng, n, m, 8)
    out = np.empty(idx.size, np.float32)
    _active.active_forward_dense(X, Wt, b, indptr, idx, out, 0, 2)
    rows, cols = _mask(indptr, idx, n, m)
    ref = (X.astype(np.float64) @ Wt.T.astype(np.float64) + b)[rows, cols]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    delta = rng.standard_normal(idx.size).astype(np.float32)
    ref_gW, ref_gb, ref_gx = _ref_backward(X, Wt, indptr, idx, delta)
    touched, grad, bgrad = _backward(X, Wt, indptr, idx, delta, False, 2)
    np.testing.assert_allclose(grad, ref_gW[touched], rtol=1e-5, atol=1e-5)
    gx = np.empty_like(X)
    _active.active_input_grad(delta, indptr, idx, Wt, gx, 2)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_forward_by_rows_equals_forward_by_samples(problem, n_threads, act):
    rng, X, Wt, b, indptr, idx = problem
    m, nnz = Wt.shape[0], idx.size
    idx = rng.permutation(idx)                      # a sample's neurons in any order
    rows, slot = np.empty(min(nnz, m), np.int32), np.empty(nnz, np.int32)
    t_indptr, t_entries = np.empty(min(nnz, m) + 1, np.int64), np.empty(nnz, np.int64)
    es, pos = np.empty(nnz, np.int32), np.empty(nnz, np.int64)
    nt = _active.touched_rows(indptr, idx, np.full(m, -1, np.int32), rows, slot, t_indptr,
                              t_entries, es, pos)
    by_samples = np.empty(nnz, np.float32)
    _active.active_forward_dense(X, Wt, b, indptr, idx, by_samples, act, n_threads)
    by_rows = np.full(nnz, np.nan, np.float32)
    by_slot = np.full(nnz, np.nan, np.float32)
    _active.active_forward_rows_dense(X, Wt, b, rows[:nt], t_indptr, t_entries, es, pos, by_slot,
                                      by_rows, act, n_threads)
    np.testing.assert_array_equal(by_rows, by_samples)
    np.testing.assert_array_equal(by_slot, by_samples[t_entries])
    bad_rows = rows[:nt].copy()
    bad_rows[0] = m
    bad_entries = t_entries.copy()
    bad_entries[0] = nnz
    bad_pos = pos.copy()
    bad_pos[-1] = nnz
    for args in ((bad_rows, t_indptr, t_entries, es, pos),
                 (rows[:nt], t_indptr, bad_entries, es, pos),
                 (rows[:nt], t_indptr, t_entries, np.full(nnz, X.shape[0], np.int32), pos),
                 (rows[:nt], t_indptr, t_entries, es, bad_pos)):
        with pytest.raises(ValueError, match="out of range"):
            _active.active_forward_rows_dense(X, Wt, b, *args, by_slot, by_rows, act, n_threads)
    with pytest.raises(ValueError, match="do not match"):
        _active.active_forward_rows_dense(X, Wt, b, rows[:nt], t_indptr[:nt], t_entries, es,
                                          pos, by_slot, by_rows, act, n_threads)
    with pytest.raises(ValueError, match="do not match"):
        _active.active_forward_rows_dense(X, Wt, b, rows[:nt], t_indptr, t_entries, es, pos,
                                          by_slot[:-1], by_rows, act, n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
def test_input_grad_by_rows_equals_numpy(problem, n_threads):
    rng, X, Wt, b, indptr, idx = problem
    m, nnz, n = Wt.shape[0], idx.size, X.shape[0]
    rows, slot = np.empty(min(nnz, m), np.int32), np.empty(nnz, np.int32)
    t_indptr, t_entries = np.empty(min(nnz, m) + 1, np.int64), np.empty(nnz, np.int64)
    es = np.empty(nnz, np.int32)
    nt = _active.touched_rows(indptr, idx, np.full(m, -1, np.int32), rows, slot, t_indptr,
                              t_entries, es)
    delta = rng.standard_normal(nnz).astype(np.float32)
    delta[::5] = 0.0
    _, _, ref_gx = _ref_backward(X, Wt, indptr, idx, delta)
    partial = np.full((max(n_threads - 1, 1), n, X.shape[1]), np.nan, np.float32)
    runs = []
    for _ in range(2):                      # the same bits for a given thread count
        gx = np.full_like(X, np.nan)
        _active.active_input_grad_rows(delta, Wt, rows[:nt], t_indptr, t_entries, es, gx,
                                       partial, n_threads)
        runs.append(gx)
    np.testing.assert_allclose(runs[0], ref_gx, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runs[0], runs[1])
    bad = t_entries.copy()
    bad[3] = -1
    with pytest.raises(ValueError, match="out of range"):
        _active.active_input_grad_rows(delta, Wt, rows[:nt], t_indptr, bad, es, gx, partial,
                                       n_threads)
    if n_threads > 1:
        with pytest.raises(ValueError, match="partial"):
            _active.active_input_grad_rows(delta, Wt, rows[:nt], t_indptr, t_entries, es, gx,
                                           np.ascontiguousarray(partial[:, :-1]), n_threads)


def _touched(indptr, idx, m, counts=None, n_threads=1):
    nnz = idx.size
    out = dict(rows=np.empty(min(nnz, m), np.int32), slot=np.empty(nnz, np.int32),
               t_indptr=np.empty(min(nnz, m) + 1, np.int64), t_entries=np.empty(nnz, np.int64),
               t_sample=np.empty(nnz, np.int32), pos=np.empty(nnz, np.int64),
               mark=np.full(m, -1, np.int32))
    nt = _active.touched_rows(indptr, idx, out["mark"], out["rows"], out["slot"],
                              out["t_indptr"], out["t_entries"], out["t_sample"], out["pos"],
                              counts, n_threads)
    out["rows"], out["t_indptr"] = out["rows"][:nt], out["t_indptr"][:nt + 1]
    return out


@pytest.mark.parametrize("n_blocks", [None, 1, 2, 5])
@pytest.mark.parametrize("n_threads", THREADS)
def test_touched_rows_is_a_counting_sort_by_neuron(problem, n_threads, n_blocks):
    rng, X, Wt, b, indptr, idx = problem
    idx = rng.permutation(idx)                      # a sample's neurons in any order
    m, nnz = Wt.shape[0], idx.size
    assert (np.diff(indptr) == 0).any()             # empty samples too
    counts = None if n_blocks is None else np.zeros((n_blocks, m), np.int32)
    got = _touched(indptr, idx, m, counts, n_threads)
    rows, t_indptr, t_entries = got["rows"], got["t_indptr"], got["t_entries"]
    np.testing.assert_array_equal(rows, np.unique(idx))               # increasing ids
    np.testing.assert_array_equal(t_entries, np.argsort(idx, kind="stable"))
    np.testing.assert_array_equal(t_entries[got["pos"]], np.arange(nnz))  # the inverse
    np.testing.assert_array_equal(rows[got["slot"]], idx)
    sample = np.repeat(np.arange(X.shape[0]), np.diff(indptr))
    np.testing.assert_array_equal(got["t_sample"], sample[t_entries])
    for s in range(rows.size):
        entries = t_entries[t_indptr[s]:t_indptr[s + 1]]
        np.testing.assert_array_equal(entries, np.flatnonzero(idx == rows[s]))  # in order
    assert (got["mark"] == -1).all()                # the scratch is left as it came
    if counts is not None:
        assert not counts.any()


def test_touched_rows_rejects_bad_input_and_restores_its_scratch(problem):
    rng, X, Wt, b, indptr, idx = problem
    m, nnz = Wt.shape[0], idx.size
    rows, slot = np.empty(min(nnz, m), np.int32), np.empty(nnz, np.int32)
    t_indptr, t_entries = np.empty(min(nnz, m) + 1, np.int64), np.empty(nnz, np.int64)
    ts, pos = np.empty(nnz, np.int32), np.empty(nnz, np.int64)
    mark = np.full(m, -1, np.int32)
    for dirty in (5, -5):
        counts = np.zeros((2, m), np.int32)
        counts[1, 3] = dirty
        with pytest.raises(ValueError, match="counts must be all 0"):
            _active.touched_rows(indptr, idx, mark, rows, slot, t_indptr, t_entries, ts, pos,
                                 counts, 2)
        assert not counts.any()
    counts = np.zeros((2, m), np.int32)
    bad_idx = idx.copy()
    bad_idx[-1] = m
    with pytest.raises(ValueError, match=f"neuron id {m} outside"):
        _active.touched_rows(indptr, bad_idx, mark, rows, slot, t_indptr, t_entries, ts, pos,
                             counts, 2)
    assert not counts.any()
    bad_ptr = indptr.copy()
    bad_ptr[1], bad_ptr[2] = bad_ptr[2], bad_ptr[1] - 1
    with pytest.raises(ValueError, match="not decrease"):
        _active.touched_rows(bad_ptr, idx, mark, rows, slot, t_indptr, t_entries, ts)
    with pytest.raises(ValueError, match="start at 0"):               # no sample, some entries
        _active.touched_rows(np.array([nnz], np.int64), idx, mark, rows, slot, t_indptr,
                             t_entries, ts)
    with pytest.raises(ValueError, match="shape"):
        _active.touched_rows(indptr, idx, mark, rows, slot, t_indptr, t_entries, ts, None,
                             np.zeros((2, m + 1), np.int32))
    with pytest.raises(ValueError, match="entry_pos"):
        _active.touched_rows(indptr, idx, mark, rows, slot, t_indptr, t_entries, ts, pos[:-1])
