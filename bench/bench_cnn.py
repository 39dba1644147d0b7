"""A small CNN on Fashion-MNIST: fastfire's exact and sampled convolutions vs PyTorch CPU.

Network: conv 1→C1 3x3 pad 1, ReLU, max-pool 2 → conv C1→C2 3x3 pad 1, ReLU, max-pool 2 →
dense (C2·7·7 → 10), softmax; batch 50, Adam (lr 1e-3). For each configuration: test accuracy,
the fraction of convolution multiply-adds done in training, median seconds per epoch.

Example::

    flock /tmp/fastfire-bench.lock .venv/bin/python bench/bench_cnn.py --n-train 10000 \\
        --epochs 2 --threads 2 --configs exact,forward0.5,backward0.5,torch
"""

import argparse
import contextlib
import io
import json
import re
import statistics
import time
import warnings

import numpy as np

from fastfire.datasets import load_fashion_mnist
from fastfire.estimators.convnet import ConvNetClassifier
from fastfire.nn.conv import Conv2D, ConvSampling


def run_fastfire(config, args, X, y, Xt, yt, threads):
    conv_sel = None
    if config != "exact":
        mode, ratio = re.match(r"(forward|backward)([0-9.]+)", config).groups()
        conv_sel = ConvSampling(float(ratio), mode=mode)
    clf = ConvNetClassifier(conv_channels=(args.c1, args.c2), image_shape=(1, 28, 28),
                            batch_size=50, max_iter=args.epochs, random_state=args.seed,
                            n_jobs=threads, conv_selection=conv_sel, verbose=True, tol=0.0,
                            n_iter_no_change=10**6)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    times = [float(t) for t in re.findall(r"time = ([0-9.]+)s", buf.getvalue())]
    convs = [l for l in clf._network.layers if isinstance(l, Conv2D)]
    frac = sum(l.macs_done for l in convs) / sum(l.macs_exact for l in convs)
    return float(clf.score(Xt, yt)), frac, times


def run_torch(args, X, y, Xt, yt, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Conv2d(1, args.c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(args.c1, args.c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(args.c2 * 49, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    Xtr = torch.from_numpy(X.reshape(-1, 1, 28, 28))
    ytr = torch.from_numpy(y.astype(np.int64))
    rng = np.random.RandomState(args.seed)
    times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(y)))
        for start in range(0, len(y), 50):
            idx = order[start: start + 50]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        pred = model(torch.from_numpy(Xt.reshape(-1, 1, 28, 28))).argmax(1).numpy()
    return float((pred == yt).mean()), 1.0, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", default="2")
    p.add_argument("--configs", default="exact,forward0.5,backward0.5,torch")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--c1", type=int, default=16)
    p.add_argument("--c2", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    X, y = load_fashion_mnist("train")
    Xt, yt = load_fashion_mnist("test")
    X, y = np.ascontiguousarray(X[: args.n_train]), y[: args.n_train]
    ConvNetClassifier(conv_channels=(2,), image_shape=(1, 28, 28), max_iter=1).fit(X[:200], y[:200])

    for threads in [int(t) for t in args.threads.split(",")]:
        for config in args.configs.split(","):
            if config == "torch":
                acc, frac, times = run_torch(args, X, y, Xt, yt, threads)
            else:
                acc, frac, times = run_fastfire(config, args, X, y, Xt, yt, threads)
            row = {"config": config, "threads": threads, "epochs": args.epochs,
                   "n_train": len(y), "channels": [args.c1, args.c2],
                   "test_accuracy": acc, "conv_mac_fraction": frac, "epoch_seconds": times,
                   "median_epoch_s": statistics.median(times)}
            print(f"{config:>12} threads={threads} acc={acc:.4f} conv_macs={frac:.3f} "
                  f"epoch={row['median_epoch_s']:.2f}s (min {min(times):.2f}, max {max(times):.2f})",
                  flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
