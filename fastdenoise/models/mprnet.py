"""MPRNet (Zamir et al., CVPR 2021), the denoiser of swz30/MPRNet (``Denoising/MPRNet.py``;
the deblurring and deraining models are the same network with other widths, and load too).

Three stages on one image ``x`` (B, in_c, H, W), H and W multiples of 8:

* **stage 1** runs on the four quadrants (``H // 2`` x ``W // 2``): ``shallow_feat1`` (conv + CAB)
  and ``stage1_encoder`` per quadrant; the encoder features of the left and right quadrants are
  joined along W; ``stage1_decoder`` per half; ``sam12`` (SAM) per half gives the stage-1 image
  and the features passed on;
* **stage 2** runs on the two halves (top / bottom): ``shallow_feat2``, ``concat12`` (3x3 conv of
  the shallow and SAM features), ``stage2_encoder`` with cross-stage feature fusion (CSFF: 1x1
  convolutions of the stage-1 encoder and decoder features added per level); the halves'
  features are joined along H; ``stage2_decoder``; ``sam23`` gives the stage-2 image;
* **stage 3** at full resolution: ``shallow_feat3``, ``concat23``, ``stage3_orsnet`` (ORSNet:
  three ORBs of ``num_cab`` CABs, each followed by the stage-2 encoder / decoder features of one
  level, upsampled and projected), ``tail`` (3x3 conv), plus ``x``.

The encoders have three levels of widths ``n_feat``, ``n_feat + s``, ``n_feat + 2s``
(``s = scale_unetfeats``; bilinear x0.5 + 1x1 conv down, bilinear x2 + 1x1 conv up); ORSNet
works at ``n_feat + scale_orsnetfeats``. Every CAB (conv, PReLU, conv, channel attention, plus
the input) uses one PReLU module: the official makes ``act = nn.PReLU()`` once and hands it to
every CAB, so one parameter is shared, and the state dict lists it under every CAB
(``<cab>.body.1.weight``). That sharing is reproduced. Convolutions have no bias (``bias=False``)
except where ``bias=True`` is asked; the 3x3 conv closing each ORB never has one.

Output: the official list ``[stage3, stage2, stage1]`` of (B, out_c, H, W) images (stage 3, the
first, is the result the official test scripts keep). Input range ``[0, 1]`` (the official
scripts feed ``img / 255``), not rescaled.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_model_input, memory_format_of
from ..errors import CheckpointError
from ..nn import attention as fused_blocks
from ._fuse import swap_children
from .ridnet import infer_reduction

__all__ = ["MPRNet", "CALayer", "CAB", "SAM", "Encoder", "Decoder", "DownSample", "UpSample",
           "SkipUpSample", "ORB", "ORSNet", "conv", "infer_mprnet"]


def conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """Square convolution with ``kernel_size // 2`` padding (the official ``conv`` helper)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, stride=stride)


class CALayer(nn.Module):
    """MPRNet's channel attention: ``x * conv_du(avg_pool(x))``, ``conv_du`` = 1x1 conv (to
    ``channel // reduction``) + ReLU + 1x1 conv (back) + sigmoid; bias only when ``bias``."""

    def __init__(self, channel: int, reduction: int = 16, bias: bool = False):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=bias),
            nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    """Channel attention block: ``CA(body(x)) + x``, ``body`` = conv, ``act``, conv.

    ``act`` is used as given (not copied): MPRNet passes the one PReLU all its CABs share.
    ``CA`` is registered before ``body``, as in the official (state-dict key order).
    """

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module):
        super().__init__()
        first = conv(n_feat, n_feat, kernel_size, bias=bias)
        second = conv(n_feat, n_feat, kernel_size, bias=bias)
        self.CA = CALayer(n_feat, reduction, bias=bias)
        self.body = nn.Sequential(first, act, second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CA(self.body(x)) + x


class SAM(nn.Module):
    """Supervised attention module: ``img = conv2(x) + x_img`` (3 channels), features
    ``conv1(x) * sigmoid(conv3(img)) + x``; returns ``(features, img)``."""

    def __init__(self, n_feat: int, kernel_size: int, bias: bool):
        super().__init__()
        self.conv1 = conv(n_feat, n_feat, kernel_size, bias=bias)
        self.conv2 = conv(n_feat, 3, kernel_size, bias=bias)
        self.conv3 = conv(3, n_feat, kernel_size, bias=bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor):
        img = self.conv2(x) + x_img
        feats = self.conv1(x) * torch.sigmoid(self.conv3(img)) + x
        return feats, img


class DownSample(nn.Module):
    """Bilinear x0.5 (align_corners False) then 1x1 conv ``in -> in + s_factor`` (no bias)."""

    def __init__(self, in_channels: int, s_factor: int):
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(in_channels, in_channels + s_factor, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2 (align_corners False) then 1x1 conv ``in + s_factor -> in`` (no bias)."""

    def __init__(self, in_channels: int, s_factor: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(in_channels + s_factor, in_channels, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SkipUpSample(nn.Module):
    """:class:`UpSample` of ``x`` plus the skip ``y``."""

    def __init__(self, in_channels: int, s_factor: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(in_channels + s_factor, in_channels, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.up(x) + y


def _cabs(n: int, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(n_feat, kernel_size, reduction, bias=bias, act=act) for _ in range(n)])


class Encoder(nn.Module):
    """U-Net encoder: per level two CABs (``encoder_level1..3``), ``down12`` / ``down23`` between.

    With ``csff`` (stage 2) it has ``csff_enc1..3`` / ``csff_dec1..3`` 1x1 convolutions, and
    ``forward(x, encoder_outs, decoder_outs)`` adds ``csff_enc<l>(encoder_outs[l-1]) +
    csff_dec<l>(decoder_outs[l-1])`` after each level (only when both lists are given).
    Returns ``[enc1, enc2, enc3]``.
    """

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool,
                 scale_unetfeats: int, csff: bool):
        super().__init__()
        s = scale_unetfeats
        self.encoder_level1 = _cabs(2, n_feat, kernel_size, reduction, bias, act)
        self.encoder_level2 = _cabs(2, n_feat + s, kernel_size, reduction, bias, act)
        self.encoder_level3 = _cabs(2, n_feat + 2 * s, kernel_size, reduction, bias, act)
        self.down12 = DownSample(n_feat, s)
        self.down23 = DownSample(n_feat + s, s)
        if csff:
            widths = (n_feat, n_feat + s, n_feat + 2 * s)
            for prefix in ("csff_enc", "csff_dec"):
                for level, width in enumerate(widths, start=1):
                    setattr(self, f"{prefix}{level}", nn.Conv2d(width, width, kernel_size=1, bias=bias))

    def forward(self, x: torch.Tensor, encoder_outs: Optional[Sequence[torch.Tensor]] = None,
                decoder_outs: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
        fuse = encoder_outs is not None and decoder_outs is not None
        enc1 = self.encoder_level1(x)
        if fuse:
            enc1 = enc1 + self.csff_enc1(encoder_outs[0]) + self.csff_dec1(decoder_outs[0])
        enc2 = self.encoder_level2(self.down12(enc1))
        if fuse:
            enc2 = enc2 + self.csff_enc2(encoder_outs[1]) + self.csff_dec2(decoder_outs[1])
        enc3 = self.encoder_level3(self.down23(enc2))
        if fuse:
            enc3 = enc3 + self.csff_enc3(encoder_outs[2]) + self.csff_dec3(decoder_outs[2])
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """U-Net decoder: ``decoder_level3`` on ``enc3``; up (``up32``) plus ``skip_attn2(enc2)``,
    ``decoder_level2``; up (``up21``) plus ``skip_attn1(enc1)``, ``decoder_level1``.
    Returns ``[dec1, dec2, dec3]``."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool,
                 scale_unetfeats: int):
        super().__init__()
        s = scale_unetfeats
        self.decoder_level1 = _cabs(2, n_feat, kernel_size, reduction, bias, act)
        self.decoder_level2 = _cabs(2, n_feat + s, kernel_size, reduction, bias, act)
        self.decoder_level3 = _cabs(2, n_feat + 2 * s, kernel_size, reduction, bias, act)
        self.skip_attn1 = CAB(n_feat, kernel_size, reduction, bias=bias, act=act)
        self.skip_attn2 = CAB(n_feat + s, kernel_size, reduction, bias=bias, act=act)
        self.up21 = SkipUpSample(n_feat, s)
        self.up32 = SkipUpSample(n_feat + s, s)

    def forward(self, outs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: ``body(x) + x``, ``body`` = ``num_cab`` CABs then a 3x3 conv
    (no bias, whatever ``bias`` says, as the official)."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool, num_cab: int):
        super().__init__()
        layers = [CAB(n_feat, kernel_size, reduction, bias=bias, act=act) for _ in range(num_cab)]
        layers.append(conv(n_feat, n_feat, kernel_size))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    """Original-resolution subnetwork of stage 3: ``orb1``, ``orb2``, ``orb3``, each followed by
    ``conv_enc<l>(up(encoder_outs[l-1])) + conv_dec<l>(up(decoder_outs[l-1]))`` (1x1 convolutions
    to ``n_feat + scale_orsnetfeats``; level 2 upsampled once by ``up_enc1`` / ``up_dec1``,
    level 3 twice by ``up_enc2`` / ``up_dec2``)."""

    def __init__(self, n_feat: int, scale_orsnetfeats: int, kernel_size: int, reduction: int, act: nn.Module,
                 bias: bool, scale_unetfeats: int, num_cab: int):
        super().__init__()
        width, s = n_feat + scale_orsnetfeats, scale_unetfeats
        self.orb1 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb2 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb3 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.up_enc1 = UpSample(n_feat, s)
        self.up_dec1 = UpSample(n_feat, s)
        self.up_enc2 = nn.Sequential(UpSample(n_feat + s, s), UpSample(n_feat, s))
        self.up_dec2 = nn.Sequential(UpSample(n_feat + s, s), UpSample(n_feat, s))
        for prefix in ("conv_enc", "conv_dec"):
            for level in (1, 2, 3):
                setattr(self, f"{prefix}{level}", nn.Conv2d(n_feat, width, kernel_size=1, bias=bias))

    def forward(self, x: torch.Tensor, encoder_outs: Sequence[torch.Tensor],
                decoder_outs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.orb1(x) + self.conv_enc1(encoder_outs[0]) + self.conv_dec1(decoder_outs[0])
        x = (self.orb2(x) + self.conv_enc2(self.up_enc1(encoder_outs[1]))
             + self.conv_dec2(self.up_dec1(decoder_outs[1])))
        x = (self.orb3(x) + self.conv_enc3(self.up_enc2(encoder_outs[2]))
             + self.conv_dec3(self.up_dec2(decoder_outs[2])))
        return x


class MPRNet(nn.Module):
    """The official MPRNet denoiser (``Denoising/MPRNet.py``), same arguments and defaults.

    ``MPRNet(in_c=3, out_c=3, n_feat=80, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
    kernel_size=3, reduction=4, bias=False)``. (The official deblurring model is ``n_feat=96``,
    the deraining one ``n_feat=40, scale_unetfeats=20, scale_orsnetfeats=16``; the rest is the
    same.) The SAMs give 3-channel images whatever ``in_c`` / ``out_c``, as the official.

    ``forward(x)``: ``x`` (B, in_c, H, W) in ``[0, 1]``, any H and W. Returns the official list
    ``[stage3, stage2, stage1]`` (each (B, C, H, W); stage 3 is ``tail(...) + x``, the result).
    The network needs H and W multiples of 8 (quadrants, then two halvings); other sizes are
    padded at the bottom / right to the next multiple of 8 by reflection, as the official
    ``demo.py`` does (replication when a side is too short to reflect: H or W below 5, where
    the demo fails), and every output is cropped back. Multiples of 8 are not padded, so the
    result is the official one exactly. Outputs are not clamped. :meth:`denoise` is the
    official test's use of it.

    ``fused`` (keyword-only, default True): every CAB is :class:`fastdenoise.nn.CAB` (channel
    attention and residual add in one op, the shared PReLU kept); False builds the plain
    blocks. Both have the same parameters and state-dict keys.
    """

    def __init__(self, in_c: int = 3, out_c: int = 3, n_feat: int = 80, scale_unetfeats: int = 48,
                 scale_orsnetfeats: int = 32, num_cab: int = 8, kernel_size: int = 3, reduction: int = 4,
                 bias: bool = False, *, fused: bool = True):
        super().__init__()
        self.fused = bool(fused)
        self.in_c, self.out_c, self.n_feat = in_c, out_c, n_feat
        self.scale_unetfeats, self.scale_orsnetfeats, self.num_cab = scale_unetfeats, scale_orsnetfeats, num_cab
        self.kernel_size, self.reduction, self.bias = kernel_size, reduction, bias
        k, r, so = kernel_size, reduction, scale_orsnetfeats

        # One PReLU for every CAB (a local, as in the official: not a submodule of its own, so
        # it appears in the state dict only under the CABs).
        act = nn.PReLU()
        # Built and registered in the official order: same initialisation for the same seed,
        # same state-dict key order.
        self.shallow_feat1 = nn.Sequential(conv(in_c, n_feat, k, bias=bias), CAB(n_feat, k, r, bias=bias, act=act))
        self.shallow_feat2 = nn.Sequential(conv(in_c, n_feat, k, bias=bias), CAB(n_feat, k, r, bias=bias, act=act))
        self.shallow_feat3 = nn.Sequential(conv(in_c, n_feat, k, bias=bias), CAB(n_feat, k, r, bias=bias, act=act))

        self.stage1_encoder = Encoder(n_feat, k, r, act, bias, scale_unetfeats, csff=False)
        self.stage1_decoder = Decoder(n_feat, k, r, act, bias, scale_unetfeats)
        self.stage2_encoder = Encoder(n_feat, k, r, act, bias, scale_unetfeats, csff=True)
        self.stage2_decoder = Decoder(n_feat, k, r, act, bias, scale_unetfeats)
        self.stage3_orsnet = ORSNet(n_feat, so, k, r, act, bias, scale_unetfeats, num_cab)

        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias)

        self.concat12 = conv(n_feat * 2, n_feat, k, bias=bias)
        self.concat23 = conv(n_feat * 2, n_feat + so, k, bias=bias)
        self.tail = conv(n_feat + so, out_c, k, bias=bias)
        if self.fused:      # after building: the same initialisation as the plain model
            swap_children(self, CAB, fused_blocks.CAB.from_module)

    # ----------------------------------------------------------------------------------------

    def _stages(self, x3_img: torch.Tensor) -> List[torch.Tensor]:
        """The official forward on H, W multiples of 8."""
        h, w = x3_img.shape[-2], x3_img.shape[-1]
        hh, hw = h // 2, w // 2
        x2_imgs = [x3_img[:, :, :hh, :], x3_img[:, :, hh:, :]]                  # top, bottom
        x1_imgs = [[half[:, :, :, :hw], half[:, :, :, hw:]] for half in x2_imgs]  # [left, right] per half

        # Stage 1: the four quadrants through shallow_feat1 and the encoder (in the official
        # order: top-left, top-right, bottom-left, bottom-right), then per half.
        enc1 = [[self.stage1_encoder(self.shallow_feat1(q)) for q in half] for half in x1_imgs]
        feat1 = [[torch.cat((a, b), 3) for a, b in zip(left, right)] for left, right in enc1]
        res1 = [self.stage1_decoder(f) for f in feat1]
        sam1 = [self.sam12(r[0], img) for r, img in zip(res1, x2_imgs)]
        stage1_img = torch.cat([img for _, img in sam1], 2)

        # Stage 2: the two halves, fused with the stage-1 features.
        x2 = [self.shallow_feat2(img) for img in x2_imgs]
        x2_cat = [self.concat12(torch.cat([a, feats], 1)) for a, (feats, _) in zip(x2, sam1)]
        enc2 = [self.stage2_encoder(c, f, r) for c, f, r in zip(x2_cat, feat1, res1)]
        feat2 = [torch.cat((a, b), 2) for a, b in zip(*enc2)]
        res2 = self.stage2_decoder(feat2)
        x3_samfeats, stage2_img = self.sam23(res2[0], x3_img)

        # Stage 3: full resolution.
        x3 = self.shallow_feat3(x3_img)
        x3_cat = self.concat23(torch.cat([x3, x3_samfeats], 1))
        x3_cat = self.stage3_orsnet(x3_cat, feat2, res2)
        stage3_img = self.tail(x3_cat)
        return [stage3_img + x3_img, stage2_img, stage1_img]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        check_model_input(self, x, self.in_c, "MPRNet in_c")
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = -h % 8, -w % 8
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            outs = [o[..., :h, :w] for o in self._stages(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))]
        else:
            outs = self._stages(x)
        fmt = memory_format_of(x)
        return [o.contiguous(memory_format=fmt) for o in outs]

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The official test's use of the model: ``clamp(forward(x)[0], 0, 1)``, ``x`` in ``[0, 1]``."""
        return self(x)[0].clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Hyper-parameters of a checkpoint (used by fastdenoise.models.loading)
# --------------------------------------------------------------------------------------------

_CA_SUFFIX = ".CA.conv_du.0.weight"


def infer_mprnet(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """All of MPRNet's arguments from a state dict's keys and shapes.

    ``shallow_feat1.0.weight``: (n_feat, in_c, k, k), with ``shallow_feat1.0.bias`` when
    ``bias``; ``stage1_encoder.down12.down.1.weight``: (n_feat + scale_unetfeats, n_feat, 1, 1);
    ``tail.weight``: (out_c, n_feat + scale_orsnetfeats, k, k); ``num_cab``: the CABs in
    ``stage3_orsnet.orb1.body``; ``reduction``: from every ``<cab>.CA.conv_du.0.weight``.
    """
    first, tail = sd.get("shallow_feat1.0.weight"), sd.get("tail.weight")
    down = sd.get("stage1_encoder.down12.down.1.weight")
    if first is None or tail is None or down is None:
        raise CheckpointError("checkpoint: no `shallow_feat1.0.weight` / `tail.weight` / "
                              "`stage1_encoder.down12.down.1.weight` found (MPRNet layout)")
    n_feat = int(first.shape[0])
    prefix = "stage3_orsnet.orb1.body."
    cabs = {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix) and k.endswith(_CA_SUFFIX)}
    pairs = sorted({(int(v.shape[1]), int(v.shape[0])) for k, v in sd.items() if k.endswith(_CA_SUFFIX)})
    return {"in_c": int(first.shape[1]), "out_c": int(tail.shape[0]), "n_feat": n_feat,
            "scale_unetfeats": int(down.shape[0]) - n_feat,
            "scale_orsnetfeats": int(tail.shape[1]) - n_feat,
            "num_cab": len(cabs), "kernel_size": int(first.shape[-1]),
            "reduction": infer_reduction(pairs), "bias": "shallow_feat1.0.bias" in sd}
