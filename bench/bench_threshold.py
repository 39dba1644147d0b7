"""Threshold firing in an MLP: seconds per epoch, firing fraction and accuracy against dense.

    python bench/bench_threshold.py --hidden 1024,1024 --thresholds 0,0.5,1,2 --epochs 2 --threads 1,2

Fashion-MNIST (found through FASTFIRE_DATA), batch 128, Adam. Every hidden layer gets
``Threshold(b)``; the output layer stays dense. Times are medians of ``--repeats`` fits;
"firing1" is the firing fraction of the first hidden layer on 2,000 test images.
"""

import argparse
import statistics
import sys
import time
import warnings

from sklearn.exceptions import ConvergenceWarning

import fastfire
from fastfire.datasets import load_fashion_mnist
from fastfire.nn.active import ActiveSet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="1024,1024")
    parser.add_argument("--thresholds", default="0,0.5,1,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    warnings.simplefilter("ignore", ConvergenceWarning)
    fastfire.show_config()
    print(f"\nFashion-MNIST 784-{'-'.join(map(str, hidden))}-10, batch 128, Adam, "
          f"{args.epochs} epochs, medians of {args.repeats}\n")
    print(f"{'selection':<16} {'thr':>3} {'s/epoch':>8} {'vs dense':>8} {'firing1':>7} {'test acc':>8}")
    for threads in (int(t) for t in args.threads.split(",")):
        dense_seconds = None
        for b in [None] + [float(b) for b in args.thresholds.split(",")]:
            selection = "dense" if b is None else [fastfire.Threshold(b)] * len(hidden) + ["dense"]
            times = []
            for seed in range(args.repeats):
                clf = fastfire.MLPClassifier(hidden, batch_size=128, max_iter=args.epochs, tol=0,
                                             random_state=seed, n_jobs=threads, selection=selection)
                start = time.perf_counter()
                clf.fit(X, y)
                times.append((time.perf_counter() - start) / args.epochs)
            seconds = statistics.median(times)
            dense_seconds = dense_seconds or seconds
            firing = ""
            if b is not None:
                layer = clf._network.layers[0]
                layer.forward(ActiveSet.from_data(X_test[:2000]), threads)
                firing = f"{layer.firing_fraction:.3f}"
            name = "dense" if b is None else f"Threshold({b:g})"
            print(f"{name:<16} {threads:>3} {seconds:>8.3f} {dense_seconds / seconds:>7.2f}x "
                  f"{firing:>7} {clf.score(X_test, y_test):>8.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
