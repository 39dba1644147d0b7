"""A small CNN on Fashion-MNIST: fastfire's exact and sampled convolutions vs PyTorch CPU.

Network: conv 1→C1 3x3 pad 1, ReLU, max-pool 2 → conv C1→C2 3x3 pad 1, ReLU, max-pool 2 →
dense (C2·7·7 → 10), softmax; batch 50, Adam (lr 1e-3).

Configurations: ``exact``; ``torch`` (the same network in PyTorch, its own initialisation);
``MODE:RATIO`` with MODE ``forward`` or ``backward`` (:class:`~fastfire.nn.conv.ConvSampling`,
top-k) on every convolution, or one entry per convolution joined by ``/`` (``dense/forward:0.6``
samples the second convolution only); ``backward:0.5:0.25`` keeps half the examples for the
weight gradient and a quarter of the output channels for the input gradient (``input_ratio``).

The fastfire configurations train side by side: every round, one epoch of each configuration
in turn (``warm_start`` fits of one epoch, one ``RandomState`` per model carried across them),
so slow drifts of a shared machine hit all alike; the time ratio vs the exact model is taken
epoch by epoch (same round) and its median reported. ``--checkpoint`` pickles the models after
every round and resumes from them, so a long run splits into commands of bounded length
(``--time-budget``). For each configuration: test accuracy (and the difference to the exact model
of the same seed), the fraction of convolution multiply-adds done in training, median seconds
per epoch and the time vs exact.

Examples::

    # the issue's table: each mode at ratios 1.0, 0.9, 0.5, 0.3
    flock /tmp/fastfire-bench.lock python bench/bench_cnn.py --table --n-train 10000 --epochs 2
    # a long run in pieces of at most 7 minutes
    flock /tmp/fastfire-bench.lock python bench/bench_cnn.py --epochs 10 --seeds 0,1 \\
        --configs exact,backward:0.5,dense/forward:0.6 --checkpoint /tmp/cnn.pkl --time-budget 420
    # per-phase microseconds of a training step (of the trained models, with --checkpoint)
    flock /tmp/fastfire-bench.lock python bench/bench_cnn.py --phase-timing \\
        --configs exact,backward:0.5
"""

import argparse
import json
import os
import pickle
import statistics
import time
import warnings

import numpy as np

from fastfire.datasets import load_fashion_mnist
from fastfire.estimators.convnet import ConvNetClassifier
from fastfire.nn.conv import Conv2D, ConvSampling


def conv_selection(config, n_conv=2):
    """``exact`` → None; ``MODE:RATIO[:INPUT_RATIO]`` for every convolution, or per convolution
    joined by ``/`` (each ``dense`` or ``MODE:RATIO``). Legacy names ``forward0.5`` are accepted."""
    def one(part):
        if part in ("dense", "exact"):
            return None
        for mode in ("forward", "backward"):
            if part.startswith(mode):  # MODE:RATIO, or backward:RATIO:INPUT_RATIO
                ratios = [float(r) for r in part[len(mode):].lstrip(":").split(":")]
                return ConvSampling(ratios[0], mode=mode, input_ratio=ratios[1] if len(ratios) > 1 else None)
        raise ValueError(f"unknown convolution selection {part!r}")

    if config == "exact":
        return None
    parts = config.split("/")
    if len(parts) == 1:
        return one(parts[0])
    if len(parts) != n_conv:
        raise ValueError(f"{config!r} names {len(parts)} convolutions, the network has {n_conv}")
    return [one(p) for p in parts]


def make_model(config, args, seed, threads):
    return ConvNetClassifier(conv_channels=(args.c1, args.c2), image_shape=(1, 28, 28),
                             batch_size=50, max_iter=1, random_state=np.random.RandomState(seed),
                             n_jobs=threads, conv_selection=conv_selection(config),
                             warm_start=True, tol=0.0, n_iter_no_change=10**6)


def conv_mac_fraction(clf):
    convs = [l for l in clf._network.layers if isinstance(l, Conv2D)]
    return sum(l.macs_done for l in convs) / sum(l.macs_exact for l in convs)


def epoch_timing(configs, seeds, args, threads, X, y, Xt, yt):
    """Train every (config, seed) side by side, one epoch each per round, until ``args.epochs``
    epochs or ``args.time_budget`` seconds; resume from / save to ``args.checkpoint``."""
    state = None
    if args.checkpoint and os.path.exists(args.checkpoint):
        with open(args.checkpoint, "rb") as f:
            state = pickle.load(f)
        if state["configs"] != configs or state["seeds"] != seeds or state["threads"] != threads:
            raise SystemExit(f"{args.checkpoint} holds another run: {state['configs']} "
                             f"seeds {state['seeds']} threads {state['threads']}")
        print(f"resumed after {state['epochs_done']} epochs", flush=True)
    if state is None:
        state = {"configs": configs, "seeds": seeds, "threads": threads, "epochs_done": 0,
                 "models": {(c, s): make_model(c, args, s, threads) for s in seeds for c in configs},
                 "times": {(c, s): [] for s in seeds for c in configs}}
    start = time.perf_counter()
    rounds = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while state["epochs_done"] < args.epochs:
            for key, clf in state["models"].items():
                t0 = time.perf_counter()
                clf.fit(X, y)
                state["times"][key].append(time.perf_counter() - t0)
            state["epochs_done"] += 1
            if args.curve:  # test accuracy after every epoch (outside the timed fits)
                for key, clf in state["models"].items():
                    state.setdefault("curves", {}).setdefault(key, []).append(float(clf.score(Xt, yt)))
            print(f"round {state['epochs_done']}: " + ", ".join(
                f"{c}/{s} {state['times'][(c, s)][-1]:.2f}s"
                + (f" acc {state['curves'][(c, s)][-1]:.4f}" if args.curve else "")
                for c, s in state["models"]), flush=True)
            if args.checkpoint:
                with open(args.checkpoint + ".tmp", "wb") as f:
                    pickle.dump(state, f)
                os.replace(args.checkpoint + ".tmp", args.checkpoint)
            rounds += 1
            elapsed = time.perf_counter() - start
            if (args.time_budget and state["epochs_done"] < args.epochs
                    and elapsed + elapsed / rounds > args.time_budget):  # the next round would not fit
                print(f"stopping after {elapsed:.0f}s (budget {args.time_budget:.0f}s); rerun to go on",
                      flush=True)
                break
    rows = []
    for (c, s), clf in state["models"].items():
        base = state["times"][(configs[0], s)]
        secs = state["times"][(c, s)]
        ratio = [b / t for b, t in zip(base, secs)]
        rows.append({"config": c, "seed": s, "threads": threads, "epochs": len(secs),
                     "n_train": int(X.shape[0]), "channels": [args.c1, args.c2],
                     "test_accuracy": float(clf.score(Xt, yt)), "final_loss": clf.loss_,
                     "conv_mac_fraction": conv_mac_fraction(clf), "epoch_seconds": secs,
                     "median_epoch_s": statistics.median(secs), "speedup_vs_exact": ratio,
                     "median_speedup": statistics.median(ratio),
                     "test_accuracy_curve": state.get("curves", {}).get((c, s))})
    for r in rows:
        exact = next(e for e in rows if e["config"] == configs[0] and e["seed"] == r["seed"])
        r["delta_points"] = 100 * (r["test_accuracy"] - exact["test_accuracy"])
    return rows, state["epochs_done"] >= args.epochs


def run_torch(args, X, y, Xt, yt, threads, seed):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, args.c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(args.c1, args.c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(args.c2 * 49, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    Xtr = torch.from_numpy(X.reshape(-1, 1, 28, 28))
    ytr = torch.from_numpy(y.astype(np.int64))
    rng = np.random.RandomState(seed)
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
    return {"config": "torch", "seed": seed, "threads": threads, "epochs": args.epochs,
            "n_train": int(X.shape[0]), "channels": [args.c1, args.c2],
            "test_accuracy": float((pred == yt).mean()), "conv_mac_fraction": 1.0,
            "epoch_seconds": times, "median_epoch_s": statistics.median(times)}


def phase_timing(configs, args, threads, X, y):
    """Per-phase microseconds of a training step (forward and backward of every layer, loss,
    activation derivatives, Adam), the configurations interleaved round by round on the same
    fixed batches, under ``fit``'s thread settings (one BLAS thread, subnormals flushed).
    Models fitted one epoch on 1,000 images, or with ``--checkpoint`` the trained models of
    seed ``--seed`` from an epoch-timing run. Returns {config: {phase: [us per step, one per
    round]}}."""
    from threadpoolctl import threadpool_limits

    from fastfire._core._openmp import flush_denormals
    from fastfire.nn.active import ActiveSet

    models = {}
    if args.checkpoint:
        with open(args.checkpoint, "rb") as f:
            trained = pickle.load(f)["models"]
        models = {c: trained[(c, args.seed)] for c in configs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in configs:
            if c not in models:
                models[c] = make_model(c, args, args.seed, threads).fit(X[:1000], y[:1000])
    rng = np.random.RandomState(args.seed)
    batches = [(np.ascontiguousarray(X[b]), y[b].astype(np.int32))
               for b in (rng.choice(len(y), 50, replace=False) for _ in range(args.steps))]
    clock = time.perf_counter
    out = {c: {} for c in configs}
    with threadpool_limits(1, user_api="blas"), flush_denormals(threads):
        for _ in range(args.rounds):
            for c, clf in models.items():
                net, opt = clf._network, clf._optimizer
                names = [f"{type(l).__name__[:4].lower()}{i}" for i, l in enumerate(net.layers)]
                acc = {}

                def add(phase, seconds):
                    acc[phase] = acc.get(phase, 0.0) + seconds

                for xb, yb in batches:
                    t0 = clock()
                    acts = [ActiveSet.from_dense(xb)]
                    for name, layer in zip(names, net.layers):
                        a = clock()
                        acts.append(layer.forward(acts[-1], threads, True))
                        add(f"f:{name}", clock() - a)
                    a = clock()
                    _, delta = net.loss.loss_and_delta(acts[-1], yb, threads)
                    add("loss", clock() - a)
                    for i in range(len(net.layers) - 1, -1, -1):
                        a = clock()
                        grad = net.layers[i].backward(delta, threads, need_input_grad=i > 0)
                        add(f"b:{names[i]}", clock() - a)
                        if i > 0:
                            # as Network.train_step: max pooling after ReLU applies its derivative
                            if not getattr(net.layers[i], "applies_input_activation", False):
                                a = clock()
                                net.layers[i - 1].activation_backward(acts[i], grad, threads)
                                add("act", clock() - a)
                            delta = grad
                    a = clock()
                    n = len(net.layers)
                    opt.step(net.params, net.grads, [clf.alpha / len(yb)] * n + [0.0] * n, threads)
                    add("adam", clock() - a)
                    add("total", clock() - t0)
                for phase, seconds in acc.items():
                    out[c].setdefault(phase, []).append(seconds / len(batches) * 1e6)
    return out


def print_table(rows):
    print("| config | seed | threads | epochs | test acc | Δ vs exact (points) | conv MACs done "
          "| s/epoch median (min–max) | time vs exact (median per-epoch ratio) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        secs = r["epoch_seconds"]
        speed = r.get("median_speedup")
        rel = f"{1 / speed:.3f} ({speed:.2f}× faster)" if speed else "-"
        delta = f"{r['delta_points']:+.2f}" if "delta_points" in r else "-"
        print(f"| {r['config']} | {r['seed']} | {r['threads']} | {r['epochs']} | "
              f"{r['test_accuracy']:.4f} | {delta} | {r['conv_mac_fraction']:.3f} | "
              f"{statistics.median(secs):.2f} ({min(secs):.2f}–{max(secs):.2f}) | {rel} |",
              flush=True)


def _append_json(path, row):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", default="2")
    p.add_argument("--configs", default="exact,forward:0.5,backward:0.5",
                   help="comma-separated; 'exact' is added first when missing; 'torch' runs after")
    p.add_argument("--table", action="store_true",
                   help="the issue's table: --modes at --ratios (overrides --configs)")
    p.add_argument("--modes", default="forward,backward")
    p.add_argument("--ratios", default="1.0,0.9,0.5,0.3")
    p.add_argument("--n-train", type=int, default=10000, help="first N training images")
    p.add_argument("--c1", type=int, default=16)
    p.add_argument("--c2", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: --seed)")
    p.add_argument("--checkpoint", default=None, help="pickle of the models, to split a long run")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: stop after the last round that fits (with --checkpoint)")
    p.add_argument("--curve", action="store_true", help="test accuracy after every epoch")
    p.add_argument("--phase-timing", action="store_true")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", default=None, help="append one JSON line per row")
    args = p.parse_args(argv)

    X, y = load_fashion_mnist("train")
    Xt, yt = load_fashion_mnist("test")
    X, y = np.ascontiguousarray(X[: args.n_train]), y[: args.n_train]
    # warm-up: creates the OpenMP thread pool and touches the kernels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ConvNetClassifier(conv_channels=(2,), image_shape=(1, 28, 28), max_iter=1).fit(X[:200], y[:200])

    configs = args.configs.split(",")
    if args.table:
        configs = ["exact"] + [f"{m}:{r}" for m in args.modes.split(",")
                               for r in args.ratios.split(",")]
    with_torch = "torch" in configs
    configs = [c for c in configs if c != "torch"]
    if "exact" in configs:
        configs.remove("exact")
    configs.insert(0, "exact")
    seeds = [int(s) for s in (args.seeds or str(args.seed)).split(",")]

    for threads in [int(t) for t in args.threads.split(",")]:
        if args.phase_timing:
            res = phase_timing(configs, args, threads, X, y)
            phases = list(res[configs[0]])
            print(f"threads={threads}: us per step, median over {args.rounds} rounds of "
                  f"{args.steps} steps")
            print("| config | " + " | ".join(phases) + " | speed-up |")
            print("|---" * (len(phases) + 2) + "|")
            base = res[configs[0]]["total"]
            for c, ph in res.items():
                med = {k: statistics.median(v) for k, v in ph.items()}
                speed = statistics.median([b / t for b, t in zip(base, ph["total"])])
                print(f"| {c} | " + " | ".join(f"{med.get(k, 0):.0f}" for k in phases)
                      + f" | {speed:.2f}× |", flush=True)
                _append_json(args.json, {"kind": "phase_timing", "config": c, "threads": threads,
                                         "us_per_step": ph, "median_us": med,
                                         "median_speedup": speed})
            continue
        rows, finished = epoch_timing(configs, seeds, args, threads, X, y, Xt, yt)
        if with_torch and finished:
            rows += [run_torch(args, X, y, Xt, yt, threads, s) for s in seeds]
        print(f"\nthreads={threads}, {X.shape[0]} training images, "
              f"{'finished' if finished else 'not finished'}:")
        print_table(rows)
        for r in rows:
            _append_json(args.json, {"kind": "epoch_timing", **r})


if __name__ == "__main__":
    main()
