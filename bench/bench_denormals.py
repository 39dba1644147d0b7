"""Epoch time of a trained network with and without flushing subnormal floats during ``fit``.

Float32 back-propagation through a confident network makes gradients below 1.2e-38
(subnormal floats), and x86 cores compute with those through microcode. ``fit`` therefore runs
with the threads flushing them to zero (``fastfire._core._openmp.flush_denormals``). This
benchmark trains a Fashion-MNIST model for ``--train-epochs`` epochs, then times one more epoch
of copies of it, in turn round by round: with the flush (the library as shipped) and without it
(the context replaced by a no-op here, as before the change), next to an untrained model of the
same shape. It also counts the subnormal floats the model holds after each kind of epoch.

    flock /tmp/fastfire-bench.lock python bench/bench_denormals.py --model cnn --threads 2
    flock /tmp/fastfire-bench.lock python bench/bench_denormals.py --model mlp --threads 2
"""

import argparse
import contextlib
import copy
import statistics
import time
import warnings

import numpy as np

import fastfire.estimators._mlp_base as mlp_base
from fastfire import ConvNetClassifier, MLPClassifier
from fastfire.datasets import load_fashion_mnist

TINY = np.finfo(np.float32).tiny


def make_model(args, threads):
    common = dict(batch_size=50, max_iter=1, random_state=0, n_jobs=threads, warm_start=True,
                  tol=0.0, n_iter_no_change=10**6)
    if args.model == "mlp":
        return MLPClassifier(hidden_layer_sizes=(500, 500), **common)
    return ConvNetClassifier(conv_channels=(args.c1, args.c2), image_shape=(1, 28, 28), **common)


def count_subnormals(obj, seen=None):
    """Subnormal float32 values in every array reachable from ``obj`` (weights, optimizer state,
    the layers' buffers of the last batch)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype != np.float32:
            return 0
        a = np.abs(obj)
        return int(np.count_nonzero((a > 0) & (a < TINY)))
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif hasattr(obj, "__dict__"):
        children = vars(obj).values()
    else:
        return 0
    return sum(count_subnormals(c, seen) for c in children)


def one_epoch(model, X, y, flush):
    """Seconds for one more epoch of a copy of ``model``; the copy is returned too."""
    model = copy.deepcopy(model)
    patched = mlp_base.flush_denormals
    if not flush:
        mlp_base.flush_denormals = lambda n_threads: contextlib.nullcontext()
    try:
        tic = time.perf_counter()
        model.fit(X, y)
        return time.perf_counter() - tic, model
    finally:
        mlp_base.flush_denormals = patched


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mlp", "cnn"], default="cnn",
                   help="mlp: 784-500-500-10; cnn: conv C1, pool, conv C2, pool, dense (batch 50)")
    p.add_argument("--c1", type=int, default=16)
    p.add_argument("--c2", type=int, default=32)
    p.add_argument("--n-train", type=int, default=10000, help="first N training images")
    p.add_argument("--train-epochs", type=int, default=4, help="epochs before the timed ones")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    X, y = load_fashion_mnist("train")
    X, y = np.ascontiguousarray(X[: args.n_train]), y[: args.n_train]
    warnings.simplefilter("ignore")
    trained = make_model(args, args.threads)
    tic = time.perf_counter()
    for _ in range(args.train_epochs):
        trained.fit(X, y)
    print(f"{args.model}: trained {args.train_epochs} epochs on {len(y)} images in "
          f"{time.perf_counter() - tic:.1f}s", flush=True)
    untrained = make_model(args, args.threads).fit(X[:100], y[:100])

    configs = {"trained, flush (shipped)": (trained, True),
               "trained, no flush (before)": (trained, False),
               "untrained, flush": (untrained, True),
               "untrained, no flush": (untrained, False)}
    times = {name: [] for name in configs}
    subnormals = {}
    for _ in range(args.rounds):
        for name, (model, flush) in configs.items():
            seconds, after = one_epoch(model, X, y, flush)
            times[name].append(seconds)
            subnormals[name] = count_subnormals(after)
    base = times["trained, flush (shipped)"]
    print(f"\n{args.model}, {args.threads} threads, {len(y)} images per epoch, "
          f"median of {args.rounds} rounds")
    print("| model | s/epoch median (min–max) | vs trained with flush (median per-round ratio) "
          "| subnormal floats held after the epoch |")
    print("|---|---|---|---|")
    for name, secs in times.items():
        ratio = statistics.median(s / b for s, b in zip(secs, base))
        print(f"| {name} | {statistics.median(secs):.2f} ({min(secs):.2f}–{max(secs):.2f}) | "
              f"{ratio:.2f}× | {subnormals[name]:,} |")


if __name__ == "__main__":
    main()
