"""fastdenoise.ops.layer_norm2d / simple_gate / gelu_gate: the plain PyTorch references against
independent formulations of the official modules' maths (NAFNet's LayerNorm2d and SimpleGate,
Restormer's WithBias / BiasFree LayerNorm and GDFN gate), dtypes, memory formats, bad input.
The Triton kernels are tested against these references in tests/triton."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import gate_reference, gelu_gate, layer_norm2d, layer_norm2d_reference, simple_gate
from fastdenoise.ops.norm import NAFNET_EPS, RESTORMER_EPS

SHAPES = [(2, 5, 7, 9), (1, 48, 1, 33), (3, 1, 4, 4), (2, 64, 6, 5)]


def _nafnet_ln(x, w, b, eps):
    """NAFNet's LayerNorm2d forward, as its maths reads: mean and biased variance over dim 1."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    return w.view(1, -1, 1, 1) * ((x - mu) / (var + eps).sqrt()) + b.view(1, -1, 1, 1)


def _restormer_ln(x, w, b, bias_free):
    """Restormer's LayerNorm: to (B, H*W, C), normalise over the last dim, back to (B, C, H, W)."""
    n, c, h, wd = x.shape
    t = x.flatten(2).transpose(1, 2)
    var = t.var(-1, keepdim=True, unbiased=False)
    if bias_free:
        y = t / torch.sqrt(var + RESTORMER_EPS) * w
    else:
        y = (t - t.mean(-1, keepdim=True)) / torch.sqrt(var + RESTORMER_EPS) * w + b
    return y.transpose(1, 2).reshape(n, c, h, wd)


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_matches_the_official_formulas(shape):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    w, b = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    torch.testing.assert_close(layer_norm2d(x, w, b), _nafnet_ln(x, w, b, NAFNET_EPS), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer_norm2d(x, w, b, RESTORMER_EPS), _restormer_ln(x, w, b, False),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer_norm2d(x, w, None, RESTORMER_EPS, bias_free=True),
                               _restormer_ln(x, w, None, True), rtol=1e-12, atol=1e-12)
    # and against torch's own layer norm over the channel axis
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (shape[1],), w, b, NAFNET_EPS).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer_norm2d(x, w, b), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_low_precision_within_twice_the_plain_module_error(dtype):
    """DESIGN.md: in float16/bfloat16 the error is at most 2x that of the plain module run in
    the same dtype (here: NAFNet's maths evaluated in that dtype)."""
    x = torch.randn(2, 32, 9, 11) * 2 + 0.5
    w, b = torch.randn(32), torch.randn(32)
    exact = _nafnet_ln(x.double(), w.double(), b.double(), NAFNET_EPS)
    ours = layer_norm2d(x.to(dtype), w, b).double()
    plain = _nafnet_ln(x.to(dtype), w.to(dtype), b.to(dtype), NAFNET_EPS).double()
    assert (ours - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-12
    assert layer_norm2d(x.to(dtype), w, b).dtype == dtype


def test_layer_norm_memory_formats_and_4d_parameters():
    x = torch.randn(2, 12, 5, 7)
    w, b = torch.randn(12), torch.randn(12)
    base = layer_norm2d(x, w, b)
    cl = layer_norm2d(x.contiguous(memory_format=torch.channels_last), w.view(1, 12, 1, 1), b.view(1, 12, 1, 1))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, base, rtol=1e-5, atol=1e-6)   # other reduction order over C
    view = torch.randn(2, 12, 5, 14)[..., ::2]                   # neither layout: read as it is
    strided = layer_norm2d(view, w, b)
    assert strided.shape == (2, 12, 5, 7)
    torch.testing.assert_close(strided, layer_norm2d(view.contiguous(), w, b), rtol=0, atol=0)


def test_layer_norm_is_differentiable_and_keeps_inputs():
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    before = x.detach().clone()
    assert torch.autograd.gradcheck(lambda *a: layer_norm2d(*a), (x, w, b))
    assert torch.autograd.gradcheck(lambda u, v: layer_norm2d(u, v, None, bias_free=True), (x, w))
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("kwargs, err, words", [
    (dict(x=torch.randn(5, 7, 9)), errors.ShapeError, "x: expected 4 dims"),
    (dict(x=torch.randint(0, 3, (1, 5, 2, 2))), errors.DTypeError, "x: expected dtype"),
    (dict(weight=torch.randn(4)), errors.ShapeError, "weight: expected shape \\(5,\\)"),
    (dict(bias=torch.randn(1, 5, 2, 1)), errors.ShapeError, "bias: expected shape"),
    (dict(weight=[1.0] * 5), TypeError, "weight: expected a torch.Tensor"),
    (dict(bias_free=True), ValueError, "bias: expected None with bias_free=True"),
    (dict(bias_free="no"), TypeError, r"^bias_free: expected a bool, got str 'no'$"),
    (dict(eps=0.0), ValueError, r"^eps: expected a finite positive number, got 0.0$"),
    (dict(eps=-1e-6), ValueError, r"^eps: expected a finite positive number, got -1e-06$"),
    (dict(eps=float("inf")), ValueError, r"^eps: expected a finite positive number, got inf$"),
    (dict(eps=float("nan")), ValueError, r"^eps: expected a finite positive number, got nan$"),
    (dict(eps=True), TypeError, r"^eps: expected a real number, got bool True$"),
    (dict(eps="1e-6"), TypeError, r"^eps: expected a real number, got str '1e-6'$"),
    (dict(eps=torch.tensor(1e-6)), TypeError, r"^eps: expected a real number, got Tensor"),
    (dict(backend="cuda"), errors.DeviceError, "backend='cuda': expected a tensor on cuda"),
])
def test_layer_norm_bad_input(kwargs, err, words):
    args = dict(x=torch.randn(1, 5, 2, 2), weight=torch.randn(5), bias=torch.randn(5))
    args.update(kwargs)
    with pytest.raises(err, match=words):
        layer_norm2d(**args)


@pytest.mark.parametrize("eps", [np.float32(1e-3), np.float64(1e-3), 1])
def test_layer_norm_takes_any_real_eps(eps):
    """NumPy scalars and ints (a config file's eps) are eps like the float they equal."""
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 5, 3, 4, generator=g), torch.randn(5, generator=g), torch.randn(5, generator=g)
    want = layer_norm2d_reference(x, w, b, float(eps))
    assert torch.equal(layer_norm2d(x, w, b, eps, backend="reference"), want)
    torch.testing.assert_close(layer_norm2d(x, w, b, eps), want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(want, layer_norm2d_reference(x, w, b, 1e-6))   # eps matters at this size


# ------------------------------------------------------------------ the C++ CPU kernel

HAVE_CPU = fastdenoise._ext.has_kernel("layer_norm2d", "CPU")
# odd sizes; more channels than the kernel's 16 partial sums (with a remainder) and more pixels
# than its 64-pixel blocks (with a remainder); C = 1
CPU_SHAPES = [(2, 5, 7, 9), (1, 48, 1, 33), (3, 1, 4, 4), (2, 37, 13, 29), (1, 130, 3, 70)]


def _cpu():
    if not HAVE_CPU:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


@pytest.mark.parametrize("shape", CPU_SHAPES)
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("variant", ["bias", "no-bias", "bias-free"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_layer_norm_cpu_kernel_matches_reference(shape, fmt, variant, dtype):
    c = shape[1]
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c)
    b = torch.randn(c) if variant == "bias" else None
    eps = RESTORMER_EPS if variant == "bias-free" else NAFNET_EPS
    before = x.clone()
    got = layer_norm2d(x, w, b, eps, variant == "bias-free", backend=_cpu())
    ref = layer_norm2d_reference(x, w, b, eps, variant == "bias-free")
    assert torch.equal(x, before)
    assert got.dtype == dtype and got.shape == x.shape
    fmt_kept = torch.channels_last if fmt == "channels_last" and c > 1 else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt_kept)
    if dtype in (torch.float32, torch.float64):
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    else:  # DESIGN.md: at most twice the error of the plain computation in that dtype
        exact = layer_norm2d_reference(x.double(), w.double(), None if b is None else b.double(), eps,
                                       variant == "bias-free")
        assert (got.double() - exact).abs().max() <= 2 * (ref.double() - exact).abs().max() + 1e-12


def test_layer_norm_cpu_kernel_strided_input_and_default_dispatch():
    _cpu()
    x = torch.randn(2, 12, 5, 14)[..., ::2]
    w, b = torch.randn(12), torch.randn(12)
    assert fastdenoise._dispatch.resolve("layer_norm2d", x, None) == "cpu"
    torch.testing.assert_close(layer_norm2d(x, w, b), layer_norm2d_reference(x, w, b), rtol=1e-5, atol=1e-5)
    # float16 parameters with a float32 image: statistics and affine in float32
    torch.testing.assert_close(layer_norm2d(x, w.half(), b.half()),
                               layer_norm2d_reference(x, w.half(), b.half()), rtol=1e-5, atol=1e-5)


def test_layer_norm_cpu_kernel_opcheck():
    _cpu()
    x = torch.randn(2, 7, 5, 6)
    w, b = torch.randn(7), torch.randn(7)
    torch.library.opcheck(torch.ops.fastdenoise.layer_norm2d.default, (x, w, b, 1e-6, False))
    torch.library.opcheck(torch.ops.fastdenoise.layer_norm2d.default,
                          (x.contiguous(memory_format=torch.channels_last), w, None, 1e-5, True))


@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 2, 1, 1), (3, 20, 5, 3)])
def test_gates_match_the_official_formulas(shape):
    x = torch.randn(shape)
    x1, x2 = x.chunk(2, dim=1)
    torch.testing.assert_close(simple_gate(x), x1 * x2, rtol=0, atol=0)
    torch.testing.assert_close(gelu_gate(x), F.gelu(x1) * x2, rtol=1e-6, atol=1e-7)
    cl = simple_gate(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x1 * x2)
    assert gelu_gate(x.half()).dtype == torch.float16


def test_gate_reference_rounds_once():
    x = torch.randn(2, 8, 3, 3).half()
    exact = (F.gelu(x.float()[:, :4]) * x.float()[:, 4:]).half()
    assert torch.equal(gate_reference(x, True), exact)


@pytest.mark.parametrize("fn", [simple_gate, gelu_gate])
def test_gate_bad_input(fn):
    with pytest.raises(errors.ShapeError, match="divisible by 2"):
        fn(torch.randn(1, 3, 4, 4))
    with pytest.raises(errors.ShapeError, match="4 dims"):
        fn(torch.randn(4, 4))
    with pytest.raises(errors.DTypeError):
        fn(torch.ones(1, 2, 2, 2, dtype=torch.int32))
