"""fastdenoise.nn NAFNet twins (LayerNorm2d, SimpleGate, NAFBlock, BaselineBlock): the same keys
as the plain blocks of fastdenoise.models.nafnet, from_module sharing parameters, outputs equal
to the plain blocks (CPU: the fused ops' references), both memory formats, local-pool fallback,
and from_module on module trees written the way the official code writes them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdenoise import nn as fnn
from fastdenoise.models import nafnet as plain


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for name, p in m.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.add_(1.0)
    return m.eval()


@pytest.mark.parametrize("kind", ["naf", "baseline"])
@pytest.mark.parametrize("c, dw, ffn", [(8, 2, 2), (6, 1, 2), (5, 2, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_block_equals_plain(kind, c, dw, ffn, layout):
    if kind == "naf" and (c * dw) % 2:
        pytest.skip("NAFBlock needs an even expanded width")
    ref = _randomise((plain.NAFBlock if kind == "naf" else plain.BaselineBlock)(c, dw, ffn), 1)
    twin = (fnn.NAFBlock if kind == "naf" else fnn.BaselineBlock).from_module(ref)
    built = (fnn.NAFBlock if kind == "naf" else fnn.BaselineBlock)(c, dw, ffn).eval()
    built.load_state_dict(ref.state_dict())                       # the same keys and shapes
    assert set(built.state_dict()) == set(ref.state_dict())
    x = torch.randn(3, c, 11, 7)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = ref(x)
        for m in (twin, built):
            got = m(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_from_module_shares_parameters():
    ref = plain.NAFBlock(8)
    twin = fnn.NAFBlock.from_module(ref)
    assert twin.conv1 is ref.conv1 and twin.sca is ref.sca and twin.beta is ref.beta
    assert twin.norm1.weight is ref.norm1.weight and twin.norm2.bias is ref.norm2.bias
    ids = {id(p) for p in ref.parameters()}
    assert {id(p) for p in twin.parameters()} == ids
    ref_b = plain.BaselineBlock(6)
    twin_b = fnn.BaselineBlock.from_module(ref_b)
    assert twin_b.se is ref_b.se and twin_b.gelu is ref_b.gelu
    ln = plain.LayerNorm2d(5)
    assert fnn.LayerNorm2d.from_module(ln).weight is ln.weight


class _OfficialStyleNAFBlock(nn.Module):
    """A NAFBlock written as the official code writes it (its own class, LayerNorm2d and
    SimpleGate classes defined elsewhere), to check from_module goes by structure, not type."""

    class LayerNorm2d(nn.Module):
        def __init__(self, channels, eps=1e-6):
            super().__init__()
            self.register_parameter("weight", nn.Parameter(torch.ones(channels)))
            self.register_parameter("bias", nn.Parameter(torch.zeros(channels)))
            self.eps = eps

        def forward(self, x):
            mu = x.mean(1, keepdim=True)
            var = (x - mu).pow(2).mean(1, keepdim=True)
            return self.weight.view(1, -1, 1, 1) * ((x - mu) / (var + self.eps).sqrt()) + self.bias.view(1, -1, 1, 1)

    class SimpleGate(nn.Module):
        def forward(self, x):
            x1, x2 = x.chunk(2, dim=1)
            return x1 * x2

    def __init__(self, c):
        super().__init__()
        dw = c * 2
        self.conv1 = nn.Conv2d(c, dw, 1, padding=0, stride=1, groups=1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, stride=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(dw // 2, c, 1, padding=0, stride=1, groups=1, bias=True)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1, padding=0, stride=1,
                                                                    groups=1, bias=True))
        self.sg = self.SimpleGate()
        self.conv4 = nn.Conv2d(c, 2 * c, 1, padding=0, stride=1, groups=1, bias=True)
        self.conv5 = nn.Conv2d(c, c, 1, padding=0, stride=1, groups=1, bias=True)
        self.norm1 = self.LayerNorm2d(c)
        self.norm2 = self.LayerNorm2d(c)
        self.dropout1 = nn.Identity()
        self.dropout2 = nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)

    def forward(self, inp):
        x = self.norm1(inp)
        x = self.conv2(self.conv1(x))
        x = self.sg(x)
        x = x * self.sca(x)
        x = self.conv3(x)
        x = self.dropout1(x)
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        x = self.dropout2(x)
        return y + x * self.gamma


def test_from_module_on_an_official_style_block():
    ref = _randomise(_OfficialStyleNAFBlock(8), 3)
    twin = fnn.NAFBlock.from_module(ref)
    x = torch.randn(2, 8, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), ref(x), rtol=1e-5, atol=1e-5)


def test_local_pool_falls_back_to_the_module():
    ref = _randomise(plain.NAFBlock(8), 4)
    ref.sca[0] = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)   # not a global pool
    twin = fnn.NAFBlock.from_module(ref)
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), ref(x), rtol=1e-5, atol=1e-5)


def test_from_module_bad_input():
    with pytest.raises(ValueError, match="expected a NAFBlock with attributes"):
        fnn.NAFBlock.from_module(nn.Conv2d(2, 2, 1))
    bad = plain.BaselineBlock(4)
    bad.gelu = nn.GELU(approximate="tanh")
    with pytest.raises(ValueError, match="m.gelu: expected nn.GELU\\(\\) \\(exact\\)"):
        fnn.BaselineBlock.from_module(bad)
    with pytest.raises(ValueError, match="parameter-free SimpleGate"):
        fnn.SimpleGate.from_module(nn.Conv2d(2, 2, 1))


def test_models_build_fused_blocks_by_default():
    from fastdenoise.models import Baseline, NAFNet
    net = NAFNet(img_channel=3, width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1])
    assert isinstance(net.middle_blks[0], fnn.NAFBlock)
    plain_net = NAFNet(img_channel=3, width=4, enc_blk_nums=[1], middle_blk_num=1, dec_blk_nums=[1], fused=False)
    assert isinstance(plain_net.middle_blks[0], plain.NAFBlock)
    _randomise(plain_net, 8)
    net.load_state_dict(plain_net.state_dict())
    net.eval()
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain_net(x), rtol=1e-5, atol=1e-5)
    assert isinstance(Baseline(width=4, fused=True).middle_blks[0], fnn.BaselineBlock)
