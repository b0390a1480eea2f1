"""Plain PyTorch baselines, written the way the official code writes them.

These are the ``eager`` contenders of the benchmarks (and, through ``torch.compile``, the
``compiled`` ones). They follow the official sources line by line, with two deliberate changes
so they run anywhere and in any dtype:

* InvDN (``codes/models/modules/Inv_arch.py``, ``HaarDownsampling``): the filters are built on
  the input's device and dtype (the official module keeps them as a frozen ``nn.Parameter`` that
  ``.cuda()`` / ``.half()`` convert the same way).
* MWCNN (``dwt_init`` / ``iwt_init``): ``iwt_init`` allocates its output with
  ``x.new_zeros`` instead of ``torch.zeros(...).float().cuda()``, so it runs on any device and
  keeps the input's dtype (the official code always returns float32 on CUDA).

The ``orthonormal`` variant has no official PyTorch module; its baseline is InvDN's grouped
convolution with the orthonormal filters (scale 1/2 both ways), the usual conv-based Haar.

Each variant maps to ``(dwt, idwt)`` in :data:`BASELINES`; the functions take and return
(B, C, H, W) tensors in fastdenoise's sub-band-major layout, so they can be compared with
``fastdenoise.ops.haar_dwt2d`` / ``haar_idwt2d`` elementwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HaarDownsampling", "ConvHaar", "dwt_init", "iwt_init", "make_baseline", "VARIANTS"]

VARIANTS = ("orthonormal", "invdn", "mwcnn")


class HaarDownsampling(nn.Module):
    """InvDN's ``HaarDownsampling``, as in the official repository (filters, /4, reshape/transpose).

    ``forward(x)``: (B, C, H, W) -> (B, 4C, H/2, W/2), sub-band-major;
    ``forward(x, rev=True)``: the inverse, by ``conv_transpose2d``.
    """

    def __init__(self, channel_in: int, device=None, dtype=None):
        super().__init__()
        self.channel_in = channel_in

        haar_weights = torch.ones(4, 1, 2, 2)

        haar_weights[1, 0, 0, 1] = -1
        haar_weights[1, 0, 1, 1] = -1

        haar_weights[2, 0, 1, 0] = -1
        haar_weights[2, 0, 1, 1] = -1

        haar_weights[3, 0, 1, 0] = -1
        haar_weights[3, 0, 0, 1] = -1

        haar_weights = torch.cat([haar_weights] * self.channel_in, 0)
        self.haar_weights = nn.Parameter(haar_weights.to(device=device, dtype=dtype))
        self.haar_weights.requires_grad = False

    def forward(self, x, rev: bool = False):
        if not rev:
            self.elements = x.shape[1] * x.shape[2] * x.shape[3]
            self.last_jac = self.elements / 4 * math.log(1 / 16.0)

            out = F.conv2d(x, self.haar_weights, bias=None, stride=2, groups=self.channel_in) / 4.0
            out = out.reshape([x.shape[0], self.channel_in, 4, x.shape[2] // 2, x.shape[3] // 2])
            out = torch.transpose(out, 1, 2)
            out = out.reshape([x.shape[0], self.channel_in * 4, x.shape[2] // 2, x.shape[3] // 2])
            return out
        else:
            self.elements = x.shape[1] * x.shape[2] * x.shape[3]
            self.last_jac = self.elements / 4 * math.log(16.0)

            out = x.reshape([x.shape[0], 4, self.channel_in, x.shape[2], x.shape[3]])
            out = torch.transpose(out, 1, 2)
            out = out.reshape([x.shape[0], self.channel_in * 4, x.shape[2], x.shape[3]])
            return F.conv_transpose2d(out, self.haar_weights, bias=None, stride=2, groups=self.channel_in)


class ConvHaar(nn.Module):
    """The orthonormal Haar transform written as InvDN writes its own: a grouped stride-2
    convolution (filters in PyWavelets' cA, cH, cV, cD order, scaled by 1/2), reshape/transpose
    to sub-band-major, and ``conv_transpose2d`` back."""

    def __init__(self, channel_in: int, device=None, dtype=None):
        super().__init__()
        self.channel_in = channel_in
        w = torch.tensor([[[1, 1], [1, 1]],
                          [[1, 1], [-1, -1]],
                          [[1, -1], [1, -1]],
                          [[1, -1], [-1, 1]]], dtype=torch.float32).unsqueeze(1) * 0.5
        w = torch.cat([w] * channel_in, 0)
        self.weight = nn.Parameter(w.to(device=device, dtype=dtype), requires_grad=False)

    def forward(self, x, rev: bool = False):
        n, c = x.shape[0], self.channel_in
        if not rev:
            out = F.conv2d(x, self.weight, bias=None, stride=2, groups=c)
            out = out.reshape([n, c, 4, x.shape[2] // 2, x.shape[3] // 2]).transpose(1, 2)
            return out.reshape([n, 4 * c, x.shape[2] // 2, x.shape[3] // 2])
        out = x.reshape([n, 4, c, x.shape[2], x.shape[3]]).transpose(1, 2)
        out = out.reshape([n, 4 * c, x.shape[2], x.shape[3]])
        return F.conv_transpose2d(out, self.weight, bias=None, stride=2, groups=c)


def dwt_init(x):
    """MWCNN's ``dwt_init`` (official code, unchanged)."""
    x01 = x[:, :, 0::2, :] / 2
    x02 = x[:, :, 1::2, :] / 2
    x1 = x01[:, :, :, 0::2]
    x2 = x02[:, :, :, 0::2]
    x3 = x01[:, :, :, 1::2]
    x4 = x02[:, :, :, 1::2]
    x_LL = x1 + x2 + x3 + x4
    x_HL = -x1 - x2 + x3 + x4
    x_LH = -x1 + x2 - x3 + x4
    x_HH = x1 - x2 - x3 + x4

    return torch.cat((x_LL, x_HL, x_LH, x_HH), 1)


def iwt_init(x):
    """MWCNN's ``iwt_init``; the output is ``x.new_zeros`` (any device, the input's dtype)
    instead of ``torch.zeros(...).float().cuda()``."""
    r = 2
    in_batch, in_channel, in_height, in_width = x.size()
    out_batch, out_channel, out_height, out_width = in_batch, int(in_channel / (r ** 2)), r * in_height, r * in_width
    x1 = x[:, 0:out_channel, :, :] / 2
    x2 = x[:, out_channel:out_channel * 2, :, :] / 2
    x3 = x[:, out_channel * 2:out_channel * 3, :, :] / 2
    x4 = x[:, out_channel * 3:out_channel * 4, :, :] / 2

    h = x.new_zeros([out_batch, out_channel, out_height, out_width])

    h[:, :, 0::2, 0::2] = x1 - x2 - x3 + x4
    h[:, :, 1::2, 0::2] = x1 - x2 + x3 - x4
    h[:, :, 0::2, 1::2] = x1 + x2 - x3 - x4
    h[:, :, 1::2, 1::2] = x1 + x2 + x3 + x4

    return h


def make_baseline(op: str, variant: str, channels: int, device, dtype):
    """The eager baseline for ``op`` ("dwt" | "idwt") and ``variant``, as a plain function of one
    tensor. ``channels`` is C of the full-resolution image (the idwt input has 4C)."""
    if variant == "mwcnn":
        return dwt_init if op == "dwt" else iwt_init
    cls = HaarDownsampling if variant == "invdn" else ConvHaar
    if variant not in ("invdn", "orthonormal"):
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    module = cls(channels, device=device, dtype=dtype).eval()
    if op == "dwt":
        def dwt(x):
            return module(x)
        return dwt

    def idwt(y):
        return module(y, rev=True)
    return idwt
