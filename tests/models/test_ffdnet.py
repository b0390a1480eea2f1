"""FFDNet against a plain-PyTorch FFDNet structured as cszn/KAIR writes it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import FFDNet, load_official
from tests.models._kair import kair_layers


# --------------------------------------------------------------------------------------------
# KAIR-style reference (own code, KAIR's structure and keys)
# --------------------------------------------------------------------------------------------

def kair_unshuffle(x, r):
    """KAIR's basicblock.pixel_unshuffle: view as (B, C, H/r, r, W/r, r), move the two r axes
    after C."""
    b, c, h, w = x.shape
    v = x.contiguous().view(b, c, h // r, r, w // r, r)
    return v.permute(0, 1, 3, 5, 2, 4).contiguous().view(b, c * r * r, h // r, w // r)


class KairPixelUnShuffle(nn.Module):
    def __init__(self, upscale_factor):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x):
        return kair_unshuffle(x, self.upscale_factor)


class KairFFDNet(nn.Module):
    def __init__(self, in_nc=1, out_nc=1, nc=64, nb=15, act_mode="R"):
        super().__init__()
        sf = 2
        self.m_down = KairPixelUnShuffle(sf)
        layers = kair_layers(in_nc * sf * sf + 1, nc, "C" + act_mode[-1])
        for _ in range(nb - 2):
            layers += kair_layers(nc, nc, "C" + act_mode)
        layers += kair_layers(nc, out_nc * sf * sf, "C")
        self.model = nn.Sequential(*layers)
        self.m_up = nn.PixelShuffle(sf)

    def forward(self, x, sigma):
        h, w = x.shape[-2:]
        pb, pr = int(math.ceil(h / 2) * 2 - h), int(math.ceil(w / 2) * 2 - w)
        x = nn.ReplicationPad2d((0, pr, 0, pb))(x)
        x = self.m_down(x)
        m = sigma.repeat(1, 1, x.shape[-2], x.shape[-1])
        x = self.model(torch.cat((x, m), 1))
        return self.m_up(x)[..., :h, :w]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


CONFIGS = [dict(in_nc=1, out_nc=1, nc=8, nb=4, act_mode="R"),
           dict(in_nc=3, out_nc=3, nc=8, nb=3, act_mode="BR"),
           dict(in_nc=3, out_nc=3, nc=6, nb=4, act_mode="L")]


def test_kair_pixel_unshuffle_is_torch_pixel_unshuffle():
    x = torch.randn(2, 3, 8, 6)
    assert torch.equal(kair_unshuffle(x, 2), F.pixel_unshuffle(x, 2))
    assert torch.equal(F.pixel_shuffle(kair_unshuffle(x, 2), 2), x)


@pytest.mark.parametrize("cfg", CONFIGS + [dict()], ids=lambda c: str(c) or "defaults")
def test_state_dict_keys_and_shapes_match_kair(cfg):
    ours, ref = FFDNet(**cfg), KairFFDNet(**cfg)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_default_shapes():
    sd = FFDNet().state_dict()
    assert sd["model.0.weight"].shape == (64, 5, 3, 3)          # 4 * in_nc + 1
    assert sd["model.28.weight"].shape == (4, 64, 3, 3)         # 15 convs, 4 * out_nc out
    assert len([k for k, v in sd.items() if v.dim() == 4]) == 15


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("hw", [(7, 13), (8, 6), (9, 10), (1, 5)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_outputs_match_kair(cfg, hw, fmt):
    ref = KairFFDNet(**cfg)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ours = FFDNet(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.rand(3, cfg["in_nc"], *hw).contiguous(memory_format=fmt)
    sigma = torch.rand(3, 1, 1, 1) * 0.2
    x_before, sigma_before = x.clone(), sigma.clone()
    with torch.no_grad():
        y, y_ref = ours(x, sigma), ref(x, sigma)
    assert y.shape == (3, cfg["out_nc"], *hw)
    assert rel_err(y, y_ref) <= 1e-5
    assert torch.equal(x, x_before) and torch.equal(sigma, sigma_before)


def test_sigma_forms():
    ours = FFDNet(nc=4, nb=3).eval()
    x = torch.rand(2, 1, 6, 7)
    s = 25 / 255
    with torch.no_grad():
        full = ours(x, torch.full((2, 1, 1, 1), s))
        assert torch.equal(ours(x, s), full)
        assert torch.equal(ours(x, torch.full((1, 1, 1, 1), s)), full)
    with pytest.raises(ShapeError, match="sigma"):
        ours(x, torch.full((3, 1, 1, 1), s))
    with pytest.raises(ShapeError, match="sigma"):
        ours(x, torch.full((2, 1, 2, 1), s))
    with pytest.raises(ShapeError, match="sigma: expected 4 dims"):
        ours(x, torch.full((2,), s))
    with pytest.raises(DTypeError, match="sigma"):
        ours(x, torch.full((2, 1, 1, 1), s, dtype=torch.float64))


def test_load_official_infers_ffdnet(tmp_path):
    ref = KairFFDNet(in_nc=3, out_nc=3, nc=8, nb=5, act_mode="R")
    torch.save({"params": ref.state_dict()}, tmp_path / "ffdnet.pth")
    model = load_official(tmp_path / "ffdnet.pth")
    assert isinstance(model, FFDNet) and not model.training
    assert model.in_nc == 3 and model.out_nc == 3
    x, sigma = torch.rand(2, 3, 9, 7), torch.full((2, 1, 1, 1), 0.1)
    with torch.no_grad():
        assert rel_err(model(x, sigma), ref(x, sigma)) <= 1e-5


def test_bad_input():
    m = FFDNet(nc=4, nb=3)
    s = torch.full((1, 1, 1, 1), 0.1)
    with pytest.raises(ShapeError, match=r"x: expected 1 channels .*got C=3"):
        m(torch.randn(1, 3, 8, 8), s)
    with pytest.raises(ShapeError, match="4 dims"):
        m(torch.randn(1, 8, 8), s)
    with pytest.raises(DTypeError):
        m(torch.randn(1, 1, 8, 8, dtype=torch.float16), s)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match=f"sigma: expected a finite non-negative noise level, got {bad}"):
            m(torch.randn(1, 1, 8, 8), bad)
    with pytest.raises(TypeError, match="sigma: expected a number or a \\(B, 1, 1, 1\\) tensor, got bool"):
        m(torch.randn(1, 1, 8, 8), True)
    with pytest.raises(ValueError, match="act_mode"):
        FFDNet(act_mode="X")
