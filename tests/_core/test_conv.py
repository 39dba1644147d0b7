"""Convolution and pooling kernels against NumPy references (and finite differences)."""

import numpy as np
import pytest
from fastfire._core._conv import (
    conv2d_backward,
    conv2d_forward,
    conv_output_size,
    map_square_sums,
    pool_backward,
    pool_forward,
)

E1 = np.empty(0, np.float32)
E2 = np.empty((0, 0), np.float32)


def conv_reference(X, Wt, b, stride, pad):
    """Direct convolution (cross-correlation, as PyTorch): X (N, C, H, W), Wt (F, C, KH, KW)."""
    N, _C, H, W = X.shape
    F, _, KH, KW = Wt.shape
    Xp = np.pad(X.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho = (H + 2 * pad - KH) // stride + 1
    Wo = (W + 2 * pad - KW) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for i in range(KH):
        for j in range(KW):
            patch = Xp[:, :, i: i + stride * Ho: stride, j: j + stride * Wo: stride]  # N C Ho Wo
            out += np.einsum("nchw,fc->nfhw", patch, Wt[:, :, i, j])
    return out + b[None, :, None, None]


def conv_grads_reference(X, Wt, dout, stride, pad):
    """dW, db, dX of sum(dout * conv(X, Wt)) by the adjoint of conv_reference."""
    _N, _C, H, W = X.shape
    _F, _, KH, KW = Wt.shape
    Xp = np.pad(X.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = dout.shape[2:]
    dW = np.zeros(Wt.shape)
    dXp = np.zeros(Xp.shape)
    for i in range(KH):
        for j in range(KW):
            sl = (slice(None), slice(None), slice(i, i + stride * Ho, stride), slice(j, j + stride * Wo, stride))
            dW[:, :, i, j] = np.einsum("nchw,nfhw->fc", Xp[sl], dout)
            dXp[sl] += np.einsum("nfhw,fc->nchw", dout, Wt[:, :, i, j])
    dX = dXp[:, :, pad: pad + H, pad: pad + W]
    return dW, dout.sum(axis=(0, 2, 3)), dX


CASES = [  # C, H, W, F, KH, KW, stride, pad
    (1, 6, 6, 2, 3, 3, 1, 0),
    (3, 7, 5, 4, 3, 3, 1, 1),
    (2, 9, 8, 3, 3, 2, 2, 1),
    (4, 5, 5, 5, 1, 1, 1, 0),
    (2, 8, 8, 3, 5, 5, 3, 2),
    (2, 6, 7, 3, 5, 5, 1, 2),  # stride 1, same padding: the contiguous im2col/col2im runs
    (1, 3, 2, 2, 3, 3, 1, 2),  # padding wider than the image needs: rows of zeros only
    (1, 2, 2, 2, 5, 5, 1, 3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv_forward_and_backward_match_numpy(case, n_threads):
    C, H, W, F, KH, KW, s, p = case
    rng = np.random.default_rng(0)
    N = 5
    X = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Wt = rng.standard_normal((F, C, KH, KW)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    Ho, Wo = conv_output_size(H, KH, s, p), conv_output_size(W, KW, s, p)
    out = np.full((N, F * Ho * Wo), np.nan, np.float32)
    geo = {"C": C, "H": H, "W": W, "KH": KH, "KW": KW, "stride": s, "pad": p, "n_threads": n_threads}
    conv2d_forward(X.reshape(N, -1), Wt.reshape(F, -1), b, out, **geo)
    ref = conv_reference(X, Wt, b, s, p)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)

    dout = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    dW = np.full((F, C * KH * KW), np.nan, np.float32)
    db = np.full(F, np.nan, np.float32)
    dX = np.full((N, C * H * W), np.nan, np.float32)
    conv2d_backward(X.reshape(N, -1), Wt.reshape(F, -1), dout.reshape(N, -1), dW, db, dX,
                    scale=0.5, **geo)
    rdW, rdb, rdX = conv_grads_reference(X, Wt, dout, s, p)
    np.testing.assert_allclose(dW.reshape(rdW.shape), 0.5 * rdW, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, 0.5 * rdb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dX.reshape(rdX.shape), rdX, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv_backward_on_subsets_of_examples_and_output_channels(n_threads):
    C, H, W, F, K, s, p, N = 3, 6, 5, 5, 3, 1, 1, 7
    rng = np.random.default_rng(6)
    X = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Wt = rng.standard_normal((F, C, K, K)).astype(np.float32)
    dout = rng.standard_normal((N, F, H, W)).astype(np.float32)
    rows, channels = np.array([5, 0, 3]), np.array([4, 1])
    dW = np.full((F, C * K * K), np.nan, np.float32)
    db = np.full(F, np.nan, np.float32)
    dX = np.full((N, C * H * W), np.nan, np.float32)
    conv2d_backward(X.reshape(N, -1), Wt.reshape(F, -1), dout.reshape(N, -1), dW, db, dX,
                    C=C, H=H, W=W, KH=K, KW=K, stride=s, pad=p, scale=0.25, n_threads=n_threads,
                    example_ids=rows, output_channels=channels)
    rdW, _, _ = conv_grads_reference(X[rows], Wt, dout[rows], s, p)
    _, rdb, _ = conv_grads_reference(X, Wt, dout, s, p)
    _, _, rdX = conv_grads_reference(X, Wt[channels], dout[:, channels], s, p)
    np.testing.assert_allclose(dW.reshape(rdW.shape), 0.25 * rdW, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, 0.25 * rdb, rtol=1e-5, atol=1e-5)  # every example
    np.testing.assert_allclose(dX.reshape(rdX.shape), rdX, rtol=1e-4, atol=1e-4)
    # empty subsets: zero gradients
    conv2d_backward(X.reshape(N, -1), Wt.reshape(F, -1), dout.reshape(N, -1), dW, E1, dX,
                    C=C, H=H, W=W, KH=K, KW=K, stride=s, pad=p, example_ids=[], output_channels=[])
    assert not dW.any() and not dX.any()


@pytest.mark.parametrize("K,pad,H,W", [(3, 1, 6, 5), (3, 0, 7, 6), (3, 2, 5, 8), (5, 2, 9, 7),
                                        (1, 0, 4, 4)])
@pytest.mark.parametrize("channels", [None, [4], [0, 2, 3]])
def test_conv_input_gradient_as_transposed_convolution(K, pad, H, W, channels):
    # im2col of the kept channels of dout with the flipped kernels: the same input gradient
    C, F, N = 3, 5, 4
    rng = np.random.default_rng(9)
    X = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Wt = rng.standard_normal((F, C, K, K)).astype(np.float32)
    Ho, Wo = H + 2 * pad - K + 1, W + 2 * pad - K + 1
    dout = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)
    kept = list(range(F)) if channels is None else channels
    _, _, rdX = conv_grads_reference(X, Wt[kept], dout[:, kept], 1, pad)
    for transposed in (True, False, None):
        dX = np.full((N, C * H * W), np.nan, np.float32)
        conv2d_backward(X.reshape(N, -1), Wt.reshape(F, -1), dout.reshape(N, -1), E2, E1, dX,
                        C=C, H=H, W=W, KH=K, KW=K, pad=pad, n_threads=2,
                        output_channels=channels, transposed=transposed)
        np.testing.assert_allclose(dX.reshape(rdX.shape), rdX, rtol=1e-4, atol=1e-4)


def test_conv_transposed_input_gradient_needs_stride_one():
    with pytest.raises(ValueError, match="transposed=True needs stride 1"):
        conv2d_backward(np.zeros((1, 16), np.float32), np.zeros((1, 9), np.float32),
                        np.zeros((1, 4), np.float32), E2, E1, np.zeros((1, 16), np.float32),
                        C=1, H=4, W=4, KH=3, KW=3, stride=2, pad=1, transposed=True)


@pytest.mark.parametrize("ids", [[7], [-1], [1, 1], [[0]]])
def test_conv_backward_rejects_bad_subsets(ids):
    X = np.zeros((7, 16), np.float32)
    dout = np.zeros((7, 2 * 16), np.float32)
    for key in ("example_ids", "output_channels"):  # 7 examples, 2 output channels
        with pytest.raises(ValueError, match=key):
            conv2d_backward(X, np.zeros((2, 9), np.float32), dout, np.zeros((2, 9), np.float32), E1,
                            E2, C=1, H=4, W=4, KH=3, KW=3, pad=1, **{key: ids})


def test_map_square_sums_match_numpy():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((9, 4 * 300)).astype(np.float32)  # maps longer than a 256-term block
    out = np.empty((9, 4))
    map_square_sums(A, out, n_threads=2)
    ref = (A.astype(np.float64).reshape(9, 4, 300) ** 2).sum(axis=2)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="maps"):
        map_square_sums(A, np.empty((9, 7)))


def test_conv_gradients_by_finite_differences():
    rng = np.random.default_rng(1)
    C, H, W, F, K, s, p, N = 2, 5, 4, 2, 3, 2, 1, 2
    X = rng.standard_normal((N, C * H * W))
    Wt = rng.standard_normal((F, C * K * K))
    b = rng.standard_normal(F)
    Ho, Wo = conv_output_size(H, K, s, p), conv_output_size(W, K, s, p)
    R = rng.standard_normal((N, F * Ho * Wo))
    geo = {"C": C, "H": H, "W": W, "KH": K, "KW": K, "stride": s, "pad": p}

    def loss(X, Wt):
        out = np.empty((N, F * Ho * Wo), np.float32)
        conv2d_forward(X.astype(np.float32), Wt.astype(np.float32), b.astype(np.float32), out, **geo)
        return float((out.astype(np.float64) * R).sum())

    dW = np.empty((F, C * K * K), np.float32)
    dX = np.empty((N, C * H * W), np.float32)
    conv2d_backward(X.astype(np.float32), Wt.astype(np.float32), R.astype(np.float32), dW, E1, dX, **geo)
    h = 1e-2  # the loss is linear in each argument: central differences are exact up to float32
    for (arr, grad) in ((X, dX), (Wt, dW)):
        for flat in rng.choice(arr.size, 8, replace=False):
            i = np.unravel_index(flat, arr.shape)
            plus, minus = arr.copy(), arr.copy()
            plus[i] += h
            minus[i] -= h
            fd = (loss(plus, Wt) - loss(minus, Wt)) / (2 * h) if arr is X else \
                (loss(X, plus) - loss(X, minus)) / (2 * h)
            assert abs(fd - grad[i]) < 2e-2 * max(1.0, abs(fd)), (i, fd, grad[i])


def test_conv_results_do_not_depend_on_threads_for_forward():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((7, 3 * 8 * 8)).astype(np.float32)
    Wt = rng.standard_normal((4, 27)).astype(np.float32)
    b = np.zeros(4, np.float32)
    outs = []
    for t in (1, 2):
        out = np.empty((7, 4 * 64), np.float32)
        conv2d_forward(X, Wt, b, out, C=3, H=8, W=8, KH=3, KW=3, stride=1, pad=1, n_threads=t)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])  # one sgemm per sample either way


def pool_reference(X, ph, pw, kind):
    N, C, H, W = X.shape
    Ho, Wo = H // ph, W // pw
    blocks = X[:, :, : Ho * ph, : Wo * pw].reshape(N, C, Ho, ph, Wo, pw)
    return blocks.max(axis=(3, 5)) if kind == "max" else blocks.mean(axis=(3, 5))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,window", [((2, 6, 6), (2, 2)), ((3, 7, 5), (2, 2)), ((1, 1, 9), (1, 3)),
                                          ((2, 6, 6), (3, 2)), ((2, 5, 21), (2, 2)), ((1, 4, 16), (2, 2))])
def test_pooling_matches_numpy(kind, shape, window):
    rng = np.random.default_rng(3)
    C, H, W = shape
    ph, pw = window
    N = 4
    X = rng.standard_normal((N, C, H, W)).astype(np.float32)
    Ho, Wo = H // ph, W // pw
    out = np.empty((N, C * Ho * Wo), np.float32)
    argmax = np.empty((N, C * Ho * Wo), np.int32) if kind == "max" else np.empty((0, 0), np.int32)
    args = {"C": C, "H": H, "W": W, "PH": ph, "PW": pw, "is_max": kind == "max", "n_threads": 2}
    pool_forward(X.reshape(N, -1), out, argmax, **args)
    np.testing.assert_allclose(out.reshape(N, C, Ho, Wo), pool_reference(X, ph, pw, kind), rtol=1e-6, atol=1e-6)

    # backward = gradient of sum(R * pool(X)), by autograd-style reference
    R = rng.standard_normal((N, C, Ho, Wo)).astype(np.float32)
    dX = np.full((N, C * H * W), np.nan, np.float32)
    pool_backward(R.reshape(N, -1), argmax, dX, **args)
    ref = np.zeros((N, C, H, W), np.float32)
    for n in range(N):
        for c in range(C):
            for y in range(Ho):
                for x in range(Wo):
                    win = X[n, c, y * ph:(y + 1) * ph, x * pw:(x + 1) * pw]
                    if kind == "max":
                        a, b = np.unravel_index(np.argmax(win), win.shape)
                        ref[n, c, y * ph + a, x * pw + b] += R[n, c, y, x]
                    else:
                        ref[n, c, y * ph:(y + 1) * ph, x * pw:(x + 1) * pw] += R[n, c, y, x] / (ph * pw)
    np.testing.assert_allclose(dX.reshape(N, C, H, W), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("H,W", [(6, 21), (14, 14), (6, 8), (5, 6)])
def test_max_pooling_ties_and_nans_match_numpy_argmax(H, W):
    # rows of 4+ windows go through the vectorised 2x2 path (7 and 10 windows: an overlapping
    # last group of four); 3 windows through the scalar loop: same rule either way
    rng = np.random.default_rng(4)
    N, C = 3, 2
    X = rng.integers(-2, 3, (N, C, H, W)).astype(np.float32)  # many ties
    X[0, 0, 0, 3] = X[1, 1, 3, W - 1] = X[2, 0, H - 1, W - 2] = np.nan
    X[0, 1, 2:4, 4:6] = np.nan
    Ho, Wo = H // 2, W // 2
    out = np.empty((N, C * Ho * Wo), np.float32)
    argmax = np.empty((N, C * Ho * Wo), np.int32)
    pool_forward(X.reshape(N, -1), out, argmax, C=C, H=H, W=W, PH=2, PW=2, is_max=True, n_threads=1)
    blocks = X[:, :, : 2 * Ho, : 2 * Wo].reshape(N, C, Ho, 2, Wo, 2).transpose(0, 1, 2, 4, 3, 5)
    first = blocks.reshape(N, C, Ho, Wo, 4).argmax(axis=-1)  # first maximum, NaN wins
    a, b = np.divmod(first, 2)
    c, oy, ox = np.meshgrid(np.arange(C), np.arange(Ho), np.arange(Wo), indexing="ij")
    expected = c * H * W + (2 * oy + a) * W + 2 * ox + b
    np.testing.assert_array_equal(argmax.reshape(N, C, Ho, Wo), expected)
    np.testing.assert_array_equal(out.reshape(N, C, Ho, Wo), pool_reference(X, 2, 2, "max"))

    # backward: each window's gradient at its first maximum, zeros everywhere else
    R = rng.standard_normal((N, C * Ho * Wo)).astype(np.float32)
    dX = np.full((N, C * H * W), np.nan, np.float32)
    pool_backward(R, argmax, dX, C=C, H=H, W=W, PH=2, PW=2, is_max=True, n_threads=2)
    ref = np.zeros((N, C * H * W), np.float32)
    np.put_along_axis(ref, argmax.astype(np.intp), R, axis=1)
    np.testing.assert_array_equal(dX, ref)


@pytest.mark.parametrize("window,W", [((2, 2), 14), ((2, 2), 6), ((3, 3), 9)])
def test_pool_backward_ignores_argmax_outside_its_window(window, W):
    # argmax comes from pool_forward in the layers; a wrong one must never write out of bounds
    C, H = 2, W
    ph, pw = window
    Ho, Wo = H // ph, W // pw
    dout = np.ones((3, C * Ho * Wo), np.float32)
    argmax = np.full(dout.shape, 10**6, np.int32)
    argmax[1] = -5
    argmax[2] = C * H * W  # one past the image
    dX = np.full((3, C * H * W), np.nan, np.float32)
    pool_backward(dout, argmax, dX, C=C, H=H, W=W, PH=ph, PW=pw, is_max=True, n_threads=1)
    np.testing.assert_array_equal(dX, 0.0)


def test_bad_shapes_raise():
    X = np.zeros((2, 12), np.float32)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        conv2d_forward(X, np.zeros((1, 9), np.float32), np.zeros(1, np.float32),
                       np.zeros((2, 4), np.float32), C=1, H=4, W=4, KH=3, KW=3)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_forward(np.zeros((2, 4), np.float32), np.zeros((1, 9), np.float32),
                       np.zeros(1, np.float32), np.zeros((2, 1), np.float32), C=1, H=2, W=2, KH=3, KW=3)
    with pytest.raises(ValueError, match="window"):
        pool_forward(X, np.zeros((2, 1), np.float32), np.zeros((2, 1), np.int32), C=1, H=3, W=4,
                     PH=4, PW=4, is_max=True)


@pytest.mark.parametrize("shape,window", [((3, 14, 14), (2, 2)), ((2, 6, 21), (2, 2)),
                                          ((2, 6, 6), (2, 2)), ((2, 9, 9), (3, 3))])
def test_pool_backward_with_positive_applies_the_relu_derivative(shape, window):
    # max pooling of ReLU outputs: the masked backward equals the plain one times (A > 0)
    rng = np.random.default_rng(5)
    C, H, W = shape
    ph, pw = window
    N, Ho, Wo = 3, H // ph, W // pw
    A = np.maximum(rng.standard_normal((N, C * H * W)), 0).astype(np.float32)
    A[0, : H * W] = 0.0  # a channel of dead units: every window's maximum is 0
    out = np.empty((N, C * Ho * Wo), np.float32)
    argmax = np.empty_like(out, dtype=np.int32)
    args = {"C": C, "H": H, "W": W, "PH": ph, "PW": pw, "is_max": True, "n_threads": 2}
    pool_forward(A, out, argmax, **args)
    R = rng.standard_normal(out.shape).astype(np.float32)
    plain = np.empty_like(A)
    pool_backward(R, argmax, plain, **args)
    fused = np.full_like(A, np.nan)
    pool_backward(R, argmax, fused, positive=out, **args)
    np.testing.assert_array_equal(fused, np.where(A > 0, plain, 0.0))
    assert np.any(fused != plain)  # the mask did something


def test_pool_backward_positive_is_checked():
    dout = np.zeros((2, 4), np.float32)
    argmax = np.zeros((2, 4), np.int32)
    dX = np.zeros((2, 16), np.float32)
    args = {"C": 1, "H": 4, "W": 4, "PH": 2, "PW": 2, "n_threads": 1}
    with pytest.raises(ValueError, match="max pooling only"):
        pool_backward(dout, argmax, dX, is_max=False, positive=dout, **args)
    with pytest.raises(ValueError, match="shape of dout"):
        pool_backward(dout, argmax, dX, is_max=True, positive=np.zeros((2, 3), np.float32), **args)
