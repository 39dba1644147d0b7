"""Sparse (and dense) multi-label ARFF, as distributed with Mulan."""

import io
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fastfire.datasets._files import _DECOMPRESS_ERRORS, _open_binary

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
