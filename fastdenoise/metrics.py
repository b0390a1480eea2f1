"""Image-quality metrics, per image of a batch.

``psnr`` follows the usual definition (and KAIR's ``utils_image.calculate_psnr``):
``10 * log10(data_range**2 / mse)``, the mean squared error taken over C, H and W in float64.
``quantize_uint8`` is KAIR's ``tensor2uint``: clamp to [0, 1], scale by 255, round half to
even, uint8 -- what the published PSNR tables measure.
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from .errors import ShapeError

__all__ = ["psnr", "mse", "quantize_uint8"]

_DTYPES = FLOAT_DTYPES + (torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_pair(x, y) -> None:
    check_tensor("x", x, dtypes=_DTYPES)
    check_tensor("y", y, dtypes=_DTYPES)
    if x.shape != y.shape:
        raise ShapeError(f"y: expected the shape of x {list(x.shape)}, got {list(y.shape)}")
    check_same_device("y", y, "x", x)


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
    if not data_range > 0:
        raise ValueError(f"data_range: expected a positive number, got {data_range}")
    err = mse(x, y)
    return 10.0 * torch.log10(float(data_range) ** 2 / err)


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1] -> uint8 in [0, 255]: clamp, scale by 255, round half to even."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_tensor("x", x, dims=x.dim(), layout="(..., H, W)")
    return (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
