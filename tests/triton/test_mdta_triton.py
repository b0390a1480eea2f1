"""Triton transposed attention (fastdenoise.triton.mdta: the Gram pass) through
fastdenoise.ops.transposed_attention against its plain PyTorch reference. Under
``TRITON_INTERPRET=1``: float32 / float16, both memory formats, the head widths of the official
configs (d = 48 and 96) and odd ones, pixel counts split over several programs, a
non-flattenable input view, residual, determinism, autograd. GPU only: bfloat16, opcheck,
torch.compile."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise.errors import DTypeError  # noqa: E402
from fastdenoise.ops import mdta as M  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _inputs(b, c, heads, h, w, dtype, layout, seed, project=True, bias=False):
    g = torch.Generator().manual_seed(seed)
    qkv = _layout(torch.randn(b, 3 * c, h, w, generator=g) + 0.3, layout).to(device=DEVICE, dtype=dtype)
    t = (torch.rand(heads, 1, 1, generator=g) * 2 + 0.3).to(DEVICE)
    wt = (torch.randn(c, c, 1, 1, generator=g) / c ** 0.5).to(device=DEVICE, dtype=dtype) if project else None
    bs = torch.randn(c, generator=g).to(device=DEVICE, dtype=dtype) if bias else None
    return qkv, t, wt, bs


@pytest.mark.parametrize("c, heads", [(8, 1), (12, 3), (48, 1), (96, 2), (10, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(c, heads, layout, dtype):
    qkv, t, w, b = _inputs(2, c, heads, 9, 7, dtype, layout, seed=c + heads, bias=c == 12)
    got = M.transposed_attention(qkv, t, heads, w, b, backend="triton")
    ref = M.transposed_attention_reference(qkv, t, heads, w, b)
    assert got.dtype == dtype and got.shape == (2, c, 9, 7)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def test_d96_refinement_width():
    qkv, t, w, _ = _inputs(1, 96, 1, 5, 6, torch.float32, "channels_last", seed=5)
    torch.testing.assert_close(M.transposed_attention(qkv, t, 1, w, backend="triton"),
                               M.transposed_attention_reference(qkv, t, 1, w), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("hw", [(1, 1), (1, 37), (33, 5)])
def test_odd_sizes_and_several_programs(hw, monkeypatch):
    from fastdenoise.triton import mdta as tm

    monkeypatch.setattr(tm, "_TARGET_PROGRAMS", 64)      # many pixel ranges per image and head
    qkv, t, w, _ = _inputs(2, 8, 2, *hw, torch.float32, "nchw", seed=hw[0] * hw[1])
    torch.testing.assert_close(M.transposed_attention(qkv, t, 2, w, backend="triton"),
                               M.transposed_attention_reference(qkv, t, 2, w), rtol=2e-5, atol=2e-5)


def test_gram_pass_values():
    from fastdenoise.triton import mdta as tm

    qkv, _, _, _ = _inputs(2, 12, 3, 6, 5, torch.float32, "channels_last", seed=9)
    g, sq_q, sq_k = tm.gram(qkv, 3)
    q, k = (x.reshape(2, 3, 4, 30) for x in qkv.float().chunk(3, dim=1)[:2])
    torch.testing.assert_close(g, q @ k.transpose(-2, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sq_q, q.square().sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sq_k, k.square().sum(-1), rtol=1e-5, atol=1e-5)


def test_non_flat_view_and_residual():
    qkv, t, w, b = _inputs(1, 8, 2, 9, 12, torch.float32, "nchw", seed=11, bias=True)
    view = qkv[:, :, 1:8, 2:11]                               # H and W strides not flattenable
    r = torch.randn(1, 8, 7, 9, device=DEVICE)
    got = M.transposed_attention(view, t, 2, w, b, residual=r, backend="triton")
    ref = M.transposed_attention_reference(view, t, 2, w, b, residual=r)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_width_one_with_any_last_stride(layout):
    """A (B, 3C, H, 1) qkv whose stride(3) is not the pixel step (PyTorch ignores size-1 dims for
    contiguity, so no copy is made): the pixels are stepped by stride(2)."""
    qkv, t, w, b = _inputs(2, 8, 2, 1, 13, torch.float32, layout, seed=5)
    qkv = qkv.transpose(2, 3)
    assert qkv.shape == (2, 24, 13, 1) and qkv.stride(3) != qkv.stride(2)
    got = M.transposed_attention(qkv, t, 2, w, b, backend="triton")
    ref = M.transposed_attention_reference(qkv, t, 2, w, b)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)


def test_deterministic_and_input_untouched():
    qkv, t, w, _ = _inputs(2, 16, 2, 17, 9, torch.float16, "channels_last", seed=12)
    before = qkv.clone()
    a = M.transposed_attention(qkv, t, 2, w, backend="triton")
    b = M.transposed_attention(qkv, t, 2, w, backend="triton")
    assert torch.equal(a, b) and torch.equal(qkv, before)


def test_float64_forced_triton_raises():
    qkv, t, _, _ = _inputs(1, 4, 1, 3, 3, torch.float32, "nchw", seed=13)
    with pytest.raises(DTypeError, match="qkv: the Triton kernel takes float16, bfloat16 or float32"):
        M.transposed_attention(qkv.double(), t, 1, backend="triton")


def test_autograd_matches_reference():
    qkv, t, w, _ = _inputs(1, 8, 2, 5, 6, torch.float32, "nchw", seed=14)
    grads = []
    for backend in ("triton", "reference"):
        a = qkv.clone().requires_grad_(True)
        tt = t.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        M.transposed_attention(a, tt, 2, ww, backend=backend).square().sum().backward()
        grads.append((a.grad, tt.grad, ww.grad))
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_bfloat16_on_gpu():
    """DESIGN.md's low-precision rule: against the float64 maths, the fused bfloat16 error is at
    most twice that of the official formulation run in bfloat16 eagerly."""
    import torch.nn.functional as F

    from ..ops.test_mdta import _eager
    qkv, t, w, _ = _inputs(2, 48, 1, 40, 33, torch.bfloat16, "channels_last", seed=15)
    got = M.transposed_attention(qkv, t, 1, w, backend="triton")
    want = M.transposed_attention_reference(qkv.double(), t.double(), 1, w.double())
    eager_err = (F.conv2d(_eager(qkv, t.to(qkv.dtype), 1), w).double() - want).abs().max()
    assert (got.double() - want).abs().max() <= 2 * eager_err + 1e-6


@pytest.mark.cuda
def test_opcheck_and_compile():
    from fastdenoise.triton import mdta as tm

    qkv, t, w, _ = _inputs(2, 16, 2, 12, 10, torch.float16, "nchw", seed=16)
    torch.library.opcheck(tm.GRAM_OP, (qkv, 2))
    fn = torch.compile(lambda x: M.transposed_attention(x, t, 2, w), fullgraph=True)
    torch.testing.assert_close(fn(qkv), M.transposed_attention(qkv, t, 2, w), rtol=2e-3, atol=2e-3)
