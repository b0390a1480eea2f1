"""Restormer (Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image
Restoration", CVPR 2022), as swz30/Restormer builds it (``basicsr/models/archs/restormer_arch.py``),
in plain PyTorch.

A four-level U-Net of transformer blocks, with ``dim`` channels at full resolution:

* ``patch_embed`` (:class:`OverlapPatchEmbed`): 3x3 conv ``inp_channels -> dim``, never a bias;
* encoder: ``encoder_level1`` (``num_blocks[0]`` blocks at ``dim``), ``down1_2``,
  ``encoder_level2`` (``num_blocks[1]`` at ``2 dim``), ``down2_3``, ``encoder_level3``
  (``num_blocks[2]`` at ``4 dim``), ``down3_4``, ``latent`` (``num_blocks[3]`` at ``8 dim``);
  level ``i`` uses ``heads[i]`` attention heads. :class:`Downsample` is a 3x3 conv halving the
  channels then PixelUnshuffle(2) (so the channels double and the size halves);
* decoder: ``up4_3`` (:class:`Upsample`: 3x3 conv doubling the channels, then PixelShuffle(2)),
  concatenation with the level-3 encoder output, ``reduce_chan_level3`` (1x1 conv ``8 dim ->
  4 dim``), ``decoder_level3``; the same at level 2 (``up3_2``, ``reduce_chan_level2``,
  ``decoder_level2``); at level 1 ``up2_1`` and the concatenation with the level-1 encoder output
  are kept at ``2 dim`` channels (no reduction): ``decoder_level1`` and ``refinement``
  (``num_refinement_blocks``) run at ``2 dim`` with ``heads[0]`` heads;
* ``output``: 3x3 conv ``2 dim -> out_channels``, plus the input image. With
  ``dual_pixel_task`` (the dual-pixel defocus deblurring model, ``inp_channels=6``), a 1x1
  ``skip_conv`` of the patch embedding is added before ``output`` instead, and the input is not.

:class:`TransformerBlock`: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``, with

* :class:`LayerNorm` over the channels of each pixel, ``WithBias`` (centred, weight and bias)
  or ``BiasFree`` (not centred, weight only; the variance is still about the mean), eps 1e-5;
* :class:`Attention` (MDTA, transposed attention across channels): ``qkv`` (1x1 conv to
  ``3 dim``), ``qkv_dwconv`` (3x3 depthwise), split into q, k, v, each cut into ``num_heads``
  groups of channels flattened over the pixels; q and k L2-normalised along the pixels; per head
  the (c x c) matrix ``softmax(q k^T * temperature)`` applied to v; ``project_out`` (1x1);
* :class:`FeedForward` (GDFN): ``hidden = int(dim * ffn_expansion_factor)``; ``project_in``
  (1x1 to ``2 hidden``), ``dwconv`` (3x3 depthwise), halves ``x1, x2``, ``gelu(x1) * x2``
  (exact erf GELU), ``project_out`` (1x1 back to ``dim``).

Every 1x1 / depthwise / block convolution has a bias only when ``bias``; the resampling
convolutions never have one, ``output`` and ``reduce_chan_*`` follow ``bias``.

State-dict keys and shapes are the official ones, so the released checkpoints
(``torch.load(f)["params"]``) load with ``strict=True``. Published configurations (all
``dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
ffn_expansion_factor=2.66, bias=False``):

=======================================================  =========  ===============  ===========
task (``Options/*.yml``)                                 channels   LayerNorm_type   dual_pixel
=======================================================  =========  ===============  ===========
Gaussian colour denoising (blind, sigma 15 / 25 / 50)    3 -> 3     BiasFree         False
Gaussian grey denoising (blind, sigma 15 / 25 / 50)      1 -> 1     BiasFree         False
real denoising (SIDD)                                    3 -> 3     BiasFree         False
deraining, motion deblurring, single-image defocus       3 -> 3     WithBias         False
dual-pixel defocus deblurring                            6 -> 3     WithBias         True
=======================================================  =========  ===============  ===========

The official denoising test scripts feed images in ``[0, 1]``, reflect-pad them at the bottom /
right to multiples of 8, crop the output back and clamp it to ``[0, 1]``; :class:`Restormer`
pads and crops itself, :meth:`Restormer.denoise` also clamps.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_model_input, memory_format_of
from ..errors import CheckpointError
from ..nn import restormer as fused_blocks
from ..ops.norm import RESTORMER_EPS, layer_norm2d
from ._fuse import swap_children

__all__ = ["Restormer", "LayerNorm", "BiasFree_LayerNorm", "WithBias_LayerNorm", "Attention", "FeedForward",
           "TransformerBlock", "OverlapPatchEmbed", "Downsample", "Upsample", "infer_restormer",
           "LAYER_NORM_TYPES"]

#: the two LayerNorm_type values (any other string builds WithBias, as the official).
LAYER_NORM_TYPES = ("WithBias", "BiasFree")

#: the size the padded input must be a multiple of (three halvings).
PAD_MULTIPLE = 8


# --------------------------------------------------------------------------------------------
# Layer norm over channels
# --------------------------------------------------------------------------------------------

class _ChannelNorm(nn.Module):
    """Shared part of the two official norm bodies: a ``(C,)`` weight; ``forward`` normalises
    the last dimension of its input (the official bodies see (B, H*W, C) tensors)."""

    eps = RESTORMER_EPS

    def __init__(self, normalized_shape):
        super().__init__()
        shape = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"normalized_shape: expected one size (the channels), got {shape}")
        self.normalized_shape = torch.Size(shape)
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"


class BiasFree_LayerNorm(_ChannelNorm):
    """Restormer's bias-free norm of the last dimension: ``x / sqrt(var + 1e-5) * weight``, the
    variance biased and taken about the mean, ``x`` itself not centred."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + self.eps) * self.weight


class WithBias_LayerNorm(_ChannelNorm):
    """Restormer's usual norm of the last dimension: ``(x - mean) / sqrt(var + 1e-5) * weight +
    bias`` (biased variance); ``bias`` of shape (C,), zeros at first."""

    def __init__(self, normalized_shape):
        super().__init__(normalized_shape)
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Layer norm over the channels of each pixel of a (B, C, H, W) tensor, Restormer's
    ``LayerNorm(dim, LayerNorm_type)``: ``body`` is :class:`BiasFree_LayerNorm` for
    ``'BiasFree'``, :class:`WithBias_LayerNorm` for anything else (as the official).

    ``fused`` (keyword-only, default True): compute with :func:`fastdenoise.ops.layer_norm2d`
    (Triton on CUDA, its reference elsewhere; statistics in float32) straight on the 4-D
    tensor. False: as the official, flatten to (B, H*W, C), normalise the last dimension with
    ``body`` in the input's dtype, and fold back (a channels-last view of the result).
    """

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias", *, fused: bool = True):
        super().__init__()
        self.bias_free = LayerNorm_type == "BiasFree"
        self.body = BiasFree_LayerNorm(dim) if self.bias_free else WithBias_LayerNorm(dim)
        self.fused = bool(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return layer_norm2d(x, self.body.weight, None if self.bias_free else self.body.bias,
                                self.body.eps, bias_free=self.bias_free)
        b, c, h, w = x.shape
        y = self.body(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        return y.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"


# --------------------------------------------------------------------------------------------
# Attention and feed-forward
# --------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """MDTA, the official ``Attention(dim, num_heads, bias)`` (see the module docstring):
    ``temperature`` (num_heads, 1, 1), ones at first; ``qkv``, ``qkv_dwconv``, ``project_out``.
    ``dim`` must be a multiple of ``num_heads``."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3,
                                    bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        # (B, 3C, H, W) -> three (B, heads, C / heads, H * W)
        q, k, v = (t.reshape(b, heads, c // heads, h * w)
                   for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature      # (B, heads, C/heads, C/heads)
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class FeedForward(nn.Module):
    """GDFN, the official ``FeedForward(dim, ffn_expansion_factor, bias)`` (see the module
    docstring): ``project_in``, ``dwconv``, ``project_out``, hidden width
    ``int(dim * ffn_expansion_factor)``."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2,
                                bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """Restormer's block, the official ``TransformerBlock(dim, num_heads, ffn_expansion_factor,
    bias, LayerNorm_type)``: ``norm1``, ``attn``, ``norm2``, ``ffn`` (in that order, as the
    official registers them). ``fused`` (keyword-only) goes to both norms."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 LayerNorm_type: str, *, fused: bool = True):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type, fused=fused)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type, fused=fused)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


# --------------------------------------------------------------------------------------------
# Embedding and resampling
# --------------------------------------------------------------------------------------------

class OverlapPatchEmbed(nn.Module):
    """``proj``: 3x3 conv ``in_c -> embed_dim``, stride 1, padding 1 (official defaults ``in_c=3,
    embed_dim=48, bias=False``; Restormer never passes ``bias``)."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """``body``: 3x3 conv ``n_feat -> n_feat // 2`` (no bias), PixelUnshuffle(2): half the
    size, ``2 * n_feat`` channels for an even ``n_feat``."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, stride=1, padding=1, bias=False),
                                  nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """``body``: 3x3 conv ``n_feat -> 2 * n_feat`` (no bias), PixelShuffle(2): twice the size,
    ``n_feat // 2`` channels."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, stride=1, padding=1, bias=False),
                                  nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

class Restormer(nn.Module):
    """Restormer, the official constructor and defaults: ``Restormer(inp_channels=3,
    out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
    ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias', dual_pixel_task=False)``
    (the denoising checkpoints need ``LayerNorm_type='BiasFree'``; see the module docstring).

    ``num_blocks`` and ``heads`` have four entries (one per level); at every level with blocks
    the width (``dim * 2**i``, and ``2 * dim`` for ``decoder_level1`` / ``refinement``) must be
    a multiple of its heads, and ``dim`` must be even (PixelUnshuffle after halving it); a
    ValueError says otherwise (the official fails in the forward). ``fused`` (keyword-only,
    default True): every block is :class:`fastdenoise.nn.TransformerBlock` (LayerNorm, MDTA and
    GDFN on the fused ops, the same parameters and keys); False: in plain PyTorch exactly as
    the official. ``fuse_input`` (keyword-only, default False, needs ``fused``): the blocks'
    1x1 + depthwise 3x3 input stages run as one :func:`fastdenoise.ops.pointwise_dwconv`
    (:func:`fastdenoise.nn.set_fuse_input`).

    ``forward(x)``: ``x`` (B, inp_channels, H, W) in ``[0, 1]``, any H and W, on the model's
    device and dtype. Sizes that are not multiples of 8 are padded at the bottom / right by
    reflection, as the official test scripts do (by replication when a side is too short to
    reflect: H or W below 8 with more padding than pixels, where the scripts fail), and the
    output is cropped back; multiples of 8 run as they come, so the result is the official one.
    Returns (B, out_channels, H, W) in the input's memory format, unclamped: ``output(...) + x``,
    or with ``dual_pixel_task`` ``output(... + skip_conv(patch_embed(x)))``.
    :meth:`denoise` is the test scripts' use of it (clamped to ``[0, 1]``).
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias", dual_pixel_task: bool = False, *, fused: bool = True,
                 fuse_input: bool = False):
        super().__init__()
        if fuse_input and not fused:
            raise ValueError("fuse_input: True needs fused=True (the plain blocks have no fused input stage)")
        num_blocks, heads = [int(n) for n in num_blocks], [int(h) for h in heads]
        _check_config(dim, num_blocks, num_refinement_blocks, heads)
        self.inp_channels, self.out_channels, self.dim = inp_channels, out_channels, dim
        self.num_blocks, self.num_refinement_blocks, self.heads = num_blocks, num_refinement_blocks, heads
        self.ffn_expansion_factor, self.bias, self.LayerNorm_type = ffn_expansion_factor, bias, LayerNorm_type
        self.fused = bool(fused)

        def stage(width: int, n_heads: int, count: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(width, n_heads, ffn_expansion_factor, bias, LayerNorm_type,
                                                    fused=fused) for _ in range(count)])

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        # Built and registered in the official order: same state-dict key order, same random
        # initialisation for the same seed.
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(d1, heads[0], num_blocks[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = stage(d2, heads[1], num_blocks[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = stage(d3, heads[2], num_blocks[2])
        self.down3_4 = Downsample(d3)
        self.latent = stage(d4, heads[3], num_blocks[3])

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(d3, heads[2], num_blocks[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(d2, heads[1], num_blocks[1])
        self.up2_1 = Upsample(d2)                       # to d1 channels; the skip makes it d2 again
        self.decoder_level1 = stage(d2, heads[0], num_blocks[0])
        self.refinement = stage(d2, heads[0], num_refinement_blocks)

        self.dual_pixel_task = bool(dual_pixel_task)
        if self.dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)
        if self.fused:      # after building: the same initialisation as the plain model
            swap_children(self, TransformerBlock, fused_blocks.TransformerBlock.from_module)
            fused_blocks.set_fuse_input(self, bool(fuse_input))

    def _run(self, img: torch.Tensor) -> torch.Tensor:
        """The official forward, on H and W multiples of 8."""
        emb = self.patch_embed(img)
        enc1 = self.encoder_level1(emb)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        x = self.latent(self.down3_4(enc3))
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), enc3], 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1)))
        x = self.decoder_level1(torch.cat([self.up2_1(x), enc1], 1))
        x = self.refinement(x)
        if self.dual_pixel_task:
            return self.output(x + self.skip_conv(emb))
        return self.output(x) + img

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x, self.inp_channels, "Restormer inp_channels")
        fmt = memory_format_of(x)
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            out = self._run(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :h, :w]
        else:
            out = self._run(x)
        return out.contiguous(memory_format=fmt)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The official test scripts' use of the model: ``clamp(forward(x), 0, 1)``, ``x`` in ``[0, 1]``."""
        return self(x).clamp(0, 1)


def _check_config(dim: int, num_blocks: List[int], num_refinement_blocks: int, heads: List[int]) -> None:
    if len(num_blocks) != 4 or min(num_blocks) < 0:
        raise ValueError(f"num_blocks: expected four block counts >= 0 (one per level), got {num_blocks}")
    if len(heads) != 4 or min(heads) < 1:
        raise ValueError(f"heads: expected four head counts >= 1 (one per level), got {heads}")
    if num_refinement_blocks < 0:
        raise ValueError(f"num_refinement_blocks: expected a count >= 0, got {num_refinement_blocks}")
    if dim < 2 or dim % 2:
        raise ValueError(f"dim: expected an even width >= 2 (each Downsample halves it before "
                         f"PixelUnshuffle), got {dim}")
    levels = [(f"encoder_level{i + 1}", dim * 2 ** i, i, num_blocks[i]) for i in range(3)]
    levels += [("latent", dim * 8, 3, num_blocks[3]),
               ("decoder_level1 / refinement", dim * 2, 0, num_blocks[0] + num_refinement_blocks)]
    for where, width, i, count in levels:
        if count and width % heads[i]:
            raise ValueError(f"heads: expected heads[{i}] to divide the width {width} of {where} (the "
                             f"attention splits the channels into heads), got heads={heads}")


# --------------------------------------------------------------------------------------------
# Hyper-parameters of a checkpoint (used by fastdenoise.models.loading)
# --------------------------------------------------------------------------------------------

_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
_DEFAULT_HEADS = (1, 2, 4, 8)
_DEFAULT_FFN = 2.66


def _count_blocks(sd: Mapping[str, torch.Tensor], stage: str) -> int:
    prefix = stage + "."
    found = {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return len(found)


def infer_ffn_expansion_factor(pairs: Sequence[Tuple[int, int]]) -> float:
    """A factor ``f`` with ``int(width * f) == hidden`` for every ``(width, hidden)`` pair (the
    GDFN widths of a checkpoint, one pair per level).

    Each pair allows ``hidden / width <= f < (hidden + 1) / width``; of the values every pair
    allows, the official 2.66 when it is one, else the one with the fewest decimals (the
    smallest such at that precision), each candidate checked with the same ``int(width * f)``
    the model computes. 2.66 when there are no pairs (no blocks). Raises CheckpointError when
    no factor fits them all.
    """
    pairs = sorted(set((int(wd), int(hd)) for wd, hd in pairs))

    def fits(f: float) -> bool:
        return all(int(wd * f) == hd for wd, hd in pairs)

    if not pairs or fits(_DEFAULT_FFN):
        return _DEFAULT_FFN
    lo = max(hd / wd for wd, hd in pairs)
    hi = min((hd + 1) / wd for wd, hd in pairs)
    for digits in range(0, 13):
        scale = 10 ** digits
        n = math.ceil(lo * scale - 1e-9)
        for cand in (n, n + 1):
            f = cand / scale
            if f < hi and fits(f):
                return f
    raise CheckpointError(f"checkpoint: no ffn_expansion_factor f gives int(width * f) == hidden for "
                          f"every (width, hidden) pair of the feed-forward layers {pairs}")


def infer_restormer(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """All of Restormer's arguments from a state dict's keys and shapes.

    ``patch_embed.proj.weight``: (dim, inp_channels, 3, 3); ``output.weight``: (out_channels,
    2 dim, 3, 3), with ``output.bias`` when ``bias``; ``num_blocks``: the blocks of
    ``encoder_level1..3`` and ``latent``; ``num_refinement_blocks``: those of ``refinement``;
    ``heads[i]``: the length of ``<block>.attn.temperature`` at level ``i`` (level 1 also from
    ``refinement``; the official default for a level without blocks); ``ffn_expansion_factor``:
    from the hidden widths of every ``<block>.ffn.project_in.weight`` (``2 hidden`` x width; see
    :func:`infer_ffn_expansion_factor`); ``LayerNorm_type``: ``'WithBias'`` when some
    ``norm1.body.bias`` is there, ``'BiasFree'`` when blocks have none (``'WithBias'``, the
    official default, without blocks); ``dual_pixel_task``: ``skip_conv.weight`` is there.
    """
    embed, out = sd.get("patch_embed.proj.weight"), sd.get("output.weight")
    if embed is None or out is None:
        raise CheckpointError("checkpoint: no `patch_embed.proj.weight` / `output.weight` found (Restormer layout)")
    num_blocks = [_count_blocks(sd, s) for s in _STAGES]
    heads = []
    for i, stage in enumerate(_STAGES):
        t = sd.get(f"{stage}.0.attn.temperature")
        if t is None and i == 0:
            t = sd.get("refinement.0.attn.temperature")
        heads.append(int(t.shape[0]) if t is not None else _DEFAULT_HEADS[i])
    pairs = [(int(v.shape[1]), int(v.shape[0]) // 2) for k, v in sd.items() if k.endswith(".ffn.project_in.weight")]
    has_norm = any(k.endswith(".norm1.body.weight") for k in sd)
    with_bias = any(k.endswith(".norm1.body.bias") for k in sd) or not has_norm
    return {"inp_channels": int(embed.shape[1]), "out_channels": int(out.shape[0]), "dim": int(embed.shape[0]),
            "num_blocks": num_blocks, "num_refinement_blocks": _count_blocks(sd, "refinement"),
            "heads": heads, "ffn_expansion_factor": infer_ffn_expansion_factor(pairs),
            "bias": "output.bias" in sd, "LayerNorm_type": "WithBias" if with_bias else "BiasFree",
            "dual_pixel_task": "skip_conv.weight" in sd}
