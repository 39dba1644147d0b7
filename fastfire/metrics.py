"""Ranking metrics for extreme multi-label classification.

The definitions are those of the Extreme Classification Repository (Bhatia et al.):

- ``P@k = |top_k(scores) ∩ true labels| / k``
- ``nDCG@k = DCG@k / IDCG@min(k, |true labels|)`` with ``DCG@k = sum_{j<k} rel_j / log2(j + 2)``

Both are averaged over all samples; a sample with no true label scores 0 for both (it is kept in
the mean rather than skipped, so the number is comparable across methods that see the same data).
"""

import numpy as np
import scipy.sparse as sp

__all__ = ["ndcg_at_k", "precision_at_k", "top_k"]

_CHUNK_ELEMENTS = 1 << 22  # score entries handled at a time by top_k


def _check_k(k):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    return int(k)


def _top_k_block(S, k):
    """Top-k of a dense float block, best first, ties to the lower index."""
    n, L = S.shape
    if k < L:
        kth = -np.partition(-S, k - 1, axis=1)[:, k - 1:k]   # the k-th largest value per row
        above = S > kth
        tie = S == kth
        need = k - above.sum(axis=1, keepdims=True)          # how many ties to take, lowest first
        keep = above | (tie & (np.cumsum(tie, axis=1) <= need))
        idx = np.nonzero(keep)[1].reshape(n, k)              # ascending index within each row
    else:
        idx = np.broadcast_to(np.arange(L), (n, L))
    vals = np.take_along_axis(S, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")         # stable: equal scores keep index order
    return np.take_along_axis(idx, order, axis=1)


def top_k(scores, k):
    """Indices of the `k` highest scores of every row, best first.

    Equal scores are ordered by label index (lower first), so the result is deterministic. Large
    matrices are processed in blocks of rows (a partition per block, then a sort of the k winners).

    Parameters
    ----------
    scores : array-like of shape (n_samples, n_labels)
        Real-valued scores; NaN is rejected.
    k : int
        Number of labels to return, 1 <= k <= n_labels.

    Returns
    -------
    indices : ndarray of shape (n_samples, k), dtype int64
        Label indices, best first.

    Examples
    --------
    >>> from fastfire.metrics import top_k
    >>> top_k([[0.1, 0.9, 0.5, 0.9]], 3)
    array([[1, 3, 2]])
    """
    k = _check_k(k)
    if sp.issparse(scores):
        raise ValueError("scores must be a dense array (or an integer array of top-k indices)")
    S = np.asarray(scores)
    if S.ndim != 2:
        raise ValueError(f"scores must be 2-d (n_samples, n_labels); got shape {S.shape}")
    if not (np.issubdtype(S.dtype, np.floating) or np.issubdtype(S.dtype, np.integer)
            or S.dtype == bool):
        raise ValueError(f"scores must be numeric; got dtype {S.dtype}")
    n, L = S.shape
    if k > L:
        raise ValueError(f"k={k} is larger than the number of labels ({L})")
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(L, 1))
    for a in range(0, n, step):
        block = S[a:a + step]
        if block.dtype.kind == "f" and np.isnan(block).any():
            rows = np.nonzero(np.isnan(block).any(axis=1))[0]
            raise ValueError(f"scores contain NaN (first in row {a + int(rows[0])})")
        if block.dtype.kind != "f":
            block = block.astype(np.float64)
        out[a:a + step] = _top_k_block(block, k)
    return out


def _prepare(Y_true, scores, k):
    """(hits of shape (n, k), number of true labels per row) after validation."""
    k = _check_k(k)
    if sp.issparse(Y_true):
        Y = sp.csr_matrix(Y_true, copy=True)
        Y.sum_duplicates()
        Y.eliminate_zeros()
    else:
        Yd = np.asarray(Y_true)
        if Yd.ndim != 2:
            raise ValueError(f"Y_true must be a 2-d indicator matrix; got shape {Yd.shape}")
        Y = sp.csr_matrix(Yd != 0)
    n, L = Y.shape
    S = scores if sp.issparse(scores) else np.asarray(scores)
    if S.ndim != 2 or S.shape[0] != n:
        raise ValueError(f"scores must have shape (n_samples={n}, ...); got {S.shape}")
    if not sp.issparse(S) and np.issubdtype(S.dtype, np.integer):
        if S.shape[1] < k:
            raise ValueError(f"scores holds {S.shape[1]} top indices per row; k={k} needs at least k")
        idx = S[:, :k].astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= L):
            raise ValueError(f"top-k label indices must be in [0, {L}) (Y_true has {L} labels)")
        srt = np.sort(idx, axis=1)
        if k > 1 and (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("top-k label indices repeat a label within a row")
    else:
        if S.shape[1] != L:
            raise ValueError(f"scores has {S.shape[1]} columns but Y_true has {L} labels")
        idx = top_k(S, k)
    # membership of (row, label) pairs through sorted int64 keys
    true_keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(Y.indptr)) * L + Y.indices
    if not Y.has_sorted_indices:
        true_keys.sort()
    pred_keys = (np.arange(n, dtype=np.int64)[:, None] * L + idx).ravel()
    pos = np.searchsorted(true_keys, pred_keys)
    pos[pos == true_keys.size] = 0
    hits = (true_keys[pos] == pred_keys).reshape(n, k) if true_keys.size else np.zeros((n, k), bool)
    return hits, np.diff(Y.indptr), k


def precision_at_k(Y_true, scores, k=1):
    """Precision at k, averaged over samples: ``|top-k ∩ true| / k``.

    Parameters
    ----------
    Y_true : {array-like, sparse matrix} of shape (n_samples, n_labels)
        True label indicator (non-zero entries are labels).
    scores : array-like of shape (n_samples, n_labels) or (n_samples, m)
        Either a real score matrix (float dtype), or, when its dtype is integer, label indices
        ranked best first (``m >= k``; only the first k columns are used).
    k : int, default=1
        Cut-off, >= 1.

    Returns
    -------
    float
        Mean P@k; samples without a true label count 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire.metrics import precision_at_k
    >>> Y = np.array([[1, 0, 1], [0, 1, 0]])
    >>> precision_at_k(Y, np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7]]), k=1)
    0.5
    >>> precision_at_k(Y, np.array([[0, 2], [1, 0]]), k=2)
    0.75
    """
    hits, _, k = _prepare(Y_true, scores, k)
    return float(hits.sum(axis=1).mean() / k) if hits.shape[0] else 0.0


def ndcg_at_k(Y_true, scores, k=1):
    """Normalised discounted cumulative gain at k, averaged over samples.

    ``DCG@k = sum_{j<k} [top_j is true] / log2(j + 2)``, divided by the best possible value
    ``IDCG = sum_{j < min(k, |true|)} 1 / log2(j + 2)``.

    Parameters
    ----------
    Y_true : {array-like, sparse matrix} of shape (n_samples, n_labels)
        True label indicator (non-zero entries are labels).
    scores : array-like of shape (n_samples, n_labels) or (n_samples, m)
        A real score matrix, or integer label indices ranked best first (``m >= k``).
    k : int, default=1
        Cut-off, >= 1.

    Returns
    -------
    float
        Mean nDCG@k; samples without a true label count 0.

    Examples
    --------
    >>> import numpy as np
    >>> from fastfire.metrics import ndcg_at_k
    >>> ndcg_at_k(np.array([[1, 0, 1]]), np.array([[0, 1]]), k=2)
    0.6131471927654584
    """
    hits, n_true, k = _prepare(Y_true, scores, k)
    if not hits.shape[0]:
        return 0.0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_true, k)]
    ndcg = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
    return float(ndcg.mean())
