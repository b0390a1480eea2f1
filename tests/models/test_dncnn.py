"""DnCNN against a plain-PyTorch DnCNN structured as cszn/KAIR writes it (basicblock.conv +
basicblock.sequential flattening), and the real dncnn_25 checkpoint on Set12."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from fastdenoise.errors import DeviceError, DTypeError, ShapeError
from fastdenoise.models import DnCNN, load_official
from tests.models._kair import kair_layers


# --------------------------------------------------------------------------------------------
# KAIR-style reference (own code, KAIR's structure and keys)
# --------------------------------------------------------------------------------------------

def kair_sequential(*blocks):
    """A single module is returned as is; Sequentials are flattened one level."""
    if len(blocks) == 1:
        return blocks[0]
    flat = []
    for b in blocks:
        flat.extend(b.children() if isinstance(b, nn.Sequential) else [b])
    return nn.Sequential(*flat)


def kair_conv(cin, cout, mode):
    return kair_sequential(*kair_layers(cin, cout, mode))


class KairDnCNN(nn.Module):
    def __init__(self, in_nc=1, out_nc=1, nc=64, nb=17, act_mode="BR"):
        super().__init__()
        head = kair_conv(in_nc, nc, "C" + act_mode[-1])
        body = [kair_conv(nc, nc, "C" + act_mode) for _ in range(nb - 2)]
        tail = kair_conv(nc, out_nc, "C")
        self.model = kair_sequential(head, *body, tail)

    def forward(self, x):
        return x - self.model(x)


def randomise_bn(model):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


CONFIGS = [dict(in_nc=1, out_nc=1, nc=8, nb=5, act_mode="BR"),
           dict(in_nc=1, out_nc=1, nc=8, nb=4, act_mode="R"),
           dict(in_nc=3, out_nc=3, nc=6, nb=3, act_mode="BL"),
           dict(in_nc=3, out_nc=3, nc=5, nb=2, act_mode="L")]


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS + [dict()], ids=lambda c: str(c) or "defaults")
def test_state_dict_keys_and_shapes_match_kair(cfg):
    ours, ref = DnCNN(**cfg), KairDnCNN(**cfg)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_default_is_kair_default():
    keys = list(DnCNN().state_dict())
    # 17 convs, BN in the 15 body layers: model.0 conv, model.1 relu, then (conv, BN, relu) x 15, conv.
    assert keys[:2] == ["model.0.weight", "model.0.bias"]
    assert "model.3.running_mean" in keys and keys[-1] == "model.47.bias"


def test_same_seed_same_initialisation():
    torch.manual_seed(123)
    ours = DnCNN(nc=8, nb=4, act_mode="BR")
    torch.manual_seed(123)
    ref = KairDnCNN(nc=8, nb=4, act_mode="BR")
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_batchnorm_settings_match_kair_in_training():
    ours, ref = DnCNN(nc=8, nb=4, act_mode="BR"), KairDnCNN(nc=8, nb=4, act_mode="BR")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 1, 9, 11)
    ours.train(), ref.train()
    assert rel_err(ours(x), ref(x)) <= 1e-5
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), k   # momentum 0.9
    bn = ours.model[3]
    assert (bn.momentum, bn.eps, bn.affine) == (0.9, 1e-4, True)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_outputs_match_kair(cfg, fmt):
    ref = KairDnCNN(**cfg)
    randomise_bn(ref)
    ours = DnCNN(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.rand(2, cfg["in_nc"], 7, 13).contiguous(memory_format=fmt)
    x_before = x.clone()
    with torch.no_grad():
        y = ours(x)
        y_ref = ref(x)
    assert y.shape == x.shape
    assert rel_err(y, y_ref) <= 1e-5
    assert torch.equal(x, x_before), "input modified in place"


def test_input_not_modified_with_autograd():
    ours = DnCNN(nc=4, nb=3, act_mode="R")
    x = torch.randn(2, 1, 6, 5, requires_grad=True)
    before = x.detach().clone()
    ours(x).sum().backward()
    assert torch.equal(x.detach(), before) and x.grad is not None


def test_load_official_from_kair_state_dict(tmp_path):
    ref = KairDnCNN(in_nc=3, out_nc=3, nc=8, nb=5, act_mode="BR")
    randomise_bn(ref)
    path = tmp_path / "dncnn.pth"
    torch.save(ref.state_dict(), path)
    model = load_official(path)
    assert isinstance(model, DnCNN) and not model.training
    assert len([m for m in model.model if isinstance(m, nn.Conv2d)]) == 5
    assert isinstance(model.model[3], nn.BatchNorm2d)
    x = torch.rand(2, 3, 11, 6)
    with torch.no_grad():
        assert rel_err(model(x), ref.eval()(x)) <= 1e-5


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input():
    m = DnCNN(in_nc=1, out_nc=1, nc=4, nb=3, act_mode="R")
    with pytest.raises(ShapeError, match=r"x: expected 1 channels .*got C=3"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ShapeError, match="4 dims"):
        m(torch.randn(1, 8, 8))
    with pytest.raises(DTypeError, match="x: expected dtype float32"):
        m(torch.randn(1, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(DTypeError):
        m(torch.ones(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(DeviceError, match="meta"):
        m(torch.empty(1, 1, 8, 8, device="meta"))
    with pytest.raises(TypeError):
        m(np.zeros((1, 1, 8, 8), np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="act_mode"):
        DnCNN(act_mode="B")
    with pytest.raises(ValueError, match="nb"):
        DnCNN(nb=1)


# --------------------------------------------------------------------------------------------
# The real checkpoint on Set12 (KAIR main_test_dncnn.py's procedure)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dncnn_25_set12_psnr(shared_dir):
    from PIL import Image

    from fastdenoise.io import read_image
    from fastdenoise.metrics import psnr, quantize_uint8

    ckpt = shared_dir / "checkpoints" / "dncnn_25.pth"
    paths = sorted((shared_dir / "data" / "set12").glob("*.png"))
    assert len(paths) == 12
    model = load_official(ckpt)           # arch inferred: DnCNN(1, 1, nc=64, nb=17, act_mode='R')
    assert isinstance(model, DnCNN)
    assert sum(isinstance(m, nn.Conv2d) for m in model.model) == 17
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.model)

    results = OrderedDict()
    for p in paths:
        img = read_image(p)                              # (H, W, 1) float32 = float32(uint8 / 255.)
        np.random.seed(0)                                # per image, as main_test_dncnn.py
        noisy = img.copy()
        noisy += np.random.normal(0, 25 / 255.0, img.shape)   # float64 noise, stored as float32; no clipping
        x = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1)))[None]
        with torch.inference_mode():
            out = model(x)
        est = quantize_uint8(out)                        # clamp [0, 1], * 255, round (util.tensor2uint)
        gt = torch.from_numpy(np.array(Image.open(p).convert("L")))[None, None]
        results[p.name] = psnr(est, gt, data_range=255.0).item()   # util.calculate_psnr on uint8
    mean = float(np.mean(list(results.values())))
    for name, v in results.items():
        print(f"{name}: {v:.4f} dB")
    print(f"Set12 mean PSNR (sigma=25): {mean:.4f} dB")
    assert abs(mean - 30.43) <= 0.02, results
