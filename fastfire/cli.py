"""The ``fastfire`` command: ``demo``, ``train``, ``predict``, ``info`` and ``bench depth``.

``fastfire bench depth`` runs the depth study of Ebrahimi, Advani and Asudeh (EDBT 2025): 1 to 7
hidden layers of 1,000 units on Fashion-MNIST, exact vs LSH vs column-row sampling vs threshold
firing on the hidden layers (``fastfire._depth_study``), and prints a markdown table.

Run ``fastfire --help`` (or ``python -m fastfire.cli --help``) for the usage. Every user error
(missing or malformed file, bad option value, a file that is not a fastfire model) prints one line
``fastfire: error: ...`` on stderr and exits with status 2; set ``FASTFIRE_DEBUG=1`` to get the
traceback instead. Ctrl-C during ``train`` finishes the current batch, still saves the model when
``--model-out`` is given, and exits with status 130.
"""

import argparse
import contextlib
import math
import os
import re
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

__all__ = ["main"]


class CLIError(Exception):
    """A user error: reported as one ``fastfire: error: ...`` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------
# option types


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _hidden(text):
    """``"128"`` or ``"256,128"`` → a tuple of positive layer sizes."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive layer sizes, e.g. 128 or 256,128")
    return sizes


def _selection(text):
    """``auto``, one selector name for every layer, or one name per weight layer (comma-separated)."""
    from fastfire.nn.selectors import SELECTORS

    if text == "auto":
        return "auto"
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in SELECTORS:
            raise argparse.ArgumentTypeError(
                f"unknown selector {name!r}; use auto, or one or a comma-separated list (one per "
                f"weight layer, output last) of: {', '.join(sorted(SELECTORS))}"
            )
    return names[0] if len(names) == 1 else names


def _n_jobs(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-zero integer (-1: all cores)")
    return value


# ---------------------------------------------------------------------------------------------
# data


def _sniff(path):
    """``"arff"``, ``"xc"`` (first line is three integers) or ``"svmlight"``."""
    if re.search(r"\.arff(\.(gz|bz2|xz))?$", os.fspath(path).lower()):
        return "arff"
    from fastfire.datasets._files import _open_binary

    stream, raw = _open_binary(path)  # plain, gzip, bzip2 or xz, by magic bytes
    try:
        first = stream.readline(4096)
    finally:
        stream.close()
        raw.close()
    if first.lstrip().lower().startswith((b"@relation", b"%")):
        return "arff"
    return "xc" if re.fullmatch(rb"\s*\d+\s+\d+\s+\d+\s*", first) else "svmlight"


def _load(path, fmt, n_features=None, n_labels=None):
    """``(X, Y)``: CSR float32 features and a CSR label indicator, at least as wide as asked."""
    from fastfire.datasets import load_arff, load_svmlight, load_xc

    fmt = _sniff(path) if fmt == "auto" else fmt
    if fmt == "xc":
        X, Y = load_xc(path)
    elif fmt == "arff":
        X, Y, _ = load_arff(path, n_labels=n_labels)
    else:
        X, Y = load_svmlight(path, n_features=n_features, multilabel=True, n_labels=n_labels)
    if X.shape[0] == 0:
        raise CLIError(f"{path}: no samples")
    for what, A, want in (("features", X, n_features), ("labels", Y, n_labels)):
        if want is not None and A.shape[1] > want:
            raise CLIError(f"{path} has {A.shape[1]} {what}, but the model has {want}")
    n = X.shape[0]
    X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(n, n_features or X.shape[1]))
    Y = sp.csr_matrix((Y.data, Y.indices, Y.indptr), shape=(n, n_labels or Y.shape[1]))
    return X, Y


def _ranked(model, X, k):
    """Top-k label indices of every row, best first.

    ``predict_topk`` scores the rows in chunks and keeps only the top k of each, so ranking a
    test file against 670K labels never holds a dense rows x labels matrix.
    """
    return model.predict_topk(X, k)[0]


def _precisions(Y, ranked, ks):
    from fastfire.metrics import precision_at_k

    return "  ".join(f"P@{k} {precision_at_k(Y, ranked, k):.4f}"
                     for k in ks if k <= ranked.shape[1])


# ---------------------------------------------------------------------------------------------
# train


class _Progress:
    """A one-line progress bar on stderr, redrawn with ``\\r``; silent when disabled."""

    def __init__(self, enabled, width=30):
        self.enabled, self.width = enabled, width

    def update(self, label, fraction, seconds):
        if self.enabled:
            done = int(self.width * fraction)
            bar = "#" * done + "." * (self.width - done)
            sys.stderr.write(f"\r{label} [{bar}] {100 * fraction:3.0f}% {seconds:6.1f}s")
            sys.stderr.flush()

    def clear(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 40) + "\r")
            sys.stderr.flush()


def _train(args):
    """``fastfire train``: globally shuffled epochs of ``partial_fit`` calls over chunks."""
    import fastfire
    from fastfire._interrupt import interruptible

    X, Y = _load(args.data, args.format, n_labels=args.n_labels)
    if Y.shape[1] < 2:
        raise CLIError(f"{args.data}: needs at least 2 labels, found {Y.shape[1]}")
    test = None
    if args.test:
        test = _load(args.test, args.format, n_features=X.shape[1], n_labels=Y.shape[1])
    model = fastfire.MLPClassifier(
        hidden_layer_sizes=args.hidden, batch_size=args.batch_size, shuffle=False,
        learning_rate_init=args.learning_rate, selection=args.selection, n_jobs=args.n_jobs,
        random_state=args.seed,
    )
    n = X.shape[0]
    batch = min(args.batch_size, n)
    chunk = batch * max(1, math.ceil(n / batch / 50))  # about 50 progress steps per epoch
    rng = np.random.RandomState(args.seed)
    bar = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    if not args.quiet:
        print(f"{args.data}: {n} samples, {X.shape[1]} features, {Y.shape[1]} labels; network "
              f"{'-'.join(map(str, (X.shape[1], *args.hidden, Y.shape[1])))}, "
              f"{fastfire.effective_n_threads(args.n_jobs)} threads", flush=True)
    interrupted = False
    with interruptible() as flag:
        for epoch in range(1, args.epochs + 1):
            order, seconds, loss, seen = rng.permutation(n), 0.0, 0.0, 0
            for start in range(0, n, chunk):
                tic, rows = time.perf_counter(), order[start:start + chunk]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model.partial_fit(X[rows], Y[rows], classes=np.arange(Y.shape[1]))
                seconds += time.perf_counter() - tic
                loss, seen = loss + model.loss_ * len(rows), seen + len(rows)
                if flag.raised or any("interrupted" in str(w.message) for w in caught):
                    interrupted = True
                    break
                bar.update(f"epoch {epoch}/{args.epochs}", seen / n, seconds)
            bar.clear()
            line = f"epoch {epoch:>3}/{args.epochs}  loss {loss / seen:.6f}  {seconds:7.2f}s"
            if test is not None:
                ranked = _ranked(model, test[0], min(5, Y.shape[1]))
                line += "  test " + _precisions(test[1], ranked, (1, 5))
            if not args.quiet:
                print(line, flush=True)
            if interrupted:
                break
    if args.model_out:
        fastfire.save(model, args.model_out)
        if not args.quiet:
            suffix = "" if args.model_out.endswith(".npz") else ".npz"  # added by NumPy
            print(f"model saved to {args.model_out}{suffix}", flush=True)
    if interrupted:
        print(f"fastfire: training interrupted (Ctrl-C) in epoch {epoch} after {seen} of {n} "
              f"samples{'; the model was saved' if args.model_out else ''}", file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------------------------------------
# predict, info


def _predict(args):
    """``fastfire predict``: P@1/3/5 when the data has labels, then top-k labels per line."""
    import fastfire

    try:
        model = fastfire.load(args.model)
    except Exception as exc:  # np.load on a zip, pickle or text file raises many kinds
        if isinstance(exc, OSError) or str(exc).startswith(os.fspath(args.model)):
            raise  # a missing file, or fastfire.load's own message: reported by main
        raise CLIError(f"{args.model} is not a fastfire model file") from None
    if not isinstance(model, fastfire.MLPClassifier):
        raise CLIError(f"{args.model} holds a {type(model).__name__}; predict needs a classifier")
    labels = model.classes_
    as_indices = np.array_equal(labels, np.arange(len(labels)))
    X, Y = _load(args.data, args.format, n_features=model.n_features_in_,
                 n_labels=len(labels) if as_indices else None)
    k = min(args.top_k, len(labels))
    ranked = _ranked(model, X, max(k, min(5, len(labels))))
    if Y.nnz and as_indices:  # on stderr when stdout carries the labels
        print(f"{args.data}: {X.shape[0]} samples  " + _precisions(Y, ranked, (1, 3, 5)),
              file=sys.stdout if args.output else sys.stderr, flush=True)
    with open(args.output, "w") if args.output else contextlib.nullcontext(sys.stdout) as out:
        for row in labels[ranked[:, :k]]:
            out.write(",".join(map(str, row)) + "\n")
    return 0


def _info(args):
    import fastfire

    fastfire.show_config()
    return 0


# ---------------------------------------------------------------------------------------------
# demo


def _demo_problems(quick):
    """``(name, X_train, y_train, X_test, y_test, metric, hyper-parameters)`` for both problems."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from fastfire.datasets import make_extreme_classification

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    if quick:
        X, y = X[:600], y[:600]
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    yield (f"digits {Xtr.shape[0]}x{X.shape[1]}, 10 classes", Xtr, ytr, Xte, yte, "accuracy",
           {"hidden_layer_sizes": (128,), "batch_size": 32, "max_iter": 5 if quick else 40,
            "learning_rate_init": 1e-3})
    n, d, L = (1200, 2000, 100) if quick else (10000, 10000, 1000)
    X, Y = make_extreme_classification(n, d, L, random_state=0)
    split = n * 4 // 5
    yield (f"extreme {split}x{d}, {L} labels", X[:split], Y[:split], X[split:], Y[split:], "P@1",
           {"hidden_layer_sizes": (128,), "batch_size": 128, "max_iter": 3 if quick else 6,
            "learning_rate_init": 1e-2})


def _demo(args):
    """``fastfire demo``: fit both libraries with the same hyper-parameters, print a table."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP
    from threadpoolctl import threadpool_limits

    import fastfire
    from fastfire.metrics import precision_at_k

    threads = fastfire.effective_n_threads(args.n_jobs)
    print(f"fastfire {fastfire.__version__} demo: {threads} threads, OpenMP "
          f"{'on' if fastfire.openmp_enabled() else 'OFF (serial build)'}; scikit-learn gets the "
          f"same {threads} BLAS threads; fit times measured now, on this machine", flush=True)
    rows = []
    for name, Xtr, ytr, Xte, yte, metric, params in _demo_problems(args.quick):
        params = dict(params, solver="adam", random_state=0,
                      n_iter_no_change=params["max_iter"] + 1)  # every epoch runs, in both
        print(f"{name}: hidden {params['hidden_layer_sizes']}, batch {params['batch_size']}, "
              f"{params['max_iter']} epochs, adam lr {params['learning_rate_init']:g}", flush=True)
        times = {}
        for label, model in (("scikit-learn", SkMLP(**params)),
                             ("fastfire", fastfire.MLPClassifier(**params, n_jobs=args.n_jobs))):
            y = ytr.toarray() if sp.issparse(ytr) and label == "scikit-learn" else ytr
            with warnings.catch_warnings(), threadpool_limits(threads, user_api="blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)
                tic = time.perf_counter()
                model.fit(Xtr, y)
                times[label] = time.perf_counter() - tic
            score = (model.score(Xte, yte) if metric == "accuracy"
                     else precision_at_k(yte, model.predict_proba(Xte), 1))
            rows.append((name, label, f"{metric} {score:.4f}", f"{times[label]:.2f}",
                         f"{times['scikit-learn'] / times[label]:.2f}x"))
    header = ("dataset", "model", "accuracy / P@1", "fit seconds", "speedup")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return 0


# ---------------------------------------------------------------------------------------------
# bench


def _int_list(text):
    """``"1,2,3"`` or ``"1-7"`` → a list of positive integers."""
    try:
        values = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            values.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive integers, e.g. 1,2,3 or 1-7")
    return values


def _methods(text):
    from fastfire._depth_study import METHODS

    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in METHODS:
            raise argparse.ArgumentTypeError(
                f"unknown method {name!r}; use a comma-separated list of: {', '.join(METHODS)}")
    return names


def _fraction(text):
    value = _positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def _non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a float") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


#: ``--quick``: a few seconds on scikit-learn's built-in digits (options given explicitly win)
_QUICK = {"data": "digits", "layers": [1, 2], "width": 64, "n_train": 300, "n_test": 150,
          "epochs": 3, "batch_size": 32, "learning_rate": 1e-2}
_FULL = {"data": "fashion-mnist", "layers": list(range(1, 8)), "width": 1000, "n_train": None,
         "n_test": None, "epochs": 2, "batch_size": 128, "learning_rate": 1e-3}


def _bench(args):
    """``fastfire bench depth``: the depth study, a markdown table, optional JSON and PNG."""
    import fastfire
    from fastfire import _depth_study

    settings = {key: getattr(args, key) if getattr(args, key) is not None else default
                for key, default in (_QUICK if args.quick else _FULL).items()}
    if args.plot:  # say so before the long run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastfire: matplotlib is not installed (pip install matplotlib): "
                  f"no plot written to {args.plot}", file=sys.stderr, flush=True)
            args.plot = None
    threads = fastfire.effective_n_threads(args.n_jobs)
    if not args.quiet:
        print(f"fastfire {fastfire.__version__} bench depth: {settings['data']}, hidden layers "
              f"{','.join(map(str, settings['layers']))} of {settings['width']} units, methods "
              f"{','.join(args.methods)}, {settings['epochs']} epochs, batch "
              f"{settings['batch_size']}, {threads} threads, seed {args.seed}", flush=True)

    def progress(row):
        if not args.quiet:
            done = (f"accuracy {row['accuracy']:.4f}  {row['seconds_per_epoch']:.2f} s/epoch"
                    if row["accuracy"] is not None else row["reason"])
            print(f"  {row['depth']} hidden, {row['method']}: {done}", file=sys.stderr,
                  flush=True)

    config = dict(settings, methods=args.methods, n_jobs=args.n_jobs, threads=threads,
                  seed=args.seed, lsh_active=args.lsh_active,
                  sampling_ratio=args.sampling_ratio, threshold_b=args.threshold_b,
                  version=fastfire.__version__)
    rows = _depth_study.run_depth_study(
        methods=args.methods, n_jobs=args.n_jobs, seed=args.seed, lsh_active=args.lsh_active,
        sampling_ratio=args.sampling_ratio, threshold_b=args.threshold_b, progress=progress,
        **settings,
    )
    print(_depth_study.format_table(rows), flush=True)
    if args.json:
        _depth_study.write_json(rows, args.json, config)
        print(f"rows written to {args.json}", flush=True)
    if args.plot:
        _depth_study.plot_depth_study(
            rows, args.plot, title=f"{settings['data']}, {settings['width']} units per hidden "
                                   f"layer, {settings['epochs']} epochs, {threads} threads")
        print(f"plot written to {args.plot}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# entry point


def _parser():
    parser = _Parser(prog="fastfire", description="Train neural networks fast on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jobs = {"type": _n_jobs, "default": None, "metavar": "N", "help": "threads (default: all)"}

    p = sub.add_parser("demo", help="fastfire vs scikit-learn on built-in data (about a minute)")
    p.add_argument("--quick", action="store_true", help="tiny problems, a few seconds")
    p.add_argument("--n-jobs", **jobs)
    p.set_defaults(func=_demo)

    fmt = {"choices": ["auto", "xc", "arff", "svmlight"], "default": "auto",
           "help": "data format (default: by extension and first line)"}
    p = sub.add_parser("train", help="train an MLP on an XC, ARFF or svmlight file")
    p.add_argument("data", help="training data")
    p.add_argument("--test", metavar="PATH", help="test data: P@1 and P@5 after each epoch")
    p.add_argument("--format", **fmt)
    p.add_argument("--n-labels", type=_positive(int), metavar="K", help="ARFF: how many labels")
    p.add_argument("--model-out", metavar="PATH", help="save the model here (.npz)")
    p.add_argument("--hidden", type=_hidden, default=(128,), metavar="SIZES",
                   help="hidden layer sizes, comma-separated (default: 128)")
    p.add_argument("--epochs", type=_positive(int), default=10, metavar="N", help="default: 10")
    p.add_argument("--batch-size", type=_positive(int), default=128, metavar="B",
                   help="default: 128")
    p.add_argument("--learning-rate", type=_positive(float), default=1e-3, metavar="LR",
                   help="Adam step size (default: 0.001)")
    p.add_argument("--selection", type=_selection, default="auto", metavar="NAMES",
                   help="which neurons each layer computes: auto (LSH on an output layer of at "
                        "least 4096 labels, dense otherwise; the default), one selector for "
                        "every layer, or a comma-separated list, one per weight layer")
    p.add_argument("--n-jobs", **jobs)
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="top-k labels (and P@k) of a saved model on a data file")
    p.add_argument("model", help="a model saved by 'fastfire train --model-out'")
    p.add_argument("data", help="data to predict")
    p.add_argument("--format", **fmt)
    p.add_argument("--top-k", type=_positive(int), default=5, metavar="K",
                   help="labels per line (default: 5)")
    p.add_argument("--output", metavar="PATH", help="write the labels here instead of stdout")
    p.set_defaults(func=_predict)

    p = sub.add_parser("info", help="version, OpenMP, threads and BLAS (fastfire.show_config)")
    p.set_defaults(func=_info)

    p = sub.add_parser("bench", help="benchmarks: 'depth' (exact vs LSH vs sampled vs threshold "
                                     "on 1-7 hidden layers, Fashion-MNIST)")
    p.add_argument("study", choices=["depth"], help="which benchmark")
    p.add_argument("--layers", type=_int_list, metavar="DEPTHS",
                   help="numbers of hidden layers, e.g. 1,2,3 or 1-7 (default: 1-7)")
    p.add_argument("--methods", type=_methods, default=["exact", "lsh", "sampled", "threshold"],
                   metavar="NAMES", help="comma-separated, of exact, lsh, sampled, threshold "
                                         "(default: all)")
    p.add_argument("--width", type=_positive(int), metavar="UNITS",
                   help="units per hidden layer (default: 1000)")
    p.add_argument("--data", choices=["fashion-mnist", "digits"],
                   help="Fashion-MNIST ($FASTFIRE_DATA) or scikit-learn's digits "
                        "(default: fashion-mnist; digits with --quick)")
    p.add_argument("--n-train", type=_positive(int), metavar="N",
                   help="random training subset (default: all)")
    p.add_argument("--n-test", type=_positive(int), metavar="N",
                   help="first N test samples (default: all)")
    p.add_argument("--epochs", type=_positive(int), metavar="N", help="default: 2")
    p.add_argument("--batch-size", type=_positive(int), metavar="B", help="default: 128")
    p.add_argument("--learning-rate", type=_positive(float), metavar="LR",
                   help="Adam step size (default: 0.001)")
    p.add_argument("--lsh-active", type=_fraction, default=0.1, metavar="F",
                   help="lsh: share of each hidden layer active per sample (default: 0.1)")
    p.add_argument("--sampling-ratio", type=_fraction, default=0.5, metavar="F",
                   help="sampled: share of column-row pairs kept (default: 0.5)")
    p.add_argument("--threshold-b", type=_non_negative, default=0.0, metavar="B",
                   help="threshold: firing threshold b >= 0 (default: 0, exact ReLU)")
    p.add_argument("--n-jobs", **jobs)
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--plot", metavar="PATH", help="also draw accuracy and s/epoch vs depth (PNG, "
                                                  "needs matplotlib)")
    p.add_argument("--quick", action="store_true",
                   help="seconds: digits, 1-2 hidden layers of 64 units, 300 samples, 3 epochs")
    p.add_argument("--quiet", action="store_true", help="only the table")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None):
    """Run the ``fastfire`` command.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 2 on a user error (one ``fastfire: error: ...`` line on stderr),
        130 when training was interrupted with Ctrl-C.
    """
    try:
        args = _parser().parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # `fastfire predict ... | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        print("fastfire: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as exc:
        if os.environ.get("FASTFIRE_DEBUG"):
            raise
        message = str(exc) if not isinstance(exc, OSError) or not exc.filename else (
            f"{exc.filename}: {exc.strerror}")
        print("fastfire: error: " + " ".join(message.split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
