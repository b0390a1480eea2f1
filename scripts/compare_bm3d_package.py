"""PSNR of fastdenoise's BM3D / CBM3D against the authors' ``bm3d`` package on real images (CPU).

    python scripts/compare_bm3d_package.py [--shared ../shared] [--sigma 25] [-o benchmarks/results/<file>.md]

Images: Set12 (../shared/data/set12, grey) and scikit-image's astronaut, coffee and chelsea
(colour, whole images), with the noise protocol of issue 3: per image ``np.random.seed(0)`` and
``np.random.normal(0, sigma / 255, shape)`` added to the float image in [0, 1], not clipped.
PSNR of the output clamped to [0, 1], against the clean image.

Contenders:

* ``fastdenoise``: ``classic.bm3d(noisy, sigma)`` (both stages, the published "np" parameters:
  lambda_3D = 2.7 and the Wiener gains P^2 / (P^2 + sigma^2));
* ``bm3d-pkg-2.7``: the package (4.x) with ``lambda_thr3d = 2.7`` and ``mu2 = 1``, the same
  published parameters;
* ``bm3d-pkg``: the package's default "np" profile, which chooses lambda_3D and mu^2 from the
  noise PSD (Makinen, Azzari & Foi 2020).

The package is an optional comparator licensed for non-commercial use only: it is imported here,
never a dependency of fastdenoise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import pathlib
import platform

import numpy as np
import torch

import fastdenoise
from fastdenoise import classic
from fastdenoise.io import read_image
from fastdenoise.metrics import psnr


def _images(shared: pathlib.Path):
    for path in sorted((shared / "data" / "set12").glob("*.png")):
        yield f"set12/{path.name}", read_image(path, as_tensor=True).double()
    from skimage import data

    for name in ("astronaut", "coffee", "chelsea"):
        yield name, torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].double() / 255


def _package(pkg, noisy: torch.Tensor, sigma: float, fixed: bool) -> torch.Tensor:
    profile = pkg.BM3DProfile()
    if fixed:
        profile.lambda_thr3d, profile.mu2 = 2.7, 1.0
    img = noisy[0].permute(1, 2, 0).numpy()
    if img.shape[2] == 1:
        return torch.from_numpy(np.asarray(pkg.bm3d(img[..., 0], sigma, profile)))[None, None]
    return torch.from_numpy(np.asarray(pkg.bm3d_rgb(img, sigma, profile))).permute(2, 0, 1)[None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0-255 scale")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    import bm3d as pkg  # the optional comparator

    sigma = args.sigma / 255
    names = ("fastdenoise", "bm3d-pkg-2.7", "bm3d-pkg")
    rows = []
    for name, clean in _images(pathlib.Path(args.shared)):
        np.random.seed(0)
        noisy = clean + torch.from_numpy(np.random.normal(0, sigma, tuple(clean.shape)))
        outs = {"fastdenoise": classic.bm3d(noisy.float(), sigma).double(),
                "bm3d-pkg-2.7": _package(pkg, noisy, sigma, True),
                "bm3d-pkg": _package(pkg, noisy, sigma, False)}
        row = {k: psnr(v.clamp(0, 1), clean).item() for k, v in outs.items()}
        rows.append((name, tuple(clean.shape[1:]), row))
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)

    def mean(prefix_grey: bool, key: str) -> float:
        sel = [r[key] for n, _, r in rows if n.startswith("set12/") == prefix_grey]
        return sum(sel) / len(sel)

    lines = [
        f"# BM3D / CBM3D PSNR: fastdenoise against the authors' bm3d package, sigma {args.sigma:g}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"fastdenoise {fastdenoise.__version__}, bm3d package {importlib.metadata.version('bm3d')}",
        f"- command: `python scripts/compare_bm3d_package.py --sigma {args.sigma:g}`",
        "- noise: per image `np.random.seed(0)`, `np.random.normal(0, sigma/255, shape)` added to the "
        "float image, not clipped; PSNR of the output clamped to [0, 1]",
        "- `bm3d-pkg-2.7`: the package with the published fixed parameters (lambda_3D 2.7, mu^2 1), "
        "as fastdenoise; `bm3d-pkg`: its default, parameters chosen from the noise PSD",
        "",
        "| image | size | " + " | ".join(f"{n} dB" for n in names) + " | fastdenoise − bm3d-pkg-2.7 |",
        "|---|---|" + "---:|" * (len(names) + 1),
    ]
    for name, shape, row in rows:
        size = "x".join(map(str, shape))
        lines.append(f"| {name} | {size} | " + " | ".join(f"{row[n]:.2f}" for n in names)
                     + f" | {row['fastdenoise'] - row['bm3d-pkg-2.7']:+.2f} |")
    for grey, label in ((True, "mean, Set12 (grey)"), (False, "mean, colour")):
        if any(n.startswith("set12/") == grey for n, _, _ in rows):
            m = {n: mean(grey, n) for n in names}
            lines.append(f"| **{label}** | | " + " | ".join(f"**{m[n]:.2f}**" for n in names)
                         + f" | **{m['fastdenoise'] - m['bm3d-pkg-2.7']:+.2f}** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
