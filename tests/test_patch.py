"""fastdenoise.patch / unpatch: on the models of this repository built plain, and on module trees
written in this file the way the official code (and forks of it) write them. Swaps share the
parameters, outputs stay the same (float32, CPU autocast in bfloat16 / float16, the GPU in
float16 / bfloat16 autocast and under torch.compile(fullgraph=True)), look-alikes are left alone
with a reason, patching is idempotent and unpatch restores the original modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdenoise
from fastdenoise import nn as fnn
from fastdenoise.models import MPRNet, NAFNet, NAFNetLocal, Restormer, RIDNet
from fastdenoise.models.nafnet import Baseline
from fastdenoise.patch import FUSED_TYPES, LeftAlone, PatchReport, Replacement

SMALL_NAF = dict(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1], middle_blk_num=1)
SMALL_MPR = dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1)
SMALL_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, LayerNorm_type="BiasFree")


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with non-trivial residual scales, norms and attention; the shared PReLU
    gets one value (it is one parameter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("temperature"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 + 0.3)
            elif name.endswith(("beta", "gamma")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 4 and p.shape[-1] == 1 and p.shape[-2] == 1 and "mean" not in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 4:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "mean" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _plain_models():
    return {
        "nafnet": lambda: (NAFNet(**SMALL_NAF, fused=False), 1.0, 36),
        "baseline": lambda: (Baseline(**SMALL_NAF, fused=False), 1.0, 36),
        "nafnet_local": lambda: (NAFNetLocal(**SMALL_NAF, train_size=(1, 3, 8, 8), fused=False), 1.0, 36),
        "mprnet": lambda: (MPRNet(**SMALL_MPR, fused=False), 1.0, 32),
        "ridnet": lambda: (RIDNet(n_feats=16, fused=False), 255.0, 21),
        "restormer": lambda: (Restormer(**SMALL_RESTORMER, fused=False), 1.0, 19),
    }


def _run(model, x):
    out = model(x)
    return out[0] if isinstance(out, list) else out


def _close(got, want, tol=1e-5):
    """Max difference within ``tol`` times the largest magnitude of ``want`` (random weights
    give outputs in the hundreds; the fused ops sum in another order)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * want.double().abs().max().item(), err


def _fused_types(model):
    return [type(m) for m in model.modules() if isinstance(m, FUSED_TYPES)]


# --------------------------------------------------------------------------------------------
# Our models, built plain
# --------------------------------------------------------------------------------------------

EXPECTED = {"nafnet": {"NAFBlock": 5}, "baseline": {"BaselineBlock": 5}, "nafnet_local": {"NAFBlock": 5},
            "mprnet": {"CAB": 34}, "ridnet": {"RIDNetCALayer": 4}, "restormer": {"TransformerBlock": 8}}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_patch_our_plain_models(name):
    model, scale, hw = _plain_models()[name]()
    _randomise(model, seed=len(name))
    x = torch.rand(2, 3, hw, hw - 3) * scale
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    with torch.no_grad():
        want = _run(model, x)
    report = fastdenoise.patch(model)
    assert isinstance(report, PatchReport) and report.model is model
    assert report.counts() == EXPECTED[name] and report.count == sum(EXPECTED[name].values())
    assert report.left_alone == [] and report.already_fused == []
    assert all(isinstance(r, Replacement) and r.after.startswith("fastdenoise.nn.") for r in report.replaced)
    for r in report.replaced:
        assert type(model.get_submodule(r.path)).__name__ == r.after.rsplit(".", 1)[-1]
    # the same parameters (objects, keys, values)
    assert [id(p) for p in model.parameters()] == params_before
    sd_after = model.state_dict()
    assert list(sd_after) == list(sd_before)
    assert all(torch.equal(sd_after[k], v) for k, v in sd_before.items())
    with torch.no_grad():
        got = _run(model, x)
        got_cl = _run(model, x.contiguous(memory_format=torch.channels_last))
    _close(got, want)
    _close(got_cl, want)
    assert got_cl.is_contiguous(memory_format=torch.channels_last)
    # idempotent: a second patch changes nothing and says where the twins are
    again = fastdenoise.patch(model)
    assert again.count == 0 and sorted(again.already_fused) == sorted(r.path for r in report.replaced)
    # unpatch puts the very same modules back
    originals = {r.path: r.before for r in report.replaced}
    assert fastdenoise.unpatch(model) is model
    assert not _fused_types(model)
    for path, qual in originals.items():
        m = model.get_submodule(path)
        assert f"{type(m).__module__}.{type(m).__qualname__}" == qual
    with torch.no_grad():
        assert torch.equal(_run(model, x), want)


def test_models_built_fused_are_already_fused():
    model = MPRNet(**SMALL_MPR)
    report = fastdenoise.patch(model)
    assert report.count == 0 and len(report.already_fused) == 34
    assert fastdenoise.unpatch(model) is model and len(_fused_types(model)) > 0   # built fused: stays


def test_inplace_false_leaves_the_model_alone():
    model = _randomise(NAFNet(**SMALL_NAF, fused=False), 3)
    x = torch.rand(1, 3, 20, 17)
    report = fastdenoise.patch(model, inplace=False)
    assert report.model is not model and report.count == 5
    assert not _fused_types(model) and len(_fused_types(report.model)) > 0
    with torch.no_grad():
        _close(report.model(x), model(x))


def test_root_block_and_shared_modules():
    block = _randomise(NAFNet(**SMALL_NAF, fused=False), 4).middle_blks[0]
    report = fastdenoise.patch(block)
    assert isinstance(report.model, fnn.NAFBlock) and report.replaced[0].path == ""
    assert fastdenoise.unpatch(report.model) is block
    # one module reached at two paths becomes one twin at both
    ca = RIDNet(n_feats=16, fused=False).b1.ca
    tree = nn.ModuleDict({"a": nn.Sequential(ca), "b": nn.Sequential(nn.Identity(), ca)})
    report = fastdenoise.patch(tree)
    assert report.count == 1 and tree["a"][0] is tree["b"][1]
    assert isinstance(tree["a"][0], fnn.RIDNetCALayer)
    fastdenoise.unpatch(tree)
    assert tree["a"][0] is ca and tree["b"][1] is ca


def test_dtype_and_device_moves_reach_the_originals():
    model = NAFNet(**SMALL_NAF, fused=False)
    original = model.middle_blks[0]
    fastdenoise.patch(model)
    model.double()
    assert original.conv1.weight.dtype == torch.float64 and original.norm1.weight.dtype == torch.float64
    fastdenoise.unpatch(model)
    assert model.middle_blks[0] is original


def test_training_mode_and_backward_after_patch():
    model = _randomise(MPRNet(**SMALL_MPR, fused=False), 5).train()
    fastdenoise.patch(model)
    assert all(m.training for m in model.modules())
    x = torch.rand(1, 3, 16, 16)
    sum(o.square().mean() for o in model(x)).backward()
    act = model.shallow_feat1[1].body[1]
    assert isinstance(act, nn.PReLU) and act.weight.grad is not None
    assert model.stage3_orsnet.orb1.body[0].CA.conv_du[0].weight.grad is not None


def test_bad_input():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got dict"):
        fastdenoise.patch({})
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got int"):
        fastdenoise.unpatch(3)
    m = nn.Sequential(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match=r"^inplace: expected a bool, got str 'no'$"):   # truthy: would patch m
        fastdenoise.patch(m, inplace="no")
    with pytest.raises(TypeError, match=r"^verify: expected a bool, got int 0$"):
        fastdenoise.patch(m, verify=0)


# --------------------------------------------------------------------------------------------
# Module trees written as the official code (and forks) write them
# --------------------------------------------------------------------------------------------

class _LayerNormFunction(torch.autograd.Function):
    """NAFNet normalises with its own autograd function; written here in the same spirit."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + eps).sqrt()
        return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, g):        # never reached in these tests (inference)
        raise NotImplementedError


class LayerNorm2d(nn.Module):
    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.register_parameter("weight", nn.Parameter(torch.ones(channels)))
        self.register_parameter("bias", nn.Parameter(torch.zeros(channels)))
        self.eps = eps

    def forward(self, x):
        return _LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


class SimpleGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    def __init__(self, c, DW_Expand=2, FFN_Expand=2, drop_out_rate=0.0):
        super().__init__()
        dw = c * DW_Expand
        self.conv1 = nn.Conv2d(c, dw, 1, padding=0, stride=1, groups=1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, stride=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(dw // 2, c, 1, padding=0, stride=1, groups=1, bias=True)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1, bias=True))
        self.sg = SimpleGate()
        ffn = FFN_Expand * c
        self.conv4 = nn.Conv2d(c, ffn, 1, bias=True)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp):
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.sg(x)
        x = x * self.sca(x)
        y = inp + self.dropout1(self.conv3(x)) * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


class ForkNet(nn.Module):
    """A fork's network: official NAFBlocks in a ModuleList, a stray LayerNorm2d and SimpleGate
    outside any block, and a channel attention copied from MPRNet."""

    def __init__(self, c=8):
        super().__init__()
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([NAFBlock(c), NAFBlock(c)])
        self.norm = LayerNorm2d(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.gate = SimpleGate()
        self.att = CALayer(c, 4)
        self.ending = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        h = self.intro(x)
        for b in self.blocks:
            h = b(h)
        h = self.att(self.gate(self.expand(self.norm(h))))
        return self.ending(h) + x


class CALayer(nn.Module):                  # MPRNet's (also RCAN's) layout
    def __init__(self, channel, reduction=16, bias=False):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=bias),
                                     nn.ReLU(inplace=True),
                                     nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=bias),
                                     nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    def __init__(self, n_feat, kernel_size, reduction, bias, act):
        super().__init__()
        body = [nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias), act,
                nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias)]
        self.CA = CALayer(n_feat, reduction, bias=bias)
        self.body = nn.Sequential(*body)

    def forward(self, x):
        res = self.body(x)
        res = self.CA(res)
        return res + x


class MPRStyle(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        act = nn.PReLU()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.cabs = nn.Sequential(*[CAB(c, 3, 4, bias=False, act=act) for _ in range(3)])
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.cabs(self.head(x))) + x


def test_patch_official_style_trees():
    torch.manual_seed(0)
    fork = _randomise(ForkNet(), 6)
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad():
        want = fork(x)
    report = fastdenoise.patch(fork)
    assert report.counts() == {"NAFBlock": 2, "LayerNorm2d": 1, "SimpleGate": 1, "MPRNetCALayer": 1}
    assert {r.path for r in report.replaced} == {"blocks.0", "blocks.1", "norm", "gate", "att"}
    assert all(r.before.startswith(__name__) for r in report.replaced)
    with torch.no_grad():
        _close(fork(x), want)

    mpr = _randomise(MPRStyle(), 7)
    with torch.no_grad():
        want = mpr(x)
    report = fastdenoise.patch(mpr)
    assert report.counts() == {"CAB": 3}
    acts = {id(c.body[1]) for c in mpr.cabs}
    assert len(acts) == 1 and sum(1 for _ in mpr.parameters() if _.numel() == 1) == 1   # one shared PReLU
    with torch.no_grad():
        _close(mpr(x), want)


def _to_3d(x):
    return x.flatten(2).transpose(1, 2)


def _to_4d(x, h, w):
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class BiasFree_LayerNorm(nn.Module):  # noqa: N801 -- official class names
    def __init__(self, normalized_shape):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))

    def forward(self, x):
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(sigma + 1e-5) * self.weight


class WithBias_LayerNorm(nn.Module):  # noqa: N801
    def __init__(self, normalized_shape):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    def __init__(self, dim, LayerNorm_type):  # noqa: N803
        super().__init__()
        self.body = BiasFree_LayerNorm(dim) if LayerNorm_type == "BiasFree" else WithBias_LayerNorm(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        return _to_4d(self.body(_to_3d(x)), h, w)


class FeedForward(nn.Module):
    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2,
                                bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):  # noqa: N803
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _SpatialAttention(nn.Module):
    """Another project's ``Attention`` (token attention with a Linear qkv): not Restormer's."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        return x


def test_patch_official_style_restormer_tree():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                        TransformerBlock(8, 2, 2.66, False, "BiasFree"),
                        TransformerBlock(8, 1, 2.66, True, "WithBias"),
                        LayerNorm(8, "WithBias"), FeedForward(8, 2.66, False), Attention(8, 4, False),
                        nn.Conv2d(8, 3, 3, padding=1))
    _randomise(net, 21)
    odd = type("Attention", (_SpatialAttention,), {})(8)
    holder = nn.ModuleDict({"net": net, "other": odd})
    x = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        want = net(x)
    report = fastdenoise.patch(holder)
    assert report.counts() == {"TransformerBlock": 2, "RestormerLayerNorm": 1, "GDFN": 1, "MDTA": 1}
    assert [a.path for a in report.left_alone] == ["other"]
    assert "structure differs" in report.left_alone[0].reason
    assert isinstance(net[1].norm1, fnn.RestormerLayerNorm) and net[1].norm1.bias_free
    assert not net[2].norm1.bias_free
    with torch.no_grad():
        _close(net(x), want)
    fastdenoise.unpatch(holder)
    assert type(net[1]) is TransformerBlock and type(net[4]) is FeedForward


class _Imposter(nn.Module):
    """A LayerNorm2d of another project: same attributes and shapes, but it normalises over
    (C, H, W) (a GroupNorm with one group)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


def test_look_alikes_are_left_alone_with_a_reason():
    imposter = type("LayerNorm2d", (_Imposter,), {})(8)
    bad_ca = CALayer(8, 4)
    bad_ca.conv_du[3] = nn.Hardsigmoid()
    odd_ca = type("CALayer", (nn.Module,), {})()                    # neither MPRNet's nor RIDNet's
    odd_ca.fc = nn.Linear(4, 4)
    tree = nn.Sequential(imposter, bad_ca, odd_ca)
    report = fastdenoise.patch(tree)
    assert report.count == 0
    reasons = {a.path: a.reason for a in report.left_alone}
    assert all(isinstance(a, LeftAlone) for a in report.left_alone)
    assert "forward differs" in reasons["0"]
    assert "structure differs" in reasons["1"] and "Sigmoid" in reasons["1"]
    assert "structure differs" in reasons["2"] and "conv_du" in reasons["2"]
    assert tree[0] is imposter and tree[1] is bad_ca
    assert "left alone 0" in str(report)
    # verify=False trusts the structure
    assert fastdenoise.patch(tree, verify=False).counts() == {"LayerNorm2d": 1}


def test_blocks_with_hooks_are_left_alone():
    """A block with a hook on it or inside it keeps running its own forward (the hooks keep
    firing, and none fires during patch()); what has no hooks inside it is still swapped."""
    model = _randomise(NAFNet(img_channel=3, width=8, middle_blk_num=2, enc_blk_nums=[1], dec_blk_nums=[1],
                              fused=False), 4).eval()
    calls = []
    on_block = model.middle_blks[0]
    handle = on_block.register_forward_hook(lambda *a: calls.append("block"))
    inner = model.middle_blks[1]
    inner.sca[1].register_forward_pre_hook(lambda *a: calls.append("sca"))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    calls.clear()
    report = fastdenoise.patch(model)
    assert calls == []
    reasons = {a.path: a.reason for a in report.left_alone}
    assert reasons["middle_blks.0"].startswith("it has hooks registered")
    assert reasons["middle_blks.1"].startswith("its submodule sca.1 has hooks registered")
    assert model.middle_blks[0] is on_block and model.middle_blks[1] is inner
    assert type(on_block.norm1).__name__ == "LayerNorm2d" and isinstance(on_block.norm1, FUSED_TYPES)
    assert isinstance(model.encoders[0][0], FUSED_TYPES)
    with torch.no_grad():
        _close(model(x), want)
    assert calls == ["block", "sca"]
    handle.remove()                                   # without its hook, the block is swapped next time
    assert "middle_blks.0" in {r.path for r in fastdenoise.patch(model).replaced}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["nafnet", "mprnet", "ridnet", "restormer"])
def test_cpu_autocast_patched_matches_eager(name, dtype):
    """Under CPU autocast the patched model's error against the float32 model is at most twice
    the unpatched model's (DESIGN.md)."""
    model, scale, hw = _plain_models()[name]()
    _randomise(model, seed=11)
    x = torch.rand(1, 3, hw, hw) * scale
    with torch.no_grad():
        exact = _run(model, x).double()
        with torch.autocast("cpu", dtype=dtype):
            eager = _run(model, x).double()
        fastdenoise.patch(model)
        with torch.autocast("cpu", dtype=dtype):
            fused = _run(model, x).double()
    err_eager = (eager - exact).abs().max().item()
    err_fused = (fused - exact).abs().max().item()
    assert err_eager > 0
    assert err_fused <= 2 * err_eager


@pytest.mark.parametrize("name", ["nafnet", "mprnet", "ridnet", "restormer"])
def test_patched_model_traces_whole(name):
    """torch.compile(fullgraph=True) traces a patched model (CPU: aot_eager; Inductor on the GPU)."""
    model, scale, hw = _plain_models()[name]()
    _randomise(model, seed=12)
    fastdenoise.patch(model)
    x = torch.rand(1, 3, 16, 16) * scale
    with torch.no_grad():
        want = _run(model, x)
        got = _run(torch.compile(model, fullgraph=True, backend="aot_eager"), x)
    _close(got, want)


# --------------------------------------------------------------------------------------------
# GPU: Triton kernels, float16 / bfloat16 autocast, Inductor
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["nafnet", "baseline", "mprnet", "ridnet", "restormer"])
def test_gpu_patched_matches_eager(name, dtype):
    model, scale, _ = _plain_models()[name]()
    model = _randomise(model, seed=13).cuda()
    x = (torch.rand(2, 3, 40, 56) * scale).cuda()
    with torch.no_grad():
        exact = _run(model.double(), x.double())
        model.float()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            eager = _run(model, x).double()
        fastdenoise.patch(model)
        assert _fused_types(model)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            fused = _run(model, x).double()
            fused_cl = _run(model, x.contiguous(memory_format=torch.channels_last)).double()
    if dtype == torch.float32:
        _close(fused, eager, 1e-4)
        _close(fused_cl, eager, 1e-4)
    else:
        err_eager = (eager - exact).abs().max().item()
        assert (fused - exact).abs().max().item() <= 2 * err_eager
        assert (fused_cl - exact).abs().max().item() <= 2 * err_eager


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["nafnet", "mprnet", "ridnet", "restormer"])
def test_gpu_patched_model_compiles_fullgraph(name):
    model, scale, _ = _plain_models()[name]()
    model = _randomise(model, seed=14).cuda()
    fastdenoise.patch(model)
    x = (torch.rand(1, 3, 32, 48) * scale).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        want = _run(model, x).float()
        got = _run(torch.compile(model, fullgraph=True), x).float()
    _close(got, want, 2e-2)
