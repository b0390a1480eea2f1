"""Restormer's transposed self-attention (MDTA) after its q, k, v convolutions, as one op.

``transposed_attention(qkv, temperature, num_heads, weight=None, bias=None)``, the plain PyTorch
reference below being the spec. ``qkv`` (B, 3C, H, W) is the output of the block's depthwise
3x3 (``qkv_dwconv(qkv(x))``); with ``d = C / num_heads`` channels per head:

* ``q, k, v`` = the three thirds of the channels, each cut into ``num_heads`` heads of ``d``
  channels and flattened over the pixels: (B, heads, d, H W);
* ``q`` and ``k`` L2-normalised along the pixels (``q / max(||q||, 1e-12)``, as
  ``F.normalize``);
* ``attn = softmax(q k^T * temperature[h])`` over the last axis: a (d x d) matrix per image
  and head -- there is no ``1 / sqrt(d)``: the learned temperature scales the logits;
* ``out = attn v``, back to (B, C, H, W); then ``project_out``: ``weight`` (C, C) or (C, C, 1, 1)
  and ``bias`` (C,) when given (``weight=None``: no projection).

The fused path (Triton, CUDA tensors) never materialises normalised q / k, the attended tensor
or its projection's input:

1. one pass over H W reading q and k in place from ``qkv`` (NCHW or channels_last),
   accumulating per (image, head) the Gram matrix ``q k^T`` and the squared norms of the rows of
   q and k in float32 -- split over H W across programs, the partial results added by
   ``torch.sum`` in a fixed order (deterministic);
2. the normalisation (``G_ij / (max(|q_i|, eps) max(|k_j|, eps))``), temperature and the d x d
   softmax on those tiny matrices, in float32;
3. ``project_out`` folded into the attention: ``M_b = W_out blockdiag(attn_b)``, one C x C
   matrix per image, so the output is ``M_b v_b + bias`` (``+ residual``: the block's skip
   connection, optional): one batched matrix product reading v in place and writing the output
   once, the additions in its epilogue.

Bytes: q and k read once, v read once, the output written once -- the two-pass minimum.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._checks import FLOAT_DTYPES, check_same_device, check_tensor, memory_format_of
from ..errors import DTypeError, ShapeError

__all__ = ["transposed_attention", "transposed_attention_reference", "NORM_EPS", "TRITON_MAX_HEAD_DIM"]

#: the eps of F.normalize, which the official uses for q and k
NORM_EPS = 1e-12
#: Most channels per head the Triton Gram kernel takes: its program holds a d x d float32
#: accumulator (padded to a power of two) in registers, 128 x 128 for the official d = 96.
#: Above it the default dispatch runs the reference and ``backend="triton"`` raises.
TRITON_MAX_HEAD_DIM = 128


def _check(qkv, temperature, num_heads, weight, bias, residual=None):
    check_tensor("qkv", qkv)
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    c3 = qkv.shape[1]
    if c3 % (3 * num_heads):
        raise ShapeError(f"qkv: expected 3 * C channels with C a multiple of num_heads={num_heads} "
                         f"(q, k and v, each cut into heads), got {c3}: {list(qkv.shape)}")
    c = c3 // 3
    if not isinstance(temperature, torch.Tensor):
        raise TypeError(f"temperature: expected a torch.Tensor, got {type(temperature).__name__}")
    if tuple(temperature.shape) not in ((num_heads, 1, 1), (num_heads,)):
        raise ShapeError(f"temperature: expected shape ({num_heads}, 1, 1) or ({num_heads},), "
                         f"got {list(temperature.shape)}")
    if temperature.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"temperature: expected a floating dtype, got {temperature.dtype}")
    check_same_device("temperature", temperature, "qkv", qkv)
    w = None
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight: expected a torch.Tensor or None, got {type(weight).__name__}")
        shape = tuple(weight.shape)
        if shape not in ((c, c), (c, c, 1, 1)):
            raise ShapeError(f"weight: expected project_out's weight of shape ({c}, {c}) or ({c}, {c}, 1, 1), "
                             f"got {list(weight.shape)}")
        if weight.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"weight: expected a floating dtype, got {weight.dtype}")
        check_same_device("weight", weight, "qkv", qkv)
        w = weight.reshape(c, c)
    if bias is not None:
        if weight is None:
            raise ValueError("bias: given without weight (the bias belongs to project_out)")
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (c,):
            raise ShapeError(f"bias: expected shape ({c},), got {list(bias.shape)}")
        if bias.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"bias: expected a floating dtype, got {bias.dtype}")
        check_same_device("bias", bias, "qkv", qkv)
    if residual is not None:
        check_tensor("residual", residual)
        want = (qkv.shape[0], c, qkv.shape[2], qkv.shape[3])
        if tuple(residual.shape) != want:
            raise ShapeError(f"residual: expected shape {list(want)} (the output's), got {list(residual.shape)}")
        check_same_device("residual", residual, "qkv", qkv)
    return c, w


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def transposed_attention_reference(qkv: torch.Tensor, temperature: torch.Tensor, num_heads: int,
                                   weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                                   residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The official maths in float32 (float64 for float64 input), rounded once to the output
    dtype (qkv's, promoted with residual's when given)."""
    c, w = _check(qkv, temperature, num_heads, weight, bias, residual)
    return _reference(qkv, temperature, num_heads, w, bias, c, residual)


def _out_dtype(qkv, residual):
    return qkv.dtype if residual is None else torch.promote_types(qkv.dtype, residual.dtype)


def _reference(qkv, temperature, num_heads, w, bias, c, residual=None):
    b, _, h, wd = qkv.shape
    acc = _acc(qkv)
    q, k, v = (t.reshape(b, num_heads, c // num_heads, h * wd) for t in qkv.to(acc).chunk(3, dim=1))
    q = F.normalize(q, dim=-1, eps=NORM_EPS)
    k = F.normalize(k, dim=-1, eps=NORM_EPS)
    attn = (q @ k.transpose(-2, -1)) * temperature.to(acc).reshape(num_heads, 1, 1)
    out = (attn.softmax(dim=-1) @ v).reshape(b, c, h, wd)
    if w is not None:
        out = F.conv2d(out, w.to(acc)[:, :, None, None], None if bias is None else bias.to(acc))
    if residual is not None:
        out = out + residual.to(acc)
    return out.to(_out_dtype(qkv, residual)).contiguous(memory_format=memory_format_of(qkv))


def attention_matrix(gram: torch.Tensor, sq_q: torch.Tensor, sq_k: torch.Tensor,
                     temperature: torch.Tensor) -> torch.Tensor:
    """softmax of the normalised Gram matrices: ``gram`` (B, heads, d, d), ``sq_q`` / ``sq_k``
    (B, heads, d) the squared row norms, all float32 (float64); ``temperature`` (heads, ...)."""
    nq = sq_q.sqrt().clamp_min(NORM_EPS)
    nk = sq_k.sqrt().clamp_min(NORM_EPS)
    heads = gram.shape[1]
    logits = gram / (nq[..., :, None] * nk[..., None, :]) * temperature.to(gram.dtype).reshape(1, heads, 1, 1)
    return logits.softmax(dim=-1)


def project_attention(attn: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
    """``M_b = W blockdiag(attn_b)`` (B, C, C) from ``attn`` (B, heads, d, d); W None: identity."""
    b, heads, d, _ = attn.shape
    if w is None:
        return _blockdiag(attn)
    c = heads * d
    wr = w.to(attn.dtype).reshape(c, heads, d)                         # W[o, h, i]
    return torch.einsum("ohi,bhij->bohj", wr, attn).reshape(b, c, c)


def _blockdiag(attn: torch.Tensor) -> torch.Tensor:
    b, heads, d, _ = attn.shape
    eye = torch.eye(heads, dtype=attn.dtype, device=attn.device)
    return torch.einsum("gh,bhij->bhigj", eye, attn).reshape(b, heads * d, heads * d)


def apply_attention(m: torch.Tensor, qkv: torch.Tensor, bias: Optional[torch.Tensor], c: int,
                    residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``M_b v_b + bias (+ residual)`` with v read in place from ``qkv`` (NCHW or channels_last):
    one batched matrix product, the bias and the residual added in its epilogue (``baddbmm``).
    The output has qkv's memory format and dtype (promoted with residual's: then the residual is
    added after the product, in the promoted dtype, as eager does under autocast)."""
    b, _, h, wd = qkv.shape
    dt = qkv.dtype
    m = m.to(dt)
    late = residual is not None and residual.dtype != dt
    add = None
    channels_last = memory_format_of(qkv) == torch.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if residual is not None and not late:
        r = residual.contiguous(memory_format=fmt)
        add = r.permute(0, 2, 3, 1).reshape(b, h * wd, c) if channels_last else r.reshape(b, c, h * wd)
    if bias is not None:
        bb = bias.to(dt).reshape(1, 1, c) if channels_last else bias.to(dt).reshape(1, c, 1)
        add = bb if add is None else add + bb
    if channels_last:
        v = qkv.permute(0, 2, 3, 1).reshape(b, h * wd, 3 * c)[:, :, 2 * c:]        # (B, HW, C), a view
        out = torch.bmm(v, m.transpose(1, 2)) if add is None else torch.baddbmm(add, v, m.transpose(1, 2))
        out = out.reshape(b, h, wd, c).permute(0, 3, 1, 2)
    else:
        v = qkv.reshape(b, 3 * c, h * wd)[:, 2 * c:]                                   # (B, C, HW), a view
        out = torch.bmm(m, v) if add is None else torch.baddbmm(add, m, v)
        out = out.reshape(b, c, h, wd)
    if late:
        out = (out + residual).contiguous(memory_format=fmt)
    return out


def transposed_attention(qkv: torch.Tensor, temperature: torch.Tensor, num_heads: int,
                         weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, *,
                         residual: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Restormer's MDTA from the depthwise convolution's output ``qkv`` (B, 3C, H, W) to the
    block's output (see the module docstring): ``temperature`` (num_heads, 1, 1), ``weight`` /
    ``bias`` project_out's (or None); ``residual`` (B, C, H, W), added at the end (the
    transformer block's skip: in the fused path it costs no extra pass). ``backend``: None
    (Triton on CUDA tensors in float16, bfloat16 and float32; the reference elsewhere and for
    float64), ``"triton"`` or ``"reference"``. Output: qkv's dtype and memory format.
    Differentiable."""
    c, w = _check(qkv, temperature, num_heads, weight, bias, residual)
    be = _dispatch.resolve("transposed_attention", qkv, backend)
    if be == "triton" and c // num_heads > TRITON_MAX_HEAD_DIM:
        if (backend or _dispatch.default_backend()) == "triton":
            raise ShapeError(f"qkv: backend='triton' takes at most {TRITON_MAX_HEAD_DIM} channels per head, "
                             f"got C / num_heads = {c} / {num_heads} = {c // num_heads}")
        be = "reference"
    if be == "triton" and qkv.dtype == torch.float64:
        if (backend or _dispatch.default_backend()) == "triton":
            raise DTypeError("qkv: the Triton kernel takes float16, bfloat16 or float32, got float64")
        be = "reference"                     # float64: the reference serves on every device
    if be != "triton":
        return _reference(qkv, temperature, num_heads, w, bias, c, residual)
    gram, sq_q, sq_k = _triton().gram(qkv, num_heads)
    attn = attention_matrix(gram, sq_q, sq_k, temperature)
    return apply_attention(project_attention(attn, w), qkv, bias, c, residual)


#: :mod:`fastdenoise.triton.mdta`, imported on first use (triton is optional; _dispatch.lazy_module)
_triton = _dispatch.lazy_module("fastdenoise.triton.mdta", lambda m: m.register_autograd())
