"""``pointwise_dwconv``: a 1x1 convolution followed by a depthwise 3x3 convolution (and
optionally the GELU gate), as one op: the input stage of both of Restormer's blocks -- MDTA's
``qkv_dwconv(qkv(x))`` and the GDFN's ``dwconv(project_in(x))`` then ``gelu(x1) * x2``.

Definition (the plain PyTorch reference below is the spec). For ``x`` (B, Cin, H, W), ``weight``
(Cmid, Cin, 1, 1) or (Cmid, Cin), ``dw_weight`` (Cmid, 1, 3, 3), optional ``bias`` and
``dw_bias`` (Cmid,):

* ``m = conv1x1(x, weight, bias)``: ``m[b, c, i, j] = bias[c] + sum_k weight[c, k] x[b, k, i, j]``;
* ``y = dw(m)``: the depthwise 3x3 cross-correlation of ``m`` with zero padding 1 and
  ``dw_bias`` (``F.conv2d(m, dw_weight, dw_bias, padding=1, groups=Cmid)``) -- the padding is
  applied to ``m``, after the 1x1 and its bias, as the two official convolutions do;
* ``gate=False``: the output is ``y`` (B, Cmid, H, W); ``gate=True`` (Cmid = 2N): the output is
  ``gelu(y[:, :N]) * y[:, N:]`` (B, N, H, W) with the exact (erf) GELU.

The reference computes in float32 (float64 for float64 input) and rounds once; the output has
x's dtype, device and memory format (NCHW or channels_last). Any H, W >= 1 and channel counts.

The fused path (Triton, CUDA tensors in float16, bfloat16 and float32) reads x once and writes
the output once: the Cmid-channel tensor ``m`` (3x the input for MDTA, 5.3x for the GDFN) and
``y`` never exist in memory. Numerics of the fused path: the 1x1's products run on the tensor
cores with ``weight`` rounded to x's dtype (float16 / bfloat16; what the official module in that
dtype holds) or, for float32 x, in 3-pass TF32 (about float32 accuracy); sums, the depthwise
taps, the biases and the gate in float32; one rounding at the end. float64 runs the reference.
Kernel design: :mod:`fastdenoise.triton.pwdw`.

Whether the fused op is faster than cuDNN's two convolutions depends on the widths and the GPU
(it recomputes the 1x1 for the three horizontal taps in exchange for never storing ``m``), so
the Restormer modules use it only when asked (``fuse_input=True``); ``benchmarks/
bench_restormer_ops.py`` measures both.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._checks import FLOAT_DTYPES, check_same_device, check_tensor, memory_format_of
from ..errors import DTypeError, ShapeError

__all__ = ["pointwise_dwconv", "pointwise_dwconv_reference"]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _check_param(name: str, t, shapes, x: torch.Tensor, what: str) -> None:
    want = " or ".join(str(s) for s in shapes)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {want}, got {type(t).__name__}")
    if tuple(t.shape) not in shapes:
        raise ShapeError(f"{name}: expected shape {want} ({what}), got {list(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: expected a floating dtype, got {_dtype_name(t)}")
    check_same_device(name, t, "x", x)


def _check(x, weight, dw_weight, bias, dw_bias, gate) -> int:
    """Checks every argument (metadata only); returns Cmid."""
    check_tensor("x", x)
    if not isinstance(gate, bool):
        raise TypeError(f"gate: expected a bool, got {type(gate).__name__}")
    cin = x.shape[1]
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor of shape (Cmid, {cin}, 1, 1), got {type(weight).__name__}")
    if weight.dim() not in (2, 4) or weight.shape[1] != cin or (weight.dim() == 4 and weight.shape[2:] != (1, 1)):
        raise ShapeError(f"weight: expected shape (Cmid, {cin}, 1, 1) or (Cmid, {cin}) (a 1x1 convolution over "
                         f"the {cin} channels of x), got {list(weight.shape)}")
    cmid = weight.shape[0]
    if cmid < 1:
        raise ShapeError(f"weight: expected at least one output channel, got {list(weight.shape)}")
    if weight.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"weight: expected a floating dtype, got {_dtype_name(weight)}")
    check_same_device("weight", weight, "x", x)
    _check_param("dw_weight", dw_weight, [(cmid, 1, 3, 3)], x,
                 f"a depthwise 3x3 convolution over the 1x1's {cmid} channels")
    for name, t in (("bias", bias), ("dw_bias", dw_bias)):
        if t is not None:
            _check_param(name, t, [(cmid,)], x, f"one per channel of the 1x1's {cmid}")
    if gate and cmid % 2:
        raise ShapeError(f"weight: gate=True needs an even number of output channels (two halves: the gate and "
                         f"the value), got {cmid}")
    return cmid


def pointwise_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, dw_weight: torch.Tensor,
                               bias: Optional[torch.Tensor] = None, dw_bias: Optional[torch.Tensor] = None, *,
                               gate: bool = False) -> torch.Tensor:
    """Plain PyTorch: the 1x1 convolution, the depthwise 3x3 (zero padding 1) and, with
    ``gate``, ``gelu(y1) * y2``, in float32 (float64 for float64 input), rounded once to x's
    dtype, in x's memory format."""
    cmid = _check(x, weight, dw_weight, bias, dw_bias, gate)
    return _reference(x, weight, dw_weight, bias, dw_bias, gate, cmid)


def _reference(x, weight, dw_weight, bias, dw_bias, gate, cmid):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def cast(t):
        return None if t is None else t.to(acc)

    m = F.conv2d(x.to(acc), weight.to(acc).reshape(cmid, -1, 1, 1), cast(bias))
    y = F.conv2d(m, dw_weight.to(acc), cast(dw_bias), padding=1, groups=cmid)
    if gate:
        g, v = y.chunk(2, dim=1)
        y = F.gelu(g) * v
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def pointwise_dwconv(x: torch.Tensor, weight: torch.Tensor, dw_weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, dw_bias: Optional[torch.Tensor] = None, *,
                     gate: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """1x1 convolution, depthwise 3x3 convolution and (``gate=True``) the GELU gate in one op
    (see the module docstring).

    ``x``: (B, Cin, H, W) float32, float16, bfloat16 or float64, NCHW or channels_last (kept);
    ``weight``: (Cmid, Cin, 1, 1) or (Cmid, Cin), the 1x1 ``nn.Conv2d``'s weight; ``dw_weight``:
    (Cmid, 1, 3, 3), the depthwise ``nn.Conv2d``'s; ``bias`` / ``dw_bias``: (Cmid,) or None.
    Returns (B, Cmid, H, W), or (B, Cmid / 2, H, W) with ``gate``. ``backend``: None (Triton on
    CUDA tensors in float16, bfloat16 and float32; the reference elsewhere and for float64),
    ``"triton"`` or ``"reference"``. Differentiable (the backward of the Triton op runs the
    reference).
    """
    cmid = _check(x, weight, dw_weight, bias, dw_bias, gate)
    be = _dispatch.resolve("pointwise_dwconv", x, backend)
    if be == "triton" and x.dtype == torch.float64:
        if (backend or _dispatch.default_backend()) == "triton":
            raise DTypeError("x: the Triton kernel takes float16, bfloat16 or float32, got float64")
        be = "reference"                     # float64: the reference serves on every device
    if be == "triton":
        return _triton().pointwise_dwconv(x, weight, dw_weight, bias, dw_bias, gate)
    return _reference(x, weight, dw_weight, bias, dw_bias, gate, cmid)


def _autograd_reference(x, weight, dw_weight, bias, dw_bias, gate):
    return _reference(x, weight, dw_weight, bias, dw_bias, gate, weight.shape[0])


#: :mod:`fastdenoise.triton.pwdw`, imported on first use (triton is optional)
_triton = _dispatch.lazy_module("fastdenoise.triton.pwdw",
                                lambda m: m.register_autograd(_autograd_reference))
