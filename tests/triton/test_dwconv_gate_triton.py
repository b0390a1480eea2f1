"""Triton depthwise 3x3 convolution + GELU gate (fastdenoise.triton.dwconv_gate) against the plain
PyTorch reference of fastdenoise.ops.dwconv_gate, and the fused GDFN on it against Restormer's
plain FeedForward.

Under ``TRITON_INTERPRET=1`` on the CPU (tiny shapes: the interpreter is slow): float32, float16
and float64, NCHW and channels_last, strided views read in place, odd N, 1x1 and one-row images,
tiles cut in every direction, batch > 1, 64-bit offsets, autograd. On the GPU only
(``@pytest.mark.cuda``): bfloat16 (NaN under the interpreter), ``opcheck`` and
``torch.compile(fullgraph=True)``, a Restormer-sized feature map.
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise import nn as fnn  # noqa: E402
from fastdenoise._checks import memory_format_of  # noqa: E402
from fastdenoise.models.restormer import FeedForward  # noqa: E402
from fastdenoise.ops import dwconv_gate, dwconv_gate_reference  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS
# the module (fastdenoise.ops.dwconv_gate as an attribute is the function of the same name)
D = importlib.import_module("fastdenoise.ops.dwconv_gate")
LAYOUTS = ("nchw", "channels_last")
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.float64: (1e-12, 1e-12),
       torch.bfloat16: (1.6e-2, 1.6e-2)}
# (B, 2N, H, W): odd N, 1x1 / one-row / one-column images, batch > 1; (1, 10, 9, 67) cuts NCHW
# tiles (4 x 64 pixels x 2 channels) along H, W and the channels; (1, 6, 20, 40) cuts
# channels_last tiles (16 x 16 pixels x 4 channels) along H and W
SHAPES = [(2, 6, 7, 9), (1, 2, 1, 1), (1, 10, 1, 7), (2, 14, 5, 1), (1, 10, 9, 67), (1, 6, 20, 40)]


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _args(shape, dtype, bias=True):
    x = (torch.randn(shape, device=DEVICE) * 1.5 + 0.2).to(dtype)
    w = (torch.randn(shape[1], 1, 3, 3, device=DEVICE) * 0.5).to(dtype)
    b = torch.randn(shape[1], device=DEVICE).to(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_matches_reference(shape, layout, dtype):
    x, w, b = _args(shape, dtype)
    x = _layout(x, layout)
    got = dwconv_gate(x, w, b, backend="triton")
    ref = dwconv_gate_reference(x, w, b)
    assert got.dtype == dtype and got.shape == (shape[0], shape[1] // 2, shape[2], shape[3])
    assert got.is_contiguous(memory_format=memory_format_of(x))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_restormer_width_no_bias(layout):
    """N = 127 (Restormer's hidden width at dim 48): channels_last tiles cover 64 channels, an
    NCHW tile of this small image 128."""
    shape = (1, 254, 2, 3) if layout == "nchw" else (2, 254, 3, 5)
    x, w, _ = _args(shape, torch.float32, bias=False)
    x = _layout(x, layout)
    torch.testing.assert_close(dwconv_gate(x, w, None, backend="triton"), dwconv_gate_reference(x, w, None),
                               rtol=1e-5, atol=1e-5)


def test_strided_views_read_in_place():
    x, w, b = _args((2, 8, 5, 7), torch.float32)
    wide = torch.randn(2, 8, 5, 14, device=DEVICE)[..., ::2]          # stride 2 along W
    chan = torch.randn(2, 12, 5, 7, device=DEVICE)[:, 2:10]           # a channel slice
    rows = _layout(torch.randn(2, 8, 9, 7, device=DEVICE), "channels_last")[:, :, 2:7]   # a band of rows
    for v in (wide, chan, rows):
        torch.testing.assert_close(dwconv_gate(v, w, b, backend="triton"), dwconv_gate_reference(v, w, b),
                                   rtol=1e-5, atol=1e-5)


def test_float32_parameters_with_float16_input():
    x, w, b = _args((1, 6, 4, 5), torch.float16)
    got = dwconv_gate(x, w.float(), b.float(), backend="triton")
    torch.testing.assert_close(got, dwconv_gate_reference(x, w.float(), b.float()), rtol=2e-3, atol=2e-3)


def test_int64_offsets_give_the_same_result():
    from fastdenoise.triton import dwconv_gate as tdg
    for layout in LAYOUTS:
        x, w, b = _args((2, 6, 5, 7), torch.float32)
        x = _layout(x, layout)
        assert torch.equal(tdg._dwconv_gate(x, w, b, force_int64=True), tdg._dwconv_gate(x, w, b))


def test_input_not_modified_and_autograd():
    x, w, b = _args((1, 4, 3, 2), torch.float64)
    saved = x.clone(), w.clone(), b.clone()
    dwconv_gate(x, w, b, backend="triton")
    assert all(torch.equal(t, s) for t, s in zip((x, w, b), saved))
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: dwconv_gate(*a, backend="triton"), (x, w, b), fast_mode=True)
    (gx,) = torch.autograd.grad(dwconv_gate(x, w.detach(), None, backend="triton").sum(), (x,))
    assert gx.shape == x.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gdfn_on_triton_equals_plain(monkeypatch, layout):
    monkeypatch.setenv("FASTDENOISE_BACKEND", "triton")
    ref = FeedForward(4, 2.66, True).to(DEVICE).eval()               # hidden 10: 20 channels
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.4 * torch.randn_like(p))
    x = _layout(torch.randn(2, 4, 7, 5, device=DEVICE), layout)
    with torch.no_grad():
        want = ref(x)
        for rows in (3, None):
            torch.testing.assert_close(fnn.GDFN.from_module(ref, chunk_rows=rows)(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_and_large_on_gpu(layout):
    x = _layout(torch.randn(2, 254, 37, 67, device="cuda"), layout)
    w = torch.randn(254, 1, 3, 3, device="cuda") * 0.5
    b = torch.randn(254, device="cuda")
    rtol, atol = TOL[torch.bfloat16]
    xb = x.bfloat16()
    torch.testing.assert_close(dwconv_gate(xb, w.bfloat16(), b.bfloat16()),
                               dwconv_gate_reference(xb, w.bfloat16(), b.bfloat16()), rtol=rtol, atol=atol)
    torch.testing.assert_close(dwconv_gate(x, w, b), dwconv_gate_reference(x, w, b), rtol=1e-5, atol=1e-5)
    xh = x.half()
    torch.testing.assert_close(dwconv_gate(xh, w.half(), None), dwconv_gate_reference(xh, w.half(), None),
                               rtol=2e-3, atol=2e-3)


@pytest.mark.cuda
def test_opcheck_and_compile_on_gpu():
    x = torch.randn(2, 16, 9, 13, device="cuda")
    w, b = torch.randn(16, 1, 3, 3, device="cuda"), torch.randn(16, device="cuda")
    D._triton()
    op = torch.ops.fastdenoise.dwconv_gate_triton.default
    torch.library.opcheck(op, (x, w, b))
    torch.library.opcheck(op, (x.contiguous(memory_format=torch.channels_last), w, None))
    torch.library.opcheck(op, (x.requires_grad_(True), w, b))

    compiled = torch.compile(lambda t: dwconv_gate(t, w, b), fullgraph=True)
    xd = x.detach()
    torch.testing.assert_close(compiled(xd), dwconv_gate_reference(xd, w, b), rtol=1e-5, atol=1e-5)

    ref = FeedForward(8, 2.66, False).cuda().eval()
    fused = fnn.GDFN.from_module(ref, chunk_rows=4)
    xg = torch.randn(1, 8, 11, 10, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused, fullgraph=True)(xg), ref(xg), rtol=1e-4, atol=1e-4)
