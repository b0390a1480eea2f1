"""Layer normalisation over the channels of each pixel of a (B, C, H, W) image: NAFNet's
``LayerNorm2d`` and Restormer's ``WithBias`` / ``BiasFree`` ``LayerNorm``, as one op.

Definition (the plain PyTorch reference below is the spec), per image b and pixel (i, j),
over the C values ``x_c = x[b, c, i, j]``:

* ``mu = mean_c x_c``, ``var = mean_c (x_c - mu)^2`` (the biased variance, about the mean);
* with bias (NAFNet, eps 1e-6; Restormer ``WithBias``, eps 1e-5):
  ``y_c = (x_c - mu) / sqrt(var + eps) * weight_c + bias_c`` (``bias=None``: no bias term);
* ``bias_free=True`` (Restormer ``BiasFree``): ``y_c = x_c / sqrt(var + eps) * weight_c`` --
  the variance is still taken about the mean, but x is not centred.

Statistics in float32 (float64 for float64 input) whatever the input dtype; the output has the
input's dtype, device and memory format. The Triton kernel (CUDA tensors) normalises NCHW
and channels_last inputs in their layout (no transposing copy): one program holds a tile of
pixels with all their channels in registers, so each element is read once and written once. The
C++ kernel (CPU tensors) does the same per block of pixels, in cache.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .. import _dispatch, _ext
from .._checks import FLOAT_DTYPES, check_same_device, check_tensor, memory_format_of
from ..errors import DTypeError, ShapeError
from ..triton._recompute import register_recompute_autograd  # imports no triton

__all__ = ["layer_norm2d", "layer_norm2d_reference", "NAFNET_EPS", "RESTORMER_EPS", "TRITON_MAX_CHANNELS"]

#: eps of NAFNet's LayerNorm2d.
NAFNET_EPS = 1e-6
#: eps of Restormer's WithBias_LayerNorm and BiasFree_LayerNorm.
RESTORMER_EPS = 1e-5
#: Most channels the Triton kernel takes (a pixel's channels live in registers); above it the
#: default dispatch runs the reference and ``backend="triton"`` raises.
TRITON_MAX_CHANNELS = 4096


def _check(x, weight, bias, eps, bias_free) -> None:
    check_tensor("x", x)
    c = x.shape[1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None and name == "bias":
            continue
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of shape ({c},), got {type(p).__name__}")
        if p.numel() != c or p.dim() not in (1, 4) or (p.dim() == 4 and tuple(p.shape) != (1, c, 1, 1)):
            raise ShapeError(f"{name}: expected shape ({c},) or (1, {c}, 1, 1) (one per channel of x), "
                             f"got {list(p.shape)}")
        if p.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"{name}: expected a floating dtype, got {p.dtype}")
        check_same_device(name, p, "x", x)
    if not isinstance(bias_free, bool):
        raise TypeError(f"bias_free: expected a bool, got {type(bias_free).__name__} {bias_free!r}")
    if bias_free and bias is not None:
        raise ValueError("bias: expected None with bias_free=True (Restormer's BiasFree LayerNorm has no bias)")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a real number, got {type(eps).__name__} {eps!r}")
    if not 0 < float(eps) < math.inf:
        raise ValueError(f"eps: expected a finite positive number, got {eps!r}")


def layer_norm2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                           eps: float = NAFNET_EPS, bias_free: bool = False) -> torch.Tensor:
    """Plain PyTorch layer norm over channels (float32 statistics, float64 for float64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    mu = xf.mean(dim=1, keepdim=True)
    var = (xf - mu).square().mean(dim=1, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = (xf if bias_free else xf - mu) * inv * weight.to(acc).reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(acc).reshape(1, -1, 1, 1)
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def layer_norm2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 eps: float = NAFNET_EPS, bias_free: bool = False, *,
                 backend: Optional[str] = None) -> torch.Tensor:
    """Layer norm over the channels of each pixel (see the module docstring).

    ``x``: (B, C, H, W) float32, float16, bfloat16 or float64, NCHW or channels_last (kept).
    ``weight`` and ``bias``: (C,) or (1, C, 1, 1); ``bias=None`` for none. ``eps``: 1e-6
    (NAFNet, the default) or 1e-5 (Restormer). ``bias_free``: Restormer's BiasFree variant.
    ``backend``: None (Triton on CUDA tensors, the C++ kernel on CPU tensors), ``"triton"``,
    ``"cpu"`` or ``"reference"``. Differentiable (the backward of the Triton and C++ ops runs
    the reference).
    """
    _check(x, weight, bias, eps, bias_free)
    be = _dispatch.resolve("layer_norm2d", x, backend)
    if be == "triton" and x.shape[1] > TRITON_MAX_CHANNELS:
        if (backend or _dispatch.default_backend()) == "triton":
            raise ShapeError(f"x: backend='triton' takes at most {TRITON_MAX_CHANNELS} channels, "
                             f"got C={x.shape[1]}")
        be = "reference"
    if be == "triton":
        return _triton().layer_norm2d(x, weight.reshape(-1), None if bias is None else bias.reshape(-1),
                                      float(eps), bool(bias_free))
    if be == "cpu":
        return torch.ops.fastdenoise.layer_norm2d(x.contiguous(memory_format=memory_format_of(x)),
                                                  weight.reshape(-1), None if bias is None else bias.reshape(-1),
                                                  float(eps), bool(bias_free))
    return layer_norm2d_reference(x, weight, bias, float(eps), bias_free)


def _fake_layer_norm2d(x, weight, bias, eps, bias_free):
    return torch.empty_like(x, memory_format=memory_format_of(x))


if _ext.has_kernel("layer_norm2d", "CPU"):
    torch.library.register_fake("fastdenoise::layer_norm2d")(_fake_layer_norm2d)
    register_recompute_autograd("fastdenoise::layer_norm2d", layer_norm2d_reference, 3)


#: :mod:`fastdenoise.triton.norm`, imported on first use (triton is optional; _dispatch.lazy_module)
_triton = _dispatch.lazy_module("fastdenoise.triton.norm", lambda m: m.register_autograd(layer_norm2d_reference))
