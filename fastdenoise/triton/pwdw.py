"""Triton kernel of the 1x1 convolution + depthwise 3x3 (+ GELU gate) (:mod:`fastdenoise.ops.pwdw`
holds the spec).

Design: x is read once from DRAM and the output written once; the 1x1's Cmid-channel result
``m`` lives only in registers.

* A program takes one image, a run of ``BLOCK_P`` columns, a band of ``ROWS`` output rows and
  ``BLOCK_CO`` output channels (with the gate: ``BLOCK_CO`` gate channels and their ``BLOCK_CO``
  value partners). Grid: (channel tiles x bands x column runs, images), the channel tile
  fastest, so the programs that read the same pixels of x run side by side and share them
  through L2.
* It walks the ``ROWS + 2`` input rows of its band (one halo row above and below). For each row
  it computes ``m`` at the run's columns shifted by -1, 0 and +1 -- three ``tl.dot`` of a
  (BLOCK_P x Cin) tile of x with the (Cin x BLOCK_CO) weight tile, accumulated in float32 over
  Cin in ``BLOCK_CI`` slices -- adds the 1x1's bias and zeroes what lies outside the image (the
  depthwise convolution's zero padding applies to ``m``). Each of those rows is then spread
  onto the three output rows it touches: running float32 accumulators for rows r - 1, r and
  r + 1 take the taps of the depthwise kernel's bottom, middle and top row. After the row, the
  accumulator of row r - 1 is complete: depthwise bias, the gate (``gelu(a) * b``, exact erf),
  one store in x's dtype; the accumulators shift down by one row.
* Cost: the 1x1's multiply-adds are done ``3 (ROWS + 2) / ROWS`` times (the three horizontal
  shifts and the halo rows; Triton has no register shuffle to shift a row in place) in
  exchange for never writing or reading ``m``. The dot runs on the tensor cores: float16 /
  bfloat16 operands (the weight rounded to x's dtype), float32 x in 3-pass TF32.
* Offsets are ``b s_b + c s_c + i s_h + j s_w`` with x's own strides (NCHW, channels_last and
  strided views read in place); the output has x's memory format; 64-bit offsets
  (``INDEX64``) when the tensors' extents exceed int32.

The launcher is the torch op ``fastdenoise::pointwise_dwconv_triton`` ``(Tensor x, Tensor
weight, Tensor dw_weight, Tensor? bias, Tensor? dw_bias, bool gate) -> Tensor``
(``torch.library.triton_op``); its autograd recomputes the plain PyTorch reference.

Block sizes (``_blocks``) are chosen so that the sm_90 and sm_80 builds do not spill (see the
constants); they are not tuned on a GPU yet.
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

__all__ = ["pointwise_dwconv", "POINTWISE_DWCONV_NAME", "register_autograd"]

POINTWISE_DWCONV_NAME = "fastdenoise::pointwise_dwconv_triton"
# Tile: 16 columns x 32 output channels (per half with the gate), the input channels in slices
# of 16, 4 warps. Compiled for sm_90 and sm_80 by scripts/triton_aot_check.py (triton 3.9's own
# ptxas run) this spills in none of its cases (Cin 20 to 384, every dtype, layout and gate),
# where 32 columns spilled about 1.1 KB per thread in float32 with the gate and slices of 64
# input channels 0.6-0.8 KB. Not timed on a GPU yet.
_ROWS = 16            # output rows of a band
_MAX_P = 16           # columns of a run
_MAX_CO = 32          # output channels of a tile (per half with the gate)
_BLOCK_CI = 16        # input channels of a dot's slice (the tensor cores' K; Restormer's widths are multiples)
_NUM_WARPS = 4
_INT32_MAX = 2**31 - 1


@triton.jit
def _shifted_rows(x_ptr, wt_ptr, row_off, row_ok, j, W, C_in, C_mid, co, comask, sxc, sxw,
                  BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
                  PRECISION: tl.constexpr):
    """The 1x1 convolution (no bias) of one input row at columns j - 1, j and j + 1:
    three [BLOCK_P, BLOCK_CO] float32 tiles."""
    jl = j - 1
    jr = j + 1
    ok_l = row_ok & (jl >= 0) & (jl < W)
    ok_m = row_ok & (j < W)
    ok_r = row_ok & (jr < W)
    acc_l = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for k0 in range(0, C_in, BLOCK_CI):
        ci = k0 + tl.arange(0, BLOCK_CI)
        cimask = ci < C_in
        w = tl.load(wt_ptr + ci[:, None] * C_mid + co[None, :], mask=cimask[:, None] & comask[None, :], other=0.0)
        base = row_off + (ci * sxc)[None, :]
        xl = tl.load(x_ptr + base + (jl * sxw)[:, None], mask=ok_l[:, None] & cimask[None, :], other=0.0)
        xm = tl.load(x_ptr + base + (j * sxw)[:, None], mask=ok_m[:, None] & cimask[None, :], other=0.0)
        xr = tl.load(x_ptr + base + (jr * sxw)[:, None], mask=ok_r[:, None] & cimask[None, :], other=0.0)
        acc_l = tl.dot(xl, w, acc_l, input_precision=PRECISION)
        acc_m = tl.dot(xm, w, acc_m, input_precision=PRECISION)
        acc_r = tl.dot(xr, w, acc_r, input_precision=PRECISION)
    return acc_l, acc_m, acc_r, ok_l, ok_m, ok_r


@triton.jit
def _pad_bias(acc, ok, b1):
    """The 1x1's bias added, then zero outside the image (the depthwise convolution's padding)."""
    return tl.where(ok[:, None], acc + b1[None, :], 0.0)


@triton.jit
def _taps(wd_ptr, c, cmask, u: tl.constexpr):
    """Row ``u`` of the depthwise kernels of channels c: three [1, BLOCK_CO] float32 vectors."""
    t0 = tl.load(wd_ptr + c * 9 + (u * 3 + 0), mask=cmask, other=0.0).to(tl.float32)[None, :]
    t1 = tl.load(wd_ptr + c * 9 + (u * 3 + 1), mask=cmask, other=0.0).to(tl.float32)[None, :]
    t2 = tl.load(wd_ptr + c * 9 + (u * 3 + 2), mask=cmask, other=0.0).to(tl.float32)[None, :]
    return t0, t1, t2


@triton.jit
def _spread(acc_a, acc_b, acc_c, m_l, m_m, m_r, wd_ptr, c, cmask):
    """Row r of m into the accumulators of output rows r - 1 (kernel row 2), r (row 1) and
    r + 1 (row 0)."""
    t0, t1, t2 = _taps(wd_ptr, c, cmask, 2)
    acc_a += t0 * m_l + t1 * m_m + t2 * m_r
    t0, t1, t2 = _taps(wd_ptr, c, cmask, 1)
    acc_b += t0 * m_l + t1 * m_m + t2 * m_r
    t0, t1, t2 = _taps(wd_ptr, c, cmask, 0)
    acc_c += t0 * m_l + t1 * m_m + t2 * m_r
    return acc_a, acc_b, acc_c


@triton.jit
def _pointwise_dwconv_kernel(
    x_ptr, wt_ptr, b1_ptr, wd_ptr, bd_ptr, y_ptr,
    H, W, C_in, C_mid, N_out, n_cb, n_rb,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw,
    HAS_B1: tl.constexpr, HAS_BD: tl.constexpr, GATE: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    INDEX64: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    if INDEX64:
        pid = pid.to(tl.int64)
        b = b.to(tl.int64)
    cb = pid % n_cb
    sp = pid // n_cb
    rb = sp % n_rb
    jb = sp // n_rb
    j = jb * BLOCK_P + tl.arange(0, BLOCK_P)             # output (and centre) columns
    co = cb * BLOCK_CO + tl.arange(0, BLOCK_CO)          # output channels (the gate's half)
    comask = co < N_out
    co2 = co + N_out                                     # the value partners (gate only)
    r0 = rb * ROWS

    b1 = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    b1v = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    bd = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    bdv = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    if HAS_B1:
        b1 = tl.load(b1_ptr + co, mask=comask, other=0.0).to(tl.float32)
        if GATE:
            b1v = tl.load(b1_ptr + co2, mask=comask, other=0.0).to(tl.float32)
    if HAS_BD:
        bd = tl.load(bd_ptr + co, mask=comask, other=0.0).to(tl.float32)
        if GATE:
            bdv = tl.load(bd_ptr + co2, mask=comask, other=0.0).to(tl.float32)

    acc_a = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)     # output row r - 1
    acc_b = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)     # row r
    acc_c = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)     # row r + 1
    val_a = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)     # the same for the value half
    val_b = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    val_c = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    smask_c = (j < W)[:, None] & comask[None, :]
    yoff_c = b * syb + (co * syc)[None, :] + (j * syw)[:, None]

    for t in range(0, ROWS + 2):
        r = r0 - 1 + t                                   # the input row of this step
        rv = r + 0 * j         # as a vector: the interpreter rejects masks mixing scalar and vector bools
        row_ok = (rv >= 0) & (rv < H)
        row_off = b * sxb + r * sxh
        m_l, m_m, m_r, ok_l, ok_m, ok_r = _shifted_rows(
            x_ptr, wt_ptr, row_off, row_ok, j, W, C_in, C_mid, co, comask, sxc, sxw,
            BLOCK_P, BLOCK_CI, BLOCK_CO, PRECISION)
        acc_a, acc_b, acc_c = _spread(acc_a, acc_b, acc_c, _pad_bias(m_l, ok_l, b1), _pad_bias(m_m, ok_m, b1),
                                      _pad_bias(m_r, ok_r, b1), wd_ptr, co, comask)
        if GATE:
            v_l, v_m, v_r, ok_l, ok_m, ok_r = _shifted_rows(
                x_ptr, wt_ptr, row_off, row_ok, j, W, C_in, C_mid, co2, comask, sxc, sxw,
                BLOCK_P, BLOCK_CI, BLOCK_CO, PRECISION)
            val_a, val_b, val_c = _spread(val_a, val_b, val_c, _pad_bias(v_l, ok_l, b1v), _pad_bias(v_m, ok_m, b1v),
                                          _pad_bias(v_r, ok_r, b1v), wd_ptr, co2, comask)
        # acc_a now holds all of output row r - 1 (stored from the band's first row on)
        y_row = rv - 1
        out = acc_a + bd[None, :]
        if GATE:
            out = 0.5 * out * (1.0 + tl.erf(out * 0.7071067811865476)) * (val_a + bdv[None, :])
        keep = (y_row >= r0) & (y_row < H)              # from the band's first row (step 2) on
        tl.store(y_ptr + yoff_c + (y_row * syh)[:, None], out.to(y_ptr.dtype.element_ty),
                 mask=smask_c & keep[:, None])
        acc_a = acc_b
        acc_b = acc_c
        acc_c = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
        if GATE:
            val_a = val_b
            val_b = val_c
            val_c = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)


def _np2_at_least_16(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def _blocks(cin: int, n_out: int, h: int, w: int):
    """(ROWS, BLOCK_P, BLOCK_CI, BLOCK_CO): powers of two of at least 16 where they feed
    ``tl.dot`` (a Cin that is not a multiple of 16 ends in a masked slice)."""
    rows = min(_ROWS, h)
    block_p = _np2_at_least_16(w, _MAX_P)
    block_co = _np2_at_least_16(n_out, _MAX_CO)
    return rows, block_p, _BLOCK_CI, block_co


def _extent(t: torch.Tensor, pad: tuple) -> int:
    """Largest element offset formed for ``t`` with each index up to size - 1 + pad (and one
    row / column of halo below zero, whose masked offsets must not wrap either)."""
    return sum((s - 1 + p) * abs(st) for s, p, st in zip(t.shape, pad, t.stride()))


def _pointwise_dwconv(x: torch.Tensor, weight: torch.Tensor, dw_weight: torch.Tensor,
                      bias: Optional[torch.Tensor], dw_bias: Optional[torch.Tensor], gate: bool,
                      force_int64: bool = False) -> torch.Tensor:
    torch._check(x.dim() == 4, lambda: f"x: expected 4 dims (B, C, H, W), got {x.dim()}")
    bsz, cin, h, w = x.shape
    cmid = weight.shape[0]
    torch._check(weight.numel() == cmid * cin,
                 lambda: f"weight: expected ({cmid}, {cin}, 1, 1), got {list(weight.shape)}")
    torch._check(dw_weight.numel() == cmid * 9, lambda: f"dw_weight: expected ({cmid}, 1, 3, 3)")
    torch._check(not gate or cmid % 2 == 0, lambda: f"gate: expected an even channel count, got {cmid}")
    torch._check(x.dtype != torch.float64, lambda: "x: the Triton kernel takes float16, bfloat16 or float32")
    n_out = cmid // 2 if gate else cmid
    y = torch.empty((bsz, n_out, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y
    rows, block_p, block_ci, block_co = _blocks(cin, n_out, h, w)
    wt = weight.reshape(cmid, cin).t().to(x.dtype).contiguous()        # (Cin, Cmid): the dot's B operand
    wd = dw_weight.reshape(cmid, 9).contiguous()
    b1 = bias.contiguous() if bias is not None else wd
    bd = dw_bias.contiguous() if dw_bias is not None else wd
    pad = (0, block_ci + block_co, rows + 2, block_p + 2)
    index64 = bool(force_int64) or max(_extent(x, pad), _extent(y, pad)) + 1 > _INT32_MAX
    n_cb = triton.cdiv(n_out, block_co)
    n_rb = triton.cdiv(h, rows)
    with on_device(x):
        for i0, i1 in batch_chunks(bsz):               # images along grid y
            wrap_triton(_pointwise_dwconv_kernel)[(n_cb * n_rb * triton.cdiv(w, block_p), i1 - i0)](
                images(x, i0, i1, bsz), wt, b1, wd, bd, images(y, i0, i1, bsz), h, w, cin, cmid, n_out, n_cb, n_rb,
                x.stride(0), x.stride(1), x.stride(2), x.stride(3), y.stride(0), y.stride(1), y.stride(2), y.stride(3),
                HAS_B1=bias is not None, HAS_BD=dw_bias is not None, GATE=gate, ROWS=rows,
                BLOCK_P=block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co, INDEX64=index64,
                PRECISION="tf32x3" if x.dtype == torch.float32 else "tf32", num_warps=_NUM_WARPS,
            )
    return y


@triton_op(POINTWISE_DWCONV_NAME, mutates_args=())
def _pointwise_dwconv_triton(x: torch.Tensor, weight: torch.Tensor, dw_weight: torch.Tensor,
                             bias: Optional[torch.Tensor], dw_bias: Optional[torch.Tensor], gate: bool) -> torch.Tensor:
    return _pointwise_dwconv(x, weight, dw_weight, bias, dw_bias, gate)


POINTWISE_DWCONV_OP = torch.ops.fastdenoise.pointwise_dwconv_triton


def pointwise_dwconv(x: torch.Tensor, weight: torch.Tensor, dw_weight: torch.Tensor, bias: Optional[torch.Tensor],
                     dw_bias: Optional[torch.Tensor], gate: bool) -> torch.Tensor:
    """The Triton 1x1 + depthwise 3x3 (+ gate) (inputs checked by
    :func:`fastdenoise.ops.pointwise_dwconv`)."""
    return POINTWISE_DWCONV_OP(x, weight, dw_weight, bias, dw_bias, gate)


def register_autograd(reference) -> None:
    """Backward of the op: the gradient of ``reference(x, weight, dw_weight, bias, dw_bias,
    gate)`` (the plain PyTorch convolutions), recomputed from the saved inputs."""
    register_recompute_autograd(POINTWISE_DWCONV_NAME, reference, 5)
