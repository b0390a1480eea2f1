"""Triton kernel of the channel-half gates (:mod:`fastdenoise.ops.gate` holds the spec).

The kernel is the elementwise one of :mod:`fastdenoise.triton.attention` (its pre-ops 3 and 4,
without a scale): consecutive output elements in memory order (NCHW: the pixel fastest;
channels_last: the channel fastest), the two input elements of each (channel c and c + C/2 of
the same pixel) multiplied in float32 (float64) -- after the exact GELU of the first for the
GELU gate -- and stored once; 64-bit offsets past 2^31 elements.

The launcher is the torch op ``fastdenoise::gate_triton`` ``(Tensor x, bool gelu) -> Tensor``;
its autograd recomputes the plain PyTorch reference (:func:`register_autograd`).
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from ._recompute import register_recompute_autograd
from .attention import _scale

__all__ = ["gate", "GATE_NAME", "register_autograd"]

GATE_NAME = "fastdenoise::gate_triton"
_SIMPLE_GATE, _GELU_GATE = 3, 4   # pre-op ids of fastdenoise.triton.attention's elementwise kernel


def _gate(x: torch.Tensor, gelu: bool, force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    torch._check(x.shape[1] % 2 == 0, lambda: f"x: expected an even channel count, got {x.shape[1]}")
    # the elementwise kernel of the channel attention's scaling, without a scale
    return _scale(x, None, None, _GELU_GATE if gelu else _SIMPLE_GATE, force_int64)


@triton_op(GATE_NAME, mutates_args=())
def _gate_triton(x: torch.Tensor, gelu: bool) -> torch.Tensor:
    return _gate(x, gelu)


GATE_OP = torch.ops.fastdenoise.gate_triton


def gate(x: torch.Tensor, gelu: bool) -> torch.Tensor:
    """The Triton gate (inputs checked by :mod:`fastdenoise.ops.gate`)."""
    return GATE_OP(x, gelu)


def register_autograd(reference) -> None:
    """Backward of the op: the gradient of ``reference`` recomputed from the saved input."""
    register_recompute_autograd(GATE_NAME, reference, 1)
