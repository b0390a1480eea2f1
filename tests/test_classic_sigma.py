"""fastdenoise.classic.estimate_sigma: accuracy on Set12 (per image), batches, colour, memory
formats, dtypes, invariances and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdenoise.classic import estimate_sigma
from fastdenoise.errors import DTypeError, ShapeError
from fastdenoise.io import read_image        # needs Pillow (the test extra) to read Set12


@pytest.fixture(scope="module")
def set12(shared_dir):
    """The twelve Set12 images, float32 (H, W, 1) in [0, 1] (KAIR's uint2single)."""
    paths = sorted((shared_dir / "data" / "set12").glob("*.png"))
    assert len(paths) == 12
    return [(p.name, read_image(p)) for p in paths]


def add_noise(img: np.ndarray, sigma255: float) -> torch.Tensor:
    """KAIR's main_test_dncnn.py recipe: per image np.random.seed(0), float64 Gaussian noise of
    standard deviation sigma/255 added to the float32 image, not clipped -> (1, C, H, W)."""
    np.random.seed(0)
    noisy = img.copy()
    noisy += np.random.normal(0, sigma255 / 255.0, img.shape)
    return torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1)))[None]


def noisy_batches(set12, sigma255):
    """The noisy Set12 images as batches of equal size (seven 256x256, five 512x512)."""
    groups = {}
    for name, img in set12:
        groups.setdefault(img.shape, []).append((name, add_noise(img, sigma255)))
    for items in groups.values():
        yield [n for n, _ in items], torch.cat([t for _, t in items])


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma255", [15, 25, 50])
def test_set12_every_image_within_5_percent(set12, sigma255):
    true = sigma255 / 255.0
    errors = {}
    for names, x in noisy_batches(set12, sigma255):
        est = estimate_sigma(x)
        assert est.shape == (x.shape[0],) and est.dtype == torch.float32
        for name, e in zip(names, est.tolist()):
            errors[name] = e / true - 1.0
    assert len(errors) == 12
    print(f"sigma={sigma255}: " + " ".join(f"{n}:{100 * e:+.2f}%" for n, e in sorted(errors.items())))
    worst = max(errors, key=lambda n: abs(errors[n]))
    assert abs(errors[worst]) <= 0.05, (worst, errors)


def test_pure_noise_and_flat_images():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(3, 1, 128, 160, generator=g)
    sigmas = torch.tensor([0.01, 0.1, 1.0])
    x = noise * sigmas.view(3, 1, 1, 1) + torch.linspace(0, 1, 160)          # a ramp plus noise
    est = estimate_sigma(x)
    assert torch.allclose(est / sigmas, torch.ones(3), atol=0.03), est


def test_large_image_uses_subsampled_positions():
    # 700 x 650: more than 2^18 patch positions, so every 2nd position is used.
    g = torch.Generator().manual_seed(2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 700), torch.linspace(0, 1, 650), indexing="ij")
    clean = 0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy)
    x = (clean + 0.05 * torch.randn(700, 650, generator=g))[None, None]
    assert estimate_sigma(x).item() == pytest.approx(0.05, rel=0.02)


def test_constant_image_gives_zero():
    est = estimate_sigma(torch.full((2, 3, 40, 36), 0.25))
    assert torch.equal(est, torch.zeros(2))


# --------------------------------------------------------------------------------------------
# Batches, colour, layouts, dtypes, invariances
# --------------------------------------------------------------------------------------------

def test_batch_gives_per_image_values(set12):
    imgs = [img for _, img in set12 if img.shape == (256, 256, 1)][:3]
    xs = [add_noise(img, s) for img, s in zip(imgs, (10, 30, 60))]
    batch = estimate_sigma(torch.cat(xs))
    assert batch.shape == (3,)
    singles = torch.cat([estimate_sigma(x) for x in xs])
    assert torch.allclose(batch, singles, rtol=1e-6, atol=0)
    assert torch.allclose(batch * 255, torch.tensor([10.0, 30.0, 60.0]), rtol=0.05)


def test_colour_images_pool_channels(set12):
    # Colour images made of three different Set12 images, each channel with its own noise.
    grey = [img for _, img in set12 if img.shape == (512, 512, 1)]
    rgb = np.concatenate(grey[:3], axis=2)                                  # (512, 512, 3)
    rgb2 = np.concatenate([grey[3], grey[4], 0.5 * grey[3] + 0.5 * grey[4]], axis=2)
    x = torch.cat([add_noise(rgb, 25), add_noise(rgb2, 25)])               # (2, 3, 512, 512)
    assert x.shape == (2, 3, 512, 512)
    est = estimate_sigma(x)
    assert est.shape == (2,)
    assert torch.allclose(est * 255, torch.full((2,), 25.0), rtol=0.05), est * 255
    # The same noise level in a colour image and in each of its channels alone.
    per_channel = torch.cat([estimate_sigma(x[:1, c:c + 1]) for c in range(3)])
    assert torch.allclose(per_channel * 255, torch.full((3,), 25.0), rtol=0.05)


def test_channels_last_and_non_contiguous(set12):
    x = torch.cat([add_noise(set12[0][1], 25)] * 3, dim=1)                # (1, 3, 256, 256)
    x = x + 0.01 * torch.randn_like(x)
    ref = estimate_sigma(x)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.allclose(estimate_sigma(cl), ref, rtol=1e-6, atol=0)
    wide = torch.zeros(1, 3, 256, 300)
    wide[..., :256] = x
    view = wide[..., :256]
    assert not view.is_contiguous()
    assert torch.allclose(estimate_sigma(view), ref, rtol=1e-6, atol=0)


def test_input_not_modified():
    x = torch.rand(2, 3, 48, 50)
    before = x.clone()
    estimate_sigma(x)
    assert torch.equal(x, before)
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    estimate_sigma(x)
    assert torch.equal(x, before)


def test_scale_and_shift(set12):
    x = torch.cat([add_noise(set12[i][1], 25) for i in (0, 4)])
    est = estimate_sigma(x)
    assert torch.allclose(estimate_sigma(2 * x), 2 * est, rtol=1e-5, atol=0)
    assert torch.allclose(estimate_sigma(0.1 * x), 0.1 * est, rtol=1e-4, atol=0)
    assert torch.allclose(estimate_sigma(x + 0.3), est, rtol=1e-4, atol=0)


def test_dtypes():
    g = torch.Generator().manual_seed(3)
    x = (0.5 + 0.1 * torch.randn(2, 1, 64, 72, generator=g, dtype=torch.float64))
    ref = estimate_sigma(x)
    assert ref.dtype == torch.float64
    assert torch.allclose(ref, torch.full((2,), 0.1, dtype=torch.float64), rtol=0.05)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        est = estimate_sigma(x.to(dt))
        assert est.dtype == torch.float32 and est.shape == (2,)
        tol = 1e-5 if dt == torch.float32 else 0.02
        assert torch.allclose(est.double(), ref, rtol=tol), (dt, est, ref)


def test_gamma_threshold_matches_scipy():
    from scipy.stats import gamma        # scipy comes with scikit-image (the test extra)

    from fastdenoise.classic import _gamma_quantile, _texture_threshold

    for shape, p in [(24.5, 0.999), (24.5, 0.99), (12.5, 0.5), (1.0, 0.9)]:
        assert _gamma_quantile(shape, p) == pytest.approx(gamma.ppf(p, shape), rel=1e-10)
    # 7x7 patches: Gamma(49/2, scale = 2 * 35 / 49), tr(D^T D) = 7 * 5 * 1/2 * 2 = 35.
    assert _texture_threshold(7, 0.999) == pytest.approx(gamma.ppf(0.999, 24.5, scale=70 / 49), rel=1e-10)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(ShapeError, match=r"x: expected 4 dims \(B, C, H, W\), got 3"):
        estimate_sigma(torch.rand(1, 64, 64))
    with pytest.raises(DTypeError, match="x: expected dtype"):
        estimate_sigma(torch.randint(0, 255, (1, 1, 64, 64), dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"x: expected H and W of at least 32 .*got H=31, W=64"):
        estimate_sigma(torch.rand(1, 1, 31, 64))
    with pytest.raises(ShapeError, match="at least 32"):
        estimate_sigma(torch.rand(2, 3, 64, 20))
    with pytest.raises(ShapeError, match="non-empty"):
        estimate_sigma(torch.rand(0, 1, 64, 64))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        estimate_sigma(np.zeros((1, 1, 64, 64), np.float32))
    # The smallest size taken works.
    assert estimate_sigma(torch.rand(1, 1, 32, 32)).shape == (1,)


def test_bad_input_checked_before_any_computation():
    # Metadata-only checks: a meta tensor of the wrong shape raises the typed error too.
    with pytest.raises(ShapeError, match="at least 32"):
        estimate_sigma(torch.empty(1, 1, 16, 16, device="meta"))
