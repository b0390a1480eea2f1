"""fastdenoise.ops.bm3d: the transforms and window, group sizes, the compiled collaborative
filtering against the plain PyTorch reference (hard thresholding and Wiener; grey and 3
channels; odd sizes, batch > 1), determinism, bad input and opcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import bm3d as B
from fastdenoise.ops.block_match import block_match

HAVE_CPU = fastdenoise._ext.has_kernel("bm3d_filter", "CPU")
SHAPES = [(2, 1, 29, 37), (1, 3, 33, 26), (3, 1, 8, 8), (2, 3, 17, 40)]


def _cpu():
    if not HAVE_CPU:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


def _consts(kind="bior"):
    if kind == "bior":
        t = B.bior15_matrix()
        return t.float(), torch.linalg.inv(t).float()
    d = B.dct_matrix()
    return d.float(), d.T.contiguous().float()


def _problem(shape, k=16, search=15, tau=0.05, device="cpu"):
    """A piecewise-smooth noisy image, its matches and group sizes, per-channel sigmas."""
    n, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(6 * xx + 3 * yy) * (xx > 0.4)
    x = (base + 0.1 * torch.randn(n, c, h, w)).float().to(device)
    k = min(k, B.MAX_GROUP, ((min(search // 2, h - 8) + 1) * (min(search // 2, w - 8) + 1)))
    bm = block_match(x[:, :1].contiguous(), 8, search, k, 3)
    size = B.group_sizes(bm.distance, tau)
    sigma = (0.05 + 0.1 * torch.rand(n, c)).float().to(device)
    return x, bm.index, size, sigma


def _safe_threshold(x, index, size, sigma, transform, target=2.7):
    """A hard threshold near ``target`` that no coefficient's |Y| / sigma_c lies within 1e-4 of
    (relative), so float32 rounding cannot move a coefficient across it and the kernels must
    match the reference to rounding."""
    ratios = []
    n_img, c, h, w = x.shape
    t = transform.double()
    for b in range(n_img):
        img = x[b].double().reshape(c, -1)
        idx, sz = index[b].reshape(-1, index.shape[3]), size[b].reshape(-1)
        for n in sorted(set(sz.tolist())):
            pix = B.block_pixels(idx[sz == n][:, :n], w)
            y = B.group_spectra(img, pix, t, B._haar_matrix(n))
            ratios.append((y.abs() / sigma[b].double().view(c, 1, 1, 1, 1)).flatten())
    r = torch.cat(ratios)
    for cand in torch.linspace(target - 0.3, target + 0.3, 601).double():
        if ((r - cand).abs() / cand).min() > 1e-4:
            return float(cand)
    pytest.fail("no threshold near the target is clear of every coefficient")


# --------------------------------------------------------------------------------------------
# Transforms, window, sizes
# --------------------------------------------------------------------------------------------

def test_bior15_matrix_properties():
    t = B.bior15_matrix()
    assert torch.allclose(t.norm(dim=1), torch.ones(8, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(t[0], torch.full((8,), 1 / math.sqrt(8), dtype=torch.float64), atol=1e-14)
    # the finest details are the normalised differences of neighbouring pairs
    for i in range(4):
        expect = torch.zeros(8, dtype=torch.float64)
        expect[2 * i], expect[2 * i + 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        assert torch.allclose(t[4 + i], expect, atol=1e-14)
    # bior1.5 is biorthogonal, not orthogonal: the inverse is not the transpose
    ti = torch.linalg.inv(t)
    assert torch.allclose(ti @ t, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(ti, t.T, atol=1e-3)


def test_bior15_matrix_matches_pywavelets():
    pywt = pytest.importorskip("pywt", reason="PyWavelets is an optional cross-check of the bior1.5 matrix")
    import numpy as np
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "level too high": every coefficient wraps, as intended
        cols = [np.concatenate(pywt.wavedec(np.eye(8)[i], "bior1.5", mode="periodization", level=3))
                for i in range(8)]
    m = torch.from_numpy(np.stack(cols, axis=1))
    assert torch.allclose(B.bior15_matrix(), m / m.norm(dim=1, keepdim=True), atol=1e-12)


def test_dct_and_haar_are_orthonormal():
    d = B.dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-14)
    i = torch.arange(8, dtype=torch.float64)
    assert torch.allclose(d[3], 0.5 * torch.cos(math.pi * (2 * i + 1) * 3 / 16), atol=1e-14)
    for n in (1, 2, 4, 8, 16, 32):
        h = B._haar_matrix(n)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-13)
        assert torch.allclose(h[0], torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64), atol=1e-14)


def test_kaiser_window_formula():
    beta = 2.0
    i = torch.arange(8, dtype=torch.float64)
    k = torch.special.i0(beta * torch.sqrt(1 - (2 * i / 7 - 1) ** 2)) / torch.special.i0(torch.tensor(beta))
    assert torch.allclose(B.kaiser_window2d(8, beta), torch.outer(k, k), atol=1e-12)


def test_group_sizes():
    d = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]]).view(1, 1, 1, 8)
    expect = {0.05: 1, 0.15: 2, 0.25: 2, 0.35: 4, 0.75: 8, 10.0: 8}
    for tau, n in expect.items():
        assert B.group_sizes(d, tau).item() == n, tau
    assert B.group_sizes(d, 10.0, k=5).item() == 4
    assert B.group_sizes(d, 0.0).item() == 1          # the reference block always counts
    per_image = B.group_sizes(torch.cat([d, d]), torch.tensor([0.15, 0.75]).view(2, 1, 1, 1))
    assert per_image.flatten().tolist() == [2, 8]
    assert B.group_sizes(d, 10.0, k=1).item() == 1 and B.group_sizes(d, 10.0, k=40).item() == 8


def test_building_blocks_check_their_sizes():
    """A size the transforms cannot have is an error naming it (bior1.5 at n = 6 used to return
    a 5 x 6 matrix; n = 0 failed inside torch)."""
    for f in (B.bior15_matrix, B.dct_matrix, B.kaiser_window2d):
        for n in (0, -8):
            with pytest.raises(ValueError, match=rf"^n: expected .*, got {n}$"):
                f(n)
        for n in (8.0, True, "8"):
            with pytest.raises(TypeError, match=rf"^n: expected an int, got {type(n).__name__} "):
                f(n)
    for n in (3, 6, 12):
        with pytest.raises(ValueError, match=rf"^n: expected a power of two \(the wavelet halves the block at "
                                             rf"each level\), got {n}$"):
            B.bior15_matrix(n)
    for n in (1, 2, 4, 16):                             # square, and inverted by the inverse
        t = B.bior15_matrix(n)
        assert t.shape == (n, n)
        torch.testing.assert_close(torch.linalg.inv(t) @ t, torch.eye(n, dtype=t.dtype), rtol=0, atol=1e-12)
    for n in (1, 3, 6):
        d = B.dct_matrix(n)
        torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=d.dtype), rtol=0, atol=1e-12)
    assert torch.equal(B.kaiser_window2d(np.int64(8), np.float32(2.0)), B.kaiser_window2d(8, 2.0))
    for beta in (-1.0, float("inf"), float("nan"), "2"):
        with pytest.raises(ValueError, match=r"^beta: expected a finite number >= 0, got "):
            B.kaiser_window2d(8, beta)
    d = torch.rand(1, 2, 2, 16)
    for k in (0, -1):
        with pytest.raises(ValueError, match=rf"^k: expected an int >= 1, got {k}$"):
            B.group_sizes(d, 0.5, k)
    with pytest.raises(TypeError, match=r"^k: expected an int, got float 2.5$"):
        B.group_sizes(d, 0.5, 2.5)
    with pytest.raises(errors.ShapeError, match=r"^distance: expected 4 dims \(B, ny, nx, K\), got 3"):
        B.group_sizes(d[0], 0.5)


# --------------------------------------------------------------------------------------------
# Kernels against the reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_hard_threshold_matches_reference(shape):
    be = _cpu()
    x, index, size, sigma = _problem(shape)
    t, ti = _consts("bior")
    win = B.kaiser_window2d().float()
    assert size.max() > 1 or shape[2] == 8, "the test needs groups of several blocks"
    lam = _safe_threshold(x, index, size, sigma, t)
    ref = B.bm3d_filter_reference(x, None, index, size, sigma, t, ti, win, lam)
    out = B.bm3d_filter(x, None, index, size, sigma, t, ti, win, lam, backend=be)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    # the shrinkage did something: not the identity
    assert (out - x).abs().max() > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_wiener_matches_reference(shape):
    be = _cpu()
    x, index, size, sigma = _problem(shape, k=32, tau=0.08)
    pilot = (x + 0.05 * torch.randn_like(x)).contiguous()
    t, ti = _consts("dct")
    win = B.kaiser_window2d().float()
    ref = B.bm3d_filter_reference(x, pilot, index, size, sigma, t, ti, win, 0.0)
    out = B.bm3d_filter(x, pilot, index, size, sigma, t, ti, win, backend=be)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    assert (out - x).abs().max() > 1e-3


def test_identity_when_nothing_is_removed():
    """Threshold 0 keeps every coefficient: each group gives back its blocks, so the weighted
    average of exact reconstructions is the input (to float32 rounding of the four 8x8 matrix
    products and the Haar butterflies: DESIGN.md's 1e-5)."""
    be = _cpu()
    x, index, size, sigma = _problem((2, 3, 21, 30))
    t, ti = _consts("bior")
    out = B.bm3d_filter(x, None, index, size, sigma, t, ti, B.kaiser_window2d().float(), 0.0, backend=be)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs_give_the_same_result():
    be = _cpu()
    x, index, size, sigma = _problem((2, 3, 19, 23))
    t, ti = _consts("bior")
    win = B.kaiser_window2d().float()
    base = B.bm3d_filter(x, None, index, size, sigma, t, ti, win, 2.7, backend=be)
    cl = B.bm3d_filter(x.contiguous(memory_format=torch.channels_last), None, index, size, sigma, t, ti, win, 2.7,
                       backend=be)
    wide = torch.zeros(2, 3, 19, 46)
    wide[..., ::2] = x
    strided = B.bm3d_filter(wide[..., ::2], None, index, size, sigma, t, ti, win, 2.7, backend=be)
    assert torch.equal(cl, base) and torch.equal(strided, base)


def test_deterministic_across_runs_and_thread_counts():
    be = _cpu()
    x, index, size, sigma = _problem((2, 1, 64, 71), k=32, tau=0.1)
    pilot = x.flip(-1).contiguous()
    t, ti = _consts("dct")
    win = B.kaiser_window2d().float()
    threads = torch.get_num_threads()
    try:
        outs = []
        for n_threads in (1, 2, 1, 2):
            torch.set_num_threads(n_threads)
            outs.append(B.bm3d_filter(x, pilot, index, size, sigma, t, ti, win, backend=be))
    finally:
        torch.set_num_threads(threads)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_inputs_not_modified():
    be = _cpu()
    x, index, size, sigma = _problem((1, 3, 20, 20))
    pilot = x.flip(-2).contiguous()
    t, ti = _consts("dct")
    win = B.kaiser_window2d().float()
    before = [v.clone() for v in (x, pilot, index, size, sigma, t, ti, win)]
    B.bm3d_filter(x, pilot, index, size, sigma, t, ti, win, backend=be)
    for a, b in zip(before, (x, pilot, index, size, sigma, t, ti, win)):
        assert torch.equal(a, b)


def test_opcheck():
    _cpu()
    x, index, size, sigma = _problem((2, 3, 17, 21))
    t, ti = _consts("bior")
    win = B.kaiser_window2d().float()
    torch.library.opcheck(torch.ops.fastdenoise.bm3d_filter.default, (x, None, index, size, sigma, t, ti, win, 2.7))
    torch.library.opcheck(torch.ops.fastdenoise.bm3d_filter.default,
                          (x, x.flip(-1).contiguous(), index, size, sigma, t, ti, win, 0.0))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def _args():
    x, index, size, sigma = _problem((1, 1, 16, 16))
    t, ti = _consts("bior")
    return dict(noisy=x, pilot=None, index=index, size=size, sigma=sigma, transform=t, inverse=ti,
                window=B.kaiser_window2d().float(), threshold=2.7)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("change, err, words", [
    (dict(noisy=torch.rand(1, 16, 16)), errors.ShapeError, "noisy: expected 4 dims"),
    (dict(noisy=torch.rand(1, 1, 16, 16, dtype=torch.float64)), errors.DTypeError, "noisy"),
    (dict(noisy=torch.rand(1, 4, 16, 16)), errors.ShapeError, "1 to 3 channels"),
    (dict(noisy=torch.rand(1, 1, 7, 16)), errors.ShapeError, "at least 8"),
    (dict(pilot=torch.rand(1, 1, 16, 17)), errors.ShapeError, "pilot: expected the shape"),
    (dict(index=torch.zeros(1, 3, 3, 33, dtype=torch.int64)), errors.ShapeError, "K <= 32"),
    (dict(index=torch.zeros(1, 3, 3, 4, dtype=torch.int32)), errors.DTypeError, "index"),
    (dict(size=torch.ones(1, 3, 2, dtype=torch.int64)), errors.ShapeError, "size: expected"),
    (dict(sigma=torch.ones(1, 2)), errors.ShapeError, "sigma: expected (1, 1)"),
    (dict(transform=torch.eye(4)), errors.ShapeError, "transform: expected (8, 8)"),
    (dict(threshold=-1.0), ValueError, "threshold"),
])
def test_bad_input(backend, change, err, words):
    if backend == "cpu":
        _cpu()
    args = {**_args(), **change}
    with pytest.raises(err, match=words.replace("(", r"\(").replace(")", r"\)")):
        B.bm3d_filter(**args, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_values(backend):
    if backend == "cpu":
        _cpu()
    args = _args()
    bad_size = args["size"].clone()
    bad_size[0, 0, 0] = 3
    with pytest.raises(ValueError, match="power of two"):
        B.bm3d_filter(**{**args, "size": bad_size}, backend=backend)
    bad_index = args["index"].clone()
    bad_index[0, 0, 0, 0] = 16 * 16 - 1            # a block at the last pixel would leave the image
    with pytest.raises(ValueError, match="inside the"):
        B.bm3d_filter(**{**args, "index": bad_index, "size": torch.ones_like(args["size"])}, backend=backend)
    for bad in (0.0, float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="sigma: expected finite positive values"):
            B.bm3d_filter(**{**args, "sigma": torch.full((1, 1), bad)}, backend=backend)
    # images: finite and within the kernels' fixed-point range, checked before any kernel runs;
    # the inputs are left as they were
    for name in ("noisy", "pilot"):
        for bad, words in ((float("nan"), "a NaN"), (float("inf"), "max |value| inf"),
                           (-2e5, r"max \|value\| 200000")):
            img = args["noisy"].clone()
            img[0, 0, 3, 5] = bad
            call = {**args, name: img}
            if name == "pilot":
                call["noisy"] = args["noisy"]
            kept = img.clone()
            with pytest.raises(ValueError, match=rf"{name}: expected finite values of magnitude at most 100000 "
                                                 rf".*got {words}"):
                B.bm3d_filter(**call, backend=backend)
            torch.testing.assert_close(img, kept, rtol=0, atol=0, equal_nan=True)   # untouched, NaN included
    big = {**args, "noisy": args["noisy"] * 65535, "sigma": args["sigma"] * 65535}   # 16-bit data: accepted
    out = B.bm3d_filter(**big, backend=backend)
    torch.testing.assert_close(out / 65535, B.bm3d_filter(**args, backend=backend), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# CUDA (run by scripts/gpu_check.sh)
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wiener", [False, True])
def test_cuda_kernel_is_bitwise_the_cpu_kernel(shape, wiener):
    _cpu()
    x, index, size, sigma = _problem(shape, k=32, tau=0.08)
    pilot = (x + 0.05 * torch.randn_like(x)).contiguous() if wiener else None
    t, ti = _consts("dct" if wiener else "bior")
    win = B.kaiser_window2d().float()
    cpu = B.bm3d_filter(x, pilot, index, size, sigma, t, ti, win, 2.7, backend="cpu")
    dev = [v.cuda() if isinstance(v, torch.Tensor) else v for v in (x, pilot, index, size, sigma, t, ti, win)]
    outs = [B.bm3d_filter(*dev, 2.7, backend="cuda") for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0].cpu(), cpu)


@pytest.mark.cuda
def test_cuda_kernel_bad_values_raise():
    args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _args().items()}
    bad = args["size"].clone()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="power of two"):
        B.bm3d_filter(**{**args, "size": bad}, backend="cuda")
    with pytest.raises(ValueError, match="sigma must also be positive"):
        B.bm3d_filter(**{**args, "sigma": torch.full((1, 1), float("nan"), device="cuda")}, backend="cuda")
