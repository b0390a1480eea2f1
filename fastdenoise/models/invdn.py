"""InvDN (Liu et al., CVPR 2021), as Yang-Liu1082/InvDN builds it.

``InvNet`` (``codes/models/modules/Inv_arch.py``) is a list ``operations`` of, per level, one
:class:`fastdenoise.nn.HaarDownsampling` followed by ``block_num[level]`` :class:`InvBlockExp`
affine coupling blocks. Subnets (``codes/models/modules/Subnet_constructor.py``): ``'Resnet'``
(:class:`ResBlock`, PyTorch's default initialisation) and ``'DBNet'`` (:class:`DenseBlock`,
xavier-normal x 0.1 for conv1..conv4 and zero conv5 with the default ``init='xavier'``,
kaiming-normal x 0.1 otherwise). State-dict keys are the official ones
(``operations.<i>.haar_weights``, ``operations.<i>.{F,G,H}.conv<k>.{weight,bias}``).

:meth:`InvNet.denoise` is the official test procedure (``InvDN_Model.test`` and
``forward_x8`` in ``codes/models/InvDN_model.py``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .._checks import check_hw_multiple, memory_format_of
from ..nn.haar import HaarDownsampling
from .._checks import check_model_input

__all__ = ["InvNet", "InvBlockExp", "ResBlock", "DenseBlock", "subnet", "SUBNETS"]


# --------------------------------------------------------------------------------------------
# Subnets
# --------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """InvDN's 'Resnet' subnet: conv(in->64)+lrelu, conv(64->64)+lrelu, conv(concat(x, .)->out)."""

    def __init__(self, channel_in: int, channel_out: int):
        super().__init__()
        feature = 64
        self.conv1 = nn.Conv2d(channel_in, feature, kernel_size=3, padding=1)
        self.relu1 = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.conv2 = nn.Conv2d(feature, feature, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(feature + channel_in, channel_out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu1(self.conv1(x))       # in place on a fresh conv output, never on x
        r = self.relu1(self.conv2(r))
        return self.conv3(torch.cat((x, r), dim=1))


def _init_convs(convs, scale: float, xavier: bool) -> None:
    for conv in convs:
        if xavier:
            nn.init.xavier_normal_(conv.weight)
        else:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        with torch.no_grad():
            conv.weight.mul_(scale)
            if conv.bias is not None:
                conv.bias.zero_()


class DenseBlock(nn.Module):
    """InvDN's 'DBNet' subnet: five densely connected 3x3 convolutions (growth ``gc`` = 32)."""

    def __init__(self, channel_in: int, channel_out: int, init: str = "xavier", gc: int = 32, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channel_in, gc, 3, 1, 1, bias=bias)
        self.conv2 = nn.Conv2d(channel_in + gc, gc, 3, 1, 1, bias=bias)
        self.conv3 = nn.Conv2d(channel_in + 2 * gc, gc, 3, 1, 1, bias=bias)
        self.conv4 = nn.Conv2d(channel_in + 3 * gc, gc, 3, 1, 1, bias=bias)
        self.conv5 = nn.Conv2d(channel_in + 4 * gc, channel_out, 3, 1, 1, bias=bias)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        _init_convs([self.conv1, self.conv2, self.conv3, self.conv4], 0.1, xavier=(init == "xavier"))
        _init_convs([self.conv5], 0.0, xavier=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1))


SUBNETS = ("Resnet", "DBNet")


def subnet(net_structure: str, init: str = "xavier") -> Callable[[int, int], nn.Module]:
    """A ``constructor(channel_in, channel_out)`` as the official ``subnet(net_structure, init)``.

    ``net_structure``: ``'Resnet'`` or ``'DBNet'`` (the official returns None for anything
    else, which fails later; this raises ValueError now). ``init`` only affects 'DBNet'.
    """
    if net_structure not in SUBNETS:
        raise ValueError(f"net_structure: expected one of {SUBNETS}, got {net_structure!r}")

    def constructor(channel_in: int, channel_out: int) -> nn.Module:
        if net_structure == "DBNet":
            return DenseBlock(channel_in, channel_out, init)
        return ResBlock(channel_in, channel_out)

    constructor.net_structure = net_structure
    return constructor


# --------------------------------------------------------------------------------------------
# Coupling block and network
# --------------------------------------------------------------------------------------------

class InvBlockExp(nn.Module):
    """Affine coupling on a channel split (x1: first ``channel_split_num``, x2: the rest).

    forward: ``y1 = x1 + F(x2)``, ``s = clamp * (2 sigmoid(H(y1)) - 1)``, ``y2 = x2 * exp(s) + G(y1)``;
    reverse solves it back. ``s`` of the last call is kept for :meth:`jacobian`.
    """

    def __init__(self, subnet_constructor, channel_num: int, channel_split_num: int, clamp: float = 1.0):
        super().__init__()
        self.split_len1 = channel_split_num
        self.split_len2 = channel_num - channel_split_num
        self.clamp = clamp
        self.F = subnet_constructor(self.split_len2, self.split_len1)
        self.G = subnet_constructor(self.split_len1, self.split_len2)
        self.H = subnet_constructor(self.split_len1, self.split_len2)

    def _scale(self, y1: torch.Tensor) -> torch.Tensor:
        return self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        x1 = x.narrow(1, 0, self.split_len1)
        x2 = x.narrow(1, self.split_len1, self.split_len2)
        if not rev:
            y1 = x1 + self.F(x2)
            self.s = self._scale(y1)
            y2 = x2 * torch.exp(self.s) + self.G(y1)
        else:
            self.s = self._scale(x1)
            y2 = (x2 - self.G(x1)) / torch.exp(self.s)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), 1)

    def jacobian(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        """log|det J| of the last call, per sample (sum of ``s`` over the batch / B)."""
        jac = torch.sum(self.s)
        return (jac if not rev else -jac) / x.shape[0]


def _subnet_constructor(spec) -> Callable[[int, int], nn.Module]:
    if spec is None:
        return subnet("Resnet", "xavier")
    if isinstance(spec, str):
        return subnet(spec, "xavier")
    if callable(spec):
        return spec
    raise TypeError(f"subnet_constructor: expected None, 'Resnet', 'DBNet' or a callable "
                    f"(channel_in, channel_out) -> nn.Module, got {type(spec).__name__}")


class InvNet(nn.Module):
    """InvDN's invertible network.

    Arguments as the official ``InvNet(channel_in=3, channel_out=3, subnet_constructor=None,
    block_num=[], down_num=2)``, with two decisions where the official defaults cannot build a
    network:

    * ``subnet_constructor=None`` means the official ``'Resnet'`` subnet (the released
      denoising model's ``subnet_type``, with ``init: xavier``, which 'Resnet' does not read);
      the strings ``'Resnet'`` / ``'DBNet'`` pick the official subnets with xavier init; a
      callable ``(channel_in, channel_out) -> nn.Module`` is used as is, like the official
      ``subnet(...)`` result (see :func:`subnet` for another ``init``).
    * ``block_num=None`` means 8 coupling blocks per level, i.e. the released configuration
      ``[8, 8]`` for ``down_num=2`` (``codes/options/test/test_InvDN.yml``). Otherwise a
      sequence with at least ``down_num`` entries (extra entries are ignored, as the official).

    ``forward(x, rev=False, cal_jacobian=False)``: forward maps (B, channel_in, H, W), H and W
    multiples of ``2 ** down_num``, to (B, channel_in * 4 ** down_num, H / 2**down_num, ...),
    whose first ``channel_out`` channels are the clean low-resolution image; ``rev=True``
    inverts it. With ``cal_jacobian`` returns ``(out, log_det)`` summed as the official does.
    """

    def __init__(self, channel_in: int = 3, channel_out: int = 3, subnet_constructor=None,
                 block_num: Optional[Sequence[int]] = None, down_num: int = 2):
        super().__init__()
        if block_num is None:
            block_num = [8] * down_num
        block_num = list(block_num)
        if len(block_num) < down_num:
            raise ValueError(f"block_num: expected at least down_num={down_num} entries (blocks per "
                             f"level), got {block_num}")
        constructor = _subnet_constructor(subnet_constructor)
        self.channel_in, self.channel_out, self.down_num = channel_in, channel_out, down_num
        self.block_num = block_num[:down_num]
        operations = []
        current_channel = channel_in
        for level in range(down_num):
            operations.append(HaarDownsampling(current_channel))
            current_channel *= 4
            if block_num[level] and not 0 < channel_out < current_channel:
                raise ValueError(f"channel_out: expected 0 < channel_out < {current_channel} (the channels "
                                 f"at level {level}), got {channel_out}")
            for _ in range(block_num[level]):
                operations.append(InvBlockExp(constructor, current_channel, channel_out))
        self.operations = nn.ModuleList(operations)

    @property
    def scale(self) -> int:
        """The downsampling factor ``2 ** down_num`` (H and W must be its multiples)."""
        return 2 ** self.down_num

    def _check_input(self, x, rev: bool) -> None:
        if not rev:
            check_model_input(self, x, self.channel_in, "InvNet channel_in")
            check_hw_multiple("x", x, self.scale, f"2 ** down_num, down_num={self.down_num}")
        else:
            check_model_input(self, x, self.channel_in * 4 ** self.down_num,
                              "channel_in * 4 ** down_num, rev=True")

    def forward(self, x: torch.Tensor, rev: bool = False, cal_jacobian: bool = False):
        self._check_input(x, rev)
        out = x
        jacobian = 0
        ops = self.operations if not rev else reversed(self.operations)
        for op in ops:
            out = op(out, rev)
            if cal_jacobian:
                jacobian += op.jacobian(out, rev)
        return (out, jacobian) if cal_jacobian else out

    # ----------------------------------------------------------------------------------------
    # The official test procedure
    # ----------------------------------------------------------------------------------------

    def _resample_high(self, out: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Keep the first ``channel_out`` (low-pass) channels of a forward output, replace the
        rest by standard Gaussian samples."""
        k = self.channel_out
        noise = torch.randn(out[:, k:].shape, generator=generator, dtype=out.dtype, device=out.device)
        return torch.cat((out[:, :k], noise), dim=1)

    def _denoise_once(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return self(self._resample_high(self(x), generator), rev=True)[:, :self.channel_out]

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                self_ensemble: bool = False) -> torch.Tensor:
        """Denoise ``x`` (B, channel_in, H, W) as the official ``InvDN_Model.test`` does.

        Forward pass; keep the first ``channel_out`` (low-pass) channels; replace the others by
        standard Gaussian samples (``torch.randn(..., generator=generator)`` drawn on the
        output's device in its dtype; a ``generator`` must live on that device); reverse pass;
        return the first ``channel_out`` channels at full resolution (the official slices
        ``[:, :3]``, i.e. the default ``channel_out``). Runs under ``torch.no_grad()`` like the
        official test. H and W must be multiples of ``2 ** down_num`` (ShapeError otherwise;
        the official test does not pad either).

        ``self_ensemble=True`` is the official ``forward_x8``: the 8 copies
        ``[x, v, h, hv, t, tv, th, thv]`` (v: flip W, h: flip H, t: swap H and W, applied to
        the copies made so far in that order); all 8 forward passes, then fresh noise for each
        copy in that order, the 8 reverse passes, each undone (transpose, then flip H, then
        flip W), and the mean of the 8. The official averages over ``cat(dim=0)``, which for
        its batch of one is this mean; for B > 1 this keeps the images apart. (The official
        ensemble returns all ``channel_in`` reverse-pass channels; this returns the first
        ``channel_out``, the same thing for the released 3-in / 3-out model.)
        """
        self._check_input(x, rev=False)
        if not self_ensemble:
            return self._denoise_once(x, generator)

        copies = [x]
        for op in ("v", "h", "t"):
            copies.extend(_transform(c, op) for c in list(copies))
        lows = [self(c) for c in copies]
        ys = [self._resample_high(o, generator) for o in lows]   # noise drawn per copy, in order
        outs = [self(y, rev=True)[:, :self.channel_out] for y in ys]
        for i in range(len(outs)):
            if i > 3:
                outs[i] = _transform(outs[i], "t")
            if i % 4 > 1:
                outs[i] = _transform(outs[i], "h")
            if (i % 4) % 2 == 1:
                outs[i] = _transform(outs[i], "v")
        return torch.stack(outs, dim=0).mean(dim=0).contiguous(memory_format=memory_format_of(x))


def _transform(v: torch.Tensor, op: str) -> torch.Tensor:
    if op == "v":
        return v.flip(3)
    if op == "h":
        return v.flip(2)
    return v.transpose(2, 3).contiguous(memory_format=memory_format_of(v))
