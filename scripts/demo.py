#!/usr/bin/env python3
"""Denoise a real photograph with the fastdenoise command line, and measure the result.

Takes scikit-image's ``camera`` (512 x 512 grey, shipped with scikit-image), adds Gaussian
noise of standard deviation 25 on the 0-255 scale (fixed seed), writes ``clean.png`` and
``noisy.png`` (8-bit) into DIR, then runs, in this process,

    fastdenoise denoise noisy.png -o denoised.png --reference clean.png [--method METHOD]

which prints the estimated sigma, the time and PSNR / SSIM against the clean image. Exits with
the command's exit code. (Clipping to 0..255 -- about 12 % of camera is darker than 25 --
makes the noise actually added 23.8 on the 0-255 scale, not 25: that is what the estimate
should find.)

    python3 scripts/demo.py                 # default method (BM3D), files in a temporary dir
    python3 scripts/demo.py out/ --method nlm --device cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

SIGMA = 25.0        # on the 0-255 scale
SEED = 0


def make_images(directory: str) -> tuple:
    """Write clean.png and noisy.png (camera + N(0, 25) noise, clipped and rounded to 8 bits)."""
    from skimage import data

    from fastdenoise.io import write_image

    clean = data.camera()                                           # (512, 512) uint8
    noise = np.random.default_rng(SEED).normal(0.0, SIGMA, clean.shape)
    noisy = np.clip(np.round(clean.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    os.makedirs(directory, exist_ok=True)
    clean_path, noisy_path = os.path.join(directory, "clean.png"), os.path.join(directory, "noisy.png")
    write_image(clean_path, clean)
    write_image(noisy_path, noisy)
    return clean_path, noisy_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="where to write the images (default: a new temporary directory)")
    parser.add_argument("--method", help="bm3d (the command's default), nlm, or a checkpoint path")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    args = parser.parse_args(argv)

    from fastdenoise.cli import main as fastdenoise_main

    directory = args.directory or tempfile.mkdtemp(prefix="fastdenoise-demo-")
    clean, noisy = make_images(directory)
    denoised = os.path.join(directory, "denoised.png")
    command = ["denoise", noisy, "-o", denoised, "--reference", clean, "--overwrite"]
    if args.method:
        command += ["--method", args.method]
    if args.device:
        command += ["--device", args.device]
    print(f"camera (512 x 512 grey) + Gaussian noise sigma {SIGMA:g}, seed {SEED}: {noisy}")
    print("$ fastdenoise " + " ".join(command), flush=True)
    return fastdenoise_main(command)


if __name__ == "__main__":
    sys.exit(main())
