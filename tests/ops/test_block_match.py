"""fastdenoise.ops.block_match: the reference against a brute-force definition, the compiled
kernels against the reference, tie order, guide for colour, bad input, opcheck."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import block_match, block_match_reference
from fastdenoise.ops.block_match import grid_positions, matching_guide

HAVE_CPU = fastdenoise._ext.has_kernel("block_match", "CPU")
CONFIGS = [  # (shape, patch, search, k, stride)
    ((2, 1, 37, 41), 8, 39, 16, 3),
    ((1, 1, 33, 20), 4, 7, 5, 1),
    ((3, 1, 25, 31), 5, 11, 16, 2),
    ((1, 1, 9, 12), 1, 3, 4, 1),
    ((1, 3, 30, 27), 8, 15, 32, 3),
    ((2, 2, 19, 19), 7, 21, 12, 4),
    # the widest window (63: two 40-column tiles in the CPU kernel) and k above one window row
    # (its selection takes whole rows until k are in)
    ((1, 1, 70, 107), 6, 63, 70, 5),
]


def _cpu():
    if not HAVE_CPU:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


def _brute_force(x, patch, search, k, stride):
    """Every candidate, by explicit loops, in float64; sorted by (distance, reference first, raster)."""
    g = matching_guide(x).double()
    n, h, w = g.shape
    r = search // 2
    out_i, out_d = [], []
    for b in range(n):
        for py in grid_positions(h, patch, stride):
            for px in grid_positions(w, patch, stride):
                ref = g[b, py:py + patch, px:px + patch]
                cands = []
                for y in range(max(0, py - r), min(h - patch, py + r) + 1):
                    for x_ in range(max(0, px - r), min(w - patch, px + r) + 1):
                        d = (g[b, y:y + patch, x_:x_ + patch] - ref).square().mean().item()
                        cands.append((d, -1 if (y, x_) == (py, px) else y * w + x_, y * w + x_))
                cands.sort()
                out_i.append([c[2] for c in cands[:k]])
                out_d.append([c[0] for c in cands[:k]])
    return torch.tensor(out_i), torch.tensor(out_d, dtype=torch.float64)


def _separated(d_sorted: torch.Tensor, tol: float) -> torch.Tensor:
    """Mask of the entries whose distance is more than tol away from both neighbours."""
    gap = d_sorted.diff(dim=-1).abs() > tol
    left = torch.cat([torch.ones_like(gap[..., :1]), gap], -1)
    right = torch.cat([gap, torch.ones_like(gap[..., :1])], -1)
    return left & right


def test_grid_positions_cover_the_image():
    assert grid_positions(37, 8, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert grid_positions(20, 8, 3) == [0, 3, 6, 9, 12]
    assert grid_positions(8, 8, 3) == [0]
    for extent, patch, stride in itertools.product([8, 9, 17, 40], [1, 4, 8], [1, 2, 3, 5]):
        pos = grid_positions(extent, patch, stride)
        assert pos[0] == 0 and pos[-1] == extent - patch and sorted(set(pos)) == pos
        assert all(b - a <= stride for a, b in zip(pos, pos[1:]))


def test_matching_guide():
    x = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(matching_guide(x), x.sum(1) / 3)
    g = torch.rand(2, 1, 5, 6)
    assert torch.equal(matching_guide(g), g[:, 0])
    assert matching_guide(x.half()).dtype == torch.float32


@pytest.mark.parametrize("cfg", CONFIGS[:4])
def test_reference_is_the_brute_force_definition(cfg):
    shape, patch, search, k, stride = cfg
    x = torch.rand(shape)
    res = block_match_reference(x, patch, search, k, stride)
    idx, dist = _brute_force(x, patch, search, k, stride)
    ny, nx = len(res.rows), len(res.cols)
    assert res.index.shape == (shape[0], ny, nx, k) and res.index.dtype == torch.int64
    assert res.distance.dtype == torch.float32
    assert torch.equal(res.index.reshape(-1, k), idx)
    torch.testing.assert_close(res.distance.reshape(-1, k).double(), dist, rtol=1e-6, atol=1e-9)


def test_reference_patch_first_and_ties_in_raster_order():
    x = torch.full((1, 1, 12, 14), 0.5)          # every patch equal: all distances 0
    res = block_match_reference(x, 4, 5, 9, 3)
    w = 14
    for i, py in enumerate(res.rows.tolist()):
        for j, px in enumerate(res.cols.tolist()):
            window = [y * w + x_ for y in range(max(0, py - 2), min(12 - 4, py + 2) + 1)
                      for x_ in range(max(0, px - 2), min(14 - 4, px + 2) + 1)]
            expect = [py * w + px] + [c for c in window if c != py * w + px][:8]
            assert res.index[0, i, j].tolist() == expect
    assert torch.all(res.distance == 0)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_cpu_kernel_matches_reference(cfg):
    shape, patch, search, k, stride = cfg
    x = torch.rand(shape)
    before = x.clone()
    got = block_match(x, patch, search, k, stride, backend=_cpu())
    ref = block_match_reference(x, patch, search, k, stride)
    assert torch.equal(x, before)
    assert torch.equal(got.rows, ref.rows) and torch.equal(got.cols, ref.cols)
    assert got.index.shape == ref.index.shape and got.index.dtype == torch.int64
    torch.testing.assert_close(got.distance, ref.distance, rtol=1e-5, atol=1e-7)
    # the same matches wherever the distances are not tied to rounding
    sep = _separated(ref.distance.double(), 1e-5)
    assert sep.float().mean() > 0.9                    # random data: nearly all distinct
    assert torch.equal(got.index[sep], ref.index[sep])
    # the reference patch comes first, at distance 0
    w = shape[-1]
    first = got.rows.view(1, -1, 1) * w + got.cols.view(1, 1, -1)
    assert torch.equal(got.index[..., 0], first.expand_as(got.index[..., 0]))
    assert torch.all(got.distance[..., 0] == 0)


def test_cpu_kernel_on_quantised_image_is_exact():
    """Few grey levels give many equal distances. With small integer values every sum is exact in
    float32 and float64 alike, so the distances are exactly equal and the tie order (reference
    first, then raster order) must match the reference exactly."""
    x = torch.randint(0, 4, (2, 1, 23, 26)).float()
    got = block_match(x, 4, 9, 20, 2, backend=_cpu())
    ref = block_match_reference(x, 4, 9, 20, 2)
    assert torch.equal(got.index, ref.index)
    torch.testing.assert_close(got.distance, ref.distance, rtol=1e-6, atol=0)


def test_cpu_kernel_layouts_dtypes_and_determinism():
    x = torch.rand(2, 3, 24, 29)
    base = block_match(x, 6, 11, 8, 2, backend=_cpu())
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)     # same values, non-contiguous
    assert not strided.is_contiguous()
    for variant in (x.contiguous(memory_format=torch.channels_last), strided, torch.cat([x, x], 1)[:, :3]):
        other = block_match(variant, 6, 11, 8, 2, backend=_cpu())
        assert torch.equal(other.index, base.index) and torch.equal(other.distance, base.distance)
    again = block_match(x, 6, 11, 8, 2, backend=_cpu())
    assert torch.equal(again.index, base.index) and torch.equal(again.distance, base.distance)
    # the other dtypes: exactly the float32 matches of the same (rounded) values
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        xr = x.to(dtype)
        got = block_match(xr, 6, 11, 8, 2, backend=_cpu())
        want = block_match(xr.float(), 6, 11, 8, 2, backend=_cpu())
        assert got.distance.dtype == torch.float32
        assert torch.equal(got.index, want.index) and torch.equal(got.distance, want.distance)
        ref = block_match_reference(xr.float(), 6, 11, 8, 2)
        assert torch.equal(got.index, ref.index)
    # colour is matched on the luma: the same as matching the luma image itself
    luma = block_match(matching_guide(x).unsqueeze(1), 6, 11, 8, 2, backend=_cpu())
    assert torch.equal(luma.index, base.index)


def test_default_backend_on_cpu():
    x = torch.rand(1, 1, 16, 16)
    res = block_match(x, 4, 5, 4, 2)
    ref = block_match_reference(x, 4, 5, 4, 2)
    torch.testing.assert_close(res.distance, ref.distance, rtol=1e-5, atol=1e-7)


def test_opcheck_cpu():
    _cpu()
    g = torch.rand(2, 17, 19)
    torch.library.opcheck(torch.ops.fastdenoise.block_match.default, (g, 4, 7, 6, 3))


def test_bad_input():
    x = torch.rand(1, 1, 20, 20)
    with pytest.raises(errors.ShapeError, match=r"x: expected 4 dims .*got 3"):
        block_match(x[0])
    with pytest.raises(errors.DTypeError, match="x: expected dtype .*got uint8"):
        block_match((x * 255).to(torch.uint8))
    with pytest.raises(errors.ShapeError, match="x: expected a non-empty tensor"):
        block_match(torch.rand(0, 1, 20, 20))
    with pytest.raises(errors.ShapeError, match="x: expected H and W of at least patch=8, got H=7"):
        block_match(torch.rand(1, 1, 7, 20))
    with pytest.raises(ValueError, match="search: expected an odd window size of at most 63, got 40"):
        block_match(x, search=40)
    with pytest.raises(ValueError, match="search: .*got 65"):
        block_match(x, search=65)
    with pytest.raises(ValueError, match="stride: expected a positive int, got 0"):
        block_match(x, stride=0)
    with pytest.raises(ValueError, match="k: expected a positive int, got 2.0"):
        block_match(x, k=2.0)
    with pytest.raises(errors.ShapeError, match=r"k: expected at most 169 .*got 170"):
        block_match(x, patch=8, search=39, k=170)
    with pytest.raises(errors.DeviceError, match="backend='cuda'"):
        block_match(x, backend="cuda")
    with pytest.raises(errors.BackendError, match="no Triton kernel"):
        block_match(x, backend="triton")


# ---------------------------------------------------------------- CUDA (GPU machine only)

@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CONFIGS)
def test_cuda_kernel_equals_cpu_kernel_bitwise(cfg):
    shape, patch, search, k, stride = cfg
    x = torch.rand(shape)
    cpu = block_match(x, patch, search, k, stride, backend="cpu")
    gpu = block_match(x.cuda(), patch, search, k, stride, backend="cuda")
    assert gpu.index.is_cuda and gpu.distance.is_cuda
    assert torch.equal(gpu.index.cpu(), cpu.index)
    assert torch.equal(gpu.distance.cpu(), cpu.distance)


@pytest.mark.cuda
def test_cuda_large_window_batch_and_opcheck():
    x = torch.rand(3, 1, 150, 170, device="cuda")
    gpu = block_match(x, 8, 63, 32, 3)
    cpu = block_match(x.cpu(), 8, 63, 32, 3, backend="cpu")
    assert torch.equal(gpu.index.cpu(), cpu.index) and torch.equal(gpu.distance.cpu(), cpu.distance)
    torch.library.opcheck(torch.ops.fastdenoise.block_match.default, (x[:, 0].contiguous(), 8, 39, 16, 3))
