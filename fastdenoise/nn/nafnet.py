"""Fused twins of NAFNet's blocks (megvii-research/NAFNet): the same parameters under the same
names, the same maths, computed with the fused ops of :mod:`fastdenoise.ops` (Triton on CUDA
tensors; the plain PyTorch references on the CPU).

* :class:`LayerNorm2d` -- :func:`fastdenoise.ops.layer_norm2d` (eps 1e-6).
* :class:`SimpleGate` -- :func:`fastdenoise.ops.simple_gate`.
* :class:`NAFBlock` -- the two LayerNorm2d fused; the SimpleGate and the simplified channel
  attention after the depthwise convolution fused into one op
  (:func:`~fastdenoise.ops.simplified_channel_attention` with ``gate=True``: the gated tensor
  is never stored); the second SimpleGate fused; each residual (``inp + x * beta``,
  ``y + x * gamma``) one ``torch.addcmul``, one pass over memory instead of two.
* :class:`BaselineBlock` -- the LayerNorm2d fused; the GELU and the squeeze-and-excitation after
  the depthwise convolution fused (:func:`~fastdenoise.ops.channel_attention` with
  ``act="gelu"``); the residuals as in NAFBlock.

When a block's pool is not a global average pool (NAFNetLocal's / BaselineLocal's local
statistics), its attention runs the module's own ``sca`` / ``se`` instead, unfused.
``from_module(m)`` builds a twin that shares ``m``'s parameters and submodules (no copies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_block_input
from ..ops import channel_attention, layer_norm2d, simple_gate, simplified_channel_attention

__all__ = ["LayerNorm2d", "SimpleGate", "NAFBlock", "BaselineBlock"]


def _is_global_pool(m: nn.Module) -> bool:
    return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))


def _require(m: nn.Module, what: str, names) -> None:
    missing = [n for n in names if not hasattr(m, n)]
    if missing:
        raise ValueError(f"m: expected {what} with attributes {list(names)}, got {type(m).__name__} "
                         f"without {missing}")


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, padding=0, stride=1, groups=1, bias=True)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0.0 else nn.Identity()


class LayerNorm2d(nn.Module):
    """NAFNet's LayerNorm2d (parameters ``weight`` and ``bias`` of shape (C,), ``eps``),
    computed by :func:`fastdenoise.ops.layer_norm2d`."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_block_input(type(self).__name__, x, self.weight.numel(), self.weight, match_dtype=False)
        return layer_norm2d(x, self.weight, self.bias, self.eps)

    @classmethod
    def from_module(cls, m: nn.Module) -> "LayerNorm2d":
        """A twin sharing ``m.weight`` and ``m.bias`` (the same Parameter objects)."""
        _require(m, "a LayerNorm2d", ("weight", "bias", "eps"))
        w, b = m.weight, m.bias
        if not (isinstance(w, nn.Parameter) and isinstance(b, nn.Parameter) and w.dim() == 1 and b.shape == w.shape):
            raise ValueError(f"m: expected (C,) parameters `weight` and `bias`, got {type(w).__name__} "
                             f"{list(getattr(w, 'shape', []))} and {type(b).__name__} {list(getattr(b, 'shape', []))}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.weight, new.bias, new.eps = w, b, float(m.eps)
        new.train(m.training)
        return new

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class SimpleGate(nn.Module):
    """NAFNet's SimpleGate, computed by :func:`fastdenoise.ops.simple_gate`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simple_gate(x)

    @classmethod
    def from_module(cls, m: nn.Module) -> "SimpleGate":
        """The twin of a parameter-free SimpleGate (checks that ``m`` has no state)."""
        if list(m.state_dict()):
            raise ValueError(f"m: expected a parameter-free SimpleGate, got {type(m).__name__} "
                             f"with {list(m.state_dict())}")
        new = cls()
        new.train(m.training)
        return new


def _tail(block: nn.Module, c: int, ffn_in: int, ffn_out: int, drop_out_rate: float, norm_cls) -> None:
    block.conv4 = _conv1x1(c, ffn_in)
    block.conv5 = _conv1x1(ffn_out, c)
    block.norm1 = norm_cls(c)
    block.norm2 = norm_cls(c)
    block.dropout1 = _dropout(drop_out_rate)
    block.dropout2 = _dropout(drop_out_rate)
    block.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
    block.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))


def build_nafblock(block: nn.Module, c: int, DW_Expand: int, FFN_Expand: int, drop_out_rate: float,
                   norm_cls, gate_cls) -> None:
    """Create NAFBlock's submodules and parameters on ``block``, in the official order and with
    the official names (shared by this fused twin and the plain block of
    :mod:`fastdenoise.models.nafnet`, which pass their own LayerNorm2d / SimpleGate classes)."""
    dw_channel, ffn_channel = c * DW_Expand, FFN_Expand * c
    if dw_channel % 2 or ffn_channel % 2:
        raise ValueError(f"NAFBlock: expected even c * DW_Expand and c * FFN_Expand (SimpleGate splits them "
                         f"in halves), got c={c}, DW_Expand={DW_Expand}, FFN_Expand={FFN_Expand}")
    block.conv1 = _conv1x1(c, dw_channel)
    block.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, padding=1, stride=1, groups=dw_channel, bias=True)
    block.conv3 = _conv1x1(dw_channel // 2, c)
    block.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv1x1(dw_channel // 2, dw_channel // 2))
    block.sg = gate_cls()
    _tail(block, c, ffn_channel, ffn_channel // 2, drop_out_rate, norm_cls)


def build_baselineblock(block: nn.Module, c: int, DW_Expand: int, FFN_Expand: int, drop_out_rate: float,
                        norm_cls) -> None:
    """Create BaselineBlock's submodules and parameters on ``block`` (see :func:`build_nafblock`)."""
    dw_channel, ffn_channel = c * DW_Expand, FFN_Expand * c
    block.conv1 = _conv1x1(c, dw_channel)
    block.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, padding=1, stride=1, groups=dw_channel, bias=True)
    block.conv3 = _conv1x1(dw_channel, c)
    block.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv1x1(dw_channel, dw_channel // 2), nn.ReLU(inplace=True),
                             _conv1x1(dw_channel // 2, dw_channel), nn.Sigmoid())
    block.gelu = nn.GELU()
    _tail(block, c, ffn_channel, ffn_channel, drop_out_rate, norm_cls)


_BLOCK_PARTS = ("conv1", "conv2", "conv3", "conv4", "conv5", "norm1", "norm2", "dropout1", "dropout2",
                "beta", "gamma")


def _share(new: nn.Module, m: nn.Module) -> None:
    """Give ``new`` the parameters and submodules of ``m``, registered in ``m``'s order (the same
    ``state_dict()`` and ``parameters()`` order), the norms as fused twins."""
    for name, p in m._parameters.items():
        new.register_parameter(name, p)
    for name, child in m._modules.items():
        setattr(new, name, LayerNorm2d.from_module(child) if name in ("norm1", "norm2") else child)
    new.train(m.training)


class NAFBlock(nn.Module):
    """NAFNet's block with the official arguments ``NAFBlock(c, DW_Expand=2, FFN_Expand=2,
    drop_out_rate=0.)`` and state-dict keys, fused (see the module docstring)."""

    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        build_nafblock(self, c, DW_Expand, FFN_Expand, drop_out_rate, LayerNorm2d, SimpleGate)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        check_block_input(type(self).__name__, inp, self.conv1.in_channels, self.conv1.weight)
        x = self.conv2(self.conv1(self.norm1(inp)))
        if _is_global_pool(self.sca[0]):
            conv = self.sca[1]
            x = simplified_channel_attention(x, conv.weight, conv.bias, gate=True)
        else:                                     # local statistics (NAFNetLocal): unfused
            x = simple_gate(x)
            x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = torch.addcmul(inp, x, self.beta)         # inp + x * beta in one pass
        x = self.dropout2(self.conv5(self.sg(self.conv4(self.norm2(y)))))
        return torch.addcmul(y, x, self.gamma)

    @classmethod
    def from_module(cls, m: nn.Module) -> "NAFBlock":
        """A fused twin sharing ``m``'s submodules and parameters. ``m`` must have NAFNet's
        attributes (``conv1`` .. ``conv5``, ``sca`` = (pool, 1x1 conv), ``norm1``, ``norm2``,
        ``beta``, ``gamma``, ``dropout1``, ``dropout2``); raises ValueError otherwise."""
        _require(m, "a NAFBlock", _BLOCK_PARTS + ("sca",))
        if not (isinstance(m.sca, nn.Sequential) and len(m.sca) == 2 and isinstance(m.sca[1], nn.Conv2d)
                and m.sca[1].kernel_size == (1, 1)):
            raise ValueError(f"m.sca: expected Sequential(pool, 1x1 Conv2d), got {m.sca}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        _share(new, m)
        new.sg = SimpleGate()        # in m's place: the gate has no state
        return new


class BaselineBlock(nn.Module):
    """The Baseline's block with the official arguments ``BaselineBlock(c, DW_Expand=1,
    FFN_Expand=2, drop_out_rate=0.)`` and state-dict keys, fused (see the module docstring)."""

    def __init__(self, c: int, DW_Expand: int = 1, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        build_baselineblock(self, c, DW_Expand, FFN_Expand, drop_out_rate, LayerNorm2d)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        check_block_input(type(self).__name__, inp, self.conv1.in_channels, self.conv1.weight)
        x = self.conv2(self.conv1(self.norm1(inp)))
        if _is_global_pool(self.se[0]):
            c1, c2 = self.se[1], self.se[3]
            x = channel_attention(x, c1.weight, c1.bias, c2.weight, c2.bias, act="gelu")
        else:                                     # local statistics (BaselineLocal): unfused
            x = self.gelu(x)
            x = x * self.se(x)
        x = self.dropout1(self.conv3(x))
        y = torch.addcmul(inp, x, self.beta)         # inp + x * beta in one pass
        x = self.dropout2(self.conv5(F.gelu(self.conv4(self.norm2(y)))))
        return torch.addcmul(y, x, self.gamma)

    @classmethod
    def from_module(cls, m: nn.Module) -> "BaselineBlock":
        """A fused twin sharing ``m``'s submodules and parameters; ``m`` must have the
        Baseline's attributes, an exact-GELU ``gelu`` and ``se`` = (pool, 1x1, ReLU, 1x1,
        Sigmoid); raises ValueError otherwise."""
        _require(m, "a BaselineBlock", _BLOCK_PARTS + ("se", "gelu"))
        se = m.se
        if not (isinstance(se, nn.Sequential) and len(se) == 5 and isinstance(se[1], nn.Conv2d)
                and isinstance(se[2], nn.ReLU) and isinstance(se[3], nn.Conv2d) and isinstance(se[4], nn.Sigmoid)):
            raise ValueError(f"m.se: expected Sequential(pool, 1x1 Conv2d, ReLU, 1x1 Conv2d, Sigmoid), got {se}")
        if not (isinstance(m.gelu, nn.GELU) and m.gelu.approximate == "none"):
            raise ValueError(f"m.gelu: expected nn.GELU() (exact), got {m.gelu}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        _share(new, m)
        return new
