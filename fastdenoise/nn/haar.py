"""Drop-in Haar modules: InvDN's ``HaarDownsampling`` and MWCNN's ``DWT`` / ``IWT``.

Each computes what the official module computes, through :mod:`fastdenoise.ops.haar` (one
fused pass instead of a grouped convolution plus two reshapes, or four strided slices plus
a zero-filled scatter):

* :class:`HaarDownsampling` — InvDN (``codes/models/modules/Inv_arch.py``): variant
  ``"invdn"``; forward is the grouped stride-2 convolution with the frozen ``haar_weights``
  divided by 4, rearranged sub-band-major; ``rev=True`` is the transposed convolution.
  The ``haar_weights`` Parameter is kept (same name, shape ``(4 * channel_in, 1, 2, 2)``,
  same values, ``requires_grad=False``) so the state dicts are interchangeable; the transform
  itself does not read it (its values are fixed by construction and checked by
  :meth:`HaarDownsampling.from_module`).
* :class:`DWT` / :class:`IWT` — MWCNN (``model/common.py``, ``dwt_init`` / ``iwt_init``):
  variant ``"mwcnn"``. No parameters. Unlike the official ``iwt_init``, which always
  allocates a float32 CUDA tensor, :class:`IWT` keeps the input's dtype, device and memory
  format.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_channels, check_channels_divisible, check_tensor
from ..ops.haar import haar_dwt2d, haar_idwt2d

__all__ = ["HaarDownsampling", "DWT", "IWT", "haar_downsampling_weights"]


def haar_downsampling_weights(channel_in: int) -> torch.Tensor:
    """InvDN's frozen Haar filters: ``(4 * channel_in, 1, 2, 2)``, four 2x2 filters per channel.

    Filter k of every channel holds the signs of band k over the block ``[[a, b], [c, d]]``:
    all ones; ``[[1, -1], [1, -1]]``; ``[[1, 1], [-1, -1]]``; ``[[1, -1], [-1, 1]]``.
    """
    one = torch.ones(4, 1, 2, 2)
    one[1, 0, :, 1] = -1      # a - b + c - d
    one[2, 0, 1, :] = -1      # a + b - c - d
    one[3, 0, 0, 1] = -1      # a - b - c + d
    one[3, 0, 1, 0] = -1
    return one.repeat(channel_in, 1, 1, 1)


class HaarDownsampling(nn.Module):
    """InvDN's invertible Haar downsampling: (B, C, H, W) <-> (B, 4C, H/2, W/2).

    ``forward(x, rev=False)``: ``x`` (B, ``channel_in``, H, W) with even H, W gives
    (B, 4 * channel_in, H/2, W/2), sub-band-major, each band a quarter of the signed 2x2 sum.
    ``rev=True`` takes (B, 4 * channel_in, h, w) back to (B, channel_in, 2h, 2w).
    Like the official module it records ``elements`` (C * H * W of its input) and ``last_jac``
    (the log-determinant, ``elements / 4 * log(1/16)`` forward, ``elements / 4 * log(16)``
    reverse), returned by :meth:`jacobian`.
    """

    def __init__(self, channel_in: int):
        super().__init__()
        self.channel_in = int(channel_in)
        self.haar_weights = nn.Parameter(haar_downsampling_weights(self.channel_in), requires_grad=False)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        check_tensor("x", x)
        if not rev:
            check_channels("x", x, self.channel_in, "HaarDownsampling channel_in")
            out = haar_dwt2d(x, "invdn")
            log_det_per_block = math.log(1 / 16.0)
        else:
            check_channels("x", x, 4 * self.channel_in, "4 * HaarDownsampling channel_in, rev=True")
            out = haar_idwt2d(x, "invdn")
            log_det_per_block = math.log(16.0)
        self.elements = x.shape[1] * x.shape[2] * x.shape[3]
        self.last_jac = self.elements / 4 * log_det_per_block
        return out

    def jacobian(self, x: torch.Tensor, rev: bool = False) -> float:
        """The log-determinant of the last call (as the official: ``x`` and ``rev`` are not read)."""
        return self.last_jac

    def extra_repr(self) -> str:
        return f"channel_in={self.channel_in}"

    @classmethod
    def from_module(cls, m: nn.Module) -> "HaarDownsampling":
        """A HaarDownsampling sharing ``m.haar_weights`` (the same Parameter object, not a copy).

        Raises ValueError when ``m`` has no ``haar_weights`` of shape (4C, 1, 2, 2) holding the
        standard Haar filters (the transform assumes them).
        """
        w = getattr(m, "haar_weights", None)
        if not isinstance(w, torch.Tensor):
            raise ValueError(f"m: expected a module with a `haar_weights` tensor (InvDN's "
                             f"HaarDownsampling), got {type(m).__name__} without one")
        if w.dim() != 4 or w.shape[0] % 4 or tuple(w.shape[1:]) != (1, 2, 2):
            raise ValueError(f"m.haar_weights: expected shape (4 * channel_in, 1, 2, 2), got {list(w.shape)}")
        channel_in = w.shape[0] // 4
        declared = getattr(m, "channel_in", channel_in)
        if declared != channel_in:
            raise ValueError(f"m.channel_in: expected {channel_in} (from haar_weights {list(w.shape)}), "
                             f"got {declared}")
        expected = haar_downsampling_weights(channel_in)
        if not torch.equal(w.detach().to(device="cpu", dtype=torch.float32), expected):
            raise ValueError("m.haar_weights: expected the standard Haar filters (ones; [[1, -1], [1, -1]]; "
                             "[[1, 1], [-1, -1]]; [[1, -1], [-1, 1]] per channel), got other values; "
                             "the fused transform cannot reproduce a module whose filters were changed")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.channel_in = channel_in
        new.haar_weights = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
        new.train(m.training)
        return new


class _NoParamHaar(nn.Module):
    def __init__(self):
        super().__init__()
        self.requires_grad = False   # as the official module (an attribute, not a parameter flag)

    @classmethod
    def from_module(cls, m: nn.Module):
        """The fused twin of MWCNN's parameter-free ``m`` (nothing to share; checks it has no state)."""
        if not isinstance(m, nn.Module):
            raise TypeError(f"m: expected an nn.Module, got {type(m).__name__}")
        state = list(m.state_dict())
        if state:
            raise ValueError(f"m: expected a module without parameters or buffers "
                             f"(MWCNN's {cls.__name__}), got {type(m).__name__} with {state}")
        new = cls()
        new.train(m.training)
        return new


class DWT(_NoParamHaar):
    """MWCNN's DWT: (B, C, H, W) -> (B, 4C, H/2, W/2), bands LL, HL, LH, HH, each (±a ±b ±c ±d)/2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return haar_dwt2d(x, "mwcnn")


class IWT(_NoParamHaar):
    """MWCNN's IWT, the inverse of :class:`DWT`: (B, 4C, h, w) -> (B, C, 2h, 2w).

    Keeps the input's dtype, device and memory format (the official always returns float32 CUDA).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, layout="(B, 4C, h, w)")
        check_channels_divisible("x", x, 4, "four sub-bands of C channels each")
        return haar_idwt2d(x, "mwcnn")
