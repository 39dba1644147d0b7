"""CorrelationTree and the _corrtree kernels against plain NumPy references."""

import numpy as np
import pytest

from fastfire._core import _corrtree
from fastfire.nn import corrtree as corrtree_module
from fastfire.nn.corrtree import CorrelationTree


@pytest.fixture(autouse=True)
def parallel_even_when_small(monkeypatch):
    """The data here are small; keep n_jobs=2 really parallel (no serial fallback)."""
    monkeypatch.setattr(corrtree_module, "SERIAL_BELOW", 0)


# ------------------------------------------------------------------ NumPy references
def firing_rows_ref(C, rows, b):
    return [np.flatnonzero(C[i] > b) for i in rows]


def firing_cols_ref(C, cols, b):
    return [np.flatnonzero(C[:, r] > b) for r in cols]


def split_csr(indptr, indices):
    return [indices[indptr[t]:indptr[t + 1]] for t in range(len(indptr) - 1)]


def max_tree_ref(leaves, fanout):
    """Levels 1..L of a max-tree over a 1-D array (each level a list of maxima)."""
    levels, cur = [], np.asarray(leaves)
    while True:
        pad = (-cur.size) % fanout
        cur = np.concatenate([cur, np.full(pad, -np.inf, cur.dtype)]).reshape(-1, fanout).max(axis=1)
        levels.append(cur)
        if cur.size == 1:
            return levels


def with_ties(rng, n, m, d, b):
    """X, W with entries of X W^T exactly equal to b: W rows are scaled copies so that
    <w_r, x_0> == b in float32 arithmetic (x_0 = e_0, w_r[0] = b)."""
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[0] = 0.0
    X[0, 0] = 1.0
    W = rng.standard_normal((m, d)).astype(np.float32)
    W[::3, 0] = np.float32(b)            # C[0, r] == b exactly for r = 0, 3, 6, ...
    X[1] = X[0]                          # a second data point with the same ties
    return X, W


FANOUTS = [2, 3, 16, 64]


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("n_leaves", [1, 2, 15, 16, 17, 255, 256, 1000])
@pytest.mark.parametrize("fanout", FANOUTS)
def test_level_layout(n_leaves, fanout):
    size, off = _corrtree.level_layout(n_leaves, fanout)
    assert size[0] == n_leaves and size[len(size) - 1] == 1 and len(size) >= 2
    for lvl in range(1, len(size)):
        assert size[lvl] == -(-size[lvl - 1] // fanout)
    for lvl in range(2, len(size)):
        assert off[lvl] == off[lvl - 1] + size[lvl - 1]


# ------------------------------------------------------------------ queries
@pytest.mark.parametrize("fanout", FANOUTS)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_queries_equal_numpy_exactly_including_ties(fanout, n_jobs):
    rng = np.random.default_rng(fanout)
    n, m, d, b = 37, 1001, 9, 0.75
    X, W = with_ties(rng, n, m, d, b)
    tree = CorrelationTree(X, W, n_jobs=n_jobs, fanout=fanout)
    assert tree.n_threads == n_jobs
    C = tree.C
    assert np.count_nonzero(C == np.float32(b)) >= 2 * (m // 3)   # ties really present
    C_ref = X @ W.T
    np.testing.assert_allclose(C, C_ref, rtol=1e-5, atol=1e-5)
    for thr in [b, -0.3, 2.5, 100.0, -100.0]:
        rows = np.arange(n)
        got = split_csr(*tree.query(rows, thr))
        for g, ref in zip(got, firing_rows_ref(C, rows, np.float32(thr))):
            np.testing.assert_array_equal(g, ref)
        cols = np.arange(m)
        got = split_csr(*tree.query_neuron(cols, thr))
        for g, ref in zip(got, firing_cols_ref(C, cols, np.float32(thr))):
            np.testing.assert_array_equal(g, ref)
    # strict: the tied entries do not fire
    assert not np.isin(np.arange(0, m, 3), tree.query(0, b)).any()


def test_batched_equals_single_queries_and_values():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 6))
    W = rng.standard_normal((300, 6))
    tree = CorrelationTree(X, W, n_jobs=2)
    rows = np.array([3, 3, 0, 19, 7])
    indptr, indices, values = tree.query(rows, 0.5, return_values=True)
    for t, i in enumerate(rows):
        single, single_values = tree.query(int(i), 0.5, return_values=True)
        np.testing.assert_array_equal(indices[indptr[t]:indptr[t + 1]], single)
        np.testing.assert_array_equal(values[indptr[t]:indptr[t + 1]], tree.C[i, single])
        np.testing.assert_array_equal(single_values, tree.C[i, single])
        assert (single_values > np.float32(0.5)).all()
    cols = np.array([299, 0, 5, 5])
    indptr, indices = tree.query_neuron(cols, 0.5)
    for t, r in enumerate(cols):
        np.testing.assert_array_equal(indices[indptr[t]:indptr[t + 1]], tree.query_neuron(np.int64(r), 0.5))
    # empty batches
    indptr, indices = tree.query(np.array([], dtype=int), 0.0)
    assert indptr.tolist() == [0] and indices.size == 0
    indptr, indices = tree.query_neuron([], 0.0)
    assert indptr.tolist() == [0] and indices.size == 0


@pytest.mark.parametrize("fanout", [2, 16])
def test_node_arrays_are_max_trees(fanout):
    rng = np.random.default_rng(2)
    X, W = rng.standard_normal((19, 4)), rng.standard_normal((203, 4))
    tree = CorrelationTree(X, W, n_jobs=1, fanout=fanout)
    C = tree.C
    size, off = tree._dsize, tree._doff
    for i in range(C.shape[0]):
        for lvl, ref in enumerate(max_tree_ref(C[i], fanout), start=1):
            np.testing.assert_array_equal(tree._dnodes[i, off[lvl]:off[lvl] + size[lvl]], ref)
    size, off = tree._wsize, tree._woff
    for r in range(C.shape[1]):
        for lvl, ref in enumerate(max_tree_ref(C[:, r], fanout), start=1):
            np.testing.assert_array_equal(tree._wnodes[off[lvl]:off[lvl] + size[lvl], r], ref)


# ------------------------------------------------------------------ updates keep the invariants
@pytest.mark.parametrize("fanout", [2, 16])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_invariants_after_many_random_updates(fanout, n_jobs, monkeypatch):
    rng = np.random.default_rng(3 + fanout)
    n, m, d = 23, 517, 7
    X, W = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    tree = CorrelationTree(X, W, n_jobs=n_jobs, fanout=fanout)
    W_ref = W.astype(np.float32).copy()
    for step in range(60):
        # alternate the repair strategies: listed nodes vs whole-tree rebuilds
        monkeypatch.setattr(corrtree_module, "REBUILD_FRACTION", [2.0, -1.0, 0.6][step % 3])
        monkeypatch.setattr(corrtree_module, "WTREE_REBUILD_FRACTION", [2.0, -1.0][step % 2])
        k = int(rng.integers(1, [3, 40, m][step % 3] + 1))
        ids = rng.choice(m, size=k, replace=False)
        if step % 2:
            new_w = rng.standard_normal((k, d))
            tree.update(ids, new_w)
            W_ref[ids] = new_w
        else:
            coef = 0.1 * rng.standard_normal((n, k))
            tree.update_coefficients(ids, coef)
            W_ref[ids] += (coef.T @ X).astype(np.float32)
        if step % 10 == 9:
            ok, err = tree.check()
            assert ok, err
            np.testing.assert_allclose(tree.weights(), W_ref, rtol=1e-4, atol=1e-4)
            for b in [-0.5, 0.8]:   # queries after updates, both families, against the maintained C
                C = tree.C
                for g, ref in zip(split_csr(*tree.query(np.arange(n), b)), firing_rows_ref(C, range(n), np.float32(b))):
                    np.testing.assert_array_equal(g, ref)
                for g, ref in zip(split_csr(*tree.query_neuron(np.arange(m), b)), firing_cols_ref(C, range(m), np.float32(b))):
                    np.testing.assert_array_equal(g, ref)
    ok, err = tree.check()
    assert ok and err < 1e-3
    W_now = tree.weights()
    folded = tree.weights(fold=True)               # A X moved into W0, A reset: same state
    np.testing.assert_allclose(folded, W_now, rtol=1e-5, atol=1e-5)
    assert not tree._A.any() and np.shares_memory(folded, tree._W0)
    assert tree.check()[0]
    tree.update_coefficients([0], np.ones((n, 1)))
    np.testing.assert_allclose(tree.weights()[0], W_now[0] + X.sum(axis=0), rtol=1e-4, atol=1e-4)


def test_check_detects_corruption():
    rng = np.random.default_rng(4)
    tree = CorrelationTree(rng.standard_normal((8, 3)), rng.standard_normal((50, 3)), n_jobs=1)
    assert tree.check()[0]
    tree._C[2, 7] += 1.0                 # C no longer equals X W^T, and its trees are stale
    ok, err = tree.check()
    assert not ok and err == pytest.approx(1.0, rel=1e-5)
    tree._C[2, 7] -= 1.0
    assert tree.check()[0]
    tree._dnodes[0, 0] = 123.0           # a corrupted node
    assert not tree.check()[0]


# ------------------------------------------------------------------ the training kernels
def network_ref(C, a, b, gated):
    H = np.where(C > b, C if gated else C - b, 0.0)
    return H @ a / np.sqrt(C.shape[1])


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("range_update", [True, False])
def test_forward_and_gradient_step_match_dense(gated, n_jobs, range_update, monkeypatch):
    # both update kernels: contiguous neuron ranges (+ fused level-1 rebuild) and touched lists
    monkeypatch.setattr(corrtree_module, "RANGE_UPDATE_FRACTION", -1.0 if range_update else 2.0)
    rng = np.random.default_rng(5)
    n, m, d, q = 45, 700, 11, 3          # n not a multiple of the 32-row update block
    X = rng.standard_normal((n, d)).astype(np.float32)
    W = rng.standard_normal((m, d)).astype(np.float32)
    a = rng.choice([-1.0, 1.0], size=(m, q)).astype(np.float32)
    Y = rng.standard_normal((n, q)).astype(np.float32)
    b = 0.9
    tree = CorrelationTree(X, W, n_jobs=n_jobs)
    W_ref = W.astype(np.float64)
    for it, rows in enumerate([np.arange(n), np.array([1, 4, 40, 44]), np.arange(n)]):
        rows = rows.astype(np.int32)
        out, indptr, indices = tree.forward(rows, b, a, "gated" if gated else "shifted_relu")
        Z = X[rows].astype(np.float64) @ W_ref.T
        np.testing.assert_allclose(out, network_ref(Z, a, b, gated)[:, :], rtol=1e-4, atol=1e-4)
        E = out - Y[rows]
        step = -0.5 / (rows.size * np.sqrt(m))
        tree.gradient_step(rows, indptr, indices, E, a, step)
        mask = np.zeros((rows.size, m))
        for t in range(rows.size):
            mask[t, indices[indptr[t]:indptr[t + 1]]] = 1.0
        D = (E @ a.T) * mask * step               # coef[t, r]
        W_ref += D.T @ X[rows]
        ok, err = tree.check()
        assert ok, err
        np.testing.assert_allclose(tree.weights(), W_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tree.C, X @ W_ref.T, rtol=1e-4, atol=1e-4)


def test_transpose_firing_is_ordered_and_thread_independent():
    rng = np.random.default_rng(6)
    m = 90
    sets = [np.sort(rng.choice(m, size=rng.integers(0, 30), replace=False)) for _ in range(17)]
    indptr = np.concatenate([[0], np.cumsum([s.size for s in sets])]).astype(np.int64)
    indices = np.concatenate(sets).astype(np.int32)
    results = [_corrtree.transpose_firing(indptr, indices, m, t) for t in (1, 2, 5)]
    for t_indptr, t_rows in results:
        for r in range(m):
            ref = [t for t, s in enumerate(sets) if r in s]
            assert t_rows[t_indptr[r]:t_indptr[r + 1]].tolist() == ref
    np.testing.assert_array_equal(results[0][1], results[2][1])


# ------------------------------------------------------------------ bad input
def test_bad_inputs_raise_value_errors_naming_the_argument():
    rng = np.random.default_rng(7)
    X, W = rng.standard_normal((5, 3)), rng.standard_normal((10, 3))
    with pytest.raises(ValueError, match="W must have 3 columns"):
        CorrelationTree(X, W[:, :2])
    with pytest.raises(ValueError, match="X must be a 2-D"):
        CorrelationTree(X[0], W)
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        CorrelationTree(bad, W)
    with pytest.raises(ValueError, match="W contains NaN"):
        CorrelationTree(X, np.full((2, 3), np.inf))
    with pytest.raises(ValueError, match="W contains NaN"):
        CorrelationTree(X, np.full((2, 3), 1e300))   # overflows float32
    with pytest.raises(ValueError, match="X must be non-empty"):
        CorrelationTree(np.zeros((0, 3)), W)
    with pytest.raises(ValueError, match="X must be numeric"):
        CorrelationTree(np.array([["a", "b", "c"]]), W)
    with pytest.raises(ValueError, match="fanout"):
        CorrelationTree(X, W, fanout=1)
    with pytest.raises(ValueError, match="fanout"):
        CorrelationTree(X, W, fanout=65)
    tree = CorrelationTree(X, W, n_jobs=1)
    for bad_i in (5, -1, [0, 5], 1.5, [[0]], True):
        with pytest.raises(ValueError, match="i must"):
            tree.query(bad_i, 0.0)
    for bad_r in (10, -1, [2, 10], np.array([1.0])):
        with pytest.raises(ValueError, match="r must"):
            tree.query_neuron(bad_r, 0.0)
    for bad_b in (np.nan, np.inf, 1e300, "0.5", None):
        with pytest.raises(ValueError, match="b must"):
            tree.query(0, bad_b)
    with pytest.raises(ValueError, match="neuron_ids must not contain duplicates"):
        tree.update([1, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="neuron_ids must lie"):
        tree.update([10], np.zeros((1, 3)))
    with pytest.raises(ValueError, match="new_weights must have 2 rows"):
        tree.update([1, 2], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="new_weights must have 3 columns"):
        tree.update([1, 2], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="new_weights contains NaN"):
        tree.update([1], np.full((1, 3), np.nan))
    with pytest.raises(ValueError, match=r"coef must have shape \(5, 2\)"):
        tree.update_coefficients([1, 2], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coef must have 2 columns"):
        tree.update_coefficients([1, 2], np.zeros((5, 3)))
    with pytest.raises(ValueError, match="n_jobs"):
        CorrelationTree(X, W, n_jobs=0)
    a = np.ones((10, 1), dtype=np.float32)
    rows = np.arange(2)
    good = (np.array([0, 1, 2]), np.array([3, 4]))
    with pytest.raises(ValueError, match="indices must lie"):
        tree.gradient_step(rows, good[0], np.array([3, 10]), np.zeros((2, 1)), a, -0.1)
    with pytest.raises(ValueError, match="indptr"):
        tree.gradient_step(rows, np.array([0, 2, 1]), good[1], np.zeros((2, 1)), a, -0.1)
    with pytest.raises(ValueError, match="indptr"):
        tree.gradient_step(rows, np.array([0, 1, 3]), good[1], np.zeros((2, 1)), a, -0.1)
    with pytest.raises(ValueError, match="residual must have shape"):
        tree.gradient_step(rows, *good, np.zeros((3, 1)), a, -0.1)
    with pytest.raises(ValueError, match="a must have shape"):
        tree.gradient_step(rows, *good, np.zeros((2, 1)), a[:5], -0.1)
    with pytest.raises(ValueError, match="rows must lie"):
        tree.gradient_step([0, 5], *good, np.zeros((2, 1)), a, -0.1)
    with pytest.raises(ValueError, match="activation"):
        tree.forward(rows, 0.0, a, "relu")
    assert tree.check()[0]               # nothing above changed the tree


def test_input_arrays_are_not_modified_and_readonly_inputs_work():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    W = rng.standard_normal((30, 4)).astype(np.float32)
    X.flags.writeable = False
    W.flags.writeable = False
    W_copy = W.copy()
    tree = CorrelationTree(X, W, n_jobs=1)
    tree.update([0, 1], np.ones((2, 4)))
    np.testing.assert_array_equal(W, W_copy)
    assert tree.check()[0]
    assert not tree.C.flags.writeable
