"""fastdenoise.nn Haar modules against plain-PyTorch modules written the way the official code
writes them (InvDN's conv-based HaarDownsampling, MWCNN's slicing dwt_init / iwt_init)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdenoise._checks import memory_format_of
from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.nn import DWT, IWT, HaarDownsampling


# --------------------------------------------------------------------------------------------
# Plain PyTorch versions, structured as the official modules (CPU-friendly)
# --------------------------------------------------------------------------------------------

class OfficialHaarDownsampling(nn.Module):
    """InvDN's module: a frozen (4C, 1, 2, 2) filter bank applied as a grouped stride-2 conv."""

    def __init__(self, channel_in):
        super().__init__()
        self.channel_in = channel_in
        w = torch.ones(4, 1, 2, 2)
        for k, cells in ((1, [(0, 1), (1, 1)]), (2, [(1, 0), (1, 1)]), (3, [(1, 0), (0, 1)])):
            for r, c in cells:
                w[k, 0, r, c] = -1
        self.haar_weights = nn.Parameter(torch.cat([w] * channel_in, 0))
        self.haar_weights.requires_grad = False

    def forward(self, x, rev=False):
        n, c, h, w = x.shape
        self.elements = c * h * w
        if not rev:
            self.last_jac = self.elements / 4 * np.log(1 / 16.)
            y = F.conv2d(x, self.haar_weights, bias=None, stride=2, groups=self.channel_in) / 4.0
            y = y.reshape(n, self.channel_in, 4, h // 2, w // 2).transpose(1, 2)
            return y.reshape(n, 4 * self.channel_in, h // 2, w // 2)
        self.last_jac = self.elements / 4 * np.log(16.)
        y = x.reshape(n, 4, self.channel_in, h, w).transpose(1, 2).reshape(n, 4 * self.channel_in, h, w)
        return F.conv_transpose2d(y, self.haar_weights, bias=None, stride=2, groups=self.channel_in)

    def jacobian(self, x, rev=False):
        return self.last_jac


def official_dwt(x):
    top, bottom = x[:, :, 0::2, :] / 2, x[:, :, 1::2, :] / 2
    p1, p2 = top[:, :, :, 0::2], bottom[:, :, :, 0::2]
    p3, p4 = top[:, :, :, 1::2], bottom[:, :, :, 1::2]
    return torch.cat((p1 + p2 + p3 + p4, -p1 - p2 + p3 + p4, -p1 + p2 - p3 + p4, p1 - p2 - p3 + p4), 1)


def official_iwt(x):
    n, c4, h, w = x.shape
    c = c4 // 4
    q1, q2, q3, q4 = (x[:, k * c:(k + 1) * c] / 2 for k in range(4))
    out = torch.zeros(n, c, 2 * h, 2 * w, dtype=torch.float32, device=x.device)  # the official: float32
    out[:, :, 0::2, 0::2] = q1 - q2 - q3 + q4
    out[:, :, 1::2, 0::2] = q1 - q2 + q3 - q4
    out[:, :, 0::2, 1::2] = q1 + q2 - q3 - q4
    out[:, :, 1::2, 1::2] = q1 + q2 + q3 + q4
    return out


class OfficialDWT(nn.Module):
    def __init__(self):
        super().__init__()
        self.requires_grad = False

    def forward(self, x):
        return official_dwt(x)


class OfficialIWT(OfficialDWT):
    def forward(self, x):
        return official_iwt(x)


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


FORMATS = [torch.contiguous_format, torch.channels_last]


# --------------------------------------------------------------------------------------------
# HaarDownsampling
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3, 5])
def test_haar_downsampling_state_dict_both_ways(c):
    ours, off = HaarDownsampling(c), OfficialHaarDownsampling(c)
    assert list(ours.state_dict()) == list(off.state_dict()) == ["haar_weights"]
    assert ours.haar_weights.shape == (4 * c, 1, 2, 2)
    assert not ours.haar_weights.requires_grad
    assert torch.equal(ours.haar_weights, off.haar_weights)
    ours.load_state_dict(off.state_dict(), strict=True)
    off.load_state_dict(ours.state_dict(), strict=True)
    assert [n for n, _ in ours.named_parameters()] == ["haar_weights"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(2, 3, 10, 14), (3, 5, 2, 6), (2, 1, 34, 8)])
def test_haar_downsampling_matches_official_float32(shape, fmt):
    c = shape[1]
    ours, off = HaarDownsampling(c), OfficialHaarDownsampling(c)
    x = torch.randn(shape).contiguous(memory_format=fmt)
    fmt = memory_format_of(x)     # a one-channel tensor is both: kept as NCHW
    x_before = x.clone()
    y, y_ref = ours(x), off(x)
    assert y.shape == y_ref.shape == (shape[0], 4 * c, shape[2] // 2, shape[3] // 2)
    assert _rel_err(y, y_ref) <= 1e-5
    assert y.is_contiguous(memory_format=fmt)
    assert (ours.elements, ours.last_jac) == (off.elements, off.last_jac)
    assert ours.jacobian(y) == off.jacobian(y_ref)

    z, z_ref = ours(y, rev=True), off(y_ref, rev=True)
    assert _rel_err(z, z_ref) <= 1e-5
    assert _rel_err(z, x) <= 1e-5                    # invertible: round trip
    assert (ours.elements, ours.last_jac) == (off.elements, off.last_jac)
    assert ours.jacobian(z, rev=True) == off.jacobian(z_ref, rev=True)
    assert torch.equal(x, x_before)


def test_haar_downsampling_jacobian_values():
    m = HaarDownsampling(3)
    m(torch.randn(2, 3, 8, 6))
    assert m.elements == 3 * 8 * 6
    assert m.last_jac == pytest.approx(3 * 8 * 6 / 4 * math.log(1 / 16))
    m(torch.randn(2, 12, 4, 3), rev=True)
    assert m.elements == 12 * 4 * 3
    assert m.last_jac == pytest.approx(12 * 4 * 3 / 4 * math.log(16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_haar_downsampling_float16_within_twice_official_error(fmt):
    c = 3
    off = OfficialHaarDownsampling(c)
    x = torch.randn(2, c, 12, 18).contiguous(memory_format=fmt)
    exact = off.double()(x.double())
    off_h = OfficialHaarDownsampling(c).half()
    ours_h = HaarDownsampling(c).half()
    y_h = ours_h(x.half())
    assert y_h.dtype == torch.float16 and y_h.is_contiguous(memory_format=fmt)
    err_ours = (y_h.double() - exact).abs().max().item()
    err_off = (off_h(x.half()).double() - exact).abs().max().item()
    assert err_ours <= 2 * err_off
    # rev too
    y = exact.float()
    exact_rev = off.double()(y.double(), rev=True)
    err_ours = (ours_h(y.half(), rev=True).double() - exact_rev).abs().max().item()
    err_off = (off_h(y.half(), rev=True).double() - exact_rev).abs().max().item()
    assert err_ours <= 2 * err_off


def test_haar_downsampling_backward_matches_official():
    ours, off = HaarDownsampling(3), OfficialHaarDownsampling(3)
    x1 = torch.randn(2, 3, 6, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(2, 12, 3, 4)
    (ours(x1) * g).sum().backward()
    (off(x2) * g).sum().backward()
    assert _rel_err(x1.grad, x2.grad) <= 1e-5


def test_haar_downsampling_from_module_shares_parameter():
    off = OfficialHaarDownsampling(3)
    off.eval()
    ours = HaarDownsampling.from_module(off)
    assert ours.haar_weights is off.haar_weights
    assert ours.channel_in == 3 and not ours.training
    x = torch.randn(2, 3, 6, 10)
    assert _rel_err(ours(x), off(x)) <= 1e-5
    assert {id(p) for p in ours.parameters()} == {id(p) for p in off.parameters()}


def test_haar_downsampling_from_module_rejects_other_weights():
    off = OfficialHaarDownsampling(2)
    with torch.no_grad():
        off.haar_weights[5, 0, 1, 1] = 0.5
    with pytest.raises(ValueError, match="standard Haar"):
        HaarDownsampling.from_module(off)
    with pytest.raises(ValueError, match="haar_weights"):
        HaarDownsampling.from_module(nn.Conv2d(3, 3, 1))
    bad = OfficialHaarDownsampling(2)
    bad.haar_weights = nn.Parameter(torch.ones(8, 1, 3, 3), requires_grad=False)
    with pytest.raises(ValueError, match="shape"):
        HaarDownsampling.from_module(bad)


def test_haar_downsampling_bad_input():
    m = HaarDownsampling(3)
    with pytest.raises(ShapeError, match=r"x: expected 3 channels.*got C=4"):
        m(torch.randn(2, 4, 8, 8))
    with pytest.raises(ShapeError, match=r"x: expected 12 channels.*got C=3"):
        m(torch.randn(2, 3, 4, 4), rev=True)
    with pytest.raises(ShapeError, match="even H and W"):
        m(torch.randn(2, 3, 7, 8))
    with pytest.raises(ShapeError, match="4 dims"):
        m(torch.randn(3, 8, 8))
    with pytest.raises(DTypeError):
        m(torch.randint(0, 5, (1, 3, 4, 4)))


# --------------------------------------------------------------------------------------------
# MWCNN DWT / IWT
# --------------------------------------------------------------------------------------------

def test_dwt_iwt_have_no_state_and_flag():
    for m in (DWT(), IWT()):
        assert m.requires_grad is False
        assert len(m.state_dict()) == 0 and not list(m.parameters())
    DWT().load_state_dict(OfficialDWT().state_dict(), strict=True)
    OfficialIWT().load_state_dict(IWT().state_dict(), strict=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(2, 3, 10, 14), (3, 1, 2, 34), (2, 7, 6, 4)])
def test_dwt_iwt_match_official_float32(shape, fmt):
    x = torch.randn(shape).contiguous(memory_format=fmt)
    fmt = memory_format_of(x)     # a one-channel tensor is both: kept as NCHW
    x_before = x.clone()
    y, y_ref = DWT()(x), OfficialDWT()(x)
    assert y.shape == y_ref.shape and _rel_err(y, y_ref) <= 1e-5
    assert y.is_contiguous(memory_format=fmt)
    z, z_ref = IWT()(y), OfficialIWT()(y)
    assert z.shape == z_ref.shape == x.shape and _rel_err(z, z_ref) <= 1e-5
    assert z.is_contiguous(memory_format=fmt)
    assert _rel_err(z, x) <= 1e-5
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dwt_iwt_float16_keep_dtype_within_twice_official_error(fmt):
    x = torch.randn(2, 3, 10, 6).contiguous(memory_format=fmt)
    exact = official_dwt(x.double())
    y_h = DWT()(x.half())
    assert y_h.dtype == torch.float16 and y_h.is_contiguous(memory_format=fmt)
    err_ours = (y_h.double() - exact).abs().max().item()
    err_off = (official_dwt(x.half()).double() - exact).abs().max().item()
    assert err_ours <= 2 * err_off

    yy = torch.randn(2, 12, 5, 3).contiguous(memory_format=fmt)
    exact_i = official_iwt(yy.double())
    z_h = IWT()(yy.half())
    assert z_h.dtype == torch.float16 and z_h.is_contiguous(memory_format=fmt)   # official: float32
    err_ours = (z_h.double() - exact_i).abs().max().item()
    err_off = (official_iwt(yy.half()).double() - exact_i).abs().max().item()
    assert err_ours <= 2 * err_off


def test_iwt_keeps_float64():
    y = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    z = IWT()(y)
    assert z.dtype == torch.float64
    assert torch.allclose(z, official_iwt(y.float()).double(), rtol=1e-5, atol=1e-6)


def test_dwt_iwt_from_module():
    d = DWT.from_module(OfficialDWT().eval())
    i = IWT.from_module(OfficialIWT())
    assert isinstance(d, DWT) and isinstance(i, IWT) and not d.training and i.training
    x = torch.randn(2, 3, 8, 6)
    assert _rel_err(i(d(x)), x) <= 1e-5
    with pytest.raises(ValueError, match="without parameters"):
        DWT.from_module(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError):
        IWT.from_module(lambda t: t)


def test_dwt_iwt_bad_input():
    with pytest.raises(ShapeError, match="even H and W"):
        DWT()(torch.randn(1, 2, 5, 6))
    with pytest.raises(ShapeError, match=r"x: expected a channel count divisible by 4"):
        IWT()(torch.randn(1, 6, 3, 3))
    with pytest.raises(ShapeError, match="4 dims"):
        IWT()(torch.randn(8, 3, 3))
    with pytest.raises(DTypeError):
        DWT()(torch.ones(1, 1, 4, 4, dtype=torch.int32))
