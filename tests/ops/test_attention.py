"""fastdenoise.ops.channel_attention / simplified_channel_attention: the plain PyTorch references
against module trees written the way the official code writes them (MPRNet's CALayer and CAB
tail, RIDNet's CALayer, NAFNet Baseline's SE after GELU, NAFNet's SimpleGate + SCA), long
reductions, dtypes, memory formats, bad input. Triton kernels: tests/triton."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdenoise import errors
from fastdenoise.ops import channel_attention, simplified_channel_attention


def _se(c, r, bias):
    """pool -> 1x1 (C -> C/r) -> ReLU -> 1x1 (C/r -> C) -> sigmoid, as nn modules."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1, bias=bias), nn.ReLU(inplace=True),
                         nn.Conv2d(c // r, c, 1, bias=bias), nn.Sigmoid()).double()


@pytest.mark.parametrize("c, r, bias", [(80, 4, False), (64, 16, True), (33, 2, True), (7, 7, False)])
def test_channel_attention_matches_the_module_form(c, r, bias):
    se = _se(c, r, bias)
    x = torch.randn(2, c, 9, 13, dtype=torch.float64)
    conv1, conv2 = se[1], se[3]
    args = (conv1.weight, conv1.bias, conv2.weight, conv2.bias)
    with torch.no_grad():
        torch.testing.assert_close(channel_attention(x, *args), x * se(x), rtol=1e-12, atol=1e-12)
        # MPRNet's CAB tail: CA(res) + x
        res = torch.randn_like(x)
        torch.testing.assert_close(channel_attention(res, *args, residual=x), res * se(res) + x,
                                   rtol=1e-12, atol=1e-12)
        # Baseline: gelu first, then the SE scales the activated tensor
        g = nn.functional.gelu(x)
        torch.testing.assert_close(channel_attention(x, *args, act="gelu"), g * se(g), rtol=1e-12, atol=1e-12)
        rl = torch.relu(x)
        torch.testing.assert_close(channel_attention(x, *args, act="relu"), rl * se(rl), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [16, 31])
def test_simplified_channel_attention_matches_nafnet(c):
    sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1, bias=True)).double()
    x = torch.randn(2, 2 * c, 6, 11, dtype=torch.float64)
    with torch.no_grad():
        g = x[:, :c] * x[:, c:]                                   # NAFNet's SimpleGate
        torch.testing.assert_close(simplified_channel_attention(x, sca[1].weight, sca[1].bias, gate=True),
                                   g * sca(g), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(simplified_channel_attention(g, sca[1].weight, sca[1].bias), g * sca(g),
                                   rtol=1e-12, atol=1e-12)


def test_pooled_mean_is_accumulated_in_float32():
    """A float16 image of 4 megapixels: summing in float16 would saturate (max 65504)."""
    c = 4
    x = (torch.rand(1, c, 2048, 2048) * 0.5 + 0.75).half()
    w1, w2 = torch.eye(c), torch.eye(c)
    out = channel_attention(x, w1, None, w2, None)
    exact = x.double() * torch.sigmoid(torch.relu(x.double().mean(dim=(2, 3))))[:, :, None, None]
    assert (out.double() - exact).abs().max() < 2e-3                         # one float16 rounding
    assert out.dtype == torch.float16


def test_memory_format_kept_and_input_unchanged():
    c = 12
    x = torch.randn(2, c, 5, 7).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    w1, w2 = torch.randn(3, c, 1, 1), torch.randn(c, 3, 1, 1)
    out = channel_attention(x, w1, None, w2, None, act="gelu")
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, before)
    torch.testing.assert_close(out, channel_attention(x.contiguous(), w1, None, w2, None, act="gelu"),
                               rtol=1e-5, atol=1e-6)


def test_differentiable():
    c = 6
    x = torch.randn(1, c, 3, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, c, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(c, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: channel_attention(a[0], a[1], None, a[2], None, act="gelu"),
                                    (x, w1, w2))


@pytest.mark.parametrize("kwargs, err, words", [
    (dict(x=torch.randn(6, 4, 4)), errors.ShapeError, "x: expected 4 dims"),
    (dict(w1=torch.randn(2, 5)), errors.ShapeError, "w1: expected a 1x1 convolution weight of shape \\(R, 6\\)"),
    (dict(w2=torch.randn(6, 3)), errors.ShapeError, "w2: expected a 1x1 convolution weight of shape \\(6, 2\\)"),
    (dict(w1=torch.randn(2, 6, 3, 3)), errors.ShapeError, "w1: expected a 1x1"),
    (dict(b1=torch.randn(3)), errors.ShapeError, "b1: expected shape \\(2,\\)"),
    (dict(b2=[0.0] * 6), TypeError, "b2: expected a torch.Tensor or None"),
    (dict(residual=torch.randn(1, 6, 4, 5)), errors.ShapeError, "residual: expected the shape of x"),
    (dict(act="silu"), ValueError, "act: expected one of"),
    (dict(w1=torch.randn(2, 6).int()), errors.DTypeError, "w1: expected a floating dtype"),
])
def test_channel_attention_bad_input(kwargs, err, words):
    args = dict(x=torch.randn(1, 6, 4, 4), w1=torch.randn(2, 6), b1=None, w2=torch.randn(6, 2), b2=None)
    residual = kwargs.pop("residual", None)
    act = kwargs.pop("act", None)
    args.update(kwargs)
    with pytest.raises(err, match=words):
        channel_attention(**args, residual=residual, act=act)


def test_simplified_bad_input():
    with pytest.raises(TypeError, match=r"^gate: expected a bool, got str 'yes'$"):
        simplified_channel_attention(torch.randn(1, 6, 4, 4), torch.randn(3, 3), None, gate="yes")
    with pytest.raises(errors.ShapeError, match="divisible by 2"):
        simplified_channel_attention(torch.randn(1, 5, 4, 4), torch.randn(2, 2), None, gate=True)
    with pytest.raises(errors.ShapeError, match="w: expected a 1x1 convolution weight of shape \\(3, 3\\)"):
        simplified_channel_attention(torch.randn(1, 6, 4, 4), torch.randn(6, 6), None, gate=True)
