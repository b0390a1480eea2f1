"""fastdenoise.ops.pointwise_dwconv: the plain PyTorch reference against the official modules it
stands for (Restormer's ``qkv_dwconv(qkv(x))`` and ``FeedForward``'s ``dwconv(project_in(x))``
then the GELU gate, as two ``nn.Conv2d``) and against an explicit per-pixel formulation, in
float64; dtypes, memory formats, strided input, bad input, backends. The Triton kernel is
tested against this reference in tests/triton/test_pwdw_triton.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdenoise import errors
from fastdenoise.ops import pointwise_dwconv, pointwise_dwconv_reference

# (B, Cin, Cmid, H, W): 1x1 / one-row / one-column images, odd widths, batch > 1
SHAPES = [(2, 5, 6, 7, 9), (1, 3, 4, 1, 1), (3, 4, 10, 1, 7), (2, 7, 14, 6, 1), (1, 6, 18, 9, 11)]


def _official(cin, cmid, bias, gate, w, wd, b, bd):
    """The two convolutions as Restormer builds them (float64), with the given parameters."""
    pin = nn.Conv2d(cin, cmid, kernel_size=1, bias=bias).double()
    dw = nn.Conv2d(cmid, cmid, kernel_size=3, stride=1, padding=1, groups=cmid, bias=bias).double()
    with torch.no_grad():
        pin.weight.copy_(w)
        dw.weight.copy_(wd)
        if bias:
            pin.bias.copy_(b)
            dw.bias.copy_(bd)

    def run(x):
        y = dw(pin(x))
        if gate:
            x1, x2 = y.chunk(2, dim=1)
            y = F.gelu(x1) * x2
        return y
    return run


def _explicit(x, w, wd, b, bd, gate):
    """Per output pixel: the 1x1 at each of the 9 neighbours (zero outside the image, bias
    included inside), weighted by the depthwise taps."""
    bsz, cin, h, wdt = x.shape
    cmid = w.shape[0]
    m = torch.einsum("ck,bkij->bcij", w.reshape(cmid, cin), x)
    if b is not None:
        m = m + b.view(1, -1, 1, 1)
    mp = F.pad(m, (1, 1, 1, 1))                    # zero padding of m, after its bias
    y = torch.zeros(bsz, cmid, h, wdt, dtype=x.dtype)
    for u in range(3):
        for v in range(3):
            y = y + wd[:, 0, u, v].view(1, -1, 1, 1) * mp[:, :, u:u + h, v:v + wdt]
    if bd is not None:
        y = y + bd.view(1, -1, 1, 1)
    if gate:
        n = cmid // 2
        y = 0.5 * y[:, :n] * (1 + torch.erf(y[:, :n] / 2 ** 0.5)) * y[:, n:]
    return y


def _args(cin, cmid, h=5, w=6, bsz=1, dtype=torch.float64, bias=True):
    x = (torch.randn(bsz, cin, h, w, dtype=torch.float64) * 1.5 + 0.2).to(dtype)
    wt = torch.randn(cmid, cin, 1, 1, dtype=torch.float64) * 0.4
    wd = torch.randn(cmid, 1, 3, 3, dtype=torch.float64) * 0.5
    b = torch.randn(cmid, dtype=torch.float64) if bias else None
    bd = torch.randn(cmid, dtype=torch.float64) if bias else None
    return x, wt, wd, b, bd


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gate", [False, True])
def test_reference_matches_the_official_modules(shape, bias, gate):
    bsz, cin, cmid, h, w = shape
    x, wt, wd, b, bd = _args(cin, cmid, h, w, bsz, bias=bias)
    got = pointwise_dwconv(x, wt, wd, b, bd, gate=gate)
    n = cmid // 2 if gate else cmid
    assert got.shape == (bsz, n, h, w) and got.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(got, _official(cin, cmid, bias, gate, wt, wd, b, bd)(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _explicit(x, wt, wd, b, bd, gate), rtol=1e-12, atol=1e-12)
    # a (Cmid, Cin) weight means the same
    torch.testing.assert_close(pointwise_dwconv(x, wt.reshape(cmid, cin), wd, b, bd, gate=gate), got,
                               rtol=0, atol=0)


def test_bias_sits_inside_the_padding():
    """The 1x1's bias does not reach the padded border: a constant image's border pixels see
    fewer bias terms than its interior (what fusing the bias into one dense 3x3 would get wrong)."""
    x = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    wt = torch.zeros(3, 2, 1, 1, dtype=torch.float64)
    wd = torch.ones(3, 1, 3, 3, dtype=torch.float64)
    b = torch.ones(3, dtype=torch.float64)
    y = pointwise_dwconv(x, wt, wd, b, None)
    assert y[0, 0, 1, 1] == 9 and y[0, 0, 0, 1] == 6 and y[0, 0, 0, 0] == 4


@pytest.mark.parametrize("gate", [False, True])
def test_channels_last_and_strided_inputs(gate):
    x, wt, wd, b, bd = _args(5, 8, 6, 7, 2)
    base = pointwise_dwconv(x, wt, wd, b, bd, gate=gate)
    cl = pointwise_dwconv(x.contiguous(memory_format=torch.channels_last), wt, wd, b, bd, gate=gate)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, base, rtol=1e-12, atol=1e-12)
    wide = torch.randn(2, 5, 6, 14, dtype=torch.float64)[..., ::2]
    assert not wide.is_contiguous()
    torch.testing.assert_close(pointwise_dwconv(wide, wt, wd, b, bd, gate=gate),
                               _explicit(wide.contiguous(), wt, wd, b, bd, gate), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", [False, True])
def test_low_precision_rounds_once_from_float32(dtype, gate):
    x, wt, wd, b, bd = _args(6, 10, 9, 11, 2, dtype)
    params = [t.to(dtype) for t in (wt, wd, b, bd)]
    got = pointwise_dwconv_reference(x, *params, gate=gate)
    assert got.dtype == dtype
    exact = _explicit(x.double(), *[t.double() for t in params], gate)
    eps = torch.finfo(dtype).eps
    scale = exact.abs().max()
    assert ((got.double() - exact).abs() <= eps * exact.abs() + 1e-5 * scale).all()
    if dtype != torch.float32:              # no worse than twice the two modules in that dtype (DESIGN.md)
        y = F.conv2d(F.conv2d(x, params[0], params[2]), params[1], params[3], padding=1, groups=10)
        if gate:
            y = F.gelu(y[:, :5]) * y[:, 5:]
        assert (got.double() - exact).abs().max() <= 2 * (y.double() - exact).abs().max()


def test_input_not_modified_and_differentiable():
    x, wt, wd, b, bd = _args(3, 4, 4, 5)
    leaves = [t.requires_grad_(True) for t in (x, wt, wd, b, bd)]
    before = [t.detach().clone() for t in leaves]
    out = pointwise_dwconv(*leaves, gate=True)
    assert out.requires_grad
    assert all(torch.equal(t.detach(), s) for t, s in zip(leaves, before))
    assert torch.autograd.gradcheck(lambda *a: pointwise_dwconv(*a, gate=True), tuple(leaves))
    assert torch.autograd.gradcheck(lambda u, v, z: pointwise_dwconv(u, v, z), (x, wt, wd))


def _bad(**kw):
    args = dict(x=torch.randn(1, 4, 5, 5), weight=torch.randn(6, 4, 1, 1), dw_weight=torch.randn(6, 1, 3, 3),
                bias=torch.randn(6), dw_bias=torch.randn(6))
    args.update(kw)
    return args


@pytest.mark.parametrize("kwargs, err, words", [
    (_bad(x=torch.randn(4, 5, 5)), errors.ShapeError, r"x: expected 4 dims \(B, C, H, W\), got 3: \[4, 5, 5\]"),
    (_bad(x=torch.randint(0, 3, (1, 4, 5, 5))), errors.DTypeError, r"x: expected dtype in .*, got int64"),
    (_bad(x=torch.randn(1, 4, 0, 5)), errors.ShapeError, r"x: expected a non-empty tensor"),
    (_bad(x=None), TypeError, r"x: expected a torch.Tensor"),
    (_bad(weight=torch.randn(6, 5, 1, 1)), errors.ShapeError,
     r"weight: expected shape \(Cmid, 4, 1, 1\) or \(Cmid, 4\).*got \[6, 5, 1, 1\]"),
    (_bad(weight=torch.randn(6, 4, 3, 3)), errors.ShapeError, r"weight: expected shape \(Cmid, 4, 1, 1\)"),
    (_bad(weight=torch.randn(6, 4, 1)), errors.ShapeError, r"weight: expected shape \(Cmid, 4, 1, 1\)"),
    (_bad(weight=torch.ones(6, 4, 1, 1, dtype=torch.int32)), errors.DTypeError,
     r"weight: expected a floating dtype, got int32"),
    (_bad(weight="w"), TypeError, r"weight: expected a torch.Tensor"),
    (_bad(weight=torch.randn(6, 4, 1, 1, device="meta")), errors.DeviceError,
     r"weight: expected a tensor on cpu \(the device of x\), got meta"),
    (_bad(dw_weight=torch.randn(8, 1, 3, 3)), errors.ShapeError,
     r"dw_weight: expected shape \(6, 1, 3, 3\) \(a depthwise 3x3 .* 6 channels\), got \[8, 1, 3, 3\]"),
    (_bad(dw_weight=torch.randn(6, 1, 5, 5)), errors.ShapeError, r"dw_weight: expected shape \(6, 1, 3, 3\)"),
    (_bad(dw_weight=torch.ones(6, 1, 3, 3, dtype=torch.int64)), errors.DTypeError,
     r"dw_weight: expected a floating dtype, got int64"),
    (_bad(dw_weight=None), TypeError, r"dw_weight: expected a torch.Tensor"),
    (_bad(bias=torch.randn(4)), errors.ShapeError, r"bias: expected shape \(6,\).*got \[4\]"),
    (_bad(dw_bias=torch.randn(1, 6)), errors.ShapeError, r"dw_bias: expected shape \(6,\).*got \[1, 6\]"),
    (_bad(dw_bias=torch.ones(6, dtype=torch.int64)), errors.DTypeError, r"dw_bias: expected a floating dtype"),
    (_bad(bias=[0.0] * 6), TypeError, r"bias: expected a torch.Tensor"),
    (_bad(weight=torch.randn(5, 4, 1, 1), dw_weight=torch.randn(5, 1, 3, 3), bias=None, dw_bias=None, gate=True),
     errors.ShapeError, r"weight: gate=True needs an even number of output channels.*got 5"),
    (_bad(gate=1), TypeError, r"gate: expected a bool, got int"),
    (_bad(backend="cuda"), errors.DeviceError, r"backend='cuda': expected a tensor on cuda, got cpu"),
    (_bad(backend="cpu"), errors.BackendError, r"pointwise_dwconv has no (compiled|C\+\+) CPU kernel"),
    (_bad(backend="nope"), ValueError, r"backend: expected one of"),
])
def test_bad_input(kwargs, err, words):
    with pytest.raises(err, match=words):
        pointwise_dwconv(**kwargs)


def test_backend_triton_on_cpu_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    with pytest.raises((errors.DeviceError, errors.BackendError), match="backend='triton'"):
        pointwise_dwconv(**_bad(backend="triton"))


def test_backend_reference_and_default_agree(monkeypatch):
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    x, wt, wd, b, bd = _args(4, 8, 6, 5, 2, torch.float32)
    params = [t.float() for t in (wt, wd, b, bd)]
    got = pointwise_dwconv(x, *params, gate=True)
    assert torch.equal(got, pointwise_dwconv(x, *params, gate=True, backend="reference"))
    monkeypatch.setenv("FASTDENOISE_BACKEND", "reference")
    assert torch.equal(pointwise_dwconv(x, *params, gate=True), pointwise_dwconv_reference(x, *params, gate=True))
