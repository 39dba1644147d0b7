"""Tests for fastfire.datasets against plain-Python references and the real data in FASTFIRE_DATA."""

import bz2
import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastfire import datasets
from fastfire.datasets import (
    dump_xc,
    get_data_home,
    load_arff,
    load_bibtex,
    load_corel5k,
    load_fashion_mnist,
    load_idx,
    load_svmlight,
    load_xc,
    make_extreme_classification,
)

DATA = os.environ.get("FASTFIRE_DATA")
needs_data = pytest.mark.skipif(
    not DATA or not Path(DATA).is_dir(), reason="FASTFIRE_DATA is not set to the shared data folder"
)


def _has(sub, *files):
    return bool(DATA) and all((Path(DATA) / sub / f).is_file() for f in files)


# ---------------------------------------------------------------------------------------------
# XC format: a naive reference parser


def naive_xc(text):
    lines = text.replace("\r\n", "\n").split("\n")
    n, d, L = map(int, lines[0].split())
    X = np.zeros((n, d), dtype=np.float32)
    Y = np.zeros((n, L), dtype=np.float32)
    for i, line in enumerate(lines[1:1 + n]):
        toks = line.split(" ")
        if toks and toks[0] and ":" not in toks[0]:
            for lab in toks[0].split(","):
                Y[i, int(lab)] = 1
            toks = toks[1:]
        for t in toks:
            if t.strip():
                f, v = t.split(":")
                X[i, int(f)] = np.float32(float(v))
    return X, Y


def write(tmp_path, text, name="data.txt", mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, newline="")
    return path


def test_load_xc_small(tmp_path):
    text = "4 5 3\n0,2 1:0.5 3:2\n 0:1 4:-1e-3\n1\n\n"
    X, Y = load_xc(write(tmp_path, text))
    Xr, Yr = naive_xc(text)
    assert X.format == "csr" and Y.format == "csr"
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert X.indices.dtype == np.int32 and Y.indices.dtype == np.int32
    np.testing.assert_array_equal(X.toarray(), Xr)
    np.testing.assert_array_equal(Y.toarray(), Yr)
    assert X.shape == (4, 5) and Y.shape == (4, 3)


def test_load_xc_line_endings_and_whitespace(tmp_path):
    text = "3 4 3\r\n2,0 3:1.5  0:2 \r\n3:1\t\r\n \r\n\r\n\n"
    X, Y = load_xc(write(tmp_path, text))
    np.testing.assert_array_equal(X.toarray(), [[2, 0, 0, 1.5], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(Y.toarray(), [[1, 0, 1], [0, 0, 0], [0, 0, 0]])
    assert X.has_sorted_indices
    assert np.all(np.diff(X.indices[:2]) > 0)


def test_load_xc_no_final_newline_and_bom(tmp_path):
    X, Y = load_xc(write(tmp_path, "\ufeff2 3 2\n1 0:1\n0 2:3".encode("utf-8")))
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 0], [0, 0, 3]])
    np.testing.assert_array_equal(Y.toarray(), [[0, 1], [1, 0]])


def test_load_xc_duplicate_labels_count_once(tmp_path):
    X, Y = load_xc(write(tmp_path, "1 2 4\n3,1,3 0:1\n"))
    np.testing.assert_array_equal(Y.toarray(), [[0, 1, 0, 1]])
    assert Y.nnz == 2


def test_load_xc_empty_dataset(tmp_path):
    X, Y = load_xc(write(tmp_path, "0 7 3\n"))
    assert X.shape == (0, 7) and Y.shape == (0, 3) and X.nnz == 0


def test_load_xc_long_lines_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets._xc, "_CHUNK", 64)  # lines longer than the read buffer
    rng = np.random.default_rng(0)
    X = sp.random(20, 500, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    Y = sp.random(20, 50, density=0.2, format="csr", random_state=rng)
    path = tmp_path / "long.txt"
    dump_xc(X, Y, path)
    X2, Y2 = load_xc(path)
    np.testing.assert_array_equal(X2.toarray(), X.toarray())
    np.testing.assert_array_equal(Y2.toarray(), (Y.toarray() != 0))


@st.composite
def xc_problems(draw):
    n = draw(st.integers(0, 12))
    d = draw(st.integers(1, 30))
    L = draw(st.integers(1, 20))
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    X = np.zeros((n, d), dtype=np.float32)
    Y = np.zeros((n, L), dtype=np.float32)
    for i in range(n):
        for j in draw(st.sets(st.integers(0, d - 1), max_size=d)):  # may be empty
            v = draw(floats)
            X[i, j] = v if v != 0 else 1.0
        for j in draw(st.sets(st.integers(0, L - 1), max_size=L)):  # may be empty
            Y[i, j] = 1
    return X, Y


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=xc_problems(), sparse_input=st.booleans(), gz=st.booleans())
def test_xc_round_trip(tmp_path, problem, sparse_input, gz):
    X, Y = problem
    path = tmp_path / ("rt.txt.gz" if gz else "rt.txt")
    dump_xc(sp.csr_matrix(X) if sparse_input else X, sp.csr_matrix(Y) if sparse_input else Y, path)
    X2, Y2 = load_xc(path)
    assert X2.shape == X.shape and Y2.shape == Y.shape
    np.testing.assert_array_equal(X2.toarray(), X)  # exact for float32
    np.testing.assert_array_equal(Y2.toarray(), Y)
    opener = gzip.open if gz else open
    with opener(path, "rt", newline="") as f:
        Xr, Yr = naive_xc(f.read())
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(Yr, Y)


def test_xc_round_trip_extreme_floats(tmp_path):
    vals = np.array([1e-45, -1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38, 0.1, 1 / 3,
                     123456789.0, 16777217.0, 2.5e-10], dtype=np.float32)
    X = vals[None, :]
    dump_xc(X, np.ones((1, 1)), tmp_path / "f.txt")
    X2, _ = load_xc(tmp_path / "f.txt")
    np.testing.assert_array_equal(X2.toarray(), X)


def test_load_xc_compressed(tmp_path):
    text = b"2 3 2\n0 1:0.25\n1 2:4\n"
    (tmp_path / "a.gz").write_bytes(gzip.compress(text))
    (tmp_path / "a.bz2").write_bytes(bz2.compress(text))
    ref = load_xc(write(tmp_path, text, "a.txt"))
    for name in ("a.gz", "a.bz2"):
        X, Y = load_xc(str(tmp_path / name))
        assert (X != ref[0]).nnz == 0 and (Y != ref[1]).nnz == 0


def test_load_xc_truncated_gzip(tmp_path):
    blob = gzip.compress(b"3 3 2\n0 1:0.25\n1 2:4\n0 0:1\n" * 50)
    path = write(tmp_path, blob[: len(blob) // 2], "t.gz")
    with pytest.raises(ValueError, match=r"t\.gz.*line \d+"):
        load_xc(path)


MALFORMED = [
    ("", 1, "missing header"),
    ("3 4\n", 1, "bad header"),
    ("a b c\n", 1, "bad header"),
    ("2 3 2 9\n", 1, "bad header"),
    ("-1 3 2\n", 1, "bad header"),
    ("2 3 2\n0 1:1\nx 1:1\n", 3, "label is not"),
    ("2 3 2\n0 1:1\n1,,0 1:1\n", 3, "label is not"),
    ("2 3 2\n0 1:1\n1.5 1:1\n", 3, "label is not"),
    ("2 3 2\n0 1:1\n2 1:1\n", 3, "label 2 is out of range"),
    ("2 3 2\n0 1:1\n99999999999999 1:1\n", 3, "out of range"),
    ("2 3 2\n0 1:1\n1 3:1\n", 3, "feature index 3 is out of range"),
    ("2 3 2\n0 1:1\n1 x:1\n", 3, "feature index is not"),
    ("2 3 2\n0 1:1\n1 -1:1\n", 3, "feature index is not"),
    ("2 3 2\n0 1:1\n1 2\n", 3, "missing ':'"),
    ("2 3 2\n0 1:1\n1 2 :1\n", 3, "missing ':'"),
    ("2 3 2\n0 1:1\n1 2:\n", 3, "missing or malformed value"),
    ("2 3 2\n0 1:1\n1 2: 1\n", 3, "missing or malformed value"),
    ("2 3 2\n0 1:1\n1 2:1.2.3\n", 3, "malformed value"),
    ("2 3 2\n0 1:1\n1 2:abc\n", 3, "malformed value"),
    ("2 3 2\n0 1:1\n1 2:1:2\n", 3, "malformed value"),
    ("2 3 2\n0 1:1\n1 2:nan\n", 3, "NaN or infinite"),
    ("2 3 2\n0 1:1\n1 2:-inf\n", 3, "NaN or infinite"),
    ("2 3 2\n0 1:1\n1 2:1e39\n", 3, "NaN or infinite"),
    ("2 3 2\n0 1:1\n1 2:1 2:3\n", 3, "appears twice"),
    ("2 3 2\n0 1:1\n1 2:1\n0 0:1\n", 4, "more lines"),
    ("2 3 2\n0 1:1\n1 2:1\n\n0 0:1\n", 5, "more lines"),
    ("3 3 2\n0 1:1\n1 2:1\n", 4, "fewer lines"),
    ("3 3 2\n0 1:1\n1 2:1", 4, "fewer lines"),
    ("2 3 2\n0 1:1\n1 2:1\x00\n", 3, "malformed value"),
    ("2 3 2\n0 1:1\r1 2:1\n", 2, "missing ':'"),
]


@pytest.mark.parametrize("text, line, what", MALFORMED)
def test_load_xc_malformed(tmp_path, text, line, what):
    path = write(tmp_path, text.encode("latin-1"), "bad.txt")
    with pytest.raises(ValueError) as info:
        load_xc(path)
    msg = str(info.value)
    assert "bad.txt" in msg
    assert f"line {line}:" in msg, msg
    assert what in msg, msg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200))
def test_load_xc_never_crashes(tmp_path, blob):
    path = write(tmp_path, b"3 5 4\n" + blob, "fuzz.txt")
    try:
        X, Y = load_xc(path)
    except ValueError as exc:
        assert re.search(r"fuzz\.txt: line \d+: ", str(exc))
    else:
        assert X.shape == (3, 5) and Y.shape == (3, 4)


def test_dump_xc_validation(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        dump_xc(np.array([[np.nan]]), np.ones((1, 1)), tmp_path / "x.txt")
    with pytest.raises(ValueError, match="rows"):
        dump_xc(np.ones((2, 2)), np.ones((3, 1)), tmp_path / "x.txt")


# ---------------------------------------------------------------------------------------------
# ARFF

ARFF = """% a comment
@relation 'test relation'

@attribute f0 numeric
@attribute 'feature one' REAL
@attribute "f 2" {0,1}
@attribute lab0 {0,1}
@attribute 'lab 1' {0,1}

@data
{0 0.5,2 1,3 1}
% comment inside data
{1 2.5}
{}
0,1.5,0,1,1
{0 1,4 1}
"""


def test_load_arff_sparse_and_dense_rows(tmp_path):
    X, Y, names = load_arff(write(tmp_path, ARFF, "t.arff"), n_labels=2)
    assert names == ["lab0", "lab 1"]
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 1], [0, 2.5, 0], [0, 0, 0], [0, 1.5, 0], [1, 0, 0]])
    np.testing.assert_array_equal(Y.toarray(), [[1, 0], [0, 0], [0, 0], [1, 1], [0, 1]])
    assert (Y.getnnz(axis=1) == 0).sum() == 2  # label-less rows
    assert X.dtype == Y.dtype == np.float32 and X.indices.dtype == np.int32


def test_load_arff_label_start(tmp_path):
    X, Y, names = load_arff(write(tmp_path, ARFF, "t.arff"), n_labels=1, label_location="start")
    assert names == ["f0"]
    np.testing.assert_array_equal(Y.toarray().ravel(), [1, 0, 0, 0, 1])
    assert X.shape == (5, 4)


def test_load_arff_xml_beside(tmp_path):
    write(tmp_path, ARFF, "toy-train-sparse.arff")
    write(tmp_path, '<?xml version="1.0"?><labels xmlns="http://mulan.sourceforge.net/labels">'
                    '<label name="lab0"></label><label name="lab 1"></label></labels>', "toy.xml")
    X, Y, names = load_arff(tmp_path / "toy-train-sparse.arff")
    assert names == ["lab0", "lab 1"] and Y.shape == (5, 2)


def test_load_arff_needs_n_labels(tmp_path):
    with pytest.raises(ValueError, match="n_labels is needed"):
        load_arff(write(tmp_path, ARFF, "nolabels.arff"))


@pytest.mark.parametrize("row, what", [
    ("{0 1,9 1}", "out of range"),
    ("{3 1,1 1}", "must increase"),
    ("{0 x}", "bad value"),
    ("{0 ?}", "missing values"),
    ("{0 nan}", "NaN"),
    ("{0 1", "does not end"),
    ("{0}", "is not 'index value'"),
    ("{a 1}", "not an integer"),
    ("1,2,3", "dense row has 3 values"),
])
def test_load_arff_malformed(tmp_path, row, what):
    text = ARFF.replace("{1 2.5}", row)
    with pytest.raises(ValueError, match=rf"bad\.arff: line 13: .*{re.escape(what)}"):
        load_arff(write(tmp_path, text, "bad.arff"), n_labels=2)


def test_load_arff_bad_header(tmp_path):
    with pytest.raises(ValueError, match=r"line 4: unsupported attribute type"):
        load_arff(write(tmp_path, ARFF.replace("numeric", "string"), "h.arff"), n_labels=2)
    with pytest.raises(ValueError, match="no @data"):
        load_arff(write(tmp_path, ARFF.split("@data")[0], "h.arff"), n_labels=2)


def test_load_arff_gz(tmp_path):
    (tmp_path / "t.arff.gz").write_bytes(gzip.compress(ARFF.encode()))
    X, Y, _ = load_arff(tmp_path / "t.arff.gz", n_labels=2)
    assert X.shape == (5, 3) and Y.nnz == 4


@needs_data
@pytest.mark.skipif(not _has("bibtex", "bibtex-train.arff", "bibtex-test.arff"), reason="no bibtex")
def test_real_bibtex():
    X, Y, names = load_bibtex("train")
    assert X.shape == (4880, 1836) and Y.shape == (4880, 159) and len(names) == 159
    assert names[0] == "TAG_2005"
    Xt, Yt, _ = load_bibtex("test")
    assert Xt.shape == (2515, 1836) and Yt.shape == (2515, 159)
    # the Mulan XML beside the file gives the same split
    X2, Y2, names2 = load_arff(Path(DATA) / "bibtex" / "bibtex-train.arff")
    assert names2 == names and (X2 != X).nnz == 0 and (Y2 != Y).nnz == 0
    assert set(np.unique(X.data)) == {1.0}
    assert 2.3 < Y.nnz / Y.shape[0] < 2.5  # label cardinality 2.40 in the literature


@needs_data
@pytest.mark.skipif(not _has("corel5k", "Corel5k-train-sparse.arff"), reason="no corel5k")
def test_real_corel5k():
    X, Y, names = load_corel5k("train")
    assert X.shape == (4500, 499) and Y.shape == (4500, 374) and len(names) == 374
    Xt, Yt, _ = load_corel5k("test")
    assert Xt.shape == (500, 499) and Yt.shape == (500, 374)
    X2, Y2, names2 = load_arff(Path(DATA) / "corel5k" / "Corel5k-train-sparse.arff")
    assert names2 == names and (Y2 != Y).nnz == 0
    assert 3.3 < Y.nnz / Y.shape[0] < 3.7  # label cardinality 3.52 in the literature
    # (the README says some rows have no label; in these files every row has at least one)
    assert Y.getnnz(axis=1).min() >= 1


# ---------------------------------------------------------------------------------------------
# svmlight, IDX, Fashion-MNIST


def test_load_svmlight(tmp_path):
    path = write(tmp_path, "1,3 1:0.5 4:1\n0 2:2\n 3:1\n", "m.svm")
    X, Y = load_svmlight(path, n_features=6, multilabel=True)
    assert X.dtype == np.float32 and X.shape == (3, 6)
    np.testing.assert_array_equal(Y.toarray(), [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    X, y = load_svmlight(write(tmp_path, "1 1:0.5\n-1 2:2\n", "b.svm"))
    np.testing.assert_array_equal(y, [1, -1])
    with pytest.raises(ValueError, match=r"c\.svm"):
        load_svmlight(write(tmp_path, "1 x:0.5\n", "c.svm"))


def idx_bytes(array, code):
    head = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype, code", [(np.uint8, 8), (np.int8, 9), (np.int16, 0x0B),
                                         (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_load_idx(tmp_path, dtype, code):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - 5).astype(dtype)
    write(tmp_path, idx_bytes(a, code), "a.idx")
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(a, code)))
    for name in ("a.idx", "a.idx.gz"):
        b = load_idx(tmp_path / name)
        assert b.dtype == np.dtype(dtype) and b.dtype.isnative
        np.testing.assert_array_equal(b, a)


def test_load_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((3, 2), np.uint8), 8)
    for blob, what in [(b"\x01\x00\x08\x01" + good[4:], "magic"), (good[:2], "magic"),
                       (good[:2] + b"\x07" + good[3:], "dtype code"), (good[:6], "header"),
                       (good[:-1], "truncated"), (good + b"\x00", "longer")]:
        with pytest.raises(ValueError, match=what):
            load_idx(write(tmp_path, blob, "bad.idx"))
    write(tmp_path, gzip.compress(good)[:-10], "bad.gz")
    with pytest.raises(ValueError, match="bad.gz"):
        load_idx(tmp_path / "bad.gz")


def test_fashion_mnist_not_found_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTFIRE_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(datasets._real, "_SYSTEM_DATA", str(tmp_path / "system"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test", data_home=tmp_path / "home")
    msg = str(info.value)
    for place in (tmp_path / "home", tmp_path / "env" / "fashion-mnist",
                  tmp_path / "system" / "fashion-mnist"):
        assert str(place) in msg
    assert "FASTFIRE_DATA" in msg and "apt install dataset-fashion-mnist" in msg
    monkeypatch.delenv("FASTFIRE_DATA")
    with pytest.raises(FileNotFoundError, match="FASTFIRE_DATA is not set"):
        load_fashion_mnist()
    with pytest.raises(FileNotFoundError, match="bibtex"):
        load_bibtex(data_home=tmp_path)
    with pytest.raises(ValueError, match="subset"):
        load_corel5k("valid")


def test_fashion_mnist_from_data_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFIRE_DATA", raising=False)
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images.astype(np.uint8), 8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([3, 1, 9], np.uint8), 8))
    X, y = load_fashion_mnist("test", data_home=tmp_path)
    assert X.shape == (3, 784) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X[0, :5], np.arange(5) / 255)
    assert X.max() <= 1 and X.min() >= 0
    X3, _ = load_fashion_mnist("test", data_home=tmp_path, flatten=False)
    assert X3.shape == (3, 28, 28)
    assert get_data_home(tmp_path) == tmp_path
    assert get_data_home() is None


@needs_data
@pytest.mark.skipif(not _has("fashion-mnist", "t10k-images-idx3-ubyte.gz"), reason="no Fashion-MNIST")
def test_real_fashion_mnist_test():
    X, y = load_fashion_mnist("test")
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


@needs_data  # about 0.5 s (2 s on a busy machine): not marked slow
@pytest.mark.skipif(not _has("fashion-mnist", "train-images-idx3-ubyte.gz"), reason="no Fashion-MNIST")
def test_real_fashion_mnist_train():
    X, y = load_fashion_mnist("train")
    assert X.shape == (60000, 784) and y.shape == (60000,)
    assert np.bincount(y).tolist() == [6000] * 10


# ---------------------------------------------------------------------------------------------
# make_extreme_classification


def test_make_xc_shapes_and_invariants():
    X, Y = make_extreme_classification(3000, 2000, 5000, random_state=0)
    assert X.shape == (3000, 2000) and Y.shape == (3000, 5000)
    assert X.format == Y.format == "csr" and X.dtype == Y.dtype == np.float32
    assert X.indices.dtype == np.int32 and X.has_sorted_indices
    assert X.getnnz(axis=1).min() >= 1 and Y.getnnz(axis=1).min() >= 1
    assert np.all(X.data > 0) and np.all(Y.data == 1)
    np.testing.assert_allclose(np.sqrt(X.multiply(X).sum(axis=1)).A1, 1, rtol=1e-5)
    assert 50 < X.getnnz(axis=1).mean() <= 75
    assert 3.5 < Y.getnnz(axis=1).mean() <= 5
    X.check_format(full_check=True)
    Y.check_format(full_check=True)


def test_make_xc_deterministic():
    a = make_extreme_classification(500, 300, 400, random_state=7)
    b = make_extreme_classification(500, 300, 400, random_state=np.random.RandomState(7))
    c = make_extreme_classification(500, 300, 400, random_state=8)
    assert (a[0] != b[0]).nnz == 0 and (a[1] != b[1]).nnz == 0
    assert (a[0] != c[0]).nnz > 0


def test_make_xc_power_law():
    _, Y = make_extreme_classification(20000, 1000, 2000, power_law_exponent=1.0, random_state=0)
    freq = np.sort(Y.getnnz(axis=0))[::-1]
    assert freq[0] > 20 * np.median(freq)
    _, Yu = make_extreme_classification(20000, 1000, 50, power_law_exponent=0.0, random_state=0)
    f = Yu.getnnz(axis=0)
    assert f.max() < 1.3 * f.min()


def test_make_xc_learnable():
    from fastfire.metrics import precision_at_k

    X, Y = make_extreme_classification(4000, 1000, 50, n_labels_per_sample=2, random_state=1)
    Xtr, Ytr, Xte, Yte = X[:3000], Y[:3000], X[3000:], Y[3000:]
    centroids = (Ytr.T @ Xtr).toarray()
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    scores = (Xte @ centroids.T)
    p1 = precision_at_k(Yte, scores, k=1)
    prior = np.asarray(Ytr.sum(axis=0)).ravel()
    chance = precision_at_k(Yte, np.tile(prior, (Xte.shape[0], 1)), k=1)
    assert p1 > 0.8 and p1 > chance + 0.4, (p1, chance)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_samples=0), "n_samples"),
    (dict(n_features=1.5), "n_features"),
    (dict(n_labels=-1), "n_labels"),
    (dict(n_nonzeros=0.5), "n_nonzeros"),
    (dict(n_labels_per_sample=11), "n_labels_per_sample"),
    (dict(power_law_exponent=-1), "power_law_exponent"),
    (dict(prototype_nnz=0), "prototype_nnz"),
    (dict(noise=1.5), "noise"),
    (dict(noise=float("nan")), "noise"),
])
def test_make_xc_validation(kwargs, name):
    params = dict(n_samples=10, n_features=20, n_labels=10) | kwargs
    with pytest.raises(ValueError, match=f"'{name}' parameter"):
        make_extreme_classification(**params)


def test_make_xc_tiny_edge_cases():
    X, Y = make_extreme_classification(5, 1, 1, n_nonzeros=1, n_labels_per_sample=1, noise=1.0,
                                       random_state=0)
    np.testing.assert_array_equal(X.toarray(), np.ones((5, 1)))
    np.testing.assert_array_equal(Y.toarray(), np.ones((5, 1)))


def test_float_formatter_exact_on_random_bit_patterns():
    from fastfire._core._xcparse import format_floats

    rng = np.random.default_rng(0)
    v = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    v = np.concatenate([v[np.isfinite(v)], np.array([0.0, -0.0, 1e9, 999999999.0, 1e-4, 16777217.0],
                                                    dtype=np.float32)])
    text = format_floats(v)
    back = np.array([float(s) for s in text]).astype(np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), v.view(np.uint32))
    assert sum(a != "%.9g" % b for a, b in zip(text, v)) <= len(v) // 1000  # printf's style
