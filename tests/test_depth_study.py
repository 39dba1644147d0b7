"""``fastfire bench depth``: the depth study (``fastfire._depth_study``) through the command."""

import io
import json
import re
import sys

import pytest

from fastfire._depth_study import METHODS, format_table, hidden_selector
from fastfire.cli import main

ROW = re.compile(r"^\| (\d+) +\| (\w+) +\| ([\d.]+|-) +\| ([\d.]+|-) +\| ([\d.]+|-) +"
                 r"\| ([\d.]+x|-) +\| (.*)\|$")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``bench depth --quick`` run with JSON and PNG output: (status, stdout, folder)."""
    folder = tmp_path_factory.mktemp("depth")
    capture = pytest.MonkeyPatch()  # capsys is function-scoped
    out, err = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", out)
    capture.setattr(sys, "stderr", err)
    try:
        status = main(["bench", "depth", "--quick", "--n-jobs", "1",
                       "--json", str(folder / "rows.json"), "--plot", str(folder / "depth.png")])
    finally:
        capture.undo()
    return status, out.getvalue(), err.getvalue(), folder


def _rows(table):
    return [m.groups() for m in map(ROW.match, table.splitlines()) if m]


def test_quick_prints_a_row_per_depth_and_method(quick_run):
    status, out, _, _ = quick_run
    assert status == 0
    rows = _rows(out)
    assert [(int(r[0]), r[1]) for r in rows] == [(d, m) for d in (1, 2) for m in METHODS], out
    for depth, method, accuracy, sparse, seconds, ratio, note in rows:
        if accuracy == "-":  # a method reported as unsupported must say why
            assert note.startswith("not supported on hidden layers: "), note
            continue
        assert 0.0 <= float(accuracy) <= 1.0
        assert (sparse != "-") == (method == "lsh")
        assert sparse == "-" or 0.0 <= float(sparse) <= 1.0
        assert float(seconds) >= 0.0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
    exact = [r for r in rows if r[1] == "exact"]
    assert all(r[5] == "1.00x" for r in exact)
    assert max(float(r[2]) for r in exact) > 0.5  # the reference learns on the quick data


def test_quick_writes_json_rows(quick_run):
    _, _, _, folder = quick_run
    doc = json.loads((folder / "rows.json").read_text())
    assert doc["config"]["data"] == "digits" and doc["config"]["layers"] == [1, 2]
    rows = doc["rows"]
    assert len(rows) == 2 * len(METHODS)
    for row in rows:
        if row["accuracy"] is None:
            assert row["status"] == "not supported on hidden layers" and row["reason"]
            continue
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["seconds_per_epoch"] > 0 and len(row["epoch_seconds"]) == 3
        assert all(s > 0 for s in row["epoch_seconds"])
        assert row["ratio_to_exact"] > 0
        assert (row["sparse_accuracy"] is not None) == (row["method"] == "lsh")


def test_quick_writes_png_or_says_matplotlib_is_missing(quick_run):
    _, out, err, folder = quick_run
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in err
        assert not (folder / "depth.png").exists()
        pytest.skip("matplotlib is not installed")
    assert (folder / "depth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {folder / 'depth.png'}" in out


@pytest.mark.parametrize("argv, message", [
    (["bench"], "the following arguments are required: study"),
    (["bench", "width"], "invalid choice: 'width'"),
    (["bench", "depth", "--layers", "0,1"], "is not a comma-separated list of positive integers"),
    (["bench", "depth", "--layers", "x"], "is not a comma-separated list of positive integers"),
    (["bench", "depth", "--methods", "exact,slide"], "unknown method 'slide'"),
    (["bench", "depth", "--epochs", "0"], "must be > 0"),
    (["bench", "depth", "--sampling-ratio", "1.5"], "must be in (0, 1]"),
    (["bench", "depth", "--threshold-b", "-1"], "must be >= 0"),
    (["bench", "depth", "--n-jobs", "0"], "must be a non-zero integer"),
])
def test_bad_options_give_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfire: error: ") and err.count("\n") == 1, err
    assert message in err


def test_missing_fashion_mnist_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTFIRE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        from fastfire.datasets import load_fashion_mnist

        load_fashion_mnist("test")
    except OSError:
        pass
    else:
        pytest.skip("Fashion-MNIST is installed system-wide")
    assert main(["bench", "depth", "--layers", "1", "--methods", "exact", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfire: error: ") and err.count("\n") == 1, err


def test_hidden_selectors_and_table_of_unsupported_rows():
    assert hidden_selector("exact", 1000, 0) == "dense"
    lsh = hidden_selector("lsh", 1000, 0, lsh_active=0.1)
    assert lsh.budget == 100 and lsh.min_active == 0  # really sparse, no random fill
    assert hidden_selector("sampled", 1000, 0, sampling_ratio=0.3).ratio == 0.3
    assert hidden_selector("threshold", 1000, 0, threshold_b=0.5).b == 0.5
    with pytest.raises(ValueError, match="method must be one of"):
        hidden_selector("slide", 1000, 0)
    row = {"depth": 3, "method": "lsh", "status": "not supported on hidden layers",
           "reason": "ValueError: nope", "accuracy": None, "sparse_accuracy": None,
           "seconds_per_epoch": None,
           "ratio_to_exact": None}
    assert _rows(format_table([row])) == [
        ("3", "lsh", "-", "-", "-", "-", "not supported on hidden layers: ValueError: nope ")]
