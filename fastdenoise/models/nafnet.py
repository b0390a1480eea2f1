"""NAFNet and its Baseline (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022), as
megvii-research/NAFNet builds them (``basicsr/models/archs/NAFNet_arch.py``, ``Baseline_arch.py``,
``arch_util.py``, ``local_arch.py``), in plain PyTorch.

Both networks are the same U-Net around different blocks:

* ``intro``: 3x3 conv ``img_channel -> width``; ``ending``: 3x3 conv ``width -> img_channel``;
* per level ``i``: ``encoders[i]`` (``enc_blk_nums[i]`` blocks at ``width * 2**i`` channels)
  then ``downs[i]`` (2x2 conv, stride 2, doubling the channels); ``middle_blks`` at the bottom;
  per level back up ``ups[i]`` (1x1 conv without bias doubling the channels, then
  PixelShuffle(2)), the matching encoder output added, then ``decoders[i]``;
* the input is zero-padded on the bottom / right to a multiple of ``2 ** len(enc_blk_nums)``
  (``check_image_size``), the input is added to the output (global residual) and the result
  cropped back to (H, W).

:class:`NAFBlock`: ``norm1`` (:class:`LayerNorm2d`) -> ``conv1`` (1x1, ``c -> DW_Expand*c``) ->
``conv2`` (3x3 depthwise) -> ``sg`` (:class:`SimpleGate`) -> ``x * sca(x)`` (simplified channel
attention: global average pool, 1x1 conv with bias) -> ``conv3`` (1x1) -> ``dropout1``;
``y = inp + x * beta``; then ``conv4(norm2(y))`` -> ``sg`` -> ``conv5`` -> ``dropout2``;
``out = y + x * gamma``. ``beta`` and ``gamma`` are (1, c, 1, 1) parameters, zero at
initialisation. :class:`BaselineBlock` is the same with GELU in place of the gate (so
``conv3`` / ``conv5`` take the full expanded width) and a squeeze-and-excitation ``se`` (pool,
1x1 conv to half, ReLU, 1x1 conv back, sigmoid) in place of ``sca``.

:class:`NAFNetLocal` / :class:`BaselineLocal` are the "TLC" variants (Chu et al., "Revisiting
Global Statistics Aggregation for Improving Image Restoration") that the GoPro and REDS models are
tested with: every global average pool is replaced by :class:`LocalAvgPool2d`, a mean over a
window the size the global pool covered at training time (see its docstring).

State-dict keys and shapes are the official ones, so the released checkpoints
(``torch.load(f)["params"]``) load with ``strict=True``. Published configurations
(``options/test/*/*.yml``):

======================  ==============  =====  ==============  ======  ============  =========================
checkpoint              type            width  enc_blk_nums    middle  dec_blk_nums  expansions
======================  ==============  =====  ==============  ======  ============  =========================
NAFNet-SIDD-width32     NAFNet          32     [2, 2, 4, 8]    12      [2, 2, 2, 2]  (2, 2) fixed
NAFNet-SIDD-width64     NAFNet          64     [2, 2, 4, 8]    12      [2, 2, 2, 2]  (2, 2) fixed
Baseline-SIDD-width32   Baseline        32     [2, 2, 4, 8]    12      [2, 2, 2, 2]  dw_expand 1, ffn_expand 2
Baseline-SIDD-width64   Baseline        64     [2, 2, 4, 8]    12      [2, 2, 2, 2]  dw_expand 2, ffn_expand 2
NAFNet-GoPro-width32    NAFNetLocal     32     [1, 1, 1, 28]   1       [1, 1, 1, 1]  (2, 2) fixed
NAFNet-GoPro-width64    NAFNetLocal     64     [1, 1, 1, 28]   1       [1, 1, 1, 1]  (2, 2) fixed
NAFNet-REDS-width64     NAFNetLocal     64     [1, 1, 1, 28]   1       [1, 1, 1, 1]  (2, 2) fixed
Baseline-GoPro-width32  BaselineLocal   32     [1, 1, 1, 28]   1       [1, 1, 1, 1]  dw_expand 1, ffn_expand 2
Baseline-GoPro-width64  BaselineLocal   64     [1, 1, 1, 28]   1       [1, 1, 1, 1]  dw_expand 2, ffn_expand 2
======================  ==============  =====  ==============  ======  ============  =========================

All have ``img_channel=3``; the Local ones use the default ``train_size=(1, 3, 256, 256)``
(GoPro is trained on 256x256 crops) and ``fast_imp=False``.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_model_input, memory_format_of
from ..nn import nafnet as fused_blocks
from ..errors import ShapeError

__all__ = ["LayerNorm2d", "SimpleGate", "NAFBlock", "BaselineBlock", "LocalAvgPool2d", "NAFNet",
           "NAFNetLocal", "Baseline", "BaselineLocal"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class LayerNorm2d(nn.Module):
    """Layer norm over the channels of each pixel of a (B, C, H, W) tensor (NAFNet's ``LayerNorm2d``).

    ``y = (x - mean_c x) / sqrt(var_c x + eps) * weight + bias``, with the biased variance and
    ``eps = 1e-6``; ``weight`` (ones) and ``bias`` (zeros) have shape (C,). The official wraps
    this in a custom autograd function whose backward is the analytic gradient; autograd of the
    forward below gives the same. Statistics in float32 (float64 for float64 input); the output
    keeps the input's dtype.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        centred = xf - xf.mean(dim=1, keepdim=True)
        var = centred.square().mean(dim=1, keepdim=True)
        y = centred / torch.sqrt(var + self.eps)
        y = y * self.weight.to(acc).view(1, -1, 1, 1) + self.bias.to(acc).view(1, -1, 1, 1)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class SimpleGate(nn.Module):
    """Splits the channels into two halves and returns their product (``x[:C/2] * x[C/2:]``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """NAFNet's block on ``c`` channels (see the module docstring), official arguments
    ``NAFBlock(c, DW_Expand=2, FFN_Expand=2, drop_out_rate=0.)``. ``c * DW_Expand`` and
    ``c * FFN_Expand`` must be even (the gate halves them)."""

    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        fused_blocks.build_nafblock(self, c, DW_Expand, FFN_Expand, drop_out_rate, LayerNorm2d, SimpleGate)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.dropout1(self.conv3(x * self.sca(x)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.sg(self.conv4(self.norm2(y)))))
        return y + x * self.gamma


class BaselineBlock(nn.Module):
    """The Baseline's block on ``c`` channels (see the module docstring), official arguments
    ``BaselineBlock(c, DW_Expand=1, FFN_Expand=2, drop_out_rate=0.)``."""

    def __init__(self, c: int, DW_Expand: int = 1, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        fused_blocks.build_baselineblock(self, c, DW_Expand, FFN_Expand, drop_out_rate, LayerNorm2d)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.conv2(self.conv1(self.norm1(inp))))
        x = self.dropout1(self.conv3(x * self.se(x)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.gelu(self.conv4(self.norm2(y)))))
        return y + x * self.gamma


# --------------------------------------------------------------------------------------------
# TLC local average pooling
# --------------------------------------------------------------------------------------------

_FAST_RATES = (5, 4, 3, 2, 1)


class LocalAvgPool2d(nn.Module):
    """Test-time local statistics (TLC): the mean over a ``kernel_size`` window around each pixel,
    in place of a global average pool, as the official ``local_arch.AvgPool2d``.

    ``kernel_size = (kh, kw)`` is fixed when the network is converted (the size the global pool
    covered at training time, times 1.5; see :class:`NAFNetLocal`). On an (h, w) input:

    * ``kh >= h`` and ``kw >= w``: the global mean, (B, C, 1, 1), exactly ``adaptive_avg_pool2d(x, 1)``;
    * otherwise (``fast_imp=False``): the mean of every full ``k1 x k2`` window, ``k1 = min(h, kh)``,
      ``k2 = min(w, kw)`` (a stride-1 box filter without padding: ``(h-k1+1) x (w-k2+1)`` values),
      then edge-replicated to (h, w), with ``(h - h') // 2`` rows on top and the rest (one more
      when odd) below, likewise ``(w - w') // 2`` columns on the left and the rest on the right;
    * ``fast_imp=True`` (the official "non-equivalent but faster" path): subsample by ``r1`` rows
      and ``r2`` columns (the first of 5, 4, 3, 2, 1 dividing h, resp. w, capped at ``max_r``),
      take the box sums over windows of ``k1 = min(h'-1, kh // r1)`` by ``k2 = min(w'-1, kw // r2)``
      samples that end at each sample from the second one on (the first row / column only ever
      enters as the reference of a difference), divide by ``k1 * k2``, repeat each value
      ``r1 x r2`` times (nearest upsampling) and edge-replicate to (h, w) as above.

    Box sums come from running sums (cumulative sums, one axis at a time), accumulated in
    float32 (float64 for float64 input); the output has the input's dtype.
    """

    def __init__(self, kernel_size: Tuple[int, int], fast_imp: bool = False,
                 max_r: Tuple[int, int] = (_FAST_RATES[0], _FAST_RATES[0])):
        super().__init__()
        self.kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
        self.fast_imp = bool(fast_imp)
        self.max_r = (int(max_r[0]), int(max_r[1]))

    def extra_repr(self) -> str:
        extra = f", max_r={self.max_r}" if self.fast_imp else ""
        return f"kernel_size={self.kernel_size}, fast_imp={self.fast_imp}{extra}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        kh, kw = self.kernel_size
        if kh >= h and kw >= w:
            return F.adaptive_avg_pool2d(x, 1)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.fast_imp:
            out = self._fast(x, acc, h, w, kh, kw)
        else:
            k1, k2 = min(h, kh), min(w, kw)
            # running sums with a leading zero: a window's sum is the difference of two of them
            s = F.pad(x.to(acc).cumsum(dim=-1), (1, 0))
            s = s[..., k2:] - s[..., :-k2]
            s = F.pad(s.cumsum(dim=-2), (0, 0, 1, 0))
            out = (s[..., k1:, :] - s[..., :-k1, :]) / (k1 * k2)
        out = out.to(x.dtype)
        dh, dw = h - out.shape[-2], w - out.shape[-1]
        return F.pad(out, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")

    def _fast(self, x: torch.Tensor, acc: torch.dtype, h: int, w: int, kh: int, kw: int) -> torch.Tensor:
        r1 = min(self.max_r[0], next(r for r in _FAST_RATES if h % r == 0))
        r2 = min(self.max_r[1], next(r for r in _FAST_RATES if w % r == 0))
        s = x[:, :, ::r1, ::r2].to(acc)
        hs, ws = s.shape[-2], s.shape[-1]
        k1, k2 = min(hs - 1, kh // r1), min(ws - 1, kw // r2)
        if k1 < 1 or k2 < 1:
            raise ShapeError(f"x: the fast local pooling (fast_imp=True) needs a window of at least one "
                             f"sample each way, got {k1} x {k2} for kernel_size {self.kernel_size} on an "
                             f"{h} x {w} input subsampled by {r1} x {r2}: {list(x.shape)}")
        s = s.cumsum(dim=-1)
        s = s[..., k2:] - s[..., :-k2]
        s = s.cumsum(dim=-2)
        out = (s[..., k1:, :] - s[..., :-k1, :]) / (k1 * k2)
        return F.interpolate(out, scale_factor=(r1, r2), mode="nearest")


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------

class _UNet(nn.Module):
    """The U-Net shared by NAFNet and Baseline; ``make_block(chan)`` builds one block."""

    _name = "NAFNet"

    def _build(self, img_channel: int, width: int, middle_blk_num: int, enc_blk_nums: Sequence[int],
               dec_blk_nums: Sequence[int], make_block) -> None:
        enc_blk_nums, dec_blk_nums = [int(n) for n in enc_blk_nums], [int(n) for n in dec_blk_nums]
        if len(dec_blk_nums) < len(enc_blk_nums):
            raise ValueError(f"dec_blk_nums: expected at least len(enc_blk_nums)={len(enc_blk_nums)} levels "
                             f"(one decoder per encoder), got {dec_blk_nums}")
        self.img_channel, self.width = img_channel, width
        self.middle_blk_num, self.enc_blk_nums, self.dec_blk_nums = middle_blk_num, enc_blk_nums, dec_blk_nums
        # registration order as the official, so state_dict() lists the keys in its order
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, groups=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, groups=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.Sequential()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()

        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[make_block(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[make_block(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[make_block(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded on the bottom and the right to multiples of ``padder_size``."""
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
        pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, img_channel, H, W), any H and W -> the restored (B, img_channel, H, W)."""
        check_model_input(self, inp, self.img_channel, f"{self._name} img_channel")
        fmt = memory_format_of(inp)
        h, w = inp.shape[-2], inp.shape[-1]
        inp = self.check_image_size(inp)
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        # as the official zip: decoders beyond the number of encoders are never run
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w].contiguous(memory_format=fmt)

    def _blocks_by_level(self) -> Iterator[Tuple[int, nn.Module]]:
        """(level, block) for every block the forward runs; level l works at 1 / 2**l the size."""
        n = len(self.encoders)
        for level, encoder in enumerate(self.encoders):
            for block in encoder:
                yield level, block
        for block in self.middle_blks:
            yield n, block
        for i, decoder in enumerate(list(self.decoders)[:n]):
            for block in decoder:
                yield n - 1 - i, block


class NAFNet(_UNet):
    """NAFNet. Arguments as the official ``NAFNet(img_channel=3, width=16, middle_blk_num=1,
    enc_blk_nums=[], dec_blk_nums=[])`` (see the module docstring for the released
    configurations); ``dec_blk_nums`` needs at least as many levels as ``enc_blk_nums``.

    ``dw_expand`` and ``ffn_expand`` (keyword-only, not in the official constructor, which
    always builds ``NAFBlock(chan)``) are passed to every :class:`NAFBlock` as ``DW_Expand`` and
    ``FFN_Expand``; the defaults give the official network. ``fused`` (keyword-only, default
    True) builds the blocks as :class:`fastdenoise.nn.NAFBlock` (the same parameters and keys,
    computed with the fused ops: Triton on CUDA, the plain references on the CPU); False builds
    this module's plain :class:`NAFBlock`.

    ``forward(inp)``: (B, img_channel, H, W), any H and W (padded to a multiple of
    ``2 ** len(enc_blk_nums)`` inside, cropped back), on the model's device and dtype; returns
    the restored image, of the input's shape and memory format.
    """

    _name = "NAFNet"

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (), *,
                 dw_expand: int = 2, ffn_expand: int = 2, fused: bool = True):
        super().__init__()
        self.dw_expand, self.ffn_expand, self.fused = dw_expand, ffn_expand, bool(fused)
        block = fused_blocks.NAFBlock if fused else NAFBlock
        self._build(img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
                    lambda chan: block(chan, dw_expand, ffn_expand))


class Baseline(_UNet):
    """NAFNet's Baseline. Arguments as the official ``Baseline(img_channel=3, width=16,
    middle_blk_num=1, enc_blk_nums=[], dec_blk_nums=[], dw_expand=1, ffn_expand=2)``; every
    block is ``BaselineBlock(chan, dw_expand, ffn_expand)``; ``fused`` (keyword-only, default
    True) makes them :class:`fastdenoise.nn.BaselineBlock`. Forward as :class:`NAFNet`."""

    _name = "Baseline"

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (),
                 dw_expand: int = 1, ffn_expand: int = 2, *, fused: bool = True):
        super().__init__()
        self.dw_expand, self.ffn_expand, self.fused = dw_expand, ffn_expand, bool(fused)
        block = fused_blocks.BaselineBlock if fused else BaselineBlock
        self._build(img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums,
                    lambda chan: block(chan, dw_expand, ffn_expand))


def _localize(net: _UNet, train_size: Sequence[int], fast_imp: bool) -> None:
    """Replace the global pool of every block that runs by its :class:`LocalAvgPool2d`.

    The official converts by running the network once on a random ``train_size`` input, each
    pool fixing its window on that first call from the size ``(h, w)`` it sees there:
    ``kernel = (h * base_h // train_h, w * base_w // train_w)`` with ``base = (int(1.5 *
    train_h), int(1.5 * train_w))``, and ``max_r = (max(1, 5 * h // train_h), max(1, 5 * w //
    train_w))``. A block at level l sees the padded training size divided by ``2 ** l``, so
    the same numbers are computed here without running anything.
    """
    train_size = tuple(int(s) for s in train_size)
    if len(train_size) != 4 or min(train_size[-2:]) < 1:
        raise ValueError(f"train_size: expected (N, C, H, W) with H, W >= 1, got {train_size}")
    th, tw = train_size[-2:]
    base_h, base_w = int(th * 1.5), int(tw * 1.5)
    p = net.padder_size
    ph, pw = -(-th // p) * p, -(-tw // p) * p          # the training size after check_image_size
    for level, block in net._blocks_by_level():
        h, w = ph // 2 ** level, pw // 2 ** level
        pool = LocalAvgPool2d((h * base_h // th, w * base_w // tw), fast_imp=fast_imp,
                              max_r=(max(1, _FAST_RATES[0] * h // th), max(1, _FAST_RATES[0] * w // tw)))
        attention = block.sca if hasattr(block, "sca") else block.se
        attention[0] = pool
    net.train_size, net.fast_imp = train_size, bool(fast_imp)


class NAFNetLocal(NAFNet):
    """NAFNet with test-time local statistics (TLC), as the official ``NAFNetLocal(*args,
    train_size=(1, 3, 256, 256), fast_imp=False, **kwargs)`` used for the GoPro and REDS models.

    Same parameters as :class:`NAFNet` (``args`` / ``kwargs`` go to it, so the checkpoints are
    the same); every block's global pool (``sca[0]``) becomes a :class:`LocalAvgPool2d` whose
    window is 1.5x the area that pool covered on a ``train_size`` input, at its level (see
    :func:`_localize`). When the padded input is no larger than the base size ``(int(1.5 *
    train_h), int(1.5 * train_w))``, every window covers its whole feature map and the output is
    exactly NAFNet's. Only H and W of
    ``train_size`` matter. Like the official, the model is left in eval mode.
    """

    def __init__(self, *args, train_size: Sequence[int] = (1, 3, 256, 256), fast_imp: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        _localize(self, train_size, fast_imp)
        self.eval()


class BaselineLocal(Baseline):
    """Baseline with test-time local statistics, as the official ``BaselineLocal(*args,
    train_size=(1, 3, 256, 256), fast_imp=False, **kwargs)`` (the GoPro Baseline models); the
    pool replaced is ``se[0]``. See :class:`NAFNetLocal`."""

    def __init__(self, *args, train_size: Sequence[int] = (1, 3, 256, 256), fast_imp: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        _localize(self, train_size, fast_imp)
        self.eval()
