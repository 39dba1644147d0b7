"""Correlation trees vs dense BLAS: time per gradient-descent iteration of the shifted-ReLU net.

Every configuration (n, d, m, threads, solver) runs ``ShiftedReLURegressor.fit`` in a fresh
subprocess, so that its peak memory (``ru_maxrss``) and its thread pools are its own. The time
of an iteration is the estimator's ``iteration_seconds_``; the first iteration is a warm-up
and the table shows the median of the others. Tree and dense start from the same
``random_state`` and the script reports how far their loss curves differ.

Examples
--------
    python bench/bench_corrtree.py --quick --plot bench/corrtree.png
    python bench/bench_corrtree.py --headline                 # n=256, d=1024, m=2^18
    python bench/bench_corrtree.py --threads 1,2 --iters 4    # the full grid (slow)
    python bench/bench_corrtree.py --sweeps                   # fan-out and repair-vs-rebuild

Configurations whose dense W or C would exceed --memory-gb (default 6 GB), or whose
predicted time (cost model of fastfire.estimators.shifted_relu) exceeds --max-seconds, are
skipped and listed as skipped.
"""

import argparse
import datetime
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ one configuration (worker)
def run_one(cfg):
    import warnings

    from fastfire.estimators.shifted_relu import ShiftedReLURegressor

    n, d, m = cfg["n"], cfg["d"], cfg["m"]
    rng = np.random.default_rng(cfg.get("data_seed", 0))
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = np.sin(3.0 * X[:, 0] / np.linalg.norm(X, axis=1) * np.sqrt(d)) + rng.standard_normal(n) * 0.1
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reg = ShiftedReLURegressor(n_neurons=m, solver=cfg["solver"], max_iter=cfg["iters"], tol=0.0,
                               random_state=0, n_jobs=cfg["threads"], batch_size=cfg.get("batch_size"))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **cfg,
        "iteration_seconds": reg.iteration_seconds_,
        "loss_curve": reg.loss_curve_,
        "firing_fraction": reg.firing_fraction_,
        "preprocessing_seconds": reg.preprocessing_seconds_,
        "fit_seconds": total,
        "peak_rss_mb": peak / 1024.0,
        "rss_before_fit_mb": base_rss / 1024.0,
    }


def spawn(cfg, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timeout after {timeout} s"}
    if out.returncode != 0:
        return {**cfg, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ guards
def memory_gb(solver, n, m, d):
    w = m * d * 4 / 1e9
    c = n * m * 4 / 1e9
    if solver == "dense":
        return w, c, w + 4 * c          # W, and Z, H, D, mask of one batch
    return w, c, w + 2.2 * c            # W0, C, A, trees


def skip_reason(solver, n, m, d, args, p):
    from fastfire.estimators.shifted_relu import estimate_iteration_seconds

    w, c, total = memory_gb(solver, n, m, d)
    if max(w, c) > args.memory_gb or total > 0.7 * args.ram_gb:
        return f"memory: W {w:.1f} GB, C {c:.1f} GB, total ~{total:.1f} GB"
    est = estimate_iteration_seconds(solver, n, m, d, p) * args.iters
    if solver == "tree":
        est += estimate_iteration_seconds("dense", n, m, d, p) / 2       # preprocessing GEMM
    if est > args.max_seconds:
        return f"predicted {est:.0f} s > --max-seconds {args.max_seconds:.0f}"
    return None


# ------------------------------------------------------------------ sweeps (in process)
def sweeps(args):
    from fastfire._core import _corrtree
    from fastfire.nn import corrtree as ct

    n, m, d = 256, 2**18 if not args.quick else 2**16, 32
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W = rng.standard_normal((m, d), dtype=np.float32)
    b = np.float32(math.sqrt(0.4 * math.log(m)))
    rows = np.arange(n, dtype=np.int32)
    threads = max(int(t) for t in args.threads.split(","))
    print(f"\n### Fan-out (n={n}, m={m}, b={b:.3f}, {threads} threads; median of 5, ms)\n")
    print("| fan-out | DTree query, all rows | DTree rebuild | WTree rebuild | WTree query, all neurons |")
    print("|---|---|---|---|---|")
    for fanout in (2, 4, 8, 16, 32, 64):
        tree = ct.CorrelationTree(X, W, n_jobs=threads, fanout=fanout)
        times = []
        for _ in range(5):
            t = [time.perf_counter()]
            _corrtree.dtree_query(tree._C, tree._dnodes, tree._dsize, tree._doff, fanout, rows, b, tree.n_threads)
            t.append(time.perf_counter())
            _corrtree.dtree_refresh(tree._C, tree._dnodes, tree._dsize, tree._doff, fanout, rows,
                                    tree._EMPTY_OFFSETS, tree._EMPTY_OFFSETS, tree.n_threads)
            t.append(time.perf_counter())
            _corrtree.wtree_refresh(tree._C, tree._wnodes, tree._wsize, tree._woff, fanout,
                                    tree._EMPTY_IDS, tree.n_threads)
            t.append(time.perf_counter())
            _corrtree.wtree_query(tree._C, tree._wnodes, tree._wsize, tree._woff, fanout,
                                  np.arange(m, dtype=np.int32), b, tree.n_threads)
            t.append(time.perf_counter())
            times.append(np.diff(t))
        med = 1e3 * np.median(times, axis=0)
        print(f"| {fanout} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.1f} |")
    scan = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.count_nonzero(tree._C > b, axis=1)
        scan.append(time.perf_counter() - t0)
    print(f"\nNumPy full scan `C > b` for comparison: {1e3 * np.median(scan):.1f} ms")

    print(f"\n### gradient_step kernels by fraction of neurons touched (n={n}, m={m}; ms, median of 3)\n")
    print("(touched fraction varied through the batch size n_b; `list` = gradient_update over the touched")
    print("neurons + path repair, `range` = gradient_update_range with the fused level-1 rebuild)\n")
    print("| n_b | touched fraction | list + repair | range + fused |")
    print("|---|---|---|---|")
    a = rng.choice([-1.0, 1.0], size=(m, 1)).astype(np.float32)
    for n_b in (1, 4, 16, 64, 256):
        rows_b = np.sort(rng.choice(n, n_b, replace=False)).astype(np.int32)
        res = {}
        for label, frac in (("list", 2.0), ("range", -1.0)):
            ct.RANGE_UPDATE_FRACTION = frac
            tree = ct.CorrelationTree(X, W, n_jobs=threads, fanout=16)
            ts = []
            for _ in range(3):
                out, indptr, indices = tree.forward(rows_b, b, a)
                t0 = time.perf_counter()
                touched = tree.gradient_step(rows_b, indptr, indices, out - 1.0, a, -1e-3)
                ts.append(time.perf_counter() - t0)
            res[label] = 1e3 * np.median(ts)
        print(f"| {n_b} | {touched / m:.3f} | {res['list']:.1f} | {res['range']:.1f} |")
    ct.RANGE_UPDATE_FRACTION = 0.65

    print(f"\n### Repair vs rebuild after changing a fraction of the columns (fan-out 16; ms)\n")
    print("| changed columns | touched level-1 nodes | repair DTree paths | rebuild DTrees | WTree: listed columns | WTree: rebuild all |")
    print("|---|---|---|---|---|---|")
    tree = ct.CorrelationTree(X, W, n_jobs=threads, fanout=16)
    for frac in (0.0001, 0.001, 0.01, 0.05, 0.1, 0.3, 1.0):
        cols = np.sort(rng.choice(m, max(1, int(frac * m)), replace=False)).astype(np.int32)
        res = {}
        for label, dfrac, wfrac in (("repair", 2.0, 2.0), ("rebuild", -1.0, -1.0)):
            ct.REBUILD_FRACTION, ct.WTREE_REBUILD_FRACTION = dfrac, wfrac
            td, tw = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                tree._repair_columns(cols)
                t1 = time.perf_counter()
                tree._sync_wtrees()
                t2 = time.perf_counter()
                td.append(t1 - t0)
                tw.append(t2 - t1)
            res[label] = (1e3 * np.median(td), 1e3 * np.median(tw))
        level1 = np.unique(cols // 16).size / tree._dsize[1]
        print(f"| {frac:.4f} | {level1:.3f} | {res['repair'][0]:.1f} | {res['rebuild'][0]:.1f} | "
              f"{res['repair'][1]:.1f} | {res['rebuild'][1]:.1f} |")


# ------------------------------------------------------------------ cost model
def fit_cost(paths):
    """Fit the per-iteration cost model of solver="auto" to saved results; print the check."""
    from scipy.optimize import nnls

    from fastfire.estimators import shifted_relu as sr

    latest = {}            # later files win for the same (n, d, m, threads, solver)
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["results"]:
                if r.get("batch_size") is None and r["iters"] <= 10:
                    latest[(r["n"], r["d"], r["m"], r["threads"], r["solver"])] = r
    rows = list(latest.values())
    fits = {}
    for solver in ("tree", "dense"):
        rs = [r for r in rows if r["solver"] == solver]
        if not rs:
            continue
        t = np.array([np.median(r["iteration_seconds"][1:]) for r in rs])
        n = np.array([r["n"] for r in rs], float)
        m = np.array([r["m"] for r in rs], float)
        d = np.array([r["d"] for r in rs], float)
        nnz = n * m * np.array([r["firing_fraction"][0] for r in rs])
        one = np.ones_like(n)
        A = (np.column_stack([n * nnz, n * m, one]) if solver == "tree" else
             np.column_stack([n * m * d, n * m, one]))
        coef, _ = nnls(A / t[:, None], np.ones_like(t))          # least squares on relative error
        fits[solver] = coef
        pred = A @ coef
        print(f"{solver}: coefficients {coef} ; median |pred/meas - 1| = "
              f"{np.median(np.abs(pred / t - 1)):.2f}, max = {np.max(np.abs(pred / t - 1)):.2f}")
    if len(fits) == 2:
        pairs = {}
        for r in rows:
            pairs.setdefault((r["n"], r["d"], r["m"], r["threads"]), {})[r["solver"]] = r
        right = total = 0
        print("\n| n | d | m | threads | measured faster | model (fitted) picks | measured ratio dense/tree |")
        print("|---|---|---|---|---|---|---|")
        for k in sorted(pairs):
            if len(pairs[k]) < 2:
                continue
            n, d, m, th = k
            tt = np.median(pairs[k]["tree"]["iteration_seconds"][1:])
            td = np.median(pairs[k]["dense"]["iteration_seconds"][1:])
            p = pairs[k]["tree"]["firing_fraction"][0]
            pt = fits["tree"] @ [n * n * m * p, n * m, 1.0]
            pd = fits["dense"] @ [n * m * d, n * m, 1.0]
            meas = "tree" if tt < td else "dense"
            pick = "tree" if pt < pd else "dense"
            right += meas == pick
            total += 1
            print(f"| {n} | {d} | 2^{int(math.log2(m))} | {th} | {meas} | {pick} | {td / tt:.2f} |")
        print(f"\nthe fitted model picks the faster solver in {right}/{total} configurations")
        print(f"current constants in fastfire.estimators.shifted_relu: dense {sr.COST_DENSE:.3g}, "
              f"{sr.COST_DENSE_ELEM:.3g}, {sr.COST_DENSE_FIXED:.3g}; tree {sr.COST_TREE_PAIR:.3g}, "
              f"{sr.COST_TREE_ELEM:.3g}, {sr.COST_TREE_FIXED:.3g}")


# ------------------------------------------------------------------ main
def fit_exponent(ms, ts):
    if len(ms) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ms), np.log(ts), 1)[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="m in 2^12..2^16, fewer iterations")
    ap.add_argument("--headline", action="store_true", help="only n=256, d=1024, m=2^18")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    ap.add_argument("--solvers", default="tree,dense", help="comma-separated subset of tree,dense")
    ap.add_argument("--n", default="128,512")
    ap.add_argument("--d", default="64,1024")
    ap.add_argument("--m-exp", default=None, help="comma-separated exponents of m (default 12..20)")
    ap.add_argument("--iters", type=int, default=4, help="GD iterations per run (first = warm-up)")
    ap.add_argument("--memory-gb", type=float, default=6.0)
    ap.add_argument("--ram-gb", type=float, default=24.0)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="skip runs predicted longer")
    ap.add_argument("--plot", default=None, help="write a log-log PNG of time per iteration vs m")
    ap.add_argument("--json", default=None, help="write the raw results")
    ap.add_argument("--sweeps", action="store_true", help="also the fan-out and repair sweeps")
    ap.add_argument("--train-iters", type=int, default=0,
                    help="also: firing fraction over this many iterations (n=256, d=64, m=2^16)")
    ap.add_argument("--fit-cost", nargs="+", default=None, metavar="JSON",
                    help="fit the cost model of solver='auto' to saved --json results and exit")
    ap.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                    help="only redraw --plot from saved --json results")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.fit_cost:
        fit_cost(args.fit_cost)
        return
    if args.replot:
        saved = {}
        for path in args.replot:      # later files win for the same configuration
            with open(path) as f:
                for r in json.load(f)["results"]:
                    saved[(r["n"], r["d"], r["m"], r["threads"], r["solver"], r["iters"])] = r
        saved = list(saved.values())
        plot(saved, args.plot or "corrtree.png", max(int(t) for t in args.threads.split(",")))
        return

    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker))))
        return

    from scipy.special import ndtr

    import fastfire

    print(f"# bench_corrtree  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print("command: python " + " ".join(sys.argv))
    fastfire.show_config()

    threads = [int(t) for t in args.threads.split(",")]
    if args.headline:
        grid = [(256, 1024, 18)]
    else:
        exps = ([int(e) for e in args.m_exp.split(",")] if args.m_exp else
                ([12, 14, 16] if args.quick else list(range(12, 21))))
        grid = [(n, d, e) for n in map(int, args.n.split(",")) for d in map(int, args.d.split(","))
                for e in exps]
    iters = 3 if args.quick and args.iters == 4 else args.iters
    args.iters = iters

    results, skipped = [], []
    for n, d, e in grid:
        m = 2**e
        p = float(ndtr(-math.sqrt(0.4 * math.log(m))))
        for t in threads:
            for solver in args.solvers.split(","):
                reason = skip_reason(solver, n, m, d, args, p)
                cfg = dict(n=n, d=d, m=m, threads=t, solver=solver, iters=iters)
                if reason:
                    skipped.append({**cfg, "reason": reason})
                    print(f"skip {cfg}: {reason}", flush=True)
                    continue
                r = spawn(cfg, timeout=max(600, 5 * args.max_seconds))
                if "error" in r:
                    skipped.append({**cfg, "reason": r["error"]})
                    print(f"FAILED {cfg}: {r['error']}", flush=True)
                    continue
                its = r["iteration_seconds"]
                r["median_seconds"] = float(np.median(its[1:] if len(its) > 1 else its))
                results.append(r)
                print(f"n={n} d={d} m=2^{e} threads={t} {solver:5s}: {1e3 * r['median_seconds']:9.1f} ms/it "
                      f"(prep {r['preprocessing_seconds']:.2f} s, peak {r['peak_rss_mb']:.0f} MB, "
                      f"firing {r['firing_fraction'][0]:.4f})", flush=True)

    # ---------------- tables
    print("\n### Time per GD iteration (median of iterations 2..k, ms) and speed-up\n")
    print("| n | d | m | threads | tree ms | dense ms | speed-up | tree prep s | peak MB tree / dense | firing | max rel. loss diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    key = lambda r: (r["n"], r["d"], r["m"], r["threads"])  # noqa: E731
    by = {}
    for r in results:
        by.setdefault(key(r), {})[r["solver"]] = r
    for k in sorted(by):
        tr, de = by[k].get("tree"), by[k].get("dense")
        n, d, m, t = k
        diff = "—"
        if tr and de:
            lt, ld = np.array(tr["loss_curve"]), np.array(de["loss_curve"])
            diff = f"{np.max(np.abs(lt - ld) / np.abs(ld)):.1e}"
        speed = f"{de['median_seconds'] / tr['median_seconds']:.1f}×" if tr and de else "—"
        t_ms = f"{1e3 * tr['median_seconds']:.1f}" if tr else "—"
        d_ms = f"{1e3 * de['median_seconds']:.1f}" if de else "—"
        prep = f"{tr['preprocessing_seconds']:.2f}" if tr else "—"
        t_mb = f"{tr['peak_rss_mb']:.0f}" if tr else "—"
        d_mb = f"{de['peak_rss_mb']:.0f}" if de else "—"
        print(f"| {n} | {d} | 2^{int(round(math.log2(m)))} | {t} | {t_ms} | {d_ms} | {speed} | {prep} | "
              f"{t_mb} / {d_mb} | {(tr or de)['firing_fraction'][0]:.4f} | {diff} |")
    print("\n### Growth exponent of time per iteration in m (least squares on log-log)\n")
    print("| n | d | threads | solver | m range | exponent |")
    print("|---|---|---|---|---|---|")
    groups = {}
    for r in results:
        groups.setdefault((r["n"], r["d"], r["threads"], r["solver"]), []).append(r)
    for g in sorted(groups):
        rs = sorted(groups[g], key=lambda r: r["m"])
        ms = [r["m"] for r in rs]
        ts = [r["median_seconds"] for r in rs]
        if len(ms) < 2:
            continue
        print(f"| {g[0]} | {g[1]} | {g[2]} | {g[3]} | 2^{int(math.log2(ms[0]))}..2^{int(math.log2(ms[-1]))} | "
              f"{fit_exponent(ms, ts):.2f} |")
    if skipped:
        print("\n### Skipped\n")
        for s in skipped:
            print(f"- n={s['n']} d={s['d']} m=2^{int(math.log2(s['m']))} threads={s['threads']} "
                  f"{s['solver']}: {s['reason']}")

    if args.train_iters:
        cfg = dict(n=256, d=64, m=2**16, threads=max(threads), solver="tree", iters=args.train_iters)
        r = spawn(cfg, timeout=1200)
        if "error" not in r:
            ff = r["firing_fraction"]
            marks = sorted({0, len(ff) // 4, len(ff) // 2, 3 * len(ff) // 4, len(ff) - 1})
            print(f"\n### Firing fraction over training (n=256, d=64, m=2^16, tree, b=√(0.4 ln m))\n")
            print("| iteration | loss | firing fraction | firing neurons per input |")
            print("|---|---|---|---|")
            for i in marks:
                print(f"| {i + 1} | {r['loss_curve'][i]:.4f} | {ff[i]:.5f} | {ff[i] * cfg['m']:.0f} |")
            results.append(r)

    if args.sweeps:
        sweeps(args)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "skipped": skipped}, f)
    if args.plot and results:
        plot(results, args.plot, max(threads))


def plot(results, path, t_plot):
    """Log-log time per iteration vs m: one colour per (n, d), solid = tree, dashed = dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in results:
        if r["threads"] == t_plot and r.get("batch_size") is None and r["iters"] <= 10:
            groups.setdefault((r["n"], r["d"], r["solver"]), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = {}
    for g in sorted(groups):
        rs = sorted(groups[g], key=lambda r: r["m"])
        colour = colours.setdefault(g[:2], f"C{len(colours)}")
        ax.loglog([r["m"] for r in rs], [np.median(r["iteration_seconds"][1:]) for r in rs],
                  color=colour, marker="o" if g[2] == "tree" else "s",
                  linestyle="-" if g[2] == "tree" else "--", label=f"{g[2]} n={g[0]} d={g[1]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("m (neurons)")
    ax.set_ylabel("seconds per GD iteration (median)")
    ax.set_title(f"shifted-ReLU GD: correlation tree (solid) vs dense BLAS (dashed), {t_plot} threads",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
