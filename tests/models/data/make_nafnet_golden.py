"""Regenerate nafnet_golden.pt (and print the OFFICIAL_SHAPES digests) by running the official
megvii-research/NAFNet architectures.

Not a test and not imported by the tests; needs a checkout of the official repository:

    python tests/models/data/make_nafnet_golden.py --nafnet <NAFNet checkout> [--shapes]

The four official files it needs (``basicsr/models/archs/{NAFNet_arch,Baseline_arch,local_arch,
arch_util}.py``) are copied into a temporary folder beside empty ``basicsr`` package files and a
one-function ``basicsr.utils`` (``get_root_logger``, the only other name they import), so the
rest of BasicSR (and its dependencies) is not needed. The file written holds only tensors: the
two official state dicts, the input and the official outputs (see tests/models/test_nafnet.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH_FILES = ("NAFNet_arch.py", "Baseline_arch.py", "local_arch.py", "arch_util.py")

NAF = dict(img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
BASE = dict(NAF, dw_expand=1, ffn_expand=2)
TRAIN = (1, 3, 10, 10)

SIDD = dict(enc_blk_nums=[2, 2, 4, 8], middle_blk_num=12, dec_blk_nums=[2, 2, 2, 2])
GOPRO = dict(enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])
PUBLISHED = {
    "NAFNet-SIDD-width32": ("NAFNet", dict(width=32, **SIDD)),
    "NAFNet-SIDD-width64": ("NAFNet", dict(width=64, **SIDD)),
    "Baseline-SIDD-width32": ("Baseline", dict(width=32, dw_expand=1, ffn_expand=2, **SIDD)),
    "Baseline-SIDD-width64": ("Baseline", dict(width=64, dw_expand=2, ffn_expand=2, **SIDD)),
    "NAFNet-GoPro-width32": ("NAFNet", dict(width=32, **GOPRO)),
    "NAFNet-GoPro-width64": ("NAFNet", dict(width=64, **GOPRO)),
    "Baseline-GoPro-width32": ("Baseline", dict(width=32, dw_expand=1, ffn_expand=2, **GOPRO)),
    "Baseline-GoPro-width64": ("Baseline", dict(width=64, dw_expand=2, ffn_expand=2, **GOPRO)),
}


def import_official(checkout: str, scratch: str):
    archs = os.path.join(scratch, "basicsr", "models", "archs")
    os.makedirs(archs)
    os.makedirs(os.path.join(scratch, "basicsr", "utils"))
    for name in ARCH_FILES:
        shutil.copy(os.path.join(checkout, "basicsr", "models", "archs", name), archs)
    for pkg in ("basicsr", "basicsr/models", "basicsr/models/archs"):
        open(os.path.join(scratch, pkg, "__init__.py"), "w").close()
    with open(os.path.join(scratch, "basicsr", "utils", "__init__.py"), "w") as f:
        f.write("import logging\n\n\ndef get_root_logger(*args, **kwargs):\n"
                "    return logging.getLogger('basicsr')\n")
    sys.path.insert(0, scratch)
    import basicsr.models.archs.Baseline_arch as baseline_arch
    import basicsr.models.archs.NAFNet_arch as nafnet_arch
    return nafnet_arch, baseline_arch


def randomise(net, seed):
    """beta / gamma 0.5 randn, norm weights 1 + 0.2 randn and biases 0.1 randn, attention conv
    weights 2 randn (named_parameters() order, generator seeded ``seed``); the rest keeps its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif (".sca." in name or ".se." in name) and name.endswith("weight"):
                p.copy_(2.0 * torch.randn(p.shape, generator=g))
    return net.eval()


def golden(nafnet_arch, baseline_arch, out_path):
    torch.manual_seed(0)
    naf = randomise(nafnet_arch.NAFNet(**NAF), 1)
    base = randomise(baseline_arch.Baseline(**BASE), 2)
    g = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0, 1, 30).view(1, 1, 30, 1) * torch.linspace(1, 0, 27).view(1, 1, 1, 27)
    x = 0.7 * ramp * torch.rand(2, 3, 1, 1, generator=g) + 0.3 * torch.rand(2, 3, 30, 27, generator=g)
    data = {"x": x, "nafnet": {k: v.detach().clone() for k, v in naf.state_dict().items()},
            "baseline": {k: v.detach().clone() for k, v in base.state_dict().items()}}
    local_cases = [("out_nafnet_local", nafnet_arch.NAFNetLocal, NAF, "nafnet", False),
                   ("out_nafnet_local_fast", nafnet_arch.NAFNetLocal, NAF, "nafnet", True),
                   ("out_baseline_local", baseline_arch.BaselineLocal, BASE, "baseline", False)]
    with torch.no_grad():
        data["out_nafnet"] = naf(x)
        data["out_baseline"] = base(x)
        for key, cls, cfg, sd, fast in local_cases:
            net = cls(train_size=TRAIN, fast_imp=fast, **cfg)
            net.load_state_dict(data[sd], strict=True)
            data[key] = net.eval()(x)
    torch.save(data, out_path)
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)")


def shapes(nafnet_arch, baseline_arch):
    for name, (cls_name, cfg) in PUBLISHED.items():
        cls = getattr(nafnet_arch if cls_name == "NAFNet" else baseline_arch, cls_name)
        with torch.device("meta"):
            sd = cls(**cfg).state_dict()
        text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
        digest = hashlib.sha256(text.encode()).hexdigest()
        print(f'    "{name}": ({sum(v.numel() for v in sd.values())}, {len(sd)}, "{digest}"),')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nafnet", required=True, help="a checkout of megvii-research/NAFNet")
    ap.add_argument("--out", default=os.path.join(HERE, "nafnet_golden.pt"))
    ap.add_argument("--shapes", action="store_true", help="also print the OFFICIAL_SHAPES digests")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        nafnet_arch, baseline_arch = import_official(args.nafnet, scratch)
        golden(nafnet_arch, baseline_arch, args.out)
        if args.shapes:
            shapes(nafnet_arch, baseline_arch)


if __name__ == "__main__":
    main()
