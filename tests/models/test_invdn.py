"""InvNet against a plain-PyTorch InvNet structured as Yang-Liu1082/InvDN writes it
(Inv_arch.py, Subnet_constructor.py, module_util init), and the official test procedure
(InvDN_Model.test / forward_x8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.models import InvNet, load_official
from fastdenoise.models.invdn import DenseBlock, ResBlock, subnet
from fastdenoise.nn import HaarDownsampling


# --------------------------------------------------------------------------------------------
# InvDN-style reference (own code, the official structure and keys)
# --------------------------------------------------------------------------------------------

def ref_init(convs, scale, xavier):
    for conv in convs:
        if xavier:
            nn.init.xavier_normal_(conv.weight)
        else:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        conv.weight.data *= scale
        conv.bias.data.zero_()


class RefResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 64, kernel_size=3, padding=1)
        self.relu1 = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64 + cin, cout, kernel_size=3, padding=1)

    def forward(self, x):
        r = self.relu1(self.conv2(self.relu1(self.conv1(x))))
        return self.conv3(torch.cat((x, r), dim=1))


class RefDenseBlock(nn.Module):
    def __init__(self, cin, cout, init="xavier", gc=32):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(cin + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(cin + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(cin + 4 * gc, cout, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        ref_init([self.conv1, self.conv2, self.conv3, self.conv4], 0.1, init == "xavier")
        ref_init([self.conv5], 0, False)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1))


def ref_subnet(kind, init="xavier"):
    def make(cin, cout):
        if kind == "DBNet":
            return RefDenseBlock(cin, cout, init)
        return RefResBlock(cin, cout)
    return make


class RefHaar(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        w = torch.ones(4, 1, 2, 2)
        w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1
        w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1
        w[3, 0, 1, 0] = w[3, 0, 0, 1] = -1
        self.haar_weights = nn.Parameter(torch.cat([w] * c, 0), requires_grad=False)

    def forward(self, x, rev=False):
        n, _, h, w = x.shape
        self.elements = x.shape[1] * h * w
        if not rev:
            self.last_jac = self.elements / 4 * np.log(1 / 16.)
            y = F.conv2d(x, self.haar_weights, stride=2, groups=self.c) / 4.0
            return y.reshape(n, self.c, 4, h // 2, w // 2).transpose(1, 2).reshape(n, 4 * self.c, h // 2, w // 2)
        self.last_jac = self.elements / 4 * np.log(16.)
        y = x.reshape(n, 4, self.c, h, w).transpose(1, 2).reshape(n, 4 * self.c, h, w)
        return F.conv_transpose2d(y, self.haar_weights, stride=2, groups=self.c)

    def jacobian(self, x, rev=False):
        return self.last_jac


class RefInvBlockExp(nn.Module):
    def __init__(self, make, channel_num, split, clamp=1.0):
        super().__init__()
        self.split_len1, self.split_len2, self.clamp = split, channel_num - split, clamp
        self.F = make(self.split_len2, self.split_len1)
        self.G = make(self.split_len1, self.split_len2)
        self.H = make(self.split_len1, self.split_len2)

    def forward(self, x, rev=False):
        x1, x2 = x[:, :self.split_len1], x[:, self.split_len1:]
        if not rev:
            y1 = x1 + self.F(x2)
            self.s = self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)
            y2 = x2.mul(torch.exp(self.s)) + self.G(y1)
        else:
            self.s = self.clamp * (torch.sigmoid(self.H(x1)) * 2 - 1)
            y2 = (x2 - self.G(x1)).div(torch.exp(self.s))
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), 1)

    def jacobian(self, x, rev=False):
        return (torch.sum(self.s) if not rev else -torch.sum(self.s)) / x.shape[0]


class RefInvNet(nn.Module):
    def __init__(self, channel_in=3, channel_out=3, subnet_constructor=None, block_num=(), down_num=2):
        super().__init__()
        ops, c = [], channel_in
        for level in range(down_num):
            ops.append(RefHaar(c))
            c *= 4
            ops.extend(RefInvBlockExp(subnet_constructor, c, channel_out) for _ in range(block_num[level]))
        self.operations = nn.ModuleList(ops)

    def forward(self, x, rev=False, cal_jacobian=False):
        out, jac = x, 0
        for op in (self.operations if not rev else reversed(self.operations)):
            out = op.forward(out, rev)
            if cal_jacobian:
                jac += op.jacobian(out, rev)
        return (out, jac) if cal_jacobian else out


def ref_flip(v, op):
    """forward_x8's _transform, through numpy as the official."""
    a = v.detach().cpu().numpy()
    a = {"v": a[:, :, :, ::-1], "h": a[:, :, ::-1, :], "t": a.transpose(0, 1, 3, 2)}[op].copy()
    return torch.from_numpy(a)


def ref_forward_x8(net, x, generator, channel_out=3):
    """The official forward_x8 (8 copies, noise drawn per copy in order, inverse transforms, mean),
    with noise from ``generator`` and the mean taken per image."""
    copies = [x]
    for tf in "v", "h", "t":
        copies.extend([ref_flip(t, tf) for t in copies])
    lows = [net(c) for c in copies]
    backs = [torch.cat((d[:, :channel_out], torch.randn(d[:, channel_out:].shape, generator=generator)), 1)
             for d in lows]
    outs = [net(b, rev=True) for b in backs]
    for i in range(len(outs)):
        if i > 3:
            outs[i] = ref_flip(outs[i], "t")
        if i % 4 > 1:
            outs[i] = ref_flip(outs[i], "h")
        if (i % 4) % 2 == 1:
            outs[i] = ref_flip(outs[i], "v")
    return torch.stack(outs, 0).mean(0)[:, :channel_out]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def pair(seed=0, **cfg):
    """(ours, reference) with the same weights; DBNet's zero conv5 is randomised so every
    subnet matters."""
    kind = cfg.pop("kind", "Resnet")
    ref = RefInvNet(subnet_constructor=ref_subnet(kind), **cfg)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("conv5.weight"):
                p.normal_(0, 0.01)
    ours = InvNet(subnet_constructor=kind, **cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval(), ref.eval()


SMALL = dict(channel_in=3, channel_out=3, block_num=[1, 1], down_num=2)


# --------------------------------------------------------------------------------------------
# Structure and initialisation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    dict(kind="Resnet", channel_in=3, channel_out=3, block_num=[2, 1], down_num=2),
    dict(kind="DBNet", channel_in=3, channel_out=3, block_num=[1, 2], down_num=2),
    dict(kind="Resnet", channel_in=1, channel_out=1, block_num=[1], down_num=1),
    dict(kind="DBNet", channel_in=1, channel_out=2, block_num=[1, 0, 1], down_num=3),
], ids=str)
def test_state_dict_keys_and_shapes_match_official(cfg):
    kind = cfg.pop("kind")
    ours, ref = InvNet(subnet_constructor=kind, **cfg), RefInvNet(subnet_constructor=ref_subnet(kind), **cfg)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert all(not m.haar_weights.requires_grad for m in ours.operations if isinstance(m, HaarDownsampling))


def test_defaults_are_the_released_config():
    ours = InvNet()
    ref = RefInvNet(3, 3, ref_subnet("Resnet"), [8, 8], 2)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]
    assert ours.block_num == [8, 8] and ours.down_num == 2
    assert isinstance(ours.operations[1].F, ResBlock)
    assert isinstance(InvNet(block_num=[1, 1], subnet_constructor="DBNet").operations[1].F, DenseBlock)


@pytest.mark.parametrize("kind", ["Resnet", "DBNet"])
def test_same_seed_same_official_initialisation(kind):
    torch.manual_seed(7)
    ours = InvNet(subnet_constructor=kind, block_num=[1, 1])
    torch.manual_seed(7)
    ref = RefInvNet(subnet_constructor=ref_subnet(kind), block_num=[1, 1])
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    if kind == "DBNet":
        assert torch.count_nonzero(ours.operations[1].F.conv5.weight) == 0
        assert torch.count_nonzero(ours.operations[1].F.conv1.bias) == 0


def test_subnet_function_and_callable():
    torch.manual_seed(3)
    a = InvNet(subnet_constructor=subnet("DBNet", "kaiming"), block_num=[1, 0])
    torch.manual_seed(3)
    b = RefInvNet(subnet_constructor=ref_subnet("DBNet", "kaiming"), block_num=[1, 0])
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    net = InvNet(subnet_constructor=lambda cin, cout: nn.Conv2d(cin, cout, 1), block_num=[1, 0])
    assert isinstance(net.operations[1].F, nn.Conv2d)
    with pytest.raises(ValueError, match="net_structure"):
        InvNet(subnet_constructor="Unet", block_num=[1, 1])
    with pytest.raises(ValueError, match="block_num"):
        InvNet(block_num=[1], down_num=2)


# --------------------------------------------------------------------------------------------
# Forward / reverse / jacobian
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kind", ["Resnet", "DBNet"])
def test_forward_reverse_jacobian_match_official(kind, fmt):
    ours, ref = pair(kind=kind, **SMALL)
    x = torch.rand(2, 3, 8, 12).contiguous(memory_format=fmt)
    x_before = x.clone()
    with torch.no_grad():
        y, jac = ours(x, cal_jacobian=True)
        y_ref, jac_ref = ref(x, cal_jacobian=True)
        assert y.shape == (2, 48, 2, 3)
        assert rel_err(y, y_ref) <= 1e-5
        assert abs(float(jac) - float(jac_ref)) <= 1e-5 * abs(float(jac_ref))
        z, zjac = ours(y, rev=True, cal_jacobian=True)
        z_ref, zjac_ref = ref(y, rev=True, cal_jacobian=True)
        assert rel_err(z, z_ref) <= 1e-5
        assert abs(float(zjac) - float(zjac_ref)) <= 1e-5 * abs(float(zjac_ref))
        assert rel_err(z, x) <= 1e-5          # invertible: reverse(forward(x)) == x
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("cfg", [dict(channel_in=1, channel_out=1, block_num=[1], down_num=1),
                                 dict(channel_in=1, channel_out=2, block_num=[1, 0, 1], down_num=3)], ids=str)
def test_variants_match_official_and_round_trip(cfg):
    ours, ref = pair(kind="DBNet", **cfg)
    s = 2 ** cfg["down_num"]
    x = torch.rand(3, cfg["channel_in"], 2 * s, 3 * s)
    with torch.no_grad():
        y = ours(x)
        assert rel_err(y, ref(x)) <= 1e-5
        assert rel_err(ours(y, rev=True), x) <= 1e-5


# --------------------------------------------------------------------------------------------
# denoise(): the official test procedure
# --------------------------------------------------------------------------------------------

def test_denoise_matches_step_by_step_and_is_reproducible():
    ours, ref = pair(**SMALL)
    x = torch.rand(2, 3, 8, 12)
    x_before = x.clone()
    a = ours.denoise(x, generator=torch.Generator().manual_seed(11))
    b = ours.denoise(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    c = ours.denoise(x, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        out = ref(x)
        y = torch.cat((out[:, :3], torch.randn(out[:, 3:].shape, generator=g)), 1)
        expected = ref(y, rev=True)[:, :3]
    assert a.shape == x.shape
    assert rel_err(a, expected) <= 1e-5
    assert torch.equal(x, x_before)


def test_denoise_noise_reaches_the_output():
    # Resnet subnets are randomly initialised: the noise drawn for the detail channels must
    # change the result.
    ours, _ = pair(**SMALL)
    x = torch.rand(1, 3, 8, 8)
    a = ours.denoise(x, generator=torch.Generator().manual_seed(1))
    b = ours.denoise(x, generator=torch.Generator().manual_seed(2))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("hw", [(8, 8), (8, 12)])
def test_self_ensemble_matches_official_forward_x8(hw):
    ours, ref = pair(**SMALL)
    x = torch.rand(1, 3, *hw)
    got = ours.denoise(x, generator=torch.Generator().manual_seed(5), self_ensemble=True)
    with torch.no_grad():
        expected = ref_forward_x8(ref, x, torch.Generator().manual_seed(5))
    assert got.shape == x.shape
    assert rel_err(got, expected) <= 1e-5
    # and it is the mean of 8 different passes, not one of them
    single = ours.denoise(x, generator=torch.Generator().manual_seed(5))
    assert (got - single).abs().max() > 1e-6


def test_self_ensemble_averages_eight_passes_per_image():
    ours, ref = pair(**SMALL)
    x = torch.rand(2, 3, 8, 12)
    calls = []
    hook = ours.operations[0].register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)))
    out = ours.denoise(x, generator=torch.Generator().manual_seed(0), self_ensemble=True)
    hook.remove()
    # 8 forward passes (4 upright, 4 transposed copies), then 8 reverse passes
    assert calls[:8] == [(2, 3, 8, 12)] * 4 + [(2, 3, 12, 8)] * 4
    assert calls[8:] == [(2, 12, 4, 6)] * 4 + [(2, 12, 6, 4)] * 4
    assert out.shape == x.shape                 # batch kept: the mean is per image
    with torch.no_grad():
        expected = ref_forward_x8(ref, x, torch.Generator().manual_seed(0))
    assert rel_err(out, expected) <= 1e-5


def test_denoise_with_batch_and_channels_last():
    ours, ref = pair(**SMALL)
    x = torch.rand(3, 3, 8, 4).contiguous(memory_format=torch.channels_last)
    a = ours.denoise(x, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        out = ref(x)
        expected = ref(torch.cat((out[:, :3], torch.randn(out[:, 3:].shape, generator=g)), 1), rev=True)[:, :3]
    assert rel_err(a, expected) <= 1e-5


# --------------------------------------------------------------------------------------------
# Loading and bad input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Resnet", "DBNet"])
def test_load_official_infers_invnet(tmp_path, kind):
    ref = RefInvNet(1, 2, ref_subnet(kind), [2, 1, 0], 3)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "g.pth")
    model = load_official(tmp_path / "g.pth")
    assert isinstance(model, InvNet) and not model.training
    assert (model.channel_in, model.channel_out, model.down_num, model.block_num) == (1, 2, 3, [2, 1, 0])
    assert isinstance(model.operations[1].F, DenseBlock if kind == "DBNet" else ResBlock)
    x = torch.rand(2, 1, 16, 8)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-5


def test_bad_input():
    ours, _ = pair(**SMALL)
    with pytest.raises(ShapeError, match=r"x: expected H and W multiples of 4"):
        ours(torch.rand(1, 3, 8, 10))
    with pytest.raises(ShapeError, match=r"x: expected H and W multiples of 4"):
        ours.denoise(torch.rand(1, 3, 6, 8))
    with pytest.raises(ShapeError, match=r"x: expected 3 channels .*got C=1"):
        ours.denoise(torch.rand(1, 1, 8, 8))
    with pytest.raises(ShapeError, match=r"x: expected 48 channels"):
        ours(torch.rand(1, 12, 2, 2), rev=True)
    with pytest.raises(DTypeError):
        ours(torch.rand(1, 3, 8, 8, dtype=torch.float64))
