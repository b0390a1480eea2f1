"""Image files <-> arrays: 8- and 16-bit PNG and TIFF, JPEG, grey and colour, every bit kept.

``read_image`` gives (H, W, C) float32 numpy arrays in [0, 1] (C = 1 for grey, 3 for colour)
scaled as KAIR's ``uint2single`` does (``float32(img / 255.)``, ``/ 65535.`` for 16-bit
files), or a (1, C, H, W) tensor with ``as_tensor=True``. ``read_pixels`` gives the stored
samples themselves, uint8 or uint16, so the bit depth is known. ``write_image`` takes float
images in [0, 1] (clamped and rounded), uint8 or uint16, and writes 8 or 16 bits.

Pillow (the optional ``image`` extra: ``pip install pillow`` or ``pip install
fastdenoise[image]``) reads and writes the 8-bit files and JPEG. It opens 16-bit RGB PNGs and
TIFFs as 8-bit images, silently dropping the low byte of every sample, so every 16-bit PNG
and TIFF goes through fastdenoise's own codecs instead (:mod:`fastdenoise._png`,
:mod:`fastdenoise._tiff`); a 16-bit file they cannot read raises ImageFormatError rather
than lose bits. An alpha channel is dropped on reading.
"""

from __future__ import annotations

import io as _bytesio
import os
import pathlib
from typing import Optional, Union

import numpy as np
import torch

from . import _png, _tiff
from .errors import DTypeError, ImageFormatError, ShapeError

__all__ = ["read_image", "read_pixels", "write_image", "to_float", "quantize", "IMAGE_EXTENSIONS",
           "SIXTEEN_BIT_EXTENSIONS"]

#: File extensions (lower case) fastdenoise reads and writes: PNG, TIFF and JPEG.
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: The ones that can hold 16-bit samples.
SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")

PathLike = Union[str, os.PathLike]


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastdenoise.io needs Pillow to read and write images: `pip install pillow` "
                          "(or `pip install fastdenoise[image]`)") from exc
    return Image


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_pixels(path: PathLike, *, mode: Optional[str] = None) -> np.ndarray:
    """The samples of an image file as stored: (H, W, C) uint8 for 8-bit (and lower) files,
    uint16 for 16-bit ones; C = 1 (grey) or 3 (colour).

    ``mode``: ``"L"`` (grey), ``"RGB"`` or None to keep grey images grey and make everything
    else RGB. Colour is turned grey with ITU-R 601 luma (as Pillow's ``convert("L")``); an
    alpha channel is dropped. Raises ImageFormatError for a corrupt or truncated file, or one
    that is not 8 or 16 bits per sample (float or 32-bit images), OSError when it cannot be
    opened, and PIL.UnidentifiedImageError (an OSError) for a format Pillow does not know.
    """
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode: expected None, 'L' or 'RGB', got {mode!r}")
    _pil()      # Pillow is needed for most files: say so first, whatever the file
    data = pathlib.Path(path).read_bytes()
    if data.startswith(_png.SIGNATURE) and _png.read_header(data).bit_depth == 16:
        return _select_channels(_png.decode(data), mode)
    if _tiff.is_tiff(data) and int(_tiff.read_tags(data).get(_tiff.BITS, np.array([1]))[0]) > 8:
        # 16 bits (and the float / 32-bit files it rejects with a clear error)
        return _select_channels(_tiff.decode(data), mode)
    return _read_pillow(data, mode)


def read_image(path: PathLike, *, mode: Optional[str] = None, as_tensor: bool = False):
    """Read an 8- or 16-bit image as float32 in [0, 1].

    ``mode``: ``"L"`` (grey, C = 1), ``"RGB"`` (C = 3) or None to keep grey images grey and
    make everything else RGB (an alpha channel is dropped). Returns (H, W, C) numpy float32
    (the samples divided by 255 or 65535), or a (1, C, H, W) torch tensor when ``as_tensor``.
    See :func:`read_pixels` for the errors.
    """
    return to_float(read_pixels(path, mode=mode), as_tensor=as_tensor)


def to_float(pixels: np.ndarray, *, as_tensor: bool = False):
    """uint8 / uint16 (H, W, C) samples -> float32 in [0, 1] (divided by 255 or 65535 in float64,
    then rounded to float32), as (H, W, C) numpy or a (1, C, H, W) tensor. (H, W) samples are
    taken as (H, W, 1)."""
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels: expected a numpy array of uint8 or uint16 samples, got {type(pixels).__name__}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise DTypeError(f"pixels: expected uint8 or uint16 samples (as read_pixels gives them), got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise ShapeError(f"pixels: expected (H, W, C) or (H, W) samples, got shape {list(pixels.shape)}")
    arr = np.float32(pixels / float(np.iinfo(pixels.dtype).max))
    if as_tensor:
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    return arr


def _select_channels(arr: np.ndarray, mode: Optional[str]) -> np.ndarray:
    """(H, W, S) samples from our codecs (S = 1 grey, 2 grey + alpha, 3 RGB, 4+ RGB + extras)
    -> (H, W, 1 or 3) in ``mode``."""
    colour = arr.shape[2] >= 3
    arr = arr[:, :, :3] if colour else arr[:, :, :1]
    if mode == "L" and colour:
        # Pillow's fixed-point ITU-R 601-2 luma (299, 587, 114 per mille), any bit depth.
        wide = arr.astype(np.uint64)
        luma = (wide[:, :, 0] * 19595 + wide[:, :, 1] * 38470 + wide[:, :, 2] * 7471 + 0x8000) >> 16
        return luma.astype(arr.dtype)[:, :, None]
    if mode == "RGB" and not colour:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


_PIL_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _read_pillow(data: bytes, mode: Optional[str]) -> np.ndarray:
    Image = _pil()
    with Image.open(_bytesio.BytesIO(data)) as im:
        im.load()
        if im.mode in _PIL_16BIT_MODES or im.mode == "I":
            # 16-bit grey from a format other than PNG / TIFF (PGM, ...); "I" is 32-bit: only
            # taken when its values fit 16 bits (older Pillows open 16-bit files as "I").
            arr = np.asarray(im)
            if im.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ImageFormatError("expected 8- or 16-bit samples, got a 32-bit integer image")
            return _select_channels(arr.astype(np.uint16)[:, :, None], mode)
        if im.mode == "F" or im.mode.startswith("I"):
            raise ImageFormatError(f"expected 8- or 16-bit unsigned samples, got Pillow mode {im.mode} "
                                   "(float or signed samples)")
        if mode is None:
            mode = "L" if im.mode in ("1", "L", "LA", "P", "PA") and _is_grey(im) else "RGB"
        arr = np.asarray(im.convert(mode), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _is_grey(im) -> bool:
    if im.mode not in ("P", "PA"):
        return True
    pal = im.convert("RGB")
    r, g, b = (np.asarray(c) for c in pal.split())
    return bool((r == g).all() and (g == b).all())


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _as_hwc(img) -> np.ndarray:
    """numpy (H, W) / (H, W, C) or a tensor (C, H, W) / (1, C, H, W) -> numpy (H, W, C), C = 1 or 3."""
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ShapeError(f"img: expected one image (1, C, H, W), got {list(t.shape)}")
            t = t[0]
        if t.dim() != 3:
            raise ShapeError(f"img: expected a (C, H, W) or (1, C, H, W) tensor, got {list(t.shape)}")
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ShapeError(f"img: expected (H, W), (H, W, 1) or (H, W, 3), got {list(arr.shape)}")
    if arr.size == 0:
        raise ShapeError(f"img: expected a non-empty image, got (H, W, C) = {list(arr.shape)}")
    return arr


def quantize(img, bits: int = 8) -> np.ndarray:
    """An image (as :func:`write_image` takes it) -> (H, W, C) uint8 (``bits=8``) or uint16
    (``bits=16``) samples: floats are clamped to [0, 1], scaled by 255 or 65535 and rounded
    (half to even); uint8 in for 16 bits is scaled by 257 (exact); uint16 in for 8 bits
    raises ValueError (it would lose bits: pass floats to choose)."""
    if bits not in (8, 16):
        raise ValueError(f"bits: expected 8 or 16, got {bits!r}")
    arr = _as_hwc(img)
    if arr.dtype == np.uint8:
        return arr if bits == 8 else arr.astype(np.uint16) * 257
    if arr.dtype == np.uint16:
        if bits == 8:
            raise ValueError("img: uint16 samples cannot be written with 8 bits without losing the low byte; "
                             "expected bits=16 (or float values in [0, 1])")
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise DTypeError(f"img: expected float values in [0, 1], uint8 or uint16, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("img: expected finite values, got NaN or infinity")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    # In the array's own float type, as KAIR's tensor2uint / metrics.quantize_uint8 do.
    out = (np.clip(arr, 0, 1) * (255.0 if bits == 8 else 65535.0)).round()
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def write_image(path: PathLike, img, *, bits: Optional[int] = None, quality: int = 95) -> None:
    """Write ``img`` to ``path``, the format chosen by the extension.

    ``img``: numpy (H, W) or (H, W, C), or a tensor (C, H, W) or (1, C, H, W), with C = 1 or 3;
    float values in [0, 1] (clamped, scaled and rounded), uint8 or uint16.
    ``bits``: 8 or 16 bits per sample; None: 16 for uint16 input, else 8. 16 bits need a PNG or
    TIFF file (``.png``, ``.tif``, ``.tiff``; ValueError otherwise). ``quality``: JPEG quality,
    an int from 1 to 100 (Pillow advises at most 95; chroma is not subsampled). 8-bit files are
    written by Pillow (any extension it can write; ValueError naming the extension otherwise),
    16-bit ones by fastdenoise's codecs (a zlib-compressed PNG, or an uncompressed TIFF).
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality: expected an int from 1 to 100 (JPEG quality), got {quality!r}")
    arr = _as_hwc(img)
    if bits is None:
        bits = 16 if arr.dtype == np.uint16 else 8
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if bits == 16 and ext not in SIXTEEN_BIT_EXTENSIONS:
        raise ValueError(f"bits: 16-bit samples need a {', '.join(SIXTEEN_BIT_EXTENSIONS)} file, "
                         f"got {ext or 'no extension'!r}")
    if bits == 8:
        Image = _pil()
        Image.init()
        if Image.registered_extensions().get(ext) not in Image.SAVE:
            raise ValueError(f"path: expected a file extension Pillow can write (.png, .jpg, .tif, ...), "
                             f"got {ext or 'no extension'!r} in {os.fspath(path)!r}")
    arr = quantize(arr, bits)
    if bits == 16:
        data = _png.encode(arr) if ext == ".png" else _tiff.encode(arr)
        with open(path, "wb") as f:
            f.write(data)
        return
    Image = _pil()
    im = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    if ext in (".jpg", ".jpeg"):
        im.save(path, quality=int(quality), subsampling=0)
    else:
        im.save(path)
