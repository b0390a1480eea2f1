"""Fused twin of Restormer's gated-dconv feed-forward network (swz30/Restormer ``FeedForward``):
the same constructor, the same submodules and parameter names, the same maths.

Official: ``hidden = int(dim * ffn_expansion_factor)``; ``y = dwconv(project_in(x))`` (1x1 conv
``dim -> 2 hidden``, then the depthwise 3x3 conv, padding 1); ``x1, x2 = y.chunk(2, dim=1)``;
``project_out(gelu(x1) * x2)`` (1x1 conv ``hidden -> dim``, exact erf GELU).

:class:`GDFN` runs ``project_in`` -> :func:`fastdenoise.ops.dwconv_gate` (the depthwise
convolution and the gate in one op: Triton on CUDA tensors, the plain PyTorch reference on the
CPU) -> ``project_out``, over horizontal bands of rows, so the (B, 2 hidden, H, W) tensor --
about 5.3x the input with Restormer's factor 2.66 -- never exists for the whole image at once.
With ``fuse_input=True``, ``project_in``, the depthwise convolution and the gate are one
:func:`fastdenoise.ops.pointwise_dwconv` (``gate=True``): the 2 hidden-channel tensor never
exists at all, only the gated hidden one, still in bands. Off by default until GPU measurements
say where it pays; not under autocast (the official convolutions then run in autocast's dtype)
nor for an input whose dtype differs from the weights' (the convolutions raise, as official).

Row chunks: for output rows ``[r0, r1)`` the input rows ``[r0 - 1, r1 + 1)`` clipped to the
image go through ``project_in`` (a 1x1 convolution: per pixel, so a band of rows gives exactly
the rows of the full result) and ``dwconv_gate``; at the image's top and bottom the op's zero
padding is the official padding, and at a band's inner edges the extra row is real data, so the
band's interior rows equal the full computation's. Those rows go through ``project_out`` into a
preallocated output in the input's memory format.

Chunk height (:func:`chunk_rows_for`): the band's widest tensor (2 hidden channels; hidden with
``fuse_input``), halo rows included, is kept at most ``max(input bytes, 16 MiB)`` -- the input's
size, or 16 MiB when the input is smaller -- so ``rows = floor(budget / (B * channels * W *
itemsize)) - 2``, at least 8 rows (the two halo rows per band then cost at most 25 % extra
``project_in`` work); one band when that covers the image (small images: no halo work at all).
``chunk_rows`` forces the band height.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import autocast_enabled, check_block_input, memory_format_of
from ..ops.dwconv_gate import dwconv_gate
from ..ops.pwdw import pointwise_dwconv

__all__ = ["GDFN", "chunk_rows_for"]

#: Smallest memory budget of a band's (B, 2 hidden, rows, W) tensor, in bytes.
MIN_CHUNK_BYTES = 16 << 20
#: Fewest rows per band when the image is cut (bounds the halo overhead at 2 / 8).
MIN_CHUNK_ROWS = 8


def chunk_rows_for(x: torch.Tensor, channels: int) -> int:
    """Output rows per band for input ``x`` (B, dim, H, W) when the band's widest tensor has
    ``channels`` channels (2 hidden; hidden with ``fuse_input``): that tensor (2 halo rows
    included) fits in ``max(x's bytes, MIN_CHUNK_BYTES)``, with at least ``MIN_CHUNK_ROWS``
    rows, and at most H (one band)."""
    bsz, _, h, w = x.shape
    budget = max(x.numel() * x.element_size(), MIN_CHUNK_BYTES)
    per_row = max(1, bsz * channels * w * x.element_size())
    rows = budget // per_row - 2
    return int(min(h, max(MIN_CHUNK_ROWS, rows)))


def _check_conv(name: str, conv, cin: int, cout: int, k: int, groups: int) -> None:
    pad = 1 if k == 3 else 0
    want = (f"nn.Conv2d({cin}, {cout}, kernel_size={k}, stride=1, padding={pad}, groups={groups}, "
            "padding_mode='zeros')")
    ok = (isinstance(conv, nn.Conv2d) and conv.in_channels == cin and conv.out_channels == cout
          and conv.kernel_size == (k, k) and conv.stride == (1, 1) and conv.padding == (pad, pad)
          and conv.dilation == (1, 1) and conv.groups == groups and conv.padding_mode == "zeros")
    if not ok:
        raise ValueError(f"m.{name}: expected {want}, got {conv!r}")


class GDFN(nn.Module):
    """Restormer's ``FeedForward(dim, ffn_expansion_factor, bias)`` with the official submodules
    ``project_in``, ``dwconv``, ``project_out``, fused and computed in row bands (see the module
    docstring). ``chunk_rows`` (keyword-only, also an attribute): output rows per band, None for
    the automatic choice of :func:`chunk_rows_for`. ``fuse_input`` (keyword-only, also an
    attribute): ``project_in``, ``dwconv`` and the gate as one
    :func:`fastdenoise.ops.pointwise_dwconv`."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool, *, chunk_rows: Optional[int] = None,
                 fuse_input: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2,
                                bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)
        self.chunk_rows = chunk_rows
        self.fuse_input = bool(fuse_input)

    @classmethod
    def from_module(cls, m: nn.Module, *, chunk_rows: Optional[int] = None, fuse_input: bool = False) -> "GDFN":
        """A fused twin sharing ``m``'s submodules (the same objects, registered in ``m``'s
        order). ``m`` must have ``project_in`` (1x1 conv dim -> 2h), ``dwconv`` (depthwise 3x3
        conv, padding 1, stride 1, groups 2h) and ``project_out`` (1x1 conv h -> dim); raises
        ValueError naming the attribute otherwise."""
        for name in ("project_in", "dwconv", "project_out"):
            if not isinstance(getattr(m, name, None), nn.Conv2d):
                raise ValueError(f"m.{name}: expected an nn.Conv2d (Restormer's FeedForward), got "
                                 f"{type(getattr(m, name, None)).__name__} in {type(m).__name__}")
        pin = m.project_in
        dim, hidden2 = pin.in_channels, pin.out_channels
        if hidden2 % 2:
            raise ValueError(f"m.project_in: expected an even number of output channels (2 hidden), got {pin!r}")
        _check_conv("project_in", pin, dim, hidden2, 1, 1)
        _check_conv("dwconv", m.dwconv, hidden2, hidden2, 3, hidden2)
        _check_conv("project_out", m.project_out, hidden2 // 2, dim, 1, 1)
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, p in m._parameters.items():
            new.register_parameter(name, p)
        for name, child in m._modules.items():
            new.add_module(name, child)
        new.chunk_rows = chunk_rows
        new.fuse_input = bool(fuse_input)
        new.train(m.training)
        return new

    def _gated(self, x: torch.Tensor, fuse: bool) -> torch.Tensor:
        """gelu(x1) * x2 of ``dwconv(project_in(x))`` for a band of rows."""
        pin, dw = self.project_in, self.dwconv
        if fuse:
            return pointwise_dwconv(x, pin.weight, dw.weight, pin.bias, dw.bias, gate=True)
        return dwconv_gate(pin(x), dw.weight, dw.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_block_input(type(self).__name__, x, self.project_in.in_channels, self.project_in.weight)
        h = x.shape[2]
        # the official convolutions run in autocast's dtype: not fused then (outside autocast the
        # check above makes x's dtype the weights')
        fuse = self.fuse_input and not autocast_enabled(x.device.type)
        widest = self.dwconv.in_channels // (2 if fuse else 1)
        rows = self.chunk_rows if self.chunk_rows is not None else chunk_rows_for(x, widest)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"chunk_rows: expected a positive int or None, got {rows!r}")
        if rows >= h:                                # one band: the image itself
            return self.project_out(self._gated(x, fuse))
        out = None
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a, e = max(0, r0 - 1), min(h, r1 + 1)    # input rows with the halo, clipped
            z = self._gated(x[:, :, a:e], fuse)
            y = self.project_out(z[:, :, r0 - a:r0 - a + (r1 - r0)])
            if out is None:
                out = torch.empty((x.shape[0], y.shape[1], h, x.shape[3]), dtype=y.dtype, device=y.device,
                                  memory_format=memory_format_of(x))
            out[:, :, r0:r1].copy_(y)
        return out

    def extra_repr(self) -> str:
        parts = ([f"chunk_rows={self.chunk_rows}"] if self.chunk_rows is not None else []) + \
            (["fuse_input=True"] if self.fuse_input else [])
        return ", ".join(parts)
