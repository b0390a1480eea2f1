"""Image files <-> float32 arrays in [0, 1], through Pillow (the optional ``image`` extra:
``pip install pillow`` or ``pip install fastdenoise[image]``).

``read_image`` gives (H, W, C) float32 numpy arrays (C = 1 for grey, 3 for colour) scaled as
KAIR's ``uint2single`` does (``float32(img / 255.)``), or a (1, C, H, W) tensor with
``as_tensor=True``. ``write_image`` takes either layout, float in [0, 1] (clamped and rounded
to 8 bits) or uint8.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["read_image", "write_image"]


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastdenoise.io needs Pillow to read and write images: `pip install pillow` "
                          "(or `pip install fastdenoise[image]`)") from exc
    return Image


def read_image(path: Union[str, os.PathLike], *, mode: Optional[str] = None, as_tensor: bool = False):
    """Read an 8- or 16-bit image as float32 in [0, 1].

    ``mode``: ``"L"`` (grey, C = 1), ``"RGB"`` (C = 3) or None to keep grey images grey and
    make everything else RGB (an alpha channel is dropped). Returns (H, W, C) numpy float32,
    or a (1, C, H, W) torch tensor when ``as_tensor``.
    """
    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode: expected None, 'L' or 'RGB', got {mode!r}")
    Image = _pil()
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I") and mode in (None, "L"):
            arr = np.asarray(im, dtype=np.float64) / 65535.0
        else:
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA", "P") and _is_grey(im) else "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.uint8) / 255.0
    arr = np.float32(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if as_tensor:
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    return arr


def _is_grey(im) -> bool:
    if im.mode != "P":
        return True
    pal = im.convert("RGB")
    r, g, b = (np.asarray(c) for c in pal.split())
    return bool((r == g).all() and (g == b).all())


def write_image(path: Union[str, os.PathLike], img) -> None:
    """Write ``img`` as an 8-bit image (format from the file name's extension).

    ``img``: numpy (H, W) or (H, W, C), or a tensor (C, H, W) or (1, C, H, W), with C = 1 or 3;
    float values in [0, 1] (clamped, scaled by 255 and rounded) or uint8.
    """
    Image = _pil()
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"img: expected one image (1, C, H, W), got {list(t.shape)}")
            t = t[0]
        if t.dim() != 3:
            raise ValueError(f"img: expected a (C, H, W) or (1, C, H, W) tensor, got {list(t.shape)}")
        arr = t.permute(1, 2, 0).numpy() if t.dtype != torch.bfloat16 else t.float().permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"img: expected (H, W), (H, W, 1) or (H, W, 3), got {list(arr.shape)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"img: expected float values in [0, 1] or uint8, got {arr.dtype}")
        arr = np.uint8((np.clip(arr, 0, 1) * 255.0).round())
    if arr.shape[2] == 1:
        Image.fromarray(np.ascontiguousarray(arr[:, :, 0])).save(path)
    else:
        Image.fromarray(np.ascontiguousarray(arr)).save(path)
