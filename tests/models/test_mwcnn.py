"""MWCNN against a plain-PyTorch BSR structured as lpj0/MWCNN_PyTorch writes it (model/mw.py,
model/common.py), with a CPU-friendly iwt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import MWCNN, load_official


# --------------------------------------------------------------------------------------------
# Official-style reference (own code, the official structure and keys)
# --------------------------------------------------------------------------------------------

def ref_dwt(x):
    even_rows, odd_rows = x[:, :, 0::2, :] / 2, x[:, :, 1::2, :] / 2
    x1, x2 = even_rows[:, :, :, 0::2], odd_rows[:, :, :, 0::2]
    x3, x4 = even_rows[:, :, :, 1::2], odd_rows[:, :, :, 1::2]
    return torch.cat((x1 + x2 + x3 + x4, -x1 - x2 + x3 + x4, -x1 + x2 - x3 + x4, x1 - x2 - x3 + x4), 1)


def ref_iwt(x):
    b, c4, h, w = x.shape
    c = c4 // 4
    x1, x2, x3, x4 = (x[:, i * c:(i + 1) * c] / 2 for i in range(4))
    out = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    out[:, :, 0::2, 0::2] = x1 - x2 - x3 + x4
    out[:, :, 1::2, 0::2] = x1 - x2 + x3 - x4
    out[:, :, 0::2, 1::2] = x1 + x2 - x3 - x4
    out[:, :, 1::2, 1::2] = x1 + x2 + x3 + x4
    return out


class RefDWT(nn.Module):
    def forward(self, x):
        return ref_dwt(x)


class RefIWT(nn.Module):
    def forward(self, x):
        return ref_iwt(x)


def ref_conv(cin, cout, k, bias=True):
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class RefBBlock(nn.Module):
    def __init__(self, conv, cin, cout, k, bias=True, act=nn.ReLU(True), res_scale=1):
        super().__init__()
        self.body = nn.Sequential(conv(cin, cout, k, bias=bias), act)
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x).mul(self.res_scale)


class RefBSR(nn.Module):
    """The official BSR; ``colors`` generalises its fixed 4-channel head / tail like our n_colors."""

    def __init__(self, args, conv=ref_conv, colors=1):
        super().__init__()
        f = args.n_feats
        act = nn.ReLU(True)
        self.DWT, self.IWT = RefDWT(), RefIWT()
        n = 3
        head = [RefBBlock(conv, 4 * colors, 160, 3, act=act)]
        d_l1 = [RefBBlock(conv, 160, 160, 3, act=act) for _ in range(n)]
        d_l2 = [RefBBlock(conv, 640, f * 4, 3, act=act)] + [RefBBlock(conv, f * 4, f * 4, 3, act=act) for _ in range(n)]
        pro_l3 = ([RefBBlock(conv, f * 16, f * 4, 3, act=act)]
                  + [RefBBlock(conv, f * 4, f * 4, 3, act=act) for _ in range(2 * n)]
                  + [RefBBlock(conv, f * 4, f * 16, 3, act=act)])
        i_l2 = [RefBBlock(conv, f * 4, f * 4, 3, act=act) for _ in range(n)] + [RefBBlock(conv, f * 4, 640, 3, act=act)]
        i_l1 = [RefBBlock(conv, 160, 160, 3, act=act) for _ in range(n)]
        tail = [conv(160, 4 * colors, 3)]
        self.head = nn.Sequential(*head)
        self.d_l2 = nn.Sequential(*d_l2)
        self.d_l1 = nn.Sequential(*d_l1)
        self.pro_l3 = nn.Sequential(*pro_l3)
        self.i_l2 = nn.Sequential(*i_l2)
        self.i_l1 = nn.Sequential(*i_l1)
        self.tail = nn.Sequential(*tail)

    def forward(self, x):
        x1 = self.d_l1(self.head(self.DWT(x)))
        x2 = self.d_l2(self.DWT(x1))
        x_ = self.IWT(self.pro_l3(self.DWT(x2))) + x2
        x_ = self.IWT(self.i_l2(x_)) + x1
        return self.IWT(self.tail(self.i_l1(x_))) + x


def args(n_feats=64, n_resblocks=20):
    return SimpleNamespace(n_feats=n_feats, n_resblocks=n_resblocks)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def pair(n_feats=4, colors=1):
    ref = RefBSR(args(n_feats), colors=colors).eval()
    ours = MWCNN(n_feats=n_feats, n_colors=colors).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_feats,colors", [(64, 1), (4, 1), (8, 3)])
def test_state_dict_keys_and_shapes_match_official(n_feats, colors):
    ours, ref = MWCNN(n_feats=n_feats, n_colors=colors), RefBSR(args(n_feats), colors=colors)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    sd = ours.state_dict()
    assert sd["head.0.body.0.weight"].shape[1] == 4 * colors
    assert sd["tail.0.weight"].shape[0] == 4 * colors


def test_defaults_and_unused_n_resblocks():
    m = MWCNN()
    assert (m.n_resblocks, m.n_feats, m.n_colors) == (20, 64, 1)
    a = [(k, v.shape) for k, v in MWCNN(n_resblocks=3).state_dict().items()]
    assert a == [(k, v.shape) for k, v in m.state_dict().items()]
    assert a == [(k, v.shape) for k, v in RefBSR(args()).state_dict().items()]
    m.set_scale(2)
    assert m.scale_idx == 2


def test_same_seed_same_initialisation():
    torch.manual_seed(5)
    ours = MWCNN(n_feats=4)
    torch.manual_seed(5)
    ref = RefBSR(args(4))
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("n_feats,colors,hw", [(4, 1, (16, 24)), (8, 3, (8, 16)), (64, 1, (16, 8))])
def test_outputs_match_official(n_feats, colors, hw, fmt):
    ours, ref = pair(n_feats, colors)
    x = torch.rand(2, colors, *hw).contiguous(memory_format=fmt)
    x_before = x.clone()
    with torch.no_grad():
        y, y_ref = ours(x), ref(x)
    assert y.shape == x.shape
    assert rel_err(y, y_ref) <= 1e-5
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("hw", [(13, 21), (9, 16), (17, 5), (7, 8)])
def test_other_sizes_are_reflection_padded_and_cropped(hw):
    ours, ref = pair(4, 1)
    x = torch.rand(2, 1, *hw)
    h, w = hw
    padded = F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect")
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    with torch.no_grad():
        y = ours(x)
        expected = ref(padded)[..., :h, :w]
    assert y.shape == x.shape
    assert rel_err(y, expected) <= 1e-5


def test_load_official_infers_mwcnn(tmp_path):
    ref = RefBSR(args(8), colors=1).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "mw.pt")
    model = load_official(tmp_path / "mw.pt")
    assert isinstance(model, MWCNN) and not model.training
    assert (model.n_feats, model.n_colors) == (8, 1)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-5


def test_bad_input():
    ours, _ = pair(4, 1)
    with pytest.raises(ShapeError, match=r"x: expected 1 channels .*got C=3"):
        ours(torch.rand(1, 3, 16, 16))
    with pytest.raises(ShapeError, match="multiples of 8, or at least 5"):
        ours(torch.rand(1, 1, 4, 16))
    with pytest.raises(ShapeError, match="4 dims"):
        ours(torch.rand(1, 16, 16))
    with pytest.raises(DTypeError):
        ours(torch.rand(1, 1, 16, 16, dtype=torch.float16))
