"""fastfire's dense path vs scikit-learn's MLPClassifier, PyTorch CPU and a GEMM lower bound.

Same network, data, batch size, optimizer (Adam) and epochs for every implementation, in one
run; medians of several runs at each thread count. Example (the headline of bench/RESULTS.md)::

    python bench/compare_dense.py --dataset fashion-mnist --hidden 256,1024 --epochs 5 \
        --threads 1,2 --repeats 3

Fashion-MNIST is found through FASTFIRE_DATA (see fastfire.datasets); ``--dataset digits``
needs no download. PyTorch is used when installed (``pip install torch``); it runs in a child
process, because importing torch in this process loads torch's own OpenMP runtime, which
fastfire's kernels would then use too (it changes fastfire's times by 10-15%).
"""

import argparse
import functools
import importlib.util
import json
import subprocess
import statistics
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from threadpoolctl import threadpool_limits

# fastfire is imported inside the functions that use it, so that the PyTorch child process
# loads torch (and its OpenMP runtime) before anything else, as a torch-only program does.


def load(dataset):
    """(X_train, y_train, X_test, y_test) as float32 in [0, 1]."""
    if dataset == "fashion-mnist":
        from fastfire.datasets import load_fashion_mnist

        X_train, y_train = load_fashion_mnist("train")
        X_test, y_test = load_fashion_mnist("test")
        return X_train, y_train, X_test, y_test
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return _split((X / 16).astype(np.float32), y)


def _split(X, y):
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    return X_train, y_train, X_test, y_test


def run_fastfire(data, hidden, epochs, batch_size, threads, seed):
    import fastfire

    X, y, X_test, y_test = data
    clf = fastfire.MLPClassifier((hidden,), batch_size=batch_size, max_iter=epochs, tol=0,
                                 n_iter_no_change=epochs + 1, random_state=seed, n_jobs=threads)
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    return seconds, clf.score(X_test, y_test)


def run_sklearn(data, hidden, epochs, batch_size, threads, seed):
    X, y, X_test, y_test = data
    clf = SkMLPClassifier((hidden,), batch_size=batch_size, max_iter=epochs, tol=0,
                          n_iter_no_change=epochs + 1, random_state=seed)
    with threadpool_limits(threads, user_api="blas"):
        start = time.perf_counter()
        clf.fit(X, y)
        seconds = time.perf_counter() - start
    return seconds, clf.score(X_test, y_test)


def run_sklearn_float64(data, hidden, epochs, batch_size, threads, seed):
    """scikit-learn on float64 input (``X / 255.0``, the usual user path): it then computes in
    float64, while fastfire converts to float32."""
    X, y, X_test, y_test = data
    return run_sklearn((X.astype(np.float64), y, X_test.astype(np.float64), y_test),
                       hidden, epochs, batch_size, threads, seed)


def run_torch(data, hidden, epochs, batch_size, threads, seed, dataset):
    """PyTorch CPU on the same network and data, in a child process (see the module docstring)."""
    request = dict(dataset=dataset, hidden=hidden, epochs=epochs, batch_size=batch_size,
                   threads=threads, seed=seed)
    child = subprocess.run([sys.executable, __file__, "--torch-worker", json.dumps(request)],
                           capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"the PyTorch child process failed:\n{child.stderr}")
    seconds, accuracy = json.loads(child.stdout.strip().splitlines()[-1])
    return seconds, accuracy


def _torch_worker(request):
    """Body of the PyTorch child process: train, print ``[seconds, accuracy]`` as JSON."""
    import torch  # before fastfire (whose loader ``load`` uses): torch's own OpenMP runtime

    request = json.loads(request)
    X, y, X_test, y_test = load(request["dataset"])
    hidden, epochs, batch_size = request["hidden"], request["epochs"], request["batch_size"]
    seed = request["seed"]
    torch.set_num_threads(request["threads"])

    def make_model():
        return torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )

    def train(model, epochs, n_rows, generator):
        # scikit-learn's L2 term alpha=1e-4 is added to the gradient divided by the batch size.
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4 / batch_size)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            order = torch.randperm(n_rows, generator=generator)
            for i in range(0, n_rows, batch_size):
                idx = order[i:i + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(X_t[idx]), y_t[idx]).backward()
                optimizer.step()

    X_t, y_t = torch.from_numpy(X), torch.from_numpy(np.asarray(y, dtype=np.int64))
    train(make_model(), 1, 4 * batch_size, torch.Generator())  # pays torch's lazy initialisation
    torch.manual_seed(seed)
    model = make_model()
    start = time.perf_counter()
    train(model, epochs, len(X_t), torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean()
    print(json.dumps([seconds, float(accuracy)]))


def run_gemm_bound(data, hidden, epochs, batch_size, threads, seed):
    """The five GEMMs of an epoch (forward, input gradient, weight gradients) and nothing else."""
    X = data[0]
    n, d = X.shape
    W1 = np.zeros((d, hidden), np.float32)
    W2 = np.zeros((hidden, 10), np.float32)
    with threadpool_limits(threads, user_api="blas"):
        start = time.perf_counter()
        for _ in range(epochs):
            for i in range(0, n, batch_size):
                xb = X[i:i + batch_size]
                h = xb @ W1
                out = h @ W2
                _ = h.T @ out
                dh = out @ W2.T
                _ = xb.T @ dh
        seconds = time.perf_counter() - start
    return seconds, float("nan")


RUNNERS = {"fastfire": run_fastfire, "scikit-learn": run_sklearn,
           "sklearn-float64": run_sklearn_float64, "pytorch": run_torch, "gemm-bound": run_gemm_bound}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    parser.add_argument("--hidden", default="256,1024")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sklearn-repeats", type=int, default=None,
                        help="repeats for scikit-learn (slowest); default --repeats")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="write the raw timings here")
    args = parser.parse_args(argv)

    impls = ["fastfire", "scikit-learn", "sklearn-float64", "gemm-bound"]
    runners = dict(RUNNERS, pytorch=functools.partial(run_torch, dataset=args.dataset))
    if not args.no_torch:
        if importlib.util.find_spec("torch") is not None:
            impls.insert(3, "pytorch")
        else:
            print("PyTorch not installed: skipped", file=sys.stderr)

    import fastfire

    data = load(args.dataset)
    fastfire.show_config()
    print(f"\n{args.dataset}: {len(data[0])} train / {len(data[2])} test, batch {args.batch_size}, "
          f"Adam, {args.epochs} epochs; medians of {args.repeats} runs\n")
    warnings.simplefilter("ignore", ConvergenceWarning)
    for threads in [int(t) for t in args.threads.split(",")]:  # warm-up: thread pools, imports
        run_fastfire(_split(*_small(data)), 16, 1, 32, threads, 0)

    rows = []
    header = f"{'hidden':>6} {'thr':>3} {'implementation':<14} {'s/epoch':>8} {'test acc':>8} " \
             f"{'fastfire/this':>13}"
    print(header)
    print("-" * len(header))
    for hidden in [int(h) for h in args.hidden.split(",")]:
        for threads in [int(t) for t in args.threads.split(",")]:
            results = {}
            for impl in impls:
                slow = impl.startswith(("scikit", "sklearn"))
                repeats = args.sklearn_repeats if slow and args.sklearn_repeats else args.repeats
                runs = [runners[impl](data, hidden, args.epochs, args.batch_size, threads, seed)
                        for seed in range(repeats)]
                seconds = statistics.median(r[0] for r in runs) / args.epochs
                accuracy = statistics.median(r[1] for r in runs)
                results[impl] = (seconds, accuracy)
                rows.append(dict(dataset=args.dataset, hidden=hidden, threads=threads, impl=impl,
                                 seconds_per_epoch=seconds, accuracy=accuracy,
                                 runs=[r[0] / args.epochs for r in runs]))
            for impl, (seconds, accuracy) in results.items():
                ratio = results["fastfire"][0] / seconds
                acc = "" if np.isnan(accuracy) else f"{accuracy:.4f}"
                print(f"{hidden:>6} {threads:>3} {impl:<14} {seconds:>8.3f} {acc:>8} {ratio:>13.2f}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _small(data):
    return data[0][:256], data[1][:256]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--torch-worker"]:
        _torch_worker(sys.argv[2])
    else:
        sys.exit(main())
