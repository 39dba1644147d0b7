"""Column-row sampled products: against NumPy references and their statistical guarantees."""

import numpy as np
import pytest
from fastfire._core._sampling import (
    SCHEMES,
    effective_k,
    sampled_matmul,
    scatter_columns,
    scatter_rows,
    uniform_numbers,
)

UNBIASED = ("crs", "bernoulli", "uniform")


def _operands(rng, m, n, p, trans_a=False, trans_b=False):
    # uneven column/row norms so that norm-proportional sampling differs from uniform
    A = (rng.standard_normal((m, n)) * rng.gamma(1.0, 1.0, n)).astype(np.float32)
    B = (rng.standard_normal((n, p)) * rng.gamma(1.0, 1.0, (n, 1))).astype(np.float32)
    As = np.ascontiguousarray(A.T) if trans_a else A
    Bs = np.ascontiguousarray(B.T) if trans_b else B
    return A, B, As, Bs


def _call(As, Bs, m, n, p, trans_a, trans_b, scheme, k, seed=0, counter=0, n_threads=1, **kw):
    C = np.full((m, p), np.nan, dtype=np.float32)
    idx = np.empty(n, np.int32)
    scale = np.empty(n, np.float32)
    a_buf = np.empty(m * n, np.float32)
    b_buf = np.empty(n * p, np.float32)
    n_kept, exact = sampled_matmul(As, Bs, C, trans_a, trans_b, SCHEMES[scheme], k, idx, scale,
                                   a_buf, b_buf, seed=seed, counter=counter, n_threads=n_threads, **kw)
    return C, idx[:n_kept].copy(), scale[:n_kept].copy(), exact


def reference_sampled_product(A, B, idx, scale, alpha=1.0):
    """The naive twin: the kept column-row pairs, scaled, summed."""
    return alpha * (A[:, idx] * scale) @ B[idx, :]


def test_effective_k():
    assert effective_k(100, 0.5, 10) == 50
    assert effective_k(100, 0.05, 10) == 10
    assert effective_k(8, 0.5, 10) == 8
    assert effective_k(784, 0.3, 10) == 235
    assert effective_k(784, 1.0, 10) == 784
    assert effective_k(500, 0.9, 10) == 450


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_product_matches_reference_on_the_kept_pairs(scheme, trans_a, trans_b):
    rng = np.random.default_rng(1)
    m, n, p = 9, 60, 7
    A, B, As, Bs = _operands(rng, m, n, p, trans_a, trans_b)
    C, idx, scale, exact = _call(As, Bs, m, n, p, trans_a, trans_b, scheme, 20, seed=5, counter=3,
                                 n_threads=2, alpha=0.5)
    assert not exact
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
    np.testing.assert_allclose(C, reference_sampled_product(A, B, idx, scale, 0.5), rtol=1e-5, atol=1e-5)
    if scheme in ("topk", "topk_estimated", "uniform"):
        assert len(idx) == 20
    if scheme in ("topk", "topk_estimated"):
        np.testing.assert_array_equal(scale, 1.0)


def test_gathered_buffers_hold_the_sample():
    rng = np.random.default_rng(2)
    m, n, p = 5, 40, 6
    A, B, _, _ = _operands(rng, m, n, p)
    C = np.empty((m, p), np.float32)
    idx, scale = np.empty(n, np.int32), np.empty(n, np.float32)
    a_buf, b_buf = np.empty(m * n, np.float32), np.empty(n * p, np.float32)
    kept, _ = sampled_matmul(A, B, C, False, False, SCHEMES["bernoulli"], 15, idx, scale, a_buf, b_buf,
                             seed=1, counter=1)
    np.testing.assert_array_equal(a_buf[: m * kept].reshape(m, kept), A[:, idx[:kept]] * scale[:kept])
    np.testing.assert_array_equal(b_buf[: kept * p].reshape(kept, p), B[idx[:kept]])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_exact_when_k_reaches_n(scheme):
    rng = np.random.default_rng(3)
    A, B, _, _ = _operands(rng, 6, 25, 4)
    C, _, _, exact = _call(A, B, 6, 25, 4, False, False, scheme, 25)
    assert exact
    np.testing.assert_allclose(C, A @ B, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_k_zero_keeps_nothing(scheme):
    rng = np.random.default_rng(8)
    A, B, _, _ = _operands(rng, 3, 20, 2)
    C, idx, _, exact = _call(A, B, 3, 20, 2, False, False, scheme, 0)
    assert not exact and len(idx) == 0
    np.testing.assert_array_equal(C, 0.0)


def test_exact_when_all_scores_are_zero():
    A = np.zeros((4, 30), np.float32)
    B = np.ones((30, 3), np.float32)
    C, _, _, exact = _call(A, B, 4, 30, 3, False, False, "bernoulli", 5)
    assert exact
    np.testing.assert_array_equal(C, 0.0)


def _draws(scheme, k, T, m=4, n=30, p=3, seed=0):
    rng = np.random.default_rng(10)
    A, B, _, _ = _operands(rng, m, n, p)
    Cs = np.stack([_call(A, B, m, n, p, False, False, scheme, k, seed=seed, counter=t)[0]
                   for t in range(T)]).astype(np.float64)
    return A.astype(np.float64), B.astype(np.float64), Cs


@pytest.mark.parametrize("scheme", UNBIASED)
def test_unbiased_schemes_average_to_the_product(scheme):
    T = 3000
    A, B, Cs = _draws(scheme, 8, T)
    exact = A @ B
    z = (Cs.mean(0) - exact) / (Cs.std(0, ddof=1) / np.sqrt(T))
    # 12 entries, each z ~ N(0, 1) for an unbiased estimator: |z| < 4.5 with overwhelming odds
    assert np.abs(z).max() < 4.5, z


def test_topk_is_biased_so_the_unbiasedness_test_has_power():
    # the statistic above rejects unscaled top-k (biased): measured against CRS's spread
    T = 300
    A, B, Cs = _draws("crs", 8, T)
    exact = A @ B
    rng = np.random.default_rng(10)
    A32, B32, _, _ = _operands(rng, 4, 30, 3)
    C_top, _, _, _ = _call(A32, B32, 4, 30, 3, False, False, "topk", 8)
    sd = Cs.std(0, ddof=1) / np.sqrt(T)
    assert np.abs((C_top - exact) / sd).max() > 4.5


def test_crs_error_matches_its_variance_formula():
    # E‖AB - C‖²_F = (Σ_i ‖A_i‖² ‖B_i‖² / p_i − ‖AB‖²_F) / k  for k draws with replacement
    eps, T = 0.1, 1500
    for k in (4, 16):
        A, B, Cs = _draws("crs", k, T)
        s = np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=1)
        n = A.shape[1]
        prob = (1 - eps) * s / s.sum() + eps / n
        expected = ((s**2 / prob).sum() - np.linalg.norm(A @ B) ** 2) / k
        measured = ((Cs - A @ B) ** 2).sum(axis=(1, 2)).mean()
        assert abs(measured / expected - 1) < 0.15, (k, measured, expected)


def test_bernoulli_error_matches_its_variance_formula_and_falls_with_k():
    # E‖AB - C‖²_F = Σ_i (1/p_i − 1) ‖A_i‖² ‖B_i‖²
    eps, T = 0.1, 1500
    errors = []
    for k in (4, 12, 24):
        A, B, Cs = _draws("bernoulli", k, T)
        s = np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=1)
        n = A.shape[1]
        prob = (1 - eps) * np.minimum(1.0, k * s / s.sum()) + eps * k / n
        expected = ((1 / prob - 1) * s**2).sum()
        measured = ((Cs - A @ B) ** 2).sum(axis=(1, 2)).mean()
        assert abs(measured / expected - 1) < 0.15, (k, measured, expected)
        errors.append(measured)
    assert errors[0] > errors[1] > errors[2]


def test_topk_is_deterministic_and_keeps_the_largest_scores():
    rng = np.random.default_rng(4)
    A, B, _, _ = _operands(rng, 5, 50, 4)
    C1, idx1, _, _ = _call(A, B, 5, 50, 4, False, False, "topk", 12, seed=1, counter=1)
    C2, idx2, _, _ = _call(A, B, 5, 50, 4, False, False, "topk", 12, seed=99, counter=7, n_threads=2)
    np.testing.assert_array_equal(idx1, idx2)
    np.testing.assert_array_equal(C1, C2)
    s = np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=1)
    np.testing.assert_array_equal(idx1, np.sort(np.argsort(-s)[:12]))


def test_topk_ties_keep_the_lowest_ids():
    A = np.ones((3, 10), np.float32)
    B = np.ones((10, 2), np.float32)
    _, idx, _, _ = _call(A, B, 3, 10, 2, False, False, "topk", 4)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_sample_does_not_depend_on_thread_count(scheme):
    rng = np.random.default_rng(5)
    A, B, _, _ = _operands(rng, 40, 300, 33)
    C1, idx1, sc1, _ = _call(A, B, 40, 300, 33, False, False, scheme, 90, seed=3, counter=11, n_threads=1)
    C2, idx2, sc2, _ = _call(A, B, 40, 300, 33, False, False, scheme, 90, seed=3, counter=11, n_threads=2)
    np.testing.assert_array_equal(idx1, idx2)
    np.testing.assert_array_equal(sc1, sc2)
    np.testing.assert_allclose(C1, C2, rtol=1e-5, atol=1e-5)


def test_seed_and_counter_change_the_sample():
    rng = np.random.default_rng(6)
    A, B, _, _ = _operands(rng, 5, 200, 4)
    samples = {tuple(_call(A, B, 5, 200, 4, False, False, "bernoulli", 40, seed=s, counter=c)[1])
               for s in (0, 1) for c in (0, 1)}
    assert len(samples) == 4


def test_uniform_numbers_are_uniform():
    u = uniform_numbers(7, 3, 20000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 1800
    assert not np.array_equal(u[:100], uniform_numbers(7, 4, 100))


def test_scatters_match_numpy():
    rng = np.random.default_rng(7)
    src = rng.standard_normal((4, 6)).astype(np.float32)
    idx = np.array([1, 4, 7, 8], np.int32)
    out = np.full((10, 6), np.nan, np.float32)
    scatter_rows(src, idx, out, 2)
    ref = np.zeros((10, 6), np.float32)
    ref[idx] = src
    np.testing.assert_array_equal(out, ref)

    src = rng.standard_normal((3, 4)).astype(np.float32)
    scale = np.array([2.0, 0.5, 1.0, 3.0], np.float32)
    out = np.full((3, 9), np.nan, np.float32)
    scatter_columns(src, idx, scale, out, 2)
    ref = np.zeros((3, 9), np.float32)
    ref[:, idx] = src * scale
    np.testing.assert_array_equal(out, ref)


def test_bad_arguments_raise():
    A = np.ones((3, 5), np.float32)
    B = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        _call(A, B, 3, 5, 2, False, False, "crs", 2)
    B = np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match="scheme"):
        sampled_matmul(A, B, np.empty((3, 2), np.float32), False, False, 9, 2, np.empty(5, np.int32),
                       np.empty(5, np.float32), np.empty(15, np.float32), np.empty(10, np.float32))
    with pytest.raises(ValueError, match="a_buf"):
        sampled_matmul(A, B, np.empty((3, 2), np.float32), False, False, 0, 2, np.empty(5, np.int32),
                       np.empty(5, np.float32), np.empty(2, np.float32), np.empty(10, np.float32))


def _topk_ids(scores, k):
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def test_tall_operands_sample_the_same_for_every_thread_count():
    # column norms of 700 rows are summed in float blocks: a fixed split, whatever the threads
    rng = np.random.default_rng(15)
    m, n, p = 700, 120, 4
    A, B, _, Bs = _operands(rng, m, n, p, trans_b=True)
    runs = [_call(A, Bs, m, n, p, False, True, "bernoulli", 40, counter=2, n_threads=t,
                  b_norms=np.zeros(n)) for t in (1, 2, 3)]
    for C, idx, sc, _ in runs[1:]:
        np.testing.assert_array_equal(idx, runs[0][1])
        np.testing.assert_array_equal(sc, runs[0][2])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_column_norm_scores_on_tall_operands(n_threads):
    # 300 rows: the column norms are summed in per-thread partials (rows split over threads)
    rng = np.random.default_rng(11)
    m, n, p = 300, 80, 5
    A, B, _, Bs = _operands(rng, m, n, p, trans_b=True)
    _, idx, _, _ = _call(A, Bs, m, n, p, False, True, "topk", 20, n_threads=n_threads)
    s = np.linalg.norm(A.astype(np.float64), axis=0) * np.linalg.norm(B.astype(np.float64), axis=1)
    np.testing.assert_array_equal(idx, _topk_ids(s, 20))


@pytest.mark.parametrize("scheme", ["topk", "bernoulli"])
def test_b_norms_cache_is_filled_then_reused_and_refreshed(scheme):
    rng = np.random.default_rng(12)
    m, n, p = 7, 50, 90
    A, B, _, Bs = _operands(rng, m, n, p, trans_b=True)
    cache = np.full(n, np.nan)
    C0, idx0, sc0, _ = _call(A, Bs, m, n, p, False, True, scheme, 15, counter=1)
    C1, idx1, sc1, _ = _call(A, Bs, m, n, p, False, True, scheme, 15, counter=1, b_norms=cache)
    # an invalid cache changes nothing and is filled with the squared norms of op(B)'s rows
    np.testing.assert_array_equal(idx0, idx1)
    np.testing.assert_array_equal(C0, C1)
    np.testing.assert_allclose(cache, (B.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    # B changes (an optimizer step): the valid cache steers the sample, the product uses the new B
    B2 = B * rng.gamma(1.0, 1.0, (n, 1)).astype(np.float32)
    B2s = np.ascontiguousarray(B2.T)
    old = cache.copy()
    C2, idx2, sc2, _ = _call(A, B2s, m, n, p, False, True, scheme, 15, counter=2, b_norms=cache,
                             b_norms_valid=True)
    np.testing.assert_allclose(C2, reference_sampled_product(A, B2, idx2, sc2), rtol=1e-5, atol=1e-5)
    if scheme == "topk":
        s_old = np.linalg.norm(A.astype(np.float64), axis=0) * np.sqrt(old)
        np.testing.assert_array_equal(idx2, _topk_ids(s_old, 15))
    # ... and the gather refilled the cache with the norms of the new B
    np.testing.assert_allclose(cache, (B2.astype(np.float64) ** 2).sum(1), rtol=1e-5)


def test_b_norms_cache_without_trans_b_is_recomputed():
    rng = np.random.default_rng(13)
    m, n, p = 6, 40, 8
    A, B, _, _ = _operands(rng, m, n, p)
    cache = np.ones(n)  # wrong norms marked valid: ignored when op(B) is B itself
    C0, idx0, _, _ = _call(A, B, m, n, p, False, False, "topk", 10)
    C1, idx1, _, _ = _call(A, B, m, n, p, False, False, "topk", 10, b_norms=cache, b_norms_valid=True)
    np.testing.assert_array_equal(idx0, idx1)
    np.testing.assert_array_equal(C0, C1)
    np.testing.assert_allclose(cache, (B.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match="b_norms"):
        _call(A, B, m, n, p, False, False, "topk", 10, b_norms=np.ones(n - 1))


def test_bernoulli_with_stale_cached_norms_stays_unbiased():
    # probabilities from norms that are not those of B (a stale cache): still unbiased
    rng = np.random.default_rng(14)
    m, n, p, T = 4, 30, 3, 3000
    A, B, _, Bs = _operands(rng, m, n, p, trans_b=True)
    stale = rng.gamma(1.0, 1.0, n) ** 2
    Cs = []
    for t in range(T):
        cache = stale.copy()
        Cs.append(_call(A, Bs, m, n, p, False, True, "bernoulli", 8, counter=t, b_norms=cache,
                        b_norms_valid=True)[0])
    Cs = np.array(Cs, dtype=np.float64)
    z = (Cs.mean(0) - A.astype(np.float64) @ B) / (Cs.std(0, ddof=1) / np.sqrt(T))
    assert np.abs(z).max() < 4.5, z


def test_scatters_fill_the_dropped_rows_and_columns():
    rng = np.random.default_rng(8)
    idx = np.array([1, 4, 7, 8], np.int32)
    src = rng.standard_normal((4, 6)).astype(np.float32)
    left = rng.standard_normal(10).astype(np.float32)
    right = rng.standard_normal(6).astype(np.float32)
    out = np.full((10, 6), np.nan, np.float32)
    scatter_rows(src, idx, out, 2, left, right)
    ref = np.outer(left, right).astype(np.float32)
    ref[idx] = src
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="fill"):
        scatter_rows(src, idx, out, 1, left, None)
    with pytest.raises(ValueError, match="fill"):
        scatter_rows(src, idx, out, 1, left[:9], right)

    src = rng.standard_normal((3, 4)).astype(np.float32)
    scale = np.array([2.0, 0.5, 1.0, 3.0], np.float32)
    fill = rng.standard_normal(9).astype(np.float32)
    out = np.full((3, 9), np.nan, np.float32)
    scatter_columns(src, idx, scale, out, 2, fill)
    ref = np.tile(fill, (3, 1))
    ref[:, idx] = src * scale
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="fill"):
        scatter_columns(src, idx, scale, out, 1, fill[:8])


@pytest.mark.parametrize("scheme", ["topk", "bernoulli"])
def test_gather_only_leaves_the_product_to_the_caller(scheme):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((30, 12)).astype(np.float32)   # op(A) = X.T: 12 x 30
    D = rng.standard_normal((30, 7)).astype(np.float32)
    full, idx, scale, _ = _call(X, D, 12, 30, 7, True, False, scheme, 9, seed=3)
    C = np.full((12, 7), np.nan, np.float32)
    a_buf = np.empty(12 * 30, np.float32)
    b_buf = np.empty(30 * 7, np.float32)
    idx2, scale2 = np.empty(30, np.int32), np.empty(30, np.float32)
    n_kept, exact = sampled_matmul(X, D, C, True, False, SCHEMES[scheme], 9, idx2, scale2, a_buf,
                                   b_buf, seed=3, gather_only=True)
    assert not exact and np.isnan(C).all()
    np.testing.assert_array_equal(idx2[:n_kept], idx)
    left = a_buf[: n_kept * 12].reshape(n_kept, 12)
    right = b_buf[: n_kept * 7].reshape(n_kept, 7)
    np.testing.assert_allclose(left, X[idx] * scale[:, None], rtol=1e-6)
    np.testing.assert_array_equal(right, D[idx])
    np.testing.assert_allclose(left.T @ right, full, rtol=1e-5, atol=1e-5)
    # exact (k >= n): nothing gathered or multiplied
    n_kept, exact = sampled_matmul(X, D, C, True, False, SCHEMES[scheme], 30, idx2, scale2, a_buf,
                                   b_buf, gather_only=True)
    assert exact and n_kept == 30 and np.isnan(C).all()
