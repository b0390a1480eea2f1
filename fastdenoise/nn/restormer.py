"""Fused twins of Restormer's blocks (swz30/Restormer): the official parameters under the official
names, the same maths, computed with the fused ops of :mod:`fastdenoise.ops`.

* :class:`MDTA` -- ``Attention(dim, num_heads, bias)``: ``qkv`` and ``qkv_dwconv`` as they are
  (cuDNN), or with ``fuse_input=True`` as one :func:`fastdenoise.ops.pointwise_dwconv` (the
  3C-channel 1x1 output never stored; off by default until GPU measurements say where it
  pays), then :func:`fastdenoise.ops.transposed_attention` -- the Gram pass, the d x d
  softmax and ``project_out`` folded into one C x C matrix per image applied to v; normalised
  q / k and the attended tensor are never stored.
* :class:`RestormerLayerNorm` -- ``LayerNorm(dim, LayerNorm_type)`` (``body`` a
  ``WithBias_LayerNorm`` or ``BiasFree_LayerNorm``): :func:`fastdenoise.ops.layer_norm2d`
  straight on the (B, C, H, W) tensor, no (B, H W, C) round trip.
* :class:`GDFN` (in :mod:`fastdenoise.nn.gdfn`) -- ``FeedForward``.
* :class:`TransformerBlock` -- the block with those three twins, the attention's skip
  connection added inside the attention's final product.

``from_module(m)`` builds a twin sharing ``m``'s submodules and parameters (no copies,
registered in ``m``'s order) and raises ValueError, naming the attribute, when ``m`` does not
have the official structure.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import autocast_enabled, check_block_input
from ..ops import layer_norm2d, pointwise_dwconv, transposed_attention
from ..ops.norm import RESTORMER_EPS
from .gdfn import GDFN

__all__ = ["MDTA", "RestormerLayerNorm", "TransformerBlock", "set_fuse_input"]


def set_fuse_input(model: nn.Module, enabled: bool = True) -> int:
    """Sets ``fuse_input`` on every :class:`MDTA` and :class:`~fastdenoise.nn.GDFN` in
    ``model`` (itself included): their 1x1 + depthwise 3x3 input stage then runs as one
    :func:`fastdenoise.ops.pointwise_dwconv`. Returns how many modules were set."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    count = 0
    for m in model.modules():
        if isinstance(m, (MDTA, GDFN)):
            m.fuse_input = enabled
            count += 1
    return count


def _copy_children(new: nn.Module, m: nn.Module, replace=None) -> None:
    """Register ``m``'s parameters and submodules on ``new`` in ``m``'s order (``replace``:
    name -> the module to put in that place instead)."""
    replace = replace or {}
    for name, p in m._parameters.items():
        new.register_parameter(name, p)
    for name, child in m._modules.items():
        setattr(new, name, replace.get(name, child))
    new.train(m.training)


def _conv(where: str, conv, cin: int, cout: int, k: int, groups: int = 1) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{where}: expected an nn.Conv2d, got {type(conv).__name__}")
    pad = (k // 2, k // 2)
    if (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups) != (cin, cout, (k, k), (1, 1), pad, (1, 1), groups) or conv.padding_mode != "zeros":
        raise ValueError(f"{where}: expected Conv2d({cin}, {cout}, kernel_size={k}, stride=1, padding={k // 2}, "
                         f"groups={groups}), got {conv}")
    return conv


class MDTA(nn.Module):
    """Restormer's ``Attention(dim, num_heads, bias)`` (``temperature`` (heads, 1, 1), ``qkv``,
    ``qkv_dwconv``, ``project_out``), fused (see the module docstring). ``fuse_input``
    (keyword-only, also an attribute): compute ``qkv_dwconv(qkv(x))`` as one
    :func:`fastdenoise.ops.pointwise_dwconv` -- not under autocast, where the two convolutions
    run in autocast's dtype as the official do. Outside autocast an input whose dtype differs
    from the weights' is a DTypeError (the official convolutions raise there too)."""

    def __init__(self, dim: int, num_heads: int, bias: bool, *, fuse_input: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: expected a divisor of dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.fuse_input = bool(fuse_input)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def attend(self, x: torch.Tensor, residual=None) -> torch.Tensor:
        """The block's output (+ ``residual``, added in the final product)."""
        pw, dw = self.qkv, self.qkv_dwconv
        check_block_input(type(self).__name__, x, pw.in_channels, pw.weight)
        if self.fuse_input and not autocast_enabled(x.device.type):
            qkv = pointwise_dwconv(x, pw.weight, dw.weight, pw.bias, dw.bias)
        else:
            qkv = self.qkv_dwconv(self.qkv(x))
        return transposed_attention(qkv, self.temperature, self.num_heads, self.project_out.weight,
                                    self.project_out.bias, residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)

    @classmethod
    def from_module(cls, m: nn.Module, *, fuse_input: bool = False) -> "MDTA":
        """A twin sharing ``m.temperature``, ``m.qkv``, ``m.qkv_dwconv`` and ``m.project_out``."""
        name = type(m).__name__
        t = getattr(m, "temperature", None)
        if not (isinstance(t, nn.Parameter) and t.dim() == 3 and t.shape[1:] == (1, 1)):
            raise ValueError(f"{name}.temperature: expected a (num_heads, 1, 1) parameter, got "
                             f"{type(t).__name__} {list(getattr(t, 'shape', []))}")
        heads = t.shape[0]
        out = getattr(m, "project_out", None)
        if not isinstance(out, nn.Conv2d):
            raise ValueError(f"{name}.project_out: expected an nn.Conv2d, got {type(out).__name__}")
        dim = out.in_channels
        _conv(f"{name}.project_out", out, dim, dim, 1)
        _conv(f"{name}.qkv", getattr(m, "qkv", None), dim, 3 * dim, 1)
        _conv(f"{name}.qkv_dwconv", getattr(m, "qkv_dwconv", None), 3 * dim, 3 * dim, 3, groups=3 * dim)
        if dim % heads:
            raise ValueError(f"{name}.temperature: expected a head count dividing dim={dim}, got {heads}")
        if getattr(m, "num_heads", heads) != heads:
            raise ValueError(f"{name}.num_heads: expected {heads} (the temperature's length), got {m.num_heads}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads = int(heads)
        new.fuse_input = bool(fuse_input)
        _copy_children(new, m)
        return new

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}" + (", fuse_input=True" if self.fuse_input else "")


class RestormerLayerNorm(nn.Module):
    """Restormer's ``LayerNorm(dim, LayerNorm_type)``: ``body`` holds ``weight`` (and ``bias``
    unless ``'BiasFree'``), the same keys as the official (``body.weight``, ``body.bias``);
    computed by :func:`fastdenoise.ops.layer_norm2d` (eps 1e-5)."""

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias"):
        super().__init__()
        self.bias_free = LayerNorm_type == "BiasFree"
        self.body = _NormBody(dim, not self.bias_free)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.body
        check_block_input(type(self).__name__, x, body.weight.numel(), body.weight, match_dtype=False)
        return layer_norm2d(x, body.weight, None if self.bias_free else body.bias, RESTORMER_EPS,
                            bias_free=self.bias_free)

    @classmethod
    def from_module(cls, m: nn.Module) -> "RestormerLayerNorm":
        """A twin sharing ``m.body``. BiasFree when ``m.body`` has no ``bias`` parameter (the
        official ``BiasFree_LayerNorm``), WithBias when it has one."""
        name = type(m).__name__
        body = getattr(m, "body", None)
        w = getattr(body, "weight", None)
        if not (isinstance(body, nn.Module) and isinstance(w, nn.Parameter) and w.dim() == 1):
            raise ValueError(f"{name}.body: expected a norm with a (C,) `weight` parameter, got "
                             f"{type(body).__name__}")
        b = getattr(body, "bias", None)
        if b is not None and not (isinstance(b, nn.Parameter) and b.shape == w.shape):
            raise ValueError(f"{name}.body.bias: expected a ({w.numel()},) parameter or none, got "
                             f"{type(b).__name__} {list(getattr(b, 'shape', []))}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.bias_free = b is None
        new.body = body
        new.train(m.training)
        return new

    def extra_repr(self) -> str:
        return f"{self.body.weight.numel()}, {'BiasFree' if self.bias_free else 'WithBias'}"


class _NormBody(nn.Module):
    """The parameter holder of :class:`RestormerLayerNorm` (``weight``, ``bias``)."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))


class TransformerBlock(nn.Module):
    """Restormer's ``TransformerBlock(dim, num_heads, ffn_expansion_factor, bias,
    LayerNorm_type)``: ``x + attn(norm1(x))`` then ``+ ffn(norm2(.))``, with the fused twins."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 LayerNorm_type: str = "WithBias"):
        super().__init__()
        self.norm1 = RestormerLayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = RestormerLayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.attn.qkv
        check_block_input(type(self).__name__, x, qkv.in_channels, qkv.weight)
        x = self.attn.attend(self.norm1(x), residual=x)
        return x + self.ffn(self.norm2(x))

    @classmethod
    def from_module(cls, m: nn.Module) -> "TransformerBlock":
        """A twin whose ``norm1`` / ``norm2`` / ``attn`` / ``ffn`` are the fused twins of
        ``m``'s (sharing their parameters); twins already there are kept."""
        name = type(m).__name__
        missing = [a for a in ("norm1", "attn", "norm2", "ffn") if not isinstance(getattr(m, a, None), nn.Module)]
        if missing:
            raise ValueError(f"{name}: expected submodules norm1, attn, norm2, ffn, got none for {missing}")

        def twin(kind, sub):
            return sub if isinstance(sub, kind) else kind.from_module(sub)

        try:
            parts = {"norm1": twin(RestormerLayerNorm, m.norm1), "attn": twin(MDTA, m.attn),
                     "norm2": twin(RestormerLayerNorm, m.norm2), "ffn": twin(GDFN, m.ffn)}
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        dims = {parts["norm1"].body.weight.numel(), parts["attn"].project_out.in_channels,
                parts["norm2"].body.weight.numel(), parts["ffn"].project_in.in_channels}
        if len(dims) != 1:
            raise ValueError(f"{name}: expected norm1, attn, norm2 and ffn of one width, got widths {sorted(dims)}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        _copy_children(new, m, parts)
        return new
