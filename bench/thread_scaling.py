"""Thread scaling of fastfire's training epoch and of its main kernels; table and PNG plot.

    python bench/thread_scaling.py --dataset fashion-mnist --hidden 1024 --threads 1,2 \
        --repeats 3 --plot bench/thread_scaling.png

Each figure is the median of ``--repeats`` runs after a warm-up; "speedup" is the 1-thread
time over the k-thread time and "efficiency" the speedup over k (1.0 is the ideal). The runs at
the different thread counts are interleaved (1, 2, 1, 2, ...), so that a slow spell of a shared
machine falls on every thread count alike instead of on one of them. ``--competing-load K`` runs
K busy-loop processes meanwhile, to show what a machine busy with other work does to the scaling.
"""

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

import fastfire
from fastfire._core import _dense, _optim


def _median_times(fn, threads, repeats):
    """{n_threads: median seconds of fn(n_threads)} over interleaved rounds, after a warm-up."""
    times = {n: [] for n in threads}
    for n in threads:
        fn(n)  # warm-up
    for _ in range(repeats):
        for n in threads:
            start = time.perf_counter()
            fn(n)
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def workloads(dataset, hidden, batch_size, epochs):
    """name -> function(n_threads) running one unit of work."""
    if dataset == "fashion-mnist":
        from fastfire.datasets import load_fashion_mnist

        X, y = load_fashion_mnist("train")
    else:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = (X / 16).astype(np.float32)
    rng = np.random.default_rng(0)
    A = rng.random((batch_size, X.shape[1]), dtype=np.float32)
    W = rng.random((X.shape[1], hidden), dtype=np.float32)
    D = rng.random((batch_size, hidden), dtype=np.float32)
    C = np.empty((batch_size, hidden), np.float32)
    G = np.empty_like(W)
    csr = sp.random(batch_size, 100_000, density=75 / 100_000, format="csr", dtype=np.float32,
                    random_state=0)
    W_wide = rng.random((100_000, 128), dtype=np.float32)
    C_wide = np.empty((batch_size, 128), np.float32)
    p = rng.random(1 << 20, dtype=np.float32)
    g, m, v = (rng.random(1 << 20, dtype=np.float32) for _ in range(3))
    # Adam over arrays that fit the L3 cache or not: how a memory-bound pass scales here
    mid = [np.full(20_000 * 128, x, np.float32) for x in (1.0, 1e-3, 0.0, 0.0)]
    big = [np.full(25_000_000, x, np.float32) for x in (1.0, 1e-3, 0.0, 0.0)]

    def epoch(n):
        clf = fastfire.MLPClassifier((hidden,), batch_size=batch_size, max_iter=epochs,
                                     random_state=0, n_jobs=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)

    return {
        f"fit: {X.shape[1]}-{hidden}-10, {epochs} epoch(s)": epoch,
        f"gemm forward {batch_size}x{X.shape[1]} @ {X.shape[1]}x{hidden}":
            lambda n: [_dense.gemm(A, W, C, n_threads=n) for _ in range(50)],
        f"gemm weight grad {X.shape[1]}x{batch_size} @ {batch_size}x{hidden}":
            lambda n: [_dense.gemm(A, D, G, trans_a=True, n_threads=n) for _ in range(50)],
        "csr_matmul 128x100k (75 nnz/row) @ 100k x 128":
            lambda n: [_dense.csr_matmul(csr.indptr.astype(np.int64), csr.indices, csr.data,
                                         W_wide, C_wide, 0.0, n) for _ in range(200)],
        "adam_step 1M parameters":
            lambda n: [_optim.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, n) for _ in range(50)],
        "adam_step 2.56M parameters (a 20K x 128 layer: 41 MB)":
            lambda n: [_optim.adam_step(*mid, 1e-3, 0.9, 0.999, 1e-8, 0.0, n) for _ in range(20)],
        "adam_step 25M parameters (400 MB: memory bound)":
            lambda n: [_optim.adam_step(*big, 1e-3, 0.9, 0.999, 1e-8, 0.0, n) for _ in range(3)],
    }


def _measure(args, threads, table):
    """Fill ``table`` with {workload: {n_threads: median seconds}} and print one line each."""
    with threadpool_limits(1, user_api="blas"):
        work = workloads(args.dataset, args.hidden, args.batch_size, args.epochs)
        if args.only_fit:
            work = dict(list(work.items())[:1])
        elif args.only_kernels:
            work = dict(list(work.items())[1:])
        for name, fn in work.items():
            table[name] = _median_times(fn, threads, args.repeats)
            base = table[name][threads[0]]
            cells = "  ".join(
                f"{n} thr {t:7.3f}s x{base / t:4.2f} (eff {base / t / n * threads[0]:.2f})"
                for n, t in table[name].items()
            )
            print(f"{name:<48} {cells}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", help="write a PNG plot of the speedups here (needs matplotlib)")
    parser.add_argument("--competing-load", type=int, default=0, metavar="K",
                        help="run K busy-loop processes meanwhile (a machine busy with other work)")
    parser.add_argument("--only-fit", action="store_true", help="time the training epoch only")
    parser.add_argument("--only-kernels", action="store_true", help="time the kernels only")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]

    fastfire.show_config()
    print()
    if args.competing_load:
        print(f"with {args.competing_load} competing busy-loop process(es)")
    table = {}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.competing_load)]
    try:
        _measure(args, threads, table)
    finally:
        for process in busy:
            process.kill()

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(threads, [n / threads[0] for n in threads], "k--", label="ideal")
        for name, times in table.items():
            ax.plot(threads, [times[threads[0]] / times[n] for n in threads], "o-", label=name)
        ax.set_xlabel("threads")
        ax.set_ylabel(f"speedup over {threads[0]} thread(s)")
        ax.set_xticks(threads)
        ax.legend(fontsize=7)
        ax.set_title("fastfire thread scaling")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
