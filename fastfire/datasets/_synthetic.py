"""Synthetic extreme multi-label problems with learnable structure."""


import numpy as np
import scipy.sparse as sp

from fastfire.datasets._files import _csr


def _check_number(name, value, low, high=None, integer=False, low_open=False):
    ok_type = (isinstance(value, (int, np.integer)) if integer
               else isinstance(value, (int, float, np.integer, np.floating)))
    if isinstance(value, (bool, np.bool_)):
        ok_type = False
    ok = ok_type and np.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "an integer" if integer else "a real number"
        bound = f"({low}" if low_open else f"[{low}"
        bound += f", {high}]" if high is not None else ", inf)"
        raise ValueError(f"The '{name}' parameter of make_extreme_classification must be {kind} in "
                         f"the range {bound}. Got {value!r} instead.")


def _mix64(x):
    """splitmix64's finaliser on a uint64 array, in place: a stateless hash."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    from sklearn.utils import check_random_state

    seed = check_random_state(random_state).randint(0, 2**62, dtype=np.int64)
    return np.random.default_rng(int(seed))


def make_extreme_classification(n_samples, n_features, n_labels, *, n_nonzeros=75,
                                n_labels_per_sample=5, power_law_exponent=1.0, prototype_nnz=30,
                                noise=0.3, random_state=None):
    """Generate a synthetic extreme multi-label problem: sparse bag-of-words with learnable labels.

    Each label ``l`` has a hidden sparse prototype: ``prototype_nnz`` feature ids with positive
    weights, derived from a hash of ``(seed, l, slot)`` so that no per-label table is stored. A
    sample draws ``1 + Poisson(n_labels_per_sample - 1)`` labels from a power law (label of rank
    ``r`` has probability proportional to ``(r + 1) ** -power_law_exponent``; label 0 is the most
    frequent) and ``1 + Poisson(n_nonzeros - 1)`` feature draws: with probability ``noise`` a
    background word (frequent words likelier, ``P(f)`` about ``1 / (f + 1)``), otherwise a random
    prototype feature of one of its labels. Repeated draws add up like term counts; values are
    ``count-weighted prototype weight x idf(f)`` with ``idf(f) = 1 + log((n_features + 1) / (f + 1))``,
    and rows are L2-normalised. Work is vectorised in blocks of samples: memory is
    O(n_samples x n_nonzeros + n_labels), with no dense intermediate.

    Parameters
    ----------
    n_samples : int
        Number of samples (rows), >= 1.
    n_features : int
        Number of features (columns of X), in [1, 2**31 - 1].
    n_labels : int
        Number of labels (columns of Y), in [1, 2**31 - 1].
    n_nonzeros : float, default=75
        Mean number of feature draws per sample (>= 1). The mean number of distinct non-zeros is
        a little lower when draws repeat a feature.
    n_labels_per_sample : float, default=5
        Mean number of label draws per sample, in [1, n_labels]; repeated draws count once.
    power_law_exponent : float, default=1.0
        Exponent ``a`` >= 0 of the label frequencies ``(rank + 1) ** -a``; 0 is uniform.
    prototype_nnz : int, default=30
        Features per label prototype, >= 1.
    noise : float, default=0.3
        Fraction of feature draws that are background words unrelated to the labels, in [0, 1].
    random_state : int, RandomState instance, Generator or None, default=None
        Seed; the same seed gives the same data.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features), dtype float32
        Positive feature values, rows of unit L2 norm, every row with at least one non-zero.
    Y : scipy.sparse.csr_matrix of shape (n_samples, n_labels), dtype float32
        Label indicator, every row with at least one label.

    Examples
    --------
    >>> from fastfire.datasets import make_extreme_classification
    >>> X, Y = make_extreme_classification(1000, 5000, 20000, random_state=0)
    >>> X.shape, Y.shape
    ((1000, 5000), (1000, 20000))
    >>> bool(Y.getnnz(axis=1).min() >= 1)
    True
    """
    _check_number("n_samples", n_samples, 1, integer=True)
    _check_number("n_features", n_features, 1, 2**31 - 1, integer=True)
    _check_number("n_labels", n_labels, 1, 2**31 - 1, integer=True)
    _check_number("n_nonzeros", n_nonzeros, 1)
    _check_number("n_labels_per_sample", n_labels_per_sample, 1, n_labels)
    _check_number("power_law_exponent", power_law_exponent, 0)
    _check_number("prototype_nnz", prototype_nnz, 1, 2**31 - 1, integer=True)
    _check_number("noise", noise, 0, 1)
    n_samples, n_features, n_labels = int(n_samples), int(n_features), int(n_labels)
    rng = _rng(random_state)
    salt = np.uint64(rng.integers(0, 2**63, dtype=np.uint64))

    cdf = np.arange(1, n_labels + 1, dtype=np.float64)
    np.power(cdf, -float(power_law_exponent), out=cdf)
    np.cumsum(cdf, out=cdf)
    cdf /= cdf[-1]
    log_d1 = np.log(n_features + 1.0)

    block = 16384
    parts_x, parts_y = [], []
    for start in range(0, n_samples, block):
        b = min(block, n_samples - start)
        k = 1 + rng.poisson(n_labels_per_sample - 1.0, b)
        labels = np.searchsorted(cdf, rng.random(int(k.sum())), side="right")
        np.minimum(labels, n_labels - 1, out=labels)
        lab_ptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(k, out=lab_ptr[1:])

        m = 1 + rng.poisson(n_nonzeros - 1.0, b)
        rows = np.repeat(np.arange(b, dtype=np.int64), m)
        t = rows.size
        # prototype draws: a label of the sample, then one slot of its prototype
        pick = lab_ptr[rows] + (rng.random(t) * k[rows]).astype(np.int64)
        key = labels[pick].astype(np.uint64) * np.uint64(prototype_nnz)
        key += rng.integers(0, prototype_nnz, t, dtype=np.uint64)
        key ^= salt
        h = _mix64(key)
        feat = (h % np.uint64(n_features)).astype(np.int64)
        weight = ((h >> np.uint64(40)).astype(np.float64) * (1.5 / 2**24) + 0.25)
        # background words
        background = rng.random(t) < noise
        nb = int(background.sum())
        word = np.floor(np.exp(rng.random(nb) * log_d1)).astype(np.int64) - 1
        feat[background] = np.clip(word, 0, n_features - 1)
        weight[background] = 1.0
        weight *= 1.0 + (log_d1 - np.log1p(feat))

        X = sp.csr_matrix((weight, (rows, feat)), shape=(b, n_features))
        X.sum_duplicates()
        norms = np.sqrt(np.add.reduceat(X.data ** 2, X.indptr[:-1])) if X.nnz else np.ones(b)
        X.data /= np.repeat(norms, np.diff(X.indptr))
        Y = sp.csr_matrix((np.ones(labels.size, dtype=np.float32),
                           (np.repeat(np.arange(b), k), labels)), shape=(b, n_labels))
        Y.sum_duplicates()
        parts_x.append((X.data.astype(np.float32), X.indices.astype(np.int32), np.diff(X.indptr)))
        parts_y.append((Y.indices.astype(np.int32), np.diff(Y.indptr)))

    def stack(indices, counts, data, n_cols):
        indptr = np.zeros(n_samples + 1, dtype=np.int64)
        np.cumsum(np.concatenate(counts), out=indptr[1:])
        return _csr(data, np.concatenate(indices), indptr, (n_samples, n_cols))

    X = stack([p[1] for p in parts_x], [p[2] for p in parts_x],
              np.concatenate([p[0] for p in parts_x]), n_features)
    Y = stack([p[0] for p in parts_y], [p[1] for p in parts_y],
              np.ones(sum(p[0].size for p in parts_y), dtype=np.float32), n_labels)
    return X, Y
