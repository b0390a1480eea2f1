"""Classical (weight-free) denoising: noise-level estimation, and the home of the classical
denoisers built on the :mod:`fastdenoise.ops` kernels (non-local means and BM3D are added here
next to :func:`estimate_sigma`, which gives them their default ``sigma``).

Every function takes (B, C, H, W) float tensors with images in [0, 1] (any scale works for
:func:`estimate_sigma`: it is scale-equivariant) and works on CPU and CUDA tensors alike.

Contents
--------
* :func:`estimate_sigma` -- the standard deviation of additive white Gaussian noise, per image.
* :func:`nlm` -- pixelwise non-local means with the estimated (or given) sigma.
* :func:`bm3d` -- BM3D (grey) and CBM3D (colour), both stages, with the estimated (or given) sigma.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import check_tensor, memory_format_of
from .errors import ShapeError
from .ops import bm3d as _bm3d_ops
from .ops.block_match import _min_candidates, block_match
from .ops.nlm import _per_image, nlm_filter

__all__ = ["estimate_sigma", "nlm", "NLM_H_FACTOR", "bm3d", "BM3DProfile", "BM3D_PROFILES",
           "OPPONENT", "OPPONENT_INVERSE"]


# ============================================================================================
# Noise-level estimation
# ============================================================================================
#
# Weak-texture patch selection (Liu, Tanaka & Okutomi 2013) with a Marchenko-Pastur correction
# of the smallest eigenvalue. See estimate_sigma's docstring for the method and its accuracy.

#: Side of the square patches whose covariance is analysed.
_SIGMA_PATCH = 7
#: Confidence of the weak-texture test: a patch of pure noise passes it with this probability.
_SIGMA_CONFIDENCE = 0.999
#: Number of (select weak-texture patches -> re-estimate) rounds after the all-patch estimate.
_SIGMA_ROUNDS = 3
#: At most this many patches (positions x channels) per image enter the covariance; larger
#: images use every s-th position in each direction (s as small as allows it).
_SIGMA_MAX_PATCHES = 1 << 18
#: A selection with fewer patches than this (times the patch dimension) is not trusted: the
#: previous estimate is kept.
_SIGMA_MIN_SELECTED_PER_DIM = 8
#: Patches per chunk of the float32 partial sums (accumulated across chunks in float64).
_SIGMA_CHUNK = 1024
#: Smallest H and W taken: a 32 x 32 image gives 676 patches per channel (13.8 per dimension).
_SIGMA_MIN_SIZE = 32


@functools.lru_cache(maxsize=None)
def _gamma_quantile(shape: float, p: float) -> float:
    """The p-quantile of the Gamma(shape, scale=1) distribution (bisection on the regularised
    lower incomplete gamma function, in float64)."""
    a = torch.tensor(shape, dtype=torch.float64)
    lo, hi = 0.0, shape + 40.0 * math.sqrt(shape) + 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if torch.special.gammainc(a, torch.tensor(mid, dtype=torch.float64)).item() < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=None)
def _texture_threshold(d: int, confidence: float) -> float:
    """``t`` such that a d x d patch of pure noise of variance s2 has texture strength below
    ``t * s2`` with probability ``confidence`` (Liu et al.'s Gamma approximation).

    The texture strength is ``tr(G^T G)``, G the patch's horizontal and vertical gradients
    (central differences ``(x[j+1] - x[j-1]) / 2`` inside the patch). For white noise it is
    approximately Gamma-distributed with shape ``N / 2`` and scale ``2 s2 tr(D^T D) / N``
    (N = d^2; D the gradient operator, ``tr(D^T D) = 2 * d * (d - 2) * 1/2``).
    """
    n = d * d
    tr_dtd = float(d * (d - 2))
    return _gamma_quantile(n / 2.0, confidence) * 2.0 * tr_dtd / n


def _stride_for(c: int, h: int, w: int, d: int, max_patches: int) -> int:
    """The smallest step between patch positions that keeps C x positions <= max_patches."""
    s = 1
    while c * ((h - d) // s + 1) * ((w - d) // s + 1) > max_patches and s < max(h, w):
        s += 1
    return s


def _check_finite(x: torch.Tensor) -> None:
    """x: every value finite (a NaN or inf pixel would spread through the filters silently)."""
    if x.device.type == "meta":
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"x: expected finite values, got {bad} NaN or infinite value{'s' if bad > 1 else ''} "
                         f"in a {list(x.shape)} tensor")


def _check_estimate_input(x) -> None:
    check_tensor("x", x)
    h, w = x.shape[-2], x.shape[-1]
    if h < _SIGMA_MIN_SIZE or w < _SIGMA_MIN_SIZE:
        raise ShapeError(f"x: expected H and W of at least {_SIGMA_MIN_SIZE} (the noise estimator "
                         f"needs enough {_SIGMA_PATCH}x{_SIGMA_PATCH} patches), got H={h}, W={w}: "
                         f"{list(x.shape)}")
    _check_finite(x)


def _noise_variance_one(img: torch.Tensor) -> torch.Tensor:
    """Noise variance of one (C, H, W) image, as a 0-dim float64 tensor (no host syncs).

    The weak-texture selection is a threshold on the texture strength, so once the patches of
    each channel are sorted by strength every selection is a prefix of that order: the moments
    of all prefixes come from one pass over the patches (float32 sums over chunks of
    ``_SIGMA_CHUNK`` patches, accumulated across chunks in float64), and a round costs a search
    and one chunk.
    """
    d = _SIGMA_PATCH
    n_dim = d * d
    k = _SIGMA_CHUNK
    c, h, w = img.shape
    s = _stride_for(c, h, w, d, _SIGMA_MAX_PATCHES)
    dev = img.device

    # Centred image (float64 mean): only for conditioning, the estimate is shift-invariant.
    mean = img.mean(dim=(1, 2), keepdim=True, dtype=torch.float64)
    x = img.to(torch.float32) - mean.to(torch.float32)

    # Texture strength of every patch (positions every s pixels): the sum of its squared
    # central differences, horizontal and vertical, taken inside the patch.
    gh = 0.5 * (x[:, :, 2:] - x[:, :, :-2])                    # (C, H, W - 2)
    gv = 0.5 * (x[:, 2:, :] - x[:, :-2, :])                    # (C, H - 2, W)
    strength = (F.avg_pool2d(gh.square().unsqueeze(1), (d, d - 2), stride=s, divisor_override=1)
                + F.avg_pool2d(gv.square().unsqueeze(1), (d - 2, d), stride=s, divisor_override=1))
    strength, order = strength.flatten(1).sort(dim=1)          # (C, L), weakest first
    n_pos = strength.shape[1]

    # The patches in that order, zero-padded to whole chunks plus a spare one: (C, nk, K, N).
    nk = n_pos // k + 1
    ordered = x.new_empty((c, nk * k, n_dim))
    ordered[:, n_pos:] = 0
    for ch in range(c):
        patches = x[ch].unfold(0, d, s).unfold(1, d, s).reshape(n_pos, n_dim)
        torch.index_select(patches, 0, order[ch], out=ordered[ch, :n_pos])
    chunks = ordered.view(c, nk, k, n_dim)

    # Moments of the first j chunks of each channel, j = 0 .. nk: (C, nk + 1, N, N), (C, nk + 1, N).
    second = F.pad(torch.matmul(chunks.transpose(2, 3), chunks).to(torch.float64).cumsum(dim=1),
                   (0, 0, 0, 0, 1, 0))
    first = F.pad(chunks.sum(dim=2).to(torch.float64).cumsum(dim=1), (0, 0, 1, 0))
    channel = torch.arange(c, device=dev)
    lane = torch.arange(k, device=dev)

    def variance(count: torch.Tensor):
        """The noise variance from the ``count[ch]`` weakest patches of each channel: the
        smallest eigenvalue of their within-channel covariance, bias-corrected; and their number."""
        j, r = count // k, count % k                            # whole chunks, patches of chunk j
        part = chunks[channel, j] * (lane < r.unsqueeze(1)).unsqueeze(2).to(chunks.dtype)
        s2 = second[channel, j] + torch.matmul(part.transpose(1, 2), part).to(torch.float64)
        s1 = first[channel, j] + part.sum(dim=1).to(torch.float64)
        n_c = count.to(torch.float64)
        n = n_c.sum()
        scatter = s2.sum(dim=0) - torch.einsum("ci,cj,c->ij", s1, s1, 1.0 / n_c.clamp_min(1.0))
        lam = torch.linalg.eigvalsh(scatter / n.clamp_min(1.0))[0].clamp_min(0.0)
        # Marchenko-Pastur: the smallest eigenvalue of the sample covariance of n white
        # samples of dimension N lies near sigma^2 (1 - sqrt(N / n))^2.
        ratio = (n_dim / n.clamp_min(1.0)).clamp_max(0.25)
        return lam / (1.0 - ratio.sqrt()).square(), n

    var, _ = variance(torch.full((c,), n_pos, dtype=torch.int64, device=dev))
    threshold = _texture_threshold(d, _SIGMA_CONFIDENCE)
    for _ in range(_SIGMA_ROUNDS):
        limit = (threshold * var).to(strength.dtype).expand(c, 1).contiguous()
        new, n = variance(torch.searchsorted(strength, limit).squeeze(1))
        var = torch.where(n >= _SIGMA_MIN_SELECTED_PER_DIM * n_dim, new, var)
    return var


def estimate_sigma(x: torch.Tensor) -> torch.Tensor:
    r"""Standard deviation of the additive white Gaussian noise of each image of a batch.

    ``x``: (B, C, H, W) float tensor (float32, float64, float16, bfloat16), contiguous,
    channels_last or strided, on any device; H and W at least 32. Returns a (B,) tensor on
    ``x``'s device, float64 for float64 input and float32 otherwise: sigma in the image's units
    (about 25/255 for an image in [0, 1] with noise of standard deviation 25 on the 0-255
    scale). The noise is taken to have the same sigma in every channel: the patches of all
    channels are pooled into one estimate per image. ``x`` is not modified; no gradient.

    **Method.** Weak-texture patch selection of X. Liu, M. Tanaka & M. Okutomi ("Single-image
    noise level estimation for blind denoising", IEEE TIP 22(12), 2013), with a finite-sample
    correction:

    1. Take the 7x7 patches of every channel at every position (every s-th position in each
       direction when an image has more than 2^18 patches, s as small as allows that).
    2. sigma^2 is the smallest eigenvalue of the patches' covariance matrix (means removed
       within each channel): image structure leaves some direction of patch space nearly
       empty, white noise puts sigma^2 in every direction.
    3. A patch's texture strength is the sum of its squared central-difference gradients. For
       a flat patch it is (approximately) Gamma-distributed with a scale proportional to
       sigma^2; the patches below its 99.9 % quantile at the current sigma are kept as weak
       texture and step 2 is repeated on them (three rounds; the first uses every patch).
    4. The smallest eigenvalue of a sample covariance is biased low: from n samples of
       dimension N = 49 it lies near sigma^2 (1 - sqrt(N / n))^2 (the Marchenko-Pastur edge),
       so it is divided by that factor. Without it the 256x256 Set12 images come out 3-5 %
       low (5.5 % on one of them at 15/255).

    Patches are float32; their moments are summed in float32 over chunks of 1024 patches
    and accumulated in float64, and the eigenvalues are computed in float64. Sorting the
    patches by texture strength once makes every selection a prefix, so the rounds cost
    almost nothing: a 1080p image (grey or colour) takes about 0.1 s on two CPU cores.

    **Accuracy** on the twelve Set12 images with Gaussian noise added as in KAIR's tests
    (``np.random.seed(0)`` per image, not clipped), largest relative error over the images:
    1.9 % at sigma = 15/255, 1.3 % at 25/255, 0.5 % at 50/255 (mean errors +0.8 %, +0.2 %,
    0.0 %); 2.7 % at 10/255, 9 % at 5/255. Over 20 other noise draws per image: at most
    4.1 %, 3.2 % and 2.4 % at 15, 25 and 50/255 (bias +0.5 to +2.4 % at 15/255, spread about
    0.8 % on 256x256 images, 0.4 % on 512x512). For comparison, on the seed-0 images the
    wavelet MAD estimator (median absolute finest diagonal Haar coefficient / 0.6745) is off
    by up to 14 %, 6.7 % and 1.6 % at 15, 25 and 50/255, and the patch-PCA estimator of
    Chen, Zhu & Heng (ICCV 2015) by up to 13 %, 5.7 % and 2.2 %.

    **Limits.** It assumes signal-independent white Gaussian noise with one sigma per image.
    At very low noise on strongly textured images texture passes the weak-texture test and
    the estimate is high (up to +9 % on Set12 at 5/255). Clipped noise (saturated regions)
    gives low estimates, signal-dependent (Poisson, camera) noise an average level, and
    spatially correlated noise (demosaicked, compressed, resampled) is underestimated.
    Small images give noisier estimates: on 64x64 crops of Set12 at 15/255, 95 % of the
    errors are within 10 %; at 32x32, within 21 % (pure noise: spread about 5 %).
    """
    _check_estimate_input(x)
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        variances = torch.stack([_noise_variance_one(x[b]) for b in range(x.shape[0])])
    return variances.sqrt().to(out_dtype)


# ============================================================================================
# Non-local means
# ============================================================================================

#: Default filtering strength of :func:`nlm`, as a multiple of sigma. Chosen on Set12 (grey,
#: patch 7, search 21; mean PSNR over the twelve images, per image np.random.seed(0) noise):
#: h / sigma = 0.7, 0.8, 0.9 give 30.96 / 31.14 / 31.15 dB at sigma 15, 28.69 / 28.71 /
#: 28.52 dB at sigma 25 and 25.11 / 24.95 / 24.67 dB at sigma 50.
NLM_H_FACTOR = 0.8
#: The least default ``h`` of :func:`nlm` (when sigma is 0): weights of differing patches underflow to 0.
_NLM_MIN_H = 1e-6


def nlm(x: torch.Tensor, sigma=None, h=None, patch: int = 7, search: int = 21, *, backend=None) -> torch.Tensor:
    """Pixelwise non-local means of (B, C, H, W) images in [0, 1], grey or colour.

    ``sigma``: the noise standard deviation in the image's units (25/255 for sigma 25 on a
    [0, 1] image), a number or a (B,) tensor; ``None`` estimates it per image
    (:func:`estimate_sigma`). ``h``: the filtering strength, default ``NLM_H_FACTOR * sigma``.
    ``patch`` and ``search``: odd sizes of the compared patches and of the search window
    (OpenCV's defaults). The weights subtract the noise variance as scikit-image does; the
    maths is in :mod:`fastdenoise.ops.nlm`. Runs on the CUDA kernel for CUDA tensors and on
    the C++ kernel on the CPU (``backend`` forces one). Returns the input's dtype, device and
    memory format; the input is not modified.

    Quality (Set12, sigma 25, the noise recipe of the tests): 28.71 dB mean PSNR with the
    defaults, against 28.49 dB for ``skimage.restoration.denoise_nl_means(fast_mode=True,
    patch_size=5, patch_distance=6, h=0.8 sigma, sigma=sigma)``.
    """
    check_tensor("x", x)
    _check_finite(x)
    if sigma is None:
        sigma = estimate_sigma(x).to(torch.float32)
    if h is None:
        # a noise-free image (sigma 0) would give h = 0: floored, so that only identical patches
        # are averaged (the image comes back as it is) instead of 0 / 0
        h = _per_image("sigma", sigma, x).mul(NLM_H_FACTOR).clamp_min(_NLM_MIN_H)
    return nlm_filter(x, sigma, h, patch, search, backend=backend)


# ============================================================================================
# BM3D
# ============================================================================================

@dataclass(frozen=True)
class BM3DProfile:
    """Parameters of BM3D. Distances and thresholds are on the 0-255 scale, as published: a
    matching threshold ``tau`` bounds the mean squared difference over the block, in 8-bit units
    (it is applied as ``tau / 255**2`` to images in [0, 1])."""

    block: int = 8               # block side (the kernels take 8)
    step: int = 3                # step of the reference-block grid
    search: int = 39             # side of the search window
    group_hard: int = 16         # most blocks per group, stage 1
    group_wiener: int = 32       # most blocks per group, stage 2
    tau_hard: float = 3000.0     # matching threshold, stage 1 (on the noisy image)
    tau_wiener: float = 400.0    # matching threshold, stage 2 (on the first estimate)
    lambda3d: float = 2.7        # hard threshold, in units of sigma
    tau_noise: float = 3.0       # stage 1 matches below max(tau_hard, tau_noise * sigma^2) (sigma of
                                 # the matching guide, 0-255 scale); see bm3d's docstring
    beta: float = 2.0            # Kaiser window parameter of the aggregation (both stages)


#: The profiles :func:`bm3d` knows. ``"np"`` is the authors' normal profile (BM3D paper, 2007,
#: and their reference implementations): 8x8 blocks (bior1.5 in stage 1, DCT in stage 2, Haar
#: along the group), step 3, window 39, 16 / 32 blocks, tau 3000 / 400, lambda_3D 2.7, Kaiser
#: beta 2.
BM3D_PROFILES = {"np": BM3DProfile()}

#: CBM3D's opponent colour transform (rows Y, U, V of [R, G, B]) and its inverse.
OPPONENT = ((1 / 3, 1 / 3, 1 / 3), (1 / 2, 0.0, -1 / 2), (1 / 4, -1 / 2, 1 / 4))
OPPONENT_INVERSE = ((1.0, 1.0, 2 / 3), (1.0, 0.0, -4 / 3), (1.0, -1.0, 2 / 3))

#: Smallest sigma handed to the kernels (a sigma of 0 leaves the image as it is, to rounding).
_BM3D_MIN_SIGMA = 1e-6


@functools.lru_cache(maxsize=None)
def _bm3d_constants(device: torch.device):
    """float32 bior1.5 / DCT matrices with their inverses and the Kaiser window, on ``device``."""
    bior = _bm3d_ops.bior15_matrix()
    dct = _bm3d_ops.dct_matrix()
    as_f32 = lambda t: t.to(device=device, dtype=torch.float32).contiguous()  # noqa: E731
    return {"bior": (as_f32(bior), as_f32(torch.linalg.inv(bior))), "dct": (as_f32(dct), as_f32(dct.T)),
            "kaiser": as_f32(_bm3d_ops.kaiser_window2d(8, 2.0))}


def _kaiser(device, beta: float) -> torch.Tensor:
    if beta == 2.0:
        return _bm3d_constants(device)["kaiser"]
    return _bm3d_ops.kaiser_window2d(8, beta).to(device=device, dtype=torch.float32)


def _mix_channels(x: torch.Tensor, matrix) -> torch.Tensor:
    """``out[:, i] = sum_j matrix[i][j] * x[:, j]`` for a 3x3 matrix, as elementwise float32
    operations in a fixed order (not a matmul, whose summation order differs between CPU and
    GPU libraries), so the colour transforms round the same on every device."""
    rows = []
    for row in matrix:
        acc = x[:, 0] * float(row[0])
        for j in (1, 2):
            acc = acc + x[:, j] * float(row[j])
        rows.append(acc)
    return torch.stack(rows, dim=1)


def bm3d(x: torch.Tensor, sigma=None, stage: str = "all", profile: str = "np", *,
         backend: Optional[str] = None) -> torch.Tensor:
    r"""BM3D denoising of (B, C, H, W) images in [0, 1]: grey (C = 1) or colour (C = 3, CBM3D).

    ``sigma``: the standard deviation of the additive white Gaussian noise in the image's units
    (25/255 for sigma 25 on a [0, 1] image), a number or a (B,) tensor; ``None`` estimates it
    per image (:func:`estimate_sigma`, which needs H, W >= 32). ``stage``: ``"all"`` (both
    stages) or ``"hard"`` (the first, hard-thresholding estimate only). ``profile``: a key of
    :data:`BM3D_PROFILES` (``"np"``). ``backend``: None (the compiled kernels of the tensor's
    device), ``"cpu"``, ``"cuda"`` or ``"reference"`` (plain PyTorch: slow, for small images).
    Returns the input's dtype, device and memory format; the input is not modified. H and W
    must be at least 8.

    **Algorithm** (Dabov et al., IEEE TIP 2007; colour: Dabov et al., ICIP 2007):

    1. *Hard thresholding.* For each 8x8 reference block on a grid of step 3 (the last row and
       column of blocks touching the border), the up to 16 most similar blocks within a 39 x 39
       window (:func:`fastdenoise.ops.block_match`) whose mean squared difference is below
       ``max(tau_hard, tau_noise * sigma^2) / 255**2`` (sigma of the matched channel on the
       0-255 scale) form a group (its size rounded down to a power of two). The group is
       transformed in 3-D (bior1.5 on each block, Haar along the group), coefficients up to
       ``2.7 sigma`` are zeroed, the group transformed back and its blocks aggregated with a
       Kaiser window and the weight 1 / (sigma^2 x coefficients kept).
    2. *Wiener filtering.* Matching again, on the first estimate (up to 32 blocks, threshold
       ``tau_wiener``); the noisy group's 3-D spectrum (DCT on each block, Haar along the group)
       is multiplied by the empirical Wiener gains |P|^2 / (|P|^2 + sigma^2) of the first
       estimate's spectrum P, transformed back and aggregated (weight 1 / (sigma^2 sum gain^2)).

    **Matching threshold at high noise.** Two noisy copies of the same block differ by 2 sigma^2
    on average, so the profile's fixed ``tau_hard = 3000`` rejects true matches once sigma
    exceeds about 39 (and at sigma = 50 Set12 loses 0.75 dB: 25.97 dB). The authors' MATLAB
    code switches to other parameters above sigma = 40 (11 x 11 Wiener blocks among them);
    here the block size stays 8 and the stage-1 threshold becomes ``max(3000, 3 sigma^2)``,
    which leaves sigma <= 31 untouched and gives 26.73 dB on Set12 at sigma = 50 (published
    BM3D: 26.72 dB).

    Colour images are filtered in the opponent colour space (:data:`OPPONENT`): blocks are
    matched on the luma Y = (R + G + B) / 3 only, and the Y, U, V blocks of a group are filtered
    together with the group's positions, each with its own noise level (sigma times the norm of
    its row of the transform) and one weight per group. The exact per-group definitions are in
    :mod:`fastdenoise.ops.bm3d`.

    **Determinism.** The output is bitwise the same run after run and on any number of threads
    (block matching breaks ties in a fixed order; aggregation sums in fixed point).
    """
    check_tensor("x", x)
    if x.shape[1] not in (1, 3):
        raise ShapeError(f"x: expected 1 (grey) or 3 (RGB) channels, got {x.shape[1]}: {list(x.shape)}")
    h, w = x.shape[-2:]
    if h < 8 or w < 8:
        raise ShapeError(f"x: expected H and W of at least 8 (the block size), got H={h}, W={w}: {list(x.shape)}")
    if stage not in ("all", "hard"):
        raise ValueError(f"stage: expected 'all' or 'hard', got {stage!r}")
    if profile not in BM3D_PROFILES:
        raise ValueError(f"profile: expected one of {sorted(BM3D_PROFILES)}, got {profile!r}")
    prof = BM3D_PROFILES[profile]
    _check_finite(x)
    n, c = x.shape[:2]
    with torch.no_grad():
        if sigma is None:
            sig = estimate_sigma(x).to(torch.float32)
        else:
            sig = _per_image("sigma", sigma, x)         # finite, >= 0 (checked there)
        sig = sig.clamp_min(_BM3D_MIN_SIGMA)
        consts = _bm3d_constants(x.device)
        img = x.to(torch.float32)
        if c == 3:
            img = _mix_channels(img, OPPONENT)
            norms = [math.sqrt(sum(a * a for a in row)) for row in OPPONENT]
            sig_c = sig.view(n, 1) * torch.tensor(norms, dtype=torch.float32, device=x.device).view(1, 3)
        else:
            sig_c = sig.view(n, 1)
        img = img.contiguous()
        sig_c = sig_c.contiguous()
        window = _kaiser(x.device, prof.beta)
        scale = 255.0 ** 2

        def matches(guide_src: torch.Tensor, k: int, tau: torch.Tensor):
            k = min(k, _min_candidates(h, w, prof.block, prof.search))
            bm = block_match(guide_src[:, :1].contiguous(), prof.block, prof.search, k, prof.step, backend=backend)
            return bm.index, _bm3d_ops.group_sizes(bm.distance, tau.view(n, 1, 1, 1))

        # stage 1 matches on the noisy guide: its threshold grows with the noise (per image)
        tau_hard = torch.clamp((sig_c[:, 0].double() ** 2) * prof.tau_noise, min=prof.tau_hard / scale)
        index, size = matches(img, prof.group_hard, tau_hard.to(torch.float32))
        t, ti = consts["bior"]
        out = _bm3d_ops.bm3d_filter(img, None, index, size, sig_c, t, ti, window, prof.lambda3d, backend=backend)
        if stage == "all":
            index, size = matches(out, prof.group_wiener, torch.full((n,), prof.tau_wiener / scale, device=x.device))
            t, ti = consts["dct"]
            out = _bm3d_ops.bm3d_filter(img, out, index, size, sig_c, t, ti, window, 0.0, backend=backend)
        if c == 3:
            out = _mix_channels(out, OPPONENT_INVERSE)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))
