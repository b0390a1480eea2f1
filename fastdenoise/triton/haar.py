"""Triton kernels of the one-level 2-D Haar transform (forward and inverse), NCHW and channels_last.

The maths and the three conventions are those of :mod:`fastdenoise.ops.haar` (its plain PyTorch
reference is the spec): variant 0 ``orthonormal``, 1 ``invdn``, 2 ``mwcnn``. Forward maps
(B, C, H, W) to (B, 4C, H/2, W/2), sub-band-major; the inverse maps back.

Design (memory-bound: every element is read once and written once):

* One *item* is one 2x2 block of one channel (four full-resolution values, four band values).
  A program handles ``BLOCK`` items as ``BLOCK // V`` *groups* of ``V`` neighbouring items, so
  that every load and store is a ``[groups, V]`` (or ``[groups, 2V]``) tile whose last axis is
  contiguous in memory: Triton turns it into vector loads/stores of up to 16 bytes, and the
  index arithmetic (div/mod by the sizes) is paid once per group, not per element.
* The flattened group index is decomposed in the order of the layout, so consecutive lanes
  touch consecutive memory: NCHW: ``(b, c, i, j)`` with the output column fastest (a group is V
  output columns, i.e. 2V contiguous input columns of rows 2i and 2i+1, split in registers
  into the even/odd columns); channels_last: ``(b, i, j, c)`` with the channel fastest (a group
  is V channels of one pixel). The ``CHANNELS_LAST`` constexpr picks the decomposition; the
  group's base offset uses the strides passed in, and the offsets inside a group step by one
  (the innermost stride of both dense layouts). ``tl.multiple_of`` tells the compiler the
  base offsets' alignment, which holds because V divides W/2 (NCHW) or C (channels_last).
* ``V`` is the largest power of two that divides that innermost extent with ``V`` elements at
  most 16 bytes; the block is 16 KiB of input per program (1024 float32 items), 4 warps.
* Offsets are 32-bit unless the tensors are too big, in which case the ``INDEX64`` constexpr
  casts the program id to int64 before any index arithmetic.
* Accumulation in float32 (float64 for float64 input); stores in the input dtype.

The launchers are exposed as real torch ops, ``fastdenoise::haar_dwt2d_triton`` and
``fastdenoise::haar_idwt2d_triton`` ``(Tensor x, int variant) -> Tensor``, through
``torch.library.triton_op`` + ``wrap_triton``; :mod:`fastdenoise.ops.haar` checks the inputs,
registers their autograd and calls them. Non-dense inputs (neither contiguous NCHW nor
channels_last) are made contiguous first; outputs keep the input's memory format.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .._checks import memory_format_of
from ._launch import on_device

__all__ = ["haar_dwt2d", "haar_idwt2d", "DWT_OP", "IDWT_OP", "DWT_NAME", "IDWT_NAME"]

DWT_NAME = "fastdenoise::haar_dwt2d_triton"
IDWT_NAME = "fastdenoise::haar_idwt2d_triton"

#: Variant ids, as in fastdenoise.ops.haar.VARIANTS (0 orthonormal, 1 invdn, 2 mwcnn).
NUM_VARIANTS = 3

_VEC_BYTES = 16          # widest vector load/store
_BLOCK_BYTES = 16384     # input bytes per program (1024 float32 items of 4 elements)
_NUM_WARPS = 4
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _to_acc(v, ACC_FP64: tl.constexpr):
    if ACC_FP64:
        r = v.to(tl.float64)
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def _forward_bands(a, b, c, d, VARIANT: tl.constexpr):
    """Bands 0..3 of the 2x2 block [[a, b], [c, d]] (the table in fastdenoise/ops/haar.py)."""
    p = a + b
    m = a - b
    q = c + d
    n = c - d
    s = p + q          # a + b + c + d
    hor = p - q        # a + b - c - d
    ver = m + n        # a - b + c - d
    dia = m - n        # a - b - c + d
    if VARIANT == 0:    # orthonormal: (a+b-c-d, a-b+c-d, a-b-c+d) / 2
        y0 = 0.5 * s
        y1 = 0.5 * hor
        y2 = 0.5 * ver
        y3 = 0.5 * dia
    elif VARIANT == 1:  # invdn: (a-b+c-d, a+b-c-d, a-b-c+d) / 4
        y0 = 0.25 * s
        y1 = 0.25 * ver
        y2 = 0.25 * hor
        y3 = 0.25 * dia
    else:               # mwcnn: (-a+b-c+d, -a-b+c+d, a-b-c+d) / 2
        y0 = 0.5 * s
        y1 = -0.5 * ver
        y2 = -0.5 * hor
        y3 = 0.5 * dia
    return y0, y1, y2, y3


@triton.jit
def _inverse_block(y0, y1, y2, y3, VARIANT: tl.constexpr):
    """The 2x2 block (a, b, c, d) from bands 0..3: x_n = scale_inv * sum_k sign[k][n] * band_k."""
    # Express the bands as the coefficients of the patterns hor = (1, 1, -1, -1),
    # ver = (1, -1, 1, -1), dia = (1, -1, -1, 1) over (a, b, c, d), times the inverse scale.
    if VARIANT == 0:    # orthonormal, scale 1/2
        s = 0.5 * y0
        hor = 0.5 * y1
        ver = 0.5 * y2
        dia = 0.5 * y3
    elif VARIANT == 1:  # invdn, scale 1
        s = y0
        hor = y2
        ver = y1
        dia = y3
    else:               # mwcnn, scale 1/2; band 1 = -ver, band 2 = -hor
        s = 0.5 * y0
        hor = -0.5 * y2
        ver = -0.5 * y1
        dia = 0.5 * y3
    p = s + hor
    m = s - hor
    q = ver + dia
    r = ver - dia
    return p + q, p - q, m + r, m - r


@triton.jit
def _group_coords(g, n_vec, C, h, w, V: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """(b, c, i, j) of the first item of group g; the V items of a group are V consecutive
    channels (channels_last) or output columns (NCHW)."""
    if CHANNELS_LAST:   # g = ((b * h + i) * w + j) * n_vec + c // V
        c = (g % n_vec) * V
        pix = g // n_vec
        j = pix % w
        row = pix // w
        i = row % h
        b = row // h
    else:               # g = ((b * C + c) * h + i) * n_vec + j // V
        j = (g % n_vec) * V
        row = g // n_vec
        i = row % h
        bc = row // h
        c = bc % C
        b = bc // C
    return b, c, i, j


@triton.jit
def _haar_dwt2d_kernel(
    x_ptr, y_ptr,
    n_groups, n_vec, C, h, w, band,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    VARIANT: tl.constexpr, CHANNELS_LAST: tl.constexpr, V: tl.constexpr,
    BLOCK: tl.constexpr, INDEX64: tl.constexpr, ACC_FP64: tl.constexpr,
):
    """x (B, C, 2h, 2w) -> y (B, 4C, h, w); ``band`` = C * syc, the offset between sub-bands."""
    G: tl.constexpr = BLOCK // V
    pid = tl.program_id(0)
    if INDEX64:
        pid = pid.to(tl.int64)
    g = pid * G + tl.arange(0, G)
    mask = (g < n_groups)[:, None]
    b, c, i, j = _group_coords(g, n_vec, C, h, w, V, CHANNELS_LAST)
    lane = tl.arange(0, V)[None, :]
    xa = b * sxb + c * sxc + (2 * i) * sxh + (2 * j) * sxw
    if CHANNELS_LAST:
        # Four [G, V] tiles, each V consecutive channels of one pixel of the 2x2 block.
        x00 = tl.load(x_ptr + (tl.multiple_of(xa, V)[:, None] + lane), mask=mask)
        x01 = tl.load(x_ptr + (tl.multiple_of(xa + sxw, V)[:, None] + lane), mask=mask)
        x10 = tl.load(x_ptr + (tl.multiple_of(xa + sxh, V)[:, None] + lane), mask=mask)
        x11 = tl.load(x_ptr + (tl.multiple_of(xa + sxh + sxw, V)[:, None] + lane), mask=mask)
    else:
        # Two [G, 2V] tiles (2V contiguous columns of rows 2i and 2i+1), split into even/odd.
        lane2 = tl.arange(0, 2 * V)[None, :]
        top = tl.load(x_ptr + (tl.multiple_of(xa, 2 * V)[:, None] + lane2), mask=mask)
        bot = tl.load(x_ptr + (tl.multiple_of(xa + sxh, 2 * V)[:, None] + lane2), mask=mask)
        x00, x01 = tl.split(tl.reshape(top, (G, V, 2)))
        x10, x11 = tl.split(tl.reshape(bot, (G, V, 2)))
    y0, y1, y2, y3 = _forward_bands(_to_acc(x00, ACC_FP64), _to_acc(x01, ACC_FP64),
                                    _to_acc(x10, ACC_FP64), _to_acc(x11, ACC_FP64), VARIANT)
    out_ty = y_ptr.dtype.element_ty
    ya = b * syb + c * syc + i * syh + j * syw
    tl.store(y_ptr + (tl.multiple_of(ya, V)[:, None] + lane), y0.to(out_ty), mask=mask)
    tl.store(y_ptr + (tl.multiple_of(ya + band, V)[:, None] + lane), y1.to(out_ty), mask=mask)
    tl.store(y_ptr + (tl.multiple_of(ya + 2 * band, V)[:, None] + lane), y2.to(out_ty), mask=mask)
    tl.store(y_ptr + (tl.multiple_of(ya + 3 * band, V)[:, None] + lane), y3.to(out_ty), mask=mask)


@triton.jit
def _haar_idwt2d_kernel(
    x_ptr, y_ptr,
    n_groups, n_vec, C, h, w, band,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    VARIANT: tl.constexpr, CHANNELS_LAST: tl.constexpr, V: tl.constexpr,
    BLOCK: tl.constexpr, INDEX64: tl.constexpr, ACC_FP64: tl.constexpr,
):
    """y (B, 4C, h, w) -> x (B, C, 2h, 2w); same arguments as the forward kernel."""
    G: tl.constexpr = BLOCK // V
    pid = tl.program_id(0)
    if INDEX64:
        pid = pid.to(tl.int64)
    g = pid * G + tl.arange(0, G)
    mask = (g < n_groups)[:, None]
    b, c, i, j = _group_coords(g, n_vec, C, h, w, V, CHANNELS_LAST)
    lane = tl.arange(0, V)[None, :]
    ya = b * syb + c * syc + i * syh + j * syw
    y0 = tl.load(y_ptr + (tl.multiple_of(ya, V)[:, None] + lane), mask=mask)
    y1 = tl.load(y_ptr + (tl.multiple_of(ya + band, V)[:, None] + lane), mask=mask)
    y2 = tl.load(y_ptr + (tl.multiple_of(ya + 2 * band, V)[:, None] + lane), mask=mask)
    y3 = tl.load(y_ptr + (tl.multiple_of(ya + 3 * band, V)[:, None] + lane), mask=mask)
    x00, x01, x10, x11 = _inverse_block(_to_acc(y0, ACC_FP64), _to_acc(y1, ACC_FP64),
                                        _to_acc(y2, ACC_FP64), _to_acc(y3, ACC_FP64), VARIANT)
    out_ty = x_ptr.dtype.element_ty
    x00 = x00.to(out_ty)
    x01 = x01.to(out_ty)
    x10 = x10.to(out_ty)
    x11 = x11.to(out_ty)
    xa = b * sxb + c * sxc + (2 * i) * sxh + (2 * j) * sxw
    if CHANNELS_LAST:
        tl.store(x_ptr + (tl.multiple_of(xa, V)[:, None] + lane), x00, mask=mask)
        tl.store(x_ptr + (tl.multiple_of(xa + sxw, V)[:, None] + lane), x01, mask=mask)
        tl.store(x_ptr + (tl.multiple_of(xa + sxh, V)[:, None] + lane), x10, mask=mask)
        tl.store(x_ptr + (tl.multiple_of(xa + sxh + sxw, V)[:, None] + lane), x11, mask=mask)
    else:
        lane2 = tl.arange(0, 2 * V)[None, :]
        top = tl.reshape(tl.join(x00, x01), (G, 2 * V))
        bot = tl.reshape(tl.join(x10, x11), (G, 2 * V))
        tl.store(x_ptr + (tl.multiple_of(xa, 2 * V)[:, None] + lane2), top, mask=mask)
        tl.store(x_ptr + (tl.multiple_of(xa + sxh, 2 * V)[:, None] + lane2), bot, mask=mask)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------

def _dense(t: torch.Tensor) -> tuple:
    """(t or a contiguous copy of it, channels_last?): the kernels take dense NCHW or NHWC."""
    if memory_format_of(t) == torch.channels_last:
        return t, True
    return t.contiguous(), False


def _vec_width(extent, element_size: int) -> int:
    """Items per group: the largest power of two dividing ``extent`` (W/2 for NCHW, C for
    channels_last) with that many elements in at most 16 bytes."""
    v = max(_VEC_BYTES // element_size, 1)
    while v > 1 and extent % v != 0:
        v //= 2
    return v


def _block_items(element_size: int) -> int:
    """Items per program: 16 KiB of input (1024 float32, 2048 float16/bfloat16, 512 float64)."""
    return _BLOCK_BYTES // (4 * element_size)


def _use_int64(numel, block: int) -> bool:
    """64-bit offsets when an offset (including those of the masked lanes of the last
    program, at most a few blocks past the end) may not fit in int32."""
    return numel + 8 * block > _INT32_MAX


def _launch(kernel, full: torch.Tensor, sub: torch.Tensor, c, h, w, variant: int,
            channels_last: bool, force_int64: bool) -> None:
    """Run ``kernel`` over the B*C*h*w items of the pair full (B, C, 2h, 2w) / sub (B, 4C, h, w)."""
    items = full.shape[0] * c * h * w
    if items == 0:
        return
    elt = full.element_size()
    v = _vec_width(c if channels_last else w, elt)
    block = max(_block_items(elt), v)
    n_groups = items // v
    n_vec = (c if channels_last else w) // v
    grid = (triton.cdiv(n_groups, block // v),)
    index64 = bool(force_int64) or _use_int64(max(full.numel(), sub.numel()), block)
    with on_device(full):                              # a 1-D grid: no chunks
        wrap_triton(kernel)[grid](
            full, sub, n_groups, n_vec, c, h, w, c * sub.stride(1),
            full.stride(0), full.stride(1), full.stride(2), full.stride(3),
            sub.stride(0), sub.stride(1), sub.stride(2), sub.stride(3),
            VARIANT=variant, CHANNELS_LAST=channels_last, V=v, BLOCK=block,
            INDEX64=index64, ACC_FP64=full.dtype == torch.float64,
            num_warps=_NUM_WARPS,
        )


def _check_variant(variant: int) -> None:
    torch._check(0 <= variant < NUM_VARIANTS,
                 lambda: f"variant: expected an id in [0, {NUM_VARIANTS}), got {variant}")


def _dwt(x: torch.Tensor, variant: int, force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    _check_variant(variant)
    n, c, hh, ww = x.shape
    torch._check(hh % 2 == 0, lambda: f"x: expected even H and W, got H={hh}")
    torch._check(ww % 2 == 0, lambda: f"x: expected even H and W, got W={ww}")
    x, channels_last = _dense(x)
    h, w = hh // 2, ww // 2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, 4 * c, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    _launch(_haar_dwt2d_kernel, x, y, c, h, w, variant, channels_last, force_int64)
    return y


def _idwt(y: torch.Tensor, variant: int, force_int64: bool = False) -> torch.Tensor:
    torch._check(y.dim() == 4, lambda: f"y: expected 4 dims (B, 4C, h, w), got {y.dim()}")
    _check_variant(variant)
    n, c4, h, w = y.shape
    torch._check(c4 % 4 == 0, lambda: f"y: expected a channel count divisible by 4, got {c4}")
    y, channels_last = _dense(y)
    c = c4 // 4
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty((n, c, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
    _launch(_haar_idwt2d_kernel, x, y, c, h, w, variant, channels_last, force_int64)
    return x


# --------------------------------------------------------------------------------------------
# Torch ops
# --------------------------------------------------------------------------------------------

@triton_op(DWT_NAME, mutates_args=())
def _haar_dwt2d_triton(x: torch.Tensor, variant: int) -> torch.Tensor:
    return _dwt(x, variant)


@triton_op(IDWT_NAME, mutates_args=())
def _haar_idwt2d_triton(x: torch.Tensor, variant: int) -> torch.Tensor:
    return _idwt(x, variant)


DWT_OP = torch.ops.fastdenoise.haar_dwt2d_triton
IDWT_OP = torch.ops.fastdenoise.haar_idwt2d_triton


def haar_dwt2d(x: torch.Tensor, variant: int) -> torch.Tensor:
    """Forward Haar transform (B, C, H, W) -> (B, 4C, H/2, W/2) with the Triton kernel.

    ``variant`` is the id (0 orthonormal, 1 invdn, 2 mwcnn); inputs are checked by
    :func:`fastdenoise.ops.haar_dwt2d`, which is the function to call.
    """
    return DWT_OP(x, variant)


def haar_idwt2d(y: torch.Tensor, variant: int) -> torch.Tensor:
    """Inverse Haar transform (B, 4C, h, w) -> (B, C, 2h, 2w) with the Triton kernel."""
    return IDWT_OP(y, variant)
