"""Channel attention of the CNN denoisers, as two ops (the plain PyTorch references below are
the spec).

``channel_attention(x, w1, b1, w2, b2, residual=None, act=None)`` -- squeeze-and-excitation:

* ``u = act(x)`` (``act``: None, ``"relu"`` or ``"gelu"`` (exact erf), applied first: Baseline's
  block gates ``gelu(dwconv(x))``);
* ``m[b, c] = mean over H, W of u[b, c]`` (summed in float32, or float64 for float64 input);
* ``a = sigmoid(W2 relu(W1 m + b1) + b2)`` (the two 1x1 convolutions; ``b1``/``b2`` may be None);
* ``out = u * a`` (+ ``residual`` when given: MPRNet's CAB adds its input after the attention).

One parametrised implementation covers the official flavours: MPRNet's CALayer (no bias,
reduction 4), RIDNet's CALayer (bias, reduction 16), NAFNet's Baseline SE (bias, reduction 2).

``simplified_channel_attention(x, w, b, gate=False)`` -- NAFNet's SCA:

* ``u = x``, or with ``gate=True`` NAFNet's SimpleGate before it, ``u = x[:, :C/2] * x[:, C/2:]``;
* ``m`` = the mean of u over H, W; ``a = W m + b`` (one 1x1 convolution, no activation);
* ``out = u * a``.

Any channel count (odd ones too), NCHW or channels_last (kept), float32 / float16 / bfloat16
(float64 too); the output has x's dtype. The Triton path makes two passes over x -- the pooled
means (per-program partial sums in float32, added in a fixed order: deterministic), then the
scaling with ``act`` / the gate recomputed on the fly so ``u`` is never stored -- with the
tiny excitation MLP between them in float32 PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from .._checks import FLOAT_DTYPES, check_channels_divisible, check_same_device, check_tensor, memory_format_of
from ..errors import DTypeError, ShapeError

__all__ = ["channel_attention", "channel_attention_reference", "simplified_channel_attention",
           "simplified_channel_attention_reference", "ACTIVATIONS"]

#: Activations ``channel_attention`` can apply to x first.
ACTIVATIONS = (None, "relu", "gelu")
#: Pre-op ids shared with the Triton kernels: 0 none, 1 relu, 2 gelu, 3 SimpleGate.
PRE_IDS = {None: 0, "relu": 1, "gelu": 2, "gate": 3}


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _matrix(name: str, w, rows: Optional[int], cols: int, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weight as a (rows, cols) matrix (rows None: any)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    shape = tuple(w.shape)
    if len(shape) == 4 and shape[2:] == (1, 1):
        shape = shape[:2]
    if len(shape) != 2 or shape[1] != cols or (rows is not None and shape[0] != rows):
        want = f"({'R' if rows is None else rows}, {cols}) or ({'R' if rows is None else rows}, {cols}, 1, 1)"
        raise ShapeError(f"{name}: expected a 1x1 convolution weight of shape {want}, got {list(w.shape)}")
    if w.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: expected a floating dtype, got {w.dtype}")
    check_same_device(name, w, "x", x)
    return w.reshape(shape)


def _vector(name: str, b, n: int, x: torch.Tensor) -> Optional[torch.Tensor]:
    if b is None:
        return None
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(b).__name__}")
    if b.numel() != n or b.dim() != 1:
        raise ShapeError(f"{name}: expected shape ({n},), got {list(b.shape)}")
    if b.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: expected a floating dtype, got {b.dtype}")
    check_same_device(name, b, "x", x)
    return b


def _check_ca(x, w1, b1, w2, b2, residual, act):
    check_tensor("x", x)
    c = x.shape[1]
    m1 = _matrix("w1", w1, None, c, x)
    hidden = m1.shape[0]
    if hidden < 1:
        raise ShapeError(f"w1: expected at least one hidden channel, got {list(w1.shape)}")
    m2 = _matrix("w2", w2, c, hidden, x)
    v1, v2 = _vector("b1", b1, hidden, x), _vector("b2", b2, c, x)
    if residual is not None:
        check_tensor("residual", residual)
        if residual.shape != x.shape:
            raise ShapeError(f"residual: expected the shape of x {list(x.shape)}, got {list(residual.shape)}")
        check_same_device("residual", residual, "x", x)
    if act not in ACTIVATIONS:
        raise ValueError(f"act: expected one of {ACTIVATIONS}, got {act!r}")
    return m1, v1, m2, v2


def _pre(x: torch.Tensor, pre: Optional[str]) -> torch.Tensor:
    """u in the accumulation dtype: act(x), or the SimpleGate of x."""
    xf = x.to(_acc(x))
    if pre == "relu":
        return torch.relu(xf)
    if pre == "gelu":
        return F.gelu(xf)
    if pre == "gate":
        x1, x2 = xf.chunk(2, dim=1)
        return x1 * x2
    return xf


def _excite(m: torch.Tensor, m1, v1, m2, v2) -> torch.Tensor:
    """sigmoid(W2 relu(W1 m + b1) + b2) for pooled means m (B, C), in m's dtype."""
    h = m @ m1.to(m.dtype).T
    if v1 is not None:
        h = h + v1.to(m.dtype)
    a = torch.relu(h) @ m2.to(m.dtype).T
    if v2 is not None:
        a = a + v2.to(m.dtype)
    return torch.sigmoid(a)


def _linear(m: torch.Tensor, w, b) -> torch.Tensor:
    a = m @ w.to(m.dtype).T
    return a + b.to(m.dtype) if b is not None else a


def channel_attention_reference(x, w1, b1, w2, b2, residual=None, act=None) -> torch.Tensor:
    """Plain PyTorch channel attention (float32 / float64 arithmetic, one rounding at the end)."""
    return _ca_reference(x, *_check_ca(x, w1, b1, w2, b2, residual, act), residual, act)


def _ca_reference(x, m1, v1, m2, v2, residual, act) -> torch.Tensor:
    """channel_attention_reference on checked parameters (weights as matrices)."""
    u = _pre(x, act)
    a = _excite(u.mean(dim=(2, 3)), m1, v1, m2, v2)
    out = u * a[:, :, None, None]
    if residual is not None:
        out = out + residual.to(out.dtype)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _check_sca(x, w, b, gate):
    check_tensor("x", x)
    if not isinstance(gate, bool):
        raise TypeError(f"gate: expected a bool, got {type(gate).__name__} {gate!r}")
    if gate:
        check_channels_divisible("x", x, 2, "SimpleGate's two halves")
    c = x.shape[1] // 2 if gate else x.shape[1]
    return _matrix("w", w, c, c, x), _vector("b", b, c, x)


def simplified_channel_attention_reference(x, w, b, gate: bool = False) -> torch.Tensor:
    """Plain PyTorch SCA (optionally after SimpleGate), float32 / float64 arithmetic."""
    return _sca_reference(x, *_check_sca(x, w, b, gate), gate)


def _sca_reference(x, m, v, gate: bool) -> torch.Tensor:
    """simplified_channel_attention_reference on checked parameters."""
    u = _pre(x, "gate" if gate else None)
    a = _linear(u.mean(dim=(2, 3)), m, v)
    return (u * a[:, :, None, None]).to(x.dtype).contiguous(memory_format=memory_format_of(x))


def channel_attention(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                      b2: Optional[torch.Tensor], *, residual: Optional[torch.Tensor] = None,
                      act: Optional[str] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Squeeze-and-excitation channel attention (see the module docstring). ``w1``: (C/r, C) or
    (C/r, C, 1, 1); ``w2``: (C, C/r) or (C, C/r, 1, 1); biases (C/r,) / (C,) or None;
    ``residual``: a tensor of x's shape added at the end; ``act``: None, "relu" or "gelu"
    applied to x first. ``backend``: None (Triton on CUDA tensors, the reference on the CPU),
    ``"triton"`` or ``"reference"``. Differentiable."""
    m1, v1, m2, v2 = _check_ca(x, w1, b1, w2, b2, residual, act)
    be = _dispatch.resolve("channel_attention", x, backend)
    if be != "triton":
        return _ca_reference(x, m1, v1, m2, v2, residual, act)
    t = _triton()
    u_mean = t.pooled_mean(x, PRE_IDS[act])
    a = _excite(u_mean, m1, v1, m2, v2)
    return t.scale(x, a, residual, PRE_IDS[act])


def simplified_channel_attention(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], *,
                                 gate: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """NAFNet's simplified channel attention (see the module docstring); ``gate=True`` fuses the
    SimpleGate before it (x then has 2C channels). ``w``: (C, C) or (C, C, 1, 1); ``b``: (C,)
    or None. ``backend`` as :func:`channel_attention`. Differentiable."""
    m, v = _check_sca(x, w, b, gate)
    be = _dispatch.resolve("channel_attention", x, backend)
    if be != "triton":
        return _sca_reference(x, m, v, gate)
    t = _triton()
    pre = PRE_IDS["gate" if gate else None]
    a = _linear(t.pooled_mean(x, pre), m, v)
    return t.scale(x, a, None, pre)


#: :mod:`fastdenoise.triton.attention`, imported on first use (triton is optional; _dispatch.lazy_module)
_triton = _dispatch.lazy_module("fastdenoise.triton.attention", lambda m: m.register_autograd())
