r"""Restormer (fastdenoise.models.restormer) against the official swz30/Restormer.

Golden data (``tests/models/data/restormer_golden.pt``) holds only tensors produced by running the
official code at commit df766d5 (``basicsr/models/archs/restormer_arch.py``). It was generated
outside the repository from a bare mirror of the official repository, then with our own script
``tests/models/data/make_restormer_golden.py`` (which holds no official code: it copies that file
into a temporary folder, with a stand-in ``einops.rearrange`` of our own when einops is not
installed, imports it and runs it):

    mkdir -p /tmp/restormer_checkout/basicsr/models/archs
    git --git-dir=<Restormer mirror> show HEAD:basicsr/models/archs/restormer_arch.py \
        > /tmp/restormer_checkout/basicsr/models/archs/restormer_arch.py
    python tests/models/data/make_restormer_golden.py --restormer /tmp/restormer_checkout --shapes

The script: ``torch.manual_seed(0)``; builds the official ``Restormer(**TINY)`` (below: dim 4,
one block per level and one refinement block, heads [1, 2, 4, 8], WithBias, no bias); draws,
from a generator seeded 1, in ``named_parameters()`` order: LayerNorm weights ``1 + 0.2 *
randn``, LayerNorm biases ``0.1 * randn``, temperatures ``exp(0.5 * randn)`` (the rest keeps the
default init); builds the ``BiasFree`` twin loading that state dict without the norm biases, and
the ``dual_pixel_task`` twin (``inp_channels=6``) loading it with its own ``patch_embed.proj.weight``
(``0.2 * randn``) and ``skip_conv.weight`` (``0.5 * randn``), from a generator seeded 2 (stored as
``dual_extra``); inputs ``x`` (2, 3, 21, 19), ``x16`` (1, 3, 16, 16), ``x_dual`` (2, 6, 21, 19)
from generators seeded 3, 4, 5: ``0.7 * ramp * rand(B, C, 1, 1) + 0.3 * rand(B, C, H, W)`` with
``ramp = linspace(0, 1, H)[:, None] * linspace(1, 0, W)[None, :]``; and, in eval mode under
``torch.no_grad()`` with one thread, the outputs run as the official ``Denoising/test_*.py`` run
them (reflect-pad at the bottom / right to multiples of 8, crop back): ``out``, ``out_biasfree``,
``out_dual``, and ``out16`` (no padding).

``OFFICIAL_SHAPES``: for each configuration, (number of parameters, number of keys, sha256 of the
lines ``key:shape`` of the official model's ``state_dict()`` in its order), printed by the
script's ``--shapes`` (the official class built on the meta device).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastdenoise import nn as fnn
from fastdenoise.errors import CheckpointError, DTypeError, ShapeError
from fastdenoise.nn import TransformerBlock as FusedBlock
from fastdenoise.models import ARCHS, NAFNet, Restormer, build, infer_arch, load_official
from fastdenoise.models.restormer import (Attention, BiasFree_LayerNorm, Downsample, FeedForward, LayerNorm,
                                          OverlapPatchEmbed, TransformerBlock, Upsample, WithBias_LayerNorm,
                                          infer_ffn_expansion_factor)

DATA = Path(__file__).parent / "data" / "restormer_golden.pt"

TINY = dict(inp_channels=3, out_channels=3, dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
            heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
            dual_pixel_task=False)
TINY_BIASFREE = dict(TINY, LayerNorm_type="BiasFree")
TINY_DUAL = dict(TINY, inp_channels=6, dual_pixel_task=True)

FULL = dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
            ffn_expansion_factor=2.66, bias=False)
PUBLISHED = {
    "denoising-color": dict(FULL, inp_channels=3, out_channels=3, LayerNorm_type="BiasFree", dual_pixel_task=False),
    "denoising-gray": dict(FULL, inp_channels=1, out_channels=1, LayerNorm_type="BiasFree", dual_pixel_task=False),
    "deraining-deblurring": dict(FULL, inp_channels=3, out_channels=3, LayerNorm_type="WithBias",
                                 dual_pixel_task=False),
    "dual-pixel-defocus": dict(FULL, inp_channels=6, out_channels=3, LayerNorm_type="WithBias",
                               dual_pixel_task=True),
    "tiny-bias-dual": dict(inp_channels=6, out_channels=3, dim=4, num_blocks=[1, 2, 0, 1], num_refinement_blocks=2,
                           heads=[1, 2, 4, 2], ffn_expansion_factor=1.5, bias=True, LayerNorm_type="BiasFree",
                           dual_pixel_task=True),
}
OFFICIAL_SHAPES = {
    "denoising-color": (26111668, 406, "be152d7353f93e28ef4ff78b81e0db8de969d6d69a6f3d385b7276d3290c8bb4"),
    "denoising-gray": (26109076, 406, "bf941bf95f65982e324ced99c5b43f1da36b979f02ad213d827aeee0d1f7ad4d"),
    "deraining-deblurring": (26126644, 494, "b8adf5bf3c36871dc06b3109a6f263014c378b442a035d7f46a0bb7b7aa39279"),
    "dual-pixel-defocus": (26132548, 495, "c2ac8e9863da3afe09e9ca7c02a0fe368bfda7a587e03d574cac996e375321c6"),
    "tiny-bias-dual": (45945, 150, "542139c953f2c91bda90adfb392f608452ca0d784aa4cb3bc836cda679705019"),
}


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA, map_location="cpu", weights_only=True)


def _golden_state(golden, case):
    sd = golden["state_dict"]
    if case == "biasfree":
        return {k: v for k, v in sd.items() if not k.endswith(".body.bias")}
    if case == "dual":
        return dict(sd, **golden["dual_extra"])
    return sd


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial norms and temperatures (ones and zeros at init), other weights randn-scaled."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("temperature"):
                p.copy_(torch.exp(0.5 * torch.randn(p.shape, generator=g)))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _image(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    ramp = torch.linspace(0, 1, h).view(1, 1, h, 1) * torch.linspace(1, 0, w).view(1, 1, 1, w)
    x = 0.7 * ramp * torch.rand(b, c, 1, 1, generator=g) + 0.3 * torch.rand(*shape, generator=g)
    return x.to(dtype)


def _run(model, x):
    with torch.no_grad():
        return model(x)


def _digest(sd):
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    return sum(v.numel() for v in sd.values()), len(sd), hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Against the official code
# --------------------------------------------------------------------------------------------

GOLDEN_CASES = {
    "withbias": (TINY, "withbias", "x", "out"),
    "withbias_unpadded": (TINY, "withbias", "x16", "out16"),
    "biasfree": (TINY_BIASFREE, "biasfree", "x", "out_biasfree"),
    "dual": (TINY_DUAL, "dual", "x_dual", "out_dual"),
}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_matches_official_outputs(golden, case, fused):
    cfg, sd_case, x_key, out_key = GOLDEN_CASES[case]
    sd = _golden_state(golden, sd_case)
    model = Restormer(**cfg, fused=fused)
    if sd_case == "dual":                                # the dual keys were stored apart: no order
        assert set(model.state_dict()) == set(sd)
    else:                                                # the official keys, in the official order
        assert list(model.state_dict()) == list(sd)
    model.load_state_dict(sd, strict=True)
    model.eval()
    out = _run(model, golden[x_key])
    assert out.shape == golden[out_key].shape and out.dtype == torch.float32
    torch.testing.assert_close(out, golden[out_key], rtol=1e-5, atol=1e-5)


def test_golden_data_is_not_trivial(golden):
    """The blocks, the norm variant and the skip path all change the output."""
    assert (golden["out"] - golden["x"]).abs().max() > 0.1
    assert (golden["out_biasfree"] - golden["out"]).abs().max() > 0.05
    assert golden["out_dual"].std() > 0.05
    assert golden["x"].shape[-2:] == (21, 19)               # not multiples of 8: the padding path runs


def test_same_seed_same_initialisation_as_official(golden):
    """Built in the official order: after torch.manual_seed(0) every tensor the generator did
    not randomise (norms, temperatures) equals the official initial value."""
    torch.manual_seed(0)
    ours = Restormer(**TINY).state_dict()
    for k, v in ours.items():
        if ".norm" not in k and not k.endswith("temperature"):
            assert torch.equal(v, golden["state_dict"][k]), k


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_configs_have_the_official_keys_and_shapes(name):
    cfg = PUBLISHED[name]
    with torch.device("meta"):
        sd = Restormer(**cfg).state_dict()
    assert _digest(sd) == OFFICIAL_SHAPES[name]
    assert infer_arch(sd) == ("restormer", cfg)


def test_defaults_are_the_official_ones():
    with torch.device("meta"):
        m = Restormer()
    got = {k: getattr(m, k) for k in TINY}
    assert got == dict(FULL, inp_channels=3, out_channels=3, LayerNorm_type="WithBias", dual_pixel_task=False)
    assert _digest(m.state_dict()) == OFFICIAL_SHAPES["deraining-deblurring"]
    assert m.fused and all(isinstance(b, FusedBlock) for b in m.modules() if "TransformerBlock" in type(b).__name__)
    assert not any(isinstance(b, (TransformerBlock, Attention, FeedForward)) for b in m.modules())


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_modules_and_biases(bias, fused):
    m = Restormer(**dict(TINY_DUAL, bias=bias, LayerNorm_type="BiasFree"), fused=fused)
    blk = m.encoder_level2[0]
    if fused:
        assert isinstance(blk, FusedBlock) and isinstance(blk.attn, fnn.MDTA) and isinstance(blk.ffn, fnn.GDFN)
    else:
        assert isinstance(blk, TransformerBlock) and isinstance(blk.attn, Attention)
        assert isinstance(blk.ffn, FeedForward)
    assert isinstance(blk.norm1.body, BiasFree_LayerNorm) and blk.norm1.body.eps == 1e-5
    assert blk.attn.temperature.shape == (2, 1, 1) and blk.attn.num_heads == 2
    assert blk.attn.qkv_dwconv.groups == 24 and blk.attn.qkv_dwconv.weight.shape == (24, 1, 3, 3)
    assert blk.ffn.project_in.weight.shape == (2 * int(8 * 2.66), 8, 1, 1)
    assert blk.ffn.dwconv.groups == 2 * int(8 * 2.66)
    assert isinstance(m.patch_embed, OverlapPatchEmbed) and m.patch_embed.proj.bias is None   # never a bias
    assert isinstance(m.down1_2, Downsample) and isinstance(m.down1_2.body[1], torch.nn.PixelUnshuffle)
    assert isinstance(m.up2_1, Upsample) and isinstance(m.up2_1.body[1], torch.nn.PixelShuffle)
    assert m.down1_2.body[0].bias is None and m.up4_3.body[0].bias is None
    for conv in (m.output, m.reduce_chan_level3, m.reduce_chan_level2, m.skip_conv, blk.attn.qkv,
                 blk.attn.project_out, blk.ffn.project_out):
        assert (conv.bias is not None) == bias
    # decoder level 1 and refinement run at 2 dim with heads[0]
    assert m.decoder_level1[0].attn.qkv.in_channels == 8 and m.refinement[0].attn.num_heads == 1
    assert isinstance(Restormer(**TINY).encoder_level1[0].norm2.body, WithBias_LayerNorm)
    assert not hasattr(Restormer(**TINY), "skip_conv")


def test_fresh_model_is_the_official_initial_state():
    m = Restormer(**TINY)
    blk = m.latent[0]
    assert torch.equal(blk.attn.temperature, torch.ones(8, 1, 1))
    assert torch.equal(blk.norm1.body.weight, torch.ones(32)) and not blk.norm1.body.bias.any()


# --------------------------------------------------------------------------------------------
# The maths, on our own
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layer_norm_plain_fused_and_definition(kind):
    ln = LayerNorm(6, kind, fused=False)
    ln_fused = LayerNorm(6, kind)
    with torch.no_grad():
        ln.body.weight.normal_()
        if kind == "WithBias":
            ln.body.bias.normal_()
    ln_fused.load_state_dict(ln.state_dict())
    ln, ln_fused = ln.double(), ln_fused.double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * 3 + 1
    w = ln.body.weight.view(1, -1, 1, 1)
    mu = x.mean(1, keepdim=True)
    sd = torch.sqrt(((x - mu) ** 2).mean(1, keepdim=True) + 1e-5)
    expected = (x - mu) / sd * w + ln.body.bias.view(1, -1, 1, 1) if kind == "WithBias" else x / sd * w
    torch.testing.assert_close(ln(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ln_fused(x), expected, rtol=1e-12, atol=1e-12)
    if kind == "WithBias":
        ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.body.weight, ln.body.bias, 1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(ln(x), ref, rtol=1e-12, atol=1e-12)
    xcl = x.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ln.float()(xcl), expected.float(), rtol=1e-5, atol=1e-5)
    assert ln_fused.float()(xcl).is_contiguous(memory_format=torch.channels_last)


def test_attention_matches_a_per_head_loop():
    torch.manual_seed(0)
    att = Attention(8, 2, bias=True).double()
    with torch.no_grad():
        att.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    q, k, v = att.qkv_dwconv(att.qkv(x)).chunk(3, dim=1)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        qh, kh, vh = (t[:, sl].flatten(2) for t in (q, k, v))           # (B, 4, HW)
        qh = qh / qh.norm(dim=-1, keepdim=True)
        kh = kh / kh.norm(dim=-1, keepdim=True)
        a = torch.softmax(qh @ kh.transpose(1, 2) * att.temperature[h], dim=-1)
        heads.append((a @ vh).view(2, 4, 5, 3))
    torch.testing.assert_close(att(x), att.project_out(torch.cat(heads, 1)), rtol=1e-12, atol=1e-12)


def test_feed_forward_gate_uses_exact_gelu():
    torch.manual_seed(0)
    ffn = FeedForward(6, 2.66, bias=False).double()
    assert ffn.project_out.in_channels == 15                  # int(6 * 2.66)
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    y = ffn.dwconv(ffn.project_in(x))
    a, b = y[:, :15], y[:, 15:]
    gelu = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    torch.testing.assert_close(ffn(x), ffn.project_out(gelu * b), rtol=1e-12, atol=1e-12)


def test_plain_and_fused_agree():
    plain = _randomise(Restormer(**TINY_BIASFREE, fused=False), 1)
    fused = Restormer(**TINY_BIASFREE)
    fused.load_state_dict(plain.state_dict())
    fused.eval()
    x = _image(2, 3, 13, 11, seed=2)
    torch.testing.assert_close(_run(fused, x), _run(plain, x), rtol=1e-5, atol=1e-5)
    x64 = x.double()
    torch.testing.assert_close(_run(fused.double(), x64), _run(plain.double(), x64), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    return _randomise(Restormer(**TINY), 4)


@pytest.mark.parametrize("hw,mode", [((21, 19), "reflect"), ((7, 9), "reflect"), ((16, 24), None),
                                     ((1, 1), "replicate"), ((3, 17), "replicate")])
def test_any_size_pads_and_crops(small, hw, mode):
    """Reflection padding at the bottom / right to multiples of 8, as the official test scripts
    (replication where a side is too short to reflect), cropped back."""
    h, w = hw
    x = _image(2, 3, h, w, seed=5)
    x_before = x.clone()
    out = _run(small, x)
    assert out.shape == x.shape and out.is_contiguous()
    assert torch.equal(x, x_before)
    with torch.no_grad():
        if mode is None:
            expected = small._run(x)
        else:
            expected = small._run(F.pad(x, (0, -w % 8, 0, -h % 8), mode=mode))[..., :h, :w]
    assert torch.equal(out, expected)
    assert (out - x).abs().max() > 1e-3                          # the network does something


def test_batch_channels_last_and_determinism(small):
    x = _image(3, 3, 19, 22, seed=6)
    out = _run(small, x)
    for i in range(3):
        torch.testing.assert_close(_run(small, x[i:i + 1]), out[i:i + 1], rtol=1e-5, atol=1e-6)
    assert torch.equal(_run(small, x), out)
    out_cl = _run(small, x.contiguous(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)


def test_denoise_clamps(small):
    x = _image(1, 3, 9, 10, seed=7)
    out = _run(small, x)
    with torch.no_grad():
        d = small.denoise(x)
    assert torch.equal(d, out.clamp(0, 1)) and d.min() >= 0 and d.max() <= 1


def test_dual_pixel_output_has_no_input_residual():
    torch.manual_seed(1)
    m = _randomise(Restormer(**TINY_DUAL), 2)
    x = _image(2, 6, 16, 8, seed=8)
    with torch.no_grad():
        emb = m.patch_embed(x)
        x1 = m.encoder_level1(emb)
        x2 = m.encoder_level2(m.down1_2(x1))
        x3 = m.encoder_level3(m.down2_3(x2))
        y = m.latent(m.down3_4(x3))
        y = m.decoder_level3(m.reduce_chan_level3(torch.cat([m.up4_3(y), x3], 1)))
        y = m.decoder_level2(m.reduce_chan_level2(torch.cat([m.up3_2(y), x2], 1)))
        y = m.refinement(m.decoder_level1(torch.cat([m.up2_1(y), x1], 1)))
        expected = m.output(y + m.skip_conv(emb))
    out = _run(m, x)
    assert out.shape == (2, 3, 16, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

LOAD_CASES = {
    "tiny": TINY,
    "gray_biasfree_bias": dict(TINY, inp_channels=1, out_channels=1, dim=6, heads=[1, 2, 2, 3],
                               ffn_expansion_factor=1.5, bias=True, LayerNorm_type="BiasFree"),
    "dual_deep": dict(TINY_DUAL, num_blocks=[2, 0, 1, 2], num_refinement_blocks=0, heads=[2, 2, 4, 4],
                      ffn_expansion_factor=3.0),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_official_round_trip(tmp_path, case):
    cfg = LOAD_CASES[case]
    src = _randomise(Restormer(**cfg), 9)
    path = tmp_path / "net.pth"
    torch.save({"params": src.state_dict()}, path)               # as the official checkpoints
    assert infer_arch(src.state_dict()) == ("restormer", cfg)
    for model in (load_official(path), load_official(path, arch="restormer"),
                  load_official({"params": src.state_dict()}, fused=False)):
        assert type(model) is Restormer and not model.training
        assert {k: getattr(model, k) for k in cfg} == cfg
        x = _image(2, cfg["inp_channels"], 13, 10, seed=10)
        torch.testing.assert_close(_run(model, x), _run(src, x), rtol=1e-5, atol=1e-6)
    assert load_official(path).fused and not load_official(path, fused=False).fused


def test_build_by_name_and_forced_arch_mismatch():
    assert "restormer" in ARCHS and isinstance(build("restormer", **TINY), Restormer)
    with pytest.raises(CheckpointError, match="missing keys .*patch_embed"):
        load_official(NAFNet(width=4, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict(), arch="restormer")
    sd = Restormer(**TINY).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_official(sd, dim=8)


@pytest.mark.parametrize("dim,factor", [(48, 2.66), (4, 2.66), (8, 2.0), (6, 1.5), (16, 4.0), (10, 2.5),
                                        (12, 1.0), (48, 2.5), (32, 3.3)])
def test_infer_ffn_expansion_factor(dim, factor):
    widths = [dim, 2 * dim, 4 * dim, 8 * dim, 2 * dim]
    pairs = [(w, int(w * factor)) for w in widths]
    f = infer_ffn_expansion_factor(pairs)
    assert all(int(w * f) == h for w, h in pairs)
    assert f == factor                              # the shortest decimal that fits; 2.66 first
    assert infer_ffn_expansion_factor([]) == 2.66
    with pytest.raises(CheckpointError, match="ffn_expansion_factor"):
        infer_ffn_expansion_factor([(8, 16), (16, 40)])


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input_and_arguments():
    model = Restormer(**TINY)
    with pytest.raises(ShapeError, match=r"^x: expected 4 dims"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ShapeError, match=r"^x: expected 3 channels \(Restormer inp_channels\)"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(DTypeError, match=r"^x: expected dtype float32"):
        model(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(DTypeError, match=r"^x: "):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"^x: expected a non-empty"):
        model(torch.rand(1, 3, 0, 8))
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor"):
        model([[0.5]])
    with pytest.raises(ValueError, match="heads"):
        Restormer(dim=4, heads=[1, 3, 4, 8])
    with pytest.raises(ValueError, match="dim"):
        Restormer(dim=5)
    with pytest.raises(ValueError, match="num_blocks"):
        Restormer(dim=4, num_blocks=[1, 1, 1])
