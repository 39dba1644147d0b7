"""The depth study of Ebrahimi, Advani and Asudeh (EDBT 2025), runnable as ``fastfire bench depth``.

MLPs with 1 to 7 hidden layers of 1,000 ReLU units are trained on Fashion-MNIST with every hidden
layer computed by one method (the output layer stays dense):

- ``"exact"``: every layer dense (BLAS GEMM), the reference;
- ``"lsh"``: SLIDE-style LSH node selection, a ``lsh_active`` share of each hidden layer active
  per sample (no random fill, so the layer really is sparse);
- ``"sampled"``: column-row sampled products (Bernoulli-CRS, ``sampling_ratio`` of the pairs);
- ``"threshold"``: shifted-ReLU threshold firing with threshold ``threshold_b`` (``b = 0`` is an
  exact ReLU network whose firing entries are passed on sparsely).

For each (depth, method) the study reports the test accuracy (exact, dense prediction), the mean
wall-clock seconds per training epoch and its ratio to the exact method at the same depth. LSH
rows also report the accuracy of LSH inference: every hidden layer computes only the units it
retrieves from its hash tables, as in training (fastfire's own prediction is exact, which computes
units that a sparse layer trained rarely or never).
"""

import json
import math
import time
import warnings

import numpy as np

__all__ = ["METHODS", "format_table", "hidden_selector", "plot_depth_study", "run_depth_study",
           "write_json"]

#: The methods of the study, in table order.
METHODS = ("exact", "lsh", "sampled", "threshold")

# a row whose test accuracy stays below this multiple of chance is marked "no learning"
_CHANCE_FACTOR = 1.5


def hidden_selector(method, width, seed, *, lsh_active=0.1, sampling_ratio=0.5, threshold_b=0.0):
    """The selector that computes one hidden layer of ``width`` units with ``method``.

    Parameters
    ----------
    method : {"exact", "lsh", "sampled", "threshold"}
        The method of the study.
    width : int
        Units of the hidden layer.
    seed : int
        Seed of the selector's own randomness (hash functions, sampling stream).
    lsh_active : float in (0, 1], default=0.1
        ``"lsh"``: share of the layer's units retrieved per sample (the LSH ``budget``). The
        random fill of :class:`fastfire.LSH` (``min_active``) is switched off: its default of
        1,000 units would make a 1,000-unit hidden layer fully active.
    sampling_ratio : float in (0, 1], default=0.5
        ``"sampled"``: share of the column-row pairs kept in each training product.
    threshold_b : float, default=0.0
        ``"threshold"``: firing threshold ``b >= 0`` of the shifted ReLU.

    Returns
    -------
    selector : str or Selector
        ``"dense"`` for ``"exact"``, else a fresh selector instance.
    """
    from fastfire.nn.lsh import LSH
    from fastfire.nn.sampling import ColumnRowSampling
    from fastfire.nn.threshold import Threshold

    if method == "exact":
        return "dense"
    if method == "lsh":
        budget = max(1, round(lsh_active * width))
        k = max(1, min(12, round(math.log2(max(2, width / 16)))))  # ~16 units per bucket
        return LSH(k=k, l=20, budget=budget, min_active=0, label_forcing=False,
                   random_state=seed)
    if method == "sampled":
        return ColumnRowSampling(scheme="bernoulli", ratio=sampling_ratio, random_state=seed)
    if method == "threshold":
        return Threshold(b=threshold_b)
    raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}.")


def _load_data(data, n_train, n_test, seed):
    """``(X_train, y_train, X_test, y_test, description)`` of the study's data set."""
    if data == "fashion-mnist":
        from fastfire.datasets import load_fashion_mnist

        Xtr, ytr = load_fashion_mnist("train")
        Xte, yte = load_fashion_mnist("test")
    elif data == "digits":  # built into scikit-learn: tiny runs that need no files
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    else:
        raise ValueError(f"data must be 'fashion-mnist' or 'digits'; got {data!r}.")
    rng = np.random.RandomState(seed)
    tr = rng.permutation(len(ytr))[: n_train or len(ytr)]
    te = np.arange(len(yte))[: n_test or len(yte)]
    Xtr, ytr, Xte, yte = Xtr[tr], ytr[tr], Xte[te], yte[te]
    what = f"{data}: {len(ytr)} training and {len(yte)} test samples, {Xtr.shape[1]} features"
    return Xtr, ytr, Xte, yte, what


def _lsh_inference_accuracy(model, X, y, n_threads, chunk=1024):
    """Test accuracy when every LSH layer computes only its retrieved units, as in training.

    The other layers compute exactly; no training state is changed (no random fill, no labels).
    """
    from fastfire.nn.active import ActiveSet

    layers = model._network.layers
    correct = 0
    for start in range(0, X.shape[0], chunk):
        acts = ActiveSet.from_data(X[start:start + chunk])
        for layer in layers:
            if hasattr(layer, "query"):  # an LSH layer: retrieved units only
                active = layer.query(acts, n_threads, labels=False, min_active=0)
                acts = layer.forward_active(acts, active, n_threads)
            else:
                acts = layer.forward(acts, n_threads)
        predicted = model.classes_[np.argmax(acts.to_dense(), axis=1)]
        correct += int(np.sum(predicted == y[start:start + chunk]))
    return correct / X.shape[0]


def run_depth_study(layers=range(1, 8), methods=METHODS, *, width=1000, data="fashion-mnist",
                    n_train=None, n_test=None, epochs=2, batch_size=128, learning_rate=1e-3,
                    n_jobs=None, seed=0, lsh_active=0.1, sampling_ratio=0.5, threshold_b=0.0,
                    progress=None):
    """Train an MLP per (depth, method) and measure test accuracy and seconds per epoch.

    Each network has ``depth`` hidden ReLU layers of ``width`` units, all computed by the method
    (see :func:`hidden_selector`), and a dense softmax output layer. It is trained with Adam for
    ``epochs`` epochs of ``partial_fit`` over a fresh permutation of the training set (the same
    permutations for every method); every epoch is timed. Accuracy is measured with exact (dense)
    prediction on the test set and, for ``"lsh"``, also with LSH inference (each hidden layer
    computes only the units its hash tables retrieve, as during training). A method whose training raises an error is reported as not
    supported on hidden layers, with the error, and the study goes on.

    Parameters
    ----------
    layers : iterable of int, default=range(1, 8)
        Numbers of hidden layers to try.
    methods : iterable of str, default=METHODS
        Methods among ``"exact"``, ``"lsh"``, ``"sampled"``, ``"threshold"``. The ratio column
        needs ``"exact"``.
    width : int, default=1000
        Units per hidden layer.
    data : {"fashion-mnist", "digits"}, default="fashion-mnist"
        Fashion-MNIST (files found by :func:`fastfire.datasets.load_fashion_mnist`), or
        scikit-learn's built-in 8x8 digits for tiny runs.
    n_train, n_test : int or None, default=None
        Use a random subset of this many training samples and the first ``n_test`` test
        samples; None takes them all.
    epochs : int, default=2
        Training epochs per network.
    batch_size : int, default=128
        Mini-batch size.
    learning_rate : float, default=1e-3
        Adam step size.
    n_jobs : int or None, default=None
        Threads (None: all cores).
    seed : int, default=0
        Seed of the subset, the weights, the permutations and the selectors.
    lsh_active, sampling_ratio, threshold_b : float
        Parameters of the methods, see :func:`hidden_selector`.
    progress : callable or None, default=None
        Called with each finished row (a dict), e.g. to print it.

    Returns
    -------
    rows : list of dict
        One per (depth, method), in that order, with keys ``depth``, ``method``, ``status``
        (``"ok"``, ``"no learning"`` when test accuracy stays below 1.5 times chance, or
        ``"not supported on hidden layers"``), ``reason`` (the error, or None),
        ``accuracy``, ``sparse_accuracy`` (LSH inference; None for the other methods),
        ``seconds_per_epoch``, ``epoch_seconds`` (a list), ``ratio_to_exact``
        (seconds per epoch over exact's at the same depth, None without exact) and
        ``final_loss``; the numbers are None for unsupported rows.
    """
    import fastfire

    layers, methods = [int(d) for d in layers], list(methods)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}.")
    if not layers or min(layers) < 1:
        raise ValueError(f"layers must be a non-empty list of depths >= 1; got {layers!r}.")
    Xtr, ytr, Xte, yte, _ = _load_data(data, n_train, n_test, seed)
    classes = np.unique(ytr)
    chance = 1.0 / len(classes)
    perm_rng = np.random.RandomState(seed + 1)
    orders = [perm_rng.permutation(len(ytr)) for _ in range(epochs)]
    epoch_data = None  # the shuffled copies are made once, outside the timed region
    rows = []
    for depth in layers:
        exact_seconds = None
        for method in sorted(methods, key=lambda m: m != "exact"):  # exact first: the ratio
            row = {"depth": depth, "method": method, "status": "ok", "reason": None,
                   "accuracy": None, "sparse_accuracy": None, "seconds_per_epoch": None, "epoch_seconds": None,
                   "ratio_to_exact": None, "final_loss": None}
            selection = [hidden_selector(method, width, seed + 7919 * i, lsh_active=lsh_active,
                                         sampling_ratio=sampling_ratio, threshold_b=threshold_b)
                         for i in range(depth)] + ["dense"]
            model = fastfire.MLPClassifier(
                hidden_layer_sizes=(width,) * depth, selection=selection, solver="adam",
                batch_size=batch_size, learning_rate_init=learning_rate, shuffle=False,
                n_jobs=n_jobs, random_state=seed,
            )
            if epoch_data is None:
                epoch_data = [(Xtr[order], ytr[order]) for order in orders]
            seconds = []
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for X, y in epoch_data:
                        tic = time.perf_counter()
                        model.partial_fit(X, y, classes=classes)
                        seconds.append(time.perf_counter() - tic)
                    accuracy = float(model.score(Xte, yte))
                    if method == "lsh":
                        row["sparse_accuracy"] = _lsh_inference_accuracy(
                            model, Xte, yte, fastfire.effective_n_threads(n_jobs))
            except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
                row["status"] = "not supported on hidden layers"
                row["reason"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            else:
                row.update(accuracy=accuracy, epoch_seconds=seconds,
                           seconds_per_epoch=float(np.mean(seconds)),
                           final_loss=float(model.loss_))
                best = max(accuracy, row["sparse_accuracy"] or 0.0)
                if not np.isfinite(model.loss_) or best < _CHANCE_FACTOR * chance:
                    row["status"] = "no learning"
                    row["reason"] = (f"test accuracy {accuracy:.3f} (chance {chance:.3f}), "
                                     f"training loss {model.loss_curve_[0]:.3f} -> "
                                     f"{model.loss_curve_[-1]:.3f}")
                if method == "exact":
                    exact_seconds = row["seconds_per_epoch"]
                if exact_seconds:
                    row["ratio_to_exact"] = row["seconds_per_epoch"] / exact_seconds
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def format_table(rows):
    """A markdown table of the study's rows (as returned by :func:`run_depth_study`).

    Parameters
    ----------
    rows : list of dict

    Returns
    -------
    table : str
        Columns: hidden layers, method, test accuracy (exact prediction), test accuracy with
        LSH inference (LSH rows), s/epoch, s/epoch relative to exact at the same depth, and a
        note (the reason when a row did not learn or is unsupported).
    """
    header = ("hidden layers", "method", "test accuracy", "LSH inference", "s/epoch", "vs exact",
              "note")
    lines = []
    for r in rows:
        if r["accuracy"] is None:
            cells = (str(r["depth"]), r["method"], "-", "-", "-", "-",
                     f"{r['status']}: {r['reason']}")
        else:
            ratio = "-" if r["ratio_to_exact"] is None else f"{r['ratio_to_exact']:.2f}x"
            sparse = "-" if r.get("sparse_accuracy") is None else f"{r['sparse_accuracy']:.4f}"
            note = "" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
            cells = (str(r["depth"]), r["method"], f"{r['accuracy']:.4f}", sparse,
                     f"{r['seconds_per_epoch']:.2f}", ratio, note)
        lines.append(cells)
    widths = [max(len(c[i]) for c in lines + [header]) for i in range(len(header))]
    out = [header, tuple("-" * w for w in widths)] + lines
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
                     for r in out)


def write_json(rows, path, config=None):
    """Write the rows (and the study's settings) as JSON.

    Parameters
    ----------
    rows : list of dict
        As returned by :func:`run_depth_study`.
    path : str or path-like
        The file to write.
    config : dict or None, default=None
        The settings of the run, stored under ``"config"``.
    """
    with open(path, "w") as f:
        json.dump({"config": config or {}, "rows": rows}, f, indent=1)
        f.write("\n")


def plot_depth_study(rows, path, title=None):
    """Draw test accuracy and seconds per epoch against depth, one line per method, as a PNG.

    Rows without numbers (unsupported) are left out of their method's line; LSH inference
    accuracy is a dashed line in the colour of its method.

    Parameters
    ----------
    rows : list of dict
        As returned by :func:`run_depth_study`.
    path : str or path-like
        The PNG file to write.
    title : str or None, default=None
        A title over both panels.

    Raises
    ------
    ImportError
        matplotlib (an optional dependency) is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(9, 3.6))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    for method, marker in zip(methods, "osD^"):
        mine = [r for r in rows if r["method"] == method and r["accuracy"] is not None]
        depths = [r["depth"] for r in mine]
        line, = ax_acc.plot(depths, [r["accuracy"] for r in mine], marker=marker, label=method)
        if any(r.get("sparse_accuracy") is not None for r in mine):
            ax_acc.plot(depths, [r["sparse_accuracy"] for r in mine], marker=marker,
                        linestyle="--", color=line.get_color(), label=f"{method} (LSH inference)")
        ax_time.plot(depths, [r["seconds_per_epoch"] for r in mine], marker=marker,
                     label=method)
    ax_acc.set(xlabel="hidden layers", ylabel="test accuracy", ylim=(0, 1))
    ax_time.set(xlabel="hidden layers", ylabel="seconds per epoch")
    ax_time.set_ylim(bottom=0)
    for ax in (ax_acc, ax_time):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
