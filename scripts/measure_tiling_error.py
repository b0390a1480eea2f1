"""Measure the tiled-vs-untiled error of fastdenoise.tiled per model, blend and overlap (CPU).

    python scripts/measure_tiling_error.py [--shared ../shared] [-o benchmarks/results/<file>.md]

Models: the official KAIR DnCNN sigma=25 checkpoint (../shared/checkpoints/dncnn_25.pth) on the
Set12 image 05.png with Gaussian noise 25 (seed 0), and -- no trained weights for them here -- the
channel-attention / transformer models of fastdenoise.models at small widths with seeded random
weights (scaled so their blocks are not identities) on a seeded smooth-plus-noise colour image:
their numbers show the trend with the overlap, not the size of the error with trained weights.
For each case: the tile, the overlap, the blend, max |tiled - untiled| and the PSNR of the tiled
output against the untiled one (both clamped to [0, 1]; higher is closer).
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import platform

import numpy as np
import torch

import fastdenoise
from fastdenoise.io import read_image
from fastdenoise.models import MPRNet, NAFNet, Restormer, RIDNet, load_official


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("temperature"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


def _psnr(a, b):
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    clean = read_image(pathlib.Path(args.shared) / "data" / "set12" / "05.png", as_tensor=True)
    gen = np.random.default_rng(0)
    noisy = clean + torch.from_numpy(gen.normal(0, 25 / 255, clean.shape).astype(np.float32))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 192), torch.linspace(0, 1, 256), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(6 * xx + k) * torch.cos(4 * yy - k) for k in range(3)])[None]
    colour = base + 0.1 * torch.randn(base.shape, generator=torch.Generator().manual_seed(1))
    cases = [
        ("DnCNN sigma 25 (KAIR checkpoint)", load_official(pathlib.Path(args.shared) / "checkpoints" / "dncnn_25.pth"),
         noisy, 96, (0, 16, 34, 48, 72), ("crop", "hann", "average")),
        ("NAFNet width 16 (random weights)", _randomise(NAFNet(width=16, enc_blk_nums=[1, 1, 1], middle_blk_num=1,
                                                               dec_blk_nums=[1, 1, 1]), 1),
         colour, 96, (8, 16, 32, 48), ("hann", "average")),
        ("RIDNet n_feats 16 (random weights)", _randomise(RIDNet(n_feats=16), 2), colour * 255, 96, (8, 16, 32, 48),
         ("hann", "average")),
        ("MPRNet n_feat 16 (random weights)", _randomise(MPRNet(n_feat=16, scale_unetfeats=8, scale_orsnetfeats=8,
                                                                num_cab=2), 3),
         colour, 96, (8, 16, 32, 48), ("hann", "average")),
        ("Restormer dim 8 (random weights)", _randomise(Restormer(dim=8, num_blocks=[1, 1, 1, 1],
                                                                  num_refinement_blocks=1,
                                                                  LayerNorm_type="BiasFree"), 4),
         colour, 96, (8, 16, 32, 48), ("hann", "average")),
    ]
    for label, model, x, tile, overlaps, blends in cases:
        scale = 255.0 if "RIDNet" in label else 1.0
        with torch.inference_mode():
            whole = model(x)
            whole = (whole[0] if isinstance(whole, list) else whole) / scale
            for blend in blends:
                for ov in overlaps:
                    t = fastdenoise.tiled(model, tile=tile, overlap=ov, blend=blend, progress=False)
                    y = t(x) / scale
                    rows.append((label, f"{x.shape[-1]}x{x.shape[-2]}", tile, ov, blend,
                                 (y - whole).abs().max().item(), _psnr(y.clamp(0, 1), whole.clamp(0, 1))))
                    print(rows[-1], flush=True)
    lines = [f"# Tiled vs untiled error (CPU, {datetime.date.today()})", "",
             f"Measured with `scripts/measure_tiling_error.py` on {platform.machine()} "
             f"({torch.get_num_threads()} threads), torch {torch.__version__}, fastdenoise {fastdenoise.__version__}.",
             "Random-weight rows show the trend with the overlap only (no trained weights here).", "",
             "| model | image | tile | overlap | blend | max abs diff | PSNR vs untiled (dB) |",
             "|---|---|---|---|---|---|---|"]
    for label, size, tile, ov, blend, mx, p in rows:
        lines.append(f"| {label} | {size} | {tile} | {ov} | {blend} | {mx:.3g} | "
                     f"{'inf (identical)' if p == float('inf') else f'{p:.1f}'} |")
    text = "\n".join(lines) + "\n"
    if args.output:
        pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
