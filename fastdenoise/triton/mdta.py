"""Triton kernel of Restormer's transposed attention (:mod:`fastdenoise.ops.mdta` holds the spec).

``fastdenoise::mdta_gram_triton(qkv, num_heads) -> (gram, sq)``: for each image and head, the
Gram matrix ``q k^T`` (d x d) and the squared norms of the rows of q and of k (``sq[:, :, 0]``,
``sq[:, :, 1]``), over all H W pixels, in float32. q and k are read in place from ``qkv`` (B, 3C, H, W): channels
``[h d, (h + 1) d)`` and ``C + [h d, (h + 1) d)`` of head h, NCHW or channels_last (offsets
``b s_b + c s_c + p s_p``; the tiles coalesce along whichever axis is contiguous).

Programs: one per (image x head, pixel range). Each loops over its ``PIX`` pixels in
``[D_PAD, BLOCK_P]`` tiles of q and k (``D_PAD``: d rounded up to a power of two >= 16, masked),
accumulating ``tl.dot(q, k^T)`` (float32 accumulation; IEEE float32 products for float32 input,
no TF32) and the row sums of squares, and writes its partial results; ``torch.sum`` adds the
partials of the pixel ranges in a fixed order, so the result is deterministic.

float16, bfloat16 and float32 input. Autograd: the gradients of ``q k^T`` and of the squared
norms, in plain PyTorch (:func:`register_autograd`).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import pixel_stride
from ._launch import batch_chunks, images, on_device

__all__ = ["gram", "GRAM_NAME", "register_autograd", "DTYPES"]

GRAM_NAME = "fastdenoise::mdta_gram_triton"
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TARGET_PROGRAMS = 1024       # enough programs to fill an H100 / H200 a few times over
_INT32_MAX = 2**31 - 1
_NUM_WARPS = 8


def _block_p(d_pad: int, dtype: torch.dtype) -> int:
    """Pixels per tile: the [D_PAD, BLOCK_P] tiles of q and k take 4096 elements (at most 64
    pixels), half that in float32 (its IEEE dot holds its operands in registers), at least 16
    (the dot's minimum K). With 8 warps this is the choice that keeps the sm_90 and sm_80 builds
    free of spills for d = 48 and 96 in every dtype and layout (scripts/triton_aot_check.py:
    Triton's own ptxas run); the former 64 pixels and 4 warps at d = 48 spilled about 1 KB per
    thread in float32 on sm_80. Not timed on a GPU yet."""
    block_p = min(64, 4096 // d_pad)
    if dtype == torch.float32:
        block_p //= 2
    return max(16, block_p)


@triton.jit
def _gram_kernel(x_ptr, g_ptr, sq_ptr, HW, D, C, HEADS, n_split, PIX,
                 sxb, sxc, sxp,
                 D_PAD: tl.constexpr, BLOCK_P: tl.constexpr, INDEX64: tl.constexpr, IEEE: tl.constexpr):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    if INDEX64:
        split = split.to(tl.int64)
        bh = bh.to(tl.int64)
    b = bh // HEADS
    h = bh % HEADS
    i = tl.arange(0, D_PAD)
    imask = i < D
    q_rows = x_ptr + b * sxb + (h * D + i) * sxc
    k_rows = x_ptr + b * sxb + (C + h * D + i) * sxc
    acc = tl.zeros((D_PAD, D_PAD), dtype=tl.float32)
    sq_q = tl.zeros((D_PAD,), dtype=tl.float32)
    sq_k = tl.zeros((D_PAD,), dtype=tl.float32)
    start = split * PIX
    for off in range(0, PIX, BLOCK_P):
        p = start + off + tl.arange(0, BLOCK_P)
        mask = imask[:, None] & (p < HW)[None, :]
        q = tl.load(q_rows[:, None] + p[None, :] * sxp, mask=mask, other=0.0)
        k = tl.load(k_rows[:, None] + p[None, :] * sxp, mask=mask, other=0.0)
        if IEEE:
            acc = tl.dot(q, tl.trans(k), acc, input_precision="ieee")
        else:
            acc = tl.dot(q, tl.trans(k), acc)
        qf = q.to(tl.float32)
        kf = k.to(tl.float32)
        sq_q += tl.sum(qf * qf, axis=1)
        sq_k += tl.sum(kf * kf, axis=1)
    part = bh * n_split + split
    j = tl.arange(0, D_PAD)
    tl.store(g_ptr + (part * D + i[:, None]) * D + j[None, :], acc, mask=imask[:, None] & (j < D)[None, :])
    tl.store(sq_ptr + (part * 2) * D + i, sq_q, mask=imask)
    tl.store(sq_ptr + (part * 2 + 1) * D + i, sq_k, mask=imask)


def _flat_pixels(x: torch.Tensor) -> torch.Tensor:
    """``x`` if its pixels are one stride apart in the flattened H W order (NCHW and
    channels_last dense tensors), else a contiguous copy."""
    _, _, h, w = x.shape
    if h == 1 or w == 1 or x.stride(2) == w * x.stride(3):    # then pixel_stride(x) steps them
        return x
    return x.contiguous()


def _gram(qkv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    torch._check(qkv.dim() == 4, lambda: f"qkv: expected 4 dims (B, 3C, H, W), got {qkv.dim()}")
    qkv = _flat_pixels(qkv)
    b, c3, h, w = qkv.shape
    c = c3 // 3
    d = c // num_heads
    hw = h * w
    bh = b * num_heads
    d_pad = max(16, triton.next_power_of_2(d))
    block_p = _block_p(d_pad, qkv.dtype)
    n_split = max(1, min(triton.cdiv(_TARGET_PROGRAMS, bh), triton.cdiv(hw, block_p)))
    pix = triton.cdiv(triton.cdiv(hw, n_split), block_p) * block_p
    n_split = triton.cdiv(hw, pix)
    g_part = torch.empty((bh, n_split, d, d), dtype=torch.float32, device=qkv.device)
    sq_part = torch.empty((bh, n_split, 2, d), dtype=torch.float32, device=qkv.device)
    last = (b - 1) * qkv.stride(0) + (c3 - 1) * qkv.stride(1) + (hw - 1 + pix) * pixel_stride(qkv)
    index64 = last > _INT32_MAX or bh * n_split * d * d > _INT32_MAX
    with on_device(qkv):
        for b0, b1 in batch_chunks(b, num_heads):      # (image, head) pairs along grid y
            h0, h1 = b0 * num_heads, b1 * num_heads
            wrap_triton(_gram_kernel)[(n_split, h1 - h0)](
                images(qkv, b0, b1, b), images(g_part, h0, h1, bh), images(sq_part, h0, h1, bh),
                hw, d, c, num_heads, n_split, pix,
                qkv.stride(0), qkv.stride(1), pixel_stride(qkv),
                D_PAD=d_pad, BLOCK_P=block_p, INDEX64=index64, IEEE=qkv.dtype == torch.float32,
                num_warps=_NUM_WARPS,
            )
    return g_part.sum(dim=1).reshape(b, num_heads, d, d), sq_part.sum(dim=1).reshape(b, num_heads, 2, d)


@triton_op(GRAM_NAME, mutates_args=())
def _mdta_gram_triton(qkv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return _gram(qkv, num_heads)


GRAM_OP = torch.ops.fastdenoise.mdta_gram_triton


def gram(qkv: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gram (B, heads, d, d), sq_q (B, heads, d), sq_k (B, heads, d)), float32."""
    g, sq = GRAM_OP(qkv, num_heads)
    return g, sq[:, :, 0], sq[:, :, 1]


_REGISTERED = False


def register_autograd() -> None:
    """Backward of the Gram op: ``G = q k^T``, ``s_q = sum q^2``, ``s_k = sum k^2`` give
    ``dq = dG k + 2 q ds_q`` and ``dk = dG^T q + 2 k ds_k`` (v gets no gradient from it)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.num_heads = inputs[1]

    def backward(ctx, g_gram, g_sq):
        (qkv,) = ctx.saved_tensors
        heads = ctx.num_heads
        b, c3, h, w = qkv.shape
        c = c3 // 3
        q, k = (t.float().reshape(b, heads, c // heads, h * w) for t in qkv.chunk(3, dim=1)[:2])
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        if g_gram is not None:
            dq = dq + g_gram @ k
            dk = dk + g_gram.transpose(-2, -1) @ q
        if g_sq is not None:
            dq = dq + 2 * q * g_sq[:, :, 0, :, None]
            dk = dk + 2 * k * g_sq[:, :, 1, :, None]
        dv = torch.zeros_like(q)
        grad = torch.cat([t.reshape(b, c, h, w) for t in (dq, dk, dv)], dim=1)
        return grad.to(qkv.dtype), None

    torch.library.register_autograd(GRAM_NAME, backward, setup_context=setup)
