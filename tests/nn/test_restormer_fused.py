"""fastdenoise.nn Restormer twins (MDTA, RestormerLayerNorm, TransformerBlock; GDFN has its own
file): the keys and order of the plain blocks of fastdenoise.models.restormer, from_module
sharing parameters, outputs equal to the plain blocks (CPU: the fused ops' references), both
memory formats, odd sizes, batch > 1, backward, structure errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdenoise import errors
from fastdenoise import nn as fnn
from fastdenoise.models import restormer as plain


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("temperature"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 + 0.3)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


def _x(b, c, h, w, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) + torch.rand(1, c, 1, 1, generator=g)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _close(got, want, tol=1e-5):
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * max(1.0, want.double().abs().max().item()), err


@pytest.mark.parametrize("dim, heads, bias", [(8, 1, False), (12, 3, True), (16, 2, False)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mdta_equals_plain(dim, heads, bias, layout):
    ref = _randomise(plain.Attention(dim, heads, bias), dim)
    twin = fnn.MDTA.from_module(ref)
    built = fnn.MDTA(dim, heads, bias).eval()
    assert list(built.state_dict()) == list(ref.state_dict())
    built.load_state_dict(ref.state_dict())
    x = _x(2, dim, 9, 7, layout, dim + heads)
    with torch.no_grad():
        want = ref(x)
        for m in (twin, built):
            got = m(x)
            assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
            _close(got, want)
    assert twin.qkv is ref.qkv and twin.temperature is ref.temperature and twin.num_heads == heads


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_layer_norm_equals_plain(kind, layout):
    ref = _randomise(plain.LayerNorm(10, kind, fused=False), 3)
    twin = fnn.RestormerLayerNorm.from_module(ref)
    built = fnn.RestormerLayerNorm(10, kind).eval()
    assert list(built.state_dict()) == list(ref.state_dict())
    built.load_state_dict(ref.state_dict())
    assert twin.bias_free == (kind == "BiasFree") and twin.body is ref.body
    x = _x(3, 10, 5, 11, layout, 4)
    with torch.no_grad():
        want = ref(x)
        for m in (twin, built):
            got = m(x)
            assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
            _close(got, want)


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("hw", [(1, 1), (13, 6)])
def test_transformer_block_equals_plain(kind, layout, hw):
    ref = _randomise(plain.TransformerBlock(8, 2, 2.66, False, kind, fused=False), 5)
    twin = fnn.TransformerBlock.from_module(ref)
    built = fnn.TransformerBlock(8, 2, 2.66, False, kind).eval()
    assert list(built.state_dict()) == list(ref.state_dict())
    built.load_state_dict(ref.state_dict())
    assert [id(p) for p in twin.parameters()] == [id(p) for p in ref.parameters()]
    x = _x(2, 8, *hw, layout, 6)
    before = x.clone()
    with torch.no_grad():
        want = ref(x)
        for m in (twin, built):
            _close(m(x), want)
    assert torch.equal(x, before)


def test_block_backward_matches_plain():
    ref = _randomise(plain.TransformerBlock(8, 2, 2.66, True, "WithBias", fused=False), 7).train()
    twin = fnn.TransformerBlock.from_module(ref)
    x = _x(1, 8, 6, 5, "nchw", 8)
    twin(x).square().sum().backward()
    fused_grads = [p.grad.clone() for p in ref.parameters()]
    ref.zero_grad()
    ref(x).square().sum().backward()
    for a, p in zip(fused_grads, ref.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)


def test_from_module_bad_structure():
    att = plain.Attention(8, 2, False)
    att.qkv_dwconv = nn.Conv2d(24, 24, 3, padding=1)
    with pytest.raises(ValueError, match=r"Attention.qkv_dwconv: expected Conv2d\(24, 24, kernel_size=3.*groups=24"):
        fnn.MDTA.from_module(att)
    att = plain.Attention(8, 2, False)
    att.temperature = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"Attention.temperature: expected a \(num_heads, 1, 1\) parameter"):
        fnn.MDTA.from_module(att)
    att = plain.Attention(8, 2, False)
    att.num_heads = 4
    with pytest.raises(ValueError, match="Attention.num_heads: expected 2"):
        fnn.MDTA.from_module(att)
    with pytest.raises(ValueError, match=r"LayerNorm.body: expected a norm with a \(C,\) `weight`"):
        fnn.RestormerLayerNorm.from_module(type("LayerNorm", (nn.Module,), {})())
    blk = plain.TransformerBlock(8, 2, 2.66, False, "WithBias")
    blk.ffn = plain.FeedForward(12, 2.66, False)
    with pytest.raises(ValueError, match="TransformerBlock: expected norm1, attn, norm2 and ffn of one width"):
        fnn.TransformerBlock.from_module(blk)
    del blk.ffn
    with pytest.raises(ValueError, match=r"expected submodules norm1, attn, norm2, ffn, got none for \['ffn'\]"):
        fnn.TransformerBlock.from_module(blk)


def test_model_builds_fused_blocks_by_default():
    m = plain.Restormer(dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    kinds = {type(x) for x in m.modules()}
    assert fnn.TransformerBlock in kinds and plain.TransformerBlock not in kinds
    assert fnn.MDTA in kinds and fnn.GDFN in kinds and fnn.RestormerLayerNorm in kinds


@pytest.mark.parametrize("dim, heads, bias", [(8, 1, False), (12, 3, True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_mdta_fused_input_equals_plain(dim, heads, bias, layout):
    ref = _randomise(plain.Attention(dim, heads, bias), dim + 1)
    twin = fnn.MDTA.from_module(ref, fuse_input=True)
    assert twin.fuse_input and not fnn.MDTA.from_module(ref).fuse_input
    assert "fuse_input=True" in repr(twin)
    x = _x(2, dim, 9, 7, layout, dim + 2)
    with torch.no_grad():
        got = twin(x)
        assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        _close(got, ref(x))


def test_set_fuse_input_and_the_model_switch():
    cfg = dict(dim=4, num_blocks=[1, 2, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
    torch.manual_seed(11)
    ref = plain.Restormer(**cfg, fused=False).eval()
    torch.manual_seed(11)
    model = plain.Restormer(**cfg, fuse_input=True).eval()
    flags = [m.fuse_input for m in model.modules() if isinstance(m, (fnn.MDTA, fnn.GDFN))]
    assert len(flags) == 2 * (1 + 2 + 1 + 1 + 1 + 2 + 1 + 1) and all(flags)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        _close(model(x), ref(x))
        assert fnn.set_fuse_input(model, False) == len(flags)
        _close(model(x), ref(x))
    assert not any(m.fuse_input for m in model.modules() if isinstance(m, (fnn.MDTA, fnn.GDFN)))
    assert fnn.set_fuse_input(nn.Sequential(nn.Conv2d(1, 1, 1))) == 0
    with pytest.raises(TypeError, match="enabled: expected a bool, got int"):
        fnn.set_fuse_input(model, 1)
    with pytest.raises(ValueError, match="fuse_input: True needs fused=True"):
        plain.Restormer(**cfg, fused=False, fuse_input=True)


def test_fused_input_keeps_the_official_dtype_error():
    """An input whose dtype differs from the weights' raises (a typed error where the official
    convolutions raise a RuntimeError), fuse_input or not (the fused op would otherwise round the
    weights silently)."""
    att = fnn.MDTA.from_module(plain.Attention(8, 1, False), fuse_input=True)
    ffn = fnn.GDFN.from_module(plain.FeedForward(8, 2.66, False), fuse_input=True)
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    for m in (att, ffn):
        with pytest.raises(errors.DTypeError, match=rf"x: expected dtype float32 \(the dtype of "
                           rf"{type(m).__name__}'s parameters\), got float64"):
            m(x)
