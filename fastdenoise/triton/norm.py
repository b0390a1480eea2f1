"""Triton kernel of the layer norm over channels (:mod:`fastdenoise.ops.norm` holds the spec).

Design (memory-bound: one read and one write of x):

* A program takes ``BLOCK_P`` consecutive pixels of one image (grid: pixel tiles x images) with
  all their channels, as a ``[BLOCK_P, BLOCK_C]`` tile in registers (``BLOCK_C`` = C rounded up
  to a power of two, ``BLOCK_P * BLOCK_C`` = 4096 elements). The element offsets
  ``b * s_b + p * s_p + c * s_c`` cover NCHW (pixels contiguous: ``s_p = 1``, ``s_c = H W``) and
  channels_last (channels contiguous: ``s_c = 1``, ``s_p = C``) alike; Triton's coalescing
  follows whichever axis of the tile is contiguous, so neither layout is transposed.
* Mean, then the variance about it (two passes over the registers, not E[x^2] - mu^2), in
  float32 (float64 for float64 input); ``rsqrt`` as ``1 / sqrt_rn``.
* 64-bit offsets (``INDEX64``) when the tensors exceed 2^31 elements.

The launcher is the torch op ``fastdenoise::layer_norm2d_triton`` ``(Tensor x, Tensor weight,
Tensor? bias, float eps, bool bias_free) -> Tensor`` (``torch.library.triton_op``); its autograd
recomputes the plain PyTorch reference (:func:`register_autograd`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import memory_format_of, pixel_stride
from ..ops.norm import TRITON_MAX_CHANNELS as MAX_CHANNELS
from ._launch import batch_chunks, images, on_device
from ._recompute import register_recompute_autograd

__all__ = ["layer_norm2d", "LAYER_NORM_NAME", "MAX_CHANNELS", "register_autograd"]

LAYER_NORM_NAME = "fastdenoise::layer_norm2d_triton"
_TILE = 4096
_NUM_WARPS = 4
_INT32_MAX = 2**31 - 1


@triton.jit
def _layer_norm2d_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    HW, C, eps,
    sxb, sxc, sxp, syb, syc, syp,
    HAS_BIAS: tl.constexpr, BIAS_FREE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    INDEX64: tl.constexpr, ACC_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    if INDEX64:
        pid = pid.to(tl.int64)
        b = b.to(tl.int64)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = (p < HW)[:, None] & cmask[None, :]
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    x = tl.load(x_ptr + (b * sxb + p[:, None] * sxp + c[None, :] * sxc), mask=mask, other=0.0).to(acc_ty)
    mean = tl.sum(x, axis=1) / C
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / C
    if ACC_FP64:
        inv = 1.0 / tl.sqrt(var + eps)     # float64 sqrt is correctly rounded
    else:
        inv = 1.0 / tl.sqrt_rn(var + eps)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(acc_ty)
    if BIAS_FREE:
        y = x * inv[:, None] * w[None, :]
    else:
        y = d * inv[:, None] * w[None, :]
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(acc_ty)
        y = y + bias[None, :]
    tl.store(y_ptr + (b * syb + p[:, None] * syp + c[None, :] * syc), y.to(y_ptr.dtype.element_ty), mask=mask)


def _pixel_strides(t: torch.Tensor) -> tuple:
    """(s_b, s_c, s_p) of a dense NCHW or channels_last tensor, pixels flattened as i * W + j."""
    return t.stride(0), t.stride(1), pixel_stride(t)


def _layer_norm2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
                  bias_free: bool, force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    n, c, h, w = x.shape
    torch._check(c <= MAX_CHANNELS, lambda: f"x: the Triton kernel takes at most {MAX_CHANNELS} channels, got {c}")
    fmt = memory_format_of(x)
    if not x.is_contiguous(memory_format=fmt):
        x = x.contiguous()
        fmt = torch.contiguous_format
    y = torch.empty_like(x, memory_format=fmt)
    if x.numel() == 0:
        return y
    block_c = triton.next_power_of_2(c)
    block_p = max(1, min(_TILE // block_c, triton.next_power_of_2(h * w)))
    weight = weight.contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight
    index64 = bool(force_int64) or x.numel() + block_p * block_c * 8 > _INT32_MAX
    with on_device(x):
        for b0, b1 in batch_chunks(n):                 # images along grid y
            wrap_triton(_layer_norm2d_kernel)[(triton.cdiv(h * w, block_p), b1 - b0)](
                images(x, b0, b1, n), weight, bias_arg, images(y, b0, b1, n), h * w, c, eps,
                *_pixel_strides(x), *_pixel_strides(y),
                HAS_BIAS=bias is not None, BIAS_FREE=bias_free, BLOCK_P=block_p, BLOCK_C=block_c,
                INDEX64=index64, ACC_FP64=x.dtype == torch.float64, num_warps=_NUM_WARPS,
            )
    return y


@triton_op(LAYER_NORM_NAME, mutates_args=())
def _layer_norm2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
                         bias_free: bool) -> torch.Tensor:
    return _layer_norm2d(x, weight, bias, eps, bias_free)


LAYER_NORM_OP = torch.ops.fastdenoise.layer_norm2d_triton


def layer_norm2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
                 bias_free: bool) -> torch.Tensor:
    """The Triton layer norm over channels (inputs checked by :func:`fastdenoise.ops.layer_norm2d`)."""
    return LAYER_NORM_OP(x, weight, bias, eps, bias_free)


def register_autograd(reference) -> None:
    """Backward of the op: the gradient of ``reference`` (the plain PyTorch layer norm),
    recomputed from the saved inputs."""
    register_recompute_autograd(LAYER_NORM_NAME, reference, 3)
