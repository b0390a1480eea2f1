"""MWCNN (Liu et al., CVPRW 2018), as lpj0/MWCNN_PyTorch builds it: class ``BSR`` in
``model/mw.py`` (the default ``--model``), from ``model/common.py`` (``BBlock``, ``DWT``,
``IWT``, ``default_conv``).

Three wavelet levels; every layer is a ``BBlock`` (3x3 conv + ReLU, key ``<group>.<i>.body.0``):

====== ================================================= ===============================
group  layers                                            resolution
====== ================================================= ===============================
head   4c -> 160                                         1/2 (after DWT)
d_l1   3 x 160 -> 160                                    1/2
d_l2   640 -> 4f, 3 x 4f -> 4f                           1/4 (after DWT)
pro_l3 16f -> 4f, 6 x 4f -> 4f, 4f -> 16f                1/8 (after DWT; IWT + skip)
i_l2   3 x 4f -> 4f, 4f -> 640                           1/4 (IWT + skip)
i_l1   3 x 160 -> 160                                    1/2
tail   conv 160 -> 4c (no ReLU, key ``tail.0``)          1/2 (IWT + input)
====== ================================================= ===============================

(f = ``n_feats``, c = ``n_colors``; the 160 / 640 widths are fixed in the official code.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ..nn.haar import DWT, IWT
from .._checks import check_model_input

__all__ = ["MWCNN", "BBlock"]


def default_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class BBlock(nn.Module):
    """Conv + ReLU, stored as ``body = Sequential(conv, relu)`` (official ``common.BBlock``, no BN,
    ``res_scale`` 1: the official multiplies by it, which is exact for 1 and skipped here)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.body = nn.Sequential(default_conv(in_channels, out_channels, kernel_size, bias=bias),
                                  nn.ReLU(inplace=True))   # in place on the conv output only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MWCNN(nn.Module):
    """The official MWCNN denoiser (``BSR``), with its ``args`` fields as keyword arguments.

    ``MWCNN(n_resblocks=20, n_feats=64, n_colors=1)``: ``n_resblocks`` and ``n_feats`` have the
    official ``option.py`` defaults; ``n_resblocks`` is accepted and unused, as in ``BSR``.
    ``n_colors`` is an extension: ``BSR`` is grey-only (its head takes 4 channels and its tail
    gives 4, whatever the option ``--n_colors``, default 3, says), which ``n_colors=1``
    reproduces exactly; ``n_colors=c`` makes the head take ``4c`` channels and the tail give
    ``4c``, the rest unchanged.

    ``forward(x)``: ``x`` (B, n_colors, H, W). The network needs H and W multiples of 8 (three
    Haar levels); other sizes are reflection-padded at the bottom / right to the next multiple
    of 8 and the output is cropped back (sizes that are already multiples of 8 are not touched,
    so the result is the official one exactly). Reflection needs H, W >= 5 when they are not
    multiples of 8 (ShapeError otherwise).
    """

    def __init__(self, n_resblocks: int = 20, n_feats: int = 64, n_colors: int = 1):
        super().__init__()
        self.n_resblocks, self.n_feats, self.n_colors = n_resblocks, n_feats, n_colors
        self.scale_idx = 0
        f4 = n_feats * 4
        n = 3

        self.DWT = DWT()
        self.IWT = IWT()
        # Built in the official order (same random initialisation for the same seed), then
        # registered in the official order (same state-dict key order).
        head = [BBlock(4 * n_colors, 160)]
        d_l1 = [BBlock(160, 160) for _ in range(n)]
        d_l2 = [BBlock(640, f4)] + [BBlock(f4, f4) for _ in range(n)]
        pro_l3 = [BBlock(n_feats * 16, f4)] + [BBlock(f4, f4) for _ in range(2 * n)] + [BBlock(f4, n_feats * 16)]
        i_l2 = [BBlock(f4, f4) for _ in range(n)] + [BBlock(f4, 640)]
        i_l1 = [BBlock(160, 160) for _ in range(n)]
        tail = [default_conv(160, 4 * n_colors, 3)]
        self.head = nn.Sequential(*head)
        self.d_l2 = nn.Sequential(*d_l2)
        self.d_l1 = nn.Sequential(*d_l1)
        self.pro_l3 = nn.Sequential(*pro_l3)
        self.i_l2 = nn.Sequential(*i_l2)
        self.i_l1 = nn.Sequential(*i_l1)
        self.tail = nn.Sequential(*tail)

    def set_scale(self, scale_idx: int) -> None:
        """As the official (used by its test harness; no effect on the output)."""
        self.scale_idx = scale_idx

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.d_l1(self.head(self.DWT(x)))
        x2 = self.d_l2(self.DWT(x1))
        y = self.IWT(self.pro_l3(self.DWT(x2))) + x2
        y = self.IWT(self.i_l2(y)) + x1
        return self.IWT(self.tail(self.i_l1(y))) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x, self.n_colors, "MWCNN n_colors")
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 8, -w % 8
        if not (pad_h or pad_w):
            return self._body(x)
        if pad_h >= h or pad_w >= w:
            raise ShapeError(f"x: expected H and W multiples of 8, or at least 5 to reflection-pad them "
                             f"to one, got H={h}, W={w}: {list(x.shape)}")
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self._body(xp)[..., :h, :w]
