"""Triton kernels of the channel attention ops (:mod:`fastdenoise.ops.attention` holds the spec).

Two passes over x, the minimum for an op whose output depends on a global mean:

* ``fastdenoise::ca_pool_triton(x, pre) -> (B, Cu)``: the mean over H, W of ``u = pre(x)``
  (``pre``: 0 none, 1 relu, 2 exact gelu, 3 SimpleGate -- then ``Cu = C / 2``; 4, the GELU
  gate ``gelu(x1) * x2``, serves :mod:`fastdenoise.triton.gate`). Programs take a
  ``[BLOCK_P, BLOCK_C]`` tile of pixels x channels of one image (offsets ``b s_b + p s_p +
  c s_c``, so NCHW and channels_last are read in place, coalesced along whichever axis is
  contiguous), loop over ``PIX`` pixels accumulating in float32 (float64 for float64 input),
  and write one partial sum per (image, pixel range, channel); the partials are then added by
  ``torch.sum`` in a fixed order, so the result is deterministic.
* ``fastdenoise::ca_scale_triton(x, a, residual, pre) -> (B, Cu, H, W)``: ``pre(x) * a[b, c]``
  (+ residual), elementwise in memory order, u recomputed rather than stored.

Autograd of both ops recomputes the plain PyTorch maths (:func:`register_autograd`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import memory_format_of, pixel_stride
from ._launch import batch_chunks, images, on_device

__all__ = ["pooled_mean", "scale", "POOL_NAME", "SCALE_NAME", "register_autograd"]

POOL_NAME = "fastdenoise::ca_pool_triton"
SCALE_NAME = "fastdenoise::ca_scale_triton"
_TILE = 2048          # elements of one [BLOCK_P, BLOCK_C] tile
_PIX = 4096           # pixels one pooling program covers (fewer for small images)
_BLOCK = 1024         # outputs per scaling program
_NUM_WARPS = 4
_INT32_MAX = 2**31 - 1
GATE = 3


@triton.jit
def _apply_pre(x, x2, PRE: tl.constexpr):
    if PRE == 1:
        x = tl.maximum(x, 0.0)
    elif PRE == 2:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif PRE == 3:
        x = x * x2
    elif PRE == 4:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476)) * x2
    return x


@triton.jit
def _pool_kernel(x_ptr, part_ptr, HW, CU, n_split,
                 sxb, sxc, sxp,
                 PRE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, PIX: tl.constexpr,
                 INDEX64: tl.constexpr, ACC_FP64: tl.constexpr):
    split = tl.program_id(0)
    ct = tl.program_id(1)
    b = tl.program_id(2)
    if INDEX64:
        split = split.to(tl.int64)
        b = b.to(tl.int64)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < CU
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=acc_ty)
    for start in range(0, PIX, BLOCK_P):
        p = split * PIX + start + tl.arange(0, BLOCK_P)
        mask = (p < HW)[:, None] & cmask[None, :]
        off = b * sxb + p[:, None] * sxp + c[None, :] * sxc
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(acc_ty)
        x2 = x
        if PRE >= 3:
            x2 = tl.load(x_ptr + off + CU * sxc, mask=mask, other=0.0).to(acc_ty)
        acc += tl.where(mask, _apply_pre(x, x2, PRE), 0.0)
    total = tl.sum(acc, axis=0)
    tl.store(part_ptr + (b * n_split + split) * CU + c, total, mask=cmask)


@triton.jit
def _scale_kernel(x_ptr, a_ptr, r_ptr, y_ptr, n, CU, HW,
                  sxb, sxc, sxp, srb, src, srp, syb, syc, syp,
                  PRE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                  BLOCK: tl.constexpr, INDEX64: tl.constexpr, ACC_FP64: tl.constexpr):
    pid = tl.program_id(0)
    if INDEX64:
        pid = pid.to(tl.int64)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    mask = o < n
    if CHANNELS_LAST:
        c = o % CU
        p = (o // CU) % HW
    else:
        p = o % HW
        c = (o // HW) % CU
    b = o // (CU * HW)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    xa = b * sxb + c * sxc + p * sxp
    x = tl.load(x_ptr + xa, mask=mask, other=0.0).to(acc_ty)
    x2 = x
    if PRE >= 3:
        x2 = tl.load(x_ptr + xa + CU * sxc, mask=mask, other=0.0).to(acc_ty)
    y = _apply_pre(x, x2, PRE)
    if HAS_SCALE:
        y = y * tl.load(a_ptr + b * CU + c, mask=mask, other=0.0).to(acc_ty)
    if HAS_RES:
        y += tl.load(r_ptr + (b * srb + c * src + p * srp), mask=mask, other=0.0).to(acc_ty)
    tl.store(y_ptr + (b * syb + c * syc + p * syp), y.to(y_ptr.dtype.element_ty), mask=mask)


def _dense(x: torch.Tensor):
    fmt = memory_format_of(x)
    if not x.is_contiguous(memory_format=fmt):
        return x.contiguous(), torch.contiguous_format
    return x, fmt


def _pool(x: torch.Tensor, pre: int, force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    x, _ = _dense(x)
    n, c, h, w = x.shape
    cu = c // 2 if pre >= GATE else c               # 3, 4: gates of the two halves
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    hw = h * w
    pix = min(_PIX, triton.next_power_of_2(hw))          # pixels per program (a power of two)
    n_split = triton.cdiv(hw, pix)
    part = torch.empty((n, n_split, cu), dtype=acc, device=x.device)
    if x.numel() == 0:
        return part.sum(dim=1)
    block_c = min(triton.next_power_of_2(cu), 64)
    block_p = min(pix, max(1, _TILE // block_c))
    index64 = bool(force_int64) or x.numel() + _TILE * 8 > _INT32_MAX
    with on_device(x):
        for b0, b1 in batch_chunks(n):                 # images along grid z
            wrap_triton(_pool_kernel)[(n_split, triton.cdiv(cu, block_c), b1 - b0)](
                images(x, b0, b1, n), images(part, b0, b1, n), hw, cu, n_split,
                x.stride(0), x.stride(1), pixel_stride(x),
                PRE=pre, BLOCK_P=block_p, BLOCK_C=block_c, PIX=pix, INDEX64=index64,
                ACC_FP64=acc == torch.float64, num_warps=_NUM_WARPS,
            )
    return part.sum(dim=1) / hw


def _scale(x: torch.Tensor, a: Optional[torch.Tensor], residual: Optional[torch.Tensor], pre: int,
           force_int64: bool = False) -> torch.Tensor:
    """pre(x) (times a[b, c] unless a is None) (+ residual). Also the kernel of the gate ops
    (:mod:`fastdenoise.triton.gate`: pre 3 / 4, no scale)."""
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    x, fmt = _dense(x)
    n, c, h, w = x.shape
    cu = c // 2 if pre >= GATE else c
    y = torch.empty((n, cu, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    total = y.numel()
    if total == 0:
        return y
    a = a.contiguous() if a is not None else y
    res = _dense(residual)[0] if residual is not None else y
    index64 = bool(force_int64) or max(x.numel(), res.numel()) + 8 * _BLOCK > _INT32_MAX
    with on_device(x):                                 # a 1-D grid: no chunks
        wrap_triton(_scale_kernel)[(triton.cdiv(total, _BLOCK),)](
            x, a, res, y, total, cu, h * w,
            x.stride(0), x.stride(1), pixel_stride(x), res.stride(0), res.stride(1), pixel_stride(res),
            y.stride(0), y.stride(1), pixel_stride(y),
            PRE=pre, HAS_SCALE=a is not y, HAS_RES=residual is not None, CHANNELS_LAST=fmt == torch.channels_last,
            BLOCK=_BLOCK,
            INDEX64=index64, ACC_FP64=x.dtype == torch.float64, num_warps=_NUM_WARPS,
        )
    return y


@triton_op(POOL_NAME, mutates_args=())
def _ca_pool_triton(x: torch.Tensor, pre: int) -> torch.Tensor:
    return _pool(x, pre)


@triton_op(SCALE_NAME, mutates_args=())
def _ca_scale_triton(x: torch.Tensor, a: torch.Tensor, residual: Optional[torch.Tensor], pre: int) -> torch.Tensor:
    return _scale(x, a, residual, pre)


POOL_OP = torch.ops.fastdenoise.ca_pool_triton
SCALE_OP = torch.ops.fastdenoise.ca_scale_triton


def pooled_mean(x: torch.Tensor, pre: int) -> torch.Tensor:
    """(B, Cu) float32 (float64) means over H, W of pre(x)."""
    return POOL_OP(x, pre)


def scale(x: torch.Tensor, a: torch.Tensor, residual: Optional[torch.Tensor], pre: int) -> torch.Tensor:
    """pre(x) * a[:, :, None, None] (+ residual), in x's dtype and memory format."""
    return SCALE_OP(x, a, residual, pre)


def register_autograd() -> None:
    """Backward of both ops: the gradient of the same maths in plain PyTorch, recomputed."""
    from ..ops.attention import _pre

    names = {0: None, 1: "relu", 2: "gelu", 3: "gate"}

    def pool_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.pre = inputs[1]

    def pool_backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(_pre(leaf, names[ctx.pre]).mean(dim=(2, 3)), (leaf,), grad)
        return gx, None

    def scale_setup(ctx, inputs, output):
        x, a, residual, pre = inputs
        ctx.save_for_backward(x, a)
        ctx.pre, ctx.has_res = pre, residual is not None

    def scale_backward(ctx, grad):
        x, a = ctx.saved_tensors
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.enable_grad():
            lx = x.detach().requires_grad_(bool(need_x))
            la = a.detach().requires_grad_(bool(need_a))
            out = _pre(lx, names[ctx.pre]) * la[:, :, None, None]
            wanted = [t for t, need in ((lx, need_x), (la, need_a)) if need]
            grads = iter(torch.autograd.grad(out, wanted, grad.to(out.dtype)) if wanted else ())
        gx = next(grads).to(x.dtype) if need_x else None
        ga = next(grads).to(a.dtype) if need_a else None
        gr = grad if ctx.has_res else None
        return gx, ga, gr, None

    torch.library.register_autograd(POOL_NAME, pool_backward, setup_context=pool_setup)
    torch.library.register_autograd(SCALE_NAME, scale_backward, setup_context=scale_setup)
