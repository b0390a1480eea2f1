"""RIDNet: the official state-dict layout, outputs of the official model (golden file), loading,
sizes, memory formats, input checks."""

from __future__ import annotations

import os

import pytest
import torch

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import RIDNet, build, infer_arch, load_official
from fastdenoise.models.ridnet import RGB_MEAN, CALayer
from fastdenoise.nn import RIDNetCALayer

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "ridnet_golden.pt")


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def random_state(model, seed=0):
    """The model's state dict with random values (a stand-in for a trained checkpoint); the mean
    shifts stay near their initial values, as training leaves them."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=gen) * 0.01 if "mean" in k
            else torch.randn(v.shape, generator=gen) * 0.05
            for k, v in model.state_dict().items()}


def expected_layout(n_feats, reduction=16):
    """The official key order and shapes, written out from the official module structure."""
    f, m = n_feats, n_feats // reduction
    keys = [("sub_mean.weight", (3, 3, 1, 1)), ("sub_mean.bias", (3,)),
            ("add_mean.weight", (3, 3, 1, 1)), ("add_mean.bias", (3,)),
            ("head.body.0.weight", (f, 3, 3, 3)), ("head.body.0.bias", (f,))]
    block = [("r1.body1.0", (f, f, 3, 3)), ("r1.body1.2", (f, f, 3, 3)),
             ("r1.body2.0", (f, f, 3, 3)), ("r1.body2.2", (f, f, 3, 3)),
             ("r1.body3.0", (f, 2 * f, 3, 3)),
             ("r2.body.0", (f, f, 3, 3)), ("r2.body.2", (f, f, 3, 3)),
             ("r3.body.0", (f, f, 3, 3)), ("r3.body.2", (f, f, 3, 3)), ("r3.body.4", (f, f, 1, 1)),
             ("ca.c1.body.0", (m, f, 1, 1)), ("ca.c2.body.0", (f, m, 1, 1))]
    for b in range(1, 5):
        for name, shape in block:
            keys += [(f"b{b}.{name}.weight", shape), (f"b{b}.{name}.bias", (shape[0],))]
    return keys + [("tail.weight", (3, f, 3, 3)), ("tail.bias", (3,))]


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_feats", [64, 16])
def test_state_dict_keys_and_shapes_match_official(n_feats):
    sd = RIDNet(n_feats=n_feats).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected_layout(n_feats)


def test_golden_file_has_our_layout():
    """The keys and shapes the official model itself wrote (n_feats=16) are ours, in order."""
    official = torch.load(GOLDEN, weights_only=True)["state_dict"]
    ours = RIDNet(n_feats=16).state_dict()
    assert [(k, v.shape) for k, v in official.items()] == [(k, v.shape) for k, v in ours.items()]


def test_defaults_and_mean_shifts():
    m = RIDNet()
    assert (m.n_feats, m.reduction, m.rgb_range) == (64, 16, 255)
    mean = torch.tensor(RGB_MEAN)
    torch.testing.assert_close(m.sub_mean.weight, torch.eye(3).view(3, 3, 1, 1))
    torch.testing.assert_close(m.add_mean.weight, torch.eye(3).view(3, 3, 1, 1))
    torch.testing.assert_close(m.sub_mean.bias, -255 * mean)
    torch.testing.assert_close(m.add_mean.bias, 255 * mean)
    torch.testing.assert_close(RIDNet(n_feats=16, rgb_range=1).add_mean.bias, mean)
    # As in the official (whose module-level `requires_grad = False` does not reach them), the
    # mean shifts are ordinary parameters.
    assert m.sub_mean.weight.requires_grad and m.add_mean.bias.requires_grad
    assert {"sub_mean.weight", "add_mean.bias"} <= dict(m.named_parameters()).keys()


def test_reduction_sets_the_attention_width():
    sd = RIDNet(n_feats=32, reduction=8).state_dict()
    assert sd["b3.ca.c1.body.0.weight"].shape == (4, 32, 1, 1)
    with pytest.raises(ValueError, match="n_feats"):
        RIDNet(n_feats=8)


@pytest.mark.parametrize("fused", [True, False])
def test_same_seed_same_initialisation_as_official(fused):
    """The golden state dict is the official model built after ``torch.manual_seed(0)``; the
    generator then changed only the mean shifts and the tail weight."""
    official = torch.load(GOLDEN, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    ours = RIDNet(n_feats=16, fused=fused).state_dict()
    assert list(ours) == list(official)
    changed = {"sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "tail.weight"}
    for k, v in ours.items():
        if k not in changed:
            assert torch.equal(v, official[k]), k


# --------------------------------------------------------------------------------------------
# The official model's outputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_matches_official_golden(fused):
    """tests/models/data/ridnet_golden.pt was written by make_ridnet_mprnet_golden.py (next to
    it), which imports the official ``model.ridnet`` from saeed-anwar/RIDNet
    (``TestCode/code``), builds ``RIDNET(args)`` with n_feats=16, reduction=16, rgb_range=255
    after ``torch.manual_seed(0)``, adds seeded noise to both mean shifts and multiplies the
    tail weight by 20, and runs it in eval mode on a seeded (2, 3, 13, 17) input in [0, 255];
    the file holds the official state dict, the input and the official output."""
    data = torch.load(GOLDEN, weights_only=True)
    model = load_official(data["state_dict"], fused=fused)
    assert isinstance(model, RIDNet) and not model.training and model.fused == fused
    assert type(model.b3.ca) is (RIDNetCALayer if fused else CALayer)
    assert (model.n_feats, model.reduction, model.rgb_range) == (16, 16, 255)
    x, expected = data["input"], data["output"]
    with torch.no_grad():
        y = model(x)
    assert y.shape == expected.shape and y.dtype == torch.float32
    assert rel_err(y, expected) <= 1e-5
    assert rel_err(y - x, expected - x) <= 1e-5        # the predicted residual alone


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_feats,reduction,rgb_range", [(16, 16, 255), (32, 8, 1)])
def test_load_official_round_trip(tmp_path, n_feats, reduction, rgb_range):
    """The official trainer saves the bare ``state_dict()`` (``model/model_latest.pt``)."""
    src = RIDNet(n_feats=n_feats, reduction=reduction, rgb_range=rgb_range).eval()
    src.load_state_dict(random_state(src))
    torch.save(src.state_dict(), tmp_path / "model_latest.pt")
    arch, hp = infer_arch(src.state_dict())
    assert arch == "ridnet" and hp == {"n_feats": n_feats, "reduction": reduction, "rgb_range": rgb_range}
    model = load_official(tmp_path / "model_latest.pt")
    assert isinstance(model, RIDNet) and not model.training
    assert (model.n_feats, model.reduction, model.rgb_range) == (n_feats, reduction, rgb_range)
    x = torch.rand(2, 3, 11, 9) * rgb_range
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    forced = load_official(tmp_path / "model_latest.pt", arch="ridnet")
    assert forced.n_feats == n_feats


def test_build_by_name():
    m = build("ridnet", n_feats=16)
    assert isinstance(m, RIDNet) and m.n_feats == 16


# --------------------------------------------------------------------------------------------
# Sizes, batches, memory formats
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    return RIDNet(n_feats=16).eval()


@pytest.mark.parametrize("hw", [(1, 1), (7, 33), (13, 8)])
def test_any_size_and_batch(small, hw):
    x = torch.rand(3, 3, *hw) * 255
    x_before = x.clone()
    with torch.no_grad():
        y = small(x)
        singles = torch.cat([small(x[i:i + 1]) for i in range(3)])
    assert y.shape == x.shape
    assert torch.equal(x, x_before)
    assert rel_err(y, singles) <= 1e-5


def test_channels_last(small):
    x = torch.rand(2, 3, 12, 17) * 255
    with torch.no_grad():
        y = small(x)
        y_cl = small(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous()
    assert rel_err(y_cl, y) <= 1e-5


def test_eval_is_deterministic(small):
    x = torch.rand(2, 3, 9, 10) * 255
    with torch.no_grad():
        assert torch.equal(small(x), small(x))


def test_denoise_is_the_unit_range_wrapper(small):
    x = torch.rand(2, 3, 8, 9)
    with torch.no_grad():
        expected = (small(x * 255) / 255).clamp(0, 1)
        torch.testing.assert_close(small.denoise(x), expected, rtol=0, atol=0)


def test_backward():
    m = RIDNet(n_feats=16)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and m.b2.ca.c1.body[0].weight.grad is not None


def test_fused_and_plain_agree():
    """Same weights (random, with non-trivial attention), odd size, batch 2, both memory formats:
    fused and plain agree to float32 rounding."""
    plain = RIDNet(n_feats=32, fused=False).eval()
    plain.load_state_dict(random_state(plain, seed=4))
    fused = RIDNet(n_feats=32).eval()
    fused.load_state_dict(plain.state_dict())
    assert all(type(getattr(fused, f"b{i}").ca) is RIDNetCALayer for i in range(1, 5))
    x = torch.rand(2, 3, 15, 11) * 255
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            assert rel_err(fused(xf), plain(xf)) <= 1e-5


def test_bad_input(small):
    with pytest.raises(ShapeError, match=r"x: expected 3 channels .*got C=1"):
        small(torch.rand(1, 1, 8, 8))
    with pytest.raises(ShapeError, match="4 dims"):
        small(torch.rand(3, 8, 8))
    with pytest.raises(DTypeError):
        small(torch.rand(1, 3, 8, 8, dtype=torch.float64))
