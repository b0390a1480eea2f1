"""fastdenoise.metrics.ssim against scikit-image's structural_similarity with Wang et al.'s
settings (Gaussian window sigma 1.5, population covariance), on random and Set12 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity    # the test extra: fail, never skip

from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.io import read_image
from fastdenoise.metrics import quantize_uint8, ssim

TOL = 1e-8          # observed: 0 to a few 1e-16 (both compute in float64)


def skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """One (C, H, W) pair through scikit-image, grey (C = 1) as a 2-D image, colour with
    channel_axis (H, W, C); float arrays as float64 (scikit-image keeps float32 otherwise)."""
    if a.dtype.kind == "f":
        a, b = a.astype(np.float64), b.astype(np.float64)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range)
    if a.shape[0] == 1:
        return float(structural_similarity(a[0], b[0], **kw))
    return float(structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), channel_axis=-1, **kw))


def check_against_skimage(x, y, data_range=1.0, tol=TOL):
    got = ssim(x, y, data_range=data_range)
    assert got.shape == (x.shape[0],) and got.dtype == torch.float64
    want = [skimage_ssim(x[i].numpy(), y[i].numpy(), data_range) for i in range(x.shape[0])]
    diff = max(abs(g - w) for g, w in zip(got.tolist(), want))
    assert diff <= tol, (got.tolist(), want)
    return got


@pytest.fixture(scope="module")
def set12(shared_dir):
    paths = sorted((shared_dir / "data" / "set12").glob("*.png"))
    assert len(paths) == 12
    return [read_image(p) for p in paths]             # float32 (H, W, 1)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def noisy(img: np.ndarray, sigma255: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0, sigma255 / 255.0, img.shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Against scikit-image
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 1, 23, 31), (2, 3, 40, 33), (1, 2, 11, 11), (2, 1, 12, 57)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_images_match_skimage(shape, dtype):
    x = torch.rand(shape, dtype=dtype)
    y = (x + 0.2 * torch.randn(shape, dtype=dtype)).clamp(0, 1)
    got = check_against_skimage(x, y)
    assert ((got > 0) & (got < 1)).all()
    # Independent images (low SSIM, negative values possible) too.
    check_against_skimage(torch.rand(shape, dtype=dtype), torch.rand(shape, dtype=dtype))


def test_data_range_and_uint8_match_skimage():
    a = torch.randint(0, 256, (2, 3, 30, 26), dtype=torch.uint8)
    b = (a.int() + torch.randint(-20, 21, a.shape)).clamp(0, 255).to(torch.uint8)
    got = check_against_skimage(a, b, data_range=255)
    # Same images as floats in [0, 1]: the same SSIM (C1, C2 scale with data_range).
    assert torch.allclose(ssim(a.double() / 255, b.double() / 255, data_range=1.0), got, atol=1e-12, rtol=0)
    x = torch.rand(2, 1, 20, 24, dtype=torch.float64) * 4 - 1
    y = x + 0.3 * torch.randn_like(x)
    check_against_skimage(x, y, data_range=4.0)


def test_set12_grey_matches_skimage(set12):
    by_size = {}
    for img in set12:
        by_size.setdefault(img.shape, []).append(img)
    for sigma255, group in zip((25, 50), by_size.values()):
        clean = torch.cat([to_tensor(i) for i in group])                       # batch of 7 / 5
        dirty = torch.cat([to_tensor(noisy(i, sigma255, k)) for k, i in enumerate(group)])
        got = check_against_skimage(dirty, clean)
        assert ((got > 0.05) & (got < 0.9)).all(), got
        # uint8, as denoising papers report it (quantised noisy image vs the 8-bit original).
        check_against_skimage(quantize_uint8(dirty), quantize_uint8(clean), data_range=255)


def test_set12_colour_matches_skimage(set12):
    big = [i for i in set12 if i.shape == (512, 512, 1)]
    clean = np.concatenate(big[:3], axis=2)                                    # (512, 512, 3)
    clean2 = np.concatenate(big[2:5], axis=2)
    x = torch.cat([to_tensor(clean), to_tensor(clean2)])                     # (2, 3, 512, 512)
    y = torch.cat([to_tensor(noisy(clean, 15, 1)), to_tensor(noisy(clean2, 30, 2))])
    got = check_against_skimage(y, x)
    assert got[0] > got[1]                                                    # less noise, higher SSIM
    # Per-channel mean, then mean over channels.
    per_channel = torch.stack([ssim(y[:, c:c + 1], x[:, c:c + 1]) for c in range(3)], dim=1)
    assert torch.allclose(got, per_channel.mean(dim=1), atol=1e-14, rtol=0)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

def test_identical_images_give_one():
    x = torch.rand(3, 3, 17, 29)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-15, rtol=0)
    u = torch.randint(0, 256, (2, 1, 11, 14), dtype=torch.uint8)
    assert torch.allclose(ssim(u, u, data_range=255), torch.ones(2, dtype=torch.float64), atol=1e-15, rtol=0)
    const = torch.full((1, 1, 12, 12), 0.5)
    assert ssim(const, const).item() == pytest.approx(1.0, abs=1e-15)


def test_symmetric_per_image_and_layouts():
    x = torch.rand(3, 2, 25, 19)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ref = ssim(x, y)
    assert torch.allclose(ssim(y, x), ref, atol=1e-15, rtol=0)
    for i in range(3):                                                         # batch = per image
        assert torch.allclose(ssim(x[i:i + 1], y[i:i + 1]), ref[i:i + 1], atol=1e-15, rtol=0)
    cl_x = x.contiguous(memory_format=torch.channels_last)
    cl_y = y.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(ssim(cl_x, cl_y), ref, atol=1e-14, rtol=0)
    big = torch.rand(3, 2, 25, 40)
    big[..., :19] = x
    assert torch.allclose(ssim(big[..., :19], y), ref, atol=1e-14, rtol=0)     # non-contiguous
    before_x, before_y = x.clone(), y.clone()
    ssim(x, y)
    assert torch.equal(x, before_x) and torch.equal(y, before_y)


def test_scale_invariance_with_data_range():
    x = torch.rand(2, 1, 21, 22, dtype=torch.float64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(ssim(255 * x, 255 * y, data_range=255), ssim(x, y), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ShapeError, match=r"y: expected the shape of x \[2, 1, 16, 16\], got \[2, 1, 16, 17\]"):
        ssim(x, torch.rand(2, 1, 16, 17))
    with pytest.raises(ShapeError, match=r"x: expected 4 dims \(B, C, H, W\), got 3"):
        ssim(x[0], x[0])
    with pytest.raises(ShapeError, match=r"x: expected H and W of at least 11 .*got H=10, W=16"):
        ssim(x[..., :10, :], x[..., :10, :])
    with pytest.raises(ShapeError, match="at least 11"):
        ssim(torch.rand(1, 3, 40, 8), torch.rand(1, 3, 40, 8))
    with pytest.raises(DTypeError, match="x: expected dtype"):
        ssim(x.to(torch.bool), x.to(torch.bool))
    with pytest.raises(DTypeError, match="y: expected dtype"):
        ssim(x, x.to(torch.complex64))
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, data_range=0)
    from fastdenoise.metrics import psnr
    for fn in (ssim, psnr):
        with pytest.raises(ValueError, match=r"data_range: expected a finite positive number, got inf"):
            fn(x, x, data_range=float("inf"))
        for bad in (None, "1", True, torch.tensor([1.0, 2.0])):
            with pytest.raises(TypeError, match=r"data_range: expected a positive real number, got"):
                fn(x, x, data_range=bad)
    assert float(ssim(x, x, data_range=np.float32(255))[0]) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        ssim(x.numpy(), x.numpy())
    with pytest.raises(ShapeError, match="non-empty"):
        ssim(torch.rand(0, 1, 16, 16), torch.rand(0, 1, 16, 16))


def test_ssim_is_differentiable():
    """SSIM as a loss: inputs that require grad give a gradient (finite differences agree), and the
    inputs are left as they were."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 14, 13, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.rand(2, 1, 14, 13, dtype=torch.float64, generator=gen)
    before = x.detach().clone()
    assert torch.autograd.gradcheck(lambda a: ssim(a, y), (x,))
    assert torch.equal(x.detach(), before)
