"""fastdenoise.ops.transposed_attention (Restormer's MDTA after its q, k, v convolutions): the
plain PyTorch reference against the official formulation (our plain
``fastdenoise.models.restormer.Attention``, written from the official maths) in float64, the
fused path's pieces (normalised Gram softmax, project_out folded into a C x C matrix, v read
in place, residual in the epilogue) run in PyTorch on the CPU, dtypes, memory formats, batches
and input checks. The Triton Gram kernel: tests/triton/test_mdta_triton.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models.restormer import Attention
from fastdenoise.ops import mdta as M
from fastdenoise.ops import transposed_attention, transposed_attention_reference


def _attention(dim, heads, bias, seed):
    torch.manual_seed(seed)
    m = Attention(dim, heads, bias).double().eval()
    with torch.no_grad():
        m.temperature.copy_(torch.rand(heads, 1, 1, dtype=torch.float64) * 3 + 0.2)
        for p in m.parameters():
            if p is not m.temperature:
                p.mul_(1.5)
    return m


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("dim, heads, bias", [(8, 1, False), (12, 3, True), (16, 4, False), (48, 1, False)])
@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (13, 4)])
def test_reference_is_the_official_attention(dim, heads, bias, hw):
    m = _attention(dim, heads, bias, seed=dim + heads)
    x = torch.randn(2, dim, *hw, dtype=torch.float64)
    with torch.no_grad():
        want = m(x)
        qkv = m.qkv_dwconv(m.qkv(x))
        got = transposed_attention_reference(qkv, m.temperature, heads, m.project_out.weight,
                                             m.project_out.bias)
        plain = transposed_attention(qkv, m.temperature, heads, m.project_out.weight, m.project_out.bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain, want, rtol=1e-12, atol=1e-12)


def _fused_in_torch(qkv, temperature, heads, w, b, residual=None):
    """The fused path with its Gram pass written in PyTorch (what the Triton kernel computes)."""
    bsz, c3, h, wd = qkv.shape
    c, d = c3 // 3, c3 // 3 // heads
    q, k = (t.float().reshape(bsz, heads, d, h * wd) for t in qkv.chunk(3, dim=1)[:2])
    attn = M.attention_matrix(q @ k.transpose(-2, -1), q.square().sum(-1), k.square().sum(-1), temperature)
    return M.apply_attention(M.project_attention(attn, None if w is None else w.reshape(c, c)), qkv, b, c, residual)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("heads, d, bias, project", [(1, 8, False, True), (2, 5, True, True), (3, 4, False, False)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_formulation_matches_reference(layout, heads, d, bias, project, with_residual):
    c = heads * d
    g = torch.Generator().manual_seed(heads * 10 + d)
    qkv = _layout(torch.randn(2, 3 * c, 9, 11, generator=g), layout)
    t = torch.rand(heads, 1, 1, generator=g) + 0.5
    w = torch.randn(c, c, 1, 1, generator=g) / c ** 0.5 if project else None
    b = torch.randn(c, generator=g) if bias and project else None
    r = _layout(torch.randn(2, c, 9, 11, generator=g), layout) if with_residual else None
    got = _fused_in_torch(qkv, t, heads, w, b, r)
    want = transposed_attention_reference(qkv, t, heads, w, b, residual=r)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_project_attention_is_w_times_blockdiag():
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(2, 3, 4, 4, generator=g)
    w = torch.randn(12, 12, generator=g)
    for b in range(2):
        bd = torch.block_diag(*attn[b])
        torch.testing.assert_close(M.project_attention(attn, w)[b], w @ bd)
        torch.testing.assert_close(M.project_attention(attn, None)[b], bd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_reference_dtypes_and_layouts(dtype, layout):
    g = torch.Generator().manual_seed(3)
    qkv = _layout(torch.randn(3, 24, 5, 7, generator=g), layout).to(dtype)
    t = torch.rand(2, 1, 1, generator=g) + 0.5
    w = torch.randn(8, 8, 1, 1, generator=g).to(dtype)
    before = qkv.clone()
    out = transposed_attention(qkv, t, 2, w)
    assert out.dtype == dtype and out.shape == (3, 8, 5, 7)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert torch.equal(qkv, before)
    want = transposed_attention_reference(qkv.double(), t.double(), 2, w.double())
    eager_err = (F.conv2d(_eager(qkv, t.to(dtype), 2), w) .double() - want).abs().max()
    assert (out.double() - want).abs().max() <= 2 * eager_err + 1e-6


def _eager(qkv, t, heads):
    """The official formulation run in qkv's dtype (the baseline error of low precision)."""
    b, c3, h, w = qkv.shape
    q, k, v = (x.reshape(b, heads, c3 // 3 // heads, h * w) for x in qkv.chunk(3, dim=1))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return ((q @ k.transpose(-2, -1) * t).softmax(-1) @ v).reshape(b, c3 // 3, h, w)


def test_batch_items_are_independent():
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(3, 18, 6, 6, generator=g)
    t = torch.rand(2, 1, 1, generator=g)
    whole = transposed_attention(qkv, t, 2)
    for i in range(3):
        torch.testing.assert_close(whole[i:i + 1], transposed_attention(qkv[i:i + 1], t, 2), rtol=0, atol=0)


def test_residual_promotes_like_eager():
    qkv = torch.randn(1, 12, 4, 4, dtype=torch.float16)
    r = torch.randn(1, 4, 4, 4)
    out = transposed_attention(qkv, torch.ones(2, 1, 1), 2, residual=r)
    assert out.dtype == torch.float32
    want = transposed_attention_reference(qkv, torch.ones(2, 1, 1), 2).float() + r
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)


def test_backward_through_reference():
    qkv = torch.randn(1, 12, 5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 1, 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: transposed_attention(a, b, 2, c), (qkv, t, w))


def test_bad_input():
    qkv, t = torch.randn(1, 12, 4, 4), torch.ones(2, 1, 1)
    with pytest.raises(ShapeError, match=r"qkv: expected 4 dims"):
        transposed_attention(qkv[0], t, 2)
    with pytest.raises(ShapeError, match=r"qkv: expected 3 \* C channels with C a multiple of num_heads=3"):
        transposed_attention(qkv, torch.ones(3, 1, 1), 3)
    with pytest.raises(ShapeError, match=r"temperature: expected shape \(2, 1, 1\) or \(2,\), got \[3, 1, 1\]"):
        transposed_attention(qkv, torch.ones(3, 1, 1), 2)
    for shape in [(1, 2, 1), (1, 1, 2), (2, 1), (1, 2)]:      # two values, not one per head
        with pytest.raises(ShapeError, match=rf"temperature: expected shape \(2, 1, 1\) or \(2,\), "
                                             rf"got \[{', '.join(map(str, shape))}\]"):
            transposed_attention(qkv, torch.ones(shape), 2)
    with pytest.raises(ValueError, match="num_heads: expected a positive int, got 0"):
        transposed_attention(qkv, t, 0)
    with pytest.raises(ShapeError, match=r"weight: expected project_out's weight of shape \(4, 4\)"):
        transposed_attention(qkv, t, 2, torch.randn(4, 3))
    with pytest.raises(ValueError, match="bias: given without weight"):
        transposed_attention(qkv, t, 2, None, torch.randn(4))
    with pytest.raises(ShapeError, match=r"residual: expected shape \[1, 4, 4, 4\]"):
        transposed_attention(qkv, t, 2, residual=torch.randn(1, 12, 4, 4))
    with pytest.raises(DTypeError, match="qkv: expected dtype in"):
        transposed_attention(qkv.to(torch.int32), t, 2)
    with pytest.raises(TypeError, match="temperature: expected a torch.Tensor, got float"):
        transposed_attention(qkv, 1.0, 2)


def test_head_dim_above_the_triton_kernels_limit(monkeypatch):
    """d > TRITON_MAX_HEAD_DIM: backend='triton' is refused before any kernel; the default
    dispatch, where it would pick Triton (CUDA tensors), runs the reference instead."""
    from fastdenoise.ops import mdta as mdta_ops
    d = mdta_ops.TRITON_MAX_HEAD_DIM + 2
    g = torch.Generator().manual_seed(4)
    qkv, t = torch.randn(1, 3 * 2 * d, 3, 2, generator=g), torch.rand(2, 1, 1, generator=g) + 0.5
    # as on a CUDA tensor: the dispatch picks Triton (the kernel itself must not be reached)
    monkeypatch.setattr(mdta_ops._dispatch, "resolve", lambda *a, **k: "triton")
    monkeypatch.setattr(mdta_ops, "_triton", lambda: (_ for _ in ()).throw(AssertionError("Triton was called")))
    with pytest.raises(ShapeError, match=rf"^qkv: backend='triton' takes at most 128 channels per head, "
                                         rf"got C / num_heads = {2 * d} / 2 = {d}$"):
        transposed_attention(qkv, t, 2, backend="triton")
    got = transposed_attention(qkv, t, 2)
    assert torch.equal(got, mdta_ops.transposed_attention_reference(qkv, t, 2))
