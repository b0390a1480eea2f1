"""fastdenoise.nn.GDFN (Restormer's gated-dconv feed-forward, fused, in row bands) against the
plain FeedForward of fastdenoise.models.restormer: the same state-dict keys both ways,
from_module sharing the submodules, outputs equal for many band heights (1, 2, 3, heights that
do not divide H, one band), both memory formats, odd hidden widths, with and without bias,
the automatic band height, backward, and structure errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdenoise import errors
from fastdenoise import nn as fnn
from fastdenoise.models.restormer import FeedForward
from fastdenoise.nn import gdfn as G


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 4 and p.shape[-1] == 1 else 0.5))
    return m.eval()


def _x(shape, layout, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("dim, factor", [(8, 2.66), (12, 2.66), (6, 1.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_same_keys_both_ways(dim, factor, bias):
    ref = _randomise(FeedForward(dim, factor, bias), 1)
    fused = fnn.GDFN(dim, factor, bias)
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict(), strict=True)
    back = FeedForward(dim, factor, bias)
    back.load_state_dict(fused.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    assert fused.dwconv.in_channels == 2 * int(dim * factor)


def test_from_module_shares_submodules():
    ref = FeedForward(8, 2.66, True)
    twin = fnn.GDFN.from_module(ref)
    assert twin.project_in is ref.project_in and twin.dwconv is ref.dwconv and twin.project_out is ref.project_out
    assert [id(p) for p in twin.parameters()] == [id(p) for p in ref.parameters()]
    assert list(twin._modules) == list(ref._modules)
    assert list(twin.state_dict()) == list(ref.state_dict())
    with torch.no_grad():
        ref.dwconv.weight.add_(1.0)                       # a change to one is a change to the other
    assert torch.equal(twin.dwconv.weight, ref.dwconv.weight)
    assert fnn.GDFN.from_module(ref.train()).training and not fnn.GDFN.from_module(ref.eval()).training


@pytest.mark.parametrize("dim, bias", [(8, True), (12, False), (8, False)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 4, 10, 11, None, 100])
@pytest.mark.parametrize("fuse_input", [False, True])
def test_bands_equal_the_plain_module(dim, bias, layout, chunk_rows, fuse_input):
    ref = _randomise(FeedForward(dim, 2.66, bias), 2)
    fused = fnn.GDFN.from_module(ref, chunk_rows=chunk_rows, fuse_input=fuse_input)
    assert fused.fuse_input is fuse_input
    x = _x((2, dim, 11, 7), layout, 3)
    with torch.no_grad():
        want = ref(x)
        got = fused(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, rows", [((1, 8, 1, 1), 1), ((1, 8, 1, 9), 1), ((3, 8, 2, 5), 1), ((1, 8, 13, 1), 4),
                                         ((1, 8, 17, 3), 16)])
def test_edge_shapes(shape, rows):
    ref = _randomise(FeedForward(8, 2.66, True), 4)
    fused = fnn.GDFN.from_module(ref, chunk_rows=rows)
    x = _x(shape, "nchw", 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fused_input_stage_calls_the_op_per_band(monkeypatch):
    """With fuse_input the bands go through ops.pointwise_dwconv (gate=True) on x's rows with
    their halo, and the automatic band height budgets the hidden (not 2 hidden) channels."""
    ref = _randomise(FeedForward(8, 2.66, True), 7)
    calls = []
    real = G.pointwise_dwconv

    def spy(x, *args, **kw):
        calls.append((x.shape[2], kw.get("gate")))
        return real(x, *args, **kw)

    monkeypatch.setattr(G, "pointwise_dwconv", spy)
    x = _x((1, 8, 10, 6), "nchw", 8)
    with torch.no_grad():
        torch.testing.assert_close(fnn.GDFN.from_module(ref, chunk_rows=4, fuse_input=True)(x), ref(x),
                                   rtol=1e-5, atol=1e-5)
    assert calls == [(5, True), (6, True), (3, True)]          # rows [0,5), [3,9), [7,10)
    with torch.no_grad():
        fnn.GDFN.from_module(ref, chunk_rows=4)(x)
    assert len(calls) == 3                                      # fuse_input off: not called
    big = torch.empty(2, 8, 1000, 700)
    hidden = ref.project_out.in_channels
    assert G.chunk_rows_for(big, hidden) > G.chunk_rows_for(big, 2 * hidden)


def test_fused_input_stands_down_under_autocast():
    ref = _randomise(FeedForward(8, 2.66, False), 9)
    x = _x((1, 8, 6, 5), "nchw", 10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(x)
        got = fnn.GDFN.from_module(ref, fuse_input=True)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(got, fnn.GDFN.from_module(ref, fuse_input=False)(x))


def test_built_module_and_float64_exact_to_rounding():
    ref = _randomise(FeedForward(12, 2.66, True), 6).double()
    fused = fnn.GDFN(12, 2.66, True, chunk_rows=3).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 12, 10, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-12, atol=1e-12)


def test_automatic_band_height():
    x = torch.empty(1, 48, 1080, 1920, device="meta", dtype=torch.float16)
    rows = G.chunk_rows_for(x, 254)
    # the band's 254-channel tensor, halo included, fits in the input's bytes
    assert (rows + 2) * 254 * 1920 * 2 <= x.numel() * 2 < (rows + 3) * 254 * 1920 * 2
    assert 1 < rows < 1080
    small = torch.empty(1, 48, 64, 64)
    assert G.chunk_rows_for(small, 254) == 64                       # small images: one band
    wide = torch.empty(1, 48, 4, 10**6, device="meta")
    assert G.chunk_rows_for(wide, 254) == 4                          # never more than H
    flat = torch.empty(1, 48, 40, 10**6, device="meta")
    assert G.chunk_rows_for(flat, 254) == G.MIN_CHUNK_ROWS         # at least MIN_CHUNK_ROWS


def test_backward_through_the_bands():
    ref = _randomise(FeedForward(8, 2.66, True), 7).double()
    fused = fnn.GDFN.from_module(ref, chunk_rows=3)
    x = torch.randn(1, 8, 7, 5, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(fused(x).square().sum(), (x,))
    (gw,) = torch.autograd.grad(ref(x).square().sum(), (x,))
    torch.testing.assert_close(gx, gw, rtol=1e-10, atol=1e-10)
    g_fused = torch.autograd.grad(fused(x).sum(), list(fused.parameters()))
    g_ref = torch.autograd.grad(ref(x).sum(), list(ref.parameters()))
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _feedforward_with(**swap):
    m = FeedForward(8, 2.66, True)
    for name, mod in swap.items():
        setattr(m, name, mod)
    return m


@pytest.mark.parametrize("m, words", [
    (_feedforward_with(project_in=nn.Linear(8, 42)), r"m.project_in: expected an nn.Conv2d"),
    (_feedforward_with(project_in=nn.Conv2d(8, 42, 3, padding=1)),
     r"m.project_in: expected nn.Conv2d\(8, 42, kernel_size=1"),
    (_feedforward_with(project_in=nn.Conv2d(8, 41, 1)), r"m.project_in: expected an even number"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 3, padding=1)),
     r"m.dwconv: expected nn.Conv2d\(42, 42, kernel_size=3.*groups=42"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 3, padding=0, groups=42)), r"m.dwconv: expected .*padding=1"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 3, padding=1, stride=2, groups=42)), r"m.dwconv: expected"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 3, padding=2, dilation=2, groups=42)), r"m.dwconv: expected"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 3, padding=1, groups=42, padding_mode="reflect")),
     r"m.dwconv: expected"),
    (_feedforward_with(dwconv=nn.Conv2d(42, 42, 5, padding=2, groups=42)), r"m.dwconv: expected"),
    (_feedforward_with(project_out=nn.Conv2d(42, 8, 1)), r"m.project_out: expected nn.Conv2d\(21, 8, kernel_size=1"),
    (_feedforward_with(project_out=nn.Conv2d(21, 9, 1)), r"m.project_out: expected nn.Conv2d\(21, 8"),
    (nn.Sequential(nn.Conv2d(8, 8, 1)), r"m.project_in: expected an nn.Conv2d"),
])
def test_from_module_rejects_other_structures(m, words):
    with pytest.raises(ValueError, match=words):
        fnn.GDFN.from_module(m)


def test_bad_input():
    m = fnn.GDFN(8, 2.66, False)
    with pytest.raises(errors.ShapeError, match=r"x: expected 4 dims"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(errors.ShapeError, match=r"x: expected 8 channels \(the channel count of GDFN\), got C=7"):
        m(torch.randn(1, 7, 5, 5))
    m.chunk_rows = 0
    with pytest.raises(ValueError, match=r"chunk_rows: expected a positive int or None, got 0"):
        m(torch.randn(1, 8, 5, 5))
