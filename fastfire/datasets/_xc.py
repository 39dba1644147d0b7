"""The Extreme Classification Repository text format and svmlight."""

import gzip
import os
import re

import numpy as np
import scipy.sparse as sp

from fastfire.datasets._files import _CHUNK, _DECOMPRESS_ERRORS, _csr, _open_binary

# ---------------------------------------------------------------------------------------------
# XC text format


def load_xc(path):
    """Load a file in the Extreme Classification Repository text format.

    The first line is ``n_samples n_features n_labels``; then one line per sample,
    ``l1,l2,... f:v f:v ...``. The label list may be empty (the line then starts with a blank or
    directly with ``f:v``); Windows line endings, trailing blanks and blank lines after the last
    sample are accepted. The file is parsed in compiled code in 16 MiB chunks, so memory grows only
    with the result, never with a Python object per token.

    Parameters
    ----------
    path : str or path-like
        The file; gzip, bzip2 and xz compressed files are recognised by their first bytes and
        decompressed as they are read.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features), dtype float32
        Feature values, column indices sorted within each row.
    Y : scipy.sparse.csr_matrix of shape (n_samples, n_labels), dtype float32
        Label indicator (1.0 where a label is present); duplicate labels count once.

    Raises
    ------
    ValueError
        Malformed file: the message names the file, the line and what is wrong (bad header,
        non-integer label, index out of range, missing ':', NaN or infinite value, duplicate
        feature, more or fewer lines than the header says).

    Examples
    --------
    >>> import tempfile, os
    >>> from fastfire.datasets import load_xc
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.txt")
    >>> with open(path, "w") as f:
    ...     _ = f.write("2 4 3\\n0,2 1:0.5 3:2\\n 0:1\\n")
    >>> X, Y = load_xc(path)
    >>> X.toarray()
    array([[0. , 0.5, 0. , 2. ],
           [1. , 0. , 0. , 0. ]], dtype=float32)
    >>> Y.toarray()
    array([[1., 0., 1.],
           [0., 0., 0.]], dtype=float32)
    """
    from fastfire._core._xcparse import XCParser

    name = os.fspath(path)
    parser = XCParser()
    stream, raw = _open_binary(path)
    with raw, stream:
        buf = bytearray(_CHUNK)
        have = 0
        first = True
        while True:
            if have == len(buf):  # a line longer than the buffer
                buf.extend(bytes(len(buf)))
            try:
                with memoryview(buf) as view, view[have:] as tail:
                    n = stream.readinto(tail)
            except _DECOMPRESS_ERRORS as exc:
                raise ValueError(
                    f"{name}: line {parser.line_no + 1}: corrupt or truncated compressed data ({exc})"
                ) from None
            if first and n:
                first = False
                if buf[:3] == b"\xef\xbb\xbf":  # UTF-8 byte order mark
                    buf[:n - 3] = buf[3:n]
                    n -= 3
            if not n:
                break
            have += n
            consumed = parser.feed(buf, have)
            if consumed < 0:
                line, msg = parser.error_message()
                raise ValueError(f"{name}: line {line}: {msg}")
            if consumed:
                buf[: have - consumed] = buf[consumed:have]
                have -= consumed
        if have:  # last line without a newline
            if have == len(buf):
                buf.append(10)
            else:
                buf[have] = 10
            if parser.feed(buf, have + 1) < 0:
                line, msg = parser.error_message()
                raise ValueError(f"{name}: line {line}: {msg}")
    try:
        x_indptr, x_indices, x_data, y_indptr, y_indices = parser.finish()
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    n, d, L = parser.n_samples, parser.n_features, parser.n_labels
    X = _csr(x_data, x_indices, x_indptr, (n, d))
    Y = _csr(np.ones(y_indices.size, dtype=np.float32), y_indices, y_indptr, (n, L))
    return X, Y


def _indicator_csr(Y, n_samples, name):
    """Y (dense or sparse) as a canonical CSR whose non-zero entries are the labels."""
    if sp.issparse(Y):
        Y = sp.csr_matrix(Y, copy=True)
    else:
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ValueError(f"{name} must be a 2-d indicator matrix; got shape {Y.shape}")
        Y = sp.csr_matrix(Y != 0)
    if Y.shape[0] != n_samples:
        raise ValueError(f"{name} has {Y.shape[0]} rows but X has {n_samples}")
    Y.sum_duplicates()
    Y.eliminate_zeros()
    return Y


def dump_xc(X, Y, path):
    """Write ``(X, Y)`` in the Extreme Classification Repository text format.

    Values are written with ``'%.9g'``, so :func:`load_xc` reads float32 data back exactly.
    Rows are formatted in compiled code, a few MiB at a time.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Feature values (only non-zeros, or the stored entries of a sparse matrix, are written);
        must be finite.
    Y : {array-like, sparse matrix} of shape (n_samples, n_labels)
        Label indicator: every non-zero entry is a label.
    path : str or path-like
        Output file; a name ending in ``.gz`` is written gzip-compressed (level 6).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastfire.datasets import dump_xc, load_xc
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.txt")
    >>> dump_xc(np.array([[0, 0.25], [1, 0]]), np.array([[1, 0, 1], [0, 0, 0]]), path)
    >>> print(open(path).read(), end="")
    2 2 3
    0,2 1:0.25
     0:1
    """
    from fastfire._core._xcparse import (
        FEATURE_BYTES,
        LABEL_BYTES,
        ROW_BYTES,
        format_rows,
    )

    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    else:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-d; got shape {X.shape}")
        X = sp.csr_matrix(X.astype(np.float32))
    X.sum_duplicates()  # also sorts the indices
    if not np.isfinite(X.data).all():
        raise ValueError("X contains NaN or infinite values (or values beyond float32)")
    n, d = X.shape
    Y = _indicator_csr(Y, n, "Y")
    x_indptr = X.indptr.astype(np.int64)
    y_indptr = Y.indptr.astype(np.int64)
    x_indices = X.indices.astype(np.int32, copy=False)
    y_indices = Y.indices.astype(np.int32, copy=False)
    row_bytes = FEATURE_BYTES * np.diff(x_indptr) + LABEL_BYTES * np.diff(y_indptr) + ROW_BYTES
    ends = np.cumsum(row_bytes)
    if os.fspath(path).endswith(".gz"):
        f = gzip.open(path, "wb", compresslevel=6)
    else:
        f = open(path, "wb")
    with f:
        f.write(f"{n} {d} {Y.shape[1]}\n".encode())
        start = 0
        out = np.empty(0, dtype=np.uint8)
        while start < n:
            base = ends[start - 1] if start else 0
            stop = int(np.searchsorted(ends, base + _CHUNK // 4, side="right"))
            stop = min(max(stop, start + 1), n)
            need = int(ends[stop - 1] - base)
            if out.size < need:
                out = np.empty(need, dtype=np.uint8)
            m = format_rows(x_indptr, x_indices, X.data, y_indptr, y_indices, start, stop, out)
            f.write(memoryview(out)[:m])
            start = stop


# ---------------------------------------------------------------------------------------------
# ARFF


_QUOTED = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s{]+)\s*(.*)$""", re.S)



def load_svmlight(path, n_features=None, multilabel=False, n_labels=None):
    """Load an svmlight / libsvm file (a thin wrapper on scikit-learn's reader).

    Parameters
    ----------
    path : str or path-like
        The file (``.gz``/``.bz2`` recognised by scikit-learn).
    n_features : int, default=None
        Number of features; None infers it from the largest index.
    multilabel : bool, default=False
        Lines start with comma-separated label lists (``1,5,9 3:0.5 ...``).
    n_labels : int, default=None
        Multilabel only: the number of label columns; None uses the largest label + 1.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features), dtype float32
    y : ndarray of shape (n_samples,) or scipy.sparse.csr_matrix of shape (n_samples, n_labels)
        The targets; a float32 CSR label indicator when `multilabel` is True.
    """
    from sklearn.datasets import load_svmlight_file

    name = os.fspath(path)
    try:
        X, y = load_svmlight_file(name, n_features=n_features, dtype=np.float32, multilabel=multilabel)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    X = sp.csr_matrix(X, dtype=np.float32)
    if not multilabel:
        return X, y
    lengths = np.fromiter((len(t) for t in y), dtype=np.int64, count=len(y))
    flat = np.fromiter((v for t in y for v in t), dtype=np.float64, count=int(lengths.sum()))
    if flat.size and (np.any(flat < 0) or np.any(flat != np.round(flat))):
        raise ValueError(f"{name}: multilabel labels must be non-negative integers")
    labels = flat.astype(np.int64)
    width = int(labels.max()) + 1 if labels.size else 0
    if n_labels is None:
        n_labels = width
    elif width > n_labels:
        raise ValueError(f"{name}: label {width - 1} is out of range for n_labels={n_labels}")
    rows = np.repeat(np.arange(len(y)), lengths)
    Y = sp.csr_matrix((np.ones(labels.size, dtype=np.float32), (rows, labels)),
                      shape=(len(y), n_labels))
    Y.sum_duplicates()
    Y.data[:] = 1.0
    return X, Y


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
