"""Overlap-add of image tiles: the stitching step of tiled inference (:mod:`fastdenoise.tiling`).

``overlap_add(tiles, positions, out, weight_out, window)`` accumulates a batch of output tiles
into an image and a weight map, in place (they are accumulators: that is the op's purpose):

* ``tiles`` (N, C, th, tw), float16 / bfloat16 / float32 / float64;
* ``positions`` (N, 3) int64: for tile n, the image ``b`` of ``out`` it belongs to and the row
  ``y`` and column ``x`` of its top-left pixel in that image (may be negative, and a tile may
  reach past the image: the pixels outside are skipped);
* ``out`` (B, C, H, W) and ``weight_out`` (B, 1, H, W), float32 or float64 (the same dtype),
  contiguous;
* ``window`` (th, tw) (every tile) or (N, th, tw) (one per tile), the blending weights.

For n = 0, 1, ..., N - 1 in that order, for every pixel (i, j) of tile n inside the image:
``out[b, c, y + i, x + j] += w * tiles[n, c, i, j]`` and ``weight_out[b, 0, y + i, x + j] += w``
with ``w = window[(n,) i, j]``: the tile value is converted to out's dtype, multiplied by w
(rounded), then added (rounded) -- two roundings, never a fused multiply-add. Tiles are applied
one after the other (a pixel covered by several tiles receives them in tile order), so the
result does not depend on threads or scheduling: the kernels give the reference's bits. Offsets
are 64-bit: images of more than 2^31 elements work.

``overlap_normalize(out, weight_out)`` is the last step: ``out / weight_out`` where the weight is
positive, 0 where no tile contributed (a new tensor; plain PyTorch, one elementwise pass).

Kernels: C++ CPU (the rows of one tile in parallel, tiles in order) and CUDA (one launch per
tile, in stream order; each thread owns one output element: no atomics). ``positions`` is read
on the host (the launches need it): a CUDA ``positions`` is copied to the CPU first.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch, _ext
from .._checks import check_same_device, check_tensor
from ..errors import DeviceError, DTypeError, ShapeError

__all__ = ["overlap_add", "overlap_add_reference", "overlap_normalize", "ACC_DTYPES"]

#: dtypes of ``out`` / ``weight_out`` (the accumulators)
ACC_DTYPES = (torch.float32, torch.float64)


def _check(tiles, positions, out, weight_out, window):
    check_tensor("tiles", tiles, layout="(N, C, th, tw)", allow_empty=True)
    check_tensor("out", out, dtypes=ACC_DTYPES)
    check_tensor("weight_out", weight_out, dtypes=ACC_DTYPES, layout="(B, 1, H, W)")
    n, c, th, tw = tiles.shape
    b, oc, h, w = out.shape
    if oc != c:
        raise ShapeError(f"out: expected {c} channels (the tiles'), got C={oc}: {list(out.shape)}")
    if tuple(weight_out.shape) != (b, 1, h, w):
        raise ShapeError(f"weight_out: expected shape {[b, 1, h, w]}, got {list(weight_out.shape)}")
    if weight_out.dtype != out.dtype:
        raise DTypeError(f"weight_out: expected out's dtype {out.dtype}, got {weight_out.dtype}")
    for name, t in (("out", out), ("weight_out", weight_out)):
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous (NCHW) tensor (it is accumulated in place), "
                             f"got strides {list(t.stride())}")
    check_same_device("weight_out", weight_out, "out", out)
    check_same_device("tiles", tiles, "out", out)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions: expected a torch.Tensor (N, 3) int64, got {type(positions).__name__}")
    if positions.dtype != torch.int64:
        raise DTypeError(f"positions: expected dtype int64, got {str(positions.dtype).replace('torch.', '')}")
    if tuple(positions.shape) != (n, 3):
        raise ShapeError(f"positions: expected shape [{n}, 3] (image, row, column per tile), "
                         f"got {list(positions.shape)}")
    if not isinstance(window, torch.Tensor):
        raise TypeError(f"window: expected a torch.Tensor, got {type(window).__name__}")
    if tuple(window.shape) not in ((th, tw), (n, th, tw)):
        raise ShapeError(f"window: expected shape [{th}, {tw}] or [{n}, {th}, {tw}], got {list(window.shape)}")
    if not window.is_floating_point():
        raise DTypeError(f"window: expected a floating dtype, got {window.dtype}")
    check_same_device("window", window, "out", out)
    # out and weight_out are accumulated in place: they may share no memory with each other or
    # with what is read (the test the C++ / CUDA ops repeat, at::get_overlap_status)
    for name, t, acc_name, acc in (("out", out, "weight_out", weight_out), ("tiles", tiles, "out", out),
                                   ("tiles", tiles, "weight_out", weight_out), ("window", window, "out", out),
                                   ("window", window, "weight_out", weight_out)):
        if _shares_memory(t, acc):
            raise ValueError(f"{name}: expected memory separate from {acc_name} (which is accumulated in "
                             "place), got tensors that share memory")
    if torch.is_grad_enabled():
        for name, t in (("out", out), ("weight_out", weight_out), ("tiles", tiles), ("window", window)):
            if t.requires_grad:
                raise ValueError(f"{name}: expected a tensor that does not require grad (overlap_add accumulates "
                                 "in place and is not differentiable); run it under torch.no_grad() or detach it")
    if positions.device.type != "cpu" and positions.device != out.device:
        raise DeviceError(f"positions: expected a tensor on cpu or on {out.device} (the device of out), "
                          f"got {positions.device}")
    pos = positions.cpu()
    if n and (int(pos[:, 0].min()) < 0 or int(pos[:, 0].max()) >= b):
        bad = pos[:, 0][(pos[:, 0] < 0) | (pos[:, 0] >= b)][0]
        raise ValueError(f"positions: expected image indices in [0, {b}) (out has {b} images), got {int(bad)}")
    return pos


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may overlap in memory, as at::get_overlap_status decides (the C++
    ops' test); False where it cannot be told (tensors without storage, a torch without the
    binding)."""
    overlaps = getattr(torch._C, "_overlaps", None)
    if overlaps is None or a.device.type == "meta" or a.numel() == 0 or b.numel() == 0:
        return False
    try:
        return bool(overlaps(a, b))
    except RuntimeError:        # fake tensors under torch.compile, tensors without storage
        return False


def _clip(pos_row, th, tw, h, w):
    """(y0, y1, x0, x1) of the tile inside the image and the matching tile offsets (ty, tx)."""
    _, y, x = (int(v) for v in pos_row)
    y0, y1 = max(y, 0), min(y + th, h)
    x0, x1 = max(x, 0), min(x + tw, w)
    return y0, y1, x0, x1, y0 - y, x0 - x


def overlap_add_reference(tiles: torch.Tensor, positions: torch.Tensor, out: torch.Tensor,
                          weight_out: torch.Tensor, window: torch.Tensor) -> None:
    """Plain PyTorch overlap-add: one tile after the other (the spec, see the module docstring)."""
    pos = _check(tiles, positions, out, weight_out, window)
    _reference(tiles, pos, out, weight_out, window)


def _reference(tiles, pos, out, weight_out, window) -> None:
    n, _, th, tw = tiles.shape
    h, w = out.shape[-2:]
    win = window.to(out.dtype)
    for k in range(n):
        y0, y1, x0, x1, ty, tx = _clip(pos[k], th, tw, h, w)
        if y0 >= y1 or x0 >= x1:
            continue
        b = int(pos[k, 0])
        wk = (win[k] if win.dim() == 3 else win)[ty:ty + y1 - y0, tx:tx + x1 - x0]
        t = tiles[k, :, ty:ty + y1 - y0, tx:tx + x1 - x0].to(out.dtype)
        out[b, :, y0:y1, x0:x1] += t * wk
        weight_out[b, 0, y0:y1, x0:x1] += wk


def overlap_add(tiles: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, weight_out: torch.Tensor,
                window: torch.Tensor, *, backend: Optional[str] = None) -> None:
    """Accumulate ``tiles`` times ``window`` into ``out`` and ``window`` into ``weight_out``, in
    place, at ``positions`` (see the module docstring). ``backend``: None (the C++ CPU / CUDA
    kernel for the device of ``out``, else the reference), ``"cpu"``, ``"cuda"`` or
    ``"reference"``. Returns None."""
    pos = _check(tiles, positions, out, weight_out, window)
    if tiles.shape[0] == 0:
        return None
    be = _dispatch.resolve("overlap_add", out, backend, triton_op=False)
    if be == "reference":
        _reference(tiles, pos, out, weight_out, window)
        return None
    torch.ops.fastdenoise.overlap_add(tiles.contiguous(), pos.contiguous(), out, weight_out,
                                      window.to(out.dtype).contiguous())
    return None


def overlap_normalize(out: torch.Tensor, weight_out: torch.Tensor) -> torch.Tensor:
    """``out / weight_out`` where ``weight_out > 0``, 0 elsewhere (a new tensor of out's dtype)."""
    check_tensor("out", out)
    check_tensor("weight_out", weight_out, layout="(B, 1, H, W)")
    if weight_out.shape[1] != 1 or weight_out.shape[0] != out.shape[0] or weight_out.shape[2:] != out.shape[2:]:
        raise ShapeError(f"weight_out: expected shape {[out.shape[0], 1, *out.shape[2:]]}, "
                         f"got {list(weight_out.shape)}")
    check_same_device("weight_out", weight_out, "out", out)
    safe = torch.where(weight_out > 0, weight_out, torch.ones_like(weight_out))
    return torch.where(weight_out > 0, out / safe, torch.zeros_like(out)).to(out.dtype)


def _fake_overlap_add(tiles, positions, out, weight_out, window):
    return None


if _ext.extension() is not None and "fastdenoise::overlap_add" in _ext.build_info()["ops"]:
    torch.library.register_fake("fastdenoise::overlap_add")(_fake_overlap_add)
