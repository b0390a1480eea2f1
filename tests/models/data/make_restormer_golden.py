"""Regenerate restormer_golden.pt (and print the OFFICIAL_SHAPES digests) by running the official
swz30/Restormer architecture.

Not a test and not imported by the tests; needs the official ``restormer_arch.py``, from a
checkout or extracted from a mirror, outside this repository:

    python tests/models/data/make_restormer_golden.py --restormer <Restormer checkout> [--shapes]

(``--restormer`` takes the checkout's root or the ``restormer_arch.py`` file itself.) The file is
copied into a temporary folder and imported from there. Besides torch it imports only ``numbers``,
``pdb`` and ``einops``; when ``einops`` is not installed, a stand-in module of our own is written
beside it (:data:`EINOPS_STAND_IN`: a ``rearrange`` that splits the axes of the left-hand pattern,
permutes them and merges them as the right-hand pattern says, enough for the four patterns the
official file uses), so nothing has to be installed.

The file written holds only tensors (see tests/models/test_restormer.py for what they are): the
official model's state dict, the inputs and the official outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

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
    # not published: biases everywhere, the skip convolution, an empty level, another factor
    "tiny-bias-dual": dict(inp_channels=6, out_channels=3, dim=4, num_blocks=[1, 2, 0, 1], num_refinement_blocks=2,
                           heads=[1, 2, 4, 2], ffn_expansion_factor=1.5, bias=True, LayerNorm_type="BiasFree",
                           dual_pixel_task=True),
}

EINOPS_STAND_IN = '''\
"""Stand-in for einops.rearrange (fastdenoise's make_restormer_golden.py): plain reshapes and a permute."""
import math
import re

_GROUP = re.compile(r"\\(([^)]*)\\)|(\\S+)")


def _groups(side):
    return [(m.group(1) or m.group(2)).split() for m in _GROUP.finditer(side)]


def rearrange(tensor, pattern, **sizes):
    left, right = (_groups(s) for s in pattern.split("->"))
    if len(left) != tensor.dim():
        raise ValueError(f"{pattern!r}: {len(left)} input axes, tensor has {tensor.dim()}")
    known = dict(sizes)
    for names, size in zip(left, tensor.shape):
        unknown = [n for n in names if n not in known]
        if len(unknown) > 1:
            raise ValueError(f"{pattern!r}: cannot split {size} into {names}")
        if unknown:
            known[unknown[0]] = size // math.prod(known[n] for n in names if n in known)
    order = [n for names in left for n in names]
    x = tensor.reshape([known[n] for n in order])
    target = [n for names in right for n in names]
    x = x.permute([order.index(n) for n in target])
    return x.reshape([math.prod(known[n] for n in names) for names in right])
'''


def import_official(path: str, scratch: str):
    src = path if path.endswith(".py") else os.path.join(path, "basicsr", "models", "archs", "restormer_arch.py")
    shutil.copy(src, os.path.join(scratch, "official_restormer_arch.py"))
    if importlib.util.find_spec("einops") is None:
        with open(os.path.join(scratch, "einops.py"), "w") as f:
            f.write(EINOPS_STAND_IN)
        print("einops not installed: using the stand-in rearrange")
    sys.path.insert(0, scratch)
    import official_restormer_arch
    return official_restormer_arch


def randomise(net, seed):
    """Norm weights 1 + 0.2 randn, norm biases 0.1 randn, temperatures exp(0.5 randn)
    (named_parameters() order, generator seeded ``seed``); the rest keeps its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("temperature"):
                p.copy_(torch.exp(0.5 * torch.randn(p.shape, generator=g)))
    return net.eval()


def image(shape, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    ramp = torch.linspace(0, 1, h).view(1, 1, h, 1) * torch.linspace(1, 0, w).view(1, 1, 1, w)
    return 0.7 * ramp * torch.rand(b, c, 1, 1, generator=g) + 0.3 * torch.rand(shape, generator=g)


def run_as_test_script(net, x):
    """As Denoising/test_*.py: reflect-pad bottom / right to multiples of 8, run, crop."""
    h, w = x.shape[-2:]
    padh, padw = -h % 8, -w % 8
    return net(F.pad(x, (0, padw, 0, padh), "reflect"))[:, :, :h, :w]


def golden(arch, out_path):
    torch.manual_seed(0)
    net = randomise(arch.Restormer(**TINY), 1)
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    biasfree = arch.Restormer(**TINY_BIASFREE)
    biasfree.load_state_dict({k: v for k, v in sd.items() if not k.endswith(".body.bias")}, strict=True)
    dual = arch.Restormer(**TINY_DUAL)
    g = torch.Generator().manual_seed(2)
    dual_extra = {"patch_embed.proj.weight": 0.2 * torch.randn(dual.patch_embed.proj.weight.shape, generator=g),
                  "skip_conv.weight": 0.5 * torch.randn(dual.skip_conv.weight.shape, generator=g)}
    dual.load_state_dict(dict(sd, **dual_extra), strict=True)
    x = image((2, 3, 21, 19), 3)
    x16 = image((1, 3, 16, 16), 4)
    x_dual = image((2, 6, 21, 19), 5)
    with torch.no_grad():
        data = {"state_dict": sd, "dual_extra": dual_extra, "x": x, "x16": x16, "x_dual": x_dual,
                "out": run_as_test_script(net, x), "out16": net(x16),
                "out_biasfree": run_as_test_script(biasfree.eval(), x),
                "out_dual": run_as_test_script(dual.eval(), x_dual)}
    torch.save(data, out_path)
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)")


def shapes(arch):
    for name, cfg in PUBLISHED.items():
        with torch.device("meta"):
            sd = arch.Restormer(**cfg).state_dict()
        text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
        digest = hashlib.sha256(text.encode()).hexdigest()
        print(f'    "{name}": ({sum(v.numel() for v in sd.values())}, {len(sd)}, "{digest}"),')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restormer", required=True,
                    help="a checkout of swz30/Restormer, or its basicsr/models/archs/restormer_arch.py")
    ap.add_argument("--out", default=os.path.join(HERE, "restormer_golden.pt"))
    ap.add_argument("--shapes", action="store_true", help="also print the OFFICIAL_SHAPES digests")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        arch = import_official(args.restormer, scratch)
        golden(arch, args.out)
        if args.shapes:
            shapes(arch)


if __name__ == "__main__":
    main()
