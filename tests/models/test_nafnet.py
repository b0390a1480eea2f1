r"""NAFNet, NAFNetLocal, Baseline and BaselineLocal (fastdenoise.models.nafnet) against the official
megvii-research/NAFNet.

Golden data (``tests/models/data/nafnet_golden.pt``) holds only tensors produced by running the
official code at commit 2b4af71 (``basicsr/models/archs/{NAFNet_arch,Baseline_arch,local_arch,
arch_util}.py``). It was generated outside the repository from a bare mirror of the official
repository, then with our own script ``tests/models/data/make_nafnet_golden.py`` (which holds
no official code: it copies those four files into a temporary ``basicsr`` package with a stub
``basicsr.utils.get_root_logger``, imports them and runs them):

    mkdir -p /tmp/nafnet_checkout/basicsr/models/archs
    for f in NAFNet_arch Baseline_arch local_arch arch_util; do
        git --git-dir=<NAFNet mirror> show HEAD:basicsr/models/archs/$f.py \
            > /tmp/nafnet_checkout/basicsr/models/archs/$f.py; done
    python tests/models/data/make_nafnet_golden.py --nafnet /tmp/nafnet_checkout --shapes

The script: ``torch.manual_seed(0)``; builds the official ``NAFNet(**NAF)`` and
``Baseline(**BASE)`` (configs below); draws, from a ``torch.Generator`` seeded 1 (NAFNet) and 2
(Baseline), in ``named_parameters()`` order: beta and gamma ``0.5 * randn``, LayerNorm weights
``1 + 0.2 * randn`` and biases ``0.1 * randn``, the attention (``sca.*`` / ``se.*``) conv
weights ``2 * randn`` (other tensors keep the default init; with beta = gamma = 0 every block
would be the identity); input ``x`` (2, 3, 30, 27) from a generator seeded 3: ``0.7 * ramp *
rand(2, 3, 1, 1) + 0.3 * rand(2, 3, 30, 27)`` with ``ramp = linspace(0, 1, 30)[:, None] *
linspace(1, 0, 27)[None, :]`` (so local means differ across the image); saves both state dicts
and, under ``torch.no_grad()`` in eval mode, the outputs of NAFNet, Baseline, and of
``NAFNetLocal`` (``fast_imp`` False and True) and ``BaselineLocal`` built with
``train_size=TRAIN_SIZE`` loading those state dicts strictly. With that train size every block's
window is smaller than its feature map on ``x`` (level 1 of the fast path also uses a rate that
does not divide the size), so the local pooling is active everywhere. (Regenerating gives the
same inputs and weights; the outputs may move by ~2e-7 with the number of CPU threads.)

``OFFICIAL_SHAPES``: for each published configuration, (number of parameters, number of keys,
sha256 of the lines ``key:shape`` of the official model's ``state_dict()`` in its order), printed
by the script's ``--shapes`` (the official class built on the meta device).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import (ARCHS, Baseline, BaselineLocal, NAFNet, NAFNetLocal, build, infer_arch,
                                load_official)
from fastdenoise.models.nafnet import BaselineBlock, LayerNorm2d, LocalAvgPool2d, NAFBlock, SimpleGate

DATA = Path(__file__).parent / "data" / "nafnet_golden.pt"

NAF = dict(img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
BASE = dict(NAF, dw_expand=1, ffn_expand=2)
TRAIN_SIZE = (1, 3, 10, 10)

SIDD = dict(enc_blk_nums=[2, 2, 4, 8], middle_blk_num=12, dec_blk_nums=[2, 2, 2, 2])
GOPRO = dict(enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
PUBLISHED = {
    "NAFNet-SIDD-width32": (NAFNet, dict(width=32, **SIDD)),
    "NAFNet-SIDD-width64": (NAFNet, dict(width=64, **SIDD)),
    "Baseline-SIDD-width32": (Baseline, dict(width=32, dw_expand=1, ffn_expand=2, **SIDD)),
    "Baseline-SIDD-width64": (Baseline, dict(width=64, dw_expand=2, ffn_expand=2, **SIDD)),
    "NAFNet-GoPro-width32": (NAFNetLocal, dict(width=32, **GOPRO)),
    "NAFNet-GoPro-width64": (NAFNetLocal, dict(width=64, **GOPRO)),
    "NAFNet-REDS-width64": (NAFNetLocal, dict(width=64, **GOPRO)),
    "Baseline-GoPro-width32": (BaselineLocal, dict(width=32, dw_expand=1, ffn_expand=2, **GOPRO)),
    "Baseline-GoPro-width64": (BaselineLocal, dict(width=64, dw_expand=2, ffn_expand=2, **GOPRO)),
}
OFFICIAL_SHAPES = {
    "NAFNet-SIDD-width32": (29159715, 664, "aaa915d5d49f0d6d05994f9d87f39f1e165fc961b981cccda01268f9d18bb225"),
    "NAFNet-SIDD-width64": (115982915, 664, "2f268e1155fc00e9bdc59d56f016978c871dbca612b02349757ccc2f58b4317d"),
    "Baseline-SIDD-width32": (29056227, 736, "1cd86df2bb685a3874865081ecec43a35ae28b04aee14ff9bb66da297ad2e305"),
    "Baseline-SIDD-width64": (194419779, 736, "fd24977f2e26e291c419657df324f3518218f93adafb68a73c66923fe77f6e7d"),
    "NAFNet-GoPro-width32": (17111907, 664, "809b5b54aeaebf6adb033c6e34009dc3c29fb1c613981f1ec507618977d16d64"),
    "NAFNet-GoPro-width64": (67888835, 664, "0d86cce292346e579d15e0ce86cc12e2d6fb0e8ad22023a7c285748e44cb6684"),
    "Baseline-GoPro-width32": (17023875, 736, "b904fc067ae9b0ab9fd0bc67b92caf01a31fe52280e8c653616398081618a19d"),
    "Baseline-GoPro-width64": (112036291, 736, "fdbbc8945166477ccb40fb17e3137c483a9a0f4938b8d146bbfd97e3b5ac36ef"),
}
OFFICIAL_SHAPES["NAFNet-REDS-width64"] = OFFICIAL_SHAPES["NAFNet-GoPro-width64"]


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA, map_location="cpu", weights_only=True)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights: beta / gamma are zero at init, which would make every block the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".sca." in name or ".se." in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def _image(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    ramp = torch.linspace(0, 1, h).view(1, 1, h, 1) * torch.linspace(1, 0, w).view(1, 1, 1, w)
    return 0.7 * ramp * torch.rand(b, c, 1, 1, generator=g) + 0.3 * torch.rand(*shape, generator=g)


def _run(model, x):
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------------------------
# Against the official code
# --------------------------------------------------------------------------------------------

GOLDEN_CASES = {
    "out_nafnet": (NAFNet, NAF, {}, "nafnet"),
    "out_baseline": (Baseline, BASE, {}, "baseline"),
    "out_nafnet_local": (NAFNetLocal, NAF, dict(train_size=TRAIN_SIZE), "nafnet"),
    "out_nafnet_local_fast": (NAFNetLocal, NAF, dict(train_size=TRAIN_SIZE, fast_imp=True), "nafnet"),
    "out_baseline_local": (BaselineLocal, BASE, dict(train_size=TRAIN_SIZE), "baseline"),
}


@pytest.mark.parametrize("key", list(GOLDEN_CASES))
def test_matches_official_outputs(golden, key):
    cls, cfg, extra, sd_name = GOLDEN_CASES[key]
    model = cls(**cfg, **extra)
    sd = golden[sd_name]
    assert list(model.state_dict()) == list(sd)         # the official keys, in the official order
    model.load_state_dict(sd, strict=True)
    model.eval()
    torch.testing.assert_close(_run(model, golden["x"]), golden[key], rtol=1e-5, atol=1e-5)


def test_golden_local_pooling_is_active(golden):
    """The golden input exercises the local windows: the TLC outputs differ from the global ones."""
    assert (golden["out_nafnet_local"] - golden["out_nafnet"]).abs().max() > 1e-3
    assert (golden["out_nafnet_local_fast"] - golden["out_nafnet_local"]).abs().max() > 1e-3
    assert (golden["out_baseline_local"] - golden["out_baseline"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_have_the_official_keys_and_shapes(name):
    cls, cfg = PUBLISHED[name]
    with torch.device("meta"):
        sd = cls(**cfg).state_dict()
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    found = (sum(v.numel() for v in sd.values()), len(sd), hashlib.sha256(text.encode()).hexdigest())
    assert found == OFFICIAL_SHAPES[name]
    arch, hp = infer_arch(sd)
    assert arch == ("baseline" if cls in (Baseline, BaselineLocal) else "nafnet")
    assert hp == dict(cfg, img_channel=3)


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

def _nafblock_shapes(prefix, c, dw=2, ffn=2):
    d, f = c * dw, c * ffn
    return {f"{prefix}.beta": (1, c, 1, 1), f"{prefix}.gamma": (1, c, 1, 1),
            f"{prefix}.conv1.weight": (d, c, 1, 1), f"{prefix}.conv1.bias": (d,),
            f"{prefix}.conv2.weight": (d, 1, 3, 3), f"{prefix}.conv2.bias": (d,),
            f"{prefix}.conv3.weight": (c, d // 2, 1, 1), f"{prefix}.conv3.bias": (c,),
            f"{prefix}.sca.1.weight": (d // 2, d // 2, 1, 1), f"{prefix}.sca.1.bias": (d // 2,),
            f"{prefix}.conv4.weight": (f, c, 1, 1), f"{prefix}.conv4.bias": (f,),
            f"{prefix}.conv5.weight": (c, f // 2, 1, 1), f"{prefix}.conv5.bias": (c,),
            f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,)}


def _baselineblock_shapes(prefix, c, dw=1, ffn=2):
    d, f = c * dw, c * ffn
    return {f"{prefix}.beta": (1, c, 1, 1), f"{prefix}.gamma": (1, c, 1, 1),
            f"{prefix}.conv1.weight": (d, c, 1, 1), f"{prefix}.conv1.bias": (d,),
            f"{prefix}.conv2.weight": (d, 1, 3, 3), f"{prefix}.conv2.bias": (d,),
            f"{prefix}.conv3.weight": (c, d, 1, 1), f"{prefix}.conv3.bias": (c,),
            f"{prefix}.se.1.weight": (d // 2, d, 1, 1), f"{prefix}.se.1.bias": (d // 2,),
            f"{prefix}.se.3.weight": (d, d // 2, 1, 1), f"{prefix}.se.3.bias": (d,),
            f"{prefix}.conv4.weight": (f, c, 1, 1), f"{prefix}.conv4.bias": (f,),
            f"{prefix}.conv5.weight": (c, f, 1, 1), f"{prefix}.conv5.bias": (c,),
            f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,)}


def _unet_shapes(block, w, img=1, **kw):
    """enc [1, 2], middle 1, dec [2, 1] at width w."""
    exp = {"intro.weight": (w, img, 3, 3), "intro.bias": (w,), "ending.weight": (img, w, 3, 3), "ending.bias": (img,),
           "downs.0.weight": (2 * w, w, 2, 2), "downs.0.bias": (2 * w,),
           "downs.1.weight": (4 * w, 2 * w, 2, 2), "downs.1.bias": (4 * w,),
           "ups.0.0.weight": (8 * w, 4 * w, 1, 1), "ups.1.0.weight": (4 * w, 2 * w, 1, 1)}
    for prefix, c in [("encoders.0.0", w), ("encoders.1.0", 2 * w), ("encoders.1.1", 2 * w),
                      ("middle_blks.0", 4 * w), ("decoders.0.0", 2 * w), ("decoders.0.1", 2 * w),
                      ("decoders.1.0", w)]:
        exp.update(block(prefix, c, **kw))
    return exp


@pytest.mark.parametrize("case", ["nafnet", "nafnet_local", "nafnet_expand", "baseline", "baseline_expand",
                                  "baseline_local"])
def test_state_dict_keys_and_shapes(case):
    cfg = dict(img_channel=1, width=4, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[2, 1])
    model, expected = {
        "nafnet": lambda: (NAFNet(**cfg), _unet_shapes(_nafblock_shapes, 4)),
        "nafnet_local": lambda: (NAFNetLocal(**cfg, train_size=(1, 1, 8, 8)), _unet_shapes(_nafblock_shapes, 4)),
        "nafnet_expand": lambda: (NAFNet(**cfg, dw_expand=3, ffn_expand=1),
                                  _unet_shapes(_nafblock_shapes, 4, dw=3, ffn=1)),
        "baseline": lambda: (Baseline(**cfg), _unet_shapes(_baselineblock_shapes, 4)),
        "baseline_expand": lambda: (Baseline(**cfg, dw_expand=2, ffn_expand=3),
                                    _unet_shapes(_baselineblock_shapes, 4, dw=2, ffn=3)),
        "baseline_local": lambda: (BaselineLocal(**cfg, train_size=(1, 1, 8, 8)), _unet_shapes(_baselineblock_shapes, 4)),
    }[case]()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    # fresh blocks: beta / gamma zero, norms the identity, as the official
    blk = model.encoders[0][0]
    assert not blk.beta.any() and not blk.gamma.any()
    assert torch.equal(blk.norm1.weight, torch.ones(4)) and not blk.norm1.bias.any()


def test_blocks_are_modules_with_the_official_names():
    blk = NAFBlock(4)
    assert isinstance(blk.norm1, LayerNorm2d) and isinstance(blk.norm2, LayerNorm2d)
    assert isinstance(blk.sg, SimpleGate) and isinstance(blk.sca[0], torch.nn.AdaptiveAvgPool2d)
    assert isinstance(blk.dropout1, torch.nn.Identity) and blk.norm1.eps == 1e-6
    assert isinstance(NAFBlock(4, drop_out_rate=0.1).dropout2, torch.nn.Dropout)
    b = BaselineBlock(4)
    assert isinstance(b.gelu, torch.nn.GELU) and [type(m).__name__ for m in b.se] == [
        "AdaptiveAvgPool2d", "Conv2d", "ReLU", "Conv2d", "Sigmoid"]
    local = NAFNetLocal(width=4, enc_blk_nums=[1], dec_blk_nums=[1], train_size=(1, 3, 16, 16))
    assert not local.training
    pools = [m for m in local.modules() if isinstance(m, LocalAvgPool2d)]
    # level 0 sees 16 at train time -> 16 * 24 // 16; level 1 (middle) 8 -> 12
    assert sorted(p.kernel_size for p in pools) == [(12, 12), (24, 24), (24, 24)]
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in local.modules())


# --------------------------------------------------------------------------------------------
# The maths, on our own
# --------------------------------------------------------------------------------------------

def test_layer_norm_2d_and_simple_gate():
    torch.manual_seed(0)
    ln = LayerNorm2d(5)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    x = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    ln64 = ln.double()
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (5,), ln64.weight, ln64.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln64(x), ref, rtol=1e-12, atol=1e-12)
    y = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(SimpleGate()(y), y[:, :3] * y[:, 3:])
    half = LayerNorm2d(5).half()(x.half())
    assert half.dtype == torch.float16


def _box_reference(x, kh, kw):
    """The TLC local mean (fast_imp=False) written pixel by pixel: the mean of the full window
    that starts at the output index, edge-replicated."""
    h, w = x.shape[-2:]
    if kh >= h and kw >= w:
        return x.mean(dim=(2, 3), keepdim=True)
    k1, k2 = min(h, kh), min(w, kw)
    oh, ow = h - k1 + 1, w - k2 + 1
    out = torch.empty(*x.shape[:2], oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i:i + k1, j:j + k2].mean(dim=(2, 3))
    top, left = (h - oh) // 2, (w - ow) // 2
    rows = [min(max(r - top, 0), oh - 1) for r in range(h)]
    cols = [min(max(c - left, 0), ow - 1) for c in range(w)]
    return out[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize("hw,kernel", [((9, 7), (4, 3)), ((9, 7), (20, 2)), ((6, 11), (5, 30)),
                                        ((8, 8), (8, 8)), ((5, 5), (1, 1))])
def test_local_pool_matches_window_means(hw, kernel):
    x = torch.randn(2, 3, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = LocalAvgPool2d(kernel)(x)
    torch.testing.assert_close(out, _box_reference(x, *kernel), rtol=1e-10, atol=1e-10)
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(LocalAvgPool2d(kernel)(x32), out.float(), rtol=1e-5, atol=1e-6)


def test_local_pool_fast_path_and_its_limits():
    x = torch.randn(1, 2, 20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # r1 = 5 divides 20, r2 = 4 divides 12; windows of 8 // 5 = 1 by 6 // 4 = 1 samples: each
    # value is the sample itself, shifted one step (the window ends at the next sample)
    out = LocalAvgPool2d((8, 6), fast_imp=True)(x)
    sub = x[:, :, ::5, ::4]
    expect = sub[:, :, 1:, 1:].repeat_interleave(5, 2).repeat_interleave(4, 3)        # (15, 8)
    expect = F.pad(expect, (2, 2, 2, 3), mode="replicate")
    torch.testing.assert_close(out, expect)
    assert LocalAvgPool2d((30, 30), fast_imp=True)(x).shape == (1, 2, 1, 1)
    with pytest.raises(ShapeError, match="fast_imp"):
        LocalAvgPool2d((1, 1), fast_imp=True)(x)                                     # 1 // 5 = 0 samples


# --------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,cfg", [(NAFNet, NAF), (Baseline, BASE)])
@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (16, 12), (33, 5)])
def test_any_size_pads_and_crops(cls, cfg, hw):
    """Odd sizes are padded with zeros on the bottom / right to a multiple of 4 and cropped back:
    the same as running the padded image and cropping."""
    model = _randomise(cls(**cfg), 0)
    x = _image(2, 3, *hw, seed=1)
    out = _run(model, x)
    assert out.shape == x.shape and out.is_contiguous()
    ph, pw = -(-hw[0] // 4) * 4, -(-hw[1] // 4) * 4
    padded = F.pad(x, (0, pw - hw[1], 0, ph - hw[0]))
    assert model.check_image_size(x).shape[-2:] == (ph, pw)
    torch.testing.assert_close(out, _run(model, padded)[:, :, :hw[0], :hw[1]], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, x, atol=1e-3)                     # the blocks do something


def test_global_residual_and_identity_blocks():
    """With beta = gamma = 0 (a fresh model) every block is the identity: out = x + ending(U-Net of intro(x))."""
    torch.manual_seed(0)
    model = NAFNet(img_channel=1, width=4, middle_blk_num=0, enc_blk_nums=[], dec_blk_nums=[]).eval()
    x = torch.randn(1, 1, 5, 6)
    torch.testing.assert_close(_run(model, x), x + model.ending(model.intro(x)))


@pytest.mark.parametrize("cls,cfg", [(NAFNet, NAF), (NAFNetLocal, dict(NAF, train_size=TRAIN_SIZE)),
                                     (Baseline, BASE)])
def test_batch_channels_last_and_determinism(cls, cfg):
    model = _randomise(cls(**cfg), 3)
    x = _image(3, 3, 19, 22, seed=4)
    out = _run(model, x)
    for i in range(3):
        torch.testing.assert_close(_run(model, x[i:i + 1]), out[i:i + 1], rtol=1e-5, atol=1e-6)
    assert torch.equal(_run(model, x), out)
    xcl = x.contiguous(memory_format=torch.channels_last)
    out_cl = _run(model, xcl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, _image(3, 3, 19, 22, seed=4))                # input untouched


@pytest.mark.parametrize("local,plain,cfg", [(NAFNetLocal, NAFNet, NAF), (BaselineLocal, Baseline, BASE)])
@pytest.mark.parametrize("fast_imp", [False, True])
def test_local_equals_global_up_to_the_base_size(local, plain, cfg, fast_imp):
    """train 16x16 -> base 24x24: inputs up to 24x24 (after padding) get global statistics at
    every level; larger ones local statistics."""
    net = _randomise(plain(**cfg, fused=False), 5)
    tlc = local(**cfg, train_size=(1, 3, 16, 16), fast_imp=fast_imp, fused=False)
    tlc.load_state_dict(net.state_dict())
    # the fused blocks (default) keep local statistics unfused and fuse the rest: the same
    # numbers to float32 rounding
    tlc_fused = local(**cfg, train_size=(1, 3, 16, 16), fast_imp=fast_imp)
    tlc_fused.load_state_dict(net.state_dict())
    for hw in [(24, 24), (21, 17), (9, 24)]:
        x = _image(2, 3, *hw, seed=6)
        assert torch.equal(_run(tlc, x), _run(net, x)), hw
        torch.testing.assert_close(_run(tlc_fused, x), _run(net, x), rtol=1e-5, atol=1e-5)
    for hw in [(40, 24), (24, 37), (48, 48)]:
        x = _image(2, 3, *hw, seed=7)
        assert (_run(tlc, x) - _run(net, x)).abs().max() > 1e-4, hw


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

LOAD_CASES = {
    "nafnet": (NAFNet, dict(img_channel=3, width=4, middle_blk_num=2, enc_blk_nums=[1, 0, 2], dec_blk_nums=[1, 1, 0])),
    "nafnet_gray_expand": (NAFNet, dict(img_channel=1, width=6, middle_blk_num=1, enc_blk_nums=[1],
                                        dec_blk_nums=[2], dw_expand=3, ffn_expand=1)),
    "baseline": (Baseline, dict(img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=[2, 1],
                                dec_blk_nums=[1, 1], dw_expand=1, ffn_expand=2)),
    "baseline_expand": (Baseline, dict(img_channel=3, width=4, middle_blk_num=0, enc_blk_nums=[1, 1],
                                       dec_blk_nums=[1, 1], dw_expand=2, ffn_expand=3)),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_official_round_trip(tmp_path, case):
    cls, cfg = LOAD_CASES[case]
    src = _randomise(cls(**cfg), 8)
    path = tmp_path / "net.pth"
    torch.save({"params": src.state_dict()}, path)
    arch, hp = infer_arch(src.state_dict())
    assert arch == ("baseline" if cls is Baseline else "nafnet") and hp == cfg
    model = load_official(path)
    assert type(model) is cls and not model.training
    x = _image(2, cfg["img_channel"], 13, 10, seed=9)
    assert torch.equal(_run(model, x), _run(src, x))


def test_load_official_local_variants(tmp_path):
    src = _randomise(NAFNet(**NAF), 10)
    path = tmp_path / "gopro.pth"
    torch.save({"params": src.state_dict()}, path)
    model = load_official(path, arch="nafnet_local", train_size=TRAIN_SIZE, fast_imp=True)
    assert type(model) is NAFNetLocal and model.fast_imp and model.train_size == TRAIN_SIZE
    ref = NAFNetLocal(**NAF, train_size=TRAIN_SIZE, fast_imp=True)
    ref.load_state_dict(src.state_dict())
    x = _image(1, 3, 30, 27, seed=11)
    assert torch.equal(_run(model, x), _run(ref, x))
    b = _randomise(Baseline(**BASE), 12)
    model = load_official({"params": b.state_dict()}, arch="baseline_local", train_size=TRAIN_SIZE)
    assert type(model) is BaselineLocal and model.dw_expand == 1
    assert isinstance(build("nafnet_local", width=4, train_size=(1, 3, 8, 8)), NAFNetLocal)
    assert {"nafnet", "nafnet_local", "baseline", "baseline_local"} <= set(ARCHS)


def test_forced_arch_mismatch_is_reported():
    from fastdenoise.errors import CheckpointError
    sd = NAFNet(**NAF).state_dict()
    with pytest.raises(CheckpointError, match=r"missing keys .*se\.1\.weight.*unexpected keys .*sca\.1\.weight"):
        load_official(sd, arch="baseline")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input_and_arguments():
    model = NAFNet(**NAF)
    with pytest.raises(ShapeError, match="expected 4 dims"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ShapeError, match="expected 3 channels"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(DTypeError):
        model(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="dec_blk_nums"):
        NAFNet(width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(ValueError, match="even"):
        NAFBlock(3, DW_Expand=1)
    with pytest.raises(ValueError, match="train_size"):
        NAFNetLocal(width=4, train_size=(8, 8))
