"""fastfire._core._lsh against plain NumPy / Python references, and collision statistics."""

import numpy as np
import pytest
import scipy.sparse as sp

from fastfire._core import _lsh
from fastfire.nn.lsh import LSH

THREADS = (1, 2, 3)
GOLDEN = 0x9E3779B97F4A7C15


def _layer(d, m=40, seed=0, **params):
    rng = np.random.default_rng(seed)
    coef = rng.standard_normal((d, m)).astype(np.float32)
    return LSH(random_state=seed, **params).make_layer(coef, np.zeros(m, np.float32), "identity")


def _fn_matrix(f, d):
    """Function-major CSR of the family as a dense (K*L, d) matrix of values (signs/positions)."""
    n_fn = f["fn_indptr"].size - 1
    return sp.csr_matrix((f["fn_val"], f["fn_idx"], f["fn_indptr"]), shape=(n_fn, d))


def _ref_codes(f, x, sparse):
    """Per-function codes of one input vector (plain Python)."""
    n_fn = f["fn_indptr"].size - 1
    codes = np.empty(n_fn, dtype=np.int64)
    b = f["bin_size"]
    for h in range(n_fn):
        a, c = f["fn_indptr"][h], f["fn_indptr"][h + 1]
        feats, vals = f["fn_idx"][a:c], f["fn_val"][a:c]
        if f["family"] == _lsh.SIMHASH:
            codes[h] = int(np.dot(vals.astype(np.float64), x[feats]) > 0)
            continue
        best, code = None, b
        for feat, pos in zip(feats, vals.astype(int)):
            v = x[feat]
            if sparse and v == 0:
                continue
            if best is None or v > best or (v == best and pos < code):
                best, code = v, pos
        codes[h] = code
    if f["family"] == _lsh.DWTA:
        orig = codes.copy()
        for h in range(n_fn):
            if orig[h] != b:
                continue
            for a in range(1, _lsh.DENSIFY_ATTEMPTS + 1):
                j = _lsh.rand3_py(f["seed"], h, a, 7) % n_fn
                if orig[j] != b:
                    codes[h] = orig[j]
                    break
    return codes


def _ref_buckets(f, codes):
    K, L, b = f["K"], f["L"], f["bin_size"]
    out = np.empty(L, dtype=np.int64)
    for t in range(L):
        key = 0
        for k in range(K):
            c = int(codes[t * K + k])
            key = (key << 1 | c) if f["family"] == _lsh.SIMHASH else key * (b + 1) + c
        if f["range_pow"]:
            mixed = key ^ ((t * GOLDEN) & (2**64 - 1)) ^ f["seed"]
            key = _lsh.mix64_py(mixed) >> (64 - f["range_pow"])
        out[t] = key
    return out


def _hash(layer, X, n_threads, csr):
    if csr:
        from fastfire.nn.active import ActiveSet
        return layer.hash_rows(ActiveSet.from_csr(sp.csr_matrix(X)), n_threads)
    return layer.hash_rows(np.ascontiguousarray(X, dtype=np.float32), n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("params", [
    dict(hash="simhash", k=5, l=6, density=1 / 3),
    dict(hash="simhash", k=12, l=3, density=1.0, range_pow=8),
    dict(hash="wta", k=3, l=4, bin_size=4),
    dict(hash="dwta", k=3, l=5, bin_size=6),
    dict(hash="dwta", k=6, l=4, bin_size=8, range_pow=10),
])
@pytest.mark.parametrize("csr", [False, True])
def test_hash_codes_equal_numpy_reference(params, n_threads, csr):
    d = 30
    layer = _layer(d, **params)
    f = layer.family
    rng = np.random.default_rng(3)
    X = rng.standard_normal((25, d)).astype(np.float32)
    if csr or params["hash"] == "dwta":
        X = np.abs(X)
        X[rng.random(X.shape) < 0.85] = 0          # many empty bins: densification runs
    got = _hash(layer, X, n_threads, csr)
    ref = np.array([_ref_buckets(f, _ref_codes(f, x.astype(np.float64), csr)) for x in X])
    np.testing.assert_array_equal(got, ref)
    assert got.min() >= 0 and got.max() < layer.n_buckets


def test_simhash_sparse_and_dense_inputs_agree():
    layer = _layer(50, hash="simhash", k=6, l=8)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 50)).astype(np.float32)
    X[rng.random(X.shape) < 0.8] = 0
    np.testing.assert_array_equal(_hash(layer, X, 2, False), _hash(layer, X, 2, True))


def test_simhash_sparse_projections_have_requested_density():
    layer = _layer(400, hash="simhash", k=10, l=20, density=0.1)
    nnz = np.diff(layer.family["fn_indptr"])
    assert abs(nnz.mean() / 400 - 0.1) < 0.01
    assert set(np.unique(layer.family["fn_val"])) == {-1.0, 1.0}


@pytest.mark.parametrize("theta", [0.3, 1.0, 2.0, 2.8])
def test_simhash_collision_probability_is_one_minus_theta_over_pi(theta):
    # K=1: a table's bucket is one bit; over L=4000 independent dense projections the fraction of
    # tables in which x and y collide estimates 1 - theta/pi (binomial sd <= 0.008).
    d = 64
    layer = _layer(d, hash="simhash", k=1, l=4000, density=1.0, seed=11)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(d)
    u = rng.standard_normal(d)
    u -= u.dot(x) / x.dot(x) * x
    y = np.cos(theta) * x / np.linalg.norm(x) + np.sin(theta) * u / np.linalg.norm(u)
    B = _hash(layer, np.vstack([x, y]), 2, False)
    p = np.mean(B[0] == B[1])
    assert abs(p - (1 - theta / np.pi)) < 0.035, (p, 1 - theta / np.pi)


def test_wta_collision_probability_decreases_with_distance():
    d = 64
    layer = _layer(d, hash="wta", k=1, l=3000, bin_size=8, seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(d)
    ps = []
    for eps in (0.1, 0.5, 2.0):
        y = x + eps * rng.standard_normal(d)
        B = _hash(layer, np.vstack([x, y]), 1, False)
        ps.append(np.mean(B[0] == B[1]))
    assert ps[0] > ps[1] > ps[2] > 1 / 8 - 0.05


def _ref_tables(buckets, n_buckets):
    return [[set(np.nonzero(buckets[:, t] == b)[0]) for b in range(n_buckets)]
            for t in range(buckets.shape[1])]


@pytest.mark.parametrize("n_threads", THREADS)
def test_tables_hold_exactly_the_neurons_of_each_bucket(n_threads):
    rng = np.random.default_rng(0)
    n, L, nb = 500, 7, 16
    buckets = rng.integers(0, nb, (n, L)).astype(np.int32)
    offsets = np.empty((L, nb + 1), np.int32)
    ids = np.empty((L, n), np.int32)
    dropped = _lsh.build_tables(np.ascontiguousarray(buckets.T), nb, 1000, _lsh.FIFO, 1,
                                offsets, ids, n_threads=n_threads)
    assert dropped == 0
    ref = _ref_tables(buckets, nb)
    for t in range(L):
        for b in range(nb):
            got = ids[t, offsets[t, b]:offsets[t, b + 1]]
            assert list(got) == sorted(ref[t][b])    # id order inside a bucket
    assert (offsets[:, -1] == n).all()


@pytest.mark.parametrize("policy", [_lsh.FIFO, _lsh.RESERVOIR])
def test_bucket_capacity_fifo_and_reservoir(policy):
    rng = np.random.default_rng(0)
    n, L, nb, cap = 800, 4, 8, 20
    buckets = rng.integers(0, nb, (n, L)).astype(np.int32)
    results = []
    for n_threads in THREADS:
        offsets = np.empty((L, nb + 1), np.int32)
        ids = np.empty((L, n), np.int32)
        dropped = _lsh.build_tables(np.ascontiguousarray(buckets.T), nb, cap, policy, 42,
                                    offsets, ids, n_threads=n_threads)
        results.append((offsets.copy(), ids.copy()))
        ref = _ref_tables(buckets, nb)
        assert dropped == sum(max(0, len(s) - cap) for tab in ref for s in tab)
        for t in range(L):
            for b in range(nb):
                got = ids[t, offsets[t, b]:offsets[t, b + 1]]
                members = sorted(ref[t][b])
                assert len(got) == min(cap, len(members)) and len(set(got)) == len(got)
                assert set(got) <= set(members)
                if policy == _lsh.FIFO:
                    assert set(got) == set(members[-cap:])   # the last `cap` inserted
    for o, i in results[1:]:                                 # same tables for every thread count
        np.testing.assert_array_equal(o, results[0][0])
        for t in range(L):
            np.testing.assert_array_equal(i[t, :o[t, -1]], results[0][1][t, :o[t, -1]])
    if policy == _lsh.RESERVOIR:   # a uniform sample, not the newest ids
        o, i = results[0]
        kept = np.concatenate([i[t, :o[t, -1]] for t in range(L)])
        assert kept.mean() < 0.6 * n


@pytest.mark.parametrize("n_threads", THREADS)
def test_reservoir_slots_follow_the_counter_based_draws(n_threads):
    # neuron r, the j-th (0-based) of its bucket in table t, takes slot j while j < capacity,
    # then the slot reservoir_slot(seed, t, r, j + 1), uniform in [0, j], when below the capacity
    rng = np.random.default_rng(3)
    n, L, nb, cap, seed = 300, 3, 4, 5, 77
    buckets = rng.integers(0, nb, (L, n)).astype(np.int32)
    offsets = np.empty((L, nb + 1), np.int32)
    ids = np.empty((L, n), np.int32)
    _lsh.build_tables(buckets, nb, cap, _lsh.RESERVOIR, seed, offsets, ids, n_threads=n_threads)
    for t in range(L):
        slots = [[None] * cap for _ in range(nb)]
        seen = [0] * nb
        for r in range(n):
            b = buckets[t, r]
            j = seen[b]
            seen[b] += 1
            u = j if j < cap else _lsh.reservoir_slot_py(seed, t, r, j + 1)
            if u < cap:
                slots[b][u] = r
        for b in range(nb):
            assert list(ids[t, offsets[t, b]:offsets[t, b + 1]]) == slots[b]


def test_reservoir_keeps_every_item_with_the_same_probability():
    # one bucket of 400 items, capacity 20, over 2,000 seeds: each item is kept with
    # probability 20 / 400 = 0.05, so its count is Binomial(2000, 0.05) (mean 100, sd 9.7)
    n, cap, runs = 400, 20, 2000
    buckets = np.zeros((1, n), np.int32)
    counts = np.zeros(n)
    offsets = np.empty((1, 2), np.int32)
    ids = np.empty((1, n), np.int32)
    for seed in range(runs):
        _lsh.build_tables(buckets, 1, cap, _lsh.RESERVOIR, seed, offsets, ids, n_threads=1)
        counts[ids[0, :cap]] += 1
    expected = runs * cap / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 480                        # 399 degrees of freedom: P(chi2 > 480) ~ 0.3 %
    for part in np.array_split(counts, 8):   # no drift along the stream (early vs late items)
        assert abs(part.mean() - expected) < 4.5 * np.sqrt(expected / part.size)


@pytest.mark.parametrize("policy", [_lsh.FIFO, _lsh.RESERVOIR])
@pytest.mark.parametrize("n_threads", THREADS)
def test_tables_from_a_subset_of_neurons(policy, n_threads):
    rng = np.random.default_rng(1)
    n, L, nb, cap = 900, 5, 8, 30
    buckets = rng.integers(0, nb, (L, n)).astype(np.int32)          # table-major
    full_off = np.empty((L, nb + 1), np.int32)
    full_ids = np.empty((L, n), np.int32)
    _lsh.build_tables(buckets, nb, cap, policy, 9, full_off, full_ids, n_threads=n_threads)
    # the identity mapping is the plain build, bit for bit (same reservoir draws)
    off = np.empty_like(full_off)
    ids = np.empty_like(full_ids)
    _lsh.build_tables(buckets, nb, cap, policy, 9, off, ids,
                      np.tile(np.arange(n, dtype=np.int32), (L, 1)), n_threads)
    np.testing.assert_array_equal(off, full_off)
    for t in range(L):
        np.testing.assert_array_equal(ids[t, :off[t, -1]], full_ids[t, :off[t, -1]])
    # a subset per table: column r of table t is neuron sub[t, r]; every kept id is a member
    sub = np.sort(np.array([rng.choice(n, 200, replace=False) for _ in range(L)]),
                  axis=1).astype(np.int32)
    sub_buckets = np.ascontiguousarray(np.take_along_axis(buckets, sub, axis=1))
    dropped = _lsh.build_tables(sub_buckets, nb, cap, policy, 9, off, ids, sub, n_threads)
    expected_drop = 0
    for t in range(L):
        for b in range(nb):
            members = sub[t][buckets[t, sub[t]] == b]
            got = ids[t, off[t, b]:off[t, b + 1]]
            assert len(got) == min(cap, len(members)) and set(got) <= set(members)
            if policy == _lsh.FIFO:
                assert set(got) == set(members[-cap:])
            expected_drop += max(0, len(members) - cap)
    assert dropped == expected_drop


def test_build_tables_rejects_bad_ids():
    off = np.empty((2, 5), np.int32)
    ids = np.empty((2, 6), np.int32)
    good = np.zeros((2, 6), np.int32)
    for bad in (-1, 4, 2**31 - 1):
        buckets = good.copy()
        buckets[1, 3] = bad
        with pytest.raises(ValueError, match="bucket id"):
            _lsh.build_tables(buckets, 4, 3, _lsh.RESERVOIR, 0, off, ids, n_threads=2)
    two = np.zeros((2, 2), np.int32)
    with pytest.raises(ValueError, match="neuron id"):
        _lsh.build_tables(two, 4, 3, _lsh.FIFO, 0, off, ids, np.array([[0, 1], [0, 6]], np.int32))
    with pytest.raises(ValueError, match="neuron_ids"):
        _lsh.build_tables(two, 4, 3, _lsh.FIFO, 0, off, ids, np.zeros((1, 2), np.int32))
    with pytest.raises(ValueError, match="ids must"):
        _lsh.build_tables(good, 4, 3, _lsh.FIFO, 0, off, np.empty((2, 5), np.int32))


@pytest.mark.parametrize("n_threads", THREADS)
def test_simhash_table_major_is_the_transposed_row_major(n_threads):
    rng = np.random.default_rng(2)
    K, L, n = 6, 7, 50
    S = rng.standard_normal((n, K * L)).astype(np.float32)
    S[3, :5] = 0.0                                     # a zero projection gives bit 0
    for range_pow in (0, 4):
        rows = np.empty((n, L), np.int32)
        _lsh.simhash_from_projections(S, K, L, range_pow, 5, rows, n_threads)
        out = np.full((L, n + 10), -7, np.int32)
        _lsh.simhash_table_major(S, K, L, range_pow, 5, out, 10, n_threads=n_threads)
        np.testing.assert_array_equal(out[:, 10:], rows.T)
        assert (out[:, :10] == -7).all()                 # nothing written before col0
    bits = (S > 0).astype(np.int64).reshape(n, L, K)  # range_pow=0: the key is the bits
    keys = (bits * (1 << np.arange(K - 1, -1, -1))).sum(axis=2)
    out = np.empty((L, n), np.int32)
    _lsh.simhash_table_major(S, K, L, 0, 5, out, 0, n_threads=n_threads)
    np.testing.assert_array_equal(out, keys.T)
    with pytest.raises(ValueError, match="simhash_table_major"):
        _lsh.simhash_table_major(S, K, L, 0, 5, out, 1, n_threads=n_threads)
    # a subset of the tables: S holds their K columns each, in the listed order
    tabs = np.array([5, 1, 3], np.int32)
    cols = (tabs[:, None] * K + np.arange(K)).ravel()
    for range_pow in (0, 4):
        rows = np.empty((n, L), np.int32)
        _lsh.simhash_from_projections(S, K, L, range_pow, 5, rows, n_threads)
        out = np.full((L, n), -7, np.int32)
        _lsh.simhash_table_major(np.ascontiguousarray(S[:, cols]), K, L, range_pow, 5, out, 0,
                                 tabs, n_threads)
        np.testing.assert_array_equal(out[tabs], rows[:, tabs].T)
        assert (np.delete(out, tabs, axis=0) == -7).all()
    with pytest.raises(ValueError, match="table 7"):
        _lsh.simhash_table_major(np.ascontiguousarray(S[:, :K]), K, L, 0, 5, out, 0,
                                 np.array([7], np.int32))



@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("pool", [None, 12, 70])
def test_simhash_rows_table_major_projects_block_by_block(pool, n_threads):
    # integer rows and +-1/0 projections: W @ P is exact, so the keys are defined bit for bit
    rng = np.random.default_rng(5)
    K, L, d, n = 3, 6, 10, 700                     # several projection blocks and a remainder
    W = rng.integers(-3, 4, (n, d)).astype(np.float32)
    W[4] = 0.0                                     # a zero row: every key 0
    width = K * L if pool is None else pool
    P = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (d, width))
    cols = None if pool is None else np.concatenate(
        [rng.choice(pool, K, replace=False) for _ in range(L)]).astype(np.int32)
    for array in (W, P) if cols is None else (W, P, cols):
        array.setflags(write=False)                # read-only inputs are accepted
    S = (W.astype(np.float64) @ P).astype(np.float32)
    for range_pow in (0, 5):
        ref = np.full((L, n + 2), -7, np.int32)
        _lsh.simhash_table_major(S, K, L, range_pow, 3, ref, 2, None, 1, cols)
        out = np.full((L, n + 2), -7, np.int32)
        with _one_blas_thread():
            _lsh.simhash_rows_table_major(W, P, K, L, range_pow, 3, out, 2, None, n_threads, cols)
        np.testing.assert_array_equal(out, ref)
    tabs = np.array([4, 1], np.int32)
    sub_cols = None if cols is None else np.ascontiguousarray(cols.reshape(L, K)[tabs].ravel())
    sub_P = P if cols is not None else np.ascontiguousarray(
        P[:, (tabs[:, None] * K + np.arange(K)).ravel()])
    sub = np.full((L, n), -1, np.int32)
    with _one_blas_thread():
        _lsh.simhash_rows_table_major(W, sub_P, K, L, 0, 3, sub, 0, tabs, n_threads, sub_cols)
    full = np.empty((L, n), np.int32)
    _lsh.simhash_table_major(S, K, L, 0, 3, full, 0, None, 1, cols)
    np.testing.assert_array_equal(sub[tabs], full[tabs])
    assert (np.delete(sub, tabs, axis=0) == -1).all()
    with pytest.raises(ValueError, match="P has 9 rows"):
        _lsh.simhash_rows_table_major(W, P[:9], K, L, 0, 3, out, 0, None, n_threads, cols)
    with pytest.raises(ValueError, match="out must be"):
        _lsh.simhash_rows_table_major(W, P, K, L, 0, 3, out, 3, None, n_threads, cols)


def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


@pytest.mark.parametrize("pext", [True, False])
@pytest.mark.parametrize("pool", [9, 64, 70])
def test_simhash_table_major_keys_from_sign_masks(pool, pext):
    # tables whose key columns decrease take the sign-mask path (pool <= 64): one bit
    # extraction per table, with or without PEXT; it must give the keys of the expanded bits
    rng = np.random.default_rng(4)
    K, L, n = 5, 7, 33
    Sp = rng.standard_normal((n, pool)).astype(np.float32)
    Sp[0, :] = 0.0                                       # zero projections give bit 0
    Sp[1, ::3] = np.nan                                  # so do NaN ones
    cols = np.concatenate([np.sort(rng.choice(pool, K, replace=False))[::-1]
                           for _ in range(L)]).astype(np.int32)
    bits = (Sp[:, cols] > 0).astype(np.int64).reshape(n, L, K)
    keys = (bits * (1 << np.arange(K - 1, -1, -1))).sum(axis=2)
    before = _lsh.allow_pext(pext)
    try:
        for n_threads in THREADS:
            out = np.full((L, n + 3), -7, np.int32)
            _lsh.simhash_table_major(Sp, K, L, 0, 8, out, 3, None, n_threads, cols)
            np.testing.assert_array_equal(out[:, 3:], keys.T)
            assert (out[:, :3] == -7).all()
            tabs = np.array([6, 2], np.int32)            # a subset of the tables, folded keys
            ref = np.empty((L, n), np.int32)
            _lsh.simhash_table_major(np.ascontiguousarray(Sp[:, cols]), K, L, 3, 8, ref, 0,
                                     n_threads=n_threads)
            sub = np.full((L, n), -1, np.int32)
            _lsh.simhash_table_major(Sp, K, L, 3, 8, sub, 0, tabs, n_threads,
                                     np.ascontiguousarray(cols.reshape(L, K)[tabs].ravel()))
            np.testing.assert_array_equal(sub[tabs], ref[tabs])
    finally:
        _lsh.allow_pext(before)

@pytest.mark.parametrize("n_threads", THREADS)
def test_simhash_table_major_from_a_pool_of_projections(n_threads):
    rng = np.random.default_rng(3)
    K, L, n, pool = 4, 6, 40, 9
    Sp = rng.standard_normal((n, pool)).astype(np.float32)
    cols = np.concatenate([rng.choice(pool, K, replace=False) for _ in range(L)]).astype(np.int32)
    S = np.ascontiguousarray(Sp[:, cols])                 # the same bits, expanded
    for range_pow in (0, 3):
        ref = np.empty((L, n), np.int32)
        _lsh.simhash_table_major(S, K, L, range_pow, 8, ref, 0, n_threads=n_threads)
        out = np.empty((L, n), np.int32)
        _lsh.simhash_table_major(Sp, K, L, range_pow, 8, out, 0, None, n_threads, cols)
        np.testing.assert_array_equal(out, ref)
        tabs = np.array([4, 0], np.int32)                  # a subset of the tables
        sub = np.full((L, n), -1, np.int32)
        _lsh.simhash_table_major(Sp, K, L, range_pow, 8, sub, 0, tabs, n_threads,
                                 np.ascontiguousarray(cols.reshape(L, K)[tabs].ravel()))
        np.testing.assert_array_equal(sub[tabs], ref[tabs])
    with pytest.raises(ValueError, match="column 9"):
        _lsh.simhash_table_major(Sp, K, L, 0, 8, out, 0, None, 1,
                                 np.full(K * L, 9, np.int32))
    with pytest.raises(ValueError, match="cols must"):
        _lsh.simhash_table_major(Sp, K, L, 0, 8, out, 0, None, 1, cols[:-1].copy())


def _ref_query(qb, offsets, ids, policy, budget, threshold, labels, min_active, n_neurons):
    out = []
    for i in range(qb.shape[0]):
        sel = list(dict.fromkeys(labels[i])) if labels is not None else []
        forced = set(sel)
        found, counts = [], {}
        for t in range(qb.shape[1]):
            b = qb[i, t]
            for r in ids[t, offsets[t, b]:offsets[t, b + 1]]:
                if r in forced:
                    continue
                if r not in counts:
                    found.append(r)
                    counts[r] = 0
                counts[r] += 1
        if policy == _lsh.UNION:
            chosen = found[:budget]
        else:
            lo = threshold if policy == _lsh.THRESHOLD else 1
            chosen = [r for lvl in range(qb.shape[1], lo - 1, -1) for r in found if counts[r] == lvl][:budget]
        out.append((sel + chosen, len(sel)))
    return out


@pytest.mark.parametrize("policy", [_lsh.UNION, _lsh.TOPK, _lsh.THRESHOLD])
@pytest.mark.parametrize("n_threads", THREADS)
def test_query_policies_label_forcing_and_random_fill(policy, n_threads):
    rng = np.random.default_rng(0)
    n_neurons, L, nb, n = 300, 6, 8, 40
    buckets = rng.integers(0, nb, (n_neurons, L)).astype(np.int32)
    offsets = np.empty((L, nb + 1), np.int32)
    ids = np.empty((L, n_neurons), np.int32)
    _lsh.build_tables(np.ascontiguousarray(buckets.T), nb, 128, _lsh.FIFO, 0, offsets, ids)
    qb = rng.integers(0, nb, (n, L)).astype(np.int32)
    labels = [list(rng.choice(n_neurons, rng.integers(0, 4), replace=False)) for _ in range(n)]
    l_indptr = np.zeros(n + 1, np.int64)
    np.cumsum([len(x) for x in labels], out=l_indptr[1:])
    l_idx = np.array(sum(labels, []), dtype=np.int32)
    budget, min_active = 60, 90
    cap = 3 + max(budget, min_active)
    counts = np.empty(n, np.int32)
    forced = np.empty(n, np.int32)
    out = np.empty((n, cap), np.int32)
    _lsh.query(qb, offsets, ids, policy, budget, 2, l_indptr, l_idx, min_active, n_neurons, 128,
               9, 4, counts, forced, out, n_threads)
    ref = _ref_query(qb, offsets, ids, policy, budget, 2, labels, min_active, n_neurons)
    for i, (sel, nl) in enumerate(ref):
        got = list(out[i, :counts[i]])
        assert forced[i] == nl
        assert got[:len(sel)] == sel                      # labels first, then the policy's picks
        assert len(got) == max(len(sel), min_active)      # random fill to min_active
        assert len(set(got)) == len(got) and min(got) >= 0 and max(got) < n_neurons
    # the random fill depends on (seed, step, sample) only: same for every thread count
    out1 = np.empty_like(out)
    _lsh.query(qb, offsets, ids, policy, budget, 2, l_indptr, l_idx, min_active, n_neurons, 128,
               9, 4, counts, forced, out1, 1)
    for i in range(n):
        np.testing.assert_array_equal(out1[i, :counts[i]], out[i, :counts[i]])


@pytest.mark.parametrize("policy", [_lsh.UNION, _lsh.TOPK])
@pytest.mark.parametrize("n_threads", THREADS)
def test_query_with_kept_scratch_equals_fresh_scratch(policy, n_threads):
    # marks kept between calls (stamped per sample, never cleared) select what fresh ones do
    rng = np.random.default_rng(4)
    n_neurons, L, nb, n = 200, 5, 8, 30
    buckets = rng.integers(0, nb, (L, n_neurons)).astype(np.int32)
    offsets = np.empty((L, nb + 1), np.int32)
    ids = np.empty((L, n_neurons), np.int32)
    _lsh.build_tables(buckets, nb, 128, _lsh.FIFO, 0, offsets, ids)
    l_indptr = np.arange(n + 1, dtype=np.int64)
    scratch = np.full((n_threads, 2 * n_neurons), -1, np.int32)
    stamp = 0
    for call in range(4):
        qb = rng.integers(0, nb, (n, L)).astype(np.int32)
        l_idx = rng.integers(0, n_neurons, n).astype(np.int32)
        got, ref = [], []
        for kept in (True, False):
            counts, forced = np.empty(n, np.int32), np.empty(n, np.int32)
            out = np.empty((n, 41), np.int32)
            _lsh.query(qb, offsets, ids, policy, 25, 2, l_indptr, l_idx, 40, n_neurons, 128, 9,
                       call, counts, forced, out, n_threads,
                       *((scratch, stamp) if kept else ()))
            (got if kept else ref).append([list(out[i, :counts[i]]) for i in range(n)] +
                                          [list(forced)])
        assert got == ref
        stamp += n
    assert (scratch >= 0).any()
    for bad in (dict(scratch=np.ascontiguousarray(scratch[:, :-1])), dict(scratch=scratch, stamp=-1),
                dict(scratch=scratch, stamp=2**31 - 10)):
        with pytest.raises(ValueError, match="scratch|stamp"):
            _lsh.query(qb, offsets, ids, policy, 25, 2, l_indptr, l_idx, 40, n_neurons, 128, 9,
                       0, counts, forced, out, n_threads, **bad)


def test_query_fill_reaches_every_neuron_when_asked():
    L, nb, m = 2, 4, 50
    buckets = np.zeros((m, L), np.int32)
    offsets = np.empty((L, nb + 1), np.int32)
    ids = np.empty((L, m), np.int32)
    _lsh.build_tables(np.ascontiguousarray(buckets.T), nb, 128, _lsh.FIFO, 0, offsets, ids)
    qb = np.full((3, L), 1, np.int32)           # empty buckets
    counts = np.empty(3, np.int32)
    forced = np.empty(3, np.int32)
    out = np.empty((3, m), np.int32)
    _lsh.query(qb, offsets, ids, _lsh.UNION, 10, 1, np.empty(0, np.int64), np.empty(0, np.int32),
               m, m, 128, 0, 0, counts, forced, out, 2)
    assert (counts == m).all()
    assert all(sorted(out[i]) == list(range(m)) for i in range(3))


def test_compact_and_errors():
    counts = np.array([2, 0, 3], np.int32)
    padded = np.array([[1, 2, 0], [0, 0, 0], [5, 6, 7]], np.int32)
    indptr = np.empty(4, np.int64)
    idx = np.empty(5, np.int32)
    _lsh.compact(counts, padded, indptr, idx, 2)
    assert list(indptr) == [0, 2, 2, 5] and list(idx) == [1, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="indices"):
        _lsh.compact(counts, padded, indptr, np.empty(4, np.int32))
    with pytest.raises(ValueError, match="capacity"):
        _lsh.build_tables(np.zeros((1, 3), np.int32), 2, 0, 0, 0, np.empty((1, 3), np.int32),
                          np.empty((1, 3), np.int32))
    with pytest.raises(ValueError, match="policy"):
        _lsh.query(np.zeros((1, 1), np.int32), np.zeros((1, 2), np.int32), np.zeros((1, 3), np.int32),
                   7, 1, 1, np.empty(0, np.int64), np.empty(0, np.int32), 0, 3, 1, 0, 0,
                   np.empty(1, np.int32), np.empty(1, np.int32), np.empty((1, 1), np.int32))
