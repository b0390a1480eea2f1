"""Regenerate ridnet_golden.pt and mprnet_golden.pt by running the official models.

Not a test and not imported by the tests; needs a checkout of each official repository:

    python tests/models/data/make_ridnet_mprnet_golden.py \
        --ridnet <RIDNet checkout>/TestCode/code --mprnet <MPRNet checkout>/Denoising/MPRNet.py

``--ridnet``: the folder holding the official ``model`` package (``model/ridnet.py``,
``model/ops.py``, ``model/common.py``); ``--mprnet``: the official ``MPRNet.py`` file. Each
file written holds the official model's ``state_dict()`` (random initialisation from a fixed
seed, some values then changed as described below), a ``config`` dict, the seeded inputs and
the official outputs, all float32 on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

RIDNET_CONFIG = dict(n_feats=16, reduction=16, rgb_range=255)
MPRNET_CONFIG = dict(in_c=3, out_c=3, n_feat=6, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=2,
                     kernel_size=3, reduction=4, bias=False)


def ridnet(code_dir: str, out: str) -> None:
    sys.path.insert(0, code_dir)
    from model import ridnet as official   # noqa: E402  (the official module)

    torch.manual_seed(0)
    model = official.RIDNET(SimpleNamespace(**RIDNET_CONFIG)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # The official mean shifts are trainable: move them off their initial values, so that
        # a model recomputing them instead of loading them fails the test.
        for shift in (model.sub_mean, model.add_mean):
            shift.weight.add_(0.02 * torch.randn(shift.weight.shape, generator=gen))
            shift.bias.add_(2.0 * torch.randn(shift.bias.shape, generator=gen))
        # With the default initialisation the predicted residual barely varies (std < 1 on the
        # 255 scale); a larger tail makes it vary well above the float32 rounding of the output.
        model.tail.weight.mul_(20.0)
        x = torch.rand(2, 3, 13, 17, generator=gen) * 255        # the official [0, 255] range
        y = model(x)
    torch.save({"config": RIDNET_CONFIG, "state_dict": model.state_dict(), "input": x, "output": y}, out)


def mprnet(path: str, out: str) -> None:
    spec = importlib.util.spec_from_file_location("official_mprnet", path)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)

    torch.manual_seed(0)
    model = official.MPRNet(**MPRNET_CONFIG).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        # The one PReLU every CAB shares: away from its 0.25 initial value.
        model.shallow_feat1[1].body[1].weight.fill_(0.13)
        x = torch.rand(2, 3, 16, 24, generator=gen)
        outs = list(model(x))
        # An odd size, run as the official demo.py runs one: reflection padding at the bottom /
        # right to the next multiple of 8, then the outputs cropped back.
        x_odd = torch.rand(1, 3, 13, 21, generator=gen)
        padded = F.pad(x_odd, (0, -21 % 8, 0, -13 % 8), mode="reflect")
        outs_odd = [o[..., :13, :21] for o in model(padded)]
    torch.save({"config": MPRNET_CONFIG, "state_dict": model.state_dict(), "input": x, "outputs": outs,
                "input_odd": x_odd, "outputs_odd": outs_odd}, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ridnet", help="folder holding the official RIDNet `model` package")
    p.add_argument("--mprnet", help="the official Denoising/MPRNet.py")
    args = p.parse_args()
    if args.ridnet:
        ridnet(args.ridnet, os.path.join(HERE, "ridnet_golden.pt"))
    if args.mprnet:
        mprnet(args.mprnet, os.path.join(HERE, "mprnet_golden.pt"))


if __name__ == "__main__":
    main()
