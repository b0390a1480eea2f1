"""Triton kernel of the channel-half gates (:mod:`fastdenoise.ops.gate` holds the spec).

One program handles ``BLOCK`` consecutive output elements in memory order (NCHW: the pixel
fastest; channels_last: the channel fastest), loads the two input elements of each (channel c
and c + C/2 of the same pixel), multiplies in float32 (float64) -- after the exact GELU of the
first for ``GELU`` -- and stores once. 64-bit offsets (``INDEX64``) past 2^31 elements.

The launcher is the torch op ``fastdenoise::gate_triton`` ``(Tensor x, bool gelu) -> Tensor``;
its autograd recomputes the plain PyTorch reference (:func:`register_autograd`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import memory_format_of

__all__ = ["gate", "GATE_NAME", "register_autograd"]

GATE_NAME = "fastdenoise::gate_triton"
_BLOCK = 1024
_NUM_WARPS = 4
_INT32_MAX = 2**31 - 1


@triton.jit
def _gate_kernel(x_ptr, y_ptr, n, half, HW,
                 sxb, sxc, sxp, syb, syc, syp,
                 GELU: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
                 INDEX64: tl.constexpr, ACC_FP64: tl.constexpr):
    pid = tl.program_id(0)
    if INDEX64:
        pid = pid.to(tl.int64)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    mask = o < n
    if CHANNELS_LAST:
        c = o % half
        p = (o // half) % HW
        b = o // (half * HW)
    else:
        p = o % HW
        c = (o // HW) % half
        b = o // (half * HW)
    xa = b * sxb + c * sxc + p * sxp
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    x1 = tl.load(x_ptr + xa, mask=mask, other=0.0).to(acc_ty)
    x2 = tl.load(x_ptr + xa + half * sxc, mask=mask, other=0.0).to(acc_ty)
    if GELU:
        x1 = 0.5 * x1 * (1.0 + tl.erf(x1 * 0.7071067811865476))
    tl.store(y_ptr + (b * syb + c * syc + p * syp), (x1 * x2).to(y_ptr.dtype.element_ty), mask=mask)


def _gate(x: torch.Tensor, gelu: bool, force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    n, c, h, w = x.shape
    torch._check(c % 2 == 0, lambda: f"x: expected an even channel count, got {c}")
    fmt = memory_format_of(x)
    if not x.is_contiguous(memory_format=fmt):
        x = x.contiguous()
        fmt = torch.contiguous_format
    y = torch.empty((n, c // 2, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    total = y.numel()
    if total == 0:
        return y
    index64 = bool(force_int64) or x.numel() + 8 * _BLOCK > _INT32_MAX
    wrap_triton(_gate_kernel)[(triton.cdiv(total, _BLOCK),)](
        x, y, total, c // 2, h * w, x.stride(0), x.stride(1), x.stride(3), y.stride(0), y.stride(1), y.stride(3),
        GELU=gelu, CHANNELS_LAST=fmt == torch.channels_last, BLOCK=_BLOCK, INDEX64=index64,
        ACC_FP64=x.dtype == torch.float64, num_warps=_NUM_WARPS,
    )
    return y


@triton_op(GATE_NAME, mutates_args=())
def _gate_triton(x: torch.Tensor, gelu: bool) -> torch.Tensor:
    return _gate(x, gelu)


GATE_OP = torch.ops.fastdenoise.gate_triton


def gate(x: torch.Tensor, gelu: bool) -> torch.Tensor:
    """The Triton gate (inputs checked by :mod:`fastdenoise.ops.gate`)."""
    return GATE_OP(x, gelu)


def register_autograd(reference) -> None:
    """Backward of the op: the gradient of ``reference`` recomputed from the saved input."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.gelu = inputs[1]

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(reference(leaf, ctx.gelu), (leaf,), grad)
        return gx, None

    torch.library.register_autograd(GATE_NAME, backward, setup_context=setup_context)
