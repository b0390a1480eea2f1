"""fastdenoise.ops.dwconv_gate: the plain PyTorch reference against the literal formulation of
Restormer's GDFN middle (a depthwise ``nn.Conv2d`` / ``F.conv2d(groups=C)``, ``chunk``,
``F.gelu(x1) * x2``) and against an explicit 9-tap sum over a zero-padded input, in float64;
dtypes, memory formats, strided input, bad input, backends. The Triton kernel is tested against
this reference in tests/triton/test_dwconv_gate_triton.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdenoise import errors
from fastdenoise.ops import dwconv_gate, dwconv_gate_reference

# (B, 2N, H, W): 1x1 and one-row images, a tall odd image, odd N (127: Restormer's hidden width
# at dim 48), batch > 1
SHAPES = [(2, 6, 7, 9), (1, 2, 1, 1), (3, 10, 1, 7), (2, 6, 33, 5), (1, 254, 5, 4), (2, 14, 7, 1)]


def _literal(x, weight, bias):
    """What the official module computes: the depthwise conv, chunk, exact GELU times value."""
    c = x.shape[1]
    y = F.conv2d(x, weight, bias, stride=1, padding=1, groups=c)
    x1, x2 = y.chunk(2, dim=1)
    return F.gelu(x1) * x2


def _taps(x, weight, bias):
    """The depthwise 3x3 cross-correlation written as 9 shifted, weighted copies of the padded x."""
    h, w = x.shape[2:]
    xp = F.pad(x, (1, 1, 1, 1))
    y = torch.zeros_like(x)
    for u in range(3):
        for v in range(3):
            y = y + weight[:, 0, u, v].view(1, -1, 1, 1) * xp[:, :, u:u + h, v:v + w]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    n = x.shape[1] // 2
    return 0.5 * y[:, :n] * (1 + torch.erf(y[:, :n] / 2 ** 0.5)) * y[:, n:]


def _args(shape, dtype=torch.float64, bias=True):
    x = (torch.randn(shape, dtype=torch.float64) * 1.5 + 0.2).to(dtype)
    w = torch.randn(shape[1], 1, 3, 3, dtype=torch.float64) * 0.5
    b = torch.randn(shape[1], dtype=torch.float64) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_reference_matches_the_official_formulation(shape, bias):
    x, w, b = _args(shape, bias=bias)
    got = dwconv_gate(x, w, b)
    assert got.shape == (shape[0], shape[1] // 2, shape[2], shape[3]) and got.dtype == torch.float64
    torch.testing.assert_close(got, _literal(x, w, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, _taps(x, w, b), rtol=1e-12, atol=1e-12)
    # and the module the official code builds
    conv = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1, groups=shape[1], bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias:
            conv.bias.copy_(b)
        x1, x2 = conv(x).chunk(2, dim=1)
        torch.testing.assert_close(dwconv_gate(x, conv.weight, conv.bias), F.gelu(x1) * x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 2, 1, 1), (1, 254, 3, 5)])
def test_channels_last_and_strided_inputs(shape):
    x, w, b = _args(shape)
    base = dwconv_gate(x, w, b)
    cl = dwconv_gate(x.contiguous(memory_format=torch.channels_last), w, b)
    if shape[2] * shape[3] > 1:
        assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, base, rtol=1e-12, atol=1e-12)
    wide = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3], dtype=torch.float64)
    strided = wide[..., ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(dwconv_gate(strided, w, b), _literal(strided.contiguous(), w, b),
                               rtol=1e-12, atol=1e-12)
    # a channel slice of a bigger tensor (as a chunk of project_in's output would be)
    big = torch.randn(shape[0], shape[1] + 4, shape[2], shape[3], dtype=torch.float64)
    view = big[:, 2:2 + shape[1]]
    torch.testing.assert_close(dwconv_gate(view, w, b), _literal(view.contiguous(), w, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_rounds_once_from_float32(dtype):
    x, w, b = _args((2, 10, 9, 11), dtype)
    got = dwconv_gate_reference(x, w.to(dtype), b.to(dtype))
    assert got.dtype == dtype
    exact = _literal(x.double(), w.to(dtype).double(), b.to(dtype).double())
    # one rounding of the float32 result: within an ulp of the dtype (plus float32 noise)
    eps = torch.finfo(dtype).eps
    assert ((got.double() - exact).abs() <= eps * exact.abs() + 1e-5).all()
    # and no worse than twice the plain module run in the same dtype (DESIGN.md), float16/bf16
    if dtype != torch.float32:
        plain = _literal(x, w.to(dtype), b.to(dtype)).double()
        assert (got.double() - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-12


def test_float32_parameters_with_low_precision_input():
    x, w, b = _args((1, 8, 5, 6), torch.float16)
    got = dwconv_gate(x, w.float(), b.float())
    assert got.dtype == torch.float16
    exact = _literal(x.double(), w.float().double(), b.float().double())
    torch.testing.assert_close(got.double(), exact, rtol=2e-3, atol=2e-3)


def test_input_not_modified_and_differentiable():
    x, w, b = _args((1, 6, 4, 5))
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    before = x.detach().clone(), w.detach().clone(), b.detach().clone()
    out = dwconv_gate(x, w, b)
    for t, saved in zip((x, w, b), before):
        assert torch.equal(t.detach(), saved)
    assert torch.autograd.gradcheck(lambda *a: dwconv_gate(*a), (x, w, b))
    assert torch.autograd.gradcheck(lambda u, v: dwconv_gate(u, v, None), (x, w))
    assert out.requires_grad


def _bad(**kw):
    args = dict(x=torch.randn(1, 6, 4, 4), weight=torch.randn(6, 1, 3, 3), bias=torch.randn(6))
    args.update(kw)
    return args


@pytest.mark.parametrize("kwargs, err, words", [
    (_bad(x=torch.randn(6, 4, 4)), errors.ShapeError, r"x: expected 4 dims \(B, C, H, W\), got 3: \[6, 4, 4\]"),
    (_bad(x=torch.randint(0, 3, (1, 6, 4, 4))), errors.DTypeError, r"x: expected dtype in .*, got int64"),
    (_bad(x=torch.randn(1, 5, 4, 4)), errors.ShapeError, r"x: expected a channel count divisible by 2 .*got C=5"),
    (_bad(x=torch.randn(1, 6, 0, 4)), errors.ShapeError, r"x: expected a non-empty tensor"),
    (_bad(x=[[1.0]]), TypeError, r"x: expected a torch.Tensor"),
    (_bad(weight=torch.randn(6, 3, 3)), errors.ShapeError,
     r"weight: expected shape \(6, 1, 3, 3\).*got \[6, 3, 3\]"),
    (_bad(weight=torch.randn(8, 1, 3, 3)), errors.ShapeError,
     r"weight: expected shape \(6, 1, 3, 3\).*got \[8, 1, 3, 3\]"),
    (_bad(weight=torch.randn(6, 1, 5, 5)), errors.ShapeError, r"weight: expected shape \(6, 1, 3, 3\)"),
    (_bad(weight=torch.ones(6, 1, 3, 3, dtype=torch.int32)), errors.DTypeError,
     r"weight: expected a floating dtype, got int32"),
    (_bad(weight=None), TypeError, r"weight: expected a torch.Tensor"),
    (_bad(weight=torch.randn(6, 1, 3, 3, device="meta")), errors.DeviceError,
     r"weight: expected a tensor on cpu \(the device of x\), got meta"),
    (_bad(bias=torch.randn(3)), errors.ShapeError, r"bias: expected shape \(6,\).*got \[3\]"),
    (_bad(bias=torch.randn(1, 6)), errors.ShapeError, r"bias: expected shape \(6,\).*got \[1, 6\]"),
    (_bad(bias=torch.ones(6, dtype=torch.int64)), errors.DTypeError, r"bias: expected a floating dtype, got int64"),
    (_bad(bias=[0.0] * 6), TypeError, r"bias: expected a torch.Tensor"),
    (_bad(backend="cuda"), errors.DeviceError, r"backend='cuda': expected a tensor on cuda, got cpu"),
    (_bad(backend="cpu"), errors.BackendError, r"dwconv_gate has no (compiled|C\+\+) CPU kernel"),
    (_bad(backend="nope"), ValueError, r"backend: expected one of"),
])
def test_bad_input(kwargs, err, words):
    with pytest.raises(err, match=words):
        dwconv_gate(**kwargs)


def test_backend_triton_on_cpu_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    with pytest.raises((errors.DeviceError, errors.BackendError), match="backend='triton'"):
        dwconv_gate(**_bad(backend="triton"))


def test_backend_reference_and_default_agree(monkeypatch):
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    x, w, b = _args((2, 8, 6, 5), torch.float32)
    assert torch.equal(dwconv_gate(x, w, b), dwconv_gate(x, w, b, backend="reference"))
    monkeypatch.setenv("FASTDENOISE_BACKEND", "reference")
    assert torch.equal(dwconv_gate(x, w, b), dwconv_gate_reference(x, w, b))
