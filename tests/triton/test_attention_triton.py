"""Triton channel attention (fastdenoise.triton.attention) against the plain PyTorch references
of fastdenoise.ops.attention. Under ``TRITON_INTERPRET=1``: float32 / float16 / float64, both
memory formats, odd channel counts, residual, activations, the fused SimpleGate, pooling over
several programs, 64-bit offsets, autograd. GPU only: bfloat16, opcheck, torch.compile."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise._checks import memory_format_of  # noqa: E402
from fastdenoise.ops import attention as A  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.float64: (1e-12, 1e-12),
       torch.bfloat16: (1.6e-2, 1.6e-2)}
LAYOUTS = ("nchw", "channels_last")


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _params(c, r, bias, dtype=torch.float32):
    h = max(1, c // r)
    mk = lambda *s: torch.randn(*s, device=DEVICE, dtype=dtype)  # noqa: E731
    return mk(h, c), (mk(h) if bias else None), mk(c, h), (mk(c) if bias else None)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 80, 3, 11), (3, 1, 4, 4), (1, 33, 5, 6)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_channel_attention_matches_reference(shape, layout, dtype, act):
    x = _layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    w1, b1, w2, b2 = _params(shape[1], 4, act != "relu")
    res = torch.randn(shape, device=DEVICE).to(dtype) if act != "gelu" else None
    got = A.channel_attention(x, w1, b1, w2, b2, residual=res, act=act, backend="triton")
    ref = A.channel_attention_reference(x, w1, b1, w2, b2, res, act)
    assert got.dtype == dtype and got.is_contiguous(memory_format=memory_format_of(x))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 62, 3, 5), (2, 32, 6, 5)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", [False, True])
def test_simplified_channel_attention_matches_reference(shape, layout, gate):
    x = _layout(torch.randn(shape, device=DEVICE), layout)
    cu = shape[1] // 2 if gate else shape[1]
    w, b = torch.randn(cu, cu, device=DEVICE), torch.randn(cu, device=DEVICE)
    got = A.simplified_channel_attention(x, w, b, gate=gate, backend="triton")
    ref = A.simplified_channel_attention_reference(x, w, b, gate)
    assert got.shape == (shape[0], cu, shape[2], shape[3])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_width_one_with_any_last_stride(layout):
    """(B, C, H, 1) tensors whose stride(3) is not the pixel step (PyTorch ignores size-1 dims for
    contiguity): pooling and scaling step the pixels by stride(2)."""
    x = _layout(torch.randn(2, 8, 1, 16, device=DEVICE), layout).transpose(2, 3)
    assert x.shape == (2, 8, 16, 1) and x.stride(3) != x.stride(2)
    w1, b1, w2, b2 = _params(8, 4, True)
    res = torch.randn(2, 8, 16, 1, device=DEVICE)
    torch.testing.assert_close(A.channel_attention(x, w1, b1, w2, b2, residual=res, backend="triton"),
                               A.channel_attention_reference(x, w1, b1, w2, b2, res), rtol=1e-5, atol=1e-5)
    for gate in (False, True):
        cu = 4 if gate else 8
        w, b = torch.randn(cu, cu, device=DEVICE), torch.randn(cu, device=DEVICE)
        torch.testing.assert_close(A.simplified_channel_attention(x, w, b, gate=gate, backend="triton"),
                                   A.simplified_channel_attention_reference(x, w, b, gate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_every_pre_op_of_both_kernels(layout):
    """The pooling and the scaling kernel apply the same pre-op (0 none, 1 ReLU, 2 GELU, 3 the
    SimpleGate, 4 the GELU gate, both gates over the two channel halves)."""
    from fastdenoise.triton import attention as ta
    x = torch.randn(2, 6, 9, 7, device=DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xd = x.double()
    g1, g2 = xd.chunk(2, dim=1)
    want = {0: xd, 1: torch.relu(xd), 2: torch.nn.functional.gelu(xd), 3: g1 * g2,
            4: torch.nn.functional.gelu(g1) * g2}
    for pre, u in want.items():
        torch.testing.assert_close(ta._pool(x, pre).double(), u.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        a = torch.rand(2, u.shape[1], device=DEVICE)
        torch.testing.assert_close(ta._scale(x, a, None, pre).double(), u * a.double()[:, :, None, None],
                                   rtol=1e-5, atol=1e-6)


def test_pooling_over_several_programs_is_deterministic():
    """More than one pixel range per image (4096 pixels each): partial sums added in a fixed order."""
    from fastdenoise.triton import attention as ta
    x = torch.randn(2, 3, 97, 101, device=DEVICE)
    m1, m2 = ta._pool(x, 0), ta._pool(x, 0)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(m1, x.double().mean(dim=(2, 3)).float(), rtol=1e-6, atol=1e-7)
    assert torch.equal(ta._pool(x, 2, force_int64=True), ta._pool(x, 2))
    a = torch.rand(2, 3, device=DEVICE)
    assert torch.equal(ta._scale(x, a, x, 1, force_int64=True), ta._scale(x, a, x, 1))


def test_autograd_through_the_triton_ops():
    x = torch.randn(1, 6, 5, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(6, 2, device=DEVICE, dtype=torch.float64, requires_grad=True)
    r = torch.randn(1, 6, 5, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: A.channel_attention(a[0], a[1], None, a[2], None, residual=a[3], act="gelu", backend="triton"),
        (x, w1, w2, r))
    w = torch.randn(3, 3, device=DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda u, v: A.simplified_channel_attention(u, v, None, gate=True, backend="triton"), (x, w))


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_on_gpu(layout):
    x = _layout(torch.randn(2, 64, 33, 47, device="cuda").bfloat16(), layout)
    w1, b1, w2, b2 = _params(64, 16, True)
    rtol, atol = TOL[torch.bfloat16]
    torch.testing.assert_close(A.channel_attention(x, w1, b1, w2, b2, residual=x),
                               A.channel_attention_reference(x, w1, b1, w2, b2, x), rtol=rtol, atol=atol)


@pytest.mark.cuda
def test_opcheck_and_compile_on_gpu():
    x = torch.randn(2, 16, 9, 13, device="cuda")
    A._triton()
    a = torch.rand(2, 16, device="cuda")
    torch.library.opcheck(torch.ops.fastdenoise.ca_pool_triton.default, (x, 2))
    torch.library.opcheck(torch.ops.fastdenoise.ca_scale_triton.default, (x, a, x, 0))
    torch.library.opcheck(torch.ops.fastdenoise.ca_scale_triton.default, (x, a[:, :8].contiguous(), None, 3))
    w1, b1, w2, b2 = _params(16, 4, True)

    def block(t):
        return A.channel_attention(t, w1, b1, w2, b2, residual=t, act="gelu")

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)
