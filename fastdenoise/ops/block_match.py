"""Block matching: for each reference patch on a stride grid, its k most similar patches in a
search window, the first step of BM3D (and of any non-local patch method).

Definitions (the plain PyTorch reference below is the spec):

* The *guide* is the image the patches are compared on: the single channel of a grey image; for
  a 3-channel (RGB) image the luma of the opponent colour transform, ``(R + G + B) / 3`` (what
  CBM3D matches on); for any other channel count the first channel.
* Reference patches (``patch`` x ``patch``, identified by their top-left corner) sit on the grid
  ``rows[i] = min(i * stride, H - patch)``, ``i = 0 .. ny - 1``, ``ny = ceil((H - patch) /
  stride) + 1`` (likewise ``cols``): the last row and column of patches touch the border, so
  every pixel is covered.
* The candidates of the reference at (py, px) are all top-left corners (y, x) with
  ``|y - py| <= search // 2``, ``|x - px| <= search // 2``, clipped to the image.
* The distance is the mean squared difference over the patch,
  ``d = sum((P_candidate - P_reference)^2) / patch^2`` (the normalised distance that BM3D's
  matching thresholds are written for), on the guide.
* The k candidates with the smallest distance are returned, best first. Ties are broken
  deterministically: at equal distance the reference patch itself comes first, then the
  candidates in raster order of their top-left corner (smaller ``y * W + x`` first). The
  reference patch (distance 0) is therefore always the first match.

The compiled kernels (C++ CPU and CUDA) sum each distance in float32 in the same fixed order
without FMA contraction, so they return bitwise the same matches and distances; the reference
works in float64 and agrees with them to rounding (the same indices wherever the distances are
not tied to rounding). Inputs with NaN or inf give unspecified matches.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _dispatch, _ext
from .._checks import check_tensor
from ..errors import ShapeError

__all__ = ["block_match", "block_match_reference", "matching_guide", "grid_positions", "BlockMatches",
           "MAX_SEARCH"]

#: Largest search window (the CUDA kernel keeps a window's candidates in shared memory).
MAX_SEARCH = 63


class BlockMatches(NamedTuple):
    """Result of :func:`block_match` for an image of width W.

    ``index``: (B, ny, nx, k) int64, the top-left corner ``y * W + x`` of each match, best first;
    ``distance``: (B, ny, nx, k) float32 mean squared differences; ``rows`` (ny,) and ``cols``
    (nx,) int64: the top-left corners of the reference patches.
    """

    index: torch.Tensor
    distance: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


def grid_positions(extent: int, patch: int, stride: int) -> list:
    """Top-left coordinates of the reference patches along one axis of length ``extent``."""
    count = (extent - patch + stride - 1) // stride + 1
    return [min(i * stride, extent - patch) for i in range(count)]


def matching_guide(x: torch.Tensor) -> torch.Tensor:
    """The float32 (B, H, W) image patches are compared on: the channel of a grey image, the
    opponent-transform luma (R + G + B) / 3 of a 3-channel image, else the first channel."""
    if x.shape[1] == 3:
        return x.to(torch.float32).sum(dim=1) / 3.0
    return x[:, 0].to(torch.float32)


def _min_candidates(h: int, w: int, patch: int, search: int) -> int:
    r = search // 2
    return (min(r, h - patch) + 1) * (min(r, w - patch) + 1)


def _check(x, patch, search, k, stride) -> None:
    check_tensor("x", x)
    h, w = x.shape[-2:]
    for name, v in (("patch", patch), ("search", search), ("k", k), ("stride", stride)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if patch > min(h, w):
        raise ShapeError(f"x: expected H and W of at least patch={patch}, got H={h}, W={w}: {list(x.shape)}")
    if search % 2 == 0 or search > MAX_SEARCH:
        raise ValueError(f"search: expected an odd window size of at most {MAX_SEARCH}, got {search}")
    if h * w >= 2**31:
        raise ShapeError(f"x: expected H * W < 2**31, got H={h}, W={w}")
    most = _min_candidates(h, w, patch, search)
    if k > most:
        raise ShapeError(f"k: expected at most {most} (the candidates of the smallest search window of a "
                         f"{h}x{w} image with patch={patch}, search={search}), got {k}")


# --------------------------------------------------------------------------------------------
# Reference (the spec)
# --------------------------------------------------------------------------------------------

def block_match_reference(x: torch.Tensor, patch: int = 8, search: int = 39, k: int = 16,
                          stride: int = 3) -> BlockMatches:
    """Plain PyTorch block matching, in float64, one reference patch at a time."""
    guide = matching_guide(x).to(torch.float64)
    n, h, w = guide.shape
    r = search // 2
    rows, cols = grid_positions(h, patch, stride), grid_positions(w, patch, stride)
    # every patch of the image, by its top-left corner: (B, H - patch + 1, W - patch + 1, patch, patch)
    patches = guide.unfold(1, patch, 1).unfold(2, patch, 1)
    index = torch.empty((n, len(rows), len(cols), k), dtype=torch.int64)
    dist = torch.empty((n, len(rows), len(cols), k), dtype=torch.float64)
    for i, py in enumerate(rows):
        ys = torch.arange(max(0, py - r), min(h - patch, py + r) + 1)
        for j, px in enumerate(cols):
            xs = torch.arange(max(0, px - r), min(w - patch, px + r) + 1)
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            cy, cx = cy.flatten(), cx.flatten()                  # raster order
            cand = patches[:, cy, cx]                            # (B, n_cand, patch, patch)
            ref = patches[:, py, px].unsqueeze(1)
            d = (cand - ref).square().mean(dim=(-1, -2))         # (B, n_cand)
            # order of ties: the reference first, then raster order; a stable sort keeps it
            is_ref = (cy == py) & (cx == px)
            order = torch.cat([is_ref.nonzero().flatten(), (~is_ref).nonzero().flatten()])
            d, flat = d[:, order], (cy * w + cx)[order]
            d_sorted, pick = torch.sort(d, dim=1, stable=True)
            index[:, i, j] = flat[pick[:, :k]]
            dist[:, i, j] = d_sorted[:, :k]
    return BlockMatches(index.to(x.device), dist.to(torch.float32).to(x.device),
                        torch.tensor(rows, device=x.device), torch.tensor(cols, device=x.device))


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

def block_match(x: torch.Tensor, patch: int = 8, search: int = 39, k: int = 16, stride: int = 3, *,
                backend: Optional[str] = None) -> BlockMatches:
    """The ``k`` most similar ``patch`` x ``patch`` patches of each reference patch on the
    ``stride`` grid, within a ``search`` x ``search`` window (see the module docstring for the
    exact definitions and the order of ties).

    ``x``: (B, C, H, W) float image (grey, or RGB matched on its luma). Defaults are BM3D's
    "np" profile (8x8 blocks, step 3, window 39, 16 blocks). ``backend``: ``None`` (the
    compiled kernel of the tensor's device, else the reference), ``"cpu"``, ``"cuda"`` or
    ``"reference"``.
    """
    _check(x, patch, search, k, stride)
    be = _dispatch.resolve("block_match", x, backend, triton_op=False)
    if be == "reference":
        return block_match_reference(x, patch, search, k, stride)
    h, w = x.shape[-2:]
    index, dist = torch.ops.fastdenoise.block_match(matching_guide(x).contiguous(), patch, search, k, stride)
    rows = torch.tensor(grid_positions(h, patch, stride), device=x.device)
    cols = torch.tensor(grid_positions(w, patch, stride), device=x.device)
    return BlockMatches(index, dist, rows, cols)


def _fake_block_match(guide: torch.Tensor, patch: int, search: int, k: int, stride: int):
    n, h, w = guide.shape
    ny = (h - patch + stride - 1) // stride + 1
    nx = (w - patch + stride - 1) // stride + 1
    return (guide.new_empty((n, ny, nx, k), dtype=torch.int64),
            guide.new_empty((n, ny, nx, k), dtype=torch.float32))


if _ext.extension() is not None and "fastdenoise::block_match" in _ext.build_info()["ops"]:
    torch.library.register_fake("fastdenoise::block_match")(_fake_block_match)
