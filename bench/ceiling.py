"""The ideal of the LSH throughput targets: bare C loops over random active rows.

The issue quotes "a bare C loop over 1,000 random 128-float rows per sample" as the practical
ceiling of an LSH output layer. ``ceiling.c`` holds two such loops (see its header): the bare
SGD loop of the issue, and a bare lazy-Adam step (forward, then each touched row's gradient and
Adam update in one pass). This script compiles it with
``gcc -O3 -march=native -ffast-math -fopenmp`` into a temporary folder and times both on the
shape of ``bench_lsh.py throughput``'s output layer, the thread counts in turn round by round,
so the 2-thread / 1-thread ratio compares runs taken side by side. ``bench_lsh.py throughput --ceiling`` times the same loops in the same rounds as
fastfire's ``fit``.

    flock /tmp/fastfire-bench.lock python bench/ceiling.py --threads 1,2 --repeats 5
"""

import argparse
import ctypes
import os
import subprocess
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_i64p = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")


def _compile():
    """Build ceiling.c into a temporary folder and load it (the folder is removed at exit)."""
    tmp = tempfile.TemporaryDirectory(prefix="fastfire-ceiling-")
    lib_path = os.path.join(tmp.name, "ceiling.so")
    subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared",
                    os.path.join(HERE, "ceiling.c"), "-o", lib_path, "-lm"], check=True)
    lib = ctypes.CDLL(lib_path)
    c_int, c_i64, c_f = ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.bare_sgd.argtypes = [_f32p, _f32p, _i32p, c_i64, c_int, c_int, c_int, c_f, c_int]
    lib.bare_sgd.restype = None
    lib.bare_adam.argtypes = [_f32p, _f32p, _f32p, _f32p, _i32p, c_i64, c_int, c_int, c_int,
                              c_int, _i64p, _i64p, _f32p, c_f, c_int]
    lib.bare_adam.restype = None
    return lib, tmp


class Ceiling:
    """The bare loops on one problem: ``n_rows`` output neurons of ``hidden`` floats, ``active``
    distinct random rows per sample, batches of ``batch_size``.

    Parameters
    ----------
    n_rows, hidden, active, batch_size, n_samples : int
        Shape of the output layer and of the epoch that one call of :meth:`run` times.
    seed : int
        Seed of the weights, hidden vectors and active rows.
    """

    LOOPS = ("bare_sgd", "bare_adam")

    def __init__(self, n_rows, hidden, active, batch_size, n_samples, seed=0):
        rng = np.random.default_rng(seed)
        self.lib, self._tmp = _compile()
        self.shape = (n_rows, hidden, active, batch_size, n_samples)
        self.W = (rng.standard_normal((n_rows, hidden)) * 0.01).astype(np.float32)
        self.M = np.zeros_like(self.W)
        self.V = np.zeros_like(self.W)
        self.H = np.maximum(rng.standard_normal((n_samples, hidden)), 0).astype(np.float32)
        self.ids = np.empty((n_samples, active), dtype=np.int32)
        for i in range(n_samples):
            self.ids[i] = rng.choice(n_rows, active, replace=False)
        # the entries of every batch grouped by row, offsets into one array of positions i*a+j
        flat = self.ids.ravel()
        n_batches = -(-n_samples // batch_size)
        self.row_ptr = np.empty((n_batches, n_rows + 1), dtype=np.int64)
        self.row_entries = np.empty(flat.size, dtype=np.int64)
        for t in range(n_batches):
            lo, hi = t * batch_size * active, min(n_samples, (t + 1) * batch_size) * active
            order = np.argsort(flat[lo:hi], kind="stable")
            self.row_entries[lo:hi] = lo + order
            self.row_ptr[t, 0] = lo
            self.row_ptr[t, 1:] = lo + np.cumsum(np.bincount(flat[lo:hi], minlength=n_rows))
        self.delta = np.zeros(flat.size, dtype=np.float32)

    def run(self, loop, n_threads):
        """Time one epoch of ``loop`` ("bare_sgd" or "bare_adam"); returns samples per second."""
        n_rows, d, a, batch, n = self.shape
        tic = time.perf_counter()
        if loop == "bare_sgd":
            self.lib.bare_sgd(self.W, self.H, self.ids, n, d, a, batch, 1e-3, n_threads)
        elif loop == "bare_adam":
            self.lib.bare_adam(self.W, self.M, self.V, self.H, self.ids, n, d, a, n_rows, batch,
                               self.row_ptr.ravel(), self.row_entries, self.delta, 1e-3,
                               n_threads)
        else:
            raise ValueError(f"loop must be one of {self.LOOPS}, got {loop!r}")
        return n / (time.perf_counter() - tic)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, default=20000, help="output neurons (rows)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--active", type=int, default=1000, help="random rows per sample")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=10000, help="samples per timed epoch")
    p.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    ceiling = Ceiling(args.labels, args.hidden, args.active, args.batch_size, args.samples)
    rates = {(loop, t): [] for loop in Ceiling.LOOPS for t in args.threads}
    for loop in Ceiling.LOOPS:               # warm-up: OpenMP pool, pages of W, M, V
        for t in args.threads:
            ceiling.run(loop, t)
    for _ in range(args.repeats):
        for loop in Ceiling.LOOPS:
            for t in args.threads:
                rates[loop, t].append(round(ceiling.run(loop, t), 1))
    print("| loop | threads | samples/s (median) | runs |")
    print("|---|---|---|---|")
    for (loop, t), runs in rates.items():
        print(f"| {loop} | {t} | {np.median(runs):,.0f} | {runs} |")
    t0, t1 = args.threads[0], args.threads[-1]
    for loop in Ceiling.LOOPS:
        per_round = [b / a for a, b in zip(rates[loop, t0], rates[loop, t1])]
        ratio = np.median(rates[loop, t1]) / np.median(rates[loop, t0])
        print(f"{loop}: {t1} / {t0} threads {ratio:.2f}x "
              f"(ratio of medians; per round {[round(r, 2) for r in per_round]})")


if __name__ == "__main__":
    main()
