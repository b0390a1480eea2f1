"""Triton kernel of the depthwise 3x3 convolution + GELU gate (:mod:`fastdenoise.ops.dwconv_gate`
holds the spec).

Design (memory-bound: x read once from DRAM, the gated output written once):

* A program takes one image, a ``BLOCK_H x BLOCK_W`` rectangle of pixels and ``BLOCK_C``
  channels of the first half, held as a ``[BLOCK_H * BLOCK_W, BLOCK_C]`` tile (grid: pixel
  rectangles x channel tiles x images). For each of the 9 taps it loads the shifted tile of
  channel c and of channel c + N (masked to the image: the zero padding is the mask's
  ``other``), multiplies by the tap's weights and accumulates in float32 (float64 for float64
  input). Neighbouring taps hit the same cache lines, so each element of x comes from DRAM
  about once. Then the bias, the exact erf GELU of the first half times the second, one store
  of the N gated channels: the 2N-channel convolution output never exists in memory.
* Offsets are ``b s_b + c s_c + i s_h + j s_w`` with x's own strides, so NCHW, channels_last
  and strided views are read in place (no copy). The tile shape follows the layout: with
  channels fastest in memory (channels_last) up to 32 channels and a square-ish patch of
  pixels (4 x 4 at 32 channels); otherwise (NCHW) runs of up to 64 pixels along W, 2 channels,
  and the rows filling the tile (more channels on images too small to fill it). Within a
  tile row the pixel index is ``j0 + (p % BLOCK_W)``, so Triton sees runs of BLOCK_W
  contiguous addresses when s_w is 1 (NCHW).
* The output has x's memory format (NCHW for strided, non-dense input); 64-bit offsets
  (``INDEX64``) when the tensors' extents exceed int32.

The launcher is the torch op ``fastdenoise::dwconv_gate_triton`` ``(Tensor x, Tensor weight,
Tensor? bias) -> Tensor`` (``torch.library.triton_op``); its autograd recomputes the plain
PyTorch reference (:func:`register_autograd`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import memory_format_of
from ._launch import batch_chunks, images, on_device
from ._recompute import register_recompute_autograd

__all__ = ["dwconv_gate", "DWCONV_GATE_NAME", "register_autograd"]

DWCONV_GATE_NAME = "fastdenoise::dwconv_gate_triton"
# channels_last: 512 pixels x channels per half over 4 warps (4 x 4 pixels x 32 channels: the
# same halo per pixel as the former 1024 = 4 x 4 x 64). At 1024 over 4 warps (8 elements of each
# accumulator per thread) ptxas either took ~168 registers or, in float16 with triton 3.6 (the
# version torch 2.11, the GPU machines' torch, pins), stopped at 96 and spilled ~280 bytes per
# thread on sm_90 and sm_80; 512 over 4 warps builds at 71-80 registers with no spill for sm_90
# and sm_80, every dtype, with and without bias, under triton 3.6 and 3.9
# (scripts/triton_aot_check.py; not timed on a GPU yet).
_TILE = 512
# NCHW: 512 too, over 8 warps. At 1024 and 4 warps (8 x 64 pixels x 2 channels) the float16
# build for sm_90 spilled 168 bytes per thread on a 1080p map, and 512 over 4 warps still spilled
# on small maps of many channels (8 x 16 x 4); 512 over 8 warps spills nowhere on sm_90 or sm_80,
# float16 or float32, at 40-78 registers (scripts/triton_aot_check.py; not timed on a GPU yet).
_NCHW_TILE = 512
_NCHW_WARPS = 8
_ROW = 64             # widest run along W of an NCHW tile
_CL_CHANNELS = 32     # widest channel tile of a channels_last tile
_NCHW_CHANNELS = 2    # channels of an NCHW tile
_NUM_WARPS = 4         # channels_last
_INT32_MAX = 2**31 - 1


@triton.jit
def _dwconv_gate_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, N, n_wt,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw,
    HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    INDEX64: tl.constexpr, ACC_FP64: tl.constexpr,
):
    pt = tl.program_id(0)
    ct = tl.program_id(1)
    b = tl.program_id(2)
    if INDEX64:
        pt = pt.to(tl.int64)
        ct = ct.to(tl.int64)
        b = b.to(tl.int64)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    i = (pt // n_wt) * BLOCK_H + p // BLOCK_W            # rows of the tile's pixels
    j = (pt % n_wt) * BLOCK_W + p % BLOCK_W              # columns
    c = ct * BLOCK_C + tl.arange(0, BLOCK_C)             # channels of the first half
    cmask = c < N
    c2 = c + N                                           # their partners in the second half
    base1 = (b * sxb + c * sxc)[None, :]
    base2 = (b * sxb + c2 * sxc)[None, :]

    acc1 = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=acc_ty)
    acc2 = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=acc_ty)
    for u in tl.static_range(3):
        ii = i + (u - 1)
        row_ok = (ii >= 0) & (ii < H)
        for v in tl.static_range(3):
            jj = j + (v - 1)
            ok = (row_ok & (jj >= 0) & (jj < W))[:, None] & cmask[None, :]
            pix = (ii * sxh + jj * sxw)[:, None]
            x1 = tl.load(x_ptr + (pix + base1), mask=ok, other=0.0).to(acc_ty)
            x2 = tl.load(x_ptr + (pix + base2), mask=ok, other=0.0).to(acc_ty)
            w1 = tl.load(w_ptr + c * 9 + (u * 3 + v), mask=cmask, other=0.0).to(acc_ty)
            w2 = tl.load(w_ptr + c2 * 9 + (u * 3 + v), mask=cmask, other=0.0).to(acc_ty)
            acc1 += x1 * w1[None, :]
            acc2 += x2 * w2[None, :]
    if HAS_BIAS:
        acc1 += tl.load(b_ptr + c, mask=cmask, other=0.0).to(acc_ty)[None, :]
        acc2 += tl.load(b_ptr + c2, mask=cmask, other=0.0).to(acc_ty)[None, :]
    out = 0.5 * acc1 * (1.0 + tl.erf(acc1 * 0.7071067811865476)) * acc2
    smask = ((i < H) & (j < W))[:, None] & cmask[None, :]
    yoff = (b * syb + c * syc)[None, :] + (i * syh + j * syw)[:, None]
    tl.store(y_ptr + yoff, out.to(y_ptr.dtype.element_ty), mask=smask)


def _blocks(x: torch.Tensor, n: int, h: int, w: int):
    """(BLOCK_H, BLOCK_W, BLOCK_C) for x's layout (all powers of two, product at most _TILE, or
    _NCHW_TILE for NCHW)."""
    np2 = triton.next_power_of_2
    if x.stride(1) < x.stride(3):            # channels fastest in memory (channels_last)
        block_c = min(np2(n), _CL_CHANNELS)
        pixels = max(1, _TILE // block_c)
        # a square-ish patch of pixels (fewer halo pixels than a run along one row), widened
        # when the image has few rows
        block_w = min(np2(w), 1 << (pixels.bit_length() // 2))
        block_h = min(np2(h), max(1, pixels // block_w))
        block_w = min(np2(w), max(1, pixels // block_h))
    else:                                    # pixels fastest (NCHW, or a strided view)
        block_w = min(np2(w), _ROW)
        block_c = min(np2(n), _NCHW_CHANNELS)
        block_h = min(np2(h), max(1, _NCHW_TILE // (block_c * block_w)))
        block_c = min(np2(n), max(1, _NCHW_TILE // (block_h * block_w)))   # more channels on small images
    return block_h, block_w, block_c


def _extent(t: torch.Tensor, pad: tuple) -> int:
    """Largest element offset formed for ``t`` with each index up to size - 1 + pad."""
    return sum((s - 1 + p) * st for s, p, st in zip(t.shape, pad, t.stride()))


def _dwconv_gate(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    bsz, c2, h, w = x.shape
    torch._check(c2 % 2 == 0, lambda: f"x: expected an even channel count, got {c2}")
    torch._check(weight.numel() == c2 * 9, lambda: f"weight: expected shape ({c2}, 1, 3, 3), got {list(weight.shape)}")
    n = c2 // 2
    y = torch.empty((bsz, n, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y
    block_h, block_w, block_c = _blocks(x, n, h, w)
    weight = weight.reshape(c2, 9).contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight
    pad = (0, block_c, block_h + 1, block_w + 1)
    index64 = bool(force_int64) or max(_extent(x, pad), _extent(y, pad)) + 1 > _INT32_MAX
    n_wt = triton.cdiv(w, block_w)
    with on_device(x):
        for b0, b1 in batch_chunks(bsz):               # images along grid z
            grid = (triton.cdiv(h, block_h) * n_wt, triton.cdiv(n, block_c), b1 - b0)
            wrap_triton(_dwconv_gate_kernel)[grid](
                images(x, b0, b1, bsz), weight, bias_arg, images(y, b0, b1, bsz), h, w, n, n_wt,
                x.stride(0), x.stride(1), x.stride(2), x.stride(3), y.stride(0), y.stride(1), y.stride(2), y.stride(3),
                HAS_BIAS=bias is not None, BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
                INDEX64=index64, ACC_FP64=x.dtype == torch.float64,
                num_warps=_NUM_WARPS if x.stride(1) < x.stride(3) else _NCHW_WARPS,
            )
    return y


@triton_op(DWCONV_GATE_NAME, mutates_args=())
def _dwconv_gate_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _dwconv_gate(x, weight, bias)


DWCONV_GATE_OP = torch.ops.fastdenoise.dwconv_gate_triton


def dwconv_gate(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The Triton depthwise 3x3 convolution + GELU gate (inputs checked by
    :func:`fastdenoise.ops.dwconv_gate`)."""
    return DWCONV_GATE_OP(x, weight, bias)


def register_autograd(reference) -> None:
    """Backward of the op: the gradient of ``reference`` (the plain PyTorch convolution and
    gate), recomputed from the saved inputs."""
    register_recompute_autograd(DWCONV_GATE_NAME, reference, 3)
