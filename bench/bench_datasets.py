"""Time fastfire's data layer: make_extreme_classification, dump_xc and load_xc.

    python bench/bench_datasets.py                      # 10^5 samples x 10^5 features x 10^6 labels
    python bench/bench_datasets.py --n-samples 20000    # quicker

Prints one table (best of --repeat runs; dump_xc once); MB/s counts the uncompressed text. The XC
file goes to a temporary folder and is removed.
"""

import argparse
import os
import tempfile
import time

from fastfire.datasets import dump_xc, load_xc, make_extreme_classification


def best_of(repeat, fn):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=100_000)
    parser.add_argument("--n-labels", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gzip", action="store_true", help="also time a gzip-compressed file")
    args = parser.parse_args(argv)

    n, d, L = args.n_samples, args.n_features, args.n_labels
    rows = []
    t, (X, Y) = best_of(args.repeat, lambda: make_extreme_classification(n, d, L, random_state=0))
    size = f"{n:.0e} x {d:.0e} feat x {L:.0e} lab"
    rows.append(("make_extreme_classification", size, t, "", f"{n / t:,.0f}"))
    mem = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes + Y.indices.nbytes + Y.data.nbytes
           + Y.indptr.nbytes) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        names = ["data.txt"] + (["data.txt.gz"] if args.gzip else [])
        text_mb = None
        for name in names:  # MB/s counts the uncompressed text
            path = os.path.join(tmp, name)
            t, _ = best_of(1, lambda: dump_xc(X, Y, path))
            mb = os.path.getsize(path) / 1e6
            text_mb = text_mb or mb
            rows.append((f"dump_xc ({name})", f"{mb:,.1f} MB", t, f"{text_mb / t:,.0f}", f"{n / t:,.0f}"))
            t, (X2, Y2) = best_of(args.repeat, lambda: load_xc(path))
            assert (X2 != X).nnz == 0 and (Y2 != Y).nnz == 0, "round trip mismatch"
            rows.append((f"load_xc ({name})", f"{mb:,.1f} MB", t, f"{text_mb / t:,.0f}", f"{n / t:,.0f}"))

    print(f"X nnz {X.nnz:,} ({X.nnz / n:.1f}/row), Y nnz {Y.nnz:,} ({Y.nnz / n:.2f}/row), "
          f"CSR arrays {mem:,.0f} MiB")
    header = ("operation", "size", "seconds", "MB/s", "rows/s")
    widths = [max(len(str(r[i])) if i != 2 else 7 for r in rows + [header]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for op, sz, sec, mbs, rps in rows:
        cells = (op, sz, f"{sec:.3f}", mbs, rps)
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))


if __name__ == "__main__":
    main()
