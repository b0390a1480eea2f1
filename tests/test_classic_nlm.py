"""fastdenoise.classic.nlm: quality on Set12 against scikit-image, the estimated-sigma front end,
colour, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.restoration import denoise_nl_means

from fastdenoise import classic, errors
from fastdenoise.io import read_image
from fastdenoise.metrics import psnr
from fastdenoise.ops import nlm_filter


def _noisy_set12(shared_dir, sigma255):
    """Per image np.random.seed(0), N(0, sigma/255) added to the float image, not clipped."""
    out = []
    for path in sorted((shared_dir / "data" / "set12").glob("*.png")):
        clean = read_image(path)[..., 0].astype(np.float32)          # (H, W) in [0, 1]
        np.random.seed(0)
        noisy = (clean.astype(np.float64) + np.random.normal(0, sigma255 / 255, clean.shape)).astype(np.float32)
        out.append((path.name, clean, noisy))
    assert len(out) == 12
    return out


@pytest.mark.slow
def test_set12_sigma25_at_least_scikit_image(shared_dir):
    s = 25 / 255
    ours, theirs = [], []
    for name, clean, noisy in _noisy_set12(shared_dir, 25):
        t = torch.from_numpy(noisy)[None, None]
        den = classic.nlm(t)                                           # sigma estimated, defaults
        ours.append(psnr(den, torch.from_numpy(clean)[None, None]).item())
        ref = denoise_nl_means(noisy, patch_size=5, patch_distance=6, h=0.8 * s, sigma=s, fast_mode=True)
        theirs.append(psnr(torch.from_numpy(np.asarray(ref, dtype=np.float32))[None, None],
                           torch.from_numpy(clean)[None, None]).item())
        print(f"{name}: fastdenoise {ours[-1]:.3f} dB, scikit-image {theirs[-1]:.3f} dB")
    print(f"mean: fastdenoise {np.mean(ours):.3f} dB, scikit-image {np.mean(theirs):.3f} dB")
    assert np.mean(ours) >= np.mean(theirs)


def test_given_sigma_and_h_reach_the_filter():
    x = torch.rand(2, 1, 40, 36)
    s = torch.tensor([0.05, 0.1])
    torch.testing.assert_close(classic.nlm(x, sigma=s), nlm_filter(x, s, s * classic.NLM_H_FACTOR))
    torch.testing.assert_close(classic.nlm(x, sigma=0.1, h=0.2, patch=5, search=9),
                               nlm_filter(x, 0.1, 0.2, 5, 9))
    est = classic.estimate_sigma(x)
    torch.testing.assert_close(classic.nlm(x), nlm_filter(x, est, est * classic.NLM_H_FACTOR))


def test_colour_denoises_jointly():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    clean = torch.stack([yy, xx, (yy + xx) / 2]).unsqueeze(0)
    noisy = clean + 0.08 * torch.randn_like(clean)
    before = noisy.clone()
    out = classic.nlm(noisy)
    assert torch.equal(noisy, before) and out.shape == noisy.shape
    assert psnr(out, clean).item() > psnr(noisy, clean).item() + 6


def test_bad_input():
    with pytest.raises(errors.ShapeError, match="x: expected 4 dims"):
        classic.nlm(torch.rand(40, 40))
    with pytest.raises(errors.DTypeError, match="x: expected dtype"):
        classic.nlm(torch.zeros(1, 1, 40, 40, dtype=torch.uint8))
    with pytest.raises(ValueError, match="h: expected a finite positive value"):
        classic.nlm(torch.rand(1, 1, 40, 40), sigma=0.1, h=0.0)
    with pytest.raises(ValueError, match="sigma: expected a finite non-negative value, got nan"):
        classic.nlm(torch.rand(1, 1, 40, 40), sigma=float("nan"))
    x = torch.rand(1, 3, 40, 40)
    x[0, 1, 3, 4] = float("nan")
    for sigma in (None, 0.1):                  # found before the estimator or the filter runs
        with pytest.raises(ValueError, match=r"x: expected finite values, got 1 NaN or infinite value"):
            classic.nlm(x, sigma=sigma)


@pytest.mark.parametrize("sigma", [None, 0.0])
def test_noise_free_image_comes_back(sigma):
    """A noise-free image: the estimate is 0, so the default h would be 0 (0 / 0 in the weights);
    it is floored and only identical patches are averaged, which gives the image back."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    for img in ((yy + xx) / 126.0, ((yy * 4) % 255) / 255.0):
        x = img.expand(2, 1, 64, 64).contiguous()
        if sigma is None:
            assert torch.equal(classic.estimate_sigma(x), torch.zeros(2))
        out = classic.nlm(x, sigma=sigma)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
