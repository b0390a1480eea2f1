"""DnCNN (Zhang et al., TIP 2017), as cszn/KAIR builds it (``models/network_dncnn.py``).

The network is one flat ``nn.Sequential`` named ``model``: KAIR's ``basicblock.conv`` makes a
(Conv, [BN], act) group per layer and ``basicblock.sequential`` flattens the groups, so the
state-dict keys are ``model.<i>.weight`` / ``model.<i>.bias`` (and ``running_mean`` ... for BN)
with ``i`` counting every layer, activations included. ``forward(x) = x - model(x)``
(residual learning: the network predicts the noise).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from .._checks import check_model_input

__all__ = ["DnCNN", "conv_layers", "plain_cnn"]


def conv_layers(in_channels: int, out_channels: int, mode: str, *, kernel_size: int = 3,
                padding: int = 1, bias: bool = True, negative_slope: float = 0.2) -> List[nn.Module]:
    """The layers KAIR's ``basicblock.conv`` makes for ``mode``, as a flat list.

    ``C``: 3x3 convolution; ``B``: BatchNorm2d(momentum=0.9, eps=1e-4, affine); ``I``:
    InstanceNorm2d(affine); ``R``/``r``: ReLU (in place / not); ``L``/``l``: LeakyReLU(0.2)
    (in place / not). In-place activations only ever follow a convolution or a norm, so they
    never touch a caller's tensor.
    """
    layers: List[nn.Module] = []
    for t in mode:
        if t == "C":
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=bias))
        elif t == "B":
            layers.append(nn.BatchNorm2d(out_channels, momentum=0.9, eps=1e-4, affine=True))
        elif t == "I":
            layers.append(nn.InstanceNorm2d(out_channels, affine=True))
        elif t in "Rr":
            layers.append(nn.ReLU(inplace=(t == "R")))
        elif t in "Ll":
            layers.append(nn.LeakyReLU(negative_slope=negative_slope, inplace=(t == "L")))
        else:
            raise ValueError(f"mode: unknown layer type {t!r} in {mode!r} (expected C, B, I, R, r, L, l)")
    return layers


def check_act_mode(act_mode: str) -> None:
    if not isinstance(act_mode, str) or not ("R" in act_mode or "L" in act_mode):
        raise ValueError(f"act_mode: expected an activation R or L, optionally after a norm "
                         f"(R, L, BR, BL, IR, IL), got {act_mode!r}")


def plain_cnn(in_nc: int, out_nc: int, nc: int, nb: int, act_mode: str) -> nn.Sequential:
    """KAIR's head / body / tail stack: Conv+act, (nb - 2) x Conv+act_mode, Conv; flattened."""
    check_act_mode(act_mode)
    if nb < 2:
        raise ValueError(f"nb: expected at least 2 convolution layers, got {nb}")
    layers = conv_layers(in_nc, nc, "C" + act_mode[-1])
    for _ in range(nb - 2):
        layers += conv_layers(nc, nc, "C" + act_mode)
    layers += conv_layers(nc, out_nc, "C")
    return nn.Sequential(*layers)


class DnCNN(nn.Module):
    """DnCNN: ``nb`` 3x3 convolutions of ``nc`` channels predicting the noise; returns ``x - noise``.

    Arguments as KAIR's ``DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode='BR')``: ``nb`` counts
    every convolution; ``act_mode`` is the norm + activation of the body layers (``'BR'``:
    BatchNorm + ReLU, ``'R'``: ReLU only, as the released checkpoints, whose BN is merged into
    the convolutions); the head keeps only the activation. Input (B, in_nc, H, W), any H, W.
    """

    def __init__(self, in_nc: int = 1, out_nc: int = 1, nc: int = 64, nb: int = 17, act_mode: str = "BR"):
        super().__init__()
        self.in_nc, self.out_nc = in_nc, out_nc
        self.model = plain_cnn(in_nc, out_nc, nc, nb, act_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x, self.in_nc, "DnCNN in_nc")
        return x - self.model(x)
