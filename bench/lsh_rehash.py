"""Table freshness vs accuracy of LSH training on an XC file (the 670K-label problem).

    python bench/lsh_rehash.py /tmp/a670k_train.txt /tmp/a670k_test.txt --epochs 2 --threads 2

Trains ``[SparseInput(), LSH(...)]`` MLPs (hidden 128) with ``fit`` for each table-upkeep
schedule and prints the fit time, samples/s, the number of table rebuilds and the held-out P@1 /
P@5 (exact top-k). Make the files with ``make_extreme_classification`` + ``dump_xc`` as in
bench/RESULTS-lsh.md.
"""

import argparse
import os
import pickle
import time
import warnings

import fastfire
from fastfire import LSH, SparseInput
from fastfire.datasets import load_xc
from fastfire.metrics import precision_at_k

_P256 = {"n_projections": None}   # k*l = 256 independent projections (before 2026-11-22)

SCHEDULES = {
    # the default since 2026-11-22 (commit 57048a7): at 670K labels "fixed" every 2,048
    # samples, the tables' bits from a pool of 64 projections, every neuron in every table
    "auto": {},
    "fixed2048-pool64": {"rehash": "fixed", "rehash_every": 2048, "rebuild_sample": 1.0,
                         "n_projections": 64},
    # each table from a random group of the neurons (rebuild_sample), 256 projections
    "fixed2048-g5": {"rehash": "fixed", "rehash_every": 2048, "rebuild_sample": "auto", **_P256},
    "fixed2048-g3": {"rehash": "fixed", "rehash_every": 2048, "rebuild_sample": 1 / 3, **_P256},
    "fixed2048-g2": {"rehash": "fixed", "rehash_every": 2048, "rebuild_sample": 0.5, **_P256},
    # every neuron hashed into every table with 256 projections (the behaviour before 2026-11-22)
    "fixed2048-full": {"rehash": "fixed", "rehash_every": 2048, "rebuild_sample": 1.0, **_P256},
    "fixed4096-full": {"rehash": "fixed", "rehash_every": 4096, "rebuild_sample": 1.0, **_P256},
    "fixed8192-full": {"rehash": "fixed", "rehash_every": 8192, "rebuild_sample": 1.0, **_P256},
    "decay-full": {"rehash": "decay", "rebuild_sample": 1.0, **_P256},  # the old default
    "dense": None,  # selection="dense": every output computed (the accuracy reference)
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schedules", default="auto,fixed2048-full,decay-full",
                        help=f"comma-separated, of {', '.join(SCHEDULES)}")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of the model and of the LSH selector")
    parser.add_argument("--samples", type=int, default=None,
                        help="train on the first this many rows only")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="evaluate on the first this many test rows only")
    parser.add_argument("--checkpoint", default=None,
                        help="one schedule only: continue from this pickle when it exists "
                             "(warm start, Adam state kept) and write it back after training, "
                             "so that a long run can be split into several commands")
    args = parser.parse_args(argv)
    fastfire.show_config()
    X, Y = load_xc(args.train)
    if args.samples is not None:
        X, Y = X[:args.samples], Y[:args.samples]
    Xt, Yt = load_xc(args.test)
    if args.test_samples is not None:
        Xt, Yt = Xt[:args.test_samples], Yt[:args.test_samples]
    names = args.schedules.split(",")
    if args.checkpoint and len(names) != 1:
        parser.error("--checkpoint needs exactly one schedule")
    for name in names:
        params = SCHEDULES[name]
        done = 0
        if args.checkpoint and os.path.exists(args.checkpoint):
            with open(args.checkpoint, "rb") as f:
                clf, done = pickle.load(f)
            clf.set_params(warm_start=True, max_iter=args.epochs)
        else:
            selection = "dense" if params is None else \
                [SparseInput(), LSH(random_state=args.seed, **params)]
            clf = fastfire.MLPClassifier((128,), batch_size=128, max_iter=args.epochs,
                                         random_state=args.seed, n_jobs=args.threads,
                                         selection=selection)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            clf.fit(X, Y)
            seconds = time.perf_counter() - start
        done += args.epochs
        if args.checkpoint:
            with open(args.checkpoint, "wb") as f:
                pickle.dump((clf, done), f, protocol=pickle.HIGHEST_PROTOCOL)
        top, _ = clf.predict_topk(Xt, 5)
        rebuilds = getattr(clf._network.layers[-1], "n_rebuilds", 0)
        print(f"{name}: fit {seconds:.0f} s ({args.epochs * X.shape[0] / seconds:.0f} samples/s), "
              f"{rebuilds} table rebuilds, {done} epochs in all, test P@1 "
              f"{precision_at_k(Yt, top, 1):.4f} P@5 {precision_at_k(Yt, top, 5):.4f}", flush=True)


if __name__ == "__main__":
    main()
