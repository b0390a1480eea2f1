"""fastdenoise.classic.bm3d: quality on Set12 against the published BM3D results, CBM3D against
per-channel BM3D on scikit-image's colour photographs, the API (sigma estimation, stages,
dtypes, memory formats, determinism) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdenoise import classic, errors
from fastdenoise.io import read_image
from fastdenoise.metrics import psnr

# Published mean PSNR of BM3D on Set12 (the table of Zhang et al., "Beyond a Gaussian denoiser",
# IEEE TIP 2017, which the DnCNN/KAIR line of work compares against).
PUBLISHED_SET12 = {15: 32.37, 25: 29.97, 50: 26.72}


def _noisy_set12(shared_dir, sigma255):
    """Per image np.random.seed(0), N(0, sigma/255) added to the float image, not clipped."""
    out = []
    for path in sorted((shared_dir / "data" / "set12").glob("*.png")):
        clean = read_image(path)[..., 0].astype(np.float64)
        np.random.seed(0)
        noisy = clean + np.random.normal(0, sigma255 / 255, clean.shape)
        out.append((path.name, clean, noisy))
    assert len(out) == 12
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sigma255", [15, 25, 50])
def test_set12_matches_published_bm3d(shared_dir, sigma255):
    """Mean PSNR over Set12 within 0.1 dB of the published BM3D result (output clipped to
    [0, 1], PSNR in float64: what a user writing the image gets, to 8-bit rounding)."""
    scores = []
    for name, clean, noisy in _noisy_set12(shared_dir, sigma255):
        x = torch.from_numpy(noisy).float()[None, None]
        out = classic.bm3d(x, sigma255 / 255).double().clamp(0, 1)
        scores.append(psnr(out, torch.from_numpy(clean)[None, None]).item())
        print(f"{name}: {scores[-1]:.3f} dB")
    mean = float(np.mean(scores))
    print(f"sigma {sigma255}: mean {mean:.4f} dB (published {PUBLISHED_SET12[sigma255]:.2f})")
    assert abs(mean - PUBLISHED_SET12[sigma255]) <= 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_cbm3d_beats_per_channel_bm3d(name):
    """Joint filtering in the opponent colour space against grey BM3D on R, G and B separately."""
    data = pytest.importorskip("skimage.data")
    clean = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].double() / 255
    g = torch.Generator().manual_seed(0)
    sigma = 25 / 255
    noisy = (clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)).float()
    joint = classic.bm3d(noisy, sigma).double().clamp(0, 1)
    separate = torch.cat([classic.bm3d(noisy[:, c:c + 1], sigma) for c in range(3)], 1).double().clamp(0, 1)
    p_joint, p_sep = psnr(joint, clean).item(), psnr(separate, clean).item()
    print(f"{name}: CBM3D {p_joint:.3f} dB, per-channel BM3D {p_sep:.3f} dB")
    assert p_joint > p_sep + 0.5


def _smooth(shape):
    n, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(5 * xx + (k + 1) * yy) for k in range(c)])
    return base.expand(n, c, h, w).float()


def test_denoises_and_hard_stage_is_the_first_estimate():
    clean = _smooth((2, 1, 48, 53))
    noisy = clean + 0.1 * torch.randn_like(clean)
    hard = classic.bm3d(noisy, 0.1, stage="hard")
    full = classic.bm3d(noisy, 0.1)
    e_noisy, e_hard, e_full = ((v - clean).square().mean().item() for v in (noisy, hard, full))
    assert e_hard < e_noisy / 4 and e_full < e_hard
    assert not torch.equal(hard, full)


def test_sigma_none_uses_the_estimate_and_tensors_are_per_image():
    clean = _smooth((2, 3, 40, 44))
    noisy = clean + torch.tensor([0.05, 0.12]).view(2, 1, 1, 1) * torch.randn_like(clean)
    est = classic.estimate_sigma(noisy)
    assert torch.equal(classic.bm3d(noisy), classic.bm3d(noisy, est))
    per_image = classic.bm3d(noisy, torch.tensor([0.05, 0.12]))
    assert torch.equal(per_image[1:], classic.bm3d(noisy[1:], 0.12))
    assert torch.equal(per_image[:1], classic.bm3d(noisy[:1], 0.05))


def test_zero_sigma_keeps_the_image():
    x = torch.rand(1, 3, 24, 31)
    torch.testing.assert_close(classic.bm3d(x, 0.0), x, rtol=1e-5, atol=1e-5)


def test_deterministic_bitwise():
    noisy = _smooth((1, 3, 45, 50)) + 0.1 * torch.randn(1, 3, 45, 50)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (2, 1, 2):
            torch.set_num_threads(n)
            outs.append(classic.bm3d(noisy, 0.1))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtype_memory_format_and_input_kept(dtype):
    noisy = (_smooth((2, 3, 33, 29)) + 0.1 * torch.randn(2, 3, 33, 29)).to(dtype)
    cl = noisy.contiguous(memory_format=torch.channels_last)
    before = cl.clone()
    out = classic.bm3d(cl, 0.1)
    assert out.dtype == dtype and out.shape == noisy.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl, before)
    torch.testing.assert_close(out.float(), classic.bm3d(noisy.float(), 0.1).to(dtype).float(), rtol=0, atol=0)


def test_reference_backend_agrees_with_the_kernels():
    """The whole pipeline on the plain PyTorch reference (block matching and filtering) against
    the compiled kernels. The ops' exactness is tested in tests/ops; here a hard-threshold
    decision may flip on float64-vs-float32 rounding and move a few pixels of one group, so the
    images are compared by PSNR and by the share of pixels that differ."""
    clean = _smooth((1, 1, 40, 45))
    noisy = clean + 0.1 * torch.randn_like(clean)
    ref = classic.bm3d(noisy, 0.1, backend="reference")
    cpu = classic.bm3d(noisy, 0.1, backend="cpu")
    close = (ref - cpu).abs() <= 1e-5
    assert close.float().mean() >= 0.99
    assert abs(psnr(ref, clean).item() - psnr(cpu, clean).item()) < 0.01


@pytest.mark.parametrize("kwargs, err, words", [
    (dict(x=torch.rand(1, 2, 32, 32)), errors.ShapeError, "1 \\(grey\\) or 3 \\(RGB\\) channels"),
    (dict(x=torch.rand(1, 1, 7, 32)), errors.ShapeError, "at least 8"),
    (dict(x=torch.rand(32, 32)), errors.ShapeError, "x: expected 4 dims"),
    (dict(x=torch.randint(0, 255, (1, 1, 32, 32), dtype=torch.uint8)), errors.DTypeError, "x"),
    (dict(stage="wiener"), ValueError, "stage: expected 'all' or 'hard'"),
    (dict(profile="lc"), ValueError, "profile: expected one of \\['np'\\]"),
    (dict(sigma=-0.1), ValueError, "sigma: expected a finite non-negative value"),
    (dict(sigma=float("nan")), ValueError, "sigma: expected a finite non-negative value, got nan"),
    (dict(sigma=float("inf")), ValueError, "sigma: expected a finite non-negative value, got inf"),
    (dict(sigma=torch.tensor([-0.1])), ValueError, "sigma: expected finite non-negative values"),
    (dict(sigma=torch.tensor([float("nan")])), ValueError, "sigma: expected finite non-negative values"),
    (dict(x=torch.rand(1, 1, 32, 32).index_put_((torch.tensor([0]), torch.tensor([0]), torch.tensor([5]),
                                                 torch.tensor([7])), torch.tensor(float("nan")))),
     ValueError, r"x: expected finite values, got 1 NaN or infinite value in a \[1, 1, 32, 32\] tensor"),
    (dict(x=torch.full((1, 1, 40, 40), float("inf")), sigma=None), ValueError, "x: expected finite values, got 1600"),
    (dict(sigma=torch.tensor([0.1, 0.2])), errors.ShapeError, "sigma: expected a number or a tensor of shape"),
    (dict(sigma="25"), TypeError, "sigma: expected a number or a tensor"),
])
def test_bad_input(kwargs, err, words):
    args = dict(x=torch.rand(1, 1, 32, 32), sigma=0.1)
    args.update(kwargs)
    with pytest.raises(err, match=words):
        classic.bm3d(**args)


def test_sigma_estimate_needs_32_pixels():
    with pytest.raises(errors.ShapeError, match="at least 32"):
        classic.bm3d(torch.rand(1, 1, 20, 40))


@pytest.mark.cuda
@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_pipeline_is_bitwise_the_cpu(shared_dir, channels):
    """On a real image: block matching and both filtering stages on the GPU give bitwise the
    CPU's output (same float operations, fixed-point aggregation)."""
    name, clean, noisy = _noisy_set12(shared_dir, 25)[0]
    x = torch.from_numpy(noisy).float()[None, None].repeat(1, channels, 1, 1)
    x[:, 1:] = x[:, 1:].flip(-1)
    cpu = classic.bm3d(x, 25 / 255)
    gpu = classic.bm3d(x.cuda(), 25 / 255)
    assert torch.equal(gpu.cpu(), cpu)
