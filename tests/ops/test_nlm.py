"""fastdenoise.ops.nlm_filter: the reference against the definition, the kernels against the
reference, limiting cases, bad input, opcheck."""

from __future__ import annotations

import math

import pytest
import torch

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import nlm_filter, nlm_reference
from fastdenoise.ops.nlm import patch_taps

HAVE_CPU = fastdenoise._ext.has_kernel("nlm", "CPU")


def _cpu():
    if not HAVE_CPU:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


def _reflect(i, n):
    if n == 1:
        return 0
    period = 2 * (n - 1)
    m = i % period
    return m if m < n else period - m


def _brute_force(x, sigma, h, patch, search):
    """The definition, pixel by pixel, in float64."""
    x = x.double()
    n, c, height, width = x.shape
    p, r = patch // 2, search // 2

    def px(b, y, xx):
        return x[b, :, _reflect(y, height), _reflect(xx, width)]

    g = [math.exp(-(k - p) ** 2 / (2 * (patch / 3.5) ** 2)) for k in range(patch)]
    g = [v / sum(g) for v in g]
    out = torch.empty_like(x)
    for b in range(n):
        for y in range(height):
            for xx in range(width):
                num, den = torch.zeros(c, dtype=torch.float64), 0.0
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        d2 = sum(g[u + p] * g[v + p] *
                                 ((px(b, y + u, xx + v) - px(b, y + dy + u, xx + dx + v)) ** 2).sum().item()
                                 for u in range(-p, p + 1) for v in range(-p, p + 1)) / c
                        w = math.exp(-max(d2 - 2 * sigma ** 2, 0.0) / h ** 2)
                        num += w * px(b, y + dy, xx + dx)
                        den += w
                out[b, :, y, xx] = num / den
    return out


@pytest.mark.parametrize("shape,patch,search", [((1, 1, 5, 6), 3, 5), ((2, 2, 4, 3), 3, 3), ((1, 1, 1, 2), 3, 5)])
def test_reference_is_the_definition(shape, patch, search):
    x = torch.rand(shape)
    torch.testing.assert_close(nlm_reference(x, 0.05, 0.1, patch, search).double(),
                               _brute_force(x, 0.05, 0.1, patch, search).to(x.dtype).double(),
                               rtol=1e-6, atol=1e-6)


def test_patch_taps():
    g = patch_taps(7)
    assert g.shape == (7,) and abs(g.sum().item() - 1) < 1e-12
    assert torch.equal(g, g.flip(0)) and g[3] == g.max() and g[0] == g.min()
    assert patch_taps(1).tolist() == [1.0]


def test_limiting_cases():
    x = torch.rand(2, 3, 12, 9, dtype=torch.float64)
    # tiny h, no variance subtracted: only the patch itself (distance 0) has weight
    torch.testing.assert_close(nlm_reference(x, 0.0, 1e-6, 5, 7), x)
    # huge sigma: every weight is 1, the output is the mean of the reflected search window
    big = nlm_reference(x, 10.0, 0.1, 5, 3)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    torch.testing.assert_close(big, torch.nn.functional.avg_pool2d(padded, 3, stride=1))


@pytest.mark.parametrize("shape,patch,search", [
    ((2, 1, 23, 31), 7, 21), ((1, 3, 17, 20), 5, 13), ((1, 1, 5, 4), 3, 7), ((2, 2, 9, 9), 7, 21),
    ((1, 1, 40, 37), 1, 3), ((1, 4, 2, 1), 3, 3)])
def test_cpu_kernel_matches_reference(shape, patch, search):
    x = torch.rand(shape)
    before = x.clone()
    sigma = torch.rand(shape[0]) * 0.1
    h = 0.05 + torch.rand(shape[0]) * 0.1
    got = nlm_filter(x, sigma, h, patch, search, backend=_cpu())
    assert torch.equal(x, before)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, nlm_reference(x, sigma, h, patch, search), rtol=1e-5, atol=2e-6)


def test_cpu_kernel_layouts_dtypes_and_noise():
    clean = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(2, 3, 40, 48).contiguous()
    noisy = clean + 0.1 * torch.randn_like(clean)
    ref = nlm_reference(noisy, 0.1, 0.06, 7, 11)
    out = nlm_filter(noisy, 0.1, 0.06, 7, 11, backend=_cpu())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
    assert (out - clean).square().mean() < 0.25 * (noisy - clean).square().mean()   # it denoises
    cl = noisy.contiguous(memory_format=torch.channels_last)
    out_cl = nlm_filter(cl, 0.1, 0.06, 7, 11, backend=_cpu())
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=0, atol=0)
    # the other dtypes against the reference on the same (rounded) input: float16 / bfloat16 to
    # the rounding of their output (half an ulp below 1: 2^-11 / 2^-8), float64 to float32's
    for dtype, atol in ((torch.float16, 2.0 ** -11 + 2e-6), (torch.bfloat16, 2.0 ** -8 + 2e-6),
                        (torch.float64, 2e-6)):
        xin = noisy.to(dtype)
        got = nlm_filter(xin, 0.1, 0.06, 7, 11, backend=_cpu())
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), nlm_reference(xin, 0.1, 0.06, 7, 11).double(), rtol=1e-5,
                                   atol=atol)


@pytest.mark.parametrize("h", [1e-20, 1e-30])
def test_tiny_h_matches_reference(h):
    """An h whose square underflows in float32 (1 / h^2 is inf there): the weights are 1 for
    distances within 2 sigma^2 and 0 beyond, no NaN (the CPU kernel once formed 0 * inf)."""
    _cpu()
    flat = torch.full((1, 1, 9, 8), 0.5)
    noisy = torch.rand(2, 3, 9, 8, generator=torch.Generator().manual_seed(5))
    for x, sigma in ((flat, 0.0), (noisy, 0.0), (noisy, 0.2)):
        got = nlm_filter(x, sigma, h, 3, 5)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, nlm_reference(x, sigma, h, 3, 5), rtol=1e-5, atol=1e-6)


def test_default_dispatch_and_opcheck():
    x = torch.rand(2, 3, 11, 13)
    torch.testing.assert_close(nlm_filter(x, 0.05, 0.1), nlm_reference(x, 0.05, 0.1), rtol=1e-5, atol=2e-6)
    _cpu()
    s, h = torch.full((2,), 0.05), torch.full((2,), 0.1)
    torch.library.opcheck(torch.ops.fastdenoise.nlm.default, (x, s, h, 5, 7))


def test_bad_input():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(errors.ShapeError, match=r"x: expected 4 dims .*got 2"):
        nlm_filter(x[0, 0], 0.1, 0.1)
    with pytest.raises(errors.DTypeError, match="x: expected dtype .*got int32"):
        nlm_filter(x.int(), 0.1, 0.1)
    with pytest.raises(errors.ShapeError, match="x: expected a non-empty tensor"):
        nlm_filter(x[:0], 0.1, 0.1)
    with pytest.raises(ValueError, match="patch: expected a positive odd int, got 4"):
        nlm_filter(x, 0.1, 0.1, patch=4)
    with pytest.raises(ValueError, match="patch: expected at most 63, got 65"):
        nlm_filter(x, 0.1, 0.1, patch=65)
    with pytest.raises(ValueError, match="search: expected a positive odd int, got 0"):
        nlm_filter(x, 0.1, 0.1, search=0)
    with pytest.raises(ValueError, match="h: expected a finite positive value, got 0"):
        nlm_filter(x, 0.1, 0)
    with pytest.raises(ValueError, match="sigma: expected a finite non-negative value, got -0.1"):
        nlm_filter(x, -0.1, 0.1)
    with pytest.raises(ValueError, match="sigma: expected a finite non-negative value, got nan"):
        nlm_filter(x, float("nan"), 0.1)
    with pytest.raises(ValueError, match="h: expected a finite positive value, got inf"):
        nlm_filter(x, 0.1, float("inf"))
    # as the kernels take them, in float32: 1e-50 is 0 there, 1e39 is inf
    with pytest.raises(ValueError, match=r"h: expected a finite positive value, got 1e-50 \(0 in float32"):
        nlm_filter(x, 0.1, 1e-50)
    with pytest.raises(ValueError, match=r"sigma: expected a finite non-negative value, got 1e\+39 \(inf in float32"):
        nlm_filter(x, 1e39, 0.1)
    # tensors: their values are checked too (NaN, inf, a zero h, a negative sigma)
    x2 = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"h: expected finite positive values, got \[0.1, 0\]"):
        nlm_filter(x2, 0.1, torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match=r"sigma: expected finite non-negative values, got \[-1, 0.1\]"):
        nlm_filter(x2, torch.tensor([-1.0, 0.1]), 0.1)
    with pytest.raises(ValueError, match=r"sigma: expected finite non-negative values, got \[nan\]"):
        nlm_filter(x2, torch.tensor([float("nan")]), 0.1)
    with pytest.raises(TypeError, match="h: expected a number or a real tensor, got a torch.bool tensor"):
        nlm_filter(x2, 0.1, torch.tensor([True, True]))
    with pytest.raises(errors.ShapeError, match=r"sigma: expected a number or a tensor of shape \(1,\), got \[3\]"):
        nlm_filter(x, torch.ones(3), 0.1)
    with pytest.raises(TypeError, match="h: expected a number or a tensor, got str"):
        nlm_filter(x, 0.1, "0.1")
    with pytest.raises(errors.DeviceError, match="sigma: expected a tensor on cpu"):
        nlm_filter(x, torch.ones(1, device="meta"), 0.1)
    with pytest.raises(errors.DeviceError, match="backend='cuda'"):
        nlm_filter(x, 0.1, 0.1, backend="cuda")


# ---------------------------------------------------------------- CUDA (GPU machine only)

@pytest.mark.cuda
@pytest.mark.parametrize("shape,patch,search", [
    ((2, 1, 70, 90), 7, 21), ((1, 3, 33, 65), 5, 13), ((1, 1, 5, 4), 3, 7), ((2, 3, 130, 47), 7, 35)])
def test_cuda_kernel_matches_reference(shape, patch, search):
    x = torch.rand(shape)
    sigma, h = torch.rand(shape[0]) * 0.1, 0.05 + torch.rand(shape[0]) * 0.1
    got = nlm_filter(x.cuda(), sigma.cuda(), h.cuda(), patch, search, backend="cuda")
    torch.testing.assert_close(got.cpu(), nlm_reference(x, sigma, h, patch, search), rtol=1e-5, atol=2e-6)
    cpu = nlm_filter(x, sigma, h, patch, search, backend="cpu")
    torch.testing.assert_close(got.cpu(), cpu, rtol=1e-5, atol=2e-6)


@pytest.mark.cuda
def test_cuda_opcheck():
    x = torch.rand(2, 3, 20, 24, device="cuda")
    s, h = torch.full((2,), 0.05, device="cuda"), torch.full((2,), 0.1, device="cuda")
    torch.library.opcheck(torch.ops.fastdenoise.nlm.default, (x, s, h, 7, 21))
