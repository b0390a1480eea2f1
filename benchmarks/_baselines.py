"""Plain PyTorch baselines: the Haar transforms computed the way the official models compute
them, written here from the maths (not copied).

These are the ``eager`` contenders of the benchmarks (and, through ``torch.compile``, the
``compiled`` ones):

* ``invdn``: InvDN's ``HaarDownsampling`` formulation: a frozen bank of four 2x2 filters per
  channel applied as a grouped stride-2 ``conv2d`` divided by 4, then a reshape/transpose to
  sub-band-major; the inverse undoes the transpose and applies ``conv_transpose2d``.
* ``mwcnn``: MWCNN's ``dwt_init`` / ``iwt_init`` formulation: strided slicing into the four
  polyphase components (halved), sums and differences, ``torch.cat``; the inverse writes the four
  combinations into a zero-initialised output with strided assignment. The official inverse
  always allocates float32 on CUDA; here the output takes the input's dtype and device.
* ``orthonormal``: no official module; the same grouped convolution as InvDN with PyWavelets'
  orthonormal filters (scale 1/2 both ways).

Each (op, variant) maps to a plain function of one tensor in fastdenoise's sub-band-major layout,
so it can be compared with ``fastdenoise.ops.haar_dwt2d`` / ``haar_idwt2d`` elementwise.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvHaar", "slicing_dwt", "slicing_idwt", "make_baseline", "VARIANTS"]

VARIANTS = ("orthonormal", "invdn", "mwcnn")

# 2x2 filters (rows: band 0..3) over the block [[a, b], [c, d]], before scaling.
_FILTERS = {
    "invdn": ([[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]], [[1, -1], [-1, 1]]),
    "orthonormal": ([[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]),
}
# (forward scale, inverse scale) of the conv formulation
_SCALES = {"invdn": (0.25, 1.0), "orthonormal": (0.5, 0.5)}


class ConvHaar(nn.Module):
    """Grouped stride-2 convolution with a frozen filter bank (InvDN's formulation)."""

    def __init__(self, variant: str, channels: int, device=None, dtype=None):
        super().__init__()
        bank = torch.tensor(_FILTERS[variant], dtype=torch.float32).unsqueeze(1)  # (4, 1, 2, 2)
        self.channels = channels
        self.fwd_scale, self.inv_scale = _SCALES[variant]
        self.register_buffer("bank", bank.repeat(channels, 1, 1, 1).to(device=device, dtype=dtype))

    def forward(self, x, rev: bool = False):
        n, c = x.shape[0], self.channels
        if not rev:
            h, w = x.shape[2] // 2, x.shape[3] // 2
            y = F.conv2d(x, self.bank, stride=2, groups=c) * self.fwd_scale  # (n, c*4, h, w)
            return y.view(n, c, 4, h, w).transpose(1, 2).reshape(n, 4 * c, h, w)
        h, w = x.shape[2], x.shape[3]
        y = x.reshape(n, 4, c, h, w).transpose(1, 2).reshape(n, 4 * c, h, w)
        out = F.conv_transpose2d(y, self.bank, stride=2, groups=c)
        return out if self.inv_scale == 1.0 else out * self.inv_scale


def slicing_dwt(x):
    """MWCNN's formulation: halved polyphase components, then sums/differences and a cat."""
    even_rows, odd_rows = x[:, :, 0::2] / 2, x[:, :, 1::2] / 2
    a, b = even_rows[..., 0::2], even_rows[..., 1::2]
    c, d = odd_rows[..., 0::2], odd_rows[..., 1::2]
    return torch.cat((a + b + c + d, b + d - a - c, c + d - a - b, a + d - b - c), dim=1)


def slicing_idwt(y):
    """Inverse of :func:`slicing_dwt`: strided writes into a zero-initialised output."""
    n, c4, h, w = y.shape
    bands = [t / 2 for t in torch.split(y, c4 // 4, dim=1)]
    ll, b1, b2, b3 = bands
    out = y.new_zeros((n, c4 // 4, 2 * h, 2 * w))
    out[:, :, 0::2, 0::2] = ll - b1 - b2 + b3
    out[:, :, 0::2, 1::2] = ll + b1 - b2 - b3
    out[:, :, 1::2, 0::2] = ll - b1 + b2 - b3
    out[:, :, 1::2, 1::2] = ll + b1 + b2 + b3
    return out


def make_baseline(op: str, variant: str, channels: int, device, dtype):
    """The eager baseline for ``op`` ("dwt" | "idwt") and ``variant``, as a plain function of one
    tensor. ``channels`` is C of the full-resolution image (the idwt input has 4C)."""
    if variant == "mwcnn":
        return slicing_dwt if op == "dwt" else slicing_idwt
    if variant not in ("invdn", "orthonormal"):
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    module = ConvHaar(variant, channels, device=device, dtype=dtype).eval()
    if op == "dwt":
        def dwt(x):
            return module(x)
        return dwt

    def idwt(y):
        return module(y, rev=True)
    return idwt


# ---------------------------------------------------------------------------------------------
# Correctness gate: a benchmark never times a wrong kernel
# ---------------------------------------------------------------------------------------------

def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.to(ref.dtype) - ref).abs().max().item()


def assert_matches(out: torch.Tensor, eager_out: torch.Tensor, ref64: torch.Tensor, what: str,
                   *, rtol32: float = 1e-5) -> None:
    """Check a contender's output against the eager baseline, with DESIGN.md's tolerances.

    ``ref64`` is the float64 reference of the same input. float32/float64: max |out - ref| <=
    ``rtol32`` * max |ref| (1e-5 for an op, 1e-4 for long chains such as a whole model).
    float16/bfloat16: max |out - ref| <= 2 * max |eager - ref| (the plain PyTorch module run in
    the same dtype), with a floor of half an ulp at max |ref| (a correctly rounded result).
    Shape and dtype must equal the eager output's, and nothing may be NaN or infinite.
    """
    assert out.shape == eager_out.shape, f"{what}: shape {tuple(out.shape)} != eager {tuple(eager_out.shape)}"
    assert out.dtype == eager_out.dtype, f"{what}: dtype {out.dtype} != eager {eager_out.dtype}"
    assert torch.isfinite(out).all().item(), f"{what}: output has NaN or inf"
    scale = ref64.abs().max().item()
    err = max_abs_err(out, ref64)
    if out.dtype in (torch.float32, torch.float64):
        bound = rtol32 * scale
        rule = f"{rtol32:g} * max|ref|"
    else:
        eager_err = max_abs_err(eager_out, ref64)
        floor = 0.5 * torch.finfo(out.dtype).eps * scale
        bound = max(2.0 * eager_err, floor)
        rule = f"max(2 * eager error {eager_err:.3e}, half-ulp floor {floor:.3e})"
    assert err <= bound, (f"{what}: max |out - float64 ref| = {err:.3e} exceeds {bound:.3e} "
                          f"({rule}); max|ref| = {scale:.3e}")
