"""Classical denoising: NLM, block matching and BM3D, fused against the plain PyTorch reference
and the peers a user would otherwise run.

Contenders per group (same input):

* ``eager``: the plain PyTorch reference of the op (float64, the spec), on the benchmark device;
  only at the sizes where it finishes in reasonable time;
* ``fused``: the fastdenoise kernel (default dispatch: CUDA for CUDA tensors, C++ on the CPU);
* ``opencv``: ``cv2.fastNlMeansDenoising`` / ``...Colored`` on the host (uint8 image, 7 / 21
  windows), when opencv-python-headless is installed (an optional comparator, never a
  dependency);
* ``skimage``: ``skimage.restoration.denoise_nl_means(fast_mode=True, patch_size=7,
  patch_distance=10)`` on the host, when scikit-image is installed.

BM3D groups (both stages, sigma 25/255 given, float32) time ``fused`` (``classic.bm3d``),
``eager`` (the same pipeline on the plain PyTorch reference ops, at small sizes) and ``bm3d-pkg``
(the authors' ``bm3d`` package 4.x, ``bm3d.bm3d`` / ``bm3d.bm3d_rgb`` with its default "np"
profile, on the host, when installed: an optional comparator licensed for non-commercial use
only, never a dependency) and ``bm3d-pkg-2.7`` (the same package with the published fixed
parameters, lambda_3D = 2.7 and mu^2 = 1, those fastdenoise follows: by default 4.x picks both
from the noise PSD, Makinen, Azzari & Foi 2020, and gains up to about 0.1 dB), on real photographs from scikit-image (camera, astronaut) or, at
1080p on the GPU, on a synthetic image; each records the PSNR of its output against the clean
image, so the speeds are compared at equal quality.

The peers run on the CPU whatever the device, as users run them; the table says what each
contender is. No ``compiled`` contender: the references are Python loops over hundreds of
offsets, which torch.compile would unroll into graphs of thousands of nodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_generator

from fastdenoise import classic
from fastdenoise.metrics import psnr
from fastdenoise.ops import block_match, block_match_reference, nlm_filter, nlm_reference

SIGMA = 25 / 255

NLM_CUDA_CASES = [((1, 1, 1080, 1920), ("fused", "opencv")), ((1, 3, 1080, 1920), ("fused", "opencv")),
                  ((1, 3, 256, 256), ("eager", "fused", "opencv", "skimage"))]
NLM_CPU_CASES = [((1, 1, 96, 96), ("eager", "fused", "opencv", "skimage")),
                 ((1, 3, 96, 96), ("eager", "fused", "opencv", "skimage")),
                 ((1, 1, 1080, 1920), ("fused", "opencv")), ((1, 3, 1080, 1920), ("fused", "opencv"))]
BM_CUDA_CASES = [((1, 1, 1080, 1920), ("fused",)), ((1, 1, 128, 128), ("eager", "fused"))]
BM_CPU_CASES = [((1, 1, 64, 64), ("eager", "fused"))]
# (image, crop (H, W) or None for synthetic at that size, contenders)
BM3D_CUDA_CASES = [("synthetic", (1080, 1920), 1, ("fused",)), ("synthetic", (1080, 1920), 3, ("fused",)),
                   ("camera", (256, 256), 1, ("eager", "fused", "bm3d-pkg", "bm3d-pkg-2.7")),
                   ("astronaut", (256, 256), 3, ("fused", "bm3d-pkg", "bm3d-pkg-2.7"))]
BM3D_CPU_CASES = [("camera", (256, 256), 1, ("eager", "fused", "bm3d-pkg", "bm3d-pkg-2.7")),
                  ("camera", (512, 512), 1, ("fused", "bm3d-pkg", "bm3d-pkg-2.7")),
                  ("astronaut", (256, 256), 3, ("fused", "bm3d-pkg", "bm3d-pkg-2.7"))]


def pytest_generate_tests(metafunc):
    from conftest import bench_device

    cuda = bench_device(metafunc.config).type == "cuda"
    if "nlm_case" in metafunc.fixturenames:
        cases = [(s, c) for s, names in (NLM_CUDA_CASES if cuda else NLM_CPU_CASES) for c in names]
        metafunc.parametrize("nlm_case", cases, ids=[f"{'x'.join(map(str, s))}-{c}" for s, c in cases])
    if "bm3d_case" in metafunc.fixturenames:
        cases = [(img, hw, ch, c) for img, hw, ch, names in (BM3D_CUDA_CASES if cuda else BM3D_CPU_CASES)
                 for c in names]
        metafunc.parametrize("bm3d_case", cases, ids=[f"{i}-{h}x{w}x{ch}-{c}" for i, (h, w), ch, c in cases])
    if "bm_case" in metafunc.fixturenames:
        cases = [(s, c) for s, names in (BM_CUDA_CASES if cuda else BM_CPU_CASES) for c in names]
        metafunc.parametrize("bm_case", cases, ids=[f"{'x'.join(map(str, s))}-{c}" for s, c in cases])


def _noisy(shape, device, group):
    g = make_generator(device, group)
    n, c, h, w = shape
    yy = torch.linspace(0, 1, h, device=device).view(h, 1)
    xx = torch.linspace(0, 1, w, device=device).view(1, w)
    clean = (0.5 + 0.4 * torch.sin(12 * yy) * torch.cos(9 * xx)).expand(n, c, h, w)
    return (clean + SIGMA * torch.randn(shape, generator=g, device=device)).contiguous()


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    img = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(img[..., 0] if img.shape[2] == 1 else img)


def test_nlm(nlm_case, bench, device):
    shape, contender = nlm_case
    group = f"nlm 7x7 in 21x21 {'x'.join(map(str, shape))} float32"
    x = _noisy(shape, device, group)
    h = 0.8 * SIGMA
    if contender == "eager":
        def fn():
            return nlm_reference(x, SIGMA, h)
    elif contender == "fused":
        ref_small = nlm_reference(x[..., :48, :48], SIGMA, h)
        torch.testing.assert_close(nlm_filter(x[..., :48, :48], SIGMA, h), ref_small, rtol=1e-5, atol=2e-6)

        def fn():
            return nlm_filter(x, SIGMA, h)
    elif contender == "opencv":
        cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is an optional comparator")
        img = _to_uint8_hwc(x)
        h8 = float(SIGMA * 255 * 0.8)
        if img.ndim == 2:
            def fn():
                return cv2.fastNlMeansDenoising(img, None, h8, 7, 21)
        else:
            def fn():
                return cv2.fastNlMeansDenoisingColored(img, None, h8, h8, 7, 21)
    else:
        restoration = pytest.importorskip("skimage.restoration", reason="scikit-image is an optional comparator")
        img = x[0].permute(1, 2, 0).cpu().numpy()

        def fn():
            return restoration.denoise_nl_means(img, patch_size=7, patch_distance=10, h=h, sigma=SIGMA,
                                                fast_mode=True, channel_axis=-1)
    bench(fn, group=group, contender=contender, kind="model",
          extra={"op": "nlm", "shape": list(shape), "peer_device": "cpu" if contender in ("opencv", "skimage")
                 else device.type})


def test_block_match(bm_case, bench, device):
    shape, contender = bm_case
    group = f"block_match 8x8 window 39 k 16 step 3 {'x'.join(map(str, shape))}"
    x = _noisy(shape, device, group)
    if contender == "eager":
        def fn():
            return block_match_reference(x)
    else:
        small = x[..., :48, :48]
        got, ref = block_match(small), block_match_reference(small)
        torch.testing.assert_close(got.distance, ref.distance, rtol=1e-5, atol=1e-7)

        def fn():
            return block_match(x)
    bench(fn, group=group, contender=contender, kind="model", extra={"op": "block_match", "shape": list(shape)})


def _bm3d_clean(image: str, hw, channels: int, device) -> torch.Tensor:
    """(1, C, H, W) float64 clean image in [0, 1]: a crop of a scikit-image photograph (grey for
    one channel), or a synthetic image of textures and edges."""
    h, w = hw
    if image == "synthetic":
        yy = torch.linspace(0, 1, h, dtype=torch.float64).view(h, 1)
        xx = torch.linspace(0, 1, w, dtype=torch.float64).view(1, w)
        planes = [0.5 + 0.3 * torch.sin((20 + 7 * c) * yy) * torch.cos(15 * xx) * (xx > 0.3 + 0.1 * c)
                  + 0.1 * torch.sin(80 * xx * yy) for c in range(channels)]
        return torch.stack(planes).unsqueeze(0).to(device)
    data = pytest.importorskip("skimage.data", reason="the BM3D benchmark photographs come from scikit-image")
    img = torch.from_numpy(getattr(data, image)()).double() / 255
    img = img.unsqueeze(0) if img.dim() == 2 else img.permute(2, 0, 1)
    if channels == 1 and img.shape[0] == 3:
        img = img.mean(dim=0, keepdim=True)
    y0, x0 = (img.shape[1] - h) // 2, (img.shape[2] - w) // 2
    return img[:, y0:y0 + h, x0:x0 + w].unsqueeze(0).contiguous().to(device)


def test_bm3d(bm3d_case, bench, device):
    image, hw, channels, contender = bm3d_case
    group = f"bm3d both stages {image} {hw[0]}x{hw[1]}x{channels} sigma 25 float32"
    clean = _bm3d_clean(image, hw, channels, device)
    g = make_generator(device, group)
    noisy = (clean + SIGMA * torch.randn(clean.shape, generator=g, device=device, dtype=torch.float64)).float()
    if contender in ("fused", "eager"):
        backend = None if contender == "fused" else "reference"

        def fn():
            return classic.bm3d(noisy, SIGMA, backend=backend)
    else:
        pkg = pytest.importorskip("bm3d", reason="the authors' bm3d package is an optional comparator")
        img = noisy[0].permute(1, 2, 0).double().cpu().numpy()
        profile = pkg.BM3DProfile()  # "np"
        if contender == "bm3d-pkg-2.7":
            profile.lambda_thr3d, profile.mu2 = 2.7, 1.0
        if channels == 1:
            def fn():
                return torch.from_numpy(np.asarray(pkg.bm3d(img[..., 0], SIGMA, profile)))[None, None]
        else:
            def fn():
                return torch.from_numpy(np.asarray(pkg.bm3d_rgb(img, SIGMA, profile))).permute(2, 0, 1)[None]
    out = bench(fn, group=group, contender=contender, kind="model",
                extra={"op": "bm3d", "shape": list(noisy.shape),
                       "peer_device": "cpu" if contender.startswith("bm3d-pkg") else device.type})
    quality = psnr(out.double().clamp(0, 1).to(clean.device), clean).item()
    bench.benchmark.extra_info["psnr_db"] = quality
    assert quality > psnr(noisy.double(), clean).item() + 5, f"{contender} did not denoise: {quality:.2f} dB"
