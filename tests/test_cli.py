"""The ``fastfire`` command, called through ``main([...])`` on small generated files."""

import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastfire
from fastfire.cli import main
from fastfire.datasets import dump_xc, make_extreme_classification

N_LABELS = 20


@pytest.fixture(scope="module")
def xc_files(tmp_path_factory):
    """A train and a test file in the XC text format, from one generated problem."""
    folder = tmp_path_factory.mktemp("xc")
    X, Y = make_extreme_classification(400, 300, N_LABELS, n_labels_per_sample=2, random_state=0)
    train, test = folder / "train.txt", folder / "test.txt"
    dump_xc(X[:300], Y[:300], train)
    dump_xc(X[300:], Y[300:], test)
    return train, test


@pytest.fixture(scope="module")
def model_file(xc_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    assert main(["train", str(xc_files[0]), "--model-out", str(path), "--epochs", "2",
                 "--hidden", "32", "--n-jobs", "1", "--quiet"]) == 0
    return path


def _error(capsys, argv):
    """Run a command that must fail; return its one-line stderr message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastfire: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_train_prints_one_line_per_epoch_and_saves(xc_files, tmp_path, capsys):
    train, test = xc_files
    out_path = tmp_path / "m.npz"
    assert main(["train", str(train), "--test", str(test), "--model-out", str(out_path),
                 "--epochs", "3", "--hidden", "32,16", "--batch-size", "32", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch +(\d)/3 +loss ([\d.]+) +([\d.]+)s "
                        r"+test P@1 ([\d.]+) +P@5 ([\d.]+)$", out, flags=re.MULTILINE)
    assert [e[0] for e in epochs] == ["1", "2", "3"], out
    losses = [float(e[1]) for e in epochs]
    assert losses[-1] < losses[0]
    assert all(0 <= float(e[3]) <= 1 and 0 <= float(e[4]) <= 1 for e in epochs)
    model = fastfire.load(out_path)
    assert model.hidden_layer_sizes == (32, 16) and model.n_iter_ == 3 * 10  # 10 chunks / epoch
    assert f"model saved to {out_path}" in out


def test_predict_prints_precision_and_writes_top_k(model_file, xc_files, tmp_path, capsys):
    out_path = tmp_path / "pred.txt"
    assert main(["predict", str(model_file), str(xc_files[1]), "--top-k", "4",
                 "--output", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"100 samples +P@1 [\d.]+ +P@3 [\d.]+ +P@5 [\d.]+$", out, re.MULTILINE), out
    lines = out_path.read_text().splitlines()
    assert len(lines) == 100
    for line in lines:
        labels = [int(v) for v in line.split(",")]
        assert len(labels) == len(set(labels)) == 4 and all(0 <= v < N_LABELS for v in labels)


def test_predict_to_stdout_keeps_metrics_on_stderr(model_file, xc_files, capsys):
    assert main(["predict", str(model_file), str(xc_files[1]), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 100
    assert all(re.fullmatch(r"\d+,\d+", line) for line in captured.out.splitlines())
    assert "P@1" in captured.err


def test_svmlight_and_arff_formats_are_sniffed(tmp_path, capsys):
    rng = np.random.RandomState(0)
    svm = tmp_path / "data.svm"
    svm.write_text("".join(f"{i % 3},{3 + i % 2} {1 + i % 5}:1 {6 + i % 4}:0.5\n"
                           for i in range(40)))
    arff = tmp_path / "data.arff"
    rows = [f"{{{i % 4} {rng.rand():.3f},{4 + i % 2} 1}}" for i in range(40)]
    arff.write_text("@relation r\n" + "".join(f"@attribute f{j} numeric\n" for j in range(4))
                    + "@attribute a {0,1}\n@attribute b {0,1}\n@data\n" + "\n".join(rows) + "\n")
    for path, extra in ((svm, []), (arff, ["--n-labels", "2"])):
        assert main(["train", str(path), "--epochs", "1", "--hidden", "8", "--n-jobs", "1",
                     *extra]) == 0, capsys.readouterr().err
        assert "epoch   1/1" in capsys.readouterr().out


def test_ctrl_c_stops_training_and_still_saves(xc_files, tmp_path, capsys, monkeypatch):
    original, calls = fastfire.MLPClassifier.partial_fit, []

    def partial_fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C here
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fastfire.MLPClassifier, "partial_fit", partial_fit)
    path = tmp_path / "m.npz"
    assert main(["train", str(xc_files[0]), "--epochs", "5", "--hidden", "8", "--n-jobs", "1",
                 "--model-out", str(path)]) == 130
    captured = capsys.readouterr()
    assert "interrupted (Ctrl-C) in epoch 1" in captured.err and "saved" in captured.err
    assert len(calls) == 3 and fastfire.load(path).n_iter_ == 3


def test_demo_quick_prints_both_rows_with_real_numbers(capsys):
    assert main(["demo", "--quick", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1 threads, OpenMP (on|OFF)", out)
    rows = re.findall(r"^\| (digits|extreme)[^|]*\| (scikit-learn|fastfire) +\| "
                      r"(accuracy|P@1) ([\d.]+) +\| ([\d.]+) +\| ([\d.]+)x +\|$", out, re.MULTILINE)
    assert [(r[0], r[1]) for r in rows] == [("digits", "scikit-learn"), ("digits", "fastfire"),
                                            ("extreme", "scikit-learn"), ("extreme", "fastfire")]
    for dataset, model, metric, score, seconds, speedup in rows:
        assert 0 <= float(score) <= 1 and float(seconds) > 0
    for sk_row, ff_row in ((rows[0], rows[1]), (rows[2], rows[3])):
        sk, ff, h = float(sk_row[4]), float(ff_row[4]), 0.005  # times are printed rounded
        assert (sk - h) / (ff + h) - 0.01 <= float(ff_row[5]) <= (sk + h) / max(ff - h, 1e-3) + 0.01
    assert float(rows[0][3]) > 0.5  # digits is learned in a few epochs


def test_info_shows_openmp(capsys):
    assert main(["info"]) == 0
    assert "OpenMP" in capsys.readouterr().out


def test_errors_are_one_line_with_status_2(xc_files, model_file, tmp_path, capsys):
    assert "missing.txt: No such file" in _error(capsys, ["train", str(tmp_path / "missing.txt")])
    bad = tmp_path / "bad.txt"
    bad.write_text("2 4 3\n0,x 1:0.5\n 0:1\n")
    assert "line 2" in _error(capsys, ["train", str(bad)])
    assert "--hidden" in _error(capsys, ["train", str(xc_files[0]), "--hidden", "32,abc"])
    assert "--epochs" in _error(capsys, ["train", str(xc_files[0]), "--epochs", "0"])
    assert "--n-jobs" in _error(capsys, ["demo", "--n-jobs", "0"])
    assert "invalid choice" in _error(capsys, ["fly"])
    assert "not a fastfire model" in _error(capsys, ["predict", str(bad), str(xc_files[1])])
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    assert "not a fastfire model" in _error(capsys, ["predict", str(tmp_path / "other.npz"),
                                                     str(xc_files[1])])
    wide = tmp_path / "wide.txt"
    wide.write_text("1 500 3\n0 450:1\n")
    assert "500 features, but the model has 300" in _error(
        capsys, ["predict", str(model_file), str(wide)])


def test_selection_is_auto_by_default_and_takes_one_name_per_layer(xc_files, tmp_path, capsys):
    from fastfire.nn.lsh import LSHLayer

    X, Y = make_extreme_classification(300, 200, 5000, n_labels_per_sample=2, random_state=1)
    wide = tmp_path / "wide.txt"
    dump_xc(X, Y, wide)
    path = tmp_path / "auto.npz"
    assert main(["train", str(wide), "--epochs", "1", "--hidden", "16", "--n-jobs", "1",
                 "--quiet", "--model-out", str(path)]) == 0
    model = fastfire.load(path)
    assert model.selection == "auto"
    assert isinstance(model._network.layers[-1], LSHLayer)  # 5000 labels: LSH on the output

    path = tmp_path / "listed.npz"
    assert main(["train", str(xc_files[0]), "--epochs", "1", "--hidden", "16", "--n-jobs", "1",
                 "--quiet", "--selection", "dense,lsh", "--model-out", str(path)]) == 0
    model = fastfire.load(path)
    assert model.selection == ["dense", "lsh"]
    assert isinstance(model._network.layers[-1], LSHLayer)
    assert not isinstance(model._network.layers[0], LSHLayer)

    assert "unknown selector 'fast'" in _error(
        capsys, ["train", str(xc_files[0]), "--selection", "dense,fast"])
    assert "2 weight layers" in _error(
        capsys, ["train", str(xc_files[0]), "--selection", "dense,dense,lsh", "--quiet"])


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("demo", "train", "predict", "info"))


def test_console_script_runs_as_module(tmp_path):  # run outside the source tree
    done = subprocess.run([sys.executable, "-m", "fastfire.cli", "info"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "OpenMP" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fastfire.cli", "train", "/nonexistent/data.txt"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "fastfire: error: /nonexistent/data.txt: No such file or directory\n"
