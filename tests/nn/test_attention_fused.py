"""fastdenoise.nn channel-attention twins (MPRNet's CALayer and CAB, RIDNet's CALayer): the same
keys as the plain blocks of fastdenoise.models, from_module sharing parameters (the shared PReLU
stays one object), outputs equal to the plain blocks (CPU: the fused op's reference), odd
channel counts, batch > 1, both memory formats, backward, and structure errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdenoise import nn as fnn
from fastdenoise.models import mprnet, ridnet


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    """Weights large enough that the attention is far from a constant 0.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.dim() == 4 and p.shape[-1] == 1 else 0.2))
    return m.eval()


def _x(b, c, h, w, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) + torch.rand(1, c, 1, 1, generator=g)   # non-zero channel means
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("c, reduction, bias", [(16, 4, False), (12, 4, True), (7, 2, True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mprnet_calayer_and_cab_equal_plain(c, reduction, bias, layout):
    act = nn.PReLU()
    ref_cab = _randomise(mprnet.CAB(c, 3, reduction, bias=bias, act=act), c)
    twin = fnn.CAB.from_module(ref_cab)
    built = fnn.CAB(c, 3, reduction, bias=bias, act=nn.PReLU()).eval()
    assert list(built.state_dict()) == list(ref_cab.state_dict())      # same keys, same order
    built.load_state_dict(ref_cab.state_dict())
    ca_twin = fnn.MPRNetCALayer.from_module(ref_cab.CA)
    ca_built = fnn.MPRNetCALayer(c, reduction, bias=bias).eval()
    ca_built.load_state_dict(ref_cab.CA.state_dict())
    x = _x(3, c, 9, 13, layout, seed=c)
    before = x.clone()
    with torch.no_grad():
        want_cab, want_ca = ref_cab(x), ref_cab.CA(x)
        for m in (twin, built):
            got = m(x)
            assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
            torch.testing.assert_close(got, want_cab, rtol=1e-5, atol=1e-5)
        for m in (ca_twin, ca_built):
            torch.testing.assert_close(m(x), want_ca, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before)


@pytest.mark.parametrize("c, reduction", [(32, 16), (48, 16), (9, 3)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_ridnet_calayer_equals_plain(c, reduction, layout):
    ref = _randomise(ridnet.CALayer(c, reduction), c)
    twin = fnn.RIDNetCALayer.from_module(ref)
    built = fnn.RIDNetCALayer(c, reduction).eval()
    assert list(built.state_dict()) == list(ref.state_dict())
    built.load_state_dict(ref.state_dict())
    x = _x(2, c, 7, 10, layout, seed=c + 1)
    with torch.no_grad():
        want = ref(x)
        for m in (twin, built):
            got = m(x)
            assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_from_module_shares_parameters_and_the_prelu():
    act = nn.PReLU()
    cabs = [mprnet.CAB(8, 3, 4, bias=False, act=act) for _ in range(3)]
    twins = [fnn.CAB.from_module(c) for c in cabs]
    for c, t in zip(cabs, twins):
        assert t.body is c.body and t.CA.conv_du is c.CA.conv_du and t.CA.avg_pool is c.CA.avg_pool
        assert {id(p) for p in t.parameters()} == {id(p) for p in c.parameters()}
    assert all(t.body[1] is act for t in twins)
    seq = nn.Sequential(*twins)
    assert sum(p is act.weight for p in seq.parameters()) == 1
    ca = ridnet.CALayer(32)
    t = fnn.RIDNetCALayer.from_module(ca)
    assert t.c1 is ca.c1 and t.c2 is ca.c2
    # a CAB whose CA is already the fused twin keeps it
    assert fnn.CAB.from_module(twins[0]).CA is twins[0].CA


def test_training_mode_and_backward():
    act = nn.PReLU()
    ref = _randomise(mprnet.CAB(6, 3, 2, bias=True, act=act), 1).train()
    twin = fnn.CAB.from_module(ref)
    assert twin.training
    x = _x(2, 6, 5, 6, "nchw", 3).requires_grad_(True)
    twin(x).square().sum().backward()
    g_twin = [p.grad.clone() for p in ref.parameters()]
    gx_twin = x.grad.clone()
    ref.zero_grad()
    x.grad = None
    ref(x).square().sum().backward()
    for a, p in zip(g_twin, ref.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_twin, x.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_mixed_dtypes(dtype):
    """Under autocast the body gives low precision while the CAB's input may be float32: the
    twin then adds in the promoted dtype, as the plain block does."""
    ref = _randomise(mprnet.CAB(8, 3, 4, bias=False, act=nn.PReLU()), 2)
    twin = fnn.CAB.from_module(ref)
    x = _x(2, 8, 9, 9, "nchw", 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        want, got = ref(x), twin(x)
        want_low, got_low = ref(x.to(dtype)), twin(x.to(dtype))
    assert got.dtype == want.dtype and got_low.dtype == want_low.dtype == dtype
    exact = ref.float()(x)
    err_fused = (got.float() - exact).abs().max()
    err_eager = (want.float() - exact).abs().max()
    assert err_fused <= 2 * err_eager + 1e-6
    err_fused = (got_low.float() - exact).abs().max()
    err_eager = (want_low.float() - exact).abs().max()
    assert err_fused <= 2 * err_eager + 1e-6


def test_from_module_bad_structure():
    ca = mprnet.CALayer(8, 4)
    ca.avg_pool = nn.AdaptiveAvgPool2d(2)
    with pytest.raises(ValueError, match=r"CALayer.avg_pool: expected nn.AdaptiveAvgPool2d\(1\)"):
        fnn.MPRNetCALayer.from_module(ca)
    ca = mprnet.CALayer(8, 4)
    ca.conv_du[3] = nn.Tanh()
    with pytest.raises(ValueError, match="CALayer.conv_du: expected nn.Sigmoid last, got Tanh"):
        fnn.MPRNetCALayer.from_module(ca)
    ca = mprnet.CALayer(8, 4)
    ca.conv_du[0] = nn.Conv2d(8, 2, 3, padding=1)
    with pytest.raises(ValueError, match=r"first 1x1 conv.*expected a 1x1 convolution"):
        fnn.MPRNetCALayer.from_module(ca)
    cab = mprnet.CAB(8, 3, 4, bias=False, act=nn.PReLU())
    cab.body = nn.Sequential(cab.body[0], cab.body[1])
    with pytest.raises(ValueError, match=r"CAB.body: expected Sequential\(Conv2d, activation, Conv2d\)"):
        fnn.CAB.from_module(cab)
    r = ridnet.CALayer(32, 16)
    r.c1.body[1] = nn.GELU()
    with pytest.raises(ValueError, match="expected nn.ReLU between the convolutions, got GELU"):
        fnn.RIDNetCALayer.from_module(r)
    with pytest.raises(ValueError, match="expected nn.AdaptiveAvgPool2d"):
        fnn.RIDNetCALayer.from_module(nn.Identity())


def test_models_build_fused_blocks_by_default():
    m = mprnet.MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1)
    kinds = {type(x) for x in m.modules()}
    assert fnn.CAB in kinds and mprnet.CAB not in kinds
    assert mprnet.CAB in {type(x) for x in mprnet.MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4,
                                                        num_cab=1, fused=False).modules()}
    r = ridnet.RIDNet(n_feats=16)
    assert {type(b.ca) for b in (r.b1, r.b2, r.b3, r.b4)} == {fnn.RIDNetCALayer}
    assert type(ridnet.RIDNet(n_feats=16, fused=False).b1.ca) is ridnet.CALayer
