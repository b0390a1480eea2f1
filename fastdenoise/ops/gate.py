"""Multiplicative gates over the two halves of the channels of a (B, C, H, W) tensor.

* ``simple_gate(x)`` -- NAFNet's SimpleGate: ``x1, x2 = x.chunk(2, dim=1)``; ``x1 * x2``.
* ``gelu_gate(x)`` -- the gate of Restormer's gated feed-forward: ``gelu(x1) * x2`` with the
  exact (erf) GELU, ``gelu(u) = u / 2 * (1 + erf(u / sqrt(2)))``.

C must be even; the output is (B, C/2, H, W) in the input's dtype, device and memory format.
The products are formed in float32 (float64 for float64 input) and rounded once. The Triton
kernel reads each input element once and writes each output once, in either layout.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._checks import check_channels_divisible, check_tensor, memory_format_of

__all__ = ["simple_gate", "gelu_gate", "gate_reference"]


def gate_reference(x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """Plain PyTorch gate: ``x1 * x2`` or ``gelu(x1) * x2`` (exact GELU), in float32 (float64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x1, x2 = x.to(acc).chunk(2, dim=1)
    if gelu:
        x1 = F.gelu(x1)
    return (x1 * x2).to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _gate(x: torch.Tensor, gelu: bool, backend: Optional[str]) -> torch.Tensor:
    check_tensor("x", x)
    check_channels_divisible("x", x, 2, "two halves: the gate and the value")
    be = _dispatch.resolve("gate", x, backend)
    if be == "triton":
        return _triton().gate(x, gelu)
    return gate_reference(x, gelu)


def simple_gate(x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """NAFNet's SimpleGate: (B, C, H, W) -> (B, C/2, H, W), ``x[:, :C/2] * x[:, C/2:]``.
    ``backend``: None (Triton on CUDA tensors, the reference on the CPU), ``"triton"`` or
    ``"reference"``. Differentiable."""
    return _gate(x, False, backend)


def gelu_gate(x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Restormer's GDFN gate: (B, C, H, W) -> (B, C/2, H, W), ``gelu(x[:, :C/2]) * x[:, C/2:]``
    with the exact GELU. ``backend`` as :func:`simple_gate`. Differentiable."""
    return _gate(x, True, backend)


#: :mod:`fastdenoise.triton.gate`, imported on first use (triton is optional; _dispatch.lazy_module)
_triton = _dispatch.lazy_module("fastdenoise.triton.gate", lambda m: m.register_autograd(gate_reference))
