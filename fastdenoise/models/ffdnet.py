"""FFDNet (Zhang et al., TIP 2018), as cszn/KAIR builds it (``models/network_ffdnet.py``).

``forward(x, sigma)``: replicate-pad H and W at the bottom / right to even sizes, pixel-unshuffle
by 2 (KAIR's ``basicblock.PixelUnShuffle``, whose channel order ``c * 4 + 2 * i + j`` is
torch's ``pixel_unshuffle``; this is a rearrangement, not a Haar transform), append the noise
level map (``sigma`` repeated over the half-resolution grid) as one more channel, run the flat
Conv stack ``model`` (same layout and keys as DnCNN's), pixel-shuffle back and crop to the
input size. Unlike DnCNN there is no residual: the network outputs the clean image.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_like, check_model_input, check_tensor
from ..errors import ShapeError
from .dncnn import plain_cnn

__all__ = ["FFDNet"]


class FFDNet(nn.Module):
    """FFDNet: arguments as KAIR's ``FFDNet(in_nc=1, out_nc=1, nc=64, nb=15, act_mode='R')``.

    The first convolution takes ``4 * in_nc + 1`` channels (the unshuffled image and the noise
    map) and the last gives ``4 * out_nc``. ``forward(x, sigma)``: ``x`` (B, in_nc, H, W), any
    H, W; ``sigma`` the noise level on the image's scale (σ/255 for images in [0, 1]) as a
    (B, 1, 1, 1) tensor like the official, or (1, 1, 1, 1) (used for every image), or a number.
    """

    def __init__(self, in_nc: int = 1, out_nc: int = 1, nc: int = 64, nb: int = 15, act_mode: str = "R"):
        super().__init__()
        self.in_nc, self.out_nc = in_nc, out_nc
        sf = 2
        self.m_down = nn.PixelUnshuffle(sf)
        self.model = plain_cnn(in_nc * sf * sf + 1, out_nc * sf * sf, nc, nb, act_mode)
        self.m_up = nn.PixelShuffle(sf)

    def forward(self, x: torch.Tensor, sigma: Union[torch.Tensor, float]) -> torch.Tensor:
        check_model_input(self, x, self.in_nc, "FFDNet in_nc")
        b = x.shape[0]
        if isinstance(sigma, bool):
            raise TypeError("sigma: expected a number or a (B, 1, 1, 1) tensor, got bool")
        if isinstance(sigma, (int, float)):
            if not math.isfinite(sigma) or sigma < 0:
                raise ValueError(f"sigma: expected a finite non-negative noise level, got {sigma}")
            sigma = torch.full((b, 1, 1, 1), float(sigma), dtype=x.dtype, device=x.device)
        check_tensor("sigma", sigma, layout="(B, 1, 1, 1)")
        if tuple(sigma.shape[1:]) != (1, 1, 1) or sigma.shape[0] not in (1, b):
            raise ShapeError(f"sigma: expected shape (B, 1, 1, 1) with B={b} (or 1), got {list(sigma.shape)}")
        check_like("sigma", sigma, "x", x)

        h, w = x.shape[-2:]
        pad_bottom, pad_right = h % 2, w % 2
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
        x = self.m_down(x)
        noise_map = sigma.expand(b, 1, x.shape[-2], x.shape[-1])
        x = torch.cat((x, noise_map), 1)
        x = self.model(x)
        x = self.m_up(x)
        return x[..., :h, :w]
