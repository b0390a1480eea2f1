"""Image-quality metrics, per image of a batch.

``psnr`` follows the usual definition (and KAIR's ``utils_image.calculate_psnr``):
``10 * log10(data_range**2 / mse)``, the mean squared error taken over C, H and W in float64.
``quantize_uint8`` is KAIR's ``tensor2uint``: clamp to [0, 1], scale by 255, round half to
even, uint8 -- what the published PSNR tables measure.
``ssim`` is Wang et al.'s (2004) structural similarity with their 11x11 Gaussian window, the
mean over the window positions inside the image, then over the channels -- the number
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` gives.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from .errors import ShapeError

__all__ = ["psnr", "mse", "ssim", "quantize_uint8"]

_DTYPES = FLOAT_DTYPES + (torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_pair(x, y) -> None:
    check_tensor("x", x, dtypes=_DTYPES)
    check_tensor("y", y, dtypes=_DTYPES)
    if x.shape != y.shape:
        raise ShapeError(f"y: expected the shape of x {list(x.shape)}, got {list(y.shape)}")
    check_same_device("y", y, "x", x)


def _check_range(data_range) -> float:
    """data_range as a float: a finite positive real number (Python or NumPy scalar)."""
    if isinstance(data_range, bool) or not isinstance(data_range, numbers.Real):
        raise TypeError(f"data_range: expected a positive real number, got {type(data_range).__name__} "
                        f"{data_range!r}")
    value = float(data_range)
    if not 0 < value < math.inf:
        raise ValueError(f"data_range: expected a finite positive number, got {data_range!r}")
    return value


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, C, H, W) x 2 -> (B,) float64."""
    _check_pair(x, y)
    d = x.to(torch.float64) - y.to(torch.float64)
    return d.square().flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (B, C, H, W) x 2 -> (B,) float64.

    ``data_range``: the peak value (1.0 for images in [0, 1], 255 for uint8 images). Identical
    images give ``inf``. Any float or integer dtype; computed in float64.
    """
    data_range = _check_range(data_range)
    err = mse(x, y)
    return 10.0 * torch.log10(float(data_range) ** 2 / err)


#: SSIM constants of Wang et al. (2004): an 11-tap Gaussian window of standard deviation 1.5
#: (scipy's / scikit-image's: radius int(3.5 * 1.5 + 0.5) = 5), K1 and K2.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _ssim_taps() -> list:
    """The normalised 1-D Gaussian window exp(-t^2 / (2 sigma^2)), t = -5 .. 5, as floats."""
    g = [math.exp(-0.5 * (t / _SSIM_SIGMA) ** 2) for t in range(-_SSIM_RADIUS, _SSIM_RADIUS + 1)]
    total = math.fsum(g)
    return [v / total for v in g]


def _gaussian_valid(t: torch.Tensor, taps: list) -> torch.Tensor:
    """Separable filtering of the last two dims of ``t`` by the window, 'valid' positions only:
    (..., H, W) -> (..., H - 10, W - 10). Shifted multiply-adds, in t's dtype (float64 here:
    far faster on CPU than a float64 convolution)."""
    k = len(taps)
    h, w = t.shape[-2], t.shape[-1]
    rows = t[..., 0:h - k + 1, :] * taps[0]
    for i in range(1, k):
        rows.add_(t[..., i:i + h - k + 1, :], alpha=taps[i])
    out = rows[..., 0:w - k + 1] * taps[0]
    for i in range(1, k):
        out.add_(rows[..., i:i + w - k + 1], alpha=taps[i])
    return out


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image: (B, C, H, W) x 2 -> (B,) float64.

    Wang, Bovik, Sheikh & Simoncelli (2004): local means, variances and the covariance are
    weighted by an 11x11 Gaussian window (standard deviation 1.5, normalised to sum 1;
    population, not sample, statistics); ``C1 = (0.01 * data_range)^2``,
    ``C2 = (0.03 * data_range)^2``; the SSIM map is averaged over the ``(H - 10) x (W - 10)``
    window positions that lie inside the image (no padding), then over the channels.
    This is ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=...)`` (which filters the
    whole image and then drops a 5-pixel border) to float64 rounding.

    ``data_range``: the peak-to-peak range of the images (1.0 for [0, 1], 255 for uint8).
    Any float or integer dtype, computed in float64 on the inputs' device; H and W at least 11.
    Identical images give 1.
    """
    data_range = _check_range(data_range)
    _check_pair(x, y)
    size = 2 * _SSIM_RADIUS + 1
    h, w = x.shape[-2], x.shape[-1]
    if h < size or w < size:
        raise ShapeError(f"x: expected H and W of at least {size} (the {size}x{size} SSIM window), "
                         f"got H={h}, W={w}: {list(x.shape)}")
    # The five maps filtered in one go: x, y, x^2, y^2, xy -> their local (weighted) means.
    xf = x.to(torch.float64)
    yf = y.to(torch.float64)
    maps = torch.stack((xf, yf, xf * xf, yf * yf, xf * yf))     # differentiable: SSIM as a loss
    mu_x, mu_y, e_xx, e_yy, e_xy = _gaussian_valid(maps, _ssim_taps()).unbind(0)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (_SSIM_K1 * float(data_range)) ** 2
    c2 = (_SSIM_K2 * float(data_range)) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
             / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
    return s_map.mean(dim=(2, 3)).mean(dim=1)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1] -> uint8 in [0, 255]: clamp, scale by 255, round half to even."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_tensor("x", x, dims=x.dim(), layout="(..., H, W)")
    return (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
