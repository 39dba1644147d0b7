"""LSH selector and layer: selection rules, sparse training equal to dense where it must be,
lazy row updates, table upkeep schedules, parameters and pickling."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from fastfire.nn.active import ActiveSet
from fastfire.nn.lsh import LSH, LSHLayer, SparseInput
from fastfire.nn.network import Network
from fastfire.nn.optimizers import SGD, Adam, BatchRowGrad, RowGrad
from fastfire.nn.selectors import SELECTORS, resolve_selection


def _net(n_in=12, n_hidden=10, n_out=30, selectors=None, seed=0, out_activation="softmax"):
    rng = np.random.default_rng(seed)
    coefs = [rng.uniform(-0.5, 0.5, (n_in, n_hidden)).astype(np.float32),
             rng.uniform(-0.5, 0.5, (n_hidden, n_out)).astype(np.float32)]
    intercepts = [rng.uniform(-0.1, 0.1, n_hidden).astype(np.float32),
                  rng.uniform(-0.1, 0.1, n_out).astype(np.float32)]
    selectors = resolve_selection(selectors, 2)
    return Network(coefs, intercepts, "relu", out_activation, selectors), coefs, intercepts


def test_registered_under_lsh():
    assert SELECTORS["lsh"] is LSH and SELECTORS["sparse_input"] is SparseInput


def test_layer_stores_weights_neuron_major_and_shares_them_with_coefs():
    net, coefs, _ = _net(selectors=[SparseInput(), LSH(random_state=0)])
    layer = net.layers[-1]
    assert isinstance(layer, LSHLayer)
    assert layer.Wt.flags.c_contiguous and layer.Wt.shape == (30, 10)
    assert coefs[1] is layer.coef and np.shares_memory(coefs[1], layer.Wt)
    assert coefs[1].shape == (10, 30)


def test_training_active_set_labels_first_budget_and_min_active():
    net, _, _ = _net(n_out=200, selectors=["dense", LSH(k=3, l=4, budget=7, min_active=20,
                                                           random_state=1)])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 12)).astype(np.float32)
    Y = sp.random(16, 200, density=0.02, format="csr", random_state=2, dtype=np.float32)
    Y.data[:] = 1
    layer = net.layers[-1]
    layer.set_targets(Y)
    out = net.forward(ActiveSet.from_dense(X), 1, training=True)[-1]
    assert not out.is_dense
    for i in range(16):
        row = out.indices[out.indptr[i]:out.indptr[i + 1]]
        labels = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
        assert layer.n_forced[i] == labels.size
        assert list(row[:labels.size]) == list(labels)
        assert len(set(row)) == row.size
        assert row.size == max(labels.size + min(7, row.size - labels.size), 20)
        assert row.size - labels.size <= max(7, 20)
    # prediction is exact: every neuron
    assert net.forward(ActiveSet.from_dense(X), 1)[-1].is_dense


def test_targets_as_an_active_set_of_label_ids_equal_csr_targets():
    net, _, _ = _net(n_out=200, selectors=["dense", LSH(k=3, l=4, random_state=1)])
    Y = sp.random(16, 200, density=0.02, format="csr", random_state=2, dtype=np.float32)
    layer = net.layers[-1]
    layer.set_targets(Y)
    ref = layer._targets
    layer.set_targets(ActiveSet.from_csr(Y))
    for got, want in zip(layer._targets, ref):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="labels"):
        layer.set_targets(ActiveSet.from_csr(sp.csr_matrix((16, 150), dtype=np.float32)))


def test_no_label_forcing_when_disabled():
    net, _, _ = _net(n_out=100, selectors=["dense", LSH(k=4, l=2, budget=0, label_forcing=False,
                                                          min_active=0, random_state=1)])
    layer = net.layers[-1]
    layer.set_targets(np.arange(8, dtype=np.int32))
    out = net.forward(ActiveSet.from_dense(np.ones((8, 12), np.float32)), 1, training=True)[-1]
    assert out.indices.size == 0 and (layer.n_forced == 0).all()


def _fit(selectors, solver="adam", steps=6, seed=0, n_threads=1, hidden_lsh=False):
    net, coefs, intercepts = _net(selectors=selectors)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 30, 40).astype(np.int32)
    opt = Adam(net.params, 0.01) if solver == "adam" else SGD(net.params, 0.05, momentum=0.9)
    losses = [net.train_step(ActiveSet.from_dense(X[s:s + 10]), y[s:s + 10], 1e-3, opt, n_threads)
              for _ in range(steps // 4 + 1) for s in range(0, 40, 10)]
    return np.array(losses), coefs, intercepts


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_every_neuron_active_equals_dense_training(solver):
    # min_active = n_out: the softmax over the active set is the full softmax and every row is
    # touched each step, so lazy Adam/SGD equal the dense optimizers: same trajectory.
    ref = _fit(["dense", "dense"], solver)
    got = _fit(["dense", LSH(min_active=30, deterministic=True, random_state=0)], solver)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for a, b in zip(got[1] + got[2], ref[1] + ref[2]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_hidden_lsh_layer_with_every_neuron_equals_dense():
    ref = _fit(["dense", "dense"])
    got = _fit([LSH(min_active=10, deterministic=True, random_state=0), "dense"])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for a, b in zip(got[1] + got[2], ref[1] + ref[2]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sparse_training_touches_only_active_rows():
    net, coefs, intercepts = _net(n_out=300, selectors=["dense", LSH(k=6, l=3, budget=10,
                                                                     min_active=0, random_state=0)])
    opt = Adam(net.params, 0.01)
    before_w, before_b = coefs[1].copy(), intercepts[1].copy()
    X = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    y = np.array([1, 2, 3, 4], np.int32)
    net.train_step(ActiveSet.from_dense(X), y, 0.0, opt, 1)
    layer = net.layers[-1]
    touched = np.unique(layer._active.indices)
    assert isinstance(layer.coef_grad, RowGrad)
    assert set(layer.coef_grad.rows.tolist()) == set(touched.tolist())
    untouched = np.setdiff1d(np.arange(300), touched)
    assert untouched.size > 200
    np.testing.assert_array_equal(coefs[1][:, untouched], before_w[:, untouched])
    np.testing.assert_array_equal(intercepts[1][untouched], before_b[untouched])
    assert (coefs[1][:, touched] != before_w[:, touched]).any(axis=0).all()
    assert (opt.ms[1][:, untouched] == 0).all()          # optimizer state untouched too
    t = opt.row_ts[1]
    assert (t[touched] == 1).all() and (t[untouched] == 0).all()


class _Materialising:
    """An optimizer that reads every gradient's values before stepping (no fused row pass)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, params, grads, l2s, n_threads, **kwargs):
        for g in grads:
            if isinstance(g, RowGrad):
                g.values
        return self.optimizer.step(params, grads, l2s, n_threads, **kwargs)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fused_row_update_equals_materialised_gradient(solver, n_threads):
    # the output layer's BatchRowGrad (and the input gradient below it) is computed inside the
    # optimizer's pass; reading its values first takes the gradient-then-update path (the input
    # gradient by _active.active_input_grad_rows before the update): the same bits either way
    runs = []
    for materialise in (False, True):
        net, coefs, intercepts = _net(n_out=400, selectors=[
            "dense", LSH(k=4, l=4, budget=20, min_active=60, random_state=0)])
        rng = np.random.default_rng(3)
        X = rng.standard_normal((64, 12)).astype(np.float32)
        y = rng.integers(0, 400, 64).astype(np.int32)
        opt = Adam(net.params, 0.01) if solver == "adam" else SGD(net.params, 0.05, momentum=0.9)
        if materialise:
            opt = _Materialising(opt)
        losses = [net.train_step(ActiveSet.from_dense(X[s:s + 16]), y[s:s + 16], 1e-3, opt,
                                 n_threads) for _ in range(3) for s in range(0, 64, 16)]
        assert isinstance(net.layers[-1].coef_grad, BatchRowGrad)
        runs.append((losses, coefs, intercepts))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1] + runs[0][2], runs[1][1] + runs[1][2]):
        np.testing.assert_array_equal(a, b)


def test_layer_gradient_equals_numpy_on_active_set():
    net, coefs, intercepts = _net(n_out=50, selectors=["dense", LSH(k=4, l=4, budget=8,
                                                                    min_active=12,
                                                                    deterministic=True,
                                                                    random_state=3)])
    layer = net.layers[-1]
    rng = np.random.default_rng(1)
    H = np.maximum(rng.standard_normal((6, 10)), 0).astype(np.float32)
    y = rng.integers(0, 50, 6).astype(np.int32)
    layer.set_targets(y)
    out = layer.forward(ActiveSet.from_dense(H), 1, training=True)
    Z = H.astype(np.float64) @ coefs[1] + intercepts[1]
    D = np.zeros((6, 50))
    for i in range(6):
        a, b = out.indptr[i], out.indptr[i + 1]
        ids = out.indices[a:b]
        np.testing.assert_allclose(out.values[a:b], Z[i, ids], rtol=1e-5, atol=1e-6)
        p = np.exp(Z[i, ids] - Z[i, ids].max())
        p /= p.sum()
        p[0] -= 1.0                            # the label is first
        D[i, ids] = p
    loss_sum, delta = layer.sparse_loss.loss_and_delta(out, layer.n_forced, 1)
    gx = layer.backward(delta, 1, need_input_grad=True)
    g = layer.coef_grad
    np.testing.assert_allclose(g.values, (D.T @ H / 6)[g.rows], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.intercept_grad.values[:, 0], D.sum(0)[g.rows] / 6, atol=1e-6)
    np.testing.assert_allclose(gx, D @ coefs[1].T, rtol=1e-4, atol=1e-6)


def test_logistic_loss_option_trains():
    sel = LSH(loss="logistic", budget=5, random_state=0)
    losses, _, _ = _fit(["dense", sel], steps=40)
    assert losses[-4:].mean() < losses[:4].mean()


def test_deterministic_mode_reproducible_with_two_threads():
    sel = LSH(budget=6, min_active=8, deterministic=True, random_state=0)
    a = _fit(["dense", sel], n_threads=2)
    b = _fit(["dense", sel], n_threads=2)
    c = _fit(["dense", sel], n_threads=1)
    for x, y, z in zip(a[1] + a[2], b[1] + b[2], c[1] + c[2]):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)   # same for every thread count, too


def _step(net, opt, n=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 12)).astype(np.float32)
    y = rng.integers(0, net.n_outputs, n).astype(np.int32)
    net.train_step(ActiveSet.from_dense(X), y, 0.0, opt, 1)


def test_rehash_fixed_and_decay_schedules():
    for rehash, expected in (("fixed", [1, 2, 2, 3, 3, 4, 4, 5]), ("decay", [1, 2, 2, 2, 2, 3, 3, 3])):
        net, _, _ = _net(selectors=["dense", LSH(rehash=rehash, rehash_every=16, rehash_growth=2.0,
                                                 random_state=0)])
        opt = Adam(net.params, 0.01)
        layer = net.layers[-1]
        seen = []
        for s in range(8):
            _step(net, opt, seed=s)
            seen.append(layer.n_rebuilds)
        # 8 samples per step: fixed rebuilds every 2 steps; decay after 2 steps, then 4, then 8
        assert seen == expected, (rehash, seen)
        if rehash == "decay":
            assert layer.upkeep["period"] == 64


def test_rehash_auto_is_fixed_on_wide_layers_and_decay_otherwise():
    # k=2: 4 buckets; capacity 10 -> "wide" beyond 4 * 10 * 4 = 160 neurons
    for n_out, schedule, period in ((400, "fixed", 16), (100, "decay", 16)):
        net, _, _ = _net(n_out=n_out, selectors=["dense", LSH(k=2, l=3, capacity=10,
                                                            rehash_every=16, random_state=0)])
        layer = net.layers[-1]
        assert layer.upkeep["schedule"] == schedule and layer.upkeep["period"] == period
    from fastfire.nn.lsh import AUTO_WIDE_PERIOD

    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=3, capacity=10, random_state=0)])
    assert net.layers[-1].upkeep["period"] == AUTO_WIDE_PERIOD == 2048
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=3, capacity=10, rehash_every=16,
                                                      rehash_growth=2.0, random_state=0)])
    opt = Adam(net.params, 0.01)
    layer = net.layers[-1]
    seen = []
    for s in range(6):
        _step(net, opt, seed=s)
        seen.append(layer.n_rebuilds)
    assert seen == [1, 2, 2, 3, 3, 4]                      # fixed: the period does not grow
    assert layer.upkeep["period"] == 16


def test_rehash_change_triggered():
    for threshold, rebuilds in ((0.0, True), (1.0, False)):
        net, _, _ = _net(selectors=["dense", LSH(rehash="change", rehash_every=8,
                                                 change_threshold=threshold, change_sample=30,
                                                 random_state=0)])
        opt = Adam(net.params, 0.05)
        layer = net.layers[-1]
        for s in range(6):
            _step(net, opt, seed=s)
        assert (layer.n_rebuilds > 1) == rebuilds
    # the probe measures real changes: right after a rebuild nothing changed
    layer.build_tables()
    assert layer.changed_fraction(30) == 0.0


def test_new_hash_functions_schedule():
    net, _, _ = _net(selectors=["dense", LSH(rehash="never", new_hashes_every=16, random_state=0)])
    opt = Adam(net.params, 0.01)
    layer = net.layers[-1]
    fn0 = layer.family["fn_idx"].copy()
    for s in range(2):
        _step(net, opt, seed=s)
    assert layer.hash_draw == 1 and layer.n_rebuilds == 2
    assert not np.array_equal(fn0, layer.family["fn_idx"])


def test_tables_rebuilt_from_weights_hold_every_neuron():
    net, _, _ = _net(n_out=64, selectors=["dense", LSH(k=2, l=3, capacity=1000, random_state=0)])
    layer = net.layers[-1]
    offsets, ids = layer.tables
    for t in range(3):
        assert sorted(ids[t, :offsets[t, -1]]) == list(range(64))
        for b in range(layer.n_buckets):
            members = ids[t, offsets[t, b]:offsets[t, b + 1]]
            assert (layer.table_buckets[t, members] == b).all()
    assert layer.table_neurons is None                    # small layers: every neuron hashed


def test_rebuild_fills_each_table_from_a_random_group_of_neurons():
    net, _, _ = _net(n_out=402, selectors=["dense", LSH(k=2, l=6, capacity=1000,
                                                      rebuild_sample=0.25, random_state=0)])
    layer = net.layers[-1]
    assert layer.table_fraction() == 0.25
    seen = []
    for draw in range(3):
        layer.build_tables(draw=draw)
        groups = layer.table_neurons                          # (L, m): 4 groups of 100
        assert groups.shape == (6, 100)
        for t in range(6):                                    # table t holds group t % 4
            np.testing.assert_array_equal(groups[t], groups[t % 4])
            assert (np.diff(groups[t]) > 0).all()
        assert np.unique(groups[:4]).size == 400              # disjoint; 2 of 402 sit out
        offsets, ids = layer.tables
        for t in range(6):
            assert sorted(ids[t, :offsets[t, -1]]) == list(groups[t])  # the group, once each
            fresh = layer.hash_rows(layer.Wt[groups[t]], 1)[:, t]      # buckets now
            for b in range(layer.n_buckets):
                members = ids[t, offsets[t, b]:offsets[t, b + 1]]
                assert (fresh[np.searchsorted(groups[t], members)] == b).all()
        seen.append(groups.copy())
    assert not np.array_equal(seen[0], seen[1])              # new groups at every rebuild
    layer.build_tables(draw=1)
    np.testing.assert_array_equal(layer.table_neurons, seen[1])  # a pure function of the draw
    assert layer.changed_fraction(50) == 0.0
    layer.Wt[...] = -layer.Wt                                # every code flips
    assert layer.changed_fraction(50) == 1.0
    layer.Wt[...] = -layer.Wt
    clone = pickle.loads(pickle.dumps(layer))                 # a pickled layer rebuilds the
    (off, ids), (off2, ids2) = layer.tables, clone.tables     # same groups and tables
    np.testing.assert_array_equal(off, off2)
    for t in range(6):
        np.testing.assert_array_equal(ids[t, :off[t, -1]], ids2[t, :off[t, -1]])


def test_rebuild_sample_auto_splits_only_wide_layers():
    # "auto": f = min(1, 4 * capacity * n_buckets / n_out); k=2 gives 4 buckets
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=6, capacity=5,
                                                      rebuild_sample="auto", random_state=0)])
    layer = net.layers[-1]
    assert layer.table_fraction() == 4 * 5 * 4 / 400
    assert layer.table_neurons.shape == (6, 80)               # G = round(1 / 0.2) = 5 groups
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=6, capacity=100,
                                                      rebuild_sample="auto", random_state=0)])
    assert net.layers[-1].table_fraction() == 1.0 and net.layers[-1].table_neurons is None
    # the default hashes every neuron into every table, whatever the width
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=6, capacity=5, random_state=0)])
    assert net.layers[-1].table_neurons is None


def test_n_projections_auto_pools_only_on_wide_simhash_layers():
    # wide beyond 4 * capacity * n_buckets = 4 * 5 * 4 = 80 neurons (k=2: 4 buckets)
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(k=2, l=6, capacity=5, random_state=0)])
    layer = net.layers[-1]
    assert layer.is_wide() and layer.pool_size() == 3        # max(k, k * l // 4)
    assert layer.family["pool_P"].shape == (10, 3)
    net, _, _ = _net(n_out=60, selectors=["dense", LSH(k=2, l=6, capacity=5, random_state=0)])
    assert not net.layers[-1].is_wide() and net.layers[-1].family["pool_map"] is None
    net, _, _ = _net(n_out=400, selectors=["dense", LSH(hash="dwta", k=2, l=6, bin_size=4,
                                                      capacity=5, random_state=0)])
    assert net.layers[-1].family["pool_map"] is None          # SimHash only


@pytest.mark.parametrize("rebuild_sample", [1.0, 0.5])
def test_pool_of_projections_hashes_like_its_expanded_functions(rebuild_sample):
    net, _, _ = _net(n_out=300, selectors=["dense", LSH(k=3, l=5, n_projections=4,
                                                      rebuild_sample=rebuild_sample,
                                                      capacity=1000, random_state=0)])
    layer = net.layers[-1]
    f = layer.family
    assert f["pool_P"].shape == (10, 4) and f["pool_map"].shape == (15,)
    for t in range(5):                                       # K distinct pool bits per table
        assert len(set(f["pool_map"][3 * t:3 * t + 3])) == 3
    np.testing.assert_array_equal(f["P"], f["pool_P"][:, f["pool_map"]])
    # the rebuild (GEMM against the pool) agrees with hashing the rows one by one
    fresh = layer.hash_rows(layer.Wt, 1)                     # (n, L) through the expanded P
    offsets, ids = layer.tables
    for t in range(5):
        for b in range(layer.n_buckets):
            members = ids[t, offsets[t, b]:offsets[t, b + 1]]
            assert (fresh[members, t] == b).all()
    with pytest.raises(ValueError, match="n_projections"):
        _net(selectors=["dense", LSH(k=5, n_projections=4)])
    with pytest.raises(ValueError, match="n_projections"):
        _net(selectors=["dense", LSH(hash="dwta", n_projections=8)])


def test_pickle_rebuilds_identical_tables():
    net, _, _ = _net(n_out=80, selectors=["dense", LSH(random_state=4)])
    layer = net.layers[-1]
    clone = pickle.loads(pickle.dumps(layer))
    assert clone._tables is None                          # tables are not stored...
    for a, b in zip(layer.tables, clone.tables):          # ...and rebuilt identically
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clone.coef, layer.coef)
    assert np.shares_memory(clone.coef, clone.Wt)


def test_sparse_input_layer_gradient_rows():
    net, coefs, _ = _net(n_in=40, selectors=[SparseInput(), "dense"])
    ref_net, ref_coefs, _ = _net(n_in=40, selectors=["dense", "dense"])
    X = sp.random(10, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    y = np.arange(10, dtype=np.int32)
    opt, ref_opt = Adam(net.params, 0.01), Adam(ref_net.params, 0.01)
    net.train_step(ActiveSet.from_csr(X), y, 0.0, opt, 1)
    ref_net.train_step(ActiveSet.from_csr(X), y, 0.0, ref_opt, 1)
    g = net.layers[0].coef_grad
    assert isinstance(g, RowGrad)
    assert len(set(g.rows.tolist())) == g.rows.size          # distinct rows...
    np.testing.assert_array_equal(np.sort(g.rows), np.unique(X.indices))   # ...the batch's features
    np.testing.assert_allclose(g.values, ref_net.layers[0].coef_grad[g.rows], rtol=1e-5, atol=1e-7)
    absent = np.setdiff1d(np.arange(40), g.rows)
    assert (ref_net.layers[0].coef_grad[absent] == 0).all()
    # first step: lazy Adam on present rows == dense Adam (absent rows have zero gradient and
    # zero moments, so dense Adam leaves them unchanged as well)
    np.testing.assert_allclose(coefs[0], ref_coefs[0], atol=1e-6)


@pytest.mark.parametrize("bad", [
    dict(hash="md5"), dict(k=0), dict(k=40), dict(l=0), dict(bin_size=1), dict(density=0.0),
    dict(density=1.5), dict(capacity=0), dict(bucket_policy="lifo"), dict(policy="all"),
    dict(budget=-1), dict(threshold=0), dict(threshold=50), dict(min_active=-2),
    dict(rehash="sometimes"), dict(rehash_every=0), dict(rehash_growth=0.5),
    dict(new_hashes_every=0), dict(change_threshold=2.0), dict(loss="hinge"),
    dict(deterministic="yes"), dict(random_state=-1), dict(k=2.5), dict(label_forcing=1),
    dict(rebuild_sample=0.0), dict(rebuild_sample=1.5), dict(rebuild_sample="half"),
    dict(n_projections=0), dict(n_projections=2.0),
])
def test_bad_parameters_raise_naming_the_parameter(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"'{name}'"):
        LSH(**bad)


def test_bad_targets_and_bin_size():
    net, _, _ = _net(selectors=["dense", LSH(random_state=0)])
    with pytest.raises(ValueError, match="multiclass or multilabel"):
        net.layers[-1].set_targets(np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match="bin_size"):
        _net(n_hidden=4, selectors=["dense", LSH(hash="wta", bin_size=8)])
