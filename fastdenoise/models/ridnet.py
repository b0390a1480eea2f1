"""RIDNet (Anwar & Barnes, ICCV 2019), as saeed-anwar/RIDNet builds it: class ``RIDNET`` in
``TestCode/code/model/ridnet.py``, from ``model/ops.py`` (the blocks) and ``model/common.py``
(``MeanShift``).

::

    x ─ sub_mean ─ head ─ b1 ─ b2 ─ b3 ─ b4 ─ tail ─ add_mean ─(+ x)─ out

``head``: 3x3 conv (3 -> f) + ReLU. Each of ``b1`` .. ``b4`` is an EAM block (:class:`Block`):

* ``r1`` :class:`Merge_Run_dual`: two branches of two 3x3 convolutions + ReLU each, dilations
  1, 2 and 3, 4; their concatenation through a 3x3 conv (2f -> f) + ReLU; plus the input;
* ``r2`` :class:`ResidualBlock`: conv + ReLU + conv, plus the input, ReLU;
* ``r3`` :class:`EResidualBlock`: conv + ReLU + conv + ReLU + 1x1 conv, plus the input, ReLU;
* ``ca`` :class:`CALayer`: global average, 1x1 conv (f -> f // reduction, bias) + ReLU, 1x1 conv
  (back to f, bias) + sigmoid, times the features.

``tail``: 3x3 conv (f -> 3). Every convolution has a bias. ``sub_mean`` / ``add_mean`` are
:class:`MeanShift` 1x1 convolutions whose weights are in the state dict (``sub_mean.weight``,
``sub_mean.bias``, ``add_mean.weight``, ``add_mean.bias``).

Input range: the official model works on images in ``[0, rgb_range]`` (``rgb_range`` 255 by
default: the official data loader multiplies 8-bit values by ``rgb_range / 255``, and the mean
shifts subtract / add ``rgb_range`` times the DIV2K mean). ``forward`` keeps exactly that: give it
``[0, rgb_range]`` images, it returns ``[0, rgb_range]`` estimates, unclamped. :meth:`RIDNet.denoise`
takes and returns ``[0, 1]`` images (scaling by ``rgb_range`` explicitly, then clamping).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_model_input, memory_format_of
from ..errors import CheckpointError
from ..nn import attention as fused_blocks
from ._fuse import swap_children

__all__ = ["RIDNet", "Block", "CALayer", "MeanShift", "Merge_Run_dual", "ResidualBlock",
           "EResidualBlock", "BasicBlock", "BasicBlockSig", "RGB_MEAN", "RGB_STD", "infer_ridnet"]

#: the DIV2K RGB mean and the unit std that the official model hard-codes for its mean shifts
RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_STD = (1.0, 1.0, 1.0)


class MeanShift(nn.Conv2d):
    """3 -> 3 1x1 convolution adding ``sign * rgb_range * mean / std`` per channel (weight:
    identity / std). As in the official ``common.MeanShift``, weight and bias are ordinary
    parameters in the state dict: the official sets a ``requires_grad`` attribute on the module,
    which leaves its parameters trainable, so a trained checkpoint may hold shifted values; they
    are loaded, never recomputed."""

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float] = RGB_MEAN,
                 rgb_std: Sequence[float] = RGB_STD, sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)


class BasicBlock(nn.Module):
    """Conv (bias) + ReLU, stored as ``body = Sequential(conv, relu)`` (official ``ops.BasicBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 3, stride: int = 1, pad: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, ksize, stride, pad),
                                  nn.ReLU(inplace=True))    # in place on the conv output only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlockSig(nn.Module):
    """Conv (bias) + sigmoid, stored as ``body = Sequential(conv, sigmoid)`` (``ops.BasicBlockSig``)."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 3, stride: int = 1, pad: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, ksize, stride, pad), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv3(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with bias whose padding equals its dilation (same size out)."""
    return nn.Conv2d(cin, cout, 3, 1, dilation, dilation)


class Merge_Run_dual(nn.Module):  # noqa: N801 (the official name, kept for patch())
    """Two dilated branches merged: ``body3(cat(body1(x), body2(x))) + x``.

    ``body1``: 3x3 conv (dilation 1) + ReLU, 3x3 conv (dilation 2) + ReLU; ``body2``: dilations 3
    and 4; ``body3``: 3x3 conv (2 * out -> out) + ReLU. The second conv of each branch takes
    ``in_channels`` (as the official), so ``in_channels == out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body1 = nn.Sequential(_conv3(in_channels, out_channels, 1), nn.ReLU(inplace=True),
                                   _conv3(in_channels, out_channels, 2), nn.ReLU(inplace=True))
        self.body2 = nn.Sequential(_conv3(in_channels, out_channels, 3), nn.ReLU(inplace=True),
                                   _conv3(in_channels, out_channels, 4), nn.ReLU(inplace=True))
        self.body3 = nn.Sequential(_conv3(2 * in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.body1(x), self.body2(x)], dim=1)
        return self.body3(merged) + x


class ResidualBlock(nn.Module):
    """``relu(body(x) + x)`` with ``body`` = 3x3 conv + ReLU + 3x3 conv (``ops.ResidualBlock``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv3(in_channels, out_channels), nn.ReLU(inplace=True),
                                  _conv3(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class EResidualBlock(nn.Module):
    """``relu(body(x) + x)`` with ``body`` = 3x3 conv + ReLU + 3x3 conv + ReLU + 1x1 conv
    (``ops.EResidualBlock``; ``group`` is the groups of the two 3x3 convolutions, 1 in RIDNet)."""

    def __init__(self, in_channels: int, out_channels: int, group: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class CALayer(nn.Module):
    """RIDNet's channel attention: ``x * c2(c1(avg_pool(x)))``, ``c1`` a 1x1 conv (bias) to
    ``channel // reduction`` + ReLU, ``c2`` a 1x1 conv (bias) back to ``channel`` + sigmoid."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.c1 = BasicBlock(channel, channel // reduction, 1, 1, 0)
        self.c2 = BasicBlockSig(channel // reduction, channel, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c2(self.c1(self.avg_pool(x)))


class Block(nn.Module):
    """One EAM (enhancement attention module): ``ca(r3(r2(r1(x))))``."""

    def __init__(self, in_channels: int, out_channels: int, group: int = 1, reduction: int = 16):
        super().__init__()
        self.r1 = Merge_Run_dual(in_channels, out_channels)
        self.r2 = ResidualBlock(in_channels, out_channels)
        self.r3 = EResidualBlock(in_channels, out_channels)
        self.ca = CALayer(in_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.r3(self.r2(self.r1(x))))


class RIDNet(nn.Module):
    """The official RIDNet denoiser (``RIDNET``), with its ``args`` fields as keyword arguments.

    ``RIDNet(n_feats=64, reduction=16, rgb_range=255)``: the defaults of the official
    ``option.py``. The official model reads ``args.n_feats``, ``args.reduction`` and
    ``args.rgb_range`` (``n_colors`` is not read: 3 channels in and out are hard-coded).
    ``reduction``: the official reads it but does not pass it on, so its attention layers always
    use 16; here it sets the attention reduction of every block, and the default 16 builds the
    official model exactly (a checkpoint always has 16, which :func:`infer_ridnet` finds from
    the shapes). ``rgb_range`` only sets the initial mean-shift biases (``-/+ rgb_range *
    RGB_MEAN``); a checkpoint's own values replace them.

    ``forward(x)``: ``x`` (B, 3, H, W) in ``[0, rgb_range]`` (the official input range, kept:
    nothing is rescaled), any H, W (every layer keeps the size); returns the estimate in the
    same range, unclamped. The estimate is ``x + add_mean(tail(...))``: the network predicts
    the clean image minus the noisy one, offset by the mean. :meth:`denoise` is the ``[0, 1]``
    wrapper.

    ``fused`` (keyword-only, default True): the attention layers are
    :class:`fastdenoise.nn.RIDNetCALayer` (pool, excitation and scaling in one op); False builds
    the plain ones. Both have the same parameters and state-dict keys.
    """

    def __init__(self, n_feats: int = 64, reduction: int = 16, rgb_range: float = 255, *, fused: bool = True):
        super().__init__()
        self.fused = bool(fused)
        if n_feats < reduction:
            raise ValueError(f"n_feats: expected at least reduction={reduction} features (the attention "
                             f"keeps n_feats // reduction channels), got {n_feats}")
        self.n_feats, self.reduction, self.rgb_range = n_feats, reduction, rgb_range
        kernel_size = 3
        # Built in the official order: same random initialisation for the same seed, same
        # state-dict key order.
        self.sub_mean = MeanShift(rgb_range, RGB_MEAN, RGB_STD)
        self.add_mean = MeanShift(rgb_range, RGB_MEAN, RGB_STD, 1)
        self.head = BasicBlock(3, n_feats, kernel_size, 1, 1)
        self.b1 = Block(n_feats, n_feats, reduction=reduction)
        self.b2 = Block(n_feats, n_feats, reduction=reduction)
        self.b3 = Block(n_feats, n_feats, reduction=reduction)
        self.b4 = Block(n_feats, n_feats, reduction=reduction)
        self.tail = nn.Conv2d(n_feats, 3, kernel_size, 1, 1, 1)
        if self.fused:      # after building: the same initialisation as the plain model
            swap_children(self, CALayer, fused_blocks.RIDNetCALayer.from_module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x, 3, "RIDNet takes RGB")
        h = self.head(self.sub_mean(x))
        h = self.b4(self.b3(self.b2(self.b1(h))))
        out = self.add_mean(self.tail(h)) + x
        return out.contiguous(memory_format=memory_format_of(x))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` (B, 3, H, W) in ``[0, 1]``: ``clamp(forward(x * rgb_range) / rgb_range, 0, 1)``.

        The official test feeds ``[0, rgb_range]`` images and clamps the output to that range
        (``utility.quantize``, which also rounds to 8-bit levels; no rounding here).
        """
        return (self(x * self.rgb_range) / self.rgb_range).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Hyper-parameters of a checkpoint (used by fastdenoise.models.loading)
# --------------------------------------------------------------------------------------------

def infer_reduction(pairs: Sequence[tuple]) -> int:
    """The reduction ``r`` with ``width // r == reduced`` for every ``(width, reduced)`` pair
    (channel attentions of several widths); the first pair's ``width // reduced`` when it fits
    them all, else the smallest ``r`` that does. Raises CheckpointError when none does."""
    if not pairs:
        raise CheckpointError("checkpoint: no channel-attention layer found to infer the reduction from")
    width, reduced = pairs[0]
    candidates = ([width // reduced] if reduced else []) + list(range(1, max(w for w, _ in pairs) + 2))
    for r in candidates:
        if r >= 1 and all(w // r == m for w, m in pairs):
            return r
    raise CheckpointError(f"checkpoint: no channel-attention reduction fits the (channels, reduced "
                          f"channels) pairs {sorted(set(pairs))}")


def _rgb_range(sub_mean_bias: torch.Tensor) -> float:
    """``rgb_range`` from ``sub_mean.bias = -rgb_range * RGB_MEAN / RGB_STD`` (least squares).

    The mean shifts are trainable in the official code, so a trained checkpoint's bias may have
    drifted a little: within 10 % of 255 or 1 (the usual ``--rgb_range`` values) gives that
    value, otherwise the nearest integer (the official option is one; the value itself when
    below 0.5); 255 (the official default) when the bias says nothing (not positive, not finite).
    """
    b = sub_mean_bias.detach().double().cpu().flatten()
    m = torch.tensor(RGB_MEAN, dtype=torch.float64) / torch.tensor(RGB_STD, dtype=torch.float64)
    if b.numel() != 3:
        return 255
    r = float(-(b @ m) / (m @ m))
    if not (r > 0 and r < float("inf")):
        return 255
    for usual in (255, 1):
        if abs(r / usual - 1) <= 0.1:
            return usual
    return int(round(r)) if r >= 0.5 else r


def infer_ridnet(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``n_feats``, ``reduction`` and ``rgb_range`` of a RIDNet state dict (``head.body.0.weight``:
    (n_feats, 3, 3, 3); ``b<i>.ca.c1.body.0.weight``: (n_feats // reduction, n_feats, 1, 1);
    ``sub_mean.bias``: ``-rgb_range * RGB_MEAN``)."""
    head = sd.get("head.body.0.weight")
    if head is None or "b1.r1.body1.0.weight" not in sd:
        raise CheckpointError("checkpoint: no `head.body.0.weight` / `b1.r1.body1.0.weight` found (RIDNet layout)")
    n_feats = int(head.shape[0])
    pairs = [(int(sd[k].shape[1]), int(sd[k].shape[0])) for k in
             (f"b{i}.ca.c1.body.0.weight" for i in range(1, 5)) if k in sd]
    hp: Dict[str, Any] = {"n_feats": n_feats, "reduction": infer_reduction(pairs)}
    if "sub_mean.bias" in sd:
        hp["rgb_range"] = _rgb_range(sd["sub_mean.bias"])
    return hp
