"""Fused twins of the channel-attention blocks of MPRNet (swz30/MPRNet) and RIDNet
(saeed-anwar/RIDNet): the official parameters under the official names, the same maths, computed
by :func:`fastdenoise.ops.channel_attention` (Triton on CUDA tensors, the plain reference on the
CPU) -- the pooled mean, the two 1x1 convolutions and the scaling in one op instead of four
modules and two full passes of intermediates.

* :class:`MPRNetCALayer` -- MPRNet's ``CALayer``: ``avg_pool``, ``conv_du`` = (1x1 conv, ReLU,
  1x1 conv, Sigmoid), biases only when the model was built with ``bias=True``.
* :class:`CAB` -- MPRNet's channel attention block ``CA(body(x)) + x`` with the residual add
  fused into the attention's scaling pass; ``body`` (conv, PReLU, conv) is the official
  submodule itself, so the PReLU all of MPRNet's CABs share stays one parameter object.
* :class:`RIDNetCALayer` -- RIDNet's ``CALayer``: ``avg_pool``, ``c1.body`` = (1x1 conv, ReLU),
  ``c2.body`` = (1x1 conv, Sigmoid), with biases.

``from_module(m)`` builds a twin sharing ``m``'s submodules and parameters (no copies) and raises
ValueError, naming the attribute, when ``m`` does not have the official structure.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .._checks import check_block_input
from ..ops import channel_attention

__all__ = ["MPRNetCALayer", "CAB", "RIDNetCALayer"]


def _is_global_pool(m) -> bool:
    return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))


def _pointwise(where: str, conv, cin: Optional[int] = None) -> nn.Conv2d:
    """Check that ``conv`` is a plain 1x1 convolution (stride 1, no padding, no groups)
    taking ``cin`` channels; returns it."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{where}: expected a 1x1 nn.Conv2d, got {type(conv).__name__}")
    if (conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding not in ((0, 0), "valid")
            or conv.groups != 1):
        raise ValueError(f"{where}: expected a 1x1 convolution with stride 1, padding 0 and groups 1, got {conv}")
    if cin is not None and conv.in_channels != cin:
        raise ValueError(f"{where}: expected {cin} input channels, got {conv.in_channels}")
    return conv


def _excitation(where: str, down, relu, up, sigmoid) -> Tuple[nn.Conv2d, nn.Conv2d]:
    """Check the squeeze-and-excitation layers ``down`` (C -> R), ReLU, ``up`` (R -> C), Sigmoid."""
    down = _pointwise(f"{where} (first 1x1 conv)", down)
    up = _pointwise(f"{where} (second 1x1 conv)", up, down.out_channels)
    if up.out_channels != down.in_channels:
        raise ValueError(f"{where}: expected the second 1x1 conv to give back the {down.in_channels} channels, "
                         f"got {up.out_channels}")
    if not isinstance(relu, nn.ReLU):
        raise ValueError(f"{where}: expected nn.ReLU between the convolutions, got {type(relu).__name__}")
    if not isinstance(sigmoid, nn.Sigmoid):
        raise ValueError(f"{where}: expected nn.Sigmoid last, got {type(sigmoid).__name__}")
    return down, up


def _global_pool(where: str, m: nn.Module) -> None:
    if not _is_global_pool(getattr(m, "avg_pool", None)):
        raise ValueError(f"{where}.avg_pool: expected nn.AdaptiveAvgPool2d(1) (a global average), "
                         f"got {getattr(m, 'avg_pool', None)}")


def _bias(conv: nn.Conv2d) -> Optional[torch.Tensor]:
    return conv.bias


class MPRNetCALayer(nn.Module):
    """MPRNet's ``CALayer(channel, reduction=16, bias=False)`` (official arguments and
    state-dict keys ``conv_du.0.weight`` / ``conv_du.2.weight`` (+ ``.bias``)), fused."""

    def __init__(self, channel: int, reduction: int = 16, bias: bool = False):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=bias),
                                     nn.ReLU(inplace=True),
                                     nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=bias),
                                     nn.Sigmoid())

    def attend(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x * attention(x)`` (+ ``residual``) in one op."""
        down, up = self.conv_du[0], self.conv_du[2]
        check_block_input(type(self).__name__, x, down.in_channels, down.weight, match_dtype=False)
        return channel_attention(x, down.weight, _bias(down), up.weight, _bias(up), residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)

    @classmethod
    def from_module(cls, m: nn.Module) -> "MPRNetCALayer":
        """A twin sharing ``m.avg_pool`` and ``m.conv_du`` (and so their parameters)."""
        name = type(m).__name__
        _global_pool(name, m)
        du = getattr(m, "conv_du", None)
        if not (isinstance(du, nn.Sequential) and len(du) == 4):
            raise ValueError(f"{name}.conv_du: expected Sequential(1x1 Conv2d, ReLU, 1x1 Conv2d, Sigmoid), got {du}")
        _excitation(f"{name}.conv_du", du[0], du[1], du[2], du[3])
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.avg_pool, new.conv_du = m.avg_pool, du
        new.train(m.training)
        return new


class CAB(nn.Module):
    """MPRNet's ``CAB(n_feat, kernel_size, reduction, bias, act)``: ``CA(body(x)) + x``, with
    the attention and the residual add in one op. ``act`` is used as given (MPRNet hands every
    CAB the same PReLU). ``CA`` is registered before ``body``, as in the official."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module):
        super().__init__()
        first = nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias)
        second = nn.Conv2d(n_feat, n_feat, kernel_size, padding=kernel_size // 2, bias=bias)
        self.CA = MPRNetCALayer(n_feat, reduction, bias=bias)
        self.body = nn.Sequential(first, act, second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.body[0]
        check_block_input(type(self).__name__, x, first.in_channels, first.weight)
        y = self.body(x)
        if y.dtype != x.dtype:           # mixed dtypes (autocast): add in the promoted dtype, as eager
            return self.CA.attend(y) + x
        return self.CA.attend(y, residual=x)

    @classmethod
    def from_module(cls, m: nn.Module) -> "CAB":
        """A twin sharing ``m.body`` (the module itself: its shared PReLU stays shared) and the
        parameters of ``m.CA`` (through a fused :class:`MPRNetCALayer` twin of it)."""
        name = type(m).__name__
        body, ca = getattr(m, "body", None), getattr(m, "CA", None)
        if not (isinstance(body, nn.Sequential) and len(body) == 3 and isinstance(body[0], nn.Conv2d)
                and isinstance(body[2], nn.Conv2d)):
            raise ValueError(f"{name}.body: expected Sequential(Conv2d, activation, Conv2d), got {body}")
        if not isinstance(ca, nn.Module):
            raise ValueError(f"{name}.CA: expected MPRNet's CALayer, got {type(ca).__name__}")
        if body[2].out_channels != body[0].in_channels:
            raise ValueError(f"{name}.body: expected as many output channels as input channels (the residual "
                             f"add), got {body[0].in_channels} -> {body[2].out_channels}")
        fused_ca = ca if isinstance(ca, MPRNetCALayer) else MPRNetCALayer.from_module(ca)
        if fused_ca.conv_du[0].in_channels != body[2].out_channels:
            raise ValueError(f"{name}.CA: expected attention over {body[2].out_channels} channels, "
                             f"got {fused_ca.conv_du[0].in_channels}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.CA, new.body = fused_ca, body
        new.train(m.training)
        return new


class RIDNetCALayer(nn.Module):
    """RIDNet's ``CALayer(channel, reduction=16)`` (state-dict keys ``c1.body.0.weight``,
    ``c1.body.0.bias``, ``c2.body.0.weight``, ``c2.body.0.bias``), fused."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.c1 = _Wrapped(nn.Conv2d(channel, channel // reduction, 1, 1, 0), nn.ReLU(inplace=True))
        self.c2 = _Wrapped(nn.Conv2d(channel // reduction, channel, 1, 1, 0), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.c1.body[0], self.c2.body[0]
        check_block_input(type(self).__name__, x, down.in_channels, down.weight, match_dtype=False)
        return channel_attention(x, down.weight, _bias(down), up.weight, _bias(up))

    @classmethod
    def from_module(cls, m: nn.Module) -> "RIDNetCALayer":
        """A twin sharing ``m.avg_pool``, ``m.c1`` and ``m.c2`` (and so their parameters)."""
        name = type(m).__name__
        _global_pool(name, m)
        bodies = []
        for attr in ("c1", "c2"):
            body = getattr(getattr(m, attr, None), "body", None)
            if not (isinstance(body, nn.Sequential) and len(body) == 2):
                raise ValueError(f"{name}.{attr}.body: expected Sequential(1x1 Conv2d, activation), got {body}")
            bodies.append(body)
        _excitation(f"{name}.c1/c2", bodies[0][0], bodies[0][1], bodies[1][0], bodies[1][1])
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.avg_pool, new.c1, new.c2 = m.avg_pool, m.c1, m.c2
        new.train(m.training)
        return new


class _Wrapped(nn.Module):
    """A ``body`` Sequential holder (RIDNet's BasicBlock / BasicBlockSig layout, for the keys)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
