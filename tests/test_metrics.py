"""Tests for fastfire.metrics against naive per-row Python loops."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from fastfire import metrics
from fastfire.metrics import ndcg_at_k, precision_at_k, top_k


def naive_top_k(S, k):
    return np.array([sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in S])


def naive_metrics(Y, idx, k):
    p, n = [], []
    for row, pred in zip(Y, idx):
        true = set(np.nonzero(row)[0])
        pred = list(pred[:k])
        p.append(sum(j in true for j in pred) / k)
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(pred) if j in true)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(true))))
        n.append(dcg / idcg if idcg else 0.0)
    return np.mean(p), np.mean(n)


def random_problem(rng, n=60, L=25, ties=False):
    Y = (rng.random((n, L)) < 0.15).astype(np.float32)
    Y[:3] = 0  # samples without a true label
    S = rng.integers(0, 4, (n, L)).astype(np.float64) if ties else rng.standard_normal((n, L))
    return Y, S


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5, 25])
def test_top_k_matches_naive(ties, k):
    rng = np.random.default_rng(k + 10 * ties)
    _, S = random_problem(rng, ties=ties)
    np.testing.assert_array_equal(top_k(S, k), naive_top_k(S, k))
    np.testing.assert_array_equal(top_k(S.astype(np.float32), k), naive_top_k(S, k))


def test_top_k_chunked(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # a few rows per block
    rng = np.random.default_rng(3)
    S = rng.integers(0, 3, (37, 20)).astype(np.float32)
    np.testing.assert_array_equal(top_k(S, 4), naive_top_k(S, 4))


def test_top_k_inf_and_signed_zero():
    S = np.array([[-np.inf, 0.0, -0.0, np.inf, 1.0]])
    np.testing.assert_array_equal(top_k(S, 5), [[3, 4, 1, 2, 0]])


@pytest.mark.parametrize("k", [1, 2, 5, 10])
@pytest.mark.parametrize("form", ["dense-scores", "indices", "sparse-Y", "indices-int32"])
def test_metrics_match_naive(k, form):
    rng = np.random.default_rng(k)
    Y, S = random_problem(rng, ties=(k == 2))
    idx = naive_top_k(S, 12)
    ref_p, ref_n = naive_metrics(Y, idx, k)
    Y_in = sp.csr_matrix(Y) if form != "dense-scores" else Y
    s_in = {"dense-scores": S, "sparse-Y": S, "indices": idx,
            "indices-int32": idx.astype(np.int32)}[form]
    assert precision_at_k(Y_in, s_in, k) == pytest.approx(ref_p, abs=1e-12)
    assert ndcg_at_k(Y_in, s_in, k) == pytest.approx(ref_n, abs=1e-12)


def test_metrics_edge_cases():
    Y = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]])
    perfect = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0]])
    assert precision_at_k(Y, perfect, 1) == pytest.approx(2 / 3)  # the label-less row counts 0
    assert ndcg_at_k(Y, perfect, 3) == pytest.approx(2 / 3)       # rows 0 and 2 perfect
    assert precision_at_k(Y, perfect, 3) == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert precision_at_k(np.zeros((0, 3)), np.zeros((0, 3)), 1) == 0.0
    assert ndcg_at_k(np.zeros((0, 3)), np.zeros((0, 3), dtype=int), 1) == 0.0
    # explicit zeros in a sparse Y are not labels
    Ys = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    assert precision_at_k(Ys, np.array([[0]]), 1) == 0.0
    assert precision_at_k(Ys, np.array([[1]]), 1) == 1.0


@pytest.mark.parametrize("scores, k, what", [
    (np.zeros((2, 3)), 0, "k must be"),
    (np.zeros((2, 3)), 1.0, "k must be"),
    (np.zeros((2, 3)), 4, "larger than the number of labels"),
    (np.zeros((3, 3)), 1, "n_samples=2"),
    (np.zeros((2, 4)), 1, "columns"),
    (np.array([[0.0, np.nan, 1.0], [0, 0, 0]]), 1, "NaN"),
    (np.array([[0], [1]]), 2, "at least k"),
    (np.array([[0, 3], [1, 2]]), 2, r"\[0, 3\)"),
    (np.array([[0, -1], [1, 2]]), 2, r"\[0, 3\)"),
    (np.array([[1, 1], [1, 2]]), 2, "repeat"),
    (np.zeros(3), 1, "shape"),
])
def test_metrics_validation(scores, k, what):
    Y = np.array([[1, 0, 0], [0, 1, 0]])
    for f in (precision_at_k, ndcg_at_k):
        with pytest.raises(ValueError, match=what):
            f(Y, scores, k)


def test_top_k_validation():
    with pytest.raises(ValueError, match="2-d"):
        top_k(np.zeros(3), 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k([[1.0, np.nan]], 1)
    with pytest.raises(ValueError, match="dense"):
        top_k(sp.csr_matrix(np.eye(3)), 1)
