"""Pixelwise non-local means (Buades, Coll & Morel 2005), with the noise variance subtracted in
the weights as scikit-image does.

For every pixel p of a (B, C, H, W) image and every offset t of the ``search`` x ``search``
window (t in [-R, R]^2, R = search // 2, t = 0 included):

* ``d2(p, t)``: the weighted mean, over the ``patch`` x ``patch`` patch and the C channels, of the
  squared differences between the patches centred at p and at p + t. The patch weights are
  separable Gaussian, ``g[u] g[v]`` with ``g[k]`` proportional to ``exp(-(k - P)^2 / (2 s^2))``,
  ``s = patch / 3.5``, ``P = patch // 2``, normalised to sum 1 (:func:`patch_taps`); the channels
  count equally. Weighting the centre of the patch more than its rim keeps edges and fine detail:
  on Set12 at sigma = 25 it gains about 0.3 dB over the flat mean at patch 7, search 21;
* ``w(p, t) = exp(-max(d2 - 2 sigma^2, 0) / h^2)``: pairs of patches that differ by no more
  than the noise get the full weight 1;
* ``out(p) = sum_t w(p, t) x(p + t) / sum_t w(p, t)``, channel by channel with the same weights.

The image is extended by reflection (numpy's "reflect", repeated as needed, so any size works).
``sigma`` and ``h`` are per image, in the image's units (25/255 for a [0, 1] image at sigma 25).
The kernels (C++ CPU, CUDA) compute in float32 and return the input's dtype; the plain PyTorch
reference below is the spec and works in float64.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
import torch.nn.functional as F

from .. import _dispatch, _ext
from .._checks import check_tensor, memory_format_of
from ..errors import DeviceError, ShapeError

__all__ = ["nlm_filter", "nlm_reference", "patch_taps"]

Number = Union[float, int, torch.Tensor]

#: Largest patch the kernels take.
MAX_PATCH = 63


def patch_taps(patch: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The 1-D Gaussian patch weights (sum 1) of a ``patch``-wide patch (see the module docstring)."""
    k = torch.arange(patch, dtype=torch.float64, device=device) - patch // 2
    s = patch / 3.5
    g = torch.exp(-k * k / (2 * s * s))
    return (g / g.sum()).to(dtype)


def _reflect_index(n_out: int, start: int, n: int, device) -> torch.Tensor:
    """Indices of positions start .. start + n_out - 1 in an axis of n samples, reflected."""
    i = torch.arange(start, start + n_out, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    m = torch.remainder(i, period)
    return torch.where(m < n, m, period - m)


def _per_image(name: str, v: Number, x: torch.Tensor) -> torch.Tensor:
    """A float32 (B,) tensor on x's device from a number or a (B,) / scalar tensor."""
    b = x.shape[0]
    if isinstance(v, torch.Tensor):
        if v.device != x.device:
            raise DeviceError(f"{name}: expected a tensor on {x.device} (the device of x), got {v.device}")
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] not in (1, b)):
            raise ShapeError(f"{name}: expected a number or a tensor of shape ({b},), got {list(v.shape)}")
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name}: expected a number or a real tensor, got a {v.dtype} tensor")
        vals = v.to(torch.float32).reshape(-1)
        # the values decide the weights: checked here (one host sync), not found as NaN later
        bad = ~torch.isfinite(vals) | (vals <= 0 if name == "h" else vals < 0)
        if bool(bad.any()):
            raise ValueError(f"{name}: expected finite {'positive' if name == 'h' else 'non-negative'} values, "
                             f"got [{', '.join(f'{u:.6g}' for u in vals.tolist())}]")
        return vals.expand(b).contiguous()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number or a tensor, got {type(v).__name__}")
    # checked as the kernels get it, in float32: h = 1e-50 is 0 there, 1e39 is inf
    try:
        f32 = float(torch.tensor(float(v), dtype=torch.float32))
    except OverflowError:
        f32 = math.inf
    if not math.isfinite(f32) or f32 < 0 or (name == "h" and f32 == 0):
        note = f" ({f32:g} in float32, as the kernels take it)" if f32 != float(v) and math.isfinite(float(v)) else ""
        raise ValueError(f"{name}: expected a finite {'positive' if name == 'h' else 'non-negative'} value, "
                         f"got {v}{note}")
    return torch.full((b,), float(v), dtype=torch.float32, device=x.device)


def _check(x, patch, search) -> None:
    check_tensor("x", x)
    for name, v in (("patch", patch), ("search", search)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v % 2 == 0:
            raise ValueError(f"{name}: expected a positive odd int, got {v!r}")
    if patch > MAX_PATCH:
        raise ValueError(f"patch: expected at most {MAX_PATCH}, got {patch}")


# --------------------------------------------------------------------------------------------
# Reference (the spec)
# --------------------------------------------------------------------------------------------

def nlm_reference(x: torch.Tensor, sigma: Number, h: Number, patch: int = 7, search: int = 21) -> torch.Tensor:
    """Plain PyTorch pixelwise NLM in float64, one offset of the search window at a time."""
    _check(x, patch, search)
    sig = _per_image("sigma", sigma, x).double().view(-1, 1, 1)
    hh = _per_image("h", h, x).double().view(-1, 1, 1)
    n, c, height, width = x.shape
    p, r = patch // 2, search // 2
    pad = p + r
    rows = _reflect_index(height + 2 * pad, -pad, height, x.device)
    cols = _reflect_index(width + 2 * pad, -pad, width, x.device)
    xp = x.double()[:, :, rows][:, :, :, cols]               # (B, C, H + 2 pad, W + 2 pad)
    # patch neighbourhoods of the output pixels: rows/cols r .. r + H + 2p of the padded image
    centre = xp[:, :, r:r + height + 2 * p, r:r + width + 2 * p]
    g = patch_taps(patch, device=x.device)
    g_col, g_row = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)
    num = torch.zeros(n, c, height, width, dtype=torch.float64, device=x.device)
    den = torch.zeros(n, 1, height, width, dtype=torch.float64, device=x.device)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = xp[:, :, r + dy:r + dy + height + 2 * p, r + dx:r + dx + width + 2 * p]
            sq = (centre - shifted).square().mean(dim=1, keepdim=True)    # mean over channels
            d2 = F.conv2d(F.conv2d(sq, g_col), g_row)                      # weighted mean over the patch
            w = torch.exp(-(d2 - 2 * sig.unsqueeze(1) ** 2).clamp(min=0) / hh.unsqueeze(1) ** 2)
            num += w * shifted[:, :, p:p + height, p:p + width]
            den += w
    out = (num / den).to(x.dtype)
    return out.contiguous(memory_format=memory_format_of(x))


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

def nlm_filter(x: torch.Tensor, sigma: Number, h: Number, patch: int = 7, search: int = 21, *,
               backend: Optional[str] = None) -> torch.Tensor:
    """Pixelwise non-local means of a (B, C, H, W) float image (see the module docstring).

    ``sigma`` (noise standard deviation) and ``h`` (filtering strength, > 0): numbers or (B,)
    tensors, in the image's units. ``patch`` and ``search``: odd sizes (OpenCV's defaults 7 and
    21). Returns the input's dtype, device and memory format. For the estimated-σ front end see
    :func:`fastdenoise.classic.nlm`.
    """
    _check(x, patch, search)
    sig = _per_image("sigma", sigma, x)
    hh = _per_image("h", h, x)
    be = _dispatch.resolve("nlm", x, backend, triton_op=False)
    if be == "reference":
        return nlm_reference(x, sig, hh, patch, search)
    out = torch.ops.fastdenoise.nlm(x.to(torch.float32).contiguous(), sig, hh, patch, search)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _fake_nlm(x, sigma, h, patch, search):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


if _ext.extension() is not None and "fastdenoise::nlm" in _ext.build_info()["ops"]:
    torch.library.register_fake("fastdenoise::nlm")(_fake_nlm)
