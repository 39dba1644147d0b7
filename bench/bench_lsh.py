"""LSH active-neuron selection (SLIDE) vs fastfire's dense path vs scikit-learn.

Subcommands (each prints a markdown table and writes JSON under bench/out/):

    throughput  training samples/s at 1 and 2 threads, generated XC problem (default 20K labels,
                ~1,000 active outputs per sample), median of --repeats epochs after a warm-up,
                the thread counts timed in turn round by round; --ceiling adds the ideal in the
                same rounds (ceiling.py's bare C loops over as many random rows per sample)
    accuracy    P@1 / P@5 on a held-out split after the same epochs: LSH, fastfire dense
                (scikit-learn's logistic loss), the LSH layer with every output active (exact
                softmax, the reference for LSH's sampling), scikit-learn's MLPClassifier
    real        Bibtex and Corel5k ($FASTFIRE_DATA): P@1/3/5 of LSH vs dense vs exact softmax
    auto        seconds per training sample of dense vs LSH as the output width grows (the
                measurement behind selection="auto")
    candidates  which active sets train best: retrieved only / random only / both / all
    xc670k      Amazon-670K shape (135,909 features, 670,091 labels) on a subset: LSH samples/s,
                dense seconds per batch (extrapolated per epoch), peak memory
    rebuild     one table rebuild of a --labels-wide output layer (default LSH()): milliseconds
                per rebuild and per phase (hashing, bucketing), median of --repeats
    profile     per-phase microseconds per training batch of ``throughput``'s problem, every
                compiled kernel and the estimator's per-batch Python timed in the real ``fit``,
                the thread counts in turn round by round

Run every timing under the shared lock so benchmarks do not overlap:

    flock /tmp/fastfire-bench.lock python bench/bench_lsh.py throughput --threads 1,2
"""

import argparse
import datetime
import json
import os
import resource
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _problem(n_samples, n_features, n_labels, seed=0, **kw):
    from fastfire.datasets import make_extreme_classification

    return make_extreme_classification(n_samples, n_features, n_labels, random_state=seed, **kw)


def _lsh_selection(args, **override):
    from fastfire.nn.lsh import LSH, SparseInput

    params = dict(hash=args.hash, k=args.k, l=args.l, budget=args.budget, policy=args.policy,
                  min_active=args.min_active, random_state=0)
    params.update(override)
    return [SparseInput(), LSH(**params)]


def _clf(selection, args, n_jobs, max_iter=1, **kw):
    from fastfire import MLPClassifier

    params = dict(hidden_layer_sizes=(args.hidden,), batch_size=args.batch_size, alpha=0.0,
                  learning_rate_init=args.lr, max_iter=max_iter, random_state=0, n_jobs=n_jobs,
                  selection=selection)
    params.update(kw)
    return MLPClassifier(**params)


def _p_at(clf, X, Y, ks=(1, 5)):
    from fastfire.metrics import precision_at_k

    idx, _ = clf.predict_topk(X, max(ks))
    return {f"P@{k}": round(float(precision_at_k(Y, idx, k)), 4) for k in ks}


def _median_rate(fn, n, repeats):
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t))
    return float(np.median(rates)), [round(r, 1) for r in rates]


def cmd_throughput(args):
    """One model per thread count, warmed up, then timed in turn (round r of every thread
    count before round r + 1), so the ratio of the medians compares runs taken side by side."""
    X, Y = _problem(args.samples, args.features, args.labels)
    models = {}
    rates = {("fastfire", threads): [] for threads in args.threads}
    ceiling = None
    if args.ceiling:
        from ceiling import Ceiling

        ceiling = Ceiling(args.labels, args.hidden, args.min_active, args.batch_size,
                          args.samples)
        rates.update({(loop, t): [] for loop in Ceiling.LOOPS for t in args.threads})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for threads in args.threads:
            models[threads] = _clf(_lsh_selection(args), args, threads, warm_start=True)
            models[threads].fit(X[:2000], Y[:2000])   # warm-up: thread pool, buffers, tables
            if ceiling is not None:
                for loop in Ceiling.LOOPS:
                    ceiling.run(loop, threads)
        for _ in range(args.repeats):
            for code, threads in rates:
                if code == "fastfire":
                    tic = time.perf_counter()
                    models[threads].fit(X, Y)
                    rate = X.shape[0] / (time.perf_counter() - tic)
                else:
                    rate = ceiling.run(code, threads)
                rates[code, threads].append(round(rate, 1))
    rows = []
    for (code, threads), runs in rates.items():
        med = float(np.median(runs))
        row = dict(code=code, threads=threads, samples_per_s=round(med, 1), runs=runs)
        if code == "fastfire":
            layer = models[threads]._network.layers[-1]
            row["active_per_sample"] = round(float(np.mean(np.diff(layer._active.indptr))), 1)
        rows.append(row)
        print(f"| {code} | {threads} | {med:,.0f} | {runs} | {row.get('active_per_sample', '')} |",
              flush=True)
    t0, t1 = args.threads[0], args.threads[-1]
    if t1 != t0:
        for code in dict.fromkeys(code for code, _ in rates):
            ratios = [b / a for a, b in zip(rates[code, t0], rates[code, t1])]
            print(f"{code}: {t1} / {t0} threads "
                  f"{np.median(rates[code, t1]) / np.median(rates[code, t0]):.2f}x "
                  f"(ratio of medians); per round {[round(r, 2) for r in ratios]}, "
                  f"median {np.median(ratios):.2f}x")
    return rows


class _PhaseTimer:
    """Exclusive seconds per phase: every compiled kernel the training loop calls (wrapped where
    the Python modules look it up) and a few Python steps; a phase's time excludes the phases it
    calls, so the phases add up to the timed section."""

    _PY = (("fastfire.nn.active", "ActiveSet", "from_data", "from_data (py)"),
           ("fastfire.estimators._mlp_base", None, "_take_rows", "batch rows (py)"),
           ("fastfire.estimators._mlp_base", "_CSRRowGatherer", "__call__", "batch rows (py)"),
           ("fastfire.nn.lsh", "LSHLayer", "set_targets", "set_targets (py)"),
           ("fastfire.nn.lsh", "LSHLayer", "query", "query glue (py)"),
           ("fastfire.nn.lsh", "LSH", "after_update", "after_update (py)"),
           ("fastfire.nn.optimizers", "Adam", "step", "optimizer glue (py)"))

    def __init__(self):
        import importlib

        self.acc = {}
        self._stack = []
        self._undo = []
        core = ("fastfire._core._active", "fastfire._core._lsh", "fastfire._core._dense",
                "fastfire._core._optim", "fastfire._core._loss")
        kernels = {}
        for name in core:
            mod = importlib.import_module(name)
            for attr, fn in vars(mod).items():
                if (callable(fn) and type(fn).__name__ in ("cython_function_or_method",
                                                           "fused_cython_function")
                        and not attr.startswith("_")):
                    kernels[id(fn)] = (attr, fn)
        users = ("fastfire.nn.lsh", "fastfire.nn.layers", "fastfire.nn.losses",
                 "fastfire.nn.optimizers", "fastfire.estimators._mlp_base") + core
        for name in users:
            mod = importlib.import_module(name)
            for attr, fn in list(vars(mod).items()):
                if id(fn) in kernels:
                    self._patch(mod, attr, self._wrap(fn, kernels[id(fn)][0]))
        for name, cls, attr, label in self._PY:
            owner = importlib.import_module(name)
            owner = getattr(owner, cls, None) if cls else owner
            fn = vars(owner).get(attr) if owner is not None else None
            if fn is None:            # older code (a profile of another checkout)
                continue
            wrapped = self._wrap(fn.__func__ if isinstance(fn, classmethod) else fn, label)
            self._patch(owner, attr, classmethod(wrapped) if isinstance(fn, classmethod) else wrapped)

    def _patch(self, owner, attr, new):
        self._undo.append((owner, attr, vars(owner)[attr]))
        setattr(owner, attr, new)

    def _wrap(self, fn, label):
        clock, stack, acc = time.perf_counter, self._stack, self.acc

        def timed(*a, **kw):
            stack.append(0.0)
            t = clock()
            try:
                return fn(*a, **kw)
            finally:
                dt = clock() - t
                inner = stack.pop()
                acc[label] = acc.get(label, 0.0) + dt - inner
                if stack:
                    stack[-1] += dt
        return timed

    def restore(self):
        for owner, attr, old in reversed(self._undo):
            setattr(owner, attr, old)


def cmd_profile(args):
    """Per-phase microseconds per batch of ``throughput``'s training (one model per thread
    count, warmed up, then one epoch per thread count in turn, ``--repeats`` rounds). "rest
    (py)" is the epoch minus every timed phase: the training loop's remaining Python."""
    X, Y = _problem(args.samples, args.features, args.labels)
    models, per = {}, {threads: [] for threads in args.threads}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for threads in args.threads:
            models[threads] = _clf(_lsh_selection(args), args, threads, warm_start=True)
            models[threads].fit(X[:2000], Y[:2000])
        n_batches = -(-X.shape[0] // args.batch_size)
        for _ in range(args.repeats):
            for threads in args.threads:
                timer = _PhaseTimer()
                try:
                    tic = time.perf_counter()
                    models[threads].fit(X, Y)
                    total = time.perf_counter() - tic
                finally:
                    timer.restore()
                us = {k: v / n_batches * 1e6 for k, v in timer.acc.items()}
                us["rest (py)"] = total / n_batches * 1e6 - sum(us.values())
                us["total"] = total / n_batches * 1e6
                per[threads].append(us)
    phases = sorted({k for runs in per.values() for run in runs for k in run},
                    key=lambda k: -np.median([r.get(k, 0.0) for r in per[args.threads[0]]]))
    phases.remove("total")
    phases.append("total")
    med = {t: {k: float(np.median([r.get(k, 0.0) for r in per[t]])) for k in phases}
           for t in args.threads}
    print("| phase | " + " | ".join(f"{t} thr (us/batch)" for t in args.threads)
          + (f" | {args.threads[0]} / {args.threads[-1]} |" if len(args.threads) > 1 else " |"))
    print("|---" * (len(args.threads) + 1 + (len(args.threads) > 1)) + "|")
    for k in phases:
        cells = " | ".join(f"{med[t][k]:,.0f}" for t in args.threads)
        ratio = ""
        if len(args.threads) > 1:
            last = med[args.threads[-1]][k]
            ratio = f" | {med[args.threads[0]][k] / last:.2f}" if last > 0 else " | -"
        print(f"| {k} | {cells}{ratio} |", flush=True)
    return [dict(threads=t, us_per_batch=med[t], rounds=per[t]) for t in args.threads]


def cmd_accuracy(args):
    """Epoch by epoch (warm start, one RandomState object: the shuffles of one long fit):
    cumulative training seconds and held-out P@1/P@5 after every epoch."""
    from fastfire.nn.lsh import LSH, SparseInput

    X, Y = _problem(args.samples + args.test, args.features, args.labels)
    Xtr, Ytr, Xte, Yte = X[:args.samples], Y[:args.samples], X[args.samples:], Y[args.samples:]
    t = args.threads[-1]
    configs = [
        ("fastfire LSH", _lsh_selection(args)),
        ("fastfire exact softmax (LSH layer, every output active)",
         [SparseInput(), LSH(budget=0, min_active=args.labels, random_state=0)]),
        ("fastfire dense (logistic, scikit-learn semantics)", "dense"),
    ]
    if args.no_full:
        del configs[1]
    rows, curves = [], {}
    for name, selection in configs:
        clf = _clf(selection, args, t, max_iter=1, warm_start=True,
                   random_state=np.random.RandomState(0))
        sec, curve = 0.0, []
        for epoch in range(args.epochs):
            tic = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(Xtr, Ytr)
            sec += time.perf_counter() - tic
            p = _p_at(clf, Xte, Yte)
            curve.append((round(sec, 2), p["P@1"]))
        curves[name] = curve
        row = dict(method=name, epochs=args.epochs, seconds=round(sec, 1), curve=curve, **p)
        rows.append(row)
        print(f"| {name} | {sec:.1f} | {row['P@1']} | {row['P@5']} |", flush=True)
    if args.sklearn_samples:
        from sklearn.neural_network import MLPClassifier as SkMLP

        from fastfire.metrics import precision_at_k, top_k

        n = args.sklearn_samples
        sk = SkMLP((args.hidden,), batch_size=args.batch_size, alpha=0.0,
                   learning_rate_init=args.lr, max_iter=args.epochs, random_state=0)
        tic = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk.fit(Xtr[:n], Ytr[:n].toarray())
        sec = time.perf_counter() - tic
        idx = top_k(sk.predict_proba(Xte), 5)
        row = dict(method=f"scikit-learn MLPClassifier (first {n} training samples)",
                   epochs=args.epochs, seconds=round(sec, 1),
                   **{f"P@{k}": round(float(precision_at_k(Yte, idx, k)), 4) for k in (1, 5)})
        rows.append(row)
        print(f"| {row['method']} | {sec:.1f} | {row['P@1']} | {row['P@5']} |", flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in curves.items():
            ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=name)
        ax.set_xlabel(f"training seconds ({t} threads)")
        ax.set_ylabel("held-out P@1")
        ax.set_xscale("log")
        ax.set_title(f"{args.labels:,} labels, {args.samples:,} samples, 1 point per epoch")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return rows


def cmd_real(args):
    from fastfire.datasets import load_bibtex, load_corel5k
    from fastfire.nn.lsh import LSH, SparseInput

    rows = []
    for name, loader in (("bibtex", load_bibtex), ("corel5k", load_corel5k)):
        Xtr, Ytr, _ = loader("train")
        Xte, Yte, _ = loader("test")
        n_labels = Ytr.shape[1]
        lsh = LSH(hash=args.hash, k=args.real_k, l=args.l, budget=n_labels // 4,
                  min_active=n_labels // 2, loss=args.real_loss, random_state=0)
        full = LSH(budget=0, min_active=n_labels, loss=args.real_loss, random_state=0)
        for method, selection in ((f"LSH ({args.real_loss})", [SparseInput(), lsh]),
                                  (f"every output active ({args.real_loss})", [SparseInput(), full]),
                                  ("dense (logistic)", "dense")):
            res = []
            for seed in range(args.seeds):
                clf = _clf(selection, args, args.threads[-1], max_iter=args.epochs,
                           random_state=seed, batch_size=64, learning_rate_init=args.real_lr)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf.fit(Xtr, Ytr)
                res.append(_p_at(clf, Xte, Yte, (1, 3, 5)))
            row = dict(dataset=name, method=method,
                       **{k: round(float(np.mean([r[k] for r in res])), 4) for k in res[0]},
                       sd_P1=round(float(np.std([r["P@1"] for r in res])), 4))
            rows.append(row)
            print(f"| {name} | {method} | {row['P@1']} (sd {row['sd_P1']}) | {row['P@3']} | {row['P@5']} |",
                  flush=True)
    return rows


def cmd_auto(args):
    rows = []
    for n_labels in args.widths:
        X, Y = _problem(args.samples, args.features, n_labels)
        res = {}
        for method, selection in (("dense", "dense"), ("lsh", _lsh_selection(args))):
            clf = _clf(selection, args, args.threads[-1], warm_start=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X[:500], Y[:500])
                med, _ = _median_rate(lambda: clf.fit(X, Y), X.shape[0], args.repeats)
            res[method] = med
        rows.append(dict(n_labels=n_labels, dense_samples_per_s=round(res["dense"], 1),
                         lsh_samples_per_s=round(res["lsh"], 1)))
        print(f"| {n_labels} | {res['dense']:,.0f} | {res['lsh']:,.0f} | "
              f"{res['lsh'] / res['dense']:.2f} |", flush=True)
    return rows


def cmd_candidates(args):
    from fastfire.nn.lsh import LSH, SparseInput

    X, Y = _problem(args.samples + args.test, args.features, args.labels)
    Xtr, Ytr, Xte, Yte = X[:args.samples], Y[:args.samples], X[args.samples:], Y[args.samples:]
    a = args.active
    rows = []
    for name, params in ((f"retrieved only ({a})", dict(budget=a, min_active=0)),
                         (f"random only ({a})", dict(budget=0, min_active=a)),
                         (f"{a // 2} retrieved + random to {a}", dict(budget=a // 2, min_active=a)),
                         ("every label", dict(budget=0, min_active=args.labels))):
        sel = [SparseInput(), LSH(hash=args.hash, k=args.k, l=args.l, random_state=0, **params)]
        clf = _clf(sel, args, args.threads[-1], max_iter=args.epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr, Ytr)
        row = dict(active=name, **_p_at(clf, Xte, Yte))
        rows.append(row)
        print(f"| {name} | {row['P@1']} | {row['P@5']} |", flush=True)
    return rows


def cmd_xc670k(args):
    X, Y = _problem(args.samples + args.test, 135_909, 670_091)
    Xtr, Ytr, Xte, Yte = X[:args.samples], Y[:args.samples], X[args.samples:], Y[args.samples:]
    rows = []
    for threads in args.threads:
        clf = _clf(_lsh_selection(args), args, threads, warm_start=True, max_iter=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr[:1000], Ytr[:1000])
            med, rates = _median_rate(lambda: clf.fit(Xtr, Ytr), Xtr.shape[0], args.repeats)
        rows.append(dict(method="lsh", threads=threads, samples_per_s=round(med, 1), runs=rates))
        print(f"| LSH | {threads} | {med:,.0f} | {rates} |", flush=True)
    p = _p_at(clf, Xte, Yte)
    rows.append(dict(method="lsh", epochs=1 + args.repeats, **p))
    print(f"LSH after {1 + args.repeats} passes: {p}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows.append(dict(lsh_peak_rss_gb=round(peak, 2)))
    print(f"peak RSS after LSH training and evaluation {peak:.2f} GB")
    if args.dense_batches:
        dense = _clf("dense", args, args.threads[-1], warm_start=True, max_iter=1)
        n = args.dense_batches * args.batch_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense.fit(Xtr[:args.batch_size], Ytr[:args.batch_size])
            tic = time.perf_counter()
            dense.fit(Xtr[:n], Ytr[:n])
        rate = n / (time.perf_counter() - tic)
        rows.append(dict(method="dense", threads=args.threads[-1], samples_per_s=round(rate, 1)))
        print(f"| dense | {args.threads[-1]} | {rate:,.1f} | ({args.dense_batches} batches) |")
    return rows


def cmd_rebuild(args):
    """Time ``LSHLayer.build_tables`` and, separately, its two phases on the layer's own
    arrays: hashing (projections and keys, ``simhash_rows_table_major``) and bucketing
    (``_lsh.build_tables``)."""
    from fastfire._core import _lsh
    from fastfire.nn.lsh import _BUCKET_POLICIES, LSH, LSHLayer, _single_threaded_blas

    rng = np.random.default_rng(0)
    coef = rng.normal(0, 0.05, (args.hidden, args.labels)).astype(np.float32)
    rows = []
    for threads in args.threads:
        layer = LSHLayer(coef, np.zeros(args.labels, np.float32), "identity", LSH(random_state=0))
        layer.n_threads = threads
        f, sel = layer.family, layer.selector
        P = f["pool_P"] if f["pool_P"] is not None else f["P"]
        bits = f["pool_map"] if f["pool_P"] is not None else None
        buckets = layer.table_buckets
        offsets, ids = layer.tables
        times = {"rebuild": [], "hashing": [], "bucketing": []}

        def timed(name, fn):
            tic = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - tic))

        def hashing():
            with _single_threaded_blas():
                _lsh.simhash_rows_table_major(layer.Wt, P, f["K"], f["L"], f["range_pow"],
                                              f["seed"], buckets, 0, None, threads, bits)

        for _ in range(args.repeats):
            timed("rebuild", layer.build_tables)
            timed("hashing", hashing)
            timed("bucketing", lambda: _lsh.build_tables(
                buckets, layer.n_buckets, sel.capacity, _BUCKET_POLICIES[sel.bucket_policy],
                f["seed"], offsets, ids, None, threads))
        med = {name: round(float(np.median(v)), 1) for name, v in times.items()}
        rows.append(dict(threads=threads, labels=args.labels, ms=med,
                         runs={name: [round(x, 1) for x in v] for name, v in times.items()}))
        print(f"| {threads} | {med['rebuild']} | {med['hashing']} | {med['bucketing']} |",
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["throughput", "accuracy", "real", "auto",
                                            "candidates", "xc670k", "rebuild", "profile"])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--features", type=int, default=50000)
    parser.add_argument("--labels", type=int, default=20000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hash", default="simhash")
    parser.add_argument("--policy", default="topk")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--l", type=int, default=32)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--min-active", type=int, default=1000)
    parser.add_argument("--active", type=int, default=300)
    parser.add_argument("--sklearn-samples", type=int, default=0)
    parser.add_argument("--ceiling", action="store_true",
                        help="throughput: also time ceiling.py's bare C loops in the same rounds")
    parser.add_argument("--widths", type=lambda s: [int(t) for t in s.split(",")],
                        default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--real-k", type=int, default=4)
    parser.add_argument("--real-lr", type=float, default=0.003)
    parser.add_argument("--real-loss", default="softmax", choices=["softmax", "logistic"])
    parser.add_argument("--dense-batches", type=int, default=3)
    parser.add_argument("--plot", default=None, help="accuracy: P@1-vs-seconds PNG")
    parser.add_argument("--no-full", action="store_true", help="accuracy: skip exact softmax")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = globals()[f"cmd_{args.command}"](args)
    out = args.json or os.path.join(HERE, "out", f"lsh_{args.command}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       argv=sys.argv, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
