"""One level of the 2-D Haar wavelet transform, in the three conventions denoisers use.

Layout: ``haar_dwt2d`` maps (B, C, H, W) to (B, 4C, H/2, W/2), sub-band-major: channels
``[0, C)`` hold the low-pass band of every input channel, then the three detail bands, each
C channels (as InvDN's ``HaarDownsampling`` and MWCNN's ``DWT`` lay them out).
``haar_idwt2d`` is its exact inverse.

For each 2x2 block ``[[a, b], [c, d]]`` (a = x[2i, 2j], b = x[2i, 2j+1], c = x[2i+1, 2j],
d = x[2i+1, 2j+1]) band k is ``scale_fwd * (s_k · (a, b, c, d))`` with the signs below; the
inverse is ``x[2i+p, 2j+q] = scale_inv * sum_k s_k[2p+q] * band_k``.

============  ==========================  ==========================  ====================  =========
variant       band 1                      band 2                      band 3                scales
============  ==========================  ==========================  ====================  =========
orthonormal   (a + b - c - d)             (a - b + c - d)             (a - b - c + d)       1/2, 1/2
invdn         (a - b + c - d)             (a + b - c - d)             (a - b - c + d)       1/4, 1
mwcnn         (-a + b - c + d)            (-a - b + c + d)            (a - b - c + d)       1/2, 1/2
============  ==========================  ==========================  ====================  =========

Band 0 is always ``a + b + c + d``. ``orthonormal`` is PyWavelets' ``dwt2(x, "haar")`` order
(cA, cH, cV, cD); ``invdn`` is InvDN's ``HaarDownsampling`` (a grouped stride-2 convolution
divided by 4, inverted by the transposed convolution); ``mwcnn`` is MWCNN's ``dwt_init`` /
``iwt_init``.

Accumulation is in float32 (float64 for float64 inputs); outputs keep the input's dtype,
device and memory format (contiguous NCHW or channels_last).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch, _ext
from .._checks import check_channels_divisible, check_even_hw, check_tensor, memory_format_of

__all__ = ["haar_dwt2d", "haar_idwt2d", "haar_dwt2d_reference", "haar_idwt2d_reference", "VARIANTS"]

#: variant name -> (id used by the kernels, signs of bands 1..3 over (a, b, c, d), forward scale,
#: inverse scale). Band 0 is (1, 1, 1, 1). The C++/CUDA table (csrc/include/fastdenoise/haar.h)
#: and the Triton kernel use the same ids and numbers.
VARIANTS = {
    "orthonormal": (0, ((1, 1, -1, -1), (1, -1, 1, -1), (1, -1, -1, 1)), 0.5, 0.5),
    "invdn": (1, ((1, -1, 1, -1), (1, 1, -1, -1), (1, -1, -1, 1)), 0.25, 1.0),
    "mwcnn": (2, ((-1, 1, -1, 1), (-1, -1, 1, 1), (1, -1, -1, 1)), 0.5, 0.5),
}


def _variant(variant) -> tuple:
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {tuple(VARIANTS)}, got {variant!r}")
    vid, signs, sf, si = VARIANTS[variant]
    return vid, ((1, 1, 1, 1),) + signs, sf, si


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Reference (the spec): plain PyTorch, written for reading.
# --------------------------------------------------------------------------------------------

def haar_dwt2d_reference(x: torch.Tensor, variant: str = "orthonormal") -> torch.Tensor:
    """Plain PyTorch forward Haar transform (see the module docstring for the conventions)."""
    _, signs, scale, _ = _variant(variant)
    xf = x.to(_acc_dtype(x.dtype))
    a = xf[:, :, 0::2, 0::2]
    b = xf[:, :, 0::2, 1::2]
    c = xf[:, :, 1::2, 0::2]
    d = xf[:, :, 1::2, 1::2]
    bands = [scale * (s[0] * a + s[1] * b + s[2] * c + s[3] * d) for s in signs]
    out = torch.cat(bands, dim=1).to(x.dtype)
    return out.contiguous(memory_format=memory_format_of(x))


def haar_idwt2d_reference(y: torch.Tensor, variant: str = "orthonormal") -> torch.Tensor:
    """Plain PyTorch inverse Haar transform: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    _, signs, _, scale = _variant(variant)
    n, c4, h, w = y.shape
    c = c4 // 4
    yf = y.to(_acc_dtype(y.dtype))
    bands = yf.split(c, dim=1)
    out = yf.new_empty((n, c, 2 * h, 2 * w))
    for pos, (p, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, p::2, q::2] = scale * sum(signs[k][pos] * bands[k] for k in range(4))
    return out.to(y.dtype).contiguous(memory_format=memory_format_of(y))


# --------------------------------------------------------------------------------------------
# Public functions: check, pick a backend, run.
# --------------------------------------------------------------------------------------------

def _check_dwt_input(x) -> None:
    check_tensor("x", x)
    check_even_hw("x", x)


def _check_idwt_input(y) -> None:
    check_tensor("y", y, layout="(B, 4C, h, w)")
    check_channels_divisible("y", y, 4, "four sub-bands of C channels each")


def haar_dwt2d(x: torch.Tensor, variant: str = "orthonormal", *,
               backend: Optional[str] = None) -> torch.Tensor:
    """One level of the 2-D Haar transform: (B, C, H, W) -> (B, 4C, H/2, W/2), sub-band-major.

    ``variant``: ``"orthonormal"`` (PyWavelets order, orthonormal), ``"invdn"`` (InvDN's
    HaarDownsampling) or ``"mwcnn"`` (MWCNN's DWT). H and W must be even. float32, float16,
    bfloat16 (and float64); NCHW or channels_last, kept in the output. ``backend``: see
    :mod:`fastdenoise._dispatch`.
    """
    vid = _variant(variant)[0]
    _check_dwt_input(x)
    be = _dispatch.resolve("haar_dwt2d", x, backend)
    if be == "reference":
        return haar_dwt2d_reference(x, variant)
    if be == "triton":
        return _triton().haar_dwt2d(x, vid)
    return torch.ops.fastdenoise.haar_dwt2d(x, vid)


def haar_idwt2d(y: torch.Tensor, variant: str = "orthonormal", *,
                backend: Optional[str] = None) -> torch.Tensor:
    """Inverse of :func:`haar_dwt2d`: (B, 4C, h, w) -> (B, C, 2h, 2w)."""
    vid = _variant(variant)[0]
    _check_idwt_input(y)
    be = _dispatch.resolve("haar_idwt2d", y, backend)
    if be == "reference":
        return haar_idwt2d_reference(y, variant)
    if be == "triton":
        return _triton().haar_idwt2d(y, vid)
    return torch.ops.fastdenoise.haar_idwt2d(y, vid)


# --------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd for the compiled ops.
# --------------------------------------------------------------------------------------------

_SCALES = {v[0]: (v[2], v[3]) for v in VARIANTS.values()}


def _fake_dwt(x: torch.Tensor, variant: int) -> torch.Tensor:
    n, c, h, w = x.shape
    torch._check(h % 2 == 0 and w % 2 == 0, lambda: "x: expected even H and W")
    return x.new_empty((n, 4 * c, h // 2, w // 2)).contiguous(memory_format=memory_format_of(x))


def _fake_idwt(y: torch.Tensor, variant: int) -> torch.Tensor:
    n, c4, h, w = y.shape
    torch._check(c4 % 4 == 0, lambda: "y: expected a channel count divisible by 4")
    return y.new_empty((n, c4 // 4, 2 * h, 2 * w)).contiguous(memory_format=memory_format_of(y))


def _setup_context(ctx, inputs, output):
    ctx.variant = inputs[1]


def register_op_extras(dwt_op, idwt_op, dwt_name: str, idwt_name: str, fake: bool) -> None:
    """Register fake implementations (for C++ ops) and autograd for a (dwt, idwt) op pair.

    The transform is linear: y = s_f S x and x = s_i S^T y with 4 s_f s_i = 1, so the adjoint
    of the forward is s_f S^T = (s_f / s_i) * inverse, and of the inverse (s_i / s_f) * forward.
    """
    def _apply(op, grad, variant, ratio):
        g = op(grad.contiguous(memory_format=memory_format_of(grad)), variant)
        return g * ratio if ratio != 1.0 else g

    def dwt_backward(ctx, grad):
        sf, si = _SCALES[ctx.variant]
        return _apply(idwt_op, grad, ctx.variant, sf / si), None

    def idwt_backward(ctx, grad):
        sf, si = _SCALES[ctx.variant]
        return _apply(dwt_op, grad, ctx.variant, si / sf), None

    if fake:
        torch.library.register_fake(dwt_name)(_fake_dwt)
        torch.library.register_fake(idwt_name)(_fake_idwt)
    torch.library.register_autograd(dwt_name, dwt_backward, setup_context=_setup_context)
    torch.library.register_autograd(idwt_name, idwt_backward, setup_context=_setup_context)


#: :mod:`fastdenoise.triton.haar`, imported on first use (triton is optional); the first call
#: also registers autograd for its two ops (see _dispatch.lazy_module)
_triton = _dispatch.lazy_module(
    "fastdenoise.triton.haar",
    lambda th: register_op_extras(th.DWT_OP, th.IDWT_OP, th.DWT_NAME, th.IDWT_NAME, fake=False))


if _ext.extension() is not None and "fastdenoise::haar_dwt2d" in _ext.build_info()["ops"]:
    register_op_extras(torch.ops.fastdenoise.haar_dwt2d, torch.ops.fastdenoise.haar_idwt2d,
                       "fastdenoise::haar_dwt2d", "fastdenoise::haar_idwt2d", fake=True)
