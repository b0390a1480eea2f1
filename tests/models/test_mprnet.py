"""MPRNet (denoising): the official state-dict layout and the shared PReLU, outputs of the official
model (golden file), loading, padding of other sizes, batches, memory formats, input checks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import MPRNet, build, infer_arch, load_official
from fastdenoise.models.mprnet import CAB
from fastdenoise.nn import CAB as FusedCAB
from fastdenoise.nn import MPRNetCALayer

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "mprnet_golden.pt")
SMALL = dict(n_feat=16, scale_unetfeats=8, scale_orsnetfeats=8, num_cab=2)
DEFAULTS = dict(in_c=3, out_c=3, n_feat=80, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
                kernel_size=3, reduction=4, bias=False)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def random_state(model, seed=0):
    """The model's state dict with random values; the shared PReLU gets one value under all its keys."""
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
    slope = torch.rand(1, generator=gen)
    return {k: (slope.clone() if k.endswith("body.1.weight") else v) for k, v in sd.items()}


def cab_prefixes(model):
    return [name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, (CAB, FusedCAB))]


def expected_cab_count(num_cab):
    # shallow features 3, two encoders and two decoders of 6 level CABs (+2 skip CABs per
    # decoder), three ORBs of num_cab
    return 3 + 2 * 6 + 2 * 8 + 3 * num_cab


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

def test_defaults_are_the_official_denoising_ones():
    m = MPRNet()
    got = {k: getattr(m, k) for k in DEFAULTS}
    assert got == DEFAULTS
    sd = m.state_dict()
    assert sd["shallow_feat1.0.weight"].shape == (80, 3, 3, 3)
    assert sd["stage1_encoder.down12.down.1.weight"].shape == (128, 80, 1, 1)
    assert sd["stage3_orsnet.orb1.body.8.weight"].shape == (112, 112, 3, 3)      # the ORB's closing conv
    assert sd["tail.weight"].shape == (3, 112, 3, 3)
    assert infer_arch(sd) == ("mprnet", DEFAULTS)


def test_golden_file_has_our_layout():
    """The keys and shapes the official model itself wrote are ours, in order."""
    data = torch.load(GOLDEN, weights_only=True)
    official, cfg = data["state_dict"], data["config"]
    ours = MPRNet(**cfg).state_dict()
    assert [(k, v.shape) for k, v in official.items()] == [(k, v.shape) for k, v in ours.items()]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_cab_keys_and_biases(bias, fused):
    m = MPRNet(**SMALL, bias=bias, fused=fused)
    sd = m.state_dict()
    prefixes = cab_prefixes(m)
    assert len(prefixes) == expected_cab_count(SMALL["num_cab"])
    keys = list(sd)
    for p in prefixes:
        # CA is registered before body, as in the official
        names = [k[len(p) + 1:] for k in keys if k.startswith(p + ".")]
        want = ["CA.conv_du.0.weight", "CA.conv_du.2.weight", "body.0.weight", "body.1.weight", "body.2.weight"]
        if bias:
            want = ["CA.conv_du.0.weight", "CA.conv_du.0.bias", "CA.conv_du.2.weight", "CA.conv_du.2.bias",
                    "body.0.weight", "body.0.bias", "body.1.weight", "body.2.weight", "body.2.bias"]
        assert names == want, p
    # Never a bias: the closing conv of each ORB and the 1x1 resampling convolutions.
    for k in ("stage3_orsnet.orb2.body.2.bias", "stage1_encoder.down12.down.1.bias",
              "stage3_orsnet.up_enc1.up.1.bias", "stage1_decoder.up21.up.1.bias"):
        assert k not in sd
    assert ("tail.bias" in sd) == bias and ("stage2_encoder.csff_dec3.bias" in sd) == bias
    assert "stage1_encoder.csff_enc1.weight" not in sd and "stage2_encoder.csff_enc1.weight" in sd


@pytest.mark.parametrize("fused", [True, False])
def test_prelu_is_one_parameter_shared_by_every_cab(fused):
    m = MPRNet(**SMALL, fused=fused)
    cabs = [m.get_submodule(p) for p in cab_prefixes(m)]
    assert all(type(c) is (FusedCAB if fused else CAB) for c in cabs)
    act = cabs[0].body[1]
    assert isinstance(act, torch.nn.PReLU) and act.weight.shape == (1,)
    assert all(c.body[1] is act for c in cabs)
    # one parameter object ...
    params = [p for _, p in m.named_parameters()]
    assert sum(p is act.weight for p in params) == 1
    # ... listed under every CAB in the state dict, no key of its own
    sd = m.state_dict()
    act_keys = [k for k in sd if k.endswith(".body.1.weight")]
    assert act_keys == [p + ".body.1.weight" for p in cab_prefixes(m)]
    assert all(sd[k].data_ptr() == act.weight.data_ptr() for k in act_keys)
    assert not any(k.startswith("act") for k in sd)
    # loading sets it once for all
    sd = random_state(m)
    m.load_state_dict(sd)
    assert all(torch.equal(c.body[1].weight, sd[act_keys[0]]) for c in cabs)


@pytest.mark.parametrize("fused", [True, False])
def test_same_seed_same_initialisation_as_official(fused):
    """The golden state dict is the official model built after ``torch.manual_seed(0)``; the
    generator then changed only the shared PReLU."""
    data = torch.load(GOLDEN, weights_only=True)
    torch.manual_seed(0)
    ours = MPRNet(**data["config"], fused=fused).state_dict()
    for k, v in ours.items():
        if not k.endswith(".body.1.weight"):
            assert torch.equal(v, data["state_dict"][k]), k


# --------------------------------------------------------------------------------------------
# The official model's outputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_matches_official_golden(fused):
    """tests/models/data/mprnet_golden.pt was written by make_ridnet_mprnet_golden.py (next to
    it), which loads the official ``Denoising/MPRNet.py`` of swz30/MPRNet, builds
    ``MPRNet(in_c=3, out_c=3, n_feat=6, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=2,
    kernel_size=3, reduction=4, bias=False)`` after ``torch.manual_seed(0)``, sets the shared
    PReLU slope to 0.13, and in eval mode runs it on a seeded (2, 3, 16, 24) input, and on a
    seeded (1, 3, 13, 21) input reflection-padded at the bottom / right to (16, 24) as the
    official ``demo.py`` pads, cropping the outputs back; the file holds the official state
    dict, the config, the inputs and the three official outputs of each."""
    data = torch.load(GOLDEN, weights_only=True)
    model = load_official(data["state_dict"], fused=fused)
    assert isinstance(model, MPRNet) and not model.training and model.fused == fused
    assert type(model.stage3_orsnet.orb1.body[0]) is (FusedCAB if fused else CAB)
    assert {k: getattr(model, k) for k in data["config"]} == data["config"]
    assert model.stage1_encoder.encoder_level1[0].body[1].weight.item() == pytest.approx(0.13)
    for x, expected in ((data["input"], data["outputs"]), (data["input_odd"], data["outputs_odd"])):
        with torch.no_grad():
            outs = model(x)
        assert isinstance(outs, list) and len(outs) == 3
        for y, e in zip(outs, expected):
            assert y.shape == e.shape == x.shape and y.dtype == torch.float32
            assert rel_err(y, e) <= 1e-5
        assert rel_err(outs[0] - x, expected[0] - x) <= 1e-5


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,data_parallel", [
    (SMALL, False),
    (dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=6, num_cab=3, kernel_size=5, reduction=2, bias=True), True),
])
def test_load_official_round_trip(tmp_path, cfg, data_parallel):
    """Saved as the official train.py saves: ``{'epoch', 'state_dict', 'optimizer'}``, with the
    ``module.`` prefix of DataParallel or not (the official load_checkpoint takes both)."""
    src = MPRNet(**cfg).eval()
    src.load_state_dict(random_state(src))
    sd = src.state_dict()
    if data_parallel:
        sd = {"module." + k: v for k, v in sd.items()}
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"param_groups": []}}, tmp_path / "model_best.pth")
    want = dict(DEFAULTS, **cfg)
    assert infer_arch(src.state_dict()) == ("mprnet", want)
    model = load_official(tmp_path / "model_best.pth")
    assert isinstance(model, MPRNet) and not model.training
    assert {k: getattr(model, k) for k in want} == want
    x = torch.rand(2, 3, 16, 8)
    with torch.no_grad():
        for a, b in zip(model(x), src(x)):
            assert torch.equal(a, b)


def test_build_by_name():
    m = build("mprnet", **SMALL)
    assert isinstance(m, MPRNet) and m.num_cab == 2 and m.fused


def test_fused_and_plain_agree():
    """Same seed, same weights and keys; outputs within float32 rounding (the fused CAB sums
    its attention in another order), on an odd size, batch 2, both memory formats."""
    torch.manual_seed(5)
    fused = MPRNet(**SMALL).eval()
    torch.manual_seed(5)
    plain = MPRNet(**SMALL, fused=False).eval()
    assert list(fused.state_dict()) == list(plain.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, fused.state_dict()[k]), k
    sd = random_state(plain, seed=7)
    plain.load_state_dict(sd)
    fused.load_state_dict(sd)
    assert all(isinstance(m.CA, MPRNetCALayer) for m in fused.modules() if isinstance(m, FusedCAB))
    x = torch.rand(2, 3, 13, 19)
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            for a, b in zip(fused(xf), plain(xf)):
                assert rel_err(a, b) <= 1e-5


# --------------------------------------------------------------------------------------------
# Sizes, batches, memory formats
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    m = MPRNet(**SMALL).eval()
    m.load_state_dict(random_state(m, seed=1))
    return m


@pytest.mark.parametrize("hw,mode", [((13, 21), "reflect"), ((16, 9), "reflect"), ((1, 1), "replicate"),
                                     ((3, 12), "replicate")])
def test_other_sizes_are_padded_and_cropped(small, hw, mode):
    h, w = hw
    x = torch.rand(2, 3, h, w)
    x_before = x.clone()
    padded = F.pad(x, (0, -w % 8, 0, -h % 8), mode=mode)
    with torch.no_grad():
        outs = small(x)
        expected = [o[..., :h, :w] for o in small(padded)]
    assert torch.equal(x, x_before)
    for y, e in zip(outs, expected):
        assert y.shape == x.shape
        assert torch.equal(y, e)


def test_batch_items_are_independent(small):
    x = torch.rand(2, 3, 8, 16)
    with torch.no_grad():
        outs = small(x)
        singles = [small(x[i:i + 1]) for i in range(2)]
    for s, y in enumerate(outs):
        assert rel_err(y, torch.cat([single[s] for single in singles])) <= 1e-5


def test_channels_last(small):
    x = torch.rand(2, 3, 16, 13)
    with torch.no_grad():
        outs = small(x)
        outs_cl = small(x.contiguous(memory_format=torch.channels_last))
    for y, y_cl in zip(outs, outs_cl):
        assert y.is_contiguous() and y_cl.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(y_cl, y) <= 1e-5


def test_eval_is_deterministic(small):
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(small(x), small(x)):
            assert torch.equal(a, b)


def test_denoise_is_the_clamped_first_output(small):
    x = torch.rand(1, 3, 11, 8)
    with torch.no_grad():
        assert torch.equal(small.denoise(x), small(x)[0].clamp(0, 1))


def test_backward_reaches_the_shared_prelu():
    m = MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1)
    x = torch.rand(1, 3, 8, 8)
    sum(o.square().mean() for o in m(x)).backward()
    assert m.shallow_feat1[1].body[1].weight.grad is not None


def test_bad_input(small):
    with pytest.raises(ShapeError, match=r"x: expected 3 channels .*got C=1"):
        small(torch.rand(1, 1, 8, 8))
    with pytest.raises(ShapeError, match="4 dims"):
        small(torch.rand(3, 8, 8))
    with pytest.raises(DTypeError):
        small(torch.rand(1, 3, 8, 8, dtype=torch.float64))
