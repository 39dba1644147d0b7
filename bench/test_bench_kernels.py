"""pytest-benchmark suites for the dense-engine kernels (fastfire._core._dense/_loss/_optim)
and the pooling kernels of the small CNN (fastfire._core._conv).

Run: ``pytest bench/test_bench_kernels.py --benchmark-only``. BLAS is capped at one thread around
every call (our parallelism is OpenMP); each benchmark does a warm-up round because the first
``prange`` of a process creates the OpenMP thread pool.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from fastfire._core import _conv, _dense, _loss, _optim

THREADS = (1, 2)
BATCH = 128


def _run(benchmark, fn, *args, **kwargs):
    with threadpool_limits(1, "blas"):
        return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=30, iterations=3,
                                  warmup_rounds=2)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# gemm at the shapes of one dense layer of width n_out fed n_in features, batch 128:
#   forward     Z  = X @ W          (128 x n_in) @ (n_in x n_out)
#   input-grad  dX = D @ W.T        (128 x n_out) @ (n_in x n_out).T
#   weight-grad dW = X.T @ D        (128 x n_in).T @ (128 x n_out)
GEMM_CASES = {
    "forward": lambda n_in, n_out: ((BATCH, n_in), (n_in, n_out), (BATCH, n_out), False, False),
    "input_grad": lambda n_in, n_out: ((BATCH, n_out), (n_in, n_out), (BATCH, n_in), False, True),
    "weight_grad": lambda n_in, n_out: ((BATCH, n_in), (BATCH, n_out), (n_in, n_out), True, False),
}


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("layer", [(784, 256), (784, 1024)], ids=["784-256", "784-1024"])
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm(benchmark, case, layer, n_threads):
    benchmark.group = f"gemm {case} {layer[0]}-{layer[1]}"
    a_shape, b_shape, c_shape, ta, tb = GEMM_CASES[case](*layer)
    rng = np.random.default_rng(0)
    A, B = _rand(rng, *a_shape), _rand(rng, *b_shape)
    C = np.empty(c_shape, np.float32)
    _run(benchmark, _dense.gemm, A, B, C, trans_a=ta, trans_b=tb, n_threads=n_threads)


@pytest.fixture(scope="module")
def csr_batch():
    rng = np.random.default_rng(1)
    n_features, nnz_per_row = 100_000, 75
    indices = np.sort(rng.choice(n_features, (BATCH, nnz_per_row)), axis=1)
    X = sp.csr_matrix((rng.random(BATCH * nnz_per_row).astype(np.float32), indices.ravel(),
                       np.arange(0, BATCH * nnz_per_row + 1, nnz_per_row)),
                      shape=(BATCH, n_features))
    X.sum_duplicates()
    return (X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data.astype(np.float32),
            n_features)


@pytest.mark.parametrize("n_threads", THREADS)
def test_csr_matmul(benchmark, csr_batch, n_threads):
    benchmark.group = "csr_matmul 128x100000 (75 nnz/row) @ 100000x128"
    indptr, indices, data, n_features = csr_batch
    B = _rand(np.random.default_rng(2), n_features, 128)
    C = np.empty((BATCH, 128), np.float32)
    _run(benchmark, _dense.csr_matmul, indptr, indices, data, B, C, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
def test_csr_t_matmul(benchmark, csr_batch, n_threads):
    benchmark.group = "csr_t_matmul (128x100000).T @ 128x128"
    indptr, indices, data, n_features = csr_batch
    D = _rand(np.random.default_rng(3), BATCH, 128)
    C = np.empty((n_features, 128), np.float32)
    _run(benchmark, _dense.csr_t_matmul, indptr, indices, data, D, C, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh"])
def test_bias_act_forward(benchmark, activation, n_threads):
    benchmark.group = f"bias_act_forward 128x1024 {activation}"
    rng = np.random.default_rng(4)
    Z, bias = _rand(rng, BATCH, 1024), _rand(rng, 1024)
    # in place, repeated on the same buffer: values stay bounded for these activations
    _run(benchmark, _dense.bias_act_forward, Z, bias, _dense.ACTIVATIONS[activation], n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
def test_softmax_cross_entropy(benchmark, n_threads):
    benchmark.group = "softmax_cross_entropy 128x10000"
    rng = np.random.default_rng(5)
    logits = _rand(rng, BATCH, 10_000)
    y = rng.integers(0, 10_000, BATCH).astype(np.int32)
    delta = np.empty_like(logits)
    _run(benchmark, _loss.softmax_cross_entropy, logits, y, delta, n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
def test_adam_step(benchmark, n_threads):
    benchmark.group = "adam_step 1M parameters"
    rng = np.random.default_rng(6)
    n = 1_000_000
    param, grad = _rand(rng, n), _rand(rng, n) * np.float32(1e-3)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    _run(benchmark, _optim.adam_step, param, grad, m, v, 1e-3, 0.9, 0.999, 1e-8, 1e-4, n_threads)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("step_sizes", ["computed", "table"])
@pytest.mark.parametrize("width", [1, 128], ids=["bias", "weights"])
def test_adam_step_rows(benchmark, width, step_sizes, n_threads):
    # lazy Adam on a 670K-label output layer: 128K scattered rows (biases) or 60K (weight rows)
    benchmark.group = f"adam_step_rows 670K x {width}"
    rng = np.random.default_rng(7)
    n_rows, n_active = 670_091, 128_000 if width == 1 else 60_000
    param = _rand(rng, n_rows, width)
    m, v = np.zeros_like(param), np.zeros_like(param)
    t = rng.integers(0, 1500, n_rows).astype(np.int64)
    rows = np.sort(rng.choice(n_rows, n_active, replace=False)).astype(np.int32)
    grad = _rand(rng, n_active, width) * np.float32(1e-3)
    sizes = _optim.adam_step_size_table(1e-3, 0.9, 0.999, 4096) if step_sizes == "table" else None
    _run(benchmark, _optim.adam_step_rows, param, grad, rows, m, v, t, 1e-3, 0.9, 0.999, 1e-8,
         0.0, n_threads, sizes)


# 2x2 max pooling of a batch of 50 after conv 1 / conv 2 of the small CNN (16/32 channels at
# 28x28 / 14x14): 14 and 7 windows per row, so the vector loop ends with an overlapping group
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("shape", [(16, 28, 28), (32, 14, 14)], ids=["16x28x28", "32x14x14"])
@pytest.mark.parametrize("direction", ["forward", "backward", "backward_relu"])
def test_max_pool_2x2(benchmark, direction, shape, n_threads):
    benchmark.group = f"max_pool_2x2 50x{shape[0]}x{shape[1]}x{shape[2]} {direction}"
    rng = np.random.default_rng(8)
    C, H, W = shape
    X = np.maximum(_rand(rng, 50, C * H * W), 0)  # ReLU outputs
    out = np.empty((50, C * (H // 2) * (W // 2)), np.float32)
    argmax = np.empty(out.shape, np.int32)
    args = {"C": C, "H": H, "W": W, "PH": 2, "PW": 2, "is_max": True, "n_threads": n_threads}
    if direction == "forward":
        _run(benchmark, _conv.pool_forward, X, out, argmax, **args)
        return
    _conv.pool_forward(X, out, argmax, **args)
    if direction == "backward_relu":  # ReLU's derivative applied in the pooling's backward
        args["positive"] = out
    _run(benchmark, _conv.pool_backward, _rand(rng, *out.shape), argmax, np.empty_like(X), **args)
