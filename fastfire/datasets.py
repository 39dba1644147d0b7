"""Dataset loaders and synthetic generators.

Readers for the Extreme Classification Repository text format (:func:`load_xc`, :func:`dump_xc`),
sparse multi-label ARFF as distributed with Mulan (:func:`load_arff`), svmlight (:func:`load_svmlight`)
and IDX (:func:`load_idx`); loaders for the real datasets (:func:`load_fashion_mnist`,
:func:`load_bibtex`, :func:`load_corel5k`), found through ``$FASTFIRE_DATA``; and
:func:`make_extreme_classification`, a fast synthetic extreme multi-label problem.

Every reader raises :class:`ValueError` naming the file and the 1-based line on malformed input.
"""

import bz2
import gzip
import io
import lzma
import os
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = [
    "dump_xc",
    "get_data_home",
    "load_arff",
    "load_bibtex",
    "load_corel5k",
    "load_fashion_mnist",
    "load_idx",
    "load_svmlight",
    "load_xc",
    "make_extreme_classification",
]

_CHUNK = 16 << 20  # bytes read at a time by the streaming readers
_SYSTEM_DATA = "/usr/share/datasets"


# ---------------------------------------------------------------------------------------------
# files


def _open_binary(path):
    """Open `path` for binary reading, decompressing gzip, bzip2 or xz by magic bytes."""
    raw = open(path, "rb", buffering=0)
    try:
        magic = raw.read(6)
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    if magic[:3] == b"BZh":
        return bz2.BZ2File(io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    return raw, raw


_DECOMPRESS_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)


def _csr(data, indices, indptr, shape):
    """CSR float32 from canonical arrays: int32 indices when they fit, sorted indices flagged."""
    if indptr.size and indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32, copy=False)
    X = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    X.has_sorted_indices = True
    return X


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
    from fastfire._core._xcparse import FEATURE_BYTES, LABEL_BYTES, ROW_BYTES, format_rows

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


def _unquote(token):
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def _split_nominal(spec):
    """The values of a nominal type ``{a,b,'c d'}``."""
    return [_unquote(v) for v in re.findall(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,]+""", spec)
            if v.strip()]


def _mulan_labels(path):
    """Label names from the Mulan XML beside `path` (bibtex-train.arff -> bibtex.xml), or None."""
    path = Path(path)
    stem = path.name
    for suffix in (".gz", ".bz2", ".xz", ".arff"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    while stem:
        candidate = path.with_name(stem + ".xml")
        if candidate.is_file():
            try:
                root = ET.parse(candidate).getroot()
            except ET.ParseError as exc:
                raise ValueError(f"{candidate}: not a valid Mulan label XML file ({exc})") from None
            return [el.get("name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
        cut = max(stem.rfind("-"), stem.rfind("_"))
        stem = stem[:cut] if cut > 0 else ""
    return None


def _arff_value(token, attr, name, line):
    """One ARFF value as float: a number, or a nominal value's position in its declaration."""
    token = _unquote(token)
    try:
        value = float(token)
    except ValueError:
        nominal = attr[1]
        if token == "?":
            raise ValueError(f"{name}: line {line}: missing values ('?') are not supported") from None
        if nominal is None or token not in nominal:
            raise ValueError(f"{name}: line {line}: bad value {token!r} for attribute {attr[0]!r}") from None
        return float(nominal.index(token))
    if not np.isfinite(value):
        raise ValueError(f"{name}: line {line}: NaN or infinite value for attribute {attr[0]!r}")
    return value


def _check_sparse_row(body, attrs, name, lineno):
    """Parse one sparse row entry by entry (the slow path), raising ValueError with the reason."""
    idx, val = [], []
    entries = body.split(",") if body.strip() else []
    for entry in entries:
        parts = entry.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{name}: line {lineno}: sparse entry {entry.strip()!r} is not 'index value'")
        try:
            j = int(parts[0])
        except ValueError:
            raise ValueError(
                f"{name}: line {lineno}: attribute index {parts[0]!r} is not an integer") from None
        if not 0 <= j < len(attrs):
            raise ValueError(f"{name}: line {lineno}: attribute index {j} out of range [0, {len(attrs)})")
        idx.append(j)
        val.append(_arff_value(parts[1], attrs[j], name, lineno))
    return idx, val


def load_arff(path, n_labels=None, label_location="end"):
    """Load a multi-label ARFF file (sparse rows as in Mulan, dense rows as a fallback).

    The header declares ``@attribute name type`` lines (``numeric``/``real``/``integer`` or a
    nominal ``{0,1}``; names may be quoted; ``%`` starts a comment); after ``@data`` each row is
    either sparse, ``{index value,index value,...}`` with increasing indices, or dense,
    ``v1,v2,...``. The labels are a block of ``n_labels`` attributes at the end (or the start).

    Parameters
    ----------
    path : str or path-like
        The ARFF file (gzip/bzip2/xz compressed files are recognised).
    n_labels : int, default=None
        How many attributes are labels. None reads the label names from the Mulan XML file beside
        the ARFF file with the same stem (``bibtex.xml`` for ``bibtex-train.arff``,
        ``Corel5k.xml`` for ``Corel5k-train-sparse.arff``); when those names are attributes but not
        the declared block, their positions are used.
    label_location : {"end", "start"}, default="end"
        Where the label block is.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_features), dtype float32
        Feature values (explicit zeros dropped).
    Y : scipy.sparse.csr_matrix of shape (n_samples, n_labels), dtype float32
        Label indicator: a label is present where its value is non-zero.
    label_names : list of str
        The label attributes' names, in column order of Y.

    Raises
    ------
    ValueError
        A malformed file (the message names the file and the line), or `n_labels` is None and no
        Mulan XML file was found.
    """
    if label_location not in ("end", "start"):
        raise ValueError(f"label_location must be 'end' or 'start'; got {label_location!r}")
    name = os.fspath(path)
    attrs = []
    all_idx, all_val, row_len, row_line = [], [], [], []
    stream, raw = _open_binary(path)
    with raw, stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)
        lineno = 0
        in_data = False
        n_rows = 0
        try:
            for line in text:
                lineno += 1
                s = line.strip()
                if not s or s[0] == "%":
                    continue
                if not in_data:
                    key = s.split(None, 1)[0].lower()
                    if key == "@relation":
                        continue
                    if key == "@attribute":
                        m = _QUOTED.match(s[len("@attribute"):])
                        if m is None or not m.group(2).strip():
                            raise ValueError(f"{name}: line {lineno}: bad @attribute line")
                        typ = m.group(2).strip()
                        if typ.startswith("{"):
                            if not typ.endswith("}"):
                                raise ValueError(f"{name}: line {lineno}: unterminated nominal type")
                            attrs.append((_unquote(m.group(1)), _split_nominal(typ[1:-1])))
                        elif typ.lower() in ("numeric", "real", "integer"):
                            attrs.append((_unquote(m.group(1)), None))
                        else:
                            raise ValueError(
                                f"{name}: line {lineno}: unsupported attribute type {typ!r} "
                                "(numeric, real, integer or nominal {...} only)")
                        continue
                    if key == "@data":
                        if not attrs:
                            raise ValueError(f"{name}: line {lineno}: @data before any @attribute")
                        in_data = True
                        n_attr = len(attrs)
                        continue
                    raise ValueError(f"{name}: line {lineno}: unexpected header line {s[:40]!r}")
                if s[0] == "{":
                    if not s.endswith("}"):
                        raise ValueError(f"{name}: line {lineno}: sparse row does not end with '}}'")
                    body = s[1:-1]
                    toks = body.replace(",", " ").split()
                    try:
                        if len(toks) != (2 * (body.count(",") + 1) if toks else 0):
                            raise ValueError  # quoted values or a malformed entry
                        idx = list(map(int, toks[0::2]))
                        val = list(map(float, toks[1::2]))
                    except ValueError:
                        idx, val = _check_sparse_row(body, attrs, name, lineno)
                else:
                    toks = s.split(",")
                    if len(toks) != n_attr:
                        raise ValueError(
                            f"{name}: line {lineno}: dense row has {len(toks)} values, expected {n_attr}")
                    try:
                        val = list(map(float, toks))
                    except ValueError:
                        val = [_arff_value(t, attrs[j], name, lineno) for j, t in enumerate(toks)]
                    idx = range(n_attr)
                all_idx.extend(idx)
                all_val.extend(val)
                row_len.append(len(val))
                row_line.append(lineno)
                n_rows += 1
        except _DECOMPRESS_ERRORS as exc:
            raise ValueError(
                f"{name}: line {lineno + 1}: corrupt or truncated compressed data ({exc})") from None
    if not in_data:
        raise ValueError(f"{name}: line {lineno}: no @data section")

    cols = np.asarray(all_idx, dtype=np.int64)
    vals = np.asarray(all_val, dtype=np.float64)
    row_len = np.asarray(row_len, dtype=np.int64)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), row_len)
    starts = np.zeros(row_len.size + 1, dtype=np.int64)
    np.cumsum(row_len, out=starts[1:])
    bad = (cols < 0) | (cols >= n_attr) | ~np.isfinite(vals)
    step = np.ones(cols.size, dtype=bool)
    step[1:] = cols[1:] > cols[:-1]
    step[starts[:-1][row_len > 0]] = True  # a row's first entry has no predecessor
    bad |= ~step
    if bad.any():
        r = int(rows[np.argmax(bad)])
        line = row_line[r]
        row_cols = cols[starts[r]:starts[r + 1]]
        row_vals = vals[starts[r]:starts[r + 1]]
        for i, (j, v) in enumerate(zip(row_cols, row_vals)):
            if not 0 <= j < n_attr:
                raise ValueError(f"{name}: line {line}: attribute index {j} out of range [0, {n_attr})")
            if i and j <= row_cols[i - 1]:
                raise ValueError(f"{name}: line {line}: attribute indices must increase "
                                 f"({j} after {row_cols[i - 1]})")
            if not np.isfinite(v):
                raise ValueError(f"{name}: line {line}: NaN or infinite value for attribute "
                                 f"{attrs[j][0]!r}")
    nonzero = vals != 0
    rows, cols, vals = rows[nonzero], cols[nonzero], vals[nonzero]

    names = [a[0] for a in attrs]
    if n_labels is None:
        xml_names = _mulan_labels(path)
        if xml_names is None:
            raise ValueError(
                f"{name}: n_labels is needed: pass n_labels=... or put the Mulan label XML file "
                "(e.g. bibtex.xml for bibtex-train.arff) beside the ARFF file")
        n_labels = len(xml_names)
        block = names[n_attr - n_labels:] if label_location == "end" else names[:n_labels]
        if set(block) != set(xml_names):
            where = {a: i for i, a in enumerate(names)}
            missing = [a for a in xml_names if a not in where]
            if missing:
                raise ValueError(f"{name}: labels named in the Mulan XML file are not attributes: "
                                 f"{missing[:5]}")
            label_cols = np.sort([where[a] for a in xml_names])
        else:
            label_cols = None
    else:
        label_cols = None
    if label_cols is None:
        n_labels = int(n_labels)
        if not 0 <= n_labels <= n_attr:
            raise ValueError(f"n_labels must be in [0, {n_attr}] for {name}; got {n_labels}")
        start = n_attr - n_labels if label_location == "end" else 0
        label_cols = np.arange(start, start + n_labels)

    is_label = np.zeros(n_attr, dtype=bool)
    is_label[label_cols] = True
    new_col = np.empty(n_attr, dtype=np.int64)
    new_col[label_cols] = np.arange(label_cols.size)
    new_col[~is_label] = np.arange(n_attr - label_cols.size)
    lab = is_label[cols]
    shape_x = (n_rows, n_attr - label_cols.size)
    X = sp.csr_matrix((vals[~lab].astype(np.float32), (rows[~lab], new_col[cols[~lab]])),
                      shape=shape_x, dtype=np.float32)
    Y = sp.csr_matrix((np.ones(int(lab.sum()), dtype=np.float32), (rows[lab], new_col[cols[lab]])),
                      shape=(n_rows, label_cols.size), dtype=np.float32)
    for M in (X, Y):
        M.sum_duplicates()
        M.indices = M.indices.astype(np.int32, copy=False)
        M.indptr = M.indptr.astype(np.int32, copy=False)
    return X, Y, [names[c] for c in label_cols]


# ---------------------------------------------------------------------------------------------
# svmlight and IDX


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


def load_idx(path):
    """Load an IDX file (the MNIST format), plain or gzip-compressed.

    Parameters
    ----------
    path : str or path-like
        The file: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
        0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
        uint32, then the data in big-endian C order.

    Returns
    -------
    array : ndarray
        The data, native byte order, with the file's shape.

    Raises
    ------
    ValueError
        Bad magic number, unknown dtype code, truncated or over-long file.
    """
    name = os.fspath(path)
    stream, raw = _open_binary(path)
    with raw, stream:
        try:
            data = stream.read()
        except _DECOMPRESS_ERRORS as exc:
            raise ValueError(f"{name}: corrupt or truncated compressed data ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02X}")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(data) - head != expected:
        what = "truncated" if len(data) - head < expected else "longer than its header says"
        raise ValueError(f"{name}: IDX file is {what}: shape {shape} needs {expected} data bytes, "
                         f"found {len(data) - head}")
    array = np.frombuffer(data, dtype=dtype, offset=head).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------------
# real datasets


def get_data_home(data_home=None):
    """The folder holding fastfire's real datasets.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Returned as is when given.

    Returns
    -------
    path : pathlib.Path or None
        `data_home`, else ``$FASTFIRE_DATA``, else None. Loaders also look in
        ``/usr/share/datasets`` (Debian's ``dataset-*`` packages).
    """
    if data_home is not None:
        return Path(data_home)
    env = os.environ.get("FASTFIRE_DATA")
    return Path(env) if env else None


def _find(dataset, filenames, data_home, how_to_get):
    """The first folder holding all `filenames` (each possibly with a '.gz' variant)."""
    places = []
    if data_home is not None:
        places += [Path(data_home) / dataset, Path(data_home)]
    env = os.environ.get("FASTFIRE_DATA")
    places.append(Path(env) / dataset if env else None)
    places.append(Path(_SYSTEM_DATA) / dataset)
    for place in places:
        if place is None:
            continue
        found = []
        for options in filenames:
            hit = next((place / f for f in options if (place / f).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    looked = "\n".join(
        f"  - {p}" if p is not None else "  - $FASTFIRE_DATA/" + dataset + " (FASTFIRE_DATA is not set)"
        for p in places
    )
    raise FileNotFoundError(
        f"{dataset} not found (files {', '.join(o[0] for o in filenames)}). Looked in:\n{looked}\n"
        f"{how_to_get}"
    )


def _check_subset(subset):
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test'; got {subset!r}")


def load_fashion_mnist(subset="train", data_home=None, flatten=True):
    """Load Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from local IDX files.

    Looks in `data_home` (and ``data_home/fashion-mnist``), then ``$FASTFIRE_DATA/fashion-mnist``,
    then ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Nothing is
    downloaded.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        60,000 training or 10,000 test images.
    data_home : str or path-like, default=None
        A folder to look in first.
    flatten : bool, default=True
        Return images as rows of 784 pixels; False keeps them 28 x 28.

    Returns
    -------
    X : ndarray of shape (n, 784) or (n, 28, 28), dtype float32
        Pixels scaled to [0, 1].
    y : ndarray of shape (n,), dtype int64
        Classes 0-9.

    Raises
    ------
    FileNotFoundError
        No folder holds the files; the message lists every place looked in and how to get them.
    """
    _check_subset(subset)
    prefix = "train" if subset == "train" else "t10k"
    images, labels = _find(
        "fashion-mnist",
        [[f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"],
         [f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte"]],
        data_home,
        "Get the data with `apt install dataset-fashion-mnist` (Debian), or download the four "
        "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into "
        "$FASTFIRE_DATA/fashion-mnist and set FASTFIRE_DATA.",
    )
    X = load_idx(images)
    y = load_idx(labels).astype(np.int64)
    if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{images}: unexpected shapes {X.shape} (images) and {y.shape} (labels)")
    X = X.astype(np.float32)
    X *= np.float32(1.0 / 255.0)
    if flatten:
        X = X.reshape(X.shape[0], -1)
    return X, y


_MULAN_HOW = ("Get the Mulan multi-label datasets (https://mulan.sourceforge.net/datasets-mlc.html), "
              "unpack them into $FASTFIRE_DATA/{0} and set FASTFIRE_DATA.")


def load_bibtex(subset="train", data_home=None):
    """Load Bibtex (Katakis et al. 2008; 1,836 features, 159 labels) from its Mulan ARFF files.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        4,880 training or 2,515 test entries.
    data_home : str or path-like, default=None
        A folder to look in before ``$FASTFIRE_DATA/bibtex``.

    Returns
    -------
    X, Y, label_names
        As :func:`load_arff`.
    """
    _check_subset(subset)
    (path,) = _find("bibtex", [[f"bibtex-{subset}.arff", f"bibtex-{subset}.arff.gz"]], data_home,
                    _MULAN_HOW.format("bibtex"))
    return load_arff(path, n_labels=159)


def load_corel5k(subset="train", data_home=None):
    """Load Corel5k (Duygulu et al. 2002; 499 features, 374 labels) from its Mulan ARFF files.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        4,500 training or 500 test images.
    data_home : str or path-like, default=None
        A folder to look in before ``$FASTFIRE_DATA/corel5k``.

    Returns
    -------
    X, Y, label_names
        As :func:`load_arff`.
    """
    _check_subset(subset)
    (path,) = _find("corel5k", [[f"Corel5k-{subset}-sparse.arff", f"Corel5k-{subset}.arff",
                                 f"Corel5k-{subset}-sparse.arff.gz"]], data_home,
                    _MULAN_HOW.format("corel5k"))
    return load_arff(path, n_labels=374)


# ---------------------------------------------------------------------------------------------
# synthetic extreme classification


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
