"""BM3D collaborative filtering: one stage of BM3D (Dabov, Foi, Katkovnik & Egiazarian, "Image
denoising by sparse 3-D transform-domain collaborative filtering", IEEE TIP 16(8), 2007) on
groups of blocks that block matching has already found. :func:`fastdenoise.classic.bm3d` chains
the two stages; this module is the op and its plain PyTorch reference (the spec).

Definitions
-----------
Inputs: the image to filter ``noisy`` (B, C, H, W), C <= 3 channels filtered jointly (grey, or
the opponent-colour channels of CBM3D), with per-channel noise standard deviations ``sigma``
(B, C); the groups, one per reference block on a grid: ``index`` (B, ny, nx, K), the top-left
corners ``y * W + x`` of the 8x8 blocks of each group (reference first, as
:func:`~fastdenoise.ops.block_match` returns them), and ``size`` (B, ny, nx), how many of them
the group uses (a power of two <= K); an 8x8 matrix ``transform`` T with its inverse
``inverse``, and an 8x8 aggregation ``window``.

For every group of n blocks Z_1 .. Z_n and every channel c:

1. 3-D transform: ``Y_j = T Z_j T^T`` for each block, then the orthonormal Haar transform of
   length n (full decomposition: ``a = (u + v) / sqrt(2)``, ``d = (u - v) / sqrt(2)`` on
   consecutive pairs, repeated on the approximations) along the group, for each of the 64
   coefficient positions.
2. Shrinkage.
   *Hard thresholding* (no ``pilot``): coefficients with ``|Y| <= threshold * sigma_c`` are set to
   zero; ``q_c`` = the number kept.
   *Wiener* (with a ``pilot``, the first-stage estimate): P = the same 3-D transform of the
   pilot's blocks at the same positions; ``G = P^2 / (P^2 + sigma_c^2)``, ``Y <- G Y``;
   ``q_c = sum G^2``.
3. Inverse Haar along the group, then ``E_j = T^-1 Y_j T^-T``.
4. Group weight ``w = smin / max(sum_c sigma_c^2 q_c, smin)``, ``smin = min_c sigma_c^2``: BM3D's
   ``1 / (sum_c sigma_c^2 q_c)`` (the inverse of the total noise variance left in the group
   estimate) times the image-wide constant smin, which changes no output but keeps the weights
   in (0, 1]; the floor gives a group whose coefficients were all removed the weight of one
   coefficient instead of infinity.
5. Aggregation: each estimate E_j is added, times ``w * window``, to a numerator image at its
   block's position, and ``w * window`` to a denominator image (shared by the channels). The
   output is numerator / denominator (0 where no block covers a pixel).

Determinism and backends
------------------------
The compiled kernels (C++ CPU and CUDA) compute every group in float32 in one fixed order of
operations (``csrc/include/fastdenoise/bm3d.h``; no FMA contraction) and aggregate in fixed
point: each term rounded to a multiple of 2^-32 and summed in int64, so the sums do not depend
on the order the groups are processed in. The output is bitwise the same run after run, whatever
the thread count, and the same on both backends. The reference below works in float64; it
agrees with the kernels to float32 rounding, except where rounding moves a coefficient across
the hard threshold (rare, and local: one coefficient of one group). Values whose magnitude
exceeds about 10^5 would overflow the fixed-point sums: :func:`bm3d_filter` refuses images with
values beyond ``MAX_ABS_VALUE`` (10^5) or not finite (images in [0, 1], [0, 255] or 16-bit
[0, 65535] are within it).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

from .. import _dispatch, _ext
from .._checks import check_tensor
from ..errors import DeviceError, DTypeError, ShapeError

__all__ = ["bm3d_filter", "bm3d_filter_reference", "bior15_matrix", "dct_matrix", "kaiser_window2d",
           "group_sizes", "BLOCK", "MAX_GROUP"]

#: Side of BM3D's square blocks.
BLOCK = 8
#: Largest group (the Haar transform along the group needs a power of two).
MAX_GROUP = 32
#: Most channels filtered jointly (CBM3D's opponent Y, U, V).
MAX_CHANNELS = 3


# --------------------------------------------------------------------------------------------
# Transforms and window
# --------------------------------------------------------------------------------------------

# The biorthogonal spline wavelet bior1.5 (Cohen-Daubechies-Feauveau, 1 vanishing moment of the
# synthesis, 5 of the analysis): decomposition filters, times sqrt(2).
_BIOR15_DEC_LO = (3 / 128, -3 / 128, -22 / 128, 22 / 128, 1.0, 1.0, 22 / 128, -22 / 128, -3 / 128, 3 / 128)
_BIOR15_DEC_HI = (0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0)


def _periodic_dwt_matrix(n: int, lo, hi) -> torch.Tensor:
    """The n x n matrix of a full periodic wavelet decomposition (n a power of two), rows in the
    order [approximation, coarsest details, ..., finest details]. One level maps a signal u of
    even length m to ``a[i] = sum_k lo[k] u[(2i + L/2 - k) mod m]`` (and d with ``hi``), L the
    filter length: the alignment of PyWavelets' ``mode="periodization"``."""
    length = len(lo)

    def level(u: torch.Tensor):
        m = u.shape[0]
        a = torch.zeros(m // 2, dtype=torch.float64)
        d = torch.zeros(m // 2, dtype=torch.float64)
        for i in range(m // 2):
            for k in range(length):
                v = u[(2 * i + length // 2 - k) % m]
                a[i] += lo[k] * v
                d[i] += hi[k] * v
        return a, d

    rows = []
    for e in torch.eye(n, dtype=torch.float64):
        parts, a = [], e
        while a.shape[0] > 1:
            a, d = level(a)
            parts.insert(0, d)
        rows.append(torch.cat([a] + parts))
    return torch.stack(rows, dim=1)  # column e = the coefficients of the unit vector e


@functools.lru_cache(maxsize=None)
def _bior15_cached(n: int) -> torch.Tensor:
    s = 1.0 / math.sqrt(2.0)
    m = _periodic_dwt_matrix(n, [s * v for v in _BIOR15_DEC_LO], [s * v for v in _BIOR15_DEC_HI])
    # BM3D scales each basis function (row) to unit norm, so white noise of variance sigma^2
    # gives every coefficient the variance sigma^2 and one threshold fits all of them.
    return m / m.norm(dim=1, keepdim=True)


def _block_size(name: str, n, *, power_of_two: bool = False) -> int:
    """``n`` as an int >= 1 (a power of two with ``power_of_two``); ValueError / TypeError naming it."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(n).__name__} {n!r}")
    if n < 1 or (power_of_two and n & (n - 1)):
        what = "a power of two (the wavelet halves the block at each level)" if power_of_two else "an int >= 1"
        raise ValueError(f"{name}: expected {what}, got {n}")
    return int(n)


def bior15_matrix(n: int = BLOCK, dtype=torch.float64) -> torch.Tensor:
    """BM3D's 2-D transform of the hard-thresholding stage, as an n x n matrix T applied as
    ``T Z T^T``: the full periodic bior1.5 wavelet decomposition (the same coefficients as
    ``pywt.wavedec(z, "bior1.5", mode="periodization")`` concatenated), each row scaled to
    unit norm. It is not orthogonal: invert with ``torch.linalg.inv``. ``n``: a power of two."""
    return _bior15_cached(_block_size("n", n, power_of_two=True)).to(dtype)


def dct_matrix(n: int = BLOCK, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix (BM3D's 2-D transform of the Wiener stage):
    ``D[k, i] = s_k cos(pi (2 i + 1) k / (2 n))``, ``s_0 = sqrt(1 / n)``, else ``sqrt(2 / n)``."""
    n = _block_size("n", n)
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d.to(dtype)


def kaiser_window2d(n: int = BLOCK, beta: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    """The n x n aggregation window: the outer product of the symmetric Kaiser window
    ``I0(beta sqrt(1 - (2 i / (n - 1) - 1)^2)) / I0(beta)`` with itself."""
    n = _block_size("n", n)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= float(beta) < math.inf:
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
    k = torch.kaiser_window(n, periodic=False, beta=float(beta), dtype=torch.float64)
    return torch.outer(k, k).to(dtype)


def _haar_matrix(n: int) -> torch.Tensor:
    """The orthonormal Haar transform of length n (power of two) as a matrix, in the coefficient
    order of the kernels' in-place butterflies."""
    m = torch.eye(n, dtype=torch.float64)
    s = 1.0 / math.sqrt(2.0)
    length = n
    while length > 1:
        half = length // 2
        step = torch.eye(n, dtype=torch.float64)
        step[:length, :length] = 0
        for i in range(half):
            step[i, 2 * i] = step[i, 2 * i + 1] = s
            step[half + i, 2 * i] = s
            step[half + i, 2 * i + 1] = -s
        m = step @ m
        length = half
    return m


def group_sizes(distance: torch.Tensor, tau, k: Optional[int] = None) -> torch.Tensor:
    """Group sizes from block-matching distances (B, ny, nx, K): the largest power of two not
    above the number of matches with distance < ``tau`` (at least 1, at most ``k``, default K),
    as int64 (B, ny, nx). ``tau``: a number, or a tensor broadcasting against ``distance``
    (e.g. (B, 1, 1, 1) for one threshold per image)."""
    check_tensor("distance", distance, layout="(B, ny, nx, K)")
    k = distance.shape[-1] if k is None else min(_block_size("k", k), distance.shape[-1])
    count = (distance < tau).sum(dim=-1)
    size = torch.ones_like(count)
    p = 2
    while p <= min(k, MAX_GROUP):
        size = torch.where(count >= p, torch.full_like(size, p), size)
        p *= 2
    return size


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def _check(noisy, pilot, index, size, sigma, transform, inverse, window, threshold) -> None:
    check_tensor("noisy", noisy, dtypes=(torch.float32,))
    b, c, h, w = noisy.shape
    if c > MAX_CHANNELS:
        raise ShapeError(f"noisy: expected 1 to {MAX_CHANNELS} channels, got {c}: {list(noisy.shape)}")
    if h < BLOCK or w < BLOCK:
        raise ShapeError(f"noisy: expected H and W of at least {BLOCK}, got H={h}, W={w}")
    if h * w >= 2**31:
        raise ShapeError(f"noisy: expected H * W < 2**31, got H={h}, W={w}")
    if pilot is not None:
        check_tensor("pilot", pilot, dtypes=(torch.float32,))
        if pilot.shape != noisy.shape:
            raise ShapeError(f"pilot: expected the shape of noisy {list(noisy.shape)}, got {list(pilot.shape)}")
    named = [("index", index, torch.int64, 4), ("size", size, torch.int64, 3), ("sigma", sigma, torch.float32, 2),
             ("transform", transform, torch.float32, 2), ("inverse", inverse, torch.float32, 2),
             ("window", window, torch.float32, 2)]
    for name, t, dtype, dims in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device != noisy.device:
            raise DeviceError(f"{name}: expected a tensor on {noisy.device} (the device of noisy), got {t.device}")
        if t.dtype != dtype:
            raise DTypeError(f"{name}: expected {dtype}, got {t.dtype}")
        if t.dim() != dims:
            raise ShapeError(f"{name}: expected {dims} dims, got {t.dim()}: {list(t.shape)}")
    if pilot is not None and pilot.device != noisy.device:
        raise DeviceError(f"pilot: expected a tensor on {noisy.device} (the device of noisy), got {pilot.device}")
    if index.shape[0] != b or not 1 <= index.shape[3] <= MAX_GROUP:
        raise ShapeError(f"index: expected (B={b}, ny, nx, K) with 1 <= K <= {MAX_GROUP}, got {list(index.shape)}")
    if tuple(size.shape) != tuple(index.shape[:3]):
        raise ShapeError(f"size: expected {list(index.shape[:3])} (the groups of index), got {list(size.shape)}")
    if tuple(sigma.shape) != (b, c):
        raise ShapeError(f"sigma: expected ({b}, {c}) (one per image and channel), got {list(sigma.shape)}")
    for name, t in (("transform", transform), ("inverse", inverse), ("window", window)):
        if tuple(t.shape) != (BLOCK, BLOCK):
            raise ShapeError(f"{name}: expected ({BLOCK}, {BLOCK}), got {list(t.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")


# --------------------------------------------------------------------------------------------
# Reference (the spec)
# --------------------------------------------------------------------------------------------

def group_spectra(img: torch.Tensor, pix: torch.Tensor, transform: torch.Tensor, haar: torch.Tensor) -> torch.Tensor:
    """The 3-D spectra (C, G, n, 8, 8) of groups of n blocks of one (C, H * W) image: ``pix``
    (G, n, 64) holds the flat pixel indices of each block; ``haar`` is the n x n Haar matrix."""
    c = img.shape[0]
    n = pix.shape[1]
    z = img[:, pix].view(c, -1, n, BLOCK, BLOCK)
    return torch.einsum("ij,cgjrs->cgirs", haar, transform @ z @ transform.T)


def block_pixels(index: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices (..., 64) of the 8x8 blocks whose top-left corners are ``index``."""
    r = torch.arange(BLOCK, device=index.device)
    return index.unsqueeze(-1) + (r.view(-1, 1) * width + r.view(1, -1)).flatten()


def bm3d_filter_reference(noisy: torch.Tensor, pilot: Optional[torch.Tensor], index: torch.Tensor,
                          size: torch.Tensor, sigma: torch.Tensor, transform: torch.Tensor,
                          inverse: torch.Tensor, window: torch.Tensor, threshold: float) -> torch.Tensor:
    """Plain PyTorch collaborative filtering in float64, all groups of one size at once."""
    _check(noisy, pilot, index, size, sigma, transform, inverse, window, threshold)
    if not bool(((sigma > 0) & (sigma < math.inf)).all()):          # NaN fails too
        raise ValueError("sigma: expected finite positive values")
    n_img, c, h, w = noisy.shape
    dev = noisy.device
    t, ti, win = transform.double(), inverse.double(), window.double()
    out = torch.empty(n_img, c, h, w, dtype=torch.float64, device=dev)
    for b in range(n_img):
        img = noisy[b].double().reshape(c, h * w)
        pil = pilot[b].double().reshape(c, h * w) if pilot is not None else None
        idx = index[b].reshape(-1, index.shape[3])                           # (G, K)
        sz = size[b].reshape(-1)
        if bool(((sz < 1) | (sz > index.shape[3]) | (sz & (sz - 1) != 0)).any()):
            raise ValueError(f"size: expected a power of two <= K = {index.shape[3]} for every group")
        s2 = sigma[b].double() ** 2                                          # (C,)
        smin = s2.min()
        num = torch.zeros(c, h * w, dtype=torch.float64, device=dev)
        den = torch.zeros(h * w, dtype=torch.float64, device=dev)
        for n in sorted(set(sz.tolist())):
            sel = idx[sz == n][:, :n]                                        # (G', n)
            if bool(((sel < 0) | (sel // w > h - BLOCK) | (sel % w > w - BLOCK)).any()):
                raise ValueError(f"index: expected top-left corners of {BLOCK}x{BLOCK} blocks inside the image")
            pix = block_pixels(sel, w)                                       # (G', n, 64)
            haar = _haar_matrix(n).to(dev)
            y = group_spectra(img, pix, t, haar)
            if pilot is None:
                keep = y.abs() > threshold * sigma[b].double().view(c, 1, 1, 1, 1)
                y = y * keep
                q = keep.sum(dim=(2, 3, 4)).double()                         # (C, G')
            else:
                p2 = group_spectra(pil, pix, t, haar).square()
                gain = p2 / (p2 + s2.view(c, 1, 1, 1, 1))
                y = y * gain
                q = gain.square().sum(dim=(2, 3, 4))
            est = ti @ torch.einsum("ji,cgjrs->cgirs", haar, y) @ ti.T       # inverse Haar = transpose
            wgt = smin / torch.clamp((s2.view(c, 1) * q).sum(dim=0), min=smin)   # (G',)
            contrib = wgt.view(-1, 1, 1, 1) * win                            # (G', 1, 8, 8)
            flat = pix.reshape(-1)
            den.index_add_(0, flat, contrib.expand(-1, n, -1, -1).reshape(-1))
            for ch in range(c):
                num[ch].index_add_(0, flat, (contrib * est[ch]).reshape(-1))
        out[b] = torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num)).view(c, h, w)
    return out.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

#: Largest pixel magnitude :func:`bm3d_filter` takes: the compiled kernels' fixed-point sums are
#: exact and far from overflow below it (see the module docstring).
MAX_ABS_VALUE = 1e5


def _check_values(noisy: torch.Tensor, pilot: Optional[torch.Tensor], sigma: torch.Tensor) -> None:
    """Finite images within MAX_ABS_VALUE and finite positive sigma, on every backend (the
    compiled kernels would turn NaN / inf or huge values into finite garbage). One host sync."""
    peaks = [noisy.abs().amax()] + ([pilot.abs().amax()] if pilot is not None else [])
    stats = torch.stack(peaks + [sigma.amin(), sigma.amax()]).tolist()     # NaN propagates
    for name, peak in zip(("noisy", "pilot"), stats[:-2]):
        if not peak <= MAX_ABS_VALUE:
            raise ValueError(f"{name}: expected finite values of magnitude at most {MAX_ABS_VALUE:g} (the kernels' "
                             f"fixed-point aggregation), got {'a NaN' if math.isnan(peak) else f'max |value| {peak:g}'}")
    lo, hi = stats[-2:]
    if not (lo > 0 and hi < math.inf):
        raise ValueError(f"sigma: expected finite positive values, got values in [{lo:g}, {hi:g}]")


def bm3d_filter(noisy: torch.Tensor, pilot: Optional[torch.Tensor], index: torch.Tensor, size: torch.Tensor,
                sigma: torch.Tensor, transform: torch.Tensor, inverse: torch.Tensor, window: torch.Tensor,
                threshold: float = 0.0, *, backend: Optional[str] = None) -> torch.Tensor:
    """One stage of BM3D on given groups (see the module docstring): hard thresholding at
    ``threshold * sigma`` when ``pilot`` is None, Wiener filtering with the pilot's spectrum
    otherwise. float32 (B, C, H, W) in and out (contiguous output); ``sigma`` (B, C) positive.
    ``backend``: None (the compiled kernel of the tensor's device, else the reference),
    ``"cpu"``, ``"cuda"`` or ``"reference"``."""
    _check(noisy, pilot, index, size, sigma, transform, inverse, window, threshold)
    _check_values(noisy, pilot, sigma)
    be = _dispatch.resolve("bm3d_filter", noisy, backend, triton_op=False)
    if be == "reference":
        return bm3d_filter_reference(noisy, pilot, index, size, sigma, transform, inverse, window, threshold)
    try:
        return torch.ops.fastdenoise.bm3d_filter(noisy.contiguous(), None if pilot is None else pilot.contiguous(),
                                                 index, size, sigma, transform, inverse, window, float(threshold))
    except RuntimeError as exc:
        # The kernels check the values of size / index / sigma as they read them (no extra pass):
        # their messages name the argument; raised as the reference raises them.
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if msg.startswith(("size:", "index:", "sigma:", "bm3d_filter: group ")):
            raise ValueError(msg) from None
        raise


def _fake_bm3d_filter(noisy, pilot, index, size, sigma, transform, inverse, window, threshold):
    return torch.empty_like(noisy, memory_format=torch.contiguous_format)


if _ext.extension() is not None and "fastdenoise::bm3d_filter" in _ext.build_info()["ops"]:
    torch.library.register_fake("fastdenoise::bm3d_filter")(_fake_bm3d_filter)
