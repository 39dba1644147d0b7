"""Column-row sampled MLP training vs the exact path (Adelman et al. NeurIPS 2021, MNIST setting).

784-500-500-10 ReLU MLP, batch 50, Adam, on Fashion-MNIST (``$FASTFIRE_DATA``). For each
(scheme, ratio, mode, threads): test accuracy, the fraction of training multiply-adds done, and
the median seconds per epoch (per-epoch times from ``verbose``), next to ``selection="dense"``.

Example (one table row per configuration, JSON lines appended to ``--json``)::

    flock /tmp/fastfire-bench.lock .venv/bin/python bench/bench_sampling.py \\
        --epochs 3 --threads 2 --schemes dense,bernoulli --ratios 1.0,0.5 --json out.jsonl
"""

import argparse
import contextlib
import io
import json
import re
import statistics
import time

import numpy as np

from fastfire import MLPClassifier
from fastfire.datasets import load_fashion_mnist
from fastfire.nn.sampling import ColumnRowSampling


def parse_selection(spec, seed):
    """A ``--configs`` entry as the estimator's ``selection``: ``"dense"``,
    ``"scheme:ratio:mode"`` (every layer), or one such spec per weight layer joined by ``/``
    (e.g. ``topk:0.3:backward/topk:0.3:forward/dense``). Flags may follow the mode: ``:mean``
    (``dropped="mean"``), ``:formed`` (``factored_update=False``)."""
    def one(part):
        if part == "dense":
            return "dense"
        scheme, ratio, mode, *flags = part.split(":")
        unknown = set(flags) - {"mean", "formed"}
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)} in {part!r}")
        return ColumnRowSampling(scheme=scheme, ratio=float(ratio), mode=mode, random_state=seed,
                                 dropped="mean" if "mean" in flags else "zero",
                                 factored_update="formed" not in flags)
    parts = spec.split("/")
    return one(parts[0]) if len(parts) == 1 else [one(q) for q in parts]


def run(scheme, ratio, mode, threads, epochs, X, y, Xt, yt, seed, dense_output=False, spec=None):
    if spec is not None:
        selection = parse_selection(spec, seed)
    elif scheme == "dense":
        selection = "dense"
    else:
        selection = ColumnRowSampling(scheme=scheme, ratio=ratio, mode=mode, random_state=seed)
        if dense_output:
            selection = [selection, selection, "dense"]
    clf = MLPClassifier(hidden_layer_sizes=(500, 500), batch_size=50, solver="adam",
                        max_iter=epochs, random_state=seed, n_jobs=threads,
                        selection=selection, verbose=True, tol=0.0, n_iter_no_change=10**6)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
    total = time.perf_counter() - t0
    epoch_times = [float(t) for t in re.findall(r"time = ([0-9.]+)s", buf.getvalue())]
    layers = clf._network.layers
    if selection == "dense":
        frac = 1.0
    else:
        # exact layers (a dense output layer) count their full training products
        done = exact = 0
        for i, l in enumerate(layers):
            if hasattr(l, "macs_done"):
                done += l.macs_done
                exact += l.macs_exact
            else:
                macs = clf.t_ * l.n_in * l.n_out * (3 if i > 0 else 2)
                done += macs
                exact += macs
        frac = done / exact
    return {
        "scheme": scheme if spec is None else spec, "ratio": ratio,
        "mode": mode if scheme != "dense" else "-",
        "threads": threads, "epochs": epochs, "n_train": int(X.shape[0]),
        "test_accuracy": float(clf.score(Xt, yt)), "mac_fraction": frac,
        "epoch_seconds": epoch_times, "median_epoch_s": statistics.median(epoch_times),
        "total_s": total, "final_loss": clf.loss_, "dense_output": bool(dense_output),
        "config": spec,
    }


def _warm_model(selection, seed, threads, X, y):
    """A 784-500-500-10 model of the paper's setting, fitted one epoch on 1,000 images so that
    its buffers, optimizer state and thread pool exist before any timing."""
    import warnings

    clf = MLPClassifier(hidden_layer_sizes=(500, 500), batch_size=50, max_iter=1,
                        random_state=seed, n_jobs=threads, selection=selection)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X[:1000], y[:1000])
    return clf


def _fixed_batches(X, y, steps, seed):
    """``steps`` random batches of 50 (contiguous float32 images, int32 labels), the same for
    every configuration timed."""
    rng = np.random.RandomState(seed)
    rows = [rng.choice(len(y), 50, replace=False) for _ in range(steps)]
    return [(np.ascontiguousarray(X[b]), y[b].astype(np.int32)) for b in rows]


def step_timing(schemes, ratios, mode, threads, X, y, rounds, steps, seed, specs=None):
    """Interleaved per-step timing: every round times ``steps`` training steps of each
    configuration in turn (dense first), so slow drifts of a shared machine hit all alike.
    Returns {config: [ms per step, one per round]}."""
    from threadpoolctl import threadpool_limits

    from fastfire.nn.active import ActiveSet

    if specs is not None:  # --configs: keys are the spec strings, "dense" first
        configs = ["dense"] + [c for c in specs if c != "dense"]
    else:
        configs = [("dense", 1.0)] + [(s, r) for s in schemes if s != "dense" for r in ratios]
    models = {}
    for c in configs:
        if specs is not None:
            sel = parse_selection(c, seed)
        else:
            scheme, ratio = c
            sel = "dense" if scheme == "dense" else ColumnRowSampling(
                scheme=scheme, ratio=ratio, mode=mode, random_state=seed)
        models[c] = _warm_model(sel, seed, threads, X, y)
    batches = _fixed_batches(X, y, steps, seed)
    out = {c: [] for c in configs}
    with threadpool_limits(1, user_api="blas"):
        for _ in range(rounds):
            for c in configs:
                clf = models[c]
                net, opt = clf._network, clf._optimizer
                t0 = time.perf_counter()
                for xb, yb in batches:
                    net.train_step(ActiveSet.from_dense(xb), yb, clf.alpha, opt, threads)
                out[c].append((time.perf_counter() - t0) / steps * 1e3)
    return out


PHASES = ("f0", "f1", "f2", "loss", "b2", "act", "b1", "b0", "adam", "total")


def _timed_step(net, opt, alpha, xb, yb, threads, acc):
    """``Network.train_step`` of a 3-layer MLP, phase by phase, adding seconds to ``acc``:
    forward of each layer (f0-f2), loss, backward of each layer (b2-b0: its weight gradient and,
    but for the first, its input gradient), activation backward (act), Adam, and the total."""
    from fastfire.nn.active import ActiveSet

    clock = time.perf_counter
    t0 = clock()
    acts = [ActiveSet.from_dense(xb)]
    for i, layer in enumerate(net.layers):
        a = clock()
        acts.append(layer.forward(acts[-1], threads, True))
        acc[f"f{i}"] += clock() - a
    a = clock()
    _, delta = net.loss.loss_and_delta(acts[-1], yb, threads)
    acc["loss"] += clock() - a
    for i in range(len(net.layers) - 1, -1, -1):
        a = clock()
        grad = net.layers[i].backward(delta, threads, need_input_grad=i > 0)
        acc[f"b{i}"] += clock() - a
        if i > 0:
            a = clock()
            net.layers[i - 1].activation_backward(acts[i], grad, threads)
            acc["act"] += clock() - a
            delta = grad
    a = clock()
    n = len(net.layers)
    opt.step(net.params, net.grads, [alpha / len(yb)] * n + [0.0] * n, threads)
    acc["adam"] += clock() - a
    acc["total"] += clock() - t0


def phase_timing(specs, threads, X, y, rounds, steps, seed):
    """Interleaved per-phase timing of training steps (see :func:`_timed_step`): every round
    runs ``steps`` steps of each configuration in turn. Returns {config: {phase: [us per
    step, one per round]}}."""
    from threadpoolctl import threadpool_limits

    specs = ["dense"] + [c for c in specs if c != "dense"]
    models = {}
    for c in specs:
        models[c] = _warm_model(parse_selection(c, seed), seed, threads, X, y)
    batches = _fixed_batches(X, y, steps, seed)
    out = {c: {k: [] for k in PHASES} for c in specs}
    with threadpool_limits(1, user_api="blas"):
        for _ in range(rounds):
            for c in specs:
                clf = models[c]
                acc = dict.fromkeys(PHASES, 0.0)
                for xb, yb in batches:
                    _timed_step(clf._network, clf._optimizer, clf.alpha, xb, yb, threads, acc)
                for k in PHASES:
                    out[c][k].append(acc[k] / steps * 1e6)
    return out


def epoch_timing(specs, threads, epochs, X, y, Xt, yt, seed, batch_size=50):
    """Interleaved training: every configuration trains one epoch in turn (``warm_start`` fits
    of one epoch each, with one ``RandomState`` per configuration carried across the fits, so
    each trains exactly as one ``max_iter=epochs`` fit would). Returns per configuration the
    seconds of each epoch (the whole ``fit`` call: validation of the data, shuffling, batches)
    and the test accuracy at the end."""
    import warnings

    specs = ["dense"] + [c for c in specs if c != "dense"]
    models = {c: MLPClassifier(hidden_layer_sizes=(500, 500), batch_size=batch_size, solver="adam",
                               max_iter=1, random_state=np.random.RandomState(seed),
                               n_jobs=threads, selection=parse_selection(c, seed),
                               warm_start=True, tol=0.0, n_iter_no_change=10**6)
              for c in specs}
    times = {c: [] for c in specs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(epochs):
            for c in specs:
                t0 = time.perf_counter()
                models[c].fit(X, y)
                times[c].append(time.perf_counter() - t0)
            # one line per round, so that an interrupted run still leaves its epoch times
            print(f"epoch {epoch + 1}: " + " ".join(f"{times[c][-1]:.3f}" for c in specs),
                  flush=True)
    return {c: (times[c], float(models[c].score(Xt, yt)), models[c].loss_) for c in specs}


def _append_json(path, row):
    """Append ``row`` as one JSON line to ``path`` (nothing when ``path`` is None)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--schemes", default="dense,bernoulli,crs,topk,topk_estimated,uniform")
    p.add_argument("--ratios", default="1.0,0.9,0.5,0.3")
    p.add_argument("--mode", default="forward")
    p.add_argument("--n-train", type=int, default=60000, help="first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="append one JSON line per configuration")
    p.add_argument("--dense-output", action="store_true",
                   help="sample the two hidden layers only; the output layer stays exact")
    p.add_argument("--step-timing", action="store_true",
                   help="interleaved per-step timing instead of training runs")
    p.add_argument("--configs", default=None,
                   help="semicolon-separated selections instead of --schemes/--ratios/--mode: "
                        "'dense', 'scheme:ratio:mode', or per layer joined by '/' "
                        "(e.g. 'dense;topk:0.3:backward/topk:0.3:backward/dense')")
    p.add_argument("--epoch-timing", action="store_true",
                   help="with --configs: train all configurations side by side, one epoch each "
                        "in turn; per-epoch time ratios vs dense and final test accuracies")
    p.add_argument("--phase-timing", action="store_true",
                   help="with --configs: interleaved per-phase timing of training steps (us per "
                        "step: forward/backward of each layer, loss, activations, Adam)")
    p.add_argument("--batch-size", type=int, default=50,
                   help="with --epoch-timing: the batch size (the paper's setting is 50)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)

    X, y = load_fashion_mnist("train")
    Xt, yt = load_fashion_mnist("test")
    X, y = X[: args.n_train], y[: args.n_train]
    # warm-up: creates the OpenMP thread pool and touches the kernels
    MLPClassifier((32,), max_iter=1, batch_size=50).fit(X[:500], y[:500])

    if args.step_timing:
        for threads in [int(t) for t in args.threads.split(",")]:
            specs = args.configs.split(";") if args.configs else None
            res = step_timing(args.schemes.split(","), [float(r) for r in args.ratios.split(",")],
                              args.mode, threads, X, y, args.rounds, args.steps, args.seed, specs)
            base = res["dense" if specs else ("dense", 1.0)]
            for key, ms in res.items():
                speed = [b / m for b, m in zip(base, ms)]
                scheme, ratio = (key, None) if specs else key
                label = (f"{key:>48}" if specs else
                         f"{scheme:>15} ratio={ratio:<4} mode={args.mode:<22}")
                row = {"kind": "step_timing", "scheme": scheme, "ratio": ratio, "mode": args.mode,
                       "config": key if specs else None,
                       "threads": threads, "ms_per_step": ms, "median_ms": statistics.median(ms),
                       "speedup_vs_dense": speed, "median_speedup": statistics.median(speed)}
                print(f"{label} threads={threads} "
                      f"{row['median_ms']:.2f} ms/step (min {min(ms):.2f}, max {max(ms):.2f}) "
                      f"speedup {row['median_speedup']:.2f}x (min {min(speed):.2f}, max {max(speed):.2f})",
                      flush=True)
                _append_json(args.json, row)
        return

    if args.phase_timing:
        for threads in [int(t) for t in args.threads.split(",")]:
            res = phase_timing(args.configs.split(";"), threads, X, y, args.rounds, args.steps,
                               args.seed)
            base = res["dense"]["total"]
            print(f"threads={threads}: us per step, median over {args.rounds} rounds of "
                  f"{args.steps} steps")
            print(f"{'config':>48}" + "".join(f"{k:>7}" for k in PHASES) + "  speed-up")
            for spec, phases in res.items():
                med = {k: statistics.median(v) for k, v in phases.items()}
                speed = statistics.median([b / t for b, t in zip(base, phases["total"])])
                print(f"{spec:>48}" + "".join(f"{med[k]:7.0f}" for k in PHASES) + f"  {speed:.2f}x",
                      flush=True)
                _append_json(args.json, {"kind": "phase_timing", "config": spec,
                                         "threads": threads, "us_per_step": phases,
                                         "median_us": med, "median_speedup": speed})
        return

    if args.epoch_timing:
        for threads in [int(t) for t in args.threads.split(",")]:
            res = epoch_timing(args.configs.split(";"), threads, args.epochs, X, y, Xt, yt,
                               args.seed, args.batch_size)
            base, base_acc = res["dense"][0], res["dense"][1]
            for spec, (secs, acc, loss) in res.items():
                ratio = [b / s for b, s in zip(base, secs)]
                row = {"kind": "epoch_timing", "config": spec, "threads": threads,
                       "epochs": args.epochs, "n_train": int(X.shape[0]), "batch_size": args.batch_size,
                       "epoch_seconds": secs,
                       "median_epoch_s": statistics.median(secs),
                       "speedup_vs_dense": ratio, "median_speedup": statistics.median(ratio),
                       "test_accuracy": acc, "delta_points": 100 * (acc - base_acc),
                       "final_loss": loss}
                print(f"{spec:>48} threads={threads} acc={acc:.4f} ({row['delta_points']:+.2f} pt) "
                      f"epoch={row['median_epoch_s']:.3f}s (min {min(secs):.3f}, max {max(secs):.3f}) "
                      f"speedup {row['median_speedup']:.3f}x (min {min(ratio):.2f}, "
                      f"max {max(ratio):.2f})", flush=True)
                _append_json(args.json, row)
        return

    if args.configs:
        for threads in [int(t) for t in args.threads.split(",")]:
            for spec in args.configs.split(";"):
                row = run(None, None, None, threads, args.epochs, X, y, Xt, yt, args.seed, spec=spec)
                print(f"{spec:>48} threads={threads} acc={row['test_accuracy']:.4f} "
                      f"macs={row['mac_fraction']:.3f} epoch={row['median_epoch_s']:.2f}s "
                      f"(min {min(row['epoch_seconds']):.2f}, max {max(row['epoch_seconds']):.2f}) "
                      f"total={row['total_s']:.1f}s", flush=True)
                _append_json(args.json, row)
        return

    for threads in [int(t) for t in args.threads.split(",")]:
        for scheme in args.schemes.split(","):
            ratios = [1.0] if scheme == "dense" else [float(r) for r in args.ratios.split(",")]
            for ratio in ratios:
                row = run(scheme, ratio, args.mode, threads, args.epochs, X, y, Xt, yt, args.seed,
                          args.dense_output)
                print(f"{row['scheme']:>15} ratio={ratio:<4} mode={row['mode']:<22} "
                      f"{'dense-out ' if args.dense_output else ''}"
                      f"threads={threads} acc={row['test_accuracy']:.4f} "
                      f"macs={row['mac_fraction']:.3f} epoch={row['median_epoch_s']:.2f}s "
                      f"(min {min(row['epoch_seconds']):.2f}, max {max(row['epoch_seconds']):.2f})",
                      flush=True)
                _append_json(args.json, row)


if __name__ == "__main__":
    main()
