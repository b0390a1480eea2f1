"""Depthwise 3x3 convolution followed by the GELU gate: the middle of Restormer's gated-dconv
feed-forward network (GDFN), as one op.

Definition (the plain PyTorch reference below is the spec). For ``x`` of shape (B, 2N, H, W),
a depthwise convolution weight of shape (2N, 1, 3, 3) and an optional bias (2N,):

* ``y = dw(x)``: the depthwise 3x3 cross-correlation with zero padding 1 (``F.conv2d(x, weight,
  bias, padding=1, groups=2N)``), so ``y[b, c, i, j] = bias[c] + sum_{u, v in 0..2}
  weight[c, 0, u, v] * x[b, c, i + u - 1, j + v - 1]``, with x zero outside the image;
* ``out = gelu(y[:, :N]) * y[:, N:]`` with the exact (erf) GELU, ``gelu(u) = u / 2 * (1 +
  erf(u / sqrt(2)))``: shape (B, N, H, W).

Arithmetic in float32 (float64 for float64 input) whatever the input dtype, one rounding at the
end; the output has x's dtype, device and memory format (NCHW or channels_last). Any H, W >= 1
(on a 1x1 image every neighbour is padding) and any N >= 1 (odd widths such as 127 are the norm
in Restormer). The Triton kernel makes one pass: each program takes a tile of pixels x channels,
loads the 3x3 neighbourhoods of channel c and of channel c + N (neighbours come from cache),
and writes only the N gated channels -- the 2N-channel convolution output is never stored.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._checks import FLOAT_DTYPES, check_channels_divisible, check_same_device, check_tensor, memory_format_of
from ..errors import DTypeError, ShapeError

__all__ = ["dwconv_gate", "dwconv_gate_reference"]


def _check(x, weight, bias) -> None:
    check_tensor("x", x)
    check_channels_divisible("x", x, 2, "two halves: the gate and the value")
    c = x.shape[1]
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor of shape ({c}, 1, 3, 3), got {type(weight).__name__}")
    if tuple(weight.shape) != (c, 1, 3, 3):
        raise ShapeError(f"weight: expected shape ({c}, 1, 3, 3) (a depthwise 3x3 convolution over the "
                         f"{c} channels of x), got {list(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"weight: expected a floating dtype, got {str(weight.dtype).replace('torch.', '')}")
    check_same_device("weight", weight, "x", x)
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor of shape ({c},) or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (c,):
        raise ShapeError(f"bias: expected shape ({c},) (one per channel of x), got {list(bias.shape)}")
    if bias.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"bias: expected a floating dtype, got {str(bias.dtype).replace('torch.', '')}")
    check_same_device("bias", bias, "x", x)


def dwconv_gate_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain PyTorch depthwise 3x3 convolution (zero padding 1) then ``gelu(y1) * y2`` over the
    two channel halves, in float32 (float64 for float64 input), rounded once to x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.conv2d(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc), padding=1, groups=x.shape[1])
    gate, value = y.chunk(2, dim=1)
    return (F.gelu(gate) * value).to(x.dtype).contiguous(memory_format=memory_format_of(x))


def dwconv_gate(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """Depthwise 3x3 convolution (zero padding 1) then the GELU gate (see the module docstring).

    ``x``: (B, 2N, H, W) float32, float16, bfloat16 or float64, NCHW or channels_last (kept);
    ``weight``: (2N, 1, 3, 3), a depthwise ``nn.Conv2d``'s weight; ``bias``: (2N,) or None.
    Returns (B, N, H, W). ``backend``: None (Triton on CUDA tensors, the reference on the CPU),
    ``"triton"`` or ``"reference"``. Differentiable (the backward of the Triton op runs the
    reference).
    """
    _check(x, weight, bias)
    be = _dispatch.resolve("dwconv_gate", x, backend)
    if be == "triton":
        return _triton().dwconv_gate(x, weight, bias)
    return dwconv_gate_reference(x, weight, bias)


#: :mod:`fastdenoise.triton.dwconv_gate`, imported on first use (triton is optional; _dispatch.lazy_module)
_triton = _dispatch.lazy_module("fastdenoise.triton.dwconv_gate", lambda m: m.register_autograd(dwconv_gate_reference))
